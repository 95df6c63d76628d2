//! `d8-trace demo`: its own lab, its incident script, a live trace, one verdict per Service, and
//! nothing left behind: on a normal run, on Ctrl-C (while tracing and while building) and on an
//! error once attached.

use std::{
    io::{BufRead, BufReader, Read},
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
    ("default/cart", "kube_proxy_rules_missing"),
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

/// The BPF programs and links process `pid` holds open (from `/proc/PID/fdinfo`).
///
/// Other sessions may trace on this machine at the same time, so the machine-wide lists change
/// while a demo runs; what the demo must not leave is its own. Programs, not links, are what
/// every kernel shows: before 5.15 aya attaches tracepoints through perf events, and netlink TC
/// filters are no links either.
fn links_held_by(pid: u32) -> bpf::Held {
    bpf::held_by(pid)
}

/// The demo's own programs and links (read while it traced) must all be gone once it exited.
fn assert_links_gone(held: &bpf::Held) {
    // Four tracepoints and two packet programs (netfilter or TC).
    assert!(
        held.programs.len() >= 6,
        "the demo held its tracer's programs while tracing: {held:?}"
    );
    let left = bpf::still_loaded(held);
    assert!(
        left.is_empty(),
        "BPF programs or links of the demo left after it exited: {left:?}"
    );
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
    let started = Instant::now();
    let mut child = Command::new(binary())
        .args(d8_tests::run::with_hooks(&["demo", "-o", "json"]))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning d8-trace demo");
    let pid = child.id();
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out_pipe.read_to_string(&mut s);
        s
    });
    // stderr: narration and live lines; the demo's links are read once phase 2 began.
    let mut held = bpf::Held::default();
    let mut stderr = String::new();
    for line in BufReader::new(child.stderr.take().expect("piped stderr"))
        .lines()
        .map_while(Result::ok)
    {
        if line.contains("phase 2/5") {
            held = links_held_by(pid);
        }
        stderr.push_str(&line);
        stderr.push('\n');
    }
    let status = child.wait().expect("waiting for d8-trace demo");
    let took = started.elapsed();
    let stdout = reader.join().expect("stdout reader");
    eprintln!("d8-trace demo -o json took {took:?}");
    assert!(status.success(), "demo failed ({status}):\n{stderr}");
    assert!(
        took < Duration::from_secs(60),
        "the demo must finish within a minute: {took:?}"
    );

    // Narration and live flow lines go to stderr with -o json; the phases were all played.
    for n in 1..=5 {
        assert!(
            stderr.contains(&format!("phase {n}/5")),
            "phase {n} not narrated:\n{stderr}"
        );
    }
    assert!(
        stderr.contains("established"),
        "no live flow lines on stderr:\n{stderr}"
    );

    let reports = parse(&stdout, &stderr);
    let got: Vec<(&str, &str)> = reports.iter().map(|r| (r.service.as_str(), class(r))).collect();
    assert_eq!(got, EXPECTED, "root causes per Service; stderr:\n{stderr}");

    let by = |name: &str| reports.iter().find(|r| r.service == name).unwrap();
    // web: healthy flows through the ClusterIP, and the kubelet's probes counted as benign.
    let web = by("default/web");
    assert!(
        web.flows.iter().any(|f| f.class.as_deref() == Some("probe_rst")),
        "{}",
        web.describe_flows()
    );
    assert!(
        web.flows
            .iter()
            .any(|f| f.outcome == "established" && f.frontend.as_deref() == Some("10.96.0.10:80"))
    );
    // api: flows DNAT'd to the deleted pod are the stale ones; the API no longer lists it.
    let api = by("default/api");
    let stale: Vec<_> = api
        .flows
        .iter()
        .filter(|f| f.class.as_deref() == Some("stale_endpoint"))
        .collect();
    assert!(!stale.is_empty(), "{}", api.describe_flows());
    assert!(
        stale.iter().all(|f| f.backend.as_deref() == Some("10.244.1.22:8080")),
        "{}",
        api.describe_flows()
    );
    assert!(
        api.endpoints
            .iter()
            .any(|e| e.ip == "10.244.1.22" && e.in_rules && e.in_api == Some(false))
    );
    // orders: rejected, untranslated, with the REJECT rule as evidence.
    let orders = by("default/orders");
    assert!(
        orders
            .flows
            .iter()
            .any(|f| f.outcome == "rejected" && f.backend.is_none()),
        "{}",
        orders.describe_flows()
    );
    orders.evidence_with("has no endpoints");
    // shop: the external client's NodePort flows dropped by kube-proxy.
    let shop = by("default/shop");
    assert!(
        shop.flows
            .iter()
            .all(|f| f.client.starts_with("172.31.0.100:") && f.frontend.as_deref() == Some("172.31.0.2:30080")),
        "{}",
        shop.describe_flows()
    );
    shop.evidence_with("has no local endpoints");
    // cart: dual-stack, healthy over IPv4, its IPv6 ClusterIP untranslated: the verdict names
    // the family that fails.
    let cart = by("default/cart");
    assert_eq!(cart.families.configured, ["IPv4", "IPv6"], "{}", cart.describe_flows());
    assert_eq!(cart.families.seen, ["IPv4", "IPv6"], "{}", cart.describe_flows());
    let detail = &cart.root_cause.as_ref().expect("cart's root cause").detail;
    assert!(
        detail.starts_with("kube-proxy programmed default/cart for IPv4 but not for IPv6")
            && detail.contains("over IPv6"),
        "{detail}"
    );
    for f in &cart.flows {
        let (frontend, class) = (f.frontend.as_deref(), f.class.as_deref());
        match frontend {
            Some("10.96.0.14:80") => assert_eq!(class, Some("healthy"), "{}", cart.describe_flows()),
            Some("[fd00:10:96::14]:80") => {
                assert_eq!(class, Some("kube_proxy_rules_missing"), "{}", cart.describe_flows());
                assert_eq!(f.backend, None, "{}", cart.describe_flows());
            }
            other => panic!("cart flow to {other:?}: {}", cart.describe_flows()),
        }
    }
    assert!(reports.iter().all(|r| r.lost_events == 0));

    assert_eq!(
        lab_namespaces_of(pid),
        Vec::<String>::new(),
        "lab namespaces left behind"
    );
    assert_links_gone(&held);
}

#[test]
fn demo_interrupted_prints_what_it_traced_and_leaves_nothing() {
    d8_tests::require_root();
    let mut demo = Trace::start_until(&["demo", "-o", "json"], &[], "phase 1/5");
    let pid = demo.pid() as u32;
    demo.wait_for_stderr("phase 3/5", Duration::from_secs(30));
    let held = links_held_by(pid);
    demo.signal(libc::SIGINT);
    let done = demo.finish(Duration::from_secs(30));
    assert!(
        done.status.success(),
        "Ctrl-C ends the demo normally ({}):\n{}",
        done.status,
        done.stderr
    );
    assert!(
        !done.stderr.contains("phase 5/5"),
        "the script stopped at Ctrl-C:\n{}",
        done.stderr
    );
    let reports = parse(&done.stdout, &done.stderr);
    assert_eq!(reports.len(), EXPECTED.len());
    // Up to phase 3, api's stale endpoint was already traced.
    assert_eq!(class(&reports[1]), "stale_endpoint", "{}", reports[1].describe_flows());
    assert_eq!(
        lab_namespaces_of(pid),
        Vec::<String>::new(),
        "lab namespaces left behind"
    );
    assert_links_gone(&held);
}

#[test]
fn demo_interrupted_while_building_removes_the_lab() {
    d8_tests::require_root();
    let demo = Trace::start_until(&["demo", "-o", "json"], &[], "building a node");
    let pid = demo.pid() as u32;
    demo.signal(libc::SIGINT);
    let done = demo.finish(Duration::from_secs(30));
    assert!(
        done.status.success(),
        "Ctrl-C ends the demo normally ({}):\n{}",
        done.status,
        done.stderr
    );
    assert!(done.stderr.contains("interrupted"), "{}", done.stderr);
    assert_eq!(
        lab_namespaces_of(pid),
        Vec::<String>::new(),
        "lab namespaces left behind"
    );
}

#[test]
fn demo_error_once_attached_exits_3_and_leaves_nothing() {
    d8_tests::require_root();
    let demo = Trace::start_until(&["demo"], &[("D8_TRACE_FAIL_AFTER_ATTACH", "1")], "phase 1/5");
    let pid = demo.pid() as u32;
    let done = demo.finish(Duration::from_secs(30));
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(done.stderr.contains("failing after attach"), "{}", done.stderr);
    assert_eq!(
        lab_namespaces_of(pid),
        Vec::<String>::new(),
        "lab namespaces left behind"
    );
    // The links live only an instant here (attach, then the injected error), too short to read
    // them from outside; the trace's error path is `--svc`'s, which `cleanup` checks.
}

#[test]
fn demo_takes_no_selection_flags() {
    d8_tests::require_root();
    let out = Command::new(binary())
        .args(["demo", "--netns", "x"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// The demo on the TC hook set is refused with the reason (its first flows lose their replies
/// there: web would read backend_timeout), never played with a wrong verdict.
#[test]
fn demo_on_the_tc_hook_set_gives_the_same_verdicts() {
    d8_tests::require_root();
    let child = Command::new(binary())
        .args(["demo", "-o", "json", "--hooks", "tc"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("running d8-trace demo --hooks tc");
    let pid = child.id();
    let out = child.wait_with_output().expect("waiting for d8-trace demo --hooks tc");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "demo --hooks tc failed ({}):\n{stderr}",
        out.status
    );
    assert!(stderr.contains("tc hook set"), "the TC hook set traced:\n{stderr}");
    let reports = parse(&stdout, &stderr);
    let got: Vec<(&str, &str)> = reports.iter().map(|r| (r.service.as_str(), class(r))).collect();
    // The first requests to web run while the programs attach: their flows must be whole (or
    // absent), never unanswered.
    assert_eq!(
        got, EXPECTED,
        "root causes per Service on the TC hook set; stderr:\n{stderr}"
    );
    let web = reports.iter().find(|r| r.service == "default/web").unwrap();
    assert!(
        web.flows.iter().all(|f| f.outcome != "timeout"),
        "{}",
        web.describe_flows()
    );
    assert_eq!(lab_namespaces_of(pid), Vec::<String>::new(), "lab namespaces left");
}
