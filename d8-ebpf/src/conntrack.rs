//! Reading the conntrack entry attached to an skb (`skb->_nfct`): its ORIGINAL and REPLY tuples
//! and status bits. `struct nf_conntrack_tuple` is 40 bytes with a layout stable since 2.6
//! (userspace checks its size in BTF before loading); `nf_conn`'s own layout depends on the
//! kernel's configuration, so those offsets come from `CONFIG`. A tuple is kernel memory, not a
//! packet header (addresses in a 16-byte union, the port union before `l3num`): network-types has
//! no type for it, so it is decoded by its (stable) byte layout.

use aya_ebpf::helpers::bpf_probe_read_kernel;
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
    let nfct: u64 = unsafe { bpf_probe_read_kernel((skb + config!(skb_nfct) as u64) as *const u64).ok()? };
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

/// Reads one `struct nf_conntrack_tuple` and turns it into a flow key.
#[inline(always)]
pub fn tuple(addr: u64) -> Option<FlowKey> {
    let raw: [u8; 40] = unsafe { bpf_probe_read_kernel(addr as *const [u8; 40]).ok()? };
    let l3num = u16::from_ne_bytes([raw[18], raw[19]]);
    let family = match l3num {
        AF_INET => FAMILY_V4,
        AF_INET6 => FAMILY_V6,
        _ => return None,
    };
    let mut key = FlowKey {
        proto: raw[38],
        family,
        ..FlowKey::default()
    };
    key.saddr.copy_from_slice(&raw[0..16]);
    key.daddr.copy_from_slice(&raw[20..36]);
    key.sport = u16::from_ne_bytes([raw[16], raw[17]]);
    key.dport = u16::from_ne_bytes([raw[36], raw[37]]);
    Some(key)
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
    unsafe { bpf_probe_read_kernel((ct + config!(ct_status) as u64) as *const u64).unwrap_or(0) as u32 }
}
