//! `d8-trace cleanup`: removes what a killed d8-trace left attached in a network namespace (its
//! netlink TC filters, the clsact qdiscs it added) and the tracefs mount it made, never another
//! tool's, never a running d8-trace's. Every trace does the same at its start; this is for a node where none will run.

use crate::{error_chain, kernel, loader::tc};

/// Removes the residue in the current (or `netns`) network namespace and says what it removed,
/// on stdout.
pub fn run(netns: Option<&str>) -> Result<(), String> {
    if !kernel::is_root() {
        return Err("cleanup needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for --netns); run d8-trace as root".into());
    }
    if let Some(ns) = netns {
        kernel::netns::enter(ns).map_err(|e| error_chain(&e))?;
    }
    let mut removed = tc::remove_stale().map_err(|e| format!("listing or removing TC filters: {e}"))?;
    removed.extend(kernel::tracefs::remove_stale());
    // Records of namespaces that are gone are the same on every namespace's cleanup.
    removed.extend(tc::forget_gone_namespaces());
    if removed.is_empty() {
        println!("nothing left by an earlier d8-trace");
    }
    for r in removed {
        println!("removed {r}");
    }
    Ok(())
}
