//! Start-up: from spawning `d8-trace --svc bench/web --netns NODE --no-k8s -o json` to its
//! "attached" stderr line (rules read, model built, BTF read, programs loaded and attached), and to
//! the first flow line it prints, while a client opens a new connection to the Service every 5 ms.

use std::net::SocketAddrV4;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::common::{self, Background, BenchLab, Env, Tracer};

pub struct Startup {
    pub runs: usize,
    /// Milliseconds per run.
    pub attached_ms: Vec<f64>,
    pub first_flow_ms: Vec<f64>,
}

pub fn run(env: &Env, lab: &BenchLab) -> anyhow::Result<Startup> {
    // Eleven runs: the median of seven moved by 18 % between two quiet runs.
    let runs = env.pick(11, 1);
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let traffic = Background::start(lab.client_ns(), web, 1, 200.0);
    let mut s = Startup {
        runs,
        attached_ms: Vec::new(),
        first_flow_ms: Vec::new(),
    };
    for i in 0..runs {
        let tracer = Tracer::start_timed(&env.d8_trace, common::WEB_SVC, lab.node_ns())?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while tracer.first_flow_after().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let end = tracer.stop()?;
        let (Some(attached), Some(first)) = (end.attached_after, end.first_flow_after) else {
            bail!("run {}: d8-trace printed no flow within 10 s of attaching", i + 1);
        };
        eprintln!(
            "bench startup: run {}/{runs}: attached after {:.0} ms, first flow after {:.0} ms",
            i + 1,
            attached.as_secs_f64() * 1000.0,
            first.as_secs_f64() * 1000.0
        );
        s.attached_ms.push(attached.as_secs_f64() * 1000.0);
        s.first_flow_ms.push(first.as_secs_f64() * 1000.0);
    }
    let conns = traffic.finish()?;
    if conns.ok == 0 {
        bail!("the background client completed no connection");
    }
    Ok(s)
}
