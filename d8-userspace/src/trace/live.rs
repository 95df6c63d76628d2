//! Live output: one line per flow change, written by a thread of its own so the event loop never
//! waits for the reader.

use std::io::Write;

use crate::flows::FlowTable;

/// Live output: a flow's line is printed again only when it reads differently.
///
/// Flows that change are noted as they change and their lines written once per drain of the
/// kernel's records ([`LivePrinter::flush`]): a connection's records (new, conntrack, reply,
/// established, FIN, socket states) mostly arrive in the same drain, and formatting a line for
/// each of them cost more CPU than everything else the event loop did (see BENCHMARKS.md). What
/// a reader sees is the flow's state as of the drain; lines of one flow never go backwards.
pub(super) struct LivePrinter {
    pub(super) enabled: bool,
    /// Flows changed since the last flush, in the order they first changed.
    dirty: Vec<u64>,
    /// Both maps are touched for every change: foldhash, not SipHash (d8-userspace/Cargo.toml).
    dirty_set: foldhash::HashSet<u64>,
    /// A hash of what the last line printed per flow read ([`crate::flows::Flow::summary_state`];
    /// the lines themselves would be kept for the whole trace).
    printed: foldhash::HashMap<u64, u64>,
    /// foldhash's quality variant: a line is skipped when two states' 64-bit hashes are equal,
    /// so the hash that stands for a state is the better-mixed one (the maps' keys need not be).
    hasher: foldhash::quality::RandomState,
    /// The line being written, reused.
    line: String,
}

impl LivePrinter {
    pub(super) fn new(enabled: bool) -> Self {
        Self {
            enabled,
            dirty: Vec::new(),
            dirty_set: Default::default(),
            printed: Default::default(),
            hasher: Default::default(),
            line: String::new(),
        }
    }

    /// Notes that flow `id` changed; its line is written at the next [`Self::flush`].
    pub(super) fn changed(&mut self, id: u64) {
        if self.enabled && self.dirty_set.insert(id) {
            self.dirty.push(id);
        }
    }

    /// Writes the line of every flow that changed and reads differently now, then flushes `live`
    /// (a [`LiveQueue`] hands the lines to its writer thread there, in one piece). A line is
    /// formatted only when what it reads changed: most events (a FIN, a socket state, the
    /// conntrack entry of an answered flow) change nothing a line shows.
    pub(super) fn flush(&mut self, table: &FlowTable, live: &mut dyn Write) {
        if self.dirty.is_empty() {
            return;
        }
        for id in self.dirty.drain(..) {
            let Some(flow) = table.get(id) else { continue };
            let hash = std::hash::BuildHasher::hash_one(&self.hasher, flow.summary_state());
            if self.printed.insert(id, hash) != Some(hash) {
                self.line.clear();
                flow.write_summary_line(&mut self.line);
                self.line.push('\n');
                let _ = live.write_all(self.line.as_bytes());
            }
        }
        self.dirty_set.clear();
        let _ = live.flush();
    }
}

/// Live lines waiting for the reader, at most, by default ([`LiveQueue::spawn`]).
pub const LIVE_QUEUE_LINES: usize = 4096;

/// The live queue's capacity: [`LIVE_QUEUE_LINES`], or `D8_TRACE_LIVE_QUEUE_LINES` (a smaller or
/// larger queue, for the end-to-end tests).
pub fn live_queue_lines() -> usize {
    std::env::var("D8_TRACE_LIVE_QUEUE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LIVE_QUEUE_LINES)
}

/// Live lines written by a thread of their own, so the event loop never waits for the reader
/// (a paused pager, `| less` not reading): a blocked loop stops draining the kernel's ring
/// buffer, which then overflows and loses events. Lines are handed over in batches, at each
/// [`Write::flush`] (the trace flushes once per drain of the kernel's records) or every
/// [`BATCH_BYTES`]: one hand-over and one wake-up of the writer per batch, not per line. At most
/// `capacity` lines wait; a batch that would exceed that is dropped and its lines counted.
/// [`LiveQueue::finish`] writes what is queued and says how many were dropped. Writes never
/// block and never fail.
pub struct LiveQueue {
    /// Batches of lines, with the number of lines each holds.
    tx: Option<std::sync::mpsc::Sender<(Vec<u8>, usize)>>,
    writer: Option<std::thread::JoinHandle<()>>,
    /// Whole lines not handed over yet.
    batch: Vec<u8>,
    batch_lines: usize,
    /// The end of a line written in pieces.
    partial: Vec<u8>,
    /// Lines handed over and not yet written by the writer.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    capacity: usize,
    dropped: u64,
}

/// A batch is handed over when it reaches this size, flushed or not.
const BATCH_BYTES: usize = 64 * 1024;

impl LiveQueue {
    /// Starts the writer thread on `out`.
    pub fn spawn(mut out: Box<dyn Write + Send>, capacity: usize) -> std::io::Result<Self> {
        use std::sync::atomic::Ordering;
        let (tx, rx) = std::sync::mpsc::channel::<(Vec<u8>, usize)>();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let written = queued.clone();
        let writer = std::thread::Builder::new().name("d8-live".into()).spawn(move || {
            while let Ok((batch, lines)) = rx.recv() {
                // A closed reader (`| head`) cannot show anything more: stop, and the queue
                // discards what follows.
                let ok = out.write_all(&batch).and_then(|()| out.flush()).is_ok();
                written.fetch_sub(lines, Ordering::AcqRel);
                if !ok {
                    return;
                }
            }
        })?;
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            batch: Vec::new(),
            batch_lines: 0,
            partial: Vec::new(),
            queued,
            capacity: capacity.max(1),
            dropped: 0,
        })
    }

    /// Hands the batch to the writer, or drops it (counted) when the queue would hold more than
    /// its capacity.
    fn send_batch(&mut self) {
        use std::sync::atomic::Ordering;
        if self.batch_lines == 0 {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let lines = std::mem::take(&mut self.batch_lines);
        let Some(tx) = &self.tx else { return };
        if self.queued.load(Ordering::Acquire) + lines > self.capacity {
            self.dropped += lines as u64;
            // Keep the allocation for the next batch.
            self.batch = batch;
            self.batch.clear();
            return;
        }
        self.queued.fetch_add(lines, Ordering::AcqRel);
        if tx.send((batch, lines)).is_err() {
            // The writer stopped: the reader went away; nothing to count against it.
            self.queued.fetch_sub(lines, Ordering::AcqRel);
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
            // An unterminated last line, written as it is.
            let rest = std::mem::take(&mut self.partial);
            self.batch.extend_from_slice(&rest);
            self.batch_lines += 1;
        }
        self.send_batch();
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Write for LiveQueue {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut rest = buf;
        while let Some(i) = rest.iter().position(|&b| b == b'\n') {
            self.batch.extend_from_slice(&self.partial);
            self.partial.clear();
            self.batch.extend_from_slice(&rest[..=i]);
            self.batch_lines += 1;
            rest = &rest[i + 1..];
        }
        self.partial.extend_from_slice(rest);
        if self.batch.len() >= BATCH_BYTES {
            self.send_batch();
        }
        Ok(buf.len())
    }

    /// Hands the whole lines written so far to the writer thread (never waits for it).
    fn flush(&mut self) -> std::io::Result<()> {
        self.send_batch();
        Ok(())
    }
}

impl Drop for LiveQueue {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The event path's userspace work for many short connections, as the kernel reports them:
    /// NEW and CT of a flow in one drain of the ring, its REPLY and FIN in the next (with the
    /// next flows' NEW and CT), one flow in 100 never answered; settled every 1,200 flows (the
    /// 100 ms tick at 12,000 new connections/s). Every answered flow prints an `open` line and an
    /// `established` one, every unanswered one `open` and `no answer`. The CPU time it took is
    /// printed (`cargo test --release -p d8-userspace synthetic -- --nocapture`), never asserted.
    #[test]
    fn synthetic_short_connections_print_each_change_once() {
        use d8_common::{hook, kind};

        use crate::{
            events::Protocol,
            events::{
                decode,
                testing::{bytes, key, raw},
            },
            flows::DEFAULT_REPLY_TIMEOUT_NS,
        };
        const FLOWS: u32 = 50_000;
        const PER_DRAIN: u32 = 16;
        const SETTLE_EVERY: u32 = 1_200;
        const GAP_NS: u64 = 80_000;
        let client = |i: u32| {
            key(
                [10, 244, (i >> 16) as u8, 5],
                (i & 0xffff) as u16,
                [10, 96, 0, 10],
                80,
                6,
            )
        };
        let records = |i: u32, first: bool| -> Vec<Vec<u8>> {
            let ts = u64::from(i) * GAP_NS;
            let k = client(i);
            if first {
                let mut ct = raw(kind::CT, hook::PRE_ROUTING, k, ts + 1_000);
                ct.reply = key(
                    [10, 244, 2, 7],
                    8080,
                    [10, 244, (i >> 16) as u8, 5],
                    (i & 0xffff) as u16,
                    6,
                );
                ct.ct_dir = 0;
                vec![bytes(&raw(kind::NEW, hook::PRE_ROUTING, k, ts)), bytes(&ct)]
            } else if i % 100 == 99 {
                Vec::new()
            } else {
                let mut reply = raw(kind::REPLY, hook::PRE_ROUTING, k, ts + 30_000);
                reply.ct_dir = 1;
                reply.tcp_flags = 0x12;
                reply.aux[..4].copy_from_slice(&[10, 244, 2, 7]);
                reply.aux_port = 8080u16.to_be();
                let mut fin = raw(kind::FIN, hook::PRE_ROUTING, k, ts + 60_000);
                fin.ct_dir = 0;
                fin.tcp_flags = 0x11;
                fin.aux[..4].copy_from_slice(&[10, 244, (i >> 16) as u8, 5]);
                fin.aux_port = ((i & 0xffff) as u16).to_be();
                vec![bytes(&reply), bytes(&fin)]
            }
        };
        // The ring's records, drain by drain, made before the clock starts.
        let drains: Vec<(Vec<Vec<u8>>, bool)> = (0..=FLOWS / PER_DRAIN)
            .map(|d| {
                let mut recs = Vec::new();
                for i in d * PER_DRAIN..((d + 1) * PER_DRAIN).min(FLOWS) {
                    recs.extend(records(i, true));
                }
                for i in d.saturating_sub(1) * PER_DRAIN..(d * PER_DRAIN).min(FLOWS) {
                    if d > 0 {
                        recs.extend(records(i, false));
                    }
                }
                (recs, (d * PER_DRAIN) % SETTLE_EVERY < PER_DRAIN)
            })
            .collect();
        let mut table = FlowTable::new(
            [(Protocol::Tcp, "10.96.0.10:80".parse().unwrap())],
            vec!["192.168.50.2".parse().unwrap()],
            crate::kernel::DropReasons::default(),
        );
        let mut printer = LivePrinter::new(true);
        let mut out: Vec<u8> = Vec::new();
        let started = cpu_ns();
        for (d, (recs, settle)) in drains.iter().enumerate() {
            for rec in recs {
                if let Some(id) = table.apply(&decode(rec).unwrap()) {
                    printer.changed(id);
                }
            }
            if *settle {
                for id in table.settle(d as u64 * u64::from(PER_DRAIN) * GAP_NS) {
                    printer.changed(id);
                }
            }
            printer.flush(&table, &mut out);
        }
        for id in table.settle(u64::from(FLOWS) * GAP_NS + DEFAULT_REPLY_TIMEOUT_NS) {
            printer.changed(id);
        }
        printer.flush(&table, &mut out);
        let took = cpu_ns() - started;
        println!(
            "{FLOWS} flows x 4 records: {:.2} ms of CPU, {:.3} us per flow",
            took as f64 / 1e6,
            took as f64 / 1e3 / f64::from(FLOWS)
        );
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2 * FLOWS as usize);
        assert_eq!(table.len(), FLOWS as usize);
        let ends = |s: &str| lines.iter().filter(|l| l.ends_with(s)).count();
        assert_eq!(ends("=> 10.244.2.7:8080  open"), FLOWS as usize);
        assert_eq!(ends("  established"), FLOWS as usize / 100 * 99);
        assert_eq!(ends("  no answer"), FLOWS as usize / 100);
        assert_eq!(
            lines[0],
            "#1   tcp 10.244.0.5:0 -> 10.96.0.10:80 => 10.244.2.7:8080  open"
        );
    }

    /// CPU time of the calling thread, in nanoseconds.
    fn cpu_ns() -> u64 {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime fills the timespec it is given.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
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
        let mut q = LiveQueue::spawn(
            Box::new(Paused {
                resume: rx,
                paused: true,
                got: got.clone(),
            }),
            4,
        )
        .unwrap();
        let started = std::time::Instant::now();
        for i in 0..100 {
            // In pieces, as `writeln!` may hand them over.
            write!(q, "line ").unwrap();
            writeln!(q, "{i}").unwrap();
            // As the trace does after each drain of the kernel's records.
            q.flush().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "writing waited for the reader"
        );
        assert!(q.dropped() > 0);
        resume.send(()).unwrap();
        let dropped = q.finish();
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len() as u64 + dropped, 100, "{text}");
        assert_eq!(lines[0], "line 0");
        assert!(
            lines
                .iter()
                .all(|l| l.starts_with("line ") && l[5..].parse::<u32>().is_ok()),
            "whole lines only: {text}"
        );
    }

    #[test]
    fn live_queue_hands_lines_over_once_per_flush() {
        use std::sync::{Arc, Mutex};
        /// Counts the writer's flushes: one per batch it wrote.
        struct Counting(Arc<Mutex<(Vec<u8>, usize)>>);
        impl Write for Counting {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().0.extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.0.lock().unwrap().1 += 1;
                Ok(())
            }
        }
        let seen = Arc::new(Mutex::new((Vec::new(), 0)));
        let mut q = LiveQueue::spawn(Box::new(Counting(seen.clone())), 1000).unwrap();
        for drain in 0..3 {
            for i in 0..50 {
                writeln!(q, "drain {drain} line {i}").unwrap();
            }
            q.flush().unwrap();
        }
        write!(q, "unterminated").unwrap();
        assert_eq!(q.finish(), 0);
        let (text, flushes) = seen.lock().unwrap().clone();
        let text = String::from_utf8(text).unwrap();
        assert_eq!(text.lines().count(), 151, "{text}");
        assert!(text.ends_with("drain 2 line 49\nunterminated"), "{text}");
        assert_eq!(flushes, 4, "one hand-over per flush, and one for the rest at finish");
    }
}
