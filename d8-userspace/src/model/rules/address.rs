//! Addresses in kube-proxy's rules that kube-proxy never writes, refused the same way by every
//! reader (iptables, nftables, IPVS): a zone-scoped address (`fe80::1%eth0`: Kubernetes addresses
//! carry no zone) and an IPv4-mapped IPv6 address (`::ffff:10.0.0.1`: kube-proxy writes IPv4
//! addresses in IPv4 rules only). Such an address enters no model; the reader's warning or
//! problem names it with [`odd_address`]'s reason.

use std::net::IpAddr;

/// `::ffff:a.b.c.d`.
pub(super) fn is_ipv4_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// `s` as an address kube-proxy writes: `None` for text that is no address, a zone-scoped one
/// (which does not parse) or an IPv4-mapped one.
pub(super) fn rule_ip(s: &str) -> Option<IpAddr> {
    s.parse().ok().filter(|ip| !is_ipv4_mapped(*ip))
}

/// Why `s` (an address, maybe with `/len`, `:port` or in `[...]`) is not one kube-proxy writes,
/// if that is the trouble: zone-scoped or IPv4-mapped. For warnings.
pub(super) fn odd_address(s: &str) -> Option<&'static str> {
    if s.contains('%') {
        return Some("a zone-scoped address, which kube-proxy never writes");
    }
    let bare = s.split('/').next().unwrap_or(s);
    let bare = bare
        .strip_prefix('[')
        .and_then(|b| b.split_once(']'))
        .map_or(bare, |(ip, _)| ip);
    bare.parse::<IpAddr>()
        .is_ok_and(is_ipv4_mapped)
        .then_some("an IPv4-mapped IPv6 address, which kube-proxy never writes (IPv4 addresses go in IPv4 rules)")
}

/// The first odd address in `text` (a rule's, element's or line's text, split at spaces, commas,
/// braces and quotes) with [`odd_address`]'s reason: `(address, reason)`.
fn first_odd(text: &str) -> Option<(&str, &'static str)> {
    text.split(|c: char| c.is_whitespace() || matches!(c, ',' | '{' | '}' | '"'))
        .find_map(|w| odd_address(w).map(|why| (w, why)))
}

/// ` (ADDR is REASON)` for the first address in `text` kube-proxy never writes, else empty: the
/// reason a rule, element or line was not read, for the reader's warning or problem.
pub(super) fn odd_suffix(text: &str) -> String {
    first_odd(text)
        .map(|(addr, why)| format!(" ({addr} is {why})"))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_scoped_and_ipv4_mapped_addresses_are_named() {
        assert_eq!(rule_ip("fd00::1"), Some("fd00::1".parse().unwrap()));
        assert_eq!(rule_ip("10.0.0.1"), Some("10.0.0.1".parse().unwrap()));
        assert_eq!(rule_ip("::ffff:10.0.0.1"), None);
        assert_eq!(rule_ip("fe80::1%eth0"), None);
        assert!(odd_address("[fe80::1%eth0]:80").is_some_and(|w| w.contains("zone-scoped")));
        assert!(odd_address("::ffff:10.0.0.1/128").is_some_and(|w| w.contains("IPv4-mapped")));
        assert_eq!(odd_address("fd00::1"), None);
        assert_eq!(
            first_odd("dnat ip6 to [::ffff:10.0.0.1]:8080"),
            Some((
                "[::ffff:10.0.0.1]:8080",
                "an IPv4-mapped IPv6 address, which kube-proxy never writes (IPv4 addresses go in IPv4 rules)"
            ))
        );
        assert_eq!(first_odd("dnat ip6 to [fd00::1]:8080"), None);
        assert_eq!(odd_suffix("TCP  [fd00::1]:80 rr"), "");
        assert!(odd_suffix("TCP  [fe80::1%eth0]:80 rr").starts_with(" ([fe80::1%eth0]:80 is a zone-scoped"));
    }
}
