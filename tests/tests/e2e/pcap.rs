//! `--pcap FILE` (issue 17): the pcapng file of the failing flows, read back with Debian's
//! `tshark` (and `capinfos` for the section header), both installed by `cargo xtask setup`.
//! Each scenario checks that the file holds the failing flows' packets before DNAT (to the
//! frontend) and after it (to the backend, where there is one), that the last packet of each
//! flow carries the verdict, and that no packet of a healthy flow is there. The hook set is the
//! run's (`D8_E2E_HOOKS=tc` for the TC set).

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use d8_tests::run::{Trace, run_to_end};
use d8_trace::{
    lab::{self, TcpOutcome},
    model::{Protocol, ProxyMode},
};

use crate::{
    common::addr,
    scenarios::{
        Api, NODE_PORT, Run, SILENT, Scenario, T, VIP, WEB_1, WEB_2, connect_until, empty_spec, etp_local_spec,
        web_spec,
    },
};

/// A tool of the Wireshark packages, which `cargo xtask setup` installs: missing, the test
/// fails (never passes without having read the file).
fn tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/usr/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} not found: the pcap tests read the file with it; run `cargo xtask setup` (Debian package tshark)")
}

/// One packet as tshark reads it.
#[derive(Debug)]
pub(crate) struct Packet {
    pub(crate) interface: String,
    pub(crate) src: String,
    pub(crate) dst: String,
    pub(crate) comment: String,
}

impl Packet {
    fn flow(&self) -> &str {
        self.comment.split_whitespace().nth(1).unwrap_or("")
    }
}

/// `tshark -r FILE`: interface name, the outer IP addresses, the packet comment.
pub(crate) fn read(file: &Path) -> Vec<Packet> {
    let out = Command::new(tool("tshark"))
        .args(["-r"])
        .arg(file)
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_name",
            "-e",
            "ip.src",
            "-e",
            "ip.dst",
            "-e",
            "frame.comment",
        ])
        .output()
        .expect("running tshark");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark -r {}: {stderr}", file.display());
    assert!(
        !stderr.contains("appears to be damaged") && !stderr.contains("cut short"),
        "tshark: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.splitn(4, '|').collect();
            let first = |s: &str| s.split(',').next().unwrap_or("").to_string();
            Packet {
                interface: f[0].to_string(),
                src: first(f.get(1).copied().unwrap_or("")),
                dst: first(f.get(2).copied().unwrap_or("")),
                comment: f.get(3).copied().unwrap_or("").to_string(),
            }
        })
        .collect()
}

/// `capinfos FILE`: the section header's hardware, OS, application and comment lines.
fn section_header(file: &Path) -> String {
    let out = Command::new(tool("capinfos"))
        .arg(file)
        .output()
        .expect("running capinfos");
    assert!(
        out.status.success(),
        "capinfos: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn pcap_path(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("d8e2e-{name}-{}.pcapng", std::process::id()));
    let _ = std::fs::remove_file(&p);
    p
}

/// What a capture must show for one scenario.
struct Expect<'a> {
    /// The frontend the clients asked for (pre-DNAT destination).
    frontend: &'a str,
    /// The backend after DNAT, when the scenario has one.
    backend: Option<&'a str>,
    class: &'a str,
    /// A piece of the rule the verdict names.
    rule: &'a str,
    /// Addresses that only healthy flows use: none of their packets may be there.
    healthy_only: &'a [&'a str],
}

fn check(run: &Run, file: &Path, want: &Expect<'_>) -> Vec<Packet> {
    let packets = read(file);
    let ctx = || format!("{}\n--- capture:\n{packets:#?}", run.context);
    assert!(!packets.is_empty(), "empty capture; {}", ctx());
    let failing = run
        .report
        .flows
        .iter()
        .filter(|f| failing(&f.outcome))
        .filter(|f| f.class.as_deref() != Some("probe_rst"))
        .count();
    let mut flows: Vec<&str> = packets.iter().map(Packet::flow).collect();
    flows.sort();
    flows.dedup();
    assert_eq!(
        flows.len(),
        failing,
        "one flow in the file per failing flow of the report; {}",
        ctx()
    );
    // Before DNAT: to the frontend.
    assert!(
        packets.iter().any(|p| p.dst == want.frontend),
        "no packet to the frontend {}; {}",
        want.frontend,
        ctx()
    );
    // After DNAT: to or from the backend.
    if let Some(b) = want.backend {
        assert!(
            packets.iter().any(|p| p.dst == b || p.src == b),
            "no packet to or from the backend {b} after DNAT; {}",
            ctx()
        );
    }
    if run_hooks_netfilter() {
        assert!(
            packets.iter().any(|p| p.interface == "nf-prerouting"),
            "no nf-prerouting interface; {}",
            ctx()
        );
        assert!(
            packets.iter().any(|p| p.interface == "post-dnat"),
            "no post-dnat interface; {}",
            ctx()
        );
    }
    // Every packet names its flow and the Service; the last of each flow the verdict and rule.
    for flow in &flows {
        let of: Vec<&Packet> = packets.iter().filter(|p| p.flow() == *flow).collect();
        for p in &of {
            assert!(p.comment.starts_with("flow #"), "{p:?}");
            assert!(p.comment.contains(&run.report.service), "{p:?}");
        }
        let last = of
            .iter()
            .find(|p| p.comment.contains("verdict"))
            .unwrap_or_else(|| panic!("flow {flow}: no packet carries the verdict; {}", ctx()));
        assert!(
            last.comment.contains(&format!("verdict {}", want.class)) && last.comment.contains(want.rule),
            "flow {flow}: verdict comment {:?} lacks {} / {}; {}",
            last.comment,
            want.class,
            want.rule,
            ctx()
        );
    }
    for addr in want.healthy_only {
        assert!(
            !packets.iter().any(|p| p.src == *addr || p.dst == *addr),
            "a packet of a healthy flow ({addr}) is in the file; {}",
            ctx()
        );
    }
    let shb = section_header(file);
    for needle in ["d8-trace", "Linux", "--pcap", "node "] {
        assert!(shb.contains(needle), "section header lacks {needle:?}: {shb}");
    }
    packets
}

/// The outcomes whose flows `--pcap` writes (besides ICMP-errored ones, which the JSON does not
/// show).
fn failing(outcome: &str) -> bool {
    matches!(outcome, "rejected" | "dropped" | "reset" | "timeout")
}

/// A capture written beside any scenario's trace agrees with its report, read by hand (the
/// guests carry no tshark): every packet names its flow and the Service; each flow's last packet
/// carries a verdict; the file holds exactly the report's failing flows (rejected, dropped, reset,
/// timed out; probe resets left out) with their classes and outcomes, plus at most the report's
/// flows of other outcomes (those with an ICMP error, which the JSON does not show). A healthy
/// scenario's file holds no flow at all.
pub(crate) fn agrees_with_report(run: &Run, file: &Path) {
    use std::collections::BTreeMap;
    let packets = if file.exists() {
        read_without_tools(file)
    } else {
        Vec::new()
    };
    let ctx = || format!("{}\n--- capture:\n{packets:#?}", run.context);
    // (class, outcome) -> flows, in the report and in the file.
    let mut report: BTreeMap<(String, String), usize> = BTreeMap::new();
    for f in &run.report.flows {
        let class = f.class.clone().unwrap_or_else(|| "unclassified".into());
        *report.entry((class, f.outcome.clone())).or_default() += 1;
    }
    let mut in_file: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut flows: Vec<&str> = packets.iter().map(Packet::flow).collect();
    flows.sort();
    flows.dedup();
    for flow in &flows {
        let of: Vec<&Packet> = packets.iter().filter(|p| p.flow() == *flow).collect();
        for p in &of {
            assert!(
                p.comment.starts_with("flow #") && p.comment.contains(&run.report.service),
                "packet {p:?} does not name its flow and the Service; {}",
                ctx()
            );
        }
        let verdicts: Vec<&str> = of
            .iter()
            .filter_map(|p| p.comment.split_once("; verdict ").map(|(_, v)| v))
            .collect();
        assert_eq!(
            verdicts.len(),
            1,
            "flow {flow}: one packet carries the verdict; {}",
            ctx()
        );
        // `CLASS (OUTCOME)[; ...]`
        let (class, rest) = verdicts[0].split_once(" (").unwrap_or((verdicts[0], ""));
        let outcome = rest.split_once(')').map_or("", |(o, _)| o);
        assert_ne!(class, "probe_rst", "a kubelet probe's reset is in the file; {}", ctx());
        *in_file.entry((class.to_string(), outcome.to_string())).or_default() += 1;
    }
    for (key, n) in &report {
        if failing(&key.1) && key.0 != "probe_rst" {
            assert_eq!(
                in_file.get(key).copied().unwrap_or(0),
                *n,
                "{key:?}: the report's failing flows, each in the file; {}",
                ctx()
            );
        }
    }
    for (key, n) in &in_file {
        assert!(
            failing(&key.1) || report.get(key).is_some_and(|r| n <= r),
            "{key:?}: {n} flow(s) in the file the report does not show failing; {}",
            ctx()
        );
    }
}

/// `n` connections from the client pod to the ClusterIP, each refused.
fn refused(lab: &lab::Lab, n: usize) {
    for _ in 0..n {
        let out = lab::tcp_connect(lab.client_ns(), addr(VIP, 80), T).expect("connect");
        assert_eq!(out, TcpOutcome::Refused);
    }
}

fn run_hooks_netfilter() -> bool {
    d8_tests::run::hook_set() == "netfilter"
}

fn no_endpoints(mode: ProxyMode) {
    let s = Scenario::up(empty_spec(Protocol::Tcp), mode);
    let file = pcap_path("no-endpoints");
    let f = file.display().to_string();
    let run = s.trace("default/empty", Api::Snapshot, 3, &["--pcap", &f], |lab| {
        refused(lab, 2)
    });
    run.assert_root("no_endpoints");
    let rule = match mode {
        ProxyMode::Nftables => "no-endpoint-services",
        _ => "REJECT",
    };
    let packets = check(
        &run,
        &file,
        &Expect {
            frontend: "10.96.0.10",
            backend: None,
            class: "no_endpoints",
            rule,
            healthy_only: &[],
        },
    );
    // The node's answer (the REJECT's ICMP error) is in the file too.
    assert!(
        packets.iter().any(|p| p.src != p.dst && p.comment.contains(" reply")),
        "no reply-direction packet (the ICMP error); {packets:#?}"
    );
    let _ = std::fs::remove_file(&file);
}

#[test]
fn no_endpoints_iptables() {
    no_endpoints(ProxyMode::Iptables);
}

#[test]
fn no_endpoints_nftables() {
    no_endpoints(ProxyMode::Nftables);
}

/// web-2 deleted while the rules still DNAT to it: its flows are in the file with the packet to
/// 10.244.1.12; the healthy flows to web-1 are not.
#[test]
fn stale_endpoint_iptables() {
    let mut s = Scenario::up(web_spec(2), ProxyMode::Iptables);
    s.lab.make_stale_endpoint("web-2").expect("stale endpoint");
    let file = pcap_path("stale");
    let f = file.display().to_string();
    let mut outcomes = Vec::new();
    let run = s.trace(
        "default/web",
        Api::Snapshot,
        5,
        &["--reply-timeout", "1", "--pcap", &f],
        |lab| {
            outcomes = connect_until(lab, 16, &[TcpOutcome::is_connected, |o| *o == TcpOutcome::Timeout]);
        },
    );
    run.assert_root("stale_endpoint");
    assert!(
        outcomes.iter().any(TcpOutcome::is_connected),
        "no healthy flow to compare: {outcomes:?}"
    );
    let web1 = WEB_1.to_string();
    let web2 = WEB_2.to_string();
    check(
        &run,
        &file,
        &Expect {
            frontend: "10.96.0.10",
            backend: Some(&web2),
            class: "stale_endpoint",
            rule: "KUBE-SEP-",
            healthy_only: &[&web1],
        },
    );
    let _ = std::fs::remove_file(&file);
}

/// Nothing listens in the pod: the SYN to the ClusterIP, the SYN to the pod, its RST.
#[test]
fn backend_refused_nftables() {
    let mut s = Scenario::up(web_spec(1), ProxyMode::Nftables);
    s.lab.stop_listener("web-1", 8080).expect("stop the listener");
    let file = pcap_path("refused");
    let f = file.display().to_string();
    let run = s.trace("default/web", Api::Snapshot, 3, &["--pcap", &f], |lab| refused(lab, 2));
    run.assert_root("backend_refused");
    let web1 = WEB_1.to_string();
    let packets = check(
        &run,
        &file,
        &Expect {
            frontend: "10.96.0.10",
            backend: Some(&web1),
            class: "backend_refused",
            rule: "endpoint-",
            healthy_only: &[],
        },
    );
    assert!(
        packets.iter().any(|p| p.src == web1 && p.comment.contains(" reply")),
        "the backend's RST; {packets:#?}"
    );
    let _ = std::fs::remove_file(&file);
}

/// externalTrafficPolicy=Local, no local endpoint: the external client's SYN to the NodePort and
/// its drop.
#[test]
fn etp_local_node_port_iptables() {
    let s = Scenario::up(etp_local_spec(), ProxyMode::Iptables);
    let file = pcap_path("etp");
    let f = file.display().to_string();
    let node_ip = s.lab.node_ip().to_string();
    let target = addr(s.lab.node_ip(), NODE_PORT);
    let run = s.trace(
        "default/shop",
        Api::Snapshot,
        3,
        &["--reply-timeout", "1", "--pcap", &f],
        |lab| {
            for _ in 0..2 {
                let out = lab::tcp_connect(lab.external_ns(), target, SILENT).expect("connect");
                assert_eq!(out, TcpOutcome::Timeout);
            }
        },
    );
    run.assert_root("etp_local_no_local_endpoints");
    let packets = check(
        &run,
        &file,
        &Expect {
            frontend: &node_ip,
            backend: None,
            class: "etp_local_no_local_endpoints",
            rule: "DROP",
            healthy_only: &[],
        },
    );
    assert!(
        packets.iter().any(|p| p.interface == "drop"),
        "the dropped packet; {packets:#?}"
    );
    let _ = std::fs::remove_file(&file);
}

/// `d8-trace --svc default/web` in the common lab's node, without the API, for `secs`, into
/// `file`.
fn web_args<'a>(node_ns: &'a str, secs: &'a str, file: &'a str) -> Vec<&'a str> {
    vec![
        "--svc",
        "default/web",
        "--netns",
        node_ns,
        "--no-k8s",
        "--duration",
        secs,
        "--pcap",
        file,
    ]
}

/// An existing file is refused (exit 2, one sentence naming --force) before anything is
/// attached, and left as it was; with --force it is replaced.
#[test]
fn an_existing_file_is_refused_without_force() {
    let lab = crate::common::lab(ProxyMode::Iptables);
    let file = pcap_path("exists");
    std::fs::write(&file, b"keep me").unwrap();
    let f = file.display().to_string();
    let args = web_args(lab.node_ns(), "1", &f);
    let out = run_to_end(&args);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("exists") && out.stderr.contains("--force"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("attached"),
        "refused before attaching: {}",
        out.stderr
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    let mut forced = args.to_vec();
    forced.push("--force");
    let out = run_to_end(&forced);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    // A trace with no failing flow: a valid file with the section header alone.
    assert!(read(&file).is_empty());
    assert!(section_header(&file).contains("d8-trace"));
    let _ = std::fs::remove_file(&file);
}

/// A path that cannot be written is an error (exit 2) before anything is attached.
#[test]
fn an_unwritable_path_fails_before_attaching() {
    let lab = crate::common::lab(ProxyMode::Iptables);
    let out = run_to_end(&web_args(lab.node_ns(), "1", "/nonexistent-d8/dir/x.pcapng"));
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    assert!(
        out.stderr.contains("/nonexistent-d8/dir/x.pcapng") && out.stderr.contains("choose a writable path"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("attached"), "{}", out.stderr);
}

/// A full disk mid-trace: d8-trace writes into a 4 KiB tmpfs (in a mount namespace of its own,
/// made by `unshare`), less than twelve rejected flows need (each about 1 KiB: SYN before and
/// after DNAT, the ICMP error, the drop). The kernel rate-limits the REJECT's ICMP errors, so
/// the connections take a few seconds. The trace goes on and exits 0
/// with its verdict, the report warns that the file stopped growing, and the file holds whole
/// flows that tshark reads without complaint.
#[test]
fn a_full_disk_keeps_the_file_valid_and_the_report_warns() {
    let s = Scenario::up(empty_spec(Protocol::Tcp), ProxyMode::Iptables);
    let mnt = std::env::temp_dir().join(format!("d8e2e-fulldisk-{}", std::process::id()));
    std::fs::create_dir_all(&mnt).unwrap();
    let inside = mnt.join("x.pcapng");
    let copied = pcap_path("fulldisk-copy");
    let script = "mount -t tmpfs -o size=4k d8e2e-pcap \"$1\" || exit 9; in=\"$2\"; out=\"$3\"; shift 3; \"$@\"; rc=$?; cp \"$in\" \"$out\"; exit $rc";
    let (m, i, o) = (
        mnt.display().to_string(),
        inside.display().to_string(),
        copied.display().to_string(),
    );
    let wrapper = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        &m,
        &i,
        &o,
    ];
    let snapshot = std::env::temp_dir().join(format!("d8e2e-fulldisk-{}.json", std::process::id()));
    s.lab.write_snapshot(&snapshot).unwrap();
    let snap = snapshot.display().to_string();
    let args = [
        "--svc",
        "default/empty",
        "-o",
        "json",
        "--duration",
        "10",
        "--netns",
        s.lab.node_ns(),
        "--k8s-snapshot",
        &snap,
        "--pcap",
        &i,
    ];
    let trace = Trace::start_under(&wrapper, &args, &[], "attached");
    refused(&s.lab, 12);
    let done = trace.finish(std::time::Duration::from_secs(30));
    let report = done.report();
    assert_eq!(
        report.root_cause.as_ref().map(|r| r.class.as_str()),
        Some("no_endpoints"),
        "{}",
        done.stderr
    );
    assert!(
        report
            .warnings
            .iter()
            .any(|w| w.kind == "capture" && w.message.contains("stopped growing")),
        "the report warns about the file: {:?}\n{}",
        report.warnings,
        done.stderr
    );
    let packets = read(&copied);
    let mut flows: Vec<&str> = packets.iter().map(Packet::flow).collect();
    flows.dedup();
    assert!(
        !packets.is_empty() && flows.len() < 12,
        "{} flows in the file: {packets:#?}",
        flows.len()
    );
    let _ = std::fs::remove_file(&copied);
    let _ = std::fs::remove_file(&snapshot);
    let _ = std::fs::remove_dir(&mnt);
}

/// A trace that fails once attached (`D8_TRACE_FAIL_AFTER_ATTACH`) exits 3 and leaves no capture
/// file behind.
#[test]
fn a_failed_trace_leaves_no_file() {
    let lab = crate::common::lab(ProxyMode::Iptables);
    let file = pcap_path("failed");
    let f = file.display().to_string();
    let args = web_args(lab.node_ns(), "5", &f);
    let trace = Trace::start_with_env(&args, &[("D8_TRACE_FAIL_AFTER_ATTACH", "200")]);
    let done = trace.finish(std::time::Duration::from_secs(30));
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(!file.exists(), "{} was left behind: {}", file.display(), done.stderr);
}

/// The pcapng blocks of `bytes` as (type, body length): read by hand, with no tool, so the kernel
/// matrix's guests (which carry no tshark) can check a capture.
fn blocks(bytes: &[u8]) -> Vec<(u32, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 12 <= bytes.len() {
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let (kind, len) = (word(at), word(at + 4) as usize);
        assert!(
            len >= 12 && len % 4 == 0 && at + len <= bytes.len(),
            "block at {at}: length {len}"
        );
        assert_eq!(word(at + len - 4) as usize, len, "block at {at}: trailing length");
        out.push((kind, len - 12));
        at += len;
    }
    assert_eq!(at, bytes.len(), "bytes after the last block");
    out
}

/// The kernel side of `--pcap` on whatever kernel and hook set this runs: the programs load with
/// the packet copies on (the verifier sees that code only then), and a refused connection's
/// packets reach the file: a section header, interfaces, and enhanced packet blocks. No tshark
/// (the VM suite runs this on 5.10, 6.1 and 6.12; the tests above read the files with tshark).
#[test]
fn the_kernel_copies_load_and_reach_the_file() {
    let s = Scenario::up(empty_spec(Protocol::Tcp), ProxyMode::Iptables);
    let file = pcap_path("kernel-copies");
    let f = file.display().to_string();
    let run = s.trace("default/empty", Api::Snapshot, 3, &["--pcap", &f], |lab| {
        refused(lab, 2)
    });
    run.assert_root("no_endpoints");
    let bytes = std::fs::read(&file).expect("the capture file");
    let kinds: Vec<u32> = blocks(&bytes).iter().map(|(k, _)| *k).collect();
    assert_eq!(kinds.first(), Some(&0x0A0D_0D0A), "a section header first: {kinds:x?}");
    assert!(kinds.contains(&1), "an interface description block: {kinds:x?}");
    let packets = kinds.iter().filter(|k| **k == 6).count();
    // Two refused connections: each a SYN before and after the hooks, and the node's answer.
    assert!(
        packets >= 2,
        "{packets} packets in the file: {kinds:x?}; {}",
        run.context
    );
    let _ = std::fs::remove_file(&file);
}

/// The packets of a pcapng file read by hand (no tshark): per enhanced packet block the
/// interface's name, the IPv4 addresses (the captures start at the IP header) and the comment.
/// For the tests that also run in the kernel matrix's guests, which carry no tshark; the tests
/// above read with tshark, which also proves Wireshark reads the files.
pub(crate) fn read_without_tools(file: &Path) -> Vec<Packet> {
    let bytes = std::fs::read(file).expect("the capture file");
    let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
    let half = |i: usize| u16::from_le_bytes(bytes[i..i + 2].try_into().unwrap()) as usize;
    // Options after `at` up to `end`: (code, value).
    let options = |mut at: usize, end: usize| {
        let mut out = Vec::new();
        while at + 4 <= end {
            let (code, len) = (half(at), half(at + 2));
            if code == 0 {
                break;
            }
            out.push((code, bytes[at + 4..at + 4 + len].to_vec()));
            at += 4 + len.div_ceil(4) * 4;
        }
        out
    };
    let (mut interfaces, mut packets, mut at) = (Vec::new(), Vec::new(), 0);
    for (kind, body) in blocks(&bytes) {
        let end = at + 8 + body;
        match kind {
            // Interface description: link type, reserved, snap length, then options (2: name).
            1 => interfaces.push(
                options(at + 16, end)
                    .into_iter()
                    .find(|(c, _)| *c == 2)
                    .map(|(_, v)| String::from_utf8_lossy(&v).trim_end_matches('\0').to_string())
                    .unwrap_or_default(),
            ),
            // Enhanced packet: interface, timestamp (2 words), captured and original length,
            // data padded to 4, then options (1: comment).
            6 => {
                let (iface, cap) = (word(at + 8) as usize, word(at + 20) as usize);
                let data = &bytes[at + 28..at + 28 + cap];
                let ip = |o: usize| {
                    data.get(o..o + 4)
                        .map(|a| std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string())
                        .unwrap_or_default()
                };
                let comment = options(at + 28 + cap.div_ceil(4) * 4, end)
                    .into_iter()
                    .find(|(c, _)| *c == 1)
                    .map(|(_, v)| String::from_utf8_lossy(&v).to_string())
                    .unwrap_or_default();
                packets.push(Packet {
                    interface: interfaces.get(iface).cloned().unwrap_or_default(),
                    src: ip(12),
                    dst: ip(16),
                    comment,
                });
            }
            _ => {}
        }
        at = end + 4;
    }
    packets
}

/// The hand reader sees what tshark sees (here, where both run).
#[test]
fn the_hand_reader_agrees_with_tshark() {
    let s = Scenario::up(empty_spec(Protocol::Tcp), ProxyMode::Iptables);
    let file = pcap_path("hand-reader");
    let f = file.display().to_string();
    let run = s.trace("default/empty", Api::Snapshot, 3, &["--pcap", &f], |lab| {
        refused(lab, 2)
    });
    run.assert_root("no_endpoints");
    let key = |p: &Packet| (p.interface.clone(), p.src.clone(), p.dst.clone(), p.comment.clone());
    let by_hand: Vec<_> = read_without_tools(&file).iter().map(key).collect();
    let by_tshark: Vec<_> = read(&file).iter().map(key).collect();
    assert!(!by_hand.is_empty(), "{}", run.context);
    assert_eq!(by_hand, by_tshark);
    let _ = std::fs::remove_file(&file);
}
