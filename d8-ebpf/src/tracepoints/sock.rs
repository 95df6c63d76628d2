//! `sock:inet_sock_set_state`: TCP state changes of client sockets. For a node-local client the
//! socket still has the ClusterIP as its destination, so this is where its connect attempts show:
//! SYN_SENT -> ESTABLISHED, or SYN_SENT -> CLOSE when the connect failed.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use d8_common::{flags, hook, kind};

use super::{Record, addresses, may_be_traced};
use crate::{emit::event, flows, log, maps::config, packet::IPPROTO_TCP};

const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

#[tracepoint(category = "sock", name = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_state(&ctx);
    log::report_lost("inet_sock_set_state");
    0
}

#[inline(always)]
fn try_state(ctx: &TracePointContext) -> Option<()> {
    let layout = config!(sock_state);
    let rec = Record::read(ctx)?;
    let protocol: u16 = rec.get(ctx, layout.protocol)?;
    if protocol != IPPROTO_TCP as u16 {
        return None;
    }
    let old: i32 = rec.get(ctx, layout.oldstate)?;
    let new: i32 = rec.get(ctx, layout.newstate)?;
    // The source port is not assigned yet when a socket enters SYN_SENT: report what follows.
    if old != TCP_SYN_SENT && new != TCP_CLOSE {
        return None;
    }
    let key = addresses(ctx, &rec, &layout, IPPROTO_TCP)?;
    if !may_be_traced(&key) {
        return None;
    }
    let found = flows::find(&key)?;
    event(kind::SOCK_STATE, hook::STACK, &found.key, |ev| {
        ev.old_state = old as u8;
        ev.new_state = new as u8;
        ev.aux = key.saddr;
        ev.aux_port = key.sport;
        if !found.reversed {
            ev.flags |= flags::CLIENT_SIDE;
        }
    });
    Some(())
}
