//! `d8-trace mcp`: the tracer as tools for an on-call agent, over the Model Context Protocol on
//! stdio (the official Rust SDK, `rmcp`).
//!
//! Tools (inputs in [`args`], JSON schemas derived with schemars):
//! - `explain_service` {service, netns?, k8s_snapshot?}: the contract's report (ARCHITECTURE.md, "The contract")
//!   from kube-proxy's rules and the API, nothing attached;
//! - `trace_service` {service, seconds? (default 10, at most 60), netns?, k8s_snapshot?}: traces that
//!   long and returns the report with its flows;
//! - `doctor` {netns?}: what this kernel allows and which hook set a trace would use.
//!
//! Each returns the report (or doctor's findings) as structured content plus a short text summary;
//! failures are tool errors (`isError: true`) carrying the CLI's own sentence.
//!
//! Safety for unattended use: durations are bounded; one kernel job (trace or doctor) at a time, a
//! second is refused with a sentence saying what runs; each call runs on its own thread in the
//! requested namespace ([`jobs`]) and is cancelled, with everything detached, when the client
//! cancels it, closes stdin (goes away) or the server gets SIGINT/SIGTERM; no tool writes rules,
//! routes or sysctls (the only lasting-looking act, mounting tracefs when it is not mounted, is
//! undone when the job ends, as in the CLI). Nothing but protocol messages goes to stdout; logs go
//! to stderr.

pub mod args;
pub mod jobs;
pub mod summary;

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context as TaskContext, Poll},
    time::{Duration, Instant},
};

use rmcp::{
    Peer, RoleServer, ServerHandler, ServiceExt,
    handler::server::{router::tool::ToolRouter, wrapper::Parameters},
    model::{
        CallToolResult, ContentBlock, Implementation, ProgressNotificationParam, ProgressToken, RequestMetaObject,
        ServerCapabilities, ServerConfig,
    },
    tool, tool_handler, tool_router,
};
use serde_json::json;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_util::sync::CancellationToken;

use self::{
    args::{DoctorInput, ExplainInput, TraceInput},
    jobs::{Failure, Jobs},
};
use crate::{
    cmd::doctor,
    kernel,
    report::Report,
    trace::{self, Scope, Target},
};

/// The MCP server: the selection flags it was started with (defaults for every call) and its jobs.
#[derive(Clone)]
pub struct D8Mcp {
    defaults: Arc<Scope>,
    jobs: Arc<Jobs>,
    tool_router: ToolRouter<Self>,
}

const INSTRUCTIONS: &str = "d8-trace follows flows to a Kubernetes Service through kube-proxy's rules on this node and \
says why they fail (verdict classes: healthy, no_endpoints, stale_endpoint, etp_local_no_local_endpoints, probe_rst, \
conntrack_full, kube_proxy_not_running, kube_proxy_not_synced, kube_proxy_rules_missing, kube_proxy_version_skew, \
backend_refused, backend_timeout, dropped, service_port_undefined, cluster_ip_unallocated, source_range_denied, stale_conntrack_entry). Start with explain_service (rules and API, instant, attaches nothing); use trace_service \
while the failing traffic happens (it only sees flows during its seconds). doctor says what this kernel allows. \
Nothing here changes the node.";

impl D8Mcp {
    pub fn new(defaults: Scope, jobs: Arc<Jobs>) -> Self {
        Self {
            defaults: Arc::new(defaults),
            jobs,
            tool_router: Self::tool_router(),
        }
    }
}

fn failure_result(f: &Failure) -> CallToolResult {
    let mut r = CallToolResult::structured_error(json!({
        "error": f.message,
        "kind": f.kind.as_str(),
        "exit_code": f.exit_code(),
    }));
    r.content = vec![ContentBlock::text(format!("d8-trace: {}", f.message))];
    r
}

fn report_result(report: &Report, text: String) -> CallToolResult {
    report_result_with(report, text, None)
}

/// [`report_result`] with `trace_service`'s `pcap_file` (the path of the pcapng file written)
/// beside the report's fields.
fn report_result_with(report: &Report, text: String, pcap_file: Option<&std::path::Path>) -> CallToolResult {
    match serde_json::to_value(report) {
        Ok(mut value) => {
            if let (Some(path), Some(obj)) = (pcap_file, value.as_object_mut()) {
                obj.insert("pcap_file".into(), path.display().to_string().into());
            }
            let mut r = CallToolResult::structured(value);
            r.content = vec![ContentBlock::text(text)];
            r
        }
        Err(e) => failure_result(&Failure::env(format!("serializing the report: {e}"))),
    }
}

fn log_failure(tool: &str, target: &str, f: &Failure) {
    tracing::info!("mcp: {tool} {target}: {} ({})", f.message, f.kind.as_str());
}

#[tool_router]
impl D8Mcp {
    #[tool(
        name = "explain_service",
        description = "Explain a Kubernetes Service from kube-proxy's rules on this node and the API (or a snapshot), \
without tracing: returns d8-trace's report (service, kube_proxy, frontends, endpoints with in_rules/in_api/ready/local, \
root_cause {class, detail}, evidence, severity, mitigation; flows empty) and a short summary. Read-only.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn explain_service(
        &self,
        Parameters(input): Parameters<ExplainInput>,
        call: CancellationToken,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let started = Instant::now();
        let prepared = args::service(&input.service).and_then(|svc| {
            Ok((
                svc,
                args::selection(&self.defaults, input.netns.as_deref(), input.k8s_snapshot.as_deref())?,
            ))
        });
        let (svc, sel) = match prepared {
            Ok(p) => p,
            Err(f) => return Ok(failure_result(&f)),
        };
        let name = format!("explain_service {svc}");
        let netns = sel.netns.clone();
        let result = self.jobs.run(&name, netns, None, call, move || explain(svc, sel)).await;
        Ok(match result {
            Ok((report, warnings)) => {
                tracing::info!(
                    "mcp: {name}: {} in {}ms",
                    verdict_word(&report),
                    started.elapsed().as_millis()
                );
                report_result(&report, summary::report(&report, None, &warnings))
            }
            Err(f) => {
                log_failure("explain_service", &input.service, &f);
                failure_result(&f)
            }
        })
    }

    #[tool(
        name = "trace_service",
        description = "Trace every flow to a Kubernetes Service on this node for `seconds` (default 10, at most 60) with \
eBPF hooks, then return d8-trace's report with the flows (client, frontend, backend chosen by DNAT, outcome, drop \
reason, class), the root cause, evidence, severity and mitigation, plus a short summary. Only traffic during the trace is \
seen: reproduce the failure meanwhile. One trace at a time (a second call is refused while one runs); hooks are \
detached when the call ends, is cancelled, or the client disconnects. Does not change the node. With `pcap: true` it also writes the failing flows' packets (pre- and post-DNAT, drops, answers; the verdict in the comments) to a pcapng file on the node and returns its path as `pcap_file`.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = false,
            open_world_hint = false
        )
    )]
    async fn trace_service(
        &self,
        Parameters(input): Parameters<TraceInput>,
        call: CancellationToken,
        meta: RequestMetaObject,
        peer: Peer<RoleServer>,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let prepared = args::service(&input.service).and_then(|svc| {
            let duration = args::seconds(input.seconds)?;
            let sel = args::selection(&self.defaults, input.netns.as_deref(), input.k8s_snapshot.as_deref())?;
            let pcap = match input.pcap {
                Some(true) => Some(pcap_request(&svc)?),
                _ => None,
            };
            Ok((svc, duration, sel, pcap))
        });
        let (svc, duration, sel, pcap) = match prepared {
            Ok(p) => p,
            Err(f) => return Ok(failure_result(&f)),
        };
        let name = format!("trace_service {svc}");
        // Setup (rules, API) comes on top of the trace itself.
        let slot = match self
            .jobs
            .kernel_slot(&name, Some(duration + Duration::from_secs(10)))
            .await
        {
            Ok(s) => s,
            Err(f) => {
                log_failure("trace_service", &input.service, &f);
                return Ok(failure_result(&f));
            }
        };
        tracing::info!(
            "mcp: {name}: starting a {}s trace{}",
            duration.as_secs(),
            sel.netns
                .as_deref()
                .map(|n| format!(" in network namespace {n}"))
                .unwrap_or_default()
        );
        let netns = sel.netns.clone();
        // Clients that asked for progress get one notification a second (it keeps their request
        // timeouts from firing during a long trace).
        let progress = meta
            .get_progress_token()
            .map(|token| tokio::spawn(report_progress(peer, token, name.clone(), duration)));
        let result = self
            .jobs
            .run(&name, netns, Some(slot), call, move || {
                trace_job(svc, sel, duration, pcap)
            })
            .await;
        if let Some(p) = progress {
            p.abort();
        }
        Ok(match result {
            Ok((report, warnings, pcap_file)) => {
                tracing::info!(
                    "mcp: {name}: {}, {} flows; hooks detached",
                    verdict_word(&report),
                    report.flows.len()
                );
                let mut text = summary::report(&report, Some(duration.as_secs()), &warnings);
                if let Some(p) = &pcap_file {
                    text.push_str(&format!(
                        "\npcap file (failing flows' packets, pcapng): {}",
                        p.display()
                    ));
                }
                report_result_with(&report, text, pcap_file.as_deref())
            }
            Err(f) => {
                log_failure("trace_service", &input.service, &f);
                failure_result(&f)
            }
        })
    }

    #[tool(
        name = "doctor",
        description = "What this kernel allows for d8-trace (root, BTF, struct offsets, drop reasons, tracefs, tracepoints, \
netfilter BPF links, TC, kprobes, conntrack) and which hook set a trace would use, and why. Attaches nothing.",
        annotations(
            read_only_hint = true,
            destructive_hint = false,
            idempotent_hint = true,
            open_world_hint = false
        )
    )]
    async fn doctor(
        &self,
        Parameters(input): Parameters<DoctorInput>,
        call: CancellationToken,
    ) -> Result<CallToolResult, rmcp::ErrorData> {
        let sel = match args::selection(&self.defaults, input.netns.as_deref(), None) {
            Ok(s) => s,
            Err(f) => return Ok(failure_result(&f)),
        };
        // doctor may mount tracefs for its check: not while a trace relies on it.
        let slot = match self.jobs.kernel_slot("doctor", Some(Duration::from_secs(10))).await {
            Ok(s) => s,
            Err(f) => return Ok(failure_result(&f)),
        };
        let hooks = sel.hooks;
        let result = self
            .jobs
            .run("doctor", sel.netns.clone(), Some(slot), call, move || async move {
                Ok(doctor::findings(hooks))
            })
            .await;
        Ok(match result {
            Ok(findings) => match serde_json::to_value(&findings) {
                Ok(value) => {
                    let mut r = CallToolResult::structured(value);
                    r.content = vec![ContentBlock::text(summary::doctor(&findings))];
                    r
                }
                Err(e) => failure_result(&Failure::env(format!("serializing the findings: {e}"))),
            },
            Err(f) => {
                log_failure("doctor", "", &f);
                failure_result(&f)
            }
        })
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for D8Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("d8-trace", env!("CARGO_PKG_VERSION")))
            .with_instructions(INSTRUCTIONS)
    }
}

/// One progress notification a second: elapsed seconds of the trace's `total`.
async fn report_progress(peer: Peer<RoleServer>, token: ProgressToken, name: String, total: Duration) {
    let started = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    loop {
        tick.tick().await;
        let elapsed = started.elapsed().as_secs();
        let mut note = ProgressNotificationParam::new(token.clone(), elapsed as f64);
        note = if elapsed <= total.as_secs() {
            note.with_total(total.as_secs() as f64)
                .with_message(format!("{name}: {elapsed}s of {}s", total.as_secs()))
        } else {
            note.with_message(format!("{name}: classifying the flows"))
        };
        if peer.notify_progress(note).await.is_err() {
            return;
        }
    }
}

fn verdict_word(report: &Report) -> String {
    report
        .root_cause
        .as_ref()
        .map(|rc| rc.class.to_string())
        .unwrap_or_else(|| "no verdict".into())
}

/// `explain`, as the CLI runs it, on the job's thread (already in the node's namespace).
async fn explain(svc: Target, scope: Scope) -> Result<(Report, Vec<String>), Failure> {
    let done = trace::explain(&scope, &svc).await?;
    Ok((done.report, done.warnings))
}

/// A trace, as the CLI runs it (without live lines), on the job's thread. Dropping this future
/// (cancellation) drops the `Tracer` inside `trace::run`, which detaches everything.
async fn trace_job(
    svc: Target,
    scope: Scope,
    duration: Duration,
    pcap: Option<trace::PcapRequest>,
) -> Result<(Report, Vec<String>, Option<std::path::PathBuf>), Failure> {
    let pcap_file = pcap.as_ref().map(|p| p.path.clone());
    let opts = trace::Options {
        duration: Some(duration),
        reply_timeout: Duration::from_secs(3),
        ring_buffer_bytes: 1 << 20,
        live: false,
        family: None,
        pcap,
    };
    let done = trace::trace(&scope, &svc, &opts, &mut std::io::sink(), &mut |_| {}).await?;
    Ok((done.report, done.warnings, pcap_file))
}

/// `trace_service`'s `pcap: true`: a new file under the temporary directory's `d8-trace/`
/// (created, mode 0700), named for the Service and the time.
fn pcap_request(svc: &Target) -> Result<trace::PcapRequest, Failure> {
    use std::os::unix::fs::DirBuilderExt as _;
    let dir = std::env::temp_dir().join("d8-trace");
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&dir)
        .map_err(|e| Failure::env(format!("pcap: creating {}: {e}", dir.display())))?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    // A name safe as a file name: `ns_name`, or the address with `:` and `/` as `_`.
    let what = match svc {
        Target::Service(s) => format!("{}_{}", s.service.namespace, s.service.name),
        Target::Address(d) => d.to_string().replace([':', '/', '[', ']'], "_"),
    };
    let name = format!("{what}-{stamp}.pcapng");
    Ok(trace::PcapRequest {
        path: dir.join(name),
        all: false,
        snaplen: crate::report::pcap::DEFAULT_SNAPLEN,
        force: false,
        command: format!("d8-trace mcp: trace_service {svc}"),
    })
}

/// stdin that cancels `gone` at end of file (the client closed it or exited) or on a read error,
/// so running jobs stop at once instead of after the SDK's drain of in-flight answers.
struct WatchEof<R> {
    inner: R,
    gone: CancellationToken,
}

impl<R: AsyncRead + Unpin> AsyncRead for WatchEof<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let had_room = buf.remaining() > 0;
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        match &poll {
            Poll::Ready(Ok(())) if had_room && buf.filled().len() == before => {
                if !self.gone.is_cancelled() {
                    tracing::info!("mcp: the client closed stdin: stopping (cancelling running jobs)");
                }
                self.gone.cancel();
            }
            Poll::Ready(Err(_)) => self.gone.cancel(),
            _ => {}
        }
        poll
    }
}

/// `d8-trace mcp`: serves until the client closes stdin or SIGINT/SIGTERM, then cancels what
/// runs and waits until it has detached.
pub fn serve(defaults: &Scope) -> Result<(), String> {
    // Checked now so a bad --netns is reported at start, not on every call.
    if let Some(ns) = &defaults.netns
        && !kernel::netns::resolve(ns).exists()
    {
        let e = kernel::netns::Error::NotFound {
            name: ns.clone(),
            path: kernel::netns::resolve(ns),
        };
        return Err(crate::error_chain(&e));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the event loop: {e}"))?;
    let jobs = Arc::new(Jobs::new());
    let result = runtime.block_on(serve_stdio(defaults.clone(), jobs.clone()));
    let left = jobs.shutdown(Duration::from_secs(20));
    if left > 0 {
        tracing::info!("mcp: {left} jobs did not stop within 20s; exiting (the kernel detaches what they held)");
    }
    // tokio's stdin reads on a blocking thread that only returns with input or end of file: after
    // a signal the client may still hold stdin open, so do not wait for that thread.
    runtime.shutdown_timeout(Duration::from_millis(500));
    tracing::info!("mcp: stopped");
    result
}

async fn serve_stdio(defaults: Scope, jobs: Arc<Jobs>) -> Result<(), String> {
    use tokio::signal::unix::{SignalKind, signal};
    // A trace registers SIGINT/SIGTERM handlers (tokio's are process-wide and stay): the server
    // handles both from the start, so they always stop it cleanly.
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| format!("installing signal handlers: {e}"))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| format!("installing signal handlers: {e}"))?;
    let server = D8Mcp::new(defaults, jobs.clone());
    let stdin = WatchEof {
        inner: tokio::io::stdin(),
        gone: jobs.root().clone(),
    };
    tracing::info!("mcp: serving MCP on stdio (tools: explain_service, trace_service, doctor)");
    let service = tokio::select! {
        s = server.serve((stdin, tokio::io::stdout())) => s.map_err(|e| format!("MCP session setup failed: {e}"))?,
        _ = sigint.recv() => return Ok(()),
        _ = sigterm.recv() => return Ok(()),
    };
    let stop = service.cancellation_token();
    let root = jobs.root().clone();
    let signals = tokio::spawn(async move {
        tokio::select! {
            _ = sigint.recv() => tracing::info!("mcp: SIGINT: stopping"),
            _ = sigterm.recv() => tracing::info!("mcp: SIGTERM: stopping"),
            // The client went away: the session ends on its own (stdin EOF).
            _ = root.cancelled() => return,
        }
        root.cancel();
        stop.cancel();
    });
    let quit = service.waiting().await;
    signals.abort();
    quit.map(|_| ()).map_err(|e| format!("MCP session: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> D8Mcp {
        D8Mcp::new(Scope::default(), Arc::new(Jobs::new()))
    }

    #[test]
    fn three_tools_with_input_schemas() {
        let tools = server().tool_router.list_all();
        let mut names: Vec<&str> = tools.iter().map(|t| t.name.as_ref()).collect();
        names.sort();
        assert_eq!(names, ["doctor", "explain_service", "trace_service"]);
        let trace = tools.iter().find(|t| t.name == "trace_service").unwrap();
        let schema = serde_json::to_value(&*trace.input_schema).unwrap();
        assert_eq!(schema["required"], json!(["service"]), "{schema}");
        let seconds = &schema["properties"]["seconds"];
        assert_eq!(
            (seconds["minimum"].as_u64(), seconds["maximum"].as_u64()),
            (Some(1), Some(60)),
            "{schema}"
        );
        assert_eq!(schema["additionalProperties"], json!(false), "{schema}");
        for t in &tools {
            assert!(
                t.description.as_deref().is_some_and(|d| d.len() > 40),
                "{} is described",
                t.name
            );
            let s = serde_json::to_value(&*t.input_schema).unwrap();
            assert_eq!(s["type"], "object", "{}: {s}", t.name);
        }
    }

    #[test]
    fn failures_are_tool_errors_with_the_sentence() {
        let r = failure_result(&Failure::usage("service `web`: expected NAMESPACE/NAME[:PORT]"));
        assert_eq!(r.is_error, Some(true));
        assert_eq!(r.structured_content.as_ref().unwrap()["kind"], "usage");
        assert_eq!(r.structured_content.as_ref().unwrap()["exit_code"], 2);
        let text = &r.content[0].as_text().unwrap().text;
        assert_eq!(text, "d8-trace: service `web`: expected NAMESPACE/NAME[:PORT]");
    }

    #[test]
    fn stdin_eof_cancels_the_jobs() {
        let gone = CancellationToken::new();
        let mut r = WatchEof {
            inner: &b"{}\n"[..],
            gone: gone.clone(),
        };
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 2];
                assert_eq!(r.read(&mut buf).await.unwrap(), 2);
                assert!(!gone.is_cancelled());
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).await.unwrap();
            });
        assert!(gone.is_cancelled(), "end of file cancels");
    }
}
