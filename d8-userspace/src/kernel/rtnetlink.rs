//! Route netlink, for the TC hook set: the interfaces of the current network namespace, link
//! events (interfaces that appear or go while tracing), and the `clsact` qdisc (added where the
//! kernel attaches TC programs through netlink, before 6.6; removed again only if we added it).

use std::io;

use super::netlink::{self, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, Socket};

const NETLINK_ROUTE: i32 = 0;
/// `RTNLGRP_LINK`.
const RTNLGRP_LINK: u32 = 1;
pub const RTM_NEWLINK: u16 = 16;
pub const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWQDISC: u16 = 36;
const RTM_DELQDISC: u16 = 37;
const IFINFOMSG_LEN: usize = 16;
const IFLA_IFNAME: u16 = 3;
const TCA_KIND: u16 = 1;
/// `TC_H_CLSACT` (= `TC_H_INGRESS`).
const TC_H_CLSACT: u32 = 0xffff_fff1;
/// `TC_H_MAKE(TC_H_CLSACT, 0)`.
const CLSACT_HANDLE: u32 = 0xffff_0000;
/// `ARPHRD_ETHER`, `ARPHRD_LOOPBACK`.
pub const ARPHRD_ETHER: u16 = 1;
pub const ARPHRD_LOOPBACK: u16 = 772;

/// One interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// `ARPHRD_*`.
    pub kind: u16,
    /// `IFF_*`.
    pub flags: u32,
}

impl Link {
    /// Bytes of link-layer header in front of the IP header as TC programs see the packet.
    pub fn l2_len(&self) -> u32 {
        if self.kind == ARPHRD_ETHER { 14 } else { 0 }
    }
}

/// A change of the interface list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkEvent {
    New(Link),
    Deleted(Link),
}

/// Decodes an `RTM_NEWLINK`/`RTM_DELLINK` payload (ifinfomsg + attributes).
pub fn parse_link(payload: &[u8]) -> Option<Link> {
    if payload.len() < IFINFOMSG_LEN {
        return None;
    }
    let kind = u16::from_ne_bytes([payload[2], payload[3]]);
    let index = i32::from_ne_bytes(payload[4..8].try_into().ok()?) as u32;
    let flags = u32::from_ne_bytes(payload[8..12].try_into().ok()?);
    let name = netlink::attr(&payload[IFINFOMSG_LEN..], IFLA_IFNAME)?;
    let end = name.iter().position(|&c| c == 0).unwrap_or(name.len());
    Some(Link { index, name: String::from_utf8_lossy(&name[..end]).into_owned(), kind, flags })
}

/// Decodes the link events of one datagram.
pub fn parse_link_events(buf: &[u8]) -> Vec<LinkEvent> {
    netlink::messages(buf)
        .into_iter()
        .filter_map(|m| match m.kind {
            RTM_NEWLINK => parse_link(m.payload).map(LinkEvent::New),
            RTM_DELLINK => parse_link(m.payload).map(LinkEvent::Deleted),
            _ => None,
        })
        .collect()
}

fn ifinfomsg(index: u32) -> Vec<u8> {
    let mut b = vec![0u8; IFINFOMSG_LEN];
    b[4..8].copy_from_slice(&(index as i32).to_ne_bytes());
    b
}

/// Every interface of the current network namespace.
pub fn links() -> io::Result<Vec<Link>> {
    let sock = Socket::open(NETLINK_ROUTE, &[], 0)?;
    let msg = netlink::request(RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP, 1, &ifinfomsg(0));
    let answer = sock.transact(&msg, 1)?;
    Ok(answer.into_iter().filter(|(k, _)| *k == RTM_NEWLINK).filter_map(|(_, p)| parse_link(&p)).collect())
}

fn tcmsg(ifindex: u32) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&CLSACT_HANDLE.to_ne_bytes());
    b[12..16].copy_from_slice(&TC_H_CLSACT.to_ne_bytes());
    netlink::push_attr(&mut b, TCA_KIND, b"clsact\0");
    b
}

/// Adds a `clsact` qdisc to `ifindex`. `Ok(true)`: added (ours to remove); `Ok(false)`: one was
/// there already (someone else's: Cilium, Calico, another tool).
pub fn add_clsact(ifindex: u32) -> io::Result<bool> {
    let sock = Socket::open(NETLINK_ROUTE, &[], 0)?;
    let msg = netlink::request(RTM_NEWQDISC, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, 2, &tcmsg(ifindex));
    match sock.transact(&msg, 2) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes the `clsact` qdisc of `ifindex` (with every filter still on it). A missing interface
/// or qdisc is not an error: it is gone either way.
pub fn del_clsact(ifindex: u32) -> io::Result<()> {
    let sock = Socket::open(NETLINK_ROUTE, &[], 0)?;
    let msg = netlink::request(RTM_DELQDISC, NLM_F_REQUEST | NLM_F_ACK, 3, &tcmsg(ifindex));
    match sock.transact(&msg, 3) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)) => Ok(()),
        Err(e) => Err(e),
    }
}

/// A subscription to link events in the current network namespace.
#[derive(Debug)]
pub struct LinkEvents {
    socket: Socket,
    buf: Vec<u8>,
}

impl LinkEvents {
    pub fn open() -> io::Result<Self> {
        Ok(Self { socket: Socket::open(NETLINK_ROUTE, &[RTNLGRP_LINK], 1 << 20)?, buf: vec![0u8; 64 * 1024] })
    }

    /// Everything queued now (never blocks). After an overrun (`ENOBUFS`: events were lost) the
    /// current interfaces are listed again and reported as new, so none is missed.
    pub fn drain(&mut self) -> Vec<LinkEvent> {
        let mut out = Vec::new();
        loop {
            match self.socket.recv(&mut self.buf) {
                Ok(Some(n)) => out.extend(parse_link_events(&self.buf[..n])),
                Ok(None) => break,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    if let Ok(all) = links() {
                        out.extend(all.into_iter().map(LinkEvent::New));
                    }
                }
                Err(_) => break,
            }
        }
        out
    }

    pub fn socket(&self) -> &Socket {
        &self.socket
    }
}

impl std::os::fd::AsRawFd for LinkEvents {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.socket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::request;

    fn link_msg(kind: u16, index: u32, name: &str, arphrd: u16) -> Vec<u8> {
        let mut body = ifinfomsg(index);
        body[2..4].copy_from_slice(&arphrd.to_ne_bytes());
        body[8..12].copy_from_slice(&1u32.to_ne_bytes());
        netlink::push_attr(&mut body, 4, &1500u32.to_ne_bytes()); // IFLA_MTU: ignored
        let mut n = name.as_bytes().to_vec();
        n.push(0);
        netlink::push_attr(&mut body, IFLA_IFNAME, &n);
        request(kind, 0, 0, &body)
    }

    #[test]
    fn decodes_link_events() {
        let mut dgram = link_msg(RTM_NEWLINK, 7, "cali1234567890a", ARPHRD_ETHER);
        dgram.extend(link_msg(RTM_DELLINK, 3, "wg0", 65534));
        dgram.extend(request(20, 0, 0, &[0; 12])); // RTM_NEWADDR: not a link event
        let events = parse_link_events(&dgram);
        assert_eq!(events.len(), 2);
        let LinkEvent::New(l) = &events[0] else { panic!("{events:?}") };
        assert_eq!((l.index, l.name.as_str(), l.l2_len(), l.flags), (7, "cali1234567890a", 14, 1));
        let LinkEvent::Deleted(l) = &events[1] else { panic!("{events:?}") };
        assert_eq!((l.index, l.name.as_str(), l.l2_len()), (3, "wg0", 0));
    }

    #[test]
    fn clsact_request_names_the_qdisc() {
        let m = tcmsg(9);
        assert_eq!(i32::from_ne_bytes(m[4..8].try_into().unwrap()), 9);
        assert_eq!(u32::from_ne_bytes(m[12..16].try_into().unwrap()), TC_H_CLSACT);
        assert_eq!(netlink::attr(&m[20..], TCA_KIND), Some(&b"clsact\0"[..]));
    }

    #[test]
    fn short_payloads_are_not_links() {
        assert_eq!(parse_link(&[0; 8]), None);
        assert_eq!(parse_link(&ifinfomsg(1)), None, "no name attribute");
    }
}
