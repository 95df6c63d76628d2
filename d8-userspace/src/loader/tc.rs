//! The TC hook set's attach logic: `d8_tc_ingress` and `d8_tc_egress` (clsact classifiers) on
//! every interface of the current network namespace but loopback, on interfaces that appear while
//! tracing, and off again on drop.
//!
//! From 6.6 aya attaches through TCX links (no qdisc involved; closing the link detaches). Before
//! 6.6 (or with `D8_TC_NETLINK=1`) it attaches netlink filters, which need a `clsact` qdisc: d8-trace
//! adds one where none exists and, on drop, removes only the ones it added, after its filters.
//! The kernel programs learn each interface's link-layer header length from `TC_L2_LEN`.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::HashMap as BpfHashMap,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
    },
};

use d8_common::{FlowKey, FlowState};

use crate::kernel::rtnetlink::{self, ARPHRD_LOOPBACK, Link, LinkEvent, LinkEvents};

/// (program, attach point).
pub const PROGRAMS: &[(&str, TcAttachType)] =
    &[("d8_tc_ingress", TcAttachType::Ingress), ("d8_tc_egress", TcAttachType::Egress)];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the BPF object has no program {0}")]
    Missing(&'static str),
    #[error("loading TC program {name}: {source}")]
    Load {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("listing the interfaces of this network namespace: {0}")]
    Links(#[source] std::io::Error),
    #[error("subscribing to link events: {0}")]
    LinkEvents(#[source] std::io::Error),
    #[error("attaching TC programs to {iface}: {reason}")]
    Attach { iface: String, reason: String },
}

struct Iface {
    name: String,
    links: Vec<SchedClassifierLink>,
    /// d8-trace added this interface's clsact qdisc (netlink mode) and removes it on drop.
    clsact_ours: bool,
}

/// Attached TC programs. Dropping detaches everything and removes the qdiscs d8-trace added.
pub struct Hooks {
    ifaces: BTreeMap<u32, Iface>,
    netlink: bool,
    events: Option<LinkEvents>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing(name))?
        .try_into()
        .map_err(|source| Error::Load { name, source })
}

/// Whether programs attach through netlink filters (and need clsact) rather than TCX links.
pub fn uses_netlink() -> bool {
    std::env::var("D8_TC_NETLINK").is_ok_and(|v| v == "1")
        || crate::kernel::version().is_none_or(|v| v < (6, 6))
}

impl Hooks {
    /// Loads both programs and attaches them to every interface there is now; subscribes to link
    /// events first, so an interface that appears meanwhile is not missed.
    pub fn attach_all(ebpf: &mut Ebpf) -> Result<Self, Error> {
        for &(name, _) in PROGRAMS {
            program(ebpf, name)?.load().map_err(|source| Error::Load { name, source })?;
        }
        let events = LinkEvents::open().map_err(Error::LinkEvents)?;
        let mut hooks = Self { ifaces: BTreeMap::new(), netlink: uses_netlink(), events: Some(events) };
        for link in rtnetlink::links().map_err(Error::Links)? {
            hooks.attach(ebpf, &link)?;
        }
        Ok(hooks)
    }

    /// `tc` and `tcx` descriptions of what is attached, for `doctor` and the start line.
    pub fn describe(&self) -> Vec<String> {
        let how = if self.netlink { "clsact filter" } else { "tcx link" };
        self.ifaces.values().map(|i| format!("tc d8_tc_ingress+d8_tc_egress on {} ({how})", i.name)).collect()
    }

    /// The link-event subscription, to wait on; call once.
    pub fn take_link_events(&mut self) -> Option<LinkEvents> {
        self.events.take()
    }

    fn attach(&mut self, ebpf: &mut Ebpf, link: &Link) -> Result<(), Error> {
        if link.kind == ARPHRD_LOOPBACK || self.ifaces.contains_key(&link.index) {
            return Ok(());
        }
        let fail = |reason: String| Error::Attach { iface: link.name.clone(), reason };
        if let Some(map) = ebpf.map_mut("TC_L2_LEN") {
            let mut map: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(map).map_err(|e| fail(e.to_string()))?;
            map.insert(link.index, link.l2_len(), 0).map_err(|e| fail(e.to_string()))?;
        }
        let mut iface = Iface { name: link.name.clone(), links: Vec::new(), clsact_ours: false };
        if self.netlink {
            iface.clsact_ours = rtnetlink::add_clsact(link.index).map_err(|e| fail(format!("adding clsact: {e}")))?;
        }
        // Recorded before attaching: a failure half-way still detaches what got attached.
        self.ifaces.insert(link.index, iface);
        for &(name, attach_type) in PROGRAMS {
            let prog = program(ebpf, name)?;
            let options = if self.netlink {
                TcAttachOptions::Netlink(NlOptions::default())
            } else {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            };
            let id = prog
                .attach_with_options(&link.name, attach_type, options)
                .map_err(|e| fail(format!("{name}: {e}")))?;
            let owned = prog.take_link(id).map_err(|e| fail(format!("{name}: {e}")))?;
            if let Some(i) = self.ifaces.get_mut(&link.index) {
                i.links.push(owned);
            }
        }
        Ok(())
    }

    /// Applies link events: attaches to new interfaces, forgets deleted ones (the kernel removed
    /// their hooks with them). Returns one line per change, and per failure (tracing goes on).
    pub fn apply(&mut self, ebpf: &mut Ebpf, events: Vec<LinkEvent>) -> Vec<String> {
        let mut notes = Vec::new();
        for ev in events {
            match ev {
                LinkEvent::New(link) => {
                    if link.kind == ARPHRD_LOOPBACK || self.ifaces.contains_key(&link.index) {
                        continue;
                    }
                    match self.attach(ebpf, &link) {
                        Ok(()) => notes.push(format!("attached TC programs to new interface {}", link.name)),
                        Err(e) => {
                            // Undo what got attached (an interface that vanished meanwhile has
                            // nothing left to undo; the errors then say nothing new).
                            if let Some(mut i) = self.ifaces.remove(&link.index) {
                                i.links.clear();
                                if i.clsact_ours {
                                    let _ = rtnetlink::del_clsact(link.index);
                                }
                                i.clsact_ours = false;
                            }
                            notes.push(format!("warning: {e}"));
                        }
                    }
                }
                LinkEvent::Deleted(link) => {
                    if let Some(mut iface) = self.ifaces.remove(&link.index) {
                        // Its filters and qdisc went with it; detaching would only fail.
                        iface.clsact_ours = false;
                        for l in iface.links.drain(..) {
                            std::mem::forget(l);
                        }
                    }
                }
            }
        }
        notes
    }

    /// Number of interfaces with programs attached.
    pub fn interfaces(&self) -> usize {
        self.ifaces.len()
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        for (index, mut iface) in std::mem::take(&mut self.ifaces) {
            // Filters first, then the qdisc they hung on (only ours).
            iface.links.clear();
            if iface.clsact_ours
                && let Err(e) = rtnetlink::del_clsact(index)
            {
                eprintln!("d8-trace: warning: removing the clsact qdisc d8-trace added to {}: {e}", iface.name);
            }
        }
    }
}

/// The exact join of the TC hook set's pre- and post-DNAT views from conntrack netlink events
/// (for kernels where a TC program cannot read the skb's conntrack entry, and no kprobe is used).
///
/// Every conntrack NEW event of a flow to a traced target (a) installs the flow's post-NAT tuple
/// in the kernel's `NAT_ALIAS` ([`super::Tracer::join_alias`]), (b) maps records the programs
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
    events: crate::kernel::ctnetlink::Events,
    bufs: Datagrams,
    inbox: Inbox,
    targets: std::collections::HashSet<d8_common::TargetKey>,
    node_ips: Vec<std::net::IpAddr>,
    alias: std::collections::HashMap<crate::events::Tuple, crate::events::Tuple>,
    pending: Pending,
    /// Every event the kernel queued before this instant (monotonic ns) has been handled.
    covered_until: u64,
    /// The kernel takes batched and lookup-and-delete map operations (else one
    /// [`super::Tracer::join_alias`] per flow).
    fast_join: bool,
    /// Kernel map updates that failed (the flow's later packets may go unjoined in the kernel).
    pub map_errors: u64,
}

/// At most this many post-NAT tuples are remembered; beyond, the map starts over.
const MAX_ALIASES: usize = 200_000;

/// Conntrack events read off the socket and not handled yet, and how far reading got.
#[derive(Debug, Default)]
struct Inbox {
    queued: std::collections::VecDeque<crate::kernel::ctnetlink::CtEvent>,
    /// Monotonic time taken before the last read that found the socket empty: every event the
    /// kernel queued before it has been read (into `queued`, or lost to an overrun, counted).
    read_until: u64,
}

/// What one read of the socket gave.
enum Read {
    /// One datagram's events (none after an overrun).
    Events(Vec<crate::kernel::ctnetlink::CtEvent>),
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
    events: std::collections::VecDeque<Option<crate::events::Event>>,
    /// Sequence number of `events[0]`.
    first: u64,
    by_flow: std::collections::HashMap<crate::events::Tuple, std::collections::VecDeque<u64>>,
}

impl Pending {
    fn push(&mut self, ev: crate::events::Event) {
        let seq = self.first + self.events.len() as u64;
        self.by_flow.entry(ev.flow).or_default().push_back(seq);
        self.events.push_back(Some(ev));
    }

    /// The oldest waiting event of `flow`.
    fn take_for(&mut self, flow: &crate::events::Tuple) -> Option<crate::events::Event> {
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

    fn take_all(&mut self) -> Vec<crate::events::Event> {
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
        Self { bufs: vec![0u8; DATAGRAMS * DATAGRAM_BYTES], lens: [0; DATAGRAMS] }
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
            libc::recvmmsg(fd, msgs.as_mut_ptr(), DATAGRAMS as u32, libc::MSG_DONTWAIT, std::ptr::null_mut())
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            return if e.kind() == std::io::ErrorKind::WouldBlock { Ok(0) } else { Err(e) };
        }
        let n = n as usize;
        for (len, m) in self.lens.iter_mut().zip(&msgs).take(n) {
            *len = (m.msg_len as usize).min(DATAGRAM_BYTES);
        }
        Ok(n)
    }

    /// The conntrack events of the first `n` datagrams read.
    fn events(&self, n: usize) -> Vec<crate::kernel::ctnetlink::CtEvent> {
        (0..n.min(DATAGRAMS))
            .flat_map(|i| {
                crate::kernel::ctnetlink::parse_datagram(&self.bufs[i * DATAGRAM_BYTES..][..self.lens[i]])
            })
            .collect()
    }
}

/// Raw `bpf()` map commands the join batches (aya has no batch operations).
mod bpf_sys {
    pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    pub const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    pub const BPF_ANY: u64 = 0;
    /// The kernel's own "operation not supported" (not in libc).
    pub const ENOTSUPP: i32 = 524;
    pub const BPF_NOEXIST: u64 = 1;

    /// `bpf_attr` for the `*_ELEM` commands.
    #[repr(C)]
    pub struct Elem {
        pub map_fd: u32,
        pub pad: u32,
        pub key: u64,
        pub value: u64,
        pub flags: u64,
    }

    /// `bpf_attr` for the `*_BATCH` commands.
    #[repr(C)]
    pub struct Batch {
        pub in_batch: u64,
        pub out_batch: u64,
        pub keys: u64,
        pub values: u64,
        pub count: u32,
        pub map_fd: u32,
        pub elem_flags: u64,
        pub flags: u64,
    }

    pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
        // SAFETY: `attr` is a valid `bpf_attr` prefix of its own size; the pointers in it point
        // to memory the caller keeps alive for the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
        if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
    }

    pub fn elem<K, V>(cmd: libc::c_long, fd: i32, key: &K, value: *mut V, flags: u64) -> std::io::Result<()> {
        let mut attr =
            Elem { map_fd: fd as u32, pad: 0, key: key as *const K as u64, value: value as u64, flags };
        bpf(cmd, &mut attr)
    }
}

fn map_fd(tracer: &super::Tracer, name: &str) -> Option<i32> {
    use std::os::fd::{AsFd, AsRawFd};
    Some(super::map_data(tracer.ebpf.map(name)?).fd().as_fd().as_raw_fd())
}

/// Installs the post-NAT aliases of `joins` in the kernel (`NAT_ALIAS`) and moves what the
/// programs recorded under a post-NAT tuple to the ORIGINAL one (`FLOWS`), as
/// [`super::Tracer::join_alias`] does per flow with five map syscalls, here with one
/// batched update for all aliases and two or three syscalls per flow. Falls back to
/// `join_alias` (and stays there) when the kernel lacks the batched commands. Returns the
/// number of failed updates.
fn kernel_join(tracer: &mut super::Tracer, joins: &[(FlowKey, FlowKey)], fast: &mut bool) -> u64 {
    use bpf_sys::*;
    if joins.is_empty() {
        return 0;
    }
    if *fast
        && let (Some(alias), Some(flows)) = (map_fd(tracer, "NAT_ALIAS"), map_fd(tracer, "FLOWS"))
    {
        let keys: Vec<FlowKey> = joins.iter().map(|(post, _)| *post).collect();
        let values: Vec<FlowKey> = joins.iter().map(|(_, orig)| *orig).collect();
        let mut attr = Batch {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: joins.len() as u32,
            map_fd: alias as u32,
            elem_flags: BPF_ANY,
            flags: 0,
        };
        let batched = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        if batched.is_ok() {
            let mut failed = 0;
            for (post, orig) in joins {
                match flows_merge(flows, post, orig) {
                    Ok(()) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)) => {
                        eprintln!("d8-trace: note: FLOWS lookup-and-delete unavailable ({e}): joining with single map operations");
                        *fast = false;
                        break;
                    }
                    Err(_) => failed += 1,
                }
            }
            if *fast {
                return failed;
            }
        } else {
            eprintln!(
                "d8-trace: note: batched NAT_ALIAS updates unavailable ({}): joining with single map operations",
                batched.err().map(|e| e.to_string()).unwrap_or_default()
            );
            *fast = false;
        }
    }
    joins.iter().filter(|(post, orig)| tracer.join_alias(post, orig).is_err()).count() as u64
}

/// `FLOWS[orig] |= FLOWS.take(post)`; `FLOWS[orig]` exists afterwards (the programs find a
/// flow through its alias only then).
fn flows_merge(fd: i32, post: &FlowKey, orig: &FlowKey) -> std::io::Result<()> {
    use bpf_sys::*;
    let mut pending = FlowState::default();
    match elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, post, &mut pending, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // Nothing recorded under the post-NAT tuple: only make sure the flow exists.
            let mut zero = FlowState::default();
            return match elem(BPF_MAP_UPDATE_ELEM, fd, orig, &mut zero, BPF_NOEXIST) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                r => r,
            };
        }
        r => r?,
    }
    let mut current = FlowState::default();
    let mut merged = match elem(BPF_MAP_LOOKUP_ELEM, fd, orig, &mut current, 0) {
        Ok(()) => {
            let merged = FlowState { seen: current.seen | pending.seen, last_drop_reason: current.last_drop_reason };
            if merged == current {
                return Ok(());
            }
            merged
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => pending,
        Err(e) => return Err(e),
    };
    elem(BPF_MAP_UPDATE_ELEM, fd, orig, &mut merged, BPF_ANY)
}

impl CtJoin {
    /// Subscribes to conntrack events in the current network namespace: do it before attaching,
    /// so no flow the programs see lacks its event.
    pub fn open(targets: &[(d8_common::TargetKey, u32)], node_ips: Vec<std::net::IpAddr>) -> std::io::Result<Self> {
        Ok(Self {
            events: crate::kernel::ctnetlink::Events::open()?,
            bufs: Datagrams::new(),
            inbox: Inbox::default(),
            targets: targets.iter().map(|(k, _)| *k).collect(),
            node_ips,
            alias: Default::default(),
            pending: Pending::default(),
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
    pub fn poll(&mut self, tracer: &mut super::Tracer, max: usize) -> usize {
        let Self { events, inbox, bufs, .. } = self;
        let fd = std::os::fd::AsRawFd::as_raw_fd(events.socket());
        inbox.fill(max, crate::trace::monotonic_ns, || match bufs.recv(fd) {
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
        self.map_errors += kernel_join(tracer, &joins, &mut self.fast_join);
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

    /// Joins one event; a NAT'd flow's (post-NAT, ORIGINAL) tuples go to `joins`, for the kernel.
    fn handle(&mut self, ct: crate::kernel::ctnetlink::CtEvent, joins: &mut Vec<(FlowKey, FlowKey)>) {
        let target = d8_common::TargetKey {
            addr: ct.orig.daddr,
            port: ct.orig.dport,
            proto: ct.orig.proto,
            family: ct.orig.family,
        };
        if !self.targets.contains(&target) {
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
        let from_node = self.node_ips.contains(&orig.src.ip());
        self.pending.push(crate::events::Event {
            ts_ns: crate::trace::monotonic_ns(),
            flow: orig,
            hook: Some(if from_node { crate::flows::Hook::Output } else { crate::flows::Hook::Prerouting }),
            reply_direction: Some(false),
            tcp_flags: 0,
            client_side: false,
            kind: crate::events::Kind::Conntrack { reply, status: ct.status, after_snat: true },
        });
    }

    /// The flow's ORIGINAL tuple for a record keyed by its post-NAT tuple.
    pub fn translate(&self, ev: &mut crate::events::Event) {
        if let Some(orig) = self.alias.get(&ev.flow) {
            ev.flow = *orig;
        }
    }

    /// Conntrack events read so far, for the flow table (after the ring buffer was drained, so a
    /// flow starts with its first packet rather than with its conntrack entry).
    pub fn take_pending(&mut self) -> Vec<crate::events::Event> {
        self.pending.take_all()
    }

    /// The conntrack event read for `flow`, if it has not gone to the flow table yet: it must
    /// precede the flow's records other than its first packet (a reset is judged by whether the
    /// flow has a backend).
    pub fn take_pending_for(&mut self, flow: &crate::events::Tuple) -> Option<crate::events::Event> {
        self.pending.take_for(flow)
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
    use crate::kernel::ctnetlink::{CtEvent, parse_datagram, tests::ct_new_message};

    fn ct(port: u16) -> CtEvent {
        let msg = ct_new_message(([10, 0, 0, 1], port, [10, 96, 0, 10], 80), ([10, 244, 1, 2], 8080, [10, 0, 0, 1], port), 6, 8);
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
        assert_eq!(inbox.read_until, 0, "the socket was not emptied: nothing is known to be read");
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

    fn event(port: u16) -> crate::events::Event {
        crate::events::Event {
            ts_ns: port as u64,
            flow: crate::events::Tuple {
                proto: 6,
                src: format!("10.0.0.1:{port}").parse().unwrap(),
                dst: "10.96.0.10:80".parse().unwrap(),
            },
            hook: None,
            reply_direction: None,
            tcp_flags: 0,
            client_side: false,
            kind: crate::events::Kind::New,
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
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        assert!(p.events.is_empty());
    }
}
