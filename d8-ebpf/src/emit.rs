//! Building events directly in the ring buffer (a 128-byte event on the 512-byte BPF stack would
//! not fit next to the keys), and counting the ones the buffer had no room for.

use aya_ebpf::helpers::bpf_ktime_get_ns;
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
    entry.submit(0);
    count(stat::EVENTS);
}
