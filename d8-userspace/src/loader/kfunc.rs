//! The kfunc calls of the netfilter programs, which aya 0.14 cannot relocate. The programs emit
//! each as the placeholder pair `d8_common::kfunc` describes (`r2 = <type placeholder>`, then
//! `call <kfunc placeholder>`; `d8-ebpf/src/kfunc.rs`), and [`patch`] turns the pair into the
//! real thing before `BPF_PROG_LOAD`: the call's `src_reg` becomes `BPF_PSEUDO_KFUNC_CALL` and its
//! `imm` the kfunc's id in the running kernel's BTF (`off` 0: vmlinux), the type placeholder the
//! id of the struct it names there.
//!
//! The netfilter programs load only on kernels with netfilter links (6.4+), and all of them have
//! `bpf_rdonly_cast` (6.2+, for every program type) and the header structs in vmlinux's BTF. A
//! kernel without one of them gets an error naming it and the TC hook set as the way on, not a
//! second copy of every parser: there is no such kernel to test that copy on.
//!
//! `struct nf_conn` is the exception: it is in vmlinux's BTF only when conntrack is built in
//! (a module's type cannot be the cast's argument: the verifier looks the id up in the kfunc's
//! own BTF, vmlinux's), and modular conntrack is common. So it is optional: [`Ids::casts_nf_conn`]
//! sets `CONFIG.ct_cast`, and without it the programs read the entry with the helper as before;
//! its type placeholder is then left in the cast branch the verifier never reaches (an unknown
//! type there if it ever did: a load error, never a silently wrong read).

use std::sync::OnceLock;

use aya_obj::generated::bpf_insn;
use d8_common::kfunc;

use crate::kernel::btf;

/// `BPF_JMP | BPF_CALL`.
const CALL: u8 = 0x85;
/// `BPF_ALU64 | BPF_MOV | BPF_K`: `dst = imm`.
const MOV64_IMM: u8 = 0xb7;
/// `src_reg` of a call to a kernel function (`BPF_PSEUDO_KFUNC_CALL`).
const PSEUDO_KFUNC_CALL: u8 = 2;
/// The register of a kfunc's second argument, which the type placeholder is moved into.
const R2: u8 = 2;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(
        "reading the kernel's BTF (/sys/kernel/btf/vmlinux) for the ids of the kernel functions the netfilter programs call: {0}; trace with `--hooks tc` instead"
    )]
    Btf(String),
    #[error(
        "the kernel's BTF has no {kind} `{name}`, which the netfilter programs need (bpf_rdonly_cast is in every kernel from 6.2, the header structs in every one with BTF): trace with `--hooks tc` instead"
    )]
    Missing { kind: &'static str, name: &'static str },
    #[error(
        "program `{program}`, instruction {at}: a kfunc placeholder call without its type placeholder (`r2 = ...`) right before it; the kernel programs were built wrong (d8-ebpf/src/kfunc.rs)"
    )]
    Unpaired { program: String, at: usize },
}

/// The ids the placeholders stand for in one kernel's BTF.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ids {
    rdonly_cast: i32,
    /// (type placeholder, struct id), in the order of `kfunc::TYPES`.
    types: Vec<(i32, i32)>,
    /// `struct nf_conn`'s id, when vmlinux has it (conntrack built in).
    nf_conn: Option<i32>,
}

impl Ids {
    /// The ids in the (vmlinux) BTF `bytes`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, Error> {
        let wanted: Vec<(u32, &str)> = std::iter::once((btf::FUNC, kfunc::RDONLY_CAST_NAME))
            .chain(kfunc::TYPES.iter().map(|&(_, name)| (btf::STRUCT, name)))
            .chain(std::iter::once((btf::STRUCT, kfunc::NF_CONN_NAME)))
            .collect();
        let found = btf::type_ids(bytes, &wanted).map_err(|e| Error::Btf(crate::error_chain(&e)))?;
        Self::from_lookup(|name, kind| {
            wanted
                .iter()
                .zip(&found)
                .find(|((k, n), _)| *k == kind && *n == name)
                .and_then(|(_, id)| *id)
        })
    }

    /// The ids `lookup(name, kind)` gives.
    fn from_lookup(lookup: impl Fn(&str, u32) -> Option<u32>) -> Result<Self, Error> {
        let id = |name: &'static str, kind: u32, kind_name: &'static str| {
            lookup(name, kind)
                .map(|id| id as i32)
                .ok_or(Error::Missing { kind: kind_name, name })
        };
        Ok(Self {
            rdonly_cast: id(kfunc::RDONLY_CAST_NAME, btf::FUNC, "function")?,
            types: kfunc::TYPES
                .iter()
                .map(|&(placeholder, name)| Ok((placeholder, id(name, btf::STRUCT, "struct")?)))
                .collect::<Result<_, Error>>()?,
            nf_conn: lookup(kfunc::NF_CONN_NAME, btf::STRUCT).map(|id| id as i32),
        })
    }

    /// Whether the programs may read the conntrack entry through the cast (`CONFIG.ct_cast`).
    pub fn casts_nf_conn(&self) -> bool {
        self.nf_conn.is_some()
    }

    /// The running kernel's ids, read once per process (the kernel's BTF does not change while it
    /// runs): a scan of vmlinux's BTF that builds nothing (aya's parse of it cost start-up
    /// 50-150 ms).
    pub fn running_kernel() -> Result<&'static Self, Error> {
        static IDS: OnceLock<Result<Ids, Error>> = OnceLock::new();
        IDS.get_or_init(|| {
            let bytes = std::fs::read(btf::VMLINUX_BTF).map_err(|e| Error::Btf(e.to_string()))?;
            Self::from_bytes(&bytes)
        })
        .as_ref()
        .map_err(Clone::clone)
    }

    /// The id `placeholder` becomes: `Ok(None)` for `nf_conn` where vmlinux lacks it (left for
    /// the verifier to skip, see the module's comment), `Err` for no placeholder of ours.
    fn type_id(&self, placeholder: i32) -> Result<Option<i32>, ()> {
        if placeholder == kfunc::NF_CONN {
            return Ok(self.nf_conn);
        }
        let found = self.types.iter().find(|(p, _)| *p == placeholder);
        found.map(|&(_, id)| Some(id)).ok_or(())
    }
}

/// Whether `insn` is a kfunc placeholder call.
fn is_placeholder_call(insn: &bpf_insn) -> bool {
    insn.code == CALL && insn.src_reg() == 0 && insn.imm == kfunc::RDONLY_CAST
}

/// Patches every placeholder pair in `program`'s instructions with the ids `ids` gives (asked
/// for only when the program has a placeholder); returns how many calls it patched. A placeholder
/// call without its type placeholder is an error, never left for the verifier to misread.
pub fn patch<'a>(
    insns: &mut [bpf_insn],
    program: &str,
    ids: impl FnOnce() -> Result<&'a Ids, Error>,
) -> Result<usize, Error> {
    let calls: Vec<usize> = (0..insns.len()).filter(|&i| is_placeholder_call(&insns[i])).collect();
    if calls.is_empty() {
        return Ok(0);
    }
    let ids = ids()?;
    for &at in &calls {
        let unpaired = || Error::Unpaired {
            program: program.to_string(),
            at,
        };
        let ty = at.checked_sub(1).map(|i| &insns[i]).ok_or_else(unpaired)?;
        if ty.code != MOV64_IMM || ty.dst_reg() != R2 || ty.src_reg() != 0 {
            return Err(unpaired());
        }
        if let Some(type_id) = ids.type_id(ty.imm).map_err(|()| unpaired())? {
            insns[at - 1].imm = type_id;
        }
        insns[at].set_src_reg(PSEUDO_KFUNC_CALL);
        insns[at].imm = ids.rdonly_cast;
        insns[at].off = 0;
    }
    Ok(calls.len())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::loader::{NETFILTER_PROGRAMS, PROBES, netfilter};

    fn insn(code: u8, dst: u8, src: u8, imm: i32) -> bpf_insn {
        // SAFETY: `bpf_insn` is plain integers, for which all-zero bytes are valid.
        let mut i: bpf_insn = unsafe { std::mem::zeroed() };
        i.code = code;
        i.imm = imm;
        i.set_dst_reg(dst);
        i.set_src_reg(src);
        i
    }

    fn fake_ids() -> Ids {
        Ids {
            rdonly_cast: 7000,
            types: kfunc::TYPES
                .iter()
                .enumerate()
                .map(|(i, &(p, _))| (p, 100 + i as i32))
                .collect(),
            nf_conn: Some(200),
        }
    }

    #[test]
    fn patches_a_pair_into_a_kfunc_call() {
        let ids = fake_ids();
        let mut insns = vec![
            insn(MOV64_IMM, 1, 0, 5),
            insn(MOV64_IMM, R2, 0, kfunc::TCPHDR),
            insn(CALL, 0, 0, kfunc::RDONLY_CAST),
            insn(CALL, 0, 0, 1),
        ];
        assert_eq!(patch(&mut insns, "p", || Ok(&ids)), Ok(1));
        assert_eq!((insns[1].code, insns[1].dst_reg(), insns[1].imm), (MOV64_IMM, R2, 101));
        assert_eq!(
            (insns[2].src_reg(), insns[2].imm, insns[2].off),
            (PSEUDO_KFUNC_CALL, 7000, 0)
        );
        // Everything else untouched: a real helper call stays one.
        assert_eq!((insns[0].imm, insns[3].src_reg(), insns[3].imm), (5, 0, 1));
    }

    /// `nf_conn` is patched where vmlinux has it, and left where it does not (modular
    /// conntrack), with the call patched either way.
    #[test]
    fn nf_conn_is_patched_only_where_vmlinux_has_it() {
        for nf_conn in [Some(200), None] {
            let ids = Ids { nf_conn, ..fake_ids() };
            let mut insns = vec![
                insn(MOV64_IMM, R2, 0, kfunc::NF_CONN),
                insn(CALL, 0, 0, kfunc::RDONLY_CAST),
            ];
            assert_eq!(patch(&mut insns, "nf_post", || Ok(&ids)), Ok(1));
            assert_eq!(insns[0].imm, nf_conn.unwrap_or(kfunc::NF_CONN));
            assert_eq!((insns[1].src_reg(), insns[1].imm), (PSEUDO_KFUNC_CALL, 7000));
            assert_eq!(ids.casts_nf_conn(), nf_conn.is_some());
        }
    }

    #[test]
    fn a_program_without_placeholders_never_reads_btf() {
        let mut insns = vec![insn(CALL, 0, 0, 1)];
        assert_eq!(patch(&mut insns, "p", || panic!("asked for ids")), Ok(0));
    }

    #[test]
    fn an_unpaired_placeholder_is_named() {
        let ids = fake_ids();
        for before in [
            insn(MOV64_IMM, 3, 0, kfunc::IPHDR),
            insn(MOV64_IMM, R2, 0, 12345),
            insn(CALL, 0, 0, 1),
        ] {
            let mut insns = vec![before, insn(CALL, 0, 0, kfunc::RDONLY_CAST)];
            let err = patch(&mut insns, "nf_pre", || Ok(&ids)).unwrap_err();
            assert_eq!(
                err,
                Error::Unpaired {
                    program: "nf_pre".into(),
                    at: 1
                }
            );
        }
        let mut first = vec![insn(CALL, 0, 0, kfunc::RDONLY_CAST)];
        assert!(patch(&mut first, "nf_pre", || Ok(&ids)).is_err());
    }

    /// The built programs: the packet parsers of `nf_pre` and `nf_post` and their IPv6 twins
    /// read through the cast (the loader patches what is there), and each placeholder is paired.
    #[test]
    fn netfilter_programs_carry_paired_placeholders() {
        assert!(
            !PROBES.is_empty(),
            "built with D8_SKIP_EBPF: the kernel programs are not in this binary"
        );
        let ids = fake_ids();
        // Map fds that are never used: the instructions are only read.
        let fds: HashMap<String, std::os::fd::RawFd> = aya_obj::Object::parse(PROBES)
            .unwrap()
            .maps
            .keys()
            .enumerate()
            .map(|(i, name)| (name.clone(), 1000 + i as std::os::fd::RawFd))
            .collect();
        for program in NETFILTER_PROGRAMS {
            let mut insns =
                netfilter::relocated_instructions(PROBES, program, &fds).unwrap_or_else(|e| panic!("{program}: {e}"));
            let patched = patch(&mut insns, program, || Ok(&ids)).unwrap_or_else(|e| panic!("{e}"));
            assert!(patched >= 2, "{program}: {patched} kfunc calls");
            assert!(!insns.iter().any(is_placeholder_call), "{program}: a placeholder left");
        }
    }

    /// A kernel whose BTF lacks the kfunc is told so by name, with the way on.
    #[test]
    fn a_missing_kfunc_is_named() {
        // Every struct, no function.
        let structs_only =
            |name: &str, kind: u32| (kind == btf::STRUCT && kfunc::TYPES.iter().any(|(_, n)| *n == name)).then_some(9);
        let err = Ids::from_lookup(structs_only).unwrap_err();
        assert_eq!(
            err,
            Error::Missing {
                kind: "function",
                name: "bpf_rdonly_cast"
            }
        );
        assert!(err.to_string().contains("--hooks tc"), "{err}");
    }

    /// The running kernel's BTF names everything the placeholders stand for, at the ids aya's
    /// full parse of it finds.
    #[test]
    fn the_running_kernel_has_every_id() {
        use aya_obj::btf::{Btf, BtfKind};
        let ids = Ids::running_kernel().unwrap_or_else(|e| panic!("{e}"));
        let aya = Btf::from_sys_fs().unwrap();
        let by_aya = |name, kind| aya.id_by_type_name_kind(name, kind).unwrap() as i32;
        assert_eq!(ids.rdonly_cast, by_aya(kfunc::RDONLY_CAST_NAME, BtfKind::Func));
        assert_eq!(ids.types.len(), kfunc::TYPES.len());
        for (&(placeholder, name), &(p, id)) in kfunc::TYPES.iter().zip(&ids.types) {
            assert_eq!((p, id), (placeholder, by_aya(name, BtfKind::Struct)), "struct {name}");
        }
        let nf_conn = aya.id_by_type_name_kind(kfunc::NF_CONN_NAME, BtfKind::Struct).ok();
        assert_eq!(ids.nf_conn, nf_conn.map(|id| id as i32));
    }
}
