//! Tracepoints: drops with the kernel's reason, TCP resets, client socket states.
//!
//! They fire for every namespace on the node, so they report only flows the netfilter programs
//! already put in `FLOWS`.

mod kfree_skb;
mod sock;
mod tcp_reset;

use aya_ebpf::{EbpfContext as _, helpers::generated::bpf_probe_read_kernel, programs::TracePointContext};
use d8_common::{FAMILY_V4, FAMILY_V6, FlowKey, TpAddrLayout, layout};

use crate::maps::maybe_target;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// Where a `struct sockaddr_in6` holds its address (after family, port and flow info).
const SIN6_ADDR: u32 = 8;

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

/// Source and destination (address, network-order port) of a socket tracepoint, as a flow key
/// from source to destination; `None` for other families or an unused layout. An IPv6 socket's
/// addresses are read straight into the key; an IPv4-mapped pair (`::ffff:a.b.c.d`, a dual-stack
/// socket talking IPv4) becomes the IPv4 key its packets carry.
#[inline(always)]
fn addresses(ctx: &TracePointContext, rec: &Record, l: &TpAddrLayout, proto: u8) -> Option<FlowKey> {
    let mut key = FlowKey {
        proto,
        family: FAMILY_V4,
        ..FlowKey::default()
    };
    match l.kind {
        layout::SOCKADDR => {
            // struct sockaddr_in{,6}: family (host order), port (network order), then the IPv4
            // address, or flow info and the IPv6 address.
            let s: [u8; 8] = rec.get(ctx, l.saddr)?;
            let d: [u8; 8] = rec.get(ctx, l.daddr)?;
            key.sport = u16::from_ne_bytes([s[2], s[3]]);
            key.dport = u16::from_ne_bytes([d[2], d[3]]);
            match u16::from_ne_bytes([s[0], s[1]]) {
                AF_INET => {
                    key.saddr[..4].copy_from_slice(&s[4..8]);
                    key.daddr[..4].copy_from_slice(&d[4..8]);
                }
                AF_INET6 => read_v6(ctx, &mut key, l.saddr + SIN6_ADDR, l.daddr + SIN6_ADDR)?,
                _ => return None,
            }
        }
        layout::SEPARATE => {
            let family = if l.family != u32::MAX {
                rec.get::<u16>(ctx, l.family)?
            } else {
                AF_INET
            };
            let sport: u16 = rec.get(ctx, l.sport)?;
            let dport: u16 = rec.get(ctx, l.dport)?;
            key.sport = sport.to_be();
            key.dport = dport.to_be();
            match family {
                AF_INET => {
                    let s: [u8; 4] = rec.get(ctx, l.saddr)?;
                    let d: [u8; 4] = rec.get(ctx, l.daddr)?;
                    key.saddr[..4].copy_from_slice(&s);
                    key.daddr[..4].copy_from_slice(&d);
                }
                AF_INET6 if l.saddr_v6 != u32::MAX && l.daddr_v6 != u32::MAX => {
                    read_v6(ctx, &mut key, l.saddr_v6, l.daddr_v6)?
                }
                _ => return None,
            }
        }
        _ => return None,
    }
    Some(key)
}

/// Reads the 16-byte source and destination addresses at `saddr` and `daddr` of the record into
/// `key` (no buffer on the stack), and sets its family: IPv6, or IPv4 for an IPv4-mapped pair.
#[inline(always)]
fn read_v6(ctx: &TracePointContext, key: &mut FlowKey, saddr: u32, daddr: u32) -> Option<()> {
    let base = ctx.as_ptr() as u64;
    // SAFETY: 16 bytes into each 16-byte address of the key.
    let ok = unsafe {
        bpf_probe_read_kernel(key.saddr.as_mut_ptr().cast(), 16, (base + saddr as u64) as *const _) == 0
            && bpf_probe_read_kernel(key.daddr.as_mut_ptr().cast(), 16, (base + daddr as u64) as *const _) == 0
    };
    if !ok {
        return None;
    }
    key.family = FAMILY_V6;
    if v4_mapped(&key.saddr) && v4_mapped(&key.daddr) {
        unmap(&mut key.saddr);
        unmap(&mut key.daddr);
        key.family = FAMILY_V4;
    }
    Some(())
}

/// `::ffff:a.b.c.d`.
#[inline(always)]
fn v4_mapped(addr: &[u8; 16]) -> bool {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    w(0) == 0 && w(4) == 0 && w(8) == u32::from_ne_bytes([0, 0, 0xff, 0xff])
}

/// An IPv4-mapped address as a flow key holds an IPv4 one: the address first, the rest zero
/// (volatile word stores: no `memmove`/`memset` call).
#[inline(always)]
fn unmap(addr: &mut [u8; 16]) {
    let words = addr.as_mut_ptr() as *mut u32;
    unsafe {
        core::ptr::write_volatile(words, core::ptr::read_volatile(words.add(3)));
        for i in 1..4 {
            core::ptr::write_volatile(words.add(i), 0);
        }
    }
}

/// Which end of a socket's tuple can belong to a traced flow, if any: its destination (the
/// Service frontend a client connected to, or a backend, for a client's socket) or only its
/// source (a backend's own socket), each a traced address and port when the trace began. One
/// inlined `TARGET_FILTER` load per end, so that the sockets of the rest of the node
/// (`inet_sock_set_state` fires for all of them) leave before [`crate::flows::find`]'s hash
/// lookups; the end also says which direction to look the flow up in first. A backend that is no
/// target (added to the rules after the trace began, or a pod IP a stale conntrack entry still
/// DNATs to) has its own socket's states left out; the packets of its flows are still seen by
/// the netfilter or TC programs, and its resets and drops by the tracepoints that do not use this
/// check.
#[inline(always)]
fn traced_end(key: &FlowKey) -> Option<End> {
    if maybe_target(&key.daddr, key.dport, key.proto) {
        Some(End::Destination)
    } else if maybe_target(&key.saddr, key.sport, key.proto) {
        Some(End::Source)
    } else {
        None
    }
}

/// The end of a socket's tuple that [`traced_end`] found traced.
enum End {
    Destination,
    Source,
}
