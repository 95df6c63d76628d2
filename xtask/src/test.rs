//! `cargo xtask test` and `cargo xtask demo`.
//!
//! `test` runs, in order: setup; the whole workspace's tests on this kernel (unit tests, and the
//! end-to-end tests in `tests/`, which need root and build their own namespace labs); then the
//! VM suite on a Debian 6.1 kernel (`--no-vm` skips it).

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::{setup, vm};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip the kernel-in-VM suite.
    #[arg(long)]
    pub no_vm: bool,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DemoOptions {
    /// Arguments for `d8-trace demo` (after `--`), e.g. `-o json`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `target/` of this workspace, or `$CARGO_TARGET_DIR`.
fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => dir.into(),
        None => std::env::current_dir()?.join("target"),
    })
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options { check: false })?;
    if !is_root() {
        bail!("the end-to-end tests build network namespaces and load BPF programs: run as root");
    }
    // The end-to-end tests run the d8-trace binary: build it and tell them where it is.
    run_cmd(cargo().args(["build", "-p", "d8-userspace", "--bin", "d8-trace"]))?;
    let binary = target_dir()?.join("debug/d8-trace");
    // One test thread: end-to-end tests share the kernel's BPF and netfilter state.
    run_cmd(
        cargo()
            .args(["test", "--workspace", "--exclude", "d8-ebpf", "--no-fail-fast"])
            .env("D8_TRACE_BIN", &binary)
            .args(&opts.cargo_args)
            .args(["--", "--test-threads=1"]),
    )?;
    if !opts.no_vm {
        vm_suite()?;
    }
    Ok(())
}

/// The suite run inside a VM on Debian's 6.1 cloud kernel: the release binary must start there
/// and `doctor` must report what that kernel allows (no netfilter links before 6.4).
fn vm_suite() -> anyhow::Result<()> {
    run_cmd(cargo().args(["build", "--release", "-p", "d8-userspace"]))?;
    let binary = target_dir()?.join("release/d8-trace");
    vm::run(vm::Options {
        kernel: "6.1".into(),
        add: vec![format!("{}:/bin/d8-trace", binary.display())],
        timeout: 600,
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "/bin/d8-trace doctor && /bin/d8-trace doctor --json | grep -q '\"hook_set\"'".into(),
        ],
        ..vm::Options::default()
    })
}

pub fn demo(opts: &DemoOptions) -> anyhow::Result<()> {
    setup::run(&setup::Options { check: false })?;
    run_cmd(cargo().args(["build", "--release", "-p", "d8-userspace"]))?;
    let binary = target_dir()?.join("release/d8-trace");
    run_cmd(Command::new(binary).arg("demo").args(&opts.args))
}
