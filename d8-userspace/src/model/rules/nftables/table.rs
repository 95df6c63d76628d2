//! The object stage: kube-proxy's table as chains, rules and sets, each reduced as it is read to
//! what the builder (`build.rs`) asks of it.
//!
//! [`Table::add`] takes one top-level object from the lexer (`json.rs`) and keeps only kube-proxy's
//! table: a rule becomes an [`NftRule`] (its targets, DNAT, numgen dispatch and the few other
//! facts, and its rendering for evidence) and the JSON tree is given back at once; the elements of
//! the sets and maps the model reads ([`MODEL_SETS`]) are kept as trees, because the builder reads
//! their keys by shape. [`Table::index_rules`] then lists each chain's rules. The split from the
//! builder is here because what is below this line is per-object work over ~170,000 objects, tuned
//! for allocation (one text buffer, one target list and one chain index for the whole table),
//! while the builder walks chains by name and never sees JSON but for set elements.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::IpAddr;

use super::json::{Body, J, Pool};
use super::render::{render_exprs, render_val, write_val};
use crate::model::rules::FastMap;
use crate::model::rules::address::rule_ip;
use crate::model::{Protocol, RuleRef, RuleSource};

#[derive(Debug, Default)]
pub(super) struct Chain<'a> {
    pub(super) hook: Option<Cow<'a, str>>,
    /// A range of [`Table::chain_rules`]: the chain's rules, in order (one list for all chains,
    /// not 60,000 small vectors).
    rules: (u32, u32),
    /// While indexing: the chain's number in [`Table::index_rules`]'s counts.
    slot: Option<u32>,
}

impl Chain<'_> {
    pub(super) fn has_rules(&self) -> bool {
        self.rules.1 > self.rules.0
    }
}

/// One rule, reduced at read time to what the model needs plus its rendering.
#[derive(Debug, Default)]
pub(super) struct NftRule<'a> {
    /// Position in the table (the builder marks the rules it understood by it).
    pub(super) index: usize,
    pub(super) chain: Cow<'a, str>,
    /// nft list syntax, ending in ` # handle N`: a range of [`Table::text`] (one buffer for all
    /// rules: no allocation per rule, one to free).
    text: (usize, usize),
    /// Chains the rule jumps or goes to (verdicts and vmap entries): a range of [`Table::targets`].
    targets: (usize, usize),
    /// `dnat to ip:port`.
    pub(super) dnat: Option<(IpAddr, u16)>,
    /// `update @set { ip saddr }` (affinity bookkeeping).
    pub(super) set_update: bool,
    /// What few rules have (one rule in ten at most): kept apart to keep the 100,000 rules small.
    extra: Option<Box<RuleExtra<'a>>>,
}

/// `numgen random mod N vmap { i : goto X, ... }`: (N, [(i, X)]).
pub(super) type NumgenVmap<'a> = (u64, Vec<(u64, Cow<'a, str>)>);

#[derive(Debug, Default)]
struct RuleExtra<'a> {
    /// `numgen random mod N vmap { i : goto X, ... }`.
    numgen: Option<NumgenVmap<'a>>,
    /// 1.36's `dnat ip addr . port to numgen random mod N map { i : ip . port }`.
    dnat_map: Option<(u64, Vec<(IpAddr, u16)>)>,
    /// The set an `... @set` match names (affinity rules).
    match_set: Option<Cow<'a, str>>,
    /// Addresses and prefixes an `ip saddr` match compares with (firewall chains), or an `ip
    /// daddr` match (`cluster-ips-check`: the service CIDRs).
    addr_ranges: Vec<String>,
}

impl<'a> NftRule<'a> {
    /// The text is appended to `text`, the targets to `targets_found`.
    fn from_json(
        index: usize,
        chain: Cow<'a, str>,
        handle: Option<u64>,
        comment: Option<&str>,
        expr: &[J<'a>],
        text: &mut String,
        targets_found: &mut Vec<Cow<'a, str>>,
    ) -> Self {
        let text_start = text.len();
        render_exprs(expr, text);
        if let Some(c) = comment {
            let _ = write!(text, " comment \"{c}\"");
        }
        if let Some(h) = handle {
            let _ = write!(text, " # handle {h}");
        }
        let targets_start = targets_found.len();
        expr.iter().for_each(|e| targets(e, targets_found));
        let mut addr_ranges = Vec::new();
        // Only firewall chains' source ranges (every endpoint chain matches its own `ip saddr`)
        // and `cluster-ips-check`'s destination ranges (the service CIDRs) are read.
        let field = if chain.starts_with("firewall-") {
            Some("saddr")
        } else if chain == "cluster-ips-check" {
            Some("daddr")
        } else {
            None
        };
        for stmt in expr.iter().filter(|_| field.is_some()) {
            if let Some(m) = stmt.get("match")
                && m.get("left")
                    .and_then(|l| l.get("payload"))
                    .and_then(|p| p.get("field"))
                    .and_then(J::as_str)
                    == field
                && !m.get("right").and_then(J::as_str).is_some_and(|r| r.starts_with('@'))
            {
                collect_prefixes(m.at("right"), &mut addr_ranges);
            }
        }
        let extra = RuleExtra {
            numgen: expr.iter().find_map(numgen_vmap),
            dnat_map: expr.iter().find_map(dnat_numgen_map),
            match_set: expr.iter().find_map(|e| match e.get("match")?.get("right")? {
                J::Str(Cow::Borrowed(r)) => r.strip_prefix('@').map(Cow::Borrowed),
                J::Str(Cow::Owned(r)) => r.strip_prefix('@').map(|s| Cow::Owned(s.to_string())),
                _ => None,
            }),
            addr_ranges,
        };
        let has_extra = extra.numgen.is_some()
            || extra.dnat_map.is_some()
            || extra.match_set.is_some()
            || !extra.addr_ranges.is_empty();
        NftRule {
            index,
            chain,
            text: (text_start, text.len()),
            targets: (targets_start, targets_found.len()),
            dnat: expr.iter().find_map(dnat_target),
            set_update: expr.iter().any(|e| e.get("set").is_some()),
            extra: has_extra.then(|| Box::new(extra)),
        }
    }

    pub(super) fn numgen(&self) -> Option<&NumgenVmap<'a>> {
        self.extra.as_ref()?.numgen.as_ref()
    }

    pub(super) fn dnat_map(&self) -> Option<&(u64, Vec<(IpAddr, u16)>)> {
        self.extra.as_ref()?.dnat_map.as_ref()
    }

    pub(super) fn match_set(&self) -> Option<&str> {
        self.extra.as_ref()?.match_set.as_deref()
    }

    /// See [`RuleExtra::addr_ranges`].
    pub(super) fn addr_ranges(&self) -> &[String] {
        self.extra.as_ref().map(|e| e.addr_ranges.as_slice()).unwrap_or(&[])
    }

    /// The rule as evidence: its chain and its rendering.
    pub(super) fn rule_ref(&self, t: &Table<'_>) -> RuleRef {
        RuleRef {
            source: RuleSource::Nftables,
            name: self.chain.as_ref().into(),
            text: t.text(self).into(),
        }
    }
}

/// Sets and maps whose elements the model reads; other sets (affinity sets with one element per
/// client) keep only their handle and timeout.
pub(super) const MODEL_SETS: &[&str] = &[
    "cluster-ips",
    "nodeport-ips",
    "service-ips",
    "service-nodeports",
    "no-endpoint-services",
    "no-endpoint-nodeports",
    "firewall-ips",
];

/// A set or map element: key, value (`Null` for sets) and comment.
pub(super) type Elem<'a> = (J<'a>, J<'a>, Option<Cow<'a, str>>);

/// A set or map: its elements, element comments, and the set-wide timeout.
#[derive(Debug, Default)]
pub(super) struct SetLike<'a> {
    pub(super) handle: Option<u64>,
    pub(super) elems: Vec<Elem<'a>>,
    pub(super) timeout_secs: Option<u64>,
}

/// kube-proxy's table (`found`: the dump has it), its chains by name, the sets and maps by name,
/// and its rules in input order.
#[derive(Debug, Default)]
pub(super) struct Table<'a> {
    pub(super) source_name: String,
    pub(super) found: bool,
    pub(super) family: Cow<'a, str>,
    pub(super) chains: FastMap<Cow<'a, str>, Chain<'a>>,
    pub(super) sets: FastMap<Cow<'a, str>, SetLike<'a>>,
    pub(super) warnings: Vec<String>,
    /// Every rule of kube-proxy's table, in input order.
    pub(super) rules: Vec<NftRule<'a>>,
    /// The rules' renderings, one after the other ([`NftRule::text`]).
    text: String,
    /// The rules' jump/goto targets, one rule after the other ([`NftRule::targets`]).
    targets: Vec<Cow<'a, str>>,
    /// Each chain's rules, one chain after the other ([`Chain::rules`]).
    chain_rules: Vec<u32>,
}

impl<'a> Table<'a> {
    /// An empty table for `json_len` bytes of `nft -j` output, its large arrays sized for
    /// kube-proxy's table (~400 bytes of JSON per rule, ~700 per chain), so they are not copied as
    /// they grow; space reserved and never written costs no memory.
    pub(super) fn for_input(source_name: &str, json_len: usize) -> Self {
        Table {
            source_name: source_name.to_string(),
            family: Cow::Borrowed("ip"),
            rules: Vec::with_capacity(json_len / 400),
            // Rule text is shorter than its JSON; targets: ~1.5 a rule.
            text: String::with_capacity(json_len / 2),
            targets: Vec::with_capacity(json_len / 250),
            chains: FastMap::with_capacity_and_hasher(json_len / 700, Default::default()),
            ..Default::default()
        }
    }

    /// Takes one top-level object of `nft -j` output; its trees go back to `pool`.
    pub(super) fn add(&mut self, kind: &str, mut body: Box<Body<'a>>, pool: &RefCell<Pool<'a>>) {
        self.add_body(kind, &mut body);
        body.recycle(pool);
    }

    fn add_body(&mut self, kind: &str, body: &mut Body<'a>) {
        let ours = body.table.as_str() == Some("kube-proxy");
        let name = body.name.as_cow();
        match kind {
            "table" if name.as_deref() == Some("kube-proxy") => {
                self.found = true;
                if let Some(f) = body.family.as_cow() {
                    self.family = f;
                }
            }
            "chain" if ours => {
                let Some(name) = name else { return };
                let c = self.chains.entry(name).or_default();
                c.hook = body.hook.as_cow();
            }
            "rule" if ours => {
                let Some(chain) = body.chain.as_cow() else {
                    return;
                };
                let expr = body.expr.as_array().map(Vec::as_slice).unwrap_or(&[]);
                let index = self.rules.len();
                let rule = NftRule::from_json(
                    index,
                    chain.clone(),
                    body.handle.as_u64(),
                    body.comment.as_str(),
                    expr,
                    &mut self.text,
                    &mut self.targets,
                );
                // Listed in their chains by `index_rules` once all are read.
                self.rules.push(rule);
            }
            "set" | "map" | "element" if ours => {
                let Some(name) = name else { return };
                let keep = MODEL_SETS.contains(&name.as_ref());
                let is_map = kind == "map";
                let s = self.sets.entry(name).or_default();
                if kind != "element" {
                    s.handle = body.handle.as_u64();
                    s.timeout_secs = body.timeout.as_u64();
                }
                if keep && let J::Arr(elems) = std::mem::take(&mut body.elem) {
                    s.elems.reserve(elems.len());
                    for e in elems {
                        let is_pair = e.is_array();
                        s.elems.push(split_elem(e, is_map || is_pair));
                    }
                }
            }
            _ => {}
        }
    }

    /// Lists each rule in its chain, in order. nft lists a chain's rules together: one lookup per
    /// run of rules of one chain.
    pub(super) fn index_rules(&mut self) {
        let Table {
            chains,
            rules,
            chain_rules,
            text,
            targets,
            ..
        } = self;
        // Runs of rules of one chain: (slot, first rule, end); rules per slot.
        let mut runs: Vec<(u32, usize, usize)> = Vec::new();
        let mut counts: Vec<u32> = Vec::new();
        let mut start = 0;
        while start < rules.len() {
            let name = &rules[start].chain;
            let mut end = start + 1;
            while end < rules.len() && rules[end].chain == *name {
                end += 1;
            }
            let c = chains.entry(name.clone()).or_default();
            let slot = *c.slot.get_or_insert_with(|| {
                counts.push(0);
                (counts.len() - 1) as u32
            });
            counts[slot as usize] += (end - start) as u32;
            runs.push((slot, start, end));
            start = end;
        }
        // Each slot's first position in `chain_rules`, then the rules in table order.
        let mut next: Vec<u32> = Vec::with_capacity(counts.len());
        let mut total = 0u32;
        for &n in &counts {
            next.push(total);
            total += n;
        }
        for c in chains.values_mut() {
            if let Some(slot) = c.slot.take() {
                let first = next[slot as usize];
                c.rules = (first, first + counts[slot as usize]);
            }
        }
        chain_rules.clear();
        chain_rules.resize(total as usize, 0);
        // The read is over: the arrays' spare capacity (up to half of each, grown by doubling)
        // goes back before the builder allocates the model beside them.
        rules.shrink_to_fit();
        text.shrink_to_fit();
        targets.shrink_to_fit();
        for (slot, start, end) in runs {
            for rule in &rules[start..end] {
                let at = &mut next[slot as usize];
                chain_rules[*at as usize] = rule.index as u32;
                *at += 1;
            }
        }
    }

    /// A rule's rendering.
    pub(super) fn text(&self, r: &NftRule<'_>) -> &str {
        self.text.get(r.text.0..r.text.1).unwrap_or("")
    }

    /// The chains a rule jumps or goes to.
    pub(super) fn targets(&self, r: &NftRule<'_>) -> &[Cow<'a, str>] {
        self.targets.get(r.targets.0..r.targets.1).unwrap_or(&[])
    }

    /// The rules of a chain, in order.
    pub(super) fn chain_rules<'s>(&'s self, c: &'s Chain<'a>) -> impl Iterator<Item = &'s NftRule<'a>> + 's {
        let list = self
            .chain_rules
            .get(c.rules.0 as usize..c.rules.1 as usize)
            .unwrap_or(&[]);
        list.iter().map(|&i| &self.rules[i as usize])
    }

    /// The addresses of a set (`nodeport-ips`, `cluster-ips`).
    pub(super) fn set_ips(&self, name: &str) -> Vec<IpAddr> {
        self.sets
            .get(name)
            .map(|s| {
                s.elems
                    .iter()
                    .filter_map(|(k, _, _)| k.as_str().and_then(rule_ip))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A map element `[key, value]` or a set element `key`, where a key may be `{"elem": {"val": …,
/// "comment": …}}`.
fn split_elem(e: J<'_>, is_map: bool) -> Elem<'_> {
    let (mut key, value) = match (is_map, e) {
        (true, J::Arr(pair)) if pair.len() == 2 => {
            let mut it = pair.into_iter();
            let k = it.next().unwrap_or(J::Null);
            (k, it.next().unwrap_or(J::Null))
        }
        (_, e) => (e, J::Null),
    };
    if key.get("elem").is_some() {
        let mut inner = key.take("elem");
        let comment = inner.get("comment").and_then(J::as_cow);
        (inner.take("val"), value, comment)
    } else {
        (key, value, None)
    }
}

// ---------------------------------------------------------------------------------------------
// Statements and set elements, read by shape as kube-proxy writes them

/// The verdict of a map element or vmap entry.
pub(super) fn verdict_target<'v>(v: &'v J<'_>) -> Option<&'v str> {
    v.get("goto")
        .or_else(|| v.get("jump"))
        .and_then(|t| t.get("target"))
        .and_then(J::as_str)
}

fn concat_items<'v, 'a>(key: &'v J<'a>) -> &'v [J<'a>] {
    match key.get("concat").and_then(J::as_array) {
        Some(a) => a,
        None => std::slice::from_ref(key),
    }
}

fn as_port(v: &J<'_>) -> Option<u16> {
    v.as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

fn as_proto(v: &J<'_>) -> Option<Protocol> {
    v.as_str().and_then(Protocol::parse).or_else(|| {
        v.as_u64()
            .and_then(|n| u8::try_from(n).ok())
            .and_then(Protocol::from_number)
    })
}

/// `(ip, proto, port)` of a `service-ips`-style key.
pub(super) fn ip_proto_port(key: &J<'_>) -> Option<(IpAddr, Protocol, u16)> {
    match concat_items(key) {
        [ip, proto, port] => Some((rule_ip(ip.as_str()?)?, as_proto(proto)?, as_port(port)?)),
        _ => None,
    }
}

/// `(proto, port)` of a `service-nodeports`-style key.
pub(super) fn proto_port(key: &J<'_>) -> Option<(Protocol, u16)> {
    match concat_items(key) {
        [proto, port] => Some((as_proto(proto)?, as_port(port)?)),
        _ => None,
    }
}

/// A `numgen random mod N vmap { i : goto X, … }` statement: (N, [(i, X)]).
fn numgen_vmap<'a>(stmt: &J<'a>) -> Option<NumgenVmap<'a>> {
    let vmap = stmt.get("vmap")?;
    let modulo = vmap.get("key")?.get("numgen")?.get("mod")?.as_u64()?;
    let items = vmap.get("data")?.get("set")?.as_array()?;
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let pair = item.as_array()?;
        let idx = pair.first()?.as_u64()?;
        let v = pair.get(1)?;
        let target = v
            .get("goto")
            .or_else(|| v.get("jump"))
            .and_then(|t| t.get("target"))
            .and_then(J::as_cow)?;
        out.push((idx, target));
    }
    Some((modulo, out))
}

/// A `dnat to <ip>:<port>` statement.
fn dnat_target(stmt: &J<'_>) -> Option<(IpAddr, u16)> {
    let d = stmt.get("dnat")?;
    Some((rule_ip(d.get("addr")?.as_str()?)?, as_port(d.get("port")?)?))
}

/// 1.36's `dnat ip addr . port to numgen random mod N map { i : ip . port }`: (N, targets).
fn dnat_numgen_map(stmt: &J<'_>) -> Option<(u64, Vec<(IpAddr, u16)>)> {
    let map = stmt.get("dnat")?.get("addr")?.get("map")?;
    let modulo = map.get("key")?.get("numgen")?.get("mod")?.as_u64()?;
    let mut out = Vec::new();
    for item in map.get("data")?.get("set")?.as_array()? {
        let pair = item.as_array()?;
        match concat_items(pair.get(1)?) {
            [ip, port] => out.push((rule_ip(ip.as_str()?)?, as_port(port)?)),
            _ => return None,
        }
    }
    Some((modulo, out))
}

/// Every chain a statement jumps or goes to (verdicts, vmap entries), in the order a
/// `serde_json::Value` walk (keys sorted) finds them.
fn targets<'a>(stmt: &J<'a>, out: &mut Vec<Cow<'a, str>>) {
    match stmt {
        J::Obj(m) if m.len() == 1 => target_entry(&m[0].0, &m[0].1, out),
        J::Obj(m) if m.len() <= 8 => {
            // Sorted keys, last value of a repeated key: as `Value` iterates (without allocating).
            let mut idx = [0usize; 8];
            let mut n = 0;
            for i in 0..m.len() {
                if !m[i + 1..].iter().any(|(k, _)| *k == m[i].0) {
                    idx[n] = i;
                    n += 1;
                }
            }
            idx[..n].sort_unstable_by(|&a, &b| m[a].0.cmp(&m[b].0));
            for &i in &idx[..n] {
                target_entry(&m[i].0, &m[i].1, out);
            }
        }
        J::Obj(m) => {
            // Sorted keys, last value of a repeated key: as `Value` iterates.
            let mut entries: Vec<&(Cow<'a, str>, J<'a>)> = Vec::with_capacity(m.len());
            for (i, e) in m.iter().enumerate() {
                if !m[i + 1..].iter().any(|(k, _)| *k == e.0) {
                    entries.push(e);
                }
            }
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            for (k, v) in entries {
                target_entry(k, v, out);
            }
        }
        J::Arr(a) => a.iter().for_each(|v| targets(v, out)),
        _ => {}
    }
}

fn target_entry<'a>(k: &str, v: &J<'a>, out: &mut Vec<Cow<'a, str>>) {
    if (k == "goto" || k == "jump") && v.get("target").is_some() {
        if let Some(t) = v.get("target").and_then(J::as_cow) {
            out.push(t);
        }
    } else {
        targets(v, out);
    }
}

fn collect_prefixes(v: &J<'_>, out: &mut Vec<String>) {
    match v {
        J::Str(s) => out.push(s.to_string()),
        J::Obj(_) => {
            if let Some(p) = v.get("prefix") {
                let mut r = render_val(p.at("addr"));
                r.push('/');
                write_val(p.at("len"), &mut r);
                out.push(r);
            } else if let Some(s) = v.get("set") {
                collect_prefixes(s, out);
            }
        }
        J::Arr(a) => a.iter().for_each(|x| collect_prefixes(x, out)),
        _ => {}
    }
}
