//! Booting the guest under qemu and following its serial console.
//!
//! The only channel back from the guest is the console (ttyS0 on qemu's stdout): lines are echoed
//! as they arrive and scanned for init's sentinels (`d8-vm: ready`, `d8-vm: exit=N`) and for kernel
//! panics. The guest powers off after the sentinel; with `-no-reboot` and `panic=-1` a panic also
//! ends qemu, so a silent hang is the only case left for the timeout.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub append: &'a str,
    pub memory_mib: u32,
    pub cpus: u32,
    pub timeout: Duration,
    /// `tcg` (software emulation), or `kvm` where it works.
    pub accel: &'a str,
    /// Put before each echoed console line.
    pub echo_prefix: &'a str,
}

pub struct Outcome {
    /// The command's exit status, from the sentinel.
    pub status: i32,
    /// From starting qemu to init's `d8-vm: ready` line (kernel boot + mounts + modprobes).
    pub ready_after: Option<Duration>,
    pub finished_after: Duration,
    /// Every console line, in order (the caller parses the command's output from it).
    pub console: Vec<String>,
}

const SENTINEL: &str = "d8-vm: exit=";
const READY: &str = "d8-vm: ready";
/// After the sentinel the guest only syncs and powers off.
const POWEROFF_GRACE: Duration = Duration::from_secs(60);
/// After a panic message qemu should exit by itself (panic=-1 reboots, -no-reboot exits).
const PANIC_GRACE: Duration = Duration::from_secs(15);

enum Msg {
    Out(String),
    Err(String),
    OutClosed,
}

/// Kills qemu (by the PID we started) unless it has been reaped, so no error path leaves a VM
/// running.
struct Guard(Option<Child>);

impl Guard {
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill();
    }
}

pub fn boot(b: &Boot) -> Result<Outcome> {
    let qemu = super::which("qemu-system-x86_64")
        .context("qemu-system-x86_64 is missing: apt-get install -y qemu-system-x86")?;
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", b.accel])
        .args(["-m", &b.memory_mib.to_string()])
        .args(["-smp", &b.cpus.to_string()])
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .arg("-kernel")
        .arg(b.kernel)
        .arg("-initrd")
        .arg(b.initrd)
        .args(["-append", b.append])
        // stdin stays an open pipe: with -nographic it is the serial port's (and monitor's) input.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("d8-vm: {cmd:?}");
    let started = Instant::now();
    let mut guard = Guard(Some(cmd.spawn().context("starting qemu-system-x86_64")?));
    let pid = guard.child().id();

    let (tx, rx) = mpsc::channel();
    let stdout = guard.child().stdout.take().unwrap();
    let stderr = guard.child().stderr.take().unwrap();
    let tx2 = tx.clone();
    std::thread::spawn(move || forward_lines(stdout, &tx, Msg::Out, true));
    std::thread::spawn(move || forward_lines(stderr, &tx2, Msg::Err, false));

    let deadline = started + b.timeout;
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut ready_after = None;
    let mut status: Option<i32> = None;
    let mut panic_line: Option<String> = None;
    let mut out_closed = false;
    let mut console: Vec<String> = Vec::new();
    let stdout_handle = std::io::stdout();
    loop {
        // Once the outcome is known, qemu gets a short grace period to exit by itself.
        let limit = match (status, &panic_line) {
            (Some(_), _) => deadline.min(Instant::now() + POWEROFF_GRACE),
            (None, Some(_)) => deadline.min(Instant::now() + PANIC_GRACE),
            _ => deadline,
        };
        if out_closed {
            // The console is gone: qemu is exiting (or has exited).
            break;
        }
        let wait = limit.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Out(line)) => {
                {
                    let mut so = stdout_handle.lock();
                    let _ = writeln!(so, "{}{line}", b.echo_prefix);
                    let _ = so.flush();
                }
                if ready_after.is_none() && line.contains(READY) {
                    ready_after = Some(started.elapsed());
                }
                if status.is_none()
                    && let Some(pos) = line.find(SENTINEL)
                {
                    let digits: String = line[pos + SENTINEL.len()..]
                        .chars()
                        .take_while(|c| c.is_ascii_digit())
                        .collect();
                    status = digits.parse().ok();
                }
                if panic_line.is_none() && line.contains("Kernel panic") {
                    panic_line = Some(line.clone());
                }
                console.push(line.clone());
                tail.push_back(line);
                if tail.len() > 30 {
                    tail.pop_front();
                }
            }
            Ok(Msg::Err(line)) => eprintln!("qemu: {line}"),
            Ok(Msg::OutClosed) => out_closed = true,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if status.is_some() {
                    eprintln!(
                        "d8-vm: warning: the guest did not power off after the sentinel; killing qemu (pid {pid})"
                    );
                    guard.kill();
                    break;
                }
                guard.kill();
                if let Some(p) = &panic_line {
                    bail!("the guest kernel panicked ({p}) and qemu (pid {pid}) did not exit; killed it");
                }
                bail!(
                    "timeout: the guest did not finish within {}s (--timeout); killed qemu (pid {pid}). \
                     Last console lines:\n{}",
                    b.timeout.as_secs(),
                    tail.iter().cloned().collect::<Vec<_>>().join("\n")
                );
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }

    // Reap qemu: it closed its stdout, so it is exiting; bound the wait anyway.
    let exit = if let Some(child) = guard.0.as_mut() {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(s) = child.try_wait()? {
                guard.0 = None;
                break Some(s);
            }
            if Instant::now() > until {
                guard.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    } else {
        None
    };
    let finished_after = started.elapsed();

    if let Some(p) = panic_line {
        bail!(
            "the guest kernel panicked: {p}\nLast console lines:\n{}",
            tail.iter().cloned().collect::<Vec<_>>().join("\n")
        );
    }
    match status {
        Some(status) => {
            if let Some(e) = exit.filter(|e| !e.success()) {
                eprintln!("d8-vm: warning: qemu exited with {e} after the guest's sentinel");
            }
            Ok(Outcome {
                status,
                ready_after,
                finished_after,
                console,
            })
        }
        None => bail!(
            "the guest ended without reporting the command's status (no `{SENTINEL}N` line; qemu {}). \
             Last console lines:\n{}",
            exit.map(|e| format!("exited with {e}"))
                .unwrap_or_else(|| "was killed".into()),
            tail.iter().cloned().collect::<Vec<_>>().join("\n")
        ),
    }
}

/// Sends complete lines (CR/LF stripped, invalid UTF-8 replaced) from a pipe until it closes.
fn forward_lines(pipe: impl Read, tx: &mpsc::Sender<Msg>, wrap: fn(String) -> Msg, report_close: bool) {
    let mut r = BufReader::new(pipe);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let line = String::from_utf8_lossy(&buf);
                let line = printable(line.trim_end_matches(['\r', '\n']));
                if tx.send(wrap(line)).is_err() {
                    return;
                }
            }
        }
    }
    if report_close {
        let _ = tx.send(Msg::OutClosed);
    }
}

/// Drops terminal control sequences (SeaBIOS clears the screen, which would wipe the caller's
/// terminal) and other control characters except tabs.
fn printable(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters... final byte in @..~; other escapes are ESC + one char.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                } else {
                    chars.next();
                }
            }
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn printable() {
        assert_eq!(super::printable("\u{1b}c\u{1b}[?7l\u{1b}[2JSeaBIOS\r"), "SeaBIOS");
        assert_eq!(super::printable("a\tb"), "a\tb");
    }
}
