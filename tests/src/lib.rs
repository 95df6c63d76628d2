//! Shared pieces of d8-trace's end-to-end tests: running the `d8-trace` binary against a lab,
//! reading its JSON, and taking an inventory of the kernel's BPF programs and links.
//!
//! The tests need root (network namespaces, BPF). They find the binary through `D8_TRACE_BIN`
//! (set by `cargo xtask test`), else next to the test executable (`target/<profile>/d8-trace`).

pub mod apiserver;
pub mod bpf;
pub mod report;
pub mod run;

/// Panics with a clear message unless running as root: these tests cannot prove anything
/// without it, and a skipped end-to-end suite must not look like a passing one.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("the end-to-end tests need root (network namespaces, BPF); run `cargo xtask test` as root");
    }
}
