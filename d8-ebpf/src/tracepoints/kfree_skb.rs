//! `skb:kfree_skb`: a packet was dropped. The reason (`enum skb_drop_reason`, 5.17+) is a number
//! whose meaning differs between kernels; userspace names it from the running kernel's BTF.

use aya_ebpf::{EbpfContext as _, macros::tracepoint, programs::TracePointContext};
use d8_common::{flags, hook, kind, seen};

use super::read;
use crate::{
    conntrack,
    emit::event,
    flows,
    maps::{config, last_hook, may_hold_flow, may_hold_flow_words},
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
    let (skb, reason) = record(ctx)?;
    // Drops of packets that belong to no traced flow (nearly all of the node's) leave at
    // `FLOW_FILTER` before the headers are read or a map hashed: one helper read of `_nfct` and
    // one of the conntrack entry's ORIGINAL tuple, or of the headers for a packet without one.
    // The conntrack entry names the flow exactly, whatever NAT did to the headers: a packet a
    // stale entry DNATs to a gone pod carries neither a frontend nor a traced backend, and its
    // drop is the evidence (a filter on the headers lost it; see BENCHMARKS.md).
    let ct = conntrack::of_skb(skb);
    let key = match ct {
        // The filter asked from the tuple's words before a key is built (`tuple_if`).
        Some((ct, _)) => conntrack::original_if(ct, may_hold_flow_words)?,
        None => {
            let key = packet::parse_ip(packet::network_header(skb)?)?.key;
            if !may_hold_flow(&key) {
                return None;
            }
            key
        }
    };
    // IPv4 or IPv6, by the header's version: the tracepoint fires for both families' packets.
    let pkt = packet::parse_ip(packet::network_header(skb)?)?;
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

/// Where every kernel's `kfree_skb` record keeps `skbaddr` (after the 8-byte common header) and,
/// since 5.17, `reason` (after `location` and `protocol`; from 6.11 also after `rx_sk`, which
/// moved it from 28 to 36): its tracefs `format`.
const FIXED_SKBADDR: u32 = 8;
const FIXED_REASON: u32 = 28;
const FIXED_REASON_RX_SK: u32 = 36;

/// The dropped skb's address and the drop reason (0 before 5.17). With the fixed layout in
/// `CONFIG` they are plain loads from the record (the verifier checks context loads at constant
/// offsets; `CONFIG` is frozen `.rodata`, so one branch stays), not a helper call each.
#[inline(always)]
fn record(ctx: &TracePointContext) -> Option<(u64, u32)> {
    let (skb_off, reason_off) = (config!(kfree_skbaddr), config!(kfree_reason));
    let base = ctx.as_ptr() as *const u8;
    let skb: u64 = if skb_off == FIXED_SKBADDR {
        // SAFETY: an aligned 8-byte field of the record.
        unsafe { core::ptr::read_volatile(base.add(FIXED_SKBADDR as usize) as *const u64) }
    } else {
        read(ctx, skb_off)?
    };
    let reason: u32 = if reason_off == u32::MAX {
        0
    } else if reason_off == FIXED_REASON {
        // SAFETY: an aligned 4-byte field of the record.
        unsafe { core::ptr::read_volatile(base.add(FIXED_REASON as usize) as *const u32) }
    } else if reason_off == FIXED_REASON_RX_SK {
        // The aligned 8 bytes from 32 (`protocol`, padding, `reason`), its upper half: a 4-byte
        // load at 36 is one LLVM merges with the one at 28 into a single load from a computed
        // address, which the verifier refuses in a context ("modified ctx ptr"). Little-endian
        // (BPF runs in the host's order; x86-64 and arm64 nodes).
        // SAFETY: an aligned 8-byte span of the record.
        unsafe { (core::ptr::read_volatile(base.add(FIXED_REASON_RX_SK as usize - 4) as *const u64) >> 32) as u32 }
    } else {
        read(ctx, reason_off)?
    };
    Some((skb, reason))
}
