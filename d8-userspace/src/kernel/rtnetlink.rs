//! Route netlink, for the TC hook set: the interfaces of the current network namespace, link
//! events (interfaces that appear or go while tracing), the `clsact` qdisc (added where the
//! kernel attaches TC programs through netlink, before 6.6; removed again only if we added it and
//! nobody else's filters hang on it), and the filters on it (listed to find what an earlier,
//! killed d8-trace left, and removed one by one).

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
const RTM_NEWTFILTER: u16 = 44;
const RTM_DELTFILTER: u16 = 45;
const RTM_GETTFILTER: u16 = 46;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_ID: u16 = 11;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)` and `.., TC_H_MIN_EGRESS)`: the two hooks of clsact.
pub const CLSACT_INGRESS: u32 = 0xffff_fff2;
pub const CLSACT_EGRESS: u32 = 0xffff_fff3;
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
    Some(Link {
        index,
        name: String::from_utf8_lossy(&name[..end]).into_owned(),
        kind,
        flags,
    })
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
    Ok(answer
        .into_iter()
        .filter(|(k, _)| *k == RTM_NEWLINK)
        .filter_map(|(_, p)| parse_link(&p))
        .collect())
}

fn tcmsg(ifindex: u32) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&CLSACT_HANDLE.to_ne_bytes());
    b[12..16].copy_from_slice(&TC_H_CLSACT.to_ne_bytes());
    netlink::push_attr(&mut b, TCA_KIND, b"clsact\0");
    b
}

/// The name of interface `ifindex` in the calling thread's network namespace (`if_indextoname`);
/// `None` when it is gone.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` holds IF_NAMESIZE bytes, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// Adds a `clsact` qdisc to `ifindex`. `Ok(true)`: added (ours to remove); `Ok(false)`: one was
/// there already (someone else's: Cilium, Calico, another tool).
pub fn add_clsact(ifindex: u32) -> io::Result<bool> {
    let sock = Socket::open(NETLINK_ROUTE, &[], 0)?;
    let msg = netlink::request(
        RTM_NEWQDISC,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        2,
        &tcmsg(ifindex),
    );
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

/// A TC filter on a clsact hook, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub ifindex: u32,
    /// [`CLSACT_INGRESS`] or [`CLSACT_EGRESS`].
    pub parent: u32,
    pub priority: u16,
    /// `ETH_P_*`, host byte order.
    pub protocol: u16,
    pub handle: u32,
    /// `bpf`, `u32`, `matchall`, ...
    pub kind: String,
    /// A BPF classifier's program name (as `tc filter show` prints it) and id.
    pub bpf_name: Option<String>,
    pub bpf_id: Option<u32>,
}

fn filter_msg(ifindex: u32, parent: u32, handle: u32, info: u32) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    b[8..12].copy_from_slice(&handle.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b[16..20].copy_from_slice(&info.to_ne_bytes());
    b
}

/// Decodes an `RTM_NEWTFILTER` payload (tcmsg + attributes). The chain's head entries (handle 0,
/// one per priority) are not filters.
pub fn parse_filter(payload: &[u8]) -> Option<Filter> {
    if payload.len() < 20 {
        return None;
    }
    let ifindex = i32::from_ne_bytes(payload[4..8].try_into().ok()?) as u32;
    let handle = u32::from_ne_bytes(payload[8..12].try_into().ok()?);
    let parent = u32::from_ne_bytes(payload[12..16].try_into().ok()?);
    let info = u32::from_ne_bytes(payload[16..20].try_into().ok()?);
    if handle == 0 {
        return None;
    }
    let attrs = &payload[20..];
    let kind = netlink::attr(attrs, TCA_KIND)
        .map(|k| String::from_utf8_lossy(k).trim_end_matches('\0').to_string())
        .unwrap_or_default();
    let options = netlink::attr(attrs, TCA_OPTIONS).unwrap_or_default();
    let bpf_name =
        netlink::attr(options, TCA_BPF_NAME).map(|n| String::from_utf8_lossy(n).trim_end_matches('\0').to_string());
    let bpf_id =
        netlink::attr(options, TCA_BPF_ID).and_then(|v| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)));
    Some(Filter {
        ifindex,
        parent,
        priority: (info >> 16) as u16,
        protocol: u16::from_be((info & 0xffff) as u16),
        handle,
        kind,
        bpf_name,
        bpf_id,
    })
}

/// The filters on `parent` (a clsact hook) of `ifindex`; none when there is no clsact qdisc.
pub fn filters(ifindex: u32, parent: u32) -> io::Result<Vec<Filter>> {
    let sock = Socket::open(NETLINK_ROUTE, &[], 0)?;
    let msg = netlink::request(
        RTM_GETTFILTER,
        NLM_F_REQUEST | NLM_F_DUMP,
        4,
        &filter_msg(ifindex, parent, 0, 0),
    );
    match sock.transact(&msg, 4) {
        Ok(answer) => Ok(answer
            .into_iter()
            .filter(|(k, _)| *k == RTM_NEWTFILTER)
            .filter_map(|(_, p)| parse_filter(&p))
            .collect()),
        // No clsact (or no interface): no filters.
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT | libc::ENODEV)) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// Removes one filter. Already gone is not an error.
pub fn del_filter(f: &Filter) -> io::Result<()> {
    let sock = Socket::open(NETLINK_ROUTE, &[], 0)?;
    let info = (u32::from(f.priority) << 16) | u32::from(f.protocol.to_be());
    let mut body = filter_msg(f.ifindex, f.parent, f.handle, info);
    netlink::push_attr(&mut body, TCA_KIND, format!("{}\0", f.kind).as_bytes());
    let msg = netlink::request(RTM_DELTFILTER, NLM_F_REQUEST | NLM_F_ACK, 5, &body);
    match sock.transact(&msg, 5) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::EINVAL)) => Ok(()),
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
        Ok(Self {
            socket: Socket::open(NETLINK_ROUTE, &[RTNLGRP_LINK], 1 << 20)?,
            buf: vec![0u8; 64 * 1024],
        })
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
        let LinkEvent::New(l) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (l.index, l.name.as_str(), l.l2_len(), l.flags),
            (7, "cali1234567890a", 14, 1)
        );
        let LinkEvent::Deleted(l) = &events[1] else {
            panic!("{events:?}")
        };
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
