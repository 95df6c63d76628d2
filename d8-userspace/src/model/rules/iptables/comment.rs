//! kube-proxy's rule comments (`"ns/svc:port cluster IP"`, `"ns/svc:port -> 10.0.0.1:80"`, ...):
//! which Service port a rule is for and what it does.
//!
//! In iptables mode the comments are what names Services: the chains carry only hashes
//! (`names.rs` checks them). The grammar is its own file because it is kube-proxy's wording, which
//! changes between versions, kept apart from how rules are lexed (`lex.rs`) and what the builder
//! makes of them (`build.rs`).

/// What a kube-proxy comment says about the rule carrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CommentKind {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    NoEndpoints,
    NoLocalEndpoints,
    HealthCheckNodePort,
    /// `N -> ip:port` (the payload is kept in the rule).
    ToEndpoint,
    /// The EXT chain's "... for N external destinations" rules.
    ExternalDestinations,
    /// KUBE-FW's fall-through rule and KUBE-PROXY-FIREWALL's drop.
    Firewall,
    /// Just `N` (KUBE-SEP rules, KUBE-NODEPORTS).
    Plain,
}

/// Splits a kube-proxy comment into the service port name `N` and what the rule is for.
pub(super) fn parse_comment(c: &str) -> Option<(&str, CommentKind)> {
    const SUFFIXES: &[(&str, CommentKind)] = &[
        (" cluster IP", CommentKind::ClusterIp),
        (" external IP", CommentKind::ExternalIp),
        (" loadbalancer IP", CommentKind::LoadBalancerIp),
        (" has no local endpoints", CommentKind::NoLocalEndpoints),
        (" has no endpoints", CommentKind::NoEndpoints),
        (" health check node port", CommentKind::HealthCheckNodePort),
        (" external destinations", CommentKind::ExternalDestinations),
    ];
    let n = if let Some((n, _)) = c.split_once(" -> ") {
        return valid_port_name(n).then_some((n, CommentKind::ToEndpoint));
    } else if let Some(rest) = c.strip_prefix("other traffic to ") {
        return rest
            .strip_suffix(" will be dropped by KUBE-PROXY-FIREWALL")
            .filter(|n| valid_port_name(n))
            .map(|n| (n, CommentKind::Firewall));
    } else if let Some((n, _)) = c.split_once(" traffic not accepted by ") {
        return valid_port_name(n).then_some((n, CommentKind::Firewall));
    } else {
        c
    };
    for (suffix, kind) in SUFFIXES {
        if let Some(mut n) = n.strip_suffix(suffix) {
            if *kind == CommentKind::ExternalDestinations {
                n = [
                    "pod traffic for ",
                    "masquerade LOCAL traffic for ",
                    "route LOCAL traffic for ",
                    "masquerade traffic for ",
                ]
                .iter()
                .find_map(|p| n.strip_prefix(p))?;
            }
            // Old kube-proxy wrote "ns/svc: has no local endpoints".
            let n = n.strip_suffix(':').unwrap_or(n);
            return valid_port_name(n).then_some((n, *kind));
        }
    }
    valid_port_name(n).then_some((n, CommentKind::Plain))
}

/// `ns/name` or `ns/name:port`, no spaces.
fn valid_port_name(n: &str) -> bool {
    !n.is_empty()
        && !n.contains(char::is_whitespace)
        && n.split_once('/')
            .is_some_and(|(ns, rest)| !ns.is_empty() && !rest.is_empty())
}
