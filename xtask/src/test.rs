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
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
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

/// The end-to-end test executable of `tests/` (built already by `cargo test`).
fn e2e_test_binary() -> anyhow::Result<std::path::PathBuf> {
    let out = cargo()
        .args([
            "test",
            "-p",
            "d8-tests",
            "--test",
            "e2e",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "building the end-to-end tests failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "e2e"
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(exe.into());
        }
    }
    bail!("cargo did not name the e2e test executable")
}

/// The suite run inside a VM on Debian's 6.1 cloud kernel, which has no netfilter BPF links:
/// `doctor` must choose the TC hook set, and the TC end-to-end tests (the same traffic, flows and
/// verdicts as on the host) run there against the debug build the host tests used, followed by the
/// `daemon::` tests (the daemon on the TC hook set; its flood of 6000 flows through the
/// conntrack-netlink join, with /metrics answering throughout: about 20 s under emulation) and the
/// `vm::` tests: IPVS mode live (the kernel has IPVS) and `conntrack_full` (which lowers the global
/// `nf_conntrack_max`, allowed only inside the guest: `D8_IN_VM=1`).
fn vm_suite() -> anyhow::Result<()> {
    let binary = target_dir()?.join("debug/d8-trace");
    let e2e = e2e_test_binary()?;
    vm::run(vm::Options {
        kernel: "6.1".into(),
        add: vec![format!("{}:/bin/d8-trace", binary.display()), format!("{}:/bin/d8-e2e", e2e.display())],
        // D8_IN_VM=1 lets the tests that change global sysctls (conntrack_full) run: only here.
        env: vec!["D8_TRACE_BIN=/bin/d8-trace".into(), "D8_IN_VM=1".into()],
        timeout: 900,
        command: vec![
            "/bin/sh".into(),
            "-c".into(),
            "/bin/d8-trace doctor && /bin/d8-trace doctor --json | grep -q '\"hook_set\": \"tc\"' && /bin/d8-e2e --test-threads=1 --include-ignored tc:: daemon:: vm::".into(),
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
