//! The daemon's HTTP endpoints: `/metrics` (OpenMetrics text), `/healthz` (the process runs),
//! `/readyz` (hooks attached and the model loaded).
//!
//! It runs on a thread of its own, so a long round of the daemon's loop (classifying 10,000
//! Services, swapping a model) never makes a probe wait; `/healthz` instead says whether that loop
//! still turns ([`State::beat`]). `/metrics` is encoded on a blocking thread of the server's
//! runtime, not on its event loop: at 10,000 Services the text is megabytes, and while the loop
//! encoded it no probe was answered (a scrape every 250 ms during a rules re-read made `/healthz`
//! wait up to 800 ms on a loaded machine). Probes are answered from atomics on the loop itself.
//!
//! The port is on the host's network, open to anything that reaches the node: a client gets
//! [`Limits::header_timeout`] to send its request head and [`Limits::connection_timeout`] in all,
//! at most [`Limits::max_connections`] are served at once (the rest wait in the kernel's
//! backlog), and accept errors (out of file descriptors) back off instead of spinning.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;

use super::metrics::Metrics;

/// State the endpoints read.
#[derive(Default)]
pub struct State {
    pub metrics: Metrics,
    pub ready: AtomicBool,
    /// When the daemon's loop last turned (monotonic ns); 0 before it started.
    pub last_beat_ns: AtomicU64,
}

/// `/healthz` fails when the loop has not turned for this long (the liveness probe then restarts
/// the pod).
pub const STALLED_AFTER: Duration = Duration::from_secs(60);

impl State {
    /// The loop turned.
    pub fn beat(&self) {
        self.last_beat_ns
            .store(crate::kernel::monotonic_ns(), Ordering::Relaxed);
    }

    /// How long the loop has not turned, once it started.
    fn stalled_for(&self) -> Option<Duration> {
        let last = self.last_beat_ns.load(Ordering::Relaxed);
        let since = Duration::from_nanos(crate::kernel::monotonic_ns().saturating_sub(last));
        (last != 0 && since > STALLED_AFTER).then_some(since)
    }
}

fn respond(state: &State, path: &str) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        "/healthz" => match state.stalled_for() {
            None => (StatusCode::OK, "text/plain", "ok\n".to_string()),
            Some(d) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("the daemon's loop has not run for {} s\n", d.as_secs()),
            ),
        },
        "/readyz" if state.ready.load(Ordering::Relaxed) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: attaching hooks or loading the model\n".to_string(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: /metrics, /healthz, /readyz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("static response parts are valid")
}

/// Binds `addr` now (so a bad address fails at start), then serves until the task is dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// How much one client may take of the server.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Time to send the request head.
    pub header_timeout: Duration,
    /// Time a connection may stay open, keep-alive included.
    pub connection_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            connection_timeout: Duration::from_secs(30),
            max_connections: 32,
        }
    }
}

/// The server on a thread of its own (with its own event loop); dropping it stops the server.
pub struct Server {
    stop: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    pub fn start(listener: TcpListener, state: Arc<State>, limits: Limits) -> std::io::Result<Server> {
        let listener = listener.into_std()?;
        let stop = tokio_util::sync::CancellationToken::new();
        let token = stop.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            // `/metrics` encodes there: two at once at most, the rest wait their turn.
            .max_blocking_threads(METRICS_ENCODERS)
            .build()?;
        let thread = std::thread::Builder::new().name("d8-http".into()).spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = TcpListener::from_std(listener) else {
                    return;
                };
                tokio::select! {
                    () = serve(listener, state, limits) => {}
                    () = token.cancelled() => {}
                }
            });
        })?;
        Ok(Server {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Threads encoding `/metrics` at once.
const METRICS_ENCODERS: usize = 2;

/// Longest pause after repeated accept errors.
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

pub async fn serve(listener: TcpListener, state: Arc<State>, limits: Limits) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut backoff = Duration::ZERO;
    loop {
        // A slot first: beyond the cap, clients wait in the backlog rather than in our memory.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => {
                backoff = Duration::ZERO;
                stream
            }
            Err(e) => {
                if backoff.is_zero() {
                    tracing::warn!("metrics server: accept failed: {e}; backing off");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), ACCEPT_BACKOFF_MAX);
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move {
                    let path = req.uri().path().to_string();
                    if path != "/metrics" {
                        return Ok::<_, Infallible>(respond(&state, &path));
                    }
                    let answer = tokio::task::spawn_blocking(move || respond(&state, &path)).await;
                    Ok(answer.unwrap_or_else(|e| {
                        Response::builder()
                            .status(StatusCode::INTERNAL_SERVER_ERROR)
                            .header("content-type", "text/plain")
                            .body(Full::new(Bytes::from(format!("encoding the metrics failed: {e}\n"))))
                            .expect("static response parts are valid")
                    }))
                }
            });
            // Half-closing clients (send the request, shut down writing, read) still get their answer.
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .half_close(true)
                .serve_connection(TokioIo::new(stream), service);
            let _ = tokio::time::timeout(limits.connection_timeout, conn).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "current_thread")]
    async fn a_silent_client_is_dropped_and_the_cap_holds_the_rest() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State::default());
        let limits = Limits {
            header_timeout: Duration::from_millis(300),
            connection_timeout: Duration::from_secs(5),
            max_connections: 1,
        };
        let server = tokio::spawn(serve(listener, state, limits));
        // A client that connects and says nothing holds the only slot ...
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let started = tokio::time::Instant::now();
        let mut asking = tokio::net::TcpStream::connect(addr).await.unwrap();
        asking
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        // ... until its header timeout closes it; then the next is served.
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(3), asking.read_to_string(&mut answer))
            .await
            .expect("answered after the silent client was dropped")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(
            started.elapsed() >= Duration::from_millis(200),
            "{:?}",
            started.elapsed()
        );
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(1), silent.read_to_end(&mut rest))
            .await
            .expect("the silent client was closed")
            .unwrap_or(0);
        assert!(n < 1024, "no answer to no request");
        server.abort();
    }

    /// `GET path`: the answer, and how long its first byte took.
    async fn get(addr: SocketAddr, path: &str) -> (String, Duration) {
        let started = tokio::time::Instant::now();
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut first = [0u8; 1];
        s.read_exact(&mut first).await.unwrap();
        let took = started.elapsed();
        let mut answer = String::from_utf8_lossy(&first).into_owned();
        s.read_to_string(&mut answer).await.unwrap();
        (answer, took)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn healthz_is_answered_while_metrics_are_encoded() {
        let state = Arc::new(State::default());
        // A node with many Services: encoding takes a while (hundreds of ms in a debug build).
        for i in 0..200_000 {
            state
                .metrics
                .verdict
                .get_or_create(&super::super::metrics::VerdictLabels {
                    service: format!("ns/service-{i}"),
                    class: "healthy".into(),
                })
                .set(1);
        }
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        // The server on its own thread, as the daemon runs it.
        let server = Server::start(listener, state.clone(), Limits::default()).unwrap();
        let metrics = tokio::spawn(async move { get(addr, "/metrics").await });
        // Asked once the scrape is being encoded.
        tokio::time::sleep(Duration::from_millis(20)).await;
        let (healthz, healthz_took) = get(addr, "/healthz").await;
        assert!(healthz.starts_with("HTTP/1.1 200"), "{healthz}");
        let (scrape, encoding) = metrics.await.unwrap();
        assert!(
            scrape.len() > 1_000_000,
            "the scrape holds every series: {} bytes",
            scrape.len()
        );
        // The comparison means something only if the encoding took long enough to wait for.
        assert!(
            encoding > Duration::from_millis(100),
            "encoded in {encoding:?}: too fast to tell"
        );
        assert!(
            healthz_took * 4 < encoding,
            "/healthz took {healthz_took:?} while /metrics took {encoding:?} to its first byte: it waited"
        );
        drop(server);
    }

    #[test]
    fn readiness_follows_the_flag() {
        let state = State::default();
        assert_eq!(respond(&state, "/readyz").status(), StatusCode::SERVICE_UNAVAILABLE);
        state.ready.store(true, Ordering::Relaxed);
        assert_eq!(respond(&state, "/readyz").status(), StatusCode::OK);
        assert_eq!(respond(&state, "/healthz").status(), StatusCode::OK);
        assert_eq!(respond(&state, "/metrics").status(), StatusCode::OK);
        assert_eq!(respond(&state, "/nope").status(), StatusCode::NOT_FOUND);
        state.beat();
        assert_eq!(respond(&state, "/healthz").status(), StatusCode::OK);
        let long_ago = crate::kernel::monotonic_ns() - STALLED_AFTER.as_nanos() as u64 - 1_000_000_000;
        state.last_beat_ns.store(long_ago, Ordering::Relaxed);
        let stalled = respond(&state, "/healthz");
        assert_eq!(stalled.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
