//! The benchmark's floors (`cargo xtask bench`): `nf_empty` returns `NF_ACCEPT` at once, `tp_empty`
//! returns at once. Attached next to `nf_pre`/`nf_post` and to the machine-wide tracepoints, and
//! measured under the same BPF statistics, they are what any program costs there (dispatch + the
//! statistics' own clock reads); d8-trace's programs are reported against them. d8-trace itself
//! never loads them.

use core::ffi::c_void;

/// `NF_ACCEPT`.
const NF_ACCEPT: i32 = 1;

#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_empty")]
pub extern "C" fn nf_empty(_ctx: *mut c_void) -> i32 {
    NF_ACCEPT
}

/// The tracepoints' floor: returns at once. The benchmark attaches one instance to
/// `sock:inet_sock_set_state` and one to `skb:kfree_skb`, next to d8-trace's programs there.
#[aya_ebpf::macros::tracepoint]
pub fn tp_empty(_ctx: aya_ebpf::programs::TracePointContext) -> u32 {
    0
}
