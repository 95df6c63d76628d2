//! kube-proxy's chain-name hashes, so chains map to Services even where the rules carry no
//! comments (clusters with more than 1000 endpoints) and so the lab writes the exact names.
//!
//! `pkg/proxy/iptables/proxier.go`: `servicePortChainName` = `"KUBE-SVC-" + portProtoHash(N, P)`,
//! where the hash is the first 16 characters of base32(sha256(N + P)).

use sha2::{Digest, Sha256};

/// First 16 base32 characters of sha256(`input`), as kube-proxy's `portProtoHash`.
fn hash16(input: &str) -> String {
    let digest = Sha256::digest(input.as_bytes());
    data_encoding::BASE32.encode(&digest)[..16].to_string()
}

/// The hash shared by KUBE-SVC-, KUBE-SVL-, KUBE-EXT- and KUBE-FW- chains of one service port.
///
/// `port_name` is `ns/name:port` (or `ns/name` for an unnamed port), `protocol` lowercase.
pub fn service_hash(port_name: &str, protocol: &str) -> String {
    hash16(&format!("{port_name}{protocol}"))
}

/// The hash of a KUBE-SEP- chain: `endpoint` is `ip:port` (`[v6]:port` for IPv6).
pub fn endpoint_hash(port_name: &str, protocol: &str, endpoint: &str) -> String {
    hash16(&format!("{port_name}{protocol}{endpoint}"))
}

/// `KUBE-SVC-<hash>` and friends.
pub fn service_chain(prefix: &str, port_name: &str, protocol: &str) -> String {
    format!("{prefix}{}", service_hash(port_name, protocol))
}

/// `KUBE-SEP-<hash>`.
pub fn endpoint_chain(port_name: &str, protocol: &str, endpoint: &str) -> String {
    format!("KUBE-SEP-{}", endpoint_hash(port_name, protocol, endpoint))
}

/// The 8-character hash in nftables-mode chain names (`service-<H8>-ns/name/tcp/port`): the first
/// 8 characters of the same base32(sha256) over the chain's readable suffix.
pub fn nft_hash(suffix: &str) -> String {
    hash16(suffix)[..8].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Values verified against real kube-proxy dumps (shared/reference/kube-proxy-rules.md, 1.12).
    #[test]
    fn service_hashes_match_kube_proxy() {
        assert_eq!(service_hash("default/kubernetes:https", "tcp"), "NPX46M4PTMTKRN6Y");
        assert_eq!(service_hash("kube-system/kube-dns:dns", "udp"), "TCOU7JCQXEZGVUNU");
        assert_eq!(service_hash("default/jtest", "tcp"), "FXJ34XFJ55FJZHFP");
    }

    #[test]
    fn endpoint_hashes_match_kube_proxy() {
        assert_eq!(
            endpoint_hash("default/kubernetes:https", "tcp", "192.168.205.145:6443"),
            "UUBFDOGZKSZ6QOBE"
        );
        assert_eq!(
            endpoint_chain("ns1/svc1:p80", "tcp", "10.180.0.1:80"),
            "KUBE-SEP-SXIVWICOYRO3J4NJ"
        );
    }
}
