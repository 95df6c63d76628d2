//! A background kubelet: probes its targets from the node namespace every period, until dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::Duration;

use super::kubelet_probe;

/// A background kubelet: probes its targets from the node namespace every period.
pub struct Prober {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    probes: Arc<AtomicU64>,
}

impl Prober {
    pub(super) fn start(node_ns: String, targets: Vec<SocketAddr>, period: Duration) -> Prober {
        let (tx, rx) = mpsc::channel::<()>();
        let probes = Arc::new(AtomicU64::new(0));
        let count = probes.clone();
        let thread = std::thread::spawn(move || {
            loop {
                for addr in &targets {
                    if kubelet_probe(&node_ns, *addr, Duration::from_secs(1)).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
                // The period is the probe interval itself (kubelet's periodSeconds), not a wait
                // for some state; a stop message or a dropped sender ends the loop at once.
                match rx.recv_timeout(period) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => break,
                }
            }
        });
        Prober {
            stop: Some(tx),
            thread: Some(thread),
            probes,
        }
    }

    /// Probes sent so far.
    pub fn probes_sent(&self) -> u64 {
        self.probes.load(Ordering::Relaxed)
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
