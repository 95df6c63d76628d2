//! The lab most tests trace: one node in iptables or nftables mode with a few Services.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use d8_trace::{
    lab::{ClusterSpec, Lab, ListenerKind, PodSpec, ServiceSpec},
    model::{Protocol, ProxyMode},
};

pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 53);
pub const EMPTY_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
pub const CLOSED_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
pub const DROPS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 40);

pub const TIMEOUT: Duration = Duration::from_secs(3);

/// web (2 HTTP pods), dns (UDP echo), empty (no endpoints), closed (nothing listens on the target
/// port), drops (a pod that drops everything).
pub fn spec() -> ClusterSpec {
    ClusterSpec::new()
        .service(
            ServiceSpec::new("default", "web", WEB_VIP)
                .port("http", 80, 8080, Protocol::Tcp)
                .selector("app", "web"),
        )
        .service(
            ServiceSpec::new("default", "dns", DNS_VIP)
                .port("dns", 53, 5353, Protocol::Udp)
                .selector("app", "dns"),
        )
        .service(
            ServiceSpec::new("default", "empty", EMPTY_VIP)
                .port("http", 80, 8080, Protocol::Tcp)
                .selector("app", "none"),
        )
        .service(
            ServiceSpec::new("default", "closed", CLOSED_VIP)
                .port("http", 80, 9090, Protocol::Tcp)
                .selector("app", "closed"),
        )
        .service(
            ServiceSpec::new("default", "drops", DROPS_VIP)
                .port("http", 80, 8080, Protocol::Tcp)
                .selector("app", "drops"),
        )
        .pod(
            PodSpec::new("default", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                .label("app", "web")
                .listen(8080, ListenerKind::Http),
        )
        .pod(
            PodSpec::new("default", "web-2", Ipv4Addr::new(10, 244, 1, 12))
                .label("app", "web")
                .listen(8080, ListenerKind::Http),
        )
        .pod(
            PodSpec::new("default", "dns-1", Ipv4Addr::new(10, 244, 1, 21))
                .label("app", "dns")
                .listen(5353, ListenerKind::UdpEcho),
        )
        .pod(
            PodSpec::new("default", "closed-1", Ipv4Addr::new(10, 244, 1, 31))
                .label("app", "closed")
                .listen(8080, ListenerKind::Http),
        )
        .pod(
            PodSpec::new("default", "drops-1", Ipv4Addr::new(10, 244, 1, 41))
                .label("app", "drops")
                .listen(8080, ListenerKind::Http),
        )
}

pub fn lab(mode: ProxyMode) -> Lab {
    d8_tests::require_root();
    // Namespaces of crashed earlier runs (their pid is dead); failing to remove them is not this
    // test's failure, and a new lab never collides with them (its names carry this pid).
    if let Err(e) = d8_trace::lab::cleanup_stale() {
        eprintln!("stale lab namespaces not removed: {e}");
    }
    Lab::up(spec(), mode).unwrap_or_else(|e| panic!("lab up ({mode:?}): {e}"))
}

pub fn addr(ip: Ipv4Addr, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(ip, port)
}

/// `d8-trace --svc SVC --netns NODE -o json --no-k8s --duration SECS` plus `extra`.
pub fn trace_args<'a>(lab: &'a Lab, svc: &'a str, secs: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "--svc",
        svc,
        "--netns",
        lab.node_ns(),
        "-o",
        "json",
        "--no-k8s",
        "--duration",
        secs,
    ];
    args.extend_from_slice(extra);
    args
}
