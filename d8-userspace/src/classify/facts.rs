//! What every part of the classifier reads and writes: its inputs ([`Context`], [`Facts`]), the
//! findings the flow and Service checks produce, the verdict it returns, and the small helpers
//! that turn rules into evidence. The checks (`flow.rs`, `service.rs`, `advice.rs`) build on this;
//! the ranking (`rank.rs`) on all of them.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};

use super::vocabulary::{Evidence, EvidenceKind, Mitigation, RootCause, Severity, VerdictClass};
use crate::kernel::host::ConntrackStats;
use crate::model::{Endpoint, Frontend, FrontendKind, Protocol, RuleRef, Service, ServiceModel, ServiceRef};

/// The conntrack table counts as near full from this fill ratio on.
pub(super) const CONNTRACK_NEAR_FULL: f64 = 0.9;

/// What the classifier needs beyond the flows and the model.
///
/// kube-proxy's status (running, healthz, sync age, version) and the node's addresses are in the
/// model ([`ServiceModel::kube_proxy`], [`ServiceModel::node_ips`]); they are not repeated here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Context {
    /// The Kubernetes API (live or a snapshot) was consulted. `false` with `--no-k8s` or when the API
    /// was unreachable: API-backed proofs are then unavailable and the verdict says so.
    pub api_consulted: bool,
    /// Conntrack counters, when they could be read.
    pub conntrack: Option<ConntrackStats>,
    /// This host's own addresses, added to the model's node addresses to recognise node-originated
    /// flows (kubelet probes) when the API gave no node addresses.
    pub host_ips: Vec<IpAddr>,
    /// `true` for a trace, `false` for `explain` (rules and API only).
    pub traced: bool,
    /// How long the trace ran, in milliseconds.
    pub duration_ms: Option<u64>,
    /// Kernel events lost during the trace: "no reply seen" is weaker evidence when this is not 0.
    pub lost_events: u64,
}

/// The class of one flow, with the fact that decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowVerdict {
    /// [`Flow::id`].
    pub id: u64,
    /// The flow's class.
    pub class: VerdictClass,
    /// One sentence: what the trace saw (`RST from backend 10.1.0.7:8080 ...`).
    pub fact: String,
}

/// One cause found, flow-proven or from rules and API alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// The class.
    pub class: VerdictClass,
    /// Flows of that class (0: rules and API alone).
    pub flows: usize,
    /// One sentence.
    pub detail: String,
}

/// The classifier's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// One per input flow, in input order.
    pub flows: Vec<FlowVerdict>,
    /// Faults found, ranked; the first is the root cause. Empty when nothing is wrong.
    pub causes: Vec<Cause>,
    /// The root cause (`healthy` when nothing is wrong).
    pub root_cause: RootCause,
    /// Facts behind the verdict, root cause first.
    pub evidence: Vec<Evidence>,
    /// How bad it is.
    pub severity: Severity,
    /// What to do.
    pub mitigation: Mitigation,
}

/// What every part of the classifier reads: the target Service, its model entry and the context.
pub(super) struct Facts<'a> {
    pub target: &'a ServiceRef,
    pub svc: Option<&'a Service>,
    pub model: &'a ServiceModel,
    pub ctx: &'a Context,
    /// Model node addresses and the host's own.
    pub node_ips: Vec<IpAddr>,
    /// Backends that answered at least one flow of this trace.
    pub answered: HashSet<SocketAddr>,
    /// What the question was about, when more than the Service.
    pub asked: Asked,
}

/// What the user asked about when it is more than the Service: a port it does not define, an
/// address no Service holds. The answer is about that, with or without flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Asked {
    /// The Service (or one of its ports).
    #[default]
    Service,
    /// A port number the Service does not define (`--svc NS/NAME:PORT`): its ClusterIP on it.
    UndefinedPort(u16),
    /// An address no Service holds (`--dest IP:PORT`), in the service CIDR or not.
    Unallocated(Protocol, SocketAddr),
}

impl Facts<'_> {
    /// The frontend a flow asked for, matching NodePorts bound to any address.
    pub fn frontend(&self, addr: SocketAddr, proto: Protocol) -> Option<&Frontend> {
        let svc = self.svc?;
        svc.frontends
            .iter()
            .find(|fe| fe.ip == addr.ip() && fe.port == addr.port() && fe.protocol == proto)
            .or_else(|| {
                svc.frontends.iter().find(|fe| {
                    fe.kind == FrontendKind::NodePort
                        && fe.ip.is_unspecified()
                        && fe.port == addr.port()
                        && fe.protocol == proto
                        && self.is_node_ip(addr.ip())
                })
            })
    }

    /// The kind of frontend `addr` is: from the model, else a node address means a NodePort.
    pub fn frontend_kind(&self, addr: SocketAddr, proto: Protocol) -> Option<FrontendKind> {
        self.frontend(addr, proto)
            .map(|f| f.kind)
            .or_else(|| self.is_node_ip(addr.ip()).then_some(FrontendKind::NodePort))
    }

    /// The Service's endpoint at `addr`.
    pub fn endpoint(&self, addr: SocketAddr, proto: Protocol) -> Option<&Endpoint> {
        self.svc?
            .endpoints
            .iter()
            .find(|e| e.ip == addr.ip() && e.port == addr.port() && e.protocol == proto)
    }

    pub fn is_node_ip(&self, ip: IpAddr) -> bool {
        self.node_ips.contains(&ip)
    }

    /// Why a DNAT target the API does not call ready is still expected in the rules, if it is:
    /// terminating but serving (kube-proxy's fallback when no endpoint is ready), or an IPVS real
    /// server at weight 0 (draining its connections).
    pub fn expected_not_ready(&self, e: &Endpoint) -> Option<&'static str> {
        let addr = SocketAddr::new(e.ip, e.port);
        if self.svc.is_some_and(|s| s.api.terminating_serving.contains(&addr)) {
            return Some("terminating but still serving");
        }
        let ipvs = e
            .rule
            .as_ref()
            .is_some_and(|r| r.source == crate::model::RuleSource::Ipvs);
        if ipvs && e.weight == Some(0.0) {
            return Some("draining (IPVS weight 0)");
        }
        None
    }

    /// Whether kube-proxy programs `e` on this node (`model::topology`): `None` when the API was
    /// not consulted or this node is unknown, so nothing can be left out on purpose.
    pub fn expected_on_node(&self, e: &Endpoint) -> Option<bool> {
        let t = self.svc?.api.topology.as_ref()?;
        Some(t.expected.contains(&SocketAddr::new(e.ip, e.port)))
    }

    /// One sentence when topology hints narrowed what kube-proxy programs on this node:
    /// `topology: kube-proxy programs 2 of 4 ready endpoints of ns/web on node n (zone hints for
    /// zone-a; 10.1.2.3:80, ... are for other zones or nodes)`.
    pub fn topology_note(&self) -> Option<String> {
        let svc = self.svc?;
        let mode = svc.api.topology.as_ref()?.mode.as_ref()?;
        let ready = self.api_ready_endpoints();
        let (kept, left): (Vec<&&Endpoint>, Vec<&&Endpoint>) =
            ready.iter().partition(|e| self.expected_on_node(e) == Some(true));
        let addr = |e: &&&Endpoint| e.addr().to_string();
        let still: Vec<String> = left.iter().filter(|e| e.in_rules).map(addr).collect();
        let left: Vec<String> = left.iter().map(addr).collect();
        // Rules that still DNAT to what the hints leave out: a kube-proxy that ignores hints
        // (before 1.21, or its TopologyAwareHints gate off). Harmless, but worth a word.
        let ignored = if still.is_empty() {
            String::new()
        } else {
            format!(
                "; the rules still DNAT to {}: this kube-proxy does not apply the hints (older than 1.21, or its TopologyAwareHints gate is off)",
                still.join(", ")
            )
        };
        Some(format!(
            "topology: kube-proxy programs {} of {} ready endpoints of {} on node {} ({mode}); left out on purpose: {}{ignored}",
            kept.len(),
            ready.len(),
            self.name(),
            self.node(),
            if left.is_empty() {
                "none".to_owned()
            } else {
                left.join(", ")
            }
        ))
    }

    /// `addr` is one of the Service's ClusterIPs on a port (and protocol) it does not define.
    pub fn undefined_cluster_ip_port(&self, addr: SocketAddr, proto: Protocol) -> bool {
        let Some(svc) = self.svc else { return false };
        let cluster_ip = svc
            .frontends
            .iter()
            .any(|f| f.kind == FrontendKind::ClusterIp && f.ip == addr.ip());
        cluster_ip
            && !svc
                .frontends
                .iter()
                .any(|f| f.ip == addr.ip() && f.port == addr.port() && f.protocol == proto)
    }

    /// The Service's ports as `name port/proto`, from its ClusterIP frontends.
    pub fn defined_ports(&self) -> String {
        let mut ports: Vec<String> = self
            .svc
            .map(|s| {
                s.frontends
                    .iter()
                    .filter(|f| f.kind == FrontendKind::ClusterIp)
                    .map(|f| {
                        let name = if f.port_name.is_empty() {
                            String::new()
                        } else {
                            format!("{} ", f.port_name)
                        };
                        format!("{name}{}/{}", f.port, f.protocol.as_str())
                    })
                    .collect()
            })
            .unwrap_or_default();
        ports.sort();
        ports.dedup();
        ports.join(", ")
    }

    /// The Service as `namespace/name`.
    pub fn name(&self) -> String {
        self.target.to_string()
    }

    /// This node's name, or a placeholder usable in commands.
    pub fn node(&self) -> &str {
        self.model.node.as_deref().unwrap_or("<this-node>")
    }

    /// Endpoints the API lists as ready (empty without the API).
    pub fn api_ready_endpoints(&self) -> Vec<&Endpoint> {
        self.svc
            .map(|s| {
                s.endpoints
                    .iter()
                    .filter(|e| e.in_api == Some(true) && e.ready == Some(true))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The API has the Service (`None`: API not consulted or did not say).
    pub fn api_exists(&self) -> Option<bool> {
        if !self.ctx.api_consulted {
            return None;
        }
        match self.svc {
            Some(s) => s.api.exists,
            None => Some(false),
        }
    }

    /// kube-proxy has rules for the Service.
    pub fn rules_present(&self) -> bool {
        self.model.kube_proxy.rules_present && self.svc.is_some_and(|s| s.rules.present)
    }
}

/// One class attributed to one piece of the picture, with what proves it. Flows and service
/// findings both produce these; causes are built by grouping them by class.
#[derive(Debug, Clone)]
pub(super) struct Finding {
    pub class: VerdictClass,
    /// One sentence, used as the root cause's detail when this finding leads.
    pub detail: String,
    /// Evidence from rules, API, conntrack and kube-proxy (deduplicated when merged).
    pub evidence: Vec<Evidence>,
    /// `namespace/pod` the finding is about, for mitigation commands.
    pub pod: Option<String>,
    /// The backend involved.
    pub backend: Option<SocketAddr>,
    /// The client, when the finding is about who asked (a source range).
    pub client: Option<SocketAddr>,
    /// The frontend asked for, when the finding is about it (an undefined port, a conntrack entry).
    pub frontend: Option<SocketAddr>,
    /// The flow's protocol, when the finding is about one flow's conntrack entry.
    pub protocol: Option<Protocol>,
}

/// `1 flow`, `3 flows`.
pub(super) fn flows_n(n: usize) -> String {
    if n == 1 {
        "1 flow".to_owned()
    } else {
        format!("{n} flows")
    }
}

/// A finding of `class` with no evidence yet.
pub(super) fn finding(_facts: &Facts<'_>, class: VerdictClass, detail: String) -> Finding {
    Finding {
        class,
        detail,
        evidence: Vec::new(),
        pod: None,
        backend: None,
        client: None,
        frontend: None,
        protocol: None,
    }
}

/// The finding for a request to `fe`, a ClusterIP on a port the Service does not define: what
/// kube-proxy does with it (nftables mode 1.30+ rejects it in `cluster-ips-check`; iptables mode
/// and older nftables leave it untranslated, so it is routed on and times out), with the ports the
/// Service does define.
pub(super) fn undefined_port_finding(facts: &Facts<'_>, fe: SocketAddr) -> Finding {
    let name = facts.name();
    let reject = facts.svc.and_then(|s| s.rules.undefined_port_reject.as_ref());
    let what = match reject {
        Some(_) => "kube-proxy rejects it (nftables cluster-ips-check, 1.30+)",
        None => "no kube-proxy rule translates it, so it is routed on untranslated and gets no answer",
    };
    let ports = facts.defined_ports();
    let mut fd = finding(
        facts,
        VerdictClass::ServicePortUndefined,
        format!(
            "{name} defines no port {} on its ClusterIP {} (its ports: {ports}): {what}",
            fe.port(),
            fe.ip()
        ),
    );
    push_rule(&mut fd, reject);
    fd.evidence.push(Evidence::new(
        EvidenceKind::Rules,
        format!(
            "kube-proxy's rules give {name}'s ClusterIP {} the ports {ports}, not {}",
            fe.ip(),
            fe.port()
        ),
    ));
    if facts.ctx.api_consulted && facts.api_exists() == Some(true) {
        fd.evidence.push(Evidence::new(
            EvidenceKind::Api,
            format!("the API's {name} defines ports {ports}"),
        ));
    }
    fd.frontend = Some(fe);
    fd
}

/// The finding for a request to `dest`, an address no Service holds: kube-proxy's nftables mode
/// (1.30+) drops it when it lies in the service CIDR; otherwise no rule translates it, so it is
/// routed on untranslated.
pub(super) fn unallocated_finding(facts: &Facts<'_>, protocol: Protocol, dest: SocketAddr) -> Finding {
    let drop = facts
        .model
        .unallocated_drops
        .iter()
        .find(|d| d.cidrs.iter().any(|c| crate::model::in_cidr(dest.ip(), c)));
    let what = match drop {
        Some(d) => format!(
            "it is in the service CIDR {} and kube-proxy drops new connections to it (nftables cluster-ips-check, 1.30+)",
            d.cidrs.join(", ")
        ),
        None if facts.model.unallocated_drops.is_empty() => "no kube-proxy rule translates it, so it is routed on \
            untranslated and gets no answer (the rules name no service CIDR: iptables or IPVS mode, or nftables before 1.30)"
            .into(),
        None => "no kube-proxy rule translates it, so it is routed on untranslated and gets no answer".into(),
    };
    let mut fd = finding(
        facts,
        VerdictClass::ClusterIpUnallocated,
        format!("no Service holds {dest}/{protocol}: {what}"),
    );
    push_rule(&mut fd, drop.map(|d| &d.rule));
    let api = if facts.ctx.api_consulted {
        " or the API's Services"
    } else {
        ""
    };
    fd.evidence.push(Evidence::new(
        EvidenceKind::Rules,
        format!("no frontend of kube-proxy's rules{api} has the address {}", dest.ip()),
    ));
    fd.frontend = Some(dest);
    fd.protocol = Some(protocol);
    fd
}

/// Adds a rule as evidence, once.
pub(super) fn push_rule(fd: &mut Finding, rule: Option<&RuleRef>) {
    if let Some(r) = rule {
        let e = Evidence::new(EvidenceKind::Rules, rule_text(r));
        if !fd.evidence.contains(&e) {
            fd.evidence.push(e);
        }
    }
}

/// A rule as evidence: its exact text, prefixed with its chain/handle when the text does not name it.
pub(super) fn rule_text(r: &RuleRef) -> String {
    if r.text.is_empty() {
        r.name.to_string()
    } else if r.name.is_empty() || r.text.contains(&*r.name) {
        r.text.to_string()
    } else {
        format!("{}: {}", r.name, r.text)
    }
}
