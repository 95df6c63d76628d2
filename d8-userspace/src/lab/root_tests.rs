//! Root-only checks of the lab against the project's own readers: the rules the lab writes must
//! read back (through `rules::read_*_mode` inside the node namespace) as exactly the Services and
//! endpoints the spec describes, with no warnings or problems; traffic policies must behave as on
//! a real node. Skipped with a printed reason when not root.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::*;
use crate::model::Protocol;

const T: Duration = Duration::from_secs(2);
const SHORT: Duration = Duration::from_millis(600);

fn is_root() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the lab needs root and network namespaces");
        return false;
    }
    true
}

fn ip(a: u8, b: u8, c: u8, d: u8) -> Ipv4Addr {
    Ipv4Addr::new(a, b, c, d)
}

/// Every shape kube-proxy distinguishes: Cluster/Local policies with and without local endpoints,
/// affinity, no endpoints, UDP, a not-ready and a remote endpoint.
fn policy_spec() -> ClusterSpec {
    let web = |name: &str, addr: Ipv4Addr| {
        PodSpec::new("shop", name, addr)
            .label("app", "web")
            .listen(8080, ListenerKind::Http)
            .tcp_probes(8080)
    };
    ClusterSpec::new()
        .service(
            ServiceSpec::new("shop", "web", ip(10, 96, 1, 1))
                .node_port("http", 80, 8080, Protocol::Tcp, 30080)
                .client_ip_affinity(10800),
        )
        .service(
            ServiceSpec::new("shop", "local", ip(10, 96, 1, 2))
                .node_port("http", 80, 8080, Protocol::Tcp, 30082)
                .selector("app", "web")
                .external_policy(TrafficPolicy::Local),
        )
        .service(
            ServiceSpec::new("shop", "remote", ip(10, 96, 1, 3))
                .node_port("http", 80, 8080, Protocol::Tcp, 30083)
                .external_ip(ip(192, 0, 2, 10))
                .load_balancer_ip(ip(192, 0, 2, 20))
                .selector("app", "far")
                .external_policy(TrafficPolicy::Local),
        )
        .service(
            ServiceSpec::new("shop", "itp", ip(10, 96, 1, 4))
                .port("http", 80, 8080, Protocol::Tcp)
                .selector("app", "far")
                .internal_policy(TrafficPolicy::Local),
        )
        .service(ServiceSpec::new("shop", "empty", ip(10, 96, 1, 5)).port("", 80, 8080, Protocol::Tcp))
        .service(ServiceSpec::new("kube-system", "dns", ip(10, 96, 0, 10)).port("dns", 53, 53, Protocol::Udp))
        .pod(web("web-1", ip(10, 244, 1, 11)))
        .pod(web("web-2", ip(10, 244, 1, 12)))
        .pod(web("web-3", ip(10, 244, 1, 13)).ready(false))
        .pod(
            PodSpec::new("shop", "far-1", ip(10, 244, 2, 11))
                .label("app", "far")
                .on_node("node-b"),
        )
        .pod(
            PodSpec::new("kube-system", "dns-1", ip(10, 244, 1, 53))
                .label("app", "dns")
                .listen(53, ListenerKind::UdpEcho),
        )
}

fn read_rules(lab: &Lab) -> crate::model::rules::ModeReading {
    let mode = lab.mode();
    in_netns(lab.node_ns(), move || {
        let r = match mode {
            ProxyMode::Nftables => crate::model::rules::read_nftables_mode(crate::model::rules::RulesFrom::Tools, None),
            _ => crate::model::rules::read_iptables_mode(crate::model::rules::RulesFrom::Tools, None),
        };
        r.map_err(|e| Error::Io(format!("{e:?}")))
    })
    .unwrap()
}

fn check_rules_read_back(lab: &Lab) {
    let mode = lab.mode();
    let reading = read_rules(lab);
    assert!(reading.rules_present, "{mode:?}");
    assert!(
        reading.warnings.is_empty(),
        "{mode:?} reader warnings: {:#?}",
        reading.warnings
    );
    for svc in &reading.services {
        assert!(
            svc.rules.problems.is_empty(),
            "{mode:?} {}: {:?}",
            svc.service,
            svc.rules.problems
        );
    }
    let find = |ns: &str, name: &str| {
        reading
            .services
            .iter()
            .find(|s| s.service.namespace == ns && s.service.name == name)
            .unwrap_or_else(|| panic!("{mode:?}: {ns}/{name} not read back from the rules"))
    };
    let eps = |s: &crate::model::Service| {
        let mut v: Vec<String> = s
            .endpoints
            .iter()
            .filter(|e| e.in_rules)
            .map(|e| format!("{}:{}", e.ip, e.port))
            .collect();
        v.sort();
        v.dedup();
        v
    };
    let web = find("shop", "web");
    assert_eq!(
        eps(web),
        ["10.244.1.11:8080", "10.244.1.12:8080"],
        "{mode:?} only ready endpoints"
    );
    assert_eq!(web.rules.affinity_timeout_secs, Some(10800), "{mode:?}");
    assert_eq!(
        eps(find("shop", "local")),
        ["10.244.1.11:8080", "10.244.1.12:8080"],
        "{mode:?}"
    );
    let remote = find("shop", "remote");
    assert!(
        !remote.rules.no_local_endpoints.is_empty(),
        "{mode:?} ETP=Local without local endpoints"
    );
    assert!(
        !find("shop", "itp").rules.no_local_endpoints.is_empty(),
        "{mode:?} ITP=Local without local endpoints"
    );
    assert!(
        !find("shop", "empty").rules.no_endpoints.is_empty(),
        "{mode:?} no endpoints"
    );
    assert_eq!(eps(find("kube-system", "dns")), ["10.244.1.53:53"], "{mode:?}");
}

fn check_traffic(lab: &Lab) {
    let mode = lab.mode();
    let node = lab.node_ip();
    // Affinity: every request from the client pod lands on one backend.
    let web = SocketAddrV4::new(ip(10, 96, 1, 1), 80);
    let first = http_get(lab.client_ns(), web, "/", T).unwrap();
    assert_eq!(first.status(), Some(200), "{mode:?} {first:?}");
    for _ in 0..4 {
        assert_eq!(
            http_get(lab.client_ns(), web, "/", T).unwrap().backend(),
            first.backend(),
            "{mode:?} affinity"
        );
    }
    // ETP=Cluster NodePort from outside: masqueraded to the node side of the pod.
    let out = http_get(lab.external_ns(), SocketAddrV4::new(node, 30080), "/", T).unwrap();
    assert_eq!(out.status(), Some(200), "{mode:?} {out:?}");
    assert_ne!(
        out.remote_ip(),
        Some(lab.spec().external_client_ip.into()),
        "{mode:?} ETP=Cluster masquerades"
    );
    // ETP=Local with local endpoints: the client's address is preserved.
    let out = http_get(lab.external_ns(), SocketAddrV4::new(node, 30082), "/", T).unwrap();
    assert_eq!(
        out.remote_ip(),
        Some(lab.spec().external_client_ip.into()),
        "{mode:?} ETP=Local keeps the source: {out:?}"
    );
    // ETP=Local without local endpoints: NodePort, external IP and LB IP are dropped for outsiders.
    for addr in [
        SocketAddrV4::new(node, 30083),
        SocketAddrV4::new(ip(192, 0, 2, 10), 80),
        SocketAddrV4::new(ip(192, 0, 2, 20), 80),
    ] {
        assert_eq!(
            tcp_connect(lab.external_ns(), addr, SHORT).unwrap(),
            TcpOutcome::Timeout,
            "{mode:?} {addr}"
        );
    }
    // Node-originated traffic (kubelet) reaches pods from the node IP.
    let out = http_get(
        lab.node_ns(),
        SocketAddrV4::new(ip(10, 244, 1, 11), 8080),
        "/healthz",
        T,
    )
    .unwrap();
    assert_eq!(
        out.remote_ip(),
        Some(node.into()),
        "{mode:?} node source address: {out:?}"
    );
    // ITP=Local without local endpoints: dropped; no endpoints at all: rejected.
    assert_eq!(
        tcp_connect(lab.client_ns(), SocketAddrV4::new(ip(10, 96, 1, 4), 80), SHORT).unwrap(),
        TcpOutcome::Timeout
    );
    assert_eq!(
        tcp_connect(lab.client_ns(), SocketAddrV4::new(ip(10, 96, 1, 5), 80), T).unwrap(),
        TcpOutcome::Refused
    );
    assert_eq!(
        udp_request(lab.client_ns(), SocketAddrV4::new(ip(10, 96, 0, 10), 53), b"x", T).unwrap(),
        UdpOutcome::Reply(b"dns-1\nx".to_vec())
    );
}

fn check_kube_proxy(lab: &Lab) {
    let mode = lab.mode();
    let status = in_netns(lab.node_ns(), || Ok(crate::model::kube_proxy::status())).unwrap();
    assert_eq!(status.mode, mode);
    assert_eq!(status.running, Some(true));
    assert_eq!(status.healthz_ok, Some(true));
    assert_eq!(status.version.as_deref(), Some("v1.33.2"));
}

#[test]
fn rules_read_back_and_policies_hold() {
    if !is_root() {
        return;
    }
    for mode in [ProxyMode::Iptables, ProxyMode::Nftables] {
        let mut lab = Lab::up(policy_spec(), mode).unwrap();
        check_rules_read_back(&lab);
        check_traffic(&lab);
        check_kube_proxy(&lab);
        // kube_proxy_not_running: endpoints stop answering, the rules stay.
        lab.stop_kube_proxy();
        let status = in_netns(lab.node_ns(), || Ok(crate::model::kube_proxy::status())).unwrap();
        assert_ne!(status.running, Some(true), "{mode:?}");
        assert!(read_rules(&lab).rules_present);
        assert!(!lab.snapshot_json().to_string().contains("kube-proxy:"));
    }
}

#[test]
fn no_accept_listener_times_out_and_prober_counts() {
    if !is_root() {
        return;
    }
    let spec = ClusterSpec::new()
        .service(ServiceSpec::new("d", "stuck", ip(10, 96, 2, 1)).port("", 80, 8080, Protocol::Tcp))
        .pod(
            PodSpec::new("d", "stuck-1", ip(10, 244, 1, 31))
                .label("app", "stuck")
                .listen(8080, ListenerKind::TcpNoAccept)
                .tcp_probes(8080),
        )
        .pod(
            PodSpec::new("d", "ok-1", ip(10, 244, 1, 32))
                .listen(9000, ListenerKind::Tcp)
                .tcp_probes(9000),
        );
    let lab = Lab::up(spec, ProxyMode::Nftables).unwrap();
    let out = tcp_connect(lab.client_ns(), SocketAddrV4::new(ip(10, 96, 2, 1), 80), SHORT).unwrap();
    assert_eq!(out, TcpOutcome::Timeout);
    let out = tcp_connect(lab.client_ns(), SocketAddrV4::new(ip(10, 244, 1, 32), 9000), T).unwrap();
    assert_eq!(out.backend().as_deref(), Some("ok-1"));
    let prober = lab.start_prober(Duration::from_millis(100));
    let results = lab.probe_all(SHORT).unwrap();
    assert_eq!(results.len(), 2);
    drop(prober);
}

#[test]
fn cleanup_stale_removes_dead_pids_only() {
    if !is_root() {
        return;
    }
    // A pid above the kernel's maximum can never be alive.
    let dead = "d8lab-4194305-0-node";
    netns::run("ip", &["netns", "add", dead], None).unwrap();
    let mine = format!("d8lab-{}-999-probe", std::process::id());
    netns::run("ip", &["netns", "add", &mine], None).unwrap();
    let removed = cleanup_stale().unwrap();
    let mine_survived = netns::list_with_prefix(&mine).len() == 1;
    netns::delete(&mine).unwrap();
    assert!(removed.contains(&dead.to_string()), "{removed:?}");
    assert!(mine_survived, "a live process's namespace was removed");
    assert!(netns::list_with_prefix(dead).is_empty());
}

#[test]
fn ten_pods_come_up_and_answer_directly() {
    if !is_root() {
        return;
    }
    let mut spec =
        ClusterSpec::new().service(ServiceSpec::new("d", "many", ip(10, 96, 3, 1)).port("", 80, 8080, Protocol::Tcp));
    for i in 0..10u8 {
        spec = spec.pod(
            PodSpec::new("d", &format!("many-{i}"), ip(10, 244, 1, 100 + i))
                .label("app", "many")
                .listen(8080, ListenerKind::Tcp),
        );
    }
    let started = std::time::Instant::now();
    let lab = Lab::up(spec, ProxyMode::Iptables).unwrap();
    eprintln!("ten-pod lab up in {:?}", started.elapsed());
    for i in 0..10u8 {
        let out = tcp_connect(lab.client_ns(), SocketAddrV4::new(ip(10, 244, 1, 100 + i), 8080), T).unwrap();
        assert_eq!(out.backend(), Some(format!("many-{i}")));
    }
    // The probability cascade spreads connections: 40 connections reach more than one backend.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.extend(
            tcp_connect(lab.client_ns(), SocketAddrV4::new(ip(10, 96, 3, 1), 80), T)
                .unwrap()
                .backend(),
        );
    }
    assert!(seen.len() > 1, "{seen:?}");
    let started = std::time::Instant::now();
    drop(lab);
    eprintln!("ten-pod lab down in {:?}", started.elapsed());
}

#[test]
fn failed_up_leaves_nothing_behind() {
    if !is_root() {
        return;
    }
    let mut spec =
        ClusterSpec::new().service(ServiceSpec::new("d", "x", ip(10, 96, 4, 1)).port("", 80, 80, Protocol::Tcp));
    spec.service_cidr = "not-a-cidr".into();
    assert!(matches!(
        Lab::up(spec.clone(), ProxyMode::Nftables),
        Err(Error::Spec(_))
    ));
    // A failure after the node namespace exists: `ip` refuses the address.
    spec.service_cidr = "10.96.0.0/16".into();
    spec.node_prefix_len = 33;
    let before = netns::list_with_prefix(&format!("d8lab-{}-", std::process::id())).len();
    let err = Lab::up(spec, ProxyMode::Nftables).err().expect("ip must refuse a /33");
    assert!(
        matches!(&err, Error::Command { command, .. } if command.contains("ip -n")),
        "{err}"
    );
    // Other tests of this process may be building labs right now: only compare what this lab
    // would have left, by counting nothing new that stays.
    let after = netns::list_with_prefix(&format!("d8lab-{}-", std::process::id())).len();
    assert!(after <= before + 4, "{before} -> {after}");
    // IPVS mode needs the ip_vs module: without it (the development host's 6.18) the error names
    // the module, before any namespace exists; with it (the VM suite's 6.1) the lab comes up.
    let ipvs = Lab::up(ClusterSpec::new(), ProxyMode::Ipvs);
    if std::path::Path::new("/sys/module/ip_vs").exists() {
        assert!(ipvs.is_ok(), "{:?}", ipvs.err());
    } else {
        match ipvs {
            Err(Error::Spec(msg)) => assert!(msg.contains("ip_vs"), "{msg}"),
            Err(e) => panic!("expected a spec error naming ip_vs, got {e}"),
            Ok(_) => panic!("IPVS lab came up without the ip_vs module"),
        }
    }
}

#[test]
fn api_view_diverges_on_demand() {
    if !is_root() {
        return;
    }
    let spec = ClusterSpec::new()
        .service(ServiceSpec::new("d", "web", ip(10, 96, 5, 1)).port("http", 80, 8080, Protocol::Tcp))
        .pod(
            PodSpec::new("d", "web-1", ip(10, 244, 1, 61))
                .label("app", "web")
                .listen(8080, ListenerKind::Tcp),
        )
        .pod(
            PodSpec::new("d", "web-2", ip(10, 244, 1, 62))
                .label("app", "web")
                .listen(8080, ListenerKind::Tcp),
        );
    let mut lab = Lab::up(spec.clone(), ProxyMode::Iptables).unwrap();
    let slice_eps = |lab: &Lab| {
        let snap = lab.snapshot_json();
        let slice = snap["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["kind"] == "EndpointSlice")
            .unwrap()
            .clone();
        slice["endpoints"].as_array().cloned().unwrap_or_default()
    };
    lab.set_api_ready("web-2", false).unwrap();
    assert_eq!(slice_eps(&lab)[1]["conditions"]["ready"], false);
    assert!(lab.rules_text().contains("10.244.1.62:8080"));
    lab.make_stale_endpoint("web-1").unwrap();
    assert_eq!(slice_eps(&lab).len(), 1);
    assert!(lab.pod_ns("web-1").is_none());
    assert!(lab.rules_text().contains("10.244.1.61:8080"));
    lab.apply(spec).unwrap();
    assert_eq!(slice_eps(&lab).len(), 2);
    assert!(lab.pod_ns("web-1").is_some());
}
