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

/// The first 16 base32 characters of sha256 over `parts` concatenated, without allocating: the
/// readers check one hash per chain (~60,000 of them for 10,000 Services).
fn hash16_parts(parts: &[&str]) -> [u8; 16] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
    }
    let digest = h.finalize();
    let mut enc = [0u8; 56];
    data_encoding::BASE32.encode_mut(&digest, &mut enc);
    let mut out = [0u8; 16];
    out.copy_from_slice(&enc[..16]);
    out
}

/// `hash == service_hash(port_name, protocol)`, without allocating.
pub(crate) fn service_hash_is(port_name: &str, protocol: &str, hash: &str) -> bool {
    hash.len() == 16 && hash.as_bytes() == hash16_parts(&[port_name, protocol])
}

/// `chain == endpoint_chain(port_name, protocol, endpoint)`, without allocating.
pub(crate) fn endpoint_chain_is(port_name: &str, protocol: &str, endpoint: &str, chain: &str) -> bool {
    chain
        .strip_prefix("KUBE-SEP-")
        .is_some_and(|h| h.len() == 16 && h.as_bytes() == hash16_parts(&[port_name, protocol, endpoint]))
}

/// `hash == nft_hash(suffix)`, without allocating.
pub(crate) fn nft_hash_is(suffix: &str, hash: &str) -> bool {
    hash.len() == 8 && hash.as_bytes() == &hash16_parts(&[suffix])[..8]
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

    // Values verified against real kube-proxy dumps (chain names from `servicePortChainName` and
    // `servicePortEndpointChainName` in kube-proxy's `pkg/proxy/iptables/proxier.go`).
    #[test]
    fn service_hashes_match_kube_proxy() {
        assert_eq!(service_hash("default/kubernetes:https", "tcp"), "NPX46M4PTMTKRN6Y");
        assert_eq!(service_hash("kube-system/kube-dns:dns", "udp"), "TCOU7JCQXEZGVUNU");
        assert_eq!(service_hash("default/jtest", "tcp"), "FXJ34XFJ55FJZHFP");
    }

    #[test]
    fn allocation_free_checks_agree() {
        for (n, p) in [("default/kubernetes:https", "tcp"), ("ns/x", "udp"), ("", "")] {
            let h = service_hash(n, p);
            assert!(service_hash_is(n, p, &h));
            assert!(!service_hash_is(n, p, &h[..15]));
            assert!(!service_hash_is(n, "sctp", &h));
            let c = endpoint_chain(n, p, "10.0.0.1:80");
            assert!(endpoint_chain_is(n, p, "10.0.0.1:80", &c));
            assert!(!endpoint_chain_is(n, p, "10.0.0.1:81", &c));
            assert!(!endpoint_chain_is(n, p, "10.0.0.1:80", &c[1..]));
            assert!(!endpoint_chain_is(n, p, "10.0.0.1:80", &format!("{c}X")));
            assert!(nft_hash_is(n, &nft_hash(n)));
            assert!(!nft_hash_is(n, &nft_hash(p)) || n == p);
            assert!(!nft_hash_is(n, &h[..9]));
        }
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
