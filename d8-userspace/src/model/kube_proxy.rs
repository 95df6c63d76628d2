//! kube-proxy's own health as seen from the node: is it running, does `/healthz` answer, when did it
//! last sync its rules, which mode does it say it runs (kube-proxy's `pkg/proxy/healthcheck/proxy_health.go`
//! for `/healthz`, its metrics port for `sync_proxy_rules_last_timestamp_seconds`).
//!
//! - [`status`] gathers everything into [`KubeProxyStatus`] (the only function here that reads
//!   `/proc` and opens sockets). The endpoints are on loopback of the *current* network namespace:
//!   the caller has entered the node's namespace already.
//! - [`process_running`] scans `<proc>/*/comm` and `cmdline` for a `kube-proxy` process. Run in the
//!   host PID namespace; in another (a pod without `hostPID`) [`status`] does not scan, and
//!   running is unknown unless an endpoint answers (the API's kube-proxy Pod fills it in then).
//! - [`proxy_mode`], [`healthz_status`], [`metrics`]: one GET each, 500 ms timeout; unreachable is
//!   `None`, never an error (kube-proxy may be down: that is what we want to learn).
//! - Pure parts, unit-tested: [`parse_http_response`], [`parse_proxy_mode`], [`parse_prometheus`],
//!   [`Metrics::from_samples`], [`is_kube_proxy`].
//!
//! HTTP is a plain std `TcpStream` GET: the targets are kube-proxy's own loopback listeners (Go
//! `net/http`, plain HTTP, no TLS, no redirects, no proxies), three requests per run. Sending
//! HTTP/1.0 with `Connection: close` makes Go answer without chunking and close the stream, so the
//! whole client is "write request, read to EOF, split head and body"; chunked bodies are decoded
//! anyway in case a proxy in front answers HTTP/1.1. An HTTP client crate would add a dependency tree
//! (TLS, pools) to a node tool for no gain here.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::model::{KubeProxyStatus, ProxyMode};

/// kube-proxy's `metricsBindAddress` default: `/metrics`, `/proxyMode`.
pub const METRICS_ADDR: &str = "127.0.0.1:10249";
/// kube-proxy's `healthzBindAddress` default (it binds 0.0.0.0; loopback reaches it).
pub const HEALTHZ_ADDR: &str = "127.0.0.1:10256";
/// Connect, write and read timeout of each request.
pub const HTTP_TIMEOUT: Duration = Duration::from_millis(500);
/// `/proc`, where processes are listed.
pub const PROC_ROOT: &str = "/proc";
/// Bodies larger than this are cut (kube-proxy's `/metrics` is ~100 KiB).
const MAX_BODY_BYTES: u64 = 8 << 20;

/// An HTTP response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpResponse {
    pub status: u16,
    pub body: String,
}

/// `GET http://<addr><path>`; `None` when the connection fails, times out or the answer is not HTTP.
pub fn http_get(addr: &str, path: &str, timeout: Duration) -> Option<HttpResponse> {
    match fetch(addr, path, timeout) {
        Answer::Response(r) => Some(r),
        Answer::Unreachable | Answer::Unreadable(_) => None,
    }
}

/// What an endpoint did with a GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing listens (or the address is wrong): kube-proxy may be down.
    Unreachable,
    /// Something accepted the connection but answered nothing readable; why, in words
    /// (`did not answer within 500 ms`, `answered what is not HTTP: "..."`).
    Unreadable(String),
    Response(HttpResponse),
}

/// [`http_get`], telling an endpoint that is not there from one that answers nonsense.
pub fn fetch(addr: &str, path: &str, timeout: Duration) -> Answer {
    let Ok(sock) = addr.parse::<SocketAddr>() else {
        return Answer::Unreachable;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&sock, timeout) else {
        return Answer::Unreachable;
    };
    let _ = stream.set_read_timeout(Some(timeout));
    let _ = stream.set_write_timeout(Some(timeout));
    let req = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: d8-trace\r\nConnection: close\r\n\r\n");
    if stream.write_all(req.as_bytes()).is_err() {
        return Answer::Unreadable("closed the connection before the request was sent".into());
    }
    let mut buf = Vec::new();
    // A read timeout part-way still leaves what arrived; parse that.
    let _ = stream.take(MAX_BODY_BYTES).read_to_end(&mut buf);
    match parse_http_response(&buf) {
        Some(r) => Answer::Response(r),
        None if buf.is_empty() => Answer::Unreadable(format!("did not answer within {} ms", timeout.as_millis())),
        None => Answer::Unreadable(format!(
            "answered what is not HTTP: {:?}",
            excerpt(&String::from_utf8_lossy(&buf))
        )),
    }
}

/// The first 40 characters of `text`, for a warning.
fn excerpt(text: &str) -> String {
    text.chars().take(40).collect()
}

/// Splits a raw HTTP/1.x response into status and body (chunked bodies decoded).
pub fn parse_http_response(raw: &[u8]) -> Option<HttpResponse> {
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..head_end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let mut parts = status_line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/") {
        return None;
    }
    let status: u16 = parts.next()?.parse().ok()?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    let body = &raw[head_end + 4..];
    let body = if chunked { dechunk(body) } else { body.to_vec() };
    Some(HttpResponse {
        status,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size_text = std::str::from_utf8(&b[..eol]).unwrap_or("0");
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("0").trim(), 16).unwrap_or(0);
        b = &b[eol + 2..];
        if size == 0 || b.len() < size {
            out.extend_from_slice(&b[..size.min(b.len())]);
            break;
        }
        out.extend_from_slice(&b[..size]);
        b = b.get(size + 2..).unwrap_or(&[]);
    }
    out
}

/// `/proxyMode` body (`iptables`, `ipvs`, `nftables`) -> mode; other text -> `Unknown`.
pub fn parse_proxy_mode(body: &str) -> ProxyMode {
    match body.trim() {
        "iptables" => ProxyMode::Iptables,
        "ipvs" => ProxyMode::Ipvs,
        "nftables" => ProxyMode::Nftables,
        _ => ProxyMode::Unknown,
    }
}

/// kube-proxy's `/proxyMode`; `None` when unreachable or not 200.
pub fn proxy_mode() -> Option<ProxyMode> {
    http_get(METRICS_ADDR, "/proxyMode", HTTP_TIMEOUT)
        .filter(|r| r.status == 200)
        .map(|r| parse_proxy_mode(&r.body))
}

/// The status code of kube-proxy's `/healthz` (200 healthy, 503 not synced or node not eligible).
pub fn healthz_status() -> Option<u16> {
    healthz().map(|h| h.status)
}

/// kube-proxy's `/healthz` answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Healthz {
    pub status: u16,
    /// `lastUpdated` (its last successful sync) as a unix time, when the body says.
    pub last_updated: Option<f64>,
    /// `currentTime`: kube-proxy's own clock when it answered.
    pub current_time: Option<f64>,
}

/// kube-proxy's `/healthz`: status and body; `None` when unreachable.
pub fn healthz() -> Option<Healthz> {
    http_get(HEALTHZ_ADDR, "/healthz", HTTP_TIMEOUT).map(|r| parse_healthz(r.status, &r.body))
}

/// `{"lastUpdated": "...", "currentTime": "...", ...}` (RFC 3339 times); anything else gives the
/// status alone.
pub fn parse_healthz(status: u16, body: &str) -> Healthz {
    let v: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let time = |key: &str| {
        v.as_ref()
            .and_then(|v| v.get(key)?.as_str())
            .and_then(crate::model::k8s::enrich::rfc3339_unix)
    };
    Healthz {
        status,
        last_updated: time("lastUpdated"),
        current_time: time("currentTime"),
    }
}

/// kube-proxy's `/metrics`, parsed; `None` when unreachable or not 200.
pub fn metrics() -> Option<Metrics> {
    http_get(METRICS_ADDR, "/metrics", HTTP_TIMEOUT)
        .filter(|r| r.status == 200)
        .map(|r| Metrics::from_samples(&parse_prometheus(&r.body)))
}

/// One sample of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, name: &str) -> Option<&str> {
        self.labels.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Parses the Prometheus text exposition format (`name{label="v",...} value [timestamp]`; `#`
/// lines skipped). Unreadable lines are skipped: a partial read is better than none here.
pub fn parse_prometheus(text: &str) -> Vec<Sample> {
    text.lines().filter_map(parse_sample).collect()
}

fn parse_sample(line: &str) -> Option<Sample> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (name, labels, rest) = match line.find('{') {
        Some(open) if line[..open].chars().all(|c| !c.is_whitespace()) => {
            let (labels, after) = parse_labels(&line[open + 1..])?;
            (&line[..open], labels, after)
        }
        _ => {
            let (name, rest) = line.split_once(char::is_whitespace)?;
            (name, Vec::new(), rest)
        }
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `a="x",b="y\"z"} rest` -> (labels, rest).
fn parse_labels(s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return Some((labels, after));
        }
        let (key, after) = rest.split_once('=')?;
        let after = after.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key.trim().to_string(), value));
        rest = &after[end + 1..];
    }
}

/// What d8-trace reads from kube-proxy's `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    /// `kubeproxy_sync_proxy_rules_last_timestamp_seconds`: the oldest over IP families (unix s).
    pub last_sync_timestamp_secs: Option<f64>,
    /// `kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds`: the newest over IP families.
    pub last_queued_timestamp_secs: Option<f64>,
    /// `kubernetes_build_info{git_version}`.
    pub version: Option<String>,
    /// `kubeproxy_sync_proxy_rules_iptables_restore_failures_total` summed over families.
    pub iptables_restore_failures_total: Option<f64>,
    /// `kubeproxy_sync_proxy_rules_nftables_sync_failures_total` summed over families.
    pub nftables_sync_failures_total: Option<f64>,
}

impl Metrics {
    pub fn from_samples(samples: &[Sample]) -> Self {
        fn values<'a>(samples: &'a [Sample], name: &'a str) -> impl Iterator<Item = f64> + 'a {
            samples.iter().filter(move |s| s.name == name).map(|s| s.value)
        }
        let sum = |name: &str| values(samples, name).reduce(|a, b| a + b);
        Self {
            last_sync_timestamp_secs: values(samples, "kubeproxy_sync_proxy_rules_last_timestamp_seconds")
                .reduce(f64::min),
            last_queued_timestamp_secs: values(samples, "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds")
                .reduce(f64::max),
            version: samples
                .iter()
                .find(|s| s.name == "kubernetes_build_info")
                .and_then(|s| s.label("git_version"))
                .map(str::to_string),
            iptables_restore_failures_total: sum("kubeproxy_sync_proxy_rules_iptables_restore_failures_total"),
            nftables_sync_failures_total: sum("kubeproxy_sync_proxy_rules_nftables_sync_failures_total"),
        }
    }

    /// Seconds since the last successful sync (`now` in unix seconds); a zero timestamp (never
    /// synced) gives `None`.
    pub fn sync_age_secs(&self, now: f64) -> Option<f64> {
        self.last_sync_timestamp_secs
            .filter(|t| *t > 0.0)
            .map(|t| (now - t).max(0.0))
    }

    /// How long a requested sync has waited: `queued - last` when positive, else 0.
    pub fn sync_pending_secs(&self) -> Option<f64> {
        match (self.last_queued_timestamp_secs, self.last_sync_timestamp_secs) {
            (Some(q), Some(l)) => Some((q - l).max(0.0)),
            _ => None,
        }
    }
}

/// A process is kube-proxy: its `comm` is `kube-proxy`, or its `argv[0]`'s base name is.
pub fn is_kube_proxy(comm: &str, cmdline: &[u8]) -> bool {
    if comm.trim() == "kube-proxy" {
        return true;
    }
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or(&[]);
    let argv0 = String::from_utf8_lossy(argv0);
    argv0.rsplit('/').next().is_some_and(|base| base == "kube-proxy")
}

/// Scans `<proc_root>/<pid>/{comm,cmdline}`. `None` when `proc_root` cannot be listed.
pub fn process_running(proc_root: &Path) -> Option<bool> {
    let entries = std::fs::read_dir(proc_root).ok()?;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit())) {
            continue;
        }
        let dir = entry.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "kube-proxy" {
            return Some(true);
        }
        // comm is empty only for vanished processes; cmdline catches renamed threads.
        let cmdline = std::fs::read(dir.join("cmdline")).unwrap_or_default();
        if is_kube_proxy(&comm, &cmdline) {
            return Some(true);
        }
    }
    Some(false)
}

/// Everything above, into the model's [`KubeProxyStatus`]. `rules_present` is left `false`: the
/// rule readers (`rules::read_node`) fill it. `mode` is `/proxyMode`'s answer or `Unknown`. An
/// endpoint that accepts the connection but answers nonsense (not HTTP, nothing in time, no
/// Prometheus samples, an unknown mode) counts as kube-proxy running, tells nothing else, and is
/// named in `problems`.
pub fn status() -> KubeProxyStatus {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let mut problems = Vec::new();
    let mut answered = false;
    let mut get = |addr: &str, path: &str| match fetch(addr, path, HTTP_TIMEOUT) {
        Answer::Unreachable => None,
        Answer::Unreadable(why) => {
            answered = true;
            problems.push(format!("kube-proxy's {path} on {addr} {why}"));
            None
        }
        Answer::Response(r) => {
            answered = true;
            Some(r)
        }
    };
    let mode_answer = get(METRICS_ADDR, "/proxyMode");
    let health_answer = get(HEALTHZ_ADDR, "/healthz");
    let metrics_answer = get(METRICS_ADDR, "/metrics");
    let mode = mode_answer.filter(|r| r.status == 200).map(|r| {
        let mode = parse_proxy_mode(&r.body);
        if mode == ProxyMode::Unknown {
            problems.push(format!(
                "kube-proxy's /proxyMode on {METRICS_ADDR} answered {:?}, not a proxy mode",
                excerpt(r.body.trim())
            ));
        }
        mode
    });
    let health = health_answer.map(|r| parse_healthz(r.status, &r.body));
    let metrics = metrics_answer.filter(|r| r.status == 200).map(|r| {
        let samples = parse_prometheus(&r.body);
        if samples.is_empty() {
            problems.push(format!(
                "kube-proxy's /metrics on {METRICS_ADDR} answered no Prometheus samples: {:?}",
                excerpt(r.body.trim())
            ));
        }
        Metrics::from_samples(&samples)
    });
    let healthz = health.as_ref().map(|h| h.status);
    // In another PID namespace (a pod without hostPID) /proc shows none of the node's processes:
    // unknown, not "not running"; the API's status of the kube-proxy Pod then tells.
    let process = match crate::kernel::host::in_host_pid_namespace() {
        Some(false) => None,
        _ => process_running(Path::new(PROC_ROOT)),
    };
    // An endpoint that answers (anything) proves it runs even when /proc shows another PID
    // namespace.
    let running = if answered { Some(true) } else { process };
    KubeProxyStatus {
        mode: mode.unwrap_or_default(),
        running,
        version: metrics.as_ref().and_then(|m| m.version.clone()),
        healthz_ok: healthz.map(|c| c == 200),
        // Metrics first; without them `/healthz`'s lastUpdated, aged by kube-proxy's own clock.
        last_sync_age_secs: metrics.as_ref().and_then(|m| m.sync_age_secs(now)).or_else(|| {
            let h = health.as_ref()?;
            Some((h.current_time? - h.last_updated?).max(0.0))
        }),
        rules_present: false,
        healthz_status: healthz,
        sync_pending_secs: metrics.as_ref().and_then(Metrics::sync_pending_secs),
        last_sync_unix: metrics
            .as_ref()
            .and_then(|m| m.last_sync_timestamp_secs)
            .filter(|t| *t > 0.0)
            .or_else(|| health.as_ref()?.last_updated),
        problems,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthz_body_gives_the_last_sync_by_kube_proxys_clock() {
        let body =
            r#"{"lastUpdated": "2026-12-06T13:55:00Z","currentTime": "2026-12-06T14:00:00Z", "nodeEligible": true}"#;
        let h = parse_healthz(503, body);
        assert_eq!(h.status, 503);
        assert_eq!(h.current_time.unwrap() - h.last_updated.unwrap(), 300.0);
        let h = parse_healthz(200, "ok");
        assert_eq!((h.status, h.last_updated, h.current_time), (200, None, None));
    }

    const METRICS_133: &str = r#"# HELP kubeproxy_sync_proxy_rules_last_timestamp_seconds [ALPHA] The last time proxy rules were successfully synced
# TYPE kubeproxy_sync_proxy_rules_last_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv4"} 1.7466e+09
kubeproxy_sync_proxy_rules_last_timestamp_seconds{ip_family="IPv6"} 1.746599990e+09
# TYPE kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds gauge
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv4"} 1.7466001e+09
kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds{ip_family="IPv6"} 1.746599990e+09
kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv4"} 2
kubeproxy_sync_proxy_rules_iptables_restore_failures_total{ip_family="IPv6"} 1
kubeproxy_sync_proxy_rules_duration_seconds_bucket{ip_family="IPv4",le="+Inf"} 12
# HELP kubernetes_build_info [ALPHA] A metric with a constant '1' value labeled by major, minor, git version, git commit, git tree state, build date, Go version, and compiler from which Kubernetes was built, and platform on which it is running.
# TYPE kubernetes_build_info gauge
kubernetes_build_info{build_date="2025-04-22T16:03:48Z",compiler="gc",git_commit="abc",git_tree_state="clean",git_version="v1.33.1",go_version="go1.24.2",major="1",minor="33",platform="linux/amd64"} 1
"#;

    #[test]
    fn prometheus_text_samples_and_labels() {
        let s = parse_prometheus(METRICS_133);
        assert_eq!(s.len(), 8);
        assert_eq!(s[0].name, "kubeproxy_sync_proxy_rules_last_timestamp_seconds");
        assert_eq!(s[0].label("ip_family"), Some("IPv4"));
        assert_eq!(s[0].value, 1.7466e9);
        assert_eq!(s[6].value, 12.0);
        let odd = parse_prometheus("m{a=\"x\\\"y,}\",b=\"2\"} 3 1700000000000\nplain 4\nbroken{a=\"x} 1\n");
        assert_eq!(odd.len(), 2);
        assert_eq!(odd[0].label("a"), Some("x\"y,}"));
        assert_eq!(odd[0].value, 3.0);
        assert_eq!(odd[1].name, "plain");
    }

    #[test]
    fn metrics_give_sync_age_pending_and_version() {
        let m = Metrics::from_samples(&parse_prometheus(METRICS_133));
        // Oldest family counts.
        assert_eq!(m.last_sync_timestamp_secs, Some(1.746599990e9));
        assert_eq!(m.sync_age_secs(1.746600000e9), Some(10.0));
        assert_eq!(m.sync_pending_secs(), Some(110.0));
        assert_eq!(m.version.as_deref(), Some("v1.33.1"));
        assert_eq!(m.iptables_restore_failures_total, Some(3.0));
        assert_eq!(m.nftables_sync_failures_total, None);
        // Pre-1.33: no ip_family label; never synced: timestamp 0.
        let old = Metrics::from_samples(&parse_prometheus(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds 0\n",
        ));
        assert_eq!(old.sync_age_secs(5.0), None);
    }

    #[test]
    fn http_responses_plain_and_chunked() {
        let r = parse_http_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\niptables").unwrap();
        assert_eq!(
            r,
            HttpResponse {
                status: 200,
                body: "iptables".to_string()
            }
        );
        let r = parse_http_response(
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"he\r\n6\r\nalthy\"\r\n1\r\n}\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(r.status, 503);
        assert_eq!(r.body, "{\"healthy\"}");
        assert_eq!(parse_http_response(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_http_response(b"HTTP/1.0 200 OK\r\n"), None);
    }

    #[test]
    fn proxy_mode_bodies() {
        assert_eq!(parse_proxy_mode("iptables"), ProxyMode::Iptables);
        assert_eq!(parse_proxy_mode("nftables\n"), ProxyMode::Nftables);
        assert_eq!(parse_proxy_mode("ipvs"), ProxyMode::Ipvs);
        assert_eq!(parse_proxy_mode("kernelspace"), ProxyMode::Unknown);
    }

    #[test]
    fn kube_proxy_process_recognised() {
        assert!(is_kube_proxy("kube-proxy\n", b""));
        assert!(is_kube_proxy(
            "",
            b"/usr/local/bin/kube-proxy\0--config=/var/lib/kube-proxy/config.conf\0"
        ));
        assert!(!is_kube_proxy("bash", b"/bin/bash\0-c\0kube-proxy\0"));
        assert!(!is_kube_proxy("kube-proxy-helper", b"kube-proxy-helper\0"));
    }

    #[test]
    fn process_scan_over_a_fake_proc() {
        let dir = std::env::temp_dir().join(format!("d8-kp-proc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("1")).unwrap();
        std::fs::write(dir.join("1/comm"), "systemd\n").unwrap();
        std::fs::create_dir_all(dir.join("self")).unwrap();
        assert_eq!(process_running(&dir), Some(false));
        std::fs::create_dir_all(dir.join("4242")).unwrap();
        std::fs::write(dir.join("4242/comm"), "kube-proxy\n").unwrap();
        assert_eq!(process_running(&dir), Some(true));
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(process_running(&dir), None);
    }

    #[test]
    fn http_get_against_a_loopback_server() {
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 1024];
            let n = s.read(&mut buf).unwrap();
            let req = String::from_utf8_lossy(&buf[..n]).to_string();
            s.write_all(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nnftables")
                .unwrap();
            req
        });
        let r = http_get(&addr, "/proxyMode", HTTP_TIMEOUT).unwrap();
        assert_eq!(parse_proxy_mode(&r.body), ProxyMode::Nftables);
        assert!(server.join().unwrap().starts_with("GET /proxyMode HTTP/1.0\r\n"));
        // Something that answers nonsense, or nothing in time, is told from nothing listening.
        for (reply, want) in [
            (&b"SSH-2.0-OpenSSH_9.6\r\n"[..], "answered what is not HTTP"),
            (&b""[..], "did not answer within"),
        ] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap().to_string();
            let server = std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                s.write_all(reply).unwrap();
                // Held open past the client's timeout.
                std::thread::sleep(HTTP_TIMEOUT + Duration::from_millis(200));
            });
            match fetch(&addr, "/metrics", HTTP_TIMEOUT) {
                Answer::Unreadable(why) => assert!(why.starts_with(want), "{why}"),
                other => panic!("{other:?}"),
            }
            server.join().unwrap();
        }
        // Nothing listening: None, quickly.
        let closed = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .to_string();
        assert_eq!(http_get(&closed, "/healthz", HTTP_TIMEOUT), None);
        assert_eq!(fetch(&closed, "/healthz", HTTP_TIMEOUT), Answer::Unreachable);
    }
}
