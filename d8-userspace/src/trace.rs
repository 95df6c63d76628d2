//! The incident mode: trace the flows of one Service live.
//!
//! [`plan`] picks the Service's frontends and backends out of the service model; [`run`] reads
//! the kernel's facts, attaches the programs in the current network namespace, feeds the traced
//! targets to the kernel, joins events into flows (one live line per change), and stops on
//! Ctrl-C, SIGTERM or the deadline. Everything attached is detached before `run` returns, on
//! every path.

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

/// What [`Capture::ready`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ready {
    /// Ring-buffer records or conntrack events: [`Capture::pump`].
    Records,
    /// Interfaces appeared or went (TC hook set): [`Capture::follow_links`].
    Links,
}

/// The kernel side of a trace, attached: the programs of the chosen hook set, the ring buffer,
/// and on the TC set the conntrack-netlink join and the link-event subscription, each registered
/// with the event loop. Shared by [`run`] and the daemon. Dropping it detaches everything.
pub struct Capture {
    // Field order is drop order: the registrations go before the programs detach.
    ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    join: Option<AsyncFd<loader::tc::CtJoin>>,
    link_events: Option<AsyncFd<crate::kernel::rtnetlink::LinkEvents>>,
    tracer: Tracer,
    /// A record that waits for the conntrack events queued before it (the join's budget ran out).
    held: Option<events::Event>,
    decode_errors: u64,
}

impl Capture {
    /// Attaches `choice`'s hook set in the calling thread's network namespace and starts tracing
    /// `targets`. With the conntrack-netlink join, the subscription comes first, so every flow the
    /// programs see has its conntrack event. Must run inside a tokio runtime with IO enabled.
    pub fn open(
        choice: &HookChoice,
        config: &Config,
        mount: tracefs::Mount,
        ring_buffer_bytes: u32,
        targets: &[(TargetKey, u32)],
        node_ips: Vec<IpAddr>,
    ) -> Result<Self, Error> {
        let join = match choice.join {
            Join::CtNetlink => Some(loader::tc::CtJoin::open(targets, node_ips).map_err(Error::CtNetlink)?),
            Join::SkbConntrack => None,
        };
        let mut tracer = Tracer::attach_set(config, mount, ring_buffer_bytes, choice.set)?;
        tracer.set_targets(targets)?;
        let link_events = match tracer.take_link_events() {
            Some(l) => Some(register(l)?),
            None => None,
        };
        let join = match join {
            Some(j) => Some(register(j)?),
            None => None,
        };
        let ring = register(tracer.take_events()?)?;
        Ok(Self { ring, join, link_events, tracer, held: None, decode_errors: 0 })
    }

    /// Waits until records, conntrack events or link events are ready. Cancel-safe.
    pub async fn ready(&mut self) -> std::io::Result<Ready> {
        tokio::select! {
            guard = self.ring.readable_mut() => {
                // Cleared before draining: a record that lands meanwhile wakes us again.
                guard?.clear_ready();
                Ok(Ready::Records)
            }
            r = readable(self.join.as_ref()) => { r?; Ok(Ready::Records) }
            r = readable(self.link_events.as_ref()) => { r?; Ok(Ready::Links) }
        }
    }

    /// Drains the ring buffer (and the conntrack events) into `table`; `changed` is called with
    /// each flow that changed. Call it on readiness and on a periodic tick, since the kernel does
    /// not wake userspace for every record. Under a flood it lets the runtime's other tasks (the
    /// daemon's HTTP server) run every [`PUMP_BUDGET`] records or [`JOIN_BUDGET`] conntrack
    /// events; it never waits otherwise.
    pub async fn pump(&mut self, table: &mut FlowTable, changed: &mut dyn FnMut(&FlowTable, u64)) {
        while self.pump_some(table, changed, SLICE) {
            tokio::task::yield_now().await;
        }
    }

    /// [`Self::pump`] without yielding, for the last drain.
    pub fn pump_all(&mut self, table: &mut FlowTable, changed: &mut dyn FnMut(&FlowTable, u64)) {
        while self.pump_some(table, changed, SLICE) {}
    }

    /// Drains at most `budget` records and conntrack events; true when it stopped there (more
    /// may be waiting).
    fn pump_some(&mut self, table: &mut FlowTable, changed: &mut dyn FnMut(&FlowTable, u64), budget: Budget) -> bool {
        let Self { ring, join, held, tracer, decode_errors, .. } = self;
        let mut join = join.as_mut().map(|j| j.get_mut());
        pump(ring.get_mut(), &mut join, held, tracer, table, changed, decode_errors, budget)
    }

    /// Attaches to interfaces that appeared (TC hook set); one line per change or failure.
    pub fn follow_links(&mut self) -> Vec<String> {
        match self.link_events.as_mut() {
            Some(l) => {
                let events = l.get_mut().drain();
                self.tracer.apply_link_events(events)
            }
            None => Vec::new(),
        }
    }

    /// Replaces the traced targets, in the kernel and in the conntrack-netlink join.
    pub fn set_targets(&mut self, targets: &[(TargetKey, u32)], node_ips: Vec<IpAddr>) -> Result<(), Error> {
        self.tracer.set_targets(targets)?;
        if let Some(j) = self.join.as_mut() {
            j.get_mut().set_targets(targets, node_ips);
        }
        Ok(())
    }

    /// Ring-buffer reservations the kernel failed.
    pub fn lost_events(&self) -> u64 {
        self.tracer.lost_events()
    }

    /// What is attached, one line each.
    pub fn attached(&self) -> &[String] {
        self.tracer.attached()
    }

    /// Records that could not be decoded.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }

    /// Conntrack-netlink join: (socket overruns, failed `NAT_ALIAS` updates); zeros without it.
    pub fn join_losses(&self) -> (u64, u64) {
        self.join.as_ref().map_or((0, 0), |j| (j.get_ref().overruns(), j.get_ref().map_errors))
    }

    /// Warnings about what the join lost, for the end of a trace.
    pub fn join_warnings(&self) -> Vec<String> {
        let (overruns, map_errors) = self.join_losses();
        let mut w = Vec::new();
        if overruns > 0 {
            w.push(format!("the conntrack netlink socket overflowed {overruns} times: some flows may lack their backend"));
        }
        if map_errors > 0 {
            w.push(format!("{map_errors} NAT_ALIAS updates failed: some flows may miss replies"));
        }
        w
    }
}

/// Registers one of the capture's own fd holders (ring buffer, netlink sockets) with the event
/// loop, for reading.
fn register<T: std::os::fd::AsRawFd>(inner: T) -> Result<AsyncFd<T>, Error> {
    // SAFETY: the AsyncFd owns `inner`, which owns its fd (a map or a socket that is never
    // replaced), so the fd stays open and the same until the AsyncFd is dropped.
    unsafe { AsyncFd::register_with_interest(inner, tokio::io::Interest::READABLE) }.map_err(|e| Error::Io(e.into()))
}

/// How often the event loops drain the ring buffer whether or not the kernel woke them: the
/// programs may skip wakeups (`BPF_RB_NO_WAKEUP`) while the ring has room.
pub const PUMP_EVERY: Duration = Duration::from_millis(100);

/// Records handled between two chances for the runtime's other tasks to run.
pub const PUMP_BUDGET: usize = 4096;

/// Conntrack events joined (TC hook set) between two chances for the runtime's other tasks to
/// run: each costs a few `bpf()` map syscalls, about 1 ms under the VM's emulation.
pub const JOIN_BUDGET: usize = 256;

const SLICE: Budget = Budget { records: PUMP_BUDGET, joins: JOIN_BUDGET };

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

/// Live output: a flow's line is printed again only when it reads differently.
struct LivePrinter {
    enabled: bool,
    printed: std::collections::HashMap<u64, String>,
}

impl LivePrinter {
    fn print(&mut self, table: &FlowTable, id: u64, live: &mut dyn Write) {
        if !self.enabled {
            return;
        }
        if let Some(flow) = table.get(id) {
            let line = flow.summary_line();
            if self.printed.get(&id) != Some(&line) {
                let _ = writeln!(live, "{line}");
                self.printed.insert(id, line);
            }
        }
    }
}

/// Live lines waiting for the reader, at most, by default ([`LiveQueue::spawn`]).
pub const LIVE_QUEUE_LINES: usize = 4096;

/// The live queue's capacity: [`LIVE_QUEUE_LINES`], or `D8_TRACE_LIVE_QUEUE_LINES` (a smaller or
/// larger queue, for the end-to-end tests).
pub fn live_queue_lines() -> usize {
    std::env::var("D8_TRACE_LIVE_QUEUE_LINES").ok().and_then(|v| v.parse().ok()).unwrap_or(LIVE_QUEUE_LINES)
}

/// Live lines written by a thread of their own, so the event loop never waits for the reader
/// (a paused pager, `| less` not reading): a blocked loop stops draining the kernel's ring
/// buffer, which then overflows and loses events. At most `capacity` lines wait; beyond that new
/// lines are dropped and counted. [`LiveQueue::finish`] writes what is queued and says how many
/// were dropped. Writes never block and never fail.
pub struct LiveQueue {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    partial: Vec<u8>,
    dropped: u64,
}

impl LiveQueue {
    /// Starts the writer thread on `out`.
    pub fn spawn(mut out: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(capacity.max(1));
        let writer = std::thread::Builder::new().name("d8-live".into()).spawn(move || {
            let mut batch = Vec::new();
            while let Ok(line) = rx.recv() {
                batch.clear();
                batch.extend_from_slice(&line);
                while batch.len() < 64 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => batch.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                // A closed reader (`| head`) cannot show anything more: stop, and the queue
                // discards what follows.
                if out.write_all(&batch).and_then(|()| out.flush()).is_err() {
                    return;
                }
            }
        })?;
        Ok(Self { tx: Some(tx), writer: Some(writer), partial: Vec::new(), dropped: 0 })
    }

    fn send(&mut self, line: Vec<u8>) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(line) {
            Ok(()) => {}
            Err(std::sync::mpsc::TrySendError::Full(_)) => self.dropped += 1,
            // The writer stopped: the reader went away; nothing to count against it.
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {}
        }
    }

    /// Lines dropped so far because the reader was not keeping up.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Hands over what is left, waits until the writer has written every queued line (so output
    /// that follows stays after them), and returns the number of lines dropped.
    pub fn finish(mut self) -> u64 {
        self.close();
        self.dropped
    }

    fn close(&mut self) {
        if !self.partial.is_empty() {
            let rest = std::mem::take(&mut self.partial);
            self.send(rest);
        }
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Write for LiveQueue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(buf);
        while let Some(i) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=i).collect();
            self.send(line);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LiveQueue {
    fn drop(&mut self) {
        self.close();
    }
}

/// Waits until `fd` is readable (forever when there is none).
async fn readable<T: std::os::fd::AsRawFd>(fd: Option<&AsyncFd<T>>) -> std::io::Result<()> {
    match fd {
        Some(fd) => {
            fd.readable().await?.clear_ready();
            Ok(())
        }
        None => std::future::pending().await,
    }
}

/// What one slice of [`pump`] may do: records handled, conntrack events joined.
#[derive(Debug, Clone, Copy)]
struct Budget {
    records: usize,
    joins: usize,
}

/// Drains the ring buffer into the flow table, at most `budget.records` records and
/// `budget.joins` conntrack events; returns true when it stopped at a budget (more may be
/// waiting). With the conntrack-netlink join, queued conntrack events are read first; a record
/// stamped after the join last caught up may need an event still queued, so the join is polled
/// before it (when the join's budget is spent, the record waits in `held` for the next slice);
/// records keyed by a post-NAT tuple are mapped to their flow, and conntrack events go in last
/// (once the ring is empty: a flow starts with its first packet, not with its conntrack entry).
#[allow(clippy::too_many_arguments, reason = "the capture's parts, borrowed separately")]
fn pump(
    rb: &mut aya::maps::RingBuf<aya::maps::MapData>,
    join: &mut Option<&mut loader::tc::CtJoin>,
    held: &mut Option<events::Event>,
    tracer: &mut Tracer,
    table: &mut FlowTable,
    changed: &mut dyn FnMut(&FlowTable, u64),
    errors: &mut u64,
    budget: Budget,
) -> bool {
    let mut joins_left = budget.joins;
    if let Some(j) = join.as_deref_mut() {
        joins_left -= j.poll(tracer, joins_left);
    }
    for _ in 0..budget.records {
        let ev = match held.take() {
            Some(ev) => ev,
            None => match rb.next() {
                Some(item) => match events::decode(&item) {
                    Ok(ev) => ev,
                    Err(e) => {
                        *errors += 1;
                        if *errors == 1 {
                            eprintln!("d8-trace: {e}");
                        }
                        continue;
                    }
                },
                None => {
                    if let Some(j) = join.as_deref_mut() {
                        for ev in j.take_pending() {
                            if let Some(id) = table.apply(&ev) {
                                changed(table, id);
                            }
                        }
                    }
                    return joins_left == 0;
                }
            },
        };
        if let Some(j) = join.as_deref_mut()
            && j.needs_poll(ev.ts_ns)
        {
            joins_left -= j.poll(tracer, joins_left);
            if j.needs_poll(ev.ts_ns) {
                // Its conntrack event may still be queued: join that first, next slice.
                *held = Some(ev);
                return true;
            }
        }
        handle_event(table, ev, join.as_deref_mut(), changed);
    }
    true
}

fn handle_event(
    table: &mut FlowTable,
    mut ev: events::Event,
    join: Option<&mut loader::tc::CtJoin>,
    changed: &mut dyn FnMut(&FlowTable, u64),
) {
    if let Some(j) = join {
        j.translate(&mut ev);
        // The flow's conntrack entry goes in right after its first packet, before
        // anything else about it.
        if let Some(ct) = j.take_pending_for(&ev.flow) {
            let (first, second) = if ev.kind == events::Kind::New { (&ev, &ct) } else { (&ct, &ev) };
            for e in [first, second] {
                if let Some(id) = table.apply(e) {
                    changed(table, id);
                }
            }
            return;
        }
    }
    if let Some(id) = table.apply(&ev) {
        changed(table, id);
    }
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
    fn live_queue_never_waits_for_the_reader_and_counts_what_it_drops() {
        use std::sync::{Arc, Mutex, mpsc};
        /// A reader that reads nothing until told to.
        struct Paused {
            resume: mpsc::Receiver<()>,
            paused: bool,
            got: Arc<Mutex<Vec<u8>>>,
        }
        impl Write for Paused {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                if self.paused {
                    let _ = self.resume.recv();
                    self.paused = false;
                }
                self.got.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let (resume, rx) = mpsc::channel();
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut q = LiveQueue::spawn(Box::new(Paused { resume: rx, paused: true, got: got.clone() }), 4).unwrap();
        let started = std::time::Instant::now();
        for i in 0..100 {
            // In pieces, as `writeln!` may hand them over.
            write!(q, "line ").unwrap();
            writeln!(q, "{i}").unwrap();
        }
        assert!(started.elapsed() < Duration::from_secs(1), "writing waited for the reader");
        assert!(q.dropped() > 0);
        resume.send(()).unwrap();
        let dropped = q.finish();
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64 + dropped, 100, "{text}");
        assert_eq!(lines[0], "line 0");
        assert!(lines.iter().all(|l| l.starts_with("line ") && l[5..].parse::<u32>().is_ok()), "whole lines only: {text}");
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
