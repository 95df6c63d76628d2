//! The iptables-legacy kernel reader against `iptables-legacy-save`, on real tables: every rule
//! set the lab writes in iptables mode (the iptables-nft kernel test's: the end-to-end scenarios'
//! Services, every traffic policy, the demo's, loadBalancerSourceRanges, large-cluster mode; the
//! dual-stack ones in IPv6 too), the fixture kube-proxy input, and kube-proxy's chains at 1,000
//! and 10,000 Services are loaded with `iptables-legacy-restore` into a network namespace of
//! their own and read both ways: the text the reader renders must be the lines
//! `iptables-legacy-save` prints (chain counters aside), and the readings must be equal.
//!
//! These need root and `iptables-legacy-restore`/`-save` (the kernel's x_tables). Without them
//! they fail, naming what is missing, unless `D8_SKIP_ROOT_TESTS=1` is set: then each prints
//! `SKIPPED <test>: <reason>` and returns (`root_test::can_run`).

use super::kernel_tests::{assert_falls_back, iptables_specs};
use super::legacy::{read_rendered, record};
use crate::events::IpFamily;
use crate::kernel::xtables;
use crate::lab::iptables::lab_restore_in;
use crate::model::rules::nftables::kernel_tests::lab_specs;
use crate::model::rules::root_test::{self, TestNs};
use crate::model::rules::{ModeReading, RulesFrom, read_iptables_mode};

fn can_run(test: &str) -> bool {
    root_test::can_run(test, "iptables-legacy-save", "iptables")
}

/// The test's own network namespace, its legacy tables written with `iptables-legacy-restore`.
struct Ns(TestNs);

impl Ns {
    fn new(tag: &str) -> Self {
        Ns(TestNs::new("iptl", tag))
    }

    /// `ip(6)tables-legacy-restore` (without `--noflush`: the tables it names are replaced).
    fn restore(&self, v6: bool, text: &str) {
        let tool = if v6 {
            "ip6tables-legacy-restore"
        } else {
            "iptables-legacy-restore"
        };
        self.0.load_file(&[tool], text);
    }

    fn read(&self, from: RulesFrom) -> ModeReading {
        crate::lab::in_netns(&self.0.0, move || {
            read_iptables_mode(from, None).map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .unwrap_or_else(|e| panic!("reading with {from:?}: {e}"))
    }

    /// `ip(6)tables-legacy-save`'s filter and nat tables, each its lines without `#` comments and
    /// with the built-in chains' counters zeroed (the kernel counts packets, the reader prints
    /// `[0:0]` as iptables-nft-save does for kube-proxy's chains).
    fn saved(&self, v6: bool) -> Vec<(String, Vec<String>)> {
        let tool = if v6 {
            "ip6tables-legacy-save"
        } else {
            "iptables-legacy-save"
        };
        let out = self.0.exec(&[tool]);
        assert!(out.status.success(), "{tool} failed");
        tables(&String::from_utf8_lossy(&out.stdout))
    }

    fn rendered(&self, v6: bool) -> Vec<(String, Vec<String>)> {
        let text = crate::lab::in_netns(&self.0.0, move || {
            let names = xtables::legacy_tables(v6);
            read_rendered(v6, &names, None).map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .expect("legacy kernel read")
        .text;
        tables(&text)
    }
}

/// A save text's `filter` and `nat` tables by name (the order `iptables-legacy-save` prints
/// tables in is the kernel's registration order), counters zeroed.
fn tables(text: &str) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(name) = line.strip_prefix('*') {
            out.push((name.to_string(), Vec::new()));
        }
        let line = match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(i)) => format!("{} [0:0]", &line[..i]),
            _ => line.to_string(),
        };
        if let Some((_, lines)) = out.last_mut() {
            lines.push(line);
        }
    }
    out.retain(|(n, _)| n == "filter" || n == "nat");
    out.sort();
    out
}

/// Warnings without the source and place they name.
fn normalized(warnings: &[String]) -> Vec<String> {
    warnings
        .iter()
        .map(|w| {
            let mut w = w.clone();
            for source in [
                "x_tables getsockopt (ip filter, ip nat)",
                "x_tables getsockopt (ip6 filter, ip6 nat)",
                "ip6tables-legacy-save",
                "iptables-legacy-save",
            ] {
                w = w.replace(source, "SOURCE");
            }
            match w.split_once(": ") {
                Some((head, rest)) if head.starts_with("SOURCE ") => format!("SOURCE AT: {rest}"),
                _ => w,
            }
        })
        .collect()
}

/// The reader renders what `iptables-legacy-save` prints (both families' tables), and the
/// readings (kernel, tools, auto) are equal; every Service (at most 20) read alone is the one the
/// whole reading has.
fn assert_same(ns: &Ns, what: &str, v6_too: bool) -> ModeReading {
    for v6 in [false, true].into_iter().filter(|v6| !v6 || v6_too) {
        let (saved, rendered) = (ns.saved(v6), ns.rendered(v6));
        assert_eq!(
            rendered.iter().map(|t| &t.0).collect::<Vec<_>>(),
            saved.iter().map(|t| &t.0).collect::<Vec<_>>(),
            "{what} (v6: {v6}): tables"
        );
        for ((name, r), (_, s)) in rendered.iter().zip(&saved) {
            for (i, (r, s)) in r.iter().zip(s).enumerate() {
                assert_eq!(r, s, "{what} (v6: {v6}): table {name}, line {} of the rendering", i + 1);
            }
            assert_eq!(r.len(), s.len(), "{what} (v6: {v6}): table {name}: number of lines");
        }
    }
    let (kernel, tools, auto) = (
        ns.read(RulesFrom::Kernel),
        ns.read(RulesFrom::Tools),
        ns.read(RulesFrom::Auto),
    );
    root_test::assert_same_readings(what, &kernel, &tools, &auto, normalized);
    assert!(
        kernel.sources.iter().all(|s| s.starts_with("x_tables getsockopt")),
        "{what}: not read from x_tables: {:?}",
        kernel.sources
    );
    let step = (tools.services.len() / 20).max(1);
    for s in tools.services.iter().step_by(step) {
        let only = s.service.clone();
        let scoped = crate::lab::in_netns(&ns.0.0, move || {
            read_iptables_mode(RulesFrom::Kernel, Some(&only))
                .map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .unwrap_or_else(|e| panic!("{what}: scoped read of {}: {e}", s.service));
        assert_eq!(scoped.services, vec![s.clone()], "{what}: {} read alone", s.service);
    }
    kernel
}

#[test]
fn legacy_reading_equals_iptables_legacy_save_on_every_lab_rule_set() {
    if !can_run("legacy_reading_equals_iptables_legacy_save_on_every_lab_rule_set") {
        return;
    }
    for (name, spec) in lab_specs().into_iter().chain(iptables_specs()) {
        // A namespace per rule set: x_tables has no "flush everything", and a table of the
        // previous set must not linger.
        let ns = Ns::new("lab");
        ns.restore(false, &lab_restore_in(&spec, IpFamily::V4));
        if spec.dual_stack {
            ns.restore(true, &lab_restore_in(&spec, IpFamily::V6));
        }
        let r = assert_same(&ns, name, spec.dual_stack);
        assert!(!r.services.is_empty(), "{name}: no Services read");
    }
    let ns = Ns::new("fixture");
    ns.restore(false, include_str!("../../../../testdata/rules/iptables-input.rules"));
    assert_same(&ns, "fixture input", false);
}

#[test]
fn legacy_reading_falls_back_to_iptables_legacy_save_on_what_it_does_not_know() {
    if !can_run("legacy_reading_falls_back_to_iptables_legacy_save_on_what_it_does_not_know") {
        return;
    }
    let ns = Ns::new("fallback");
    ns.restore(false, include_str!("../../../../testdata/rules/iptables-input.rules"));
    assert_falls_back(&ns.0, "iptables-legacy");
}

/// kube-proxy's chains in both backends (a node that switched): the one with more rules is read,
/// as the save tools do it, with a warning naming both.
#[test]
fn both_backends_the_one_with_more_rules_wins() {
    if !can_run("both_backends_the_one_with_more_rules_wins") {
        return;
    }
    let ns = Ns::new("both");
    ns.restore(false, include_str!("../../../../testdata/rules/iptables-input.rules"));
    let (_, small) = lab_specs().into_iter().next().expect("a lab spec");
    ns.0.load_file(&["iptables-nft-restore"], &lab_restore_in(&small, IpFamily::V4));
    let (kernel, tools) = (ns.read(RulesFrom::Kernel), ns.read(RulesFrom::Tools));
    assert_eq!(kernel.services, tools.services);
    assert_eq!(
        kernel.sources,
        vec!["x_tables getsockopt (ip filter, ip nat)".to_string()]
    );
    assert!(
        kernel
            .warnings
            .iter()
            .any(|w| w.contains("both") && w.contains("x_tables")),
        "{:?}",
        kernel.warnings
    );
    // Read about one Service, each backend's reading holds that Service's part alone: the one
    // holding the Service must win, even when the other's static rules (kube-proxy's filter
    // chains, which `gen_large.py`'s nat-only sets lack) outnumber the Service's part.
    let ns = Ns::new("both-scoped");
    ns.restore(false, &root_test::gen_large(3).0);
    ns.0.load_file(&["iptables-nft-restore"], &lab_restore_in(&small, IpFamily::V4));
    let tools = ns.read(RulesFrom::Tools);
    assert_eq!(tools.services.len(), 3, "{:?}", tools.sources);
    for s in &tools.services {
        let only = s.service.clone();
        let scoped = crate::lab::in_netns(&ns.0.0, move || {
            read_iptables_mode(RulesFrom::Kernel, Some(&only))
                .map_err(|e| crate::lab::Error::Io(crate::error_chain(&e)))
        })
        .expect("scoped read");
        assert_eq!(scoped.services, vec![s.clone()], "{} read alone", s.service);
    }
}

/// `n` generated Services (5 endpoints each) read both ways: the same model.
fn legacy_reading_equals_iptables_legacy_save_at(n: usize) {
    let name = format!("legacy_reading_equals_iptables_legacy_save_at_{n}_services");
    if !can_run(&name) {
        return;
    }
    let ns = Ns::new("scale");
    root_test::equal_at_scale(
        n,
        || ns.restore(false, &root_test::gen_large(n).0),
        || assert_same(&ns, &format!("{n} Services"), false),
    );
}

#[test]
fn legacy_reading_equals_iptables_legacy_save_at_1000_services() {
    legacy_reading_equals_iptables_legacy_save_at(1000);
}

/// Minutes in the debug build the test suite uses, so not in every run: `cargo xtask bench
/// --only rules` runs it.
#[test]
#[ignore = "minutes in a debug build: cargo xtask bench --only rules runs it"]
fn legacy_reading_equals_iptables_legacy_save_at_10000_services() {
    legacy_reading_equals_iptables_legacy_save_at(10000);
}

/// Not a check: writes the fixture `testdata/rules/iptables-legacy.bin` (the legacy `filter` and
/// `nat` tables of the namespace `D8_IPT_RECORD_NS`, in `legacy::decode_recorded`'s form) for
/// the unit tests and the fuzz target's seed. Recorded with `testdata/rules/iptables-input.rules`
/// restored by `iptables-legacy-restore`, whose `iptables-legacy-save` output (counters zeroed)
/// is `testdata/rules/iptables-legacy-kernel.save`. Run by hand:
/// `D8_IPT_RECORD_NS=ns cargo test -p d8-userspace --lib record_iptables_legacy_fixture -- --ignored`.
#[test]
#[ignore = "writes a fixture; run by hand with D8_IPT_RECORD_NS"]
fn record_iptables_legacy_fixture() {
    let ns = std::env::var("D8_IPT_RECORD_NS").expect("D8_IPT_RECORD_NS names the namespace to record");
    let bytes = crate::lab::in_netns(&ns, || {
        let mut out = Vec::new();
        for table in ["filter", "nat"] {
            let t = xtables::read_table(false, table).map_err(|e| crate::lab::Error::Io(e.to_string()))?;
            out.extend(record(table, &t));
        }
        Ok(out)
    })
    .expect("recording");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rules/iptables-legacy.bin");
    std::fs::write(path, bytes).expect("writing the fixture");
}
