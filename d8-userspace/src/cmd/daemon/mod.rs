//! `d8-trace daemon`: continuous capture on a node (DaemonSet mode).
//!
//! Traces every Service frontend of the node and their backends, classifies flows continuously
//! and exports what it sees: Prometheus metrics and `/healthz` `/readyz` ([`http`]), and JSON
//! Lines events ([`events`]) for each non-healthy flow and each verdict change per Service.
//!
//! The loop, on one thread inside the node's network namespace:
//! - ring buffer readable, and every [`trace::PUMP_EVERY`] in any case (the kernel does not wake
//!   userspace for every record): events into the flow table (bounded; the oldest flows are
//!   evicted and counted). On the TC hook set, conntrack netlink events join each flow's pre- and
//!   post-DNAT views, and programs are attached to interfaces as they appear;
//! - every [`VERDICT_EVERY`]: flows that reached an outcome are classified per Service, counted
//!   once, written as events when not healthy, and forgotten after [`FLOW_WINDOW`]; the verdict
//!   gauge of each Service is set, and a change becomes an event;
//! - every [`REFRESH_EVERY`]: kube-proxy's rules are read again and the traced targets follow
//!   them without detaching anything (the conntrack-netlink join follows them too); the API is asked again too, backing off while it fails
//!   (the verdicts then rest on the rules, and `d8_trace_api_up` says so);
//! - SIGTERM or Ctrl-C: everything detaches, exit 0.
//!
//! Memory is bounded by the flow table (at most [`MAX_FLOWS`] flows of a few hundred bytes) and
//! the model (rules and API objects of the node's Services).

pub mod events;
pub mod http;
pub mod metrics;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use self::{
    events::EventWriter,
    http::State,
    metrics::{DropLabels, FlowLabels, HookLabels, Metrics, ModeLabels, VerdictLabels},
};
use crate::{
    classify::{self, Context},
    flows::{Flow, FlowTable, Outcome},
    kernel::host,
    model::{ProxyMode, ServiceModel, ServiceRef, k8s, view::NodeView},
    trace::{self, Capture, KernelSetup, Ready, Scope, plan::Merged},
};

/// How often flows are classified and counted.
pub const VERDICT_EVERY: Duration = Duration::from_secs(2);
/// How often kube-proxy's rules are read again, by default (`--refresh-secs`).
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// Reported flows are kept this long (so late events still join them), then forgotten.
pub const FLOW_WINDOW: Duration = Duration::from_secs(30);
/// Most flows held at once, by default (`--max-flows`).
pub const MAX_FLOWS: usize = 100_000;
/// Longest wait between two attempts to reach an unreachable API.
pub const API_BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot serve metrics on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the events file {path}")]
    Events {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Trace(#[from] trace::Error),
    #[error(transparent)]
    Loader(#[from] crate::loader::Error),
    #[error("event loop")]
    Io(#[from] std::io::Error),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub metrics_addr: SocketAddr,
    /// `None`: no events; `Some("-")`: stdout; else a file, appended to.
    pub events: Option<String>,
    pub scope: Scope,
    pub ring_buffer_bytes: u32,
    pub reply_timeout: Duration,
    /// How often kube-proxy's rules are read again (default [`REFRESH_EVERY`]).
    pub refresh: Duration,
    /// Most flows held at once (default [`MAX_FLOWS`]).
    pub max_flows: usize,
}

/// The model: rules always; the API when due (`api_due`), else the last API view is reused.
struct ModelSource {
    scope: Scope,
    refresh: Duration,
    api_failures: u32,
    next_api: tokio::time::Instant,
    api_up: bool,
    /// The read in flight asked the API (not backing off).
    asked_api: bool,
}

/// A read of the node's view in flight, on a thread of its own.
type Reading = tokio::task::JoinHandle<Result<NodeView, trace::Error>>;

impl ModelSource {
    /// Starts a read of the node's view (the rules, and the API unless backing off) on a blocking
    /// thread with its own event loop: the dump tools run there with `Command::output`, and take
    /// seconds on a large or slow node, while this loop keeps draining the ring buffer and
    /// `/metrics` keeps answering. The thread is in the node's network namespace (threads start
    /// in their creator's).
    fn start(&mut self) -> Reading {
        let mut scope = self.scope.clone();
        let api_wanted = scope.api != k8s::Source::Disabled;
        if api_wanted && tokio::time::Instant::now() < self.next_api {
            // Backing off: rules alone this round.
            scope.api = k8s::Source::Disabled;
        }
        self.asked_api = scope.api != k8s::Source::Disabled;
        tokio::task::spawn_blocking(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(trace::Error::Io)?;
            runtime.block_on(trace::node_view(&scope))
        })
    }

    async fn read(&mut self) -> Result<(ServiceModel, bool), trace::Error> {
        let reading = self.start();
        self.finish(reading.await)
    }

    /// The model of a finished read, and whether the API is up; backs off after an API failure.
    fn finish(
        &mut self,
        done: Result<Result<NodeView, trace::Error>, tokio::task::JoinError>,
    ) -> Result<(ServiceModel, bool), trace::Error> {
        let now = tokio::time::Instant::now();
        let view = done.map_err(|e| trace::Error::Io(std::io::Error::other(format!("the read stopped: {e}"))))??;
        if self.asked_api {
            self.api_up = view.api_consulted;
            if view.api_consulted {
                self.api_failures = 0;
                self.next_api = now;
            } else {
                self.api_failures += 1;
                let wait = self.refresh * 2u32.saturating_pow(self.api_failures.min(6));
                self.next_api = now + wait.min(API_BACKOFF_MAX);
                for w in &view.warnings {
                    tracing::warn!("{w} (next API attempt in {}s)", wait.min(API_BACKOFF_MAX).as_secs());
                }
            }
        }
        Ok((view.model, self.api_up))
    }
}

fn set_model_metrics(m: &Metrics, model: &ServiceModel, api_up: bool, targets: usize) {
    let kp = &model.kube_proxy;
    m.kube_proxy_mode.clear();
    let mode = match kp.mode {
        ProxyMode::Iptables => "iptables",
        ProxyMode::Nftables => "nftables",
        ProxyMode::Ipvs => "ipvs",
        ProxyMode::Unknown => "unknown",
    };
    m.kube_proxy_mode
        .get_or_create(&ModeLabels { mode: mode.into() })
        .set(1);
    m.kube_proxy_healthy.set(match kp.healthz_ok {
        Some(true) => 1,
        Some(false) => 0,
        None => -1,
    });
    m.kube_proxy_running.set(match kp.running {
        Some(true) => 1,
        Some(false) => 0,
        None => -1,
    });
    m.kube_proxy_sync_age_seconds.set(kp.last_sync_age_secs.unwrap_or(-1.0));
    m.api_up.set(api_up as i64);
    m.services.set(model.services.len() as i64);
    m.targets.set(targets as i64);
    let ct = host::conntrack_stats(None);
    m.conntrack_entries.set(ct.count.map_or(-1, |c| c as i64));
    m.conntrack_max.set(ct.max.map_or(-1, |c| c as i64));
    m.conntrack_drops
        .set(host::conntrack_drop_counter().map_or(-1, |c| c as i64));
}

/// Runs until SIGTERM or Ctrl-C. The caller has entered the node's network namespace and checked
/// root; `setup` holds the kernel's facts.
pub async fn run(opts: Options, setup: KernelSetup) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let state = Arc::new(State {
        metrics: Metrics::new(),
        ready: Default::default(),
    });
    let listener = http::bind(opts.metrics_addr).await.map_err(|source| Error::Bind {
        addr: opts.metrics_addr,
        source,
    })?;
    let server = tokio::spawn(http::serve(listener, state.clone()));
    let mut writer = match &opts.events {
        None => None,
        Some(path) => Some(EventWriter::open(path).map_err(|source| Error::Events {
            path: path.clone(),
            source,
        })?),
    };

    let mut source = ModelSource {
        scope: opts.scope.clone(),
        refresh: opts.refresh,
        api_failures: 0,
        next_api: tokio::time::Instant::now(),
        api_up: false,
        asked_api: false,
    };
    let (mut model, api_up) = source.read().await?;
    let mut merged = Merged::every_service(&model);

    let KernelSetup {
        choice,
        config,
        drop_reasons,
        mount,
        warnings,
        debug_kernel,
    } = setup;
    for w in &warnings {
        tracing::warn!("{w}");
    }
    // The hook set `kernel_setup` chose for `--hooks` and this kernel, and why.
    tracing::info!(
        "{} hook set: {}; pre- and post-DNAT views joined through {}",
        choice.set.name(),
        choice.reason,
        choice.join.describe()
    );
    let mut targets = merged.all.targets();
    let mut node_ips = model.node_ips.clone();
    let mut capture = Capture::open(
        &choice,
        &config,
        debug_kernel,
        mount,
        opts.ring_buffer_bytes,
        &targets,
        node_ips.clone(),
    )?;
    let mut table = FlowTable::new(
        merged.all.frontend_addrs.iter().copied(),
        model.node_ips.clone(),
        drop_reasons,
    )
    .with_max_flows(opts.max_flows)
    .with_reply_timeout_ns(opts.reply_timeout.as_nanos() as u64);

    let m = &state.metrics;
    m.hook_set
        .get_or_create(&HookLabels {
            hooks: choice.set.name().into(),
        })
        .set(1);
    set_model_metrics(m, &model, api_up, targets.len());
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        "daemon ready: {} Services (API: {}), {} targets traced, {} hooks ({} hook set); metrics on http://{}/metrics",
        model.services.len(),
        api_source_note(&opts.scope),
        targets.len(),
        capture.attached().len(),
        choice.set.name(),
        opts.metrics_addr
    );

    let mut counted: HashSet<u64> = HashSet::new();
    let mut verdicts: HashMap<ServiceRef, String> = HashMap::new();
    let mut verdict_tick = tokio::time::interval(VERDICT_EVERY);
    let mut refresh_tick = tokio::time::interval(opts.refresh);
    refresh_tick.reset();
    let mut pump_tick = tokio::time::interval(trace::PUMP_EVERY);
    pump_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut join_losses = (0, 0);
    let mut ignore = |_: &FlowTable, _: u64| {};
    let mut reading: Option<Reading> = None;

    loop {
        tokio::select! {
            ready = capture.ready() => match ready? {
                Ready::Records => capture.pump(&mut table, &mut ignore).await,
                Ready::Links => {
                    for note in capture.follow_links() {
                        tracing::info!("{note}");
                    }
                }
            },
            _ = pump_tick.tick() => capture.pump(&mut table, &mut ignore).await,
            _ = verdict_tick.tick() => {
                capture.pump(&mut table, &mut ignore).await;
                table.settle(crate::kernel::monotonic_ns());
                report_flows(&table, &merged, &model, api_up_now(&source), m, &mut counted, &mut verdicts, writer.as_mut());
                let cutoff = crate::kernel::monotonic_ns().saturating_sub(FLOW_WINDOW.as_nanos() as u64);
                table.retain(|f| !(counted.contains(&f.id) && f.last_ns < cutoff));
                let ids: HashSet<u64> = table.flows().iter().map(|f| f.id).collect();
                counted.retain(|id| ids.contains(id));
                m.flow_table_flows.set(table.len() as i64);
                m.flows_evicted.set(table.evicted() as i64);
                m.lost_events.set(capture.lost_events() as i64);
                if capture.join_losses() != join_losses {
                    join_losses = capture.join_losses();
                    for w in capture.join_warnings() {
                        tracing::warn!("{w}");
                    }
                }
            }
            _ = refresh_tick.tick(), if reading.is_none() => reading = Some(source.start()),
            done = async { reading.as_mut().expect("guarded by is_some").await }, if reading.is_some() => {
                reading = None;
                match source.finish(done) {
                    Ok((new_model, api_up)) => {
                        model = new_model;
                        merged = Merged::every_service(&model);
                        let new_targets = merged.all.targets();
                        if new_targets != targets || model.node_ips != node_ips {
                            capture.set_targets(&new_targets, model.node_ips.clone())?;
                            targets = new_targets;
                            node_ips = model.node_ips.clone();
                        }
                        table.set_frontends(merged.all.frontend_addrs.iter().copied());
                        table.set_node_ips(model.node_ips.clone());
                        set_model_metrics(m, &model, api_up, targets.len());
                    }
                    // kube-proxy restarting or its rules being rewritten: keep the last model.
                    Err(e) => tracing::warn!("rules not re-read, keeping the last model: {}", crate::error_chain(&e)),
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    server.abort();
    drop(capture);
    tracing::info!("daemon stopped; hooks detached");
    Ok(())
}

fn api_up_now(source: &ModelSource) -> bool {
    source.api_up && source.scope.api != k8s::Source::Disabled
}

/// Classifies the flows of each Service; counts flows that reached an outcome once; writes
/// events for non-healthy flows and verdict changes; sets the verdict gauges.
#[allow(clippy::too_many_arguments, reason = "one call site; the loop's state, spelled out")]
fn report_flows(
    table: &FlowTable,
    merged: &Merged,
    model: &ServiceModel,
    api_consulted: bool,
    m: &Metrics,
    counted: &mut HashSet<u64>,
    verdicts: &mut HashMap<ServiceRef, String>,
    mut writer: Option<&mut EventWriter>,
) {
    let mut by_service: HashMap<&ServiceRef, Vec<Flow>> = HashMap::new();
    for flow in table.flows() {
        if let Some(i) = merged.owner(flow) {
            by_service
                .entry(&merged.plans[i].service)
                .or_default()
                .push(flow.clone());
        }
    }
    let host_ips: Vec<IpAddr> = model.node_ips.clone();
    for svc in &model.services {
        let flows = by_service.remove(&svc.service).unwrap_or_default();
        let ctx = Context {
            api_consulted,
            conntrack: Some(host::conntrack_stats(None)),
            host_ips: host_ips.clone(),
            traced: true,
            duration_ms: None,
            lost_events: 0,
        };
        let verdict = classify::classify(&svc.service, &flows, model, &ctx);
        let service = svc.service.to_string();
        for (flow, fv) in flows.iter().zip(&verdict.flows) {
            if flow.outcome == Outcome::Open || !counted.insert(flow.id) {
                continue;
            }
            let class = fv.class.as_str();
            let outcome = serde_json::to_value(flow.outcome)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            m.flows
                .get_or_create(&FlowLabels {
                    service: service.clone(),
                    class: class.into(),
                    outcome: outcome.clone(),
                })
                .inc();
            if let Some(reason) = flow.drop_reason() {
                m.drops
                    .get_or_create(&DropLabels {
                        service: service.clone(),
                        reason: reason.into(),
                    })
                    .inc();
            }
            if class != "healthy"
                && let Some(w) = writer.as_deref_mut()
            {
                w.flow(&service, flow, class);
            }
        }
        let class = verdict.root_cause.class.as_str().to_string();
        let previous = verdicts.insert(svc.service.clone(), class.clone());
        if previous.as_deref() != Some(class.as_str()) {
            if let Some(prev) = &previous {
                m.verdict
                    .get_or_create(&VerdictLabels {
                        service: service.clone(),
                        class: prev.clone(),
                    })
                    .set(0);
            }
            m.verdict
                .get_or_create(&VerdictLabels {
                    service: service.clone(),
                    class: class.clone(),
                })
                .set(1);
            if let Some(w) = writer.as_deref_mut() {
                w.verdict(
                    &service,
                    previous.as_deref(),
                    &verdict.root_cause.class.to_string(),
                    &verdict.root_cause.detail,
                    verdict.severity.as_str(),
                );
            }
        }
    }
}

/// Where the API's view comes from, in words.
fn api_source_note(scope: &Scope) -> &'static str {
    match scope.api {
        k8s::Source::Disabled => "rules only (--no-k8s)",
        k8s::Source::Snapshot(_) => "a snapshot file",
        k8s::Source::Live { .. } => "the live API",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Frontend, FrontendKind, Protocol, Service};

    fn model() -> ServiceModel {
        let mut m = ServiceModel::default();
        for (name, vip, pod) in [("a", "10.96.0.1", "10.244.0.1"), ("b", "10.96.0.2", "10.244.0.2")] {
            let mut s = Service::new(ServiceRef {
                namespace: "ns".into(),
                name: name.into(),
            });
            s.frontends.push(Frontend {
                kind: FrontendKind::ClusterIp,
                ip: vip.parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                port_name: String::new(),
                rule: None,
            });
            s.endpoints
                .push(Endpoint::in_rules(pod.parse().unwrap(), 8080, Protocol::Tcp, ""));
            m.services.push(s);
        }
        m
    }

    #[test]
    fn plans_every_service_and_maps_addresses_back() {
        let merged = Merged::every_service(&model());
        assert_eq!(merged.all.frontend_addrs.len(), 2);
        assert_eq!(merged.all.targets().len(), 4);
        let mut flow = Flow {
            id: 1,
            protocol: Protocol::Tcp,
            client: "10.0.0.9:40000".parse().unwrap(),
            frontend: Some("10.96.0.1:80".parse().unwrap()),
            backend: None,
            snat_client: None,
            no_dnat: false,
            entry_hook: None,
            first_ns: 0,
            last_ns: 0,
            handshake: Default::default(),
            ct_status: 0,
            resets: Vec::new(),
            drops: Vec::new(),
            icmp_errors: Vec::new(),
            socket_states: Vec::new(),
            outcome: Outcome::Open,
        };
        assert_eq!(merged.plans[merged.owner(&flow).unwrap()].service.name, "a");
        flow.frontend = None;
        flow.backend = Some("10.244.0.2:8080".parse().unwrap());
        assert_eq!(merged.plans[merged.owner(&flow).unwrap()].service.name, "b");
    }
}
