//! Live output: one line per flow change, written by a thread of its own so the event loop never
//! waits for the reader.

use std::io::Write;

use crate::flows::FlowTable;

/// Live output: a flow's line is printed again only when it reads differently.
pub(super) struct LivePrinter {
    pub(super) enabled: bool,
    pub(super) printed: std::collections::HashMap<u64, String>,
}

impl LivePrinter {
    pub(super) fn print(&mut self, table: &FlowTable, id: u64, live: &mut dyn Write) {
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
    std::env::var("D8_TRACE_LIVE_QUEUE_LINES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(LIVE_QUEUE_LINES)
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
        Ok(Self {
            tx: Some(tx),
            writer: Some(writer),
            partial: Vec::new(),
            dropped: 0,
        })
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

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
}
