//! A minimal netlink socket and message/attribute walker, shared by [`super::ctnetlink`]
//! (conntrack events) and [`super::rtnetlink`] (link events, clsact qdiscs). Only what those need:
//! no library, so the parsing is unit-tested here with literal bytes.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

pub const NLMSG_HDRLEN: usize = 16;
pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_MULTI: u16 = 0x2;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_ROOT: u16 = 0x100;
pub const NLM_F_MATCH: u16 = 0x200;
pub const NLM_F_DUMP: u16 = NLM_F_ROOT | NLM_F_MATCH;
pub const NLM_F_EXCL: u16 = 0x200;
pub const NLM_F_CREATE: u16 = 0x400;
/// `nla_type` flag bits.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// One netlink message: type, flags and payload (after the 16-byte header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message<'a> {
    pub kind: u16,
    pub flags: u16,
    pub seq: u32,
    pub payload: &'a [u8],
}

/// Splits a datagram into messages; a truncated tail is ignored.
pub fn messages(mut buf: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while buf.len() >= NLMSG_HDRLEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() {
            break;
        }
        out.push(Message {
            kind: u16::from_ne_bytes([buf[4], buf[5]]),
            flags: u16::from_ne_bytes([buf[6], buf[7]]),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[NLMSG_HDRLEN..len],
        });
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    out
}

/// Attributes (`struct nlattr`) in `buf`: (type without flag bits, payload).
pub fn attrs(mut buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while buf.len() >= 4 {
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            break;
        }
        out.push((kind, &buf[4..len]));
        let aligned = (len + 3) & !3;
        buf = buf.get(aligned..).unwrap_or(&[]);
    }
    out
}

/// The payload of attribute `kind` in `buf`.
pub fn attr(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).into_iter().find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// Appends an attribute (padded to 4 bytes).
pub fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

/// Builds one request message.
pub fn request(kind: u16, flags: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + body.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(body);
    out
}

/// The error code of an `NLMSG_ERROR` payload (0 is an ACK).
pub fn error_code(payload: &[u8]) -> Option<i32> {
    Some(i32::from_ne_bytes(payload.get(0..4)?.try_into().ok()?))
}

/// A non-blocking netlink socket in the calling thread's network namespace.
#[derive(Debug)]
pub struct Socket {
    fd: OwnedFd,
}

impl Socket {
    /// Opens a socket of `protocol` (`NETLINK_ROUTE`, `NETLINK_NETFILTER`, ...) subscribed to the
    /// multicast `groups` (numbers, not bits).
    pub fn open(protocol: i32, groups: &[u32], rcvbuf: usize) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the fd is owned right away.
        let raw = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                protocol,
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh, valid fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: zeroed sockaddr_nl is valid; bind with pid 0 lets the kernel pick.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        for group in groups {
            let rc = unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    libc::NETLINK_ADD_MEMBERSHIP,
                    (group as *const u32).cast(),
                    4,
                )
            };
            if rc < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if rcvbuf > 0 {
            let size = rcvbuf as libc::c_int;
            // SO_RCVBUFFORCE (root) goes past rmem_max; fall back to SO_RCVBUF.
            for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
                let rc = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        (&size as *const libc::c_int).cast(),
                        4,
                    )
                };
                if rc == 0 {
                    break;
                }
            }
        }
        Ok(Self { fd })
    }

    pub fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: zeroed sockaddr_nl (pid 0 = the kernel).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Reads one datagram into `buf`; `Ok(None)` when nothing is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: buf is valid for writes of its length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                return Ok(None);
            }
            return Err(e);
        }
        Ok(Some(n as usize))
    }

    /// Waits (up to `timeout`) until a datagram is queued; for request/response exchanges.
    pub fn wait_readable(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc > 0)
        }
    }

    /// Sends `msg` and collects the answer: every message up to `NLMSG_DONE` (dumps) or the
    /// `NLMSG_ERROR` ack; an error code becomes an `io::Error`.
    pub fn transact(&self, msg: &[u8], seq: u32) -> io::Result<Vec<(u16, Vec<u8>)>> {
        let mut out = Vec::new();
        self.transact_each(msg, seq, |kind, payload| out.push((kind, payload.to_vec())))?;
        Ok(out)
    }

    /// [`Self::transact`], handing each answer message (type, payload) to `each` as it arrives
    /// instead of collecting them: for dumps too large to hold twice.
    pub fn transact_each(&self, msg: &[u8], seq: u32, mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        self.send(msg)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if !self.wait_readable(std::time::Duration::from_secs(2))? {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no netlink answer within 2 s"));
            }
            let Some(n) = self.recv(&mut buf)? else { continue };
            for m in messages(&buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                match m.kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = error_code(m.payload).unwrap_or(0);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                        return Ok(());
                    }
                    kind => each(kind, m.payload),
                }
            }
        }
    }
}

impl AsFd for Socket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Socket {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_messages_and_attributes() {
        let mut body = Vec::new();
        push_attr(&mut body, 3, b"eth0\0");
        push_attr(&mut body, 0x8000 | 7, &[1, 2, 3, 4]);
        let mut dgram = request(16, NLM_F_MULTI, 9, &body);
        dgram.extend(request(NLMSG_DONE, NLM_F_MULTI, 9, &[0; 4]));
        let msgs = messages(&dgram);
        assert_eq!(msgs.len(), 2);
        assert_eq!((msgs[0].kind, msgs[0].seq), (16, 9));
        assert_eq!(attr(msgs[0].payload, 3), Some(&b"eth0\0"[..]));
        // The nested flag is not part of the type.
        assert_eq!(attr(msgs[0].payload, 7), Some(&[1u8, 2, 3, 4][..]));
        assert_eq!(msgs[1].kind, NLMSG_DONE);
    }

    #[test]
    fn truncated_input_stops_cleanly() {
        let dgram = request(16, 0, 1, &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(messages(&dgram[..10]).is_empty());
        assert_eq!(attrs(&[8, 0, 1, 0, 1]).len(), 0);
        assert_eq!(error_code(&(-17i32).to_ne_bytes()), Some(-17));
    }
}
