//! Finding a flow's state from whatever tuple a hook or tracepoint has at hand.

use d8_common::{FlowKey, FlowState};

use crate::{
    log,
    maps::{FLOWS, NAT_ALIAS, note_flow_key},
    packet::{copy_key, reversed},
};

/// Gives `key` flow state with `seen` set; `None` (and a log record) when `FLOWS` refused it.
#[inline(always)]
pub fn insert(key: &FlowKey, seen: u32) -> Option<()> {
    note_flow_key(key);
    let mut state = core::mem::MaybeUninit::<FlowState>::uninit();
    if let Err(e) = FLOWS.insert(key, fresh(&mut state, seen), 0) {
        log::flow_table_full(key, e);
        return None;
    }
    Some(())
}

/// A flow's first state in `slot`: `seen`, the rest zero. Volatile word stores in place, and
/// a reference, not a value: LLVM would zero the 32 bytes (or the copy of a value) with a
/// `memset` call, a bpf-to-bpf call whose 32 bytes of stack the programs near 512 do not have
/// on 6.1 ("combined stack size of 2 calls is 544").
#[inline(always)]
fn fresh(slot: &mut core::mem::MaybeUninit<FlowState>, seen: u32) -> &FlowState {
    let words = slot.as_mut_ptr() as *mut u32;
    // SAFETY: every word of the slot written; any bytes are a valid `FlowState`.
    unsafe {
        core::ptr::write_volatile(words, seen);
        for i in 1..core::mem::size_of::<FlowState>() / 4 {
            core::ptr::write_volatile(words.add(i), 0);
        }
        slot.assume_init_ref()
    }
}

/// Starts the flow of `state` again (the client reused the ports of a finished flow): only
/// `NEW` seen. The other fields are meaningful only under bits now clear.
#[inline(always)]
pub fn restart(state: *mut FlowState) {
    unsafe {
        (*state).seen = d8_common::seen::NEW;
        (*state).last_drop_reason = 0;
        (*state).captured = 0;
    }
}

/// A flow found in `FLOWS`.
pub struct Found {
    pub state: *mut FlowState,
    /// The flow's ORIGINAL tuple.
    pub key: FlowKey,
    /// Matched through the post-NAT alias.
    pub via_nat: bool,
    /// `key` was given in the reply direction.
    pub reversed: bool,
}

#[inline(always)]
fn direct(key: &FlowKey, reversed: bool) -> Option<Found> {
    if let Some(state) = FLOWS.get_ptr_mut(key) {
        return Some(Found {
            state,
            key: *key,
            via_nat: false,
            reversed,
        });
    }
    let orig = copy_key(unsafe { NAT_ALIAS.get(key) }?);
    let state = FLOWS.get_ptr_mut(&orig)?;
    Some(Found {
        state,
        key: orig,
        via_nat: true,
        reversed,
    })
}

/// Looks `key` up as the flow's original direction, then as its reply direction; each both as the
/// ORIGINAL tuple and as the post-NAT tuple.
#[inline(always)]
pub fn find(key: &FlowKey) -> Option<Found> {
    if let Some(found) = direct(key, false) {
        return Some(found);
    }
    direct(&reversed(key), true)
}

/// [`find`] for a tuple whose traced end is its source: a backend's own socket, whose tuple runs
/// against its flow's. Its reverse is the flow's tuple after DNAT, found through the alias:
/// asked there first, then as the ORIGINAL tuple (a flow to the pod's own address, which NAT did
/// not change), then the tuple as it is. A backend socket's state change costs two hash lookups,
/// not five (issue 18).
#[inline(always)]
pub fn find_reply_first(key: &FlowKey) -> Option<Found> {
    let back = reversed(key);
    let found = |key: FlowKey, via_nat: bool| {
        FLOWS.get_ptr_mut(&key).map(|state| Found {
            state,
            key,
            via_nat,
            reversed: true,
        })
    };
    if let Some(orig) = unsafe { NAT_ALIAS.get(&back) }
        && let Some(f) = found(copy_key(orig), true)
    {
        return Some(f);
    }
    found(back, false).or_else(|| direct(key, false))
}

/// Sets `bit` in the flow's state; returns whether it was newly set (an event is due).
#[inline(always)]
pub fn mark(state: *mut FlowState, bit: u32) -> bool {
    unsafe {
        if (*state).seen & bit != 0 {
            return false;
        }
        (*state).seen |= bit;
    }
    true
}

/// Reports an ICMP error (`icmp_type`/`icmp_code`, sent by `from`) quoting a packet whose key is
/// `quoted`, once per flow. Both hook sets call it with the quoted packet they parsed; the flow
/// found (reported now or before) is returned for the packet copy.
#[inline(always)]
pub fn report_icmp_error(quoted: &FlowKey, icmp_type: u8, icmp_code: u8, from: [u8; 16], hook: u8) -> Option<Found> {
    let found = find(quoted)?;
    if !mark(found.state, d8_common::seen::ICMP) {
        return Some(found);
    }
    crate::emit::event(d8_common::kind::ICMP_ERROR, hook, &found.key, |ev| {
        ev.icmp_type = icmp_type;
        ev.icmp_code = icmp_code;
        ev.aux = from;
        if found.via_nat {
            ev.flags |= d8_common::flags::VIA_NAT;
        }
    });
    Some(found)
}
