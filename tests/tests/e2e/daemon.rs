//! `d8-trace daemon` in a lab node: metrics per Service match the traffic played, events hold
//! the non-healthy flows, SIGTERM detaches everything within 5 seconds.

use std::time::{Duration, Instant};

use d8_tests::{apiserver::ApiServer, bpf, run::Trace};
use d8_trace::{lab, model::ProxyMode};

use crate::common::*;

/// SIGTERM: the daemon exits 0 within 5 s and nothing it held stays loaded.
fn stop(daemon: Trace, held: &bpf::Held) -> d8_tests::run::Finished {
    let started = Instant::now();
    daemon.signal(libc::SIGTERM);
    let done = daemon.finish(Duration::from_secs(5));
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?} to stop",
        started.elapsed()
    );
    assert_eq!(
        bpf::still_loaded(held),
        bpf::Held::default(),
        "links left after SIGTERM"
    );
    done
}

fn scrape(lab: &lab::Lab) -> String {
    let out = lab::http_get(lab.node_ns(), addr(lab.node_ip(), 9810), "/metrics", TIMEOUT).expect("scrape");
    match out {
        lab::HttpOutcome::Response { status: 200, body, .. } => body,
        other => panic!("/metrics did not answer: {other:?}"),
    }
}

pub(crate) fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// Waits until `series` reaches `want` (the daemon classifies every 2 s), or panics with the scrape.
pub(crate) fn wait_metric(lab: &lab::Lab, series: &str, want: f64) -> String {
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
    let pcap_dir = dir.join("pcap");
    std::fs::create_dir_all(&pcap_dir).unwrap();

    let args = [
        "daemon",
        "--netns",
        lab.node_ns(),
        "--metrics-addr",
        "0.0.0.0:9810",
        "--events",
        events.to_str().unwrap(),
        "--k8s-snapshot",
        snapshot.to_str().unwrap(),
        "--pcap-dir",
        pcap_dir.to_str().unwrap(),
    ];
    let daemon = Trace::start_until(&args, &[], "daemon ready");
    let held = bpf::held_by(daemon.pid() as u32);
    // Netfilter links, or on kernels without them (the VM's 6.1) TC programs and tracepoint links.
    assert!(
        held.links.len() + held.programs.len() >= 7,
        "the daemon holds its programs: {held:?}"
    );
    let ready = lab::http_get(lab.node_ns(), addr(lab.node_ip(), 9810), "/readyz", TIMEOUT).unwrap();
    assert_eq!(ready.status(), Some(200), "{ready:?}");

    for _ in 0..3 {
        let r = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).unwrap();
        assert_eq!(r.status(), Some(200));
    }
    let _ = lab::tcp_connect(lab.client_ns(), addr(EMPTY_VIP, 80), TIMEOUT).unwrap();
    let _ = lab::tcp_connect(lab.client_ns(), addr(CLOSED_VIP, 80), TIMEOUT).unwrap();

    wait_metric(
        &lab,
        r#"d8_trace_flows_total{service="default/web",class="healthy",outcome="established"}"#,
        3.0,
    );
    wait_metric(
        &lab,
        r#"d8_trace_flows_total{service="default/empty",class="no_endpoints",outcome="rejected"}"#,
        1.0,
    );
    let text = wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/closed",class="backend_refused"}"#,
        1.0,
    );
    assert_eq!(
        metric(
            &text,
            r#"d8_trace_service_verdict{service="default/web",class="healthy"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"d8_trace_service_verdict{service="default/empty",class="no_endpoints"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(metric(&text, "d8_trace_lost_events"), Some(0.0), "{text}");
    assert!(
        metric(&text, "d8_trace_traced_targets").is_some_and(|t| t >= 5.0),
        "{text}"
    );
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
    assert!(
        flow_classes.contains(&("default/closed", "backend_refused")),
        "{lines:?}"
    );
    assert!(
        !flow_classes.iter().any(|(_, c)| *c == "healthy"),
        "healthy flows are not events: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "verdict" && l["service"] == "default/closed" && l["class"] == "backend_refused")
    );

    stop(daemon, &held);
    // --pcap-dir: the failing flows' packets (rejected, refused), none of the healthy ones.
    let packets: Vec<crate::pcap::Packet> = std::fs::read_dir(&pcap_dir)
        .unwrap()
        .flatten()
        .flat_map(|e| crate::pcap::read(&e.path()))
        .collect();
    for (svc, vip) in [("default/empty", EMPTY_VIP), ("default/closed", CLOSED_VIP)] {
        assert!(
            packets
                .iter()
                .any(|p| p.comment.contains(svc) && p.dst == vip.to_string()),
            "no packet of {svc} to {vip}: {packets:#?}"
        );
    }
    assert!(
        packets.iter().any(|p| p.comment.contains("verdict backend_refused")),
        "{packets:#?}"
    );
    assert!(
        !packets
            .iter()
            .any(|p| p.comment.contains("default/web ") || p.dst == WEB_VIP.to_string()),
        "a healthy flow's packets: {packets:#?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn follows_rule_rewrites_and_stays_bounded_under_a_flood_of_flows() {
    let mut lab = lab(ProxyMode::Nftables);
    let args = [
        "daemon",
        "--netns",
        lab.node_ns(),
        "--metrics-addr",
        "0.0.0.0:9810",
        "--no-k8s",
        "--refresh-secs",
        "1",
        "--max-flows",
        "2000",
    ];
    let daemon = Trace::start_until(&args, &[], "daemon ready");
    let held = bpf::held_by(daemon.pid() as u32);

    // Rules alone say default/empty rejects (kube-proxy's "has no endpoints" rule).
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/empty",class="no_endpoints"}"#,
        1.0,
    );
    let before = metric(&scrape(&lab), "d8_trace_traced_targets").unwrap();
    // Rules that did not change are not read again (the nf_tables generation did not move).
    let unchanged = r#"d8_trace_rules_reads_total{result="unchanged"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&scrape(&lab), unchanged).unwrap_or(0.0) < 2.0 {
        assert!(
            Instant::now() < deadline,
            "every refresh read the rules:\n{}",
            scrape(&lab)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let reads = metric(&scrape(&lab), r#"d8_trace_rules_reads_total{result="read"}"#).unwrap();

    // kube-proxy rewrites the rules: default/empty gets an endpoint. The daemon follows without
    // restarting, and the next flow to it is healthy.
    let spec = spec().pod(
        d8_trace::lab::PodSpec::new("default", "empty-1", std::net::Ipv4Addr::new(10, 244, 1, 51))
            .label("app", "none")
            .listen(8080, d8_trace::lab::ListenerKind::Http),
    );
    lab.apply(spec).expect("rules rewritten");
    wait_metric(&lab, "d8_trace_traced_targets", before + 1.0);
    let text = scrape(&lab);
    assert!(
        metric(&text, r#"d8_trace_rules_reads_total{result="read"}"#).is_some_and(|r| r > reads),
        "the rewrite was read:\n{text}"
    );
    assert!(
        metric(&text, "d8_trace_rules_age_seconds").is_some_and(|a| (0.0..5.0).contains(&a)),
        "{text}"
    );
    let r = lab::http_get(lab.client_ns(), addr(EMPTY_VIP, 80), "/", TIMEOUT).unwrap();
    assert_eq!(r.status(), Some(200), "{r:?}");
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/empty",class="healthy"}"#,
        1.0,
    );

    // A flood of distinct flows: the table stays at its bound, the excess is evicted and counted.
    const FLOWS: usize = 6000;
    lab::in_netns(lab.client_ns(), || {
        for _ in 0..FLOWS {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("bind");
            let _ = s.send_to(b"q", addr(DNS_VIP, 53));
        }
        Ok(())
    })
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        let text = scrape(&lab);
        let evicted = metric(&text, "d8_trace_flows_evicted").unwrap_or(0.0);
        let lost = metric(&text, "d8_trace_lost_events").unwrap_or(0.0);
        let held = metric(&text, "d8_trace_flow_table_flows").unwrap_or(0.0);
        assert!(held <= 2000.0, "the flow table exceeds its bound: {held}");
        // Every flow is either still held, counted, evicted, or its events were lost (counted).
        if evicted > 0.0 || lost > 0.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "{FLOWS} flows through a 2000-flow table evicted nothing:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    let healthz = lab::http_get(lab.node_ns(), addr(lab.node_ip(), 9810), "/healthz", TIMEOUT).unwrap();
    assert_eq!(healthz.status(), Some(200), "still serving after the flood:\n{text}");

    stop(daemon, &held);
}

/// The lab's API served by the project's own list-and-watch server in the node's network
/// namespace (where the daemon connects from).
fn api_server(lab: &lab::Lab) -> ApiServer {
    let ns = lab.node_ns().to_string();
    let port = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(0));
    let server = ApiServer::start_with(move || {
        let want = port.load(std::sync::atomic::Ordering::Relaxed);
        let l = lab::in_netns(&ns, || {
            std::net::TcpListener::bind(("127.0.0.1", want)).map_err(|e| lab::Error::Io(e.to_string()))
        })
        .map_err(std::io::Error::other)?;
        port.store(l.local_addr()?.port(), std::sync::atomic::Ordering::Relaxed);
        Ok(l)
    })
    .expect("API server");
    server.sync(&lab.snapshot_json());
    server
}

/// `d8-trace daemon` in the lab's node with `server` as its API (a kubeconfig in a directory of
/// its own, returned for removal), started until ready.
fn watching_daemon(lab: &lab::Lab, server: &ApiServer, test: &str) -> (Trace, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("d8-daemon-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = dir.join("kubeconfig");
    std::fs::write(&kubeconfig, server.kubeconfig()).unwrap();
    let node = lab.spec().node_name.clone();
    let args = [
        "daemon",
        "--netns",
        lab.node_ns(),
        "--metrics-addr",
        "0.0.0.0:9810",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
        "--node",
        &node,
    ];
    (Trace::start_until(&args, &[], "daemon ready"), dir)
}

fn verdict_of(text: &str, service: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(&format!("d8_trace_service_verdict{{service=\"{service}\",class=\"")))
        .filter_map(|rest| {
            rest.split_once("\"} ")
                .filter(|(_, v)| v.trim() == "1")
                .map(|(c, _)| c.to_string())
        })
        .collect()
}

#[test]
fn watches_the_api_without_relisting_and_keeps_its_view_through_an_api_restart() {
    let mut lab = lab(ProxyMode::Iptables);
    let mut server = api_server(&lab);
    let (daemon, dir) = watching_daemon(&lab, &server, "watch");
    let held = bpf::held_by(daemon.pid() as u32);
    wait_metric(&lab, "d8_trace_api_up", 1.0);
    let lists = server.lists();
    assert_eq!(lists, 4, "one LIST per kind at start");

    for _ in 0..2 {
        let r = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).unwrap();
        assert_eq!(r.status(), Some(200));
    }
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/web",class="healthy"}"#,
        1.0,
    );

    // An API-only change (web-2 gone from the API while the rules still DNAT to it) moves the
    // verdict within seconds, through the watch: no LIST.
    lab.delete_from_api("web-2").unwrap();
    server.sync(&lab.snapshot_json());
    let started = Instant::now();
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/web",class="stale_endpoint"}"#,
        1.0,
    );
    assert!(started.elapsed() < Duration::from_secs(8), "{:?}", started.elapsed());
    assert_eq!(server.lists(), lists, "a watch event must not cause a LIST");

    // The API server goes away: api_up 0, the view's age grows, verdicts keep the API's view.
    server.stop();
    let text = wait_metric(&lab, "d8_trace_api_up", 0.0);
    assert_eq!(verdict_of(&text, "default/web"), ["stale_endpoint"], "{text}");
    std::thread::sleep(Duration::from_secs(3));
    let text = scrape(&lab);
    assert!(
        metric(&text, "d8_trace_api_view_age_seconds").is_some_and(|a| a >= 2.0),
        "{text}"
    );
    assert_eq!(verdict_of(&text, "default/web"), ["stale_endpoint"], "{text}");
    assert!(
        metric(&text, "d8_trace_api_errors_total").is_some_and(|e| e >= 1.0),
        "{text}"
    );

    // Back, with a change made meanwhile: the watches resume from their resourceVersion (no LIST)
    // and deliver it.
    lab.restore_api();
    server.sync(&lab.snapshot_json());
    server.start().expect("API server restarted");
    wait_metric(&lab, "d8_trace_api_up", 1.0);
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/web",class="healthy"}"#,
        1.0,
    );
    assert_eq!(metric(&scrape(&lab), "d8_trace_api_view_age_seconds"), Some(0.0));
    assert_eq!(server.lists(), lists, "resumed watches must not LIST");

    // A Service deleted (from the rules and the API) takes its series with it.
    let _ = lab::in_netns(lab.client_ns(), || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| lab::Error::Io(e.to_string()))?;
        let _ = s.send_to(b"q", addr(DNS_VIP, 53));
        Ok(())
    });
    let dns = r#"service="default/dns""#;
    let deadline = Instant::now() + Duration::from_secs(15);
    while !scrape(&lab).contains(&format!("d8_trace_flows_total{{{dns}")) {
        assert!(
            Instant::now() < deadline,
            "no flow counted for default/dns:\n{}",
            scrape(&lab)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let mut without_dns = lab.spec().clone();
    without_dns.services.retain(|s| s.name != "dns");
    lab.apply(without_dns).expect("rules rewritten");
    server.sync(&lab.snapshot_json());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let text = scrape(&lab);
        if !text.contains(dns) {
            break;
        }
        assert!(Instant::now() < deadline, "default/dns's series outlived it:\n{text}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(server.lists(), lists, "still no LIST");

    // History compacted while away: the watches get 410 Gone and list again, once per kind.
    server.stop();
    wait_metric(&lab, "d8_trace_api_up", 0.0);
    server.compact();
    server.start().expect("API server restarted");
    wait_metric(&lab, "d8_trace_api_up", 1.0);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.lists() < lists + 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(server.lists(), lists + 4, "one LIST per kind after 410 Gone");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(server.lists(), lists + 4, "and no more");
    assert!(server.watches() >= 16, "the watches resumed: {}", server.watches());

    stop(daemon, &held);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_api_that_refuses_answers_garbage_or_stalls_is_a_warning_and_a_metric() {
    use d8_tests::apiserver::Misbehave;
    let lab = lab(ProxyMode::Nftables);
    let mut server = api_server(&lab);
    server.misbehave(Misbehave::Forbidden);
    // 403 from the start (RBAC missing): the daemon still starts, on the rules alone.
    let (daemon, dir) = watching_daemon(&lab, &server, "badapi");
    let held = bpf::held_by(daemon.pid() as u32);
    let text = scrape(&lab);
    assert_eq!(metric(&text, "d8_trace_api_up"), Some(0.0), "{text}");
    assert!(
        metric(&text, "d8_trace_api_errors_total").is_some_and(|e| e >= 1.0),
        "{text}"
    );
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/empty",class="no_endpoints"}"#,
        1.0,
    );

    // Allowed: the API's view arrives.
    server.misbehave(Misbehave::No);
    let deadline = Instant::now() + Duration::from_secs(15);
    while metric(&scrape(&lab), "d8_trace_api_up") != Some(1.0) {
        assert!(Instant::now() < deadline, "the API never came up:\n{}", scrape(&lab));
        std::thread::sleep(Duration::from_millis(300));
    }
    let errors = metric(&scrape(&lab), "d8_trace_api_errors_total").unwrap();

    // The watches drop mid-stream and the server comes back answering HTML: api_up 0, errors
    // counted, the last view kept (the verdicts do not move), the process serving.
    server.stop();
    server.misbehave(Misbehave::Garbage);
    server.start().unwrap();
    let text = wait_metric(&lab, "d8_trace_api_up", 0.0);
    let empty = verdict_of(&text, "default/empty");
    std::thread::sleep(Duration::from_secs(3));
    let text = scrape(&lab);
    assert!(
        metric(&text, "d8_trace_api_errors_total").is_some_and(|e| e > errors),
        "{text}"
    );
    assert_eq!(verdict_of(&text, "default/empty"), empty, "{text}");

    // A server that accepts and never answers: requests time out, /healthz keeps answering.
    server.stop();
    server.misbehave(Misbehave::Slow);
    server.start().unwrap();
    for _ in 0..4 {
        let started = Instant::now();
        let h = lab::http_get(lab.node_ns(), addr(lab.node_ip(), 9810), "/healthz", TIMEOUT).unwrap();
        assert_eq!(h.status(), Some(200));
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/healthz took {:?}",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(metric(&scrape(&lab), "d8_trace_api_up"), Some(0.0));

    // Stops within 5 s with requests hanging.
    let done = stop(daemon, &held);
    assert!(
        done.stderr
            .contains("(403 Forbidden): the service account needs get, list and watch")
            && done.stderr.contains("keeping the last view"),
        "the failures are warnings that say what happened:\n{}",
        done.stderr
    );
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
