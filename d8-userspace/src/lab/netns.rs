//! Namespace plumbing: running setup commands, entering a namespace from a thread, and removing
//! namespaces left behind by crashed runs.

use std::fs::File;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

use super::Error;

/// Runs `program args...`, feeding `stdin` when given; fails with the command line and its stderr.
pub(crate) fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let command = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    if let Some(text) = stdin {
        // Take the pipe so it is closed (EOF) before waiting.
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes()).map_err(|e| Error::Command {
            command: command.clone(),
            stderr: e.to_string(),
        })?;
    }
    let out = child.wait_with_output().map_err(|e| Error::Command {
        command: command.clone(),
        stderr: e.to_string(),
    })?;
    if !out.status.success() {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if stderr.is_empty() {
            stderr = format!("exit status {}", out.status);
        }
        return Err(Error::Command { command, stderr });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a batch of `ip` commands inside namespace `ns` (`ip -n NS -batch -`), one per line.
pub(crate) fn ip_batch(ns: &str, lines: &[String]) -> Result<(), Error> {
    let text = lines.join("\n") + "\n";
    run("ip", &["-n", ns, "-batch", "-"], Some(&text)).map_err(|e| match e {
        Error::Command { command, stderr } => Error::Command {
            command: format!("{command} <<< {text:?}"),
            stderr,
        },
        other => other,
    })?;
    Ok(())
}

/// Runs `program args...` inside `ns` via `ip netns exec`.
pub(crate) fn exec_in(ns: &str, program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, Error> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full, stdin)
}

/// Moves the calling thread into network namespace `ns` (a name under `/run/netns`). Only this
/// thread changes namespace; sockets it creates afterwards belong to `ns`.
pub fn enter(ns: &str) -> Result<(), Error> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).map_err(|e| Error::Netns {
        ns: ns.to_string(),
        reason: format!("open {path}: {e}"),
    })?;
    // SAFETY: setns on a valid namespace fd; affects the calling thread only (network namespaces
    // may be changed per thread).
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Netns {
            ns: ns.to_string(),
            reason: format!("setns: {err}"),
        });
    }
    Ok(())
}

/// Runs `f` on a fresh thread inside namespace `ns` and returns its result. The caller's thread
/// never changes namespace.
pub fn in_netns<T: Send, F: FnOnce() -> Result<T, Error> + Send>(ns: &str, f: F) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(ns)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Netns {
                ns: ns.to_string(),
                reason: "worker thread panicked".into(),
            })
        })
    })
}

/// Deletes namespace `ns` (its veths go with it). Missing namespaces are not an error.
pub(crate) fn delete(ns: &str) -> Result<(), Error> {
    if !std::path::Path::new(&format!("/run/netns/{ns}")).exists() {
        return Ok(());
    }
    run("ip", &["netns", "del", ns], None).map(|_| ())
}

/// Names under `/run/netns` starting with `prefix`.
pub fn list_with_prefix(prefix: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return Vec::new();
    };
    let mut names: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    names.sort();
    names
}

fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes `d8lab-<pid>-*` namespaces whose process is gone (labs of crashed runs). Returns the
/// names it removed. Namespaces of live processes, this one included, are left alone.
pub fn cleanup_stale() -> Result<Vec<String>, Error> {
    let mut removed = Vec::new();
    for name in list_with_prefix("d8lab-") {
        let Some(pid) = name
            .strip_prefix("d8lab-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        if pid_alive(pid) {
            continue;
        }
        delete(&name)?;
        removed.push(name);
    }
    Ok(removed)
}
