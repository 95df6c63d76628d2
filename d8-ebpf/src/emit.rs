//! Building events directly in the ring buffer (a 128-byte event on the 512-byte BPF stack would
//! not fit next to the keys), and counting the ones the buffer had no room for.
//!
//! Wake-ups are batched: a record is submitted without waking the reader until the ring is
//! 1/16 full. Userspace drains on a short timer as well (every 100 ms), so a quiet trace still
//! prints promptly, and under load it drains hundreds of records per wake-up instead of a few.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP, BPF_RB_RING_SIZE},
    helpers::bpf_ktime_get_ns,
};
use d8_common::{Event, FlowKey, stat};

use crate::maps::{EVENTS, count};

/// Reserves an event, zeroes it, fills the common fields, lets `fill` set the rest, submits.
#[inline(always)]
pub fn event(kind: u8, hook: u8, key: &FlowKey, fill: impl FnOnce(&mut Event)) {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(stat::LOST);
        return;
    };
    let ev = unsafe {
        let ptr = entry.as_mut_ptr();
        // Zeroed with stores LLVM cannot merge into a `memset` call: a bpf-to-bpf call counts
        // 32 bytes of stack in the verifier's sum, which a program near 512 bytes of stack does
        // not have on 6.1 ("combined stack size of 2 calls is 544. Too large").
        let words = ptr as *mut u64;
        for i in 0..core::mem::size_of::<Event>() / 8 {
            core::ptr::write_volatile(words.add(i), 0);
        }
        &mut *ptr
    };
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev.kind = kind;
    ev.hook = hook;
    ev.ct_dir = 0xff;
    ev.key = *key;
    fill(ev);
    // Queried before submitting: this record is not counted, which is one record of 8,192 at most.
    let filling = EVENTS.query(BPF_RB_AVAIL_DATA as u64) * 16 >= EVENTS.query(BPF_RB_RING_SIZE as u64);
    entry.submit(if filling { BPF_RB_FORCE_WAKEUP } else { BPF_RB_NO_WAKEUP } as u64);
    count(stat::EVENTS);
}
