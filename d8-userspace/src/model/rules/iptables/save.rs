//! One rule as `iptables-save` prints it, from the parts iptables keeps apart: the entry's
//! addresses, interfaces and protocol, the matches in order, the target. The kernel readers
//! (`netlink.rs`) fill a [`SaveRule`] and render it, so what the text reader (`table.rs`) reads
//! from the kernel is byte for byte what it reads from `iptables-save`.
//!
//! The order and spelling are iptables 1.8's `save_rule_details`/`save_matches_and_target`:
//! `-s`, `-d`, `-i`, `-o`, `-p`, then `-m NAME OPTIONS` per match, then `-j`/`-g`.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::xt::Match;
use crate::model::rules::nftables::expr::{R, unknown};

/// `-s`/`-d`: an address under a mask (both in network order, 4 or 16 bytes used).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Addr {
    pub(super) addr: [u8; 16],
    pub(super) mask: [u8; 16],
    pub(super) invert: bool,
}

/// `-i`/`-o`: a name (`eth0`, or `veth+` for a prefix) and its negation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Iface {
    pub(super) name: String,
    pub(super) invert: bool,
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// `-j CHAIN` or a verdict (`ACCEPT`, `DROP`, `RETURN`).
    Jump(String),
    /// `-g CHAIN`.
    Goto(String),
    /// An extension, rendered: ` -j NAME OPTIONS`.
    Extension(String),
}

/// One rule of a chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct SaveRule {
    pub(super) v6: bool,
    pub(super) src: Option<Addr>,
    pub(super) dst: Option<Addr>,
    pub(super) in_iface: Option<Iface>,
    pub(super) out_iface: Option<Iface>,
    /// `-p`: the protocol number and its negation.
    pub(super) proto: Option<(u8, bool)>,
    pub(super) matches: Vec<Match>,
    pub(super) target: Option<Target>,
    /// The `-m comment` text (also among `matches`), for telling whose a rule is.
    pub(super) comment: Option<String>,
}

impl SaveRule {
    pub(super) fn new(v6: bool) -> Self {
        Self {
            v6,
            ..Default::default()
        }
    }

    /// Sets `-s`/`-d`/`-p`/`-i`/`-o` once; a second value for the same field is not something
    /// iptables writes.
    pub(super) fn set<T>(slot: &mut Option<T>, value: T, what: &str) -> R<()> {
        if slot.is_some() {
            return unknown(format!("{what} matched twice in one rule"));
        }
        *slot = Some(value);
        Ok(())
    }

    /// The line `-A CHAIN ...` (with its newline) appended to `out`.
    pub(super) fn render(&self, chain: &str, out: &mut String) -> R<()> {
        out.push_str("-A ");
        out.push_str(chain);
        for (flag, a) in [('s', &self.src), ('d', &self.dst)] {
            if let Some(a) = a {
                self.addr(flag, a, out);
            }
        }
        for (flag, i) in [('i', &self.in_iface), ('o', &self.out_iface)] {
            if let Some(i) = i {
                if i.invert {
                    out.push_str(" !");
                }
                let _ = write!(out, " -{flag} {}", i.name);
            }
        }
        if let Some((p, invert)) = self.proto
            && p != 0
        {
            if invert {
                out.push_str(" !");
            }
            // iptables names protocols from /etc/protocols; these three read the same everywhere.
            let name = match p {
                6 => "tcp",
                17 => "udp",
                132 => "sctp",
                _ => return unknown(format!("protocol number {p}")),
            };
            out.push_str(" -p ");
            out.push_str(name);
        }
        for m in &self.matches {
            m.render(out);
        }
        match &self.target {
            Some(Target::Jump(c)) => {
                out.push_str(" -j ");
                out.push_str(c);
            }
            Some(Target::Goto(c)) => {
                out.push_str(" -g ");
                out.push_str(c);
            }
            Some(Target::Extension(t)) => out.push_str(t),
            None => {}
        }
        out.push('\n');
        Ok(())
    }

    /// ` [!] -s ADDR/PREFIX` (or `/MASK` when the mask is not a prefix); nothing for an
    /// all-zero mask, as iptables prints it.
    fn addr(&self, flag: char, a: &Addr, out: &mut String) {
        let len = if self.v6 { 16 } else { 4 };
        let (addr, mask) = (&a.addr[..len], &a.mask[..len]);
        if mask.iter().all(|&b| b == 0) && !a.invert {
            return;
        }
        if a.invert {
            out.push_str(" !");
        }
        let _ = write!(out, " -{flag} {}/", text(addr, self.v6));
        match prefix_len(mask) {
            Some(n) => {
                let _ = write!(out, "{n}");
            }
            None => out.push_str(&text(mask, self.v6)),
        }
    }
}

fn text(b: &[u8], v6: bool) -> String {
    if v6 {
        let mut a = [0u8; 16];
        a.copy_from_slice(&b[..16]);
        Ipv6Addr::from(a).to_string()
    } else {
        Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
    }
}

/// The prefix length of a contiguous mask.
pub(super) fn prefix_len(mask: &[u8]) -> Option<u32> {
    let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
    let contiguous = mask.iter().enumerate().all(|(i, &b)| b == prefix_byte(ones, i));
    contiguous.then_some(ones)
}

/// Byte `i` of the mask of a `bits`-long prefix.
pub(super) fn prefix_byte(bits: u32, i: usize) -> u8 {
    let before = i as u32 * 8;
    match bits.saturating_sub(before) {
        0 => 0,
        n if n >= 8 => 0xff,
        n => 0xffu8 << (8 - n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(a: [u8; 4], prefix: u32, invert: bool) -> Addr {
        let mut x = Addr {
            invert,
            ..Default::default()
        };
        x.addr[..4].copy_from_slice(&a);
        for i in 0..4 {
            x.mask[i] = prefix_byte(prefix, i);
        }
        x
    }

    #[test]
    fn rules_render_in_iptables_save_order() {
        let mut r = SaveRule::new(false);
        r.proto = Some((6, false));
        r.dst = Some(v4([10, 96, 0, 1], 32, false));
        r.src = Some(v4([10, 244, 0, 0], 16, true));
        r.matches.push(Match::Text {
            name: "comment",
            options: " --comment \"default/kubernetes:https cluster IP\"".into(),
        });
        let mut ports = Match::ports("tcp");
        if let Match::Ports { dport, .. } = &mut ports {
            *dport = (443, 443);
        }
        r.matches.push(ports);
        r.target = Some(Target::Jump("KUBE-MARK-MASQ".into()));
        let mut out = String::new();
        r.render("KUBE-SVC-NPX46M4PTMTKRN6Y", &mut out).unwrap();
        assert_eq!(
            out,
            "-A KUBE-SVC-NPX46M4PTMTKRN6Y ! -s 10.244.0.0/16 -d 10.96.0.1/32 -p tcp -m comment --comment \"default/kubernetes:https cluster IP\" -m tcp --dport 443 -j KUBE-MARK-MASQ\n"
        );
    }

    #[test]
    fn masks_print_as_prefixes_when_contiguous() {
        assert_eq!(prefix_len(&[255, 255, 255, 0]), Some(24));
        assert_eq!(prefix_len(&[255, 0, 255, 0]), None);
        assert_eq!(prefix_len(&[0; 4]), Some(0));
        let mut r = SaveRule::new(false);
        let mut a = v4([10, 0, 0, 0], 8, false);
        a.mask[..4].copy_from_slice(&[255, 0, 255, 0]);
        r.src = Some(a);
        r.in_iface = Some(Iface {
            name: "veth+".into(),
            invert: true,
        });
        let mut out = String::new();
        r.render("KUBE-X", &mut out).unwrap();
        assert_eq!(out, "-A KUBE-X -s 10.0.0.0/255.0.255.0 ! -i veth+\n");
        r.proto = Some((47, false));
        assert!(r.render("KUBE-X", &mut String::new()).is_err());
    }
}
