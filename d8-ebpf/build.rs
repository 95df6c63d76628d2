//! Rebuild the kernel programs when bpf-linker changes (aya-template does the same), and link
//! them with every aya-log statement inlined.
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
    // aya-log-ebpf wraps each log statement in a closure, which LLVM outlines into a bpf-to-bpf
    // call when several programs reach it. The verifier adds a called function's frame (at least
    // 32 bytes) to its caller's, even for a call in code it prunes, and `kfree_skb` and
    // `nf_post` have no 32 bytes left ("combined stack size of 2 calls is 544"). A high inline
    // threshold at link time (LTO) inlines those closures; everything else in the crate is
    // `#[inline(always)]` already, so nothing else changes (see src/log.rs).
    println!("cargo:rustc-link-arg-bins=--llvm-args=-inline-threshold=100000");
}
