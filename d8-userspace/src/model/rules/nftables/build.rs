//! The building stage: kube-proxy's table (`table.rs`) read as Services: frontends from the
//! verdict maps, endpoints from the `service-`/`local-` chains' dispatch and the `endpoint-` chains
//! it goes to, and the facts and problems found on the way.
//!
//! This is where the reader knows kube-proxy's nftables design (reference §3): which map holds
//! which frontends, what a `numgen` dispatch means, which rule of a chain is expected. It works on
//! the table's reduced rules and on chain names (`chain_name.rs`), never on JSON but for set
//! elements, so it can walk chains by name in any order; the table stage before it reads the input
//! once, in order. Each rule a step understands is marked, and the rest of kube-proxy's
//! per-service rules are reported as not understood rather than dropped.
//!
//! What it finds joins the model through [`Services`] (`rules::service`), shared with the other
//! readers, so what counts as the same frontend or endpoint is decided in one place.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::chain_name::CName;
use super::json::J;
use super::render::{render_elem, render_val};
use super::table::{Table, ip_proto_port, proto_port, verdict_target};
use super::{Layout, Parsed};
use crate::model::rules::FastSet;
use crate::model::rules::address::odd_suffix;
use crate::model::rules::service::Services;
use crate::model::{FrontendKind, Protocol, ProxyMode, RuleRef, RuleSource, UnallocatedDrop};

/// Builds the Services of an indexed table.
pub(super) fn build(t: &Table<'_>) -> Parsed {
    Builder::new(t).build()
}

struct Builder<'t, 'a> {
    t: &'t Table<'a>,
    services: Services,
    warnings: Vec<String>,
    /// Rules some step understood, by [`NftRule::index`](super::table::NftRule::index).
    understood: Vec<bool>,
    /// Endpoint chains some service chain goes to, by the identity (address, length) of their
    /// key in [`Table::chains`]: hashing a pointer is cheaper than hashing a 60-byte name.
    referenced_endpoints: FastSet<(usize, usize)>,
    any_ip: IpAddr,
}

impl<'t, 'a> Builder<'t, 'a> {
    fn new(t: &'t Table<'a>) -> Self {
        let any_ip = if t.family == "ip6" {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        Self {
            t,
            services: Services::default(),
            warnings: t.warnings.clone(),
            understood: vec![false; t.rules.len()],
            referenced_endpoints: FastSet::default(),
            any_ip,
        }
    }

    fn warn(&mut self, msg: impl std::fmt::Display) {
        self.warnings.push(format!("{}: {msg}", self.t.source_name));
    }

    fn map_ref(&self, map: &str, key: &J<'_>, value: &J<'_>, comment: &Option<Cow<'_, str>>) -> RuleRef {
        let handle = self
            .t
            .sets
            .get(map)
            .and_then(|s| s.handle)
            .map(|h| format!(" # handle {h}"))
            .unwrap_or_default();
        RuleRef {
            source: RuleSource::Nftables,
            name: map.into(),
            text: format!("map {map}: {}{handle}", render_elem(key, value, comment)).into(),
        }
    }

    /// The Service port a map element is for: from the target chain's name, else the element comment.
    fn element_owner(&mut self, map: &str, target: Option<&str>, comment: &Option<Cow<'_, str>>) -> Option<String> {
        if let Some(cn) = target.and_then(CName::parse) {
            return Some(cn.port_key());
        }
        if let Some(c) = comment {
            return Some(c.to_string());
        }
        self.warn(format!(
            "map {map}: element names no Service (no comment, no service chain)"
        ));
        None
    }

    fn build(mut self) -> Parsed {
        let t = self.t;
        if !t.found {
            return Parsed {
                warnings: self.warnings,
                ..Default::default()
            };
        }
        let node_port_ips = t.set_ips("nodeport-ips");
        let np_addrs = if node_port_ips.is_empty() {
            vec![self.any_ip]
        } else {
            node_port_ips.clone()
        };
        let cluster_ips: FastSet<IpAddr> = t.set_ips("cluster-ips").into_iter().collect();
        let firewalled: FastSet<(IpAddr, Protocol, u16)> = t
            .sets
            .get("firewall-ips")
            .map(|s| s.elems.iter().filter_map(|(k, _, _)| ip_proto_port(k)).collect())
            .unwrap_or_default();

        // Frontends from the verdict maps.
        for map in ["service-ips", "no-endpoint-services", "firewall-ips"] {
            let Some(set) = t.sets.get(map) else { continue };
            for (key, value, comment) in &set.elems {
                let Some((ip, proto, port)) = ip_proto_port(key) else {
                    let text = render_val(key);
                    let why = odd_suffix(&text);
                    self.warn(format!("map {map}: element not `ip . proto . port`: {text}{why}"));
                    continue;
                };
                let target = verdict_target(value);
                let Some(owner) = self.element_owner(map, target, comment) else {
                    continue;
                };
                let rr = self.map_ref(map, key, value, comment);
                let kind = match target.and_then(|x| x.split_once('-')).map(|x| x.0) {
                    _ if map == "firewall-ips" => FrontendKind::LoadBalancer,
                    Some("service") | Some("local") => FrontendKind::ClusterIp,
                    _ if cluster_ips.contains(&ip) => FrontendKind::ClusterIp,
                    _ if firewalled.contains(&(ip, proto, port)) => FrontendKind::LoadBalancer,
                    _ => FrontendKind::ExternalIp,
                };
                if map == "no-endpoint-services" {
                    self.no_endpoint_fact(&owner, value, rr.clone());
                }
                self.check_target(&owner, map, target);
                self.services.add_frontend(&owner, kind, ip, port, proto, Some(rr));
            }
        }
        for map in ["service-nodeports", "no-endpoint-nodeports"] {
            let Some(set) = t.sets.get(map) else { continue };
            for (key, value, comment) in &set.elems {
                let Some((proto, port)) = proto_port(key) else {
                    self.warn(format!("map {map}: element not `proto . port`: {}", render_val(key)));
                    continue;
                };
                let target = verdict_target(value);
                let Some(owner) = self.element_owner(map, target, comment) else {
                    continue;
                };
                let rr = self.map_ref(map, key, value, comment);
                if map == "no-endpoint-nodeports" {
                    self.no_endpoint_fact(&owner, value, rr.clone());
                }
                self.check_target(&owner, map, target);
                for ip in &np_addrs {
                    self.services
                        .add_frontend(&owner, FrontendKind::NodePort, *ip, port, proto, Some(rr.clone()));
                }
            }
        }

        // Per-service chains. kube-proxy's partial syncs (1.29+) flush a chain it no longer needs
        // and delete it a second later: an empty chain nothing refers to is on its way out, not
        // part of the model (and no warning: it is kube-proxy working as designed).
        let mut referenced: FastSet<&str> = FastSet::default();
        for rule in &t.rules {
            referenced.extend(t.targets(rule).iter().map(|c| c.as_ref()));
        }
        for set in t.sets.values() {
            referenced.extend(set.elems.iter().filter_map(|(_, v, _)| verdict_target(v)));
        }
        let leaving = |name: &str| {
            let c = &t.chains[name];
            c.hook.is_none() && !c.has_rules() && !referenced.contains(name)
        };
        // Every chain name in order, so warnings and problems come out the same on every run.
        let mut sorted_chains: Vec<&'t str> = t.chains.keys().map(|k| k.as_ref()).filter(|k| !leaving(k)).collect();
        sorted_chains.sort_unstable();
        // Its ~2 MB go before the Services are built.
        drop(referenced);
        // Parsed again by each pass rather than kept: 60,000 parsed names are ~8 MB more at the
        // read's peak, while the model is built beside the table; a parse costs no allocation.
        let names = || sorted_chains.iter().filter_map(|&n| CName::parse(n).map(|cn| (n, cn)));
        for (name, cn) in names() {
            if !cn.hash_ok(name) {
                self.warn(format!(
                    "chain {name}: hash {} is not kube-proxy's for this name (truncated or older kube-proxy)",
                    cn.hash
                ));
            }
        }
        for (name, cn) in names().filter(|(_, cn)| cn.prefix == "service") {
            let local_name = format!("local-{}", &name["service-".len()..]);
            let has_local = t.chains.contains_key(local_name.as_str());
            let key = cn.port_key();
            self.services.add_chain(&key, name);
            let cluster = self.read_dispatch(&key, cn.protocol, name, if has_local { Some(false) } else { None });
            if has_local {
                self.services.add_chain(&key, &local_name);
                let local = self.read_dispatch(&key, cn.protocol, &local_name, Some(true));
                self.services.mark_remote(&key, cn.protocol, &cluster, &local);
            }
        }
        for (name, cn) in names() {
            match cn.prefix {
                "external" => {
                    let key = cn.port_key();
                    self.services.add_chain(&key, name);
                    for rule in t.chain_rules(&t.chains[name]) {
                        // jump mark-for-masquerade, goto service-/local-, fib/saddr short-circuits.
                        if !t.targets(rule).is_empty() {
                            self.understood[rule.index] = true;
                        }
                    }
                }
                "firewall" => {
                    let key = cn.port_key();
                    self.services.add_chain(&key, name);
                    for rule in t.chain_rules(&t.chains[name]) {
                        let ranges = rule.addr_ranges();
                        if !ranges.is_empty() {
                            for r in ranges {
                                self.services.add_source_range(&key, r.clone());
                            }
                            self.services.add_firewall_drop(&key, rule.rule_ref(t));
                            self.understood[rule.index] = true;
                        }
                    }
                }
                "endpoint" if !self.referenced_endpoints.contains(&key_id(name)) => {
                    self.warn(format!("chain {name} is not referenced by any service chain (stale; kube-proxy deletes such chains after a second)"));
                    for rule in t.chain_rules(&t.chains[name]) {
                        self.understood[rule.index] = true;
                    }
                }
                _ => {}
            }
        }

        self.check_all_jumps();
        self.report_not_understood();
        let layout = detect_layout(t);
        // `cluster-ips-check` (1.30+): `ip daddr @cluster-ips reject` refuses ports a live ClusterIP
        // does not define; each Service with such a ClusterIP gets it as evidence.
        let reject = t
            .chains
            .get("cluster-ips-check")
            .and_then(|c| t.chain_rules(c).find(|r| r.match_set() == Some("cluster-ips")))
            .map(|r| r.rule_ref(t));
        // ... and `ip daddr { SERVICE-CIDRS } drop` (1.30+) drops addresses no Service holds.
        let unallocated_drop = t.chains.get("cluster-ips-check").and_then(|c| {
            t.chain_rules(c)
                .find(|r| !r.addr_ranges().is_empty() && t.text(r).contains(" drop"))
                .map(|r| UnallocatedDrop {
                    cidrs: r.addr_ranges().to_vec(),
                    rule: r.rule_ref(t),
                })
        });
        let mut services = self.services.into_sorted();
        if let Some(reject) = reject {
            for svc in &mut services {
                let live = svc
                    .frontends
                    .iter()
                    .any(|f| f.kind == FrontendKind::ClusterIp && cluster_ips.contains(&f.ip));
                if live {
                    svc.rules.undefined_port_reject = Some(reject.clone());
                }
            }
        }
        Parsed {
            services,
            warnings: self.warnings,
            rules_present: true,
            mode_hint: Some(ProxyMode::Nftables),
            layout,
            node_port_ips,
            unallocated_drop,
            rule_count: t.rules.len(),
        }
    }

    /// A `no-endpoint-*` element: `drop` for a Local traffic policy without local endpoints, else
    /// `goto reject-chain` (or a literal reject).
    fn no_endpoint_fact(&mut self, owner: &str, value: &J<'_>, rr: RuleRef) {
        self.services.add_no_endpoints(owner, value.get("drop").is_some(), rr);
    }

    fn check_target(&mut self, owner: &str, map: &str, target: Option<&str>) {
        let Some(tg) = target else { return };
        match self.t.chains.get(tg) {
            None => self.services.add_problem(
                owner,
                format!("map {map} sends traffic to chain {tg}, which does not exist"),
            ),
            // kube-proxy flushes a stale chain before deleting it; a map still pointing at it
            // lets traffic through untranslated.
            Some(c) if !c.has_rules() && tg != "reject-chain" => self
                .services
                .add_problem(owner, format!("map {map} sends traffic to chain {tg}, which is empty")),
            Some(_) => {}
        }
    }

    /// Reads a `service-`/`local-` chain: its numgen dispatch (or inline 1.36 dnat map), affinity
    /// rules, then each endpoint chain. Returns the endpoints found.
    fn read_dispatch(&mut self, key: &str, proto: Protocol, chain: &str, local: Option<bool>) -> Vec<(IpAddr, u16)> {
        let t = self.t;
        let mut found = Vec::new();
        let Some(c) = t.chains.get(chain) else { return found };
        let mut dispatched = false;
        for rule in t.chain_rules(c) {
            let tg = t.targets(rule);
            if let Some((modulo, entries)) = rule.numgen() {
                let modulo = *modulo;
                self.understood[rule.index] = true;
                dispatched = true;
                let mut idx: Vec<u64> = entries.iter().map(|e| e.0).collect();
                idx.sort_unstable();
                if modulo as usize != entries.len() || idx.iter().enumerate().any(|(i, &x)| i as u64 != x) {
                    self.services.add_problem(
                        key,
                        format!(
                            "{chain}: numgen random mod {modulo} with {} entries (indexes {:?}): some packets match no endpoint, or endpoints are never chosen",
                            entries.len(),
                            idx
                        ),
                    );
                }
                let weight = if modulo > 0 { 1.0 / modulo as f64 } else { 0.0 };
                if local != Some(true) {
                    // Room for this port's endpoints at once (a `local-` chain's are among them).
                    self.services.port(key).0.endpoints.reserve(entries.len());
                }
                for (_, ep_chain) in entries {
                    if let Some(ep) = self.read_endpoint(key, proto, ep_chain.as_ref(), weight, local) {
                        found.push(ep);
                    }
                }
            } else if let Some((modulo, eps)) = rule.dnat_map().cloned() {
                // 1.36+: no endpoint chains; the service chain DNATs directly.
                self.understood[rule.index] = true;
                dispatched = true;
                if modulo as usize != eps.len() {
                    self.services.add_problem(
                        key,
                        format!("{chain}: numgen random mod {modulo} with {} DNAT targets", eps.len()),
                    );
                }
                let weight = if modulo > 0 { 1.0 / modulo as f64 } else { 0.0 };
                if local != Some(true) {
                    self.services.port(key).0.endpoints.reserve(eps.len());
                }
                for (ip, port) in eps {
                    self.services
                        .add_dispatched(key, proto, ip, port, weight, local == Some(true), rule.rule_ref(t));
                    found.push((ip, port));
                }
            } else if let Some((ip, port)) = rule.dnat {
                // Single-endpoint services without numgen (#140723).
                self.understood[rule.index] = true;
                dispatched = true;
                self.services
                    .add_dispatched(key, proto, ip, port, 1.0, local == Some(true), rule.rule_ref(t));
                found.push((ip, port));
            } else if tg.iter().any(|x| x == "mark-for-masquerade") {
                self.understood[rule.index] = true;
            } else if tg.len() == 1 && tg[0].starts_with("endpoint-") {
                // `ip saddr @affinity-… goto endpoint-…`: ClientIP affinity.
                self.understood[rule.index] = true;
                let set = rule.match_set();
                if let Some(secs) = set.and_then(|s| t.sets.get(s)).and_then(|s| s.timeout_secs) {
                    let (svc, _) = self.services.port(key);
                    svc.rules.affinity_timeout_secs = u32::try_from(secs).ok();
                } else {
                    self.warn(format!(
                        "{chain}: affinity rule without a readable affinity set timeout: {}",
                        t.text(rule)
                    ));
                }
                if let Some((k, _)) = t.chains.get_key_value(tg[0].as_ref()) {
                    self.referenced_endpoints.insert(key_id(k));
                }
            } else if tg.len() == 1 && (tg[0].starts_with("local-") || tg[0].starts_with("service-")) {
                self.understood[rule.index] = true;
            }
        }
        if !dispatched && c.has_rules() {
            self.services
                .add_problem(key, format!("{chain} has no endpoint dispatch (numgen vmap or dnat)"));
        }
        found
    }

    fn read_endpoint(
        &mut self,
        key: &str,
        proto: Protocol,
        chain: &'t str,
        weight: f64,
        local: Option<bool>,
    ) -> Option<(IpAddr, u16)> {
        let t = self.t;
        let (k, c) = t.chains.get_key_value(chain)?; // missing: check_all_jumps reports it
        self.referenced_endpoints.insert(key_id(k));
        self.services.add_chain(key, chain);
        let mut target = None;
        for rule in t.chain_rules(c) {
            if let Some(d) = rule.dnat {
                self.understood[rule.index] = true;
                if target.is_none() {
                    target = Some((d, rule));
                }
            } else {
                let is_masq = t.targets(rule).iter().any(|x| x == "mark-for-masquerade");
                if is_masq || rule.set_update {
                    self.understood[rule.index] = true;
                }
            }
        }
        let Some(((ip, port), rule)) = target else {
            // A `dnat to` whose address kube-proxy never writes is no dnat the model can follow:
            // say which address, rather than that the rule is missing.
            let why = t
                .chain_rules(c)
                .find_map(|r| Some(odd_suffix(t.text(r))).filter(|w| !w.is_empty()));
            self.services.add_problem(
                key,
                format!(
                    "{chain} has no dnat rule: connections sent to it are not translated{}",
                    why.unwrap_or_default()
                ),
            );
            return None;
        };
        if let Some(cn) = CName::parse(chain)
            && let Some((nip, nport)) = cn.endpoint()
            && (nip, nport) != (ip, port)
        {
            self.services.add_problem(
                key,
                format!("{chain} is named for {nip}:{nport} but DNATs to {ip}:{port}"),
            );
        }
        self.services
            .add_dispatched(key, proto, ip, port, weight, local == Some(true), rule.rule_ref(t));
        Some((ip, port))
    }

    /// Every goto/jump must land on a chain of the table. The rules are scanned in table order and
    /// the (rare) findings reported in chain-name order, so they come out the same on every run.
    fn check_all_jumps(&mut self) {
        let t = self.t;
        let mut missing: Vec<(&str, usize, &str)> = Vec::new();
        // Most rules jump to the target the last one did (`mark-for-masquerade`): one lookup for
        // such runs.
        let mut last_found: Option<&str> = None;
        for rule in &t.rules {
            for target in t.targets(rule) {
                if last_found == Some(target.as_ref()) {
                    continue;
                }
                if t.chains.contains_key(target) {
                    last_found = Some(target.as_ref());
                } else {
                    missing.push((rule.chain.as_ref(), rule.index, target.as_ref()));
                }
            }
        }
        missing.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (name, index, target) in missing {
            let msg = format!(
                "chain {name} jumps to {target}, which does not exist: {}",
                t.text(&t.rules[index])
            );
            match CName::parse(name).or_else(|| CName::parse(target)) {
                Some(cn) => self.services.add_problem(&cn.port_key(), msg),
                None => self.warn(msg),
            }
        }
    }

    /// Rules of kube-proxy's per-service chains that no step understood, in chain-name order.
    fn report_not_understood(&mut self) {
        let t = self.t;
        let mut left: Vec<(&str, usize)> = t
            .rules
            .iter()
            .filter(|r| !self.understood[r.index] && CName::parse(&r.chain).is_some())
            .map(|r| (r.chain.as_ref(), r.index))
            .collect();
        left.sort_unstable();
        for (name, index) in left {
            self.warnings.push(format!(
                "{}: chain {name}: rule not understood, left out of the model: {}",
                t.source_name,
                t.text(&t.rules[index])
            ));
        }
    }
}

/// The identity of a key of [`Table::chains`] (the address and length of its text).
fn key_id(k: &str) -> (usize, usize) {
    (k.as_ptr() as usize, k.len())
}

fn detect_layout(t: &Table<'_>) -> Option<Layout> {
    let has = |n: &str| t.chains.get(n).is_some_and(|c| c.hook.is_some());
    if has("filter-prerouting-pre-dnat") || has("filter-output-pre-dnat") {
        Some(Layout::B)
    } else if t.chains.contains_key("endpoints-check") {
        Some(Layout::EndpointsCheck)
    } else if has("filter-output-post-dnat") || has("filter-prerouting") {
        Some(Layout::A)
    } else {
        None
    }
}
