//! A rule's kernel expressions (`payload`, `cmp`, `lookup`, `immediate`, ...) turned back into the
//! statements `nft -j` prints for them, as [`J`] trees the table stage (`table.rs`) reads exactly
//! as it reads `nft -j` output.
//!
//! The kernel keeps a rule as register machine code: `ip daddr 10.96.0.1 tcp dport 443` is a
//! payload load and a compare, a `meta l4proto` load and compare, a transport-header load and a
//! compare. Like nft's own listing, this file follows the registers, rebuilds each statement, names
//! values by what was loaded (an address, a port, a protocol), and drops the `meta l4proto`
//! match a `tcp dport` match depends on, as nft does. It knows the expressions and layouts
//! kube-proxy's nftables mode writes; anything else (an expression, an attribute, a register use
//! it does not know) is [`Unknown`], and the caller reads the table with the `nft` tool instead:
//! a guess would be a wrong model.

use std::borrow::Cow;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::json::J;
use crate::kernel::netlink::attrs;

/// Why the decoder gave up on what the kernel holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unknown(pub String);

pub(in crate::model::rules) type R<T> = Result<T, Unknown>;

pub(in crate::model::rules) fn unknown<T>(what: impl Into<String>) -> R<T> {
    Err(Unknown(what.into()))
}

/// The attributes of one nested object by type, only those in `allowed` (bit per type): an
/// attribute outside it is [`Unknown`].
pub(in crate::model::rules) struct Attrs<'a>([Option<&'a [u8]>; 24]);

impl<'a> Attrs<'a> {
    pub(in crate::model::rules) fn parse(buf: &'a [u8], allowed: u32, what: &str) -> R<Self> {
        let mut out = [None; 24];
        for (kind, value) in attrs(buf) {
            if kind as usize >= out.len() || allowed & (1 << kind) == 0 {
                return unknown(format!("{what}: attribute {kind} not known"));
            }
            out[kind as usize] = Some(value);
        }
        Ok(Self(out))
    }

    pub(in crate::model::rules) fn get(&self, kind: u16) -> Option<&'a [u8]> {
        self.0.get(kind as usize).copied().flatten()
    }

    pub(in crate::model::rules) fn u32(&self, kind: u16) -> R<Option<u32>> {
        match self.get(kind) {
            None => Ok(None),
            Some(b) => match <[u8; 4]>::try_from(b) {
                Ok(a) => Ok(Some(u32::from_be_bytes(a))),
                Err(_) => unknown(format!("attribute {kind}: {} bytes, not 4", b.len())),
            },
        }
    }

    pub(in crate::model::rules) fn need_u32(&self, kind: u16, what: &str) -> R<u32> {
        self.u32(kind)?
            .map_or_else(|| unknown(format!("{what}: attribute {kind} missing")), Ok)
    }

    pub(in crate::model::rules) fn u64(&self, kind: u16) -> R<Option<u64>> {
        match self.get(kind) {
            None => Ok(None),
            Some(b) => match <[u8; 8]>::try_from(b) {
                Ok(a) => Ok(Some(u64::from_be_bytes(a))),
                Err(_) => unknown(format!("attribute {kind}: {} bytes, not 8", b.len())),
            },
        }
    }

    pub(in crate::model::rules) fn str(&self, kind: u16) -> R<Option<&'a str>> {
        match self.get(kind) {
            None => Ok(None),
            Some(b) => {
                let b = b.strip_suffix(&[0]).unwrap_or(b);
                match std::str::from_utf8(b) {
                    Ok(s) => Ok(Some(s)),
                    Err(_) => unknown(format!("attribute {kind}: not UTF-8")),
                }
            }
        }
    }
}

/// Bits for [`Attrs::parse`].
pub(in crate::model::rules) const fn bits(kinds: &[u16]) -> u32 {
    let mut m = 0;
    let mut i = 0;
    while i < kinds.len() {
        m |= 1 << kinds[i];
        i += 1;
    }
    m
}

// ---------------------------------------------------------------------------------------------
// JSON-shaped values

pub(super) fn s(v: impl Into<String>) -> J<'static> {
    J::Str(Cow::Owned(v.into()))
}

pub(super) fn n(v: u64) -> J<'static> {
    J::Num(v.into())
}

pub(super) fn obj(entries: Vec<(&'static str, J<'static>)>) -> J<'static> {
    J::Obj(entries.into_iter().map(|(k, v)| (Cow::Borrowed(k), v)).collect())
}

fn one(key: &'static str, v: J<'static>) -> J<'static> {
    obj(vec![(key, v)])
}

/// `{"match": {"op": …, "left": …, "right": …}}`.
fn matches(op: &str, left: J<'static>, right: J<'static>) -> J<'static> {
    one("match", obj(vec![("op", s(op)), ("left", left), ("right", right)]))
}

/// A verdict as nft prints it: `{"accept": null}`, `{"goto": {"target": "X"}}`.
pub(super) fn verdict(code: i32, chain: Option<&str>) -> R<J<'static>> {
    Ok(match (code, chain) {
        (0, None) => one("drop", J::Null),
        (1, None) => one("accept", J::Null),
        (-1, None) => one("continue", J::Null),
        (-5, None) => one("return", J::Null),
        (-3, Some(c)) => one("jump", one("target", s(c))),
        (-4, Some(c)) => one("goto", one("target", s(c))),
        _ => return unknown(format!("verdict {code}")),
    })
}

/// NFTA_DATA_VERDICT's nest: (code, chain).
pub(super) fn decode_verdict(nest: &[u8]) -> R<J<'static>> {
    let a = Attrs::parse(nest, bits(&[1, 2]), "verdict")?;
    let code = a.need_u32(1, "verdict")? as i32;
    verdict(code, a.str(2)?)
}

/// The value or verdict of an `NFTA_*_DATA` nest.
pub(super) enum Data<'a> {
    Value(&'a [u8]),
    Verdict(J<'static>),
}

pub(super) fn decode_data(nest: &[u8]) -> R<Data<'_>> {
    let a = Attrs::parse(nest, bits(&[1, 2]), "data")?;
    match (a.get(1), a.get(2)) {
        (Some(v), None) => Ok(Data::Value(v)),
        (None, Some(v)) => Ok(Data::Verdict(decode_verdict(v)?)),
        _ => unknown("data: neither value nor verdict"),
    }
}

pub(super) fn proto_name(p: u8) -> R<&'static str> {
    Ok(match p {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => return unknown(format!("protocol number {p}")),
    })
}

/// An address of `len` bytes (4 or 16) from `b`, zero-padded (prefixes are loaded short).
pub(super) fn addr_text(b: &[u8], v6: bool) -> String {
    if v6 {
        let mut a = [0u8; 16];
        a[..b.len().min(16)].copy_from_slice(&b[..b.len().min(16)]);
        Ipv6Addr::from(a).to_string()
    } else {
        let mut a = [0u8; 4];
        a[..b.len().min(4)].copy_from_slice(&b[..b.len().min(4)]);
        Ipv4Addr::from(a).to_string()
    }
}

// ---------------------------------------------------------------------------------------------
// Registers

/// What a register holds, as far as naming its compare values goes.
#[derive(Debug, Clone, PartialEq)]
enum What {
    /// `ip saddr`/`daddr` (or ip6) loaded `len` bytes of `full`, masked to `bits` when a bitwise
    /// mask followed.
    Addr {
        v6: bool,
        bits: Option<u32>,
    },
    /// A transport port (`th dport`; the protocol named when a `meta l4proto` match precedes).
    Port,
    L4proto,
    Mark,
    /// `meta mark` through a bitwise: `mark and 0x4000`, `mark xor 0x4000`.
    MarkExpr,
    CtState,
    CtStateMasked(u32),
    FibType,
    Numgen,
    Imm(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Loaded {
    j: J<'static>,
    len: usize,
    what: What,
}

/// What the decoder needs to know of a set a rule names.
pub(super) struct SetRef {
    /// Bytes of the key (registers are 4-byte aligned per component).
    pub(super) key_len: usize,
    /// Anonymous sets are printed inline, with their elements; named ones as `@name`.
    pub(super) inline: Option<J<'static>>,
}

/// Turns one rule's expression list (`NFTA_RULE_EXPRESSIONS`) into nft's JSON statements.
/// `sets` answers for the sets a lookup names.
pub(super) fn statements(list: &[u8], v6: bool, sets: &dyn Fn(&str) -> Option<SetRef>) -> R<Vec<J<'static>>> {
    let mut d = Decoder {
        regs: Default::default(),
        stmts: Vec::new(),
        dep: None,
        v6,
    };
    for (name, data) in expressions(list)? {
        d.expr(name, data, sets)?;
    }
    Ok(d.finish())
}

/// A rule's expression list (`NFTA_RULE_EXPRESSIONS`) as (name, data) pairs.
pub(in crate::model::rules) fn expressions(list: &[u8]) -> R<Vec<(&str, &[u8])>> {
    let mut out = Vec::new();
    for (kind, e) in attrs(list) {
        if kind != 1 {
            return unknown(format!("expression list: attribute {kind}"));
        }
        let a = Attrs::parse(e, bits(&[1, 2]), "expression")?;
        out.push((a.str(1)?.unwrap_or_default(), a.get(2).unwrap_or_default()));
    }
    Ok(out)
}

struct Decoder {
    /// The 4-byte registers `NFT_REG32_00..15` (`NFT_REG_1..4` are four of them each).
    regs: [Option<Loaded>; 16],
    stmts: Vec<Option<J<'static>>>,
    /// A `meta l4proto X` match a following transport-header match depends on: its statement and
    /// the protocol.
    dep: Option<(usize, u8)>,
    v6: bool,
}

/// `NFT_REG_1..4` (16 bytes each) and `NFT_REG32_00..15` as 4-byte register numbers.
fn slot(reg: u32) -> R<usize> {
    match reg {
        1..=4 => Ok((reg as usize - 1) * 4),
        8..=23 => Ok(reg as usize - 8),
        _ => unknown(format!("register {reg}")),
    }
}

impl Decoder {
    fn set_reg(&mut self, reg: u32, l: Loaded) -> R<()> {
        let at = slot(reg)?;
        if at + l.len.div_ceil(4) > self.regs.len() {
            return unknown(format!("register {reg}: {} bytes do not fit", l.len));
        }
        self.regs[at] = Some(l);
        Ok(())
    }

    fn reg(&self, reg: u32) -> R<Loaded> {
        match self.regs.get(slot(reg)?).cloned().flatten() {
            Some(l) => Ok(l),
            None => unknown(format!("register {reg} read before it is written")),
        }
    }

    /// The key a lookup reads: the registers from `reg` on that fill `len` bytes, one value or
    /// a concatenation.
    fn key(&self, reg: u32, len: usize) -> R<J<'static>> {
        let mut at = slot(reg)?;
        let mut done = 0;
        let mut items = Vec::new();
        while done < len {
            let Some(l) = self.regs.get(at).cloned().flatten() else {
                return unknown(format!(
                    "set key of {len} bytes from register {reg}: a register is empty"
                ));
            };
            if matches!(l.what, What::Imm(_)) {
                return unknown("set key from a constant");
            }
            let step = l.len.div_ceil(4) * 4;
            if step == 0 {
                return unknown("set key from an empty register");
            }
            done += step;
            at += step / 4;
            items.push(l.j);
        }
        if done != len {
            return unknown(format!("set key of {len} bytes does not match its registers"));
        }
        Ok(if items.len() == 1 {
            items.pop().unwrap_or(J::Null)
        } else {
            one("concat", J::Arr(items))
        })
    }

    fn push(&mut self, j: J<'static>) {
        self.stmts.push(Some(j));
    }

    fn finish(self) -> Vec<J<'static>> {
        self.stmts.into_iter().flatten().collect()
    }

    fn expr(&mut self, name: &str, data: &[u8], sets: &dyn Fn(&str) -> Option<SetRef>) -> R<()> {
        match name {
            "payload" => self.payload(data),
            "meta" => self.meta(data),
            "ct" => self.ct(data),
            "bitwise" => self.bitwise(data),
            "cmp" => self.cmp(data),
            "lookup" => self.lookup(data, sets),
            "immediate" => self.immediate(data),
            "nat" => self.nat(data),
            "masq" => self.masq(data),
            "reject" => self.reject(data),
            "counter" => {
                let a = Attrs::parse(data, bits(&[1, 2, 3]), "counter")?;
                let (b, p) = (a.u64(1)?.unwrap_or(0), a.u64(2)?.unwrap_or(0));
                self.push(one("counter", obj(vec![("packets", n(p)), ("bytes", n(b))])));
                Ok(())
            }
            "numgen" => self.numgen(data),
            "fib" => self.fib(data),
            "dynset" => self.dynset(data, sets),
            other => unknown(format!("expression `{other}`")),
        }
    }

    fn payload(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3, 4]), "payload")?;
        let dreg = a.need_u32(1, "payload")?;
        let (base, off, len) = (
            a.need_u32(2, "payload")?,
            a.need_u32(3, "payload")?,
            a.need_u32(4, "payload")? as usize,
        );
        let (proto, field, what) = match (base, self.v6, off, len) {
            (1, false, 12, 1..=4) => ("ip", "saddr", What::Addr { v6: false, bits: None }),
            (1, false, 16, 1..=4) => ("ip", "daddr", What::Addr { v6: false, bits: None }),
            (1, true, 8, 1..=16) => ("ip6", "saddr", What::Addr { v6: true, bits: None }),
            (1, true, 24, 1..=16) => ("ip6", "daddr", What::Addr { v6: true, bits: None }),
            (2, _, 0, 2) => ("th", "sport", What::Port),
            (2, _, 2, 2) => ("th", "dport", What::Port),
            _ => return unknown(format!("payload base {base} offset {off} length {len}")),
        };
        let j = one("payload", obj(vec![("protocol", s(proto)), ("field", s(field))]));
        self.set_reg(dreg, Loaded { j, len, what })
    }

    fn meta(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3]), "meta")?;
        let key = a.need_u32(2, "meta")?;
        if let Some(sreg) = a.u32(3)? {
            // `meta mark set …`.
            if key != 3 || a.get(1).is_some() {
                return unknown(format!("meta set of key {key}"));
            }
            let v = self.reg(sreg)?;
            let value = match v.what {
                What::MarkExpr => v.j,
                What::Imm(b) if b.len() == 4 => n(u32::from_ne_bytes(b[..4].try_into().unwrap_or_default()) as u64),
                _ => return unknown("meta mark set from an unknown value"),
            };
            self.push(one(
                "mangle",
                obj(vec![("key", one("meta", one("key", s("mark")))), ("value", value)]),
            ));
            return Ok(());
        }
        let dreg = a.need_u32(1, "meta")?;
        let (name, len, what) = match key {
            16 => ("l4proto", 1, What::L4proto),
            3 => ("mark", 4, What::Mark),
            _ => return unknown(format!("meta key {key}")),
        };
        self.set_reg(
            dreg,
            Loaded {
                j: one("meta", one("key", s(name))),
                len,
                what,
            },
        )
    }

    fn ct(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2]), "ct")?;
        let dreg = a.need_u32(1, "ct")?;
        match a.need_u32(2, "ct")? {
            0 => self.set_reg(
                dreg,
                Loaded {
                    j: one("ct", one("key", s("state"))),
                    len: 4,
                    what: What::CtState,
                },
            ),
            key => unknown(format!("ct key {key}")),
        }
    }

    fn bitwise(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3, 4, 5, 6]), "bitwise")?;
        let (sreg, dreg) = (a.need_u32(1, "bitwise")?, a.need_u32(2, "bitwise")?);
        let len = a.need_u32(3, "bitwise")? as usize;
        if a.u32(6)?.unwrap_or(0) != 0 {
            return unknown("bitwise shift");
        }
        let value = |k: u16| -> R<Vec<u8>> {
            match a.get(k).map(decode_data).transpose()? {
                Some(Data::Value(v)) if v.len() == len => Ok(v.to_vec()),
                _ => unknown("bitwise without mask or xor"),
            }
        };
        let (mask, xor) = (value(4)?, value(5)?);
        let src = self.reg(sreg)?;
        if src.len != len {
            return unknown("bitwise length differs from its source");
        }
        let xor_zero = xor.iter().all(|&b| b == 0);
        let out = match &src.what {
            What::Mark if len == 4 => {
                let m = u32::from_ne_bytes(mask[..4].try_into().unwrap_or_default());
                let x = u32::from_ne_bytes(xor[..4].try_into().unwrap_or_default());
                let (op, v) = if x == 0 {
                    ("&", m)
                } else if m == u32::MAX {
                    ("^", x)
                } else if m & x == 0 && m | x == u32::MAX {
                    ("|", x)
                } else {
                    return unknown("meta mark bitwise with both mask and xor");
                };
                Loaded {
                    j: one(op, J::Arr(vec![src.j, n(v as u64)])),
                    len,
                    what: What::MarkExpr,
                }
            }
            What::CtState if xor_zero => Loaded {
                what: What::CtStateMasked(u32::from_ne_bytes(mask[..4].try_into().unwrap_or_default())),
                ..src
            },
            What::Addr { v6, bits: None } if xor_zero => {
                // A prefix mask: ones, then zeros.
                let ones: u32 = mask.iter().map(|b| b.count_ones()).sum();
                let prefix = mask.iter().enumerate().all(|(i, &b)| b == prefix_byte(ones, i));
                if !prefix {
                    return unknown("address bitwise that is not a prefix mask");
                }
                Loaded {
                    what: What::Addr {
                        v6: *v6,
                        bits: Some(ones),
                    },
                    ..src
                }
            }
            _ => return unknown("bitwise on a value not known"),
        };
        self.set_reg(dreg, out)
    }

    fn cmp(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3]), "cmp")?;
        let left = self.reg(a.need_u32(1, "cmp")?)?;
        let op = match a.need_u32(2, "cmp")? {
            0 => "==",
            1 => "!=",
            op => return unknown(format!("cmp op {op}")),
        };
        let Some(Data::Value(v)) = a.get(3).map(decode_data).transpose()? else {
            return unknown("cmp without a value");
        };
        if v.len() != left.len {
            return unknown("cmp value length differs from its register");
        }
        let (op, mut left_j, right) = match &left.what {
            What::Addr { v6, bits } => {
                let full = if *v6 { 16 } else { 4 };
                let plen = bits.unwrap_or(left.len as u32 * 8);
                let addr = s(addr_text(v, *v6));
                if plen == full * 8 {
                    (op, left.j, addr)
                } else {
                    (
                        op,
                        left.j,
                        one("prefix", obj(vec![("addr", addr), ("len", n(plen as u64))])),
                    )
                }
            }
            What::Port => (op, left.j, n(u16::from_be_bytes([v[0], v[1]]) as u64)),
            What::L4proto => (op, left.j, s(proto_name(v[0])?)),
            What::MarkExpr | What::Mark => (
                op,
                left.j,
                n(u32::from_ne_bytes(v[..4].try_into().unwrap_or_default()) as u64),
            ),
            What::CtStateMasked(mask) if op == "!=" && v.iter().all(|&b| b == 0) => ("in", left.j, ct_states(*mask)?),
            What::FibType => (
                op,
                left.j,
                s(rtn_type(u32::from_ne_bytes(v[..4].try_into().unwrap_or_default()))?),
            ),
            _ => return unknown("cmp on a value not known"),
        };
        if left.what == What::Port
            && let Some((at, p)) = self.dep
        {
            // `meta l4proto tcp` + `th dport 80` is nft's `tcp dport 80`.
            let proto = proto_name(p)?;
            left_j = one(
                "payload",
                obj(vec![
                    ("protocol", s(proto)),
                    ("field", left_j.at("payload").at("field").clone()),
                ]),
            );
            self.stmts[at] = None;
            self.dep = None;
        }
        if left.what == What::L4proto && op == "==" {
            self.dep = Some((self.stmts.len(), v[0]));
        }
        self.push(matches(op, left_j, right));
        Ok(())
    }

    fn lookup(&mut self, data: &[u8], sets: &dyn Fn(&str) -> Option<SetRef>) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3, 4, 5]), "lookup")?;
        let name = a.str(1)?.unwrap_or_default();
        let Some(set) = sets(name) else {
            return unknown(format!("lookup in set `{name}` that was not listed"));
        };
        let key = self.key(a.need_u32(2, "lookup")?, set.key_len)?;
        if self.dep.is_some() && json_has_th(&key) {
            return unknown("set lookup on a transport header after a meta l4proto match");
        }
        let right = set.inline.unwrap_or_else(|| s(format!("@{name}")));
        let inverted = a.u32(5)?.unwrap_or(0) & 1 != 0;
        match a.u32(3)? {
            None => self.push(matches(if inverted { "!=" } else { "==" }, key, right)),
            Some(0) if !inverted => self.push(one("vmap", obj(vec![("key", key), ("data", right)]))),
            Some(d) => return unknown(format!("lookup into register {d}")),
        }
        Ok(())
    }

    fn immediate(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2]), "immediate")?;
        let dreg = a.need_u32(1, "immediate")?;
        let Some(d) = a.get(2) else {
            return unknown("immediate without data");
        };
        match (dreg, decode_data(d)?) {
            (0, Data::Verdict(v)) => {
                self.push(v);
                Ok(())
            }
            (r, Data::Value(v)) if r != 0 => self.set_reg(
                r,
                Loaded {
                    j: J::Null,
                    len: v.len(),
                    what: What::Imm(v.to_vec()),
                },
            ),
            _ => unknown("immediate verdict into a data register"),
        }
    }

    fn imm(&self, reg: Option<u32>) -> R<Option<Vec<u8>>> {
        let Some(r) = reg else { return Ok(None) };
        match self.reg(r)?.what {
            What::Imm(b) => Ok(Some(b)),
            _ => unknown("nat from a register that is not a constant"),
        }
    }

    fn nat(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3, 4, 5, 6, 7]), "nat")?;
        let kind = match a.need_u32(1, "nat")? {
            0 => "snat",
            1 => "dnat",
            t => return unknown(format!("nat type {t}")),
        };
        let family = a.need_u32(2, "nat")?;
        if family != if self.v6 { 10 } else { 2 } {
            return unknown(format!("nat family {family}"));
        }
        // Only NF_NAT_RANGE_MAP_IPS and NF_NAT_RANGE_PROTO_SPECIFIED, which the addresses imply.
        if a.u32(7)?.unwrap_or(0) & !3 != 0 {
            return unknown("nat flags");
        }
        let (amin, amax) = (self.imm(a.u32(3)?)?, self.imm(a.u32(4)?)?);
        let (pmin, pmax) = (self.imm(a.u32(5)?)?, self.imm(a.u32(6)?)?);
        if amax.is_some() && amax != amin || pmax.is_some() && pmax != pmin {
            return unknown("nat to a range");
        }
        let Some(addr) = amin.filter(|b| b.len() == if self.v6 { 16 } else { 4 }) else {
            return unknown("nat without an address");
        };
        let mut body = vec![("addr", s(addr_text(&addr, self.v6)))];
        match pmin {
            Some(p) if p.len() >= 2 => body.push(("port", n(u16::from_be_bytes([p[0], p[1]]) as u64))),
            Some(_) => return unknown("nat port"),
            None => {}
        }
        self.push(one(kind, obj(body)));
        Ok(())
    }

    fn masq(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1]), "masq")?;
        let flags = match a.u32(1)?.unwrap_or(0) {
            0 => J::Null,
            0x4 => obj(vec![("flags", s("random"))]),
            0x8 => obj(vec![("flags", s("persistent"))]),
            0x10 => obj(vec![("flags", s("fully-random"))]),
            f => return unknown(format!("masquerade flags {f:#x}")),
        };
        self.push(one("masquerade", flags));
        Ok(())
    }

    fn reject(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2]), "reject")?;
        let code = a.get(2).and_then(|b| b.first().copied()).unwrap_or(0);
        let j = match (a.need_u32(1, "reject")?, self.v6, code) {
            (0, false, 3) => obj(vec![("type", s("icmp")), ("expr", s("port-unreachable"))]),
            (0, true, 4) => obj(vec![("type", s("icmpv6")), ("expr", s("port-unreachable"))]),
            (1, _, _) => obj(vec![("type", s("tcp reset"))]),
            (t, _, c) => return unknown(format!("reject type {t} code {c}")),
        };
        self.push(one("reject", j));
        Ok(())
    }

    fn numgen(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3, 4]), "numgen")?;
        let mode = match a.need_u32(3, "numgen")? {
            0 => "inc",
            1 => "random",
            t => return unknown(format!("numgen type {t}")),
        };
        let j = one(
            "numgen",
            obj(vec![
                ("mode", s(mode)),
                ("mod", n(a.need_u32(2, "numgen")? as u64)),
                ("offset", n(a.u32(4)?.unwrap_or(0) as u64)),
            ]),
        );
        self.set_reg(
            a.need_u32(1, "numgen")?,
            Loaded {
                j,
                len: 4,
                what: What::Numgen,
            },
        )
    }

    fn fib(&mut self, data: &[u8]) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3]), "fib")?;
        if a.need_u32(2, "fib")? != 3 {
            return unknown("fib result other than type");
        }
        let flags = a.need_u32(3, "fib")?;
        let names = [(1, "saddr"), (2, "daddr"), (4, "mark"), (8, "iif"), (16, "oif")];
        if flags & !31 != 0 {
            return unknown(format!("fib flags {flags:#x}"));
        }
        let list = names
            .iter()
            .filter(|(b, _)| flags & b != 0)
            .map(|(_, name)| s(*name))
            .collect();
        let j = one("fib", obj(vec![("result", s("type")), ("flags", J::Arr(list))]));
        self.set_reg(
            a.need_u32(1, "fib")?,
            Loaded {
                j,
                len: 4,
                what: What::FibType,
            },
        )
    }

    fn dynset(&mut self, data: &[u8], sets: &dyn Fn(&str) -> Option<SetRef>) -> R<()> {
        let a = Attrs::parse(data, bits(&[1, 2, 3, 4, 6, 9]), "dynset")?;
        let name = a.str(1)?.unwrap_or_default();
        let op = match a.need_u32(3, "dynset")? {
            0 => "add",
            1 => "update",
            2 => "delete",
            o => return unknown(format!("dynset op {o}")),
        };
        if a.u64(6)?.unwrap_or(0) != 0 || a.u32(9)?.unwrap_or(0) != 0 {
            return unknown("dynset with a timeout or flags");
        }
        let Some(set) = sets(name).filter(|s| s.inline.is_none()) else {
            return unknown(format!("dynset on set `{name}` that was not listed"));
        };
        let elem = self.key(a.need_u32(4, "dynset")?, set.key_len)?;
        self.push(one(
            "set",
            obj(vec![("op", s(op)), ("elem", elem), ("set", s(format!("@{name}")))]),
        ));
        Ok(())
    }
}

/// Byte `i` of a mask of `ones` leading one bits.
fn prefix_byte(ones: u32, i: usize) -> u8 {
    let start = i as u32 * 8;
    match ones.saturating_sub(start) {
        0 => 0,
        k if k >= 8 => 0xff,
        k => 0xffu8 << (8 - k),
    }
}

fn json_has_th(j: &J<'_>) -> bool {
    match j {
        J::Obj(m) => m
            .iter()
            .any(|(k, v)| (k == "protocol" && v.as_str() == Some("th")) || json_has_th(v)),
        J::Arr(a) => a.iter().any(json_has_th),
        _ => false,
    }
}

/// `ct state` bits as nft names them, in bit order.
fn ct_states(mask: u32) -> R<J<'static>> {
    let names = [
        (1, "invalid"),
        (2, "established"),
        (4, "related"),
        (8, "new"),
        (64, "untracked"),
    ];
    if mask == 0 || mask & !(1 | 2 | 4 | 8 | 64) != 0 {
        return unknown(format!("ct state mask {mask:#x}"));
    }
    let mut list: Vec<J<'static>> = names
        .iter()
        .filter(|(b, _)| mask & b != 0)
        .map(|(_, name)| s(*name))
        .collect();
    Ok(if list.len() == 1 { list.remove(0) } else { J::Arr(list) })
}

fn rtn_type(t: u32) -> R<&'static str> {
    Ok(match t {
        1 => "unicast",
        2 => "local",
        3 => "broadcast",
        4 => "anycast",
        5 => "multicast",
        6 => "blackhole",
        7 => "unreachable",
        8 => "prohibit",
        _ => return unknown(format!("fib address type {t}")),
    })
}
