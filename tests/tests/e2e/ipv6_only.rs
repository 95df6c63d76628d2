//! An IPv6-only node (issue 16): pods, Services (`ipFamilies: [IPv6]`, SingleStack) and
//! kube-proxy's rules exist in IPv6 alone (ip6tables / `table ip6 kube-proxy`; no IPv4 rule, no
//! IPv4 address but loopback's). The scenarios' own bodies (`scenarios.rs`) run on such a node,
//! traced without `--family`, and on the IPv4 node; `family::across_stacks` checks that the two
//! reports say the same thing about different addresses and that the IPv6-only one says nothing
//! of IPv4.

use std::{net::Ipv4Addr, process::Command};

use d8_trace::{
    lab::{ClusterSpec, ListenerKind, PodSpec, ServiceSpec},
    model::{Protocol, ProxyMode},
};

use crate::{
    family::{Family, Flows, across_stacks},
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

#[test]
fn no_endpoints_on_ipv6_only_node_iptables() {
    across_stacks(Flows::Counted, |fam| scenarios::no_endpoints(ProxyMode::Iptables, fam));
}

#[test]
fn no_endpoints_on_ipv6_only_node_nftables() {
    across_stacks(Flows::Counted, |fam| scenarios::no_endpoints(ProxyMode::Nftables, fam));
}

#[test]
fn stale_endpoint_on_ipv6_only_node_iptables() {
    across_stacks(Flows::Kinds, |fam| {
        scenarios::stale_endpoint(ProxyMode::Iptables, scenarios::Api::Snapshot, fam)
    });
}

#[test]
fn stale_endpoint_on_ipv6_only_node_nftables() {
    across_stacks(Flows::Kinds, |fam| {
        scenarios::stale_endpoint(ProxyMode::Nftables, scenarios::Api::Snapshot, fam)
    });
}

#[test]
fn mixed_stale_and_refused_on_ipv6_only_node_iptables() {
    across_stacks(Flows::Kinds, |fam| scenarios::mixed_incident(ProxyMode::Iptables, fam));
}

#[test]
fn mixed_stale_and_refused_on_ipv6_only_node_nftables() {
    across_stacks(Flows::Kinds, |fam| scenarios::mixed_incident(ProxyMode::Nftables, fam));
}
