//! `cargo xtask bench [--quick]`: what tracing costs the node, how much it takes, how it scales.
//! Everything runs in lab namespaces on this machine and ends in `BENCHMARKS.md`:
//!
//! 1. [`datapath`]: iperf3 throughput through a DNAT'd ClusterIP with d8-trace off, tracing another
//!    Service and tracing this one (runs interleaved, each judged against the "off" speed at its
//!    moment, medians of those ratios); short connections per second, also with `tcpdump`
//!    capturing in the node instead.
//! 2. [`hooks`]: run time per invocation of each program under BPF statistics, next to an empty
//!    netfilter program (`nf_empty`) attached at the same hooks in the same run, and beside
//!    `nf_pre` a program that only reads the packet (`nf_hdr`).
//! 3. [`capacity`]: the highest new-flow rate with no lost events; d8-trace's CPU and RSS there.
//! 4. [`rules`]: reading and modelling 1,000 / 10,000 Services from iptables-save and nft JSON.
//! 5. [`startup`]: from `d8-trace --svc` to hooks attached and to the first flow printed.
//! 6. [`daemon`]: `d8-trace daemon` at 10,000 Services against a list-and-watch API server: API
//!    requests, CPU, peak RSS of its processes, `/healthz` while the rules are re-read.
//! 7. [`profile`]: where a short connection's CPU goes, tracing it against tracing another
//!    Service: the whole machine sampled by `perf record`, sorted into the load, the programs,
//!    their dispatch, d8-trace's process and idle time.
//!
//! The task links the lab and the rule readers (d8-userspace), whose build needs the BPF
//! toolchain: built without the `bench` feature (as `cargo xtask setup` must be, on a fresh
//! machine), it runs itself again as `cargo run --release -p xtask --features bench`.
//!
//! Before each section a fixed workload is timed ([`common::reference_ms`]): the machine's own
//! speed, which the report uses to tell a figure that moved with the machine from one that did not.
//!
//! `--quick` runs every section for a second or two (CI smoke check): figures are printed and
//! written to `<target>/bench/BENCHMARKS-quick.md`, never asserted, and `BENCHMARKS.md` is left
//! alone.

use std::path::PathBuf;

#[cfg(feature = "bench")]
mod capacity;
#[cfg(feature = "bench")]
mod common;
#[cfg(feature = "bench")]
mod daemon;
#[cfg(feature = "bench")]
mod datapath;
#[cfg(feature = "bench")]
mod hooks;
#[cfg(feature = "bench")]
mod profile;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod rules;
#[cfg(feature = "bench")]
mod startup;
#[cfg(feature = "bench")]
mod tcpdump;

#[derive(Debug, clap::Args)]
pub struct Options {
    /// A second or two per measurement, 1,000 Services only: a smoke check (nothing asserted;
    /// writes `<target>/bench/BENCHMARKS-quick.md`, not BENCHMARKS.md).
    #[arg(long)]
    pub quick: bool,
    /// Run only these sections (comma-separated); default all.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<Section>,
    /// Where to write the report (default: BENCHMARKS.md at the workspace root; with --quick,
    /// `<target>/bench/BENCHMARKS-quick.md`).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// The d8-trace binary to measure (default: build `--release -p d8-userspace` and use it).
    #[arg(long)]
    pub d8_trace: Option<PathBuf>,
    /// Internal: parse one rule dump (`iptables` or `nft`, then the file) and print the time; the
    /// rule-scale section runs this as a child process to read its peak RSS.
    #[arg(long, hide = true, num_args = 2, value_names = ["FORMAT", "FILE"])]
    pub parse_child: Option<Vec<String>>,
}

/// The sections of the report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    Datapath,
    Hooks,
    Capacity,
    Rules,
    Startup,
    Daemon,
    Profile,
}

/// Built without the lab: run again with it.
#[cfg(not(feature = "bench"))]
pub fn run(_opts: &Options) -> anyhow::Result<()> {
    use anyhow::{Context as _, bail};
    // argv[1..] is `bench ...`: pass it through unchanged.
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let mut cmd = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args([
        "run",
        "--quiet",
        "--release",
        "--package",
        "xtask",
        "--features",
        "bench",
        "--",
    ])
    .args(&args);
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("cargo xtask bench failed ({status})");
    }
    Ok(())
}

#[cfg(feature = "bench")]
pub fn run(opts: &Options) -> anyhow::Result<()> {
    if let Some(args) = &opts.parse_child {
        return rules::parse_child(&args[0], &args[1]);
    }
    report::run(opts)
}
