//! The contract object of DESIGN.md section 5, field for field.
//!
//! Field names are the JSON names (no renames except where Rust reserves the word: `type`). Values
//! unknown at the time of printing are `null`, never omitted, so scripts can rely on every key.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::flows::{Flow, Outcome};
use crate::model::{
    Endpoint, Frontend, FrontendKind, KubeProxyStatus, Protocol, ProxyMode, ServiceModel,
    ServiceRef,
};

/// The verdict classes of DESIGN.md section 1 (contract names, snake_case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictClass {
    /// Flows complete: SYN and SYN-ACK seen after DNAT.
    Healthy,
    /// The Service has no ready endpoints and kube-proxy rejects its traffic.
    NoEndpoints,
    /// The rules DNAT to a backend that no longer exists or is not ready.
    StaleEndpoint,
    /// externalTrafficPolicy=Local on a node without local endpoints.
    EtpLocalNoLocalEndpoints,
    /// kubelet probe connections closed by RST: normal, not a fault.
    ProbeRst,
    /// The conntrack table is full and new flows are dropped.
    ConntrackFull,
    /// No kube-proxy runs on this node.
    KubeProxyNotRunning,
    /// kube-proxy's rules are absent or not synced.
    KubeProxyRulesMissing,
    /// kube-proxy is more than one minor version away from the control plane.
    KubeProxyVersionSkew,
    /// The backend pod itself refuses the connection (RST after DNAT).
    BackendRefused,
    /// The backend pod does not answer.
    BackendTimeout,
    /// Packets dropped by the kernel somewhere not explained by the other classes.
    Dropped,
}

impl VerdictClass {
    /// Every class, in the order of DESIGN.md section 1.
    pub const ALL: [Self; 12] = [
        Self::Healthy,
        Self::NoEndpoints,
        Self::StaleEndpoint,
        Self::EtpLocalNoLocalEndpoints,
        Self::ProbeRst,
        Self::ConntrackFull,
        Self::KubeProxyNotRunning,
        Self::KubeProxyRulesMissing,
        Self::KubeProxyVersionSkew,
        Self::BackendRefused,
        Self::BackendTimeout,
        Self::Dropped,
    ];

    /// The contract name (`no_endpoints`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::NoEndpoints => "no_endpoints",
            Self::StaleEndpoint => "stale_endpoint",
            Self::EtpLocalNoLocalEndpoints => "etp_local_no_local_endpoints",
            Self::ProbeRst => "probe_rst",
            Self::ConntrackFull => "conntrack_full",
            Self::KubeProxyNotRunning => "kube_proxy_not_running",
            Self::KubeProxyRulesMissing => "kube_proxy_rules_missing",
            Self::KubeProxyVersionSkew => "kube_proxy_version_skew",
            Self::BackendRefused => "backend_refused",
            Self::BackendTimeout => "backend_timeout",
            Self::Dropped => "dropped",
        }
    }

    /// Whether the class is a fault (everything but `healthy` and `probe_rst`).
    pub const fn is_fault(self) -> bool {
        !matches!(self, Self::Healthy | Self::ProbeRst)
    }
}

impl std::fmt::Display for VerdictClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Contract field `severity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Severity {
    /// Nothing to do.
    None,
    /// Degraded or cosmetic.
    Low,
    /// Part of the traffic fails.
    Medium,
    /// The Service is down for some or all clients.
    High,
}

impl Severity {
    /// The contract name (`HIGH`, `MEDIUM`, `LOW`, `NONE`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Low => "LOW",
            Self::Medium => "MEDIUM",
            Self::High => "HIGH",
        }
    }
}

/// Contract field `evidence[].type`: where a piece of evidence comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvidenceKind {
    /// kube-proxy's rules (iptables, nftables, IPVS).
    Rules,
    /// What the trace saw (packets, resets, drops, ICMP errors).
    Trace,
    /// The Kubernetes API (or its snapshot).
    Api,
    /// Conntrack counters.
    Conntrack,
    /// kube-proxy's process, health and metrics.
    KubeProxy,
}

impl EvidenceKind {
    /// The contract name (`rules`, `trace`, ...).
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rules => "rules",
            Self::Trace => "trace",
            Self::Api => "api",
            Self::Conntrack => "conntrack",
            Self::KubeProxy => "kube_proxy",
        }
    }
}

/// One evidence line (contract `evidence[]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Evidence {
    /// Where the fact comes from.
    #[serde(rename = "type")]
    pub kind: EvidenceKind,
    /// The fact, with the exact rule, chain, handle or packet it refers to.
    pub content: String,
}

impl Evidence {
    /// Builds an evidence line.
    pub fn new(kind: EvidenceKind, content: impl Into<String>) -> Self {
        Self {
            kind,
            content: content.into(),
        }
    }
}

/// Contract `root_cause`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootCause {
    /// The class that explains the failures (or `healthy`).
    pub class: VerdictClass,
    /// One sentence.
    pub detail: String,
}

/// Contract `mitigation`: what the operator does now and what prevents a repeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mitigation {
    /// Concrete first action (a command naming the Service or pod).
    pub immediate: String,
    /// What prevents a repeat.
    pub long_term: String,
}

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
            rule: e.rule.as_ref().map(|r| r.name.clone()),
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

/// The contract object of DESIGN.md section 5.
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
}

impl Report {
    /// An empty report for `service`: no frontends, flows or verdict yet, kube-proxy unknown. The
    /// tracer fills what it knows and the classifier the verdict fields.
    pub fn new(service: &ServiceRef) -> Self {
        Self {
            service: service.to_string(),
            node: None,
            kube_proxy: KubeProxyReport::default(),
            frontends: Vec::new(),
            endpoints: Vec::new(),
            flows: Vec::new(),
            lost_events: 0,
            root_cause: None,
            evidence: Vec::new(),
            severity: None,
            mitigation: None,
        }
    }

    /// A report for `service` with node, kube-proxy, frontends and endpoints taken from the model.
    /// A Service the model does not know keeps empty frontends and endpoints.
    pub fn from_model(service: &ServiceRef, model: &ServiceModel) -> Self {
        let mut report = Self::new(service);
        report.node = model.node.clone();
        report.kube_proxy = KubeProxyReport::from(&model.kube_proxy);
        if let Some(svc) = model.service(service) {
            report.frontends = svc.frontends.iter().map(FrontendReport::from).collect();
            report.endpoints = svc.endpoints.iter().map(EndpointReport::from).collect();
        }
        report
    }

    /// Appends the unclassified contract view of each flow.
    pub fn push_flows<'a>(&mut self, flows: impl IntoIterator<Item = &'a Flow>) {
        self.flows
            .extend(flows.into_iter().map(FlowReport::from_flow));
    }
}
