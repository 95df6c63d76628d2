//! `cargo xtask setup`: everything a fresh Debian machine lacks to build and test d8-trace.
//!
//! - Debian packages: the tools d8-trace calls on a node (iptables, nftables, conntrack, ipvsadm,
//!   iproute2, bpftool, ipset) and what the tests and VM need (iperf3, qemu, busybox-static).
//! - The nightly toolchain's `rust-src`: the kernel programs are built with `-Z build-std=core`.
//! - `bpf-linker`, built against the nightly's own LLVM (no system LLVM of the right version is
//!   packaged): a folder whose `lib/libLLVM.so` links to the nightly's `libLLVM.so.*`, named by
//!   `LLVM_PREFIX`. It must outlive the build (the linker's rpath points there), so it lives in
//!   `~/.local/share/d8-trace/llvm`.
//!
//! Each step checks first and does nothing when its result is already there.

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
    let missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(_, probe)| !Path::new(probe).exists())
        .map(|(pkg, _)| *pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if check {
        bail!("missing Debian packages: {}", missing.join(" "));
    }
    step(&format!("installing {}", missing.join(" ")));
    if !status(Command::new("apt-get").args(["update", "-qq"]))? {
        bail!("apt-get update failed");
    }
    let ok = status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if !ok {
        bail!("apt-get install {} failed", missing.join(" "));
    }
    Ok(())
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
