//! `d8-trace`: parse, resolve, run, and map failures to the contract's exit codes
//! (0 verdict printed, 2 usage error, 3 environment error).

use std::{io::Write, process::ExitCode, time::Duration};

use clap::Parser;
use d8_trace::{
    cli::{Cli, Command, DaemonArgs, ExplainArgs, Output, TraceArgs},
    cmd, error_chain,
    kernel::netns,
    report,
    trace::{self, Scope},
};

/// A failure with the exit code the contract gives it.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }

    fn env(message: impl std::fmt::Display) -> Self {
        Self {
            code: 3,
            message: message.to_string(),
        }
    }
}

impl From<trace::Error> for Failure {
    fn from(e: trace::Error) -> Self {
        Self {
            code: e.exit_code() as u8,
            message: error_chain(&e),
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version are exit 0; everything else clap reports is a usage error (2).
            let _ = e.print();
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    cli.log.init(cli.selection().debug_kernel);
    private_tracefs(&cli);
    let result = match cli.command {
        None => trace_command(cli.trace),
        Some(Command::Cleanup(args)) => cmd::cleanup::run(args.selection.netns.as_deref()).map_err(Failure::env),
        Some(Command::Doctor(args)) => cmd::doctor::run(args.json, &args.selection.resolve()).map_err(Failure::env),
        Some(Command::Explain(args)) => explain_command(args),
        Some(Command::Daemon(args)) => daemon_command(args),
        Some(Command::Demo(args)) => {
            cmd::demo::run(args.output.into(), &args.selection.resolve()).map_err(|e| Failure {
                code: e.exit_code(),
                message: error_chain(&e),
            })
        }
        Some(Command::Mcp(args)) => cmd::mcp::serve(&args.selection.resolve()).map_err(Failure::env),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("d8-trace: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Commands that attach programs read tracefs; where the node has none mounted, it is mounted
/// in d8-trace's own mount namespace, now, while the process has one thread (see
/// `kernel::tracefs::mount_private`). Failing that, the trace mounts it on the node for the run.
fn private_tracefs(cli: &Cli) {
    let attaches = match &cli.command {
        None => cli.trace.target().is_some(),
        Some(Command::Daemon(_) | Command::Demo(_) | Command::Mcp(_) | Command::Doctor(_)) => true,
        Some(Command::Explain(_) | Command::Cleanup(_)) => false,
    };
    if !attaches || !d8_trace::kernel::is_root() {
        return;
    }
    match d8_trace::kernel::tracefs::mount_private() {
        Ok(true) => {
            tracing::debug!("tracefs mounted in d8-trace's own mount namespace (the node's mounts are unchanged)")
        }
        Ok(false) => {}
        Err(e) => tracing::debug!("{e}; tracefs will be mounted on the node for the run"),
    }
}

/// Root, then the network namespace: before any other thread exists, because netfilter links
/// and child processes follow the calling thread's netns.
fn enter_node(scope: &Scope) -> Result<tokio::runtime::Runtime, Failure> {
    if !d8_trace::kernel::is_root() {
        return Err(trace::Error::NotRoot.into());
    }
    if let Some(ns) = &scope.netns {
        netns::enter(ns).map_err(|e| Failure::env(error_chain(&e)))?;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::env(format!("starting the event loop: {e}")))
}

fn print_report(report: &report::Report, output: Output) -> Result<(), Failure> {
    // Buffered: stdout is line-buffered, and a pretty-printed report of a long trace has a line
    // per field, which would be a write(2) each.
    let mut stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout().lock());
    match report::render(report, output.into(), &mut stdout).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::env(format!("writing the report: {e}"))),
    }
}

fn warn(w: &str) {
    tracing::warn!("{w}");
}

fn explain_command(args: ExplainArgs) -> Result<(), Failure> {
    let scope = args.selection.resolve();
    let runtime = enter_node(&scope)?;
    let Some(target) = args.target() else {
        return Err(Failure::usage("explain needs --svc NAMESPACE/NAME or --dest IP:PORT"));
    };
    let done = runtime.block_on(trace::explain(&scope, &target))?;
    done.warnings.iter().for_each(|w| warn(w));
    print_report(&done.report, args.output)
}

fn daemon_command(args: DaemonArgs) -> Result<(), Failure> {
    let metrics_addr: std::net::SocketAddr = args.metrics_addr.parse().map_err(|e| {
        Failure::usage(format!(
            "--metrics-addr {}: {e} (expected IP:PORT, e.g. 0.0.0.0:9810)",
            args.metrics_addr
        ))
    })?;
    let scope = args.selection.resolve();
    let runtime = enter_node(&scope)?;
    let setup = trace::kernel_setup(&scope)?;
    let opts = cmd::daemon::Options {
        metrics_addr,
        events: args.events.clone(),
        scope,
        ring_buffer_bytes: 4 << 20,
        reply_timeout: Duration::from_secs(3),
        refresh: Duration::from_secs(args.refresh_secs),
        max_flows: args.max_flows as usize,
        pcap: args.pcap(),
    };
    runtime.block_on(cmd::daemon::run(opts, setup)).map_err(|e| match e {
        cmd::daemon::Error::Bind { .. } | cmd::daemon::Error::Events { .. } | cmd::daemon::Error::Pcap(_) => {
            Failure::usage(error_chain(&e))
        }
        cmd::daemon::Error::Trace(t) => t.into(),
        other => Failure::env(error_chain(&other)),
    })
}

fn trace_command(args: TraceArgs) -> Result<(), Failure> {
    let Some(svc) = args.target() else {
        return Err(Failure::usage(
            "--svc NAMESPACE/NAME (or --dest IP:PORT) is required (or a subcommand: explain, daemon, demo, doctor)",
        ));
    };
    let scope = args.selection.resolve();
    let runtime = enter_node(&scope)?;
    let opts = trace::Options {
        duration: args.duration.map(Duration::from_secs),
        reply_timeout: Duration::from_secs(args.reply_timeout),
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        live: true,
        family: args.family.family(),
        pcap: args.pcap.resolve(),
    };
    // Machine output stays one object on stdout; live lines then go to stderr. Either way they
    // are written by a thread of their own: a reader that stops reading (a paused pager) must
    // not stall the event loop, or the kernel's ring buffer overflows.
    let out: Box<dyn Write + Send> = if args.output == Output::Text {
        Box::new(std::io::stdout())
    } else {
        Box::new(std::io::stderr())
    };
    let mut live = trace::LiveQueue::spawn(out, trace::live_queue_lines())
        .map_err(|e| Failure::env(format!("starting the live output thread: {e}")))?;
    let done = runtime.block_on(trace::trace(&scope, &svc, &opts, &mut live, &mut warn));
    // Every queued line is written before the report (and before an error's message).
    let dropped = live.finish();
    if dropped > 0 {
        tracing::warn!("{dropped} live lines dropped: output was not being read");
    }
    print_report(&done?.report, args.output)
}
