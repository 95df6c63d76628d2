//! One scenario per verdict class (ARCHITECTURE.md, "The verdict classes"), each on its own small lab, in iptables and
//! in nftables mode: `d8-trace --svc ... --netns <node> -o json` traces while the scenario's traffic
//! flows, and the test asserts the flow classes, the root cause, the backend and the evidence (the
//! exact rule or chain kube-proxy wrote, the ICMP/RST/drop the kernel saw, what the API says).
//! `d8-trace explain` is checked on the same labs: classes from rules and API alone, no flows.
//!
//! Each scenario is a function taking the proxy mode, called by one `#[test]` per mode. Traces run
//! 3-5 s; traffic is bounded in count and timeouts and starts once the tracer says it is attached.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::{Duration, Instant},
};

use d8_tests::{
    report::{Flow, Report},
    run::{Trace, run_to_end},
};
use d8_trace::{
    lab::{
        self, ClusterSpec, HttpOutcome, Lab, ListenerKind, PodSpec, ServiceSpec, TcpOutcome, TrafficPolicy, UdpOutcome,
    },
    model::{Protocol, ProxyMode},
};

use crate::family::Family;

pub(crate) const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub(crate) const WEB_1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
pub(crate) const WEB_2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);
/// A pod on another node: exists in the rules and the API only.
const REMOTE_1: Ipv4Addr = Ipv4Addr::new(10, 244, 2, 11);
/// Outside the node link's subnet, so the external client routes it through the node.
const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// The lab's external client (`lab.external_ns()`).
const EXTERNAL_CLIENT: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 100);
pub(crate) const NODE_PORT: u16 = 30080;
/// The lab node's address on the link to the external client (kube-proxy's REJECTs come from it).
const NODE_IP: Ipv4Addr = Ipv4Addr::new(172, 31, 0, 2);

/// Connect timeout for attempts expected to succeed or be refused.
pub(crate) const T: Duration = Duration::from_secs(2);
/// Connect timeout for attempts expected to get no answer.
pub(crate) const SILENT: Duration = Duration::from_millis(600);
/// Per-attempt timeout and time budget of the loops that need an attempt to each of two backends
/// picked at random: 12 silent attempts in a row (odds 1 in 4096) before both were hit.
const PICK_TIMEOUT: Duration = Duration::from_millis(300);
const PICK_BUDGET: Duration = Duration::from_millis(3600);

// ---- lab specs --------------------------------------------------------------------------------

/// `default/web`: ClusterIP 10.96.0.10:80 -> 8080 (named port `http`) over HTTP pods web-1, web-2.
pub(crate) fn web_spec(pods: usize) -> ClusterSpec {
    let svc = ServiceSpec::new("default", "web", VIP).port("http", 80, 8080, Protocol::Tcp);
    let mut spec = ClusterSpec::new().service(svc);
    for (name, ip) in [("web-1", WEB_1), ("web-2", WEB_2)].into_iter().take(pods) {
        spec = spec.pod(
            PodSpec::new("default", name, ip)
                .label("app", "web")
                .listen(8080, ListenerKind::Http),
        );
    }
    spec
}

/// `default/empty`: a ClusterIP Service whose selector matches no pod (one unrelated pod runs).
pub(crate) fn empty_spec(protocol: Protocol) -> ClusterSpec {
    let svc = ServiceSpec::new("default", "empty", VIP)
        .port("p", 80, 8080, protocol)
        .selector("app", "nobody");
    ClusterSpec::new().service(svc).pod(
        PodSpec::new("default", "other-1", WEB_1)
            .label("app", "other")
            .listen(8080, ListenerKind::Http),
    )
}

/// `default/shop`: NodePort 30080 and external IP 203.0.113.10:80, externalTrafficPolicy=Local, its
/// only endpoint on another node.
pub(crate) fn etp_local_spec() -> ClusterSpec {
    let svc = ServiceSpec::new("default", "shop", VIP)
        .node_port("http", 80, 8080, Protocol::Tcp, NODE_PORT)
        .external_ip(EXTERNAL_IP)
        .external_policy(TrafficPolicy::Local);
    ClusterSpec::new().service(svc).pod(
        PodSpec::new("default", "shop-1", REMOTE_1)
            .label("app", "shop")
            .listen(8080, ListenerKind::Http)
            .on_node("node-b"),
    )
}

/// `default/dns`: UDP ClusterIP 10.96.0.10:53 -> 5353 over UDP echo pods dns-1 (and dns-2).
fn dns_spec(pods: usize) -> ClusterSpec {
    let svc = ServiceSpec::new("default", "dns", VIP).port("dns", 53, 5353, Protocol::Udp);
    let mut spec = ClusterSpec::new().service(svc);
    for (name, ip) in [("dns-1", WEB_1), ("dns-2", WEB_2)].into_iter().take(pods) {
        spec = spec.pod(
            PodSpec::new("default", name, ip)
                .label("app", "dns")
                .listen(5353, ListenerKind::UdpEcho),
        );
    }
    spec
}

// ---- running d8-trace against a lab -------------------------------------------------------------

/// Where the API facts come from.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Api {
    /// `--k8s-snapshot` of the lab's API view, written just before the run.
    Snapshot,
    /// `--no-k8s`.
    None,
}

/// A lab and the snapshot file it writes for `--k8s-snapshot`.
pub(crate) struct Scenario {
    pub(crate) lab: Lab,
    snapshot: PathBuf,
    /// The family its traces are narrowed to (`--family`), and its addresses.
    pub(crate) family: Family,
}

impl Scenario {
    pub(crate) fn up(spec: ClusterSpec, mode: ProxyMode) -> Self {
        Self::up_in(spec, mode, Family::V4)
    }

    /// A lab for `spec` as `family` needs it (dual-stack unless [`Family::V4`]); its traces add
    /// the family's `--family`.
    pub(crate) fn up_in(spec: ClusterSpec, mode: ProxyMode, family: Family) -> Self {
        d8_tests::require_root();
        let _ = lab::cleanup_stale();
        let lab = Lab::up(family.spec(spec), mode).unwrap_or_else(|e| panic!("lab up ({mode:?}): {e}"));
        let snapshot = std::env::temp_dir().join(format!("{}snapshot.json", lab.prefix()));
        Self { lab, snapshot, family }
    }

    fn mode(&self) -> ProxyMode {
        self.lab.mode()
    }

    /// Selection flags: `--netns <node>` and the API source (the snapshot is rewritten from the
    /// lab's current API view).
    fn selection(&self, api: Api) -> Vec<String> {
        let mut args = vec!["--netns".to_string(), self.lab.node_ns().to_string()];
        match api {
            Api::Snapshot => {
                self.lab
                    .write_snapshot(&self.snapshot)
                    .expect("writing the lab's API snapshot");
                args.extend(["--k8s-snapshot".to_string(), self.snapshot.display().to_string()]);
            }
            Api::None => args.push("--no-k8s".to_string()),
        }
        // `D8_E2E_RULES_FROM=tools|kernel` runs every scenario with that rule reader (the
        // default, `auto`, reads nftables mode from the kernel).
        if let Ok(from) = std::env::var("D8_E2E_RULES_FROM") {
            args.extend(["--rules-from".to_string(), from]);
        }
        args
    }

    /// Traces `svc` (`NS/NAME[:PORT]`, or `IP:PORT[/PROTO]` for `--dest`) for `secs` seconds
    /// while `traffic` runs (it starts once the hooks are attached).
    ///
    /// In iptables mode every trace also writes `--pcap` (unless the test asks for its own file),
    /// and the capture must agree with the report ([`crate::pcap::agrees_with_report`]): so every
    /// verdict class's capture is checked on each hook set the scenarios run on (the host's
    /// netfilter set, the guests' TC sets), while nftables mode keeps proving the default path,
    /// with no capture.
    pub(crate) fn trace(&self, svc: &str, api: Api, secs: u64, extra: &[&str], traffic: impl FnOnce(&Lab)) -> Run {
        let secs = secs.to_string();
        let mut args: Vec<String> = [target_flag(svc), svc, "-o", "json", "--duration", &secs]
            .map(String::from)
            .to_vec();
        args.extend(self.selection(api));
        args.extend(self.family.trace_flags().iter().map(|s| s.to_string()));
        args.extend(extra.iter().map(|s| s.to_string()));
        let capture = (self.mode() == ProxyMode::Iptables && !extra.contains(&"--pcap"))
            .then(|| std::env::temp_dir().join(format!("{}capture.pcapng", self.lab.prefix())));
        if let Some(file) = &capture {
            let _ = std::fs::remove_file(file);
            args.extend(["--pcap".to_string(), file.display().to_string()]);
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let trace = Trace::start(&argv);
        traffic(&self.lab);
        let done = trace.finish(Duration::from_secs(30));
        let run = Run::new(
            self.mode(),
            self.family,
            &argv,
            done.report(),
            &done.stdout,
            &done.stderr,
        );
        if let Some(file) = capture {
            crate::pcap::agrees_with_report(&run, &file);
            let _ = std::fs::remove_file(file);
        }
        run
    }

    /// `d8-trace explain --svc SVC -o json` with the lab's API view.
    pub(crate) fn explain(&self, svc: &str) -> Run {
        let mut args: Vec<String> = ["explain", target_flag(svc), svc, "-o", "json"]
            .map(String::from)
            .to_vec();
        args.extend(self.selection(Api::Snapshot));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let done = run_to_end(&argv);
        let report = done.report();
        Run::new(self.mode(), self.family, &argv, report, &done.stdout, &done.stderr)
    }

    /// `d8-trace explain --svc SVC -o runbook` with the lab's API view: the runbook block (YAML).
    pub(crate) fn explain_runbook(&self, svc: &str) -> String {
        let mut args: Vec<String> = ["explain", target_flag(svc), svc, "-o", "runbook"]
            .map(String::from)
            .to_vec();
        args.extend(self.selection(Api::Snapshot));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let done = run_to_end(&argv);
        assert_eq!(done.status.code(), Some(0), "{}", done.stderr);
        done.stdout
    }

    /// `d8-trace explain` of `target` that must fail: its exit code and stderr.
    pub(crate) fn explain_refused(&self, target: &str) -> (Option<i32>, String) {
        let mut args: Vec<String> = ["explain", target_flag(target), target, "-o", "json"]
            .map(String::from)
            .to_vec();
        args.extend(self.selection(Api::Snapshot));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let done = run_to_end(&argv);
        (done.status.code(), done.stderr)
    }
}

/// `--dest` for an address (`IP:PORT[/PROTO]`), `--svc` for a Service (`NS/NAME[:PORT]`).
fn target_flag(target: &str) -> &'static str {
    let addr = target.split('/').next().unwrap_or_default();
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        "--dest"
    } else {
        "--svc"
    }
}

impl Drop for Scenario {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.snapshot);
    }
}

/// One finished run: the report, and everything printed, for failure messages.
pub(crate) struct Run {
    pub(crate) report: Report,
    pub(crate) context: String,
    /// The family of the addresses [`Self::at`] and [`Self::endpoint`] name.
    pub(crate) family: Family,
}

impl Run {
    fn new(mode: ProxyMode, family: Family, argv: &[&str], report: Report, stdout: &str, stderr: &str) -> Self {
        let context = format!(
            "{mode:?} mode, {family:?}, d8-trace {}\n--- stdout:\n{stdout}\n--- stderr:\n{stderr}",
            argv.join(" ")
        );
        // D8_SCENARIO_DUMP=1 (with --nocapture) shows every report, passing or not.
        if std::env::var_os("D8_SCENARIO_DUMP").is_some() {
            eprintln!("{context}");
        }
        Self {
            report,
            context,
            family,
        }
    }

    /// `v4`'s address in the run's family with `port`, as the report writes it.
    pub(crate) fn at(&self, v4: Ipv4Addr, port: u16) -> String {
        self.family.at(v4, port)
    }

    pub(crate) fn root(&self) -> &str {
        self.report
            .root_cause
            .as_ref()
            .map(|r| r.class.as_str())
            .unwrap_or("<none>")
    }

    pub(crate) fn assert_root(&self, class: &str) {
        assert_eq!(self.root(), class, "root cause; {}", self.context);
    }

    /// Flows to `frontend` (`ip:port`); at least one.
    pub(crate) fn flows_to(&self, frontend: &str) -> Vec<&Flow> {
        let found: Vec<&Flow> = self
            .report
            .flows
            .iter()
            .filter(|f| f.frontend.as_deref() == Some(frontend))
            .collect();
        assert!(!found.is_empty(), "no flow to {frontend}; {}", self.context);
        found
    }

    pub(crate) fn class_of<'a>(&self, f: &'a Flow) -> &'a str {
        f.class.as_deref().unwrap_or("<none>")
    }

    /// The evidence line containing every one of `needles`, of the given type.
    pub(crate) fn evidence(&self, kind: &str, needles: &[&str]) -> String {
        self.report
            .evidence
            .iter()
            .find(|e| e.kind == kind && needles.iter().all(|n| e.content.contains(n)))
            .map(|e| e.content.clone())
            .unwrap_or_else(|| panic!("no {kind} evidence containing all of {needles:?}; {}", self.context))
    }

    pub(crate) fn no_evidence(&self, needle: &str) {
        if let Some(e) = self.report.evidence.iter().find(|e| e.content.contains(needle)) {
            panic!(
                "evidence mentions {needle:?}: [{}] {}; {}",
                e.kind, e.content, self.context
            );
        }
    }

    /// The report's endpoint `ip:port` (`ip` in the run's family).
    pub(crate) fn endpoint(&self, ip: Ipv4Addr, port: u16) -> &d8_tests::report::Endpoint {
        let ip = self.family.ip(ip).to_string();
        self.report
            .endpoints
            .iter()
            .find(|e| e.ip == ip && e.port == port)
            .unwrap_or_else(|| panic!("no endpoint {ip}:{port} in the report; {}", self.context))
    }
}

// ---- names kube-proxy gives the lab's rules -------------------------------------------------------

/// The rule name the model gives an endpoint: `KUBE-SEP-<hash>` (iptables) or the nftables
/// `endpoint-<hash>-ns/svc/proto/port__ip/port` chain.
fn endpoint_chain(mode: ProxyMode, spec: &ClusterSpec, svc: &str, pod: &str) -> String {
    endpoint_chain_in(mode, spec, svc, pod, Family::V4)
}

/// [`endpoint_chain`] of the pod's address in `family` (kube-proxy's IPv6 proxier names its
/// chains after the IPv6 endpoint).
fn endpoint_chain_in(mode: ProxyMode, spec: &ClusterSpec, svc: &str, pod: &str, family: Family) -> String {
    let s = spec.services.iter().find(|s| s.name == svc).expect("service in spec");
    let port = &s.ports[0];
    let ep = spec
        .endpoints_in(s, port, family.ip_family())
        .into_iter()
        .find(|e| e.pod == pod)
        .expect("endpoint in spec");
    match mode {
        ProxyMode::Nftables => format!("endpoint-{}", lab::nftables::endpoint_base(s, port, &ep)),
        _ => lab::iptables::sep_chain(&s.port_name(port), port.protocol.as_str(), &ep),
    }
}

/// The Service port's dispatch chain: `KUBE-SVC-<hash>` or nftables `service-<hash>-...`.
fn service_chain(mode: ProxyMode, spec: &ClusterSpec, svc: &str) -> String {
    let s = spec.services.iter().find(|s| s.name == svc).expect("service in spec");
    let port = &s.ports[0];
    match mode {
        ProxyMode::Nftables => format!("service-{}", lab::nftables::service_base(s, port)),
        _ => lab::iptables::ServiceChains::new(&s.port_name(port), port.protocol.as_str()).svc,
    }
}

// ---- traffic helpers ------------------------------------------------------------------------------

fn http_ok(lab: &Lab, fam: Family, n: usize) -> BTreeSet<String> {
    (0..n)
        .map(
            |_| match lab::http_get(lab.client_ns(), fam.sock(VIP, 80), "/", T).expect("http get") {
                HttpOutcome::Response { status: 200, body, .. } => body.trim().to_string(),
                other => panic!("healthy Service did not answer: {other:?}"),
            },
        )
        .collect()
}

/// Connects to the ClusterIP until every kind of `want` outcome was seen (each attempt picks a
/// backend at random), at most `max` attempts or [`PICK_BUDGET`].
pub(crate) fn connect_until(lab: &Lab, max: usize, want: &[fn(&TcpOutcome) -> bool]) -> Vec<TcpOutcome> {
    connect_until_in(lab, Family::V4, max, want)
}

/// [`connect_until`] to the ClusterIP of `fam`.
fn connect_until_in(lab: &Lab, fam: Family, max: usize, want: &[fn(&TcpOutcome) -> bool]) -> Vec<TcpOutcome> {
    let start = Instant::now();
    let mut seen = Vec::new();
    while seen.len() < max && start.elapsed() < PICK_BUDGET {
        seen.push(lab::tcp_connect(lab.client_ns(), fam.sock(VIP, 80), PICK_TIMEOUT).expect("connect"));
        if want.iter().all(|w| seen.iter().any(w)) {
            break;
        }
    }
    seen
}

// ---- healthy --------------------------------------------------------------------------------------

pub(crate) fn healthy(mode: ProxyMode, fam: Family) -> Run {
    let s = Scenario::up_in(web_spec(2), mode, fam);
    let mut answered = BTreeSet::new();
    let run = s.trace("default/web", Api::Snapshot, 3, &[], |lab| {
        answered = http_ok(lab, fam, 4)
    });
    run.assert_root("healthy");
    assert_eq!(run.report.severity.as_deref(), Some("NONE"), "{}", run.context);
    let flows = run.flows_to(&run.at(VIP, 80));
    assert_eq!(flows.len(), 4, "four requests, four flows; {}", run.context);
    let by_name = |n: &str| match n {
        "web-1" => run.at(WEB_1, 8080),
        "web-2" => run.at(WEB_2, 8080),
        other => panic!("unexpected backend {other}"),
    };
    let expected: BTreeSet<String> = answered.iter().map(|n| by_name(n)).collect();
    let traced: BTreeSet<String> = flows.iter().filter_map(|f| f.backend.clone()).collect();
    assert_eq!(
        traced, expected,
        "backends traced = pods that answered; {}",
        run.context
    );
    for f in &flows {
        assert_eq!(
            (f.outcome.as_str(), run.class_of(f)),
            ("established", "healthy"),
            "{}",
            run.context
        );
        assert_eq!(f.protocol, "tcp");
        assert_eq!(
            f.drop_reason, None,
            "a completed exchange lost nothing; {}",
            run.context
        );
    }
    for ip in [WEB_1, WEB_2] {
        let ep = run.endpoint(ip, 8080);
        assert!(
            ep.in_rules && ep.in_api == Some(true) && ep.ready == Some(true) && ep.local == Some(true),
            "{ep:?}"
        );
    }
    assert_eq!(
        run.endpoint(WEB_1, 8080).rule.as_deref(),
        Some(endpoint_chain_in(mode, s.lab.spec(), "web", "web-1", fam).as_str())
    );
    // What was checked: the Service's rule, the API's endpoints, kube-proxy.
    run.evidence("rules", &[&service_chain(mode, s.lab.spec(), "web")]);
    let n = 2 * fam.stacks();
    run.evidence(
        "api",
        &[&format!(
            "EndpointSlices of default/web list {n} ready endpoints, {n} of them DNAT targets"
        )],
    );
    run.evidence("kube_proxy", &["kube-proxy running on node d8lab-node"]);
    assert_eq!(run.report.kube_proxy.running, Some(true), "{}", run.context);
    assert_eq!(run.report.lost_events, 0);
    run.no_evidence("also (");
    run
}

#[test]
fn healthy_iptables() {
    healthy(ProxyMode::Iptables, Family::V4);
}

#[test]
fn healthy_nftables() {
    healthy(ProxyMode::Nftables, Family::V4);
}

// ---- no endpoints ---------------------------------------------------------------------------------

pub(crate) fn no_endpoints(mode: ProxyMode, fam: Family) -> Run {
    let s = Scenario::up_in(empty_spec(Protocol::Tcp), mode, fam);
    let run = s.trace("default/empty", Api::Snapshot, 3, &[], |lab| {
        for _ in 0..2 {
            let out = lab::tcp_connect(lab.client_ns(), fam.sock(VIP, 80), T).expect("connect");
            assert_eq!(
                out,
                TcpOutcome::Refused,
                "kube-proxy rejects a Service without endpoints"
            );
        }
    });
    run.assert_root("no_endpoints");
    let flows = run.flows_to(&run.at(VIP, 80));
    assert_eq!(flows.len(), 2, "{}", run.context);
    for f in &flows {
        assert_eq!(
            (f.outcome.as_str(), run.class_of(f)),
            ("rejected", "no_endpoints"),
            "{}",
            run.context
        );
        assert_eq!(f.backend, None, "nothing was DNAT'd; {}", run.context);
    }
    // The REJECT kube-proxy wrote, the ICMP error the node sent, and the API's empty EndpointSlice.
    let vip = fam.ip(VIP).to_string();
    match mode {
        ProxyMode::Nftables => run.evidence("rules", &["no-endpoint-services", &vip]),
        _ => run.evidence(
            "rules",
            &[
                "default/empty:p has no endpoints",
                &format!("-d {vip}"),
                "--dport 80",
                "-j REJECT",
            ],
        ),
    };
    let node = fam.ip(NODE_IP);
    run.evidence(
        "trace",
        &[
            &format!("{} port unreachable from {node}", fam.icmp()),
            "REJECT: no endpoints",
        ],
    );
    run.evidence("api", &["EndpointSlices of default/empty list no ready endpoints"]);
    run
}

#[test]
fn no_endpoints_iptables() {
    no_endpoints(ProxyMode::Iptables, Family::V4);
}

#[test]
fn no_endpoints_nftables() {
    no_endpoints(ProxyMode::Nftables, Family::V4);
}

// ---- stale endpoint -------------------------------------------------------------------------------

/// web-2 is deleted (namespace and API objects) while the rules still DNAT to it; traffic until a
/// connection went to each backend.
pub(crate) fn stale_endpoint(mode: ProxyMode, api: Api, fam: Family) -> Run {
    let mut s = Scenario::up_in(web_spec(2), mode, fam);
    s.lab.make_stale_endpoint("web-2").expect("stale endpoint");
    let stale = fam.at(WEB_2, 8080);
    let mut outcomes = Vec::new();
    let run = s.trace("default/web", api, 5, &["--reply-timeout", "1"], |lab| {
        outcomes = connect_until_in(lab, fam, 16, &[TcpOutcome::is_connected, |o| *o == TcpOutcome::Timeout]);
    });
    assert!(
        outcomes.contains(&TcpOutcome::Timeout),
        "no attempt went to the deleted pod: {outcomes:?}"
    );
    run.assert_root("stale_endpoint");
    let flows = run.flows_to(&run.at(VIP, 80));
    let to_stale: Vec<&&Flow> = flows
        .iter()
        .filter(|f| f.backend.as_deref() == Some(stale.as_str()))
        .collect();
    assert!(
        !to_stale.is_empty(),
        "no flow DNAT'd to the deleted pod {stale}; {}",
        run.context
    );
    for f in &flows {
        let want = if f.backend.as_deref() == Some(stale.as_str()) {
            "stale_endpoint"
        } else {
            "healthy"
        };
        assert_eq!(run.class_of(f), want, "flow to {:?}; {}", f.backend, run.context);
    }
    // The rule that still DNATs to the pod.
    let chain = endpoint_chain_in(mode, s.lab.rules_spec(), "web", "web-2", fam);
    run.evidence("rules", &[&chain]);
    let ep = run.endpoint(WEB_2, 8080);
    assert!(ep.in_rules, "{ep:?}");
    match api {
        Api::Snapshot => {
            assert_eq!(
                ep.in_api,
                Some(false),
                "the API no longer lists the pod; {}",
                run.context
            );
            run.evidence(
                "api",
                &[&format!(
                    "{stale} is not in the Service's EndpointSlices of default/web"
                )],
            );
            run.evidence("trace", &[&format!("DNAT to stale backend {stale}")]);
        }
        Api::None => {
            assert_eq!(ep.in_api, None, "{}", run.context);
            assert!(run.root_detail().contains("never answered"), "{}", run.context);
            run.evidence("trace", &[&format!("-> {stale}: no reply")]);
        }
    }
    assert!(
        run.root_detail().contains(&stale),
        "the root cause names the backend; {}",
        run.context
    );
    run
}

impl Run {
    fn root_detail(&self) -> &str {
        self.report.root_cause.as_ref().map(|r| r.detail.as_str()).unwrap_or("")
    }
}

#[test]
fn stale_endpoint_api_iptables() {
    stale_endpoint(ProxyMode::Iptables, Api::Snapshot, Family::V4);
}

#[test]
fn stale_endpoint_api_nftables() {
    stale_endpoint(ProxyMode::Nftables, Api::Snapshot, Family::V4);
}

#[test]
fn stale_endpoint_no_k8s_iptables() {
    stale_endpoint(ProxyMode::Iptables, Api::None, Family::V4);
}

#[test]
fn stale_endpoint_no_k8s_nftables() {
    stale_endpoint(ProxyMode::Nftables, Api::None, Family::V4);
}

// ---- externalTrafficPolicy=Local without local endpoints ---------------------------------------------

/// From the external client to the NodePort (`node_port`) or the external IP: kube-proxy drops.
pub(crate) fn etp_local(mode: ProxyMode, node_port: bool, fam: Family) -> Run {
    let s = Scenario::up_in(etp_local_spec(), mode, fam);
    let target = if node_port {
        fam.sock(s.lab.node_ip(), NODE_PORT)
    } else {
        fam.sock(EXTERNAL_IP, 80)
    };
    let run = s.trace("default/shop", Api::Snapshot, 3, &["--reply-timeout", "1"], |lab| {
        for _ in 0..2 {
            let out = lab::tcp_connect(lab.external_ns(), target, SILENT).expect("connect");
            assert_eq!(
                out,
                TcpOutcome::Timeout,
                "kube-proxy drops external traffic without local endpoints"
            );
        }
    });
    run.assert_root("etp_local_no_local_endpoints");
    let flows = run.flows_to(&target.to_string());
    for f in &flows {
        assert_eq!(run.class_of(f), "etp_local_no_local_endpoints", "{}", run.context);
        assert_eq!(f.backend, None, "nothing was DNAT'd; {}", run.context);
        assert_eq!(
            f.client.parse::<SocketAddr>().map(|c| c.ip()).ok(),
            Some(fam.ip(EXTERNAL_CLIENT)),
            "from the external client; {}",
            run.context
        );
        assert_eq!(f.outcome, "dropped", "{}", run.context);
        assert_eq!(
            f.drop_reason.as_deref(),
            Some(run.report.drop_reason_named("NETFILTER_DROP")),
            "{}",
            run.context
        );
    }
    let kind = if node_port { "node_port" } else { "external_ip" };
    assert!(
        run.report
            .frontends
            .iter()
            .any(|f| f.kind == kind && f.port == target.port()),
        "{}",
        run.context
    );
    // The DROP rule for this frontend.
    let external = fam.ip(EXTERNAL_IP).to_string();
    match (mode, node_port) {
        (ProxyMode::Nftables, true) => run.evidence("rules", &["no-endpoint-nodeports", "30080", "drop"]),
        (ProxyMode::Nftables, false) => run.evidence("rules", &["no-endpoint-services", &external, "drop"]),
        (_, true) => run.evidence(
            "rules",
            &["default/shop:http has no local endpoints", "--dport 30080", "-j DROP"],
        ),
        (_, false) => run.evidence(
            "rules",
            &[
                "default/shop:http has no local endpoints",
                &format!("-d {external}"),
                "-j DROP",
            ],
        ),
    };
    run.evidence("trace", &["has no local endpoints"]);
    run.evidence(
        "api",
        &[&format!(
            "externalTrafficPolicy=Local; ready endpoints on node d8lab-node: 0, on other nodes: {}",
            fam.stacks()
        )],
    );
    run
}

#[test]
fn etp_local_node_port_iptables() {
    etp_local(ProxyMode::Iptables, true, Family::V4);
}

#[test]
fn etp_local_node_port_nftables() {
    etp_local(ProxyMode::Nftables, true, Family::V4);
}

#[test]
fn etp_local_external_ip_iptables() {
    etp_local(ProxyMode::Iptables, false, Family::V4);
}

#[test]
fn etp_local_external_ip_nftables() {
    etp_local(ProxyMode::Nftables, false, Family::V4);
}

// ---- probe RSTs alongside healthy traffic ---------------------------------------------------------

/// kubelet probes the pods over the scenario's family (`status.podIP` is of the cluster's primary
/// family: IPv6 on an IPv6-primary dual-stack cluster).
pub(crate) fn probe_rst(mode: ProxyMode, fam: Family) -> Run {
    let mut spec = web_spec(2);
    for p in &mut spec.pods {
        *p = p.clone().tcp_probes(8080);
    }
    let s = Scenario::up_in(spec, mode, fam);
    let run = s.trace("default/web", Api::Snapshot, 3, &[], |lab| {
        let prober = lab.start_prober_in(Duration::from_millis(200), fam.ip_family());
        http_ok(lab, fam, 3);
        // Until at least two rounds of probes went out (each probe is bounded by 1 s).
        let deadline = Instant::now() + Duration::from_secs(2);
        while prober.probes_sent() < 4 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            prober.probes_sent() >= 4,
            "the prober sent {} probes",
            prober.probes_sent()
        );
    });
    run.assert_root("healthy");
    let node_ip = fam.ip(s.lab.node_ip());
    let probes: Vec<&Flow> = run.report.flows.iter().filter(|f| f.frontend.is_none()).collect();
    assert!(probes.len() >= 4, "probe flows traced; {}", run.context);
    for f in &probes {
        assert_eq!(run.class_of(f), "probe_rst", "{}", run.context);
        assert_eq!(
            f.client.parse::<SocketAddr>().map(|c| c.ip()).ok(),
            Some(node_ip),
            "probes come from the node IP; {}",
            run.context
        );
        let b = f.backend.as_deref().unwrap_or("");
        assert!(
            b == run.at(WEB_1, 8080) || b == run.at(WEB_2, 8080),
            "probe target {b}; {}",
            run.context
        );
    }
    let service = run.flows_to(&run.at(VIP, 80));
    assert_eq!(service.len(), 3, "{}", run.context);
    for f in &service {
        assert_eq!(run.class_of(f), "healthy", "{}", run.context);
    }
    assert_eq!(run.report.severity.as_deref(), Some("NONE"), "{}", run.context);
    run.evidence("trace", &["probe of default/web-", "closed by RST"]);
    run
}

#[test]
fn probe_rst_iptables() {
    probe_rst(ProxyMode::Iptables, Family::V4);
}

#[test]
fn probe_rst_nftables() {
    probe_rst(ProxyMode::Nftables, Family::V4);
}

// ---- kube-proxy's rules missing ---------------------------------------------------------------------

pub(crate) fn rules_missing(mode: ProxyMode, fam: Family) -> Run {
    let mut s = Scenario::up_in(web_spec(1), mode, fam);
    s.lab
        .flush_service_rules("default", "web")
        .expect("flush the Service's rules");
    let run = s.trace("default/web", Api::Snapshot, 3, &["--reply-timeout", "1"], |lab| {
        for _ in 0..2 {
            let out = lab::tcp_connect(lab.client_ns(), fam.sock(VIP, 80), SILENT).expect("connect");
            assert!(!out.is_connected(), "nothing translates the ClusterIP: {out:?}");
        }
    });
    run.assert_root("kube_proxy_rules_missing");
    for f in run.flows_to(&run.at(VIP, 80)) {
        assert_eq!(run.class_of(f), "kube_proxy_rules_missing", "{}", run.context);
        assert_eq!(f.backend, None, "nothing was DNAT'd; {}", run.context);
    }
    assert!(!run.endpoint(WEB_1, 8080).in_rules);
    assert_eq!(run.endpoint(WEB_1, 8080).in_api, Some(true));
    run.evidence("api", &["the API has Service default/web"]);
    run.evidence("rules", &["no kube-proxy rule mentions default/web"]);
    assert!(
        run.root_detail()
            .contains("the API has default/web but kube-proxy's rules lack"),
        "{}",
        run.context
    );
    run
}

#[test]
fn kube_proxy_rules_missing_iptables() {
    rules_missing(ProxyMode::Iptables, Family::V4);
}

#[test]
fn kube_proxy_rules_missing_nftables() {
    rules_missing(ProxyMode::Nftables, Family::V4);
}

// ---- kube-proxy not running -------------------------------------------------------------------------

/// kube-proxy stopped: its rules stay and still carry traffic, but nothing maintains them.
pub(crate) fn kube_proxy_not_running(mode: ProxyMode, fam: Family) -> Run {
    let mut s = Scenario::up_in(web_spec(1), mode, fam);
    s.lab.stop_kube_proxy();
    let run = s.trace("default/web", Api::Snapshot, 3, &[], |lab| {
        http_ok(lab, fam, 2);
    });
    run.assert_root("kube_proxy_not_running");
    assert_eq!(run.report.kube_proxy.running, Some(false), "{}", run.context);
    let backend = run.at(WEB_1, 8080);
    for f in run.flows_to(&run.at(VIP, 80)) {
        assert_eq!(
            run.class_of(f),
            "healthy",
            "the rules left behind still work; {}",
            run.context
        );
        assert_eq!(f.backend.as_deref(), Some(backend.as_str()));
    }
    run.evidence(
        "kube_proxy",
        &[
            "no kube-proxy process or pod on node d8lab-node",
            "no /healthz on 10256",
        ],
    );
    run
}

#[test]
fn kube_proxy_not_running_iptables() {
    kube_proxy_not_running(ProxyMode::Iptables, Family::V4);
}

#[test]
fn kube_proxy_not_running_nftables() {
    kube_proxy_not_running(ProxyMode::Nftables, Family::V4);
}

// ---- kube-proxy version skew ----------------------------------------------------------------------

/// The control plane the node's kube-proxy talks to.
const CONTROL_PLANE: &str = "v1.35.0";

/// kube-proxy v1.33.2 (the lab's) two minors behind the control plane (v1.35.0, a control-plane
/// Node in the API view): traffic still flows, the skew is the finding, and it is the same
/// whichever family carried the flows.
pub(crate) fn kube_proxy_version_skew(mode: ProxyMode, fam: Family) -> Run {
    let s = Scenario::up_in(web_spec(1).control_plane(CONTROL_PLANE), mode, fam);
    let kube_proxy = s.lab.spec().kube_proxy.clone().expect("kube-proxy runs").version;
    let run = s.trace("default/web", Api::Snapshot, 3, &[], |lab| {
        http_ok(lab, fam, 2);
    });
    run.assert_root("kube_proxy_version_skew");
    assert_eq!(run.report.severity.as_deref(), Some("LOW"), "{}", run.context);
    let backend = run.at(WEB_1, 8080);
    let flows = run.flows_to(&run.at(VIP, 80));
    assert_eq!(flows.len(), 2, "{}", run.context);
    for f in flows {
        assert_eq!(run.class_of(f), "healthy", "skew breaks no flow; {}", run.context);
        assert_eq!(f.backend.as_deref(), Some(backend.as_str()), "{}", run.context);
    }
    assert!(
        run.root_detail().contains(&format!(
            "kube-proxy {kube_proxy} is more than one minor version from the API server {CONTROL_PLANE}"
        )),
        "{}",
        run.context
    );
    run.evidence("kube_proxy", &[&format!("kube-proxy version {kube_proxy}")]);
    run.evidence("api", &[&format!("API server version {CONTROL_PLANE}")]);
    run
}

#[test]
fn kube_proxy_version_skew_iptables() {
    kube_proxy_version_skew(ProxyMode::Iptables, Family::V4);
}

#[test]
fn kube_proxy_version_skew_nftables() {
    kube_proxy_version_skew(ProxyMode::Nftables, Family::V4);
}

// ---- backend refused / backend timeout ----------------------------------------------------------------

pub(crate) fn backend_refused(mode: ProxyMode, fam: Family) -> Run {
    let mut s = Scenario::up_in(web_spec(1), mode, fam);
    s.lab.stop_listener("web-1", 8080).expect("stop the listener");
    let run = s.trace("default/web", Api::Snapshot, 3, &[], |lab| {
        for _ in 0..2 {
            let out = lab::tcp_connect(lab.client_ns(), fam.sock(VIP, 80), T).expect("connect");
            assert_eq!(out, TcpOutcome::Refused, "nothing listens in the pod");
        }
    });
    run.assert_root("backend_refused");
    let flows = run.flows_to(&run.at(VIP, 80));
    assert_eq!(flows.len(), 2, "{}", run.context);
    let backend = run.at(WEB_1, 8080);
    for f in &flows {
        assert_eq!(
            (f.outcome.as_str(), run.class_of(f)),
            ("reset", "backend_refused"),
            "{}",
            run.context
        );
        assert_eq!(f.backend.as_deref(), Some(backend.as_str()), "{}", run.context);
    }
    run.evidence("trace", &[&format!("RST from backend {backend} (pod default/web-1)")]);
    run.evidence("rules", &[&endpoint_chain_in(mode, s.lab.spec(), "web", "web-1", fam)]);
    assert!(
        run.root_detail().contains("default/web-1"),
        "names the pod; {}",
        run.context
    );
    run
}

#[test]
fn backend_refused_iptables() {
    backend_refused(ProxyMode::Iptables, Family::V4);
}

#[test]
fn backend_refused_nftables() {
    backend_refused(ProxyMode::Nftables, Family::V4);
}

/// A listed, ready pod that never answers: a listener that never accepts (`no_accept`), or a pod
/// that drops everything.
pub(crate) fn backend_timeout(mode: ProxyMode, no_accept: bool, fam: Family) -> Run {
    let mut spec = web_spec(1);
    if no_accept {
        spec.pods[0].listeners[0].kind = ListenerKind::TcpNoAccept;
    }
    let mut s = Scenario::up_in(spec, mode, fam);
    if !no_accept {
        s.lab.set_drop_all("web-1", true).expect("make the pod drop");
    }
    let run = s.trace("default/web", Api::Snapshot, 3, &["--reply-timeout", "1"], |lab| {
        for _ in 0..2 {
            let out = lab::tcp_connect(lab.client_ns(), fam.sock(VIP, 80), SILENT).expect("connect");
            assert_eq!(out, TcpOutcome::Timeout, "the pod never answers");
        }
    });
    run.assert_root("backend_timeout");
    let flows = run.flows_to(&run.at(VIP, 80));
    assert_eq!(flows.len(), 2, "{}", run.context);
    let backend = run.at(WEB_1, 8080);
    for f in &flows {
        assert_eq!(run.class_of(f), "backend_timeout", "{}", run.context);
        assert_eq!(f.backend.as_deref(), Some(backend.as_str()), "{}", run.context);
    }
    let ep = run.endpoint(WEB_1, 8080);
    assert!(
        ep.in_rules && ep.in_api == Some(true) && ep.ready == Some(true),
        "listed and ready: {ep:?}"
    );
    assert!(
        run.root_detail().contains(&format!("{backend} (pod default/web-1)")),
        "{}",
        run.context
    );
    assert!(run.root_detail().contains("listed, ready endpoint"), "{}", run.context);
    run.evidence("rules", &[&endpoint_chain_in(mode, s.lab.spec(), "web", "web-1", fam)]);
    run
}

#[test]
fn backend_timeout_no_accept_iptables() {
    backend_timeout(ProxyMode::Iptables, true, Family::V4);
}

#[test]
fn backend_timeout_no_accept_nftables() {
    backend_timeout(ProxyMode::Nftables, true, Family::V4);
}

#[test]
fn backend_timeout_drop_all_iptables() {
    backend_timeout(ProxyMode::Iptables, false, Family::V4);
}

#[test]
fn backend_timeout_drop_all_nftables() {
    backend_timeout(ProxyMode::Nftables, false, Family::V4);
}

// ---- UDP -------------------------------------------------------------------------------------------

pub(crate) fn udp_healthy(mode: ProxyMode, fam: Family) -> Run {
    let s = Scenario::up_in(dns_spec(1), mode, fam);
    let run = s.trace("default/dns", Api::Snapshot, 3, &[], |lab| {
        for i in 0..2 {
            let q = format!("q{i}");
            let out = lab::udp_request(lab.client_ns(), fam.sock(VIP, 53), q.as_bytes(), T).expect("udp");
            assert_eq!(out, UdpOutcome::Reply(format!("dns-1\n{q}").into_bytes()));
        }
    });
    run.assert_root("healthy");
    let flows = run.flows_to(&run.at(VIP, 53));
    assert_eq!(flows.len(), 2, "{}", run.context);
    let backend = run.at(WEB_1, 5353);
    for f in &flows {
        assert_eq!(f.protocol, "udp");
        assert_eq!(
            (f.outcome.as_str(), run.class_of(f)),
            ("established", "healthy"),
            "{}",
            run.context
        );
        assert_eq!(f.backend.as_deref(), Some(backend.as_str()), "{}", run.context);
    }
    assert!(
        run.report.frontends.iter().any(|f| f.protocol == "udp" && f.port == 53),
        "{}",
        run.context
    );
    run.evidence("rules", &[&service_chain(mode, s.lab.spec(), "dns")]);
    run
}

#[test]
fn udp_healthy_iptables() {
    udp_healthy(ProxyMode::Iptables, Family::V4);
}

#[test]
fn udp_healthy_nftables() {
    udp_healthy(ProxyMode::Nftables, Family::V4);
}

pub(crate) fn udp_no_endpoints(mode: ProxyMode, fam: Family) -> Run {
    let s = Scenario::up_in(empty_spec(Protocol::Udp), mode, fam);
    let run = s.trace("default/empty", Api::Snapshot, 3, &[], |lab| {
        for _ in 0..2 {
            let out = lab::udp_request(lab.client_ns(), fam.sock(VIP, 80), b"q", T).expect("udp");
            assert_eq!(out, UdpOutcome::Refused, "kube-proxy rejects with port unreachable");
        }
    });
    run.assert_root("no_endpoints");
    let flows = run.flows_to(&run.at(VIP, 80));
    assert_eq!(flows.len(), 2, "{}", run.context);
    for f in &flows {
        assert_eq!(f.protocol, "udp");
        assert_eq!(
            (f.outcome.as_str(), run.class_of(f)),
            ("rejected", "no_endpoints"),
            "{}",
            run.context
        );
        assert_eq!(f.backend, None, "{}", run.context);
    }
    let vip = fam.ip(VIP).to_string();
    match mode {
        ProxyMode::Nftables => run.evidence("rules", &["no-endpoint-services", &vip]),
        _ => run.evidence("rules", &["default/empty:p has no endpoints", "-p udp", "-j REJECT"]),
    };
    let node = fam.ip(NODE_IP).to_string();
    run.evidence("trace", &[&format!("{} port unreachable from {node}", fam.icmp())]);
    run
}

#[test]
fn udp_no_endpoints_iptables() {
    udp_no_endpoints(ProxyMode::Iptables, Family::V4);
}

#[test]
fn udp_no_endpoints_nftables() {
    udp_no_endpoints(ProxyMode::Nftables, Family::V4);
}

/// UDP stale endpoint: dns-2 deleted (namespace and API objects), the rules still DNAT to it.
pub(crate) fn udp_stale_endpoint(mode: ProxyMode, fam: Family) -> Run {
    let mut s = Scenario::up_in(dns_spec(2), mode, fam);
    s.lab.make_stale_endpoint("dns-2").expect("stale endpoint");
    let mut outcomes = Vec::new();
    let run = s.trace("default/dns", Api::Snapshot, 5, &["--reply-timeout", "1"], |lab| {
        // Each request picks a backend at random: until one was answered and one was not.
        let start = Instant::now();
        while outcomes.len() < 16 && start.elapsed() < PICK_BUDGET {
            outcomes.push(lab::udp_request(lab.client_ns(), fam.sock(VIP, 53), b"q", PICK_TIMEOUT).expect("udp"));
            let replied = outcomes.iter().any(|o| matches!(o, UdpOutcome::Reply(_)));
            if replied && outcomes.contains(&UdpOutcome::Timeout) {
                break;
            }
        }
    });
    assert!(
        outcomes.contains(&UdpOutcome::Timeout),
        "no request went to the deleted pod: {outcomes:?}"
    );
    run.assert_root("stale_endpoint");
    let (live, stale) = (run.at(WEB_1, 5353), run.at(WEB_2, 5353));
    for f in run.flows_to(&run.at(VIP, 53)) {
        assert_eq!(f.protocol, "udp");
        let want = match f.backend.as_deref() {
            Some(b) if b == live => "healthy",
            Some(b) if b == stale => "stale_endpoint",
            other => panic!("unexpected backend {other:?}; {}", run.context),
        };
        assert_eq!(run.class_of(f), want, "{}", run.context);
    }
    assert!(
        run.report
            .flows
            .iter()
            .any(|f| f.backend.as_deref() == Some(stale.as_str())),
        "{}",
        run.context
    );
    assert_eq!(run.endpoint(WEB_2, 5353).in_api, Some(false), "{}", run.context);
    run.evidence(
        "api",
        &[&format!(
            "{stale} is not in the Service's EndpointSlices of default/dns"
        )],
    );
    run.evidence(
        "rules",
        &[&endpoint_chain_in(mode, s.lab.rules_spec(), "dns", "dns-2", fam)],
    );
    run
}

#[test]
fn udp_stale_endpoint_iptables() {
    udp_stale_endpoint(ProxyMode::Iptables, Family::V4);
}

#[test]
fn udp_stale_endpoint_nftables() {
    udp_stale_endpoint(ProxyMode::Nftables, Family::V4);
}

// ---- two causes at once ----------------------------------------------------------------------------

/// web-1 is deleted while the rules keep it (stale endpoint), web-2 stopped listening (backend
/// refused). Both are proven by flows; the stale endpoint ranks first, the refusal is still reported.
pub(crate) fn mixed_incident(mode: ProxyMode, fam: Family) -> Run {
    let mut s = Scenario::up_in(web_spec(2), mode, fam);
    s.lab.make_stale_endpoint("web-1").expect("stale endpoint");
    s.lab.stop_listener("web-2", 8080).expect("stop the listener");
    let mut outcomes = Vec::new();
    let run = s.trace("default/web", Api::Snapshot, 5, &["--reply-timeout", "1"], |lab| {
        outcomes = connect_until_in(
            lab,
            fam,
            16,
            &[|o| *o == TcpOutcome::Refused, |o| *o == TcpOutcome::Timeout],
        );
    });
    assert!(
        outcomes.contains(&TcpOutcome::Refused) && outcomes.contains(&TcpOutcome::Timeout),
        "{outcomes:?}"
    );
    run.assert_root("stale_endpoint");
    let (stale, refusing) = (run.at(WEB_1, 8080), run.at(WEB_2, 8080));
    for f in run.flows_to(&run.at(VIP, 80)) {
        let want = match f.backend.as_deref() {
            Some(b) if b == stale => "stale_endpoint",
            Some(b) if b == refusing => "backend_refused",
            other => panic!("unexpected backend {other:?}; {}", run.context),
        };
        assert_eq!(run.class_of(f), want, "{}", run.context);
    }
    assert!(run.root_detail().contains(&stale), "{}", run.context);
    run.evidence("trace", &["also (backend_refused)", &refusing]);
    assert_ne!(run.report.severity.as_deref(), Some("NONE"));
    run
}

#[test]
fn mixed_stale_and_refused_iptables() {
    mixed_incident(ProxyMode::Iptables, Family::V4);
}

#[test]
fn mixed_stale_and_refused_nftables() {
    mixed_incident(ProxyMode::Nftables, Family::V4);
}

// ---- explain: rules and API alone -------------------------------------------------------------------

fn explain(mode: ProxyMode) {
    // Healthy.
    let s = Scenario::up(web_spec(2), mode);
    let run = s.explain("default/web");
    run.assert_root("healthy");
    assert!(run.report.flows.is_empty(), "explain traces nothing; {}", run.context);
    run.evidence(
        "api",
        &["EndpointSlices of default/web list 2 ready endpoints, 2 of them DNAT targets"],
    );

    // Stale endpoint: the API lost web-2, the rules still DNAT to it.
    let mut s = s;
    s.lab.delete_from_api("web-2").expect("delete from the API");
    let run = s.explain("default/web");
    run.assert_root("stale_endpoint");
    assert!(run.report.flows.is_empty(), "{}", run.context);
    assert!(run.root_detail().contains("10.244.1.12:8080"), "{}", run.context);
    run.evidence(
        "api",
        &["10.244.1.12:8080 is not in the Service's EndpointSlices of default/web"],
    );
    run.evidence("rules", &[&endpoint_chain(mode, s.lab.rules_spec(), "web", "web-2")]);
    drop(s);

    // No endpoints.
    let s = Scenario::up(empty_spec(Protocol::Tcp), mode);
    let run = s.explain("default/empty");
    run.assert_root("no_endpoints");
    assert!(run.report.flows.is_empty(), "{}", run.context);
    match mode {
        ProxyMode::Nftables => run.evidence("rules", &["no-endpoint-services", "10.96.0.10"]),
        _ => run.evidence("rules", &["default/empty:p has no endpoints", "-j REJECT"]),
    };
    run.evidence("api", &["EndpointSlices of default/empty list no ready endpoints"]);
    drop(s);

    // externalTrafficPolicy=Local without local endpoints.
    let s = Scenario::up(etp_local_spec(), mode);
    let run = s.explain("default/shop");
    run.assert_root("etp_local_no_local_endpoints");
    assert!(run.report.flows.is_empty(), "{}", run.context);
    match mode {
        ProxyMode::Nftables => run.evidence("rules", &["no-endpoint-nodeports", "30080"]),
        _ => run.evidence(
            "rules",
            &["default/shop:http has no local endpoints", "--dport 30080", "-j DROP"],
        ),
    };
    run.evidence(
        "api",
        &["externalTrafficPolicy=Local; ready endpoints on node d8lab-node: 0, on other nodes: 1"],
    );
}

#[test]
fn explain_iptables() {
    explain(ProxyMode::Iptables);
}

#[test]
fn explain_nftables() {
    explain(ProxyMode::Nftables);
}
