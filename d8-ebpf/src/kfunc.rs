//! Kernel functions (kfuncs) for the netfilter programs, which run only on kernels with netfilter
//! links (6.4+), all of which have them. aya 0.14 cannot relocate a kfunc call, so each is
//! emitted as the placeholder pair `d8_common::kfunc` describes, which the netfilter loader
//! patches with the running kernel's BTF ids (`d8-userspace/src/loader/kfunc.rs`).
//!
//! [`rdonly_cast`] is why: the packet's headers read with plain loads through a read-only typed
//! pointer, where `bpf_probe_read_kernel` is a helper call that the untraced path spent half its
//! cost on (BENCHMARKS.md, issue 18). The verifier inlines the cast into a register move, and
//! checks every load against the struct's BTF: an offset past the struct does not load (so each
//! header is cast on its own), and the JIT turns each load into a `BPF_PROBE_MEM` load, which
//! reads zero where the memory faults instead of oopsing.

use d8_common::kfunc;

/// `bpf_rdonly_cast(addr, TYPE)`: `addr` as a read-only pointer to the struct the type
/// placeholder `TYPE` names. Read it only with [`load`] at constant offsets within that struct.
#[inline(always)]
pub fn rdonly_cast<const TYPE: i32>(addr: u64) -> u64 {
    let cast: u64;
    // SAFETY: the placeholder pair the loader patches into a kfunc call, which clobbers r1-r5
    // like any call and returns in r0; it reads and writes no memory of ours.
    unsafe {
        core::arch::asm!(
            "r2 = {ty}",
            "call {call}",
            ty = const TYPE,
            call = const kfunc::RDONLY_CAST,
            inlateout("r1") addr => _,
            lateout("r0") cast,
            out("r2") _,
            out("r3") _,
            out("r4") _,
            out("r5") _,
            options(pure, nomem, nostack),
        );
    }
    cast
}

/// A `T` at `off` bytes into a struct cast by [`rdonly_cast`]: one plain load, which the verifier
/// accepts only when `off` is a constant within the struct.
#[inline(always)]
pub fn load<T: Copy>(cast: u64, off: usize) -> T {
    // SAFETY: a `BPF_PROBE_MEM` load once verified: a faulting address reads zero.
    unsafe { core::ptr::read_volatile((cast + off as u64) as *const T) }
}
