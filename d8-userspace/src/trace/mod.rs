//! The one pipeline every entry point runs: the node's view (rules and API) → the plan (which
//! Service, which port, which addresses) → the kernel's setup (which hook set, what the programs
//! must know) → the capture (attached programs, events joined into flows, live lines) → the
//! report (the classifier's verdict in the contract object).
//!
//! The CLI, the MCP server, the demo and the daemon differ in configuration, not in code: [`explain`]
//! and [`trace`] are the whole job for one Service; the daemon and the demo, which trace many
//! Services at once, call the same stages ([`plan`], [`kernel_setup`], [`Capture`],
//! [`crate::report::build`]) in the same order. Everything attached is detached before a stage
//! returns, on every path.
//!
//! - [`plan`]: the Service and port the user named, checked against the model.
//! - [`hooks`]: which hook set this kernel allows, and the kernel facts the programs need.
//! - [`capture`]: the attached kernel side ([`Capture`]), drained in bounded slices.
//! - [`ctjoin`]: the TC hook set's join of pre- and post-DNAT views from conntrack events.
//! - [`live`]: live lines through a writer thread ([`LiveQueue`]).

use std::{io::Write, time::Duration};

use crate::{
    classify,
    flows::{Flow, FlowTable},
    kernel::{self, host, monotonic_ns, tracefs},
    loader,
    model::{
        IpFamily, ServiceRef, Warning, WarningKind, k8s, rules,
        view::{self, NodeView},
    },
    report::{self, Report},
};

mod capture;
pub mod ctjoin;
mod existing;
pub mod hooks;
mod live;
pub mod packets;
pub mod plan;

pub use capture::{Capture, JOIN_BUDGET, PUMP_BUDGET, PUMP_EVERY, Ready};
pub use hooks::{HookChoice, HookRequest, Join, KernelSetup, choose_hooks, kernel_setup};
use live::LivePrinter;
pub use live::{LIVE_QUEUE_LINES, LiveQueue, live_queue_lines};
pub use plan::{Destination, Plan, ServiceSelector, Target, plan};
pub use rules::RulesFrom;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `reason` completes the sentence: why the Service is not known, and what to do.
    #[error("Service {service} {reason}")]
    UnknownService { service: ServiceRef, reason: String },
    #[error("Service {service} has no port `{port}`; its ports: {known}")]
    UnknownPort {
        service: ServiceRef,
        port: String,
        known: String,
    },
    /// `--dest` names no Service traffic: `reason` says why.
    #[error("{dest}: {reason}")]
    NotServiceAddress { dest: String, reason: String },
    /// `--family` names a family the Service (or port) does not have.
    #[error("{service} has no {family} frontend (its families: {has}); trace with --family any or the other family")]
    NoSuchFamily {
        service: String,
        family: IpFamily,
        has: String,
    },
    #[error("tracing needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON); run d8-trace as root")]
    NotRoot,
    #[error(
        "--hooks netfilter: this kernel ({release}) has no netfilter BPF links (needs 6.4+ with CONFIG_NETFILTER_BPF_LINK); use --hooks tc or auto"
    )]
    NoNetfilterLinks { release: String },
    #[error("subscribing to conntrack netlink events (the TC hook set's join)")]
    CtNetlink(#[source] std::io::Error),
    /// kube-proxy's rules could not be read (a tool missing, or output that is not rules).
    #[error(transparent)]
    Rules(#[from] rules::ReadError),
    /// The API's view named by the user (a snapshot file) cannot be used.
    #[error(transparent)]
    Api(#[from] k8s::Error),
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Tracefs(#[from] tracefs::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error("event loop")]
    Io(#[from] std::io::Error),
    /// `--pcap`: the file cannot be created (it exists, the path is not writable) or the snap
    /// length is out of range; found before anything is attached.
    #[error(transparent)]
    Pcap(#[from] report::pcap::Error),
}

impl From<view::Error> for Error {
    fn from(e: view::Error) -> Self {
        match e {
            view::Error::Rules(e) => Self::Rules(e),
            view::Error::Api(e) => Self::Api(e),
        }
    }
}

impl Error {
    /// Exit code of the contract: 2 for input that names nothing (an unknown Service or port, a
    /// snapshot file that cannot be used), 3 for the environment.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::UnknownService { .. }
            | Self::UnknownPort { .. }
            | Self::NotServiceAddress { .. }
            | Self::NoSuchFamily { .. }
            | Self::Api(_)
            | Self::Pcap(_) => 2,
            _ => 3,
        }
    }
}

/// Where and how to look, resolved once from the command line (or an MCP call's arguments).
#[derive(Debug, Clone)]
pub struct Scope {
    /// The node's network namespace (`--netns`); the caller enters it before anything runs.
    pub netns: Option<String>,
    /// Where the API's view comes from.
    pub api: k8s::Source,
    /// This node's name (`--node`), when the user gave it.
    pub node: Option<String>,
    pub hooks: HookRequest,
    /// The kernel programs' debug log (`--debug-kernel`), forwarded to the log.
    pub debug_kernel: bool,
    /// Where nftables-mode rules are read from (`--rules-from`).
    pub rules_from: RulesFrom,
}

impl Default for Scope {
    fn default() -> Self {
        Self {
            netns: None,
            api: k8s::Source::Live { kubeconfig: None },
            node: None,
            hooks: HookRequest::Auto,
            debug_kernel: false,
            rules_from: RulesFrom::Auto,
        }
    }
}

/// The node's service model as [`Scope`] says to read it (rules here, the API as chosen).
pub async fn node_view(scope: &Scope) -> Result<NodeView, Error> {
    Ok(view::view(&scope.api, scope.node.as_deref(), scope.rules_from, None).await?)
}

/// The view for a job about one Service or address (`explain`, a trace), and its plan. The rules
/// are read for a named Service alone where a reader can (kube-proxy's nftables table from the
/// kernel); when the Service is not there, the whole view is read again, so the error names the
/// Service's neighbours as for any read. An address needs the whole view to find its Service.
async fn service_view(scope: &Scope, target: &Target) -> Result<(NodeView, plan::Plan), Error> {
    let svc = match target {
        Target::Service(svc) => svc,
        Target::Address(dest) => {
            let view = node_view(scope).await?;
            let p = match plan::resolve(&view.model, dest, view.model.node_ips.clone())? {
                plan::Resolved::Service(svc) => plan(&view.model, &svc, view.model.node_ips.clone())?,
                plan::Resolved::Unallocated(p) => p,
            };
            return Ok((view, p));
        }
    };
    let view = view::view(&scope.api, scope.node.as_deref(), scope.rules_from, Some(&svc.service)).await?;
    match plan(&view.model, svc, view.model.node_ips.clone()) {
        Ok(p) => Ok((view, p)),
        Err(Error::UnknownService { .. }) => {
            let view = node_view(scope).await?;
            let p = plan(&view.model, svc, view.model.node_ips.clone())?;
            Ok((view, p))
        }
        Err(e) => Err(e),
    }
}

/// A finished job: the report and the warnings worth a line (the view's, the kernel's, the
/// capture's), in the order they arose.
#[derive(Debug)]
pub struct Finished {
    pub report: Report,
    pub warnings: Vec<String>,
}

/// `explain`: the Service checked against the node's view, and the verdict from rules and API
/// alone (no programs attached). An unknown Service or port is an error, as for a trace.
pub async fn explain(scope: &Scope, svc: &Target) -> Result<Finished, Error> {
    if !kernel::is_root() {
        return Err(Error::NotRoot);
    }
    let (view, plan) = service_view(scope, svc).await?;
    let ctx = classify::Context {
        api_consulted: view.api_consulted,
        conntrack: Some(host::conntrack_stats(None)),
        host_ips: view.host_ips.clone(),
        traced: false,
        duration_ms: None,
        lost_events: 0,
    };
    let mut report = report::build_asked(&plan.service, plan.asked, &[], &view.model, &ctx);
    report
        .warnings
        .extend(typed(WarningKind::Api, "the API", &view.warnings));
    Ok(Finished {
        report,
        warnings: view.warnings,
    })
}

/// Warnings met as sentences, typed for the report: `kind` and `source` say what they concern.
pub fn typed<'a>(kind: WarningKind, source: &'a str, sentences: &'a [String]) -> impl Iterator<Item = Warning> + 'a {
    sentences.iter().map(move |s| Warning::new(kind, source, s.as_str()))
}

/// A trace of one Service: view → plan → kernel setup → capture → report. `warn` hears each
/// warning as it arises (the CLI prints them before the trace starts); they are also returned.
/// `live` gets one line per flow change (see [`run`]).
pub async fn trace(
    scope: &Scope,
    svc: &Target,
    opts: &Options,
    live: &mut dyn Write,
    warn: &mut dyn FnMut(&str),
) -> Result<Finished, Error> {
    if !kernel::is_root() {
        return Err(Error::NotRoot);
    }
    let mut warnings = Vec::new();
    let mut say = |w: String, all: &mut Vec<String>| {
        warn(&w);
        all.push(w);
    };
    let (view, plan) = service_view(scope, svc).await?;
    let plan = match opts.family {
        Some(family) => plan.narrowed(family)?,
        None => plan,
    };
    for w in &view.warnings {
        say(w.clone(), &mut warnings);
    }
    // Before anything is attached: a path that cannot be written is the user's to fix first.
    let mut pcap = match &opts.pcap {
        Some(p) => Some(p.create(view.model.node.as_deref())?),
        None => None,
    };
    // A trace that fails leaves no capture file behind: it would hold nothing but its header.
    let discard = |pcap: &Option<report::pcap::PcapWriter>| {
        if let Some(w) = pcap {
            let _ = std::fs::remove_file(w.path());
        }
    };
    let setup = match kernel_setup(scope) {
        Ok(s) => s,
        Err(e) => {
            discard(&pcap);
            return Err(e);
        }
    };
    for w in &setup.warnings {
        say(w.clone(), &mut warnings);
    }
    let kernel_warnings = setup.warnings.clone();
    let drops_before = host::conntrack_drop_counter();
    let started = std::time::Instant::now();
    let outcome = match run(&plan, setup, opts, live).await {
        Ok(o) => o,
        Err(e) => {
            discard(&pcap);
            return Err(e);
        }
    };
    for w in &outcome.warnings {
        say(w.clone(), &mut warnings);
    }
    let ctx = classify::Context {
        api_consulted: view.api_consulted,
        conntrack: Some(host::conntrack_stats(drops_before)),
        host_ips: view.host_ips.clone(),
        traced: true,
        duration_ms: Some(started.elapsed().as_millis() as u64),
        lost_events: outcome.lost_events,
    };
    let mut report = report::build_asked(&plan.service, plan.asked, &outcome.flows, &view.model, &ctx);
    report
        .warnings
        .extend(typed(WarningKind::Api, "the API", &view.warnings));
    report
        .warnings
        .extend(typed(WarningKind::Kernel, "kernel", &kernel_warnings));
    report
        .warnings
        .extend(typed(WarningKind::Capture, "capture", &outcome.warnings));
    if let (Some(w), Some(p)) = (pcap.as_mut(), &opts.pcap) {
        let pcap_warnings = write_pcap(w, p.all, &report, &outcome);
        for s in &pcap_warnings {
            say(s.clone(), &mut warnings);
        }
        report
            .warnings
            .extend(typed(WarningKind::Capture, "pcap", &pcap_warnings));
    }
    Ok(Finished { report, warnings })
}

/// Writes the flows `report` judged failing (all with `all`) into the pcapng file; returns the
/// warnings about what the file lacks (a failed write, packets that did not fit).
pub fn write_pcap(w: &mut report::pcap::PcapWriter, all: bool, report: &Report, outcome: &Outcome) -> Vec<String> {
    let store = &outcome.packets;
    report::pcap::write_report(
        w,
        report,
        &outcome.flows,
        all,
        &mut |f| store.packets_of(f, &outcome.flows),
        &store.ifnames,
    );
    let (flows, packets) = w.written();
    tracing::info!(
        "pcap: {} flow(s), {} packet(s) written to {}",
        flows,
        packets,
        w.path().display()
    );
    let mut out: Vec<String> = w.warning().into_iter().collect();
    out.extend(store.warnings());
    if outcome.lost_packets > 0 {
        out.push(format!(
            "pcap: {} packet copies were lost in the kernel (its packet ring buffer was full)",
            outcome.lost_packets
        ));
    }
    out
}

/// `--pcap FILE`: what to write and how (README, "Evidence: --pcap").
#[derive(Debug, Clone)]
pub struct PcapRequest {
    pub path: std::path::PathBuf,
    /// `--pcap-all`: every traced flow, not only the failing ones.
    pub all: bool,
    /// `--snaplen`: bytes kept of each packet from its IP header.
    pub snaplen: u32,
    /// `--force`: overwrite an existing file.
    pub force: bool,
    /// The command line, for the file's section header.
    pub command: String,
}

impl PcapRequest {
    /// Creates the file and writes its section header (node, kernel, version, command).
    pub fn create(&self, node: Option<&str>) -> Result<report::pcap::PcapWriter, report::pcap::Error> {
        let header = report::pcap::Header {
            node: node.map(str::to_owned).unwrap_or_else(host_name),
            kernel: format!("Linux {}", kernel::release()),
            command: self.command.clone(),
        };
        report::pcap::PcapWriter::create(&self.path, self.force, self.snaplen, &header)
    }
}

/// The host's name (`uname -n`), when the node's name is not known.
fn host_name() -> String {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    // SAFETY: uname NUL-terminates nodename.
    unsafe { std::ffi::CStr::from_ptr(u.nodename.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// How to trace.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Option<Duration>,
    pub reply_timeout: Duration,
    pub ring_buffer_bytes: u32,
    /// Print one line per flow change to the live writer.
    pub live: bool,
    /// `--family`: trace this address family of the Service only (`None`: all it has).
    pub family: Option<IpFamily>,
    /// `--pcap`: copy the traced flows' packets for the pcapng file.
    pub pcap: Option<PcapRequest>,
}

/// What a trace produced.
#[derive(Debug)]
pub struct Outcome {
    pub flows: Vec<Flow>,
    pub lost_events: u64,
    pub evicted_flows: u64,
    pub decode_errors: u64,
    pub attached: Vec<String>,
    pub warnings: Vec<String>,
    /// `--pcap`: the packets copied, by flow.
    pub packets: packets::PacketStore,
    /// Packet copies the kernel could not hand over.
    pub lost_packets: u64,
}

/// Traces `plan` until the deadline, Ctrl-C or SIGTERM. Must run inside a tokio runtime with IO
/// and time enabled, on the thread that is in the node's network namespace.
///
/// `live` gets one line per flow change; the loop waits for it, so hand in a [`LiveQueue`] when
/// it may block (a terminal or pipe the user reads).
pub async fn run(plan: &Plan, setup: KernelSetup, opts: &Options, live: &mut dyn Write) -> Result<Outcome, Error> {
    let KernelSetup {
        choice,
        config,
        drop_reasons,
        mount,
        mut warnings,
        debug_kernel,
    } = setup;
    let mut config = config;
    if let Some(p) = &opts.pcap {
        config.pcap_snaplen = p.snaplen;
    }
    // Signal handlers first: a Ctrl-C or SIGTERM that arrives once hooks are attached must end the
    // trace normally (verdict printed, everything detached), never kill the process outright.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut capture = Capture::open(
        &choice,
        &config,
        debug_kernel,
        mount,
        opts.ring_buffer_bytes,
        &plan.targets(),
        plan.node_ips.clone(),
    )?;
    tracing::info!(
        "attached {} hooks ({} hook set); tracing {} ({} frontends, {} backends){}",
        capture.attached().len(),
        choice.set.name(),
        plan.name(),
        plan.frontend_addrs.len(),
        plan.endpoints.len(),
        match opts.duration {
            Some(d) => format!(" for {}s", d.as_secs()),
            None => "; Ctrl-C to stop".into(),
        }
    );
    // Fault injection for the end-to-end tests: fail once everything is attached, to prove that
    // an error path detaches as well as a clean exit does.
    // Its value is how many milliseconds to stay attached first.
    if let Some(ms) = std::env::var_os("D8_TRACE_FAIL_AFTER_ATTACH") {
        let ms = ms.to_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Err(Error::Io(std::io::Error::other(
            "failing after attach (D8_TRACE_FAIL_AFTER_ATTACH is set)",
        )));
    }
    let mut table = FlowTable::new(plan.frontend_addrs.iter().copied(), plan.node_ips.clone(), drop_reasons)
        .with_reply_timeout_ns(opts.reply_timeout.as_nanos() as u64);
    let mut printer = LivePrinter::new(opts.live);

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(PUMP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    enum Wake {
        Ready(Ready),
        Tick,
        Stop,
    }
    loop {
        let wake = tokio::select! {
            r = capture.ready() => Wake::Ready(r?),
            _ = tick.tick() => Wake::Tick,
            _ = sigint.recv() => Wake::Stop,
            _ = sigterm.recv() => Wake::Stop,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => Wake::Stop,
        };
        match wake {
            Wake::Ready(Ready::Records) => capture.pump(&mut table, &mut |_, id| printer.changed(id)).await,
            Wake::Ready(Ready::Links) => {
                for note in capture.follow_links() {
                    tracing::info!("{note}");
                }
            }
            Wake::Tick => {
                capture.pump(&mut table, &mut |_, id| printer.changed(id)).await;
                for id in table.settle(monotonic_ns()) {
                    printer.changed(id);
                }
            }
            Wake::Stop => break,
        }
        printer.flush(&table, live);
    }
    // Drain what is left, then settle outcomes at the end of the trace.
    capture.pump_all(&mut table, &mut |_, id| printer.changed(id));
    warnings.extend(capture.join_warnings());
    for id in table.settle(monotonic_ns()) {
        printer.changed(id);
    }
    printer.flush(&table, live);
    let lost_events = capture.lost_events();
    let attached = capture.attached().to_vec();
    let decode_errors = capture.decode_errors();
    let lost_packets = capture.lost_packets();
    let packets = capture.take_packets();
    drop(capture);
    if decode_errors > 0 {
        warnings.push(format!("{decode_errors} kernel events could not be decoded"));
    }
    if table.evicted() > 0 {
        warnings.push(format!(
            "{} flows were evicted from the flow table (it holds at most 100000)",
            table.evicted()
        ));
    }
    let evicted_flows = table.evicted();
    Ok(Outcome {
        flows: table.into_flows(),
        lost_events,
        evicted_flows,
        decode_errors,
        attached,
        warnings,
        packets,
        lost_packets,
    })
}
