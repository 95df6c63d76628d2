//! Reading the conntrack entry attached to an skb (`skb->_nfct`): its ORIGINAL and REPLY tuples
//! and status bits. `struct nf_conntrack_tuple` is 40 bytes with a layout stable since 2.6
//! (userspace checks its size in BTF before loading); `nf_conn`'s own layout depends on the
//! kernel's configuration, so those offsets come from `CONFIG`. A tuple is kernel memory, not a
//! packet header (addresses in a 16-byte union, the port union before `l3num`): network-types has
//! no type for it, so it is decoded by its (stable) byte layout.
//!
//! The netfilter programs read the entry through `bpf_rdonly_cast` of `struct nf_conn` with plain
//! loads ([`Cast`]) where the kernel has that struct in vmlinux's BTF (conntrack built in), and
//! with the helper where conntrack is a module (`CONFIG.ct_cast`, chosen by the loader): the
//! helper call and its 40-byte copy were most of `nf_post`'s cost per packet (issue 18).

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::helpers::{bpf_probe_read_kernel as probe_read, generated::bpf_probe_read_kernel};
use d8_common::{FAMILY_V4, FAMILY_V6, FlowKey};

use crate::{
    kfunc,
    maps::{config, maybe_target, maybe_target_words},
};

/// `enum ip_conntrack_info`: values at or above this are reply-direction packets.
pub const IP_CT_IS_REPLY: u64 = 3;
/// `IP_CT_ESTABLISHED` and `IP_CT_ESTABLISHED_REPLY`: a packet of a flow conntrack has seen
/// answered, in the original and in the reply direction.
pub const IP_CT_ESTABLISHED: u64 = 0;
pub const IP_CT_ESTABLISHED_REPLY: u64 = IP_CT_ESTABLISHED + IP_CT_IS_REPLY;
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
    tuple_if(addr, |_, _, _, _, _| true)
}

/// [`tuple`], built only when `wanted(source words, source port, destination words, destination
/// port, protocol)` (addresses as four native-order words, ports in network order, as a key holds
/// them) says so, asked from the words as read: the drop tracepoint runs for every drop of the
/// node, nearly none of a traced flow, and building the key first cost it more than the rest.
#[inline(always)]
pub fn tuple_if(addr: u64, wanted: impl FnOnce([u32; 4], u16, [u32; 4], u16, u8) -> bool) -> Option<FlowKey> {
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
        let word = |i: usize| core::ptr::read_volatile(w.add(i));
        if !wanted(
            [word(0), word(1), word(2), word(3)],
            u16::from_ne_bytes([src_tail[0], src_tail[1]]),
            [word(5), word(6), word(7), word(8)],
            u16::from_ne_bytes([dst_tail[0], dst_tail[1]]),
            dst_tail[2],
        ) {
            return None;
        }
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

/// [`original`] when `wanted` says so ([`tuple_if`]).
#[inline(always)]
pub fn original_if(ct: u64, wanted: impl FnOnce([u32; 4], u16, [u32; 4], u16, u8) -> bool) -> Option<FlowKey> {
    tuple_if(ct + config!(ct_tuple_orig) as u64, wanted)
}

#[inline(always)]
pub fn status(ct: u64) -> u32 {
    unsafe { probe_read((ct + config!(ct_status) as u64) as *const u64).unwrap_or(0) as u32 }
}

/// A netfilter program's conntrack entry, read the way `CONFIG.ct_cast` says: through
/// `bpf_rdonly_cast` of `struct nf_conn` with plain loads, or with the helper ([`original`],
/// [`reply`], [`status`]). Only for the netfilter programs, whose loader patches the cast.
#[derive(Clone, Copy)]
pub struct Entry {
    ct: u64,
    /// `ct` cast to `struct nf_conn` (the verifier inlines the cast to a register move); unused
    /// when `ct_cast` is off, where the verifier never reaches the cast.
    cast: u64,
}

impl Entry {
    #[inline(always)]
    pub fn new(ct: u64) -> Self {
        let cast = if by_cast() {
            kfunc::rdonly_cast::<{ d8_common::kfunc::NF_CONN }>(ct)
        } else {
            0
        };
        Self { ct, cast }
    }

    #[inline(always)]
    pub fn original(self) -> Option<FlowKey> {
        self.tuple_at(config!(ct_tuple_orig) as usize)
    }

    /// The tuple at `off` in `struct nf_conn`, by the cast or the helper.
    #[inline(always)]
    fn tuple_at(self, off: usize) -> Option<FlowKey> {
        if by_cast() {
            cast_tuple(self.cast, off)
        } else {
            tuple(self.ct + off as u64)
        }
    }

    /// [`Self::original`] when `TARGET_FILTER` may hold its destination, else `None`. Through
    /// the cast the filter is asked first, from the destination's words, port and protocol
    /// loaded in place: a packet of no traced flow (nearly all) builds no key. `V6`: the
    /// program's family, whose entries alone it sees (an IPv4 address is one word, the rest zero).
    #[inline(always)]
    pub fn original_if_target<const V6: bool>(self) -> Option<FlowKey> {
        if by_cast() {
            let (c, off) = (self.cast, config!(ct_tuple_orig) as usize);
            let word = |i: usize| kfunc::load::<u32>(c, off + 20 + 4 * i);
            let words = if V6 {
                [word(0), word(1), word(2), word(3)]
            } else {
                [word(0), 0, 0, 0]
            };
            let dport = kfunc::load::<u16>(c, off + 36);
            let proto = kfunc::load::<u8>(c, off + 38);
            if !maybe_target_words(words, dport, proto) {
                return None;
            }
            self.original()
        } else {
            let orig = original(self.ct)?;
            maybe_target(&orig.daddr, orig.dport, orig.proto).then_some(orig)
        }
    }

    #[inline(always)]
    pub fn reply(self) -> Option<FlowKey> {
        self.tuple_at(config!(ct_tuple_reply) as usize)
    }

    #[inline(always)]
    pub fn status(self) -> u32 {
        if by_cast() {
            // `unsigned long status`: its low 32 bits hold every `IPS_*` bit.
            kfunc::load::<u64>(self.cast, config!(ct_status) as usize) as u32
        } else {
            status(self.ct)
        }
    }
}

/// `CONFIG.ct_cast`: a frozen `.rodata` value, so the verifier follows one branch only.
#[inline(always)]
fn by_cast() -> bool {
    config!(ct_cast) != 0
}

/// [`tuple`] through the cast `nf_conn` at `off` (a tuple's offset in it): each field loaded at
/// its own offset and size (the verifier checks every load against the struct's members), stored
/// into the key's layout word by word (no `memset` or `memcpy`).
#[inline(always)]
fn cast_tuple(ct: u64, off: usize) -> Option<FlowKey> {
    let family = match kfunc::load::<u16>(ct, off + 18) {
        AF_INET => FAMILY_V4,
        AF_INET6 => FAMILY_V6,
        _ => return None,
    };
    let mut key = MaybeUninit::<FlowKey>::uninit();
    let w = key.as_mut_ptr() as *mut u32;
    // SAFETY: word stores within the 40-byte key, every one of its bytes written once.
    unsafe {
        for i in 0..4 {
            core::ptr::write_volatile(w.add(i), kfunc::load::<u32>(ct, off + 4 * i));
            core::ptr::write_volatile(w.add(4 + i), kfunc::load::<u32>(ct, off + 20 + 4 * i));
        }
        let sport = kfunc::load::<u16>(ct, off + 16).to_ne_bytes();
        let dport = kfunc::load::<u16>(ct, off + 36).to_ne_bytes();
        let proto = kfunc::load::<u8>(ct, off + 38);
        core::ptr::write_volatile(w.add(8), u32::from_ne_bytes([sport[0], sport[1], dport[0], dport[1]]));
        core::ptr::write_volatile(w.add(9), u32::from_ne_bytes([proto, family, 0, 0]));
        Some(key.assume_init())
    }
}
