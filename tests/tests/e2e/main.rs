//! End-to-end tests: the real `d8-trace` binary, the running kernel, and namespace labs built by
//! `d8_trace::lab`. They need root; run them with `cargo xtask test` (one test thread: they share
//! the kernel's BPF and netfilter state).
//!
//! Hook set: `D8_E2E_HOOKS=tc|netfilter` adds `--hooks` to every d8-trace command a test starts
//! without its own (`d8_tests::run::with_hooks`); unset or `auto`, d8-trace picks what the kernel
//! allows (`d8-trace doctor --json`'s `hook_set`). The kernel matrix runs 6.12's tests once per set.
//!
//! Modules:
//! - `common`: the lab used by most tests, and helpers.
//! - `tracer`: flows joined pre/post-DNAT, and their outcomes (issue 2).
//! - `cleanup`: nothing stays attached after exit, Ctrl-C or an error.
//! - `errors`: bad input gets one sentence and the contract's exit code.
//! - `family`: a scenario's address family, and its reports compared across families (issue 16).
//! - `daemon`: continuous capture: metrics, events, SIGTERM.
//! - `dual_stack`: dual-stack labs (issue 16): IPv6 traffic through both families' rules, and `explain`.
//! - `demo`: `d8-trace demo`'s verdicts per Service, and cleanup on exit and Ctrl-C.
//! - `ipv6_only`: an IPv6-only node (issue 16): the scenarios there, compared with IPv4's.
//! - `mcp`: `d8-trace mcp` driven by an MCP client: tools, explain, trace, disconnect cleanup.
//! - `pcap`: `--pcap`'s file of the failing flows, read back with tshark (issue 17).
//! - `real_cluster`: what real clusters do that the other labs do not (issue 14): topology hints.
//! - `scenarios`: one lab scenario per verdict class, traced and explained, in iptables and nftables mode.
//! - `tc`: the TC hook set gives the netfilter set's flows, and leaves nothing behind.
//! - `vm`: IPVS mode live and `conntrack_full`, on the VM suite's 6.1 kernel (skipped elsewhere).

mod cleanup;
mod common;
mod daemon;
mod demo;
mod dual_stack;
mod errors;
mod family;
mod ipv6_only;
mod mcp;
mod pcap;
mod real_cluster;
mod scenarios;
mod tc;
mod tracer;
mod vm;
