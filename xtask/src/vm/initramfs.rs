//! Assembling the guest's root file system (an initramfs).
//!
//! The guest mirrors a merged-/usr Debian layout (`/bin`, `/sbin`, `/lib`, `/lib64` are symlinks
//! into `/usr`), so host binaries and their shared libraries keep working at the paths `ldd` and
//! their `PT_INTERP` name. Every host path is therefore stored under its canonical directory
//! (symlinked directories resolved) and symlinks on the way to a file are reproduced as symlinks.

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::cpio::{Archive, Entry};
use super::kernel::{Kernel, ensure_tool};

/// Host tools the end-to-end tests call, with the Debian package that provides each.
/// Missing ones are reported, not fatal: a payload that does not need them still runs.
pub const TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("tc", "iproute2"),
    ("ss", "iproute2"),
    ("bridge", "iproute2"),
    ("iptables", "iptables"),
    ("iptables-save", "iptables"),
    ("iptables-restore", "iptables"),
    ("ip6tables", "iptables"),
    ("ip6tables-save", "iptables"),
    ("ip6tables-restore", "iptables"),
    ("nft", "nftables"),
    ("conntrack", "conntrack"),
    ("ipvsadm", "ipvsadm"),
    ("bpftool", "bpftool"),
    ("ipset", "ipset"),
    // Debian's busybox-static prefers its applets to PATH (FEATURE_SH_STANDALONE/PREFER_APPLETS):
    // its sh would run busybox `ip` even with iproute2's on PATH, and its env/timeout/xargs/nsenter
    // would exec applets too. So /bin/sh is the host's dash and those exec wrappers are the host's.
    ("dash", "dash"),
    ("bash", "bash"),
    ("env", "coreutils"),
    ("timeout", "coreutils"),
    ("nohup", "coreutils"),
    ("xargs", "findutils"),
    ("nsenter", "util-linux"),
    ("unshare", "util-linux"),
    ("setsid", "util-linux"),
    ("chroot", "coreutils"),
    // The lab sets `-q -w a=1 b=1` style sysctls; procps' is the reference implementation.
    ("sysctl", "procps"),
];

/// Tools only copied when the host has them (not in the required package list).
const OPTIONAL_TOOLS: &[&str] = &["ipset"];

/// Host directories of plugins the tools load at run time (`dlopen`, invisible to `ldd`).
const PLUGIN_DIRS: &[&str] = &["/usr/lib/x86_64-linux-gnu/xtables"];

/// Small host data files the tools read (protocol/service names, iproute2's tables).
const DATA_FILES: &[&str] = &[
    "/etc/protocols",
    "/etc/services",
    "/etc/ethertypes",
    "/etc/iproute2",
    "/etc/nftables.conf",
];

/// Module trees copied into the guest (the kernel's whole networking stack, a few MB) ...
const MODULE_DIRS: &[&str] = &[
    "kernel/net/netfilter/",
    "kernel/net/ipv4/",
    "kernel/net/ipv6/",
    "kernel/net/sched/",
    "kernel/net/bridge/",
    "kernel/net/8021q/",
    "kernel/net/802/",
    "kernel/net/llc/",
    "kernel/net/core/",
    "kernel/net/packet/",
    "kernel/net/sctp/",
    "kernel/net/xfrm/",
    "kernel/net/key/",
    "kernel/net/wireguard/",
    "kernel/lib/",
    "kernel/crypto/",
];
/// ... and single virtual network drivers from `kernel/drivers/net/` (physical NIC drivers would
/// only add size).
const NET_DRIVERS: &[&str] = &[
    "veth",
    "dummy",
    "macvlan",
    "ipvlan",
    "vxlan",
    "geneve",
    "tun",
    "bonding",
    "ifb",
    "nlmon",
    "wireguard",
    "udp_tunnel",
    "ip6_udp_tunnel",
    "macvtap",
    "tap",
];

/// Modules loaded by init before the command runs: what kube-proxy (iptables-nft, legacy iptables
/// and IPVS mode), conntrack tools and the TC hooks need. Everything else in the copied trees loads
/// on demand (the kernel calls /sbin/modprobe, which is busybox's).
pub const BOOT_MODULES: &[&str] = &[
    "nf_conntrack",
    "nf_nat",
    "nf_conntrack_netlink",
    "nf_tables",
    "nft_chain_nat",
    "nft_ct",
    "nft_nat",
    "nft_masq",
    "nft_compat",
    "nft_reject_inet",
    "nft_fib_inet",
    "nfnetlink_log",
    "nfnetlink_queue",
    "ip_tables",
    "iptable_filter",
    "iptable_nat",
    "iptable_mangle",
    "iptable_raw",
    "ip6_tables",
    "ip6table_filter",
    "ip6table_nat",
    "ip6table_mangle",
    "xt_conntrack",
    "xt_MASQUERADE",
    "xt_addrtype",
    "xt_comment",
    "xt_mark",
    "xt_multiport",
    "xt_nat",
    "xt_statistic",
    "xt_tcpudp",
    "xt_physdev",
    "xt_set",
    "xt_ipvs",
    "ip_set",
    "ip_set_hash_ip",
    "ip_set_hash_ipport",
    "ip_set_hash_ipportip",
    "ip_set_hash_ipportnet",
    "ip_set_hash_net",
    "ip_set_bitmap_port",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "ip_vs_lc",
    "sch_ingress",
    "cls_bpf",
    "act_bpf",
    "veth",
    "dummy",
    "bridge",
    "br_netfilter",
];

/// A file the caller puts into the guest (`--add HOST[:GUEST]`).
#[derive(Debug, Clone)]
pub struct Payload {
    pub host: PathBuf,
    pub guest: String,
}

impl Payload {
    /// `HOST[:GUEST]`; without GUEST a file lands in `/bin/<file name>` (on PATH), a directory in
    /// `/<dir name>`.
    pub fn parse(spec: &str) -> Result<Self> {
        let (host, guest) = match spec.split_once(':') {
            Some((h, g)) => (PathBuf::from(h), Some(g.to_string())),
            None => (PathBuf::from(spec), None),
        };
        let meta = fs::metadata(&host).with_context(|| format!("--add {spec}: {}", host.display()))?;
        let name = host
            .file_name()
            .with_context(|| format!("--add {spec}: no file name"))?
            .to_string_lossy()
            .into_owned();
        let guest = match guest {
            Some(g) if g.starts_with('/') => g,
            Some(g) => bail!("--add {spec}: the guest path {g} must be absolute"),
            None if meta.is_dir() => format!("/{name}"),
            None => format!("/bin/{name}"),
        };
        Ok(Payload { host, guest })
    }
}

/// What went into the guest, for the log and the docs.
#[derive(Debug, Default)]
pub struct Summary {
    pub tools: Vec<String>,
    pub missing_tools: Vec<String>,
    pub modules: usize,
    pub entries: usize,
    pub bytes: u64,
}

pub struct Spec<'a> {
    pub kernel: &'a Kernel,
    pub payload: &'a [Payload],
    pub command: &'a [String],
    pub env: &'a [(String, String)],
    pub boot_modules: &'a [String],
}

/// Builds the initramfs into `out`.
pub fn build(spec: &Spec, out: &Path) -> Result<Summary> {
    let mut b = Builder {
        archive: Archive::new(),
        elves: BTreeSet::new(),
        seen: HashSet::new(),
        search: super::elf::search_dirs(),
    };
    let mut summary = Summary::default();
    b.skeleton();
    b.busybox()?;

    // Host tools; `which` over the standard directories, whatever PATH the caller has.
    let mut tool_names = HashSet::new();
    for (tool, package) in TOOLS {
        match super::which(tool) {
            Some(p) => {
                b.add_host_path(&p)?;
                // /usr/sbin comes first on the guest's PATH: make sure the tool's name there is the
                // host tool and not a busybox applet of the same name (busybox has `ip`, `tc`).
                let canon = fs::canonicalize(p.parent().unwrap())?.join(tool);
                let guest = format!("/{}", normalize(&canon.to_string_lossy()));
                if guest != format!("/usr/sbin/{tool}") {
                    b.archive
                        .insert(&format!("usr/sbin/{tool}"), Entry::Symlink { target: guest });
                }
                tool_names.insert(tool.to_string());
                summary.tools.push(tool.to_string());
            }
            None if OPTIONAL_TOOLS.contains(tool) => {}
            None => summary.missing_tools.push(format!("{tool} (Debian package {package})")),
        }
    }
    if b.archive.contains("usr/bin/dash") {
        b.archive.insert("usr/bin/sh", Entry::Symlink { target: "dash".into() });
    } else {
        eprintln!(
            "d8-vm: warning: no dash on the host; /bin/sh is busybox's, which runs its own `ip`, `tc`, ... before PATH"
        );
    }
    for dir in PLUGIN_DIRS {
        if Path::new(dir).is_dir() {
            b.add_host_tree(Path::new(dir), None)?;
        }
    }
    for f in DATA_FILES {
        let p = Path::new(f);
        if p.is_dir() {
            b.add_host_tree(p, None)?;
        } else if p.exists() {
            b.add_host_path(p)?;
        }
    }

    // The payload; dynamically linked binaries get their libraries like the tools.
    for p in spec.payload {
        let guest = normalize(&p.guest);
        if fs::metadata(&p.host)?.is_dir() {
            b.add_host_tree(&p.host, Some(&guest))?;
        } else {
            b.add_host_file_as(&p.host, &guest)?;
        }
    }

    b.shared_libraries()?;
    summary.modules = b.modules(spec.kernel)?;
    b.archive.insert(
        "init",
        Entry::Data {
            data: init_script(spec).into_bytes(),
            mode: 0o755,
        },
    );

    summary.entries = b.archive.len();
    summary.bytes = b.archive.write_to(out)?;
    Ok(summary)
}

struct Builder {
    archive: Archive,
    /// Host ELF files copied so far, whose shared libraries must be added.
    elves: BTreeSet<PathBuf>,
    seen: HashSet<PathBuf>,
    /// The dynamic loader's search directories.
    search: Vec<PathBuf>,
}

/// Moves a guest path onto merged /usr: `/bin/x` -> `usr/bin/x`, `/lib64/x` -> `usr/lib64/x`.
/// Writing through the top-level symlinks would also work in the kernel's unpacker, but entries
/// must not collide with the symlinks themselves.
fn normalize(path: &str) -> String {
    let p = path.trim_start_matches('/');
    for top in ["bin", "sbin", "lib", "lib64"] {
        if p == top {
            return format!("usr/{top}");
        }
        if let Some(rest) = p.strip_prefix(top).and_then(|r| r.strip_prefix('/')) {
            return format!("usr/{top}/{rest}");
        }
    }
    p.to_string()
}

fn is_elf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"\x7fELF"
}

impl Builder {
    fn skeleton(&mut self) {
        let a = &mut self.archive;
        for d in [
            "usr/bin",
            "usr/sbin",
            "usr/lib",
            "usr/lib64",
            "etc",
            "root",
            "tmp",
            "run",
            "proc",
            "sys",
            "dev",
            "mnt",
            "var",
            "boot",
        ] {
            a.mkdir(d);
        }
        for top in ["bin", "sbin", "lib", "lib64"] {
            a.insert(
                top,
                Entry::Symlink {
                    target: format!("usr/{top}"),
                },
            );
        }
        a.insert(
            "var/run",
            Entry::Symlink {
                target: "../run".into(),
            },
        );
        a.insert("tmp", Entry::Dir { mode: 0o1777 });
        a.insert("root", Entry::Dir { mode: 0o700 });
        // The kernel opens /dev/console for init's stdio before init can mount devtmpfs.
        a.insert(
            "dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        a.insert(
            "dev/null",
            Entry::CharDev {
                mode: 0o666,
                major: 1,
                minor: 3,
            },
        );
        let etc: &[(&str, &str)] = &[
            (
                "etc/passwd",
                "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
            ),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
            (
                "etc/hosts",
                "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n",
            ),
            ("etc/hostname", "d8-vm\n"),
            // Loading `dummy` would otherwise create a dummy0 nobody asked for.
            ("etc/modprobe.d/d8-vm.conf", "options dummy numdummies=0\n"),
            (
                "etc/nsswitch.conf",
                "passwd: files\ngroup: files\nhosts: files\nprotocols: files\nservices: files\n",
            ),
        ];
        for (p, c) in etc {
            a.insert(
                p,
                Entry::Data {
                    data: c.as_bytes().to_vec(),
                    mode: 0o644,
                },
            );
        }
    }

    /// busybox-static provides the shell, mount, modprobe, poweroff and the usual utilities.
    fn busybox(&mut self) -> Result<()> {
        let bb = Path::new("/bin/busybox");
        if !bb.exists() {
            ensure_tool("busybox", "busybox-static")?;
        }
        let out = Command::new("ldd").arg(bb).output();
        if let Ok(o) = out
            && o.status.success()
            && String::from_utf8_lossy(&o.stdout).contains("=>")
        {
            bail!(
                "{} is dynamically linked (Debian's `busybox` package); the guest needs the static \
                     one: apt-get install -y busybox-static",
                bb.display()
            );
        }
        self.archive.insert(
            "usr/bin/busybox",
            Entry::HostFile {
                src: bb.to_path_buf(),
                mode: 0o755,
            },
        );
        let list = Command::new(bb)
            .arg("--list-full")
            .output()
            .context("busybox --list-full")?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let guest = normalize(applet.trim());
            if guest.is_empty() || guest == "usr/bin/busybox" {
                continue;
            }
            self.archive.insert(
                &guest,
                Entry::Symlink {
                    target: "/usr/bin/busybox".into(),
                },
            );
        }
        // The kernel's request_module runs CONFIG_MODPROBE_PATH, /sbin/modprobe.
        self.archive.insert(
            "usr/sbin/modprobe",
            Entry::Symlink {
                target: "/usr/bin/busybox".into(),
            },
        );
        Ok(())
    }

    /// Copies a host path at the same place in the guest, reproducing symlinks on the way.
    fn add_host_path(&mut self, path: &Path) -> Result<()> {
        let mut path = path.to_path_buf();
        // Symlink chains are short; the bound only guards against loops.
        for _ in 0..40 {
            let parent = path.parent().context("no parent")?;
            let parent = fs::canonicalize(parent).with_context(|| format!("resolving {}", parent.display()))?;
            let canon = parent.join(path.file_name().context("no file name")?);
            if !self.seen.insert(canon.clone()) {
                return Ok(());
            }
            let guest = normalize(&canon.to_string_lossy());
            let meta = fs::symlink_metadata(&canon).with_context(|| format!("{}", canon.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&canon)?;
                self.archive.insert(
                    &guest,
                    Entry::Symlink {
                        target: target.to_string_lossy().into_owned(),
                    },
                );
                path = parent.join(target);
                continue;
            }
            if meta.is_dir() {
                self.archive.mkdir(&guest);
                return Ok(());
            }
            self.archive.insert(
                &guest,
                Entry::HostFile {
                    src: canon.clone(),
                    mode: meta.permissions().mode(),
                },
            );
            if is_elf(&canon) {
                self.elves.insert(canon);
            }
            return Ok(());
        }
        bail!("too many symlinks at {}", path.display())
    }

    /// Copies a host file's contents (symlinks followed) to `guest`.
    fn add_host_file_as(&mut self, host: &Path, guest: &str) -> Result<()> {
        let real = fs::canonicalize(host).with_context(|| format!("resolving {}", host.display()))?;
        let mode = fs::metadata(&real)?.permissions().mode();
        self.archive.insert(
            guest,
            Entry::HostFile {
                src: real.clone(),
                mode,
            },
        );
        if is_elf(&real) {
            self.elves.insert(real);
        }
        Ok(())
    }

    /// A host directory, recursively: at its own path, or under `guest` for the payload.
    fn add_host_tree(&mut self, dir: &Path, guest: Option<&str>) -> Result<()> {
        for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let e = e?;
            let p = e.path();
            let ft = e.file_type()?;
            match guest {
                None if ft.is_dir() => self.add_host_tree(&p, None)?,
                None => self.add_host_path(&p)?,
                Some(g) => {
                    let g = format!("{g}/{}", e.file_name().to_string_lossy());
                    if fs::metadata(&p).map(|m| m.is_dir()).unwrap_or(false) {
                        self.archive.mkdir(&g);
                        self.add_host_tree(&p, Some(&g))?;
                    } else if p.exists() {
                        self.add_host_file_as(&p, &g)?;
                    }
                }
            }
        }
        if let Some(g) = guest {
            self.archive.mkdir(g);
        }
        Ok(())
    }

    /// Adds the shared libraries of every copied ELF file, theirs in turn, and the dynamic loader.
    fn shared_libraries(&mut self) -> Result<()> {
        let mut done = BTreeSet::new();
        loop {
            let todo: Vec<PathBuf> = self.elves.difference(&done).cloned().collect();
            if todo.is_empty() {
                return Ok(());
            }
            done.extend(todo.iter().cloned());
            let mut for_ldd = Vec::new();
            for elf in &todo {
                match super::elf::dynamic(elf, &self.search) {
                    Ok(Some(d)) => {
                        for p in d.interp.iter().chain(d.libs.iter()) {
                            self.add_host_path(p)?;
                        }
                    }
                    _ => for_ldd.push(elf.clone()),
                }
            }
            for chunk in for_ldd.chunks(200) {
                let out = Command::new("ldd").args(chunk).output().context("running ldd")?;
                // Static binaries and non-executable data make ldd complain; their lines carry no
                // paths, so the output is parsed regardless of the exit status.
                for line in String::from_utf8_lossy(&out.stdout).lines() {
                    let line = line.trim();
                    let path = match line.split_once("=>") {
                        Some((_, rhs)) => rhs.trim().split(' ').next().unwrap_or(""),
                        None => line.split(' ').next().unwrap_or(""),
                    };
                    if path.starts_with('/') && !path.ends_with(':') {
                        self.add_host_path(Path::new(path))?;
                    }
                    if line.contains("not found") {
                        eprintln!("d8-vm: warning: ldd: {line}");
                    }
                }
            }
        }
    }

    /// The guest kernel's networking modules (closure over modules.dep) and the module indexes.
    fn modules(&mut self, kernel: &Kernel) -> Result<usize> {
        if let Some(config) = &kernel.config {
            self.archive.insert(
                &format!("boot/config-{}", kernel.release),
                Entry::HostFile {
                    src: config.clone(),
                    mode: 0o644,
                },
            );
        }
        let Some(dir) = &kernel.modules else {
            return Ok(0);
        };
        let guest_dir = format!("usr/lib/modules/{}", kernel.release);
        let dep = fs::read_to_string(dir.join("modules.dep"))
            .with_context(|| format!("reading {}/modules.dep", dir.display()))?;
        let deps: std::collections::HashMap<&str, Vec<&str>> = dep
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(m, d)| (m.trim(), d.split_whitespace().collect()))
            .collect();
        let wanted = |m: &str| {
            MODULE_DIRS.iter().any(|d| m.starts_with(d))
                || m.strip_prefix("kernel/drivers/net/").is_some_and(|rest| {
                    let file = rest.rsplit('/').next().unwrap_or(rest);
                    let name = file.split('.').next().unwrap_or(file);
                    NET_DRIVERS.contains(&name)
                })
        };
        let mut selected: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = deps.keys().copied().filter(|m| wanted(m)).collect();
        while let Some(m) = stack.pop() {
            if selected.insert(m)
                && let Some(d) = deps.get(m)
            {
                stack.extend(d.iter().copied());
            }
        }
        for m in &selected {
            let src = dir.join(m);
            if src.is_file() {
                self.archive
                    .insert(&format!("{guest_dir}/{m}"), Entry::HostFile { src, mode: 0o644 });
            }
        }
        // modules.dep still lists modules we left out; modprobe only fails for those.
        for e in fs::read_dir(dir)?.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with("modules.") && e.path().is_file() {
                self.archive.insert(
                    &format!("{guest_dir}/{name}"),
                    Entry::HostFile {
                        src: e.path(),
                        mode: 0o644,
                    },
                );
            }
        }
        Ok(selected.len())
    }
}

/// Single-quotes a word for sh.
fn sh_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The guest's /init: a busybox sh script. Its last line of interest is the sentinel
/// `d8-vm: exit=N` that the host parses; then it powers the VM off (init must never exit: the
/// kernel would panic).
fn init_script(spec: &Spec) -> String {
    let mut s = String::from(
        r#"#!/bin/sh
# Generated by `cargo xtask vm-test` (xtask/src/vm/initramfs.rs).
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root TERM=dumb
mount -t proc proc /proc
echo "d8-vm: init started uptime=$(cut -d' ' -f1 /proc/uptime)s"
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mkdir -p /run/netns
hostname d8-vm
ip link set lo up
failed=""
"#,
    );
    if !spec.boot_modules.is_empty() {
        let mods: Vec<String> = spec.boot_modules.iter().map(|m| sh_quote(m)).collect();
        s.push_str(&format!(
            "for m in {}; do modprobe \"$m\" 2>/dev/null || failed=\"$failed $m\"; done\n",
            mods.join(" ")
        ));
        s.push_str("[ -n \"$failed\" ] && echo \"d8-vm: modprobe failed:$failed\"\n");
    }
    for (k, v) in spec.env {
        s.push_str(&format!("export {}={}\n", k, sh_quote(v)));
    }
    s.push_str("echo \"d8-vm: ready kernel=$(uname -r) uptime=$(cut -d' ' -f1 /proc/uptime)s modules=$(wc -l < /proc/modules)\"\ncd /\n");
    let cmd: Vec<String> = spec.command.iter().map(|a| sh_quote(a)).collect();
    // stdin from /dev/null: a command reading the console would hang the run.
    s.push_str(&format!("{} < /dev/null\nrc=$?\n", cmd.join(" ")));
    s.push_str("sync\necho \"d8-vm: exit=$rc\"\npoweroff -f\n# poweroff should not return; never let init exit.\nwhile true; do sleep 3600; done\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes_merged_usr() {
        assert_eq!(normalize("/bin/sh"), "usr/bin/sh");
        assert_eq!(
            normalize("/lib64/ld-linux-x86-64.so.2"),
            "usr/lib64/ld-linux-x86-64.so.2"
        );
        assert_eq!(normalize("/usr/bin/ip"), "usr/bin/ip");
        assert_eq!(normalize("/binx/y"), "binx/y");
        assert_eq!(normalize("/etc/passwd"), "etc/passwd");
    }

    #[test]
    fn quoting() {
        assert_eq!(sh_quote("abc"), "abc");
        assert_eq!(sh_quote("a b"), "'a b'");
        assert_eq!(sh_quote("it's"), "'it'\\''s'");
        assert_eq!(sh_quote(""), "''");
    }
}
