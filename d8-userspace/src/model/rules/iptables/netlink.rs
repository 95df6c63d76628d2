//! The kernel reader for iptables mode on iptables-nft (the `iptables` of current
//! distributions): kube-proxy's chains live in the nf_tables tables `ip filter` and `ip nat`
//! (`ip6 …` for IPv6), read over netlink (`kernel::nftables`, the nftables reader's socket) and
//! rendered as the `iptables-save` text of those chains, which the text reader's stages
//! (`table.rs` → `build.rs`) turn into the model: one builder, so the model cannot differ by
//! source.
//!
//! iptables-nft writes a rule as nf_tables expressions: the entry's `-s`/`-d`/`-p`/`-i`/`-o` and
//! the ports of `-m tcp`/`-m udp` and `-m mark` as native loads and compares (`payload`, `meta`,
//! `bitwise`, `cmp`), every other match and target as an x_tables extension carried whole
//! (`match`/`target` with name, revision and blob, decoded by `xt.rs`), the verdict or jump as an
//! `immediate`, plus a `counter`. This file turns them back into a [`SaveRule`] as iptables-nft's
//! own rule parser does (nft-ruleparse.c) and `save.rs` prints it. Anything else (an
//! expression, an attribute, a load, an extension it does not know) is
//! [`Error::Unknown`]: the caller then runs `iptables-save` and says why. A guess would be a
//! wrong model.
//!
//! Only what the model reads is decoded: the rules of `KUBE-*` chains and the rules of other
//! chains that jump into them (`-A PREROUTING … -j KUBE-SERVICES`, which the builder checks);
//! other rules are skipped undecoded. Rules are dumped chain by chain, as iptables-nft does: a
//! dump of a whole table costs the kernel a walk from the table's first rule for every 32 KiB it
//! sends, quadratic in the rules (21 s at 10,000 Services), while a chain's dump is a hash
//! lookup and its rules. The read is checked against the ruleset's
//! generation, as the nftables reader's is, and done again when it moved meanwhile.

use super::chains::{ChainInfo, ReadRule, Rendered, TABLES, Table, read_rules, render};
use super::save::{Addr, Iface, SaveRule, Target, prefix_byte};
use super::xt::{self, Match};
use super::{ParseError, Parsed};
use crate::kernel::netlink::attrs;
use crate::kernel::nftables::{self as nl, FAMILY_IP6, Kind, Reader};
use crate::model::ServiceRef;
use crate::model::rules::nftables::expr::{Attrs, R, Unknown, bits, expressions, unknown};
use crate::model::rules::nftables::netlink::{Error, Step, dump, generation};

/// Reads kube-proxy's iptables chains of `family` ([`nl::FAMILY_IP`] or [`FAMILY_IP6`]) from
/// nf_tables; warnings name `source_name` and each rule's handle. No nf_tables in the kernel, or
/// neither table: a [`Parsed`] without rules.
///
/// `only`: read as if kube-proxy's chains held this Service alone (`explain`, a trace): its
/// rules in kube-proxy's shared chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`, ...), which every
/// Service's first rules are in, then its own chains (`KUBE-SVC-`, `-SVL-`, `-EXT-`, `-FW-` of
/// its ports, found by the shared rules that name it) and their `KUBE-SEP-` chains: a few
/// thousand rules instead of 170,000 at 10,000 Services.
pub fn read(family: u8, source_name: &str, only: Option<&ServiceRef>) -> Result<Parsed, Error> {
    match read_consistent(family, only) {
        Ok(r) => parse(&r, source_name),
        Err(e) if e.no_nf_tables() => Ok(Parsed::default()),
        Err(e) => Err(e),
    }
}

/// The text reader's model of a rendering.
fn parse(r: &Rendered, source_name: &str) -> Result<Parsed, Error> {
    super::parse_rendered(&r.text, source_name, &r.handles, "rule handle")
        .map_err(|e: ParseError| Error::Unknown(e.to_string()))
}

pub(super) fn read_consistent(family: u8, only: Option<&ServiceRef>) -> Result<Rendered, Error> {
    let mut reader = Reader::open().map_err(Error::Io)?;
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let before = generation(&mut reader)?;
        let mut tables = Vec::new();
        let mut changed = false;
        for name in TABLES {
            match read_table(&mut reader, family, name, only) {
                Ok(Some(t)) => tables.push(t),
                Ok(None) => {}
                Err(Step::Changed) => {
                    changed = true;
                    break;
                }
                Err(Step::Failed(e)) => return Err(e),
            }
        }
        if changed || generation(&mut reader)? != before {
            continue;
        }
        return render(tables).map_err(Error::from);
    }
    Err(Error::Unstable(ATTEMPTS))
}

/// `table`'s chains and kube-proxy's rules in it (see [`read`] for `only`); `None` when the table
/// does not exist.
fn read_table(
    r: &mut Reader,
    family: u8,
    name: &'static str,
    only: Option<&ServiceRef>,
) -> Result<Option<Table>, Step> {
    match dump(r, family, Kind::Table, name, None, |_| Ok(())) {
        Err(Step::Failed(Error::Io(e))) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
        other => other?,
    }
    let mut t = Table {
        name,
        ..Default::default()
    };
    dump(r, family, Kind::Chain, name, None, |o| {
        // NFTA_CHAIN_TABLE, NAME, HOOK (nest: HOOKNUM, ...).
        let a = Attrs::parse(o.attrs, u32::MAX >> 8, "chain")?;
        if a.str(1)? != Some(name) {
            return Ok(());
        }
        if let Some(c) = chain(&a)? {
            t.chains.push(c);
        }
        Ok(())
    })?;
    let v6 = family == FAMILY_IP6;
    read_rules(&mut t, only, |chain, out| read_chain(r, family, name, chain, v6, out))?;
    Ok(Some(t))
}

/// One chain's rules (a dump of its own) appended to `out`.
fn read_chain(
    r: &mut Reader,
    family: u8,
    table: &str,
    chain: &str,
    v6: bool,
    out: &mut Vec<ReadRule>,
) -> Result<(), Step> {
    let listed = dump(r, family, Kind::Rule, table, Some(chain), |o| {
        if let Some(x) = rule(o.attrs, table, v6)? {
            out.push(x);
        }
        Ok(())
    });
    match listed {
        // The chain went away since the chains were listed: the table changed.
        Err(Step::Failed(Error::Io(e))) if e.raw_os_error() == Some(libc::ENOENT) => Err(Step::Changed),
        other => other,
    }
}

/// A chain's name and, for a base chain, its hook number and policy (`NFTA_CHAIN_NAME`, `HOOK`
/// (nest: `HOOKNUM`, ...), `POLICY`).
fn chain(a: &Attrs<'_>) -> R<Option<ChainInfo>> {
    let Some(name) = a.str(3)? else { return Ok(None) };
    let hook = match a.get(4) {
        Some(h) => {
            let num = Attrs::parse(h, u32::MAX >> 8, "chain hook")?.need_u32(1, "chain hook")?;
            let policy = match a.u32(5)?.map(|p| p as i32) {
                Some(NF_DROP) => "DROP",
                Some(NF_ACCEPT) | None => "ACCEPT",
                Some(p) => return unknown(format!("chain `{name}`: policy {p}")),
            };
            Some((num, policy))
        }
        None => None,
    };
    Ok(Some((name.to_string(), hook)))
}

/// One rule message: its chain, handle and `-A` line, or `None` when the rule is outside what
/// the model reads (a chain not kube-proxy's, not jumping into kube-proxy's).
fn rule(attrs_buf: &[u8], table: &str, v6: bool) -> Result<Option<ReadRule>, Error> {
    // TABLE, CHAIN, HANDLE, EXPRESSIONS, POSITION, USERDATA, and the padding attribute.
    let a = Attrs::parse(attrs_buf, bits(&[1, 2, 3, 4, 6, 7, 8]), "rule")?;
    if a.str(1)? != Some(table) {
        return Ok(None);
    }
    let Some(chain) = a.str(2)? else { return Ok(None) };
    let exprs = a.get(4).unwrap_or_default();
    if !chain.starts_with("KUBE-") && !jumps_to_kube(exprs) {
        return Ok(None);
    }
    let at = |u: Unknown| Error::Unknown(format!("table {table} chain {chain}: {}", u.0));
    if let Some(udata) = a.get(7) {
        userdata(udata).map_err(at)?;
    }
    let decoded = decode(exprs, v6).map_err(at)?;
    let mut line = String::with_capacity(160);
    decoded.render(chain, &mut line).map_err(at)?;
    let target = match decoded.target {
        Some(Target::Jump(c) | Target::Goto(c)) => Some(c),
        _ => None,
    };
    Ok(Some(ReadRule {
        chain: chain.to_string(),
        handle: a.u64(3)?.unwrap_or(0),
        line,
        comment: decoded.comment,
        target,
    }))
}

/// Whether a rule's verdict jumps or goes to a `KUBE-` chain, without decoding the rest.
fn jumps_to_kube(exprs: &[u8]) -> bool {
    attrs(exprs).into_iter().any(|(_, e)| {
        let parts = attrs(e);
        let name = parts.iter().find(|(k, _)| *k == 1).map(|(_, v)| *v);
        if name != Some(b"immediate\0") {
            return false;
        }
        let chain = parts
            .iter()
            .find(|(k, _)| *k == 2)
            .and_then(|(_, d)| nested(d, 2))
            .and_then(|data| nested(data, 2))
            .and_then(|verdict| nested(verdict, 2));
        chain.is_some_and(|c| c.starts_with(b"KUBE-"))
    })
}

fn nested(buf: &[u8], kind: u16) -> Option<&[u8]> {
    attrs(buf).into_iter().find(|(k, _)| *k == kind).map(|(_, v)| v)
}

/// Rule userdata: iptables-nft writes none that iptables-save prints; an nft comment (TLV type
/// 0) on a kube-proxy rule is not something iptables-save would show, so it is not guessed at.
/// Other TLVs (newer iptables keep a copy of the rule's extensions there) repeat the
/// expressions and are skipped.
fn userdata(udata: &[u8]) -> R<()> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (t, l) = (rest[0], rest[1] as usize);
        if rest.len() < 2 + l {
            return unknown("rule userdata truncated");
        }
        if t == 0 {
            return unknown("an nft comment in the rule's userdata");
        }
        rest = &rest[2 + l..];
    }
    Ok(())
}

// nf_tables expression attributes and values (`<linux/netfilter/nf_tables.h>`).
const META_MARK: u32 = 3;
const META_IIFNAME: u32 = 6;
const META_OIFNAME: u32 = 7;
const META_L4PROTO: u32 = 16;
const BASE_NETWORK: u32 = 1;
const BASE_TRANSPORT: u32 = 2;
const CMP_EQ: u32 = 0;
const CMP_NEQ: u32 = 1;
const NF_DROP: i32 = 0;
const NF_ACCEPT: i32 = 1;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NFT_RETURN: i32 = -5;

/// What a register holds.
#[derive(Debug, Clone, PartialEq)]
enum Load {
    Meta(u32),
    Payload { base: u32, offset: u32, len: u32 },
}

/// A register: what was loaded, and the mask a `bitwise` applied.
#[derive(Debug, Clone)]
struct Reg {
    load: Load,
    mask: Option<Vec<u8>>,
}

/// The expressions of one rule (`NFTA_RULE_EXPRESSIONS`) as the rule iptables-save prints.
pub(super) fn decode(list: &[u8], v6: bool) -> R<SaveRule> {
    let mut rule = SaveRule::new(v6);
    let mut regs: Vec<(u32, Reg)> = Vec::new();
    for (name, data) in expressions(list)? {
        match name {
            "meta" => {
                // DREG, KEY (a SREG would be `meta set`).
                let m = Attrs::parse(data, bits(&[1, 2]), "meta")?;
                let key = m.need_u32(2, "meta")?;
                if !matches!(key, META_MARK | META_IIFNAME | META_OIFNAME | META_L4PROTO) {
                    return unknown(format!("meta key {key}"));
                }
                set_reg(&mut regs, m.need_u32(1, "meta")?, Load::Meta(key));
            }
            "payload" => {
                // DREG, BASE, OFFSET, LEN (a SREG would be a payload write).
                let p = Attrs::parse(data, bits(&[1, 2, 3, 4]), "payload")?;
                let load = Load::Payload {
                    base: p.need_u32(2, "payload")?,
                    offset: p.need_u32(3, "payload")?,
                    len: p.need_u32(4, "payload")?,
                };
                set_reg(&mut regs, p.need_u32(1, "payload")?, load);
            }
            "bitwise" => bitwise(&mut regs, data)?,
            "cmp" => cmp(&mut rule, &regs, data)?,
            "immediate" => {
                let i = Attrs::parse(data, bits(&[1, 2]), "immediate")?;
                if i.need_u32(1, "immediate")? != 0 {
                    return unknown("immediate into a data register");
                }
                let target = verdict(i.get(2).unwrap_or_default())?;
                SaveRule::set(&mut rule.target, target, "the verdict")?;
            }
            // BYTES, PACKETS, PAD: iptables-save prints counters only with -c.
            "counter" => {
                Attrs::parse(data, bits(&[1, 2, 3]), "counter")?;
            }
            "match" | "target" => {
                // NAME, REV, INFO.
                let x = Attrs::parse(data, bits(&[1, 2, 3]), name)?;
                let ext = x.str(1)?.unwrap_or_default();
                let rev = x.need_u32(2, name)?;
                let info = x.get(3).unwrap_or_default();
                if name == "match" {
                    if ext == "comment" {
                        rule.comment = Some(xt::comment(info)?.to_string());
                    }
                    rule.matches.push(xt::decode_match(ext, rev, info, v6)?);
                } else {
                    let t = Target::Extension(xt::decode_target(ext, rev, info, v6)?);
                    SaveRule::set(&mut rule.target, t, "the target")?;
                }
            }
            other => return unknown(format!("expression `{other}`")),
        }
    }
    Ok(rule)
}

fn set_reg(regs: &mut Vec<(u32, Reg)>, reg: u32, load: Load) {
    regs.retain(|(r, _)| *r != reg);
    regs.push((reg, Reg { load, mask: None }));
}

fn reg(regs: &[(u32, Reg)], reg: u32) -> R<&Reg> {
    regs.iter()
        .find(|(r, _)| *r == reg)
        .map(|(_, v)| v)
        .map_or_else(|| unknown(format!("register {reg} read before it is written")), Ok)
}

/// A value of an `NFTA_*_DATA` nest.
fn value(nest: &[u8]) -> R<&[u8]> {
    let a = Attrs::parse(nest, bits(&[1]), "data")?;
    a.get(1).map_or_else(|| unknown("data without a value"), Ok)
}

/// `bitwise`: a mask (and a zero xor) over a loaded register, as iptables-nft writes for
/// prefixes not on a byte boundary and `-m mark --mark X/MASK`.
fn bitwise(regs: &mut Vec<(u32, Reg)>, data: &[u8]) -> R<()> {
    // SREG, DREG, LEN, MASK, XOR, OP (only the mask-and-xor operation, 0).
    let b = Attrs::parse(data, bits(&[1, 2, 3, 4, 5, 6]), "bitwise")?;
    if b.u32(6)?.unwrap_or(0) != 0 {
        return unknown("bitwise shift");
    }
    let mask = value(b.get(4).unwrap_or_default())?.to_vec();
    let xor = value(b.get(5).unwrap_or_default())?;
    if xor.iter().any(|&x| x != 0) {
        return unknown("bitwise with a non-zero xor");
    }
    let mut r = reg(regs, b.need_u32(1, "bitwise")?)?.clone();
    if r.mask.is_some() {
        return unknown("two masks on one register");
    }
    r.mask = Some(mask);
    let dreg = b.need_u32(2, "bitwise")?;
    regs.retain(|(x, _)| *x != dreg);
    regs.push((dreg, r));
    Ok(())
}

/// `cmp`: one of the entry's fields, a port, an interface or the mark compared.
fn cmp(rule: &mut SaveRule, regs: &[(u32, Reg)], data: &[u8]) -> R<()> {
    let c = Attrs::parse(data, bits(&[1, 2, 3]), "cmp")?;
    let r = reg(regs, c.need_u32(1, "cmp")?)?;
    let invert = match c.need_u32(2, "cmp")? {
        CMP_EQ => false,
        CMP_NEQ => true,
        op => return unknown(format!("cmp operation {op}")),
    };
    let v = value(c.get(3).unwrap_or_default())?;
    match (&r.load, &r.mask) {
        (Load::Meta(META_L4PROTO), None) => {
            let [p] = v else {
                return unknown("meta l4proto compared to more than a byte");
            };
            SaveRule::set(&mut rule.proto, (*p, invert), "-p")
        }
        (Load::Meta(key @ (META_IIFNAME | META_OIFNAME)), None) => {
            // An exact name is compared with its NUL, a `name+` prefix without.
            let name = match v.iter().position(|&b| b == 0) {
                Some(end) => String::from_utf8_lossy(&v[..end]).into_owned(),
                None => format!("{}+", String::from_utf8_lossy(v)),
            };
            let slot = if *key == META_IIFNAME {
                &mut rule.in_iface
            } else {
                &mut rule.out_iface
            };
            SaveRule::set(slot, Iface { name, invert }, "an interface")
        }
        (Load::Meta(META_MARK), mask) => {
            let word = |b: &[u8]| -> R<u32> {
                <[u8; 4]>::try_from(b)
                    .map(u32::from_ne_bytes)
                    .map_err(|_| Unknown("mark of other than 4 bytes".into()))
            };
            let mask = match mask {
                Some(m) => word(m)?,
                None => u32::MAX,
            };
            rule.matches.push(xt::mark_match(word(v)?, mask, invert));
            Ok(())
        }
        (
            Load::Payload {
                base: BASE_NETWORK,
                offset,
                len,
            },
            mask,
        ) => {
            let (src, dst, max) = if rule.v6 { (8, 24, 16) } else { (12, 16, 4) };
            let slot = match *offset {
                o if o == src => &mut rule.src,
                o if o == dst => &mut rule.dst,
                o => return unknown(format!("network header load at offset {o}")),
            };
            let len = *len as usize;
            if len == 0 || len > max || v.len() != len {
                return unknown(format!("address compare of {len} bytes"));
            }
            let mut a = Addr {
                invert,
                ..Default::default()
            };
            a.addr[..len].copy_from_slice(v);
            match mask {
                Some(m) if m.len() == len => a.mask[..len].copy_from_slice(m),
                Some(_) => return unknown("address mask of another length"),
                None => {
                    for (i, b) in a.mask[..len].iter_mut().enumerate() {
                        *b = prefix_byte(len as u32 * 8, i);
                    }
                }
            }
            SaveRule::set(slot, a, "an address")
        }
        (
            Load::Payload {
                base: BASE_TRANSPORT,
                offset: offset @ (0 | 2),
                len: 2,
            },
            None,
        ) => {
            let name = match rule.proto {
                Some((6, false)) => "tcp",
                Some((17, false)) => "udp",
                _ => return unknown("a port compared without -p tcp or -p udp"),
            };
            let [hi, lo] = v else {
                return unknown("a port of other than 2 bytes");
            };
            let port = u16::from_be_bytes([*hi, *lo]);
            // The ports join the rule's `-m tcp`/`-m udp` (made where the first port appears).
            let m = match rule.matches.iter_mut().position(|m| m.name() == name) {
                Some(i) => &mut rule.matches[i],
                None => {
                    rule.matches.push(Match::ports(name));
                    rule.matches.last_mut().expect("pushed")
                }
            };
            let Match::Ports {
                sport,
                dport,
                inv_sport,
                inv_dport,
                ..
            } = m
            else {
                return unknown("ports on a match that has none");
            };
            let (range, inv) = if *offset == 0 {
                (sport, inv_sport)
            } else {
                (dport, inv_dport)
            };
            if *range != xt::ANY_PORT {
                return unknown("a port compared twice");
            }
            *range = (port, port);
            *inv = invert;
            Ok(())
        }
        (load, mask) => unknown(format!("compare of {load:?} (mask {mask:?})")),
    }
}

/// An `immediate`'s verdict nest (`NFTA_DATA_VERDICT`: code and chain).
fn verdict(data: &[u8]) -> R<Target> {
    let d = Attrs::parse(data, bits(&[2]), "immediate data")?;
    let v = Attrs::parse(d.get(2).unwrap_or_default(), bits(&[1, 2]), "verdict")?;
    let code = v.need_u32(1, "verdict")? as i32;
    let chain = v.str(2)?;
    Ok(match (code, chain) {
        (NF_ACCEPT, None) => Target::Jump("ACCEPT".into()),
        (NF_DROP, None) => Target::Jump("DROP".into()),
        (NFT_RETURN, None) => Target::Jump("RETURN".into()),
        (NFT_JUMP, Some(c)) => Target::Jump(c.into()),
        (NFT_GOTO, Some(c)) => Target::Goto(c.into()),
        _ => return unknown(format!("verdict {code}")),
    })
}

/// Decodes a recorded read of iptables-nft tables: the kernel's answers (`NFT_MSG_NEWTABLE`,
/// `NEWCHAIN`, `NEWRULE` with their netlink headers, in any order; others are skipped) for
/// `family`'s tables, into the model. For the fuzz target and the tests: nothing may panic, and
/// what is not understood is an error.
pub fn decode_dump(family: u8, bytes: &[u8]) -> Result<Parsed, Error> {
    parse(&render(recorded_tables(family, bytes)?)?, "netlink")
}

/// The `iptables-save` text [`decode_dump`] reads.
#[cfg(test)]
pub(super) fn render_dump(family: u8, bytes: &[u8]) -> Result<String, Error> {
    Ok(render(recorded_tables(family, bytes)?)?.text)
}

fn recorded_tables(family: u8, bytes: &[u8]) -> Result<Vec<Table>, Error> {
    let v6 = family == FAMILY_IP6;
    let mut tables: Vec<Table> = TABLES
        .iter()
        .map(|&name| Table {
            name,
            ..Default::default()
        })
        .collect();
    let mut found = [false; TABLES.len()];
    for m in crate::kernel::netlink::messages(bytes) {
        if m.kind >> 8 != 10 {
            continue;
        }
        let Some(o) = nl::object(m.payload) else { continue };
        if o.family != family {
            continue;
        }
        let table = Attrs::parse(o.attrs, u32::MAX >> 8, "object")?.str(1)?;
        let Some(i) = TABLES.iter().position(|t| Some(*t) == table) else {
            continue;
        };
        found[i] = true;
        let t = &mut tables[i];
        match m.kind & 0xff {
            3 => {
                let a = Attrs::parse(o.attrs, u32::MAX >> 8, "chain")?;
                if let Some(c) = chain(&a)? {
                    t.chains.push(c);
                }
            }
            6 => {
                if let Some(x) = rule(o.attrs, t.name, v6)? {
                    t.add(vec![x]);
                }
            }
            _ => {}
        }
    }
    Ok(tables
        .into_iter()
        .zip(found)
        .filter(|(_, f)| *f)
        .map(|(t, _)| t)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::push_attr;

    /// One expression (`NFTA_LIST_ELEM` nest: name, data) of attributes `(type, value)`.
    fn expr(out: &mut Vec<u8>, name: &str, attrs: &[(u16, Vec<u8>)]) {
        let mut data = Vec::new();
        for (k, v) in attrs {
            push_attr(&mut data, *k, v);
        }
        let mut e = Vec::new();
        push_attr(&mut e, 1, format!("{name}\0").as_bytes());
        push_attr(&mut e, 2 | 0x8000, &data);
        push_attr(out, 1 | 0x8000, &e);
    }

    fn be(v: u32) -> Vec<u8> {
        v.to_be_bytes().to_vec()
    }

    /// `NFTA_DATA_VALUE` nest.
    fn data(v: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        push_attr(&mut d, 1, v);
        d
    }

    fn meta(out: &mut Vec<u8>, key: u32) {
        expr(out, "meta", &[(1, be(1)), (2, be(key))]);
    }

    fn cmp(out: &mut Vec<u8>, op: u32, v: &[u8]) {
        expr(out, "cmp", &[(1, be(1)), (2, be(op)), (3, data(v))]);
    }

    fn jump(out: &mut Vec<u8>, chain: &str) {
        let mut verdict = Vec::new();
        push_attr(&mut verdict, 1, &(NFT_JUMP as u32).to_be_bytes());
        push_attr(&mut verdict, 2, format!("{chain}\0").as_bytes());
        let mut d = Vec::new();
        push_attr(&mut d, 2 | 0x8000, &verdict);
        expr(out, "immediate", &[(1, be(0)), (2, d)]);
    }

    fn line(list: &[u8]) -> String {
        let mut out = String::new();
        decode(list, false).unwrap().render("KUBE-X", &mut out).unwrap();
        out
    }

    #[test]
    fn native_matches_read_as_iptables_nft_prints_them() {
        // `! -i veth+ -o eth0 -s 10.0.0.0/12 -m mark --mark 0x4000/0x4000 -j KUBE-Y`: interface
        // names with and without their NUL, a prefix off a byte boundary through a bitwise
        // mask, the mark through a bitwise mask.
        let mut l = Vec::new();
        meta(&mut l, META_IIFNAME);
        cmp(&mut l, CMP_NEQ, b"veth");
        meta(&mut l, META_OIFNAME);
        cmp(&mut l, CMP_EQ, b"eth0\0");
        expr(
            &mut l,
            "payload",
            &[(1, be(1)), (2, be(BASE_NETWORK)), (3, be(12)), (4, be(2))],
        );
        expr(
            &mut l,
            "bitwise",
            &[
                (1, be(1)),
                (2, be(1)),
                (3, be(2)),
                (4, data(&[255, 240])),
                (5, data(&[0, 0])),
            ],
        );
        cmp(&mut l, CMP_EQ, &[10, 0]);
        meta(&mut l, META_MARK);
        expr(
            &mut l,
            "bitwise",
            &[
                (1, be(1)),
                (2, be(1)),
                (3, be(4)),
                (4, data(&0x4000u32.to_ne_bytes())),
                (5, data(&[0; 4])),
            ],
        );
        cmp(&mut l, CMP_EQ, &0x4000u32.to_ne_bytes());
        expr(&mut l, "counter", &[(1, vec![0; 8]), (2, vec![0; 8])]);
        jump(&mut l, "KUBE-Y");
        assert_eq!(
            line(&l),
            "-A KUBE-X -s 10.0.0.0/12 ! -i veth+ -o eth0 -m mark --mark 0x4000/0x4000 -j KUBE-Y\n"
        );
        assert!(jumps_to_kube(&l));
    }

    #[test]
    fn ports_join_the_protocol_match() {
        // `-p udp -m udp ! --sport 53 --dport 5353`, then `-p tcp` without ports.
        let mut l = Vec::new();
        meta(&mut l, META_L4PROTO);
        cmp(&mut l, CMP_EQ, &[17]);
        for (offset, op, port) in [(0, CMP_NEQ, 53u16), (2, CMP_EQ, 5353)] {
            expr(
                &mut l,
                "payload",
                &[(1, be(1)), (2, be(BASE_TRANSPORT)), (3, be(offset)), (4, be(2))],
            );
            cmp(&mut l, op, &port.to_be_bytes());
        }
        assert_eq!(line(&l), "-A KUBE-X -p udp -m udp ! --sport 53 --dport 5353\n");
    }

    #[test]
    fn loads_and_expressions_iptables_nft_does_not_write_are_unknown() {
        // A port without `-p tcp|udp`.
        let mut l = Vec::new();
        expr(
            &mut l,
            "payload",
            &[(1, be(1)), (2, be(BASE_TRANSPORT)), (3, be(2)), (4, be(2))],
        );
        cmp(&mut l, CMP_EQ, &80u16.to_be_bytes());
        assert!(decode(&l, false).is_err());
        // `ct state`, a native expression iptables-nft 1.8 does not use.
        let mut l = Vec::new();
        expr(&mut l, "ct", &[(1, be(1)), (2, be(0))]);
        assert!(decode(&l, false).is_err());
        // A compare that is not equality.
        let mut l = Vec::new();
        meta(&mut l, META_L4PROTO);
        cmp(&mut l, 2, &[6]);
        assert!(decode(&l, false).is_err());
        // Two verdicts.
        let mut l = Vec::new();
        jump(&mut l, "KUBE-A");
        jump(&mut l, "KUBE-B");
        assert!(decode(&l, false).is_err());
        // A register read before a load.
        let mut l = Vec::new();
        cmp(&mut l, CMP_EQ, &[6]);
        assert!(decode(&l, false).is_err());
        // Userdata holding an nft comment.
        assert!(userdata(&[0, 3, b'h', b'i', 0]).is_err());
        assert!(userdata(&[7, 2, 1, 2]).is_ok());
    }
}
