//! Which Node is this one. Locality (an endpoint on this node) and probe ports (pods this node's
//! kubelet probes) both depend on it.
//!
//! In order: `--node`, else the `NODE_NAME` variable a DaemonSet sets from `spec.nodeName`, else the
//! Node whose addresses include one of this host's addresses. The caller passes the variable and
//! the host's addresses in, so this stays pure.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::Node;

/// How to find this node (see [`select_node`]).
#[derive(Debug, Clone, Default)]
pub struct NodeHint {
    /// `--node`.
    pub flag: Option<String>,
    /// The `NODE_NAME` environment variable.
    pub env: Option<String>,
    /// This host's addresses.
    pub host_ips: Vec<IpAddr>,
}

impl NodeHint {
    /// [`select_node`] with this hint.
    pub fn select(&self, nodes: &[Node]) -> Option<(String, NodeSource)> {
        select_node(self.flag.as_deref(), self.env.as_deref(), nodes, &self.host_ips)
    }
}

/// How the node name was found, for the report's evidence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeSource {
    /// `--node`.
    Flag,
    /// The `NODE_NAME` environment variable.
    Env,
    /// A Node object whose addresses include a host address.
    HostAddress,
}

/// Picks this node's name: `flag`, else `env` (`NODE_NAME`; empty counts as unset), else the Node of
/// `nodes` with an address in `host_ips`. `None` when nothing matches.
pub fn select_node(
    flag: Option<&str>,
    env: Option<&str>,
    nodes: &[Node],
    host_ips: &[IpAddr],
) -> Option<(String, NodeSource)> {
    if let Some(n) = flag.filter(|n| !n.is_empty()) {
        return Some((n.to_owned(), NodeSource::Flag));
    }
    if let Some(n) = env.filter(|n| !n.is_empty()) {
        return Some((n.to_owned(), NodeSource::Env));
    }
    nodes
        .iter()
        .find(|n| node_ips(n).iter().any(|ip| host_ips.contains(ip)))
        .and_then(|n| n.metadata.name.clone())
        .map(|n| (n, NodeSource::HostAddress))
}

/// The IP addresses (InternalIP, ExternalIP) a Node reports; host names are skipped.
pub fn node_ips(node: &Node) -> Vec<IpAddr> {
    node.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|addrs| {
            addrs
                .iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| a.address.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
