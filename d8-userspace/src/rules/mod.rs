//! kube-proxy's rules on this node, read into the service model (DESIGN.md section 4).
//!
//! - [`iptables`]: `iptables-save` text (iptables mode; also tells IPVS mode's rules apart).
//! - [`nftables`]: `nft -j list table ip kube-proxy` JSON (nftables mode).
//! - [`names`]: kube-proxy's chain-name hashes.

pub mod iptables;
pub mod names;
pub mod nftables;
