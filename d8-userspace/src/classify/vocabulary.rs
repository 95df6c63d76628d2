//! The classifier's vocabulary: verdict classes, severities, evidence and mitigations. The report
//! carries them as they are (their names are the contract's), so they are defined here, where they
//! are decided, and the report imports them.

use serde::{Deserialize, Serialize};

/// The verdict classes (ARCHITECTURE.md, "The verdict classes"; contract names, snake_case).
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
    /// A request to a port the Service does not define, on its live ClusterIP: configuration, not
    /// a fault of kube-proxy (nftables mode rejects it in `cluster-ips-check`, 1.30+; iptables mode
    /// leaves it untranslated).
    ServicePortUndefined,
    /// A request to an address of the service CIDR that no Service holds (a deleted Service's
    /// ClusterIP, a stale DNS answer, a hard-coded address): configuration, not a fault of
    /// kube-proxy (nftables mode drops it in `cluster-ips-check`, 1.30+; iptables mode leaves it
    /// untranslated).
    ClusterIpUnallocated,
    /// A load-balancer client outside the Service's loadBalancerSourceRanges, dropped by
    /// kube-proxy's firewall (KUBE-PROXY-FIREWALL / `firewall-` chain) as configured.
    SourceRangeDenied,
    /// An existing UDP conntrack entry keeps DNATing a client to a backend kube-proxy's rules no
    /// longer send to (a pod that is gone): the entry, not the rules, is stale.
    StaleConntrackEntry,
    /// kube-proxy runs but has not synced its rules since the API changed the Service (or a
    /// requested sync has waited too long): "not synced for N s", apart from not running.
    KubeProxyNotSynced,
}

impl VerdictClass {
    /// Every class, in the order the contract has always listed them.
    pub const ALL: [Self; 17] = [
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
        Self::ServicePortUndefined,
        Self::SourceRangeDenied,
        Self::StaleConntrackEntry,
        Self::KubeProxyNotSynced,
        Self::ClusterIpUnallocated,
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
            Self::ServicePortUndefined => "service_port_undefined",
            Self::SourceRangeDenied => "source_range_denied",
            Self::StaleConntrackEntry => "stale_conntrack_entry",
            Self::KubeProxyNotSynced => "kube_proxy_not_synced",
            Self::ClusterIpUnallocated => "cluster_ip_unallocated",
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

/// Evidence lines of type `kube_proxy` starting with this prefix say that IPVS kernel modules are
/// missing; in IPVS mode they turn `kube_proxy_rules_missing` into the runbook's `ipvs_modules`
/// domain. The classifier writes them with this exact prefix.
pub const IPVS_MODULES_MISSING_PREFIX: &str = "IPVS kernel modules missing";
