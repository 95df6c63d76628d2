//! `cargo xtask bench --only profile`: where the CPU of a short connection goes when d8-trace
//! traces it, against the same load while it traces another Service. BPF statistics (the hooks
//! section) time the programs' bodies only, and d8-trace's own CPU is one more figure; between
//! them and the on/off ratio is what neither sees: the programs' dispatch, the time the load's
//! own threads and the rest of the kernel take longer per connection, and the time the cores sit
//! idle. System-wide `perf record` samples of the whole machine, taken in the traffic windows
//! only, are sorted into those parts and divided by the connections completed in them.
//!
//! perf is the bench's own child, stopped by its pid (SIGINT, so it writes its file) on every
//! path; its samples file is removed when read. Without perf the section is skipped by name.

use std::{
    collections::BTreeMap,
    net::SocketAddrV4,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};

use super::common::{self, BenchLab, Env, Tracer};

/// Samples a second per CPU: a prime, so the timer does not beat with the load's periods.
pub const HZ: u32 = 199;

/// Where a sample's CPU time went, in the order the report lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// The client threads, the servers, and every kernel path of theirs but our programs.
    Load,
    /// The netfilter programs' bodies (`nf_pre`, `nf_post` and their IPv6 twins).
    Netfilter,
    /// The tracepoint programs' bodies.
    Tracepoints,
    /// Calling the programs, outside their bodies (`nf_hook_run_bpf`, `trace_call_bpf`, ...).
    Dispatch,
    /// d8-trace's process: draining the ring buffer, the flow table, live lines.
    D8Trace,
    /// perf itself writing its samples: the same in both modes.
    Perf,
    /// Cores with nothing to run.
    Idle,
}

impl Part {
    pub const ALL: [Part; 7] = [
        Part::Load,
        Part::Netfilter,
        Part::Tracepoints,
        Part::Dispatch,
        Part::D8Trace,
        Part::Perf,
        Part::Idle,
    ];

    pub fn describe(self) -> &'static str {
        match self {
            Part::Load => "the load's own work (client and server threads, the kernel's TCP/IP, conntrack, NAT)",
            Part::Netfilter => "d8-trace's netfilter programs (their bodies)",
            Part::Tracepoints => "d8-trace's tracepoint programs (their bodies)",
            Part::Dispatch => "calling the programs (netfilter and tracepoint dispatch around them)",
            Part::D8Trace => "d8-trace's process (ring buffer, flow table, live lines)",
            Part::Perf => "perf writing its samples",
            Part::Idle => "idle cores",
        }
    }
}

/// The samples of one mode (d8-trace tracing another Service, or this one).
#[derive(Debug, Default, Clone)]
pub struct Sampled {
    /// Connections completed in the sampled windows.
    pub connections: u64,
    pub samples: BTreeMap<Part, u64>,
}

impl Sampled {
    /// Microseconds of CPU per connection in `part`.
    pub fn us_per_connection(&self, part: Part) -> f64 {
        if self.connections == 0 {
            return f64::NAN;
        }
        *self.samples.get(&part).unwrap_or(&0) as f64 / f64::from(HZ) / self.connections as f64 * 1e6
    }

    pub fn total_us(&self) -> f64 {
        Part::ALL.iter().map(|p| self.us_per_connection(*p)).sum()
    }
}

pub struct Profile {
    pub rounds: u32,
    pub secs: u32,
    pub other: Sampled,
    pub this: Sampled,
    /// Why the section did not run here (perf missing), shown by name.
    pub skipped: Option<String>,
}

/// Why perf cannot sample here (`None`: it can).
pub fn unavailable() -> Option<String> {
    common::missing_tool("perf", "`cargo xtask setup` installs linux-perf")
}

pub fn run(env: &Env, lab: &BenchLab) -> anyhow::Result<Profile> {
    let mut p = Profile {
        rounds: env.pick(3, 1),
        secs: env.pick(5, 1),
        other: Sampled::default(),
        this: Sampled::default(),
        skipped: unavailable(),
    };
    if let Some(why) = &p.skipped {
        eprintln!("bench profile: skipped: {why}");
        return Ok(p);
    }
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let dur = Duration::from_secs(p.secs.into());
    let file = SamplesFile(std::env::temp_dir().join(format!("d8-bench-profile-{}.data", std::process::id())));
    for round in 0..p.rounds {
        for (svc, into) in [(common::OTHER_SVC, &mut p.other), (common::WEB_SVC, &mut p.this)] {
            let tracer = Tracer::start(&env.d8_trace, svc, lab.node_ns())?;
            let perf = Perf::start(&file.0)?;
            let conns = common::conns_for(lab.client_ns(), web, dur, None);
            // perf stops before d8-trace does: its exit and report are no part of the traffic.
            let stopped = perf.stop();
            tracer.stop()?;
            stopped?;
            let conns = conns?;
            into.connections += conns.ok;
            let samples = read_samples(&file.0);
            // Gone before the next round: perf would keep an existing file as `<file>.old`.
            file.remove();
            for (part, n) in samples? {
                *into.samples.entry(part).or_default() += n;
            }
            eprintln!(
                "bench profile: round {}/{} tracing {svc}: {:.0} connections/s",
                round + 1,
                p.rounds,
                conns.rate()
            );
        }
    }
    Ok(p)
}

/// perf's samples file, removed on every way out of the section.
struct SamplesFile(PathBuf);

impl SamplesFile {
    fn remove(&self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

impl Drop for SamplesFile {
    fn drop(&mut self) {
        self.remove();
    }
}

/// `perf record -a -g` on the whole machine, the bench's own child.
struct Perf {
    child: Option<Child>,
}

impl Perf {
    fn start(file: &Path) -> anyhow::Result<Self> {
        let child = Command::new("perf")
            .args(["record", "-a", "-g", "-q", "-F", &HZ.to_string(), "-o"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawning perf record")?;
        let mut perf = Self { child: Some(child) };
        // perf opens one event per CPU before it samples; it says nothing when it is ready.
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = perf.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            let err = perf.stderr();
            perf.child = None;
            bail!("perf record exited at once ({status}): {err}");
        }
        Ok(perf)
    }

    fn stderr(&mut self) -> String {
        use std::io::Read as _;
        let mut s = String::new();
        if let Some(e) = self.child.as_mut().and_then(|c| c.stderr.as_mut()) {
            let _ = e.read_to_string(&mut s);
        }
        s.trim().to_string()
    }

    /// SIGINT (perf then writes its file) and the wait for it.
    fn stop(mut self) -> anyhow::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        // SAFETY: kill(2) on the pid of our own child, not yet waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().context("waiting for perf record")?;
        // perf exits with the signal's status after a clean SIGINT on some versions.
        if !status.success() && status.code().is_some_and(|c| c != 130) {
            self.child = Some(child);
            bail!("perf record failed ({status}): {}", self.stderr());
        }
        Ok(())
    }
}

impl Drop for Perf {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SAFETY: as in `stop`: our own child.
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let _ = child.wait();
        }
    }
}

/// The samples in perf's `file`, per part.
fn read_samples(file: &Path) -> anyhow::Result<BTreeMap<Part, u64>> {
    let out = Command::new("perf")
        .args(["script", "-F", "comm,ip,sym", "-i"])
        .arg(file)
        .stderr(Stdio::null())
        .output()
        .context("running perf script")?;
    if !out.status.success() {
        bail!("perf script failed ({})", out.status);
    }
    Ok(sort_samples(&String::from_utf8_lossy(&out.stdout)))
}

/// `perf script -F comm,ip,sym` output (a line with the command name, then one tab-indented
/// line per frame of the call chain, innermost first; samples separated by a blank line), per
/// part.
pub fn sort_samples(text: &str) -> BTreeMap<Part, u64> {
    let mut parts = BTreeMap::new();
    let mut comm: Option<&str> = None;
    let mut frames: Vec<&str> = Vec::new();
    let mut flush = |comm: &mut Option<&str>, frames: &mut Vec<&str>| {
        if let Some(c) = comm.take() {
            *parts.entry(part_of(c, frames)).or_insert(0) += 1;
        }
        frames.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut comm, &mut frames);
        } else if line.starts_with('\t') {
            // `<address> <symbol>`; an unknown symbol reads `[unknown]`.
            if let Some((_, sym)) = line.trim().split_once(' ') {
                frames.push(sym.trim());
            }
        } else {
            flush(&mut comm, &mut frames);
            comm = Some(line.trim());
        }
    }
    flush(&mut comm, &mut frames);
    parts
}

/// The part one sample belongs to, from its command name and call chain.
fn part_of(comm: &str, frames: &[&str]) -> Part {
    if comm == "d8-trace" || comm == "d8-live" {
        return Part::D8Trace;
    }
    if comm == "perf" || comm.starts_with("perf-") {
        return Part::Perf;
    }
    // A program's frame is `bpf_prog_<tag>_<name>`.
    let program = |names: &[&str]| {
        frames
            .iter()
            .any(|f| f.starts_with("bpf_prog_") && names.iter().any(|n| f.ends_with(n)))
    };
    if program(&["_nf_pre", "_nf_pre6", "_nf_post", "_nf_post6"]) {
        return Part::Netfilter;
    }
    if program(&[
        "_inet_sock_set_state",
        "_kfree_skb",
        "_tcp_send_reset",
        "_tcp_receive_reset",
    ]) {
        return Part::Tracepoints;
    }
    const DISPATCH: [&str; 5] = [
        "nf_hook_run_bpf",
        "trace_call_bpf",
        "perf_trace_run_bpf_submit",
        "bpf_trace_run2",
        "bpf_trace_run3",
    ];
    if frames.iter().any(|f| DISPATCH.contains(f)) {
        return Part::Dispatch;
    }
    // The idle task's samples, but not the packets it handles in softirq between halts.
    if comm == "swapper" && !frames.iter().any(|f| *f == "handle_softirqs" || *f == "net_rx_action") {
        return Part::Idle;
    }
    Part::Load
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_sorted_by_where_their_time_went() {
        let text = "\
swapper 
\tffffffff8224379b pv_native_safe_halt
\tffffffff813d09d6 do_idle

swapper 
\tffffffff81e000aa bpf_prog_356afccefcb70231_nf_post
\tffffffff81e000bb nf_hook_run_bpf
\tffffffff81e000cc nf_hook_slow
\tffffffff81e000dd net_rx_action
\tffffffff81e000ee handle_softirqs

xtask 
\tffffffff81e000aa lookup_nulls_elem_raw
\tffffffff81e000ab bpf_prog_1111111111111111_inet_sock_set_state
\tffffffff81e000ac perf_trace_run_bpf_submit

d8lab-web-1-808 
\tffffffff81e000ac perf_trace_run_bpf_submit
\tffffffff81e000ad tcp_set_state

d8lab-web-1-808 
\tffffffff82067b50 tcp_recvmsg_locked

swapper 
\tffffffff82067b50 ip_rcv
\tffffffff81e000dd net_rx_action

d8-trace 
\t           f8350 [unknown]
d8-live 
\t           f8350 __GI___libc_write
perf 
\t           f8350 __GI___libc_write
";
        let parts = sort_samples(text);
        let got: Vec<(Part, u64)> = parts.into_iter().collect();
        assert_eq!(
            got,
            vec![
                (Part::Load, 2),
                (Part::Netfilter, 1),
                (Part::Tracepoints, 1),
                (Part::Dispatch, 1),
                (Part::D8Trace, 2),
                (Part::Perf, 1),
                (Part::Idle, 1),
            ]
        );
    }

    #[test]
    fn per_connection_time_divides_the_samples_by_the_rate_and_the_connections() {
        let s = Sampled {
            connections: 1_000,
            samples: [(Part::Netfilter, u64::from(HZ))].into_iter().collect(),
        };
        // One second of CPU over 1,000 connections.
        assert!((s.us_per_connection(Part::Netfilter) - 1_000.0).abs() < 1e-9);
        assert_eq!(s.us_per_connection(Part::Idle), 0.0);
        assert!(Sampled::default().us_per_connection(Part::Load).is_nan());
    }
}
