//! Giving freed heap memory back to the kernel.
//!
//! A whole rules read at 10,000 Services allocates tens of MiB of small objects (the reader's
//! table, the reading, the folded model) and frees most of them when it ends, but the model kept
//! is allocated among them: glibc's heap cannot shrink past it and keeps the freed pages
//! resident. In nftables mode that was ~60 MiB of the daemon's RSS at rest (`malloc_stats`: 202
//! MB of heap, 132 MB in use), which a re-read's peak then stacked on (BENCHMARKS.md, issue 13's
//! notes). `malloc_trim(0)` returns every free page inside the heap, not only its top.

/// Returns the heap's free pages to the kernel; for after a read's garbage is dropped. Costs a
/// walk of the heap's free chunks (milliseconds), so not for every tick.
pub fn release_freed() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only takes the allocator's own locks; any thread may call it.
    unsafe {
        libc::malloc_trim(0);
    }
}
