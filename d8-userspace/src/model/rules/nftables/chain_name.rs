//! kube-proxy's nftables chain-name grammar, `<prefix><H8>-<ns>/<svc>/<proto>/<port>[__<ip>/<port>]`
//! (reference §3.3), and the check of its H8 hash.
//!
//! In nftables mode a chain's name is what ties it to a Service port: `service-`, `local-`,
//! `external-`, `firewall-` and `endpoint-` chains carry no comments. The grammar is its own file
//! because it is the one part of the reader with a public API of its own ([`parse_chain_name`],
//! re-exported by `nftables`) and because the builder's hot path needs it without allocating
//! ([`CName`] borrows from the name; a 10,000-Service table has 60,000 chains).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::model::Protocol;
use crate::model::rules::names;

/// A parsed `<prefix><H8>-<ns>/<svc>/<proto>/<port>[__<ip>/<port>]` chain or set name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainName {
    /// `service`, `local`, `external`, `endpoint`, `firewall` or `affinity`.
    pub prefix: String,
    pub hash: String,
    pub namespace: String,
    pub service: String,
    pub protocol: Protocol,
    /// Empty for an unnamed port.
    pub port_name: String,
    /// For `endpoint-`/`affinity-` names: the endpoint.
    pub endpoint: Option<(IpAddr, u16)>,
    /// The recomputed H8 hash matches (`false` also when the name was truncated with `...`).
    pub hash_ok: bool,
}

impl ChainName {
    /// `ns/svc:port` (or `ns/svc` for an unnamed port), as iptables comments and the model write it.
    pub fn port_key(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.service)
        } else {
            format!("{}/{}:{}", self.namespace, self.service, self.port_name)
        }
    }
}

/// Parses kube-proxy's nftables service/endpoint chain grammar (§3.3) and verifies the H8 hash;
/// `None` for other names.
pub fn parse_chain_name(name: &str) -> Option<ChainName> {
    let cn = CName::parse(name)?;
    let hash_ok = cn.hash_ok(name);
    Some(ChainName {
        prefix: cn.prefix.to_string(),
        hash: cn.hash.to_string(),
        namespace: cn.namespace.to_string(),
        service: cn.service.to_string(),
        protocol: cn.protocol,
        port_name: cn.port_name.to_string(),
        endpoint: cn.endpoint(),
        hash_ok,
    })
}

/// [`ChainName`] borrowing from the name, without the hash check: for the hot paths (a
/// 10,000-Service table has 60,000 chains).
#[derive(Debug, Clone, Copy)]
pub(super) struct CName<'n> {
    pub(super) prefix: &'n str,
    pub(super) hash: &'n str,
    pub(super) namespace: &'n str,
    pub(super) service: &'n str,
    pub(super) protocol: Protocol,
    pub(super) port_name: &'n str,
    /// `<ip>/<port>` after `__`.
    pub(super) endpoint: Option<&'n str>,
}

impl<'n> CName<'n> {
    pub(super) fn parse(name: &'n str) -> Option<Self> {
        let (prefix, rest) = name.split_once('-')?;
        if !["service", "local", "external", "endpoint", "firewall", "affinity"].contains(&prefix) {
            return None;
        }
        let (hash, body) = rest.split_once('-')?;
        if hash.len() != 8 {
            return None;
        }
        let (svc_part, endpoint) = match body.split_once("__") {
            Some((s, e)) => (s, Some(e)),
            None => (body, None),
        };
        let mut parts = svc_part.splitn(4, '/');
        let namespace = parts.next()?;
        let service = parts.next()?;
        let protocol = Protocol::parse(parts.next()?)?;
        let port_name = parts.next()?;
        Some(CName {
            prefix,
            hash,
            namespace,
            service,
            protocol,
            port_name,
            endpoint,
        })
    }

    /// The recomputed H8 hash of `name` (the name this was parsed from) matches.
    pub(super) fn hash_ok(&self, name: &str) -> bool {
        let body = &name[self.prefix.len() + 1 + self.hash.len() + 1..];
        !body.ends_with("...") && names::nft_hash_is(body, self.hash)
    }

    pub(super) fn endpoint(&self) -> Option<(IpAddr, u16)> {
        let (ip, port) = self.endpoint?.rsplit_once('/')?;
        let ip: IpAddr = ip
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .or_else(|_| ip.replace('.', ":").parse::<Ipv6Addr>().map(IpAddr::V6))
            .ok()?;
        Some((ip, port.parse().ok()?))
    }

    /// [`ChainName::port_key`].
    pub(super) fn port_key(&self) -> String {
        let mut k = String::with_capacity(self.namespace.len() + self.service.len() + self.port_name.len() + 2);
        k.push_str(self.namespace);
        k.push('/');
        k.push_str(self.service);
        if !self.port_name.is_empty() {
            k.push(':');
            k.push_str(self.port_name);
        }
        k
    }
}
