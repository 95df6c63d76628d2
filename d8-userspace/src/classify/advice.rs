//! Severity and mitigation for a root cause: what it costs and what the operator does about it.
//!
//! Mitigations name the Service, node and pod so the commands can be pasted as they are.

use super::vocabulary::{Mitigation, Severity, VerdictClass};

use super::facts::{Facts, Finding, flows_n};

/// Severity of a root cause of `class`, backed by `class_flows` flows, when `failing` of `traced`
/// Service flows (kubelet probes excluded) failed.
pub(super) fn severity(class: VerdictClass, class_flows: usize, failing: usize, traced: usize) -> Severity {
    let base = match class {
        VerdictClass::Healthy | VerdictClass::ProbeRst => return Severity::None,
        VerdictClass::KubeProxyVersionSkew => return Severity::Low,
        VerdictClass::KubeProxyNotRunning
        | VerdictClass::KubeProxyNotSynced
        | VerdictClass::KubeProxyRulesMissing
        | VerdictClass::ConntrackFull
        | VerdictClass::NoEndpoints => Severity::High,
        VerdictClass::EtpLocalNoLocalEndpoints
        | VerdictClass::ServicePortUndefined
        | VerdictClass::ClusterIpUnallocated
        | VerdictClass::SourceRangeDenied
        | VerdictClass::StaleConntrackEntry
        | VerdictClass::StaleEndpoint
        | VerdictClass::BackendRefused
        | VerdictClass::BackendTimeout
        | VerdictClass::Dropped => Severity::Medium,
    };
    if traced > 0 && failing == 0 {
        // Traffic was traced and all of it worked: the problem is real but not hurting yet.
        return lower(base);
    }
    if traced > 0 && class_flows > 0 && failing == traced {
        return Severity::High;
    }
    base
}

fn lower(s: Severity) -> Severity {
    match s {
        Severity::High => Severity::Medium,
        Severity::Medium | Severity::Low => Severity::Low,
        Severity::None => Severity::None,
    }
}

/// The detail of a `healthy` root cause: what was checked.
pub(super) fn healthy_detail(facts: &Facts<'_>, service_flows: usize, probe_flows: usize) -> String {
    let name = facts.name();
    let eps = facts
        .svc
        .map_or(0, |s| s.endpoints.iter().filter(|e| e.in_rules).count());
    let api = match facts.svc.and_then(|s| s.api.topology.as_ref()?.mode.as_ref()) {
        Some(mode) if facts.ctx.api_consulted => {
            let ready = facts.api_ready_endpoints();
            let kept = ready.iter().filter(|e| facts.expected_on_node(e) == Some(true)).count();
            format!("rules and API agree ({kept} of {} endpoints, {mode})", ready.len())
        }
        _ if facts.ctx.api_consulted => "rules and API agree".to_owned(),
        _ => "rules look consistent (API not consulted)".to_owned(),
    };
    let probes = if probe_flows > 0 {
        let n = flows_n(probe_flows).replace("flow", "kubelet probe reset");
        format!("; {n} (normal)")
    } else {
        String::new()
    };
    if facts.svc.is_none() {
        let api = if facts.ctx.api_consulted { " nor in the API" } else { "" };
        return format!("no Service {name} in kube-proxy's rules{api}: check the namespace and name");
    }
    if !facts.ctx.traced {
        format!("{api} on {name}: {eps} endpoints programmed, no fault found without tracing{probes}")
    } else if service_flows == 0 {
        let secs = facts
            .ctx
            .duration_ms
            .map(|d| format!(" in {} s", d / 1000))
            .unwrap_or_default();
        format!("no flow to {name} was seen{secs}; {api}, {eps} endpoints programmed{probes}")
    } else {
        let n = flows_n(service_flows);
        format!("{n} to {name} traced, all completed; {api}, {eps} endpoints programmed{probes}")
    }
}

/// Nothing to do.
pub(super) fn healthy_mitigation(facts: &Facts<'_>) -> Mitigation {
    let (ns, name) = (&facts.target.namespace, &facts.target.name);
    Mitigation {
        immediate: "none".into(),
        long_term: format!(
            "none; if clients still fail, trace from their node (d8-trace --svc {ns}/{name} on that node) or check DNS"
        ),
    }
}

/// What to do about a root cause of `class`; `lead` is the finding that leads the cause (its pod
/// and backend).
pub(super) fn mitigation(class: VerdictClass, facts: &Facts<'_>, lead: &Finding) -> Mitigation {
    let (ns, name) = (&facts.target.namespace, &facts.target.name);
    let node = facts.node();
    let kube_proxy_pods =
        format!("kubectl -n kube-system get pods -l k8s-app=kube-proxy --field-selector spec.nodeName={node} -o wide");
    let restart_kube_proxy =
        format!("kubectl -n kube-system delete pod -l k8s-app=kube-proxy --field-selector spec.nodeName={node}");
    // `namespace/pod` -> (namespace, pod); default to the Service's namespace.
    let pod = lead.pod.as_deref().map(|p| match p.split_once('/') {
        Some((pns, pname)) => (pns.to_owned(), pname.to_owned()),
        None => (ns.clone(), p.to_owned()),
    });
    let port = lead
        .backend
        .map(|b| b.port().to_string())
        .unwrap_or_else(|| "<targetPort>".into());
    let slices = format!("kubectl -n {ns} get endpointslices -l kubernetes.io/service-name={name} -o wide");

    let (immediate, long_term) = match class {
        VerdictClass::KubeProxyNotRunning => (
            format!("{kube_proxy_pods}; kubectl -n kube-system logs -l k8s-app=kube-proxy --previous --tail=100 (or systemctl status kube-proxy on {node})"),
            "find why kube-proxy exits (OOM, config, API credentials) and alert on the kube-proxy DaemonSet's unavailable pods".into(),
        ),
        VerdictClass::KubeProxyRulesMissing => {
            let ipvs = facts.model.kube_proxy.mode == crate::model::ProxyMode::Ipvs
                && facts.model.warnings.iter().any(|w| w.kind == crate::model::WarningKind::IpvsModules);
            if ipvs {
                (
                    format!("on node {node}: modprobe -a ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh nf_conntrack; then {restart_kube_proxy}"),
                    "load the IPVS modules at boot (/etc/modules-load.d) or move kube-proxy to nftables/iptables mode".into(),
                )
            } else {
                (
                    format!("restart kube-proxy on {node}: {restart_kube_proxy}"),
                    "check kube-proxy's log for sync errors (iptables-restore/nft failures, xtables lock contention, API errors) and alert on kubeproxy_sync_proxy_rules_last_timestamp_seconds".into(),
                )
            }
        }
        VerdictClass::KubeProxyNotSynced => (
            format!("kubectl -n kube-system logs -l k8s-app=kube-proxy --field-selector spec.nodeName={node} --tail=200 (sync errors, API watch errors); then restart it: {restart_kube_proxy}"),
            "alert when time() - kubeproxy_sync_proxy_rules_last_timestamp_seconds exceeds a few sync periods while kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds is newer, and find what blocks kube-proxy's sync loop (xtables lock, nft errors, API connectivity, CPU throttling)".into(),
        ),
        VerdictClass::ConntrackFull => (
            format!("on node {node}: sysctl -w net.netfilter.nf_conntrack_max=<2 x current> (check conntrack -C)"),
            "size conntrack with kube-proxy's conntrack.maxPerCore/min, find the source of connection churn, and alert on nf_conntrack_count near nf_conntrack_max".into(),
        ),
        VerdictClass::NoEndpoints => (
            format!("kubectl -n {ns} describe service {name}; {slices}; kubectl -n {ns} get pods -o wide (are the selected pods Ready?)"),
            format!("fix the readiness of the pods behind {ns}/{name} (or the Service selector); keep enough replicas and a PodDisruptionBudget so it never has zero ready endpoints"),
        ),
        VerdictClass::EtpLocalNoLocalEndpoints => (
            format!("kubectl -n {ns} patch service {name} -p '{{\"spec\":{{\"externalTrafficPolicy\":\"Cluster\"}}}}' (loses the client source IP), or send external traffic only to nodes with a ready {ns}/{name} pod"),
            format!("let the load balancer use the Service's healthCheckNodePort, or run {ns}/{name}'s pods on every node that receives its traffic (DaemonSet, topology spread)"),
        ),
        VerdictClass::StaleEndpoint => {
            let check = match &pod {
                Some((pns, p)) => format!("kubectl -n {pns} get pod {p} -o wide; "),
                None => String::new(),
            };
            (
                format!("{check}{slices}; if the rules still DNAT to a gone pod, restart kube-proxy on {node}: {restart_kube_proxy}"),
                format!("find why kube-proxy on {node} misses EndpointSlice updates (API connectivity, sync errors); give {ns}/{name}'s pods readiness probes and a preStop delay so they leave endpoints before they stop"),
            )
        }
        VerdictClass::BackendRefused => {
            let which = match &pod {
                Some((pns, p)) => format!("kubectl -n {pns} logs {p} --tail=100; kubectl -n {pns} get pod {p} -o jsonpath='{{.spec.containers[*].ports}}'"),
                None => format!("{slices}; kubectl -n {ns} logs <backend-pod>"),
            };
            (
                format!("{which}; compare with the Service's targetPort {port}: kubectl -n {ns} get service {name} -o yaml"),
                format!("make the readiness probe of {ns}/{name}'s pods check the serving port {port}, so a pod that refuses is removed from the endpoints"),
            )
        }
        VerdictClass::BackendTimeout => {
            let which = match &pod {
                Some((pns, p)) => format!("kubectl -n {pns} describe pod {p}; kubectl -n {pns} logs {p} --tail=100"),
                None => format!("{slices}; kubectl -n {ns} describe pod <backend-pod>"),
            };
            (
                format!("{which}; kubectl -n {ns} get networkpolicy (does a policy drop traffic to port {port}?)"),
                format!("give {ns}/{name}'s pods a readiness probe that fails when they hang, and check NetworkPolicies and the pod network between {node} and the backend"),
            )
        }
        VerdictClass::Dropped => (
            format!("on node {node}: check non-kube-proxy filtering (iptables-save | grep -v KUBE-; nft list ruleset) and kubectl -n {ns} get networkpolicy"),
            format!("find the rule or policy that drops {ns}/{name}'s traffic at the reported drop reason and fix or document it"),
        ),
        VerdictClass::SourceRangeDenied => {
            // The client alone as a CIDR: /32, or /128 for an IPv6 client.
            let client = lead.client.map_or_else(
                || "<client-ip>/32".to_owned(),
                |c| format!("{}/{}", c.ip(), if c.is_ipv6() { 128 } else { 32 }),
            );
            let who = client.rsplit_once('/').map_or(client.as_str(), |(ip, _)| ip);
            (
                format!(
                    "kubectl -n {ns} get service {name} -o jsonpath='{{.spec.loadBalancerSourceRanges}}'; if {who} must reach it: \
                     kubectl -n {ns} patch service {name} --type=json -p '[{{\"op\":\"add\",\"path\":\"/spec/loadBalancerSourceRanges/-\",\"value\":\"{client}\"}}]'"
                ),
                format!(
                    "keep {ns}/{name}'s loadBalancerSourceRanges in step with its real clients (and remember the load balancer must preserve client addresses for them to apply)"
                ),
            )
        }
        VerdictClass::StaleConntrackEntry => {
            let proto = lead.protocol.map_or("udp", |p| p.as_str());
            let entry = match (lead.client, lead.frontend) {
                (Some(c), Some(fe)) => format!(
                    "conntrack -D -p {proto} --orig-src {} --orig-dst {} --orig-port-src {} --orig-port-dst {}",
                    c.ip(),
                    fe.ip(),
                    c.port(),
                    fe.port()
                ),
                _ => format!("conntrack -L -p {proto} | grep <backend>"),
            };
            let all = match (lead.frontend, lead.backend) {
                (Some(fe), Some(b)) => format!(
                    "; every entry of {ns}/{name} still sent to {}: conntrack -D -p {proto} --orig-dst {} --dst-nat {}",
                    b.ip(),
                    fe.ip(),
                    b.ip()
                ),
                _ => String::new(),
            };
            (
                format!("on node {node}: {entry}{all} (kube-proxy's own cleanup command; do not restart kube-proxy, its rules are right)"),
                "kube-proxy deletes stale UDP entries itself: on endpoint changes up to 1.31 (DeletedUDPEndpoints), by its conntrack reconciler from 1.32, which skipped Services left without endpoints until kubernetes#139629; upgrade kube-proxy, and let clients that send without waiting for replies (statsd, syslog) change source ports".into(),
            )
        }
        VerdictClass::ServicePortUndefined => {
            let port = lead
                .frontend
                .map_or_else(|| "<port>".to_owned(), |f| f.port().to_string());
            (
                format!(
                    "kubectl -n {ns} get service {name} -o jsonpath='{{range .spec.ports[*]}}{{.name}} {{.port}}/{{.protocol}}{{\"\\n\"}}{{end}}'; point the client at one of those ports, or add port {port} to the Service"
                ),
                format!("check the client's configuration (a port from an old Service version?) and give {ns}/{name}'s ports names clients resolve through DNS SRV or config, not hard-coded numbers"),
            )
        }
        VerdictClass::ClusterIpUnallocated => {
            let dest = lead.frontend.map_or_else(|| "<address>".to_owned(), |f| f.to_string());
            let ip = lead.frontend.map_or_else(|| "<ip>".to_owned(), |f| f.ip().to_string());
            (
                format!(
                    "kubectl get services -A -o wide | grep -w {ip} (no Service holds it: find which client uses {dest} and point it at the Service's current ClusterIP or DNS name)"
                ),
                "resolve Services by DNS name, never by a remembered ClusterIP; a deleted and recreated Service gets a new address (or set spec.clusterIP explicitly when clients must keep it)".into(),
            )
        }
        VerdictClass::KubeProxyVersionSkew => (
            format!("{kube_proxy_pods} (compare its image with kubectl version)"),
            "upgrade kube-proxy with the control plane and keep it within one minor version".into(),
        ),
        VerdictClass::Healthy | VerdictClass::ProbeRst => {
            let m = healthy_mitigation(facts);
            (m.immediate, m.long_term)
        }
    };
    Mitigation { immediate, long_term }
}
