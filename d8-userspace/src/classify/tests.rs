//! Classifier tests: literal flows and models, at least one per class, plus overlapping incidents
//! and the `--no-k8s` cases.

use std::net::{IpAddr, SocketAddr};

use super::*;
use crate::flows::{Drop, Flow, Handshake, Hook, IcmpError, Outcome, Peer, Reset};
use crate::kernel::host::ConntrackStats;
use crate::model::k8s::minor_version;
use crate::model::{
    ApiFacts, Endpoint, Frontend, FrontendKind, IpFamily, KubeProxyStatus, ProbeKind, ProbePort, Protocol, ProxyMode,
    RuleFacts, RuleRef, RuleSource, Service, ServiceModel, ServiceRef,
};
use crate::report::{EvidenceKind, Format, Runbook, Severity, VerdictClass};

const SVC_CHAIN: &str = "KUBE-SVC-EXAMPLEHASH00001";
const CLUSTER_IP: &str = "10.96.0.10:80";
const NODE_PORT: &str = "10.0.0.1:30080";
const NODE_IP: &str = "10.0.0.1";
const POD_A: &str = "10.1.0.7:8080";
const POD_B: &str = "10.1.0.8:8080";
const CLIENT: &str = "10.1.0.5:41234";

fn target() -> ServiceRef {
    ServiceRef {
        namespace: "shop".into(),
        name: "web".into(),
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn iptables(name: &str, text: &str) -> RuleRef {
    RuleRef {
        source: RuleSource::Iptables,
        name: name.into(),
        text: text.into(),
    }
}

fn endpoint(at: &str, sep: &str, pod: &str, api: bool) -> Endpoint {
    let a = addr(at);
    Endpoint {
        ip: a.ip(),
        port: a.port(),
        protocol: Protocol::Tcp,
        port_name: "http".into(),
        in_rules: true,
        in_api: api.then_some(true),
        ready: api.then_some(true),
        local: api.then_some(true),
        node: api.then(|| "node-1".to_owned()),
        pod: api.then(|| format!("shop/{pod}")),
        weight: Some(0.5),
        rule: Some(iptables(
            sep,
            &format!("-A {sep} -p tcp -m comment --comment \"shop/web:http\" -m tcp -j DNAT --to-destination {at}"),
        )),
    }
}

/// shop/web with a ClusterIP and a NodePort, two endpoints in the rules (and in the API when `api`),
/// kube-proxy healthy, on node-1 (10.0.0.1).
fn model(api: bool) -> ServiceModel {
    let cluster = addr(CLUSTER_IP);
    let mut svc = Service::new(target());
    svc.frontends = vec![
        Frontend {
            kind: FrontendKind::ClusterIp,
            ip: cluster.ip(),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: Some(iptables(
                "KUBE-SERVICES",
                &format!(
                    "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web:http cluster IP\" -m tcp --dport 80 -j {SVC_CHAIN}"
                ),
            )),
        },
        Frontend {
            kind: FrontendKind::NodePort,
            ip: ip("0.0.0.0"),
            port: 30080,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: Some(iptables(
                "KUBE-NODEPORTS",
                "-A KUBE-NODEPORTS -p tcp -m comment --comment \"shop/web:http\" -m tcp --dport 30080 -j KUBE-EXT-EXAMPLEHASH00001",
            )),
        },
    ];
    svc.endpoints = vec![
        endpoint(POD_A, "KUBE-SEP-AAAAAAAAAAAAAAAA", "web-a", api),
        endpoint(POD_B, "KUBE-SEP-BBBBBBBBBBBBBBBB", "web-b", api),
    ];
    svc.rules = RuleFacts {
        present: true,
        ..RuleFacts::default()
    };
    if api {
        svc.api = ApiFacts {
            exists: Some(true),
            service_type: Some("NodePort".into()),
            external_traffic_policy_local: Some(false),
            internal_traffic_policy_local: Some(false),
            session_affinity_client_ip: Some(false),
            proxied: Some(true),
            terminating_serving: Vec::new(),
            topology: None,
            last_change_unix: None,
            ip_families: vec![IpFamily::V4],
        };
    }
    ServiceModel {
        node: Some("node-1".into()),
        kube_proxy: KubeProxyStatus {
            mode: ProxyMode::Iptables,
            running: Some(true),
            version: Some("v1.31.2".into()),
            healthz_ok: Some(true),
            last_sync_age_secs: Some(3.0),
            rules_present: true,
            healthz_status: Some(200),
            sync_pending_secs: Some(0.0),
            last_sync_unix: None,
            problems: Vec::new(),
        },
        services: vec![svc],
        node_ips: vec![ip(NODE_IP)],
        api_server_version: api.then(|| "v1.31.0".to_owned()),
        ..ServiceModel::default()
    }
}

fn ctx(api: bool) -> Context {
    Context {
        api_consulted: api,
        traced: true,
        duration_ms: Some(10_000),
        ..Context::default()
    }
}

/// A TCP flow from CLIENT to `frontend`, translated to `backend`, with nothing seen yet.
fn flow(id: u64, frontend: Option<&str>, backend: Option<&str>) -> Flow {
    Flow {
        id,
        protocol: Protocol::Tcp,
        client: addr(CLIENT),
        frontend: frontend.map(addr),
        backend: backend.map(addr),
        snat_client: None,
        no_dnat: false,
        entry_hook: Some(Hook::Prerouting),
        first_ns: 1_000_000_000,
        last_ns: 1_002_000_000,
        handshake: Handshake {
            request: true,
            ..Handshake::default()
        },
        ct_status: 0,
        resets: Vec::new(),
        drops: Vec::new(),
        icmp_errors: Vec::new(),
        socket_states: Vec::new(),
        outcome: Outcome::Timeout,
    }
}

fn established(id: u64, backend: &str) -> Flow {
    let mut f = flow(id, Some(CLUSTER_IP), Some(backend));
    f.handshake.reply = true;
    f.outcome = Outcome::Established;
    f
}

fn has_evidence(v: &Verdict, kind: EvidenceKind, needle: &str) -> bool {
    v.evidence.iter().any(|e| e.kind == kind && e.content.contains(needle))
}

fn evidence_dump(v: &Verdict) -> String {
    v.evidence
        .iter()
        .map(|e| format!("[{}] {}\n", e.kind.as_str(), e.content))
        .collect()
}

#[test]
fn healthy_when_the_reply_is_seen_after_dnat() {
    let flows = [established(1, POD_A), established(2, POD_B)];
    let v = classify(&target(), &flows, &model(true), &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
    assert!(v.flows.iter().all(|f| f.class == VerdictClass::Healthy));
    assert_eq!(v.severity, Severity::None);
    assert!(v.causes.is_empty());
    assert!(
        v.root_cause
            .detail
            .contains("2 flows to shop/web traced, all completed"),
        "{}",
        v.root_cause.detail
    );
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "KUBE-SEP-AAAAAAAAAAAAAAAA"),
        "{}",
        evidence_dump(&v)
    );
}

fn no_endpoints_model(api_ready: bool) -> ServiceModel {
    let mut m = model(true);
    let svc = &mut m.services[0];
    svc.rules.no_endpoints = vec![iptables(
        "KUBE-SERVICES",
        "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"shop/web:http has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
    )];
    for e in &mut svc.endpoints {
        e.in_rules = false;
        e.rule = None;
        e.ready = Some(api_ready);
    }
    m
}

fn rejected_flow(id: u64) -> Flow {
    let mut f = flow(id, Some(CLUSTER_IP), None);
    f.outcome = Outcome::Rejected;
    f.icmp_errors = vec![IcmpError {
        icmp_type: 3,
        icmp_code: 3,
        from: ip(NODE_IP),
        at_ms: 0,
    }];
    f
}

#[test]
fn no_endpoints_from_reject_rule_icmp_and_api() {
    let v = classify(&target(), &[rejected_flow(1)], &no_endpoints_model(false), &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::NoEndpoints);
    assert_eq!(v.flows[0].class, VerdictClass::NoEndpoints);
    assert_eq!(v.severity, Severity::High);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Rules,
            "has no endpoints\" -m tcp --dport 80 -j REJECT"
        ),
        "{dump}"
    );
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Trace,
            "ICMP port unreachable from 10.0.0.1 to client 10.1.0.5:41234 for 10.96.0.10:80"
        ),
        "{dump}"
    );
    assert!(
        has_evidence(&v, EvidenceKind::Api, "list no ready endpoints (2 not ready)"),
        "{dump}"
    );
    assert!(
        v.mitigation.immediate.contains("kubectl -n shop describe service web"),
        "{:?}",
        v.mitigation
    );
}

#[test]
fn reject_while_the_api_has_ready_endpoints_is_rules_missing() {
    let v = classify(&target(), &[rejected_flow(1)], &no_endpoints_model(true), &ctx(true));
    assert_eq!(
        v.root_cause.class,
        VerdictClass::KubeProxyRulesMissing,
        "{:?}",
        v.causes
    );
    assert_eq!(v.flows[0].class, VerdictClass::KubeProxyRulesMissing);
    assert!(v.root_cause.detail.contains("not synced"), "{}", v.root_cause.detail);
    assert!(
        v.mitigation
            .immediate
            .contains("delete pod -l k8s-app=kube-proxy --field-selector spec.nodeName=node-1")
    );
}

#[test]
fn stale_endpoint_when_the_dnat_target_is_absent_from_endpointslices() {
    let mut m = model(true);
    let e = &mut m.services[0].endpoints[1];
    e.in_api = Some(false);
    e.ready = None;
    e.pod = None;
    let flows = [established(1, POD_A), flow(2, Some(CLUSTER_IP), Some(POD_B))];
    let v = classify(&target(), &flows, &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::StaleEndpoint);
    assert_eq!(v.flows[1].class, VerdictClass::StaleEndpoint);
    assert_eq!(v.flows[0].class, VerdictClass::Healthy);
    assert_eq!(v.severity, Severity::Medium);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "KUBE-SEP-BBBBBBBBBBBBBBBB"),
        "{dump}"
    );
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Api,
            "10.1.0.8:8080 is not in the Service's EndpointSlices"
        ),
        "{dump}"
    );
}

/// shop/web dual-stack: `model(true)` plus an IPv6 ClusterIP and two IPv6 endpoints, the second
/// gone from the API (stale).
fn dual_stack_model() -> ServiceModel {
    let mut m = model(true);
    let svc = &mut m.services[0];
    svc.api.ip_families = vec![IpFamily::V4, IpFamily::V6];
    let mut fe = svc.frontends[0].clone();
    fe.ip = ip("fd00:10:96::10");
    svc.frontends.push(fe);
    svc.endpoints.push(endpoint(
        "[fd00:10:1::7]:8080",
        "KUBE-SEP-CCCCCCCCCCCCCCCC",
        "web-a",
        true,
    ));
    let mut gone = endpoint("[fd00:10:1::8]:8080", "KUBE-SEP-DDDDDDDDDDDDDDDD", "web-b", true);
    gone.in_api = Some(false);
    gone.ready = None;
    gone.pod = None;
    svc.endpoints.push(gone);
    m
}

fn v6_flow(id: u64, backend: &str, answered: bool) -> Flow {
    let mut f = flow(id, Some("[fd00:10:96::10]:80"), Some(backend));
    f.client = addr("[fd00:10:1::5]:41234");
    if answered {
        f.handshake.reply = true;
        f.outcome = Outcome::Established;
    }
    f
}

#[test]
fn a_dual_stack_service_failing_over_ipv6_only_is_not_healthy_and_names_the_family() {
    let flows = [
        established(1, POD_A),
        established(2, POD_B),
        v6_flow(3, "[fd00:10:1::7]:8080", true),
        v6_flow(4, "[fd00:10:1::8]:8080", false),
    ];
    let v = classify(&target(), &flows, &dual_stack_model(), &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::StaleEndpoint, "{}", evidence_dump(&v));
    assert!(
        v.root_cause.detail.ends_with("(1 flow, over IPv6)"),
        "{}",
        v.root_cause.detail
    );
    // An IPv6 endpoint is written `[ip]:port`, in the detail and the API's evidence alike.
    assert!(
        v.root_cause
            .detail
            .starts_with("kube-proxy sends shop/web traffic to [fd00:10:1::8]:8080"),
        "{}",
        v.root_cause.detail
    );
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Api,
            "[fd00:10:1::8]:8080 is not in the Service's EndpointSlices"
        ),
        "{}",
        evidence_dump(&v)
    );
    assert_eq!(
        v.flows.iter().map(|f| f.class).collect::<Vec<_>>(),
        [
            VerdictClass::Healthy,
            VerdictClass::Healthy,
            VerdictClass::Healthy,
            VerdictClass::StaleEndpoint
        ]
    );
}

#[test]
fn a_dual_stack_service_healthy_over_one_family_says_the_other_was_not_traced() {
    let mut m = dual_stack_model();
    m.services[0].endpoints.pop();
    let v = classify(&target(), &[established(1, POD_A)], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Trace,
            "shop/web is dual-stack and no IPv6 flow was traced"
        ),
        "{}",
        evidence_dump(&v)
    );
    // Both families traced: no such note.
    let flows = [established(1, POD_A), v6_flow(2, "[fd00:10:1::7]:8080", true)];
    let v = classify(&target(), &flows, &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
    assert!(
        !has_evidence(&v, EvidenceKind::Trace, "is dual-stack"),
        "{}",
        evidence_dump(&v)
    );
}

#[test]
fn stale_endpoint_when_the_dnat_target_is_not_ready() {
    let mut m = model(true);
    m.services[0].endpoints[0].ready = Some(false);
    let v = classify(&target(), &[flow(1, Some(CLUSTER_IP), Some(POD_A))], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::StaleEndpoint);
    assert!(
        v.root_cause.detail.contains("pod shop/web-a"),
        "{}",
        v.root_cause.detail
    );
    assert!(
        v.mitigation.immediate.contains("kubectl -n shop get pod web-a -o wide"),
        "{:?}",
        v.mitigation
    );
    assert_eq!(v.severity, Severity::High, "the only flow failed");
}

#[test]
fn no_k8s_stale_endpoint_when_a_dnat_target_never_answers() {
    let mut f2 = flow(2, Some(CLUSTER_IP), Some(POD_B));
    f2.handshake.retransmits = 3;
    let flows = [established(1, POD_A), f2];
    let v = classify(&target(), &flows, &model(false), &ctx(false));
    assert_eq!(v.flows[1].class, VerdictClass::StaleEndpoint);
    assert_eq!(v.root_cause.class, VerdictClass::StaleEndpoint);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::Trace, "no reply after 3 retransmits"),
        "{dump}"
    );
    assert!(
        has_evidence(&v, EvidenceKind::Api, "a hung pod looks the same"),
        "{dump}"
    );
    // --no-k8s says what it cannot prove.
    assert!(
        has_evidence(&v, EvidenceKind::Api, "Kubernetes API not consulted"),
        "{dump}"
    );
    assert!(has_evidence(&v, EvidenceKind::Api, "cannot be proven"), "{dump}");
}

#[test]
fn no_k8s_target_that_answered_other_flows_is_a_backend_timeout() {
    let flows = [established(1, POD_A), flow(2, Some(CLUSTER_IP), Some(POD_A))];
    let v = classify(&target(), &flows, &model(false), &ctx(false));
    assert_eq!(v.flows[1].class, VerdictClass::BackendTimeout);
}

#[test]
fn no_k8s_stale_endpoint_when_the_dnat_target_has_no_neighbour() {
    let mut f = flow(1, Some(CLUSTER_IP), Some(POD_B));
    f.outcome = Outcome::Dropped;
    f.drops = vec![Drop {
        reason: "NEIGH_FAILED".into(),
        after_hook: Some(Hook::Postrouting),
        before_conntrack: false,
        at_ms: 3000,
    }];
    let v = classify(&target(), &[f], &model(false), &ctx(false));
    assert_eq!(v.root_cause.class, VerdictClass::StaleEndpoint);
    assert!(
        has_evidence(&v, EvidenceKind::Trace, "NEIGH_FAILED"),
        "{}",
        evidence_dump(&v)
    );
    // ICMP host unreachable from the node says the same.
    let mut f = flow(2, Some(CLUSTER_IP), Some(POD_B));
    f.icmp_errors = vec![IcmpError {
        icmp_type: 3,
        icmp_code: 1,
        from: ip(NODE_IP),
        at_ms: 3000,
    }];
    let v = classify(&target(), &[f], &model(false), &ctx(false));
    assert_eq!(v.flows[0].class, VerdictClass::StaleEndpoint);
    assert!(
        v.flows[0].fact.contains("ICMP host unreachable from 10.0.0.1"),
        "{}",
        v.flows[0].fact
    );
}

fn etp_model() -> ServiceModel {
    let mut m = model(true);
    let svc = &mut m.services[0];
    svc.api.external_traffic_policy_local = Some(true);
    for e in &mut svc.endpoints {
        e.local = Some(false);
        e.node = Some("node-2".into());
    }
    svc.rules.no_local_endpoints = vec![iptables(
        "KUBE-EXTERNAL-SERVICES",
        "-A KUBE-EXTERNAL-SERVICES -p tcp -m comment --comment \"shop/web:http has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP",
    )];
    m
}

#[test]
fn etp_local_drop_for_nodeport_traffic() {
    let mut f = flow(1, Some(NODE_PORT), None);
    f.client = addr("192.0.2.10:50000");
    f.outcome = Outcome::Dropped;
    f.drops = vec![Drop {
        reason: "NETFILTER_DROP".into(),
        after_hook: Some(Hook::Prerouting),
        before_conntrack: false,
        at_ms: 0,
    }];
    let v = classify(&target(), &[f, established(2, POD_A)], &etp_model(), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::EtpLocalNoLocalEndpoints);
    assert_eq!(v.flows[1].class, VerdictClass::Healthy, "ClusterIP traffic still works");
    assert_eq!(v.root_cause.class, VerdictClass::EtpLocalNoLocalEndpoints);
    assert_eq!(v.severity, Severity::Medium);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Rules,
            "has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp --dport 30080 -j DROP"
        ),
        "{dump}"
    );
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Api,
            "ready endpoints on node node-1: 0, on other nodes: 2"
        ),
        "{dump}"
    );
    assert!(
        v.mitigation.immediate.contains("externalTrafficPolicy\":\"Cluster"),
        "{:?}",
        v.mitigation
    );
}

fn probe_flow(id: u64) -> Flow {
    let mut f = flow(id, None, Some(POD_A));
    f.client = addr("10.0.0.1:52000");
    f.entry_hook = Some(Hook::Output);
    f.handshake.reply = true;
    f.resets = vec![Reset {
        by: Peer::Client,
        seen_by: "packet".into(),
        at_ms: 2,
    }];
    f.outcome = Outcome::Reset;
    f
}

fn with_probe_ports(mut m: ServiceModel) -> ServiceModel {
    m.probe_ports = vec![ProbePort {
        pod: "shop/web-a".into(),
        ip: ip("10.1.0.7"),
        port: 8080,
        probe: ProbeKind::Readiness,
        node: Some("node-1".into()),
    }];
    m
}

#[test]
fn probe_rst_is_benign_and_never_the_root_cause() {
    let flows = [probe_flow(1), probe_flow(2), established(3, POD_A)];
    let v = classify(&target(), &flows, &with_probe_ports(model(true)), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::ProbeRst);
    assert_eq!(v.flows[1].class, VerdictClass::ProbeRst);
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
    assert_eq!(v.severity, Severity::None);
    assert!(
        v.root_cause.detail.contains("2 kubelet probe resets (normal)"),
        "{}",
        v.root_cause.detail
    );
    assert!(
        v.flows[0].fact.contains("readiness probe of shop/web-a"),
        "{}",
        v.flows[0].fact
    );
}

#[test]
fn only_probe_flows_give_a_healthy_verdict() {
    let v = classify(&target(), &[probe_flow(1)], &with_probe_ports(model(true)), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::ProbeRst);
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
}

#[test]
fn a_long_node_connection_to_a_probe_port_is_not_a_probe() {
    let mut f = probe_flow(1);
    f.last_ns = f.first_ns + 60_000_000_000;
    let v = classify(&target(), &[f], &with_probe_ports(model(true)), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::Healthy);
}

fn conntrack_dropped_flow(id: u64) -> Flow {
    let mut f = flow(id, Some(CLUSTER_IP), None);
    f.outcome = Outcome::Dropped;
    f.drops = vec![Drop {
        reason: "NETFILTER_DROP".into(),
        after_hook: Some(Hook::Prerouting),
        before_conntrack: true,
        at_ms: 0,
    }];
    f
}

#[test]
fn conntrack_full_from_dropped_first_packet_rising_counter_and_count_near_max() {
    let mut c = ctx(true);
    c.conntrack = Some(ConntrackStats {
        count: Some(262_100),
        max: Some(262_144),
        drop_delta: Some(420),
    });
    let flows = [conntrack_dropped_flow(1), established(2, POD_A)];
    let v = classify(&target(), &flows, &model(true), &c);
    assert_eq!(v.flows[0].class, VerdictClass::ConntrackFull);
    assert_eq!(v.root_cause.class, VerdictClass::ConntrackFull);
    assert_eq!(v.severity, Severity::High);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Conntrack,
            "nf_conntrack_count 262100 of nf_conntrack_max 262144"
        ),
        "{dump}"
    );
    assert!(has_evidence(&v, EvidenceKind::Conntrack, "rose by 420"), "{dump}");
    assert!(
        has_evidence(&v, EvidenceKind::Trace, "before conntrack created an entry"),
        "{dump}"
    );
    assert!(v.mitigation.immediate.contains("nf_conntrack_max"));
}

#[test]
fn a_drop_before_conntrack_with_quiet_counters_is_just_dropped() {
    let mut c = ctx(true);
    c.conntrack = Some(ConntrackStats {
        count: Some(1000),
        max: Some(262_144),
        drop_delta: Some(0),
    });
    let v = classify(&target(), &[conntrack_dropped_flow(1)], &model(true), &c);
    assert_eq!(v.flows[0].class, VerdictClass::Dropped, "{:?}", v.flows);
}

#[test]
fn kube_proxy_not_running() {
    let mut m = model(true);
    m.kube_proxy.running = Some(false);
    m.kube_proxy.healthz_ok = None;
    m.kube_proxy.healthz_status = None;
    m.kube_proxy.rules_present = false;
    m.services[0].rules.present = false;
    let mut f = flow(1, Some(CLUSTER_IP), None);
    f.no_dnat = true;
    let v = classify(&target(), &[f], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::KubeProxyNotRunning);
    assert_eq!(v.root_cause.class, VerdictClass::KubeProxyNotRunning);
    assert!(
        has_evidence(&v, EvidenceKind::KubeProxy, "no /healthz on 10256"),
        "{}",
        evidence_dump(&v)
    );
    assert!(v.mitigation.immediate.contains("--field-selector spec.nodeName=node-1"));
    // Rules missing is a consequence, ranked below.
    assert_eq!(v.causes[1].class, VerdictClass::KubeProxyRulesMissing, "{:?}", v.causes);
}

#[test]
fn kube_proxy_rules_missing_while_the_api_has_the_service() {
    let mut m = model(true);
    let svc = &mut m.services[0];
    svc.rules.present = false;
    for fe in &mut svc.frontends {
        fe.rule = None;
    }
    for e in &mut svc.endpoints {
        e.in_rules = false;
        e.rule = None;
    }
    m.kube_proxy.healthz_ok = Some(false);
    m.kube_proxy.healthz_status = Some(503);
    m.kube_proxy.sync_pending_secs = Some(900.0);
    let mut f = flow(1, Some(CLUSTER_IP), None);
    f.no_dnat = true;
    f.handshake.retransmits = 2;
    let v = classify(&target(), &[f], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::KubeProxyRulesMissing);
    assert_eq!(v.root_cause.class, VerdictClass::KubeProxyRulesMissing);
    assert!(
        v.root_cause
            .detail
            .contains("the API has shop/web but kube-proxy's rules lack it"),
        "{}",
        v.root_cause.detail
    );
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::KubeProxy, "/healthz on 10256 answered 503"),
        "{dump}"
    );
    assert!(
        has_evidence(&v, EvidenceKind::Api, "the API has Service shop/web"),
        "{dump}"
    );
    // The sync waiting 900 s is its own cause, named beside the flow-proven one.
    assert!(
        v.causes.iter().any(|c| c.class == VerdictClass::KubeProxyNotSynced
            && c.detail == "kube-proxy on node node-1 has not synced its rules for 900 s"),
        "{:?}",
        v.causes
    );
    assert!(
        has_evidence(&v, EvidenceKind::KubeProxy, "also (kube_proxy_not_synced)"),
        "{dump}"
    );
}

#[test]
fn ready_api_endpoints_missing_from_the_rules_are_rules_missing() {
    let mut m = model(true);
    let e = &mut m.services[0].endpoints[1];
    e.in_rules = false;
    e.rule = None;
    let v = classify(
        &target(),
        &[],
        &m,
        &Context {
            api_consulted: true,
            ..Context::default()
        },
    );
    assert_eq!(v.root_cause.class, VerdictClass::KubeProxyRulesMissing);
    assert!(
        has_evidence(&v, EvidenceKind::Api, "absent from kube-proxy's rules: 10.1.0.8:8080"),
        "{}",
        evidence_dump(&v)
    );
}

#[test]
fn ipvs_rules_missing_with_modules_missing_maps_to_the_ipvs_modules_domain() {
    let mut m = model(true);
    m.kube_proxy.mode = ProxyMode::Ipvs;
    m.kube_proxy.rules_present = false;
    m.warnings.push(crate::model::Warning::new(
        crate::model::WarningKind::IpvsModules,
        "/sys/module",
        "IPVS kernel module ip_vs_rr is not loaded",
    ));
    let report = crate::report::build(
        &target(),
        &[],
        &m,
        &Context {
            api_consulted: true,
            ..Context::default()
        },
    );
    assert_eq!(
        report.root_cause.as_ref().unwrap().class,
        VerdictClass::KubeProxyRulesMissing
    );
    let rb = Runbook::from_report(&report);
    assert!(rb.root_cause.starts_with("ipvs_modules — "), "{}", rb.root_cause);
    assert!(report.mitigation.unwrap().immediate.contains("modprobe"));
}

fn refused_flow(id: u64, backend: &str) -> Flow {
    let mut f = flow(id, Some(CLUSTER_IP), Some(backend));
    f.resets = vec![Reset {
        by: Peer::Backend,
        seen_by: "packet".into(),
        at_ms: 1,
    }];
    f.outcome = Outcome::Reset;
    f
}

#[test]
fn backend_refused_from_a_rst_after_dnat() {
    let v = classify(
        &target(),
        &[refused_flow(1, POD_A), established(2, POD_B)],
        &model(true),
        &ctx(true),
    );
    assert_eq!(v.flows[0].class, VerdictClass::BackendRefused);
    assert_eq!(v.root_cause.class, VerdictClass::BackendRefused);
    assert!(
        has_evidence(&v, EvidenceKind::Trace, "RST from backend 10.1.0.7:8080"),
        "{}",
        evidence_dump(&v)
    );
    assert!(
        v.mitigation.immediate.contains("kubectl -n shop logs web-a"),
        "{:?}",
        v.mitigation
    );
    assert_eq!(v.severity, Severity::Medium);
}

#[test]
fn udp_port_unreachable_from_the_backend_is_a_refusal() {
    let mut m = model(true);
    for e in &mut m.services[0].endpoints {
        e.protocol = Protocol::Udp;
    }
    let mut f = flow(1, Some(CLUSTER_IP), Some(POD_A));
    f.protocol = Protocol::Udp;
    f.icmp_errors = vec![IcmpError {
        icmp_type: 3,
        icmp_code: 3,
        from: ip("10.1.0.7"),
        at_ms: 1,
    }];
    let v = classify(&target(), &[f], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::BackendRefused);
    assert!(
        v.flows[0]
            .fact
            .contains("ICMP port unreachable from backend 10.1.0.7:8080"),
        "{}",
        v.flows[0].fact
    );
}

#[test]
fn backend_timeout_when_a_listed_ready_endpoint_does_not_answer() {
    let mut f = flow(1, Some(CLUSTER_IP), Some(POD_A));
    f.handshake.retransmits = 4;
    let v = classify(&target(), &[f], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::BackendTimeout);
    assert_eq!(v.root_cause.class, VerdictClass::BackendTimeout);
    assert_eq!(v.severity, Severity::High);
    assert!(
        v.root_cause.detail.contains("listed, ready endpoint"),
        "{}",
        v.root_cause.detail
    );
    assert!(v.mitigation.immediate.contains("kubectl -n shop describe pod web-a"));
}

#[test]
fn dropped_with_the_kernel_reason_after_dnat() {
    let mut f = flow(1, Some(CLUSTER_IP), Some(POD_A));
    f.outcome = Outcome::Dropped;
    f.drops = vec![Drop {
        reason: "NETFILTER_DROP".into(),
        after_hook: Some(Hook::Forward),
        before_conntrack: false,
        at_ms: 0,
    }];
    let v = classify(&target(), &[f], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::Dropped);
    assert_eq!(v.root_cause.class, VerdictClass::Dropped);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Trace,
            "dropped (NETFILTER_DROP) after forward after DNAT"
        ),
        "{}",
        evidence_dump(&v)
    );
}

/// A drop after the node's POSTROUTING (in the pod's own namespace, or at the egress device) is the
/// backend's silence, not the node's filtering; a TC program's drop there is still the node's.
#[test]
fn a_drop_beyond_the_nodes_postrouting_is_no_answer_from_the_backend() {
    let dropped_beyond = |id: u64, reason: &str| {
        let mut f = flow(id, Some(CLUSTER_IP), Some(POD_A));
        f.outcome = Outcome::Dropped;
        f.drops = vec![Drop {
            reason: reason.into(),
            after_hook: Some(Hook::Postrouting),
            before_conntrack: true,
            at_ms: 0,
        }];
        f
    };
    // With the API: a listed, ready pod that drops what it receives.
    let v = classify(
        &target(),
        &[dropped_beyond(1, "NETFILTER_DROP")],
        &model(true),
        &ctx(true),
    );
    assert_eq!(v.flows[0].class, VerdictClass::BackendTimeout, "{}", v.flows[0].fact);
    assert!(
        v.flows[0]
            .fact
            .contains("dropped (NETFILTER_DROP) after leaving the node's netfilter path"),
        "{}",
        v.flows[0].fact
    );
    // Without it: a target that never answered.
    let v = classify(
        &target(),
        &[dropped_beyond(1, "QDISC_DROP")],
        &model(false),
        &ctx(false),
    );
    assert_eq!(v.flows[0].class, VerdictClass::StaleEndpoint, "{}", v.flows[0].fact);
    // The TC hook set knows no last hook: a packet without the node's conntrack entry was scrubbed
    // crossing into the pod's namespace.
    let mut f = dropped_beyond(1, "NETFILTER_DROP");
    f.drops[0].after_hook = None;
    let v = classify(&target(), &[f], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::BackendTimeout, "{}", v.flows[0].fact);
    // A CNI's TC program dropping at the pod's interface is a node drop.
    let v = classify(&target(), &[dropped_beyond(1, "TC_EGRESS")], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::Dropped, "{}", v.flows[0].fact);
}

#[test]
fn version_skew_is_the_root_cause_only_when_nothing_else_explains_failures() {
    let mut m = model(true);
    m.kube_proxy.version = Some("v1.28.4".into());
    let v = classify(&target(), &[established(1, POD_A)], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::KubeProxyVersionSkew);
    assert_eq!(v.severity, Severity::Low);
    assert!(has_evidence(&v, EvidenceKind::Api, "API server version v1.31.0"));

    let v = classify(&target(), &[refused_flow(1, POD_A)], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::BackendRefused);
    assert_eq!(v.causes[1].class, VerdictClass::KubeProxyVersionSkew);
    assert!(
        has_evidence(&v, EvidenceKind::KubeProxy, "also (kube_proxy_version_skew)"),
        "{}",
        evidence_dump(&v)
    );

    // One minor apart is supported.
    m.kube_proxy.version = Some("v1.30.9".into());
    let v = classify(&target(), &[established(1, POD_A)], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
}

#[test]
fn mixed_incident_ranks_causes() {
    // Pod web-b is gone (API dropped it, rules still DNAT to it), web-a refuses, kubelet probes
    // reset, one flow completed.
    let mut m = with_probe_ports(model(true));
    let e = &mut m.services[0].endpoints[1];
    e.in_api = Some(false);
    e.ready = None;
    let flows = [
        probe_flow(1),
        refused_flow(2, POD_A),
        flow(3, Some(CLUSTER_IP), Some(POD_B)),
        flow(4, Some(CLUSTER_IP), Some(POD_B)),
        established(5, POD_A),
        probe_flow(6),
    ];
    let v = classify(&target(), &flows, &m, &ctx(true));
    let classes: Vec<_> = v.flows.iter().map(|f| f.class).collect();
    use VerdictClass as C;
    assert_eq!(
        classes,
        [
            C::ProbeRst,
            C::BackendRefused,
            C::StaleEndpoint,
            C::StaleEndpoint,
            C::Healthy,
            C::ProbeRst
        ]
    );
    assert_eq!(v.root_cause.class, C::StaleEndpoint);
    let ranked: Vec<_> = v.causes.iter().map(|c| (c.class, c.flows)).collect();
    assert_eq!(ranked, [(C::StaleEndpoint, 2), (C::BackendRefused, 1)]);
    assert!(v.root_cause.detail.ends_with("(2 flows)"), "{}", v.root_cause.detail);
    assert!(v.causes[1].detail.ends_with("(1 flow)"), "{}", v.causes[1].detail);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::Trace, "also (backend_refused)"),
        "{dump}"
    );
    assert!(
        has_evidence(&v, EvidenceKind::Trace, "2 connections closed by RST: kubelet probes"),
        "{dump}"
    );
    assert_eq!(v.severity, Severity::Medium, "some flows still work");
}

#[test]
fn explain_healthy_when_rules_and_api_agree() {
    let v = classify(
        &target(),
        &[],
        &model(true),
        &Context {
            api_consulted: true,
            ..Context::default()
        },
    );
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
    assert!(
        v.root_cause.detail.contains("rules and API agree"),
        "{}",
        v.root_cause.detail
    );
    // Healthy says what was checked.
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "-j KUBE-SVC-EXAMPLEHASH00001"),
        "{dump}"
    );
    assert!(
        has_evidence(&v, EvidenceKind::Api, "list 2 ready endpoints, 2 of them DNAT targets"),
        "{dump}"
    );
    assert!(
        has_evidence(
            &v,
            EvidenceKind::KubeProxy,
            "kube-proxy running on node node-1, /healthz 200"
        ),
        "{dump}"
    );
    assert!(v.flows.is_empty());
}

#[test]
fn explain_finds_stale_no_endpoints_and_etp_from_rules_and_api() {
    let explain = Context {
        api_consulted: true,
        ..Context::default()
    };
    let mut m = model(true);
    m.services[0].endpoints[0].in_api = Some(false);
    assert_eq!(
        classify(&target(), &[], &m, &explain).root_cause.class,
        VerdictClass::StaleEndpoint
    );
    assert_eq!(
        classify(&target(), &[], &no_endpoints_model(false), &explain)
            .root_cause
            .class,
        VerdictClass::NoEndpoints
    );
    let v = classify(&target(), &[], &etp_model(), &explain);
    assert_eq!(v.root_cause.class, VerdictClass::EtpLocalNoLocalEndpoints);
    assert_eq!(v.severity, Severity::Medium);
}

#[test]
fn explain_without_the_api_rests_on_rules_and_says_so() {
    let mut m = no_endpoints_model(false);
    for e in &mut m.services[0].endpoints {
        e.in_api = None;
        e.ready = None;
    }
    m.services[0].api = ApiFacts::default();
    let v = classify(&target(), &[], &m, &Context::default());
    assert_eq!(v.root_cause.class, VerdictClass::NoEndpoints);
    assert!(has_evidence(
        &v,
        EvidenceKind::Api,
        "no_endpoints rests on the REJECT rule alone"
    ));
}

#[test]
fn build_report_fills_flow_classes_and_the_verdict() {
    let flows = [refused_flow(1, POD_A), established(2, POD_B)];
    let mut c = ctx(true);
    c.lost_events = 7;
    let report = crate::report::build(&target(), &flows, &model(true), &c);
    assert_eq!(report.flows[0].class, Some(VerdictClass::BackendRefused));
    assert_eq!(report.flows[1].class, Some(VerdictClass::Healthy));
    assert_eq!(report.lost_events, 7);
    assert_eq!(report.endpoints.len(), 2);
    assert_eq!(report.frontends.len(), 2);
    assert_eq!(report.node.as_deref(), Some("node-1"));
    assert!(
        report
            .evidence
            .iter()
            .any(|e| e.content.contains("7 kernel events lost"))
    );
    let mut out = Vec::new();
    crate::report::render(&report, Format::Json, &mut out).unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["root_cause"]["class"], "backend_refused");
    assert_eq!(json["flows"][0]["class"], "backend_refused");
}

/// Flow fixtures (`testdata/flows/*.json`), hand-written in the tracer's `Flow` format: `flows`,
/// the expected class of each (`expect`) and `root_cause`; with their own `model` and `context`
/// when they carry one, else the literal model of these tests with the API consulted.
#[test]
fn recorded_flow_fixtures_classify_as_recorded() {
    #[derive(serde::Deserialize)]
    struct FixtureConntrack {
        count: Option<u64>,
        max: Option<u64>,
        drop_delta: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct FixtureContext {
        api_consulted: bool,
        traced: bool,
        conntrack: Option<FixtureConntrack>,
        lost_events: u64,
    }
    #[derive(serde::Deserialize)]
    struct Fixture {
        flows: Vec<Flow>,
        expect: Vec<VerdictClass>,
        root_cause: VerdictClass,
        model: Option<ServiceModel>,
        context: Option<FixtureContext>,
    }
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/flows");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let fx: Fixture = serde_json::from_str(&std::fs::read_to_string(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let model = fx.model.unwrap_or_else(|| with_probe_ports(model(true)));
        let context = match fx.context {
            Some(c) => Context {
                api_consulted: c.api_consulted,
                traced: c.traced,
                lost_events: c.lost_events,
                conntrack: c.conntrack.map(|x| ConntrackStats {
                    count: x.count,
                    max: x.max,
                    drop_delta: x.drop_delta,
                }),
                ..Context::default()
            },
            None => ctx(true),
        };
        let v = classify(&target(), &fx.flows, &model, &context);
        let got: Vec<_> = v.flows.iter().map(|f| f.class).collect();
        assert_eq!(got, fx.expect, "{}", path.display());
        assert_eq!(v.root_cause.class, fx.root_cause, "{}", path.display());
        seen += 1;
    }
    assert!(seen >= 6, "fixtures missing in {dir}: {seen}");
}

#[test]
fn an_untranslated_flow_to_a_frontend_the_rules_dnat_is_rules_missing() {
    let mut f = flow(1, Some(CLUSTER_IP), None);
    f.no_dnat = true;
    f.handshake.retransmits = 2;
    let v = classify(&target(), &[f], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::KubeProxyRulesMissing);
    assert!(
        v.root_cause.detail.contains("not in the packet's path"),
        "{}",
        v.root_cause.detail
    );
}

#[test]
fn a_frontend_nobody_knows_is_not_claimed_missing() {
    let mut f = flow(1, Some("10.96.9.9:80"), None);
    f.no_dnat = true;
    let v = classify(&target(), &[f], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::Dropped);
}

#[test]
fn a_frontend_only_the_api_declares_is_rules_missing() {
    let mut m = model(true);
    m.services[0].frontends.push(Frontend {
        kind: FrontendKind::ExternalIp,
        ip: ip("192.0.2.50"),
        port: 80,
        protocol: Protocol::Tcp,
        port_name: "http".into(),
        rule: None,
    });
    let mut f = flow(1, Some("192.0.2.50:80"), None);
    f.no_dnat = true;
    let v = classify(&target(), &[f], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::KubeProxyRulesMissing);
    assert!(
        v.root_cause.detail.contains("lack its frontend 192.0.2.50:80"),
        "{}",
        v.root_cause.detail
    );
}

#[test]
fn explain_of_an_unknown_service_says_so() {
    let v = classify(
        &ServiceRef {
            namespace: "shop".into(),
            name: "typo".into(),
        },
        &[],
        &model(true),
        &Context {
            api_consulted: true,
            ..Context::default()
        },
    );
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
    assert!(
        v.root_cause
            .detail
            .contains("no Service shop/typo in kube-proxy's rules nor in the API"),
        "{}",
        v.root_cause.detail
    );
}

#[test]
fn with_unknown_counters_a_kube_proxy_drop_rule_beats_conntrack_full() {
    let mut f = flow(1, Some(NODE_PORT), None);
    f.client = addr("192.0.2.10:50000");
    f.outcome = Outcome::Dropped;
    f.drops = vec![Drop {
        reason: "NETFILTER_DROP".into(),
        after_hook: Some(Hook::Prerouting),
        before_conntrack: true,
        at_ms: 0,
    }];
    let v = classify(&target(), std::slice::from_ref(&f), &etp_model(), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::EtpLocalNoLocalEndpoints);
    // Without such a rule, the dropped first packet alone still points at conntrack.
    let v = classify(&target(), &[conntrack_dropped_flow(2)], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::ConntrackFull);
    assert!(
        has_evidence(&v, EvidenceKind::Conntrack, "counters unknown"),
        "{}",
        evidence_dump(&v)
    );
}

#[test]
fn a_kubelet_lower_bound_proves_kube_proxy_too_old_never_too_new() {
    let mut m = model(true);
    m.api_server_version = None;
    m.min_api_server_version = Some("v1.33.1".into());
    m.kube_proxy.version = Some("v1.31.2".into());
    let v = classify(&target(), &[established(1, POD_A)], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::KubeProxyVersionSkew);
    assert!(
        has_evidence(&v, EvidenceKind::Api, "at least v1.33.1"),
        "{}",
        evidence_dump(&v)
    );
    m.kube_proxy.version = Some("v1.35.0".into());
    let v = classify(&target(), &[established(1, POD_A)], &m, &ctx(true));
    assert_eq!(
        v.root_cause.class,
        VerdictClass::Healthy,
        "a newer kube-proxy is not proven skewed"
    );
}

#[test]
fn minor_versions_parse_vendor_suffixes() {
    assert_eq!(minor_version("v1.31.2"), Some((1, 31)));
    assert_eq!(minor_version("1.29"), Some((1, 29)));
    assert_eq!(minor_version("v1.30.4-eks-a737599"), Some((1, 30)));
    assert_eq!(minor_version("v1.28.3+k3s1"), Some((1, 28)));
    assert_eq!(minor_version("latest"), None);
}

/// IPVS mode: the virtual server exists (a frontend with its rule), no real server, no REJECT
/// rule; IPVS itself answers ICMP port unreachable.
fn ipvs_empty_model() -> ServiceModel {
    let mut m = model(true);
    m.kube_proxy.mode = ProxyMode::Ipvs;
    let svc = &mut m.services[0];
    for fe in &mut svc.frontends {
        fe.rule = Some(RuleRef {
            source: RuleSource::Ipvs,
            name: format!("TCP {}:{}", fe.ip, fe.port).into(),
            text: format!("TCP  {}:{} rr", fe.ip, fe.port).into(),
        });
    }
    for e in &mut svc.endpoints {
        e.in_rules = false;
        e.rule = None;
        e.ready = Some(false);
    }
    m
}

#[test]
fn ipvs_virtual_server_without_real_servers_is_no_endpoints() {
    let v = classify(&target(), &[rejected_flow(1)], &ipvs_empty_model(), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::NoEndpoints);
    assert_eq!(v.root_cause.class, VerdictClass::NoEndpoints);
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "TCP  10.96.0.10:80 rr"),
        "{}",
        evidence_dump(&v)
    );
    let explain = classify(
        &target(),
        &[],
        &ipvs_empty_model(),
        &Context {
            api_consulted: true,
            ..Context::default()
        },
    );
    assert_eq!(explain.root_cause.class, VerdictClass::NoEndpoints);
    // Ready in the API but absent from IPVS: not synced.
    let mut m = ipvs_empty_model();
    m.services[0].endpoints[0].ready = Some(true);
    let v = classify(&target(), &[rejected_flow(1)], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::KubeProxyRulesMissing);
}

#[test]
fn terminating_serving_and_draining_endpoints_are_not_stale() {
    let mut m = model(true);
    m.services[0].endpoints[0].ready = Some(false);
    m.services[0].api.terminating_serving = vec![addr(POD_A)];
    let explain = Context {
        api_consulted: true,
        ..Context::default()
    };
    let v = classify(&target(), &[], &m, &explain);
    assert_eq!(v.root_cause.class, VerdictClass::Healthy, "{:?}", v.causes);
    assert!(
        has_evidence(&v, EvidenceKind::Api, "10.1.0.7:8080 is terminating but still serving"),
        "{}",
        evidence_dump(&v)
    );
    // A flow to it that gets no answer is the pod's fault, not a stale rule.
    let v = classify(&target(), &[flow(1, Some(CLUSTER_IP), Some(POD_A))], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::BackendTimeout);

    let mut m = model(true);
    let e = &mut m.services[0].endpoints[1];
    e.in_api = Some(false);
    e.weight = Some(0.0);
    e.rule = Some(RuleRef {
        source: RuleSource::Ipvs,
        name: "TCP 10.96.0.10:80 -> 10.1.0.8:8080".into(),
        text: "  -> 10.1.0.8:8080 Masq 0 3 0".into(),
    });
    let v = classify(&target(), &[], &m, &explain);
    assert_eq!(v.root_cause.class, VerdictClass::Healthy, "{:?}", v.causes);
    assert!(
        has_evidence(&v, EvidenceKind::Api, "draining (IPVS weight 0)"),
        "{}",
        evidence_dump(&v)
    );
}

#[test]
fn the_root_cause_names_the_backend_most_failing_flows_went_to() {
    // Both endpoints are stale in the API; the flows all went to web-b.
    let mut m = model(true);
    for e in &mut m.services[0].endpoints {
        e.in_api = Some(false);
        e.ready = None;
    }
    let flows = [
        flow(1, Some(CLUSTER_IP), Some(POD_B)),
        flow(2, Some(CLUSTER_IP), Some(POD_B)),
    ];
    let v = classify(&target(), &flows, &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::StaleEndpoint);
    assert!(
        v.root_cause.detail.contains("10.1.0.8:8080 (pod shop/web-b)"),
        "{}",
        v.root_cause.detail
    );
    assert!(v.mitigation.immediate.contains("get pod web-b"), "{:?}", v.mitigation);
    let flows = [
        flow(1, Some(CLUSTER_IP), Some(POD_B)),
        flow(2, Some(CLUSTER_IP), Some(POD_A)),
    ];
    let v = classify(&target(), &flows, &m, &ctx(true));
    assert!(
        v.root_cause.detail.ends_with("(2 flows to 2 backends)"),
        "{}",
        v.root_cause.detail
    );
}

/// shop/web with a load-balancer IP 203.0.113.20:80 behind loadBalancerSourceRanges 192.0.2.0/24,
/// as kube-proxy's iptables mode writes it (golden test `ns5/svc5` shape).
fn firewalled_model() -> ServiceModel {
    let mut m = model(true);
    let svc = &mut m.services[0];
    svc.frontends.push(Frontend {
        kind: FrontendKind::LoadBalancer,
        ip: ip("203.0.113.20"),
        port: 80,
        protocol: Protocol::Tcp,
        port_name: "http".into(),
        rule: Some(iptables(
            "KUBE-SERVICES",
            "-A KUBE-SERVICES -d 203.0.113.20/32 -p tcp -m comment --comment \"shop/web:http loadbalancer IP\" -m tcp --dport 80 -j KUBE-FW-EXAMPLEHASH00001",
        )),
    });
    svc.rules.source_ranges = vec!["192.0.2.0/24".into()];
    svc.rules.firewall_drops = vec![iptables(
        "KUBE-PROXY-FIREWALL",
        "-A KUBE-PROXY-FIREWALL -d 203.0.113.20/32 -p tcp -m comment --comment \"shop/web:http traffic not accepted by KUBE-FW-EXAMPLEHASH00001\" -m tcp --dport 80 -j DROP",
    )];
    m
}

fn lb_flow(id: u64, client: &str) -> Flow {
    let mut f = flow(id, Some("203.0.113.20:80"), None);
    f.client = addr(client);
    f.outcome = Outcome::Dropped;
    f.drops = vec![Drop {
        reason: "NETFILTER_DROP".into(),
        after_hook: Some(Hook::Prerouting),
        before_conntrack: false,
        at_ms: 0,
    }];
    f
}

#[test]
fn a_client_outside_load_balancer_source_ranges_is_source_range_denied() {
    let m = firewalled_model();
    let v = classify(&target(), &[lb_flow(1, "198.51.100.7:40000")], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::SourceRangeDenied);
    assert_eq!(v.root_cause.class, VerdictClass::SourceRangeDenied);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Rules,
            "traffic not accepted by KUBE-FW-EXAMPLEHASH00001"
        ),
        "{dump}"
    );
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "192.0.2.0/24; 198.51.100.7 is in none"),
        "{dump}"
    );
    assert!(
        v.root_cause
            .detail
            .contains("client 198.51.100.7 is outside shop/web's loadBalancerSourceRanges")
    );
    assert!(
        v.mitigation.immediate.contains("\"value\":\"198.51.100.7/32\""),
        "{:?}",
        v.mitigation
    );
    let runbook = Runbook::from_report(&{
        let mut r = crate::report::Report::new(&target());
        r.apply(&v);
        r
    });
    assert!(
        runbook.root_cause.starts_with("service_config — client 198.51.100.7"),
        "{}",
        runbook.root_cause
    );
    // A client inside the ranges whose packet was dropped is not refused by the source ranges.
    let v = classify(&target(), &[lb_flow(1, "192.0.2.9:40000")], &m, &ctx(true));
    assert_ne!(v.flows[0].class, VerdictClass::SourceRangeDenied);
    // Nor is a client of a Service without a firewall rule.
    let mut open = firewalled_model();
    open.services[0].rules.firewall_drops.clear();
    let v = classify(&target(), &[lb_flow(1, "198.51.100.7:40000")], &open, &ctx(true));
    assert_ne!(v.flows[0].class, VerdictClass::SourceRangeDenied);
}

/// A dual-stack [`firewalled_model`] in nftables mode: each family's `firewall-` rule, and an IPv6
/// client outside both families' ranges.
#[test]
fn an_ipv6_client_outside_the_source_ranges_gets_its_family_s_rule_and_a_128_range() {
    let mut m = firewalled_model();
    let svc = &mut m.services[0];
    svc.frontends.push(Frontend {
        kind: FrontendKind::LoadBalancer,
        ip: ip("2001:db8::20"),
        port: 80,
        protocol: Protocol::Tcp,
        port_name: "http".into(),
        rule: None,
    });
    svc.rules.source_ranges.push("2001:db8:1::/64".into());
    let fw = |text: &str| RuleRef {
        source: RuleSource::Nftables,
        name: "firewall-EXAMPLE0-shop/web/tcp/http".into(),
        text: text.into(),
    };
    svc.rules.firewall_drops = vec![
        fw("ip saddr != 192.0.2.0/24 drop # handle 51"),
        fw("ip6 saddr != 2001:db8:1::/64 drop # handle 52"),
    ];
    let mut f = lb_flow(1, "[2001:db8:2::7]:40000");
    f.frontend = Some(addr("[2001:db8::20]:80"));
    let v = classify(&target(), &[f], &m, &ctx(true));
    assert_eq!(
        v.root_cause.class,
        VerdictClass::SourceRangeDenied,
        "{}",
        evidence_dump(&v)
    );
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "ip6 saddr != 2001:db8:1::/64 drop"),
        "{dump}"
    );
    assert!(
        !has_evidence(&v, EvidenceKind::Rules, "ip saddr != 192.0.2.0/24"),
        "{dump}"
    );
    assert!(
        v.mitigation.immediate.contains("\"value\":\"2001:db8:2::7/128\""),
        "{:?}",
        v.mitigation
    );
}

#[test]
fn cidr_membership() {
    use crate::model::in_cidr;
    assert!(in_cidr(ip("192.0.2.9"), "192.0.2.0/24"));
    assert!(!in_cidr(ip("192.0.3.9"), "192.0.2.0/24"));
    assert!(in_cidr(ip("10.1.2.3"), "0.0.0.0/0"));
    assert!(in_cidr(ip("10.1.2.3"), "10.1.2.3"));
    assert!(!in_cidr(ip("10.1.2.4"), "10.1.2.3/32"));
    assert!(!in_cidr(ip("10.1.2.3"), "fd00::/8"));
    assert!(in_cidr(ip("fd00::1"), "fd00::/8"));
    assert!(!in_cidr(ip("10.1.2.3"), "10.0.0.0/33"));
    assert!(!in_cidr(ip("10.1.2.3"), "garbage"));
}

/// A dual-stack Service asked about a port it lacks: the root cause names the ClusterIP of the
/// family the flows used, and the evidence covers both ClusterIPs whichever family was traced.
#[test]
fn an_undefined_port_traced_over_ipv6_names_the_ipv6_cluster_ip() {
    let m = dual_stack_model();
    let mut f = flow(1, Some("[fd00:10:96::10]:81"), None);
    f.client = addr("[fd00:10:1::5]:41234");
    let v = classify_asked(&target(), Asked::UndefinedPort(81), &[f], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::ServicePortUndefined);
    assert!(
        v.root_cause
            .detail
            .starts_with("shop/web defines no port 81 on its ClusterIP fd00:10:96::10 (its ports:"),
        "{}",
        v.root_cause.detail
    );
    let dump = evidence_dump(&v);
    for cip in ["10.96.0.10", "fd00:10:96::10"] {
        assert!(
            has_evidence(&v, EvidenceKind::Rules, &format!("ClusterIP {cip} the ports")),
            "{dump}"
        );
    }
    // Over IPv4, and with no flow at all (explain), the IPv4 ClusterIP leads.
    let mut f = flow(1, Some("10.96.0.10:81"), None);
    f.client = addr("10.244.1.5:41234");
    for flows in [vec![f], vec![]] {
        let v = classify_asked(&target(), Asked::UndefinedPort(81), &flows, &m, &ctx(true));
        assert!(
            v.root_cause
                .detail
                .starts_with("shop/web defines no port 81 on its ClusterIP 10.96.0.10 (its ports:"),
            "{}",
            v.root_cause.detail
        );
    }
}

#[test]
fn a_port_the_service_does_not_define_is_service_port_undefined() {
    // nftables mode 1.30+: cluster-ips-check rejects it; the trace sees the node's ICMP answer.
    let mut m = model(true);
    m.services[0].rules.undefined_port_reject = Some(RuleRef {
        source: RuleSource::Nftables,
        name: "cluster-ips-check".into(),
        text: "ip daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\" # handle 69"
            .into(),
    });
    let mut f = rejected_flow(1);
    f.frontend = Some(addr("10.96.0.10:81"));
    let v = classify_asked(&target(), Asked::UndefinedPort(81), &[f], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::ServicePortUndefined);
    assert_eq!(v.root_cause.class, VerdictClass::ServicePortUndefined);
    assert_eq!(
        v.root_cause.detail,
        "shop/web defines no port 81 on its ClusterIP 10.96.0.10 (its ports: http 80/tcp): kube-proxy rejects it \
         (nftables cluster-ips-check, 1.30+) (1 flow)"
    );
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "ip daddr @cluster-ips reject"),
        "{dump}"
    );
    assert!(
        has_evidence(&v, EvidenceKind::Api, "the API's shop/web defines ports http 80/tcp"),
        "{dump}"
    );
    assert!(
        v.mitigation.immediate.contains("add port 81 to the Service"),
        "{:?}",
        v.mitigation
    );
    // iptables mode: no rule, no answer; explain (no flows) gives the same class from the question.
    let v = classify_asked(&target(), Asked::UndefinedPort(81), &[], &model(true), &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::ServicePortUndefined);
    assert!(
        v.root_cause
            .detail
            .ends_with("no kube-proxy rule translates it, so it is routed on untranslated and gets no answer"),
        "{}",
        v.root_cause.detail
    );
    // A defined port is not: the same question about port 80 is healthy.
    let v = classify_asked(
        &target(),
        Asked::Service,
        &[established(1, POD_A)],
        &model(true),
        &ctx(true),
    );
    assert_eq!(v.root_cause.class, VerdictClass::Healthy);
}

#[test]
fn an_address_no_service_holds_is_cluster_ip_unallocated() {
    let dest = addr("10.96.200.7:80");
    let nobody = ServiceRef {
        namespace: String::new(),
        name: String::new(),
    };
    let asked = Asked::Unallocated(Protocol::Tcp, dest);
    // nftables mode 1.30+: cluster-ips-check drops it; the trace sees the drop.
    let mut m = model(true);
    m.unallocated_drops = vec![crate::model::UnallocatedDrop {
        cidrs: vec!["10.96.0.0/16".into()],
        rule: RuleRef {
            source: RuleSource::Nftables,
            name: "cluster-ips-check".into(),
            text: "ip daddr 10.96.0.0/16 drop comment \"Drop traffic to unallocated ClusterIPs\" # handle 70".into(),
        },
    }];
    let mut f = rejected_flow(1);
    f.frontend = Some(dest);
    let v = classify_asked(&nobody, asked, &[f], &m, &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::ClusterIpUnallocated);
    assert_eq!(v.root_cause.class, VerdictClass::ClusterIpUnallocated);
    assert!(
        v.root_cause.detail.starts_with(
            "no Service holds 10.96.200.7:80/tcp: it is in the service CIDR 10.96.0.0/16 and kube-proxy drops new \
             connections to it (nftables cluster-ips-check, 1.30+)"
        ),
        "{}",
        v.root_cause.detail
    );
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(&v, EvidenceKind::Rules, "ip daddr 10.96.0.0/16 drop"),
        "{dump}"
    );
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Rules,
            "no frontend of kube-proxy's rules or the API's Services has the address 10.96.200.7"
        ),
        "{dump}"
    );
    assert!(
        v.mitigation.immediate.contains("grep -w 10.96.200.7"),
        "{:?}",
        v.mitigation
    );
    // Nothing about a Service's rules or endpoints: explain (no flows) gives the same answer.
    let v = classify_asked(&nobody, asked, &[], &m, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::ClusterIpUnallocated);
    assert_eq!(v.causes.len(), 1, "{:?}", v.causes);
    // iptables mode: the rules name no service CIDR and translate nothing for it.
    let v = classify_asked(&nobody, asked, &[], &model(true), &ctx(true));
    assert!(
        v.root_cause.detail.starts_with(
            "no Service holds 10.96.200.7:80/tcp: no kube-proxy rule translates it, so it is routed on untranslated \
             and gets no answer (the rules name no service CIDR"
        ),
        "{}",
        v.root_cause.detail
    );
}

#[test]
fn udp_to_a_backend_the_rules_dropped_is_a_stale_conntrack_entry() {
    let gone = "10.1.0.9:8080";
    let mut f = flow(1, Some(CLUSTER_IP), Some(gone));
    f.protocol = Protocol::Udp;
    f.client = addr("10.1.0.5:40053");
    let v = classify(&target(), &[f.clone()], &model(true), &ctx(true));
    assert_eq!(v.flows[0].class, VerdictClass::StaleConntrackEntry);
    assert_eq!(v.root_cause.class, VerdictClass::StaleConntrackEntry);
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Conntrack,
            "conntrack entry udp src=10.1.0.5 dst=10.96.0.10 sport=40053 dport=80 -> DNAT 10.1.0.9:8080"
        ),
        "{dump}"
    );
    assert!(
        v.root_cause.detail.contains("and the API no longer lists it"),
        "{}",
        v.root_cause.detail
    );
    assert_eq!(
        v.mitigation.immediate,
        "on node node-1: conntrack -D -p udp --orig-src 10.1.0.5 --orig-dst 10.96.0.10 --orig-port-src 40053 \
         --orig-port-dst 80; every entry of shop/web still sent to 10.1.0.9: conntrack -D -p udp --orig-dst \
         10.96.0.10 --dst-nat 10.1.0.9 (kube-proxy's own cleanup command; do not restart kube-proxy, its rules are right)"
    );
    let runbook = Runbook::from_report(&{
        let mut r = crate::report::Report::new(&target());
        r.apply(&v);
        r
    });
    assert!(
        runbook.root_cause.starts_with("conntrack — a conntrack entry"),
        "{}",
        runbook.root_cause
    );
    // Without the API the rules alone prove it.
    let v = classify(&target(), &[f.clone()], &model(false), &ctx(false));
    assert_eq!(v.root_cause.class, VerdictClass::StaleConntrackEntry);
    // A DNAT target the rules still have is a stale endpoint (the rules are stale), not this.
    let mut m = model(true);
    m.services[0].endpoints[0].in_api = Some(false);
    m.services[0].endpoints[0].protocol = Protocol::Udp;
    let mut g = f.clone();
    g.backend = Some(addr(POD_A));
    let v = classify(&target(), &[g], &m, &ctx(true));
    assert_ne!(v.flows[0].class, VerdictClass::StaleConntrackEntry);
    // TCP to a gone backend is left to the other classes.
    let mut t = f;
    t.protocol = Protocol::Tcp;
    let v = classify(&target(), &[t], &model(true), &ctx(true));
    assert_ne!(v.flows[0].class, VerdictClass::StaleConntrackEntry);
}

#[test]
fn kube_proxy_not_synced_since_the_api_changed_the_service() {
    // Last sync at t=1000, read 300 s later; the EndpointSlice changed at t=1210 (90 s ago).
    let lagging = |change: f64| {
        let mut m = model(true);
        m.kube_proxy.last_sync_unix = Some(1000.0);
        m.kube_proxy.last_sync_age_secs = Some(300.0);
        m.services[0].api.last_change_unix = Some(change);
        m
    };
    let v = classify(&target(), &[established(1, POD_A)], &lagging(1210.0), &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::KubeProxyNotSynced);
    assert_eq!(
        v.root_cause.detail,
        "kube-proxy on node node-1 has not synced for 300 s: the API changed shop/web 90 s ago and its rules do not have that change"
    );
    let dump = evidence_dump(&v);
    assert!(
        has_evidence(
            &v,
            EvidenceKind::Api,
            "changed 90 s ago (endpoints.kubernetes.io/last-change-trigger-time), 210 s after that sync"
        ),
        "{dump}"
    );
    assert!(
        v.mitigation
            .immediate
            .contains("kubectl -n kube-system logs -l k8s-app=kube-proxy"),
        "{:?}",
        v.mitigation
    );
    let runbook = Runbook::from_report(&{
        let mut r = crate::report::Report::new(&target());
        r.apply(&v);
        r
    });
    assert_eq!(runbook.cross_reference, Some("D2"));
    assert!(
        runbook
            .root_cause
            .starts_with("iptables_sync — kube-proxy on node node-1 has not synced")
    );
    // A change 10 s old is programming latency; a change before the last sync is applied.
    for change in [1290.0, 990.0] {
        let v = classify(&target(), &[established(1, POD_A)], &lagging(change), &ctx(true));
        assert_eq!(
            v.root_cause.class,
            VerdictClass::Healthy,
            "change at {change}: {}",
            evidence_dump(&v)
        );
    }
    // A kube-proxy that is not running is that, not "not synced".
    let mut down = lagging(1210.0);
    down.kube_proxy.running = Some(false);
    let v = classify(&target(), &[], &down, &ctx(true));
    assert_eq!(v.root_cause.class, VerdictClass::KubeProxyNotRunning);
    assert!(v.causes.iter().all(|c| c.class != VerdictClass::KubeProxyNotSynced));
}
