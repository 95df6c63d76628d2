//! `d8-trace demo`: its own lab, its incident script, a live trace, one verdict per Service, and
//! nothing left behind, on a normal run and on Ctrl-C.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use d8_tests::{
    bpf,
    report::Report,
    run::{Trace, binary},
};

/// What the demo's end-of-run JSON must say, Service by Service.
const EXPECTED: &[(&str, &str)] = &[
    ("default/web", "healthy"),
    ("default/api", "stale_endpoint"),
    ("default/orders", "no_endpoints"),
    ("default/shop", "etp_local_no_local_endpoints"),
];

fn lab_namespaces_of(pid: u32) -> Vec<String> {
    let prefix = format!("d8lab-{pid}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

fn parse(stdout: &str, stderr: &str) -> Vec<Report> {
    serde_json::from_str(stdout)
        .unwrap_or_else(|e| panic!("stdout is not a JSON array of reports ({e}):\n{stdout}\nstderr:\n{stderr}"))
}

fn class(r: &Report) -> &str {
    r.root_cause.as_ref().map(|c| c.class.as_str()).unwrap_or("none")
}

#[test]
fn demo_json_gives_each_service_its_verdict_and_leaves_nothing() {
    d8_tests::require_root();
    let links_before = bpf::d8_links();
    let started = Instant::now();
    let child = Command::new(binary())
        .args(["demo", "-o", "json"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning d8-trace demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for d8-trace demo");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("d8-trace demo -o json took {took:?}");
    assert!(out.status.success(), "demo failed ({}):\n{stderr}", out.status);
    assert!(took < Duration::from_secs(60), "the demo must finish within a minute: {took:?}");

    // Narration and live flow lines go to stderr with -o json; the phases were all played.
    for n in 1..=5 {
        assert!(stderr.contains(&format!("phase {n}/5")), "phase {n} not narrated:\n{stderr}");
    }
    assert!(stderr.contains("established"), "no live flow lines on stderr:\n{stderr}");

    let reports = parse(&stdout, &stderr);
    let got: Vec<(&str, &str)> = reports.iter().map(|r| (r.service.as_str(), class(r))).collect();
    assert_eq!(got, EXPECTED, "root causes per Service; stderr:\n{stderr}");

    let by = |name: &str| reports.iter().find(|r| r.service == name).unwrap();
    // web: healthy flows through the ClusterIP, and the kubelet's probes counted as benign.
    let web = by("default/web");
    assert!(web.flows.iter().any(|f| f.class.as_deref() == Some("probe_rst")), "{}", web.describe_flows());
    assert!(web.flows.iter().any(|f| f.outcome == "established" && f.frontend.as_deref() == Some("10.96.0.10:80")));
    // api: flows DNAT'd to the deleted pod are the stale ones; the API no longer lists it.
    let api = by("default/api");
    let stale: Vec<_> = api.flows.iter().filter(|f| f.class.as_deref() == Some("stale_endpoint")).collect();
    assert!(!stale.is_empty(), "{}", api.describe_flows());
    assert!(stale.iter().all(|f| f.backend.as_deref() == Some("10.244.1.22:8080")), "{}", api.describe_flows());
    assert!(api.endpoints.iter().any(|e| e.ip == "10.244.1.22" && e.in_rules && e.in_api == Some(false)));
    // orders: rejected, untranslated, with the REJECT rule as evidence.
    let orders = by("default/orders");
    assert!(orders.flows.iter().any(|f| f.outcome == "rejected" && f.backend.is_none()), "{}", orders.describe_flows());
    orders.evidence_with("has no endpoints");
    // shop: the external client's NodePort flows dropped by kube-proxy.
    let shop = by("default/shop");
    assert!(
        shop.flows.iter().all(|f| f.client.starts_with("172.31.0.100:") && f.frontend.as_deref() == Some("172.31.0.2:30080")),
        "{}",
        shop.describe_flows()
    );
    shop.evidence_with("has no local endpoints");
    assert!(reports.iter().all(|r| r.lost_events == 0));

    assert_eq!(lab_namespaces_of(pid), Vec::<String>::new(), "lab namespaces left behind");
    assert_eq!(bpf::d8_links(), links_before, "BPF links left behind");
}

#[test]
fn demo_interrupted_prints_what_it_traced_and_leaves_nothing() {
    d8_tests::require_root();
    let links_before = bpf::d8_links();
    let mut demo = Trace::start_until(&["demo", "-o", "json"], &[], "phase 1/5");
    let pid = demo.pid() as u32;
    demo.wait_for_stderr("phase 3/5", Duration::from_secs(30));
    demo.signal(libc::SIGINT);
    let done = demo.finish(Duration::from_secs(30));
    assert!(done.status.success(), "Ctrl-C ends the demo normally ({}):\n{}", done.status, done.stderr);
    assert!(!done.stderr.contains("phase 5/5"), "the script stopped at Ctrl-C:\n{}", done.stderr);
    let reports = parse(&done.stdout, &done.stderr);
    assert_eq!(reports.len(), EXPECTED.len());
    // Up to phase 3, api's stale endpoint was already traced.
    assert_eq!(class(&reports[1]), "stale_endpoint", "{}", reports[1].describe_flows());
    assert_eq!(lab_namespaces_of(pid), Vec::<String>::new(), "lab namespaces left behind");
    assert_eq!(bpf::d8_links(), links_before, "BPF links left behind");
}

#[test]
fn demo_takes_no_selection_flags() {
    d8_tests::require_root();
    let out = Command::new(binary()).args(["demo", "--netns", "x"]).stdin(Stdio::null()).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}
