//! `sock:inet_sock_set_state`: TCP state changes of client sockets. For a node-local client the
//! socket still has the ClusterIP as its destination, so this is where its connect attempts show:
//! SYN_SENT -> ESTABLISHED, or SYN_SENT -> CLOSE when the connect failed.

use aya_ebpf::{EbpfContext, macros::tracepoint, programs::TracePointContext};
use d8_common::{flags, hook, kind, layout, seen};

use super::{AF_INET, AF_INET6, End, Record, addresses, traced_end, unmap, v4_mapped};
use crate::{
    emit::event,
    flows, log,
    maps::{config, maybe_target},
    packet::IPPROTO_TCP,
};

const TCP_ESTABLISHED: i32 = 1;
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
    let found = match traced_end(&key)? {
        End::Destination => flows::find(&key)?,
        End::Source => flows::find_reply_first(&key)?,
    };
    if routine(found.state, old, new) {
        return None;
    }
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

/// What a flow's record would show that makes it worth keeping a healthy flow's socket states
/// out of the ring buffer for: anything but an answered handshake and FINs.
const TROUBLE: u32 =
    seen::RST_ORIG | seen::RST_REPLY | seen::DROP | seen::ICMP | seen::SEND_RESET | seen::RECV_RESET | seen::RETRANS;

/// Whether a state change is the routine end of a healthy connection's connect (SYN_SENT ->
/// ESTABLISHED) or close (-> CLOSE after a FIN), on a flow that was answered and saw nothing in
/// [`TROUBLE`]: its REPLY and FIN records already say it, and the flow table reads nothing else
/// from these (a short connection's socket states were three of its nine records; issue 18).
/// A failing flow keeps every state change: a connect that ends in CLOSE, a close after a reset,
/// a drop, an ICMP error or a retransmitted SYN.
#[inline(always)]
fn routine(state: *mut d8_common::FlowState, old: i32, new: i32) -> bool {
    // SAFETY: the flow's entry in `FLOWS`.
    let seen = unsafe { (*state).seen };
    if seen & seen::REPLY == 0 || seen & TROUBLE != 0 {
        return false;
    }
    (old == TCP_SYN_SENT && new == TCP_ESTABLISHED) || (new == TCP_CLOSE && seen & seen::FIN != 0)
}

/// Where `inet_sock_set_state`'s record keeps its fields on every kernel since 4.16 (its tracefs
/// `format`: `oldstate`, `newstate`, `sport`, `dport`, `family`, `protocol`, the IPv4 `saddr` and
/// `daddr`; the IPv6 addresses come after them).
const FIXED_OLDSTATE: usize = 16;
const FIXED_NEWSTATE: usize = 20;
const FIXED_SPORT: usize = 24;
const FIXED_DPORT: usize = 26;
const FIXED_FAMILY: usize = 28;
const FIXED_PROTOCOL: usize = 30;
const FIXED_SADDR: usize = 32;
const FIXED_DADDR: usize = 36;
const FIXED_SADDR_V6: usize = 40;
const FIXED_DADDR_V6: usize = 56;

/// Whether a state change can be one [`try_state`] reports, decided before any helper call: this
/// tracepoint fires for every socket of the node, and of a short TCP connection's ten state
/// changes seven are neither its connect's end nor a close, and the other three belong to a
/// traced Service only on the sockets of its clients and backends (BENCHMARKS.md, issue 18).
/// When `CONFIG` holds the fixed layout the fields are plain loads from the context (a tracepoint
/// program may read its record directly at constant offsets); `CONFIG` is frozen `.rodata`, so
/// the verifier keeps one of the two branches. IPv6 sockets are decided from their 16-byte
/// addresses the same way (copied first, they cost 2.3x the empty program, now 1.6x: issue 18's
/// sixth pass in BENCHMARKS.md); another layout, or another family, is decided after the copy, by
/// the same checks.
#[inline(always)]
fn may_matter(ctx: &TracePointContext) -> bool {
    let l = config!(sock_state);
    if l.kind != layout::SEPARATE
        || l.oldstate as usize != FIXED_OLDSTATE
        || l.newstate as usize != FIXED_NEWSTATE
        || l.sport as usize != FIXED_SPORT
        || l.dport as usize != FIXED_DPORT
        || l.family as usize != FIXED_FAMILY
        || l.protocol as usize != FIXED_PROTOCOL
        || l.saddr as usize != FIXED_SADDR
        || l.daddr as usize != FIXED_DADDR
    {
        return true;
    }
    let rec = ctx.as_ptr() as *const u8;
    // SAFETY: fields of the record (the verifier checks context loads), each aligned to its size.
    let field = |offset: usize| unsafe { rec.add(offset) };
    let (old, new, protocol) = unsafe {
        (
            core::ptr::read_volatile(field(FIXED_OLDSTATE) as *const i32),
            core::ptr::read_volatile(field(FIXED_NEWSTATE) as *const i32),
            core::ptr::read_volatile(field(FIXED_PROTOCOL) as *const u16),
        )
    };
    if protocol != IPPROTO_TCP as u16 || (old != TCP_SYN_SENT && new != TCP_CLOSE) {
        return false;
    }
    // The same test as `traced_end` on the key `addresses` builds: ports in network order,
    // an IPv4 address in the key's first four bytes, an IPv6 one whole unless both are IPv4-mapped.
    let (sport, dport) = unsafe {
        (
            core::ptr::read_volatile(field(FIXED_SPORT) as *const u16).to_be(),
            core::ptr::read_volatile(field(FIXED_DPORT) as *const u16).to_be(),
        )
    };
    let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
    match unsafe { core::ptr::read_volatile(field(FIXED_FAMILY) as *const u16) } {
        AF_INET => {
            let (saddr, daddr) = unsafe {
                (
                    core::ptr::read_volatile(field(FIXED_SADDR) as *const u32).to_ne_bytes(),
                    core::ptr::read_volatile(field(FIXED_DADDR) as *const u32).to_ne_bytes(),
                )
            };
            s[..4].copy_from_slice(&saddr);
            d[..4].copy_from_slice(&daddr);
        }
        AF_INET6 if l.saddr_v6 as usize == FIXED_SADDR_V6 && l.daddr_v6 as usize == FIXED_DADDR_V6 => {
            let (sw, dw) = (s.as_mut_ptr() as *mut u32, d.as_mut_ptr() as *mut u32);
            // Word by word at constant offsets (context loads take no variable offset).
            macro_rules! words {
                ($($i:literal)*) => {$(
                    // SAFETY: word `$i` of each record address and of each 16-byte array.
                    unsafe {
                        core::ptr::write_volatile(sw.add($i), core::ptr::read_volatile(field(FIXED_SADDR_V6 + 4 * $i) as *const u32));
                        core::ptr::write_volatile(dw.add($i), core::ptr::read_volatile(field(FIXED_DADDR_V6 + 4 * $i) as *const u32));
                    }
                )*};
            }
            words!(0 1 2 3);
            if v4_mapped(&s) && v4_mapped(&d) {
                unmap(&mut s);
                unmap(&mut d);
            }
        }
        _ => return true,
    }
    maybe_target(&d, dport, IPPROTO_TCP) || maybe_target(&s, sport, IPPROTO_TCP)
}
