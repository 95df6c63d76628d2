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
//! `nodad`, as kube-proxy binds them), each Service of both families has IPv6 virtual servers
//! (`[fd00:10:96::10]:80`) over its IPv6 endpoints, and the IPv6 proxier's `inet6` ipsets (named
//! `KUBE-6-...`, §2.2) and ip6tables rules are written as IPv4's are. The ip6tables rules matter
//! beyond masquerading: IPVS keeps conntrack entries for a family only where something registered
//! conntrack's hooks for it in the namespace (IPVS itself does so for FTP services alone), and
//! kube-proxy's `ip6 nat` chains are what does it on a real dual-stack node. Without them no IPv6
//! IPVS connection has a conntrack entry, so none has the REPLY tuple the TC set's join reads.
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

use super::spec::{
    ClusterSpec, EndpointInfo, ServicePortSpec, ServiceSpec, SessionAffinity, cidr_in_family, in_family,
};
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

/// The name the proxier of `family` gives kube-proxy's set `name` (§2.2): the IPv6 proxier's sets
/// live beside IPv4's in the same namespace, so `KUBE-` becomes `KUBE-6-` (ipset names stop at 31
/// characters).
fn set_name(name: &str, family: IpFamily) -> String {
    match family {
        IpFamily::V4 => name.to_string(),
        IpFamily::V6 => name.replacen("KUBE-", "KUBE-6-", 1).chars().take(31).collect(),
    }
}

/// The sets of the proxier of `family`, members in that family.
fn sets_in(spec: &ClusterSpec, family: IpFamily) -> Sets {
    let mut s = Sets::default();
    for ip in bound_addresses_in(spec, family) {
        s.ipvs_ips.insert(in_family(ip, family).to_string());
    }
    for svc in spec.services_in(family) {
        for port in &svc.ports {
            let proto = port.protocol.as_str();
            let member = |ip: Ipv4Addr| format!("{},{proto}:{}", in_family(ip, family), port.port);
            s.cluster_ip.insert(member(svc.cluster_ip));
            for ip in &svc.external_ips {
                s.external_ip.insert(member(*ip));
            }
            for ip in &svc.load_balancer_ips {
                s.load_balancer.insert(member(*ip));
            }
            if let Some(np) = port.node_port {
                match port.protocol {
                    Protocol::Tcp => s.node_port_tcp.insert(np.to_string()),
                    Protocol::Udp => s.node_port_udp.insert(np.to_string()),
                    Protocol::Sctp => false,
                };
            }
            let (internal, external) = real_servers(spec, svc, port, family);
            for ep in internal.iter().chain(&external).filter(|e| e.local) {
                s.loop_back.insert(format!("{},{proto}:{},{}", ep.ip, ep.port, ep.ip));
            }
        }
    }
    s
}

/// `ipset restore` input: every set of every family's proxier created (kept if it exists), flushed
/// and filled.
pub fn ipset_restore(spec: &ClusterSpec) -> String {
    spec.families()
        .into_iter()
        .map(|family| ipset_restore_in(spec, family))
        .collect()
}

/// [`ipset_restore`] for the proxier of `family` (`family inet6` sets named `KUBE-6-...`).
fn ipset_restore_in(spec: &ClusterSpec, family: IpFamily) -> String {
    let s = sets_in(spec, family);
    let inet = match family {
        IpFamily::V4 => "inet",
        IpFamily::V6 => "inet6",
    };
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
        let name = set_name(name, family);
        if *kind == "bitmap:port" {
            let _ = writeln!(out, "create {name} {kind} range 0-65535 -exist");
        } else {
            let _ = writeln!(
                out,
                "create {name} {kind} family {inet} hashsize 1024 maxelem 65536 -exist"
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
    iptables_restore_in(spec, IpFamily::V4, with_sets)
}

/// [`iptables_restore`] for the proxier of `family` (`ip6tables-restore` input for IPv6: its own
/// sets, `::1` for the loopback RETURN, the IPv6 cluster CIDR).
pub fn iptables_restore_in(spec: &ClusterSpec, family: IpFamily, with_sets: bool) -> String {
    let s = if with_sets {
        sets_in(spec, family)
    } else {
        Sets::default()
    };
    // `--match-set <name>` and its comment, `set` named as IPv4's proxier names it.
    let m = |set: &str| format!("--match-set {}", set_name(set, family));
    let c = |set: &str| format!("-m comment --comment \"{}\"", comment_of(set));
    let loopback = match family {
        IpFamily::V4 => "127.0.0.0/8",
        IpFamily::V6 => "::1/128",
    };
    let mut nat = String::new();
    let n = &mut nat;
    if !s.cluster_ip.is_empty() || !s.external_ip.is_empty() || !s.load_balancer.is_empty() {
        let _ = writeln!(n, "-A KUBE-SERVICES -s {loopback} -j RETURN");
    }
    if !s.loop_back.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-POSTROUTING {} -m set {} dst,dst,src -j MASQUERADE",
            c("KUBE-LOOP-BACK"),
            m("KUBE-LOOP-BACK")
        );
    }
    if !s.load_balancer.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {} -m set {} dst,dst -j KUBE-LOAD-BALANCER",
            c("KUBE-LOAD-BALANCER"),
            m("KUBE-LOAD-BALANCER")
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
                "-A KUBE-NODE-PORT -p {proto} {} -m set {} dst -j KUBE-MARK-MASQ",
                c(set),
                m(set)
            );
        }
    }
    if !s.cluster_ip.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {} -m set {} dst,dst ! -s {} -j KUBE-MARK-MASQ",
            c("KUBE-CLUSTER-IP"),
            m("KUBE-CLUSTER-IP"),
            cidr_in_family(&spec.cluster_cidr, family)
        );
    }
    if !s.external_ip.is_empty() {
        let ext = format!("{} -m set {}", c("KUBE-EXTERNAL-IP"), m("KUBE-EXTERNAL-IP"));
        let _ = writeln!(n, "-A KUBE-SERVICES {ext} dst,dst -j KUBE-MARK-MASQ");
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {ext} dst,dst -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT"
        );
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES {ext} dst,dst -m addrtype --dst-type LOCAL -j ACCEPT"
        );
    }
    if !s.node_port_tcp.is_empty() || !s.node_port_udp.is_empty() {
        let _ = writeln!(n, "-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT");
    }
    if !s.load_balancer.is_empty() {
        let _ = writeln!(n, "-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ");
    }
    if !s.cluster_ip.is_empty() {
        let _ = writeln!(n, "-A KUBE-SERVICES -m set {} dst,dst -j ACCEPT", m("KUBE-CLUSTER-IP"));
    }
    if !s.load_balancer.is_empty() {
        let _ = writeln!(
            n,
            "-A KUBE-SERVICES -m set {} dst,dst -j ACCEPT",
            m("KUBE-LOAD-BALANCER")
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
                let _ = writeln!(f, "-A KUBE-IPVS-FILTER -m set {} dst,dst -j RETURN", m(set));
            }
        }
        let _ = writeln!(
            f,
            "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set {} dst -j REJECT",
            m("KUBE-IPVS-IPS")
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
/// the ipsets and the iptables rules, of every family. Returns the text written (ipvsadm, ipset,
/// iptables and ip6tables input).
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
    if with_sets {
        let sets = ipset_restore(spec);
        netns::exec_in(node_ns, "ipset", &["restore"], Some(&sets))?;
        let _ = write!(text, "# ipset restore\n{sets}");
    } else {
        text.push_str("# no ipset tool: kube-proxy's ipsets and the rules using them are left out\n");
    }
    // Each family's proxier writes its own tables (IPv4's first, as `rules_text` keeps them).
    for family in spec.families() {
        let tool = match family {
            IpFamily::V4 => "iptables-restore",
            IpFamily::V6 => "ip6tables-restore",
        };
        let rules = iptables_restore_in(spec, family, with_sets);
        netns::exec_in(node_ns, tool, &["-w", "5"], Some(&rules))?;
        let _ = write!(text, "# {tool}\n{rules}");
    }
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

    /// Every one of `lines` is a whole line of `text`.
    fn has_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(text.lines().any(|l| l == *line), "{line} missing:\n{text}");
        }
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
    /// endpoints, in the bracketed form `ipvsadm -Ln` prints back; kube-ipvs0 gets both families,
    /// and the IPv6 proxier has its own ipsets and ip6tables rules.
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
        // The IPv6 proxier's sets follow IPv4's (which stay as they were), `inet6`, named
        // `KUBE-6-...`, members in IPv6.
        let sets = ipset_restore(&spec);
        let v4_sets = ipset_restore(&super::tests::spec());
        assert!(sets.starts_with(&v4_sets), "{sets}");
        let v6_sets = &sets[v4_sets.len()..];
        has_lines(
            v6_sets,
            &[
                "create KUBE-6-CLUSTER-IP hash:ip,port family inet6 hashsize 1024 maxelem 65536 -exist",
                "add KUBE-6-CLUSTER-IP fd00:10:96::10,tcp:80",
                "add KUBE-6-LOOP-BACK fd00:10:244:1::11,tcp:8080,fd00:10:244:1::11",
                "add KUBE-6-IPVS-IPS fd00:10:96::53",
                "create KUBE-6-NODE-PORT-TCP bitmap:port range 0-65535 -exist",
                "add KUBE-6-NODE-PORT-TCP 30080",
            ],
        );
        assert!(!v6_sets.contains("10.96.") && !v6_sets.contains(" inet "), "{v6_sets}");
        // Its ip6tables rules: the same chains over its own sets, `::1` and the IPv6 cluster CIDR.
        let rules = iptables_restore_in(&spec, IpFamily::V6, true);
        has_lines(
            &rules,
            &[
                "-A KUBE-SERVICES -s ::1/128 -j RETURN",
                "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-6-CLUSTER-IP dst,dst ! -s fd00:10:244::/48 -j KUBE-MARK-MASQ",
                "-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-6-LOOP-BACK dst,dst,src -j MASQUERADE",
                "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-6-IPVS-IPS dst -j REJECT",
                "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
            ],
        );
        let named: Vec<&str> = rules
            .split("--match-set ")
            .skip(1)
            .map(|r| r.split(' ').next().unwrap())
            .collect();
        assert!(
            !named.is_empty() && named.iter().all(|n| n.starts_with("KUBE-6-")),
            "{rules}"
        );
        assert_eq!(
            iptables_restore_in(&spec, IpFamily::V4, true),
            iptables_restore(&super::tests::spec(), true)
        );
    }

    /// ipset names stop at 31 characters; the IPv6 prefix keeps every name of the lab's within it.
    #[test]
    fn ipv6_set_names_are_prefixed_and_fit() {
        assert_eq!(set_name("KUBE-LOOP-BACK", IpFamily::V6), "KUBE-6-LOOP-BACK");
        assert_eq!(set_name("KUBE-LOOP-BACK", IpFamily::V4), "KUBE-LOOP-BACK");
        assert_eq!(
            set_name("KUBE-LOAD-BALANCER-SOURCE-CIDR", IpFamily::V6),
            "KUBE-6-LOAD-BALANCER-SOURCE-CID"
        );
        for (name, _, _) in SET_DEFS {
            assert!(set_name(name, IpFamily::V6).len() <= 31, "{name}");
        }
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
        has_lines(
            &sets,
            &[
                "add KUBE-CLUSTER-IP 10.96.0.10,tcp:80",
                "add KUBE-CLUSTER-IP 10.96.0.20,tcp:80",
                "add KUBE-CLUSTER-IP 10.96.0.53,udp:53",
                "add KUBE-LOOP-BACK 10.244.1.11,tcp:8080,10.244.1.11",
                "add KUBE-IPVS-IPS 10.96.0.53",
                "add KUBE-NODE-PORT-TCP 30080",
                "create KUBE-NODE-PORT-TCP bitmap:port range 0-65535 -exist",
            ],
        );
        assert!(!sets.contains("10.244.2.12,"), "remote endpoints need no hairpin entry");
        let rules = iptables_restore(&spec(), true);
        has_lines(
            &rules,
            &[
                "-A KUBE-SERVICES -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
                "-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT",
                "-A KUBE-NODE-PORT -p tcp -m comment --comment \"Kubernetes nodeport TCP port for masquerade purpose\" -m set --match-set KUBE-NODE-PORT-TCP dst -j KUBE-MARK-MASQ",
                "-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT",
                "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000",
                "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
            ],
        );
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
