//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`): struct member offsets and enum
//! values, which is all the kernel programs need. Rust emits no CO-RE relocations, so the offsets
//! of `sk_buff`, `nf_conn` and `nf_hook_state` are read here at start and handed to the programs.
//!
//! Format: `include/uapi/linux/btf.h` and Documentation/bpf/btf.rst. Only what is needed is
//! decoded; every type's size on disk is known so that unknown details are skipped, not misread.

use std::{collections::HashMap, path::Path};

/// Where the running kernel publishes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

const MAGIC: u16 = 0xeb9f;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Errors reading BTF.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read kernel BTF at {path} (d8-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y)")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The bytes are not BTF.
    #[error("malformed BTF: {0}")]
    Malformed(String),
    /// A type the programs need is absent.
    #[error("kernel BTF has no {kind} named `{name}`")]
    MissingType { kind: &'static str, name: String },
    /// A member the programs need is absent.
    #[error("kernel BTF: `struct {strukt}` has no member `{member}`")]
    MissingMember { strukt: String, member: String },
}

pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, Clone)]
struct Member {
    name: String,
    type_id: u32,
    /// Offset in bits from the start of the containing struct.
    bit_offset: u32,
}

#[derive(Debug, Clone)]
enum Type {
    /// Struct or union with its size in bytes.
    Composite {
        size: u32,
        members: Vec<Member>,
    },
    Enum {
        values: Vec<(String, i64)>,
    },
    /// typedef, const, volatile, restrict, type tag: refers to another type.
    Alias {
        type_id: u32,
    },
    Other,
}

/// Parsed BTF: named structs, unions and enums.
#[derive(Debug)]
pub struct Btf {
    types: Vec<Type>,
    /// Name -> type ids with that name (several when a name is reused).
    by_name: HashMap<String, Vec<u32>>,
    /// String section (module BTF refers to vmlinux's strings by offset).
    strings: Vec<u8>,
    /// Split BTF of loaded modules (`/sys/kernel/btf/<module>`): their type ids continue after
    /// this BTF's, and their string offsets after its strings. `nf_conn` lives in nf_conntrack's
    /// on kernels that build conntrack as a module (Debian, Ubuntu).
    modules: Vec<(String, Btf)>,
}

/// Modules whose split BTF is read next to vmlinux's, when loaded.
pub const MODULES: &[&str] = &["nf_conntrack", "nf_nat"];

/// Where a type id is looked up: vmlinux, or a module split on it.
#[derive(Clone, Copy)]
struct Scope<'a> {
    base: &'a Btf,
    module: Option<&'a Btf>,
}

impl<'a> Scope<'a> {
    fn get(self, id: u32) -> Option<&'a Type> {
        let base_len = self.base.types.len();
        match self.module {
            Some(m) if id as usize >= base_len => m.types.get(id as usize - base_len),
            _ => self.base.types.get(id as usize),
        }
    }

    fn resolve(self, mut id: u32) -> &'a Type {
        // Bounded: alias chains in real BTF are a handful long.
        for _ in 0..32 {
            match self.get(id) {
                Some(Type::Alias { type_id }) => id = *type_id,
                Some(t) => return t,
                None => return &Type::Other,
            }
        }
        &Type::Other
    }
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    b.get(off..off + 2)
        .map(|s| u16::from_le_bytes([s[0], s[1]]))
        .ok_or_else(|| Error::Malformed(format!("truncated at byte {off}")))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    b.get(off..off + 4)
        .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| Error::Malformed(format!("truncated at byte {off}")))
}

fn string_at(strings: &[u8], off: u32) -> Result<String> {
    let rest = strings
        .get(off as usize..)
        .ok_or_else(|| Error::Malformed(format!("string offset {off} out of range")))?;
    let end = rest.iter().position(|&c| c == 0).unwrap_or(rest.len());
    Ok(String::from_utf8_lossy(&rest[..end]).into_owned())
}

/// The type and string sections of the BTF `b`, after checking its magic and header.
fn sections(b: &[u8]) -> Result<(&[u8], &[u8])> {
    if u16_at(b, 0)? != MAGIC {
        return Err(Error::Malformed("bad magic (not little-endian BTF)".into()));
    }
    let hdr_len = u32_at(b, 4)? as usize;
    let (type_off, type_len) = (u32_at(b, 8)? as usize, u32_at(b, 12)? as usize);
    let (str_off, str_len) = (u32_at(b, 16)? as usize, u32_at(b, 20)? as usize);
    let types = b
        .get(hdr_len + type_off..hdr_len + type_off + type_len)
        .ok_or_else(|| Error::Malformed("type section out of range".into()))?;
    let strings = b
        .get(hdr_len + str_off..hdr_len + str_off + str_len)
        .ok_or_else(|| Error::Malformed("string section out of range".into()))?;
    Ok((types, strings))
}

/// Bytes that follow a type's 12-byte header in the type section, by its kind and `vlen`.
fn extra_bytes(kind: u32, vlen: usize) -> Result<usize> {
    Ok(match kind {
        KIND_STRUCT | KIND_UNION | KIND_ENUM64 | KIND_DATASEC => vlen * 12,
        KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
        KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
        KIND_ARRAY => 12,
        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG | KIND_PTR | KIND_FWD | KIND_FUNC
        | KIND_FLOAT => 0,
        other => return Err(Error::Malformed(format!("unknown BTF kind {other}"))),
    })
}

/// The ids of the named types in the BTF `b` (vmlinux's: not split), each asked as `(kind,
/// name)` with kind `KIND_FUNC` or `KIND_STRUCT` ([`FUNC`], [`STRUCT`]); `None` for a name it
/// lacks. A scan of the type headers that builds nothing: the loader's kfunc ids, at start.
pub fn type_ids(b: &[u8], wanted: &[(u32, &str)]) -> Result<Vec<Option<u32>>> {
    let (types, strings) = sections(b)?;
    let mut found = vec![None; wanted.len()];
    let (mut off, mut id) = (0, 1u32);
    while off < types.len() {
        let name_off = u32_at(types, off)? as usize;
        let info = u32_at(types, off + 4)?;
        let kind = (info >> 24) & 0x1f;
        for (slot, &(k, name)) in found.iter_mut().zip(wanted) {
            if slot.is_none()
                && k == kind
                && strings
                    .get(name_off..name_off + name.len() + 1)
                    .is_some_and(|n| n[..name.len()] == *name.as_bytes() && n[name.len()] == 0)
            {
                *slot = Some(id);
            }
        }
        off += 12 + extra_bytes(kind, (info & 0xffff) as usize)?;
        id += 1;
    }
    Ok(found)
}

/// Kinds [`type_ids`] is asked for.
pub const FUNC: u32 = KIND_FUNC;
pub const STRUCT: u32 = KIND_STRUCT;

impl Btf {
    /// Reads the running kernel's BTF, with the split BTF of the [`MODULES`] that are loaded.
    pub fn from_sys() -> Result<Self> {
        let mut btf = Self::from_file(Path::new(VMLINUX_BTF))?;
        for module in MODULES {
            let path = Path::new("/sys/kernel/btf").join(module);
            if let Ok(bytes) = std::fs::read(&path) {
                btf.add_module(module, &bytes)?;
            }
        }
        Ok(btf)
    }

    /// Adds a module's split BTF (types and strings continue after this BTF's).
    pub fn add_module(&mut self, name: &str, bytes: &[u8]) -> Result<()> {
        let module = Self::parse_inner(bytes, Some(self))?;
        self.modules.push((name.to_string(), module));
        Ok(())
    }

    /// Names of the modules whose BTF was read.
    pub fn modules(&self) -> Vec<&str> {
        self.modules.iter().map(|(n, _)| n.as_str()).collect()
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&bytes)
    }

    /// Parses raw BTF bytes (little-endian; the only byte order of the machines we run on).
    pub fn parse(b: &[u8]) -> Result<Self> {
        Self::parse_inner(b, None)
    }

    /// Parses BTF, split on `base` when given.
    fn parse_inner(b: &[u8], base: Option<&Btf>) -> Result<Self> {
        let (types_bytes, strings) = sections(b)?;

        // Type id 0 is `void` (in the base only); split BTF's ids continue after the base's, its
        // string offsets after the base's strings.
        let mut types = if base.is_some() { Vec::new() } else { vec![Type::Other] };
        let first_id = base.map_or(0, |b| b.types.len());
        let base_strings: &[u8] = base.map_or(&[], |b| b.strings.as_slice());
        let string_at = |_: &[u8], off: u32| -> Result<String> {
            if (off as usize) < base_strings.len() {
                string_at(base_strings, off)
            } else {
                string_at(strings, off - base_strings.len() as u32)
            }
        };
        let mut by_name: HashMap<String, Vec<u32>> = HashMap::new();
        let mut off = 0;
        while off < types_bytes.len() {
            let name_off = u32_at(types_bytes, off)?;
            let info = u32_at(types_bytes, off + 4)?;
            let size_or_type = u32_at(types_bytes, off + 8)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            off += 12;
            let ty = match kind {
                KIND_STRUCT | KIND_UNION => {
                    let mut members = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let m = off + i * 12;
                        let raw_offset = u32_at(types_bytes, m + 8)?;
                        members.push(Member {
                            name: string_at(strings, u32_at(types_bytes, m)?)?,
                            type_id: u32_at(types_bytes, m + 4)?,
                            // With kind_flag the high 8 bits hold a bitfield size.
                            bit_offset: if kind_flag {
                                raw_offset & 0x00ff_ffff
                            } else {
                                raw_offset
                            },
                        });
                    }
                    off += vlen * 12;
                    Type::Composite {
                        size: size_or_type,
                        members,
                    }
                }
                KIND_ENUM => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let e = off + i * 8;
                        let raw = u32_at(types_bytes, e + 4)?;
                        let value = if kind_flag { raw as i32 as i64 } else { raw as i64 };
                        values.push((string_at(strings, u32_at(types_bytes, e)?)?, value));
                    }
                    off += vlen * 8;
                    Type::Enum { values }
                }
                KIND_ENUM64 => {
                    let mut values = Vec::with_capacity(vlen);
                    for i in 0..vlen {
                        let e = off + i * 12;
                        let lo = u32_at(types_bytes, e + 4)? as u64;
                        let hi = u32_at(types_bytes, e + 8)? as u64;
                        values.push((string_at(strings, u32_at(types_bytes, e)?)?, ((hi << 32) | lo) as i64));
                    }
                    off += vlen * 12;
                    Type::Enum { values }
                }
                KIND_INT | KIND_VAR | KIND_DECL_TAG => {
                    off += 4;
                    Type::Other
                }
                KIND_ARRAY => {
                    off += 12;
                    Type::Other
                }
                KIND_FUNC_PROTO => {
                    off += vlen * 8;
                    Type::Other
                }
                KIND_DATASEC => {
                    off += vlen * 12;
                    Type::Other
                }
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    Type::Alias { type_id: size_or_type }
                }
                KIND_PTR | KIND_FWD | KIND_FUNC | KIND_FLOAT => Type::Other,
                other => return Err(Error::Malformed(format!("unknown BTF kind {other}"))),
            };
            if name_off != 0 && matches!(kind, KIND_STRUCT | KIND_UNION | KIND_ENUM | KIND_ENUM64) {
                by_name
                    .entry(string_at(strings, name_off)?)
                    .or_default()
                    .push((first_id + types.len()) as u32);
            }
            types.push(ty);
        }
        Ok(Self {
            types,
            by_name,
            strings: if base.is_some() { Vec::new() } else { strings.to_vec() },
            modules: Vec::new(),
        })
    }

    /// vmlinux first, then each module.
    fn scopes(&self) -> impl Iterator<Item = (Scope<'_>, &Btf)> {
        std::iter::once((
            Scope {
                base: self,
                module: None,
            },
            self,
        ))
        .chain(self.modules.iter().map(move |(_, m)| {
            (
                Scope {
                    base: self,
                    module: Some(m),
                },
                m,
            )
        }))
    }

    /// The first composite (struct/union) with this name that has members: kernels also carry
    /// forward-declared or duplicate empty copies.
    fn composite(&self, name: &str) -> Result<(u32, &[Member], Scope<'_>)> {
        self.scopes()
            .find_map(|(scope, btf)| {
                btf.by_name
                    .get(name)
                    .into_iter()
                    .flatten()
                    .find_map(|&id| match scope.get(id) {
                        Some(Type::Composite { size, members }) if !members.is_empty() => {
                            Some((*size, members.as_slice(), scope))
                        }
                        _ => None,
                    })
            })
            .ok_or_else(|| Error::MissingType {
                kind: "struct",
                name: name.to_string(),
            })
    }

    /// Size in bytes of `struct name`.
    pub fn struct_size(&self, name: &str) -> Result<u32> {
        Ok(self.composite(name)?.0)
    }

    /// Byte offset of `path` (dot-separated, e.g. `tuplehash` or `headers.network_header`) in
    /// `struct strukt`. Members of anonymous structs and unions are found as if they were direct
    /// members, as C sees them (`sk_buff`'s `network_header` sits inside an anonymous
    /// `struct_group`).
    pub fn member_offset(&self, strukt: &str, path: &str) -> Result<u32> {
        let (_, members, scope) = self.composite(strukt)?;
        let mut bits = 0u32;
        let mut current = members;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            let (offset, type_id) = Self::find_member(scope, current, part).ok_or_else(|| Error::MissingMember {
                strukt: strukt.to_string(),
                member: path.to_string(),
            })?;
            bits += offset;
            if parts.peek().is_some() {
                match scope.resolve(type_id) {
                    Type::Composite { members, .. } => current = members,
                    _ => {
                        return Err(Error::MissingMember {
                            strukt: strukt.to_string(),
                            member: path.to_string(),
                        });
                    }
                }
            }
        }
        if !bits.is_multiple_of(8) {
            return Err(Error::Malformed(format!("{strukt}.{path} is a bitfield")));
        }
        Ok(bits / 8)
    }

    /// Finds `name` among `members`, descending into anonymous members. Returns (bit offset, type).
    fn find_member(scope: Scope<'_>, members: &[Member], name: &str) -> Option<(u32, u32)> {
        for m in members {
            if m.name == name {
                return Some((m.bit_offset, m.type_id));
            }
        }
        for m in members.iter().filter(|m| m.name.is_empty()) {
            if let Type::Composite { members: inner, .. } = scope.resolve(m.type_id)
                && let Some((off, ty)) = Self::find_member(scope, inner, name)
            {
                return Some((m.bit_offset + off, ty));
            }
        }
        None
    }

    /// All (name, value) pairs of `enum name`.
    pub fn enum_values(&self, name: &str) -> Result<Vec<(String, i64)>> {
        self.scopes()
            .find_map(|(scope, btf)| {
                btf.by_name
                    .get(name)
                    .into_iter()
                    .flatten()
                    .find_map(|&id| match scope.get(id) {
                        Some(Type::Enum { values }) if !values.is_empty() => Some(values.clone()),
                        _ => None,
                    })
            })
            .ok_or_else(|| Error::MissingType {
                kind: "enum",
                name: name.to_string(),
            })
    }
}

/// Builds BTF blobs for tests: a tiny writer of the same format the parser reads.
#[cfg(test)]
pub(crate) mod testing {
    #[derive(Default)]
    pub struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
        /// Split BTF: the base's string section length.
        str_base: u32,
    }

    impl Builder {
        pub fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
                str_base: 0,
            }
        }

        /// A builder for BTF split on what `self` built (a module's on vmlinux's).
        pub fn split(&self) -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: self.next_id,
                str_base: self.strings.len() as u32,
            }
        }

        fn string(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, kind_flag: bool, size: u32) -> u32 {
            let name = self.string(name);
            let info = (kind << 24) | vlen | if kind_flag { 1 << 31 } else { 0 };
            for v in [name, info, size] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, super::KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        /// `members`: (name, type id, byte offset).
        pub fn strukt(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(name, super::KIND_STRUCT, size, members)
        }

        pub fn union(&mut self, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            self.composite(name, super::KIND_UNION, size, members)
        }

        fn composite(&mut self, name: &str, kind: u32, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let id = self.header(name, kind, members.len() as u32, false, size);
            for (m, ty, off) in members {
                let n = self.string(m);
                for v in [n, *ty, off * 8] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }

        pub fn enumeration(&mut self, name: &str, values: &[(&str, u32)]) -> u32 {
            let id = self.header(name, super::KIND_ENUM, values.len() as u32, false, 4);
            for (n, v) in values {
                let n = self.string(n);
                self.types.extend_from_slice(&n.to_le_bytes());
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            id
        }

        pub fn typedef(&mut self, name: &str, target: u32) -> u32 {
            self.header(name, super::KIND_TYPEDEF, 0, false, target)
        }

        pub fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&super::MAGIC.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            let hdr_len = 24u32;
            let type_len = self.types.len() as u32;
            for v in [hdr_len, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{testing::Builder, *};

    fn sample() -> Btf {
        let mut b = Builder::new();
        let u16_t = b.int("unsigned short", 2);
        let u64_t = b.int("unsigned long", 8);
        // struct { u16 network_header; u16 mac_header; } inside an anonymous union, like
        // sk_buff's struct_group(headers, ...).
        let inner = b.strukt("", 4, &[("network_header", u16_t, 0), ("mac_header", u16_t, 2)]);
        let group = b.union("", 4, &[("", inner, 0), ("headers", inner, 0)]);
        b.strukt(
            "sk_buff",
            232,
            &[("head", u64_t, 200), ("", group, 180), ("_nfct", u64_t, 104)],
        );
        b.typedef("skb_t", u64_t);
        b.enumeration(
            "skb_drop_reason",
            &[
                ("SKB_DROP_REASON_NOT_SPECIFIED", 2),
                ("SKB_DROP_REASON_NETFILTER_DROP", 12),
            ],
        );
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn finds_direct_members() {
        let btf = sample();
        assert_eq!(btf.member_offset("sk_buff", "head").unwrap(), 200);
        assert_eq!(btf.member_offset("sk_buff", "_nfct").unwrap(), 104);
        assert_eq!(btf.struct_size("sk_buff").unwrap(), 232);
    }

    #[test]
    fn finds_members_of_anonymous_groups() {
        let btf = sample();
        assert_eq!(btf.member_offset("sk_buff", "network_header").unwrap(), 180);
        assert_eq!(btf.member_offset("sk_buff", "mac_header").unwrap(), 182);
        assert_eq!(btf.member_offset("sk_buff", "headers.mac_header").unwrap(), 182);
    }

    #[test]
    fn names_what_is_missing() {
        let btf = sample();
        let err = btf.member_offset("sk_buff", "nope").unwrap_err().to_string();
        assert!(err.contains("sk_buff") && err.contains("nope"), "{err}");
        let err = btf.member_offset("nf_conn", "status").unwrap_err().to_string();
        assert!(err.contains("nf_conn"), "{err}");
    }

    #[test]
    fn reads_enums() {
        let values = sample().enum_values("skb_drop_reason").unwrap();
        assert_eq!(values[1], ("SKB_DROP_REASON_NETFILTER_DROP".to_string(), 12));
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(Btf::parse(&[0u8; 30]), Err(Error::Malformed(_))));
        assert!(matches!(Btf::parse(&[0x9f, 0xeb]), Err(Error::Malformed(_))));
    }

    #[test]
    fn reads_module_btf_split_on_vmlinux() {
        let mut base = Builder::new();
        let u32_t = base.int("unsigned int", 4);
        base.strukt("sk_buff", 232, &[("_nfct", u32_t, 104)]);
        let mut module = base.split();
        let tuple = module.strukt("nf_conntrack_tuple", 40, &[("src", u32_t, 0), ("dst", u32_t, 20)]);
        let hash = module.strukt(
            "nf_conntrack_tuple_hash",
            56,
            &[("hnnode", u32_t, 0), ("tuple", tuple, 16)],
        );
        let alias = module.typedef("nf_conntrack_tuple_hash_t", hash);
        module.strukt("nf_conn", 248, &[("tuplehash", alias, 16), ("status", u32_t, 128)]);
        module.enumeration("ip_conntrack_status", &[("IPS_CONFIRMED", 8)]);
        let mut btf = Btf::parse(&base.build()).unwrap();
        assert!(btf.struct_size("nf_conn").is_err(), "not in vmlinux");
        btf.add_module("nf_conntrack", &module.build()).unwrap();
        assert_eq!(btf.modules(), vec!["nf_conntrack"]);
        assert_eq!(btf.member_offset("nf_conn", "status").unwrap(), 128);
        assert_eq!(
            btf.member_offset("nf_conn", "tuplehash.tuple.dst").unwrap(),
            16 + 16 + 20
        );
        assert_eq!(btf.struct_size("nf_conntrack_tuple").unwrap(), 40);
        assert_eq!(btf.member_offset("sk_buff", "_nfct").unwrap(), 104);
        assert_eq!(
            btf.enum_values("ip_conntrack_status").unwrap(),
            vec![("IPS_CONFIRMED".to_string(), 8)]
        );
    }

    /// The running kernel's BTF: the offsets the programs need all resolve. Every kernel the
    /// tests run on has BTF; without it this fails rather than passing unseen.
    #[test]
    fn reads_running_kernel() {
        let btf = Btf::from_sys().unwrap_or_else(|e| panic!("needs the kernel's BTF ({VMLINUX_BTF}): {e}"));
        assert!(btf.member_offset("sk_buff", "network_header").is_ok());
        assert!(btf.member_offset("sk_buff", "head").is_ok());
        assert!(btf.enum_values("skb_drop_reason").is_ok());
    }
}
