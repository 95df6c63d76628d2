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

/// `d8-trace daemon` in `lab`'s node with metrics on :9810 and `extra` flags.
fn daemon_args<'a>(lab: &'a lab::Lab, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["daemon", "--netns", lab.node_ns(), "--metrics-addr", "0.0.0.0:9810"];
    args.extend_from_slice(extra);
    args
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
        .flat_map(|e| crate::pcap::read_without_tools(&e.path()))
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
    let args = daemon_args(&lab, &["--no-k8s", "--refresh-secs", "1", "--max-flows", "2000"]);
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

    // One EndpointSlice change a second across two rules refreshes (every 10 s): each is folded into
    // its own Service, never by a whole model build, and the verdict does not move. (A refresh
    // used to fold a change that came after the last verdict tick into every Service; it did
    // when it ran before the verdict tick due at the same instant, which tokio's select! picks at
    // random: this check failed 1 of 3 runs of the old daemon, so it guards, it does not prove.)
    let folds =
        |how: &str| metric(&scrape(&lab), &format!(r#"d8_trace_api_folds_total{{how="{how}"}}"#)).unwrap_or(0.0);
    // From the first refresh that reused the rules' reading on: the ones before it read the rules
    // again, and build every Service in any case.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !metric(&scrape(&lab), r#"d8_trace_rules_reads_total{result="unchanged"}"#).is_some_and(|n| n >= 1.0) {
        assert!(
            Instant::now() < deadline,
            "no refresh reused the rules:\n{}",
            scrape(&lab)
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let (by_service, whole) = (folds("service"), folds("whole"));
    let slice = lab.snapshot_json()["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["kind"] == "EndpointSlice" && i["metadata"]["labels"]["kubernetes.io/service-name"] == "web")
        .expect("web's EndpointSlice")
        .clone();
    for n in 0..23 {
        let mut changed = slice.clone();
        changed["metadata"]["labels"]["d8-test/change"] = n.to_string().into();
        server.put(changed);
        std::thread::sleep(Duration::from_secs(1));
    }
    server.put(slice);
    std::thread::sleep(Duration::from_secs(3));
    let text = scrape(&lab);
    assert!(folds("service") >= by_service + 5.0, "{text}");
    assert_eq!(
        folds("whole"),
        whole,
        "an EndpointSlice change folded into every Service:\n{text}"
    );
    assert_eq!(verdict_of(&text, "default/web"), ["healthy"], "{text}");

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

    // Every watch dropped mid-stream while the server stays up (a load balancer, a replica
    // going): they resume from their resourceVersion, no LIST, and the next change arrives.
    let watches = server.watches();
    server.cut_watches();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.watches() < watches + 4 {
        assert!(
            Instant::now() < deadline,
            "the cut watches did not resume: {}",
            server.watches()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    lab.delete_from_api("web-2").unwrap();
    server.sync(&lab.snapshot_json());
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/web",class="stale_endpoint"}"#,
        1.0,
    );
    lab.restore_api();
    server.sync(&lab.snapshot_json());
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/web",class="healthy"}"#,
        1.0,
    );
    assert_eq!(server.lists(), lists, "watches cut mid-stream resume without a LIST");

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

fn get(lab: &lab::Lab, path: &str) -> Option<u16> {
    lab::http_get(lab.node_ns(), addr(lab.node_ip(), 9810), path, TIMEOUT)
        .ok()
        .and_then(|r| r.status())
}

#[test]
fn a_first_rules_read_that_fails_is_retried_until_the_rules_can_be_read() {
    let lab = lab(ProxyMode::Iptables);
    // The rule tools are not on the daemon's PATH at first (an image without them, a node still
    // starting): every read fails.
    let dir = std::env::temp_dir().join(format!("d8-daemon-firstread-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.to_str().unwrap().to_string();
    // The save tools, not the kernel reader (which needs no tool and would read at once).
    let args = daemon_args(&lab, &["--no-k8s", "--rules-from", "tools"]);
    let mut daemon = Trace::start_until(&args, &[("PATH", &path)], "cannot read the node's model, retrying");
    let held = bpf::held_by(daemon.pid() as u32);
    // Alive and saying so: /healthz answers, /readyz does not, the failure is counted.
    assert_eq!(get(&lab, "/healthz"), Some(200));
    assert_ne!(get(&lab, "/readyz"), Some(200));
    let text = scrape(&lab);
    assert!(
        metric(&text, r#"d8_trace_rules_reads_total{result="failed"}"#).is_some_and(|f| f >= 1.0),
        "{text}"
    );

    // The tools appear: the next retry reads the rules and the daemon gets ready.
    let system_path = std::env::var_os("PATH").expect("PATH");
    let mut linked = 0;
    for tool in [
        "iptables-nft-save",
        "iptables-legacy-save",
        "iptables-save",
        "ip6tables-nft-save",
        "ip6tables-legacy-save",
        "ip6tables-save",
    ] {
        if let Some(found) = std::env::split_paths(&system_path)
            .map(|d| d.join(tool))
            .find(|p| p.exists())
        {
            std::os::unix::fs::symlink(found, dir.join(tool)).unwrap();
            linked += 1;
        }
    }
    assert!(linked > 0, "no iptables-save on this machine's PATH");
    daemon.wait_for_stderr("daemon ready", Duration::from_secs(45));
    assert_eq!(get(&lab, "/readyz"), Some(200));
    wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/empty",class="no_endpoints"}"#,
        1.0,
    );
    stop(daemon, &held);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Every `d8_trace_service_verdict` series at 1, sorted.
fn verdicts(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| l.starts_with("d8_trace_service_verdict{") && l.ends_with(" 1"))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// Stand-ins for kube-proxy's endpoints gone wrong, in the node's namespace until dropped: its
/// metrics port answers bytes that are not HTTP, its healthz port accepts and says nothing.
struct Nonsense {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Nonsense {
    fn start(ns: &str) -> Nonsense {
        use std::io::Write;
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut threads = Vec::new();
        for (bind, garbage) in [("127.0.0.1:10249", true), ("0.0.0.0:10256", false)] {
            let listener = lab::in_netns(ns, || {
                std::net::TcpListener::bind(bind).map_err(|e| lab::Error::Io(format!("{bind}: {e}")))
            })
            .unwrap();
            listener.set_nonblocking(true).unwrap();
            let stop = stop.clone();
            threads.push(std::thread::spawn(move || {
                let mut held = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut s, _)) if garbage => {
                            let _ = s.write_all(b"\x00\x01 this is not kube-proxy\n");
                        }
                        // Slow: kept open, never answered, until the client gives up.
                        Ok((s, _)) => held.push(s),
                        Err(_) => std::thread::sleep(Duration::from_millis(20)),
                    }
                    if held.len() > 16 {
                        held.remove(0);
                    }
                }
            }));
        }
        Nonsense { stop, threads }
    }
}

impl Drop for Nonsense {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

#[test]
fn kube_proxy_answering_nonsense_is_a_warning_and_a_metric_and_moves_no_verdict() {
    let mut lab = lab(ProxyMode::Iptables);
    let args = daemon_args(&lab, &["--no-k8s", "--refresh-secs", "1"]);
    let mut daemon = Trace::start_until(&args, &[], "daemon ready");
    let held = bpf::held_by(daemon.pid() as u32);
    let text = wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/empty",class="no_endpoints"}"#,
        1.0,
    );
    assert_eq!(
        metric(&text, "d8_trace_kube_proxy_unreadable_answers"),
        Some(0.0),
        "{text}"
    );
    let before = verdicts(&text);
    assert!(before.len() >= 4, "{text}");

    // kube-proxy's endpoints replaced by nonsense: /proxyMode and /metrics not HTTP, /healthz
    // silent.
    let original = lab.spec().clone();
    let mut without = original.clone();
    without.kube_proxy = None;
    lab.apply(without).expect("kube-proxy's stand-in stopped");
    let nonsense = Nonsense::start(lab.node_ns());
    daemon.wait_for_stderr("answered what is not HTTP", Duration::from_secs(20));
    let text = wait_metric(&lab, "d8_trace_kube_proxy_unreadable_answers", 3.0);
    assert_eq!(metric(&text, "d8_trace_kube_proxy_running"), Some(1.0), "{text}");
    // Verdicts rest on the rules and the flows, which did not change; give them a few rounds.
    std::thread::sleep(Duration::from_secs(5));
    let text = scrape(&lab);
    assert_eq!(verdicts(&text), before, "{text}");
    assert_eq!(get(&lab, "/healthz"), Some(200));

    // Back to a readable kube-proxy: the metric goes back to 0.
    drop(nonsense);
    lab.apply(original).expect("kube-proxy's stand-in back");
    wait_metric(&lab, "d8_trace_kube_proxy_unreadable_answers", 0.0);
    let done = stop(daemon, &held);
    assert!(
        done.stderr
            .contains("kube-proxy's /healthz on 127.0.0.1:10256 did not answer within"),
        "{}",
        done.stderr
    );
}
