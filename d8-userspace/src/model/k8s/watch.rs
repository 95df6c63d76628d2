//! The live API for a long-running process (the daemon): one LIST per kind at start, then watches
//! that carry every change, as client-go's reflectors do.
//!
//! What is watched: all Services and EndpointSlices (a node routes to every Service), this node's
//! Pods (`spec.nodeName`: kube-proxy's pod and the pods whose probes this node's kubelet sends) and
//! this node's own Node (`metadata.name`). Each kind keeps a store of its objects by
//! namespace/name; [`View::objects`] hands out a copy for the model.
//!
//! After the first LIST a kind is only ever listed again when its watch cannot resume: the
//! server says the resourceVersion is gone (410, in the stream or as the answer), or a line of
//! the stream cannot be read (an event may have been lost). A watch that ends (the server's
//! `timeoutSeconds`, a dropped connection) resumes from the last resourceVersion seen, bookmarks
//! included; one that fails backs off exponentially with jitter (client-go's 800 ms to 30 s). While
//! the API is unreachable the stores keep their last contents: the model keeps the API's last
//! view, and [`Health`] says since when it has not been confirmed.
//!
//! Why not kube-runtime's `watcher`: it reports neither a watch that resumed nor bookmarks, so a
//! watch that comes back after an outage without changes would leave the API "down" until the
//! next change; here a watch that starts is the API answering.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::node::{NodeHint, NodeSource};
use super::slice::Slice;
use super::slim::Slim;
use super::{ClusterObjects, Error};
use crate::model::ServiceRef;

/// `timeoutSeconds` of each watch: the server ends it then, and it resumes from where it was.
pub const WATCH_SECS: u32 = 290;
/// A watch that sends nothing (no event, no bookmark) for this long is taken for a dead
/// connection and resumed.
const WATCH_IDLE: Duration = Duration::from_secs(WATCH_SECS as u64 + 30);
/// A watch that started and sent nothing wrong for this long counts as the API answering.
const CONFIRM_AFTER: Duration = Duration::from_secs(2);
/// First and longest wait after a failure (client-go's reflector backoff).
const BACKOFF_MIN: Duration = Duration::from_millis(800);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Objects per LIST page.
const PAGE_SIZE: u32 = 500;

/// The kinds watched, in [`Shared`]'s slot order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Services,
    EndpointSlices,
    Pods,
    Nodes,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Services => "services",
            Kind::EndpointSlices => "endpointslices",
            Kind::Pods => "pods",
            Kind::Nodes => "nodes",
        }
    }
}

/// One kind's objects by `namespace/name`.
type Objects<K> = BTreeMap<String, K>;

#[derive(Default)]
pub(crate) struct Stores {
    services: Objects<Service>,
    endpoint_slices: Objects<Slice>,
    pods: Objects<Pod>,
    nodes: Objects<Node>,
    /// Each kind has been listed once.
    synced: [bool; 4],
    /// The last failure of each kind that has not recovered since.
    failing: [Option<String>; 4],
    /// When the first of the current failures began.
    down_since: Option<Instant>,
    node: Option<(String, NodeSource)>,
    server_version: Option<String>,
    /// Each Service's EndpointSlices (their keys), by the slice's `kubernetes.io/service-name`:
    /// what a fold of one Service looks up.
    slices_of: HashMap<ServiceRef, BTreeSet<String>>,
    /// What changed since [`View::take_touched`] or [`View::clear_touched`].
    touched: Touched,
}

/// What the events since the last fold changed: the Services whose own objects (the Service, its
/// EndpointSlices) changed, or something every Service is folded against (a LIST, this node's
/// Pods or Node, the server's version).
#[derive(Debug, Default)]
struct Touched {
    services: HashSet<ServiceRef>,
    all: bool,
}

/// Which part of the API's view an object is.
pub(crate) enum Part {
    /// The objects of this Service.
    Service(ServiceRef),
    /// Not one Service's: every Service is folded against it.
    All,
    /// No Service's (an EndpointSlice without a Service name): nothing folds it in.
    None,
}

/// A store the watch of `K` writes.
pub(crate) trait Stored: Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static {
    /// What the store keeps of an object: the object slimmed ([`Slim`]), or for an EndpointSlice
    /// a [`Slice`], a fifth of its size.
    type Kept: Clone + std::fmt::Debug + Send + 'static;
    fn keep(self) -> Self::Kept;
    /// The key an object is kept under (`namespace/name`).
    fn key_of(kept: &Self::Kept) -> String;
    fn objects(s: &mut Stores) -> &mut Objects<Self::Kept>;
    /// Which part of the view the object is.
    fn part(_kept: &Self::Kept) -> Part {
        Part::All
    }
    /// Keeps [`Stores::slices_of`]: the object under `key` was `old` and is now `new`.
    fn index(_s: &mut Stores, _key: &str, _old: Option<&Self::Kept>, _new: Option<&Self::Kept>) {}
}

/// [`Stored`]'s first methods for a kind kept as the API's object, slimmed.
macro_rules! kept_slimmed {
    () => {
        type Kept = Self;
        fn keep(mut self) -> Self {
            self.slim();
            self
        }
        fn key_of(kept: &Self) -> String {
            key(kept)
        }
    };
}

impl Stored for Service {
    kept_slimmed!();
    fn objects(s: &mut Stores) -> &mut Objects<Self> {
        &mut s.services
    }
    fn part(svc: &Self) -> Part {
        match (&svc.metadata.namespace, &svc.metadata.name) {
            (Some(namespace), Some(name)) => Part::Service(ServiceRef {
                namespace: namespace.clone(),
                name: name.clone(),
            }),
            _ => Part::None,
        }
    }
}
impl Stored for EndpointSlice {
    type Kept = Slice;
    fn keep(self) -> Slice {
        self.into()
    }
    fn key_of(kept: &Slice) -> String {
        kept.key()
    }
    fn objects(s: &mut Stores) -> &mut Objects<Slice> {
        &mut s.endpoint_slices
    }
    fn part(kept: &Slice) -> Part {
        kept.owner().map_or(Part::None, Part::Service)
    }
    fn index(s: &mut Stores, key: &str, old: Option<&Slice>, new: Option<&Slice>) {
        if let Some(owner) = old.and_then(Slice::owner)
            && let Some(keys) = s.slices_of.get_mut(&owner)
        {
            keys.remove(key);
            if keys.is_empty() {
                s.slices_of.remove(&owner);
            }
        }
        if let Some(owner) = new.and_then(Slice::owner) {
            s.slices_of.entry(owner).or_default().insert(key.to_string());
        }
    }
}
impl Stored for Pod {
    kept_slimmed!();
    fn objects(s: &mut Stores) -> &mut Objects<Self> {
        &mut s.pods
    }
}
impl Stored for Node {
    kept_slimmed!();
    fn objects(s: &mut Stores) -> &mut Objects<Self> {
        &mut s.nodes
    }
}

impl Stores {
    /// `obj` (its old or new version) changed.
    fn touch<K: Stored>(&mut self, obj: &K::Kept) {
        match K::part(obj) {
            Part::Service(svc) => {
                self.touched.services.insert(svc);
            }
            Part::All => self.touched.all = true,
            Part::None => {}
        }
    }
}

#[derive(Default)]
struct Shared {
    stores: Mutex<Stores>,
    /// Bumped on every change to a store (an event, a LIST), so readers rebuild only on change.
    generation: AtomicU64,
    lists: AtomicU64,
    watches: AtomicU64,
    errors: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Stores> {
        // A panic while holding the lock leaves maps that are still whole: keep using them.
        self.stores.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// The API answered for `kind`: it is no longer failing.
    fn answered(&self, kind: Kind) {
        let mut s = self.lock();
        if s.failing[kind as usize].take().is_some() {
            tracing::info!("the Kubernetes API answers again ({})", kind.name());
        }
        if s.failing.iter().all(Option::is_none) {
            s.down_since = None;
        }
    }

    fn failed(&self, kind: Kind, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut s = self.lock();
        if s.failing[kind as usize].is_none() {
            tracing::warn!(
                "{what}; keeping the last view of {} and retrying with backoff",
                kind.name()
            );
        }
        s.failing[kind as usize] = Some(what);
        s.down_since.get_or_insert_with(Instant::now);
    }

    /// `items` are kept already ([`list_all`] keeps each page's objects as it arrives).
    fn replace<K: Stored>(&self, kind: Kind, items: Vec<K::Kept>) {
        let mut s = self.lock();
        let old = std::mem::take(K::objects(&mut s));
        for (k, o) in &old {
            K::index(&mut s, k, Some(o), None);
        }
        drop(old);
        let new: Objects<K::Kept> = items.into_iter().map(|o| (K::key_of(&o), o)).collect();
        for (k, o) in &new {
            K::index(&mut s, k, None, Some(o));
        }
        *K::objects(&mut s) = new;
        s.synced[kind as usize] = true;
        // A LIST may change anything: every Service is folded again.
        s.touched.all = true;
        drop(s);
        self.changed();
    }

    fn apply<K: Stored>(&self, obj: K) {
        let obj = obj.keep();
        let k = K::key_of(&obj);
        let mut s = self.lock();
        // The old version's Service is touched too: a slice may have moved to another Service.
        if let Some(old) = K::objects(&mut s).remove(&k) {
            s.touch::<K>(&old);
            K::index(&mut s, &k, Some(&old), None);
        }
        s.touch::<K>(&obj);
        K::index(&mut s, &k, None, Some(&obj));
        K::objects(&mut s).insert(k, obj);
        drop(s);
        self.changed();
    }

    fn delete<K: Stored>(&self, obj: &K) {
        let obj = obj.clone().keep();
        let k = K::key_of(&obj);
        let mut s = self.lock();
        s.touch::<K>(&obj);
        if let Some(old) = K::objects(&mut s).remove(&k) {
            s.touch::<K>(&old);
            K::index(&mut s, &k, Some(&old), None);
        }
        drop(s);
        self.changed();
    }
}

fn key<K: Resource>(o: &K) -> String {
    let m = o.meta();
    format!(
        "{}/{}",
        m.namespace.as_deref().unwrap_or_default(),
        m.name.as_deref().unwrap_or_default()
    )
}

/// How the API's view stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Every kind has been listed once and none is failing now.
    pub up: bool,
    /// Every kind has been listed once (the stores hold a whole view).
    pub synced: bool,
    /// How long the view has gone unconfirmed (the API failing); `None` while it answers.
    pub stale_for: Option<Duration>,
    /// The failure that made it stale, for a warning.
    pub last_error: Option<String>,
    /// LIST and WATCH requests sent, and failures seen, since start.
    pub lists: u64,
    pub watches: u64,
    pub errors: u64,
}

/// A handle on the watched objects, cheap to clone; two handles are equal when they share stores.
#[derive(Clone, Default)]
pub struct View(Arc<Shared>);

impl PartialEq for View {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}
impl Eq for View {}

impl std::fmt::Debug for View {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("View").field("health", &self.health()).finish()
    }
}

impl View {
    /// Changes so far: a different number means the objects changed.
    pub fn generation(&self) -> u64 {
        self.0.generation.load(Ordering::Relaxed)
    }

    pub fn health(&self) -> Health {
        let s = self.0.lock();
        let synced = s.synced.iter().all(|&b| b);
        Health {
            up: synced && s.down_since.is_none(),
            synced,
            stale_for: s.down_since.map(|t| t.elapsed()),
            last_error: s.failing.iter().flatten().next().cloned(),
            lists: self.0.lists.load(Ordering::Relaxed),
            watches: self.0.watches.load(Ordering::Relaxed),
            errors: self.0.errors.load(Ordering::Relaxed),
        }
    }

    /// A copy of the objects and this node, once every kind has been listed; `None` before.
    pub fn objects(&self) -> Option<(ClusterObjects, Option<(String, NodeSource)>)> {
        self.with_objects(|objs, node| (objs.clone(), node))
    }

    /// The Services whose own objects changed since the last call (or [`View::clear_touched`]),
    /// and the generation they were taken at; `None` (nothing taken) when something every Service
    /// is folded against changed too: then only a whole fold will do.
    pub fn take_touched(&self) -> Option<(HashSet<ServiceRef>, u64)> {
        let mut s = self.0.lock();
        if s.touched.all {
            return None;
        }
        let generation = self.generation();
        Some((std::mem::take(&mut s.touched.services), generation))
    }

    /// A whole fold starts: whatever changed so far is in it.
    pub fn clear_touched(&self) {
        self.0.lock().touched = Touched::default();
    }

    /// Copies of `services`' own objects (the Service, its EndpointSlices in the order a whole
    /// view lists them) and of this node's Node, once every kind has been listed: what folding
    /// those Services again reads. Pods are left out (they are folded into the model as a whole).
    pub fn objects_of(&self, services: &HashSet<ServiceRef>) -> Option<ClusterObjects> {
        let s = self.0.lock();
        if !s.synced.iter().all(|&b| b) {
            return None;
        }
        let mut objs = ClusterObjects {
            nodes: s.nodes.values().cloned().collect(),
            server_version: s.server_version.clone(),
            ..ClusterObjects::default()
        };
        let mut slice_keys: Vec<&String> = Vec::new();
        for svc in services {
            if let Some(o) = s.services.get(&format!("{}/{}", svc.namespace, svc.name)) {
                objs.services.push(o.clone());
            }
            slice_keys.extend(s.slices_of.get(svc).into_iter().flatten());
        }
        slice_keys.sort();
        objs.endpoint_slices = slice_keys
            .into_iter()
            .filter_map(|k| s.endpoint_slices.get(k).cloned())
            .collect();
        Some(objs)
    }

    /// `f` on the objects and this node, once every kind has been listed; `None` before. The
    /// objects are lent, not copied (at 10,000 Services a copy is tens of MiB): the watches wait
    /// for `f` to return before they apply their next event.
    pub fn with_objects<T>(&self, f: impl FnOnce(&ClusterObjects, Option<(String, NodeSource)>) -> T) -> Option<T> {
        let mut s = self.0.lock();
        if !s.synced.iter().all(|&b| b) {
            return None;
        }
        fn lend<V>(m: &mut Objects<V>) -> Vec<V> {
            std::mem::take(m).into_values().collect()
        }
        fn give_back<K: Stored>(m: &mut Objects<K::Kept>, v: Vec<K::Kept>) {
            *m = v.into_iter().map(|o| (K::key_of(&o), o)).collect();
        }
        let mut objs = ClusterObjects {
            services: lend(&mut s.services),
            endpoint_slices: lend(&mut s.endpoint_slices),
            pods: lend(&mut s.pods),
            nodes: lend(&mut s.nodes),
            server_version: s.server_version.clone(),
            warnings: Vec::new(),
        };
        // Given back even if `f` panics, so a bug in a reader cannot empty the stores.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&objs, s.node.clone())));
        give_back::<Service>(&mut s.services, std::mem::take(&mut objs.services));
        give_back::<EndpointSlice>(&mut s.endpoint_slices, std::mem::take(&mut objs.endpoint_slices));
        give_back::<Pod>(&mut s.pods, std::mem::take(&mut objs.pods));
        give_back::<Node>(&mut s.nodes, std::mem::take(&mut objs.nodes));
        drop(s);
        match result {
            Ok(t) => Some(t),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Events fed by hand, for tests of what reads the stores (the watches' own path: [`Shared`]).
#[cfg(test)]
impl View {
    /// Every kind listed at once, as the watches' first LISTs leave the stores.
    pub(crate) fn list_for_test(&self, objs: ClusterObjects) {
        fn slim<K: Slim>(mut v: Vec<K>) -> Vec<K> {
            v.iter_mut().for_each(Slim::slim);
            v
        }
        self.0.replace::<Service>(Kind::Services, slim(objs.services));
        self.0
            .replace::<EndpointSlice>(Kind::EndpointSlices, objs.endpoint_slices);
        self.0.replace::<Pod>(Kind::Pods, slim(objs.pods));
        self.0.replace::<Node>(Kind::Nodes, slim(objs.nodes));
    }
    pub(crate) fn apply_for_test<K: Stored>(&self, obj: K) {
        self.0.apply(obj);
    }
    pub(crate) fn delete_for_test<K: Stored>(&self, obj: &K) {
        self.0.delete(obj);
    }
}

/// The watches, on a thread of their own (decoding a 10,000-Service LIST takes a while, and the
/// caller's loop must not wait for it). Dropping it stops them.
pub struct Watch {
    view: View,
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watch {
    /// Starts watching with `client`. This node is `hint`'s flag or variable, else the Node with one
    /// of the host's addresses (one LIST of Nodes, retried until it answers). The thread is
    /// created in the caller's network namespace, and connects from there.
    pub fn start(client: Client, hint: NodeHint) -> std::io::Result<Watch> {
        let view = View::default();
        let stop = CancellationToken::new();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let (shared, token) = (view.0.clone(), stop.clone());
        let thread = std::thread::Builder::new().name("d8-api-watch".into()).spawn(move || {
            runtime.block_on(async move {
                tokio::select! {
                    () = watch_all(client, hint, shared) => {}
                    () = token.cancelled() => {}
                }
            });
            // Dropping the runtime here ends every watch task.
        })?;
        Ok(Watch {
            view,
            stop,
            thread: Some(thread),
        })
    }

    pub fn view(&self) -> View {
        self.view.clone()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn watch_all(client: Client, hint: NodeHint, shared: Arc<Shared>) {
    let services = tokio::spawn(watch_kind::<Service>(
        Api::all(client.clone()),
        Selectors::default(),
        Kind::Services,
        shared.clone(),
    ));
    let slices = tokio::spawn(watch_kind::<EndpointSlice>(
        Api::all(client.clone()),
        Selectors::default(),
        Kind::EndpointSlices,
        shared.clone(),
    ));
    let version = tokio::spawn(server_version(client.clone(), shared.clone()));
    let node = this_node(&client, &hint, &shared).await;
    shared.lock().node = Some(node.clone());
    let pods = tokio::spawn(watch_kind::<Pod>(
        Api::all(client.clone()),
        Selectors::fields(format!("spec.nodeName={}", node.0)),
        Kind::Pods,
        shared.clone(),
    ));
    let nodes = tokio::spawn(watch_kind::<Node>(
        Api::all(client),
        Selectors::fields(format!("metadata.name={}", node.0)),
        Kind::Nodes,
        shared,
    ));
    // The watches run until the runtime is dropped; a panic in one is a bug: report it.
    for (what, task) in [
        ("services", services),
        ("endpointslices", slices),
        ("pods", pods),
        ("nodes", nodes),
    ] {
        if let Err(e) = task.await {
            tracing::error!("the {what} watch stopped: {e}");
        }
    }
    let _ = version.await;
}

/// This node's name: the flag or `NODE_NAME`, else the Node holding a host address (listed until
/// the API answers and one matches).
async fn this_node(client: &Client, hint: &NodeHint, shared: &Shared) -> (String, NodeSource) {
    if let Some(n) = hint.select(&[]) {
        return n;
    }
    let mut backoff = Backoff::default();
    loop {
        shared.lists.fetch_add(1, Ordering::Relaxed);
        match list_page::<Node>(&Api::all(client.clone()), &ListParams::default(), Kind::Nodes).await {
            Ok(list) => match hint.select(&list.items) {
                Some(n) => return n,
                None => tracing::warn!(
                    "no Node has one of this host's addresses ({:?}); set NODE_NAME or --node",
                    hint.host_ips
                ),
            },
            Err(e) => shared.failed(Kind::Nodes, describe_list(&e)),
        }
        backoff.wait().await;
    }
}

/// The server's version, asked until it answers once (version skew).
async fn server_version(client: Client, shared: Arc<Shared>) {
    let mut backoff = Backoff::default();
    loop {
        if let Ok(Ok(info)) = tokio::time::timeout(super::DEFAULT_TIMEOUT, client.apiserver_version()).await {
            let mut s = shared.lock();
            s.server_version = Some(info.git_version);
            s.touched.all = true;
            drop(s);
            shared.changed();
            return;
        }
        backoff.wait().await;
    }
}

#[derive(Debug, Clone, Default)]
struct Selectors {
    fields: Option<String>,
}

impl Selectors {
    fn fields(f: String) -> Self {
        Selectors { fields: Some(f) }
    }
}

/// Why a watch stopped.
enum Stop {
    /// Resume from the same resourceVersion (after a backoff when `failed`).
    Resume { failed: bool },
    /// The resourceVersion is gone or events may have been lost: LIST again.
    Relist,
}

/// LIST then WATCH `K` forever (see the module's comment).
async fn watch_kind<K: Stored>(api: Api<K>, sel: Selectors, kind: Kind, shared: Arc<Shared>) {
    let mut backoff = Backoff::default();
    loop {
        let version = match list_all(&api, &sel, kind, &shared).await {
            Ok((items, version)) => {
                shared.replace::<K>(kind, items);
                shared.answered(kind);
                backoff.reset();
                version
            }
            Err(e) => {
                shared.failed(kind, describe_list(&e));
                backoff.wait().await;
                continue;
            }
        };
        let mut version = version;
        loop {
            match watch_once(&api, &sel, kind, &shared, &mut version, &mut backoff).await {
                Stop::Resume { failed: false } => {}
                Stop::Resume { failed: true } => backoff.wait().await,
                Stop::Relist => {
                    backoff.wait().await;
                    break;
                }
            }
        }
    }
}

/// One WATCH from `version`, applying its events until it ends.
async fn watch_once<K: Stored>(
    api: &Api<K>,
    sel: &Selectors,
    kind: Kind,
    shared: &Shared,
    version: &mut String,
    backoff: &mut Backoff,
) -> Stop {
    let params = WatchParams {
        field_selector: sel.fields.clone(),
        timeout: Some(WATCH_SECS),
        bookmarks: true,
        ..WatchParams::default()
    };
    shared.watches.fetch_add(1, Ordering::Relaxed);
    let started = Instant::now();
    let stream = match tokio::time::timeout(super::DEFAULT_TIMEOUT, api.watch(&params, version)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            let gone = matches!(&e, kube::Error::Api(s) if s.code == 410);
            shared.failed(
                kind,
                format!("cannot watch {} from the Kubernetes API: {}", kind.name(), describe(&e)),
            );
            return if gone {
                Stop::Relist
            } else {
                Stop::Resume { failed: true }
            };
        }
        Err(_) => {
            shared.failed(kind, timeout_text(kind, "watch"));
            return Stop::Resume { failed: true };
        }
    };
    // The watch started; the API answers once it sent an event, or nothing wrong for a while (a
    // server that answers 200 with garbage fails on its first line).
    let mut confirmed = false;
    let mut stream = std::pin::pin!(stream);
    let mut events = 0u64;
    loop {
        let wait = if confirmed { WATCH_IDLE } else { CONFIRM_AFTER };
        let next = match tokio::time::timeout(wait, stream.next()).await {
            Ok(next) => next,
            Err(_) if !confirmed => {
                confirmed = true;
                shared.answered(kind);
                backoff.reset();
                continue;
            }
            Err(_) => {
                tracing::info!(
                    "the {} watch was silent for {} s; resuming it",
                    kind.name(),
                    WATCH_IDLE.as_secs()
                );
                return Stop::Resume { failed: false };
            }
        };
        match next {
            Some(Ok(event)) => {
                events += 1;
                if !confirmed {
                    confirmed = true;
                    shared.answered(kind);
                }
                match event {
                    WatchEvent::Added(o) | WatchEvent::Modified(o) => {
                        remember(version, &o);
                        shared.apply(o);
                    }
                    WatchEvent::Deleted(o) => {
                        remember(version, &o);
                        shared.delete(&o);
                    }
                    WatchEvent::Bookmark(b) => *version = b.metadata.resource_version,
                    WatchEvent::Error(status) if status.code == 410 => {
                        tracing::info!("the {} watch expired (410 Gone); listing again", kind.name());
                        return Stop::Relist;
                    }
                    WatchEvent::Error(status) => {
                        shared.failed(
                            kind,
                            format!("the {} watch failed: {} ({})", kind.name(), status.message, status.code),
                        );
                        return Stop::Resume { failed: true };
                    }
                }
                backoff.reset();
            }
            // A line that is not an event: whatever it carried is lost, so list again.
            Some(Err(e @ (kube::Error::SerdeError(_) | kube::Error::Api(_)))) => {
                shared.failed(
                    kind,
                    format!("the {} watch sent what it should not: {}", kind.name(), describe(&e)),
                );
                return Stop::Relist;
            }
            Some(Err(e)) => {
                shared.failed(kind, format!("the {} watch broke: {}", kind.name(), describe(&e)));
                return Stop::Resume { failed: true };
            }
            // The server ended the watch (its timeout) or the connection closed: resume at once,
            // unless it ended as soon as it began, which would otherwise spin.
            None => {
                return Stop::Resume {
                    failed: events == 0 && started.elapsed() < Duration::from_secs(1),
                };
            }
        }
    }
}

/// A kube error in one line: the server's own status in words (kube's text carries its whole
/// debug form), with what to do about a 403.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => format!(
            "{} ({} {}): the service account needs get, list and watch on services, \
             endpointslices, pods and nodes (deploy/rbac.yaml)",
            s.message, s.code, s.reason
        ),
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        e => crate::error_chain(e),
    }
}

/// [`describe`] for a failed LIST.
fn describe_list(e: &Error) -> String {
    match e {
        Error::List { what, source } => format!("cannot list {what} from the Kubernetes API: {}", describe(source)),
        e => crate::error_chain(e),
    }
}

fn remember<K: Resource>(version: &mut String, o: &K) {
    if let Some(v) = o.meta().resource_version.as_ref().filter(|v| !v.is_empty()) {
        version.clone_from(v);
    }
}

fn timeout_text(kind: Kind, verb: &str) -> String {
    format!(
        "the Kubernetes API did not answer within {} s ({verb} {})",
        super::DEFAULT_TIMEOUT.as_secs(),
        kind.name()
    )
}

/// Every page of a LIST, and the list's resourceVersion to watch from.
async fn list_all<K: Stored>(
    api: &Api<K>,
    sel: &Selectors,
    kind: Kind,
    shared: &Shared,
) -> Result<(Vec<K::Kept>, String), Error> {
    let mut params = ListParams::default().limit(PAGE_SIZE);
    if let Some(f) = &sel.fields {
        params = params.fields(f);
    }
    let mut items = Vec::new();
    loop {
        shared.lists.fetch_add(1, Ordering::Relaxed);
        let page = list_page(api, &params, kind).await?;
        // Kept page by page: a whole LIST of full objects is never held.
        items.extend(page.items.into_iter().map(K::keep));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => {
                let version = page.metadata.resource_version.filter(|v| !v.is_empty());
                return version
                    .map(|v| (items, v))
                    .ok_or(Error::NoVersion { what: kind.name() });
            }
        }
    }
}

async fn list_page<K: Stored>(
    api: &Api<K>,
    params: &ListParams,
    kind: Kind,
) -> Result<kube::core::ObjectList<K>, Error> {
    tokio::time::timeout(super::DEFAULT_TIMEOUT, api.list(params))
        .await
        .map_err(|_| Error::Timeout {
            what: kind.name(),
            secs: super::DEFAULT_TIMEOUT.as_secs(),
        })?
        .map_err(|source| Error::List {
            what: kind.name(),
            source,
        })
}

/// Exponential backoff with jitter, from [`BACKOFF_MIN`] to [`BACKOFF_MAX`]; reset by a success.
#[derive(Debug, Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = BACKOFF_MIN.saturating_mul(2u32.saturating_pow(self.failures.min(10)));
        self.failures += 1;
        let base = base.min(BACKOFF_MAX);
        // Up to +25 %, so a thousand nodes that lost the API together do not come back together.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.next()).await;
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::default();
        let first = b.next();
        assert!(first >= BACKOFF_MIN && first <= BACKOFF_MIN.mul_f64(1.25), "{first:?}");
        let second = b.next();
        assert!(second >= BACKOFF_MIN * 2, "{second:?}");
        for _ in 0..20 {
            let d = b.next();
            assert!(d <= BACKOFF_MAX.mul_f64(1.25), "{d:?}");
        }
        assert!(b.next() >= BACKOFF_MAX);
        b.reset();
        assert!(b.next() <= BACKOFF_MIN.mul_f64(1.25));
    }

    #[test]
    fn stores_follow_lists_and_events_and_keep_their_view_while_failing() {
        let shared = Arc::new(Shared::default());
        let view = View(shared.clone());
        let svc = |name: &str| {
            let mut s = Service::default();
            s.metadata.namespace = Some("default".into());
            s.metadata.name = Some(name.into());
            s.metadata.annotations = Some([("big".to_string(), "x".repeat(100))].into());
            s
        };
        assert!(view.objects().is_none(), "nothing before every kind is listed");
        let slimmed = |mut s: Service| {
            s.slim();
            s
        };
        shared.replace::<Service>(Kind::Services, vec![slimmed(svc("a")), slimmed(svc("b"))]);
        shared.replace::<EndpointSlice>(Kind::EndpointSlices, vec![]);
        shared.replace::<Pod>(Kind::Pods, vec![]);
        assert!(!view.health().synced);
        shared.replace::<Node>(Kind::Nodes, vec![]);
        let g = view.generation();
        assert!(view.health().up);
        shared.delete(&svc("a"));
        shared.apply(svc("c"));
        assert!(view.generation() > g);
        let (objs, _) = view.objects().unwrap();
        let names: Vec<_> = objs.services.iter().map(|s| s.metadata.name.clone().unwrap()).collect();
        assert_eq!(names, ["b", "c"]);
        assert!(objs.services[0].metadata.annotations.is_none(), "stripped");
        let lent = view.with_objects(|objs, _| objs.services.len()).unwrap();
        assert_eq!(lent, 2);
        assert_eq!(view.objects().unwrap().0.services.len(), 2, "given back after lending");
        shared.apply(svc("d"));
        assert_eq!(
            view.objects().unwrap().0.services.len(),
            3,
            "events apply after lending"
        );
        shared.delete(&svc("d"));

        shared.failed(Kind::Pods, "boom".into());
        let h = view.health();
        assert!(!h.up && h.synced && h.stale_for.is_some() && h.last_error.as_deref() == Some("boom"));
        assert_eq!(view.objects().unwrap().0.services.len(), 2, "the last view is kept");
        shared.answered(Kind::Pods);
        assert!(view.health().up && view.health().stale_for.is_none());
    }
}
