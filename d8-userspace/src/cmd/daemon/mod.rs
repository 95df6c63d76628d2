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
    cli::{Selection, ServiceArg},
    flows::{Flow, FlowTable, Outcome},
    model::{Protocol, ProxyMode, ServiceModel, ServiceRef, k8s},
    node,
    trace::{self, Capture, KernelSetup, Ready},
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
    #[error("cannot serve metrics on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot open the events file {path}: {source}")]
    Events {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Node(#[from] node::Error),
    #[error(transparent)]
    Trace(#[from] trace::Error),
    #[error(transparent)]
    Loader(#[from] crate::loader::Error),
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    pub metrics_addr: SocketAddr,
    /// `None`: no events; `Some("-")`: stdout; else a file, appended to.
    pub events: Option<String>,
    pub selection: Selection,
    pub ring_buffer_bytes: u32,
    pub reply_timeout: Duration,
    /// How often kube-proxy's rules are read again (default [`REFRESH_EVERY`]).
    pub refresh: Duration,
    /// Most flows held at once (default [`MAX_FLOWS`]).
    pub max_flows: usize,
}

/// Which Service a traced address belongs to.
#[derive(Debug, Default)]
struct Index {
    frontends: HashMap<(Protocol, SocketAddr), ServiceRef>,
    backends: HashMap<(Protocol, SocketAddr), ServiceRef>,
}

impl Index {
    fn service_of(&self, flow: &Flow) -> Option<&ServiceRef> {
        if let Some(f) = flow.frontend {
            return self.frontends.get(&(flow.protocol, f));
        }
        flow.backend.and_then(|b| self.backends.get(&(flow.protocol, b)))
    }
}

/// Targets of every Service of the model, and the index from addresses back to Services.
fn plan_all(model: &ServiceModel) -> (trace::Plan, Index) {
    let mut all = trace::Plan {
        service: ServiceRef { namespace: "*".into(), name: "*".into() },
        frontends: Vec::new(),
        endpoints: Vec::new(),
        frontend_addrs: Vec::new(),
        node_ips: model.node_ips.clone(),
    };
    let mut index = Index::default();
    for svc in &model.services {
        let arg = ServiceArg { service: svc.service.clone(), port: None };
        let Ok(plan) = trace::plan(model, &arg, model.node_ips.clone()) else { continue };
        for fa in &plan.frontend_addrs {
            index.frontends.entry(*fa).or_insert_with(|| svc.service.clone());
        }
        for e in &plan.endpoints {
            index.backends.entry((e.protocol, SocketAddr::new(e.ip, e.port))).or_insert_with(|| svc.service.clone());
        }
        all.frontends.extend(plan.frontends);
        all.endpoints.extend(plan.endpoints);
        all.frontend_addrs.extend(plan.frontend_addrs);
    }
    all.frontend_addrs.sort();
    all.frontend_addrs.dedup();
    all.endpoints.sort_by_key(|e| (e.protocol, e.ip, e.port));
    all.endpoints.dedup_by(|a, b| (a.protocol, a.ip, a.port) == (b.protocol, b.ip, b.port));
    (all, index)
}

/// The model: rules always; the API when due (`api_due`), else the last API view is reused.
struct ModelSource {
    selection: Selection,
    refresh: Duration,
    api_failures: u32,
    next_api: tokio::time::Instant,
    api_up: bool,
}

impl ModelSource {
    async fn read(&mut self) -> Result<(ServiceModel, bool), node::Error> {
        let now = tokio::time::Instant::now();
        let api_wanted = !self.selection.no_k8s;
        let mut sel = self.selection.clone();
        if api_wanted && now < self.next_api {
            // Backing off: rules alone this round.
            sel.no_k8s = true;
            sel.k8s_snapshot = None;
            sel.kubeconfig = None;
        }
        let view = node::view(&sel).await?;
        if api_wanted && !sel.no_k8s {
            self.api_up = view.api_consulted;
            if view.api_consulted {
                self.api_failures = 0;
                self.next_api = now;
            } else {
                self.api_failures += 1;
                let wait = self.refresh * 2u32.saturating_pow(self.api_failures.min(6));
                self.next_api = now + wait.min(API_BACKOFF_MAX);
                for w in &view.warnings {
                    eprintln!("d8-trace: warning: {w} (next API attempt in {}s)", wait.min(API_BACKOFF_MAX).as_secs());
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
    m.kube_proxy_mode.get_or_create(&ModeLabels { mode: mode.into() }).set(1);
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
    let ct = node::conntrack_stats(None);
    m.conntrack_entries.set(ct.count.map_or(-1, |c| c as i64));
    m.conntrack_max.set(ct.max.map_or(-1, |c| c as i64));
    m.conntrack_drops.set(node::conntrack_drop_counter().map_or(-1, |c| c as i64));
}

/// Runs until SIGTERM or Ctrl-C. The caller has entered the node's network namespace and checked
/// root; `setup` holds the kernel's facts.
pub async fn run(opts: Options, setup: KernelSetup) -> Result<(), Error> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;

    let state = Arc::new(State { metrics: Metrics::new(), ready: Default::default() });
    let listener =
        http::bind(opts.metrics_addr).await.map_err(|source| Error::Bind { addr: opts.metrics_addr, source })?;
    let server = tokio::spawn(http::serve(listener, state.clone()));
    let mut writer = match &opts.events {
        None => None,
        Some(path) => Some(EventWriter::open(path).map_err(|source| Error::Events { path: path.clone(), source })?),
    };

    let mut source = ModelSource {
        selection: opts.selection.clone(),
        refresh: opts.refresh,
        api_failures: 0,
        next_api: tokio::time::Instant::now(),
        api_up: false,
    };
    let (mut model, api_up) = source.read().await?;
    let (mut plan, mut index) = plan_all(&model);

    let KernelSetup { config, drop_reasons, mount, warnings } = setup;
    for w in &warnings {
        eprintln!("d8-trace: warning: {w}");
    }
    // The hook set `kernel_setup` chose for `--hooks` and this kernel, and why.
    let choice = trace::chosen_hooks();
    eprintln!(
        "d8-trace: {} hook set: {}; pre- and post-DNAT views joined through {}",
        choice.set.name(),
        choice.reason,
        choice.join.describe()
    );
    let mut targets = plan.targets();
    let mut node_ips = model.node_ips.clone();
    let mut capture = Capture::open(&choice, &config, mount, opts.ring_buffer_bytes, &targets, node_ips.clone())?;
    let mut table = FlowTable::new(plan.frontend_addrs.iter().copied(), model.node_ips.clone(), drop_reasons)
        .with_max_flows(opts.max_flows)
        .with_reply_timeout_ns(opts.reply_timeout.as_nanos() as u64);

    let m = &state.metrics;
    m.hook_set.get_or_create(&HookLabels { hooks: choice.set.name().into() }).set(1);
    set_model_metrics(m, &model, api_up, targets.len());
    state.ready.store(true, Ordering::Relaxed);
    eprintln!(
        "d8-trace: daemon ready: {} Services (API: {}), {} targets traced, {} hooks ({} hook set); metrics on http://{}/metrics",
        model.services.len(),
        api_source_note(&opts.selection),
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

    loop {
        tokio::select! {
            ready = capture.ready() => match ready? {
                Ready::Records => capture.pump(&mut table, &mut ignore).await,
                Ready::Links => {
                    for note in capture.follow_links() {
                        eprintln!("d8-trace: {note}");
                    }
                }
            },
            _ = pump_tick.tick() => capture.pump(&mut table, &mut ignore).await,
            _ = verdict_tick.tick() => {
                capture.pump(&mut table, &mut ignore).await;
                table.settle(trace::monotonic_ns());
                report_flows(&table, &index, &model, api_up_now(&source), m, &mut counted, &mut verdicts, writer.as_mut());
                let cutoff = trace::monotonic_ns().saturating_sub(FLOW_WINDOW.as_nanos() as u64);
                table.retain(|f| !(counted.contains(&f.id) && f.last_ns < cutoff));
                let ids: HashSet<u64> = table.flows().iter().map(|f| f.id).collect();
                counted.retain(|id| ids.contains(id));
                m.flow_table_flows.set(table.len() as i64);
                m.flows_evicted.set(table.evicted() as i64);
                m.lost_events.set(capture.lost_events() as i64);
                if capture.join_losses() != join_losses {
                    join_losses = capture.join_losses();
                    for w in capture.join_warnings() {
                        eprintln!("d8-trace: warning: {w}");
                    }
                }
            }
            _ = refresh_tick.tick() => {
                match source.read().await {
                    Ok((new_model, api_up)) => {
                        model = new_model;
                        (plan, index) = plan_all(&model);
                        let new_targets = plan.targets();
                        if new_targets != targets || model.node_ips != node_ips {
                            capture.set_targets(&new_targets, model.node_ips.clone())?;
                            targets = new_targets;
                            node_ips = model.node_ips.clone();
                        }
                        table.set_frontends(plan.frontend_addrs.iter().copied());
                        table.set_node_ips(model.node_ips.clone());
                        set_model_metrics(m, &model, api_up, targets.len());
                    }
                    // kube-proxy restarting or its rules being rewritten: keep the last model.
                    Err(e) => eprintln!("d8-trace: warning: rules not re-read, keeping the last model: {e}"),
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    server.abort();
    drop(capture);
    eprintln!("d8-trace: daemon stopped; hooks detached");
    Ok(())
}

fn api_up_now(source: &ModelSource) -> bool {
    source.api_up && !source.selection.no_k8s
}

/// Classifies the flows of each Service; counts flows that reached an outcome once; writes
/// events for non-healthy flows and verdict changes; sets the verdict gauges.
#[allow(clippy::too_many_arguments, reason = "one call site; the loop's state, spelled out")]
fn report_flows(
    table: &FlowTable,
    index: &Index,
    model: &ServiceModel,
    api_consulted: bool,
    m: &Metrics,
    counted: &mut HashSet<u64>,
    verdicts: &mut HashMap<ServiceRef, String>,
    mut writer: Option<&mut EventWriter>,
) {
    let mut by_service: HashMap<&ServiceRef, Vec<Flow>> = HashMap::new();
    for flow in table.flows() {
        if let Some(svc) = index.service_of(flow) {
            by_service.entry(svc).or_default().push(flow.clone());
        }
    }
    let host_ips: Vec<IpAddr> = model.node_ips.clone();
    for svc in &model.services {
        let flows = by_service.remove(&svc.service).unwrap_or_default();
        let ctx = Context {
            api_consulted,
            conntrack: Some(node::conntrack_stats(None)),
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
            let outcome = serde_json::to_value(flow.outcome).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            m.flows.get_or_create(&FlowLabels { service: service.clone(), class: class.into(), outcome: outcome.clone() }).inc();
            if let Some(reason) = flow.drop_reason() {
                m.drops.get_or_create(&DropLabels { service: service.clone(), reason: reason.into() }).inc();
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
                m.verdict.get_or_create(&VerdictLabels { service: service.clone(), class: prev.clone() }).set(0);
            }
            m.verdict.get_or_create(&VerdictLabels { service: service.clone(), class: class.clone() }).set(1);
            if let Some(w) = writer.as_deref_mut() {
                w.verdict(&service, previous.as_deref(), &verdict.root_cause.class.to_string(), &verdict.root_cause.detail, verdict.severity.as_str());
            }
        }
    }
}

/// Where the API's view comes from, in words.
fn api_source_note(sel: &Selection) -> &'static str {
    match node::api_source(sel) {
        k8s::Source::Disabled => "rules only (--no-k8s)",
        k8s::Source::Snapshot(_) => "a snapshot file",
        k8s::Source::Live { .. } => "the live API",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Endpoint, Frontend, FrontendKind, Service};

    fn model() -> ServiceModel {
        let mut m = ServiceModel::default();
        for (name, vip, pod) in [("a", "10.96.0.1", "10.244.0.1"), ("b", "10.96.0.2", "10.244.0.2")] {
            let mut s = Service::new(ServiceRef { namespace: "ns".into(), name: name.into() });
            s.frontends.push(Frontend {
                kind: FrontendKind::ClusterIp,
                ip: vip.parse().unwrap(),
                port: 80,
                protocol: Protocol::Tcp,
                port_name: String::new(),
                rule: None,
            });
            s.endpoints.push(Endpoint::in_rules(pod.parse().unwrap(), 8080, Protocol::Tcp, ""));
            m.services.push(s);
        }
        m
    }

    #[test]
    fn plans_every_service_and_maps_addresses_back() {
        let (plan, index) = plan_all(&model());
        assert_eq!(plan.frontend_addrs.len(), 2);
        assert_eq!(plan.targets().len(), 4);
        let a = index.frontends.get(&(Protocol::Tcp, "10.96.0.1:80".parse().unwrap())).unwrap();
        assert_eq!(a.name, "a");
        let b = index.backends.get(&(Protocol::Tcp, "10.244.0.2:8080".parse().unwrap())).unwrap();
        assert_eq!(b.name, "b");
    }
}
