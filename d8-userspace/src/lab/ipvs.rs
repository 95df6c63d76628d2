//! kube-proxy's IPVS mode for a [`ClusterSpec`], programmed the way kube-proxy's IPVS proxier does
//! it in the node namespace (reference: kube-proxy-rules.md §2):
//!
//! - a dummy device `kube-ipvs0` (left down, as kube-proxy leaves it) holding every ClusterIP,
//!   external IP and load-balancer IP as a /32, so the node accepts packets for them;
//! - one IPVS virtual server per (address, protocol, port): ClusterIP:port, each external and LB
//!   IP:port, and node IP:nodePort (the lab's `--nodeport-addresses` is the node IP alone), scheduler
//!   `rr`, `-p <timeout>` for ClientIP affinity ([`ipvsadm_restore`], fed to `ipvsadm -R` after
//!   `ipvsadm -C`);
//! - real servers = ready endpoints, masquerading (`-m`), weight 1; ClusterIP servers honour
//!   internalTrafficPolicy=Local (local endpoints only), external ones externalTrafficPolicy=Local
//!   (local endpoints if any exist, else all of them: PR #97081). A Service without endpoints keeps
//!   its virtual servers with no real server, so IPVS answers ICMP port unreachable itself;
//! - the ipsets kube-proxy fills ([`ipset_restore`]: KUBE-CLUSTER-IP, KUBE-LOOP-BACK,
//!   KUBE-IPVS-IPS, KUBE-EXTERNAL-IP, KUBE-LOAD-BALANCER, KUBE-NODE-PORT-TCP/-UDP) and the iptables
//!   rules that use them ([`iptables_restore`]: masquerade marking, hairpin masquerade,
//!   KUBE-IPVS-FILTER's REJECT for ports a ClusterIP does not serve, KUBE-FORWARD), with the jumps
//!   from the built-in chains;
//! - the sysctls kube-proxy sets in IPVS mode, in the node namespace only ([`SYSCTLS`]);
//!   `net.ipv4.vs.conntrack=1` makes IPVS keep conntrack entries, so conntrack's REPLY tuple names
//!   the real server (what the tracer's TC hook set joins on).
//!
//! A dual-stack lab gets the IPv6 proxier's part too: kube-ipvs0 holds every IPv6 twin (`/128`,
//! `nodad`, as kube-proxy binds them), and each Service of both families has IPv6 virtual servers
//! (`[fd00:10:96::10]:80`) over its IPv6 endpoints. The IPv6 proxier's ip6tables rules and `inet6`
//! ipsets (masquerade marking, hairpin, KUBE-IPVS-FILTER) are not written: a client pod reaching an
//! IPv6 ClusterIP needs none of them, and the NodePort and hairpin paths are tested over IPv4.
//!
//! Without the `ipset` tool the sets cannot be made: the iptables text then holds kube-proxy's
//! static chains only (no rule refers to a set), and [`sync`] says so in the text it returns.
//!
//! IPVS needs the `ip_vs` kernel module (and `dummy` for kube-ipvs0): [`check_kernel`] tells a kernel
//! without them (the development machines' 6.18) before anything is built.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use super::spec::{ClusterSpec, EndpointInfo, ServicePortSpec, ServiceSpec, SessionAffinity, in_family};
use super::{Error, netns};
use crate::model::{IpFamily, Protocol};

/// kube-proxy's dummy device.
pub const DUMMY_DEVICE: &str = "kube-ipvs0";

/// Masquerade mark (`--iptables-masquerade-bit=14`).
const MASQ_MARK: &str = "0x4000";

/// The sysctls kube-proxy's IPVS proxier sets (§2.1), written in the node namespace only.
pub const SYSCTLS: &[&str] = &[
    "net.ipv4.vs.conntrack=1",
    "net.ipv4.vs.expire_nodest_conn=1",
    "net.ipv4.vs.expire_quiescent_template=1",
];

/// Fails with a clear error when this kernel cannot run IPVS mode: no `ip_vs` module loaded (IPVS
/// virtual servers) or no `dummy` driver (kube-ipvs0).
pub fn check_kernel() -> Result<(), Error> {
    if !Path::new("/proc/net/ip_vs").exists() && !Path::new("/sys/module/ip_vs").exists() {
        return Err(Error::Spec(
            "proxy mode Ipvs needs the ip_vs kernel module, which is not loaded \
             (/sys/module/ip_vs and /proc/net/ip_vs are missing; `modprobe ip_vs`, or use a kernel \
             with IPVS such as the VM suite's Debian 6.1: the development host's kernel has none)"
                .into(),
        ));
    }
    if !Path::new("/sys/module/dummy").exists() {
        return Err(Error::Spec(
            "proxy mode Ipvs needs the dummy network driver for kube-ipvs0, which is not loaded \
             (/sys/module/dummy is missing; `modprobe dummy numdummies=0`)"
                .into(),
        ));
    }
    Ok(())
}

/// `-t` / `-u` / `--sctp-service` of ipvsadm.
fn ipvsadm_proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "-t",
        Protocol::Udp => "-u",
        Protocol::Sctp => "--sctp-service",
    }
}

/// The real servers of a ClusterIP virtual server and of an external one (NodePort, external IP,
/// LB IP), as kube-proxy's IPVS proxier of `family` picks them.
fn real_servers(
    spec: &ClusterSpec,
    svc: &ServiceSpec,
    port: &ServicePortSpec,
    family: IpFamily,
) -> (Vec<EndpointInfo>, Vec<EndpointInfo>) {
    let ready: Vec<EndpointInfo> = spec
        .endpoints_in(svc, port, family)
        .into_iter()
        .filter(|e| e.ready)
        .collect();
    let local: Vec<EndpointInfo> = ready.iter().filter(|e| e.local).cloned().collect();
    let internal = if svc.internal_policy_local() {
        local.clone()
    } else {
        ready.clone()
    };
    let external = if svc.external_policy_local() && !local.is_empty() {
        local
    } else {
        ready
    };
    (internal, external)
}

/// One virtual server: address, port, protocol, real servers.
struct VirtualServer {
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    real_servers: Vec<EndpointInfo>,
    persistent: Option<u32>,
}

/// Every family's virtual servers: IPv4's, then (dual-stack) IPv6's.
fn virtual_servers(spec: &ClusterSpec) -> Vec<VirtualServer> {
    let mut out = Vec::new();
    for family in spec.families() {
        out.extend(virtual_servers_in(spec, family));
    }
    out
}

/// The virtual servers kube-proxy's IPVS proxier of `family` writes.
fn virtual_servers_in(spec: &ClusterSpec, family: IpFamily) -> Vec<VirtualServer> {
    let mut out = Vec::new();
    for svc in spec.services_in(family) {
        let persistent = match svc.session_affinity {
            SessionAffinity::ClientIP { timeout_seconds } => Some(timeout_seconds),
            SessionAffinity::None => None,
        };
        for port in &svc.ports {
            let (internal, external) = real_servers(spec, svc, port, family);
            let vs = |ip, port_no, rs: &Vec<EndpointInfo>| VirtualServer {
                ip: in_family(ip, family),
                port: port_no,
                protocol: port.protocol,
                real_servers: rs.clone(),
                persistent,
            };
            out.push(vs(svc.cluster_ip, port.port, &internal));
            for ip in svc.external_ips.iter().chain(&svc.load_balancer_ips) {
                out.push(vs(*ip, port.port, &external));
            }
            if let Some(np) = port.node_port {
                out.push(vs(spec.node_ip, np, &external));
            }
        }
    }
    out
}

/// Addresses kube-proxy binds to kube-ipvs0: ClusterIPs, external IPs and LB IPs (those that are
/// not the node's own address), of every family (IPv4's first).
pub fn bound_addresses(spec: &ClusterSpec) -> Vec<IpAddr> {
    spec.families()
        .into_iter()
        .flat_map(|family| {
            bound_addresses_in(spec, family)
                .into_iter()
                .map(move |ip| in_family(ip, family))
        })
        .collect()
}

/// [`bound_addresses`] of one family, written as their IPv4 form (the spec's).
fn bound_addresses_in(spec: &ClusterSpec, family: IpFamily) -> Vec<Ipv4Addr> {
    let set: BTreeSet<Ipv4Addr> = spec
        .services_in(family)
        .flat_map(|s| {
            std::iter::once(s.cluster_ip)
                .chain(s.external_ips.iter().copied())
                .chain(s.load_balancer_ips.iter().copied())
        })
        .filter(|ip| *ip != spec.node_ip)
        .collect();
    set.into_iter().collect()
}

/// `ipvsadm -R` input: every virtual server with its real servers.
pub fn ipvsadm_restore(spec: &ClusterSpec) -> String {
    let mut out = String::new();
    for vs in virtual_servers(spec) {
        let p = ipvsadm_proto(vs.protocol);
        let target = SocketAddr::new(vs.ip, vs.port);
        let _ = write!(out, "-A {p} {target} -s rr");
        if let Some(t) = vs.persistent {
            let _ = write!(out, " -p {t}");
        }
        out.push('\n');
        for rs in &vs.real_servers {
            let _ = writeln!(out, "-a {p} {target} -r {} -m -w 1", rs.addr());
        }
    }
    out
}

/// The ipsets' contents.
#[derive(Default)]
struct Sets {
    cluster_ip: BTreeSet<String>,
    loop_back: BTreeSet<String>,
    ipvs_ips: BTreeSet<String>,
    external_ip: BTreeSet<String>,
    load_balancer: BTreeSet<String>,
    node_port_tcp: BTreeSet<String>,
    node_port_udp: BTreeSet<String>,
}

/// (name, type, comment) of every set kube-proxy creates that the lab fills.
const SET_DEFS: &[(&str, &str, &str)] = &[
    (
        "KUBE-CLUSTER-IP",
        "hash:ip,port",
        "Kubernetes service cluster ip + port for masquerade purpose",
    ),
    (
        "KUBE-LOOP-BACK",
        "hash:ip,port,ip",
        "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose",
    ),
    ("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface"),
    (
        "KUBE-EXTERNAL-IP",
        "hash:ip,port",
        "Kubernetes service external ip + port for masquerade and filter purpose",
    ),
    ("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal"),
    (
        "KUBE-NODE-PORT-TCP",
        "bitmap:port",
        "Kubernetes nodeport TCP port for masquerade purpose",
    ),
    (
        "KUBE-NODE-PORT-UDP",
        "bitmap:port",
        "Kubernetes nodeport UDP port for masquerade purpose",
    ),
];

fn comment_of(set: &str) -> &'static str {
    SET_DEFS
        .iter()
        .find(|(n, _, _)| *n == set)
        .map(|(_, _, c)| *c)
        .unwrap_or("")
}

fn sets(spec: &ClusterSpec) -> Sets {
    let mut s = Sets::default();
    // IPv4's sets (`family inet`); the IPv6 proxier's `inet6` sets are not written (module doc).
    for ip in bound_addresses_in(spec, IpFamily::V4) {
        s.ipvs_ips.insert(ip.to_string());
    }
    for svc in &spec.services {
        for port in &svc.ports {
            let proto = port.protocol.as_str();
            s.cluster_ip.insert(format!("{},{proto}:{}", svc.cluster_ip, port.port));
            for ip in &svc.external_ips {
                s.external_ip.insert(format!("{ip},{proto}:{}", port.port));
            }
            for ip in &svc.load_balancer_ips {
                s.load_balancer.insert(format!("{ip},{proto}:{}", port.port));
            }
            if let Some(np) = port.node_port {
                match port.protocol {
                    Protocol::Tcp => s.node_port_tcp.insert(np.to_string()),
                    Protocol::Udp => s.node_port_udp.insert(np.to_string()),
                    Protocol::Sctp => false,
                };
            }
            let (internal, external) = real_servers(spec, svc, port, IpFamily::V4);
            for ep in internal.iter().chain(&external).filter(|e| e.local) {
                s.loop_back.insert(format!("{},{proto}:{},{}", ep.ip, ep.port, ep.ip));
            }
        }
    }
    s
}

/// `ipset restore` input: every set created (kept if it exists), flushed and filled.
pub fn ipset_restore(spec: &ClusterSpec) -> String {
    let s = sets(spec);
    let contents: [(&str, &BTreeSet<String>); 7] = [
        ("KUBE-CLUSTER-IP", &s.cluster_ip),
        ("KUBE-LOOP-BACK", &s.loop_back),
        ("KUBE-IPVS-IPS", &s.ipvs_ips),
        ("KUBE-EXTERNAL-IP", &s.external_ip),
        ("KUBE-LOAD-BALANCER", &s.load_balancer),
        ("KUBE-NODE-PORT-TCP", &s.node_port_tcp),
        ("KUBE-NODE-PORT-UDP", &s.node_port_udp),
    ];
    let mut out = String::new();
    for (name, members) in contents {
        let (_, kind, _) = SET_DEFS.iter().find(|(n, _, _)| *n == name).unwrap();
        if *kind == "bitmap:port" {
            let _ = writeln!(out, "create {name} {kind} range 0-65535 -exist");
        } else {
            let _ = writeln!(
                out,
                "create {name} {kind} family inet hashsize 1024 maxelem 65536 -exist"
            );
        }
        let _ = writeln!(out, "flush {name}");
        for m in members {
            let _ = writeln!(out, "add {name} {m}");
        }
    }
    out
}

/// What the lab feeds to `iptables-restore` (without `--noflush`) in IPVS mode: the built-in chains
/// with kube-proxy's jump rules, kube-proxy's IPVS-mode chains and their rules (§2.3). With
/// `with_sets` false (no `ipset` tool) no rule refers to a set.
pub fn iptables_restore(spec: &ClusterSpec, with_sets: bool) -> String {
    let s = if with_sets { sets(spec) } else { Sets::default() };
    let c = |set: &str| format!("-m comment --comment \"{}\"", comment_of(set));
    let mut nat = String::new();
    let n = &mut nat;
    if !s.cluster_ip.is_empty() || !s.external_ip.is_empty() || !s.load_balancer.is_empty() {
        let _ = writeln!(n, "-A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN");
    }
    if !s.loop_back.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-POSTROUTING {} -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE",
            c("KUBE-LOOP-BACK")
        );
    }
    if !s.load_balancer.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {} -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER",
            c("KUBE-LOAD-BALANCER")
        );
    }
    for (set, proto) in [("KUBE-NODE-PORT-TCP", "tcp"), ("KUBE-NODE-PORT-UDP", "udp")] {
        let members = if proto == "tcp" {
            &s.node_port_tcp
        } else {
            &s.node_port_udp
        };
        if !members.is_empty() {
            let _ = writeln!(
                n,
                "-A KUBE-NODE-PORT -p {proto} {} -m set --match-set {set} dst -j KUBE-MARK-MASQ",
                c(set)
            );
        }
    }
    if !s.cluster_ip.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {} -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s {} -j KUBE-MARK-MASQ",
            c("KUBE-CLUSTER-IP"),
            spec.cluster_cidr
        );
    }
    if !s.external_ip.is_empty() {
        let ext = c("KUBE-EXTERNAL-IP");
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {ext} -m set --match-set KUBE-EXTERNAL-IP dst,dst -j KUBE-MARK-MASQ"
        );
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {ext} -m set --match-set KUBE-EXTERNAL-IP dst,dst -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        );
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {ext} -m set --match-set KUBE-EXTERNAL-IP dst,dst -m addrtype --dst-type LOCAL -j ACCEPT"
        );
    }
    if !s.node_port_tcp.is_empty() || !s.node_port_udp.is_empty() {
        let _ = writeln!(n, "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT");
    }
    if !s.load_balancer.is_empty() {
        let _ = writeln!(n, "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ");
    }
    if !s.cluster_ip.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT"
        );
    }
    if !s.load_balancer.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT"
        );
    }
    super::iptables::masquerade_rules(n);

    let mut filter = String::new();
    let f = &mut filter;
    let _ = writeln!(
        f,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    let _ = writeln!(
        f,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    if !s.ipvs_ips.is_empty() {
        for (set, members) in [
            ("KUBE-LOAD-BALANCER", &s.load_balancer),
            ("KUBE-CLUSTER-IP", &s.cluster_ip),
            ("KUBE-EXTERNAL-IP", &s.external_ip),
        ] {
            if !members.is_empty() {
                let _ = writeln!(f, "-A KUBE-IPVS-FILTER -m set --match-set {set} dst,dst -j RETURN");
            }
        }
        let _ = writeln!(
            f,
            "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT"
        );
    }

    let mut out = String::from("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for chain in [
        "KUBE-FORWARD",
        "KUBE-NODE-PORT",
        "KUBE-PROXY-FIREWALL",
        "KUBE-SOURCE-RANGES-FIREWALL",
        "KUBE-IPVS-FILTER",
        "KUBE-IPVS-OUT-FILTER",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(
        "-A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER\n\
         -A INPUT -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL\n\
         -A INPUT -m comment --comment \"kubernetes health check rules\" -j KUBE-NODE-PORT\n\
         -A FORWARD -m comment --comment \"kube-proxy firewall rules\" -j KUBE-PROXY-FIREWALL\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A OUTPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-OUT-FILTER\n",
    );
    out.push_str(&filter);
    out.push_str("COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n");
    for chain in [
        "KUBE-SERVICES",
        "KUBE-POSTROUTING",
        "KUBE-NODE-PORT",
        "KUBE-LOAD-BALANCER",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(out, ":{chain} - [0:0]");
    }
    out.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
    );
    out.push_str(&nat);
    out.push_str("COMMIT\n");
    out
}

/// Whether the `ipset` tool is installed.
pub fn have_ipset() -> bool {
    ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"]
        .iter()
        .any(|d| Path::new(d).join("ipset").is_file())
}

/// Creates kube-ipvs0 and sets kube-proxy's IPVS sysctls in the node namespace (once, at build).
pub fn setup(node_ns: &str) -> Result<(), Error> {
    let mut args = vec!["-q", "-w"];
    args.extend_from_slice(SYSCTLS);
    netns::exec_in(node_ns, "sysctl", &args, None)?;
    netns::ip_batch(node_ns, &[format!("link add {DUMMY_DEVICE} type dummy")])
}

/// Programs `spec` into the node namespace: kube-ipvs0's addresses, the virtual and real servers,
/// the ipsets and the iptables rules. Returns the text written (ipvsadm, ipset, iptables input).
pub fn sync(node_ns: &str, spec: &ClusterSpec) -> Result<String, Error> {
    let mut addr = vec![format!("addr flush dev {DUMMY_DEVICE}")];
    addr.extend(bound_addresses(spec).iter().map(|ip| match ip {
        IpAddr::V4(ip) => format!("addr add {ip}/32 dev {DUMMY_DEVICE}"),
        // No duplicate address detection: kube-proxy binds IPv6 Service addresses with
        // IFA_F_NODAD, so they are usable on the down kube-ipvs0 at once.
        IpAddr::V6(ip) => format!("addr add {ip}/128 dev {DUMMY_DEVICE} nodad"),
    }));
    netns::ip_batch(node_ns, &addr)?;
    let ipvs = ipvsadm_restore(spec);
    netns::exec_in(node_ns, "ipvsadm", &["-C"], None)?;
    netns::exec_in(node_ns, "ipvsadm", &["-R"], Some(&ipvs))?;
    let with_sets = have_ipset();
    let mut text = format!("# ipvsadm -R\n{ipvs}");
    let iptables = iptables_restore(spec, with_sets);
    if with_sets {
        let sets = ipset_restore(spec);
        netns::exec_in(node_ns, "ipset", &["restore"], Some(&sets))?;
        let _ = write!(text, "# ipset restore\n{sets}");
    } else {
        text.push_str("# no ipset tool: kube-proxy's ipsets and the rules using them are left out\n");
    }
    netns::exec_in(node_ns, "iptables-restore", &["-w", "5"], Some(&iptables))?;
    let _ = write!(text, "# iptables-restore\n{iptables}");
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::spec::{ListenerKind, PodSpec, TrafficPolicy};

    fn spec() -> ClusterSpec {
        ClusterSpec::new()
            .service(
                ServiceSpec::new("default", "web", Ipv4Addr::new(10, 96, 0, 10))
                    .node_port("http", 80, 8080, Protocol::Tcp, 30080)
                    .selector("app", "web"),
            )
            .service(
                ServiceSpec::new("default", "dns", Ipv4Addr::new(10, 96, 0, 53))
                    .port("dns", 53, 5353, Protocol::Udp)
                    .selector("app", "dns")
                    .client_ip_affinity(10800),
            )
            .service(
                ServiceSpec::new("default", "empty", Ipv4Addr::new(10, 96, 0, 20))
                    .port("", 80, 8080, Protocol::Tcp)
                    .selector("app", "nobody"),
            )
            .pod(
                PodSpec::new("default", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                    .label("app", "web")
                    .listen(8080, ListenerKind::Http),
            )
            .pod(
                PodSpec::new("default", "web-2", Ipv4Addr::new(10, 244, 2, 12))
                    .label("app", "web")
                    .on_node("node-b")
                    .listen(8080, ListenerKind::Http),
            )
            .pod(
                PodSpec::new("default", "web-3", Ipv4Addr::new(10, 244, 1, 13))
                    .label("app", "web")
                    .ready(false)
                    .listen(8080, ListenerKind::Http),
            )
            .pod(
                PodSpec::new("default", "dns-1", Ipv4Addr::new(10, 244, 1, 21))
                    .label("app", "dns")
                    .listen(5353, ListenerKind::UdpEcho),
            )
    }

    #[test]
    fn virtual_and_real_servers_as_kube_proxy_makes_them() {
        let text = ipvsadm_restore(&spec());
        assert_eq!(
            text,
            "-A -t 10.96.0.10:80 -s rr\n\
             -a -t 10.96.0.10:80 -r 10.244.1.11:8080 -m -w 1\n\
             -a -t 10.96.0.10:80 -r 10.244.2.12:8080 -m -w 1\n\
             -A -t 172.31.0.2:30080 -s rr\n\
             -a -t 172.31.0.2:30080 -r 10.244.1.11:8080 -m -w 1\n\
             -a -t 172.31.0.2:30080 -r 10.244.2.12:8080 -m -w 1\n\
             -A -u 10.96.0.53:53 -s rr -p 10800\n\
             -a -u 10.96.0.53:53 -r 10.244.1.21:5353 -m -w 1\n\
             -A -t 10.96.0.20:80 -s rr\n"
        );
        assert_eq!(
            bound_addresses(&spec()),
            [
                Ipv4Addr::new(10, 96, 0, 10),
                Ipv4Addr::new(10, 96, 0, 20),
                Ipv4Addr::new(10, 96, 0, 53)
            ]
            .map(IpAddr::V4)
        );
    }

    /// A dual-stack lab: the IPv6 proxier's virtual servers follow IPv4's, over the IPv6
    /// endpoints, in the bracketed form `ipvsadm -Ln` prints back; kube-ipvs0 gets both families.
    #[test]
    fn dual_stack_adds_ipv6_virtual_servers() {
        let spec = spec().dual_stack();
        let text = ipvsadm_restore(&spec);
        assert!(text.starts_with(&ipvsadm_restore(&super::tests::spec())), "{text}");
        for line in [
            "-A -t [fd00:10:96::10]:80 -s rr\n",
            "-a -t [fd00:10:96::10]:80 -r [fd00:10:244:1::11]:8080 -m -w 1\n",
            "-a -t [fd00:172:31::2]:30080 -r [fd00:10:244:2::12]:8080 -m -w 1\n",
            "-A -u [fd00:10:96::53]:53 -s rr -p 10800\n",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        let bound = bound_addresses(&spec);
        assert_eq!(bound.len(), 6, "{bound:?}");
        assert!(bound.contains(&"fd00:10:96::53".parse().unwrap()), "{bound:?}");
        // The ipsets stay IPv4's.
        assert!(!ipset_restore(&spec).contains("fd00"));
    }

    #[test]
    fn traffic_policies_pick_real_servers() {
        let mut s = spec();
        s.services[0].external_traffic_policy = TrafficPolicy::Local;
        s.services[0].internal_traffic_policy = TrafficPolicy::Local;
        let text = ipvsadm_restore(&s);
        assert!(!text.contains("-a -t 10.96.0.10:80 -r 10.244.2.12"), "{text}");
        assert!(!text.contains("-a -t 172.31.0.2:30080 -r 10.244.2.12"), "{text}");
        // ETP=Local without local endpoints: all endpoints (PR #97081).
        s.pods.retain(|p| p.name != "web-1");
        let text = ipvsadm_restore(&s);
        assert!(text.contains("-a -t 172.31.0.2:30080 -r 10.244.2.12:8080"), "{text}");
        assert!(!text.contains("-a -t 10.96.0.10:80 -r"), "{text}");
    }

    #[test]
    fn ipsets_and_rules() {
        let sets = ipset_restore(&spec());
        for line in [
            "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
            "add KUBE-CLUSTER-IP 10.96.0.20,tcp:80",
            "add KUBE-CLUSTER-IP 10.96.0.53,udp:53",
            "add KUBE-LOOP-BACK 10.244.1.11,tcp:8080,10.244.1.11",
            "add KUBE-IPVS-IPS 10.96.0.53",
            "add KUBE-NODE-PORT-TCP 30080",
            "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist",
        ] {
            assert!(sets.lines().any(|l| l == line), "{line} missing:\n{sets}");
        }
        assert!(!sets.contains("10.244.2.12,"), "remote endpoints need no hairpin entry");
        let rules = iptables_restore(&spec(), true);
        for line in [
            "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
            "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
            "-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
            "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
            "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
            "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
        ] {
            assert!(rules.lines().any(|l| l == line), "{line} missing:\n{rules}");
        }
        // Every jump target is declared before use.
        let declared: Vec<&str> = rules
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        for l in rules.lines().filter(|l| l.starts_with("-A ")) {
            let target = l.rsplit_once("-j ").unwrap().1.split(' ').next().unwrap();
            if target.starts_with("KUBE-") {
                assert!(declared.contains(&target), "{target} undeclared");
            }
        }
        let plain = iptables_restore(&spec(), false);
        assert!(!plain.contains("--match-set"), "{plain}");
        assert!(plain.contains("-A KUBE-MARK-MASQ"));
    }
}
