//! Reads kube-proxy's iptables-mode rules from `iptables-save` output into [`Service`]s.
//!
//! Input: the text `iptables-save` (or `iptables-nft-save`, `iptables-legacy-save`, `ip6tables-save`)
//! prints for the nat and filter tables, with or without `-c` counters. The reader understands the
//! output form `iptables-save` prints for kube-proxy's input (`-d x/32` moved to the
//! front, comments always quoted with `\"` escapes, `--set-xmark`, 11-decimal probabilities,
//! `[pkts:bytes]` prefixes, `#` lines) and also kube-proxy's own input form, because options are
//! looked up by name, never by position.
//!
//! What it builds, per Service port `N` (`ns/name:port`) and protocol:
//! - frontends: ClusterIP (nat `KUBE-SERVICES` "N cluster IP", or filter "has no endpoints" /
//!   "has no local endpoints" rules when the nat rule is absent), external IPs, load-balancer IPs,
//!   NodePorts (nat `KUBE-NODEPORTS`, at the addresses of the `KUBE-SERVICES` tail rule: `0.0.0.0` /
//!   `::` for `-m addrtype --dst-type LOCAL`);
//! - endpoints: the DNAT targets of the `KUBE-SEP-` chains the `KUBE-SVC-`/`KUBE-SVL-` chains jump
//!   to, with the DNAT rule as [`RuleRef`](crate::model::RuleRef), the chance of being chosen as
//!   `weight`, and locality (`local: Some(true)` when a `KUBE-SVL-` chain holds it, `Some(false)`
//!   when a `KUBE-SVL-` chain exists without it);
//! - [`RuleFacts`](crate::model::RuleFacts): REJECT "has no endpoints", DROP "has no local endpoints", ClientIP affinity
//!   (`-m recent --rcheck --seconds S`), the chains, loadBalancerSourceRanges, and `problems`:
//!   a wrong probability sequence (not `1/(n-i)`), a jump to a chain that does not exist, a comment
//!   naming another endpoint than the DNAT target.
//!
//! Chains are tied to Service ports by their hashes (`names.rs`): `KUBE-SVC-`, `KUBE-SVL-`,
//! `KUBE-EXT-` and `KUBE-FW-` of one port share a suffix, so one comment anywhere among them (in
//! large clusters kube-proxy keeps only the `KUBE-SERVICES` ones) names them all, and the protocol is
//! the one whose recomputed hash matches. `KUBE-SEP-` chains without comments are named by the
//! service chain jumping to them, and checked against `names::endpoint_hash`.
//!
//! Not done here: reading the system (see `rules::read_node`), IPVS-mode service identity (IPVS
//! mode's iptables rules name no Service; see `rules::ipvs`).
//!
//! Errors: [`parse`] fails only when the text is not `iptables-save` output at all. Everything else
//! (a malformed line, an unterminated quote, a rule in a kube-proxy chain this reader does not
//! understand, a table without `COMMIT`) becomes a warning naming the line, and parsing carries on.
//! Rules in chains kube-proxy does not own (built-in chains aside from their jumps, CNI chains) are
//! outside the model and are not reported.
//!
//! The kernel reader (`netlink.rs`, iptables-nft over nf_tables netlink) renders kube-proxy's
//! chains as this text, rule by rule (`save.rs`, with x_tables extensions decoded by `xt.rs`),
//! and hands it to the same stages.
//!
//! The reader runs in stages, one file each: `lex.rs` splits a rule line into the options the model
//! reads; `table.rs` reads the dump's tables, chains and rules and resolves jumps; `build.rs` reads
//! kube-proxy's chains as Services, with kube-proxy's comments parsed by `comment.rs` and the
//! Services assembled by the steps all rule readers share (`rules::service`). The cuts are where
//! the data changes form (line, rule, dump, model): the first two run once per line of a dump that
//! can hold 170,000 rules and are tuned for it; the last works by chain name and holds kube-proxy's
//! design, so a change in kube-proxy's rules touches it alone.

mod build;
mod chains;
mod comment;
#[cfg(test)]
mod kernel_tests;
pub mod legacy;
#[cfg(test)]
mod legacy_tests;
mod lex;
pub mod netlink;
mod save;
mod table;
#[cfg(test)]
mod tests;
mod xt;

use std::net::IpAddr;

use table::Dump;

use crate::model::{ProxyMode, Service};

/// What [`parse`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// One entry per Service, ordered by `namespace/name`.
    pub services: Vec<Service>,
    /// Soft errors and rules not understood, each naming the source and line.
    pub warnings: Vec<String>,
    /// The nat table has kube-proxy's `KUBE-SERVICES` chain.
    pub rules_present: bool,
    /// Which kube-proxy mode wrote these chains: `Iptables` (`KUBE-SVC-`/`KUBE-SEP-` chains or
    /// service rules), `Ipvs` (the ipset-based rules of IPVS mode), `None` (no kube-proxy rules).
    pub mode_hint: Option<ProxyMode>,
    /// Node addresses NodePorts are accepted on (`-d <ip> -j KUBE-NODEPORTS`); empty when the
    /// tail rule matches any local address.
    pub node_port_ips: Vec<IpAddr>,
    /// Number of `-A` rules read.
    pub rule_count: usize,
}

/// The input is not `iptables-save` output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A line other than a comment, a table header or `COMMIT` came before the first `*table`
    /// line: the text is something else (an `iptables -L` listing, an error message, ...).
    #[error(
        "{source_name} line {line}: expected iptables-save output (a `*nat` or `*filter` table header) \
         but found `{found}`; pass the output of `iptables-save`, not `iptables -L`"
    )]
    NotIptablesSave {
        source_name: String,
        line: usize,
        found: String,
    },
}

/// Parses `iptables-save` output; warnings name the source `iptables-save`.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    parse_named(text, "iptables-save")
}

/// Parses `iptables-save` output; `source_name` (a file name or command) prefixes every warning.
pub fn parse_named(text: &str, source_name: &str) -> Result<Parsed, ParseError> {
    let dump = Dump::read(text, source_name)?;
    Ok(build::build(&dump))
}

/// Parses the `iptables-save` text a kernel reader rendered (`netlink.rs`, `legacy.rs`); warnings
/// name each rule by the kernel's name for it (`handles[line]`, a `place` such as "rule
/// handle"), not by a line of a text nobody sees.
fn parse_rendered(text: &str, source_name: &str, handles: &[u64], place: &'static str) -> Result<Parsed, ParseError> {
    let mut dump = Dump::read(text, source_name)?;
    dump.locate(handles, place);
    Ok(build::build(&dump))
}
