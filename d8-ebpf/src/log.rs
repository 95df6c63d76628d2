//! Debug logging through aya-log, off unless userspace turns it on (`loader::kernel_log`).
//!
//! Every statement first compares its level with aya-log-ebpf's `AYA_LOG_LEVEL` global, which
//! the loader always sets (the crate's default, 0xff, would log everything). The global lives in
//! `.rodata`, which aya freezes before the programs load, so the verifier reads it as a constant:
//! with logging off (level 0) the branch into each statement is known never taken, and the
//! verifier neither explores nor keeps that code. What stays is the level's load where a program
//! passes a statement (3 instructions; every run passes one, the lost-events check at its end),
//! and nothing is written to the `AYA_LOGS` ring buffer.
//!
//! Records carry numbers, not names: `proto` is the IP protocol, `hook` a `d8_common::hook` value;
//! ports are in host order. Statements sit only where something is decided or fails, never on the
//! path of an ordinary untraced packet. Even pruned, a statement shapes the code around it (what
//! stays live for it, hence spills): `nf_pre` has none where its packet could fail to parse (at
//! an IPv4 hook it never does), which keeps the start of its untraced path instruction for
//! instruction as without logging, and `tc.rs` reads again what a record needs rather than
//! keeping it live.
//!
//! aya-log wraps each statement in a closure. LLVM would outline a closure reached from several
//! programs (or from both TC programs) into a bpf-to-bpf call, and the verifier adds a called
//! function's frame (32 bytes at least) to its caller's even when the call sits in pruned code:
//! `kfree_skb` (496 bytes of stack) and `nf_post` (464) would be refused ("combined stack size").
//! `build.rs` therefore raises bpf-linker's inline threshold so that every statement is inlined;
//! the rest of the crate is `#[inline(always)]` already.

use aya_ebpf::{macros::map, maps::PerCpuArray};
use aya_log_ebpf::{
    debug,
    macro_support::{Level, level_enabled},
    warn,
};
use d8_common::{FAMILY_V6, FlowKey};

/// The IPv4 address in a flow key's first four bytes.
#[inline(always)]
fn v4(addr: &[u8; 16]) -> [u8; 4] {
    [addr[0], addr[1], addr[2], addr[3]]
}

/// A flow to a traced target got state: its first packet (`adopted` false) or a packet of a flow
/// that began before tracing, or whose first packet this hook did not see (`adopted` true). An
/// IPv6 key's addresses are all 16 bytes, written `[addr]:port` as userspace writes them. Each
/// IPv6 statement has its word fixed rather than a `{}` for it: a record's fields are built on
/// the stack all at once, and the two 16-byte addresses only fit in `nf_pre6`'s frame without
/// the word's 24-byte string field.
#[inline(always)]
pub fn flow_started(key: &FlowKey, hook: u8, adopted: bool) {
    if key.family == FAMILY_V6 {
        let (sport, dport) = (u16::from_be(key.sport), u16::from_be(key.dport));
        if adopted {
            debug!(
                &(),
                "adopted flow: proto {} [{:i}]:{} -> [{:i}]:{} at hook {}",
                key.proto,
                key.saddr,
                sport,
                key.daddr,
                dport,
                hook
            );
        } else {
            debug!(
                &(),
                "new flow: proto {} [{:i}]:{} -> [{:i}]:{} at hook {}",
                key.proto,
                key.saddr,
                sport,
                key.daddr,
                dport,
                hook
            );
        }
    } else {
        debug!(
            &(),
            "{} flow: proto {} {:i}:{} -> {:i}:{} at hook {}",
            if adopted { "adopted" } else { "new" },
            key.proto,
            v4(&key.saddr),
            u16::from_be(key.sport),
            v4(&key.daddr),
            u16::from_be(key.dport),
            hook
        );
    }
}

/// `FLOWS` refused a flow of a traced target (it is an LRU map: this should not happen). An IPv6
/// record names the destination (the traced target) alone: both 16-byte addresses do not fit in
/// `nf_pre6`'s frame next to the rest (see [`flow_started`]).
#[inline(always)]
pub fn flow_table_full(key: &FlowKey, err: i32) {
    if key.family == FAMILY_V6 {
        warn!(
            &(),
            "flow table insert failed ({}): a flow proto {} to [{:i}]:{} not traced",
            err,
            key.proto,
            key.daddr,
            u16::from_be(key.dport)
        );
    } else {
        warn!(
            &(),
            "flow table insert failed ({}): flow proto {} {:i}:{} -> {:i}:{} not traced",
            err,
            key.proto,
            v4(&key.saddr),
            u16::from_be(key.sport),
            v4(&key.daddr),
            u16::from_be(key.dport)
        );
    }
}

/// Events this CPU could not hand over since its last [`report_lost`] record. Written only with
/// warnings on.
#[map]
static LOG_LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Called by `emit::event` when the events ring buffer had no room (the event is lost, and
/// counted in `stat::LOST`): counted here too for the next record when warnings are on.
#[inline(always)]
pub fn event_lost() {
    // What every aya-log statement checks first (`AYA_LOG_LEVEL`, frozen): pruned when off.
    if !level_enabled(Level::Warn) {
        return;
    }
    if let Some(n) = LOG_LOST.get_ptr_mut(0) {
        unsafe { *n += 1 };
    }
}

/// At the end of a run of `program`: one record if events were lost on this CPU since the last
/// record (one per run, not per event, so that a full events ring does not flood `AYA_LOGS`
/// too). Nothing stays live across the run. `kfree_skb` never reports (a record does not fit
/// next to its stack): its losses show in the next record of the same CPU.
#[inline(always)]
pub fn report_lost(program: &str) {
    if !level_enabled(Level::Warn) {
        return;
    }
    let Some(n) = LOG_LOST.get_ptr_mut(0) else { return };
    let lost = unsafe { *n };
    if lost != 0 {
        unsafe { *n = 0 };
        warn!(&(), target: program, "events ring buffer full: {} event(s) dropped on this CPU since the last report", lost);
    }
}

/// TC: an IPv4 or IPv6 packet (by `__sk_buff::protocol`) whose headers could not be read or were
/// no such header at `offset` (or an IPv6 packet with more extension headers than are walked), after the link-layer header whose length `TC_L2_LEN` gives the interface
/// (absent: Ethernet's). A wrong length there shows here.
#[inline(always)]
pub fn not_parsed(ifindex: u32, egress: bool, offset: u32) {
    debug!(
        &(),
        "IP packet not parsed: ifindex {} {}, IP header expected at offset {}",
        ifindex,
        if egress { "egress" } else { "ingress" },
        offset
    );
}
