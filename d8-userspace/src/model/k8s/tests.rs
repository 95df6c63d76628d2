//! Tests of the snapshot reader, node selection and enrichment (with the committed snapshot
//! fixture), and of the live client against a real HTTP server on loopback serving list responses.

use std::net::IpAddr;
use std::path::PathBuf;

use super::enrich::enrich;
use super::node::{NodeSource, select_node};
use super::snapshot::{parse_snapshot, read_snapshot};
use super::*;
use crate::model::{
    Endpoint, Frontend, FrontendKind, ProbeKind, Protocol, RuleFacts, RuleRef, RuleSource, Service as ModelService,
    ServiceModel, ServiceRef,
};

pub(super) fn fixture() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/k8s/snapshot.json"))
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sref(ns: &str, name: &str) -> ServiceRef {
    ServiceRef {
        namespace: ns.into(),
        name: name.into(),
    }
}

#[test]
fn snapshot_reads_every_kind_of_the_kubectl_list() {
    let objs = read_snapshot(&fixture()).unwrap();
    assert_eq!(objs.services.len(), 4);
    assert_eq!(objs.endpoint_slices.len(), 3);
    assert_eq!(objs.pods.len(), 3);
    assert_eq!(objs.nodes.len(), 3);
    assert!(objs.warnings.is_empty(), "{:?}", objs.warnings);
    assert!(objs.server_version.is_none());
    // Unread bulk is stripped.
    assert!(
        objs.services
            .iter()
            .all(|s| s.metadata.managed_fields.is_none() && s.metadata.annotations.is_none())
    );
}

#[test]
fn snapshot_that_is_not_a_list_is_an_error_naming_the_kind() {
    let err = parse_snapshot(
        r#"{"apiVersion":"v1","kind":"Service","metadata":{"name":"x"}}"#,
        "one.json",
    )
    .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::NotAList { .. }), "{err:?}");
    assert!(msg.contains("one.json is a Service, not a List"), "{msg}");
    assert!(
        msg.contains("kubectl get services,endpointslices,pods,nodes -A -o json"),
        "{msg}"
    );

    let err = parse_snapshot("[]", "arr.json").unwrap_err();
    assert!(err.to_string().contains("is a JSON array"), "{err}");
    let err = parse_snapshot(r#"{"items": []}"#, "nokind.json").unwrap_err();
    assert!(err.to_string().contains("object without kind"), "{err}");
}

#[test]
fn snapshot_that_is_not_json_names_the_file() {
    let err = parse_snapshot("{\"kind\": \"List\", \"items\": [", "trunc.json").unwrap_err();
    assert!(matches!(err, Error::SnapshotJson { .. }));
    assert!(err.to_string().contains("trunc.json"), "{err}");
    let err = read_snapshot(std::path::Path::new("/nonexistent/snap.json")).unwrap_err();
    assert!(err.to_string().contains("/nonexistent/snap.json"), "{err}");
}

#[test]
fn a_bad_item_is_skipped_with_a_warning_and_the_rest_kept() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"a","name":"broken"},"spec":{"ports":"not a list"}},
        {"apiVersion":"v1","kind":"ConfigMap","metadata":{"namespace":"a","name":"cm"}},
        {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"a","name":"good"},"spec":{"clusterIP":"10.96.5.5","ports":[{"port":80}]}},
        {"metadata":{"name":"mystery"}}
    ]}"#;
    let objs = parse_snapshot(text, "mixed.json").unwrap();
    assert_eq!(objs.services.len(), 1);
    assert_eq!(objs.services[0].metadata.name.as_deref(), Some("good"));
    assert_eq!(objs.warnings.len(), 3, "{:?}", objs.warnings);
    assert!(
        objs.warnings[0].contains("item 0 (Service a/broken) does not parse"),
        "{}",
        objs.warnings[0]
    );
    assert!(
        objs.warnings[1].contains("item 1 is a ConfigMap (a/cm), not used"),
        "{}",
        objs.warnings[1]
    );
    assert!(
        objs.warnings[2].contains("item 3 (mystery) has no kind"),
        "{}",
        objs.warnings[2]
    );
}

#[test]
fn a_typed_list_without_item_kinds_is_read() {
    let text = r#"{"apiVersion":"v1","kind":"ServiceList","metadata":{"resourceVersion":"7"},"items":[
        {"metadata":{"namespace":"a","name":"s"},"spec":{"clusterIP":"10.96.5.5","ports":[{"port":80}]}}
    ]}"#;
    let objs = parse_snapshot(text, "typed.json").unwrap();
    assert_eq!(objs.services.len(), 1);
    assert!(objs.warnings.is_empty(), "{:?}", objs.warnings);
}

#[test]
fn node_is_the_flag_then_node_name_then_the_node_with_a_host_address() {
    let objs = read_snapshot(&fixture()).unwrap();
    let host = [ip("127.0.0.1"), ip("198.51.100.11")];
    assert_eq!(
        select_node(Some("node-7"), Some("node-2"), &objs.nodes, &host),
        Some(("node-7".into(), NodeSource::Flag))
    );
    assert_eq!(
        select_node(None, Some("node-2"), &objs.nodes, &host),
        Some(("node-2".into(), NodeSource::Env))
    );
    assert_eq!(
        select_node(None, Some(""), &objs.nodes, &host),
        Some(("node-1".into(), NodeSource::HostAddress))
    );
    assert_eq!(
        select_node(None, None, &objs.nodes, &[ip("10.0.0.2")]),
        Some(("node-2".into(), NodeSource::HostAddress))
    );
    assert_eq!(select_node(None, None, &objs.nodes, &[ip("127.0.0.1")]), None);
}

fn rule(name: &str, text: &str) -> RuleRef {
    RuleRef {
        source: RuleSource::Iptables,
        name: name.into(),
        text: text.into(),
    }
}

fn rules_endpoint(at: &str, sep: &str) -> Endpoint {
    let a: std::net::SocketAddr = at.parse().unwrap();
    Endpoint {
        ip: a.ip(),
        port: a.port(),
        protocol: Protocol::Tcp,
        port_name: "http".into(),
        in_rules: true,
        in_api: None,
        ready: None,
        local: None,
        node: None,
        pod: None,
        weight: Some(0.5),
        rule: Some(rule(
            sep,
            &format!("-A {sep} -p tcp -m tcp -j DNAT --to-destination {at}"),
        )),
    }
}

/// What a rule reader would give for the fixture's cluster on node-1, with two faults: shop/web's
/// rules still DNAT to 10.1.0.99 (a deleted pod), and shop/front is absent from the rules. The
/// rules also keep shop/gone, which the API no longer has.
fn rules_model() -> ServiceModel {
    let mut web = ModelService::new(sref("shop", "web"));
    web.frontends = vec![
        Frontend {
            kind: FrontendKind::ClusterIp,
            ip: ip("10.96.0.10"),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: Some(rule(
                "KUBE-SERVICES",
                "-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp --dport 80 -j KUBE-SVC-X",
            )),
        },
        Frontend {
            kind: FrontendKind::NodePort,
            ip: ip("10.0.0.1"),
            port: 30080,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: Some(rule(
                "KUBE-NODEPORTS",
                "-A KUBE-NODEPORTS -p tcp --dport 30080 -j KUBE-EXT-X",
            )),
        },
    ];
    web.endpoints = vec![
        rules_endpoint("10.1.0.7:8080", "KUBE-SEP-A"),
        rules_endpoint("10.1.0.99:8080", "KUBE-SEP-Z"),
    ];
    web.rules = RuleFacts {
        present: true,
        ..RuleFacts::default()
    };
    let mut gone = ModelService::new(sref("shop", "gone"));
    gone.endpoints = vec![rules_endpoint("10.1.0.50:80", "KUBE-SEP-G")];
    gone.rules.present = true;
    let mut kubernetes = ModelService::new(sref("default", "kubernetes"));
    kubernetes.rules.present = true;
    let mut model = ServiceModel {
        services: vec![web, gone, kubernetes],
        ..ServiceModel::default()
    };
    model.kube_proxy.rules_present = true;
    model.kube_proxy.running = Some(true);
    model
}

fn enriched() -> ServiceModel {
    let objs = read_snapshot(&fixture()).unwrap();
    let mut model = rules_model();
    enrich(&mut model, &objs, Some("node-1"));
    model
}

#[test]
fn enrich_sets_api_facts_and_adds_services_the_rules_lack() {
    let m = enriched();
    let web = m.service(&sref("shop", "web")).unwrap();
    assert_eq!(web.api.exists, Some(true));
    assert_eq!(web.api.service_type.as_deref(), Some("NodePort"));
    assert_eq!(web.api.external_traffic_policy_local, Some(true));
    assert_eq!(web.api.internal_traffic_policy_local, Some(false));
    assert_eq!(web.api.session_affinity_client_ip, Some(true));
    assert_eq!(web.api.proxied, Some(true));

    let front = m.service(&sref("shop", "front")).unwrap();
    assert!(!front.rules.present, "shop/front is absent from the rules");
    assert_eq!(front.api.exists, Some(true));
    assert_eq!(front.api.internal_traffic_policy_local, Some(true));
    let kinds: Vec<_> = front
        .frontends
        .iter()
        .map(|f| (f.kind, f.ip, f.port, f.protocol))
        .collect();
    assert_eq!(
        kinds,
        [
            (FrontendKind::ClusterIp, ip("10.96.0.30"), 53, Protocol::Udp),
            (FrontendKind::NodePort, ip("0.0.0.0"), 31053, Protocol::Udp),
            (FrontendKind::LoadBalancer, ip("203.0.113.7"), 53, Protocol::Udp),
        ]
    );
    assert!(front.frontends.iter().all(|f| f.rule.is_none()));

    let gone = m.service(&sref("shop", "gone")).unwrap();
    assert_eq!(gone.api.exists, Some(false));
    assert_eq!(gone.endpoints[0].in_api, Some(false));
}

#[test]
fn enrich_adds_api_frontends_missing_from_the_rules_once() {
    let m = enriched();
    let web = m.service(&sref("shop", "web")).unwrap();
    let fronts: Vec<_> = web
        .frontends
        .iter()
        .map(|f| (f.kind, f.ip, f.port, f.rule.is_some()))
        .collect();
    assert_eq!(
        fronts,
        [
            (FrontendKind::ClusterIp, ip("10.96.0.10"), 80, true),
            (FrontendKind::NodePort, ip("10.0.0.1"), 30080, true),
            (FrontendKind::ExternalIp, ip("192.0.2.50"), 80, false),
        ]
    );
}

#[test]
fn enrich_marks_endpoints_in_api_ready_local_and_stale() {
    let m = enriched();
    let web = m.service(&sref("shop", "web")).unwrap();
    let find = |a: &str| web.endpoints.iter().find(|e| e.ip == ip(a)).unwrap();
    let a = find("10.1.0.7");
    assert!(a.in_rules);
    assert_eq!((a.in_api, a.ready, a.local), (Some(true), Some(true), Some(true)));
    assert_eq!(a.pod.as_deref(), Some("shop/web-7d4b9c6f5-abcde"));
    assert_eq!(a.node.as_deref(), Some("node-1"));
    let b = find("10.1.1.8");
    assert!(!b.in_rules, "API-only endpoint added");
    assert_eq!((b.in_api, b.ready, b.local), (Some(true), Some(false), Some(false)));
    assert_eq!(b.port, 8080);
    assert_eq!(b.port_name, "http");
    let z = find("10.1.0.99");
    assert_eq!(
        z.in_api,
        Some(false),
        "the rules' DNAT target is not in the EndpointSlices"
    );

    let empty = m.service(&sref("shop", "empty")).unwrap();
    assert!(empty.endpoints.is_empty());
    assert_eq!(
        m.service(&sref("default", "kubernetes")).unwrap().endpoints[0].ip,
        ip("10.0.0.9")
    );
}

#[test]
fn enrich_collects_probe_ports_of_this_nodes_pods() {
    let m = enriched();
    let mut ports: Vec<_> = m
        .probe_ports
        .iter()
        .map(|p| (p.pod.as_str(), p.ip, p.port, p.probe))
        .collect();
    ports.sort_by_key(|p| p.2);
    assert_eq!(
        ports,
        [
            ("shop/web-7d4b9c6f5-abcde", ip("10.1.0.7"), 8080, ProbeKind::Liveness),
            ("shop/web-7d4b9c6f5-abcde", ip("10.1.0.7"), 9090, ProbeKind::Readiness),
            ("shop/web-7d4b9c6f5-abcde", ip("10.1.0.7"), 9091, ProbeKind::Startup),
        ],
        "named port resolved, node-2's pod and the host-network kube-proxy left out"
    );
}

#[test]
fn enrich_sets_node_addresses_and_versions() {
    let m = enriched();
    assert_eq!(m.node.as_deref(), Some("node-1"));
    assert_eq!(m.node_ips, [ip("10.0.0.1"), ip("198.51.100.11")]);
    assert_eq!(
        m.kube_proxy.version.as_deref(),
        Some("v1.31.2"),
        "from the kube-proxy pod's image tag"
    );
    assert_eq!(
        m.api_server_version.as_deref(),
        Some("v1.33.1"),
        "control-plane kubelet stands in"
    );
    assert!(m.warnings.is_empty(), "{:?}", m.warnings);
}

#[test]
fn the_kube_proxy_pod_status_fills_in_whether_kube_proxy_runs() {
    let mut objs = read_snapshot(&fixture()).unwrap();
    let mut m = rules_model();
    m.kube_proxy.running = None;
    enrich(&mut m, &objs, Some("node-1"));
    // The fixture's kube-proxy pod is Running but has no Ready condition: no claim.
    assert_eq!(m.kube_proxy.running, None);

    let kp = objs
        .pods
        .iter_mut()
        .find(|p| p.metadata.name.as_deref() == Some("kube-proxy-4xk9z"))
        .unwrap();
    let status: k8s_openapi::api::core::v1::PodStatus = serde_json::from_value(serde_json::json!({
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "False"}],
        "containerStatuses": [{"name": "kube-proxy", "image": "registry.k8s.io/kube-proxy:v1.31.2", "imageID": "",
                               "ready": false, "restartCount": 12,
                               "state": {"waiting": {"reason": "CrashLoopBackOff"}}}]
    }))
    .unwrap();
    kp.status = Some(status);
    let mut m = rules_model();
    m.kube_proxy.running = None;
    enrich(&mut m, &objs, Some("node-1"));
    assert_eq!(m.kube_proxy.running, Some(false));
    assert!(
        m.warnings.iter().any(|w| w.kind == crate::model::WarningKind::KubeProxy
            && w.message
                .contains("kube-system/kube-proxy-4xk9z on node-1 is CrashLoopBackOff (12 restarts)")),
        "{:?}",
        m.warnings
    );

    // The node's own check is not overridden.
    let mut m = rules_model();
    enrich(&mut m, &objs, Some("node-1"));
    assert_eq!(m.kube_proxy.running, Some(true));
}

#[test]
fn enriched_model_proves_rules_missing_stale_endpoint_and_version_skew() {
    use crate::classify::{Context, classify};
    use crate::report::VerdictClass;
    let m = enriched();
    let explain = Context {
        api_consulted: true,
        ..Context::default()
    };
    let v = classify(&sref("shop", "front"), &[], &m, &explain);
    assert_eq!(
        v.root_cause.class,
        VerdictClass::KubeProxyRulesMissing,
        "{:?}",
        v.causes
    );
    let v = classify(&sref("shop", "web"), &[], &m, &explain);
    // The rules DNAT to 10.1.0.99, which the API does not list: stale. 10.1.1.8 is in the API but
    // not ready, so its absence from the rules is expected. kube-proxy v1.31 against a v1.33
    // control plane is skew, ranked last.
    let classes: Vec<_> = v.causes.iter().map(|c| c.class).collect();
    assert_eq!(
        classes,
        [VerdictClass::StaleEndpoint, VerdictClass::KubeProxyVersionSkew],
        "{:?}",
        v.causes
    );
}

mod live {
    //! The kube-rs client against a real HTTP/1.1 server on loopback that serves list responses
    //! built from the snapshot fixture. The client code is the real one; only the server is ours.

    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::super::live::{fetch, load};
    use super::super::node::NodeHint;
    use super::*;

    /// Requests seen by the server (path and query).
    type Seen = Arc<Mutex<Vec<String>>>;

    /// List bodies by API path, from the fixture; services come in two pages to exercise
    /// `continue`.
    fn routes() -> HashMap<&'static str, Vec<Value>> {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(fixture()).unwrap()).unwrap();
        let items = doc["items"].as_array().unwrap();
        let of = |kind: &str| -> Vec<Value> {
            items
                .iter()
                .filter(|i| i["kind"] == kind)
                .map(|i| {
                    // The API server's list items carry neither kind nor apiVersion.
                    let mut i = i.clone();
                    i.as_object_mut().unwrap().remove("kind");
                    i.as_object_mut().unwrap().remove("apiVersion");
                    i
                })
                .collect()
        };
        let list = |kind: &str, api_version: &str, items: Vec<Value>, cont: Option<&str>| {
            json!({"kind": format!("{kind}List"), "apiVersion": api_version,
                   "metadata": {"resourceVersion": "91600", "continue": cont.unwrap_or("")}, "items": items})
        };
        let services = of("Service");
        let mut r = HashMap::new();
        r.insert("/api/v1/nodes", vec![list("Node", "v1", of("Node"), None)]);
        r.insert("/api/v1/pods", vec![list("Pod", "v1", of("Pod"), None)]);
        r.insert(
            "/api/v1/services",
            vec![
                list("Service", "v1", services[..2].to_vec(), Some("page2")),
                list("Service", "v1", services[2..].to_vec(), None),
            ],
        );
        r.insert(
            "/apis/discovery.k8s.io/v1/endpointslices",
            vec![list("EndpointSlice", "discovery.k8s.io/v1", of("EndpointSlice"), None)],
        );
        r.insert(
            "/version",
            vec![json!({"major": "1", "minor": "33", "gitVersion": "v1.33.2", "gitCommit": "x", "gitTreeState": "clean",
                        "buildDate": "2026-10-01T00:00:00Z", "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64"})],
        );
        r
    }

    /// Serves `routes` on 127.0.0.1, one request per connection; `silent` accepts and never answers.
    async fn serve(silent: bool) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Arc::default();
        let routes = Arc::new(routes());
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let routes = routes.clone();
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if silent {
                        tokio::time::sleep(Duration::from_secs(30)).await;
                        return;
                    }
                    let head = String::from_utf8_lossy(&buf).into_owned();
                    let target = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
                    log.lock().unwrap().push(target.clone());
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let page = usize::from(query.contains("continue=page2"));
                    let (status, body) = match routes.get(path).and_then(|pages| pages.get(page)) {
                        Some(b) => ("200 OK", b.to_string()),
                        None => (
                            "404 Not Found",
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                                          "reason": "NotFound", "code": 404})
                            .to_string(),
                        ),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(resp.as_bytes()).await;
                    let _ = sock.shutdown().await;
                });
            }
        });
        (url, seen)
    }

    fn client(url: &str) -> kube::Client {
        let mut config = kube::Config::new(url.parse().unwrap());
        config.connect_timeout = Some(Duration::from_secs(2));
        config.read_timeout = Some(Duration::from_secs(2));
        kube::Client::try_from(config).unwrap()
    }

    #[tokio::test]
    async fn fetch_lists_everything_and_matches_the_snapshot() {
        let (url, seen) = serve(false).await;
        let hint = NodeHint {
            host_ips: vec![ip("10.0.0.1")],
            ..NodeHint::default()
        };
        let (objs, node) = fetch(&client(&url), &hint, Duration::from_secs(5)).await.unwrap();
        assert_eq!(node, Some(("node-1".into(), NodeSource::HostAddress)));
        assert_eq!(objs.services.len(), 4, "both pages");
        assert_eq!(objs.endpoint_slices.len(), 3);
        assert_eq!(objs.nodes.len(), 3);
        assert_eq!(objs.server_version.as_deref(), Some("v1.33.2"));
        let seen = seen.lock().unwrap().clone();
        assert!(
            seen.iter()
                .any(|s| s.starts_with("/api/v1/pods?") && s.contains("fieldSelector=spec.nodeName%3Dnode-1")),
            "pods are listed for this node only: {seen:?}"
        );
        assert!(seen.iter().any(|s| s.contains("continue=page2")), "{seen:?}");

        // The live objects give the same model as the snapshot (the version aside).
        let mut live_model = rules_model();
        enrich(&mut live_model, &objs, node.as_ref().map(|n| n.0.as_str()));
        let mut snap_model = enriched();
        snap_model.api_server_version = live_model.api_server_version.clone();
        assert_eq!(live_model, snap_model);
    }

    #[tokio::test]
    async fn unreachable_api_is_a_warning_not_an_error() {
        // A port nothing listens on: bind, note it, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("d8-trace-k8s-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:{port}\n\
                 contexts:\n- name: c\n  context:\n    cluster: c\n    user: u\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"
            ),
        )
        .unwrap();
        let started = std::time::Instant::now();
        let loaded = load(Some(&kubeconfig), &NodeHint::default(), Duration::from_secs(2)).await;
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(loaded.objects.is_none());
        let w = loaded.warning.unwrap();
        assert!(w.contains("cannot list nodes from the Kubernetes API"), "{w}");
        assert!(w.contains("rules-only verdict"), "{w}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn missing_kubeconfig_is_a_warning_naming_it() {
        let loaded = load(
            Some(std::path::Path::new("/nonexistent/kubeconfig")),
            &NodeHint::default(),
            Duration::from_secs(1),
        )
        .await;
        let w = loaded.warning.unwrap();
        assert!(
            w.contains("cannot configure a Kubernetes client from /nonexistent/kubeconfig"),
            "{w}"
        );
    }

    #[tokio::test]
    async fn a_silent_api_times_out() {
        let (url, _) = serve(true).await;
        let started = std::time::Instant::now();
        let err = fetch(&client(&url), &NodeHint::default(), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout { what: "nodes", .. } | Error::List { what: "nodes", .. }
            ),
            "{err:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}

#[test]
fn apply_snapshot_folds_the_snapshot_and_finds_the_node_by_address() {
    let mut m = rules_model();
    let hint = NodeHint {
        host_ips: vec![ip("10.0.0.1")],
        ..NodeHint::default()
    };
    let applied = apply_snapshot(&mut m, &fixture(), &hint).unwrap();
    assert!(applied.api_consulted);
    assert_eq!(applied.node, Some(("node-1".into(), NodeSource::HostAddress)));
    assert_eq!(m, enriched());
}

#[tokio::test]
async fn apply_disabled_leaves_the_model_alone_and_unreachable_live_warns() {
    let mut m = rules_model();
    let hint = NodeHint {
        env: Some("node-3".into()),
        ..NodeHint::default()
    };
    let applied = apply(&mut m, &Source::Disabled, &hint, DEFAULT_TIMEOUT).await.unwrap();
    assert_eq!(
        applied,
        Applied {
            api_consulted: false,
            node: Some(("node-3".into(), NodeSource::Env)),
            warnings: vec![]
        }
    );
    assert_eq!(m, rules_model());

    let source = Source::Live {
        kubeconfig: Some("/nonexistent/kubeconfig".into()),
    };
    let applied = apply(&mut m, &source, &hint, DEFAULT_TIMEOUT).await.unwrap();
    assert!(!applied.api_consulted);
    assert_eq!(applied.warnings.len(), 1);
    assert_eq!(
        m.warnings
            .iter()
            .map(|w| (w.kind, w.message.clone()))
            .collect::<Vec<_>>(),
        applied
            .warnings
            .iter()
            .map(|w| (crate::model::WarningKind::Api, w.clone()))
            .collect::<Vec<_>>(),
        "the warning reaches the report through the model"
    );

    let err = apply(
        &mut m,
        &Source::Snapshot("/nonexistent/snap.json".into()),
        &hint,
        DEFAULT_TIMEOUT,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::ReadSnapshot { .. }));
}

#[test]
fn api_frontends_name_every_service_for_ipvs() {
    let objs = read_snapshot(&fixture()).unwrap();
    let fes = api_frontends(&objs);
    assert_eq!(fes.len(), 4);
    let (sref, web) = fes.iter().find(|(s, _)| s.name == "web").unwrap();
    assert_eq!(sref.namespace, "shop");
    assert_eq!(web.len(), 3, "ClusterIP, NodePort, external IP: {web:?}");
}

pub(super) mod pipeline {
    //! The lab's own generator writes kube-proxy's rules and the matching snapshot for a spec; the
    //! rule reader and this module turn them into a model; the classifier must find the fault the
    //! spec was given. Pure: no namespace, no kernel.

    use std::net::Ipv4Addr;

    use super::*;
    use crate::classify::{Context, classify};
    use crate::lab::spec::{ClusterSpec, PodSpec, ServiceSpec, TrafficPolicy};
    use crate::model::{KubeProxyStatus, ProxyMode};
    use crate::report::VerdictClass;

    pub(crate) fn spec() -> ClusterSpec {
        ClusterSpec::new()
            .service(
                ServiceSpec::new("shop", "web", Ipv4Addr::new(10, 96, 0, 10))
                    .node_port("http", 80, 8080, Protocol::Tcp, 30080)
                    .selector("app", "web"),
            )
            .service(
                ServiceSpec::new("shop", "empty", Ipv4Addr::new(10, 96, 0, 20))
                    .port("http", 80, 8080, Protocol::Tcp)
                    .selector("app", "nothing"),
            )
            .service(
                ServiceSpec::new("shop", "local", Ipv4Addr::new(10, 96, 0, 30))
                    .node_port("http", 80, 8080, Protocol::Tcp, 30090)
                    .selector("app", "remote")
                    .external_policy(TrafficPolicy::Local),
            )
            .pod(
                PodSpec::new("shop", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                    .label("app", "web")
                    .tcp_probes(8080),
            )
            .pod(PodSpec::new("shop", "web-2", Ipv4Addr::new(10, 244, 1, 12)).label("app", "web"))
            .pod(
                PodSpec::new("shop", "remote-1", Ipv4Addr::new(10, 244, 2, 11))
                    .label("app", "remote")
                    .on_node("n2"),
            )
    }

    /// The model of the rules written for `rules` (iptables mode), before the API is folded in.
    pub(crate) fn rules_only(rules: &ClusterSpec) -> ServiceModel {
        let text = crate::lab::iptables::kube_proxy_restore(rules);
        let parsed = crate::model::rules::iptables::parse(&text).unwrap();
        ServiceModel {
            kube_proxy: KubeProxyStatus {
                mode: ProxyMode::Iptables,
                running: Some(true),
                rules_present: parsed.rules_present,
                ..KubeProxyStatus::default()
            },
            services: parsed.services,
            ..ServiceModel::default()
        }
    }

    /// Rules written for `rules`, API facts from `api`, on the lab node found by its address.
    fn model(rules: &ClusterSpec, api: &ClusterSpec) -> ServiceModel {
        let mut m = rules_only(rules);
        let objs = parse_snapshot(&crate::lab::snapshot::snapshot(api).to_string(), "lab").unwrap();
        let hint = NodeHint {
            host_ips: vec![IpAddr::V4(api.node_ip)],
            ..NodeHint::default()
        };
        let node = hint.select(&objs.nodes).map(|(n, _)| n);
        assert_eq!(node.as_deref(), Some("d8lab-node"));
        enrich(&mut m, &objs, node.as_deref());
        m
    }

    fn explain(m: &ServiceModel, name: &str) -> VerdictClass {
        let v = classify(
            &sref("shop", name),
            &[],
            m,
            &Context {
                api_consulted: true,
                ..Context::default()
            },
        );
        v.root_cause.class
    }

    #[test]
    fn generated_rules_and_snapshot_give_the_spec_faults() {
        let s = spec();
        let m = model(&s, &s);
        assert_eq!(explain(&m, "web"), VerdictClass::Healthy);
        assert_eq!(explain(&m, "empty"), VerdictClass::NoEndpoints);
        assert_eq!(explain(&m, "local"), VerdictClass::EtpLocalNoLocalEndpoints);
        let web = m.service(&sref("shop", "web")).unwrap();
        assert!(
            web.endpoints
                .iter()
                .all(|e| e.in_rules && e.in_api == Some(true) && e.local == Some(true))
        );
        assert!(m.probe_ports.iter().any(|p| p.pod == "shop/web-1" && p.port == 8080));
    }

    #[test]
    fn a_pod_deleted_from_the_api_but_not_the_rules_is_stale() {
        let rules = spec();
        let mut api = spec();
        api.pods.retain(|p| p.name != "web-2");
        assert_eq!(explain(&model(&rules, &api), "web"), VerdictClass::StaleEndpoint);
    }

    /// `shop/zonal`: two endpoints on this node hinted for zone-a, two on n2 hinted for zone-b; the
    /// lab node is in zone-a, so kube-proxy programs only the first two.
    fn zonal(hinted: bool) -> ClusterSpec {
        let mut s = ClusterSpec::new()
            .zone("d8lab-node", "zone-a")
            .zone("n2", "zone-b")
            .service(ServiceSpec::new("shop", "zonal", Ipv4Addr::new(10, 96, 0, 40)).port(
                "http",
                80,
                8080,
                Protocol::Tcp,
            ));
        for (i, (node, zone)) in [
            ("d8lab-node", "zone-a"),
            ("d8lab-node", "zone-a"),
            ("n2", "zone-b"),
            ("n2", "zone-b"),
        ]
        .into_iter()
        .enumerate()
        {
            let mut p = PodSpec::new("shop", &format!("z-{i}"), Ipv4Addr::new(10, 244, 3, 10 + i as u8))
                .label("app", "zonal")
                .on_node(node);
            if hinted {
                p = p.zone_hint(zone);
            }
            s = s.pod(p);
        }
        s
    }

    fn explain_full(m: &ServiceModel, name: &str) -> crate::classify::Verdict {
        let ctx = Context {
            api_consulted: true,
            ..Context::default()
        };
        classify(&sref("shop", name), &[], m, &ctx)
    }

    #[test]
    fn endpoints_left_out_by_zone_hints_are_not_missing() {
        let s = zonal(true);
        let text = crate::lab::iptables::kube_proxy_restore(&s);
        assert_eq!(
            text.matches("-j DNAT").count(),
            2,
            "kube-proxy programs zone-a's two: {text}"
        );
        let m = model(&s, &s);
        let v = explain_full(&m, "zonal");
        assert_eq!(v.root_cause.class, VerdictClass::Healthy, "{v:#?}");
        assert!(
            v.root_cause.detail.contains("2 of 4 endpoints, zone hints for zone-a"),
            "{v:#?}"
        );
        let note = v
            .evidence
            .iter()
            .find(|e| e.content.starts_with("topology:"))
            .expect("topology note");
        assert_eq!(
            note.content,
            "topology: kube-proxy programs 2 of 4 ready endpoints of shop/zonal on node d8lab-node \
             (zone hints for zone-a); left out on purpose: 10.244.3.12:8080, 10.244.3.13:8080"
        );
    }

    #[test]
    fn without_hints_the_narrowed_rules_miss_endpoints() {
        // The same narrowed rules, but the API gives no hints: kube-proxy should program all four.
        let m = model(&zonal(true), &zonal(false));
        let v = explain_full(&m, "zonal");
        assert_eq!(v.root_cause.class, VerdictClass::KubeProxyRulesMissing, "{v:#?}");
        assert!(v.evidence.iter().all(|e| !e.content.starts_with("topology:")));
        // A node in a zone no endpoint is hinted for: every ready endpoint, so again missing.
        let mut api = zonal(true);
        api.zones.insert("d8lab-node".into(), "zone-c".into());
        let v = explain_full(&model(&zonal(true), &api), "zonal");
        assert_eq!(v.root_cause.class, VerdictClass::KubeProxyRulesMissing, "{v:#?}");
    }

    #[test]
    fn rules_that_ignore_the_hints_are_healthy_and_said_so() {
        // kube-proxy wrote all four (it does not apply hints); the API's hints leave two out.
        let v = explain_full(&model(&zonal(false), &zonal(true)), "zonal");
        assert_eq!(v.root_cause.class, VerdictClass::Healthy, "{v:#?}");
        let note = v
            .evidence
            .iter()
            .find(|e| e.content.starts_with("topology:"))
            .expect("topology note");
        assert!(
            note.content.ends_with(
                "; the rules still DNAT to 10.244.3.12:8080, 10.244.3.13:8080: this kube-proxy does not apply the \
                 hints (older than 1.21, or its TopologyAwareHints gate is off)"
            ),
            "{}",
            note.content
        );
    }

    #[test]
    fn node_hints_narrow_to_this_node() {
        let mut s = zonal(true);
        for p in &mut s.pods {
            let node = p.node.clone().unwrap();
            p.node_hints = vec![node];
        }
        // Only z-0 and z-1 on this node; node hints win over zone hints.
        let text = crate::lab::iptables::kube_proxy_restore(&s);
        assert_eq!(text.matches("-j DNAT").count(), 2, "{text}");
        let v = explain_full(&model(&s, &s), "zonal");
        assert_eq!(v.root_cause.class, VerdictClass::Healthy, "{v:#?}");
        assert!(v.root_cause.detail.contains("node hints for d8lab-node"), "{v:#?}");
    }

    /// [`model`] for a dual-stack lab: both families' rules (`iptables-save` and `ip6tables-save`
    /// merged as `rules::read_iptables_mode` merges them) and the dual-stack snapshot.
    fn dual_model(rules: &ClusterSpec, api: &ClusterSpec) -> ServiceModel {
        use crate::model::IpFamily;
        let mut services = Vec::new();
        for family in [IpFamily::V4, IpFamily::V6] {
            let text = crate::lab::iptables::kube_proxy_restore_in(rules, family);
            let parsed = crate::model::rules::iptables::parse(&text).unwrap();
            assert!(parsed.warnings.is_empty(), "{family}: {:?}", parsed.warnings);
            services = crate::model::rules::merge_services(services, parsed.services);
        }
        let mut m = ServiceModel {
            kube_proxy: KubeProxyStatus {
                mode: ProxyMode::Iptables,
                running: Some(true),
                rules_present: true,
                ..KubeProxyStatus::default()
            },
            services,
            ..ServiceModel::default()
        };
        let objs = parse_snapshot(&crate::lab::snapshot::snapshot(api).to_string(), "lab").unwrap();
        assert!(objs.warnings.is_empty(), "{:?}", objs.warnings);
        enrich(&mut m, &objs, Some("d8lab-node"));
        m
    }

    #[test]
    fn dual_stack_rules_and_snapshot_hold_both_families() {
        use crate::lab::spec::ipv6_twin;
        use crate::model::IpFamily;
        let s = spec().dual_stack();
        let v6 = crate::lab::iptables::kube_proxy_restore_in(&s, IpFamily::V6);
        // kube-proxy's IPv6 text: the Service chain hash is the family's own per proxier, the
        // endpoint chain hashes `[ip]:port`, DNAT targets are bracketed.
        assert!(v6.contains("-d fd00:10:96::10 --dport 80"), "{v6}");
        assert!(v6.contains("--to-destination [fd00:10:244:1::11]:8080"), "{v6}");
        assert!(v6.contains("! -s fd00:10:244::/48 -j KUBE-MARK-MASQ"), "{v6}");
        assert!(!v6.contains("127.0.0.0/8"), "localhost NodePorts are IPv4 only: {v6}");
        let m = dual_model(&s, &s);
        assert!(m.warnings.is_empty(), "{:?}", m.warnings);
        let web = m.service(&sref("shop", "web")).unwrap();
        assert_eq!(web.api.ip_families, [IpFamily::V4, IpFamily::V6]);
        let twin = std::net::IpAddr::V6(ipv6_twin(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(
            web.frontends
                .iter()
                .any(|f| f.ip == twin && f.port == 80 && f.rule.is_some()),
            "{:?}",
            web.frontends
        );
        let v6_eps: Vec<_> = web.endpoints.iter().filter(|e| e.ip.is_ipv6()).collect();
        assert_eq!(v6_eps.len(), 2, "{:?}", web.endpoints);
        assert!(
            v6_eps
                .iter()
                .all(|e| e.in_rules && e.in_api == Some(true) && e.local == Some(true)),
            "{v6_eps:?}"
        );
        assert_eq!(explain(&m, "web"), VerdictClass::Healthy);
        assert_eq!(explain(&m, "empty"), VerdictClass::NoEndpoints);
        assert_eq!(explain(&m, "local"), VerdictClass::EtpLocalNoLocalEndpoints);
    }

    #[test]
    fn a_dual_stack_service_without_ipv6_rules_is_rules_missing_for_ipv6() {
        let api = spec().dual_stack();
        let mut rules = api.clone();
        rules
            .services
            .iter_mut()
            .find(|s| s.name == "web")
            .unwrap()
            .single_stack = true;
        let v = explain_full(&dual_model(&rules, &api), "web");
        assert_eq!(v.root_cause.class, VerdictClass::KubeProxyRulesMissing, "{v:#?}");
        assert!(
            v.root_cause
                .detail
                .starts_with("kube-proxy programmed shop/web for IPv4 but not for IPv6"),
            "{}",
            v.root_cause.detail
        );
    }

    #[test]
    fn a_service_the_rules_lack_is_rules_missing() {
        let mut rules = spec();
        rules.services.retain(|s| s.name != "web");
        assert_eq!(
            explain(&model(&rules, &spec()), "web"),
            VerdictClass::KubeProxyRulesMissing
        );
    }
}

#[test]
fn terminating_serving_endpoints_are_recorded() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"a","name":"s"},"spec":{"clusterIP":"10.96.5.5","ports":[{"port":80}]}},
        {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv4","metadata":{"namespace":"a","name":"s-1","labels":{"kubernetes.io/service-name":"s"}},
         "endpoints":[{"addresses":["10.1.0.9"],"conditions":{"ready":false,"serving":true,"terminating":true}}],
         "ports":[{"port":8080,"protocol":"TCP"}]}
    ]}"#;
    let objs = parse_snapshot(text, "t.json").unwrap();
    let mut m = ServiceModel::default();
    enrich(&mut m, &objs, None);
    let s = m.service(&sref("a", "s")).unwrap();
    assert_eq!(
        s.api.terminating_serving,
        ["10.1.0.9:8080".parse::<std::net::SocketAddr>().unwrap()]
    );
    assert_eq!(s.endpoints[0].ready, Some(false));
}

#[test]
fn rfc3339_times_as_unix_seconds() {
    use super::enrich::rfc3339_unix;
    assert_eq!(rfc3339_unix("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(rfc3339_unix("2026-12-06T14:00:00Z"), Some(1_796_565_600.0));
    assert_eq!(rfc3339_unix("2026-12-06T15:00:00+01:00"), Some(1_796_565_600.0));
    assert_eq!(rfc3339_unix("2024-02-29T00:00:00.5Z"), Some(1_709_164_800.5));
    assert_eq!(rfc3339_unix("2026-13-01T00:00:00Z"), None);
    assert_eq!(rfc3339_unix("yesterday"), None);
}

#[test]
fn last_change_trigger_time_of_the_newest_slice() {
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"a","name":"s"},"spec":{"clusterIP":"10.96.5.5","ports":[{"port":80}]}},
        {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv4","metadata":{"namespace":"a","name":"s-1","labels":{"kubernetes.io/service-name":"s"},
          "annotations":{"endpoints.kubernetes.io/last-change-trigger-time":"1970-01-01T00:01:00Z"}},"endpoints":[],"ports":[{"port":8080}]},
        {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv4","metadata":{"namespace":"a","name":"s-2","labels":{"kubernetes.io/service-name":"s"},
          "annotations":{"endpoints.kubernetes.io/last-change-trigger-time":"1970-01-01T00:02:00Z"}},"endpoints":[],"ports":[{"port":8080}]}
    ]}"#;
    let objs = parse_snapshot(text, "t.json").unwrap();
    let mut m = ServiceModel::default();
    enrich(&mut m, &objs, None);
    assert_eq!(m.service(&sref("a", "s")).unwrap().api.last_change_unix, Some(120.0));
}

/// The snapshot's objects as they are in the file: nothing slimmed.
fn whole_objects(text: &str) -> ClusterObjects {
    let list: serde_json::Value = serde_json::from_str(text).unwrap();
    let mut objs = ClusterObjects::default();
    for item in list["items"].as_array().unwrap() {
        let item = item.clone();
        match item["kind"].as_str() {
            Some("Service") => objs.services.push(serde_json::from_value(item).unwrap()),
            Some("EndpointSlice") => objs.endpoint_slices.push(
                serde_json::from_value::<k8s_openapi::api::discovery::v1::EndpointSlice>(item)
                    .unwrap()
                    .into(),
            ),
            Some("Pod") => objs.pods.push(serde_json::from_value(item).unwrap()),
            Some("Node") => objs.nodes.push(serde_json::from_value(item).unwrap()),
            _ => {}
        }
    }
    objs
}

#[test]
fn slimmed_objects_give_the_same_model_as_whole_ones() {
    use crate::lab::{ClusterSpec, ListenerKind, PodSpec, ServiceSpec};
    use std::net::Ipv4Addr;
    // The fixture (node-1) and a lab cluster with probes, a kube-proxy pod and topology (its node).
    let lab = ClusterSpec::new()
        .service(
            ServiceSpec::new("shop", "web", Ipv4Addr::new(10, 96, 0, 10))
                .port("http", 80, 8080, Protocol::Tcp)
                .selector("app", "web"),
        )
        .pod(
            PodSpec::new("shop", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                .label("app", "web")
                .listen(8080, ListenerKind::Http),
        );
    let cases = [
        (std::fs::read_to_string(fixture()).unwrap(), Some("node-1".to_string())),
        (
            crate::lab::snapshot::snapshot(&lab).to_string(),
            Some(lab.node_name.clone()),
        ),
    ];
    for (text, node) in cases {
        let whole = whole_objects(&text);
        let mut slim = whole.clone();
        slim.strip_unread();
        assert!(
            whole.services.iter().any(|s| s.metadata.uid.is_some())
                && slim.services.iter().all(|s| s.metadata.uid.is_none()),
            "slimming dropped nothing"
        );
        let (mut a, mut b) = (rules_model(), rules_model());
        enrich(&mut a, &whole, node.as_deref());
        enrich(&mut b, &slim, node.as_deref());
        assert_eq!(a, b, "a field enrich reads was slimmed away");
        assert_ne!(
            a,
            rules_model(),
            "the API changed nothing: the comparison proves nothing"
        );
    }
}

#[test]
fn unusable_api_addresses_are_left_out_with_a_warning_each() {
    // An IPv6 address in an IPv4 slice, a zone-scoped link-local one, an IPv4-mapped one, and a
    // ClusterIP of the wrong family for `ipFamilies`: each is a warning naming its object.
    let text = r#"{"apiVersion":"v1","kind":"List","items":[
        {"apiVersion":"v1","kind":"Service","metadata":{"namespace":"a","name":"s"},"spec":{"clusterIP":"10.96.5.5",
          "clusterIPs":["10.96.5.5","10.96.5.6"],"ipFamilies":["IPv4","IPv6"],"ports":[{"port":80}]}},
        {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv4","metadata":{"namespace":"a","name":"s-1","labels":{"kubernetes.io/service-name":"s"}},
         "endpoints":[{"addresses":["fd00::9"]},{"addresses":["10.1.0.9"]}],"ports":[{"port":8080,"protocol":"TCP"}]},
        {"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice","addressType":"IPv6","metadata":{"namespace":"a","name":"s-2","labels":{"kubernetes.io/service-name":"s"}},
         "endpoints":[{"addresses":["fe80::1%eth0"]},{"addresses":["::ffff:10.1.0.10"]},{"addresses":["fd00::10"]}],"ports":[{"port":8080,"protocol":"TCP"}]}
    ]}"#;
    let objs = parse_snapshot(text, "t.json").unwrap();
    let mut m = ServiceModel::default();
    enrich(&mut m, &objs, None);
    let s = m.service(&sref("a", "s")).unwrap();
    let ips: Vec<String> = s.endpoints.iter().map(|e| e.ip.to_string()).collect();
    assert_eq!(ips, ["10.1.0.9", "fd00::10"]);
    assert_eq!(
        s.frontends.iter().map(|f| f.ip.to_string()).collect::<Vec<_>>(),
        ["10.96.5.5"]
    );
    let warnings: Vec<&str> = m.warnings.iter().map(|w| w.message.as_str()).collect();
    assert_eq!(warnings.len(), 4, "{warnings:#?}");
    assert!(
        warnings[0]
            .starts_with("Service a/s spec.clusterIPs[1]: \"10.96.5.6\" is an IPv4 address where an IPv6 one belongs")
    );
    assert!(warnings[1].starts_with("EndpointSlice a/s-1 (addressType IPv4): \"fd00::9\" is an IPv6 address"));
    assert!(warnings[2].contains("zone-scoped"), "{}", warnings[2]);
    assert!(warnings[3].contains("IPv4-mapped"), "{}", warnings[3]);
}
