//! kube-proxy's nftables-mode rules for a [`ClusterSpec`], as an `nft -f` transaction.
//!
//! Layout B (kube-proxy 1.34, backported to 1.33.x; reference §3.1): `table ip kube-proxy` with the
//! pre-DNAT firewall base chains at priority -110 and the endpoint checks at priority 0, the maps
//! `service-ips`, `service-nodeports`, `no-endpoint-services`, `no-endpoint-nodeports`,
//! `firewall-ips`, the sets `cluster-ips` and `nodeport-ips` (`--nodeport-addresses=primary`, the
//! nftables default), and per Service port `service-`/`local-`/`external-`/`endpoint-` chains named
//! `<prefix><H8>-<ns>/<svc>/<proto>/<port>[__<ip>/<port>]`.
//!
//! Unlike kube-proxy's own transaction, which may add a chain after a rule elsewhere in the text
//! refers to it, the text here declares every chain and set first, then writes rules and elements:
//! `nft -f` resolves jump targets while parsing, so a forward reference fails.
//! [`lab_transaction`] prefixes `add table` + `delete table` so a re-sync replaces the table
//! atomically.

use std::fmt::Write as _;

use super::spec::{
    ClusterSpec, EndpointInfo, ServicePortSpec, ServiceSpec, SessionAffinity, categorize, cidr_in_family, in_family,
    uses_cluster_endpoints, uses_local_endpoints,
};
use crate::model::IpFamily;
use crate::model::rules::names;

/// kube-proxy's maximum length of the readable part of a chain name.
const CHAIN_BASE_MAX: usize = 240;

/// `hashAndTruncate`: `H8(name) + "-" + name`, cut to 240 characters with a `...` suffix.
fn hash_and_truncate(name: &str) -> String {
    let mut base = format!("{}-{}", names::nft_hash(name), name);
    if base.len() > CHAIN_BASE_MAX {
        base.truncate(CHAIN_BASE_MAX - 3);
        base.push_str("...");
    }
    base
}

/// The common part of a Service port's chain names: `<H8>-<ns>/<svc>/<proto>/<portName>`.
pub fn service_base(svc: &ServiceSpec, port: &ServicePortSpec) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}",
        svc.namespace,
        svc.name,
        port.protocol.as_str(),
        port.name
    ))
}

/// The common part of an endpoint's chain and affinity-set names:
/// `<H8>-<ns>/<svc>/<proto>/<portName>__<ip>/<port>`, with an IPv6 address's `:` written `.`
/// (`__fd00.10.244.1..11/8080`), as kube-proxy writes it.
pub fn endpoint_base(svc: &ServiceSpec, port: &ServicePortSpec, ep: &EndpointInfo) -> String {
    hash_and_truncate(&format!(
        "{}/{}/{}/{}__{}/{}",
        svc.namespace,
        svc.name,
        port.protocol.as_str(),
        port.name,
        ep.ip.to_string().replace(':', "."),
        ep.port
    ))
}

/// `table ip kube-proxy` or `table ip6 kube-proxy`.
fn table(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "ip kube-proxy",
        IpFamily::V6 => "ip6 kube-proxy",
    }
}

/// Text segments, emitted in this order so every chain exists before anything refers to it.
struct Tx {
    family: IpFamily,
    /// `table(family)`.
    t: &'static str,
    /// The address match keyword: `ip` or `ip6`.
    ip: &'static str,
    /// The address key type of sets and maps: `ipv4_addr` or `ipv6_addr`.
    addr_type: &'static str,
    decls: String,
    rules: String,
    elements: String,
}

impl Tx {
    fn new(family: IpFamily) -> Self {
        let (ip, addr_type) = match family {
            IpFamily::V4 => ("ip", "ipv4_addr"),
            IpFamily::V6 => ("ip6", "ipv6_addr"),
        };
        Self {
            family,
            t: table(family),
            ip,
            addr_type,
            decls: String::new(),
            rules: String::new(),
            elements: String::new(),
        }
    }
    fn chain(&mut self, name: &str) {
        let _ = writeln!(self.decls, "add chain {} {name}", self.t);
    }
    fn rule(&mut self, chain: &str, rule: &str) {
        let _ = writeln!(self.rules, "add rule {} {chain} {rule}", self.t);
    }
    fn element(&mut self, set: &str, element: &str) {
        let _ = writeln!(self.elements, "add element {} {set} {{ {element} }}", self.t);
    }
}

/// kube-proxy's full-sync transaction for `spec` (declarations first, see the module docs), IPv4.
pub fn kube_proxy_transaction(spec: &ClusterSpec) -> String {
    kube_proxy_transaction_in(spec, IpFamily::V4)
}

/// [`kube_proxy_transaction`] for one family: kube-proxy's IPv6 proxier writes the same table as
/// `table ip6 kube-proxy`, with `ip6` matches, `ipv6_addr` keys and the IPv6 addresses.
pub fn kube_proxy_transaction_in(spec: &ClusterSpec, family: IpFamily) -> String {
    let mut tx = Tx::new(family);
    let (t, ip, addr_type) = (tx.t, tx.ip, tx.addr_type);
    let _ = writeln!(tx.decls, "add table {t} {{ comment \"rules for kube-proxy\" ; }}");
    // Base chains, layout B.
    for (name, kind, hook, prio) in [
        ("filter-prerouting-pre-dnat", "filter", "prerouting", -110),
        ("filter-output-pre-dnat", "filter", "output", -110),
        ("filter-forward", "filter", "forward", 0),
        ("filter-input", "filter", "input", 0),
        ("filter-output", "filter", "output", 0),
        ("nat-output", "nat", "output", -100),
        ("nat-postrouting", "nat", "postrouting", 100),
        ("nat-prerouting", "nat", "prerouting", -100),
    ] {
        let _ = writeln!(
            tx.decls,
            "add chain {t} {name} {{ type {kind} hook {hook} priority {prio} ; }}"
        );
    }
    for chain in [
        "services",
        "masquerading",
        "mark-for-masquerade",
        "firewall-check",
        "service-endpoints-check",
        "nodeport-endpoints-check",
        "cluster-ips-check",
    ] {
        tx.chain(chain);
    }
    let _ = writeln!(
        tx.decls,
        "add chain {t} reject-chain {{ comment \"helper for @no-endpoint-services / @no-endpoint-nodeports\" ; }}"
    );
    let _ = writeln!(
        tx.decls,
        "add set {t} cluster-ips {{ type {addr_type} ; comment \"Active ClusterIPs\" ; }}"
    );
    let _ = writeln!(
        tx.decls,
        "add set {t} nodeport-ips {{ type {addr_type} ; comment \"IPs that accept NodePort traffic\" ; }}"
    );
    let addr_key = format!("{addr_type} . inet_proto . inet_service");
    for (name, key, comment) in [
        (
            "service-ips",
            addr_key.as_str(),
            "ClusterIP, ExternalIP and LoadBalancer IP traffic",
        ),
        ("service-nodeports", "inet_proto . inet_service", "NodePort traffic"),
        (
            "no-endpoint-services",
            addr_key.as_str(),
            "vmap to drop or reject packets to services with no endpoints",
        ),
        (
            "no-endpoint-nodeports",
            "inet_proto . inet_service",
            "vmap to drop or reject packets to service nodeports with no endpoints",
        ),
        (
            "firewall-ips",
            addr_key.as_str(),
            "destinations that are subject to LoadBalancerSourceRanges",
        ),
    ] {
        let _ = writeln!(
            tx.decls,
            "add map {t} {name} {{ type {key} : verdict ; comment \"{comment}\" ; }}"
        );
    }

    // Static rules.
    tx.rule("filter-prerouting-pre-dnat", "ct state new jump firewall-check");
    tx.rule("filter-output-pre-dnat", "ct state new jump firewall-check");
    tx.rule("filter-forward", "ct state new jump service-endpoints-check");
    tx.rule("filter-forward", "ct state new jump cluster-ips-check");
    tx.rule("filter-input", "ct state new jump nodeport-endpoints-check");
    tx.rule("filter-input", "ct state new jump service-endpoints-check");
    tx.rule("filter-output", "ct state new jump service-endpoints-check");
    tx.rule("filter-output", "ct state new jump cluster-ips-check");
    tx.rule("nat-output", "jump services");
    tx.rule("nat-postrouting", "jump masquerading");
    tx.rule("nat-prerouting", "jump services");
    tx.rule("mark-for-masquerade", "mark set mark or 0x4000");
    tx.rule("masquerading", "mark and 0x4000 == 0 return");
    tx.rule("masquerading", "mark set mark xor 0x4000");
    tx.rule("masquerading", "masquerade fully-random");
    tx.rule(
        "services",
        &format!("{ip} daddr . meta l4proto . th dport vmap @service-ips"),
    );
    tx.rule(
        "services",
        &format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @service-nodeports"),
    );
    tx.rule(
        "service-endpoints-check",
        &format!("{ip} daddr . meta l4proto . th dport vmap @no-endpoint-services"),
    );
    tx.rule(
        "nodeport-endpoints-check",
        &format!("{ip} daddr @nodeport-ips meta l4proto . th dport vmap @no-endpoint-nodeports"),
    );
    tx.rule(
        "firewall-check",
        &format!("{ip} daddr . meta l4proto . th dport vmap @firewall-ips"),
    );
    tx.rule(
        "cluster-ips-check",
        &format!("{ip} daddr @cluster-ips reject comment \"Reject traffic to invalid ports of ClusterIPs\""),
    );
    tx.rule(
        "cluster-ips-check",
        &format!(
            "{ip} daddr {{ {} }} drop comment \"Drop traffic to unallocated ClusterIPs\"",
            cidr_in_family(&spec.service_cidr, family)
        ),
    );
    tx.rule("reject-chain", "reject");
    tx.element("nodeport-ips", &in_family(spec.node_ip, family).to_string());

    for svc in spec.services_in(family) {
        for port in &svc.ports {
            write_service_port(&mut tx, spec, svc, port);
        }
    }
    format!("{}{}{}", tx.decls, tx.rules, tx.elements)
}

/// The lab's transaction: create-then-delete the table (so the delete never fails), then the full
/// kube-proxy transaction, applied atomically by one `nft -f`.
pub fn lab_transaction(spec: &ClusterSpec) -> String {
    lab_transaction_in(spec, IpFamily::V4)
}

/// [`lab_transaction`] for one family's table.
pub fn lab_transaction_in(spec: &ClusterSpec, family: IpFamily) -> String {
    let t = table(family);
    format!(
        "add table {t}\ndelete table {t}\n{}",
        kube_proxy_transaction_in(spec, family)
    )
}

fn write_service_port(tx: &mut Tx, spec: &ClusterSpec, svc: &ServiceSpec, port: &ServicePortSpec) {
    let name = svc.port_name(port);
    let proto = port.protocol.as_str();
    let base = service_base(svc, port);
    let cluster_chain = format!("service-{base}");
    let local_chain = format!("local-{base}");
    let external_chain = format!("external-{base}");
    let family = tx.family;
    let (t, ip, addr_type) = (tx.t, tx.ip, tx.addr_type);
    let eps = spec.endpoints_in(svc, port, family);
    let cat = categorize(spec, svc, &eps);
    let cluster_cidr = cidr_in_family(&spec.cluster_cidr, family);
    let external_ips: Vec<_> = svc.external_ips.iter().map(|&a| in_family(a, family)).collect();
    let load_balancer_ips: Vec<_> = svc.load_balancer_ips.iter().map(|&a| in_family(a, family)).collect();

    let uses_cluster_chain = !cat.cluster.is_empty() && uses_cluster_endpoints(svc);
    let uses_local_chain = !cat.local.is_empty() && uses_local_endpoints(svc);
    let has_endpoints = cat.has_any;
    let mut internal_chain = &cluster_chain;
    let mut has_internal = has_endpoints;
    if svc.internal_policy_local() {
        internal_chain = &local_chain;
        if cat.local.is_empty() {
            has_internal = false;
        }
    }
    let mut external_policy_chain = &cluster_chain;
    let mut has_external = has_endpoints;
    if svc.external_policy_local() {
        external_policy_chain = &local_chain;
        if cat.local.is_empty() {
            has_external = false;
        }
    }
    let uses_ext_chain = has_endpoints && svc.externally_accessible();
    let (internal_verdict, external_verdict) = if !has_endpoints {
        ("goto reject-chain", "goto reject-chain")
    } else {
        ("drop", "drop")
    };

    // Declarations first.
    if uses_ext_chain {
        tx.chain(&external_chain);
    }
    let firewall_chain = format!("firewall-{base}");
    if svc.uses_firewall() {
        tx.chain(&firewall_chain);
    }
    if uses_cluster_chain {
        tx.chain(&cluster_chain);
    }
    if uses_local_chain {
        tx.chain(&local_chain);
    }
    for ep in &cat.all_reachable {
        let ep_base = endpoint_base(svc, port, ep);
        tx.chain(&format!("endpoint-{ep_base}"));
        if let SessionAffinity::ClientIP { timeout_seconds } = svc.session_affinity {
            let _ = writeln!(
                tx.decls,
                "add set {t} affinity-{ep_base} {{ type {addr_type} ; flags dynamic,timeout ; timeout {timeout_seconds}s ; }}"
            );
        }
    }

    let cip = in_family(svc.cluster_ip, family);
    let sport = port.port;
    tx.element("cluster-ips", &cip.to_string());
    if has_internal {
        tx.element(
            "service-ips",
            &format!("{cip} . {proto} . {sport} : goto {internal_chain}"),
        );
    } else {
        tx.element(
            "no-endpoint-services",
            &format!("{cip} . {proto} . {sport} comment \"{name}\" : {internal_verdict}"),
        );
    }
    for addr in external_ips.iter().chain(load_balancer_ips.iter()) {
        if has_endpoints {
            tx.element(
                "service-ips",
                &format!("{addr} . {proto} . {sport} : goto {external_chain}"),
            );
        }
        if !has_external {
            tx.element(
                "no-endpoint-services",
                &format!("{addr} . {proto} . {sport} comment \"{name}\" : {external_verdict}"),
            );
        }
    }
    if svc.uses_firewall() {
        for addr in &load_balancer_ips {
            tx.element(
                "firewall-ips",
                &format!("{addr} . {proto} . {sport} comment \"{name}\" : goto {firewall_chain}"),
            );
        }
        // Source ranges, and the load-balancer IPs themselves when a range holds the node's
        // address (hairpin from the node).
        let mut sources: Vec<String> = svc.source_ranges.iter().map(|c| cidr_in_family(c, family)).collect();
        // The IPv4 answer holds for the IPv6 twins too (`ipv6_twin_cidr` keeps containment).
        if svc
            .source_ranges
            .iter()
            .any(|c| super::iptables::cidr_holds(c, spec.node_ip))
        {
            sources.extend(load_balancer_ips.iter().map(|a| a.to_string()));
        }
        tx.rule(
            &firewall_chain,
            &format!("{ip} saddr != {{ {} }} drop", sources.join(", ")),
        );
    }
    if let Some(np) = port.node_port {
        if has_endpoints {
            tx.element("service-nodeports", &format!("{proto} . {np} : goto {external_chain}"));
        }
        if !has_external {
            tx.element(
                "no-endpoint-nodeports",
                &format!("{proto} . {np} comment \"{name}\" : {external_verdict}"),
            );
        }
    }

    if has_internal {
        tx.rule(
            internal_chain,
            &format!("{ip} daddr {cip} {ip} saddr != {cluster_cidr} jump mark-for-masquerade"),
        );
    }
    if uses_ext_chain {
        if !svc.external_policy_local() {
            tx.rule(&external_chain, "jump mark-for-masquerade");
        } else {
            tx.rule(
                &external_chain,
                &format!("{ip} saddr {cluster_cidr} goto {cluster_chain} comment \"short-circuit pod traffic\""),
            );
            tx.rule(
                &external_chain,
                "fib saddr type local jump mark-for-masquerade comment \"masquerade local traffic\"",
            );
            tx.rule(
                &external_chain,
                &format!("fib saddr type local goto {cluster_chain} comment \"short-circuit local traffic\""),
            );
        }
        if has_external {
            tx.rule(&external_chain, &format!("goto {external_policy_chain}"));
        }
    }
    if uses_cluster_chain {
        write_service_to_endpoint_rules(tx, svc, port, &cluster_chain, &cat.cluster);
    }
    if uses_local_chain {
        write_service_to_endpoint_rules(tx, svc, port, &local_chain, &cat.local);
    }
    for ep in &cat.all_reachable {
        let ep_base = endpoint_base(svc, port, ep);
        let chain = format!("endpoint-{ep_base}");
        tx.rule(&chain, &format!("{ip} saddr {} jump mark-for-masquerade", ep.ip));
        if matches!(svc.session_affinity, SessionAffinity::ClientIP { .. }) {
            tx.rule(&chain, &format!("update @affinity-{ep_base} {{ {ip} saddr }}"));
        }
        tx.rule(&chain, &format!("meta l4proto {proto} dnat to {}", ep.addr()));
    }
}

fn write_service_to_endpoint_rules(
    tx: &mut Tx,
    svc: &ServiceSpec,
    port: &ServicePortSpec,
    chain: &str,
    eps: &[EndpointInfo],
) {
    if matches!(svc.session_affinity, SessionAffinity::ClientIP { .. }) {
        for ep in eps {
            let ep_base = endpoint_base(svc, port, ep);
            let ip = tx.ip;
            tx.rule(
                chain,
                &format!("{ip} saddr @affinity-{ep_base} goto endpoint-{ep_base}"),
            );
        }
    }
    let elements: Vec<String> = eps
        .iter()
        .enumerate()
        .map(|(i, ep)| format!("{i} : goto endpoint-{}", endpoint_base(svc, port, ep)))
        .collect();
    tx.rule(
        chain,
        &format!("numgen random mod {} vmap {{ {} }}", eps.len(), elements.join(" , ")),
    );
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lab::spec::{PodSpec, TrafficPolicy};
    use crate::model::Protocol;

    fn spec() -> ClusterSpec {
        ClusterSpec::new()
            .service(ServiceSpec::new("ns1", "svc1", Ipv4Addr::new(10, 96, 0, 41)).port("p80", 80, 80, Protocol::Tcp))
            .pod(PodSpec::new("ns1", "a", Ipv4Addr::new(10, 180, 0, 1)).label("app", "svc1"))
    }

    #[test]
    fn chain_names_match_kube_proxy() {
        // Reference §3.3: kube-proxy's golden test names.
        let s = spec();
        assert_eq!(
            format!("service-{}", service_base(&s.services[0], &s.services[0].ports[0])),
            "service-ULMVA6XW-ns1/svc1/tcp/p80"
        );
        let eps = s.endpoints(&s.services[0], &s.services[0].ports[0]);
        assert_eq!(
            format!(
                "endpoint-{}",
                endpoint_base(&s.services[0], &s.services[0].ports[0], &eps[0])
            ),
            "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
        );
    }

    #[test]
    fn chains_are_declared_before_use() {
        let text = kube_proxy_transaction(&spec());
        let first_rule = text.find("add rule").unwrap();
        let last_chain = text.rfind("add chain").unwrap();
        assert!(last_chain < first_rule);
        assert!(text.contains(
            "add rule ip kube-proxy service-ULMVA6XW-ns1/svc1/tcp/p80 numgen random mod 1 vmap { 0 : goto endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80 }"
        ));
        assert!(text.contains(
            "add element ip kube-proxy service-ips { 10.96.0.41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }"
        ));
        assert!(text.contains("meta l4proto tcp dnat to 10.180.0.1:80"));
    }

    #[test]
    fn no_endpoints_go_to_reject_chain() {
        let mut s = spec();
        s.pods[0].ready = false;
        let text = kube_proxy_transaction(&s);
        assert!(text.contains(
            "add element ip kube-proxy no-endpoint-services { 10.96.0.41 . tcp . 80 comment \"ns1/svc1:p80\" : goto reject-chain }"
        ));
        assert!(!text.contains("service-ULMVA6XW"));
        assert!(text.contains("add element ip kube-proxy cluster-ips { 10.96.0.41 }"));
    }

    #[test]
    fn etp_local_without_local_endpoints_drops_nodeport() {
        let s = ClusterSpec::new()
            .service(
                ServiceSpec::new("ns2", "svc2", Ipv4Addr::new(10, 96, 0, 42))
                    .node_port("p80", 80, 80, Protocol::Tcp, 30080)
                    .external_policy(TrafficPolicy::Local),
            )
            .pod(
                PodSpec::new("ns2", "r", Ipv4Addr::new(10, 244, 2, 1))
                    .label("app", "svc2")
                    .on_node("n2"),
            );
        let text = kube_proxy_transaction(&s);
        assert!(text.contains(
            "add element ip kube-proxy no-endpoint-nodeports { tcp . 30080 comment \"ns2/svc2:p80\" : drop }"
        ));
        assert!(text.contains("service-nodeports { tcp . 30080 : goto external-"));
        assert!(!text.contains("goto local-"));
        assert!(text.contains("comment \"short-circuit local traffic\""));
    }

    #[test]
    fn the_ipv6_table_is_kube_proxys_ip6_table() {
        let s = spec().dual_stack();
        let text = lab_transaction_in(&s, IpFamily::V6);
        assert!(text.starts_with("add table ip6 kube-proxy\ndelete table ip6 kube-proxy\n"));
        assert!(
            !text.contains(" ip kube-proxy ") && !text.contains("ipv4_addr"),
            "{text}"
        );
        // The endpoint chain names the IPv6 address with `.` for `:`, as kube-proxy does.
        assert!(
            text.contains("add chain ip6 kube-proxy endpoint-")
                && text.contains("-ns1/svc1/tcp/p80__fd00.10.180..1/80"),
            "{text}"
        );
        assert!(text.contains("meta l4proto tcp dnat to [fd00:10:180::1]:80"), "{text}");
        assert!(text.contains(
            "add element ip6 kube-proxy service-ips { fd00:10:96::41 . tcp . 80 : goto service-ULMVA6XW-ns1/svc1/tcp/p80 }"
        ));
        assert!(text.contains("ip6 daddr { fd00:10:96::/48 } drop"), "{text}");
        assert!(
            text.contains("add element ip6 kube-proxy nodeport-ips { fd00:172:31::2 }"),
            "{text}"
        );
        // A single-stack Service has no IPv6 rules.
        let mut single = s.clone();
        single.services[0].single_stack = true;
        assert!(!lab_transaction_in(&single, IpFamily::V6).contains("svc1"));
    }

    #[test]
    fn probabilistic_dispatch_lists_every_ready_endpoint() {
        let mut s = spec();
        s.pods
            .push(PodSpec::new("ns1", "b", Ipv4Addr::new(10, 180, 0, 2)).label("app", "svc1"));
        s.pods.push(
            PodSpec::new("ns1", "c", Ipv4Addr::new(10, 180, 0, 3))
                .label("app", "svc1")
                .ready(false),
        );
        let text = kube_proxy_transaction(&s);
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto endpoint-"));
        assert!(!text.contains("10.180.0.3"));
    }
}
