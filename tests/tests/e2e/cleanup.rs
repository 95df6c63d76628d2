//! After d8-trace exits, whichever way, none of its programs or links remain: the ids it held
//! while tracing (read from its fdinfo) are gone from the kernel.

use std::time::Duration;

use d8_tests::{bpf, run::Trace};
use d8_trace::model::ProxyMode;

use crate::common::*;

/// d8-trace attaches 7 netfilter links and 4 tracepoints with the netfilter hook set; with the TC
/// set, tracepoint links and TC programs (tcx links from 6.6, netlink filters before, which no
/// link holds).
fn assert_attached(held: &bpf::Held) {
    assert!(
        held.links.len() + held.programs.len() >= 7,
        "d8-trace held its links and programs while tracing: {held:?}"
    );
}

fn assert_gone(held: &bpf::Held, how: &str) {
    assert_eq!(
        bpf::still_loaded(held),
        bpf::Held::default(),
        "programs and links left after {how}"
    );
}

#[test]
fn nothing_remains_after_a_normal_exit() {
    let lab = lab(ProxyMode::Iptables);
    let trace = Trace::start(&trace_args(&lab, "default/web", "2", &[]));
    let held = bpf::held_by(trace.pid() as u32);
    assert_attached(&held);
    trace.finish(Duration::from_secs(15)).report();
    assert_gone(&held, "exit");
}

#[test]
fn nothing_remains_after_ctrl_c() {
    let lab = lab(ProxyMode::Iptables);
    let args = [
        "--svc",
        "default/web",
        "--netns",
        lab.node_ns(),
        "-o",
        "json",
        "--no-k8s",
    ];
    let trace = Trace::start(&args);
    let held = bpf::held_by(trace.pid() as u32);
    assert_attached(&held);
    trace.signal(libc::SIGINT);
    let done = trace.finish(Duration::from_secs(10));
    // Ctrl-C ends a trace normally: the verdict is printed, exit 0.
    assert_eq!(done.report().service, "default/web");
    assert_gone(&held, "SIGINT");
}

#[test]
fn nothing_remains_after_sigterm() {
    let lab = lab(ProxyMode::Nftables);
    let args = [
        "--svc",
        "default/web",
        "--netns",
        lab.node_ns(),
        "-o",
        "json",
        "--no-k8s",
    ];
    let trace = Trace::start(&args);
    let held = bpf::held_by(trace.pid() as u32);
    assert_attached(&held);
    trace.signal(libc::SIGTERM);
    assert!(trace.finish(Duration::from_secs(10)).status.success());
    assert_gone(&held, "SIGTERM");
}

#[test]
fn nothing_remains_after_an_error_once_attached() {
    let lab = lab(ProxyMode::Iptables);
    let args = trace_args(&lab, "default/web", "5", &[]);
    // The injected failure waits 1 s after attaching, long enough to see what it holds.
    let trace = Trace::start_with_env(&args, &[("D8_TRACE_FAIL_AFTER_ATTACH", "1000")]);
    let held = bpf::held_by(trace.pid() as u32);
    assert_attached(&held);
    let done = trace.finish(Duration::from_secs(10));
    assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
    assert!(done.stderr.contains("failing after attach"), "{}", done.stderr);
    assert_gone(&held, "an error");
}
