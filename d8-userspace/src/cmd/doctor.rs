//! `d8-trace doctor`: what this kernel allows, and which hook set d8-trace would use and why.
//!
//! Each check is a plain fact with a reason; nothing here attaches anything lasting (tracefs is
//! mounted only for the check when it was not, and unmounted again).

use serde::Serialize;

use crate::{
    kernel::{self, DropReasons, btf::Btf, netns, tracefs},
    loader::HookSet,
    trace::{HookRequest, Scope, choose_hooks},
};

/// One check.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

/// Everything doctor found.
#[derive(Debug, Clone, Serialize)]
pub struct Findings {
    pub kernel: String,
    pub checks: Vec<Check>,
    /// `netfilter`, `tc` or `none`.
    pub hook_set: &'static str,
    pub reason: String,
    /// How the chosen set joins a flow's pre- and post-DNAT views (null with no set).
    pub join: Option<String>,
}

fn program_supported(ty: aya::programs::ProgramType) -> Result<bool, String> {
    aya::sys::is_program_supported(ty).map_err(|e| e.to_string())
}

/// Runs every check in the current network namespace.
pub fn findings(requested: HookRequest) -> Findings {
    let mut checks = Vec::new();
    let mut push = |name, ok, detail: String| checks.push(Check { name, ok, detail });

    let root = kernel::is_root();
    push(
        "root",
        root,
        if root {
            "running as root".into()
        } else {
            "not root: loading BPF needs CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON".into()
        },
    );

    let btf = Btf::from_sys();
    let (btf_ok, nf_ctx, drop_reasons, offsets) = match &btf {
        Ok(btf) => {
            let mut config = d8_common::Config::default();
            let offsets = kernel::struct_offsets(btf, &mut config).map(|()| config);
            let offsets = offsets.map_err(|e| {
                format!(
                    "{e}; the TC hook set goes on without them (drops are matched by the packet's tuple), the netfilter set cannot"
                )
            });
            (
                true,
                btf.struct_size("bpf_nf_ctx").is_ok(),
                DropReasons::from_btf(btf),
                Some(offsets),
            )
        }
        Err(_) => (false, false, DropReasons::default(), None),
    };
    push(
        "btf",
        btf_ok,
        match &btf {
            Ok(b) if b.modules().is_empty() => format!("{} present", kernel::btf::VMLINUX_BTF),
            Ok(b) => format!(
                "{} present, with the split BTF of {}",
                kernel::btf::VMLINUX_BTF,
                b.modules().join(", ")
            ),
            Err(e) => crate::error_chain(e),
        },
    );
    match offsets {
        Some(Ok(c)) => push(
            "struct offsets",
            true,
            format!(
                "sk_buff: head@{} network_header@{} _nfct@{}; nf_conn: tuples@{}/{} status@{}",
                c.skb_head, c.skb_network_header, c.skb_nfct, c.ct_tuple_orig, c.ct_tuple_reply, c.ct_status
            ),
        ),
        Some(Err(e)) => push("struct offsets", false, e),
        None => push("struct offsets", false, "no BTF to read them from".into()),
    }
    push(
        "drop reasons",
        !drop_reasons.is_empty(),
        if drop_reasons.is_empty() {
            "no enum skb_drop_reason in BTF (kernel before 5.17): every drop is named NOT_SPECIFIED".into()
        } else {
            "enum skb_drop_reason from BTF (e.g. NETFILTER_DROP)".into()
        },
    );

    let tracefs_state = if root {
        match tracefs::Mount::ensure() {
            Ok(mount) => {
                let mut missing = Vec::new();
                for (cat, name) in [
                    ("skb", "kfree_skb"),
                    ("tcp", "tcp_send_reset"),
                    ("tcp", "tcp_receive_reset"),
                    ("sock", "inet_sock_set_state"),
                ] {
                    if mount.format(cat, name).is_err() {
                        missing.push(format!("{cat}:{name}"));
                    }
                }
                let kprobes = mount.root().join("kprobe_events").exists();
                let note = if mount.mounted_by_us() {
                    " (mounted for this check, unmounted again)"
                } else {
                    ""
                };
                Some((missing, kprobes, format!("tracefs at {}{note}", mount.root().display())))
            }
            Err(e) => {
                push("tracefs", false, e.to_string());
                None
            }
        }
    } else {
        None
    };
    let mut kprobes = false;
    if let Some((missing, kp, where_)) = tracefs_state {
        push("tracefs", true, where_);
        push(
            "tracepoints",
            missing.is_empty(),
            if missing.is_empty() {
                "skb:kfree_skb, tcp:tcp_send_reset, tcp:tcp_receive_reset, sock:inet_sock_set_state".into()
            } else {
                format!("missing: {}", missing.join(", "))
            },
        );
        kprobes = kp;
    }

    use aya::programs::ProgramType;
    let probe = |ty| {
        if root {
            program_supported(ty)
        } else {
            Err("needs root to probe".into())
        }
    };
    let nf_prog = probe(ProgramType::Netfilter);
    let tc_prog = probe(ProgramType::SchedClassifier);
    let tracing_prog = probe(ProgramType::Tracing);
    let nf_ok = nf_ctx && matches!(nf_prog, Ok(true));
    push(
        "netfilter links",
        nf_ok,
        match (&nf_prog, nf_ctx) {
            (Ok(true), true) => "BPF_PROG_TYPE_NETFILTER loads; netfilter BPF links available (6.4+)".into(),
            (_, false) => "no struct bpf_nf_ctx in BTF: kernel before 6.4 or CONFIG_NETFILTER_BPF_LINK off".into(),
            (Ok(false), _) => "BPF_PROG_TYPE_NETFILTER does not load".into(),
            (Err(e), _) => e.clone(),
        },
    );
    push("tc programs", matches!(tc_prog, Ok(true)), format!("{tc_prog:?}"));
    push(
        "fentry/fexit",
        matches!(tracing_prog, Ok(true)),
        match &tracing_prog {
            Ok(true) => "BPF_PROG_TYPE_TRACING loads".into(),
            Ok(false) => "BPF_PROG_TYPE_TRACING refused here (EPERM on some kernels); not needed".into(),
            Err(e) => e.clone(),
        },
    );
    push(
        "kprobes",
        kprobes,
        if kprobes {
            "kprobe_events present (not used: this build joins the TC views through conntrack netlink events)".into()
        } else {
            "no kprobe_events in tracefs (CONFIG_KPROBES off?); not needed".into()
        },
    );
    let conntrack = std::path::Path::new("/proc/sys/net/netfilter/nf_conntrack_max").exists();
    push(
        "conntrack",
        conntrack,
        if conntrack {
            "nf_conntrack loaded".into()
        } else {
            "nf_conntrack not loaded in this kernel/netns yet".into()
        },
    );

    let tc_ok = matches!(tc_prog, Ok(true));
    let ctnetlink = if root {
        crate::kernel::ctnetlink::Events::open()
            .map(drop)
            .map_err(|e| e.to_string())
    } else {
        Err("needs root to subscribe".into())
    };
    push(
        "conntrack events",
        ctnetlink.is_ok(),
        match &ctnetlink {
            Ok(()) => "NFNLGRP_CONNTRACK_NEW subscription works (the TC hook set's join)".into(),
            Err(e) => format!("cannot subscribe to conntrack netlink events: {e} (nf_conntrack_netlink missing?)"),
        },
    );
    if tc_ok {
        push(
            "tc attach",
            true,
            if crate::loader::tc::uses_netlink() {
                "netlink filters on a clsact qdisc (before 6.6); a qdisc d8-trace adds is removed on exit".into()
            } else {
                "tcx links (6.6+): no qdisc involved".into()
            },
        );
    }

    let (hook_set, reason, join) = match choose_hooks(requested, nf_ok) {
        Ok(choice) if choice.set == HookSet::Tc && !tc_ok => (
            "none",
            format!("{}, but TC programs do not load here ({tc_prog:?})", choice.reason),
            None,
        ),
        Ok(choice) if choice.set == HookSet::Tc && ctnetlink.is_err() => (
            "none",
            format!(
                "{}, but its join (conntrack netlink events) is unavailable",
                choice.reason
            ),
            None,
        ),
        Ok(choice) => (
            choice.set.name(),
            choice.reason,
            Some(choice.join.describe().to_string()),
        ),
        Err(e) => ("none", e.to_string(), None),
    };
    Findings {
        kernel: kernel::release(),
        checks,
        hook_set,
        reason,
        join,
    }
}

/// Prints the findings (text or JSON) on stdout.
pub fn run(json: bool, scope: &Scope) -> Result<(), String> {
    if let Some(ns) = &scope.netns {
        netns::enter(ns).map_err(|e| crate::error_chain(&e))?;
    }
    let f = findings(scope.hooks);
    if json {
        println!("{}", serde_json::to_string_pretty(&f).map_err(|e| e.to_string())?);
        return Ok(());
    }
    println!("kernel {}", f.kernel);
    for c in &f.checks {
        println!("  [{}] {:<16} {}", if c.ok { "ok" } else { "--" }, c.name, c.detail);
    }
    println!("hook set: {} ({})", f.hook_set, f.reason);
    if let Some(join) = &f.join {
        println!("join: {join}");
    }
    Ok(())
}
