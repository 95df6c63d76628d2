//! Loads d8-trace's kernel programs, attaches them, and detaches everything when dropped.
//!
//! aya loads the object (maps, `CONFIG` global, tracepoints); [`netfilter`] loads the netfilter
//! programs from the same object against aya's maps. [`Tracer`] owns every link: dropping it
//! detaches the netfilter hooks first, then the tracepoints, then unmounts tracefs if d8-trace
//! mounted it. Nothing outlives the process: no pins. [`kernel_log`]: the programs' debug log,
//! off unless [`Tracer::attach_set`] is asked for it.

pub mod alias;
pub mod kernel_log;
pub mod kfunc;
pub mod netfilter;
pub mod tc;

use std::{
    collections::HashMap,
    os::fd::{AsFd as _, AsRawFd as _, RawFd},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use d8_common::{Config, TargetKey, layout, stat, target_filter};

use crate::kernel::tracefs;

/// The kernel programs, built by `build.rs` for the BPF target.
pub static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/d8-probes"));

/// Priority of `nf_pre`: after defragmentation (-400) and the raw table (-300), before conntrack
/// (-200), so it sees packets conntrack drops.
pub const PRIORITY_PRE_CONNTRACK: i32 = -250;
/// Priority of `nf_post` at PREROUTING/OUTPUT: right after DNAT (-100).
pub const PRIORITY_POST_DNAT: i32 = -99;
/// Priority of `nf_post` at POSTROUTING: right after SNAT (100), when the reply tuple is final.
pub const PRIORITY_POST_SNAT: i32 = 101;

/// Where the netfilter programs attach in the IPv4 family: (program, hook, priority). The IPv6
/// family has the same hooks and priorities (`NF_IP6_PRI_*` equal `NF_IP_PRI_*`), with each
/// program's IPv6 twin ([`ipv6_twin`]).
///
/// Not FORWARD or INPUT: there `nf_post` only noted the packet for `kfree_skb`, so that a drop by
/// the filter table read "after forward" rather than "after prerouting", at one more program
/// call for every packet the node routes, traced or not (a quarter of the calls; issue 18). The
/// drop's reason (`NETFILTER_DROP`) still says a netfilter rule took it.
pub const NETFILTER_ATTACHMENTS: &[(&str, netfilter::Hook, i32)] = &[
    ("nf_pre", netfilter::Hook::PreRouting, PRIORITY_PRE_CONNTRACK),
    ("nf_pre", netfilter::Hook::LocalOut, PRIORITY_PRE_CONNTRACK),
    ("nf_post", netfilter::Hook::PreRouting, PRIORITY_POST_DNAT),
    ("nf_post", netfilter::Hook::LocalOut, PRIORITY_POST_DNAT),
    ("nf_post", netfilter::Hook::PostRouting, PRIORITY_POST_SNAT),
];

/// The IPv6 twin of a netfilter program: the same code with the IPv6 parser (`nf_pre6`).
pub fn ipv6_twin(program: &str) -> &'static str {
    match program {
        "nf_pre" => "nf_pre6",
        "nf_post" => "nf_post6",
        other => panic!("no IPv6 twin of netfilter program {other}"),
    }
}

/// The netfilter programs, both families'.
pub const NETFILTER_PROGRAMS: [&str; 4] = ["nf_pre", "nf_post", "nf_pre6", "nf_post6"];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("this d8-trace was built without its kernel programs (D8_SKIP_EBPF); rebuild without it")]
    NoProbes,
    #[error("loading the BPF object")]
    Load(#[source] aya::EbpfError),
    #[error("the BPF object has no {0}")]
    Missing(String),
    #[error("loading tracepoint program {name}")]
    Program {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("attaching to tracepoint {tracepoint}")]
    Attach {
        tracepoint: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error(transparent)]
    Netfilter(#[from] netfilter::Error),
    #[error(transparent)]
    Tc(#[from] tc::Error),
    #[error(transparent)]
    KernelLog(#[from] kernel_log::Error),
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Size of the `PACKETS` ring buffer when packets are copied (`--pcap`): 4 MiB, about 12,000
/// copies between two of userspace's drains (100 ms apart). Off, the map keeps its one page.
pub const PACKETS_RING_BYTES: u32 = 4 << 20;

/// Which hook set traces packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookSet {
    /// Netfilter BPF links (kernel 6.4+): exact pre/post-DNAT views from the skb's conntrack entry.
    Netfilter,
    /// clsact classifiers on every interface (any kernel with TC BPF): pre-DNAT at ingress,
    /// post-DNAT at egress, joined through `NAT_ALIAS` (filled from conntrack events).
    Tc,
}

impl HookSet {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Netfilter => "netfilter",
            Self::Tc => "tc",
        }
    }
}

/// Tracepoints attached in every hook set: (program, category, name). The bench attaches its
/// empty programs to the same list.
pub const TRACEPOINTS: &[(&str, &str, &str)] = &[
    ("kfree_skb", "skb", "kfree_skb"),
    ("tcp_send_reset", "tcp", "tcp_send_reset"),
    ("tcp_receive_reset", "tcp", "tcp_receive_reset"),
    ("inet_sock_set_state", "sock", "inet_sock_set_state"),
];

/// Loaded and attached programs. Field order is drop order: links go first, then the kernel log
/// reader (which forwards what the programs logged until they detached).
pub struct Tracer {
    tc: Option<tc::Hooks>,
    nf_links: Vec<netfilter::Link>,
    nf_programs: Vec<netfilter::Program>,
    _kernel_log: Option<kernel_log::KernelLog>,
    ebpf: Ebpf,
    attached: Vec<String>,
    _tracefs: tracefs::Mount,
    /// `FLOW_FILTER` entries this process has set (one bit each): entries are never cleared, so
    /// a destination's entry is written once, not per join.
    flow_filter_set: Vec<u64>,
}

/// `config` with `ct_cast` set for `set`: the netfilter programs read the conntrack entry
/// through `bpf_rdonly_cast` where vmlinux's BTF has `struct nf_conn` (`kfunc::Ids`), the helper
/// elsewhere. A BTF that cannot be read leaves the helper; the programs' load then names it.
pub(crate) fn conntrack_read(config: &Config, set: HookSet) -> Config {
    let mut config = *config;
    config.ct_cast =
        (set == HookSet::Netfilter && kfunc::Ids::running_kernel().is_ok_and(kfunc::Ids::casts_nf_conn)) as u32;
    config
}

/// The `MapData` (fd, info) of `map`, whatever its type: the netfilter loader hands the fds to
/// programs aya cannot load, and so does the benchmark's floor (`xtask/src/bench/hooks.rs`).
pub fn map_data(map: &Map) -> &MapData {
    match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    }
}

impl Tracer {
    /// Loads everything and attaches it in the calling thread's network namespace.
    ///
    /// On error, whatever was attached is detached again (the partial `Tracer` is dropped).
    pub fn attach(config: &Config, mount: tracefs::Mount, ring_buffer_bytes: u32) -> Result<Self, Error> {
        Self::attach_set(config, mount, ring_buffer_bytes, HookSet::Netfilter, false)
    }

    /// [`Self::attach`] with the packet hooks of `set`; the tracepoints are the same in both.
    ///
    /// `debug_kernel` turns the kernel programs' debug log on: their records go to the log as
    /// `kernel` events (see [`kernel_log`]), which needs a tokio runtime with IO enabled. Off, the
    /// programs' log statements are pruned by the verifier and cost nothing.
    pub fn attach_set(
        config: &Config,
        mount: tracefs::Mount,
        ring_buffer_bytes: u32,
        set: HookSet,
        debug_kernel: bool,
    ) -> Result<Self, Error> {
        if PROBES.is_empty() {
            return Err(Error::NoProbes);
        }
        let config = &conntrack_read(config, set);
        let mut loader = EbpfLoader::new();
        loader
            .override_global("CONFIG", config, true)
            .map_max_entries("EVENTS", ring_buffer_bytes);
        if config.pcap_snaplen != 0 {
            loader.map_max_entries("PACKETS", PACKETS_RING_BYTES);
        }
        kernel_log::configure(&mut loader, debug_kernel);
        let mut ebpf = loader.load(PROBES).map_err(Error::Load)?;
        // Before the log reader takes AYA_LOGS out of the object: the netfilter programs are
        // relocated against every map, that one included (its fd stays open in the reader).
        let map_fds: HashMap<String, RawFd> = ebpf
            .maps()
            .map(|(name, map)| (name.to_string(), map_data(map).fd().as_fd().as_raw_fd()))
            .collect();
        let kernel_log = if debug_kernel {
            kernel_log::start(&mut ebpf)?
        } else {
            None
        };
        let mut tracer = Self {
            tc: None,
            nf_links: Vec::new(),
            nf_programs: Vec::new(),
            _kernel_log: kernel_log,
            ebpf,
            attached: Vec::new(),
            _tracefs: mount,
            flow_filter_set: vec![0; target_filter::WORDS as usize],
        };

        for &(program, category, name) in TRACEPOINTS {
            let used = match program {
                "tcp_send_reset" => config.send_reset.kind != layout::UNUSED,
                "tcp_receive_reset" => config.receive_reset.kind != layout::UNUSED,
                "inet_sock_set_state" => config.sock_state.kind != layout::UNUSED,
                _ => true,
            };
            if !used {
                continue;
            }
            let tp: &mut TracePoint = tracer
                .ebpf
                .program_mut(program)
                .ok_or_else(|| Error::Missing(format!("program {program}")))?
                .try_into()
                .map_err(|source| Error::Program {
                    name: program.into(),
                    source,
                })?;
            tp.load().map_err(|source| Error::Program {
                name: program.into(),
                source,
            })?;
            tp.attach(category, name).map_err(|source| Error::Attach {
                tracepoint: format!("{category}:{name}"),
                source,
            })?;
            tracer.attached.push(format!("tracepoint {category}:{name}"));
        }

        if set == HookSet::Tc {
            let hooks = tc::Hooks::attach_all(&mut tracer.ebpf)?;
            tracer.attached.extend(hooks.describe());
            tracer.tc = Some(hooks);
            return Ok(tracer);
        }

        for name in NETFILTER_PROGRAMS {
            tracer
                .nf_programs
                .push(netfilter::Program::load(PROBES, name, &map_fds)?);
        }
        for family in [netfilter::Family::Ipv4, netfilter::Family::Ipv6] {
            for &(program, hook, priority) in NETFILTER_ATTACHMENTS {
                let program = match family {
                    netfilter::Family::Ipv4 => program,
                    netfilter::Family::Ipv6 => ipv6_twin(program),
                };
                let prog = tracer
                    .nf_programs
                    .iter()
                    .find(|p| p.name() == program)
                    .expect("every netfilter program was loaded above");
                tracer.nf_links.push(prog.attach_family(family, hook, priority)?);
                tracer.attached.push(format!(
                    "netfilter {program} at {} {} priority {priority}",
                    family.name(),
                    hook.name()
                ));
            }
        }
        Ok(tracer)
    }

    /// TC hook set: the link-event subscription, to wait on (call once).
    pub fn take_link_events(&mut self) -> Option<crate::kernel::rtnetlink::LinkEvents> {
        self.tc.as_mut()?.take_link_events()
    }

    /// TC hook set: attaches to new interfaces; returns what changed.
    pub fn apply_link_events(&mut self, events: Vec<crate::kernel::rtnetlink::LinkEvent>) -> Vec<String> {
        match self.tc.as_mut() {
            Some(tc) => tc.apply(&mut self.ebpf, events),
            None => Vec::new(),
        }
    }

    /// Joins a flow's post-NAT tuple to its ORIGINAL tuple in the kernel (what `nf_post` does from
    /// the skb's conntrack entry): `NAT_ALIAS[post] = orig`, and state the programs kept under
    /// `post` before the alias existed is merged into `orig`'s (so nothing is reported twice).
    pub fn join_alias(&mut self, post: &d8_common::FlowKey, orig: &d8_common::FlowKey) -> Result<(), Error> {
        use d8_common::{FlowKey, FlowState};
        self.note_flow_keys([post, orig])?;
        let mut alias: BpfHashMap<&mut MapData, FlowKey, FlowKey> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("NAT_ALIAS")
                .ok_or_else(|| Error::Missing("map NAT_ALIAS".into()))?,
        )
        .map_err(|source| Error::Map {
            name: "NAT_ALIAS",
            source,
        })?;
        alias.insert(post, orig, 0).map_err(|source| Error::Map {
            name: "NAT_ALIAS",
            source,
        })?;
        let mut flows: BpfHashMap<&mut MapData, FlowKey, FlowState> = BpfHashMap::try_from(
            self.ebpf
                .map_mut("FLOWS")
                .ok_or_else(|| Error::Missing("map FLOWS".into()))?,
        )
        .map_err(|source| Error::Map { name: "FLOWS", source })?;
        let pending = flows.get(post, 0).ok();
        let current = flows.get(orig, 0).ok();
        let merged = FlowState {
            seen: pending.map_or(0, |p| p.seen) | current.map_or(0, |c| c.seen),
            last_drop_reason: current.or(pending).map_or(0, |s| s.last_drop_reason),
            captured: pending.map_or(0, |p| p.captured).max(current.map_or(0, |c| c.captured)),
            ..current.or(pending).unwrap_or_default()
        };
        if current != Some(merged) {
            flows
                .insert(orig, merged, 0)
                .map_err(|source| Error::Map { name: "FLOWS", source })?;
        }
        if pending.is_some() {
            let _ = flows.remove(post);
        }
        Ok(())
    }

    /// Sets the `FLOW_FILTER` entries of keys about to enter `FLOWS` or `NAT_ALIAS`, as the kernel
    /// programs do for theirs (`note_flow_key`): the drop tracepoint leaves at a clear entry, so a
    /// key inserted without one would have its drops go unreported. An entry this process set
    /// before is not written again.
    pub(crate) fn note_flow_keys<'a>(
        &mut self,
        keys: impl IntoIterator<Item = &'a d8_common::FlowKey>,
    ) -> Result<(), Error> {
        let fresh: Vec<u32> = keys
            .into_iter()
            .map(|key| target_filter::bit(&key.daddr, key.dport, key.proto))
            .filter(|&bit| {
                let (word, mask) = (&mut self.flow_filter_set[(bit >> 6) as usize], 1u64 << (bit & 63));
                let fresh = *word & mask == 0;
                *word |= mask;
                fresh
            })
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let written = (|| {
            let mut array = self.array::<u8>("FLOW_FILTER")?;
            for &bit in &fresh {
                array.set(bit, 1, 0).map_err(|source| Error::Map {
                    name: "FLOW_FILTER",
                    source,
                })?;
            }
            Ok(())
        })();
        if written.is_err() {
            // Not set after all: the next key to the same destination tries again.
            for bit in fresh {
                self.flow_filter_set[(bit >> 6) as usize] &= !(1u64 << (bit & 63));
            }
        }
        written
    }

    /// Human-readable list of what is attached, for `doctor` and `-v`.
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Replaces the traced targets (Service frontends and backends).
    pub fn set_targets(&mut self, targets: &[(TargetKey, u32)]) -> Result<(), Error> {
        let old: Vec<TargetKey> = self.targets_map()?.keys().filter_map(Result::ok).collect();
        // The filter always ends exact for TARGETS' keys, so the kernel's image is derived from
        // them. It gains the new bits before TARGETS gains the keys and loses the old ones only
        // after: a packet to a target never meets a clear bit. Stale bits cost a lookup, no more.
        let current = filter_image(&old);
        let exact = filter_image(targets.iter().map(|(k, _)| k));
        let union: Vec<u64> = current.iter().zip(&exact).map(|(c, e)| c | e).collect();
        self.write_target_filter(&current, &union)?;

        let mut map = self.targets_map()?;
        let wanted: std::collections::HashSet<TargetKey> = targets.iter().map(|(k, _)| *k).collect();
        for key in old.iter().filter(|k| !wanted.contains(k)) {
            let _ = map.remove(key);
        }
        for (key, value) in targets {
            map.insert(key, value, 0).map_err(|source| Error::Map {
                name: "TARGETS",
                source,
            })?;
        }
        self.write_target_filter(&union, &exact)
    }

    fn targets_map(&mut self) -> Result<BpfHashMap<&mut MapData, TargetKey, u32>, Error> {
        BpfHashMap::try_from(
            self.ebpf
                .map_mut("TARGETS")
                .ok_or_else(|| Error::Missing("map TARGETS".into()))?,
        )
        .map_err(|source| Error::Map {
            name: "TARGETS",
            source,
        })
    }

    /// The kernel's array map `name`, for writing.
    fn array<T: aya::Pod>(&mut self, name: &'static str) -> Result<Array<&mut MapData, T>, Error> {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Missing(format!("map {name}")))?;
        Array::try_from(map).map_err(|source| Error::Map { name, source })
    }

    /// Writes the words of `new` that differ from `old`.
    fn write_target_filter(&mut self, old: &[u64], new: &[u64]) -> Result<(), Error> {
        let mut array = self.array::<u64>("TARGET_FILTER")?;
        for (i, (o, n)) in old.iter().zip(new).enumerate() {
            if o != n {
                array.set(i as u32, n, 0).map_err(|source| Error::Map {
                    name: "TARGET_FILTER",
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// The events ring buffer; call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, Error> {
        let map = self
            .ebpf
            .take_map("EVENTS")
            .ok_or_else(|| Error::Missing("map EVENTS".into()))?;
        RingBuf::try_from(map).map_err(|source| Error::Map { name: "EVENTS", source })
    }

    /// The packet-copy ring buffer (`--pcap`); call once.
    pub fn take_packets(&mut self) -> Result<RingBuf<MapData>, Error> {
        let map = self
            .ebpf
            .take_map("PACKETS")
            .ok_or_else(|| Error::Missing("map PACKETS".into()))?;
        RingBuf::try_from(map).map_err(|source| Error::Map {
            name: "PACKETS",
            source,
        })
    }

    /// Counter `index` (`d8_common::stat`) summed over CPUs.
    pub fn counter(&self, index: u32) -> u64 {
        let Some(map) = self.ebpf.map("STATS") else { return 0 };
        let Ok(array) = PerCpuArray::<&MapData, u64>::try_from(map) else {
            return 0;
        };
        array.get(&index, 0).map(|values| values.iter().sum()).unwrap_or(0)
    }

    /// Events the kernel could not hand over: ring-buffer reservations that failed.
    pub fn lost_events(&self) -> u64 {
        self.counter(stat::LOST)
    }
}

/// The `TARGET_FILTER` words with the bits of `keys` set.
fn filter_image<'a>(keys: impl IntoIterator<Item = &'a TargetKey>) -> Vec<u64> {
    let mut words = vec![0u64; target_filter::WORDS as usize];
    for key in keys {
        let bit = target_filter::bit(&key.addr, key.port, key.proto);
        words[(bit >> 6) as usize] |= 1 << (bit & 63);
    }
    words
}
