//! d8-trace: an eBPF live service-path tracer for Kubernetes nodes.
//!
//! The modules are layers, lowest first, in the order the data moves (ARCHITECTURE.md, "The
//! folders"; `tests/layers.rs` checks that imports only point to lower layers):
//!
//! ```text
//! kernel (d8-ebpf) --ring buffer--> events --> flows --.
//!                                                      |--> classify --> report
//!         kube-proxy's rules + the API --> model -------'
//! ```
//!
//! - [`kernel`]: facts about the running kernel and host (BTF, tracefs, netns, netlink, counters).
//! - [`loader`]: loads the kernel programs, attaches them, detaches on drop.
//! - [`events`]: decodes ring-buffer records into typed events.
//! - [`flows`]: the flow table joining events into one record per flow.
//! - [`model`]: the node's service model: kube-proxy's rules, the API, kube-proxy's health.
//! - [`classify`]: flows + model -> verdicts, a pure function.
//! - [`report`]: the contract object and its renderings.
//! - [`trace`]: the one pipeline (view, plan, kernel setup, capture, report).
//! - [`lab`]: a Kubernetes node built from network namespaces, for tests and `demo`.
//! - [`cmd`]: doctor, daemon, MCP server, demo.
//! - [`cli`]: the command line, resolved into the pipeline's configuration.

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

/// An error and its causes on one line, the way the CLI and the MCP tools say it. Each error of
/// this crate states its cause once (in its message, or as its source, never both), so the chain
/// is every message in order.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}
