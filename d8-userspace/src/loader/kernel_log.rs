//! The kernel programs' debug log (aya-log, `d8-ebpf/src/log.rs`): off unless asked for
//! (`--debug-kernel`), and then forwarded as `tracing` events with the target `d8_trace::kernel`:
//! on stderr like every log line (text or JSON), never on stdout, which carries the report.
//!
//! Two steps, both in [`super::Tracer`]'s load:
//! 1. [`configure`], on every load, sets aya-log-ebpf's `AYA_LOG_LEVEL` global: [`LEVEL_OFF`] (0)
//!    or [`LEVEL_ON`] (every level). It must always be set: the object's default is 0xff, which
//!    logs everything. The global is in `.rodata`, which aya freezes, so the verifier knows it:
//!    with logging off it prunes every log statement (no instruction runs for it, nothing is
//!    written to the `AYA_LOGS` ring buffer, which then takes one page instead of 128 KiB).
//! 2. With logging on, [`start`] after the load and before the programs are loaded or attached:
//!    it takes `AYA_LOGS` from the object and forwards its records from a tokio task.

use std::{
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;
use tokio::io::{Interest, unix::AsyncFd};

/// `AYA_LOG_LEVEL` with kernel logging on: records of every level (`Level::Trace` is the last).
pub const LEVEL_ON: u8 = aya_log::Level::Trace as u8;
/// `AYA_LOG_LEVEL` with kernel logging off: below `Level::Error` (1), so no record at all.
pub const LEVEL_OFF: u8 = 0;

// `override_global` borrows the value for the loader's lifetime.
static ON: u8 = LEVEL_ON;
static OFF: u8 = LEVEL_OFF;

/// What [`configure`] sets: the global's name and its value.
pub fn global(enabled: bool) -> (&'static str, u8) {
    (aya_log::LEVEL, if enabled { LEVEL_ON } else { LEVEL_OFF })
}

/// The `AYA_LOGS` ring buffer as aya-log-ebpf declares it (128 KiB); off, it shrinks to one page
/// (the programs still reference it, so it must exist).
const LOG_MAP: &str = "AYA_LOGS";

/// Sets the kernel programs' log level on `loader` (see the module documentation). Call it for
/// every load of `d8-probes`, with `enabled` false unless kernel logging was asked for.
pub fn configure<'a, 'l>(loader: &'l mut EbpfLoader<'a>, enabled: bool) -> &'l mut EbpfLoader<'a> {
    if !enabled {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        loader.map_max_entries(LOG_MAP, u32::try_from(page).unwrap_or(4096));
    }
    // must_exist: an object without the global would log at its default level, 0xff.
    loader.override_global(aya_log::LEVEL, if enabled { &ON } else { &OFF }, true)
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kernel logging: {0}")]
    Logger(aya_log::Error),
    #[error("kernel logging needs a tokio runtime with IO enabled (none is running on this thread)")]
    NoRuntime,
    #[error("kernel logging: registering the log ring buffer with the event loop: {0}")]
    Register(std::io::Error),
}

/// The `tracing` target of kernel records: `RUST_LOG=d8_trace::kernel=off` silences them.
pub const TARGET: &str = "d8_trace::kernel";

/// Hands aya-log's records to `tracing` (stderr, in the chosen log format).
struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        // tracing's levels are static per call site: one site per level.
        macro_rules! forward {
            ($level:expr) => {
                tracing::event!(target: TARGET, $level, "kernel: {}", record.args())
            };
        }
        match record.level() {
            log::Level::Error => forward!(tracing::Level::ERROR),
            log::Level::Warn => forward!(tracing::Level::WARN),
            log::Level::Info => forward!(tracing::Level::INFO),
            log::Level::Debug => forward!(tracing::Level::DEBUG),
            log::Level::Trace => forward!(tracing::Level::TRACE),
        }
    }

    fn flush(&self) {}
}

type Logger = Arc<Mutex<EbpfLogger<ToTracing>>>;

/// The logger as the event loop's fd holder: the ring buffer's fd, which never changes.
struct Readable {
    fd: RawFd,
    logger: Logger,
}

impl AsRawFd for Readable {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

/// Forwards the kernel programs' records while it lives. Dropping it stops the task and forwards
/// what is still queued.
pub struct KernelLog {
    logger: Logger,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KernelLog {
    fn drop(&mut self) {
        self.task.abort();
        // Records written before the programs detached (the Tracer drops its links first).
        if !std::thread::panicking() {
            self.logger.lock().unwrap_or_else(PoisonError::into_inner).flush();
        }
    }
}

/// With kernel logging on (the object loaded after [`configure`] with `enabled`), takes the
/// object's `AYA_LOGS` ring buffer and forwards its records to `tracing` from a task on the current
/// tokio runtime; `Ok(None)` when the object has no log statement (no `AYA_LOGS` map). Call it
/// after the load and before loading or attaching programs. With logging off, do not call it:
/// nothing will be logged, and the map stays in the object unread.
pub fn start(ebpf: &mut Ebpf) -> Result<Option<KernelLog>, Error> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::NoRuntime)?;
    let logger = match EbpfLogger::init_with_logger(ebpf, ToTracing) {
        Ok(logger) => logger,
        Err(aya_log::Error::MapNotFound) => return Ok(None),
        Err(e) => return Err(Error::Logger(e)),
    };
    let readable = Readable {
        fd: logger.as_raw_fd(),
        logger: Arc::new(Mutex::new(logger)),
    };
    let logger = readable.logger.clone();
    // SAFETY: the AsyncFd owns a handle to the logger, which owns the ring buffer's fd; the fd
    // stays open and the same until both are dropped.
    let fd = unsafe { AsyncFd::register_with_interest(readable, Interest::READABLE) }
        .map_err(|e| Error::Register(e.into()))?;
    let task = runtime.spawn(async move {
        loop {
            let mut guard = match fd.readable().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::warn!(target: TARGET, "the kernel programs' log reader stopped: {e}");
                    return;
                }
            };
            // Cleared before draining: a record that lands meanwhile wakes us again.
            guard.clear_ready();
            guard
                .get_ref()
                .get_ref()
                .logger
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .flush();
        }
    });
    Ok(Some(KernelLog { logger, task }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_cover_everything_or_nothing() {
        assert_eq!(global(false), ("AYA_LOG_LEVEL", 0));
        assert_eq!(global(true), ("AYA_LOG_LEVEL", 5));
        // Every level is at most LEVEL_ON and above LEVEL_OFF, as aya-log-ebpf compares them.
        for level in [
            aya_log::Level::Error,
            aya_log::Level::Warn,
            aya_log::Level::Info,
            aya_log::Level::Debug,
        ] {
            assert!(level as u8 <= LEVEL_ON && level as u8 > LEVEL_OFF);
        }
    }

    /// The verifier accepts every program with kernel logging off and on (loaded, never
    /// attached: nothing changes in this network namespace), and off leaves no log statement in
    /// the loaded programs. Root only; the netfilter programs only where the kernel has netfilter
    /// links. In the VM: `d8-trace`'s unit-test binary with this test's name, as root.
    #[test]
    fn programs_load_with_logging_off_and_on() {
        use std::{collections::HashMap, os::fd::AsFd as _};

        use aya::programs::{SchedClassifier, TracePoint};
        use d8_common::Config;

        use crate::{
            kernel::{self, btf::Btf, tracefs},
            loader::{HookSet, PROBES, TRACEPOINTS, netfilter, tc},
        };

        // Never a silent pass: `cargo xtask test` runs as root on kernels with BTF.
        assert!(
            kernel::is_root(),
            "needs root (run as root, as `cargo xtask test` does)"
        );
        assert!(
            !PROBES.is_empty(),
            "the kernel programs were not built into this binary"
        );
        let btf = Btf::from_sys().unwrap_or_else(|e| panic!("needs kernel BTF: {e}"));
        let mut config = Config::default();
        let mut netfilter_links = btf.struct_size("bpf_nf_ctx").is_ok();
        if kernel::struct_offsets(&btf, &mut config).is_err() {
            // As `trace::kernel_setup` does for the TC hook set without conntrack's layout.
            config = kernel::packet_only_config(Some(&btf)).unwrap();
            netfilter_links = false;
        }
        let mount = tracefs::Mount::ensure().unwrap();
        kernel::tracepoint_layouts(&mount, &mut config).unwrap();

        let mut sizes: Vec<HashMap<String, u32>> = Vec::new();
        for enabled in [false, true] {
            // The conntrack read each way the loader may choose: the helper with logging off,
            // the cast with it on (where vmlinux has `nf_conn`; the helper again where not).
            let set = if enabled { HookSet::Netfilter } else { HookSet::Tc };
            let config = crate::loader::conntrack_read(&config, set);
            let mut loader = EbpfLoader::new();
            loader.override_global("CONFIG", &config, true);
            configure(&mut loader, enabled);
            let mut ebpf = loader.load(PROBES).unwrap();
            let map_fds: HashMap<String, RawFd> = ebpf
                .maps()
                .map(|(name, map)| (name.to_string(), crate::loader::map_data(map).fd().as_fd().as_raw_fd()))
                .collect();
            let mut size = HashMap::new();
            let names = TRACEPOINTS.iter().map(|t| t.0).chain(tc::PROGRAMS.iter().map(|p| p.0));
            for name in names {
                let program = ebpf.program_mut(name).unwrap();
                let info = if tc::PROGRAMS.iter().any(|p| p.0 == name) {
                    let p: &mut SchedClassifier = program.try_into().unwrap();
                    p.load().map(|()| p.info())
                } else {
                    let p: &mut TracePoint = program.try_into().unwrap();
                    p.load().map(|()| p.info())
                };
                let info = info
                    .unwrap_or_else(|e| panic!("{name} with logging {enabled}: {e:?}"))
                    .unwrap();
                size.insert(name.to_string(), info.size_translated().unwrap_or(0));
            }
            if netfilter_links {
                for name in crate::loader::NETFILTER_PROGRAMS {
                    netfilter::Program::load(PROBES, name, &map_fds)
                        .unwrap_or_else(|e| panic!("{name} with logging {enabled}: {e}"));
                }
            }
            sizes.push(size);
        }
        for (name, &off) in &sizes[0] {
            let on = sizes[1][name];
            eprintln!(
                "{name}: {} instructions loaded with logging off, {} on",
                off / 8,
                on / 8
            );
            // Every program but kfree_skb reports lost events, and all of them count them.
            if name != "kfree_skb" {
                assert!(
                    off < on,
                    "{name}: logging off did not prune the log statements ({off} vs {on} bytes)"
                );
            }
        }
    }
}
