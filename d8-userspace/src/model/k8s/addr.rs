//! Addresses as the API writes them (`clusterIPs`, `externalIPs`, load-balancer ingress, an
//! EndpointSlice's `addresses`), checked before they enter the model. The API server itself
//! refuses most of what is refused here, so each points at a hand-written or corrupted snapshot;
//! a refused address is left out with a warning that says which object holds it and why, never a
//! crash and never a guess.

use std::net::IpAddr;

use crate::model::IpFamily;

/// `text` as an address of `expected` family (`None`: either), or why it is not one.
pub(crate) fn api_ip(text: &str, expected: Option<IpFamily>) -> Result<IpAddr, String> {
    if let Some((ip, zone)) = text.split_once('%') {
        return Err(format!(
            "{text:?} is a zone-scoped address (zone {zone:?}): Kubernetes addresses carry no zone, and a \
             link-local one like {ip} is not routable across nodes; it was left out"
        ));
    }
    let ip: IpAddr = text
        .parse()
        .map_err(|_| format!("{text:?} is not an IP address; it was left out"))?;
    if let IpAddr::V6(v6) = ip
        && let Some(v4) = v6.to_ipv4_mapped()
    {
        return Err(format!(
            "{text:?} is an IPv4-mapped IPv6 address, which the API refuses and kube-proxy never \
             programs: write it as {v4}; it was left out"
        ));
    }
    match expected {
        Some(family) if IpFamily::of(ip) != family => Err(format!(
            "{text:?} is an {} address where an {family} one belongs; it was left out",
            IpFamily::of(ip)
        )),
        _ => Ok(ip),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn good_addresses_of_both_families_pass() {
        assert_eq!(api_ip("10.0.0.1", Some(IpFamily::V4)), Ok("10.0.0.1".parse().unwrap()));
        assert_eq!(api_ip("fd00::1", Some(IpFamily::V6)), Ok("fd00::1".parse().unwrap()));
        assert_eq!(api_ip("fd00::1", None), Ok("fd00::1".parse().unwrap()));
    }

    #[test]
    fn bad_addresses_say_what_is_wrong() {
        let e = api_ip("fd00::1", Some(IpFamily::V4)).unwrap_err();
        assert!(e.contains("is an IPv6 address where an IPv4 one belongs"), "{e}");
        let e = api_ip("10.0.0.1", Some(IpFamily::V6)).unwrap_err();
        assert!(e.contains("is an IPv4 address where an IPv6 one belongs"), "{e}");
        let e = api_ip("fe80::1%eth0", None).unwrap_err();
        assert!(e.contains("zone-scoped") && e.contains("\"eth0\""), "{e}");
        let e = api_ip("::ffff:10.0.0.1", None).unwrap_err();
        assert!(e.contains("IPv4-mapped") && e.contains("write it as 10.0.0.1"), "{e}");
        let e = api_ip("10.0.0.300", None).unwrap_err();
        assert!(e.contains("not an IP address"), "{e}");
    }
}
