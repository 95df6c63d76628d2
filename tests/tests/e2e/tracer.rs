//! One flow per connection, with the pre-DNAT frontend and the post-DNAT backend conntrack chose
//! joined, and the outcome the kernel's events prove.

use std::{net::Ipv4Addr, time::Duration};

use d8_tests::run::Trace;
use d8_trace::{
    lab::{self, Lab},
    model::ProxyMode,
};

use crate::{common::*, family::Family};

fn tcp_to_cluster_ip_is_one_established_flow_to_the_chosen_backend(mode: ProxyMode) {
    let lab = lab(mode);
    let trace = Trace::start(&trace_args(&lab, "default/web", "4", &[]));
    let answer = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
    let chosen = answer.backend().expect("the backend names itself in its answer");
    let report = trace.finish(Duration::from_secs(20)).report();

    let flows = report.flows_to("10.96.0.10:80");
    assert_eq!(flows.len(), 1, "one connection, one flow:\n{}", report.describe_flows());
    let flow = flows[0];
    let expected_backend = match chosen.as_str() {
        "web-1" => "10.244.1.11:8080",
        "web-2" => "10.244.1.12:8080",
        other => panic!("unexpected backend name {other:?}"),
    };
    assert_eq!(
        flow.backend.as_deref(),
        Some(expected_backend),
        "{}",
        report.describe_flows()
    );
    assert_eq!(flow.outcome, "established");
    assert_eq!(flow.protocol, "tcp");
    assert!(
        flow.client.starts_with("10.244."),
        "client is the client pod: {}",
        flow.client
    );
    assert_eq!(report.lost_events, 0);
    assert_eq!(report.service, "default/web");
    assert!(
        report
            .frontends
            .iter()
            .any(|f| f.ip == "10.96.0.10" && f.port == 80 && f.kind == "cluster_ip")
    );
}

#[test]
fn tcp_to_cluster_ip_iptables() {
    tcp_to_cluster_ip_is_one_established_flow_to_the_chosen_backend(ProxyMode::Iptables);
}

#[test]
fn tcp_to_cluster_ip_nftables() {
    tcp_to_cluster_ip_is_one_established_flow_to_the_chosen_backend(ProxyMode::Nftables);
}

#[test]
fn service_without_endpoints_is_rejected_with_evidence() {
    let lab = lab(ProxyMode::Iptables);
    let trace = Trace::start(&trace_args(&lab, "default/empty", "3", &[]));
    let out = lab::tcp_connect(lab.client_ns(), addr(EMPTY_VIP, 80), TIMEOUT).expect("connect");
    assert!(
        !out.is_connected(),
        "a Service without endpoints must not connect: {out:?}"
    );
    let report = trace.finish(Duration::from_secs(20)).report();
    let flow = report.flows_to("10.96.0.20:80")[0];
    assert_eq!(flow.outcome, "rejected", "{}", report.describe_flows());
    assert_eq!(flow.backend, None, "nothing was DNAT'd");
    // The REJECT rule kube-proxy wrote, and the ICMP error the node sent.
    report.evidence_with("has no endpoints");
    report.evidence_with("ICMP");
}

/// A pod that drops everything (its `inet` table, both families): the SYN's drop is traced with
/// the kernel's reason, after DNAT to that pod.
fn drop_on_the_path_is_dropped_with_the_kernel_reason(fam: Family) {
    d8_tests::require_root();
    let _ = d8_trace::lab::cleanup_stale();
    let mut lab = Lab::up(fam.spec(spec()), ProxyMode::Iptables).expect("lab up");
    lab.set_drop_all("drops-1", true).expect("make the pod drop");
    let trace = Trace::start(&trace_args(&lab, "default/drops", "4", fam.trace_flags()));
    let out = lab::tcp_connect(lab.client_ns(), fam.sock(DROPS_VIP, 80), Duration::from_millis(1500)).expect("connect");
    assert!(!out.is_connected(), "{out:?}");
    let report = trace.finish(Duration::from_secs(20)).report();
    let flow = report.flows_to(&fam.at(DROPS_VIP, 80))[0];
    assert_eq!(flow.outcome, "dropped", "{}", report.describe_flows());
    assert_eq!(
        flow.drop_reason.as_deref(),
        Some(report.drop_reason_named("NETFILTER_DROP")),
        "{}",
        report.describe_flows()
    );
    assert_eq!(
        flow.backend.as_deref(),
        Some(fam.at(Ipv4Addr::new(10, 244, 1, 41), 8080).as_str())
    );
    assert_eq!(report.families.seen, [fam.name()], "{}", report.describe_flows());
}

#[test]
fn drop_on_the_path_is_dropped_with_the_kernel_reason_ipv4() {
    drop_on_the_path_is_dropped_with_the_kernel_reason(Family::V4);
}

/// The same drop over IPv6 (a dual-stack lab, `--family 6`): the drop tracepoint names the reason
/// for the IPv6 SYN as it does for the IPv4 one.
#[test]
fn drop_on_the_path_is_dropped_with_the_kernel_reason_ipv6() {
    drop_on_the_path_is_dropped_with_the_kernel_reason(Family::V6);
}

#[test]
fn backend_with_nothing_listening_resets() {
    let lab = lab(ProxyMode::Iptables);
    let trace = Trace::start(&trace_args(&lab, "default/closed", "3", &[]));
    let out = lab::tcp_connect(lab.client_ns(), addr(CLOSED_VIP, 80), TIMEOUT).expect("connect");
    assert!(!out.is_connected(), "{out:?}");
    let report = trace.finish(Duration::from_secs(20)).report();
    let flow = report.flows_to("10.96.0.30:80")[0];
    assert_eq!(flow.outcome, "reset", "{}", report.describe_flows());
    assert_eq!(flow.backend.as_deref(), Some("10.244.1.31:9090"));
    report.evidence_with("RST from backend 10.244.1.31:9090");
}

#[test]
fn udp_request_to_cluster_ip_joins_frontend_backend_and_reply() {
    let lab = lab(ProxyMode::Iptables);
    let trace = Trace::start(&trace_args(&lab, "default/dns", "3", &[]));
    let out = lab::udp_request(lab.client_ns(), addr(DNS_VIP, 53), b"query", TIMEOUT).expect("udp");
    let lab::UdpOutcome::Reply(bytes) = &out else {
        panic!("no UDP answer: {out:?}")
    };
    assert!(
        String::from_utf8_lossy(bytes).contains("dns-1"),
        "the pod answered: {out:?}"
    );
    let report = trace.finish(Duration::from_secs(20)).report();
    let flow = report.flows_to("10.96.0.53:53")[0];
    assert_eq!(flow.protocol, "udp");
    assert_eq!(flow.backend.as_deref(), Some("10.244.1.21:5353"));
    assert_eq!(flow.outcome, "established", "{}", report.describe_flows());
}

#[test]
fn node_local_client_is_traced_at_output() {
    let lab = lab(ProxyMode::Nftables);
    let trace = Trace::start(&trace_args(&lab, "default/web", "3", &[]));
    let answer = lab::http_get(lab.node_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get from the node");
    assert_eq!(answer.status(), Some(200));
    let report = trace.finish(Duration::from_secs(20)).report();
    let flow = report.flows_to("10.96.0.10:80")[0];
    assert!(
        flow.client.starts_with(&lab.node_ip().to_string()),
        "client is the node: {}",
        flow.client
    );
    assert_eq!(flow.outcome, "established", "{}", report.describe_flows());
}

/// The last `n` lines of `text`, in order.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A reader that stops reading (a paused pager, `| less` not scrolling) must not stall the event
/// loop: live lines beyond what waits for the reader are dropped and counted, no kernel event is
/// lost, and the final report comes out whole once the reader reads again.
#[test]
fn unread_live_output_loses_no_events_and_keeps_the_report_whole() {
    // Paced so that even the VM's emulated CPUs keep up with it when nothing stalls the loop;
    // a stalled loop would overflow the small ring buffer twice over.
    const FLOWS: u16 = 2000;
    const BATCH: u16 = 50;
    let lab = lab(ProxyMode::Iptables);
    // Text output: live lines and then the report on stdout, which nobody reads until the end
    // (`finish`); at most 256 lines wait for it.
    let args = [
        "--svc",
        "default/dns",
        "--netns",
        lab.node_ns(),
        "-o",
        "text",
        "--no-k8s",
        "--duration",
        "10",
        "--ring-buffer-kib",
        "256",
    ];
    let trace = Trace::start_with_env(&args, &[("D8_TRACE_LIVE_QUEUE_LINES", "256")]);
    lab::in_netns(lab.client_ns(), || {
        // One flow per client port; sockets live until their batch was answered.
        for batch in 0..FLOWS / BATCH {
            let sockets: Vec<std::net::UdpSocket> = (0..BATCH)
                .map(|i| {
                    let s = std::net::UdpSocket::bind(("0.0.0.0", 20_000 + batch * BATCH + i)).expect("bind");
                    let _ = s.send_to(b"query", addr(DNS_VIP, 53));
                    s
                })
                .collect();
            std::thread::sleep(Duration::from_millis(100));
            drop(sockets);
        }
        Ok(())
    })
    .unwrap();
    let done = trace.finish(Duration::from_secs(60));
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stdout.contains(&format!("Flows: {FLOWS} traced")),
        "every flow is in the report:\n{}\nstderr:\n{}",
        tail(&done.stdout, 40),
        done.stderr
    );
    assert!(
        done.stdout.contains(", 0 events lost"),
        "no kernel event lost:\n{}",
        tail(&done.stdout, 40)
    );
    assert!(
        done.stderr.contains("live lines dropped: output was not being read"),
        "{}",
        done.stderr
    );
    // The report follows the live lines, whole: header, verdict, flows, evidence.
    let report = &done.stdout[done.stdout.find("Service default/dns on").expect("the report's header")..];
    for part in [
        "VERDICT: ",
        "Frontends:",
        "Flows: ",
        "more flows (-o json lists them all)",
        "Evidence:",
    ] {
        assert!(report.contains(part), "{part:?} missing from the report:\n{report}");
    }
}

/// `--debug-kernel`: the kernel programs' own records reach stderr (the flow they started, in
/// their words), the report on stdout stays one JSON object; without the flag there are none.
#[test]
fn debug_kernel_logs_what_the_programs_decide_on_stderr_only() {
    let lab = lab(ProxyMode::Iptables);
    let mut runs = Vec::new();
    for extra in [&["--debug-kernel"][..], &[][..]] {
        let trace = Trace::start(&trace_args(&lab, "default/web", "3", extra));
        lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
        runs.push(trace.finish(Duration::from_secs(20)));
    }
    let (on, off) = (&runs[0], &runs[1]);
    let kernel_lines = |stderr: &str| stderr.lines().filter(|l| l.contains("kernel: ")).count();
    assert!(
        on.stderr
            .lines()
            .any(|l| l.contains("kernel: new flow: proto 6 ") && l.contains("-> 10.96.0.10:80")),
        "no kernel record of the flow:\n{}",
        on.stderr
    );
    assert_eq!(
        kernel_lines(&off.stderr),
        0,
        "kernel records without --debug-kernel:\n{}",
        off.stderr
    );
    for run in [on, off] {
        assert!(
            !run.stdout.contains("kernel: "),
            "kernel records on stdout:\n{}",
            run.stdout
        );
        let report = run.report();
        assert_eq!(report.flows_to("10.96.0.10:80").len(), 1, "{}", report.describe_flows());
    }
}

/// tracefs on the node is left as it was: when the node has none mounted, d8-trace mounts it in
/// its own mount namespace, so the node's mount table never changes (and one d8-trace ending
/// never unmounts it under another); when the node has it, it stays.
#[test]
fn the_nodes_mounts_are_unchanged_by_a_trace() {
    let lab = lab(ProxyMode::Iptables);
    let tracefs = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap()
            .lines()
            .filter(|l| l.split_whitespace().nth(2) == Some("tracefs"))
            .count()
    };
    let before = tracefs();
    // Returns once d8-trace printed that it attached; ended by Ctrl-C below.
    let first = Trace::start(&trace_args(&lab, "default/web", "120", &[]));
    assert_eq!(tracefs(), before, "tracefs mounts on the node while tracing");
    lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
    // A second d8-trace that ends while the first still traces takes nothing from it.
    let second = d8_tests::run::run_to_end(&["doctor"]);
    assert!(second.status.success(), "{}", second.stderr);
    lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
    first.signal(libc::SIGINT);
    let report = first.finish(Duration::from_secs(30)).report();
    assert_eq!(report.flows_to("10.96.0.10:80").len(), 2, "{}", report.describe_flows());
    assert_eq!(tracefs(), before, "tracefs mounts on the node after the trace");
}
