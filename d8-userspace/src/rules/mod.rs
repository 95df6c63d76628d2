//! kube-proxy's rules on this node, read into the service model (DESIGN.md section 4).
//!
//! - [`iptables`]: `iptables-save` text (iptables mode; also tells IPVS mode's rules apart).
//! - [`nftables`]: `nft -j list table ip kube-proxy` JSON (nftables mode).
//! - [`ipvs`]: `ipvsadm -Ln` and `/proc/net/ip_vs` text (IPVS mode), joined to Services by address.
//! - [`names`]: kube-proxy's chain-name hashes.

pub mod iptables;
pub mod ipvs;
pub mod names;
pub mod nftables;
