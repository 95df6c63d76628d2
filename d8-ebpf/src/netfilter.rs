//! Netfilter BPF link programs (`BPF_PROG_TYPE_NETFILTER`, kernel 6.4+). Both always return
//! `NF_ACCEPT`: they observe, never decide.
//!
//! The context is `struct bpf_nf_ctx { const struct nf_hook_state *state; struct sk_buff *skb; }`;
//! the verifier allows exactly these two 8-byte loads from it, and types both as trusted BTF
//! pointers: fields of the skb and the hook state are then read with plain loads (inlined by the
//! JIT); the packet bytes are read through `bpf_rdonly_cast`, and so is the conntrack entry where
//! `struct nf_conn` is in vmlinux's BTF (`conntrack::Entry`; the helper where conntrack is a
//! module), and only the rare IPv6 extension header or ICMP error's quoted packet needs
//! `bpf_probe_read_kernel`.
//!
//! Each program has an IPv6 twin (`nf_pre6`, `nf_post6`), the same code with the IPv6 parser
//! (`packet::parse_ipv6_hot`), attached at the same hooks of the IPv6 family: the IPv4 programs
//! hold no IPv6 code and cost what they did, and each twin has the whole stack to itself.
//!
//! The packet's headers are read in place through the kfunc `bpf_rdonly_cast` (`kfunc.rs`: 6.2+,
//! so on every kernel with netfilter links), with plain loads at network-types' field offsets
//! (`packet::parse_ipv4_hot`, `parse_ipv6_hot`), no helper call. The
//! skb itself is not a packet header: `head`, `network_header` and `_nfct` are `struct sk_buff`
//! fields at offsets that differ between kernels, read at the offsets userspace found in the
//! running kernel's BTF (`CONFIG`), since Rust emits no CO-RE relocations; network-types has no
//! type for them. Likewise the hook state and the conntrack entry (`conntrack.rs`).
//!
//! Cost matters here: these programs run for every packet of the node, nearly all untraced. The
//! untraced exit is a few loads of the headers and one bit of `TARGET_FILTER`, asked before the
//! flow key is built; see BENCHMARKS.md.

use core::ffi::c_void;

use d8_common::{FlowKey, FlowState, TargetKey, flags, hook, kind, pcap::site, seen};
use network_types::ip::Ipv6Hdr;

use crate::{
    conntrack,
    emit::event,
    flows::{self, mark},
    kfunc, log,
    maps::{
        FLOWS, NAT_ALIAS, TARGETS, config, maybe_target, maybe_target_v4, maybe_target_words, note_flow_key, remember,
    },
    packet::{
        self, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_SCTP, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
        reversed,
    },
    pcap,
};

const NF_ACCEPT: i32 = 1;

#[inline(always)]
fn args(ctx: *mut c_void) -> (u64, u64) {
    let ctx = ctx as *const u64;
    unsafe { (*ctx, *ctx.add(1)) }
}

/// `state->hook`: a plain load from the trusted `nf_hook_state`.
#[inline(always)]
fn hook_of(state: u64) -> u8 {
    unsafe { core::ptr::read_volatile((state + config!(nf_state_hook) as u64) as *const u8) }
}

/// Before conntrack (PREROUTING and OUTPUT, priority -250): the packet exactly as the client sent
/// it, including packets conntrack is about to drop (table full).
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_pre")]
pub extern "C" fn nf_pre(ctx: *mut c_void) -> i32 {
    let _ = try_pre::<false>(ctx);
    log::report_lost("nf_pre");
    NF_ACCEPT
}

/// `nf_pre` for the IPv6 family's hooks.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_pre6")]
pub extern "C" fn nf_pre6(ctx: *mut c_void) -> i32 {
    let _ = try_pre::<true>(ctx);
    log::report_lost("nf_pre6");
    NF_ACCEPT
}

/// The packet at a hook of the family `V6` says: a const parameter, so that each program holds
/// its family's code only (a runtime flag, even a constant one, left the IPv4 programs' stack
/// layout 72 bytes deeper).
#[inline(always)]
fn parse<const V6: bool>(skb: u64) -> Option<packet::Packet> {
    let nh = packet::network_header_trusted(skb);
    if V6 {
        packet::parse_ipv6_hot(nh)
    } else {
        packet::parse_ipv4_hot(nh, |_, _, _| true)
    }
}

#[inline(always)]
fn try_pre<const V6: bool>(ctx: *mut c_void) -> Option<()> {
    let (state, skb) = args(ctx);
    // Every packet of the node passes here: IPv4's parser asks `TARGET_FILTER` before it builds
    // the key (returning only ICMP packets and those whose destination the filter may hold).
    let nh = packet::network_header_trusted(skb);
    // IPv6 asks the filter from the header's words first too, when no extension header hides
    // the transport header (`None`: undecided, asked of the key below).
    let filtered = if V6 { ipv6_maybe_target(nh) } else { Some(true) };
    if filtered == Some(false) {
        return None;
    }
    let pkt = if V6 {
        packet::parse_ipv6_hot(nh)?
    } else {
        packet::parse_ipv4_hot(nh, maybe_target_v4)?
    };
    if pkt.key.proto == if V6 { IPPROTO_ICMPV6 } else { IPPROTO_ICMP } {
        return icmp_error::<V6>(&pkt, hook_of(state), skb);
    }
    if V6 && filtered.is_none() && !maybe_target(&pkt.key.daddr, pkt.key.dport, pkt.key.proto) {
        return None;
    }
    let hook = hook_of(state);
    let tcp = pkt.key.proto == IPPROTO_TCP;
    if tcp && pkt.tcp_flags & TCP_SYN == 0 {
        // Only a SYN can begin a TCP flow or retransmit its start; the rest of the flow (the
        // client's ACK, resets, FINs) is read after conntrack by `nf_post`, which looks the
        // flow up anyway. Remembered for a drop before conntrack (an invalid packet).
        remember(skb, hook, 0);
        if pcap::enabled()
            && let Some(st) = FLOWS.get_ptr_mut(&pkt.key)
        {
            pcap::netfilter(st, skb, &pkt.key, site::NF_PRE, hook, false);
        }
        return Some(());
    }
    let syn = tcp && pkt.tcp_flags & TCP_ACK == 0;
    // A known flow needs no TARGETS lookup: it was a target when it began.
    let Some(st) = FLOWS.get_ptr_mut(&pkt.key) else {
        let target = TargetKey {
            addr: pkt.key.daddr,
            port: pkt.key.dport,
            proto: pkt.key.proto,
            family: pkt.key.family,
        };
        unsafe { TARGETS.get(&target) }?;
        remember(skb, hook, 0);
        flows::insert(&pkt.key, seen::NEW)?;
        log::flow_started(&pkt.key, hook, false);
        event(kind::NEW, hook, &pkt.key, |ev| {
            ev.tcp_flags = pkt.tcp_flags;
            ev.ct_dir = 0;
        });
        if pcap::enabled()
            && let Some(st) = FLOWS.get_ptr_mut(&pkt.key)
        {
            pcap::netfilter(st, skb, &pkt.key, site::NF_PRE, hook, false);
        }
        return Some(());
    };
    remember(skb, hook, 0);
    let current = unsafe { (*st).seen };
    if syn {
        if current & (seen::RST_ORIG | seen::RST_REPLY | seen::FIN) != 0 {
            // The client reused the ports of a finished flow: a new flow.
            flows::restart(st);
            event(kind::NEW, hook, &pkt.key, |ev| {
                ev.tcp_flags = pkt.tcp_flags;
                ev.ct_dir = 0;
            });
        } else if mark(st, seen::RETRANS) {
            event(kind::RETRANS, hook, &pkt.key, |ev| {
                ev.tcp_flags = pkt.tcp_flags;
                ev.ct_dir = 0;
            });
        }
    }
    pcap::netfilter(st, skb, &pkt.key, site::NF_PRE, hook, false);
    Some(())
}

/// Whether `TARGET_FILTER` may hold the destination of the IPv6 packet at `nh`, from its
/// destination address words and port loaded in place through the cast, before any key is built
/// (which, with the 16 bytes hashed one by one from it, made `nf_pre6`'s untraced path cost more
/// than `nf_pre`'s; issue 18). `None` when the next header is no port protocol: an ICMPv6 error,
/// or an extension header that the full parse walks.
#[inline(always)]
fn ipv6_maybe_target(nh: u64) -> Option<bool> {
    let (words, dport, next) = ipv6_destination(nh)?;
    Some(maybe_target_words(words, dport, next))
}

/// The destination of the IPv6 packet at `nh` as [`ipv6_maybe_target`] asks the filter for it:
/// the address's four native-order words, the port and the next header; `None` when the next
/// header is no port protocol. Also the loads of the benchmark's header floor (`bench::nf_hdr6`).
#[inline(always)]
pub(crate) fn ipv6_destination(nh: u64) -> Option<([u32; 4], u16, u8)> {
    let ip = kfunc::rdonly_cast::<{ d8_common::kfunc::IPV6HDR }>(nh);
    let next: u8 = kfunc::load(ip, core::mem::offset_of!(Ipv6Hdr, next_hdr));
    if !matches!(next, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP) {
        return None;
    }
    let daddr = |i: usize| kfunc::load::<u32>(ip, packet::IPV6_ADDRS + 16 + 4 * i);
    let words = [daddr(0), daddr(1), daddr(2), daddr(3)];
    // TCP, UDP and SCTP all have the destination port at byte 2 of their header.
    let l4 = kfunc::rdonly_cast::<{ d8_common::kfunc::TCPHDR }>(nh + Ipv6Hdr::LEN as u64);
    let dport: u16 = kfunc::load(l4, 2);
    Some((words, dport, next))
}

/// Keeps the REPLY tuple of the CT record sent after DNAT in the flow's state when its
/// destination is the flow's client (no SNAT yet, as before POSTROUTING): the source (the
/// backend) in `FlowState::ct_reply_src`, and `seen::CT_UNTRANSLATED` set; cleared otherwise.
#[inline(always)]
fn note_reported(st: *mut FlowState, orig: &FlowKey, reply: &FlowKey) {
    // SAFETY: `st` is the flow's entry in `FLOWS`; field stores, no struct literal (a `memset`).
    unsafe {
        if reply.dport == orig.sport && same_addr(&reply.daddr, &orig.saddr) {
            let to = core::ptr::addr_of_mut!((*st).ct_reply_src) as *mut u16;
            let from = reply.saddr.as_ptr() as *const u16;
            for i in 0..8 {
                core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i)));
            }
            (*st).ct_reply_sport = reply.sport;
            (*st).seen |= seen::CT_UNTRANSLATED;
        } else {
            (*st).seen &= !seen::CT_UNTRANSLATED;
        }
    }
}

/// Whether the REPLY tuple at POSTROUTING is the one the flow's CT record after DNAT sent
/// ([`note_reported`]), so that a second CT record would repeat it: the same source (backend)
/// and, SNAT having changed nothing, the client as its destination again. A SYN retransmitted
/// after its first conntrack entry died unconfirmed gets a new entry, whose backend may differ:
/// then it is reported.
#[inline(always)]
fn reported_unchanged(st: *mut FlowState, orig: &FlowKey, reply: &FlowKey) -> bool {
    // SAFETY: `st` is the flow's entry in `FLOWS`.
    unsafe {
        (*st).seen & seen::CT_UNTRANSLATED != 0
            && reply.dport == orig.sport
            && reply.sport == (*st).ct_reply_sport
            && same_addr(&reply.daddr, &orig.saddr)
            && same_addr(&reply.saddr, &(*st).ct_reply_src)
    }
}

/// Whether `NAT_ALIAS` maps `alias` to `orig` already: a client that reuses its port for the
/// same Service and backend (a busy client's short connections) makes the same alias again. An
/// update of an LRU map takes a free node and gives the old one back even when key and value
/// are the same, and with the map full (as it is under a steady flow of connections) taking one
/// evicts: the update was a third of `nf_post`'s samples under short connections (`perf`,
/// issue 18), a lookup costs a hash.
#[inline(always)]
fn aliased(alias: &FlowKey, orig: &FlowKey) -> bool {
    // SAFETY: a value of `NAT_ALIAS`, read at once.
    unsafe { NAT_ALIAS.get(alias) }
        .is_some_and(|known| same_ends(known, orig) && known.proto == orig.proto && known.family == orig.family)
}

/// Whether two tuples of one conntrack entry (same protocol and family) have the same addresses
/// and ports.
#[inline(always)]
fn same_ends(a: &FlowKey, b: &FlowKey) -> bool {
    a.sport == b.sport && a.dport == b.dport && same_addr(&a.saddr, &b.saddr) && same_addr(&a.daddr, &b.daddr)
}

/// `a == b` with 2-byte loads: a slice comparison would be a `bcmp` call.
#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let (a, b) = (a.as_ptr() as *const u16, b.as_ptr() as *const u16);
    let mut differ = 0;
    for i in 0..8 {
        // SAFETY: within the two 16-byte arrays, which are 2-aligned in a `FlowKey`.
        differ |= unsafe { core::ptr::read_volatile(a.add(i)) ^ core::ptr::read_volatile(b.add(i)) };
    }
    differ == 0
}

/// An ICMP (ICMPv6) error quoting one of our flows' packets (a REJECT's port unreachable, a host
/// unreachable for a backend, a packet too big). Matched on the quoted packet, before conntrack or NAT touch it.
#[inline(always)]
fn icmp_error<const V6: bool>(pkt: &packet::Packet, hook: u8, skb: u64) -> Option<()> {
    let quoted = packet::icmp_quoted_key::<V6>(pkt)?;
    let found = flows::report_icmp_error(&quoted, pkt.icmp_type, pkt.icmp_code, pkt.key.saddr, hook)?;
    // The error travels against the quoted packet's direction.
    pcap::netfilter(found.state, skb, &found.key, site::NF_PRE, hook, !found.reversed);
    Some(())
}

/// Whether the packet is a TCP segment in the middle of a flow: conntrack has seen the flow
/// answered (`ctinfo` ESTABLISHED, either direction), and it carries no SYN, FIN or RST. Such a
/// segment has nothing to report: the flow's conntrack entry and its first reply were reported
/// at its SYN and SYN-ACK (which carry SYN), its end and resets carry FIN or RST, and its drops
/// are placed by `remember` and found by `kfree_skb`. So it leaves before the `FLOWS` lookup,
/// the hash of a 40-byte key that was most of what a traced flow's packets cost (6 of a short
/// connection's 10 packets, nearly all of a bulk one's; issue 18).
///
/// A flow that began before the trace is in `FLOWS` already: userspace puts the traced
/// Services' conntrack entries there when the programs are attached (`trace::existing`), so its
/// drops are found from its first packet on. Unless `--pcap` copies every packet of the flow.
#[inline(always)]
fn mid_flow_segment<const V6: bool>(skb: u64, ctinfo: u64, proto: u8) -> bool {
    proto == IPPROTO_TCP
        && (ctinfo == conntrack::IP_CT_ESTABLISHED || ctinfo == conntrack::IP_CT_ESTABLISHED_REPLY)
        && !pcap::enabled()
        && packet::tcp_flags_hot::<V6>(packet::network_header_trusted(skb))
            .is_some_and(|flags| flags & (TCP_SYN | TCP_FIN | TCP_RST) == 0)
}

/// After conntrack and DNAT (PREROUTING/OUTPUT -99) and after SNAT (POSTROUTING 101): reads the
/// skb's conntrack entry, whose ORIGINAL tuple is the flow and whose REPLY tuple's source is the
/// backend DNAT chose.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_post")]
pub extern "C" fn nf_post(ctx: *mut c_void) -> i32 {
    let _ = try_post::<false>(ctx);
    log::report_lost("nf_post");
    NF_ACCEPT
}

/// `nf_post` for the IPv6 family's hooks: the conntrack entry reads the same (its tuples hold
/// 16-byte addresses and the family); only the packet's parse differs.
#[unsafe(no_mangle)]
#[unsafe(link_section = "classifier/nf_post6")]
pub extern "C" fn nf_post6(ctx: *mut c_void) -> i32 {
    let _ = try_post::<true>(ctx);
    log::report_lost("nf_post6");
    NF_ACCEPT
}

#[inline(always)]
fn try_post<const V6: bool>(ctx: *mut c_void) -> Option<()> {
    let (state, skb) = args(ctx);
    let hook = hook_of(state);
    let first = hook == hook::PRE_ROUTING || hook == hook::LOCAL_OUT;
    let final_hook = hook == hook::POST_ROUTING;
    // Every packet passes PREROUTING or OUTPUT first (-99, right after DNAT): the flow's state,
    // replies, resets and FINs are read there; POSTROUTING adds SNAT. No other hook has the
    // program (`NETFILTER_ATTACHMENTS`).
    if !first && !final_hook {
        return None;
    }
    let (ct, ctinfo) = conntrack::of_trusted_skb(skb)?;
    // POSTROUTING adds the NAT as the packet leaves, which only a flow's first packets (ctinfo
    // NEW) can be the first to show.
    if final_hook && ctinfo != conntrack::IP_CT_NEW {
        remember(skb, hook, 1);
        return None;
    }
    let entry = conntrack::Entry::new(ct);
    // Both directions of a flow carry its ORIGINAL tuple, whose destination is the target.
    let orig = entry.original_if_target::<V6>()?;
    remember(skb, hook, 1);
    if first && mid_flow_segment::<V6>(skb, ctinfo, orig.proto) {
        return Some(());
    }
    let st = match FLOWS.get_ptr_mut(&orig) {
        Some(st) => st,
        None if first => {
            // A flow whose first packet we did not see and that was not in the conntrack table
            // when the trace began (userspace put those in): a target added since, or a flow
            // `FLOWS` had evicted. Taken up at its next SYN, FIN or RST, or any UDP packet.
            let target = TargetKey {
                addr: orig.daddr,
                port: orig.dport,
                proto: orig.proto,
                family: orig.family,
            };
            unsafe { TARGETS.get(&target) }?;
            flows::insert(&orig, 0)?;
            log::flow_started(&orig, hook, true);
            FLOWS.get_ptr_mut(&orig)?
        }
        None => return None,
    };
    let is_reply = ctinfo >= conntrack::IP_CT_IS_REPLY;
    let ct_dir = is_reply as u8;

    let current = unsafe { (*st).seen };
    if current & seen::CT == 0 || (final_hook && current & seen::CT_FINAL == 0) {
        let reply = entry.reply()?;
        unsafe { (*st).seen |= seen::CT | if final_hook { seen::CT_FINAL } else { 0 } };
        if final_hook && reported_unchanged(st, &orig, &reply) {
            // The record after DNAT said it all, and its alias is in `NAT_ALIAS`.
            return Some(());
        }
        let status = entry.status();
        // Packets after NAT look like the reversed REPLY tuple: remember it for later lookups.
        // Unless NAT changed nothing (a flow to a traced pod IP itself): then the flow's own key
        // finds it, and an alias would cost an LRU insert for nothing (issue 18).
        let alias = reversed(&reply);
        if !same_ends(&alias, &orig) && !aliased(&alias, &orig) {
            note_flow_key(&alias);
            let _ = NAT_ALIAS.insert(&alias, &orig, 0);
        }
        event(kind::CT, hook, &orig, |ev| {
            ev.reply = reply;
            ev.ct_status = status;
            ev.ct_dir = ct_dir;
            if final_hook {
                ev.flags |= flags::FINAL;
            }
        });
        if !final_hook {
            note_reported(st, &orig, &reply);
        }
    }

    // ICMP errors about the flow carry its conntrack entry as RELATED: they are no reply (the
    // pre-conntrack program reports them from the quoted packet).
    if !first || ctinfo == conntrack::IP_CT_RELATED || ctinfo == conntrack::IP_CT_RELATED_REPLY {
        return Some(());
    }
    pcap::netfilter(st, skb, &orig, site::POST_DNAT, hook, is_reply);
    let pkt = parse::<V6>(skb)?;
    if is_reply && mark(st, seen::REPLY) {
        event(kind::REPLY, hook, &orig, |ev| {
            ev.tcp_flags = pkt.tcp_flags;
            ev.ct_dir = ct_dir;
            ev.aux = pkt.key.saddr;
            ev.aux_port = pkt.key.sport;
        });
    }
    if pkt.key.proto == IPPROTO_TCP {
        // No ESTABLISHED record for the client's ACK of the SYN-ACK: it would follow the REPLY
        // record, and the flow table reads the two alike (the handshake was answered), so a
        // healthy connection's record saves a reservation (issue 18).
        if pkt.tcp_flags & TCP_RST != 0 {
            let bit = if is_reply { seen::RST_REPLY } else { seen::RST_ORIG };
            if mark(st, bit) {
                event(kind::RST, hook, &orig, |ev| {
                    ev.tcp_flags = pkt.tcp_flags;
                    ev.ct_dir = ct_dir;
                    ev.aux = pkt.key.saddr;
                    ev.aux_port = pkt.key.sport;
                });
            }
        }
        if pkt.tcp_flags & TCP_FIN != 0 && mark(st, seen::FIN) {
            event(kind::FIN, hook, &orig, |ev| {
                ev.tcp_flags = pkt.tcp_flags;
                ev.ct_dir = ct_dir;
                ev.aux = pkt.key.saddr;
                ev.aux_port = pkt.key.sport;
            });
        }
    }
    Some(())
}
