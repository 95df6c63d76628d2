//! Running `d8-trace` as a child process against a lab node.

use std::{
    io::{BufRead, BufReader, Read},
    path::PathBuf,
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use crate::report::Report;

/// The binary under test.
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("D8_TRACE_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/e2e-<hash> -> target/<profile>/d8-trace
    let exe = std::env::current_exe().expect("test executable path");
    let candidate = exe.parent().and_then(|deps| deps.parent()).map(|p| p.join("d8-trace"));
    match candidate {
        Some(p) if p.exists() => p,
        _ => panic!(
            "d8-trace binary not found next to the tests; build it first (`cargo build -p d8-userspace`) or set D8_TRACE_BIN (`cargo xtask test` does both)"
        ),
    }
}

/// The hook set the end-to-end tests trace with, from `D8_E2E_HOOKS`: `tc` or `netfilter` is
/// passed as `--hooks` to every d8-trace command a test starts without its own `--hooks`; unset or
/// `auto`, nothing is added and d8-trace picks what the kernel supports, which is what
/// `d8-trace doctor --json` calls `hook_set` ([`hook_set`] says which). This lets the VM suite run
/// the same tests once per hook set (6.12 has both) and the host suite run on a kernel without
/// netfilter links.
pub fn requested_hooks() -> Option<&'static str> {
    static HOOKS: std::sync::OnceLock<Option<&'static str>> = std::sync::OnceLock::new();
    *HOOKS.get_or_init(|| match std::env::var("D8_E2E_HOOKS").as_deref() {
        Err(_) | Ok("" | "auto") => None,
        Ok("tc") => Some("tc"),
        Ok("netfilter") => Some("netfilter"),
        Ok(other) => panic!("D8_E2E_HOOKS={other}: expected tc, netfilter or auto"),
    })
}

/// The hook set the tests' traces use: [`requested_hooks`], else what `d8-trace doctor --json`
/// says this kernel gets (`hook_set`: `netfilter` on 6.4+, `tc` before).
pub fn hook_set() -> &'static str {
    static SET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(set) = requested_hooks() {
        return set;
    }
    SET.get_or_init(|| {
        let out = Command::new(binary())
            .args(["doctor", "--json"])
            .stdin(Stdio::null())
            .output()
            .expect("running d8-trace doctor --json");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "d8-trace doctor --json printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        match v["hook_set"].as_str() {
            Some(set @ ("tc" | "netfilter")) => set.to_string(),
            _ => panic!("d8-trace doctor finds no usable hook set on this kernel: {v}"),
        }
    })
    .as_str()
}

/// `args` plus `--hooks <D8_E2E_HOOKS>` when the suite asks for a hook set and the command does
/// not name one itself. `doctor` is left alone (its `hook_set` is what the kernel gets, which some
/// tests check), and so is an empty command line (it prints the usage).
pub fn with_hooks<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = args.to_vec();
    let named = args.iter().any(|a| *a == "--hooks" || a.starts_with("--hooks="));
    if let Some(set) = requested_hooks()
        && !named
        && !args.is_empty()
        && args[0] != "doctor"
    {
        out.extend(["--hooks", set]);
    }
    out
}

/// A running trace. Dropped unfinished (a failing assertion, a panic), it ends the child with
/// SIGTERM, then SIGKILL, so no d8-trace outlives its test.
pub struct Trace {
    child: Child,
    args: Vec<String>,
    finished: bool,
    stderr_lines: mpsc::Receiver<String>,
    stderr_seen: Vec<String>,
}

/// What a finished trace printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Finished {
    /// The JSON report, or a panic showing what was printed instead.
    pub fn report(&self) -> Report {
        assert!(
            self.status.success(),
            "d8-trace failed ({}):\n{}",
            self.status,
            self.stderr
        );
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "stdout is not the JSON report ({e}):\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Trace {
    /// Starts `d8-trace <args>` and waits until it says its hooks are attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_until(args, env, "attached")
    }

    /// Starts `d8-trace <args>` and waits for a stderr line containing `ready`.
    pub fn start_until(args: &[&str], env: &[(&str, &str)], ready: &str) -> Self {
        Self::start_under(&[], args, env, ready)
    }

    /// [`Self::start_until`] with d8-trace run by a wrapper: `wrapper[0] wrapper[1..] d8-trace
    /// <args>` (e.g. `unshare` to give it a mount namespace of its own).
    pub fn start_under(wrapper: &[&str], args: &[&str], env: &[(&str, &str)], ready: &str) -> Self {
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(binary());
                c
            }
            None => Command::new(binary()),
        };
        cmd.args(with_hooks(args))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning d8-trace");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let args = args.iter().map(|a| a.to_string()).collect();
        let mut trace = Self {
            child,
            args,
            finished: false,
            stderr_lines: rx,
            stderr_seen: Vec::new(),
        };
        trace.wait_for_stderr(ready, Duration::from_secs(30));
        trace
    }

    /// Waits for a stderr line containing `needle`; panics with everything seen on timeout or exit.
    pub fn wait_for_stderr(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr_lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => {
                    let hit = line.contains(needle);
                    self.stderr_seen.push(line);
                    if hit {
                        return;
                    }
                }
                Err(_) => {
                    let _ = self.child.kill();
                    let _ = self.child.wait();
                    panic!(
                        "d8-trace never printed {needle:?}; stderr:\n{}",
                        self.stderr_seen.join("\n")
                    );
                }
            }
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends `signal` to the child (which this test started).
    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.pid(), signal) };
    }

    /// Waits for exit (at most `timeout`, then kills it and panics), reading stdout meanwhile
    /// (until then nobody reads it: a test can hold the child's output back).
    pub fn finish(mut self, timeout: Duration) -> Finished {
        self.finished = true;
        let deadline = Instant::now() + timeout;
        let reader = self.child.stdout.take().map(|mut out| {
            std::thread::spawn(move || {
                let mut stdout = String::new();
                let _ = out.read_to_string(&mut stdout);
                stdout
            })
        });
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for d8-trace") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "d8-trace did not exit within {timeout:?}; stderr:\n{}",
                    self.stderr_seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let stdout = reader.and_then(|r| r.join().ok()).unwrap_or_default();
        while let Ok(line) = self.stderr_lines.recv_timeout(Duration::from_millis(200)) {
            self.stderr_seen.push(line);
        }
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        Finished {
            status,
            stdout,
            stderr: self.stderr_seen.join("\n"),
        }
        .recorded(&args)
    }
}

/// Runs `d8-trace <args>` to completion (for commands that do not attach, or fail early).
pub fn run_to_end(args: &[&str]) -> Finished {
    let out = Command::new(binary())
        .args(with_hooks(args))
        .stdin(Stdio::null())
        .output()
        .expect("running d8-trace");
    Finished {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
    .recorded(args)
}

impl Finished {
    /// With `D8_E2E_RECORD=DIR`, writes what this run printed on stdout (and its exit status) to
    /// `DIR/<test>.<n>`, so two builds' outputs over the whole suite can be compared
    /// (`xtask/compare-reports.py`).
    fn recorded(self, args: &[&str]) -> Self {
        if let Some(dir) = std::env::var_os("D8_E2E_RECORD") {
            static RUNS: std::sync::Mutex<Vec<(String, u32)>> = std::sync::Mutex::new(Vec::new());
            let test = std::thread::current().name().unwrap_or("main").replace("::", ".");
            let n = {
                let mut runs = RUNS.lock().unwrap_or_else(|e| e.into_inner());
                match runs.iter_mut().find(|(t, _)| *t == test) {
                    Some((_, n)) => {
                        *n += 1;
                        *n
                    }
                    None => {
                        runs.push((test.clone(), 0));
                        0
                    }
                }
            };
            let path = std::path::Path::new(&dir).join(format!("{test}.{n:03}"));
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(
                path,
                format!("args: {args:?}\nstatus: {:?}\n{}", self.status.code(), self.stdout),
            );
        }
        self
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        if self.finished || matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SIGTERM first: d8-trace detaches everything on it.
        self.signal(libc::SIGTERM);
        for _ in 0..50 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
