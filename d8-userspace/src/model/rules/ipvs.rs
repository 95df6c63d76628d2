//! Reads IPVS virtual and real servers from `ipvsadm -Ln` text or `/proc/net/ip_vs`, and joins them
//! to Services named elsewhere.
//!
//! In IPVS mode the kernel holds no Service names: a virtual server is only `TCP 10.96.0.1:443`. So
//! reading is two steps:
//! 1. [`parse`] turns the text into [`VirtualServer`]s (both formats: `ipvsadm -Ln` prints decimal
//!    `10.96.0.1:443`, `/proc/net/ip_vs` prints hex `0A600001:01BB`; IPv6 as `[addr]:port`).
//! 2. [`join`] matches them to `(ServiceRef, frontends)` pairs from the Kubernetes API (or any other
//!    source) by address, protocol and port (a NodePort frontend at `0.0.0.0`/`::` matches the
//!    virtual server of every node address on that port). Virtual servers no pair claims are kept as
//!    anonymous Services: `namespace` empty, `name` the virtual server (`TCP 10.96.99.99:8080`), one
//!    `cluster_ip` frontend (IPVS cannot tell the kind).
//!
//! Real servers become endpoints with `weight` = the IPVS weight (kube-proxy uses 1; 0 = draining,
//! graceful termination after the endpoint went away). A virtual server with no real servers is a
//! problem on its Service ("virtual server X has no real servers": the Service has no endpoints, or
//! kube-proxy failed to program it). Persistence (`persistent 10800`) is ClientIP affinity.
//!
//! [`check_addresses`] adds a problem to each virtual server whose address no interface holds
//! (kube-proxy binds Service IPs to `kube-ipvs0`; input: `ip -j addr show`, [`parse_ip_addr_json`]).
//! [`name_services`] is the one-step join for a model that already has the API's Services.
//!
//! Not done: the generic netlink `IPVS` family, `ipset` contents.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::model::rules::address::odd_suffix;
use crate::model::rules::service::{self, RuleEndpoint};
use crate::model::{Frontend, FrontendKind, Protocol, RuleRef, RuleSource, Service, ServiceRef};

/// kube-proxy's scheduler probe (§2.1): created and deleted at start; not a Service.
const PROBE_VS: &str = "198.51.100.0:20000";

/// One IPVS virtual server (`ipvsadm` "service").
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualServer {
    /// `None` for firewall-mark services (`FWM  5`), which kube-proxy does not create.
    pub protocol: Option<Protocol>,
    /// Address and port; `None` for firewall-mark services.
    pub addr: Option<SocketAddr>,
    pub fwmark: Option<u32>,
    pub scheduler: String,
    /// `persistent <secs>`: ClientIP session affinity.
    pub persistent_secs: Option<u32>,
    pub real_servers: Vec<RealServer>,
    /// Problems found beside the text (see [`check_addresses`]); [`join`] copies them to the
    /// Service's `RuleFacts::problems`.
    pub problems: Vec<String>,
    /// The line as printed, for evidence.
    pub text: String,
    pub line: usize,
}

impl VirtualServer {
    /// `TCP 10.96.0.1:443` (`FWM 5`).
    pub fn name(&self) -> String {
        match (self.protocol, self.addr, self.fwmark) {
            (Some(p), Some(a), _) => format!("{} {a}", p.as_str().to_uppercase()),
            (_, _, Some(m)) => format!("FWM {m}"),
            _ => self.text.clone(),
        }
    }
}

/// One real server of a virtual server.
#[derive(Debug, Clone, PartialEq)]
pub struct RealServer {
    pub addr: SocketAddr,
    /// `Masq` (kube-proxy's), `Local`, `Tunnel`, `Route`.
    pub forward: String,
    /// 0 = draining.
    pub weight: u32,
    pub active_conns: u64,
    pub inactive_conns: u64,
    /// The line as printed, with ipvsadm's column padding squeezed to one space.
    pub text: String,
    pub line: usize,
}

/// What [`parse`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    pub virtual_servers: Vec<VirtualServer>,
    pub warnings: Vec<String>,
}

/// The input is not `ipvsadm -Ln` or `/proc/net/ip_vs` text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// The first meaningful line is neither the IPVS header nor a virtual server.
    #[error(
        "{source_name} line {line}: expected `ipvsadm -Ln` or /proc/net/ip_vs text \
         (`IP Virtual Server version ...`) but found `{found}`"
    )]
    NotIpvs {
        source_name: String,
        line: usize,
        found: String,
    },
}

/// Parses `ipvsadm -Ln` or `/proc/net/ip_vs` text; warnings name the source `ipvsadm`.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    parse_named(text, "ipvsadm")
}

/// Parses `ipvsadm -Ln` or `/proc/net/ip_vs` text; `source_name` prefixes every warning.
pub fn parse_named(text: &str, source_name: &str) -> Result<Parsed, ParseError> {
    let mut out = Parsed::default();
    let mut seen_header = false;
    // /proc/net/ip_vs prints addresses and ports in hex; ipvsadm in decimal. Decide once per text.
    let hex = text
        .lines()
        .any(|l| l.split_whitespace().nth(1).is_some_and(is_proc_addr))
        || text.lines().any(|l| {
            l.trim_start()
                .strip_prefix("->")
                .and_then(|r| r.split_whitespace().next())
                .is_some_and(is_proc_addr)
        });
    for (idx, raw) in text.lines().enumerate() {
        let line_no = idx + 1;
        let line = raw.trim_end();
        let trimmed = line.trim();
        if trimmed.is_empty() {
            continue;
        }
        if trimmed.starts_with("IP Virtual Server version") || trimmed.starts_with("Prot LocalAddress") {
            seen_header = true;
            continue;
        }
        if trimmed.starts_with("-> RemoteAddress") {
            continue;
        }
        let warn = |out: &mut Parsed, msg: String| out.warnings.push(format!("{source_name} line {line_no}: {msg}"));
        if let Some(rest) = trimmed.strip_prefix("->") {
            let Some(vs) = out.virtual_servers.last_mut() else {
                warn(&mut out, format!("real server before any virtual server: {trimmed}"));
                continue;
            };
            match parse_real_server(rest, trimmed, line_no, hex) {
                Some(rs) => vs.real_servers.push(rs),
                None => warn(
                    &mut out,
                    format!("unreadable real server line: {trimmed}{}", odd_suffix(trimmed)),
                ),
            }
            continue;
        }
        match parse_virtual_server(trimmed, line_no, hex) {
            Some(vs) => {
                seen_header = true;
                out.virtual_servers.push(vs);
            }
            None if !seen_header => {
                return Err(ParseError::NotIpvs {
                    source_name: source_name.to_string(),
                    line: line_no,
                    found: trimmed.chars().take(80).collect(),
                });
            }
            None => warn(&mut out, format!("unreadable line: {trimmed}{}", odd_suffix(trimmed))),
        }
    }
    Ok(out)
}

/// `TCP  10.96.0.1:443 rr persistent 10800` / `TCP  0A600001:01BB rr persistent 10800 FFFFFFFF`.
fn parse_virtual_server(line: &str, line_no: usize, hex: bool) -> Option<VirtualServer> {
    let mut words = line.split_whitespace();
    let proto = words.next()?;
    let target = words.next()?;
    let scheduler = words.next().unwrap_or("").to_string();
    let rest: Vec<&str> = words.collect();
    let persistent_secs = rest
        .iter()
        .position(|w| *w == "persistent")
        .and_then(|i| rest.get(i + 1))
        .and_then(|s| s.parse().ok());
    let (protocol, addr, fwmark) = if proto == "FWM" {
        (None, None, Some(target.parse().ok()?))
    } else {
        (Some(Protocol::parse(proto)?), Some(parse_addr(target, hex)?), None)
    };
    Some(VirtualServer {
        protocol,
        addr,
        fwmark,
        scheduler,
        persistent_secs,
        real_servers: Vec::new(),
        problems: Vec::new(),
        text: line.to_string(),
        line: line_no,
    })
}

/// `192.168.0.1:6443  Masq  1  3  0` (after `->`).
fn parse_real_server(rest: &str, text: &str, line_no: usize, hex: bool) -> Option<RealServer> {
    let w: Vec<&str> = rest.split_whitespace().collect();
    let [addr, forward, weight, active, inactive, ..] = w.as_slice() else {
        return None;
    };
    Some(RealServer {
        addr: parse_addr(addr, hex)?,
        forward: forward.to_string(),
        weight: weight.parse().ok()?,
        active_conns: active.parse().ok()?,
        inactive_conns: inactive.parse().ok()?,
        // ipvsadm pads the columns (`%-28s %-7s %-6d ...`): one space between fields reads better
        // as evidence.
        text: text.split_whitespace().collect::<Vec<_>>().join(" "),
        line: line_no,
    })
}

/// `0A600001:01BB` or `[fd00:0010:0096:0000:0000:0000:0000:000a]:0035`: the kernel's `%08X:%04X`
/// and `[%pI6]:%04X` forms.
fn is_proc_addr(s: &str) -> bool {
    let Some((ip, port)) = s.rsplit_once(':') else {
        return false;
    };
    let hex = |x: &str, n: usize| x.len() == n && x.bytes().all(|b| b.is_ascii_hexdigit());
    hex(port, 4)
        && (hex(ip, 8)
            || ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).is_some_and(|i| {
                let groups: Vec<&str> = i.split(':').collect();
                groups.len() == 8 && groups.iter().all(|g| hex(g, 4))
            }))
}

/// `10.96.0.1:443`, `[fd00::a]:53` (ipvsadm), or with `hex` the /proc forms (see [`is_proc_addr`]).
/// Not a zone-scoped or IPv4-mapped address (`super::address`): the line is then unreadable, and
/// its warning says why.
fn parse_addr(s: &str, hex: bool) -> Option<SocketAddr> {
    parse_any_addr(s, hex).filter(|a| !super::address::is_ipv4_mapped(a.ip()) && !s.contains('%'))
}

fn parse_any_addr(s: &str, hex: bool) -> Option<SocketAddr> {
    if !hex {
        return s.parse::<SocketAddr>().ok();
    }
    let (ip, port) = s.rsplit_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if let Some(v6) = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
        return Some(SocketAddr::new(IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?), port));
    }
    if ip.len() == 8 {
        return Some(SocketAddr::new(
            IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?)),
            port,
        ));
    }
    None
}

/// Joins virtual servers to Services. `known` holds, per Service, the frontends another source
/// (the API) says it has; their `port_name` is copied to the endpoints. Result: one Service per
/// claimed `ServiceRef` plus one anonymous Service per unclaimed virtual server, ordered by name.
pub fn join(virtual_servers: &[VirtualServer], known: &[(ServiceRef, Vec<Frontend>)]) -> Vec<Service> {
    let mut services: BTreeMap<ServiceRef, Service> = BTreeMap::new();
    for vs in virtual_servers {
        let (Some(proto), Some(addr)) = (vs.protocol, vs.addr) else {
            continue;
        };
        if addr.to_string() == PROBE_VS {
            continue;
        }
        let claim = known.iter().find_map(|(sref, fes)| {
            fes.iter()
                .find(|f| {
                    f.protocol == proto
                        && f.port == addr.port()
                        && (f.ip == addr.ip() || (f.kind == FrontendKind::NodePort && f.ip.is_unspecified()))
                })
                .map(|f| (sref.clone(), f.clone()))
        });
        let (sref, mut fe) = claim.unwrap_or_else(|| {
            (
                ServiceRef {
                    namespace: String::new(),
                    name: vs.name(),
                },
                Frontend {
                    kind: FrontendKind::ClusterIp,
                    ip: addr.ip(),
                    port: addr.port(),
                    protocol: proto,
                    port_name: String::new(),
                    rule: None,
                },
            )
        });
        fe.ip = addr.ip();
        fe.rule = Some(RuleRef {
            source: RuleSource::Ipvs,
            name: vs.name().into(),
            text: vs.text.as_str().into(),
        });
        let svc = services.entry(sref.clone()).or_insert_with(|| Service::new(sref));
        svc.rules.present = true;
        svc.rules.chains.push(vs.name());
        if let Some(secs) = vs.persistent_secs {
            svc.rules.affinity_timeout_secs = Some(secs);
        }
        if vs.real_servers.is_empty() {
            svc.rules
                .problems
                .push(format!("virtual server {} has no real servers", vs.name()));
        }
        svc.rules.problems.extend(vs.problems.iter().cloned());
        for rs in &vs.real_servers {
            let found = RuleEndpoint {
                ip: rs.addr.ip(),
                port: rs.addr.port(),
                protocol: proto,
                port_name: &fe.port_name,
                weight: Some(f64::from(rs.weight)),
                local: None,
                rule: rs_ref(vs, rs),
            };
            // The same pod behind the ClusterIP and NodePort servers: keep the lowest weight, so a
            // draining server anywhere shows.
            service::add_endpoint(svc, found, |e, again| {
                if e.weight.is_some_and(|w| again.weight.is_some_and(|x| x < w)) {
                    e.weight = again.weight;
                    e.rule = Some(again.rule);
                }
            });
        }
        service::add_frontend(svc, &fe.port_name, fe.kind, fe.ip, fe.port, fe.protocol, fe.rule);
    }
    services.into_values().collect()
}

/// kube-proxy's dummy device holding every ClusterIP, external IP and LB IP of IPVS mode (§2.1).
pub const DUMMY_DEVICE: &str = "kube-ipvs0";

/// (interface, address) pairs from `ip -j addr show`.
pub fn parse_ip_addr_json(text: &str) -> Result<Vec<(String, IpAddr)>, serde_json::Error> {
    let links: Vec<serde_json::Value> = serde_json::from_str(text)?;
    let mut out = Vec::new();
    for link in &links {
        let Some(ifname) = link.get("ifname").and_then(|v| v.as_str()) else {
            continue;
        };
        for a in link.get("addr_info").and_then(|v| v.as_array()).into_iter().flatten() {
            if let Some(ip) = a.get("local").and_then(|v| v.as_str()).and_then(|v| v.parse().ok()) {
                out.push((ifname.to_string(), ip));
            }
        }
    }
    Ok(out)
}

/// Checks that every virtual server's address is local (IPVS only sees packets the node accepts:
/// kube-proxy binds ClusterIPs, external and LB IPs to `kube-ipvs0`; NodePort servers use node
/// addresses). A virtual server whose address no interface holds gets a problem; the returned
/// warnings cover the node as a whole (no `kube-ipvs0` at all).
pub fn check_addresses(virtual_servers: &mut [VirtualServer], local: &[(String, IpAddr)]) -> Vec<String> {
    let mut warnings = Vec::new();
    let has_dummy = local.iter().any(|(ifname, _)| ifname == DUMMY_DEVICE);
    let relevant = virtual_servers
        .iter()
        .any(|vs| vs.addr.is_some_and(|a| a.to_string() != PROBE_VS));
    if relevant && !has_dummy {
        warnings.push(format!(
            "{DUMMY_DEVICE} has no addresses (or does not exist): kube-proxy binds Service IPs there in IPVS mode"
        ));
    }
    for vs in virtual_servers.iter_mut() {
        let Some(addr) = vs.addr else { continue };
        if addr.to_string() == PROBE_VS || local.iter().any(|(_, ip)| *ip == addr.ip()) {
            continue;
        }
        vs.problems.push(format!(
            "virtual server {}: {} is not bound to {DUMMY_DEVICE} or any other interface, so the node does not accept packets for it (partial sync?)",
            vs.name(),
            addr.ip()
        ));
    }
    warnings
}

/// Names the Services of an IPVS node in one step: drops the anonymous Services (empty
/// namespace, as [`join`] and `rules::read_node` make them), joins `virtual_servers` to the named
/// ones' frontends (e.g. the API's), and merges the result into them with
/// `rules::merge_services` (so nothing doubles). Unclaimed virtual servers come back anonymous.
pub fn name_services(services: Vec<Service>, virtual_servers: &[VirtualServer]) -> Vec<Service> {
    let named: Vec<Service> = services
        .into_iter()
        .filter(|s| !s.service.namespace.is_empty())
        .collect();
    let known: Vec<(ServiceRef, Vec<Frontend>)> =
        named.iter().map(|s| (s.service.clone(), s.frontends.clone())).collect();
    let joined = join(virtual_servers, &known);
    crate::model::rules::merge_services(named, joined)
}

fn rs_ref(vs: &VirtualServer, rs: &RealServer) -> RuleRef {
    RuleRef {
        source: RuleSource::Ipvs,
        name: format!("{} -> {}", vs.name(), rs.addr).into(),
        text: rs.text.as_str().into(),
    }
}

/// Warnings for virtual servers kube-proxy leaves behind on purpose (its scheduler probe).
pub fn notes(virtual_servers: &[VirtualServer]) -> Vec<String> {
    virtual_servers
        .iter()
        .filter(|vs| vs.addr.is_some_and(|a| a.to_string() == PROBE_VS))
        .map(|vs| {
            format!(
                "{}: kube-proxy's scheduler probe (created at start), ignored",
                vs.name()
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Endpoint;

    const IPVSADM: &str = include_str!("../../../testdata/rules/ipvsadm-Ln.txt");
    const PROC: &str = include_str!("../../../testdata/rules/proc-net-ip_vs.txt");

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn fe(kind: FrontendKind, ip: &str, port: u16, proto: Protocol, port_name: &str) -> Frontend {
        Frontend {
            kind,
            ip: ip.parse().unwrap(),
            port,
            protocol: proto,
            port_name: port_name.to_string(),
            rule: None,
        }
    }

    fn sref(n: &str) -> ServiceRef {
        let (ns, name) = n.split_once('/').unwrap();
        ServiceRef {
            namespace: ns.to_string(),
            name: name.to_string(),
        }
    }

    #[test]
    fn parses_ipvsadm_text() {
        let p = parse(IPVSADM).unwrap();
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
        assert_eq!(p.virtual_servers.len(), 11);
        let k = &p.virtual_servers[0];
        assert_eq!(k.name(), "TCP 10.96.0.1:443");
        assert_eq!(k.scheduler, "rr");
        assert_eq!(k.real_servers[0].addr, sa("192.168.205.145:6443"));
        assert_eq!(k.real_servers[0].active_conns, 3);
        let web = p
            .virtual_servers
            .iter()
            .find(|v| v.addr == Some(sa("10.96.10.10:80")))
            .unwrap();
        assert_eq!(
            web.real_servers.iter().map(|r| r.weight).collect::<Vec<_>>(),
            vec![1, 1, 0]
        );
        let sticky = p
            .virtual_servers
            .iter()
            .find(|v| v.addr == Some(sa("10.96.20.40:80")))
            .unwrap();
        assert_eq!(sticky.persistent_secs, Some(10800));
        let v6 = p.virtual_servers.last().unwrap();
        assert_eq!(v6.addr, Some(sa("[fd00:10:96::a]:53")));
        assert_eq!(v6.real_servers[0].addr, sa("[fd00:10:244:1::5]:53"));
    }

    /// ipvsadm's IPv6 lines round-trip: the address `ipvsadm -Ln` prints (`[fd00::1]:80`) is the
    /// socket address read back. A zone-scoped or IPv4-mapped address (kube-proxy writes neither)
    /// leaves its line out with a warning that names it and why.
    #[test]
    fn ipv6_lines_round_trip_and_odd_addresses_are_named() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)\n\
                    Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n\
                    TCP  [fd00::1]:80 rr\n  -> [fd00:10:244:1::11]:8080 Masq 1 0 0\n\
                    TCP  [::ffff:10.96.0.1]:80 rr\n\
                    TCP  [fd00::2]:80 rr\n  -> [fe80::5%eth0]:8080 Masq 1 0 0\n";
        let p = parse(text).unwrap();
        let vs = &p.virtual_servers[0];
        assert_eq!(vs.addr, Some(sa("[fd00::1]:80")));
        assert_eq!(vs.addr.unwrap().to_string(), "[fd00::1]:80");
        assert_eq!(vs.real_servers[0].addr.to_string(), "[fd00:10:244:1::11]:8080");
        assert_eq!(p.virtual_servers.len(), 2, "{:#?}", p.virtual_servers);
        assert!(p.virtual_servers[1].real_servers.is_empty());
        let all = p.warnings.join("\n");
        assert!(
            all.contains(
                "line 6: unreadable line: TCP  [::ffff:10.96.0.1]:80 rr ([::ffff:10.96.0.1]:80 is an IPv4-mapped"
            ),
            "{all}"
        );
        assert!(all.contains("([fe80::5%eth0]:8080 is a zone-scoped address"), "{all}");
    }

    #[test]
    fn parses_proc_net_ip_vs_hex() {
        let p = parse(PROC).unwrap();
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
        let addrs: Vec<_> = p.virtual_servers.iter().map(|v| v.addr.unwrap()).collect();
        assert_eq!(
            addrs,
            vec![
                sa("10.96.0.1:443"),
                sa("10.96.10.10:80"),
                sa("10.96.10.20:80"),
                sa("10.96.20.40:80")
            ]
        );
        assert_eq!(p.virtual_servers[1].real_servers[1].addr, sa("10.244.3.12:8080"));
        assert_eq!(p.virtual_servers[1].real_servers[1].weight, 0);
        assert_eq!(p.virtual_servers[3].persistent_secs, Some(10800));
        assert_eq!(
            parse_addr("[fd00:0010:0096:0000:0000:0000:0000:000a]:0035", true),
            Some(sa("[fd00:10:96::a]:53"))
        );
        assert!(is_proc_addr("[fd00:0010:0096:0000:0000:0000:0000:000a]:0035"));
        assert!(!is_proc_addr("10.96.0.1:443"));
    }

    #[test]
    fn join_names_services_and_keeps_unknown_virtual_servers() {
        let p = parse(IPVSADM).unwrap();
        let known = vec![
            (
                sref("ns1/web"),
                vec![
                    fe(FrontendKind::ClusterIp, "10.96.10.10", 80, Protocol::Tcp, "http"),
                    fe(FrontendKind::NodePort, "0.0.0.0", 30080, Protocol::Tcp, "http"),
                    fe(FrontendKind::ExternalIp, "203.0.113.10", 80, Protocol::Tcp, "http"),
                ],
            ),
            (
                sref("ns1/empty"),
                vec![
                    fe(FrontendKind::ClusterIp, "10.96.10.20", 80, Protocol::Tcp, "http"),
                    fe(FrontendKind::NodePort, "0.0.0.0", 30081, Protocol::Tcp, "http"),
                ],
            ),
            (
                sref("ns2/sticky"),
                vec![fe(FrontendKind::ClusterIp, "10.96.20.40", 80, Protocol::Tcp, "http")],
            ),
        ];
        let services = join(&p.virtual_servers, &known);
        let get = |n: &str| services.iter().find(|s| s.service.to_string() == n).unwrap();
        let web = get("ns1/web");
        assert_eq!(web.frontends.len(), 3);
        let np = web.frontends.iter().find(|f| f.kind == FrontendKind::NodePort).unwrap();
        assert_eq!(np.ip, "192.168.1.10".parse::<IpAddr>().unwrap());
        assert_eq!(&*np.rule.as_ref().unwrap().name, "TCP 192.168.1.10:30080");
        assert_eq!(web.endpoints.len(), 3);
        assert_eq!(web.endpoints[2].weight, Some(0.0));
        assert_eq!(web.endpoints[2].port_name, "http");
        assert!(
            web.endpoints[2]
                .rule
                .as_ref()
                .unwrap()
                .text
                .starts_with("-> 10.244.3.12:8080 Masq 0 ")
        );
        assert!(web.rules.problems.is_empty());
        let empty = get("ns1/empty");
        assert_eq!(
            empty.rules.problems,
            vec![
                "virtual server TCP 10.96.10.20:80 has no real servers".to_string(),
                "virtual server TCP 192.168.1.10:30081 has no real servers".to_string()
            ]
        );
        assert_eq!(get("ns2/sticky").rules.affinity_timeout_secs, Some(10800));
        let anon = services
            .iter()
            .find(|s| s.service.name == "TCP 10.96.99.99:8080")
            .unwrap();
        assert_eq!(anon.service.namespace, "");
        assert_eq!(anon.endpoints.len(), 1);
        // Unclaimed: kubernetes (1), kube-dns tcp+udp (2), stale 10.96.99.99 (1), IPv6 dns (1).
        assert_eq!(services.iter().filter(|s| s.service.namespace.is_empty()).count(), 5);
    }

    #[test]
    fn name_services_replaces_anonymous_ones_without_doubling() {
        let p = parse(IPVSADM).unwrap();
        let anonymous = join(&p.virtual_servers, &[]);
        let mut api = Service::new(sref("ns1/web"));
        api.frontends = vec![
            fe(FrontendKind::ClusterIp, "10.96.10.10", 80, Protocol::Tcp, "http"),
            fe(FrontendKind::NodePort, "0.0.0.0", 30080, Protocol::Tcp, "http"),
        ];
        api.endpoints.push(Endpoint {
            ip: "10.244.3.12".parse().unwrap(),
            port: 8080,
            protocol: Protocol::Tcp,
            port_name: "http".to_string(),
            in_rules: false,
            in_api: Some(true),
            ready: Some(false),
            local: None,
            node: Some("node-b".to_string()),
            pod: Some("ns1/web-2".to_string()),
            weight: None,
            rule: None,
        });
        let mut services = anonymous;
        services.push(api);
        let named = name_services(services, &p.virtual_servers);
        let web = named.iter().find(|s| s.service.to_string() == "ns1/web").unwrap();
        assert_eq!(web.endpoints.len(), 3);
        let draining = web
            .endpoints
            .iter()
            .find(|e| e.ip == "10.244.3.12".parse::<IpAddr>().unwrap())
            .unwrap();
        assert!(draining.in_rules);
        assert_eq!(draining.in_api, Some(true));
        assert_eq!(draining.weight, Some(0.0));
        assert_eq!(draining.pod.as_deref(), Some("ns1/web-2"));
        // The ClusterIP frontend once, now with its virtual server as rule; the NodePort VS adds
        // the node address; the external IP VS nobody claimed stays anonymous.
        assert_eq!(
            web.frontends
                .iter()
                .filter(|f| f.port == 80 && f.kind == FrontendKind::ClusterIp)
                .count(),
            1
        );
        assert!(web.frontends[0].rule.is_some());
        assert!(named.iter().any(|s| s.service.name == "TCP 203.0.113.10:80"));
        assert!(!named.iter().any(|s| s.service.name == "TCP 10.96.10.10:80"));
    }

    #[test]
    fn virtual_servers_need_local_addresses() {
        let local = parse_ip_addr_json(include_str!("../../../testdata/rules/ip-addr-ipvs.json")).unwrap();
        assert!(local.contains(&("kube-ipvs0".to_string(), "10.96.0.1".parse().unwrap())));
        assert!(local.contains(&("eth0".to_string(), "192.168.1.10".parse().unwrap())));
        let mut vs = parse(IPVSADM).unwrap().virtual_servers;
        assert!(check_addresses(&mut vs, &local).is_empty());
        let unbound: Vec<String> = vs
            .iter()
            .filter(|v| !v.problems.is_empty())
            .map(VirtualServer::name)
            .collect();
        assert_eq!(
            unbound,
            vec!["TCP 10.96.10.20:80".to_string(), "TCP 10.96.99.99:8080".to_string()]
        );
        let services = join(&vs, &[]);
        let empty = services
            .iter()
            .find(|s| s.service.name == "TCP 10.96.10.20:80")
            .unwrap();
        assert_eq!(empty.rules.problems.len(), 2, "{:?}", empty.rules.problems);
        assert!(empty.rules.problems[1].contains("not bound to kube-ipvs0"));
        // No kube-ipvs0 at all.
        let mut vs = parse(IPVSADM).unwrap().virtual_servers;
        let w = check_addresses(&mut vs, &[("eth0".to_string(), "192.168.1.10".parse().unwrap())]);
        assert_eq!(w.len(), 1);
        assert!(parse_ip_addr_json("not json").is_err());
    }

    #[test]
    fn probe_virtual_server_is_ignored_with_a_note() {
        let p = parse("TCP  198.51.100.0:20000 rr\n").unwrap();
        assert!(join(&p.virtual_servers, &[]).is_empty());
        assert_eq!(notes(&p.virtual_servers).len(), 1);
    }

    #[test]
    fn truncated_input_never_panics() {
        for text in [IPVSADM, PROC] {
            for cut in (0..text.len()).filter(|c| text.is_char_boundary(*c)) {
                if let Ok(p) = parse(&text[..cut]) {
                    let _ = join(&p.virtual_servers, &[]);
                }
            }
        }
    }

    #[test]
    fn bad_input() {
        assert!(parse("").unwrap().virtual_servers.is_empty());
        let err = parse("Can't initialize ipvs: Protocol not available\n").unwrap_err();
        assert!(matches!(err, ParseError::NotIpvs { line: 1, .. }));
        let p = parse("IP Virtual Server version 1.2.1 (size=4096)\n  -> 10.0.0.1:80 Masq 1 0 0\nTCP  10.0.0.9:80 rr\n  -> garbage\n").unwrap();
        assert_eq!(p.warnings.len(), 2, "{:#?}", p.warnings);
        assert!(p.warnings[0].starts_with("ipvsadm line 2:"));
        assert_eq!(p.virtual_servers.len(), 1);
    }
}
