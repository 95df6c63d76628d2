//! Reading the conntrack entry attached to an skb (`skb->_nfct`): its ORIGINAL and REPLY tuples
//! and status bits. `struct nf_conntrack_tuple` is 40 bytes with a layout stable since 2.6
//! (userspace checks its size in BTF before loading); `nf_conn`'s own layout depends on the
//! kernel's configuration, so those offsets come from `CONFIG`. A tuple is kernel memory, not a
//! packet header (addresses in a 16-byte union, the port union before `l3num`): network-types has
//! no type for it, so it is decoded by its (stable) byte layout.

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{bpf_probe_read_kernel as probe_read, generated::bpf_probe_read_kernel};
use d8_common::{FAMILY_V4, FAMILY_V6, FlowKey};

use crate::maps::config;

/// `enum ip_conntrack_info`: values at or above this are reply-direction packets.
pub const IP_CT_IS_REPLY: u64 = 3;
/// `IP_CT_NEW`: a packet of a flow that has seen no reply yet (original direction).
pub const IP_CT_NEW: u64 = 2;
/// `IP_CT_RELATED` and `IP_CT_RELATED + IP_CT_IS_REPLY`: packets related to the flow (ICMP errors).
pub const IP_CT_RELATED: u64 = 1;
pub const IP_CT_RELATED_REPLY: u64 = 4;
const NFCT_INFOMASK: u64 = 7;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Conntrack entry pointer and `ctinfo` of an skb; `None` when it has none (or is untracked).
#[inline(always)]
pub fn of_skb(skb: u64) -> Option<(u64, u64)> {
    let nfct: u64 = unsafe { probe_read((skb + config!(skb_nfct) as u64) as *const u64).ok()? };
    let ct = nfct & !NFCT_INFOMASK;
    if ct == 0 {
        return None;
    }
    Some((ct, nfct & NFCT_INFOMASK))
}

/// [`of_skb`] for a trusted `skb` (a netfilter program's context): a plain load, no helper call.
#[inline(always)]
pub fn of_trusted_skb(skb: u64) -> Option<(u64, u64)> {
    let nfct = unsafe { core::ptr::read_volatile((skb + config!(skb_nfct) as u64) as *const u64) };
    let ct = nfct & !NFCT_INFOMASK;
    if ct == 0 {
        return None;
    }
    Some((ct, nfct & NFCT_INFOMASK))
}

/// Reads one `struct nf_conntrack_tuple` and turns it into a flow key, in place: the tuple's 40
/// bytes are read straight into the 40-byte key and moved into the key's layout word by word
/// (volatile: no `memmove` call), with no 40-byte buffer on the stack (the drop tracepoint's
/// program is at the 512-byte limit).
///
/// Tuple: source address (16 bytes, 0), source port (16), `l3num` (18), destination address
/// (20), destination port (36), protocol (38), direction (39). Key: source address (0),
/// destination address (16), source port (32), destination port (34), protocol (36), family
/// (37), pad (38).
#[inline(always)]
pub fn tuple(addr: u64) -> Option<FlowKey> {
    let mut key = MaybeUninit::<FlowKey>::uninit();
    // SAFETY: 40 bytes into the 40-byte key.
    if unsafe { bpf_probe_read_kernel(key.as_mut_ptr().cast(), 40, addr as *const c_void) } != 0 {
        return None;
    }
    let w = key.as_mut_ptr() as *mut u32;
    // SAFETY: word accesses within the key, all of whose bytes the read wrote.
    unsafe {
        let src_tail = core::ptr::read_volatile(w.add(4)).to_ne_bytes();
        let dst_tail = core::ptr::read_volatile(w.add(9)).to_ne_bytes();
        let family = match u16::from_ne_bytes([src_tail[2], src_tail[3]]) {
            AF_INET => FAMILY_V4,
            AF_INET6 => FAMILY_V6,
            _ => return None,
        };
        // The destination address moves down 4 bytes, over the source port and `l3num`.
        for i in 4..8 {
            core::ptr::write_volatile(w.add(i), core::ptr::read_volatile(w.add(i + 1)));
        }
        core::ptr::write_volatile(
            w.add(8),
            u32::from_ne_bytes([src_tail[0], src_tail[1], dst_tail[0], dst_tail[1]]),
        );
        core::ptr::write_volatile(w.add(9), u32::from_ne_bytes([dst_tail[2], family, 0, 0]));
        Some(key.assume_init())
    }
}

#[inline(always)]
pub fn original(ct: u64) -> Option<FlowKey> {
    tuple(ct + config!(ct_tuple_orig) as u64)
}

#[inline(always)]
pub fn reply(ct: u64) -> Option<FlowKey> {
    tuple(ct + config!(ct_tuple_reply) as u64)
}

#[inline(always)]
pub fn status(ct: u64) -> u32 {
    unsafe { probe_read((ct + config!(ct_status) as u64) as *const u64).unwrap_or(0) as u32 }
}
