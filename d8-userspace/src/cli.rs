//! The command line, as typed: parsed and range-checked by clap, then resolved here, once, into the
//! plain configuration the rest of the crate takes ([`trace::Scope`], [`trace::HookRequest`],
//! [`report::Format`]). No clap type goes below this file. The grammar is a contract (see the
//! README's "Commands").

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    model::k8s,
    report,
    trace::{self, Destination, ServiceSelector, Target},
};

/// d8-trace: follow every flow to a Kubernetes Service through kube-proxy's rules, live, and say
/// why it fails.
///
/// Run it on a node during an incident: `d8-trace --svc NAMESPACE/NAME`. It traces until Ctrl-C
/// (or --duration), printing one line per flow as it changes, then prints the verdict.
///
/// Exit codes: 0 ran and printed a verdict, 2 usage error (bad flags, unknown Service),
/// 3 environment error (not root, kernel or BTF unsupported, missing tools).
#[derive(Debug, Parser)]
#[command(
    name = "d8-trace",
    version,
    args_conflicts_with_subcommands = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub trace: TraceArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// Logging: stderr only (stdout is the report). `RUST_LOG` (e.g. `d8_trace=debug`), when set,
/// takes precedence over `-v`/`-q`.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// More detail on stderr (-v debug, -vv trace).
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true, conflicts_with = "quiet")]
    pub verbose: u8,
    /// Only warnings and errors on stderr.
    #[arg(short = 'q', long, global = true)]
    pub quiet: bool,
    /// `text` (one `d8-trace: ...` line per message) or `json` (one object per line, for log
    /// pipelines: the DaemonSet uses it).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Cli {
    /// The selection flags of whichever command runs (each has them).
    pub fn selection(&self) -> &Selection {
        match &self.command {
            None => &self.trace.selection,
            Some(Command::Explain(a)) => &a.selection,
            Some(Command::Daemon(a)) => &a.selection,
            Some(Command::Demo(a)) => &a.selection,
            Some(Command::Doctor(a)) => &a.selection,
            Some(Command::Cleanup(a)) => &a.selection,
            Some(Command::Mcp(a)) => &a.selection,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Explain a Service from kube-proxy's rules and the API alone, without tracing.
    Explain(ExplainArgs),
    /// Continuous capture on every node (DaemonSet mode): metrics and events.
    Daemon(DaemonArgs),
    /// Build a simulated node in network namespaces, play an incident, trace it live.
    Demo(DemoArgs),
    /// Print what this kernel allows and which hooks d8-trace would use.
    Doctor(DoctorArgs),
    /// Remove what a killed d8-trace left attached (its TC filters and the clsact qdiscs it
    /// added); running traces and other tools' filters are left alone.
    Cleanup(CleanupArgs),
    /// Serve explain_service, trace_service and doctor to an agent over MCP (stdio).
    Mcp(McpArgs),
}

/// Output formats of a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// Live lines, then a readable summary.
    Text,
    /// One JSON object (the contract's fields).
    Json,
    /// The same object as YAML.
    Yaml,
    /// The kube-proxy runbook's output block, ready to paste into an incident.
    Runbook,
}

/// Hook sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Hooks {
    /// Netfilter BPF links where the kernel has them (6.4+), else TC.
    Auto,
    /// Netfilter BPF links (kernel 6.4+).
    Netfilter,
    /// clsact TC programs on the node's interfaces (older kernels).
    Tc,
}

/// Flags that mean the same for every subcommand.
#[derive(Debug, Clone, Args)]
pub struct Selection {
    /// Run the whole job (rule reading and hooks) inside this network namespace: a name under
    /// /run/netns or a path such as /proc/PID/ns/net.
    #[arg(long, value_name = "NAME|PATH", global = true)]
    pub netns: Option<String>,
    /// Kubeconfig to reach the API server (default: in-cluster config, then $KUBECONFIG).
    #[arg(long, value_name = "PATH", global = true, conflicts_with_all = ["k8s_snapshot", "no_k8s"])]
    pub kubeconfig: Option<PathBuf>,
    /// Read the API's state from a file instead: the JSON List printed by
    /// `kubectl get services,endpointslices,pods,nodes -A -o json`.
    #[arg(long, value_name = "FILE", global = true, conflicts_with = "no_k8s")]
    pub k8s_snapshot: Option<PathBuf>,
    /// Work from kube-proxy's rules alone; verdicts that need the API are reported as unproven.
    #[arg(long, global = true)]
    pub no_k8s: bool,
    /// This node's name, for endpoint locality (default: $NODE_NAME, else the Node whose
    /// addresses are this host's).
    #[arg(long, value_name = "NODE_NAME", global = true)]
    pub node: Option<String>,
    /// Hook set to trace with.
    #[arg(long, value_enum, default_value_t = Hooks::Auto, global = true)]
    pub hooks: Hooks,
    /// Log what the kernel programs do (flows started, tables full, events lost) to stderr as
    /// `kernel:` lines at debug level (raise with -v to see them all). Costs a little per packet;
    /// off, the programs' log statements are removed when they load.
    #[arg(long, global = true)]
    pub debug_kernel: bool,
    /// Where kube-proxy's nftables rules are read from: `kernel` (nf_tables netlink), `tools`
    /// (`nft -j list table …`), or `auto` (the kernel, falling back to nft with a warning when
    /// the table holds something the kernel reader does not know).
    #[arg(long, value_enum, default_value_t = RulesFromArg::Auto, global = true)]
    pub rules_from: RulesFromArg,
}

/// `--rules-from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RulesFromArg {
    Auto,
    Kernel,
    Tools,
}

impl From<RulesFromArg> for trace::RulesFrom {
    fn from(r: RulesFromArg) -> Self {
        match r {
            RulesFromArg::Auto => trace::RulesFrom::Auto,
            RulesFromArg::Kernel => trace::RulesFrom::Kernel,
            RulesFromArg::Tools => trace::RulesFrom::Tools,
        }
    }
}

/// The incident mode: `d8-trace --svc NS/NAME[:PORT]`.
#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// The Service to trace: NAMESPACE/NAME, optionally :PORT (number or port name).
    #[arg(long, value_name = "NS/NAME[:PORT]")]
    pub svc: Option<ServiceSelector>,
    /// Instead of --svc: the address clients use, IP:PORT[/PROTO] (tcp by default). Traces the
    /// Service that holds it, or, when none does (a deleted Service's ClusterIP, a stale DNS
    /// answer), the address itself: the verdict is then cluster_ip_unallocated.
    #[arg(long, value_name = "IP:PORT[/PROTO]", conflicts_with = "svc")]
    pub dest: Option<Destination>,
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub duration: Option<u64>,
    /// Output format of the verdict.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Seconds without any answer after which a flow counts as timed out.
    #[arg(long, value_name = "SECS", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub reply_timeout: u64,
    /// Size of the kernel's event ring buffer, in KiB (power of two, at least 4).
    #[arg(long, value_name = "KIB", default_value_t = 1024, value_parser = parse_ring_kib)]
    pub ring_buffer_kib: u32,
    /// Trace one address family of a dual-stack Service: its IPv4 or IPv6 frontends and
    /// endpoints only (default: every family it has).
    #[arg(long, value_enum, default_value_t = FamilyArg::Any)]
    pub family: FamilyArg,
    #[command(flatten)]
    pub pcap: PcapArgs,
    #[command(flatten)]
    pub selection: Selection,
}

/// `--family`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FamilyArg {
    #[value(name = "4")]
    V4,
    #[value(name = "6")]
    V6,
    Any,
}

impl FamilyArg {
    /// The family to narrow a trace to; `None` for `any`.
    pub fn family(self) -> Option<crate::model::IpFamily> {
        match self {
            Self::V4 => Some(crate::model::IpFamily::V4),
            Self::V6 => Some(crate::model::IpFamily::V6),
            Self::Any => None,
        }
    }
}

/// `--svc` or `--dest`, whichever was given.
fn target(svc: &Option<ServiceSelector>, dest: &Option<Destination>) -> Option<Target> {
    match (svc, dest) {
        (Some(s), _) => Some(Target::Service(s.clone())),
        (None, Some(d)) => Some(Target::Address(*d)),
        (None, None) => None,
    }
}

impl TraceArgs {
    /// What to trace, if the user said.
    pub fn target(&self) -> Option<Target> {
        target(&self.svc, &self.dest)
    }
}

impl ExplainArgs {
    /// What to explain (clap requires one of the two).
    pub fn target(&self) -> Option<Target> {
        target(&self.svc, &self.dest)
    }
}

/// `--pcap` and its companions: the packets of the failing flows as a pcapng file.
#[derive(Debug, Clone, Args)]
pub struct PcapArgs {
    /// Write the packets of the flows that fail (rejected, dropped, reset, timed out,
    /// ICMP-errored) to FILE as pcapng, with the verdict in the packets' comments.
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<std::path::PathBuf>,
    /// With --pcap: every traced flow's packets, not only the failing flows'.
    #[arg(long, requires = "pcap")]
    pub pcap_all: bool,
    /// With --pcap: bytes kept of each packet, from its IP header (1 to 256).
    #[arg(long, value_name = "BYTES", default_value_t = crate::report::pcap::DEFAULT_SNAPLEN, requires = "pcap",
          value_parser = clap::value_parser!(u32).range(1..=d8_common::pcap::MAX_SNAPLEN as i64))]
    pub snaplen: u32,
    /// With --pcap: overwrite FILE if it exists.
    #[arg(long, requires = "pcap")]
    pub force: bool,
}

impl PcapArgs {
    /// The pipeline's request, with the command line for the file's header; `None` without --pcap.
    pub fn resolve(&self) -> Option<crate::trace::PcapRequest> {
        let path = self.pcap.clone()?;
        Some(crate::trace::PcapRequest {
            path,
            all: self.pcap_all,
            snaplen: self.snaplen,
            force: self.force,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        })
    }
}

fn parse_ring_kib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v < 4 || !v.is_power_of_two() || v > 1 << 20 {
        return Err(format!("{v}: must be a power of two between 4 and 1048576"));
    }
    Ok(v)
}

#[derive(Debug, Clone, Args)]
pub struct ExplainArgs {
    /// The Service to explain: NAMESPACE/NAME[:PORT].
    #[arg(long, value_name = "NS/NAME[:PORT]", required_unless_present = "dest")]
    pub svc: Option<ServiceSelector>,
    /// Instead of --svc: an address clients use, IP:PORT[/PROTO] (see the trace's --dest).
    #[arg(long, value_name = "IP:PORT[/PROTO]", conflicts_with = "svc")]
    pub dest: Option<Destination>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub selection: Selection,
}

#[derive(Debug, Clone, Args)]
pub struct DaemonArgs {
    /// Address to serve Prometheus metrics, /healthz and /readyz on.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0:9810")]
    pub metrics_addr: String,
    /// Write JSON Lines events (non-healthy flows, verdict changes) to FILE, or `-` for stdout.
    #[arg(long, value_name = "FILE|-")]
    pub events: Option<String>,
    /// Seconds between two checks of kube-proxy's rules (read again only when the ruleset
    /// changed; the API is watched, not polled).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub refresh_secs: u64,
    /// Most flows held at once; beyond it the oldest are evicted and counted.
    #[arg(long, value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(100..=10_000_000))]
    pub max_flows: u64,
    /// Write the packets of failing flows to pcapng files in DIR (rotated, bounded by
    /// --pcap-file-mib and --pcap-files).
    #[arg(long, value_name = "DIR")]
    pub pcap_dir: Option<std::path::PathBuf>,
    /// With --pcap-dir: a file is closed and a new one begun once it holds this many MiB.
    #[arg(long, value_name = "MIB", default_value_t = 16, requires = "pcap_dir", value_parser = clap::value_parser!(u64).range(1..=4096))]
    pub pcap_file_mib: u64,
    /// With --pcap-dir: d8-trace's files kept at most; the oldest is deleted beyond it.
    #[arg(long, value_name = "N", default_value_t = 8, requires = "pcap_dir", value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub pcap_files: u64,
    /// With --pcap-dir: every counted flow's packets, not only the failing flows'.
    #[arg(long, requires = "pcap_dir")]
    pub pcap_all: bool,
    /// With --pcap-dir: bytes kept of each packet, from its IP header (1 to 256).
    #[arg(long, value_name = "BYTES", default_value_t = crate::report::pcap::DEFAULT_SNAPLEN, requires = "pcap_dir",
          value_parser = clap::value_parser!(u32).range(1..=d8_common::pcap::MAX_SNAPLEN as i64))]
    pub snaplen: u32,
    #[command(flatten)]
    pub selection: Selection,
}

impl DaemonArgs {
    /// The daemon's `--pcap-dir` request; `None` without it.
    pub fn pcap(&self) -> Option<crate::cmd::daemon::pcap::PcapDir> {
        Some(crate::cmd::daemon::pcap::PcapDir {
            dir: self.pcap_dir.clone()?,
            max_file_bytes: self.pcap_file_mib << 20,
            max_files: self.pcap_files as usize,
            snaplen: self.snaplen,
            all: self.pcap_all,
            command: std::env::args().collect::<Vec<_>>().join(" "),
        })
    }
}

#[derive(Debug, Clone, Args)]
pub struct DemoArgs {
    /// Output format of the verdicts.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    #[command(flatten)]
    pub selection: Selection,
}

/// `d8-trace mcp`: the selection flags given here are the defaults of every tool call (a call's
/// `netns` and `k8s_snapshot` replace them).
#[derive(Debug, Clone, Args)]
pub struct McpArgs {
    #[command(flatten)]
    pub selection: Selection,
}

#[derive(Debug, Clone, Args)]
pub struct CleanupArgs {
    #[command(flatten)]
    pub selection: Selection,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Print the findings as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub selection: Selection,
}

impl Selection {
    /// The plain scope every command runs in.
    pub fn resolve(&self) -> trace::Scope {
        let api = if self.no_k8s {
            k8s::Source::Disabled
        } else if let Some(path) = &self.k8s_snapshot {
            k8s::Source::Snapshot(path.clone())
        } else {
            k8s::Source::Live {
                kubeconfig: self.kubeconfig.clone(),
            }
        };
        trace::Scope {
            netns: self.netns.clone(),
            api,
            node: self.node.clone(),
            hooks: self.hooks.into(),
            debug_kernel: self.debug_kernel,
            rules_from: self.rules_from.into(),
        }
    }
}

impl LogArgs {
    /// Installs the process's log subscriber: `tracing` events of this crate at the chosen level
    /// (other crates' only when they are errors), written to stderr. With `debug_kernel`, the
    /// kernel programs' records (target `d8_trace::kernel`) are shown from debug level up.
    /// kube-client's own lines are off: every request it fails it logs as an error, and the
    /// daemon's API watches say what failed once per outage, with what they do about it.
    pub fn init(&self, debug_kernel: bool) {
        use tracing_subscriber::{EnvFilter, fmt};
        let level = match (self.quiet, self.verbose) {
            (true, _) => "warn",
            (false, 0) => "info",
            (false, 1) => "debug",
            (false, _) => "trace",
        };
        let kernel = if debug_kernel { ",d8_trace::kernel=debug" } else { "" };
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new(format!("d8_trace={level},error,kube_client=off{kernel}")));
        let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
        let _ = match self.log_format {
            LogFormat::Text => builder.event_format(PlainLines).try_init(),
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
        };
    }
}

/// `d8-trace: warning: <message>`: the lines d8-trace always printed, now with levels.
struct PlainLines;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for PlainLines
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut w: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let prefix = match *event.metadata().level() {
            tracing::Level::ERROR => "error: ",
            tracing::Level::WARN => "warning: ",
            tracing::Level::INFO => "",
            tracing::Level::DEBUG => "debug: ",
            tracing::Level::TRACE => "trace: ",
        };
        write!(w, "d8-trace: {prefix}")?;
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

impl From<Hooks> for trace::HookRequest {
    fn from(h: Hooks) -> Self {
        match h {
            Hooks::Auto => Self::Auto,
            Hooks::Netfilter => Self::Netfilter,
            Hooks::Tc => Self::Tc,
        }
    }
}

impl From<Output> for report::Format {
    fn from(o: Output) -> Self {
        match o {
            Output::Text => Self::Text,
            Output::Json => Self::Json,
            Output::Yaml => Self::Yaml,
            Output::Runbook => Self::Runbook,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("d8-trace").chain(args.iter().copied()))
    }

    #[test]
    fn command_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn trace_flags_parse_with_defaults() {
        let cli = parse(&["--svc", "default/web"]).unwrap();
        assert!(cli.command.is_none());
        let t = cli.trace;
        assert_eq!(t.svc.unwrap().service.to_string(), "default/web");
        assert_eq!(
            (t.duration, t.output, t.reply_timeout, t.ring_buffer_kib),
            (None, Output::Text, 3, 1024)
        );
        assert_eq!(t.selection.hooks, Hooks::Auto);
        assert!(!t.selection.no_k8s);
    }

    #[test]
    fn dest_is_the_target_instead_of_svc() {
        let cli = parse(&["--dest", "10.96.0.10:53/udp"]).unwrap();
        let Some(Target::Address(d)) = cli.trace.target() else {
            panic!("an address target")
        };
        assert_eq!(d.to_string(), "10.96.0.10:53/udp");
        let cli = parse(&["explain", "--dest", "10.96.200.7:80"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Explain(ref e)) if matches!(e.target(), Some(Target::Address(_)))));
        assert!(matches!(
            parse(&["--svc", "a/b"]).unwrap().trace.target(),
            Some(Target::Service(_))
        ));
    }

    #[test]
    fn trace_flags_long_and_short() {
        let cli = parse(&[
            "--svc",
            "kube-system/kube-dns:dns",
            "--netns",
            "node1",
            "--duration",
            "5",
            "-o",
            "json",
            "--no-k8s",
            "--node",
            "n1",
            "--hooks",
            "netfilter",
        ])
        .unwrap();
        let t = cli.trace;
        let svc = t.svc.unwrap();
        assert_eq!(svc.port.as_deref(), Some("dns"));
        assert_eq!(t.selection.netns.as_deref(), Some("node1"));
        assert_eq!((t.duration, t.output), (Some(5), Output::Json));
        assert_eq!((t.selection.no_k8s, t.selection.node.as_deref()), (true, Some("n1")));
        assert_eq!(t.selection.hooks, Hooks::Netfilter);
        let cli = parse(&["--svc", "a/b", "--output", "runbook", "--k8s-snapshot", "/tmp/x.json"]).unwrap();
        assert_eq!(cli.trace.output, Output::Runbook);
        assert!(cli.trace.selection.k8s_snapshot.is_some());
        let cli = parse(&["--svc", "a/b", "--kubeconfig", "/k", "-o", "yaml", "--hooks", "tc"]).unwrap();
        assert_eq!((cli.trace.output, cli.trace.selection.hooks), (Output::Yaml, Hooks::Tc));
    }

    #[test]
    fn later_flag_overrides_earlier() {
        let cli = parse(&["--svc", "a/b", "-o", "json", "-o", "yaml"]);
        // clap rejects repeated single-value flags unless overriding is allowed; either way the
        // user gets a definite answer, never a silent mix.
        if let Ok(cli) = cli {
            assert_eq!(cli.trace.output, Output::Yaml);
        }
    }

    #[test]
    fn bad_input_is_a_usage_error() {
        for args in [
            &["--svc", "web"][..],
            &["--svc", "default/web:"],
            &["--svc", "default/we b"],
            &["--svc", "a/b", "--duration", "0"],
            &["--svc", "a/b", "-o", "xml"],
            &["--svc", "a/b", "--hooks", "xdp"],
            &["--svc", "a/b", "--no-k8s", "--k8s-snapshot", "f"],
            &["--svc", "a/b", "--ring-buffer-kib", "100"],
            &["--svc", "a/b", "--dest", "10.96.0.10:80"],
            &["--dest", "10.96.0.10"],
            &["explain"],
            &["explain", "--svc", "a/b", "--dest", "10.96.0.10:80"],
        ] {
            let err = parse(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn subcommands_parse() {
        let cli = parse(&["explain", "--svc", "ns/x", "--k8s-snapshot", "s.json", "-o", "json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Explain(ref e)) if e.output == Output::Json));
        let cli = parse(&["daemon", "--metrics-addr", "127.0.0.1:1", "--events", "-"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Daemon(ref d)) if d.events.as_deref() == Some("-")));
        // The daemon takes --hooks like every subcommand (default auto).
        let cli = parse(&["daemon", "--hooks", "tc", "--netns", "node1"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Daemon(ref d)) if d.selection.hooks == Hooks::Tc));
        let cli = parse(&["daemon"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Daemon(ref d)) if d.selection.hooks == Hooks::Auto));
        assert_eq!(parse(&["daemon", "--hooks", "xdp"]).unwrap_err().exit_code(), 2);
        assert!(matches!(parse(&["demo"]).unwrap().command, Some(Command::Demo(_))));
        let cli = parse(&["doctor", "--netns", "x"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Doctor(ref d)) if d.selection.netns.as_deref() == Some("x")));
    }
}
