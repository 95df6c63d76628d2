//! `cargo xtask fuzz`: runs the parsers' fuzz targets (`fuzz/`) with cargo-fuzz for a while each.
//! Not part of CI: minutes per target. Seeds each corpus with the project's own test data; a
//! crash leaves its input under `fuzz/artifacts/<target>/` and fails the task.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

/// Targets and the test data that seeds them.
const TARGETS: &[(&str, &[&str])] = &[
    (
        "iptables_save",
        &[
            "d8-userspace/testdata/rules/iptables-nft.save",
            "d8-userspace/testdata/rules/iptables-legacy.save",
            "d8-userspace/testdata/rules/iptables-input.rules",
        ],
    ),
    (
        "nft_json",
        &[
            "d8-userspace/testdata/rules/nft-layout-A.json",
            "d8-userspace/testdata/rules/nft-layout-B.json",
        ],
    ),
    ("nft_netlink", &["d8-userspace/testdata/rules/nft-netlink-B.bin"]),
    (
        "iptables_netlink",
        &["d8-userspace/testdata/rules/iptables-nft-netlink.bin"],
    ),
    ("iptables_legacy", &["d8-userspace/testdata/rules/iptables-legacy.bin"]),
    (
        "ipvsadm",
        &[
            "d8-userspace/testdata/rules/ipvsadm-Ln.txt",
            "d8-userspace/testdata/rules/proc-net-ip_vs.txt",
        ],
    ),
    ("k8s_snapshot", &["d8-userspace/testdata/k8s/snapshot.json"]),
];

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Seconds per target.
    #[arg(long, default_value_t = 120)]
    pub seconds: u64,
    /// Only this target (iptables_save, nft_json, nft_netlink, iptables_netlink, iptables_legacy,
    /// ipvsadm, k8s_snapshot).
    pub target: Option<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    let has_fuzz = Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_fuzz {
        eprintln!("xtask fuzz: installing cargo-fuzz");
        let ok = Command::new("cargo")
            .args(["install", "cargo-fuzz"])
            .status()
            .context("cargo install cargo-fuzz")?
            .success();
        if !ok {
            bail!("cargo install cargo-fuzz failed");
        }
    }
    let root = std::env::current_dir()?;
    for (target, seeds) in TARGETS {
        if opts.target.as_deref().is_some_and(|t| t != *target) {
            continue;
        }
        let corpus = root.join("fuzz/corpus").join(target);
        std::fs::create_dir_all(&corpus)?;
        for seed in *seeds {
            let from = root.join(seed);
            let name = Path::new(seed).file_name().expect("seed paths name files");
            std::fs::copy(&from, corpus.join(name)).with_context(|| format!("seeding from {}", from.display()))?;
        }
        eprintln!("xtask fuzz: {target} for {} s", opts.seconds);
        let ok = Command::new("cargo")
            .args(["+nightly", "fuzz", "run", target])
            .arg(&corpus)
            .arg("--")
            .arg(format!("-max_total_time={}", opts.seconds))
            .current_dir(root.join("fuzz"))
            .env("D8_SKIP_EBPF", "1")
            .status()
            .context("cargo fuzz run")?
            .success();
        if !ok {
            bail!("fuzz target {target} found a failure: see fuzz/artifacts/{target}/");
        }
    }
    Ok(())
}
