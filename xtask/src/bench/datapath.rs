//! Datapath cost: iperf3 throughput through `bench/iperf`'s ClusterIP with d8-trace off, tracing
//! another Service (`bench/other`) and tracing this one, and short connections per second through
//! `bench/web`, off and tracing it. Runs are interleaved (off, other, this, off, ...) so that the
//! machine's drift (other jobs, thermal, caches) spreads over all three; medians are compared.

use std::{net::SocketAddrV4, time::Duration};

use super::common::{self, BenchLab, Env, Tracer};

pub struct Datapath {
    pub rounds: usize,
    pub iperf_secs: u32,
    /// Gbit/s per run.
    pub off: Vec<f64>,
    pub other: Vec<f64>,
    pub this: Vec<f64>,
    /// Flows d8-trace reported while tracing the iperf Service (sanity: it did trace).
    pub this_flows: usize,
    pub conn_secs: u32,
    /// Connections per second per run.
    pub conn_off: Vec<f64>,
    pub conn_on: Vec<f64>,
    pub conn_failed: u64,
    /// Events lost across all traced runs.
    pub lost_events: u64,
}

#[derive(Clone, Copy)]
enum Mode {
    Off,
    Other,
    This,
}

fn with_trace<T>(
    env: &Env,
    lab: &BenchLab,
    svc: Option<&str>,
    f: impl FnOnce() -> anyhow::Result<T>,
) -> anyhow::Result<(T, Option<common::TraceEnd>)> {
    let Some(svc) = svc else { return Ok((f()?, None)) };
    let tracer = Tracer::start(&env.d8_trace, svc, lab.node_ns())?;
    let value = f();
    let end = tracer.stop()?;
    Ok((value?, Some(end)))
}

pub fn run(env: &Env, lab: &BenchLab) -> anyhow::Result<Datapath> {
    let rounds = env.pick(7, 1);
    let iperf_secs = env.pick(5, 1);
    let conn_secs = env.pick(5, 1);
    let mut d = Datapath {
        rounds,
        iperf_secs,
        off: vec![],
        other: vec![],
        this: vec![],
        this_flows: 0,
        conn_secs,
        conn_off: vec![],
        conn_on: vec![],
        conn_failed: 0,
        lost_events: 0,
    };
    if !env.quick {
        // Warm-up, not recorded: first runs after the lab comes up are slower.
        common::iperf(lab.client_ns(), 2)?;
    }
    for round in 0..rounds {
        for mode in [Mode::Off, Mode::Other, Mode::This] {
            let svc = match mode {
                Mode::Off => None,
                Mode::Other => Some(common::OTHER_SVC),
                Mode::This => Some(common::IPERF_SVC),
            };
            let (gbps, end) = with_trace(env, lab, svc, || common::iperf(lab.client_ns(), iperf_secs))?;
            if let Some(end) = &end {
                d.lost_events += end.lost_events;
                if matches!(mode, Mode::This) {
                    d.this_flows = d.this_flows.max(end.flows);
                }
            }
            match mode {
                Mode::Off => d.off.push(gbps),
                Mode::Other => d.other.push(gbps),
                Mode::This => d.this.push(gbps),
            }
            eprintln!(
                "bench datapath: round {}/{rounds} {:<5} {gbps:6.2} Gbit/s",
                round + 1,
                match mode {
                    Mode::Off => "off",
                    Mode::Other => "other",
                    Mode::This => "this",
                }
            );
        }
    }
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let dur = Duration::from_secs(conn_secs.into());
    for round in 0..rounds {
        for on in [false, true] {
            let svc = on.then_some(common::WEB_SVC);
            let (conns, end) = with_trace(env, lab, svc, || common::conns_for(lab.client_ns(), web, dur, None))?;
            if let Some(end) = &end {
                d.lost_events += end.lost_events;
            }
            d.conn_failed += conns.failed;
            if on {
                d.conn_on.push(conns.rate())
            } else {
                d.conn_off.push(conns.rate())
            }
            eprintln!(
                "bench datapath: round {}/{rounds} {:<3} {:8.0} connections/s ({} failed)",
                round + 1,
                if on { "on" } else { "off" },
                conns.rate(),
                conns.failed
            );
        }
    }
    Ok(d)
}
