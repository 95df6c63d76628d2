//! nf_tables over netlink (`NETLINK_NETFILTER`, subsystem `NFNL_SUBSYS_NFTABLES`): one table's
//! tables, chains, rules, sets and set elements dumped straight from the kernel, as the `nft` tool
//! gets them, without running it.
//!
//! This file is the socket side only: requests, the dump loop, the ruleset generation check. Each
//! answer is handed on as its attribute bytes ([`Object`]); what an attribute means (a rule's
//! expressions, a set's key type) is decoded above, in `model/rules/nftables/netlink.rs`. The
//! sockets and attribute walking are the project's own (`netlink.rs`), as for rtnetlink and
//! ctnetlink: no netlink crate on crates.io decodes nf_tables *dumps* of rule expressions without
//! libnftnl (rustables and nftnl-rs build rules to add, through the C library), and the few
//! requests here need nothing a crate would add.
//!
//! The socket is opened in the calling thread's network namespace (`--netns` is entered before).

use std::io;

use super::netlink::{self, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_DONE, NLMSG_ERROR, Socket};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
/// `struct nfgenmsg`: family, version, resource id.
const NFGENMSG_LEN: usize = 4;
/// The dump was interrupted by a change of the ruleset: read it again.
const NLM_F_DUMP_INTR: u16 = 0x10;

/// `NFPROTO_IPV4`.
pub const FAMILY_IP: u8 = 2;
/// `NFPROTO_IPV6`.
pub const FAMILY_IP6: u8 = 10;

const MSG_GETTABLE: u16 = 1;
const MSG_GETCHAIN: u16 = 4;
const MSG_GETRULE: u16 = 7;
const MSG_GETSET: u16 = 10;
const MSG_GETSETELEM: u16 = 13;
const MSG_GETGEN: u16 = 16;

const NFTA_TABLE_NAME: u16 = 1;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_GEN_ID: u16 = 1;

/// What a dump lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Table,
    Chain,
    Rule,
    Set,
    /// The elements of one set (named in [`Reader::dump`]).
    Elements,
}

impl Kind {
    fn message(self) -> u16 {
        match self {
            Kind::Table => MSG_GETTABLE,
            Kind::Chain => MSG_GETCHAIN,
            Kind::Rule => MSG_GETRULE,
            Kind::Set => MSG_GETSET,
            Kind::Elements => MSG_GETSETELEM,
        }
    }
}

/// One object of a dump: its family (`nfgenmsg`) and its attributes, borrowed from the receive
/// buffer for the length of the callback.
#[derive(Debug, Clone, Copy)]
pub struct Object<'a> {
    pub family: u8,
    pub attrs: &'a [u8],
}

/// Splits the payload of an nf_tables message into its family and attributes.
pub fn object(payload: &[u8]) -> Option<Object<'_>> {
    Some(Object {
        family: *payload.first()?,
        attrs: payload.get(NFGENMSG_LEN..)?,
    })
}

/// Why a dump stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket or the kernel failed (no nf_tables, no permission, ...).
    #[error("nf_tables netlink: {0}")]
    Io(#[from] io::Error),
    /// The ruleset changed while it was read (`NLM_F_DUMP_INTR`): read it again.
    #[error("nf_tables changed while it was read")]
    Interrupted,
    /// The callback refused an object; the reason is the caller's.
    #[error("stopped by the reader")]
    Stopped,
}

/// An nf_tables netlink socket with its receive buffer.
pub struct Reader {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

impl Reader {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> io::Result<Self> {
        Ok(Self {
            sock: Socket::open(NETLINK_NETFILTER, &[], 4 << 20)?,
            seq: 1,
            // The kernel fills a dump datagram up to the receive size it has seen (32 KiB at
            // most per skb, more for a large set-element message): 256 KiB takes any.
            buf: vec![0; 256 * 1024],
        })
    }

    /// The ruleset's generation: it changes with every committed transaction, so equal
    /// generations before and after a read mean one consistent ruleset was read.
    pub fn generation(&mut self) -> Result<u32, Error> {
        let mut id = None;
        self.request(MSG_GETGEN, NLM_F_ACK, 0, &[], |o| {
            id = netlink::attr(o.attrs, NFTA_GEN_ID).and_then(be32);
            true
        })?;
        id.ok_or_else(|| Error::Io(io::Error::new(io::ErrorKind::InvalidData, "no generation id")))
    }

    /// Lists `kind` objects of `table` in `family` (for [`Kind::Elements`], of the set `name`;
    /// for [`Kind::Rule`], of the chain `name` when given), giving each to `each`; `each` returns
    /// `false` to stop with [`Error::Stopped`]. The kernel filters rules, sets and elements by
    /// table; chains it may list for every table (older kernels), so the caller checks the table
    /// of what it gets. A table (or chain) that does not exist is `ENOENT`.
    pub fn dump(
        &mut self,
        family: u8,
        kind: Kind,
        table: &str,
        name: Option<&str>,
        each: impl FnMut(Object<'_>) -> bool,
    ) -> Result<(), Error> {
        let set = name;
        let mut body = Vec::with_capacity(64);
        match kind {
            Kind::Table => push_str(&mut body, NFTA_TABLE_NAME, table),
            Kind::Chain => push_str(&mut body, NFTA_CHAIN_TABLE, table),
            Kind::Rule => {
                push_str(&mut body, NFTA_RULE_TABLE, table);
                if let Some(chain) = name {
                    push_str(&mut body, NFTA_RULE_CHAIN, chain);
                }
            }
            Kind::Set => push_str(&mut body, NFTA_SET_TABLE, table),
            Kind::Elements => {
                push_str(&mut body, NFTA_SET_ELEM_LIST_TABLE, table);
                push_str(&mut body, NFTA_SET_ELEM_LIST_SET, set.unwrap_or_default());
            }
        }
        // A table is asked for by name (one answer, `ENOENT` when absent); the rest are dumps.
        let flags = if kind == Kind::Table { NLM_F_ACK } else { NLM_F_DUMP };
        self.request(kind.message(), flags, family, &body, each)
    }

    fn request(
        &mut self,
        msg: u16,
        flags: u16,
        family: u8,
        attrs: &[u8],
        mut each: impl FnMut(Object<'_>) -> bool,
    ) -> Result<(), Error> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut body = vec![family, 0, 0, 0];
        body.extend_from_slice(attrs);
        let kind = (NFNL_SUBSYS_NFTABLES << 8) | msg;
        self.sock
            .send(&netlink::request(kind, NLM_F_REQUEST | flags, seq, &body))?;
        let mut stopped = false;
        let mut interrupted = false;
        loop {
            if !self.sock.wait_readable(std::time::Duration::from_secs(5))? {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "no nf_tables answer within 5 s").into());
            }
            let Some(n) = self.sock.recv(&mut self.buf)? else {
                continue;
            };
            for m in netlink::messages(&self.buf[..n]) {
                if m.seq != seq {
                    continue;
                }
                interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                match m.kind {
                    NLMSG_DONE => return finish(stopped, interrupted),
                    NLMSG_ERROR => {
                        let code = netlink::error_code(m.payload).unwrap_or(0);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code).into());
                        }
                        return finish(stopped, interrupted);
                    }
                    _ if stopped => {}
                    _ => {
                        if let Some(o) = object(m.payload) {
                            stopped = !each(o);
                        }
                    }
                }
            }
        }
    }
}

/// The message a dump of `kind` answers with (`NFT_MSG_NEW*`), with its netlink header, for
/// recording a read (test fixtures, fuzz seeds).
pub fn recorded(kind: Kind, o: Object<'_>) -> Vec<u8> {
    let new = match kind {
        Kind::Table => 0,
        Kind::Chain => 3,
        Kind::Rule => 6,
        Kind::Set => 9,
        Kind::Elements => 12,
    };
    let mut body = vec![o.family, 0, 0, 0];
    body.extend_from_slice(o.attrs);
    netlink::request((NFNL_SUBSYS_NFTABLES << 8) | new, netlink::NLM_F_MULTI, 0, &body)
}

fn finish(stopped: bool, interrupted: bool) -> Result<(), Error> {
    if interrupted {
        Err(Error::Interrupted)
    } else if stopped {
        Err(Error::Stopped)
    } else {
        Ok(())
    }
}

/// A NUL-terminated string attribute.
fn push_str(out: &mut Vec<u8>, kind: u16, s: &str) {
    let mut v = Vec::with_capacity(s.len() + 1);
    v.extend_from_slice(s.as_bytes());
    v.push(0);
    netlink::push_attr(out, kind, &v);
}

fn be32(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_split_family_and_attributes() {
        let o = object(&[2, 0, 0, 0, 8, 0, 1, 0, b'k', b'p', 0, 0]).unwrap();
        assert_eq!(o.family, FAMILY_IP);
        assert_eq!(netlink::attr(o.attrs, 1), Some(&b"kp\0\0"[..]));
        assert!(object(&[2, 0]).is_none());
    }

    #[test]
    fn string_attributes_are_nul_terminated() {
        let mut b = Vec::new();
        push_str(&mut b, NFTA_TABLE_NAME, "kube-proxy");
        assert_eq!(netlink::attr(&b, NFTA_TABLE_NAME), Some(&b"kube-proxy\0"[..]));
    }
}
