//! Entering a network namespace: `--netns NAME|PATH` runs the whole job (rule reading, hooks)
//! inside it. Netfilter links register in the netns of the thread that creates them, and child
//! processes (`iptables-save`) inherit the thread's netns, so the main thread enters it before
//! any other thread exists.

use std::{fs::File, os::fd::AsRawFd, path::PathBuf};

/// Where `ip netns add` keeps named namespaces.
pub const NETNS_RUN_DIR: &str = "/run/netns";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("network namespace `{name}` not found ({path} does not exist); list them with `ip netns list`")]
    NotFound { name: String, path: PathBuf },
    #[error("cannot open network namespace {path}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path} (needs CAP_SYS_ADMIN)")]
    Enter {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// `NAME` -> `/run/netns/NAME`; anything with a `/` is a path.
pub fn resolve(spec: &str) -> PathBuf {
    if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        PathBuf::from(NETNS_RUN_DIR).join(spec)
    }
}

/// Moves the calling thread into the network namespace `spec`.
pub fn enter(spec: &str) -> Result<(), Error> {
    let path = resolve(spec);
    if !path.exists() {
        return Err(Error::NotFound {
            name: spec.to_string(),
            path,
        });
    }
    let file = File::open(&path).map_err(|source| Error::Open {
        path: path.clone(),
        source,
    })?;
    // SAFETY: a valid open fd; CLONE_NEWNET checks that it is a network namespace.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(Error::Enter {
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        assert_eq!(resolve("node1"), PathBuf::from("/run/netns/node1"));
        assert_eq!(resolve("/proc/1/ns/net"), PathBuf::from("/proc/1/ns/net"));
    }

    #[test]
    fn missing_namespace_is_named() {
        let err = enter("d8-no-such-netns").unwrap_err().to_string();
        assert!(
            err.contains("d8-no-such-netns") && err.contains("ip netns list"),
            "{err}"
        );
    }
}
