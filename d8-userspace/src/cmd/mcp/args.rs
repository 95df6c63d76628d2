//! The tools' inputs: their JSON schemas (derived with schemars, served in `tools/list`) and the
//! checks that turn them into what the CLI would have parsed (a [`Target`], a [`Scope`], a
//! bounded duration). Everything here is pure and unit-tested.

use std::{path::PathBuf, time::Duration};

use schemars::JsonSchema;
use serde::Deserialize;

use super::jobs::Failure;
use crate::{
    model::k8s,
    trace::{Destination, Scope, ServiceSelector, Target},
};

/// `trace_service` traces this long when `seconds` is not given.
pub const DEFAULT_SECONDS: u64 = 10;
/// The longest trace a call may ask for: an unattended agent must not hold hooks for long.
pub const MAX_SECONDS: u64 = 60;

/// Input of `explain_service`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExplainInput {
    /// The Service: NAMESPACE/NAME, optionally :PORT (a port number or a Service port name), e.g.
    /// `default/web` or `kube-system/kube-dns:dns`; or the address clients use, IP:PORT[/PROTO]
    /// (tcp by default), e.g. `10.96.0.10:53/udp`: the Service that holds it, or the address
    /// itself when none does (verdict `cluster_ip_unallocated`).
    pub service: String,
    /// The node's network namespace: a name under /run/netns or a path such as /proc/PID/ns/net.
    /// Default: the server's `--netns`, else the namespace the server runs in (the node's, on a node).
    #[serde(default)]
    pub netns: Option<String>,
    /// Read the Kubernetes API's state from this file instead of the live API: the JSON List printed by
    /// `kubectl get services,endpointslices,pods,nodes -A -o json`. Default: the server's
    /// `--k8s-snapshot`/`--kubeconfig`/`--no-k8s`, else the live API.
    #[serde(default)]
    pub k8s_snapshot: Option<String>,
}

/// Input of `trace_service`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TraceInput {
    /// The Service: NAMESPACE/NAME, optionally :PORT (a port number or a Service port name), e.g.
    /// `default/web` or `kube-system/kube-dns:dns`; or the address clients use, IP:PORT[/PROTO]
    /// (tcp by default), e.g. `10.96.0.10:53/udp`: the Service that holds it, or the address
    /// itself when none does (verdict `cluster_ip_unallocated`).
    pub service: String,
    /// How long to trace, in seconds (1 to 60, default 10). Only flows that happen meanwhile are
    /// seen: reproduce the failing traffic during the trace.
    #[serde(default)]
    #[schemars(range(min = 1, max = 60))]
    pub seconds: Option<u64>,
    /// The node's network namespace: a name under /run/netns or a path such as /proc/PID/ns/net.
    /// Default: the server's `--netns`, else the namespace the server runs in (the node's, on a node).
    #[serde(default)]
    pub netns: Option<String>,
    /// Read the Kubernetes API's state from this file instead of the live API: the JSON List printed by
    /// `kubectl get services,endpointslices,pods,nodes -A -o json`. Default: the server's
    /// `--k8s-snapshot`/`--kubeconfig`/`--no-k8s`, else the live API.
    #[serde(default)]
    pub k8s_snapshot: Option<String>,
    /// Also write the packets of the flows that failed (pre- and post-DNAT, drops, the node's
    /// or backend's answer; the verdict in each flow's last packet comment) to a pcapng file on
    /// the node, and return its path as `pcap_file` (open it with Wireshark or tshark).
    #[serde(default)]
    pub pcap: Option<bool>,
}

/// Input of `doctor`.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DoctorInput {
    /// Check inside this network namespace (a name under /run/netns or a path). Default: the
    /// server's `--netns`, else the namespace the server runs in.
    #[serde(default)]
    pub netns: Option<String>,
}

/// `NS/NAME[:PORT]`, or `IP:PORT[/PROTO]` (the CLI's `--dest`), with the CLI's own parsers and
/// sentences. An address is told apart by what precedes its first `/`: an IP:PORT, never a
/// namespace.
pub fn service(s: &str) -> Result<Target, Failure> {
    let s = s.trim();
    let head = s.split('/').next().unwrap_or_default();
    if head.parse::<std::net::SocketAddr>().is_ok() {
        return s
            .parse::<Destination>()
            .map(Target::Address)
            .map_err(|e| Failure::usage(format!("service {e}")));
    }
    s.parse::<ServiceSelector>()
        .map(Target::Service)
        .map_err(|e| Failure::usage(format!("service {e}")))
}

/// The trace's duration: `DEFAULT_SECONDS` when absent, refused outside 1..=`MAX_SECONDS`.
pub fn seconds(requested: Option<u64>) -> Result<Duration, Failure> {
    match requested {
        None => Ok(Duration::from_secs(DEFAULT_SECONDS)),
        Some(s) if (1..=MAX_SECONDS).contains(&s) => Ok(Duration::from_secs(s)),
        Some(s) => Err(Failure::usage(format!(
            "seconds: {s} is out of range; a trace lasts 1 to {MAX_SECONDS} seconds (default {DEFAULT_SECONDS})"
        ))),
    }
}

/// The server's selection flags (`d8-trace mcp --netns ... --k8s-snapshot ...`) with the call's
/// `netns` and `k8s_snapshot` in their place. A snapshot named by the call replaces the server's
/// `--kubeconfig`/`--no-k8s`.
pub fn selection(defaults: &Scope, netns: Option<&str>, k8s_snapshot: Option<&str>) -> Result<Scope, Failure> {
    let mut sel = defaults.clone();
    if let Some(ns) = netns {
        let ns = ns.trim();
        if ns.is_empty() {
            return Err(Failure::usage(
                "netns: empty; give a name under /run/netns or a path such as /proc/PID/ns/net, or leave it out",
            ));
        }
        sel.netns = Some(ns.to_string());
    }
    if let Some(path) = k8s_snapshot {
        let path = path.trim();
        if path.is_empty() {
            return Err(Failure::usage("k8s_snapshot: empty; give a file path, or leave it out"));
        }
        sel.api = k8s::Source::Snapshot(PathBuf::from(path));
    }
    Ok(sel)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Scope {
        Scope::default()
    }

    #[test]
    fn durations_default_to_ten_and_are_capped_at_sixty() {
        assert_eq!(seconds(None).unwrap(), Duration::from_secs(10));
        assert_eq!(seconds(Some(1)).unwrap(), Duration::from_secs(1));
        assert_eq!(seconds(Some(60)).unwrap(), Duration::from_secs(60));
        for bad in [0, 61, 3600, u64::MAX] {
            let err = seconds(Some(bad)).unwrap_err();
            assert_eq!(err.exit_code(), 2);
            assert!(err.message.contains("1 to 60 seconds"), "{}", err.message);
        }
    }

    #[test]
    fn services_parse_like_the_cli() {
        let selector = |s: &str| match service(s).unwrap() {
            Target::Service(sel) => sel,
            other => panic!("{s}: {other:?}"),
        };
        let arg = selector("default/web");
        assert_eq!((arg.service.to_string(), arg.port), ("default/web".to_string(), None));
        let arg = selector(" kube-system/kube-dns:dns ");
        assert_eq!(arg.port.as_deref(), Some("dns"));
        // An address, as the CLI's --dest takes it.
        assert!(
            matches!(service("10.96.0.10:53/udp").unwrap(), Target::Address(d) if d.to_string() == "10.96.0.10:53/udp")
        );
        assert!(
            service("10.96.0.10:53/icmp")
                .unwrap_err()
                .message
                .contains("unknown protocol")
        );
        for bad in ["web", "default/web:", "default/we b", "/web", ""] {
            let err = service(bad).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{bad}");
            assert!(err.message.starts_with("service `"), "{}", err.message);
        }
        assert!(service("web").unwrap_err().message.contains("NAMESPACE/NAME"));
    }

    #[test]
    fn call_arguments_override_the_servers_flags() {
        let mut d = defaults();
        d.netns = Some("node-a".into());
        d.api = k8s::Source::Disabled;
        let sel = selection(&d, None, None).unwrap();
        assert_eq!(
            (sel.netns.as_deref(), &sel.api),
            (Some("node-a"), &k8s::Source::Disabled)
        );
        let sel = selection(&d, Some("node-b"), Some("/tmp/snap.json")).unwrap();
        assert_eq!(sel.netns.as_deref(), Some("node-b"));
        assert_eq!(
            sel.api,
            k8s::Source::Snapshot(PathBuf::from("/tmp/snap.json")),
            "a snapshot named by the call replaces --no-k8s"
        );
        assert!(selection(&d, Some(" "), None).is_err());
        assert!(selection(&d, None, Some("")).is_err());
    }

    #[test]
    fn inputs_reject_unknown_fields_and_wrong_types() {
        let ok: TraceInput = serde_json::from_value(serde_json::json!({"service": "a/b", "seconds": 5})).unwrap();
        assert_eq!(ok.seconds, Some(5));
        assert!(serde_json::from_value::<TraceInput>(serde_json::json!({"service": "a/b", "duration": 5})).is_err());
        assert!(serde_json::from_value::<TraceInput>(serde_json::json!({"service": "a/b", "seconds": -1})).is_err());
        assert!(
            serde_json::from_value::<ExplainInput>(serde_json::json!({})).is_err(),
            "service is required"
        );
        let d: DoctorInput = serde_json::from_value(serde_json::json!({})).unwrap();
        assert!(d.netns.is_none());
    }
}
