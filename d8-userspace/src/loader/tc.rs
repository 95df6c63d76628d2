//! The TC hook set's attach logic: `d8_tc_ingress` and `d8_tc_egress` (clsact classifiers) on
//! every interface of the current network namespace but loopback, on interfaces that appear while
//! tracing, and off again on drop.
//!
//! From 6.6 aya attaches through TCX links (no qdisc involved; closing the link detaches). Before
//! 6.6 (or with `D8_TC_NETLINK=1`) it attaches netlink filters, which need a `clsact` qdisc: d8-trace
//! adds one where none exists and, on drop, removes only the ones it added, after its filters.
//! The kernel programs learn each interface's link-layer header length from `TC_L2_LEN`.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::HashMap as BpfHashMap,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions},
    },
};

use crate::kernel::rtnetlink::{self, ARPHRD_LOOPBACK, Link, LinkEvent, LinkEvents};

/// (program, attach point).
pub const PROGRAMS: &[(&str, TcAttachType)] =
    &[("d8_tc_ingress", TcAttachType::Ingress), ("d8_tc_egress", TcAttachType::Egress)];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the BPF object has no program {0}")]
    Missing(&'static str),
    #[error("loading TC program {name}")]
    Load {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("listing the interfaces of this network namespace")]
    Links(#[source] std::io::Error),
    #[error("subscribing to link events")]
    LinkEvents(#[source] std::io::Error),
    #[error("attaching TC programs to {iface}: {reason}")]
    Attach { iface: String, reason: String },
}

struct Iface {
    name: String,
    links: Vec<SchedClassifierLink>,
    /// d8-trace added this interface's clsact qdisc (netlink mode) and removes it on drop.
    clsact_ours: bool,
}

/// Attached TC programs. Dropping detaches everything and removes the qdiscs d8-trace added.
pub struct Hooks {
    ifaces: BTreeMap<u32, Iface>,
    netlink: bool,
    events: Option<LinkEvents>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut SchedClassifier, Error> {
    ebpf.program_mut(name)
        .ok_or(Error::Missing(name))?
        .try_into()
        .map_err(|source| Error::Load { name, source })
}

/// Whether programs attach through netlink filters (and need clsact) rather than TCX links.
pub fn uses_netlink() -> bool {
    std::env::var("D8_TC_NETLINK").is_ok_and(|v| v == "1")
        || crate::kernel::version().is_none_or(|v| v < (6, 6))
}

impl Hooks {
    /// Loads both programs and attaches them to every interface there is now; subscribes to link
    /// events first, so an interface that appears meanwhile is not missed.
    pub fn attach_all(ebpf: &mut Ebpf) -> Result<Self, Error> {
        for &(name, _) in PROGRAMS {
            program(ebpf, name)?.load().map_err(|source| Error::Load { name, source })?;
        }
        let events = LinkEvents::open().map_err(Error::LinkEvents)?;
        let mut hooks = Self { ifaces: BTreeMap::new(), netlink: uses_netlink(), events: Some(events) };
        for link in rtnetlink::links().map_err(Error::Links)? {
            hooks.attach(ebpf, &link)?;
        }
        Ok(hooks)
    }

    /// `tc` and `tcx` descriptions of what is attached, for `doctor` and the start line.
    pub fn describe(&self) -> Vec<String> {
        let how = if self.netlink { "clsact filter" } else { "tcx link" };
        self.ifaces.values().map(|i| format!("tc d8_tc_ingress+d8_tc_egress on {} ({how})", i.name)).collect()
    }

    /// The link-event subscription, to wait on; call once.
    pub fn take_link_events(&mut self) -> Option<LinkEvents> {
        self.events.take()
    }

    fn attach(&mut self, ebpf: &mut Ebpf, link: &Link) -> Result<(), Error> {
        if link.kind == ARPHRD_LOOPBACK || self.ifaces.contains_key(&link.index) {
            return Ok(());
        }
        let fail = |reason: String| Error::Attach { iface: link.name.clone(), reason };
        if let Some(map) = ebpf.map_mut("TC_L2_LEN") {
            let mut map: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(map).map_err(|e| fail(e.to_string()))?;
            map.insert(link.index, link.l2_len(), 0).map_err(|e| fail(e.to_string()))?;
        }
        let mut iface = Iface { name: link.name.clone(), links: Vec::new(), clsact_ours: false };
        if self.netlink {
            iface.clsact_ours = rtnetlink::add_clsact(link.index).map_err(|e| fail(format!("adding clsact: {e}")))?;
        }
        // Recorded before attaching: a failure half-way still detaches what got attached.
        self.ifaces.insert(link.index, iface);
        for &(name, attach_type) in PROGRAMS {
            let prog = program(ebpf, name)?;
            let options = if self.netlink {
                TcAttachOptions::Netlink(NlOptions::default())
            } else {
                TcAttachOptions::TcxOrder(LinkOrder::default())
            };
            let id = prog
                .attach_with_options(&link.name, attach_type, options)
                .map_err(|e| fail(format!("{name}: {e}")))?;
            let owned = prog.take_link(id).map_err(|e| fail(format!("{name}: {e}")))?;
            if let Some(i) = self.ifaces.get_mut(&link.index) {
                i.links.push(owned);
            }
        }
        Ok(())
    }

    /// Applies link events: attaches to new interfaces, forgets deleted ones (the kernel removed
    /// their hooks with them). Returns one line per change, and per failure (tracing goes on).
    pub fn apply(&mut self, ebpf: &mut Ebpf, events: Vec<LinkEvent>) -> Vec<String> {
        let mut notes = Vec::new();
        for ev in events {
            match ev {
                LinkEvent::New(link) => {
                    if link.kind == ARPHRD_LOOPBACK || self.ifaces.contains_key(&link.index) {
                        continue;
                    }
                    match self.attach(ebpf, &link) {
                        Ok(()) => notes.push(format!("attached TC programs to new interface {}", link.name)),
                        Err(e) => {
                            // Undo what got attached (an interface that vanished meanwhile has
                            // nothing left to undo; the errors then say nothing new).
                            if let Some(mut i) = self.ifaces.remove(&link.index) {
                                i.links.clear();
                                if i.clsact_ours {
                                    let _ = rtnetlink::del_clsact(link.index);
                                }
                                i.clsact_ours = false;
                            }
                            notes.push(format!("warning: {e}"));
                        }
                    }
                }
                LinkEvent::Deleted(link) => {
                    if let Some(mut iface) = self.ifaces.remove(&link.index) {
                        // Its filters and qdisc went with it; detaching would only fail.
                        iface.clsact_ours = false;
                        for l in iface.links.drain(..) {
                            std::mem::forget(l);
                        }
                    }
                }
            }
        }
        notes
    }

    /// Number of interfaces with programs attached.
    pub fn interfaces(&self) -> usize {
        self.ifaces.len()
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        for (index, mut iface) in std::mem::take(&mut self.ifaces) {
            // Filters first, then the qdisc they hung on (only ours).
            iface.links.clear();
            if iface.clsact_ours
                && let Err(e) = rtnetlink::del_clsact(index)
            {
                tracing::warn!("removing the clsact qdisc d8-trace added to {}: {e}", iface.name);
            }
        }
    }
}
