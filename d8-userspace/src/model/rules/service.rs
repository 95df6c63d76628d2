//! The one place the rule readers turn what they found into [`Service`]s and [`Endpoint`]s.
//!
//! Each reader finds the same things in its own syntax: a Service port (`ns/name:port`) a rule
//! belongs to, the chains and problems of that port, the frontends traffic arrives at, and the
//! endpoints a rule translates it to. How a found thing joins the model is one decision, not
//! three: the same frontend twice is one frontend, the same endpoint twice is one endpoint, a
//! chain or a problem is listed once. So the readers share it:
//! - [`Services`]: the Services of one reading, looked up by port key, for the iptables and
//!   nftables readers, whose rules name Service ports;
//! - [`add_frontend`], [`add_endpoint`] and [`RuleEndpoint`] (the one place that writes an
//!   [`Endpoint`] from the rules), on one [`Service`], for those two and for IPVS, whose virtual
//!   servers are joined to Services by address instead (`ipvs::join`).
//!
//! What differs between readers stays with them: which rule means what, and what to keep when an
//! endpoint is found twice (a `KUBE-SVL-`/`local-` chain proves it local; a second IPVS real server
//! keeps the lower weight).

use std::net::IpAddr;

use crate::model::rules::FastMap;
use crate::model::{Endpoint, Frontend, FrontendKind, Protocol, RuleRef, Service, ServiceRef};

/// The Services of one reading, in order of first mention, each found by its port key
/// `ns/name:port` (`ns/name` for an unnamed port) without allocating.
#[derive(Debug, Default)]
pub(crate) struct Services {
    list: Vec<Service>,
    /// Indexes into `list`, keyed by `ns/name`.
    index: FastMap<String, usize>,
    /// The key and index [`Services::port`] answered last: consecutive calls are mostly for one
    /// Service (its chains, then each endpoint), and comparing a short key is cheaper than hashing.
    last: Option<(String, usize)>,
}

impl Services {
    /// The Service a port key belongs to (created when new; `rules.present` set, since a rule
    /// names it) and the port's name.
    pub(crate) fn port<'n>(&mut self, port_key: &'n str) -> (&mut Service, &'n str) {
        let (key, port) = port_key.split_once(':').unwrap_or((port_key, ""));
        let ix = match &self.last {
            Some((k, ix)) if k == key => *ix,
            _ => {
                let ix = match self.index.get(key) {
                    Some(&ix) => ix,
                    None => {
                        self.list.push(Service::new(service_ref(port_key)));
                        self.index.insert(key.to_string(), self.list.len() - 1);
                        self.list.len() - 1
                    }
                };
                match &mut self.last {
                    Some((k, i)) => {
                        k.clear();
                        k.push_str(key);
                        *i = ix;
                    }
                    None => self.last = Some((key.to_string(), ix)),
                }
                ix
            }
        };
        let svc = &mut self.list[ix];
        svc.rules.present = true;
        (svc, port)
    }

    /// Lists one of kube-proxy's chains (or objects) for the Service, once.
    pub(crate) fn add_chain(&mut self, port_key: &str, chain: &str) {
        let (svc, _) = self.port(port_key);
        if !svc.rules.chains.iter().any(|c| c == chain) {
            svc.rules.chains.push(chain.to_string());
        }
    }

    /// Records a problem of the Service, once.
    pub(crate) fn add_problem(&mut self, port_key: &str, msg: String) {
        let (svc, _) = self.port(port_key);
        if !svc.rules.problems.contains(&msg) {
            svc.rules.problems.push(msg);
        }
    }

    /// Records a loadBalancerSourceRange the rules enforce, once.
    pub(crate) fn add_source_range(&mut self, port_key: &str, range: String) {
        let (svc, _) = self.port(port_key);
        if !svc.rules.source_ranges.contains(&range) {
            svc.rules.source_ranges.push(range);
        }
    }

    /// Records a rule that drops load-balancer clients outside loadBalancerSourceRanges, once.
    pub(crate) fn add_firewall_drop(&mut self, port_key: &str, rule: RuleRef) {
        let (svc, _) = self.port(port_key);
        if !svc.rules.firewall_drops.contains(&rule) {
            svc.rules.firewall_drops.push(rule);
        }
    }

    /// Records a rule that rejects traffic to a Service port without endpoints, or (`local`) one
    /// that drops traffic which must stay on the node when the port has no local endpoint
    /// (external or internal traffic policy Local).
    pub(crate) fn add_no_endpoints(&mut self, port_key: &str, local: bool, rule: RuleRef) {
        let (svc, _) = self.port(port_key);
        if local {
            svc.rules.no_local_endpoints.push(rule);
        } else {
            svc.rules.no_endpoints.push(rule);
        }
    }

    /// [`add_frontend`] to the Service port `port_key`.
    pub(crate) fn add_frontend(
        &mut self,
        port_key: &str,
        kind: FrontendKind,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
        rule: Option<RuleRef>,
    ) {
        let (svc, port_name) = self.port(port_key);
        add_frontend(svc, port_name, kind, ip, port, protocol, rule);
    }

    /// An endpoint a dispatch chain of the Service port `port_key` sends to: a cluster chain
    /// (`KUBE-SVC-`, `service-`) with `weight`, the chance it is chosen, or a local chain
    /// (`KUBE-SVL-`, `local-`, `local_chain`), which proves it local but whose chances are not the
    /// Service's. Found again (a local chain lists endpoints its cluster chain has), the endpoint
    /// is marked local when this chain is a local one.
    #[expect(
        clippy::too_many_arguments,
        reason = "what one DNAT rule says; a struct would only rename them"
    )]
    pub(crate) fn add_dispatched(
        &mut self,
        port_key: &str,
        protocol: Protocol,
        ip: IpAddr,
        port: u16,
        weight: f64,
        local_chain: bool,
        rule: RuleRef,
    ) {
        let (svc, port_name) = self.port(port_key);
        let found = RuleEndpoint {
            ip,
            port,
            protocol,
            port_name,
            weight: (!local_chain).then_some(weight),
            local: local_chain.then_some(true),
            rule,
        };
        add_endpoint(svc, found, |have, again| {
            if again.local == Some(true) {
                have.local = Some(true);
            }
        });
    }

    /// After a Service port's cluster and local chains are read: the endpoints the cluster chain
    /// sends to and the local chain does not are on other nodes.
    pub(crate) fn mark_remote(
        &mut self,
        port_key: &str,
        protocol: Protocol,
        cluster: &[(IpAddr, u16)],
        local: &[(IpAddr, u16)],
    ) {
        let (svc, port_name) = self.port(port_key);
        for e in svc
            .endpoints
            .iter_mut()
            .filter(|e| e.port_name == port_name && e.protocol == protocol)
        {
            if cluster.contains(&(e.ip, e.port)) && !local.contains(&(e.ip, e.port)) {
                e.local = Some(false);
            }
        }
    }

    /// Every Service, ordered by `namespace/name`.
    pub(crate) fn into_sorted(self) -> Vec<Service> {
        let mut v = self.list;
        // Unstable: the keys are unique (one entry per Service), and a stable sort's scratch
        // buffer (half the list: ~4.5 MB at 10,000 Services) would come at the model's peak.
        v.sort_unstable_by(|a, b| a.service.cmp(&b.service));
        v
    }
}

/// `ns/name:port` (or `ns/name`) -> the Service's `namespace/name`.
pub(crate) fn service_ref(port_key: &str) -> ServiceRef {
    let (namespace, rest) = port_key.split_once('/').unwrap_or(("", port_key));
    let name = rest.split_once(':').map_or(rest, |(name, _)| name);
    ServiceRef {
        namespace: namespace.to_string(),
        name: name.to_string(),
    }
}

/// Adds a frontend unless the Service has one at the same address, port and protocol; that one
/// keeps its kind and port name and takes `rule` only when it had none (a filter REJECT for an
/// address the nat table named keeps the nat rule).
pub(crate) fn add_frontend(
    svc: &mut Service,
    port_name: &str,
    kind: FrontendKind,
    ip: IpAddr,
    port: u16,
    protocol: Protocol,
    rule: Option<RuleRef>,
) {
    if let Some(f) = svc
        .frontends
        .iter_mut()
        .find(|f| f.ip == ip && f.port == port && f.protocol == protocol)
    {
        if f.rule.is_none() {
            f.rule = rule;
        }
        return;
    }
    svc.frontends.push(Frontend {
        kind,
        ip,
        port,
        protocol,
        port_name: port_name.to_string(),
        rule,
    });
}

/// An endpoint as a rule reader finds it: where a rule sends a Service port's traffic, and the rule.
#[derive(Debug, Clone)]
pub(crate) struct RuleEndpoint<'a> {
    pub(crate) ip: IpAddr,
    pub(crate) port: u16,
    pub(crate) protocol: Protocol,
    /// The Service port's name (empty for an unnamed port).
    pub(crate) port_name: &'a str,
    /// The chance of being chosen (iptables, nftables) or the IPVS weight (0 = draining).
    pub(crate) weight: Option<f64>,
    /// On this node, when the rules tell.
    pub(crate) local: Option<bool>,
    /// The rule that translates to it (DNAT rule, endpoint chain's rule, IPVS real server).
    pub(crate) rule: RuleRef,
}

impl RuleEndpoint<'_> {
    /// `e` is this endpoint: the same address, port, protocol and Service port.
    fn is(&self, e: &Endpoint) -> bool {
        e.ip == self.ip && e.port == self.port && e.protocol == self.protocol && e.port_name == self.port_name
    }

    /// The model's endpoint: in the rules, with its weight, locality and rule; what the API knows
    /// (readiness, node, pod) is filled in later (`k8s`).
    pub(crate) fn into_endpoint(self) -> Endpoint {
        Endpoint {
            weight: self.weight,
            local: self.local,
            rule: Some(self.rule),
            ..Endpoint::in_rules(self.ip, self.port, self.protocol, self.port_name)
        }
    }
}

/// Adds `found` to the Service, unless it has that endpoint already (same address, port, protocol
/// and Service port): then `again` merges what was found into the one it has.
pub(crate) fn add_endpoint<'a>(
    svc: &mut Service,
    found: RuleEndpoint<'a>,
    again: impl FnOnce(&mut Endpoint, RuleEndpoint<'a>),
) {
    match svc.endpoints.iter_mut().find(|e| found.is(e)) {
        Some(e) => again(e, found),
        None => svc.endpoints.push(found.into_endpoint()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RuleSource;

    fn rule(name: &str) -> RuleRef {
        RuleRef {
            source: RuleSource::Iptables,
            name: name.into(),
            text: format!("-A {name}").into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn port_keys_name_services_once_in_order_of_mention() {
        let mut s = Services::default();
        let (svc, port) = s.port("ns1/web:http");
        assert_eq!((svc.service.to_string(), port), ("ns1/web".to_string(), "http"));
        assert!(svc.rules.present);
        s.port("ns0/b");
        assert_eq!(s.port("ns1/web").1, "");
        s.add_chain("ns1/web:http", "KUBE-SVC-X");
        s.add_chain("ns1/web:https", "KUBE-SVC-X");
        s.add_problem("ns1/web", "p".to_string());
        s.add_problem("ns1/web", "p".to_string());
        s.add_source_range("ns0/b", "10.0.0.0/8".to_string());
        s.add_source_range("ns0/b", "10.0.0.0/8".to_string());
        s.add_no_endpoints("ns0/b", true, rule("DROP"));
        s.add_no_endpoints("ns0/b", false, rule("REJECT"));
        assert_eq!(s.list.len(), 2);
        let all = s.into_sorted();
        let names: Vec<String> = all.iter().map(|s| s.service.to_string()).collect();
        assert_eq!(names, ["ns0/b", "ns1/web"]);
        assert_eq!(all[1].rules.chains, ["KUBE-SVC-X"]);
        assert_eq!(all[1].rules.problems, ["p"]);
        assert_eq!(all[0].rules.source_ranges, ["10.0.0.0/8"]);
        assert_eq!(&*all[0].rules.no_local_endpoints[0].name, "DROP");
        assert_eq!(&*all[0].rules.no_endpoints[0].name, "REJECT");
        assert_eq!(service_ref("x").to_string(), "/x");
        assert_eq!(service_ref("a/b:c:d").to_string(), "a/b");
    }

    #[test]
    fn a_frontend_found_twice_is_one_and_keeps_its_first_rule() {
        let mut s = Services::default();
        let (at, tcp) = (ip("10.96.0.1"), Protocol::Tcp);
        s.add_frontend("ns/a:p", FrontendKind::ClusterIp, at, 80, tcp, None);
        s.add_frontend("ns/a:q", FrontendKind::ExternalIp, at, 80, tcp, Some(rule("one")));
        s.add_frontend("ns/a:p", FrontendKind::ClusterIp, at, 80, tcp, Some(rule("two")));
        s.add_frontend("ns/a:p", FrontendKind::ClusterIp, at, 80, Protocol::Udp, None);
        let (svc, _) = s.port("ns/a");
        assert_eq!(svc.frontends.len(), 2);
        let f = &svc.frontends[0];
        assert_eq!((f.kind, f.port_name.as_str()), (FrontendKind::ClusterIp, "p"));
        assert_eq!(&*f.rule.as_ref().unwrap().name, "one");
    }

    #[test]
    fn dispatched_endpoints_carry_weight_or_locality() {
        let mut s = Services::default();
        let (a, b) = (ip("10.244.1.1"), ip("10.244.2.2"));
        s.add_dispatched("ns/a:p", Protocol::Tcp, a, 80, 0.5, false, rule("KUBE-SEP-A"));
        s.add_dispatched("ns/a:p", Protocol::Tcp, b, 80, 0.5, false, rule("KUBE-SEP-B"));
        s.add_dispatched("ns/a:p", Protocol::Tcp, a, 80, 1.0, true, rule("KUBE-SEP-A"));
        // Another port of the Service is another endpoint; a local chain's own endpoint has no weight.
        s.add_dispatched("ns/a:q", Protocol::Tcp, a, 80, 1.0, true, rule("KUBE-SEP-C"));
        s.mark_remote("ns/a:p", Protocol::Tcp, &[(a, 80), (b, 80)], &[(a, 80)]);
        let (svc, _) = s.port("ns/a");
        let got: Vec<_> = svc
            .endpoints
            .iter()
            .map(|e| {
                let rule = e.rule.as_ref().unwrap().name.as_ref();
                (
                    e.ip,
                    e.port_name.as_str(),
                    e.weight,
                    e.local,
                    e.in_rules,
                    e.in_api,
                    rule,
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (a, "p", Some(0.5), Some(true), true, None, "KUBE-SEP-A"),
                (b, "p", Some(0.5), Some(false), true, None, "KUBE-SEP-B"),
                (a, "q", None, Some(true), true, None, "KUBE-SEP-C"),
            ]
        );
    }

    #[test]
    fn an_endpoint_found_again_is_merged_by_the_reader() {
        let mut svc = Service::new(service_ref("ns/a"));
        let found = |w: f64, name: &str| RuleEndpoint {
            ip: ip("10.244.1.1"),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: "p",
            weight: Some(w),
            local: None,
            rule: rule(name),
        };
        let lowest = |e: &mut Endpoint, again: RuleEndpoint<'_>| {
            if e.weight.is_some_and(|w| again.weight.is_some_and(|x| x < w)) {
                e.weight = again.weight;
                e.rule = Some(again.rule);
            }
        };
        add_endpoint(&mut svc, found(1.0, "one"), lowest);
        add_endpoint(&mut svc, found(0.0, "draining"), lowest);
        add_endpoint(&mut svc, found(1.0, "three"), lowest);
        assert_eq!(svc.endpoints.len(), 1);
        let e = &svc.endpoints[0];
        assert_eq!(
            (e.weight, e.rule.as_ref().unwrap().name.as_ref()),
            (Some(0.0), "draining")
        );
        assert_eq!(
            found(0.25, "x").into_endpoint(),
            Endpoint {
                weight: Some(0.25),
                rule: Some(rule("x")),
                ..Endpoint::in_rules(ip("10.244.1.1"), 80, Protocol::Tcp, "p")
            }
        );
    }
}
