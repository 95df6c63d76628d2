//! Scenarios that need a kernel other than the development host's, run by the VM suite
//! (`cargo xtask vm-test` boots Debian's 6.1 cloud kernel: IPVS modules, no netfilter BPF links, so
//! d8-trace uses its TC hook set and the conntrack netlink join):
//!
//! - `ipvs_*`: kube-proxy's IPVS mode live (`Lab::up(.., ProxyMode::Ipvs)`: kube-ipvs0, virtual and
//!   real servers, ipsets, `net.ipv4.vs.conntrack=1`): flows joined to the real server IPVS chose, a
//!   stale real server (in IPVS, gone from the API), a virtual server without real servers and a
//!   Service whose virtual server kube-proxy lost; over IPv6 too (a dual-stack IPVS lab: IPv6
//!   virtual servers carrying traffic joined to their real servers, a stale IPv6 real server),
//!   traced with the lab's API snapshot (IPVS keeps no Service names: with `--no-k8s` d8-trace says
//!   it cannot find the Service by name).
//! - `conntrack_full*`: `nf_conntrack_max` lowered, the node's table filled with ASSURED entries
//!   early drop cannot evict, then a new flow to a Service (IPv4, and IPv6 on a dual-stack lab). The sysctl is global, so this runs only
//!   inside the VM (`D8_IN_VM=1`, set by the VM suite), and puts the old value back on every path.
//!   What 6.1 shows the tracer: the SYN reaches the TC ingress hook (pre-DNAT tuple), then
//!   `nf_conntrack_in` cannot allocate an entry (`nf_conntrack: table full, dropping packet`),
//!   returns NF_DROP, and `nf_hook_slow` frees the skb with reason `NETFILTER_DROP` and no `_nfct`:
//!   a drop before conntrack, while `/proc/net/stat/nf_conntrack`'s `drop` column rises.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use d8_tests::{report::Report, run::Trace};
use d8_trace::{
    lab::{self, ClusterSpec, Lab, ListenerKind, PodSpec, ServiceSpec, TcpOutcome},
    model::{Protocol, ProxyMode},
};

use crate::{common::*, family::Family};

/// A Service with one pod, which the stale real server test deletes.
const SOLO_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 60);
const SOLO_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 61);

/// These tests are `#[ignore]`d: the host's `cargo test` lists each as ignored, with the reason,
/// and the VM suite runs them with `--include-ignored`. Run anywhere, they insist on what they
/// need rather than pass without testing anything.
fn have_ipvs() -> bool {
    assert!(
        Path::new("/sys/module/ip_vs").exists(),
        "this kernel has no ip_vs module loaded: the IPVS tests need it (the VM suite's kernel has it)"
    );
    true
}

fn in_vm() -> bool {
    assert_eq!(
        std::env::var("D8_IN_VM").as_deref(),
        Ok("1"),
        "this test changes the global nf_conntrack_max: it runs only inside the VM suite (D8_IN_VM=1)"
    );
    true
}

/// The common lab plus `default/solo` (one pod).
fn ipvs_spec() -> ClusterSpec {
    spec()
        .service(
            ServiceSpec::new("default", "solo", SOLO_VIP)
                .port("http", 80, 8080, Protocol::Tcp)
                .selector("app", "solo"),
        )
        .pod(
            PodSpec::new("default", "solo-1", SOLO_POD)
                .label("app", "solo")
                .listen(8080, ListenerKind::Http),
        )
}

/// An IPVS lab, the file its API snapshot goes to, and the family its traces are narrowed to.
struct IpvsLab {
    lab: Lab,
    snapshot: PathBuf,
    family: Family,
}

impl IpvsLab {
    fn up() -> Self {
        Self::up_in(Family::V4)
    }

    /// The lab as `family` needs it: dual-stack (IPv6 virtual servers beside IPv4's) for
    /// [`Family::V6`], traced with `--family 6`.
    fn up_in(family: Family) -> Self {
        d8_tests::require_root();
        let _ = lab::cleanup_stale();
        let lab = Lab::up(family.spec(ipvs_spec()), ProxyMode::Ipvs).unwrap_or_else(|e| panic!("IPVS lab up: {e}"));
        let snapshot = std::env::temp_dir().join(format!("{}snapshot.json", lab.prefix()));
        Self { lab, snapshot, family }
    }

    /// Traces `svc` for `secs` while `traffic` runs; `api`: with the lab's API snapshot, else
    /// `--no-k8s`.
    fn trace(&self, svc: &str, api: bool, secs: &str, traffic: impl FnOnce(&Lab)) -> (Report, String) {
        let mut args = vec![
            "--svc",
            svc,
            "--netns",
            self.lab.node_ns(),
            "-o",
            "json",
            "--duration",
            secs,
        ];
        let snap = self.snapshot.display().to_string();
        if api {
            self.lab
                .write_snapshot(&self.snapshot)
                .expect("writing the API snapshot");
            args.extend(["--k8s-snapshot", &snap]);
        } else {
            args.push("--no-k8s");
        }
        args.extend_from_slice(self.family.trace_flags());
        let trace = Trace::start(&args);
        traffic(&self.lab);
        let done = trace.finish(Duration::from_secs(40));
        let context = format!(
            "d8-trace {}\n--- stdout:\n{}\n--- stderr:\n{}\n--- ipvsadm -Ln:\n{}",
            args.join(" "),
            done.stdout,
            done.stderr,
            ipvsadm(&self.lab)
        );
        dump(&context);
        (done.report(), context)
    }
}

impl IpvsLab {
    /// `d8-trace explain --svc SVC -o json` with the lab's API snapshot: rules and API alone.
    fn explain(&self, svc: &str) -> (Report, String) {
        self.lab
            .write_snapshot(&self.snapshot)
            .expect("writing the API snapshot");
        let snap = self.snapshot.display().to_string();
        let args = [
            "explain",
            "--svc",
            svc,
            "--netns",
            self.lab.node_ns(),
            "-o",
            "json",
            "--k8s-snapshot",
            &snap,
        ];
        let done = d8_tests::run::run_to_end(&args);
        let context = format!(
            "d8-trace {}\n--- stdout:\n{}\n--- stderr:\n{}",
            args.join(" "),
            done.stdout,
            done.stderr
        );
        dump(&context);
        (done.report(), context)
    }
}

impl Drop for IpvsLab {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.snapshot);
    }
}

/// D8_SCENARIO_DUMP=1 (with --nocapture) shows every run, passing or not.
fn dump(context: &str) {
    if std::env::var_os("D8_SCENARIO_DUMP").is_some() {
        eprintln!("{context}");
    }
}

fn ipvsadm(lab: &Lab) -> String {
    Command::new("ip")
        .args(["netns", "exec", lab.node_ns(), "ipvsadm", "-Ln"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn root(r: &Report) -> &str {
    r.root_cause.as_ref().map(|c| c.class.as_str()).unwrap_or("<none>")
}

/// Checks the report's endpoint `ip` (in `fam`) `:port`, an IPVS real server of the virtual server
/// `vip` (`ip:port` as the report writes it): in the rules with its IPVS line (`TCP <vip> -> <ip:port>`,
/// read back from `ipvsadm -Ln`), and in the API or not as `in_api` says.
fn ipvs_real_server(report: &Report, ctx: &str, fam: Family, vip: &str, ip: Ipv4Addr, port: u16, in_api: bool) {
    let (ip, at) = (fam.ip(ip).to_string(), fam.at(ip, port));
    let ep = report
        .endpoints
        .iter()
        .find(|e| e.ip == ip && e.port == port)
        .unwrap_or_else(|| panic!("no endpoint {at}; {ctx}"));
    assert!(ep.in_rules, "{ep:?}; {ctx}");
    assert!(
        ep.rule
            .as_deref()
            .is_some_and(|r| r.contains(&format!("TCP {vip} -> {at}"))),
        "{ep:?}; {ctx}"
    );
    assert_eq!(ep.in_api, Some(in_api), "{ep:?}; {ctx}");
}

/// The lab's IPVS mode carries traffic the way a kube-proxy IPVS node does: ClusterIP (TCP and
/// UDP), NodePort from outside the node, hairpin (a backend reaching itself through its Service,
/// masqueraded by KUBE-LOOP-BACK), and IPVS's own answer for a virtual server without real servers.
#[test]
#[ignore = "VM suite only (needs ip_vs): cargo xtask test runs it in Debian\'s 6.1"]
fn ipvs_lab_carries_kube_proxy_traffic() {
    if !have_ipvs() {
        return;
    }
    d8_tests::require_root();
    let spec = ipvs_spec().service(
        ServiceSpec::new("default", "web-np", Ipv4Addr::new(10, 96, 0, 11))
            .node_port("http", 80, 8080, Protocol::Tcp, 30080)
            .selector("app", "web"),
    );
    let lab = Lab::up(spec, ProxyMode::Ipvs).unwrap_or_else(|e| panic!("IPVS lab up: {e}"));
    let table = ipvsadm(&lab);
    assert!(table.contains(&format!("TCP  {}:30080 rr", lab.node_ip())), "{table}");
    let text = lab.rules_text();
    assert!(
        text.contains("-a -t 10.96.0.10:80 -r 10.244.1.11:8080 -m -w 1"),
        "{text}"
    );
    let mut names = Vec::new();
    for _ in 0..2 {
        let out = lab::http_get(lab.client_ns(), addr(WEB_VIP, 80), "/", TIMEOUT).expect("http");
        names.push(out.backend().unwrap_or_else(|| panic!("ClusterIP: {out:?}\n{table}")));
    }
    names.sort();
    assert_eq!(names, ["web-1", "web-2"], "rr over both real servers");
    let out = lab::udp_request(lab.client_ns(), addr(DNS_VIP, 53), b"q", TIMEOUT).expect("udp");
    assert_eq!(out, lab::UdpOutcome::Reply(b"dns-1\nq".to_vec()), "UDP ClusterIP");
    let out = lab::http_get(lab.external_ns(), addr(lab.node_ip(), 30080), "/", TIMEOUT).expect("nodeport");
    assert!(
        out.backend().is_some(),
        "NodePort from the external client: {out:?}\n{text}"
    );
    // Hairpin needs KUBE-LOOP-BACK's masquerade, i.e. the ipsets (the guest has `ipset` when the
    // host has it).
    if text.contains("no ipset tool") {
        eprintln!("no ipset tool: hairpin (KUBE-LOOP-BACK) not checked");
    } else {
        let web1 = lab.pod_ns("web-1").expect("web-1").to_string();
        for _ in 0..2 {
            let out = lab::http_get(&web1, addr(WEB_VIP, 80), "/", TIMEOUT).expect("hairpin");
            assert!(
                out.backend().is_some(),
                "hairpin through the ClusterIP: {out:?}\n{text}"
            );
        }
    }
    let out = lab::tcp_connect(lab.client_ns(), addr(EMPTY_VIP, 80), TIMEOUT).expect("connect");
    assert_eq!(out, TcpOutcome::Refused, "virtual server without real servers");
}

#[test]
#[ignore = "VM suite only (needs ip_vs): cargo xtask test runs it in Debian\'s 6.1"]
fn ipvs_flows_join_the_real_server() {
    if !have_ipvs() {
        return;
    }
    let l = IpvsLab::up();
    let table = ipvsadm(&l.lab);
    assert!(table.contains("TCP  10.96.0.10:80 rr"), "{table}");
    assert!(table.contains("-> 10.244.1.11:8080"), "{table}");
    // Without the API nothing names IPVS's virtual servers: d8-trace says so instead of guessing.
    let done = d8_tests::run::run_to_end(&[
        "--svc",
        "default/web",
        "--netns",
        l.lab.node_ns(),
        "-o",
        "json",
        "--no-k8s",
        "--duration",
        "1",
    ]);
    dump(&done.stderr);
    assert!(!done.status.success(), "{}", done.stderr);
    assert!(
        done.stderr.contains("IPVS mode")
            && done.stderr.contains("Service names come only from the Kubernetes API")
            && done.stderr.contains("--k8s-snapshot"),
        "{}",
        done.stderr
    );
    flows_join_the_real_server(&l);
}

/// Two connections to `default/web` through IPVS (rr over web-1 and web-2), traced in the lab's
/// family: each flow is joined to the real server it reached, with that server's IPVS line
/// (`TCP [fd00:10:96::10]:80 -> [fd00:10:244:1::11]:8080` over IPv6, read back from ipvsadm).
fn flows_join_the_real_server(l: &IpvsLab) {
    let fam = l.family;
    let mut answered = Vec::new();
    let (report, ctx) = l.trace("default/web", true, "4", |lab| {
        for _ in 0..2 {
            let out = lab::http_get(lab.client_ns(), fam.sock(WEB_VIP, 80), "/", TIMEOUT).expect("http get");
            answered.push(
                out.backend()
                    .unwrap_or_else(|| panic!("no answer through IPVS: {out:?}")),
            );
        }
    });
    assert_eq!(report.kube_proxy.mode, "ipvs", "{ctx}");
    assert_eq!(report.lost_events, 0, "{ctx}");
    let vip = fam.at(WEB_VIP, 80);
    let flows = report.flows_to(&vip);
    assert_eq!(flows.len(), 2, "two connections, two flows; {ctx}");
    assert_eq!(report.families.seen, [fam.name()], "{ctx}");
    // rr: the two connections went to the two real servers; each flow names the one it reached.
    let mut backends: Vec<String> = flows.iter().map(|f| f.backend.clone().unwrap_or_default()).collect();
    backends.sort();
    let (web1, web2) = (Ipv4Addr::new(10, 244, 1, 11), Ipv4Addr::new(10, 244, 1, 12));
    assert_eq!(backends, [fam.at(web1, 8080), fam.at(web2, 8080)], "{ctx}");
    answered.sort();
    assert_eq!(answered, ["web-1", "web-2"], "{ctx}");
    let client = fam.ip(Ipv4Addr::new(10, 244, 1, 250));
    for f in &flows {
        assert_eq!(f.outcome, "established", "{ctx}");
        assert_eq!(f.class.as_deref(), Some("healthy"), "{ctx}");
        assert_eq!(
            f.client.parse::<std::net::SocketAddr>().map(|a| a.ip()),
            Ok(client),
            "{ctx}"
        );
    }
    assert_eq!(root(&report), "healthy", "{ctx}");
    // The real servers are the endpoints, with their IPVS line as rule.
    for ip in [web1, web2] {
        ipvs_real_server(&report, &ctx, fam, &vip, ip, 8080, true);
    }
    let vip_ip = fam.ip(WEB_VIP).to_string();
    assert!(report.frontends.iter().any(|f| f.ip == vip_ip && f.port == 80), "{ctx}");
}

/// kube-proxy's IPv6 proxier in IPVS mode (a dual-stack lab): `ipvsadm -Ln`'s IPv6 lines
/// (`TCP  [fd00:10:96::10]:80 rr`) are read back into the model, IPv6 virtual servers carry real
/// traffic to both real servers (rr), and each traced IPv6 flow is joined to the real server IPVS
/// chose, as over IPv4 (6.1's TC set: the conntrack netlink join, fed by the conntrack entries
/// IPVS keeps for IPv6 because the lab's `ip6 nat` table registered conntrack's IPv6 hooks, as
/// kube-proxy's ip6tables rules do on a real node); `explain` joins each IPv6 real server to its
/// API endpoint.
#[test]
#[ignore = "VM suite only (needs ip_vs): cargo xtask test runs it in Debian\'s 6.1"]
fn ipvs_ipv6_virtual_servers_carry_traffic_to_their_real_servers() {
    if !have_ipvs() {
        return;
    }
    let fam = Family::V6;
    let l = IpvsLab::up_in(fam);
    let table = ipvsadm(&l.lab);
    let vip = fam.at(WEB_VIP, 80);
    assert!(table.contains(&format!("TCP  {vip} rr")), "{table}");
    flows_join_the_real_server(&l);
    let (report, ctx) = l.explain("default/web");
    assert_eq!(report.kube_proxy.mode, "ipvs", "{ctx}");
    assert_eq!(root(&report), "healthy", "{ctx}");
    let vip_ip = fam.ip(WEB_VIP).to_string();
    assert!(report.frontends.iter().any(|f| f.ip == vip_ip && f.port == 80), "{ctx}");
    for ip in [Ipv4Addr::new(10, 244, 1, 11), Ipv4Addr::new(10, 244, 1, 12)] {
        ipvs_real_server(&report, &ctx, fam, &vip, ip, 8080, true);
    }
}

#[test]
#[ignore = "VM suite only (needs ip_vs): cargo xtask test runs it in Debian\'s 6.1"]
fn ipvs_stale_real_server() {
    stale_real_server(Family::V4);
}

/// The same over IPv6 (a dual-stack lab, `--family 6`): IPVS keeps the deleted pod's IPv6 real
/// server, which no EndpointSlice lists; the IPv6 flow is joined to it, traced and explained.
#[test]
#[ignore = "VM suite only (needs ip_vs): cargo xtask test runs it in Debian\'s 6.1"]
fn ipvs_stale_real_server_over_ipv6() {
    stale_real_server(Family::V6);
}

/// `default/solo`'s one pod deleted (namespace and API objects) while IPVS keeps its real server:
/// the flow is joined to that real server and is a stale endpoint, traced and explained.
fn stale_real_server(fam: Family) {
    if !have_ipvs() {
        return;
    }
    let mut l = IpvsLab::up_in(fam);
    l.lab.make_stale_endpoint("solo-1").expect("stale endpoint");
    let (vip, pod) = (fam.at(SOLO_VIP, 80), fam.at(SOLO_POD, 8080));
    let table = ipvsadm(&l.lab);
    assert!(table.contains(&format!("-> {pod}")), "{table}");
    let (report, ctx) = l.trace("default/solo", true, "5", |lab| {
        let out =
            lab::tcp_connect(lab.client_ns(), fam.sock(SOLO_VIP, 80), Duration::from_millis(1500)).expect("connect");
        assert_eq!(out, TcpOutcome::Timeout);
    });
    let flows = report.flows_to(&vip);
    assert!(!flows.is_empty(), "the SYN to {vip} was seen; {ctx}");
    for f in &flows {
        assert_eq!(
            f.backend.as_deref(),
            Some(pod.as_str()),
            "joined to the real server; {ctx}"
        );
        assert_eq!(f.class.as_deref(), Some("stale_endpoint"), "{ctx}");
    }
    assert_eq!(report.families.seen, [fam.name()], "{ctx}");
    assert_eq!(root(&report), "stale_endpoint", "{ctx}");
    ipvs_real_server(&report, &ctx, fam, &vip, SOLO_POD, 8080, false);
    report.evidence_with(&format!("{pod} is not in the Service's EndpointSlices of default/solo"));
    assert!(report.root_cause.as_ref().unwrap().detail.contains(&pod), "{ctx}");
    // Rules and API alone say the same.
    let (report, ctx) = l.explain("default/solo");
    assert!(report.flows.is_empty(), "{ctx}");
    assert_eq!(root(&report), "stale_endpoint", "{ctx}");
}

#[test]
#[ignore = "VM suite only (needs ip_vs): cargo xtask test runs it in Debian\'s 6.1"]
fn ipvs_virtual_server_without_real_servers() {
    if !have_ipvs() {
        return;
    }
    let l = IpvsLab::up();
    let table = ipvsadm(&l.lab);
    assert!(table.contains("TCP  10.96.0.20:80 rr"), "{table}");
    {
        let api = true;
        let (report, ctx) = l.trace("default/empty", api, "3", |lab| {
            // IPVS itself answers ICMP port unreachable: "no destination available".
            let out = lab::tcp_connect(lab.client_ns(), addr(EMPTY_VIP, 80), TIMEOUT).expect("connect");
            assert_eq!(out, TcpOutcome::Refused);
        });
        let flows = report.flows_to("10.96.0.20:80");
        for f in &flows {
            assert_eq!(f.backend, None, "{ctx}");
            assert_eq!(f.class.as_deref(), Some("no_endpoints"), "{ctx}");
        }
        assert_eq!(root(&report), "no_endpoints", "{ctx}");
        assert_eq!(report.kube_proxy.mode, "ipvs", "{ctx}");
        report.evidence_with("virtual server TCP 10.96.0.20:80 has no real servers");
    }
    let (report, ctx) = l.explain("default/empty");
    assert_eq!(root(&report), "no_endpoints", "{ctx}");
    report.evidence_with("virtual server TCP 10.96.0.20:80 has no real servers");
}

/// kube-proxy lost one Service's virtual server and kube-ipvs0 address while the API keeps it.
#[test]
#[ignore = "VM suite only (needs ip_vs): cargo xtask test runs it in Debian\'s 6.1"]
fn ipvs_rules_missing_for_one_service() {
    if !have_ipvs() {
        return;
    }
    let mut l = IpvsLab::up();
    l.lab.flush_service_rules("default", "web").expect("flush");
    let table = ipvsadm(&l.lab);
    assert!(!table.contains("10.96.0.10:80"), "{table}");
    let (report, ctx) = l.trace("default/web", true, "3", |lab| {
        let out = lab::tcp_connect(lab.client_ns(), addr(WEB_VIP, 80), Duration::from_millis(800)).expect("connect");
        assert!(!out.is_connected(), "{out:?}");
    });
    assert_eq!(root(&report), "kube_proxy_rules_missing", "{ctx}");
    assert_eq!(report.kube_proxy.mode, "ipvs", "{ctx}");
    for f in report.flows_to("10.96.0.10:80") {
        assert_eq!(f.class.as_deref(), Some("kube_proxy_rules_missing"), "{ctx}");
        assert_eq!(f.backend, None, "{ctx}");
    }
}

/// Puts `net.netfilter.nf_conntrack_max` back when dropped (also when the test panics).
struct ConntrackMax {
    old: String,
}

const CT_MAX: &str = "/proc/sys/net/netfilter/nf_conntrack_max";

impl ConntrackMax {
    fn set(value: u32) -> Self {
        let old = std::fs::read_to_string(CT_MAX)
            .expect("reading nf_conntrack_max")
            .trim()
            .to_string();
        std::fs::write(CT_MAX, value.to_string()).expect("lowering nf_conntrack_max");
        Self { old }
    }
}

impl Drop for ConntrackMax {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(CT_MAX, &self.old) {
            eprintln!("could not restore nf_conntrack_max={}: {e}", self.old);
        }
    }
}

/// Fills the node namespace's conntrack table with ASSURED UDP entries (early drop never evicts
/// those) until the kernel refuses one; returns how many went in.
fn fill_conntrack(node_ns: &str, limit: u32) -> u32 {
    let mut inserted = 0;
    for i in 0..limit + 16 {
        let src = format!("10.250.{}.{}", i / 250, 1 + i % 250);
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                node_ns,
                "conntrack",
                "-I",
                "-p",
                "udp",
                "-s",
                &src,
                "-d",
                "10.251.0.1",
            ])
            .args(["--sport", "40000", "--dport", "53", "-t", "600", "-u", "ASSURED"])
            .output()
            .expect("conntrack -I");
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                err.contains("memory") || err.contains("full"),
                "conntrack -I failed otherwise: {err}"
            );
            return inserted;
        }
        inserted += 1;
    }
    panic!("inserted {inserted} entries and the table never filled (nf_conntrack_max={limit})");
}

/// A new flow to `default/web` while the node's conntrack table is full, over `fam`'s addresses
/// (the table, and `nf_conntrack_max`, are shared by both families: IPv4 entries fill it for an
/// IPv6 flow too).
fn conntrack_full_drops_a_new_flow_in(fam: Family) {
    if !in_vm() {
        return;
    }
    d8_tests::require_root();
    let _ = lab::cleanup_stale();
    let lab = Lab::up(fam.spec(spec()), ProxyMode::Iptables).unwrap_or_else(|e| panic!("lab up: {e}"));
    let node = lab.node_ns().to_string();
    let mut args = vec!["--svc", "default/web", "--netns", &node, "-o", "json", "--no-k8s"];
    args.extend_from_slice(fam.trace_flags());
    let trace = Trace::start(&args);
    let max = 64;
    let guard = ConntrackMax::set(max);
    let inserted = fill_conntrack(&node, max);
    assert!(inserted > 0 && inserted <= max, "{inserted}");
    let out = lab::tcp_connect(lab.client_ns(), fam.sock(WEB_VIP, 80), Duration::from_millis(1500)).expect("connect");
    assert_eq!(
        out,
        TcpOutcome::Timeout,
        "the SYN is dropped: no conntrack entry can be made"
    );
    trace.signal(libc::SIGINT);
    let done = trace.finish(Duration::from_secs(30));
    drop(guard);
    let report = done.report();
    let ctx = format!("stdout:\n{}\nstderr:\n{}", done.stdout, done.stderr);
    dump(&ctx);
    let vip = fam.at(WEB_VIP, 80);
    let flows = report.flows_to(&vip);
    assert!(!flows.is_empty(), "{ctx}");
    let client = fam.ip(Ipv4Addr::new(10, 244, 1, 250));
    for f in &flows {
        assert_eq!(f.class.as_deref(), Some("conntrack_full"), "{ctx}");
        assert_eq!(f.backend, None, "never translated; {ctx}");
        assert_eq!(f.outcome, "dropped", "{ctx}");
        // 6.1 frees the packet nf_conntrack_in refused with NF_DROP: nf_hook_slow's reason.
        assert_eq!(
            f.drop_reason.as_deref(),
            Some(report.drop_reason_named("NETFILTER_DROP")),
            "{ctx}"
        );
        assert_eq!(
            f.client.parse::<std::net::SocketAddr>().map(|a| a.ip()),
            Ok(client),
            "the flow's tuple: {ctx}"
        );
        assert_eq!(f.protocol, "tcp", "{ctx}");
    }
    assert_eq!(report.families.seen, [fam.name()], "{ctx}");
    assert_eq!(root(&report), "conntrack_full", "{ctx}");
    let conntrack: Vec<&str> = report
        .evidence
        .iter()
        .filter(|e| e.kind == "conntrack")
        .map(|e| e.content.as_str())
        .collect();
    assert!(
        conntrack
            .iter()
            .any(|c| c.contains(&format!("of nf_conntrack_max {max}"))),
        "{ctx}"
    );
    assert!(
        conntrack
            .iter()
            .any(|c| c.contains("drop counter") && c.contains("rose")),
        "{ctx}"
    );
    let client = &flows[0].client;
    report.evidence_with(&format!("{client} -> {vip}: first packet dropped"));
}

#[test]
#[ignore = "VM suite only (changes the global nf_conntrack_max): cargo xtask test runs it in Debian\'s 6.1"]
fn conntrack_full_drops_a_new_flow() {
    conntrack_full_drops_a_new_flow_in(Family::V4);
}

/// The same over IPv6 (a dual-stack lab, `--family 6`): the IPv6 SYN's drop before conntrack.
#[test]
#[ignore = "VM suite only (changes the global nf_conntrack_max): cargo xtask test runs it in Debian\'s 6.1"]
fn conntrack_full_drops_a_new_ipv6_flow() {
    conntrack_full_drops_a_new_flow_in(Family::V6);
}
