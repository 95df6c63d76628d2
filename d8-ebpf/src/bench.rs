//! The benchmark's floors (`cargo xtask bench`): `nf_empty` returns `NF_ACCEPT` at once, `tp_empty`
//! returns at once. Attached next to `nf_pre`/`nf_post` and to the machine-wide tracepoints, and
//! measured under the same BPF statistics, they are what any program costs there (dispatch + the
//! statistics' own clock reads); d8-trace's programs are reported against them. `nf_hdr` and
//! `nf_hdr6`, beside `nf_pre` and `nf_pre6`, read the packet as those do before they know it is
//! untraced, and ask no map: what reading the packet at all costs. d8-trace itself never loads
//! them.

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

/// `nf_pre`'s untraced path without its filter: the skb's network header, then the IPv4 header's
/// first byte, protocol and destination and the destination port, with `nf_pre`'s own loads
/// (`packet::parse_ipv4_hot`, told that no destination is wanted), through `bpf_rdonly_cast`.
/// `nf_pre` untraced less this is what its one `TARGET_FILTER` bit costs; this less `nf_empty` is
/// what looking at the packet at all costs. Needs `CONFIG`'s skb offsets: the benchmark loads it
/// with the object's maps as d8-trace's loader fills them.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_hdr")]
pub extern "C" fn nf_hdr(ctx: *mut c_void) -> i32 {
    let nh = crate::packet::network_header_trusted(skb(ctx));
    let _ = crate::packet::parse_ipv4_hot(nh, |_, _, _| false);
    NF_ACCEPT
}

/// [`nf_hdr`] for IPv6, beside `nf_pre6`: the loads of its filter's question
/// (`netfilter::ipv6_destination`), no map.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_hdr6")]
pub extern "C" fn nf_hdr6(ctx: *mut c_void) -> i32 {
    let nh = crate::packet::network_header_trusted(skb(ctx));
    let _ = crate::netfilter::ipv6_destination(nh);
    NF_ACCEPT
}

/// `struct bpf_nf_ctx`'s second word: the skb (`netfilter.rs`).
#[inline(always)]
fn skb(ctx: *mut c_void) -> u64 {
    // SAFETY: the verifier allows this 8-byte load from the context.
    unsafe { core::ptr::read_volatile((ctx as *const u64).add(1)) }
}
