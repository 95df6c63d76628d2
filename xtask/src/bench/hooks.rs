//! Per-hook cost: mean run time per invocation of each of d8-trace's programs from the kernel's
//! BPF statistics, next to the floor, `nf_empty` (returns NF_ACCEPT at once) attached at the same
//! netfilter hooks in the same run, one priority away from d8-trace's programs (the kernel refuses
//! a BPF hook at a priority another hook holds): one instance next to `nf_pre`, one next to `nf_post`.
//!
//! Statistics are switched on with the `BPF_ENABLE_STATS` bpf() command, which returns an fd and
//! switches them off again when it is closed (even if this process dies): the global sysctl
//! `kernel.bpf_stats_enabled` is never written. Figures are deltas of `run_time_ns` / `run_cnt`
//! (`bpftool -j prog show`) over the traffic of one scenario; d8-trace's programs are found by the
//! `prog_id` lines of the child's `/proc/<pid>/fdinfo`, so other BPF users on the machine (or other
//! d8-trace instances) are never mixed in.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{SocketAddrV4, SocketAddrV6},
    os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
    time::Duration,
};

use anyhow::{Context as _, anyhow, bail};
use d8_trace::loader::{self, netfilter};

use super::common::{self, BenchLab, Env, Tracer};

/// One program's figures in one scenario.
#[derive(Clone)]
pub struct ProgRow {
    pub name: String,
    pub runs: u64,
    pub ns_per_run: f64,
    /// Name of the floor it is compared with (`nf_empty@pre` / `nf_empty@post` /
    /// `tp_empty@<tracepoint>`), if any.
    pub floor: Option<&'static str>,
}

#[derive(Clone)]
pub struct Scenario {
    pub traffic: &'static str,
    pub traced: bool,
    /// d8-trace ran with `--debug-kernel` (the kernel programs' log on); the targets are judged
    /// on the runs without it.
    pub debug_kernel: bool,
    /// d8-trace ran with `--pcap` (packets of traced flows copied to userspace); like
    /// `--debug-kernel`, the targets are judged on the runs without it.
    pub pcap: bool,
    pub svc: &'static str,
    /// The traffic was IPv6.
    pub ipv6: bool,
    pub rows: Vec<ProgRow>,
    /// ns per invocation of the empty program at each netfilter program's hooks
    /// (`nf_empty@pre`, `nf_empty@post`, and `nf_empty@pre6`, `nf_empty@post6` at the IPv6
    /// family's).
    pub floor_nf: Vec<ProgRow>,
    /// ns per invocation of the empty tracepoint program, per tracepoint (`tp_empty@NAME`).
    pub floor_tp: Vec<ProgRow>,
    /// Connections completed in the window (short-connection scenarios): the per-connection
    /// breakdown divides by it.
    pub connections: Option<u64>,
}

impl Scenario {
    pub fn floor_of(&self, row: &ProgRow) -> Option<f64> {
        let name = row.floor?;
        self.floor_nf
            .iter()
            .chain(&self.floor_tp)
            .find(|f| f.name == name)
            .map(|f| f.ns_per_run)
    }
}

#[derive(Clone)]
pub struct Hooks {
    pub secs: u32,
    pub scenarios: Vec<Scenario>,
}

const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// BPF run-time statistics, on while this lives.
struct Stats(#[allow(dead_code, reason = "held: closing it switches statistics off")] OwnedFd);

impl Stats {
    fn enable() -> anyhow::Result<Self> {
        #[repr(C)]
        struct Attr {
            kind: u32,
        }
        let mut attr = Attr {
            kind: BPF_STATS_RUN_TIME,
        };
        // SAFETY: BPF_ENABLE_STATS reads `enable_stats.type`, the first u32 of the attr.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                &mut attr as *mut Attr,
                std::mem::size_of::<Attr>(),
            )
        };
        if fd < 0 {
            bail!("bpf(BPF_ENABLE_STATS): {}", std::io::Error::last_os_error());
        }
        // SAFETY: a new fd the kernel gave us.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
    }
}

/// `prog_id`s of every BPF program or link fd process `pid` holds.
fn prog_ids(pid: &str) -> BTreeSet<u32> {
    let mut ids = BTreeSet::new();
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return ids;
    };
    for entry in dir.flatten() {
        if let Ok(text) = std::fs::read_to_string(entry.path()) {
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
    }
    ids
}

/// `id -> (name, run_time_ns, run_cnt)` of every program on the machine.
fn snapshot() -> anyhow::Result<HashMap<u32, (String, u64, u64)>> {
    let text = common::output("bpftool", &["-j", "prog", "show"])?;
    let progs: serde_json::Value = serde_json::from_str(&text).context("bpftool -j prog show")?;
    Ok(progs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let id = p["id"].as_u64()? as u32;
            let name = p["name"].as_str().unwrap_or("?").to_string();
            Some((
                id,
                (
                    name,
                    p["run_time_ns"].as_u64().unwrap_or(0),
                    p["run_cnt"].as_u64().unwrap_or(0),
                ),
            ))
        })
        .collect())
}

fn delta(
    before: &HashMap<u32, (String, u64, u64)>,
    after: &HashMap<u32, (String, u64, u64)>,
    id: u32,
) -> (String, u64, u64) {
    let (name, t1, c1) = after.get(&id).cloned().unwrap_or_else(|| ("?".into(), 0, 0));
    let (t0, c0) = before.get(&id).map_or((0, 0), |(_, t, c)| (*t, *c));
    (name, t1.saturating_sub(t0), c1.saturating_sub(c0))
}

fn row(name: String, time: u64, runs: u64, floor: Option<&'static str>) -> ProgRow {
    ProgRow {
        name,
        runs,
        ns_per_run: if runs == 0 { f64::NAN } else { time as f64 / runs as f64 },
        floor,
    }
}

/// `tp_empty` attached to the machine-wide tracepoints d8-trace uses, one instance per tracepoint
/// (so that each has its own statistics). The loaded objects hold the programs and their links.
struct TpFloor {
    /// (tracepoint name as d8-trace's program is named, program id)
    ids: Vec<(&'static str, u32)>,
    _objects: Vec<aya::Ebpf>,
}

/// The tracepoints with a floor in this section: d8-trace's program name, the tracepoint's
/// category and name.
const TP_FLOORS: &[(&str, &str, &str)] = &[
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
    ("kfree_skb", "skb", "kfree_skb"),
];

fn load_tp_floor(tracepoints: &[(&'static str, &'static str, &'static str)]) -> anyhow::Result<TpFloor> {
    use aya::programs::TracePoint;
    // Attaching reads the tracepoint's id from tracefs, which this machine may not have mounted:
    // a thread of our own moves to a private mount namespace (its filesystem context is copied,
    // the rest of the process keeps the node's mounts) and mounts tracefs there if needed. The
    // attachment outlives the thread: it is held by the perf event's fd.
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<TpFloor> {
            d8_trace::kernel::tracefs::mount_private().map_err(|e| anyhow!("tracefs for the tracepoint floor: {e}"))?;
            let mut ids = Vec::new();
            let mut objects = Vec::new();
            for &(name, category, tracepoint) in tracepoints {
                let mut ebpf = aya::EbpfLoader::new()
                    .load(loader::PROBES)
                    .map_err(|e| anyhow!("loading the BPF object for tp_empty: {e}"))?;
                let prog: &mut TracePoint = ebpf
                    .program_mut("tp_empty")
                    .context("the BPF object has no tp_empty")?
                    .try_into()
                    .map_err(|e| anyhow!("tp_empty: {e}"))?;
                prog.load().map_err(|e| anyhow!("loading tp_empty: {e}"))?;
                prog.attach(category, tracepoint)
                    .map_err(|e| anyhow!("attaching tp_empty to {category}:{tracepoint}: {e}"))?;
                let id = prog.info().map_err(|e| anyhow!("tp_empty's id: {e}"))?.id();
                ids.push((name, id));
                objects.push(ebpf);
            }
            Ok(TpFloor { ids, _objects: objects })
        })
        .join()
        .map_err(|_| anyhow!("tracepoint floor loader thread panicked"))?
    })
}

/// Four instances of `nf_empty` attached where d8-trace's netfilter programs attach, in `node_ns`:
/// at `nf_pre`'s and `nf_post`'s hooks of both families.
struct Floor {
    /// (floor name, program id)
    ids: Vec<(&'static str, u32)>,
    _links: Vec<netfilter::Link>,
    _programs: Vec<netfilter::Program>,
}

/// Where [`load_floor`] tries each `nf_empty`, relative to d8-trace's priority: next to a running
/// d8-trace (the kernel refuses a BPF hook at a priority another hook, BPF, nf_tables, conntrack
/// or NAT, already holds), or at its very priority when d8-trace is not running.
const NEXT_TO: &[i32] = &[1, -1, 2, -2, 3, -3, 4, -4];
const IN_PLACE_OF: &[i32] = &[0, 1, -1, 2, -2, 3, -3];

/// Loads the floors and attaches them in `node_ns` at the first free priority of `offsets` from
/// d8-trace's: `nf_empty` at each netfilter program's hooks, and with `header` also `nf_hdr` and
/// `nf_hdr6` at `nf_pre`'s and `nf_pre6`'s.
fn load_floor(node_ns: &str, offsets: &[i32], header: bool) -> anyhow::Result<Floor> {
    // nf_empty references no map, but relocation resolves every map reference of the object:
    // hand it placeholder fds (none of them reaches nf_empty's instructions, hence the kernel).
    let obj = aya_obj::Object::parse(loader::PROBES).map_err(|e| anyhow!("parsing the BPF object: {e}"))?;
    let fake: HashMap<String, RawFd> = obj
        .maps
        .keys()
        .enumerate()
        .map(|(i, n)| (n.clone(), 100_000 + i as RawFd))
        .collect();
    // nf_hdr reads the skb at `CONFIG`'s offsets: the object's maps, `.rodata` with `CONFIG` as
    // d8-trace fills it for the packet (no conntrack offsets: nf_hdr reads none).
    let maps = if header {
        let btf = d8_trace::kernel::btf::Btf::from_sys().map_err(|e| anyhow!("the kernel's BTF: {e}"))?;
        let config = d8_trace::kernel::packet_only_config(Some(&btf)).map_err(|e| anyhow!("{e}"))?;
        let ebpf = aya::EbpfLoader::new()
            .override_global("CONFIG", &config, true)
            .load(loader::PROBES)
            .map_err(|e| anyhow!("loading the BPF object's maps for nf_hdr: {e}"))?;
        Some(ebpf)
    } else {
        None
    };
    let real: HashMap<String, RawFd> = maps
        .iter()
        .flat_map(|ebpf| ebpf.maps())
        .map(|(name, map)| (name.to_string(), loader::map_data(map).fd().as_fd().as_raw_fd()))
        .collect();
    std::thread::scope(|s| {
        s.spawn(|| -> anyhow::Result<Floor> {
            // Links attach in the calling thread's namespace: this thread only.
            d8_trace::kernel::netns::enter(node_ns).map_err(|e| anyhow!("{e}"))?;
            let me = std::process::id().to_string();
            let mut ids = prog_ids(&me);
            let mut programs = Vec::new();
            let mut links = Vec::new();
            let mut new_id = |programs: &Vec<netfilter::Program>| -> anyhow::Result<u32> {
                let now = prog_ids(&me);
                let fresh: Vec<u32> = now.difference(&ids).copied().collect();
                ids = now;
                match fresh.as_slice() {
                    [id] => Ok(*id),
                    other => bail!(
                        "expected one new program id after loading floor #{}, found {other:?}",
                        programs.len()
                    ),
                }
            };
            let mut pick = |floor: &str, which: &str, family: netfilter::Family| -> anyhow::Result<u32> {
                let fds = if floor == "nf_empty" { &fake } else { &real };
                let prog = netfilter::Program::load(loader::PROBES, floor, fds)?;
                for &(program, hook, priority) in loader::NETFILTER_ATTACHMENTS {
                    if program == which {
                        let mut attached = None;
                        for &offset in offsets {
                            match prog.attach_family(family, hook, priority + offset) {
                                Ok(link) => {
                                    attached = Some(link);
                                    break;
                                }
                                Err(netfilter::Error::Link { source, .. })
                                    if source.raw_os_error() == Some(libc::EBUSY) => {}
                                Err(e) => return Err(e.into()),
                            }
                        }
                        links.push(attached.with_context(|| {
                            format!("no free priority near {priority} at {} {}", family.name(), hook.name())
                        })?);
                    }
                }
                programs.push(prog);
                new_id(&programs)
            };
            let (v4, v6) = (netfilter::Family::Ipv4, netfilter::Family::Ipv6);
            let mut ids = vec![
                ("nf_empty@pre", pick("nf_empty", "nf_pre", v4)?),
                ("nf_empty@post", pick("nf_empty", "nf_post", v4)?),
                ("nf_empty@pre6", pick("nf_empty", "nf_pre", v6)?),
                ("nf_empty@post6", pick("nf_empty", "nf_post", v6)?),
            ];
            if header {
                ids.push(("nf_hdr@pre", pick("nf_hdr", "nf_pre", v4)?));
                ids.push(("nf_hdr@pre6", pick("nf_hdr6", "nf_pre", v6)?));
            }
            Ok(Floor {
                ids,
                _links: links,
                _programs: programs,
            })
        })
        .join()
        .map_err(|_| anyhow!("floor loader thread panicked"))?
    })
}

/// Empty programs where d8-trace's full netfilter set attaches, with no d8-trace running: the four
/// `nf_empty` at `nf_pre`'s and `nf_post`'s hooks and priorities of both families, and `tp_empty`
/// on every tracepoint d8-trace uses. What the node pays for programs being there at all
/// (dispatch, the tracepoints' record, the hooks' indirect calls), which no optimisation of
/// d8-trace's programs can go below; attached while this lives.
pub struct EmptyHooks {
    _nf: Floor,
    _tp: TpFloor,
}

impl EmptyHooks {
    pub fn attach(node_ns: &str) -> anyhow::Result<Self> {
        Ok(Self {
            _nf: load_floor(node_ns, IN_PLACE_OF, false)?,
            // Every tracepoint d8-trace attaches, the reset ones included (they have no floor
            // in `TP_FLOORS`: they fire a few times per window).
            _tp: load_tp_floor(d8_trace::loader::TRACEPOINTS)?,
        })
    }
}

/// The traffic of a scenario.
#[derive(Clone, Copy)]
enum Load {
    /// iperf3 through `bench/iperf`'s ClusterIP.
    Bulk,
    /// A new connection per request to `bench/web`.
    Conns,
    /// The same over IPv6, to `bench/web`'s IPv6 ClusterIP (the lab is dual-stack).
    Conns6,
    /// UDP datagrams to a closed port of the node, every one dropped there, with a conntrack
    /// entry ([`common::udp_drops`]).
    DropsNode,
    /// The same to a pod, dropped in its namespace, which has no conntrack: the drop program's
    /// other path, which reads the packet's headers instead of the entry.
    DropsPod,
}

impl Load {
    fn name(self) -> &'static str {
        match self {
            Load::Bulk => "bulk TCP (iperf3 -P 2)",
            Load::Conns => "new connection per request",
            Load::Conns6 => "new connection per request, IPv6",
            Load::DropsNode => "UDP to a closed port of the node (dropped, conntrack)",
            Load::DropsPod => "UDP to a closed port of a pod (dropped, no conntrack)",
        }
    }
}

pub fn run(env: &Env, lab: &BenchLab) -> anyhow::Result<Hooks> {
    let secs = env.pick(5, 1);
    let floor = load_floor(lab.node_ns(), NEXT_TO, true)?;
    let tp_floor = load_tp_floor(TP_FLOORS)?;
    let web = SocketAddrV4::new(common::WEB_VIP, 80);
    let web6 = SocketAddrV6::new(d8_trace::lab::spec::ipv6_twin(common::WEB_VIP), 80, 0, 0);
    // The last two: the same short connections with the kernel programs' log on, beside the
    // default (off) to show what the log statements cost when on and that off they cost nothing.
    // The last two: `--pcap` on, tracing this Service: what copying the traced flows' packets
    // costs (issue 17).
    // The drops: untraced packets dropped at a known rate, for the drop tracepoint's figure (the
    // other traffic has a few dozen drops per window from the rest of the machine, or none).
    // IPv6: the same short connections to the IPv6 ClusterIP, for `nf_pre6`/`nf_post6`.
    let cases: [(Load, bool, &'static str, bool, bool); 12] = [
        (Load::Bulk, false, common::OTHER_SVC, false, false),
        (Load::Bulk, true, common::IPERF_SVC, false, false),
        (Load::Conns, false, common::OTHER_SVC, false, false),
        (Load::Conns, true, common::WEB_SVC, false, false),
        (Load::Conns6, false, common::OTHER_SVC, false, false),
        (Load::Conns6, true, common::WEB_SVC, false, false),
        (Load::DropsNode, false, common::OTHER_SVC, false, false),
        (Load::DropsPod, false, common::OTHER_SVC, false, false),
        (Load::Conns, false, common::OTHER_SVC, true, false),
        (Load::Conns, true, common::WEB_SVC, true, false),
        (Load::Bulk, true, common::IPERF_SVC, false, true),
        (Load::Conns, true, common::WEB_SVC, false, true),
    ];
    let pcap_file = common::target_dir().join("bench").join("pcap-bench.pcapng");
    let pcap_file = pcap_file.display().to_string();
    // A d8-trace from before the flag existed (to compare builds) runs the first four only.
    let has_debug_kernel = std::process::Command::new(&env.d8_trace)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--debug-kernel"));
    let has_pcap = std::process::Command::new(&env.d8_trace)
        .arg("--help")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--pcap"));
    let mut scenarios = Vec::new();
    for (load, traced, svc, debug_kernel, pcap) in cases {
        let traffic = load.name();
        if pcap && !has_pcap {
            eprintln!(
                "bench hooks: {} has no --pcap: those runs are left out",
                env.d8_trace.display()
            );
            continue;
        }
        if debug_kernel && !has_debug_kernel {
            eprintln!(
                "bench hooks: {} has no --debug-kernel: those runs are left out",
                env.d8_trace.display()
            );
            continue;
        }
        let pcap_args = ["--pcap", pcap_file.as_str(), "--force"];
        let extra: &[&str] = if debug_kernel {
            &["--debug-kernel"]
        } else if pcap {
            &pcap_args
        } else {
            &[]
        };
        let tracer = Tracer::start_with(&env.d8_trace, svc, lab.node_ns(), extra)?;
        let ids = prog_ids(&tracer.pid().to_string());
        let stats = Stats::enable()?;
        let before = snapshot()?;
        let traffic_result = match load {
            Load::Bulk => common::iperf(lab.client_ns(), secs).map(|_| None),
            Load::Conns => {
                common::conns_for(lab.client_ns(), web, Duration::from_secs(secs.into()), None).map(|c| Some(c.ok))
            }
            Load::Conns6 => {
                common::conns_for(lab.client_ns(), web6, Duration::from_secs(secs.into()), None).map(|c| Some(c.ok))
            }
            Load::DropsNode => common::udp_drops(lab.client_ns(), lab.lab.node_ip(), secs).map(|_| None),
            Load::DropsPod => common::udp_drops(lab.client_ns(), common::OTHER_POD, secs).map(|_| None),
        };
        let after = snapshot()?;
        drop(stats);
        tracer.stop()?;
        let connections = traffic_result?;
        let mut by_name: BTreeMap<String, (u64, u64)> = BTreeMap::new();
        for id in &ids {
            let (name, t, c) = delta(&before, &after, *id);
            let e = by_name.entry(name).or_default();
            e.0 += t;
            e.1 += c;
        }
        let rows = by_name
            .into_iter()
            .map(|(name, (t, c))| {
                let floor = match name.as_str() {
                    "nf_pre" => Some("nf_empty@pre"),
                    "nf_post" => Some("nf_empty@post"),
                    "nf_pre6" => Some("nf_empty@pre6"),
                    "nf_post6" => Some("nf_empty@post6"),
                    "inet_sock_set_state" => Some("tp_empty@inet_sock_set_state"),
                    "kfree_skb" => Some("tp_empty@kfree_skb"),
                    _ => None,
                };
                row(name, t, c, floor)
            })
            .collect();
        let floor_nf = floor
            .ids
            .iter()
            .map(|(name, id)| {
                let (_, t, c) = delta(&before, &after, *id);
                row((*name).to_string(), t, c, None)
            })
            .collect();
        let floor_tp = tp_floor
            .ids
            .iter()
            .map(|(name, id)| {
                let (_, t, c) = delta(&before, &after, *id);
                row(format!("tp_empty@{name}"), t, c, None)
            })
            .collect();
        let s = Scenario {
            traffic,
            traced,
            debug_kernel,
            pcap,
            svc,
            ipv6: matches!(load, Load::Conns6),
            rows,
            floor_nf,
            floor_tp,
            connections,
        };
        for r in s.rows.iter().chain(&s.floor_nf).chain(&s.floor_tp) {
            eprintln!(
                "bench hooks: {traffic}, {}{}{}: {:<18} {:7.1} ns x {}",
                if traced { "traced" } else { "untraced" },
                if debug_kernel { ", --debug-kernel" } else { "" },
                if pcap { ", --pcap" } else { "" },
                r.name,
                r.ns_per_run,
                r.runs
            );
        }
        scenarios.push(s);
    }
    drop(floor);
    drop(tp_floor);
    Ok(Hooks { secs, scenarios })
}
