//! What the kernel readers' root tests (`iptables/kernel_tests.rs`, `nftables/kernel_tests.rs`)
//! share: whether they can run here, and a network namespace of their own.

use std::process::{Command, Output};

use super::ModeReading;

/// Whether test `test` can run: root and `tool --version` working (`package` names what to
/// install). Otherwise it fails naming what is missing, unless `D8_SKIP_ROOT_TESTS=1` is set:
/// then it prints `SKIPPED <test>: <reason>` and the test returns, so a skip is always said by
/// name and never passes silently by default.
pub(super) fn can_run(test: &str, tool: &str, package: &str) -> bool {
    // SAFETY: no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        "needs root (network namespaces, nf_tables)".to_string()
    } else {
        match Command::new(tool).arg("--version").output() {
            Ok(o) if o.status.success() => return true,
            _ => format!("needs the `{tool}` tool (package {package})"),
        }
    };
    if std::env::var("D8_SKIP_ROOT_TESTS").as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: {reason}");
        return false;
    }
    panic!("{test}: {reason} (set D8_SKIP_ROOT_TESTS=1 to skip it by name)");
}

/// A network namespace of the test's own, deleted on drop (every exit path, panics included).
pub(super) struct TestNs(pub(super) String);

impl TestNs {
    /// `d8-<prefix>-<tag>-<pid>`, made afresh.
    pub(super) fn new(prefix: &str, tag: &str) -> Self {
        let name = format!("d8-{prefix}-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .expect("ip netns add");
        assert!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestNs(name)
    }

    /// `args` run inside the namespace (`ip netns exec`).
    pub(super) fn exec(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {} {args:?}: {e}", self.0))
    }

    /// `tool [args] FILE` inside the namespace, with `text` written to FILE; asserts success.
    pub(super) fn load_file(&self, tool: &[&str], text: &str) {
        let file = std::env::temp_dir().join(format!("{}.rules", self.0));
        std::fs::write(&file, text).expect("write rules");
        let mut args = tool.to_vec();
        let path = file.display().to_string();
        args.push(&path);
        let out = self.exec(&args);
        let _ = std::fs::remove_file(&file);
        assert!(
            out.status.success(),
            "{tool:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TestNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// `testdata/rules/gen_large.py`'s rule sets of `n` Services: (`iptables-save` text, `nft -j`
/// JSON).
pub(super) fn gen_large(n: usize) -> (String, String) {
    // The iptables and nftables scale tests run at once in one process: each call its own files.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir();
    let (save, json) = (
        dir.join(format!("d8-gen-{n}-{}-{call}.save", std::process::id())),
        dir.join(format!("d8-gen-{n}-{}-{call}.json", std::process::id())),
    );
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/rules/gen_large.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(n.to_string())
        .arg(&save)
        .arg(&json)
        .output()
        .expect("python3 gen_large.py");
    assert!(
        out.status.success(),
        "gen_large.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let texts = (
        std::fs::read_to_string(&save).expect("generated iptables-save text"),
        std::fs::read_to_string(&json).expect("generated JSON"),
    );
    let _ = (std::fs::remove_file(&save), std::fs::remove_file(&json));
    texts
}

/// The scale check both modes share: `n` generated Services put into the kernel by `load`, then
/// read both ways by `same` (which asserts the kernel's reading equals the tools'); every Service
/// and its five endpoints are in the model.
pub(super) fn equal_at_scale(n: usize, load: impl FnOnce(), same: impl FnOnce() -> ModeReading) {
    let t = std::time::Instant::now();
    load();
    eprintln!("{n} Services loaded in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    let r = same();
    eprintln!("{n} Services read both ways and compared in {:?}", t.elapsed());
    assert_eq!(r.services.len(), n);
    assert_eq!(r.services.iter().map(|s| s.endpoints.len()).sum::<usize>(), 5 * n);
}

/// The kernel's reading equals the tools' (`rules_present`, node-port addresses, warnings after
/// `normalized`, every Service), the kernel's ran no tool, and `auto` read the kernel.
pub(super) fn assert_same_readings(
    what: &str,
    kernel: &ModeReading,
    tools: &ModeReading,
    auto: &ModeReading,
    normalized: impl Fn(&[String]) -> Vec<String>,
) {
    assert!(tools.rules_present, "{what}: the tool found no kube-proxy rules");
    assert_eq!(kernel.rules_present, tools.rules_present, "{what}: rules_present");
    assert_eq!(kernel.mode, tools.mode, "{what}: mode");
    assert_eq!(kernel.node_port_ips, tools.node_port_ips, "{what}: node_port_ips");
    assert_eq!(
        normalized(&kernel.warnings),
        normalized(&tools.warnings),
        "{what}: warnings"
    );
    assert_eq!(
        kernel.services.len(),
        tools.services.len(),
        "{what}: number of Services"
    );
    for (k, t) in kernel.services.iter().zip(&tools.services) {
        assert_eq!(k, t, "{what}: Service {}", t.service);
    }
    assert!(
        kernel
            .sources
            .iter()
            .all(|s| s.starts_with("nf_tables netlink") || s.starts_with("x_tables getsockopt")),
        "{what}: the kernel reading ran a tool: {:?}",
        kernel.sources
    );
    // The default reads the kernel too, and runs no tool where the kernel reader applies.
    assert_eq!(auto.sources, kernel.sources, "{what}: --rules-from auto ran a tool");
    assert_eq!(auto.services, kernel.services, "{what}: --rules-from auto");
    assert_eq!(auto.warnings, kernel.warnings, "{what}: --rules-from auto warnings");
}
