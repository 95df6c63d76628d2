//! d8-trace's kernel programs.
//!
//! - [`netfilter`]: `nf_pre` (PREROUTING and OUTPUT, before conntrack: the packet as the client sent
//!   it, including packets conntrack will drop) and `nf_post` (after DNAT at PREROUTING/OUTPUT,
//!   after SNAT at POSTROUTING: the conntrack entry with the chosen backend). aya has no loader
//!   for `BPF_PROG_TYPE_NETFILTER`; these live in `classifier/` sections so aya-obj parses them,
//!   and d8-userspace's `loader::netfilter` loads them with the right program type.
//! - [`tc`]: `d8_tc_ingress`/`d8_tc_egress`, clsact classifiers for kernels without netfilter
//!   links (pre-DNAT view at ingress, post-DNAT and node-made packets at egress).
//! - [`tracepoints`]: `skb:kfree_skb` (drops with the kernel's reason), `tcp:tcp_send_reset`,
//!   `tcp:tcp_receive_reset`, `sock:inet_sock_set_state` (client sockets, node-local clients).
//!
//! Filtering happens here: only flows to traced targets (the `TARGETS` map) get state in `FLOWS`,
//! and events leave only when that state changes. Struct offsets come from userspace (`CONFIG`),
//! read from the running kernel's BTF: Rust emits no CO-RE relocations. Packet headers are
//! network-types' (`packet.rs`). [`log`]: debug records through aya-log, off (pruned by the
//! verifier) unless the loader turns them on.
#![no_std]
#![no_main]
// `asm!` on the BPF target (nightly): the kfunc placeholders of `kfunc.rs`.
#![feature(asm_experimental_arch)]

mod bench;
mod conntrack;
mod emit;
mod flows;
mod kfunc;
mod log;
mod maps;
mod netfilter;
mod packet;
mod pcap;
mod tc;
mod tracepoints;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_probe_read_kernel` is GPL-only.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
