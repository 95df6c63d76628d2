//! Reads kube-proxy's iptables-mode rules from `iptables-save` output into [`Service`]s.
//!
//! Input: the text `iptables-save` (or `iptables-nft-save`, `iptables-legacy-save`, `ip6tables-save`)
//! prints for the nat and filter tables, with or without `-c` counters. The reader understands the
//! output form described in `shared/reference/kube-proxy-rules.md` §1.13 (`-d x/32` moved to the
//! front, comments always quoted with `\"` escapes, `--set-xmark`, 11-decimal probabilities,
//! `[pkts:bytes]` prefixes, `#` lines) and also kube-proxy's own input form, because options are
//! looked up by name, never by position.
//!
//! What it builds, per Service port `N` (`ns/name:port`) and protocol:
//! - frontends: ClusterIP (nat `KUBE-SERVICES` "N cluster IP", or filter "has no endpoints" /
//!   "has no local endpoints" rules when the nat rule is absent), external IPs, load-balancer IPs,
//!   NodePorts (nat `KUBE-NODEPORTS`, at the addresses of the `KUBE-SERVICES` tail rule: `0.0.0.0` /
//!   `::` for `-m addrtype --dst-type LOCAL`);
//! - endpoints: the DNAT targets of the `KUBE-SEP-` chains the `KUBE-SVC-`/`KUBE-SVL-` chains jump
//!   to, with the DNAT rule as [`RuleRef`], the chance of being chosen as `weight`, and locality
//!   (`local: Some(true)` when a `KUBE-SVL-` chain holds it, `Some(false)` when a `KUBE-SVL-` chain
//!   exists without it);
//! - [`RuleFacts`](crate::model::RuleFacts): REJECT "has no endpoints", DROP "has no local endpoints", ClientIP affinity
//!   (`-m recent --rcheck --seconds S`), the chains, loadBalancerSourceRanges, and `problems`:
//!   a wrong probability sequence (not `1/(n-i)`), a jump to a chain that does not exist, a comment
//!   naming another endpoint than the DNAT target.
//!
//! Chains are tied to Service ports by their hashes (`names.rs`): `KUBE-SVC-`, `KUBE-SVL-`,
//! `KUBE-EXT-` and `KUBE-FW-` of one port share a suffix, so one comment anywhere among them (in
//! large clusters kube-proxy keeps only the `KUBE-SERVICES` ones) names them all, and the protocol is
//! the one whose recomputed hash matches. `KUBE-SEP-` chains without comments are named by the
//! service chain jumping to them, and checked against `names::endpoint_hash`.
//!
//! Not done here: reading the system (see `rules::read_node`), IPVS-mode service identity (IPVS
//! mode's iptables rules name no Service; see `rules::ipvs`).
//!
//! Errors: [`parse`] fails only when the text is not `iptables-save` output at all. Everything else
//! (a malformed line, an unterminated quote, a rule in a kube-proxy chain this reader does not
//! understand, a table without `COMMIT`) becomes a warning naming the line, and parsing carries on.
//! Rules in chains kube-proxy does not own (built-in chains aside from their jumps, CNI chains) are
//! outside the model and are not reported.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::rc::Rc;

use crate::model::{Endpoint, Frontend, FrontendKind, Protocol, ProxyMode, RuleRef, RuleSource, Service, ServiceRef};
use crate::model::rules::{FastMap, FastSet, names};

/// What [`parse`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// One entry per Service, ordered by `namespace/name`.
    pub services: Vec<Service>,
    /// Soft errors and rules not understood, each naming the source and line.
    pub warnings: Vec<String>,
    /// The nat table has kube-proxy's `KUBE-SERVICES` chain.
    pub rules_present: bool,
    /// Which kube-proxy mode wrote these chains: `Iptables` (`KUBE-SVC-`/`KUBE-SEP-` chains or
    /// service rules), `Ipvs` (the ipset-based rules of IPVS mode), `None` (no kube-proxy rules).
    pub mode_hint: Option<ProxyMode>,
    /// Node addresses NodePorts are accepted on (`-d <ip> -j KUBE-NODEPORTS`); empty when the
    /// tail rule matches any local address.
    pub node_port_ips: Vec<IpAddr>,
    /// Number of `-A` rules read.
    pub rule_count: usize,
}

/// The input is not `iptables-save` output.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    /// A line other than a comment, a table header or `COMMIT` came before the first `*table`
    /// line: the text is something else (an `iptables -L` listing, an error message, ...).
    #[error(
        "{source_name} line {line}: expected iptables-save output (a `*nat` or `*filter` table header) \
         but found `{found}`; pass the output of `iptables-save`, not `iptables -L`"
    )]
    NotIptablesSave {
        source_name: String,
        line: usize,
        found: String,
    },
}

/// Parses `iptables-save` output; warnings name the source `iptables-save`.
pub fn parse(text: &str) -> Result<Parsed, ParseError> {
    parse_named(text, "iptables-save")
}

/// Parses `iptables-save` output; `source_name` (a file name or command) prefixes every warning.
pub fn parse_named(text: &str, source_name: &str) -> Result<Parsed, ParseError> {
    let dump = Dump::read(text, source_name)?;
    Ok(Builder::new(&dump).build())
}

// ---------------------------------------------------------------------------------------------
// Lines and tokens

/// The options the model reads, by name: field `i` is the first option of the rule whose name is
/// in `FIELDS[i]` (options are looked up by name, never by position), with its first argument
/// (the model reads no second one, e.g. the `dst,dst` of `--match-set NAME dst,dst`; the rule's
/// text keeps everything). A 50,000-endpoint dump has ~170,000 rules: the fields are spans of the
/// rule's text in the rule itself, so reading a rule allocates nothing.
#[cfg_attr(not(test), expect(dead_code, reason = "the table `field_mask` is tested against"))]
const FIELDS: [&[&str]; N_FIELDS] = [
    &["-j", "--jump", "-g", "--goto"],
    &["--comment"],
    &["-p", "--protocol"],
    &["--dport", "--destination-port"],
    &["-d", "--destination"],
    &["-s", "--source"],
    &["--dst-type"],
    &["-d", "-s"],
    &["--seconds"],
    &["--probability"],
    &["--to-destination"],
    &["-d"],
    &["--match-set"],
    &["--rcheck"],
    &["--every", "--nth"],
];
const N_FIELDS: usize = 15;
/// Fields from `N_ARGS` on are read for their presence only: no argument is kept.
const N_ARGS: usize = 11;
const TARGET: usize = 0;
const COMMENT: usize = 1;
const PROTO: usize = 2;
const DPORT: usize = 3;
const DST: usize = 4;
const SRC: usize = 5;
const DST_TYPE: usize = 6;
/// The first of `-d` and `-s` (the IPv6 check).
const D_OR_S: usize = 7;
/// `-d` as written (not `--destination`).
const SECONDS: usize = 8;
const PROBABILITY: usize = 9;
const TO_DESTINATION: usize = 10;
const D_SHORT: usize = 11;
const MATCH_SET: usize = 12;
const RCHECK: usize = 13;
const NTH: usize = 14;

/// The fields an option name belongs to (bit `i`: `FIELDS[i]`).
fn field_mask(name: &str) -> u16 {
    let bits: &[usize] = match name {
        "-j" | "--jump" | "-g" | "--goto" => &[TARGET],
        "--comment" => &[COMMENT],
        "-p" | "--protocol" => &[PROTO],
        "--dport" | "--destination-port" => &[DPORT],
        "-d" => &[DST, D_OR_S, D_SHORT],
        "--destination" => &[DST],
        "-s" => &[SRC, D_OR_S],
        "--source" => &[SRC],
        "--dst-type" => &[DST_TYPE],
        "--match-set" => &[MATCH_SET],
        "--rcheck" => &[RCHECK],
        "--seconds" => &[SECONDS],
        "--probability" => &[PROBABILITY],
        "--every" | "--nth" => &[NTH],
        "--to-destination" => &[TO_DESTINATION],
        _ => &[],
    };
    bits.iter().fold(0, |m, b| m | 1 << b)
}

/// An option as [`Rule::opt`] finds it.
#[derive(Debug, Clone, Copy)]
struct Opt<'r> {
    negated: bool,
    first: Option<&'r str>,
}

impl<'r> Opt<'r> {
    fn arg(&self) -> Option<&'r str> {
        self.first
    }
}

/// No argument.
const NO_SPAN: (u32, u32) = (u32::MAX, 0);

/// The options of one rule (see [`FIELDS`]).
#[derive(Debug, Clone)]
struct Fields {
    /// Bit `i`: the rule has field `i`.
    present: u16,
    /// Bit `i`: field `i`'s option is negated (`! -s ...`).
    negated: u16,
    /// Field `i`'s first argument: a byte range of the rule's text, or [`NO_SPAN`].
    args: [(u32, u32); N_ARGS],
    /// Arguments that unescaping changed, by field (rare: quoted words with `\"` or `\\`).
    unescaped: Option<Box<[(u8, String)]>>,
}

/// Words of a rule: whitespace separates, double quotes group, `\"` and `\\` escape. Yields
/// (start, end, quoted, escaped) byte ranges (a quoted word's range is inside its quotes), or an
/// error for an unterminated quote.
struct Words<'s> {
    bytes: &'s [u8],
    i: usize,
}

#[derive(Debug, Clone, Copy)]
struct Word {
    start: usize,
    end: usize,
    quoted: bool,
    escaped: bool,
}

impl Word {
    fn text<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let raw = &s[self.start..self.end];
        if self.escaped {
            Cow::Owned(unescape(raw))
        } else {
            Cow::Borrowed(raw)
        }
    }
}

impl<'s> Words<'s> {
    fn new(s: &'s str) -> Self {
        Words { bytes: s.as_bytes(), i: 0 }
    }
}

impl Iterator for Words<'_> {
    type Item = Result<Word, &'static str>;
    fn next(&mut self) -> Option<Self::Item> {
        let bytes = self.bytes;
        let mut i = self.i;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= bytes.len() {
            self.i = i;
            return None;
        }
        if bytes[i] == b'"' {
            let start = i + 1;
            let mut j = start;
            let mut escaped = false;
            while j < bytes.len() && bytes[j] != b'"' {
                if bytes[j] == b'\\' {
                    escaped = true;
                    j += 1;
                }
                j += 1;
            }
            if j >= bytes.len() {
                self.i = bytes.len();
                return Some(Err("unterminated quote"));
            }
            self.i = j + 1;
            Some(Ok(Word {
                start,
                end: j,
                quoted: true,
                escaped,
            }))
        } else {
            let start = i;
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                i += 1;
            }
            self.i = i;
            Some(Ok(Word {
                start,
                end: i,
                quoted: false,
                escaped: false,
            }))
        }
    }
}

/// Splits a rule into words: (word, was_quoted) pairs, or an error for an unterminated quote.
#[cfg(test)]
fn tokenize(s: &str) -> Result<Vec<(Cow<'_, str>, bool)>, &'static str> {
    Words::new(s).map(|w| w.map(|w| (w.text(s), w.quoted))).collect()
}

/// `\"` -> `"`, `\\` -> `\`; other escapes are kept as written.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(e @ ('"' | '\\')) => out.push(e),
                Some(e) => {
                    out.push('\\');
                    out.push(e);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// An unquoted word that starts an option: `-x`/`--xx`, but not a negative number (`-1`, `-inf`).
fn is_option_name(w: &str) -> bool {
    let b = w.as_bytes();
    if b.len() < 2 || b[0] != b'-' {
        return false;
    }
    // Only these can begin an `f64` after the sign: digits, `.`, `inf(inity)`, `nan`.
    if b[1].is_ascii_digit() || matches!(b[1], b'.' | b'i' | b'I' | b'n' | b'N') {
        return w.parse::<f64>().is_err();
    }
    true
}

/// Groups the words after `-A CHAIN` into [`Fields`]. An unquoted word starting with `-` (and
/// longer than `-`, not a number) starts an option; `!` negates the next one; the first other word
/// after an option is its argument. Errors: an unterminated quote.
fn options(s: &str, words: &mut Words<'_>) -> Result<Fields, &'static str> {
    let mut f = Fields {
        present: 0,
        negated: 0,
        args: [NO_SPAN; N_ARGS],
        unescaped: None,
    };
    let mut unescaped: Vec<(u8, String)> = Vec::new();
    let mut negate = false;
    // The fields the current option claimed, and whether it still waits for its argument.
    let mut current: u16 = 0;
    let mut open = false;
    for w in words {
        let w = w?;
        let word = &s[w.start..w.end];
        if !w.quoted && word == "!" {
            negate = true;
        } else if !w.quoted && is_option_name(word) {
            let m = field_mask(word) & !f.present;
            f.present |= m;
            if negate {
                f.negated |= m;
            }
            current = m;
            open = true;
            negate = false;
        } else if open {
            open = false;
            let mut m = current;
            while m != 0 {
                let i = m.trailing_zeros() as usize;
                m &= m - 1;
                if i >= N_ARGS {
                    continue;
                }
                f.args[i] = (w.start as u32, w.end as u32);
                if w.escaped {
                    unescaped.push((i as u8, unescape(word)));
                }
            }
        }
    }
    if !unescaped.is_empty() {
        f.unescaped = Some(unescaped.into_boxed_slice());
    }
    Ok(f)
}

/// One `-A` line.
#[derive(Debug, Clone)]
struct Rule<'a> {
    /// Position in `Dump::rules`.
    index: u32,
    line: u32,
    table: &'a str,
    chain: Cow<'a, str>,
    /// The rule as printed, without a `[pkts:bytes]` prefix.
    text: &'a str,
    fields: Fields,
    /// The chain of the same table that `target()` names, when it is a `KUBE-` chain of the dump
    /// ([`NO_CHAIN`] otherwise).
    target_id: u32,
}

impl<'a> Rule<'a> {
    /// Field `f` of [`FIELDS`].
    fn opt(&self, f: usize) -> Option<Opt<'_>> {
        let fl = &self.fields;
        if fl.present & (1 << f) == 0 {
            return None;
        }
        let (start, end) = fl.args.get(f).copied().unwrap_or(NO_SPAN);
        let first = if start == u32::MAX {
            None
        } else if let Some(u) = fl.unescaped.as_deref().and_then(|u| u.iter().find(|(i, _)| *i as usize == f)) {
            Some(u.1.as_str())
        } else {
            self.text.get(start as usize..end as usize)
        };
        Some(Opt {
            negated: fl.negated & (1 << f) != 0,
            first,
        })
    }
    fn arg(&self, f: usize) -> Option<&str> {
        self.opt(f).and_then(|o| o.first)
    }
    fn has(&self, f: usize) -> bool {
        self.fields.present & (1 << f) != 0
    }
    fn target(&self) -> Option<&str> {
        self.arg(TARGET)
    }
    fn comment(&self) -> Option<&str> {
        self.arg(COMMENT)
    }
    fn protocol(&self) -> Option<Protocol> {
        self.opt(PROTO)
            .filter(|o| !o.negated)
            .and_then(|o| o.arg())
            .and_then(Protocol::parse)
    }
    fn dport(&self) -> Option<u16> {
        self.arg(DPORT).and_then(|p| p.parse().ok())
    }
    /// `-d` without negation, as an address (`/32`, `/128` stripped; other prefixes refused).
    fn dst_ip(&self) -> Option<IpAddr> {
        self.opt(DST)
            .filter(|o| !o.negated)
            .and_then(|o| o.arg())
            .and_then(host_ip)
    }
    fn src(&self) -> Option<Opt<'_>> {
        self.opt(SRC)
    }
    fn dst_type_local(&self) -> bool {
        self.opt(DST_TYPE)
            .is_some_and(|o| !o.negated && o.arg() == Some("LOCAL"))
    }
    fn rule_ref(&self) -> RuleRef {
        RuleRef {
            source: RuleSource::Iptables,
            name: self.chain.to_string(),
            text: self.text.to_string(),
        }
    }
}

/// `10.0.0.1`, `10.0.0.1/32`, `fd00::1/128` -> the address.
fn host_ip(s: &str) -> Option<IpAddr> {
    match s.split_once('/') {
        None => s.parse().ok(),
        Some((ip, len)) => {
            let ip: IpAddr = ip.parse().ok()?;
            let full = if ip.is_ipv4() { "32" } else { "128" };
            (len == full).then_some(ip)
        }
    }
}

/// `10.0.0.1:80`, `[fd00::1]:80` -> (address, port).
fn host_port(s: &str) -> Option<(IpAddr, u16)> {
    let (ip, port) = s.rsplit_once(':')?;
    let ip = ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')).unwrap_or(ip);
    Some((ip.parse().ok()?, port.parse().ok()?))
}

/// `ip:port` as kube-proxy joins it for hashes (`net.JoinHostPort`).
fn join_host_port(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// The tables and chains of one dump.
#[derive(Debug, Default)]
struct Dump<'a> {
    source_name: String,
    rules: Vec<Rule<'a>>,
    /// table -> chain -> chain id. Declared chains have an entry.
    chains: Vec<(&'a str, FastMap<Cow<'a, str>, u32>)>,
    /// The rules of chain `id`, as indexes into `rules` in order:
    /// `chain_rules[chain_start[id]..chain_start[id + 1]]` (one array for all chains: a
    /// 10,000-Service dump has 70,000 chains).
    chain_start: Vec<u32>,
    chain_rules: Vec<u32>,
    warnings: Vec<String>,
}

/// No chain.
const NO_CHAIN: u32 = u32::MAX;

impl<'a> Dump<'a> {
    fn read(text: &'a str, source_name: &str) -> Result<Self, ParseError> {
        // Sized for kube-proxy's dumps (~100 bytes per rule), so the large arrays are not copied
        // as they grow; space reserved and never written costs no memory.
        let mut dump = Dump {
            source_name: source_name.to_string(),
            rules: Vec::with_capacity(text.len() / 90),
            ..Default::default()
        };
        let mut table: Option<&'a str> = None;
        let mut seen_table = false;
        // The chain id of each rule, and the chain of the previous rule.
        let mut rule_chain: Vec<u32> = Vec::with_capacity(text.len() / 90);
        let mut last: Option<(&'a str, Cow<'a, str>, u32)> = None;
        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(name) = line.strip_prefix('*') {
                if let Some(open) = &table {
                    dump.warn(
                        line_no,
                        format!("table {open} not closed by COMMIT before *{name} (truncated dump?)"),
                    );
                }
                table = Some(name.trim());
                seen_table = true;
                continue;
            }
            if line == "COMMIT" {
                if table.take().is_none() {
                    dump.warn(line_no, "COMMIT outside a table".to_string());
                }
                continue;
            }
            let Some(tbl) = table else {
                if !seen_table {
                    return Err(ParseError::NotIptablesSave {
                        source_name: source_name.to_string(),
                        line: line_no,
                        found: line.chars().take(80).collect(),
                    });
                }
                dump.warn(line_no, format!("line outside a table ignored: {line}"));
                continue;
            };
            if let Some(decl) = line.strip_prefix(':') {
                let name = decl.split_whitespace().next().unwrap_or("");
                if name.is_empty() {
                    dump.warn(line_no, format!("chain declaration without a name: {line}"));
                } else {
                    dump.chain_id(tbl, Cow::Borrowed(name));
                }
                continue;
            }
            // `[pkts:bytes] -A ...` with iptables-save -c.
            let body = match line.strip_prefix('[') {
                Some(rest) => match rest.split_once(']') {
                    Some((_, after)) => after.trim_start(),
                    None => {
                        dump.warn(line_no, format!("unterminated counters: {line}"));
                        continue;
                    }
                },
                None => line,
            };
            let mut words = Words::new(body);
            let chain = match (words.next(), words.next()) {
                (Some(Ok(a)), Some(Ok(chain)))
                    if !a.quoted && matches!(&body[a.start..a.end], "-A" | "--append") =>
                {
                    chain.text(body)
                }
                (first, second) => {
                    // An unterminated quote anywhere on the line is the error to report.
                    let msg = match [first, second].into_iter().flatten().chain(words).find_map(Result::err) {
                        Some(e) => format!("{e}: {line}"),
                        None => format!("not a rule (expected `-A CHAIN ...`): {line}"),
                    };
                    dump.warn(line_no, msg);
                    continue;
                }
            };
            let fields = match options(body, &mut words) {
                Ok(f) => f,
                Err(e) => {
                    dump.warn(line_no, format!("{e}: {line}"));
                    continue;
                }
            };
            let index = dump.rules.len();
            // Rules of one chain come together in iptables-save output: one lookup per run.
            let id = match &last {
                Some((t, c, id)) if *t == tbl && *c == chain => *id,
                _ => {
                    let (id, declared) = dump.chain_id(tbl, chain.clone());
                    if !declared {
                        dump.warn(
                            line_no,
                            format!("rule for chain {chain}, which the dump does not declare"),
                        );
                    }
                    last = Some((tbl, chain.clone(), id));
                    id
                }
            };
            rule_chain.push(id);
            dump.rules.push(Rule {
                index: index as u32,
                line: line_no as u32,
                table: tbl,
                chain,
                text: body,
                fields,
                target_id: NO_CHAIN,
            });
        }
        dump.index_chains(&rule_chain);
        if let Some(open) = table {
            dump.warnings.push(format!(
                "{source_name}: table {open} not closed by COMMIT (truncated dump?)"
            ));
        }
        Ok(dump)
    }

    fn warn(&mut self, line: usize, msg: String) {
        self.warnings.push(format!("{} line {line}: {msg}", self.source_name));
    }

    /// The id of `chain` in `table`, added when new; `true` when it was there already.
    fn chain_id(&mut self, table: &'a str, chain: Cow<'a, str>) -> (u32, bool) {
        let next = self.chain_start.len() as u32;
        let chains = match self.chains.iter().position(|(t, _)| *t == table) {
            Some(i) => &mut self.chains[i].1,
            None => {
                self.chains.push((table, FastMap::default()));
                &mut self.chains.last_mut().expect("pushed").1
            }
        };
        if let Some(&id) = chains.get(chain.as_ref()) {
            return (id, true);
        }
        chains.insert(chain, next);
        // Counts for now; `index_chains` turns them into offsets.
        self.chain_start.push(0);
        (next, false)
    }

    /// Lays out the rules of each chain (`rule_chain`: the chain id of each rule) and resolves the
    /// jumps to kube-proxy's chains.
    fn index_chains(&mut self, rule_chain: &[u32]) {
        let n = self.chain_start.len();
        let mut start = vec![0u32; n + 1];
        for &c in rule_chain {
            start[c as usize + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut pos = start.clone();
        let mut rules = vec![0u32; rule_chain.len()];
        for (i, &c) in rule_chain.iter().enumerate() {
            rules[pos[c as usize] as usize] = i as u32;
            pos[c as usize] += 1;
        }
        self.chain_start = start;
        self.chain_rules = rules;
        for i in 0..self.rules.len() {
            let r = &self.rules[i];
            let id = match r.target() {
                Some(t) if t.starts_with("KUBE-") => self.chain_id_of(r.table, t),
                _ => None,
            };
            self.rules[i].target_id = id.unwrap_or(NO_CHAIN);
        }
    }

    fn chain_id_of(&self, table: &str, chain: &str) -> Option<u32> {
        let (_, chains) = self.chains.iter().find(|(t, _)| *t == table)?;
        chains.get(chain).copied()
    }

    /// The rule indexes of chain `id`, in order.
    fn rules_by_id(&self, id: u32) -> &[u32] {
        let (a, b) = (self.chain_start[id as usize], self.chain_start[id as usize + 1]);
        &self.chain_rules[a as usize..b as usize]
    }

    fn chain(&self, table: &str, chain: &str) -> Option<&[u32]> {
        self.chain_id_of(table, chain).map(|id| self.rules_by_id(id))
    }

    fn exists(&self, table: &str, chain: &str) -> bool {
        self.chain(table, chain).is_some()
    }

    /// Chain names of a table.
    fn chain_names(&self, table: &str) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .filter(move |(t, _)| *t == table)
            .flat_map(|(_, m)| m.keys().map(|k| k.as_ref()))
    }
}

// ---------------------------------------------------------------------------------------------
// Comments

/// What a kube-proxy comment says about the rule carrying it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CommentKind {
    ClusterIp,
    ExternalIp,
    LoadBalancerIp,
    NoEndpoints,
    NoLocalEndpoints,
    HealthCheckNodePort,
    /// `N -> ip:port` (the payload is kept in the rule).
    ToEndpoint,
    /// The EXT chain's "... for N external destinations" rules.
    ExternalDestinations,
    /// KUBE-FW's fall-through rule and KUBE-PROXY-FIREWALL's drop.
    Firewall,
    /// Just `N` (KUBE-SEP rules, KUBE-NODEPORTS).
    Plain,
}

/// Splits a kube-proxy comment into the service port name `N` and what the rule is for.
fn parse_comment(c: &str) -> Option<(&str, CommentKind)> {
    const SUFFIXES: &[(&str, CommentKind)] = &[
        (" cluster IP", CommentKind::ClusterIp),
        (" external IP", CommentKind::ExternalIp),
        (" loadbalancer IP", CommentKind::LoadBalancerIp),
        (" has no local endpoints", CommentKind::NoLocalEndpoints),
        (" has no endpoints", CommentKind::NoEndpoints),
        (" health check node port", CommentKind::HealthCheckNodePort),
        (" external destinations", CommentKind::ExternalDestinations),
    ];
    let n = if let Some((n, _)) = c.split_once(" -> ") {
        return valid_port_name(n).then_some((n, CommentKind::ToEndpoint));
    } else if let Some(rest) = c.strip_prefix("other traffic to ") {
        return rest
            .strip_suffix(" will be dropped by KUBE-PROXY-FIREWALL")
            .filter(|n| valid_port_name(n))
            .map(|n| (n, CommentKind::Firewall));
    } else if let Some((n, _)) = c.split_once(" traffic not accepted by ") {
        return valid_port_name(n).then_some((n, CommentKind::Firewall));
    } else {
        c
    };
    for (suffix, kind) in SUFFIXES {
        if let Some(mut n) = n.strip_suffix(suffix) {
            if *kind == CommentKind::ExternalDestinations {
                n = [
                    "pod traffic for ",
                    "masquerade LOCAL traffic for ",
                    "route LOCAL traffic for ",
                    "masquerade traffic for ",
                ]
                .iter()
                .find_map(|p| n.strip_prefix(p))?;
            }
            // Old kube-proxy wrote "ns/svc: has no local endpoints".
            let n = n.strip_suffix(':').unwrap_or(n);
            return valid_port_name(n).then_some((n, *kind));
        }
    }
    valid_port_name(n).then_some((n, CommentKind::Plain))
}

/// `ns/name` or `ns/name:port`, no spaces.
fn valid_port_name(n: &str) -> bool {
    !n.is_empty()
        && !n.contains(char::is_whitespace)
        && n.split_once('/')
            .is_some_and(|(ns, rest)| !ns.is_empty() && !rest.is_empty())
}

/// `ns/name:port` -> (ServiceRef, port name).
pub(crate) fn split_port_name(n: &str) -> (ServiceRef, String) {
    let (namespace, rest) = n.split_once('/').unwrap_or(("", n));
    let (name, port) = rest.split_once(':').unwrap_or((rest, ""));
    (
        ServiceRef {
            namespace: namespace.to_string(),
            name: name.to_string(),
        },
        port.to_string(),
    )
}

// ---------------------------------------------------------------------------------------------
// Building the model

/// A service port: `N` and protocol.
type PortKey = (Rc<str>, Protocol);

const SERVICE_PREFIXES: [&str; 4] = ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-"];
/// Chains kube-proxy (or kubelet) writes with fixed content; their rules are not modelled.
const STATIC_CHAINS: &[&str] = &[
    "KUBE-POSTROUTING",
    "KUBE-MARK-MASQ",
    "KUBE-MARK-DROP",
    "KUBE-FORWARD",
    "KUBE-FIREWALL",
    "KUBE-PROXY-CANARY",
    "KUBE-KUBELET-CANARY",
    "KUBE-IPTABLES-HINT",
    // IPVS mode (§2.3): ipset-driven, no per-service content.
    "KUBE-LOAD-BALANCER",
    "KUBE-NODE-PORT",
    "KUBE-SOURCE-RANGES-FIREWALL",
    "KUBE-IPVS-FILTER",
    "KUBE-IPVS-OUT-FILTER",
];
/// Targets that are not chains.
const BUILTIN_TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "DNAT",
    "SNAT",
    "MASQUERADE",
    "MARK",
    "CONNMARK",
    "LOG",
    "NFLOG",
    "NOTRACK",
    "CT",
    "TPROXY",
    "REDIRECT",
    "TCPMSS",
    "CHECKSUM",
    "NFQUEUE",
    "QUEUE",
    "TRACE",
    "AUDIT",
    "SET",
    "CLASSIFY",
    "DSCP",
    "TOS",
    "TTL",
];

fn hash_suffix(chain: &str) -> Option<&str> {
    SERVICE_PREFIXES.iter().find_map(|p| chain.strip_prefix(p))
}

/// The protocol whose recomputed service hash equals `suffix`.
fn protocol_by_hash(n: &str, suffix: &str) -> Option<Protocol> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .find(|p| names::service_hash_is(n, p.as_str(), suffix))
}

/// One dispatch rule of a KUBE-SVC/KUBE-SVL chain.
struct Dispatch<'a> {
    rule: &'a Rule<'a>,
    sep: &'a str,
    probability: Option<f64>,
}

struct Builder<'d> {
    dump: &'d Dump<'d>,
    understood: Vec<bool>,
    warnings: Vec<String>,
    /// Service-chain hash suffix -> port.
    owners: FastMap<String, PortKey>,
    /// Keyed by `ns/name`, looked up without allocating (called per rule).
    services: FastMap<String, Service>,
    v6: bool,
    node_port_any: bool,
    node_port_ips: Vec<IpAddr>,
    /// By chain id: a service chain jumps to it.
    referenced_seps: Vec<bool>,
    mode_iptables: bool,
    mode_ipvs: bool,
}

impl<'d> Builder<'d> {
    fn new(dump: &'d Dump<'d>) -> Self {
        let v6 = dump
            .rules
            .iter()
            .any(|r| r.arg(D_OR_S).is_some_and(|a| a.contains(':')));
        Self {
            dump,
            understood: vec![false; dump.rules.len()],
            warnings: dump.warnings.clone(),
            owners: FastMap::default(),
            services: FastMap::default(),
            v6,
            node_port_any: false,
            node_port_ips: Vec::new(),
            referenced_seps: vec![false; dump.chain_start.len()],
            mode_iptables: false,
            mode_ipvs: false,
        }
    }

    fn warn_rule(&mut self, rule: &Rule<'_>, msg: impl std::fmt::Display) {
        self.warnings
            .push(format!("{} line {}: {msg}", self.dump.source_name, rule.line));
    }

    fn ok(&mut self, rule: &Rule<'_>) {
        self.understood[rule.index as usize] = true;
    }

    /// The rules of a chain, in order (borrowing the dump, not the builder).
    fn rules_of(&self, table: &str, chain: &str) -> impl Iterator<Item = &'d Rule<'d>> + use<'d> {
        let dump: &'d Dump<'d> = self.dump;
        dump.chain(table, chain)
            .unwrap_or(&[])
            .iter()
            .map(move |&i| &dump.rules[i as usize])
    }

    /// The rules of chain `id`.
    fn rules_by_id(&self, id: u32) -> impl Iterator<Item = &'d Rule<'d>> + use<'d> {
        let dump: &'d Dump<'d> = self.dump;
        dump.rules_by_id(id).iter().map(move |&i| &dump.rules[i as usize])
    }

    fn service<'n>(&mut self, n: &'n str) -> (&mut Service, &'n str) {
        let (key, port) = n.split_once(':').unwrap_or((n, ""));
        if !self.services.contains_key(key) {
            let (sref, _) = split_port_name(n);
            self.services.insert(key.to_string(), Service::new(sref));
        }
        let svc = self.services.get_mut(key).expect("inserted above");
        svc.rules.present = true;
        (svc, port)
    }

    fn add_frontend(
        &mut self,
        n: &str,
        kind: FrontendKind,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
        rule: Option<RuleRef>,
    ) {
        let (svc, port_name) = self.service(n);
        if let Some(f) = svc
            .frontends
            .iter_mut()
            .find(|f| f.ip == ip && f.port == port && f.protocol == protocol)
        {
            // A filter REJECT/DROP for an address the nat table already named keeps the nat rule.
            if f.rule.is_none() {
                f.rule = rule;
            }
            return;
        }
        svc.frontends.push(Frontend {
            kind,
            ip,
            port,
            protocol,
            port_name: port_name.to_string(),
            rule,
        });
    }

    fn add_chain(&mut self, n: &str, chain: &str) {
        let (svc, _) = self.service(n);
        if !svc.rules.chains.iter().any(|c| c == chain) {
            svc.rules.chains.push(chain.to_string());
        }
    }

    fn problem(&mut self, n: &str, msg: String) {
        let (svc, _) = self.service(n);
        if !svc.rules.problems.contains(&msg) {
            svc.rules.problems.push(msg);
        }
    }

    fn any_ip(&self) -> IpAddr {
        if self.v6 {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
    }

    fn build(mut self) -> Parsed {
        self.find_owners();
        self.read_nat_services();
        self.read_nat_nodeports();
        self.read_service_chains();
        self.read_filter();
        self.check_jumps();
        self.check_unreferenced_seps();
        self.report_not_understood();

        let dump = self.dump;
        let rules_present = dump.exists("nat", "KUBE-SERVICES");
        let mode_iptables = self.mode_iptables
            || dump
                .chain_names("nat")
                .any(|c| c.starts_with("KUBE-SVC-") || c.starts_with("KUBE-SEP-"));
        let mode_hint = if mode_iptables {
            Some(ProxyMode::Iptables)
        } else if self.mode_ipvs {
            Some(ProxyMode::Ipvs)
        } else if rules_present {
            // KUBE-SERVICES exists but holds nothing of either mode: an iptables node without services.
            Some(ProxyMode::Iptables)
        } else {
            None
        };
        Parsed {
            services: {
                let mut v: Vec<Service> = self.services.into_values().collect();
                v.sort_by(|a, b| a.service.cmp(&b.service));
                v
            },
            warnings: self.warnings,
            rules_present,
            mode_hint,
            node_port_ips: self.node_port_ips,
            rule_count: dump.rules.len(),
        }
    }

    /// Learns which service port each service-chain hash belongs to, from every comment that names
    /// one (KUBE-SERVICES, KUBE-NODEPORTS, the chains themselves, KUBE-PROXY-FIREWALL).
    fn find_owners(&mut self) {
        let dump = self.dump;
        for rule in &dump.rules {
            let Some((n, kind)) = rule.comment().and_then(parse_comment) else {
                continue;
            };
            // The chain the comment is about: the jump target from KUBE-SERVICES/KUBE-NODEPORTS, the
            // chain itself inside a service chain, the KUBE-FW chain named by KUBE-PROXY-FIREWALL.
            let mut candidates: Vec<&str> = Vec::new();
            if let Some(t) = rule.target() {
                candidates.push(t);
            }
            candidates.push(&rule.chain);
            if kind == CommentKind::Firewall
                && let Some(fw) = rule
                    .comment()
                    .and_then(|c| c.split_whitespace().find(|w| w.starts_with("KUBE-FW-")))
            {
                candidates.push(fw);
            }
            for chain in candidates {
                let Some(suffix) = hash_suffix(chain) else { continue };
                if self.owners.contains_key(suffix) {
                    continue;
                }
                let by_hash = protocol_by_hash(n, suffix);
                let proto = by_hash.or_else(|| rule.protocol());
                if let Some(p) = proto {
                    if by_hash.is_none() {
                        self.warn_rule(
                            rule,
                            format!("{chain} does not carry kube-proxy's hash for \"{n}\" {p} (kube-proxy older than 1.20?); trusting the comment"),
                        );
                    }
                    self.owners.insert(suffix.to_string(), (Rc::from(n), p));
                }
            }
        }
    }

    /// nat KUBE-SERVICES: ClusterIP, external IP and load-balancer IP capture rules, the NodePort
    /// tail rule, and IPVS mode's set rules.
    fn read_nat_services(&mut self) {
        for rule in self.rules_of("nat", "KUBE-SERVICES") {
            let target = rule.target().unwrap_or("");
            if target == "KUBE-NODEPORTS" {
                if rule.dst_type_local() {
                    self.node_port_any = true;
                } else if let Some(ip) = rule.dst_ip() {
                    self.node_port_ips.push(ip);
                } else {
                    self.warn_rule(rule, "NodePort tail rule matches neither LOCAL addresses nor a node IP");
                }
                self.ok(rule);
                continue;
            }
            if rule.has(MATCH_SET)
                || (target == "RETURN" && rule.src().is_some())
                || target == "KUBE-MARK-MASQ"
                || target == "ACCEPT"
            {
                // IPVS mode (§2.3): ipset rules and the loopback RETURN name no Service. (Old
                // iptables-mode kube-proxy also put "cluster IP" masquerade rules here.)
                self.mode_ipvs |= rule.has(MATCH_SET);
                self.ok(rule);
                continue;
            }
            let Some(suffix) = hash_suffix(target) else { continue };
            self.mode_iptables = true;
            let comment = rule.comment().and_then(parse_comment);
            let Some((n, proto)) = self.owners.get(suffix).cloned() else {
                self.warn_rule(
                    rule,
                    format!("cannot tell which Service {target} belongs to (no comment names it)"),
                );
                continue;
            };
            let kind = match comment.map(|c| c.1) {
                Some(CommentKind::ExternalIp) => FrontendKind::ExternalIp,
                Some(CommentKind::LoadBalancerIp) => FrontendKind::LoadBalancer,
                Some(CommentKind::ClusterIp) => FrontendKind::ClusterIp,
                // No comment: the target tells (SVC/SVL: ClusterIP; EXT/FW: external or LB).
                _ if target.starts_with("KUBE-SVC-") || target.starts_with("KUBE-SVL-") => FrontendKind::ClusterIp,
                _ if target.starts_with("KUBE-FW-") => FrontendKind::LoadBalancer,
                _ => FrontendKind::ExternalIp,
            };
            let (Some(ip), Some(port)) = (rule.dst_ip(), rule.dport()) else {
                self.warn_rule(
                    rule,
                    format!("service rule without a destination address and port: {}", rule.text),
                );
                continue;
            };
            let proto = rule.protocol().unwrap_or(proto);
            self.add_frontend(&n, kind, ip, port, proto, Some(rule.rule_ref()));
            self.ok(rule);
        }
    }

    /// nat KUBE-NODEPORTS: one rule per NodePort (plus the localhost variant).
    fn read_nat_nodeports(&mut self) {
        let addrs: Vec<IpAddr> = if self.node_port_any || self.node_port_ips.is_empty() {
            vec![self.any_ip()]
        } else {
            self.node_port_ips.clone()
        };
        let rules: Vec<&Rule<'_>> = self.rules_of("nat", "KUBE-NODEPORTS").collect();
        if !rules.is_empty() && !self.node_port_any && self.node_port_ips.is_empty() {
            self.warnings.push(format!(
                "{}: nat KUBE-SERVICES has no rule jumping to KUBE-NODEPORTS (it must be the last rule): NodePorts are not reachable",
                self.dump.source_name
            ));
        }
        for rule in rules {
            let target = rule.target().unwrap_or("");
            let Some(suffix) = hash_suffix(target) else { continue };
            self.mode_iptables = true;
            let Some((n, proto)) = self.owners.get(suffix).cloned() else {
                self.warn_rule(
                    rule,
                    format!("cannot tell which Service {target} belongs to (no comment names it)"),
                );
                continue;
            };
            let Some(port) = rule.dport() else {
                self.warn_rule(rule, "NodePort rule without --dport");
                continue;
            };
            let proto = rule.protocol().unwrap_or(proto);
            match rule.dst_ip() {
                // Localhost NodePorts: `-d 127.0.0.0/8` does not parse as a host; show 127.0.0.1.
                None if rule.has(D_SHORT) => {
                    if !self.node_port_any {
                        self.add_frontend(
                            &n,
                            FrontendKind::NodePort,
                            IpAddr::V4(Ipv4Addr::LOCALHOST),
                            port,
                            proto,
                            Some(rule.rule_ref()),
                        );
                    }
                }
                Some(ip) => self.add_frontend(&n, FrontendKind::NodePort, ip, port, proto, Some(rule.rule_ref())),
                None => {
                    for ip in &addrs {
                        self.add_frontend(&n, FrontendKind::NodePort, *ip, port, proto, Some(rule.rule_ref()));
                    }
                }
            }
            self.ok(rule);
        }
    }

    /// KUBE-SVC/SVL/EXT/FW chains and the KUBE-SEP chains they dispatch to.
    fn read_service_chains(&mut self) {
        let dump = self.dump;
        let mut suffixes: Vec<&str> = dump.chain_names("nat").filter_map(hash_suffix).collect();
        suffixes.sort_unstable();
        suffixes.dedup();
        for suffix in suffixes {
            let Some((n, proto)) = self.owners.get(suffix).cloned() else {
                let chains: Vec<String> = SERVICE_PREFIXES
                    .iter()
                    .map(|p| format!("{p}{suffix}"))
                    .filter(|c| dump.exists("nat", c))
                    .collect();
                self.warnings.push(format!(
                    "{}: chains {} belong to no Service this dump names (stale after a partial sync, or not kube-proxy's)",
                    dump.source_name,
                    chains.join(", ")
                ));
                continue;
            };
            let svc_chain = format!("KUBE-SVC-{suffix}");
            let svl_chain = format!("KUBE-SVL-{suffix}");
            let ext_chain = format!("KUBE-EXT-{suffix}");
            let fw_chain = format!("KUBE-FW-{suffix}");
            let has_svl = dump.exists("nat", &svl_chain);
            let mut cluster: Vec<(IpAddr, u16)> = Vec::new();
            if dump.exists("nat", &svc_chain) {
                self.add_chain(&n, &svc_chain);
                cluster = self.read_dispatch_chain(&n, proto, &svc_chain, if has_svl { Some(false) } else { None });
            }
            if has_svl {
                self.add_chain(&n, &svl_chain);
                let local = self.read_dispatch_chain(&n, proto, &svl_chain, Some(true));
                // Endpoints of the cluster chain that the local chain lacks are remote.
                let (svc, port_name) = self.service(&n);
                for e in svc
                    .endpoints
                    .iter_mut()
                    .filter(|e| e.port_name == port_name && e.protocol == proto)
                {
                    if cluster.contains(&(e.ip, e.port)) && !local.contains(&(e.ip, e.port)) {
                        e.local = Some(false);
                    }
                }
            }
            if dump.exists("nat", &ext_chain) {
                self.add_chain(&n, &ext_chain);
                for rule in self.rules_of("nat", &ext_chain) {
                    match rule.target() {
                        Some("KUBE-MARK-MASQ") => self.ok(rule),
                        Some(t) if t == svc_chain || t == svl_chain => self.ok(rule),
                        _ => {}
                    }
                }
            }
            if dump.exists("nat", &fw_chain) {
                self.add_chain(&n, &fw_chain);
                for rule in self.rules_of("nat", &fw_chain) {
                    let target = rule.target();
                    if target == Some(ext_chain.as_str()) {
                        if let Some(src) = rule.src().filter(|o| !o.negated).and_then(|o| o.arg()).map(str::to_string) {
                            let (svc, _) = self.service(&n);
                            if !svc.rules.source_ranges.contains(&src) {
                                svc.rules.source_ranges.push(src);
                            }
                        }
                        self.ok(rule);
                    } else if target.is_none() {
                        // "other traffic to N will be dropped by KUBE-PROXY-FIREWALL": falls through.
                        self.ok(rule);
                    }
                }
            }
        }
    }

    /// Reads one KUBE-SVC/KUBE-SVL chain: masquerade rule, affinity rules, probability dispatch,
    /// then each KUBE-SEP chain. Returns the endpoints found, in dispatch order.
    fn read_dispatch_chain(
        &mut self,
        n: &str,
        proto: Protocol,
        chain: &str,
        local: Option<bool>,
    ) -> Vec<(IpAddr, u16)> {
        let mut dispatch: Vec<Dispatch<'d>> = Vec::new();
        let mut affinity_seps: Vec<&'d str> = Vec::new();
        for rule in self.rules_of("nat", chain) {
            let target = rule.target().unwrap_or("");
            if target == "KUBE-MARK-MASQ" {
                self.ok(rule);
            } else if target.starts_with("KUBE-SEP-") {
                if rule.has(RCHECK) {
                    let secs = rule.arg(SECONDS).and_then(|s| s.parse::<u32>().ok());
                    let (svc, _) = self.service(n);
                    svc.rules.affinity_timeout_secs = secs.or(svc.rules.affinity_timeout_secs);
                    affinity_seps.push(target);
                } else {
                    let probability = rule.arg(PROBABILITY).and_then(|p| p.parse::<f64>().ok());
                    if rule.has(PROBABILITY) && probability.is_none() {
                        self.warn_rule(rule, "unreadable --probability");
                    }
                    if rule.has(NTH) {
                        self.warn_rule(
                            rule,
                            "statistic --mode nth is not kube-proxy's; treated as unconditional",
                        );
                    }
                    dispatch.push(Dispatch {
                        rule,
                        sep: target,
                        probability,
                    });
                }
                self.ok(rule);
            }
        }
        if dispatch.is_empty() {
            // kube-proxy writes REJECT rules instead of an empty chain: this one lets traffic
            // through untranslated.
            self.problem(
                n,
                format!("{chain} jumps to no KUBE-SEP chain: connections sent to it are not translated"),
            );
        }
        self.check_probabilities(n, chain, &dispatch);
        {
            // One endpoint and one chain per dispatch rule (the chain was added by the caller).
            let (svc, _) = self.service(n);
            svc.endpoints.reserve(dispatch.len());
            svc.rules.chains.reserve(dispatch.len());
        }
        for sep in &affinity_seps {
            if !dispatch.iter().any(|d| &d.sep == sep) {
                self.problem(
                    n,
                    format!("{chain}: affinity rule for {sep}, which the chain never dispatches to"),
                );
            }
        }
        // The chance each endpoint is chosen: p_i times the chance no earlier rule matched.
        let mut remaining = 1.0_f64;
        let mut found = Vec::new();
        let mut seen = FastSet::default();
        for d in &dispatch {
            let p = d.probability.unwrap_or(1.0);
            let weight = remaining * p;
            remaining *= 1.0 - p;
            if !seen.insert(d.sep) {
                self.problem(n, format!("{chain} jumps to {} more than once", d.sep));
                continue;
            }
            if let Some(ep) = self.read_sep(n, proto, d.sep, d.rule, weight, local) {
                found.push(ep);
            }
        }
        found
    }

    fn check_probabilities(&mut self, n: &str, chain: &str, dispatch: &[Dispatch<'_>]) {
        let count = dispatch.len();
        for (i, d) in dispatch.iter().enumerate() {
            let last = i + 1 == count;
            let expected = 1.0 / (count - i) as f64;
            match (d.probability, last) {
                (None, false) => self.problem(
                    n,
                    format!(
                        "{chain}: rule {} of {count} (to {}) has no probability, so the {} endpoint(s) after it are never chosen",
                        i + 1,
                        d.sep,
                        count - i - 1
                    ),
                ),
                (Some(p), false) if (p - expected).abs() > 1e-4 => self.problem(
                    n,
                    format!(
                        "{chain}: rule {} of {count} (to {}) has probability {p}, expected 1/{} = {expected:.5}: the endpoint list and the probabilities disagree (an endpoint missing or added?)",
                        i + 1,
                        d.sep,
                        count - i
                    ),
                ),
                (Some(p), true) if (p - 1.0).abs() > 1e-4 => self.problem(
                    n,
                    format!(
                        "{chain}: the last rule (to {}) has probability {p}, so some connections fall through the chain without DNAT",
                        d.sep
                    ),
                ),
                _ => {}
            }
        }
    }

    /// Reads a KUBE-SEP chain into an endpoint of `n`.
    fn read_sep(
        &mut self,
        n: &str,
        proto: Protocol,
        sep: &'d str,
        from: &Rule<'_>,
        weight: f64,
        local: Option<bool>,
    ) -> Option<(IpAddr, u16)> {
        // `from` is the nat rule jumping to `sep`: its target is resolved already.
        let id = from.target_id;
        if id == NO_CHAIN {
            // Reported by check_jumps.
            return None;
        }
        self.referenced_seps[id as usize] = true;
        self.add_chain(n, sep);
        let mut dnat: Option<(&Rule<'_>, IpAddr, u16)> = None;
        for rule in self.rules_by_id(id) {
            match rule.target() {
                Some("KUBE-MARK-MASQ") => self.ok(rule),
                Some("DNAT") => match rule.arg(TO_DESTINATION).and_then(host_port) {
                    Some((ip, port)) => {
                        if dnat.is_some() {
                            self.warn_rule(rule, format!("{sep} has a second DNAT rule; using the first"));
                        } else {
                            dnat = Some((rule, ip, port));
                        }
                        self.ok(rule);
                    }
                    None => self.warn_rule(rule, format!("{sep}: DNAT without a readable --to-destination ip:port")),
                },
                _ => {}
            }
        }
        let Some((rule, ip, port)) = dnat else {
            self.problem(
                n,
                format!("{sep} has no DNAT rule: connections sent to it are not translated"),
            );
            return None;
        };
        let hostport = join_host_port(ip, port);
        // The dispatch comment `N -> ip:port` must name the DNAT target.
        if let Some(c) = from.comment()
            && let Some((_, to)) = c.split_once(" -> ")
            && to != hostport
        {
            self.problem(
                n,
                format!("{}: comment says {to} but {sep} DNATs to {hostport}", from.chain),
            );
        }
        if !names::endpoint_chain_is(n, proto.as_str(), &hostport, sep) {
            let expected = names::endpoint_chain(n, proto.as_str(), &hostport);
            self.warn_rule(
                rule,
                format!("{sep} is not kube-proxy's chain name for \"{n}\" {proto} -> {hostport} (expected {expected})"),
            );
        }
        let (svc, port_name) = self.service(n);
        let rule_ref = rule.rule_ref();
        match svc
            .endpoints
            .iter_mut()
            .find(|e| e.ip == ip && e.port == port && e.protocol == proto && e.port_name == port_name)
        {
            Some(e) => {
                if local == Some(true) {
                    e.local = Some(true);
                }
            }
            None => svc.endpoints.push(Endpoint {
                ip,
                port,
                protocol: proto,
                port_name: port_name.to_string(),
                in_rules: true,
                in_api: None,
                ready: None,
                local: if local == Some(true) { Some(true) } else { None },
                node: None,
                pod: None,
                weight: if local == Some(true) { None } else { Some(weight) },
                rule: Some(rule_ref),
            }),
        }
        Some((ip, port))
    }

    /// filter KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-PROXY-FIREWALL, KUBE-NODEPORTS.
    fn read_filter(&mut self) {
        for chain in ["KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES"] {
            for rule in self.rules_of("filter", chain) {
                let Some((n, kind)) = rule.comment().and_then(parse_comment) else {
                    if rule.has(MATCH_SET) {
                        self.mode_ipvs = true;
                        self.ok(rule);
                    }
                    continue;
                };
                if !matches!(kind, CommentKind::NoEndpoints | CommentKind::NoLocalEndpoints) {
                    continue;
                }
                let Some(proto) = rule.protocol() else {
                    self.warn_rule(rule, "no-endpoints rule without -p");
                    continue;
                };
                let Some(port) = rule.dport() else {
                    self.warn_rule(rule, "no-endpoints rule without --dport");
                    continue;
                };
                self.mode_iptables = true;
                let rr = rule.rule_ref();
                {
                    let (svc, _) = self.service(n);
                    if kind == CommentKind::NoEndpoints {
                        svc.rules.no_endpoints.push(rr.clone());
                    } else {
                        svc.rules.no_local_endpoints.push(rr.clone());
                    }
                }
                if let Some(ip) = rule.dst_ip() {
                    // KUBE-SERVICES holds ClusterIPs; KUBE-EXTERNAL-SERVICES external and LB IPs,
                    // which these rules do not tell apart: an address the nat table named keeps its kind.
                    let kind = if chain == "KUBE-SERVICES" {
                        FrontendKind::ClusterIp
                    } else {
                        FrontendKind::ExternalIp
                    };
                    self.add_frontend(n, kind, ip, port, proto, Some(rr));
                } else if rule.dst_type_local() {
                    let addrs: Vec<IpAddr> = if self.node_port_any || self.node_port_ips.is_empty() {
                        vec![self.any_ip()]
                    } else {
                        self.node_port_ips.clone()
                    };
                    for ip in addrs {
                        self.add_frontend(n, FrontendKind::NodePort, ip, port, proto, Some(rr.clone()));
                    }
                }
                self.ok(rule);
            }
        }
        for rule in self.rules_of("filter", "KUBE-PROXY-FIREWALL") {
            if let Some((n, CommentKind::Firewall)) = rule.comment().and_then(parse_comment) {
                self.add_chain(n, "KUBE-PROXY-FIREWALL");
                self.ok(rule);
            } else if rule.has(MATCH_SET) {
                self.ok(rule);
            }
        }
        for rule in self.rules_of("filter", "KUBE-NODEPORTS") {
            if let Some((_, CommentKind::HealthCheckNodePort)) = rule.comment().and_then(parse_comment) {
                self.ok(rule);
            }
        }
    }

    /// Every jump to a KUBE-* chain must land on a chain the same table declares.
    fn check_jumps(&mut self) {
        let dump = self.dump;
        for rule in &dump.rules {
            let Some(target) = rule.target() else { continue };
            if !target.starts_with("KUBE-") || BUILTIN_TARGETS.contains(&target) || rule.target_id != NO_CHAIN {
                continue;
            }
            let msg = format!(
                "{} jumps to {target}, which does not exist in the {} table: {}",
                rule.chain, rule.table, rule.text
            );
            // Attribute it to the Service owning the jumping chain, the target, or the comment.
            let owner = hash_suffix(&rule.chain)
                .or_else(|| hash_suffix(target))
                .and_then(|s| self.owners.get(s).map(|o| o.0.to_string()))
                .or_else(|| rule.comment().and_then(parse_comment).map(|(n, _)| n.to_string()));
            match owner {
                Some(n) => self.problem(&n, msg),
                None => self.warn_rule(rule, msg),
            }
            self.ok(rule);
        }
    }

    fn check_unreferenced_seps(&mut self) {
        let dump = self.dump;
        let mut stale: Vec<(&str, u32)> = dump
            .chains
            .iter()
            .filter(|(t, _)| *t == "nat")
            .flat_map(|(_, m)| m.iter())
            .filter(|(c, id)| c.starts_with("KUBE-SEP-") && !self.referenced_seps[**id as usize])
            .map(|(c, id)| (c.as_ref(), *id))
            .collect();
        stale.sort_unstable();
        for (sep, id) in stale {
            for rule in self.rules_by_id(id) {
                self.ok(rule);
            }
            self.warnings.push(format!(
                "{}: {sep} is not referenced by any service chain (left over after a partial sync; harmless unless it persists)",
                dump.source_name
            ));
        }
    }

    /// Rules in kube-proxy's chains that no step above understood.
    fn report_not_understood(&mut self) {
        let dump = self.dump;
        let mut lines = Vec::new();
        for (i, rule) in dump.rules.iter().enumerate() {
            if self.understood[i] || !rule.chain.starts_with("KUBE-") || STATIC_CHAINS.contains(&rule.chain.as_ref()) {
                continue;
            }
            // EXT chains' masquerade/route rules and FW fall-through are handled above; what is
            // left is unknown to this reader.
            lines.push(format!(
                "{} line {}: rule not understood, left out of the model: {}",
                dump.source_name, rule.line, rule.text
            ));
        }
        self.warnings.extend(lines);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NFT_SAVE: &str = include_str!("../../../../testdata/rules/iptables-nft.save");
    const LEGACY_SAVE: &str = include_str!("../../../../testdata/rules/iptables-legacy.save");
    const COUNTERS_SAVE: &str = include_str!("../../../../testdata/rules/iptables-nft-counters.save");
    const WARNING_SAVE: &str = include_str!("../../../../testdata/rules/iptables-nft-with-legacy-warning.save");
    const LARGE_SAVE: &str = include_str!("../../../../testdata/rules/iptables-large-nft.save");
    const INPUT_FORM: &str = include_str!("../../../../testdata/rules/iptables-input.rules");

    fn svc<'a>(p: &'a Parsed, name: &str) -> &'a Service {
        let (sref, _) = split_port_name(name);
        p.services
            .iter()
            .find(|s| s.service == sref)
            .unwrap_or_else(|| panic!("{name} not in model"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn frontend(s: &Service, kind: FrontendKind, port: u16) -> &Frontend {
        s.frontends
            .iter()
            .find(|f| f.kind == kind && f.port == port)
            .unwrap_or_else(|| panic!("no {kind:?}:{port} in {:#?}", s.frontends))
    }

    #[test]
    fn tokenizer_keeps_escaped_quotes_in_comments() {
        let w = tokenize(r#"-A X -m comment --comment "say \"hi\" \\ there" -j Y"#).unwrap();
        assert_eq!(w[5], (Cow::Borrowed(r#"say "hi" \ there"#), true));
        assert!(tokenize(r#"-A X --comment "open"#).is_err());
    }

    #[test]
    fn field_masks_follow_the_field_names() {
        let names: Vec<&str> = FIELDS.iter().flat_map(|f| f.iter().copied()).collect();
        for name in names.iter().copied().chain(["-m", "--x", "-A", ""]) {
            let expected = FIELDS
                .iter()
                .enumerate()
                .filter(|(_, f)| f.contains(&name))
                .fold(0u16, |m, (i, _)| m | 1 << i);
            assert_eq!(field_mask(name), expected, "{name}");
        }
        for (w, opt) in [("-j", true), ("--comment", true), ("-1", false), ("-0.5", false), ("-inf", false),
            ("-nan", false), ("-i", true), ("-n", true), ("-", false), ("x", false), ("-.", true), ("-Infinity", false)] {
            assert_eq!(is_option_name(w), opt, "{w}");
            assert_eq!(is_option_name(w), w.len() > 1 && w.starts_with('-') && w.parse::<f64>().is_err(), "{w}");
        }
    }

    #[test]
    fn options_take_the_first_option_of_a_name_and_its_first_argument() {
        let text = r#"-A X ! -s 10.0.0.0/8 -d 10.96.0.1/32 -p tcp -m comment --comment "a \"b\" c" x -m tcp --dport 80 --dport 81 -j KUBE-SVC-X -g Y"#;
        let mut words = Words::new(text);
        words.next();
        words.next();
        let rule = Rule {
            index: 0,
            line: 1,
            table: "nat",
            chain: Cow::Borrowed("X"),
            text,
            fields: options(text, &mut words).unwrap(),
            target_id: NO_CHAIN,
        };
        assert!(rule.src().unwrap().negated);
        assert_eq!(rule.src().unwrap().arg(), Some("10.0.0.0/8"));
        assert_eq!(rule.arg(D_OR_S), Some("10.0.0.0/8"));
        assert_eq!(rule.dst_ip(), Some(ip("10.96.0.1")));
        assert!(rule.has(D_SHORT));
        assert_eq!(rule.comment(), Some(r#"a "b" c"#));
        assert_eq!(rule.dport(), Some(80));
        assert_eq!(rule.target(), Some("KUBE-SVC-X"));
        assert_eq!(rule.protocol(), Some(Protocol::Tcp));
        assert!(!rule.has(MATCH_SET) && !rule.dst_type_local());
        // A negated option, an option without argument, a negative number as an argument.
        let text = "-A X -p ! --dst-type LOCAL --rcheck --seconds -5 --probability";
        let mut words = Words::new(text);
        words.next();
        words.next();
        let f = options(text, &mut words).unwrap();
        let rule = Rule { fields: f, text, ..rule };
        assert_eq!(rule.protocol(), None);
        assert!(rule.has(PROTO) && rule.opt(PROTO).unwrap().arg().is_none());
        assert!(rule.opt(DST_TYPE).unwrap().negated && !rule.dst_type_local());
        assert!(rule.has(RCHECK) && rule.arg(RCHECK).is_none());
        assert_eq!(rule.arg(SECONDS), Some("-5"));
        assert!(rule.has(PROBABILITY) && rule.arg(PROBABILITY).is_none());
        let mut words = Words::new(r#"--comment "open"#);
        assert!(options(r#"--comment "open"#, &mut words).is_err());
    }

    #[test]
    fn chains_list_their_rules_in_order_and_jumps_resolve_once() {
        let text = "*nat\n:KUBE-A - [0:0]\n:KUBE-B - [0:0]\n-A KUBE-A -j KUBE-B\n-A KUBE-B -j KUBE-A\n\
                    -A KUBE-A -j KUBE-GONE\n-A KUBE-C -j ACCEPT\n-A KUBE-A -j KUBE-C\nCOMMIT\n\
                    *filter\n:KUBE-A - [0:0]\n-A KUBE-A -j KUBE-B\nCOMMIT\n";
        let dump = Dump::read(text, "t").unwrap();
        let lines = |table: &str, chain: &str| -> Vec<u32> {
            dump.chain(table, chain).unwrap().iter().map(|&i| dump.rules[i as usize].line).collect()
        };
        assert_eq!(lines("nat", "KUBE-A"), vec![4, 6, 8]);
        assert_eq!(lines("nat", "KUBE-B"), vec![5]);
        assert_eq!(lines("nat", "KUBE-C"), vec![7]);
        assert_eq!(lines("filter", "KUBE-A"), vec![12]);
        assert!(dump.chain("filter", "KUBE-B").is_none() && dump.chain("mangle", "KUBE-A").is_none());
        // Jumps resolve within their own table; ACCEPT and missing chains do not.
        let target = |i: usize| dump.rules[i].target_id;
        assert_eq!(target(0), dump.chain_id_of("nat", "KUBE-B").unwrap());
        assert_eq!(target(2), NO_CHAIN);
        assert_eq!(target(3), NO_CHAIN);
        assert_eq!(target(4), dump.chain_id_of("nat", "KUBE-C").unwrap());
        assert_eq!(target(5), NO_CHAIN);
        assert_eq!(dump.warnings, vec!["t line 7: rule for chain KUBE-C, which the dump does not declare".to_string()]);
    }

    #[test]
    fn comments_name_service_ports() {
        assert_eq!(
            parse_comment("ns1/web:http cluster IP"),
            Some(("ns1/web:http", CommentKind::ClusterIp))
        );
        assert_eq!(
            parse_comment("ns2/local-lb has no local endpoints"),
            Some(("ns2/local-lb", CommentKind::NoLocalEndpoints))
        );
        assert_eq!(
            parse_comment("ns2/local-lb: has no local endpoints"),
            Some(("ns2/local-lb", CommentKind::NoLocalEndpoints))
        );
        assert_eq!(
            parse_comment("ns1/web:http -> 10.0.0.1:80"),
            Some(("ns1/web:http", CommentKind::ToEndpoint))
        );
        assert_eq!(
            parse_comment("masquerade LOCAL traffic for ns2/x external destinations"),
            Some(("ns2/x", CommentKind::ExternalDestinations))
        );
        assert_eq!(parse_comment("kubernetes service portals"), None);
    }

    #[test]
    fn reads_cluster_ip_external_ip_nodeport_and_probabilities() {
        let p = parse(NFT_SAVE).unwrap();
        assert!(p.rules_present);
        assert_eq!(p.mode_hint, Some(ProxyMode::Iptables));
        let web = svc(&p, "ns1/web");
        let cip = frontend(web, FrontendKind::ClusterIp, 80);
        assert_eq!(cip.ip, ip("10.96.10.10"));
        assert_eq!(cip.port_name, "http");
        assert_eq!(cip.protocol, Protocol::Tcp);
        assert_eq!(cip.rule.as_ref().unwrap().name, "KUBE-SERVICES");
        assert!(
            cip.rule
                .as_ref()
                .unwrap()
                .text
                .starts_with("-A KUBE-SERVICES -d 10.96.10.10/32 -p tcp")
        );
        assert_eq!(frontend(web, FrontendKind::ExternalIp, 80).ip, ip("203.0.113.10"));
        assert_eq!(frontend(web, FrontendKind::NodePort, 30080).ip, ip("0.0.0.0"));
        assert_eq!(web.endpoints.len(), 3);
        for e in &web.endpoints {
            assert!(e.in_rules);
            assert!((e.weight.unwrap() - 1.0 / 3.0).abs() < 1e-6, "{e:?}");
            assert!(e.rule.as_ref().unwrap().name.starts_with("KUBE-SEP-"));
            assert!(e.rule.as_ref().unwrap().text.contains("DNAT --to-destination"));
        }
        assert_eq!(web.endpoints[0].ip, ip("10.244.1.10"));
        assert_eq!(web.endpoints[0].port, 8080);
        assert!(web.rules.problems.is_empty(), "{:?}", web.rules.problems);
        assert!(web.rules.chains.contains(&"KUBE-EXT-4LVCYZMTA5CQO6SX".to_string()));
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    }

    #[test]
    fn multi_port_service_keeps_ports_apart() {
        let p = parse(NFT_SAVE).unwrap();
        let dns = svc(&p, "kube-system/kube-dns");
        assert_eq!(dns.frontends.len(), 2);
        assert!(
            dns.frontends
                .iter()
                .any(|f| f.protocol == Protocol::Udp && f.port_name == "dns")
        );
        assert!(
            dns.frontends
                .iter()
                .any(|f| f.protocol == Protocol::Tcp && f.port_name == "dns-tcp")
        );
        assert_eq!(dns.endpoints.len(), 4);
    }

    #[test]
    fn no_endpoints_reject_gives_frontends_and_facts() {
        let p = parse(NFT_SAVE).unwrap();
        let empty = svc(&p, "ns1/empty");
        assert!(empty.endpoints.is_empty());
        assert_eq!(empty.rules.no_endpoints.len(), 2);
        assert!(
            empty.rules.no_endpoints[0]
                .text
                .contains("REJECT --reject-with icmp-port-unreachable")
        );
        assert_eq!(frontend(empty, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.20"));
        assert_eq!(frontend(empty, FrontendKind::NodePort, 30081).ip, ip("0.0.0.0"));
    }

    #[test]
    fn etp_local_without_local_endpoints_has_drop_rules() {
        let p = parse(NFT_SAVE).unwrap();
        let s = svc(&p, "ns2/local-lb");
        assert_eq!(s.rules.no_local_endpoints.len(), 2);
        assert!(s.rules.no_local_endpoints.iter().all(|r| r.text.ends_with("-j DROP")));
        // The LB IP keeps its kind from the nat rule although the filter DROP names it too.
        let lb = frontend(s, FrontendKind::LoadBalancer, 80);
        assert_eq!(lb.ip, ip("198.51.100.7"));
        assert_eq!(lb.rule.as_ref().unwrap().name, "KUBE-SERVICES");
        assert_eq!(lb.port_name, "");
        assert_eq!(s.endpoints.len(), 2);
        assert!(s.endpoints.iter().all(|e| e.local.is_none()));
    }

    #[test]
    fn etp_local_with_local_endpoint_marks_locality_and_source_ranges() {
        let p = parse(NFT_SAVE).unwrap();
        let s = svc(&p, "ns3/fw-local");
        let local: Vec<_> = s.endpoints.iter().map(|e| (e.ip, e.local)).collect();
        assert_eq!(
            local,
            vec![(ip("10.244.1.40"), Some(true)), (ip("10.244.3.41"), Some(false))]
        );
        assert_eq!(s.rules.source_ranges, vec!["192.0.2.0/24".to_string()]);
        assert!(s.rules.chains.iter().any(|c| c.starts_with("KUBE-FW-")));
        assert!(s.rules.chains.iter().any(|c| c.starts_with("KUBE-SVL-")));
        assert_eq!(frontend(s, FrontendKind::LoadBalancer, 443).ip, ip("198.51.100.9"));
        assert!(s.rules.problems.is_empty(), "{:?}", s.rules.problems);
    }

    #[test]
    fn client_ip_affinity_timeout() {
        let p = parse(NFT_SAVE).unwrap();
        let s = svc(&p, "ns2/sticky");
        assert_eq!(s.rules.affinity_timeout_secs, Some(10800));
        assert_eq!(s.endpoints.len(), 2);
        assert!((s.endpoints[0].weight.unwrap() - 0.5).abs() < 1e-6);
        assert!(s.rules.problems.is_empty(), "{:?}", s.rules.problems);
    }

    #[test]
    fn legacy_counters_warning_and_input_forms_give_the_same_services() {
        let base = parse(NFT_SAVE).unwrap();
        for (name, text) in [
            ("legacy", LEGACY_SAVE),
            ("counters", COUNTERS_SAVE),
            ("warning", WARNING_SAVE),
        ] {
            let p = parse(text).unwrap();
            assert_eq!(p.services, base.services, "{name}");
            assert!(p.warnings.is_empty(), "{name}: {:#?}", p.warnings);
        }
        // kube-proxy's own restore input: same services; only the rule texts differ.
        let input = parse(INPUT_FORM).unwrap();
        assert!(input.warnings.is_empty(), "{:#?}", input.warnings);
        let strip = |p: &Parsed| {
            p.services
                .iter()
                .map(|s| {
                    let eps: Vec<_> = s
                        .endpoints
                        .iter()
                        .map(|e| (e.ip, e.port, e.local, e.rule.as_ref().map(|r| r.name.clone())))
                        .collect();
                    let fes: Vec<_> = s.frontends.iter().map(|f| (f.kind, f.ip, f.port, f.protocol)).collect();
                    (
                        s.service.clone(),
                        fes,
                        eps,
                        s.rules.affinity_timeout_secs,
                        s.rules.no_endpoints.len(),
                        s.rules.no_local_endpoints.len(),
                    )
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&input), strip(&base));
    }

    #[test]
    fn large_cluster_dump_without_sep_comments_maps_by_graph_and_hash() {
        let p = parse(LARGE_SAVE).unwrap();
        assert!(!LARGE_SAVE.contains("--comment \"ns1/web:http -> "));
        let base = parse(NFT_SAVE).unwrap();
        assert_eq!(p.services.len(), base.services.len());
        let web = svc(&p, "ns1/web");
        assert_eq!(web.endpoints.len(), 3);
        assert_eq!(
            web.endpoints[2].rule.as_ref().unwrap().name,
            "KUBE-SEP-UFEJ6AFFITOUQOJI"
        );
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    }

    #[test]
    fn kube_services_rule_without_comment_is_named_by_hash_siblings() {
        // Drop the KUBE-SERVICES comment of ns1/web's ClusterIP rule: the SVC chain's own masquerade
        // rule still names the port, and the hash ties them.
        let text = NFT_SAVE.replace(
            "-A KUBE-SERVICES -d 10.96.10.10/32 -p tcp -m comment --comment \"ns1/web:http cluster IP\" -m tcp",
            "-A KUBE-SERVICES -d 10.96.10.10/32 -p tcp -m tcp",
        );
        let p = parse(&text).unwrap();
        let web = svc(&p, "ns1/web");
        assert_eq!(frontend(web, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.10"));
    }

    #[test]
    fn wrong_probability_sequence_is_a_problem() {
        // As if an endpoint was deleted without rewriting the first rule's probability.
        let text = NFT_SAVE.replace(
            "--comment \"ns1/web:http -> 10.244.1.10:8080\" -m statistic --mode random --probability 0.33333333349",
            "--comment \"ns1/web:http -> 10.244.1.10:8080\" -m statistic --mode random --probability 0.25000000000",
        );
        let p = parse(&text).unwrap();
        let web = svc(&p, "ns1/web");
        assert_eq!(web.rules.problems.len(), 1, "{:?}", web.rules.problems);
        assert!(
            web.rules.problems[0].contains("expected 1/3"),
            "{}",
            web.rules.problems[0]
        );
    }

    #[test]
    fn jump_to_missing_chain_is_a_problem() {
        let text = NFT_SAVE.replace(":KUBE-SEP-UFEJ6AFFITOUQOJI - [0:0]\n", "").replace(
            "-A KUBE-SEP-UFEJ6AFFITOUQOJI -s 10.244.3.12/32 -m comment --comment \"ns1/web:http\" -j KUBE-MARK-MASQ\n",
            "",
        );
        let text = text.replace(
            "-A KUBE-SEP-UFEJ6AFFITOUQOJI -p tcp -m comment --comment \"ns1/web:http\" -m tcp -j DNAT --to-destination 10.244.3.12:8080\n",
            "",
        );
        let p = parse(&text).unwrap();
        let web = svc(&p, "ns1/web");
        assert_eq!(web.endpoints.len(), 2);
        assert!(
            web.rules
                .problems
                .iter()
                .any(|m| m.contains("jumps to KUBE-SEP-UFEJ6AFFITOUQOJI, which does not exist")),
            "{:?}",
            web.rules.problems
        );
    }

    #[test]
    fn service_chain_without_endpoint_rules_is_a_problem() {
        let text = NFT_SAVE.replace(
            "-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment \"default/kubernetes:https -> 192.168.205.145:6443\" -j KUBE-SEP-UUBFDOGZKSZ6QOBE\n",
            "",
        );
        let p = parse(&text).unwrap();
        let k = svc(&p, "default/kubernetes");
        assert!(k.endpoints.is_empty());
        assert!(
            k.rules
                .problems
                .iter()
                .any(|m| m.contains("jumps to no KUBE-SEP chain")),
            "{:?}",
            k.rules.problems
        );
        // The SEP chain nobody jumps to is reported as left over.
        assert!(
            p.warnings
                .iter()
                .any(|w| w.contains("KUBE-SEP-UUBFDOGZKSZ6QOBE is not referenced")),
            "{:#?}",
            p.warnings
        );
    }

    #[test]
    fn comment_disagreeing_with_dnat_target_is_a_problem() {
        let text = NFT_SAVE.replace("--to-destination 10.244.3.12:8080", "--to-destination 10.244.3.99:8080");
        let p = parse(&text).unwrap();
        let web = svc(&p, "ns1/web");
        assert!(
            web.rules
                .problems
                .iter()
                .any(|m| m.contains("comment says 10.244.3.12:8080")),
            "{:?}",
            web.rules.problems
        );
        // The chain name no longer matches the hash of the new target: a warning, not a problem.
        assert!(p.warnings.iter().any(|w| w.contains("not kube-proxy's chain name")));
    }

    #[test]
    fn unknown_rules_are_reported_with_their_line() {
        let text = NFT_SAVE.replace(
            "-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment",
            "-A KUBE-SVC-NPX46M4PTMTKRN6Y -m frobnicate --zap 3 -j LOG\n-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment",
        );
        let p = parse(&text).unwrap();
        assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
        assert!(p.warnings[0].starts_with("iptables-save line "));
        assert!(p.warnings[0].contains("not understood"));
        assert!(p.warnings[0].contains("frobnicate"));
    }

    #[test]
    fn malformed_lines_are_soft_errors() {
        let text = NFT_SAVE.replace(
            "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A KUBE-FORWARD -m comment --comment \"unterminated\n-Z nonsense",
        );
        let p = parse_named(&text, "node.save").unwrap();
        assert_eq!(p.warnings.len(), 2, "{:#?}", p.warnings);
        assert!(p.warnings.iter().all(|w| w.starts_with("node.save line ")));
        assert!(!p.services.is_empty());
    }

    #[test]
    fn truncated_dump_warns_and_keeps_what_it_read() {
        let cut = &NFT_SAVE[..NFT_SAVE.find("-A KUBE-SVC-4LVCYZMTA5CQO6SX").unwrap()];
        let p = parse(cut).unwrap();
        assert!(p.warnings.iter().any(|w| w.contains("not closed by COMMIT")));
        let web = svc(&p, "ns1/web");
        assert_eq!(frontend(web, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.10"));
    }

    #[test]
    fn iptables_list_output_is_an_error() {
        let err =
            parse("Chain INPUT (policy ACCEPT)\ntarget     prot opt source               destination\n").unwrap_err();
        assert!(matches!(err, ParseError::NotIptablesSave { line: 1, .. }));
        assert!(err.to_string().contains("iptables-save"));
    }

    #[test]
    fn empty_and_foreign_dumps_have_no_kube_proxy_rules() {
        let p = parse("").unwrap();
        assert!(!p.rules_present && p.services.is_empty() && p.mode_hint.is_none());
        let p = parse("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -s 1.2.3.4/32 -j DROP\nCOMMIT\n").unwrap();
        assert!(!p.rules_present && p.warnings.is_empty());
    }

    /// kube-proxy's own restore text leaves plain comments unquoted (its golden test, ns1/svc1).
    #[test]
    fn kube_proxy_input_form_with_unquoted_comments() {
        let svc_chain = names::service_chain("KUBE-SVC-", "ns1/svc1:p80", "tcp");
        let text = format!(
            "*nat\n:KUBE-SERVICES - [0:0]\n:{svc_chain} - [0:0]\n:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]\n\
             -A KUBE-SERVICES -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j {svc_chain}\n\
             -A {svc_chain} -m comment --comment \"ns1/svc1:p80 cluster IP\" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ\n\
             -A {svc_chain} -m comment --comment \"ns1/svc1:p80 -> 10.180.0.1:80\" -j KUBE-SEP-SXIVWICOYRO3J4NJ\n\
             -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ\n\
             -A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80\nCOMMIT\n"
        );
        let p = parse(&text).unwrap();
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
        let s = svc(&p, "ns1/svc1");
        assert_eq!(s.frontends[0].ip, ip("172.30.0.41"));
        assert_eq!(s.endpoints[0].ip, ip("10.180.0.1"));
        assert_eq!(s.endpoints[0].rule.as_ref().unwrap().name, "KUBE-SEP-SXIVWICOYRO3J4NJ");
    }

    #[test]
    fn ipv6_dump() {
        let n = "ns1/v6:http";
        let svc_chain = names::service_chain("KUBE-SVC-", n, "tcp");
        let sep = names::endpoint_chain(n, "tcp", "[fd00:10:244::5]:8080");
        let text = format!(
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:{svc_chain} - [0:0]\n:{sep} - [0:0]\n\
             -A KUBE-SERVICES -d fd00:10:96::10/128 -p tcp -m comment --comment \"{n} cluster IP\" -m tcp --dport 80 -j {svc_chain}\n\
             -A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL ! -d ::1/128 -j KUBE-NODEPORTS\n\
             -A {svc_chain} -m comment --comment \"{n} -> [fd00:10:244::5]:8080\" -j {sep}\n\
             -A {sep} -s fd00:10:244::5/128 -m comment --comment \"{n}\" -j KUBE-MARK-MASQ\n\
             -A {sep} -p tcp -m comment --comment \"{n}\" -m tcp -j DNAT --to-destination [fd00:10:244::5]:8080\nCOMMIT\n"
        );
        let p = parse(&text).unwrap();
        let s = svc(&p, "ns1/v6");
        assert_eq!(s.frontends[0].ip, ip("fd00:10:96::10"));
        assert_eq!(s.endpoints[0].ip, ip("fd00:10:244::5"));
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    }

    /// Cut anywhere or with lines dropped, every fixture still parses (or errors) without a panic.
    #[test]
    fn truncated_and_mangled_dumps_never_panic() {
        for text in [NFT_SAVE, LARGE_SAVE] {
            for cut in (0..text.len()).step_by(157).filter(|c| text.is_char_boundary(*c)) {
                let _ = parse(&text[..cut]);
            }
            let lines: Vec<&str> = text.lines().collect();
            for skip in 0..7 {
                let mangled: Vec<&str> = lines
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| i % 7 != skip % 7)
                    .map(|(_, l)| *l)
                    .collect();
                let _ = parse(&mangled.join("\n"));
            }
        }
        for odd in [
            "*nat\n-A",
            "*nat\n-A X \"\\",
            "*nat\n[1:2",
            "*nat\n:\n-A X -j",
            "*nat\n-A X ! ! -d -j KUBE-SVC-",
        ] {
            let _ = parse(odd);
        }
    }

    #[test]
    fn ipvs_mode_rules_hint_ipvs() {
        let text = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n\
            -A KUBE-SERVICES -s 127.0.0.0/8 -j RETURN\n\
            -A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ\n\
            -A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT\nCOMMIT\n";
        let p = parse(text).unwrap();
        assert_eq!(p.mode_hint, Some(ProxyMode::Ipvs));
        assert!(p.services.is_empty());
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
    }
}
