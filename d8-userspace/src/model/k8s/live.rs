//! The live Kubernetes API through kube-rs: list Nodes, this node's Pods, Services and
//! EndpointSlices, and the server version, then hand them to the same enrichment as a snapshot.
//!
//! Thin on purpose: everything that interprets objects is in [`super::enrich`](mod@super::enrich) and tested with
//! literal objects. Every request has a short timeout, and [`load`] turns any failure (no
//! kubeconfig, API unreachable, RBAC) into a warning so the verdict falls back to the rules alone.
//! Lists are paginated (500 per page) so a large cluster does not arrive as one huge response.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde::de::DeserializeOwned;

use super::node::{NodeHint, NodeSource, select_node};
use super::{ClusterObjects, Error, Result};

/// Default timeout of each API request: an on-call tool must not hang on a sick control plane.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Objects per list page.
const PAGE_SIZE: u32 = 500;

/// What [`load`] got: the objects and this node, or a warning saying why not.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// `None` when the API could not be used.
    pub objects: Option<ClusterObjects>,
    /// This node's name and how it was found.
    pub node: Option<(String, NodeSource)>,
    /// Why the API could not be used (to print as a `d8-trace:` warning and add to the model).
    pub warning: Option<String>,
}

/// Builds a client from `kubeconfig`, or, without one, from `$KUBECONFIG`, `~/.kube/config` or the
/// in-cluster service account (kube's inference order), with `timeout` on connect, read and write.
pub async fn client(kubeconfig: Option<&Path>, timeout: Duration) -> Result<Client> {
    build(kubeconfig, timeout, Some(timeout)).await
}

/// [`client`] for watches: `timeout` on connecting and writing, none on reading, since a watch
/// waits minutes for its next event (the watch itself notices a silent connection).
pub async fn watch_client(kubeconfig: Option<&Path>, timeout: Duration) -> Result<Client> {
    build(kubeconfig, timeout, None).await
}

async fn build(kubeconfig: Option<&Path>, timeout: Duration, read_timeout: Option<Duration>) -> Result<Client> {
    let shown = kubeconfig.map(|p| p.display().to_string());
    let config_err = |e: Box<dyn std::error::Error + Send + Sync>| Error::Config {
        kubeconfig: shown.clone(),
        source: e,
    };
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| config_err(Box::new(e)))?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|e| config_err(Box::new(e)))?
        }
        None => Config::infer().await.map_err(|e| config_err(Box::new(e)))?,
    };
    config.connect_timeout = Some(timeout);
    config.read_timeout = read_timeout;
    config.write_timeout = Some(timeout);
    Client::try_from(config).map_err(|e| config_err(Box::new(e)))
}

/// Lists what the model needs with `client`. Nodes come first so this node is known before Pods
/// are listed: only its Pods matter (their probe ports, its kube-proxy pod), which keeps the
/// largest list small. Without a node, all Pods are listed.
pub async fn fetch(
    client: &Client,
    hint: &NodeHint,
    timeout: Duration,
) -> Result<(ClusterObjects, Option<(String, NodeSource)>)> {
    let nodes: Vec<Node> = list_all(Api::all(client.clone()), ListParams::default(), "nodes", timeout).await?;
    let node = select_node(hint.flag.as_deref(), hint.env.as_deref(), &nodes, &hint.host_ips);
    let pod_params = match &node {
        Some((name, _)) => ListParams::default().fields(&format!("spec.nodeName={name}")),
        None => ListParams::default(),
    };
    let pods: Vec<Pod> = list_all(Api::all(client.clone()), pod_params, "pods", timeout).await?;
    let services: Vec<Service> = list_all(Api::all(client.clone()), ListParams::default(), "services", timeout).await?;
    let endpoint_slices: Vec<EndpointSlice> = list_all(
        Api::all(client.clone()),
        ListParams::default(),
        "endpointslices",
        timeout,
    )
    .await?;
    // The version is a nicety (version skew): its failure is not the API's failure.
    let server_version = tokio::time::timeout(timeout, client.apiserver_version())
        .await
        .ok()
        .and_then(|r| r.ok())
        .map(|info| info.git_version);
    let mut objs = ClusterObjects {
        services,
        endpoint_slices: endpoint_slices.into_iter().map(Into::into).collect(),
        pods,
        nodes,
        server_version,
        warnings: Vec::new(),
    };
    objs.strip_unread();
    Ok((objs, node))
}

/// [`client`] then [`fetch`]; any failure becomes [`Loaded::warning`], never an error, so the caller
/// goes on with the rules alone.
pub async fn load(kubeconfig: Option<&Path>, hint: &NodeHint, timeout: Duration) -> Loaded {
    let result = async {
        let c = client(kubeconfig, timeout).await?;
        fetch(&c, hint, timeout).await
    }
    .await;
    match result {
        Ok((objects, node)) => Loaded {
            objects: Some(objects),
            node,
            warning: None,
        },
        Err(e) => Loaded {
            objects: None,
            node: None,
            warning: Some(format!(
                "{}; continuing without the Kubernetes API (rules-only verdict)",
                chain(&e)
            )),
        },
    }
}

/// All pages of a list, each request bounded by `timeout`.
async fn list_all<K>(api: Api<K>, params: ListParams, what: &'static str, timeout: Duration) -> Result<Vec<K>>
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE_SIZE);
    loop {
        let page = tokio::time::timeout(timeout, api.list(&params))
            .await
            .map_err(|_| Error::Timeout {
                what,
                secs: timeout.as_secs().max(1),
            })?
            .map_err(|source| Error::List { what, source })?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

/// `error: cause: cause`, for a one-line warning.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
