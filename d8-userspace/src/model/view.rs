//! What this node looks like: kube-proxy's rules read in the current network namespace and the
//! host's addresses, enriched with the API's view when asked to. The result is the service model
//! the tracer and the classifier work from.

use std::{net::IpAddr, time::Duration};

use crate::{
    kernel::{self, host::host_addresses},
    model::{ProxyMode, ServiceModel, ServiceRef, Warning, WarningKind, k8s, rules},
};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Rules(#[from] rules::ReadError),
    #[error(transparent)]
    Api(#[from] k8s::Error),
}

/// The model plus how it was made.
#[derive(Debug, Clone, Default)]
pub struct NodeView {
    pub model: ServiceModel,
    /// The API (live or snapshot) was consulted.
    pub api_consulted: bool,
    /// This host's own addresses (in the current network namespace).
    pub host_ips: Vec<IpAddr>,
    /// Problems worth a `warning:` line.
    pub warnings: Vec<String>,
}

/// Reads kube-proxy's rules and health in the current network namespace and folds in the API's
/// view from `api` (a snapshot, the live API, or nothing). `node` names this node when the caller
/// knows it (`--node`); else `NODE_NAME`, else the API's Node that holds one of the host's addresses.
/// `rules_from` says where nftables-mode rules are read from (the kernel, the `nft` tool, or the
/// kernel with the tool as fallback); `only`, that the job is about that Service alone, so rule
/// readers may read only its part (see [`rules::read_node`]).
pub async fn view(
    api: &k8s::Source,
    node: Option<&str>,
    rules_from: rules::RulesFrom,
    only: Option<&ServiceRef>,
) -> Result<NodeView, Error> {
    let node_rules = rules::read_node(None, rules_from, only)?;
    let mut model = node_rules.model;
    let host_ips = host_addresses();
    for ip in &host_ips {
        if !model.node_ips.contains(ip) {
            model.node_ips.push(*ip);
        }
    }
    let hint = k8s::NodeHint {
        flag: node.map(str::to_string),
        env: std::env::var("NODE_NAME").ok().filter(|v| !v.is_empty()),
        host_ips: host_ips.clone(),
    };
    let applied = k8s::apply(&mut model, api, &hint, Duration::from_secs(5)).await?;
    let mut warnings = applied.warnings;
    if model.kube_proxy.mode == ProxyMode::Ipvs {
        model.warnings.extend(ipvs_modules_missing(&node_rules.virtual_servers));
    }
    if model.kube_proxy.mode == ProxyMode::Ipvs && !node_rules.virtual_servers.is_empty() {
        // IPVS names no Services: join its virtual servers to the API's Services by address.
        model.services = rules::ipvs::name_services(std::mem::take(&mut model.services), &node_rules.virtual_servers);
        if applied.api_consulted {
            mark_ipvs_endpoints_missing_from_api(&mut model);
        } else if !model.services.iter().any(|s| !s.service.namespace.is_empty()) {
            warnings.push(
                "kube-proxy runs in IPVS mode, which keeps no Service names in the kernel (only virtual \
                 servers such as TCP 10.96.0.1:443): without the API (--no-k8s) no Service can be found \
                 by name; give --k8s-snapshot FILE or --kubeconfig"
                    .into(),
            );
        }
    }
    if let Some((name, _)) = &applied.node {
        model.node = Some(name.clone());
    }
    Ok(NodeView {
        model,
        api_consulted: applied.api_consulted,
        host_ips,
        warnings,
    })
}

/// The kernel modules kube-proxy's IPVS mode needs (`ip_vs`, and the scheduler of every virtual
/// server) that this kernel lacks. Without them kube-proxy cannot program the virtual servers:
/// its rules go missing, and the runbook treats that apart (load the modules).
fn ipvs_modules_missing(virtual_servers: &[rules::ipvs::VirtualServer]) -> Vec<Warning> {
    let mut wanted: Vec<String> = vec!["ip_vs".into()];
    for vs in virtual_servers {
        let m = format!("ip_vs_{}", vs.scheduler);
        if !vs.scheduler.is_empty() && !wanted.contains(&m) {
            wanted.push(m);
        }
    }
    wanted
        .into_iter()
        .filter(|m| kernel::module_present(m) == Some(false))
        .map(|m| {
            Warning::new(
                WarningKind::IpvsModules,
                "/sys/module",
                format!("IPVS kernel module {m} is not loaded (kube-proxy's IPVS mode needs it)"),
            )
        })
        .collect()
}

/// The API was asked before IPVS's real servers were joined to its Services (the join needs the
/// API's addresses), so the real servers the API does not list are still `in_api: None`: they are
/// `false`, as for the other modes' rule endpoints (a stale real server).
fn mark_ipvs_endpoints_missing_from_api(model: &mut ServiceModel) {
    for svc in model.services.iter_mut().filter(|s| !s.service.namespace.is_empty()) {
        for e in svc.endpoints.iter_mut().filter(|e| e.in_rules && e.in_api.is_none()) {
            e.in_api = Some(false);
        }
    }
}
