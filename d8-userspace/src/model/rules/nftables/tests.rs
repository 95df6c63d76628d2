//! The nftables reader's tests: fixtures of both base-chain layouts, hand-written tables for the
//! rarer forms, and mangled input that must never panic.

use std::borrow::Cow;
use std::cell::RefCell;
use std::net::IpAddr;

use serde_json::Value;

use super::json::{J, JVisitor, Pool};
use super::render::render_val;
use super::*;
use crate::model::{Frontend, FrontendKind, ProxyMode, Service};

const LAYOUT_A: &str = include_str!("../../../../testdata/rules/nft-layout-A.json");
const LAYOUT_B: &str = include_str!("../../../../testdata/rules/nft-layout-B.json");

fn svc<'a>(p: &'a Parsed, ns_name: &str) -> &'a Service {
    p.services
        .iter()
        .find(|s| s.service.to_string() == ns_name)
        .unwrap_or_else(|| panic!("{ns_name} not in model"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn frontend(s: &Service, kind: FrontendKind, port: u16) -> &Frontend {
    s.frontends
        .iter()
        .find(|f| f.kind == kind && f.port == port)
        .unwrap_or_else(|| panic!("no {kind:?}:{port} in {:#?}", s.frontends))
}

#[test]
fn chain_names_parse_and_hashes_verify() {
    let cn = parse_chain_name("service-2QRHZV4L-default/kubernetes/tcp/https").unwrap();
    assert!(cn.hash_ok);
    assert_eq!(cn.port_key(), "default/kubernetes:https");
    let cn = parse_chain_name("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80").unwrap();
    assert!(cn.hash_ok, "{cn:?}");
    assert_eq!(cn.endpoint, Some((ip("10.180.0.1"), 80)));
    let cn = parse_chain_name("external-NWXYI2MF-ns2/local-lb/tcp/").unwrap();
    assert_eq!(cn.port_key(), "ns2/local-lb");
    assert!(cn.hash_ok);
    assert!(
        !parse_chain_name("service-XXXXXXXX-default/kubernetes/tcp/https")
            .unwrap()
            .hash_ok
    );
    let v6 = parse_chain_name("endpoint-AAAAAAAA-ns/s/tcp/p__fd00.10.244..5/80").unwrap();
    assert_eq!(v6.endpoint, Some((ip("fd00:10:244::5"), 80)));
    assert_eq!(parse_chain_name("services"), None);
    assert_eq!(parse_chain_name("mark-for-masquerade"), None);
}

#[test]
fn both_layouts_give_the_same_services() {
    let a = parse(LAYOUT_A).unwrap();
    let b = parse(LAYOUT_B).unwrap();
    assert_eq!(a.layout, Some(Layout::A));
    assert_eq!(b.layout, Some(Layout::B));
    assert!(a.warnings.is_empty(), "{:#?}", a.warnings);
    assert!(b.warnings.is_empty(), "{:#?}", b.warnings);
    let strip = |p: &Parsed| {
        p.services
            .iter()
            .map(|s| {
                let fe: Vec<_> = s.frontends.iter().map(|f| (f.kind, f.ip, f.port)).collect();
                let ep: Vec<_> = s.endpoints.iter().map(|e| (e.ip, e.port, e.local, e.weight)).collect();
                (s.service.clone(), fe, ep, s.rules.problems.clone())
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(&a), strip(&b));
    assert_eq!(b.mode_hint, Some(ProxyMode::Nftables));
    assert!(b.rules_present);
    assert_eq!(b.node_port_ips, vec![ip("192.168.1.10")]);
}

#[test]
fn reads_frontends_endpoints_and_rule_refs() {
    let p = parse(LAYOUT_B).unwrap();
    let web = svc(&p, "ns1/web");
    let cip = frontend(web, FrontendKind::ClusterIp, 80);
    assert_eq!(cip.ip, ip("10.96.10.10"));
    assert_eq!(cip.port_name, "http");
    let rr = cip.rule.as_ref().unwrap();
    assert_eq!(&*rr.name, "service-ips");
    assert!(
        rr.text
            .contains("10.96.10.10 . tcp . 80 comment \"ns1/web:http\" : goto service-DK7ABAZC-ns1/web/tcp/http"),
        "{}",
        rr.text
    );
    assert_eq!(frontend(web, FrontendKind::ExternalIp, 80).ip, ip("203.0.113.10"));
    assert_eq!(frontend(web, FrontendKind::NodePort, 30080).ip, ip("192.168.1.10"));
    assert_eq!(web.endpoints.len(), 3);
    let e = &web.endpoints[0];
    assert_eq!((e.ip, e.port), (ip("10.244.1.10"), 8080));
    assert!((e.weight.unwrap() - 1.0 / 3.0).abs() < 1e-9);
    let rr = e.rule.as_ref().unwrap();
    assert!(rr.name.starts_with("endpoint-"));
    assert!(
        rr.text
            .starts_with("meta l4proto tcp dnat to 10.244.1.10:8080 # handle "),
        "{}",
        rr.text
    );
    assert!(web.rules.problems.is_empty(), "{:?}", web.rules.problems);
}

#[test]
fn no_endpoints_and_no_local_endpoints_facts() {
    let p = parse(LAYOUT_B).unwrap();
    let empty = svc(&p, "ns1/empty");
    assert!(empty.endpoints.is_empty());
    assert_eq!(empty.rules.no_endpoints.len(), 2);
    assert!(empty.rules.no_endpoints[0].text.contains("goto reject-chain"));
    assert_eq!(frontend(empty, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.20"));
    assert_eq!(frontend(empty, FrontendKind::NodePort, 30081).ip, ip("192.168.1.10"));
    let lb = svc(&p, "ns2/local-lb");
    assert_eq!(lb.rules.no_local_endpoints.len(), 2);
    assert!(
        lb.rules
            .no_local_endpoints
            .iter()
            .all(|r| r.text.ends_with(": drop") || r.text.contains(": drop #"))
    );
    assert_eq!(lb.endpoints.len(), 2);
}

#[test]
fn local_chain_locality_firewall_ranges_and_affinity() {
    let p = parse(LAYOUT_B).unwrap();
    let fw = svc(&p, "ns3/fw-local");
    let loc: Vec<_> = fw.endpoints.iter().map(|e| (e.ip, e.local)).collect();
    assert_eq!(
        loc,
        vec![(ip("10.244.1.40"), Some(true)), (ip("10.244.3.41"), Some(false))]
    );
    assert_eq!(fw.rules.source_ranges, vec!["192.0.2.0/24".to_string()]);
    let drops: Vec<(&str, &str)> = fw.rules.firewall_drops.iter().map(|r| (&*r.name, &*r.text)).collect();
    assert_eq!(
        drops,
        [(
            "firewall-JPQTEXM7-ns3/fw-local/tcp/https",
            "ip saddr != 192.0.2.0/24 drop # handle 129"
        )]
    );
    assert_eq!(frontend(fw, FrontendKind::LoadBalancer, 443).ip, ip("198.51.100.9"));
    // cluster-ips-check's reject (1.30+) applies to every Service whose ClusterIP is in cluster-ips.
    let reject = fw
        .rules
        .undefined_port_reject
        .as_ref()
        .expect("cluster-ips-check reject");
    assert_eq!(&*reject.name, "cluster-ips-check");
    assert!(
        reject.text.starts_with("ip daddr @cluster-ips reject") && reject.text.contains("# handle 69"),
        "{}",
        reject.text
    );
    // ... and its drop of the service CIDR's unallocated addresses is the node's.
    let drop = p.unallocated_drop.as_ref().expect("cluster-ips-check drop");
    assert_eq!(drop.cidrs, ["10.96.0.0/16"]);
    assert_eq!(&*drop.rule.name, "cluster-ips-check");
    assert!(
        drop.rule.text.starts_with("ip daddr 10.96.0.0/16 drop"),
        "{}",
        drop.rule.text
    );
    let sticky = svc(&p, "ns2/sticky");
    assert_eq!(sticky.rules.affinity_timeout_secs, Some(10800));
    assert_eq!(sticky.endpoints.len(), 2);
}

#[test]
fn numgen_mismatch_and_missing_chain_are_problems() {
    // ns1/web: mod 3 with three entries -> claim mod 4.
    let mut v: Value = serde_json::from_str(LAYOUT_B).unwrap();
    for o in v["nftables"].as_array_mut().unwrap() {
        if let Some(r) = o.get_mut("rule")
            && r["chain"].as_str().unwrap().starts_with("service-DK7ABAZC")
        {
            for e in r["expr"].as_array_mut().unwrap() {
                if let Some(vm) = e.get_mut("vmap") {
                    vm["key"]["numgen"]["mod"] = 4.into();
                    vm["data"]["set"][2][1]["goto"]["target"] =
                        "endpoint-ZZZZZZZZ-ns1/web/tcp/http__10.244.9.9/8080".into();
                }
            }
        }
    }
    let p = parse(&v.to_string()).unwrap();
    let web = svc(&p, "ns1/web");
    assert!(
        web.rules
            .problems
            .iter()
            .any(|m| m.contains("numgen random mod 4 with 3 entries")),
        "{:?}",
        web.rules.problems
    );
    assert!(
        web.rules.problems.iter().any(|m| m.contains("which does not exist")),
        "{:?}",
        web.rules.problems
    );
    assert_eq!(web.endpoints.len(), 2);
}

#[test]
fn map_pointing_at_a_flushed_chain_is_a_problem() {
    let mut v: Value = serde_json::from_str(LAYOUT_B).unwrap();
    v["nftables"].as_array_mut().unwrap().retain(|o| {
        o.get("rule")
            .is_none_or(|r| r["chain"].as_str() != Some("service-2QRHZV4L-default/kubernetes/tcp/https"))
    });
    let p = parse(&v.to_string()).unwrap();
    let k = svc(&p, "default/kubernetes");
    assert!(k.endpoints.is_empty());
    assert!(
        k.rules.problems.iter().any(|m| m.contains("which is empty")),
        "{:?}",
        k.rules.problems
    );
}

#[test]
fn inline_dnat_numgen_map_of_1_36() {
    let json = r#"{"nftables":[{"table":{"family":"ip","name":"kube-proxy","handle":1}},
      {"chain":{"family":"ip","table":"kube-proxy","name":"service-ULMVA6XW-ns1/svc1/tcp/p80","handle":5}},
      {"map":{"family":"ip","name":"service-ips","table":"kube-proxy","type":["ipv4_addr","inet_proto","inet_service"],"handle":3,"map":"verdict",
         "elem":[[{"concat":["172.30.0.41","tcp",80]},{"goto":{"target":"service-ULMVA6XW-ns1/svc1/tcp/p80"}}]]}},
      {"rule":{"family":"ip","table":"kube-proxy","chain":"service-ULMVA6XW-ns1/svc1/tcp/p80","handle":9,"expr":[
         {"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},
         {"dnat":{"family":"ip","addr":{"map":{"key":{"numgen":{"mode":"random","mod":1,"offset":0}},"data":{"set":[[0,{"concat":["10.180.0.1",80]}]]}}}}}]}}]}"#;
    let p = parse(json).unwrap();
    assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    let s = svc(&p, "ns1/svc1");
    assert_eq!(s.frontends[0].ip, ip("172.30.0.41"));
    assert_eq!(s.endpoints.len(), 1);
    assert_eq!((s.endpoints[0].ip, s.endpoints[0].port), (ip("10.180.0.1"), 80));
}

#[test]
fn ip6_table_and_old_endpoints_check_layout() {
    let ep = "endpoint-AAAAAAAA-ns1/v6/tcp/http__fd00.10.244..5/8080";
    let svc_chain = "service-BBBBBBBB-ns1/v6/tcp/http";
    let json = serde_json::json!({"nftables": [
        {"table": {"family": "ip6", "name": "kube-proxy", "handle": 1}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": "endpoints-check", "handle": 2}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": svc_chain, "handle": 3}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": ep, "handle": 4}},
        {"map": {"family": "ip6", "name": "service-ips", "table": "kube-proxy", "handle": 5, "map": "verdict",
                 "type": ["ipv6_addr", "inet_proto", "inet_service"],
                 "elem": [[{"concat": ["fd00:10:96::10", "tcp", 80]}, {"goto": {"target": svc_chain}}]]}},
        {"map": {"family": "ip6", "name": "service-nodeports", "table": "kube-proxy", "handle": 6, "map": "verdict",
                 "type": ["inet_proto", "inet_service"],
                 "elem": [[{"concat": ["tcp", 30080]}, {"goto": {"target": svc_chain}}]]}},
        {"rule": {"family": "ip6", "table": "kube-proxy", "chain": svc_chain, "handle": 7, "expr": [
            {"vmap": {"key": {"numgen": {"mode": "random", "mod": 1, "offset": 0}}, "data": {"set": [[0, {"goto": {"target": ep}}]]}}}]}},
        {"rule": {"family": "ip6", "table": "kube-proxy", "chain": ep, "handle": 8, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"dnat": {"family": "ip6", "addr": "fd00:10:244::5", "port": 8080}}]}}
    ]});
    let p = parse(&json.to_string()).unwrap();
    assert_eq!(p.layout, Some(Layout::EndpointsCheck));
    let s = svc(&p, "ns1/v6");
    assert_eq!(s.frontends[0].ip, ip("fd00:10:96::10"));
    // No nodeport-ips set: NodePorts on any local address, `::` in an ip6 table.
    assert_eq!(frontend(s, FrontendKind::NodePort, 30080).ip, ip("::"));
    assert_eq!((s.endpoints[0].ip, s.endpoints[0].port), (ip("fd00:10:244::5"), 8080));
    assert!(
        s.endpoints[0]
            .rule
            .as_ref()
            .unwrap()
            .text
            .contains("dnat to [fd00:10:244::5]:8080")
    );
    // The made-up hashes are reported, not fatal.
    assert_eq!(
        p.warnings.iter().filter(|w| w.contains("is not kube-proxy's")).count(),
        2,
        "{:#?}",
        p.warnings
    );
}

/// Addresses kube-proxy never writes in its `ip6 kube-proxy` table: an IPv4-mapped ClusterIP in
/// `service-ips` and `cluster-ips`, an IPv4-mapped `dnat to` target, a zone-scoped address in
/// `service-ips` (text a hand-edited or foreign JSON file may hold; the kernel has no zones).
/// Each is refused with a warning or a problem that names the address and why, never a crash,
/// and none enters the model.
#[test]
fn zone_scoped_and_ipv4_mapped_addresses_in_the_ip6_table_are_refused_with_a_reason() {
    let ep = "endpoint-AAAAAAAA-ns1/v6/tcp/http__fd00.10.244..5/8080";
    let svc_chain = "service-BBBBBBBB-ns1/v6/tcp/http";
    let other = "service-CCCCCCCC-ns1/zoned/tcp/http";
    let json = serde_json::json!({"nftables": [
        {"table": {"family": "ip6", "name": "kube-proxy", "handle": 1}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": "endpoints-check", "handle": 2}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": svc_chain, "handle": 3}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": ep, "handle": 4}},
        {"chain": {"family": "ip6", "table": "kube-proxy", "name": other, "handle": 5}},
        {"set": {"family": "ip6", "name": "cluster-ips", "table": "kube-proxy", "handle": 6, "type": "ipv6_addr",
                 "elem": ["::ffff:10.96.0.10", "fd00:10:96::10"]}},
        {"map": {"family": "ip6", "name": "service-ips", "table": "kube-proxy", "handle": 7, "map": "verdict",
                 "type": ["ipv6_addr", "inet_proto", "inet_service"],
                 "elem": [[{"concat": ["::ffff:10.96.0.10", "tcp", 80]}, {"goto": {"target": svc_chain}}],
                          [{"concat": ["fd00:10:96::10", "tcp", 80]}, {"goto": {"target": svc_chain}}],
                          [{"concat": ["fe80::10%eth0", "tcp", 80]}, {"goto": {"target": other}}]]}},
        {"rule": {"family": "ip6", "table": "kube-proxy", "chain": svc_chain, "handle": 8, "expr": [
            {"vmap": {"key": {"numgen": {"mode": "random", "mod": 1, "offset": 0}}, "data": {"set": [[0, {"goto": {"target": ep}}]]}}}]}},
        {"rule": {"family": "ip6", "table": "kube-proxy", "chain": ep, "handle": 9, "expr": [
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"dnat": {"family": "ip6", "addr": "::ffff:10.244.1.5", "port": 8080}}]}}
    ]});
    let p = parse(&json.to_string()).unwrap();
    let warnings = p.warnings.join("\n");
    assert!(
        warnings.contains("::ffff:10.96.0.10")
            && warnings.contains("is an IPv4-mapped IPv6 address, which kube-proxy never writes"),
        "{warnings}"
    );
    assert!(
        warnings.contains("fe80::10%eth0")
            && warnings.contains("is a zone-scoped address, which kube-proxy never writes"),
        "{warnings}"
    );
    let s = svc(&p, "ns1/v6");
    // The IPv6 ClusterIP is read; the mapped one is not a frontend.
    assert_eq!(s.frontends.len(), 1, "{:#?}", s.frontends);
    assert_eq!(s.frontends[0].ip, ip("fd00:10:96::10"));
    assert_eq!(s.frontends[0].kind, FrontendKind::ClusterIp);
    // The endpoint's dnat target is refused, and the problem says why.
    assert!(s.endpoints.is_empty(), "{:#?}", s.endpoints);
    assert!(
        s.rules
            .problems
            .iter()
            .any(|m| m.contains(&format!("{ep} has no dnat rule"))
                && m.contains("([::ffff:10.244.1.5]:8080 is an IPv4-mapped IPv6 address")),
        "{:#?}",
        s.rules.problems
    );
    for svc in &p.services {
        assert!(
            svc.frontends.iter().all(
                |f| !matches!(f.ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some() || v6.is_unicast_link_local())
            ),
            "{svc:#?}"
        );
    }
}

#[test]
fn unknown_rules_are_reported() {
    let mut v: Value = serde_json::from_str(LAYOUT_B).unwrap();
    v["nftables"].as_array_mut().unwrap().push(serde_json::json!({"rule": {"family": "ip", "table": "kube-proxy",
        "chain": "service-DK7ABAZC-ns1/web/tcp/http", "handle": 999, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"log": null}]}}));
    let p = parse(&v.to_string()).unwrap();
    assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
    assert!(
        p.warnings[0].contains("not understood") && p.warnings[0].contains("# handle 999"),
        "{}",
        p.warnings[0]
    );
}

/// Truncated JSON is an error; structurally valid JSON with odd values is read without a panic.
#[test]
fn truncated_and_mangled_json_never_panics() {
    for cut in (0..LAYOUT_B.len()).step_by(389) {
        let _ = parse(&LAYOUT_B[..cut]);
    }
    // Replace every scalar of one kind with odd values, object by object.
    let v: Value = serde_json::from_str(LAYOUT_A).unwrap();
    fn mangle(v: &Value, with: &Value) -> Value {
        match v {
            Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), mangle(x, with))).collect()),
            Value::Array(a) => Value::Array(a.iter().map(|x| mangle(x, with)).collect()),
            Value::Number(_) => with.clone(),
            other => other.clone(),
        }
    }
    for with in [
        Value::Null,
        Value::from(-1),
        Value::from(u64::MAX),
        Value::from("x"),
        Value::from(1e300),
    ] {
        let _ = parse(&mangle(&v, &with).to_string());
    }
    let objects = v["nftables"].as_array().unwrap();
    for skip in (0..objects.len()).step_by(5) {
        let fewer: Vec<&Value> = objects
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != skip)
            .map(|(_, o)| o)
            .collect();
        let p = parse(&serde_json::json!({ "nftables": fewer }).to_string()).unwrap();
        assert!(p.services.len() <= 7);
    }
}

#[test]
fn borrowed_json_answers_as_value_does() {
    let text = r#"{"b": 1, "a": {"x": "y"}, "a": {"x": "z"}, "s": "q\"uote", "n": null, "f": 1.5, "m": -3,
        "arr": [1, "two", {"k": true}, []], "e": {}}"#;
    let j: J = serde_json::from_str(text).unwrap();
    let v: Value = serde_json::from_str(text).unwrap();
    assert_eq!(j.to_value(), v);
    assert_eq!(j.to_string(), v.to_string());
    assert_eq!(j.at("a").at("x").as_str(), Some("z"));
    let (k, first) = j.first_entry().unwrap();
    assert_eq!((k, first.at("x").as_str()), ("a", Some("z")));
    assert!(matches!(
        j.at("arr").as_array().unwrap()[1],
        J::Str(Cow::Borrowed("two"))
    ));
    assert!(matches!(j.get("s"), Some(J::Str(Cow::Owned(s))) if s == "q\"uote"));
    assert_eq!(
        (j.at("m").as_u64(), j.at("b").as_u64(), j.at("f").as_u64()),
        (None, Some(1), None)
    );
    assert!(j.at("n").is_null() && j.at("missing").is_null() && j.at("arr").is_array());
    assert_eq!(j.at("e").first_entry(), None);
    assert_eq!(render_val(j.at("e")), "{}");
    // Trees given back to the pool are reused and read the same.
    let pool = RefCell::new(Pool::default());
    for _ in 0..3 {
        let mut de = serde_json::Deserializer::from_str(text);
        let k = serde::de::DeserializeSeed::deserialize(JVisitor(Some(&pool)), &mut de).unwrap();
        assert_eq!(k, j);
        pool.borrow_mut().recycle(k);
    }
    assert!(!pool.borrow().arrs.is_empty() && !pool.borrow().objs.is_empty());
}

#[test]
fn object_with_several_kinds_reads_the_smallest_as_value_did() {
    // "chain" < "rule": the chain is read, the rule is not; non-object elements are skipped.
    let json = r#"{"nftables":[1, "x", null, [1, {"a": 2}], {"table":{"family":"ip","name":"kube-proxy"}},
      {"rule":{"table":"kube-proxy","chain":"c","expr":[{"accept":null}]},"chain":{"table":"kube-proxy","name":"c"}},
      {"rule":"not an object"},
      {"rule":{"table":"kube-proxy","chain":"c","expr":[{"drop":null}]},"rule":{"table":"kube-proxy","chain":"d","expr":5}}]}"#;
    let p = parse(json).unwrap();
    assert!(p.rules_present);
    assert_eq!(p.rule_count, 1);
}

#[test]
fn errors_and_foreign_tables() {
    assert!(matches!(
        parse("Error: No such file or directory"),
        Err(ParseError::NotJson { .. })
    ));
    assert!(matches!(parse("{\"x\": 1}"), Err(ParseError::NotNftJson { .. })));
    let p = parse(
        r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"table":{"family":"ip","name":"filter","handle":1}}]}"#,
    )
    .unwrap();
    assert!(!p.rules_present && p.services.is_empty() && p.mode_hint.is_none());
}

/// The kernel's answers for the layout-B fixture table (`nft-netlink-B.bin`, recorded by
/// `kernel_tests::record_netlink_fixture`) decode to what `nft -j` printed for the same table at
/// the same moment (`nft-netlink-B.json`): without root, the kernel reader's decoding is checked
/// against the tool on every object kind kube-proxy writes.
#[test]
fn recorded_kernel_answers_read_as_nft_json_does() {
    let bin = include_bytes!("../../../../testdata/rules/nft-netlink-B.bin");
    let json = include_str!("../../../../testdata/rules/nft-netlink-B.json");
    let kernel = netlink::decode_dump(crate::kernel::nftables::FAMILY_IP, bin).unwrap();
    let tool = parse_named(json, "netlink").unwrap();
    assert!(kernel.rules_present && !kernel.services.is_empty());
    assert_eq!(kernel, tool);
}

/// Truncated and corrupted kernel answers are errors or partial tables, never panics.
#[test]
fn mangled_kernel_answers_never_panic() {
    let bin = include_bytes!("../../../../testdata/rules/nft-netlink-B.bin");
    for cut in (0..bin.len()).step_by(97) {
        let _ = netlink::decode_dump(crate::kernel::nftables::FAMILY_IP, &bin[..cut]);
    }
    let mut flipped = bin.to_vec();
    for i in (16..flipped.len()).step_by(13) {
        flipped[i] ^= 0x5a;
        let _ = netlink::decode_dump(crate::kernel::nftables::FAMILY_IP, &flipped);
        let _ = netlink::decode_dump(crate::kernel::nftables::FAMILY_IP6, &flipped);
        flipped[i] ^= 0x5a;
    }
}

#[test]
fn empty_chains_nothing_refers_to_are_not_part_of_the_model() {
    // A partial sync flushed ns9/gone's chains; kube-proxy deletes them a second later.
    let gone = [
        "service-AAAAAAAA-ns9/gone/tcp/http",
        "endpoint-BBBBBBBB-ns9/gone/tcp/http__10.244.9.9/8080",
    ];
    let extra: String = gone
        .iter()
        .enumerate()
        .map(|(i, n)| {
            format!(
                r#"{{"chain": {{"family": "ip", "table": "kube-proxy", "name": "{n}", "handle": {}}}}}, "#,
                900 + i
            )
        })
        .collect();
    let json = LAYOUT_B.replacen(r#"{"chain": "#, &format!("{extra}{{\"chain\": "), 1);
    assert!(json.contains(gone[0]), "fixture edited");
    let p = parse(&json).unwrap();
    let base = parse(LAYOUT_B).unwrap();
    assert_eq!(p.services.len(), base.services.len());
    assert!(p.services.iter().all(|s| s.service.namespace != "ns9"));
    assert_eq!(p.warnings, base.warnings);
}
