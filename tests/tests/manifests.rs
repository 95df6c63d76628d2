//! The deployment manifests parse into Kubernetes types and keep the security settings the
//! README promises. No cluster and no root needed.

use k8s_openapi::api::{
    apps::v1::DaemonSet,
    core::v1::{Container, ServiceAccount},
    rbac::v1::ClusterRole,
};
use serde::Deserialize;

fn documents(path: &str) -> Vec<serde_norway::Value> {
    let text = std::fs::read_to_string(format!("{}/../deploy/{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    serde_norway::Deserializer::from_str(&text)
        .map(|d| serde_norway::Value::deserialize(d).unwrap())
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(docs: &[serde_norway::Value], kind: &str) -> Vec<T> {
    docs.iter()
        .filter(|d| d["kind"].as_str() == Some(kind))
        .map(|d| serde_norway::from_value(d.clone()).unwrap_or_else(|e| panic!("{kind} does not parse: {e}")))
        .collect()
}

fn container() -> (DaemonSet, Container) {
    let ds: Vec<DaemonSet> = of_kind(&documents("daemonset.yaml"), "DaemonSet");
    assert_eq!(ds.len(), 1);
    let ds = ds.into_iter().next().unwrap();
    let c = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap().containers[0].clone();
    (ds, c)
}

#[test]
fn daemonset_has_the_least_capabilities_that_work() {
    let (_, c) = container();
    let sc = c.security_context.expect("securityContext");
    assert_eq!(sc.privileged, Some(false));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.expect("capabilities");
    assert_eq!(caps.drop, Some(vec!["ALL".to_string()]));
    let mut add = caps.add.unwrap_or_default();
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "PERFMON"]);
}

#[test]
fn daemonset_runs_on_the_node_network_with_bounded_resources() {
    let (ds, c) = container();
    let pod = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(pod.service_account_name.as_deref(), Some("d8-trace"));
    let res = c.resources.expect("resources");
    for key in ["cpu", "memory"] {
        assert!(res.requests.as_ref().unwrap().contains_key(key), "request {key}");
        assert!(res.limits.as_ref().unwrap().contains_key(key), "limit {key}");
    }
    assert_eq!(c.args.unwrap()[0], "daemon");
    assert!(
        c.env.unwrap().iter().any(|e| e.name == "NODE_NAME"),
        "NODE_NAME from spec.nodeName"
    );
    assert_eq!(
        c.readiness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/readyz")
    );
    assert_eq!(
        c.liveness_probe.unwrap().http_get.unwrap().path.as_deref(),
        Some("/healthz")
    );
}

#[test]
fn cluster_role_only_reads_what_the_model_needs() {
    let docs = documents("rbac.yaml");
    let roles: Vec<ClusterRole> = of_kind(&docs, "ClusterRole");
    let sas: Vec<ServiceAccount> = of_kind(&docs, "ServiceAccount");
    assert_eq!(sas.len(), 1);
    let mut resources = Vec::new();
    for rule in roles[0].rules.as_ref().unwrap() {
        let mut verbs = rule.verbs.clone();
        verbs.sort();
        assert_eq!(verbs, ["get", "list", "watch"], "read-only verbs: {rule:?}");
        resources.extend(rule.resources.clone().unwrap_or_default());
    }
    resources.sort();
    assert_eq!(resources, ["endpointslices", "nodes", "pods", "services"]);
}
