//! The Kubernetes API side of the service model: Services, EndpointSlices, Pods and Nodes, read from
//! a snapshot file or the live API, folded into the [`crate::model::ServiceModel`].
//!
//! - [`snapshot`]: `--k8s-snapshot FILE`, the JSON List printed by
//!   `kubectl get services,endpointslices,pods,nodes -A -o json`.
//! - [`live`]: the live API through kube-rs, from a kubeconfig or the in-cluster config, with short
//!   timeouts; an unreachable API is a warning and a rules-only verdict, never a crash.
//! - [`watch`]: the live API for the daemon: one LIST per kind, then watches (resourceVersion,
//!   bookmarks, 410 relists, backoff); the last view is kept while the API is down.
//! - [`enrich`](mod@enrich): the one place both feed: API facts per Service, endpoint readiness and locality,
//!   Services the API has and the rules lack, pods' probe ports, node addresses. Pure.
//! - [`node`]: which Node is this one (`--node`, `NODE_NAME`, or the Node with this host's address).
//! - [`slim`]: objects cut down to what those read, as they arrive.
//! - [`slice`]: EndpointSlices in a struct of the project's, holding only what the fold reads.
//! - [`refold`]: the API's changes folded into a model one Service at a time (the daemon).
//!
//! Not here: kube-proxy's rules (`rules`), kube-proxy's health (`kube_proxy`), classification.

mod addr;
pub mod enrich;
pub mod live;
pub mod node;
pub mod refold;
pub mod slice;
pub mod slim;
pub mod snapshot;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};

use crate::model::ServiceModel;
pub use slice::Slice;

pub use enrich::{api_frontends, enrich};
pub use live::DEFAULT_TIMEOUT;
pub use node::{NodeHint, NodeSource, select_node};

/// Errors of the Kubernetes layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The snapshot file could not be read.
    #[error("cannot read Kubernetes snapshot {path}")]
    ReadSnapshot {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot is not JSON.
    #[error("Kubernetes snapshot {path} is not JSON")]
    SnapshotJson {
        /// The file.
        path: String,
        /// Where and why parsing stopped.
        #[source]
        source: serde_json::Error,
    },
    /// The snapshot is JSON but not a List of objects.
    #[error(
        "Kubernetes snapshot {path} is a {kind}, not a List: expected the output of \
         `kubectl get services,endpointslices,pods,nodes -A -o json`"
    )]
    NotAList {
        /// The file.
        path: String,
        /// What it is instead (`kind`, or `JSON array`, `object without kind`, ...).
        kind: String,
    },
    /// The client could not be configured (no kubeconfig, no in-cluster service account).
    #[error("cannot configure a Kubernetes client{}", .kubeconfig.as_deref().map(|p| format!(" from {p}")).unwrap_or_default())]
    Config {
        /// The kubeconfig given with `--kubeconfig`, if any.
        kubeconfig: Option<String>,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A list request failed.
    #[error("cannot list {what} from the Kubernetes API")]
    List {
        /// `services`, `endpointslices`, `pods`, `nodes`.
        what: &'static str,
        /// Why.
        #[source]
        source: kube::Error,
    },
    /// A list came without the resourceVersion a watch starts from.
    #[error("the Kubernetes API listed {what} without a resourceVersion, so they cannot be watched")]
    NoVersion {
        /// What was listed.
        what: &'static str,
    },
    /// A request took longer than the timeout.
    #[error("the Kubernetes API did not answer within {secs} s ({what})")]
    Timeout {
        /// What was being asked.
        what: &'static str,
        /// The timeout.
        secs: u64,
    },
}

/// Result alias of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The objects the model needs, from a snapshot or the live API.
#[derive(Debug, Clone, Default)]
pub struct ClusterObjects {
    /// All Services.
    pub services: Vec<Service>,
    /// All EndpointSlices, in the project's form ([`slice`]: what the fold reads).
    pub endpoint_slices: Vec<Slice>,
    /// Pods: all of them from a snapshot; this node's from the live API when the node is known.
    pub pods: Vec<Pod>,
    /// All Nodes.
    pub nodes: Vec<Node>,
    /// The API server's `gitVersion` (`v1.33.1`); `None` from a snapshot.
    pub server_version: Option<String>,
    /// Objects that could not be read (named by kind, namespace and name), skipped.
    pub warnings: Vec<String>,
}

impl ClusterObjects {
    /// Drops fields nothing reads ([`slim`]: managedFields, annotations such as
    /// last-applied-configuration, uids, selectors), which are most of a large cluster's bytes.
    /// EndpointSlices hold only what is read already ([`Slice`]).
    pub fn strip_unread(&mut self) {
        use slim::Slim;
        self.services.iter_mut().for_each(Slim::slim);
        self.pods.iter_mut().for_each(Slim::slim);
        self.nodes.iter_mut().for_each(Slim::slim);
    }
}

/// Where the API's view comes from, as the selection flags say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The live API: `--kubeconfig PATH`, or kube's inference (`$KUBECONFIG`, `~/.kube/config`,
    /// in-cluster) when `None`.
    Live {
        /// `--kubeconfig`.
        kubeconfig: Option<PathBuf>,
    },
    /// `--k8s-snapshot FILE`.
    Snapshot(PathBuf),
    /// `--no-k8s`: rules alone.
    Disabled,
    /// The daemon's watches of the live API: the objects as the last events left them.
    Watched(watch::View),
}

/// What [`apply`] did, for `classify::Context` and the user.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// The API's view was folded into the model: `classify::Context::api_consulted`.
    pub api_consulted: bool,
    /// This node, and how it was found (`None`: unknown, locality stays unknown).
    pub node: Option<(String, NodeSource)>,
    /// Problems to print as `d8-trace: warning: ...` (they are in the model's warnings too).
    pub warnings: Vec<String>,
}

/// Folds the API's view from `source` into `model`.
///
/// ```no_run
/// use d8_trace::model::k8s::{DEFAULT_TIMEOUT, NodeHint, Source, apply};
/// use d8_trace::model::ServiceModel;
///
/// # async fn run() -> Result<(), d8_trace::model::k8s::Error> {
/// let mut model = ServiceModel::default(); // the rules' model
/// let hint = NodeHint { env: std::env::var("NODE_NAME").ok(), ..NodeHint::default() };
/// let applied = apply(&mut model, &Source::Live { kubeconfig: None }, &hint, DEFAULT_TIMEOUT).await?;
/// for w in &applied.warnings {
///     eprintln!("d8-trace: warning: {w}");
/// }
/// # Ok(())
/// # }
/// ```
///
/// A snapshot that cannot be read or is not a List is an error (the user named the file); objects
/// in it that do not parse are warnings. The live API failing (no kubeconfig, unreachable, RBAC,
/// `timeout` per request) is a warning and `api_consulted == false`: the verdict then rests on the
/// rules alone and says so.
pub async fn apply(model: &mut ServiceModel, source: &Source, hint: &NodeHint, timeout: Duration) -> Result<Applied> {
    match source {
        Source::Disabled => Ok(Applied {
            node: hint_only(hint),
            ..Applied::default()
        }),
        Source::Snapshot(path) => apply_snapshot(model, path, hint),
        Source::Watched(view) => Ok(apply_watched(model, view, hint)),
        Source::Live { kubeconfig } => {
            let loaded = live::load(kubeconfig.as_deref(), hint, timeout).await;
            match loaded.objects {
                Some(objs) => Ok(fold(model, &objs, loaded.node)),
                None => {
                    let warnings: Vec<String> = loaded.warning.into_iter().collect();
                    model.warnings.extend(
                        warnings
                            .iter()
                            .map(|w| crate::model::Warning::new(crate::model::WarningKind::Api, "the API", w.clone())),
                    );
                    Ok(Applied {
                        api_consulted: false,
                        node: hint_only(hint),
                        warnings,
                    })
                }
            }
        }
    }
}

/// [`apply`] for `--k8s-snapshot`, without a runtime.
pub fn apply_snapshot(model: &mut ServiceModel, path: &std::path::Path, hint: &NodeHint) -> Result<Applied> {
    let objs = snapshot::read_snapshot(path)?;
    let node = hint.select(&objs.nodes);
    Ok(fold(model, &objs, node))
}

/// [`apply`] for the daemon's watches. A view the API has not confirmed lately is still used (it
/// is the best there is, and verdicts must not flip to "unknown" for an API restart), with a
/// warning saying how old it is; before the first lists completed there is none.
fn apply_watched(model: &mut ServiceModel, view: &watch::View, hint: &NodeHint) -> Applied {
    let health = view.health();
    let because = health
        .last_error
        .as_deref()
        .map(|e| format!(" ({e})"))
        .unwrap_or_default();
    let folded = view.with_objects(|objs, node| {
        let node = node.or_else(|| hint.select(&objs.nodes));
        fold(model, objs, node)
    });
    let (mut applied, warning) = match folded {
        Some(applied) => {
            let warning = health.stale_for.map(|age| {
                format!(
                    "the Kubernetes API has not answered for {} s{because}: the API's view here is {} s old",
                    age.as_secs(),
                    age.as_secs()
                )
            });
            (applied, warning)
        }
        None => (
            Applied {
                api_consulted: false,
                node: hint_only(hint),
                warnings: Vec::new(),
            },
            Some(format!(
                "the Kubernetes API has not been listed yet{because}; continuing without it (rules-only verdict)"
            )),
        ),
    };
    if let Some(w) = warning {
        model.warnings.push(crate::model::Warning::new(
            crate::model::WarningKind::Api,
            "the API",
            w.clone(),
        ));
        applied.warnings.push(w);
    }
    applied
}

fn fold(model: &mut ServiceModel, objs: &ClusterObjects, node: Option<(String, NodeSource)>) -> Applied {
    enrich(model, objs, node.as_ref().map(|(n, _)| n.as_str()));
    Applied {
        api_consulted: true,
        node,
        warnings: objs.warnings.clone(),
    }
}

/// Without Node objects, only `--node` and `NODE_NAME` can name this node.
fn hint_only(hint: &NodeHint) -> Option<(String, NodeSource)> {
    select_node(hint.flag.as_deref(), hint.env.as_deref(), &[], &[])
}

#[cfg(test)]
mod tests;

/// `(major, minor)` of `v1.31.2`, `1.31`, `v1.31.2-eks-1234`.
pub fn minor_version(v: &str) -> Option<(u32, u32)> {
    let v = v.trim().trim_start_matches('v');
    let mut parts = v.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.trim_end_matches('+').parse().ok()?;
    Some((major, minor))
}
