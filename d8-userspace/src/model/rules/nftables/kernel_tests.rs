//! The kernel reader against the `nft` tool, on real tables: every rule set the lab writes (its
//! scenarios' Services, the demo's, the fixtures' two layouts) and kube-proxy's table at 1,000 and
//! 10,000 Services (`testdata/rules/gen_large.py`) are loaded with `nft -f` into a network
//! namespace of their own, read both ways (`--rules-from kernel` and `tools`), and the readings
//! must be equal: the same Services, frontends, endpoints, rule references and renderings, the
//! same warnings but for the source they name.
//!
//! These need root and `nft`. Without them they fail, naming what is missing, unless
//! `D8_SKIP_ROOT_TESTS=1` is set: then each prints `SKIPPED <test>: <reason>` and returns
//! (`root_test::can_run`).

use crate::lab::nftables::kube_proxy_transaction;
use crate::lab::spec::{ClusterSpec, ListenerKind, PodSpec, ServiceSpec, TrafficPolicy};
use crate::model::rules::root_test::{self, TestNs};
use crate::model::rules::{ModeReading, RulesFrom, read_nftables_mode};
use crate::model::{Protocol, ServiceRef};

/// Whether the test can run here (root, `nft`); see [`root_test::can_run`].
fn can_run(test: &str) -> bool {
    root_test::can_run(test, "nft", "nftables")
}

/// The test's own network namespace.
struct Ns(TestNs);

impl Ns {
    fn new(tag: &str) -> Self {
        Ns(TestNs::new("nftk", tag))
    }

    /// `nft -f FILE` (or `-j -f`) inside the namespace.
    fn load(&self, text: &str, json: bool) {
        let tool: &[&str] = if json { &["nft", "-j", "-f"] } else { &["nft", "-f"] };
        self.0.load_file(tool, text);
    }

    fn flush(&self) {
        let _ = self.0.exec(&["nft", "flush", "ruleset"]);
    }

    /// The table read with `from`, inside the namespace.
    fn read(&self, from: RulesFrom) -> ModeReading {
        crate::lab::in_netns(&self.0.0, move || {
            read_nftables_mode(from, None).map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .unwrap_or_else(|e| panic!("reading with {from:?}: {e}"))
    }
}

/// Warnings without the source they name (`nft -j list table ip kube-proxy: …` or
/// `nf_tables netlink (table ip kube-proxy): …`).
fn normalized(warnings: &[String]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| {
            w.replace("nft -j list table ip6 kube-proxy", "SOURCE")
                .replace("nft -j list table ip kube-proxy", "SOURCE")
                .replace("nf_tables netlink (table ip6 kube-proxy)", "SOURCE")
                .replace("nf_tables netlink (table ip kube-proxy)", "SOURCE")
        })
        .collect()
}

/// The kernel's reading for `only` alone (`explain`'s read) has exactly that Service, as the
/// whole reading `tools` has it.
fn assert_scoped_same(ns: &Ns, tools: &ModeReading, only: &ServiceRef, what: &str) {
    let owned = only.clone();
    let scoped = crate::lab::in_netns(&ns.0.0, move || {
        read_nftables_mode(RulesFrom::Kernel, Some(&owned)).map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
    })
    .unwrap_or_else(|e| panic!("{what}: scoped read of {only}: {e}"));
    let want: Vec<_> = tools.services.iter().filter(|s| s.service == *only).collect();
    let got: Vec<_> = scoped.services.iter().collect();
    assert_eq!(got, want, "{what}: {only} read alone");
    assert_eq!(
        scoped.rules_present, tools.rules_present,
        "{what}: {only} read alone: rules_present"
    );
}

/// Reads the namespace's table both ways and asserts the readings are equal; then every
/// Service (at most 20 of them) read alone.
fn assert_same(ns: &Ns, what: &str) -> ModeReading {
    let r = assert_same_whole(ns, what);
    let tools = ns.read(RulesFrom::Tools);
    let step = (tools.services.len() / 20).max(1);
    for s in tools.services.iter().step_by(step) {
        assert_scoped_same(ns, &tools, &s.service, what);
    }
    r
}

fn assert_same_whole(ns: &Ns, what: &str) -> ModeReading {
    let (kernel, tools, auto) = (
        ns.read(RulesFrom::Kernel),
        ns.read(RulesFrom::Tools),
        ns.read(RulesFrom::Auto),
    );
    root_test::assert_same_readings(what, &kernel, &tools, &auto, normalized);
    kernel
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::new(a, b, c, d)
}

/// The lab's Service shapes: the end-to-end scenarios' (ClusterIP over two pods, no endpoints TCP
/// and UDP, externalTrafficPolicy=Local with a remote endpoint, UDP DNS), and one spec with
/// every policy kube-proxy tells apart (affinity, Local with and without local endpoints,
/// external and load-balancer IPs, source ranges, internalTrafficPolicy=Local).
pub(in crate::model::rules) fn lab_specs() -> Vec<(&'static str, ClusterSpec)> {
    let web = |name: &str, addr| {
        PodSpec::new("default", name, addr)
            .label("app", "web")
            .listen(8080, ListenerKind::Http)
    };
    let vip = ip(10, 96, 0, 10);
    vec![
        (
            "web",
            ClusterSpec::new()
                .service(ServiceSpec::new("default", "web", vip).port("http", 80, 8080, Protocol::Tcp))
                .pod(web("web-1", ip(10, 244, 1, 10)))
                .pod(web("web-2", ip(10, 244, 1, 11))),
        ),
        (
            "empty-tcp",
            ClusterSpec::new().service(
                ServiceSpec::new("default", "empty", vip)
                    .port("p", 80, 8080, Protocol::Tcp)
                    .selector("app", "nobody"),
            ),
        ),
        (
            "empty-udp",
            ClusterSpec::new().service(
                ServiceSpec::new("default", "empty", vip)
                    .port("p", 80, 8080, Protocol::Udp)
                    .selector("app", "nobody"),
            ),
        ),
        (
            "etp-local",
            ClusterSpec::new()
                .service(
                    ServiceSpec::new("default", "shop", vip)
                        .node_port("http", 80, 8080, Protocol::Tcp, 30080)
                        .external_ip(ip(203, 0, 113, 10))
                        .external_policy(TrafficPolicy::Local),
                )
                .pod(
                    PodSpec::new("default", "shop-1", ip(10, 244, 2, 10))
                        .label("app", "shop")
                        .listen(8080, ListenerKind::Http)
                        .on_node("node-b"),
                ),
        ),
        (
            "dns",
            ClusterSpec::new()
                .service(ServiceSpec::new("default", "dns", vip).port("dns", 53, 5353, Protocol::Udp))
                .pod(
                    PodSpec::new("default", "dns-1", ip(10, 244, 1, 10))
                        .label("app", "dns")
                        .listen(5353, ListenerKind::UdpEcho),
                ),
        ),
        (
            "policies",
            ClusterSpec::new()
                .service(
                    ServiceSpec::new("shop", "web", ip(10, 96, 1, 1))
                        .node_port("http", 80, 8080, Protocol::Tcp, 30080)
                        .client_ip_affinity(10800),
                )
                .service(
                    ServiceSpec::new("shop", "local", ip(10, 96, 1, 2))
                        .node_port("http", 80, 8080, Protocol::Tcp, 30082)
                        .selector("app", "web")
                        .external_policy(TrafficPolicy::Local),
                )
                .service(
                    ServiceSpec::new("shop", "remote", ip(10, 96, 1, 3))
                        .node_port("http", 80, 8080, Protocol::Tcp, 30083)
                        .external_ip(ip(192, 0, 2, 10))
                        .load_balancer_ip(ip(192, 0, 2, 20))
                        .selector("app", "far")
                        .external_policy(TrafficPolicy::Local),
                )
                .pod(
                    PodSpec::new("shop", "web-1", ip(10, 244, 1, 20))
                        .label("app", "web")
                        .listen(8080, ListenerKind::Http),
                )
                .pod(
                    PodSpec::new("shop", "far-1", ip(10, 244, 3, 20))
                        .label("app", "far")
                        .listen(8080, ListenerKind::Http)
                        .on_node("node-b"),
                ),
        ),
        (
            // loadBalancerSourceRanges: the firewall chain's `ip saddr != { … }` is an anonymous
            // interval set (prefixes, and the load-balancer IP itself since a range holds the
            // node's address); dual-stack, so the ip6 table has one of IPv6 prefixes.
            "source-ranges",
            ClusterSpec::new()
                .dual_stack()
                .service(
                    ServiceSpec::new("shop", "fw", ip(10, 96, 2, 1))
                        .node_port("http", 80, 8080, Protocol::Tcp, 30090)
                        .load_balancer_ip(ip(192, 0, 2, 30))
                        .source_range("203.0.113.0/24")
                        .source_range("198.51.100.7/32")
                        .source_range("172.31.0.0/16")
                        .selector("app", "web"),
                )
                .pod(
                    PodSpec::new("shop", "web-1", ip(10, 244, 1, 20))
                        .label("app", "web")
                        .listen(8080, ListenerKind::Http),
                ),
        ),
        ("demo", crate::cmd::demo::script::spec()),
    ]
}

#[test]
fn kernel_reading_equals_nft_on_every_lab_rule_set() {
    if !can_run("kernel_reading_equals_nft_on_every_lab_rule_set") {
        return;
    }
    let ns = Ns::new("lab");
    for (name, spec) in lab_specs() {
        ns.flush();
        ns.load(&kube_proxy_transaction(&spec), false);
        let r = assert_same(&ns, name);
        assert!(!r.services.is_empty(), "{name}: no Services read");
    }
    for (name, text) in [
        (
            "fixture layout A",
            include_str!("../../../../testdata/rules/nft-input-A.nft"),
        ),
        (
            "fixture layout B",
            include_str!("../../../../testdata/rules/nft-input-B.nft"),
        ),
        // An ip6 table: IPv6 keys, prefixes not on a byte boundary (/108), icmpv6 reject.
        (
            "ip6 table",
            include_str!("../../../../testdata/rules/nft-input-ip6.nft"),
        ),
    ] {
        ns.flush();
        ns.load(text, false);
        assert_same(&ns, name);
    }
}

#[test]
fn kernel_reading_falls_back_to_nft_on_what_it_does_not_know() {
    if !can_run("kernel_reading_falls_back_to_nft_on_what_it_does_not_know") {
        return;
    }
    let ns = Ns::new("fallback");
    ns.load(include_str!("../../../../testdata/rules/nft-input-B.nft"), false);
    // A `limit` statement: an expression the kernel reader does not decode.
    ns.load(
        "add rule ip kube-proxy reject-chain limit rate 10/second counter\n",
        false,
    );
    let auto = ns.read(RulesFrom::Auto);
    let tools = ns.read(RulesFrom::Tools);
    assert_eq!(auto.services, tools.services);
    assert!(
        auto.warnings
            .iter()
            .any(|w| w.contains("not read from the kernel") && w.contains("limit")),
        "{:?}",
        auto.warnings
    );
    assert!(
        auto.sources.iter().any(|s| s.starts_with("nft -j")),
        "{:?}",
        auto.sources
    );
    let forced = crate::lab::in_netns(&ns.0.0, || Ok(read_nftables_mode(RulesFrom::Kernel, None).is_err())).unwrap();
    assert!(forced, "--rules-from kernel must fail on what it does not know");
}

/// `gen_large.py`'s `nft -j` dump of `n` Services as an `nft -f` text transaction (chains first,
/// then the map's elements and the rules): `nft -f` loads text several times faster than JSON.
fn generated_table(n: usize) -> String {
    use super::json::J;
    use super::render::{render_elem, render_exprs};
    let (_, text) = root_test::gen_large(n);
    let dump: J<'_> = serde_json::from_str(&text).expect("generated JSON parses");
    let (mut decls, mut rules, mut elems) = (String::new(), String::new(), Vec::new());
    decls.push_str("add table ip kube-proxy\n");
    for o in dump.at("nftables").as_array().expect("nftables array") {
        let Some((kind, body)) = o.first_entry() else { continue };
        let name = body.at("name").as_str().unwrap_or_default();
        match kind {
            "chain" => decls.push_str(&format!("add chain ip kube-proxy {name}\n")),
            "map" => {
                decls.push_str(&format!(
                    "add map ip kube-proxy {name} {{ type ipv4_addr . inet_proto . inet_service : verdict; }}\n"
                ));
                for e in body.at("elem").as_array().into_iter().flatten() {
                    let pair = e.as_array().expect("map element pair");
                    let inner = pair[0].at("elem");
                    let comment = inner.at("comment").as_cow();
                    elems.push(render_elem(inner.at("val"), &pair[1], &comment));
                }
            }
            "rule" => {
                let chain = body.at("chain").as_str().unwrap_or_default();
                rules.push_str(&format!("add rule ip kube-proxy {chain} "));
                render_exprs(body.at("expr").as_array().map(Vec::as_slice).unwrap_or(&[]), &mut rules);
                rules.push('\n');
            }
            _ => {}
        }
    }
    let mut out = decls;
    out.push_str(&rules);
    for chunk in elems.chunks(1000) {
        out.push_str(&format!(
            "add element ip kube-proxy service-ips {{ {} }}\n",
            chunk.join(", ")
        ));
    }
    out
}

/// `n` generated Services (5 endpoints each) read both ways: the same model.
fn kernel_reading_equals_nft_at(n: usize) {
    let name = format!("kernel_reading_equals_nft_at_{n}_services");
    if !can_run(&name) {
        return;
    }
    let ns = Ns::new("scale");
    root_test::equal_at_scale(
        n,
        || ns.load(&generated_table(n), false),
        || assert_same(&ns, &format!("{n} Services")),
    );
}

#[test]
fn kernel_reading_equals_nft_at_1000_services() {
    kernel_reading_equals_nft_at(1000);
}

/// Minutes in the debug build the test suite uses (most of it the kernel loading the rules and
/// the text tool dumping them), so not in every run: `cargo xtask bench --only rules` runs it,
/// and says so in BENCHMARKS.md.
#[test]
#[ignore = "minutes in a debug build: cargo xtask bench --only rules runs it"]
fn kernel_reading_equals_nft_at_10000_services() {
    kernel_reading_equals_nft_at(10000);
}

/// Not a check: writes the fixture `testdata/rules/nft-netlink-B.bin` (the kernel's answers for
/// `table ip kube-proxy` in the namespace `D8_NFT_RECORD_NS`, every object kind and each set's
/// elements) for the unit test and the fuzz target's seed. Run by hand:
/// `D8_NFT_RECORD_NS=ns cargo test -p d8-userspace --lib record_netlink_fixture -- --ignored`.
#[test]
#[ignore = "writes a fixture; run by hand with D8_NFT_RECORD_NS"]
fn record_netlink_fixture() {
    use crate::kernel::nftables::{FAMILY_IP, Kind, Reader, recorded};
    let ns = std::env::var("D8_NFT_RECORD_NS").expect("D8_NFT_RECORD_NS names the namespace to record");
    let bytes = crate::lab::in_netns(&ns, || {
        let mut r = Reader::open().map_err(|e| crate::lab::Error::Io(e.to_string()))?;
        let mut out = Vec::new();
        let mut sets = Vec::new();
        for kind in [Kind::Table, Kind::Chain, Kind::Set, Kind::Rule] {
            r.dump(FAMILY_IP, kind, "kube-proxy", None, |o| {
                if kind == Kind::Set
                    && let Some(name) = crate::kernel::netlink::attr(o.attrs, 2)
                {
                    sets.push(String::from_utf8_lossy(name.strip_suffix(&[0]).unwrap_or(name)).into_owned());
                }
                out.extend(recorded(kind, o));
                true
            })
            .map_err(|e| crate::lab::Error::Io(e.to_string()))?;
        }
        for set in &sets {
            r.dump(FAMILY_IP, Kind::Elements, "kube-proxy", Some(set), |o| {
                out.extend(recorded(Kind::Elements, o));
                true
            })
            .map_err(|e| crate::lab::Error::Io(e.to_string()))?;
        }
        Ok(out)
    })
    .expect("recording");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rules/nft-netlink-B.bin");
    std::fs::write(path, bytes).expect("writing the fixture");
}
