//! `cargo xtask test` and `cargo xtask demo`.
//!
//! `test` runs, in order: setup; the whole workspace's tests on this kernel (unit tests, and the
//! end-to-end tests in `tests/`, which need root and build their own namespace labs); then the
//! kernel matrix: one VM per Debian cloud kernel (5.10, 6.1, 6.12; `--kernel` picks some,
//! `--no-vm` none), each running the part of the end-to-end suite that kernel proves ([`GUESTS`]).
//! Every run's libtest output is parsed: pass/fail/ignored counts per kernel are printed at the
//! end (and written to `target/xtask-test-summary.txt`), ignored tests by name. The run fails if
//! any test failed, if a guest's suite ran no test, if a guest skipped (ignored) a test, if a test
//! a kernel must run did not run there, or if `doctor` picked another hook set than expected.

use std::{
    io::{BufRead, BufReader, Write as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

use crate::{setup, vm};

#[derive(Debug, clap::Args)]
pub struct Options {
    /// Skip the kernel-in-VM suites.
    #[arg(long)]
    pub no_vm: bool,
    /// Skip the suite on this machine's kernel (run only the guests, e.g. `--no-host --kernel 5.10`).
    #[arg(long)]
    pub no_host: bool,
    /// Guest kernels to run (repeatable or comma-separated): 5.10, 6.1, 6.12 (default: all three).
    #[arg(long = "kernel", value_delimiter = ',', value_name = "SERIES")]
    pub kernels: Vec<String>,
    /// Hook set the end-to-end tests on this machine trace with (`D8_E2E_HOOKS`): `auto` (what
    /// `d8-trace doctor` picks for this kernel), `tc` or `netfilter`.
    #[arg(long, default_value = "auto", value_parser = ["auto", "tc", "netfilter"])]
    pub host_hooks: String,
    /// Guests booted at once. TCG guests spend much of their time waiting (traces of fixed
    /// length, timeouts), so two share the two cores well; 1 runs them one after the other.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=3))]
    pub guests_at_once: u32,
    /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter (host suite only).
    #[arg(last = true)]
    pub cargo_args: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct DemoOptions {
    /// Arguments for `d8-trace demo` (after `--`), e.g. `-o json`.
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// One run of the end-to-end test executable in a guest: a hook set and libtest arguments.
struct GuestRun {
    /// `D8_E2E_HOOKS` for this run.
    hooks: &'static str,
    /// libtest filters and `--skip` options.
    args: &'static [&'static str],
    /// Test-name prefixes that must run here, with how many at least: a renamed or filtered-out
    /// test must not pass unnoticed.
    expect: &'static [(&'static str, usize)],
}

/// A guest kernel of the matrix and what it proves.
struct Guest {
    series: &'static str,
    /// What `d8-trace doctor --json` must call `hook_set` there.
    hook_set: &'static str,
    /// One line for the summary and the README.
    proves: &'static str,
    timeout: u64,
    runs: &'static [GuestRun],
}

/// The matrix. Software emulation is slow (every test several times its host time; the three
/// guests take 20-30 min of CI's 50 on its 2-core machine), so each kernel runs what only it
/// proves: legacy clsact (5.10, no tcx, no netfilter links, no drop reasons: every verdict class
/// in iptables mode, which is what 5.10's kube-proxy runs: its nftables mode needs 5.13, all of
/// `tc::`, the demo), tcx and netfilter links (6.12: every verdict class in nftables mode on tcx
/// with the `tc::` tests that differ there, and the tracer's tests on netfilter links), IPVS and
/// conntrack_full plus a smoke subset (6.1). The foreign-filter and SIGKILL-residue tests run on
/// every kernel.
const GUESTS: &[Guest] = &[
    Guest {
        series: "5.10",
        hook_set: "tc",
        proves: "TC on legacy clsact: tc::, every scenario (iptables mode), five over IPv6 too (checked alone: the host compares them with IPv4), the demo",
        timeout: 1800,
        runs: &[GuestRun {
            hooks: "tc",
            args: &[
                "tc::",
                "scenarios::",
                "demo::demo_json_gives_each_service_its_verdict_and_leaves_nothing",
                "errors::doctor_reports_the_hook_set",
                "pcap::the_kernel_copies_load_and_reach_the_file",
                // Five IPv6 scenarios (each compared with IPv4): the IPv6 parse on legacy clsact
                // and 5.10's verifier. Every class over IPv6 on the TC set runs on 6.12's tcx,
                // the same programs; CI's time allows one kernel for all of them.
                "dual_stack::healthy_traced_over_ipv6_iptables",
                "dual_stack::no_endpoints_traced_over_ipv6_iptables",
                "dual_stack::stale_endpoint_traced_over_ipv6_iptables",
                "dual_stack::backend_refused_traced_over_ipv6_iptables",
                "dual_stack::etp_local_traced_over_ipv6_iptables",
                "--skip",
                "_nftables",
            ],
            expect: &[
                ("tc::", 15),
                ("scenarios::", 16),
                ("dual_stack::", 5),
                ("demo::", 1),
                ("errors::doctor_reports_the_hook_set", 1),
                ("pcap::the_kernel_copies_load_and_reach_the_file", 1),
            ],
        }],
    },
    Guest {
        series: "6.1",
        hook_set: "tc",
        proves: "TC smoke subset (IPv4, and IPv6 checked alone), daemon::, vm:: (IPVS and conntrack_full, each over IPv4 and IPv6)",
        timeout: 1200,
        runs: &[GuestRun {
            hooks: "tc",
            args: &[
                "tc::tc_established_tcp_matches_netfilter",
                "tc::tc_foreign_filters_see_every_packet",
                "tc::tc_sigkill_residue_is_removed_by_the_next_start_and_by_cleanup",
                "scenarios::healthy_iptables",
                "errors::doctor_reports_the_hook_set",
                // The daemon on the TC set; its API tests (watches, a bad API) prove nothing
                // kernel-specific and stay on the host.
                "daemon::metrics_and_events_follow_the_traffic_and_sigterm_detaches",
                "daemon::follows_rule_rewrites_and_stays_bounded_under_a_flood_of_flows",
                "vm::",
                "pcap::the_kernel_copies_load_and_reach_the_file",
                "dual_stack::healthy_traced_over_ipv6_iptables",
                "dual_stack::no_endpoints_traced_over_ipv6_iptables",
            ],
            expect: &[
                ("pcap::the_kernel_copies_load_and_reach_the_file", 1),
                ("dual_stack::", 2),
                ("tc::", 3),
                ("scenarios::", 1),
                ("errors::doctor_reports_the_hook_set", 1),
                ("daemon::", 2),
                ("vm::ipvs_", 7),
                ("vm::conntrack_full", 2),
            ],
        }],
    },
    Guest {
        series: "6.12",
        hook_set: "netfilter",
        proves: "netfilter links: tracer::, cleanup, two IPv6 scenarios (nftables mode); TC on tcx: every scenario (nftables mode) over IPv4, nine over IPv6 (checked alone: the host runs every class over IPv6 and compares), tc:: subset",
        timeout: 1800,
        runs: &[
            GuestRun {
                hooks: "netfilter",
                args: &[
                    "tracer::",
                    "cleanup::nothing_remains_after_ctrl_c",
                    "errors::doctor_reports_the_hook_set",
                    "pcap::the_kernel_copies_load_and_reach_the_file",
                    // Two IPv6 scenarios on netfilter links (6.12's verifier on nf_pre6/nf_post6,
                    // the ICMPv6 reject tied back); every class runs on the host's netfilter
                    // links and on tcx below.
                    "dual_stack::healthy_traced_over_ipv6_nftables",
                    "dual_stack::no_endpoints_traced_over_ipv6_nftables",
                ],
                expect: &[
                    ("pcap::the_kernel_copies_load_and_reach_the_file", 1),
                    ("dual_stack::", 2),
                    ("tracer::", 11),
                    ("cleanup::", 1),
                    ("errors::doctor_reports_the_hook_set", 1),
                ],
            },
            GuestRun {
                hooks: "tc",
                // The tc:: tests that differ under tcx (attach, foreign filters, residue, drops);
                // each also traces with the netfilter set here, to compare.
                args: &[
                    "scenarios::",
                    "tc::tc_established_tcp_matches_netfilter",
                    "tc::tc_dropped_matches_netfilter",
                    "tc::tc_attaches_to_interfaces_that_appear_while_tracing",
                    "tc::tc_leaves_nothing_after_exit",
                    "tc::tc_foreign_filters_see_every_packet",
                    "tc::tc_sigkill_residue_is_removed_by_the_next_start_and_by_cleanup",
                    "tc::tc_keeps_its_clsact_when_another_tool_uses_it",
                    "pcap::the_kernel_copies_load_and_reach_the_file",
                    // IPv6 on tcx: one scenario per kernel path (NAT join, ICMPv6 reject, drops
                    // with and without a conntrack entry, resets, UDP); the classes that differ
                    // only in the rules or the API run over IPv6 on the host (CI's time).
                    "dual_stack::healthy_traced_over_ipv6",
                    "dual_stack::no_endpoints_traced_over_ipv6",
                    "dual_stack::stale_endpoint_traced_over_ipv6",
                    "dual_stack::backend_refused_traced_over_ipv6",
                    "dual_stack::backend_timeout_traced_over_ipv6",
                    "dual_stack::etp_local_traced_over_ipv6",
                    "dual_stack::probe_rst_traced_over_ipv6",
                    "dual_stack::stale_conntrack_entry_traced_over_ipv6",
                    "dual_stack::udp_stale_endpoint_traced_over_ipv6",
                    "--skip",
                    "_iptables",
                ],
                expect: &[
                    ("tc::", 7),
                    ("dual_stack::", 9),
                    ("scenarios::", 16),
                    ("pcap::the_kernel_copies_load_and_reach_the_file", 1),
                ],
            },
        ],
    },
];

/// After the host suite (when it traced on another hook set than TC): on this kernel's TC set, the
/// IPv6 class scenarios in whichever mode no guest runs them on the TC set, so every verdict class
/// runs over IPv6 on the TC set in iptables and in nftables mode. Guests take the rest: 6.12's tcx
/// run nine classes in nftables mode, 5.10 five in iptables mode, 6.1 `conntrack_full`.
/// (`dropped`'s scenario, `tracer::`'s, is in iptables mode.) Each is checked alone
/// (`D8_E2E_COMPARE_FAMILIES=0`): the host suite compared it with IPv4 on the netfilter set.
const HOST_TC_IPV6: GuestRun = GuestRun {
    hooks: "tc",
    args: &[
        // Both modes (a name without its mode suffix matches both tests).
        "dual_stack::mixed_stale_and_refused_traced_over_ipv6",
        "dual_stack::backend_timeout_drop_all_traced_over_ipv6",
        "dual_stack::udp_healthy_traced_over_ipv6",
        "dual_stack::udp_no_endpoints_traced_over_ipv6",
        "dual_stack::rules_missing_traced_over_ipv6",
        "dual_stack::kube_proxy_not_running_traced_over_ipv6",
        "dual_stack::kube_proxy_not_synced_traced_over_ipv6",
        "dual_stack::kube_proxy_version_skew_traced_over_ipv6",
        "dual_stack::service_port_undefined_traced_over_ipv6",
        "dual_stack::source_range_denied_traced_over_ipv6",
        "dual_stack::cluster_ip_unallocated_traced_over_ipv6",
        // iptables mode of four of 6.12's nine (5.10 runs the other five in iptables mode).
        "dual_stack::backend_timeout_traced_over_ipv6_iptables",
        "dual_stack::probe_rst_traced_over_ipv6_iptables",
        "dual_stack::stale_conntrack_entry_traced_over_ipv6_iptables",
        "dual_stack::udp_stale_endpoint_traced_over_ipv6_iptables",
        "tracer::drop_on_the_path_is_dropped_with_the_kernel_reason_ipv6",
    ],
    expect: &[("dual_stack::", 26), ("tracer::", 1)],
};

impl GuestRun {
    /// What is wrong with one run of this set, from its tally: no test ran, a test skipped where
    /// it must run, fewer tests of a group than expected, a failure.
    fn problems(&self, tally: &Tally) -> Vec<String> {
        let what = format!("hooks {} ({})", self.hooks, self.args.join(" "));
        let mut problems = Vec::new();
        if tally.ran() == 0 {
            problems.push(format!("{what}: no test ran"));
        }
        if !tally.ignored.is_empty() {
            problems.push(format!(
                "{what}: skipped where they must run: {}",
                tally.ignored.join(", ")
            ));
        }
        for (prefix, min) in self.expect {
            let n = tally.ran_names().filter(|t| t.starts_with(prefix)).count();
            if n < *min {
                problems.push(format!("{what}: {n} {prefix}* tests ran, {min} expected"));
            }
        }
        if !tally.failed.is_empty() {
            let failed: Vec<String> = tally.failed.iter().map(|t| format!("{t} [{}]", self.hooks)).collect();
            problems.push(format!("{what}: failed: {}", failed.join(", ")));
        }
        problems
    }
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn run_cmd(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {cmd:?}");
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed ({status})");
    }
    Ok(())
}

/// `target/` of this workspace, or `$CARGO_TARGET_DIR`.
fn target_dir() -> anyhow::Result<std::path::PathBuf> {
    Ok(match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => dir.into(),
        None => std::env::current_dir()?.join("target"),
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// What one suite (the host's, or one guest's) gave.
struct Outcome {
    /// `host 6.18.44` or `5.10 (5.10.0-46-cloud-amd64)`.
    label: String,
    proves: String,
    tests: Tally,
    elapsed: Duration,
    /// Why this suite fails the run (empty: it passed).
    problems: Vec<String>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    setup::run(&setup::Options { check: false })?;
    if !is_root() {
        bail!("the end-to-end tests build network namespaces and load BPF programs: run as root");
    }
    let guests: Vec<&Guest> = if opts.no_vm {
        Vec::new()
    } else if opts.kernels.is_empty() {
        GUESTS.iter().collect()
    } else {
        opts.kernels
            .iter()
            .map(|k| {
                GUESTS.iter().find(|g| g.series == k.as_str()).with_context(|| {
                    format!(
                        "--kernel {k}: the matrix has {}",
                        GUESTS.iter().map(|g| g.series).collect::<Vec<_>>().join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?
    };
    // The end-to-end tests run the d8-trace binary: build it and tell them where it is.
    run_cmd(cargo().args(["build", "-p", "d8-userspace", "--bin", "d8-trace"]))?;
    let binary = target_dir()?.join("debug/d8-trace");
    let mut outcomes = Vec::new();
    if !opts.no_host {
        let mut host = host_suite(opts, &binary)?;
        // A filtered run (`-- NAME`) asked for its tests alone; a TC run of the whole host
        // suite has every scenario on TC already.
        if opts.cargo_args.is_empty() && opts.host_hooks != "tc" {
            host_tc_ipv6(&mut host, &binary, &e2e_test_binary()?)?;
        }
        outcomes.push(host);
    }
    if !guests.is_empty() {
        let e2e = e2e_test_binary()?;
        outcomes.extend(guest_suites(&guests, &binary, &e2e, opts.guests_at_once as usize)?);
    }
    cross_check(&mut outcomes, opts.no_host || opts.no_vm || !opts.kernels.is_empty());
    let summary = summary(&outcomes);
    eprintln!("{summary}");
    let path = target_dir()?.join("xtask-test-summary.txt");
    if let Err(e) = std::fs::write(&path, &summary) {
        eprintln!("xtask: could not write {}: {e}", path.display());
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.problems.is_empty())
        .map(|o| o.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("failed: {}", failed.join("; "));
    }
    Ok(())
}

/// The workspace's tests on this machine's kernel, their output parsed as it is echoed.
fn host_suite(opts: &Options, binary: &std::path::Path) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    // One test thread: end-to-end tests share the kernel's BPF and netfilter state.
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--exclude", "d8-ebpf", "--no-fail-fast"])
        .env("D8_TRACE_BIN", binary)
        .env("D8_E2E_HOOKS", &opts.host_hooks)
        .args(&opts.cargo_args)
        .args(["--", "--test-threads=1"])
        .stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let mut child = cmd.spawn().with_context(|| format!("running {cmd:?}"))?;
    let stdout = child.stdout.take().context("cargo test's stdout")?;
    let mut lines = Vec::new();
    {
        let mut out = std::io::stdout().lock();
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test's output")?;
            let _ = writeln!(out, "{line}");
            lines.push(line);
        }
    }
    let status = child.wait()?;
    let tests = Tally::parse(&lines);
    let mut problems = Vec::new();
    if !status.success() {
        problems.push(format!("cargo test failed ({status})"));
    }
    if tests.ran() == 0 {
        problems.push("no test ran".into());
    }
    if !tests.failed.is_empty() {
        problems.push(format!("failed: {}", tests.failed.join(", ")));
    }
    Ok(Outcome {
        label: format!("host {release}"),
        proves: if opts.cargo_args.is_empty() {
            format!("every test of the workspace, hooks {}", opts.host_hooks)
        } else {
            format!("cargo test {}, hooks {}", opts.cargo_args.join(" "), opts.host_hooks)
        },
        tests,
        elapsed: started.elapsed(),
        problems,
    })
}

/// [`HOST_TC_IPV6`] on this machine: its tests join the host's outcome, tagged `[tc]`, its
/// problems the host's, its time on the host's proves line.
fn host_tc_ipv6(host: &mut Outcome, binary: &std::path::Path, e2e: &std::path::Path) -> anyhow::Result<()> {
    let run = &HOST_TC_IPV6;
    let started = Instant::now();
    let mut cmd = Command::new(e2e);
    cmd.env("D8_TRACE_BIN", binary)
        .env("D8_E2E_HOOKS", run.hooks)
        .env("D8_E2E_COMPARE_FAMILIES", "0")
        .arg("--test-threads=1")
        .args(run.args)
        .stdout(Stdio::piped());
    eprintln!("xtask: {cmd:?}");
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let lines: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    {
        let mut stdout = std::io::stdout().lock();
        for line in &lines {
            let _ = writeln!(stdout, "{line}");
        }
    }
    let tally = Tally::parse(&lines);
    host.problems.extend(run.problems(&tally));
    let what = format!("hooks {} ({})", run.hooks, run.args.join(" "));
    if !out.status.success() && tally.failed.is_empty() {
        host.problems.push(format!("{what}: exited with {}", out.status));
    }
    let elapsed = started.elapsed();
    host.proves.push_str(&format!(
        "; then {} IPv6 class scenarios on the TC set in {:.1} min",
        tally.ran(),
        elapsed.as_secs_f64() / 60.0
    ));
    host.tests.add(tally, run.hooks);
    host.elapsed += elapsed;
    Ok(())
}

/// The end-to-end test executable of `tests/` (built already by `cargo test`, or built here).
fn e2e_test_binary() -> anyhow::Result<std::path::PathBuf> {
    let out = cargo()
        .args([
            "test",
            "-p",
            "d8-tests",
            "--test",
            "e2e",
            "--no-run",
            "--message-format=json",
        ])
        .output()
        .context("cargo test --no-run")?;
    if !out.status.success() {
        bail!(
            "building the end-to-end tests failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] == "compiler-artifact"
            && msg["target"]["name"] == "e2e"
            && let Some(exe) = msg["executable"].as_str()
        {
            return Ok(exe.into());
        }
    }
    bail!("cargo did not name the e2e test executable")
}

/// Marks the guest script prints around each run, so the host can tell the runs apart.
const BEGIN: &str = "d8-suite: begin ";
const END: &str = "d8-suite: end ";
const HOOK_SET: &str = "d8-suite: hook_set=";

/// The shell script the guest runs: doctor (its choice checked), then each run of the e2e tests,
/// every run even if an earlier one failed; the script's status says whether all passed.
fn guest_script(guest: &Guest) -> String {
    let mut s = String::from(
        "rc=0\n/bin/d8-trace doctor || rc=1\n\
         hs=$(/bin/d8-trace doctor --json | sed -n 's/.*\"hook_set\": *\"\\([a-z]*\\)\".*/\\1/p')\n",
    );
    s.push_str(&format!("echo \"{HOOK_SET}$hs\"\n"));
    s.push_str(&format!(
        "[ \"$hs\" = {} ] || {{ echo \"d8-suite: doctor picked '$hs', expected {}\"; rc=1; }}\n",
        guest.hook_set, guest.hook_set
    ));
    for (i, run) in guest.runs.iter().enumerate() {
        let label = format!("{}-{i}", run.hooks);
        s.push_str(&format!("echo \"{BEGIN}{label}\"\n"));
        s.push_str(&format!(
            // The IPv6 scenarios' comparison with IPv4 is the host suite's (`family.rs`).
            "D8_E2E_COMPARE_FAMILIES=0 D8_E2E_HOOKS={} /bin/d8-e2e --test-threads=1 --include-ignored {}\n",
            run.hooks,
            run.args.join(" ")
        ));
        s.push_str(&format!("r=$?\necho \"{END}{label} status=$r\"\n[ $r = 0 ] || rc=1\n"));
    }
    s.push_str("exit $rc\n");
    s
}

/// One guest of the matrix: boot, run, parse. Never an `Err`: whatever went wrong is a problem of
/// this guest's outcome, and the other guests still run.
/// Every guest's suite, `at_once` guests at a time, the longest (most tests) first so the last
/// to start is a short one; outcomes in the matrix's order. The kernels are fetched first, one at
/// a time (apt keeps one state per suite, and a fresh machine downloads them here).
fn guest_suites(
    guests: &[&Guest],
    binary: &std::path::Path,
    e2e: &std::path::Path,
    at_once: usize,
) -> anyhow::Result<Vec<Outcome>> {
    // Where `vm::run_captured` looks (no `cache_dir` given).
    let cache = vm::workspace_root().join("target/vm-cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;
    for guest in guests {
        vm::kernel::resolve(guest.series, None, &cache)
            .with_context(|| format!("fetching the {} guest kernel", guest.series))?;
    }
    let weight = |g: &Guest| -> usize { g.runs.iter().flat_map(|r| r.expect.iter()).map(|(_, n)| n).sum() };
    let mut order: Vec<usize> = (0..guests.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(weight(guests[i])));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done: std::sync::Mutex<Vec<Option<Outcome>>> = std::sync::Mutex::new((0..guests.len()).map(|_| None).collect());
    let prefix = at_once > 1;
    std::thread::scope(|scope| {
        for _ in 0..at_once.min(guests.len()) {
            scope.spawn(|| {
                loop {
                    let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(&i) = order.get(k) else { break };
                    let outcome = guest_suite(guests[i], binary, e2e, prefix);
                    done.lock().unwrap()[i] = Some(outcome);
                }
            });
        }
    });
    Ok(done
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|o| o.expect("every guest ran"))
        .collect())
}

/// One guest's suite. With `prefix` (guests running at once) its console lines are echoed as
/// `[SERIES] line`.
fn guest_suite(guest: &Guest, binary: &std::path::Path, e2e: &std::path::Path, prefix: bool) -> Outcome {
    let started = Instant::now();
    let mut outcome = Outcome {
        label: guest.series.to_string(),
        proves: guest.proves.to_string(),
        tests: Tally::default(),
        elapsed: Duration::ZERO,
        problems: Vec::new(),
    };
    eprintln!(
        "xtask: guest {} (doctor must pick {}): {}",
        guest.series, guest.hook_set, guest.proves
    );
    let result = vm::run_captured(vm::Options {
        kernel: guest.series.into(),
        add: vec![
            format!("{}:/bin/d8-trace", binary.display()),
            format!("{}:/bin/d8-e2e", e2e.display()),
        ],
        // D8_IN_VM=1 lets the tests that change global sysctls (conntrack_full) run: only here.
        env: vec![
            "D8_TRACE_BIN=/bin/d8-trace".into(),
            "D8_IN_VM=1".into(),
            format!("D8_E2E_EXPECT_HOOK_SET={}", guest.hook_set),
        ],
        timeout: guest.timeout,
        echo_prefix: if prefix {
            format!("[{}] ", guest.series)
        } else {
            String::new()
        },
        command: vec!["/bin/sh".into(), "-c".into(), guest_script(guest)],
        ..vm::Options::default()
    });
    outcome.elapsed = started.elapsed();
    let run = match result {
        Ok(run) => run,
        Err(e) => {
            outcome.problems.push(format!("the guest did not finish: {e:#}"));
            return outcome;
        }
    };
    outcome.label = format!("{} ({})", guest.series, run.release);
    if let Some(ready) = run.ready_after {
        outcome
            .proves
            .push_str(&format!("; booted in {:.0}s", ready.as_secs_f64()));
    }
    let hook_set = run
        .console
        .iter()
        .find_map(|l| l.split_once(HOOK_SET).map(|(_, v)| v.trim().to_string()));
    if hook_set.as_deref() != Some(guest.hook_set) {
        outcome.problems.push(format!(
            "doctor picked {:?}, expected {}",
            hook_set.unwrap_or_default(),
            guest.hook_set
        ));
    }
    for (i, spec) in guest.runs.iter().enumerate() {
        let label = format!("{}-{i}", spec.hooks);
        let lines = section(&run.console, &label);
        let tally = Tally::parse(&lines);
        outcome.problems.extend(spec.problems(&tally));
        outcome.tests.add(tally, spec.hooks);
    }
    if run.status != 0 && outcome.problems.is_empty() {
        outcome
            .problems
            .push(format!("the guest's script exited with {}", run.status));
    }
    outcome
}

/// The console lines between a run's begin and end marks.
fn section(console: &[String], label: &str) -> Vec<String> {
    let begin = format!("{BEGIN}{label}");
    let end = format!("{END}{label} ");
    console
        .iter()
        .skip_while(|l| !l.contains(&begin))
        .skip(1)
        .take_while(|l| !l.contains(&end))
        .cloned()
        .collect()
}

/// Tests the host ignores (`#[ignore = "VM suite only ..."]`: the `vm::` tests) must have run in
/// some guest when the whole matrix ran.
fn cross_check(outcomes: &mut [Outcome], partial: bool) {
    if partial {
        return;
    }
    let ran: Vec<String> = outcomes
        .iter()
        .skip(1)
        .flat_map(|o| {
            o.tests
                .ran_names()
                .map(|t| t.split(" [").next().unwrap_or(t).to_string())
        })
        .collect();
    let Some(host) = outcomes.first_mut() else {
        return;
    };
    let missing: Vec<String> = host
        .tests
        .ignored
        .iter()
        .map(|t| t.split(" (").next().unwrap_or(t).to_string())
        .filter(|t| t.starts_with("vm::") && !ran.contains(t))
        .collect();
    if !missing.is_empty() {
        host.problems
            .push(format!("ignored here and run by no guest: {}", missing.join(", ")));
    }
}

fn summary(outcomes: &[Outcome]) -> String {
    let mut s = String::from("xtask: test summary (per kernel: passed / failed / ignored, time)\n");
    for o in outcomes {
        let t = &o.tests;
        s.push_str(&format!(
            "  {:<32} {:>4} passed {:>3} failed {:>3} ignored  {:>6.1} min  {}  [{}]\n",
            o.label,
            t.passed.len(),
            t.failed.len(),
            t.ignored.len(),
            o.elapsed.as_secs_f64() / 60.0,
            if o.problems.is_empty() { "ok" } else { "FAILED" },
            o.proves
        ));
        for ignored in &t.ignored {
            s.push_str(&format!("      ignored: {ignored}\n"));
        }
        for p in &o.problems {
            s.push_str(&format!("      problem: {p}\n"));
        }
    }
    s
}

/// Test names by result, from libtest's human output (`test NAME ... ok|FAILED|ignored[, reason]`).
#[derive(Debug, Default, PartialEq)]
struct Tally {
    passed: Vec<String>,
    failed: Vec<String>,
    /// With the reason when libtest printed one: `vm::ipvs_stale_real_server (VM suite only ...)`.
    ignored: Vec<String>,
}

impl Tally {
    fn parse(lines: &[String]) -> Tally {
        let mut t = Tally::default();
        // A kernel message on the console can land between libtest's `test NAME ... ` and its
        // result, which then starts the next line.
        let mut pending: Option<String> = None;
        for line in lines {
            let (name, result) = match line.find("test ").map(|pos| &line[pos + 5..]) {
                Some(rest)
                    if rest
                        .split_once(" ... ")
                        .is_some_and(|(n, _)| !n.is_empty() && !n.contains(' ')) =>
                {
                    let (name, result) = rest.split_once(" ... ").unwrap_or_default();
                    (name.to_string(), result.trim())
                }
                _ => match pending.take() {
                    Some(name) => (name, line.trim()),
                    None => continue,
                },
            };
            if !t.record(&name, result) {
                pending = Some(name);
            }
        }
        t
    }

    /// Files `name` under `result`; false when `result` is not one of libtest's.
    fn record(&mut self, name: &str, result: &str) -> bool {
        let name = name.to_string();
        if result == "ok" {
            self.passed.push(name);
        } else if result.starts_with("FAILED") {
            self.failed.push(name);
        } else if result == "ignored" {
            self.ignored.push(name);
        } else if let Some(reason) = result.strip_prefix("ignored, ") {
            self.ignored.push(format!("{name} ({reason})"));
        } else {
            return false;
        }
        true
    }

    fn ran(&self) -> usize {
        self.passed.len() + self.failed.len()
    }

    fn ran_names(&self) -> impl Iterator<Item = &str> {
        self.passed.iter().chain(&self.failed).map(String::as_str)
    }

    /// Adds another run's tests (a guest's second hook set), names tagged with the set.
    fn add(&mut self, other: Tally, hooks: &str) {
        let tag = |v: Vec<String>| v.into_iter().map(move |n| format!("{n} [{hooks}]"));
        self.passed.extend(tag(other.passed));
        self.failed.extend(tag(other.failed));
        self.ignored.extend(tag(other.ignored));
    }
}

pub fn demo(opts: &DemoOptions) -> anyhow::Result<()> {
    setup::run(&setup::Options { check: false })?;
    run_cmd(cargo().args(["build", "--release", "-p", "d8-userspace"]))?;
    let binary = target_dir()?.join("release/d8-trace");
    run_cmd(Command::new(binary).arg("demo").args(&opts.args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(String::from).collect()
    }

    #[test]
    fn tally_reads_libtest_output() {
        let t = Tally::parse(&lines(
            "running 4 tests\n\
             test tc::a ... ok\n\
             test vm::ipvs_b ... ignored, VM suite only (needs ip_vs)\n\
             [  12.3] nf_conntrack: table full test scenarios::c ... FAILED\n\
             test d ... ignored\n\
             test e ... [  13.1] Invalid ELF header magic: != ELF\n\
             ok\n\
             test result: FAILED. 1 passed; 1 failed; 2 ignored; 0 measured; 0 filtered out\n",
        ));
        assert_eq!(t.passed, ["tc::a", "e"]);
        assert_eq!(t.failed, ["scenarios::c"]);
        assert_eq!(t.ignored, ["vm::ipvs_b (VM suite only (needs ip_vs))", "d"]);
        assert_eq!(t.ran(), 3);
    }

    #[test]
    fn sections_split_the_console() {
        let console = lines(
            "d8-suite: begin tc-0\ntest a ... ok\nd8-suite: end tc-0 status=0\n\
             d8-suite: begin netfilter-1\ntest b ... ok\nd8-suite: end netfilter-1 status=101\n",
        );
        assert_eq!(section(&console, "tc-0"), ["test a ... ok"]);
        assert_eq!(section(&console, "netfilter-1"), ["test b ... ok"]);
    }

    #[test]
    fn every_guest_expects_tests_and_a_known_hook_set() {
        for g in GUESTS {
            assert!(["tc", "netfilter"].contains(&g.hook_set));
            assert!(crate::vm::kernel::SUITES.iter().any(|(s, _)| *s == g.series));
            for r in g.runs {
                assert!(!r.expect.is_empty() && !r.args.is_empty());
            }
        }
    }

    #[test]
    fn guest_script_checks_doctor_and_runs_each_set() {
        let s = guest_script(&GUESTS[2]);
        assert!(s.contains("[ \"$hs\" = netfilter ]"), "{s}");
        assert!(s.contains("D8_E2E_HOOKS=netfilter /bin/d8-e2e --test-threads=1 --include-ignored tracer::"));
        assert!(s.contains("D8_E2E_HOOKS=tc /bin/d8-e2e --test-threads=1 --include-ignored scenarios:: tc::"));
        assert!(s.contains(" --skip _iptables\n"), "{s}");
        assert!(s.contains("D8_E2E_COMPARE_FAMILIES=0 D8_E2E_HOOKS=tc "), "{s}");
        assert!(s.ends_with("exit $rc\n"));
    }
}
