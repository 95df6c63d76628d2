//! Tracepoints: drops with the kernel's reason, TCP resets, client socket states.
//!
//! They fire for every namespace on the node, so they report only flows the netfilter programs
//! already put in `FLOWS`.

mod kfree_skb;
mod sock;
mod tcp_reset;

use aya_ebpf::programs::TracePointContext;
use d8_common::{FAMILY_V4, FlowKey, TpAddrLayout, layout};

use crate::maps::maybe_target;

const AF_INET: u16 = 2;

#[inline(always)]
fn read<T>(ctx: &TracePointContext, offset: u32) -> Option<T> {
    unsafe { ctx.read_at::<T>(offset as usize) }.ok()
}

/// The first [`RECORD_BYTES`] of a tracepoint's record, read with one `bpf_probe_read_kernel`:
/// the socket tracepoints need six or seven fields, and a helper call each was most of what an
/// untraced socket cost (BENCHMARKS.md). Plain loads from the context are no option: the verifier
/// wants their offset in the instruction, and these offsets come from `CONFIG` at load time.
/// Bytes past the record's end are the trace buffer's and never used (a field past
/// [`RECORD_BYTES`] is read on its own).
struct Record {
    bytes: [u8; RECORD_BYTES],
}

const RECORD_BYTES: usize = 64;

impl Record {
    #[inline(always)]
    fn read(ctx: &TracePointContext) -> Option<Self> {
        Some(Self { bytes: read(ctx, 0)? })
    }

    /// The field of type `T` at `offset`; from the context itself past the copied bytes.
    #[inline(always)]
    fn get<T: Copy>(&self, ctx: &TracePointContext, offset: u32) -> Option<T> {
        let offset = offset as usize;
        if offset + core::mem::size_of::<T>() <= RECORD_BYTES {
            // SAFETY: in bounds; `T` is plain data (integers and byte arrays).
            Some(unsafe { core::ptr::read_unaligned(self.bytes.as_ptr().add(offset) as *const T) })
        } else {
            read(ctx, offset as u32)
        }
    }
}

/// Source and destination (address, network-order port) of an IPv4 socket tracepoint, as a flow
/// key from source to destination; `None` for other families or an unused layout.
#[inline(always)]
fn addresses(ctx: &TracePointContext, rec: &Record, l: &TpAddrLayout, proto: u8) -> Option<FlowKey> {
    let mut key = FlowKey {
        proto,
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    match l.kind {
        layout::SOCKADDR => {
            // struct sockaddr_in: family (host order), port (network order), address.
            let s: [u8; 8] = rec.get(ctx, l.saddr)?;
            let d: [u8; 8] = rec.get(ctx, l.daddr)?;
            if u16::from_ne_bytes([s[0], s[1]]) != AF_INET {
                return None;
            }
            key.sport = u16::from_ne_bytes([s[2], s[3]]);
            key.dport = u16::from_ne_bytes([d[2], d[3]]);
            key.saddr[..4].copy_from_slice(&s[4..8]);
            key.daddr[..4].copy_from_slice(&d[4..8]);
        }
        layout::SEPARATE => {
            if l.family != u32::MAX {
                let family: u16 = rec.get(ctx, l.family)?;
                if family != AF_INET {
                    return None;
                }
            }
            let sport: u16 = rec.get(ctx, l.sport)?;
            let dport: u16 = rec.get(ctx, l.dport)?;
            key.sport = sport.to_be();
            key.dport = dport.to_be();
            let s: [u8; 4] = rec.get(ctx, l.saddr)?;
            let d: [u8; 4] = rec.get(ctx, l.daddr)?;
            key.saddr[..4].copy_from_slice(&s);
            key.daddr[..4].copy_from_slice(&d);
        }
        _ => return None,
    }
    Some(key)
}

/// Whether a socket's tuple can belong to a traced flow: one of its ends is a traced address and
/// port (the Service frontend a client connected to, or a backend of the rules or the API when
/// the trace began). One inlined `TARGET_FILTER` load per end, so that the sockets of the rest
/// of the node (`inet_sock_set_state` fires for all of them) leave before
/// [`crate::flows::find`]'s four hash lookups. A client's socket always has the frontend as its
/// destination. A backend that is no target (added to the rules after the trace began, or a pod
/// IP a stale conntrack entry still DNATs to) has its own socket's states left out; the packets
/// of its flows are still seen by the netfilter or TC programs, and its resets and drops by the
/// tracepoints that do not use this check.
#[inline(always)]
fn may_be_traced(key: &FlowKey) -> bool {
    maybe_target(&key.daddr, key.dport, key.proto) || maybe_target(&key.saddr, key.sport, key.proto)
}
