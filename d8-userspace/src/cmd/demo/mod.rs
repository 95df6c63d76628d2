//! `d8-trace demo`: a Kubernetes node built in network namespaces, an incident played on it, and
//! the incident traced live, with no cluster and no flags.
//!
//! # What it does
//!
//! 1. Builds the lab of [`script::spec`] (iptables mode: five Services, seven pods, a kubelet, an
//!    external client) and writes the lab's API snapshot to a temporary file: the API source of the
//!    trace, as `--k8s-snapshot` would be.
//! 2. Enters the lab's node namespace on the main thread (netfilter links attach in the calling
//!    thread's namespace, and `iptables-save` runs there), reads the node's model (rules + API),
//!    and builds one trace plan covering every demo Service's frontends and backends.
//! 3. Runs [`trace::run`] with the normal live output (one line per flow change; on stderr with
//!    `-o json`), while a second thread plays [`script::play`]: five phases of a few seconds,
//!    narrated on stderr. The script's first request is repeated until the tracer printed a flow,
//!    so nothing is played untraced. When the script is done it ends the trace the way Ctrl-C
//!    would: a SIGTERM to this process, which [`trace::run`] takes as its signal to stop.
//! 4. Re-reads the model (rules as they are now, the API snapshot written again), groups the
//!    flows by Service (frontend, or backend for direct flows such as probes), and calls
//!    [`crate::report::build`] once per Service.
//! 5. Prints each Service's verdict and path picture ([`picture`]) and a summary table, or with
//!    `-o json` one JSON array of the contract reports on stdout.
//!
//! # Which model classifies the flows
//!
//! The phases change the rules and the API (a pod deleted, an endpoint unready), so the model at
//! the end differs from the one at the start. Flows are classified against the model **at the
//! end**, and the script is written so that this gives every flow the verdict the model of its
//! own phase would:
//! - no fault is ever undone: a Service's rules and API facts at the end are the ones its failing
//!   flows met when they failed (api-2 is gone from the API and still DNAT'd to; orders is
//!   REJECTed; shop DROPs);
//! - a flow that got an answer is `healthy` whatever the model says (the classifier decides on the
//!   reply before anything else), so the healthy flows of phase 1 stay healthy although the
//!   backends they reached are gone or unready at the end;
//! - a model per phase would need flows split by time and one report per phase per Service, and
//!   would show rules that no longer exist as the node's current state: the contract report
//!   describes the node as it is when the trace ends, like `d8-trace --svc` does.
//!
//! The model at the start is still used for one thing: naming the hops of flows whose chains were
//!   removed during the run (orders' KUBE-SEP chain after it went unready) in the path picture.
//!
//! # Cleanup
//!
//! Everything is owned by a value whose `Drop` undoes it, declared so that it drops in the right
//! order on every path (success, error, panic): the tracer's links (inside [`trace::run`]), the
//! script thread (joined by the scope, after it was told to stop), the main thread's return to its
//! own network namespace, the snapshot file, then the lab (servers, prober, namespaces). Signals:
//! SIGINT/SIGTERM handlers are installed before anything is built, so Ctrl-C never kills the
//! process mid-way: during the build it ends the demo once the lab is up (and removed again);
//! during the trace it stops the trace and the script, prints the verdicts of what was traced, and
//! cleans up; after the trace it is ignored until the demo is done.

pub mod picture;
pub mod script;

use std::fs::File;
use std::io::{self, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::classify::Context;
use crate::flows::Flow;
use crate::kernel::{self, host};
use crate::lab::{self, Lab};
use crate::model::{ProxyMode, ServiceRef};
use crate::model::{WarningKind, k8s};
use crate::report::{self, Format, Report};
use crate::trace::{self, Options, Scope, ServiceSelector, plan::Merged};

use picture::Hops;
use script::{Control, Ending, say};

/// Flows without an answer for this long have timed out (shorter than `--svc`'s 3 s default:
/// the demo's failing requests give up after 0.8 s and the last phase outlasts this).
const REPLY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why the demo failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Trace(#[from] trace::Error),
    #[error("the lab")]
    Lab(#[from] lab::Error),
    #[error("the incident script")]
    Script(#[from] script::Error),
    #[error("{0}")]
    Io(String),
}

impl Error {
    /// Exit code of the contract: 2 for usage errors, 3 for the environment.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Trace(e) => e.exit_code() as u8,
            _ => 3,
        }
    }
}

/// Puts the calling thread back into the network namespace it was in when created.
struct NetnsReturn(File);

impl NetnsReturn {
    /// Remembers the current namespace, then enters the lab's `ns`.
    fn enter(ns: &str) -> Result<Self, Error> {
        let here = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::Io(format!("opening this thread's network namespace: {e}")))?;
        kernel::netns::enter(ns).map_err(|e| Error::Io(crate::error_chain(&e)))?;
        Ok(Self(here))
    }
}

impl Drop for NetnsReturn {
    fn drop(&mut self) {
        // SAFETY: setns on an open network namespace fd; affects this thread only.
        if unsafe { libc::setns(self.0.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            tracing::warn!(
                "demo: returning to the original network namespace: {}",
                io::Error::last_os_error()
            );
        }
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The live writer of the trace: hands every line to a [`trace::LiveQueue`] (a reader that stops
/// reading never stalls the event loop), and tells the script when the first one came (the
/// tracer is attached and sees the lab's traffic).
struct LiveTap {
    out: trace::LiveQueue,
    first: Option<mpsc::Sender<()>>,
}

impl Write for LiveTap {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(tx) = self.first.take() {
            let _ = tx.send(());
        }
        self.out.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The demo takes no selection flags but `--hooks`: it builds its own node and API.
fn check_args(format: Format, s: &Scope) -> Result<(), Error> {
    if s.netns.is_some() || s.api != (k8s::Source::Live { kubeconfig: None }) || s.node.is_some() {
        return Err(Error::Usage(
            "demo builds its own node and API snapshot: --netns, --kubeconfig, --k8s-snapshot, --no-k8s and --node do not apply (only -o and --hooks)".into(),
        ));
    }
    if !matches!(format, Format::Text | Format::Json) {
        return Err(Error::Usage("demo prints text or JSON (-o text|json)".into()));
    }
    Ok(())
}

/// True when SIGINT or SIGTERM arrived since the last look.
fn interrupted(runtime: &tokio::runtime::Runtime, sigint: &mut Signal, sigterm: &mut Signal) -> bool {
    runtime.block_on(async {
        tokio::select! {
            _ = sigint.recv() => true,
            _ = sigterm.recv() => true,
            // Long enough for the signal driver to read what is pending.
            _ = tokio::time::sleep(Duration::from_millis(20)) => false,
        }
    })
}

/// Runs the demo. Needs root and a kernel the tracer supports.
pub fn run(format: Format, scope: &Scope) -> Result<(), Error> {
    let started = Instant::now();
    check_args(format, scope)?;
    if !kernel::is_root() {
        return Err(trace::Error::NotRoot.into());
    }
    let json = format == Format::Json;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Io(format!("starting the event loop: {e}")))?;
    // Handlers first: from here on Ctrl-C and SIGTERM are noted, never fatal.
    let (mut sigint, mut sigterm) = {
        let _in_runtime = runtime.enter();
        let int = signal(SignalKind::interrupt()).map_err(|e| Error::Io(format!("SIGINT handler: {e}")))?;
        let term = signal(SignalKind::terminate()).map_err(|e| Error::Io(format!("SIGTERM handler: {e}")))?;
        (int, term)
    };
    // The kernel first: an unsupported one fails before anything is built.
    let setup = trace::kernel_setup(scope)?;
    for w in &setup.warnings {
        tracing::warn!("{w}");
    }
    let kernel_warnings = setup.warnings.clone();
    if let Ok(removed) = lab::cleanup_stale()
        && !removed.is_empty()
    {
        say(&format!(
            "removed {} namespaces of an earlier run that did not finish",
            removed.len()
        ));
    }

    say("building a node: 5 Services (one dual-stack), 7 pods, kube-proxy's iptables rules");
    let spec = script::spec();
    let mut lab = Lab::up(spec.clone(), ProxyMode::Iptables)?;
    let lab_ready = started.elapsed();
    say(&format!(
        "node {} is up ({:.1}s): {}",
        spec.node_name,
        lab_ready.as_secs_f64(),
        lab.node_ns()
    ));
    if interrupted(&runtime, &mut sigint, &mut sigterm) {
        say("interrupted; removing the lab");
        return Ok(());
    }
    let snapshot = TempFile(std::env::temp_dir().join(format!("d8-trace-demo-{}.json", std::process::id())));
    lab.write_snapshot(&snapshot.0)?;

    let in_node = NetnsReturn::enter(lab.node_ns())?;
    let lab_scope = Scope {
        netns: None,
        api: k8s::Source::Snapshot(snapshot.0.clone()),
        node: Some(spec.node_name.clone()),
        hooks: scope.hooks,
        debug_kernel: scope.debug_kernel,
        rules_from: scope.rules_from,
    };
    let start_view = runtime.block_on(trace::node_view(&lab_scope))?;
    for w in &start_view.warnings {
        tracing::warn!("{w}");
    }
    let services = script::services();
    let plans = services
        .iter()
        .map(|s| {
            let arg = ServiceSelector {
                service: s.clone(),
                port: None,
            };
            trace::plan(&start_view.model, &arg, start_view.model.node_ips.clone())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    let merged = Merged::new(
        ServiceRef {
            namespace: services[0].namespace.clone(),
            name: format!("{{{}}}", names.join(",")),
        },
        plans,
        start_view.model.node_ips.clone(),
    );
    let opts = Options {
        // Until the script (or Ctrl-C) ends it.
        duration: None,
        reply_timeout: REPLY_TIMEOUT,
        ring_buffer_bytes: 1024 * 1024,
        live: true,
        family: None,
        pcap: None,
    };

    let drops_before = host::conntrack_drop_counter();
    let trace_started = Instant::now();
    let ctl = Control::new();
    let (first_tx, first_rx) = mpsc::channel();
    let (traced, played) = std::thread::scope(|scope| {
        let lab_ref = &mut lab;
        let ctl_ref = &ctl;
        let script = scope.spawn(move || {
            let played = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                script::play(lab_ref, ctl_ref, first_rx)
            }));
            if matches!(played, Ok(Ok(Ending::Done))) {
                say("the incident is over; stopping the trace");
            }
            // End the trace as Ctrl-C would: trace::run stops on SIGTERM; its handler (and ours,
            // installed first) make the signal harmless to the process. Repeated until the main
            // thread says the trace ended, in case the script ended (by an error) before
            // trace::run was listening.
            while !ctl_ref.stop.load(Ordering::SeqCst) {
                // SAFETY: kill(2) on our own pid.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
                ctl_ref.wait_stop(Duration::from_secs(1));
            }
            played
        });
        let out: Box<dyn Write + Send> = if json {
            Box::new(io::stderr())
        } else {
            Box::new(io::stdout())
        };
        let traced = match trace::LiveQueue::spawn(out, trace::live_queue_lines()) {
            Ok(queue) => {
                let mut live = LiveTap {
                    out: queue,
                    first: Some(first_tx),
                };
                let traced = runtime.block_on(trace::run(&merged.all, setup, &opts, &mut live));
                // Every queued line is written before the verdicts (and before an error's message).
                let dropped = live.out.finish();
                if dropped > 0 {
                    tracing::warn!("{dropped} live lines dropped: output was not being read");
                }
                traced
            }
            Err(e) => Err(trace::Error::Io(io::Error::other(format!(
                "starting the live output thread: {e}"
            )))),
        };
        // The trace ended: by the script's signal, Ctrl-C or an error. Stop the script.
        ctl.stop.store(true, Ordering::SeqCst);
        let played = script.join().and_then(|caught| caught);
        (traced, played)
    });
    let traced_for = trace_started.elapsed();
    let outcome = traced?;
    for w in &outcome.warnings {
        tracing::warn!("{w}");
    }
    match played {
        Ok(Ok(Ending::Done)) => {}
        Ok(Ok(Ending::Stopped)) => say("interrupted: the verdicts below cover what was traced so far"),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => return Err(Error::Io("the incident script panicked".into())),
    }

    // The model as the trace ends: rules re-read, the API snapshot written again.
    lab.write_snapshot(&snapshot.0)?;
    let end_view = runtime.block_on(trace::node_view(&lab_scope))?;
    let ctx = Context {
        api_consulted: end_view.api_consulted,
        conntrack: Some(host::conntrack_stats(drops_before)),
        host_ips: end_view.host_ips.clone(),
        traced: true,
        duration_ms: Some(traced_for.as_millis() as u64),
        lost_events: outcome.lost_events,
    };
    let mut per_service: Vec<Vec<Flow>> = vec![Vec::new(); merged.plans.len()];
    let mut unowned = 0;
    for f in &outcome.flows {
        match merged.owner(f) {
            Some(i) => per_service[i].push(f.clone()),
            None => unowned += 1,
        }
    }
    if unowned > 0 {
        tracing::warn!("{unowned} traced flows belong to no demo Service");
    }
    let reports: Vec<Report> = services
        .iter()
        .zip(&per_service)
        .map(|(svc, flows)| {
            let mut r = report::build(svc, flows, &end_view.model, &ctx);
            r.warnings
                .extend(trace::typed(WarningKind::Api, "the API", &end_view.warnings));
            r.warnings
                .extend(trace::typed(WarningKind::Kernel, "kernel", &kernel_warnings));
            r.warnings
                .extend(trace::typed(WarningKind::Capture, "capture", &outcome.warnings));
            r
        })
        .collect();

    // Buffered: a pretty-printed report is a line per field, a write(2) each on line-buffered stdout.
    let mut stdout = io::BufWriter::with_capacity(64 * 1024, io::stdout().lock());
    let written = if json {
        serde_json::to_writer_pretty(&mut stdout, &reports)
            .map_err(io::Error::other)
            .and_then(|()| writeln!(stdout))
    } else {
        let mut labels = std::collections::BTreeMap::new();
        labels.insert(IpAddr::V4(spec.external_client_ip), "external".to_owned());
        labels.insert(IpAddr::V4(spec.client_pod_ip), "client pod".to_owned());
        write_text(
            &mut stdout,
            &reports,
            &services,
            &[&end_view.model, &start_view.model],
            &labels,
            &outcome,
        )
    };
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(Error::Io(format!("writing the verdicts: {e}"))),
    }
    drop(stdout);

    drop(in_node);
    drop(snapshot);
    drop(lab);
    say(&format!(
        "done in {:.1}s (lab {:.1}s, trace {:.1}s); the lab is removed",
        started.elapsed().as_secs_f64(),
        lab_ready.as_secs_f64(),
        traced_for.as_secs_f64()
    ));
    Ok(())
}

/// The text summary: every Service's verdict and path picture, then the table.
fn write_text(
    out: &mut dyn Write,
    reports: &[Report],
    services: &[ServiceRef],
    models: &[&crate::model::ServiceModel],
    clients: &std::collections::BTreeMap<IpAddr, String>,
    outcome: &trace::Outcome,
) -> io::Result<()> {
    let flows: usize = reports.iter().map(|r| r.flows.len()).sum();
    writeln!(out)?;
    writeln!(
        out,
        "Verdicts: {flows} flows traced, {} kernel events lost",
        outcome.lost_events
    )?;
    for (report, svc) in reports.iter().zip(services) {
        writeln!(out)?;
        let mut hops = Hops::from_models(svc, models);
        for (ip, label) in clients {
            hops.clients.insert(*ip, label.clone());
        }
        for line in picture::render(report, &hops) {
            writeln!(out, "{line}")?;
        }
    }
    writeln!(out)?;
    for line in picture::summary_table(reports) {
        writeln!(out, "{line}")?;
    }
    Ok(())
}
