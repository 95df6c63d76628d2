//! The TC hook set's attach logic: `d8_tc_ingress` and `d8_tc_egress` (clsact classifiers) on
//! every interface of the current network namespace but loopback, on interfaces that appear while
//! tracing, and off again on drop.
//!
//! From 6.6 aya attaches through TCX links (no qdisc involved; closing the link detaches), first in
//! each interface's tcx list. Before 6.6 (or with `D8_TC_NETLINK=1`) it attaches netlink filters at
//! priority 1, handle 0xd8 (ahead of every other filter, or where the kernel puts it if another
//! kind holds priority 1), which need a `clsact` qdisc: d8-trace adds one where none exists and,
//! on drop, removes only the ones it added, after its filters, and only if nobody else's filters
//! hang on it. First is where an observer sees every packet; the programs return "continue"
//! (`d8-ebpf/src/tc.rs`), so everyone after them sees the packet as before.
//!
//! A netlink filter outlives a process that is killed (SIGKILL, the OOM killer): [`remove_stale`]
//! finds d8-trace's filters (programs named `d8_tc_*`) whose program no live process holds, and
//! the clsact qdiscs a killed d8-trace added (recorded under [`RECORDS`]), and removes them; every
//! start does it, and so does `d8-trace cleanup`.
//!
//! The kernel programs learn each interface's link-layer header length from `TC_L2_LEN`.

use std::collections::BTreeMap;

use aya::{
    Ebpf,
    maps::HashMap as BpfHashMap,
    programs::{
        LinkOrder, SchedClassifier, TcAttachType,
        tc::{NlOptions, SchedClassifierLink, TcAttachOptions, TcHandle},
    },
};

use crate::kernel::rtnetlink::{self, ARPHRD_LOOPBACK, Link, LinkEvent, LinkEvents};

/// Records of the clsact qdiscs d8-trace added (`<netns inode>-<ifindex>-<ifname>`), so that what
/// a killed d8-trace added can be told from another tool's qdisc. tmpfs: gone with a reboot, as
/// the qdiscs are.
pub const RECORDS: &str = "/run/d8-trace/clsact";

/// Netlink filter priority and handle of d8-trace's classifiers.
const PRIORITY: u16 = 1;
const HANDLE: u16 = 0xd8;

/// (program, attach point).
pub const PROGRAMS: &[(&str, TcAttachType)] = &[
    ("d8_tc_ingress", TcAttachType::Ingress),
    ("d8_tc_egress", TcAttachType::Egress),
];

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
    std::env::var("D8_TC_NETLINK").is_ok_and(|v| v == "1") || crate::kernel::version().is_none_or(|v| v < (6, 6))
}

impl Hooks {
    /// Loads both programs and attaches them to every interface there is now; subscribes to link
    /// events first, so an interface that appears meanwhile is not missed.
    pub fn attach_all(ebpf: &mut Ebpf) -> Result<Self, Error> {
        for &(name, _) in PROGRAMS {
            program(ebpf, name)?
                .load()
                .map_err(|source| Error::Load { name, source })?;
        }
        let events = LinkEvents::open().map_err(Error::LinkEvents)?;
        match remove_stale() {
            Ok(removed) => removed
                .iter()
                .for_each(|r| tracing::info!("removed what an earlier d8-trace left: {r}")),
            Err(e) => tracing::warn!("looking for filters an earlier d8-trace left: {e}"),
        }
        let mut hooks = Self {
            ifaces: BTreeMap::new(),
            netlink: uses_netlink(),
            events: Some(events),
        };
        for link in rtnetlink::links().map_err(Error::Links)? {
            hooks.attach(ebpf, &link)?;
        }
        Ok(hooks)
    }

    /// `tc` and `tcx` descriptions of what is attached, for `doctor` and the start line.
    pub fn describe(&self) -> Vec<String> {
        let how = if self.netlink { "clsact filter" } else { "tcx link" };
        self.ifaces
            .values()
            .map(|i| format!("tc d8_tc_ingress+d8_tc_egress on {} ({how})", i.name))
            .collect()
    }

    /// The link-event subscription, to wait on; call once.
    pub fn take_link_events(&mut self) -> Option<LinkEvents> {
        self.events.take()
    }

    fn attach(&mut self, ebpf: &mut Ebpf, link: &Link) -> Result<(), Error> {
        if link.kind == ARPHRD_LOOPBACK || self.ifaces.contains_key(&link.index) {
            return Ok(());
        }
        let fail = |reason: String| Error::Attach {
            iface: link.name.clone(),
            reason,
        };
        if let Some(map) = ebpf.map_mut("TC_L2_LEN") {
            let mut map: BpfHashMap<_, u32, u32> = BpfHashMap::try_from(map).map_err(|e| fail(e.to_string()))?;
            map.insert(link.index, link.l2_len(), 0)
                .map_err(|e| fail(e.to_string()))?;
        }
        let mut iface = Iface {
            name: link.name.clone(),
            links: Vec::new(),
            clsact_ours: false,
        };
        if self.netlink {
            iface.clsact_ours = rtnetlink::add_clsact(link.index).map_err(|e| fail(format!("adding clsact: {e}")))?;
            if iface.clsact_ours {
                record_clsact(link.index, &link.name, true);
            }
        }
        // Recorded before attaching: a failure half-way still detaches what got attached.
        self.ifaces.insert(link.index, iface);
        for &(name, attach_type) in PROGRAMS {
            let prog = program(ebpf, name)?;
            let id = if self.netlink {
                let ours = NlOptions {
                    priority: PRIORITY,
                    handle: TcHandle::new(0, HANDLE),
                    ..Default::default()
                };
                // Priority 1 held by another tool's filter of another kind: where the kernel
                // chooses (ahead of the first filter), with a handle it chooses.
                prog.attach_with_options(&link.name, attach_type, TcAttachOptions::Netlink(ours))
                    .or_else(|_| {
                        prog.attach_with_options(
                            &link.name,
                            attach_type,
                            TcAttachOptions::Netlink(NlOptions::default()),
                        )
                    })
            } else {
                prog.attach_with_options(&link.name, attach_type, TcAttachOptions::TcxOrder(LinkOrder::first()))
            }
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
                                    remove_our_clsact(link.index, &link.name);
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
                        if iface.clsact_ours {
                            record_clsact(link.index, &iface.name, false);
                        }
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
            // Filters first, then the qdisc they hung on (only ours, only if empty).
            iface.links.clear();
            if iface.clsact_ours {
                remove_our_clsact(index, &iface.name);
            }
        }
    }
}

fn record_path(ifindex: u32, ifname: &str) -> Option<std::path::PathBuf> {
    Some(std::path::Path::new(RECORDS).join(format!("{}-{ifindex}-{ifname}", crate::kernel::netns_inode()?)))
}

/// Notes (`added`) or forgets that d8-trace added the clsact qdisc of an interface.
fn record_clsact(ifindex: u32, ifname: &str, added: bool) {
    let Some(path) = record_path(ifindex, ifname) else {
        return;
    };
    if added {
        let _ = std::fs::create_dir_all(RECORDS);
        if let Err(e) = std::fs::write(&path, std::process::id().to_string()) {
            tracing::warn!(
                "could not record the clsact qdisc added to {ifname} ({}): {e}",
                path.display()
            );
        }
    } else {
        let _ = std::fs::remove_file(path);
        remove_empty_record_dirs();
    }
}

/// Nothing recorded any more: no empty folders left behind either (fails while not empty).
fn remove_empty_record_dirs() {
    let _ = std::fs::remove_dir(RECORDS);
    let _ = std::fs::remove_dir("/run/d8-trace");
}

/// Removes the clsact qdisc d8-trace added to an interface, unless another tool's filters were
/// attached to it meanwhile (removing it would take them along): then it stays, and says so.
fn remove_our_clsact(ifindex: u32, ifname: &str) {
    let others: usize = [rtnetlink::CLSACT_INGRESS, rtnetlink::CLSACT_EGRESS]
        .iter()
        .map(|p| rtnetlink::filters(ifindex, *p).map(|f| f.len()).unwrap_or(0))
        .sum();
    if others > 0 {
        tracing::info!("left the clsact qdisc d8-trace added to {ifname}: {others} filters of other tools hang on it");
    } else if let Err(e) = rtnetlink::del_clsact(ifindex) {
        tracing::warn!("removing the clsact qdisc d8-trace added to {ifname}: {e}");
        return;
    }
    record_clsact(ifindex, ifname, false);
}

/// Forgets the records of clsact qdiscs added in network namespaces that no longer exist (a pod
/// deleted after a d8-trace in it was killed): the qdisc went with its namespace, and a record
/// left would otherwise stay until reboot. Returns one line per record forgotten.
pub fn forget_gone_namespaces() -> Vec<String> {
    let gone = gone_records(std::path::Path::new(RECORDS), &crate::kernel::live_netns_inodes());
    let mut forgotten = Vec::new();
    for (path, what) in gone {
        match std::fs::remove_file(&path) {
            Ok(()) => forgotten.push(what),
            Err(e) => tracing::warn!("could not remove {}: {e}", path.display()),
        }
    }
    remove_empty_record_dirs();
    forgotten
}

/// The records in `dir` whose network namespace is not in `live` and whose d8-trace is gone,
/// each with a line saying what it was. A record not named `<inode>-<ifindex>-<ifname>` is not
/// ours to judge and stays.
fn gone_records(dir: &std::path::Path, live: &std::collections::HashSet<u64>) -> Vec<(std::path::PathBuf, String)> {
    let mut gone = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.splitn(3, '-');
        let (Some(Ok(netns)), Some(Ok(_ifindex)), Some(ifname)) = (
            parts.next().map(str::parse::<u64>),
            parts.next().map(str::parse::<u32>),
            parts.next(),
        ) else {
            continue;
        };
        if live.contains(&netns) {
            continue;
        }
        let pid = std::fs::read_to_string(entry.path()).ok();
        if !pid
            .and_then(|p| p.trim().parse().ok())
            .is_some_and(crate::kernel::process_alive)
        {
            gone.push((
                entry.path(),
                format!(
                    "the record of a clsact qdisc on {ifname} in network namespace {netns}, which no longer exists"
                ),
            ));
        }
    }
    gone.sort();
    gone
}

/// Removes, in the current network namespace, what a d8-trace that was killed left attached:
/// its netlink filters (programs named `d8_tc_*` that no live process holds; a running
/// d8-trace's filters stay), and the clsact qdiscs it had added once nothing hangs on them.
/// Returns one line per thing removed.
pub fn remove_stale() -> std::io::Result<Vec<String>> {
    // Read once, and only if a d8 filter is found: it walks every process's fds.
    let mut held: Option<std::collections::HashSet<u32>> = None;
    let mut removed = Vec::new();
    for link in rtnetlink::links()? {
        for (parent, dir) in [
            (rtnetlink::CLSACT_INGRESS, "ingress"),
            (rtnetlink::CLSACT_EGRESS, "egress"),
        ] {
            for f in rtnetlink::filters(link.index, parent)? {
                let ours = f.kind == "bpf" && f.bpf_name.as_deref().is_some_and(|n| n.starts_with("d8_tc_"));
                if !ours {
                    continue;
                }
                let held = held.get_or_insert_with(crate::kernel::held_program_ids);
                if f.bpf_id.is_some_and(|id| !held.contains(&id)) {
                    rtnetlink::del_filter(&f)?;
                    removed.push(format!(
                        "filter {} (program id {}) at {} {dir}",
                        f.bpf_name.as_deref().unwrap_or_default(),
                        f.bpf_id.unwrap_or_default(),
                        link.name
                    ));
                }
            }
        }
        if let Some(path) = record_path(link.index, &link.name)
            && let Ok(pid) = std::fs::read_to_string(&path)
        {
            // A live d8-trace's own qdisc stays; a dead one's goes once no filter hangs on it.
            let alive = pid.trim().parse().is_ok_and(crate::kernel::process_alive);
            let empty = [rtnetlink::CLSACT_INGRESS, rtnetlink::CLSACT_EGRESS]
                .iter()
                .all(|p| rtnetlink::filters(link.index, *p).is_ok_and(|f| f.is_empty()));
            if !alive && empty {
                rtnetlink::del_clsact(link.index)?;
                record_clsact(link.index, &link.name, false);
                removed.push(format!("clsact qdisc on {}", link.name));
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_of_gone_namespaces_and_dead_tracers_are_forgotten() {
        let dir = std::env::temp_dir().join(format!("d8-clsact-records-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let write = |name: &str, pid: &str| std::fs::write(dir.join(name), pid).unwrap();
        let me = std::process::id().to_string();
        // No process has pid u32::MAX (pid_max is at most 2^22).
        let dead = u32::MAX.to_string();
        write("4026531840-2-eth0", &dead); // namespace live: remove_stale's job there
        write("4026539999-3-veth1", &dead); // namespace and tracer gone
        write("4026539998-4-veth-a-b", &me); // namespace gone, tracer alive: not ours to judge
        write("4026539997-5-eth1", "garbage"); // unreadable pid: the tracer is gone
        write("notes.txt", &dead); // not a record
        let live = std::collections::HashSet::from([4026531840]);
        let gone = gone_records(&dir, &live);
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<_> = gone
            .iter()
            .map(|(p, _)| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["4026539997-5-eth1", "4026539999-3-veth1"]);
        assert!(
            gone[1].1.contains("veth1 in network namespace 4026539999"),
            "{}",
            gone[1].1
        );
    }

    #[test]
    fn this_process_namespace_is_live() {
        let live = crate::kernel::live_netns_inodes();
        assert!(live.contains(&crate::kernel::netns_inode().unwrap()));
    }
}
