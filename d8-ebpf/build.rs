//! Rebuild the kernel programs when bpf-linker changes (aya-template does the same).
fn main() {
    if let Ok(path) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}
