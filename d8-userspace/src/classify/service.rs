//! Findings from the Service's rules and API facts alone: what `explain` reports, and what a trace
//! adds to its flows' classes (a kube-proxy that is down, a stale DNAT target no flow hit yet).

use super::vocabulary::{Evidence, EvidenceKind, IPVS_MODULES_MISSING_PREFIX, VerdictClass};
use crate::model::{IpFamily, KubeProxyStatus, ProxyMode, WarningKind, k8s::minor_version};

use super::facts::{
    Asked, CONNTRACK_NEAR_FULL, Facts, Finding, finding, push_rule, rule_text, unallocated_finding,
    undefined_port_finding,
};

/// Fill ratio at which the table is full even when the drop counter is unknown: new entries fail.
const CONNTRACK_FULL: f64 = 0.99;

/// A sync waiting longer than this means kube-proxy's rules are stale. kube-proxy's own healthz
/// turns 503 after `2 * syncPeriod` (60 s by default) without a sync; be a little more patient.
const STALE_SYNC_SECS: f64 = 120.0;

/// An API change kube-proxy has not applied after this long is lag, not latency: kube-proxy's
/// default `syncPeriod` (30 s); its `minSyncPeriod` (1 s) and a sync's own time stay well below.
const SYNC_LAG_SECS: f64 = 30.0;

/// Findings of the Service's rules and API facts, unranked.
pub(super) fn findings(facts: &Facts<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    kube_proxy(facts, &mut out);
    if let Asked::Unallocated(protocol, dest) = facts.asked {
        // No Service: nothing of a Service's rules, endpoints or sync to check.
        out.push(unallocated_finding(facts, protocol, dest));
        conntrack(facts, &mut out);
        return out;
    }
    not_synced(facts, &mut out);
    undefined_port(facts, &mut out);
    rules_missing(facts, &mut out);
    conntrack(facts, &mut out);
    endpoints(facts, &mut out);
    version_skew(facts, &mut out);
    out
}

fn kube_proxy(facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let kp = &facts.model.kube_proxy;
    if kp.running != Some(false) {
        return;
    }
    let mut fd = finding(
        facts,
        VerdictClass::KubeProxyNotRunning,
        format!(
            "kube-proxy is not running on node {}: Service rules are no longer maintained",
            facts.node()
        ),
    );
    let healthz = match kp.healthz_status {
        Some(code) => format!("/healthz on 10256 answered {code}"),
        None => "no /healthz on 10256".to_owned(),
    };
    fd.evidence.push(Evidence::new(
        EvidenceKind::KubeProxy,
        format!("no kube-proxy process or pod on node {}; {healthz}", facts.node()),
    ));
    out.push(fd);
}

/// How long kube-proxy's sync has been stale when it is past [`STALE_SYNC_SECS`] (a queued sync
/// waiting, or no sync with one pending); `None` when it is not. Its verdict moves with time alone.
pub fn stale_sync_secs(kp: &KubeProxyStatus) -> Option<f64> {
    kp.sync_pending_secs.filter(|s| *s > STALE_SYNC_SECS).or(kp
        .last_sync_age_secs
        .filter(|s| *s > STALE_SYNC_SECS && kp.sync_pending_secs.is_none_or(|p| p > 0.0)))
}

/// The API changed `svc` after kube-proxy's last sync: its verdict may move with time alone
/// (kube-proxy falling behind by [`SYNC_LAG_SECS`]).
pub fn awaits_sync(svc: &crate::model::Service, kp: &KubeProxyStatus) -> bool {
    matches!((svc.api.last_change_unix, kp.last_sync_unix), (Some(change), Some(sync)) if change > sync)
}

/// kube-proxy runs and its rules exist, but it has not synced since the API changed this Service
/// (its last successful sync is older than the EndpointSlices' last-change-trigger-time, by more
/// than a sync period: normal programming latency and small clock skew between the node and the
/// control plane stay below it), or a sync it queued has waited too long. Not `not running`: the
/// process answers, its loop is stuck.
fn not_synced(facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let kp = &facts.model.kube_proxy;
    if kp.running == Some(false) || !kp.rules_present {
        return;
    }
    let name = facts.name();
    let mut evidence = Vec::new();
    let mut detail = None;
    let change = facts.svc.and_then(|s| s.api.last_change_unix);
    if let (Some(sync), Some(age), Some(change)) = (kp.last_sync_unix, kp.last_sync_age_secs, change) {
        let change_age = age - (change - sync);
        if change > sync && change_age >= SYNC_LAG_SECS {
            evidence.push(Evidence::new(
                EvidenceKind::KubeProxy,
                format!("kube-proxy's last successful rule sync is {age:.0} s old (kubeproxy_sync_proxy_rules_last_timestamp_seconds on 10249)"),
            ));
            evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!(
                    "{name}'s EndpointSlices changed {change_age:.0} s ago (endpoints.kubernetes.io/last-change-trigger-time), {:.0} s after that sync",
                    change - sync
                ),
            ));
            detail = Some(format!(
                "kube-proxy on node {} has not synced for {age:.0} s: the API changed {name} {change_age:.0} s ago and its rules do not have that change",
                facts.node()
            ));
        }
    }
    if let Some(age) = stale_sync_secs(kp) {
        evidence.push(Evidence::new(
            EvidenceKind::KubeProxy,
            format!("kube-proxy's last rule sync is {age:.0} s old with a sync pending (/metrics on 10249)"),
        ));
        detail.get_or_insert_with(|| {
            format!(
                "kube-proxy on node {} has not synced its rules for {age:.0} s",
                facts.node()
            )
        });
    }
    if let Some(detail) = detail {
        let mut fd = finding(facts, VerdictClass::KubeProxyNotSynced, detail);
        fd.evidence = evidence;
        out.push(fd);
    }
}

/// The question was about a port the Service does not define: the answer holds without flows.
/// One finding per ClusterIP (a dual-stack Service has one per family), so the root cause of a
/// trace names the ClusterIP its flows asked for (`rank::lead_of`).
fn undefined_port(facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let (Asked::UndefinedPort(port), Some(svc)) = (facts.asked, facts.svc) else {
        return;
    };
    let mut ips: Vec<std::net::IpAddr> = Vec::new();
    for f in &svc.frontends {
        if f.kind == crate::model::FrontendKind::ClusterIp && !ips.contains(&f.ip) {
            ips.push(f.ip);
        }
    }
    for ip in ips {
        out.push(undefined_port_finding(facts, std::net::SocketAddr::new(ip, port)));
    }
}

fn rules_missing(facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let kp = &facts.model.kube_proxy;
    let name = facts.name();
    let mut evidence = Vec::new();
    let mut detail = None;

    if !kp.rules_present {
        let what = match kp.mode {
            ProxyMode::Nftables => "table ip kube-proxy is absent",
            ProxyMode::Ipvs => "no IPVS virtual servers and no kube-ipvs0",
            ProxyMode::Iptables | ProxyMode::Unknown => "KUBE-SERVICES is absent or empty",
        };
        evidence.push(Evidence::new(
            EvidenceKind::Rules,
            format!("kube-proxy's rules: {what}"),
        ));
        detail = Some(format!(
            "kube-proxy's rules are absent on node {} ({what})",
            facts.node()
        ));
    } else if !facts
        .svc
        .is_some_and(|s| s.rules.present || s.api.proxied == Some(false))
    {
        match facts.api_exists() {
            Some(true) => {
                evidence.push(Evidence::new(EvidenceKind::Api, format!("the API has Service {name}")));
                evidence.push(Evidence::new(
                    EvidenceKind::Rules,
                    format!("no kube-proxy rule mentions {name}"),
                ));
                detail = Some(format!("the API has {name} but kube-proxy's rules lack it"));
            }
            Some(false) => {
                evidence.push(Evidence::new(
                    EvidenceKind::Api,
                    format!("the API has no Service {name}"),
                ));
            }
            None => {
                evidence.push(Evidence::new(
                    EvidenceKind::Rules,
                    format!("no kube-proxy rule mentions {name}; without the API it cannot be told whether the Service exists"),
                ));
                detail = Some(format!(
                    "kube-proxy's rules lack {name} (unconfirmed: API not consulted)"
                ));
            }
        }
    }

    // A dual-stack Service kube-proxy programmed for one family and not the other: its proxiers
    // for IPv4 and IPv6 sync apart (ip6tables, `table ip6 kube-proxy`), so one family's rules can
    // lack what the other's have.
    if detail.is_none()
        && let Some(svc) = facts.svc.filter(|s| s.rules.present && s.api.proxied != Some(false))
    {
        let cluster_ips = || {
            svc.frontends
                .iter()
                .filter(|f| f.kind == crate::model::FrontendKind::ClusterIp)
        };
        let programmed: Vec<IpFamily> = cluster_ips()
            .filter(|f| f.rule.is_some())
            .map(|f| IpFamily::of(f.ip))
            .collect();
        let unprogrammed: Vec<_> = cluster_ips()
            .filter(|f| f.rule.is_none() && !programmed.contains(&IpFamily::of(f.ip)))
            .collect();
        if let (Some(ok), Some(first)) = (programmed.first(), unprogrammed.first()) {
            let family = IpFamily::of(first.ip);
            evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!("the API gives {name} the {family} ClusterIP {}", first.ip),
            ));
            evidence.push(Evidence::new(
                EvidenceKind::Rules,
                format!(
                    "kube-proxy's {ok} rules have {name}; its {family} rules do not mention {}",
                    first.ip
                ),
            ));
            detail = Some(format!(
                "kube-proxy programmed {name} for {ok} but not for {family}: its {family} rules lack the ClusterIP {}",
                first.ip
            ));
        }
    }

    if let Some(svc) = facts.svc.filter(|s| s.rules.present) {
        let ready = facts.api_ready_endpoints();
        if !svc.rules.no_endpoints.is_empty() && !ready.is_empty() {
            for r in &svc.rules.no_endpoints {
                evidence.push(Evidence::new(EvidenceKind::Rules, rule_text(r)));
            }
            evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!(
                    "EndpointSlices of {name} list {} ready endpoints: {}",
                    ready.len(),
                    addrs(&ready)
                ),
            ));
            detail.get_or_insert_with(|| {
                format!("kube-proxy rejects {name} as having no endpoints while the API lists ready ones: its rules are not synced")
            });
        }
        // Ready endpoints the rules do not DNAT to, of those kube-proxy programs on this node
        // (`model::topology`: traffic policies and topology hints leave some out on purpose).
        let missing: Vec<_> = ready
            .iter()
            .filter(|e| !e.in_rules && facts.expected_on_node(e) != Some(false))
            .copied()
            .collect();
        if !missing.is_empty() && svc.rules.no_endpoints.is_empty() {
            evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!("ready in the API, absent from kube-proxy's rules: {}", addrs(&missing)),
            ));
            detail.get_or_insert_with(|| {
                format!(
                    "kube-proxy's rules for {name} miss {} ready endpoints: not synced",
                    missing.len()
                )
            });
        }
    }

    if kp.healthz_ok == Some(false) || kp.healthz_status.is_some_and(|c| c != 200) {
        let code = kp
            .healthz_status
            .map_or_else(|| "not 200".to_owned(), |c| c.to_string());
        evidence.push(Evidence::new(
            EvidenceKind::KubeProxy,
            format!("/healthz on 10256 answered {code}"),
        ));
        detail.get_or_insert_with(|| {
            format!(
                "kube-proxy on node {} reports unhealthy: its rules are stale",
                facts.node()
            )
        });
    }
    // The model says which IPVS modules are missing (`model::view`); the evidence line carries the
    // runbook's marker, which the runbook block reads back from the report.
    if kp.mode == ProxyMode::Ipvs
        && let Some(p) = facts.model.warnings.iter().find(|w| w.kind == WarningKind::IpvsModules)
    {
        evidence.push(Evidence::new(
            EvidenceKind::KubeProxy,
            format!("{IPVS_MODULES_MISSING_PREFIX}: {p}"),
        ));
    }

    if let Some(detail) = detail {
        let mut fd = finding(facts, VerdictClass::KubeProxyRulesMissing, detail);
        fd.evidence = evidence;
        out.push(fd);
    }
}

fn conntrack(facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let Some(ct) = facts.ctx.conntrack else {
        return;
    };
    let ratio = ct.fill_ratio();
    let rising = ct.drop_delta.filter(|d| *d > 0);
    let mut evidence = Vec::new();
    if let (Some(c), Some(m), Some(r)) = (ct.count, ct.max, ratio) {
        evidence.push(Evidence::new(
            EvidenceKind::Conntrack,
            format!("nf_conntrack_count {c} of nf_conntrack_max {m} ({:.0} %)", r * 100.0),
        ));
    }
    if let Some(d) = rising {
        evidence.push(Evidence::new(
            EvidenceKind::Conntrack,
            format!("conntrack drop counter (/proc/net/stat/nf_conntrack) rose by {d}"),
        ));
    }
    // A rising drop counter proves new entries are refused; a table at the brim nearly does.
    if rising.is_some() || ratio.is_some_and(|r| r >= CONNTRACK_FULL) {
        let mut fd = finding(
            facts,
            VerdictClass::ConntrackFull,
            format!(
                "the conntrack table on node {} is full: new flows are dropped",
                facts.node()
            ),
        );
        fd.evidence = evidence;
        out.push(fd);
    } else if ratio.is_some_and(|r| r >= CONNTRACK_NEAR_FULL) {
        // Not a fault yet, but worth a line whatever the verdict: attach it to a benign finding.
        let mut fd = finding(facts, VerdictClass::Healthy, "conntrack near full".into());
        fd.evidence = evidence;
        out.push(fd);
    }
}

fn endpoints(facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let Some(svc) = facts.svc else { return };
    if !svc.rules.present {
        return;
    }
    let name = facts.name();
    let ready = facts.api_ready_endpoints();

    // REJECT "has no endpoints" and the API agrees (or was not asked).
    if !svc.rules.no_endpoints.is_empty() && ready.is_empty() {
        let mut fd = finding(
            facts,
            VerdictClass::NoEndpoints,
            format!("{name} has no ready endpoints; kube-proxy rejects its traffic"),
        );
        for r in &svc.rules.no_endpoints {
            push_rule(&mut fd, Some(r));
        }
        if facts.ctx.api_consulted {
            let listed = svc.endpoints.iter().filter(|e| e.in_api == Some(true)).count();
            fd.evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!("EndpointSlices of {name} list no ready endpoints ({listed} not ready)"),
            ));
        }
        out.push(fd);
    }

    // Frontends in the rules but no endpoint and no REJECT rule: an IPVS virtual server without
    // real servers, which answers ICMP port unreachable itself.
    let programmed: Vec<_> = svc.frontends.iter().filter_map(|f| f.rule.as_ref()).collect();
    if svc.rules.no_endpoints.is_empty()
        && !programmed.is_empty()
        && !svc.endpoints.iter().any(|e| e.in_rules)
        && ready.is_empty()
    {
        let ipvs = programmed.iter().any(|r| r.source == crate::model::RuleSource::Ipvs);
        let detail = if ipvs {
            format!(
                "{name} has no ready endpoints; its IPVS virtual servers have no real servers, so IPVS rejects its traffic"
            )
        } else {
            format!("{name} has no ready endpoints; kube-proxy rejects its traffic")
        };
        let mut fd = finding(facts, VerdictClass::NoEndpoints, detail);
        for r in programmed.iter().take(3) {
            push_rule(&mut fd, Some(r));
        }
        fd.evidence.push(Evidence::new(
            EvidenceKind::Rules,
            format!("kube-proxy's rules for {name} have frontends and no endpoint"),
        ));
        if facts.ctx.api_consulted {
            fd.evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!("EndpointSlices of {name} list no ready endpoints"),
            ));
        }
        out.push(fd);
    }

    // DROP "has no local endpoints".
    if !svc.rules.no_local_endpoints.is_empty() {
        let policy = if svc.api.internal_traffic_policy_local == Some(true)
            && svc.api.external_traffic_policy_local != Some(true)
        {
            "internalTrafficPolicy"
        } else {
            "externalTrafficPolicy"
        };
        let mut fd = finding(
            facts,
            VerdictClass::EtpLocalNoLocalEndpoints,
            format!(
                "{name} has {policy}=Local and no ready endpoint on node {}: kube-proxy drops its external traffic here",
                facts.node()
            ),
        );
        for r in &svc.rules.no_local_endpoints {
            push_rule(&mut fd, Some(r));
        }
        if facts.ctx.api_consulted {
            let elsewhere = ready.iter().filter(|e| e.local == Some(false)).count();
            fd.evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!(
                    "{policy}=Local; ready endpoints on node {}: 0, on other nodes: {elsewhere}",
                    facts.node()
                ),
            ));
        }
        out.push(fd);
    }

    // DNAT targets the API does not list, or lists as not ready.
    for e in svc.endpoints.iter().filter(|e| e.in_rules) {
        if let Some(expected) = facts.expected_not_ready(e) {
            let mut fd = finding(facts, VerdictClass::Healthy, "expected not-ready endpoint".into());
            fd.evidence.push(Evidence::new(
                EvidenceKind::Api,
                format!("{} is {expected}: kube-proxy keeps it on purpose", e.addr()),
            ));
            out.push(fd);
            continue;
        }
        let why = if e.in_api == Some(false) {
            "is not in the Service's EndpointSlices"
        } else if e.ready == Some(false) {
            "is listed but not ready"
        } else {
            continue;
        };
        let target = e.addr().to_string();
        let who = match &e.pod {
            Some(p) => format!("{target} (pod {p})"),
            None => target.clone(),
        };
        let mut fd = finding(
            facts,
            VerdictClass::StaleEndpoint,
            format!("kube-proxy sends {name} traffic to {who}, which {why}"),
        );
        push_rule(&mut fd, e.rule.as_ref());
        fd.evidence
            .push(Evidence::new(EvidenceKind::Api, format!("{target} {why} of {name}")));
        fd.pod = e.pod.clone();
        fd.backend = Some(std::net::SocketAddr::new(e.ip, e.port));
        out.push(fd);
    }

    if let Some(note) = facts.topology_note() {
        let mut fd = finding(facts, VerdictClass::Healthy, "topology narrowed the endpoints".into());
        fd.evidence.push(Evidence::new(EvidenceKind::Api, note));
        out.push(fd);
    }

    for p in &svc.rules.problems {
        let mut fd = finding(facts, VerdictClass::Healthy, "rule problem".into());
        fd.evidence
            .push(Evidence::new(EvidenceKind::Rules, format!("problem: {p}")));
        out.push(fd);
    }
}

fn version_skew(facts: &Facts<'_>, out: &mut Vec<Finding>) {
    let m = facts.model;
    let Some(kp) = &m.kube_proxy.version else {
        return;
    };
    let Some(k) = minor_version(kp) else { return };
    // The API server's own version: skew either way. Only a lower bound (the newest kubelet): it
    // can prove kube-proxy too old, never too new.
    let (api, exact) = match (&m.api_server_version, &m.min_api_server_version) {
        (Some(v), _) => (v, true),
        (None, Some(v)) => (v, false),
        (None, None) => return,
    };
    let Some(a) = minor_version(api) else { return };
    let skewed = if k.0 != a.0 {
        exact || k.0 < a.0
    } else if exact {
        k.1.abs_diff(a.1) > 1
    } else {
        k.1 + 1 < a.1
    };
    if !skewed {
        return;
    }
    let (detail, api_line) = if exact {
        (
            format!("kube-proxy {kp} is more than one minor version from the API server {api}"),
            format!("API server version {api}"),
        )
    } else {
        (
            format!("kube-proxy {kp} is more than one minor version older than the API server (at least {api})"),
            format!("API server version at least {api} (newest kubelet; the API server is never older)"),
        )
    };
    let mut fd = finding(facts, VerdictClass::KubeProxyVersionSkew, detail);
    fd.evidence.push(Evidence::new(
        EvidenceKind::KubeProxy,
        format!("kube-proxy version {kp}"),
    ));
    fd.evidence.push(Evidence::new(EvidenceKind::Api, api_line));
    out.push(fd);
}

fn addrs(eps: &[&crate::model::Endpoint]) -> String {
    eps.iter().map(|e| e.addr().to_string()).collect::<Vec<_>>().join(", ")
}
