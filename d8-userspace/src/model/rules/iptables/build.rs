//! The building stage: kube-proxy's chains read as Services: frontends from `KUBE-SERVICES` and
//! `KUBE-NODEPORTS`, endpoints from the `KUBE-SVC-`/`KUBE-SVL-` dispatch and the `KUBE-SEP-` chains
//! it jumps to, and the facts and problems found on the way.
//!
//! This is where the reader knows kube-proxy's iptables design (reference §1): which chain holds
//! which rules, how the probabilities of a dispatch add up, how a chain's hash names its Service
//! port (`names.rs`) when comments do not (`comment.rs`). It works on the indexed dump
//! (`table.rs`), by chain name and in kube-proxy's order, never on text. Each rule a step
//! understands is marked; the rest of kube-proxy's rules are reported as not understood.
//!
//! What it finds joins the model through [`Services`] (`rules::service`), shared with the other
//! readers, so what counts as the same frontend or endpoint is decided in one place.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use super::Parsed;
use super::comment::{CommentKind, parse_comment};
use super::lex::{
    D_OR_S, D_SHORT, MATCH_SET, NTH, PROBABILITY, RCHECK, SECONDS, TO_DESTINATION, host_port, odd_address,
};
use super::table::{Dump, NO_CHAIN, Rule};
use crate::model::rules::service::Services;
use crate::model::rules::{FastMap, FastSet, names};
use crate::model::{FrontendKind, Protocol, ProxyMode};

/// Builds the Services of a read dump.
pub(super) fn build(dump: &Dump<'_>) -> Parsed {
    Builder::new(dump).build()
}

/// A service port: `N` and protocol.
type PortKey = (Rc<str>, Protocol);

const SERVICE_PREFIXES: [&str; 4] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-"];
/// Chains kube-proxy (or kubelet) writes with fixed content; their rules are not modelled.
const STATIC_CHAINS: &[&str] = &[
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    "KUBE-FORWARD",
    "KUBE-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-KUBELET-CANARY",
    "KUBE-IPTABLES-HINT",
    // IPVS mode (§2.3): ipset-driven, no per-service content.
    "KUBE-LOAD-BALANCER",
    "KUBE-NODE-PORT",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
];
/// Targets that are not chains.
const BUILTIN_TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "MARK",
    "CONNMARK",
    "LOG",
    "NFLOG",
    "NOTRACK",
    "CT",
    "TPROXY",
    "REDIRECT",
    "TCPMSS",
    "CHECKSUM",
    "NFQUEUE",
    "QUEUE",
    "TRACE",
    "AUDIT",
    "SET",
    "CLASSIFY",
    "DSCP",
    "TOS",
    "TTL",
];

fn hash_suffix(chain: &str) -> Option<&str> {
    SERVICE_PREFIXES.iter().find_map(|p| chain.strip_prefix(p))
}

/// The protocol whose recomputed service hash equals `suffix`.
fn protocol_by_hash(n: &str, suffix: &str) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| names::service_hash_is(n, p.as_str(), suffix))
}

/// One dispatch rule of a KUBE-SVC/KUBE-SVL chain.
struct Dispatch<'a> {
    rule: &'a Rule<'a>,
    sep: &'a str,
    probability: Option<f64>,
}

struct Builder<'d> {
    dump: &'d Dump<'d>,
    understood: Vec<bool>,
    warnings: Vec<String>,
    /// Service-chain hash suffix -> port.
    owners: FastMap<String, PortKey>,
    services: Services,
    v6: bool,
    node_port_any: bool,
    node_port_ips: Vec<IpAddr>,
    /// By chain id: a service chain jumps to it.
    referenced_seps: Vec<bool>,
    mode_iptables: bool,
    mode_ipvs: bool,
}

impl<'d> Builder<'d> {
    fn new(dump: &'d Dump<'d>) -> Self {
        let v6 = dump
            .rules
            .iter()
            .any(|r| r.arg(D_OR_S).is_some_and(|a| a.contains(':')));
        Self {
            dump,
            understood: vec![false; dump.rules.len()],
            warnings: dump.warnings.clone(),
            owners: FastMap::default(),
            services: Services::default(),
            v6,
            node_port_any: false,
            node_port_ips: Vec::new(),
            referenced_seps: vec![false; dump.chain_slots()],
            mode_iptables: false,
            mode_ipvs: false,
        }
    }

    fn warn_rule(&mut self, rule: &Rule<'_>, msg: impl std::fmt::Display) {
        self.warnings.push(format!(
            "{} {} {}: {msg}",
            self.dump.source_name, self.dump.place, rule.line
        ));
    }

    fn ok(&mut self, rule: &Rule<'_>) {
        self.understood[rule.index as usize] = true;
    }

    /// The rules of a chain, in order (borrowing the dump, not the builder).
    fn rules_of(&self, table: &str, chain: &str) -> impl Iterator<Item = &'d Rule<'d>> + use<'d> {
        let dump: &'d Dump<'d> = self.dump;
        dump.chain(table, chain)
            .unwrap_or(&[])
            .iter()
            .map(move |&i| &dump.rules[i as usize])
    }

    /// The rules of chain `id`.
    fn rules_by_id(&self, id: u32) -> impl Iterator<Item = &'d Rule<'d>> + use<'d> {
        let dump: &'d Dump<'d> = self.dump;
        dump.rules_by_id(id).iter().map(move |&i| &dump.rules[i as usize])
    }

    fn any_ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }

    fn build(mut self) -> Parsed {
        self.find_owners();
        self.read_nat_services();
        self.read_nat_nodeports();
        self.read_service_chains();
        self.read_filter();
        self.check_jumps();
        self.check_unreferenced_seps();
        self.report_not_understood();

        let dump = self.dump;
        let rules_present = dump.exists("nat", "KUBE-SERVICES");
        let mode_iptables = self.mode_iptables
            || dump
                .chain_names("nat")
                .any(|c| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-"));
        let mode_hint = if mode_iptables {
            Some(ProxyMode::Iptables)
        } else if self.mode_ipvs {
            Some(ProxyMode::Ipvs)
        } else if rules_present {
            // KUBE-SERVICES exists but holds nothing of either mode: an iptables node without services.
            Some(ProxyMode::Iptables)
        } else {
            None
        };
        Parsed {
            services: self.services.into_sorted(),
            warnings: self.warnings,
            rules_present,
            mode_hint,
            node_port_ips: self.node_port_ips,
            rule_count: dump.rules.len(),
        }
    }

    /// Learns which service port each service-chain hash belongs to, from every comment that names
    /// one (KUBE-SERVICES, KUBE-NODEPORTS, the chains themselves, KUBE-PROXY-FIREWALL).
    fn find_owners(&mut self) {
        let dump = self.dump;
        for rule in &dump.rules {
            let Some((n, kind)) = rule.comment().and_then(parse_comment) else {
                continue;
            };
            // The chain the comment is about: the jump target from KUBE-SERVICES/KUBE-NODEPORTS, the
            // chain itself inside a service chain, the KUBE-FW chain named by KUBE-PROXY-FIREWALL.
            let mut candidates: Vec<&str> = Vec::new();
            if let Some(t) = rule.target() {
                candidates.push(t);
            }
            candidates.push(&rule.chain);
            if kind == CommentKind::Firewall
                && let Some(fw) = rule
                    .comment()
                    .and_then(|c| c.split_whitespace().find(|w| w.starts_with("KUBE-FW-")))
            {
                candidates.push(fw);
            }
            for chain in candidates {
                let Some(suffix) = hash_suffix(chain) else { continue };
                if self.owners.contains_key(suffix) {
                    continue;
                }
                let by_hash = protocol_by_hash(n, suffix);
                let proto = by_hash.or_else(|| rule.protocol());
                if let Some(p) = proto {
                    if by_hash.is_none() {
                        self.warn_rule(
                            rule,
                            format!("{chain} does not carry kube-proxy's hash for \"{n}\" {p} (kube-proxy older than 1.20?); trusting the comment"),
                        );
                    }
                    self.owners.insert(suffix.to_string(), (Rc::from(n), p));
                }
            }
        }
    }

    /// nat KUBE-SERVICES: ClusterIP, external IP and load-balancer IP capture rules, the NodePort
    /// tail rule, and IPVS mode's set rules.
    fn read_nat_services(&mut self) {
        for rule in self.rules_of("nat", "KUBE-SERVICES") {
            let target = rule.target().unwrap_or("");
            if target == "KUBE-NODEPORTS" {
                if rule.dst_type_local() {
                    self.node_port_any = true;
                } else if let Some(ip) = rule.dst_ip() {
                    self.node_port_ips.push(ip);
                } else {
                    self.warn_rule(rule, "NodePort tail rule matches neither LOCAL addresses nor a node IP");
                }
                self.ok(rule);
                continue;
            }
            if rule.has(MATCH_SET)
                || (target == "RETURN" && rule.src().is_some())
                || target == "KUBE-MARK-MASQ"
                || target == "ACCEPT"
            {
                // IPVS mode (§2.3): ipset rules and the loopback RETURN name no Service. (Old
                // iptables-mode kube-proxy also put "cluster IP" masquerade rules here.)
                self.mode_ipvs |= rule.has(MATCH_SET);
                self.ok(rule);
                continue;
            }
            let Some(suffix) = hash_suffix(target) else { continue };
            self.mode_iptables = true;
            let comment = rule.comment().and_then(parse_comment);
            let Some((n, proto)) = self.owners.get(suffix).cloned() else {
                self.warn_rule(
                    rule,
                    format!("cannot tell which Service {target} belongs to (no comment names it)"),
                );
                continue;
            };
            let kind = match comment.map(|c| c.1) {
                Some(CommentKind::ExternalIp) => FrontendKind::ExternalIp,
                Some(CommentKind::LoadBalancerIp) => FrontendKind::LoadBalancer,
                Some(CommentKind::ClusterIp) => FrontendKind::ClusterIp,
                // No comment: the target tells (SVC/SVL: ClusterIP; EXT/FW: external or LB).
                _ if target.starts_with("KUBE-SVC-") || target.starts_with("KUBE-SVL-") => FrontendKind::ClusterIp,
                _ if target.starts_with("KUBE-FW-") => FrontendKind::LoadBalancer,
                _ => FrontendKind::ExternalIp,
            };
            let (Some(ip), Some(port)) = (rule.dst_ip(), rule.dport()) else {
                let odd = rule
                    .dst_arg()
                    .and_then(odd_address)
                    .map(|why| format!(" (-d is {why})"))
                    .unwrap_or_default();
                self.warn_rule(
                    rule,
                    format!(
                        "service rule without a destination address and port{odd}: {}",
                        rule.text
                    ),
                );
                continue;
            };
            let proto = rule.protocol().unwrap_or(proto);
            self.services
                .add_frontend(&n, kind, ip, port, proto, Some(rule.rule_ref()));
            self.ok(rule);
        }
    }

    /// nat KUBE-NODEPORTS: one rule per NodePort (plus the localhost variant).
    fn read_nat_nodeports(&mut self) {
        let addrs: Vec<IpAddr> = if self.node_port_any || self.node_port_ips.is_empty() {
            vec![self.any_ip()]
        } else {
            self.node_port_ips.clone()
        };
        let rules: Vec<&Rule<'_>> = self.rules_of("nat", "KUBE-NODEPORTS").collect();
        if !rules.is_empty() && !self.node_port_any && self.node_port_ips.is_empty() {
            self.warnings.push(format!(
                "{}: nat KUBE-SERVICES has no rule jumping to KUBE-NODEPORTS (it must be the last rule): NodePorts are not reachable",
                self.dump.source_name
            ));
        }
        for rule in rules {
            let target = rule.target().unwrap_or("");
            let Some(suffix) = hash_suffix(target) else { continue };
            self.mode_iptables = true;
            let Some((n, proto)) = self.owners.get(suffix).cloned() else {
                self.warn_rule(
                    rule,
                    format!("cannot tell which Service {target} belongs to (no comment names it)"),
                );
                continue;
            };
            let Some(port) = rule.dport() else {
                self.warn_rule(rule, "NodePort rule without --dport");
                continue;
            };
            let proto = rule.protocol().unwrap_or(proto);
            match rule.dst_ip() {
                // Localhost NodePorts: `-d 127.0.0.0/8` does not parse as a host; show 127.0.0.1.
                None if rule.has(D_SHORT) => {
                    if !self.node_port_any {
                        self.services.add_frontend(
                            &n,
                            FrontendKind::NodePort,
                            IpAddr::V4(Ipv4Addr::LOCALHOST),
                            port,
                            proto,
                            Some(rule.rule_ref()),
                        );
                    }
                }
                Some(ip) => {
                    self.services
                        .add_frontend(&n, FrontendKind::NodePort, ip, port, proto, Some(rule.rule_ref()))
                }
                None => {
                    for ip in &addrs {
                        self.services
                            .add_frontend(&n, FrontendKind::NodePort, *ip, port, proto, Some(rule.rule_ref()));
                    }
                }
            }
            self.ok(rule);
        }
    }

    /// KUBE-SVC/SVL/EXT/FW chains and the KUBE-SEP chains they dispatch to.
    fn read_service_chains(&mut self) {
        let dump = self.dump;
        let mut suffixes: Vec<&str> = dump.chain_names("nat").filter_map(hash_suffix).collect();
        suffixes.sort_unstable();
        suffixes.dedup();
        for suffix in suffixes {
            let Some((n, proto)) = self.owners.get(suffix).cloned() else {
                let chains: Vec<String> = SERVICE_PREFIXES
                    .iter()
                    .map(|p| format!("{p}{suffix}"))
                    .filter(|c| dump.exists("nat", c))
                    .collect();
                self.warnings.push(format!(
                    "{}: chains {} belong to no Service this dump names (stale after a partial sync, or not kube-proxy's)",
                    dump.source_name,
                    chains.join(", ")
                ));
                continue;
            };
            let svc_chain = format!("KUBE-SVC-{suffix}");
            let svl_chain = format!("KUBE-SVL-{suffix}");
            let ext_chain = format!("KUBE-EXT-{suffix}");
            let fw_chain = format!("KUBE-FW-{suffix}");
            let has_svl = dump.exists("nat", &svl_chain);
            let mut cluster: Vec<(IpAddr, u16)> = Vec::new();
            if dump.exists("nat", &svc_chain) {
                self.services.add_chain(&n, &svc_chain);
                cluster = self.read_dispatch_chain(&n, proto, &svc_chain, if has_svl { Some(false) } else { None });
            }
            if has_svl {
                self.services.add_chain(&n, &svl_chain);
                let local = self.read_dispatch_chain(&n, proto, &svl_chain, Some(true));
                self.services.mark_remote(&n, proto, &cluster, &local);
            }
            if dump.exists("nat", &ext_chain) {
                self.services.add_chain(&n, &ext_chain);
                for rule in self.rules_of("nat", &ext_chain) {
                    match rule.target() {
                        Some("KUBE-MARK-MASQ") => self.ok(rule),
                        Some(t) if t == svc_chain || t == svl_chain => self.ok(rule),
                        _ => {}
                    }
                }
            }
            if dump.exists("nat", &fw_chain) {
                self.services.add_chain(&n, &fw_chain);
                for rule in self.rules_of("nat", &fw_chain) {
                    let target = rule.target();
                    if target == Some(ext_chain.as_str()) {
                        if let Some(src) = rule
                            .src()
                            .filter(|o| !o.negated)
                            .and_then(|o| o.arg())
                            .map(str::to_string)
                        {
                            self.services.add_source_range(&n, src);
                        }
                        self.ok(rule);
                    } else if target.is_none() {
                        // "other traffic to N will be dropped by KUBE-PROXY-FIREWALL": falls through.
                        self.ok(rule);
                    }
                }
            }
        }
    }

    /// Reads one KUBE-SVC/KUBE-SVL chain: masquerade rule, affinity rules, probability dispatch,
    /// then each KUBE-SEP chain. Returns the endpoints found, in dispatch order.
    fn read_dispatch_chain(
        &mut self,
        n: &str,
        proto: Protocol,
        chain: &str,
        local: Option<bool>,
    ) -> Vec<(IpAddr, u16)> {
        let mut dispatch: Vec<Dispatch<'d>> = Vec::new();
        let mut affinity_seps: Vec<&'d str> = Vec::new();
        for rule in self.rules_of("nat", chain) {
            let target = rule.target().unwrap_or("");
            if target == "KUBE-MARK-MASQ" {
                self.ok(rule);
            } else if target.starts_with("KUBE-SEP-") {
                if rule.has(RCHECK) {
                    let secs = rule.arg(SECONDS).and_then(|s| s.parse::<u32>().ok());
                    let (svc, _) = self.services.port(n);
                    svc.rules.affinity_timeout_secs = secs.or(svc.rules.affinity_timeout_secs);
                    affinity_seps.push(target);
                } else {
                    let probability = rule.arg(PROBABILITY).and_then(|p| p.parse::<f64>().ok());
                    if rule.has(PROBABILITY) && probability.is_none() {
                        self.warn_rule(rule, "unreadable --probability");
                    }
                    if rule.has(NTH) {
                        self.warn_rule(
                            rule,
                            "statistic --mode nth is not kube-proxy's; treated as unconditional",
                        );
                    }
                    dispatch.push(Dispatch {
                        rule,
                        sep: target,
                        probability,
                    });
                }
                self.ok(rule);
            }
        }
        if dispatch.is_empty() {
            // kube-proxy writes REJECT rules instead of an empty chain: this one lets traffic
            // through untranslated.
            self.services.add_problem(
                n,
                format!("{chain} jumps to no KUBE-SEP chain: connections sent to it are not translated"),
            );
        }
        self.check_probabilities(n, chain, &dispatch);
        {
            // One endpoint and one chain per dispatch rule (the chain was added by the caller).
            let (svc, _) = self.services.port(n);
            svc.endpoints.reserve(dispatch.len());
            svc.rules.chains.reserve(dispatch.len());
        }
        for sep in &affinity_seps {
            if !dispatch.iter().any(|d| &d.sep == sep) {
                self.services.add_problem(
                    n,
                    format!("{chain}: affinity rule for {sep}, which the chain never dispatches to"),
                );
            }
        }
        // The chance each endpoint is chosen: p_i times the chance no earlier rule matched.
        let mut remaining = 1.0_f64;
        let mut found = Vec::new();
        let mut seen = FastSet::default();
        for d in &dispatch {
            let p = d.probability.unwrap_or(1.0);
            let weight = remaining * p;
            remaining *= 1.0 - p;
            if !seen.insert(d.sep) {
                self.services
                    .add_problem(n, format!("{chain} jumps to {} more than once", d.sep));
                continue;
            }
            if let Some(ep) = self.read_sep(n, proto, d.sep, d.rule, weight, local) {
                found.push(ep);
            }
        }
        found
    }

    fn check_probabilities(&mut self, n: &str, chain: &str, dispatch: &[Dispatch<'_>]) {
        let count = dispatch.len();
        for (i, d) in dispatch.iter().enumerate() {
            let last = i + 1 == count;
            let expected = 1.0 / (count - i) as f64;
            match (d.probability, last) {
                (None, false) => self.services.add_problem(
                    n,
                    format!(
                        "{chain}: rule {} of {count} (to {}) has no probability, so the {} endpoint(s) after it are never chosen",
                        i + 1,
                        d.sep,
                        count - i - 1
                    ),
                ),
                (Some(p), false) if (p - expected).abs() > 1e-4 => self.services.add_problem(
                    n,
                    format!(
                        "{chain}: rule {} of {count} (to {}) has probability {p}, expected 1/{} = {expected:.5}: the endpoint list and the probabilities disagree (an endpoint missing or added?)",
                        i + 1,
                        d.sep,
                        count - i
                    ),
                ),
                (Some(p), true) if (p - 1.0).abs() > 1e-4 => self.services.add_problem(
                    n,
                    format!(
                        "{chain}: the last rule (to {}) has probability {p}, so some connections fall through the chain without DNAT",
                        d.sep
                    ),
                ),
                _ => {}
            }
        }
    }

    /// Reads a KUBE-SEP chain into an endpoint of `n`.
    fn read_sep(
        &mut self,
        n: &str,
        proto: Protocol,
        sep: &'d str,
        from: &Rule<'_>,
        weight: f64,
        local: Option<bool>,
    ) -> Option<(IpAddr, u16)> {
        // `from` is the nat rule jumping to `sep`: its target is resolved already.
        let id = from.target_id;
        if id == NO_CHAIN {
            // Reported by check_jumps.
            return None;
        }
        self.referenced_seps[id as usize] = true;
        self.services.add_chain(n, sep);
        let mut dnat: Option<(&Rule<'_>, IpAddr, u16)> = None;
        for rule in self.rules_by_id(id) {
            match rule.target() {
                Some("KUBE-MARK-MASQ") => self.ok(rule),
                Some("DNAT") => match rule.arg(TO_DESTINATION).and_then(host_port) {
                    Some((ip, port)) => {
                        if dnat.is_some() {
                            self.warn_rule(rule, format!("{sep} has a second DNAT rule; using the first"));
                        } else {
                            dnat = Some((rule, ip, port));
                        }
                        self.ok(rule);
                    }
                    None => {
                        let odd = rule
                            .arg(TO_DESTINATION)
                            .and_then(odd_address)
                            .map(|why| format!(" ({why})"))
                            .unwrap_or_default();
                        self.warn_rule(
                            rule,
                            format!("{sep}: DNAT without a readable --to-destination ip:port{odd}"),
                        )
                    }
                },
                _ => {}
            }
        }
        let Some((rule, ip, port)) = dnat else {
            self.services.add_problem(
                n,
                format!("{sep} has no DNAT rule: connections sent to it are not translated"),
            );
            return None;
        };
        let hostport = join_host_port(ip, port);
        // The dispatch comment `N -> ip:port` must name the DNAT target.
        if let Some(c) = from.comment()
            && let Some((_, to)) = c.split_once(" -> ")
            && to != hostport
        {
            self.services.add_problem(
                n,
                format!("{}: comment says {to} but {sep} DNATs to {hostport}", from.chain),
            );
        }
        if !names::endpoint_chain_is(n, proto.as_str(), &hostport, sep) {
            let expected = names::endpoint_chain(n, proto.as_str(), &hostport);
            self.warn_rule(
                rule,
                format!("{sep} is not kube-proxy's chain name for \"{n}\" {proto} -> {hostport} (expected {expected})"),
            );
        }
        self.services
            .add_dispatched(n, proto, ip, port, weight, local == Some(true), rule.rule_ref());
        Some((ip, port))
    }

    /// filter KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL, KUBE-NODEPORTS.
    fn read_filter(&mut self) {
        for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
            for rule in self.rules_of("filter", chain) {
                let Some((n, kind)) = rule.comment().and_then(parse_comment) else {
                    if rule.has(MATCH_SET) {
                        self.mode_ipvs = true;
                        self.ok(rule);
                    }
                    continue;
                };
                if !matches!(kind, CommentKind::NoEndpoints | CommentKind::NoLocalEndpoints) {
                    continue;
                }
                let Some(proto) = rule.protocol() else {
                    self.warn_rule(rule, "no-endpoints rule without -p");
                    continue;
                };
                let Some(port) = rule.dport() else {
                    self.warn_rule(rule, "no-endpoints rule without --dport");
                    continue;
                };
                self.mode_iptables = true;
                let rr = rule.rule_ref();
                self.services
                    .add_no_endpoints(n, kind == CommentKind::NoLocalEndpoints, rr.clone());
                if let Some(ip) = rule.dst_ip() {
                    // KUBE-SERVICES holds ClusterIPs; KUBE-EXTERNAL-SERVICES external and LB IPs,
                    // which these rules do not tell apart: an address the nat table named keeps its kind.
                    let kind = if chain == "KUBE-SERVICES" {
                        FrontendKind::ClusterIp
                    } else {
                        FrontendKind::ExternalIp
                    };
                    self.services.add_frontend(n, kind, ip, port, proto, Some(rr));
                } else if rule.dst_type_local() {
                    let addrs: Vec<IpAddr> = if self.node_port_any || self.node_port_ips.is_empty() {
                        vec![self.any_ip()]
                    } else {
                        self.node_port_ips.clone()
                    };
                    for ip in addrs {
                        self.services
                            .add_frontend(n, FrontendKind::NodePort, ip, port, proto, Some(rr.clone()));
                    }
                }
                self.ok(rule);
            }
        }
        for rule in self.rules_of("filter", "KUBE-PROXY-FIREWALL") {
            if let Some((n, CommentKind::Firewall)) = rule.comment().and_then(parse_comment) {
                self.services.add_chain(n, "KUBE-PROXY-FIREWALL");
                if rule.target() == Some("DROP") {
                    self.services.add_firewall_drop(n, rule.rule_ref());
                }
                self.ok(rule);
            } else if rule.has(MATCH_SET) {
                self.ok(rule);
            }
        }
        for rule in self.rules_of("filter", "KUBE-NODEPORTS") {
            if let Some((_, CommentKind::HealthCheckNodePort)) = rule.comment().and_then(parse_comment) {
                self.ok(rule);
            }
        }
    }

    /// Every jump to a KUBE-* chain must land on a chain the same table declares.
    fn check_jumps(&mut self) {
        let dump = self.dump;
        for rule in &dump.rules {
            let Some(target) = rule.target() else { continue };
            if !target.starts_with("KUBE-") || BUILTIN_TARGETS.contains(&target) || rule.target_id != NO_CHAIN {
                continue;
            }
            let msg = format!(
                "{} jumps to {target}, which does not exist in the {} table: {}",
                rule.chain, rule.table, rule.text
            );
            // Attribute it to the Service owning the jumping chain, the target, or the comment.
            let owner = hash_suffix(&rule.chain)
                .or_else(|| hash_suffix(target))
                .and_then(|s| self.owners.get(s).map(|o| o.0.to_string()))
                .or_else(|| rule.comment().and_then(parse_comment).map(|(n, _)| n.to_string()));
            match owner {
                Some(n) => self.services.add_problem(&n, msg),
                None => self.warn_rule(rule, msg),
            }
            self.ok(rule);
        }
    }

    fn check_unreferenced_seps(&mut self) {
        let dump = self.dump;
        let mut stale: Vec<(&str, u32)> = dump
            .chains
            .iter()
            .filter(|(t, _)| *t == "nat")
            .flat_map(|(_, m)| m.iter())
            .filter(|(c, id)| c.starts_with("KUBE-SEP-") && !self.referenced_seps[**id as usize])
            .map(|(c, id)| (c.as_ref(), *id))
            .collect();
        stale.sort_unstable();
        for (sep, id) in stale {
            for rule in self.rules_by_id(id) {
                self.ok(rule);
            }
            self.warnings.push(format!(
                "{}: {sep} is not referenced by any service chain (left over after a partial sync; harmless unless it persists)",
                dump.source_name
            ));
        }
    }

    /// Rules in kube-proxy's chains that no step above understood.
    fn report_not_understood(&mut self) {
        let dump = self.dump;
        let mut lines = Vec::new();
        for (i, rule) in dump.rules.iter().enumerate() {
            if self.understood[i] || !rule.chain.starts_with("KUBE-") || STATIC_CHAINS.contains(&rule.chain.as_ref()) {
                continue;
            }
            // EXT chains' masquerade/route rules and FW fall-through are handled above; what is
            // left is unknown to this reader.
            lines.push(format!(
                "{} {} {}: rule not understood, left out of the model: {}",
                dump.source_name, dump.place, rule.line, rule.text
            ));
        }
        self.warnings.extend(lines);
    }
}

/// `ip:port` as kube-proxy joins it for hashes (`net.JoinHostPort`).
fn join_host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}
