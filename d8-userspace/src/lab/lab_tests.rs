//! The lab end to end: every fault and change against real namespaces (root only).

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use super::*;
use crate::model::Protocol;

const T: Duration = Duration::from_secs(2);

fn is_root() -> bool {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: the lab needs root and network namespaces");
        return false;
    }
    true
}

fn spec() -> ClusterSpec {
    ClusterSpec::new()
        .service(
            ServiceSpec::new("default", "web", Ipv4Addr::new(10, 96, 0, 10)).node_port(
                "http",
                80,
                8080,
                Protocol::Tcp,
                30080,
            ),
        )
        .service(ServiceSpec::new("default", "dns", Ipv4Addr::new(10, 96, 0, 53)).port("dns", 53, 5353, Protocol::Udp))
        .service(
            ServiceSpec::new("default", "empty", Ipv4Addr::new(10, 96, 0, 20))
                .port("", 80, 8080, Protocol::Tcp)
                .selector("app", "nobody"),
        )
        .pod(
            PodSpec::new("default", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                .label("app", "web")
                .listen(8080, ListenerKind::Http)
                .tcp_probes(8080),
        )
        .pod(
            PodSpec::new("default", "dns-1", Ipv4Addr::new(10, 244, 1, 21))
                .label("app", "dns")
                .listen(5353, ListenerKind::UdpEcho),
        )
}

fn exercise(mode: ProxyMode) {
    let prefix;
    {
        let mut lab = Lab::up(spec(), mode).unwrap_or_else(|e| panic!("{mode:?} lab up: {e}"));
        prefix = lab.prefix().to_string();
        let web = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
        match http_get(lab.client_ns(), web, "/", T).unwrap() {
            HttpOutcome::Response { status, body, .. } => {
                assert_eq!(status, 200);
                assert_eq!(body, "web-1\n");
            }
            other => panic!("{mode:?} ClusterIP HTTP: {other:?}\nrules:\n{}", lab.rules_text()),
        }
        let out = udp_request(
            lab.client_ns(),
            SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 53), 53),
            b"q",
            T,
        )
        .unwrap();
        assert_eq!(out, UdpOutcome::Reply(b"dns-1\nq".to_vec()), "{mode:?} UDP");
        // NodePort from the external client, and a kubelet probe from the node.
        let np = SocketAddrV4::new(lab.node_ip(), 30080);
        let out = http_get(lab.external_ns(), np, "/", T).unwrap();
        assert!(
            matches!(out, HttpOutcome::Response { status: 200, .. }),
            "{mode:?} NodePort: {out:?}"
        );
        for (addr, out) in lab.probe_all(T).unwrap() {
            assert!(out.is_connected(), "{mode:?} probe {addr}: {out:?}");
        }
        // No endpoints: REJECT -> refused.
        let out = tcp_connect(lab.client_ns(), SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 20), 80), T).unwrap();
        assert_eq!(out, TcpOutcome::Refused, "{mode:?} no endpoints");
        // Hairpin: the only backend reaches itself through its Service (masqueraded).
        let web_ns = lab.pod_ns("web-1").unwrap().to_string();
        let out = http_get(&web_ns, web, "/", T).unwrap();
        assert_eq!(out.backend().as_deref(), Some("web-1"), "{mode:?} hairpin: {out:?}");
        assert_ne!(
            out.remote_ip(),
            Some(Ipv4Addr::new(10, 244, 1, 11).into()),
            "{mode:?} hairpin is masqueraded"
        );
        // Listener stopped: backend RST.
        lab.stop_listener("web-1", 8080).unwrap();
        assert_eq!(tcp_connect(lab.client_ns(), web, T).unwrap(), TcpOutcome::Refused);
        lab.start_listener("web-1", 8080).unwrap();
        assert!(tcp_connect(lab.client_ns(), web, T).unwrap().is_connected());
        // Pod that drops everything: timeout.
        lab.set_drop_all("web-1", true).unwrap();
        let short = Duration::from_millis(500);
        assert_eq!(tcp_connect(lab.client_ns(), web, short).unwrap(), TcpOutcome::Timeout);
        lab.set_drop_all("web-1", false).unwrap();
        assert!(tcp_connect(lab.client_ns(), web, T).unwrap().is_connected());
        // Rules flushed for one Service while the API keeps it.
        lab.flush_service_rules("default", "web").unwrap();
        assert!(!tcp_connect(lab.client_ns(), web, short).unwrap().is_connected());
        assert!(
            lab.snapshot_json()["items"]
                .as_array()
                .unwrap()
                .iter()
                .any(|i| i["metadata"]["name"] == "web")
        );
        lab.resync_rules().unwrap();
        assert!(tcp_connect(lab.client_ns(), web, T).unwrap().is_connected());
        // Stale endpoint: pod gone from the API and its namespace deleted, rules keep it.
        lab.delete_from_api("web-1").unwrap();
        lab.delete_pod("web-1").unwrap();
        assert!(lab.pod_ns("web-1").is_none());
        assert!(lab.rules_text().contains("10.244.1.11"));
        assert_eq!(tcp_connect(lab.client_ns(), web, short).unwrap(), TcpOutcome::Timeout);
        // apply brings everything back.
        lab.apply(spec()).unwrap();
        assert!(tcp_connect(lab.client_ns(), web, T).unwrap().is_connected());
        assert_eq!(netns::list_with_prefix(&prefix).len(), lab.namespaces().len());
    }
    assert!(netns::list_with_prefix(&prefix).is_empty(), "teardown left namespaces");
}

#[test]
fn lab_end_to_end_iptables_and_nftables() {
    if !is_root() {
        return;
    }
    exercise(ProxyMode::Iptables);
    exercise(ProxyMode::Nftables);
    let pid_prefix = format!("d8lab-{}-", std::process::id());
    // Other tests of this process may run labs concurrently; only ours must be gone, which
    // `exercise` checked. cleanup_stale must never touch a live process's namespaces.
    let removed = cleanup_stale().unwrap();
    assert!(removed.iter().all(|n| !n.starts_with(&pid_prefix)));
}

#[test]
fn two_labs_side_by_side() {
    if !is_root() {
        return;
    }
    let a = Lab::up(spec(), ProxyMode::Iptables).unwrap();
    let b = Lab::up(spec(), ProxyMode::Nftables).unwrap();
    assert_ne!(a.prefix(), b.prefix());
    let web = SocketAddrV4::new(Ipv4Addr::new(10, 96, 0, 10), 80);
    assert!(matches!(
        http_get(a.client_ns(), web, "/", T).unwrap(),
        HttpOutcome::Response { status: 200, .. }
    ));
    assert!(tcp_connect(b.client_ns(), web, T).unwrap().is_connected());
}
