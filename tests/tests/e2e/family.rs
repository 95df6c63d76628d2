//! The address family a scenario runs in, and the comparison of one scenario's reports across
//! families (issue 16: "JSON compared across families for the same scenario").
//!
//! A scenario body (`scenarios.rs`, `real_cluster.rs`) takes a [`Family`]: its lab, traffic,
//! trace flags and expected addresses follow it, so one body proves a verdict class over IPv4
//! and over IPv6. [`across_families`] runs a body over IPv6 and over IPv4 on the same dual-stack
//! lab spec and checks that the two reports say the same thing about different addresses;
//! [`across_stacks`] does the same for an IPv6-only node and the IPv4 (single-stack) one.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
};

use d8_trace::{
    lab::{ClusterSpec, spec::ipv6_twin},
    model::IpFamily,
};

use crate::scenarios::Run;

/// Which addresses a scenario uses, and which lab it needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Family {
    /// The lab as its spec says (single-stack IPv4), traced without `--family`.
    V4,
    /// The lab made dual-stack, driven and traced over IPv4 (`--family 4`): the IPv4 side of a
    /// comparison with [`Family::V6`] on the same lab spec.
    DualV4,
    /// The lab made dual-stack, driven and traced over IPv6 (`--family 6`): every address is its
    /// IPv6 twin (`lab::spec::ipv6_twin`).
    V6,
    /// The lab made IPv6-only (`ClusterSpec::ipv6_only`: IPv6 Services, pods and rules alone),
    /// traced without `--family`: every address is its IPv6 twin.
    V6Only,
}

impl Family {
    /// The lab spec this family needs.
    pub(crate) fn spec(self, spec: ClusterSpec) -> ClusterSpec {
        match self {
            Family::V4 => spec,
            Family::DualV4 | Family::V6 => spec.dual_stack(),
            Family::V6Only => spec.ipv6_only(),
        }
    }

    /// What a trace adds to narrow itself to this family.
    pub(crate) fn trace_flags(self) -> &'static [&'static str] {
        match self {
            Family::V4 | Family::V6Only => &[],
            Family::DualV4 => &["--family", "4"],
            Family::V6 => &["--family", "6"],
        }
    }

    /// The lab address `v4` (written as its IPv4 form) in this family.
    pub(crate) fn ip(self, v4: Ipv4Addr) -> IpAddr {
        match self {
            Family::V4 | Family::DualV4 => IpAddr::V4(v4),
            Family::V6 | Family::V6Only => IpAddr::V6(ipv6_twin(v4)),
        }
    }

    pub(crate) fn sock(self, v4: Ipv4Addr, port: u16) -> SocketAddr {
        SocketAddr::new(self.ip(v4), port)
    }

    /// `ip:port` as the report writes it (`[ip]:port` for IPv6).
    pub(crate) fn at(self, v4: Ipv4Addr, port: u16) -> String {
        self.sock(v4, port).to_string()
    }

    /// Addresses per pod in the lab's EndpointSlices: 2 in a dual-stack lab (one slice per
    /// family), whichever family a trace is narrowed to.
    pub(crate) fn stacks(self) -> usize {
        match self {
            Family::V4 | Family::V6Only => 1,
            Family::DualV4 | Family::V6 => 2,
        }
    }

    /// How the evidence names the family's ICMP (`ICMP port unreachable`, `ICMPv6 ...`).
    pub(crate) fn icmp(self) -> &'static str {
        match self {
            Family::V4 | Family::DualV4 => "ICMP",
            Family::V6 | Family::V6Only => "ICMPv6",
        }
    }

    /// The lab's IP family of this family's addresses.
    pub(crate) fn ip_family(self) -> IpFamily {
        match self {
            Family::V4 | Family::DualV4 => IpFamily::V4,
            Family::V6 | Family::V6Only => IpFamily::V6,
        }
    }

    /// The family's name in the report's `families` lists.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Family::V4 | Family::DualV4 => "IPv4",
            Family::V6 | Family::V6Only => "IPv6",
        }
    }
}

/// How strictly two families' flows must agree.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Flows {
    /// The same number of flows of each protocol, outcome and class.
    Counted,
    /// The same protocols, outcomes and classes: the scenario's traffic picks backends at random
    /// until each kind was seen, so how many attempts it took differs between runs.
    Kinds,
}

/// What a report says, with the addresses left out.
#[derive(Debug, PartialEq)]
struct Shape {
    service: String,
    root: Option<String>,
    severity: Option<String>,
    kube_proxy: (String, Option<bool>, bool),
    /// `kind port/protocol` of each frontend.
    frontends: Vec<String>,
    /// `port in_rules in_api ready local` of each endpoint.
    endpoints: Vec<String>,
    /// `protocol outcome class drop_reason backend?` of each flow, with how many.
    flows: BTreeMap<String, usize>,
    /// The kinds of evidence and warnings (sorted, each once).
    evidence_kinds: Vec<String>,
    warning_kinds: Vec<String>,
    lost_events: u64,
}

impl Shape {
    fn of(run: &Run, flows: Flows) -> Shape {
        let r = &run.report;
        let mut by_kind = BTreeMap::new();
        for f in &r.flows {
            let key = format!(
                "{} {} {} {:?} backend:{}",
                f.protocol,
                f.outcome,
                run.class_of(f),
                f.drop_reason,
                f.backend.is_some()
            );
            *by_kind.entry(key).or_insert(0) += 1;
        }
        if flows == Flows::Kinds {
            by_kind.values_mut().for_each(|n| *n = 1);
        }
        let mut frontends: Vec<String> = r
            .frontends
            .iter()
            .map(|f| format!("{} {}/{}", f.kind, f.port, f.protocol))
            .collect();
        frontends.sort();
        let mut endpoints: Vec<String> = r
            .endpoints
            .iter()
            .map(|e| format!("{} {} {:?} {:?} {:?}", e.port, e.in_rules, e.in_api, e.ready, e.local))
            .collect();
        endpoints.sort();
        // kube-proxy's /healthz is read once per run, whatever the family: a slow answer on a
        // busy machine (a `kube_proxy` warning, repeated as a `warning: ...` evidence line) says
        // nothing about the family traced.
        let env_warning = |kind: &str, content: &str| kind == "kube_proxy" && content.starts_with("warning: ");
        // Which kinds of evidence, not how many lines: a rule line per backend the flows reached,
        // and each backend is picked at random.
        let mut evidence_kinds: Vec<String> = r
            .evidence
            .iter()
            .filter(|e| !env_warning(&e.kind, &e.content))
            .map(|e| e.kind.clone())
            .collect();
        evidence_kinds.sort();
        evidence_kinds.dedup();
        let mut warning_kinds: Vec<String> = r
            .warnings
            .iter()
            .filter(|w| w.kind != "kube_proxy")
            .map(|w| w.kind.clone())
            .collect();
        warning_kinds.sort();
        warning_kinds.dedup();
        Shape {
            service: r.service.clone(),
            root: r.root_cause.as_ref().map(|c| c.class.clone()),
            severity: r.severity.clone(),
            kube_proxy: (
                r.kube_proxy.mode.clone(),
                r.kube_proxy.running,
                r.kube_proxy.rules_present,
            ),
            frontends,
            endpoints,
            flows: by_kind,
            evidence_kinds,
            warning_kinds,
            lost_events: r.lost_events,
        }
    }
}

/// Runs `body` over IPv6 and then over IPv4 on the same (dual-stack) lab spec, each with its own
/// assertions, and checks the two reports agree: the verdict, severity, the frontends' and
/// endpoints' kinds and states, the flows' outcomes and classes (and counts, per `flows`), the
/// kinds of evidence and warnings. Only the addresses may differ, and each report saw its own
/// family alone.
///
/// The VM guests set `D8_E2E_COMPARE_FAMILIES=0`: there the IPv6 run alone is made and checked
/// (its own assertions, the family it saw), and a line says the comparison was left to the host
/// suite, which makes it for every scenario in both modes. A guest proves what its kernel does
/// with IPv6; the IPv4 half would re-prove `scenarios::` at twice the emulated time.
pub(crate) fn across_families(flows: Flows, body: impl Fn(Family) -> Run) {
    let v6 = body(Family::V6);
    if std::env::var("D8_E2E_COMPARE_FAMILIES").as_deref() == Ok("0") {
        if !v6.report.flows.is_empty() {
            assert_eq!(v6.report.families.seen, [Family::V6.name()], "{}", v6.context);
        }
        eprintln!(
            "NOT COMPARED with IPv4 here (D8_E2E_COMPARE_FAMILIES=0; the host suite compares): {}",
            std::thread::current().name().unwrap_or("?")
        );
        return;
    }
    let v4 = body(Family::DualV4);
    same_beyond_addresses(flows, &v6, &v4);
}

/// Each run saw its own family alone, and the two reports agree beyond their addresses.
fn same_beyond_addresses(flows: Flows, v6: &Run, v4: &Run) {
    for run in [v6, v4] {
        if !run.report.flows.is_empty() {
            assert_eq!(run.report.families.seen, [run.family.name()], "{}", run.context);
        }
    }
    let (s6, s4) = (Shape::of(v6, flows), Shape::of(v4, flows));
    assert_eq!(
        s6, s4,
        "the IPv6 report (left) and the IPv4 report (right) differ beyond their addresses\n=== IPv6: {}\n=== IPv4: {}",
        v6.context, v4.context
    );
}

/// Runs `body` on an IPv6-only node ([`Family::V6Only`]) and then on the IPv4 single-stack one
/// ([`Family::V4`]), and checks the two reports agree as [`across_families`] does. The IPv6-only
/// report must also name IPv6 as the Service's only family and say nothing of IPv4: no `IPv4`,
/// no IPv4 address, in any address, verdict, evidence, warning or mitigation.
pub(crate) fn across_stacks(flows: Flows, body: impl Fn(Family) -> Run) {
    let v6 = on_ipv6_only(body(Family::V6Only));
    let v4 = body(Family::V4);
    same_beyond_addresses(flows, &v6, &v4);
}

/// Checks a run on an IPv6-only node: the Service's one family is IPv6, its flows (if any) were
/// IPv6 ones, and the report says nothing of IPv4.
pub(crate) fn on_ipv6_only(run: Run) -> Run {
    assert_eq!(run.family, Family::V6Only, "{}", run.context);
    assert_eq!(run.report.families.configured, ["IPv6"], "{}", run.context);
    if !run.report.flows.is_empty() {
        assert_eq!(run.report.families.seen, ["IPv6"], "{}", run.context);
    }
    claims_nothing_of_ipv4(&run);
    run
}

/// Panics if any text of an IPv6-only node's report names IPv4 or an IPv4 address (loopback's
/// aside: kube-proxy's /healthz and /metrics are read there).
fn claims_nothing_of_ipv4(run: &Run) {
    let r = &run.report;
    let mut texts: Vec<&str> = vec![r.service.as_str()];
    texts.extend(r.families.configured.iter().chain(&r.families.seen).map(String::as_str));
    texts.extend(r.root_cause.iter().map(|c| c.detail.as_str()));
    texts.extend(r.evidence.iter().map(|e| e.content.as_str()));
    texts.extend(r.warnings.iter().map(|w| w.message.as_str()));
    texts.extend(
        r.mitigation
            .iter()
            .flat_map(|m| [m.immediate.as_str(), m.long_term.as_str()]),
    );
    texts.extend(r.frontends.iter().map(|f| f.ip.as_str()));
    texts.extend(r.endpoints.iter().map(|e| e.ip.as_str()));
    for f in &r.flows {
        texts.push(&f.client);
        texts.extend(f.frontend.iter().chain(&f.backend).map(String::as_str));
    }
    for text in texts {
        // Whole dotted quads only: kube-proxy's nftables chain names write an IPv6 endpoint with
        // `.` for `:` (`fd00.10.244.1..12`), which is no IPv4 address.
        let quad = text
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .filter_map(|t| t.parse::<Ipv4Addr>().ok())
            .find(|ip| !ip.is_loopback());
        assert!(
            !text.contains("IPv4") && quad.is_none(),
            "the IPv6-only node's report names IPv4 or an IPv4 address ({quad:?}) in {text:?}; {}",
            run.context
        );
    }
}
