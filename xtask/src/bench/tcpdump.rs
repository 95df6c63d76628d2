//! `tcpdump -i any -s 128 -w /dev/null` in the lab node: what an operator reaches for first (the
//! issue's SOP), measured beside d8-trace on the same short-connection load. The bench's own child,
//! ended by its pid.

use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context as _, bail};

/// Why the tcpdump rounds cannot run here (`None`: they can): tcpdump is not in every lab or CI
/// image, and a missing one skips those rounds by name instead of failing the benchmark.
pub fn unavailable() -> Option<String> {
    super::common::missing_tool("tcpdump", "`cargo xtask setup` installs it")
}

pub struct Tcpdump {
    child: Child,
}

impl Tcpdump {
    /// Starts capturing on every interface of `node_ns` and waits until tcpdump says it listens.
    pub fn start(node_ns: &str) -> anyhow::Result<Self> {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                node_ns,
                "tcpdump",
                "-i",
                "any",
                "-s",
                "128",
                "-w",
                "/dev/null",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning ip netns exec ... tcpdump")?;
        let stderr = child.stderr.take().context("tcpdump's stderr")?;
        let (tx, rx) = mpsc::channel();
        // The rest of stderr (the packet counts at exit) is read and dropped by this thread, so
        // tcpdump never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let mut me = Self { child };
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) if line.contains("listening on") => return Ok(me),
                Ok(_) => {}
                Err(_) => {
                    me.kill();
                    bail!("tcpdump in {node_ns} did not say it was listening within 10 s");
                }
            }
        }
    }

    /// Ctrl-C, as an operator ends it; waits for it to exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: kill(2) on the pid of our own child (`ip netns exec` execs tcpdump in place),
        // not waited for yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().context("waiting for tcpdump")?;
        // tcpdump exits 0 on SIGINT; killed by the signal is the same end.
        if !status.success() && status.code().is_some() {
            bail!("tcpdump failed ({status})");
        }
        Ok(())
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tcpdump {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}
