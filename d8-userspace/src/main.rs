//! `d8-trace`: parse, resolve, run, and map failures to the contract's exit codes
//! (0 verdict printed, 2 usage error, 3 environment error).

use std::{io::Write, process::ExitCode, time::Duration};

use clap::Parser;
use d8_trace::{
    error_chain,
    classify::{self, Context},
    cli::{Cli, Command, DaemonArgs, ExplainArgs, Output, Selection, TraceArgs},
    kernel::netns,
    node, report,
    trace::{self, Options},
};

/// A failure with the exit code the contract gives it.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn usage(message: impl std::fmt::Display) -> Self {
        Self { code: 2, message: message.to_string() }
    }

    fn env(message: impl std::fmt::Display) -> Self {
        Self { code: 3, message: message.to_string() }
    }
}

impl From<trace::Error> for Failure {
    fn from(e: trace::Error) -> Self {
        Self { code: e.exit_code() as u8, message: error_chain(&e) }
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
    let result = match cli.command {
        None => trace_command(cli.trace),
        Some(Command::Doctor(args)) => d8_trace::cmd::doctor::run(args.json, &args.selection).map_err(Failure::env),
        Some(Command::Explain(args)) => explain_command(args),
        Some(Command::Daemon(args)) => daemon_command(args),
        Some(Command::Demo(args)) => {
            d8_trace::cmd::demo::run(&args).map_err(|e| Failure { code: e.exit_code(), message: error_chain(&e) })
        }
        Some(Command::Mcp(args)) => d8_trace::cmd::mcp::serve(&args).map_err(Failure::env),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("d8-trace: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

/// Checks the selection flags this build can honour.
fn check_selection(sel: &Selection) -> Result<(), Failure> {
    // `--hooks` is honoured by `trace::kernel_setup` (netfilter links or TC classifiers).
    trace::request_hooks(sel.hooks);
    Ok(())
}

impl From<node::Error> for Failure {
    fn from(e: node::Error) -> Self {
        match e {
            // The user named a snapshot file that cannot be used.
            node::Error::Api(_) => Failure::usage(error_chain(&e)),
            node::Error::Rules(_) => Failure::env(error_chain(&e)),
        }
    }
}

/// Root, then the network namespace: before any other thread exists, because netfilter links
/// and child processes follow the calling thread's netns.
fn enter_node(sel: &Selection) -> Result<tokio::runtime::Runtime, Failure> {
    check_selection(sel)?;
    if !d8_trace::kernel::is_root() {
        return Err(trace::Error::NotRoot.into());
    }
    if let Some(ns) = &sel.netns {
        netns::enter(ns).map_err(|e| Failure::env(error_chain(&e)))?;
    }
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::env(format!("starting the event loop: {e}")))
}

fn format_of(output: Output) -> report::Format {
    match output {
        Output::Text => report::Format::Text,
        Output::Json => report::Format::Json,
        Output::Yaml => report::Format::Yaml,
        Output::Runbook => report::Format::Runbook,
    }
}

fn print_report(report: &report::Report, output: Output) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    match report::render(report, format_of(output), &mut stdout).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::env(format!("writing the report: {e}"))),
    }
}

fn warn_all(warnings: &[String]) {
    for w in warnings {
        eprintln!("d8-trace: warning: {w}");
    }
}

fn explain_command(args: ExplainArgs) -> Result<(), Failure> {
    let runtime = enter_node(&args.selection)?;
    let view = runtime.block_on(node::view(&args.selection))?;
    let (report, warnings) = node::explain_report(&view, &args.svc.service);
    warn_all(&warnings);
    print_report(&report, args.output)
}

fn daemon_command(args: DaemonArgs) -> Result<(), Failure> {
    let metrics_addr: std::net::SocketAddr = args
        .metrics_addr
        .parse()
        .map_err(|e| Failure::usage(format!("--metrics-addr {}: {e} (expected IP:PORT, e.g. 0.0.0.0:9810)", args.metrics_addr)))?;
    let runtime = enter_node(&args.selection)?;
    let setup = trace::kernel_setup()?;
    let opts = d8_trace::cmd::daemon::Options {
        metrics_addr,
        events: args.events.clone(),
        selection: args.selection.clone(),
        ring_buffer_bytes: 4 << 20,
        reply_timeout: Duration::from_secs(3),
        refresh: Duration::from_secs(args.refresh_secs),
        max_flows: args.max_flows as usize,
    };
    runtime.block_on(d8_trace::cmd::daemon::run(opts, setup)).map_err(|e| match e {
        d8_trace::cmd::daemon::Error::Bind { .. } | d8_trace::cmd::daemon::Error::Events { .. } => Failure::usage(error_chain(&e)),
        d8_trace::cmd::daemon::Error::Node(n) => n.into(),
        d8_trace::cmd::daemon::Error::Trace(t) => t.into(),
        other => Failure::env(error_chain(&other)),
    })
}

fn trace_command(args: TraceArgs) -> Result<(), Failure> {
    let Some(svc) = args.svc.clone() else {
        return Err(Failure::usage("--svc NAMESPACE/NAME is required (or a subcommand: explain, daemon, demo, doctor)"));
    };
    let runtime = enter_node(&args.selection)?;
    let view = runtime.block_on(node::view(&args.selection))?;
    warn_all(&view.warnings);
    let setup = trace::kernel_setup()?;
    warn_all(&setup.warnings);
    let plan = trace::plan(&view.model, &svc, view.model.node_ips.clone())?;
    let opts = Options {
        duration: args.duration.map(Duration::from_secs),
        reply_timeout: Duration::from_secs(args.reply_timeout),
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        live: true,
    };
    let drops_before = node::conntrack_drop_counter();
    let started = std::time::Instant::now();
    // Machine output stays one object on stdout; live lines then go to stderr. Either way they
    // are written by a thread of their own: a reader that stops reading (a paused pager) must
    // not stall the event loop, or the kernel's ring buffer overflows.
    let out: Box<dyn Write + Send> =
        if args.output == Output::Text { Box::new(std::io::stdout()) } else { Box::new(std::io::stderr()) };
    let mut live = trace::LiveQueue::spawn(out, trace::live_queue_lines())
        .map_err(|e| Failure::env(format!("starting the live output thread: {e}")))?;
    let outcome = runtime.block_on(trace::run(&plan, setup, &opts, &mut live));
    // Every queued line is written before the report (and before an error's message).
    let dropped = live.finish();
    if dropped > 0 {
        eprintln!("d8-trace: {dropped} live lines dropped: output was not being read");
    }
    let outcome = outcome?;
    warn_all(&outcome.warnings);
    let ctx = Context {
        api_consulted: view.api_consulted,
        conntrack: Some(node::conntrack_stats(drops_before)),
        host_ips: view.host_ips.clone(),
        traced: true,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        lost_events: outcome.lost_events,
    };
    let report = classify::build_report(&plan.service, &outcome.flows, &view.model, &ctx);
    print_report(&report, args.output)
}
