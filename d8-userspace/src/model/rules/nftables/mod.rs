//! Reads kube-proxy's nftables-mode rules from `nft -j list table ip kube-proxy` into [`Service`]s.
//!
//! Input: the JSON `nft -j list table ip kube-proxy` (or `ip6`, or `nft -j list ruleset`: objects of
//! other tables are skipped) prints. Shapes: kube-proxy's `pkg/proxy/nftables/proxier.go` and its
//! golden tests; the fixtures in `testdata/rules/nft-layout-{A,B}.json` are real nft 1.0.6 output.
//!
//! What it builds:
//! - frontends from the verdict maps: `service-ips` (`goto service-…` = ClusterIP, `goto external-…`
//!   = external or load-balancer IP: load-balancer when `firewall-ips` names the address, else
//!   external, because nft mode does not tell them apart), `service-nodeports` (at the `nodeport-ips`
//!   addresses, or `0.0.0.0`/`::` when that set is absent: kube-proxy deletes it when NodePorts match
//!   every local address), `no-endpoint-services` and `no-endpoint-nodeports` (frontends of Services
//!   without endpoints);
//! - endpoints from the `numgen random mod N vmap { … }` dispatch of `service-`/`local-` chains and
//!   the `dnat to` of the `endpoint-` chains they go to (1.36's inline `dnat … to numgen … map` form
//!   too), each with weight `1/N` and, when a `local-` chain exists, locality;
//! - [`RuleFacts`](crate::model::RuleFacts): `no-endpoint-*` elements with `goto reject-chain` (no endpoints) or `drop` (Local
//!   traffic policy without local endpoints), ClientIP affinity (the `affinity-…` sets' timeout),
//!   loadBalancerSourceRanges (the `firewall-` chain), chains, and problems: a `numgen mod N` that
//!   disagrees with its N entries, a goto/jump to a chain that does not exist, an endpoint chain
//!   without `dnat`.
//!
//! Chain names follow `<prefix><H8>-<ns>/<svc>/<proto>/<port>[__<ip>/<port>]`; the H8 hash is
//! recomputed (`names::nft_hash`) and a mismatch is a warning. [`RuleRef`](crate::model::RuleRef)s
//! name the chain (or map) and carry a readable rendering in nft's own syntax ending in
//! `# handle N`.
//!
//! Errors: [`parse`] fails only when the text is not JSON or not `nft -j` output; everything else is a
//! warning, and rules in kube-proxy's per-service chains that this reader does not understand are
//! reported, never dropped silently.
//!
//! The reader runs in stages, one file each, each handing the next a smaller thing:
//! - `json.rs`, lexing: the text into borrowed JSON trees, one top-level object at a time;
//! - `table.rs`, objects: kube-proxy's chains, rules (reduced to the facts the model needs and
//!   rendered by `render.rs`) and sets, with each chain's rules indexed;
//! - `build.rs`, building: the table read as Services, chain names parsed by `chain_name.rs`; the
//!   Services are assembled by the steps all rule readers share (`rules::service`).
//!
//! The cuts are where the data changes form (text, JSON tree, table, model), so each stage can be
//! read, tested and tuned without the others: the first two run once per object of a ~45 MB input
//! and are tuned for allocation; the last works by chain name and holds kube-proxy's design.

mod build;
mod chain_name;
/// Also the iptables-nft reader's attribute helpers (`Attrs`, `bits`, `Unknown`).
pub(in crate::model::rules) mod expr;
mod json;
#[cfg(test)]
pub(in crate::model::rules) mod kernel_tests;
pub mod netlink;
mod render;
mod table;
#[cfg(test)]
mod tests;

use std::net::IpAddr;

pub use chain_name::{ChainName, parse_chain_name};
use table::Table;

use crate::model::{ProxyMode, Service};

/// Which base-chain layout kube-proxy used (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 1.29–1.31: one `endpoints-check` chain.
    EndpointsCheck,
    /// ≤1.32 and early 1.33.x: `filter-prerouting` and `filter-output-post-dnat` at -110/-90.
    A,
    /// 1.34 (and 1.33.x after #133969): `filter-*-pre-dnat` at -110, filter chains at priority 0.
    B,
}

/// What [`parse`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// One entry per Service, ordered by `namespace/name`.
    pub services: Vec<Service>,
    /// Soft errors and rules not understood.
    pub warnings: Vec<String>,
    /// The dump has kube-proxy's table.
    pub rules_present: bool,
    /// `Some(Nftables)` when kube-proxy's table is there.
    pub mode_hint: Option<ProxyMode>,
    /// The base-chain layout, when recognisable.
    pub layout: Option<Layout>,
    /// The `nodeport-ips` set (empty when NodePorts match every local address).
    pub node_port_ips: Vec<IpAddr>,
    /// `cluster-ips-check`'s drop of unallocated ClusterIPs (1.30+).
    pub unallocated_drop: Option<crate::model::UnallocatedDrop>,
    /// Number of rules in kube-proxy's table.
    pub rule_count: usize,
}

/// The input is not `nft -j` output.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all (truncated output, an error message).
    #[error("{source_name}: not JSON (expected the output of `nft -j list table ip kube-proxy`)")]
    NotJson {
        source_name: String,
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but without the top-level `nftables` array.
    #[error("{source_name}: JSON without a top-level \"nftables\" array (expected `nft -j` output)")]
    NotNftJson { source_name: String },
}

/// Parses `nft -j list table ip kube-proxy` output; warnings name the source `nft`.
pub fn parse(json: &str) -> Result<Parsed, ParseError> {
    parse_named(json, "nft")
}

/// Parses `nft -j` output; `source_name` prefixes every warning.
pub fn parse_named(json: &str, source_name: &str) -> Result<Parsed, ParseError> {
    let mut table = Table::for_input(source_name, json.len());
    // The top-level array is read one object at a time, each into a JSON tree borrowing its
    // strings from `json`, turned into the table's compact form and dropped: a 10,000-Service
    // table is ~45 MB of JSON and several times that as a `serde_json::Value`.
    let seen = json::read_objects(json, |kind, body, pool| table.add(kind, body, pool));
    match seen {
        Ok(true) => {}
        Ok(false) => {
            return Err(ParseError::NotNftJson {
                source_name: source_name.to_string(),
            });
        }
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(ParseError::NotNftJson {
                source_name: source_name.to_string(),
            });
        }
        Err(source) => {
            return Err(ParseError::NotJson {
                source_name: source_name.to_string(),
                source,
            });
        }
    }
    table.index_rules();
    Ok(build::build(&table))
}
