//! Where the daemon's model comes from, and how it is kept current without stalling the loop.
//!
//! - The API: with the live API, watches on a thread of their own ([`k8s::watch`]); their stores
//!   are folded into each model read. A watch event is a reason to read the model again at once.
//! - kube-proxy's rules: read on a blocking thread with its own event loop (the dump tools take
//!   seconds on a large node, while the daemon's loop keeps draining the ring buffer and
//!   `/metrics` keeps answering), and only when they changed: the nf_tables ruleset's generation
//!   id (one netlink request) is asked before each read, and an equal generation reuses the last
//!   reading. The generation covers every nf_tables table of the namespace, kube-proxy's
//!   nftables table and iptables-nft's alike, so it never misses a change; it cannot see
//!   iptables-legacy tables or IPVS, which are read every time.
//! - A read that fails, or outlives [`READ_DEADLINE`], leaves the last model in use; the metrics
//!   say so (`d8_trace_rules_reads_total{result}`, `d8_trace_rules_age_seconds`).

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    kernel::{self, host},
    model::{KubeProxyStatus, ProxyMode, Service, ServiceModel, k8s, view::NodeView},
    trace::{self, Scope},
};

/// A read still running after this is reported as timed out (its dump tool is killed at the
/// rules reader's own deadline, so it ends soon after).
pub const READ_DEADLINE: Duration = Duration::from_secs(90);
/// How long the daemon waits at start for the API's first lists before reading the model without
/// them (the model is read again as soon as they arrive).
const FIRST_SYNC_WAIT: Duration = Duration::from_secs(5);

/// The rules-only view of the last full read, and the ruleset generation it was read at.
#[derive(Clone)]
struct Reading {
    generation: u32,
    view: NodeView,
}

/// What a finished read did, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadKind {
    /// The rules were read.
    Read,
    /// The ruleset's generation had not moved: the last reading was reused.
    Unchanged,
}

/// What a read on the blocking thread found.
pub enum Done {
    /// A view: the rules read (or reused) with the API folded in.
    View(Box<NodeView>, ReadKind),
    /// Neither the rules, the API, kube-proxy's status (its sync times aside) nor the host's
    /// addresses changed since the last view: only kube-proxy's sync times are new. Building the
    /// same model again (a copy of the reading and the API folded in, for 10,000 Services) was
    /// most of the daemon's CPU at rest.
    Same(SyncTimes),
}

/// kube-proxy's sync times: they move with every sync it makes, and no model needs rebuilding for
/// them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SyncTimes {
    pub last_sync_age_secs: Option<f64>,
    pub sync_pending_secs: Option<f64>,
    pub last_sync_unix: Option<f64>,
}

impl SyncTimes {
    pub fn of(kp: &KubeProxyStatus) -> SyncTimes {
        SyncTimes {
            last_sync_age_secs: kp.last_sync_age_secs,
            sync_pending_secs: kp.sync_pending_secs,
            last_sync_unix: kp.last_sync_unix,
        }
    }

    pub fn set(self, kp: &mut KubeProxyStatus) {
        kp.last_sync_age_secs = self.last_sync_age_secs;
        kp.sync_pending_secs = self.sync_pending_secs;
        kp.last_sync_unix = self.last_sync_unix;
    }
}

/// kube-proxy's status without its sync times, to tell a change that matters to the model.
pub fn without_sync_times(kp: &KubeProxyStatus) -> KubeProxyStatus {
    let mut kp = kp.clone();
    SyncTimes {
        last_sync_age_secs: None,
        sync_pending_secs: None,
        last_sync_unix: None,
    }
    .set(&mut kp);
    kp
}

/// What a finished read gives the daemon.
pub enum Update {
    Model(Box<ServiceModel>, ReadKind),
    Same(SyncTimes),
}

/// What folding the API's changes into the model found ([`ModelSource::refold`]).
#[derive(Debug)]
pub enum Refold {
    /// The API's objects have not changed since the model was folded.
    Nothing,
    /// The Services whose own objects changed were folded again; these are what those whose part
    /// of the model changed were before.
    Services(Vec<Service>),
    /// One Service at a time will not do (why): a whole read must fold the API's view.
    Whole(String),
}

/// A read of the node's view in flight, on a thread of its own.
pub type Pending = tokio::task::JoinHandle<Result<Done, trace::Error>>;

pub struct ModelSource {
    pub scope: Scope,
    /// The live API's watches (`scope.api` is then their [`k8s::Source::Watched`] view); dropping
    /// it stops them.
    watch: Option<k8s::watch::Watch>,
    /// The watches' generation the read in flight (or the last read) started from.
    read_generation: u64,
    /// The watches' generation the current model was built from (`None`: no model yet).
    model_generation: Option<u64>,
    /// The last model holds an API view (used by the classifier, kept while the API is down).
    pub api_consulted: bool,
    /// The mode of the last model: IPVS (or a first read) is read whole every time.
    mode: ProxyMode,
    last: Arc<Mutex<Option<Reading>>>,
    /// When the read in flight started, and whether its deadline was reported.
    pub started: Option<(Instant, bool)>,
    /// When the rules were last read or found unchanged.
    pub rules_current_at: Option<Instant>,
    /// Why the API's changes since the last read need a whole one (set by [`ModelSource::refold`],
    /// cleared when a read starts).
    whole_pending: Option<String>,
    /// The read in flight (or the last one) folds API changes the model lacks into every Service.
    folds_api: bool,
}

/// What the verdicts may say of the API.
#[derive(Debug, Clone, Copy)]
pub struct ApiState {
    /// The model holds an API view (`classify::Context::api_consulted`).
    pub consulted: bool,
    /// Seconds that view has gone unconfirmed, while the API fails.
    pub stale_secs: Option<u64>,
}

impl ModelSource {
    /// With the live API: a watch client and the watches, started. A client that cannot be
    /// configured (no kubeconfig, no service account) leaves the daemon on the rules alone, with
    /// a warning.
    pub async fn new(mut scope: Scope) -> ModelSource {
        let mut watch = None;
        if let k8s::Source::Live { kubeconfig } = &scope.api {
            let hint = k8s::NodeHint {
                flag: scope.node.clone(),
                env: std::env::var("NODE_NAME").ok().filter(|v| !v.is_empty()),
                host_ips: host::host_addresses(),
            };
            let started = match k8s::live::watch_client(kubeconfig.as_deref(), k8s::DEFAULT_TIMEOUT).await {
                Ok(client) => k8s::watch::Watch::start(client, hint).map_err(|e| e.to_string()),
                Err(e) => Err(crate::error_chain(&e)),
            };
            match started {
                Ok(w) => {
                    scope.api = k8s::Source::Watched(w.view());
                    watch = Some(w);
                }
                Err(e) => {
                    tracing::warn!("{e}; continuing without the Kubernetes API (rules-only verdicts)");
                    scope.api = k8s::Source::Disabled;
                }
            }
        }
        ModelSource {
            scope,
            watch,
            read_generation: 0,
            model_generation: None,
            api_consulted: false,
            mode: ProxyMode::Unknown,
            last: Arc::default(),
            started: None,
            rules_current_at: None,
            whole_pending: None,
            folds_api: false,
        }
    }

    pub fn view(&self) -> Option<k8s::watch::View> {
        self.watch.as_ref().map(k8s::watch::Watch::view)
    }

    /// Waits up to [`FIRST_SYNC_WAIT`] for the watches' first lists.
    pub async fn first_sync(&self) {
        let Some(view) = self.view() else { return };
        let deadline = tokio::time::Instant::now() + FIRST_SYNC_WAIT;
        while !view.health().synced && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The API's objects changed since the last read started.
    pub fn api_changed(&self) -> bool {
        self.view().is_some_and(|v| v.generation() != self.read_generation)
    }

    /// The API answers: the watches run, or the snapshot was read.
    pub fn api_up(&self) -> bool {
        match &self.scope.api {
            k8s::Source::Watched(view) => view.health().up,
            k8s::Source::Disabled => false,
            _ => self.api_consulted,
        }
    }

    pub fn api_state(&self) -> ApiState {
        ApiState {
            consulted: self.api_consulted,
            stale_secs: self.view().and_then(|v| v.health().stale_for).map(|d| d.as_secs()),
        }
    }

    /// Folds the API's changes since the last fold into `model` one Service at a time
    /// ([`k8s::refold`]), from the rules-only reading `model` was built from: an EndpointSlice
    /// that changed costs its Service's fold, not a copy of the reading with the API folded into
    /// every Service. Called with no read in flight. What one Service's fold cannot decide (a
    /// Service created or deleted, this node's Pods or Node, a LIST, the API down, no reading
    /// kept) is [`Refold::Whole`] until a read starts.
    pub fn refold(&mut self, model: &mut ServiceModel) -> Refold {
        let Some(view) = self.view() else {
            return Refold::Nothing;
        };
        if !self.api_changed() {
            return Refold::Nothing;
        }
        if let Some(why) = &self.whole_pending {
            return Refold::Whole(why.clone());
        }
        let found = self.refold_with(&view, model);
        match found {
            Ok((old, generation)) => {
                self.read_generation = generation;
                self.model_generation = Some(generation);
                Refold::Services(old)
            }
            Err(why) => {
                self.whole_pending = Some(why.clone());
                Refold::Whole(why)
            }
        }
    }

    fn refold_with(&self, view: &k8s::watch::View, model: &mut ServiceModel) -> Result<(Vec<Service>, u64), String> {
        if self.model_generation.is_none() || !self.api_consulted {
            return Err("the model holds no API view yet".into());
        }
        if view.health().stale_for.is_some() {
            return Err("the API's view is stale (its age is in the model's warning)".into());
        }
        let (touched, generation) = view
            .take_touched()
            .ok_or("a LIST, this node's Pods or Node, or the server's version changed")?;
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let reading = last
            .as_ref()
            .ok_or("no rules-only reading is kept (IPVS, legacy tables, or the rules changed during the read)")?;
        let objs = view.objects_of(&touched).ok_or("the API has not been listed yet")?;
        let old = k8s::refold::refold(model, &reading.view.model, &objs, &touched).map_err(|w| w.0)?;
        Ok((old, generation))
    }

    /// Starts a read of the node's view on a blocking thread (see the module's comment). The
    /// thread is in the node's network namespace (threads start in their creator's).
    pub fn start(&mut self) -> Pending {
        self.whole_pending = None;
        if let Some(view) = self.view() {
            view.clear_touched();
            self.read_generation = view.generation();
        }
        // Without watches (no API, a snapshot) the API side is the same every time. While the
        // API fails the model is rebuilt anyway: its warning says how old the API's view is.
        let api_same = self.model_generation.is_some()
            && self
                .view()
                .is_none_or(|v| self.model_generation == Some(self.read_generation) && v.health().stale_for.is_none());
        self.folds_api = self.view().is_some() && self.model_generation.is_some_and(|g| g != self.read_generation);
        self.started = Some((Instant::now(), false));
        let (scope, mode, last) = (self.scope.clone(), self.mode, self.last.clone());
        tokio::task::spawn_blocking(move || read(&scope, mode, &last, api_same))
    }

    /// The read in flight (or the last one) folds API changes into every Service, not only
    /// into those they touch (`d8_trace_api_folds_total{how="whole"}`).
    pub fn folds_api(&self) -> bool {
        self.folds_api
    }

    /// A whole model (the first read: nothing to compare with).
    pub async fn read(&mut self) -> Result<(ServiceModel, ReadKind), trace::Error> {
        let pending = self.start();
        match self.finish(pending.await)? {
            Update::Model(model, kind) => Ok((*model, kind)),
            Update::Same(_) => unreachable!("a first read builds a model"),
        }
    }

    /// The model of a finished read, or what changed when nothing else did.
    pub fn finish(
        &mut self,
        done: Result<Result<Done, trace::Error>, tokio::task::JoinError>,
    ) -> Result<Update, trace::Error> {
        self.started = None;
        let done = done.map_err(|e| trace::Error::Io(std::io::Error::other(format!("the read stopped: {e}"))))??;
        self.rules_current_at = Some(Instant::now());
        let (view, kind) = match done {
            Done::Same(times) => return Ok(Update::Same(times)),
            Done::View(view, kind) => (*view, kind),
        };
        self.model_generation = Some(self.read_generation);
        self.api_consulted = view.api_consulted;
        self.mode = view.model.kube_proxy.mode;
        if !matches!(self.scope.api, k8s::Source::Watched(_)) {
            // The watches warn for themselves, once per outage; a snapshot's problems are said here.
            for w in &view.warnings {
                tracing::warn!("{w}");
            }
        }
        Ok(Update::Model(Box::new(view.model), kind))
    }

    /// The read in flight has outlived [`READ_DEADLINE`] and was not reported yet: report it once.
    pub fn overdue(&mut self) -> bool {
        match &mut self.started {
            Some((at, reported)) if !*reported && at.elapsed() > READ_DEADLINE => {
                *reported = true;
                true
            }
            _ => false,
        }
    }
}

/// The ruleset's generation in this thread's network namespace; `None` without nf_tables.
fn generation() -> Option<u32> {
    kernel::nftables::Reader::open().ok()?.generation().ok()
}

/// iptables-legacy tables exist in this namespace: changes to them move no nf_tables generation.
fn legacy_tables() -> bool {
    [false, true]
        .into_iter()
        .any(|v6| !kernel::xtables::legacy_tables(v6).is_empty())
}

/// The generation tells every change of `mode`'s rules.
fn generation_covers(mode: ProxyMode) -> bool {
    match mode {
        ProxyMode::Nftables => true,
        ProxyMode::Iptables => !legacy_tables(),
        ProxyMode::Ipvs | ProxyMode::Unknown => false,
    }
}

/// One read (on the blocking thread): the whole view when the generation cannot tell changes
/// (IPVS joins the API into the rules' reading), else the rules read or reused, then the API.
/// `api_same`: the API's objects are those the current model was built from.
fn read(scope: &Scope, mode: ProxyMode, last: &Mutex<Option<Reading>>, api_same: bool) -> Result<Done, trace::Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(trace::Error::Io)?;
    if !generation_covers(mode) {
        *last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let view = runtime.block_on(trace::node_view(scope))?;
        // The reader's table is garbage now: its pages go back before the caller's peak.
        kernel::heap::release_freed();
        return Ok(Done::View(Box::new(view), ReadKind::Read));
    }
    let before = generation();
    let cached = {
        let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(r) = last.as_mut().filter(|r| Some(r.generation) == before) {
            let (kube_proxy, host_ips) = refresh(&r.view.model.kube_proxy);
            let same = without_sync_times(&kube_proxy) == without_sync_times(&r.view.model.kube_proxy)
                && host_ips == r.view.host_ips;
            let times = SyncTimes::of(&kube_proxy);
            // Kept current, so the next read compares with what it last saw.
            r.view.model.kube_proxy = kube_proxy;
            add_host_ips(&mut r.view, host_ips);
            if api_same && same {
                return Ok(Done::Same(times));
            }
            Some(r.view.clone())
        } else {
            // Stale: let it go before the new reading is built, not after (one model less at
            // the peak).
            *last = None;
            None
        }
    };
    let (mut rules, kind) = match cached {
        Some(view) => (view, ReadKind::Unchanged),
        None => {
            let rules_only = Scope {
                api: k8s::Source::Disabled,
                ..scope.clone()
            };
            let view = runtime.block_on(trace::node_view(&rules_only))?;
            // The reader's table (tens of MiB of small objects at 10,000 Services) is garbage
            // now: its pages go back before the reading is copied and the API folded in.
            kernel::heap::release_freed();
            // Kept only when nothing changed during the read and the generation covers the mode
            // read (kube-proxy may have changed mode).
            let keep = before.filter(|&g| Some(g) == generation() && generation_covers(view.model.kube_proxy.mode));
            *last.lock().unwrap_or_else(|e| e.into_inner()) = keep.map(|generation| Reading {
                generation,
                view: view.clone(),
            });
            if view.model.kube_proxy.mode == ProxyMode::Ipvs {
                return Ok(Done::View(
                    Box::new(runtime.block_on(trace::node_view(scope))?),
                    ReadKind::Read,
                ));
            }
            (view, ReadKind::Read)
        }
    };
    let hint = k8s::NodeHint {
        flag: scope.node.clone(),
        env: std::env::var("NODE_NAME").ok().filter(|v| !v.is_empty()),
        host_ips: rules.host_ips.clone(),
    };
    let applied = runtime.block_on(k8s::apply(&mut rules.model, &scope.api, &hint, k8s::DEFAULT_TIMEOUT))?;
    if let Some((name, _)) = &applied.node {
        rules.model.node = Some(name.clone());
    }
    rules.api_consulted = applied.api_consulted;
    rules.warnings.extend(applied.warnings);
    Ok(Done::View(Box::new(rules), kind))
}

/// What changes without the rules: kube-proxy's health (its mode and whether its rules are there
/// kept from `old`, the last reading's) and the host's addresses.
fn refresh(old: &KubeProxyStatus) -> (KubeProxyStatus, Vec<IpAddr>) {
    let mut kp = crate::model::kube_proxy::status();
    if kp.mode == ProxyMode::Unknown {
        kp.mode = old.mode;
    }
    kp.rules_present = old.rules_present;
    (kp, host::host_addresses())
}

fn add_host_ips(view: &mut NodeView, host: Vec<IpAddr>) {
    for ip in &host {
        if !view.model.node_ips.contains(ip) {
            view.model.node_ips.push(*ip);
        }
    }
    view.host_ips = host;
}
