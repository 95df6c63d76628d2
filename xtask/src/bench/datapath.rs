//! Datapath cost: iperf3 throughput through `bench/iperf`'s ClusterIP with d8-trace off, tracing
//! another Service (`bench/other`) and tracing this one, and short connections per second through
//! `bench/web` the same three ways and a fourth, with `tcpdump` capturing in the node instead of
//! d8-trace (what an operator would run; skipped by name where tcpdump is missing). Both kinds of
//! round also run with empty programs attached where d8-trace's full set attaches and no d8-trace
//! (`hooks::EmptyHooks`): the on/off that programs being there at all cost, the floor that no
//! optimisation of d8-trace's programs goes below.
//!
//! Runs are interleaved in rounds: each round begins with an "off" run, then the others in an
//! order rotated from round to round, and one more "off" run closes the series. On this machine
//! the speed drifts by a fifth within a minute, so a ratio of medians over the whole series
//! mostly measured the drift (one run's "another Service" came out 13 % below the next run's).
//! Each run is therefore judged against the "off" speed at its own moment, interpolated between
//! its round's "off" run and the next one by its place in the round ([`Runs::refs`]), and a
//! figure's on/off is the median of those per-run ratios.
//!
//! Each run records the load average and what other processes used meanwhile: a run on a busy
//! machine is flagged in the report, not silently averaged in.

use std::{net::SocketAddrV4, time::Duration};

use super::{
    common::{self, BenchLab, Env, Tracer},
    hooks::EmptyHooks,
    tcpdump::{self, Tcpdump},
};

/// One observer's runs in a series of interleaved rounds, each with the "off" speed it is judged
/// against.
#[derive(Default, Clone, Debug)]
pub struct Runs {
    /// The figure per run (Gbit/s, connections/s), in round order.
    pub values: Vec<f64>,
    /// Per run, the "off" speed at its moment: its round's "off" run and the next round's (or the
    /// closing one), weighted by where in the round it ran.
    pub refs: Vec<f64>,
}

impl Runs {
    pub fn median(&self) -> f64 {
        common::median(&self.values)
    }

    /// Each run over the "off" speed at its moment.
    pub fn ratios(&self) -> Vec<f64> {
        self.values.iter().zip(&self.refs).map(|(v, r)| v / r).collect()
    }

    /// The median of [`Self::ratios`]: the on/off figure.
    pub fn on_off(&self) -> f64 {
        common::median(&self.ratios())
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    #[cfg(test)]
    pub fn paired(values: &[f64], refs: &[f64]) -> Self {
        Runs {
            values: values.to_vec(),
            refs: refs.to_vec(),
        }
    }
}

#[derive(Default)]
pub struct Datapath {
    pub rounds: usize,
    pub iperf_secs: u32,
    /// Gbit/s per run, the first of each round.
    pub off: Vec<f64>,
    /// The "off" run that closes the iperf3 series (the reference of the last round's runs).
    pub off_close: f64,
    /// Empty programs at d8-trace's hooks, d8-trace off.
    pub empty: Runs,
    pub other: Runs,
    pub this: Runs,
    /// Flows d8-trace reported while tracing the iperf Service (sanity: it did trace).
    pub this_flows: usize,
    pub conn_secs: u32,
    /// Connections per second per run: off (the first of each round), then empty programs,
    /// tracing `bench/other`, tracing `bench/web`.
    pub conn_off: Vec<f64>,
    pub conn_off_close: f64,
    pub conn_empty: Runs,
    pub conn_other: Runs,
    pub conn_on: Runs,
    /// Connections per second with `tcpdump -i any -s 128 -w /dev/null` in the node and d8-trace
    /// off; empty when [`Self::tcpdump_skipped`] says why.
    pub conn_tcpdump: Runs,
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

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
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

/// Round `round`'s order: "off" first, then `others` rotated by the round's number, so that no
/// observer always runs right after "off", or last.
fn order(round: usize, others: &[Mode]) -> Vec<Mode> {
    let k = round % others.len().max(1);
    std::iter::once(Mode::Off)
        .chain(others[k..].iter().chain(&others[..k]).copied())
        .collect()
}

/// Where a run sat: its round, its place in it ("off" is 0) and the runs per round.
#[derive(Clone, Copy)]
struct Slot {
    round: usize,
    place: usize,
    of: usize,
}

/// The "off" speed at each slot: between its round's "off" run (`off[round]`, place 0) and the
/// next one (the next round's, or `close` after the last round), by its place in the round.
fn references(off: &[f64], close: f64, slots: &[Slot]) -> Vec<f64> {
    slots
        .iter()
        .map(|s| {
            let before = off[s.round];
            let after = off.get(s.round + 1).copied().unwrap_or(close);
            let w = s.place as f64 / s.of as f64;
            before * (1.0 - w) + after * w
        })
        .collect()
}

/// What a series of interleaved rounds measured: the "off" runs, the closing one, and the other
/// observers' runs with their references.
struct Series {
    off: Vec<f64>,
    close: f64,
    runs: Vec<(Mode, Runs)>,
}

impl Series {
    fn take(&mut self, mode: Mode) -> Runs {
        self.runs
            .iter_mut()
            .find(|(m, _)| *m == mode)
            .map(|(_, r)| std::mem::take(r))
            .unwrap_or_default()
    }
}

/// Runs `rounds` rounds of "off" and then `others` ([`order`]), then one closing "off" run;
/// `measure` takes one run's figure.
fn series(
    rounds: usize,
    others: &[Mode],
    mut measure: impl FnMut(usize, Mode) -> anyhow::Result<f64>,
) -> anyhow::Result<Series> {
    let mut off = Vec::new();
    let mut taken: Vec<(Mode, Vec<f64>, Vec<Slot>)> = others.iter().map(|&m| (m, Vec::new(), Vec::new())).collect();
    for round in 0..rounds {
        let modes = order(round, others);
        for (place, &mode) in modes.iter().enumerate() {
            let value = measure(round, mode)?;
            if mode == Mode::Off {
                off.push(value);
                continue;
            }
            let (_, values, slots) = taken
                .iter_mut()
                .find(|(m, _, _)| *m == mode)
                .expect("a mode of the round");
            values.push(value);
            slots.push(Slot {
                round,
                place,
                of: modes.len(),
            });
        }
    }
    let close = measure(rounds, Mode::Off)?;
    let runs = taken
        .into_iter()
        .map(|(mode, values, slots)| {
            let refs = references(&off, close, &slots);
            (mode, Runs { values, refs })
        })
        .collect();
    Ok(Series { off, close, runs })
}

pub fn run(env: &Env, lab: &BenchLab) -> anyhow::Result<Datapath> {
    let rounds = env.pick(11, 1);
    let iperf_secs = env.pick(3, 1);
    let conn_secs = env.pick(3, 1);
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
    let mut iperf = series(rounds, &[Mode::Empty, Mode::Other, Mode::This], |round, mode| {
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
        eprintln!(
            "bench datapath: round {}/{rounds} {:<5} {gbps:6.2} Gbit/s",
            (round + 1).min(rounds),
            mode.name()
        );
        Ok(gbps)
    })?;
    d.empty = iperf.take(Mode::Empty);
    d.other = iperf.take(Mode::Other);
    d.this = iperf.take(Mode::This);
    (d.off, d.off_close) = (iperf.off, iperf.close);

    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let dur = Duration::from_secs(conn_secs.into());
    let others: &[Mode] = if d.tcpdump_skipped.is_some() {
        &[Mode::Empty, Mode::Other, Mode::This]
    } else {
        &[Mode::Empty, Mode::Other, Mode::This, Mode::Tcpdump]
    };
    if let Some(why) = &d.tcpdump_skipped {
        eprintln!("bench datapath: the tcpdump rounds are skipped: {why}");
    }
    let mut conns = series(rounds, others, |round, mode| {
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
        eprintln!(
            "bench datapath: round {}/{rounds} {:<7} {:8.0} connections/s ({} failed; others used {:.2} cores)",
            (round + 1).min(rounds),
            mode.name(),
            conns.rate(),
            conns.failed,
            d.others.last().copied().unwrap_or(0.0),
        );
        Ok(conns.rate())
    })?;
    d.conn_empty = conns.take(Mode::Empty);
    d.conn_other = conns.take(Mode::Other);
    d.conn_on = conns.take(Mode::This);
    d.conn_tcpdump = conns.take(Mode::Tcpdump);
    (d.conn_off, d.conn_off_close) = (conns.off, conns.close);
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_rotate_after_off() {
        let others = [Mode::Empty, Mode::Other, Mode::This];
        assert_eq!(order(0, &others), [Mode::Off, Mode::Empty, Mode::Other, Mode::This]);
        assert_eq!(order(1, &others), [Mode::Off, Mode::Other, Mode::This, Mode::Empty]);
        assert_eq!(order(3, &others), order(0, &others));
    }

    #[test]
    fn each_run_is_judged_against_the_off_speed_at_its_moment() {
        // Off ran at 100 and 200 at the starts of rounds 0 and 1, 300 after the last; a run half
        // way through round 0 is judged against 150, the last place of round 1 against 275.
        let slots = [
            Slot {
                round: 0,
                place: 2,
                of: 4,
            },
            Slot {
                round: 1,
                place: 3,
                of: 4,
            },
        ];
        assert_eq!(references(&[100.0, 200.0], 300.0, &slots), [150.0, 275.0]);
        // A machine drifting from 100 to 200 and a run that costs 10 % at every moment: the
        // per-run ratios say 0.9 exactly, where the ratio of medians would say something else.
        let mut n = 0.0;
        let s = series(2, &[Mode::Empty, Mode::This], |_, mode| {
            let speed = 100.0 + 20.0 * n;
            n += 1.0;
            Ok(if mode == Mode::This { speed * 0.9 } else { speed })
        })
        .unwrap();
        assert_eq!(s.off, [100.0, 160.0]);
        assert_eq!(s.close, 220.0);
        let this = &s.runs.iter().find(|(m, _)| *m == Mode::This).unwrap().1;
        for r in this.ratios() {
            assert!((r - 0.9).abs() < 1e-9, "{r}");
        }
        assert!((this.on_off() - 0.9).abs() < 1e-9);
    }
}
