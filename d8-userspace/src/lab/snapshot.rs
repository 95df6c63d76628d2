//! The API view of a [`ClusterSpec`]: the JSON List that
//! `kubectl get services,endpointslices,pods,nodes -A -o json` prints, with the real field names
//! (core/v1 Service, Pod, Node; discovery.k8s.io/v1 EndpointSlice). Written with `serde_json`
//! values; uids and slice names are derived from names so snapshots are deterministic.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use std::net::Ipv4Addr;

use super::spec::{
    ClusterSpec, ListenerKind, PodSpec, ProbeSpec, ServiceSpec, ServiceType, SessionAffinity, cidr_in_family, in_family,
};
use crate::model::{IpFamily, k8s::enrich::CONTROL_PLANE_LABEL};

const CREATED: &str = "2026-01-01T00:00:00Z";

/// A UUID-shaped uid derived from `kind/namespace/name`.
fn uid(seed: &str) -> String {
    let d = Sha256::digest(seed.as_bytes());
    let h: String = d.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-4{}-8{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

/// The five-character suffix the API server gives generated names.
fn suffix(seed: &str) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    Sha256::digest(seed.as_bytes())
        .iter()
        .take(5)
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn probe_json(p: &ProbeSpec) -> Value {
    let action = match p {
        ProbeSpec::TcpSocket { port } => json!({"tcpSocket": {"port": port}}),
        ProbeSpec::HttpGet { path, port } => {
            json!({"httpGet": {"path": path, "port": port, "scheme": "HTTP"}})
        }
    };
    let mut v = action;
    let obj = v.as_object_mut().expect("object");
    obj.insert("periodSeconds".into(), json!(10));
    obj.insert("timeoutSeconds".into(), json!(1));
    obj.insert("successThreshold".into(), json!(1));
    obj.insert("failureThreshold".into(), json!(3));
    v
}

/// `v4` and, on a dual-stack lab, its IPv6 twin, as strings (the order of `clusterIPs`, `podIPs`).
fn addrs(families: &[IpFamily], v4: Ipv4Addr) -> Vec<String> {
    families.iter().map(|&f| in_family(v4, f).to_string()).collect()
}

fn service_json(spec: &ClusterSpec, svc: &ServiceSpec) -> Value {
    let families = spec.service_families(svc);
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| {
            let mut v = json!({
                "port": p.port,
                "protocol": p.protocol.as_str().to_ascii_uppercase(),
                "targetPort": p.target_port,
            });
            if !p.name.is_empty() {
                v["name"] = json!(p.name);
            }
            if let Some(np) = p.node_port {
                v["nodePort"] = json!(np);
            }
            v
        })
        .collect();
    // A dual-stack lab's Services are PreferDualStack unless marked single-stack.
    let policy = if families.len() > 1 {
        "PreferDualStack"
    } else {
        "SingleStack"
    };
    let mut spec_json = json!({
        "clusterIP": in_family(svc.cluster_ip, families[0]).to_string(),
        "clusterIPs": addrs(&families, svc.cluster_ip),
        "internalTrafficPolicy": svc.internal_traffic_policy.as_str(),
        "ipFamilies": families.iter().map(|f| f.as_str()).collect::<Vec<_>>(),
        "ipFamilyPolicy": policy,
        "ports": ports,
        "selector": svc.selector,
        "sessionAffinity": "None",
        "type": svc.service_type.as_str(),
    });
    if let SessionAffinity::ClientIP { timeout_seconds } = svc.session_affinity {
        spec_json["sessionAffinity"] = json!("ClientIP");
        spec_json["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": timeout_seconds}});
    }
    if svc.service_type != ServiceType::ClusterIP {
        spec_json["externalTrafficPolicy"] = json!(svc.external_traffic_policy.as_str());
    }
    if !svc.external_ips.is_empty() {
        let ips: Vec<String> = svc.external_ips.iter().flat_map(|&ip| addrs(&families, ip)).collect();
        spec_json["externalIPs"] = json!(ips);
    }
    if !svc.source_ranges.is_empty() {
        let ranges: Vec<String> = families
            .iter()
            .flat_map(|&f| svc.source_ranges.iter().map(move |c| cidr_in_family(c, f)))
            .collect();
        spec_json["loadBalancerSourceRanges"] = json!(ranges);
    }
    if let Some(hc) = svc.health_check_node_port {
        spec_json["healthCheckNodePort"] = json!(hc);
    }
    if svc.service_type == ServiceType::LoadBalancer {
        spec_json["allocateLoadBalancerNodePorts"] = json!(true);
    }
    let ingress: Vec<Value> = svc
        .load_balancer_ips
        .iter()
        .flat_map(|&ip| addrs(&families, ip))
        .map(|ip| json!({"ip": ip, "ipMode": "VIP"}))
        .collect();
    let status = if ingress.is_empty() {
        json!({"loadBalancer": {}})
    } else {
        json!({"loadBalancer": {"ingress": ingress}})
    };
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "creationTimestamp": CREATED,
            "name": svc.name,
            "namespace": svc.namespace,
            "resourceVersion": "1000",
            "uid": uid(&format!("Service/{}/{}", svc.namespace, svc.name)),
        },
        "spec": spec_json,
        "status": status,
    })
}

fn endpoint_slice_json(spec: &ClusterSpec, svc: &ServiceSpec, family: IpFamily) -> Value {
    // One slice per Service and family; every port lists the same endpoints (targetPort is numeric).
    let first = svc.ports.first();
    let endpoints: Vec<Value> = match first {
        None => Vec::new(),
        Some(port) => spec
            .endpoints_in(svc, port, family)
            .iter()
            .map(|ep| {
                let mut v = json!({
                    "addresses": [ep.ip.to_string()],
                    "conditions": {"ready": ep.ready, "serving": ep.ready, "terminating": false},
                    "nodeName": ep.node,
                    "targetRef": {
                        "kind": "Pod",
                        "name": ep.pod,
                        "namespace": svc.namespace,
                        "uid": uid(&format!("Pod/{}/{}", svc.namespace, ep.pod)),
                    },
                });
                if let Some(zone) = spec.zones.get(&ep.node) {
                    v["zone"] = json!(zone);
                }
                let names = |n: &[String]| n.iter().map(|n| json!({"name": n})).collect::<Vec<_>>();
                if !ep.zone_hints.is_empty() || !ep.node_hints.is_empty() {
                    let mut hints = json!({});
                    if !ep.zone_hints.is_empty() {
                        hints["forZones"] = json!(names(&ep.zone_hints));
                    }
                    if !ep.node_hints.is_empty() {
                        hints["forNodes"] = json!(names(&ep.node_hints));
                    }
                    v["hints"] = hints;
                }
                v
            })
            .collect(),
    };
    let ports: Vec<Value> = svc
        .ports
        .iter()
        .map(|p| json!({"name": p.name, "port": p.target_port, "protocol": p.protocol.as_str().to_ascii_uppercase()}))
        .collect();
    // The IPv4 slice keeps the name it has in a single-stack lab.
    let seed = match family {
        IpFamily::V4 => format!("{}/{}", svc.namespace, svc.name),
        IpFamily::V6 => format!("{}/{}/IPv6", svc.namespace, svc.name),
    };
    let name = format!("{}-{}", svc.name, suffix(&seed));
    let mut slice = json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "addressType": family.as_str(),
        "endpoints": if endpoints.is_empty() { Value::Null } else { json!(endpoints) },
        "metadata": {
            "creationTimestamp": CREATED,
            "generateName": format!("{}-", svc.name),
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": svc.name,
            },
            "name": name,
            "namespace": svc.namespace,
            "ownerReferences": [{
                "apiVersion": "v1",
                "blockOwnerDeletion": true,
                "controller": true,
                "kind": "Service",
                "name": svc.name,
                "uid": uid(&format!("Service/{}/{}", svc.namespace, svc.name)),
            }],
            "resourceVersion": "1001",
            "uid": uid(&format!("EndpointSlice/{}/{name}", svc.namespace)),
        },
        "ports": ports,
    });
    if let Some(t) = spec.api_changed_at {
        slice["metadata"]["annotations"] =
            json!({"endpoints.kubernetes.io/last-change-trigger-time": super::servers::rfc3339(t)});
    }
    slice
}

fn pod_json(spec: &ClusterSpec, pod: &PodSpec) -> Value {
    let families = spec.families();
    let node = spec.pod_node(pod).to_string();
    let host_ips = spec
        .nodes()
        .into_iter()
        .find(|n| n.name == node)
        .map(|n| addrs(&families, n.ip))
        .unwrap_or_default();
    let host_ip = host_ips.first().cloned().unwrap_or_default();
    let pod_ips: Vec<Value> = addrs(&families, pod.ip)
        .into_iter()
        .map(|ip| json!({"ip": ip}))
        .collect();
    let ports: Vec<Value> = pod
        .listeners
        .iter()
        .map(|l| {
            let proto = if l.kind == ListenerKind::UdpEcho { "UDP" } else { "TCP" };
            json!({"containerPort": l.port, "protocol": proto})
        })
        .collect();
    let mut container = json!({
        "name": "server",
        "image": "registry.example/d8lab/server:1.0",
        "ports": ports,
    });
    if let Some(p) = &pod.readiness_probe {
        container["readinessProbe"] = probe_json(p);
    }
    if let Some(p) = &pod.liveness_probe {
        container["livenessProbe"] = probe_json(p);
    }
    let ready = if pod.ready { "True" } else { "False" };
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": CREATED,
            "labels": pod.labels,
            "name": pod.name,
            "namespace": pod.namespace,
            "resourceVersion": "1002",
            "uid": uid(&format!("Pod/{}/{}", pod.namespace, pod.name)),
        },
        "spec": {"containers": [container], "nodeName": node},
        "status": {
            "conditions": [
                {"type": "Initialized", "status": "True"},
                {"type": "Ready", "status": ready},
                {"type": "ContainersReady", "status": ready},
                {"type": "PodScheduled", "status": "True"},
            ],
            "hostIP": host_ip,
            "hostIPs": host_ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "phase": "Running",
            "podIP": spec.primary_ip(pod.ip).to_string(),
            "podIPs": pod_ips,
        },
    })
}

fn kube_proxy_pod_json(spec: &ClusterSpec, version: &str) -> Value {
    let name = format!("kube-proxy-{}", suffix(&spec.node_name));
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "creationTimestamp": CREATED,
            "generateName": "kube-proxy-",
            "labels": {"k8s-app": "kube-proxy"},
            "name": name,
            "namespace": "kube-system",
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "kube-proxy", "controller": true,
                                 "uid": uid("DaemonSet/kube-system/kube-proxy")}],
            "uid": uid(&format!("Pod/kube-system/{name}")),
        },
        "spec": {
            "containers": [{
                "name": "kube-proxy",
                "image": format!("registry.k8s.io/kube-proxy:{version}"),
                "command": ["/usr/local/bin/kube-proxy", "--config=/var/lib/kube-proxy/config.conf", format!("--hostname-override={}", spec.node_name)],
            }],
            "hostNetwork": true,
            "nodeName": spec.node_name,
        },
        "status": {
            "conditions": [{"type": "Ready", "status": "True"}],
            "hostIP": spec.primary_ip(spec.node_ip).to_string(),
            "phase": "Running",
            "podIP": spec.primary_ip(spec.node_ip).to_string(),
            "podIPs": addrs(&spec.families(), spec.node_ip).into_iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
            "containerStatuses": [{"name": "kube-proxy", "ready": true, "restartCount": 0, "started": true,
                                   "image": format!("registry.k8s.io/kube-proxy:{version}")}],
        },
    })
}

fn node_json(spec: &ClusterSpec, name: &str, ip: Ipv4Addr) -> Value {
    let version = spec
        .kube_proxy
        .as_ref()
        .map(|k| k.version.as_str())
        .unwrap_or("v1.33.2");
    let mut labels = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
    if let Some(zone) = spec.zones.get(name) {
        labels[crate::model::topology::ZONE_LABEL] = json!(zone);
    }
    let mut addresses: Vec<Value> = addrs(&spec.families(), ip)
        .into_iter()
        .map(|a| json!({"address": a, "type": "InternalIP"}))
        .collect();
    addresses.push(json!({"address": name, "type": "Hostname"}));
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "creationTimestamp": CREATED,
            "labels": labels,
            "name": name,
            "uid": uid(&format!("Node/{name}")),
        },
        "spec": {},
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
            "nodeInfo": {
                "architecture": "amd64",
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "operatingSystem": "linux",
            },
        },
    })
}

/// The control-plane Node of `spec.control_plane_version`: API only (no namespace, never routed),
/// its kubelet at the control plane's version, as kubeadm upgrades move both together.
fn control_plane_json(spec: &ClusterSpec, version: &str) -> Value {
    let mut node = node_json(spec, CONTROL_PLANE_NODE, Ipv4Addr::new(172, 31, 2, 1));
    node["metadata"]["labels"][CONTROL_PLANE_LABEL] = json!("");
    node["status"]["nodeInfo"]["kubeletVersion"] = json!(version);
    node["status"]["nodeInfo"]["kubeProxyVersion"] = json!(version);
    node
}

/// The control-plane Node's name ([`control_plane_json`]).
const CONTROL_PLANE_NODE: &str = "d8lab-control-plane";

/// The `kubectl get services,endpointslices,pods,nodes -A -o json` List for `spec`. The client pod
/// appears as `default/client`; a running kube-proxy appears as a `kube-system/kube-proxy-*` pod.
pub fn snapshot(spec: &ClusterSpec) -> Value {
    let mut items: Vec<Value> = spec.services.iter().map(|s| service_json(spec, s)).collect();
    for family in spec.families() {
        items.extend(spec.services_in(family).map(|s| endpoint_slice_json(spec, s, family)));
    }
    let client = PodSpec::new("default", "client", spec.client_pod_ip).label("app", "client");
    items.push(pod_json(spec, &client));
    items.extend(spec.pods.iter().map(|p| pod_json(spec, p)));
    if let Some(kp) = &spec.kube_proxy {
        items.push(kube_proxy_pod_json(spec, &kp.version));
    }
    for n in spec.nodes() {
        items.push(node_json(spec, &n.name, n.ip));
    }
    if let Some(version) = &spec.control_plane_version {
        items.push(control_plane_json(spec, version));
    }
    json!({"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}})
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::lab::spec::TrafficPolicy;
    use crate::model::Protocol;

    #[test]
    fn snapshot_has_kubectl_shape() {
        let spec = ClusterSpec::new()
            .service(
                ServiceSpec::new("ns1", "web", Ipv4Addr::new(10, 96, 0, 10))
                    .node_port("http", 80, 8080, Protocol::Tcp, 30080)
                    .external_policy(TrafficPolicy::Local)
                    .client_ip_affinity(600),
            )
            .pod(
                PodSpec::new("ns1", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                    .label("app", "web")
                    .tcp_probes(8080),
            )
            .pod(
                PodSpec::new("ns1", "web-2", Ipv4Addr::new(10, 244, 2, 11))
                    .label("app", "web")
                    .on_node("n2")
                    .ready(false),
            );
        let v = snapshot(&spec);
        assert_eq!(v["kind"], "List");
        let items = v["items"].as_array().unwrap();
        let svc = items.iter().find(|i| i["kind"] == "Service").unwrap();
        assert_eq!(svc["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(svc["spec"]["type"], "NodePort");
        assert_eq!(svc["spec"]["externalTrafficPolicy"], "Local");
        assert_eq!(svc["spec"]["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"], 600);
        assert_eq!(svc["spec"]["ports"][0]["nodePort"], 30080);
        let eps = items.iter().find(|i| i["kind"] == "EndpointSlice").unwrap();
        assert_eq!(eps["apiVersion"], "discovery.k8s.io/v1");
        assert_eq!(eps["metadata"]["labels"]["kubernetes.io/service-name"], "web");
        assert_eq!(eps["endpoints"].as_array().unwrap().len(), 2);
        assert_eq!(eps["endpoints"][1]["conditions"]["ready"], false);
        assert_eq!(eps["endpoints"][1]["nodeName"], "n2");
        assert_eq!(eps["ports"][0]["port"], 8080);
        let pod = items
            .iter()
            .find(|i| i["kind"] == "Pod" && i["metadata"]["name"] == "web-1")
            .unwrap();
        assert_eq!(pod["status"]["podIP"], "10.244.1.11");
        assert_eq!(pod["spec"]["nodeName"], "d8lab-node");
        assert_eq!(
            pod["spec"]["containers"][0]["readinessProbe"]["tcpSocket"]["port"],
            8080
        );
        let nodes: Vec<&Value> = items.iter().filter(|i| i["kind"] == "Node").collect();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0]["status"]["addresses"][0]["type"], "InternalIP");
        assert_eq!(nodes[0]["status"]["addresses"][0]["address"], "172.31.0.2");
        assert!(items.iter().any(|i| i["metadata"]["namespace"] == "kube-system"));
    }

    #[test]
    fn snapshot_parses_with_the_k8s_reader() {
        let spec = ClusterSpec::new()
            .service(ServiceSpec::new("ns1", "web", Ipv4Addr::new(10, 96, 0, 10)).port("", 80, 8080, Protocol::Tcp))
            .service(
                ServiceSpec::new("ns1", "lb", Ipv4Addr::new(10, 96, 0, 11))
                    .node_port("dns", 53, 5353, Protocol::Udp, 30053)
                    .load_balancer_ip(Ipv4Addr::new(192, 0, 2, 1))
                    .external_ip(Ipv4Addr::new(192, 0, 2, 2)),
            )
            .pod(
                PodSpec::new("ns1", "web-1", Ipv4Addr::new(10, 244, 1, 11))
                    .label("app", "web")
                    .listen(8080, ListenerKind::Http),
            );
        let text = serde_json::to_string(&snapshot(&spec)).unwrap();
        let objs = crate::model::k8s::snapshot::parse_snapshot(&text, "lab").unwrap();
        assert!(objs.warnings.is_empty(), "{:?}", objs.warnings);
        assert_eq!(objs.services.len(), 2);
        assert_eq!(objs.endpoint_slices.len(), 2);
        assert_eq!(objs.pods.len(), 3, "client, web-1, kube-proxy");
        assert_eq!(objs.nodes.len(), 1);
    }
}
