//! Reads kube-proxy's nftables-mode rules from `nft -j list table ip kube-proxy` into [`Service`]s.
//!
//! Input: the JSON `nft -j list table ip kube-proxy` (or `ip6`, or `nft -j list ruleset`: objects of
//! other tables are skipped) prints. Shapes: `shared/reference/kube-proxy-rules.md` §3; the fixtures
//! in `testdata/rules/nft-layout-{A,B}.json` are real nft 1.0.6 output.
//!
//! What it builds:
//! - frontends from the verdict maps: `service-ips` (`goto service-…` = ClusterIP, `goto external-…`
//!   = external or load-balancer IP: load-balancer when `firewall-ips` names the address, else
//!   external, because nft mode does not tell them apart), `service-nodeports` (at the `nodeport-ips`
//!   addresses, or `0.0.0.0`/`::` when that set is absent: kube-proxy deletes it when NodePorts match
//!   every local address), `no-endpoint-services` and `no-endpoint-nodeports` (frontends of Services
//!   without endpoints);
//! - endpoints from the `numgen random mod N vmap { … }` dispatch of `service-`/`local-` chains and
//!   the `dnat to` of the `endpoint-` chains they go to (1.36's inline `dnat … to numgen … map` form
//!   too), each with weight `1/N` and, when a `local-` chain exists, locality;
//! - [`RuleFacts`](crate::model::RuleFacts): `no-endpoint-*` elements with `goto reject-chain` (no endpoints) or `drop` (Local
//!   traffic policy without local endpoints), ClientIP affinity (the `affinity-…` sets' timeout),
//!   loadBalancerSourceRanges (the `firewall-` chain), chains, and problems: a `numgen mod N` that
//!   disagrees with its N entries, a goto/jump to a chain that does not exist, an endpoint chain
//!   without `dnat`.
//!
//! Chain names follow `<prefix><H8>-<ns>/<svc>/<proto>/<port>[__<ip>/<port>]`; the H8 hash is
//! recomputed (`names::nft_hash`) and a mismatch is a warning. [`RuleRef`]s name the chain (or map)
//! and carry a readable rendering in nft's own syntax ending in `# handle N`.
//!
//! Errors: [`parse`] fails only when the text is not JSON or not `nft -j` output; everything else is a
//! warning, and rules in kube-proxy's per-service chains that this reader does not understand are
//! reported, never dropped silently.

use std::borrow::Cow;
use std::cell::RefCell;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde_json::Value;

use crate::model::{Endpoint, Frontend, FrontendKind, Protocol, ProxyMode, RuleRef, RuleSource, Service};
use crate::model::rules::{FastMap, FastSet, names};

/// Which base-chain layout kube-proxy used (§3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 1.29–1.31: one `endpoints-check` chain.
    EndpointsCheck,
    /// ≤1.32 and early 1.33.x: `filter-prerouting` and `filter-output-post-dnat` at -110/-90.
    A,
    /// 1.34 (and 1.33.x after #133969): `filter-*-pre-dnat` at -110, filter chains at priority 0.
    B,
}

/// What [`parse`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Parsed {
    /// One entry per Service, ordered by `namespace/name`.
    pub services: Vec<Service>,
    /// Soft errors and rules not understood.
    pub warnings: Vec<String>,
    /// The dump has kube-proxy's table.
    pub rules_present: bool,
    /// `Some(Nftables)` when kube-proxy's table is there.
    pub mode_hint: Option<ProxyMode>,
    /// The base-chain layout, when recognisable.
    pub layout: Option<Layout>,
    /// The `nodeport-ips` set (empty when NodePorts match every local address).
    pub node_port_ips: Vec<IpAddr>,
    /// Number of rules in kube-proxy's table.
    pub rule_count: usize,
}

/// The input is not `nft -j` output.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// Not JSON at all (truncated output, an error message).
    #[error("{source_name}: not JSON (expected the output of `nft -j list table ip kube-proxy`)")]
    NotJson {
        source_name: String,
        #[source]
        source: serde_json::Error,
    },
    /// JSON, but without the top-level `nftables` array.
    #[error("{source_name}: JSON without a top-level \"nftables\" array (expected `nft -j` output)")]
    NotNftJson { source_name: String },
}

/// Parses `nft -j list table ip kube-proxy` output; warnings name the source `nft`.
pub fn parse(json: &str) -> Result<Parsed, ParseError> {
    parse_named(json, "nft")
}

/// Parses `nft -j` output; `source_name` prefixes every warning.
pub fn parse_named(json: &str, source_name: &str) -> Result<Parsed, ParseError> {
    // Sized for kube-proxy's table (~400 bytes of JSON per rule, ~700 per chain), so the large
    // arrays are not copied as they grow; space reserved and never written costs no memory.
    let mut table = Table {
        source_name: source_name.to_string(),
        family: Cow::Borrowed("ip"),
        rules: Vec::with_capacity(json.len() / 400),
        // Rule text is shorter than its JSON; targets: ~1.5 a rule.
        text: String::with_capacity(json.len() / 2),
        targets: Vec::with_capacity(json.len() / 250),
        chains: FastMap::with_capacity_and_hasher(json.len() / 700, Default::default()),
        ..Default::default()
    };
    // The top-level array is read one object at a time, each into a [`J`] tree borrowing its
    // strings from `json`, turned into the compact form below and dropped: a 10,000-Service table
    // is ~45 MB of JSON and several times that as a `serde_json::Value`.
    let mut de = serde_json::Deserializer::from_str(json);
    let seen =
        serde::Deserializer::deserialize_map(&mut de, RootVisitor(&mut table, &RefCell::default()))
            .and_then(|seen| de.end().map(|()| seen));
    match seen {
        Ok(true) => {}
        Ok(false) => {
            return Err(ParseError::NotNftJson {
                source_name: source_name.to_string(),
            });
        }
        Err(e) if e.classify() == serde_json::error::Category::Data => {
            return Err(ParseError::NotNftJson {
                source_name: source_name.to_string(),
            });
        }
        Err(source) => {
            return Err(ParseError::NotJson {
                source_name: source_name.to_string(),
                source,
            });
        }
    }
    table.index_rules();
    Ok(Builder::new(&table).build())
}

/// `{"nftables": [...]}`: feeds each array object to [`Table::add`]; `true` when the key was there.
struct RootVisitor<'t, 'de>(&'t mut Table<'de>, &'t RefCell<Pool<'de>>);

impl<'de> serde::de::Visitor<'de> for RootVisitor<'_, 'de> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an object with an \"nftables\" array")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut seen = false;
        while let Some(key) = map.next_key_seed(KeySeed)? {
            if key == "nftables" {
                map.next_value_seed(ObjectsSeed(&mut *self.0, self.1))?;
                seen = true;
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(seen)
    }
}

struct ObjectsSeed<'t, 'de>(&'t mut Table<'de>, &'t RefCell<Pool<'de>>);

impl<'de> serde::de::DeserializeSeed<'de> for ObjectsSeed<'_, 'de> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ObjectsSeed<'_, 'de> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an array of nft objects")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(obj) = seq.next_element_seed(ObjectSeed(self.1))? {
            if let Some((kind, body)) = obj {
                self.0.add(&kind, body, self.1);
            }
        }
        Ok(())
    }
}

/// One element of the `nftables` array, `{"kind": {body}}`: the kind and the fields of the body
/// the reader uses, without building the rest. An object with several keys gives the smallest
/// (the last of equal ones), as a `serde_json::Value` object iterates first; other elements
/// give `None`.
#[derive(Clone, Copy)]
struct ObjectSeed<'p, 'de>(&'p RefCell<Pool<'de>>);

impl<'de> serde::de::DeserializeSeed<'de> for ObjectSeed<'_, 'de> {
    type Value = Option<(Cow<'de, str>, Box<Body<'de>>)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ObjectSeed<'_, 'de> {
    type Value = Option<(Cow<'de, str>, Box<Body<'de>>)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an nft object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut best: Option<(Cow<'de, str>, Box<Body<'de>>)> = None;
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let body = map.next_value_seed(BodySeed(self.0))?;
            if best.as_ref().is_none_or(|(b, _)| k <= *b) {
                if let Some((_, old)) = best.replace((k, body)) {
                    old.recycle(self.0);
                }
            } else {
                body.recycle(self.0);
            }
        }
        Ok(best)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// The fields of an object's body the reader uses, each the last value of its key (as `Value`
/// keeps); other keys are skipped unread, and a body that is not an object has none.
#[derive(Debug, Default)]
struct Body<'a> {
    table: J<'a>,
    name: J<'a>,
    family: J<'a>,
    hook: J<'a>,
    chain: J<'a>,
    handle: J<'a>,
    comment: J<'a>,
    timeout: J<'a>,
    expr: J<'a>,
    elem: J<'a>,
}

#[derive(Clone, Copy)]
struct BodySeed<'p, 'de>(&'p RefCell<Pool<'de>>);

impl<'de> BodySeed<'_, 'de> {
    /// An empty body, from the pool when there is one: bodies are boxed so that the ~300-byte
    /// struct is not copied on its way from the reader to [`Table::add`].
    fn empty(&self) -> Box<Body<'de>> {
        self.0.borrow_mut().bodies.pop().unwrap_or_default()
    }
}

impl<'de> serde::de::DeserializeSeed<'de> for BodySeed<'_, 'de> {
    type Value = Box<Body<'de>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Box<Body<'de>>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for BodySeed<'_, 'de> {
    type Value = Box<Body<'de>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an nft object body")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Box<Body<'de>>, A::Error> {
        let mut b = self.empty();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            let slot = match k.as_ref() {
                "table" => &mut b.table,
                "name" => &mut b.name,
                "family" => &mut b.family,
                "hook" => &mut b.hook,
                "chain" => &mut b.chain,
                "handle" => &mut b.handle,
                "comment" => &mut b.comment,
                "timeout" => &mut b.timeout,
                "expr" => &mut b.expr,
                "elem" => &mut b.elem,
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    continue;
                }
            };
            let old = std::mem::replace(slot, map.next_value_seed(JVisitor(Some(self.0)))?);
            self.0.borrow_mut().recycle(old);
        }
        Ok(b)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Box<Body<'de>>, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(self.empty())
    }
    fn visit_bool<E>(self, _: bool) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_i64<E>(self, _: i64) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_u64<E>(self, _: u64) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_f64<E>(self, _: f64) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_str<E>(self, _: &str) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
    fn visit_unit<E>(self) -> Result<Box<Body<'de>>, E> {
        Ok(self.empty())
    }
}

// ---------------------------------------------------------------------------------------------
// JSON values borrowing from the input

/// A JSON value whose strings borrow from the input (unless they hold escapes), with objects as
/// key/value lists: reading `nft -j` output into these is several times cheaper than into
/// `serde_json::Value` (a `String` per string and a `BTreeMap` per object). The accessors answer
/// as `Value`'s do: a repeated key's last value wins, and [`J::first_entry`] is the entry a
/// `Value` object iterates first (the smallest key).
#[derive(Debug, Clone, PartialEq, Default)]
enum J<'a> {
    #[default]
    Null,
    Bool(bool),
    Num(serde_json::Number),
    Str(Cow<'a, str>),
    Arr(Vec<J<'a>>),
    Obj(Vec<(Cow<'a, str>, J<'a>)>),
}

static NULL: J<'static> = J::Null;

impl<'a> J<'a> {
    fn get(&self, key: &str) -> Option<&J<'a>> {
        match self {
            J::Obj(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `get` or `Null`.
    fn at(&self, key: &str) -> &J<'a> {
        self.get(key).unwrap_or(&NULL)
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            J::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The string, keeping the borrow from the input.
    fn as_cow(&self) -> Option<Cow<'a, str>> {
        match self {
            J::Str(s) => Some(s.clone()),
            _ => None,
        }
    }

    fn as_u64(&self) -> Option<u64> {
        match self {
            J::Num(n) => n.as_u64(),
            _ => None,
        }
    }

    fn as_array(&self) -> Option<&Vec<J<'a>>> {
        match self {
            J::Arr(a) => Some(a),
            _ => None,
        }
    }

    fn is_null(&self) -> bool {
        matches!(self, J::Null)
    }

    fn is_array(&self) -> bool {
        matches!(self, J::Arr(_))
    }

    /// The entry a `serde_json::Value` object lists first: the smallest key, its last value.
    fn first_entry(&self) -> Option<(&str, &J<'a>)> {
        let J::Obj(m) = self else { return None };
        let mut best: Option<(&str, &J<'a>)> = None;
        for (k, v) in m {
            if best.is_none_or(|(b, _)| k.as_ref() <= b) {
                best = Some((k.as_ref(), v));
            }
        }
        best
    }

    /// Takes the value of `key` out (the last one, as [`J::get`] reads), leaving `Null`.
    fn take(&mut self, key: &str) -> J<'a> {
        match self {
            J::Obj(m) => m
                .iter_mut()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, v)| std::mem::replace(v, J::Null))
                .unwrap_or(J::Null),
            _ => J::Null,
        }
    }

    fn to_value(&self) -> Value {
        match self {
            J::Null => Value::Null,
            J::Bool(b) => Value::Bool(*b),
            J::Num(n) => Value::Number(n.clone()),
            J::Str(s) => Value::String(s.to_string()),
            J::Arr(a) => Value::Array(a.iter().map(J::to_value).collect()),
            J::Obj(m) => Value::Object(m.iter().map(|(k, v)| (k.to_string(), v.to_value())).collect()),
        }
    }
}

/// Compact JSON, as `serde_json::Value` prints it (for statements the renderer does not know).
impl std::fmt::Display for J<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_value().fmt(f)
    }
}

impl<'de> serde::Deserialize<'de> for J<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(JVisitor(None))
    }
}

/// Containers of [`J`] trees that were read and dropped, for the next ones: the objects of `nft -j`
/// output are read one at a time, so after the first few a tree needs no allocation.
#[derive(Default)]
struct Pool<'a> {
    arrs: Vec<Vec<J<'a>>>,
    objs: Vec<Vec<(Cow<'a, str>, J<'a>)>>,
    /// Emptied bodies.
    bodies: Vec<Box<Body<'a>>>,
}

impl<'a> Pool<'a> {
    fn recycle(&mut self, j: J<'a>) {
        match j {
            J::Arr(mut a) => {
                for x in a.drain(..) {
                    self.recycle(x);
                }
                self.arrs.push(a);
            }
            J::Obj(mut m) => {
                for (_, x) in m.drain(..) {
                    self.recycle(x);
                }
                self.objs.push(m);
            }
            _ => {}
        }
    }
}

impl<'a> Body<'a> {
    /// Gives the body's trees back to the pool.
    fn recycle(mut self: Box<Self>, pool: &RefCell<Pool<'a>>) {
        let mut p = pool.borrow_mut();
        let b = &mut *self;
        for j in [
            &mut b.table,
            &mut b.name,
            &mut b.family,
            &mut b.hook,
            &mut b.chain,
            &mut b.handle,
            &mut b.comment,
            &mut b.timeout,
            &mut b.expr,
            &mut b.elem,
        ] {
            let j = std::mem::take(j);
            p.recycle(j);
        }
        p.bodies.push(self);
    }
}

/// Reads a [`J`], taking its containers from the pool when there is one.
#[derive(Clone, Copy)]
struct JVisitor<'p, 'de>(Option<&'p RefCell<Pool<'de>>>);

impl<'de> serde::de::DeserializeSeed<'de> for JVisitor<'_, 'de> {
    type Value = J<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<J<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for JVisitor<'_, 'de> {
    type Value = J<'de>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<J<'de>, E> {
        Ok(J::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<J<'de>, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<J<'de>, E> {
        Ok(J::Num(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<J<'de>, E> {
        Ok(serde_json::Number::from_f64(v).map_or(J::Null, J::Num))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<J<'de>, E> {
        Ok(J::Str(Cow::Owned(v)))
    }
    fn visit_none<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_unit<E>(self) -> Result<J<'de>, E> {
        Ok(J::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<J<'de>, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<J<'de>, A::Error> {
        let mut v = self.0.and_then(|p| p.borrow_mut().arrs.pop()).unwrap_or_default();
        while let Some(x) = seq.next_element_seed(self)? {
            v.push(x);
        }
        Ok(J::Arr(v))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<J<'de>, A::Error> {
        let mut m = self.0.and_then(|p| p.borrow_mut().objs.pop()).unwrap_or_default();
        while let Some(k) = map.next_key_seed(KeySeed)? {
            m.push((k, map.next_value_seed(self)?));
        }
        Ok(J::Obj(m))
    }
}

/// An object key, borrowed from the input when it holds no escapes.
struct KeySeed;

impl<'de> serde::de::DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cow<'de, str>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Cow<'de, str>, E> {
        Ok(Cow::Owned(v))
    }
}

// ---------------------------------------------------------------------------------------------
// The table

#[derive(Debug, Default)]
struct Chain<'a> {
    hook: Option<Cow<'a, str>>,
    /// A range of [`Table::chain_rules`]: the chain's rules, in order (one list for all chains,
    /// not 60,000 small vectors).
    rules: (u32, u32),
    /// While indexing: the chain's number in [`Table::index_rules`]'s counts.
    slot: Option<u32>,
}

impl Chain<'_> {
    fn has_rules(&self) -> bool {
        self.rules.1 > self.rules.0
    }
}

/// One rule, reduced at read time to what the model needs plus its rendering.
#[derive(Debug, Default)]
struct NftRule<'a> {
    /// Position in the table (for [`Builder::understood`]).
    index: usize,
    chain: Cow<'a, str>,
    /// nft list syntax, ending in ` # handle N`: a range of [`Table::text`] (one buffer for all
    /// rules: no allocation per rule, one to free).
    text: (usize, usize),
    /// Chains the rule jumps or goes to (verdicts and vmap entries): a range of [`Table::targets`].
    targets: (usize, usize),
    /// `dnat to ip:port`.
    dnat: Option<(IpAddr, u16)>,
    /// `update @set { ip saddr }` (affinity bookkeeping).
    set_update: bool,
    /// What few rules have (one rule in ten at most): kept apart to keep the 100,000 rules small.
    extra: Option<Box<RuleExtra<'a>>>,
}

#[derive(Debug, Default)]
struct RuleExtra<'a> {
    /// `numgen random mod N vmap { i : goto X, ... }`.
    numgen: Option<(u64, Vec<(u64, Cow<'a, str>)>)>,
    /// 1.36's `dnat ip addr . port to numgen random mod N map { i : ip . port }`.
    dnat_map: Option<(u64, Vec<(IpAddr, u16)>)>,
    /// The set an `... @set` match names (affinity rules).
    match_set: Option<Cow<'a, str>>,
    /// Addresses and prefixes an `ip saddr` match compares with (firewall chains).
    saddr_ranges: Vec<String>,
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
        let mut saddr_ranges = Vec::new();
        // Only firewall chains' ranges are read (every endpoint chain matches its own `ip saddr`).
        for stmt in expr.iter().filter(|_| chain.starts_with("firewall-")) {
            if let Some(m) = stmt.get("match")
                && m.get("left")
                    .and_then(|l| l.get("payload"))
                    .and_then(|p| p.get("field"))
                    .and_then(J::as_str)
                    == Some("saddr")
                && !m.get("right").and_then(J::as_str).is_some_and(|r| r.starts_with('@'))
            {
                collect_prefixes(m.at("right"), &mut saddr_ranges);
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
            saddr_ranges,
        };
        let has_extra =
            extra.numgen.is_some() || extra.dnat_map.is_some() || extra.match_set.is_some() || !extra.saddr_ranges.is_empty();
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

    fn numgen(&self) -> Option<&(u64, Vec<(u64, Cow<'a, str>)>)> {
        self.extra.as_ref()?.numgen.as_ref()
    }

    fn dnat_map(&self) -> Option<&(u64, Vec<(IpAddr, u16)>)> {
        self.extra.as_ref()?.dnat_map.as_ref()
    }

    fn match_set(&self) -> Option<&str> {
        self.extra.as_ref()?.match_set.as_deref()
    }

    fn saddr_ranges(&self) -> &[String] {
        self.extra.as_ref().map(|e| e.saddr_ranges.as_slice()).unwrap_or(&[])
    }

    fn rule_ref(&self, t: &Table<'_>) -> RuleRef {
        RuleRef {
            source: RuleSource::Nftables,
            name: self.chain.to_string(),
            text: t.text(self).to_string(),
        }
    }
}

/// Sets and maps whose elements the model reads; other sets (affinity sets with one element per
/// client) keep only their handle and timeout.
const MODEL_SETS: &[&str] = &[
    "cluster-ips",
    "nodeport-ips",
    "service-ips",
    "service-nodeports",
    "no-endpoint-services",
    "no-endpoint-nodeports",
    "firewall-ips",
];

/// A set or map element: key, value (`Null` for sets) and comment.
type Elem<'a> = (J<'a>, J<'a>, Option<Cow<'a, str>>);

/// A set or map: its elements, element comments, and the set-wide timeout.
#[derive(Debug, Default)]
struct SetLike<'a> {
    handle: Option<u64>,
    elems: Vec<Elem<'a>>,
    timeout_secs: Option<u64>,
}

#[derive(Debug, Default)]
struct Table<'a> {
    source_name: String,
    found: bool,
    family: Cow<'a, str>,
    chains: FastMap<Cow<'a, str>, Chain<'a>>,
    sets: FastMap<Cow<'a, str>, SetLike<'a>>,
    warnings: Vec<String>,
    /// Every rule of kube-proxy's table, in input order.
    rules: Vec<NftRule<'a>>,
    /// The rules' renderings, one after the other ([`NftRule::text`]).
    text: String,
    /// The rules' jump/goto targets, one rule after the other ([`NftRule::targets`]).
    targets: Vec<Cow<'a, str>>,
    /// Each chain's rules, one chain after the other ([`Chain::rules`]).
    chain_rules: Vec<u32>,
}

impl<'a> Table<'a> {
    /// Takes one top-level object of `nft -j` output; its trees go back to `pool`.
    fn add(&mut self, kind: &str, mut body: Box<Body<'a>>, pool: &RefCell<Pool<'a>>) {
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
    fn index_rules(&mut self) {
        let Table { chains, rules, chain_rules, .. } = self;
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
        for (slot, start, end) in runs {
            for i in start..end {
                let at = &mut next[slot as usize];
                chain_rules[*at as usize] = rules[i].index as u32;
                *at += 1;
            }
        }
    }

    /// A rule's rendering.
    fn text(&self, r: &NftRule<'_>) -> &str {
        self.text.get(r.text.0..r.text.1).unwrap_or("")
    }

    /// The chains a rule jumps or goes to.
    fn targets(&self, r: &NftRule<'_>) -> &[Cow<'a, str>] {
        self.targets.get(r.targets.0..r.targets.1).unwrap_or(&[])
    }

    /// The rules of a chain, in order.
    fn chain_rules<'s>(&'s self, c: &'s Chain<'a>) -> impl Iterator<Item = &'s NftRule<'a>> + 's {
        let list = self.chain_rules.get(c.rules.0 as usize..c.rules.1 as usize).unwrap_or(&[]);
        list.iter().map(|&i| &self.rules[i as usize])
    }

    fn set_ips(&self, name: &str) -> Vec<IpAddr> {
        self.sets
            .get(name)
            .map(|s| {
                s.elems
                    .iter()
                    .filter_map(|(k, _, _)| k.as_str().and_then(|a| a.parse().ok()))
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
// Rendering (for evidence): nft's own list syntax, enough for kube-proxy's rules. Everything is
// written into one buffer: the table has ~100,000 rules.

fn render_exprs(exprs: &[J<'_>], out: &mut String) {
    for (i, e) in exprs.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        write_stmt(e, out);
    }
}

fn render_val(v: &J<'_>) -> String {
    let mut s = String::new();
    write_val(v, &mut s);
    s
}

fn write_stmt(stmt: &J<'_>, out: &mut String) {
    let Some((k, v)) = stmt.first_entry() else {
        let _ = write!(out, "{stmt}");
        return;
    };
    match k {
        "match" => {
            let op = v.get("op").and_then(J::as_str).unwrap_or("==");
            write_val(v.at("left"), out);
            out.push(' ');
            if !matches!(op, "==" | "in") {
                out.push_str(op);
                out.push(' ');
            }
            write_val(v.at("right"), out);
        }
        "accept" | "drop" | "return" | "continue" => out.push_str(k),
        "jump" | "goto" => {
            out.push_str(k);
            out.push(' ');
            out.push_str(v.get("target").and_then(J::as_str).unwrap_or("?"));
        }
        "vmap" | "map" => {
            write_val(v.at("key"), out);
            out.push(' ');
            out.push_str(k);
            out.push(' ');
            write_val(v.at("data"), out);
        }
        "dnat" | "snat" => {
            let addr = v.get("addr").map(render_val).unwrap_or_default();
            out.push_str(k);
            out.push_str(" to ");
            match v.get("port") {
                Some(p) if addr.contains(':') => {
                    out.push('[');
                    out.push_str(&addr);
                    out.push_str("]:");
                    write_val(p, out);
                }
                Some(p) => {
                    out.push_str(&addr);
                    out.push(':');
                    write_val(p, out);
                }
                None => out.push_str(&addr),
            }
        }
        "masquerade" => {
            out.push_str("masquerade");
            if let Some(f) = v.get("flags") {
                out.push(' ');
                write_val(f, out);
            }
        }
        "reject" => match v.get("expr").and_then(J::as_str) {
            Some(e) if e != "port-unreachable" => {
                let _ = write!(
                    out,
                    "reject with {} {e}",
                    v.get("type").and_then(J::as_str).unwrap_or("icmp")
                );
            }
            _ => out.push_str("reject"),
        },
        "mangle" => {
            write_val(v.at("key"), out);
            out.push_str(" set ");
            write_val(v.at("value"), out);
        }
        "set" => {
            out.push_str(v.get("op").and_then(J::as_str).unwrap_or("update"));
            out.push(' ');
            out.push_str(v.get("set").and_then(J::as_str).unwrap_or("?"));
            out.push_str(" { ");
            write_val(v.at("elem"), out);
            out.push_str(" }");
        }
        "counter" => out.push_str("counter"),
        _ => {
            let _ = write!(out, "{stmt}");
        }
    }
}

fn write_joined(items: &[J<'_>], sep: &str, out: &mut String) {
    for (i, x) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        write_val(x, out);
    }
}

fn write_val(v: &J<'_>, out: &mut String) {
    match v {
        J::Str(s) => out.push_str(s),
        J::Num(n) => {
            let _ = write!(out, "{n}");
        }
        J::Null => {}
        J::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        J::Arr(a) => write_joined(a, ",", out),
        J::Obj(_) => {
            let Some((k, inner)) = v.first_entry() else {
                out.push_str("{}");
                return;
            };
            match k {
                "payload" => {
                    out.push_str(inner.get("protocol").and_then(J::as_str).unwrap_or("?"));
                    out.push(' ');
                    out.push_str(inner.get("field").and_then(J::as_str).unwrap_or("?"));
                }
                "meta" | "ct" => {
                    out.push_str(k);
                    out.push(' ');
                    out.push_str(inner.get("key").and_then(J::as_str).unwrap_or("?"));
                }
                "fib" => {
                    out.push_str("fib ");
                    out.push_str(&render_val(inner.at("flags")).replace(',', " . "));
                    out.push(' ');
                    out.push_str(inner.get("result").and_then(J::as_str).unwrap_or("?"));
                }
                "numgen" => {
                    out.push_str("numgen ");
                    out.push_str(inner.get("mode").and_then(J::as_str).unwrap_or("random"));
                    out.push_str(" mod ");
                    write_val(inner.at("mod"), out);
                }
                "concat" => {
                    if let Some(a) = inner.as_array() {
                        write_joined(a, " . ", out);
                    }
                }
                "prefix" => {
                    write_val(inner.at("addr"), out);
                    out.push('/');
                    write_val(inner.at("len"), out);
                }
                "set" => {
                    out.push_str("{ ");
                    match inner.as_array() {
                        Some(items) => {
                            for (i, item) in items.iter().enumerate() {
                                if i > 0 {
                                    out.push_str(", ");
                                }
                                match item.as_array() {
                                    Some(pair) if pair.len() == 2 => {
                                        write_val(&pair[0], out);
                                        out.push_str(" : ");
                                        let start = out.len();
                                        write_stmt(&pair[1], out);
                                        if out[start..].contains('"') {
                                            let unquoted = out[start..].replace('"', "");
                                            out.truncate(start);
                                            out.push_str(&unquoted);
                                        }
                                    }
                                    _ => write_val(item, out),
                                }
                            }
                        }
                        None => write_val(inner, out),
                    }
                    out.push_str(" }");
                }
                "goto" | "jump" => {
                    out.push_str(k);
                    out.push(' ');
                    out.push_str(inner.get("target").and_then(J::as_str).unwrap_or("?"));
                }
                "&" | "|" | "^" => {
                    if let Some(a) = inner.as_array() {
                        write_joined(a, &format!(" {k} "), out);
                    }
                }
                "map" => {
                    write_val(inner.at("key"), out);
                    out.push_str(" map ");
                    write_val(inner.at("data"), out);
                }
                "elem" => write_val(inner.at("val"), out),
                _ => {
                    let _ = write!(out, "{v}");
                }
            }
        }
    }
}

/// A map element as nft lists it: `10.96.0.1 . tcp . 443 comment "ns/svc:p" : goto service-…`.
fn render_elem(key: &J<'_>, value: &J<'_>, comment: &Option<Cow<'_, str>>) -> String {
    let mut s = render_val(key);
    if let Some(c) = comment {
        let _ = write!(s, " comment \"{c}\"");
    }
    if !value.is_null() {
        s.push_str(" : ");
        write_stmt(value, &mut s);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// Chain names

/// A parsed `<prefix><H8>-<ns>/<svc>/<proto>/<port>[__<ip>/<port>]` chain or set name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainName {
    /// `service`, `local`, `external`, `endpoint`, `firewall` or `affinity`.
    pub prefix: String,
    pub hash: String,
    pub namespace: String,
    pub service: String,
    pub protocol: Protocol,
    /// Empty for an unnamed port.
    pub port_name: String,
    /// For `endpoint-`/`affinity-` names: the endpoint.
    pub endpoint: Option<(IpAddr, u16)>,
    /// The recomputed H8 hash matches (`false` also when the name was truncated with `...`).
    pub hash_ok: bool,
}

impl ChainName {
    /// `ns/svc:port` (or `ns/svc` for an unnamed port), as iptables comments and the model write it.
    pub fn port_key(&self) -> String {
        if self.port_name.is_empty() {
            format!("{}/{}", self.namespace, self.service)
        } else {
            format!("{}/{}:{}", self.namespace, self.service, self.port_name)
        }
    }
}

/// Parses kube-proxy's nftables service/endpoint chain grammar (§3.3) and verifies the H8 hash;
/// `None` for other names.
pub fn parse_chain_name(name: &str) -> Option<ChainName> {
    let cn = CName::parse(name)?;
    let hash_ok = cn.hash_ok(name);
    Some(ChainName {
        prefix: cn.prefix.to_string(),
        hash: cn.hash.to_string(),
        namespace: cn.namespace.to_string(),
        service: cn.service.to_string(),
        protocol: cn.protocol,
        port_name: cn.port_name.to_string(),
        endpoint: cn.endpoint(),
        hash_ok,
    })
}

/// [`ChainName`] borrowing from the name, without the hash check: for the hot paths (a
/// 10,000-Service table has 60,000 chains).
#[derive(Debug, Clone, Copy)]
struct CName<'n> {
    prefix: &'n str,
    hash: &'n str,
    namespace: &'n str,
    service: &'n str,
    protocol: Protocol,
    port_name: &'n str,
    /// `<ip>/<port>` after `__`.
    endpoint: Option<&'n str>,
}

impl<'n> CName<'n> {
    fn parse(name: &'n str) -> Option<Self> {
        let (prefix, rest) = name.split_once('-')?;
        if !["service", "local", "external", "endpoint", "firewall", "affinity"].contains(&prefix) {
            return None;
        }
        let (hash, body) = rest.split_once('-')?;
        if hash.len() != 8 {
            return None;
        }
        let (svc_part, endpoint) = match body.split_once("__") {
            Some((s, e)) => (s, Some(e)),
            None => (body, None),
        };
        let mut parts = svc_part.splitn(4, '/');
        let namespace = parts.next()?;
        let service = parts.next()?;
        let protocol = Protocol::parse(parts.next()?)?;
        let port_name = parts.next()?;
        Some(CName {
            prefix,
            hash,
            namespace,
            service,
            protocol,
            port_name,
            endpoint,
        })
    }

    /// The recomputed H8 hash of `name` (the name this was parsed from) matches.
    fn hash_ok(&self, name: &str) -> bool {
        let body = &name[self.prefix.len() + 1 + self.hash.len() + 1..];
        !body.ends_with("...") && names::nft_hash_is(body, self.hash)
    }

    fn endpoint(&self) -> Option<(IpAddr, u16)> {
        let (ip, port) = self.endpoint?.rsplit_once('/')?;
        let ip: IpAddr = ip
            .parse::<Ipv4Addr>()
            .map(IpAddr::V4)
            .or_else(|_| ip.replace('.', ":").parse::<Ipv6Addr>().map(IpAddr::V6))
            .ok()?;
        Some((ip, port.parse().ok()?))
    }

    /// [`ChainName::port_key`].
    fn port_key(&self) -> String {
        let mut k = String::with_capacity(self.namespace.len() + self.service.len() + self.port_name.len() + 2);
        k.push_str(self.namespace);
        k.push('/');
        k.push_str(self.service);
        if !self.port_name.is_empty() {
            k.push(':');
            k.push_str(self.port_name);
        }
        k
    }
}

// ---------------------------------------------------------------------------------------------
// Building the model

/// The verdict of a map element or vmap entry.
fn verdict_target<'v>(v: &'v J<'_>) -> Option<&'v str> {
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
fn ip_proto_port(key: &J<'_>) -> Option<(IpAddr, Protocol, u16)> {
    match concat_items(key) {
        [ip, proto, port] => Some((ip.as_str()?.parse().ok()?, as_proto(proto)?, as_port(port)?)),
        _ => None,
    }
}

/// `(proto, port)` of a `service-nodeports`-style key.
fn proto_port(key: &J<'_>) -> Option<(Protocol, u16)> {
    match concat_items(key) {
        [proto, port] => Some((as_proto(proto)?, as_port(port)?)),
        _ => None,
    }
}

/// A `numgen random mod N vmap { i : goto X, … }` statement: (N, [(i, X)]).
fn numgen_vmap<'a>(stmt: &J<'a>) -> Option<(u64, Vec<(u64, Cow<'a, str>)>)> {
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
    Some((d.get("addr")?.as_str()?.parse().ok()?, as_port(d.get("port")?)?))
}

/// 1.36's `dnat ip addr . port to numgen random mod N map { i : ip . port }`: (N, targets).
fn dnat_numgen_map(stmt: &J<'_>) -> Option<(u64, Vec<(IpAddr, u16)>)> {
    let map = stmt.get("dnat")?.get("addr")?.get("map")?;
    let modulo = map.get("key")?.get("numgen")?.get("mod")?.as_u64()?;
    let mut out = Vec::new();
    for item in map.get("data")?.get("set")?.as_array()? {
        let pair = item.as_array()?;
        match concat_items(pair.get(1)?) {
            [ip, port] => out.push((ip.as_str()?.parse().ok()?, as_port(port)?)),
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

struct Builder<'t, 'a> {
    t: &'t Table<'a>,
    /// In order of first mention.
    services: Vec<Service>,
    /// Indexes into `services`, keyed by `ns/name`.
    service_ix: FastMap<String, usize>,
    /// The key and index [`Builder::service`] answered last: consecutive calls are mostly for one
    /// Service (its chains, then each endpoint), and comparing a short key is cheaper than hashing.
    last_service: Option<(String, usize)>,
    warnings: Vec<String>,
    /// Rules some step understood, by [`NftRule::index`].
    understood: Vec<bool>,
    /// Endpoint chains some service chain goes to, by the identity (address, length) of their
    /// key in [`Table::chains`]: hashing a pointer is cheaper than hashing a 60-byte name.
    referenced_endpoints: FastSet<(usize, usize)>,
    any_ip: IpAddr,
    /// Every chain name in order, so warnings and problems come out the same on every run.
    sorted_chains: Vec<&'t str>,
}

impl<'t, 'a> Builder<'t, 'a> {
    fn new(t: &'t Table<'a>) -> Self {
        let any_ip = if t.family == "ip6" {
            IpAddr::V6(Ipv6Addr::UNSPECIFIED)
        } else {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        };
        Self {
            t,
            services: Vec::new(),
            service_ix: FastMap::default(),
            last_service: None,
            warnings: t.warnings.clone(),
            understood: vec![false; t.rules.len()],
            referenced_endpoints: FastSet::default(),
            any_ip,
            sorted_chains: Vec::new(),
        }
    }

    fn warn(&mut self, msg: impl std::fmt::Display) {
        self.warnings.push(format!("{}: {msg}", self.t.source_name));
    }

    fn service<'n>(&mut self, port_key: &'n str) -> (&mut Service, &'n str) {
        let (key, port) = port_key.split_once(':').unwrap_or((port_key, ""));
        let ix = match &self.last_service {
            Some((k, ix)) if k == key => *ix,
            _ => {
                let ix = match self.service_ix.get(key) {
                    Some(&ix) => ix,
                    None => {
                        let (sref, _) = crate::model::rules::iptables::split_port_name(port_key);
                        self.services.push(Service::new(sref));
                        self.service_ix.insert(key.to_string(), self.services.len() - 1);
                        self.services.len() - 1
                    }
                };
                match &mut self.last_service {
                    Some((k, i)) => {
                        k.clear();
                        k.push_str(key);
                        *i = ix;
                    }
                    None => self.last_service = Some((key.to_string(), ix)),
                }
                ix
            }
        };
        let svc = &mut self.services[ix];
        svc.rules.present = true;
        (svc, port)
    }

    fn add_chain(&mut self, port_key: &str, chain: &str) {
        let (svc, _) = self.service(port_key);
        if !svc.rules.chains.iter().any(|c| c == chain) {
            svc.rules.chains.push(chain.to_string());
        }
    }

    fn problem(&mut self, port_key: &str, msg: String) {
        let (svc, _) = self.service(port_key);
        if !svc.rules.problems.contains(&msg) {
            svc.rules.problems.push(msg);
        }
    }

    fn add_frontend(
        &mut self,
        port_key: &str,
        kind: FrontendKind,
        ip: IpAddr,
        port: u16,
        protocol: Protocol,
        rule: RuleRef,
    ) {
        let (svc, port_name) = self.service(port_key);
        if let Some(f) = svc
            .frontends
            .iter_mut()
            .find(|f| f.ip == ip && f.port == port && f.protocol == protocol)
        {
            if f.rule.is_none() {
                f.rule = Some(rule);
            }
            return;
        }
        svc.frontends.push(Frontend {
            kind,
            ip,
            port,
            protocol,
            port_name: port_name.to_string(),
            rule: Some(rule),
        });
    }

    fn map_ref(&self, map: &str, key: &J<'_>, value: &J<'_>, comment: &Option<Cow<'_, str>>) -> RuleRef {
        let handle = self
            .t
            .sets
            .get(map)
            .and_then(|s| s.handle)
            .map(|h| format!(" # handle {h}"))
            .unwrap_or_default();
        RuleRef {
            source: RuleSource::Nftables,
            name: map.to_string(),
            text: format!("map {map}: {}{handle}", render_elem(key, value, comment)),
        }
    }

    /// The Service port a map element is for: from the target chain's name, else the element comment.
    fn element_owner(&mut self, map: &str, target: Option<&str>, comment: &Option<Cow<'_, str>>) -> Option<String> {
        if let Some(cn) = target.and_then(CName::parse) {
            return Some(cn.port_key());
        }
        if let Some(c) = comment {
            return Some(c.to_string());
        }
        self.warn(format!(
            "map {map}: element names no Service (no comment, no service chain)"
        ));
        None
    }

    fn build(mut self) -> Parsed {
        let t = self.t;
        if !t.found {
            return Parsed {
                warnings: self.warnings,
                ..Default::default()
            };
        }
        let node_port_ips = t.set_ips("nodeport-ips");
        let np_addrs = if node_port_ips.is_empty() {
            vec![self.any_ip]
        } else {
            node_port_ips.clone()
        };
        let cluster_ips: FastSet<IpAddr> = t.set_ips("cluster-ips").into_iter().collect();
        let firewalled: FastSet<(IpAddr, Protocol, u16)> = t
            .sets
            .get("firewall-ips")
            .map(|s| s.elems.iter().filter_map(|(k, _, _)| ip_proto_port(k)).collect())
            .unwrap_or_default();

        // Frontends from the verdict maps.
        for map in ["service-ips", "no-endpoint-services", "firewall-ips"] {
            let Some(set) = t.sets.get(map) else { continue };
            for (key, value, comment) in &set.elems {
                let Some((ip, proto, port)) = ip_proto_port(key) else {
                    self.warn(format!(
                        "map {map}: element not `ip . proto . port`: {}",
                        render_val(key)
                    ));
                    continue;
                };
                let target = verdict_target(value);
                let Some(owner) = self.element_owner(map, target, comment) else {
                    continue;
                };
                let rr = self.map_ref(map, key, value, comment);
                let kind = match target.and_then(|x| x.split_once('-')).map(|x| x.0) {
                    _ if map == "firewall-ips" => FrontendKind::LoadBalancer,
                    Some("service") | Some("local") => FrontendKind::ClusterIp,
                    _ if cluster_ips.contains(&ip) => FrontendKind::ClusterIp,
                    _ if firewalled.contains(&(ip, proto, port)) => FrontendKind::LoadBalancer,
                    _ => FrontendKind::ExternalIp,
                };
                if map == "no-endpoint-services" {
                    self.no_endpoint_fact(&owner, value, rr.clone());
                }
                self.check_target(&owner, map, target);
                self.add_frontend(&owner, kind, ip, port, proto, rr);
            }
        }
        for map in ["service-nodeports", "no-endpoint-nodeports"] {
            let Some(set) = t.sets.get(map) else { continue };
            for (key, value, comment) in &set.elems {
                let Some((proto, port)) = proto_port(key) else {
                    self.warn(format!("map {map}: element not `proto . port`: {}", render_val(key)));
                    continue;
                };
                let target = verdict_target(value);
                let Some(owner) = self.element_owner(map, target, comment) else {
                    continue;
                };
                let rr = self.map_ref(map, key, value, comment);
                if map == "no-endpoint-nodeports" {
                    self.no_endpoint_fact(&owner, value, rr.clone());
                }
                self.check_target(&owner, map, target);
                for ip in &np_addrs {
                    self.add_frontend(&owner, FrontendKind::NodePort, *ip, port, proto, rr.clone());
                }
            }
        }

        // Per-service chains.
        self.sorted_chains = t.chains.keys().map(|k| k.as_ref()).collect();
        self.sorted_chains.sort_unstable();
        let names: Vec<(&'t str, CName<'t>)> = self
            .sorted_chains
            .iter()
            .filter_map(|&n| CName::parse(n).map(|cn| (n, cn)))
            .collect();
        for (name, cn) in &names {
            if !cn.hash_ok(name) {
                self.warn(format!(
                    "chain {name}: hash {} is not kube-proxy's for this name (truncated or older kube-proxy)",
                    cn.hash
                ));
            }
        }
        for (name, cn) in names.iter().filter(|(_, cn)| cn.prefix == "service") {
            let local_name = format!("local-{}", &name["service-".len()..]);
            let has_local = t.chains.contains_key(local_name.as_str());
            let key = cn.port_key();
            self.add_chain(&key, name);
            let cluster = self.read_dispatch(&key, cn.protocol, name, if has_local { Some(false) } else { None });
            if has_local {
                self.add_chain(&key, &local_name);
                let local = self.read_dispatch(&key, cn.protocol, &local_name, Some(true));
                let (svc, port_name) = self.service(&key);
                for e in svc
                    .endpoints
                    .iter_mut()
                    .filter(|e| e.port_name == port_name && e.protocol == cn.protocol)
                {
                    if cluster.contains(&(e.ip, e.port)) && !local.contains(&(e.ip, e.port)) {
                        e.local = Some(false);
                    }
                }
            }
        }
        for (name, cn) in &names {
            match cn.prefix {
                "external" => {
                    let key = cn.port_key();
                    self.add_chain(&key, name);
                    for rule in t.chain_rules(&t.chains[*name]) {
                        // jump mark-for-masquerade, goto service-/local-, fib/saddr short-circuits.
                        if !t.targets(rule).is_empty() {
                            self.understood[rule.index] = true;
                        }
                    }
                }
                "firewall" => {
                    let key = cn.port_key();
                    self.add_chain(&key, name);
                    for rule in t.chain_rules(&t.chains[*name]) {
                        let ranges = rule.saddr_ranges().to_vec();
                        if !ranges.is_empty() {
                            let (svc, _) = self.service(&key);
                            for r in ranges {
                                if !svc.rules.source_ranges.contains(&r) {
                                    svc.rules.source_ranges.push(r);
                                }
                            }
                            self.understood[rule.index] = true;
                        }
                    }
                }
                "endpoint" if !self.referenced_endpoints.contains(&key_id(name)) => {
                    self.warn(format!("chain {name} is not referenced by any service chain (stale; kube-proxy deletes such chains after a second)"));
                    for rule in t.chain_rules(&t.chains[*name]) {
                        self.understood[rule.index] = true;
                    }
                }
                _ => {}
            }
        }

        self.check_all_jumps();
        self.report_not_understood();
        let layout = detect_layout(t);
        Parsed {
            services: {
                let mut v: Vec<Service> = self.services;
                v.sort_by(|a, b| a.service.cmp(&b.service));
                v
            },
            warnings: self.warnings,
            rules_present: true,
            mode_hint: Some(ProxyMode::Nftables),
            layout,
            node_port_ips,
            rule_count: t.rules.len(),
        }
    }

    fn no_endpoint_fact(&mut self, owner: &str, value: &J<'_>, rr: RuleRef) {
        let (svc, _) = self.service(owner);
        if value.get("drop").is_some() {
            svc.rules.no_local_endpoints.push(rr);
        } else {
            // `goto reject-chain` (or a literal reject).
            svc.rules.no_endpoints.push(rr);
        }
    }

    fn check_target(&mut self, owner: &str, map: &str, target: Option<&str>) {
        let Some(tg) = target else { return };
        match self.t.chains.get(tg) {
            None => self.problem(
                owner,
                format!("map {map} sends traffic to chain {tg}, which does not exist"),
            ),
            // kube-proxy flushes a stale chain before deleting it; a map still pointing at it
            // lets traffic through untranslated.
            Some(c) if !c.has_rules() && tg != "reject-chain" => {
                self.problem(owner, format!("map {map} sends traffic to chain {tg}, which is empty"))
            }
            Some(_) => {}
        }
    }

    /// Reads a `service-`/`local-` chain: its numgen dispatch (or inline 1.36 dnat map), affinity
    /// rules, then each endpoint chain. Returns the endpoints found.
    fn read_dispatch(&mut self, key: &str, proto: Protocol, chain: &str, local: Option<bool>) -> Vec<(IpAddr, u16)> {
        let t = self.t;
        let mut found = Vec::new();
        let Some(c) = t.chains.get(chain) else { return found };
        let mut dispatched = false;
        for rule in t.chain_rules(c) {
            let tg = t.targets(rule);
            if let Some((modulo, entries)) = rule.numgen() {
                let modulo = *modulo;
                self.understood[rule.index] = true;
                dispatched = true;
                let mut idx: Vec<u64> = entries.iter().map(|e| e.0).collect();
                idx.sort_unstable();
                if modulo as usize != entries.len() || idx.iter().enumerate().any(|(i, &x)| i as u64 != x) {
                    self.problem(
                        key,
                        format!(
                            "{chain}: numgen random mod {modulo} with {} entries (indexes {:?}): some packets match no endpoint, or endpoints are never chosen",
                            entries.len(),
                            idx
                        ),
                    );
                }
                let weight = if modulo > 0 { 1.0 / modulo as f64 } else { 0.0 };
                if local != Some(true) {
                    // Room for this port's endpoints at once (a `local-` chain's are among them).
                    self.service(key).0.endpoints.reserve(entries.len());
                }
                for (_, ep_chain) in entries {
                    if let Some(ep) = self.read_endpoint(key, proto, ep_chain.as_ref(), weight, local) {
                        found.push(ep);
                    }
                }
            } else if let Some((modulo, eps)) = rule.dnat_map().cloned() {
                // 1.36+: no endpoint chains; the service chain DNATs directly.
                self.understood[rule.index] = true;
                dispatched = true;
                if modulo as usize != eps.len() {
                    self.problem(
                        key,
                        format!("{chain}: numgen random mod {modulo} with {} DNAT targets", eps.len()),
                    );
                }
                let weight = if modulo > 0 { 1.0 / modulo as f64 } else { 0.0 };
                if local != Some(true) {
                    self.service(key).0.endpoints.reserve(eps.len());
                }
                for (ip, port) in eps {
                    self.push_endpoint(key, proto, ip, port, weight, local, rule.rule_ref(t));
                    found.push((ip, port));
                }
            } else if let Some((ip, port)) = rule.dnat {
                // Single-endpoint services without numgen (#140723).
                self.understood[rule.index] = true;
                dispatched = true;
                self.push_endpoint(key, proto, ip, port, 1.0, local, rule.rule_ref(t));
                found.push((ip, port));
            } else if tg.iter().any(|x| x == "mark-for-masquerade") {
                self.understood[rule.index] = true;
            } else if tg.len() == 1 && tg[0].starts_with("endpoint-") {
                // `ip saddr @affinity-… goto endpoint-…`: ClientIP affinity.
                self.understood[rule.index] = true;
                let set = rule.match_set();
                if let Some(secs) = set.and_then(|s| t.sets.get(s)).and_then(|s| s.timeout_secs) {
                    let (svc, _) = self.service(key);
                    svc.rules.affinity_timeout_secs = u32::try_from(secs).ok();
                } else {
                    self.warn(format!(
                        "{chain}: affinity rule without a readable affinity set timeout: {}",
                        t.text(rule)
                    ));
                }
                if let Some((k, _)) = t.chains.get_key_value(tg[0].as_ref()) {
                    self.referenced_endpoints.insert(key_id(k));
                }
            } else if tg.len() == 1 && (tg[0].starts_with("local-") || tg[0].starts_with("service-")) {
                self.understood[rule.index] = true;
            }
        }
        if !dispatched && c.has_rules() {
            self.problem(key, format!("{chain} has no endpoint dispatch (numgen vmap or dnat)"));
        }
        found
    }

    fn read_endpoint(
        &mut self,
        key: &str,
        proto: Protocol,
        chain: &'t str,
        weight: f64,
        local: Option<bool>,
    ) -> Option<(IpAddr, u16)> {
        let t = self.t;
        let (k, c) = t.chains.get_key_value(chain)?; // missing: check_all_jumps reports it
        self.referenced_endpoints.insert(key_id(k));
        self.add_chain(key, chain);
        let mut target = None;
        for rule in t.chain_rules(c) {
            if let Some(d) = rule.dnat {
                self.understood[rule.index] = true;
                if target.is_none() {
                    target = Some((d, rule));
                }
            } else {
                let is_masq = t.targets(rule).iter().any(|x| x == "mark-for-masquerade");
                if is_masq || rule.set_update {
                    self.understood[rule.index] = true;
                }
            }
        }
        let Some(((ip, port), rule)) = target else {
            self.problem(
                key,
                format!("{chain} has no dnat rule: connections sent to it are not translated"),
            );
            return None;
        };
        if let Some(cn) = CName::parse(chain)
            && let Some((nip, nport)) = cn.endpoint()
            && (nip, nport) != (ip, port)
        {
            self.problem(
                key,
                format!("{chain} is named for {nip}:{nport} but DNATs to {ip}:{port}"),
            );
        }
        self.push_endpoint(key, proto, ip, port, weight, local, rule.rule_ref(t));
        Some((ip, port))
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one call site per dispatch form; a struct would only rename them"
    )]
    fn push_endpoint(
        &mut self,
        key: &str,
        proto: Protocol,
        ip: IpAddr,
        port: u16,
        weight: f64,
        local: Option<bool>,
        rule: RuleRef,
    ) {
        let (svc, port_name) = self.service(key);
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
                rule: Some(rule),
            }),
        }
    }

    /// Every goto/jump must land on a chain of the table. The rules are scanned in table order and
    /// the (rare) findings reported in chain-name order, so they come out the same on every run.
    fn check_all_jumps(&mut self) {
        let t = self.t;
        let mut missing: Vec<(&str, usize, &str)> = Vec::new();
        // Most rules jump to the target the last one did (`mark-for-masquerade`): one lookup for
        // such runs.
        let mut last_found: Option<&str> = None;
        for rule in &t.rules {
            for target in t.targets(rule) {
                if last_found == Some(target.as_ref()) {
                    continue;
                }
                if t.chains.contains_key(target) {
                    last_found = Some(target.as_ref());
                } else {
                    missing.push((rule.chain.as_ref(), rule.index, target.as_ref()));
                }
            }
        }
        missing.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        for (name, index, target) in missing {
            let msg = format!(
                "chain {name} jumps to {target}, which does not exist: {}",
                t.text(&t.rules[index])
            );
            match CName::parse(name).or_else(|| CName::parse(target)) {
                Some(cn) => self.problem(&cn.port_key(), msg),
                None => self.warn(msg),
            }
        }
    }

    /// Rules of kube-proxy's per-service chains that no step understood, in chain-name order.
    fn report_not_understood(&mut self) {
        let t = self.t;
        let mut left: Vec<(&str, usize)> = t
            .rules
            .iter()
            .filter(|r| !self.understood[r.index] && CName::parse(&r.chain).is_some())
            .map(|r| (r.chain.as_ref(), r.index))
            .collect();
        left.sort_unstable();
        for (name, index) in left {
            self.warnings.push(format!(
                "{}: chain {name}: rule not understood, left out of the model: {}",
                t.source_name, t.text(&t.rules[index])
            ));
        }
    }
}

/// The identity of a key of [`Table::chains`] (the address and length of its text).
fn key_id(k: &str) -> (usize, usize) {
    (k.as_ptr() as usize, k.len())
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

fn detect_layout(t: &Table<'_>) -> Option<Layout> {
    let has = |n: &str| t.chains.get(n).is_some_and(|c| c.hook.is_some());
    if has("filter-prerouting-pre-dnat") || has("filter-output-pre-dnat") {
        Some(Layout::B)
    } else if t.chains.contains_key("endpoints-check") {
        Some(Layout::EndpointsCheck)
    } else if has("filter-output-post-dnat") || has("filter-prerouting") {
        Some(Layout::A)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT_A: &str = include_str!("../../../../testdata/rules/nft-layout-A.json");
    const LAYOUT_B: &str = include_str!("../../../../testdata/rules/nft-layout-B.json");

    fn svc<'a>(p: &'a Parsed, ns_name: &str) -> &'a Service {
        p.services
            .iter()
            .find(|s| s.service.to_string() == ns_name)
            .unwrap_or_else(|| panic!("{ns_name} not in model"))
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
    fn chain_names_parse_and_hashes_verify() {
        let cn = parse_chain_name("service-2QRHZV4L-default/kubernetes/tcp/https").unwrap();
        assert!(cn.hash_ok);
        assert_eq!(cn.port_key(), "default/kubernetes:https");
        let cn = parse_chain_name("endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80").unwrap();
        assert!(cn.hash_ok, "{cn:?}");
        assert_eq!(cn.endpoint, Some((ip("10.180.0.1"), 80)));
        let cn = parse_chain_name("external-NWXYI2MF-ns2/local-lb/tcp/").unwrap();
        assert_eq!(cn.port_key(), "ns2/local-lb");
        assert!(cn.hash_ok);
        assert!(
            !parse_chain_name("service-XXXXXXXX-default/kubernetes/tcp/https")
                .unwrap()
                .hash_ok
        );
        let v6 = parse_chain_name("endpoint-AAAAAAAA-ns/s/tcp/p__fd00.10.244..5/80").unwrap();
        assert_eq!(v6.endpoint, Some((ip("fd00:10:244::5"), 80)));
        assert_eq!(parse_chain_name("services"), None);
        assert_eq!(parse_chain_name("mark-for-masquerade"), None);
    }

    #[test]
    fn both_layouts_give_the_same_services() {
        let a = parse(LAYOUT_A).unwrap();
        let b = parse(LAYOUT_B).unwrap();
        assert_eq!(a.layout, Some(Layout::A));
        assert_eq!(b.layout, Some(Layout::B));
        assert!(a.warnings.is_empty(), "{:#?}", a.warnings);
        assert!(b.warnings.is_empty(), "{:#?}", b.warnings);
        let strip = |p: &Parsed| {
            p.services
                .iter()
                .map(|s| {
                    let fe: Vec<_> = s.frontends.iter().map(|f| (f.kind, f.ip, f.port)).collect();
                    let ep: Vec<_> = s.endpoints.iter().map(|e| (e.ip, e.port, e.local, e.weight)).collect();
                    (s.service.clone(), fe, ep, s.rules.problems.clone())
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(strip(&a), strip(&b));
        assert_eq!(b.mode_hint, Some(ProxyMode::Nftables));
        assert!(b.rules_present);
        assert_eq!(b.node_port_ips, vec![ip("192.168.1.10")]);
    }

    #[test]
    fn reads_frontends_endpoints_and_rule_refs() {
        let p = parse(LAYOUT_B).unwrap();
        let web = svc(&p, "ns1/web");
        let cip = frontend(web, FrontendKind::ClusterIp, 80);
        assert_eq!(cip.ip, ip("10.96.10.10"));
        assert_eq!(cip.port_name, "http");
        let rr = cip.rule.as_ref().unwrap();
        assert_eq!(rr.name, "service-ips");
        assert!(
            rr.text
                .contains("10.96.10.10 . tcp . 80 comment \"ns1/web:http\" : goto service-DK7ABAZC-ns1/web/tcp/http"),
            "{}",
            rr.text
        );
        assert_eq!(frontend(web, FrontendKind::ExternalIp, 80).ip, ip("203.0.113.10"));
        assert_eq!(frontend(web, FrontendKind::NodePort, 30080).ip, ip("192.168.1.10"));
        assert_eq!(web.endpoints.len(), 3);
        let e = &web.endpoints[0];
        assert_eq!((e.ip, e.port), (ip("10.244.1.10"), 8080));
        assert!((e.weight.unwrap() - 1.0 / 3.0).abs() < 1e-9);
        let rr = e.rule.as_ref().unwrap();
        assert!(rr.name.starts_with("endpoint-"));
        assert!(
            rr.text
                .starts_with("meta l4proto tcp dnat to 10.244.1.10:8080 # handle "),
            "{}",
            rr.text
        );
        assert!(web.rules.problems.is_empty(), "{:?}", web.rules.problems);
    }

    #[test]
    fn no_endpoints_and_no_local_endpoints_facts() {
        let p = parse(LAYOUT_B).unwrap();
        let empty = svc(&p, "ns1/empty");
        assert!(empty.endpoints.is_empty());
        assert_eq!(empty.rules.no_endpoints.len(), 2);
        assert!(empty.rules.no_endpoints[0].text.contains("goto reject-chain"));
        assert_eq!(frontend(empty, FrontendKind::ClusterIp, 80).ip, ip("10.96.10.20"));
        assert_eq!(frontend(empty, FrontendKind::NodePort, 30081).ip, ip("192.168.1.10"));
        let lb = svc(&p, "ns2/local-lb");
        assert_eq!(lb.rules.no_local_endpoints.len(), 2);
        assert!(
            lb.rules
                .no_local_endpoints
                .iter()
                .all(|r| r.text.ends_with(": drop") || r.text.contains(": drop #"))
        );
        assert_eq!(lb.endpoints.len(), 2);
    }

    #[test]
    fn local_chain_locality_firewall_ranges_and_affinity() {
        let p = parse(LAYOUT_B).unwrap();
        let fw = svc(&p, "ns3/fw-local");
        let loc: Vec<_> = fw.endpoints.iter().map(|e| (e.ip, e.local)).collect();
        assert_eq!(
            loc,
            vec![(ip("10.244.1.40"), Some(true)), (ip("10.244.3.41"), Some(false))]
        );
        assert_eq!(fw.rules.source_ranges, vec!["192.0.2.0/24".to_string()]);
        assert_eq!(frontend(fw, FrontendKind::LoadBalancer, 443).ip, ip("198.51.100.9"));
        let sticky = svc(&p, "ns2/sticky");
        assert_eq!(sticky.rules.affinity_timeout_secs, Some(10800));
        assert_eq!(sticky.endpoints.len(), 2);
    }

    #[test]
    fn numgen_mismatch_and_missing_chain_are_problems() {
        // ns1/web: mod 3 with three entries -> claim mod 4.
        let mut v: Value = serde_json::from_str(LAYOUT_B).unwrap();
        for o in v["nftables"].as_array_mut().unwrap() {
            if let Some(r) = o.get_mut("rule")
                && r["chain"].as_str().unwrap().starts_with("service-DK7ABAZC")
            {
                for e in r["expr"].as_array_mut().unwrap() {
                    if let Some(vm) = e.get_mut("vmap") {
                        vm["key"]["numgen"]["mod"] = 4.into();
                        vm["data"]["set"][2][1]["goto"]["target"] =
                            "endpoint-ZZZZZZZZ-ns1/web/tcp/http__10.244.9.9/8080".into();
                    }
                }
            }
        }
        let p = parse(&v.to_string()).unwrap();
        let web = svc(&p, "ns1/web");
        assert!(
            web.rules
                .problems
                .iter()
                .any(|m| m.contains("numgen random mod 4 with 3 entries")),
            "{:?}",
            web.rules.problems
        );
        assert!(
            web.rules.problems.iter().any(|m| m.contains("which does not exist")),
            "{:?}",
            web.rules.problems
        );
        assert_eq!(web.endpoints.len(), 2);
    }

    #[test]
    fn map_pointing_at_a_flushed_chain_is_a_problem() {
        let mut v: Value = serde_json::from_str(LAYOUT_B).unwrap();
        v["nftables"].as_array_mut().unwrap().retain(|o| {
            o.get("rule")
                .is_none_or(|r| r["chain"].as_str() != Some("service-2QRHZV4L-default/kubernetes/tcp/https"))
        });
        let p = parse(&v.to_string()).unwrap();
        let k = svc(&p, "default/kubernetes");
        assert!(k.endpoints.is_empty());
        assert!(
            k.rules.problems.iter().any(|m| m.contains("which is empty")),
            "{:?}",
            k.rules.problems
        );
    }

    #[test]
    fn inline_dnat_numgen_map_of_1_36() {
        let json = r#"{"nftables":[{"table":{"family":"ip","name":"kube-proxy","handle":1}},
          {"chain":{"family":"ip","table":"kube-proxy","name":"service-ULMVA6XW-ns1/svc1/tcp/p80","handle":5}},
          {"map":{"family":"ip","name":"service-ips","table":"kube-proxy","type":["ipv4_addr","inet_proto","inet_service"],"handle":3,"map":"verdict",
             "elem":[[{"concat":["172.30.0.41","tcp",80]},{"goto":{"target":"service-ULMVA6XW-ns1/svc1/tcp/p80"}}]]}},
          {"rule":{"family":"ip","table":"kube-proxy","chain":"service-ULMVA6XW-ns1/svc1/tcp/p80","handle":9,"expr":[
             {"match":{"op":"==","left":{"meta":{"key":"l4proto"}},"right":"tcp"}},
             {"dnat":{"family":"ip","addr":{"map":{"key":{"numgen":{"mode":"random","mod":1,"offset":0}},"data":{"set":[[0,{"concat":["10.180.0.1",80]}]]}}}}}]}}]}"#;
        let p = parse(json).unwrap();
        assert!(p.warnings.is_empty(), "{:#?}", p.warnings);
        let s = svc(&p, "ns1/svc1");
        assert_eq!(s.frontends[0].ip, ip("172.30.0.41"));
        assert_eq!(s.endpoints.len(), 1);
        assert_eq!((s.endpoints[0].ip, s.endpoints[0].port), (ip("10.180.0.1"), 80));
    }

    #[test]
    fn ip6_table_and_old_endpoints_check_layout() {
        let ep = "endpoint-AAAAAAAA-ns1/v6/tcp/http__fd00.10.244..5/8080";
        let svc_chain = "service-BBBBBBBB-ns1/v6/tcp/http";
        let json = serde_json::json!({"nftables": [
            {"table": {"family": "ip6", "name": "kube-proxy", "handle": 1}},
            {"chain": {"family": "ip6", "table": "kube-proxy", "name": "endpoints-check", "handle": 2}},
            {"chain": {"family": "ip6", "table": "kube-proxy", "name": svc_chain, "handle": 3}},
            {"chain": {"family": "ip6", "table": "kube-proxy", "name": ep, "handle": 4}},
            {"map": {"family": "ip6", "name": "service-ips", "table": "kube-proxy", "handle": 5, "map": "verdict",
                     "type": ["ipv6_addr", "inet_proto", "inet_service"],
                     "elem": [[{"concat": ["fd00:10:96::10", "tcp", 80]}, {"goto": {"target": svc_chain}}]]}},
            {"map": {"family": "ip6", "name": "service-nodeports", "table": "kube-proxy", "handle": 6, "map": "verdict",
                     "type": ["inet_proto", "inet_service"],
                     "elem": [[{"concat": ["tcp", 30080]}, {"goto": {"target": svc_chain}}]]}},
            {"rule": {"family": "ip6", "table": "kube-proxy", "chain": svc_chain, "handle": 7, "expr": [
                {"vmap": {"key": {"numgen": {"mode": "random", "mod": 1, "offset": 0}}, "data": {"set": [[0, {"goto": {"target": ep}}]]}}}]}},
            {"rule": {"family": "ip6", "table": "kube-proxy", "chain": ep, "handle": 8, "expr": [
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"dnat": {"family": "ip6", "addr": "fd00:10:244::5", "port": 8080}}]}}
        ]});
        let p = parse(&json.to_string()).unwrap();
        assert_eq!(p.layout, Some(Layout::EndpointsCheck));
        let s = svc(&p, "ns1/v6");
        assert_eq!(s.frontends[0].ip, ip("fd00:10:96::10"));
        // No nodeport-ips set: NodePorts on any local address, `::` in an ip6 table.
        assert_eq!(frontend(s, FrontendKind::NodePort, 30080).ip, ip("::"));
        assert_eq!((s.endpoints[0].ip, s.endpoints[0].port), (ip("fd00:10:244::5"), 8080));
        assert!(
            s.endpoints[0]
                .rule
                .as_ref()
                .unwrap()
                .text
                .contains("dnat to [fd00:10:244::5]:8080")
        );
        // The made-up hashes are reported, not fatal.
        assert_eq!(
            p.warnings.iter().filter(|w| w.contains("is not kube-proxy's")).count(),
            2,
            "{:#?}",
            p.warnings
        );
    }

    #[test]
    fn unknown_rules_are_reported() {
        let mut v: Value = serde_json::from_str(LAYOUT_B).unwrap();
        v["nftables"].as_array_mut().unwrap().push(serde_json::json!({"rule": {"family": "ip", "table": "kube-proxy",
            "chain": "service-DK7ABAZC-ns1/web/tcp/http", "handle": 999, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"log": null}]}}));
        let p = parse(&v.to_string()).unwrap();
        assert_eq!(p.warnings.len(), 1, "{:#?}", p.warnings);
        assert!(
            p.warnings[0].contains("not understood") && p.warnings[0].contains("# handle 999"),
            "{}",
            p.warnings[0]
        );
    }

    /// Truncated JSON is an error; structurally valid JSON with odd values is read without a panic.
    #[test]
    fn truncated_and_mangled_json_never_panics() {
        for cut in (0..LAYOUT_B.len()).step_by(389) {
            let _ = parse(&LAYOUT_B[..cut]);
        }
        // Replace every scalar of one kind with odd values, object by object.
        let v: Value = serde_json::from_str(LAYOUT_A).unwrap();
        fn mangle(v: &Value, with: &Value) -> Value {
            match v {
                Value::Object(m) => Value::Object(m.iter().map(|(k, x)| (k.clone(), mangle(x, with))).collect()),
                Value::Array(a) => Value::Array(a.iter().map(|x| mangle(x, with)).collect()),
                Value::Number(_) => with.clone(),
                other => other.clone(),
            }
        }
        for with in [
            Value::Null,
            Value::from(-1),
            Value::from(u64::MAX),
            Value::from("x"),
            Value::from(1e300),
        ] {
            let _ = parse(&mangle(&v, &with).to_string());
        }
        let objects = v["nftables"].as_array().unwrap();
        for skip in (0..objects.len()).step_by(5) {
            let fewer: Vec<&Value> = objects
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, o)| o)
                .collect();
            let p = parse(&serde_json::json!({ "nftables": fewer }).to_string()).unwrap();
            assert!(p.services.len() <= 7);
        }
    }

    #[test]
    fn borrowed_json_answers_as_value_does() {
        let text = r#"{"b": 1, "a": {"x": "y"}, "a": {"x": "z"}, "s": "q\"uote", "n": null, "f": 1.5, "m": -3,
            "arr": [1, "two", {"k": true}, []], "e": {}}"#;
        let j: J = serde_json::from_str(text).unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(j.to_value(), v);
        assert_eq!(j.to_string(), v.to_string());
        assert_eq!(j.at("a").at("x").as_str(), Some("z"));
        let (k, first) = j.first_entry().unwrap();
        assert_eq!((k, first.at("x").as_str()), ("a", Some("z")));
        assert!(matches!(j.at("arr").as_array().unwrap()[1], J::Str(Cow::Borrowed("two"))));
        assert!(matches!(j.get("s"), Some(J::Str(Cow::Owned(s))) if s == "q\"uote"));
        assert_eq!((j.at("m").as_u64(), j.at("b").as_u64(), j.at("f").as_u64()), (None, Some(1), None));
        assert!(j.at("n").is_null() && j.at("missing").is_null() && j.at("arr").is_array());
        assert_eq!(j.at("e").first_entry(), None);
        assert_eq!(render_val(j.at("e")), "{}");
        // Trees given back to the pool are reused and read the same.
        let pool = RefCell::new(Pool::default());
        for _ in 0..3 {
            let mut de = serde_json::Deserializer::from_str(text);
            let k = serde::de::DeserializeSeed::deserialize(JVisitor(Some(&pool)), &mut de).unwrap();
            assert_eq!(k, j);
            pool.borrow_mut().recycle(k);
        }
        assert!(!pool.borrow().arrs.is_empty() && !pool.borrow().objs.is_empty());
    }

    #[test]
    fn object_with_several_kinds_reads_the_smallest_as_value_did() {
        // "chain" < "rule": the chain is read, the rule is not; non-object elements are skipped.
        let json = r#"{"nftables":[1, "x", null, [1, {"a": 2}], {"table":{"family":"ip","name":"kube-proxy"}},
          {"rule":{"table":"kube-proxy","chain":"c","expr":[{"accept":null}]},"chain":{"table":"kube-proxy","name":"c"}},
          {"rule":"not an object"},
          {"rule":{"table":"kube-proxy","chain":"c","expr":[{"drop":null}]},"rule":{"table":"kube-proxy","chain":"d","expr":5}}]}"#;
        let p = parse(json).unwrap();
        assert!(p.rules_present);
        assert_eq!(p.rule_count, 1);
    }

    #[test]
    fn errors_and_foreign_tables() {
        assert!(matches!(
            parse("Error: No such file or directory"),
            Err(ParseError::NotJson { .. })
        ));
        assert!(matches!(parse("{\"x\": 1}"), Err(ParseError::NotNftJson { .. })));
        let p = parse(
            r#"{"nftables":[{"metainfo":{"version":"1.0.6"}},{"table":{"family":"ip","name":"filter","handle":1}}]}"#,
        )
        .unwrap();
        assert!(!p.rules_present && p.services.is_empty() && p.mode_hint.is_none());
    }
}
