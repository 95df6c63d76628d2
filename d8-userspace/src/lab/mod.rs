//! The lab: a Kubernetes node built from network namespaces and programmed exactly as kube-proxy
//! would program it, for the end-to-end tests, `d8-trace demo` and the benchmarks.
//!
//! # Wiring
//!
//! Every namespace is named `d8lab-<pid>-<counter>-<role>`, so two labs (in one process or in two)
//! never collide and [`cleanup_stale`] can tell a crashed run's leftovers by their dead pid.
//!
//! ```text
//!  ext namespace                  node namespace                              pod namespaces
//!  eth0 172.31.0.100/24 ---veth--- ext0 172.31.0.2/24 (node IP)
//!  default via node IP             d8dummy0 (default route, src node IP)
//!                                  caliXXXXXXXXXXX 169.254.1.1/32 ---veth--- eth0 <pod IP>/32
//!                                  route <pod IP>/32 dev caliXXX src node IP     default via 169.254.1.1 onlink
//!                                  iptables (filter+nat) or nft table ip kube-proxy
//!                                  ip_forward=1, rp_filter=0, IPv6 off (this namespace only)
//! ```
//!
//! A dual-stack lab ([`ClusterSpec::dual_stack`]) keeps IPv6 on and gives every interface above its
//! IPv6 twin as well ([`spec::ipv6_twin`]: 172.31.0.2/24 is also `fd00:172:31:0::2/64`, a pod's
//! 10.244.1.11/32 also `fd00:10:244:1::11/128`), pods route IPv6 through `fe80::1` on their veth
//! (Calico's link-local gateway), the node forwards IPv6, servers listen on `[::]` beside
//! `0.0.0.0`, and kube-proxy's rules are written for both families (`ip6tables-restore`, `table ip6
//! kube-proxy`). Duplicate address detection is off in every lab namespace, so addresses are usable
//! at once.
//!
//! An IPv6-only lab ([`ClusterSpec::ipv6_only`]) is wired the same way with the IPv6 twins alone:
//! no interface but loopback has an IPv4 address, servers listen on `[::]` only, and kube-proxy's
//! rules exist for IPv6 only (no `iptables-restore`, no `table ip kube-proxy`).
//!
//! - Calico style, no bridge (ARCHITECTURE.md, "The lab"): pods reach the node through their own veth; the node
//!   routes each pod /32 to its veth with `src` = node IP, so kubelet-style probes from the node
//!   leave from the node IP. A shared bridge would break un-DNAT between pods of one subnet unless
//!   br_netfilter were on.
//! - The node's default route points at a dead-end interface (a veth whose peer is down; the
//!   kernel here has no dummy driver): traffic kube-proxy did not translate
//!   (a ClusterIP without rules) is routed, reaches the FORWARD/OUTPUT filter hooks and meets
//!   kube-proxy's REJECT/DROP rules the way it would on a real node instead of failing with "no
//!   route", and whatever gets past them is discarded by that device. Nothing leaves the lab:
//!   no lab interface is connected to the root namespace, and no rule, route or sysctl is written
//!   there.
//! - The client pod (`<prefix>client`) is a pod namespace without servers; the external client
//!   (`<prefix>ext`) sits on the node's second link and sends NodePort / external IP traffic.
//! - Pods on other nodes exist only in the rules and the API snapshot: DNAT to them follows the
//!   dummy default route and times out.
//! - Servers ([`ListenerKind`]) are threads of this process that `setns` into the pod namespace
//!   before binding; [`Lab::up`] returns only after every one reported that it is bound. kube-proxy
//!   is simulated the same way: `/healthz` on node-IP:10256 and `/metrics` + `/proxyMode` on
//!   127.0.0.1:10249 inside the node namespace, while the spec has `kube_proxy` set.
//! - Rules: iptables mode restores the whole filter and nat tables with `iptables-restore` (the
//!   text kube-proxy writes, [`iptables::kube_proxy_restore`], plus the built-in chains' jump
//!   rules); nftables mode replaces `table ip kube-proxy` atomically with `nft -f`
//!   ([`nftables::kube_proxy_transaction`], layout B); IPVS mode ([`ipvs`]) binds the Service IPs
//!   to a dummy `kube-ipvs0`, loads virtual and real servers with `ipvsadm -R`, fills kube-proxy's
//!   ipsets and restores its IPVS-mode iptables rules (needs the ip_vs module: not on 6.18 here).
//! - The lab keeps three specs: the world (pods and servers), what kube-proxy programmed (rules) and
//!   what the API says (snapshot). Faults make them disagree on purpose; [`Lab::apply`] brings all
//!   three back in line.
//! - Teardown: `Drop` stops every server thread, then deletes every namespace the lab made (their
//!   veths go with them).
//!
//! ```no_run
//! use std::{net::{Ipv4Addr, SocketAddrV4}, time::Duration};
//! use d8_trace::lab::{self, ClusterSpec, Lab, ListenerKind, PodSpec, ServiceSpec};
//! use d8_trace::model::{Protocol, ProxyMode};
//!
//! let spec = ClusterSpec::new()
//!     .service(ServiceSpec::new("default", "web", Ipv4Addr::new(10, 96, 0, 10)).port("http", 80, 8080, Protocol::Tcp))
//!     .pod(PodSpec::new("default", "web-1", Ipv4Addr::new(10, 244, 1, 11)).label("app", "web")
//!         .listen(8080, ListenerKind::Http).tcp_probes(8080));
//! let mut lab = Lab::up(spec, ProxyMode::Iptables)?;
//! let out = lab::tcp_connect(lab.client_ns(), SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80), Duration::from_secs(2))?;
//! lab.delete_pod("web-1")?;                 // stale endpoint: still in rules and API
//! let snapshot = lab.snapshot_json();       // kubectl get services,endpointslices,pods,nodes -A -o json
//! # Ok::<(), lab::Error>(())
//! ```

mod faults;
pub mod iptables;
pub mod ipvs;
pub mod netns;
pub mod nftables;
mod prober;
mod servers;
pub mod snapshot;
pub mod spec;
pub mod traffic;

pub use prober::Prober;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::model::{IpFamily, ProxyMode};
pub use netns::{cleanup_stale, in_netns};
use servers::{Behavior, KubeProxyState, Server};
pub use spec::{
    ClusterSpec, KubeProxySpec, ListenerKind, ListenerSpec, NodeSpec, PodSpec, ProbeSpec, ServicePortSpec, ServiceSpec,
    ServiceType, SessionAffinity, TrafficPolicy, in_family, ipv6_twin, ipv6_twin_cidr,
};
pub use traffic::{
    HttpOutcome, TcpOutcome, UdpOutcome, http_get, kubelet_probe, tcp_connect, tcp_request, udp_request,
    udp_request_from,
};

/// What went wrong while building, changing or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setup command failed.
    #[error("`{command}` failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its stderr (or the spawn error).
        stderr: String,
    },
    /// Entering or using a network namespace failed.
    #[error("network namespace {ns}: {reason}")]
    Netns {
        /// Namespace name.
        ns: String,
        /// What failed.
        reason: String,
    },
    /// The spec cannot be built (duplicate pod IPs, unsupported proxy mode, ...).
    #[error("invalid lab spec: {0}")]
    Spec(String),
    /// A fault named a pod the lab does not have (or that is not on the lab node).
    #[error("no such local pod in the lab: {0}")]
    NoSuchPod(String),
    /// A socket or thread operation failed.
    #[error("{0}")]
    Io(String),
    /// Not running as root: namespaces and rules need CAP_NET_ADMIN and CAP_SYS_ADMIN.
    #[error("the lab needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) to create network namespaces")]
    NotRoot,
}

/// Labs made by this process so far (the `<counter>` in namespace names).
static LAB_COUNTER: AtomicU32 = AtomicU32::new(0);

/// Name of the node-side veth of a pod: `cali` + 11 hex digits of sha256(`ns/name`), as Calico
/// names its workload interfaces (15 characters, the kernel's limit).
pub fn pod_veth_name(pod: &PodSpec) -> String {
    let digest = Sha256::digest(pod.key().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("cali{}", &hex[..11])
}

/// The servers of one pod listener: on `0.0.0.0:port` unless the lab is IPv6-only, and on
/// `[::]:port` in a dual-stack or IPv6-only lab.
fn pod_servers(ns: &str, pod: &str, port: u16, kind: ListenerKind, spec: &ClusterSpec) -> Result<Vec<Server>, Error> {
    let mut servers = Vec::new();
    if spec.has_ipv4() {
        servers.push(Server::start(
            ns,
            pod,
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port),
            Behavior::Pod(kind),
        )?);
    }
    if spec.has_ipv6() {
        servers.push(Server::start(
            ns,
            pod,
            SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port),
            Behavior::Pod(kind),
        )?);
    }
    Ok(servers)
}

/// A local pod's runtime state.
struct PodRuntime {
    ns: String,
    servers: Vec<Server>,
    drop_all: bool,
}

/// The simulated kube-proxy's threads.
struct KubeProxyRuntime {
    _servers: Vec<Server>,
}

/// A running lab node. Dropping it tears everything down.
pub struct Lab {
    prefix: String,
    mode: ProxyMode,
    spec: ClusterSpec,
    rules_spec: ClusterSpec,
    api_spec: ClusterSpec,
    node_ns: String,
    client_ns: String,
    ext_ns: String,
    /// Every namespace created, in creation order (teardown deletes in reverse).
    namespaces: Vec<String>,
    pods: BTreeMap<String, PodRuntime>,
    kube_proxy_state: Arc<KubeProxyState>,
    kube_proxy: Option<KubeProxyRuntime>,
    rules_text: String,
}

/// True for `a.b.c.d/len` with len <= 32.
fn is_ipv4_cidr(s: &str) -> bool {
    s.split_once('/')
        .is_some_and(|(ip, len)| ip.parse::<Ipv4Addr>().is_ok() && len.parse::<u8>().is_ok_and(|l| l <= 32))
}

fn validate(spec: &ClusterSpec, mode: ProxyMode) -> Result<(), Error> {
    // Checked here because `nft` and `iptables-restore` would try to resolve anything that is not
    // an address as a host name, i.e. send DNS queries.
    for (what, cidr) in [
        ("cluster_cidr", &spec.cluster_cidr),
        ("service_cidr", &spec.service_cidr),
    ] {
        if !is_ipv4_cidr(cidr) {
            return Err(Error::Spec(format!("{what} {cidr:?} is not an IPv4 CIDR")));
        }
    }
    if spec.dual_stack && spec.ipv6_only {
        return Err(Error::Spec("a lab is dual-stack or IPv6-only, not both".into()));
    }
    if spec.ipv6_only && mode == ProxyMode::Ipvs {
        return Err(Error::Spec(
            "an IPv6-only lab writes iptables or nftables rules; IPVS mode is IPv4 only here".into(),
        ));
    }
    if spec.has_ipv6() {
        // Every IPv4 CIDR needs an IPv6 twin (see `spec::ipv6_twin_cidr`).
        let ranges = spec.services.iter().flat_map(|s| s.source_ranges.iter());
        for cidr in [&spec.cluster_cidr, &spec.service_cidr].into_iter().chain(ranges) {
            if ipv6_twin_cidr(cidr).is_none() {
                return Err(Error::Spec(format!(
                    "{cidr:?} has no IPv6 twin: a dual-stack or IPv6-only lab needs octet-aligned IPv4 CIDRs (/8, /16, /24, /32)"
                )));
            }
        }
        if !spec.node_prefix_len.is_multiple_of(8) {
            return Err(Error::Spec(format!(
                "node_prefix_len {} has no IPv6 twin: a dual-stack or IPv6-only lab needs /8, /16 or /24",
                spec.node_prefix_len
            )));
        }
    }
    let mut ips = BTreeMap::new();
    ips.insert(spec.client_pod_ip, "client pod".to_string());
    for pod in &spec.pods {
        if let Some(other) = ips.insert(pod.ip, pod.key()) {
            return Err(Error::Spec(format!(
                "pod {} and {other} share IP {}",
                pod.key(),
                pod.ip
            )));
        }
        let mut ports = pod
            .listeners
            .iter()
            .map(|l| (l.port, l.kind.protocol()))
            .collect::<Vec<_>>();
        ports.sort();
        ports.dedup();
        if ports.len() != pod.listeners.len() {
            return Err(Error::Spec(format!("pod {} has two listeners on one port", pod.key())));
        }
    }
    let mut keys: Vec<String> = spec.pods.iter().map(PodSpec::key).collect();
    keys.sort();
    keys.dedup();
    if keys.len() != spec.pods.len() {
        return Err(Error::Spec("two pods share namespace/name".into()));
    }
    Ok(())
}

impl Lab {
    /// Builds the lab for `spec` with kube-proxy's rules in `mode` (`Iptables`, `Nftables`, or
    /// `Ipvs` where the kernel has the ip_vs module: see [`ipvs`]).
    /// Returns when every namespace, route, rule and server is in place. On error everything made
    /// so far is removed.
    pub fn up(spec: ClusterSpec, mode: ProxyMode) -> Result<Lab, Error> {
        if !matches!(mode, ProxyMode::Iptables | ProxyMode::Nftables | ProxyMode::Ipvs) {
            return Err(Error::Spec(format!(
                "proxy mode {mode:?} is not supported by the lab (iptables, nftables, ipvs)"
            )));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::NotRoot);
        }
        if mode == ProxyMode::Ipvs {
            ipvs::check_kernel()?;
        }
        validate(&spec, mode)?;
        let n = LAB_COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("d8lab-{}-{n}-", std::process::id());
        let mut lab = Lab {
            node_ns: format!("{prefix}node"),
            client_ns: format!("{prefix}client"),
            ext_ns: format!("{prefix}ext"),
            prefix,
            mode,
            rules_spec: spec.clone(),
            api_spec: spec.clone(),
            spec,
            namespaces: Vec::new(),
            pods: BTreeMap::new(),
            kube_proxy_state: Arc::new(KubeProxyState::default()),
            kube_proxy: None,
            rules_text: String::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    fn add_namespace(&mut self, name: &str) -> Result<(), Error> {
        netns::run("ip", &["netns", "add", name], None)?;
        self.namespaces.push(name.to_string());
        Ok(())
    }

    fn build(&mut self) -> Result<(), Error> {
        let node = self.node_ns.clone();
        let ext = self.ext_ns.clone();
        self.add_namespace(&node)?;
        self.add_namespace(&ext)?;
        // Sysctls of the node namespace only; `default` first so the veths made below inherit it.
        let mut node_sysctls = vec![
            "-q",
            "-w",
            "net.ipv4.ip_forward=1",
            "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0",
        ];
        node_sysctls.extend_from_slice(self.ipv6_sysctls());
        if self.spec.has_ipv6() {
            node_sysctls.push("net.ipv6.conf.all.forwarding=1");
        }
        netns::exec_in(&node, "sysctl", &node_sysctls, None)?;
        let mut ext_sysctls = vec!["-q", "-w"];
        ext_sysctls.extend_from_slice(self.ipv6_sysctls());
        netns::exec_in(&ext, "sysctl", &ext_sysctls, None)?;
        let s = &self.spec;
        let node_ip = s.node_ip;
        netns::ip_batch(
            &node,
            &[
                "link set lo up".into(),
                format!("link add ext0 type veth peer name eth0 netns {ext}"),
                "link set ext0 up".into(),
                // The kernel here has no dummy driver: a veth whose peer stays down discards
                // whatever is sent to it just the same (after the filter and nat hooks ran).
                "link add d8dummy0 type veth peer name d8dummy1".into(),
                "link set d8dummy0 arp off".into(),
                "link set d8dummy0 up".into(),
            ],
        )?;
        netns::ip_batch(&ext, &["link set lo up".into(), "link set eth0 up".into()])?;
        if s.has_ipv4() {
            netns::ip_batch(
                &node,
                &[
                    format!("addr add {node_ip}/{} dev ext0", s.node_prefix_len),
                    format!("route add default dev d8dummy0 src {node_ip}"),
                ],
            )?;
            netns::ip_batch(
                &ext,
                &[
                    format!("addr add {}/{} dev eth0", s.external_client_ip, s.node_prefix_len),
                    format!("route add default via {node_ip} dev eth0"),
                ],
            )?;
        }
        if s.has_ipv6() {
            let node_ip6 = ipv6_twin(node_ip);
            let len6 = 16 + 2 * u16::from(s.node_prefix_len);
            netns::ip_batch(
                &node,
                &[
                    format!("addr add {node_ip6}/{len6} dev ext0 nodad"),
                    format!("route add ::/0 dev d8dummy0 src {node_ip6}"),
                ],
            )?;
            netns::ip_batch(
                &ext,
                &[
                    format!("addr add {}/{len6} dev eth0 nodad", ipv6_twin(s.external_client_ip)),
                    format!("route add ::/0 via {node_ip6} dev eth0"),
                ],
            )?;
        }
        // The client pod: a pod namespace without servers.
        let client = PodSpec::new("default", "client", self.spec.client_pod_ip);
        let client_ns = self.client_ns.clone();
        self.create_pod_netns(&client, &client_ns)?;
        let local: Vec<PodSpec> = self
            .spec
            .pods
            .iter()
            .filter(|p| p.is_local(&self.spec))
            .cloned()
            .collect();
        for pod in &local {
            self.create_pod(pod)?;
        }
        if self.mode == ProxyMode::Ipvs {
            ipvs::setup(&node)?;
        }
        self.sync_rules()?;
        self.sync_kube_proxy()?;
        Ok(())
    }

    /// The IPv6 sysctls of every lab namespace: IPv6 off, or (dual-stack, IPv6-only) on without
    /// duplicate address detection, so an address is usable the moment it is added.
    fn ipv6_sysctls(&self) -> &'static [&'static str] {
        if self.spec.has_ipv6() {
            &[
                "net.ipv6.conf.all.disable_ipv6=0",
                "net.ipv6.conf.default.disable_ipv6=0",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ]
        } else {
            &[
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]
        }
    }

    /// Namespace, veth pair and routes for one pod.
    fn create_pod_netns(&mut self, pod: &PodSpec, ns: &str) -> Result<(), Error> {
        self.add_namespace(ns)?;
        let mut sysctls = vec!["-q", "-w"];
        sysctls.extend_from_slice(self.ipv6_sysctls());
        netns::exec_in(ns, "sysctl", &sysctls, None)?;
        let veth = pod_veth_name(pod);
        let node_ip = self.spec.node_ip;
        netns::ip_batch(
            &self.node_ns,
            &[
                format!("link add {veth} type veth peer name eth0 netns {ns}"),
                format!("link set {veth} up"),
            ],
        )?;
        netns::ip_batch(ns, &["link set lo up".into(), "link set eth0 up".into()])?;
        if self.spec.has_ipv4() {
            netns::ip_batch(&self.node_ns, &[format!("addr add 169.254.1.1/32 dev {veth}")])?;
            netns::ip_batch(
                ns,
                &[
                    format!("addr add {}/32 dev eth0", pod.ip),
                    "route add default via 169.254.1.1 dev eth0 onlink".into(),
                ],
            )?;
            netns::ip_batch(
                &self.node_ns,
                &[format!("route add {}/32 dev {veth} src {node_ip}", pod.ip)],
            )?;
        }
        if self.spec.has_ipv6() {
            // Calico's IPv6 gateway is a link-local address on the node side of every veth.
            netns::ip_batch(
                &self.node_ns,
                &[
                    format!("addr add fe80::1/64 dev {veth} nodad"),
                    format!(
                        "route add {}/128 dev {veth} src {}",
                        ipv6_twin(pod.ip),
                        ipv6_twin(node_ip)
                    ),
                ],
            )?;
            netns::ip_batch(
                ns,
                &[
                    format!("addr add {}/128 dev eth0 nodad", ipv6_twin(pod.ip)),
                    "route add ::/0 via fe80::1 dev eth0".into(),
                ],
            )?;
        }
        Ok(())
    }

    fn pod_ns_name(&self, pod: &PodSpec) -> String {
        format!("{}pod-{}.{}", self.prefix, pod.namespace, pod.name)
    }

    fn create_pod(&mut self, pod: &PodSpec) -> Result<(), Error> {
        let ns = self.pod_ns_name(pod);
        self.create_pod_netns(pod, &ns)?;
        let mut rt = PodRuntime {
            ns: ns.clone(),
            servers: Vec::new(),
            drop_all: false,
        };
        for l in &pod.listeners {
            rt.servers
                .extend(pod_servers(&ns, &pod.name, l.port, l.kind, &self.spec)?);
        }
        self.pods.insert(pod.key(), rt);
        if pod.drop_all {
            self.set_drop_all(&pod.key(), true)?;
        }
        Ok(())
    }

    fn remove_pod_runtime(&mut self, key: &str) -> Result<(), Error> {
        if let Some(mut rt) = self.pods.remove(key) {
            for s in &mut rt.servers {
                s.stop();
            }
            // Delete the veth first: that is synchronous, whereas the namespace itself lives on
            // until its last socket (an orphaned connection finishing its FIN exchange) is freed,
            // and until then its veth and the node's route to the pod would keep answering.
            if let Some(pod) = self.spec.find_pod(key) {
                let veth = pod_veth_name(pod);
                netns::ip_batch(&self.node_ns, &[format!("link del {veth}")])?;
            }
            netns::delete(&rt.ns)?;
            self.namespaces.retain(|n| n != &rt.ns);
        }
        Ok(())
    }

    /// Writes kube-proxy's rules for the rules view into the node namespace: the IPv4 proxier's
    /// (unless IPv6-only), then the IPv6 proxier's (dual-stack, IPv6-only).
    fn sync_rules(&mut self) -> Result<(), Error> {
        let now = servers::unix_now();
        self.kube_proxy_state.last_queued.store(now, Ordering::Relaxed);
        let text = if !self.spec.has_ipv4() {
            String::new()
        } else {
            match self.mode {
                ProxyMode::Nftables => {
                    let text = nftables::lab_transaction(&self.rules_spec);
                    netns::exec_in(&self.node_ns, "nft", &["-f", "-"], Some(&text))?;
                    text
                }
                ProxyMode::Ipvs => ipvs::sync(&self.node_ns, &self.rules_spec)?,
                _ => {
                    let text = iptables::lab_restore(&self.rules_spec);
                    netns::exec_in(&self.node_ns, "iptables-restore", &["-w", "5"], Some(&text))?;
                    text
                }
            }
        };
        // A dual-stack or IPv6-only node: kube-proxy's IPv6 proxier writes the same for IPv6.
        // `rules_text` keeps the IPv4 text first, then the IPv6 one.
        let text = if self.spec.has_ipv6() {
            let v6 = match self.mode {
                ProxyMode::Nftables => {
                    let v6 = nftables::lab_transaction_in(&self.rules_spec, IpFamily::V6);
                    netns::exec_in(&self.node_ns, "nft", &["-f", "-"], Some(&v6))?;
                    v6
                }
                // `ipvs::sync` wrote both families' virtual servers (one `ipvsadm -R`), ipsets
                // and (ip6)tables rules.
                ProxyMode::Ipvs => String::new(),
                _ => {
                    let v6 = iptables::lab_restore_in(&self.rules_spec, IpFamily::V6);
                    netns::exec_in(&self.node_ns, "ip6tables-restore", &["-w", "5"], Some(&v6))?;
                    v6
                }
            };
            format!("{text}{v6}")
        } else {
            text
        };
        self.rules_text = text;
        self.kube_proxy_state.last_sync.store(now, Ordering::Relaxed);
        Ok(())
    }

    /// Starts or stops the simulated kube-proxy to match the world spec.
    fn sync_kube_proxy(&mut self) -> Result<(), Error> {
        match (&self.spec.kube_proxy, self.kube_proxy.is_some()) {
            (Some(kp), false) => {
                self.kube_proxy_state.healthy.store(true, Ordering::Relaxed);
                let mode = match self.mode {
                    ProxyMode::Nftables => "nftables",
                    ProxyMode::Ipvs => "ipvs",
                    _ => "iptables",
                };
                let healthz = Server::start(
                    &self.node_ns,
                    "kube-proxy",
                    SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 10256),
                    Behavior::KubeProxyHealthz(self.kube_proxy_state.clone()),
                )?;
                let metrics = Server::start(
                    &self.node_ns,
                    "kube-proxy",
                    SocketAddrV4::new(Ipv4Addr::LOCALHOST, 10249),
                    Behavior::KubeProxyMetrics {
                        state: self.kube_proxy_state.clone(),
                        mode,
                        version: kp.version.clone(),
                    },
                )?;
                self.kube_proxy = Some(KubeProxyRuntime {
                    _servers: vec![healthz, metrics],
                });
            }
            (None, true) => self.kube_proxy = None,
            _ => {}
        }
        Ok(())
    }

    fn local_pod(&self, pod: &str) -> Result<PodSpec, Error> {
        self.spec
            .find_pod(pod)
            .filter(|p| p.is_local(&self.spec))
            .cloned()
            .ok_or_else(|| Error::NoSuchPod(pod.to_string()))
    }

    // ---- accessors -------------------------------------------------------------------------

    /// The node namespace (pass it to `d8-trace --netns`).
    pub fn node_ns(&self) -> &str {
        &self.node_ns
    }

    /// The client pod's namespace.
    pub fn client_ns(&self) -> &str {
        &self.client_ns
    }

    /// The external client's namespace (for NodePorts and external/LB IPs).
    pub fn external_ns(&self) -> &str {
        &self.ext_ns
    }

    /// The namespace of a local pod (`name` or `namespace/name`), if it currently exists.
    pub fn pod_ns(&self, pod: &str) -> Option<&str> {
        let key = self.spec.find_pod(pod)?.key();
        self.pods.get(&key).map(|rt| rt.ns.as_str())
    }

    /// `d8lab-<pid>-<counter>-`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The proxy mode the rules were written in.
    pub fn mode(&self) -> ProxyMode {
        self.mode
    }

    /// The world: pods and servers as they exist.
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// What kube-proxy's rules were generated from.
    pub fn rules_spec(&self) -> &ClusterSpec {
        &self.rules_spec
    }

    /// What the API snapshot shows.
    pub fn api_spec(&self) -> &ClusterSpec {
        &self.api_spec
    }

    /// The node IP.
    pub fn node_ip(&self) -> Ipv4Addr {
        self.spec.node_ip
    }

    /// The families the lab programs (IPv4, IPv6 too when dual-stack, IPv6 alone when IPv6-only).
    pub fn families(&self) -> Vec<IpFamily> {
        self.spec.families()
    }

    /// An address of the spec (node, pod, ClusterIP, ...) in `family`: itself, or its IPv6 twin.
    pub fn addr_in(&self, v4: Ipv4Addr, family: IpFamily) -> std::net::IpAddr {
        in_family(v4, family)
    }

    /// The rule text last written (`iptables-restore` input or `nft -f` transaction).
    pub fn rules_text(&self) -> &str {
        &self.rules_text
    }

    /// Every namespace the lab currently owns.
    pub fn namespaces(&self) -> &[String] {
        &self.namespaces
    }

    /// The JSON List `kubectl get services,endpointslices,pods,nodes -A -o json` would print for
    /// the API view.
    pub fn snapshot_json(&self) -> serde_json::Value {
        snapshot::snapshot(&self.api_spec)
    }

    /// Writes [`Self::snapshot_json`] to `path` (for `d8-trace --k8s-snapshot`).
    pub fn write_snapshot(&self, path: &std::path::Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(&self.snapshot_json()).map_err(|e| Error::Io(e.to_string()))?;
        std::fs::write(path, text).map_err(|e| Error::Io(format!("write {}: {e}", path.display())))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.kube_proxy = None;
        for rt in self.pods.values_mut() {
            for s in &mut rt.servers {
                s.stop();
            }
        }
        self.pods.clear();
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = netns::delete(ns) {
                eprintln!("d8lab: teardown: {e}");
            }
        }
        self.namespaces.clear();
    }
}

#[cfg(test)]
mod root_tests;

#[cfg(test)]
mod lab_tests;
