//! The TC hook set's join of a flow's pre- and post-DNAT views, from conntrack netlink events:
//! which events belong to traced flows, the post-NAT -> ORIGINAL aliases, and the `Conntrack`
//! events the flow table gets in place of what `nf_post` reads on kernels with netfilter links.

use d8_common::FlowKey;

use crate::{
    events::{Event, Hook, Kind, Tuple},
    kernel::{ctnetlink, monotonic_ns},
    loader::{Tracer, alias},
};

/// The exact join of the TC hook set's pre- and post-DNAT views from conntrack netlink events
/// (for kernels where a TC program cannot read the skb's conntrack entry, and no kprobe is used).
///
/// Every conntrack NEW event of a flow to a traced target (a) installs the flow's post-NAT tuple
/// in the kernel's `NAT_ALIAS` ([`Tracer::join_alias`]), (b) maps records the programs
/// keyed by that post-NAT tuple (before the alias existed) to the ORIGINAL tuple, and (c) becomes a
/// `Conntrack` event for the flow table, as `nf_post` would have sent. The kernel queues the event
/// at confirmation, before the flow's first packet leaves the node (so before the program stamps
/// that packet's record): a record stamped before [`CtJoin::covered_until`] has its event handled
/// already; for a later one, poll first ([`CtJoin::needs_poll`]).
///
/// [`CtJoin::poll`] handles at most a given number of events per call (each costs a few `bpf()`
/// map syscalls, slow under emulation): the caller drains a flood in bounded slices and lets
/// other work run in between. Events read but not handled yet wait in the join, not the socket.
pub struct CtJoin {
    events: ctnetlink::Events,
    bufs: Datagrams,
    inbox: Inbox,
    targets: std::collections::HashSet<d8_common::TargetKey>,
    node_ips: Vec<std::net::IpAddr>,
    alias: std::collections::HashMap<Tuple, Tuple>,
    pending: Pending,
    /// The entries of flows that existed, or began, before the programs were attached
    /// ([`CtJoin::programs_attached`]), by ORIGINAL tuple: given to the flow table with the flow's
    /// first record, never alone (their packets may all have passed unseen).
    early: std::collections::HashMap<Tuple, Event>,
    /// Every event the kernel queued before this instant (monotonic ns) has been handled.
    covered_until: u64,
    /// The kernel takes batched and lookup-and-delete map operations (else one
    /// [`Tracer::join_alias`] per flow).
    fast_join: bool,
    /// Kernel map updates that failed (the flow's later packets may go unjoined in the kernel).
    pub map_errors: u64,
}

/// At most this many post-NAT tuples are remembered; beyond, the map starts over.
const MAX_ALIASES: usize = 200_000;

/// Conntrack events read off the socket and not handled yet, and how far reading got.
#[derive(Debug, Default)]
struct Inbox {
    queued: std::collections::VecDeque<ctnetlink::CtEvent>,
    /// Monotonic time taken before the last read that found the socket empty: every event the
    /// kernel queued before it has been read (into `queued`, or lost to an overrun, counted).
    read_until: u64,
}

/// What one read of the socket gave.
enum Read {
    /// One datagram's events (none after an overrun).
    Events(Vec<ctnetlink::CtEvent>),
    /// Nothing more queued (or the socket failed: nothing more will come from it).
    Empty,
}

impl Inbox {
    /// Reads datagrams until at least `want` events wait or the socket is empty.
    fn fill(&mut self, want: usize, now: impl Fn() -> u64, mut read: impl FnMut() -> Read) {
        while self.queued.len() < want {
            let t = now();
            match read() {
                Read::Events(evs) => self.queued.extend(evs),
                Read::Empty => {
                    self.read_until = t;
                    break;
                }
            }
        }
    }
}

/// Conntrack events waiting for the flow table in arrival order, found by flow in O(1) (a flood
/// leaves thousands waiting while each ring record asks for its own).
#[derive(Debug, Default)]
struct Pending {
    events: std::collections::VecDeque<Option<Event>>,
    /// Sequence number of `events[0]`.
    first: u64,
    by_flow: std::collections::HashMap<Tuple, std::collections::VecDeque<u64>>,
}

impl Pending {
    fn push(&mut self, ev: Event) {
        let seq = self.first + self.events.len() as u64;
        self.by_flow.entry(ev.flow).or_default().push_back(seq);
        self.events.push_back(Some(ev));
    }

    /// The oldest waiting event of `flow`.
    fn take_for(&mut self, flow: &Tuple) -> Option<Event> {
        let seqs = self.by_flow.get_mut(flow)?;
        let seq = seqs.pop_front()?;
        if seqs.is_empty() {
            self.by_flow.remove(flow);
        }
        let ev = self.events.get_mut((seq - self.first) as usize)?.take();
        while let Some(None) = self.events.front() {
            self.events.pop_front();
            self.first += 1;
        }
        ev
    }

    fn take_all(&mut self) -> Vec<Event> {
        self.first += self.events.len() as u64;
        self.by_flow.clear();
        self.events.drain(..).flatten().collect()
    }

    fn len(&self) -> usize {
        self.by_flow.values().map(|q| q.len()).sum()
    }
}

/// Datagrams read per `recvmmsg` call (a conntrack NEW event is one small datagram).
const DATAGRAMS: usize = 64;
/// Room for one datagram.
const DATAGRAM_BYTES: usize = 16 * 1024;

/// Buffers for reading many datagrams with one syscall.
struct Datagrams {
    bufs: Vec<u8>,
    lens: [usize; DATAGRAMS],
}

impl Datagrams {
    fn new() -> Self {
        Self {
            bufs: vec![0u8; DATAGRAMS * DATAGRAM_BYTES],
            lens: [0; DATAGRAMS],
        }
    }

    /// Reads what is queued, up to [`DATAGRAMS`] datagrams, without waiting; 0 when nothing is.
    fn recv(&mut self, fd: std::os::fd::RawFd) -> std::io::Result<usize> {
        // SAFETY: zeroed iovec/mmsghdr are valid; each iovec points into `bufs`, which outlives
        // the call, with its own length.
        let mut iov: [libc::iovec; DATAGRAMS] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; DATAGRAMS] = unsafe { std::mem::zeroed() };
        for (i, (v, m)) in iov.iter_mut().zip(msgs.iter_mut()).enumerate() {
            v.iov_base = self.bufs[i * DATAGRAM_BYTES..].as_mut_ptr().cast();
            v.iov_len = DATAGRAM_BYTES;
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs` holds DATAGRAMS valid headers.
        let n = unsafe {
            libc::recvmmsg(
                fd,
                msgs.as_mut_ptr(),
                DATAGRAMS as u32,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::WouldBlock {
                Ok(0)
            } else {
                Err(e)
            };
        }
        let n = n as usize;
        for (len, m) in self.lens.iter_mut().zip(&msgs).take(n) {
            *len = (m.msg_len as usize).min(DATAGRAM_BYTES);
        }
        Ok(n)
    }

    /// The conntrack events of the first `n` datagrams read.
    fn events(&self, n: usize) -> Vec<ctnetlink::CtEvent> {
        (0..n.min(DATAGRAMS))
            .flat_map(|i| ctnetlink::parse_datagram(&self.bufs[i * DATAGRAM_BYTES..][..self.lens[i]]))
            .collect()
    }
}

/// The `Conntrack` event a conntrack entry of the flow `orig` (its REPLY tuple `reply`) gives
/// the flow table, as `nf_post` sends it after SNAT: seen at OUTPUT for a flow the node itself
/// began, at PREROUTING otherwise.
pub(super) fn conntrack_record(
    ct: &ctnetlink::CtEvent,
    orig: Tuple,
    reply: Tuple,
    node_ips: &[std::net::IpAddr],
) -> Event {
    let from_node = node_ips.contains(&orig.src.ip());
    Event {
        ts_ns: monotonic_ns(),
        flow: orig,
        hook: Some(if from_node { Hook::Output } else { Hook::Prerouting }),
        reply_direction: Some(false),
        tcp_flags: 0,
        client_side: false,
        kind: Kind::Conntrack {
            reply,
            status: ct.status,
            after_snat: true,
        },
    }
}

/// The traced target an entry's ORIGINAL tuple asks for.
pub(super) fn target_of(ct: &ctnetlink::CtEvent) -> d8_common::TargetKey {
    d8_common::TargetKey {
        addr: ct.orig.daddr,
        port: ct.orig.dport,
        proto: ct.orig.proto,
        family: ct.orig.family,
    }
}

impl CtJoin {
    /// Subscribes to conntrack events in the current network namespace: do it before attaching,
    /// so no flow the programs see lacks its event. Then reads the entries of traced flows that
    /// exist already (connections opened before the trace, which will never send an event):
    /// without their aliases, the replies of such a flow would never be tied to it and it would
    /// read as unanswered. Subscribed first, dumped second: no entry falls between the two.
    pub fn open(targets: &[(d8_common::TargetKey, u32)], node_ips: Vec<std::net::IpAddr>) -> std::io::Result<Self> {
        let events = ctnetlink::Events::open()?;
        let targets: std::collections::HashSet<d8_common::TargetKey> = targets.iter().map(|(k, _)| *k).collect();
        let existing = match ctnetlink::dump(|ct| targets.contains(&target_of(ct))) {
            Ok(existing) => existing,
            Err(e) => {
                tracing::warn!(
                    "reading the conntrack table: {e}; connections opened before the trace may show no replies"
                );
                Vec::new()
            }
        };
        tracing::debug!(
            "{} conntrack entries of traced Services existed before the trace",
            existing.len()
        );
        // Joined by the first poll like events, ahead of them.
        let mut inbox = Inbox::default();
        inbox.queued.extend(existing);
        Ok(Self {
            events,
            bufs: Datagrams::new(),
            inbox,
            targets,
            node_ips,
            alias: Default::default(),
            pending: Pending::default(),
            early: Default::default(),
            covered_until: 0,
            fast_join: true,
            map_errors: 0,
        })
    }

    /// Replaces the traced targets (and the node's addresses) when the rules change.
    pub fn set_targets(&mut self, targets: &[(d8_common::TargetKey, u32)], node_ips: Vec<std::net::IpAddr>) {
        self.targets = targets.iter().map(|(k, _)| *k).collect();
        self.node_ips = node_ips;
    }

    /// Reads queued conntrack events and joins the ones of traced flows, at most `max` of them;
    /// returns how many it handled. Fewer than `max` means none is left (until the kernel queues
    /// more); the rest of a longer queue waits for the next call.
    pub fn poll(&mut self, tracer: &mut Tracer, max: usize) -> usize {
        let Self {
            events, inbox, bufs, ..
        } = self;
        let fd = std::os::fd::AsRawFd::as_raw_fd(events.socket());
        inbox.fill(max, monotonic_ns, || match bufs.recv(fd) {
            Ok(0) => Read::Empty,
            Ok(n) => Read::Events(bufs.events(n)),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                events.overruns += 1;
                Read::Events(Vec::new())
            }
            Err(_) => Read::Empty,
        });
        let n = max.min(self.inbox.queued.len());
        let mut joins = Vec::with_capacity(n);
        for _ in 0..n {
            if let Some(ct) = self.inbox.queued.pop_front() {
                self.handle(ct, &mut joins);
            }
        }
        self.map_errors += alias::kernel_join(tracer, &joins, &mut self.fast_join);
        if self.inbox.queued.is_empty() {
            self.covered_until = self.inbox.read_until;
        }
        n
    }

    /// Whether a record the programs stamped at `ts_ns` may need a conntrack event not handled
    /// yet: [`Self::poll`] first.
    pub fn needs_poll(&self, ts_ns: u64) -> bool {
        ts_ns >= self.covered_until
    }

    /// Joins one entry; a NAT'd flow's (post-NAT, ORIGINAL) tuples go to `joins`, for the kernel.
    fn handle(&mut self, ct: ctnetlink::CtEvent, joins: &mut Vec<(FlowKey, FlowKey)>) {
        if !self.targets.contains(&target_of(&ct)) {
            return;
        }
        let (Ok(orig), Ok(reply)) = (crate::events::tuple(&ct.orig), crate::events::tuple(&ct.reply)) else {
            return;
        };
        if let Some(post) = ct.post_nat() {
            joins.push((post, ct.orig));
            if let Ok(post) = crate::events::tuple(&post) {
                if self.alias.len() >= MAX_ALIASES {
                    self.alias.clear();
                }
                self.alias.insert(post, orig);
            }
        }
        self.pending.push(conntrack_record(&ct, orig, reply, &self.node_ips));
    }

    /// The flow's ORIGINAL tuple for a record keyed by its post-NAT tuple.
    /// The ORIGINAL tuple of a flow known by its post-NAT tuple; other tuples as they are.
    pub fn original_of(&self, flow: &Tuple) -> Tuple {
        self.alias.get(flow).copied().unwrap_or(*flow)
    }

    pub fn translate(&self, ev: &mut Event) {
        if let Some(orig) = self.alias.get(&ev.flow) {
            ev.flow = *orig;
        }
    }

    /// Call once the programs are attached, after a [`Self::poll`] that read every queued event:
    /// the entries read so far are of connections opened before the trace or while the programs
    /// were attaching, whose packets may all have passed unseen. Given to the flow table alone,
    /// such an entry would make a flow with a backend and nothing else, read as unanswered; it
    /// waits instead for the flow's first record ([`Self::take_pending_for`]).
    pub fn programs_attached(&mut self) {
        for ev in self.pending.take_all() {
            if self.early.len() >= MAX_ALIASES {
                self.early.clear();
            }
            self.early.entry(ev.flow).or_insert(ev);
        }
    }

    /// Conntrack events read so far, for the flow table (after the ring buffer was drained, so a
    /// flow starts with its first packet rather than with its conntrack entry).
    pub fn take_pending(&mut self) -> Vec<Event> {
        self.pending.take_all()
    }

    /// The conntrack event read for `flow`, if it has not gone to the flow table yet: it must
    /// precede the flow's records other than its first packet (a reset is judged by whether the
    /// flow has a backend). For a flow from before the programs were attached, its entry.
    pub fn take_pending_for(&mut self, flow: &Tuple) -> Option<Event> {
        self.pending.take_for(flow).or_else(|| self.early.remove(flow))
    }

    /// Conntrack events handled but not yet given to the flow table.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Times the socket overflowed: conntrack events (joins) were lost.
    pub fn overruns(&self) -> u64 {
        self.events.overruns
    }
}

impl std::os::fd::AsRawFd for CtJoin {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.events.socket().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ctnetlink::{CtEvent, parse_datagram, tests::ct_new_message};

    fn ct(port: u16) -> CtEvent {
        let msg = ct_new_message(
            ([10, 0, 0, 1], port, [10, 96, 0, 10], 80),
            ([10, 244, 1, 2], 8080, [10, 0, 0, 1], port),
            6,
            8,
        );
        parse_datagram(&msg)[0]
    }

    /// A socket holding `datagrams`, read one per call; the clock ticks once per read.
    fn socket(datagrams: Vec<Vec<CtEvent>>) -> (impl FnMut() -> Read, impl Fn() -> u64) {
        let clock = std::rc::Rc::new(std::cell::Cell::new(100u64));
        let c = clock.clone();
        let mut left = std::collections::VecDeque::from(datagrams);
        let read = move || {
            c.set(c.get() + 1);
            match left.pop_front() {
                Some(d) => Read::Events(d),
                None => Read::Empty,
            }
        };
        (read, move || clock.get())
    }

    #[test]
    fn inbox_reads_no_more_than_the_budget_and_knows_when_it_emptied_the_socket() {
        let datagrams: Vec<Vec<CtEvent>> = (0..10).map(|i| vec![ct(40000 + i)]).collect();
        let (mut read, now) = socket(datagrams);
        let mut inbox = Inbox::default();
        inbox.fill(4, &now, &mut read);
        assert_eq!(inbox.queued.len(), 4, "stops at the budget");
        assert_eq!(
            inbox.read_until, 0,
            "the socket was not emptied: nothing is known to be read"
        );
        // Handled: the next call reads the rest, in order, and notes when the socket was empty.
        let first: Vec<u16> = inbox.queued.drain(..).map(|c| u16::from_be(c.orig.sport)).collect();
        assert_eq!(first, [40000, 40001, 40002, 40003]);
        inbox.fill(100, &now, &mut read);
        let rest: Vec<u16> = inbox.queued.iter().map(|c| u16::from_be(c.orig.sport)).collect();
        assert_eq!(rest, (40004..40010).collect::<Vec<_>>(), "nothing lost between slices");
        // The clock read before the read that found the socket empty.
        assert_eq!(inbox.read_until, 100 + 10);
        // A zero budget reads nothing.
        let (mut read, now) = socket(vec![vec![ct(1)]]);
        let mut inbox = Inbox::default();
        inbox.fill(0, &now, &mut read);
        assert!(inbox.queued.is_empty());
        // A datagram with several events (and an overrun's empty one) may overshoot the budget:
        // the overshoot waits in the inbox.
        let (mut read, now) = socket(vec![vec![], vec![ct(1), ct(2), ct(3)]]);
        let mut inbox = Inbox::default();
        inbox.fill(2, &now, &mut read);
        assert_eq!(inbox.queued.len(), 3);
    }

    fn event(port: u16) -> Event {
        Event {
            ts_ns: port as u64,
            flow: Tuple {
                proto: 6,
                src: format!("10.0.0.1:{port}").parse().unwrap(),
                dst: "10.96.0.10:80".parse().unwrap(),
            },
            hook: None,
            reply_direction: None,
            tcp_flags: 0,
            client_side: false,
            kind: Kind::New,
        }
    }

    #[test]
    fn pending_events_are_found_by_flow_and_the_rest_keep_their_order() {
        let mut p = Pending::default();
        for port in 1..=5 {
            p.push(event(port));
        }
        // The same flow again (a reused tuple): its events come out oldest first.
        let mut again = event(3);
        again.ts_ns = 33;
        p.push(again);
        assert_eq!(p.len(), 6);
        assert_eq!(p.take_for(&event(1).flow).map(|e| e.ts_ns), Some(1));
        assert_eq!(p.take_for(&event(3).flow).map(|e| e.ts_ns), Some(3));
        assert_eq!(p.take_for(&event(3).flow).map(|e| e.ts_ns), Some(33));
        assert_eq!(p.take_for(&event(3).flow), None);
        assert_eq!(p.take_for(&event(9).flow), None);
        assert_eq!(p.first, 1, "slots at the front are freed");
        let rest: Vec<u64> = p.take_all().iter().map(|e| e.ts_ns).collect();
        assert_eq!(rest, [2, 4, 5]);
        assert_eq!(p.len(), 0);
        p.push(event(7));
        assert_eq!(p.take_for(&event(7).flow).map(|e| e.ts_ns), Some(7));
        assert!(p.events.is_empty());
    }

    #[test]
    fn many_pending_events_are_taken_in_linear_time() {
        let mut p = Pending::default();
        for port in 0..50_000u16 {
            p.push(event(port));
        }
        let started = std::time::Instant::now();
        for port in (0..50_000u16).rev() {
            assert!(p.take_for(&event(port).flow).is_some());
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(p.events.is_empty());
    }
}
