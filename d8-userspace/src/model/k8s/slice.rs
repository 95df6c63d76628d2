//! EndpointSlices as the fold reads them: a struct of the project's instead of k8s-openapi's.
//!
//! The daemon keeps every EndpointSlice of the cluster for as long as it runs. k8s-openapi's
//! structs hold every field of the API inline (an endpoint's `targetRef` alone is seven optional
//! strings, a slice's metadata a score of optional fields and two maps for one label and one
//! annotation): at 10,000 slices of 5 endpoints about 40 MiB of decoded objects beside the
//! stores' maps, in the daemon's peak (BENCHMARKS.md, "The daemon at 10,000 Services"). Here an
//! endpoint is what [`enrich`](super::enrich) reads and no more, each string boxed to its length.
//!
//! Every source converts as it decodes ([`Slice::from`]): the snapshot file, the one-shot LIST,
//! the watches. A field added to what enrich reads must be added here; the test below checks
//! each kept field against the API object it came from, on the fixture and a lab snapshot.

use k8s_openapi::api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice};

use crate::model::ServiceRef;

/// Label linking an EndpointSlice to its Service.
pub(crate) const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Annotation the EndpointSlice controller writes with the time of the last Service or Pod change
/// the slice reflects (kube-proxy's lag is measured from it).
pub(crate) const LAST_CHANGE_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";

/// One EndpointSlice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slice {
    pub namespace: Option<Box<str>>,
    pub name: Option<Box<str>>,
    /// The `kubernetes.io/service-name` label: the Service it belongs to.
    pub service: Option<Box<str>>,
    /// The `endpoints.kubernetes.io/last-change-trigger-time` annotation, as written.
    pub last_change: Option<Box<str>>,
    /// `addressType`: `IPv4`, `IPv6` or `FQDN`.
    pub address_type: Box<str>,
    /// `ports`.
    pub ports: Box<[SlicePort]>,
    pub endpoints: Box<[SliceEndpoint]>,
}

/// One entry of a slice's `ports`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlicePort {
    pub name: Option<Box<str>>,
    pub port: Option<i32>,
    pub protocol: Option<Box<str>>,
}

/// One endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SliceEndpoint {
    pub addresses: Box<[Box<str>]>,
    /// `conditions.ready`, `.serving`, `.terminating` (absent conditions: all `None`).
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
    /// `nodeName`.
    pub node: Option<Box<str>>,
    /// `targetRef` when it is a Pod: its namespace (when the reference names one) and name.
    pub pod_namespace: Option<Box<str>>,
    pub pod_name: Option<Box<str>>,
    /// `hints.forZones[].name`, `hints.forNodes[].name`.
    pub zone_hints: Box<[Box<str>]>,
    pub node_hints: Box<[Box<str>]>,
}

fn boxed(s: Option<String>) -> Option<Box<str>> {
    s.map(String::into_boxed_str)
}

impl From<EndpointSlice> for Slice {
    fn from(s: EndpointSlice) -> Self {
        let m = s.metadata;
        let mut labels = m.labels.unwrap_or_default();
        let mut annotations = m.annotations.unwrap_or_default();
        Slice {
            namespace: boxed(m.namespace),
            name: boxed(m.name),
            service: boxed(labels.remove(SERVICE_NAME_LABEL)),
            last_change: boxed(annotations.remove(LAST_CHANGE_ANNOTATION)),
            address_type: s.address_type.into_boxed_str(),
            ports: s.ports.unwrap_or_default().into_iter().map(SlicePort::from).collect(),
            endpoints: s.endpoints.into_iter().map(SliceEndpoint::from).collect(),
        }
    }
}

impl From<EndpointPort> for SlicePort {
    fn from(p: EndpointPort) -> Self {
        SlicePort {
            name: boxed(p.name),
            port: p.port,
            protocol: boxed(p.protocol),
        }
    }
}

impl From<Endpoint> for SliceEndpoint {
    fn from(e: Endpoint) -> Self {
        let c = e.conditions.unwrap_or_default();
        let (pod_namespace, pod_name) = match e.target_ref {
            Some(r) if r.kind.as_deref() == Some("Pod") => (boxed(r.namespace), boxed(r.name)),
            _ => (None, None),
        };
        let hints = e.hints.unwrap_or_default();
        SliceEndpoint {
            addresses: e.addresses.into_iter().map(String::into_boxed_str).collect(),
            ready: c.ready,
            serving: c.serving,
            terminating: c.terminating,
            node: boxed(e.node_name),
            pod_namespace,
            pod_name,
            zone_hints: hints
                .for_zones
                .unwrap_or_default()
                .into_iter()
                .map(|z| z.name.into_boxed_str())
                .collect(),
            node_hints: hints
                .for_nodes
                .unwrap_or_default()
                .into_iter()
                .map(|n| n.name.into_boxed_str())
                .collect(),
        }
    }
}

impl Slice {
    /// `namespace/name`, the key the watches store it under.
    pub fn key(&self) -> String {
        format!(
            "{}/{}",
            self.namespace.as_deref().unwrap_or_default(),
            self.name.as_deref().unwrap_or_default()
        )
    }

    /// The Service it belongs to (its `kubernetes.io/service-name` label and its namespace).
    pub fn owner(&self) -> Option<ServiceRef> {
        Some(ServiceRef {
            namespace: self.namespace.as_deref()?.to_string(),
            name: self.service.as_deref()?.to_string(),
        })
    }
}

/// Back to the API's form, with what [`Slice`] keeps: for tests that change a slice as a watch
/// event would and apply it.
#[cfg(test)]
impl From<&Slice> for EndpointSlice {
    fn from(s: &Slice) -> Self {
        use k8s_openapi::api::core::v1::ObjectReference;
        use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointHints, ForNode, ForZone};
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
        let text = |b: &Option<Box<str>>| b.as_deref().map(str::to_string);
        let one = |k: &str, v: &Option<Box<str>>| v.as_deref().map(|v| [(k.to_string(), v.to_string())].into());
        let list = |v: &[Box<str>]| (!v.is_empty()).then(|| v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        EndpointSlice {
            metadata: ObjectMeta {
                namespace: text(&s.namespace),
                name: text(&s.name),
                labels: one(SERVICE_NAME_LABEL, &s.service),
                annotations: one(LAST_CHANGE_ANNOTATION, &s.last_change),
                ..ObjectMeta::default()
            },
            address_type: s.address_type.to_string(),
            ports: (!s.ports.is_empty()).then(|| {
                s.ports
                    .iter()
                    .map(|p| EndpointPort {
                        name: text(&p.name),
                        port: p.port,
                        protocol: text(&p.protocol),
                        app_protocol: None,
                    })
                    .collect()
            }),
            endpoints: s
                .endpoints
                .iter()
                .map(|e| Endpoint {
                    addresses: e.addresses.iter().map(|a| a.to_string()).collect(),
                    conditions: (e.ready.is_some() || e.serving.is_some() || e.terminating.is_some()).then_some(
                        EndpointConditions {
                            ready: e.ready,
                            serving: e.serving,
                            terminating: e.terminating,
                        },
                    ),
                    node_name: text(&e.node),
                    target_ref: e.pod_name.as_ref().map(|n| ObjectReference {
                        kind: Some("Pod".into()),
                        namespace: text(&e.pod_namespace),
                        name: Some(n.to_string()),
                        ..ObjectReference::default()
                    }),
                    hints: (!e.zone_hints.is_empty() || !e.node_hints.is_empty()).then(|| EndpointHints {
                        for_zones: list(&e.zone_hints).map(|z| z.into_iter().map(|name| ForZone { name }).collect()),
                        for_nodes: list(&e.node_hints).map(|n| n.into_iter().map(|name| ForNode { name }).collect()),
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::EndpointSlice;

    use super::*;

    /// Every EndpointSlice of the fixture snapshot and of a lab snapshot (hints, terminating
    /// endpoints, pods).
    fn api_slices() -> Vec<EndpointSlice> {
        let fixture = std::fs::read_to_string(crate::model::k8s::tests::fixture()).unwrap();
        let lab = crate::lab::snapshot::snapshot(&crate::lab::ClusterSpec::new()).to_string();
        [fixture, lab]
            .iter()
            .flat_map(|text| {
                let v: serde_json::Value = serde_json::from_str(text).unwrap();
                v["items"].as_array().unwrap().clone()
            })
            .filter(|i| i["kind"] == "EndpointSlice")
            .map(|i| serde_json::from_value(i).unwrap())
            .collect()
    }

    #[test]
    fn a_slice_keeps_every_field_the_fold_reads() {
        let slices = api_slices();
        assert!(slices.len() >= 3, "too few slices to prove anything: {}", slices.len());
        let s = |v: &Option<Box<str>>| v.as_deref().map(str::to_string);
        let mut endpoints = 0;
        for api in slices {
            let kept = Slice::from(api.clone());
            let m = &api.metadata;
            assert_eq!(s(&kept.namespace), m.namespace);
            assert_eq!(s(&kept.name), m.name);
            assert_eq!(
                s(&kept.service),
                m.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL)).cloned()
            );
            assert_eq!(
                s(&kept.last_change),
                m.annotations
                    .as_ref()
                    .and_then(|a| a.get(LAST_CHANGE_ANNOTATION))
                    .cloned()
            );
            assert_eq!(&*kept.address_type, api.address_type);
            let ports = api.ports.clone().unwrap_or_default();
            assert_eq!(kept.ports.len(), ports.len());
            for (k, p) in kept.ports.iter().zip(&ports) {
                assert_eq!(
                    (s(&k.name), k.port, s(&k.protocol)),
                    (p.name.clone(), p.port, p.protocol.clone())
                );
            }
            assert_eq!(kept.endpoints.len(), api.endpoints.len());
            for (k, e) in kept.endpoints.iter().zip(&api.endpoints) {
                endpoints += 1;
                let addresses: Vec<String> = k.addresses.iter().map(|a| a.to_string()).collect();
                assert_eq!(addresses, e.addresses);
                let c = e.conditions.clone().unwrap_or_default();
                assert_eq!((k.ready, k.serving, k.terminating), (c.ready, c.serving, c.terminating));
                assert_eq!(s(&k.node), e.node_name);
                let pod = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"));
                assert_eq!(s(&k.pod_name), pod.and_then(|r| r.name.clone()));
                assert_eq!(s(&k.pod_namespace), pod.and_then(|r| r.namespace.clone()));
                let hints = e.hints.clone().unwrap_or_default();
                let zones: Vec<String> = hints
                    .for_zones
                    .unwrap_or_default()
                    .into_iter()
                    .map(|z| z.name)
                    .collect();
                let nodes: Vec<String> = hints
                    .for_nodes
                    .unwrap_or_default()
                    .into_iter()
                    .map(|n| n.name)
                    .collect();
                assert_eq!(k.zone_hints.iter().map(|z| z.to_string()).collect::<Vec<_>>(), zones);
                assert_eq!(k.node_hints.iter().map(|n| n.to_string()).collect::<Vec<_>>(), nodes);
            }
            // The way back (for tests that change a slice as a watch would) loses nothing kept.
            assert_eq!(Slice::from(EndpointSlice::from(&kept)), kept);
        }
        assert!(endpoints >= 3, "too few endpoints to prove anything: {endpoints}");
    }
}
