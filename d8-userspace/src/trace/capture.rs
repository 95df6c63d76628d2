//! The kernel side of a trace once attached ([`Capture`]): the programs of the chosen hook set,
//! the ring buffer, and on the TC set the conntrack-netlink join and link events, drained in
//! bounded slices so the event loop (and the daemon's HTTP server) keeps its turn.

use std::{net::IpAddr, time::Duration};

use d8_common::{Config, TargetKey};
use tokio::io::unix::AsyncFd;

use super::{Error, HookChoice, Join};
use crate::{events, flows::FlowTable, kernel::tracefs, loader::Tracer};

/// What [`Capture::ready`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Ring-buffer records or conntrack events: [`Capture::pump`].
    Records,
    /// Interfaces appeared or went (TC hook set): [`Capture::follow_links`].
    Links,
}

/// The kernel side of a trace, attached: the programs of the chosen hook set, the ring buffer,
/// and on the TC set the conntrack-netlink join and the link-event subscription, each registered
/// with the event loop. Shared by [`run`] and the daemon. Dropping it detaches everything.
pub struct Capture {
    // Field order is drop order: the registrations go before the programs detach.
    ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    join: Option<AsyncFd<super::ctjoin::CtJoin>>,
    link_events: Option<AsyncFd<crate::kernel::rtnetlink::LinkEvents>>,
    tracer: Tracer,
    /// `--pcap`: the packet-copy ring buffer (drained with the events, never waited on: its
    /// records do not wake the reader) and what it held.
    packet_ring: Option<aya::maps::RingBuf<aya::maps::MapData>>,
    packets: super::packets::PacketStore,
    /// A record that waits for the conntrack events queued before it (the join's budget ran out).
    held: Option<events::Event>,
    /// Netfilter set: the TCP connections that were open when the trace began, from the conntrack
    /// table, waiting for their first record.
    existing: Option<super::existing::Existing>,
    decode_errors: u64,
}

impl Capture {
    /// Attaches `choice`'s hook set in the calling thread's network namespace and starts tracing
    /// `targets`. With the conntrack-netlink join, the subscription comes first, so every flow the
    /// programs see has its conntrack event. Must run inside a tokio runtime with IO enabled.
    /// `debug_kernel`: the kernel programs' debug log on (see `loader::kernel_log`).
    #[allow(clippy::too_many_arguments)] // each is one of the setup's decisions, named at the call
    pub fn open(
        choice: &HookChoice,
        config: &Config,
        debug_kernel: bool,
        mount: tracefs::Mount,
        ring_buffer_bytes: u32,
        targets: &[(TargetKey, u32)],
        node_ips: Vec<IpAddr>,
    ) -> Result<Self, Error> {
        let join = match choice.join {
            Join::CtNetlink => Some(super::ctjoin::CtJoin::open(targets, node_ips.clone()).map_err(Error::CtNetlink)?),
            Join::SkbConntrack => None,
        };
        let mut tracer = Tracer::attach_set(config, mount, ring_buffer_bytes, choice.set, debug_kernel)?;
        tracer.set_targets(targets)?;
        let existing = (choice.set == crate::loader::HookSet::Netfilter).then(|| {
            let mut existing = super::existing::Existing::default();
            read_existing(&mut existing, &mut tracer, targets, &node_ips);
            existing
        });
        let mut join = join;
        if let Some(join) = join.as_mut() {
            // The aliases of flows that existed before the trace and of those that began while
            // the programs were attaching, in the kernel before their next packets.
            join.poll(&mut tracer, usize::MAX);
            join.programs_attached();
        }
        let link_events = tracer.take_link_events().map(register).transpose()?;
        let join = join.map(register).transpose()?;
        let ring = register(tracer.take_events()?)?;
        let packet_ring = if config.pcap_snaplen != 0 {
            Some(tracer.take_packets()?)
        } else {
            None
        };
        Ok(Self {
            ring,
            join,
            link_events,
            tracer,
            packet_ring,
            packets: Default::default(),
            held: None,
            existing,
            decode_errors: 0,
        })
    }

    /// Waits until records, conntrack events or link events are ready. Cancel-safe.
    pub async fn ready(&mut self) -> std::io::Result<Ready> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                // Cleared before draining: a record that lands meanwhile wakes us again.
                guard?.clear_ready();
                Ok(Ready::Records)
            }
            r = readable(self.join.as_ref()) => { r?; Ok(Ready::Records) }
            r = readable(self.link_events.as_ref()) => { r?; Ok(Ready::Links) }
        }
    }

    /// Drains the ring buffer (and the conntrack events) into `table`; `changed` is called with
    /// each flow that changed. Call it on readiness and on a periodic tick, since the kernel does
    /// not wake userspace for every record. Under a flood it lets the runtime's other tasks (the
    /// daemon's HTTP server) run every [`PUMP_BUDGET`] records or [`JOIN_BUDGET`] conntrack
    /// events; it never waits otherwise.
    pub async fn pump(&mut self, table: &mut FlowTable, changed: &mut dyn FnMut(&FlowTable, u64)) {
        while self.pump_some(table, changed, SLICE) {
            tokio::task::yield_now().await;
        }
    }

    /// [`Self::pump`] without yielding, for the last drain.
    pub fn pump_all(&mut self, table: &mut FlowTable, changed: &mut dyn FnMut(&FlowTable, u64)) {
        while self.pump_some(table, changed, SLICE) {}
    }

    /// Drains at most `budget` records and conntrack events; true when it stopped there (more
    /// may be waiting).
    fn pump_some(&mut self, table: &mut FlowTable, changed: &mut dyn FnMut(&FlowTable, u64), budget: Budget) -> bool {
        let Self {
            ring,
            join,
            held,
            tracer,
            decode_errors,
            packet_ring,
            packets,
            existing,
            ..
        } = self;
        let mut join = join.as_mut().map(|j| j.get_mut());
        let more = pump(
            ring.get_mut(),
            &mut join,
            existing.as_mut(),
            held,
            tracer,
            table,
            changed,
            decode_errors,
            budget,
        );
        // After the events: the conntrack join has seen the aliases the copies may need.
        let more_packets = match packet_ring.as_mut() {
            Some(rb) => drain_packets(rb, join.as_deref(), packets, decode_errors, budget.records),
            None => false,
        };
        more || more_packets
    }

    /// `--pcap`: the packets copied so far, by flow.
    pub fn packets(&self) -> &super::packets::PacketStore {
        &self.packets
    }

    /// `--pcap`: hands over every packet held (at the end of a trace).
    pub fn take_packets(&mut self) -> super::packets::PacketStore {
        std::mem::take(&mut self.packets)
    }

    /// `--pcap`: drops the packets held for `flow`'s tuple (written, or judged healthy).
    pub fn forget_packets(&mut self, flow: &crate::events::Tuple) {
        self.packets.forget(flow);
    }

    /// Packet copies the kernel could not hand over (the `PACKETS` ring was full).
    pub fn lost_packets(&self) -> u64 {
        self.tracer.counter(d8_common::stat::PCAP_LOST)
    }

    /// Attaches to interfaces that appeared (TC hook set); one line per change or failure.
    pub fn follow_links(&mut self) -> Vec<String> {
        match self.link_events.as_mut() {
            Some(l) => {
                let events = l.get_mut().drain();
                self.tracer.apply_link_events(events)
            }
            None => Vec::new(),
        }
    }

    /// Replaces the traced targets, in the kernel and in the conntrack-netlink join.
    pub fn set_targets(&mut self, targets: &[(TargetKey, u32)], node_ips: Vec<IpAddr>) -> Result<(), Error> {
        self.tracer.set_targets(targets)?;
        if let Some(existing) = self.existing.as_mut() {
            read_existing(existing, &mut self.tracer, targets, &node_ips);
        }
        if let Some(j) = self.join.as_mut() {
            j.get_mut().set_targets(targets, node_ips);
        }
        Ok(())
    }

    /// Ring-buffer reservations the kernel failed.
    pub fn lost_events(&self) -> u64 {
        self.tracer.lost_events()
    }

    /// What is attached, one line each.
    pub fn attached(&self) -> &[String] {
        self.tracer.attached()
    }

    /// Records that could not be decoded.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Conntrack-netlink join: (socket overruns, failed `NAT_ALIAS` updates); zeros without it.
    pub fn join_losses(&self) -> (u64, u64) {
        self.join
            .as_ref()
            .map_or((0, 0), |j| (j.get_ref().overruns(), j.get_ref().map_errors))
    }

    /// Warnings about what the join lost, for the end of a trace.
    pub fn join_warnings(&self) -> Vec<String> {
        let (overruns, map_errors) = self.join_losses();
        let mut w = Vec::new();
        if overruns > 0 {
            w.push(format!(
                "the conntrack netlink socket overflowed {overruns} times: some flows may lack their backend"
            ));
        }
        if map_errors > 0 {
            w.push(format!(
                "{map_errors} NAT_ALIAS updates failed: some flows may miss replies"
            ));
        }
        w
    }
}

/// [`super::existing::Existing::read`], a failure a warning: connections opened before the trace
/// then show when they end (the programs take a flow up at its FIN or RST).
fn read_existing(
    existing: &mut super::existing::Existing,
    tracer: &mut Tracer,
    targets: &[(TargetKey, u32)],
    node_ips: &[IpAddr],
) {
    match existing.read(tracer, targets, node_ips) {
        Ok(n) => tracing::debug!("{n} open TCP connections of traced Services existed before the trace"),
        Err(e) => tracing::warn!(
            "reading the conntrack table: {e}; TCP connections opened before the trace show only once they end or reset"
        ),
    }
}

/// Registers one of the capture's own fd holders (ring buffer, netlink sockets) with the event
/// loop, for reading.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>, Error> {
    // SAFETY: the AsyncFd owns `inner`, which owns its fd (a map or a socket that is never
    // replaced), so the fd stays open and the same until the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }.map_err(|e| Error::Io(e.into()))
}

/// How often the event loops drain the ring buffer whether or not the kernel woke them: the
/// programs may skip wakeups (`BPF_RB_NO_WAKEUP`) while the ring has room.
pub const PUMP_EVERY: Duration = Duration::from_millis(100);

/// Records handled between two chances for the runtime's other tasks to run.
pub const PUMP_BUDGET: usize = 4096;

/// Conntrack events joined (TC hook set) between two chances for the runtime's other tasks to
/// run: each costs a few `bpf()` map syscalls, about 1 ms under the VM's emulation.
pub const JOIN_BUDGET: usize = 256;

const SLICE: Budget = Budget {
    records: PUMP_BUDGET,
    joins: JOIN_BUDGET,
};

/// Waits until `fd` is readable (forever when there is none).
async fn readable<T: std::os::fd::AsRawFd>(fd: Option<&AsyncFd<T>>) -> std::io::Result<()> {
    match fd {
        Some(fd) => {
            fd.readable().await?.clear_ready();
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// What one slice of [`pump`] may do: records handled, conntrack events joined.
#[derive(Debug, Clone, Copy)]
struct Budget {
    records: usize,
    joins: usize,
}

/// Drains the ring buffer into the flow table, at most `budget.records` records and
/// `budget.joins` conntrack events; returns true when it stopped at a budget (more may be
/// waiting). With the conntrack-netlink join, queued conntrack events are read first; a record
/// stamped after the join last caught up may need an event still queued, so the join is polled
/// before it (when the join's budget is spent, the record waits in `held` for the next slice);
/// records keyed by a post-NAT tuple are mapped to their flow, and conntrack events go in last
/// (once the ring is empty: a flow starts with its first packet, not with its conntrack entry).
#[allow(clippy::too_many_arguments, reason = "the capture's parts, borrowed separately")]
fn pump(
    rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
    join: &mut Option<&mut super::ctjoin::CtJoin>,
    mut existing: Option<&mut super::existing::Existing>,
    held: &mut Option<events::Event>,
    tracer: &mut Tracer,
    table: &mut FlowTable,
    changed: &mut dyn FnMut(&FlowTable, u64),
    errors: &mut u64,
    budget: Budget,
) -> bool {
    let mut joins_left = budget.joins;
    if let Some(j) = join.as_deref_mut() {
        joins_left -= j.poll(tracer, joins_left);
    }
    for _ in 0..budget.records {
        let ev = match held.take() {
            Some(ev) => ev,
            None => match rb.next() {
                Some(item) => match events::decode(&item) {
                    Ok(ev) => ev,
                    Err(e) => {
                        *errors += 1;
                        if *errors == 1 {
                            tracing::info!("{e}");
                        }
                        continue;
                    }
                },
                None => {
                    if let Some(j) = join.as_deref_mut() {
                        for ev in j.take_pending() {
                            if let Some(id) = table.apply(&ev) {
                                changed(table, id);
                            }
                        }
                    }
                    return joins_left == 0;
                }
            },
        };
        if let Some(j) = join.as_deref_mut()
            && j.needs_poll(ev.ts_ns)
        {
            joins_left -= j.poll(tracer, joins_left);
            if j.needs_poll(ev.ts_ns) {
                // Its conntrack event may still be queued: join that first, next slice.
                *held = Some(ev);
                return true;
            }
        }
        handle_event(table, ev, join.as_deref_mut(), existing.as_deref_mut(), changed);
    }
    true
}

/// Moves up to `budget` packet copies from the kernel into `store`, each under its flow's
/// ORIGINAL tuple (the conntrack join maps a post-NAT one); true when it stopped at the budget.
fn drain_packets(
    rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
    join: Option<&super::ctjoin::CtJoin>,
    store: &mut super::packets::PacketStore,
    errors: &mut u64,
    budget: usize,
) -> bool {
    for _ in 0..budget {
        let Some(item) = rb.next() else { return false };
        match events::decode_packet(&item) {
            Ok(mut p) => {
                if let Some(j) = join {
                    p.flow = j.original_of(&p.flow);
                }
                store.push(p);
            }
            Err(e) => {
                *errors += 1;
                if *errors == 1 {
                    tracing::info!("{e}");
                }
            }
        }
    }
    true
}

fn handle_event(
    table: &mut FlowTable,
    mut ev: events::Event,
    join: Option<&mut super::ctjoin::CtJoin>,
    existing: Option<&mut super::existing::Existing>,
    changed: &mut dyn FnMut(&FlowTable, u64),
) {
    // A connection open before the trace: its conntrack record (and answer) first.
    if let Some(records) = existing.and_then(|e| e.take_for(&ev)) {
        for record in &records {
            if let Some(id) = table.apply(record) {
                changed(table, id);
            }
        }
    }
    if let Some(j) = join {
        j.translate(&mut ev);
        // The flow's conntrack entry goes in right after its first packet, before
        // anything else about it.
        if let Some(ct) = j.take_pending_for(&ev.flow) {
            let (first, second) = if ev.kind == events::Kind::New {
                (&ev, &ct)
            } else {
                (&ct, &ev)
            };
            for e in [first, second] {
                if let Some(id) = table.apply(e) {
                    changed(table, id);
                }
            }
            return;
        }
    }
    if let Some(id) = table.apply(&ev) {
        changed(table, id);
    }
}
