//! What this node looks like: kube-proxy's rules read in the current network namespace, the
//! host's addresses and conntrack counters, enriched with the API's view when asked to. The
//! result is the service model the tracer and the classifier work from.

use std::{net::IpAddr, time::Duration};

use crate::{
    classify::ConntrackStats,
    cli::Selection,
    model::{ProxyMode, ServiceModel, k8s, rules},
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

/// Where the API's view comes from, per the selection flags.
pub fn api_source(sel: &Selection) -> k8s::Source {
    if sel.no_k8s {
        k8s::Source::Disabled
    } else if let Some(path) = &sel.k8s_snapshot {
        k8s::Source::Snapshot(path.clone())
    } else {
        k8s::Source::Live { kubeconfig: sel.kubeconfig.clone() }
    }
}

/// Reads kube-proxy's rules and health in the current network namespace and folds in the API's
/// view (`--k8s-snapshot`, the live API, or nothing with `--no-k8s`).
pub async fn view(sel: &Selection) -> Result<NodeView, Error> {
    let node_rules = rules::read_node(None)?;
    let mut model = node_rules.model;
    let host_ips = host_addresses();
    for ip in &host_ips {
        if !model.node_ips.contains(ip) {
            model.node_ips.push(*ip);
        }
    }
    let hint = k8s::NodeHint {
        flag: sel.node.clone(),
        env: std::env::var("NODE_NAME").ok().filter(|v| !v.is_empty()),
        host_ips: host_ips.clone(),
    };
    let applied = k8s::apply(&mut model, &api_source(sel), &hint, Duration::from_secs(5)).await?;
    let mut warnings = applied.warnings;
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
    Ok(NodeView { model, api_consulted: applied.api_consulted, host_ips, warnings })
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

/// The `explain` verdict: rules and API alone, no flows. Returns the report and the warnings to
/// print (the view's, and a word when no kube-proxy rule exists at all).
pub fn explain_report(view: &NodeView, service: &crate::model::ServiceRef) -> (crate::report::Report, Vec<String>) {
    let mut warnings = view.warnings.clone();
    if view.model.service(service).is_none() && view.model.services.is_empty() {
        // Nothing at all to explain from: still a verdict (rules missing / kube-proxy down).
        warnings.push("no kube-proxy rules found in this network namespace".into());
    }
    let ctx = crate::classify::Context {
        api_consulted: view.api_consulted,
        conntrack: Some(conntrack_stats(None)),
        host_ips: view.host_ips.clone(),
        traced: false,
        duration_ms: None,
        lost_events: 0,
    };
    (crate::classify::build_report(service, &[], &view.model, &ctx), warnings)
}

/// Addresses configured on this network namespace's interfaces, loopback excluded.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says how to read it.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(IpAddr::V4(ip));
                }
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 addresses are sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    out.push(IpAddr::V6(ip));
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out.dedup();
    out
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sum of the `drop` column of `/proc/net/stat/nf_conntrack` (hex, one row per CPU).
pub fn conntrack_drop_counter() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack").ok()?;
    parse_conntrack_drops(&text)
}

fn parse_conntrack_drops(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = header.iter().position(|h| *h == "drop")?;
    Some(
        lines
            .filter_map(|l| l.split_whitespace().nth(col))
            .filter_map(|v| u64::from_str_radix(v, 16).ok())
            .sum(),
    )
}

/// Conntrack table fill of this network namespace; `drop_delta` from a `before` reading.
pub fn conntrack_stats(drops_before: Option<u64>) -> ConntrackStats {
    let drops_now = conntrack_drop_counter();
    ConntrackStats {
        count: read_u64("/proc/sys/net/netfilter/nf_conntrack_count"),
        max: read_u64("/proc/sys/net/netfilter/nf_conntrack_max"),
        drop_delta: match (drops_before, drops_now) {
            (Some(b), Some(n)) => Some(n.saturating_sub(b)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_conntrack_drops_over_cpus() {
        let text = "entries  clashres  found new invalid ignore delete chainlength insert insert_failed drop early_drop error\n\
00000003  00000000  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000000 00000000\n\
00000003  00000000  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 00000000 00000000\n";
        assert_eq!(parse_conntrack_drops(text), Some(15));
        assert_eq!(parse_conntrack_drops("garbage"), None);
    }

    #[test]
    fn host_addresses_exclude_loopback() {
        assert!(host_addresses().iter().all(|ip| !ip.is_loopback()));
    }
}
