//! tracefs: where tracepoints are listed and their record layouts (`format` files) described.
//!
//! Fresh nodes may have it unmounted (`/sys/kernel/tracing` empty). The `d8-trace` binary then
//! mounts it in a mount namespace of its own before anything else runs ([`mount_private`]): the
//! node never sees that mount, and it goes with the process however the process ends, so one
//! d8-trace ending never takes tracefs away from another that is starting. [`Mount`] is the
//! fallback (and what library users get): mounted on the node for the run, unmounted on exit.

use std::{
    collections::HashMap,
    ffi::CString,
    path::{Path, PathBuf},
};

/// Standard tracefs mount point.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older systems reach tracefs through debugfs.
pub const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "cannot mount tracefs at {TRACEFS}: {0}; mount it by hand (`mount -t tracefs nodev {TRACEFS}`) or run d8-trace with CAP_SYS_ADMIN"
    )]
    Mount(std::io::Error),
    #[error("cannot give d8-trace a mount namespace of its own for tracefs: {0}")]
    Private(std::io::Error),
    #[error("tracepoint {0} is not available on this kernel (no {1})")]
    MissingTracepoint(String, PathBuf),
    #[error("tracepoint {tracepoint}: no field `{field}` in its format")]
    MissingField { tracepoint: String, field: String },
}

/// One field of a tracepoint record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Parsed `format` file of one tracepoint.
#[derive(Debug, Clone)]
pub struct Format {
    pub name: String,
    fields: HashMap<String, Field>,
}

impl Format {
    /// Parses the text of a tracefs `format` file: lines such as
    /// `field:__u8 saddr[28];    offset:32;    size:28;    signed:0;`.
    pub fn parse(name: &str, text: &str) -> Self {
        let mut fields = HashMap::new();
        for line in text.lines() {
            let line = line.trim();
            let Some(rest) = line.strip_prefix("field:") else {
                continue;
            };
            let mut decl = "";
            let mut offset = None;
            let mut size = None;
            for part in rest.split(';').map(str::trim) {
                if let Some(v) = part.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = part.strip_prefix("size:") {
                    size = v.parse().ok();
                } else if decl.is_empty() {
                    decl = part;
                }
            }
            // The field name is the declaration's last word, without an array suffix.
            let Some(field) = decl.split_whitespace().last() else {
                continue;
            };
            let field = field.split('[').next().unwrap_or(field).trim_start_matches('*');
            if let (Some(offset), Some(size)) = (offset, size) {
                fields.insert(field.to_string(), Field { offset, size });
            }
        }
        Self {
            name: name.to_string(),
            fields,
        }
    }

    pub fn field(&self, name: &str) -> Option<Field> {
        self.fields.get(name).copied()
    }

    pub fn require(&self, name: &str) -> Result<Field, Error> {
        self.field(name).ok_or_else(|| Error::MissingField {
            tracepoint: self.name.clone(),
            field: name.to_string(),
        })
    }
}

/// The tracefs root in use, and whether d8-trace mounted it (then it unmounts it on drop).
#[derive(Debug)]
pub struct Mount {
    root: PathBuf,
    mounted_by_us: bool,
}

fn has_events(root: &Path) -> bool {
    root.join("events").is_dir()
}

/// Makes tracefs reachable for this process alone when nothing provides it: the process moves to a
/// mount namespace of its own (the node's later mounts still propagate in, ours never out) and
/// mounts tracefs there. Returns whether it did. `unshare(CLONE_NEWNS)` moves only the calling
/// thread (its filesystem context is copied): d8-trace calls it while it has a single thread, so
/// that every thread it starts later sees the mount; the benchmark calls it from the one thread
/// that attaches its tracepoint floor. Child processes (rule dump tools, `ip netns` in the demo's
/// lab) share the caller's namespace.
pub fn mount_private() -> Result<bool, Error> {
    if [TRACEFS, DEBUGFS_TRACING].iter().any(|r| has_events(Path::new(r))) {
        return Ok(false);
    }
    // SAFETY: plain syscall, no pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(Error::Private(std::io::Error::last_os_error()));
    }
    let root = CString::new("/").expect("no NUL in constant");
    // SAFETY: valid NUL-terminated path; no source, type or data for a propagation change.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SLAVE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::Private(std::io::Error::last_os_error()));
    }
    let target = CString::new(TRACEFS).expect("no NUL in constant");
    let fstype = CString::new("tracefs").expect("no NUL in constant");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(Error::Mount(std::io::Error::last_os_error()));
    }
    Ok(true)
}

impl Mount {
    /// Finds tracefs, mounting it at [`TRACEFS`] when nothing provides it.
    pub fn ensure() -> Result<Self, Error> {
        for root in [TRACEFS, DEBUGFS_TRACING] {
            if has_events(Path::new(root)) {
                // Mounted by a d8-trace that was killed before it could unmount: ours to unmount.
                let adopted = root == TRACEFS && record_owner().is_some_and(|pid| !super::process_alive(pid));
                if adopted {
                    record(true);
                    tracing::info!(
                        "tracefs at {TRACEFS} was left mounted by a d8-trace that was killed; unmounting it on exit"
                    );
                }
                return Ok(Self {
                    root: root.into(),
                    mounted_by_us: adopted,
                });
            }
        }
        let target = CString::new(TRACEFS).expect("no NUL in constant");
        let fstype = CString::new("tracefs").expect("no NUL in constant");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        if rc != 0 {
            return Err(Error::Mount(std::io::Error::last_os_error()));
        }
        record(true);
        tracing::info!("mounted tracefs at {TRACEFS} (it was not mounted); unmounting on exit");
        Ok(Self {
            root: TRACEFS.into(),
            mounted_by_us: true,
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn mounted_by_us(&self) -> bool {
        self.mounted_by_us
    }

    /// Reads and parses `events/<category>/<name>/format`.
    pub fn format(&self, category: &str, name: &str) -> Result<Format, Error> {
        let path = self.root.join("events").join(category).join(name).join("format");
        let text = std::fs::read_to_string(&path)
            .map_err(|_| Error::MissingTracepoint(format!("{category}:{name}"), path.clone()))?;
        Ok(Format::parse(&format!("{category}:{name}"), &text))
    }
}

/// Where d8-trace notes that it mounted tracefs (its pid), so that a d8-trace that was killed
/// before unmounting can be told from someone else's mount by the next one. tmpfs: a reboot
/// forgets it, as it forgets the mount.
const RECORD: &str = "/run/d8-trace/tracefs";

fn record(mounted: bool) {
    if mounted {
        let _ = std::fs::create_dir_all("/run/d8-trace");
        let _ = std::fs::write(RECORD, std::process::id().to_string());
    } else {
        let _ = std::fs::remove_file(RECORD);
        // Fails while another record is there.
        let _ = std::fs::remove_dir("/run/d8-trace");
    }
}

fn record_owner() -> Option<u32> {
    std::fs::read_to_string(RECORD).ok()?.trim().parse().ok()
}

/// Unmounts tracefs if a d8-trace that was killed mounted it (`d8-trace cleanup`); says so.
pub fn remove_stale() -> Option<String> {
    let pid = record_owner()?;
    if super::process_alive(pid) {
        return None;
    }
    if !has_events(Path::new(TRACEFS)) {
        record(false);
        return None;
    }
    unmount(Path::new(TRACEFS))
        .is_ok()
        .then(|| format!("tracefs mount at {TRACEFS}"))
}

/// Unmounts tracefs at `root` (lazily: links being torn down may still pin it) and forgets the
/// record.
fn unmount(root: &Path) -> std::io::Result<()> {
    let target = CString::new(root.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
    record(false);
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted_by_us {
            return;
        }
        if let Err(e) = unmount(&self.root) {
            tracing::warn!("could not unmount tracefs at {}: {e}", self.root.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // kernel 6.18's tcp:tcp_send_reset (sockaddr layout) and 6.1's (separate fields).
    const SEND_RESET_618: &str = "name: tcp_send_reset\nID: 1\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:__u8 saddr[28];\toffset:32;\tsize:28;\tsigned:0;\n\
\tfield:__u8 daddr[28];\toffset:60;\tsize:28;\tsigned:0;\n\nprint fmt: \"...\"\n";

    const SEND_RESET_61: &str = "format:\n\
\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;\n\
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;\n\
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;\n\
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;\n\
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;\n\
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;\n";

    #[test]
    fn parses_array_and_pointer_fields() {
        let f = Format::parse("tcp:tcp_send_reset", SEND_RESET_618);
        assert_eq!(f.field("saddr"), Some(Field { offset: 32, size: 28 }));
        assert_eq!(f.field("skbaddr"), Some(Field { offset: 8, size: 8 }));
        assert_eq!(f.field("sport"), None);
    }

    #[test]
    fn parses_older_layout() {
        let f = Format::parse("tcp:tcp_send_reset", SEND_RESET_61);
        assert_eq!(f.field("sport"), Some(Field { offset: 28, size: 2 }));
        assert_eq!(f.field("saddr"), Some(Field { offset: 34, size: 4 }));
        let err = f.require("reason").unwrap_err().to_string();
        assert!(err.contains("reason") && err.contains("tcp_send_reset"), "{err}");
    }
}
