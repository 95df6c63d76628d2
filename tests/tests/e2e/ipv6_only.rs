//! An IPv6-only node (issue 16): pods, Services (`ipFamilies: [IPv6]`, SingleStack) and
//! kube-proxy's rules exist in IPv6 alone (ip6tables / `table ip6 kube-proxy`; no IPv4 rule, no
//! IPv4 address but loopback's). The scenarios' own bodies (`scenarios.rs`) run on such a node,
//! traced without `--family`; each report must name IPv6 as the Service's only family and say
//! nothing of IPv4 (`family::on_ipv6_only`). The healthy one is also run on the IPv4 node and
//! compared (`family::across_stacks`): the two reports say the same thing about different
//! addresses.

use std::{net::Ipv4Addr, process::Command};

use d8_trace::{
    lab::{ClusterSpec, ListenerKind, PodSpec, ServiceSpec},
    model::{Protocol, ProxyMode},
};

use crate::{
    family::{Family, Flows, across_stacks, on_ipv6_only},
    scenarios::{self, Scenario},
};

/// `sh -c script` in the lab node's namespace: its stdout.
fn in_node(s: &Scenario, script: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", s.lab.node_ns(), "sh", "-c", script])
        .output()
        .expect("ip netns exec");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The lab builds what an IPv6-only node has: IPv6 rules alone, no IPv4 address off loopback,
/// and an API of IPv6 single-stack Services and IPv6 EndpointSlices.
fn node_is_ipv6_only(mode: ProxyMode) {
    let spec = ClusterSpec::new()
        .service(ServiceSpec::new("default", "web", Ipv4Addr::new(10, 96, 0, 10)).port("http", 80, 8080, Protocol::Tcp))
        .pod(
            PodSpec::new("default", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                .label("app", "web")
                .listen(8080, ListenerKind::Http),
        );
    let s = Scenario::up_in(spec, mode, Family::V6Only);
    let v4_rules = in_node(&s, "iptables-save; nft list tables");
    assert!(
        !v4_rules.contains("KUBE-") && !v4_rules.contains("table ip kube-proxy"),
        "{mode:?}: IPv4 kube-proxy rules on an IPv6-only node:\n{v4_rules}"
    );
    let v6_rules = in_node(&s, "ip6tables-save; nft list tables");
    let want = match mode {
        ProxyMode::Nftables => "table ip6 kube-proxy",
        _ => "KUBE-SERVICES",
    };
    assert!(v6_rules.contains(want), "{mode:?}: no {want} in\n{v6_rules}");
    let v4_addrs = in_node(&s, "ip -4 -o addr show | grep -v ' lo ' || true");
    assert!(v4_addrs.trim().is_empty(), "IPv4 addresses off loopback:\n{v4_addrs}");
    let snapshot = s.lab.snapshot_json();
    let items = snapshot["items"].as_array().expect("items");
    let svc = items.iter().find(|i| i["kind"] == "Service").expect("Service");
    assert_eq!(svc["spec"]["ipFamilies"], serde_json::json!(["IPv6"]));
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(svc["spec"]["clusterIP"], "fd00:10:96::10");
    let slices: Vec<_> = items.iter().filter(|i| i["kind"] == "EndpointSlice").collect();
    assert_eq!(slices.len(), 1, "{slices:?}");
    assert_eq!(slices[0]["addressType"], "IPv6");
    let explain = s.explain("default/web");
    explain.assert_root("healthy");
    assert_eq!(explain.report.families.configured, ["IPv6"], "{}", explain.context);
}

#[test]
fn ipv6_only_node_iptables() {
    node_is_ipv6_only(ProxyMode::Iptables);
}

#[test]
fn ipv6_only_node_nftables() {
    node_is_ipv6_only(ProxyMode::Nftables);
}

#[test]
fn healthy_on_ipv6_only_node_iptables() {
    across_stacks(Flows::Counted, |fam| scenarios::healthy(ProxyMode::Iptables, fam));
}

#[test]
fn healthy_on_ipv6_only_node_nftables() {
    across_stacks(Flows::Counted, |fam| scenarios::healthy(ProxyMode::Nftables, fam));
}

// The other scenarios run on the IPv6-only node alone, each with its own assertions (written for
// either family) and `on_ipv6_only`'s: their IPv4 runs are `scenarios::`, and their comparison
// with IPv4 is made on a dual-stack node by `dual_stack::*_traced_over_ipv6_*`; a second IPv4
// run here would cost the host suite's time budget.

#[test]
fn no_endpoints_on_ipv6_only_node_iptables() {
    on_ipv6_only(scenarios::no_endpoints(ProxyMode::Iptables, Family::V6Only));
}

#[test]
fn no_endpoints_on_ipv6_only_node_nftables() {
    on_ipv6_only(scenarios::no_endpoints(ProxyMode::Nftables, Family::V6Only));
}

#[test]
fn stale_endpoint_on_ipv6_only_node_iptables() {
    on_ipv6_only(scenarios::stale_endpoint(
        ProxyMode::Iptables,
        scenarios::Api::Snapshot,
        Family::V6Only,
    ));
}

#[test]
fn stale_endpoint_on_ipv6_only_node_nftables() {
    on_ipv6_only(scenarios::stale_endpoint(
        ProxyMode::Nftables,
        scenarios::Api::Snapshot,
        Family::V6Only,
    ));
}

#[test]
fn mixed_stale_and_refused_on_ipv6_only_node_iptables() {
    on_ipv6_only(scenarios::mixed_incident(ProxyMode::Iptables, Family::V6Only));
}

#[test]
fn mixed_stale_and_refused_on_ipv6_only_node_nftables() {
    on_ipv6_only(scenarios::mixed_incident(ProxyMode::Nftables, Family::V6Only));
}
