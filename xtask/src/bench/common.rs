//! What every section uses: the bench lab (three Services, an iperf3 server), d8-trace as a child
//! process, iperf3 runs, short-connection loops, and readings of /proc.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket},
    os::unix::process::ExitStatusExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use d8_trace::{
    lab::{ClusterSpec, Lab, ListenerKind, PodSpec, ServiceSpec},
    model::{Protocol, ProxyMode},
};

/// ClusterIP of `bench/iperf` (iperf3 server on port 5201 of pod `iperf-1`).
pub const IPERF_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const IPERF_PORT: u16 = 5201;
/// ClusterIP of `bench/web` (two HTTP pods).
pub const WEB_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 20);
/// ClusterIP of `bench/other` (one HTTP pod): the Service traced while measuring untraced traffic.
pub const OTHER_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
/// Pod `other-1`, `bench/other`'s backend.
pub const OTHER_POD: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 31);
pub const IPERF_SVC: &str = "bench/iperf";
pub const WEB_SVC: &str = "bench/web";
pub const OTHER_SVC: &str = "bench/other";
/// Client threads of the short-connection loops (the machine has 2 cores; the servers are threads
/// of this process too).
pub const CONN_THREADS: usize = 4;

/// What the sections share: the binary under test and the run's mode.
pub struct Env {
    pub d8_trace: PathBuf,
    pub quick: bool,
    /// `<target>/bench`: generated rule dumps, the quick report.
    pub work: PathBuf,
    /// This executable, for child processes of the rule-scale section.
    pub xtask: PathBuf,
}

impl Env {
    /// `full` in a full run, `quick` with `--quick`.
    pub fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
}

/// The workspace root (xtask's parent directory).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The machine's speed at a moment: the milliseconds a fixed single-threaded workload takes
/// (generating and sorting 2^21 pseudo-random `u64`s, 16 MiB: allocation, memory and compare
/// work, like the rule readers'), median of `runs`. Measured before each section, so that a
/// figure that moved between two runs can be told apart from the machine's own speed: this VM's
/// host ran the same parse of the same dump 46 % slower in one run than in the one before, with
/// no process of ours different.
pub fn reference_ms(runs: usize) -> f64 {
    let once = || {
        let started = Instant::now();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut v: Vec<u64> = (0..1 << 21)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            })
            .collect();
        v.sort_unstable();
        std::hint::black_box(&v);
        started.elapsed().as_secs_f64() * 1000.0
    };
    let times: Vec<f64> = (0..runs.max(1)).map(|_| once()).collect();
    median(&times)
}

pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The bench's node: `bench/iperf` (iperf3 server), `bench/web` (2 HTTP pods), `bench/other`
/// (1 HTTP pod), kube-proxy's iptables rules, dual-stack. Dropping it stops the iperf3 server and removes
/// every namespace.
pub struct BenchLab {
    // Field order: the server (in a pod namespace) stops before the lab goes.
    iperf_server: Child,
    pub lab: Lab,
}

impl BenchLab {
    pub fn up() -> anyhow::Result<Self> {
        // Dual-stack: the IPv6 short connections of the per-hook section go to the IPv6 twins of
        // the same Services and pods; everything else uses IPv4, as before.
        let spec = ClusterSpec::new()
            .dual_stack()
            .service(
                ServiceSpec::new("bench", "iperf", IPERF_VIP)
                    .port("iperf", IPERF_PORT, IPERF_PORT, Protocol::Tcp)
                    .selector("app", "iperf"),
            )
            .service(
                ServiceSpec::new("bench", "web", WEB_VIP)
                    .port("http", 80, 8080, Protocol::Tcp)
                    .selector("app", "web"),
            )
            .service(
                ServiceSpec::new("bench", "other", OTHER_VIP)
                    .port("http", 80, 8080, Protocol::Tcp)
                    .selector("app", "other"),
            )
            .pod(PodSpec::new("bench", "iperf-1", Ipv4Addr::new(10, 244, 1, 11)).label("app", "iperf"))
            .pod(
                PodSpec::new("bench", "web-1", Ipv4Addr::new(10, 244, 1, 21))
                    .label("app", "web")
                    .listen(8080, ListenerKind::Http),
            )
            .pod(
                PodSpec::new("bench", "web-2", Ipv4Addr::new(10, 244, 1, 22))
                    .label("app", "web")
                    .listen(8080, ListenerKind::Http),
            )
            .pod(
                PodSpec::new("bench", "other-1", OTHER_POD)
                    .label("app", "other")
                    .listen(8080, ListenerKind::Http),
            );
        let lab = Lab::up(spec, ProxyMode::Iptables).map_err(|e| anyhow!("lab up: {e}"))?;
        let ns = lab
            .pod_ns("iperf-1")
            .context("the iperf pod has a namespace")?
            .to_string();
        // `ip netns exec` enters the namespace and execs iperf3: the child's pid is iperf3's.
        let mut server = Command::new("ip")
            .args(["netns", "exec", &ns, "iperf3", "-s", "-p", &IPERF_PORT.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting iperf3 -s in the iperf pod")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening(server.id(), IPERF_PORT) {
            if let Some(status) = server.try_wait()? {
                bail!("iperf3 -s exited at once ({status})");
            }
            if Instant::now() > deadline {
                let _ = server.kill();
                let _ = server.wait();
                bail!("iperf3 -s did not listen on {IPERF_PORT} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Self {
            iperf_server: server,
            lab,
        })
    }

    pub fn node_ns(&self) -> &str {
        self.lab.node_ns()
    }

    pub fn client_ns(&self) -> &str {
        self.lab.client_ns()
    }
}

impl Drop for BenchLab {
    fn drop(&mut self) {
        // Our own child, by its pid.
        let _ = self.iperf_server.kill();
        let _ = self.iperf_server.wait();
    }
}

/// Whether a TCP socket listens on `port` in the network namespace of process `pid`.
fn listening(pid: u32, port: u16) -> bool {
    let local = format!(":{port:04X}");
    // iperf3 listens on an IPv6 socket when the namespace has IPv6.
    ["tcp", "tcp6"].iter().any(|file| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{file}")).unwrap_or_default();
        text.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1].ends_with(&local) && f[3] == "0A"
        })
    })
}

// ---- d8-trace as a child ---------------------------------------------------------------------

/// What the stderr reader saw.
#[derive(Default)]
struct Seen {
    attached: Option<Instant>,
    first_flow: Option<Instant>,
    flow_lines: u64,
    head: Vec<String>,
    tail: std::collections::VecDeque<String>,
}

/// `d8-trace --svc SVC --netns NODE --no-k8s -o json` running until [`Tracer::stop`].
pub struct Tracer {
    child: Child,
    pub spawned: Instant,
    seen: Arc<Mutex<Seen>>,
    /// Set once the child has exited: the stderr follower stops at the end of the file.
    exited: Arc<AtomicBool>,
    stderr: Option<JoinHandle<()>>,
    stdout: Option<JoinHandle<Vec<u8>>>,
    /// Its CPU time once attached: start-up (loading, attaching, reading the rules) is not
    /// tracing cost.
    cpu_attached: Option<Duration>,
}

/// What a stopped trace reported.
pub struct TraceEnd {
    pub lost_events: u64,
    pub flows: usize,
    /// d8-trace's CPU time (user + system) from attached to the stop, before it wrote its report.
    pub cpu: Option<Duration>,
    /// Records its kernel programs submitted (`STATS[EVENTS]`), up to the stop.
    pub records: Option<u64>,
    pub attached_after: Option<Duration>,
    pub first_flow_after: Option<Duration>,
}

impl Tracer {
    /// Starts tracing `svc` in `node_ns` and waits for the "attached" line.
    ///
    /// stderr (one live line per flow change) goes to a file, never a pipe: a pipe whose reader
    /// (this process, on a saturated machine) falls behind would block d8-trace's event loop and
    /// turn the bench's own slowness into lost events. A thread follows the file.
    pub fn start(bin: &Path, svc: &str, node_ns: &str) -> anyhow::Result<Self> {
        Self::start_with(bin, svc, node_ns, &[])
    }

    /// [`Self::start`] with `extra` flags for d8-trace (e.g. `--debug-kernel`).
    pub fn start_with(bin: &Path, svc: &str, node_ns: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::spawn(bin, svc, node_ns, extra, false)
    }

    /// [`Self::start`] for the start-up section: the first flow line's time to the millisecond
    /// ([`Self::first_flow_after`]); other runs learn it within 20 ms.
    pub fn start_timed(bin: &Path, svc: &str, node_ns: &str) -> anyhow::Result<Self> {
        Self::spawn(bin, svc, node_ns, &[], true)
    }

    fn spawn(bin: &Path, svc: &str, node_ns: &str, extra: &[&str], precise: bool) -> anyhow::Result<Self> {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = target_dir().join("bench");
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("d8-trace-{}.stderr", RUNS.fetch_add(1, Ordering::Relaxed) % 8));
        let file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let spawned = Instant::now();
        let mut child = Command::new(bin)
            .args(["--svc", svc, "--netns", node_ns, "--no-k8s", "-o", "json"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(file))
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let seen2 = seen.clone();
        let exited = Arc::new(AtomicBool::new(false));
        let exited2 = exited.clone();
        let mut reader = std::fs::File::open(&log)?;
        let stderr = std::thread::spawn(move || {
            let mut pending = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            loop {
                // Read the exit flag before reading: a read that finds nothing after the exit is the end.
                let done = exited2.load(Ordering::Acquire);
                let n = reader.read(&mut buf).unwrap_or(0);
                if n == 0 {
                    if done {
                        break;
                    }
                    // Every millisecond while the start-up is timed (until "attached", and with
                    // `precise` until the first flow line); then every 20 ms. A thread of ours
                    // waking 1,000 times a second through every traced run taxed the traced runs
                    // alone on a 2-core machine whose load uses both cores.
                    let timing = {
                        let s = seen2.lock().unwrap_or_else(|e| e.into_inner());
                        s.attached.is_none() || (precise && s.first_flow.is_none())
                    };
                    std::thread::sleep(Duration::from_millis(if timing { 1 } else { 20 }));
                    continue;
                }
                let now = Instant::now();
                pending.extend_from_slice(&buf[..n]);
                let mut s = seen2.lock().unwrap_or_else(|e| e.into_inner());
                while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(&pending[..pos]).into_owned();
                    pending.drain(..=pos);
                    if line.starts_with('#') {
                        s.flow_lines += 1;
                        s.first_flow.get_or_insert(now);
                    } else if line.contains("attached") {
                        s.attached.get_or_insert(now);
                    }
                    if s.head.len() < 40 {
                        s.head.push(line);
                    } else {
                        if s.tail.len() >= 20 {
                            s.tail.pop_front();
                        }
                        s.tail.push_back(line);
                    }
                }
            }
        });
        let mut stdout = child.stdout.take().expect("piped");
        let stdout = std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = stdout.read_to_end(&mut buf);
            buf
        });
        let mut tracer = Self {
            child,
            spawned,
            seen,
            exited,
            stderr: Some(stderr),
            stdout: Some(stdout),
            cpu_attached: None,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tracer.seen.lock().unwrap_or_else(|e| e.into_inner()).attached.is_some() {
                tracer.cpu_attached = cpu_time(tracer.child.id()).ok();
                return Ok(tracer);
            }
            if let Some(status) = tracer.child.try_wait()? {
                tracer.join_readers();
                bail!("d8-trace exited before attaching ({status}):\n{}", tracer.stderr_text());
            }
            if Instant::now() > deadline {
                tracer.kill();
                bail!("d8-trace did not attach within 30 s:\n{}", tracer.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Seconds from spawn to the first flow line, once there is one.
    pub fn first_flow_after(&self) -> Option<Duration> {
        self.seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_flow
            .map(|t| t - self.spawned)
    }

    fn stderr_text(&self) -> String {
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut lines = s.head.clone();
        if !s.tail.is_empty() {
            lines.push("...".into());
            lines.extend(s.tail.iter().cloned());
        }
        lines.join("\n")
    }

    fn join_readers(&mut self) -> Vec<u8> {
        self.exited.store(true, Ordering::Release);
        if let Some(t) = self.stderr.take() {
            let _ = t.join();
        }
        self.stdout.take().and_then(|t| t.join().ok()).unwrap_or_default()
    }

    fn kill(&mut self) {
        // Our own child, by its pid.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.join_readers();
    }

    /// Ctrl-C (d8-trace then prints its verdict and detaches), and the report's figures.
    pub fn stop(mut self) -> anyhow::Result<TraceEnd> {
        let pid = self.child.id();
        let cpu = cpu_time(pid)
            .ok()
            .zip(self.cpu_attached)
            .map(|(now, then)| now.saturating_sub(then));
        let records = kernel_records(pid);
        // SAFETY: kill(2) on the pid of our own child, which has not been waited for yet.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(120);
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                self.kill();
                bail!("d8-trace did not exit within 120 s of SIGINT:\n{}", self.stderr_text());
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = self.join_readers();
        if !status.success() {
            bail!("d8-trace failed ({status}):\n{}", self.stderr_text());
        }
        let report: serde_json::Value = serde_json::from_slice(&stdout).with_context(|| {
            format!(
                "d8-trace's stdout is not its JSON report; stderr:\n{}",
                self.stderr_text()
            )
        })?;
        let s = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        Ok(TraceEnd {
            lost_events: report["lost_events"].as_u64().context("report without lost_events")?,
            flows: report["flows"].as_array().map_or(0, Vec::len),
            cpu,
            records,
            attached_after: s.attached.map(|t| t - self.spawned),
            first_flow_after: s.first_flow.map(|t| t - self.spawned),
        })
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

// ---- /proc -------------------------------------------------------------------------------------

/// The records d8-trace's kernel programs submitted so far: the `EVENTS` slot of its `STATS`
/// per-CPU array (`d8_common::stat`), summed over CPUs, found through the map fds process `pid`
/// holds. `None` when it cannot be read (bpftool missing, the map not found).
pub fn kernel_records(pid: u32) -> Option<u64> {
    let ids: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/fdinfo"))
        .ok()?
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.strip_prefix("map_id:"))
                .filter_map(|v| v.trim().parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    for id in ids {
        let id = id.to_string();
        let Ok(show) = output("bpftool", &["-j", "map", "show", "id", &id]) else {
            continue;
        };
        let show: serde_json::Value = serde_json::from_str(&show).ok()?;
        if show["name"].as_str() != Some("STATS") {
            continue;
        }
        let dump: serde_json::Value =
            serde_json::from_str(&output("bpftool", &["-j", "map", "dump", "id", &id]).ok()?).ok()?;
        let slot = dump
            .as_array()?
            .iter()
            .find(|e| le_number(&e["key"]) == Some(d8_common::stat::EVENTS.into()))?;
        return Some(
            slot["values"]
                .as_array()?
                .iter()
                .filter_map(|v| le_number(&v["value"]))
                .sum(),
        );
    }
    None
}

/// A map key or value as bpftool prints it: a number (with BTF) or little-endian hex bytes.
fn le_number(v: &serde_json::Value) -> Option<u64> {
    if let Some(n) = v.as_u64() {
        return Some(n);
    }
    let bytes = v.as_array()?;
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate().take(8) {
        let b = u64::from_str_radix(b.as_str()?.trim_start_matches("0x"), 16).ok()?;
        n |= b << (8 * i);
    }
    Some(n)
}

/// CPU used by processes other than this one and its descendants (the lab's servers, iperf3,
/// d8-trace) and kernel threads, over a run: what else the machine was doing. Processes that
/// ended during the run are not counted.
pub struct OthersCpu {
    started: Instant,
    ticks: HashMap<u32, u64>,
}

/// Runs whose other processes took more than this share of one core are flagged as taken on a
/// busy machine.
pub const BUSY_CORES: f64 = 0.10;

impl OthersCpu {
    pub fn start() -> Self {
        Self {
            started: Instant::now(),
            ticks: others_ticks(),
        }
    }

    /// Cores the others used on average since [`Self::start`].
    pub fn finish(self) -> f64 {
        let now = others_ticks();
        let used: u64 = now
            .iter()
            .map(|(pid, t)| t.saturating_sub(self.ticks.get(pid).copied().unwrap_or(0)))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        used as f64 / hz / self.started.elapsed().as_secs_f64().max(1e-3)
    }
}

/// utime + stime of every process but ours (and its descendants) and kernel threads.
fn others_ticks() -> HashMap<u32, u64> {
    let me = std::process::id();
    // pid -> (ppid, ticks)
    let mut procs: HashMap<u32, (u32, u64)> = HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return HashMap::new();
    };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let f: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        procs.insert(pid, (num(1) as u32, num(11) + num(12)));
    }
    let ours_or_kernel = |mut pid: u32| {
        for _ in 0..64 {
            if pid == me || pid == 2 {
                return true;
            }
            match procs.get(&pid) {
                Some(&(ppid, _)) if ppid != 0 => pid = ppid,
                _ => return false,
            }
        }
        false
    };
    procs
        .iter()
        .filter(|(pid, _)| !ours_or_kernel(**pid))
        .map(|(pid, (_, t))| (*pid, *t))
        .collect()
}

/// Why `tool` cannot run here, with `hint` on how to get it (`None`: `tool --version` works): a
/// section that needs a tool the machine lacks is skipped by name, not failed.
pub fn missing_tool(tool: &str, hint: &str) -> Option<String> {
    match Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => None,
        Ok(s) => Some(format!("`{tool} --version` failed ({s})")),
        Err(e) => Some(format!("{tool} not found ({e}); {hint}")),
    }
}

/// CPU time (user + system) of process `pid` so far.
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = f.get(11).context("no utime")?.parse()?;
    let stime: u64 = f.get(12).context("no stime")?.parse()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Ok(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// `VmRSS` and `VmHWM` (peak) of process `pid`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((field("VmRSS:"), field("VmHWM:")))
}

/// A child process's exit, wall time and peak RSS.
pub struct Measured {
    pub status: ExitStatus,
    pub wall: Duration,
    pub max_rss_kib: u64,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

/// Peak RSS (`VmHWM`, KiB) of `pid` while its name is `comm`, i.e. after it exec'd: the figure
/// `wait4` gives includes the spawning process's RSS, which the child's memory map shares or copies
/// until exec.
fn follow_hwm(pid: u32, comm: String, done: Arc<AtomicBool>) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut peak = 0;
        while !done.load(Ordering::Acquire) {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                let name = status.lines().find_map(|l| l.strip_prefix("Name:")).map(str::trim);
                if name == Some(comm.as_str()) {
                    let hwm = status
                        .lines()
                        .find_map(|l| l.strip_prefix("VmHWM:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
                    peak = peak.max(hwm.unwrap_or(0));
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        peak
    })
}

/// Runs `cmd` to completion; `comm` is the name of the program that finally runs (after `ip netns
/// exec`), whose peak RSS is followed.
pub fn run_measured(cmd: &mut Command, comm: &str) -> anyhow::Result<Measured> {
    // The kernel keeps 15 bytes of a program's name (TASK_COMM_LEN).
    let comm: String = comm.chars().take(15).collect();
    let comm = comm.as_str();
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawning {cmd:?}"))?;
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = out.read_to_end(&mut b);
        b
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = err.read_to_end(&mut b);
        b
    });
    let done = Arc::new(AtomicBool::new(false));
    let hwm = follow_hwm(child.id(), comm.chars().take(15).collect(), done.clone());
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waiting for our own child by its pid; `child` is not waited for again.
    let rc = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    done.store(true, Ordering::Release);
    let followed = hwm.join().unwrap_or(0);
    if rc < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    Ok(Measured {
        status: ExitStatus::from_raw(status),
        wall,
        // The followed peak; wait4's only when the process was too short-lived to be seen.
        // Not followed (too short-lived to sample): `wait4`'s figure, which may include ours.
        max_rss_kib: if followed > 0 { followed } else { usage.ru_maxrss as u64 },
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Runs `program args` to completion; its stdout, or an error with its stderr.
pub fn output(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---- traffic -----------------------------------------------------------------------------------

/// One iperf3 run from the client pod to `bench/iperf`'s ClusterIP with 2 streams; Gbit/s
/// received.
pub fn iperf(client_ns: &str, secs: u32) -> anyhow::Result<f64> {
    let target = IPERF_VIP.to_string();
    let port = IPERF_PORT.to_string();
    let secs = secs.to_string();
    let mut last = String::new();
    // The server takes one test at a time and needs a moment after the previous one.
    for _ in 0..10 {
        let out = Command::new("ip")
            .args([
                "netns", "exec", client_ns, "iperf3", "-c", &target, "-p", &port, "-P", "2", "-t", &secs, "-J",
            ])
            .args(["--connect-timeout", "2000"])
            .stdin(Stdio::null())
            .output()
            .context("running iperf3 -c")?;
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        if let Some(bps) = json["end"]["sum_received"]["bits_per_second"].as_f64()
            && out.status.success()
        {
            return Ok(bps / 1e9);
        }
        last = json["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&out.stderr).into_owned());
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!("iperf3 -c failed 10 times: {last}")
}

/// A UDP port no process of the lab listens on (discard).
pub const CLOSED_UDP_PORT: u16 = 9;
/// Datagrams [`udp_drops`] sends per millisecond at most (about 20,000 per second).
const DROPS_PER_MS: u32 = 20;

/// Datagrams from the client pod to closed UDP port [`CLOSED_UDP_PORT`] of `to` for `secs`, every
/// one dropped by the kernel (`kfree_skb`, reason `NO_SOCKET`) and none of them a traced flow: to
/// the node's own address they die in the node's namespace, with a conntrack entry; to pod
/// `other-1` in the pod's, which has no conntrack (the entry is left behind at the veth). Paced
/// at about 20,000 a second, so that the drop tracepoint runs often enough for a steady mean
/// without the sender taking a core. Returns the datagrams sent.
pub fn udp_drops(client_ns: &str, to: Ipv4Addr, secs: u32) -> anyhow::Result<u64> {
    let ns = client_ns.to_string();
    std::thread::scope(|s| {
        s.spawn(move || -> anyhow::Result<u64> {
            d8_trace::lab::netns::enter(&ns).map_err(|e| anyhow!("{e}"))?;
            let sock = UdpSocket::bind("0.0.0.0:0").context("a UDP socket in the client pod")?;
            let to = SocketAddrV4::new(to, CLOSED_UDP_PORT);
            let deadline = Instant::now() + Duration::from_secs(secs.into());
            let mut sent = 0u64;
            while Instant::now() < deadline {
                for _ in 0..DROPS_PER_MS {
                    // The ICMP port unreachable errors come back as ECONNREFUSED on a later send
                    // of an unconnected socket only with IP_RECVERR; plain sends succeed.
                    if sock.send_to(b"d8-bench drop", to).is_ok() {
                        sent += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            if sent == 0 {
                bail!("no UDP datagram could be sent from the client pod");
            }
            Ok(sent)
        })
        .join()
        .map_err(|_| anyhow!("UDP drop sender panicked"))?
    })
}

/// Connections completed and failed by a short-connection loop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Conns {
    pub ok: u64,
    pub failed: u64,
    pub secs: f64,
}

impl Conns {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.secs.max(1e-9)
    }
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";

/// One HTTP request on a new connection; true when the answer is a 200.
fn one_request(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_nodelay(true);
    if s.write_all(REQUEST).is_err() {
        return false;
    }
    let mut buf = [0u8; 512];
    let mut got = Vec::with_capacity(256);
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => return false,
        }
    }
    got.starts_with(b"HTTP/1.1 200")
}

/// `threads` threads in `ns`, each opening a new connection per request to `addr` until
/// `deadline` or `stop`; with `rate`, all threads together pace themselves to that many
/// connections per second.
pub fn conn_loop(
    ns: &str,
    addr: SocketAddr,
    threads: usize,
    deadline: Instant,
    stop: &AtomicBool,
    rate: Option<f64>,
) -> anyhow::Result<Conns> {
    let start = Instant::now();
    let results: Vec<anyhow::Result<(u64, u64)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(move || -> anyhow::Result<(u64, u64)> {
                    d8_trace::lab::netns::enter(ns).map_err(|e| anyhow!("{e}"))?;
                    let interval = rate.map(|r| Duration::from_secs_f64(threads as f64 / r.max(1.0)));
                    let (mut ok, mut failed) = (0u64, 0u64);
                    let mut next = Instant::now();
                    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
                        if let Some(iv) = interval {
                            let now = Instant::now();
                            if next > now {
                                std::thread::sleep(next - now);
                            } else if now - next > Duration::from_millis(100) {
                                // Far behind: no burst to catch up.
                                next = now;
                            }
                            next += iv;
                        }
                        if one_request(addr) { ok += 1 } else { failed += 1 }
                    }
                    Ok((ok, failed))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err(anyhow!("client thread panicked"))))
            .collect()
    });
    let mut total = Conns {
        secs: start.elapsed().as_secs_f64(),
        ..Default::default()
    };
    for r in results {
        let (ok, failed) = r?;
        total.ok += ok;
        total.failed += failed;
    }
    Ok(total)
}

/// [`conn_loop`] for `dur`.
pub fn conns_for(ns: &str, addr: impl Into<SocketAddr>, dur: Duration, rate: Option<f64>) -> anyhow::Result<Conns> {
    conn_loop(
        ns,
        addr.into(),
        CONN_THREADS,
        Instant::now() + dur,
        &AtomicBool::new(false),
        rate,
    )
}

/// A paced loop in the background until dropped.
pub struct Background {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<anyhow::Result<Conns>>>,
}

impl Background {
    pub fn start(ns: &str, addr: impl Into<SocketAddr>, threads: usize, rate: f64) -> Self {
        let addr = addr.into();
        let stop = Arc::new(AtomicBool::new(false));
        let (ns, stop2) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            conn_loop(
                &ns,
                addr,
                threads,
                Instant::now() + Duration::from_secs(24 * 3600),
                &stop2,
                Some(rate),
            )
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    pub fn finish(mut self) -> anyhow::Result<Conns> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .expect("joined once")
            .join()
            .map_err(|_| anyhow!("background loop panicked"))?
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
