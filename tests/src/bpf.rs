//! What d8-trace leaves in the kernel. Other tests (or other people) may run d8-trace on the same
//! machine at the same time, so machine-wide listings prove nothing: a test records the BPF links
//! and programs its own d8-trace process holds (from `/proc/PID/fdinfo`) while it runs, and
//! checks that none of them exists any more once it exited.

use std::process::Command;

use serde_json::Value;

/// Link and program ids one process holds file descriptors of.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held {
    pub links: Vec<u64>,
    pub programs: Vec<u64>,
}

impl Held {
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.programs.is_empty()
    }
}

/// What process `pid` holds now (empty once it exited).
pub fn held_by(pid: u32) -> Held {
    let mut held = Held::default();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return held;
    };
    for entry in dir.flatten() {
        let Ok(info) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let field = |name: &str| {
            info.lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().parse::<u64>().ok())
        };
        // A link's fdinfo names its program too: count it as a link only.
        if let Some(id) = field("link_id:") {
            held.links.push(id);
        } else if let Some(id) = field("prog_id:") {
            held.programs.push(id);
        }
    }
    held.links.sort_unstable();
    held.programs.sort_unstable();
    held
}

fn kernel_ids(kind: &str) -> Vec<u64> {
    let out = Command::new("bpftool")
        .args(["-j", kind, "show"])
        .output()
        .expect("bpftool is installed (`cargo xtask setup`)");
    assert!(
        out.status.success(),
        "bpftool {kind} show: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
    list.iter().filter_map(|v| v["id"].as_u64()).collect()
}

/// Which of `held` still exist in the kernel.
pub fn still_loaded(held: &Held) -> Held {
    let links = kernel_ids("link");
    let programs = kernel_ids("prog");
    Held {
        links: held.links.iter().copied().filter(|l| links.contains(l)).collect(),
        programs: held.programs.iter().copied().filter(|p| programs.contains(p)).collect(),
    }
}

/// Ids of every loaded BPF program.
pub fn loaded_programs() -> Vec<u64> {
    kernel_ids("prog")
}
