//! The flow table: joins the kernel's events (pre-DNAT packet, conntrack entry after DNAT, replies,
//! resets, drops, ICMP errors, client socket states) into one record per flow.
//!
//! A flow is identified by its conntrack ORIGINAL tuple: the client's address and the destination it
//! asked for (a Service frontend, or a backend reached directly as a kubelet probe does).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::events::Protocol;

/// How a flow ended (contract field `flows[].outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// TCP handshake completed (SYN-ACK seen after DNAT) or a UDP reply came back.
    Established,
    /// A RST ended the flow before or after it was established (see `Flow::resets` for who sent it).
    Reset,
    /// The node answered with an ICMP error or RST of its own (kube-proxy REJECT).
    Rejected,
    /// The kernel dropped the flow's packets and nothing answered.
    Dropped,
    /// Packets went out (DNAT'd or not) and no answer came within the reply timeout.
    Timeout,
    /// Still in progress when tracing stopped.
    Open,
}

/// Who sent a RST or an ICMP error, relative to the flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Client,
    /// The backend (post-DNAT destination), or the destination when there was no DNAT.
    Backend,
    /// The node itself (a REJECT rule, or a local socket with no listener).
    Node,
    Unknown,
}

/// Defined with the events that carry it.
pub use crate::events::Hook;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reset {
    pub by: Peer,
    /// `packet` (seen on the wire at a netfilter hook), `tcp_send_reset`, `tcp_receive_reset`.
    pub seen_by: String,
    /// Milliseconds since the flow's first packet.
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Drop {
    /// Kernel drop reason name without the `SKB_DROP_REASON_` prefix (`NETFILTER_DROP`).
    pub reason: String,
    /// The netfilter hook our programs last saw the packet at before it was freed.
    pub after_hook: Option<Hook>,
    /// The packet was dropped before conntrack created an entry for it.
    pub before_conntrack: bool,
    pub at_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IcmpError {
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Sender of the ICMP error.
    pub from: IpAddr,
    pub at_ms: u64,
}

/// One client socket state change (`sock:inet_sock_set_state`), for node-local and pod clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketState {
    pub old: String,
    pub new: String,
    pub at_ms: u64,
}

/// Handshake progress as seen on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Handshake {
    /// First packet (SYN for TCP, first datagram for UDP) seen.
    pub request: bool,
    /// Retransmissions of the first packet seen (TCP SYN).
    pub retransmits: u32,
    /// A reply-direction packet seen (SYN-ACK for TCP, a datagram for UDP).
    pub reply: bool,
    /// FIN seen in either direction.
    pub fin: bool,
}

/// One flow, joined from all its events.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flow {
    /// Sequential id, stable for the lifetime of a trace.
    pub id: u64,
    pub protocol: Protocol,
    pub client: SocketAddr,
    /// Pre-DNAT destination when it is a traced frontend; `None` for direct-to-backend flows.
    pub frontend: Option<SocketAddr>,
    /// Post-DNAT destination from the conntrack entry (the frontend's backend), or the destination of
    /// a direct flow. `None` until conntrack showed a translation.
    pub backend: Option<SocketAddr>,
    /// Client address after SNAT (masquerade), when conntrack shows one.
    pub snat_client: Option<SocketAddr>,
    /// Conntrack saw the flow and did not translate the destination (no DNAT rule matched).
    pub no_dnat: bool,
    /// Netfilter hook where the first packet was seen (`prerouting`: from a pod or outside,
    /// `output`: from the node itself).
    pub entry_hook: Option<Hook>,
    /// Kernel monotonic time of the first and last event, in nanoseconds.
    pub first_ns: u64,
    pub last_ns: u64,
    pub handshake: Handshake,
    /// Conntrack status bits (`IPS_*`) last seen.
    pub ct_status: u32,
    pub resets: Vec<Reset>,
    pub drops: Vec<Drop>,
    pub icmp_errors: Vec<IcmpError>,
    pub socket_states: Vec<SocketState>,
    pub outcome: Outcome,
}

impl Flow {
    /// The flow's ORIGINAL tuple: the client and the destination it asked for.
    pub fn tuple(&self) -> crate::events::Tuple {
        crate::events::Tuple {
            proto: self.protocol.number(),
            src: self.client,
            dst: self.frontend.or(self.backend).unwrap_or(self.client),
        }
    }

    /// Milliseconds between the flow's first event and `ts_ns`.
    fn ms_since_start(&self, ts_ns: u64) -> u64 {
        ts_ns.saturating_sub(self.first_ns) / 1_000_000
    }

    /// The flow's outcome as of kernel time `now_ns`; flows with no answer for `reply_timeout_ns`
    /// have timed out.
    pub fn outcome_at(&self, now_ns: u64, reply_timeout_ns: u64) -> Outcome {
        let node_answered =
            self.resets.iter().any(|r| r.by == Peer::Node) || self.icmp_errors.iter().any(IcmpError::is_unreachable);
        if node_answered && !self.handshake.reply {
            Outcome::Rejected
        } else if !self.resets.is_empty() {
            Outcome::Reset
        } else if self.handshake.reply {
            Outcome::Established
        } else if !self.drops.is_empty() {
            Outcome::Dropped
        } else if now_ns.saturating_sub(self.first_ns) >= reply_timeout_ns {
            Outcome::Timeout
        } else {
            Outcome::Open
        }
    }

    /// The first drop reason, for the contract's `drop_reason`.
    pub fn drop_reason(&self) -> Option<&str> {
        self.drops.first().map(|d| d.reason.as_str())
    }

    /// One line for the live output: fits 80 columns for IPv4 flows.
    pub fn summary_line(&self) -> String {
        let mut line = String::new();
        self.write_summary_line(&mut line);
        line
    }

    /// Appends [`Self::summary_line`] to `out`: the live output writes one for most flows it
    /// sees, into one buffer, without the Strings of each part.
    pub fn write_summary_line(&self, out: &mut String) {
        // `#{id:<3} `: the id left-aligned in three columns.
        out.push('#');
        let start = out.len();
        push_decimal(out, self.id);
        for _ in out.len() - start..3 {
            out.push(' ');
        }
        out.push(' ');
        out.push_str(self.protocol.as_str());
        out.push(' ');
        push_socket_addr(out, self.client);
        out.push_str(" -> ");
        match (self.frontend, self.backend) {
            (Some(f), Some(b)) => {
                push_socket_addr(out, f);
                out.push_str(" => ");
                push_socket_addr(out, b);
            }
            (Some(f), None) => {
                push_socket_addr(out, f);
                if self.no_dnat {
                    out.push_str(" => (no DNAT)");
                }
            }
            (None, Some(b)) => push_socket_addr(out, b),
            (None, None) => out.push('?'),
        }
        out.push_str(match self.outcome {
            Outcome::Established => "  established",
            Outcome::Reset => match self.resets.first().map(|r| r.by) {
                Some(Peer::Backend) => "  reset by backend",
                Some(Peer::Client) => "  reset by client",
                Some(Peer::Node) => "  reset by node",
                _ => "  reset",
            },
            Outcome::Rejected => "  rejected",
            Outcome::Dropped => "  dropped",
            Outcome::Timeout => "  no answer",
            Outcome::Open => "  open",
        });
        if let Some(reason) = self.drop_reason() {
            out.push_str(" (");
            out.push_str(reason);
            out.push(')');
        }
    }

    /// Everything [`Self::summary_line`] reads that can change once the flow started (its id,
    /// protocol and client never do; its first reset and first drop, once there, stay first):
    /// two equal states read the same line, so the live output formats a line only when this
    /// changed.
    pub fn summary_state(&self) -> SummaryState {
        SummaryState {
            frontend: self.frontend,
            backend: self.backend,
            no_dnat: self.no_dnat,
            outcome: self.outcome,
            first_reset_by: self.resets.first().map(|r| r.by),
            dropped: !self.drops.is_empty(),
        }
    }
}

/// Appends `addr` as its `Display` writes it. IPv4 by hand: through `fmt`, the three addresses
/// of a live line (each octet and port a formatter call of its own) were about 14 % of the event
/// path's CPU in the synthetic test of `trace/live.rs`. IPv6 takes `Display`'s `::` compression.
fn push_socket_addr(out: &mut String, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                push_decimal(out, u64::from(octet));
            }
            out.push(':');
            push_decimal(out, u64::from(a.port()));
        }
        SocketAddr::V6(_) => {
            use std::fmt::Write;
            // Writing to a String cannot fail.
            let _ = write!(out, "{addr}");
        }
    }
}

/// Appends `n` in decimal.
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend(digits[at..].iter().map(|&d| char::from(d)));
}

/// See [`Flow::summary_state`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SummaryState {
    frontend: Option<SocketAddr>,
    backend: Option<SocketAddr>,
    no_dnat: bool,
    outcome: Outcome,
    first_reset_by: Option<Peer>,
    dropped: bool,
}

/// What [`FlowTable::apply`] can change in a flow: compared before and after an event to tell
/// whether it changed anything, instead of a clone of the whole flow (its Vecs and Strings) per
/// event. The Vecs only ever grow, so their lengths stand for them.
#[derive(Debug, PartialEq)]
struct Changeable {
    last_ns: u64,
    backend: Option<SocketAddr>,
    snat_client: Option<SocketAddr>,
    no_dnat: bool,
    handshake: Handshake,
    ct_status: u32,
    outcome: Outcome,
    lens: [usize; 4],
}

impl Changeable {
    fn of(f: &Flow) -> Self {
        Self {
            last_ns: f.last_ns,
            backend: f.backend,
            snat_client: f.snat_client,
            no_dnat: f.no_dnat,
            handshake: f.handshake,
            ct_status: f.ct_status,
            outcome: f.outcome,
            lens: [
                f.resets.len(),
                f.drops.len(),
                f.icmp_errors.len(),
                f.socket_states.len(),
            ],
        }
    }
}

impl IcmpError {
    /// "Destination unreachable" (what a REJECT sends), as its family writes it: ICMP type 3 but
    /// not code 4 ("fragmentation needed", a path MTU signal), ICMPv6 type 1. ICMPv6 "packet too
    /// big" (type 2) is a path MTU signal too: the flow goes on.
    pub fn is_unreachable(&self) -> bool {
        match self.from {
            IpAddr::V4(_) => self.icmp_type == 3 && self.icmp_code != 4,
            IpAddr::V6(_) => self.icmp_type == 1,
        }
    }
}

/// Joins events into flows. Knows nothing about BPF: it takes decoded events and the set of
/// traced frontends, so tests drive it with literal events.
#[derive(Debug)]
pub struct FlowTable {
    flows: Vec<Flow>,
    /// ORIGINAL tuple -> index in `flows` of its current flow. Looked up for every record:
    /// foldhash, not SipHash (see d8-userspace/Cargo.toml), randomly seeded per map so that
    /// clients cannot choose colliding tuples ahead of time.
    current: foldhash::HashMap<crate::events::Tuple, usize>,
    frontends: foldhash::HashSet<(Protocol, SocketAddr)>,
    node_ips: Vec<IpAddr>,
    drop_names: crate::kernel::DropReasons,
    next_id: u64,
    /// (`first_ns` + reply timeout, id) of the flows that were open when last applied: the only
    /// ones whose outcome time alone can change (to `timeout`), soonest first, so that
    /// [`Self::settle`] looks at the flows due rather than at every flow. Entries of flows that
    /// were answered, evicted or retained away meanwhile are dropped when they come due.
    deadlines: std::collections::BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    /// At most this many flows are kept; the oldest are evicted (and counted) beyond it.
    max_flows: usize,
    evicted: u64,
    reply_timeout_ns: u64,
}

/// Flows without any answer for this long have timed out (TCP retransmits its SYN after 1 s
/// and 3 s, so 3 s covers the first retransmission).
pub const DEFAULT_REPLY_TIMEOUT_NS: u64 = 3_000_000_000;

impl FlowTable {
    pub fn new(
        frontends: impl IntoIterator<Item = (Protocol, SocketAddr)>,
        node_ips: Vec<IpAddr>,
        drop_names: crate::kernel::DropReasons,
    ) -> Self {
        Self {
            flows: Vec::new(),
            current: Default::default(),
            frontends: frontends.into_iter().collect(),
            node_ips,
            drop_names,
            next_id: 1,
            deadlines: Default::default(),
            max_flows: 100_000,
            evicted: 0,
            reply_timeout_ns: DEFAULT_REPLY_TIMEOUT_NS,
        }
    }

    pub fn with_max_flows(mut self, max: usize) -> Self {
        self.max_flows = max.max(1);
        self
    }

    pub fn with_reply_timeout_ns(mut self, ns: u64) -> Self {
        self.reply_timeout_ns = ns;
        self
    }

    pub fn flows(&self) -> &[Flow] {
        &self.flows
    }

    /// The flows, handed over at the end of a trace without a copy of each.
    pub fn into_flows(self) -> Vec<Flow> {
        self.flows
    }

    /// Flows dropped from the table because it was full.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    pub fn reply_timeout_ns(&self) -> u64 {
        self.reply_timeout_ns
    }

    fn is_frontend(&self, proto: u8, addr: SocketAddr) -> bool {
        Protocol::from_number(proto).is_some_and(|p| self.frontends.contains(&(p, addr)))
    }

    fn finished(flow: &Flow) -> bool {
        !flow.resets.is_empty() || flow.handshake.fin || !flow.icmp_errors.is_empty()
    }

    fn start(&mut self, ev: &crate::events::Event) -> usize {
        if self.flows.len() >= self.max_flows {
            let drop_n = (self.max_flows / 10).max(1);
            self.flows.drain(..drop_n);
            self.evicted += drop_n as u64;
            self.current = self
                .flows
                .iter()
                .enumerate()
                .map(|(i, f)| (Self::tuple_of(f), i))
                .collect();
        }
        let flow_tuple = ev.flow;
        let protocol = Protocol::from_number(flow_tuple.proto).unwrap_or(Protocol::Tcp);
        let to_frontend = self.is_frontend(flow_tuple.proto, flow_tuple.dst);
        let flow = Flow {
            id: self.next_id,
            protocol,
            client: flow_tuple.src,
            frontend: to_frontend.then_some(flow_tuple.dst),
            backend: (!to_frontend).then_some(flow_tuple.dst),
            snat_client: None,
            no_dnat: false,
            entry_hook: ev.hook,
            first_ns: ev.ts_ns,
            last_ns: ev.ts_ns,
            handshake: Handshake::default(),
            ct_status: 0,
            resets: Vec::new(),
            drops: Vec::new(),
            icmp_errors: Vec::new(),
            socket_states: Vec::new(),
            outcome: Outcome::Open,
        };
        self.next_id += 1;
        self.deadlines
            .push(std::cmp::Reverse((self.deadline_of(&flow), flow.id)));
        self.flows.push(flow);
        let index = self.flows.len() - 1;
        self.current.insert(flow_tuple, index);
        index
    }

    fn tuple_of(flow: &Flow) -> crate::events::Tuple {
        flow.tuple()
    }

    /// When an open `flow` times out.
    fn deadline_of(&self, flow: &Flow) -> u64 {
        flow.first_ns.saturating_add(self.reply_timeout_ns)
    }

    /// Who an address is, relative to `flow`, on a node with addresses `node_ips`.
    fn peer(node_ips: &[IpAddr], flow: &Flow, addr: IpAddr) -> Peer {
        if addr == flow.client.ip() || flow.snat_client.is_some_and(|c| c.ip() == addr) {
            Peer::Client
        } else if flow.backend.is_some_and(|b| b.ip() == addr) && !flow.no_dnat {
            Peer::Backend
        } else if flow.frontend.is_some_and(|f| f.ip() == addr) || node_ips.contains(&addr) {
            // A packet "from the frontend" that DNAT did not translate was made by the node.
            Peer::Node
        } else {
            Peer::Unknown
        }
    }

    /// Applies one event; returns the id of the flow it changed.
    pub fn apply(&mut self, ev: &crate::events::Event) -> Option<u64> {
        use crate::events::Kind;
        let index = match (self.current.get(&ev.flow).copied(), &ev.kind) {
            (Some(i), Kind::New) if Self::finished(&self.flows[i]) => self.start(ev),
            (Some(i), _) => i,
            // Any first sight of a flow starts it: it may have begun before tracing.
            (None, _) => self.start(ev),
        };
        #[cfg(debug_assertions)]
        let before_all = self.flows[index].clone();
        let Self {
            flows,
            node_ips,
            drop_names,
            reply_timeout_ns,
            ..
        } = self;
        let flow = &mut flows[index];
        let before = Changeable::of(flow);
        flow.last_ns = flow.last_ns.max(ev.ts_ns);
        let at_ms = flow.ms_since_start(ev.ts_ns);
        match &ev.kind {
            Kind::New => flow.handshake.request = true,
            Kind::Retransmit => {
                flow.handshake.request = true;
                flow.handshake.retransmits += 1;
            }
            Kind::Conntrack { reply, status, .. } => {
                flow.ct_status = *status;
                let original_dst = ev.flow.dst;
                if reply.src != original_dst {
                    flow.backend = Some(reply.src);
                    flow.no_dnat = false;
                } else if flow.frontend.is_some() {
                    flow.no_dnat = true;
                }
                if reply.dst != ev.flow.src {
                    flow.snat_client = Some(reply.dst);
                }
            }
            Kind::Reply { .. } | Kind::Established => {
                if ev.tcp_flags & TCP_RST == 0 {
                    flow.handshake.reply = true;
                }
            }
            Kind::Rst { from } => {
                let by = if ev.reply_direction == Some(true) {
                    match Self::peer(node_ips, flow, from.ip()) {
                        Peer::Client | Peer::Unknown => Peer::Backend,
                        other => other,
                    }
                } else {
                    Peer::Client
                };
                flow.resets.push(Reset {
                    by,
                    seen_by: "packet".into(),
                    at_ms,
                });
            }
            Kind::Fin { .. } => flow.handshake.fin = true,
            Kind::IcmpError {
                icmp_type,
                icmp_code,
                from,
            } => flow.icmp_errors.push(IcmpError {
                icmp_type: *icmp_type,
                icmp_code: *icmp_code,
                from: *from,
                at_ms,
            }),
            Kind::Drop {
                reason,
                before_conntrack,
                ..
            } => {
                let reason = drop_names.name(*reason);
                if !delivered_not_lost(&reason, flow) {
                    flow.drops.push(Drop {
                        reason,
                        after_hook: ev.hook,
                        before_conntrack: *before_conntrack,
                        at_ms,
                    });
                }
            }
            Kind::SendReset { from } => {
                let by = Self::peer(node_ips, flow, from.ip());
                if !flow.resets.iter().any(|r| r.by == by) {
                    flow.resets.push(Reset {
                        by,
                        seen_by: "tcp_send_reset".into(),
                        at_ms,
                    });
                }
            }
            Kind::ReceiveReset { socket } => {
                // The RST came from the other end of this socket.
                let by = match Self::peer(node_ips, flow, socket.ip()) {
                    Peer::Client => {
                        if flow.backend.is_some() && !flow.no_dnat {
                            Peer::Backend
                        } else {
                            Peer::Node
                        }
                    }
                    Peer::Backend => Peer::Client,
                    _ => Peer::Unknown,
                };
                if !flow.resets.iter().any(|r| r.by == by) {
                    flow.resets.push(Reset {
                        by,
                        seen_by: "tcp_receive_reset".into(),
                        at_ms,
                    });
                }
            }
            Kind::SocketState { old, new, .. } => flow.socket_states.push(SocketState {
                old: crate::events::tcp_state_name(*old).into(),
                new: crate::events::tcp_state_name(*new).into(),
                at_ms,
            }),
        }
        flow.outcome = flow.outcome_at(flow.last_ns, *reply_timeout_ns);
        let changed = Changeable::of(flow) != before;
        #[cfg(debug_assertions)]
        assert_eq!(changed, *flow != before_all, "Changeable misses a field apply changed");
        let id = flow.id;
        if flow.outcome == Outcome::Open && before.outcome != Outcome::Open {
            // Open again (a late event, older than a settled timeout): due again.
            let due = self.deadline_of(&self.flows[index]);
            self.deadlines.push(std::cmp::Reverse((due, id)));
        }
        changed.then_some(id)
    }

    /// Settles every flow's outcome at kernel time `now_ns` (timeouts); returns the ids of flows
    /// whose outcome changed, in id order. `now_ns` never goes back (the monotonic clock): only
    /// open flows due by then can change, and only those are looked at.
    pub fn settle(&mut self, now_ns: u64) -> Vec<u64> {
        let timeout = self.reply_timeout_ns;
        let mut changed = Vec::new();
        while let Some(&std::cmp::Reverse((due, id))) = self.deadlines.peek() {
            if due > now_ns {
                break;
            }
            self.deadlines.pop();
            let Some(i) = self.index_of(id) else { continue };
            let flow = &mut self.flows[i];
            let outcome = flow.outcome_at(now_ns, timeout);
            if flow.outcome == Outcome::Open && outcome != flow.outcome {
                flow.outcome = outcome;
                changed.push(id);
            }
        }
        changed.sort_unstable();
        changed
    }

    pub fn get(&self, id: u64) -> Option<&Flow> {
        self.index_of(id).map(|i| &self.flows[i])
    }

    fn index_of(&self, id: u64) -> Option<usize> {
        // Ids grow with every flow started and flows stay in start order (eviction and
        // `retain` remove, never reorder): a binary search, not a scan per event.
        self.flows.binary_search_by_key(&id, |f| f.id).ok()
    }

    /// Keeps only the flows `keep` accepts (long-running captures forget flows they reported).
    pub fn retain(&mut self, keep: impl FnMut(&Flow) -> bool) {
        self.flows.retain(keep);
        self.current = self
            .flows
            .iter()
            .enumerate()
            .map(|(i, f)| (Self::tuple_of(f), i))
            .collect();
    }

    /// Replaces the set of traced frontends (the daemon follows rule changes).
    pub fn set_frontends(&mut self, frontends: impl IntoIterator<Item = (Protocol, SocketAddr)>) {
        self.frontends = frontends.into_iter().collect();
    }

    pub fn set_node_ips(&mut self, node_ips: Vec<IpAddr>) {
        self.node_ips = node_ips;
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }
}

const TCP_RST: u8 = 0x04;

/// `kfree_skb` reasons that are housekeeping after delivery, not a packet lost on the path: a
/// socket's queue freed when it closes.
const BENIGN_DROP_REASONS: &[&str] = &["QUEUE_PURGE", "SOCKET_CLOSE", "NOT_DROPPED_YET", "SKB_CONSUMED"];

/// Whether a `kfree_skb` of `flow`'s with `reason` freed a packet that was delivered or is TCP at
/// work, not one the path lost (no drop of the flow):
/// - housekeeping after delivery ([`BENIGN_DROP_REASONS`]);
/// - once a TCP exchange was answered and a FIN was seen, the peers' sockets in
///   CLOSE_WAIT/LAST_ACK free the bare ACKs that reach them with no reason
///   (`tcp_rcv_state_process`'s discard path);
/// - once a TCP exchange was answered, a segment the receiver discards as an old duplicate
///   ([`OLD_DUPLICATE_REASONS`]: arrived behind its own retransmission, or retransmitted after it
///   arrived). A slow guest reordered one on a flow that completed, and its report read
///   `drop_reason: TCP_RFC7323_PAWS`. Before an answer (a SYN PAWS refuses: clients behind one
///   SNAT address) it is a drop.
fn delivered_not_lost(reason: &str, flow: &Flow) -> bool {
    let answered_tcp = flow.protocol == Protocol::Tcp && flow.handshake.reply;
    BENIGN_DROP_REASONS.contains(&reason)
        || (answered_tcp && reason == "NOT_SPECIFIED" && flow.handshake.fin)
        || (answered_tcp && OLD_DUPLICATE_REASONS.contains(&reason))
}

/// `kfree_skb` reasons of a TCP receiver discarding an old duplicate segment: PAWS (RFC 7323's
/// timestamps), data or a sequence already received, an ACK older than what was acknowledged.
const OLD_DUPLICATE_REASONS: &[&str] = &["TCP_RFC7323_PAWS", "TCP_OLD_DATA", "TCP_OLD_SEQUENCE", "TCP_OLD_ACK"];

#[cfg(test)]
mod tests {
    use d8_common::{hook, kind};

    use super::*;
    use crate::events::{
        decode_raw,
        testing::{key, key6, raw},
    };

    const CLIENT: [u8; 4] = [10, 244, 1, 5];
    const VIP: [u8; 4] = [10, 96, 0, 10];
    const POD: [u8; 4] = [10, 244, 2, 7];
    const NODE: [u8; 4] = [192, 168, 50, 2];

    fn table() -> FlowTable {
        FlowTable::new(
            [
                (Protocol::Tcp, "10.96.0.10:80".parse().unwrap()),
                (Protocol::Udp, "10.96.0.10:53".parse().unwrap()),
            ],
            vec!["192.168.50.2".parse().unwrap()],
            crate::kernel::DropReasons::default(),
        )
    }

    fn orig(proto: u8, dport: u16) -> d8_common::FlowKey {
        key(CLIENT, 41000, VIP, dport, proto)
    }

    fn ct(table: &mut FlowTable, proto: u8, dport: u16, backend_port: u16, ts: u64) {
        let mut ev = raw(kind::CT, hook::PRE_ROUTING, orig(proto, dport), ts);
        ev.reply = key(POD, backend_port, CLIENT, 41000, proto);
        ev.ct_dir = 0;
        table.apply(&decode_raw(&ev).unwrap());
    }

    fn apply(table: &mut FlowTable, ev: d8_common::Event) -> Option<u64> {
        table.apply(&decode_raw(&ev).unwrap())
    }

    /// The live line's hand-written addresses and id read as `Display` and `{:<3}` write them.
    #[test]
    fn summary_line_reads_as_formatted() {
        let mut t = table();
        let addrs: [SocketAddr; 6] = [
            "0.0.0.0:0".parse().unwrap(),
            "255.255.255.255:65535".parse().unwrap(),
            "10.9.100.1:8".parse().unwrap(),
            "[fd00:10:96::10]:80".parse().unwrap(),
            "[::ffff:10.0.0.1]:443".parse().unwrap(),
            "[fe80::1%3]:53".parse().unwrap(),
        ];
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 0));
        let mut f = t.flows()[0].clone();
        for id in [1, 42, 999, 1000, 123_456_789, u64::MAX] {
            for (i, &client) in addrs.iter().enumerate() {
                f.id = id;
                f.client = client;
                f.frontend = (i % 3 != 0).then_some(addrs[(i + 1) % 6]);
                f.backend = (i % 2 == 0).then_some(addrs[(i + 2) % 6]);
                f.no_dnat = i == 1;
                let mut expected = format!("#{:<3} {} {} -> ", f.id, f.protocol, f.client);
                expected += &match (f.frontend, f.backend) {
                    (Some(fr), Some(b)) => format!("{fr} => {b}"),
                    (Some(fr), None) if f.no_dnat => format!("{fr} => (no DNAT)"),
                    (Some(fr), None) => format!("{fr}"),
                    (None, Some(b)) => format!("{b}"),
                    (None, None) => "?".into(),
                };
                expected += "  open";
                assert_eq!(f.summary_line(), expected);
            }
        }
    }

    /// `get` finds every flow by id after evictions and `retain` removed others.
    #[test]
    fn get_finds_flows_by_id_after_eviction_and_retain() {
        let mut t = table().with_max_flows(20);
        for port in 0..50u16 {
            let k = key(CLIENT, 30000 + port, VIP, 80, 6);
            apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, k, port as u64));
        }
        assert!(t.evicted() > 0);
        t.retain(|f| f.id % 3 != 0);
        let ids: Vec<u64> = t.flows().iter().map(|f| f.id).collect();
        assert!(!ids.is_empty());
        for id in 0..60 {
            assert_eq!(t.get(id).map(|f| f.id), ids.contains(&id).then_some(id), "id {id}");
        }
    }

    #[test]
    fn joins_pre_and_post_dnat_views_into_one_established_flow() {
        let mut t = table();
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 1_000));
        ct(&mut t, 6, 80, 8080, 2_000);
        let mut reply = raw(kind::REPLY, hook::PRE_ROUTING, orig(6, 80), 3_000);
        reply.ct_dir = 1;
        reply.tcp_flags = 0x12;
        apply(&mut t, reply);
        assert_eq!(t.flows().len(), 1);
        let f = &t.flows()[0];
        assert_eq!(f.frontend, Some("10.96.0.10:80".parse().unwrap()));
        assert_eq!(f.backend, Some("10.244.2.7:8080".parse().unwrap()));
        assert_eq!(f.outcome, Outcome::Established);
    }

    #[test]
    fn backend_rst_after_dnat_is_a_reset_by_the_backend() {
        let mut t = table();
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 0));
        ct(&mut t, 6, 80, 8080, 1);
        let mut rst = raw(kind::RST, hook::PRE_ROUTING, orig(6, 80), 2);
        rst.ct_dir = 1;
        rst.tcp_flags = 0x14;
        rst.aux[..4].copy_from_slice(&POD);
        apply(&mut t, rst);
        let f = &t.flows()[0];
        assert_eq!(f.outcome, Outcome::Reset);
        assert_eq!(f.resets[0].by, Peer::Backend);
    }

    #[test]
    fn icmp_unreachable_without_dnat_is_rejected() {
        let mut t = table();
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 0));
        let mut ev = raw(kind::CT, hook::PRE_ROUTING, orig(6, 80), 1);
        ev.reply = key(VIP, 80, CLIENT, 41000, 6);
        apply(&mut t, ev);
        let mut icmp = raw(kind::ICMP_ERROR, hook::LOCAL_OUT, orig(6, 80), 2);
        icmp.icmp_type = 3;
        icmp.icmp_code = 3;
        icmp.aux[..4].copy_from_slice(&NODE);
        apply(&mut t, icmp);
        let mut drop = raw(kind::DROP, hook::FORWARD, orig(6, 80), 3);
        drop.reason = 12;
        apply(&mut t, drop);
        let f = &t.flows()[0];
        assert!(f.no_dnat && f.backend.is_none());
        assert_eq!(f.outcome, Outcome::Rejected);
        // No drop-reason names (a kernel before 5.17): every drop is NOT_SPECIFIED.
        assert_eq!(f.drops[0].reason, "NOT_SPECIFIED");
        assert_eq!(f.drops[0].after_hook, Some(Hook::Forward));
    }

    #[test]
    fn icmpv6_unreachable_rejects_and_packet_too_big_does_not() {
        let client: std::net::Ipv6Addr = "fd00:10:244:1::5".parse().unwrap();
        let vip: std::net::Ipv6Addr = "fd00:10:96::10".parse().unwrap();
        let node: std::net::Ipv6Addr = "fd00:192:168:50::2".parse().unwrap();
        let mut t = FlowTable::new(
            [(Protocol::Tcp, "[fd00:10:96::10]:80".parse().unwrap())],
            vec![node.into()],
            crate::kernel::DropReasons::default(),
        );
        let orig = key6(client, 41000, vip, 80, 6);
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig, 0));
        let mut too_big = raw(kind::ICMP_ERROR, hook::LOCAL_OUT, orig, 1);
        too_big.icmp_type = 2;
        too_big.aux = node.octets();
        apply(&mut t, too_big);
        let f = &t.flows()[0];
        assert_eq!(f.client, "[fd00:10:244:1::5]:41000".parse().unwrap());
        assert_eq!(f.icmp_errors[0].from, std::net::IpAddr::V6(node));
        assert_eq!(f.outcome, Outcome::Open, "packet too big is no answer");
        let mut unreachable = raw(kind::ICMP_ERROR, hook::LOCAL_OUT, orig, 2);
        unreachable.icmp_type = 1;
        unreachable.icmp_code = 4;
        unreachable.aux = node.octets();
        apply(&mut t, unreachable);
        assert_eq!(t.flows()[0].outcome, Outcome::Rejected);
    }

    #[test]
    fn an_old_duplicate_discarded_after_the_answer_is_no_drop_but_one_before_it_is() {
        let names = crate::kernel::DropReasons::from_names([(68, "TCP_RFC7323_PAWS"), (5, "NETFILTER_DROP")]);
        let mut t = FlowTable::new([(Protocol::Tcp, "10.96.0.10:80".parse().unwrap())], Vec::new(), names);
        let drop = |sport: u16, reason: u32, at: u64| {
            let mut d = raw(kind::DROP, hook::PRE_ROUTING, key(CLIENT, sport, VIP, 80, 6), at);
            d.reason = reason;
            d
        };
        // Answered, then a reordered old segment: no drop, a healthy flow.
        apply(
            &mut t,
            raw(kind::NEW, hook::PRE_ROUTING, key(CLIENT, 41000, VIP, 80, 6), 0),
        );
        apply(
            &mut t,
            raw(kind::REPLY, hook::PRE_ROUTING, key(CLIENT, 41000, VIP, 80, 6), 1),
        );
        apply(&mut t, drop(41000, 68, 2));
        assert!(t.flows()[0].drops.is_empty(), "{:?}", t.flows()[0].drops);
        assert_eq!(t.flows()[0].outcome, Outcome::Established);
        // A drop of another reason after the answer is still one.
        apply(&mut t, drop(41000, 5, 3));
        assert_eq!(t.flows()[0].drops[0].reason, "NETFILTER_DROP");
        // PAWS refusing an unanswered SYN is the flow's drop.
        apply(
            &mut t,
            raw(kind::NEW, hook::PRE_ROUTING, key(CLIENT, 41001, VIP, 80, 6), 4),
        );
        apply(&mut t, drop(41001, 68, 5));
        assert_eq!(t.flows()[1].drops[0].reason, "TCP_RFC7323_PAWS");
        assert_eq!(t.flows()[1].outcome, Outcome::Dropped);
    }

    #[test]
    fn silent_drop_is_dropped_and_silence_times_out() {
        let mut t = table();
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 0));
        ct(&mut t, 6, 80, 8080, 1);
        assert_eq!(t.flows()[0].outcome, Outcome::Open);
        assert_eq!(t.settle(DEFAULT_REPLY_TIMEOUT_NS), vec![1]);
        assert_eq!(t.flows()[0].outcome, Outcome::Timeout);
        let mut drop = raw(kind::DROP, hook::FORWARD, orig(6, 80), 5);
        drop.reason = 12;
        apply(&mut t, drop);
        assert_eq!(t.flows()[0].outcome, Outcome::Dropped);
    }

    /// `settle` reports the open flows that came due, in id order, and no answered ones; a flow
    /// that a late event (older than the settled timeout) opens again is due again.
    #[test]
    fn settle_times_out_the_open_flows_due_and_those_opened_again() {
        let mut t = table();
        for (port, ts) in [(1u16, 20u64), (2, 10), (3, 0), (4, 5)] {
            apply(
                &mut t,
                raw(kind::NEW, hook::PRE_ROUTING, key(CLIENT, port, VIP, 80, 6), ts),
            );
        }
        let mut reply = raw(kind::REPLY, hook::PRE_ROUTING, key(CLIENT, 4, VIP, 80, 6), 6);
        reply.ct_dir = 1;
        reply.tcp_flags = 0x12;
        apply(&mut t, reply);
        assert_eq!(t.settle(DEFAULT_REPLY_TIMEOUT_NS - 1), Vec::<u64>::new());
        assert_eq!(t.settle(DEFAULT_REPLY_TIMEOUT_NS + 10), vec![2, 3]);
        let late = raw(kind::RETRANS, hook::PRE_ROUTING, key(CLIENT, 3, VIP, 80, 6), 1);
        assert_eq!(apply(&mut t, late), Some(3));
        assert_eq!(t.flows()[2].outcome, Outcome::Open);
        assert_eq!(t.settle(DEFAULT_REPLY_TIMEOUT_NS + 30), vec![1, 3]);
        let outcomes: Vec<Outcome> = t.flows().iter().map(|f| f.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Timeout,
                Outcome::Timeout,
                Outcome::Timeout,
                Outcome::Established
            ]
        );
        assert_eq!(t.settle(u64::MAX), Vec::<u64>::new());
    }

    #[test]
    fn udp_reply_establishes_and_direct_flows_have_no_frontend() {
        let mut t = table();
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(17, 53), 0));
        ct(&mut t, 17, 53, 5353, 1);
        let mut reply = raw(kind::REPLY, hook::PRE_ROUTING, orig(17, 53), 2);
        reply.ct_dir = 1;
        apply(&mut t, reply);
        assert_eq!(t.flows()[0].outcome, Outcome::Established);
        assert_eq!(t.flows()[0].backend, Some("10.244.2.7:5353".parse().unwrap()));

        // kubelet-style probe: node IP straight to the pod.
        apply(
            &mut t,
            raw(kind::NEW, hook::LOCAL_OUT, key(NODE, 50000, POD, 8080, 6), 10),
        );
        let probe = &t.flows()[1];
        assert_eq!(
            (probe.frontend, probe.backend),
            (None, Some("10.244.2.7:8080".parse().unwrap()))
        );
    }

    #[test]
    fn port_reuse_after_reset_starts_a_new_flow_and_duplicates_change_nothing() {
        let mut t = table();
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 0));
        assert_eq!(apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 0)), None);
        let mut rst = raw(kind::RST, hook::PRE_ROUTING, orig(6, 80), 1);
        rst.ct_dir = 0;
        apply(&mut t, rst);
        apply(&mut t, raw(kind::NEW, hook::PRE_ROUTING, orig(6, 80), 5));
        assert_eq!(t.flows().len(), 2);
        assert_eq!(t.flows()[0].resets[0].by, Peer::Client);
        assert_eq!(t.flows()[1].outcome, Outcome::Open);
    }

    #[test]
    fn table_is_bounded() {
        let mut t = table().with_max_flows(10);
        for port in 0..25u16 {
            apply(
                &mut t,
                raw(
                    kind::NEW,
                    hook::PRE_ROUTING,
                    key(CLIENT, 1000 + port, VIP, 80, 6),
                    port as u64,
                ),
            );
        }
        assert!(t.flows().len() <= 10);
        assert_eq!(t.evicted() as usize + t.flows().len(), 25);
    }
}
