//! This host as the kernel shows it from the current network namespace: its own addresses and
//! the conntrack table's counters. Read by the caller of the classifier, which never reads `/proc`.

use std::net::IpAddr;

/// Conntrack counters of the node, read by the caller (`/proc/sys/net/netfilter/nf_conntrack_count`,
/// `nf_conntrack_max`, and the `drop` column of `/proc/net/stat/nf_conntrack` summed over CPUs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConntrackStats {
    /// Entries in the table at the end of the trace.
    pub count: Option<u64>,
    /// `nf_conntrack_max`.
    pub max: Option<u64>,
    /// How much the `drop` counter (new entries refused because the table was full) rose during the
    /// trace; for `explain`, since the previous reading if there is one.
    pub drop_delta: Option<u64>,
}

impl ConntrackStats {
    /// `count / max`, when both are known and `max` is not zero.
    pub fn fill_ratio(&self) -> Option<f64> {
        match (self.count, self.max) {
            (Some(c), Some(m)) if m > 0 => Some(c as f64 / m as f64),
            _ => None,
        }
    }
}

/// Addresses configured on this network namespace's interfaces, loopback excluded.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: ifa_addr points at a sockaddr whose family says how to read it.
            let family = unsafe { (*ifa.ifa_addr).sa_family } as i32;
            if family == libc::AF_INET {
                // SAFETY: AF_INET addresses are sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() {
                    out.push(IpAddr::V4(ip));
                }
            } else if family == libc::AF_INET6 {
                // SAFETY: AF_INET6 addresses are sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
                if !ip.is_loopback() && (ip.segments()[0] & 0xffc0) != 0xfe80 {
                    out.push(IpAddr::V6(ip));
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: the list came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(ifap) };
    out.sort();
    out.dedup();
    out
}

fn read_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Sum of the `drop` column of `/proc/net/stat/nf_conntrack` (hex, one row per CPU).
pub fn conntrack_drop_counter() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack").ok()?;
    parse_conntrack_drops(&text)
}

fn parse_conntrack_drops(text: &str) -> Option<u64> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = header.iter().position(|h| *h == "drop")?;
    Some(
        lines
            .filter_map(|l| l.split_whitespace().nth(col))
            .filter_map(|v| u64::from_str_radix(v, 16).ok())
            .sum(),
    )
}

/// Conntrack table fill of this network namespace; `drop_delta` from a `before` reading.
pub fn conntrack_stats(drops_before: Option<u64>) -> ConntrackStats {
    let drops_now = conntrack_drop_counter();
    ConntrackStats {
        count: read_u64("/proc/sys/net/netfilter/nf_conntrack_count"),
        max: read_u64("/proc/sys/net/netfilter/nf_conntrack_max"),
        drop_delta: match (drops_before, drops_now) {
            (Some(b), Some(n)) => Some(n.saturating_sub(b)),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_conntrack_drops_over_cpus() {
        let text = "entries  clashres  found new invalid ignore delete chainlength insert insert_failed drop early_drop error\n\
00000003  00000000  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000005 00000000 00000000\n\
00000003  00000000  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 0000000a 00000000 00000000\n";
        assert_eq!(parse_conntrack_drops(text), Some(15));
        assert_eq!(parse_conntrack_drops("garbage"), None);
    }

    #[test]
    fn host_addresses_exclude_loopback() {
        assert!(host_addresses().iter().all(|ip| !ip.is_loopback()));
    }
}

/// The inode of the host's (initial) PID namespace: the kernel's `PROC_PID_INIT_INO`, the same on
/// every kernel.
const INITIAL_PID_NAMESPACE: u64 = 0xEFFF_FFFC;

/// This process runs in the host's PID namespace, where `/proc` lists the node's processes (a pod
/// without `hostPID` does not); `None` when `/proc/self/ns/pid` cannot be read.
pub fn in_host_pid_namespace() -> Option<bool> {
    pid_namespace_is_initial(&std::fs::read_link("/proc/self/ns/pid").ok()?.to_string_lossy())
}

/// `pid:[4026531836]` is the initial namespace.
fn pid_namespace_is_initial(link: &str) -> Option<bool> {
    let inode: u64 = link.strip_prefix("pid:[")?.strip_suffix(']')?.parse().ok()?;
    Some(inode == INITIAL_PID_NAMESPACE)
}

#[cfg(test)]
mod pid_namespace_tests {
    use super::*;

    #[test]
    fn tells_the_initial_pid_namespace_from_a_container_s() {
        assert_eq!(pid_namespace_is_initial("pid:[4026531836]"), Some(true));
        assert_eq!(pid_namespace_is_initial("pid:[4026532712]"), Some(false));
        assert_eq!(pid_namespace_is_initial("mnt:[x]"), None);
    }
}
