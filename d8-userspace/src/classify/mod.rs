//! The classifier: traced flows + the service model -> one class per flow and a ranked root cause,
//! with evidence, severity and mitigation (ARCHITECTURE.md, "The verdict classes").
//!
//! A pure function ([`classify`]): it takes values and returns values, never reads `/proc`, maps,
//! the API or the clock, so tests feed it literal [`crate::flows::Flow`]s and
//! [`crate::model::ServiceModel`]s. What it cannot see in the flows or the model comes in through
//! [`Context`] (whether the API was consulted, conntrack counters, the host's addresses, the trace
//! duration).
//!
//! How it decides:
//! - each flow gets a class from its own facts (reply, RSTs and who sent them, ICMP errors, drops)
//!   read against the Service's rules and API facts (`flow.rs`);
//! - the Service's rules and API facts give findings of their own, which is all `explain` has
//!   (`service.rs`);
//! - causes (flow classes and findings) are ranked (`rank.rs`): flow-proven causes first, then, by
//!   how fundamental they are, kube-proxy down, kube-proxy not synced, rules missing, conntrack full,
//!   no endpoints, ETP=Local without local endpoints, source range denied, undefined port, stale
//!   endpoint, stale conntrack entry, backend refused, backend timeout, dropped, version skew.
//!   Probe RSTs are benign and never the root cause; version skew is the root cause only when nothing
//!   else explains the failures.
//!
//! Not here: reading rules or the API (`rules`, `k8s`), joining events into flows (`flows`), printing
//! (`report`).

mod advice;
mod facts;
mod flow;
mod rank;
mod service;
mod vocabulary;

pub use facts::{Asked, Cause, Context, FlowVerdict, Verdict};
pub use rank::{classify, classify_asked, classify_service};
pub use service::{awaits_sync, stale_sync_secs};
pub use vocabulary::{
    Evidence, EvidenceKind, IPVS_MODULES_MISSING_PREFIX, Mitigation, RootCause, Severity, VerdictClass,
};

#[cfg(test)]
mod tests;
