//! The class of one flow, from its own facts read against the Service's rules and API facts.

use std::net::{IpAddr, SocketAddr};

use super::vocabulary::{Evidence, EvidenceKind, VerdictClass};
use crate::flows::{Flow, Hook, IcmpError, Outcome, Peer};
use crate::model::{Endpoint, FrontendKind, ProbePort, Protocol, RuleRef, in_cidr};

use super::facts::{
    Asked, Facts, Finding, FlowVerdict, finding, push_rule, unallocated_finding, undefined_port_finding,
};

/// A probe connection lasts at most this long: kubelet's default probe timeout is 1 s, and a probe
/// that takes longer than a few seconds is not the short open-check-reset the class describes.
const PROBE_MAX_MS: u64 = 5_000;

/// Kernel drop reasons (without `SKB_DROP_REASON_`) meaning the destination has no route or no
/// neighbour: the DNAT target is gone. Names from `include/net/dropreason-core.h`.
const NO_ROUTE_REASONS: &[&str] = &[
    "NEIGH_FAILED",
    "NEIGH_CREATEFAIL",
    "NEIGH_DEAD",
    "NEIGH_QUEUEFULL",
    "IP_OUTNOROUTES",
    "IP_INNOROUTES",
    "IPV6_BAD_EXTHDR_NOROUTE",
    "IP_INADDRERRORS",
];

/// Classifies one flow. Returns the per-flow verdict and a finding carrying its evidence.
pub(super) fn classify_flow(f: &Flow, facts: &Facts<'_>) -> (FlowVerdict, Finding) {
    let (class, fact, mut finding) = decide(f, facts);
    finding.class = class;
    (FlowVerdict { id: f.id, class, fact }, finding)
}

fn decide(f: &Flow, facts: &Facts<'_>) -> (VerdictClass, String, Finding) {
    let reply = f.handshake.reply || f.outcome == Outcome::Established;
    let path = path(f);

    // Direct flows (no frontend): kubelet probes and pod-to-pod traffic to a backend.
    if f.frontend.is_none()
        && let Some(dst) = f.backend
        && let Some(probe) = probe(f, dst, facts)
    {
        return probe;
    }

    if reply {
        let fact = match f.backend {
            Some(b) => format!("{path}: reply from backend {b}"),
            None => format!("{path}: reply seen"),
        };
        let mut finding = finding(
            facts,
            VerdictClass::Healthy,
            format!("flows to {} complete", facts.name()),
        );
        if let Some(ep) = f.backend.and_then(|b| facts.endpoint(b, f.protocol)) {
            push_rule(&mut finding, ep.rule.as_ref());
        }
        return (VerdictClass::Healthy, fact, finding);
    }

    // The first packet was dropped before conntrack made an entry for it.
    if let Some(d) = f.drops.iter().find(|d| d.before_conntrack)
        && (f.backend.is_none() || f.frontend.is_none())
    {
        let ct = facts.ctx.conntrack;
        let rising = ct.and_then(|c| c.drop_delta).map(|d| d > 0);
        let near_full = ct
            .and_then(|c| c.fill_ratio())
            .map(|r| r >= super::facts::CONNTRACK_NEAR_FULL);
        // Counters that are known and show neither a rising drop counter nor a full table
        // clear conntrack: the drop is then someone else's.
        let cleared = rising == Some(false) && near_full != Some(true) || rising.is_none() && near_full == Some(false);
        // Unknown counters prove nothing either way: a kube-proxy verdict (REJECT, DROP, missing
        // rules) that explains the flow is then the better answer.
        let unknown = rising.is_none() && near_full.is_none();
        let explained = match (f.frontend, f.backend) {
            (Some(fe), None) if unknown => {
                let alt = untranslated(f, fe, facts, &path);
                (alt.0 != VerdictClass::Dropped).then_some(alt)
            }
            _ => None,
        };
        if let Some(alt) = explained {
            return alt;
        }
        if !cleared {
            let mut finding = finding(
                facts,
                VerdictClass::ConntrackFull,
                "the conntrack table is full: new flows are dropped before conntrack can track them".into(),
            );
            if rising.is_none() && near_full.is_none() {
                finding.evidence.push(Evidence::new(
                    EvidenceKind::Conntrack,
                    "conntrack counters unknown: conntrack_full rests on the dropped first packet alone",
                ));
            }
            let fact = format!(
                "{path}: first packet dropped ({}) before conntrack created an entry{}",
                d.reason,
                hook_suffix(d.after_hook)
            );
            return (VerdictClass::ConntrackFull, fact, finding);
        }
    }

    match (f.frontend, f.backend) {
        (Some(fe), None) => untranslated(f, fe, facts, &path),
        (_, Some(be)) => translated(f, be, facts, &path),
        (None, None) => {
            let fact = format!("{path}: no destination known");
            (
                VerdictClass::Dropped,
                fact,
                finding(facts, VerdictClass::Dropped, "flow without destination".into()),
            )
        }
    }
}

/// A node-originated, short connection to a pod's probe port closed by RST: a kubelet probe.
fn probe(f: &Flow, dst: SocketAddr, facts: &Facts<'_>) -> Option<(VerdictClass, String, Finding)> {
    let from_node = facts.is_node_ip(f.client.ip()) || f.entry_hook == Some(Hook::Output);
    if !from_node {
        return None;
    }
    let probe_port: Option<&ProbePort> = facts
        .model
        .probe_ports
        .iter()
        .find(|p| p.ip == dst.ip() && p.port == dst.port());
    // Without the API the probe ports are unknown: a node-IP connection to one of the Service's
    // endpoint addresses stands in for them, and the evidence says so.
    let guessed = probe_port.is_none()
        && facts.model.probe_ports.is_empty()
        && facts.svc.is_some_and(|s| s.endpoints.iter().any(|e| e.ip == dst.ip()));
    if probe_port.is_none() && !guessed {
        return None;
    }
    let rst = f.resets.first()?;
    let duration_ms = f.last_ns.saturating_sub(f.first_ns) / 1_000_000;
    if duration_ms > PROBE_MAX_MS {
        return None;
    }
    let what = match probe_port {
        Some(p) => format!("{:?} probe of {}", p.probe, p.pod).to_lowercase(),
        None => "probe (port not known without the API)".to_owned(),
    };
    let fact = format!(
        "{what}: {} -> {dst} closed by RST from {} after {duration_ms} ms",
        f.client,
        peer_name(rst.by)
    );
    let mut finding = finding(
        facts,
        VerdictClass::ProbeRst,
        "kubelet probe connections closed by RST (normal)".into(),
    );
    finding.pod = probe_port.map(|p| p.pod.clone());
    Some((VerdictClass::ProbeRst, fact, finding))
}

/// A flow to a frontend that conntrack never translated: kube-proxy's own verdict (REJECT, DROP) or
/// its missing rules.
fn untranslated(f: &Flow, fe: SocketAddr, facts: &Facts<'_>, path: &str) -> (VerdictClass, String, Finding) {
    let kind = facts.frontend_kind(fe, f.protocol);
    let svc_rules = facts.svc.map(|s| &s.rules);
    let no_endpoint_rules: &[RuleRef] = svc_rules.map(|r| r.no_endpoints.as_slice()).unwrap_or_default();
    let no_local_rules: &[RuleRef] = svc_rules.map(|r| r.no_local_endpoints.as_slice()).unwrap_or_default();
    let node_answered = node_rejection(f, facts);
    let name = facts.name();

    if let Some(refused) = source_range_denied(f, fe, kind, facts, path)
        && node_answered.is_none()
    {
        return refused;
    }
    if let Asked::Unallocated(protocol, dest) = facts.asked
        && dest == fe
        && protocol == f.protocol
    {
        let fd = unallocated_finding(facts, protocol, fe);
        let fact = match &node_answered {
            Some(a) => format!("{a} (no Service holds {fe})"),
            None => format!(
                "{path}: not translated, no Service holds {fe}{}, {}",
                drop_suffix(f),
                no_reply(f)
            ),
        };
        return (VerdictClass::ClusterIpUnallocated, fact, fd);
    }
    if facts.undefined_cluster_ip_port(fe, f.protocol) {
        let fd = undefined_port_finding(facts, fe);
        let fact = match &node_answered {
            Some(a) => format!("{a} (cluster-ips-check: port not defined)"),
            None => format!(
                "{path}: not translated, port not defined{}, {}",
                drop_suffix(f),
                no_reply(f)
            ),
        };
        return (VerdictClass::ServicePortUndefined, fact, fd);
    }

    // kube-proxy rejected: ICMP or RST from the node.
    if let Some(answer) = &node_answered
        && !no_endpoint_rules.is_empty()
    {
        let ready = facts.api_ready_endpoints();
        let fact = format!("{answer} (REJECT: no endpoints)");
        if !ready.is_empty() {
            let mut fd = finding(
                facts,
                VerdictClass::KubeProxyRulesMissing,
                format!(
                    "kube-proxy rejects {name} as having no endpoints while the API lists {} ready: its rules are not synced",
                    ready.len()
                ),
            );
            push_rule(&mut fd, best_rule(no_endpoint_rules, fe));
            return (VerdictClass::KubeProxyRulesMissing, fact, fd);
        }
        let mut fd = finding(
            facts,
            VerdictClass::NoEndpoints,
            format!("{name} has no ready endpoints; kube-proxy rejects its traffic"),
        );
        push_rule(&mut fd, best_rule(no_endpoint_rules, fe));
        return (VerdictClass::NoEndpoints, fact, fd);
    }

    // The node answered for a frontend whose rules have no endpoint at all and no REJECT rule:
    // an IPVS virtual server without real servers (IPVS answers ICMP port unreachable itself).
    let fe_rule = facts.frontend(fe, f.protocol).and_then(|fr| fr.rule.as_ref());
    let rules_endpoints = facts
        .svc
        .map_or(0, |s| s.endpoints.iter().filter(|e| e.in_rules).count());
    if let (Some(answer), Some(rule)) = (&node_answered, fe_rule)
        && no_endpoint_rules.is_empty()
        && rules_endpoints == 0
        && facts.rules_present()
    {
        let ready = facts.api_ready_endpoints();
        let (class, detail) = if ready.is_empty() {
            let who = if rule.source == crate::model::RuleSource::Ipvs {
                "its IPVS virtual servers have no real servers, so IPVS rejects its traffic"
            } else {
                "kube-proxy rejects its traffic"
            };
            (
                VerdictClass::NoEndpoints,
                format!("{name} has no ready endpoints; {who}"),
            )
        } else {
            (
                VerdictClass::KubeProxyRulesMissing,
                format!(
                    "kube-proxy's rules give {name}'s frontend {fe} no endpoint while the API lists {} ready: its rules are not synced",
                    ready.len()
                ),
            )
        };
        let mut fd = finding(facts, class, detail);
        push_rule(&mut fd, Some(rule));
        fd.evidence.push(Evidence::new(
            EvidenceKind::Rules,
            format!("no endpoint in kube-proxy's rules for {fe}"),
        ));
        return (class, format!("{answer} (frontend without endpoints)"), fd);
    }

    // kube-proxy dropped: "has no local endpoints" for traffic from outside the cluster.
    if !no_local_rules.is_empty() && node_answered.is_none() {
        let external = !matches!(kind, Some(FrontendKind::ClusterIp));
        let itp = facts.svc.and_then(|s| s.api.internal_traffic_policy_local) == Some(true);
        if external || itp {
            let policy = if external {
                "externalTrafficPolicy"
            } else {
                "internalTrafficPolicy"
            };
            let mut fd = finding(
                facts,
                VerdictClass::EtpLocalNoLocalEndpoints,
                format!(
                    "{name} has {policy}=Local and no ready endpoint on node {}: kube-proxy drops its {} traffic here",
                    facts.node(),
                    kind_name(kind)
                ),
            );
            push_rule(&mut fd, best_rule(no_local_rules, fe));
            let fact = format!("{path}: dropped by \"has no local endpoints\"{}", drop_suffix(f));
            return (VerdictClass::EtpLocalNoLocalEndpoints, fact, fd);
        }
    }

    // No rule translated the flow: kube-proxy is down, or its rules lack this Service, or lack a
    // frontend the API declares. A frontend neither knows is not claimed as missing.
    let known = facts.frontend(fe, f.protocol);
    let frontend_in_rules = known.is_some_and(|fr| fr.rule.is_some());
    let api_only_frontend = known.is_some_and(|fr| fr.rule.is_none());
    let no_verdict_rules = no_endpoint_rules.is_empty() && no_local_rules.is_empty();
    if !facts.rules_present() || api_only_frontend && no_verdict_rules {
        let what = node_answered
            .clone()
            .unwrap_or_else(|| format!("{path}: not translated (no DNAT){}", drop_suffix(f)));
        if facts.model.kube_proxy.running == Some(false) {
            let fd = finding(
                facts,
                VerdictClass::KubeProxyNotRunning,
                format!(
                    "kube-proxy is not running on node {}: nothing translates {name}'s traffic",
                    facts.node()
                ),
            );
            return (VerdictClass::KubeProxyNotRunning, what, fd);
        }
        let detail = match facts.api_exists() {
            Some(true) => {
                format!("the API has {name} but kube-proxy's rules lack its frontend {fe}")
            }
            _ => format!("kube-proxy's rules lack {name}'s frontend {fe}"),
        };
        return (
            VerdictClass::KubeProxyRulesMissing,
            what,
            finding(facts, VerdictClass::KubeProxyRulesMissing, detail),
        );
    }

    // The REJECT rule matched but its answer was not seen (lost, or dropped on the way back).
    if !no_endpoint_rules.is_empty() {
        let mut fd = finding(
            facts,
            VerdictClass::NoEndpoints,
            format!("{name} has no ready endpoints; kube-proxy rejects its traffic"),
        );
        push_rule(&mut fd, best_rule(no_endpoint_rules, fe));
        let fact = format!(
            "{path}: not translated, no answer seen (REJECT rule present){}",
            drop_suffix(f)
        );
        return (VerdictClass::NoEndpoints, fact, fd);
    }

    // Conntrack saw the flow and did not translate it although the rules DNAT this frontend, and
    // nothing dropped or answered it: the rules are not in the packet's path (the jump to
    // KUBE-SERVICES or kube-proxy's table is gone, or they changed under the flow).
    if f.no_dnat && frontend_in_rules && no_verdict_rules && f.drops.is_empty() && node_answered.is_none() {
        let fd = finding(
            facts,
            VerdictClass::KubeProxyRulesMissing,
            format!(
                "conntrack shows {name}'s frontend {fe} untranslated although kube-proxy's rules DNAT it: \
                 the rules are not in the packet's path"
            ),
        );
        let fact = format!("{path}: conntrack entry without DNAT, {}", no_reply(f));
        return (VerdictClass::KubeProxyRulesMissing, fact, fd);
    }

    // Rules are there, yet nothing translated the flow and nothing explains it.
    let fact = match (&node_answered, f.drops.last()) {
        (Some(a), _) => format!("{a}, by no kube-proxy rule"),
        (None, Some(d)) => format!(
            "{path}: dropped ({}){} before DNAT",
            d.reason,
            hook_suffix(d.after_hook)
        ),
        (None, None) => format!("{path}: not translated and no answer seen"),
    };
    let reason = f
        .drops
        .last()
        .map(|d| d.reason.clone())
        .unwrap_or_else(|| "no drop reason seen".into());
    let fd = finding(
        facts,
        VerdictClass::Dropped,
        format!(
            "traffic to {name} is dropped on node {} before kube-proxy translates it ({reason})",
            facts.node()
        ),
    );
    (VerdictClass::Dropped, fact, fd)
}

/// A load-balancer client outside loadBalancerSourceRanges, which kube-proxy's firewall drops
/// before DNAT: KUBE-PROXY-FIREWALL's `traffic not accepted by KUBE-FW-...` DROP (iptables, the
/// filter-table layout of 1.25+) or the `firewall-` chain's `ip saddr != { ... } drop` reached
/// through `firewall-ips` (nftables, 1.29+).
fn source_range_denied(
    f: &Flow,
    fe: SocketAddr,
    kind: Option<FrontendKind>,
    facts: &Facts<'_>,
    path: &str,
) -> Option<(VerdictClass, String, Finding)> {
    let rules = &facts.svc?.rules;
    let client = f.client.ip();
    if kind != Some(FrontendKind::LoadBalancer)
        || rules.firewall_drops.is_empty()
        || rules.source_ranges.is_empty()
        || rules.source_ranges.iter().any(|r| in_cidr(client, r))
    {
        return None;
    }
    let ranges = rules.source_ranges.join(", ");
    let name = facts.name();
    let mut fd = finding(
        facts,
        VerdictClass::SourceRangeDenied,
        format!(
            "client {client} is outside {name}'s loadBalancerSourceRanges ({ranges}): kube-proxy's firewall drops it, as configured"
        ),
    );
    push_rule(&mut fd, best_rule(&rules.firewall_drops, fe));
    fd.evidence.push(Evidence::new(
        EvidenceKind::Rules,
        format!("loadBalancerSourceRanges of {name} in kube-proxy's rules: {ranges}; {client} is in none"),
    ));
    fd.client = Some(f.client);
    let fact = format!(
        "{path}: dropped by kube-proxy's load-balancer firewall{}",
        drop_suffix(f)
    );
    Some((VerdictClass::SourceRangeDenied, fact, fd))
}

/// A flow conntrack translated to a backend (or a direct flow to one) that got no reply.
fn translated(f: &Flow, be: SocketAddr, facts: &Facts<'_>, path: &str) -> (VerdictClass, String, Finding) {
    let ep: Option<&Endpoint> = facts.endpoint(be, f.protocol);
    let name = facts.name();
    let pod = ep.and_then(|e| e.pod.clone());
    let who = match &pod {
        Some(p) => format!("backend {be} (pod {p})"),
        None => format!("backend {be}"),
    };
    let with_ep = |mut fd: Finding| {
        fd.pod = pod.clone();
        fd.backend = Some(be);
        if let Some(e) = ep {
            push_rule(&mut fd, e.rule.as_ref());
        }
        fd
    };

    // UDP to a backend kube-proxy's rules no longer DNAT to: conntrack's entry, made when they
    // did, still translates the client's packets (kube-proxy clears such entries itself only in
    // some versions). Rules and API have moved on; the entry has not.
    if f.protocol == Protocol::Udp
        && let Some(fe) = f.frontend
        && facts.rules_present()
        && ep.is_none_or(|e| !e.in_rules)
    {
        let api = match ep {
            Some(e) if e.in_api == Some(true) => format!(
                ", although the API still lists it{}",
                if e.ready == Some(false) { " (not ready)" } else { "" }
            ),
            _ if facts.ctx.api_consulted => " and the API no longer lists it".to_owned(),
            _ => String::new(),
        };
        let mut fd = with_ep(finding(
            facts,
            VerdictClass::StaleConntrackEntry,
            format!(
                "a conntrack entry still sends {name}'s UDP client {} to {who}, which kube-proxy's rules no longer DNAT to{api}",
                f.client
            ),
        ));
        fd.evidence.push(Evidence::new(
            EvidenceKind::Conntrack,
            format!(
                "conntrack entry udp src={} dst={} sport={} dport={} -> DNAT {be}: made before the rules changed, refreshed by every packet",
                f.client.ip(),
                fe.ip(),
                f.client.port(),
                fe.port()
            ),
        ));
        fd.evidence.push(Evidence::new(
            EvidenceKind::Rules,
            format!("kube-proxy's rules for {name} have no DNAT to {be}"),
        ));
        fd.client = Some(f.client);
        fd.frontend = Some(fe);
        fd.protocol = Some(f.protocol);
        let fact = format!("{path}: DNAT by a stale conntrack entry to {who}, {}", no_reply(f));
        return (VerdictClass::StaleConntrackEntry, fact, fd);
    }

    // The API disagrees with the rules: the DNAT target is not a ready endpoint.
    let expected = ep.and_then(|e| facts.expected_not_ready(e));
    if facts.ctx.api_consulted && f.frontend.is_some() && expected.is_none() {
        let why = match ep {
            None => Some("is not in the Service's EndpointSlices".to_owned()),
            Some(e) if e.in_api == Some(false) => Some("is not in the Service's EndpointSlices".to_owned()),
            Some(e) if e.ready == Some(false) => Some("is listed but not ready".to_owned()),
            _ => None,
        };
        if let Some(why) = why {
            let mut fd = with_ep(finding(
                facts,
                VerdictClass::StaleEndpoint,
                format!("kube-proxy sends {name} traffic to {who}, which {why}"),
            ));
            fd.evidence
                .push(Evidence::new(EvidenceKind::Api, format!("{be} {why} of {name}")));
            let fact = format!("{path}: DNAT to stale {who}, {}", no_reply(f));
            return (VerdictClass::StaleEndpoint, fact, fd);
        }
    }

    // No route or neighbour to the DNAT target: the pod is gone.
    let no_route_drop = f.drops.iter().find(|d| NO_ROUTE_REASONS.contains(&d.reason.as_str()));
    let unreachable = f.icmp_errors.iter().find(|e| is_host_unreachable(e));
    if no_route_drop.is_some() || unreachable.is_some() {
        let fact = match (no_route_drop, unreachable) {
            (Some(d), _) => format!("{path}: dropped ({}): no route or neighbour for {be}", d.reason),
            (None, Some(e)) => format!("{path}: {} from {} for {be}", icmp_name(e), e.from),
            (None, None) => unreachable!("one of the two is set"),
        };
        let fd = with_ep(finding(
            facts,
            VerdictClass::StaleEndpoint,
            format!("kube-proxy sends {name} traffic to {who}, which has no route or neighbour: the pod is gone"),
        ));
        return (VerdictClass::StaleEndpoint, fact, fd);
    }

    // The backend refused: RST (TCP) or port unreachable (UDP) from the backend itself.
    let rst = f.resets.iter().find(|r| r.by == Peer::Backend);
    let port_unreach = f
        .icmp_errors
        .iter()
        .find(|e| e.from == be.ip() && is_port_unreachable(e));
    if rst.is_some() || port_unreach.is_some() {
        let fact = match (rst, port_unreach) {
            (Some(r), _) => format!("{path}: RST from {who} after {} ms", r.at_ms),
            (None, Some(e)) => format!("{path}: {} from {who}", icmp_name(e)),
            (None, None) => unreachable!("one of the two is set"),
        };
        let fd = with_ep(finding(
            facts,
            VerdictClass::BackendRefused,
            format!(
                "{who} refuses connections for {name}: nothing listens on port {}",
                be.port()
            ),
        ));
        return (VerdictClass::BackendRefused, fact, fd);
    }

    // Dropped after DNAT on the node for another reason, or rejected by the node (a policy, not
    // kube-proxy). A drop after the packet passed the node's last netfilter hook on its way to the
    // backend is not the node's filtering: see `beyond_node`; it falls to the no-answer cases below.
    let node_answer = node_rejection(f, facts);
    if let Some(d) = f.drops.iter().rev().find(|d| !beyond_node(d)) {
        let fact = format!("{path}: dropped ({}){} after DNAT", d.reason, hook_suffix(d.after_hook));
        let fd = with_ep(finding(
            facts,
            VerdictClass::Dropped,
            format!(
                "packets from clients to {who} are dropped on node {} ({})",
                facts.node(),
                d.reason
            ),
        ));
        return (VerdictClass::Dropped, fact, fd);
    }
    if let Some(answer) = node_answer {
        let fd = with_ep(finding(
            facts,
            VerdictClass::Dropped,
            format!(
                "traffic to {who} is rejected by a rule on node {} that is not kube-proxy's",
                facts.node()
            ),
        ));
        return (VerdictClass::Dropped, format!("{answer} after DNAT"), fd);
    }

    // No answer at all. Without the API, a target that answered no flow of the trace is taken as
    // gone; with it, a listed ready endpoint that stays silent is the pod's own fault.
    if !facts.ctx.api_consulted && !facts.answered.contains(&be) && f.frontend.is_some() {
        let mut fd = with_ep(finding(
            facts,
            VerdictClass::StaleEndpoint,
            format!("kube-proxy sends {name} traffic to {who}, which never answered during the trace"),
        ));
        fd.evidence.push(Evidence::new(
            EvidenceKind::Api,
            format!("without the API, {be} answering no flow is taken as a stale endpoint; a hung pod looks the same"),
        ));
        return (VerdictClass::StaleEndpoint, format!("{path}: {}", no_reply(f)), fd);
    }
    let listed = if facts.ctx.api_consulted {
        "a listed, ready endpoint"
    } else {
        "an endpoint that answered other flows"
    };
    let fd = with_ep(finding(
        facts,
        VerdictClass::BackendTimeout,
        format!("{who} does not answer {name} traffic although it is {listed}"),
    ));
    (VerdictClass::BackendTimeout, format!("{path}: {}", no_reply(f)), fd)
}

/// `tcp 10.1.0.5:41234 -> 10.96.0.10:80 -> 10.1.0.7:8080`.
fn path(f: &Flow) -> String {
    let mut s = format!("{} {}", f.protocol, f.client);
    if let Some(fe) = f.frontend {
        s.push_str(&format!(" -> {fe}"));
    }
    if let Some(be) = f.backend {
        s.push_str(&format!(" -> {be}"));
    }
    s
}

/// The node's own answer to a flow (kube-proxy REJECT or a closed local port): an ICMP error from
/// a node address (or from anywhere but the backend when no backend is known), or a RST by the node.
fn node_rejection(f: &Flow, facts: &Facts<'_>) -> Option<String> {
    let target = f.frontend.or(f.backend).map(|a| a.to_string()).unwrap_or_default();
    if let Some(e) = f
        .icmp_errors
        .iter()
        .find(|e| facts.is_node_ip(e.from) || f.backend.is_none_or(|b| b.ip() != e.from) && !is_host_unreachable(e))
    {
        return Some(format!(
            "{} from {} to client {} for {target}",
            icmp_name(e),
            e.from,
            f.client
        ));
    }
    if f.resets.iter().any(|r| r.by == Peer::Node) || f.outcome == Outcome::Rejected && f.backend.is_none() {
        return Some(format!("RST from the node to client {} for {target}", f.client));
    }
    None
}

/// "no reply after 3 SYN retransmits" and friends, with the drops seen beyond the node.
fn no_reply(f: &Flow) -> String {
    let state = if f.outcome == Outcome::Open { "still open, " } else { "" };
    let mut s = match f.handshake.retransmits {
        0 => format!("{state}no reply"),
        n => format!("{state}no reply after {n} retransmits"),
    };
    for d in f.drops.iter().filter(|d| beyond_node(d)) {
        s.push_str(&format!(
            ", dropped ({}) after leaving the node's netfilter path",
            d.reason
        ));
    }
    s
}

/// A drop after the packet passed the node's POSTROUTING hook (our last program, after SNAT): it was
/// handed to the egress device and died there or beyond it, in the backend's own network namespace
/// (a pod whose firewall drops everything, a full accept queue) or on a device without a peer. The
/// node forwarded it; what follows is the backend's silence, not the node's filtering. Drops by TC
/// programs at that point are a CNI's policy on the node and stay node drops.
///
/// Without netfilter programs (the TC hook set) the last hook is unknown; a packet of a flow the
/// node tracked that no longer carries a conntrack entry was scrubbed crossing into another network
/// namespace (a veth to the pod), so it died beyond the node as well.
fn beyond_node(d: &crate::flows::Drop) -> bool {
    let past_postrouting = d.after_hook == Some(Hook::Postrouting);
    let scrubbed = d.after_hook.is_none() && d.before_conntrack;
    (past_postrouting || scrubbed) && !d.reason.starts_with("TC_") && !NO_ROUTE_REASONS.contains(&d.reason.as_str())
}

fn hook_suffix(h: Option<Hook>) -> String {
    match h {
        Some(h) => format!(" after {}", format!("{h:?}").to_lowercase()),
        None => String::new(),
    }
}

fn drop_suffix(f: &Flow) -> String {
    f.drops.last().map(|d| format!(" ({})", d.reason)).unwrap_or_default()
}

fn peer_name(p: Peer) -> &'static str {
    match p {
        Peer::Client => "the client (kubelet)",
        Peer::Backend => "the pod",
        Peer::Node => "the node",
        Peer::Unknown => "an unknown peer",
    }
}

fn kind_name(k: Option<FrontendKind>) -> &'static str {
    match k {
        Some(FrontendKind::NodePort) => "NodePort",
        Some(FrontendKind::ExternalIp) => "external IP",
        Some(FrontendKind::LoadBalancer) => "load-balancer",
        Some(FrontendKind::ClusterIp) => "ClusterIP",
        None => "external",
    }
}

/// ICMP (v4 type 3, v6 type 1) host/net unreachable or no route: the destination does not exist.
fn is_host_unreachable(e: &IcmpError) -> bool {
    match e.from {
        IpAddr::V4(_) => e.icmp_type == 3 && matches!(e.icmp_code, 0 | 1 | 6 | 7),
        IpAddr::V6(_) => e.icmp_type == 1 && matches!(e.icmp_code, 0 | 3),
    }
}

fn is_port_unreachable(e: &IcmpError) -> bool {
    match e.from {
        IpAddr::V4(_) => e.icmp_type == 3 && e.icmp_code == 3,
        IpAddr::V6(_) => e.icmp_type == 1 && e.icmp_code == 4,
    }
}

/// Human name of an ICMP error.
pub(super) fn icmp_name(e: &IcmpError) -> String {
    let name = match (e.from, e.icmp_type, e.icmp_code) {
        (IpAddr::V4(_), 3, 0) => "ICMP net unreachable",
        (IpAddr::V4(_), 3, 1) => "ICMP host unreachable",
        (IpAddr::V4(_), 3, 3) => "ICMP port unreachable",
        (IpAddr::V4(_), 3, 9 | 10 | 13) => "ICMP administratively prohibited",
        (IpAddr::V6(_), 1, 0) => "ICMPv6 no route",
        (IpAddr::V6(_), 1, 1) => "ICMPv6 administratively prohibited",
        (IpAddr::V6(_), 1, 3) => "ICMPv6 address unreachable",
        (IpAddr::V6(_), 1, 4) => "ICMPv6 port unreachable",
        (IpAddr::V4(_), 3, 4) => "ICMP fragmentation needed",
        (IpAddr::V6(_), 2, _) => "ICMPv6 packet too big",
        _ => return format!("ICMP type {} code {}", e.icmp_type, e.icmp_code),
    };
    name.to_owned()
}

/// The rule of `rules` that matches frontend `fe` best (its port and address in the rule text), or the
/// first one.
fn best_rule(rules: &[RuleRef], fe: SocketAddr) -> Option<&RuleRef> {
    let port = fe.port().to_string();
    let ip = fe.ip().to_string();
    // A dual-stack Service has a rule per family (`ip saddr != ... drop` and `ip6 saddr != ...
    // drop`): one naming only the other family's addresses is never this flow's.
    let ours = |r: &&RuleRef| !names_other_family(&r.text, fe.ip());
    rules
        .iter()
        .find(|r| r.text.contains(&ip) && r.text.contains(&port))
        .or_else(|| rules.iter().filter(ours).find(|r| r.text.contains(&port)))
        .or_else(|| rules.iter().find(ours))
        .or_else(|| rules.first())
}

/// True when `text` (a rule) holds an address or CIDR of the other family than `ip`'s and none of
/// `ip`'s.
fn names_other_family(text: &str, ip: IpAddr) -> bool {
    let families: Vec<bool> = text
        .split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}' | '"'))
        .filter_map(|t| t.split('/').next()?.parse::<IpAddr>().ok())
        .map(|a| a.is_ipv6())
        .collect();
    families.contains(&!ip.is_ipv6()) && !families.contains(&ip.is_ipv6())
}
