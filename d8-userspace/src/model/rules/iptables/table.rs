//! The table stage: an `iptables-save` dump as tables of chains, each listing its rules in order,
//! with every jump to one of kube-proxy's chains resolved once.
//!
//! [`Dump::read`] walks the dump line by line (table headers, chain declarations, `COMMIT`,
//! counters), hands each `-A` line to the lexer (`lex.rs`) and keeps the [`Rule`]; it is the only
//! part that can refuse the input (text that is not iptables-save output). The split from the
//! builder is here because everything up to this point is per-line work over the whole dump, laid
//! out flat for speed (one rule array, one chain index for 70,000 chains), while the builder
//! (`build.rs`) walks kube-proxy's chains by name and holds its design.

use std::borrow::Cow;
use std::net::IpAddr;

use super::ParseError;
use super::lex::{COMMENT, DPORT, DST, DST_TYPE, Fields, Opt, PROTO, SRC, TARGET, Words, host_ip, options};
use crate::model::rules::FastMap;
use crate::model::{Protocol, RuleRef, RuleSource};

/// One `-A` line.
#[derive(Debug, Clone)]
pub(super) struct Rule<'a> {
    /// Position in `Dump::rules`.
    pub(super) index: u32,
    pub(super) line: u32,
    pub(super) table: &'a str,
    pub(super) chain: Cow<'a, str>,
    /// The rule as printed, without a `[pkts:bytes]` prefix.
    pub(super) text: &'a str,
    pub(super) fields: Fields,
    /// The chain of the same table that `target()` names, when it is a `KUBE-` chain of the dump
    /// ([`NO_CHAIN`] otherwise).
    pub(super) target_id: u32,
}

impl<'a> Rule<'a> {
    /// Field `f` of [`FIELDS`](super::lex::FIELDS).
    #[inline]
    pub(super) fn opt(&self, f: usize) -> Option<Opt<'_>> {
        self.fields.opt(self.text, f)
    }
    pub(super) fn arg(&self, f: usize) -> Option<&str> {
        self.opt(f).and_then(|o| o.first)
    }
    pub(super) fn has(&self, f: usize) -> bool {
        self.fields.has(f)
    }
    pub(super) fn target(&self) -> Option<&str> {
        self.arg(TARGET)
    }
    pub(super) fn comment(&self) -> Option<&str> {
        self.arg(COMMENT)
    }
    pub(super) fn protocol(&self) -> Option<Protocol> {
        self.opt(PROTO)
            .filter(|o| !o.negated)
            .and_then(|o| o.arg())
            .and_then(Protocol::parse)
    }
    pub(super) fn dport(&self) -> Option<u16> {
        self.arg(DPORT).and_then(|p| p.parse().ok())
    }
    /// `-d` without negation, as an address (`/32`, `/128` stripped; other prefixes refused).
    pub(super) fn dst_ip(&self) -> Option<IpAddr> {
        self.dst_arg().and_then(host_ip)
    }
    /// `-d`'s argument without negation, as written.
    pub(super) fn dst_arg(&self) -> Option<&str> {
        self.opt(DST).filter(|o| !o.negated).and_then(|o| o.arg())
    }
    pub(super) fn src(&self) -> Option<Opt<'_>> {
        self.opt(SRC)
    }
    pub(super) fn dst_type_local(&self) -> bool {
        self.opt(DST_TYPE)
            .is_some_and(|o| !o.negated && o.arg() == Some("LOCAL"))
    }
    pub(super) fn rule_ref(&self) -> RuleRef {
        RuleRef {
            source: RuleSource::Iptables,
            name: self.chain.as_ref().into(),
            text: self.text.into(),
        }
    }
}

/// The tables and chains of one dump.
#[derive(Debug, Default)]
pub(super) struct Dump<'a> {
    pub(super) source_name: String,
    pub(super) rules: Vec<Rule<'a>>,
    /// table -> chain -> chain id. Declared chains have an entry.
    pub(super) chains: Vec<(&'a str, FastMap<Cow<'a, str>, u32>)>,
    /// The rules of chain `id`, as indexes into `rules` in order:
    /// `chain_rules[chain_start[id]..chain_start[id + 1]]` (one array for all chains: a
    /// 10,000-Service dump has 70,000 chains).
    chain_start: Vec<u32>,
    chain_rules: Vec<u32>,
    pub(super) warnings: Vec<String>,
    /// What a rule's `line` counts: `"line"` of the text, or `"rule handle"` when the text was
    /// rendered from the kernel's rules (`netlink.rs`), whose handles `nft -a` shows.
    pub(super) place: &'static str,
}

/// No chain.
pub(super) const NO_CHAIN: u32 = u32::MAX;

impl<'a> Dump<'a> {
    pub(super) fn read(text: &'a str, source_name: &str) -> Result<Self, ParseError> {
        // Sized for kube-proxy's dumps (~100 bytes per rule), so the large arrays are not copied
        // as they grow; space reserved and never written costs no memory.
        let mut dump = Dump {
            source_name: source_name.to_string(),
            rules: Vec::with_capacity(text.len() / 90),
            place: "line",
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
                (Some(Ok(a)), Some(Ok(chain))) if !a.quoted && matches!(&body[a.start..a.end], "-A" | "--append") => {
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

    /// Gives each rule its place in the kernel instead of its line: `handles[line]` is the
    /// handle of the rule rendered on that line.
    pub(super) fn locate(&mut self, handles: &[u64], place: &'static str) {
        for r in &mut self.rules {
            if let Some(&h) = handles.get(r.line as usize) {
                r.line = u32::try_from(h).unwrap_or(u32::MAX);
            }
        }
        self.place = place;
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

    /// A length for vectors indexed by chain id: every id is below it.
    pub(super) fn chain_slots(&self) -> usize {
        self.chain_start.len()
    }

    pub(super) fn chain_id_of(&self, table: &str, chain: &str) -> Option<u32> {
        let (_, chains) = self.chains.iter().find(|(t, _)| *t == table)?;
        chains.get(chain).copied()
    }

    /// The rule indexes of chain `id`, in order.
    pub(super) fn rules_by_id(&self, id: u32) -> &[u32] {
        let (a, b) = (self.chain_start[id as usize], self.chain_start[id as usize + 1]);
        &self.chain_rules[a as usize..b as usize]
    }

    pub(super) fn chain(&self, table: &str, chain: &str) -> Option<&[u32]> {
        self.chain_id_of(table, chain).map(|id| self.rules_by_id(id))
    }

    pub(super) fn exists(&self, table: &str, chain: &str) -> bool {
        self.chain(table, chain).is_some()
    }

    /// Chain names of a table.
    pub(super) fn chain_names(&self, table: &str) -> impl Iterator<Item = &str> {
        self.chains
            .iter()
            .filter(move |(t, _)| *t == table)
            .flat_map(|(_, m)| m.keys().map(|k| k.as_ref()))
    }
}
