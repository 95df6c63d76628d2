//! After d8-trace exits, whichever way, none of its programs or links remain.

use std::time::Duration;

use d8_tests::{bpf, run::Trace};
use d8_trace::model::ProxyMode;

use crate::common::*;

/// Programs and links of d8-trace that did not exist before `f` ran.
fn leftovers(f: impl FnOnce()) -> (Vec<u64>, Vec<u64>) {
    let progs_before = bpf::d8_programs();
    let links_before = bpf::d8_links();
    f();
    let progs: Vec<u64> = bpf::d8_programs().into_iter().filter(|p| !progs_before.contains(p)).collect();
    let links: Vec<u64> = bpf::d8_links().into_iter().filter(|l| !links_before.contains(l)).collect();
    (progs, links)
}

#[test]
fn nothing_remains_after_a_normal_exit() {
    let lab = lab(ProxyMode::Iptables);
    let mut attached = 0;
    let left = leftovers(|| {
        let trace = Trace::start(&trace_args(&lab, "default/web", "2", &[]));
        attached = bpf::d8_links().len();
        trace.finish(Duration::from_secs(15)).report();
    });
    assert!(attached >= 7, "d8-trace attached its links while running ({attached} seen)");
    assert_eq!(left, (vec![], vec![]), "programs and links left after exit");
}

#[test]
fn nothing_remains_after_ctrl_c() {
    let lab = lab(ProxyMode::Iptables);
    let left = leftovers(|| {
        let args = ["--svc", "default/web", "--netns", lab.node_ns(), "-o", "json", "--no-k8s"];
        let trace = Trace::start(&args);
        trace.signal(libc::SIGINT);
        let done = trace.finish(Duration::from_secs(10));
        // Ctrl-C ends a trace normally: the verdict is printed, exit 0.
        let report = done.report();
        assert_eq!(report.service, "default/web");
    });
    assert_eq!(left, (vec![], vec![]), "programs and links left after SIGINT");
}

#[test]
fn nothing_remains_after_sigterm() {
    let lab = lab(ProxyMode::Nftables);
    let left = leftovers(|| {
        let args = ["--svc", "default/web", "--netns", lab.node_ns(), "-o", "json", "--no-k8s"];
        let trace = Trace::start(&args);
        trace.signal(libc::SIGTERM);
        assert!(trace.finish(Duration::from_secs(10)).status.success());
    });
    assert_eq!(left, (vec![], vec![]), "programs and links left after SIGTERM");
}

#[test]
fn nothing_remains_after_an_error_once_attached() {
    let lab = lab(ProxyMode::Iptables);
    let left = leftovers(|| {
        let args = trace_args(&lab, "default/web", "5", &[]);
        let trace = Trace::start_with_env(&args, &[("D8_TRACE_FAIL_AFTER_ATTACH", "1")]);
        let done = trace.finish(Duration::from_secs(10));
        assert_eq!(done.status.code(), Some(3), "{}", done.stderr);
        assert!(done.stderr.contains("failing after attach"), "{}", done.stderr);
    });
    assert_eq!(left, (vec![], vec![]), "programs and links left after an error");
}
