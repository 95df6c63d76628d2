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
//!   a series of a Service that is gone is removed;
//! - at the verdict tick after a watch event changed the API's view: the Services whose own
//!   objects changed (a Service, its EndpointSlices) are folded into the model again, one at a
//!   time, from the rules-only reading the model was built from ([`source::ModelSource::refold`]);
//!   their verdicts are recomputed, and the plans only when their traced addresses moved. What
//!   one Service's fold cannot decide (a Service created or deleted, this node's Pods or Node, a
//!   relist, the API down) waits for a whole read, at most once per [`API_FOLD_GAP`];
//! - every [`REFRESH_EVERY`], and for such a whole fold: the model is
//!   read again on a blocking thread ([`source`]: the rules only when their nf_tables generation
//!   moved, the API from the watches' stores) and the traced targets follow it without detaching
//!   anything (the conntrack-netlink join follows them too). A read that fails or overruns keeps
//!   the last model; while the API is down its last view stays in use and `d8_trace_api_up` says
//!   so;
//! - SIGTERM or Ctrl-C: everything detaches, exit 0.
//!
//! Memory is bounded by the flow table (at most [`MAX_FLOWS`] flows of a few hundred bytes) and
//! the model (rules and API objects of the node's Services).

pub mod events;
pub mod http;
pub mod metrics;
pub mod pcap;
pub mod source;

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use self::{
    events::EventWriter,
    http::State,
    metrics::{
        DropLabels, FlowLabels, HookLabels, HowLabels, Metrics, ModeLabels, ResultLabels, VerbLabels, VerdictLabels,
    },
    source::{ApiState, ModelSource, Pending, ReadKind, Refold, Update},
};
use crate::{
    classify::{self, Context},
    flows::{Flow, FlowTable, Outcome},
    kernel::host,
    model::{ProxyMode, ServiceModel, ServiceRef, k8s},
    trace::{self, Capture, KernelSetup, Ready, Scope, plan::Merged},
};

/// How often flows are classified and counted.
pub const VERDICT_EVERY: Duration = Duration::from_secs(2);
/// How often kube-proxy's rules are read again, by default (`--refresh-secs`).
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);
/// An API change that one Service's fold cannot take in (a Service created or deleted, this
/// node's Pods or Node, a relist) starts a whole read at the next verdict tick when no read
/// folded API changes in during this long, else once this long has passed: a steady stream of
/// them costs one model build per gap instead of one per tick, each a copy of the rules' reading
/// with the API folded into every Service (~18 % of a core at 10,000 Services at a build per
/// tick). EndpointSlice and Service changes are folded per Service at each tick instead.
pub const API_FOLD_GAP: Duration = Duration::from_secs(5);
/// Reported flows are kept this long (so late events still join them), then forgotten.
pub const FLOW_WINDOW: Duration = Duration::from_secs(30);
/// Most flows held at once, by default (`--max-flows`).
pub const MAX_FLOWS: usize = 100_000;

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
    /// `--pcap-dir` cannot be written; found before anything is attached.
    #[error(transparent)]
    Pcap(#[from] pcap::Error),
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
    /// `--pcap-dir`: the failing flows' packets as a rotating directory of pcapng files.
    pub pcap: Option<pcap::PcapDir>,
}

fn count_read(m: &Metrics, kind: ReadKind, source: &ModelSource) {
    let result = match kind {
        ReadKind::Read => "read",
        ReadKind::Unchanged => "unchanged",
    };
    m.rules_reads
        .get_or_create(&ResultLabels { result: result.into() })
        .inc();
    set_rules_age(m, source);
}

fn count_failed_read(m: &Metrics, result: &str) {
    m.rules_reads
        .get_or_create(&ResultLabels { result: result.into() })
        .inc();
}

fn set_rules_age(m: &Metrics, source: &ModelSource) {
    m.rules_age_seconds
        .set(source.rules_current_at.map_or(-1.0, |t| t.elapsed().as_secs_f64()));
}

/// The API's gauges and counters from the watches' health.
fn set_api_metrics(m: &Metrics, source: &ModelSource) {
    m.api_up.set(source.api_up() as i64);
    let Some(view) = source.view() else { return };
    let h = view.health();
    m.api_view_age_seconds.set(h.stale_for.map_or(0.0, |d| d.as_secs_f64()));
    for (verb, n) in [("list", h.lists), ("watch", h.watches)] {
        m.api_requests
            .get_or_create(&VerbLabels { verb: verb.into() })
            .inner()
            .store(n, Ordering::Relaxed);
    }
    m.api_errors.inner().store(h.errors, Ordering::Relaxed);
}

fn set_model_metrics(m: &Metrics, model: &ServiceModel, source: &ModelSource, targets: usize) {
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
    m.kube_proxy_unreadable.set(kp.problems.len() as i64);
    set_api_metrics(m, source);
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

    let state = Arc::new(State::default());
    let listener = http::bind(opts.metrics_addr).await.map_err(|source| Error::Bind {
        addr: opts.metrics_addr,
        source,
    })?;
    let server = http::Server::start(listener, state.clone(), http::Limits::default())?;
    let mut writer = match &opts.events {
        None => None,
        Some(path) => Some(EventWriter::open(path).map_err(|source| Error::Events {
            path: path.clone(),
            source,
        })?),
    };

    let mut source = ModelSource::new(opts.scope.clone()).await;
    source.first_sync().await;
    // The first read failing (kube-proxy starting, a tool busy) is retried, not a crash loop;
    // `/healthz` answers meanwhile, `/readyz` does not.
    let mut retry = Duration::from_secs(1);
    let mut model = loop {
        match source.read().await {
            Ok((model, kind)) => {
                count_read(&state.metrics, kind, &source);
                break model;
            }
            Err(e) => {
                count_failed_read(&state.metrics, "failed");
                tracing::warn!(
                    "cannot read the node's model, retrying in {} s: {}",
                    retry.as_secs(),
                    crate::error_chain(&e)
                );
                tokio::select! {
                    _ = tokio::time::sleep(retry) => {}
                    _ = sigint.recv() => return Ok(()),
                    _ = sigterm.recv() => return Ok(()),
                }
                retry = (retry * 2).min(Duration::from_secs(30));
            }
        }
    };
    warn_kube_proxy_problems(&ServiceModel::default(), &model);
    let mut merged = Merged::every_service(&model);

    let KernelSetup {
        choice,
        mut config,
        drop_reasons,
        mount,
        warnings,
        debug_kernel,
    } = setup;
    // Before anything is attached: a directory that cannot be written is the user's to fix.
    let mut pcap = match &opts.pcap {
        Some(p) => {
            config.pcap_snaplen = p.snaplen;
            let node = model.node.clone().unwrap_or_else(|| "unknown".into());
            Some(pcap::Rotation::open(p.clone(), node)?)
        }
        None => None,
    };
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
    let mut targets = merged.targets();
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
    set_model_metrics(m, &model, &source, targets.len());
    state.ready.store(true, Ordering::Relaxed);
    tracing::info!(
        "daemon ready: {} Services (API: {}), {} targets traced, {} hooks ({} hook set); metrics on http://{}/metrics",
        model.services.len(),
        api_source_note(&source.scope),
        targets.len(),
        capture.attached().len(),
        choice.set.name(),
        opts.metrics_addr
    );

    let mut counted: HashSet<u64> = HashSet::new();
    let mut verdicts = Series::default();
    let mut verdict_tick = tokio::time::interval(VERDICT_EVERY);
    let mut refresh_tick = tokio::time::interval(opts.refresh);
    refresh_tick.reset();
    let mut pump_tick = tokio::time::interval(trace::PUMP_EVERY);
    pump_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut join_losses = (0, 0);
    let mut ignore = |_: &FlowTable, _: u64| {};
    let mut reading: Option<Pending> = None;
    // When the last read that folded API changes in started (see [`API_FOLD_GAP`]).
    let mut api_folded_at: Option<std::time::Instant> = None;

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
                state.beat();
                capture.pump(&mut table, &mut ignore).await;
                table.settle(crate::kernel::monotonic_ns());
                let mut done = Vec::new();
                report_flows(
                    &table,
                    &merged,
                    &model,
                    source.api_state(),
                    m,
                    &mut counted,
                    &mut verdicts,
                    writer.as_mut(),
                    Pcap { rotation: pcap.as_mut(), store: capture.packets(), done: &mut done },
                );
                for tuple in &done {
                    capture.forget_packets(tuple);
                }
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
                set_api_metrics(m, &source);
                set_rules_age(m, &source);
                if source.overdue() {
                    count_failed_read(m, "timeout");
                    tracing::warn!(
                        "kube-proxy's rules are still being read after {} s; keeping the last model",
                        source::READ_DEADLINE.as_secs()
                    );
                }
                // A watch event changed the API's view: fold it in now, one Service at a time,
                // else with a whole read (unless one folded changes in less than API_FOLD_GAP ago).
                if reading.is_none() {
                    match fold_api_changes(&mut source, &mut model, &mut verdicts, m) {
                        Folded::Nothing => {}
                        Folded::Moved => {
                            merged = Merged::every_service(&model);
                            follow_targets(&model, &merged, &mut targets, &mut node_ips, &mut capture, &mut table)?;
                        }
                        Folded::Whole(why) => {
                            if api_folded_at.is_none_or(|at| at.elapsed() >= API_FOLD_GAP) {
                                tracing::debug!("the API's changes are folded in by a whole read: {why}");
                                api_folded_at = Some(std::time::Instant::now());
                                reading = Some(source.start());
                            }
                        }
                    }
                }
            }
            _ = refresh_tick.tick(), if reading.is_none() => {
                // The API's changes since the last verdict tick are folded per Service first: the
                // read would otherwise fold them into every Service, a whole model build (a copy
                // of the rules' reading, the old model compared, the plans rebuilt, the heap
                // trimmed: ~0.3 s of CPU at 10,000 Services) for one EndpointSlice. Whether a
                // change fell in the last 2 s before a refresh, or the refresh ran before the
                // verdict tick due at the same instant, made one change a second cost 0.6 or
                // 1.7 % of a core from run to run.
                if let Folded::Moved = fold_api_changes(&mut source, &mut model, &mut verdicts, m) {
                    merged = Merged::every_service(&model);
                    follow_targets(&model, &merged, &mut targets, &mut node_ips, &mut capture, &mut table)?;
                }
                if source.api_changed() {
                    api_folded_at = Some(std::time::Instant::now());
                }
                reading = Some(source.start());
            }
            done = async { reading.as_mut().expect("guarded by is_some").await }, if reading.is_some() => {
                reading = None;
                match source.finish(done) {
                    // Nothing but kube-proxy's sync times moved: no new model, no full round
                    // (the verdicts they move are found each round: see `report_flows`).
                    Ok(Update::Same(times)) => {
                        count_read(m, ReadKind::Unchanged, &source);
                        times.set(&mut model.kube_proxy);
                        m.kube_proxy_sync_age_seconds.set(model.kube_proxy.last_sync_age_secs.unwrap_or(-1.0));
                    }
                    Ok(Update::Model(new_model, kind)) => {
                        let new_model = *new_model;
                        warn_kube_proxy_problems(&model, &new_model);
                        verdicts.model_changed(&model, &new_model);
                        // The old model and its plans go before the new plans are built: at
                        // 10,000 Services each is tens of MiB, and the peak is what the pod's
                        // limit must hold.
                        model = new_model;
                        drop(std::mem::replace(&mut merged, Merged::every_service(&ServiceModel::default())));
                        merged = Merged::every_service(&model);
                        // The old model and plans were freed among the new ones: their pages go
                        // back, or the heap keeps them resident (see `kernel::heap`).
                        crate::kernel::heap::release_freed();
                        follow_targets(&model, &merged, &mut targets, &mut node_ips, &mut capture, &mut table)?;
                        set_model_metrics(m, &model, &source, targets.len());
                        // Counted once the model is in use (plans built, targets followed): a
                        // read counted is a read done.
                        count_read(m, kind, &source);
                        // A build for the API's changes alone (the rules were reused); with
                        // the rules read anew every Service is built again in any case.
                        if kind == ReadKind::Unchanged && source.folds_api() {
                            m.api_folds.get_or_create(&HowLabels { how: "whole".into() }).inc();
                        }
                    }
                    // kube-proxy restarting or its rules being rewritten: keep the last model.
                    Err(e) => {
                        count_failed_read(m, "failed");
                        tracing::warn!("rules not re-read, keeping the last model: {}", crate::error_chain(&e));
                    }
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    state.ready.store(false, Ordering::Relaxed);
    drop(server);
    drop(capture);
    tracing::info!("daemon stopped; hooks detached");
    Ok(())
}

/// What [`fold_api_changes`] did.
enum Folded {
    /// No API change, or none that moved a traced address.
    Nothing,
    /// A Service's traced addresses moved: the plans must be rebuilt.
    Moved,
    /// One Service at a time will not do (why): a whole read must fold the API's view.
    Whole(String),
}

/// Folds the API's changes since the last fold into `model` one Service at a time
/// ([`ModelSource::refold`]); the Services folded are classified again at the next round.
fn fold_api_changes(source: &mut ModelSource, model: &mut ServiceModel, verdicts: &mut Series, m: &Metrics) -> Folded {
    match source.refold(model) {
        Refold::Nothing => Folded::Nothing,
        Refold::Services(old) => {
            let moved = old.iter().any(|o| {
                model
                    .service(&o.service)
                    .is_none_or(|new| !Merged::same_addresses(o, new, &model.node_ips))
            });
            tracing::debug!(
                "{} Services folded again from the API's changes; plans rebuilt: {moved}",
                old.len()
            );
            m.api_folds.get_or_create(&HowLabels { how: "service".into() }).inc();
            verdicts.dirty.extend(old.into_iter().map(|o| o.service));
            if moved { Folded::Moved } else { Folded::Nothing }
        }
        Refold::Whole(why) => Folded::Whole(why),
    }
}

/// The traced targets and the flow table follow `merged`, the plans of a new or changed model;
/// nothing is detached.
fn follow_targets(
    model: &ServiceModel,
    merged: &Merged,
    targets: &mut Vec<(d8_common::TargetKey, u32)>,
    node_ips: &mut Vec<std::net::IpAddr>,
    capture: &mut Capture,
    table: &mut FlowTable,
) -> Result<(), Error> {
    let new_targets = merged.targets();
    if new_targets != *targets || model.node_ips != *node_ips {
        capture.set_targets(&new_targets, model.node_ips.clone())?;
        *targets = new_targets;
        *node_ips = model.node_ips.clone();
    }
    table.set_frontends(merged.all.frontend_addrs.iter().copied());
    table.set_node_ips(model.node_ips.clone());
    Ok(())
}

/// kube-proxy's endpoints answering nonsense is said once when it starts, and when it ends.
fn warn_kube_proxy_problems(old: &ServiceModel, new: &ServiceModel) {
    let (before, now) = (&old.kube_proxy.problems, &new.kube_proxy.problems);
    for p in now.iter().filter(|p| !before.contains(p)) {
        tracing::warn!("{p}; its other endpoints and the rules still tell what they can");
    }
    if now.is_empty() && !before.is_empty() {
        tracing::info!("kube-proxy's endpoints answer readably again");
    }
}

/// `--pcap-dir` in [`report_flows`]: where failing flows' packets go, where they are held, and
/// the tuples of flows done with (written, or healthy), whose packets the caller forgets.
struct Pcap<'a> {
    rotation: Option<&'a mut pcap::Rotation>,
    store: &'a trace::packets::PacketStore,
    done: &'a mut Vec<crate::events::Tuple>,
}

/// Classifies the flows of each Service; counts flows that reached an outcome once; writes
/// events for non-healthy flows and verdict changes, and the failing flows' packets
/// (`--pcap-dir`); sets the verdict gauges.
#[allow(clippy::too_many_arguments, reason = "one call site; the loop's state, spelled out")]
fn report_flows(
    table: &FlowTable,
    merged: &Merged,
    model: &ServiceModel,
    api: ApiState,
    m: &Metrics,
    counted: &mut HashSet<u64>,
    verdicts: &mut Series,
    mut writer: Option<&mut EventWriter>,
    mut pcap: Pcap<'_>,
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
    // One context for every Service: the conntrack counters are read once a round, not once a
    // Service (10,000 Services made that 30,000 file reads every 2 s).
    let ctx = Context {
        api_consulted: api.consulted,
        conntrack: Some(host::conntrack_stats(None)),
        host_ips: model.node_ips.clone(),
        traced: true,
        duration_ms: None,
        lost_events: 0,
    };
    // Classifying is pure: a Service with no flows now or at the last round gets the verdict it
    // had, unless its part of the model changed (it is `dirty`) or what every Service is judged
    // against changed (a full round then: the model as a whole, the context, kube-proxy's sync
    // turning stale). Verdicts that move with time alone are those of kube-proxy's sync: a
    // Service the API changed after kube-proxy's last sync is classified every round.
    let fill = ctx.conntrack.and_then(|c| c.fill_ratio()).map(|r| (r * 100.0) as u32);
    let stale_sync = classify::stale_sync_secs(&model.kube_proxy).is_some();
    let key = (api.consulted, fill, stale_sync);
    let full = verdicts.round_key.replace(key) != Some(key) || std::mem::take(&mut verdicts.all_dirty);
    let mut dirty = std::mem::take(&mut verdicts.dirty);
    if !full {
        dirty.extend(
            model
                .services
                .iter()
                .filter(|s| classify::awaits_sync(s, &model.kube_proxy))
                .map(|s| s.service.clone()),
        );
    }
    let had_flows = std::mem::take(&mut verdicts.with_flows);
    for svc in &model.services {
        // No flows at all (a quiet node): no lookup per Service.
        let flows = if by_service.is_empty() {
            Vec::new()
        } else {
            by_service.remove(&svc.service).unwrap_or_default()
        };
        if flows.is_empty() {
            if !full
                && !had_flows.contains(&svc.service)
                && !dirty.contains(&svc.service)
                && verdicts.verdicts.contains_key(&svc.service)
            {
                continue;
            }
        } else {
            verdicts.with_flows.insert(svc.service.clone());
        }
        let verdict = classify::classify_service(svc, &flows, model, &ctx);
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
            let labels = FlowLabels {
                service: service.clone(),
                class: class.into(),
                outcome: outcome.clone(),
            };
            m.flows.get_or_create(&labels).inc();
            verdicts.flows.insert(labels);
            if let Some(reason) = flow.drop_reason() {
                let labels = DropLabels {
                    service: service.clone(),
                    reason: reason.into(),
                };
                m.drops.get_or_create(&labels).inc();
                verdicts.drops.insert(labels);
            }
            if class != "healthy"
                && let Some(w) = writer.as_deref_mut()
            {
                w.flow(&service, flow, class);
            }
            if let Some(rotation) = pcap.rotation.as_deref_mut() {
                if rotation.wants(flow.outcome, !flow.icmp_errors.is_empty(), fv.class) {
                    let packets = pcap.store.packets_of(flow, table.flows());
                    if !packets.is_empty() {
                        let rule = (fv.class == verdict.root_cause.class)
                            .then(|| {
                                verdict
                                    .evidence
                                    .iter()
                                    .find(|e| e.kind == classify::EvidenceKind::Rules)
                            })
                            .flatten()
                            .map(|e| e.content.as_str());
                        let text =
                            crate::report::pcap::verdict_text(Some(fv.class), flow.outcome, flow.drop_reason(), rule);
                        let written = crate::report::pcap::FlowPackets {
                            id: flow.id,
                            service: &service,
                            verdict: text,
                            packets: &packets,
                        };
                        rotation.write(&written, &pcap.store.ifnames);
                    }
                }
                pcap.done.push(flow.tuple());
            }
        }
        let class = verdict.root_cause.class.as_str().to_string();
        let previous = verdicts.verdicts.insert(svc.service.clone(), class.clone());
        if previous.as_deref() != Some(class.as_str()) {
            if let Some(prev) = &previous {
                m.verdict
                    .get_or_create(&VerdictLabels {
                        service: service.clone(),
                        class: prev.clone(),
                    })
                    .set(0);
            }
            let labels = VerdictLabels {
                service: service.clone(),
                class: class.clone(),
            };
            m.verdict.get_or_create(&labels).set(1);
            verdicts.verdict_series.insert(labels);
            if let Some(w) = writer.as_deref_mut() {
                w.verdict(
                    &service,
                    previous.as_deref(),
                    &verdict.root_cause.class.to_string(),
                    &verdict.root_cause.detail,
                    verdict.severity.as_str(),
                    api.stale_secs,
                );
            }
        }
    }
    // Services go only with a new model.
    if std::mem::take(&mut verdicts.model_replaced) {
        verdicts.forget_gone(model, m);
    }
}

/// The per-Service series the daemon created, so a Service that goes takes its series with it
/// (thousands of deleted Services would otherwise stay exported forever).
#[derive(Default)]
struct Series {
    /// Each Service's current verdict class.
    verdicts: HashMap<ServiceRef, String>,
    /// Services whose part of the model changed since the last round.
    dirty: HashSet<ServiceRef>,
    /// The model changed as a whole (kube-proxy, the node, warnings): every Service is classified.
    all_dirty: bool,
    /// A new model replaced the last one since the last round (Services may have gone).
    model_replaced: bool,
    /// What the last round was classified against: whether the API was consulted, the conntrack
    /// table's fill in percent, whether kube-proxy's sync was stale.
    round_key: Option<(bool, Option<u32>, bool)>,
    /// Services that had flows at the last round (their verdict may change as flows expire).
    with_flows: HashSet<ServiceRef>,
    /// Every verdict series set (the current class at 1, earlier ones at 0).
    verdict_series: HashSet<VerdictLabels>,
    flows: HashSet<FlowLabels>,
    drops: HashSet<DropLabels>,
}

impl Series {
    /// `new` replaces `old`: the Services whose part differs are classified at the next round, or
    /// every Service when what all are judged against differs.
    fn model_changed(&mut self, old: &ServiceModel, new: &ServiceModel) {
        self.model_replaced = true;
        let same_whole = old.node == new.node
            && source::without_sync_times(&old.kube_proxy) == source::without_sync_times(&new.kube_proxy)
            && old.node_ips == new.node_ips
            && old.warnings == new.warnings
            && old.probe_ports == new.probe_ports
            && old.api_server_version == new.api_server_version
            && old.min_api_server_version == new.min_api_server_version;
        if !same_whole {
            self.all_dirty = true;
            return;
        }
        let before: HashMap<&ServiceRef, &crate::model::Service> =
            old.services.iter().map(|s| (&s.service, s)).collect();
        for svc in &new.services {
            if before.get(&svc.service) != Some(&svc) {
                self.dirty.insert(svc.service.clone());
            }
        }
    }

    /// Removes the series of the Services `model` no longer has.
    fn forget_gone(&mut self, model: &ServiceModel, m: &Metrics) {
        let present: HashSet<&ServiceRef> = model.services.iter().map(|s| &s.service).collect();
        let gone: HashSet<String> = self
            .verdicts
            .keys()
            .filter(|s| !present.contains(s))
            .map(ServiceRef::to_string)
            .collect();
        if gone.is_empty() {
            return;
        }
        self.verdicts.retain(|svc, _| present.contains(svc));
        self.verdict_series.retain(|l| {
            let keep = !gone.contains(&l.service);
            if !keep {
                m.verdict.remove(l);
            }
            keep
        });
        self.flows.retain(|l| {
            let keep = !gone.contains(&l.service);
            if !keep {
                m.flows.remove(l);
            }
            keep
        });
        self.drops.retain(|l| {
            let keep = !gone.contains(&l.service);
            if !keep {
                m.drops.remove(l);
            }
            keep
        });
    }
}

/// Where the API's view comes from, in words.
fn api_source_note(scope: &Scope) -> &'static str {
    match scope.api {
        k8s::Source::Disabled => "rules only (--no-k8s)",
        k8s::Source::Snapshot(_) => "a snapshot file",
        k8s::Source::Live { .. } => "the live API",
        k8s::Source::Watched(_) => "the live API, watched",
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
    fn a_service_that_goes_takes_its_series_with_it() {
        let m = Metrics::new();
        let mut series = Series::default();
        let full = model();
        for svc in &full.services {
            let service = svc.service.to_string();
            series.verdicts.insert(svc.service.clone(), "healthy".into());
            for (class, v) in [("healthy", 1), ("no_endpoints", 0)] {
                let l = VerdictLabels {
                    service: service.clone(),
                    class: class.into(),
                };
                m.verdict.get_or_create(&l).set(v);
                series.verdict_series.insert(l);
            }
            let l = FlowLabels {
                service: service.clone(),
                class: "healthy".into(),
                outcome: "established".into(),
            };
            m.flows.get_or_create(&l).inc();
            series.flows.insert(l);
            let l = DropLabels {
                service,
                reason: "NETFILTER_DROP".into(),
            };
            m.drops.get_or_create(&l).inc();
            series.drops.insert(l);
        }
        let mut left = full.clone();
        left.services.retain(|s| s.service.name == "a");
        series.forget_gone(&left, &m);
        let text = m.encode();
        assert!(!text.contains("ns/b"), "{text}");
        assert_eq!(text.matches(r#"service="ns/a""#).count(), 4, "{text}");
        assert_eq!(series.verdicts.len(), 1);
        assert_eq!(series.verdict_series.len() + series.flows.len() + series.drops.len(), 4);
    }

    #[test]
    fn plans_every_service_and_maps_addresses_back() {
        let merged = Merged::every_service(&model());
        assert_eq!(merged.all.frontend_addrs.len(), 2);
        assert_eq!(merged.targets().len(), 4);
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
