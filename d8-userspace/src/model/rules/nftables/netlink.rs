//! The kernel reader: kube-proxy's table read over nf_tables netlink (`kernel::nftables`) into the
//! same table stage (`table.rs`) the `nft -j` reader feeds, so the builder, the model and the
//! classifier cannot tell the two apart.
//!
//! Each kernel object becomes the body `nft -j` would print for it: a chain its hook, a rule its
//! statements (`expr.rs`), a set or map its handle, timeout and elements. Elements are decoded
//! by the set's key and data types (`ipv4_addr . inet_proto . inet_service : verdict`) and listed
//! in nft's order (it sorts them; the kernel keeps hash order). Anonymous sets (a rule's
//! `numgen random mod 3 vmap { 0 : goto …, … }`) are read before the rules and printed inline in
//! the rule that uses them, as nft does.
//!
//! What it does not know (an expression, an attribute, a key type, an interval map) stops the read
//! with [`Error::Unknown`]: the caller then reads the table with `nft -j` and says so. The whole
//! read is checked against the ruleset's generation and done again when kube-proxy changed the
//! table meanwhile, as nft does.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;

use super::chain_name::CName;
use super::expr::{self, Attrs, Data, R, SetRef, Unknown, bits, n, obj, s, unknown};
use super::json::{Body, J, Pool};
use super::table::{MODEL_SETS, Table};
use super::{Parsed, build};
use crate::kernel::netlink::attrs;
use crate::kernel::nftables::{self as nl, FAMILY_IP6, Kind, Object, Reader};
use crate::model::ServiceRef;

/// The kernel read failed or met something the decoder does not know.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket or the kernel refused (no nf_tables, no permission, …).
    #[error("nf_tables netlink: {0}")]
    Io(#[source] io::Error),
    /// kube-proxy's table changed during every attempt to read it.
    #[error("the table changed during each of {0} reads")]
    Unstable(usize),
    /// Something the decoder does not know: the text tool reads it instead.
    #[error("not understood: {0}")]
    Unknown(String),
    /// A legacy x_tables table could not be read (iptables-legacy's rules, see
    /// `iptables/legacy.rs`).
    #[error("x_tables getsockopt (table {table}): {source}")]
    XTables {
        table: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// The kernel has no nf_tables (no rules can be there).
    pub fn no_nf_tables(&self) -> bool {
        matches!(self, Error::Io(e) if matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT)
        ))
    }
}

impl From<Unknown> for Error {
    fn from(u: Unknown) -> Self {
        Error::Unknown(u.0)
    }
}

/// Reads `table <family> kube-proxy` from the kernel (`family`: [`nl::FAMILY_IP`] or
/// [`FAMILY_IP6`]); warnings name `source_name`. A missing table is a [`Parsed`] without rules.
///
/// `only`: read the table as if it held this Service alone (`explain`, a trace): its chains,
/// rules and map elements, and the chains of no Service. The Service comes out as a whole read
/// models it, and the read costs a few dumps instead of one per anonymous set (the kernel finds
/// a set by walking the table's list of them, so reading every `numgen` map of 10,000 Services
/// costs seconds, as it does `nft`).
pub fn read(family: u8, source_name: &str, only: Option<&ServiceRef>) -> Result<Parsed, Error> {
    match read_consistent(family, source_name, only) {
        // No nf_tables in this kernel: no nftables rules either.
        Err(e) if e.no_nf_tables() => Ok(Parsed::default()),
        other => other,
    }
}

fn read_consistent(family: u8, source_name: &str, only: Option<&ServiceRef>) -> Result<Parsed, Error> {
    let mut reader = Reader::open().map_err(Error::Io)?;
    const ATTEMPTS: usize = 3;
    for _ in 0..ATTEMPTS {
        let before = generation(&mut reader)?;
        let mut d = Decoder::new(family, source_name);
        d.only = only.cloned();
        match d.read_all(&mut reader) {
            Ok(()) => {}
            Err(Step::Changed) => continue,
            Err(Step::Failed(e)) => return Err(e),
        }
        if generation(&mut reader)? != before {
            continue;
        }
        return Ok(d.finish());
    }
    Err(Error::Unstable(ATTEMPTS))
}

/// The ruleset's generation, as the kernel readers' error.
pub(in crate::model::rules) fn generation(r: &mut Reader) -> Result<u32, Error> {
    r.generation().map_err(|e| match e {
        nl::Error::Io(e) => Error::Io(e),
        other => Error::Io(io::Error::other(other.to_string())),
    })
}

/// How a read attempt (or one dump of it) ended early.
pub(in crate::model::rules) enum Step {
    /// The ruleset changed (a dump was interrupted): try again.
    Changed,
    Failed(Error),
}

impl From<Error> for Step {
    fn from(e: Error) -> Self {
        Step::Failed(e)
    }
}

impl From<Unknown> for Step {
    fn from(u: Unknown) -> Self {
        Step::Failed(u.into())
    }
}

/// One dump of `table` (see [`Reader::dump`]), each object given to `each`; an error of `each`
/// stops it and is returned, an interrupted dump is [`Step::Changed`].
pub(in crate::model::rules) fn dump(
    r: &mut Reader,
    family: u8,
    kind: Kind,
    table: &str,
    name: Option<&str>,
    mut each: impl FnMut(Object<'_>) -> Result<(), Error>,
) -> Result<(), Step> {
    let mut failed = None;
    let res = r.dump(family, kind, table, name, |o| match each(o) {
        Ok(()) => true,
        Err(e) => {
            failed = Some(e);
            false
        }
    });
    match res {
        Ok(()) => Ok(()),
        Err(nl::Error::Interrupted) => Err(Step::Changed),
        Err(nl::Error::Stopped) => Err(Step::Failed(failed.unwrap_or(Error::Unknown("stopped".into())))),
        Err(nl::Error::Io(e)) => Err(Step::Failed(Error::Io(e))),
    }
}

const TABLE: &str = "kube-proxy";

/// The key or data type of a set, component by component (`NFTA_SET_KEY_TYPE`, nft's datatype
/// numbers; a concatenation packs one per 6 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Integer(usize),
    Ipv4,
    Ipv6,
    Proto,
    Service,
}

impl Ty {
    /// Bytes of the value itself (a register holds it padded to 4).
    fn len(self) -> usize {
        match self {
            Ty::Integer(n) => n,
            Ty::Ipv4 => 4,
            Ty::Ipv6 => 16,
            Ty::Proto => 1,
            Ty::Service => 2,
        }
    }

    /// Stored in network byte order (else host order).
    fn big_endian(self) -> bool {
        matches!(self, Ty::Ipv4 | Ty::Ipv6 | Ty::Service)
    }

    fn value(self, b: &[u8]) -> R<J<'static>> {
        Ok(match self {
            Ty::Ipv4 => s(expr::addr_text(b, false)),
            Ty::Ipv6 => s(expr::addr_text(b, true)),
            Ty::Proto => s(expr::proto_name(b[0])?),
            Ty::Service => n(u16::from_be_bytes([b[0], b[1]]) as u64),
            Ty::Integer(4) => n(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as u64),
            Ty::Integer(l) => return unknown(format!("integer key of {l} bytes")),
        })
    }
}

/// The components of datatype `id` with `len` key bytes.
fn types(id: u32, len: usize) -> R<Vec<Ty>> {
    let mut ids = Vec::new();
    let mut rest = id;
    while rest != 0 {
        ids.push(rest & 0x3f);
        rest >>= 6;
    }
    ids.reverse();
    let single = ids.len() == 1;
    let tys = ids
        .into_iter()
        .map(|t| match t {
            4 if single => Ok(Ty::Integer(len)),
            7 => Ok(Ty::Ipv4),
            8 => Ok(Ty::Ipv6),
            12 => Ok(Ty::Proto),
            13 => Ok(Ty::Service),
            t => unknown(format!("set key type {t} (of {id:#x})")),
        })
        .collect::<R<Vec<_>>>()?;
    let padded: usize = tys.iter().map(|t| t.len().div_ceil(4) * 4).sum();
    if tys.is_empty() || (padded != len && !(single && tys[0].len() == len)) {
        return unknown(format!("set key type {id:#x} of {len} bytes"));
    }
    Ok(tys)
}

/// What a set's elements look like.
#[derive(Debug)]
struct SetInfo {
    name: String,
    handle: Option<u64>,
    flags: u32,
    key: Vec<Ty>,
    key_len: usize,
    /// `None`: a set; `Some(None)`: a verdict map; `Some(Some(types))`: a data map.
    data: Option<Option<Vec<Ty>>>,
    timeout_secs: Option<u64>,
}

const SET_ANONYMOUS: u32 = 0x1;
const SET_INTERVAL: u32 = 0x4;
const SET_MAP: u32 = 0x8;
const SET_OBJECT: u32 = 0x40;
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;

/// A decoded element: nft's sort key, its key, its data (`Null` for sets) and comment.
type Elem = (Vec<u8>, J<'static>, J<'static>, Option<String>);

struct Decoder {
    family: u8,
    table: Table<'static>,
    pool: RefCell<Pool<'static>>,
    sets: HashMap<String, SetInfo>,
    /// Anonymous sets, printed inline: `{"set": [...]}`.
    inline: HashMap<String, J<'static>>,
    /// Read only this Service's chains and elements (see [`read`]).
    only: Option<ServiceRef>,
    /// With `only`: the chains read, in the kernel's order.
    chains: Vec<String>,
}

impl Decoder {
    fn new(family: u8, source_name: &str) -> Self {
        let mut table = Table::for_input(source_name, 0);
        table.family = if family == FAMILY_IP6 { "ip6" } else { "ip" }.into();
        Self {
            family,
            table,
            pool: RefCell::default(),
            sets: HashMap::new(),
            inline: HashMap::new(),
            only: None,
            chains: Vec::new(),
        }
    }

    /// Whether a chain or set belongs to the Service read (or to none: kube-proxy's own chains).
    fn in_scope(&self, name: &str) -> bool {
        match (&self.only, CName::parse(name)) {
            (Some(only), Some(cn)) => cn.namespace == only.namespace && cn.service == only.name,
            _ => true,
        }
    }

    /// Whether a map element belongs to the Service read: by the chain it goes to, else by its
    /// comment (`ns/name:port`), as the builder tells owners.
    fn elem_in_scope(&self, data: &J<'_>, comment: Option<&str>) -> bool {
        let Some(only) = &self.only else { return true };
        let target = data
            .get("goto")
            .or_else(|| data.get("jump"))
            .and_then(|v| v.at("target").as_str());
        if let Some(cn) = target.and_then(CName::parse) {
            return cn.namespace == only.namespace && cn.service == only.name;
        }
        match comment.map(|c| c.split(':').next().unwrap_or(c).split_once('/')) {
            Some(Some((ns, name))) => ns == only.namespace && name == only.name,
            _ => true,
        }
    }

    fn body(&self) -> Box<Body<'static>> {
        let mut b = self.pool.borrow_mut().body();
        b.table = s(TABLE);
        b
    }

    fn add(&mut self, kind: &str, body: Box<Body<'static>>) {
        self.table.add(kind, body, &self.pool);
        // The trees are built afresh for each object: their containers are not kept.
        self.pool.borrow_mut().drop_containers();
    }

    fn dump(
        &mut self,
        r: &mut Reader,
        kind: Kind,
        set: Option<&str>,
        mut each: impl FnMut(&mut Self, Object<'_>) -> Result<(), Error>,
    ) -> Result<(), Step> {
        let family = self.family;
        dump(r, family, kind, TABLE, set, |o| each(self, o))
    }

    fn read_all(&mut self, r: &mut Reader) -> Result<(), Step> {
        match self.dump(r, Kind::Table, None, |d, _| {
            d.table.found = true;
            Ok(())
        }) {
            Err(Step::Failed(Error::Io(e))) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            other => other?,
        }
        self.dump(r, Kind::Chain, None, Self::chain)?;
        let mut named = Vec::new();
        self.dump(r, Kind::Set, None, |d, o| {
            if let Some(info) = d.set(o)? {
                named.push(info.name.clone());
                d.sets.insert(info.name.clone(), info);
            }
            Ok(())
        })?;
        named.sort();
        let scoped = self.only.is_some();
        // Each set's elements are a dump of their own: those the model reads, and anonymous sets
        // (printed inside rules; with `only`, those its rules use, once they are read).
        for name in named {
            let info = &self.sets[&name];
            if scoped && (info.flags & SET_ANONYMOUS != 0 || !self.in_scope(&name)) {
                continue;
            }
            let wanted = info.flags & SET_ANONYMOUS != 0 || MODEL_SETS.contains(&name.as_str());
            let mut elems: Vec<Elem> = Vec::new();
            if wanted {
                if info.flags & SET_OBJECT != 0 {
                    return Err(Unknown(format!("set `{name}`: object set")).into());
                }
                self.dump(r, Kind::Elements, Some(&name), |d, o| d.elements(&name, o, &mut elems))?;
                elems = self.in_order(&name, elems)?;
            }
            self.add_set(&name, elems);
        }
        if !scoped {
            return self.dump(r, Kind::Rule, None, Self::rule);
        }
        // The Service's rules and kube-proxy's own, chain by chain; then the anonymous sets they
        // use; then the rules decoded.
        let mut rules: Vec<Vec<u8>> = Vec::new();
        for chain in std::mem::take(&mut self.chains) {
            let listed = self.dump(r, Kind::Rule, Some(&chain), |_, o| {
                rules.push(o.attrs.to_vec());
                Ok(())
            });
            match listed {
                // The chain went away since the chains were listed: the table changed.
                Err(Step::Failed(Error::Io(e))) if e.raw_os_error() == Some(libc::ENOENT) => return Err(Step::Changed),
                other => other?,
            }
        }
        let mut used: Vec<String> = rules.iter().flat_map(|a| sets_named(a)).collect();
        used.sort();
        used.dedup();
        for name in used {
            let anonymous = self.sets.get(&name).is_some_and(|i| i.flags & SET_ANONYMOUS != 0);
            if !anonymous || self.inline.contains_key(&name) {
                continue;
            }
            if self.sets[&name].flags & SET_OBJECT != 0 {
                return Err(Unknown(format!("set `{name}`: object set")).into());
            }
            let mut elems: Vec<Elem> = Vec::new();
            self.dump(r, Kind::Elements, Some(&name), |d, o| d.elements(&name, o, &mut elems))?;
            let elems = self.in_order(&name, elems)?;
            self.add_set(&name, elems);
        }
        for attrs in rules {
            self.rule(Object {
                family: self.family,
                attrs: &attrs,
            })?;
        }
        Ok(())
    }

    fn finish(self) -> Parsed {
        // The sets' types, the anonymous sets (each already printed in its rule) and the pool's
        // spare trees are of no use to the builder: dropped before it runs, since its model is
        // the read's peak (at 10,000 Services, an inline set for each Service's dispatch).
        // (A `let Decoder { table, .. } = self` would keep the other fields alive to the end of
        // this function, through the build: they are taken apart and dropped here.)
        let Decoder {
            mut table,
            pool,
            sets,
            inline,
            chains,
            ..
        } = self;
        drop((pool, sets, inline, chains));
        table.index_rules();
        build::build(&table)
    }

    fn chain(&mut self, o: Object<'_>) -> Result<(), Error> {
        // NFTA_CHAIN_TABLE, NAME, HOOK (nest: HOOKNUM, ...).
        let a = Attrs::parse(o.attrs, u32::MAX >> 8, "chain")?;
        if a.str(1)? != Some(TABLE) {
            return Ok(());
        }
        let Some(name) = a.str(3)? else { return Ok(()) };
        if self.only.is_some() {
            if !self.in_scope(name) {
                return Ok(());
            }
            self.chains.push(name.to_string());
        }
        let mut b = self.body();
        b.name = s(name);
        if let Some(hook) = a.get(4) {
            let h = Attrs::parse(hook, u32::MAX >> 8, "chain hook")?;
            let names = ["prerouting", "input", "forward", "output", "postrouting", "ingress"];
            let num = h.need_u32(1, "chain hook")? as usize;
            let Some(hook) = names.get(num) else {
                return Err(Error::Unknown(format!("chain `{name}`: hook {num}")));
            };
            b.hook = s(*hook);
        }
        self.add("chain", b);
        Ok(())
    }

    fn set(&mut self, o: Object<'_>) -> Result<Option<SetInfo>, Error> {
        let a = Attrs::parse(o.attrs, u32::MAX >> 8, "set")?;
        if a.str(1)? != Some(TABLE) {
            return Ok(None);
        }
        let Some(name) = a.str(2)? else { return Ok(None) };
        let flags = a.u32(3)?.unwrap_or(0);
        let key_len = a.u32(5)?.unwrap_or(0) as usize;
        let key_type = a.u32(4)?.unwrap_or(0);
        let wanted = flags & SET_ANONYMOUS != 0 || MODEL_SETS.contains(&name);
        // Types are decoded only where elements are read: an affinity set's type does not matter.
        let key = if wanted { types(key_type, key_len)? } else { Vec::new() };
        let data = if flags & SET_MAP != 0 {
            match a.u32(6)? {
                Some(NFT_DATA_VERDICT) => Some(None),
                Some(t) if wanted => Some(Some(types(t, a.u32(7)?.unwrap_or(0) as usize)?)),
                _ => Some(Some(Vec::new())),
            }
        } else {
            None
        };
        Ok(Some(SetInfo {
            name: name.to_string(),
            handle: a.u64(16)?,
            flags,
            key,
            key_len,
            data,
            timeout_secs: a.u64(11)?.map(|ms| ms / 1000),
        }))
    }

    fn elements(&mut self, set: &str, o: Object<'_>, out: &mut Vec<Elem>) -> Result<(), Error> {
        let a = Attrs::parse(o.attrs, bits(&[1, 2, 3, 4]), "set elements")?;
        if a.str(1)? != Some(TABLE) || a.str(2)? != Some(set) {
            return Ok(());
        }
        let info = &self.sets[set];
        for (kind, e) in attrs(a.get(3).unwrap_or_default()) {
            if kind != 1 {
                return Err(Error::Unknown(format!("set `{set}`: element list attribute {kind}")));
            }
            let elem = element(info, e)?;
            if self.elem_in_scope(&elem.2, elem.3.as_deref()) {
                out.push(elem);
            }
        }
        Ok(())
    }

    /// A set's elements as nft lists them: sorted by value (the kernel keeps hash order), and an
    /// interval set's boundaries turned back into the prefixes, ranges and addresses they hold.
    fn in_order(&self, set: &str, mut elems: Vec<Elem>) -> Result<Vec<Elem>, Error> {
        elems.sort_by(|a, b| a.0.cmp(&b.0));
        let info = &self.sets[set];
        if info.flags & SET_INTERVAL == 0 {
            return Ok(elems);
        }
        Ok(intervals(info, &elems)?)
    }

    /// Adds a set's body; anonymous ones are kept for the rules that print them.
    fn add_set(&mut self, name: &str, elems: Vec<Elem>) {
        let info = &self.sets[name];
        let is_map = info.data.is_some();
        if info.flags & SET_ANONYMOUS != 0 {
            let items = elems
                .into_iter()
                .map(|(_, k, v, _)| if is_map { J::Arr(vec![k, v]) } else { k })
                .collect();
            self.inline.insert(name.to_string(), obj(vec![("set", J::Arr(items))]));
            return;
        }
        let mut b = self.body();
        b.name = s(name);
        b.handle = info.handle.map_or(J::Null, n);
        b.timeout = info.timeout_secs.filter(|&t| t > 0).map_or(J::Null, n);
        if !elems.is_empty() {
            let items = elems
                .into_iter()
                .map(|(_, k, v, comment)| {
                    let k = match comment {
                        Some(c) => obj(vec![("elem", obj(vec![("val", k), ("comment", s(c))]))]),
                        None => k,
                    };
                    if is_map { J::Arr(vec![k, v]) } else { k }
                })
                .collect();
            b.elem = J::Arr(items);
        }
        self.add(if is_map { "map" } else { "set" }, b);
    }

    fn rule(&mut self, o: Object<'_>) -> Result<(), Error> {
        // TABLE, CHAIN, HANDLE, EXPRESSIONS, POSITION (the handle of the rule before), USERDATA,
        // and the padding attribute.
        let a = Attrs::parse(o.attrs, bits(&[1, 2, 3, 4, 6, 7, 8]), "rule")?;
        if a.str(1)? != Some(TABLE) {
            return Ok(());
        }
        let Some(chain) = a.str(2)? else { return Ok(()) };
        let v6 = self.family == FAMILY_IP6;
        let printed = RefCell::new(Vec::new());
        let lookup = |name: &str| -> Option<SetRef> {
            let info = self.sets.get(name)?;
            let inline = self.inline.get(name).cloned();
            if inline.is_some() {
                printed.borrow_mut().push(name.to_string());
            }
            Some(SetRef {
                key_len: info.key_len,
                inline,
            })
        };
        let stmts = expr::statements(a.get(4).unwrap_or_default(), v6, &lookup)
            .map_err(|u| Error::Unknown(format!("rule in chain `{chain}`: {}", u.0)))?;
        // An anonymous set belongs to the one rule the kernel bound it to: printed there, it is
        // of no further use, and dropping it now lets the table grow into its memory (at 10,000
        // Services, a numgen map per Service: ~20 MB).
        for name in printed.into_inner() {
            self.inline.remove(&name);
        }
        let mut b = self.body();
        b.chain = s(chain);
        b.handle = a.u64(3)?.map_or(J::Null, n);
        if let Some(c) = a.get(7).map(comment).transpose()?.flatten() {
            b.comment = s(c);
        }
        b.expr = J::Arr(stmts);
        self.add("rule", b);
        Ok(())
    }
}

/// The sets a rule's expressions name (`lookup`, `dynset`), without decoding the rest.
fn sets_named(rule: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let exprs = attrs(rule)
        .into_iter()
        .find(|(k, _)| *k == 4)
        .map(|(_, v)| v)
        .unwrap_or_default();
    for (_, e) in attrs(exprs) {
        let parts = attrs(e);
        let name = parts.iter().find(|(k, _)| *k == 1).map(|(_, v)| *v);
        let data = parts.iter().find(|(k, _)| *k == 2).map(|(_, v)| *v).unwrap_or_default();
        if matches!(name, Some(b"lookup\0" | b"dynset\0"))
            && let Some((_, set)) = attrs(data).into_iter().find(|(k, _)| *k == 1)
        {
            out.push(String::from_utf8_lossy(set.strip_suffix(&[0]).unwrap_or(set)).into_owned());
        }
    }
    out
}

/// The comment of rule or element userdata (TLVs of type, length, value; type 0 is the comment).
fn comment(udata: &[u8]) -> R<Option<String>> {
    let mut rest = udata;
    while rest.len() >= 2 {
        let (t, l) = (rest[0], rest[1] as usize);
        let Some(v) = rest.get(2..2 + l) else {
            return unknown("userdata: truncated");
        };
        if t == 0 {
            let v = v.strip_suffix(&[0]).unwrap_or(v);
            return match std::str::from_utf8(v) {
                Ok(c) => Ok(Some(c.to_string())),
                Err(_) => unknown("userdata: comment not UTF-8"),
            };
        }
        rest = &rest[2 + l..];
    }
    Ok(None)
}

/// `NFT_SET_ELEM_INTERVAL_END`: the element is where an interval ends (one past its last value).
const ELEM_INTERVAL_END: u32 = 0x1;

/// One element (`NFTA_LIST_ELEM`'s nest) of `info`. An interval set's element is a boundary,
/// kept raw for [`intervals`]: its sort key is the key's bytes and then 0 for an end, 1 for a
/// start (nft orders an end before a start of the same value), its key and data `Null`.
fn element(info: &SetInfo, e: &[u8]) -> R<Elem> {
    // KEY, DATA, FLAGS, USERDATA; a timeout, an expression (counter) or a KEY_END (a
    // concatenation's interval) is not expected here.
    let a = Attrs::parse(e, bits(&[1, 2, 3, 6]), "set element")?;
    let interval = info.flags & SET_INTERVAL != 0;
    let flags = a.u32(3)?.unwrap_or(0);
    let allowed = if interval { ELEM_INTERVAL_END } else { 0 };
    if flags & !allowed != 0 {
        return unknown(format!("set `{}`: element flags {flags:#x}", info.name));
    }
    let Some(Data::Value(raw)) = a.get(1).map(expr::decode_data).transpose()? else {
        return unknown(format!("set `{}`: element without a key", info.name));
    };
    if interval {
        if a.get(2).is_some() {
            return unknown(format!("set `{}`: an interval map", info.name));
        }
        let mut sort = raw.to_vec();
        sort.push(u8::from(flags & ELEM_INTERVAL_END == 0));
        return Ok((sort, J::Null, J::Null, None));
    }
    let (key, sort) = typed(&info.key, raw)?;
    let data = match (&info.data, a.get(2).map(expr::decode_data).transpose()?) {
        (None, None) => J::Null,
        (Some(None), Some(Data::Verdict(v))) => v,
        (Some(Some(tys)), Some(Data::Value(v))) if !tys.is_empty() => typed(tys, v)?.0,
        _ => return unknown(format!("set `{}`: element data not as the set's type", info.name)),
    };
    let c = a.get(6).map(comment).transpose()?.flatten();
    Ok((sort, key, data, c))
}

/// An interval set's boundaries (from [`element`], sorted) as nft lists the set, following its
/// `interval_map_decompose`: each start runs to the next boundary less one (to the largest value
/// when none follows), an end with no start open is skipped, and a run is printed as one address,
/// a prefix when it is one, else a range. Only address keys: kube-proxy's interval sets are its
/// firewall chains' `ip saddr != { CIDR, … }`; anything else is not understood.
fn intervals(info: &SetInfo, bounds: &[Elem]) -> R<Vec<Elem>> {
    let v6 = match info.key.as_slice() {
        [Ty::Ipv4] if info.data.is_none() => false,
        [Ty::Ipv6] if info.data.is_none() => true,
        _ => return unknown(format!("set `{}`: an interval set of {:?}", info.name, info.key)),
    };
    let width = if v6 { 16 } else { 4 };
    let mut out = Vec::new();
    let mut low: Option<u128> = None;
    for (sort, ..) in bounds {
        let Some((&start, key)) = sort.split_last() else {
            return unknown(format!("set `{}`: an empty interval key", info.name));
        };
        if key.len() != width {
            return unknown(format!("set `{}`: an interval key of {} bytes", info.name, key.len()));
        }
        let value = key.iter().fold(0u128, |acc, &b| (acc << 8) | u128::from(b));
        if let Some(from) = low {
            // A boundary equal to the start: an empty run, which nft does not write.
            if value <= from {
                return unknown(format!("set `{}`: intervals out of order", info.name));
            }
            out.push(interval(from, value - 1, v6));
        }
        low = (start == 1).then_some(value);
    }
    if let Some(from) = low {
        let max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        out.push(interval(from, max, v6));
    }
    Ok(out)
}

/// The run `from..=to` of addresses as nft prints it (the element's sort key: its start).
fn interval(from: u128, to: u128, v6: bool) -> Elem {
    let bytes = |v: u128| -> Vec<u8> {
        let all = v.to_be_bytes();
        all[if v6 { 0 } else { 12 }..].to_vec()
    };
    let addr = |v: u128| s(expr::addr_text(&bytes(v), v6));
    let size = to - from;
    // The host bits of a prefix: `size + 1` is a power of two (all of them for `::/0`).
    let host = match size.checked_add(1) {
        None => Some(128),
        Some(count) => count.is_power_of_two().then(|| count.trailing_zeros()),
    };
    let bits = if v6 { 128 } else { 32 };
    let key = match host {
        _ if size == 0 => addr(from),
        // `from` has all host bits clear (and `to` all set): a prefix.
        Some(host) if from & size == 0 => obj(vec![(
            "prefix",
            obj(vec![("addr", addr(from)), ("len", n(u64::from(bits - host)))]),
        )]),
        _ => obj(vec![("range", J::Arr(vec![addr(from), addr(to)]))]),
    };
    (bytes(from), key, J::Null, None)
}

/// A value of types `tys` from register-padded bytes, and nft's sort key for it: one value is
/// ordered by its number (network-order types by their bytes, host-order ones by their bytes
/// reversed); a concatenation by the number its components' bytes make read in host (little
/// endian) order, i.e. by the concatenated bytes reversed.
fn typed(tys: &[Ty], raw: &[u8]) -> R<(J<'static>, Vec<u8>)> {
    let mut at = 0;
    let mut items = Vec::with_capacity(tys.len());
    let mut bytes = Vec::with_capacity(raw.len());
    for &t in tys {
        let Some(b) = raw.get(at..at + t.len()) else {
            return unknown("set value shorter than its type");
        };
        items.push(t.value(b)?);
        bytes.extend_from_slice(b);
        at += if tys.len() == 1 {
            t.len()
        } else {
            t.len().div_ceil(4) * 4
        };
    }
    if at != raw.len() && at.div_ceil(4) * 4 != raw.len() {
        return unknown("set value longer than its type");
    }
    let sort = if tys.len() == 1 && tys[0].big_endian() {
        bytes
    } else {
        bytes.reverse();
        bytes
    };
    let j = if items.len() == 1 {
        items.pop().unwrap_or(J::Null)
    } else {
        obj(vec![("concat", J::Arr(items))])
    };
    Ok((j, sort))
}

/// Decodes a recorded read: the kernel's answers (`NFT_MSG_NEWTABLE`, `NEWCHAIN`, `NEWSET`,
/// `NEWSETELEM`, `NEWRULE` messages with their netlink headers, in any order; others are skipped)
/// one after the other, for `family`'s table. For the fuzz target and the tests: nothing may
/// panic, and what is not understood is an error.
pub fn decode_dump(family: u8, bytes: &[u8]) -> Result<Parsed, Error> {
    let msgs: Vec<(Kind, &[u8])> = crate::kernel::netlink::messages(bytes)
        .into_iter()
        .filter(|m| m.kind >> 8 == 10)
        .filter_map(|m| {
            let kind = match m.kind & 0xff {
                0 => Kind::Table,
                3 => Kind::Chain,
                6 => Kind::Rule,
                9 => Kind::Set,
                12 => Kind::Elements,
                _ => return None,
            };
            Some((kind, m.payload))
        })
        .collect();
    decode_messages(family, &msgs)
}

fn decode_messages(family: u8, messages: &[(Kind, &[u8])]) -> Result<Parsed, Error> {
    let mut d = Decoder::new(family, "netlink");
    d.table.found = true;
    let mut elems: HashMap<String, Vec<Elem>> = HashMap::new();
    for (kind, payload) in messages {
        let Some(o) = nl::object(payload) else { continue };
        match kind {
            Kind::Table | Kind::Rule => {}
            Kind::Chain => d.chain(o)?,
            Kind::Set => {
                if let Some(info) = d.set(o)? {
                    d.sets.insert(info.name.clone(), info);
                }
            }
            Kind::Elements => {
                let a = Attrs::parse(o.attrs, bits(&[1, 2, 3, 4]), "set elements")?;
                let Some(name) = a.str(2)?.map(str::to_string) else {
                    continue;
                };
                if !d.sets.contains_key(&name) {
                    continue;
                }
                let mut list = Vec::new();
                d.elements(&name, o, &mut list)?;
                elems.entry(name).or_default().extend(list);
            }
        }
    }
    let mut names: Vec<String> = d.sets.keys().cloned().collect();
    names.sort();
    for name in names {
        if d.sets[&name].flags & SET_OBJECT != 0 {
            return Err(Unknown(format!("set `{name}`: object set")).into());
        }
        let list = d.in_order(&name, elems.remove(&name).unwrap_or_default())?;
        d.add_set(&name, list);
    }
    for (kind, payload) in messages {
        if let (Kind::Rule, Some(o)) = (kind, nl::object(payload)) {
            d.rule(o)?;
        }
    }
    Ok(d.finish())
}

#[cfg(test)]
mod interval_tests {
    use super::*;

    fn info(key: Ty) -> SetInfo {
        SetInfo {
            name: "__set0".into(),
            handle: None,
            flags: SET_ANONYMOUS | SET_INTERVAL,
            key: vec![key],
            key_len: key.len(),
            data: None,
            timeout_secs: None,
        }
    }

    /// A boundary as [`element`] keeps it.
    fn bound(key: &[u8], end: bool) -> Elem {
        let mut sort = key.to_vec();
        sort.push(u8::from(!end));
        (sort, J::Null, J::Null, None)
    }

    fn shown(elems: &[Elem]) -> Vec<String> {
        elems.iter().map(|e| e.1.to_value().to_string()).collect()
    }

    #[test]
    fn boundaries_become_addresses_prefixes_and_ranges() {
        let mut b = vec![
            // A stray end at 0.0.0.0 (older nft wrote one) opens nothing.
            bound(&[0, 0, 0, 0], true),
            bound(&[10, 0, 0, 0], false),
            bound(&[11, 0, 0, 0], true),
            // Adjacent runs: the end sorts before the start of the same value.
            bound(&[192, 0, 2, 31], false),
            bound(&[192, 0, 2, 30], false),
            bound(&[192, 0, 2, 31], true),
            bound(&[192, 0, 2, 40], true),
            // The last run has no end: it goes to 255.255.255.255.
            bound(&[224, 0, 0, 0], false),
        ];
        b.sort_by(|x, y| x.0.cmp(&y.0));
        let got = intervals(&info(Ty::Ipv4), &b).unwrap();
        assert_eq!(
            shown(&got),
            [
                r#"{"prefix":{"addr":"10.0.0.0","len":8}}"#,
                r#""192.0.2.30""#,
                r#"{"range":["192.0.2.31","192.0.2.39"]}"#,
                r#"{"prefix":{"addr":"224.0.0.0","len":3}}"#,
            ]
        );
    }

    #[test]
    fn ipv6_prefixes_and_the_whole_space() {
        let mut start = [0u8; 16];
        start[0] = 0xfd;
        let mut end = start;
        end[1] = 1;
        let b = vec![bound(&start, false), bound(&end, true)];
        assert_eq!(
            shown(&intervals(&info(Ty::Ipv6), &b).unwrap()),
            [r#"{"prefix":{"addr":"fd00::","len":16}}"#]
        );
        let all = vec![bound(&[0; 16], false)];
        assert_eq!(
            shown(&intervals(&info(Ty::Ipv6), &all).unwrap()),
            [r#"{"prefix":{"addr":"::","len":0}}"#]
        );
    }

    #[test]
    fn what_kube_proxy_does_not_write_is_not_understood() {
        // A port interval set, and boundaries of the wrong width.
        assert!(intervals(&info(Ty::Service), &[bound(&[0, 80], false)]).is_err());
        assert!(intervals(&info(Ty::Ipv4), &[bound(&[10, 0, 0], false)]).is_err());
        let mut map = info(Ty::Ipv4);
        map.data = Some(None);
        assert!(intervals(&map, &[bound(&[10, 0, 0, 0], false)]).is_err());
    }
}
