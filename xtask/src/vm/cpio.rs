//! A minimal writer for the "newc" cpio format the kernel unpacks as an initramfs.
//!
//! Format (see the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`): each entry
//! is the magic `070701`, thirteen 8-digit hex fields, the NUL-terminated name padded to a multiple of
//! 4 bytes (header included), then the data padded to 4 bytes; the archive ends with an entry named
//! `TRAILER!!!`. The kernel ignores inode numbers except for hard links, which we never write, so each
//! entry gets a fresh inode number and `nlink` 1.
//!
//! Entries are collected in a sorted map first: that removes duplicates (the last one wins, so a host
//! tool can replace a busybox applet of the same name) and, because a path sorts before every path
//! that extends it, parents are written before their children as the kernel's unpacker needs.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// What one path of the archive is.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir {
        mode: u32,
    },
    /// Contents read from a host file when the archive is written (no copy in memory).
    HostFile {
        src: PathBuf,
        mode: u32,
    },
    /// Contents given inline (init script, generated /etc files).
    Data {
        data: Vec<u8>,
        mode: u32,
    },
    Symlink {
        target: String,
    },
    CharDev {
        mode: u32,
        major: u32,
        minor: u32,
    },
}

/// The guest file system being assembled. Paths are relative (`usr/bin/ip`), no leading slash.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `path`, creating missing parent directories.
    pub fn insert(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').trim_end_matches('/').to_string();
        if path.is_empty() {
            return;
        }
        self.mkdir_parents(&path);
        self.entries.insert(path, entry);
    }

    pub fn mkdir(&mut self, path: &str) {
        let path = path.trim_start_matches('/').trim_end_matches('/');
        if !path.is_empty() && !self.entries.contains_key(path) {
            self.insert(path, Entry::Dir { mode: 0o755 });
        }
    }

    fn mkdir_parents(&mut self, path: &str) {
        let mut end = 0;
        while let Some(pos) = path[end..].find('/') {
            let parent = &path[..end + pos];
            self.entries
                .entry(parent.to_string())
                .or_insert(Entry::Dir { mode: 0o755 });
            end += pos + 1;
        }
    }

    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Writes the archive to `out` and returns its size in bytes.
    pub fn write_to(&self, out: &Path) -> Result<u64> {
        let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = Writer {
            out: BufWriter::with_capacity(1 << 20, file),
            pos: 0,
            ino: 1,
        };
        for (path, entry) in &self.entries {
            w.entry(path, entry)
                .with_context(|| format!("writing {path} into the initramfs"))?;
        }
        w.header("TRAILER!!!", 0, 0, 0, 0, 0)?;
        w.out.flush()?;
        Ok(w.pos)
    }
}

struct Writer {
    out: BufWriter<File>,
    pos: u64,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl Writer {
    fn entry(&mut self, path: &str, entry: &Entry) -> Result<()> {
        match entry {
            Entry::Dir { mode } => {
                self.header(path, S_IFDIR | (mode & 0o7777), 0, 0, 0, 2)?;
            }
            Entry::Data { data, mode } => {
                self.header(path, S_IFREG | (mode & 0o7777), data.len() as u64, 0, 0, 1)?;
                self.write(data)?;
                self.pad()?;
            }
            Entry::HostFile { src, mode } => {
                let mut f = File::open(src).with_context(|| format!("opening {}", src.display()))?;
                let len = f.metadata()?.len();
                self.header(path, S_IFREG | (mode & 0o7777), len, 0, 0, 1)?;
                let copied = io::copy(&mut f, &mut self.out)?;
                // A file that changed size while we copied would corrupt every later entry.
                anyhow::ensure!(copied == len, "{} changed size while being archived", src.display());
                self.pos += copied;
                self.pad()?;
            }
            Entry::Symlink { target } => {
                self.header(path, S_IFLNK | 0o777, target.len() as u64, 0, 0, 1)?;
                self.write(target.as_bytes())?;
                self.pad()?;
            }
            Entry::CharDev { mode, major, minor } => {
                self.header(path, S_IFCHR | (mode & 0o7777), 0, *major, *minor, 1)?;
            }
        }
        Ok(())
    }

    fn header(&mut self, name: &str, mode: u32, size: u64, rmaj: u32, rmin: u32, nlink: u32) -> Result<()> {
        anyhow::ensure!(size <= u32::MAX as u64, "{name} is larger than newc's 4 GiB limit");
        let ino = if name == "TRAILER!!!" { 0 } else { self.ino };
        self.ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size as u32,
            0,
            0,
            rmaj,
            rmin,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::with_capacity(110);
        header.push_str("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.write(header.as_bytes())?;
        self.write(name.as_bytes())?;
        self.write(&[0])?;
        self.pad()
    }

    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data)?;
        self.pos += data.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let rem = (4 - (self.pos % 4)) % 4;
        self.write(&[0u8; 3][..rem as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parents_first_and_aligned() {
        let mut a = Archive::new();
        a.insert(
            "usr/bin/x",
            Entry::Data {
                data: b"hello".to_vec(),
                mode: 0o755,
            },
        );
        a.insert(
            "bin",
            Entry::Symlink {
                target: "usr/bin".into(),
            },
        );
        let dir = std::env::temp_dir().join(format!("d8-cpio-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("a.cpio");
        let size = a.write_to(&out).unwrap();
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(size as usize, bytes.len());
        assert_eq!(bytes.len() % 4, 0);
        // Walk the headers back: names in order, with sizes.
        let mut names = Vec::new();
        let mut pos = 0;
        loop {
            assert_eq!(&bytes[pos..pos + 6], b"070701");
            let field = |i: usize| {
                let s = std::str::from_utf8(&bytes[pos + 6 + i * 8..pos + 14 + i * 8]).unwrap();
                usize::from_str_radix(s, 16).unwrap()
            };
            let (size, namesize) = (field(6), field(11));
            let name = std::str::from_utf8(&bytes[pos + 110..pos + 110 + namesize - 1])
                .unwrap()
                .to_string();
            pos = (pos + 110 + namesize).div_ceil(4) * 4;
            if name == "usr/bin/x" {
                assert_eq!(&bytes[pos..pos + size], b"hello");
            }
            pos = (pos + size).div_ceil(4) * 4;
            if name == "TRAILER!!!" {
                break;
            }
            names.push(name);
        }
        assert_eq!(pos, bytes.len());
        assert_eq!(names, ["bin", "usr", "usr/bin", "usr/bin/x"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
