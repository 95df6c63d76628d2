//! Building events directly in the ring buffer (a 128-byte event on the 512-byte BPF stack would
//! not fit next to the keys), and counting the ones the buffer had no room for.
//!
//! Wake-ups are batched. A wake-up is an irq_work (a self-IPI, a VM exit under virtualization)
//! and the kernel's default sends one whenever the reader had caught up, which under load is
//! nearly every record. Here a record wakes the reader only when it fills the ring past another
//! 1/16th; userspace also drains on a short timer (100 ms), so a quiet trace still prints
//! promptly and a busy one is drained hundreds of records per wake-up.

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
        crate::log::event_lost();
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
    entry.submit(wake_flag());
    count(stat::EVENTS);
}

/// Bytes a record takes in the ring: the event and the ring's 8-byte record header.
const RECORD_BYTES: u64 = core::mem::size_of::<Event>() as u64 + 8;

/// `BPF_RB_FORCE_WAKEUP` for the record (already reserved) that crosses a multiple of 1/16 of the
/// ring, `BPF_RB_NO_WAKEUP` for the others. Records reserved at once on other CPUs can make a
/// crossing go unseen; the next one, or the reader's timer, covers it.
#[inline(always)]
fn wake_flag() -> u64 {
    // Unconsumed bytes, this record included; the ring size is a power of two.
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    let step = EVENTS.query(BPF_RB_RING_SIZE as u64) >> 4;
    if step != 0 && pending & (step - 1) < RECORD_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}
