//! The legacy x_tables (`ip_tables`, `ip6_tables`) state of the calling thread's network
//! namespace, as `iptables-legacy-save` finds it: the tables that exist are listed in
//! `/proc/thread-self/net/ip_tables_names` (`ip6_tables_names`), and only those are read, so
//! looking never creates a table (asking the kernel for one that does not exist would).
//!
//! A table is read as libiptc reads it: `IPT_SO_GET_INFO` for its size and built-in chains, then
//! `IPT_SO_GET_ENTRIES` for the whole ruleset blob, copied by the kernel under the table's lock,
//! so one table is always read whole and consistent. This file is the socket side only; the
//! entries (`struct ipt_entry` / `ip6t_entry` with their matches and targets) are decoded above,
//! in `model/rules/iptables/legacy.rs`.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The legacy tables that exist in this thread's network namespace (`nat`, `filter`, ...), for
/// IPv4 or IPv6; none when the x_tables modules are not loaded.
pub fn legacy_tables(v6: bool) -> Vec<String> {
    let file = if v6 { "ip6_tables_names" } else { "ip_tables_names" };
    std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
        .map(|t| t.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// `IPT_SO_GET_INFO` / `IP6T_SO_GET_INFO` (`IPT_BASE_CTL`), at `SOL_IP` / `SOL_IPV6`.
const SO_GET_INFO: i32 = 64;
/// `IPT_SO_GET_ENTRIES` / `IP6T_SO_GET_ENTRIES`.
const SO_GET_ENTRIES: i32 = 65;
/// `XT_TABLE_MAXNAMELEN`.
const TABLE_NAME_LEN: usize = 32;
/// `NF_INET_NUMHOOKS`.
pub const HOOKS: usize = 5;
/// `sizeof(struct ipt_getinfo)`: name, valid_hooks, hook_entry[5], underflow[5], num_entries,
/// size.
const INFO_LEN: usize = TABLE_NAME_LEN + 4 + 4 * HOOKS * 2 + 4 + 4;
/// Where `struct ipt_get_entries`' entry table starts: after the name and size, aligned as the
/// entries are (their counters are 64-bit).
const ENTRIES_AT: usize = 40;

/// One legacy table as the kernel keeps it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    /// Bit `h` set: the table has a built-in chain at hook `h` (`NF_INET_PRE_ROUTING` = 0, ...).
    pub valid_hooks: u32,
    /// Per hook: the byte offset of the built-in chain's first entry.
    pub hook_entry: [u32; HOOKS],
    /// Per hook: the byte offset of the built-in chain's policy entry (its last).
    pub underflow: [u32; HOOKS],
    /// The entries (`struct ipt_entry` or `ip6t_entry`, each followed by its matches and
    /// target), in the kernel's byte order.
    pub entries: Vec<u8>,
}

/// Reads the legacy table `name` of this thread's network namespace, IPv4 or IPv6. Ask only for
/// tables [`legacy_tables`] lists: the kernel creates a table that is asked for.
pub fn read_table(v6: bool, name: &str) -> io::Result<Table> {
    if name.len() >= TABLE_NAME_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("table name `{name}` too long"),
        ));
    }
    let (domain, level) = if v6 {
        (libc::AF_INET6, libc::SOL_IPV6)
    } else {
        (libc::AF_INET, libc::SOL_IP)
    };
    // SAFETY: plain socket(2); the descriptor is owned below.
    let fd = unsafe { libc::socket(domain, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // The table can change between the two calls; the kernel then refuses the second (EAGAIN,
    // the size asked for is not the table's), as libiptc retries it.
    const ATTEMPTS: usize = 5;
    for _ in 0..ATTEMPTS {
        let mut info = [0u8; INFO_LEN];
        info[..name.len()].copy_from_slice(name.as_bytes());
        get(&sock, level, SO_GET_INFO, &mut info)?;
        let word = |at: usize| u32::from_ne_bytes(info[at..at + 4].try_into().expect("4 bytes"));
        let mut table = Table {
            valid_hooks: word(TABLE_NAME_LEN),
            ..Default::default()
        };
        for h in 0..HOOKS {
            table.hook_entry[h] = word(TABLE_NAME_LEN + 4 + 4 * h);
            table.underflow[h] = word(TABLE_NAME_LEN + 4 + 4 * HOOKS + 4 * h);
        }
        let size = word(INFO_LEN - 4) as usize;
        let mut buf = vec![0u8; ENTRIES_AT + size];
        buf[..name.len()].copy_from_slice(name.as_bytes());
        buf[TABLE_NAME_LEN..TABLE_NAME_LEN + 4].copy_from_slice(&(size as u32).to_ne_bytes());
        match get(&sock, level, SO_GET_ENTRIES, &mut buf) {
            Ok(()) => {
                buf.drain(..ENTRIES_AT);
                table.entries = buf;
                return Ok(table);
            }
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "the legacy table `{name}` changed during each of {ATTEMPTS} reads"
    )))
}

/// getsockopt(2) into `buf`, which must come back filled: a shorter answer is not the
/// structure asked for.
fn get(sock: &OwnedFd, level: i32, opt: i32, buf: &mut [u8]) -> io::Result<()> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: `buf` is valid for `len` bytes and outlives the call.
    let rc = unsafe { libc::getsockopt(sock.as_raw_fd(), level, opt, buf.as_mut_ptr().cast(), &mut len) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != buf.len() {
        return Err(io::Error::other(format!(
            "x_tables getsockopt {opt} answered {len} bytes, expected {}",
            buf.len()
        )));
    }
    Ok(())
}
