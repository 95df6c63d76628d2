//! The path picture of one Service: where its traced flows went, hop by hop, and how they ended.
//!
//! ```text
//! default/api: stale_endpoint (severity HIGH)
//!   kube-proxy sends default/api traffic to backend 10.244.1.22:8080 (pod default/api-2), which
//!   is not in the Service's EndpointSlices
//!   10.244.1.250 -> 10.96.0.11:80 -> KUBE-SVC-ZJMN3Y7IQQ5QPNCD
//!     -> KUBE-SEP-6E5MRBBHPGXKHZ4E -> 10.244.1.21:8080  ok 6/6
//!     -> KUBE-SEP-ALCWSNPYO7LLAVDN -> 10.244.1.22:8080 (pod gone)
//!           ok 2/5, no answer 3/5
//!   10.244.1.250 -> 10.96.0.12:80 -> KUBE-SERVICES: REJECT "has no endpoints"  rejected 3/3
//! ```
//!
//! - One header line per client address and frontend: the client, the frontend it asked for, and
//!   the chain kube-proxy's frontend rule jumps to (`KUBE-SVC-...`, `KUBE-EXT-...`, nft `service-...`).
//!   Below it one line per backend conntrack chose: the endpoint chain that DNATs to it, the
//!   backend, a note on what the backend is now (`pod gone`, `not ready`), and the flows' outcomes
//!   as `label n/m` (m: flows on that line).
//! - Flows that no rule translated get a line of their own that ends at the rule that stopped
//!   them (`REJECT "has no endpoints"`, `DROP "has no local endpoints"`).
//! - Flows straight to a backend (kubelet probes) are `client -> backend`.
//! - Lines fit 80 columns: a path that does not fit continues on the next line at a ` -> ` hop,
//!   and the outcomes move to a line of their own. Rule and chain names are never shortened: they
//!   are what one greps the rules for.
//!
//! Pure text: [`Hops`] (rule and chain names, notes) is built from service models by
//! [`Hops::from_models`], the flows and verdict come from the contract [`Report`], so tests feed
//! literals.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use crate::flows::Outcome;
use crate::model::{Protocol, RuleRef, ServiceModel, ServiceRef};
use crate::report::{FlowReport, Report, VerdictClass};

/// Lines are at most this wide (longer rule names excepted).
pub const WIDTH: usize = 80;

/// Indentation of continuation lines and of outcomes moved to their own line.
const CONTINUATION: usize = 10;

/// Names along a Service's paths, from kube-proxy's rules (and notes from the API).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Hops {
    /// Frontend (`0.0.0.0:port` for NodePorts on any local address) -> the chain its rule jumps to.
    pub service_chains: BTreeMap<(Protocol, SocketAddr), String>,
    /// Backend -> the endpoint chain that DNATs to it.
    pub endpoint_chains: BTreeMap<(Protocol, SocketAddr), String>,
    /// Backend -> what it is now (`pod gone`, `not ready`, `other node`).
    pub notes: BTreeMap<SocketAddr, String>,
    /// The Service's REJECT "has no endpoints" rules.
    pub no_endpoints: Vec<RuleRef>,
    /// The Service's DROP "has no local endpoints" rules.
    pub no_local_endpoints: Vec<RuleRef>,
    /// Labels for client addresses (`node`, `external`).
    pub clients: BTreeMap<IpAddr, String>,
}

impl Hops {
    /// Hops of `service` from `models`, the first model winning where they disagree: pass the
    /// model at the end of the trace first and earlier ones after it, so chains that were removed
    /// during the trace (an endpoint that went unready) still name the hops their flows took.
    /// Notes come from the first model only: they say what a backend is now.
    pub fn from_models(service: &ServiceRef, models: &[&ServiceModel]) -> Self {
        let mut hops = Hops::default();
        for (i, model) in models.iter().enumerate() {
            for ip in &model.node_ips {
                hops.clients.entry(*ip).or_insert_with(|| "node".to_owned());
            }
            let Some(svc) = model.service(service) else {
                continue;
            };
            for f in &svc.frontends {
                if let Some(chain) = f.rule.as_ref().and_then(|r| jump_target(&r.text)) {
                    hops.service_chains
                        .entry((f.protocol, SocketAddr::new(f.ip, f.port)))
                        .or_insert(chain);
                }
            }
            for e in &svc.endpoints {
                let addr = SocketAddr::new(e.ip, e.port);
                if let Some(r) = &e.rule {
                    hops.endpoint_chains
                        .entry((e.protocol, addr))
                        .or_insert_with(|| r.name.to_string());
                }
                if i == 0 {
                    let note = if e.in_rules && e.in_api == Some(false) {
                        Some("pod gone")
                    } else if e.ready == Some(false) {
                        Some("not ready")
                    } else if e.local == Some(false) {
                        Some("other node")
                    } else {
                        None
                    };
                    if let Some(n) = note {
                        hops.notes.insert(addr, n.to_owned());
                    }
                }
            }
            if hops.no_endpoints.is_empty() {
                hops.no_endpoints = svc.rules.no_endpoints.clone();
            }
            if hops.no_local_endpoints.is_empty() {
                hops.no_local_endpoints = svc.rules.no_local_endpoints.clone();
            }
        }
        hops
    }

    fn service_chain(&self, protocol: Protocol, frontend: SocketAddr) -> Option<&str> {
        let any = SocketAddr::new(unspecified(frontend.ip()), frontend.port());
        self.service_chains
            .get(&(protocol, frontend))
            .or_else(|| self.service_chains.get(&(protocol, any)))
            .map(String::as_str)
    }

    fn client(&self, ip: IpAddr) -> String {
        match self.clients.get(&ip) {
            Some(label) => format!("{ip} ({label})"),
            None => ip.to_string(),
        }
    }

    fn backend(&self, addr: SocketAddr) -> String {
        match self.notes.get(&addr) {
            Some(note) => format!("{addr} ({note})"),
            None => addr.to_string(),
        }
    }

    /// Where an untranslated flow of `class` to `frontend` ended.
    fn stopped_at(&self, class: Option<VerdictClass>, frontend: SocketAddr) -> String {
        let rules = match class {
            Some(VerdictClass::NoEndpoints) => &self.no_endpoints,
            Some(VerdictClass::EtpLocalNoLocalEndpoints) => &self.no_local_endpoints,
            _ => return "(not translated)".to_owned(),
        };
        match best_rule(rules, frontend) {
            Some(r) => verdict_hop(r),
            None => "(not translated)".to_owned(),
        }
    }
}

fn unspecified(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// The chain a rule jumps or goes to (`-j KUBE-SVC-...`, nft `goto service-...`), if it is one of
/// kube-proxy's (not a verdict such as DROP or DNAT).
pub fn jump_target(text: &str) -> Option<String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    words.windows(2).rev().find_map(|w| {
        if !matches!(w[0], "-j" | "--jump" | "-g" | "--goto" | "goto" | "jump") {
            return None;
        }
        let name = w[1].trim_matches(|c: char| matches!(c, '"' | ',' | ';' | '}' | '{'));
        let kube_proxy = name.starts_with("KUBE-")
            || ["service-", "external-", "endpoint-", "firewall-"]
                .iter()
                .any(|p| name.starts_with(p));
        kube_proxy.then(|| name.to_owned())
    })
}

/// `KUBE-SERVICES: REJECT "has no endpoints"`: the rule's chain, its verdict and the reason its
/// comment gives.
pub fn verdict_hop(rule: &RuleRef) -> String {
    let lower = rule.text.to_ascii_lowercase();
    let verdict = if lower.contains("reject") {
        "REJECT"
    } else if lower.contains("drop") {
        "DROP"
    } else {
        "stopped"
    };
    let why = if lower.contains("has no local endpoints") {
        " \"has no local endpoints\""
    } else if lower.contains("has no endpoints") {
        " \"has no endpoints\""
    } else {
        ""
    };
    if rule.name.is_empty() {
        format!("{verdict}{why}")
    } else {
        format!("{}: {verdict}{why}", rule.name)
    }
}

/// The rule of `rules` naming `frontend`'s address and port, else its port, else the first.
fn best_rule(rules: &[RuleRef], frontend: SocketAddr) -> Option<&RuleRef> {
    let port = frontend.port().to_string();
    let ip = frontend.ip().to_string();
    rules
        .iter()
        .find(|r| r.text.contains(&ip) && r.text.contains(&port))
        .or_else(|| rules.iter().find(|r| r.text.contains(&port)))
        .or_else(|| rules.first())
}

/// How one flow ended, as the picture counts it.
pub fn flow_label(f: &FlowReport) -> String {
    if f.class == Some(VerdictClass::ProbeRst) {
        return "probe RST".to_owned();
    }
    match f.outcome {
        Outcome::Established => "ok".to_owned(),
        Outcome::Reset => "reset".to_owned(),
        Outcome::Rejected => "rejected".to_owned(),
        Outcome::Dropped => match &f.drop_reason {
            Some(r) => format!("dropped {r}"),
            None => "dropped".to_owned(),
        },
        Outcome::Timeout => "no answer".to_owned(),
        Outcome::Open => "open".to_owned(),
    }
}

/// `ok 4/4` or `ok 2/5, no answer 3/5`: labels in order of first appearance.
pub fn counts<'a>(flows: impl IntoIterator<Item = &'a FlowReport>) -> String {
    let mut order: Vec<(String, usize)> = Vec::new();
    let mut total = 0;
    for f in flows {
        total += 1;
        let label = flow_label(f);
        match order.iter_mut().find(|(l, _)| *l == label) {
            Some((_, n)) => *n += 1,
            None => order.push((label, 1)),
        }
    }
    order
        .iter()
        .map(|(l, n)| format!("{l} {n}/{total}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Lays out `first -> hops[0] -> hops[1] ...  tail` in lines of at most [`WIDTH`] columns:
/// `first` starts at `indent`; a hop that does not fit starts a new line at [`CONTINUATION`]
/// with `-> `; `tail` goes two spaces after the last hop or on a line of its own.
pub fn path_lines(indent: usize, first: &str, hops: &[String], tail: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = format!("{}{first}", " ".repeat(indent));
    for hop in hops {
        let piece = format!(" -> {hop}");
        if width(&line) + width(&piece) > WIDTH && width(line.trim_start()) > 0 {
            lines.push(line);
            line = format!("{}-> {hop}", " ".repeat(CONTINUATION));
        } else {
            line.push_str(&piece);
        }
    }
    if !tail.is_empty() {
        if width(&line) + 2 + width(tail) > WIDTH {
            lines.push(line);
            line = format!("{}{tail}", " ".repeat(CONTINUATION));
        } else {
            line.push_str("  ");
            line.push_str(tail);
        }
    }
    lines.push(line);
    lines
}

fn width(s: &str) -> usize {
    s.chars().count()
}

/// Word-wraps `text` to [`WIDTH`] columns with `indent` spaces before every line.
pub fn wrap(indent: usize, text: &str) -> Vec<String> {
    let pad = " ".repeat(indent);
    let mut lines = Vec::new();
    let mut line = pad.clone();
    for word in text.split_whitespace() {
        if width(&line) > indent && width(&line) + 1 + width(word) > WIDTH {
            lines.push(line);
            line = pad.clone();
        }
        if width(&line) > indent {
            line.push(' ');
        }
        line.push_str(word);
    }
    if width(&line) > indent {
        lines.push(line);
    }
    lines
}

/// The verdict in a few words: the root cause, with benign probe RSTs named when they were seen.
pub fn verdict_label(report: &Report) -> String {
    let root = report.root_cause.as_ref().map(|r| r.class);
    let mut label = root.map_or_else(|| "not classified".to_owned(), |c| c.as_str().to_owned());
    let probes = report.flows.iter().any(|f| f.class == Some(VerdictClass::ProbeRst));
    if probes && root != Some(VerdictClass::ProbeRst) {
        label.push_str(" + probe_rst (benign)");
    }
    label
}

/// The path lines of `report`'s flows (no verdict header).
pub fn paths(report: &Report, hops: &Hops) -> Vec<String> {
    // Groups in order of first appearance: (client IP, protocol, frontend or None for direct).
    type Key = (IpAddr, Protocol, Option<SocketAddr>);
    let mut groups: Vec<(Key, Vec<&FlowReport>)> = Vec::new();
    for f in &report.flows {
        let key = (f.client.ip(), f.protocol, f.frontend);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, v)) => v.push(f),
            None => groups.push((key, vec![f])),
        }
    }
    let mut out = Vec::new();
    for ((client, protocol, frontend), flows) in groups {
        let client = hops.client(client);
        let Some(frontend) = frontend else {
            // Straight to backends: one line per destination.
            let mut by_backend: BTreeMap<Option<SocketAddr>, Vec<&FlowReport>> = BTreeMap::new();
            for f in flows {
                by_backend.entry(f.backend).or_default().push(f);
            }
            for (backend, flows) in by_backend {
                let dst = backend.map_or_else(|| "?".to_owned(), |b| hops.backend(b));
                out.extend(path_lines(2, &client, &[dst], &counts(flows.iter().copied())));
            }
            continue;
        };
        let (translated, untranslated): (Vec<&FlowReport>, Vec<&FlowReport>) =
            flows.into_iter().partition(|f| f.backend.is_some());
        if !translated.is_empty() {
            let mut head = vec![frontend.to_string()];
            if let Some(chain) = hops.service_chain(protocol, frontend) {
                head.push(chain.to_owned());
            }
            out.extend(path_lines(2, &client, &head, ""));
            let mut by_backend: BTreeMap<SocketAddr, Vec<&FlowReport>> = BTreeMap::new();
            for f in translated {
                by_backend
                    .entry(f.backend.expect("partitioned on backend"))
                    .or_default()
                    .push(f);
            }
            for (backend, flows) in by_backend {
                let (first, rest) = match hops.endpoint_chains.get(&(protocol, backend)) {
                    Some(chain) => (format!("-> {chain}"), vec![hops.backend(backend)]),
                    None => (format!("-> {}", hops.backend(backend)), vec![]),
                };
                out.extend(path_lines(4, &first, &rest, &counts(flows.iter().copied())));
            }
        }
        // Untranslated flows end at the rule that stopped them; one line per such rule.
        let mut by_stop: Vec<(String, Vec<&FlowReport>)> = Vec::new();
        for f in untranslated {
            let stop = hops.stopped_at(f.class, frontend);
            match by_stop.iter_mut().find(|(s, _)| *s == stop) {
                Some((_, v)) => v.push(f),
                None => by_stop.push((stop, vec![f])),
            }
        }
        for (stop, flows) in by_stop {
            let hops_list = [frontend.to_string(), stop];
            out.extend(path_lines(2, &client, &hops_list, &counts(flows.iter().copied())));
        }
    }
    out
}

/// The whole block of one Service: verdict, root-cause detail and paths.
pub fn render(report: &Report, hops: &Hops) -> Vec<String> {
    let mut out = Vec::new();
    let severity = report
        .severity
        .map(|s| format!(" (severity {})", s.as_str()))
        .unwrap_or_default();
    out.push(format!("{}: {}{severity}", report.service, verdict_label(report)));
    if let Some(rc) = &report.root_cause {
        out.extend(wrap(2, &rc.detail));
    }
    if report.flows.is_empty() {
        out.push("  (no flows traced)".to_owned());
    } else {
        out.extend(paths(report, hops));
    }
    out
}

/// One line per Service: name, verdict, flow count.
pub fn summary_table(reports: &[Report]) -> Vec<String> {
    let name_w = reports.iter().map(|r| width(&r.service)).max().unwrap_or(7).max(7);
    let verdict_w = reports
        .iter()
        .map(|r| width(&verdict_label(r)))
        .max()
        .unwrap_or(7)
        .max(7);
    let mut out = vec![format!("{:<name_w$}  {:<verdict_w$}  flows", "Service", "Verdict")];
    for r in reports {
        out.push(format!(
            "{:<name_w$}  {:<verdict_w$}  {:>5}",
            r.service,
            verdict_label(r),
            r.flows.len()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Frontend, FrontendKind, RuleSource, Service};
    use crate::report::{RootCause, Severity};

    fn rule(name: &str, text: &str) -> RuleRef {
        RuleRef {
            source: RuleSource::Iptables,
            name: name.into(),
            text: text.into(),
        }
    }

    fn flow(client: &str, frontend: Option<&str>, backend: Option<&str>, outcome: Outcome) -> FlowReport {
        FlowReport {
            protocol: Protocol::Tcp,
            client: client.parse().unwrap(),
            frontend: frontend.map(|f| f.parse().unwrap()),
            backend: backend.map(|b| b.parse().unwrap()),
            outcome,
            drop_reason: None,
            class: Some(VerdictClass::Healthy),
        }
    }

    fn report(service: &str, class: VerdictClass, severity: Severity, detail: &str, flows: Vec<FlowReport>) -> Report {
        let (namespace, name) = service.split_once('/').unwrap();
        let mut r = Report::new(&ServiceRef {
            namespace: namespace.into(),
            name: name.into(),
        });
        r.flows = flows;
        r.root_cause = Some(RootCause {
            class,
            detail: detail.into(),
        });
        r.severity = Some(severity);
        r
    }

    fn key(addr: &str) -> (Protocol, SocketAddr) {
        (Protocol::Tcp, addr.parse().unwrap())
    }

    fn api_hops() -> Hops {
        let mut hops = Hops::default();
        hops.service_chains
            .insert(key("10.96.0.11:80"), "KUBE-SVC-ZJMN3Y7IQQ5QPNCD".into());
        hops.endpoint_chains
            .insert(key("10.244.1.21:8080"), "KUBE-SEP-6E5MRBBHPGXKHZ4E".into());
        hops.endpoint_chains
            .insert(key("10.244.1.22:8080"), "KUBE-SEP-ALCWSNPYO7LLAVDN".into());
        hops.notes
            .insert("10.244.1.22:8080".parse().unwrap(), "pod gone".into());
        hops
    }

    #[test]
    fn stale_endpoint_picture() {
        let c = "10.244.1.250:40000";
        let fe = Some("10.96.0.11:80");
        let mut stale = flow(c, fe, Some("10.244.1.22:8080"), Outcome::Timeout);
        stale.class = Some(VerdictClass::StaleEndpoint);
        let flows = vec![
            flow(c, fe, Some("10.244.1.21:8080"), Outcome::Established),
            flow(c, fe, Some("10.244.1.22:8080"), Outcome::Established),
            stale.clone(),
            flow(c, fe, Some("10.244.1.21:8080"), Outcome::Established),
            stale.clone(),
            stale,
        ];
        let r = report(
            "default/api",
            VerdictClass::StaleEndpoint,
            Severity::High,
            "kube-proxy sends default/api traffic to backend 10.244.1.22:8080 (pod default/api-2), which is not in the Service's EndpointSlices",
            flows,
        );
        let text = render(&r, &api_hops()).join("\n");
        // The last line would be too wide: the outcomes move to a line of their own.
        let want = "\
default/api: stale_endpoint (severity HIGH)
  kube-proxy sends default/api traffic to backend 10.244.1.22:8080 (pod
  default/api-2), which is not in the Service's EndpointSlices
  10.244.1.250 -> 10.96.0.11:80 -> KUBE-SVC-ZJMN3Y7IQQ5QPNCD
    -> KUBE-SEP-6E5MRBBHPGXKHZ4E -> 10.244.1.21:8080  ok 2/2
    -> KUBE-SEP-ALCWSNPYO7LLAVDN -> 10.244.1.22:8080 (pod gone)
          ok 1/4, no answer 3/4";
        assert_eq!(text, want);
        assert!(text.lines().all(|l| l.chars().count() <= WIDTH), "{text}");
    }

    #[test]
    fn rejected_and_dropped_flows_end_at_the_rule() {
        let mut hops = Hops::default();
        hops.service_chains
            .insert(key("10.96.0.12:80"), "KUBE-SVC-AAAAAAAAAAAAAAAA".into());
        hops.endpoint_chains
            .insert(key("10.244.1.31:8080"), "KUBE-SEP-BBBBBBBBBBBBBBBB".into());
        hops.notes
            .insert("10.244.1.31:8080".parse().unwrap(), "not ready".into());
        hops.no_endpoints = vec![rule(
            "KUBE-SERVICES",
            "-A KUBE-SERVICES -d 10.96.0.12/32 -p tcp -m comment --comment \"default/orders:http has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
        )];
        let c = "10.244.1.250:40000";
        let fe = Some("10.96.0.12:80");
        let mut rejected = flow(c, fe, None, Outcome::Rejected);
        rejected.class = Some(VerdictClass::NoEndpoints);
        let flows = vec![
            flow(c, fe, Some("10.244.1.31:8080"), Outcome::Established),
            rejected.clone(),
            rejected.clone(),
            rejected,
        ];
        let r = report(
            "default/orders",
            VerdictClass::NoEndpoints,
            Severity::High,
            "default/orders has no ready endpoints; kube-proxy rejects its traffic",
            flows,
        );
        let want = "\
default/orders: no_endpoints (severity HIGH)
  default/orders has no ready endpoints; kube-proxy rejects its traffic
  10.244.1.250 -> 10.96.0.12:80 -> KUBE-SVC-AAAAAAAAAAAAAAAA
    -> KUBE-SEP-BBBBBBBBBBBBBBBB -> 10.244.1.31:8080 (not ready)  ok 1/1
  10.244.1.250 -> 10.96.0.12:80 -> KUBE-SERVICES: REJECT \"has no endpoints\"
          rejected 3/3";
        assert_eq!(render(&r, &hops).join("\n"), want);

        // ETP=Local: a NodePort hit from outside, dropped by kube-proxy; the client is labelled.
        let mut hops = Hops::default();
        hops.clients.insert("172.31.0.100".parse().unwrap(), "external".into());
        hops.no_local_endpoints = vec![rule(
            "KUBE-EXTERNAL-SERVICES",
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"default/shop:http has no local endpoints\" -m addrtype --dst-type LOCAL -p tcp -m tcp --dport 30080 -j DROP",
        )];
        let mut dropped = flow("172.31.0.100:50000", Some("172.31.0.2:30080"), None, Outcome::Dropped);
        dropped.drop_reason = Some("NETFILTER_DROP".into());
        dropped.class = Some(VerdictClass::EtpLocalNoLocalEndpoints);
        let r = report(
            "default/shop",
            VerdictClass::EtpLocalNoLocalEndpoints,
            Severity::Medium,
            "x",
            vec![dropped.clone(), dropped],
        );
        let want = "  172.31.0.100 (external) -> 172.31.0.2:30080
          -> KUBE-EXTERNAL-SERVICES: DROP \"has no local endpoints\"
          dropped NETFILTER_DROP 2/2";
        assert_eq!(paths(&r, &hops).join("\n"), want);
    }

    #[test]
    fn probes_are_direct_lines_and_named_in_the_verdict() {
        let mut hops = Hops::default();
        hops.clients.insert("172.31.0.2".parse().unwrap(), "node".into());
        hops.service_chains
            .insert(key("10.96.0.10:80"), "KUBE-SVC-CCCCCCCCCCCCCCCC".into());
        hops.endpoint_chains
            .insert(key("10.244.1.11:8080"), "KUBE-SEP-DDDDDDDDDDDDDDDD".into());
        let mut probe = flow("172.31.0.2:33000", None, Some("10.244.1.11:8080"), Outcome::Reset);
        probe.class = Some(VerdictClass::ProbeRst);
        let flows = vec![
            flow(
                "10.244.1.250:40000",
                Some("10.96.0.10:80"),
                Some("10.244.1.11:8080"),
                Outcome::Established,
            ),
            probe.clone(),
            flow(
                "10.244.1.250:40001",
                Some("10.96.0.10:80"),
                Some("10.244.1.11:8080"),
                Outcome::Established,
            ),
            probe,
        ];
        let r = report(
            "default/web",
            VerdictClass::Healthy,
            Severity::None,
            "flows to default/web complete",
            flows,
        );
        let want = "\
default/web: healthy + probe_rst (benign) (severity NONE)
  flows to default/web complete
  10.244.1.250 -> 10.96.0.10:80 -> KUBE-SVC-CCCCCCCCCCCCCCCC
    -> KUBE-SEP-DDDDDDDDDDDDDDDD -> 10.244.1.11:8080  ok 2/2
  172.31.0.2 (node) -> 10.244.1.11:8080  probe RST 2/2";
        assert_eq!(render(&r, &hops).join("\n"), want);
        let table = summary_table(&[r]).join("\n");
        assert_eq!(
            table,
            "Service      Verdict                       flows\n\
             default/web  healthy + probe_rst (benign)      4"
        );
    }

    #[test]
    fn no_flows_and_unknown_chains() {
        let r = report(
            "default/idle",
            VerdictClass::Healthy,
            Severity::None,
            "no flows",
            vec![],
        );
        assert_eq!(render(&r, &Hops::default()).last().unwrap(), "  (no flows traced)");
        let r = report(
            "default/x",
            VerdictClass::Healthy,
            Severity::None,
            "d",
            vec![flow(
                "10.0.0.1:1",
                Some("10.96.0.1:80"),
                Some("10.0.0.2:80"),
                Outcome::Open,
            )],
        );
        assert_eq!(
            paths(&r, &Hops::default()),
            vec!["  10.0.0.1 -> 10.96.0.1:80", "    -> 10.0.0.2:80  open 1/1"]
        );
    }

    #[test]
    fn jump_targets_and_verdict_hops() {
        assert_eq!(
            jump_target("-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"default/web:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-FQUFNSE5XNAJNUD4").as_deref(),
            Some("KUBE-SVC-FQUFNSE5XNAJNUD4")
        );
        assert_eq!(
            jump_target("-A KUBE-NODEPORTS -p tcp -m tcp --dport 30080 -j KUBE-EXT-X").as_deref(),
            Some("KUBE-EXT-X")
        );
        assert_eq!(
            jump_target("-A KUBE-SEP-X -p tcp -j DNAT --to-destination 10.0.0.1:80"),
            None
        );
        assert_eq!(
            jump_target("ip daddr 10.96.0.10 tcp dport 80 goto service-ULMVA6XW-default/web/tcp/http").as_deref(),
            Some("service-ULMVA6XW-default/web/tcp/http")
        );
        assert_eq!(verdict_hop(&rule("", "drop")), "DROP");
    }

    #[test]
    fn hops_from_models_prefer_the_first_model() {
        let svc_ref = ServiceRef {
            namespace: "default".into(),
            name: "orders".into(),
        };
        let ep = |ready: Option<bool>, in_rules: bool, rule_name: Option<&str>| Endpoint {
            ip: "10.244.1.31".parse().unwrap(),
            port: 8080,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            in_rules,
            in_api: Some(true),
            ready,
            local: Some(true),
            node: None,
            pod: Some("default/orders-1".into()),
            weight: None,
            rule: rule_name.map(|n| rule(n, "-A X -j DNAT")),
        };
        let mut before = ServiceModel::default();
        let mut svc = Service::new(svc_ref.clone());
        svc.frontends.push(Frontend {
            kind: FrontendKind::ClusterIp,
            ip: "10.96.0.12".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: Some(rule(
                "KUBE-SERVICES",
                "-A KUBE-SERVICES -d 10.96.0.12/32 -j KUBE-SVC-ORDERS",
            )),
        });
        svc.endpoints.push(ep(Some(true), true, Some("KUBE-SEP-ORDERS1")));
        before.services.push(svc);
        let mut after = ServiceModel {
            node_ips: vec!["172.31.0.2".parse().unwrap()],
            ..Default::default()
        };
        let mut svc = Service::new(svc_ref.clone());
        svc.endpoints.push(ep(Some(false), false, None));
        svc.rules.no_endpoints.push(rule("KUBE-SERVICES", "-j REJECT"));
        after.services.push(svc);
        let hops = Hops::from_models(&svc_ref, &[&after, &before]);
        assert_eq!(
            hops.service_chains.get(&key("10.96.0.12:80")).map(String::as_str),
            Some("KUBE-SVC-ORDERS")
        );
        assert_eq!(
            hops.endpoint_chains.get(&key("10.244.1.31:8080")).map(String::as_str),
            Some("KUBE-SEP-ORDERS1")
        );
        assert_eq!(
            hops.notes.get(&"10.244.1.31:8080".parse().unwrap()).map(String::as_str),
            Some("not ready")
        );
        assert_eq!(hops.no_endpoints.len(), 1);
        assert_eq!(
            hops.clients.get(&"172.31.0.2".parse().unwrap()).map(String::as_str),
            Some("node")
        );
    }
}
