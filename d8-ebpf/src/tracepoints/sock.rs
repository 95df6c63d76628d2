//! `sock:inet_sock_set_state`: TCP state changes of client sockets. For a node-local client the
//! socket still has the ClusterIP as its destination, so this is where its connect attempts show:
//! SYN_SENT -> ESTABLISHED, or SYN_SENT -> CLOSE when the connect failed.

use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
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
    if !may_matter(ctx) {
        return None;
    }
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

/// Where `inet_sock_set_state`'s record keeps `oldstate`, `newstate` and `protocol` on every
/// kernel since 4.16 (its tracefs `format`; the IPv6 addresses come after them).
const FIXED_OLDSTATE: usize = 16;
const FIXED_NEWSTATE: usize = 20;
const FIXED_PROTOCOL: usize = 30;

/// Whether a state change can be one [`try_state`] reports, decided before any helper call: this
/// tracepoint fires for every socket of the node, and seven of a short TCP connection's ten state
/// changes are neither its connect's end nor a close (BENCHMARKS.md, issue 18). When `CONFIG`
/// holds the fixed layout, the three fields are plain loads from the context (a tracepoint
/// program may read its record directly at constant offsets); `CONFIG` is frozen `.rodata`, so
/// the verifier keeps only one of the two branches. Another layout is decided after the copy.
#[inline(always)]
fn may_matter(ctx: &TracePointContext) -> bool {
    if config!(sock_state.oldstate) as usize != FIXED_OLDSTATE
        || config!(sock_state.newstate) as usize != FIXED_NEWSTATE
        || config!(sock_state.protocol) as usize != FIXED_PROTOCOL
    {
        return true;
    }
    let rec = ctx.as_ptr() as *const u8;
    // SAFETY: in the record (the verifier checks context loads), aligned to each field's size.
    let (old, new, protocol) = unsafe {
        (
            core::ptr::read_volatile(rec.add(FIXED_OLDSTATE) as *const i32),
            core::ptr::read_volatile(rec.add(FIXED_NEWSTATE) as *const i32),
            core::ptr::read_volatile(rec.add(FIXED_PROTOCOL) as *const u16),
        )
    };
    protocol == IPPROTO_TCP as u16 && (old == TCP_SYN_SENT || new == TCP_CLOSE)
}
