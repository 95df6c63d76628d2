//! Capacity: the highest new-flow rate this machine pushes through `bench/web` (a new TCP
//! connection and HTTP request per flow) with d8-trace tracing it and `lost_events` at zero, and
//! d8-trace's userspace CPU and RSS at that rate.
//!
//! First the clients run flat out with d8-trace off and then on (the machine's ceiling: clients,
//! servers, kernel and d8-trace share its cores). When the saturated run loses events, paced runs
//! at 80 %, 60 %, 40 % and 20 % of that rate look for the highest rate without loss.

use std::{net::SocketAddrV4, time::Duration};

use super::common::{self, BenchLab, Env, Tracer};

pub struct Step {
    /// Offered rate (None: as fast as the clients go).
    pub offered: Option<f64>,
    pub achieved: f64,
    pub connections: u64,
    pub failed: u64,
    pub flows: usize,
    pub lost_events: u64,
    /// d8-trace's CPU time over the run, in % of one core.
    pub cpu_pct: f64,
    pub rss_mib: f64,
    pub peak_rss_mib: f64,
}

pub struct Capacity {
    pub secs: u32,
    pub off_rate: f64,
    pub steps: Vec<Step>,
}

impl Capacity {
    /// The highest achieved rate among runs without lost events.
    pub fn best(&self) -> Option<&Step> {
        self.steps
            .iter()
            .filter(|s| s.lost_events == 0)
            .max_by(|a, b| a.achieved.total_cmp(&b.achieved))
    }
}

fn traced_run(env: &Env, lab: &BenchLab, secs: u32, offered: Option<f64>) -> anyhow::Result<Step> {
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let tracer = Tracer::start(&env.d8_trace, common::WEB_SVC, lab.node_ns())?;
    let pid = tracer.pid();
    let cpu0 = common::cpu_time(pid)?;
    let t0 = std::time::Instant::now();
    let conns = common::conns_for(lab.client_ns(), web, Duration::from_secs(secs.into()), offered);
    let cpu1 = common::cpu_time(pid)?;
    let wall = t0.elapsed();
    let (rss, hwm) = common::rss_kib(pid)?;
    let end = tracer.stop()?;
    let conns = conns?;
    let step = Step {
        offered,
        achieved: conns.rate(),
        connections: conns.ok,
        failed: conns.failed,
        flows: end.flows,
        lost_events: end.lost_events,
        cpu_pct: (cpu1 - cpu0).as_secs_f64() / wall.as_secs_f64() * 100.0,
        rss_mib: rss as f64 / 1024.0,
        peak_rss_mib: hwm as f64 / 1024.0,
    };
    eprintln!(
        "bench capacity: offered {} -> {:.0} flows/s, {} lost events, {} flows reported, d8-trace {:.0} % CPU, {:.1} MiB RSS",
        offered.map_or("max".to_string(), |r| format!("{r:.0}/s")),
        step.achieved,
        step.lost_events,
        step.flows,
        step.cpu_pct,
        step.rss_mib
    );
    Ok(step)
}

pub fn run(env: &Env, lab: &BenchLab) -> anyhow::Result<Capacity> {
    let secs = env.pick(10, 1);
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let off = common::conns_for(lab.client_ns(), web, Duration::from_secs(secs.into()), None)?;
    eprintln!("bench capacity: off: {:.0} flows/s ({} failed)", off.rate(), off.failed);
    let mut cap = Capacity {
        secs,
        off_rate: off.rate(),
        steps: Vec::new(),
    };
    let saturated = traced_run(env, lab, secs, None)?;
    let ceiling = saturated.achieved;
    let lost = saturated.lost_events > 0;
    cap.steps.push(saturated);
    if lost {
        for fraction in [0.8, 0.6, 0.4, 0.2] {
            let step = traced_run(env, lab, secs, Some(ceiling * fraction))?;
            let clean = step.lost_events == 0;
            cap.steps.push(step);
            if clean {
                break;
            }
        }
    }
    Ok(cap)
}
