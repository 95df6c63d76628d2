//! `d8-trace daemon` in a lab node: metrics per Service match the traffic played, events hold
//! the non-healthy flows, SIGTERM detaches everything within 5 seconds.

use std::time::{Duration, Instant};

use d8_tests::{bpf, run::Trace};
use d8_trace::{lab, model::ProxyMode};

use crate::common::*;

fn scrape(lab: &lab::Lab) -> String {
    let out = lab::http_get(lab.node_ns(), addr(lab.node_ip(), 9810), "/metrics", TIMEOUT).expect("scrape");
    match out {
        lab::HttpOutcome::Response { status: 200, body, .. } => body,
        other => panic!("/metrics did not answer: {other:?}"),
    }
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// Waits until `series` reaches `want` (the daemon classifies every 2 s), or panics with the scrape.
fn wait_metric(lab: &lab::Lab, series: &str, want: f64) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(lab);
        if metric(&text, series) == Some(want) {
            return text;
        }
        if Instant::now() > deadline {
            panic!("{series} never reached {want}; metrics:\n{text}");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn metrics_and_events_follow_the_traffic_and_sigterm_detaches() {
    let lab = lab(ProxyMode::Iptables);
    let dir = std::env::temp_dir().join(format!("d8-daemon-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("snapshot.json");
    lab.write_snapshot(&snapshot).unwrap();
    let events = dir.join("events.jsonl");
    let links_before = bpf::d8_links();

    let args = [
        "daemon", "--netns", lab.node_ns(), "--metrics-addr", "0.0.0.0:9810",
        "--events", events.to_str().unwrap(), "--k8s-snapshot", snapshot.to_str().unwrap(),
    ];
    let daemon = Trace::start_until(&args, &[], "daemon ready");
    let ready = lab::http_get(lab.node_ns(), addr(lab.node_ip(), 9810), "/readyz", TIMEOUT).unwrap();
    assert_eq!(ready.status(), Some(200), "{ready:?}");

    for _ in 0..3 {
        let r = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).unwrap();
        assert_eq!(r.status(), Some(200));
    }
    let _ = lab::tcp_connect(lab.client_ns(), addr(EMPTY_VIP, 80), TIMEOUT).unwrap();
    let _ = lab::tcp_connect(lab.client_ns(), addr(CLOSED_VIP, 80), TIMEOUT).unwrap();

    wait_metric(&lab, r#"d8_trace_flows_total{service="default/web",class="healthy",outcome="established"}"#, 3.0);
    wait_metric(&lab, r#"d8_trace_flows_total{service="default/empty",class="no_endpoints",outcome="rejected"}"#, 1.0);
    let text = wait_metric(&lab, r#"d8_trace_service_verdict{service="default/closed",class="backend_refused"}"#, 1.0);
    assert_eq!(metric(&text, r#"d8_trace_service_verdict{service="default/web",class="healthy"}"#), Some(1.0), "{text}");
    assert_eq!(metric(&text, r#"d8_trace_service_verdict{service="default/empty",class="no_endpoints"}"#), Some(1.0), "{text}");
    assert_eq!(metric(&text, "d8_trace_lost_events"), Some(0.0), "{text}");
    assert!(metric(&text, "d8_trace_traced_targets").is_some_and(|t| t >= 5.0), "{text}");
    assert!(!text.contains("client="), "client addresses never become labels");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let flow_classes: Vec<(&str, &str)> = lines
        .iter()
        .filter(|l| l["type"] == "flow")
        .map(|l| (l["service"].as_str().unwrap(), l["class"].as_str().unwrap()))
        .collect();
    assert!(flow_classes.contains(&("default/empty", "no_endpoints")), "{lines:?}");
    assert!(flow_classes.contains(&("default/closed", "backend_refused")), "{lines:?}");
    assert!(!flow_classes.iter().any(|(_, c)| *c == "healthy"), "healthy flows are not events: {lines:?}");
    assert!(lines.iter().any(|l| l["type"] == "verdict" && l["service"] == "default/closed" && l["class"] == "backend_refused"));

    let started = Instant::now();
    daemon.signal(libc::SIGTERM);
    let done = daemon.finish(Duration::from_secs(5));
    assert!(done.status.success(), "{}", done.stderr);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(bpf::d8_links(), links_before, "links left after SIGTERM");
    let _ = std::fs::remove_dir_all(&dir);
}
