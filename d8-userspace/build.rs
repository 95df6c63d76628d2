//! Builds the kernel programs (d8-ebpf) for the BPF target with aya-build (nightly + bpf-linker) and
//! leaves the object in `$OUT_DIR/d8-probes`, which `loader` embeds.
//!
//! `D8_SKIP_EBPF=1` skips that build and embeds an empty object: for working on the pure parts
//! (parsers, classifier) without the BPF toolchain. Such a binary refuses to trace and says why.

use std::{env, fs, path::PathBuf};

use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=D8_SKIP_EBPF");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    if env::var("D8_SKIP_EBPF").is_ok_and(|v| v == "1" || v == "true") {
        println!("cargo:warning=D8_SKIP_EBPF set: d8-trace is built without its kernel programs");
        fs::write(out_dir.join("d8-probes"), [])?;
        return Ok(());
    }
    let metadata = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let ebpf = metadata
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "d8-ebpf")
        .ok_or_else(|| anyhow!("d8-ebpf package not found in the workspace"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("d8-ebpf manifest has no parent directory"))?
        .as_str();
    aya_build::build_ebpf(
        [Package { name: ebpf.name.as_str(), root_dir, ..Default::default() }],
        Toolchain::default(),
    )
    .context("building the kernel programs (needs `rustup toolchain install nightly --component rust-src` and bpf-linker; `cargo xtask setup` installs both)")
}
