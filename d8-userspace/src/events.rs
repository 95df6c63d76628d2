//! Decoding ring-buffer records into typed events. Knows the byte layout of `d8_common::Event`
//! and nothing about maps or programs.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use d8_common::{FAMILY_V4, FAMILY_V6, FlowKey, flags, hook, kind};

use serde::{Deserialize, Serialize};

/// Transport protocol of a Service port, a frontend or a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// The IANA protocol number (`IPPROTO_*`).
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    pub const fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Self::Tcp),
            17 => Some(Self::Udp),
            132 => Some(Self::Sctp),
            _ => None,
        }
    }

    /// Lowercase name as kube-proxy writes it (`tcp`, `udp`, `sctp`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Some(Self::Tcp),
            "udp" => Some(Self::Udp),
            "sctp" => Some(Self::Sctp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An address family, as the Kubernetes API names it (`spec.ipFamilies`, an EndpointSlice's
/// `addressType`): a dual-stack Service has one frontend and one set of endpoints per family, and
/// kube-proxy programs each family on its own (ip6tables, `table ip6 kube-proxy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum IpFamily {
    #[serde(rename = "IPv4")]
    V4,
    #[serde(rename = "IPv6")]
    V6,
}

impl IpFamily {
    /// The family of an address. An IPv4-mapped IPv6 address (`::ffff:a.b.c.d`) is IPv6 here, as
    /// on the wire: kube-proxy never programs one, and callers that read user input refuse it.
    pub const fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => Self::V4,
            IpAddr::V6(_) => Self::V6,
        }
    }

    /// The API spelling (`IPv4`, `IPv6`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::V4 => "IPv4",
            Self::V6 => "IPv6",
        }
    }

    /// `4` or `6`, as `--family` takes it.
    pub const fn number(self) -> u8 {
        match self {
            Self::V4 => 4,
            Self::V6 => 6,
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("event record of {got} bytes, expected {expected} (kernel programs and d8-trace from different builds?)")]
    Size { got: usize, expected: usize },
    #[error("event with unknown kind {0}")]
    Kind(u8),
    #[error("event with unknown address family {0}")]
    Family(u8),
}

/// A decoded tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Raw IP protocol number (ICMP flows have no [`Protocol`]).
    pub proto: u8,
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

impl Tuple {
    pub fn protocol(&self) -> Option<Protocol> {
        Protocol::from_number(self.proto)
    }
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    New,
    Conntrack {
        reply: Tuple,
        status: u32,
        after_snat: bool,
    },
    Reply {
        from: SocketAddr,
    },
    Rst {
        from: SocketAddr,
    },
    Fin {
        from: SocketAddr,
    },
    IcmpError {
        icmp_type: u8,
        icmp_code: u8,
        from: IpAddr,
    },
    Drop {
        reason: u32,
        before_conntrack: bool,
        after_post_conntrack_hook: bool,
    },
    SendReset {
        from: SocketAddr,
    },
    ReceiveReset {
        socket: SocketAddr,
    },
    SocketState {
        old: u8,
        new: u8,
        socket: SocketAddr,
    },
    Retransmit,
    Established,
}

/// One decoded event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub ts_ns: u64,
    /// The flow: conntrack ORIGINAL tuple.
    pub flow: Tuple,
    pub hook: Option<Hook>,
    /// `Some(true)` for reply-direction packets.
    pub reply_direction: Option<bool>,
    pub tcp_flags: u8,
    /// The socket or packet was on the client's side of the flow (resets, socket states).
    pub client_side: bool,
    pub kind: Kind,
}

fn addr(family: u8, bytes: &[u8; 16]) -> Result<IpAddr, DecodeError> {
    match family {
        FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]))),
        FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(*bytes))),
        other => Err(DecodeError::Family(other)),
    }
}

/// Decodes a kernel flow key (ports in network byte order).
pub fn tuple(key: &FlowKey) -> Result<Tuple, DecodeError> {
    Ok(Tuple {
        proto: key.proto,
        src: SocketAddr::new(addr(key.family, &key.saddr)?, u16::from_be(key.sport)),
        dst: SocketAddr::new(addr(key.family, &key.daddr)?, u16::from_be(key.dport)),
    })
}

fn hook_of(raw: u8) -> Option<Hook> {
    match raw {
        hook::PRE_ROUTING => Some(Hook::Prerouting),
        hook::LOCAL_IN => Some(Hook::LocalIn),
        hook::FORWARD => Some(Hook::Forward),
        hook::LOCAL_OUT => Some(Hook::Output),
        hook::POST_ROUTING => Some(Hook::Postrouting),
        hook::STACK => Some(Hook::Stack),
        _ => None,
    }
}

/// Copies a record out of the ring buffer (it may not be aligned for `Event`) after checking its
/// length, then decodes it.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let expected = std::mem::size_of::<d8_common::Event>();
    if bytes.len() < expected {
        return Err(DecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: length checked; `Event` is plain old data (any bytes are a valid value);
    // read_unaligned makes no alignment assumption.
    let raw: d8_common::Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    decode_raw(&raw)
}

pub fn decode_raw(raw: &d8_common::Event) -> Result<Event, DecodeError> {
    let flow = tuple(&raw.key)?;
    let family = raw.key.family;
    let aux = |port: bool| -> Result<SocketAddr, DecodeError> {
        Ok(SocketAddr::new(
            addr(family, &raw.aux)?,
            if port { u16::from_be(raw.aux_port) } else { 0 },
        ))
    };
    let kind = match raw.kind {
        kind::NEW => Kind::New,
        kind::CT => Kind::Conntrack {
            reply: tuple(&raw.reply)?,
            status: raw.ct_status,
            after_snat: raw.flags & flags::FINAL != 0,
        },
        kind::REPLY => Kind::Reply { from: aux(true)? },
        kind::RST => Kind::Rst { from: aux(true)? },
        kind::FIN => Kind::Fin { from: aux(true)? },
        kind::ICMP_ERROR => Kind::IcmpError {
            icmp_type: raw.icmp_type,
            icmp_code: raw.icmp_code,
            from: addr(family, &raw.aux)?,
        },
        kind::DROP => Kind::Drop {
            reason: raw.reason,
            before_conntrack: raw.flags & flags::NO_CT != 0,
            after_post_conntrack_hook: raw.old_state != 0,
        },
        kind::SEND_RESET => Kind::SendReset { from: aux(true)? },
        kind::RECV_RESET => Kind::ReceiveReset { socket: aux(true)? },
        kind::SOCK_STATE => Kind::SocketState {
            old: raw.old_state,
            new: raw.new_state,
            socket: aux(true)?,
        },
        kind::RETRANS => Kind::Retransmit,
        kind::ESTABLISHED => Kind::Established,
        other => return Err(DecodeError::Kind(other)),
    };
    Ok(Event {
        ts_ns: raw.ts_ns,
        flow,
        hook: hook_of(raw.hook),
        reply_direction: match raw.ct_dir {
            0 => Some(false),
            1 => Some(true),
            _ => None,
        },
        tcp_flags: raw.tcp_flags,
        client_side: raw.flags & flags::CLIENT_SIDE != 0,
        kind,
    })
}

/// Where a packet copy (`--pcap`) was taken: each is an interface of its own in the pcapng file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// `nf_pre`: before conntrack and DNAT, at PREROUTING (`output`: the node's own packets).
    NfPre { output: bool },
    /// `nf_post` right after DNAT (PREROUTING/OUTPUT -99).
    PostDnat,
    /// The packet the kernel dropped (`skb:kfree_skb`).
    Drop,
    /// A TC classifier on interface `ifindex`.
    Tc { ifindex: u32, egress: bool },
}

/// One packet of a traced flow, copied by the kernel (`d8_common::PacketRecord`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PacketCopy {
    pub ts_ns: u64,
    /// The flow as the program found it (the ORIGINAL tuple, or on the TC set possibly the
    /// post-NAT tuple until the conntrack join maps it).
    pub flow: Tuple,
    pub site: Site,
    /// The netfilter hook (for a drop: the last one the packet passed).
    pub hook: Option<Hook>,
    /// The packet travels in the flow's reply direction.
    pub reply: bool,
    /// A drop's `enum skb_drop_reason` value.
    pub drop_reason: u32,
    /// The packet's length from its IP header; `data` holds its first bytes.
    pub orig_len: u32,
    pub data: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PacketDecodeError {
    #[error("packet record of {got} bytes, expected {expected} (kernel programs and d8-trace from different builds?)")]
    Size { got: usize, expected: usize },
    #[error("packet record with unknown site {0}")]
    Site(u8),
    #[error("packet record claims {0} captured bytes, more than a record holds")]
    Length(u32),
    #[error(transparent)]
    Key(#[from] DecodeError),
}

/// Decodes a `PACKETS` ring-buffer record (copied out first: it may not be aligned).
pub fn decode_packet(bytes: &[u8]) -> Result<PacketCopy, PacketDecodeError> {
    use d8_common::pcap::{MAX_SNAPLEN, site};
    let expected = std::mem::size_of::<d8_common::PacketRecord>();
    if bytes.len() < expected {
        return Err(PacketDecodeError::Size {
            got: bytes.len(),
            expected,
        });
    }
    // SAFETY: length checked; `PacketRecord` is plain old data; read_unaligned assumes no alignment.
    let raw: d8_common::PacketRecord = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    if raw.cap_len > MAX_SNAPLEN {
        return Err(PacketDecodeError::Length(raw.cap_len));
    }
    let at = match raw.site {
        site::NF_PRE => Site::NfPre {
            output: raw.hook == hook::LOCAL_OUT,
        },
        site::POST_DNAT => Site::PostDnat,
        site::DROP => Site::Drop,
        site::TC_INGRESS => Site::Tc {
            ifindex: raw.ifindex,
            egress: false,
        },
        site::TC_EGRESS => Site::Tc {
            ifindex: raw.ifindex,
            egress: true,
        },
        other => return Err(PacketDecodeError::Site(other)),
    };
    Ok(PacketCopy {
        ts_ns: raw.ts_ns,
        flow: tuple(&raw.key)?,
        site: at,
        hook: hook_of(raw.hook),
        reply: raw.reply != 0,
        drop_reason: raw.reason,
        orig_len: raw.orig_len.max(raw.cap_len),
        data: raw.data[..raw.cap_len as usize].to_vec(),
    })
}

/// Name of a TCP state number (`include/net/tcp_states.h`).
pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "ESTABLISHED",
        2 => "SYN_SENT",
        3 => "SYN_RECV",
        4 => "FIN_WAIT1",
        5 => "FIN_WAIT2",
        6 => "TIME_WAIT",
        7 => "CLOSE",
        8 => "CLOSE_WAIT",
        9 => "LAST_ACK",
        10 => "LISTEN",
        11 => "CLOSING",
        12 => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Builders of raw kernel events, for tests of the decoder and the flow table.
    use d8_common::{FAMILY_V4, FAMILY_V6, FlowKey};

    pub fn key(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, proto: u8) -> FlowKey {
        let mut k = FlowKey {
            proto,
            family: FAMILY_V4,
            sport: sport.to_be(),
            dport: dport.to_be(),
            ..Default::default()
        };
        k.saddr[..4].copy_from_slice(&src);
        k.daddr[..4].copy_from_slice(&dst);
        k
    }

    /// [`key`] of IPv6 addresses.
    pub fn key6(src: std::net::Ipv6Addr, sport: u16, dst: std::net::Ipv6Addr, dport: u16, proto: u8) -> FlowKey {
        FlowKey {
            proto,
            family: FAMILY_V6,
            sport: sport.to_be(),
            dport: dport.to_be(),
            saddr: src.octets(),
            daddr: dst.octets(),
            ..Default::default()
        }
    }

    pub fn raw(kind: u8, hook: u8, key: FlowKey, ts_ns: u64) -> d8_common::Event {
        d8_common::Event {
            ts_ns,
            kind,
            hook,
            ct_dir: 0xff,
            key,
            ..Default::default()
        }
    }

    pub fn bytes(ev: &d8_common::Event) -> Vec<u8> {
        // SAFETY: Event is plain old data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (ev as *const d8_common::Event).cast::<u8>(),
                std::mem::size_of::<d8_common::Event>(),
            )
        }
        .to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

    #[test]
    fn decodes_conntrack_event() {
        let orig = key([10, 0, 0, 5], 40000, [10, 96, 0, 10], 80, 6);
        let mut ev = raw(kind::CT, hook::PRE_ROUTING, orig, 42);
        ev.reply = key([10, 1, 0, 7], 8080, [10, 0, 0, 5], 40000, 6);
        ev.ct_status = 0x20;
        ev.ct_dir = 0;
        let decoded = decode(&bytes(&ev)).unwrap();
        assert_eq!(decoded.flow.dst, "10.96.0.10:80".parse().unwrap());
        assert_eq!(decoded.hook, Some(Hook::Prerouting));
        assert_eq!(decoded.reply_direction, Some(false));
        let Kind::Conntrack {
            reply,
            status,
            after_snat,
        } = decoded.kind
        else {
            panic!("{decoded:?}")
        };
        assert_eq!(
            (reply.src, status, after_snat),
            ("10.1.0.7:8080".parse().unwrap(), 0x20, false)
        );
    }

    #[test]
    fn decodes_icmp_error_sender() {
        let mut ev = raw(
            kind::ICMP_ERROR,
            hook::LOCAL_OUT,
            key([10, 0, 0, 5], 1, [10, 96, 0, 1], 2, 6),
            1,
        );
        ev.aux[..4].copy_from_slice(&[10, 0, 0, 1]);
        ev.icmp_type = 3;
        ev.icmp_code = 3;
        let decoded = decode(&bytes(&ev)).unwrap();
        assert_eq!(
            decoded.kind,
            Kind::IcmpError {
                icmp_type: 3,
                icmp_code: 3,
                from: "10.0.0.1".parse().unwrap()
            }
        );
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let ev = raw(kind::NEW, 0, key([1, 1, 1, 1], 1, [2, 2, 2, 2], 2, 17), 0);
        let b = bytes(&ev);
        assert_eq!(decode(&b[..10]), Err(DecodeError::Size { got: 10, expected: 128 }));
        let bad = raw(200, 0, ev.key, 0);
        assert_eq!(decode(&bytes(&bad)), Err(DecodeError::Kind(200)));
        let mut fam = ev;
        fam.key.family = 9;
        assert_eq!(decode(&bytes(&fam)), Err(DecodeError::Family(9)));
    }

    #[test]
    fn decodes_from_unaligned_buffers() {
        let ev = raw(kind::RETRANS, 3, key([1, 2, 3, 4], 5, [6, 7, 8, 9], 10, 6), 7);
        let mut buf = vec![0u8];
        buf.extend(bytes(&ev));
        assert_eq!(decode(&buf[1..]).unwrap().kind, Kind::Retransmit);
    }

    fn packet_record(site: u8, cap_len: u32) -> Vec<u8> {
        let mut rec = d8_common::PacketRecord {
            ts_ns: 42,
            key: key([10, 244, 1, 5], 40000, [10, 96, 0, 10], 80, 6),
            ifindex: 7,
            orig_len: 60,
            cap_len,
            reason: 0,
            site,
            hook: hook::PRE_ROUTING,
            reply: 1,
            pad: [0; 5],
            data: [0; d8_common::pcap::MAX_SNAPLEN as usize],
        };
        rec.data[0] = 0x45;
        // SAFETY: plain old data, read as its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&rec as *const d8_common::PacketRecord).cast::<u8>(),
                std::mem::size_of::<d8_common::PacketRecord>(),
            )
        };
        bytes.to_vec()
    }

    /// A packet record becomes its flow, site and captured bytes (only `cap_len` of them); a
    /// record that claims more than it can hold, or an unknown site, is an error.
    #[test]
    fn decodes_packet_records() {
        let p = decode_packet(&packet_record(d8_common::pcap::site::TC_EGRESS, 40)).unwrap();
        assert_eq!(p.flow.dst, "10.96.0.10:80".parse().unwrap());
        assert_eq!(
            p.site,
            Site::Tc {
                ifindex: 7,
                egress: true
            }
        );
        assert!(p.reply);
        assert_eq!((p.data.len(), p.data[0], p.orig_len), (40, 0x45, 60));
        assert_eq!(
            decode_packet(&packet_record(d8_common::pcap::site::DROP, 300)),
            Err(PacketDecodeError::Length(300))
        );
        assert_eq!(decode_packet(&packet_record(99, 40)), Err(PacketDecodeError::Site(99)));
        assert!(matches!(
            decode_packet(&[0; 10]),
            Err(PacketDecodeError::Size { got: 10, .. })
        ));
    }
}
