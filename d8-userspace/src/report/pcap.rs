//! `--pcap FILE`: the evidence to take away, as a pcapng file (`pcapng.rs` writes its blocks).
//!
//! It holds the packets of the flows that failed (rejected, dropped, reset, timed out,
//! ICMP-errored; kubelet probe resets are normal and left out), or of every traced flow
//! (`--pcap-all`). Each place a packet was copied is an interface of its own, named for it
//! ("nf-prerouting", "nf-output", "post-dnat", "drop", or the TC interface), so Wireshark shows
//! the client's packet to the Service next to the same packet after DNAT. Each packet's comment
//! names the flow, the Service and the site; the last packet of a flow also carries its verdict,
//! drop reason and the rule behind it. The section header records the node, the kernel, the
//! d8-trace version and the command.
//!
//! Writing never stops a trace: each block is written whole; a write that fails (a full disk)
//! truncates the file back to the last whole block, so what is there stays a valid capture, and
//! later writes are skipped; [`PcapWriter::warning`] says what was lost, for the report.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::Write,
    path::{Path, PathBuf},
};

use super::pcapng;
use crate::{
    classify::VerdictClass,
    events::{PacketCopy, Site},
    flows::{Flow, Outcome},
};

use super::{EvidenceKind, Report};

/// Default `--snaplen`: IP and transport headers with room for options and the start of the
/// payload (an HTTP request line, a DNS question).
pub const DEFAULT_SNAPLEN: u32 = 128;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--pcap {}: the file exists; choose another path, remove it, or add --force to overwrite it", path.display())]
    Exists { path: PathBuf },
    #[error("--pcap {}: cannot write there ({source}); choose a writable path", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "--snaplen {0}: must be between 1 and {max} bytes (each copy is reserved at the maximum in the kernel's ring buffer)",
        max = d8_common::pcap::MAX_SNAPLEN
    )]
    Snaplen(u32),
}

/// Whether a flow's packets go into the file: a failing outcome or an ICMP error, unless its
/// class says it is normal (kubelet probes ending with RST); everything with `all`.
pub fn selected(outcome: Outcome, icmp_errors: bool, class: Option<VerdictClass>, all: bool) -> bool {
    if all {
        return true;
    }
    if class == Some(VerdictClass::ProbeRst) {
        return false;
    }
    icmp_errors
        || matches!(
            outcome,
            Outcome::Rejected | Outcome::Dropped | Outcome::Reset | Outcome::Timeout
        )
}

/// The interface a site is, in the file: (name, description).
pub fn interface_of(site: Site, ifnames: &HashMap<u32, String>) -> (String, String) {
    match site {
        Site::NfPre { output: false } => (
            "nf-prerouting".into(),
            "netfilter PREROUTING before conntrack and DNAT".into(),
        ),
        Site::NfPre { output: true } => (
            "nf-output".into(),
            "netfilter OUTPUT before conntrack and DNAT (the node's own packets)".into(),
        ),
        Site::PostDnat => (
            "post-dnat".into(),
            "netfilter PREROUTING/OUTPUT right after DNAT".into(),
        ),
        Site::Drop => ("drop".into(), "packets the kernel dropped (skb:kfree_skb)".into()),
        Site::Tc { ifindex, egress } => (
            ifnames.get(&ifindex).cloned().unwrap_or_else(|| format!("if{ifindex}")),
            format!("TC {} (ifindex {ifindex})", if egress { "egress" } else { "ingress" }),
        ),
    }
}

/// One flow's packets and what its comments say.
#[derive(Debug)]
pub struct FlowPackets<'a> {
    pub id: u64,
    pub service: &'a str,
    /// For the last packet: verdict class and outcome, drop reason, rule.
    pub verdict: String,
    pub packets: &'a [PacketCopy],
}

/// The pcapng file being written.
#[derive(Debug)]
pub struct PcapWriter {
    path: PathBuf,
    /// `None` once a write failed: nothing more is written.
    file: Option<File>,
    /// Bytes of whole blocks in the file.
    len: u64,
    snaplen: u32,
    /// Interface name -> its id (the order of its block in the file).
    interfaces: HashMap<String, u32>,
    /// Kernel monotonic nanoseconds + this = Unix-epoch nanoseconds.
    epoch_offset_ns: i128,
    flows: u64,
    packets: u64,
    /// The first failure and what it cost.
    failure: Option<String>,
    skipped_flows: u64,
}

/// What the section header records.
#[derive(Debug, Clone)]
pub struct Header {
    pub node: String,
    pub kernel: String,
    pub command: String,
}

impl PcapWriter {
    /// Creates the file (refusing an existing one unless `force`) and writes its section header.
    pub fn create(path: &Path, force: bool, snaplen: u32, header: &Header) -> Result<Self, Error> {
        check_snaplen(snaplen)?;
        let mut opts = OpenOptions::new();
        opts.write(true);
        if force {
            opts.create(true).truncate(true);
        } else {
            opts.create_new(true);
        }
        let file = opts.open(path).map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => Error::Exists { path: path.into() },
            _ => Error::Create {
                path: path.into(),
                source,
            },
        })?;
        let mut w = Self {
            path: path.into(),
            file: Some(file),
            len: 0,
            snaplen,
            interfaces: HashMap::new(),
            epoch_offset_ns: epoch_offset_ns(),
            flows: 0,
            packets: 0,
            failure: None,
            skipped_flows: 0,
        };
        let shb = pcapng::section_header(&pcapng::Section {
            hardware: &format!("node {}", header.node),
            os: &header.kernel,
            application: &format!("d8-trace {}", env!("CARGO_PKG_VERSION")),
            comment: &format!("command: {}", header.command),
        });
        if !w.put(&shb) {
            let msg = w.failure.take().unwrap_or_default();
            return Err(Error::Create {
                path: path.into(),
                source: std::io::Error::other(msg),
            });
        }
        Ok(w)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one block whole, or truncates the file back to the last whole one and stops.
    fn put(&mut self, block: &[u8]) -> bool {
        let Some(file) = self.file.as_mut() else { return false };
        match file.write_all(block) {
            Ok(()) => {
                self.len += block.len() as u64;
                true
            }
            Err(e) => {
                // A partial block would make the rest of the file unreadable: cut it off.
                let _ = file.set_len(self.len);
                self.failure = Some(format!("writing {}: {e}", self.path.display()));
                self.file = None;
                false
            }
        }
    }

    /// The id of the interface `name`, writing its block the first time.
    fn interface(&mut self, name: &str, description: &str) -> Option<u32> {
        if let Some(&id) = self.interfaces.get(name) {
            return Some(id);
        }
        let id = self.interfaces.len() as u32;
        if !self.put(&pcapng::interface(name, description, self.snaplen)) {
            return None;
        }
        self.interfaces.insert(name.to_string(), id);
        Some(id)
    }

    /// Writes a flow's packets in time order; the last one's comment carries the verdict.
    pub fn write_flow(&mut self, flow: &FlowPackets<'_>, ifnames: &HashMap<u32, String>) {
        if self.file.is_none() {
            self.skipped_flows += 1;
            return;
        }
        let mut order: Vec<&PacketCopy> = flow.packets.iter().collect();
        order.sort_by_key(|p| p.ts_ns);
        for (i, p) in order.iter().enumerate() {
            let (name, description) = interface_of(p.site, ifnames);
            let Some(interface) = self.interface(&name, &description) else {
                self.skipped_flows += 1;
                return;
            };
            let direction = if p.reply { "reply" } else { "original" };
            let mut comment = format!("flow #{} {} {} {}", flow.id, flow.service, name, direction);
            if i + 1 == order.len() && !flow.verdict.is_empty() {
                comment.push_str("; ");
                comment.push_str(&flow.verdict);
            }
            let flags = match p.site {
                Site::Tc { egress: false, .. } => pcapng::FLAGS_INBOUND,
                Site::Tc { egress: true, .. } => pcapng::FLAGS_OUTBOUND,
                _ => 0,
            };
            let block = pcapng::packet(&pcapng::Packet {
                interface,
                ts_ns: (p.ts_ns as i128 + self.epoch_offset_ns).max(0) as u64,
                data: &p.data,
                orig_len: p.orig_len,
                comment: &comment,
                flags,
            });
            if !self.put(&block) {
                self.skipped_flows += 1;
                return;
            }
            self.packets += 1;
        }
        self.flows += 1;
    }

    /// Bytes of whole blocks written.
    pub fn bytes(&self) -> u64 {
        self.len
    }

    /// Whether a write failed (nothing more is written to this file).
    pub fn failed(&self) -> bool {
        self.file.is_none()
    }

    /// Flows and packets written.
    pub fn written(&self) -> (u64, u64) {
        (self.flows, self.packets)
    }

    /// What a failed write cost, for the report's warnings; `None` when every write succeeded.
    pub fn warning(&self) -> Option<String> {
        let failure = self.failure.as_ref()?;
        Some(format!(
            "the pcap file stopped growing ({failure}): it holds {} whole flow(s), {} packet(s); {} flow(s) were not written; the file stays readable",
            self.flows, self.packets, self.skipped_flows
        ))
    }
}

/// `--snaplen` within what a kernel record holds.
pub fn check_snaplen(snaplen: u32) -> Result<(), Error> {
    if snaplen == 0 || snaplen > d8_common::pcap::MAX_SNAPLEN {
        return Err(Error::Snaplen(snaplen));
    }
    Ok(())
}

/// Unix-epoch nanoseconds minus kernel monotonic nanoseconds (the packets' clock), now.
fn epoch_offset_ns() -> i128 {
    let wall = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128);
    wall - crate::kernel::monotonic_ns() as i128
}

/// The last packet's verdict text: class and outcome, drop reason, rule.
pub fn verdict_text(
    class: Option<VerdictClass>,
    outcome: Outcome,
    drop_reason: Option<&str>,
    rule: Option<&str>,
) -> String {
    let mut s = format!(
        "verdict {} ({})",
        class.map_or("unclassified", |c| c.as_str()),
        serde_json::to_value(outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    if let Some(r) = drop_reason {
        s.push_str(&format!("; drop reason {r}"));
    }
    if let Some(r) = rule {
        s.push_str(&format!("; rule {r}"));
    }
    s
}

/// Writes the flows of `report` that [`selected`] picks (`report.flows[i]` is `flows[i]`), each
/// with the packets `packets` hands back for it.
pub fn write_report(
    w: &mut PcapWriter,
    report: &Report,
    flows: &[Flow],
    all: bool,
    packets: &mut dyn FnMut(&Flow) -> Vec<PacketCopy>,
    ifnames: &HashMap<u32, String>,
) {
    let root = report.root_cause.as_ref().map(|r| r.class);
    // `--dest` to an address no Service holds: the address names the flows.
    let name = report.unallocated_address().unwrap_or_else(|| report.service.clone());
    let rule_evidence = report
        .evidence
        .iter()
        .find(|e| e.kind == EvidenceKind::Rules)
        .map(|e| e.content.as_str());
    for (flow, fr) in flows.iter().zip(&report.flows) {
        if !selected(fr.outcome, !flow.icmp_errors.is_empty(), fr.class, all) {
            continue;
        }
        let copies = packets(flow);
        if copies.is_empty() {
            continue;
        }
        // The rule that decided: the verdict's own rule line when this flow shows the root
        // cause, else the endpoint rule DNAT chose.
        let endpoint_rule = fr.backend.and_then(|b| {
            report
                .endpoints
                .iter()
                .find(|e| e.ip == b.ip() && e.port == b.port())
                .and_then(|e| e.rule.as_deref())
        });
        let rule = if fr.class.is_some() && fr.class == root {
            rule_evidence.or(endpoint_rule)
        } else {
            endpoint_rule
        };
        let verdict = verdict_text(fr.class, fr.outcome, fr.drop_reason.as_deref(), rule);
        w.write_flow(
            &FlowPackets {
                id: flow.id,
                service: &name,
                verdict,
                packets: &copies,
            },
            ifnames,
        );
    }
}
