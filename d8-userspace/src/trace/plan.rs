//! What will be traced: the Service (and port) the user named, checked against the node's
//! service model, with its frontends expanded to concrete addresses and its backends, as the
//! kernel's target map wants them. Every entry point (the CLI, `explain`, MCP) goes through
//! [`plan`], so an unknown Service or port is the same error everywhere.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
};

use d8_common::{FAMILY_V4, FAMILY_V6, TargetKey, target};

use super::Error;
use crate::classify::Asked;
use crate::model::{
    Endpoint, Frontend, FrontendKind, IpFamily, Protocol, ProxyMode, Service, ServiceModel, ServiceRef, in_cidr,
};

/// `NS/NAME[:PORT]`: PORT is a port number or a Service port name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSelector {
    pub service: ServiceRef,
    pub port: Option<String>,
}

impl std::str::FromStr for ServiceSelector {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (svc, port) = match s.split_once(':') {
            Some((svc, port)) if !port.is_empty() => (svc, Some(port.to_string())),
            Some(_) => return Err(format!("`{s}`: empty port after `:` (use NS/NAME or NS/NAME:PORT)")),
            None => (s, None),
        };
        // A port is a number or a Service port name (a DNS label); anything else is most likely
        // an address given to the wrong flag (`default/fe80::1%eth0`).
        if let Some(p) = &port
            && !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            return Err(format!(
                "`{s}`: port `{p}` is neither a number nor a Service port name; to trace an address, use --dest IP:PORT"
            ));
        }
        let Some((namespace, name)) = svc.split_once('/') else {
            return Err(format!(
                "`{s}`: expected NAMESPACE/NAME[:PORT], e.g. default/web or kube-system/kube-dns:dns"
            ));
        };
        let valid = |part: &str| {
            !part.is_empty()
                && part.len() <= 253
                && part.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        };
        if !valid(namespace) || !valid(name) {
            return Err(format!(
                "`{s}`: namespace and name must be DNS labels (letters, digits, `-`, `.`)"
            ));
        }
        Ok(Self {
            service: ServiceRef {
                namespace: namespace.into(),
                name: name.into(),
            },
            port,
        })
    }
}

/// `IP:PORT[/PROTO]` (`--dest`): the address a client uses, whichever Service holds it, or none
/// (a deleted Service's ClusterIP, a stale DNS answer). PROTO is `tcp` (the default), `udp` or
/// `sctp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Destination {
    pub protocol: Protocol,
    pub addr: SocketAddr,
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, protocol) = match s.rsplit_once('/') {
            Some((a, p)) => (
                a,
                Protocol::parse(p).ok_or_else(|| format!("`{s}`: unknown protocol `{p}` (tcp, udp or sctp)"))?,
            ),
            None => (s, Protocol::Tcp),
        };
        if let Some((_, zone)) = addr.split_once('%') {
            let zone = zone.split([']', ':']).next().unwrap_or(zone);
            return Err(format!(
                "`{s}`: a zone-scoped address (zone `{zone}`): Service addresses carry no zone and are never \
                 link-local; give the address without `%{zone}`"
            ));
        }
        if addr.parse::<std::net::Ipv6Addr>().is_ok() {
            return Err(format!(
                "`{s}`: an IPv6 address with a port is written in brackets, e.g. [fd00::10]:80"
            ));
        }
        let addr: SocketAddr = addr
            .parse()
            .map_err(|_| format!("`{s}`: expected IP:PORT[/PROTO], e.g. 10.96.0.10:80 or 10.96.0.10:53/udp"))?;
        if addr.port() == 0 {
            return Err(format!("`{s}`: port 0 is no destination"));
        }
        // kube-proxy programs an IPv4 Service in IPv4 only: `::ffff:a.b.c.d` would match nothing.
        if let IpAddr::V6(v6) = addr.ip()
            && let Some(v4) = v6.to_ipv4_mapped()
        {
            return Err(format!(
                "`{s}`: an IPv4-mapped IPv6 address, which no Service holds (kube-proxy programs IPv4 addresses as \
                 IPv4): use {v4}:{}",
                addr.port()
            ));
        }
        Ok(Self { protocol, addr })
    }
}

impl std::fmt::Display for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.protocol)
    }
}

/// What a job is about: a Service by name (`--svc`), or an address (`--dest`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Service(ServiceSelector),
    Address(Destination),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Service(s) => write!(f, "{}", s.service),
            Self::Address(d) => write!(f, "{d}"),
        }
    }
}

/// What an address names in the model: a Service's port (then planned as if named), or nothing.
#[derive(Debug)]
pub enum Resolved {
    Service(ServiceSelector),
    Unallocated(Plan),
}

/// Resolves `dest` against `model`: the Service whose frontend it is (a NodePort on a node
/// address, a ClusterIP, external or load-balancer IP), that Service on another port when only
/// its address matches (a port it does not define), else an address no Service holds. That last
/// is planned when kube-proxy's rules put it in the service CIDR, or when they name no service
/// CIDR (iptables and IPVS mode, nftables before 1.30); an address outside the CIDRs they name is
/// no Service traffic, and an error.
pub fn resolve(model: &ServiceModel, dest: &Destination, node_ips: Vec<IpAddr>) -> Result<Resolved, Error> {
    let (ip, port, protocol) = (dest.addr.ip(), dest.addr.port(), dest.protocol);
    let selector = |svc: &ServiceRef, port: Option<String>| {
        Resolved::Service(ServiceSelector {
            service: svc.clone(),
            port,
        })
    };
    // The Service port's name selects all its frontends (ClusterIP and NodePort alike); an
    // unnamed port is the Service's only one.
    let port_of = |f: &Frontend| (!f.port_name.is_empty()).then(|| f.port_name.clone());
    if node_ips.contains(&ip) || model.node_ips.contains(&ip) {
        for s in &model.services {
            if let Some(f) = s
                .frontends
                .iter()
                .find(|f| f.kind == FrontendKind::NodePort && f.port == port && f.protocol == protocol)
            {
                return Ok(selector(&s.service, port_of(f)));
            }
        }
    }
    if let Some(s) = model.holder_of(protocol, ip, port) {
        let exact = s
            .frontends
            .iter()
            .find(|f| f.ip == ip && f.port == port && f.protocol == protocol);
        if let Some(f) = exact {
            return Ok(selector(&s.service, port_of(f)));
        }
        // The port over another protocol: a port number would select that one, not this.
        if let Some(f) = s.frontends.iter().find(|f| f.ip == ip && f.port == port) {
            return Err(Error::NotServiceAddress {
                dest: dest.to_string(),
                reason: format!(
                    "{} has port {port} on {ip} over {} only; trace that, or the Service by name",
                    s.service, f.protocol
                ),
            });
        }
        return Ok(selector(&s.service, Some(port.to_string())));
    }
    // The CIDRs of the address's own family: an IPv6 address is in no IPv4 CIDR, and a node whose
    // kube-proxy has no IPv6 table names no IPv6 service CIDR to hold it against.
    let cidrs: Vec<&str> = model
        .unallocated_drops
        .iter()
        .flat_map(|d| &d.cidrs)
        .filter(|c| c.contains(':') == ip.is_ipv6())
        .map(String::as_str)
        .collect();
    if !cidrs.is_empty() && !cidrs.iter().any(|c| in_cidr(ip, c)) {
        return Err(Error::NotServiceAddress {
            dest: dest.to_string(),
            reason: format!(
                "no Service on this node holds it and it is outside the service CIDR kube-proxy was given ({})",
                cidrs.join(", ")
            ),
        });
    }
    let frontend = Frontend {
        kind: FrontendKind::ClusterIp,
        ip,
        port,
        protocol,
        port_name: String::new(),
        rule: None,
    };
    Ok(Resolved::Unallocated(Plan {
        service: ServiceRef {
            namespace: String::new(),
            name: String::new(),
        },
        frontends: vec![frontend],
        endpoints: Vec::new(),
        frontend_addrs: vec![(protocol, dest.addr)],
        node_ips,
        asked: Asked::Unallocated(protocol, dest.addr),
    }))
}

/// What will be traced.
#[derive(Debug, Clone)]
pub struct Plan {
    pub service: ServiceRef,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// Concrete (protocol, address) of every frontend, NodePorts expanded to node addresses.
    pub frontend_addrs: Vec<(Protocol, SocketAddr)>,
    pub node_ips: Vec<IpAddr>,
    /// What was asked beyond the Service: a port number it does not define (its ClusterIPs are
    /// traced on that port, every protocol the Service uses, and the verdict says why it is
    /// refused), or an address no Service holds (`service` is then empty).
    pub asked: Asked,
}

/// Picks `arg`'s Service (and port) out of `model`. `node_ips` expand NodePort frontends that
/// match any local address.
pub fn plan(model: &ServiceModel, arg: &ServiceSelector, node_ips: Vec<IpAddr>) -> Result<Plan, Error> {
    let Some(svc) = model.service(&arg.service) else {
        let same_ns: Vec<String> = model
            .services
            .iter()
            .filter(|s| s.service.namespace == arg.service.namespace)
            .map(|s| s.service.name.clone())
            .take(10)
            .collect();
        let ns = &arg.service.namespace;
        let named = model.services.iter().any(|s| !s.service.namespace.is_empty());
        let reason = if !model.kube_proxy.rules_present {
            "is not in kube-proxy's rules on this node: no kube-proxy rules were found at all (is this the node's \
             network namespace?)"
                .to_string()
        } else if model.kube_proxy.mode == ProxyMode::Ipvs && !named {
            "cannot be found by name: kube-proxy runs in IPVS mode, where the kernel keeps only virtual servers \
             (addresses such as TCP 10.96.0.1:443) and Service names come only from the Kubernetes API, which gave \
             none here; pass --k8s-snapshot FILE (the output of `kubectl get services,endpointslices,pods,nodes -A \
             -o json`) or --kubeconfig PATH, or run with access to the API (without --no-k8s)"
                .to_string()
        } else if same_ns.is_empty() {
            format!("is not in kube-proxy's rules on this node, nor is any other Service of namespace {ns}")
        } else {
            format!(
                "is not in kube-proxy's rules on this node; Services of {ns} that are: {}",
                same_ns.join(", ")
            )
        };
        return Err(Error::UnknownService {
            service: arg.service.clone(),
            reason,
        });
    };
    plan_service(svc, arg, node_ips)
}

/// [`plan`] of a Service already found (`every_service` plans each of the model's: looking each
/// up by name again made that quadratic, seconds at 10,000 Services).
fn plan_service(svc: &Service, arg: &ServiceSelector, node_ips: Vec<IpAddr>) -> Result<Plan, Error> {
    let wanted = |port_name: &str, port: u16| match &arg.port {
        None => true,
        Some(p) => p == port_name || p.parse::<u16>().ok() == Some(port),
    };
    let frontends: Vec<Frontend> = svc
        .frontends
        .iter()
        .filter(|f| wanted(&f.port_name, f.port))
        .cloned()
        .collect();
    // A port number the Service does not define, on a Service with a ClusterIP: what a client that
    // uses it meets is the answer (kube-proxy's nftables mode rejects it, iptables mode leaves it
    // untranslated), so trace it rather than refuse the question.
    let asked = arg.port.as_deref().and_then(|p| p.parse::<u16>().ok());
    if let Some(port) = asked.filter(|_| frontends.is_empty()) {
        let mut undefined: Vec<Frontend> = Vec::new();
        for f in svc.frontends.iter().filter(|f| f.kind == FrontendKind::ClusterIp) {
            if !undefined.iter().any(|u| u.ip == f.ip && u.protocol == f.protocol) {
                undefined.push(Frontend {
                    kind: FrontendKind::ClusterIp,
                    ip: f.ip,
                    port,
                    protocol: f.protocol,
                    port_name: String::new(),
                    rule: None,
                });
            }
        }
        if !undefined.is_empty() {
            let mut frontend_addrs: Vec<(Protocol, SocketAddr)> = undefined
                .iter()
                .map(|f| (f.protocol, SocketAddr::new(f.ip, f.port)))
                .collect();
            frontend_addrs.sort();
            frontend_addrs.dedup();
            return Ok(Plan {
                service: arg.service.clone(),
                frontends: undefined,
                endpoints: Vec::new(),
                frontend_addrs,
                node_ips,
                asked: Asked::UndefinedPort(port),
            });
        }
    }
    if frontends.is_empty() && arg.port.is_some() {
        let mut known: Vec<String> = svc
            .frontends
            .iter()
            .map(|f| {
                if f.port_name.is_empty() {
                    f.port.to_string()
                } else {
                    format!("{} ({})", f.port_name, f.port)
                }
            })
            .collect();
        known.dedup();
        return Err(Error::UnknownPort {
            service: arg.service.clone(),
            port: arg.port.clone().unwrap_or_default(),
            known: known.join(", "),
        });
    }
    let port_names: Vec<&str> = frontends.iter().map(|f| f.port_name.as_str()).collect();
    let endpoints: Vec<Endpoint> = svc
        .endpoints
        .iter()
        .filter(|e| arg.port.is_none() || port_names.contains(&e.port_name.as_str()))
        .cloned()
        .collect();
    let mut frontend_addrs = Vec::new();
    for f in &frontends {
        if f.kind == FrontendKind::NodePort && f.ip.is_unspecified() {
            for ip in &node_ips {
                frontend_addrs.push((f.protocol, SocketAddr::new(*ip, f.port)));
            }
        } else {
            frontend_addrs.push((f.protocol, SocketAddr::new(f.ip, f.port)));
        }
    }
    frontend_addrs.sort();
    frontend_addrs.dedup();
    Ok(Plan {
        service: arg.service.clone(),
        frontends,
        endpoints,
        frontend_addrs,
        node_ips,
        asked: Asked::Service,
    })
}

fn target_key(protocol: Protocol, addr: SocketAddr) -> TargetKey {
    let mut key = TargetKey {
        port: addr.port().to_be(),
        proto: protocol.number(),
        ..Default::default()
    };
    match addr.ip() {
        IpAddr::V4(v4) => {
            key.addr[..4].copy_from_slice(&v4.octets());
            key.family = FAMILY_V4;
        }
        IpAddr::V6(v6) => {
            key.addr = v6.octets();
            key.family = FAMILY_V6;
        }
    }
    key
}

/// An endpoint as the kernel targets and the flow table need it: address, port, protocol.
fn addresses_only(e: &Endpoint) -> Endpoint {
    Endpoint {
        in_rules: e.in_rules,
        in_api: e.in_api,
        ready: e.ready,
        local: e.local,
        weight: e.weight,
        ..Endpoint::in_rules(e.ip, e.port, e.protocol, "")
    }
}

impl Plan {
    /// What is traced, for logs: the Service, or the address no Service holds.
    pub fn name(&self) -> String {
        match self.asked {
            Asked::Unallocated(protocol, addr) => format!("{addr}/{protocol} (no Service)"),
            _ => self.service.to_string(),
        }
    }

    /// The plan narrowed to one address family (`--family`): that family's frontends (NodePorts
    /// on that family's node addresses) and endpoints. A Service without a frontend of the family
    /// is an error naming the families it has.
    pub fn narrowed(mut self, family: IpFamily) -> Result<Plan, Error> {
        let of = |ip: IpAddr| IpFamily::of(ip) == family;
        let mut has: Vec<IpFamily> = self.frontend_addrs.iter().map(|(_, a)| IpFamily::of(a.ip())).collect();
        has.sort();
        has.dedup();
        self.frontend_addrs.retain(|(_, a)| of(a.ip()));
        if self.frontend_addrs.is_empty() {
            return Err(Error::NoSuchFamily {
                service: self.name(),
                family,
                has: has.iter().map(|f| f.as_str()).collect::<Vec<_>>().join(", "),
            });
        }
        // NodePorts on "any local address" stay: their addresses were expanded above.
        self.frontends
            .retain(|f| of(f.ip) || (f.kind == FrontendKind::NodePort && f.ip.is_unspecified()));
        self.endpoints.retain(|e| of(e.ip));
        self.node_ips.retain(|ip| of(*ip));
        Ok(self)
    }

    /// Kernel targets: every frontend, and every backend (so direct flows such as kubelet probes
    /// are traced too).
    pub fn targets(&self) -> Vec<(TargetKey, u32)> {
        let mut t: Vec<(TargetKey, u32)> = self
            .frontend_addrs
            .iter()
            .map(|(p, a)| (target_key(*p, *a), target::FRONTEND))
            .collect();
        for e in &self.endpoints {
            t.push((target_key(e.protocol, SocketAddr::new(e.ip, e.port)), target::BACKEND));
        }
        t
    }
}

/// Plans of many Services traced at once (the daemon, the demo): one set of kernel targets, and
/// the way back from a flow to the Service it belongs to (hashed: the daemon merges every Service
/// of the node, thousands in a large cluster).
#[derive(Debug, Clone)]
pub struct Merged {
    /// Every plan's frontends, backends and addresses, under one name.
    pub all: Plan,
    /// The plans merged, in order.
    pub plans: Vec<Plan>,
    frontends: HashMap<(Protocol, SocketAddr), usize>,
    backends: HashMap<(Protocol, SocketAddr), usize>,
}

impl Merged {
    /// Merges `plans` under the name `service` (for the start line and logs).
    pub fn new(service: ServiceRef, plans: Vec<Plan>, node_ips: Vec<IpAddr>) -> Self {
        let mut all = Plan {
            service,
            frontends: Vec::new(),
            endpoints: Vec::new(),
            frontend_addrs: Vec::new(),
            node_ips,
            asked: Asked::Service,
        };
        let (mut frontends, mut backends) = (HashMap::new(), HashMap::new());
        for (i, p) in plans.iter().enumerate() {
            for fa in &p.frontend_addrs {
                frontends.entry(*fa).or_insert(i);
            }
            for e in &p.endpoints {
                backends.entry((e.protocol, SocketAddr::new(e.ip, e.port))).or_insert(i);
            }
            all.frontends.extend(p.frontends.iter().cloned());
            all.endpoints.extend(p.endpoints.iter().cloned());
            all.frontend_addrs.extend(p.frontend_addrs.iter().copied());
        }
        all.frontend_addrs.sort();
        all.frontend_addrs.dedup();
        all.endpoints.sort_by_key(|e| (e.protocol, e.ip, e.port));
        all.endpoints
            .dedup_by(|a, b| (a.protocol, a.ip, a.port) == (b.protocol, b.ip, b.port));
        Self {
            all,
            plans,
            frontends,
            backends,
        }
    }

    /// Plans of every Service of `model` (the ones it cannot plan, without frontends, left out),
    /// for the daemon, which keeps them as long as the model: only what tracing needs is kept.
    /// `all` holds every frontend and backend without their rules or API names (the model has
    /// those); each plan keeps its Service and frontend addresses, not its own copies of them.
    /// At 10,000 Services the copies were two more models' worth of endpoints and rule texts.
    pub fn every_service(model: &ServiceModel) -> Self {
        let plans = model
            .services
            .iter()
            .filter_map(|s| {
                plan_service(
                    s,
                    &ServiceSelector {
                        service: s.service.clone(),
                        port: None,
                    },
                    model.node_ips.clone(),
                )
                .ok()
            })
            .map(|mut p: Plan| {
                p.frontends.iter_mut().for_each(|f| f.rule = None);
                p.endpoints = p.endpoints.iter().map(addresses_only).collect();
                p
            })
            .collect();
        let mut merged = Self::new(
            ServiceRef {
                namespace: "*".into(),
                name: "*".into(),
            },
            plans,
            model.node_ips.clone(),
        );
        // The daemon reads each plan's Service (the way back from a flow), the maps and
        // `all.frontend_addrs`; the kernel targets come from [`Merged::targets`]. The rest was
        // ~15 MiB at 10,000 Services, held twice while a new model's plans were built.
        for p in &mut merged.plans {
            p.frontends = Vec::new();
            p.endpoints = Vec::new();
            p.frontend_addrs = Vec::new();
            p.node_ips = Vec::new();
        }
        merged.all.frontends = Vec::new();
        merged.all.endpoints = Vec::new();
        merged
    }

    /// The kernel targets of every plan: `all`'s frontend addresses, then every backend in
    /// (protocol, address) order, as [`Plan::targets`] gives them for `all`.
    pub fn targets(&self) -> Vec<(TargetKey, u32)> {
        let mut backends: Vec<&(Protocol, SocketAddr)> = self.backends.keys().collect();
        backends.sort();
        let mut t: Vec<(TargetKey, u32)> = self
            .all
            .frontend_addrs
            .iter()
            .map(|(p, a)| (target_key(*p, *a), target::FRONTEND))
            .collect();
        t.extend(backends.into_iter().map(|(p, a)| (target_key(*p, *a), target::BACKEND)));
        t
    }

    /// `old` and `new`, one Service's part of the model before and after a change, are traced at
    /// the same addresses: what [`Merged::every_service`] uses of a Service (its plan's frontend
    /// addresses and backends) is the same, so the daemon keeps its targets and the way back from
    /// a flow to its Service (a readiness change, a policy, an API fact).
    pub fn same_addresses(old: &Service, new: &Service, node_ips: &[IpAddr]) -> bool {
        let addresses = |s: &Service| {
            let selector = ServiceSelector {
                service: s.service.clone(),
                port: None,
            };
            plan_service(s, &selector, node_ips.to_vec()).ok().map(|p| {
                let backends: Vec<(Protocol, IpAddr, u16)> =
                    p.endpoints.iter().map(|e| (e.protocol, e.ip, e.port)).collect();
                (p.frontend_addrs, backends)
            })
        };
        addresses(old) == addresses(new)
    }

    /// Which of the plans a flow belongs to: by its frontend, or for a direct flow (a kubelet
    /// probe) by its backend; the first plan that has it.
    pub fn owner(&self, flow: &crate::flows::Flow) -> Option<usize> {
        match flow.frontend {
            Some(fe) => self.frontends.get(&(flow.protocol, fe)).copied(),
            None => self.backends.get(&(flow.protocol, flow.backend?)).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Service;

    fn model() -> ServiceModel {
        let mut svc = Service::new(ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
        });
        for (name, port) in [("http", 80), ("metrics", 9090)] {
            svc.frontends.push(Frontend {
                kind: FrontendKind::ClusterIp,
                ip: "10.96.0.10".parse().unwrap(),
                port,
                protocol: Protocol::Tcp,
                port_name: name.into(),
                rule: None,
            });
        }
        svc.frontends.push(Frontend {
            kind: FrontendKind::NodePort,
            ip: "0.0.0.0".parse().unwrap(),
            port: 30080,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: None,
        });
        svc.endpoints.push(Endpoint::in_rules(
            "10.244.1.7".parse().unwrap(),
            8080,
            Protocol::Tcp,
            "http",
        ));
        let mut m = ServiceModel::default();
        m.kube_proxy.rules_present = true;
        m.services.push(svc);
        m
    }

    #[test]
    fn a_plan_narrowed_to_one_family_keeps_that_familys_addresses() {
        let mut m = model();
        let svc = &mut m.services[0];
        svc.frontends.push(Frontend {
            kind: FrontendKind::ClusterIp,
            ip: "fd00:10:96::10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: None,
        });
        svc.endpoints.push(Endpoint::in_rules(
            "fd00:10:244:1::7".parse().unwrap(),
            8080,
            Protocol::Tcp,
            "http",
        ));
        let arg: ServiceSelector = "default/web:http".parse().unwrap();
        let node_ips = vec!["172.31.0.2".parse().unwrap(), "fd00:172:31::2".parse().unwrap()];
        let full = plan(&m, &arg, node_ips).unwrap();
        assert_eq!(full.frontend_addrs.len(), 4, "{:?}", full.frontend_addrs);
        let v6 = full.clone().narrowed(IpFamily::V6).unwrap();
        let addrs: Vec<String> = v6.frontend_addrs.iter().map(|(_, a)| a.to_string()).collect();
        assert_eq!(addrs, ["[fd00:10:96::10]:80", "[fd00:172:31::2]:30080"]);
        assert_eq!(v6.endpoints.len(), 1);
        assert!(v6.endpoints[0].ip.is_ipv6());
        let v4 = full.narrowed(IpFamily::V4).unwrap();
        assert!(v4.targets().iter().all(|(k, _)| k.family == FAMILY_V4));
        // An IPv4-only Service has nothing to trace over IPv6: a usage error naming its families.
        let v4_only = plan(&model(), &arg, vec!["172.31.0.2".parse().unwrap()]).unwrap();
        let err = v4_only.narrowed(IpFamily::V6).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.to_string(),
            "default/web has no IPv6 frontend (its families: IPv4); trace with --family any or the other family"
        );
    }

    #[test]
    fn a_service_selector_refuses_an_address_and_points_at_dest() {
        let ok: ServiceSelector = "kube-system/kube-dns:dns-tcp".parse().unwrap();
        assert_eq!(ok.port.as_deref(), Some("dns-tcp"));
        for bad in ["default/fe80::1%eth0", "default/web:1%eth0", "default/x:ffff:10.0.0.1"] {
            let err = bad.parse::<ServiceSelector>().unwrap_err();
            assert!(
                err.contains("is neither a number nor a Service port name; to trace an address, use --dest IP:PORT"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn destinations_parse_with_a_default_protocol_and_say_what_is_wrong() {
        let d: Destination = "10.96.0.10:53/udp".parse().unwrap();
        assert_eq!((d.protocol, d.addr), (Protocol::Udp, "10.96.0.10:53".parse().unwrap()));
        let d: Destination = "[fd00::10]:80".parse().unwrap();
        assert_eq!(
            (d.protocol, d.to_string().as_str()),
            (Protocol::Tcp, "[fd00::10]:80/tcp")
        );
        for (bad, says) in [
            ("10.96.0.10", "expected IP:PORT[/PROTO]"),
            ("10.96.0.10:80/icmp", "unknown protocol `icmp`"),
            ("10.96.0.10:0", "port 0"),
            ("web:80", "expected IP:PORT[/PROTO]"),
            ("[fe80::1%eth0]:80", "a zone-scoped address (zone `eth0`)"),
            ("fe80::1%eth0:80", "a zone-scoped address"),
            (
                "[::ffff:10.0.0.1]:80",
                "an IPv4-mapped IPv6 address, which no Service holds",
            ),
            ("[::ffff:10.0.0.1]:80", "use 10.0.0.1:80"),
            ("fd00::10:80", "written in brackets, e.g. [fd00::10]:80"),
        ] {
            let err = bad.parse::<Destination>().unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
    }

    #[test]
    fn an_address_resolves_to_the_service_that_holds_it() {
        let node: IpAddr = "192.168.1.2".parse().unwrap();
        let resolved = |d: &str| resolve(&model(), &d.parse().unwrap(), vec![node]).unwrap();
        let named = |d: &str| match resolved(d) {
            Resolved::Service(s) => (s.service.to_string(), s.port),
            Resolved::Unallocated(p) => panic!("{d}: {p:?}"),
        };
        assert_eq!(named("10.96.0.10:80"), ("default/web".into(), Some("http".into())));
        assert_eq!(named("10.96.0.10:9090"), ("default/web".into(), Some("metrics".into())));
        // A NodePort on a node address; a port the ClusterIP lacks (then service_port_undefined).
        assert_eq!(named("192.168.1.2:30080"), ("default/web".into(), Some("http".into())));
        assert_eq!(named("10.96.0.10:81"), ("default/web".into(), Some("81".into())));
        // The port over another protocol is refused with what the Service has.
        let err = resolve(&model(), &"10.96.0.10:80/udp".parse().unwrap(), vec![node]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.96.0.10:80/udp: default/web has port 80 on 10.96.0.10 over tcp only; trace that, or the Service by name"
        );
    }

    #[test]
    fn an_address_no_service_holds_is_planned_inside_the_service_cidr_and_refused_outside() {
        let mut m = model();
        // No service CIDR in the rules (iptables mode): planned, the verdict says what is unknown.
        let Resolved::Unallocated(p) = resolve(&m, &"10.96.200.7:80".parse().unwrap(), vec![]).unwrap() else {
            panic!("unallocated");
        };
        assert_eq!(
            p.asked,
            Asked::Unallocated(Protocol::Tcp, "10.96.200.7:80".parse().unwrap())
        );
        assert_eq!(p.frontend_addrs, [(Protocol::Tcp, "10.96.200.7:80".parse().unwrap())]);
        assert!(p.endpoints.is_empty() && p.service.to_string().is_empty());
        assert_eq!(p.name(), "10.96.200.7:80/tcp (no Service)");
        m.unallocated_drops = vec![crate::model::UnallocatedDrop {
            cidrs: vec!["10.96.0.0/16".into()],
            rule: crate::model::RuleRef {
                source: crate::model::RuleSource::Nftables,
                name: "cluster-ips-check".into(),
                text: "ip daddr 10.96.0.0/16 drop".into(),
            },
        }];
        assert!(matches!(
            resolve(&m, &"10.96.200.7:80".parse().unwrap(), vec![]).unwrap(),
            Resolved::Unallocated(_)
        ));
        let err = resolve(&m, &"192.0.2.7:80".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert_eq!(
            err.to_string(),
            "192.0.2.7:80/tcp: no Service on this node holds it and it is outside the service CIDR kube-proxy was given (10.96.0.0/16)"
        );
        // An IPv6 address is held against the IPv6 table's CIDR only: none known, planned.
        let v6 = "[fd00:10:96:200::7]:80".parse().unwrap();
        assert!(matches!(resolve(&m, &v6, vec![]).unwrap(), Resolved::Unallocated(_)));
        let mut v6_drop = m.unallocated_drops[0].clone();
        v6_drop.cidrs = vec!["fd00:10:96::/48".into()];
        v6_drop.rule.text = "ip6 daddr fd00:10:96::/48 drop".into();
        m.unallocated_drops.push(v6_drop);
        assert!(matches!(resolve(&m, &v6, vec![]).unwrap(), Resolved::Unallocated(_)));
        let err = resolve(&m, &"[fd00:192:0:2::7]:80".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "[fd00:192:0:2::7]:80/tcp: no Service on this node holds it and it is outside the service CIDR kube-proxy was given (fd00:10:96::/48)"
        );
    }

    #[test]
    fn plans_frontends_and_backends_of_one_port() {
        let arg: ServiceSelector = "default/web:http".parse().unwrap();
        let plan = plan(&model(), &arg, vec!["192.168.1.2".parse().unwrap()]).unwrap();
        assert_eq!(
            plan.frontend_addrs,
            vec![
                (Protocol::Tcp, "10.96.0.10:80".parse().unwrap()),
                (Protocol::Tcp, "192.168.1.2:30080".parse().unwrap())
            ]
        );
        assert_eq!(plan.endpoints.len(), 1);
        let targets = plan.targets();
        assert_eq!(targets.len(), 3);
        assert_eq!(targets[2].1, target::BACKEND);
        assert_eq!(u16::from_be(targets[0].0.port), 80);
    }

    #[test]
    fn unknown_service_and_port_say_what_exists() {
        let err = plan(&model(), &"default/nope".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("web"), "{err}");
        let err = plan(&model(), &"default/web:grpc".parse().unwrap(), vec![]).unwrap_err();
        assert!(
            err.to_string().contains("http (80)") && err.to_string().contains("metrics (9090)"),
            "{err}"
        );
        let err = plan(&model(), &"other/web".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Service other/web is not in kube-proxy's rules on this node, nor is any other Service of namespace other"
        );
        let mut empty = model();
        empty.services.clear();
        empty.kube_proxy.rules_present = false;
        let err = plan(&empty, &"default/web".parse().unwrap(), vec![]).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("no kube-proxy rules were found at all (is this the node's network namespace?)"),
            "{err}"
        );
    }

    #[test]
    fn merged_targets_are_those_of_all_whether_or_not_all_keeps_its_endpoints() {
        let mut m = model();
        let mut other = m.services[0].clone();
        other.service.name = "other".into();
        other
            .frontends
            .iter_mut()
            .for_each(|f| f.ip = "10.96.0.11".parse().unwrap());
        other.endpoints.push(Endpoint::in_rules(
            "10.244.1.2".parse().unwrap(),
            8080,
            Protocol::Udp,
            "http",
        ));
        other.endpoints.push(Endpoint::in_rules(
            "fd00:10:244:1::7".parse().unwrap(),
            8080,
            Protocol::Tcp,
            "http",
        ));
        m.services.push(other);
        let node_ips: Vec<IpAddr> = vec!["10.0.0.1".parse().unwrap()];
        let plans: Vec<Plan> = m
            .services
            .iter()
            .map(|s| {
                let sel = ServiceSelector {
                    service: s.service.clone(),
                    port: None,
                };
                plan(&m, &sel, node_ips.clone()).unwrap()
            })
            .collect();
        let all = ServiceRef {
            namespace: "*".into(),
            name: "*".into(),
        };
        let whole = Merged::new(all, plans, node_ips.clone());
        assert_eq!(whole.targets(), whole.all.targets());
        assert_eq!(
            whole.targets().len(),
            3 + 3 + 3,
            "frontends of both, 3 distinct backends"
        );
        m.node_ips = node_ips;
        let slim = Merged::every_service(&m);
        assert!(slim.all.endpoints.is_empty());
        assert_eq!(slim.targets(), whole.all.targets());
    }

    #[test]
    fn a_port_number_the_service_lacks_traces_its_cluster_ip_on_that_port() {
        let p = plan(&model(), &"default/web:81".parse().unwrap(), vec![]).unwrap();
        assert_eq!(p.asked, Asked::UndefinedPort(81));
        assert_eq!(p.frontend_addrs, [(Protocol::Tcp, "10.96.0.10:81".parse().unwrap())]);
        assert!(p.endpoints.is_empty());
        // A Service without a ClusterIP (its rules hold only a NodePort) still refuses the question.
        let mut m = model();
        m.services[0].frontends.retain(|f| f.kind == FrontendKind::NodePort);
        let err = plan(&m, &"default/web:81".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
    }

    #[test]
    fn unknown_service_in_ipvs_mode_without_the_api_says_where_names_come_from() {
        // IPVS without the API: the rules hold only anonymous Services (virtual servers).
        let mut m = model();
        m.kube_proxy.mode = crate::model::ProxyMode::Ipvs;
        m.services[0].service = ServiceRef {
            namespace: String::new(),
            name: "TCP 10.96.0.10:80".into(),
        };
        let err = plan(&m, &"default/web".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert_eq!(
            text,
            "Service default/web cannot be found by name: kube-proxy runs in IPVS mode, where the kernel keeps only \
             virtual servers (addresses such as TCP 10.96.0.1:443) and Service names come only from the Kubernetes \
             API, which gave none here; pass --k8s-snapshot FILE (the output of `kubectl get \
             services,endpointslices,pods,nodes -A -o json`) or --kubeconfig PATH, or run with access to the API \
             (without --no-k8s)"
        );
        assert!(!text.contains("  "), "one sentence, no gaps: {text}");
        // With the API's names, a missing Service is just missing.
        m.services[0].service = ServiceRef {
            namespace: "default".into(),
            name: "web".into(),
        };
        let err = plan(&m, &"default/nope".parse().unwrap(), vec![]).unwrap_err();
        assert!(err.to_string().ends_with("Services of default that are: web"), "{err}");
    }
}
