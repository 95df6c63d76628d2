//! The flow table: joins the kernel's events (pre-DNAT packet, conntrack entry after DNAT, replies,
//! resets, drops, ICMP errors, client socket states) into one record per flow.
//!
//! A flow is identified by its conntrack ORIGINAL tuple: the client's address and the destination it
//! asked for (a Service frontend, or a backend reached directly as a kubelet probe does).

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::Protocol;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Client,
    /// The backend (post-DNAT destination), or the destination when there was no DNAT.
    Backend,
    /// The node itself (a REJECT rule, or a local socket with no listener).
    Node,
    Unknown,
}

/// Where a packet was seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Prerouting,
    LocalIn,
    Forward,
    Output,
    Postrouting,
    /// A tracepoint outside netfilter (socket, TCP stack, skb free).
    Stack,
}

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
