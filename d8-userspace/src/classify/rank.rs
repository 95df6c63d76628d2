//! The ranking: every flow's class and every finding grouped into causes, ordered into one root
//! cause with its evidence, severity and mitigation. The top of the classifier: it calls the flow
//! and Service checks and the advice, which know nothing of it.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::facts::{Asked, Cause, Context, Facts, Finding, FlowVerdict, Verdict, flows_n, rule_text};
use super::vocabulary::{Evidence, EvidenceKind, RootCause, Severity, VerdictClass};
use crate::flows::Flow;
use crate::model::{IpFamily, Service, ServiceModel, ServiceRef, Warning, WarningKind};

use super::{advice, flow, service};

/// At most this many trace facts per cause go into the evidence; the rest are counted.
const MAX_TRACE_FACTS: usize = 5;

/// Classifies `flows` to `target` against `model`. `flows` empty: the verdict rules and API alone
/// support (`explain`, or a trace that saw nothing).
///
/// ```no_run
/// use d8_trace::classify::{Context, classify};
/// use d8_trace::model::{ServiceModel, ServiceRef};
///
/// let svc = ServiceRef { namespace: "shop".into(), name: "web".into() };
/// let model = ServiceModel::default(); // from rules::read_node and k8s::apply
/// let explain = Context { api_consulted: true, ..Context::default() };
/// let verdict = classify(&svc, &[], &model, &explain);
/// println!("{}: {}", verdict.root_cause.class, verdict.root_cause.detail);
/// ```
pub fn classify(target: &ServiceRef, flows: &[Flow], model: &ServiceModel, ctx: &Context) -> Verdict {
    classify_asked(target, Asked::Service, flows, model, ctx)
}

/// [`classify`] of a question about more than the Service ([`Asked`]): a port number it does
/// not define (`service_port_undefined`), an address no Service holds (`cluster_ip_unallocated`);
/// the answer is that even without flows (`explain`).
pub fn classify_asked(
    target: &ServiceRef,
    asked: Asked,
    flows: &[Flow],
    model: &ServiceModel,
    ctx: &Context,
) -> Verdict {
    classify_found(target, model.service(target), asked, flows, model, ctx)
}

/// [`classify`] of a Service the caller has found in `model` already (the daemon classifies each
/// of 10,000: looking each up by name again made a round quadratic).
pub fn classify_service(svc: &Service, flows: &[Flow], model: &ServiceModel, ctx: &Context) -> Verdict {
    classify_found(&svc.service, Some(svc), Asked::Service, flows, model, ctx)
}

fn classify_found(
    target: &ServiceRef,
    svc: Option<&Service>,
    asked: Asked,
    flows: &[Flow],
    model: &ServiceModel,
    ctx: &Context,
) -> Verdict {
    let mut node_ips = model.node_ips.clone();
    for ip in &ctx.host_ips {
        if !node_ips.contains(ip) {
            node_ips.push(*ip);
        }
    }
    let answered = flows
        .iter()
        .filter(|f| f.handshake.reply)
        .filter_map(|f| f.backend)
        .collect();
    let facts = Facts {
        target,
        svc,
        model,
        ctx,
        node_ips,
        answered,
        asked,
    };

    let classified: Vec<(FlowVerdict, Finding)> = flows.iter().map(|f| flow::classify_flow(f, &facts)).collect();
    let findings = service::findings(&facts);
    let families: Vec<IpFamily> = flows.iter().map(|f| IpFamily::of(f.client.ip())).collect();
    rank(&facts, classified, findings, &families)
}

/// `, over IPv6` when the Service is dual-stack and the flows of a cause are all of one family:
/// the other family may be fine, and the reader must know which path failed.
fn family_note(dual_stack: bool, families: &[IpFamily], flows: &[usize]) -> String {
    let mut of: Vec<IpFamily> = flows.iter().filter_map(|&i| families.get(i).copied()).collect();
    of.sort();
    of.dedup();
    match of.as_slice() {
        [one] if dual_stack => format!(", over {one}"),
        _ => String::new(),
    }
}

/// Groups flow findings and service findings by class, ranks the classes, and writes the verdict.
/// `families[i]` is the address family of flow `i`.
fn rank(
    facts: &Facts<'_>,
    classified: Vec<(FlowVerdict, Finding)>,
    findings: Vec<Finding>,
    families: &[IpFamily],
) -> Verdict {
    let svc_families = facts.svc.map(|s| s.ip_families()).unwrap_or_default();
    let dual_stack = svc_families.len() > 1;
    struct Group {
        class: VerdictClass,
        flows: Vec<usize>,
        findings: Vec<Finding>,
    }
    let mut groups: Vec<Group> = Vec::new();
    fn group(class: VerdictClass, groups: &mut Vec<Group>) -> usize {
        if let Some(i) = groups.iter().position(|g| g.class == class) {
            i
        } else {
            groups.push(Group {
                class,
                flows: Vec::new(),
                findings: Vec::new(),
            });
            groups.len() - 1
        }
    }
    for (i, (v, _)) in classified.iter().enumerate() {
        let g = group(v.class, &mut groups);
        groups[g].flows.push(i);
    }
    for f in findings {
        let g = group(f.class, &mut groups);
        groups[g].findings.push(f);
    }
    // Flow-proven causes first; then by how fundamental the class is (a kube-proxy that is down
    // explains everything below it, a dropped packet explains nothing above it).
    groups.sort_by_key(|g| (g.flows.is_empty(), rank_of(g.class)));

    let probe_flows = classified
        .iter()
        .filter(|(v, _)| v.class == VerdictClass::ProbeRst)
        .count();
    let service_flows = classified.len() - probe_flows;
    let failing_flows = classified.iter().filter(|(v, _)| v.class.is_fault()).count();

    let faults: Vec<&Group> = groups.iter().filter(|g| g.class.is_fault()).collect();
    let mut evidence = Vec::new();
    let mut causes = Vec::new();
    let mut cause_kinds = Vec::new();
    for g in &faults {
        let lead = lead_of(&g.flows, &g.findings, &classified);
        let backends: HashSet<SocketAddr> = g.flows.iter().filter_map(|&i| classified[i].1.backend).collect();
        let over = family_note(dual_stack, families, &g.flows);
        let detail = match (g.flows.len(), backends.len()) {
            (0, _) => lead.detail,
            (n, 0 | 1) => format!("{} ({}{over})", lead.detail, flows_n(n)),
            (n, b) => format!("{} ({} to {b} backends{over})", lead.detail, flows_n(n)),
        };
        // The kind of an "also" line: trace when flows prove the cause, else where its finding
        // comes from.
        let kind = if g.flows.is_empty() {
            g.findings
                .iter()
                .flat_map(|f| f.evidence.first())
                .map(|e| e.kind)
                .next()
                .unwrap_or(EvidenceKind::Rules)
        } else {
            EvidenceKind::Trace
        };
        causes.push(Cause {
            class: g.class,
            flows: g.flows.len(),
            detail,
        });
        cause_kinds.push(kind);
    }

    let (root_cause, severity, mitigation) = match faults.first() {
        Some(g) => {
            // Evidence of the root cause: its findings' evidence, the flows' own evidence (rules they
            // went through), then the trace facts.
            let lead = lead_of(&g.flows, &g.findings, &classified);
            for f in &g.findings {
                push_unique(&mut evidence, &f.evidence);
            }
            for &i in &g.flows {
                push_unique(&mut evidence, &classified[i].1.evidence);
            }
            push_trace_facts(&mut evidence, g.flows.iter().map(|&i| &classified[i].0));
            let detail = causes[0].detail.clone();
            let severity = advice::severity(g.class, g.flows.len(), failing_flows, service_flows);
            let mitigation = advice::mitigation(g.class, facts, &lead);
            (RootCause { class: g.class, detail }, severity, mitigation)
        }
        None => {
            let detail = advice::healthy_detail(facts, service_flows, probe_flows);
            for g in &groups {
                for f in &g.findings {
                    push_unique(&mut evidence, &f.evidence);
                }
                // What was checked: the rules the flows went through.
                for &i in &g.flows {
                    push_unique(&mut evidence, &classified[i].1.evidence);
                }
                push_trace_facts(&mut evidence, g.flows.iter().map(|&i| &classified[i].0));
            }
            push_checked(facts, &mut evidence);
            // A dual-stack Service traced over one family only: healthy says nothing of the other.
            let traced: HashSet<IpFamily> = families.iter().copied().collect();
            let untraced: Vec<&str> = svc_families
                .iter()
                .filter(|f| !traced.contains(f))
                .map(|f| f.as_str())
                .collect();
            if dual_stack && !traced.is_empty() && !untraced.is_empty() {
                evidence.push(Evidence::new(
                    EvidenceKind::Trace,
                    format!(
                        "{} is dual-stack and no {} flow was traced: that path was not checked (trace with --family)",
                        facts.name(),
                        untraced.join(" or ")
                    ),
                ));
            }
            (
                RootCause {
                    class: VerdictClass::Healthy,
                    detail,
                },
                Severity::None,
                advice::healthy_mitigation(facts),
            )
        }
    };

    // Other causes, ranked, one line each, so overlapping incidents stay visible.
    for (c, kind) in causes.iter().zip(&cause_kinds).skip(1) {
        evidence.push(Evidence::new(*kind, format!("also ({}): {}", c.class, c.detail)));
    }
    if !faults.is_empty() {
        // Probe resets next to a fault: say they were seen and set aside.
        if probe_flows > 0 {
            evidence.push(Evidence::new(
                EvidenceKind::Trace,
                format!(
                    "{} closed by RST: kubelet probes, normal, not counted as failures",
                    flows_n(probe_flows).replace("flow", "connection")
                ),
            ));
        }
        // Notes that are not faults (conntrack filling up, rule problems) whatever the verdict.
        for g in groups.iter().filter(|g| !g.class.is_fault()) {
            for f in &g.findings {
                push_unique(&mut evidence, &f.evidence);
            }
        }
    }
    push_context_evidence(facts, &mut evidence);

    Verdict {
        flows: classified.into_iter().map(|(v, _)| v).collect(),
        causes,
        root_cause,
        evidence,
        severity,
        mitigation,
    }
}

/// The finding that speaks for a cause: without flows, its first finding; with flows, the one
/// about the backend most of them went to (a service finding about it when there is one, since it
/// carries the API's word), or a Service-wide finding when the flows had no backend.
fn lead_of(flows: &[usize], findings: &[Finding], classified: &[(FlowVerdict, Finding)]) -> Finding {
    let Some(&first) = flows.first() else {
        return findings.first().cloned().expect("a cause has a flow or a finding");
    };
    let mut counts: Vec<(Option<SocketAddr>, usize)> = Vec::new();
    for &i in flows {
        let b = classified[i].1.backend;
        match counts.iter_mut().find(|(x, _)| *x == b) {
            Some((_, n)) => *n += 1,
            None => counts.push((b, 1)),
        }
    }
    // Most flows first; ties go to the backend seen first.
    let top = counts.iter().rev().max_by_key(|(_, n)| *n).and_then(|(b, _)| *b);
    // A finding about a frontend (an undefined port of one of a dual-stack Service's ClusterIPs)
    // leads only for flows that asked for that frontend.
    let asked: Vec<SocketAddr> = flows.iter().filter_map(|&i| classified[i].1.frontend).collect();
    let service_finding = match top {
        Some(b) => findings.iter().find(|f| f.backend == Some(b)),
        None => findings
            .iter()
            .find(|f| f.backend.is_none() && f.frontend.is_none_or(|fe| asked.is_empty() || asked.contains(&fe))),
    };
    if let Some(f) = service_finding {
        return f.clone();
    }
    flows
        .iter()
        .map(|&i| &classified[i].1)
        .find(|f| f.backend == top)
        .unwrap_or(&classified[first].1)
        .clone()
}

/// Rank of a class as a root cause: lower is more fundamental.
pub(super) const fn rank_of(class: VerdictClass) -> u8 {
    match class {
        VerdictClass::KubeProxyNotRunning => 0,
        // A kube-proxy that stopped syncing explains the rules it lacks.
        VerdictClass::KubeProxyNotSynced => 1,
        VerdictClass::KubeProxyRulesMissing => 2,
        VerdictClass::ConntrackFull => 3,
        VerdictClass::NoEndpoints => 4,
        VerdictClass::EtpLocalNoLocalEndpoints => 5,
        VerdictClass::SourceRangeDenied => 6,
        VerdictClass::ServicePortUndefined => 7,
        VerdictClass::ClusterIpUnallocated => 8,
        VerdictClass::StaleEndpoint => 9,
        VerdictClass::StaleConntrackEntry => 10,
        VerdictClass::BackendRefused => 11,
        VerdictClass::BackendTimeout => 12,
        VerdictClass::Dropped => 13,
        VerdictClass::KubeProxyVersionSkew => 14,
        VerdictClass::ProbeRst => 15,
        VerdictClass::Healthy => 16,
    }
}

/// The evidence kind of a model warning.
fn warning_kind(w: &Warning) -> EvidenceKind {
    match w.kind {
        WarningKind::Rules => EvidenceKind::Rules,
        WarningKind::Api => EvidenceKind::Api,
        WarningKind::KubeProxy | WarningKind::IpvsModules => EvidenceKind::KubeProxy,
        // Not model warnings (the tracer adds them to the report), but a trace's if they were.
        WarningKind::Kernel | WarningKind::Capture => EvidenceKind::Trace,
    }
}

fn push_unique(out: &mut Vec<Evidence>, items: &[Evidence]) {
    for e in items {
        if !out.contains(e) {
            out.push(e.clone());
        }
    }
}

fn push_trace_facts<'a>(out: &mut Vec<Evidence>, flows: impl Iterator<Item = &'a FlowVerdict>) {
    let facts: Vec<&FlowVerdict> = flows.collect();
    for v in facts.iter().take(MAX_TRACE_FACTS) {
        out.push(Evidence::new(EvidenceKind::Trace, v.fact.clone()));
    }
    if facts.len() > MAX_TRACE_FACTS {
        out.push(Evidence::new(
            EvidenceKind::Trace,
            format!("... and {} more like these", flows_n(facts.len() - MAX_TRACE_FACTS)),
        ));
    }
}

/// What a `healthy` verdict checked: the frontends' rules, the API's endpoints, kube-proxy.
fn push_checked(facts: &Facts<'_>, out: &mut Vec<Evidence>) {
    let Some(svc) = facts.svc else { return };
    let rules: Vec<Evidence> = svc
        .frontends
        .iter()
        .filter_map(|f| f.rule.as_ref())
        .take(MAX_TRACE_FACTS)
        .map(|r| Evidence::new(EvidenceKind::Rules, rule_text(r)))
        .collect();
    push_unique(out, &rules);
    if facts.ctx.api_consulted {
        let ready = facts.api_ready_endpoints();
        let programmed = ready.iter().filter(|e| e.in_rules).count();
        out.push(Evidence::new(
            EvidenceKind::Api,
            format!(
                "EndpointSlices of {} list {} ready endpoints, {programmed} of them DNAT targets in the rules",
                facts.name(),
                ready.len()
            ),
        ));
    }
    let kp = &facts.model.kube_proxy;
    if kp.running == Some(true) {
        let healthz = kp.healthz_status.map(|c| format!(", /healthz {c}")).unwrap_or_default();
        out.push(Evidence::new(
            EvidenceKind::KubeProxy,
            format!("kube-proxy running on node {}{healthz}", facts.node()),
        ));
    }
}

/// Evidence every verdict carries: what the API could not prove, lost events, model warnings.
fn push_context_evidence(facts: &Facts<'_>, out: &mut Vec<Evidence>) {
    if !facts.ctx.api_consulted {
        out.push(Evidence::new(
            EvidenceKind::Api,
            "Kubernetes API not consulted (--no-k8s or unreachable): stale_endpoint is inferred only from \
             DNAT targets that never answer or have no route; kube_proxy_rules_missing cannot be proven \
             for a Service absent from the rules; no_endpoints rests on the REJECT rule alone; endpoint \
             readiness and locality, probe ports and version skew are unknown",
        ));
    }
    if facts.ctx.lost_events > 0 {
        out.push(Evidence::new(
            EvidenceKind::Trace,
            format!(
                "{} kernel events lost: a flow without a reply may have had one that was not seen",
                facts.ctx.lost_events
            ),
        ));
    }
    for w in facts.model.warnings.iter().take(MAX_TRACE_FACTS) {
        out.push(Evidence::new(warning_kind(w), format!("warning: {w}")));
    }
}
