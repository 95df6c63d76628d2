//! `skb:kfree_skb`: a packet was dropped. The reason (`enum skb_drop_reason`, 5.17+) is a number
//! whose meaning differs between kernels; userspace names it from the running kernel's BTF.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use d8_common::{flags, hook, kind, seen};

use super::read;
use crate::{
    conntrack,
    emit::event,
    flows,
    maps::{config, last_hook},
    packet, pcap,
};

#[tracepoint(category = "skb", name = "kfree_skb")]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    // No `log::report_lost` here: a log record does not fit next to this program's 496 bytes of
    // stack. Its lost events show in the next record of the same CPU.
    let _ = try_kfree_skb(&ctx);
    0
}

#[inline(always)]
fn try_kfree_skb(ctx: &TracePointContext) -> Option<()> {
    let skb: u64 = read(ctx, config!(kfree_skbaddr))?;
    let reason_off = config!(kfree_reason);
    let reason: u32 = if reason_off == u32::MAX {
        0
    } else {
        read(ctx, reason_off)?
    };
    // IPv4 or IPv6, by the header's version: the tracepoint fires for both families' packets.
    let pkt = packet::parse_ip(packet::network_header(skb)?)?;
    // No TARGET_FILTER shortcut on the packet's headers: a packet a stale conntrack entry DNATs
    // to a gone pod carries neither a frontend nor a traced backend, and its drop is the
    // evidence (tried and reverted; see BENCHMARKS.md). The ORIGINAL tuple would do, but the
    // check does not fit next to this program's stack after the conntrack read.
    // The conntrack entry names the flow exactly, whatever NAT did to the headers.
    let ct = conntrack::of_skb(skb);
    let key = match ct {
        Some((ct, _)) => conntrack::original(ct)?,
        None => pkt.key,
    };
    let found = flows::find(&key)?;
    let (at, after_ct) = last_hook(skb).unwrap_or((hook::UNKNOWN, 0));
    // Every dropped packet is copied (`--pcap`), a reason already reported included.
    pcap::dropped(found.state, skb, &found.key, at, found.reversed, reason);
    unsafe {
        if (*found.state).seen & seen::DROP != 0 && (*found.state).last_drop_reason == reason {
            return Some(());
        }
        (*found.state).seen |= seen::DROP;
        (*found.state).last_drop_reason = reason;
    }
    event(kind::DROP, at, &found.key, |ev| {
        ev.reason = reason;
        ev.tcp_flags = pkt.tcp_flags;
        ev.ct_dir = found.reversed as u8;
        ev.aux = pkt.key.saddr;
        ev.aux_port = pkt.key.sport;
        if ct.is_none() {
            ev.flags |= flags::NO_CT;
        }
        if found.via_nat {
            ev.flags |= flags::VIA_NAT;
        }
        // `old_state` carries whether the packet had passed our post-conntrack program.
        ev.old_state = after_ct;
    });
    Some(())
}
