//! Traffic sources that run inside a lab namespace: each call spawns a thread that enters the
//! namespace, does one bounded exchange and returns what happened. Every call has a timeout; none
//! sleeps.

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::Error;
use super::netns::in_netns;

/// Largest response a helper keeps.
const MAX_RESPONSE: usize = 64 * 1024;

/// Result of one TCP exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TcpOutcome {
    /// Handshake completed; `response` holds the bytes read until the server closed (or the
    /// timeout ran out).
    Connected {
        /// Bytes the server sent.
        response: Vec<u8>,
    },
    /// The connection attempt was refused: a RST from a port nobody listens on, or an ICMP
    /// port-unreachable from a REJECT rule (the kernel reports both as ECONNREFUSED).
    Refused,
    /// Handshake completed, then the server reset the connection.
    Reset {
        /// Bytes read before the reset.
        response: Vec<u8>,
    },
    /// An ICMP host/network unreachable (or no route) ended the attempt.
    Unreachable(String),
    /// No answer to the SYN within the timeout (dropped somewhere).
    Timeout,
}

impl TcpOutcome {
    /// True for [`TcpOutcome::Connected`].
    pub fn is_connected(&self) -> bool {
        matches!(self, Self::Connected { .. })
    }

    /// The response as text (lossy), empty when not connected.
    pub fn text(&self) -> String {
        match self {
            Self::Connected { response } | Self::Reset { response } => String::from_utf8_lossy(response).into_owned(),
            _ => String::new(),
        }
    }

    /// The first line of the response: the lab's TCP servers answer with their pod name.
    pub fn backend(&self) -> Option<String> {
        let text = self.text();
        let line = text.lines().next()?.trim().to_string();
        (!line.is_empty()).then_some(line)
    }
}

/// Result of one HTTP GET.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HttpOutcome {
    /// A response arrived.
    Response {
        /// Status code.
        status: u16,
        /// Body (after the blank line).
        body: String,
        /// The `X-Remote-Addr` header of the lab's HTTP servers: the client address the pod saw.
        remote_addr: Option<String>,
    },
    /// No HTTP response: what happened at the TCP level.
    Failed(TcpOutcome),
}

impl HttpOutcome {
    /// Status code, when a response arrived.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Response { status, .. } => Some(*status),
            Self::Failed(_) => None,
        }
    }

    /// The first body line: the lab's HTTP servers answer with their pod name.
    pub fn backend(&self) -> Option<String> {
        match self {
            Self::Response { body, .. } => body
                .lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty()),
            Self::Failed(_) => None,
        }
    }

    /// The client IP the pod saw (from `X-Remote-Addr`).
    pub fn remote_ip(&self) -> Option<IpAddr> {
        match self {
            Self::Response {
                remote_addr: Some(a), ..
            } => a.parse::<SocketAddr>().ok().map(|s| s.ip()),
            _ => None,
        }
    }
}

/// Result of one UDP request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UdpOutcome {
    /// A reply datagram arrived.
    Reply(Vec<u8>),
    /// An ICMP port-unreachable came back (REJECT, or nothing bound on the pod).
    Refused,
    /// An ICMP host/network unreachable came back.
    Unreachable(String),
    /// No reply within the timeout.
    Timeout,
}

fn classify_connect_error(e: &std::io::Error) -> TcpOutcome {
    match e.kind() {
        ErrorKind::ConnectionRefused => TcpOutcome::Refused,
        ErrorKind::TimedOut | ErrorKind::WouldBlock => TcpOutcome::Timeout,
        ErrorKind::ConnectionReset => TcpOutcome::Reset { response: Vec::new() },
        _ => TcpOutcome::Unreachable(e.to_string()),
    }
}

/// Reads until EOF, reset, `MAX_RESPONSE` or `deadline`.
fn read_response(stream: &mut TcpStream, deadline: Instant) -> TcpOutcome {
    let mut response = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || response.len() >= MAX_RESPONSE {
            return TcpOutcome::Connected { response };
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(&mut chunk) {
            Ok(0) => return TcpOutcome::Connected { response },
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                return TcpOutcome::Reset { response };
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return TcpOutcome::Connected { response };
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return TcpOutcome::Reset { response },
        }
    }
}

/// Connects from namespace `ns` to `addr`, sends `payload` (if any), half-closes, and reads the
/// answer until the server closes. `timeout` bounds the whole exchange.
pub fn tcp_request(
    ns: &str,
    addr: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> Result<TcpOutcome, Error> {
    let addr = addr.into();
    in_netns(ns, || {
        let deadline = Instant::now() + timeout;
        let mut stream = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) => return Ok(classify_connect_error(&e)),
        };
        if !payload.is_empty() {
            let _ = stream.set_write_timeout(Some(timeout));
            if let Err(e) = stream.write_all(payload) {
                return Ok(if e.kind() == ErrorKind::ConnectionReset {
                    TcpOutcome::Reset { response: Vec::new() }
                } else {
                    classify_connect_error(&e)
                });
            }
        }
        let _ = stream.shutdown(Shutdown::Write);
        Ok(read_response(&mut stream, deadline))
    })
}

/// Connects from namespace `ns` to `addr` and reads what the server sends (the lab's TCP servers
/// send their pod name and close).
pub fn tcp_connect(ns: &str, addr: impl Into<SocketAddr>, timeout: Duration) -> Result<TcpOutcome, Error> {
    tcp_request(ns, addr, &[], timeout)
}

/// `GET path HTTP/1.1` from namespace `ns` to `addr`.
pub fn http_get(ns: &str, addr: impl Into<SocketAddr>, path: &str, timeout: Duration) -> Result<HttpOutcome, Error> {
    let addr = addr.into();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: d8lab\r\nConnection: close\r\n\r\n");
    let outcome = tcp_request(ns, addr, req.as_bytes(), timeout)?;
    let TcpOutcome::Connected { response } = &outcome else {
        return Ok(HttpOutcome::Failed(outcome));
    };
    let text = String::from_utf8_lossy(response);
    let status = text
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok());
    match status {
        Some(status) => {
            let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
            let remote_addr = head
                .lines()
                .find_map(|l| {
                    l.strip_prefix("X-Remote-Addr:")
                        .or_else(|| l.strip_prefix("x-remote-addr:"))
                })
                .map(|v| v.trim().to_string());
            Ok(HttpOutcome::Response {
                status,
                body: body.to_string(),
                remote_addr,
            })
        }
        None => Ok(HttpOutcome::Failed(outcome)),
    }
}

/// Sends one datagram from namespace `ns` to `addr` on a connected UDP socket (so ICMP errors are
/// reported) and waits up to `timeout` for a reply.
pub fn udp_request(
    ns: &str,
    addr: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> Result<UdpOutcome, Error> {
    udp_request_from(ns, 0, addr, payload, timeout)
}

/// [`udp_request`] from local port `port` (0: any): the same port twice is the same conntrack
/// entry while it lives.
pub fn udp_request_from(
    ns: &str,
    port: u16,
    addr: impl Into<SocketAddr>,
    payload: &[u8],
    timeout: Duration,
) -> Result<UdpOutcome, Error> {
    let addr = addr.into();
    let any: IpAddr = match addr {
        SocketAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        SocketAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    in_netns(ns, || {
        let sock = UdpSocket::bind((any, port)).map_err(|e| Error::Io(format!("bind udp in {ns}: {e}")))?;
        sock.connect(addr)
            .map_err(|e| Error::Io(format!("connect udp {addr}: {e}")))?;
        let _ = sock.set_read_timeout(Some(timeout));
        match sock.send(payload) {
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => return Ok(UdpOutcome::Refused),
            Err(e) => return Ok(UdpOutcome::Unreachable(e.to_string())),
        }
        let mut buf = vec![0u8; 65536];
        Ok(match sock.recv(&mut buf) {
            Ok(n) => UdpOutcome::Reply(buf[..n].to_vec()),
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => UdpOutcome::Refused,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => UdpOutcome::Timeout,
            Err(e) => UdpOutcome::Unreachable(e.to_string()),
        })
    })
}

/// A kubelet-style TCP probe from namespace `ns` (the node): connect, then close at once with
/// SO_LINGER 0 so the kernel sends RST instead of FIN, as kubelet's tcpSocket probe does.
/// Returns `Connected` (empty response) when the handshake completed.
pub fn kubelet_probe(ns: &str, addr: impl Into<SocketAddr>, timeout: Duration) -> Result<TcpOutcome, Error> {
    let addr = addr.into();
    in_netns(ns, || {
        let stream = match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => s,
            Err(e) => return Ok(classify_connect_error(&e)),
        };
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        // SAFETY: setting SO_LINGER on our own socket with a correctly sized struct.
        unsafe {
            libc::setsockopt(
                stream.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&linger as *const libc::linger).cast(),
                std::mem::size_of::<libc::linger>() as u32,
            );
        }
        drop(stream);
        Ok(TcpOutcome::Connected { response: Vec::new() })
    })
}
