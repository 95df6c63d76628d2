//! The TC hook set, for kernels without netfilter BPF links (before 6.4): clsact classifiers on
//! every interface of the node's network namespace. Both always return [`CONTINUE`]: they
//! observe, never decide, and every other program and filter on the hook still sees the packet.
//!
//! - `d8_tc_ingress`: packets entering the node, before PREROUTING. Packets of clients are still
//!   addressed to the frontend (what `nf_pre` sees: `NEW`, SYN retransmits, the client's ACK, RST
//!   and FIN from the client); packets of backends are still from the backend, before un-DNAT
//!   (what `nf_post` reports in the reply direction: `REPLY`, `RST`, `FIN`). A backend's packet
//!   finds its flow through `NAT_ALIAS` (post-NAT tuple -> ORIGINAL), which userspace fills from
//!   conntrack netlink events (or a kprobe on conntrack confirmation).
//! - `d8_tc_egress`: packets leaving the node, after POSTROUTING: post-DNAT. Packets the node
//!   forwarded were already seen at ingress; of those only the post-DNAT tuple of a flow to a traced
//!   backend is remembered (so a drop, ICMP error or reset inside the backend's namespace finds
//!   the flow before the alias arrives). Packets the node made itself (`ingress_ifindex == 0`) are
//!   its OUTPUT view: node-local clients, kubelet probes, and the ICMP errors and RSTs of REJECT
//!   rules.
//!
//! A flow first seen after DNAT (before userspace knows its alias) is kept under its post-NAT
//! tuple; userspace maps events keyed that way to the ORIGINAL tuple (it has read the conntrack
//! event, queued at confirmation, before the packet left) and merges the two kernel states when it
//! installs the alias. Events leave only on state changes, exactly as in `netfilter.rs`.
//!
//! Both families go through the same code: `__sk_buff::protocol` picks the parser (IPv4, or IPv6
//! with its extension headers), and everything after works on the flow key, whose addresses are
//! 16 bytes either way. ICMPv6 errors are ICMP errors here.
//!
//! The packet is read with `bpf_skb_load_bytes`; the IP header starts after the link-layer header,
//! whose length per interface userspace puts in `TC_L2_LEN` (absent: 14, Ethernet). Headers are
//! network-types' (see `packet.rs`); the `__sk_buff` fields (`protocol`, `ifindex`,
//! `ingress_ifindex`) are the context's own, which the verifier rewrites to the kernel's offsets.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    bindings::{TC_ACT_UNSPEC, tcx_action_base::TCX_NEXT},
    helpers::bpf_skb_load_bytes,
    macros::{classifier, map},
    maps::HashMap,
    programs::TcContext,
};
use d8_common::{FlowKey, TargetKey, flags, hook, kind, seen};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::Ipv6Hdr,
};

use crate::{
    emit::event,
    flows::{self, Found, mark},
    log,
    maps::{self, FLOWS, TARGETS},
    packet::{
        self, ICMP_USED, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, IPV6_ADDRS, L4, Packet,
        RawIpv4, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN, TCP_USED, UDP_USED, reversed,
    },
};

/// Interface index -> length of its link-layer header (0 for L3 devices such as WireGuard or
/// IPIP tunnels). Filled by userspace when it attaches.
#[map]
pub static TC_L2_LEN: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// "Not mine, go on": `TC_ACT_UNSPEC` on a legacy clsact chain (the next filter runs, and the
/// packet passes if none decides), `TCX_NEXT` under tcx (the next tcx program runs, then the
/// legacy chain). Any other verdict (`TC_ACT_OK` included) ends classification there: the other
/// tools' programs behind ours would stop seeing packets while d8-trace traces.
const CONTINUE: i32 = {
    assert!(TC_ACT_UNSPEC == TCX_NEXT);
    TC_ACT_UNSPEC
};

/// `ETH_P_IP` as `__sk_buff::protocol` holds it (network byte order in a u32). network-types'
/// `EtherType` values are already in network byte order.
const ETH_P_IP_BE: u32 = EtherType::Ipv4 as u16 as u32;
/// `ETH_P_IPV6` (0x86DD), likewise.
const ETH_P_IPV6_BE: u32 = EtherType::Ipv6 as u16 as u32;

/// Link-layer header length of an interface absent from `TC_L2_LEN`: Ethernet's. The Ethernet
/// header itself is never read: `__sk_buff::protocol` already names the network protocol (for
/// L3 devices too, which have no link-layer header), and the IP header's offset is all the
/// programs need from it.
const DEFAULT_L2_LEN: u32 = EthHdr::LEN as u32;

#[classifier]
pub fn d8_tc_ingress(ctx: TcContext) -> i32 {
    let _ = observe(&ctx, false);
    log::report_lost("d8_tc_ingress");
    CONTINUE
}

#[classifier]
pub fn d8_tc_egress(ctx: TcContext) -> i32 {
    let _ = observe(&ctx, true);
    log::report_lost("d8_tc_egress");
    CONTINUE
}

/// Where the IP header starts on interface `ifindex`.
#[inline(always)]
fn l2_len(ifindex: u32) -> u32 {
    unsafe { TC_L2_LEN.get(&ifindex) }.copied().unwrap_or(DEFAULT_L2_LEN)
}

#[inline(always)]
fn load<T>(ctx: &TcContext, offset: u32) -> Option<T> {
    ctx.load::<T>(offset as usize).ok()
}

/// Parses the IPv4 header at `nh` and the first bytes of the transport header. `Packet::l4` is
/// the transport header's offset in the packet.
#[inline(always)]
fn parse_ipv4(ctx: &TcContext, nh: u32) -> Option<Packet> {
    let ip: RawIpv4 = load(ctx, nh)?;
    let pkt = packet::packet(&ip, nh as u64)?;
    with_transport::<false>(ctx, pkt, ip.proto())
}

/// `pkt` with its transport header (at `pkt.l4`) decoded, from the bytes that are used only:
/// the packet must hold those (and an ICMP error quote them), no more; the rest of `l4` stays
/// zero. `V6`: ICMPv6 is the family's ICMP. Other protocols load nothing.
#[inline(always)]
fn with_transport<const V6: bool>(ctx: &TcContext, mut pkt: Packet, proto: u8) -> Option<Packet> {
    let used = match proto {
        IPPROTO_TCP => TCP_USED,
        IPPROTO_UDP | IPPROTO_SCTP => UDP_USED,
        IPPROTO_ICMP if !V6 => ICMP_USED,
        IPPROTO_ICMPV6 if V6 => ICMP_USED,
        _ => return Some(pkt),
    };
    let mut slot = MaybeUninit::<L4>::uninit();
    let l4 = L4::zero(&mut slot);
    // SAFETY: `used` is at most `size_of::<L4>()` bytes, written into `l4`.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            pkt.l4 as u32,
            (l4 as *mut L4).cast(),
            used,
        )
    };
    if rc != 0 {
        return None;
    }
    if V6 {
        packet::transport6(&mut pkt, proto, l4);
    } else {
        packet::transport(&mut pkt, proto, l4);
    }
    Some(pkt)
}

/// Parses the IPv6 header at `nh`, its extension headers (`packet::skip_extensions`) and the
/// first bytes of the transport header, as [`parse_ipv4`]. The addresses are loaded straight into
/// the flow key: no 40-byte header on the stack, which the egress program does not have to spare.
#[inline(always)]
fn parse_ipv6(ctx: &TcContext, nh: u32) -> Option<Packet> {
    let first: [u8; 8] = load(ctx, nh)?;
    let next = packet::ipv6_fixed(first)?;
    let mut key = MaybeUninit::<FlowKey>::uninit();
    packet::v6_key_frame(&mut key);
    // SAFETY: 32 bytes into the key's `saddr` and `daddr`, which follow each other.
    let rc = unsafe {
        bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            nh + IPV6_ADDRS as u32,
            key.as_mut_ptr().cast(),
            32,
        )
    };
    if rc != 0 {
        return None;
    }
    let (proto, l4_off, has_l4) = packet::skip_extensions(next, (nh as usize + Ipv6Hdr::LEN) as u64, |at| {
        load::<[u8; 4]>(ctx, at as u32)
    })?;
    packet::set_proto(&mut key, proto);
    let pkt = Packet {
        key: unsafe { key.assume_init() },
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        l4: l4_off,
    };
    if !has_l4 {
        // A fragment after the first: no ports, so no flow of ours matches it.
        return Some(pkt);
    }
    with_transport::<true>(ctx, pkt, proto)
}

/// The packet by `__sk_buff::protocol`'s family (`v6`), its IP header at `nh`.
#[inline(always)]
fn parse(ctx: &TcContext, nh: u32, v6: bool) -> Option<Packet> {
    if v6 { parse_ipv6(ctx, nh) } else { parse_ipv4(ctx, nh) }
}

/// The ICMP protocol number of the family: ICMP errors are ICMPv6 ones in IPv6.
#[inline(always)]
fn is_icmp(pkt: &Packet) -> bool {
    pkt.key.proto == IPPROTO_ICMP || pkt.key.proto == IPPROTO_ICMPV6
}

/// Remembers, per CPU, that this skb of a traced flow passed here, as `netfilter.rs` does: a
/// `kfree_skb` right after (in a pod's namespace, for a packet that left through a veth) then
/// says where it died. Egress counts as after POSTROUTING, ingress as before PREROUTING. The
/// context pointer is the kernel's `struct sk_buff`.
#[inline(always)]
fn remember(ctx: &TcContext, egress: bool) {
    let (hook, after_ct) = if egress {
        (hook::POST_ROUTING, 1)
    } else {
        (hook::PRE_ROUTING, 0)
    };
    maps::remember(ctx.skb.skb as u64, hook, after_ct);
}

#[inline(always)]
fn target_of(addr: &[u8; 16], port: u16, key: &FlowKey) -> TargetKey {
    TargetKey {
        addr: *addr,
        port,
        proto: key.proto,
        family: key.family,
    }
}

#[inline(always)]
fn observe(ctx: &TcContext, egress: bool) -> Option<()> {
    let skb = ctx.skb.skb;
    let (protocol, ifindex, ingress_ifindex) = unsafe { ((*skb).protocol, (*skb).ifindex, (*skb).ingress_ifindex) };
    let v6 = match protocol {
        ETH_P_IP_BE => false,
        ETH_P_IPV6_BE => true,
        _ => return None,
    };
    let Some(pkt) = parse(ctx, l2_len(ifindex), v6) else {
        // Read again rather than kept: live across the parse, they cost every packet spills.
        let ifindex = unsafe { (*skb).ifindex };
        log::not_parsed(ifindex, egress, l2_len(ifindex));
        return None;
    };
    // Made by the node itself (no input interface): its OUTPUT view.
    let local = egress && ingress_ifindex == 0;
    if egress && !local {
        forwarded(&pkt)?;
        remember(ctx, egress);
        copy_packet(ctx, &pkt, egress, hook::POST_ROUTING);
        return Some(());
    }
    let hook = if local { hook::LOCAL_OUT } else { hook::PRE_ROUTING };
    if is_icmp(&pkt) {
        return icmp_error(ctx, &pkt, hook, v6);
    }
    let r = match flows::find(&pkt.key) {
        Some(found) if found.reversed => reply_direction(&found, &pkt, hook),
        Some(found) => original_direction(&found, &pkt, hook),
        None => first_sight(&pkt, hook),
    };
    if r.is_some() {
        remember(ctx, egress);
        copy_packet(ctx, &pkt, egress, hook);
    }
    r
}

/// `--pcap`: copies a packet of a traced flow (found again: only when copies are on, which the
/// verifier knows; off, this is removed).
#[inline(always)]
fn copy_packet(ctx: &TcContext, pkt: &Packet, egress: bool, hook: u8) {
    if !crate::pcap::enabled() {
        return;
    }
    let Some(found) = flows::find(&pkt.key) else { return };
    copy_found(ctx, &found, egress, hook, found.reversed);
}

/// Copies this packet of `found`'s flow (`--pcap`), from its IP header on.
#[inline(always)]
fn copy_found(ctx: &TcContext, found: &Found, egress: bool, hook: u8, reply: bool) {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    crate::pcap::tc(ctx, found.state, &found.key, l2_len(ifindex), egress, hook, reply);
}

/// A forwarded packet leaving the node (post-DNAT; seen at ingress already). A flow to a traced
/// backend not yet joined gets state under this post-NAT tuple, without an event.
#[inline(always)]
fn forwarded(pkt: &Packet) -> Option<()> {
    if is_icmp(pkt) {
        return None;
    }
    if flows::find(&pkt.key).is_some() {
        return Some(());
    }
    unsafe { TARGETS.get(&target_of(&pkt.key.daddr, pkt.key.dport, &pkt.key)) }?;
    flows::insert(&pkt.key, seen::NEW)?;
    Some(())
}

/// First packet of a flow to a traced target (`NEW`, as `nf_pre`), or a packet from a traced
/// target whose flow is not known (yet): a backend answering a flow whose alias userspace has
/// not installed, or a flow that began before tracing (as `nf_post` adopts those).
#[inline(always)]
fn first_sight(pkt: &Packet, hook: u8) -> Option<()> {
    if unsafe { TARGETS.get(&target_of(&pkt.key.daddr, pkt.key.dport, &pkt.key)) }.is_some() {
        flows::insert(&pkt.key, seen::NEW)?;
        log::flow_started(&pkt.key, hook, false);
        event(kind::NEW, hook, &pkt.key, |ev| {
            ev.tcp_flags = pkt.tcp_flags;
            ev.ct_dir = 0;
        });
        return Some(());
    }
    unsafe { TARGETS.get(&target_of(&pkt.key.saddr, pkt.key.sport, &pkt.key)) }?;
    let key = reversed(&pkt.key);
    flows::insert(&key, 0)?;
    log::flow_started(&key, hook, true);
    let state = FLOWS.get_ptr_mut(&key)?;
    reply_direction(
        &Found {
            state,
            key,
            via_nat: false,
            reversed: true,
        },
        pkt,
        hook,
    )
}

/// A client's packet of a known flow: SYN again (retransmit, or a new flow on reused ports),
/// RST or FIN from the client.
#[inline(always)]
fn original_direction(found: &Found, pkt: &Packet, hook: u8) -> Option<()> {
    let st = found.state;
    let key = &found.key;
    let tcp = pkt.key.proto == IPPROTO_TCP;
    if !tcp {
        return Some(());
    }
    let current = unsafe { (*st).seen };
    if pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN {
        if current & (seen::RST_ORIG | seen::RST_REPLY | seen::FIN) != 0 {
            // The client reused the ports of a finished flow: a new flow.
            flows::restart(st);
            event(kind::NEW, hook, key, |ev| {
                ev.tcp_flags = pkt.tcp_flags;
                ev.ct_dir = 0;
            });
        } else if mark(st, seen::RETRANS) {
            event(kind::RETRANS, hook, key, |ev| {
                ev.tcp_flags = pkt.tcp_flags;
                ev.ct_dir = 0;
            });
        }
        return Some(());
    }
    // No ESTABLISHED record for the ACK completing the handshake: as in `nf_post`, it would
    // follow the REPLY record and say nothing the flow table does not read from that.
    end_of_flow(found, pkt, hook, 0);
    Some(())
}

/// A packet from the flow's destination (the backend, or the node answering for the frontend).
#[inline(always)]
fn reply_direction(found: &Found, pkt: &Packet, hook: u8) -> Option<()> {
    if mark(found.state, seen::REPLY) {
        event(kind::REPLY, hook, &found.key, |ev| {
            ev.tcp_flags = pkt.tcp_flags;
            ev.ct_dir = 1;
            ev.aux = pkt.key.saddr;
            ev.aux_port = pkt.key.sport;
            if found.via_nat {
                ev.flags |= flags::VIA_NAT;
            }
        });
    }
    if pkt.key.proto == IPPROTO_TCP {
        end_of_flow(found, pkt, hook, 1);
    }
    Some(())
}

/// RST and FIN, from either side (`ct_dir` 0: the client, 1: the other end), as `nf_post`.
#[inline(always)]
fn end_of_flow(found: &Found, pkt: &Packet, hook: u8, ct_dir: u8) {
    let st = found.state;
    if pkt.tcp_flags & TCP_RST != 0 {
        let bit = if ct_dir == 1 { seen::RST_REPLY } else { seen::RST_ORIG };
        if mark(st, bit) {
            event(kind::RST, hook, &found.key, |ev| {
                ev.tcp_flags = pkt.tcp_flags;
                ev.ct_dir = ct_dir;
                ev.aux = pkt.key.saddr;
                ev.aux_port = pkt.key.sport;
            });
        }
    }
    if pkt.tcp_flags & TCP_FIN != 0 && mark(st, seen::FIN) {
        event(kind::FIN, hook, &found.key, |ev| {
            ev.tcp_flags = pkt.tcp_flags;
            ev.ct_dir = ct_dir;
            ev.aux = pkt.key.saddr;
            ev.aux_port = pkt.key.sport;
        });
    }
}

/// An ICMP error (destination unreachable, time exceeded, parameter problem; for ICMPv6 also
/// packet too big) quoting one of our flows' packets, before or after NAT.
#[inline(always)]
fn icmp_error(ctx: &TcContext, pkt: &Packet, hook: u8, v6: bool) -> Option<()> {
    let error = if v6 {
        packet::is_icmpv6_error(pkt.icmp_type)
    } else {
        matches!(pkt.icmp_type, 3 | 11 | 12)
    };
    if !error {
        return None;
    }
    let inner = parse(ctx, pkt.l4 as u32 + 8, v6)?;
    let found = flows::report_icmp_error(&inner.key, pkt.icmp_type, pkt.icmp_code, pkt.key.saddr, hook)?;
    if crate::pcap::enabled() {
        // The error travels against the quoted packet's direction.
        copy_found(ctx, &found, hook == hook::LOCAL_OUT, hook, !found.reversed);
    }
    Some(())
}
