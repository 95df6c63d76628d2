//! Datapath cost: iperf3 throughput through `bench/iperf`'s ClusterIP with d8-trace off, tracing
//! another Service (`bench/other`) and tracing this one, and short connections per second through
//! `bench/web` the same three ways and a fourth, with `tcpdump` capturing in the node instead of
//! d8-trace (what an operator would run; skipped by name where tcpdump is missing). Both kinds of
//! round also run with empty programs attached where d8-trace's full set attaches and no d8-trace
//! (`hooks::EmptyHooks`): the on/off that programs being there at all cost, the floor that no
//! optimisation of d8-trace's programs goes below. Runs are interleaved (off, empty, other, this,
//! off, ...) so that the machine's drift (other jobs, thermal, caches) spreads over all of them;
//! medians are compared.
//! Each run records the load average and what other processes used meanwhile: a run on a busy
//! machine is flagged in the report, not silently averaged in.

use std::{net::SocketAddrV4, time::Duration};

use super::{
    common::{self, BenchLab, Env, Tracer},
    hooks::EmptyHooks,
    tcpdump::{self, Tcpdump},
};

#[derive(Default)]
pub struct Datapath {
    pub rounds: usize,
    pub iperf_secs: u32,
    /// Gbit/s per run.
    pub off: Vec<f64>,
    /// Empty programs at d8-trace's hooks, d8-trace off.
    pub empty: Vec<f64>,
    pub other: Vec<f64>,
    pub this: Vec<f64>,
    /// Flows d8-trace reported while tracing the iperf Service (sanity: it did trace).
    pub this_flows: usize,
    pub conn_secs: u32,
    /// Connections per second per run: off, tracing `bench/other`, tracing `bench/web`.
    pub conn_off: Vec<f64>,
    pub conn_empty: Vec<f64>,
    pub conn_other: Vec<f64>,
    pub conn_on: Vec<f64>,
    /// Connections per second with `tcpdump -i any -s 128 -w /dev/null` in the node and d8-trace
    /// off; empty when [`Self::tcpdump_skipped`] says why.
    pub conn_tcpdump: Vec<f64>,
    pub tcpdump_skipped: Option<String>,
    pub conn_failed: u64,
    /// Per run tracing `bench/web`: d8-trace's CPU time per 1,000 flows (ms), and the records its
    /// kernel programs submitted per flow.
    pub cpu_ms_per_1000_flows: Vec<f64>,
    pub records_per_flow: Vec<f64>,
    /// Per short-connection run tracing `bench/other`: d8-trace's CPU time per 1,000 connections
    /// of the load (ms; none of them is traced, so this is what merely running costs).
    pub other_cpu_ms_per_1000_conns: Vec<f64>,
    /// Events lost across all traced runs.
    pub lost_events: u64,
    /// Per run (all of them, in order): cores used by other processes, and the 1-minute load
    /// average when it started.
    pub others: Vec<f64>,
    pub loads: Vec<f64>,
}

impl Datapath {
    /// Runs during which other processes used more than [`common::BUSY_CORES`].
    pub fn busy_runs(&self) -> usize {
        self.others.iter().filter(|&&c| c > common::BUSY_CORES).count()
    }
}

fn load1() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

#[derive(Clone, Copy)]
enum Mode {
    Off,
    /// Empty programs at d8-trace's hooks, d8-trace off.
    Empty,
    Other,
    This,
    /// tcpdump capturing in the node, d8-trace off (short connections only).
    Tcpdump,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Empty => "empty",
            Mode::Other => "other",
            Mode::This => "this",
            Mode::Tcpdump => "tcpdump",
        }
    }
}

/// What runs beside the traffic of one run.
enum Observer<'a> {
    Nothing,
    EmptyHooks,
    Trace(&'a str),
    Tcpdump,
}

/// Runs `f` with d8-trace tracing a Service, tcpdump capturing or nothing, recording what else
/// the machine did meanwhile.
fn with_trace<T>(
    env: &Env,
    lab: &BenchLab,
    observer: Observer,
    d: &mut Datapath,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Option<common::TraceEnd>)> {
    d.loads.push(load1());
    let others = common::OthersCpu::start();
    match observer {
        Observer::Nothing => {
            let value = f()?;
            d.others.push(others.finish());
            Ok((value, None))
        }
        Observer::EmptyHooks => {
            let hooks = EmptyHooks::attach(lab.node_ns())?;
            let value = f();
            drop(hooks);
            d.others.push(others.finish());
            Ok((value?, None))
        }
        Observer::Tcpdump => {
            let capture = Tcpdump::start(lab.node_ns())?;
            let value = f();
            capture.stop()?;
            d.others.push(others.finish());
            Ok((value?, None))
        }
        Observer::Trace(svc) => {
            let tracer = Tracer::start(&env.d8_trace, svc, lab.node_ns())?;
            let value = f();
            let end = tracer.stop()?;
            d.others.push(others.finish());
            Ok((value?, Some(end)))
        }
    }
}

pub fn run(env: &Env, lab: &BenchLab) -> anyhow::Result<Datapath> {
    let rounds = env.pick(7, 1);
    let iperf_secs = env.pick(5, 1);
    let conn_secs = env.pick(5, 1);
    let mut d = Datapath {
        rounds,
        iperf_secs,
        conn_secs,
        tcpdump_skipped: tcpdump::unavailable(),
        ..Datapath::default()
    };
    if !env.quick {
        // Warm-up, not recorded: first runs after the lab comes up are slower.
        common::iperf(lab.client_ns(), 2)?;
    }
    for round in 0..rounds {
        for mode in [Mode::Off, Mode::Empty, Mode::Other, Mode::This] {
            let observer = match mode {
                Mode::Other => Observer::Trace(common::OTHER_SVC),
                Mode::This => Observer::Trace(common::IPERF_SVC),
                Mode::Off => Observer::Nothing,
                Mode::Empty => Observer::EmptyHooks,
                Mode::Tcpdump => unreachable!("the iperf3 rounds have no tcpdump run"),
            };
            let (gbps, end) = with_trace(env, lab, observer, &mut d, || {
                common::iperf(lab.client_ns(), iperf_secs)
            })?;
            if let Some(end) = &end {
                d.lost_events += end.lost_events;
                if matches!(mode, Mode::This) {
                    d.this_flows = d.this_flows.max(end.flows);
                }
            }
            match mode {
                Mode::Off => d.off.push(gbps),
                Mode::Empty => d.empty.push(gbps),
                Mode::Tcpdump => unreachable!("the iperf3 rounds have no tcpdump run"),
                Mode::Other => d.other.push(gbps),
                Mode::This => d.this.push(gbps),
            }
            eprintln!(
                "bench datapath: round {}/{rounds} {:<5} {gbps:6.2} Gbit/s",
                round + 1,
                mode.name()
            );
        }
    }
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let dur = Duration::from_secs(conn_secs.into());
    let modes: &[Mode] = if d.tcpdump_skipped.is_some() {
        &[Mode::Off, Mode::Empty, Mode::Other, Mode::This]
    } else {
        &[Mode::Off, Mode::Empty, Mode::Other, Mode::This, Mode::Tcpdump]
    };
    if let Some(why) = &d.tcpdump_skipped {
        eprintln!("bench datapath: the tcpdump rounds are skipped: {why}");
    }
    for round in 0..rounds {
        for &mode in modes {
            let observer = match mode {
                Mode::Off => Observer::Nothing,
                Mode::Empty => Observer::EmptyHooks,
                Mode::Other => Observer::Trace(common::OTHER_SVC),
                Mode::This => Observer::Trace(common::WEB_SVC),
                Mode::Tcpdump => Observer::Tcpdump,
            };
            let (conns, end) = with_trace(env, lab, observer, &mut d, || {
                common::conns_for(lab.client_ns(), web, dur, None)
            })?;
            if let Some(end) = &end {
                d.lost_events += end.lost_events;
                if matches!(mode, Mode::This) && end.flows > 0 {
                    if let Some(cpu) = end.cpu {
                        d.cpu_ms_per_1000_flows
                            .push(cpu.as_secs_f64() * 1000.0 * 1000.0 / end.flows as f64);
                    }
                    if let Some(records) = end.records {
                        d.records_per_flow.push(records as f64 / end.flows as f64);
                    }
                }
                if matches!(mode, Mode::Other)
                    && conns.ok > 0
                    && let Some(cpu) = end.cpu
                {
                    d.other_cpu_ms_per_1000_conns
                        .push(cpu.as_secs_f64() * 1000.0 * 1000.0 / conns.ok as f64);
                }
            }
            d.conn_failed += conns.failed;
            match mode {
                Mode::Off => d.conn_off.push(conns.rate()),
                Mode::Empty => d.conn_empty.push(conns.rate()),
                Mode::Other => d.conn_other.push(conns.rate()),
                Mode::This => d.conn_on.push(conns.rate()),
                Mode::Tcpdump => d.conn_tcpdump.push(conns.rate()),
            }
            eprintln!(
                "bench datapath: round {}/{rounds} {:<7} {:8.0} connections/s ({} failed; others used {:.2} cores)",
                round + 1,
                mode.name(),
                conns.rate(),
                conns.failed,
                d.others.last().copied().unwrap_or(0.0),
            );
        }
    }
    Ok(d)
}
