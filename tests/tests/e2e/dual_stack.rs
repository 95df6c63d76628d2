//! Dual-stack labs (issue 16): the lab node carries IPv4 and IPv6 (every address has its IPv6
//! twin, `lab::spec::ipv6_twin`), kube-proxy's rules are written for both families (ip6tables,
//! `table ip6 kube-proxy`) and the API snapshot holds both ClusterIPs and both EndpointSlices.
//! Each scenario sends real IPv6 traffic through the rules and asks `d8-trace explain` what the
//! model makes of them, in iptables and in nftables mode.
//!
//! The `*_traced_over_ipv6_*` scenarios trace IPv6 flows for real (`--family 6`): the kernel
//! programs parse IPv6 (the netfilter set's `nf_pre6`/`nf_post6`, the TC set's ethertype 0x86DD
//! path, the drop and socket tracepoints), so each verdict class rests on IPv6 flows, the report's
//! `families.seen` says IPv6, and the evidence names the IPv6 addresses. With
//! `D8_E2E_HOOKS=tc` they run on the TC set.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use d8_tests::run::run_to_end;
use d8_trace::{
    lab::{self, ClusterSpec, HttpOutcome, ListenerKind, PodSpec, ServiceSpec, TcpOutcome, spec::ipv6_twin},
    model::{Protocol, ProxyMode},
};

use crate::{
    family::{Family, Flows, across_families},
    real_cluster,
    scenarios::{self, Api, SILENT, Scenario, T},
};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const WEB_1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 11);
const WEB_2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 12);

/// `default/web` (dual-stack, PreferDualStack) over two HTTP pods, and `default/empty` (dual-stack,
/// no endpoints).
fn spec() -> ClusterSpec {
    let mut spec = ClusterSpec::new()
        .dual_stack()
        .service(ServiceSpec::new("default", "web", VIP).port("http", 80, 8080, Protocol::Tcp))
        .service(
            ServiceSpec::new("default", "empty", Ipv4Addr::new(10, 96, 0, 20))
                .port("p", 80, 8080, Protocol::Tcp)
                .selector("app", "nobody"),
        );
    for (name, ip) in [("web-1", WEB_1), ("web-2", WEB_2)] {
        spec = spec.pod(
            PodSpec::new("default", name, ip)
                .label("app", "web")
                .listen(8080, ListenerKind::Http),
        );
    }
    spec
}

fn v6(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(ipv6_twin(ip)), port)
}

fn http_status(lab: &lab::Lab, to: SocketAddr) -> Option<u16> {
    match lab::http_get(lab.client_ns(), to, "/", T).expect("http get") {
        HttpOutcome::Response { status, .. } => Some(status),
        HttpOutcome::Failed(_) => None,
    }
}

/// Both families answer through kube-proxy's rules, and `explain` holds both.
fn healthy(mode: ProxyMode) {
    let s = Scenario::up(spec(), mode);
    for to in [SocketAddr::new(VIP.into(), 80), v6(VIP, 80)] {
        assert_eq!(
            http_status(&s.lab, to),
            Some(200),
            "{mode:?} {to} through the rules:\n{}",
            s.lab.rules_text()
        );
    }
    // A pod's own IPv6 address, from the node (kubelet's view).
    let out = lab::http_get(s.lab.node_ns(), v6(WEB_1, 8080), "/", T).expect("http get");
    assert_eq!(out.status(), Some(200), "{mode:?} pod over IPv6: {out:?}");
    let run = s.explain("default/web");
    run.assert_root("healthy");
    assert_eq!(run.report.families.configured, ["IPv4", "IPv6"], "{}", run.context);
    assert!(
        run.report.families.seen.is_empty(),
        "explain traces nothing; {}",
        run.context
    );
    let twin = ipv6_twin(VIP).to_string();
    assert!(
        run.report
            .frontends
            .iter()
            .any(|f| f.kind == "cluster_ip" && f.ip == twin),
        "the IPv6 ClusterIP is a frontend; {}",
        run.context
    );
    for ip in [WEB_1, WEB_2] {
        let want = ipv6_twin(ip).to_string();
        let ep = run
            .report
            .endpoints
            .iter()
            .find(|e| e.ip == want && e.port == 8080)
            .unwrap_or_else(|| panic!("no IPv6 endpoint {want}; {}", run.context));
        assert!(
            ep.in_rules && ep.in_api == Some(true) && ep.ready == Some(true) && ep.local == Some(true),
            "{ep:?}; {}",
            run.context
        );
    }
    assert!(run.report.warnings.is_empty(), "{}", run.context);
}

#[test]
fn dual_stack_healthy_iptables() {
    healthy(ProxyMode::Iptables);
}

#[test]
fn dual_stack_healthy_nftables() {
    healthy(ProxyMode::Nftables);
}

/// No endpoints: kube-proxy rejects both families.
fn no_endpoints(mode: ProxyMode) {
    let s = Scenario::up(spec(), mode);
    let out = lab::tcp_connect(s.lab.client_ns(), v6(Ipv4Addr::new(10, 96, 0, 20), 80), T).expect("connect");
    assert_eq!(out, TcpOutcome::Refused, "{mode:?} IPv6 REJECT");
    let run = s.explain("default/empty");
    run.assert_root("no_endpoints");
    assert_eq!(run.report.families.configured, ["IPv4", "IPv6"], "{}", run.context);
}

#[test]
fn dual_stack_no_endpoints_iptables() {
    no_endpoints(ProxyMode::Iptables);
}

#[test]
fn dual_stack_no_endpoints_nftables() {
    no_endpoints(ProxyMode::Nftables);
}

/// kube-proxy's IPv6 proxier lacks `default/web` while its IPv4 one has it: IPv4 answers, IPv6
/// does not, and the verdict names the family.
fn ipv6_rules_missing(mode: ProxyMode) {
    let mut s = Scenario::up(spec(), mode);
    s.lab
        .flush_service_ipv6_rules("default", "web")
        .expect("flush the IPv6 rules");
    assert_eq!(
        http_status(&s.lab, SocketAddr::new(VIP.into(), 80)),
        Some(200),
        "{mode:?} IPv4"
    );
    let out = lab::tcp_connect(s.lab.client_ns(), v6(VIP, 80), crate::scenarios::SILENT).expect("connect");
    assert!(!out.is_connected(), "{mode:?} IPv6 without rules: {out:?}");
    let run = s.explain("default/web");
    run.assert_root("kube_proxy_rules_missing");
    let detail = &run.report.root_cause.as_ref().expect("root cause").detail;
    assert!(
        detail.starts_with("kube-proxy programmed default/web for IPv4 but not for IPv6"),
        "{}",
        run.context
    );
    run.evidence("rules", &["its IPv6 rules do not mention", &ipv6_twin(VIP).to_string()]);
}

#[test]
fn dual_stack_ipv6_rules_missing_iptables() {
    ipv6_rules_missing(ProxyMode::Iptables);
}

#[test]
fn dual_stack_ipv6_rules_missing_nftables() {
    ipv6_rules_missing(ProxyMode::Nftables);
}

/// A trace narrowed to IPv4 (`--family 4`) of a dual-stack Service: its flows are IPv4 ones, the
/// report says which families the Service has and which were seen, and that IPv6 went unchecked.
fn traced_over_ipv4(mode: ProxyMode) {
    let s = Scenario::up(spec(), mode);
    let run = s.trace("default/web", Api::Snapshot, 3, &["--family", "4"], |lab| {
        for _ in 0..2 {
            assert_eq!(http_status(lab, SocketAddr::new(VIP.into(), 80)), Some(200));
        }
    });
    run.assert_root("healthy");
    assert_eq!(run.report.families.configured, ["IPv4", "IPv6"], "{}", run.context);
    assert_eq!(run.report.families.seen, ["IPv4"], "{}", run.context);
    assert_eq!(run.flows_to("10.96.0.10:80").len(), 2, "{}", run.context);
    run.evidence("trace", &["default/web is dual-stack and no IPv6 flow was traced"]);
}

#[test]
fn dual_stack_traced_over_ipv4_iptables() {
    traced_over_ipv4(ProxyMode::Iptables);
}

#[test]
fn dual_stack_traced_over_ipv4_nftables() {
    traced_over_ipv4(ProxyMode::Nftables);
}

/// `--family 6` for an IPv4-only Service: exit 2, naming the families it has, before anything is
/// attached.
#[test]
fn family_the_service_lacks_is_a_usage_error() {
    let mut single = spec();
    single.services[0].single_stack = true;
    let s = Scenario::up(single, ProxyMode::Nftables);
    let done = run_to_end(&[
        "--svc",
        "default/web",
        "--family",
        "6",
        "--duration",
        "2",
        "--netns",
        s.lab.node_ns(),
        "--no-k8s",
        "-o",
        "json",
    ]);
    assert_eq!(done.status.code(), Some(2), "{}", done.stderr);
    assert!(
        done.stderr.contains(
            "default/web has no IPv6 frontend (its families: IPv4); trace with --family any or the other family"
        ),
        "{}",
        done.stderr
    );
}

// ---- every verdict class over IPv6, compared with IPv4 -------------------------------------------
//
// The scenarios' own bodies (`scenarios.rs`, `real_cluster.rs`) run over IPv6 and then over IPv4
// on the same dual-stack lab spec (`--family 6`, then `--family 4`); `family::across_families`
// checks that both reports say the same thing about different addresses.

#[test]
fn healthy_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| scenarios::healthy(ProxyMode::Iptables, fam));
}

#[test]
fn healthy_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| scenarios::healthy(ProxyMode::Nftables, fam));
}

/// kube-proxy's IPv6 REJECT answers with ICMPv6 port unreachable; the programs tie it back to the
/// flow by the packet it quotes.
#[test]
fn no_endpoints_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| scenarios::no_endpoints(ProxyMode::Iptables, fam));
}

#[test]
fn no_endpoints_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| scenarios::no_endpoints(ProxyMode::Nftables, fam));
}

#[test]
fn stale_endpoint_traced_over_ipv6_iptables() {
    across_families(Flows::Kinds, |fam| {
        scenarios::stale_endpoint(ProxyMode::Iptables, Api::Snapshot, fam)
    });
}

#[test]
fn stale_endpoint_traced_over_ipv6_nftables() {
    across_families(Flows::Kinds, |fam| {
        scenarios::stale_endpoint(ProxyMode::Nftables, Api::Snapshot, fam)
    });
}

/// Nothing listens in the pod: its IPv6 stack answers the SYN with a RST.
#[test]
fn backend_refused_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        scenarios::backend_refused(ProxyMode::Iptables, fam)
    });
}

#[test]
fn backend_refused_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        scenarios::backend_refused(ProxyMode::Nftables, fam)
    });
}

/// externalTrafficPolicy=Local without a local endpoint: kube-proxy's IPv6 rules drop the external
/// client's SYNs to the node's IPv6 address and NodePort, and the drop tracepoint names the
/// reason for an IPv6 packet.
#[test]
fn etp_local_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        scenarios::etp_local(ProxyMode::Iptables, true, fam)
    });
}

#[test]
fn etp_local_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        scenarios::etp_local(ProxyMode::Nftables, true, fam)
    });
}

/// kubelet's probes over IPv6 (an IPv6-primary cluster) closed by RST beside healthy requests.
#[test]
fn probe_rst_traced_over_ipv6_iptables() {
    across_families(Flows::Kinds, |fam| scenarios::probe_rst(ProxyMode::Iptables, fam));
}

#[test]
fn probe_rst_traced_over_ipv6_nftables() {
    across_families(Flows::Kinds, |fam| scenarios::probe_rst(ProxyMode::Nftables, fam));
}

#[test]
fn mixed_stale_and_refused_traced_over_ipv6_iptables() {
    across_families(Flows::Kinds, |fam| scenarios::mixed_incident(ProxyMode::Iptables, fam));
}

#[test]
fn mixed_stale_and_refused_traced_over_ipv6_nftables() {
    across_families(Flows::Kinds, |fam| scenarios::mixed_incident(ProxyMode::Nftables, fam));
}

/// Silent attempts over IPv6 stay silent in the report of the other family: a trace of both
/// families with only IPv6 traffic sees IPv6 only.
#[test]
fn only_the_family_that_flowed_is_seen_nftables() {
    let s = Scenario::up(spec(), ProxyMode::Nftables);
    let run = s.trace("default/web", Api::Snapshot, 3, &[], |lab| {
        assert_eq!(http_status(lab, v6(VIP, 80)), Some(200));
        let out = lab::tcp_connect(lab.client_ns(), v6(VIP, 81), SILENT).expect("connect");
        assert!(!out.is_connected(), "no such port: {out:?}");
    });
    assert_eq!(run.report.families.seen, ["IPv6"], "{}", run.context);
    assert_eq!(run.flows_to(&v6(VIP, 80).to_string()).len(), 1, "{}", run.context);
}

/// A listener that never accepts.
#[test]
fn backend_timeout_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        scenarios::backend_timeout(ProxyMode::Iptables, true, fam)
    });
}

#[test]
fn backend_timeout_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        scenarios::backend_timeout(ProxyMode::Nftables, true, fam)
    });
}

/// A pod that drops everything: its IPv6 SYN's drop is traced with the kernel's reason, as the
/// IPv4 one is (the lab's drop table lets neighbor discovery through, as ARP passes for IPv4).
#[test]
fn backend_timeout_drop_all_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        scenarios::backend_timeout(ProxyMode::Iptables, false, fam)
    });
}

#[test]
fn backend_timeout_drop_all_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        scenarios::backend_timeout(ProxyMode::Nftables, false, fam)
    });
}

#[test]
fn udp_healthy_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| scenarios::udp_healthy(ProxyMode::Iptables, fam));
}

#[test]
fn udp_healthy_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| scenarios::udp_healthy(ProxyMode::Nftables, fam));
}

#[test]
fn udp_no_endpoints_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        scenarios::udp_no_endpoints(ProxyMode::Iptables, fam)
    });
}

#[test]
fn udp_no_endpoints_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        scenarios::udp_no_endpoints(ProxyMode::Nftables, fam)
    });
}

#[test]
fn udp_stale_endpoint_traced_over_ipv6_iptables() {
    across_families(Flows::Kinds, |fam| {
        scenarios::udp_stale_endpoint(ProxyMode::Iptables, fam)
    });
}

#[test]
fn udp_stale_endpoint_traced_over_ipv6_nftables() {
    across_families(Flows::Kinds, |fam| {
        scenarios::udp_stale_endpoint(ProxyMode::Nftables, fam)
    });
}

#[test]
fn rules_missing_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| scenarios::rules_missing(ProxyMode::Iptables, fam));
}

#[test]
fn rules_missing_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| scenarios::rules_missing(ProxyMode::Nftables, fam));
}

#[test]
fn kube_proxy_not_running_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        scenarios::kube_proxy_not_running(ProxyMode::Iptables, fam)
    });
}

#[test]
fn kube_proxy_not_running_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        scenarios::kube_proxy_not_running(ProxyMode::Nftables, fam)
    });
}

/// kube-proxy two minors behind the control plane: the finding does not depend on the family the
/// healthy flows took.
#[test]
fn kube_proxy_version_skew_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        scenarios::kube_proxy_version_skew(ProxyMode::Iptables, fam)
    });
}

#[test]
fn kube_proxy_version_skew_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        scenarios::kube_proxy_version_skew(ProxyMode::Nftables, fam)
    });
}

#[test]
fn service_port_undefined_traced_over_ipv6_iptables() {
    across_families(Flows::Counted, |fam| {
        real_cluster::service_port_undefined(ProxyMode::Iptables, fam)
    });
}

#[test]
fn service_port_undefined_traced_over_ipv6_nftables() {
    across_families(Flows::Counted, |fam| {
        real_cluster::service_port_undefined(ProxyMode::Nftables, fam)
    });
}

// ---- the verdict classes of `real_cluster.rs`, over IPv6 alone ------------------------------------
//
// Their IPv4 runs are `real_cluster::*`; here each body runs once, over IPv6 (`--family 6` on a
// dual-stack lab), with its own assertions written for either family, and the report must have
// seen IPv6 alone. Not compared with a second IPv4 run: that would re-run `real_cluster::` inside
// the host suite's time budget.

/// One scenario over IPv6 alone: its assertions, and the family its flows were seen in.
fn over_ipv6_alone(body: impl Fn(Family) -> scenarios::Run) {
    let run = body(Family::V6);
    assert!(!run.report.flows.is_empty(), "no flow traced; {}", run.context);
    assert_eq!(run.report.families.seen, ["IPv6"], "{}", run.context);
}

/// loadBalancerSourceRanges in IPv6 (`fd00:10:244:1::/64`): kube-proxy's IPv6 firewall drops the
/// external client's SYNs.
#[test]
fn source_range_denied_traced_over_ipv6_iptables() {
    over_ipv6_alone(|fam| real_cluster::source_range_denied(ProxyMode::Iptables, fam));
}

#[test]
fn source_range_denied_traced_over_ipv6_nftables() {
    over_ipv6_alone(|fam| real_cluster::source_range_denied(ProxyMode::Nftables, fam));
}

/// An address of the IPv6 service CIDR that no Service holds.
#[test]
fn cluster_ip_unallocated_traced_over_ipv6_iptables() {
    over_ipv6_alone(|fam| real_cluster::cluster_ip_unallocated(ProxyMode::Iptables, fam));
}

#[test]
fn cluster_ip_unallocated_traced_over_ipv6_nftables() {
    over_ipv6_alone(|fam| real_cluster::cluster_ip_unallocated(ProxyMode::Nftables, fam));
}

/// An IPv6 UDP conntrack entry that still DNATs to a deleted pod.
#[test]
fn stale_conntrack_entry_traced_over_ipv6_iptables() {
    over_ipv6_alone(|fam| real_cluster::stale_conntrack_entry(ProxyMode::Iptables, fam));
}

#[test]
fn stale_conntrack_entry_traced_over_ipv6_nftables() {
    over_ipv6_alone(|fam| real_cluster::stale_conntrack_entry(ProxyMode::Nftables, fam));
}

/// kube-proxy's last sync predates an IPv6 endpoint the API has.
#[test]
fn kube_proxy_not_synced_traced_over_ipv6_iptables() {
    over_ipv6_alone(|fam| real_cluster::kube_proxy_not_synced(ProxyMode::Iptables, fam));
}

#[test]
fn kube_proxy_not_synced_traced_over_ipv6_nftables() {
    over_ipv6_alone(|fam| real_cluster::kube_proxy_not_synced(ProxyMode::Nftables, fam));
}

/// `--debug-kernel` over IPv6: the kernel programs' record of a flow names its IPv6 addresses
/// whole (`[fd00:10:96::10]:80`), not their first four bytes as if IPv4.
#[test]
fn debug_kernel_writes_ipv6_addresses_whole_nftables() {
    let s = Scenario::up(spec(), ProxyMode::Nftables);
    let run = s.trace(
        "default/web",
        Api::Snapshot,
        3,
        &["--family", "6", "--debug-kernel"],
        |lab| {
            assert_eq!(http_status(lab, v6(VIP, 80)), Some(200));
        },
    );
    let client = format!("[{}]:", ipv6_twin(Ipv4Addr::new(10, 244, 1, 250)));
    let vip = format!("-> {}", v6(VIP, 80));
    assert!(
        run.context
            .lines()
            .any(|l| l.contains("kernel: new flow: proto 6 ") && l.contains(&client) && l.contains(&vip)),
        "no kernel record of the IPv6 flow with its addresses ({client} {vip}); {}",
        run.context
    );
}
