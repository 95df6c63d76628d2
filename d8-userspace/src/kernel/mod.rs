//! Facts about the running kernel that decide how d8-trace traces: struct offsets from BTF,
//! tracepoint layouts from tracefs, drop-reason names, and which hook sets can work.

pub mod btf;
pub mod ctnetlink;
pub mod heap;
pub mod host;
pub mod netlink;
pub mod netns;
pub mod nftables;
pub mod process;
pub mod rtnetlink;
pub mod tracefs;
pub mod xtables;

use std::collections::HashMap;

use d8_common::{Config, TpAddrLayout, layout};

use self::{btf::Btf, tracefs::Format};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Btf(#[from] btf::Error),
    #[error(transparent)]
    Tracefs(#[from] tracefs::Error),
    #[error(
        "kernel BTF: struct nf_conntrack_tuple is {0} bytes, expected 40; this kernel's conntrack layout is not supported"
    )]
    TupleLayout(u32),
}

/// Names of `enum skb_drop_reason` values of this kernel, without the `SKB_DROP_REASON_` prefix.
#[derive(Debug, Clone, Default)]
pub struct DropReasons {
    names: HashMap<u32, String>,
}

impl DropReasons {
    pub fn from_btf(btf: &Btf) -> Self {
        let names = btf
            .enum_values("skb_drop_reason")
            .unwrap_or_default()
            .into_iter()
            .map(|(name, value)| {
                let short = name.strip_prefix("SKB_DROP_REASON_").unwrap_or(&name).to_string();
                (value as u32, short)
            })
            .collect();
        Self { names }
    }

    /// The name of `reason`, or `REASON_<n>` when this kernel's BTF does not list it. A kernel
    /// without drop reasons at all (before 5.17: no enum, no `reason` in `skb:kfree_skb`) names
    /// every drop `NOT_SPECIFIED`, as a later kernel names a drop it gives no reason for.
    pub fn name(&self, reason: u32) -> String {
        if self.names.is_empty() {
            return "NOT_SPECIFIED".into();
        }
        self.names
            .get(&reason)
            .cloned()
            .unwrap_or_else(|| format!("REASON_{reason}"))
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Names for a test's reasons, as a kernel's BTF would give them (prefix stripped).
    #[cfg(test)]
    pub fn from_names<'a>(names: impl IntoIterator<Item = (u32, &'a str)>) -> Self {
        Self {
            names: names.into_iter().map(|(v, n)| (v, n.to_string())).collect(),
        }
    }
}

/// The programs' configuration without conntrack's layout, as the TC hook set runs where
/// `nf_conn`'s offsets are unknown: `sk_buff`'s offsets from `btf` when there is one (the drop
/// tracepoint then names flows by the dropped packet's tuple), everything else unused. Tracepoint
/// layouts still come from [`tracepoint_layouts`].
pub fn packet_only_config(btf: Option<&Btf>) -> Result<Config, Error> {
    let mut config = Config::default();
    (config.skb_head, config.skb_network_header, config.skb_tail) = match btf {
        Some(btf) => (
            btf.member_offset("sk_buff", "head")?,
            btf.member_offset("sk_buff", "network_header")?,
            btf.member_offset("sk_buff", "tail")?,
        ),
        None => (u32::MAX, u32::MAX, u32::MAX),
    };
    for off in [
        &mut config.skb_nfct,
        &mut config.ct_tuple_orig,
        &mut config.ct_tuple_reply,
        &mut config.ct_status,
        &mut config.nf_state_hook,
    ] {
        *off = u32::MAX;
    }
    Ok(config)
}

/// Offsets of the kernel structures the programs read.
pub fn struct_offsets(btf: &Btf, config: &mut Config) -> Result<(), Error> {
    let tuple_size = btf.struct_size("nf_conntrack_tuple")?;
    if tuple_size != 40 {
        return Err(Error::TupleLayout(tuple_size));
    }
    config.skb_head = btf.member_offset("sk_buff", "head")?;
    config.skb_network_header = btf.member_offset("sk_buff", "network_header")?;
    config.skb_nfct = btf.member_offset("sk_buff", "_nfct")?;
    config.skb_tail = btf.member_offset("sk_buff", "tail")?;
    let tuplehash = btf.member_offset("nf_conn", "tuplehash")?;
    let tuple_in_hash = btf.member_offset("nf_conntrack_tuple_hash", "tuple")?;
    let hash_size = btf.struct_size("nf_conntrack_tuple_hash")?;
    config.ct_tuple_orig = tuplehash + tuple_in_hash;
    config.ct_tuple_reply = tuplehash + hash_size + tuple_in_hash;
    config.ct_status = btf.member_offset("nf_conn", "status")?;
    config.nf_state_hook = btf.member_offset("nf_hook_state", "hook")?;
    Ok(())
}

const NONE: u32 = u32::MAX;

fn addr_layout(format: &Format) -> TpAddrLayout {
    let off = |name: &str| format.field(name).map_or(NONE, |f| f.offset);
    let mut l = TpAddrLayout {
        kind: layout::UNUSED,
        saddr: off("saddr"),
        daddr: off("daddr"),
        sport: off("sport"),
        dport: off("dport"),
        family: off("family"),
        saddr_v6: off("saddr_v6"),
        daddr_v6: off("daddr_v6"),
        protocol: off("protocol"),
        oldstate: off("oldstate"),
        newstate: off("newstate"),
    };
    match format.field("saddr").map(|f| f.size) {
        // struct sockaddr_in6-sized storage holding a sockaddr_in or sockaddr_in6 (6.10+).
        Some(28) => l.kind = layout::SOCKADDR,
        Some(4) if l.sport != NONE && l.dport != NONE => l.kind = layout::SEPARATE,
        _ => {}
    }
    l
}

/// Tracepoint layouts, from tracefs `format` files. A tracepoint whose layout is not understood
/// is left unused and listed in the returned warnings; only `kfree_skb` is required.
pub fn tracepoint_layouts(mount: &tracefs::Mount, config: &mut Config) -> Result<Vec<String>, Error> {
    let mut warnings = Vec::new();
    let kfree = mount.format("skb", "kfree_skb")?;
    config.kfree_skbaddr = kfree.require("skbaddr")?.offset;
    config.kfree_reason = match kfree.field("reason") {
        Some(f) => f.offset,
        None => {
            warnings.push(
                "skb:kfree_skb has no drop reason on this kernel (before 5.17): every drop is named NOT_SPECIFIED"
                    .into(),
            );
            NONE
        }
    };
    for (slot, category, name) in [
        (&mut config.send_reset, "tcp", "tcp_send_reset"),
        (&mut config.receive_reset, "tcp", "tcp_receive_reset"),
        (&mut config.sock_state, "sock", "inet_sock_set_state"),
    ] {
        match mount.format(category, name) {
            Ok(format) => {
                *slot = addr_layout(&format);
                if slot.kind == layout::UNUSED {
                    warnings.push(format!("{category}:{name}: address layout not understood, not used"));
                }
            }
            Err(e) => {
                *slot = TpAddrLayout {
                    kind: layout::UNUSED,
                    ..Default::default()
                };
                warnings.push(e.to_string());
            }
        }
    }
    Ok(warnings)
}

/// `uname -r`.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// (major, minor) of the running kernel.
pub fn version() -> Option<(u32, u32)> {
    parse_version(&release())
}

fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Whether this process is root (effective uid 0). Loading BPF needs CAP_BPF + CAP_NET_ADMIN +
/// CAP_PERFMON; we check the simple case and let the kernel say EPERM otherwise.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Ids of the BPF programs some live process holds a file descriptor of (every
/// `/proc/PID/fdinfo/FD` with a `prog_id:` line). A program only a TC filter holds (its process
/// was killed) is not among them.
pub fn held_program_ids() -> std::collections::HashSet<u32> {
    let mut ids = std::collections::HashSet::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return ids;
    };
    for p in procs.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fdinfo")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(info) = std::fs::read_to_string(fd.path()) else {
                continue;
            };
            if let Some(id) = info
                .lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|v| v.trim().parse().ok())
            {
                ids.insert(id);
            }
        }
    }
    ids
}

/// Whether process `pid` still exists (records of what a d8-trace added name it).
pub fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// The current thread's network namespace, as its inode number (a name for records kept per
/// namespace).
pub fn netns_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| m.ino())
}

/// The network namespaces that still exist, as inode numbers: those a thread is in, those an
/// open file descriptor holds, and those bind-mounted (`ip netns add`, a container runtime's
/// `/run/netns`) in any mount namespace. A namespace none of these keeps is gone for good (its
/// interfaces and qdiscs with it). Walks every process: for `cleanup`, not a hot path.
pub fn live_netns_inodes() -> std::collections::HashSet<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut live = std::collections::HashSet::new();
    let mut mount_namespaces = std::collections::HashSet::new();
    live.extend(netns_inode());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return live;
    };
    for p in procs.flatten() {
        if !p.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let dir = p.path();
        // Threads may sit in another namespace than their process (setns on one thread).
        for task in std::fs::read_dir(dir.join("task")).into_iter().flatten().flatten() {
            live.extend(std::fs::metadata(task.path().join("ns/net")).ok().map(|m| m.ino()));
        }
        for fd in std::fs::read_dir(dir.join("fd")).into_iter().flatten().flatten() {
            live.extend(
                std::fs::read_link(fd.path())
                    .ok()
                    .and_then(|l| nsfs_inode(&l.to_string_lossy())),
            );
        }
        // Each mount namespace's table once: a bind mount there keeps a network namespace.
        let mnt = std::fs::metadata(dir.join("ns/mnt")).map(|m| m.ino()).unwrap_or(0);
        if mount_namespaces.insert(mnt)
            && let Ok(table) = std::fs::read_to_string(dir.join("mountinfo"))
        {
            // mountinfo's fourth field is the mount's root: `net:[INODE]` for an nsfs bind mount.
            live.extend(table.lines().filter_map(|l| l.split(' ').nth(3)).filter_map(nsfs_inode));
        }
    }
    live
}

/// `net:[4026531840]` (an nsfs link or mount root) as its inode.
fn nsfs_inode(s: &str) -> Option<u64> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// Whether kernel module `name` is present: loaded (`/sys/module/NAME`) or built in (listed in
/// `modules.builtin`). `None` when neither says: a built-in module without parameters has no
/// `/sys/module` entry, so absence alone proves nothing without the builtin list.
pub fn module_present(name: &str) -> Option<bool> {
    if std::path::Path::new("/sys/module").join(name).exists() {
        return Some(true);
    }
    let builtin = std::fs::read_to_string(format!("/lib/modules/{}/modules.builtin", release())).ok()?;
    let file = format!("/{name}.ko");
    Some(
        builtin
            .lines()
            .any(|l| l.ends_with(&file) || l.ends_with(&format!("{file}.xz")) || l.ends_with(&format!("{file}.zst"))),
    )
}

/// Kernel monotonic time, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nsfs_names_parse() {
        assert_eq!(nsfs_inode("net:[4026531840]"), Some(4026531840));
        assert_eq!(nsfs_inode("mnt:[4026531840]"), None);
        assert_eq!(nsfs_inode("/dev/null"), None);
    }

    #[test]
    fn module_presence_is_proved_or_unknown_never_guessed() {
        // `kernel` has parameters, so every kernel lists it under /sys/module.
        assert_eq!(module_present("kernel"), Some(true));
        assert_ne!(module_present("d8_no_such_module"), Some(true));
    }

    #[test]
    fn parses_kernel_versions() {
        assert_eq!(parse_version("6.18.44-fc-v669"), Some((6, 18)));
        assert_eq!(parse_version("6.1.0-37-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn picks_address_layouts() {
        let new = Format::parse(
            "t",
            "field:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\nfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;",
        );
        assert_eq!(addr_layout(&new).kind, layout::SOCKADDR);
        let old = Format::parse(
            "t",
            "field:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;\nfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;\nfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;\nfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;",
        );
        let l = addr_layout(&old);
        assert_eq!((l.kind, l.sport, l.saddr), (layout::SEPARATE, 16, 22));
        assert_eq!((l.saddr_v6, l.daddr_v6), (NONE, NONE), "no IPv6 fields, none used");
        // sock:inet_sock_set_state (every kernel since 4.16): IPv6 addresses in their own arrays.
        let state = Format::parse(
            "sock:inet_sock_set_state",
            "field:__u16 sport;	offset:24;	size:2;	signed:0;
field:__u16 dport;	offset:26;	size:2;	signed:0;
             field:__u16 family;	offset:28;	size:2;	signed:0;
field:__u8 saddr[4];	offset:32;	size:4;	signed:0;
             field:__u8 daddr[4];	offset:36;	size:4;	signed:0;
field:__u8 saddr_v6[16];	offset:40;	size:16;	signed:0;
             field:__u8 daddr_v6[16];	offset:56;	size:16;	signed:0;",
        );
        let l = addr_layout(&state);
        assert_eq!(
            (l.kind, l.family, l.saddr_v6, l.daddr_v6),
            (layout::SEPARATE, 28, 40, 56)
        );
    }

    #[test]
    fn running_kernel_offsets_resolve() {
        // Fails without BTF rather than passing unseen: every kernel the tests run on has it.
        let btf = Btf::from_sys().unwrap_or_else(|e| panic!("needs the kernel's BTF: {e}"));
        let mut config = Config::default();
        struct_offsets(&btf, &mut config).unwrap();
        assert!(config.ct_tuple_reply > config.ct_tuple_orig);
        assert!(!DropReasons::from_btf(&btf).is_empty());
        assert_eq!(
            DropReasons::from_btf(&btf).name(u32::MAX - 1),
            format!("REASON_{}", u32::MAX - 1)
        );
    }
}
