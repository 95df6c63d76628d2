//! API objects cut down to what [`enrich`](super::enrich) and [`node`](super::node) read, as soon as
//! they arrive (EndpointSlices become a [`Slice`](super::Slice) instead, smaller still): a large cluster's objects are mostly what no verdict needs (managedFields,
//! `last-applied-configuration`, uids, owner references, Service selectors, a Node's image list),
//! and the daemon keeps every Service and EndpointSlice of the cluster for as long as it runs.
//!
//! Kept: names and namespaces; the labels and annotations read (listed here, next to the code
//! that reads them); everything of `spec` and `status` that enrich or node read. A field added to
//! those readers must be kept here too: `k8s::tests` folds a slimmed and a whole snapshot and
//! compares the models.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::enrich::{CONTROL_PLANE_LABEL, KUBE_PROXY_LABEL, SERVICE_PROXY_NAME_LABEL};
use crate::model::topology::ZONE_LABEL;

/// An API object that can drop what is never read.
pub trait Slim {
    fn slim(&mut self);
}

/// `map` with only `keys`; `None` when none of them is there.
fn only(map: Option<BTreeMap<String, String>>, keys: &[&str]) -> Option<BTreeMap<String, String>> {
    let kept: BTreeMap<String, String> = map?.into_iter().filter(|(k, _)| keys.contains(&k.as_str())).collect();
    (!kept.is_empty()).then_some(kept)
}

/// Name, namespace, and the labels and annotations named.
fn meta(m: &mut ObjectMeta, labels: &[&str], annotations: &[&str]) {
    let old = std::mem::take(m);
    *m = ObjectMeta {
        name: old.name,
        namespace: old.namespace,
        labels: only(old.labels, labels),
        annotations: only(old.annotations, annotations),
        ..ObjectMeta::default()
    };
}

impl Slim for Service {
    fn slim(&mut self) {
        meta(&mut self.metadata, &[SERVICE_PROXY_NAME_LABEL], &[]);
        if let Some(spec) = &mut self.spec {
            // kube-proxy programs from EndpointSlices; the selector is never read.
            spec.selector = None;
            if let Some(ports) = &mut spec.ports {
                ports.shrink_to_fit();
            }
        }
    }
}

impl Slim for Pod {
    fn slim(&mut self) {
        meta(&mut self.metadata, &[KUBE_PROXY_LABEL.0], &[]);
        if let Some(spec) = &mut self.spec {
            spec.volumes = None;
            spec.tolerations = None;
            spec.affinity = None;
            // Probes, ports, names and images are read (probe ports, kube-proxy's version).
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                c.env = None;
                c.env_from = None;
                c.volume_mounts = None;
                c.command = None;
                c.args = None;
                c.resources = None;
            }
        }
        if let Some(status) = &mut self.status {
            status.init_container_statuses = None;
        }
    }
}

impl Slim for Node {
    fn slim(&mut self) {
        meta(&mut self.metadata, &[ZONE_LABEL, CONTROL_PLANE_LABEL], &[]);
        if let Some(status) = &mut self.status {
            // A node's image list alone is tens of KiB.
            status.images = None;
            status.volumes_attached = None;
            status.volumes_in_use = None;
            status.config = None;
        }
    }
}
