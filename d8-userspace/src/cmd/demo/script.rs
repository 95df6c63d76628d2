//! The demo's cluster and its incident script: five short phases, each narrated on stderr, each
//! leaving its fault in place for the rest of the run (no fault is undone, so the rules and API
//! at the end are the ones every failing flow met; see the module doc of `demo`).
//!
//! | phase | what happens | Service | expected verdict |
//! |---|---|---|---|
//! | 1 | a client pod calls web, api and orders; and cart, dual-stack, over IPv4 and IPv6: kube-proxy's IPv6 proxier has not programmed cart | web, api, orders; cart | `healthy`; cart `kube_proxy_rules_missing`, naming IPv6 |
//! | 2 | pod api-2 is deleted; the API agrees, kube-proxy's rules still DNAT to it | default/api | `stale_endpoint` |
//! | 3 | orders' only pod fails readiness: kube-proxy REJECTs | default/orders | `no_endpoints` |
//! | 4 | an external client hits shop's NodePort; shop is externalTrafficPolicy=Local and its only pod runs on another node: kube-proxy DROPs | default/shop | `etp_local_no_local_endpoints` |
//! | 5 | kubelet probes web's pods (connect, then RST) while the client keeps calling web | default/web | `healthy`, probes `probe_rst` (benign) |

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::lab::{
    self, ClusterSpec, HttpOutcome, Lab, ListenerKind, PodSpec, ServiceSpec, TcpOutcome, TrafficPolicy, spec::ipv6_twin,
};
use crate::model::{Protocol, ServiceRef};

/// ClusterIP of default/web.
pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
/// ClusterIP of default/api.
pub const API_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 11);
/// ClusterIP of default/orders.
pub const ORDERS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 12);
/// ClusterIP of default/shop.
pub const SHOP_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 13);
/// IPv4 ClusterIP of default/cart, the dual-stack Service (its IPv6 one is the `ipv6_twin`).
pub const CART_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 14);
/// NodePort of default/shop.
pub const SHOP_NODE_PORT: u16 = 30080;
/// The other node shop's pod runs on.
pub const OTHER_NODE: &str = "d8lab-node-2";

/// Number of phases.
pub const PHASES: usize = 5;

/// How long the script waits for the tracer to show a first flow before giving up.
const TRACER_WAIT: Duration = Duration::from_secs(15);
/// Timeout of requests that are expected to succeed.
const OK_TIMEOUT: Duration = Duration::from_secs(2);
/// Timeout of requests that are expected to fail (the trace decides how they failed).
const FAIL_TIMEOUT: Duration = Duration::from_millis(800);
/// Timeout of attempts that nothing answers (an untranslated ClusterIP routed to a dead end).
const SILENT_TIMEOUT: Duration = Duration::from_millis(400);
/// Pause between requests of one phase.
const PACE: Duration = Duration::from_millis(150);
/// kubelet's probe period in phase 5 (kubelet's default is 10 s; the demo is in a hurry).
const PROBE_PERIOD: Duration = Duration::from_millis(300);
/// How long phase 5 runs: longer than the trace's reply timeout, so the failed flows of phase 4
/// have timed out when the trace stops.
pub const LAST_PHASE: Duration = Duration::from_millis(2_600);

/// The demo's Services, in the order they are reported.
pub fn services() -> Vec<ServiceRef> {
    ["web", "api", "orders", "shop", "cart"]
        .iter()
        .map(|n| ServiceRef {
            namespace: "default".into(),
            name: (*n).into(),
        })
        .collect()
}

/// The demo cluster: five Services, seven pods (one on another node), HTTP servers everywhere,
/// kubelet probes on web's pods. The node is dual-stack; cart is its one dual-stack Service, the
/// others are IPv4 only (`single_stack`), so their reports read as on an IPv4 cluster.
pub fn spec() -> ClusterSpec {
    let http = |svc: &str, name: &str, ip: Ipv4Addr| {
        PodSpec::new("default", name, ip)
            .label("app", svc)
            .listen(8080, ListenerKind::Http)
    };
    let v4 = |name: &str, vip: Ipv4Addr| {
        ServiceSpec::new("default", name, vip)
            .port("http", 80, 8080, Protocol::Tcp)
            .single_stack()
    };
    ClusterSpec::new()
        .dual_stack()
        .service(v4("web", WEB_VIP))
        .service(v4("api", API_VIP))
        .service(v4("orders", ORDERS_VIP))
        .service(
            ServiceSpec::new("default", "shop", SHOP_VIP)
                .node_port("http", 80, 8080, Protocol::Tcp, SHOP_NODE_PORT)
                .external_policy(TrafficPolicy::Local)
                .single_stack(),
        )
        .service(ServiceSpec::new("default", "cart", CART_VIP).port("http", 80, 8080, Protocol::Tcp))
        .pod(http("web", "web-1", Ipv4Addr::new(10, 244, 1, 11)).tcp_probes(8080))
        .pod(http("web", "web-2", Ipv4Addr::new(10, 244, 1, 12)).tcp_probes(8080))
        .pod(http("api", "api-1", Ipv4Addr::new(10, 244, 1, 21)))
        .pod(http("api", "api-2", Ipv4Addr::new(10, 244, 1, 22)))
        .pod(http("orders", "orders-1", Ipv4Addr::new(10, 244, 1, 31)))
        .pod(http("shop", "shop-1", Ipv4Addr::new(10, 244, 2, 41)).on_node(OTHER_NODE))
        .pod(http("cart", "cart-1", Ipv4Addr::new(10, 244, 1, 51)))
}

/// What the script shares with the demo's main thread.
pub struct Control {
    /// Set by the main thread when the trace ended early (Ctrl-C, an error): stop at once.
    pub stop: AtomicBool,
}

impl Control {
    pub fn new() -> Self {
        Self {
            stop: AtomicBool::new(false),
        }
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Waits up to `d` for the stop flag.
    pub fn wait_stop(&self, d: Duration) {
        self.pause(d);
    }

    /// Waits `d` unless told to stop; returns false when stopped.
    fn pause(&self, d: Duration) -> bool {
        let end = Instant::now() + d;
        while !self.stopped() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            std::thread::sleep(left.min(Duration::from_millis(50)));
        }
        false
    }
}

impl Default for Control {
    fn default() -> Self {
        Self::new()
    }
}

/// Why the script ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// Every phase ran.
    Done,
    /// Told to stop.
    Stopped,
}

/// The script failed: a lab change did not apply, or the tracer never showed a flow.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the lab")]
    Lab(#[from] lab::Error),
    #[error("the tracer showed no flow within {}s of the first requests", TRACER_WAIT.as_secs())]
    TracerSilent,
}

/// Prints one narration line on stderr.
pub fn say(text: &str) {
    eprintln!("d8-trace demo: {text}");
}

fn phase(n: usize, title: &str) {
    say(&format!("phase {n}/{PHASES}: {title}"));
}

fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// One HTTP GET from the client pod; says so when a request meant to work did not.
fn get(lab: &Lab, vip: Ipv4Addr, timeout: Duration) -> Result<HttpOutcome, lab::Error> {
    lab::http_get(lab.client_ns(), addr(vip, 80), "/", timeout)
}

fn expect_ok(lab: &Lab, vip: Ipv4Addr) -> Result<(), lab::Error> {
    let out = get(lab, vip, OK_TIMEOUT)?;
    if out.status() != Some(200) {
        say(&format!("  (unexpected: {vip}:80 did not answer: {out:?})"));
    }
    Ok(())
}

/// Plays the incident on `lab`. `first_flow` receives a message when the tracer printed its
/// first flow line: phase 1 repeats its first request until then, so no phase runs untraced.
pub fn play(lab: &mut Lab, ctl: &Control, first_flow: mpsc::Receiver<()>) -> Result<Ending, Error> {
    let node_ip = lab.node_ip();

    phase(
        1,
        "healthy traffic from a client pod to web, api, orders; cart over both families",
    );
    lab.flush_service_ipv6_rules("default", "cart")?;
    say("  default/cart is dual-stack; kube-proxy's IPv6 proxier has not programmed it");
    let waiting_since = Instant::now();
    loop {
        expect_ok(lab, WEB_VIP)?;
        if first_flow.recv_timeout(Duration::from_millis(300)).is_ok() {
            break;
        }
        if ctl.stopped() {
            return Ok(Ending::Stopped);
        }
        if waiting_since.elapsed() > TRACER_WAIT {
            return Err(Error::TracerSilent);
        }
    }
    for round in 0..3 {
        for vip in [WEB_VIP, API_VIP, ORDERS_VIP] {
            expect_ok(lab, vip)?;
            if !ctl.pause(PACE) {
                return Ok(Ending::Stopped);
            }
        }
        // cart, twice: over IPv4 it answers; over IPv6 nothing translates its ClusterIP, and the
        // attempt's wait stands in for the pause.
        if round < 2 {
            expect_ok(lab, CART_VIP)?;
            let v6 = SocketAddr::new(IpAddr::V6(ipv6_twin(CART_VIP)), 80);
            let out = lab::tcp_connect(lab.client_ns(), v6, SILENT_TIMEOUT)?;
            if out.is_connected() {
                say(&format!("  (unexpected: default/cart answered over IPv6: {out:?})"));
            }
        }
    }

    phase(2, "a pod disappears behind its Service (stale endpoint)");
    lab.delete_from_api("api-2")?;
    lab.delete_pod("api-2")?;
    say("  deleted pod default/api-2 (10.244.1.22); the API agrees,");
    say("  but kube-proxy's rules still DNAT default/api to it");
    // Until some requests went to api-2 (iptables picks a backend at random), at most 12.
    let mut lost = 0;
    for i in 0..12 {
        match get(lab, API_VIP, FAIL_TIMEOUT)? {
            HttpOutcome::Response { .. } => {}
            HttpOutcome::Failed(_) => lost += 1,
        }
        if lost >= 3 && i >= 5 || !ctl.pause(PACE) {
            break;
        }
    }
    if ctl.stopped() {
        return Ok(Ending::Stopped);
    }
    say(&format!("  {lost} requests to default/api got no answer"));

    phase(3, "a Service loses its endpoints (REJECT)");
    lab.set_ready_keeping_faults("orders-1", false)?;
    say("  orders-1, the only pod of default/orders, fails readiness");
    for _ in 0..3 {
        let out = get(lab, ORDERS_VIP, FAIL_TIMEOUT)?;
        if !matches!(out, HttpOutcome::Failed(TcpOutcome::Refused)) {
            say(&format!("  (unexpected: default/orders answered {out:?})"));
        }
        if !ctl.pause(PACE) {
            return Ok(Ending::Stopped);
        }
    }

    phase(4, "ETP=Local NodePort, no local endpoint here (DROP)");
    say(&format!(
        "  an external client calls default/shop on {node_ip}:{SHOP_NODE_PORT};"
    ));
    say(&format!("  its only pod runs on {OTHER_NODE}"));
    for _ in 0..2 {
        let out = lab::tcp_connect(lab.external_ns(), addr(node_ip, SHOP_NODE_PORT), FAIL_TIMEOUT)?;
        if out.is_connected() {
            say(&format!("  (unexpected: the NodePort answered {out:?})"));
        }
        if !ctl.pause(PACE) {
            return Ok(Ending::Stopped);
        }
    }

    phase(5, "kubelet probes (connect, RST) beside healthy traffic");
    let prober = lab.start_prober(PROBE_PERIOD);
    let start = Instant::now();
    while start.elapsed() < LAST_PHASE {
        expect_ok(lab, WEB_VIP)?;
        if !ctl.pause(Duration::from_millis(250)) {
            break;
        }
    }
    drop(prober);
    if ctl.stopped() {
        return Ok(Ending::Stopped);
    }
    Ok(Ending::Done)
}
