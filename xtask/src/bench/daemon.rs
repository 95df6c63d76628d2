//! The daemon at cluster scale: `d8-trace daemon` in a lab node whose kube-proxy rules hold N
//! Services with 5 endpoints each (`gen_large.py`, loaded as in the rule-scale section), against the
//! project's list-and-watch API server (`d8_tests::apiserver`, in the node's namespace, paging
//! LISTs by 500 as a real server does) serving the same N Services and N EndpointSlices (with
//! managedFields and the annotations a real cluster's objects carry) plus the lab's node and pods.
//!
//! For each proxy mode, from spawn: the daemon until ready and its first reads done, then
//! - a quiet window (no API change, no rule change, no traffic): the daemon's CPU;
//! - a window with one EndpointSlice changed every second: its CPU, and the watch events folded in;
//! - the rules touched twice (a table added and removed: the nf_tables generation moves, so the
//!   daemon reads the whole rule set again), waiting for each read to finish.
//!
//! Throughout, every 100 ms: `/healthz`'s response time, the daemon's RSS, and every child it runs
//! (`iptables-save`) with its peak (`VmHWM`), followed every 5 ms. The API server counts LISTs
//! (every page) and WATCHes. Last, in the bench's small lab (`bench/web`, 2 pods), the daemon's
//! CPU while clients open new connections as fast as the machine lets them.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, anyhow, bail};
use d8_tests::apiserver::ApiServer;
use d8_trace::{
    lab::{self, ClusterSpec, Lab},
    model::{ProxyMode, k8s::watch::WATCH_SECS},
};
use serde_json::{Value, json};

use super::{
    common::{self, BenchLab, Env},
    rules,
};

/// The allocator's settings `deploy/daemonset.yaml` gives the daemon (`tests/tests/manifests.rs`
/// checks the two agree): one arena, and allocations of 1 MiB and more mapped on their own.
pub const MALLOC_ENV: [(&str, &str); 2] = [("MALLOC_ARENA_MAX", "1"), ("MALLOC_MMAP_THRESHOLD_", "1048576")];

/// The daemon's metrics port inside the node's namespace.
const METRICS: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9810);
/// Kinds the daemon watches (Services, EndpointSlices, this node's Pods, this node's Node).
const KINDS: u64 = 4;

/// One proxy mode's run.
pub struct ModeRun {
    pub mode: &'static str,
    /// Spawn to "daemon ready", and to the first reads done with the API synced.
    pub ready_s: f64,
    pub settled_s: f64,
    /// Requests up to the settled point (the initial LIST pages and the first WATCHes).
    pub initial_lists: u64,
    pub initial_watches: u64,
    /// Requests after it, over `after_s` seconds.
    pub later_lists: u64,
    pub later_watches: u64,
    pub after_s: f64,
    /// The daemon's CPU in % of a core: quiet, and with `changes` API changes at 1/s.
    pub quiet_cpu_pct: f64,
    pub quiet_s: f64,
    pub changes_cpu_pct: f64,
    pub changes_s: f64,
    pub changes: u64,
    /// The longest `/healthz` answer (ms) after ready, over the whole run and while the rules were
    /// re-read; answers sampled.
    pub healthz_max_ms: f64,
    pub healthz_reread_max_ms: f64,
    pub healthz_samples: u64,
    pub healthz_failed: u64,
    /// Rules re-read after a touch, and how long each took (s).
    pub reread_s: Vec<f64>,
    /// `d8_trace_rules_reads_total` by result at the end.
    pub reads: Vec<(String, f64)>,
    /// The daemon's peak RSS (`VmHWM`), its children's (the largest), both MiB, and the largest
    /// sampled sum of all of them at one instant.
    pub daemon_peak_mib: f64,
    pub child_peak_mib: f64,
    pub child_names: Vec<String>,
    pub sampled_sum_mib: f64,
    pub lost_events: f64,
}

/// The daemon under the lab's fastest new connections.
pub struct Traffic {
    pub flows_per_s: f64,
    pub cpu_pct: f64,
    pub secs: f64,
    pub lost_events: f64,
    pub failed: u64,
}

pub struct DaemonBench {
    pub services: usize,
    pub runs: Vec<ModeRun>,
    pub traffic: Option<Traffic>,
}

pub fn run(env: &Env, bench: &BenchLab) -> anyhow::Result<DaemonBench> {
    let n = env.pick(10_000, 1_000);
    let (save, json) = rules::generate(env, n)?;
    let modes: &[ProxyMode] = if env.quick {
        &[ProxyMode::Iptables]
    } else {
        &[ProxyMode::Iptables, ProxyMode::Nftables]
    };
    let mut runs = Vec::new();
    for &mode in modes {
        let file = if mode == ProxyMode::Iptables { &save } else { &json };
        runs.push(mode_run(env, n, mode, file)?);
    }
    let traffic = traffic(env, bench)?;
    Ok(DaemonBench {
        services: n,
        runs,
        traffic: Some(traffic),
    })
}

/// `d8-trace daemon` in `ns` with `args` added, stderr to `log`; the allocator's settings
/// ([`MALLOC_ENV`]) as the manifest sets them.
struct Daemon {
    child: Child,
    log: std::path::PathBuf,
}

impl Daemon {
    fn start(env: &Env, ns: &str, args: &[&str], log: std::path::PathBuf) -> anyhow::Result<Daemon> {
        let err = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(&env.d8_trace)
            .args(["daemon", "--netns", ns, "--metrics-addr", &METRICS.to_string()])
            .args(args)
            .envs(MALLOC_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("spawning {} daemon", env.d8_trace.display()))?;
        Ok(Daemon { child, log })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Waits for "daemon ready" on stderr.
    fn wait_ready(&mut self, within: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        loop {
            if std::fs::read_to_string(&self.log).is_ok_and(|t| t.contains("daemon ready")) {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("d8-trace daemon exited ({status}):\n{}", self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("d8-trace daemon not ready within {within:?}:\n{}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits (the daemon detaches within seconds).
    fn stop(mut self) -> anyhow::Result<()> {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!("d8-trace daemon did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The daemon's `/metrics`, whole (the lab's HTTP client cuts long answers; this one has a series
/// per Service); empty when it does not answer.
fn scrape(ns: &str) -> String {
    use std::io::{Read, Write};
    let body = lab::in_netns(ns, || {
        let io = |e: std::io::Error| lab::Error::Io(e.to_string());
        let mut s = std::net::TcpStream::connect_timeout(&METRICS.into(), Duration::from_secs(5)).map_err(io)?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(io)?;
        s.write_all(b"GET /metrics HTTP/1.0\r\nConnection: close\r\n\r\n")
            .map_err(io)?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(io)?;
        Ok(text)
    })
    .unwrap_or_default();
    body.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
}

/// What the sampler saw.
#[derive(Default)]
struct Samples {
    healthz_max_ms: [f64; 2],
    healthz: u64,
    healthz_failed: u64,
    daemon_rss_kib: u64,
    sum_kib: u64,
    child_hwm_kib: u64,
    child_names: Vec<String>,
}

/// Samples `/healthz` and memory until `stop`. `phase`: 0 before the daemon is ready (`/healthz`
/// not counted: it is not listening yet), 1 after, 2 while the rules are re-read.
struct Sampler {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    samples: Arc<Mutex<Samples>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(ns: &str, pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Samples::default()));
        let (s1, p1, m1, ns1) = (stop.clone(), phase.clone(), samples.clone(), ns.to_string());
        let healthz = std::thread::spawn(move || {
            // One thread in the node's namespace for the whole run: the time measured is the
            // connection and the answer, not a thread started and moved for each request.
            if lab::netns::enter(&ns1).is_err() {
                return;
            }
            while !s1.load(Ordering::Relaxed) {
                let t = Instant::now();
                let p = p1.load(Ordering::Relaxed);
                if p == 0 {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                let ok = healthz_ok();
                let ms = t.elapsed().as_secs_f64() * 1000.0;
                {
                    let mut m = m1.lock().unwrap_or_else(|e| e.into_inner());
                    m.healthz += 1;
                    if !ok {
                        m.healthz_failed += 1;
                    }
                    m.healthz_max_ms[0] = m.healthz_max_ms[0].max(ms);
                    if p == 2 {
                        m.healthz_max_ms[1] = m.healthz_max_ms[1].max(ms);
                    }
                }
                std::thread::sleep(Duration::from_millis(100).saturating_sub(t.elapsed()));
            }
        });
        let (s2, m2) = (stop.clone(), samples.clone());
        let memory = std::thread::spawn(move || {
            while !s2.load(Ordering::Relaxed) {
                let (rss, _) = common::rss_kib(pid).unwrap_or((0, 0));
                let mut sum = rss;
                let own = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
                for child in children(pid) {
                    // Forked but not yet exec'd: the daemon's own pages, shared, not a tool's.
                    if std::fs::read_link(format!("/proc/{child}/exe")).ok() == own {
                        continue;
                    }
                    let Ok(status) = std::fs::read_to_string(format!("/proc/{child}/status")) else {
                        continue;
                    };
                    let field = |name: &str| {
                        status
                            .lines()
                            .find_map(|l| l.strip_prefix(name))
                            .map(|v| v.trim().trim_end_matches("kB").trim().to_string())
                    };
                    let kib = |name: &str| field(name).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                    sum += kib("VmRSS:");
                    let mut m = m2.lock().unwrap_or_else(|e| e.into_inner());
                    m.child_hwm_kib = m.child_hwm_kib.max(kib("VmHWM:"));
                    if let Some(name) = field("Name:")
                        && !m.child_names.contains(&name)
                    {
                        m.child_names.push(name);
                    }
                }
                let mut m = m2.lock().unwrap_or_else(|e| e.into_inner());
                m.daemon_rss_kib = m.daemon_rss_kib.max(rss);
                m.sum_kib = m.sum_kib.max(sum);
                drop(m);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Sampler {
            stop,
            phase,
            samples,
            threads: vec![healthz, memory],
        }
    }

    fn finish(self) -> Samples {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        std::mem::take(&mut *self.samples.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// `GET /healthz` from this thread's namespace answered 200 (within 5 s).
fn healthz_ok() -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&METRICS.into(), Duration::from_secs(5)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /healthz HTTP/1.0\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200") || answer.starts_with(b"HTTP/1.0 200")
}

/// The children of every thread of `pid` (the rule reader spawns its tool from its own thread).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The API's objects for `gen_large.py`'s `n` Services: one Service and one EndpointSlice each (5
/// endpoints on other nodes), shaped as a real cluster's (managedFields, labels, owner references,
/// the last-change annotation), so that what the daemon lists and keeps is of realistic size.
fn api_objects(n: usize) -> Vec<Value> {
    let mut items = Vec::with_capacity(2 * n);
    for i in 0..n {
        let (ns, name) = (format!("ns{}", i % 100), format!("svc{i}"));
        let cip = format!("10.{}.{}.{}", 96 + i / 60000, (i / 250) % 256, i % 250 + 1);
        let uid = format!("00000000-0000-4000-8000-{i:012}");
        items.push(json!({
            "kind": "Service", "apiVersion": "v1",
            "metadata": {
                "namespace": ns, "name": name, "uid": uid, "creationTimestamp": "2026-12-01T10:00:00Z",
                "labels": {"app": name, "app.kubernetes.io/part-of": "bench"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": format!(
                    "{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"{name}\",\"namespace\":\"{ns}\"}},\"spec\":{{\"ports\":[{{\"name\":\"http\",\"port\":80,\"targetPort\":8080}}],\"selector\":{{\"app\":\"{name}\"}}}}}}\n")},
                "managedFields": [{"manager": "kubectl-client-side-apply", "operation": "Update", "apiVersion": "v1",
                    "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}},
                        "f:labels": {".": {}, "f:app": {}}},
                        "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {".": {}, "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {}, "f:protocol": {}, "f:targetPort": {}}},
                        "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}}]
            },
            "spec": {
                "type": "ClusterIP", "clusterIP": cip, "clusterIPs": [cip], "ipFamilies": ["IPv4"],
                "ipFamilyPolicy": "SingleStack", "internalTrafficPolicy": "Cluster", "sessionAffinity": "None",
                "selector": {"app": name},
                "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]
            },
            "status": {"loadBalancer": {}}
        }));
        items.push(endpoint_slice(i, true));
    }
    items
}

/// `svc{i}`'s EndpointSlice; `ready` is its first endpoint's readiness (the changes flip it).
fn endpoint_slice(i: usize, ready: bool) -> Value {
    let (ns, name) = (format!("ns{}", i % 100), format!("svc{i}"));
    let endpoints: Vec<Value> = (0..5)
        .map(|j| {
            let ip = format!("10.{}.{}.{}", 240 + j, (i / 256) % 256, i % 256);
            let ready = ready || j > 0;
            json!({
                "addresses": [ip],
                "conditions": {"ready": ready, "serving": ready, "terminating": false},
                "nodeName": format!("node-{}", (i + j) % 1000 + 1),
                "zone": format!("zone-{}", j % 3),
                "targetRef": {"kind": "Pod", "namespace": ns, "name": format!("{name}-{j}"),
                              "uid": format!("00000000-0000-4000-9000-{:012}", i * 5 + j)}
            })
        })
        .collect();
    json!({
        "kind": "EndpointSlice", "apiVersion": "discovery.k8s.io/v1",
        "metadata": {
            "namespace": ns, "name": format!("{name}-abcde"), "generateName": format!("{name}-"),
            "uid": format!("00000000-0000-4000-a000-{i:012}"), "creationTimestamp": "2026-12-01T10:00:00Z",
            "labels": {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                       "app": name},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-01T10:00:00Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": name, "controller": true,
                                 "blockOwnerDeletion": true, "uid": format!("00000000-0000-4000-8000-{i:012}")}],
            "managedFields": [{"manager": "kube-controller-manager", "operation": "Update", "apiVersion": "discovery.k8s.io/v1",
                "time": "2026-12-01T10:00:00Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:addressType": {}, "f:endpoints": {}, "f:metadata": {"f:annotations": {".": {}, "f:endpoints.kubernetes.io/last-change-trigger-time": {}},
                    "f:generateName": {}, "f:labels": {".": {}, "f:endpointslice.kubernetes.io/managed-by": {}, "f:kubernetes.io/service-name": {}},
                    "f:ownerReferences": {".": {}, "k:{\"uid\":\"x\"}": {}}}, "f:ports": {}}}]
        },
        "addressType": "IPv4",
        "endpoints": endpoints,
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}]
    })
}

/// The API server in `lab`'s node namespace on loopback, serving the lab's own objects and `n`
/// generated Services; its history compacted, so watches start from the LIST.
fn api_server(lab: &Lab, n: usize) -> anyhow::Result<ApiServer> {
    let ns = lab.node_ns().to_string();
    let server = ApiServer::start_with(move || {
        lab::in_netns(&ns, || {
            std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| lab::Error::Io(e.to_string()))
        })
        .map_err(std::io::Error::other)
    })
    .context("starting the API server")?;
    let mut list = lab.snapshot_json();
    let items = list["items"].as_array_mut().context("the lab's snapshot has items")?;
    items.extend(api_objects(n));
    server.sync(&list);
    server.compact();
    Ok(server)
}

/// Waits until `done` holds of a scrape, or fails with the last one.
fn wait_for(ns: &str, within: Duration, what: &str, done: impl Fn(&str) -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let text = scrape(ns);
        if done(&text) {
            return Ok(());
        }
        if Instant::now() > deadline {
            let shown: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with("d8_trace_") && !l.contains("service=\""))
                .collect();
            bail!(
                "{what} not within {within:?}; metrics (per-Service series left out):\n{}",
                shown.join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

const READS: &str = r#"d8_trace_rules_reads_total{result="read"}"#;

/// `pid`'s CPU in % of a core while `f` runs, and how long that was (s).
fn cpu_pct(pid: u32, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<(f64, f64)> {
    let (c0, t0) = (common::cpu_time(pid)?, Instant::now());
    f()?;
    let (c1, wall) = (common::cpu_time(pid)?, t0.elapsed().as_secs_f64());
    Ok(((c1 - c0).as_secs_f64() / wall * 100.0, wall))
}

fn mode_run(env: &Env, n: usize, mode: ProxyMode, file: &Path) -> anyhow::Result<ModeRun> {
    let name = if mode == ProxyMode::Iptables {
        "iptables"
    } else {
        "nftables"
    };
    let lab = Lab::up(ClusterSpec::new(), mode).map_err(|e| anyhow!("lab up: {e}"))?;
    let ns = lab.node_ns().to_string();
    let t = Instant::now();
    rules::load(&ns, mode, file)?;
    eprintln!(
        "bench daemon: {name}: {n} Services loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let server = api_server(&lab, n)?;
    let kubeconfig = env.work.join(format!("daemon-{name}.kubeconfig"));
    std::fs::write(&kubeconfig, server.kubeconfig())?;
    let node = lab.spec().node_name.clone();
    let log = env.work.join(format!("daemon-{name}.log"));
    let spawned = Instant::now();
    let mut daemon = Daemon::start(
        env,
        &ns,
        &[
            "--kubeconfig",
            kubeconfig.to_str().context("utf-8 path")?,
            "--node",
            &node,
        ],
        log,
    )?;
    let pid = daemon.pid();
    let sampler = Sampler::start(&ns, pid);
    daemon.wait_ready(Duration::from_secs(180))?;
    let ready_s = spawned.elapsed().as_secs_f64();
    sampler.phase.store(1, Ordering::Relaxed);
    // Settled: the API listed (api_up 1) and the rules read twice (the first read, then the one
    // kept under the ruleset's generation; see cmd/daemon/source.rs).
    wait_for(
        &ns,
        Duration::from_secs(180),
        "the API synced and the rules read twice",
        |t| metric(t, "d8_trace_api_up") == Some(1.0) && metric(t, READS).unwrap_or(0.0) >= 2.0,
    )?;
    let settled_s = spawned.elapsed().as_secs_f64();
    let settled = Instant::now();
    let (initial_lists, initial_watches) = (server.lists(), server.watches());
    eprintln!(
        "bench daemon: {name}: ready after {ready_s:.1} s, settled after {settled_s:.1} s ({initial_lists} LIST pages, {initial_watches} WATCHes)"
    );

    // The model of the second read is in use when it is counted, but the first verdict round
    // over it comes at the next verdict tick: startup work (the daemon's main thread used ~0.1 s
    // of CPU in the 2 s after its second read at 10,000 Services), not the daemon at rest.
    std::thread::sleep(d8_trace::cmd::daemon::VERDICT_EVERY + Duration::from_secs(1));
    let window = Duration::from_secs(env.pick(45, 4));
    let (quiet_cpu_pct, quiet_s) = cpu_pct(pid, || {
        std::thread::sleep(window);
        Ok(())
    })?;
    let folds = |text: &str| {
        ["service", "whole"]
            .map(|how| metric(text, &format!("d8_trace_api_folds_total{{how=\"{how}\"}}")).unwrap_or(0.0))
    };
    let folds_before = folds(&scrape(&ns));
    let mut changes = 0u64;
    let (changes_cpu_pct, changes_s) = cpu_pct(pid, || {
        let end = Instant::now() + window;
        let mut next = Instant::now();
        while Instant::now() < end {
            // Service i's first endpoint turns unready, then ready again at its next change.
            let i = (changes as usize / 2) % n;
            server.put(endpoint_slice(i, changes % 2 == 1));
            changes += 1;
            next += Duration::from_secs(1);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
        Ok(())
    })?;
    // How the changes reached the model: each changed Service folded alone, or a whole model
    // build (every Service folded again), which one EndpointSlice change should never need.
    let folds_after = folds(&scrape(&ns));
    eprintln!(
        "bench daemon: {name}: CPU {quiet_cpu_pct:.2} % of a core quiet, {changes_cpu_pct:.2} % with {changes} API changes at 1/s (folded: {:.0} per Service, {:.0} whole)",
        folds_after[0] - folds_before[0],
        folds_after[1] - folds_before[1]
    );

    // The rules touched: a table added, then removed (each moves the nf_tables generation).
    sampler.phase.store(2, Ordering::Relaxed);
    let mut reread_s = Vec::new();
    for add in [true, false] {
        let before = metric(&scrape(&ns), READS).unwrap_or(0.0);
        let verb = if add { "add" } else { "delete" };
        common::output("ip", &["netns", "exec", &ns, "nft", verb, "table", "ip", "d8bench"])?;
        let t = Instant::now();
        wait_for(
            &ns,
            Duration::from_secs(120),
            "a rules re-read after the ruleset changed",
            |text| metric(text, READS).unwrap_or(0.0) > before,
        )?;
        reread_s.push(t.elapsed().as_secs_f64());
    }
    sampler.phase.store(1, Ordering::Relaxed);
    let text = scrape(&ns);
    let reads = ["read", "unchanged", "failed", "timeout"]
        .iter()
        .filter_map(|r| {
            metric(&text, &format!("d8_trace_rules_reads_total{{result=\"{r}\"}}")).map(|v| (r.to_string(), v))
        })
        .collect();
    let lost_events = metric(&text, "d8_trace_lost_events").unwrap_or(f64::NAN);
    let after_s = settled.elapsed().as_secs_f64();
    let (later_lists, later_watches) = (server.lists() - initial_lists, server.watches() - initial_watches);
    let (_, hwm) = common::rss_kib(pid)?;
    let samples = sampler.finish();
    daemon.stop()?;
    let run = ModeRun {
        mode: name,
        ready_s,
        settled_s,
        initial_lists,
        initial_watches,
        later_lists,
        later_watches,
        after_s,
        quiet_cpu_pct,
        quiet_s,
        changes_cpu_pct,
        changes_s,
        changes,
        healthz_max_ms: samples.healthz_max_ms[0],
        healthz_reread_max_ms: samples.healthz_max_ms[1],
        healthz_samples: samples.healthz,
        healthz_failed: samples.healthz_failed,
        reread_s,
        reads,
        daemon_peak_mib: hwm.max(samples.daemon_rss_kib) as f64 / 1024.0,
        child_peak_mib: samples.child_hwm_kib as f64 / 1024.0,
        child_names: samples.child_names,
        sampled_sum_mib: samples.sum_kib as f64 / 1024.0,
        lost_events,
    };
    eprintln!(
        "bench daemon: {name}: peak RSS {:.0} MiB + children {:.0} MiB {:?}; /healthz max {:.1} ms ({:.1} ms during re-reads {:?} s); {} LIST, {} WATCH in the {:.0} s after settling",
        run.daemon_peak_mib,
        run.child_peak_mib,
        run.child_names,
        run.healthz_max_ms,
        run.healthz_reread_max_ms,
        run.reread_s,
        run.later_lists,
        run.later_watches,
        run.after_s
    );
    drop(server);
    drop(lab);
    Ok(run)
}

/// The daemon in the bench's small lab (rules only) while clients open new connections to
/// `bench/web` as fast as they can.
fn traffic(env: &Env, bench: &BenchLab) -> anyhow::Result<Traffic> {
    let ns = bench.node_ns().to_string();
    let mut daemon = Daemon::start(env, &ns, &["--no-k8s"], env.work.join("daemon-traffic.log"))?;
    daemon.wait_ready(Duration::from_secs(60))?;
    let secs = env.pick(10, 2);
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let mut conns = None;
    let (cpu_pct, wall) = cpu_pct(daemon.pid(), || {
        conns = Some(common::conns_for(
            bench.client_ns(),
            web,
            Duration::from_secs(secs),
            None,
        )?);
        Ok(())
    })?;
    let conns = conns.context("the clients ran")?;
    // The flows of the last 2 s are counted at the daemon's next verdict round.
    std::thread::sleep(Duration::from_secs(3));
    let lost_events = metric(&scrape(&ns), "d8_trace_lost_events").unwrap_or(f64::NAN);
    daemon.stop()?;
    let t = Traffic {
        flows_per_s: conns.rate(),
        cpu_pct,
        secs: wall,
        lost_events,
        failed: conns.failed,
    };
    eprintln!(
        "bench daemon: {:.0} new connections/s for {:.0} s: daemon CPU {:.1} % of a core, {} lost events",
        t.flows_per_s, t.secs, t.cpu_pct, t.lost_events
    );
    Ok(t)
}

/// API requests per node per hour: the initial LIST pages and WATCHes, what came after them (at
/// its measured rate), and the watches' renewals (each kind's watch ends after `timeoutSeconds`,
/// [`WATCH_SECS`]; a window shorter than that sees none, so they are counted from it).
pub fn requests_per_hour(r: &ModeRun) -> f64 {
    let later = (r.later_lists + r.later_watches) as f64 / r.after_s.max(1.0) * 3600.0;
    let renewals = KINDS as f64 * 3600.0 / f64::from(WATCH_SECS);
    (r.initial_lists + r.initial_watches) as f64 + later.max(renewals)
}

/// No LIST after the initial ones, and no more WATCHes than renewals allow.
pub fn only_renewals(r: &ModeRun) -> bool {
    let allowed = KINDS * (1 + (r.after_s / f64::from(WATCH_SECS)) as u64);
    r.later_lists == 0 && r.later_watches <= allowed
}
