//! Where the tools' work runs: one dedicated thread per call.
//!
//! Netfilter links register in the network namespace of the thread that creates them, and child
//! processes (`iptables-save`, `nft`) inherit it. The CLI enters `--netns` on its main thread before
//! any other thread exists; a long-lived server cannot, so each call gets a fresh std thread that
//! enters the requested namespace (`setns` affects that thread only), runs its own current-thread
//! tokio runtime, and hands its answer back over a oneshot channel. The server's own threads never
//! change namespace.
//!
//! Cancellation: each job has a token, a child of the server-wide one. The call's cancellation
//! (the client sent `notifications/cancelled`, or the session ended), the client closing stdin, or
//! SIGINT/SIGTERM cancel it; the job thread then drops the job's future inside its runtime, which
//! drops the `Tracer` and so detaches every hook. [`Jobs::shutdown`] waits for the threads to end.
//!
//! Kernel jobs (`trace_service`, `doctor`: they attach programs or mount tracefs) hold the one
//! [`KernelSlot`] from before they start until their thread has detached everything; a second one
//! is refused at once with a sentence that says what runs and for how long (only a job that was
//! cancelled and is still detaching is waited for, up to 5 seconds).

use std::{
    future::Future,
    sync::{Arc, Mutex},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{error_chain, kernel::netns, trace};

/// What kind of failure a tool reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// The input names nothing (the CLI's exit code 2).
    Usage,
    /// The environment cannot do it (not root, kernel, namespace, tools: the CLI's exit code 3).
    Environment,
    /// Another kernel job is running.
    Busy,
    /// The call was cancelled before it finished.
    Cancelled,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Usage => "usage",
            Self::Environment => "environment",
            Self::Busy => "busy",
            Self::Cancelled => "cancelled",
        }
    }
}

/// A tool failure: one sentence, the same the CLI prints after `d8-trace: `.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            kind: FailureKind::Usage,
            message: message.to_string(),
        }
    }

    pub fn env(message: impl std::fmt::Display) -> Self {
        Self {
            kind: FailureKind::Environment,
            message: message.to_string(),
        }
    }

    pub fn cancelled(message: impl std::fmt::Display) -> Self {
        Self {
            kind: FailureKind::Cancelled,
            message: message.to_string(),
        }
    }

    /// The CLI's exit code for the same failure (busy and cancelled have none: 1).
    pub fn exit_code(&self) -> i32 {
        match self.kind {
            FailureKind::Usage => 2,
            FailureKind::Environment => 3,
            FailureKind::Busy | FailureKind::Cancelled => 1,
        }
    }
}

impl From<trace::Error> for Failure {
    fn from(e: trace::Error) -> Self {
        let message = error_chain(&e);
        if e.exit_code() == 2 {
            Self::usage(message)
        } else {
            Self::env(message)
        }
    }
}

impl From<netns::Error> for Failure {
    fn from(e: netns::Error) -> Self {
        Self::env(error_chain(&e))
    }
}

/// What holds the kernel slot.
#[derive(Debug, Clone)]
struct Holder {
    what: String,
    started: Instant,
    limit: Option<Duration>,
    /// The job's token, once it runs: cancelled means it is detaching and the slot frees soon.
    job: Option<CancellationToken>,
}

/// How long a call waits for a cancelled job to finish detaching before it is refused.
const STOPPING_WAIT: Duration = Duration::from_secs(5);

/// The right to attach programs or mount tracefs; released when dropped (by the job's thread,
/// after everything is detached).
pub struct KernelSlot {
    slot: Arc<Mutex<Option<Holder>>>,
}

impl KernelSlot {
    fn set_job(&self, token: CancellationToken) {
        if let Some(h) = self.slot.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            h.job = Some(token);
        }
    }
}

impl Drop for KernelSlot {
    fn drop(&mut self) {
        *self.slot.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// The jobs of one server.
pub struct Jobs {
    /// Cancelled when the server stops or the client goes away: cancels every job.
    root: CancellationToken,
    threads: Mutex<Vec<JoinHandle<()>>>,
    slot: Arc<Mutex<Option<Holder>>>,
}

impl Default for Jobs {
    fn default() -> Self {
        Self::new()
    }
}

impl Jobs {
    pub fn new() -> Self {
        Self {
            root: CancellationToken::new(),
            threads: Mutex::new(Vec::new()),
            slot: Arc::new(Mutex::new(None)),
        }
    }

    /// The server-wide token: cancelling it cancels every job.
    pub fn root(&self) -> &CancellationToken {
        &self.root
    }

    /// Takes the kernel slot for `what` (at most `limit` long), or says who holds it. A job that
    /// was cancelled and is still detaching is waited for (a few seconds), not reported as busy.
    pub async fn kernel_slot(&self, what: &str, limit: Option<Duration>) -> Result<KernelSlot, Failure> {
        let deadline = Instant::now() + STOPPING_WAIT;
        loop {
            match self.try_kernel_slot(what, limit) {
                Ok(slot) => return Ok(slot),
                Err((_, true)) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                Err((f, _)) => return Err(f),
            }
        }
    }

    /// The slot, or the refusal and whether the holder is stopping.
    fn try_kernel_slot(&self, what: &str, limit: Option<Duration>) -> Result<KernelSlot, (Failure, bool)> {
        let mut slot = self.slot.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(h) = slot.as_ref() {
            let stopping = h.job.as_ref().is_some_and(|t| t.is_cancelled());
            let elapsed = h.started.elapsed().as_secs();
            let left = match h.limit {
                Some(l) => format!(", about {}s left", l.as_secs().saturating_sub(elapsed).max(1)),
                None => String::new(),
            };
            let state = if stopping {
                "is stopping".to_string()
            } else {
                format!("is running (started {elapsed}s ago{left})")
            };
            let failure = Failure {
                kind: FailureKind::Busy,
                message: format!(
                    "busy: {} {state}; d8-trace runs one trace (or doctor) at a time: call again when it ends",
                    h.what
                ),
            };
            return Err((failure, stopping));
        }
        *slot = Some(Holder {
            what: what.to_string(),
            started: Instant::now(),
            limit,
            job: None,
        });
        Ok(KernelSlot {
            slot: self.slot.clone(),
        })
    }

    /// Runs `job` on a new thread inside `netns` (the server's own namespace when `None`), holding
    /// `slot` until the thread ends. Cancelling `call` (or the server-wide token) drops the job's
    /// future on its thread; this then waits for the thread's answer, so when it returns everything
    /// the job attached is detached.
    pub async fn run<T, F, Fut>(
        &self,
        name: &str,
        netns: Option<String>,
        slot: Option<KernelSlot>,
        call: CancellationToken,
        job: F,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let token = self.root.child_token();
        // A call whose future is dropped (the session ends) cancels its job too.
        let _cancel_on_drop = token.clone().drop_guard();
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let thread_token = token.clone();
        if let Some(s) = &slot {
            s.set_job(token.clone());
        }
        let what = name.to_string();
        let handle = std::thread::Builder::new()
            .name(format!("d8-{}", name.split(' ').next().unwrap_or("job")))
            .spawn(move || {
                let result = run_on_this_thread(netns, thread_token, job);
                if let Err(f) = &result
                    && f.kind == FailureKind::Cancelled
                {
                    tracing::info!("mcp: {what}: cancelled; everything it attached is detached");
                }
                // The slot is released only now: after the job's future (and its Tracer) is gone.
                drop(slot);
                let _ = tx.send(result);
            })
            .map_err(|e| Failure::env(format!("starting a worker thread: {e}")))?;
        self.track(handle);
        tokio::select! {
            r = &mut rx => return r.unwrap_or_else(|_| Err(Failure::env("the worker thread ended without an answer"))),
            _ = call.cancelled() => token.cancel(),
            _ = token.cancelled() => {}
        }
        rx.await
            .unwrap_or_else(|_| Err(Failure::env("the worker thread ended without an answer")))
    }

    fn track(&self, handle: JoinHandle<()>) {
        let mut threads = self.threads.lock().unwrap_or_else(|e| e.into_inner());
        let (done, running): (Vec<_>, Vec<_>) = threads.drain(..).partition(|t| t.is_finished());
        for t in done {
            let _ = t.join();
        }
        *threads = running;
        threads.push(handle);
    }

    /// Cancels every job and waits (at most `timeout`) for their threads to end. Returns how many
    /// were still running at the deadline.
    pub fn shutdown(&self, timeout: Duration) -> usize {
        self.root.cancel();
        let deadline = Instant::now() + timeout;
        let mut threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        while Instant::now() < deadline {
            let (done, running): (Vec<_>, Vec<_>) = threads.into_iter().partition(|t| t.is_finished());
            for t in done {
                let _ = t.join();
            }
            threads = running;
            if threads.is_empty() {
                return 0;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        threads.len()
    }
}

/// The job thread: namespace, runtime, the job raced against its token.
fn run_on_this_thread<T, F, Fut>(netns: Option<String>, token: CancellationToken, job: F) -> Result<T, Failure>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    if let Some(ns) = &netns {
        netns::enter(ns)?;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::env(format!("starting the event loop: {e}")))?;
    runtime.block_on(async move {
        // The job's future is created and dropped inside the runtime: dropping it detaches.
        tokio::select! {
            biased;
            _ = token.cancelled() => Err(Failure::cancelled("cancelled: the call was cancelled or the client went away; nothing stays attached")),
            r = job() => r,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kernel_slot_is_exclusive_and_says_who_holds_it() {
        let jobs = Jobs::new();
        let slot = block_on(jobs.kernel_slot("trace_service default/web", Some(Duration::from_secs(30)))).unwrap();
        let started = Instant::now();
        let err = block_on(jobs.kernel_slot("doctor", None)).err().unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a running job is refused at once"
        );
        assert_eq!(err.kind, FailureKind::Busy);
        assert!(
            err.message.contains("trace_service default/web is running") && err.message.contains("one trace"),
            "{}",
            err.message
        );
        drop(slot);
        assert!(block_on(jobs.kernel_slot("doctor", None)).is_ok());
    }

    #[test]
    fn a_stopping_job_is_waited_for() {
        let jobs = Arc::new(Jobs::new());
        let slot = block_on(jobs.kernel_slot("trace_service a/b", None)).unwrap();
        let token = CancellationToken::new();
        slot.set_job(token.clone());
        token.cancel();
        let releaser = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(slot);
        });
        assert!(
            block_on(jobs.kernel_slot("doctor", None)).is_ok(),
            "the slot of a cancelled job is waited for"
        );
        releaser.join().unwrap();
    }

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn jobs_run_on_their_own_thread_and_answer() {
        let jobs = Jobs::new();
        let caller = std::thread::current().id();
        let r = block_on(
            jobs.run("test", None, None, CancellationToken::new(), move || async move {
                Ok(std::thread::current().id() != caller)
            }),
        );
        assert_eq!(r, Ok(true));
        assert_eq!(jobs.shutdown(Duration::from_secs(5)), 0);
    }

    #[test]
    fn cancelling_the_call_drops_the_job_and_releases_the_slot_after_it() {
        struct Attached(Arc<Mutex<bool>>);
        impl Drop for Attached {
            fn drop(&mut self) {
                *self.0.lock().unwrap() = false;
            }
        }
        let jobs = Jobs::new();
        let attached = Arc::new(Mutex::new(false));
        let flag = attached.clone();
        let call = CancellationToken::new();
        let slot = block_on(jobs.kernel_slot("trace_service a/b", None)).unwrap();
        let r: Result<(), Failure> = block_on(async {
            let cancel = call.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                cancel.cancel();
            });
            jobs.run(
                "trace_service a/b",
                None,
                Some(slot),
                call.clone(),
                move || async move {
                    *flag.lock().unwrap() = true;
                    let _guard = Attached(flag);
                    std::future::pending::<()>().await;
                    Ok(())
                },
            )
            .await
        });
        assert_eq!(r.unwrap_err().kind, FailureKind::Cancelled);
        assert!(
            !*attached.lock().unwrap(),
            "the job's future was dropped before the call returned"
        );
        assert!(
            jobs.try_kernel_slot("doctor", None).is_ok(),
            "the slot is free once the call returned"
        );
    }

    #[test]
    fn a_missing_namespace_is_the_clis_sentence() {
        let jobs = Jobs::new();
        let r: Result<(), Failure> = block_on(jobs.run(
            "t",
            Some("d8-no-such-netns".into()),
            None,
            CancellationToken::new(),
            || async { Ok(()) },
        ));
        let err = r.unwrap_err();
        assert_eq!(err.kind, FailureKind::Environment);
        assert!(
            err.message.contains("network namespace `d8-no-such-netns` not found"),
            "{}",
            err.message
        );
    }

    #[test]
    fn shutdown_cancels_running_jobs() {
        let jobs = Arc::new(Jobs::new());
        let j = jobs.clone();
        let caller = std::thread::spawn(move || {
            block_on(j.run("t", None, None, CancellationToken::new(), || async {
                std::future::pending::<()>().await;
                Ok(())
            }))
        });
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(jobs.shutdown(Duration::from_secs(5)), 0);
        assert_eq!(caller.join().unwrap().unwrap_err().kind, FailureKind::Cancelled);
    }
}
