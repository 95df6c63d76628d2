//! Loader for netfilter BPF link programs (`BPF_PROG_TYPE_NETFILTER`, kernel 6.4+), which aya
//! 0.14 cannot load.
//!
//! The programs live in `classifier/` sections of the same object aya loads, so aya-obj parses
//! them. Here the object is parsed again, its map references are relocated against the file
//! descriptors of the maps aya already created (`.rodata` with the `CONFIG` global included, so
//! both sets of programs share every map), calls are linked, and the instructions are loaded with
//! `bpf(BPF_PROG_LOAD)` as program type 32 / expected attach type 45 (their kfunc placeholders
//! patched first: `kfunc.rs`), then linked to a hook with
//! `bpf(BPF_LINK_CREATE)`. Closing the link's fd detaches it: [`Link`] owns it.
//!
//! Kernel rules (net/netfilter/nf_bpf_link.c): the hook is registered in the calling thread's
//! network namespace; priority must not be INT_MIN or INT_MAX; the program must return NF_ACCEPT
//! or NF_DROP.

use std::{
    collections::{HashMap, HashSet},
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use aya_obj::generated::bpf_insn;

use super::kfunc;

/// `BPF_PROG_TYPE_NETFILTER`.
pub const BPF_PROG_TYPE_NETFILTER: u32 = 32;
/// `BPF_NETFILTER` attach type.
pub const BPF_NETFILTER: u32 = 45;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
/// `NFPROTO_IPV4`.
pub const NFPROTO_IPV4: u32 = 2;
/// `NFPROTO_IPV6`.
pub const NFPROTO_IPV6: u32 = 10;

/// The family of a netfilter hook (`NFPROTO_*`): IPv4 and IPv6 packets pass separate hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Family {
    Ipv4 = NFPROTO_IPV4,
    Ipv6 = NFPROTO_IPV6,
}

impl Family {
    /// As nft names the families' tables.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Ipv4 => "ip",
            Self::Ipv6 => "ip6",
        }
    }
}

/// Netfilter hooks (`enum nf_inet_hooks`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Hook {
    PreRouting = 0,
    LocalIn = 1,
    Forward = 2,
    LocalOut = 3,
    PostRouting = 4,
}

impl Hook {
    pub const fn name(self) -> &'static str {
        match self {
            Self::PreRouting => "PREROUTING",
            Self::LocalIn => "INPUT",
            Self::Forward => "FORWARD",
            Self::LocalOut => "OUTPUT",
            Self::PostRouting => "POSTROUTING",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("parsing the embedded BPF object")]
    Parse(#[source] aya_obj::ParseError),
    #[error("the BPF object has no program `{0}`")]
    MissingProgram(String),
    #[error("relocating program maps")]
    Relocate(#[source] aya_obj::relocation::EbpfRelocationError),
    #[error("linking the kfunc calls of netfilter program `{name}`")]
    Kfunc {
        name: String,
        #[source]
        source: super::kfunc::Error,
    },
    // The verifier's hint follows the cause, so the cause is part of the message, not a source.
    #[error("loading netfilter program `{name}`: {cause}{}", verifier_hint(.log))]
    Load {
        name: String,
        cause: std::io::Error,
        log: String,
    },
    #[error("attaching `{name}` at {family} {hook} priority {priority}")]
    Link {
        name: String,
        family: &'static str,
        hook: &'static str,
        priority: i32,
        #[source]
        source: std::io::Error,
    },
}

fn verifier_hint(log: &str) -> String {
    let tail: Vec<&str> = log.lines().rev().take(8).collect();
    if tail.is_empty() {
        String::new()
    } else {
        format!(
            "\nverifier log (last lines):\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

/// `union bpf_attr` as BPF_PROG_LOAD reads it, up to `expected_attach_type`. The kernel accepts a
/// shorter attr than its own and treats the rest as zero.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// `union bpf_attr` as BPF_LINK_CREATE reads it for `BPF_NETFILTER`.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<RawFd> {
    // SAFETY: `attr` is a valid, initialised repr(C) bpf_attr prefix of the given size; the kernel
    // only reads it (and writes nothing back for these commands).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc as RawFd)
    }
}

/// Instructions of `program`, relocated against already-created maps (`map name -> fd`).
pub fn relocated_instructions(
    object: &[u8],
    program: &str,
    map_fds: &HashMap<String, RawFd>,
) -> Result<Vec<bpf_insn>, Error> {
    let mut obj = aya_obj::Object::parse(object).map_err(Error::Parse)?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(section, _)| *section).collect();
    let maps: Vec<(String, RawFd, aya_obj::Map)> = obj
        .maps
        .iter()
        .filter_map(|(name, map)| map_fds.get(name).map(|fd| (name.clone(), *fd, map.clone())))
        .collect();
    obj.relocate_maps(maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)), &text_sections)
        .map_err(Error::Relocate)?;
    obj.relocate_calls(&text_sections).map_err(Error::Relocate)?;
    let prog = obj
        .programs
        .get(program)
        .ok_or_else(|| Error::MissingProgram(program.to_string()))?;
    let function = obj
        .functions
        .get(&prog.function_key())
        .ok_or_else(|| Error::MissingProgram(program.to_string()))?;
    Ok(function.instructions.clone())
}

/// A loaded netfilter program. Closing the fd unloads it once no link holds it.
#[derive(Debug)]
pub struct Program {
    name: String,
    fd: OwnedFd,
}

impl Program {
    /// Loads `program` from `object`, sharing the maps in `map_fds`.
    pub fn load(object: &[u8], program: &str, map_fds: &HashMap<String, RawFd>) -> Result<Self, Error> {
        let mut insns = relocated_instructions(object, program, map_fds)?;
        kfunc::patch(&mut insns, program, kfunc::Ids::running_kernel).map_err(|source| Error::Kfunc {
            name: program.to_string(),
            source,
        })?;
        let license = c"GPL";
        let mut name = [0u8; 16];
        for (dst, src) in name.iter_mut().zip(program.bytes().take(15)) {
            *dst = src;
        }
        let mut attr = ProgLoadAttr {
            prog_type: BPF_PROG_TYPE_NETFILTER,
            insn_cnt: insns.len() as u32,
            insns: insns.as_ptr() as u64,
            license: license.as_ptr() as u64,
            prog_name: name,
            expected_attach_type: BPF_NETFILTER,
            ..Default::default()
        };
        match bpf(BPF_PROG_LOAD, &mut attr) {
            // SAFETY: the kernel returned a new fd that we now own.
            Ok(fd) => Ok(Self {
                name: program.to_string(),
                fd: unsafe { OwnedFd::from_raw_fd(fd) },
            }),
            Err(source) => {
                // Load again with the verifier log on, to say why.
                let mut log = vec![0u8; 1 << 20];
                attr.log_level = 1;
                attr.log_size = log.len() as u32;
                attr.log_buf = log.as_mut_ptr() as u64;
                if let Ok(fd) = bpf(BPF_PROG_LOAD, &mut attr) {
                    // SAFETY: as above; a retry that succeeds is taken.
                    return Ok(Self {
                        name: program.to_string(),
                        fd: unsafe { OwnedFd::from_raw_fd(fd) },
                    });
                }
                let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                Err(Error::Load {
                    name: program.to_string(),
                    cause: source,
                    log: String::from_utf8_lossy(&log[..end]).into_owned(),
                })
            }
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Attaches the program at `hook` (IPv4) with `priority`, in the calling thread's netns.
    pub fn attach(&self, hook: Hook, priority: i32) -> Result<Link, Error> {
        self.attach_family(Family::Ipv4, hook, priority)
    }

    /// Attaches the program at `family`'s `hook` with `priority`, in the calling thread's netns.
    pub fn attach_family(&self, family: Family, hook: Hook, priority: i32) -> Result<Link, Error> {
        let mut attr = LinkCreateAttr {
            prog_fd: self.fd.as_raw_fd() as u32,
            attach_type: BPF_NETFILTER,
            pf: family as u32,
            hooknum: hook as u32,
            priority,
            ..Default::default()
        };
        let fd = bpf(BPF_LINK_CREATE, &mut attr).map_err(|source| Error::Link {
            name: self.name.clone(),
            family: family.name(),
            hook: hook.name(),
            priority,
            source,
        })?;
        // SAFETY: the kernel returned a new link fd that we now own.
        Ok(Link {
            family,
            hook,
            priority,
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }
}

/// An attached netfilter hook; dropping it detaches the program.
#[derive(Debug)]
pub struct Link {
    pub family: Family,
    pub hook: Hook,
    pub priority: i32,
    #[expect(dead_code, reason = "held only so that dropping the Link closes it, which detaches")]
    fd: OwnedFd,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel() {
        // offsetof(union bpf_attr, expected_attach_type) == 68 in include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        // link_create.netfilter.{pf, hooknum, priority, flags} follow the 16-byte header.
        assert_eq!(std::mem::offset_of!(LinkCreateAttr, pf), 16);
        assert_eq!(std::mem::size_of::<LinkCreateAttr>(), 32);
    }

    /// Map references in the netfilter programs point at the fds we hand in, for every map they use.
    #[test]
    fn relocates_maps_to_given_fds() {
        let object = crate::loader::PROBES;
        // Never a silent pass: a build without the programs cannot check their relocations.
        assert!(
            !object.is_empty(),
            "built with D8_SKIP_EBPF: the kernel programs are not in this binary"
        );
        let obj = aya_obj::Object::parse(object).unwrap();
        let fds: HashMap<String, RawFd> = obj
            .maps
            .keys()
            .enumerate()
            .map(|(i, name)| (name.clone(), 1000 + i as RawFd))
            .collect();
        for program in ["nf_pre", "nf_post", "nf_pre6", "nf_post6"] {
            let insns = relocated_instructions(object, program, &fds).unwrap();
            let map_loads: Vec<i32> = insns
                .iter()
                // BPF_LD | BPF_IMM | BPF_DW with src_reg BPF_PSEUDO_MAP_FD (1) or _VALUE (2).
                .filter(|i| i.code == 0x18 && matches!(i.src_reg(), 1 | 2))
                .map(|i| i.imm)
                .collect();
            assert!(!map_loads.is_empty(), "{program} references no map");
            let expected: HashSet<i32> = fds.values().copied().collect();
            for fd in map_loads {
                assert!(
                    expected.contains(&fd),
                    "{program}: map reference to fd {fd}, not one of ours"
                );
            }
        }
    }

    #[test]
    fn missing_program_is_named() {
        let object = crate::loader::PROBES;
        if object.is_empty() {
            return;
        }
        let err = relocated_instructions(object, "nf_nope", &HashMap::new()).unwrap_err();
        assert!(matches!(err, Error::MissingProgram(ref p) if p == "nf_nope") || matches!(err, Error::Relocate(_)));
    }
}
