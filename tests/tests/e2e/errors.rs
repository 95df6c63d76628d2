//! Bad input: one clear sentence on stderr, the contract's exit code, nothing attached.

use d8_tests::run::run_to_end;
use d8_trace::model::ProxyMode;

use crate::common::*;

#[test]
fn unknown_service_names_what_exists_and_exits_2() {
    let lab = lab(ProxyMode::Iptables);
    let out = run_to_end(&[
        "--svc",
        "default/nope",
        "--netns",
        lab.node_ns(),
        "--no-k8s",
        "--duration",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("default/nope") && out.stderr.contains("web"),
        "{}",
        out.stderr
    );
    // It failed before loading anything: no "attached" line.
    assert!(!out.stderr.contains("attached"), "{}", out.stderr);
}

/// `explain` checks the Service and its port exactly as a trace does: exit 2 with the sentence,
/// never a verdict (it once printed `healthy` for a Service that does not exist).
#[test]
fn explain_of_an_unknown_service_or_port_exits_2() {
    let lab = lab(ProxyMode::Iptables);
    let out = run_to_end(&[
        "explain",
        "--svc",
        "default/nope",
        "--netns",
        lab.node_ns(),
        "--no-k8s",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(out.stdout.is_empty(), "no report: {}", out.stdout);
    assert!(
        out.stderr.contains("default/nope") && out.stderr.contains("web"),
        "{}",
        out.stderr
    );
    let out = run_to_end(&[
        "explain",
        "--svc",
        "default/web:grpc",
        "--netns",
        lab.node_ns(),
        "--no-k8s",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("has no port `grpc`") && out.stderr.contains("80"),
        "{}",
        out.stderr
    );
    // A port number the Service lacks is a question about its ClusterIP with an answer
    // (`service_port_undefined`, issue 14), not a usage error.
    let out = run_to_end(&[
        "explain",
        "--svc",
        "default/web:999",
        "--netns",
        lab.node_ns(),
        "--no-k8s",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(
        out.report().root_cause.map(|r| r.class),
        Some("service_port_undefined".to_string()),
        "{}",
        out.stdout
    );
    let out = run_to_end(&[
        "explain",
        "--svc",
        "default/web:80",
        "--netns",
        lab.node_ns(),
        "--no-k8s",
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(0), "a port the Service has: {}", out.stderr);
}

#[test]
fn missing_network_namespace_exits_3() {
    d8_tests::require_root();
    let out = run_to_end(&["--svc", "default/web", "--netns", "d8-no-such-namespace", "--no-k8s"]);
    assert_eq!(out.status.code(), Some(3), "{}", out.stderr);
    assert!(
        out.stderr.contains("d8-no-such-namespace") && out.stderr.contains("ip netns list"),
        "{}",
        out.stderr
    );
}

#[test]
fn bad_flags_exit_2() {
    for args in [
        &["--svc", "web"][..],
        &["--svc", "a/b", "--duration", "soon"],
        &["--bogus"],
        &["--svc", "a/b", "-o", "xml"],
    ] {
        let out = run_to_end(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", out.stderr);
        assert!(!out.stderr.is_empty());
    }
}

#[test]
fn doctor_reports_the_hook_set() {
    d8_tests::require_root();
    let out = run_to_end(&["doctor", "--json"]);
    assert!(out.status.success(), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("doctor --json prints JSON");
    // What the kernel allows: the VM suite says what each guest's kernel must get
    // (D8_E2E_EXPECT_HOOK_SET); elsewhere netfilter links come with 6.4.
    let expected = std::env::var("D8_E2E_EXPECT_HOOK_SET").unwrap_or_else(|_| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut nums = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let (major, minor) = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
        if (major, minor) >= (6, 4) { "netfilter" } else { "tc" }.to_string()
    });
    assert_eq!(v["hook_set"], expected.as_str(), "the hook set this kernel allows: {v}");
    assert!(v["checks"].as_array().is_some_and(|c| !c.is_empty()));
}

/// A snapshot item that does not parse is skipped, the rest is used, and the report says so in
/// its `warnings` (JSON, and the text summary): a verdict is never silent about what it lacked.
#[test]
fn a_snapshot_item_that_does_not_parse_is_a_warning_in_the_report() {
    let lab = lab(ProxyMode::Iptables);
    let path = std::env::temp_dir().join(format!("d8-e2e-bad-item-{}.json", std::process::id()));
    lab.write_snapshot(&path).expect("snapshot");
    let mut list: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    list["items"].as_array_mut().unwrap().push(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "broken", "namespace": "default"},
        "spec": "not an object"
    }));
    std::fs::write(&path, serde_json::to_vec(&list).unwrap()).unwrap();
    let snapshot = path.display().to_string();
    let args = |o: &'static str| {
        vec![
            "explain".to_string(),
            "--svc".into(),
            "default/web".into(),
            "--netns".into(),
            lab.node_ns().into(),
            "--k8s-snapshot".into(),
            snapshot.clone(),
            "-o".into(),
            o.into(),
        ]
    };
    let run = |o| {
        let a = args(o);
        run_to_end(&a.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let json = run("json");
    let text = run("text");
    let _ = std::fs::remove_file(&path);
    assert_eq!(json.status.code(), Some(0), "{}", json.stderr);
    let report = json.report();
    assert_eq!(report.root_cause.as_ref().map(|r| r.class.as_str()), Some("healthy"));
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.kind == "api" && w.message.contains("broken")),
        "warnings: {:?}",
        report.warnings
    );
    assert!(
        text.stdout.contains("Warnings (what limits this report):"),
        "{}",
        text.stdout
    );
    assert!(text.stdout.contains("[api]"), "{}", text.stdout);
}
