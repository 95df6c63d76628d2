//! Maps shared by all programs, and the `CONFIG` global. Names are part of the userspace contract
//! (`d8-userspace/src/loader/mod.rs` looks them up by name).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use d8_common::{Config, FlowKey, FlowState, LastHook, TargetKey, TpAddrLayout, flow_filter, stat, target_filter};

/// Kernel offsets, set by the loader. Non-zero defaults keep it in `.rodata`, which aya freezes:
/// the verifier then knows the values and accepts them as constant offsets.
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    skb_head: u32::MAX,
    skb_network_header: u32::MAX,
    skb_nfct: u32::MAX,
    ct_tuple_orig: u32::MAX,
    ct_tuple_reply: u32::MAX,
    ct_status: u32::MAX,
    nf_state_hook: u32::MAX,
    kfree_skbaddr: u32::MAX,
    kfree_reason: u32::MAX,
    send_reset: UNUSED_LAYOUT,
    receive_reset: UNUSED_LAYOUT,
    sock_state: UNUSED_LAYOUT,
    skb_tail: u32::MAX,
    pcap_snaplen: u32::MAX,
    ct_cast: u32::MAX,
};

const UNUSED_LAYOUT: TpAddrLayout = TpAddrLayout {
    kind: u32::MAX,
    saddr: u32::MAX,
    daddr: u32::MAX,
    sport: u32::MAX,
    dport: u32::MAX,
    family: u32::MAX,
    saddr_v6: u32::MAX,
    daddr_v6: u32::MAX,
    protocol: u32::MAX,
    oldstate: u32::MAX,
    newstate: u32::MAX,
};

/// Reads one `CONFIG` field. Volatile: the compiler must not fold the placeholder values.
macro_rules! config {
    ($($field:tt)+) => {
        {
            #[allow(unused_unsafe, reason = "the macro is used inside and outside unsafe blocks")]
            let value = unsafe { core::ptr::read_volatile(core::ptr::addr_of!($crate::maps::CONFIG.$($field)+)) };
            value
        }
    };
}
pub(crate) use config;

/// Traced destinations: Service frontends and their backends (`d8_common::target`).
#[map]
pub static TARGETS: HashMap<TargetKey, u32> = HashMap::with_max_entries(65536, 0);

/// Bitmap in front of `TARGETS` (`d8_common::target_filter`), kept in step by userspace.
#[map]
pub static TARGET_FILTER: Array<u64> = Array::with_max_entries(target_filter::WORDS, 0);

/// Whether `TARGETS` may hold this destination (an inlined array load, no hashing).
#[inline(always)]
pub fn maybe_target(addr: &[u8; 16], port: u16, proto: u8) -> bool {
    target_bit(target_filter::bit(addr, port, proto))
}

/// Whether `TARGET_FILTER` has `bit` set: the one load every form of the test ends in.
#[inline(always)]
fn target_bit(bit: u32) -> bool {
    match TARGET_FILTER.get(bit >> 6) {
        Some(word) => *word & (1u64 << (bit & 63)) != 0,
        None => false,
    }
}

/// [`maybe_target`] for an IPv4 destination, from its four bytes (`target_filter::bit_v4`, the
/// same bit): no 16-byte address to build or hash.
#[inline(always)]
pub fn maybe_target_v4(addr: [u8; 4], port: u16, proto: u8) -> bool {
    target_bit(target_filter::bit_v4(addr, port, proto))
}

/// [`maybe_target`] for an address given as its four native-order words
/// (`target_filter::bit_words`, the same bit), as the netfilter programs load them.
#[inline(always)]
pub fn maybe_target_words(words: [u32; 4], port: u16, proto: u8) -> bool {
    target_bit(target_filter::bit_words(words, port, proto))
}

/// Destinations any key of `FLOWS` or `NAT_ALIAS` has had (`d8_common::flow_filter`): set by
/// [`note_flow_key`] (and userspace, for the aliases it installs) before the key is inserted.
#[map]
pub static FLOW_FILTER: Array<u8> = Array::with_max_entries(flow_filter::ENTRIES, 0);

/// Notes `key`'s destination in `FLOW_FILTER`; call before inserting `key` into `FLOWS` or
/// `NAT_ALIAS`. Written only when clear: a flow's later keys to the same destination leave the
/// cache line shared between CPUs.
#[inline(always)]
pub fn note_flow_key(key: &FlowKey) {
    let bit = target_filter::bit(&key.daddr, key.dport, key.proto);
    if let Some(entry) = FLOW_FILTER.get_ptr_mut(bit) {
        // SAFETY: an entry of the array; a byte store, atomic against other writers' entries.
        unsafe {
            if core::ptr::read_volatile(entry) == 0 {
                core::ptr::write_volatile(entry, 1);
            }
        }
    }
}

/// Whether `FLOWS` or `NAT_ALIAS` can hold `key` or its reverse, which is all that
/// `flows::find` looks up: a key there had its destination noted, so the reverse of one had
/// `key`'s source. One inlined array load per end, no hashing.
#[inline(always)]
pub fn may_hold_flow(key: &FlowKey) -> bool {
    let noted = |addr: &[u8; 16], port: u16| {
        FLOW_FILTER
            .get(target_filter::bit(addr, port, key.proto))
            .is_some_and(|entry| *entry != 0)
    };
    noted(&key.daddr, key.dport) || noted(&key.saddr, key.sport)
}

/// [`may_hold_flow`] of a tuple whose addresses are four native-order words each
/// (`target_filter::bit_words`, the same bits): for the drop tracepoint, which asks it from a
/// conntrack tuple's words as read, before building a key (a `[u8; 16]`'s bytes are loaded and
/// shifted one by one, and building the key moved its 40 bytes twice: 200 instructions that every
/// drop of the node ran, BENCHMARKS.md).
#[inline(always)]
pub fn may_hold_flow_words(src: [u32; 4], sport: u16, dst: [u32; 4], dport: u16, proto: u8) -> bool {
    let noted = |words: [u32; 4], port: u16| {
        FLOW_FILTER
            .get(target_filter::bit_words(words, port, proto))
            .is_some_and(|entry| *entry != 0)
    };
    noted(dst, dport) || noted(src, sport)
}

/// Per-flow state, keyed by the conntrack ORIGINAL tuple.
#[map]
pub static FLOWS: LruHashMap<FlowKey, FlowState> = LruHashMap::with_max_entries(65536, 0);

/// Post-NAT tuple (original direction, as packets look after DNAT/SNAT) -> ORIGINAL tuple, so
/// events seen only after translation (a backend's RST, a drop past the NAT hooks) find their flow.
#[map]
pub static NAT_ALIAS: LruHashMap<FlowKey, FlowKey> = LruHashMap::with_max_entries(65536, 0);

/// The last packets each CPU saw at a hook, newest at `next - 1`: a `kfree_skb` on the same CPU
/// looks its skb up here to say after which hook it died. Several, because a packet's own
/// consequences pass hooks before it is freed (a REJECT sends its ICMP error or RST through
/// OUTPUT and POSTROUTING, then the rejected packet is dropped).
#[repr(C)]
pub struct LastHooks {
    pub entries: [LastHook; LAST_HOOKS],
    pub next: u64,
}

pub const LAST_HOOKS: usize = 4;

#[map]
pub static LAST_HOOK: PerCpuArray<LastHooks> = PerCpuArray::with_max_entries(1, 0);

/// Records that `skb` passed `hook` (`after_ct`: 1 once conntrack has seen it).
#[inline(always)]
pub fn remember(skb: u64, hook: u8, after_ct: u8) {
    if let Some(last) = LAST_HOOK.get_ptr_mut(0) {
        unsafe {
            let i = ((*last).next as usize) & (LAST_HOOKS - 1);
            // Two volatile words, not a struct literal: LLVM zeroes the literal's `pad` with a
            // `memset` call, a bpf-to-bpf call whose 32 bytes of stack the TC egress program
            // (near 512) does not have on 6.1 ("combined stack size of 2 calls is 544"). The
            // second word is `hook`, `after_ct` and the zero pad, little-endian (bpfel).
            let e = core::ptr::addr_of_mut!((*last).entries[i]);
            core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).skb), skb);
            core::ptr::write_volatile((e as *mut u64).add(1), u64::from(hook) | u64::from(after_ct) << 8);
            (*last).next += 1;
        }
    }
}

/// The newest hook this CPU remembered for `skb`: (hook, after_ct).
#[inline(always)]
pub fn last_hook(skb: u64) -> Option<(u8, u8)> {
    let last = LAST_HOOK.get(0)?;
    for back in 1..=LAST_HOOKS as u64 {
        let entry = &last.entries[(last.next.wrapping_sub(back) as usize) & (LAST_HOOKS - 1)];
        if entry.skb == skb {
            return Some((entry.hook, entry.after_ct));
        }
    }
    None
}

/// Per-CPU counters, indexed by `d8_common::stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::COUNT, 0);

/// Events to userspace. Size overridden by the loader (`--ring-buffer-kib`).
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 20, 0);

/// `--pcap`: packet copies to userspace (`pcap.rs`). One page unless packets are copied: the
/// loader sizes it.
#[map]
pub static PACKETS: RingBuf = RingBuf::with_byte_size(1 << 12, 0);

#[inline(always)]
pub fn count(index: u32) {
    if let Some(ptr) = STATS.get_ptr_mut(index) {
        // Per-CPU slot: no other writer.
        unsafe { *ptr += 1 };
    }
}
