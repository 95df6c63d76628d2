//! The benchmark's floor (`cargo xtask bench`): `nf_empty` returns `NF_ACCEPT` at once. Attached
//! next to `nf_pre`/`nf_post` and measured under the same BPF statistics, it is what any netfilter
//! program costs at that hook (dispatch + the statistics' own clock reads); d8-trace's programs
//! are reported against it. d8-trace itself never loads it.

use core::ffi::c_void;

/// `NF_ACCEPT`.
const NF_ACCEPT: i32 = 1;

#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_empty")]
pub extern "C" fn nf_empty(_ctx: *mut c_void) -> i32 {
    NF_ACCEPT
}
