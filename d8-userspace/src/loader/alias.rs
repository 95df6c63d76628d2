//! The conntrack join's kernel side: installing post-NAT aliases in `NAT_ALIAS` and moving what
//! the programs recorded under a post-NAT tuple to the ORIGINAL one in `FLOWS`, batched where the
//! kernel allows. Map operations only; which flows to join is decided in `trace::ctjoin`.

use d8_common::{FlowKey, FlowState};

use super::Tracer;

/// Raw `bpf()` map commands the join batches (aya has no batch operations).
mod bpf_sys {
    pub const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
    pub const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    pub const BPF_MAP_LOOKUP_AND_DELETE_ELEM: libc::c_long = 21;
    pub const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
    pub const BPF_ANY: u64 = 0;
    /// The kernel's own "operation not supported" (not in libc).
    pub const ENOTSUPP: i32 = 524;
    pub const BPF_NOEXIST: u64 = 1;

    /// `bpf_attr` for the `*_ELEM` commands.
    #[repr(C)]
    pub struct Elem {
        pub map_fd: u32,
        pub pad: u32,
        pub key: u64,
        pub value: u64,
        pub flags: u64,
    }

    /// `bpf_attr` for the `*_BATCH` commands.
    #[repr(C)]
    pub struct Batch {
        pub in_batch: u64,
        pub out_batch: u64,
        pub keys: u64,
        pub values: u64,
        pub count: u32,
        pub map_fd: u32,
        pub elem_flags: u64,
        pub flags: u64,
    }

    pub fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> std::io::Result<()> {
        // SAFETY: `attr` is a valid `bpf_attr` prefix of its own size; the pointers in it point
        // to memory the caller keeps alive for the call.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
        if rc < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    pub fn elem<K, V>(cmd: libc::c_long, fd: i32, key: &K, value: *mut V, flags: u64) -> std::io::Result<()> {
        let mut attr = Elem {
            map_fd: fd as u32,
            pad: 0,
            key: key as *const K as u64,
            value: value as u64,
            flags,
        };
        bpf(cmd, &mut attr)
    }
}

fn map_fd(tracer: &Tracer, name: &str) -> Option<i32> {
    use std::os::fd::{AsFd, AsRawFd};
    Some(super::map_data(tracer.ebpf.map(name)?).fd().as_fd().as_raw_fd())
}

/// Installs the post-NAT aliases of `joins` in the kernel (`NAT_ALIAS`) and moves what the
/// programs recorded under a post-NAT tuple to the ORIGINAL one (`FLOWS`), as
/// [`super::Tracer::join_alias`] does per flow with five map syscalls, here with one
/// batched update for all aliases and two or three syscalls per flow. Falls back to
/// `join_alias` (and stays there) when the kernel lacks the batched commands. Returns the
/// number of failed updates.
pub fn kernel_join(tracer: &mut Tracer, joins: &[(FlowKey, FlowKey)], fast: &mut bool) -> u64 {
    use bpf_sys::*;
    if joins.is_empty() {
        return 0;
    }
    // The drop tracepoint finds a flow only through keys whose destination `FLOW_FILTER` holds.
    if tracer
        .note_flow_keys(joins.iter().flat_map(|(post, orig)| [post, orig]))
        .is_err()
    {
        return joins.len() as u64;
    }
    if *fast && let (Some(alias), Some(flows)) = (map_fd(tracer, "NAT_ALIAS"), map_fd(tracer, "FLOWS")) {
        let keys: Vec<FlowKey> = joins.iter().map(|(post, _)| *post).collect();
        let values: Vec<FlowKey> = joins.iter().map(|(_, orig)| *orig).collect();
        let mut attr = Batch {
            in_batch: 0,
            out_batch: 0,
            keys: keys.as_ptr() as u64,
            values: values.as_ptr() as u64,
            count: joins.len() as u32,
            map_fd: alias as u32,
            elem_flags: BPF_ANY,
            flags: 0,
        };
        let batched = bpf(BPF_MAP_UPDATE_BATCH, &mut attr);
        if batched.is_ok() {
            let mut failed = 0;
            for (post, orig) in joins {
                match flows_merge(flows, post, orig) {
                    Ok(()) => {}
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | ENOTSUPP | libc::EOPNOTSUPP)) => {
                        tracing::info!(
                            "note: FLOWS lookup-and-delete unavailable ({e}): joining with single map operations"
                        );
                        *fast = false;
                        break;
                    }
                    Err(_) => failed += 1,
                }
            }
            if *fast {
                return failed;
            }
        } else {
            tracing::info!(
                "note: batched NAT_ALIAS updates unavailable ({}): joining with single map operations",
                batched.err().map(|e| e.to_string()).unwrap_or_default()
            );
            *fast = false;
        }
    }
    joins
        .iter()
        .filter(|(post, orig)| tracer.join_alias(post, orig).is_err())
        .count() as u64
}

/// `FLOWS[orig] |= FLOWS.take(post)`; `FLOWS[orig]` exists afterwards (the programs find a
/// flow through its alias only then).
fn flows_merge(fd: i32, post: &FlowKey, orig: &FlowKey) -> std::io::Result<()> {
    use bpf_sys::*;
    let mut pending = FlowState::default();
    match elem(BPF_MAP_LOOKUP_AND_DELETE_ELEM, fd, post, &mut pending, 0) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
            // Nothing recorded under the post-NAT tuple: only make sure the flow exists.
            let mut zero = FlowState::default();
            return match elem(BPF_MAP_UPDATE_ELEM, fd, orig, &mut zero, BPF_NOEXIST) {
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
                r => r,
            };
        }
        r => r?,
    }
    let mut current = FlowState::default();
    let mut merged = match elem(BPF_MAP_LOOKUP_ELEM, fd, orig, &mut current, 0) {
        Ok(()) => {
            let merged = FlowState {
                seen: current.seen | pending.seen,
                last_drop_reason: current.last_drop_reason,
                captured: current.captured.max(pending.captured),
                ..current
            };
            if merged == current {
                return Ok(());
            }
            merged
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => pending,
        Err(e) => return Err(e),
    };
    elem(BPF_MAP_UPDATE_ELEM, fd, orig, &mut merged, BPF_ANY)
}

/// A flow that existed before the programs were attached, for [`seed`]: its ORIGINAL tuple, the
/// tuple its packets carry after NAT (when NAT changed it), and the `seen` bits its state starts
/// with.
#[derive(Debug, Clone, Copy)]
pub struct Seed {
    pub orig: FlowKey,
    pub post_nat: Option<FlowKey>,
    pub seen: u32,
}

/// Puts flows the programs never saw begin into `FLOWS` (and their post-NAT tuples into
/// `NAT_ALIAS`), as `nf_post` would on their next packet: a flow the programs already hold is
/// left as it is. Returns, per seed, whether it went in; `Err` only when the maps are missing.
pub fn seed(tracer: &mut Tracer, seeds: &[Seed]) -> Result<Vec<bool>, super::Error> {
    use bpf_sys::*;
    let (Some(alias), Some(flows)) = (map_fd(tracer, "NAT_ALIAS"), map_fd(tracer, "FLOWS")) else {
        return Err(super::Error::Missing("maps FLOWS and NAT_ALIAS".into()));
    };
    // The drop tracepoint finds a flow only through keys whose destination `FLOW_FILTER` holds.
    tracer.note_flow_keys(
        seeds
            .iter()
            .flat_map(|s| std::iter::once(&s.orig).chain(s.post_nat.as_ref())),
    )?;
    Ok(seeds
        .iter()
        .map(|s| {
            let mut state = FlowState {
                seen: s.seen,
                ..FlowState::default()
            };
            // BPF_NOEXIST: the programs may have taken the flow up since the dump.
            if elem(BPF_MAP_UPDATE_ELEM, flows, &s.orig, &mut state, BPF_NOEXIST).is_err() {
                return false;
            }
            if let Some(post) = &s.post_nat {
                let mut orig = s.orig;
                let _ = elem(BPF_MAP_UPDATE_ELEM, alias, post, &mut orig, BPF_ANY);
            }
            true
        })
        .collect())
}
