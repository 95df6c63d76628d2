//! The service model: one normalized picture of what kube-proxy programmed on this node and what the
//! Kubernetes API says should be there.
//!
//! Every rule reader (`rules::iptables`, `rules::nftables`, `rules::ipvs`) and the API layer (`k8s`)
//! produce or enrich this structure; the classifier reads it. It holds values only: no file handles,
//! no clients, no clocks, so tests build it from literals.

pub mod k8s;
pub mod kube_proxy;
pub mod rules;
pub mod topology;
pub mod view;

use std::net::IpAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Defined with the packets it classifies; the model names Service ports with it too.
pub use crate::events::{IpFamily, Protocol};

/// Which kube-proxy data plane programmed the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ProxyMode {
    Iptables,
    Nftables,
    Ipvs,
    #[default]
    Unknown,
}

/// `namespace/name` of a Service.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServiceRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The empty reference is no Service (an address no Service holds): empty, not "/".
        if self.namespace.is_empty() && self.name.is_empty() {
            return Ok(());
        }
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// How a frontend is reached (contract field `frontends[].kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrontendKind {
    ClusterIp,
    NodePort,
    ExternalIp,
    LoadBalancer,
}

/// Where a piece of the model came from, kept as evidence.
///
/// The texts are shared (`Arc<str>`), not copied, when a model is cloned: the daemon keeps the
/// rules-only reading beside the model folded from it (`cmd/daemon/source.rs`), and at 10,000
/// Services their rule texts and chain names are ~15 MiB each (BENCHMARKS.md, issue 13's notes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleRef {
    pub source: RuleSource,
    /// Chain name (`KUBE-SEP-...`, `service-...`), nft handle (`handle 42`) or IPVS real server.
    pub name: Arc<str>,
    /// The rule exactly as the dump shows it (one line), for the report's evidence.
    pub text: Arc<str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleSource {
    Iptables,
    Nftables,
    Ipvs,
}

/// One address a Service is reached at. For NodePorts `ip` is the node address the rules accept
/// (`0.0.0.0` when any local address matches, as with `-m addrtype --dst-type LOCAL`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frontend {
    pub kind: FrontendKind,
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    /// Service port name (`http`), empty when the port is unnamed.
    pub port_name: String,
    /// The rule that captures traffic to this frontend, if any.
    pub rule: Option<RuleRef>,
}

/// One backend of a Service port.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub port_name: String,
    /// Present in kube-proxy's rules (a DNAT target, nft endpoint chain or IPVS real server).
    pub in_rules: bool,
    /// Present in the API's EndpointSlices; `None` when the API was not consulted.
    pub in_api: Option<bool>,
    pub ready: Option<bool>,
    /// On this node; `None` when unknown.
    pub local: Option<bool>,
    pub node: Option<String>,
    /// `namespace/pod` from the EndpointSlice's targetRef.
    pub pod: Option<String>,
    /// Probability of being chosen (iptables) or weight (IPVS; 0 = draining).
    pub weight: Option<f64>,
    /// The rule that DNATs to this endpoint (KUBE-SEP chain, nft endpoint chain, IPVS real server).
    pub rule: Option<RuleRef>,
}

impl Endpoint {
    /// `ip:port`, written `[ip]:port` for IPv6 when displayed.
    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::new(self.ip, self.port)
    }

    /// An endpoint seen in the rules only: nothing known yet about the API, readiness or locality.
    pub fn in_rules(ip: IpAddr, port: u16, protocol: Protocol, port_name: &str) -> Self {
        Self {
            ip,
            port,
            protocol,
            port_name: port_name.to_string(),
            in_rules: true,
            in_api: None,
            ready: None,
            local: None,
            node: None,
            pod: None,
            weight: None,
            rule: None,
        }
    }
}

/// What the rules say about a Service as a whole, beyond frontends and endpoints.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct RuleFacts {
    /// kube-proxy has any rule for this Service.
    pub present: bool,
    /// REJECT "has no endpoints" rules / `no-endpoint-services` elements for this Service.
    pub no_endpoints: Vec<RuleRef>,
    /// DROP "has no local endpoints" rules (externalTrafficPolicy/internalTrafficPolicy Local).
    pub no_local_endpoints: Vec<RuleRef>,
    /// ClientIP session affinity timeout in seconds, when the rules use it.
    pub affinity_timeout_secs: Option<u32>,
    /// Consistency problems found while reading the rules (wrong probability sequence, a jump to a
    /// chain that does not exist, a virtual server without real servers, ...).
    pub problems: Vec<String>,
    /// kube-proxy's own objects for this Service, for evidence: iptables chains (`KUBE-SVC-...`,
    /// `KUBE-SVL-...`, `KUBE-EXT-...`, `KUBE-FW-...`, `KUBE-SEP-...`), nft chains
    /// (`service-...`, `external-...`, `endpoint-...`), or IPVS virtual servers (`TCP 10.96.0.1:443`).
    #[serde(default)]
    pub chains: Vec<String>,
    /// loadBalancerSourceRanges as the rules enforce them (KUBE-FW `-s` CIDRs, nft `firewall-` chain).
    #[serde(default)]
    pub source_ranges: Vec<String>,
    /// The rules that drop a load-balancer client outside those ranges: KUBE-PROXY-FIREWALL's
    /// `traffic not accepted by KUBE-FW-...` DROP (iptables), the `firewall-` chain's
    /// `ip saddr != { ... } drop` (nftables).
    #[serde(default)]
    pub firewall_drops: Vec<RuleRef>,
    /// nftables mode (1.30+): `cluster-ips-check`'s `ip daddr @cluster-ips reject`, which refuses
    /// ports this Service's ClusterIP does not define (the ClusterIP is in `cluster-ips`).
    #[serde(default)]
    pub undefined_port_reject: Option<RuleRef>,
}

/// What the API says about a Service as a whole.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ApiFacts {
    /// The API has this Service (`None`: API not consulted).
    pub exists: Option<bool>,
    pub service_type: Option<String>,
    pub external_traffic_policy_local: Option<bool>,
    pub internal_traffic_policy_local: Option<bool>,
    pub session_affinity_client_ip: Option<bool>,
    /// kube-proxy is expected to program this Service: `Some(false)` for headless and ExternalName
    /// Services and those labelled `service.kubernetes.io/service-proxy-name` (another proxy owns
    /// them), so their absence from the rules is not a fault.
    #[serde(default)]
    pub proxied: Option<bool>,
    /// Endpoints the API lists as terminating but still serving (`ready: false, serving: true`).
    /// kube-proxy keeps sending to them while the Service has no ready endpoint (terminating
    /// endpoints, GA in 1.28), so a rule DNATing to one is not stale.
    #[serde(default)]
    pub terminating_serving: Vec<std::net::SocketAddr>,
    /// What kube-proxy is expected to program for this Service on this node (`None`: API not
    /// consulted or this node unknown).
    #[serde(default)]
    pub topology: Option<Topology>,
    /// When the API last changed what kube-proxy programs for this Service, as a unix time: the
    /// newest `endpoints.kubernetes.io/last-change-trigger-time` of its EndpointSlices (the
    /// annotation kube-proxy itself measures its network-programming latency from).
    #[serde(default)]
    pub last_change_unix: Option<f64>,
    /// `spec.ipFamilies` (primary first), or the families of its `clusterIPs`; empty when the API
    /// was not consulted.
    #[serde(default)]
    pub ip_families: Vec<IpFamily>,
}

/// kube-proxy's per-node endpoint set for a Service ([`topology::categorize`] over every port),
/// from the API's EndpointSlices, hints and this node's zone.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Topology {
    /// Endpoints kube-proxy gives a chain on this node (`allReachableEndpoints` of each port).
    pub expected: Vec<std::net::SocketAddr>,
    /// What narrowed the Cluster-policy endpoints, when topology hints did (the first port's).
    pub mode: Option<topology::TopologyMode>,
}

/// A Service on this node: its frontends, endpoints and the facts behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub service: ServiceRef,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    pub rules: RuleFacts,
    pub api: ApiFacts,
}

impl Service {
    /// Its address families: the API's `ipFamilies` (primary first), or, without the API, those of
    /// its ClusterIPs in the rules (IPv4 first). More than one: a dual-stack Service.
    pub fn ip_families(&self) -> Vec<IpFamily> {
        if !self.api.ip_families.is_empty() {
            return self.api.ip_families.clone();
        }
        let mut out: Vec<IpFamily> = self
            .frontends
            .iter()
            .filter(|f| f.kind == FrontendKind::ClusterIp)
            .map(|f| IpFamily::of(f.ip))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    pub fn new(service: ServiceRef) -> Self {
        Self {
            service,
            frontends: Vec::new(),
            endpoints: Vec::new(),
            rules: RuleFacts::default(),
            api: ApiFacts::default(),
        }
    }
}

/// kube-proxy itself, as seen from the node.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct KubeProxyStatus {
    pub mode: ProxyMode,
    /// A kube-proxy process or pod runs on this node (`None`: could not tell).
    pub running: Option<bool>,
    pub version: Option<String>,
    /// `/healthz` on 10256 answered 200 (`Some(false)`: 503 or other; `None`: unreachable).
    pub healthz_ok: Option<bool>,
    /// Seconds since kube-proxy's last successful rule sync, from `/metrics`.
    pub last_sync_age_secs: Option<f64>,
    /// kube-proxy's own chains/table exist at all.
    pub rules_present: bool,
    /// HTTP status of `/healthz` on 10256 (`None`: unreachable).
    #[serde(default)]
    pub healthz_status: Option<u16>,
    /// Seconds a requested sync has been waiting: `last_queued_timestamp - last_timestamp` from
    /// `/metrics` when positive, else 0 (`None`: metrics unreachable or without these gauges).
    #[serde(default)]
    pub sync_pending_secs: Option<f64>,
    /// kube-proxy's last successful sync as a unix time (`kubeproxy_sync_proxy_rules_last_timestamp_seconds`,
    /// the oldest over IP families), to compare with when the API last changed a Service.
    #[serde(default)]
    pub last_sync_unix: Option<f64>,
    /// kube-proxy's endpoints that answered nonsense (not HTTP, nothing in time, no metrics, an
    /// unknown mode), one sentence each; they tell nothing else (`rules::read_node` makes them
    /// `kube_proxy` warnings).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// Everything known about the node's Services.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ServiceModel {
    pub node: Option<String>,
    pub kube_proxy: KubeProxyStatus,
    pub services: Vec<Service>,
    /// Node addresses (for probe recognition and NodePort frontends).
    pub node_ips: Vec<IpAddr>,
    /// Non-fatal problems met while building the model (unparsed rules, API unreachable, ...).
    pub warnings: Vec<Warning>,
    /// Ports kubelet probes connect to, per pod address (filled by `k8s`; empty without the API).
    /// Probe-RST recognition needs them: a probe is a node-IP connection to one of these.
    #[serde(default)]
    pub probe_ports: Vec<ProbePort>,
    /// The API server's version (`v1.32.1`), for kube-proxy version skew; `None` when unknown.
    #[serde(default)]
    pub api_server_version: Option<String>,
    /// A lower bound of the API server's version when its own is unknown: the newest kubelet's
    /// (the version skew policy never lets a kubelet be newer than the API server). It proves a
    /// kube-proxy too old, never one too new.
    #[serde(default)]
    pub min_api_server_version: Option<String>,
    /// nftables mode (1.30+): kube-proxy drops new connections to addresses of its service CIDRs
    /// that no Service holds, one drop per family's table (`ip`, `ip6`: each names its own
    /// family's CIDR). Empty in iptables and IPVS mode and before 1.30 (such traffic is routed on
    /// untranslated).
    #[serde(default)]
    pub unallocated_drops: Vec<UnallocatedDrop>,
}

/// `cluster-ips-check`'s `ip daddr { SERVICE-CIDRS } drop comment "Drop traffic to unallocated
/// ClusterIPs"`: the service CIDRs kube-proxy was given, and the rule as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnallocatedDrop {
    pub cidrs: Vec<String>,
    pub rule: RuleRef,
}

/// A problem met while building the model, typed by what it concerns: the classifier turns the
/// kind into evidence and never reads the wording.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Warning {
    pub kind: WarningKind,
    /// Where it was met: `iptables`, `nftables`, `ipvs` (their rules), `the API`, a snapshot's
    /// path, `kube-proxy`, `/sys/module`, `kernel`, `capture`.
    pub source: String,
    /// One sentence.
    pub message: String,
}

/// What a [`Warning`] concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WarningKind {
    /// kube-proxy's rules: a line or object not understood, a reader that failed.
    Rules,
    /// The Kubernetes API or its snapshot.
    Api,
    /// kube-proxy itself (its mode, its pod's state).
    KubeProxy,
    /// IPVS mode without the kernel modules it needs: its own runbook domain.
    IpvsModules,
    /// What this kernel lacks for tracing (drop reasons, BTF, a tracepoint's layout): the capture
    /// is degraded in the way the sentence says.
    Kernel,
    /// What the capture lost (undecodable records, conntrack events, evicted flows).
    Capture,
}

impl WarningKind {
    /// The name JSON uses.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Rules => "rules",
            Self::Api => "api",
            Self::KubeProxy => "kube_proxy",
            Self::IpvsModules => "ipvs_modules",
            Self::Kernel => "kernel",
            Self::Capture => "capture",
        }
    }
}

impl Warning {
    pub fn new(kind: WarningKind, source: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            source: source.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for Warning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Which kubelet probe a port serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProbeKind {
    /// `readinessProbe`.
    Readiness,
    /// `livenessProbe`.
    Liveness,
    /// `startupProbe`.
    Startup,
}

/// One port a kubelet probe (httpGet, tcpSocket or grpc) connects to on a pod address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbePort {
    /// `namespace/pod`.
    pub pod: String,
    /// One of the pod's addresses (`status.podIPs`).
    pub ip: IpAddr,
    /// The port the probe connects to (named container ports resolved).
    pub port: u16,
    /// Which probe.
    pub probe: ProbeKind,
    /// The node the pod runs on, when scheduled.
    pub node: Option<String>,
}

impl ServiceModel {
    pub fn service(&self, svc: &ServiceRef) -> Option<&Service> {
        self.services.iter().find(|s| &s.service == svc)
    }

    /// The Service with a frontend at `ip` (a ClusterIP, external or load-balancer IP): an
    /// exact (protocol, port) match first, else any Service with the address.
    pub fn holder_of(&self, protocol: Protocol, ip: IpAddr, port: u16) -> Option<&Service> {
        let at = |s: &&Service, exact: bool| {
            s.frontends.iter().any(|f| {
                f.ip == ip && f.kind != FrontendKind::NodePort && (!exact || (f.port == port && f.protocol == protocol))
            })
        };
        self.services
            .iter()
            .find(|s| at(s, true))
            .or_else(|| self.services.iter().find(|s| at(s, false)))
    }
}

/// `ip` lies in `cidr` (`10.0.0.0/8`, or a bare address); an unreadable range contains nothing.
pub fn in_cidr(ip: IpAddr, cidr: &str) -> bool {
    let (addr, len) = cidr.split_once('/').unwrap_or((cidr, ""));
    let Ok(net) = addr.parse::<IpAddr>() else {
        return false;
    };
    let bits = |a: IpAddr| match a {
        IpAddr::V4(v) => (u128::from(u32::from(v)) << 96, 32u32),
        IpAddr::V6(v) => (u128::from(v), 128u32),
    };
    let ((n, width), (i, iwidth)) = (bits(net), bits(ip));
    if width != iwidth {
        return false;
    }
    let len = if len.is_empty() {
        width
    } else {
        len.parse().unwrap_or(u32::MAX)
    };
    if len > width {
        return false;
    }
    let mask = if len == 0 { 0 } else { u128::MAX << (128 - len) };
    n & mask == i & mask
}
