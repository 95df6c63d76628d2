//! `cargo xtask vm-test`: run a command inside another kernel, under qemu, and return its status.
//!
//! The development machines run 6.18 (netfilter BPF links, no IPVS, no kprobes); production nodes
//! run 6.1 or older. This boots Debian's `linux-image-6.1.*-cloud-amd64-unsigned` kernel (IPVS
//! modules, kprobes, no netfilter links: the TC fallback path) with software emulation and runs the
//! end-to-end suite there.
//!
//! # Usage
//!
//! ```text
//! cargo xtask vm-test [--kernel 5.10|6.1|6.12|running|PATH] [--modules DIR] [--add HOST[:GUEST]]...
//!                     [--env KEY=VALUE]... [--modprobe MODULE]... [--timeout SECS]
//!                     [--memory MIB] [--cpus N] [--accel tcg|kvm] [--append ARGS]
//!                     [--cache-dir DIR] [--keep]
//!                     [-- COMMAND [ARGS]...]
//! ```
//!
//! * `--kernel 6.1` (default), `5.10`, `6.12`: the newest `linux-image-<series>.*-cloud-amd64-unsigned`
//!   of the series' Debian suite (5.10: bullseye, 6.1: bookworm, 6.12: trixie; with their -updates
//!   and -security), asked through a private apt under `<cache>/apt/<suite>/` (`$APT_CONFIG` names
//!   its own configuration, which sets `Dir::Etc::SourceList`, `Dir::Etc::Parts`,
//!   `Dir::State::Lists`, `Dir::Cache` and the preferences to directories there; the machine's apt
//!   state and configuration are neither read nor changed, only its proxy setting is copied), fetched with `apt-get download`, unpacked with `dpkg-deb -x`
//!   and indexed with `depmod -b` once into `<cache>/debian/<package>_<version>/` (about 110 MB).
//!   The private lists are refreshed when older than a week, when they know no such package, or
//!   when the download fails (Debian drops superseded kernels); apt's answer is remembered until the
//!   lists change, so a cached run does not call apt at all (kernel ready in ~0.00 s). Superseded
//!   kernels of the series are deleted. `$D8_VM_DEBIAN_MIRROR` and `$D8_VM_DEBIAN_SECURITY_MIRROR`
//!   replace deb.debian.org.
//!   `--kernel PATH`: a bzImage (release read from its header); `--modules` = its
//!   `lib/modules/<release>` with `modules.dep`, or a root holding it; without modules only
//!   built-in features exist. `--kernel running`: `/boot/vmlinuz-$(uname -r)` with
//!   `/lib/modules/$(uname -r)`; a clear error where /boot has no image (containers, these machines).
//! * `--add HOST[:GUEST]` (repeatable): a file (symlinks followed) or a directory (recursive) put
//!   into the guest; without GUEST a file goes to `/bin/<name>` (on PATH), a directory to `/<name>`.
//!   Dynamically linked ELF files get their shared libraries (DT_NEEDED, `ldd` as fallback), so a
//!   normal `x86_64-unknown-linux-gnu` binary runs as is. Size matters a little: the initramfs is
//!   unpacked by the emulated kernel at roughly 50 MB/s, so a 130 MB debug binary adds ~2.5 s of
//!   boot; a stripped or release binary avoids that.
//! * COMMAND (everything after `--`) runs as an argv, not through a shell; for shell syntax use
//!   `-- sh -c 'ip netns add x && nft list ruleset'` (`sh` is dash). Without a command the guest
//!   prints `uname -a`. Working directory `/`, stdin /dev/null, `RUST_BACKTRACE=1` plus `--env`
//!   variables; stdout and stderr go to the serial console, streamed to this process's stdout line
//!   by line as it arrives (terminal escape sequences removed). The emulated UART carries about
//!   100 KB/s (100 000 short lines in 6 s): fine for test output, slow for debug logs of MBs; write
//!   those to a file and print a summary. (A virtio console was tried: slower, since under
//!   emulation it costs a virtqueue round trip per line-buffered write.)
//! * Result: `Ok(())` when the command exits 0. Otherwise an error; when the command ran, the error
//!   is a [`GuestFailed`] with its status, so `main` can exit with the same code:
//!   `e.downcast_ref::<vm::GuestFailed>().map(|g| g.status)`. A kernel panic, a guest that ends
//!   without the sentinel, or `--timeout` (default 900 s, counted from qemu's start; qemu is then
//!   killed by its PID) are errors with a message saying which and the last console lines.
//! * `--cache-dir` (default `<workspace>/target/vm-cache`, env `D8_VM_CACHE`). The initramfs (35 MB
//!   plus the payload) is written to a fresh directory in the system temp dir, removed at the end
//!   (`--keep` keeps it); directories of interrupted runs are removed by the next run.
//!
//! Timing on the 2-core development machine (loaded by other builds), `-- sh -c 'ip netns add x &&
//! ip link add v0 type veth peer name v1 && nft list ruleset && modprobe ip_vs && ipvsadm -Ln &&
//! bpftool feature probe kernel | head'`: first run 12.9 s (download + unpack + depmod 4.3 s),
//! cached run 7-8 s: initramfs 0.1 s, qemu start to `/init` ~3.5 s, boot modules ~1-2 s, command
//! and power-off < 1 s. `--kernel 6.12` works the same (its modules are xz-compressed: ~4 s to load).
//!
//! ## From `cargo xtask test`
//!
//! Build the e2e tests with `cargo test --no-run --message-format=json -p d8-tests` (and the
//! d8-trace binary if the tests exec it), take the test executable's path from the
//! `compiler-artifact` message whose `profile.test` is true, then:
//!
//! ```ignore
//! vm::run(vm::Options {
//!     add: vec![format!("{}:/bin/d8-e2e", exe.display()), format!("{}:/bin/d8-trace", d8.display())],
//!     env: vec!["D8_IN_VM=1".into()],
//!     command: vec!["/bin/d8-e2e".into(), "--test-threads=1".into()], // tests share the kernel
//!     ..Default::default()
//! })
//! ```
//!
//! or from a shell: `cargo xtask vm-test --add target/debug/d8-trace -- d8-trace doctor`.
//!
//! # The guest
//!
//! * Kernel: by default Debian bookworm's newest 6.1 cloud kernel (6.1.0-56-cloud-amd64 = 6.1.192 in
//!   2026-11), booted with `qemu-system-x86_64 -accel tcg -m 2048 -smp 2 -nographic -no-reboot
//!   -nic none` and `console=ttyS0 panic=-1 noapic quiet` (`-accel kvm` hangs on the development
//!   machines). It has BTF (also for modules), kprobes, fentry, TC/cls_bpf, no netfilter BPF links;
//!   `d8-trace doctor` in it reports exactly that. `/boot/config-<release>` is present.
//! * Root: an initramfs (newc cpio, uncompressed: faster to unpack under emulation than gzip), a
//!   merged-/usr layout in RAM, writable. PID 1 is a shell script (`/init`) that mounts proc,
//!   sysfs, devtmpfs, devpts, tmpfs on /tmp, /run and /dev/shm, tracefs on /sys/kernel/tracing,
//!   debugfs, bpffs on /sys/fs/bpf and cgroup2 on /sys/fs/cgroup; sets up `lo`; loads
//!   [`initramfs::BOOT_MODULES`] (conntrack + netlink, NAT, nf_tables with nft_chain_nat/ct/nat/
//!   masq/compat/reject/fib, iptables and ip6tables filter/nat/mangle/raw tables, the xt_* matches
//!   kube-proxy uses (conntrack, MASQUERADE, addrtype, comment, mark, multiport, nat, statistic,
//!   physdev, set, ipvs), ipset hash/bitmap types, IPVS with rr/wrr/sh/lc, sch_ingress, cls_bpf,
//!   act_bpf, veth, dummy (no dummy0), bridge, br_netfilter: 66 modules loaded) and `--modprobe`
//!   extras; prints `d8-vm: ready kernel=... uptime=... modules=N`; runs the command; prints the
//!   sentinel `d8-vm: exit=N`; powers off. Modules that failed to load are listed on a
//!   `d8-vm: modprobe failed: ...` line (the run goes on).
//! * Modules available: the guest kernel's whole `kernel/net/{netfilter,ipv4,ipv6,sched,bridge,
//!   8021q,core,packet,sctp,xfrm,wireguard,...}`, `kernel/{lib,crypto}`, the virtual NIC drivers
//!   (veth, dummy, macvlan, ipvlan, vxlan, geneve, tun, bonding, ifb, nlmon, wireguard) and all they
//!   depend on (modules.dep): ~500 modules. They load on demand too (the kernel calls
//!   /sbin/modprobe, busybox's; /etc/modprobe.d is honoured).
//! * Tools: the host's `ip`, `tc`, `ss`, `bridge` (iproute2), `iptables`/`ip6tables` with `-save`/
//!   `-restore` (the host's variant: nft on Debian) and the xtables plugins, `nft`, `conntrack`,
//!   `ipvsadm`, `bpftool`, `sysctl` (procps), `ipset` when the host has it, `dash` (= /bin/sh),
//!   `bash`, `env`, `timeout`, `nohup`, `chroot`, `xargs`, `nsenter`, `unshare`, `setsid`, each with
//!   its shared libraries and the dynamic loader; busybox for everything else (mount, modprobe,
//!   ping, nc, wget, awk, grep, ...). Debian's static busybox prefers its own applets over PATH
//!   when it runs commands, which is why the shell and the exec wrappers are the host's.
//!   Networking is only what the command creates (no NIC): namespaces, veth pairs, rules, all
//!   private to the guest.
//! * Not there: 9p/virtiofs (the cloud kernel lacks 9p: results come back only via the console),
//!   a network to the outside, systemd, cargo, System.map.
//!
//! Host needs (Debian packages): qemu-system-x86, busybox-static, kmod (depmod), apt and dpkg, and
//! for the guest's tools iproute2, iptables, nftables, conntrack, ipvsadm, bpftool, procps, dash,
//! bash, coreutils, findutils, util-linux (ipset optional). busybox-static and kmod are installed
//! automatically when missing; other missing tools are listed as a warning and left out.

mod cpio;
mod elf;
pub mod initramfs;
pub mod kernel;
mod qemu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Options of `cargo xtask vm-test`.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Guest kernel: a Debian series (`5.10` from bullseye, `6.1` from bookworm, `6.12` from trixie:
    /// the newest linux-image-<series>.*-cloud-amd64-unsigned, fetched through a private apt),
    /// `running` (/boot/vmlinuz-$(uname -r)), or the path of a bzImage.
    #[arg(long, default_value = "6.1")]
    pub kernel: String,

    /// With `--kernel PATH`: the kernel's modules (`lib/modules/<release>` with modules.dep, or a root
    /// that contains it).
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,

    /// Put a host file or directory into the guest (default GUEST: /bin/<name> for a file, /<name>
    /// for a directory); dynamically linked binaries get their libraries. Repeatable.
    #[arg(long = "add", value_name = "HOST[:GUEST]")]
    pub add: Vec<String>,

    /// Environment variable for the command in the guest. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,

    /// Extra module to load at boot, after the default networking set. Repeatable.
    #[arg(long = "modprobe", value_name = "MODULE")]
    pub modprobe: Vec<String>,

    /// Kill the guest and fail after this many seconds.
    #[arg(long, default_value_t = 900)]
    pub timeout: u64,

    /// Guest memory in MiB.
    #[arg(long, default_value_t = 2048)]
    pub memory: u32,

    /// Guest CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,

    /// qemu accelerator: `tcg` (software; `kvm` hangs on the development machines) or `kvm`.
    #[arg(long, default_value = "tcg", env = "D8_VM_ACCEL")]
    pub accel: String,

    /// Extra kernel command line arguments.
    #[arg(long, value_name = "ARGS")]
    pub append: Option<String>,

    /// Where downloaded kernels are kept (default: <workspace>/target/vm-cache).
    #[arg(long, env = "D8_VM_CACHE", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Keep the generated initramfs (its path is printed) instead of deleting it.
    #[arg(long)]
    pub keep: bool,

    /// Put before each echoed console line (guests running at once tell theirs apart).
    #[arg(skip)]
    pub echo_prefix: String,

    /// Command to run in the guest, as an argv (use `sh -c '...'` for shell syntax).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kernel: "6.1".into(),
            modules: None,
            add: Vec::new(),
            env: Vec::new(),
            modprobe: Vec::new(),
            timeout: 900,
            memory: 2048,
            cpus: 2,
            accel: "tcg".into(),
            append: None,
            cache_dir: None,
            keep: false,
            echo_prefix: String::new(),
            command: Vec::new(),
        }
    }
}

/// The guest command ran and exited with a non-zero status.
#[derive(Debug)]
pub struct GuestFailed {
    pub status: i32,
}

impl std::fmt::Display for GuestFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the command in the VM exited with status {}", self.status)
    }
}

impl std::error::Error for GuestFailed {}

/// Runs `opts.command` in a VM; see the module docs.
pub fn run(opts: Options) -> Result<()> {
    let guest = run_captured(opts)?;
    match guest.status {
        0 => Ok(()),
        status => Err(GuestFailed { status }.into()),
    }
}

/// What a guest run gave: the command's exit status, the console, and timings.
pub struct GuestRun {
    pub status: i32,
    /// The guest kernel's `uname -r`.
    pub release: String,
    pub console: Vec<String>,
    /// From starting qemu to init's ready line.
    pub ready_after: Option<Duration>,
}

/// Runs `opts.command` in a VM (see the module docs) and returns its status and console; a guest
/// that never reported its status (timeout, panic) is an error.
pub fn run_captured(opts: Options) -> Result<GuestRun> {
    let started = Instant::now();
    let cache = match &opts.cache_dir {
        Some(c) => c.clone(),
        None => workspace_root().join("target/vm-cache"),
    };
    std::fs::create_dir_all(&cache).with_context(|| format!("creating the cache {}", cache.display()))?;

    let kernel = kernel::resolve(&opts.kernel, opts.modules.as_deref(), &cache)?;
    eprintln!("d8-vm: kernel {} ({})", kernel.release, kernel.origin);

    let payload = opts
        .add
        .iter()
        .map(|a| initramfs::Payload::parse(a))
        .collect::<Result<Vec<_>>>()?;
    let env = opts
        .env
        .iter()
        .map(|e| {
            let (k, v) = e
                .split_once('=')
                .with_context(|| format!("--env {e}: expected KEY=VALUE"))?;
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                bail!("--env {e}: invalid variable name");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut env_all = vec![("RUST_BACKTRACE".to_string(), "1".to_string())];
    env_all.extend(env);
    let command = if opts.command.is_empty() {
        vec!["uname".into(), "-a".into()]
    } else {
        opts.command.clone()
    };
    let mut boot_modules: Vec<String> = initramfs::BOOT_MODULES.iter().map(|s| s.to_string()).collect();
    if kernel.modules.is_none() {
        eprintln!("d8-vm: no modules for this kernel: only built-in features are available");
        boot_modules.clear();
    }
    boot_modules.extend(opts.modprobe.iter().cloned());

    let tmp = TempDir::new(opts.keep)?;
    let initrd = tmp.path().join("initramfs.cpio");
    let t = Instant::now();
    let summary = initramfs::build(
        &initramfs::Spec {
            kernel: &kernel,
            payload: &payload,
            command: &command,
            env: &env_all,
            boot_modules: &boot_modules,
        },
        &initrd,
    )?;
    eprintln!(
        "d8-vm: initramfs {} ({:.1} MiB, {} entries, {} modules, tools: {}) built in {:.1}s",
        initrd.display(),
        summary.bytes as f64 / (1 << 20) as f64,
        summary.entries,
        summary.modules,
        summary.tools.join(" "),
        t.elapsed().as_secs_f64()
    );
    if !summary.missing_tools.is_empty() {
        eprintln!(
            "d8-vm: warning: not on this host, so not in the guest: {}",
            summary.missing_tools.join(", ")
        );
    }

    let mut append = String::from("console=ttyS0 panic=-1 noapic quiet");
    if let Some(extra) = &opts.append {
        append.push(' ');
        append.push_str(extra);
    }
    let outcome = qemu::boot(&qemu::Boot {
        kernel: &kernel.image,
        initrd: &initrd,
        append: &append,
        memory_mib: opts.memory,
        cpus: opts.cpus,
        timeout: Duration::from_secs(opts.timeout),
        accel: &opts.accel,
        echo_prefix: &opts.echo_prefix,
    })?;
    eprintln!(
        "d8-vm: guest ready after {}, finished after {:.1}s; total {:.1}s",
        outcome
            .ready_after
            .map(|d| format!("{:.1}s", d.as_secs_f64()))
            .unwrap_or_else(|| "?".into()),
        outcome.finished_after.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
    Ok(GuestRun {
        status: outcome.status,
        release: kernel.release,
        console: outcome.console,
        ready_after: outcome.ready_after,
    })
}

/// The workspace root (xtask lives one level below it).
pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Finds a program in the usual system directories (independent of the caller's PATH, which under
/// cargo may lack the sbin directories).
pub(crate) fn which(tool: &str) -> Option<PathBuf> {
    [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]
    .iter()
    .map(|d| Path::new(d).join(tool))
    .find(|p| p.is_file())
}

/// Runs a command, failing with its output when it fails.
pub(crate) fn run_cmd(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A private temporary directory, removed on drop (also on errors and panics).
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(keep: bool) -> Result<Self> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .subsec_nanos();
        let base = std::env::temp_dir();
        // Directories left by runs that were interrupted (Ctrl-C skips destructors): their
        // process is gone. Names are d8-vm-<pid>-<nanos>.
        if let Ok(rd) = std::fs::read_dir(&base) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let pid = name.strip_prefix("d8-vm-").and_then(|r| r.split('-').next());
                if let Some(pid) = pid.filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let path = base.join(format!("d8-vm-{}-{nanos:x}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path, keep })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("d8-vm: kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::{Parser, Subcommand};

    /// The shape main.rs gives it: a subcommand carrying `Options`.
    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(Subcommand)]
    enum Cmd {
        VmTest(super::Options),
    }

    #[test]
    fn parses_as_a_subcommand() {
        let cli = Cli::try_parse_from([
            "xtask",
            "vm-test",
            "--kernel",
            "6.12",
            "--add",
            "a:/opt/a",
            "--add",
            "b",
            "--env",
            "X=1",
            "--timeout",
            "60",
            "--",
            "sh",
            "-c",
            "ip a && exit 3",
        ])
        .unwrap();
        let Cmd::VmTest(o) = cli.cmd;
        assert_eq!(o.kernel, "6.12");
        assert_eq!(o.add, ["a:/opt/a", "b"]);
        assert_eq!(o.env, ["X=1"]);
        assert_eq!(o.timeout, 60);
        assert_eq!(o.command, ["sh", "-c", "ip a && exit 3"]);

        let Cmd::VmTest(o) = Cli::try_parse_from(["xtask", "vm-test"]).unwrap().cmd;
        assert_eq!(o.kernel, "6.1");
        assert!(o.command.is_empty());
    }
}
