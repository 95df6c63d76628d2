//! The incident mode: trace the flows of one Service live.
//!
//! [`plan`] picks the Service's frontends and backends out of the service model; [`run`] reads
//! the kernel's facts, attaches the programs in the current network namespace, feeds the traced
//! targets to the kernel, joins events into flows (one live line per change), and stops on
//! Ctrl-C, SIGTERM or the deadline. Everything attached is detached before `run` returns, on
//! every path.
//!
//! - [`capture`]: the attached kernel side ([`Capture`]), drained in bounded slices; shared with
//!   the daemon.
//! - [`live`]: live lines through a writer thread ([`LiveQueue`]).

use std::{
    io::Write,
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use d8_common::{Config, FAMILY_V4, FAMILY_V6, TargetKey, target};
use tokio::io::unix::AsyncFd;

use crate::{
    cli::ServiceArg,
    events,
    flows::{Flow, FlowTable},
    kernel::{self, DropReasons, btf::Btf, tracefs},
    loader::{self, Tracer},
    model::{Endpoint, Frontend, FrontendKind, Protocol, ServiceModel, ServiceRef},
};

mod capture;
mod live;

pub use capture::{Capture, JOIN_BUDGET, PUMP_BUDGET, PUMP_EVERY, Ready};
pub use live::{LIVE_QUEUE_LINES, LiveQueue, live_queue_lines};
use live::LivePrinter;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `reason` completes the sentence: why the Service is not known, and what to do.
    #[error("Service {service} {reason}")]
    UnknownService { service: ServiceRef, reason: String },
    #[error("Service {service} has no port `{port}`; its ports: {known}")]
    UnknownPort { service: ServiceRef, port: String, known: String },
    #[error("tracing needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON); run d8-trace as root")]
    NotRoot,
    #[error(
        "--hooks netfilter: this kernel ({release}) has no netfilter BPF links (needs 6.4+ with CONFIG_NETFILTER_BPF_LINK); use --hooks tc or auto"
    )]
    NoNetfilterLinks { release: String },
    #[error("--hooks tc: the TC hook set is not available in this build; use --hooks netfilter on kernels 6.4+")]
    TcUnavailable,
    #[error("subscribing to conntrack netlink events (the TC hook set's join): {0}")]
    CtNetlink(#[source] std::io::Error),
    #[error(transparent)]
    Kernel(#[from] kernel::Error),
    #[error(transparent)]
    Tracefs(#[from] tracefs::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error("event loop: {0}")]
    Io(#[from] std::io::Error),
}

impl Error {
    /// Exit code of the contract: 2 for input that names nothing, 3 for the environment.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::UnknownService { .. } | Self::UnknownPort { .. } => 2,
            _ => 3,
        }
    }
}

/// What will be traced.
#[derive(Debug, Clone)]
pub struct Plan {
    pub service: ServiceRef,
    pub frontends: Vec<Frontend>,
    pub endpoints: Vec<Endpoint>,
    /// Concrete (protocol, address) of every frontend, NodePorts expanded to node addresses.
    pub frontend_addrs: Vec<(Protocol, SocketAddr)>,
    pub node_ips: Vec<IpAddr>,
}

/// Picks `arg`'s Service (and port) out of `model`. `node_ips` expand NodePort frontends that
/// match any local address.
pub fn plan(model: &ServiceModel, arg: &ServiceArg, node_ips: Vec<IpAddr>) -> Result<Plan, Error> {
    let Some(svc) = model.service(&arg.service) else {
        let same_ns: Vec<String> = model
            .services
            .iter()
            .filter(|s| s.service.namespace == arg.service.namespace)
            .map(|s| s.service.name.clone())
            .take(10)
            .collect();
        let ns = &arg.service.namespace;
        let named = model.services.iter().any(|s| !s.service.namespace.is_empty());
        let reason = if !model.kube_proxy.rules_present {
            "is not in kube-proxy's rules on this node: no kube-proxy rules were found at all (is this the node's \
             network namespace?)"
                .to_string()
        } else if model.kube_proxy.mode == crate::model::ProxyMode::Ipvs && !named {
            "cannot be found by name: kube-proxy runs in IPVS mode, where the kernel keeps only virtual servers \
             (addresses such as TCP 10.96.0.1:443) and Service names come only from the Kubernetes API, which gave \
             none here; pass --k8s-snapshot FILE (the output of `kubectl get services,endpointslices,pods,nodes -A \
             -o json`) or --kubeconfig PATH, or run with access to the API (without --no-k8s)"
                .to_string()
        } else if same_ns.is_empty() {
            format!("is not in kube-proxy's rules on this node, nor is any other Service of namespace {ns}")
        } else {
            format!("is not in kube-proxy's rules on this node; Services of {ns} that are: {}", same_ns.join(", "))
        };
        return Err(Error::UnknownService { service: arg.service.clone(), reason });
    };
    let wanted = |port_name: &str, port: u16| match &arg.port {
        None => true,
        Some(p) => p == port_name || p.parse::<u16>().ok() == Some(port),
    };
    let frontends: Vec<Frontend> = svc.frontends.iter().filter(|f| wanted(&f.port_name, f.port)).cloned().collect();
    if frontends.is_empty() && arg.port.is_some() {
        let mut known: Vec<String> = svc
            .frontends
            .iter()
            .map(|f| if f.port_name.is_empty() { f.port.to_string() } else { format!("{} ({})", f.port_name, f.port) })
            .collect();
        known.dedup();
        return Err(Error::UnknownPort {
            service: arg.service.clone(),
            port: arg.port.clone().unwrap_or_default(),
            known: known.join(", "),
        });
    }
    let port_names: Vec<&str> = frontends.iter().map(|f| f.port_name.as_str()).collect();
    let endpoints: Vec<Endpoint> = svc
        .endpoints
        .iter()
        .filter(|e| arg.port.is_none() || port_names.contains(&e.port_name.as_str()))
        .cloned()
        .collect();
    let mut frontend_addrs = Vec::new();
    for f in &frontends {
        if f.kind == FrontendKind::NodePort && f.ip.is_unspecified() {
            for ip in &node_ips {
                frontend_addrs.push((f.protocol, SocketAddr::new(*ip, f.port)));
            }
        } else {
            frontend_addrs.push((f.protocol, SocketAddr::new(f.ip, f.port)));
        }
    }
    frontend_addrs.sort();
    frontend_addrs.dedup();
    Ok(Plan { service: arg.service.clone(), frontends, endpoints, frontend_addrs, node_ips })
}

fn target_key(protocol: Protocol, addr: SocketAddr) -> TargetKey {
    let mut key = TargetKey { port: addr.port().to_be(), proto: protocol.number(), ..Default::default() };
    match addr.ip() {
        IpAddr::V4(v4) => {
            key.addr[..4].copy_from_slice(&v4.octets());
            key.family = FAMILY_V4;
        }
        IpAddr::V6(v6) => {
            key.addr = v6.octets();
            key.family = FAMILY_V6;
        }
    }
    key
}

impl Plan {
    /// Kernel targets: every frontend, and every backend (so direct flows such as kubelet probes
    /// are traced too).
    pub fn targets(&self) -> Vec<(TargetKey, u32)> {
        let mut t: Vec<(TargetKey, u32)> =
            self.frontend_addrs.iter().map(|(p, a)| (target_key(*p, *a), target::FRONTEND)).collect();
        for e in &self.endpoints {
            t.push((target_key(e.protocol, SocketAddr::new(e.ip, e.port)), target::BACKEND));
        }
        t
    }
}

/// How to trace.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Option<Duration>,
    pub reply_timeout: Duration,
    pub ring_buffer_bytes: u32,
    /// Print one line per flow change to the live writer.
    pub live: bool,
}

/// What a trace produced.
#[derive(Debug)]
pub struct Outcome {
    pub flows: Vec<Flow>,
    pub lost_events: u64,
    pub evicted_flows: u64,
    pub decode_errors: u64,
    pub attached: Vec<String>,
    pub warnings: Vec<String>,
}

/// Kernel monotonic time, the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The `--hooks` the user asked for; set by the CLI before [`kernel_setup`] runs.
static REQUESTED_HOOKS: std::sync::Mutex<Option<crate::cli::Hooks>> = std::sync::Mutex::new(None);
/// What [`kernel_setup`] chose, for [`run`].
static CHOSEN_HOOKS: std::sync::Mutex<Option<HookChoice>> = std::sync::Mutex::new(None);

/// Records the `--hooks` selection for [`kernel_setup`].
pub fn request_hooks(hooks: crate::cli::Hooks) {
    *REQUESTED_HOOKS.lock().unwrap_or_else(|e| e.into_inner()) = Some(hooks);
}

/// How the TC hook set joins a flow's pre- and post-DNAT views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// Netfilter programs read the skb's conntrack entry (`nf_post`).
    SkbConntrack,
    /// Conntrack netlink NEW events in userspace fill `NAT_ALIAS` and the flow table.
    CtNetlink,
}

impl Join {
    pub fn describe(self) -> &'static str {
        match self {
            Self::SkbConntrack => "the skb's conntrack entry, read after DNAT by the netfilter programs",
            Self::CtNetlink => {
                "conntrack netlink NEW events (NFNLGRP_CONNTRACK_NEW) read in userspace fill NAT_ALIAS and join the views \
                 (a TC program cannot read the skb's conntrack entry before 6.3; the kprobe join is not in this build)"
            }
        }
    }
}

/// The hook set a trace uses, and why.
#[derive(Debug, Clone)]
pub struct HookChoice {
    pub set: loader::HookSet,
    pub join: Join,
    pub reason: String,
}

/// Picks the hook set: `requested`, or for `auto` netfilter links where the kernel has them
/// (`netfilter_links`), else TC.
pub fn choose_hooks(requested: crate::cli::Hooks, netfilter_links: bool) -> Result<HookChoice, Error> {
    use crate::cli::Hooks;
    let tc = |reason: String| HookChoice { set: loader::HookSet::Tc, join: Join::CtNetlink, reason };
    match requested {
        Hooks::Netfilter | Hooks::Auto if netfilter_links => Ok(HookChoice {
            set: loader::HookSet::Netfilter,
            join: Join::SkbConntrack,
            reason: if requested == Hooks::Auto {
                "auto: netfilter BPF links are available (exact pre/post-DNAT views from the skb's conntrack entry)".into()
            } else {
                "--hooks netfilter".into()
            },
        }),
        Hooks::Netfilter => Err(Error::NoNetfilterLinks { release: kernel::release() }),
        Hooks::Tc => Ok(tc("--hooks tc".into())),
        Hooks::Auto => Ok(tc(format!(
            "auto: this kernel ({}) has no netfilter BPF links (6.4+, CONFIG_NETFILTER_BPF_LINK): TC classifiers on every interface",
            kernel::release()
        ))),
    }
}

/// What [`kernel_setup`] chose (netfilter when it did not run).
pub fn chosen_hooks() -> HookChoice {
    CHOSEN_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or(HookChoice {
        set: loader::HookSet::Netfilter,
        join: Join::SkbConntrack,
        reason: "default".into(),
    })
}

/// Everything the kernel programs need to know about this kernel, plus drop-reason names.
pub struct KernelSetup {
    pub config: Config,
    pub drop_reasons: DropReasons,
    pub mount: tracefs::Mount,
    pub warnings: Vec<String>,
}

/// Reads BTF and tracefs (mounting it if needed) and checks the hook set can work here.
pub fn kernel_setup() -> Result<KernelSetup, Error> {
    if !kernel::is_root() {
        return Err(Error::NotRoot);
    }
    let requested = REQUESTED_HOOKS.lock().unwrap_or_else(|e| e.into_inner()).unwrap_or(crate::cli::Hooks::Auto);
    let btf = match Btf::from_sys() {
        Ok(btf) => btf,
        // Without BTF (CONFIG_DEBUG_INFO_BTF off) the TC programs still work: they read packets.
        // Only the drop tracepoint needs sk_buff's layout.
        Err(e) if requested != crate::cli::Hooks::Netfilter => {
            let choice = choose_hooks(requested, false)?;
            let mut config = Config::default();
            for off in [&mut config.skb_head, &mut config.skb_network_header, &mut config.skb_nfct] {
                *off = u32::MAX;
            }
            config.ct_tuple_orig = u32::MAX;
            config.ct_tuple_reply = u32::MAX;
            config.ct_status = u32::MAX;
            config.nf_state_hook = u32::MAX;
            let mount = tracefs::Mount::ensure()?;
            let mut warnings = kernel::tracepoint_layouts(&mount, &mut config)?;
            warnings.insert(0, format!("{e}: tracing with the TC hook set without drops (the drop tracepoint needs sk_buff's layout from BTF)"));
            *CHOSEN_HOOKS.lock().unwrap_or_else(|e| e.into_inner()) = Some(choice);
            return Ok(KernelSetup { config, drop_reasons: DropReasons::default(), mount, warnings });
        }
        Err(e) => return Err(kernel::Error::from(e).into()),
    };
    let choice = choose_hooks(requested, btf.struct_size("bpf_nf_ctx").is_ok())?;
    let mut config = Config::default();
    let mut early_warnings = Vec::new();
    match kernel::struct_offsets(&btf, &mut config) {
        Ok(()) => {}
        // The TC programs read packets, not conntrack entries: without nf_conn's layout only the
        // drop tracepoint loses the entry's tuple (it then names flows by the packet's).
        Err(e) if choice.set == loader::HookSet::Tc => {
            config = Config::default();
            config.skb_head = btf.member_offset("sk_buff", "head").map_err(kernel::Error::from)?;
            config.skb_network_header = btf.member_offset("sk_buff", "network_header").map_err(kernel::Error::from)?;
            config.skb_nfct = u32::MAX;
            config.ct_tuple_orig = u32::MAX;
            config.ct_tuple_reply = u32::MAX;
            config.ct_status = u32::MAX;
            config.nf_state_hook = u32::MAX;
            early_warnings.push(format!(
                "conntrack struct offsets unavailable ({e}): drops are matched to flows by the dropped packet's tuple, not its conntrack entry"
            ));
        }
        Err(e) => return Err(e.into()),
    }
    let mount = tracefs::Mount::ensure()?;
    let mut warnings = kernel::tracepoint_layouts(&mount, &mut config)?;
    warnings.splice(0..0, early_warnings);
    *CHOSEN_HOOKS.lock().unwrap_or_else(|e| e.into_inner()) = Some(choice);
    Ok(KernelSetup { config, drop_reasons: DropReasons::from_btf(&btf), mount, warnings })
}


/// Traces `plan` until the deadline, Ctrl-C or SIGTERM. Must run inside a tokio runtime with IO
/// and time enabled, on the thread that is in the node's network namespace.
///
/// `live` gets one line per flow change; the loop waits for it, so hand in a [`LiveQueue`] when
/// it may block (a terminal or pipe the user reads).
pub async fn run(plan: &Plan, setup: KernelSetup, opts: &Options, live: &mut dyn Write) -> Result<Outcome, Error> {
    let KernelSetup { config, drop_reasons, mount, mut warnings } = setup;
    // Signal handlers first: a Ctrl-C or SIGTERM that arrives once hooks are attached must end the
    // trace normally (verdict printed, everything detached), never kill the process outright.
    use tokio::signal::unix::{SignalKind, signal};
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let choice = chosen_hooks();
    let mut capture =
        Capture::open(&choice, &config, mount, opts.ring_buffer_bytes, &plan.targets(), plan.node_ips.clone())?;
    eprintln!(
        "d8-trace: attached {} hooks ({} hook set); tracing {} ({} frontends, {} backends){}",
        capture.attached().len(),
        choice.set.name(),
        plan.service,
        plan.frontend_addrs.len(),
        plan.endpoints.len(),
        match opts.duration {
            Some(d) => format!(" for {}s", d.as_secs()),
            None => "; Ctrl-C to stop".into(),
        }
    );
    // Fault injection for the end-to-end tests: fail once everything is attached, to prove that
    // an error path detaches as well as a clean exit does.
    // Its value is how many milliseconds to stay attached first.
    if let Some(ms) = std::env::var_os("D8_TRACE_FAIL_AFTER_ATTACH") {
        let ms = ms.to_str().and_then(|v| v.parse().ok()).unwrap_or(0);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return Err(Error::Io(std::io::Error::other("failing after attach (D8_TRACE_FAIL_AFTER_ATTACH is set)")));
    }
    let mut table = FlowTable::new(plan.frontend_addrs.iter().copied(), plan.node_ips.clone(), drop_reasons)
        .with_reply_timeout_ns(opts.reply_timeout.as_nanos() as u64);
    let mut printer = LivePrinter { enabled: opts.live, printed: Default::default() };
    let mut changed = |table: &FlowTable, id: u64| printer.print(table, id, live);

    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(PUMP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    enum Wake {
        Ready(Ready),
        Tick,
        Stop,
    }
    loop {
        let wake = tokio::select! {
            r = capture.ready() => Wake::Ready(r?),
            _ = tick.tick() => Wake::Tick,
            _ = sigint.recv() => Wake::Stop,
            _ = sigterm.recv() => Wake::Stop,
            _ = async { match deadline { Some(d) => tokio::time::sleep_until(d).await, None => std::future::pending().await } } => Wake::Stop,
        };
        match wake {
            Wake::Ready(Ready::Records) => capture.pump(&mut table, &mut changed).await,
            Wake::Ready(Ready::Links) => {
                for note in capture.follow_links() {
                    eprintln!("d8-trace: {note}");
                }
            }
            Wake::Tick => {
                capture.pump(&mut table, &mut changed).await;
                for id in table.settle(monotonic_ns()) {
                    changed(&table, id);
                }
            }
            Wake::Stop => break,
        }
    }
    // Drain what is left, then settle outcomes at the end of the trace.
    capture.pump_all(&mut table, &mut changed);
    warnings.extend(capture.join_warnings());
    for id in table.settle(monotonic_ns()) {
        changed(&table, id);
    }
    let lost_events = capture.lost_events();
    let attached = capture.attached().to_vec();
    let decode_errors = capture.decode_errors();
    drop(capture);
    if decode_errors > 0 {
        warnings.push(format!("{decode_errors} kernel events could not be decoded"));
    }
    if table.evicted() > 0 {
        warnings.push(format!("{} flows were evicted from the flow table (it holds at most 100000)", table.evicted()));
    }
    Ok(Outcome {
        flows: table.flows().to_vec(),
        lost_events,
        evicted_flows: table.evicted(),
        decode_errors,
        attached,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Service;

    fn model() -> ServiceModel {
        let mut svc = Service::new(ServiceRef { namespace: "default".into(), name: "web".into() });
        for (name, port) in [("http", 80), ("metrics", 9090)] {
            svc.frontends.push(Frontend {
                kind: FrontendKind::ClusterIp,
                ip: "10.96.0.10".parse().unwrap(),
                port,
                protocol: Protocol::Tcp,
                port_name: name.into(),
                rule: None,
            });
        }
        svc.frontends.push(Frontend {
            kind: FrontendKind::NodePort,
            ip: "0.0.0.0".parse().unwrap(),
            port: 30080,
            protocol: Protocol::Tcp,
            port_name: "http".into(),
            rule: None,
        });
        svc.endpoints.push(Endpoint::in_rules("10.244.1.7".parse().unwrap(), 8080, Protocol::Tcp, "http"));
        let mut m = ServiceModel::default();
        m.kube_proxy.rules_present = true;
        m.services.push(svc);
        m
    }

    #[test]
    fn plans_frontends_and_backends_of_one_port() {
        let arg: ServiceArg = "default/web:http".parse().unwrap();
        let plan = plan(&model(), &arg, vec!["192.168.1.2".parse().unwrap()]).unwrap();
        assert_eq!(
            plan.frontend_addrs,
            vec![(Protocol::Tcp, "10.96.0.10:80".parse().unwrap()), (Protocol::Tcp, "192.168.1.2:30080".parse().unwrap())]
        );
        assert_eq!(plan.endpoints.len(), 1);
        let targets = plan.targets();
        assert_eq!(targets.len(), 3);
        assert_eq!(targets[2].1, target::BACKEND);
        assert_eq!(u16::from_be(targets[0].0.port), 80);
    }

    #[test]
    fn hook_set_follows_the_request_and_the_kernel() {
        use crate::cli::Hooks;
        let auto_old = choose_hooks(Hooks::Auto, false).unwrap();
        assert_eq!((auto_old.set, auto_old.join), (loader::HookSet::Tc, Join::CtNetlink));
        assert!(auto_old.reason.contains("no netfilter BPF links"), "{}", auto_old.reason);
        let auto_new = choose_hooks(Hooks::Auto, true).unwrap();
        assert_eq!((auto_new.set, auto_new.join), (loader::HookSet::Netfilter, Join::SkbConntrack));
        assert_eq!(choose_hooks(Hooks::Tc, true).unwrap().set, loader::HookSet::Tc);
        let err = choose_hooks(Hooks::Netfilter, false).unwrap_err();
        assert_eq!(err.exit_code(), 3);
        assert!(err.to_string().contains("--hooks tc"), "{err}");
    }


    #[test]
    fn unknown_service_and_port_say_what_exists() {
        let err = plan(&model(), &"default/nope".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        assert!(err.to_string().contains("web"), "{err}");
        let err = plan(&model(), &"default/web:grpc".parse().unwrap(), vec![]).unwrap_err();
        assert!(err.to_string().contains("http (80)") && err.to_string().contains("metrics (9090)"), "{err}");
        let err = plan(&model(), &"other/web".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Service other/web is not in kube-proxy's rules on this node, nor is any other Service of namespace other"
        );
        let mut empty = model();
        empty.services.clear();
        empty.kube_proxy.rules_present = false;
        let err = plan(&empty, &"default/web".parse().unwrap(), vec![]).unwrap_err();
        assert!(err.to_string().ends_with("no kube-proxy rules were found at all (is this the node's network namespace?)"), "{err}");
    }

    #[test]
    fn unknown_service_in_ipvs_mode_without_the_api_says_where_names_come_from() {
        // IPVS without the API: the rules hold only anonymous Services (virtual servers).
        let mut m = model();
        m.kube_proxy.mode = crate::model::ProxyMode::Ipvs;
        m.services[0].service = ServiceRef { namespace: String::new(), name: "TCP 10.96.0.10:80".into() };
        let err = plan(&m, &"default/web".parse().unwrap(), vec![]).unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let text = err.to_string();
        assert_eq!(
            text,
            "Service default/web cannot be found by name: kube-proxy runs in IPVS mode, where the kernel keeps only \
             virtual servers (addresses such as TCP 10.96.0.1:443) and Service names come only from the Kubernetes \
             API, which gave none here; pass --k8s-snapshot FILE (the output of `kubectl get \
             services,endpointslices,pods,nodes -A -o json`) or --kubeconfig PATH, or run with access to the API \
             (without --no-k8s)"
        );
        assert!(!text.contains("  "), "one sentence, no gaps: {text}");
        // With the API's names, a missing Service is just missing.
        m.services[0].service = ServiceRef { namespace: "default".into(), name: "web".into() };
        let err = plan(&m, &"default/nope".parse().unwrap(), vec![]).unwrap_err();
        assert!(err.to_string().ends_with("Services of default that are: web"), "{err}");
    }
}
