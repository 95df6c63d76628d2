//! kube-proxy's iptables-mode rules for a [`ClusterSpec`], as text for `iptables-restore`.
//!
//! [`kube_proxy_restore`] is byte for byte what kube-proxy's `syncProxyRules` feeds to
//! `iptables-restore --noflush` on a full sync (1.28+ layout, masquerade bit 14, ClusterCIDR local
//! detector, localhost NodePorts on, no nfacct counters, fewer than 1000 endpoints so comments are
//! written). [`lab_restore`] wraps it for the lab: it also declares the built-in chains with the jump
//! rules kube-proxy and kubelet insert there, and restores without `--noflush`, so every re-sync
//! replaces the node's filter and nat tables as a whole (stale chains vanish, nothing accumulates).

use std::fmt::Write as _;

use super::spec::{
    ClusterSpec, EndpointInfo, ServicePortSpec, ServiceSpec, SessionAffinity, categorize, cidr_in_family, in_family,
};
use crate::model::IpFamily;
use crate::model::rules::names;

/// kube-proxy's masquerade mark: `fmt.Sprintf("%#08x", 1<<14)`.
const MASQ_MARK: &str = "0x4000";

/// kube-proxy's `probability(n)`: `fmt.Sprintf("%0.10f", 1.0/float64(n))`.
pub fn probability(n: usize) -> String {
    format!("{:.10}", 1.0 / n as f64)
}

/// Chain names of one Service port (all share the port's hash).
pub struct ServiceChains {
    /// `KUBE-SVC-<h>`: Cluster policy dispatch.
    pub svc: String,
    /// `KUBE-SVL-<h>`: Local policy dispatch.
    pub svl: String,
    /// `KUBE-EXT-<h>`: external destinations.
    pub ext: String,
    /// `KUBE-FW-<h>`: loadBalancerSourceRanges.
    pub fw: String,
}

impl ServiceChains {
    /// Names for `port_name` (`ns/svc:port`) and lowercase `protocol`.
    pub fn new(port_name: &str, protocol: &str) -> Self {
        Self {
            svc: names::service_chain("KUBE-SVC-", port_name, protocol),
            svl: names::service_chain("KUBE-SVL-", port_name, protocol),
            ext: names::service_chain("KUBE-EXT-", port_name, protocol),
            fw: names::service_chain("KUBE-FW-", port_name, protocol),
        }
    }
}

/// `KUBE-SEP-<h>` of one endpoint.
pub fn sep_chain(port_name: &str, protocol: &str, ep: &EndpointInfo) -> String {
    names::endpoint_chain(port_name, protocol, &ep.addr())
}

#[derive(Default)]
struct Buffers {
    /// kube-proxy's `largeClusterMode`: more than [`LARGE_CLUSTER_ENDPOINTS`] endpoints, so the
    /// per-endpoint rules carry no comment (`appendServiceCommentLocked`).
    large_cluster: bool,
    filter_chains: String,
    filter_rules: String,
    nat_chains: String,
    nat_rules: String,
}

/// kube-proxy's `largeClusterEndpointsThreshold`.
pub const LARGE_CLUSTER_ENDPOINTS: usize = 1000;

impl Buffers {
    /// ` -m comment --comment <text>`, or nothing in a large cluster (`appendServiceCommentLocked`).
    fn endpoint_comment(&self, text: &str) -> String {
        if self.large_cluster {
            String::new()
        } else {
            format!(" -m comment --comment {text}")
        }
    }
}

fn chain_line(buf: &mut String, chain: &str) {
    let _ = writeln!(buf, ":{chain} - [0:0]");
}

/// The text kube-proxy passes to `iptables-restore --noflush` for `spec` on a full sync (IPv4).
pub fn kube_proxy_restore(spec: &ClusterSpec) -> String {
    kube_proxy_restore_in(spec, IpFamily::V4)
}

/// [`kube_proxy_restore`] for one family: on a dual-stack node kube-proxy runs one proxier per
/// family, and the IPv6 one feeds the same layout to `ip6tables-restore` with the Services' IPv6
/// addresses (the chain names of Services are the same in both families; those of endpoints hash
/// `[ip]:port`).
pub fn kube_proxy_restore_in(spec: &ClusterSpec, family: IpFamily) -> String {
    let endpoints: usize = spec
        .services_in(family)
        .flat_map(|s| s.ports.iter().map(move |p| spec.endpoints(s, p).len()))
        .sum();
    let mut b = Buffers {
        large_cluster: endpoints > LARGE_CLUSTER_ENDPOINTS,
        ..Buffers::default()
    };
    for chain in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
        "KUBE-PROXY-FIREWALL",
    ] {
        chain_line(&mut b.filter_chains, chain);
    }
    for chain in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        chain_line(&mut b.nat_chains, chain);
    }
    let n = &mut b.nat_rules;
    masquerade_rules(n);
    // localhostNodePorts is on by default for IPv4: kube-proxy then writes kubelet's KUBE-FIREWALL.
    // It applies to IPv4 only (there is no IPv6 route_localnet), so the IPv6 chain stays empty; it
    // is declared all the same because the built-in chains jump to it (`builtin_jumps`).
    chain_line(&mut b.filter_chains, "KUBE-FIREWALL");
    if family == IpFamily::V4 {
        let _ = writeln!(
            b.filter_rules,
            "-A KUBE-FIREWALL -m comment --comment \"block incoming localnet connections\" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP"
        );
    }

    for svc in spec.services_in(family) {
        for port in &svc.ports {
            write_service_port(&mut b, spec, svc, port, family);
        }
    }

    // The NodePort tail rule must stay last in nat KUBE-SERVICES (nodePortAddresses matches all).
    let _ = writeln!(
        b.nat_rules,
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS"
    );
    let f = &mut b.filter_rules;
    let _ = writeln!(f, "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(
        f,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    let _ = writeln!(
        f,
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );

    format!(
        "*filter\n{}{}COMMIT\n*nat\n{}{}COMMIT\n",
        b.filter_chains, b.filter_rules, b.nat_chains, b.nat_rules
    )
}

/// The jump rules in built-in chains, in the order `iptables-save` shows them after kube-proxy
/// prepended its own (`EnsureRule(Prepend)`, so the last one ensured comes first) and kubelet
/// appended `-j KUBE-FIREWALL`. Returned per table: (filter, nat).
pub fn builtin_jumps() -> (String, String) {
    let filter = "\
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A INPUT -m comment --comment \"kubernetes health check service ports\" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally-visible service portals\" -j KUBE-EXTERNAL-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -j KUBE-FIREWALL
";
    let nat = "\
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
";
    (filter.to_string(), nat.to_string())
}

/// What the lab feeds to `iptables-restore` (without `--noflush`): the built-in chains with their
/// jump rules plus kube-proxy's text, so the node's filter and nat tables end up exactly as on a
/// node where kubelet and kube-proxy ran.
pub fn lab_restore(spec: &ClusterSpec) -> String {
    lab_restore_in(spec, IpFamily::V4)
}

/// [`lab_restore`] for one family (`ip6tables-restore` input for IPv6).
pub fn lab_restore_in(spec: &ClusterSpec, family: IpFamily) -> String {
    let kp = kube_proxy_restore_in(spec, family);
    let (filter_jumps, nat_jumps) = builtin_jumps();
    // Within each table: built-in chain declarations, kube-proxy's chain declarations, then the
    // jump rules (iptables-nft refuses a jump to a chain not declared yet), then kube-proxy's rules.
    let mut out = String::new();
    let mut pending_jumps: Option<&str> = None;
    for line in kp.lines() {
        if let Some(jumps) = pending_jumps
            && !line.starts_with(':')
        {
            out.push_str(jumps);
            pending_jumps = None;
        }
        out.push_str(line);
        out.push('\n');
        match line {
            "*filter" => {
                out.push_str(":INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
                pending_jumps = Some(&filter_jumps);
            }
            "*nat" => {
                out.push_str(
                    ":PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
                );
                pending_jumps = Some(&nat_jumps);
            }
            _ => {}
        }
    }
    out
}

/// One Service port, following `syncProxyRules`' per-port loop statement by statement.
fn write_service_port(
    b: &mut Buffers,
    spec: &ClusterSpec,
    svc: &ServiceSpec,
    port: &ServicePortSpec,
    family: IpFamily,
) {
    let name = svc.port_name(port);
    let proto = port.protocol.as_str();
    let chains = ServiceChains::new(&name, proto);
    let eps = spec.endpoints_in(svc, port, family);
    let cluster_cidr = cidr_in_family(&spec.cluster_cidr, family);
    let external_ips: Vec<_> = svc.external_ips.iter().map(|&ip| in_family(ip, family)).collect();
    let load_balancer_ips: Vec<_> = svc.load_balancer_ips.iter().map(|&ip| in_family(ip, family)).collect();
    let cat = categorize(spec, svc, &eps);

    let uses_cluster_chain = !cat.cluster.is_empty() && super::spec::uses_cluster_endpoints(svc);
    let uses_local_chain = !cat.local.is_empty() && super::spec::uses_local_endpoints(svc);
    let has_endpoints = cat.has_any;

    let mut internal_chain = &chains.svc;
    let mut has_internal = has_endpoints;
    if svc.internal_policy_local() {
        internal_chain = &chains.svl;
        if cat.local.is_empty() {
            has_internal = false;
        }
    }
    let mut external_policy_chain = &chains.svc;
    let mut has_external = has_endpoints;
    if svc.external_policy_local() {
        external_policy_chain = &chains.svl;
        if cat.local.is_empty() {
            has_external = false;
        }
    }
    let uses_ext_chain = has_endpoints && svc.externally_accessible();

    let (internal_target, internal_comment, external_target, external_comment) = if !has_endpoints {
        let c = format!("\"{name} has no endpoints\"");
        ("REJECT", c.clone(), "REJECT", c)
    } else {
        let c = format!("\"{name} has no local endpoints\"");
        ("DROP", c.clone(), "DROP", c)
    };

    let cip = in_family(svc.cluster_ip, family);
    let sport = port.port;
    // Capture the ClusterIP.
    if has_internal {
        let _ = writeln!(
            b.nat_rules,
            "-A KUBE-SERVICES -m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {sport} -j {internal_chain}"
        );
    } else {
        let _ = writeln!(
            b.filter_rules,
            "-A KUBE-SERVICES -m comment --comment {internal_comment} -m {proto} -p {proto} -d {cip} --dport {sport} -j {internal_target}"
        );
    }
    // External IPs.
    for ip in &external_ips {
        if has_endpoints {
            let _ = writeln!(
                b.nat_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} external IP\" -m {proto} -p {proto} -d {ip} --dport {sport} -j {}",
                chains.ext
            );
        }
        if !has_external {
            let _ = writeln!(
                b.filter_rules,
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {external_comment} -m {proto} -p {proto} -d {ip} --dport {sport} -j {external_target}"
            );
        }
    }
    // Load-balancer ingress IPs, through KUBE-FW when loadBalancerSourceRanges are set; what KUBE-FW
    // does not send on is dropped by KUBE-PROXY-FIREWALL.
    let uses_fw = has_endpoints && svc.uses_firewall();
    let lb_chain = if uses_fw { &chains.fw } else { &chains.ext };
    for ip in &load_balancer_ips {
        if has_endpoints {
            let _ = writeln!(
                b.nat_rules,
                "-A KUBE-SERVICES -m comment --comment \"{name} loadbalancer IP\" -m {proto} -p {proto} -d {ip} --dport {sport} -j {lb_chain}"
            );
        }
        if uses_fw {
            let _ = writeln!(
                b.filter_rules,
                "-A KUBE-PROXY-FIREWALL -m comment --comment \"{name} traffic not accepted by {}\" -m {proto} -p {proto} -d {ip} --dport {sport} -j DROP",
                chains.fw
            );
        }
    }
    if !has_external {
        for ip in &load_balancer_ips {
            let _ = writeln!(
                b.filter_rules,
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {external_comment} -m {proto} -p {proto} -d {ip} --dport {sport} -j {external_target}"
            );
        }
    }
    // NodePorts.
    if let Some(np) = port.node_port {
        if has_endpoints {
            let _ = writeln!(
                b.nat_rules,
                "-A KUBE-NODEPORTS -m comment --comment {name} -m {proto} -p {proto} --dport {np} -j {}",
                chains.ext
            );
        }
        if !has_external {
            let _ = writeln!(
                b.filter_rules,
                "-A KUBE-EXTERNAL-SERVICES -m comment --comment {external_comment} -m addrtype --dst-type LOCAL -m {proto} -p {proto} --dport {np} -j {external_target}"
            );
        }
    }
    // Health-check NodePort: accepted whether or not there are local endpoints.
    if let Some(hc) = svc.health_check_node_port {
        let _ = writeln!(
            b.filter_rules,
            "-A KUBE-NODEPORTS -m comment --comment \"{name} health check node port\" -m tcp -p tcp --dport {hc} -j ACCEPT"
        );
    }

    let cluster_ip_args =
        format!("-m comment --comment \"{name} cluster IP\" -m {proto} -p {proto} -d {cip} --dport {sport}");
    // Internal traffic: masquerade off-cluster sources (ClusterCIDR local detector).
    if has_internal {
        let _ = writeln!(
            b.nat_rules,
            "-A {internal_chain} {cluster_ip_args} ! -s {cluster_cidr} -j KUBE-MARK-MASQ"
        );
    }
    // External traffic chain.
    if uses_ext_chain {
        let ext = &chains.ext;
        chain_line(&mut b.nat_chains, ext);
        if !svc.external_policy_local() {
            let _ = writeln!(
                b.nat_rules,
                "-A {ext} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"
            );
        } else {
            let _ = writeln!(
                b.nat_rules,
                "-A {ext} -m comment --comment \"pod traffic for {name} external destinations\" -s {cluster_cidr} -j {}",
                chains.svc
            );
            let _ = writeln!(
                b.nat_rules,
                "-A {ext} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                b.nat_rules,
                "-A {ext} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {}",
                chains.svc
            );
        }
        if has_external {
            let _ = writeln!(b.nat_rules, "-A {ext} -j {external_policy_chain}");
        }
    }
    // The firewall chain: source ranges on to the external chain (and the LB IPs themselves when
    // a range holds the node's address: hairpin from the node), the rest falls through.
    if uses_fw {
        let fw = &chains.fw;
        chain_line(&mut b.nat_chains, fw);
        let args = format!("-A {fw} -m comment --comment \"{name} loadbalancer IP\"");
        let mut allow_from_node = false;
        for cidr in &svc.source_ranges {
            let _ = writeln!(
                b.nat_rules,
                "{args} -s {} -j {}",
                cidr_in_family(cidr, family),
                chains.ext
            );
            // The IPv4 answer holds for the IPv6 twins too (`ipv6_twin_cidr` keeps containment).
            allow_from_node |= cidr_holds(cidr, spec.node_ip);
        }
        if allow_from_node {
            for ip in &load_balancer_ips {
                let _ = writeln!(b.nat_rules, "{args} -s {ip} -j {}", chains.ext);
            }
        }
        let _ = writeln!(
            b.nat_rules,
            "-A {fw} -m comment --comment \"other traffic to {name} will be dropped by KUBE-PROXY-FIREWALL\""
        );
    }
    if uses_cluster_chain {
        chain_line(&mut b.nat_chains, &chains.svc);
        write_service_to_endpoint_rules(b, svc, &name, proto, &chains.svc, &cat.cluster);
    }
    if uses_local_chain {
        chain_line(&mut b.nat_chains, &chains.svl);
        write_service_to_endpoint_rules(b, svc, &name, proto, &chains.svl, &cat.local);
    }
    // Endpoint chains: hairpin masquerade, then DNAT (recording affinity first when on).
    for ep in &cat.all_reachable {
        let sep = sep_chain(&name, proto, ep);
        chain_line(&mut b.nat_chains, &sep);
        let comment = b.endpoint_comment(&name);
        let _ = writeln!(b.nat_rules, "-A {sep}{comment} -s {} -j KUBE-MARK-MASQ", ep.ip);
        let affinity = match svc.session_affinity {
            SessionAffinity::ClientIP { .. } => format!(" -m recent --name {sep} --set"),
            SessionAffinity::None => String::new(),
        };
        let _ = writeln!(
            b.nat_rules,
            "-A {sep}{comment}{affinity} -m {proto} -p {proto} -j DNAT --to-destination {}",
            ep.addr()
        );
    }
}

/// `cidr` (IPv4 `a.b.c.d/n`) holds `ip`.
pub(crate) fn cidr_holds(cidr: &str, ip: std::net::Ipv4Addr) -> bool {
    let (net, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let (Ok(net), Ok(len)) = (net.parse::<std::net::Ipv4Addr>(), len.parse::<u32>()) else {
        return false;
    };
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len.min(32)) };
    u32::from(net) & mask == u32::from(ip) & mask
}

/// `writeServiceToEndpointRules`: affinity checks, then the probability cascade.
fn write_service_to_endpoint_rules(
    b: &mut Buffers,
    svc: &ServiceSpec,
    name: &str,
    proto: &str,
    chain: &str,
    eps: &[EndpointInfo],
) {
    if let SessionAffinity::ClientIP { timeout_seconds } = svc.session_affinity {
        for ep in eps {
            let sep = sep_chain(name, proto, ep);
            let comment = b.endpoint_comment(&format!("\"{name} -> {}\"", ep.addr()));
            let _ = writeln!(
                b.nat_rules,
                "-A {chain}{comment} -m recent --name {sep} --rcheck --seconds {timeout_seconds} --reap -j {sep}"
            );
        }
    }
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let sep = sep_chain(name, proto, ep);
        let stat = if i < n - 1 {
            format!(" -m statistic --mode random --probability {}", probability(n - i))
        } else {
            String::new()
        };
        let comment = b.endpoint_comment(&format!("\"{name} -> {}\"", ep.addr()));
        let _ = writeln!(b.nat_rules, "-A {chain}{comment}{stat} -j {sep}");
    }
}

/// kube-proxy's masquerade chains, the same in iptables and IPVS mode: packets marked by
/// KUBE-MARK-MASQ leave through MASQUERADE.
pub(super) fn masquerade_rules(n: &mut String) {
    let _ = writeln!(
        n,
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(n, "-A KUBE-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    let _ = writeln!(
        n,
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully"
    );
    let _ = writeln!(n, "-A KUBE-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lab::spec::{ListenerKind, PodSpec, TrafficPolicy};
    use crate::model::Protocol;

    fn web_spec(n: usize) -> ClusterSpec {
        let mut spec = ClusterSpec::new().service(ServiceSpec::new("ns1", "svc1", Ipv4Addr::new(10, 96, 0, 41)).port(
            "p80",
            80,
            8080,
            Protocol::Tcp,
        ));
        for i in 0..n {
            spec = spec.pod(
                PodSpec::new("ns1", &format!("web-{i}"), Ipv4Addr::new(10, 244, 1, 10 + i as u8))
                    .label("app", "svc1")
                    .listen(8080, ListenerKind::Tcp),
            );
        }
        spec
    }

    /// `ns1/svc1` with `n` endpoints on another node (rules and API only).
    fn big_spec(n: usize) -> ClusterSpec {
        web_spec(0).remote_pods("ns1", "svc1", "node-b", n)
    }

    #[test]
    fn above_1000_endpoints_the_endpoint_rules_carry_no_comment() {
        let at = kube_proxy_restore(&big_spec(LARGE_CLUSTER_ENDPOINTS));
        assert_eq!(at.matches("--comment \"ns1/svc1:p80 -> ").count(), 1000);
        let text = kube_proxy_restore(&big_spec(LARGE_CLUSTER_ENDPOINTS + 1));
        let sep = names::endpoint_chain("ns1/svc1:p80", "tcp", "10.245.0.1:8080");
        assert!(
            text.contains(&format!("-A {sep} -s 10.245.0.1 -j KUBE-MARK-MASQ\n")),
            "{sep}"
        );
        assert!(text.contains(&format!(
            "-A {sep} -m tcp -p tcp -j DNAT --to-destination 10.245.0.1:8080\n"
        )));
        assert!(!text.contains(" -> "), "no per-endpoint comment in a large cluster");
        // The Service-level rules keep theirs.
        assert!(text.contains("--comment \"ns1/svc1:p80 cluster IP\""));
        // The reader still attributes every endpoint, by chain hash.
        let p = crate::model::rules::iptables::parse(&text).unwrap();
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        let svc = &p.services[0];
        assert_eq!(svc.service.to_string(), "ns1/svc1");
        assert_eq!(svc.endpoints.len(), 1001);
        let first = svc.endpoints.iter().find(|e| e.ip.to_string() == "10.245.0.1").unwrap();
        assert_eq!(&*first.rule.as_ref().unwrap().name, sep);
        assert!(svc.rules.problems.is_empty(), "{:?}", svc.rules.problems);
    }

    #[test]
    fn probabilities_follow_kube_proxy_format() {
        assert_eq!(probability(2), "0.5000000000");
        assert_eq!(probability(3), "0.3333333333");
        let text = kube_proxy_restore(&web_spec(3));
        let svc = names::service_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp");
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("-A {svc} "))).collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert!(lines[0].contains("! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"));
        assert!(lines[1].contains("--probability 0.3333333333"));
        assert!(lines[2].contains("--probability 0.5000000000"));
        assert!(!lines[3].contains("statistic"));
        assert!(lines[3].contains("\"ns1/svc1:p80 -> 10.244.1.12:8080\""));
    }

    #[test]
    fn chain_names_use_kube_proxy_hashes() {
        let text = kube_proxy_restore(&web_spec(1));
        let sep = names::endpoint_chain("ns1/svc1:p80", "tcp", "10.244.1.10:8080");
        assert!(text.contains(&format!(":{sep} - [0:0]")));
        assert!(text.contains(&format!(
            "-A {sep} -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.244.1.10:8080"
        )));
        assert!(text.contains(&format!(
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 10.96.0.41 --dport 80 -j {}",
            names::service_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp")
        )));
        // The NodePort tail rule is the last rule of nat KUBE-SERVICES.
        let last = text.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES")).unwrap();
        assert!(last.contains("-j KUBE-NODEPORTS"));
    }

    #[test]
    fn no_ready_endpoints_reject_in_filter_only() {
        let mut spec = web_spec(2);
        for p in &mut spec.pods {
            p.ready = false;
        }
        let text = kube_proxy_restore(&spec);
        let (filter, nat) = text.split_once("*nat").unwrap();
        assert!(filter.contains(
            "-A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 has no endpoints\" -m tcp -p tcp -d 10.96.0.41 --dport 80 -j REJECT"
        ));
        assert!(!nat.contains("KUBE-SVC-"), "{nat}");
        assert!(!nat.contains("KUBE-SEP-"), "{nat}");
    }

    #[test]
    fn only_ready_endpoints_are_dispatched() {
        let mut spec = web_spec(2);
        spec.pods[1].ready = false;
        let text = kube_proxy_restore(&spec);
        assert!(text.contains("10.244.1.10:8080"));
        assert!(!text.contains("10.244.1.11"));
    }

    #[test]
    fn etp_local_without_local_endpoints_drops_external_traffic() {
        let spec = ClusterSpec::new()
            .service(
                ServiceSpec::new("ns2", "svc2", Ipv4Addr::new(10, 96, 0, 42))
                    .node_port("p80", 80, 8080, Protocol::Tcp, 30080)
                    .external_ip(Ipv4Addr::new(192, 0, 2, 10))
                    .external_policy(TrafficPolicy::Local),
            )
            .pod(
                PodSpec::new("ns2", "remote", Ipv4Addr::new(10, 244, 2, 10))
                    .label("app", "svc2")
                    .on_node("other"),
            );
        let text = kube_proxy_restore(&spec);
        let ext = names::service_chain("KUBE-EXT-", "ns2/svc2:p80", "tcp");
        let svc = names::service_chain("KUBE-SVC-", "ns2/svc2:p80", "tcp");
        assert!(text.contains(
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 30080 -j DROP"
        ));
        assert!(text.contains(
            "-A KUBE-EXTERNAL-SERVICES -m comment --comment \"ns2/svc2:p80 has no local endpoints\" -m tcp -p tcp -d 192.0.2.10 --dport 80 -j DROP"
        ));
        assert!(text.contains(&format!(
            "-A {ext} -m comment --comment \"route LOCAL traffic for ns2/svc2:p80 external destinations\" -m addrtype --src-type LOCAL -j {svc}"
        )));
        assert!(
            !text.contains(&format!("-A {ext} -j ")),
            "no fall-through to SVL without local endpoints"
        );
        assert!(!text.contains("KUBE-SVL-"));
    }

    #[test]
    fn etp_local_with_local_endpoint_uses_svl() {
        let spec = ClusterSpec::new()
            .service(
                ServiceSpec::new("ns2", "svc2", Ipv4Addr::new(10, 96, 0, 42))
                    .node_port("p80", 80, 8080, Protocol::Tcp, 30080)
                    .external_policy(TrafficPolicy::Local),
            )
            .pod(PodSpec::new("ns2", "local", Ipv4Addr::new(10, 244, 1, 10)).label("app", "svc2"))
            .pod(
                PodSpec::new("ns2", "remote", Ipv4Addr::new(10, 244, 2, 10))
                    .label("app", "svc2")
                    .on_node("other"),
            );
        let text = kube_proxy_restore(&spec);
        let ext = names::service_chain("KUBE-EXT-", "ns2/svc2:p80", "tcp");
        let svl = names::service_chain("KUBE-SVL-", "ns2/svc2:p80", "tcp");
        assert!(text.contains(&format!("-A {ext} -j {svl}\n")));
        let svl_rules: Vec<&str> = text.lines().filter(|l| l.starts_with(&format!("-A {svl} "))).collect();
        assert_eq!(svl_rules.len(), 1, "only the local endpoint: {svl_rules:?}");
        assert!(svl_rules[0].contains("10.244.1.10:8080"));
        assert!(!text.contains("has no local endpoints"));
    }

    #[test]
    fn session_affinity_rules() {
        let mut spec = web_spec(2);
        spec.services[0] = spec.services[0].clone().client_ip_affinity(10800);
        let text = kube_proxy_restore(&spec);
        let sep = names::endpoint_chain("ns1/svc1:p80", "tcp", "10.244.1.10:8080");
        assert!(text.contains(&format!(
            "-m recent --name {sep} --rcheck --seconds 10800 --reap -j {sep}"
        )));
        assert!(text.contains(&format!(
            "-A {sep} -m comment --comment ns1/svc1:p80 -m recent --name {sep} --set -m tcp -p tcp -j DNAT"
        )));
    }

    #[test]
    fn lab_restore_declares_builtin_chains() {
        let text = lab_restore(&web_spec(1));
        assert!(text.starts_with("*filter\n:INPUT ACCEPT [0:0]\n"));
        assert!(text.contains("-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n"));
        assert_eq!(text.matches("COMMIT").count(), 2);
    }
}
