//! Conntrack netlink events (`NFNLGRP_CONNTRACK_NEW`): the join of pre- and post-DNAT views for
//! the TC hook set on kernels where a TC program cannot read the skb's conntrack entry (before
//! 6.3) and no kprobe is available.
//!
//! The kernel queues the event on this socket when it confirms the entry (at POSTROUTING or
//! INPUT, `nf_ct_deliver_cached_events` right after `__nf_conntrack_confirm`), i.e. before the
//! flow's first packet leaves the node: whatever the TC programs report about the flow's packets
//! after NAT was produced after the event was queued. Reading this socket before each ring-buffer
//! record therefore joins every record exactly. The socket lives in the node's network namespace
//! (the thread's, at open time) and sees only its conntrack entries.
//!
//! Only entries created while subscribed carry events (`nf_conntrack_events` = 2, the default
//! since 5.19, enables them once a listener exists; 1 enables them always). Entries that existed
//! before (connections opened before the trace began) are read once with [`dump`].

use std::io;

use d8_common::{FAMILY_V4, FAMILY_V6, FlowKey};

use super::netlink::{self, Socket};

const NETLINK_NETFILTER: i32 = 12;
/// `NFNLGRP_CONNTRACK_NEW`.
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW`: events, and each entry of a dump.
const CT_NEW: u16 = 1 << 8;
/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = (1 << 8) | 1;
const NFGENMSG_LEN: usize = 4;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// A conntrack entry as the NEW event reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CtEvent {
    /// ORIGINAL tuple: the client and the destination it asked for.
    pub orig: FlowKey,
    /// REPLY tuple: its source is the backend DNAT chose, its destination the client after SNAT.
    pub reply: FlowKey,
    /// `IPS_*` bits.
    pub status: u32,
    /// A TCP entry's `enum tcp_conntrack` state (`TCP_CONNTRACK_*`), when the message has it (a
    /// dump's entries do; NEW events may not).
    pub tcp_state: Option<u8>,
}

/// `IPS_SEEN_REPLY`: conntrack has seen a packet in the reply direction.
pub const IPS_SEEN_REPLY: u32 = 1 << 1;

/// `enum tcp_conntrack` states of a connection that has ended (`TIME_WAIT`, `CLOSE`).
pub const TCP_CONNTRACK_TIME_WAIT: u8 = 7;
pub const TCP_CONNTRACK_CLOSE: u8 = 8;

impl CtEvent {
    /// The tuple the flow's packets carry after NAT in the original direction (the reversed
    /// REPLY tuple), when NAT changed it.
    pub fn post_nat(&self) -> Option<FlowKey> {
        let post = crate::kernel::ctnetlink::reversed(&self.reply);
        (post != self.orig).then_some(post)
    }
}

/// The same flow seen from the other direction.
pub fn reversed(key: &FlowKey) -> FlowKey {
    FlowKey {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    }
}

fn tuple(buf: &[u8]) -> Option<FlowKey> {
    let mut key = FlowKey::default();
    let ip = netlink::attr(buf, CTA_TUPLE_IP)?;
    for (kind, value) in netlink::attrs(ip) {
        match (kind, value.len()) {
            (CTA_IP_V4_SRC, 4) => {
                key.family = FAMILY_V4;
                key.saddr[..4].copy_from_slice(value);
            }
            (CTA_IP_V4_DST, 4) => key.daddr[..4].copy_from_slice(value),
            (CTA_IP_V6_SRC, 16) => {
                key.family = FAMILY_V6;
                key.saddr.copy_from_slice(value);
            }
            (CTA_IP_V6_DST, 16) => key.daddr.copy_from_slice(value),
            _ => {}
        }
    }
    if key.family == 0 {
        return None;
    }
    let proto = netlink::attr(buf, CTA_TUPLE_PROTO)?;
    for (kind, value) in netlink::attrs(proto) {
        match (kind, value.len()) {
            (CTA_PROTO_NUM, 1) => key.proto = value[0],
            // Network byte order on the wire, kept as is (as in packets and kernel tuples).
            (CTA_PROTO_SRC_PORT, 2) => key.sport = u16::from_ne_bytes([value[0], value[1]]),
            (CTA_PROTO_DST_PORT, 2) => key.dport = u16::from_ne_bytes([value[0], value[1]]),
            _ => {}
        }
    }
    Some(key)
}

/// Decodes one ctnetlink message payload (after the netlink header) of type `kind`.
pub fn parse(kind: u16, payload: &[u8]) -> Option<CtEvent> {
    if kind != CT_NEW || payload.len() < NFGENMSG_LEN {
        return None;
    }
    let attrs = &payload[NFGENMSG_LEN..];
    let orig = tuple(netlink::attr(attrs, CTA_TUPLE_ORIG)?)?;
    let reply = tuple(netlink::attr(attrs, CTA_TUPLE_REPLY)?)?;
    let status = netlink::attr(attrs, CTA_STATUS)
        .and_then(|v| v.get(0..4))
        .map(|v| u32::from_be_bytes(v.try_into().unwrap()))
        .unwrap_or(0);
    let tcp_state = netlink::attr(attrs, CTA_PROTOINFO)
        .and_then(|info| netlink::attr(info, CTA_PROTOINFO_TCP))
        .and_then(|tcp| netlink::attr(tcp, CTA_PROTOINFO_TCP_STATE))
        .and_then(|state| state.first().copied());
    Some(CtEvent {
        orig,
        reply,
        status,
        tcp_state,
    })
}

/// Decodes every conntrack event in one datagram.
pub fn parse_datagram(buf: &[u8]) -> Vec<CtEvent> {
    netlink::messages(buf)
        .into_iter()
        .filter_map(|m| parse(m.kind, m.payload))
        .collect()
}

/// Every conntrack entry of the current network namespace (both families) for which `keep` is
/// true: one dump over a socket of its own, entries decoded as they arrive (a node may hold
/// hundreds of thousands; only the kept ones are held).
pub fn dump(mut keep: impl FnMut(&CtEvent) -> bool) -> io::Result<Vec<CtEvent>> {
    let socket = Socket::open(NETLINK_NETFILTER, &[], 1 << 20)?;
    // nfgenmsg: AF_UNSPEC (every family), version 0, res_id 0.
    let msg = netlink::request(CT_GET, netlink::NLM_F_REQUEST | netlink::NLM_F_DUMP, 1, &[0, 0, 0, 0]);
    let mut out = Vec::new();
    socket.transact_each(&msg, 1, |kind, payload| {
        if let Some(ct) = parse(kind, payload)
            && keep(&ct)
        {
            out.push(ct);
        }
    })?;
    Ok(out)
}

/// A subscription to conntrack NEW events in the current network namespace.
#[derive(Debug)]
pub struct Events {
    socket: Socket,
    buf: Vec<u8>,
    /// Times the socket overflowed (`ENOBUFS`): events were lost.
    pub overruns: u64,
}

impl Events {
    pub fn open() -> io::Result<Self> {
        let socket = Socket::open(NETLINK_NETFILTER, &[NFNLGRP_CONNTRACK_NEW], 8 << 20)?;
        Ok(Self {
            socket,
            buf: vec![0u8; 256 * 1024],
            overruns: 0,
        })
    }

    /// Everything queued now (never blocks).
    pub fn drain(&mut self) -> Vec<CtEvent> {
        let mut out = Vec::new();
        loop {
            match self.socket.recv(&mut self.buf) {
                Ok(Some(n)) => out.extend(parse_datagram(&self.buf[..n])),
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => self.overruns += 1,
                Err(_) => break,
            }
        }
        out
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::kernel::netlink::{push_attr, request};

    fn tuple_attr(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> Vec<u8> {
        let mut ip = Vec::new();
        push_attr(&mut ip, CTA_IP_V4_SRC, &src);
        push_attr(&mut ip, CTA_IP_V4_DST, &dst);
        let mut p = Vec::new();
        push_attr(&mut p, CTA_PROTO_NUM, &[proto]);
        push_attr(&mut p, CTA_PROTO_SRC_PORT, &sport.to_be_bytes());
        push_attr(&mut p, CTA_PROTO_DST_PORT, &dport.to_be_bytes());
        let mut t = Vec::new();
        push_attr(&mut t, 0x8000 | CTA_TUPLE_IP, &ip);
        push_attr(&mut t, 0x8000 | CTA_TUPLE_PROTO, &p);
        t
    }

    /// A NEW event as the kernel sends it: nfgenmsg, tuples (nested), status.
    pub fn ct_new_message(
        orig: ([u8; 4], u16, [u8; 4], u16),
        reply: ([u8; 4], u16, [u8; 4], u16),
        proto: u8,
        status: u32,
    ) -> Vec<u8> {
        let mut body = entry_body(orig, reply, proto, status);
        push_attr(&mut body, 7, &300u32.to_be_bytes()); // CTA_TIMEOUT: ignored
        request(CT_NEW, 0x400 | 0x200, 0, &body)
    }

    /// [`ct_new_message`] as a dump holds a TCP entry: with its state in `CTA_PROTOINFO`.
    pub fn ct_dump_message(
        orig: ([u8; 4], u16, [u8; 4], u16),
        reply: ([u8; 4], u16, [u8; 4], u16),
        status: u32,
        tcp_state: u8,
    ) -> Vec<u8> {
        let mut body = entry_body(orig, reply, 6, status);
        let mut tcp = Vec::new();
        push_attr(&mut tcp, CTA_PROTOINFO_TCP_STATE, &[tcp_state]);
        push_attr(&mut tcp, 2, &[7]); // CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: ignored
        let mut info = Vec::new();
        push_attr(&mut info, 0x8000 | CTA_PROTOINFO_TCP, &tcp);
        push_attr(&mut body, 0x8000 | CTA_PROTOINFO, &info);
        request(CT_NEW, 0x2, 0, &body)
    }

    /// An entry's nfgenmsg, tuples (nested) and status.
    fn entry_body(
        orig: ([u8; 4], u16, [u8; 4], u16),
        reply: ([u8; 4], u16, [u8; 4], u16),
        proto: u8,
        status: u32,
    ) -> Vec<u8> {
        let mut body = vec![2, 0, 0, 0];
        push_attr(
            &mut body,
            0x8000 | CTA_TUPLE_ORIG,
            &tuple_attr(orig.0, orig.1, orig.2, orig.3, proto),
        );
        push_attr(
            &mut body,
            0x8000 | CTA_TUPLE_REPLY,
            &tuple_attr(reply.0, reply.1, reply.2, reply.3, proto),
        );
        push_attr(&mut body, CTA_STATUS, &status.to_be_bytes());
        body
    }

    #[test]
    fn a_dump_entry_has_its_tcp_state_and_an_event_without_it_none() {
        let dumped = parse_datagram(&ct_dump_message(
            ([10, 244, 0, 2], 40000, [10, 96, 0, 10], 80),
            ([10, 244, 1, 11], 8080, [10, 244, 0, 2], 40000),
            0x1ae,
            3,
        ));
        assert_eq!(dumped.len(), 1);
        assert_eq!(
            (dumped[0].tcp_state, dumped[0].status & IPS_SEEN_REPLY),
            (Some(3), IPS_SEEN_REPLY)
        );
        let event = parse_datagram(&ct_new_message(
            ([10, 244, 0, 2], 40000, [10, 96, 0, 10], 80),
            ([10, 244, 1, 11], 8080, [10, 244, 0, 2], 40000),
            6,
            0x8,
        ));
        assert_eq!(event[0].tcp_state, None);
    }

    #[test]
    fn decodes_a_dnat_entry() {
        let msg = ct_new_message(
            ([10, 244, 0, 2], 40000, [10, 96, 0, 10], 80),
            ([10, 244, 1, 11], 8080, [10, 244, 0, 2], 40000),
            6,
            0x1a8,
        );
        let mut dgram = msg.clone();
        // A second message in the same datagram, of another type: skipped.
        dgram.extend(request(CT_NEW + 2, 0, 0, &[2, 0, 0, 0]));
        let events = parse_datagram(&dgram);
        assert_eq!(events.len(), 1);
        let ev = events[0];
        assert_eq!(&ev.orig.daddr[..4], &[10, 96, 0, 10]);
        assert_eq!(u16::from_be(ev.orig.dport), 80);
        assert_eq!(u16::from_be(ev.reply.sport), 8080);
        assert_eq!((ev.orig.proto, ev.orig.family, ev.status), (6, FAMILY_V4, 0x1a8));
        let post = ev.post_nat().expect("DNAT changed the tuple");
        assert_eq!(&post.daddr[..4], &[10, 244, 1, 11]);
        assert_eq!(&post.saddr[..4], &[10, 244, 0, 2]);
        assert_eq!(u16::from_be(post.dport), 8080);
    }

    #[test]
    fn untranslated_entry_has_no_post_nat_tuple() {
        let msg = ct_new_message(
            ([10, 0, 0, 1], 5, [10, 0, 0, 2], 53),
            ([10, 0, 0, 2], 53, [10, 0, 0, 1], 5),
            17,
            8,
        );
        let ev = parse_datagram(&msg)[0];
        assert_eq!(ev.post_nat(), None);
        assert_eq!(ev.orig.proto, 17);
    }

    #[test]
    fn malformed_messages_are_skipped() {
        assert!(parse(CT_NEW, &[2, 0]).is_none());
        assert!(parse(CT_NEW, &[2, 0, 0, 0, 4, 0, 1, 0]).is_none());
        assert!(parse_datagram(&[1, 2, 3]).is_empty());
    }
}
