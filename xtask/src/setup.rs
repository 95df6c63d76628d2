//! `cargo xtask setup`: everything a fresh Debian machine lacks to build and test d8-trace.
//!
//! - Debian packages: the tools d8-trace calls on a node (iptables, nftables, conntrack, ipvsadm,
//!   iproute2, bpftool, ipset) and what the tests, the VM and the benchmark need (iperf3, tshark,
//!   tcpdump, perf, qemu, busybox-static).
//! - The nightly toolchain's `rust-src`: the kernel programs are built with `-Z build-std=core`.
//! - `bpf-linker`, built against the nightly's own LLVM (no system LLVM of the right version is
//!   packaged): a folder whose `lib/libLLVM.so` links to the nightly's `libLLVM.so.*`, named by
//!   `LLVM_PREFIX`. It must outlive the build (the linker's rpath points there), so it lives in
//!   `~/.local/share/d8-trace/llvm`.
//!
//! Each step checks first and does nothing when its result is already there. Packages are
//! installed with `apt-get install --no-install-recommends --no-remove`, after a simulation: set-up
//! never removes what the machine has installed (a fresh image's newer `qemu-utils` once went
//! when Debian's `qemu-system-x86` came in). A tool already present anywhere on the system paths
//! is used as it is; a missing package from the same source as an installed one is asked for in
//! the installed version when apt has it (from the release's backports, in a private list, when
//! the installed one came from there); otherwise set-up stops, changes nothing, and says which
//! packages would have been removed.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

/// Debian packages, by the command that shows each is there.
const PACKAGES: &[(&str, &str)] = &[
    ("iptables", "/usr/sbin/iptables"),
    ("nftables", "/usr/sbin/nft"),
    ("conntrack", "/usr/sbin/conntrack"),
    ("ipvsadm", "/usr/sbin/ipvsadm"),
    // kube-proxy's IPVS mode keeps its address sets in ipsets (the VM's IPVS lab builds them).
    ("ipset", "/usr/sbin/ipset"),
    ("iproute2", "/usr/sbin/ip"),
    ("bpftool", "/usr/sbin/bpftool"),
    ("iperf3", "/usr/bin/iperf3"),
    // The benchmark's short-connection rounds with tcpdump capturing instead of d8-trace.
    ("tcpdump", "/usr/bin/tcpdump"),
    // The benchmark's profile section samples the whole machine with `perf record`.
    ("linux-perf", "/usr/bin/perf"),
    // The `--pcap` tests read d8-trace's captures back with tshark, and capinfos (from
    // wireshark-common, which tshark depends on) for the section header.
    ("tshark", "/usr/bin/tshark"),
    ("qemu-system-x86", "/usr/bin/qemu-system-x86_64"),
    ("busybox-static", "/bin/busybox"),
    ("kmod", "/usr/sbin/depmod"),
    ("procps", "/usr/sbin/sysctl"),
];

/// The bpf-linker release the kernel programs are built with.
const BPF_LINKER_VERSION: &str = "0.13.0";

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Only check; exit non-zero if something is missing.
    #[arg(long)]
    pub check: bool,
}

fn status(cmd: &mut Command) -> anyhow::Result<bool> {
    Ok(cmd.status().with_context(|| format!("running {cmd:?}"))?.success())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn cargo_bin(name: &str) -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home().join(".cargo"))
        .join("bin")
        .join(name)
}

fn step(what: &str) {
    eprintln!("xtask setup: {what}");
}

fn apt_packages(check: bool) -> anyhow::Result<()> {
    // A tool found anywhere on the system paths counts (a newer qemu built into /usr/local, or
    // installed from another repository, is used as it is).
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, probe)| {
            let name = Path::new(probe).file_name().and_then(|n| n.to_str()).unwrap_or(probe);
            !Path::new(probe).exists() && crate::vm::which(name).is_none()
        })
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if check {
        bail!("missing Debian packages: {}", missing.join(" "));
    }
    step(&format!("installing {} (never removing a package)", missing.join(" ")));
    if !status(Command::new("apt-get").args(["update", "-qq"]))? {
        bail!("apt-get update failed");
    }
    for plan in install_request(&missing)? {
        let ok = status(
            Command::new("apt-get")
                .args(&plan.apt_options)
                .args(["install", "-y", "-qq", "--no-install-recommends", "--no-remove"])
                .args(&plan.packages)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
        if !ok {
            bail!("apt-get install --no-remove {} failed", plan.packages.join(" "));
        }
    }
    Ok(())
}

/// One `apt-get install`: the packages (some pinned to a version) and the options that name the
/// sources they come from (empty: the machine's own).
#[derive(Debug, Default)]
struct InstallPlan {
    packages: Vec<String>,
    apt_options: Vec<String>,
}

/// The `apt-get install` runs for `missing`, chosen so that nothing already installed is
/// removed. apt is asked first (`-s`, a simulation); when its plan removes a package (a fresh
/// image's newer `qemu-utils`, say, which Debian's `qemu-system-x86` of another version breaks), a
/// missing package from the same source as an installed one is pinned to the installed version
/// when apt has that version (`qemu-system-x86=<qemu-utils' version>`). When the installed version
/// came from the release's backports (`~bpo12+1`) and the machine's sources lack them, those
/// packages are installed in a second run from `<codename>-backports`, added in a private list
/// (the machine's own sources and package lists stay as they are; the other packages still come
/// from the machine's sources). If a plan still removes something, nothing is installed and the
/// error says what and how to go on.
fn install_request(missing: &[&str]) -> anyhow::Result<Vec<InstallPlan>> {
    let names: Vec<String> = missing.iter().map(|p| p.to_string()).collect();
    let plain = InstallPlan {
        packages: names.clone(),
        apt_options: Vec::new(),
    };
    let mut removed = simulate_removals(&plain)?;
    if removed.is_empty() {
        return Ok(vec![plain]);
    }
    step(&format!(
        "installing {} as apt proposes would remove {}: looking for versions that match the installed packages",
        missing.join(" "),
        removed.join(" ")
    ));
    let installed = installed_by_source()?;
    let pinned = InstallPlan {
        packages: pin_to_installed(&names, &installed, &[]),
        apt_options: Vec::new(),
    };
    let pinned_removes = simulate_removals(&pinned)?;
    if pinned_removes.is_empty() {
        step(&format!(
            "installing {} (matching the installed versions)",
            pinned.packages.join(" ")
        ));
        return Ok(vec![pinned]);
    }
    removed = pinned_removes;
    if installed.iter().any(|(_, v)| v.contains("~bpo")) {
        let (codename, list_options) = backports_options()?;
        step(&format!(
            "the installed versions come from {codename}-backports: looking there as well"
        ));
        if !status(Command::new("apt-get").args(&list_options).args(["update", "-qq"]))? {
            bail!("apt-get update with {codename}-backports failed");
        }
        let (from_backports, rest): (Vec<String>, Vec<String>) = pin_to_installed(&names, &installed, &list_options)
            .into_iter()
            .partition(|request| request.contains("~bpo"));
        let rest = InstallPlan {
            packages: rest,
            apt_options: Vec::new(),
        };
        // `-t`: the pinned package's own dependencies (`qemu-system-common` of the same version)
        // come from backports too; the machine's sources stay the default for everything else.
        let mut backports_install = list_options;
        backports_install.extend(["-t".to_string(), format!("{codename}-backports")]);
        let from_backports = InstallPlan {
            packages: from_backports,
            apt_options: backports_install,
        };
        let plans: Vec<InstallPlan> = [rest, from_backports]
            .into_iter()
            .filter(|p| !p.packages.is_empty())
            .collect();
        removed = Vec::new();
        for plan in &plans {
            removed.extend(simulate_removals(plan)?);
        }
        if removed.is_empty() {
            let all: Vec<&str> = plans.iter().flat_map(|p| &p.packages).map(String::as_str).collect();
            step(&format!(
                "installing {} (matching the installed versions)",
                all.join(" ")
            ));
            return Ok(plans);
        }
    }
    bail!(
        "installing {} would remove {}, which this machine has installed; nothing was changed. \
         Install the missing packages in versions that fit the installed ones (or put the tools on \
         PATH, e.g. a qemu-system-x86_64 in /usr/local/bin), then run `cargo xtask setup` again",
        missing.join(" "),
        removed.join(" ")
    )
}

/// Each of `names`, pinned to the installed version of a package of the same source where apt
/// (with `apt_options`' sources) has that version, else as it is.
fn pin_to_installed(names: &[String], installed: &[(String, String)], apt_options: &[String]) -> Vec<String> {
    names
        .iter()
        .map(|name| {
            let Some(source) = source_of(name, apt_options) else {
                return name.clone();
            };
            // The installed packages of that source can carry different versions (a binNMU's
            // `+b3` on the architecture-specific ones): the first apt can install wins.
            let available = available_versions(name, apt_options);
            match installed.iter().find(|(s, v)| *s == source && available.contains(v)) {
                Some((_, version)) => format!("{name}={version}"),
                None => name.clone(),
            }
        })
        .collect()
}

/// apt options adding `<codename>-backports` to the machine's sources, with a package-list
/// folder of its own: the machine's sources.list.d is still read, its lists are not touched.
fn backports_options() -> anyhow::Result<(String, Vec<String>)> {
    let os_release = std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_string())
        .filter(|c| !c.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME")?;
    let dir = std::env::temp_dir().join("d8-trace-apt-backports");
    std::fs::create_dir_all(dir.join("lists/partial")).with_context(|| format!("creating {}", dir.display()))?;
    let list = dir.join("sources.list");
    std::fs::write(
        &list,
        format!("deb http://deb.debian.org/debian {codename}-backports main\n"),
    )
    .with_context(|| format!("writing {}", list.display()))?;
    let options = vec![
        "-o".into(),
        format!("Dir::Etc::SourceList={}", list.display()),
        "-o".into(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
    ];
    Ok((codename, options))
}

/// Packages `apt-get install -s` would remove (`Remv NAME [...]` lines).
fn simulate_removals(plan: &InstallPlan) -> anyhow::Result<Vec<String>> {
    let out = Command::new("apt-get")
        .args(&plan.apt_options)
        .args(["install", "-s", "-qq", "--no-install-recommends"])
        .args(&plan.packages)
        .output()
        .context("running apt-get install -s")?;
    if !out.status.success() {
        bail!(
            "apt-get install -s {} failed: {}",
            plan.packages.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("Remv "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect())
}

/// Installed packages' source package and version (`qemu` and `1:9.2.0+ds-1` for a qemu-utils).
fn installed_by_source() -> anyhow::Result<Vec<(String, String)>> {
    let text =
        output(Command::new("dpkg-query").args(["-W", "-f", "${db:Status-Abbrev} ${source:Package} ${Version}\n"]))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some("ii")).then_some(())?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect())
}

/// The source package of a package apt knows (`apt-cache show`'s `Source:`, else its own name).
fn source_of(package: &str, apt_options: &[String]) -> Option<String> {
    let text = output(
        Command::new("apt-cache")
            .args(apt_options)
            .args(["show", "--no-all-versions", package]),
    )
    .ok()?;
    if !text.lines().any(|l| l.starts_with("Package:")) {
        return None;
    }
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("Source: "))
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or(package)
            .to_string(),
    )
}

/// Every version of `package` apt can install.
fn available_versions(package: &str, apt_options: &[String]) -> Vec<String> {
    output(Command::new("apt-cache").args(apt_options).args(["madison", package]))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(|v| v.trim().to_string())
        .collect()
}

fn nightly_rust_src(check: bool) -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        if check {
            bail!("the nightly toolchain is not installed");
        }
        step("installing the nightly toolchain with rust-src");
        if !status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))? {
            bail!("rustup toolchain install nightly failed");
        }
        return Ok(());
    }
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    if check {
        bail!("the nightly toolchain has no rust-src");
    }
    step("adding rust-src to the nightly toolchain");
    if !status(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))? {
        bail!("rustup component add rust-src --toolchain nightly failed");
    }
    Ok(())
}

/// The nightly's own libLLVM, e.g. `.../lib/libLLVM.so.22.1-rust-1.97.0-nightly`.
fn nightly_libllvm() -> anyhow::Result<PathBuf> {
    let sysroot = output(Command::new("rustup").args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let found = std::fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so."))
        });
    found.with_context(|| {
        format!(
            "no libLLVM.so.* in {} (the nightly toolchain is incomplete)",
            lib.display()
        )
    })
}

fn bpf_linker_works() -> bool {
    Command::new("rustup")
        .args(["run", "nightly", "bpf-linker", "--version"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(BPF_LINKER_VERSION))
}

fn bpf_linker(check: bool) -> anyhow::Result<()> {
    if bpf_linker_works() {
        return Ok(());
    }
    if check {
        bail!("bpf-linker {BPF_LINKER_VERSION} is not installed (or cannot find its LLVM)");
    }
    let libllvm = nightly_libllvm()?;
    let prefix = home().join(".local/share/d8-trace/llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let link = prefix.join("lib/libLLVM.so");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {} to {}", link.display(), libllvm.display()))?;
    step(&format!(
        "building bpf-linker {BPF_LINKER_VERSION} against {} (a few minutes, once)",
        libllvm.display()
    ));
    let ok = status(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
                "llvm-22",
                "--force",
            ])
            .env("LLVM_PREFIX", &prefix)
            // The workspace's own config must not leak into the install build.
            .current_dir(home()),
    )?;
    if !ok || !bpf_linker_works() {
        bail!(
            "building bpf-linker failed; see the cargo output above (it needs LLVM_PREFIX={})",
            prefix.display()
        );
    }
    let _ = cargo_bin("bpf-linker");
    Ok(())
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    apt_packages(opts.check)?;
    nightly_rust_src(opts.check)?;
    bpf_linker(opts.check)?;
    step("everything is in place");
    Ok(())
}
