//! `daemon --pcap-dir DIR`: the failing flows' packets as a bounded, rotating directory of
//! pcapng files (`report::pcap` writes each). A file is closed once it holds
//! `--pcap-file-mib` MiB and a new one begun; beyond `--pcap-files` files the oldest of d8-trace's
//! own (`d8-trace-*.pcapng`) is deleted, so the directory never holds more than
//! files × size (plus one flow). Nothing else in the directory is touched.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use crate::report::pcap::{FlowPackets, Header, PcapWriter};

/// File names: `d8-trace-<unix milliseconds>-<sequence>.pcapng`, which sort by age.
const PREFIX: &str = "d8-trace-";
const SUFFIX: &str = ".pcapng";

/// What `--pcap-dir` and its bounds asked for.
#[derive(Debug, Clone)]
pub struct PcapDir {
    pub dir: PathBuf,
    /// A file is rotated once it holds this many bytes.
    pub max_file_bytes: u64,
    /// Files kept at most (d8-trace's own, in `dir`).
    pub max_files: usize,
    pub snaplen: u32,
    /// Every counted flow, not only failing ones.
    pub all: bool,
    /// The command line, for each file's section header.
    pub command: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--pcap-dir {}: not a writable directory ({source}); create it or choose another", dir.display())]
    Dir {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    File(#[from] crate::report::pcap::Error),
}

/// The directory being written.
pub struct Rotation {
    opts: PcapDir,
    node: String,
    current: Option<PcapWriter>,
    sequence: u64,
    /// The last failure logged, so a full disk is said once, not every round.
    last_warning: Option<String>,
}

impl Rotation {
    /// Checks the directory (it must exist and take a file) by opening the first file.
    pub fn open(opts: PcapDir, node: String) -> Result<Self, Error> {
        let meta = std::fs::metadata(&opts.dir).map_err(|source| Error::Dir {
            dir: opts.dir.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(Error::Dir {
                dir: opts.dir.clone(),
                source: std::io::Error::other("not a directory"),
            });
        }
        let mut r = Self {
            opts,
            node,
            current: None,
            sequence: 0,
            last_warning: None,
        };
        r.current = Some(r.next_file()?);
        Ok(r)
    }

    fn next_file(&mut self) -> Result<PcapWriter, Error> {
        self.sequence += 1;
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = self
            .opts
            .dir
            .join(format!("{PREFIX}{stamp:013}-{:06}{SUFFIX}", self.sequence));
        let header = Header {
            node: self.node.clone(),
            kernel: format!("Linux {}", crate::kernel::release()),
            command: self.opts.command.clone(),
        };
        let w = PcapWriter::create(&path, false, self.opts.snaplen, &header)?;
        prune(&self.opts.dir, self.opts.max_files, &path);
        Ok(w)
    }

    /// Whether flows of this class and outcome go into the directory.
    pub fn wants(
        &self,
        outcome: crate::flows::Outcome,
        icmp_errors: bool,
        class: crate::classify::VerdictClass,
    ) -> bool {
        crate::report::pcap::selected(outcome, icmp_errors, Some(class), self.opts.all)
    }

    /// Writes one flow, rotating first when the current file is full or failed.
    pub fn write(&mut self, flow: &FlowPackets<'_>, ifnames: &HashMap<u32, String>) {
        let rotate = match &self.current {
            Some(w) => w.bytes() >= self.opts.max_file_bytes || w.failed(),
            None => true,
        };
        if rotate {
            if let Some(w) = &self.current
                && let Some(warning) = w.warning()
                && self.last_warning.as_deref() != Some(warning.as_str())
            {
                tracing::warn!("{warning}");
                self.last_warning = Some(warning);
            }
            self.current = match self.next_file() {
                Ok(w) => Some(w),
                Err(e) => {
                    let msg = format!(
                        "pcap: no new file in {}: {}",
                        self.opts.dir.display(),
                        crate::error_chain(&e)
                    );
                    if self.last_warning.as_deref() != Some(msg.as_str()) {
                        tracing::warn!("{msg}");
                        self.last_warning = Some(msg);
                    }
                    None
                }
            };
        }
        if let Some(w) = self.current.as_mut() {
            w.write_flow(flow, ifnames);
        }
    }
}

/// Deletes d8-trace's oldest files in `dir` beyond `keep` (never `current`).
fn prune(dir: &Path, keep: usize, current: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut ours: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    ours.sort();
    let excess = ours.len().saturating_sub(keep.max(1));
    for old in ours.into_iter().filter(|p| p != current).take(excess) {
        if let Err(e) = std::fs::remove_file(&old) {
            tracing::warn!("pcap: cannot remove {} to keep --pcap-files: {e}", old.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{PacketCopy, Site, Tuple};

    fn packets(n: usize) -> Vec<PacketCopy> {
        let flow = Tuple {
            proto: 6,
            src: "10.244.1.5:40000".parse().unwrap(),
            dst: "10.96.0.10:80".parse().unwrap(),
        };
        (0..n)
            .map(|i| PacketCopy {
                ts_ns: i as u64,
                flow,
                site: Site::PostDnat,
                hook: None,
                reply: false,
                drop_reason: 0,
                orig_len: 60,
                data: vec![0x45; 60],
            })
            .collect()
    }

    /// The directory stays within its bounds: files rotate at the size, and only `max_files` of
    /// d8-trace's files remain; a file of someone else's is left alone.
    #[test]
    fn the_directory_rotates_and_keeps_its_bound() {
        let dir = std::env::temp_dir().join(format!("d8-pcap-rotation-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("other.pcapng"), b"not ours").unwrap();
        let mut r = Rotation::open(
            PcapDir {
                dir: dir.clone(),
                max_file_bytes: 2048,
                max_files: 3,
                snaplen: 128,
                all: false,
                command: "d8-trace daemon --pcap-dir x".into(),
            },
            "node-a".into(),
        )
        .unwrap();
        let p = packets(4);
        for id in 0..40 {
            let flow = FlowPackets {
                id,
                service: "default/web",
                verdict: "verdict x".into(),
                packets: &p,
            };
            r.write(&flow, &HashMap::new());
        }
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert!(names.contains(&"other.pcapng".to_string()), "{names:?}");
        let ours: Vec<&String> = names.iter().filter(|n| n.starts_with(PREFIX)).collect();
        assert_eq!(ours.len(), 3, "{names:?}");
        for n in &ours {
            let len = std::fs::metadata(dir.join(n)).unwrap().len();
            // A file grows past the size by at most one flow (4 packets of ~120 bytes).
            assert!(len < 2048 + 4 * 200, "{n}: {len} bytes");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
