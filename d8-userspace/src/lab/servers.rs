//! Pod servers (and the simulated kube-proxy's health/metrics endpoints) as threads of this
//! process: each thread enters its namespace, binds, reports readiness, then serves until stopped.
//! Stopping is explicit: an eventfd the thread polls next to its socket, so no thread outlives its
//! [`Server`] and no sleep is used for synchronization.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::Error;
use super::netns;
use super::spec::ListenerKind;

/// How long a server waits for a client's request bytes before giving up on a connection.
const CONN_IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Connection handler threads alive at once per server; beyond that connections are served inline.
const MAX_HANDLERS: usize = 64;
/// How long `start` waits for the thread to report that it is bound.
const BIND_TIMEOUT: Duration = Duration::from_secs(5);

/// Live state of the simulated kube-proxy, shared with its HTTP threads.
#[derive(Debug, Default)]
pub struct KubeProxyState {
    /// `/healthz` answers 200 when true, 503 when false.
    pub healthy: AtomicBool,
    /// Unix time of the last successful rule sync (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`).
    pub last_sync: AtomicU64,
    /// Unix time of the last queued sync (`..._last_queued_timestamp_seconds`).
    pub last_queued: AtomicU64,
}

/// Seconds since the epoch.
pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// What a server thread does.
#[derive(Debug, Clone)]
pub(crate) enum Behavior {
    /// A pod listener.
    Pod(ListenerKind),
    /// kube-proxy `/healthz` (port 10256).
    KubeProxyHealthz(Arc<KubeProxyState>),
    /// kube-proxy `/metrics` and `/proxyMode` (port 10249).
    KubeProxyMetrics {
        state: Arc<KubeProxyState>,
        mode: &'static str,
        version: String,
    },
}

/// One running server thread.
pub(crate) struct Server {
    /// Bound address.
    pub addr: SocketAddr,
    stop: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts a server in namespace `ns` bound to `addr`, returning once it is bound (and, for
    /// [`ListenerKind::TcpNoAccept`], once its accept queue is full).
    pub fn start(ns: &str, owner: &str, addr: impl Into<SocketAddr>, behavior: Behavior) -> Result<Self, Error> {
        let addr = addr.into();
        // SAFETY: plain eventfd creation; the fd is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            return Err(Error::Io(format!("eventfd: {}", std::io::Error::last_os_error())));
        }
        // SAFETY: efd is a fresh, valid descriptor we own.
        let stop = unsafe { OwnedFd::from_raw_fd(efd) };
        let (tx, rx) = mpsc::sync_channel::<Result<(), Error>>(1);
        let ns_owned = ns.to_string();
        let owner_owned = owner.to_string();
        let stop_fd = stop.as_raw_fd();
        let thread = std::thread::Builder::new()
            .name(format!("d8lab-{owner}-{}", addr.port()))
            .spawn(move || serve(&ns_owned, &owner_owned, addr, behavior, stop_fd, tx))
            .map_err(|e| Error::Io(format!("spawn server thread: {e}")))?;
        let mut server = Server {
            addr,
            stop,
            thread: Some(thread),
        };
        match rx.recv_timeout(BIND_TIMEOUT) {
            Ok(Ok(())) => Ok(server),
            Ok(Err(e)) => {
                server.stop();
                Err(e)
            }
            Err(_) => {
                server.stop();
                Err(Error::Io(format!(
                    "server {owner} {addr} did not report bound within {BIND_TIMEOUT:?}"
                )))
            }
        }
    }

    /// Signals the thread and waits for it to exit (its sockets close with it).
    pub fn stop(&mut self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits until `fd` is readable (true) or `stop` is signalled (false).
fn wait_readable(fd: RawFd, stop: RawFd) -> bool {
    let mut fds = [
        libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: stop,
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    loop {
        // SAFETY: fds is a valid array of two pollfd.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return false;
        }
        if fds[1].revents != 0 {
            return false;
        }
        if fds[0].revents != 0 {
            return true;
        }
    }
}

fn io_err(what: &str, addr: SocketAddr, e: std::io::Error) -> Error {
    Error::Io(format!("{what} {addr}: {e}"))
}

/// A socket of `addr`'s family bound to it; an IPv6 one is IPv6-only, so a dual-stack pod's
/// `[::]:port` server binds beside its `0.0.0.0:port` one.
fn bound_socket(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), ty, None)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// A TCP listener with an explicit backlog (std always uses 128).
fn tcp_listen(addr: SocketAddr, backlog: i32) -> std::io::Result<TcpListener> {
    let sock = bound_socket(addr, socket2::Type::STREAM)?;
    sock.listen(backlog)?;
    Ok(sock.into())
}

/// A UDP socket bound to `addr`.
fn udp_bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    Ok(bound_socket(addr, socket2::Type::DGRAM)?.into())
}

/// The loopback address of `addr`'s family.
fn loopback(addr: SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}

fn serve(
    ns: &str,
    owner: &str,
    addr: SocketAddr,
    behavior: Behavior,
    stop: RawFd,
    ready: mpsc::SyncSender<Result<(), Error>>,
) {
    if let Err(e) = netns::enter(ns) {
        let _ = ready.send(Err(e));
        return;
    }
    match behavior {
        Behavior::Pod(ListenerKind::UdpEcho) => {
            let sock = match udp_bind(addr) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(io_err("bind udp", addr, e)));
                    return;
                }
            };
            let _ = sock.set_nonblocking(true);
            let _ = ready.send(Ok(()));
            let mut buf = vec![0u8; 65536];
            while wait_readable(sock.as_raw_fd(), stop) {
                while let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let mut reply = format!("{owner}\n").into_bytes();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, peer);
                }
            }
            // A child process forked elsewhere in this process may hold a copy of the fd until it
            // execs, keeping the socket bound after our close. Connecting it (no packet is sent)
            // makes it ignore every other peer at once, so clients get port-unreachable.
            let _ = sock.connect(SocketAddr::new(loopback(addr), 9));
        }
        Behavior::Pod(ListenerKind::TcpNoAccept) => {
            let listener = match tcp_listen(addr, 0) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(io_err("listen", addr, e)));
                    return;
                }
            };
            // One completed connection fills a backlog-0 accept queue; later SYNs are dropped.
            let target = if addr.ip().is_unspecified() {
                SocketAddr::new(loopback(addr), addr.port())
            } else {
                addr
            };
            let filler = match TcpStream::connect_timeout(&target, Duration::from_secs(2)) {
                Ok(s) => s,
                Err(e) => {
                    let _ = ready.send(Err(io_err("fill accept queue of", addr, e)));
                    return;
                }
            };
            let _ = ready.send(Ok(()));
            // SAFETY: waiting on our own eventfd only.
            let mut fds = [libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            }];
            while unsafe { libc::poll(fds.as_mut_ptr(), 1, -1) } < 0 {}
            stop_listening(&listener);
            drop(filler);
            drop(listener);
        }
        behavior => {
            let listener = match tcp_listen(addr, 1024) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready.send(Err(io_err("listen", addr, e)));
                    return;
                }
            };
            let _ = listener.set_nonblocking(true);
            let _ = ready.send(Ok(()));
            let active = Arc::new(AtomicUsize::new(0));
            while wait_readable(listener.as_raw_fd(), stop) {
                while let Ok((stream, _)) = listener.accept() {
                    let _ = stream.set_nonblocking(false);
                    let _ = stream.set_read_timeout(Some(CONN_IO_TIMEOUT));
                    let _ = stream.set_write_timeout(Some(CONN_IO_TIMEOUT));
                    let b = behavior.clone();
                    let who = owner.to_string();
                    if active.load(Ordering::Relaxed) < MAX_HANDLERS {
                        active.fetch_add(1, Ordering::Relaxed);
                        let counter = active.clone();
                        let spawned = std::thread::Builder::new().spawn(move || {
                            handle(stream, &who, &b);
                            counter.fetch_sub(1, Ordering::Relaxed);
                        });
                        if spawned.is_err() {
                            active.fetch_sub(1, Ordering::Relaxed);
                        }
                    } else {
                        handle(stream, &who, &b);
                    }
                }
            }
            stop_listening(&listener);
        }
    }
}

/// Stops a listener at the socket, not the fd: a child process forked elsewhere in this process
/// (tests spawn `ip`, `nft`, `d8-trace`) holds a copy of every fd until it execs, so a plain close
/// could leave the port listening for a moment and a client would connect and then be reset
/// instead of being refused. `shutdown` on a listening socket stops it (Linux).
fn stop_listening(listener: &TcpListener) {
    // SAFETY: shutdown on a descriptor we own.
    unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
}

/// Reads an HTTP request head (bounded), returning the request line.
fn read_request(stream: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while buf.len() < 16 * 1024 {
        match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
        }
    }
    let text = String::from_utf8_lossy(&buf);
    text.lines().next().filter(|l| !l.is_empty()).map(str::to_string)
}

fn http_response(stream: &mut TcpStream, status: &str, content_type: &str, body: &str) {
    // X-Remote-Addr lets tests check source-IP preservation (externalTrafficPolicy=Local) and
    // masquerading.
    let peer = stream.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nX-Remote-Addr: {peer}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes());
    let _ = stream.shutdown(Shutdown::Write);
    // Drain so closing does not turn into a reset when the client sent more than we read.
    let mut sink = [0u8; 1024];
    while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
}

fn handle(mut stream: TcpStream, owner: &str, behavior: &Behavior) {
    match behavior {
        Behavior::Pod(ListenerKind::Http) => {
            if read_request(&mut stream).is_some() {
                http_response(&mut stream, "200 OK", "text/plain", &format!("{owner}\n"));
            }
        }
        Behavior::KubeProxyHealthz(state) => {
            if read_request(&mut stream).is_some() {
                let now = unix_now();
                let last = state.last_sync.load(Ordering::Relaxed);
                let healthy = state.healthy.load(Ordering::Relaxed);
                let body = format!(
                    "{{\"lastUpdated\":\"{}\",\"currentTime\":\"{}\",\"nodeEligible\":true,\"healthy\":{healthy}}}",
                    rfc3339(if healthy { now } else { last }),
                    rfc3339(now)
                );
                let status = if healthy { "200 OK" } else { "503 Service Unavailable" };
                http_response(&mut stream, status, "application/json", &body);
            }
        }
        Behavior::KubeProxyMetrics { state, mode, version } => {
            let Some(line) = read_request(&mut stream) else {
                return;
            };
            let path = line.split_whitespace().nth(1).unwrap_or("/");
            if path.starts_with("/proxyMode") {
                http_response(&mut stream, "200 OK", "text/plain", mode);
            } else if path.starts_with("/metrics") {
                let body = metrics_text(state, version);
                http_response(&mut stream, "200 OK", "text/plain; version=0.0.4", &body);
            } else {
                http_response(&mut stream, "404 Not Found", "text/plain", "404 page not found\n");
            }
        }
        // Tcp (and anything else): banner, half-close, drain until the client closes.
        _ => {
            let _ = stream.write_all(format!("{owner}\n").as_bytes());
            let _ = stream.shutdown(Shutdown::Write);
            let mut sink = [0u8; 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
        }
    }
}

fn metrics_text(state: &KubeProxyState, version: &str) -> String {
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.');
    let major = parts.next().unwrap_or("1");
    let minor = parts.next().unwrap_or("0");
    format!(
        "# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were successfully synced\n\
         # TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge\n\
         kubeproxy_sync_proxy_rules_last_timestamp_seconds{{ip_family=\"IPv4\"}} {}\n\
         # HELP kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds [ALPHA] The last time a sync of proxy rules was queued\n\
         # TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge\n\
         kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{{ip_family=\"IPv4\"}} {}\n\
         # HELP kubernetes_build_info [ALPHA] A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running.\n\
         # TYPE kubernetes_build_info gauge\n\
         kubernetes_build_info{{build_date=\"2025-06-17T18:36:18Z\",compiler=\"gc\",git_commit=\"0000000000000000000000000000000000000000\",git_tree_state=\"clean\",git_version=\"{version}\",go_version=\"go1.24.4\",major=\"{major}\",minor=\"{minor}\",platform=\"linux/amd64\"}} 1\n",
        state.last_sync.load(Ordering::Relaxed),
        state.last_queued.load(Ordering::Relaxed),
    )
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time (civil-from-days, proleptic Gregorian).
pub(crate) fn rfc3339(secs: u64) -> String {
    let days = (secs / 86400) as i64;
    let rem = secs % 86400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_formats_known_dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_767_225_600), "2026-01-01T00:00:00Z");
    }
}
