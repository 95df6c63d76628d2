//! Folds the API's objects into the service model. Pure: objects and model in, model out.
//!
//! What it adds (ARCHITECTURE.md, "The service model"):
//! - per Service, [`ApiFacts`]: exists, type, traffic policies, affinity, whether kube-proxy should
//!   program it; Services the API has and the rules lack get a model entry with
//!   `rules.present == false`, so `kube_proxy_rules_missing` can be proven; model Services the API
//!   lacks get `api.exists == Some(false)`;
//! - frontends the API declares that the rules lack (with `rule: None`);
//! - endpoints from EndpointSlices: `in_api`, `ready`, `node`, `pod`, `local`; rule endpoints
//!   absent from the slices get `in_api == Some(false)`, API endpoints absent from the rules are
//!   added with `in_rules == false`;
//! - probe ports of the pods this node's kubelet probes, this node's addresses, kube-proxy's
//!   version (from its pod's image when the model has none), the API server's version.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};

use k8s_openapi::api::core::v1::{Container, Node, Pod, Probe, Service as ApiService};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::ClusterObjects;
use super::addr::api_ip;
use super::node::node_ips;
use super::slice::Slice;
use crate::model::topology::{Candidate, Policies, ZONE_LABEL, categorize};
use crate::model::{
    ApiFacts, Endpoint, Frontend, FrontendKind, IpFamily, ProbeKind, ProbePort, Protocol, Service, ServiceModel,
    ServiceRef, Topology,
};

/// Label handing a Service to a proxy other than the default kube-proxy.
pub(crate) const SERVICE_PROXY_NAME_LABEL: &str = "service.kubernetes.io/service-proxy-name";
/// Label of kube-proxy's DaemonSet pods (kubeadm, kops, EKS, GKE all use it).
pub(crate) const KUBE_PROXY_LABEL: (&str, &str) = ("k8s-app", "kube-proxy");
/// Label of control-plane nodes.
pub(crate) const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";

/// Adds what `objs` say to `model`. `node` is this node's name (see [`super::select_node`]); when
/// `None`, the model's own `node` is used, and locality stays unknown without either.
pub fn enrich(model: &mut ServiceModel, objs: &ClusterObjects, node: Option<&str>) {
    if let Some(n) = node {
        model.node = Some(n.to_owned());
    }
    let this_node = model.node.clone();
    let this_node = this_node.as_deref();

    if let Some(n) = this_node.and_then(|n| objs.nodes.iter().find(|o| o.metadata.name.as_deref() == Some(n))) {
        for ip in node_ips(n) {
            if !model.node_ips.contains(&ip) {
                model.node_ips.push(ip);
            }
        }
    }

    let mut index: HashMap<ServiceRef, usize> = model
        .services
        .iter()
        .enumerate()
        .map(|(i, s)| (s.service.clone(), i))
        .collect();
    let mut seen = vec![false; model.services.len()];
    // Addresses the API holds that cannot be used (`addr::api_ip`), as warnings.
    let mut bad_addresses: Vec<String> = Vec::new();

    for api in &objs.services {
        let Some(sref) = service_ref(api) else {
            continue;
        };
        let i = *index.entry(sref.clone()).or_insert_with(|| {
            model.services.push(Service::new(sref.clone()));
            seen.push(false);
            model.services.len() - 1
        });
        seen[i] = true;
        fold_api_service(&mut model.services[i], api, &mut bad_addresses);
    }
    // Model Services (from the rules) the API does not have.
    for (svc, seen) in model.services.iter_mut().zip(&seen) {
        if !seen {
            svc.api.exists = Some(false);
        }
    }

    let slices = slices_by_service(&objs.endpoint_slices);
    let zone = this_node.and_then(|n| node_zone(&objs.nodes, n));
    for svc in &mut model.services {
        let own = slices.get(&svc.service).map(Vec::as_slice).unwrap_or_default();
        fold_endpoints(svc, own, this_node, zone.as_deref(), &mut bad_addresses);
    }
    set_locality(model);

    model
        .probe_ports
        .extend(probe_ports(&objs.pods, this_node, &model.node_ips));

    if model.kube_proxy.version.is_none() {
        model.kube_proxy.version = kube_proxy_version(&objs.pods, &objs.nodes, this_node);
    }
    // The node-side check (process, healthz) wins; the API's pod status fills in when it could not
    // tell, e.g. from a container without the host's PID namespace.
    if model.kube_proxy.running.is_none()
        && let Some((running, note)) = kube_proxy_pod_state(&objs.pods, this_node)
    {
        model.kube_proxy.running = Some(running);
        model.warnings.push(crate::model::Warning::new(
            crate::model::WarningKind::KubeProxy,
            "the API",
            note,
        ));
    }
    if model.api_server_version.is_none() {
        model.api_server_version = objs
            .server_version
            .clone()
            .or_else(|| control_plane_version(&objs.nodes));
    }
    if model.min_api_server_version.is_none() {
        model.min_api_server_version = newest_kubelet(&objs.nodes);
    }
    model.warnings.extend(
        objs.warnings
            .iter()
            .chain(&bad_addresses)
            .map(|w| crate::model::Warning::new(crate::model::WarningKind::Api, "the API", w.clone())),
    );
}

/// One Service's part of [`enrich`]'s first pass: what the API's Service object says of it.
pub(super) fn fold_api_service(svc: &mut Service, api: &ApiService, bad: &mut Vec<String>) {
    svc.api = api_facts(api);
    add_api_frontends(svc, api, bad);
}

/// One Service's part of [`enrich`]'s second pass: its endpoints from `slices` (its own
/// EndpointSlices), its last change, and the endpoints kube-proxy should pick on `this_node`.
pub(super) fn fold_endpoints(
    svc: &mut Service,
    slices: &[&Slice],
    this_node: Option<&str>,
    zone: Option<&str>,
    bad: &mut Vec<String>,
) {
    let api_eps = if slices.is_empty() {
        Vec::new()
    } else {
        api_endpoints(slices, bad)
    };
    svc.api.last_change_unix = last_change(slices);
    if let Some(node) = this_node
        && svc.api.exists == Some(true)
    {
        svc.api.topology = Some(expected_endpoints(svc, &api_eps, node, zone));
    }
    merge_endpoints(svc, api_eps);
}

fn service_ref(api: &ApiService) -> Option<ServiceRef> {
    Some(ServiceRef {
        namespace: api.metadata.namespace.clone()?,
        name: api.metadata.name.clone()?,
    })
}

fn api_facts(api: &ApiService) -> ApiFacts {
    let spec = api.spec.as_ref();
    let ty = spec
        .and_then(|s| s.type_.clone())
        .unwrap_or_else(|| "ClusterIP".to_owned());
    let headless = spec.and_then(|s| s.cluster_ip.as_deref()) == Some("None");
    let other_proxy = api
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(SERVICE_PROXY_NAME_LABEL));
    ApiFacts {
        exists: Some(true),
        proxied: Some(ty != "ExternalName" && !headless && !other_proxy),
        service_type: Some(ty),
        external_traffic_policy_local: Some(spec.and_then(|s| s.external_traffic_policy.as_deref()) == Some("Local")),
        internal_traffic_policy_local: Some(spec.and_then(|s| s.internal_traffic_policy.as_deref()) == Some("Local")),
        session_affinity_client_ip: Some(spec.and_then(|s| s.session_affinity.as_deref()) == Some("ClientIP")),
        terminating_serving: Vec::new(),
        topology: None,
        last_change_unix: None,
        ip_families: ip_families(api),
    }
}

/// `spec.ipFamilies`, or the families of `clusterIPs` when a snapshot predates the field.
fn ip_families(api: &ApiService) -> Vec<IpFamily> {
    let Some(spec) = api.spec.as_ref() else {
        return Vec::new();
    };
    let mut out: Vec<IpFamily> = match &spec.ip_families {
        Some(f) if !f.is_empty() => f
            .iter()
            .filter_map(|f| match f.as_str() {
                "IPv4" => Some(IpFamily::V4),
                "IPv6" => Some(IpFamily::V6),
                _ => None,
            })
            .collect(),
        _ => spec
            .cluster_ips
            .iter()
            .flatten()
            .filter_map(|s| api_ip(s, None).ok().map(IpFamily::of))
            .collect(),
    };
    out.dedup();
    out
}

/// Frontends the API declares, added when the model (the rules) lacks them. Matching ignores the
/// address of NodePorts: rule readers may list them per node address or as `0.0.0.0`.
fn add_api_frontends(svc: &mut Service, api: &ApiService, bad: &mut Vec<String>) {
    for fe in frontends_of(api, bad) {
        let known = svc.frontends.iter().any(|m| {
            m.kind == fe.kind
                && m.port == fe.port
                && m.protocol == fe.protocol
                && (m.ip == fe.ip || fe.kind == FrontendKind::NodePort)
        });
        if !known {
            svc.frontends.push(fe);
        }
    }
}

/// Every Service's frontends as the API declares them (NodePorts on `0.0.0.0`, `rule: None`): what
/// `rules::ipvs::join` needs to name IPVS virtual servers.
pub fn api_frontends(objs: &ClusterObjects) -> Vec<(ServiceRef, Vec<Frontend>)> {
    objs.services
        .iter()
        // Bad addresses are reported by `enrich`, which reads the same Services.
        .filter_map(|s| Some((service_ref(s)?, frontends_of(s, &mut Vec::new()))))
        .collect()
}

/// The frontends of one API Service: ClusterIPs, NodePorts, external IPs, load-balancer IPs, per port.
/// Addresses that are not usable go to `bad`, naming the Service and the field.
fn frontends_of(api: &ApiService, bad: &mut Vec<String>) -> Vec<Frontend> {
    let Some(spec) = api.spec.as_ref() else {
        return Vec::new();
    };
    let ports = spec.ports.as_deref().unwrap_or_default();
    let who = format!(
        "Service {}/{}",
        api.metadata.namespace.as_deref().unwrap_or_default(),
        api.metadata.name.as_deref().unwrap_or_default()
    );
    // `clusterIPs` are in `ipFamilies` order (the API keeps them so).
    let families: Vec<Option<IpFamily>> = spec
        .ip_families
        .iter()
        .flatten()
        .map(|f| match f.as_str() {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        })
        .collect();
    // `field` is the address's path in the object, for the warning.
    let mut parse = |field: String, expected: Option<IpFamily>, s: &str| -> Option<IpAddr> {
        // "None" (headless) and "" (not allocated yet) are values the API uses, not addresses.
        if s == "None" || s.is_empty() {
            return None;
        }
        api_ip(s, expected)
            .map_err(|e| bad.push(format!("{who} {field}: {e}")))
            .ok()
    };
    let cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips
            .iter()
            .enumerate()
            .filter_map(|(i, s)| parse(format!("spec.clusterIPs[{i}]"), families.get(i).copied().flatten(), s))
            .collect(),
        _ => spec
            .cluster_ip
            .as_deref()
            .and_then(|s| parse("spec.clusterIP".into(), None, s))
            .into_iter()
            .collect(),
    };
    let external: Vec<IpAddr> = spec
        .external_ips
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, s)| parse(format!("spec.externalIPs[{i}]"), None, s))
        .collect();
    let lb: Vec<IpAddr> = api
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|l| l.ingress.as_ref())
        .map(|ing| {
            ing.iter()
                .enumerate()
                .filter_map(|(i, g)| {
                    let s = g.ip.as_deref()?;
                    parse(format!("status.loadBalancer.ingress[{i}].ip"), None, s)
                })
                .collect()
        })
        .unwrap_or_default();

    let mut out = Vec::new();
    for p in ports {
        let protocol = protocol(p.protocol.as_deref());
        let Ok(port) = u16::try_from(p.port) else {
            continue;
        };
        let name = p.name.clone().unwrap_or_default();
        let mut add = |kind, ip, port| {
            out.push(Frontend {
                kind,
                ip,
                port,
                protocol,
                port_name: name.clone(),
                rule: None,
            })
        };
        for ip in &cluster_ips {
            add(FrontendKind::ClusterIp, *ip, port);
        }
        if let Some(np) = p.node_port.and_then(|n| u16::try_from(n).ok()).filter(|n| *n != 0) {
            add(FrontendKind::NodePort, IpAddr::from([0, 0, 0, 0]), np);
        }
        for ip in &external {
            add(FrontendKind::ExternalIp, *ip, port);
        }
        for ip in &lb {
            add(FrontendKind::LoadBalancer, *ip, port);
        }
    }
    out
}

fn protocol(p: Option<&str>) -> Protocol {
    // The API's default protocol is TCP.
    p.and_then(Protocol::parse).unwrap_or(Protocol::Tcp)
}

pub(super) fn slices_by_service(slices: &[Slice]) -> HashMap<ServiceRef, Vec<&Slice>> {
    let mut out: HashMap<ServiceRef, Vec<&Slice>> = HashMap::new();
    for s in slices {
        if let Some(owner) = s.owner() {
            out.entry(owner).or_default().push(s);
        }
    }
    out
}

/// One endpoint address and port as the API lists it.
struct ApiEndpoint {
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    port_name: String,
    ready: bool,
    /// Terminating but still serving.
    terminating_serving: bool,
    node: Option<String>,
    pod: Option<String>,
    /// `hints.forZones[].name`.
    zone_hints: Vec<String>,
    /// `hints.forNodes[].name`.
    node_hints: Vec<String>,
}

/// Addresses that are not usable (or not of the slice's `addressType`) go to `bad`.
fn api_endpoints(slices: &[&Slice], bad: &mut Vec<String>) -> Vec<ApiEndpoint> {
    let mut out: Vec<ApiEndpoint> = Vec::new();
    for s in slices {
        // FQDN slices name hosts, not addresses: kube-proxy ignores them too.
        let family = match &*s.address_type {
            "IPv4" => IpFamily::V4,
            "IPv6" => IpFamily::V6,
            _ => continue,
        };
        for e in &s.endpoints {
            // The API says a missing `ready` condition is to be read as ready.
            let ready = e.ready.unwrap_or(true);
            let terminating_serving = e.terminating == Some(true) && e.serving.unwrap_or(true);
            let pod = e.pod_name.as_deref().and_then(|name| {
                let ns = e.pod_namespace.as_deref().or(s.namespace.as_deref())?;
                Some(format!("{ns}/{name}"))
            });
            let zone_hints: Vec<String> = e.zone_hints.iter().map(|z| z.to_string()).collect();
            let node_hints: Vec<String> = e.node_hints.iter().map(|n| n.to_string()).collect();
            for addr in &e.addresses {
                let ip = match api_ip(addr, Some(family)) {
                    Ok(ip) => ip,
                    Err(why) => {
                        bad.push(format!(
                            "EndpointSlice {}/{} (addressType {family}): {why}",
                            s.namespace.as_deref().unwrap_or_default(),
                            s.name.as_deref().unwrap_or_default()
                        ));
                        continue;
                    }
                };
                for p in &s.ports {
                    // A port without a number means "all ports" (selector-less Services): nothing
                    // a DNAT target could be compared with.
                    let Some(port) = p.port.and_then(|n| u16::try_from(n).ok()) else {
                        continue;
                    };
                    let protocol = protocol(p.protocol.as_deref());
                    // An address in several slices (during a rollout): ready if any says so.
                    if let Some(dup) = out
                        .iter_mut()
                        .find(|o| o.ip == ip && o.port == port && o.protocol == protocol)
                    {
                        dup.ready |= ready;
                        dup.terminating_serving |= terminating_serving;
                        continue;
                    }
                    out.push(ApiEndpoint {
                        ip,
                        port,
                        protocol,
                        port_name: p.name.as_deref().unwrap_or_default().to_string(),
                        ready,
                        terminating_serving,
                        node: e.node.as_deref().map(str::to_string),
                        pod: pod.clone(),
                        zone_hints: zone_hints.clone(),
                        node_hints: node_hints.clone(),
                    });
                }
            }
        }
    }
    out
}

fn merge_endpoints(svc: &mut Service, api_eps: Vec<ApiEndpoint>) {
    let api_exists = svc.api.exists == Some(true);
    let mut matched = vec![false; svc.endpoints.len()];
    for a in api_eps {
        let found = svc
            .endpoints
            .iter()
            .position(|e| e.ip == a.ip && e.port == a.port && e.protocol == a.protocol);
        let i = match found {
            Some(i) => i,
            None => {
                svc.endpoints.push(Endpoint {
                    ip: a.ip,
                    port: a.port,
                    protocol: a.protocol,
                    port_name: String::new(),
                    in_rules: false,
                    in_api: None,
                    ready: None,
                    local: None,
                    node: None,
                    pod: None,
                    weight: None,
                    rule: None,
                });
                matched.push(false);
                svc.endpoints.len() - 1
            }
        };
        matched[i] = true;
        if a.terminating_serving && !a.ready {
            svc.api
                .terminating_serving
                .push(std::net::SocketAddr::new(a.ip, a.port));
        }
        let e = &mut svc.endpoints[i];
        e.in_api = Some(true);
        e.ready = Some(a.ready);
        if e.port_name.is_empty() {
            e.port_name = a.port_name;
        }
        e.node = a.node.or(e.node.take());
        e.pod = a.pod.or(e.pod.take());
    }
    for (e, m) in svc.endpoints.iter_mut().zip(matched) {
        if !m {
            // The API was asked and does not list it (or has no such Service at all).
            e.in_api = Some(false);
            if !api_exists {
                e.ready = None;
            }
        }
    }
}

/// The newest last-change-trigger-time of `slices`, as a unix time.
fn last_change(slices: &[&Slice]) -> Option<f64> {
    slices
        .iter()
        .filter_map(|s| s.last_change.as_deref())
        .filter_map(rfc3339_unix)
        .reduce(f64::max)
}

/// `2026-12-06T14:00:00Z` (or with fractional seconds, or a `+hh:mm` offset) as unix seconds.
pub(crate) fn rfc3339_unix(s: &str) -> Option<f64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (clock, offset) = match rest.find(['Z', 'z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => return None,
    };
    let mut c = clock.splitn(3, ':');
    let (hh, mm) = (c.next()?.parse::<i64>().ok()?, c.next()?.parse::<i64>().ok()?);
    let ss: f64 = c.next()?.parse().ok()?;
    let offset_secs = match offset {
        "Z" | "z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil (proleptic Gregorian), Howard Hinnant's algorithm.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hh * 3600 + mm * 60 - offset_secs) as f64 + ss)
}

/// This node's `topology.kubernetes.io/zone` label.
pub(super) fn node_zone(nodes: &[Node], this: &str) -> Option<String> {
    nodes
        .iter()
        .find(|n| n.metadata.name.as_deref() == Some(this))
        .and_then(|n| n.metadata.labels.as_ref()?.get(ZONE_LABEL).cloned())
}

/// kube-proxy's endpoint set for `svc` on node `this` ([`categorize`] per Service port: the API's
/// endpoints of one port name and protocol).
fn expected_endpoints(svc: &Service, eps: &[ApiEndpoint], this: &str, zone: Option<&str>) -> Topology {
    let externally_accessible = svc.frontends.iter().any(|f| f.kind != FrontendKind::ClusterIp);
    let policies = Policies::of(
        svc.api.internal_traffic_policy_local == Some(true),
        svc.api.external_traffic_policy_local == Some(true),
        externally_accessible,
    );
    let mut ports: Vec<(&str, Protocol)> = eps.iter().map(|e| (e.port_name.as_str(), e.protocol)).collect();
    ports.sort_by_key(|(n, p)| (n.to_string(), p.number()));
    ports.dedup();
    let mut out = Topology::default();
    for (name, protocol) in ports {
        let port_eps: Vec<&ApiEndpoint> = eps
            .iter()
            .filter(|e| e.port_name == name && e.protocol == protocol)
            .collect();
        let candidates: Vec<Candidate> = port_eps
            .iter()
            .map(|e| Candidate {
                ready: e.ready,
                serving_terminating: e.terminating_serving,
                local: e.node.as_deref() == Some(this),
                zone_hints: e.zone_hints.clone(),
                node_hints: e.node_hints.clone(),
            })
            .collect();
        let c = categorize(&candidates, policies, this, zone);
        out.expected.extend(
            c.all_reachable
                .iter()
                .map(|&i| SocketAddr::new(port_eps[i].ip, port_eps[i].port)),
        );
        if out.mode.is_none() {
            out.mode = c.mode;
        }
    }
    out
}

/// Sets `local` on every endpoint whose node is known, once this node is known.
fn set_locality(model: &mut ServiceModel) {
    let Some(this) = model.node.clone() else {
        return;
    };
    for svc in &mut model.services {
        set_service_locality(svc, &this);
    }
}

/// [`set_locality`] for one Service.
pub(super) fn set_service_locality(svc: &mut Service, this: &str) {
    for e in &mut svc.endpoints {
        if let Some(n) = &e.node {
            e.local = Some(n == this);
        }
    }
}

/// Probe ports of the pods this node's kubelet probes (all pods when the node is unknown).
/// Host-network pods are skipped: their probes go from the node to itself.
fn probe_ports(pods: &[Pod], this_node: Option<&str>, node_ips: &[IpAddr]) -> Vec<ProbePort> {
    let mut out = Vec::new();
    // Without a node every pod of a large cluster is here: deduplicate by hash, not by scanning.
    let mut seen: HashSet<(IpAddr, u16, ProbeKind)> = HashSet::new();
    for pod in pods {
        let Some(spec) = &pod.spec else { continue };
        if this_node.is_some() && spec.node_name.as_deref() != this_node || spec.host_network == Some(true) {
            continue;
        }
        let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
            continue;
        };
        let ips = pod_ips(pod);
        if ips.is_empty() || ips.iter().any(|ip| node_ips.contains(ip)) {
            continue;
        }
        let containers = spec.containers.iter().chain(spec.init_containers.iter().flatten());
        for c in containers {
            for (kind, probe) in [
                (ProbeKind::Readiness, &c.readiness_probe),
                (ProbeKind::Liveness, &c.liveness_probe),
                (ProbeKind::Startup, &c.startup_probe),
            ] {
                let Some(port) = probe.as_ref().and_then(|p| probe_port(p, c)) else {
                    continue;
                };
                for ip in &ips {
                    let pp = ProbePort {
                        pod: format!("{ns}/{name}"),
                        ip: *ip,
                        port,
                        probe: kind,
                        node: spec.node_name.clone(),
                    };
                    if seen.insert((pp.ip, pp.port, pp.probe)) {
                        out.push(pp);
                    }
                }
            }
        }
    }
    out
}

/// The TCP port a probe connects to: httpGet, tcpSocket (number or container port name) or grpc.
/// exec probes open no connection.
fn probe_port(p: &Probe, c: &Container) -> Option<u16> {
    let named = |port: &IntOrString| match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => c
            .ports
            .iter()
            .flatten()
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .and_then(|cp| u16::try_from(cp.container_port).ok()),
    };
    if let Some(h) = &p.http_get {
        return named(&h.port);
    }
    if let Some(t) = &p.tcp_socket {
        return named(&t.port);
    }
    p.grpc.as_ref().and_then(|g| u16::try_from(g.port).ok())
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(status.pod_ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok()));
    }
    ips
}

/// kube-proxy's DaemonSet pods on `this_node`.
fn kube_proxy_pods<'a>(pods: &'a [Pod], this_node: Option<&'a str>) -> impl Iterator<Item = &'a Pod> {
    pods.iter()
        .filter(move |p| this_node.is_some() && p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == this_node)
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(KUBE_PROXY_LABEL.0))
                .map(String::as_str)
                == Some(KUBE_PROXY_LABEL.1)
        })
}

/// Whether this node's kube-proxy pod runs, from its status, with a sentence for the evidence:
/// `Running` and Ready is running; `Failed`, or a container waiting in `CrashLoopBackOff` (or any
/// other waiting reason) is not. `None` without such a pod: kube-proxy may run outside Kubernetes.
fn kube_proxy_pod_state(pods: &[Pod], this_node: Option<&str>) -> Option<(bool, String)> {
    let pod = kube_proxy_pods(pods, this_node).next()?;
    let name = format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    );
    let status = pod.status.as_ref()?;
    let phase = status.phase.as_deref().unwrap_or("Unknown");
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let waiting = status.container_statuses.iter().flatten().find_map(|c| {
        let w = c.state.as_ref()?.waiting.as_ref()?;
        Some((w.reason.clone().unwrap_or_else(|| "waiting".into()), c.restart_count))
    });
    let node = this_node.unwrap_or_default();
    match (phase, ready, waiting) {
        (_, _, Some((reason, restarts))) => Some((
            false,
            format!("kube-proxy pod {name} on {node} is {reason} ({restarts} restarts), per the API"),
        )),
        ("Failed", _, None) => Some((
            false,
            format!("kube-proxy pod {name} on {node} has failed, per the API"),
        )),
        ("Running", true, None) => Some((
            true,
            format!("kube-proxy pod {name} on {node} is Running and Ready, per the API"),
        )),
        _ => None,
    }
}

/// kube-proxy's version on this node: its DaemonSet pod's image tag, else the Node's (deprecated,
/// often empty) `nodeInfo.kubeProxyVersion`.
fn kube_proxy_version(pods: &[Pod], nodes: &[Node], this_node: Option<&str>) -> Option<String> {
    let this = this_node?;
    let from_pod = kube_proxy_pods(pods, Some(this))
        .flat_map(|p| p.spec.iter().flat_map(|s| s.containers.iter()))
        .find(|c| c.name == "kube-proxy" || c.image.as_deref().is_some_and(|i| i.contains("kube-proxy")))
        .and_then(|c| image_tag(c.image.as_deref()?));
    from_pod.or_else(|| {
        nodes
            .iter()
            .find(|n| n.metadata.name.as_deref() == Some(this))
            .and_then(|n| n.status.as_ref()?.node_info.as_ref())
            .map(|i| i.kube_proxy_version.clone())
            .filter(|v| !v.is_empty())
    })
}

/// `registry.k8s.io/kube-proxy:v1.31.2@sha256:...` -> `v1.31.2`.
fn image_tag(image: &str) -> Option<String> {
    let image = image.split('@').next()?;
    let last = image.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    Some(tag.to_owned())
}

/// Without the API server's own answer (a snapshot), the control-plane nodes' kubelet version stands
/// in for it: kubeadm-style upgrades move both together. Managed clusters hide those nodes: `None`.
fn control_plane_version(nodes: &[Node]) -> Option<String> {
    nodes
        .iter()
        .filter(|n| {
            n.metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(CONTROL_PLANE_LABEL))
        })
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref().map(|i| i.kubelet_version.clone()))
        .find(|v| !v.is_empty())
}

/// The newest kubelet version of all nodes: the API server is at least that new.
fn newest_kubelet(nodes: &[Node]) -> Option<String> {
    nodes
        .iter()
        .filter_map(|n| n.status.as_ref()?.node_info.as_ref().map(|i| i.kubelet_version.clone()))
        .filter_map(|v| Some((super::minor_version(&v)?, v)))
        .max_by_key(|(mm, _)| *mm)
        .map(|(_, v)| v)
}
