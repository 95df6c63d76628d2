//! d8-trace: an eBPF live service-path tracer for Kubernetes nodes.
//!
//! Data flows one way (DESIGN.md, section 2):
//!
//! ```text
//! kernel (d8-ebpf) --ring buffer--> events --> flows --> classify --> report
//!                                                 ^          ^
//!                        model (rules + k8s) -----'----------'
//! ```
//!
//! - [`kernel`]: facts about the running kernel (BTF offsets, drop-reason names, tracefs, netns).
//! - [`loader`]: loads the kernel programs, attaches them, detaches on drop.
//! - [`events`]: decodes ring-buffer records into typed events.
//! - [`flows`]: the flow table joining events into one record per flow.
//! - [`model`], [`rules`], [`k8s`], [`kube_proxy`]: the service model.
//! - [`classify`]: flows + model -> verdicts.
//! - [`report`]: the contract's JSON/YAML/runbook and the live text output.
//! - [`lab`]: a Kubernetes node built from network namespaces, for tests and `demo`.

pub mod classify;
pub mod cli;
pub mod cmd;
pub mod events;
pub mod flows;
pub mod kernel;
pub mod lab;
pub mod loader;
pub mod model;
pub mod report;
pub mod trace;

/// An error and its causes on one line, each cause once, the way the CLI and the MCP tools say it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        source = cause.source();
    }
    s
}
