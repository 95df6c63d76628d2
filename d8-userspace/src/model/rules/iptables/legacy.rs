//! The kernel reader for iptables mode on iptables-legacy (older distributions, and nodes whose
//! kube-proxy image picked the legacy backend): kube-proxy's chains are in the x_tables tables
//! `filter` and `nat`, read as one blob per table (`kernel::xtables`) and rendered, like the
//! iptables-nft reader's, as the `iptables-save` text of those chains (`chains.rs`, `save.rs`),
//! which the text reader's stages turn into the model.
//!
//! A table's blob is its rules in order, each a `struct ipt_entry` (`ip6t_entry`): the entry's
//! `-s`/`-d`/`-i`/`-o`/`-p`, then its matches and target, each an x_tables extension (name,
//! revision, blob) that `xt.rs` decodes as for iptables-nft; the standard target (no name) holds a
//! verdict or the byte offset of the rule it jumps to. Chains are not objects: a built-in chain
//! runs from its hook's entry to its policy entry (`hook_entry`/`underflow`), a user chain from an
//! `ERROR` entry holding its name to the `RETURN` entry before the next one, and a jump's offset
//! is the first entry after that head. This is how libiptc (`iptables-legacy-save`) reads it.
//! Anything else (an unknown extension, flag or verdict, an offset inside no chain, a
//! truncated entry) is [`Unknown`]: the caller then runs `iptables-legacy-save`. A guess would be
//! a wrong model.
//!
//! Rules are named in warnings by their number in their chain (`iptables -L CHAIN
//! --line-numbers`): the legacy backend has no handles.

use super::chains::{BUILTIN, ChainInfo, ReadRule, Rendered, TABLES, Table, read_rules, render};
use super::save::{Addr, Iface, SaveRule, Target};
use super::xt;
use super::{ParseError, Parsed};
use crate::kernel::xtables::{self, HOOKS};
use crate::model::ServiceRef;
use crate::model::rules::FastMap;
use crate::model::rules::nftables::expr::{R, Unknown, unknown};
use crate::model::rules::nftables::netlink::Error;

/// Reads kube-proxy's iptables-legacy chains of IPv4 or IPv6 (the tables of `tables`, as
/// `kernel::xtables::legacy_tables` lists them: the others do not exist and are not created);
/// warnings name `source_name` and each rule's number in its chain. `only`: see
/// [`read_rules`].
pub fn read(v6: bool, tables: &[String], source_name: &str, only: Option<&ServiceRef>) -> Result<Parsed, Error> {
    let r = read_rendered(v6, tables, only)?;
    super::parse_rendered(&r.text, source_name, &r.handles, "rule number")
        .map_err(|e: ParseError| Error::Unknown(e.to_string()))
}

/// The tables read and rendered as `iptables-save` text.
pub(super) fn read_rendered(v6: bool, tables: &[String], only: Option<&ServiceRef>) -> Result<Rendered, Error> {
    let mut read = Vec::new();
    for name in TABLES {
        if !tables.iter().any(|t| t == name) {
            continue;
        }
        let blob = xtables::read_table(v6, name).map_err(|source| Error::XTables {
            table: name.to_string(),
            source,
        })?;
        read.push(decode_table(name, &blob, v6, only).map_err(|u| Error::Unknown(format!("table {name}: {}", u.0)))?);
    }
    Ok(render(read)?)
}

/// Where `struct ipt_entry` (`ip6t_entry`) keeps what the walk needs, and its size (where its
/// matches start).
struct Layout {
    /// `struct ipt_ip` / `ip6t_ip6`.
    ip: usize,
    target_offset: usize,
    next_offset: usize,
    size: usize,
}

const V4: Layout = Layout {
    ip: 84,
    target_offset: 88,
    next_offset: 90,
    size: 112,
};
const V6: Layout = Layout {
    ip: 136,
    target_offset: 140,
    next_offset: 142,
    size: 168,
};

/// `struct xt_entry_match` / `xt_entry_target`: size (u16), name (29 bytes), revision, then the
/// extension's blob.
const EXT_HEADER: usize = 32;
const EXT_NAME_LEN: usize = 29;
/// `XT_FUNCTION_MAXNAMELEN`: an `ERROR` target's chain name.
const ERROR_NAME_LEN: usize = 30;

/// The hook names of `NF_INET_PRE_ROUTING` .. `NF_INET_POST_ROUTING`.
const HOOK_NAMES: [&str; HOOKS] = ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

/// Standard verdicts (`-NF_x - 1`).
const VERDICT_DROP: i32 = -1;
const VERDICT_ACCEPT: i32 = -2;
const VERDICT_RETURN: i32 = -5;

/// One entry of the blob: where it starts and its bytes.
#[derive(Clone, Copy)]
struct Entry<'a> {
    at: usize,
    bytes: &'a [u8],
    target_offset: usize,
}

impl<'a> Entry<'a> {
    /// The target's name, revision and blob.
    fn target(&self) -> R<(&'a str, u8, &'a [u8])> {
        extension(&self.bytes[self.target_offset..], "target")
    }

    /// A standard target's verdict (`None` for another target).
    fn verdict(&self) -> R<Option<i32>> {
        let (name, _, data) = self.target()?;
        if !name.is_empty() {
            return Ok(None);
        }
        let v = data
            .get(..4)
            .ok_or_else(|| Unknown("standard target without a verdict".into()))?;
        Ok(Some(i32::from_ne_bytes(v.try_into().expect("4 bytes"))))
    }

    fn error_name(&self) -> R<Option<&'a str>> {
        let (name, _, data) = self.target()?;
        if name != "ERROR" {
            return Ok(None);
        }
        Ok(Some(xt::cstr(data, 0, ERROR_NAME_LEN)?))
    }
}

/// An extension's header and blob, from the start of `bytes` (its size bounds it).
fn extension<'a>(bytes: &'a [u8], what: &str) -> R<(&'a str, u8, &'a [u8])> {
    if bytes.len() < EXT_HEADER {
        return unknown(format!("{what} truncated"));
    }
    let size = u16::from_ne_bytes([bytes[0], bytes[1]]) as usize;
    if size < EXT_HEADER || size > bytes.len() {
        return unknown(format!("{what} of size {size} in {} bytes", bytes.len()));
    }
    let name = xt::cstr(bytes, 2, EXT_NAME_LEN)?;
    Ok((name, bytes[31], &bytes[EXT_HEADER..size]))
}

/// The blob's entries in order.
fn entries<'a>(blob: &'a [u8], l: &Layout) -> R<Vec<Entry<'a>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < blob.len() {
        let rest = &blob[at..];
        if rest.len() < l.size {
            return unknown(format!("entry at offset {at} truncated"));
        }
        let u16_at = |o: usize| u16::from_ne_bytes([rest[o], rest[o + 1]]) as usize;
        let (target_offset, next) = (u16_at(l.target_offset), u16_at(l.next_offset));
        if target_offset < l.size || target_offset + EXT_HEADER > next || next > rest.len() {
            return unknown(format!(
                "entry at offset {at}: target at {target_offset}, next at {next}, {} bytes left",
                rest.len()
            ));
        }
        out.push(Entry {
            at,
            bytes: &rest[..next],
            target_offset,
        });
        at += next;
    }
    Ok(out)
}

/// A table's chains, which entries are whose rules, and where jumps land.
struct Walk<'a> {
    chains: Vec<ChainInfo>,
    rules: FastMap<String, Vec<Entry<'a>>>,
    /// A jump's byte offset -> the user chain it enters.
    entry_of: FastMap<usize, String>,
}

/// Splits the entries into chains as libiptc does.
fn walk<'a>(t: &xtables::Table, entries: &[Entry<'a>], l: &Layout) -> R<Walk<'a>> {
    let hook_at = |at: usize| (0..HOOKS).find(|&h| t.valid_hooks & (1 << h) != 0 && t.hook_entry[h] as usize == at);
    let policy_of = |at: usize| (0..HOOKS).find(|&h| t.valid_hooks & (1 << h) != 0 && t.underflow[h] as usize == at);
    let mut w = Walk {
        chains: Vec::new(),
        rules: FastMap::default(),
        entry_of: FastMap::default(),
    };
    // The chain being read: its name and whether it is a user chain (which ends with RETURN).
    let mut current: Option<(String, bool)> = None;
    let mut ended = false;
    for (i, e) in entries.iter().enumerate() {
        if ended {
            return unknown(format!("entry at offset {} after the table's end", e.at));
        }
        if let Some(h) = hook_at(e.at) {
            close_user_chain(&mut w, &current, l)?;
            current = Some((HOOK_NAMES[h].to_string(), false));
            w.rules.entry(HOOK_NAMES[h].to_string()).or_default();
        }
        if let Some(name) = e.error_name()? {
            close_user_chain(&mut w, &current, l)?;
            if name == "ERROR" {
                // The table's last entry.
                ended = true;
                current = None;
                continue;
            }
            w.chains.push((name.to_string(), None));
            w.rules.entry(name.to_string()).or_default();
            if let Some(next) = entries.get(i + 1) {
                w.entry_of.insert(next.at, name.to_string());
            }
            current = Some((name.to_string(), true));
            continue;
        }
        let Some((chain, _)) = &current else {
            return unknown(format!("entry at offset {} outside every chain", e.at));
        };
        if let Some(h) = policy_of(e.at) {
            let policy = match e.verdict()? {
                Some(VERDICT_ACCEPT) => "ACCEPT",
                Some(VERDICT_DROP) => "DROP",
                v => return unknown(format!("chain {chain}: policy {v:?}")),
            };
            w.chains.push((chain.clone(), Some((h as u32, policy))));
            current = None;
            continue;
        }
        w.rules.get_mut(chain).expect("declared").push(*e);
    }
    if !ended {
        return unknown("the table has no final ERROR entry");
    }
    Ok(w)
}

/// A user chain's last entry is its `RETURN`, not a rule iptables-save prints.
fn close_user_chain(w: &mut Walk<'_>, current: &Option<(String, bool)>, l: &Layout) -> R<()> {
    let Some((chain, true)) = current else {
        if let Some((chain, false)) = current {
            return unknown(format!("built-in chain {chain} without its policy entry"));
        }
        return Ok(());
    };
    let rules = w.rules.get_mut(chain).expect("declared");
    match rules.pop() {
        Some(last) if last.verdict()? == Some(VERDICT_RETURN) && unconditional(&last, l) => Ok(()),
        _ => unknown(format!("chain {chain} does not end with its RETURN entry")),
    }
}

/// An entry with no match of any kind (all-zero addresses, interfaces, protocol and flags, no
/// extension match): a chain's policy or tail.
fn unconditional(e: &Entry<'_>, l: &Layout) -> bool {
    e.target_offset == l.size && e.bytes[..l.ip].iter().all(|&b| b == 0)
}

/// One table decoded: its chains and kube-proxy's rules in it.
fn decode_table(name: &'static str, blob: &xtables::Table, v6: bool, only: Option<&ServiceRef>) -> R<Table> {
    let l = if v6 { &V6 } else { &V4 };
    let entries = entries(&blob.entries, l)?;
    let w = walk(blob, &entries, l)?;
    let builtin = TABLES.iter().position(|n| *n == name).map_or(&[][..], |i| BUILTIN[i]);
    let mut t = Table {
        name,
        chains: w.chains.clone(),
        ..Default::default()
    };
    // A built-in chain `iptables-save` would not print in this table (its rules would be lost).
    if let Some((chain, _)) = w
        .chains
        .iter()
        .find(|(n, h)| h.is_some() && !builtin.contains(&n.as_str()))
    {
        return unknown(format!("built-in chain {chain} in table {name}"));
    }
    read_rules(&mut t, only, |chain, out| {
        let Some(list) = w.rules.get(chain) else { return Ok(()) };
        for (n, e) in list.iter().enumerate() {
            if let Some(x) = rule(chain, n as u64 + 1, e, v6, &w.entry_of)? {
                out.push(x);
            }
        }
        Ok::<(), Unknown>(())
    })?;
    Ok(t)
}

/// One rule as [`ReadRule`], or `None` when it is outside what the model reads (a rule of a
/// chain not kube-proxy's that does not jump into kube-proxy's).
fn rule(chain: &str, number: u64, e: &Entry<'_>, v6: bool, entry_of: &FastMap<usize, String>) -> R<Option<ReadRule>> {
    let at = |u: Unknown| Unknown(format!("chain {chain} rule {number}: {}", u.0));
    let target = target(e, v6, entry_of).map_err(at)?;
    let jumps_to = match &target {
        Some(Target::Jump(c) | Target::Goto(c)) => Some(c.clone()),
        _ => None,
    };
    if !chain.starts_with("KUBE-") && !jumps_to.as_deref().is_some_and(|c| c.starts_with("KUBE-")) {
        return Ok(None);
    }
    let mut r = entry_ip(e.bytes, v6).map_err(at)?;
    r.target = target;
    let l = if v6 { &V6 } else { &V4 };
    let mut rest = &e.bytes[l.size..e.target_offset];
    while !rest.is_empty() {
        let (name, rev, data) = extension(rest, "match").map_err(at)?;
        if name == "comment" {
            r.comment = Some(xt::comment(data).map_err(at)?.to_string());
        }
        r.matches
            .push(xt::decode_match(name, u32::from(rev), data, v6).map_err(at)?);
        let size = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        rest = &rest[size..];
    }
    let mut line = String::with_capacity(160);
    r.render(chain, &mut line).map_err(at)?;
    Ok(Some(ReadRule {
        chain: chain.to_string(),
        handle: number,
        line,
        comment: r.comment,
        target: jumps_to,
    }))
}

/// What the rule does: a verdict, a jump or goto (an offset naming a chain's first entry), a
/// fall-through to the next rule (no target), or an extension.
fn target(e: &Entry<'_>, v6: bool, entry_of: &FastMap<usize, String>) -> R<Option<Target>> {
    let (name, rev, data) = e.target()?;
    if !name.is_empty() {
        return Ok(Some(Target::Extension(xt::decode_target(
            name,
            u32::from(rev),
            data,
            v6,
        )?)));
    }
    let goto = goto_flag(e.bytes, v6);
    let v = e.verdict()?.expect("a standard target");
    let verdict = |s: &str| Ok(Some(Target::Jump(s.to_string())));
    match v {
        VERDICT_ACCEPT => verdict("ACCEPT"),
        VERDICT_DROP => verdict("DROP"),
        VERDICT_RETURN => verdict("RETURN"),
        v if v >= 0 && v as usize == e.at + e.bytes.len() && !goto => Ok(None),
        v if v >= 0 => match entry_of.get(&(v as usize)) {
            Some(c) if goto => Ok(Some(Target::Goto(c.clone()))),
            Some(c) => Ok(Some(Target::Jump(c.clone()))),
            None => unknown(format!("a jump to offset {v}, the start of no chain")),
        },
        v => unknown(format!("standard verdict {v}")),
    }
}

/// `IPT_F_GOTO` / `IP6T_F_GOTO`.
fn goto_flag(b: &[u8], v6: bool) -> bool {
    if v6 { b[131] & 0x04 != 0 } else { b[82] & 0x02 != 0 }
}

/// `IPT_INV_VIA_IN`, `_VIA_OUT`, `_SRCIP`, `_DSTIP`, `_PROTO` (the same bits for IPv6).
const INV_VIA_IN: u8 = 0x01;
const INV_VIA_OUT: u8 = 0x02;
const INV_SRCIP: u8 = 0x08;
const INV_DSTIP: u8 = 0x10;
const INV_PROTO: u8 = 0x40;

/// The entry's `-s`/`-d`/`-i`/`-o`/`-p` (`struct ipt_ip` / `ip6t_ip6`).
fn entry_ip(b: &[u8], v6: bool) -> R<SaveRule> {
    // Address length, where the interfaces, protocol, flags and inversion flags are; the
    // flags a rule of iptables may carry besides goto (IPv4: -f; IPv6: protocol set, TOS).
    let (alen, ifaces, proto_at, flags_at, inv_at, known_flags) = if v6 {
        (16, 64, 128, 131, 132, 0x04 | 0x01)
    } else {
        (4, 16, 80, 82, 83, 0x02)
    };
    let (flags, inv) = (b[flags_at], b[inv_at]);
    if flags & !known_flags != 0 {
        return unknown(format!("entry flags {flags:#x} (fragments or TOS)"));
    }
    if inv & !(INV_VIA_IN | INV_VIA_OUT | INV_SRCIP | INV_DSTIP | INV_PROTO) != 0 {
        return unknown(format!("entry inversion flags {inv:#x}"));
    }
    if v6 && b[130] != 0 {
        return unknown("a TOS match in the entry");
    }
    let mut r = SaveRule::new(v6);
    let addr = |i: usize, invert: bool| {
        let mut a = Addr {
            invert,
            ..Default::default()
        };
        a.addr[..alen].copy_from_slice(&b[i * alen..(i + 1) * alen]);
        a.mask[..alen].copy_from_slice(&b[(i + 2) * alen..(i + 3) * alen]);
        a
    };
    r.src = Some(addr(0, inv & INV_SRCIP != 0));
    r.dst = Some(addr(1, inv & INV_DSTIP != 0));
    r.in_iface = iface(
        &b[ifaces..ifaces + 16],
        &b[ifaces + 32..ifaces + 48],
        inv & INV_VIA_IN != 0,
    )?;
    r.out_iface = iface(
        &b[ifaces + 16..ifaces + 32],
        &b[ifaces + 48..ifaces + 64],
        inv & INV_VIA_OUT != 0,
    )?;
    let proto = u16::from_ne_bytes([b[proto_at], b[proto_at + 1]]);
    if proto > 0xff {
        return unknown(format!("protocol {proto}"));
    }
    if proto != 0 {
        r.proto = Some((proto as u8, inv & INV_PROTO != 0));
    }
    Ok(r)
}

/// An interface as iptables prints it (`save_iface`): the name's bytes under the mask, and `+`
/// when the mask ends before the name does (a prefix match).
fn iface(name: &[u8], mask: &[u8], invert: bool) -> R<Option<Iface>> {
    if mask[0] == 0 {
        return Ok(None);
    }
    let mut out = String::new();
    for i in 0..name.len() {
        if mask[i] != 0 {
            if name[i] != 0 {
                out.push(char::from(name[i]));
            }
        } else {
            if name[i - 1] != 0 {
                out.push('+');
            }
            break;
        }
    }
    if !out.is_ascii() || out.is_empty() {
        return unknown("an interface name that is not ASCII");
    }
    Ok(Some(Iface { name: out, invert }))
}

/// Reads tables in their recorded form (`testdata/rules/iptables-legacy.bin`, written by
/// `legacy_tests::record_iptables_legacy_fixture`; the fuzz target's input): per table its name
/// (32 bytes, NUL-padded), `valid_hooks`, `hook_entry[5]`, `underflow[5]` and the entries' size
/// (each a native-order u32), then the entries. The model, as [`read`] builds it.
pub fn decode_recorded(v6: bool, bytes: &[u8]) -> Result<Parsed, Error> {
    let r = render_recorded(v6, bytes)?;
    super::parse_rendered(&r.text, "recorded x_tables", &r.handles, "rule number")
        .map_err(|e: ParseError| Error::Unknown(e.to_string()))
}

/// The `iptables-save` text of recorded tables.
pub(super) fn render_recorded(v6: bool, mut bytes: &[u8]) -> Result<Rendered, Error> {
    const HEAD: usize = 32 + 4 * (2 + 2 * HOOKS);
    let mut tables = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < HEAD {
            return Err(Error::Unknown("recorded table header truncated".into()));
        }
        let word = |at: usize| u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let name = xt::cstr(bytes, 0, 32)?;
        let Some(&name) = TABLES.iter().find(|t| **t == name) else {
            return Err(Error::Unknown(format!("recorded table `{name}`")));
        };
        let mut t = xtables::Table {
            valid_hooks: word(32),
            ..Default::default()
        };
        for h in 0..HOOKS {
            t.hook_entry[h] = word(36 + 4 * h);
            t.underflow[h] = word(36 + 4 * HOOKS + 4 * h);
        }
        let size = word(HEAD - 4) as usize;
        let Some(entries) = bytes.get(HEAD..HEAD + size) else {
            return Err(Error::Unknown("recorded entries truncated".into()));
        };
        t.entries = entries.to_vec();
        tables.push(decode_table(name, &t, v6, None).map_err(|u| Error::Unknown(format!("table {name}: {}", u.0)))?);
        bytes = &bytes[HEAD + size..];
    }
    Ok(render(tables)?)
}

/// The recorded form of one table (see [`decode_recorded`]).
#[cfg(test)]
pub(super) fn record(name: &str, t: &xtables::Table) -> Vec<u8> {
    let mut out = vec![0u8; 32];
    out[..name.len()].copy_from_slice(name.as_bytes());
    let words = std::iter::once(t.valid_hooks)
        .chain(t.hook_entry)
        .chain(t.underflow)
        .chain(std::iter::once(t.entries.len() as u32));
    for w in words {
        out.extend(w.to_ne_bytes());
    }
    out.extend(&t.entries);
    out
}
