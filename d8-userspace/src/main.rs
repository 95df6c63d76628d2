//! `d8-trace`: parse, resolve, run, and map failures to the contract's exit codes
//! (0 verdict printed, 2 usage error, 3 environment error).

use std::{io::Write, process::ExitCode, time::Duration};

use clap::Parser;
use d8_trace::{
    classify::{self, Context},
    cli::{Cli, Command, Hooks, Output, Selection, TraceArgs},
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

fn error_chain(e: &dyn std::error::Error) -> String {
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
        Some(Command::Doctor(args)) => d8_trace::doctor::run(args.json, &args.selection).map_err(Failure::env),
        Some(Command::Explain(_)) => Err(Failure::usage("`explain` comes with the service model; use `d8-trace --svc` for now")),
        Some(Command::Daemon(_)) => Err(Failure::usage("`daemon` is not available in this build yet")),
        Some(Command::Demo(_)) => Err(Failure::usage("`demo` is not available in this build yet")),
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
    if sel.kubeconfig.is_some() || sel.k8s_snapshot.is_some() {
        return Err(Failure::usage(
            "--kubeconfig and --k8s-snapshot come with the Kubernetes service model, not in this build; use --no-k8s",
        ));
    }
    if sel.hooks == Hooks::Tc {
        return Err(trace::Error::TcUnavailable.into());
    }
    Ok(())
}

fn trace_command(args: TraceArgs) -> Result<(), Failure> {
    let Some(svc) = args.svc.clone() else {
        return Err(Failure::usage("--svc NAMESPACE/NAME is required (or a subcommand: explain, daemon, demo, doctor)"));
    };
    check_selection(&args.selection)?;
    if !d8_trace::kernel::is_root() {
        return Err(trace::Error::NotRoot.into());
    }
    // Before any other thread exists: links and child processes follow the thread's netns.
    if let Some(ns) = &args.selection.netns {
        netns::enter(ns).map_err(|e| Failure::env(error_chain(&e)))?;
    }
    let setup = trace::kernel_setup()?;
    for w in &setup.warnings {
        eprintln!("d8-trace: warning: {w}");
    }
    let mut model = node::read_iptables().map_err(|e| Failure::env(error_chain(&e)))?;
    let host_ips = node::host_addresses();
    model.node_ips = host_ips.clone();
    model.node = args.selection.node.clone().or_else(|| std::env::var("NODE_NAME").ok());
    let plan = trace::plan(&model, &svc, host_ips.clone())?;
    let opts = Options {
        duration: args.duration.map(Duration::from_secs),
        reply_timeout: Duration::from_secs(args.reply_timeout),
        ring_buffer_bytes: args.ring_buffer_kib * 1024,
        live: true,
    };
    eprintln!(
        "d8-trace: tracing {} ({} frontends, {} backends){}",
        plan.service,
        plan.frontend_addrs.len(),
        plan.endpoints.len(),
        match opts.duration {
            Some(d) => format!(" for {}s", d.as_secs()),
            None => "; Ctrl-C to stop".into(),
        }
    );
    let drops_before = node::conntrack_drop_counter();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::env(format!("starting the event loop: {e}")))?;
    let started = std::time::Instant::now();
    let outcome = runtime.block_on(async {
        if args.output == Output::Text {
            trace::run(&plan, setup, &opts, &mut std::io::stdout()).await
        } else {
            // Machine output stays one object on stdout; live lines go to stderr.
            trace::run(&plan, setup, &opts, &mut std::io::stderr()).await
        }
    })?;
    for w in &outcome.warnings {
        eprintln!("d8-trace: warning: {w}");
    }
    let ctx = Context {
        api_consulted: false,
        conntrack: Some(node::conntrack_stats(drops_before)),
        host_ips,
        traced: true,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        lost_events: outcome.lost_events,
    };
    let report = classify::build_report(&plan.service, &outcome.flows, &model, &ctx);
    let format = match args.output {
        Output::Text => report::Format::Text,
        Output::Json => report::Format::Json,
        Output::Yaml => report::Format::Yaml,
        Output::Runbook => report::Format::Runbook,
    };
    let mut stdout = std::io::stdout().lock();
    match report::render(&report, format, &mut stdout).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        // A closed pipe (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::env(format!("writing the report: {e}"))),
    }
}
