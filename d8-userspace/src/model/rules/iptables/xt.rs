//! x_tables match and target payloads (the `info` blob of an xt extension: `struct xt_tcp`,
//! `struct nf_nat_range2`, ...) turned into the options `iptables-save` prints for them.
//!
//! Both kernel backends carry these blobs: iptables-nft inside nf_tables `match`/`target`
//! expressions (`netlink.rs`), the legacy x_tables ruleset inside each rule entry. The text is
//! the one libxtables' `save` callbacks print (iptables 1.8), so a rule read from the kernel reads
//! exactly as `iptables-save` prints it and the text reader (`table.rs`, `build.rs`) builds the
//! same model from it. Only the extensions and revisions kube-proxy (and kubelet) write are known;
//! any other name, revision or option set is [`Unknown`](crate::model::rules::nftables::expr::Unknown):
//! the caller then reads with `iptables-save`, never a guess.
//!
//! The blobs are in host byte order but for the fields the kernel keeps in network order
//! (addresses, NAT ports), as the structures in `<linux/netfilter/xt_*.h>` say.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::model::rules::nftables::expr::{R, unknown};

/// One `-m NAME ...` of a rule, as iptables-save prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Match {
    /// `-m tcp` / `-m udp` with its ports: iptables-nft writes the ports as native payload
    /// matches and the match itself as an extension, so the two are joined before printing.
    Ports {
        name: &'static str,
        sport: (u16, u16),
        dport: (u16, u16),
        inv_sport: bool,
        inv_dport: bool,
    },
    /// Any other match: its name and its options as printed (with their leading space).
    Text { name: &'static str, options: String },
}

/// Every port: what a `tcp`/`udp` match without `--sport`/`--dport` holds.
pub(super) const ANY_PORT: (u16, u16) = (0, 0xffff);

impl Match {
    /// A `tcp` or `udp` match without ports.
    pub(super) fn ports(name: &'static str) -> Self {
        Match::Ports {
            name,
            sport: ANY_PORT,
            dport: ANY_PORT,
            inv_sport: false,
            inv_dport: false,
        }
    }

    pub(super) fn name(&self) -> &'static str {
        match self {
            Match::Ports { name, .. } | Match::Text { name, .. } => name,
        }
    }

    /// ` -m NAME OPTIONS`.
    pub(super) fn render(&self, out: &mut String) {
        out.push_str(" -m ");
        out.push_str(self.name());
        match self {
            Match::Ports {
                sport,
                dport,
                inv_sport,
                inv_dport,
                ..
            } => {
                for (flag, range, inv) in [("--sport", sport, inv_sport), ("--dport", dport, inv_dport)] {
                    if *range == ANY_PORT {
                        continue;
                    }
                    if *inv {
                        out.push_str(" !");
                    }
                    if range.0 == range.1 {
                        let _ = write!(out, " {flag} {}", range.0);
                    } else {
                        let _ = write!(out, " {flag} {}:{}", range.0, range.1);
                    }
                }
            }
            Match::Text { options, .. } => out.push_str(options),
        }
    }
}

fn ne16(b: &[u8], at: usize) -> R<u16> {
    match b.get(at..at + 2) {
        Some(s) => Ok(u16::from_ne_bytes([s[0], s[1]])),
        None => unknown(format!("extension data of {} bytes: field at {at} missing", b.len())),
    }
}

fn be16(b: &[u8], at: usize) -> R<u16> {
    ne16(b, at).map(u16::from_be)
}

fn ne32(b: &[u8], at: usize) -> R<u32> {
    match b.get(at..at + 4) {
        Some(s) => Ok(u32::from_ne_bytes([s[0], s[1], s[2], s[3]])),
        None => unknown(format!("extension data of {} bytes: field at {at} missing", b.len())),
    }
}

fn byte(b: &[u8], at: usize) -> R<u8> {
    b.get(at).copied().map_or_else(
        || unknown(format!("extension data of {} bytes: field at {at} missing", b.len())),
        Ok,
    )
}

/// A NUL-terminated name of at most `len` bytes at `at`.
pub(super) fn cstr(b: &[u8], at: usize, len: usize) -> R<&str> {
    let Some(field) = b.get(at..at + len) else {
        return unknown(format!("extension data of {} bytes: string at {at} missing", b.len()));
    };
    let end = field.iter().position(|&c| c == 0).unwrap_or(field.len());
    std::str::from_utf8(&field[..end]).map_or_else(|_| unknown("extension string not UTF-8"), Ok)
}

/// An address of the family at `at` (`union nf_inet_addr`: 16 bytes, IPv4 in the first four).
fn addr(b: &[u8], at: usize, v6: bool) -> R<String> {
    let len = if v6 { 16 } else { 4 };
    let Some(a) = b.get(at..at + len) else {
        return unknown(format!("extension data of {} bytes: address at {at} missing", b.len()));
    };
    Ok(if v6 {
        let mut x = [0u8; 16];
        x.copy_from_slice(a);
        Ipv6Addr::from(x).to_string()
    } else {
        Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    })
}

/// libxtables' `xtables_save_string`: bare when made of `[A-Za-z0-9_-]` only, else in double
/// quotes with `"`, `\` and `'` escaped by a backslash.
pub(super) fn save_string(s: &str, out: &mut String) {
    let bare = !s.is_empty() && s.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    out.push(' ');
    if bare {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// A match extension's blob (`name`, revision `rev`) as the match iptables-save prints.
pub(super) fn decode_match(name: &str, rev: u32, info: &[u8], v6: bool) -> R<Match> {
    let text = |name: &'static str, options: String| Ok(Match::Text { name, options });
    match (name, rev) {
        // struct xt_comment_info { char comment[256]; }
        ("comment", 0) => {
            let mut o = String::from(" --comment");
            save_string(comment(info)?, &mut o);
            text("comment", o)
        }
        // struct xt_tcp { __u16 spts[2], dpts[2]; __u8 option, flg_mask, flg_cmp, invflags; }
        // struct xt_udp { __u16 spts[2], dpts[2]; __u8 invflags; }
        ("tcp", 0) | ("udp", 0) => {
            let tcp = name == "tcp";
            let inv = byte(info, if tcp { 11 } else { 8 })?;
            if tcp && (byte(info, 8)? != 0 || byte(info, 9)? != 0 || inv & !0x3 != 0) {
                return unknown("tcp match with --tcp-flags or --tcp-option");
            }
            if !tcp && inv & !0x3 != 0 {
                return unknown(format!("udp match inversion flags {inv:#x}"));
            }
            Ok(Match::Ports {
                name: if tcp { "tcp" } else { "udp" },
                sport: (ne16(info, 0)?, ne16(info, 2)?),
                dport: (ne16(info, 4)?, ne16(info, 6)?),
                inv_sport: inv & 0x1 != 0,
                inv_dport: inv & 0x2 != 0,
            })
        }
        // struct xt_statistic_info { __u16 mode, flags; union { struct { __u32 probability; }
        // random; ... } u; ... }: only the random mode kube-proxy writes.
        ("statistic", 0) => {
            let (mode, flags) = (ne16(info, 0)?, ne16(info, 2)?);
            if mode != 0 || flags & !0x1 != 0 {
                return unknown(format!("statistic match mode {mode} flags {flags:#x}"));
            }
            let p = f64::from(ne32(info, 4)?) / f64::from(0x8000_0000u32);
            let inv = if flags & 0x1 != 0 { " !" } else { "" };
            text("statistic", format!(" --mode random{inv} --probability {p:.11}"))
        }
        // struct xt_mark_mtinfo1 { __u32 mark, mask; __u8 invert; }
        ("mark", 1) => Ok(mark_match(ne32(info, 0)?, ne32(info, 4)?, byte(info, 8)? != 0)),
        // struct xt_addrtype_info_v1 { __u16 source, dest; __u32 flags; }
        ("addrtype", 1) => {
            let (source, dest, flags) = (ne16(info, 0)?, ne16(info, 2)?, ne32(info, 4)?);
            if flags & !0x3 != 0 {
                return unknown(format!("addrtype match flags {flags:#x} (--limit-iface-*)"));
            }
            let mut o = String::new();
            for (types, flag, invert) in [(source, "--src-type", 0x1), (dest, "--dst-type", 0x2)] {
                if types == 0 {
                    continue;
                }
                if flags & invert != 0 {
                    o.push_str(" !");
                }
                let _ = write!(o, " {flag} {}", addr_types(types)?);
            }
            text("addrtype", o)
        }
        // struct xt_conntrack_mtinfo3: eight addresses and masks (128 bytes), expiry, ports;
        // `match_flags` at 146, `invert_flags` at 148, `state_mask` at 150. Only `--ctstate`.
        ("conntrack", 3) => {
            let (flags, inv, states) = (ne16(info, 146)?, ne16(info, 148)?, ne16(info, 150)?);
            if flags != 0x1 || inv & !0x1 != 0 {
                return unknown(format!("conntrack match flags {flags:#x} (only --ctstate is known)"));
            }
            let mut o = String::new();
            if inv & 0x1 != 0 {
                o.push_str(" !");
            }
            let _ = write!(o, " --ctstate {}", ct_states(states)?);
            text("conntrack", o)
        }
        // struct xt_recent_mtinfo_v1 { __u32 seconds, hit_count; __u8 check_set, invert;
        // char name[200]; __u8 side; union nf_inet_addr mask; } (mask at 212).
        ("recent", 1) => {
            let (seconds, hits) = (ne32(info, 0)?, ne32(info, 4)?);
            let (check, invert) = (byte(info, 8)?, byte(info, 9)?);
            if check & !0x3f != 0 {
                return unknown(format!("recent match flags {check:#x}"));
            }
            let mut o = String::new();
            if invert != 0 {
                o.push_str(" !");
            }
            for (bit, flag) in [
                (0x2, " --set"),
                (0x1, " --rcheck"),
                (0x4, " --update"),
                (0x8, " --remove"),
            ] {
                if check & bit != 0 {
                    o.push_str(flag);
                }
            }
            if seconds != 0 {
                let _ = write!(o, " --seconds {seconds}");
            }
            if check & 0x20 != 0 {
                o.push_str(" --reap");
            }
            if hits != 0 {
                let _ = write!(o, " --hitcount {hits}");
            }
            if check & 0x10 != 0 {
                o.push_str(" --rttl");
            }
            let _ = write!(o, " --name {} --mask {}", cstr(info, 10, 200)?, addr(info, 212, v6)?);
            match byte(info, 210)? {
                0 => o.push_str(" --rsource"),
                1 => o.push_str(" --rdest"),
                s => return unknown(format!("recent match side {s}")),
            }
            text("recent", o)
        }
        _ => unknown(format!("match `{name}` revision {rev}")),
    }
}

/// The text of a `comment` match's blob (`struct xt_comment_info { char comment[256]; }`).
pub(super) fn comment(info: &[u8]) -> R<&str> {
    cstr(info, 0, 256)
}

/// `-m mark [!] --mark MARK[/MASK]`, from an extension or iptables-nft's native `meta mark`.
pub(super) fn mark_match(mark: u32, mask: u32, invert: bool) -> Match {
    let mut o = String::new();
    if invert {
        o.push_str(" !");
    }
    if mask == u32::MAX {
        let _ = write!(o, " --mark {mark:#x}");
    } else {
        let _ = write!(o, " --mark {mark:#x}/{mask:#x}");
    }
    Match::Text {
        name: "mark",
        options: o,
    }
}

/// The route types of an addrtype mask, as libxt_addrtype names them.
fn addr_types(mask: u16) -> R<String> {
    const NAMES: [&str; 12] = [
        "UNSPEC",
        "UNICAST",
        "LOCAL",
        "BROADCAST",
        "ANYCAST",
        "MULTICAST",
        "BLACKHOLE",
        "UNREACHABLE",
        "PROHIBIT",
        "THROW",
        "NAT",
        "XRESOLVE",
    ];
    if mask >> NAMES.len() != 0 {
        return unknown(format!("addrtype mask {mask:#x}"));
    }
    let names: Vec<&str> = (0..NAMES.len())
        .filter(|i| mask & (1 << i) != 0)
        .map(|i| NAMES[i])
        .collect();
    Ok(names.join(","))
}

/// Conntrack states in libxt_conntrack's order.
fn ct_states(mask: u16) -> R<String> {
    const STATES: [(u16, &str); 7] = [
        (1 << 0, "INVALID"),
        (1 << 3, "NEW"),
        (1 << 2, "RELATED"),
        (1 << 1, "ESTABLISHED"),
        (1 << 8, "UNTRACKED"),
        (1 << 6, "SNAT"),
        (1 << 7, "DNAT"),
    ];
    let known: u16 = STATES.iter().map(|(b, _)| b).sum();
    if mask == 0 || mask & !known != 0 {
        return unknown(format!("conntrack state mask {mask:#x}"));
    }
    let names: Vec<&str> = STATES.iter().filter(|(b, _)| mask & b != 0).map(|(_, n)| *n).collect();
    Ok(names.join(","))
}

/// `NF_NAT_RANGE_*` flags.
const NAT_MAP_IPS: u32 = 0x1;
const NAT_PROTO_SPECIFIED: u32 = 0x2;
const NAT_PROTO_RANDOM: u32 = 0x4;
const NAT_PROTO_RANDOM_FULLY: u32 = 0x10;

/// A target extension's blob as ` -j NAME OPTIONS`.
pub(super) fn decode_target(name: &str, rev: u32, info: &[u8], v6: bool) -> R<String> {
    match (name, rev) {
        // struct nf_nat_range2 { __u32 flags; union nf_inet_addr min_addr, max_addr;
        // union nf_conntrack_man_proto min_proto, max_proto, base_proto; }: one address and port.
        ("DNAT", 2) => {
            let flags = ne32(info, 0)?;
            if flags & !(NAT_MAP_IPS | NAT_PROTO_SPECIFIED) != 0 || flags & NAT_MAP_IPS == 0 {
                return unknown(format!("DNAT flags {flags:#x}"));
            }
            let (min, max) = (addr(info, 4, v6)?, addr(info, 20, v6)?);
            let (pmin, pmax) = (be16(info, 36)?, be16(info, 38)?);
            if min != max || (flags & NAT_PROTO_SPECIFIED != 0 && pmin != pmax) {
                return unknown("DNAT to a range of addresses or ports");
            }
            Ok(match (flags & NAT_PROTO_SPECIFIED != 0, v6) {
                (true, false) => format!(" -j DNAT --to-destination {min}:{pmin}"),
                (true, true) => format!(" -j DNAT --to-destination [{min}]:{pmin}"),
                (false, _) => format!(" -j DNAT --to-destination {min}"),
            })
        }
        // IPv4: struct nf_nat_ipv4_multi_range_compat { __u32 rangesize; struct nf_nat_ipv4_range
        // { __u32 flags; __be32 min_ip, max_ip; ... } range[1]; }; IPv6: struct nf_nat_range.
        ("MASQUERADE", 0) => {
            let flags = if v6 {
                ne32(info, 0)?
            } else {
                if ne32(info, 0)? != 1 {
                    return unknown("MASQUERADE with more than one range");
                }
                ne32(info, 4)?
            };
            if flags & !(NAT_PROTO_RANDOM | NAT_PROTO_RANDOM_FULLY) != 0 {
                return unknown(format!("MASQUERADE flags {flags:#x} (--to-ports)"));
            }
            let mut o = String::from(" -j MASQUERADE");
            if flags & NAT_PROTO_RANDOM != 0 {
                o.push_str(" --random");
            }
            if flags & NAT_PROTO_RANDOM_FULLY != 0 {
                o.push_str(" --random-fully");
            }
            Ok(o)
        }
        // struct xt_mark_tginfo2 { __u32 mark, mask; }
        ("MARK", 2) => Ok(format!(
            " -j MARK --set-xmark {:#x}/{:#x}",
            ne32(info, 0)?,
            ne32(info, 4)?
        )),
        // struct ipt_reject_info / ip6t_reject_info { __u32 with; }
        ("REJECT", 0) => {
            let with = match (ne32(info, 0)?, v6) {
                (3, false) => "icmp-port-unreachable",
                (7, false) | (6, true) => "tcp-reset",
                (4, true) => "icmp6-port-unreachable",
                (w, _) => return unknown(format!("REJECT with {w}")),
            };
            Ok(format!(" -j REJECT --reject-with {with}"))
        }
        _ => unknown(format!("target `{name}` revision {rev}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Match) -> String {
        let mut s = String::new();
        m.render(&mut s);
        s
    }

    #[test]
    fn strings_are_quoted_as_iptables_save_quotes_them() {
        for (s, want) in [
            ("plain-word_1", " plain-word_1"),
            ("ns1/svc1:p80", " \"ns1/svc1:p80\""),
            ("a \"b\" \\ 'c'", " \"a \\\"b\\\" \\\\ \\'c\\'\""),
            ("", " \"\""),
        ] {
            let mut out = String::new();
            save_string(s, &mut out);
            assert_eq!(out, want, "{s}");
        }
    }

    #[test]
    fn kube_proxy_matches_read_as_iptables_save_prints_them() {
        let mut comment = vec![0u8; 256];
        comment[..20].copy_from_slice(b"default/web cluster ");
        assert_eq!(
            render(&decode_match("comment", 0, &comment, false).unwrap()),
            " -m comment --comment \"default/web cluster \""
        );
        // statistic: probability 1/3 as kube-proxy's 0.3333333333 is stored (lround(2^31 p)).
        let mut stat = vec![0u8; 24];
        stat[4..8].copy_from_slice(&715_827_883u32.to_ne_bytes());
        assert_eq!(
            render(&decode_match("statistic", 0, &stat, false).unwrap()),
            " -m statistic --mode random --probability 0.33333333349"
        );
        let mut mark = vec![0u8; 12];
        mark[0..4].copy_from_slice(&0x4000u32.to_ne_bytes());
        mark[4..8].copy_from_slice(&0x4000u32.to_ne_bytes());
        mark[8] = 1;
        assert_eq!(
            render(&decode_match("mark", 1, &mark, false).unwrap()),
            " -m mark ! --mark 0x4000/0x4000"
        );
        let mut addrtype = vec![0u8; 8];
        addrtype[2..4].copy_from_slice(&4u16.to_ne_bytes());
        assert_eq!(
            render(&decode_match("addrtype", 1, &addrtype, false).unwrap()),
            " -m addrtype --dst-type LOCAL"
        );
        addrtype[0..2].copy_from_slice(&4u16.to_ne_bytes());
        addrtype[2..4].copy_from_slice(&0u16.to_ne_bytes());
        addrtype[4..8].copy_from_slice(&1u32.to_ne_bytes());
        assert_eq!(
            render(&decode_match("addrtype", 1, &addrtype, false).unwrap()),
            " -m addrtype ! --src-type LOCAL"
        );
        let mut ct = vec![0u8; 168];
        ct[146..148].copy_from_slice(&1u16.to_ne_bytes());
        ct[148..150].copy_from_slice(&1u16.to_ne_bytes());
        ct[150..152].copy_from_slice(&(2u16 | 4 | 1 << 7).to_ne_bytes());
        assert_eq!(
            render(&decode_match("conntrack", 3, &ct, false).unwrap()),
            " -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT"
        );
        let mut recent = vec![0u8; 228];
        recent[0..4].copy_from_slice(&10800u32.to_ne_bytes());
        recent[8] = 0x1 | 0x20;
        recent[10..27].copy_from_slice(b"KUBE-SEP-ABCDEFGH");
        recent[212..216].copy_from_slice(&[255; 4]);
        assert_eq!(
            render(&decode_match("recent", 1, &recent, false).unwrap()),
            " -m recent --rcheck --seconds 10800 --reap --name KUBE-SEP-ABCDEFGH --mask 255.255.255.255 --rsource"
        );
        let mut tcp = vec![0u8; 16];
        for (i, v) in [0u16, 0xffff, 443, 443].iter().enumerate() {
            tcp[i * 2..i * 2 + 2].copy_from_slice(&v.to_ne_bytes());
        }
        assert_eq!(
            render(&decode_match("tcp", 0, &tcp, false).unwrap()),
            " -m tcp --dport 443"
        );
        tcp[11] = 0x2;
        assert_eq!(
            render(&decode_match("tcp", 0, &tcp, false).unwrap()),
            " -m tcp ! --dport 443"
        );
    }

    #[test]
    fn kube_proxy_targets_read_as_iptables_save_prints_them() {
        let mut dnat = vec![0u8; 48];
        dnat[0..4].copy_from_slice(&3u32.to_ne_bytes());
        dnat[4..8].copy_from_slice(&[10, 244, 1, 5]);
        dnat[20..24].copy_from_slice(&[10, 244, 1, 5]);
        dnat[36..38].copy_from_slice(&53u16.to_be_bytes());
        dnat[38..40].copy_from_slice(&53u16.to_be_bytes());
        assert_eq!(
            decode_target("DNAT", 2, &dnat, false).unwrap(),
            " -j DNAT --to-destination 10.244.1.5:53"
        );
        let mut masq = vec![0u8; 20];
        masq[0..4].copy_from_slice(&1u32.to_ne_bytes());
        masq[4..8].copy_from_slice(&0x10u32.to_ne_bytes());
        assert_eq!(
            decode_target("MASQUERADE", 0, &masq, false).unwrap(),
            " -j MASQUERADE --random-fully"
        );
        let mut mark = vec![0u8; 8];
        mark[0..4].copy_from_slice(&0x4000u32.to_ne_bytes());
        assert_eq!(
            decode_target("MARK", 2, &mark, false).unwrap(),
            " -j MARK --set-xmark 0x4000/0x0"
        );
        assert_eq!(
            decode_target("REJECT", 0, &3u32.to_ne_bytes(), false).unwrap(),
            " -j REJECT --reject-with icmp-port-unreachable"
        );
    }

    #[test]
    fn what_is_not_known_is_an_error() {
        assert!(decode_match("limit", 0, &[0; 32], false).is_err());
        assert!(decode_match("comment", 1, &[0; 256], false).is_err());
        // A truncated blob.
        assert!(decode_match("conntrack", 3, &[0; 100], false).is_err());
        let mut tcp = vec![0u8; 16];
        tcp[9] = 0x12; // --tcp-flags
        assert!(decode_match("tcp", 0, &tcp, false).is_err());
        // DNAT to a port range.
        let mut dnat = vec![0u8; 48];
        dnat[0..4].copy_from_slice(&3u32.to_ne_bytes());
        dnat[36..38].copy_from_slice(&80u16.to_be_bytes());
        dnat[38..40].copy_from_slice(&90u16.to_be_bytes());
        assert!(decode_target("DNAT", 2, &dnat, false).is_err());
        assert!(decode_target("REJECT", 0, &0u32.to_ne_bytes(), false).is_err());
        assert!(decode_target("SNAT", 2, &dnat, false).is_err());
    }
}
