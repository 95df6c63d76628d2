//! The contract object (ARCHITECTURE.md, "The contract"), field for field.
//!
//! Field names are the JSON names (no renames except where Rust reserves the word: `type`). Values
//! unknown at the time of printing are `null`, never omitted, so scripts can rely on every key.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::classify::{Evidence, Mitigation, RootCause, Severity, VerdictClass};
use crate::flows::{Flow, Outcome};
use crate::model::{
    Endpoint, Frontend, FrontendKind, IpFamily, KubeProxyStatus, Protocol, ProxyMode, ServiceModel, ServiceRef, Warning,
};

/// Contract `kube_proxy`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeProxyReport {
    /// `iptables`, `nftables`, `ipvs` or `unknown`.
    pub mode: ProxyMode,
    /// A kube-proxy runs on this node; `null` when it could not be told.
    pub running: Option<bool>,
    /// kube-proxy's version, `null` when unknown.
    pub version: Option<String>,
    /// kube-proxy's own chains/table exist at all.
    pub rules_present: bool,
}

impl Default for KubeProxyReport {
    fn default() -> Self {
        Self {
            mode: ProxyMode::Unknown,
            running: None,
            version: None,
            rules_present: false,
        }
    }
}

impl From<&KubeProxyStatus> for KubeProxyReport {
    fn from(s: &KubeProxyStatus) -> Self {
        Self {
            mode: s.mode,
            running: s.running,
            version: s.version.clone(),
            rules_present: s.rules_present,
        }
    }
}

/// Contract `frontends[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrontendReport {
    /// `cluster_ip`, `node_port`, `external_ip`, `load_balancer`.
    pub kind: FrontendKind,
    /// The address (for NodePorts the node address the rules accept, `0.0.0.0` for any).
    pub ip: IpAddr,
    /// The port.
    pub port: u16,
    /// `tcp`, `udp`, `sctp`.
    pub protocol: Protocol,
}

impl FrontendReport {
    /// The address asked about with `--dest` when no Service holds it: a ClusterIP of nobody.
    pub fn unallocated(protocol: Protocol, dest: std::net::SocketAddr) -> Self {
        Self {
            kind: FrontendKind::ClusterIp,
            ip: dest.ip(),
            port: dest.port(),
            protocol,
        }
    }
}

impl From<&Frontend> for FrontendReport {
    fn from(f: &Frontend) -> Self {
        Self {
            kind: f.kind,
            ip: f.ip,
            port: f.port,
            protocol: f.protocol,
        }
    }
}

/// Contract `endpoints[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointReport {
    /// Backend address.
    pub ip: IpAddr,
    /// Backend port.
    pub port: u16,
    /// A DNAT target / endpoint chain / real server in kube-proxy's rules.
    pub in_rules: bool,
    /// Listed in the API's EndpointSlices; `null` when the API was not consulted.
    pub in_api: Option<bool>,
    /// Ready according to the API; `null` when unknown.
    pub ready: Option<bool>,
    /// On this node; `null` when unknown.
    pub local: Option<bool>,
    /// The rule that DNATs to it (`KUBE-SEP-...`, nft chain or handle, IPVS real server).
    pub rule: Option<String>,
}

impl From<&Endpoint> for EndpointReport {
    fn from(e: &Endpoint) -> Self {
        Self {
            ip: e.ip,
            port: e.port,
            in_rules: e.in_rules,
            in_api: e.in_api,
            ready: e.ready,
            local: e.local,
            rule: e.rule.as_ref().map(|r| r.name.to_string()),
        }
    }
}

/// Contract `flows[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowReport {
    /// `tcp`, `udp`, `sctp`.
    pub protocol: Protocol,
    /// `ip:port` of the client.
    pub client: SocketAddr,
    /// `ip:port` of the frontend, `null` for direct-to-backend flows (probes, pod-to-pod).
    pub frontend: Option<SocketAddr>,
    /// `ip:port` after DNAT (or the destination of a direct flow), `null` when not seen.
    pub backend: Option<SocketAddr>,
    /// `established`, `reset`, `rejected`, `dropped`, `timeout`, `open`.
    pub outcome: Outcome,
    /// Kernel drop reason name, `null` when the flow saw no drop.
    pub drop_reason: Option<String>,
    /// The flow's class; `null` until the classifier ran.
    pub class: Option<VerdictClass>,
}

impl FlowReport {
    /// The contract view of a flow, unclassified. The drop reason is the flow's first drop (the one
    /// that stopped it; later ones are retransmissions dying the same way).
    pub fn from_flow(flow: &Flow) -> Self {
        Self {
            protocol: flow.protocol,
            client: flow.client,
            frontend: flow.frontend,
            backend: flow.backend,
            outcome: flow.outcome,
            drop_reason: flow.drop_reason().map(str::to_owned),
            class: None,
        }
    }
}

/// A Service's address families: a dual-stack Service has a frontend and endpoints per family,
/// and kube-proxy programs each family on its own, so a trace that saw one family says nothing
/// about the other.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FamiliesReport {
    /// The families the Service has ([`crate::model::Service::ip_families`]). Empty for an
    /// address no Service holds.
    pub configured: Vec<IpFamily>,
    /// The families of the traced flows (empty for `explain`, or when nothing was seen).
    pub seen: Vec<IpFamily>,
}

/// The contract object (ARCHITECTURE.md, "The contract").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// `namespace/name`.
    pub service: String,
    /// This node's name, `null` when unknown.
    pub node: Option<String>,
    /// kube-proxy on this node.
    pub kube_proxy: KubeProxyReport,
    /// Where the Service is reached.
    pub frontends: Vec<FrontendReport>,
    /// Its backends, with where each appears.
    pub endpoints: Vec<EndpointReport>,
    /// The address families the Service has and those the trace saw.
    #[serde(default)]
    pub families: FamiliesReport,
    /// The traced flows (empty for `explain`).
    pub flows: Vec<FlowReport>,
    /// Kernel events lost (ring buffer full); any loss makes absence-of-evidence weaker.
    pub lost_events: u64,
    /// The verdict; `null` until the classifier ran.
    pub root_cause: Option<RootCause>,
    /// Facts behind the verdict.
    pub evidence: Vec<Evidence>,
    /// `null` until the classifier ran.
    pub severity: Option<Severity>,
    /// `null` until the classifier ran.
    pub mitigation: Option<Mitigation>,
    /// What limits this report, each `{kind, source, message}`: rules or API read in part, a
    /// kernel that lacks a feature the capture uses, events the capture lost. Empty when nothing
    /// does.
    #[serde(default)]
    pub warnings: Vec<Warning>,
}

impl Report {
    /// Writes `verdict` into the report: flow classes (by position: `flows` must come from the
    /// same flows in the same order, as [`Report::push_flows`] builds them; otherwise flow classes
    /// are left alone), root cause, evidence (appended), severity and mitigation.
    pub fn apply(&mut self, verdict: &crate::classify::Verdict) {
        if self.flows.len() == verdict.flows.len() {
            for (f, v) in self.flows.iter_mut().zip(&verdict.flows) {
                f.class = Some(v.class);
            }
        }
        self.root_cause = Some(verdict.root_cause.clone());
        self.evidence.extend(verdict.evidence.iter().cloned());
        self.severity = Some(verdict.severity);
        self.mitigation = Some(verdict.mitigation.clone());
    }

    /// An empty report for `service`: no frontends, flows or verdict yet, kube-proxy unknown. The
    /// tracer fills what it knows and the classifier the verdict fields.
    pub fn new(service: &ServiceRef) -> Self {
        Self {
            service: service.to_string(),
            node: None,
            kube_proxy: KubeProxyReport::default(),
            frontends: Vec::new(),
            endpoints: Vec::new(),
            families: FamiliesReport::default(),
            flows: Vec::new(),
            lost_events: 0,
            root_cause: None,
            evidence: Vec::new(),
            severity: None,
            mitigation: None,
            warnings: Vec::new(),
        }
    }

    /// A report for `service` with node, kube-proxy, frontends and endpoints taken from the model.
    /// A Service the model does not know keeps empty frontends and endpoints.
    pub fn from_model(service: &ServiceRef, model: &ServiceModel) -> Self {
        let mut report = Self::new(service);
        report.node = model.node.clone();
        report.warnings = model.warnings.clone();
        report.kube_proxy = KubeProxyReport::from(&model.kube_proxy);
        if let Some(svc) = model.service(service) {
            report.frontends = svc.frontends.iter().map(FrontendReport::from).collect();
            report.endpoints = svc.endpoints.iter().map(EndpointReport::from).collect();
            report.families.configured = svc.ip_families();
        }
        report
    }

    /// The address asked about with `--dest` when no Service holds it (`IP:PORT/PROTO`): the
    /// report's subject then, as `service` is empty.
    pub fn unallocated_address(&self) -> Option<String> {
        let f = self.frontends.first().filter(|_| self.service.is_empty())?;
        Some(format!("{}/{}", std::net::SocketAddr::new(f.ip, f.port), f.protocol))
    }

    /// Appends the unclassified contract view of each flow.
    pub fn push_flows<'a>(&mut self, flows: impl IntoIterator<Item = &'a Flow>) {
        self.flows.extend(flows.into_iter().map(FlowReport::from_flow));
        let mut seen: Vec<IpFamily> = self.flows.iter().map(|f| IpFamily::of(f.client.ip())).collect();
        seen.sort();
        seen.dedup();
        self.families.seen = seen;
    }
}
