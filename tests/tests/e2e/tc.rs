//! The TC hook set (`--hooks tc`): the same scripted traffic gives the same flows (frontend,
//! backend, outcome, drop reason, class) as the netfilter hook set, and nothing of it stays
//! attached after exit. On kernels without netfilter links (the VM's 6.1) the netfilter half of
//! each comparison is skipped and the TC flows are checked against the expected values alone.

use std::{collections::BTreeMap, process::Command, time::Duration};

use d8_tests::{
    report::{Flow, Report},
    run::{Trace, run_to_end},
};
use d8_trace::{
    lab::{self, Lab, ListenerKind, PodSpec, ServiceSpec},
    model::{Protocol, ProxyMode},
};

use crate::common::*;

/// Whether this kernel has netfilter BPF links (doctor says so).
fn netfilter_links() -> bool {
    let out = run_to_end(&["doctor", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_default();
    v["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["name"] == "netfilter links" && c["ok"] == true)
}

/// The fields both hook sets must agree on; the client's port differs between runs.
fn essence(
    f: &Flow,
) -> (
    String,
    Option<String>,
    Option<String>,
    String,
    Option<String>,
    Option<String>,
) {
    (
        f.protocol.clone(),
        f.frontend.clone(),
        f.backend.clone(),
        f.outcome.clone(),
        f.drop_reason.clone(),
        f.class.clone(),
    )
}

/// Traces `svc` with `hooks` while `traffic` runs; returns the report and what `traffic` said.
fn traced<T>(lab: &Lab, svc: &str, secs: &str, hooks: &str, traffic: &dyn Fn(&Lab) -> T) -> (Report, T) {
    let trace = Trace::start(&trace_args(lab, svc, secs, &["--hooks", hooks]));
    let said = traffic(lab);
    let done = trace.finish(Duration::from_secs(25));
    if hooks == "tc" {
        assert!(
            done.stderr.contains("tc hook set"),
            "the TC hook set was used:\n{}",
            done.stderr
        );
    }
    (done.report(), said)
}

/// Runs `traffic` under both hook sets (TC only where netfilter links are missing) and checks
/// that the flows to `frontend` agree; returns the TC flows and what the TC run's traffic said.
fn same_flows<T>(
    mode: ProxyMode,
    svc: &str,
    frontend: &str,
    secs: &str,
    traffic: &dyn Fn(&Lab) -> T,
    normalize: &dyn Fn(&T, &mut Flow),
) -> (Vec<Flow>, T) {
    let lab = lab(mode);
    let (tc, said) = traced(&lab, svc, secs, "tc", traffic);
    let mut tc_flows: Vec<Flow> = tc.flows_to(frontend).into_iter().cloned().collect();
    tc_flows.iter_mut().for_each(|f| normalize(&said, f));
    assert_eq!(tc.lost_events, 0);
    if netfilter_links() {
        let (nf, nf_said) = traced(&lab, svc, secs, "netfilter", traffic);
        let mut nf_flows: Vec<Flow> = nf.flows_to(frontend).into_iter().cloned().collect();
        nf_flows.iter_mut().for_each(|f| normalize(&nf_said, f));
        let a: Vec<_> = tc_flows.iter().map(essence).collect();
        let b: Vec<_> = nf_flows.iter().map(essence).collect();
        assert_eq!(
            a,
            b,
            "tc flows:\n{}\nnetfilter flows:\n{}",
            tc.describe_flows(),
            nf.describe_flows()
        );
        assert_eq!(
            tc.root_cause.as_ref().map(|r| r.class.clone()),
            nf.root_cause.as_ref().map(|r| r.class.clone()),
            "same verdict"
        );
    } else {
        eprintln!("no netfilter links on this kernel: TC flows checked against expected values only");
    }
    (tc_flows, said)
}

fn no_change<T>(_: &T, _: &mut Flow) {}

#[test]
fn tc_established_tcp_matches_netfilter() {
    for mode in [ProxyMode::Iptables, ProxyMode::Nftables] {
        let get = |lab: &Lab| {
            let answer = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
            answer.backend().expect("the backend names itself")
        };
        // Which of the two pods answers is random: name it instead of its address.
        let name_backend = |chosen: &String, f: &mut Flow| {
            let expected = if chosen == "web-1" {
                "10.244.1.11:8080"
            } else {
                "10.244.1.12:8080"
            };
            if f.backend.as_deref() == Some(expected) {
                f.backend = Some("the backend that answered".into());
            }
        };
        let (flows, _) = same_flows(mode, "default/web", "10.96.0.10:80", "3", &get, &name_backend);
        assert_eq!(flows.len(), 1, "{mode:?}: one connection, one flow: {flows:?}");
        assert_eq!(
            flows[0].backend.as_deref(),
            Some("the backend that answered"),
            "{mode:?}: {flows:?}"
        );
        assert_eq!(flows[0].outcome, "established", "{mode:?}");
        assert!(flows[0].client.starts_with("10.244."), "{flows:?}");
    }
}

#[test]
fn tc_backend_reset_matches_netfilter() {
    let connect = |lab: &Lab| {
        let out = lab::tcp_connect(lab.client_ns(), addr(CLOSED_VIP, 80), TIMEOUT).expect("connect");
        assert!(!out.is_connected(), "{out:?}");
    };
    let (flows, _) = same_flows(
        ProxyMode::Iptables,
        "default/closed",
        "10.96.0.30:80",
        "3",
        &connect,
        &no_change,
    );
    assert_eq!(flows[0].outcome, "reset", "{flows:?}");
    assert_eq!(flows[0].backend.as_deref(), Some("10.244.1.31:9090"));
}

#[test]
fn tc_udp_matches_netfilter() {
    let ask = |lab: &Lab| {
        let out = lab::udp_request(lab.client_ns(), addr(DNS_VIP, 53), b"query", TIMEOUT).expect("udp");
        assert!(matches!(out, lab::UdpOutcome::Reply(_)), "{out:?}");
    };
    let (flows, _) = same_flows(
        ProxyMode::Iptables,
        "default/dns",
        "10.96.0.53:53",
        "3",
        &ask,
        &no_change,
    );
    assert_eq!(
        (flows[0].protocol.as_str(), flows[0].outcome.as_str()),
        ("udp", "established"),
        "{flows:?}"
    );
    assert_eq!(flows[0].backend.as_deref(), Some("10.244.1.21:5353"));
}

#[test]
fn tc_rejected_matches_netfilter() {
    for mode in [ProxyMode::Iptables, ProxyMode::Nftables] {
        let connect = |lab: &Lab| {
            let out = lab::tcp_connect(lab.client_ns(), addr(EMPTY_VIP, 80), TIMEOUT).expect("connect");
            assert!(!out.is_connected(), "{out:?}");
        };
        let (flows, _) = same_flows(mode, "default/empty", "10.96.0.20:80", "3", &connect, &no_change);
        assert_eq!(flows[0].outcome, "rejected", "{mode:?}: {flows:?}");
        assert_eq!(flows[0].backend, None);
    }
}

#[test]
fn tc_dropped_matches_netfilter() {
    let connect = |lab: &Lab| {
        let out = lab::tcp_connect(lab.client_ns(), addr(DROPS_VIP, 80), Duration::from_millis(1500)).expect("connect");
        assert!(!out.is_connected(), "{out:?}");
    };
    let lab_setup = |lab: &mut Lab| lab.set_drop_all("drops-1", true).expect("make the pod drop");
    let mut lab = lab(ProxyMode::Iptables);
    lab_setup(&mut lab);
    let (tc, _) = traced(&lab, "default/drops", "4", "tc", &connect);
    let flow = tc.flows_to("10.96.0.40:80")[0].clone();
    assert_eq!(flow.outcome, "dropped", "{}", tc.describe_flows());
    assert_eq!(flow.backend.as_deref(), Some("10.244.1.41:8080"));
    if netfilter_links() {
        let (nf, _) = traced(&lab, "default/drops", "4", "netfilter", &connect);
        let nf_flow = nf.flows_to("10.96.0.40:80")[0].clone();
        assert_eq!(
            essence(&flow),
            essence(&nf_flow),
            "tc:\n{}\nnetfilter:\n{}",
            tc.describe_flows(),
            nf.describe_flows()
        );
    } else {
        // Drop reasons exist from 5.17 (6.1 has them); before, the report says every drop is
        // NOT_SPECIFIED.
        assert_eq!(
            flow.drop_reason.as_deref(),
            Some(tc.drop_reason_named("NETFILTER_DROP"))
        );
    }
}

#[test]
fn tc_node_local_client_is_established() {
    let lab = lab(ProxyMode::Nftables);
    let get = |lab: &Lab| {
        let answer = lab::http_get(lab.node_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get from the node");
        assert_eq!(answer.status(), Some(200));
    };
    let (report, ()) = traced(&lab, "default/web", "3", "tc", &get);
    let flow = report.flows_to("10.96.0.10:80")[0];
    assert!(
        flow.client.starts_with(&lab.node_ip().to_string()),
        "client is the node: {}",
        flow.client
    );
    assert_eq!(flow.outcome, "established", "{}", report.describe_flows());
    assert!(
        flow.backend.as_deref().is_some_and(|b| b.starts_with("10.244.1.1")),
        "{}",
        report.describe_flows()
    );
}

#[test]
fn tc_attaches_to_interfaces_that_appear_while_tracing() {
    let mut lab = lab(ProxyMode::Iptables);
    lab.delete_pod("web-2").expect("delete web-2");
    let mut trace = Trace::start(&trace_args(&lab, "default/web", "6", &["--hooks", "tc"]));
    lab.restore_pod("web-2").expect("web-2 comes back with a new veth");
    trace.wait_for_stderr("attached TC programs to new interface", Duration::from_secs(5));
    // Traffic until web-2 answered once, through its new interface.
    let mut web2 = None;
    for _ in 0..20 {
        let answer = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
        if answer.backend().as_deref() == Some("web-2") {
            web2 = answer.remote_ip();
            break;
        }
    }
    assert!(web2.is_some(), "web-2 never answered");
    let report = trace.finish(Duration::from_secs(25)).report();
    let to_web2: Vec<&Flow> = report
        .flows_to("10.96.0.10:80")
        .into_iter()
        .filter(|f| f.backend.as_deref() == Some("10.244.1.12:8080"))
        .collect();
    assert!(!to_web2.is_empty(), "{}", report.describe_flows());
    assert!(
        to_web2.iter().all(|f| f.outcome == "established"),
        "{}",
        report.describe_flows()
    );
}

/// Ids of the BPF programs process `pid` holds, from fdinfo: other tests may run d8-trace at
/// the same time, so machine-wide listings prove nothing.
fn prog_ids_of(pid: i32) -> Vec<u64> {
    d8_tests::bpf::held_by(pid as u32).programs
}

/// Ids of every loaded BPF program.
fn loaded_programs() -> Vec<u64> {
    d8_tests::bpf::loaded_programs()
}

/// Interfaces of the lab node, lo included (`ip netns exec` mounts the namespace's sysfs).
fn node_interfaces(lab: &Lab) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", lab.node_ns(), "ls", "/sys/class/net"])
        .output()
        .expect("ls");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The lab node's qdiscs and TC filters, and the BPF links (tcx) of `d8_tc_*` programs. One
/// shell in the namespace for all of it (many `ip netns exec` in a row fail under the VM).
fn node_tc_state(lab: &Lab, ours: &[u64]) -> String {
    let script = "tc qdisc show; for d in $(ls /sys/class/net); do for dir in ingress egress; do \
                  f=$(tc filter show dev $d $dir); [ -n \"$f\" ] && echo \"$d $dir: $f\"; done; done; true";
    let out = Command::new("ip")
        .args(["netns", "exec", lab.node_ns(), "sh", "-c", script])
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut all = String::from_utf8_lossy(&out.stdout).into_owned();
    let out = Command::new("bpftool")
        .args(["-j", "link", "show"])
        .output()
        .expect("bpftool");
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    for l in links.as_array().into_iter().flatten() {
        if l["prog_id"].as_u64().is_some_and(|id| ours.contains(&id)) {
            // BPF_LINK_TYPE_TCX is 11 (bpftool before 7.3 prints the number).
            let tcx = l["type"] == 11 || l["type"] == "tcx";
            all.push_str(&format!("{} {}\n", if tcx { "d8_tc link" } else { "d8 link" }, l));
        }
    }
    all
}

fn nothing_left(env: &[(&str, &str)]) {
    let lab = lab(ProxyMode::Iptables);
    let before = node_tc_state(&lab, &[]);
    assert!(
        !before.contains("d8_tc_") && !before.contains("clsact"),
        "clean lab: {before}"
    );
    // Ended by Ctrl-C once looked at (listing takes seconds under the VM's emulation).
    let trace = Trace::start_with_env(&trace_args(&lab, "default/web", "60", &["--hooks", "tc"]), env);
    let ours = prog_ids_of(trace.pid());
    assert!(!ours.is_empty(), "d8-trace holds its programs");
    let during = node_tc_state(&lab, &ours);
    // Every interface but lo: ext0, the dead-end veth pair, the client's and each local pod's veth.
    let ifaces = node_interfaces(&lab).iter().filter(|n| *n != "lo").count();
    assert!(ifaces >= lab.spec().pods.iter().filter(|p| p.is_local(lab.spec())).count() + 3);
    let attached = if env.is_empty() && d8_trace::kernel::version().is_some_and(|v| v >= (6, 6)) {
        during.matches("d8_tc link").count()
    } else {
        assert!(during.contains("clsact"), "clsact qdiscs while tracing:\n{during}");
        during.matches(" d8_tc_ingress direct-action").count() + during.matches(" d8_tc_egress direct-action").count()
    };
    trace.signal(libc::SIGINT);
    assert_eq!(
        attached,
        2 * ifaces,
        "ingress and egress on every interface ({env:?}):\n{during}"
    );
    trace.finish(Duration::from_secs(15)).report();
    let after = node_tc_state(&lab, &ours);
    assert_eq!(after, before, "tc state after exit ({env:?})");
    let left: Vec<u64> = loaded_programs().into_iter().filter(|id| ours.contains(id)).collect();
    assert!(
        left.is_empty(),
        "programs of the finished d8-trace still loaded: {left:?}"
    );
}

#[test]
fn tc_leaves_nothing_after_exit() {
    // The kernel's own way (tcx links from 6.6), then netlink filters on clsact qdiscs that
    // d8-trace adds and must remove again (the pre-6.6 path, forced).
    nothing_left(&[]);
    nothing_left(&[("D8_TC_NETLINK", "1")]);
}

#[test]
fn tc_keeps_a_clsact_qdisc_it_did_not_add() {
    let lab = lab(ProxyMode::Iptables);
    let ns = lab.node_ns();
    let add = Command::new("ip")
        .args(["netns", "exec", ns, "tc", "qdisc", "add", "dev", "ext0", "clsact"])
        .status()
        .unwrap();
    assert!(add.success());
    let trace = Trace::start_with_env(
        &trace_args(&lab, "default/web", "1", &["--hooks", "tc"]),
        &[("D8_TC_NETLINK", "1")],
    );
    trace.finish(Duration::from_secs(15)).report();
    let after = node_tc_state(&lab, &[]);
    assert!(
        after.contains("clsact") && after.contains("ext0"),
        "someone else's qdisc stays:\n{after}"
    );
    assert!(!after.contains("d8_tc_"), "{after}");
}

/// `d8-trace daemon --hooks tc`: flows are joined to their backends through conntrack netlink
/// events, counted per Service, labelled with the TC hook set; a Service that appears while the
/// daemon runs is joined as well (the join follows the refreshed targets); SIGTERM frees
/// everything.
#[test]
fn tc_daemon_joins_flows_and_follows_new_services() {
    use crate::daemon::{metric, wait_metric};
    const LATE_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 60);

    let mut lab = lab(ProxyMode::Iptables);
    let dir = std::env::temp_dir().join(format!("d8-tc-daemon-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = dir.join("snapshot.json");
    lab.write_snapshot(&snapshot).unwrap();
    let events = dir.join("events.jsonl");
    let args = [
        "daemon",
        "--hooks",
        "tc",
        "--netns",
        lab.node_ns(),
        "--metrics-addr",
        "0.0.0.0:9810",
        "--events",
        events.to_str().unwrap(),
        "--k8s-snapshot",
        snapshot.to_str().unwrap(),
        "--refresh-secs",
        "1",
    ];
    let daemon = Trace::start_until(&args, &[], "daemon ready");
    let held = d8_tests::bpf::held_by(daemon.pid() as u32);
    assert!(!held.is_empty(), "the daemon holds its programs");

    for _ in 0..3 {
        let r = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).unwrap();
        assert_eq!(r.status(), Some(200));
    }
    let out = lab::udp_request(lab.client_ns(), addr(DNS_VIP, 53), b"query", TIMEOUT).expect("udp");
    assert!(matches!(out, lab::UdpOutcome::Reply(_)), "{out:?}");
    let out = lab::tcp_connect(lab.client_ns(), addr(CLOSED_VIP, 80), TIMEOUT).unwrap();
    assert!(!out.is_connected(), "{out:?}");

    wait_metric(
        &lab,
        r#"d8_trace_flows_total{service="default/web",class="healthy",outcome="established"}"#,
        3.0,
    );
    wait_metric(
        &lab,
        r#"d8_trace_flows_total{service="default/dns",class="healthy",outcome="established"}"#,
        1.0,
    );
    let text = wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/closed",class="backend_refused"}"#,
        1.0,
    );
    assert_eq!(metric(&text, r#"d8_trace_hook_set{hooks="tc"}"#), Some(1.0), "{text}");
    assert!(!text.contains(r#"d8_trace_hook_set{hooks="netfilter"}"#), "{text}");
    assert_eq!(metric(&text, "d8_trace_lost_events"), Some(0.0), "{text}");
    let before = metric(&text, "d8_trace_traced_targets").expect("traced targets");

    // kube-proxy programs a new Service whose pod refuses: its frontend is a new target, which the
    // conntrack-netlink join must know to give the flow its backend.
    let spec = spec()
        .service(
            ServiceSpec::new("default", "late", LATE_VIP)
                .port("http", 80, 9090, Protocol::Tcp)
                .selector("app", "late"),
        )
        .pod(
            PodSpec::new("default", "late-1", std::net::Ipv4Addr::new(10, 244, 1, 61))
                .label("app", "late")
                .listen(8080, ListenerKind::Http),
        );
    lab.apply(spec).expect("rules rewritten");
    lab.write_snapshot(&snapshot).unwrap();
    wait_metric(&lab, "d8_trace_traced_targets", before + 2.0);
    let out = lab::tcp_connect(lab.client_ns(), addr(LATE_VIP, 80), TIMEOUT).unwrap();
    assert!(!out.is_connected(), "{out:?}");
    let text = wait_metric(
        &lab,
        r#"d8_trace_service_verdict{service="default/late",class="backend_refused"}"#,
        1.0,
    );
    assert_eq!(metric(&text, "d8_trace_lost_events"), Some(0.0), "{text}");

    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let flow_of = |svc: &str| {
        lines
            .iter()
            .find(|l| l["type"] == "flow" && l["service"] == svc)
            .cloned()
    };
    let closed = flow_of("default/closed").unwrap_or_else(|| panic!("no flow event of default/closed: {lines:?}"));
    assert_eq!(
        (closed["frontend"].as_str(), closed["backend"].as_str()),
        (Some("10.96.0.30:80"), Some("10.244.1.31:9090")),
        "{closed}"
    );
    assert_eq!(
        (closed["outcome"].as_str(), closed["class"].as_str()),
        (Some("reset"), Some("backend_refused")),
        "{closed}"
    );
    let late = flow_of("default/late").unwrap_or_else(|| panic!("no flow event of default/late: {lines:?}"));
    assert_eq!(
        (late["frontend"].as_str(), late["backend"].as_str()),
        (Some("10.96.0.60:80"), Some("10.244.1.61:9090")),
        "{late}"
    );
    assert_eq!(late["class"], "backend_refused", "{late}");

    daemon.signal(libc::SIGTERM);
    let done = daemon.finish(Duration::from_secs(10));
    assert!(done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr.contains("tc hook set: --hooks tc"),
        "the start says which set and why:\n{}",
        done.stderr
    );
    assert!(
        done.stderr.contains("conntrack netlink"),
        "and how flows are joined:\n{}",
        done.stderr
    );
    assert_eq!(
        d8_tests::bpf::still_loaded(&held),
        d8_tests::bpf::Held::default(),
        "left after SIGTERM"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Packets counted on `dev` of the lab node: by each foreign filter's action (by the action's
/// index) and by the device itself (`rx_packets`, `tx_packets`). One shell in the namespace reads
/// all of it. Actions are found by index because u32 filters of both directions share one hash
/// table and `tc filter show` lists both under each direction.
fn foreign_counts(lab: &Lab, dev: &str) -> (BTreeMap<u32, u64>, [u64; 2]) {
    let script = format!(
        "tc -s filter show dev {dev} ingress; tc -s filter show dev {dev} egress; \
         echo device $(cat /sys/class/net/{dev}/statistics/rx_packets) $(cat /sys/class/net/{dev}/statistics/tx_packets)"
    );
    let out = Command::new("ip")
        .args(["netns", "exec", lab.node_ns(), "sh", "-c", &script])
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let (mut actions, mut device, mut index) = (BTreeMap::new(), None, None);
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            // "index 11 ref 1 bind 1", then "Sent 1234 bytes 17 pkt (dropped 0, ...)".
            ["index", i, ..] => index = i.parse::<u32>().ok(),
            ["Sent", _, "bytes", n, "pkt", ..] => {
                if let (Some(i), Ok(n)) = (index.take(), n.parse::<u64>()) {
                    actions.insert(i, n);
                }
            }
            ["device", rx, tx] => device = Some([rx.parse().unwrap_or(0), tx.parse().unwrap_or(0)]),
            _ => {}
        }
    }
    (
        actions,
        device.unwrap_or_else(|| panic!("no device counters in:\n{text}")),
    )
}

/// Another tool's TC programs keep seeing every packet while d8-trace traces with the TC hook
/// set: a BPF classifier (classic bytecode that matches everything) and a plain `u32` filter,
/// each with an action that counts (a `mirred` mirror to a device that is down, then `continue`,
/// the only counting actions every test kernel has), at ingress and egress of a pod's interface.
/// Each counts exactly as many packets as the device received or sent, with d8-trace attached
/// through tcx (6.6+: tcx runs before the legacy filters, and its verdict decides whether they
/// run at all) and through netlink filters on the same clsact (d8's filter ahead of the foreign
/// ones). The uplink is the client pod's veth (Calico-style, where a CNI's own programs sit).
/// While d8's classifiers returned `TC_ACT_OK` they ended classification there and the
/// foreign filters counted nothing.
#[test]
fn tc_foreign_filters_see_every_packet() {
    let lab = lab(ProxyMode::Iptables);
    let client = PodSpec::new("default", "client", lab.spec().client_pod_ip);
    let dev = &lab::pod_veth_name(&client);
    // The mirror's target stays down: mirrored copies are dropped before they go anywhere.
    let mut setup = vec![
        "ip link add d8cnt0 type veth peer name d8cnt1".to_string(),
        format!("tc qdisc add dev {dev} clsact"),
    ];
    // (direction, the actions' indexes: BPF classifier, u32).
    const FILTERS: [(&str, [u32; 2]); 2] = [("ingress", [11, 12]), ("egress", [21, 22])];
    for (dir, [bpf, u32]) in FILTERS {
        let count = |index: u32| format!("action mirred egress mirror dev d8cnt0 continue index {index}");
        setup.push(format!(
            "tc filter add dev {dev} {dir} pref 10 protocol all bpf bytecode '1,6 0 0 4294967295,' {}",
            count(bpf)
        ));
        setup.push(format!(
            "tc filter add dev {dev} {dir} pref 20 protocol all u32 match u32 0 0 {}",
            count(u32)
        ));
    }
    for cmd in &setup {
        let st = Command::new("ip")
            .args(["netns", "exec", lab.node_ns(), "sh", "-c", cmd])
            .status()
            .expect("ip netns exec");
        assert!(st.success(), "{cmd}");
    }
    let traffic = |lab: &Lab| {
        for _ in 0..5 {
            let r = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
            assert_eq!(r.status(), Some(200));
        }
    };
    // Counts move by exactly the device's own: the filters were there before anything ran.
    // `env` None: no d8-trace (the counting itself is checked); Some: d8-trace with that env.
    let check = |what: &str, env: Option<&[(&str, &str)]>| {
        let (before, before_dev) = foreign_counts(&lab, dev);
        let trace =
            env.map(|env| Trace::start_with_env(&trace_args(&lab, "default/web", "60", &["--hooks", "tc"]), env));
        traffic(&lab);
        std::thread::sleep(Duration::from_millis(300));
        let (after, after_dev) = foreign_counts(&lab, dev);
        for (d, (dir, indexes)) in FILTERS.iter().enumerate() {
            let device = after_dev[d] - before_dev[d];
            assert!(
                device >= 5 * 4,
                "{what}: {dev} {dir} moved {device} packets for 5 requests"
            );
            for (i, kind) in indexes.iter().zip(["BPF classifier", "u32 filter"]) {
                let seen = after.get(i).zip(before.get(i)).map(|(a, b)| a - b);
                assert_eq!(
                    seen,
                    Some(device),
                    "{what}: the foreign {kind} at {dev} {dir} saw {seen:?} of {device} packets"
                );
            }
        }
        if let Some(t) = trace {
            t.signal(libc::SIGINT);
            let report = t.finish(Duration::from_secs(20)).report();
            let seen = report.flows_to("10.96.0.10:80");
            assert_eq!(
                seen.len(),
                5,
                "{what}: d8-trace saw the five requests too:\n{}",
                report.describe_flows()
            );
        }
    };
    check("without d8-trace", None);
    check(
        "with d8-trace (the kernel's own attach: tcx from 6.6, else netlink)",
        Some(&[]),
    );
    check(
        "with d8-trace (netlink filters on the same clsact)",
        Some(&[("D8_TC_NETLINK", "1")]),
    );
}

/// Runs `cmd` in the lab node's namespace; panics with its stderr if it fails.
fn in_node(lab: &Lab, cmd: &str) {
    let out = Command::new("ip")
        .args(["netns", "exec", lab.node_ns(), "sh", "-c", cmd])
        .output()
        .expect("ip netns exec");
    assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A foreign u32 filter (mirror to a device that is down, then continue) on `dev` ingress, on a
/// clsact the test adds: another tool's, which d8-trace must leave alone.
fn foreign_filter(lab: &Lab, dev: &str) {
    in_node(
        lab,
        &format!(
            "ip link show d8cnt0 >/dev/null 2>&1 || ip link add d8cnt0 type veth peer name d8cnt1; tc qdisc add dev {dev} clsact; tc filter add dev {dev} ingress pref 20 protocol all u32 match u32 0 0 action mirred egress mirror dev d8cnt0 continue"
        ),
    );
}

/// A d8-trace killed with SIGKILL cannot detach its netlink filters; the next one started in the
/// namespace removes them (and the clsact qdiscs the killed one added), and so does `d8-trace
/// cleanup`; another tool's filter stays. Each time the node ends as it was before.
#[test]
fn tc_sigkill_residue_is_removed_by_the_next_start_and_by_cleanup() {
    let lab = lab(ProxyMode::Iptables);
    foreign_filter(&lab, "ext0");
    let tracefs = || {
        std::fs::read_to_string("/proc/self/mounts")
            .unwrap_or_default()
            .contains(" /sys/kernel/tracing tracefs ")
    };
    let tracefs_before = tracefs();
    let before = node_tc_state(&lab, &[]);
    assert!(!before.contains("d8_tc_") && before.contains("u32"), "{before}");
    let netlink = [("D8_TC_NETLINK", "1")];
    let kill = || {
        let trace = Trace::start_with_env(&trace_args(&lab, "default/web", "60", &["--hooks", "tc"]), &netlink);
        trace.signal(libc::SIGKILL);
        let done = trace.finish(Duration::from_secs(10));
        assert!(!done.status.success(), "killed");
        let residue = node_tc_state(&lab, &[]);
        assert!(
            residue.contains("d8_tc_ingress") && residue.contains("d8_tc_egress"),
            "SIGKILL leaves the filters:\n{residue}"
        );
    };

    kill();
    let next = Trace::start_with_env(&trace_args(&lab, "default/web", "60", &["--hooks", "tc"]), &netlink);
    next.signal(libc::SIGINT);
    let done = next.finish(Duration::from_secs(15));
    assert!(
        done.stderr
            .contains("removed what an earlier d8-trace left: filter d8_tc_"),
        "{}",
        done.stderr
    );
    done.report();
    assert_eq!(
        node_tc_state(&lab, &[]),
        before,
        "after the next start and its normal exit"
    );

    kill();
    let out = d8_tests::run::run_to_end(&["cleanup", "--netns", lab.node_ns()]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout.contains("removed filter d8_tc_ingress") && out.stdout.contains("removed clsact qdisc on"),
        "{}",
        out.stdout
    );
    assert_eq!(node_tc_state(&lab, &[]), before, "after cleanup");
    assert_eq!(
        tracefs(),
        tracefs_before,
        "the tracefs mount of the killed d8-trace is gone too"
    );
    let out = d8_tests::run::run_to_end(&["cleanup", "--netns", lab.node_ns()]);
    assert_eq!(
        out.stdout.trim(),
        "nothing left by an earlier d8-trace",
        "{}",
        out.stderr
    );
}

/// A d8-trace killed in a network namespace that is then deleted (a pod gone) leaves a record of
/// the clsact qdisc it added, which went with the namespace: `cleanup`, run anywhere, forgets it.
#[test]
fn tc_cleanup_forgets_records_of_deleted_namespaces() {
    use std::os::unix::fs::MetadataExt;
    let lab = lab(ProxyMode::Iptables);
    let ns = lab.node_ns().to_string();
    let path = if ns.starts_with('/') {
        ns.clone()
    } else {
        format!("/run/netns/{ns}")
    };
    let inode = std::fs::metadata(&path).unwrap().ino();
    let records = || -> Vec<String> {
        std::fs::read_dir(d8_trace::loader::tc::RECORDS)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(&format!("{inode}-")))
            .collect()
    };
    let trace = Trace::start_with_env(
        &trace_args(&lab, "default/web", "60", &["--hooks", "tc"]),
        &[("D8_TC_NETLINK", "1")],
    );
    trace.signal(libc::SIGKILL);
    assert!(!trace.finish(Duration::from_secs(10)).status.success(), "killed");
    assert!(
        !records().is_empty(),
        "the killed d8-trace recorded the clsact qdiscs it added"
    );
    drop(lab);
    assert!(std::fs::metadata(&path).is_err(), "the lab removed {path}");

    let out = d8_tests::run::run_to_end(&["cleanup"]);
    assert!(out.status.success(), "{}", out.stderr);
    assert!(
        out.stdout
            .contains(&format!("in network namespace {inode}, which no longer exists")),
        "{}",
        out.stdout
    );
    assert_eq!(records(), Vec::<String>::new(), "records left: {}", out.stdout);
}

/// A clsact qdisc d8-trace added stays when another tool hung a filter on it meanwhile: removing
/// it would take that filter along.
#[test]
fn tc_keeps_its_clsact_when_another_tool_uses_it() {
    let lab = lab(ProxyMode::Iptables);
    let trace = Trace::start_with_env(
        &trace_args(&lab, "default/web", "60", &["--hooks", "tc"]),
        &[("D8_TC_NETLINK", "1")],
    );
    in_node(
        &lab,
        "ip link add d8cnt0 type veth peer name d8cnt1; tc filter add dev ext0 ingress pref 20 protocol all u32 match u32 0 0 action mirred egress mirror dev d8cnt0 continue",
    );
    trace.signal(libc::SIGINT);
    let done = trace.finish(Duration::from_secs(15));
    assert!(
        done.stderr.contains("left the clsact qdisc d8-trace added to ext0"),
        "{}",
        done.stderr
    );
    done.report();
    let after = node_tc_state(&lab, &[]);
    assert!(
        after.contains("ext0 ingress") && after.contains("u32"),
        "the other tool's filter stays:\n{after}"
    );
    assert!(!after.contains("d8_tc_"), "{after}");
}

/// A flow that began before the trace (an open UDP "connection": the same conntrack entry, so no
/// conntrack event while tracing) still has its replies joined on the TC hook set: its alias
/// comes from the conntrack table read at start. One flow, answered, through the backend
/// conntrack chose; the netfilter set (where the kernel has it) reports the same.
#[test]
fn tc_flow_opened_before_the_trace_gets_its_replies() {
    let lab = lab(ProxyMode::Iptables);
    let mut sets = vec!["tc"];
    if netfilter_links() {
        sets.push("netfilter");
    }
    for (i, hooks) in sets.into_iter().enumerate() {
        let port = 40_053 + i as u16;
        let ask = || lab::udp_request_from(lab.client_ns(), port, addr(DNS_VIP, 53), b"query", TIMEOUT).expect("udp");
        assert!(matches!(ask(), lab::UdpOutcome::Reply(_)), "before the trace");
        let (report, said) = traced(&lab, "default/dns", "3", hooks, &|_: &Lab| ask());
        assert!(matches!(said, lab::UdpOutcome::Reply(_)), "{hooks}: {said:?}");
        let flows = report.flows_to("10.96.0.53:53");
        assert_eq!(flows.len(), 1, "{hooks}: one flow:\n{}", report.describe_flows());
        assert!(
            flows[0].client.ends_with(&format!(":{port}")),
            "{hooks}: {}",
            flows[0].client
        );
        assert_eq!(flows[0].outcome, "established", "{hooks}:\n{}", report.describe_flows());
        assert_eq!(flows[0].backend.as_deref(), Some("10.244.1.21:5353"), "{hooks}");
    }
}

/// A TCP connection opened before the trace, whose segments during it carry no SYN, FIN or RST
/// (the netfilter set looks none of those up in its flow table: `mid_flow_segment`), still has
/// its drops found: the connection's conntrack entry, read at start, puts it in the kernel's
/// flow table (on the TC set, the conntrack join's). Here the pod drops everything once the
/// connection is open and idle, and the client's data is retransmitted into the drop during the
/// trace: one flow, with its backend and the drop.
#[test]
fn tcp_connection_opened_before_the_trace_has_its_drops_found() {
    use std::io::{Read, Write};
    const HOLD_VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 70);
    let spec = lab::ClusterSpec::new()
        .service(
            ServiceSpec::new("default", "hold", HOLD_VIP)
                .port("tcp", 7000, 7000, Protocol::Tcp)
                .selector("app", "hold"),
        )
        .pod(
            PodSpec::new("default", "hold-1", std::net::Ipv4Addr::new(10, 244, 1, 51))
                .label("app", "hold")
                .listen(7000, ListenerKind::Tcp),
        );
    d8_tests::require_root();
    let mut lab = Lab::up(spec, ProxyMode::Iptables).expect("lab up");
    let mut sets = vec!["tc"];
    if netfilter_links() {
        sets.push("netfilter");
    }
    for hooks in sets {
        // Open, and the server's banner read (it half-closes and waits for the client's end).
        let stream = lab::in_netns(lab.client_ns(), || {
            std::net::TcpStream::connect_timeout(&addr(HOLD_VIP, 7000).into(), TIMEOUT)
                .map_err(|e| lab::Error::Io(format!("connect: {e}")))
        })
        .expect("connect before the trace");
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut banner = [0u8; 64];
        let n = (&stream).read(&mut banner).expect("banner");
        assert!(banner[..n].starts_with(b"hold-1"), "{hooks}: {:?}", &banner[..n]);
        lab.set_drop_all("hold-1", true).expect("make the pod drop");
        let (report, ()) = traced(&lab, "default/hold", "3", hooks, &|_: &Lab| {
            (&stream).write_all(b"data after the trace began").expect("write");
        });
        lab.set_drop_all("hold-1", false).expect("lift the drop");
        let port = stream.local_addr().expect("local address").port();
        drop(stream);
        // The other set's connection may still be closing into the drop: only this one's flow.
        let flows: Vec<_> = report
            .flows_to("10.96.0.70:7000")
            .into_iter()
            .filter(|f| f.client.ends_with(&format!(":{port}")))
            .collect();
        assert_eq!(flows.len(), 1, "{hooks}: one flow:\n{}", report.describe_flows());
        assert_eq!(flows[0].backend.as_deref(), Some("10.244.1.51:7000"), "{hooks}");
        assert!(
            flows[0].drop_reason.is_some(),
            "{hooks}: the drop found:\n{}",
            report.describe_flows()
        );
    }
}
