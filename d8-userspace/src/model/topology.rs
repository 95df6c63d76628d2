//! Which endpoints kube-proxy programs on one node: its `CategorizeEndpoints` (`pkg/proxy/topology.go`),
//! restated over plain values so the classifier can compare the rules with what kube-proxy meant to
//! write, and the lab can write what kube-proxy would.
//!
//! kube-proxy decides per Service port, and separately for the two traffic policies:
//! - **Cluster** (every ClusterIP flow unless internalTrafficPolicy=Local, and external traffic with
//!   externalTrafficPolicy=Cluster): the ready endpoints, narrowed by topology hints. Node hints
//!   (`hints.forNodes`, written for `trafficDistribution: PreferSameNode`; kube-proxy 1.33 behind
//!   the `PreferSameTrafficDistribution` gate, on by default from 1.34) apply when every ready
//!   endpoint has one and one names this node; else zone hints (`hints.forZones`, Topology Aware
//!   Hints, kube-proxy 1.21, on by default from 1.24; `trafficDistribution: PreferClose` 1.30)
//!   when every ready endpoint has one and one names this node's `topology.kubernetes.io/zone`;
//!   else all ready endpoints. With no ready endpoint at all, the serving and terminating ones
//!   (1.26, GA 1.28).
//! - **Local** (internalTrafficPolicy=Local, or externalTrafficPolicy=Local on an externally
//!   reachable Service): this node's ready endpoints, else its serving-terminating ones; topology
//!   hints never apply.
//!
//! The endpoints that get a chain (`allReachableEndpoints`) are the union of both.

use serde::{Deserialize, Serialize};

/// The zone label kube-proxy reads from its Node (`v1.LabelTopologyZone`).
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

/// One endpoint of a Service port, as `CategorizeEndpoints` sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Candidate {
    pub ready: bool,
    /// `serving && terminating`: used only when no endpoint is ready.
    pub serving_terminating: bool,
    /// On the node being decided for.
    pub local: bool,
    /// `hints.forZones[].name`.
    pub zone_hints: Vec<String>,
    /// `hints.forNodes[].name`.
    pub node_hints: Vec<String>,
}

/// Which policies a Service port uses (kube-proxy's `UsesClusterEndpoints` / `UsesLocalEndpoints`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policies {
    pub cluster: bool,
    pub local: bool,
}

impl Policies {
    /// From the Service's traffic policies and whether it is reachable from outside the cluster
    /// (a NodePort, external or load-balancer IP): externalTrafficPolicy counts only then.
    pub fn of(internal_local: bool, external_local: bool, externally_accessible: bool) -> Self {
        let external_local = external_local && externally_accessible;
        Self {
            cluster: !internal_local || externally_accessible && !external_local,
            local: internal_local || external_local,
        }
    }
}

/// What narrowed the Cluster-policy endpoints (kube-proxy's topology mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "by", content = "for")]
pub enum TopologyMode {
    /// Node hints for this node (`PreferSameNode`).
    SameNode(String),
    /// Zone hints for this node's zone (`PreferSameZone`, `PreferClose`, topology-mode Auto).
    SameZone(String),
}

impl std::fmt::Display for TopologyMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SameNode(n) => write!(f, "node hints for {n}"),
            Self::SameZone(z) => write!(f, "zone hints for {z}"),
        }
    }
}

/// `CategorizeEndpoints`' answer, as indices into its input.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Categorized {
    /// The Cluster-policy endpoints (empty when the port never uses that policy).
    pub cluster: Vec<usize>,
    /// The Local-policy endpoints (empty when the port never uses that policy).
    pub local: Vec<usize>,
    /// Endpoints that get a chain: the union, in input order.
    pub all_reachable: Vec<usize>,
    /// Some endpoint is usable anywhere in the cluster (kube-proxy then does not REJECT).
    pub has_any: bool,
    /// What narrowed `cluster`, if hints did.
    pub mode: Option<TopologyMode>,
}

/// kube-proxy's `CategorizeEndpoints` for the node `node` in zone `zone` (`None`: no zone label).
pub fn categorize(eps: &[Candidate], policies: Policies, node: &str, zone: Option<&str>) -> Categorized {
    let mut out = Categorized::default();
    if eps.is_empty() {
        return out;
    }
    let indices = |keep: &dyn Fn(&Candidate) -> bool| -> Vec<usize> {
        eps.iter()
            .enumerate()
            .filter(|(_, e)| keep(e))
            .map(|(i, _)| i)
            .collect()
    };
    if policies.cluster {
        out.mode = topology_mode(eps, node, zone);
        out.cluster = indices(&|e| e.ready && available(e, out.mode.as_ref()));
        if out.cluster.is_empty() {
            out.cluster = indices(&|e| e.serving_terminating);
        }
        out.has_any = !out.cluster.is_empty();
    }
    if policies.local {
        out.has_any |= eps.iter().any(|e| e.ready || e.serving_terminating);
        out.local = if eps.iter().any(|e| e.local && e.ready) {
            indices(&|e| e.local && e.ready)
        } else {
            indices(&|e| e.local && e.serving_terminating)
        };
    }
    out.all_reachable = indices(&|_| true)
        .into_iter()
        .filter(|i| out.cluster.contains(i) || out.local.contains(i))
        .collect();
    out
}

/// `topologyModeFromHints`: node hints, else zone hints, else none.
fn topology_mode(eps: &[Candidate], node: &str, zone: Option<&str>) -> Option<TopologyMode> {
    let ready: Vec<&Candidate> = eps.iter().filter(|e| e.ready).collect();
    if ready.is_empty() {
        return None;
    }
    let all_and_one = |hints: fn(&Candidate) -> &[String], name: &str| {
        ready.iter().all(|e| !hints(e).is_empty()) && ready.iter().any(|e| hints(e).iter().any(|h| h == name))
    };
    if all_and_one(|e| &e.node_hints, node) {
        return Some(TopologyMode::SameNode(node.to_owned()));
    }
    let zone = zone.filter(|z| !z.is_empty())?;
    all_and_one(|e| &e.zone_hints, zone).then(|| TopologyMode::SameZone(zone.to_owned()))
}

/// `availableForTopology`.
fn available(e: &Candidate, mode: Option<&TopologyMode>) -> bool {
    match mode {
        None => true,
        Some(TopologyMode::SameNode(n)) => e.node_hints.contains(n),
        Some(TopologyMode::SameZone(z)) => e.zone_hints.contains(z),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: Policies = Policies {
        cluster: true,
        local: false,
    };

    fn ep(ready: bool, local: bool, zones: &[&str], nodes: &[&str]) -> Candidate {
        Candidate {
            ready,
            serving_terminating: false,
            local,
            zone_hints: zones.iter().map(|s| s.to_string()).collect(),
            node_hints: nodes.iter().map(|s| s.to_string()).collect(),
        }
    }

    // The cases below restate kube-proxy's own table (`TestCategorizeEndpoints`, pkg/proxy/topology_test.go).

    #[test]
    fn zone_hints_for_this_zone_narrow_the_cluster_endpoints() {
        let eps = [
            ep(true, false, &["zone-a"], &[]),
            ep(true, false, &["zone-b"], &[]),
            ep(true, false, &["zone-c"], &[]),
            ep(true, false, &["zone-a"], &[]),
        ];
        let c = categorize(&eps, CLUSTER, "node-1", Some("zone-a"));
        assert_eq!(c.cluster, [0, 3]);
        assert_eq!(c.all_reachable, [0, 3]);
        assert_eq!(c.mode, Some(TopologyMode::SameZone("zone-a".into())));
        assert!(c.has_any);
        assert_eq!(c.mode.unwrap().to_string(), "zone hints for zone-a");
    }

    #[test]
    fn hints_are_ignored_unless_every_ready_endpoint_has_one() {
        // One ready endpoint without a hint: all ready endpoints. A not-ready one without a hint
        // does not count.
        let eps = [
            ep(true, false, &["zone-a"], &[]),
            ep(true, false, &[], &[]),
            ep(false, false, &[], &[]),
        ];
        let c = categorize(&eps, CLUSTER, "node-1", Some("zone-a"));
        assert_eq!((c.cluster, c.mode), (vec![0, 1], None));
        let eps = [ep(true, false, &["zone-a"], &[]), ep(false, false, &[], &[])];
        let c = categorize(&eps, CLUSTER, "node-1", Some("zone-a"));
        assert_eq!(c.cluster, [0]);
        assert_eq!(c.mode, Some(TopologyMode::SameZone("zone-a".into())));
    }

    #[test]
    fn hints_naming_no_endpoint_for_this_zone_or_no_zone_label_mean_all_ready() {
        let eps = [ep(true, false, &["zone-b"], &[]), ep(true, false, &["zone-c"], &[])];
        let c = categorize(&eps, CLUSTER, "node-1", Some("zone-a"));
        assert_eq!((c.cluster, c.mode), (vec![0, 1], None));
        let c = categorize(&eps, CLUSTER, "node-1", None);
        assert_eq!((c.cluster, c.mode), (vec![0, 1], None));
    }

    #[test]
    fn node_hints_win_over_zone_hints_and_fall_back_to_them() {
        let eps = [
            ep(true, false, &["zone-a"], &["node-1"]),
            ep(true, false, &["zone-a"], &["node-2"]),
            ep(true, false, &["zone-b"], &["node-3"]),
        ];
        let c = categorize(&eps, CLUSTER, "node-1", Some("zone-a"));
        assert_eq!(c.cluster, [0]);
        assert_eq!(c.mode.unwrap().to_string(), "node hints for node-1");
        // No endpoint hinted for node-4: zone hints decide.
        let c = categorize(&eps, CLUSTER, "node-4", Some("zone-a"));
        assert_eq!(c.cluster, [0, 1]);
        assert_eq!(c.mode, Some(TopologyMode::SameZone("zone-a".into())));
        // One endpoint without a node hint: zone hints decide.
        let eps = [
            ep(true, false, &["zone-a"], &["node-1"]),
            ep(true, false, &["zone-a"], &[]),
        ];
        let c = categorize(&eps, CLUSTER, "node-1", Some("zone-a"));
        assert_eq!(c.cluster, [0, 1]);
    }

    #[test]
    fn no_ready_endpoint_falls_back_to_serving_terminating_ones() {
        let mut t = ep(false, false, &[], &[]);
        t.serving_terminating = true;
        let eps = [ep(false, false, &[], &[]), t];
        let c = categorize(&eps, CLUSTER, "node-1", Some("zone-a"));
        assert_eq!((c.cluster, c.has_any, c.mode), (vec![1], true, None));
        let c = categorize(&[ep(false, true, &[], &[])], CLUSTER, "node-1", None);
        assert_eq!((c.cluster.len(), c.has_any), (0, false));
    }

    #[test]
    fn local_policy_ignores_hints_and_unions_with_cluster() {
        // internalTrafficPolicy=Local, not externally reachable: local ready endpoints only.
        let itp = Policies::of(true, false, false);
        assert_eq!(
            itp,
            Policies {
                cluster: false,
                local: true
            }
        );
        let eps = [
            ep(true, true, &["zone-b"], &[]),
            ep(true, false, &["zone-a"], &[]),
            ep(true, true, &["zone-b"], &[]),
        ];
        let c = categorize(&eps, itp, "node-1", Some("zone-a"));
        assert_eq!(
            (c.cluster.clone(), c.local.clone(), c.all_reachable.clone()),
            (vec![], vec![0, 2], vec![0, 2])
        );
        assert!(c.has_any);
        // externalTrafficPolicy=Local on a NodePort: zone-narrowed cluster endpoints plus the
        // local ones the hints left out.
        let etp = Policies::of(false, true, true);
        assert_eq!(
            etp,
            Policies {
                cluster: true,
                local: true
            }
        );
        let c = categorize(&eps, etp, "node-1", Some("zone-a"));
        assert_eq!(c.cluster, [1]);
        assert_eq!(c.local, [0, 2]);
        assert_eq!(c.all_reachable, [0, 1, 2]);
        // externalTrafficPolicy=Local means nothing on a ClusterIP-only Service.
        assert_eq!(Policies::of(false, true, false), CLUSTER);
    }

    #[test]
    fn local_policy_without_local_ready_endpoints_uses_local_terminating_ones() {
        let mut t = ep(false, true, &[], &[]);
        t.serving_terminating = true;
        let eps = [ep(true, false, &[], &[]), t];
        let c = categorize(&eps, Policies::of(true, false, false), "node-1", None);
        assert_eq!((c.local, c.has_any), (vec![1], true));
    }
}
