//! `tcp:tcp_send_reset` (the local stack answered with a RST: no listener, or an abortive close
//! such as a kubelet probe's) and `tcp:tcp_receive_reset` (a local socket got one).

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use d8_common::{flags, hook, kind, seen};

use super::{Record, addresses};
use crate::{emit::event, flows, log, maps::config, packet::IPPROTO_TCP};

#[tracepoint(category = "tcp", name = "tcp_send_reset")]
pub fn tcp_send_reset(ctx: TracePointContext) -> u32 {
    let layout = config!(send_reset);
    let _ = report(&ctx, &layout, kind::SEND_RESET, seen::SEND_RESET);
    log::report_lost("tcp_send_reset");
    0
}

#[tracepoint(category = "tcp", name = "tcp_receive_reset")]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let layout = config!(receive_reset);
    let _ = report(&ctx, &layout, kind::RECV_RESET, seen::RECV_RESET);
    log::report_lost("tcp_receive_reset");
    0
}

/// `saddr` is the local end in both tracepoints (the RST's sender, or the socket that received it).
#[inline(always)]
fn report(ctx: &TracePointContext, layout: &d8_common::TpAddrLayout, what: u8, bit: u32) -> Option<()> {
    let key = addresses(ctx, &Record::read(ctx)?, layout, IPPROTO_TCP)?;
    // No TARGET_FILTER shortcut here: resets are rare, and the one that matters may come from a
    // backend that is no target (a pod IP a stale conntrack entry still DNATs to).
    let found = flows::find(&key)?;
    if !flows::mark(found.state, bit) {
        return Some(());
    }
    event(what, hook::STACK, &found.key, |ev| {
        ev.aux = key.saddr;
        ev.aux_port = key.sport;
        if !found.reversed {
            ev.flags |= flags::CLIENT_SIDE;
        }
        if found.via_nat {
            ev.flags |= flags::VIA_NAT;
        }
    });
    Some(())
}
