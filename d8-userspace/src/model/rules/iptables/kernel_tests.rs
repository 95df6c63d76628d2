//! The iptables-nft kernel reader against `iptables-save`, on real tables: every rule set the
//! lab writes in iptables mode (the nftables kernel test's specs: the end-to-end scenarios'
//! Services, every traffic policy, the demo's; plus loadBalancerSourceRanges and kube-proxy's
//! large-cluster mode), the fixture kube-proxy input, and kube-proxy's chains at 1,000 and 10,000
//! Services (`testdata/rules/gen_large.py`) are loaded with `iptables-nft-restore` into a network
//! namespace of their own and read both ways (`--rules-from kernel` and `tools`): the text the
//! kernel reader renders must be the lines `iptables-nft-save` prints, and the readings must be
//! equal (Services, frontends, endpoints, rule references; warnings but for the source and the
//! place, a line or a rule handle, they name).
//!
//! These need root and `iptables-nft-restore`/`iptables-nft-save`. Without them they fail,
//! naming what is missing, unless `D8_SKIP_ROOT_TESTS=1` is set: then each prints
//! `SKIPPED <test>: <reason>` and returns (`root_test::can_run`).

use super::netlink::read_consistent;
use crate::kernel::nftables::FAMILY_IP;
use crate::lab::iptables::lab_restore;
use crate::lab::spec::{ClusterSpec, ServiceSpec};
use crate::model::Protocol;
use crate::model::rules::nftables::kernel_tests::lab_specs;
use crate::model::rules::root_test::{self, TestNs};
use crate::model::rules::{ModeReading, RulesFrom, read_iptables_mode};

/// Whether the test can run here (root, iptables-nft); see [`root_test::can_run`].
fn can_run(test: &str) -> bool {
    root_test::can_run(test, "iptables-nft-save", "iptables")
}

/// The test's own network namespace.
struct Ns(TestNs);

impl Ns {
    fn new(tag: &str) -> Self {
        Ns(TestNs::new("iptk", tag))
    }

    /// `iptables-nft-restore` (without `--noflush`: the tables it names are replaced).
    fn restore(&self, text: &str) {
        self.0.load_file(&["iptables-nft-restore"], text);
    }

    fn flush(&self) {
        let _ = self.0.exec(&["nft", "flush", "ruleset"]);
    }

    fn read(&self, from: RulesFrom) -> ModeReading {
        crate::lab::in_netns(&self.0.0, move || {
            read_iptables_mode(from, None).map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .unwrap_or_else(|e| panic!("reading with {from:?}: {e}"))
    }

    /// `iptables-nft-save`'s lines, without its `#` comments.
    fn saved(&self) -> Vec<String> {
        let out = self.0.exec(&["iptables-nft-save"]);
        assert!(out.status.success(), "iptables-nft-save failed");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    }

    /// The text the kernel reader renders.
    fn rendered(&self) -> Vec<String> {
        crate::lab::in_netns(&self.0.0, || {
            read_consistent(FAMILY_IP, None).map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .expect("kernel read")
        .text
        .lines()
        .map(str::to_string)
        .collect()
    }
}

/// Warnings without the source and place they name (`iptables-nft-save line 12: …`,
/// `nf_tables netlink (ip filter, ip nat) rule handle 40: …`).
fn normalized(warnings: &[String]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| {
            let w = w
                .replace("nf_tables netlink (ip filter, ip nat)", "SOURCE")
                .replace("nf_tables netlink (ip6 filter, ip6 nat)", "SOURCE")
                .replace("ip6tables-nft-save", "SOURCE")
                .replace("iptables-nft-save", "SOURCE");
            // "SOURCE line 12:" / "SOURCE rule handle 40:" -> "SOURCE AT:"
            match w.split_once(": ") {
                Some((head, rest)) if head.starts_with("SOURCE ") => format!("SOURCE AT: {rest}"),
                _ => w,
            }
        })
        .collect()
}

/// The kernel reader renders what `iptables-nft-save` prints, and the two readings are equal.
fn assert_same(ns: &Ns, what: &str) -> ModeReading {
    let saved = ns.saved();
    let rendered = ns.rendered();
    for (i, (r, s)) in rendered.iter().zip(&saved).enumerate() {
        assert_eq!(r, s, "{what}: line {} of the rendering", i + 1);
    }
    assert_eq!(rendered.len(), saved.len(), "{what}: number of lines");
    let (kernel, tools, auto) = (
        ns.read(RulesFrom::Kernel),
        ns.read(RulesFrom::Tools),
        ns.read(RulesFrom::Auto),
    );
    root_test::assert_same_readings(what, &kernel, &tools, &auto, normalized);
    // Every Service (at most 20 of them) read alone is the Service the whole reading has.
    let step = (tools.services.len() / 20).max(1);
    for s in tools.services.iter().step_by(step) {
        let only = s.service.clone();
        let scoped = crate::lab::in_netns(&ns.0.0, move || {
            read_iptables_mode(RulesFrom::Kernel, Some(&only))
                .map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .unwrap_or_else(|e| panic!("{what}: scoped read of {}: {e}", s.service));
        assert_eq!(scoped.services, vec![s.clone()], "{what}: {} read alone", s.service);
        assert_eq!(
            scoped.rules_present, tools.rules_present,
            "{what}: {} read alone",
            s.service
        );
    }
    kernel
}

/// Shapes the nftables specs do not write in iptables mode: loadBalancerSourceRanges (KUBE-FW
/// and KUBE-PROXY-FIREWALL) and large-cluster mode (over 1,000 endpoints: no per-endpoint
/// comments).
pub(super) fn iptables_specs() -> Vec<(&'static str, ClusterSpec)> {
    let lb = ServiceSpec::new("shop", "lb", std::net::Ipv4Addr::new(10, 96, 2, 1))
        .node_port("https", 443, 8443, Protocol::Tcp, 30443)
        .load_balancer_ip(std::net::Ipv4Addr::new(198, 51, 100, 9))
        .source_range("192.0.2.0/24")
        .source_range("10.0.0.0/8")
        .selector("app", "lb");
    let big = ServiceSpec::new("ns1", "big", std::net::Ipv4Addr::new(10, 96, 3, 1))
        .port("p80", 80, 8080, Protocol::Tcp)
        .selector("app", "big");
    vec![
        (
            "source ranges",
            ClusterSpec::new().service(lb).remote_pods("shop", "lb", "node-b", 2),
        ),
        (
            "large cluster",
            ClusterSpec::new().service(big).remote_pods(
                "ns1",
                "big",
                "node-b",
                crate::lab::iptables::LARGE_CLUSTER_ENDPOINTS + 1,
            ),
        ),
    ]
}

#[test]
fn kernel_reading_equals_iptables_save_on_every_lab_rule_set() {
    if !can_run("kernel_reading_equals_iptables_save_on_every_lab_rule_set") {
        return;
    }
    let ns = Ns::new("lab");
    for (name, spec) in lab_specs().into_iter().chain(iptables_specs()) {
        ns.flush();
        ns.restore(&lab_restore(&spec));
        let r = assert_same(&ns, name);
        assert!(!r.services.is_empty(), "{name}: no Services read");
    }
    // kube-proxy's own input with affinity, Local policies, firewall and external IPs.
    ns.flush();
    ns.restore(include_str!("../../../../testdata/rules/iptables-input.rules"));
    assert_same(&ns, "fixture input");
}

#[test]
fn kernel_reading_falls_back_to_iptables_save_on_what_it_does_not_know() {
    if !can_run("kernel_reading_falls_back_to_iptables_save_on_what_it_does_not_know") {
        return;
    }
    let ns = Ns::new("fallback");
    ns.restore(include_str!("../../../../testdata/rules/iptables-input.rules"));
    assert_falls_back(&ns.0, "iptables-nft");
}

/// With a `limit` match (an extension the kernel readers do not decode) added to a kube-proxy
/// chain by `iptables` (`iptables-nft` or `iptables-legacy`) in `ns`: `auto` reads with the save
/// tool and says why in a warning, and `--rules-from kernel` fails.
pub(super) fn assert_falls_back(ns: &TestNs, iptables: &str) {
    let out = ns.exec(&[
        iptables,
        "-t",
        "filter",
        "-A",
        "KUBE-FORWARD",
        "-m",
        "limit",
        "--limit",
        "10/second",
        "-j",
        "ACCEPT",
    ]);
    assert!(
        out.status.success(),
        "{iptables} -A: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |from| {
        crate::lab::in_netns(&ns.0, move || {
            read_iptables_mode(from, None).map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .unwrap_or_else(|e| panic!("reading with {from:?}: {e}"))
    };
    let (auto, tools) = (read(RulesFrom::Auto), read(RulesFrom::Tools));
    assert_eq!(auto.services, tools.services);
    assert!(
        auto.warnings
            .iter()
            .any(|w| w.contains("not read from the kernel") && w.contains("limit")),
        "{:?}",
        auto.warnings
    );
    assert_eq!(auto.sources, vec![format!("{iptables}-save")]);
    let forced = crate::lab::in_netns(&ns.0, || Ok(read_iptables_mode(RulesFrom::Kernel, None).is_err())).unwrap();
    assert!(forced, "--rules-from kernel must fail on what it does not know");
}

/// `n` generated Services (5 endpoints each) read both ways: the same model.
fn kernel_reading_equals_iptables_save_at(n: usize) {
    let name = format!("kernel_reading_equals_iptables_save_at_{n}_services");
    if !can_run(&name) {
        return;
    }
    let ns = Ns::new("scale");
    root_test::equal_at_scale(
        n,
        || ns.restore(&root_test::gen_large(n).0),
        || assert_same(&ns, &format!("{n} Services")),
    );
}

#[test]
fn kernel_reading_equals_iptables_save_at_1000_services() {
    kernel_reading_equals_iptables_save_at(1000);
}

/// Minutes in the debug build the test suite uses (most of it the kernel loading the rules and
/// the text tool dumping them), so not in every run: `cargo xtask bench --only rules` runs it,
/// and says so in BENCHMARKS.md.
#[test]
#[ignore = "minutes in a debug build: cargo xtask bench --only rules runs it"]
fn kernel_reading_equals_iptables_save_at_10000_services() {
    kernel_reading_equals_iptables_save_at(10000);
}

/// Not a check: writes the fixture `testdata/rules/iptables-nft-netlink.bin` (the kernel's
/// answers for iptables-nft's `ip filter` and `ip nat` in the namespace `D8_IPT_RECORD_NS`:
/// tables, chains, rules) for the unit tests and the fuzz target's seed. Recorded with
/// `testdata/rules/iptables-input.rules` restored, whose `iptables-nft-save` output is
/// `testdata/rules/iptables-nft.save`. Run by hand:
/// `D8_IPT_RECORD_NS=ns cargo test -p d8-userspace --lib record_iptables_netlink_fixture -- --ignored`.
#[test]
#[ignore = "writes a fixture; run by hand with D8_IPT_RECORD_NS"]
fn record_iptables_netlink_fixture() {
    use crate::kernel::nftables::{Kind, Reader, recorded};
    let ns = std::env::var("D8_IPT_RECORD_NS").expect("D8_IPT_RECORD_NS names the namespace to record");
    let bytes = crate::lab::in_netns(&ns, || {
        let mut r = Reader::open().map_err(|e| crate::lab::Error::Io(e.to_string()))?;
        let mut out = Vec::new();
        for table in ["filter", "nat"] {
            for kind in [Kind::Table, Kind::Chain, Kind::Rule] {
                r.dump(FAMILY_IP, kind, table, None, |o| {
                    // Older kernels list every table's chains: keep this table's objects.
                    let own = crate::kernel::netlink::attr(o.attrs, 1) == Some(format!("{table}\0").as_bytes());
                    if own {
                        out.extend(recorded(kind, o));
                    }
                    true
                })
                .map_err(|e| crate::lab::Error::Io(e.to_string()))?;
            }
        }
        Ok(out)
    })
    .expect("recording");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rules/iptables-nft-netlink.bin");
    std::fs::write(path, bytes).expect("writing the fixture");
}
