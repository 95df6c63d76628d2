//! `--pcap`: copies of the packets of traced flows into the `PACKETS` ring buffer, for the
//! pcapng file userspace writes of the flows that fail.
//!
//! Off (the default) costs nothing: `CONFIG.pcap_snaplen` is frozen `.rodata`, so with 0 there
//! the verifier knows [`enabled`] is false and removes every call site, as it does for the
//! kernel log (`log.rs`). On, a packet is copied only once its flow was found in `FLOWS` (a
//! traced flow), at most `MAX_PACKETS_PER_FLOW` per flow (`FlowState::captured`).
//!
//! Each record is reserved in the ring buffer at its full size (`MAX_SNAPLEN` bytes of data: a
//! reservation's size must be a constant) and the packet is read straight into it, so nothing
//! is added to the programs' stacks (`kfree_skb` is at the 512-byte limit); the record carries
//! the length it captured. Records never wake the reader: userspace drains `PACKETS` on its
//! 100 ms timer and whenever events wake it.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_kernel},
    maps::ring_buf::RingBufEntry,
    programs::TcContext,
};
use d8_common::{
    FlowKey, FlowState, PacketRecord,
    pcap::{MAX_PACKETS_PER_FLOW, MAX_SNAPLEN, site},
    stat,
};

use crate::maps::{PACKETS, config, count};

/// Whether packets are copied: a constant the verifier sees (see the module documentation).
#[inline(always)]
pub fn enabled() -> bool {
    config!(pcap_snaplen) != 0
}

/// Bytes to copy of a packet with `available` bytes readable from its IP header: at most the
/// snap length, at most the record's room. Written as two compare-and-clamp steps the verifier
/// follows, so the helper's size argument has a known upper bound.
#[inline(always)]
fn cap_len(available: u64) -> u32 {
    let mut len = available;
    let snap = config!(pcap_snaplen) as u64;
    if len > snap {
        len = snap;
    }
    if len > MAX_SNAPLEN as u64 {
        len = MAX_SNAPLEN as u64;
    }
    len as u32
}

/// `len` (1 to `MAX_SNAPLEN`, checked by the caller) again, in a form whose bounds older
/// verifiers see at the helper call: 6.1 does not learn `len != 0` from a branch (and
/// `bpf_skb_load_bytes` refuses a size that may be 0), and 5.10 loses the bounds of a value
/// spilled to the stack and loaded again ("R2 min value is negative"). It goes through the
/// record (a volatile store and load), or LLVM, which knows the range, folds the mask away; in
/// the record, not on the stack (the programs are near 512 bytes).
#[inline(always)]
fn bounded(rec: *mut PacketRecord, len: u32) -> u32 {
    unsafe {
        let slot = core::ptr::addr_of_mut!((*rec).cap_len);
        core::ptr::write_volatile(slot, len);
        (core::ptr::read_volatile(slot).wrapping_sub(1) & (MAX_SNAPLEN - 1)) + 1
    }
}

/// Counts one copy against the flow's budget; false when the flow has used it up.
#[inline(always)]
fn take_budget(state: *mut FlowState) -> bool {
    unsafe {
        if (*state).captured >= MAX_PACKETS_PER_FLOW {
            return false;
        }
        (*state).captured += 1;
    }
    true
}

/// Where and what a copy is, besides its bytes.
pub struct Site {
    pub site: u8,
    pub hook: u8,
    pub reply: bool,
    pub ifindex: u32,
    pub reason: u32,
}

/// Reserves a record and fills everything but the data; `None` (counted in `stat::PCAP_LOST`)
/// when the ring is full.
#[inline(always)]
fn reserve(key: &FlowKey, at: &Site) -> Option<RingBufEntry<PacketRecord>> {
    let Some(mut entry) = PACKETS.reserve::<PacketRecord>(0) else {
        count(stat::PCAP_LOST);
        return None;
    };
    let rec = entry.as_mut_ptr();
    unsafe {
        (*rec).ts_ns = bpf_ktime_get_ns();
        (*rec).key = *key;
        // Volatile: where `ifindex` and `reason` are known zeros (the netfilter programs), LLVM
        // merges these four stores into a `memset` call (see the pad below).
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*rec).ifindex), at.ifindex);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*rec).orig_len), 0);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*rec).cap_len), 0);
        core::ptr::write_volatile(core::ptr::addr_of_mut!((*rec).reason), at.reason);
        (*rec).site = at.site;
        (*rec).hook = at.hook;
        (*rec).reply = at.reply as u8;
        // Byte by byte, volatile: `= [0; 5]` becomes a `memset` call, a bpf-to-bpf call whose
        // 32 bytes of stack kfree_skb's program (at 512) does not have on 6.1 ("combined stack
        // size of 2 calls is 544").
        let pad = core::ptr::addr_of_mut!((*rec).pad).cast::<u8>();
        for i in 0..5 {
            core::ptr::write_volatile(pad.add(i), 0);
        }
    }
    Some(entry)
}

/// Fills `entry` with the IP packet whose header is at kernel address `nh` and whose linear data
/// ends at `end` (IPv4's total length, or IPv6's payload length, says how long it is), then
/// submits it; discards it when the packet cannot be read. The length is read into the record
/// itself (its data area), never onto the stack.
#[inline(always)]
fn fill_kernel(mut entry: RingBufEntry<PacketRecord>, nh: u64, end: u64) {
    let rec = entry.as_mut_ptr();
    unsafe {
        let data = (*rec).data.as_mut_ptr();
        if bpf_probe_read_kernel(data as *mut c_void, 8, nh as *const c_void) != 0 {
            entry.discard(0);
            return;
        }
        // Without a branch (one cost the netfilter programs 40 bytes of stack): the version's
        // second bit is 0 for 4, 1 for 6; IPv4's total length is at bytes 2-3, IPv6's payload
        // length at 4-5, after its 40-byte header.
        let v6 = ((*data >> 5) & 1) as usize;
        let at = data.add(2 + 2 * v6);
        let total = u16::from_be_bytes([*at, *at.add(1)]) as u64 + 40 * v6 as u64;
        let linear = end.saturating_sub(nh);
        let len = cap_len(if total < linear { total } else { linear });
        if len == 0 {
            entry.discard(0);
            return;
        }
        let len = bounded(rec, len);
        if bpf_probe_read_kernel(data as *mut c_void, len, nh as *const c_void) != 0 {
            entry.discard(0);
            return;
        }
        (*rec).orig_len = total as u32;
        (*rec).cap_len = len;
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}

/// A netfilter program's packet (trusted `skb`: plain loads of `head`, `network_header`, `tail`).
#[inline(always)]
pub fn netfilter(state: *mut FlowState, skb: u64, key: &FlowKey, site: u8, hook: u8, reply: bool) {
    if !enabled() || !take_budget(state) {
        return;
    }
    let at = Site {
        site,
        hook,
        reply,
        ifindex: 0,
        reason: 0,
    };
    let Some(entry) = reserve(key, &at) else { return };
    let (head, nh, tail) = unsafe {
        (
            core::ptr::read_volatile((skb + config!(skb_head) as u64) as *const u64),
            core::ptr::read_volatile((skb + config!(skb_network_header) as u64) as *const u16),
            core::ptr::read_volatile((skb + config!(skb_tail) as u64) as *const u32),
        )
    };
    fill_kernel(entry, head + nh as u64, head + tail as u64);
}

/// A packet the kernel dropped (`skb:kfree_skb`): the skb's fields are read with
/// `bpf_probe_read_kernel`, into the record being filled rather than onto the stack.
#[inline(always)]
pub fn dropped(state: *mut FlowState, skb: u64, key: &FlowKey, hook: u8, reply: bool, reason: u32) {
    if !enabled() || !take_budget(state) {
        return;
    }
    let at = Site {
        site: site::DROP,
        hook,
        reply,
        ifindex: 0,
        reason,
    };
    let Some(mut entry) = reserve(key, &at) else { return };
    let rec = entry.as_mut_ptr();
    let (nh, end) = unsafe {
        let data = (*rec).data.as_mut_ptr();
        // head (8 bytes), network_header (2), tail (4), each into the data area first.
        let ok = bpf_probe_read_kernel(
            data as *mut c_void,
            8,
            (skb + config!(skb_head) as u64) as *const c_void,
        ) == 0
            && bpf_probe_read_kernel(
                data.add(8) as *mut c_void,
                2,
                (skb + config!(skb_network_header) as u64) as *const c_void,
            ) == 0
            && bpf_probe_read_kernel(
                data.add(12) as *mut c_void,
                4,
                (skb + config!(skb_tail) as u64) as *const c_void,
            ) == 0;
        if !ok {
            entry.discard(0);
            return;
        }
        let head = core::ptr::read_unaligned(data as *const u64);
        (
            head + core::ptr::read_unaligned(data.add(8) as *const u16) as u64,
            head + core::ptr::read_unaligned(data.add(12) as *const u32) as u64,
        )
    };
    fill_kernel(entry, nh, end);
}

/// A TC classifier's packet, from its IP header at `l2_len` (`bpf_skb_load_bytes`, which reads
/// paged data too). Ingress and egress are sites of their own; `ifindex` names the interface.
#[inline(always)]
pub fn tc(ctx: &TcContext, state: *mut FlowState, key: &FlowKey, l2_len: u32, egress: bool, hook: u8, reply: bool) {
    if !enabled() || !take_budget(state) {
        return;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    let at = Site {
        site: if egress { site::TC_EGRESS } else { site::TC_INGRESS },
        hook,
        reply,
        ifindex,
        reason: 0,
    };
    let Some(mut entry) = reserve(key, &at) else { return };
    let rec = entry.as_mut_ptr();
    let total = (ctx.len() as u64).saturating_sub(l2_len as u64);
    let len = cap_len(total);
    if len == 0 {
        entry.discard(0);
        return;
    }
    let len = bounded(rec, len);
    unsafe {
        let data = (*rec).data.as_mut_ptr();
        if aya_ebpf::helpers::generated::bpf_skb_load_bytes(
            ctx.skb.skb as *const c_void,
            l2_len,
            data as *mut c_void,
            len,
        ) != 0
        {
            entry.discard(0);
            return;
        }
        (*rec).orig_len = total as u32;
        (*rec).cap_len = len;
    }
    entry.submit(BPF_RB_NO_WAKEUP as u64);
}
