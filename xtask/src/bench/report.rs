//! Runs the sections and writes the report: the machine, a targets table (with the previous run's
//! figures next to this run's, read back from the file being replaced), one table per section with
//! the command that reproduces it, and the hand-written notes kept from the previous file.

use std::{fmt::Write as _, path::PathBuf, process::Command, time::Instant};

use anyhow::{Context as _, bail};

use super::{
    Options, Section,
    capacity::{self, Capacity},
    common::{self, BenchLab, Env},
    daemon::{self, DaemonBench},
    datapath::{self, Datapath, Runs},
    hooks::{self, Hooks},
    profile::{self, Profile},
    rules::{self, NodeRow, RuleScale},
    startup::{self, Startup},
};

/// Everything below this line of an existing report is kept as it is.
const NOTES_MARKER: &str = "<!-- notes: written by hand; cargo xtask bench keeps everything below this line -->";
const FIGURES_PREFIX: &str = "<!-- bench-figures: ";

#[derive(Default)]
struct Results {
    /// Per section, the machine's speed just before it ([`common::reference_ms`]).
    speed: std::collections::BTreeMap<&'static str, f64>,
    datapath: Option<Datapath>,
    hooks: Option<Hooks>,
    capacity: Option<Capacity>,
    rules: Option<RuleScale>,
    startup: Option<Startup>,
    daemon: Option<DaemonBench>,
    profile: Option<Profile>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark builds network namespaces and loads BPF programs: run it as root");
    }
    let started = Instant::now();
    let d8_trace = match &opts.d8_trace {
        Some(p) => p.clone(),
        None => {
            let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
            cmd.args(["build", "--release", "-p", "d8-userspace", "--bin", "d8-trace"]);
            eprintln!("xtask: {cmd:?}");
            if !cmd.status().context("running cargo build")?.success() {
                bail!("building d8-trace failed");
            }
            common::target_dir().join("release/d8-trace")
        }
    };
    let work = common::target_dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let env = Env {
        d8_trace,
        quick: opts.quick,
        work: work.clone(),
        xtask: std::env::current_exe()?,
    };
    let all = [
        Section::Datapath,
        Section::Hooks,
        Section::Profile,
        Section::Capacity,
        Section::Startup,
        Section::Rules,
        Section::Daemon,
    ];
    let sections: Vec<Section> = if opts.only.is_empty() {
        all.to_vec()
    } else {
        all.into_iter().filter(|s| opts.only.contains(s)).collect()
    };
    let out: PathBuf = match &opts.out {
        Some(p) => p.clone(),
        None if opts.quick => work.join("BENCHMARKS-quick.md"),
        None if !opts.only.is_empty() => work.join("BENCHMARKS-partial.md"),
        None => common::workspace_root().join("BENCHMARKS.md"),
    };
    let machine = Machine::read();
    let mut r = Results::default();
    if sections.iter().any(|s| *s != Section::Rules) {
        let lab = BenchLab::up()?;
        eprintln!("bench: lab up (node namespace {})", lab.node_ns());
        for s in &sections {
            if *s != Section::Rules {
                r.speed.insert(section_name(*s), common::reference_ms(env.pick(5, 1)));
            }
            match s {
                Section::Datapath => r.datapath = Some(datapath::run(&env, &lab)?),
                Section::Hooks => r.hooks = Some(hooks::run(&env, &lab)?),
                Section::Capacity => r.capacity = Some(capacity::run(&env, &lab)?),
                Section::Startup => r.startup = Some(startup::run(&env, &lab)?),
                Section::Daemon => r.daemon = Some(daemon::run(&env, &lab)?),
                Section::Profile => r.profile = Some(profile::run(&env, &lab)?),
                Section::Rules => {}
            }
        }
    }
    if sections.contains(&Section::Rules) {
        r.speed
            .insert(section_name(Section::Rules), common::reference_ms(env.pick(5, 1)));
        let rs = rules::run(&env)?;
        r.speed.extend(rule_speeds(&rs));
        r.rules = Some(rs);
    }
    let previous = std::fs::read_to_string(&out).unwrap_or_default();
    let run = Run {
        command: command_line(opts),
        given: opts.d8_trace.as_deref(),
        secs: started.elapsed().as_secs(),
        quick: opts.quick,
    };
    let text = render(&r, &machine, &run, &previous);
    std::fs::write(&out, &text).with_context(|| format!("writing {}", out.display()))?;
    println!("{text}");
    eprintln!("bench: wrote {}", out.display());
    Ok(())
}

fn command_line(opts: &Options) -> String {
    let mut c = "cargo xtask bench".to_string();
    if opts.quick {
        c.push_str(" --quick");
    }
    if !opts.only.is_empty() {
        let names: Vec<&str> = opts.only.iter().map(|s| section_name(*s)).collect();
        c.push_str(&format!(" --only {}", names.join(",")));
    }
    c
}

fn section_name(s: Section) -> &'static str {
    match s {
        Section::Datapath => "datapath",
        Section::Hooks => "hooks",
        Section::Capacity => "capacity",
        Section::Rules => "rules",
        Section::Startup => "startup",
        Section::Daemon => "daemon",
        Section::Profile => "profile",
    }
}

struct Machine {
    date: String,
    kernel: String,
    cpu: String,
    load: String,
    commit: String,
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name")
                    .and_then(|r| r.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
        let root = common::workspace_root();
        let root = root.to_str().unwrap_or(".");
        let commit = common::output("git", &["-C", root, "rev-parse", "--short", "HEAD"])
            .unwrap_or_default()
            .trim()
            .to_string();
        // BENCHMARKS.md itself is no change to what is measured: a second run back to back finds
        // the first one's report there, uncommitted.
        let dirty = common::output(
            "git",
            &[
                "-C",
                root,
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)BENCHMARKS.md",
            ],
        )
        .is_ok_and(|s| !s.trim().is_empty());
        Self {
            date: common::output("date", &["-u", "+%Y-%m-%d %H:%M UTC"])
                .unwrap_or_default()
                .trim()
                .to_string(),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpu: format!("{model}, {cpus} CPUs"),
            load: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" "),
            commit: if dirty {
                format!("{commit} (with uncommitted changes in the working tree)")
            } else {
                commit
            },
        }
    }
}

/// `a-b` for the smallest and largest of `values`, or the one value they all are.
fn range(values: &[u64]) -> String {
    match (values.iter().min(), values.iter().max()) {
        (Some(lo), Some(hi)) if lo != hi => format!("{lo}-{hi}"),
        (Some(v), _) => v.to_string(),
        _ => "-".into(),
    }
}

fn fmt_list(values: &[f64], decimals: usize) -> String {
    values
        .iter()
        .map(|v| format!("{v:.decimals$}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Two runs agree on a figure when it moved by at most this share (issue 18: "every figure within
/// 10 % or the run says why").
const AGREE: f64 = 0.10;

/// `now` against `before`, as a share of `before`; `None` when either is missing or `before` is 0.
fn relative_change(now: Option<f64>, before: Option<f64>) -> Option<f64> {
    let (now, before) = (now?, before?);
    let change = (now - before) / before;
    change.is_finite().then_some(change)
}

/// The targets table's "Change" cell for a figure, and whether the two runs agree on it.
fn change_cell(now: Option<f64>, before: Option<f64>) -> Option<(String, bool)> {
    let c = relative_change(now, before)?;
    let agrees = c.abs() <= AGREE;
    let cell = if agrees {
        format!("{:+.0} %", c * 100.0)
    } else {
        format!("{:+.0} % (over {:.0} %)", c * 100.0, AGREE * 100.0)
    };
    Some((cell, agrees))
}

fn yes_no(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "**met**",
        Some(false) => "**missed**",
        None => "**not judged**",
    }
}

/// Previous run's figures, from the comment an earlier report carries.
fn previous_figures(previous: &str) -> serde_json::Map<String, serde_json::Value> {
    previous
        .lines()
        .find_map(|l| l.strip_prefix(FIGURES_PREFIX).and_then(|r| r.strip_suffix(" -->")))
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

/// One row of the targets table.
struct Target {
    key: &'static str,
    what: &'static str,
    measured: String,
    /// The figure compared with the previous run's (a ratio, a rate, a time); `None` where the
    /// measurement is several figures (the daemon's, per mode) or a count.
    value: Option<f64>,
    /// `None`: not measured here (the row says why).
    met: Option<bool>,
}

/// Invocations a second below which a program's mean time per invocation is shown but not judged:
/// a mean over a few dozen calls in a window (`nf_pre6` under IPv4 load, `kfree_skb` under bulk
/// TCP) measures the cache misses of a cold path, not the program's work, and moved by half
/// between runs; at this rate the program costs a node at most a few tenths of a percent of a
/// core either way. The drop scenario (about 20,000 `kfree_skb` a second) judges the drop path.
pub const MIN_JUDGED_CALLS_PER_SEC: u64 = 1_000;

/// The row a per-invocation target is judged on: which program in which traffic, its time per
/// invocation and its empty program's.
#[derive(Debug, Clone, PartialEq)]
struct WorstRow {
    program: String,
    traffic: &'static str,
    ns: f64,
    floor_ns: f64,
    /// `nf_pre`'s and `nf_pre6`'s: the header floor in the same window (`nf_hdr@pre`,
    /// `nf_hdr@pre6`) and its ns, which reads the packet as they do and asks no map.
    header: Option<(&'static str, f64)>,
}

impl WorstRow {
    fn ratio(&self) -> f64 {
        self.ns / self.floor_ns
    }

    fn detail(&self) -> String {
        let header = match self.header {
            Some((floor, ns)) if ns.is_finite() => format!("; reading the packet alone ({floor}): {ns:.0} ns"),
            _ => String::new(),
        };
        format!(
            "{} on {}: {:.0} ns vs {:.0} ns{header}",
            self.program, self.traffic, self.ns, self.floor_ns
        )
    }

    fn label(&self) -> String {
        format!("{} on {}", self.program, self.traffic)
    }
}

/// The header floor beside `program` (`nf_hdr@pre` for `nf_pre`, `nf_hdr@pre6` for `nf_pre6`).
fn header_floor_of(program: &str) -> Option<&'static str> {
    match program {
        "nf_pre" => Some("nf_hdr@pre"),
        "nf_pre6" => Some("nf_hdr@pre6"),
        _ => None,
    }
}

/// The row with the worst ratio to its floor, over the scenarios with `traced`, of the programs
/// whose floor's name starts with `floor` (`nf_empty`: nf_pre/nf_post; `tp_empty`: the
/// tracepoints), among those called at least [`MIN_JUDGED_CALLS_PER_SEC`] times a second.
fn worst_row(h: &Hooks, traced: bool, floor: &str) -> Option<WorstRow> {
    let mut worst: Option<WorstRow> = None;
    let min_runs = MIN_JUDGED_CALLS_PER_SEC * u64::from(h.secs);
    for s in h
        .scenarios
        .iter()
        .filter(|s| s.traced == traced && !s.debug_kernel && !s.pcap)
    {
        for r in s
            .rows
            .iter()
            .filter(|r| r.floor.is_some_and(|f| f.starts_with(floor)) && r.runs >= min_runs)
        {
            if let Some(floor_ns) = s.floor_of(r) {
                let header = header_floor_of(&r.name)
                    .and_then(|h| s.floor_nf.iter().find(|f| f.name == h).map(|f| (h, f.ns_per_run)));
                let row = WorstRow {
                    program: r.name.clone(),
                    traffic: s.traffic,
                    ns: r.ns_per_run,
                    floor_ns,
                    header,
                };
                if row.ratio().is_finite() && worst.as_ref().is_none_or(|w| row.ratio() > w.ratio()) {
                    worst = Some(row);
                }
            }
        }
    }
    worst
}

/// A per-invocation target: the worst ratio of the programs whose floor's name starts with
/// `floor`, over the scenarios with `traced`, at most `limit`.
struct HookTarget {
    key: &'static str,
    what: &'static str,
    traced: bool,
    floor: &'static str,
    limit: f64,
}

const HOOK_TARGETS: [HookTarget; 3] = [
    HookTarget {
        key: "hook_untraced",
        what: "Per invocation, untraced traffic <= 1.5x the empty program",
        traced: false,
        floor: "nf_empty",
        limit: 1.5,
    },
    HookTarget {
        key: "hook_traced",
        what: "Per invocation, traced traffic <= 3x the empty program",
        traced: true,
        floor: "nf_empty",
        limit: 3.0,
    },
    HookTarget {
        key: "tracepoint_untraced",
        what: "Machine-wide tracepoints, untraced sockets and packets <= 2x an empty tracepoint program",
        traced: false,
        floor: "tp_empty",
        limit: 2.0,
    },
];

/// The judged rows of the per-invocation targets, for the next run's [`floor_moved`].
fn hook_parts(h: &Hooks) -> serde_json::Value {
    let mut parts = serde_json::Map::new();
    for target in HOOK_TARGETS {
        if let Some(w) = worst_row(h, target.traced, target.floor) {
            parts.insert(
                target.key.into(),
                serde_json::json!({"row": w.label(), "ns": w.ns, "floor_ns": w.floor_ns}),
            );
        }
    }
    serde_json::Value::Object(parts)
}

/// A sentence per per-invocation ratio that moved more than [`AGREE`] from the previous run's
/// while the same program in the same traffic took a time within it: the ratio moved with its
/// denominator, the empty program's mean (which a cold cache or another host's load moves).
fn floor_moved(h: &Hooks, prev: &serde_json::Map<String, serde_json::Value>) -> Vec<String> {
    let mut said = Vec::new();
    let Some(before) = prev.get("hook_parts").and_then(|v| v.as_object()) else {
        return said;
    };
    for target in HOOK_TARGETS {
        let (Some(now), Some(then)) = (worst_row(h, target.traced, target.floor), before.get(target.key)) else {
            continue;
        };
        let field = |name: &str| then.get(name).and_then(|v| v.as_f64());
        let (Some(ns), Some(floor_ns)) = (field("ns"), field("floor_ns")) else {
            continue;
        };
        if then.get("row").and_then(|v| v.as_str()) != Some(now.label().as_str()) {
            continue;
        }
        let moved = |a: f64, b: f64| change_cell(Some(a), Some(b)).is_some_and(|(_, agrees)| !agrees);
        if moved(now.ratio(), ns / floor_ns) && !moved(now.ns, ns) && moved(now.floor_ns, floor_ns) {
            said.push(format!(
                "The worst per-invocation ratio ({}, {}) moved with its empty program: {:.0} ns against {:.0} \
                 before, while the program itself took {:.0} ns against {:.0}.",
                target.key,
                now.label(),
                now.floor_ns,
                floor_ns,
                now.ns,
                ns
            ));
        }
    }
    said
}

/// The on/off of the datapath runs with empty programs at d8-trace's hooks, as a note to an
/// on/off target: what programs being there cost, the floor that optimising them cannot go below.
/// Empty without those runs.
fn floor_note(runs: &Runs) -> String {
    if runs.is_empty() {
        return String::new();
    }
    format!(" (empty programs at its hooks: {:.3})", runs.on_off())
}

/// A sentence when the machine itself ran at another speed than in the previous run (its "off"
/// rounds, no observer at all, more than [`AGREE`] apart): a host shared with other guests slows
/// down without any process of this machine being busy, and then the absolute figures of two
/// runs do not compare (the on/off ones, within a run, still do). `None` when the speeds agree or
/// the previous run did not record them.
fn machine_speed(d: &Datapath, prev: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
    let before = prev.get("off_speed")?;
    let mut moved = Vec::new();
    for (now, key, what) in [
        (common::median(&d.off), "iperf_gbits", "Gbit/s of bulk TCP"),
        (common::median(&d.conn_off), "conn_per_s", "new connections/s"),
    ] {
        let then = before.get(key).and_then(|v| v.as_f64())?;
        if let Some((cell, false)) = change_cell(Some(now), Some(then)) {
            moved.push(format!(
                "{now:.0} {what} against {then:.0} ({})",
                cell.trim_end_matches(" (over 10 %)")
            ));
        }
    }
    (!moved.is_empty()).then(|| {
        format!(
            "The machine ran at another speed than in the previous run, with d8-trace off: {}. Absolute figures \
             of the two runs do not compare; on/off figures (within a run) do.",
            moved.join(", ")
        )
    })
}

/// The section an absolute figure depends on the machine's speed in, and whether it grows with
/// that speed (a rate) or shrinks (a time). `None` for the on/off and per-invocation ratios, which
/// compare runs within one run, and for figures that are no time or rate.
fn speed_bound(key: &str) -> Option<(&'static str, bool)> {
    // The rule-scale figures also have their own time (`rule_speeds`), preferred when both runs
    // have it.
    match key {
        "capacity" => Some(("capacity", true)),
        "startup" => Some(("startup", false)),
        k if k.starts_with("rules_") || k.starts_with("explain_") => Some(("rules", false)),
        _ => None,
    }
}

/// Why a figure that moved more than [`AGREE`] from the previous run's (`then`) did: the
/// machine's own speed, when the figure scaled by the change in the fixed workload's time before
/// its section (`speed` now, `prev_speed` then) is within [`AGREE`] of the previous run's. `None`
/// when it is not, or either run has no such time.
fn speed_explains(
    key: &str,
    now: f64,
    then: f64,
    speed: &std::collections::BTreeMap<&'static str, f64>,
    prev_speed: Option<&serde_json::Value>,
) -> Option<String> {
    let (section, rate) = speed_bound(key)?;
    let prev_speed = prev_speed?;
    let both = |k: &str| Some((*speed.get(k)?, prev_speed.get(k)?.as_f64()?));
    let (at, (ref_now, ref_then)) = match both(key) {
        Some(times) => ("beside its runs", times),
        None => ("before its section", both(section)?),
    };
    // > 1: the machine took longer for the same work now.
    let slower = ref_now / ref_then;
    let machine = format!(
        "the workload {at} took {ref_now:.0} ms against {ref_then:.0} ms ({:+.0} %)",
        (slower - 1.0) * 100.0
    );
    let scaled = if rate { now * slower } else { now / slower };
    let (cell, agrees) = change_cell(Some(scaled), Some(then))?;
    if agrees {
        return Some(format!("{machine}; scaled by it, the figure moved {cell}"));
    }
    // Not every figure scales one to one with the workload (an `explain` spends part of its time
    // in the kernel's netlink dumps, which a slower CPU-and-memory workload does not time). One
    // that moved the machine's way by no more than the machine did is as far as a run can tell
    // the machine's: the other way, or further, it is the code's.
    let took = if rate { then / now } else { now / then };
    let within = if slower >= 1.0 {
        (1.0..=slower).contains(&took)
    } else {
        (slower..=1.0).contains(&took)
    };
    within.then(|| {
        format!(
            "{machine}; the figure moved {:+.0} %, the machine's way and by less",
            (now / then - 1.0) * 100.0
        )
    })
}

/// The target key of the parse figure at 10,000 Services in `format`.
fn parse_key(format: &str) -> &'static str {
    if format == "nft JSON" {
        "rules_nft"
    } else {
        "rules_iptables"
    }
}

/// The target key of the kernel reader's `explain` figure at 10,000 Services in `format`.
fn explain_key(format: &str) -> &'static str {
    match format {
        "nft JSON" => "explain_nft_kernel",
        "iptables-legacy" => "explain_iptables_legacy_kernel",
        _ => "explain_iptables_kernel",
    }
}

/// The fixed workload's median time beside each rule-scale target's runs, keyed by the target:
/// the machine's speed while that figure was measured, not minutes before, when the section began.
fn rule_speeds(rs: &RuleScale) -> Vec<(&'static str, f64)> {
    let parse = rs
        .parse
        .iter()
        .filter(|p| p.services == 10000 && !p.reference_runs_ms.is_empty())
        .map(|p| (parse_key(p.format), common::median(&p.reference_runs_ms)));
    let explain = rs
        .node
        .iter()
        .filter(|n| n.services == 10000 && !n.kernel_reference_ms.is_empty())
        .map(|n| (explain_key(n.format), common::median(&n.kernel_reference_ms)));
    parse.chain(explain).collect()
}

fn targets(r: &Results) -> Vec<Target> {
    let mut t = Vec::new();
    if let Some(d) = &r.datapath {
        let this = d.this.on_off();
        let other = d.other.on_off();
        let floor = floor_note(&d.empty);
        // On/off figures from a busy machine say what the other processes did, not what tracing
        // costs (traced runs came out faster than off ones on a loaded machine): they are shown
        // with the count of busy runs and get no verdict.
        let busy = d.busy_runs();
        let judge = |met: bool| (busy == 0).then_some(met);
        let unjudged = if busy == 0 {
            String::new()
        } else {
            format!("; not judged, {busy} of {} runs on a busy machine", d.others.len())
        };
        t.push(Target {
            key: "ratio_this",
            what: "Throughput on/off tracing this Service >= 0.98",
            measured: format!("{this:.3}{floor}{unjudged}"),
            value: Some(this),
            met: judge(this >= 0.98),
        });
        t.push(Target {
            key: "ratio_other",
            what: "Throughput on/off tracing another Service >= 0.99",
            measured: format!("{other:.3}{floor}{unjudged}"),
            value: Some(other),
            met: judge(other >= 0.99),
        });
        let cthis = d.conn_on.on_off();
        let cother = d.conn_other.on_off();
        let floor = floor_note(&d.conn_empty);
        t.push(Target {
            key: "conn_this",
            what: "New connection per request, on/off tracing this Service >= 0.95",
            measured: format!("{cthis:.3}{floor}{unjudged}"),
            value: Some(cthis),
            met: judge(cthis >= 0.95),
        });
        t.push(Target {
            key: "conn_other",
            what: "New connection per request, on/off tracing another Service >= 0.99",
            measured: format!("{cother:.3}{floor}{unjudged}"),
            value: Some(cother),
            met: judge(cother >= 0.99),
        });
        // The bar: d8-trace tracing this Service costs no more than tcpdump capturing
        // every packet of the node (SOP's first tool), on the same load in the same rounds.
        match &d.tcpdump_skipped {
            None => {
                let ctcpdump = d.conn_tcpdump.on_off();
                t.push(Target {
                    key: "conn_tcpdump",
                    what: "New connection per request, on/off tracing this Service no lower than with `tcpdump -i any -s 128 -w /dev/null` instead",
                    measured: format!("{cthis:.3} against {ctcpdump:.3} with tcpdump{unjudged}"),
                    value: Some(cthis / ctcpdump),
                    met: judge(cthis >= ctcpdump),
                });
            }
            Some(why) => t.push(Target {
                key: "conn_tcpdump",
                what: "New connection per request, on/off tracing this Service no lower than with `tcpdump -i any -s 128 -w /dev/null` instead",
                measured: format!("skipped: {why}"),
                value: None,
                met: None,
            }),
        }
        if !d.cpu_ms_per_1000_flows.is_empty() {
            let pct = common::median(&d.cpu_ms_per_1000_flows) / 10.0;
            t.push(Target {
                key: "d8_cpu",
                what: "d8-trace's own CPU <= 5 % of a core at 1,000 new flows/s",
                measured: format!(
                    "{pct:.1} % ({:.1} records per flow)",
                    common::median(&d.records_per_flow)
                ),
                value: Some(pct),
                met: Some(pct <= 5.0),
            });
        }
        t.push(Target {
            key: "datapath_quiet",
            what: "Datapath runs on a quiet machine (others < 10 % of a core in every run)",
            measured: format!("{} of {} runs busy", d.busy_runs(), d.others.len()),
            value: None,
            met: Some(d.busy_runs() == 0),
        });
    }
    if let Some(h) = &r.hooks {
        for target in HOOK_TARGETS {
            if let Some(w) = worst_row(h, target.traced, target.floor) {
                let ratio = w.ratio();
                t.push(Target {
                    key: target.key,
                    what: target.what,
                    measured: format!("{ratio:.2}x (worst: {})", w.detail()),
                    value: Some(ratio),
                    met: Some(ratio <= target.limit),
                });
            }
        }
    }
    if let Some(c) = &r.capacity {
        let saturated = &c.steps[0];
        let measured = match c.best() {
            Some(b) if std::ptr::eq(b, saturated) => format!(
                "0 lost at {:.0} new flows/s, the most the machine pushes with d8-trace on ({:.0}/s with it off)",
                b.achieved, c.off_rate
            ),
            Some(b) => format!(
                "{} lost at {:.0}/s (saturated); 0 lost at {:.0}/s",
                saturated.lost_events, saturated.achieved, b.achieved
            ),
            None => format!(
                "events lost at every rate tried (lowest {:.0}/s)",
                c.steps.last().map_or(0.0, |s| s.achieved)
            ),
        };
        t.push(Target {
            key: "capacity",
            what: "No lost events at the lab's maximum new-flow rate",
            measured,
            value: Some(saturated.achieved),
            met: Some(saturated.lost_events == 0),
        });
    }
    if let Some(rs) = &r.rules {
        for format in ["iptables-save", "nft JSON"] {
            if let Some(p) = rs.parse.iter().find(|p| p.services == 10000 && p.format == format) {
                t.push(Target {
                    key: parse_key(format),
                    what: if format == "nft JSON" {
                        "10,000 Services (nft JSON) modelled in < 300 ms and < 200 MB"
                    } else {
                        "10,000 Services (iptables-save) modelled in < 300 ms and < 200 MB"
                    },
                    measured: format!("{:.0} ms, {:.0} MiB peak RSS", p.parse_ms(), p.peak_rss_mib),
                    value: Some(p.parse_ms()),
                    met: Some(p.parse_ms() < 300.0 && p.peak_rss_mib * 1.048576 < 200.0),
                });
            }
        }
    }
    for (format, what) in [
        (
            "nft JSON",
            "10,000 Services (nftables, kernel reader): explain end to end < 1 s and < 150 MiB for all processes",
        ),
        (
            "iptables-save",
            "10,000 Services (iptables-nft, kernel reader): explain end to end < 1 s and < 150 MiB for all processes",
        ),
        (
            "iptables-legacy",
            "10,000 Services (iptables-legacy, kernel reader): explain end to end < 1 s and < 150 MiB for all processes",
        ),
    ] {
        let key = explain_key(format);
        let Some(n) = r.rules.as_ref().and_then(|rs| {
            rs.node
                .iter()
                .find(|n| n.services == 10000 && n.format == format && n.kernel_explain_ms.is_some())
        }) else {
            continue;
        };
        let ms = n.kernel_explain_ms.unwrap_or(f64::NAN);
        t.push(Target {
            key,
            what,
            measured: format!(
                "{ms:.0} ms, {:.0} MiB peak RSS (no other process)",
                n.kernel_explain_rss_mib
            ),
            value: Some(ms),
            met: Some(ms < 1000.0 && n.kernel_explain_rss_mib < 150.0),
        });
    }
    if let Some(d) = &r.daemon {
        daemon_targets(&mut t, d);
    }
    if let Some(s) = &r.startup {
        let attached = common::median(&s.attached_ms);
        let first = common::median(&s.first_flow_ms);
        t.push(Target {
            key: "startup",
            what: "Start-up (to hooks attached and first flow printed) < 1 s",
            measured: format!("{attached:.0} ms to attached, {first:.0} ms to the first flow (medians)"),
            value: Some(first),
            met: Some(first < 1000.0 && attached < 1000.0),
        });
    }
    t
}

struct Run<'a> {
    command: String,
    /// `--d8-trace`: the binary measured, when not built from this worktree.
    given: Option<&'a std::path::Path>,
    secs: u64,
    quick: bool,
}

fn render(r: &Results, m: &Machine, run: &Run, previous: &str) -> String {
    let Run {
        command,
        given,
        secs,
        quick,
    } = run;
    let (secs, quick) = (*secs, *quick);
    let mut o = String::new();
    let prev = previous_figures(previous);
    let targets = targets(r);
    let _ = writeln!(o, "# Benchmarks\n");
    let _ = writeln!(
        o,
        "What tracing costs a node, how much d8-trace takes, how it scales. Written by `{command}`; everything runs in \
         lab network namespaces on one machine (a node with kube-proxy's iptables rules, pods as namespaces, see \
         `d8-userspace/src/lab/`). Regenerating rewrites everything above the notes at the end.\n"
    );
    if quick {
        let _ = writeln!(
            o,
            "> **--quick run**: one short run per measurement, a smoke check. These figures mean nothing.\n"
        );
    }
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(
        o,
        "| Command | `{command}` (as root; about {} min) |",
        secs.div_ceil(60)
    );
    let _ = writeln!(o, "| Date | {} |", m.date);
    let _ = writeln!(o, "| Kernel | {} |", m.kernel);
    let _ = writeln!(o, "| CPU | {} |", m.cpu);
    let _ = writeln!(o, "| Load average at start | {} |", m.load);
    if !r.speed.is_empty() {
        let parts: Vec<String> = r.speed.iter().map(|(s, ms)| format!("{s} {ms:.0}")).collect();
        let _ = writeln!(
            o,
            "| The machine's speed: a fixed workload's ms before each section, and beside each rule-scale target's runs (median; `common::reference_ms`) | {} |",
            parts.join(", ")
        );
    }
    match given {
        // The worktree's commit says nothing about a binary built elsewhere (an A/B of builds).
        Some(path) => {
            let _ = writeln!(
                o,
                "| d8-trace | `{}` (given with `--d8-trace`); the bench itself: {} |\n",
                path.display(),
                m.commit
            );
        }
        None => {
            let _ = writeln!(o, "| d8-trace | release build of {} |\n", m.commit);
        }
    }

    let _ = writeln!(o, "## Targets\n");
    let has_prev = !prev.is_empty();
    let prev_values = prev.get("values").and_then(|v| v.as_object());
    if has_prev {
        let _ = writeln!(
            o,
            "| Target | Measured | Previous run | Change | Verdict |\n|---|---|---|---|---|"
        );
    } else {
        let _ = writeln!(o, "| Target | Measured | Verdict |\n|---|---|---|");
    }
    let mut figures = serde_json::Map::new();
    let mut values = serde_json::Map::new();
    let mut compared = 0;
    let mut moved = Vec::new();
    let mut by_speed = Vec::new();
    for t in &targets {
        figures.insert(t.key.into(), serde_json::Value::String(t.measured.clone()));
        if let Some(v) = t.value.filter(|v| v.is_finite()) {
            values.insert(t.key.into(), serde_json::json!(v));
        }
        if has_prev {
            let p = prev.get(t.key).and_then(|v| v.as_str()).unwrap_or("-");
            let before = prev_values.and_then(|pv| pv.get(t.key)).and_then(|v| v.as_f64());
            let change = match change_cell(t.value, before) {
                Some((cell, agrees)) => {
                    compared += 1;
                    if !agrees {
                        match t
                            .value
                            .zip(before)
                            .and_then(|(now, then)| speed_explains(t.key, now, then, &r.speed, prev.get("speed")))
                        {
                            Some(why) => by_speed.push(format!("{}: {why}", t.what)),
                            None => moved.push(t.what),
                        }
                    }
                    cell
                }
                None => "-".into(),
            };
            let _ = writeln!(
                o,
                "| {} | {} | {} | {} | {} |",
                t.what,
                t.measured,
                p,
                change,
                yes_no(t.met)
            );
        } else {
            let _ = writeln!(o, "| {} | {} | {} |", t.what, t.measured, yes_no(t.met));
        }
    }
    let busy = r
        .datapath
        .as_ref()
        .map(|d| format!("{} of {}", d.busy_runs(), d.others.len()));
    if has_prev {
        let _ = writeln!(
            o,
            "\nPrevious run: {}. Missed targets are explained in the notes at the end.",
            prev.get("date").and_then(|v| v.as_str()).unwrap_or("?")
        );
        let _ = writeln!(
            o,
            "\nAgreement with the previous run (each figure's change, computed): {} of {compared} figures within {:.0} \
             %{}{}. This run: load average {} at its start, datapath runs on a busy machine: {}; the previous run: load \
             average {}, busy runs: {}.",
            compared - moved.len() - by_speed.len(),
            AGREE * 100.0,
            if by_speed.is_empty() {
                String::new()
            } else {
                format!(", {} more explained by the machine's own speed (below)", by_speed.len())
            },
            if moved.is_empty() {
                String::new()
            } else {
                format!("; not within it: {}", moved.join("; "))
            },
            m.load,
            busy.as_deref().unwrap_or("not measured"),
            prev.get("load").and_then(|v| v.as_str()).unwrap_or("not recorded"),
            prev.get("busy").and_then(|v| v.as_str()).unwrap_or("not recorded"),
        );
        if !by_speed.is_empty() {
            let _ = writeln!(
                o,
                "\nExplained by the machine's own speed (a fixed workload, `common::reference_ms`, timed before each \
                 section and beside each rule-scale target's runs): within {:.0} % once scaled by the change in its \
                 time, or moved the machine's way by less than the machine did: {}.",
                AGREE * 100.0,
                by_speed.join("; ")
            );
        }
        if let Some(speed) = r.datapath.as_ref().and_then(|d| machine_speed(d, &prev)) {
            let _ = writeln!(o, "\n{speed}");
        }
        for why in r.hooks.as_ref().map(|h| floor_moved(h, &prev)).unwrap_or_default() {
            let _ = writeln!(o, "\n{why}");
        }
    } else {
        let _ = writeln!(o, "\nMissed targets are explained in the notes at the end.");
    }
    if let Some(d) = &r.datapath {
        figures.insert(
            "off_speed".into(),
            serde_json::json!({"iperf_gbits": common::median(&d.off), "conn_per_s": common::median(&d.conn_off)}),
        );
    }
    if let Some(h) = &r.hooks {
        figures.insert("hook_parts".into(), hook_parts(h));
    }
    if !r.speed.is_empty() {
        figures.insert("speed".into(), serde_json::json!(r.speed));
    }
    if let Some(busy) = busy {
        figures.insert("busy".into(), serde_json::Value::String(busy));
    }
    figures.insert("load".into(), serde_json::Value::String(m.load.clone()));
    figures.insert("values".into(), serde_json::Value::Object(values));
    figures.insert("date".into(), serde_json::Value::String(m.date.clone()));
    o.push('\n');

    if let Some(d) = &r.datapath {
        datapath_section(&mut o, d);
    }
    if let Some(h) = &r.hooks {
        hooks_section(&mut o, h);
    }
    if let Some(c) = &r.capacity {
        capacity_section(&mut o, c);
    }
    if let Some(rs) = &r.rules {
        rules_section(&mut o, rs);
    }
    if let Some(s) = &r.startup {
        startup_section(&mut o, s);
    }
    if let Some(d) = &r.daemon {
        daemon_section(&mut o, d);
    }
    if let Some(p) = &r.profile {
        profile_section(&mut o, p);
    }
    let _ = writeln!(o, "{FIGURES_PREFIX}{} -->\n", serde_json::Value::Object(figures));
    let _ = writeln!(o, "## Notes\n");
    let _ = writeln!(o, "{NOTES_MARKER}");
    match previous.split_once(NOTES_MARKER) {
        Some((_, notes)) => o.push_str(notes.trim_start_matches('\n')),
        None => o.push('\n'),
    }
    if !o.ends_with('\n') {
        o.push('\n');
    }
    o
}

fn datapath_section(o: &mut String, d: &Datapath) {
    let _ = writeln!(o, "## 1. Datapath cost\n");
    let _ = writeln!(
        o,
        "`cargo xtask bench --only datapath`: iperf3 `-P 2 -t {}` from the client pod to `bench/iperf`'s ClusterIP \
         (DNAT by kube-proxy's rules to the iperf3 pod), {} rounds of (off, empty programs at d8-trace's hooks, tracing \
         `bench/other`, tracing `bench/iperf`); d8-trace is `d8-trace --svc SVC --netns NODE --no-k8s -o json`, started \
         before and stopped (Ctrl-C) after each run. \"Empty programs\" runs have no d8-trace but `nf_empty` (returns \
         NF_ACCEPT) attached in the node at `nf_pre`'s and `nf_post`'s hooks and priorities of both families and \
         `tp_empty` (returns at once) on each tracepoint d8-trace uses (`d8-ebpf/src/bench.rs`): what programs being \
         there cost, the floor that no optimisation of d8-trace's programs goes below. Short connections: {} client \
         threads in the client pod, each a loop of connect, `GET /`, read to EOF, close, against `bench/web` (two HTTP \
         pods), {} s per run, off, empty programs, tracing `bench/other`, tracing `bench/web` and with \
         `tcpdump -i any -s 128 -w /dev/null` in the node namespace instead of d8-trace (the SOP's first tool).\n\n\
         Each round begins with an \"off\" run and runs the others in an order rotated from round to round; one more \
         \"off\" run closes each series. The machine's speed drifts within a minute (the \"off\" runs below), so each \
         run is judged against the \"off\" speed at its moment: its round's \"off\" run and the next, weighted by \
         its place in the round. The on/off of a row is the median of those per-run ratios (`xtask/src/bench/datapath.rs`). \
         Every run records the 1-minute load average at its start and the CPU that processes \
         other than the bench's own (and kernel threads) used during it; a run where they used more than {:.0} % of a \
         core is marked `*` (busy machine).\n",
        d.iperf_secs,
        d.rounds,
        common::CONN_THREADS,
        d.conn_secs,
        common::BUSY_CORES * 100.0
    );
    runs_table(
        o,
        "Gbit/s",
        1,
        &d.off,
        d.off_close,
        &[
            (EMPTY_ROW, &d.empty),
            ("tracing another Service (`bench/other`)", &d.other),
            ("tracing this Service (`bench/iperf`)", &d.this),
        ],
    );
    runs_table(
        o,
        "connections/s",
        0,
        &d.conn_off,
        d.conn_off_close,
        &[
            (EMPTY_ROW, &d.conn_empty),
            ("tracing another Service (`bench/other`)", &d.conn_other),
            ("tracing this Service (`bench/web`)", &d.conn_on),
            ("off, `tcpdump -i any -s 128 -w /dev/null` in the node", &d.conn_tcpdump),
        ],
    );
    if let Some(why) = &d.tcpdump_skipped {
        let _ = writeln!(o, "\nThe tcpdump rounds were skipped: {why}.");
    }
    let _ = writeln!(
        o,
        "\nWhile tracing `bench/web`, per run: d8-trace's own CPU (user + system, from attached to the Ctrl-C) per 1,000 flows \
         {} ms (median {:.0} ms: {:.1} % of a core at 1,000 new flows/s); records from its kernel programs per flow \
         {} (median {:.1}).\n",
        fmt_list(&d.cpu_ms_per_1000_flows, 0),
        common::median(&d.cpu_ms_per_1000_flows),
        common::median(&d.cpu_ms_per_1000_flows) / 10.0,
        fmt_list(&d.records_per_flow, 1),
        common::median(&d.records_per_flow),
    );
    if !d.other_cpu_ms_per_1000_conns.is_empty() {
        let per_1000 = common::median(&d.other_cpu_ms_per_1000_conns);
        let rate = d.conn_other.median();
        let _ = writeln!(
            o,
            "While tracing `bench/other` (none of the connections traced), per run: d8-trace's own CPU per 1,000 \
             connections of the load {} ms (median {per_1000:.1} ms: {:.1} % of a core at that round's median \
             {rate:.0} connections/s).\n",
            fmt_list(&d.other_cpu_ms_per_1000_conns, 1),
            per_1000 * rate / 1e6 * 100.0,
        );
    }
    let flagged: Vec<String> = d
        .others
        .iter()
        .zip(&d.loads)
        .map(|(c, l)| format!("{:.2}{} ({l:.1})", c, if *c > common::BUSY_CORES { "*" } else { "" }))
        .collect();
    let _ = writeln!(
        o,
        "Other processes' CPU in cores per run, in the order run (the iperf3 rounds, each \"off\" first and the \
         others rotated, and the closing \"off\" run, then the short connection rounds likewise), with the load \
         average at its start: {}. Busy runs: {} of {}.\n",
        flagged.join(", "),
        d.busy_runs(),
        d.others.len()
    );
    let _ = writeln!(
        o,
        "Lost events over all traced runs: {}; failed connections: {}; flows in the report of a traced iperf3 run: {} \
         (the control connection and the two streams).\n",
        d.lost_events, d.conn_failed, d.this_flows
    );
}

/// One datapath table: the "off" runs (and the closing one), then each observer's runs, their
/// median, their per-run ratios to the "off" speed at their moment, and the median of those.
fn runs_table(o: &mut String, unit: &str, decimals: usize, off: &[f64], close: f64, rows: &[(&str, &Runs)]) {
    let _ = writeln!(
        o,
        "\n| d8-trace | Runs ({unit}) | Median | Per run over \"off\" at its moment | On/off |\n|---|---|---|---|---|"
    );
    let _ = writeln!(
        o,
        "| off (first of each round; closing run {close:.decimals$}) | {} | {:.decimals$} | | 1.000 |",
        fmt_list(off, decimals),
        common::median(off),
    );
    for (what, runs) in rows {
        if runs.is_empty() {
            continue;
        }
        let _ = writeln!(
            o,
            "| {what} | {} | {:.decimals$} | {} | {:.3} |",
            fmt_list(&runs.values, decimals),
            runs.median(),
            fmt_list(&runs.ratios(), 2),
            runs.on_off(),
        );
    }
}

/// The datapath tables' row of the round with empty programs at d8-trace's hooks.
const EMPTY_ROW: &str = "off, empty programs at d8-trace's hooks (`nf_empty`, `tp_empty`)";

fn hooks_section(o: &mut String, h: &Hooks) {
    let _ = writeln!(o, "## 2. Per-hook cost\n");
    let _ = writeln!(
        o,
        "`cargo xtask bench --only hooks`: BPF run-time statistics switched on with `bpf(BPF_ENABLE_STATS)` (an fd: \
         off again when closed; the global sysctl is never written) for {} s of traffic per scenario; mean \
         `run_time_ns / run_cnt` over that window, from `bpftool -j prog show`, for the programs d8-trace holds \
         (found through its `/proc/PID/fdinfo`). The floor is `nf_empty` (`d8-ebpf/src/bench.rs`, returns NF_ACCEPT) \
         loaded by the bench four times and attached in the lab node at the same hooks as `nf_pre` (PREROUTING and \
         OUTPUT at -250) and `nf_post` (PREROUTING/OUTPUT -99, POSTROUTING 101), of IPv4 and of IPv6 \
         (`nf_pre6`, `nf_post6`), one priority away (the kernel refuses a BPF hook at a priority another hook holds), \
         measured in the same window. Beside `nf_pre` and `nf_pre6` the bench also attaches `nf_hdr` and `nf_hdr6` \
         (`d8-ebpf/src/bench.rs`), which read the packet with `nf_pre`'s own loads up to the question its filter \
         asks (network header, IP version, protocol, destination address and port) and ask no map: the untraced \
         path's own floor, what looking at the packet at all costs. The lab is dual-stack; \"IPv6\" runs open the short connections to the IPv6 \
         ClusterIP of `bench/web`, the others use IPv4. \"Untraced\" traces \
         `bench/other` while the traffic goes elsewhere; \"UDP to a closed port\" sends about 20,000 datagrams a second \
         from the client pod to UDP port 9 of the node's address (dropped in the node, which has a conntrack entry \
         for it: `kfree_skb` reads the entry's tuple) or, in a window of its own, of pod `other-1` (dropped in the pod, \
         without one: `kfree_skb` reads the packet's headers), every one a `kfree_skb` of no traced flow. \
         Tracepoints fire for the whole machine (other processes' \
         sockets and packets included); their floor is `tp_empty` (returns at once), loaded once per tracepoint and \
         attached to `sock:inet_sock_set_state` and `skb:kfree_skb` in the same window. Every run has the kernel programs' debug log off (their log \
         statements pruned at load) except the two marked `--debug-kernel`, which have it on, and `--pcap` off except \
         the two marked `--pcap` (every packet of the traced flows copied to userspace, up to 32 per flow); the \
         targets are judged on the runs with both off, and on the programs called at least {} times a second there \
         (at least {} invocations in the window): a mean over fewer calls, a cold path's (`nf_pre6` under IPv4 \
         traffic, `kfree_skb` under bulk TCP), measures its cache misses more than its work and moved by half \
         between runs; such rows are shown, not judged, and the drop path is judged on the UDP drops.\n",
        h.secs,
        MIN_JUDGED_CALLS_PER_SEC,
        MIN_JUDGED_CALLS_PER_SEC * u64::from(h.secs),
    );
    let _ = writeln!(
        o,
        "| Traffic | d8-trace traces | Program | Invocations | ns / invocation | Empty program | Ratio |\n|---|---|---|---|---|---|---|"
    );
    for s in &h.scenarios {
        let mut who = match (s.traced, s.debug_kernel) {
            (true, false) => format!("this Service (`{}`)", s.svc),
            (false, false) => format!("another Service (`{}`)", s.svc),
            (true, true) => format!("this Service (`{}`), `--debug-kernel`", s.svc),
            (false, true) => format!("another Service (`{}`), `--debug-kernel`", s.svc),
        };
        if s.pcap {
            who.push_str(", `--pcap`");
        }
        for r in &s.rows {
            let (floor, ratio) = match s.floor_of(r) {
                // No invocations in the window (NaN): nothing to compare.
                Some(f) if f.is_finite() && r.ns_per_run.is_finite() => {
                    (format!("{f:.1} ns"), format!("{:.2}x", r.ns_per_run / f))
                }
                Some(_) => ("-".into(), "-".into()),
                None => ("-".into(), "-".into()),
            };
            let _ = writeln!(
                o,
                "| {} | {who} | `{}` | {} | {:.1} | {floor} | {ratio} |",
                s.traffic, r.name, r.runs, r.ns_per_run
            );
        }
        for f in s.floor_nf.iter().chain(&s.floor_tp) {
            let _ = writeln!(
                o,
                "| {} | {who} | `{}` | {} | {:.1} | | |",
                s.traffic, f.name, f.runs, f.ns_per_run
            );
        }
    }
    o.push('\n');
    breakdown(o, h);
}

/// Per new connection: how often each program ran and what it added above its floor (the
/// empty program at the same hook; the whole run time where there is none), for the
/// short-connection scenarios with the log off.
fn breakdown(o: &mut String, h: &Hooks) {
    let scenarios: Vec<_> = h
        .scenarios
        .iter()
        .filter(|s| !s.debug_kernel && s.connections.is_some_and(|c| c > 0))
        // `--pcap` runs are listed too: what the copies add per connection.
        .collect();
    if scenarios.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "Per new connection (the short-connection scenarios above, divided by the connections completed in the \
         window): invocations of each program and the time it added above its floor.\n"
    );
    let _ = writeln!(
        o,
        "| d8-trace traces | Connections | Program | Invocations / connection | ns / connection above the floor |\n|---|---|---|---|---|"
    );
    for s in scenarios {
        let conns = s.connections.unwrap_or(1) as f64;
        let mut who = match (s.traced, s.pcap) {
            (true, false) => format!("this Service (`{}`)", s.svc),
            (true, true) => format!("this Service (`{}`), `--pcap`", s.svc),
            (false, _) => format!("another Service (`{}`)", s.svc),
        };
        if s.ipv6 {
            who.push_str(", over IPv6");
        }
        let mut total = 0.0;
        for r in s.rows.iter().filter(|r| r.runs > 0) {
            let floor = s.floor_of(r).filter(|f| f.is_finite()).unwrap_or(0.0);
            let added = r.runs as f64 * (r.ns_per_run - floor).max(0.0) / conns;
            total += added;
            let _ = writeln!(
                o,
                "| {who} | {} | `{}` | {:.1} | {added:.0} |",
                s.connections.unwrap_or(0),
                r.name,
                r.runs as f64 / conns
            );
        }
        let _ = writeln!(o, "| {who} | | all programs | | **{total:.0}** |");
    }
    o.push('\n');
}

fn profile_section(o: &mut String, p: &Profile) {
    let _ = writeln!(o, "## 7. Where a traced connection's CPU goes\n");
    let _ = writeln!(
        o,
        "`cargo xtask bench --only profile`: {} rounds of {} s of the datapath section's short connections (connect, \
         `GET /`, close, {} client threads) against `bench/web`, alternately with d8-trace tracing `bench/other` (none of \
         the connections traced) and tracing `bench/web` (every one), each window sampled on every CPU by `perf record \
         -a -g -F {}` (started once d8-trace attached, stopped before its Ctrl-C, so neither its start nor its report is \
         in it). A sample counts for the first of these its command and call chain match: d8-trace's threads; perf; a \
         d8-trace program's frame (`bpf_prog_<tag>_<name>`) anywhere in the chain; the kernel's calls into programs \
         (`nf_hook_run_bpf`, `trace_call_bpf`, `perf_trace_run_bpf_submit`, `bpf_trace_run*`) without one; the idle task \
         outside softirq; everything else is the load. Each part in microseconds per connection completed: samples / {} \
         Hz / connections, over both cores, so the parts add up to what one connection took of the machine, idle time \
         included. The programs' own time is also in section 2 (BPF statistics); this adds what those cannot see: the \
         dispatch, the load's own work getting slower, and cores waiting.\n",
        p.rounds,
        p.secs,
        common::CONN_THREADS,
        profile::HZ,
        profile::HZ,
    );
    if let Some(why) = &p.skipped {
        let _ = writeln!(o, "Skipped on this machine: {why}.\n");
        return;
    }
    let _ = writeln!(
        o,
        "| Where the CPU went | Tracing another Service (us per connection) | Tracing this Service | Difference |\n|---|---|---|---|"
    );
    for part in profile::Part::ALL {
        let (a, b) = (p.other.us_per_connection(part), p.this.us_per_connection(part));
        let _ = writeln!(o, "| {} | {a:.1} | {b:.1} | {:+.1} |", part.describe(), b - a);
    }
    let (a, b) = (p.other.total_us(), p.this.total_us());
    let _ = writeln!(o, "| **all** | **{a:.1}** | **{b:.1}** | **{:+.1}** |", b - a);
    let _ = writeln!(
        o,
        "| connections in the sampled windows | {} | {} | |\n",
        p.other.connections, p.this.connections
    );
}

fn capacity_section(o: &mut String, c: &Capacity) {
    let _ = writeln!(o, "## 3. Capacity\n");
    let _ = writeln!(
        o,
        "`cargo xtask bench --only capacity`: new connections (one HTTP request each) through `bench/web` for {} s per \
         run from {} client threads, first flat out with d8-trace off, then tracing `bench/web` flat out and, if events \
         were lost, paced at lower rates. CPU is d8-trace's user + system time over the run (/proc/PID/stat) in % of one \
         core; RSS from /proc/PID/status at the end of the run. Clients, servers, kernel and d8-trace share the machine's \
         cores.\n",
        c.secs,
        common::CONN_THREADS
    );
    let _ = writeln!(
        o,
        "| d8-trace | Offered | New flows/s | Connections (failed) | Flows reported | Lost events | d8-trace CPU | RSS (peak) |\n|---|---|---|---|---|---|---|---|"
    );
    let _ = writeln!(o, "| off | as fast as possible | {:.0} | | | | | |", c.off_rate);
    for s in &c.steps {
        let _ = writeln!(
            o,
            "| tracing `bench/web` | {} | {:.0} | {} ({}) | {} | {} | {:.0} % | {:.1} MiB ({:.1} MiB) |",
            s.offered
                .map_or("as fast as possible".to_string(), |r| format!("{r:.0}/s")),
            s.achieved,
            s.connections,
            s.failed,
            s.flows,
            s.lost_events,
            s.cpu_pct,
            s.rss_mib,
            s.peak_rss_mib
        );
    }
    o.push('\n');
}

fn rules_section(o: &mut String, rs: &RuleScale) {
    let _ = writeln!(o, "## 4. Rule scale\n");
    let _ = writeln!(
        o,
        "`cargo xtask bench --only rules`: rule sets of N Services with 5 endpoints each from \
         `d8-userspace/testdata/rules/gen_large.py` (kube-proxy's chain names and hashes). Parse + model: \
         `rules::iptables::parse` / `rules::nftables::parse` timed alone in a child process that has read the file \
         (median of the runs, after one warm-up child not counted; the fixed workload `common::reference_ms` runs in the \
         bench right before each child, its median shown as the machine's speed); peak RSS is that child's own `VmHWM` \
         (the whole process: the text it read included; `wait4`'s figure would include the bench's own RSS, which a \
         child holds until it execs).\n"
    );
    let _ = writeln!(
        o,
        "| Services | Format | Size | Parse + model | Child process (read + parse + exit) | Peak RSS | Modelled |\n|---|---|---|---|---|---|---|"
    );
    for p in &rs.parse {
        let _ = writeln!(
            o,
            "| {} | {} | {:.1} MB | {:.0} ms (runs: {} ms; minor page faults {}; machine's speed {:.0} ms) | {:.0} ms | {:.0} MiB | {} Services, {} endpoints |",
            p.services,
            p.format,
            p.bytes as f64 / 1e6,
            p.parse_ms(),
            fmt_list(&p.parse_runs_ms, 0),
            range(&p.minor_faults),
            common::median(&p.reference_runs_ms),
            p.child_ms,
            p.peak_rss_mib,
            p.found_services,
            p.found_endpoints
        );
    }
    let _ = writeln!(
        o,
        "\nThe same rule sets loaded into a lab node namespace (`iptables-restore`, `nft -j -f`, and the iptables text once more \
         with `iptables-legacy-restore`): the time the tools take \
         to print them, next to `d8-trace explain --svc ns0/svc0 --netns NODE --no-k8s -o json` end to end (runs the \
         tools, parses, models, reports; median of 3 runs, 1 run at 10,000 Services) and its peak RSS (d8-trace's own `VmHWM`, followed while it \
         runs; the tool it runs is a separate process, shown on its own).\n"
    );
    let _ = writeln!(
        o,
        "| Services | Format | Load | Tool prints it | Tool peak RSS | Output | d8-trace explain | d8-trace explain peak RSS |\n|---|---|---|---|---|---|---|---|"
    );
    for n in &rs.node {
        if let Some(e) = &n.error {
            let _ = writeln!(
                o,
                "| {} | {} | {} | | | | | |",
                n.services,
                n.format,
                e.replace('|', "/").replace('\n', " ")
            );
            continue;
        }
        let tool = match n.format {
            "iptables-save" => "`iptables-save`",
            "iptables-legacy" => "`iptables-legacy-save`",
            _ => "`nft -j list table ip kube-proxy`",
        };
        let _ = writeln!(
            o,
            "| {} | {} | {:.0} ms | {tool} {:.0} ms | {:.0} MiB | {:.1} MB | {:.0} ms | {:.0} MiB |",
            n.services,
            n.format,
            n.load_ms,
            n.dump_ms,
            n.dump_rss_mib,
            n.dump_bytes as f64 / 1e6,
            n.explain_ms,
            n.explain_rss_mib
        );
    }
    let kernel: Vec<&NodeRow> = rs.node.iter().filter(|n| n.kernel_explain_ms.is_some()).collect();
    if !kernel.is_empty() {
        let _ = writeln!(
            o,
            "\nThe kernel readers against the tools: `d8-trace explain --svc ns0/svc0 --netns NODE --no-k8s \
             -o json --rules-from kernel` (reads `table ip kube-proxy`, or iptables-nft's `ip filter` and `ip nat`, over \
             nf_tables netlink, and iptables-legacy's x_tables blobs; no process but d8-trace; median of the runs listed, \
             after one warm-up run not counted, each run right after the fixed workload whose median is the machine's speed) \
             next to `--rules-from tools` (runs `nft -j list table ip kube-proxy`, or `iptables-nft-save` and \
             `iptables-legacy-save`; d8-trace's peak and the \
             tool's added: they run one after the other, so this bounds what they hold together).\n"
        );
        let _ = writeln!(
            o,
            "| Services | Mode | `--rules-from kernel` | runs | machine's speed | peak RSS (all processes) | `--rules-from tools` | peak RSS (d8-trace + tool) |\n|---|---|---|---|---|---|---|---|"
        );
        for n in kernel {
            let runs: Vec<String> = n.kernel_runs.iter().map(|r| format!("{r:.0}")).collect();
            let mode = match n.format {
                "iptables-save" => "iptables (nft)",
                "iptables-legacy" => "iptables (legacy)",
                _ => "nftables",
            };
            let _ = writeln!(
                o,
                "| {} | {mode} | {:.0} ms | {} ms | {:.0} ms | {:.0} MiB | {:.0} ms | {:.0} + {:.0} MiB |",
                n.services,
                n.kernel_explain_ms.unwrap_or(f64::NAN),
                runs.join(", "),
                common::median(&n.kernel_reference_ms),
                n.kernel_explain_rss_mib,
                n.explain_ms,
                n.explain_rss_mib,
                n.dump_rss_mib
            );
        }
    }
    if let Some(secs) = rs.equality_secs {
        let _ = writeln!(
            o,
            "\nThe kernel readers' model equals the tools' at 10,000 Services in both modes, iptables on both backends (`cargo test -p d8-userspace \
             --lib -- --ignored _at_10000_services`, run by this section: {secs:.0} s; a difference fails the run)."
        );
    }
    o.push('\n');
}

fn startup_section(o: &mut String, s: &Startup) {
    let _ = writeln!(o, "## 5. Start-up\n");
    let _ = writeln!(
        o,
        "`cargo xtask bench --only startup`: {} runs of `d8-trace --svc bench/web --netns NODE --no-k8s -o json`, timed \
         from spawn to its \"attached\" stderr line and to its first flow line, while one client opens a new connection \
         to `bench/web` every 5 ms.\n",
        s.runs
    );
    let _ = writeln!(o, "| From spawn to | Median | Min | Max |\n|---|---|---|---|");
    for (what, v) in [
        ("hooks attached", &s.attached_ms),
        ("first flow printed", &s.first_flow_ms),
    ] {
        let min = v.iter().copied().fold(f64::INFINITY, f64::min);
        let max = v.iter().copied().fold(0.0, f64::max);
        let _ = writeln!(
            o,
            "| {what} | {:.0} ms | {min:.0} ms | {max:.0} ms |",
            common::median(v)
        );
    }
    o.push('\n');
}

fn daemon_targets(t: &mut Vec<Target>, d: &DaemonBench) {
    let modes = |f: &dyn Fn(&daemon::ModeRun) -> String| {
        d.runs
            .iter()
            .map(|r| format!("{}: {}", r.mode, f(r)))
            .collect::<Vec<_>>()
            .join("; ")
    };
    if d.runs.is_empty() {
        return;
    }
    t.push(Target {
        key: "daemon_api",
        what: "Daemon API requests per node per hour: the initial LISTs and watch renewals only",
        measured: modes(&|r| {
            format!(
                "{:.0}/h ({} LIST pages + {} WATCHes at start, then {} LIST, {} WATCH in {:.0} s)",
                daemon::requests_per_hour(r),
                r.initial_lists,
                r.initial_watches,
                r.later_lists,
                r.later_watches,
                r.after_s
            )
        }),
        value: None,
        met: Some(d.runs.iter().all(daemon::only_renewals)),
    });
    t.push(Target {
        key: "daemon_cpu",
        what: "Daemon CPU at steady state, no traffic (quiet, and with an API change every second) < 1 % of a core",
        measured: modes(&|r| {
            format!(
                "{:.2} % quiet, {:.2} % with an API change every second",
                r.quiet_cpu_pct, r.changes_cpu_pct
            )
        }),
        value: None,
        met: Some(d.runs.iter().all(|r| r.quiet_cpu_pct < 1.0 && r.changes_cpu_pct < 1.0)),
    });
    t.push(Target {
        key: "daemon_rss",
        what: if d.services == 10_000 {
            "Daemon pod's processes at 10,000 Services < 256 MiB together, iptables and nftables mode"
        } else {
            "Daemon pod's processes < 256 MiB together (a --quick run: 1,000 Services, iptables mode)"
        },
        measured: modes(&|r| {
            format!(
                "{:.0} MiB ({:.0} d8-trace + {:.0} {})",
                r.daemon_peak_mib + r.child_peak_mib,
                r.daemon_peak_mib,
                r.child_peak_mib,
                if r.child_names.is_empty() {
                    "no child".to_string()
                } else {
                    r.child_names.join(", ")
                }
            )
        }),
        value: None,
        met: Some(d.runs.iter().all(|r| r.daemon_peak_mib + r.child_peak_mib < 256.0)),
    });
    t.push(Target {
        key: "daemon_healthz",
        what: "Daemon /healthz while the rules are re-read < 100 ms",
        measured: modes(&|r| {
            format!(
                "{:.1} ms (whole run {:.1} ms)",
                r.healthz_reread_max_ms, r.healthz_max_ms
            )
        }),
        value: None,
        met: Some(
            d.runs
                .iter()
                .all(|r| r.healthz_reread_max_ms < 100.0 && r.healthz_failed == 0),
        ),
    });
}

fn common_thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn daemon_section(o: &mut String, d: &DaemonBench) {
    let _ = writeln!(o, "## 6. The daemon at scale\n");
    let _ = writeln!(
        o,
        "`cargo xtask bench --only daemon`: `d8-trace daemon --netns NODE --kubeconfig K --node NODE` (`MALLOC_ARENA_MAX=1`, as \
         the manifest sets) in a lab node whose kube-proxy rules hold {} Services with 5 endpoints each (`gen_large.py`), \
         against the project's list-and-watch API server (`tests/src/apiserver.rs`, on the node's loopback, LISTs paged \
         by 500) serving the same Services and one EndpointSlice each (with managedFields and annotations, as a real \
         cluster's objects), plus the lab's node and pods. After the daemon is ready and has read the API and the rules: \
         a quiet window, a window with one EndpointSlice changed every second, then the ruleset touched twice (a table \
         added and removed: the nf_tables generation moves and the daemon reads all the rules again). `/healthz` is asked \
         every 100 ms throughout; the daemon's RSS and its children's (`VmHWM` of each, followed every 5 ms) are \
         sampled; the API server counts every LIST page and WATCH.\n",
        common_thousands(d.services)
    );
    let _ = writeln!(
        o,
        "| mode | ready / settled | LIST pages + WATCHes at start | then LIST, WATCH | requests per hour | CPU quiet | CPU with API changes | d8-trace peak RSS | children's peak RSS | sampled sum | /healthz longest (re-reads / whole run) | rule re-reads | reads (result: count) | lost events |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in &d.runs {
        let reads: Vec<String> = r.reads.iter().map(|(k, v)| format!("{k}: {v:.0}")).collect();
        let rereads: Vec<String> = r.reread_s.iter().map(|s| format!("{s:.1} s")).collect();
        let _ = writeln!(
            o,
            "| {} | {:.1} / {:.1} s | {} + {} | {}, {} in {:.0} s | {:.0} | {:.2} % ({:.0} s) | {:.2} % ({} changes in {:.0} s) | {:.0} MiB | {:.0} MiB{} | {:.0} MiB | {:.1} / {:.1} ms ({} asked, {} failed) | {} | {} | {:.0} |",
            r.mode,
            r.ready_s,
            r.settled_s,
            r.initial_lists,
            r.initial_watches,
            r.later_lists,
            r.later_watches,
            r.after_s,
            daemon::requests_per_hour(r),
            r.quiet_cpu_pct,
            r.quiet_s,
            r.changes_cpu_pct,
            r.changes,
            r.changes_s,
            r.daemon_peak_mib,
            r.child_peak_mib,
            if r.child_names.is_empty() {
                " (none)".to_string()
            } else {
                format!(" ({})", r.child_names.join(", "))
            },
            r.sampled_sum_mib,
            r.healthz_reread_max_ms,
            r.healthz_max_ms,
            r.healthz_samples,
            r.healthz_failed,
            rereads.join(", "),
            reads.join(", "),
            r.lost_events
        );
    }
    let _ = writeln!(
        o,
        "\nRequests per hour: the initial ones, plus what came after them at its measured rate, or the watches' renewals \
         if more (4 kinds, each watch ending after its `timeoutSeconds` of {} s, which a shorter window cannot see). The \
         pod's peak is d8-trace's `VmHWM` plus its largest child's: an upper bound of what they held at once (the \
         sampled sum is the largest seen at one instant).\n",
        d8_trace::model::k8s::watch::WATCH_SECS
    );
    if let Some(t) = &d.traffic {
        let _ = writeln!(
            o,
            "Under traffic: `d8-trace daemon --no-k8s` in the bench's small lab while 4 client threads open new connections \
             to `bench/web` as fast as they can: {:.0} connections/s for {:.0} s, daemon CPU {:.1} % of a core, {:.0} lost \
             events, {} failed connections.\n",
            t.flows_per_s, t.secs, t.cpu_pct, t.lost_events, t.failed
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::hooks::{ProgRow, Scenario};

    /// The worst row's ratio and the detail the target shows.
    fn worst_ratio(h: &Hooks, traced: bool, floor: &str) -> Option<(f64, String)> {
        worst_row(h, traced, floor).map(|w| (w.ratio(), w.detail()))
    }

    #[test]
    fn a_target_notes_the_empty_programs_on_off_only_when_that_round_ran() {
        assert_eq!(floor_note(&Runs::default()), "");
        assert_eq!(
            floor_note(&Runs::paired(&[97.0, 95.0, 99.0], &[100.0, 100.0, 100.0])),
            " (empty programs at its hooks: 0.970)"
        );
    }

    #[test]
    fn a_figure_that_moved_with_the_machine_speed_is_said_so() {
        let speed: std::collections::BTreeMap<&'static str, f64> = [("rules", 150.0), ("capacity", 150.0)].into();
        let prev = serde_json::json!({"rules": 100.0, "capacity": 100.0});
        // A parse 46 % slower on a machine 50 % slower: within 10 % once scaled.
        let why = speed_explains("rules_iptables", 305.0, 209.0, &speed, Some(&prev)).unwrap();
        assert!(why.contains("150 ms against 100 ms (+50 %)"), "{why}");
        assert!(why.ends_with("-3 %"), "{why}");
        // A rate falls as the machine slows.
        assert!(speed_explains("capacity", 9000.0, 13000.0, &speed, Some(&prev)).is_some());
        // Slower by far more than the machine: the code's.
        assert!(speed_explains("rules_iptables", 500.0, 209.0, &speed, Some(&prev)).is_none());
        // On/off ratios compare within a run; a run without the times says nothing.
        assert!(speed_explains("conn_this", 0.8, 0.95, &speed, Some(&prev)).is_none());
        assert!(speed_explains("rules_iptables", 305.0, 209.0, &speed, None).is_none());
        // A rule-scale figure's own time, beside its runs, wins over its section's when both
        // runs have it; with one run only, the section's (the same kind of time in both runs).
        let speed: std::collections::BTreeMap<&'static str, f64> = [("rules", 100.0), ("rules_iptables", 150.0)].into();
        let prev = serde_json::json!({"rules": 100.0, "rules_iptables": 100.0});
        let why = speed_explains("rules_iptables", 305.0, 209.0, &speed, Some(&prev)).unwrap();
        assert!(why.contains("beside its runs took 150 ms"), "{why}");
        let prev = serde_json::json!({"rules": 100.0});
        assert!(speed_explains("rules_iptables", 305.0, 209.0, &speed, Some(&prev)).is_none());
        // An explain 14 % faster on a machine whose workload beside it was 26 % faster: less than
        // the machine moved, its way (scaled one to one it would be 17 % slower). Faster on a
        // machine that was slower, or by more than the machine, it is not explained.
        let speed: std::collections::BTreeMap<&'static str, f64> = [("explain_nft_kernel", 48.0)].into();
        let prev = serde_json::json!({"explain_nft_kernel": 65.0});
        let why = speed_explains("explain_nft_kernel", 243.0, 282.0, &speed, Some(&prev)).unwrap();
        assert!(why.ends_with("moved -14 %, the machine's way and by less"), "{why}");
        assert!(speed_explains("explain_nft_kernel", 180.0, 282.0, &speed, Some(&prev)).is_none());
        let prev = serde_json::json!({"explain_nft_kernel": 40.0});
        assert!(speed_explains("explain_nft_kernel", 243.0, 282.0, &speed, Some(&prev)).is_none());
        // A rate: capacity fell 15 % while the machine slowed 30 %.
        let speed: std::collections::BTreeMap<&'static str, f64> = [("capacity", 130.0)].into();
        let prev = serde_json::json!({"capacity": 100.0});
        assert!(speed_explains("capacity", 8500.0, 10000.0, &speed, Some(&prev)).is_some());
        assert!(speed_explains("capacity", 11500.0, 10000.0, &speed, Some(&prev)).is_none());
    }

    #[test]
    fn on_off_targets_get_no_verdict_when_a_run_was_busy() {
        let datapath = |others: Vec<f64>| Results {
            datapath: Some(Datapath {
                off: vec![100.0],
                other: Runs::paired(&[99.5], &[100.0]),
                this: Runs::paired(&[99.0], &[100.0]),
                conn_off: vec![100.0],
                conn_other: Runs::paired(&[99.5], &[100.0]),
                conn_on: Runs::paired(&[96.0], &[100.0]),
                conn_tcpdump: Runs::paired(&[95.0], &[100.0]),
                others,
                ..Datapath::default()
            }),
            ..Results::default()
        };
        let verdicts = |r: &Results| -> Vec<(&'static str, Option<bool>)> {
            targets(r)
                .into_iter()
                .filter(|t| t.key.starts_with("ratio_") || t.key.starts_with("conn_"))
                .map(|t| (t.key, t.met))
                .collect()
        };
        let quiet = datapath(vec![0.01, 0.02]);
        assert!(verdicts(&quiet).iter().all(|(_, met)| *met == Some(true)));
        let busy = datapath(vec![0.01, 0.35]);
        let v = verdicts(&busy);
        assert_eq!(v.len(), 5);
        assert!(v.iter().all(|(_, met)| met.is_none()), "{v:?}");
        let conn = targets(&busy).into_iter().find(|t| t.key == "conn_this").unwrap();
        assert!(
            conn.measured.ends_with("not judged, 1 of 2 runs on a busy machine"),
            "{}",
            conn.measured
        );
    }

    #[test]
    fn per_invocation_targets_leave_out_programs_called_too_rarely_to_judge() {
        let row = |name: &str, runs: u64, ns: f64, floor: &'static str| ProgRow {
            name: name.into(),
            runs,
            ns_per_run: ns,
            floor: Some(floor),
        };
        let floor = |name: &str, ns: f64| ProgRow {
            name: name.into(),
            runs: 0,
            ns_per_run: ns,
            floor: None,
        };
        let hooks = Hooks {
            secs: 5,
            scenarios: vec![Scenario {
                traffic: "bulk TCP",
                traced: false,
                debug_kernel: false,
                pcap: false,
                svc: "bench/other",
                ipv6: false,
                rows: vec![
                    row("nf_pre", 400_000, 90.0, "nf_empty@pre"),
                    // 14 cold calls at 3.2x: shown in the table, not judged.
                    row("nf_pre6", 14, 1554.0, "nf_empty@pre6"),
                    row("kfree_skb", 4_999, 1000.0, "tp_empty@kfree_skb"),
                    row("inet_sock_set_state", 5_000, 150.0, "tp_empty@inet_sock_set_state"),
                ],
                floor_nf: vec![floor("nf_empty@pre", 60.0), floor("nf_empty@pre6", 486.0)],
                floor_tp: vec![
                    floor("tp_empty@kfree_skb", 160.0),
                    floor("tp_empty@inet_sock_set_state", 100.0),
                ],
                connections: None,
            }],
        };
        let (ratio, detail) = worst_ratio(&hooks, false, "nf_empty").unwrap();
        assert_eq!((ratio, detail.as_str()), (1.5, "nf_pre on bulk TCP: 90 ns vs 60 ns"));
        // With the header floor measured beside it, the detail says what reading the packet cost.
        let mut with_header = hooks.clone();
        with_header.scenarios[0].floor_nf.push(floor("nf_hdr@pre", 84.0));
        let (_, detail) = worst_ratio(&with_header, false, "nf_empty").unwrap();
        assert_eq!(
            detail,
            "nf_pre on bulk TCP: 90 ns vs 60 ns; reading the packet alone (nf_hdr@pre): 84 ns"
        );
        let (ratio, detail) = worst_ratio(&hooks, false, "tp_empty").unwrap();
        assert_eq!(ratio, 1.5, "{detail}");
        assert!(detail.starts_with("inet_sock_set_state"), "{detail}");
        assert_eq!(worst_ratio(&hooks, true, "nf_empty"), None);
    }

    #[test]
    fn a_ratio_that_moved_with_its_empty_program_is_said() {
        let hooks = |ns: f64, floor_ns: f64| Hooks {
            secs: 5,
            scenarios: vec![Scenario {
                traffic: "short connections",
                traced: false,
                debug_kernel: false,
                pcap: false,
                svc: "bench/other",
                ipv6: false,
                rows: vec![ProgRow {
                    name: "nf_pre".into(),
                    runs: 500_000,
                    ns_per_run: ns,
                    floor: Some("nf_empty@pre"),
                }],
                floor_nf: vec![ProgRow {
                    name: "nf_empty@pre".into(),
                    runs: 500_000,
                    ns_per_run: floor_ns,
                    floor: None,
                }],
                floor_tp: Vec::new(),
                connections: None,
            }],
        };
        let prev = |h: &Hooks| {
            serde_json::json!({"hook_parts": hook_parts(h)})
                .as_object()
                .unwrap()
                .clone()
        };
        // 100/63 -> 97/54: the ratio moved 13 %, the program 3 %, its empty program 14 %.
        let said = floor_moved(&hooks(97.0, 54.0), &prev(&hooks(100.0, 63.0)));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains(
                "(hook_untraced, nf_pre on short connections) moved with its empty program: 54 ns against 63"
            ),
            "{}",
            said[0]
        );
        // The program itself slower: nothing to excuse.
        assert!(floor_moved(&hooks(120.0, 63.0), &prev(&hooks(100.0, 63.0))).is_empty());
        // Within 10 %: nothing to say.
        assert!(floor_moved(&hooks(100.0, 60.0), &prev(&hooks(100.0, 63.0))).is_empty());
        // Another row judged now: not the same figure.
        let mut other = hooks(97.0, 54.0);
        other.scenarios[0].traffic = "bulk TCP";
        assert!(floor_moved(&other, &prev(&hooks(100.0, 63.0))).is_empty());
    }

    #[test]
    fn a_machine_slower_than_in_the_previous_run_is_said() {
        let run = |off: f64, conn_off: f64| Datapath {
            off: vec![off],
            conn_off: vec![conn_off],
            ..Datapath::default()
        };
        let prev = |v: serde_json::Value| v.as_object().unwrap().clone();
        let before = prev(serde_json::json!({"off_speed": {"iperf_gbits": 21.08, "conn_per_s": 14237.0}}));
        assert_eq!(machine_speed(&run(20.5, 13900.0), &before), None);
        let slower = machine_speed(&run(20.5, 12539.0), &before).unwrap();
        assert!(
            slower.contains("12539 new connections/s against 14237 (-12 %)"),
            "{slower}"
        );
        assert!(!slower.contains("Gbit/s"), "{slower}");
        // A previous run that did not record its speed: nothing to say.
        assert_eq!(machine_speed(&run(10.0, 1000.0), &prev(serde_json::json!({}))), None);
    }

    #[test]
    fn figures_agree_within_ten_percent_of_the_previous_run() {
        assert_eq!(change_cell(Some(0.88), Some(0.84)), Some(("+5 %".to_string(), true)));
        assert_eq!(
            change_cell(Some(7540.0), Some(3260.0)),
            Some(("+131 % (over 10 %)".to_string(), false))
        );
        assert_eq!(
            change_cell(Some(0.74), Some(0.839)),
            Some(("-12 % (over 10 %)".to_string(), false))
        );
        // Nothing to compare: a figure the previous run lacks, or a zero it cannot be divided by.
        assert_eq!(change_cell(Some(1.0), None), None);
        assert_eq!(change_cell(None, Some(1.0)), None);
        assert_eq!(change_cell(Some(1.0), Some(0.0)), None);
    }

    #[test]
    fn previous_values_are_read_back_from_the_figures_comment() {
        let previous = format!(
            "# Benchmarks\n{FIGURES_PREFIX}{} -->\n",
            serde_json::json!({"date": "then", "load": "0.4 0.3 0.2", "conn_this": "0.839", "values": {"conn_this": 0.839}})
        );
        let prev = previous_figures(&previous);
        assert_eq!(prev.get("load").and_then(|v| v.as_str()), Some("0.4 0.3 0.2"));
        let before = prev
            .get("values")
            .and_then(|v| v.get("conn_this"))
            .and_then(|v| v.as_f64());
        assert_eq!(before, Some(0.839));
    }
}
