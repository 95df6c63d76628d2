//! What d8-trace leaves in the kernel: its programs (by name) and the links holding them.
//! Read with `bpftool -j`, which lists every program and link on the machine.

use std::process::Command;

use serde_json::Value;

/// Names d8-trace's programs carry (the kernel truncates names to 15 characters).
pub const PROGRAM_NAMES: &[&str] =
    &["nf_pre", "nf_post", "kfree_skb", "tcp_send_reset", "tcp_receive_re", "inet_sock_set_s"];

fn bpftool(args: &[&str]) -> Vec<Value> {
    let out = Command::new("bpftool").args(args).output().expect("bpftool is installed (`cargo xtask setup`)");
    assert!(out.status.success(), "bpftool {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Ids of loaded programs whose name is one of d8-trace's.
pub fn d8_programs() -> Vec<u64> {
    bpftool(&["-j", "prog", "show"])
        .iter()
        .filter(|p| p["name"].as_str().is_some_and(|n| PROGRAM_NAMES.contains(&n)))
        .filter_map(|p| p["id"].as_u64())
        .collect()
}

/// Ids of links attached to one of d8-trace's programs.
pub fn d8_links() -> Vec<u64> {
    let progs = d8_programs();
    bpftool(&["-j", "link", "show"])
        .iter()
        .filter(|l| l["prog_id"].as_u64().is_some_and(|id| progs.contains(&id)))
        .filter_map(|l| l["id"].as_u64())
        .collect()
}
