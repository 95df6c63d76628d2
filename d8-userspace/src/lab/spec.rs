//! The cluster description a lab is built from: Services, pods and the node, as plain serde-able
//! values. Builders keep scenario code short; every field is public so tests can also write
//! literals or load a spec from JSON.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::model::topology::{self, Candidate, Policies};
use crate::model::{IpFamily, Protocol, ServiceRef};

/// Everything the lab node knows about: the node itself, its Services and the pods behind them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClusterSpec {
    /// Name of the lab node (`spec.nodeName` of local pods, the Node object's name).
    pub node_name: String,
    /// The node's InternalIP, on the link to the external client.
    pub node_ip: Ipv4Addr,
    /// Prefix length of the node/external-client link.
    pub node_prefix_len: u8,
    /// Address of the external client namespace (same link as `node_ip`).
    pub external_client_ip: Ipv4Addr,
    /// Address of the client pod (a pod namespace on this node that runs no server).
    pub client_pod_ip: Ipv4Addr,
    /// The cluster's pod CIDR (kube-proxy's `--cluster-cidr`, its local-traffic detector).
    pub cluster_cidr: String,
    /// The Service CIDR (nftables mode drops traffic to unallocated ClusterIPs in it).
    pub service_cidr: String,
    /// kube-proxy on this node; `None` means no kube-proxy runs (no pod in the API, no healthz).
    pub kube_proxy: Option<KubeProxySpec>,
    /// Other nodes of the cluster, referenced by remote pods (API only, no namespace).
    pub other_nodes: Vec<NodeSpec>,
    /// Services, in the order their rules are written.
    pub services: Vec<ServiceSpec>,
    /// Pods: local ones get a namespace and servers, remote ones exist only in rules and API.
    pub pods: Vec<PodSpec>,
    /// `topology.kubernetes.io/zone` of nodes (the lab node's decides which zone hints apply).
    #[serde(default)]
    pub zones: BTreeMap<String, String>,
    /// When the API last changed the Services' endpoints (unix seconds): every EndpointSlice's
    /// `endpoints.kubernetes.io/last-change-trigger-time`; `None` writes no annotation.
    #[serde(default)]
    pub api_changed_at: Option<u64>,
    /// A dual-stack node: every address of the spec also has its IPv6 twin ([`ipv6_twin`]), every
    /// Service not marked `single_stack` has both ClusterIPs, and kube-proxy's rules are written
    /// for both families (ip6tables, `table ip6 kube-proxy`).
    #[serde(default)]
    pub dual_stack: bool,
    /// An IPv6-only node: every address of the spec stands for its IPv6 twin alone (no interface
    /// carries an IPv4 address but loopback's), every Service is `SingleStack` with `ipFamilies:
    /// [IPv6]`, and kube-proxy writes IPv6 rules only (ip6tables, `table ip6 kube-proxy`).
    #[serde(default)]
    pub ipv6_only: bool,
    /// The control plane's version (`v1.35.0`): the API view lists a control-plane Node
    /// (`node-role.kubernetes.io/control-plane`) whose kubelet runs it, which a snapshot offers in
    /// place of the API server's own `/version`. `None` lists none, as managed clusters do.
    #[serde(default)]
    pub control_plane_version: Option<String>,
}

/// kube-proxy as the API and its health endpoints present it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubeProxySpec {
    /// Version string as kube-proxy reports it (`v1.33.2`).
    pub version: String,
}

/// A node of the cluster other than the lab node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeSpec {
    /// Node name.
    pub name: String,
    /// InternalIP (never routed: it exists in the API only).
    pub ip: Ipv4Addr,
}

/// `spec.type` of a Service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum ServiceType {
    /// `ClusterIP`.
    #[default]
    ClusterIP,
    /// `NodePort`.
    NodePort,
    /// `LoadBalancer`.
    LoadBalancer,
}

impl ServiceType {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClusterIP => "ClusterIP",
            Self::NodePort => "NodePort",
            Self::LoadBalancer => "LoadBalancer",
        }
    }
}

/// `externalTrafficPolicy` / `internalTrafficPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum TrafficPolicy {
    /// Any ready endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on the receiving node.
    Local,
}

impl TrafficPolicy {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cluster => "Cluster",
            Self::Local => "Local",
        }
    }
}

/// `sessionAffinity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum SessionAffinity {
    /// No affinity.
    #[default]
    None,
    /// `ClientIP` with `sessionAffinityConfig.clientIP.timeoutSeconds`.
    ClientIP {
        /// Affinity timeout in seconds (Kubernetes default 10800).
        timeout_seconds: u32,
    },
}

/// One Service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service name.
    pub name: String,
    /// `spec.type`.
    pub service_type: ServiceType,
    /// `spec.clusterIP`.
    pub cluster_ip: Ipv4Addr,
    /// `spec.ports`.
    pub ports: Vec<ServicePortSpec>,
    /// `spec.selector`: pods of the same namespace whose labels contain all of these are endpoints.
    pub selector: BTreeMap<String, String>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<Ipv4Addr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub load_balancer_ips: Vec<Ipv4Addr>,
    /// `spec.externalTrafficPolicy` (meaningful for NodePort/LoadBalancer/external IPs).
    pub external_traffic_policy: TrafficPolicy,
    /// `spec.internalTrafficPolicy`.
    pub internal_traffic_policy: TrafficPolicy,
    /// `spec.sessionAffinity` (+ config).
    pub session_affinity: SessionAffinity,
    /// `spec.healthCheckNodePort` (LoadBalancer with externalTrafficPolicy=Local).
    pub health_check_node_port: Option<u16>,
    /// `spec.loadBalancerSourceRanges` (CIDRs): kube-proxy drops other clients of the
    /// load-balancer IPs.
    #[serde(default)]
    pub source_ranges: Vec<String>,
    /// `ipFamilyPolicy: SingleStack` (IPv4 only) in a dual-stack lab; otherwise a dual-stack
    /// lab's Services are `PreferDualStack` with `ipFamilies: [IPv4, IPv6]`.
    #[serde(default)]
    pub single_stack: bool,
}

/// One entry of `spec.ports`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServicePortSpec {
    /// Port name; empty for an unnamed port (kube-proxy then names it `ns/svc`).
    pub name: String,
    /// Service port.
    pub port: u16,
    /// Numeric `targetPort` on the pods.
    pub target_port: u16,
    /// Protocol.
    pub protocol: Protocol,
    /// `nodePort` (NodePort and LoadBalancer Services).
    pub node_port: Option<u16>,
}

/// What a pod runs on one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ListenerKind {
    /// TCP listener that accepts, writes `<pod name>\n`, half-closes and drains until the peer closes.
    Tcp,
    /// HTTP/1.1 responder: `200 OK` with body `<pod name>\n` to any request, then closes.
    Http,
    /// UDP echo: replies `<pod name>\n` followed by the datagram it received.
    UdpEcho,
    /// TCP listener with a full accept queue that never accepts: SYNs are dropped (client times
    /// out), the way a wedged server behaves.
    TcpNoAccept,
}

impl ListenerKind {
    /// Transport protocol of the listener.
    pub fn protocol(self) -> Protocol {
        match self {
            Self::UdpEcho => Protocol::Udp,
            _ => Protocol::Tcp,
        }
    }
}

/// One server socket of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListenerSpec {
    /// Port bound on 0.0.0.0 inside the pod.
    pub port: u16,
    /// Behaviour.
    pub kind: ListenerKind,
}

/// A readiness or liveness probe, as the Pod spec declares it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProbeSpec {
    /// `tcpSocket.port`.
    TcpSocket {
        /// Probed port.
        port: u16,
    },
    /// `httpGet.path` + `httpGet.port`.
    HttpGet {
        /// Request path.
        path: String,
        /// Probed port.
        port: u16,
    },
}

impl ProbeSpec {
    /// The probed port.
    pub fn port(&self) -> u16 {
        match self {
            Self::TcpSocket { port } | Self::HttpGet { port, .. } => *port,
        }
    }
}

/// One pod.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodSpec {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Pod name (unique within its namespace).
    pub name: String,
    /// `status.podIP`.
    pub ip: Ipv4Addr,
    /// Node the pod runs on; `None` = the lab node (gets a namespace and real servers).
    pub node: Option<String>,
    /// Ready condition (only ready endpoints are in kube-proxy's dispatch chains).
    pub ready: bool,
    /// `metadata.labels` (matched by Service selectors).
    pub labels: BTreeMap<String, String>,
    /// Servers the pod runs (empty: nothing listens, connections are refused).
    pub listeners: Vec<ListenerSpec>,
    /// `readinessProbe`.
    pub readiness_probe: Option<ProbeSpec>,
    /// `livenessProbe`.
    pub liveness_probe: Option<ProbeSpec>,
    /// The pod drops every packet in and out (an nftables drop table inside the pod namespace).
    pub drop_all: bool,
    /// Its endpoints' `hints.forZones` (as the EndpointSlice controller writes them for
    /// topology-mode Auto or trafficDistribution PreferClose/PreferSameZone).
    #[serde(default)]
    pub zone_hints: Vec<String>,
    /// Its endpoints' `hints.forNodes` (trafficDistribution PreferSameNode).
    #[serde(default)]
    pub node_hints: Vec<String>,
}

impl PodSpec {
    /// A ready pod on the lab node with no labels, listeners or probes.
    pub fn new(namespace: &str, name: &str, ip: Ipv4Addr) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            ip,
            node: None,
            ready: true,
            labels: BTreeMap::new(),
            listeners: Vec::new(),
            readiness_probe: None,
            liveness_probe: None,
            drop_all: false,
            zone_hints: Vec::new(),
            node_hints: Vec::new(),
        }
    }

    /// Hints its endpoints for `zone` (`hints.forZones`).
    pub fn zone_hint(mut self, zone: &str) -> Self {
        self.zone_hints.push(zone.into());
        self
    }

    /// Hints its endpoints for `node` (`hints.forNodes`).
    pub fn node_hint(mut self, node: &str) -> Self {
        self.node_hints.push(node.into());
        self
    }

    /// Adds a label.
    pub fn label(mut self, key: &str, value: &str) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Adds a server.
    pub fn listen(mut self, port: u16, kind: ListenerKind) -> Self {
        self.listeners.push(ListenerSpec { port, kind });
        self
    }

    /// Sets a TCP readiness probe and the same liveness probe on `port`.
    pub fn tcp_probes(mut self, port: u16) -> Self {
        self.readiness_probe = Some(ProbeSpec::TcpSocket { port });
        self.liveness_probe = Some(ProbeSpec::TcpSocket { port });
        self
    }

    /// Sets an HTTP readiness probe and the same liveness probe (`httpGet` on `path`, `port`).
    /// The lab's kubelet prober still probes it the tcpSocket way (connect, then RST).
    pub fn http_probes(mut self, path: &str, port: u16) -> Self {
        let probe = ProbeSpec::HttpGet {
            path: path.into(),
            port,
        };
        self.readiness_probe = Some(probe.clone());
        self.liveness_probe = Some(probe);
        self
    }

    /// Places the pod on another node (rules and API only).
    pub fn on_node(mut self, node: &str) -> Self {
        self.node = Some(node.into());
        self
    }

    /// Sets readiness.
    pub fn ready(mut self, ready: bool) -> Self {
        self.ready = ready;
        self
    }

    /// True when the pod runs on the lab node.
    pub fn is_local(&self, spec: &ClusterSpec) -> bool {
        self.node.as_deref().is_none_or(|n| n == spec.node_name)
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// Ports probed by kubelet (readiness and liveness, deduplicated).
    pub fn probe_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self
            .readiness_probe
            .iter()
            .chain(self.liveness_probe.iter())
            .map(ProbeSpec::port)
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

impl ServiceSpec {
    /// A ClusterIP Service with no ports and an `app=<name>` selector.
    pub fn new(namespace: &str, name: &str, cluster_ip: Ipv4Addr) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
            service_type: ServiceType::ClusterIP,
            cluster_ip,
            ports: Vec::new(),
            selector: BTreeMap::from([("app".to_string(), name.to_string())]),
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            external_traffic_policy: TrafficPolicy::Cluster,
            internal_traffic_policy: TrafficPolicy::Cluster,
            session_affinity: SessionAffinity::None,
            health_check_node_port: None,
            source_ranges: Vec::new(),
            single_stack: false,
        }
    }

    /// Makes the Service IPv4-only (`ipFamilyPolicy: SingleStack`) in a dual-stack lab.
    pub fn single_stack(mut self) -> Self {
        self.single_stack = true;
        self
    }

    /// Adds a loadBalancerSourceRange.
    pub fn source_range(mut self, cidr: &str) -> Self {
        self.source_ranges.push(cidr.into());
        self
    }

    /// kube-proxy's `usesFWChain`: load-balancer IPs with source ranges.
    pub fn uses_firewall(&self) -> bool {
        !self.load_balancer_ips.is_empty() && !self.source_ranges.is_empty()
    }

    /// Adds a port.
    pub fn port(mut self, name: &str, port: u16, target_port: u16, protocol: Protocol) -> Self {
        self.ports.push(ServicePortSpec {
            name: name.into(),
            port,
            target_port,
            protocol,
            node_port: None,
        });
        self
    }

    /// Adds a port with a NodePort and makes the Service `NodePort` (unless it is a LoadBalancer).
    pub fn node_port(mut self, name: &str, port: u16, target_port: u16, protocol: Protocol, node_port: u16) -> Self {
        self.ports.push(ServicePortSpec {
            name: name.into(),
            port,
            target_port,
            protocol,
            node_port: Some(node_port),
        });
        if self.service_type == ServiceType::ClusterIP {
            self.service_type = ServiceType::NodePort;
        }
        self
    }

    /// Replaces the selector.
    pub fn selector(mut self, key: &str, value: &str) -> Self {
        self.selector = BTreeMap::from([(key.to_string(), value.to_string())]);
        self
    }

    /// Adds an external IP.
    pub fn external_ip(mut self, ip: Ipv4Addr) -> Self {
        self.external_ips.push(ip);
        self
    }

    /// Makes the Service a LoadBalancer with this ingress IP.
    pub fn load_balancer_ip(mut self, ip: Ipv4Addr) -> Self {
        self.service_type = ServiceType::LoadBalancer;
        self.load_balancer_ips.push(ip);
        self
    }

    /// Sets `externalTrafficPolicy`.
    pub fn external_policy(mut self, policy: TrafficPolicy) -> Self {
        self.external_traffic_policy = policy;
        self
    }

    /// Sets `internalTrafficPolicy`.
    pub fn internal_policy(mut self, policy: TrafficPolicy) -> Self {
        self.internal_traffic_policy = policy;
        self
    }

    /// Sets ClientIP session affinity.
    pub fn client_ip_affinity(mut self, timeout_seconds: u32) -> Self {
        self.session_affinity = SessionAffinity::ClientIP { timeout_seconds };
        self
    }

    /// `namespace/name`.
    pub fn service_ref(&self) -> ServiceRef {
        ServiceRef {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// kube-proxy's ServicePortName string: `ns/name:port`, or `ns/name` for an unnamed port.
    pub fn port_name(&self, port: &ServicePortSpec) -> String {
        if port.name.is_empty() {
            format!("{}/{}", self.namespace, self.name)
        } else {
            format!("{}/{}:{}", self.namespace, self.name, port.name)
        }
    }

    /// kube-proxy's `ExternallyAccessible`: NodePort, LB ingress or external IPs.
    pub fn externally_accessible(&self) -> bool {
        self.service_type != ServiceType::ClusterIP
            || !self.external_ips.is_empty()
            || !self.load_balancer_ips.is_empty()
    }

    /// externalTrafficPolicy=Local on an externally accessible Service (kube-proxy ignores it otherwise).
    pub fn external_policy_local(&self) -> bool {
        self.externally_accessible() && self.external_traffic_policy == TrafficPolicy::Local
    }

    /// internalTrafficPolicy=Local.
    pub fn internal_policy_local(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
    }

    fn selects(&self, pod: &PodSpec) -> bool {
        pod.namespace == self.namespace
            && !self.selector.is_empty()
            && self.selector.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

/// One endpoint of one Service port, as kube-proxy's endpoint cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointInfo {
    /// Pod IP, of the family asked for ([`ClusterSpec::endpoints_in`]).
    pub ip: IpAddr,
    /// Target port.
    pub port: u16,
    /// Ready condition.
    pub ready: bool,
    /// On the lab node.
    pub local: bool,
    /// Pod name.
    pub pod: String,
    /// Pod's node name.
    pub node: String,
    /// `hints.forZones`.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes`.
    pub node_hints: Vec<String>,
}

impl EndpointInfo {
    /// `ip:port` (`[ip]:port` for IPv6, Go's `net.JoinHostPort`), kube-proxy's endpoint string
    /// (hash input, DNAT target, comment).
    pub fn addr(&self) -> String {
        SocketAddr::new(self.ip, self.port).to_string()
    }
}

impl ClusterSpec {
    /// A spec with default addressing and no Services or pods:
    /// node `d8lab-node` 172.31.0.2/24, external client 172.31.0.100, client pod 10.244.1.250,
    /// cluster CIDR 10.244.0.0/16, Service CIDR 10.96.0.0/16, kube-proxy v1.33.2 running.
    pub fn new() -> Self {
        Self {
            node_name: "d8lab-node".into(),
            node_ip: Ipv4Addr::new(172, 31, 0, 2),
            node_prefix_len: 24,
            external_client_ip: Ipv4Addr::new(172, 31, 0, 100),
            client_pod_ip: Ipv4Addr::new(10, 244, 1, 250),
            cluster_cidr: "10.244.0.0/16".into(),
            service_cidr: "10.96.0.0/16".into(),
            kube_proxy: Some(KubeProxySpec {
                version: "v1.33.2".into(),
            }),
            other_nodes: Vec::new(),
            services: Vec::new(),
            pods: Vec::new(),
            zones: BTreeMap::new(),
            api_changed_at: None,
            dual_stack: false,
            ipv6_only: false,
            control_plane_version: None,
        }
    }

    /// Lists a control-plane Node running `version` in the API view (see
    /// [`Self::control_plane_version`](field@Self::control_plane_version)).
    pub fn control_plane(mut self, version: &str) -> Self {
        self.control_plane_version = Some(version.into());
        self
    }

    /// Makes the node dual-stack (see [`Self::dual_stack`](field@Self::dual_stack)).
    pub fn dual_stack(mut self) -> Self {
        self.dual_stack = true;
        self
    }

    /// Makes the node IPv6-only (see [`Self::ipv6_only`](field@Self::ipv6_only)).
    pub fn ipv6_only(mut self) -> Self {
        self.ipv6_only = true;
        self
    }

    /// The families kube-proxy programs on the lab node: IPv4, IPv4 and IPv6 when dual-stack,
    /// IPv6 alone when IPv6-only.
    pub fn families(&self) -> Vec<IpFamily> {
        if self.ipv6_only {
            vec![IpFamily::V6]
        } else if self.dual_stack {
            vec![IpFamily::V4, IpFamily::V6]
        } else {
            vec![IpFamily::V4]
        }
    }

    /// True when the node has IPv6 addresses (dual-stack or IPv6-only).
    pub fn has_ipv6(&self) -> bool {
        self.families().contains(&IpFamily::V6)
    }

    /// True when the node has IPv4 addresses (not IPv6-only).
    pub fn has_ipv4(&self) -> bool {
        self.families().contains(&IpFamily::V4)
    }

    /// The spec address `v4` in the node's primary family: itself, or its IPv6 twin on an
    /// IPv6-only node (`clusterIP`, `podIP`, `hostIP` name the primary family's address).
    pub fn primary_ip(&self, v4: Ipv4Addr) -> IpAddr {
        in_family(v4, self.families()[0])
    }

    /// `spec.ipFamilies` of a Service (primary family first). On an IPv6-only node every Service
    /// is IPv6 single-stack, `single_stack` or not.
    pub fn service_families(&self, svc: &ServiceSpec) -> Vec<IpFamily> {
        if svc.single_stack && !self.ipv6_only {
            vec![IpFamily::V4]
        } else {
            self.families()
        }
    }

    /// The Services kube-proxy's proxier for `family` sees (a SingleStack IPv4 Service has no
    /// IPv6 rules).
    pub fn services_in(&self, family: IpFamily) -> impl Iterator<Item = &ServiceSpec> {
        self.services
            .iter()
            .filter(move |s| self.service_families(s).contains(&family))
    }

    /// Labels `node` with `topology.kubernetes.io/zone: zone`.
    pub fn zone(mut self, node: &str, zone: &str) -> Self {
        self.zones.insert(node.into(), zone.into());
        self
    }

    /// Adds a Service.
    pub fn service(mut self, svc: ServiceSpec) -> Self {
        self.services.push(svc);
        self
    }

    /// Adds `count` pods labelled `app=<app>` in `namespace` on node `node` (rules and API only),
    /// named `<app>-0`, `<app>-1`, ... at 10.245.0.1, 10.245.0.2, ... (250 a /24): a large cluster.
    pub fn remote_pods(mut self, namespace: &str, app: &str, node: &str, count: usize) -> Self {
        for i in 0..count {
            let ip = Ipv4Addr::new(10, 245, (i / 250) as u8, (i % 250) as u8 + 1);
            self.pods.push(
                PodSpec::new(namespace, &format!("{app}-{i}"), ip)
                    .label("app", app)
                    .on_node(node),
            );
        }
        self
    }

    /// Adds a pod.
    pub fn pod(mut self, pod: PodSpec) -> Self {
        self.pods.push(pod);
        self
    }

    /// Finds a Service by namespace and name.
    pub fn find_service(&self, namespace: &str, name: &str) -> Option<&ServiceSpec> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// Finds a pod by name (`name` or `namespace/name`).
    pub fn find_pod(&self, name: &str) -> Option<&PodSpec> {
        self.pods.iter().find(|p| p.name == name || p.key() == name)
    }

    /// Mutable [`Self::find_pod`].
    pub fn find_pod_mut(&mut self, name: &str) -> Option<&mut PodSpec> {
        self.pods.iter_mut().find(|p| p.name == name || p.key() == name)
    }

    /// Node name of a pod (the lab node when unset).
    pub fn pod_node<'a>(&'a self, pod: &'a PodSpec) -> &'a str {
        pod.node.as_deref().unwrap_or(&self.node_name)
    }

    /// The IPv4 endpoints of one Service port, ready or not, sorted by `ip:port` string as
    /// kube-proxy's endpoint cache sorts them.
    pub fn endpoints(&self, svc: &ServiceSpec, port: &ServicePortSpec) -> Vec<EndpointInfo> {
        self.endpoints_in(svc, port, IpFamily::V4)
    }

    /// [`Self::endpoints`] of one family (pods' IPv6 addresses are their [`ipv6_twin`]s).
    pub fn endpoints_in(&self, svc: &ServiceSpec, port: &ServicePortSpec, family: IpFamily) -> Vec<EndpointInfo> {
        let mut eps: Vec<EndpointInfo> = self
            .pods
            .iter()
            .filter(|p| svc.selects(p))
            .map(|p| EndpointInfo {
                ip: in_family(p.ip, family),
                port: port.target_port,
                ready: p.ready,
                local: p.is_local(self),
                pod: p.name.clone(),
                node: self.pod_node(p).to_string(),
                zone_hints: p.zone_hints.clone(),
                node_hints: p.node_hints.clone(),
            })
            .collect();
        eps.sort_by_key(EndpointInfo::addr);
        eps
    }

    /// Names and addresses of every node: the lab node first, then `other_nodes`, then nodes
    /// pods name that are not listed (given addresses 172.31.1.N so the API stays well-formed).
    pub fn nodes(&self) -> Vec<NodeSpec> {
        let mut nodes = vec![NodeSpec {
            name: self.node_name.clone(),
            ip: self.node_ip,
        }];
        nodes.extend(self.other_nodes.iter().cloned());
        for pod in &self.pods {
            let name = self.pod_node(pod);
            if !nodes.iter().any(|n| n.name == name) {
                let n = nodes.len() as u8;
                nodes.push(NodeSpec {
                    name: name.to_string(),
                    ip: Ipv4Addr::new(172, 31, 1, n),
                });
            }
        }
        nodes
    }
}

impl Default for ClusterSpec {
    fn default() -> Self {
        Self::new()
    }
}

/// How kube-proxy splits one Service port's endpoints on the lab node (`model::topology`, the
/// classifier's own restatement of `proxy.CategorizeEndpoints`; the lab models no terminating
/// endpoints).
#[derive(Debug, Clone)]
pub(crate) struct Categorized {
    /// Endpoints for the "Cluster" policy chain (ready endpoints, narrowed by topology hints) when
    /// the port uses it.
    pub cluster: Vec<EndpointInfo>,
    /// Ready local endpoints when the port uses a "Local" policy.
    pub local: Vec<EndpointInfo>,
    /// Endpoints that get an endpoint chain.
    pub all_reachable: Vec<EndpointInfo>,
    /// Any ready endpoint exists.
    pub has_any: bool,
}

fn policies(svc: &ServiceSpec) -> Policies {
    Policies::of(
        svc.internal_policy_local(),
        svc.external_traffic_policy == TrafficPolicy::Local,
        svc.externally_accessible(),
    )
}

/// kube-proxy's `UsesClusterEndpoints`.
pub(crate) fn uses_cluster_endpoints(svc: &ServiceSpec) -> bool {
    policies(svc).cluster
}

/// kube-proxy's `UsesLocalEndpoints`.
pub(crate) fn uses_local_endpoints(svc: &ServiceSpec) -> bool {
    policies(svc).local
}

pub(crate) fn categorize(spec: &ClusterSpec, svc: &ServiceSpec, eps: &[EndpointInfo]) -> Categorized {
    let candidates: Vec<Candidate> = eps
        .iter()
        .map(|e| Candidate {
            ready: e.ready,
            serving_terminating: false,
            local: e.local,
            zone_hints: e.zone_hints.clone(),
            node_hints: e.node_hints.clone(),
        })
        .collect();
    let zone = spec.zones.get(&spec.node_name).map(String::as_str);
    let c = topology::categorize(&candidates, policies(svc), &spec.node_name, zone);
    let pick = |idx: &[usize]| idx.iter().map(|&i| eps[i].clone()).collect::<Vec<_>>();
    Categorized {
        cluster: pick(&c.cluster),
        local: pick(&c.local),
        all_reachable: pick(&c.all_reachable),
        has_any: c.has_any,
    }
}

/// The lab's IPv6 address for one of its IPv4 addresses: `fd00:A:B:C::D`, each octet written in
/// decimal digits as a hexadecimal group (10.96.0.10 becomes `fd00:10:96:0::10`), so a dual-stack
/// lab's IPv6 addresses read like their IPv4 twins and an octet-aligned IPv4 CIDR has an IPv6
/// twin too ([`ipv6_twin_cidr`]).
pub fn ipv6_twin(v4: Ipv4Addr) -> Ipv6Addr {
    let group = |octet: u8| {
        let digits = octet.to_string();
        u16::from_str_radix(&digits, 16).unwrap_or_default()
    };
    let [a, b, c, d] = v4.octets();
    Ipv6Addr::new(0xfd00, group(a), group(b), group(c), 0, 0, 0, group(d))
}

/// `v4` in `family`: itself, or its [`ipv6_twin`].
pub fn in_family(v4: Ipv4Addr, family: IpFamily) -> IpAddr {
    match family {
        IpFamily::V4 => IpAddr::V4(v4),
        IpFamily::V6 => IpAddr::V6(ipv6_twin(v4)),
    }
}

/// The IPv6 twin of an octet-aligned IPv4 CIDR (`/0`, `/8`, `/16`, `/24`, `/32`): the twin of its
/// address with 16 bits per octet after `fd00::/16` (10.244.0.0/16 becomes `fd00:10:244::/48`).
/// `None` for anything else.
pub fn ipv6_twin_cidr(cidr: &str) -> Option<String> {
    let (ip, len) = cidr.split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    if len > 32 || !len.is_multiple_of(8) {
        return None;
    }
    let v6_len = match len {
        32 => 128,
        l => 16 + u16::from(l) * 2,
    };
    Some(format!("{}/{v6_len}", ipv6_twin(ip)))
}

/// `cidr` in `family`: itself, or its [`ipv6_twin_cidr`] (the lab checks every CIDR of a
/// dual-stack spec has one before writing anything).
pub fn cidr_in_family(cidr: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => cidr.to_string(),
        IpFamily::V6 => ipv6_twin_cidr(cidr).unwrap_or_else(|| cidr.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_twins_read_like_their_ipv4_addresses() {
        assert_eq!(ipv6_twin(Ipv4Addr::new(10, 96, 0, 10)).to_string(), "fd00:10:96::10");
        assert_eq!(
            ipv6_twin(Ipv4Addr::new(10, 244, 1, 11)).to_string(),
            "fd00:10:244:1::11"
        );
        assert_eq!(
            ipv6_twin(Ipv4Addr::new(172, 31, 0, 255)).to_string(),
            "fd00:172:31::255"
        );
        assert_eq!(ipv6_twin_cidr("10.244.0.0/16").as_deref(), Some("fd00:10:244::/48"));
        assert_eq!(ipv6_twin_cidr("172.31.0.0/24").as_deref(), Some("fd00:172:31::/64"));
        assert_eq!(ipv6_twin_cidr("192.0.2.7/32").as_deref(), Some("fd00:192:0:2::7/128"));
        assert_eq!(ipv6_twin_cidr("10.96.0.0/12"), None);
        // A twin CIDR holds the twins of the addresses its IPv4 CIDR holds.
        let net = ipv6_twin_cidr("10.244.0.0/16").unwrap();
        assert!(crate::model::in_cidr(
            in_family(Ipv4Addr::new(10, 244, 7, 250), IpFamily::V6),
            &net
        ));
        assert!(!crate::model::in_cidr(
            in_family(Ipv4Addr::new(10, 245, 0, 1), IpFamily::V6),
            &net
        ));
    }

    #[test]
    fn dual_stack_endpoints_come_in_both_families() {
        let spec = ClusterSpec::new()
            .dual_stack()
            .service(ServiceSpec::new("a", "web", Ipv4Addr::new(10, 96, 0, 10)).port("", 80, 8080, Protocol::Tcp))
            .pod(PodSpec::new("a", "web-1", Ipv4Addr::new(10, 244, 1, 11)).label("app", "web"));
        let (svc, port) = (&spec.services[0], &spec.services[0].ports[0]);
        assert_eq!(spec.endpoints(svc, port)[0].addr(), "10.244.1.11:8080");
        assert_eq!(
            spec.endpoints_in(svc, port, IpFamily::V6)[0].addr(),
            "[fd00:10:244:1::11]:8080"
        );
        assert_eq!(spec.service_families(svc), [IpFamily::V4, IpFamily::V6]);
        assert_eq!(spec.services_in(IpFamily::V6).count(), 1);
        let single = svc.clone().single_stack();
        assert_eq!(spec.service_families(&single), [IpFamily::V4]);
    }

    #[test]
    fn an_ipv6_only_node_has_ipv6_services_and_endpoints_only() {
        let spec = ClusterSpec::new()
            .ipv6_only()
            .service(ServiceSpec::new("a", "web", Ipv4Addr::new(10, 96, 0, 10)).port("", 80, 8080, Protocol::Tcp))
            .service(ServiceSpec::new("a", "v4", Ipv4Addr::new(10, 96, 0, 11)).single_stack());
        assert_eq!(spec.families(), [IpFamily::V6]);
        assert!(spec.has_ipv6() && !spec.has_ipv4());
        for svc in &spec.services {
            assert_eq!(spec.service_families(svc), [IpFamily::V6], "{}", svc.name);
        }
        assert_eq!(spec.services_in(IpFamily::V4).count(), 0);
        assert_eq!(
            spec.primary_ip(Ipv4Addr::new(10, 96, 0, 10)).to_string(),
            "fd00:10:96::10"
        );
    }
}
