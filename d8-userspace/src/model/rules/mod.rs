//! kube-proxy's rules on this node, read into the service model (ARCHITECTURE.md, "The service model").
//!
//! - [`iptables`]: `iptables-save` text, or iptables-nft's tables read from the kernel and
//!   rendered as that text (iptables mode; also tells IPVS mode's rules apart).
//! - [`nftables`]: `nft -j list table ip kube-proxy` JSON, or the table read from the kernel
//!   (nftables mode).
//! - [`ipvs`]: `ipvsadm -Ln` and `/proc/net/ip_vs` text (IPVS mode), joined to Services by address.
//! - [`names`]: kube-proxy's chain-name hashes.
//! - `service`: what the three share to turn what they found into [`Service`]s: the one place
//!   an [`Endpoint`](crate::model::Endpoint) is written from the rules, when two findings are the
//!   same frontend or endpoint, and (iptables, nftables) the Services looked up by port key.
//!
//! The parsers are pure (`&str` in, values out). Only the functions here run commands, in the
//! *current* network namespace (the caller has entered the node's):
//! - [`read_node`]: kube-proxy's health ([`crate::model::kube_proxy::status`]), the mode, and the
//!   Services the rules show, as a [`ServiceModel`] inside [`NodeRules`].
//! - [`read_iptables_mode`], [`read_nftables_mode`], [`read_ipvs_mode`]: one mode each, as a
//!   [`ModeReading`] (IPv4 and IPv6 merged); a missing tool is [`ReadError::CommandMissing`],
//!   naming the package to install.
//! - [`choose_reading`], [`merge_services`]: the pure steps `read_node` uses to pick a mode and to
//!   merge IPv4/IPv6 (or rules and API) views of the same Services.
//!
//! Mode detection (reference §6.1): kube-proxy's `/proxyMode` when reachable (or the `mode`
//! argument), else what the rules show: `table ip kube-proxy` ⇒ nftables, `KUBE-SVC-`/`KUBE-SEP-`
//! chains (or kube-proxy's service rules) ⇒ iptables, IPVS virtual servers ⇒ ipvs. When several
//! are present (kube-proxy cleans the other modes' leftovers only at start), the one with the most
//! Services wins and a warning names the others.
//!
//! IPVS mode names no Services in the kernel: its Services come back anonymous (see [`ipvs::join`])
//! together with the raw [`NodeRules::virtual_servers`]; [`ipvs::name_services`] joins them with
//! the API's Services once those are known.

mod address;
pub mod iptables;
pub mod ipvs;
pub mod names;
pub mod nftables;
#[cfg(test)]
mod root_test;
mod service;

use crate::error_chain;
use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;
use std::process::Command;

use crate::model::{ProxyMode, Service, ServiceModel, ServiceRef, Warning, WarningKind};

/// A fast, non-cryptographic hasher for the readers' maps (rustc's FxHash with a final mix): they
/// are keyed by chain names from the node's own dumps and hashed several times per rule, where
/// SipHash took ~10% of a 10,000-Service parse.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct FastHasher {
    hash: u64,
}

const FAST_HASH_K: u64 = 0xf135_7aea_2e62_a9c5;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.hash = (self.hash.rotate_left(26) ^ word).wrapping_mul(FAST_HASH_K);
    }
}

impl std::hash::Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.add(u64::from_le_bytes(c.try_into().expect("8 bytes")));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(buf) ^ ((rest.len() as u64) << 59));
        }
    }
    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    #[inline]
    fn finish(&self) -> u64 {
        let h = self.hash.wrapping_mul(FAST_HASH_K);
        h ^ (h >> 29)
    }
}

/// `HashMap` with [`FastHasher`].
pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, std::hash::BuildHasherDefault<FastHasher>>;
/// `HashSet` with [`FastHasher`].
pub(crate) type FastSet<K> = std::collections::HashSet<K, std::hash::BuildHasherDefault<FastHasher>>;

/// `/proc/net/ip_vs`: IPVS virtual servers of the current network namespace, without ipvsadm.
pub const PROC_NET_IP_VS: &str = "/proc/net/ip_vs";

/// What [`read_node`] found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NodeRules {
    /// `kube_proxy` (mode, health, `rules_present`), `services` from the rules, `node_ips` the rules
    /// accept NodePorts on, and `warnings` from every reader.
    pub model: ServiceModel,
    /// IPVS virtual servers (IPVS mode), for [`ipvs::join`] with the API's Services.
    pub virtual_servers: Vec<ipvs::VirtualServer>,
    /// The commands whose output the model was built from (`iptables-nft-save`, `nft -j list table
    /// ip kube-proxy`, ...), for the report's evidence.
    pub sources: Vec<String>,
}

/// Reading the node's rules failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The tool the mode needs is not installed.
    #[error("`{command}` is not installed: install the `{package}` package to read kube-proxy's {mode} rules")]
    CommandMissing {
        command: String,
        package: &'static str,
        mode: &'static str,
    },
    /// The tool ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    CommandFailed {
        command: String,
        status: String,
        stderr: String,
    },
    /// The tool could not be started for another reason (permissions, ...).
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    /// None of the tools of any mode could be run.
    #[error(
        "no kube-proxy rules could be read: none of iptables-save, nft, ipvsadm is installed \
         (install iptables, nftables or ipvsadm)"
    )]
    NoTools,
    /// The iptables-save output is not iptables-save output.
    #[error("reading `{command}` output")]
    Iptables {
        command: String,
        #[source]
        source: iptables::ParseError,
    },
    /// The nft output is not `nft -j` output.
    #[error("reading `{command}` output")]
    Nftables {
        command: String,
        #[source]
        source: nftables::ParseError,
    },
    /// `--rules-from kernel` and the kernel reader failed or met what it does not know.
    #[error(
        "reading {what} from the kernel (--rules-from kernel; `--rules-from tools` reads it with \
         iptables-save or nft)"
    )]
    Kernel {
        what: String,
        #[source]
        source: nftables::netlink::Error,
    },
    /// The ipvsadm output is not ipvsadm output.
    #[error("reading `{command}` output")]
    Ipvs {
        command: String,
        #[source]
        source: ipvs::ParseError,
    },
}

/// One mode's reading: its Services, whether kube-proxy's rules are there, and where they came from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModeReading {
    pub mode: ProxyMode,
    pub rules_present: bool,
    pub services: Vec<Service>,
    pub warnings: Vec<String>,
    pub node_port_ips: Vec<IpAddr>,
    /// nftables mode: the drops of unallocated ClusterIPs, one per family's table (see
    /// [`crate::model::UnallocatedDrop`]).
    pub unallocated_drops: Vec<crate::model::UnallocatedDrop>,
    pub virtual_servers: Vec<ipvs::VirtualServer>,
    pub sources: Vec<String>,
}

/// Reads kube-proxy's rules and health in the current network namespace. `mode`: read only that
/// mode's rules (`None` or `Unknown`: ask kube-proxy's `/proxyMode`, else read every mode and
/// choose). Missing tools are an error only when the mode needs them.
///
/// `only`: the job is about this Service alone (`explain`, a trace); readers that can read less
/// for it do (the kernel readers read its chains and map elements only), and the model then
/// holds it alone.
pub fn read_node(mode: Option<ProxyMode>, from: RulesFrom, only: Option<&ServiceRef>) -> Result<NodeRules, ReadError> {
    let status = crate::model::kube_proxy::status();
    let reported = Some(status.mode).filter(|m| *m != ProxyMode::Unknown);
    let wanted = mode.filter(|m| *m != ProxyMode::Unknown).or(reported);
    let mut warnings: Vec<Warning> = status
        .problems
        .iter()
        .map(|p| Warning::new(WarningKind::KubeProxy, "kube-proxy", p.clone()))
        .collect();
    let reading = match wanted {
        Some(ProxyMode::Iptables) => read_iptables_mode(from, only)?,
        Some(ProxyMode::Nftables) => read_nftables_mode(from, only)?,
        Some(ProxyMode::Ipvs) => read_ipvs_mode()?,
        _ => {
            let mut readings = Vec::new();
            let mut missing = 0;
            let readers: [(&ModeReader, &str); 3] = [
                (&|| read_iptables_mode(from, only), "iptables"),
                (&|| read_nftables_mode(from, only), "nftables"),
                (&read_ipvs_mode, "ipvs"),
            ];
            for (read, name) in readers {
                match read() {
                    Ok(r) => readings.push(r),
                    Err(ReadError::CommandMissing { .. }) => missing += 1,
                    Err(e) => warnings.push(Warning::new(
                        WarningKind::Rules,
                        name,
                        format!("{name} rules not read: {}", error_chain(&e)),
                    )),
                }
            }
            if missing == 3 {
                return Err(ReadError::NoTools);
            }
            let (chosen, notes) = choose_reading(readings);
            warnings.extend(notes.into_iter().map(|n| Warning::new(WarningKind::Rules, "rules", n)));
            chosen
        }
    };
    if let (Some(r), true) = (reported, reading.rules_present)
        && r != reading.mode
    {
        warnings.push(Warning::new(
            WarningKind::KubeProxy,
            "kube-proxy",
            format!(
                "kube-proxy reports mode {r:?} but the rules read are {:?}'s",
                reading.mode
            ),
        ));
    }
    let mut kube_proxy = status;
    if kube_proxy.mode == ProxyMode::Unknown {
        kube_proxy.mode = reading.mode;
    }
    kube_proxy.rules_present = reading.rules_present;
    let source = format!("{:?}", reading.mode).to_lowercase();
    warnings.extend(
        reading
            .warnings
            .into_iter()
            .map(|w| Warning::new(WarningKind::Rules, source.clone(), w)),
    );
    Ok(NodeRules {
        model: ServiceModel {
            kube_proxy,
            services: reading.services,
            node_ips: reading.node_port_ips,
            unallocated_drops: reading.unallocated_drops,
            warnings,
            ..Default::default()
        },
        virtual_servers: reading.virtual_servers,
        sources: reading.sources,
    })
}

/// Picks the mode whose rules are present, preferring the one with the most Services; notes say
/// which others were present too. No reading with rules: an empty `Unknown` reading (keeping the
/// readers' warnings).
pub fn choose_reading(readings: Vec<ModeReading>) -> (ModeReading, Vec<String>) {
    let mut present: Vec<ModeReading> = Vec::new();
    let mut absent_warnings = Vec::new();
    for r in readings {
        if r.rules_present {
            present.push(r);
        } else {
            absent_warnings.extend(r.warnings);
        }
    }
    present.sort_by_key(|r| std::cmp::Reverse(r.services.len()));
    let mut notes = Vec::new();
    if present.len() > 1 {
        let others: Vec<String> = present[1..].iter().map(|r| format!("{:?}", r.mode)).collect();
        notes.push(format!(
            "kube-proxy rules of several modes are present: using {:?} ({} Services); also found {} (leftovers from a mode change?)",
            present[0].mode,
            present[0].services.len(),
            others.join(", ")
        ));
    }
    match present.into_iter().next() {
        Some(r) => (r, notes),
        None => (
            ModeReading {
                mode: ProxyMode::Unknown,
                warnings: absent_warnings,
                ..Default::default()
            },
            notes,
        ),
    }
}

/// Merges two lists of Services by `namespace/name`: IPv4 and IPv6 readings of one mode, or rules
/// and API views of the same Services. Frontends are one per (address, port, protocol) and
/// endpoints one per (address, port, protocol, port name); where both sides know a field, the
/// first side wins, and unknown fields (`None`) are filled from the second.
pub fn merge_services(a: Vec<Service>, b: Vec<Service>) -> Vec<Service> {
    let mut map: BTreeMap<ServiceRef, Service> = BTreeMap::new();
    for s in a.into_iter().chain(b) {
        match map.get_mut(&s.service) {
            None => {
                map.insert(s.service.clone(), s);
            }
            Some(m) => merge_into(m, s),
        }
    }
    map.into_values().collect()
}

fn merge_into(m: &mut Service, s: Service) {
    for f in s.frontends {
        match m
            .frontends
            .iter_mut()
            .find(|x| x.ip == f.ip && x.port == f.port && x.protocol == f.protocol)
        {
            Some(x) => {
                if x.rule.is_none() {
                    x.rule = f.rule;
                }
                if x.port_name.is_empty() {
                    x.port_name = f.port_name;
                }
            }
            None => m.frontends.push(f),
        }
    }
    for e in s.endpoints {
        match m
            .endpoints
            .iter_mut()
            .find(|x| x.ip == e.ip && x.port == e.port && x.protocol == e.protocol && x.port_name == e.port_name)
        {
            Some(x) => {
                x.in_rules |= e.in_rules;
                x.in_api = x.in_api.or(e.in_api);
                x.ready = x.ready.or(e.ready);
                x.local = x.local.or(e.local);
                x.node = x.node.take().or(e.node);
                x.pod = x.pod.take().or(e.pod);
                x.weight = x.weight.or(e.weight);
                x.rule = x.rule.take().or(e.rule);
            }
            None => m.endpoints.push(e),
        }
    }
    let (r, o) = (&mut m.rules, s.rules);
    r.present |= o.present;
    for (mine, theirs) in [
        (&mut r.no_endpoints, o.no_endpoints),
        (&mut r.no_local_endpoints, o.no_local_endpoints),
        (&mut r.firewall_drops, o.firewall_drops),
    ] {
        for x in theirs {
            if !mine.contains(&x) {
                mine.push(x);
            }
        }
    }
    r.affinity_timeout_secs = r.affinity_timeout_secs.or(o.affinity_timeout_secs);
    r.undefined_port_reject = r.undefined_port_reject.take().or(o.undefined_port_reject);
    for (mine, theirs) in [
        (&mut r.problems, o.problems),
        (&mut r.chains, o.chains),
        (&mut r.source_ranges, o.source_ranges),
    ] {
        for x in theirs {
            if !mine.contains(&x) {
                mine.push(x);
            }
        }
    }
    let (a, o) = (&mut m.api, s.api);
    a.exists = a.exists.or(o.exists);
    a.service_type = a.service_type.take().or(o.service_type);
    a.external_traffic_policy_local = a.external_traffic_policy_local.or(o.external_traffic_policy_local);
    a.internal_traffic_policy_local = a.internal_traffic_policy_local.or(o.internal_traffic_policy_local);
    a.session_affinity_client_ip = a.session_affinity_client_ip.or(o.session_affinity_client_ip);
    a.proxied = a.proxied.or(o.proxied);
}

/// Longest a dump tool may run: `nft -j` takes ~8 s at 10,000 Services (BENCHMARKS.md); a tool
/// still running after this is killed and the read fails (the daemon keeps its last model).
const TOOL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(60);

/// Output of a command, or why there is none.
fn run(command: &str, args: &[&str], package: &'static str, mode: &'static str) -> Result<String, ReadError> {
    let shown = std::iter::once(command)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let out = crate::kernel::process::output_within(Command::new(command).args(args).env("LC_ALL", "C"), TOOL_DEADLINE)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ReadError::CommandMissing {
                    command: command.to_string(),
                    package,
                    mode,
                }
            } else {
                ReadError::Spawn {
                    command: shown.clone(),
                    source: e,
                }
            }
        })?;
    if !out.status.success() {
        return Err(ReadError::CommandFailed {
            command: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    // No copy of the dump (tens of MiB at 10,000 Services) unless it is not UTF-8.
    Ok(String::from_utf8(out.stdout).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// iptables mode, IPv4 and IPv6: from the kernel (iptables-nft's nf_tables tables, see
/// [`iptables::netlink`]; only `only`'s part when given) or from the `iptables-save` tools, as
/// `from` says.
pub fn read_iptables_mode(from: RulesFrom, only: Option<&ServiceRef>) -> Result<ModeReading, ReadError> {
    let mut reading = ModeReading {
        mode: ProxyMode::Iptables,
        ..Default::default()
    };
    let mut any_read = false;
    for (v6, family, tools) in [
        (
            false,
            crate::kernel::nftables::FAMILY_IP,
            ["iptables-nft-save", "iptables-legacy-save", "iptables-save"],
        ),
        (
            true,
            crate::kernel::nftables::FAMILY_IP6,
            ["ip6tables-nft-save", "ip6tables-legacy-save", "ip6tables-save"],
        ),
    ] {
        let ip = if v6 { "ip6" } else { "ip" };
        let best = match from {
            RulesFrom::Tools => read_iptables_tools(tools, &mut reading, &mut any_read)?,
            RulesFrom::Kernel | RulesFrom::Auto => {
                match read_iptables_kernel(v6, family, only, &mut reading.warnings) {
                    Ok(best) => {
                        any_read = true;
                        Some(best)
                    }
                    Err(source) if from == RulesFrom::Kernel => {
                        return Err(ReadError::Kernel {
                            what: format!("the iptables tables {ip} filter and {ip} nat (iptables-nft or -legacy)"),
                            source,
                        });
                    }
                    Err(e) => {
                        reading.warnings.push(format!(
                            "the {ip} iptables rules were not read from the kernel ({e}); read with `{}` instead",
                            tools[2]
                        ));
                        read_iptables_tools(tools, &mut reading, &mut any_read)?
                    }
                }
            }
        };
        if let Some((source, parsed)) = best {
            if parsed.rules_present {
                reading.rules_present = true;
                if parsed.mode_hint == Some(ProxyMode::Ipvs) {
                    reading.mode = ProxyMode::Ipvs;
                }
            }
            if parsed.rules_present || reading.sources.is_empty() {
                reading.sources.push(source);
            }
            reading.services = merge_services(std::mem::take(&mut reading.services), parsed.services);
            reading.warnings.extend(parsed.warnings);
            reading.node_port_ips.extend(parsed.node_port_ips);
        }
    }
    if !any_read {
        return Err(ReadError::CommandMissing {
            command: "iptables-save".to_string(),
            package: "iptables",
            mode: "iptables",
        });
    }
    // IPVS mode's iptables rules hold no Service: they are not "iptables mode rules".
    if reading.mode == ProxyMode::Ipvs {
        reading.rules_present = false;
        reading.mode = ProxyMode::Iptables;
    }
    Ok(reading)
}

/// One family's iptables rules from the kernel, as the source it names and what it holds.
///
/// Which backend holds kube-proxy's chains is detected, not assumed, as the save tools do it:
/// iptables-nft's chains are read over nf_tables netlink; when legacy x_tables tables exist
/// (listed in `/proc/thread-self/net/ip_tables_names`) their blobs are read too
/// ([`iptables::legacy`]), and the backend holding more of kube-proxy's rules wins, with a
/// warning when both hold some.
fn read_iptables_kernel(
    v6: bool,
    family: u8,
    only: Option<&ServiceRef>,
    warnings: &mut Vec<String>,
) -> Result<(String, iptables::Parsed), nftables::netlink::Error> {
    let ip = if v6 { "ip6" } else { "ip" };
    let source = format!("nf_tables netlink ({ip} filter, {ip} nat)");
    let nft = match iptables::netlink::read(family, &source, only) {
        Ok(p) => (source, p),
        Err(e) => return Err(e),
    };
    let legacy = crate::kernel::xtables::legacy_tables(v6);
    if !legacy.iter().any(|t| t == "filter" || t == "nat") {
        return Ok(nft);
    }
    let source = format!("x_tables getsockopt ({ip} filter, {ip} nat)");
    let old = (source.clone(), iptables::legacy::read(v6, &legacy, &source, only)?);
    if nft.1.rules_present && old.1.rules_present {
        warnings.push(format!(
            "kube-proxy chains exist in both {} and {}; using the one with more rules",
            nft.0, old.0
        ));
    }
    // A Service-scoped reading holds that Service's part alone, so its rule count says nothing of
    // the whole table: the backend that holds the Service wins, the rule count only between two
    // that both do (or neither).
    let holds = |p: &iptables::Parsed| !p.services.is_empty();
    let legacy_wins = match (holds(&old.1), holds(&nft.1)) {
        (true, false) => true,
        (false, true) => false,
        _ => kube_rule_weight(&old.1) > kube_rule_weight(&nft.1),
    };
    Ok(if legacy_wins { old } else { nft })
}

/// One family's `iptables-save` tools: the nft and legacy backends (`iptables-save` itself only
/// when neither is installed); the one holding more of kube-proxy's rules wins. `any_ran` is set
/// when a tool ran.
fn read_iptables_tools(
    family: [&str; 3],
    reading: &mut ModeReading,
    any_ran: &mut bool,
) -> Result<Option<(String, iptables::Parsed)>, ReadError> {
    let mut best: Option<(String, iptables::Parsed)> = None;
    let mut ran_specific = false;
    for cmd in family {
        // `iptables-save` is one of the two backends; read it only when neither ran.
        let generic = !cmd.contains("-nft-") && !cmd.contains("-legacy-");
        if generic && ran_specific {
            continue;
        }
        let text = match run(cmd, &[], "iptables", "iptables") {
            Ok(t) => t,
            Err(ReadError::CommandMissing { .. }) => continue,
            Err(e) => {
                reading.warnings.push(error_chain(&e));
                continue;
            }
        };
        *any_ran = true;
        ran_specific |= !generic;
        let parsed = iptables::parse_named(&text, cmd).map_err(|source| ReadError::Iptables {
            command: cmd.to_string(),
            source,
        })?;
        let better = match &best {
            None => true,
            Some((_, b)) => kube_rule_weight(&parsed) > kube_rule_weight(b),
        };
        if let Some((prev, b)) = &best
            && parsed.rules_present
            && b.rules_present
        {
            reading.warnings.push(format!(
                "kube-proxy chains exist in both {prev} and {cmd} output; using the one with more rules"
            ));
        }
        if better {
            best = Some((cmd.to_string(), parsed));
        }
    }
    Ok(best)
}

/// How much of kube-proxy a dump holds: rules when its chains are there, else nothing.
fn kube_rule_weight(p: &iptables::Parsed) -> usize {
    if p.rules_present { 1 + p.rule_count } else { 0 }
}

/// One mode's reader, as `read_node` tries them in turn.
type ModeReader<'a> = dyn Fn() -> Result<ModeReading, ReadError> + 'a;

/// Where iptables- and nftables-mode rules are read from (`--rules-from`), chosen once by the
/// caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RulesFrom {
    /// The kernel over netlink where the decoder knows everything it meets, else the text tool
    /// (`iptables-save`, `nft`), with a warning saying why.
    #[default]
    Auto,
    /// The kernel only: what the decoder does not know is an error.
    Kernel,
    /// The text tools only (`iptables-save`, `nft -j list table …`), as before the kernel readers.
    Tools,
}

/// nftables mode: `table ip kube-proxy` and `ip6`, from the kernel over netlink or from `nft -j
/// list table …` as `from` says (the kernel reader reads only `only`'s part of the table when
/// given). A missing table is "no rules", not an error.
pub fn read_nftables_mode(from: RulesFrom, only: Option<&ServiceRef>) -> Result<ModeReading, ReadError> {
    let mut reading = ModeReading {
        mode: ProxyMode::Nftables,
        ..Default::default()
    };
    for (family, kernel_family) in [
        ("ip", crate::kernel::nftables::FAMILY_IP),
        ("ip6", crate::kernel::nftables::FAMILY_IP6),
    ] {
        let parsed = match from {
            RulesFrom::Tools => read_nft_tool(family, &mut reading)?,
            RulesFrom::Kernel | RulesFrom::Auto => {
                let shown = format!("nf_tables netlink (table {family} kube-proxy)");
                match nftables::netlink::read(kernel_family, &shown, only) {
                    Ok(p) => {
                        if p.rules_present {
                            reading.sources.push(shown);
                        }
                        Some(p)
                    }
                    Err(source) if from == RulesFrom::Kernel => {
                        return Err(ReadError::Kernel {
                            what: format!("table {family} kube-proxy"),
                            source,
                        });
                    }
                    Err(e) => {
                        reading.warnings.push(format!(
                            "table {family} kube-proxy was not read from the kernel ({e}); read with `nft -j` instead"
                        ));
                        read_nft_tool(family, &mut reading)?
                    }
                }
            }
        };
        let Some(parsed) = parsed else { continue };
        reading.rules_present |= parsed.rules_present;
        reading.services = merge_services(std::mem::take(&mut reading.services), parsed.services);
        reading.warnings.extend(parsed.warnings);
        reading.node_port_ips.extend(parsed.node_port_ips);
        reading.unallocated_drops.extend(parsed.unallocated_drop);
    }
    Ok(reading)
}

/// `nft -j list table <family> kube-proxy`, parsed; `None` when the table does not exist (or,
/// for ip6, when nft fails: a warning).
fn read_nft_tool(family: &str, reading: &mut ModeReading) -> Result<Option<nftables::Parsed>, ReadError> {
    let args = ["-j", "list", "table", family, "kube-proxy"];
    let shown = format!("nft {}", args.join(" "));
    let text = match run("nft", &args, "nftables", "nftables") {
        Ok(t) => t,
        Err(ReadError::CommandFailed { stderr, .. }) if stderr.contains("No such file or directory") => {
            return Ok(None);
        }
        Err(e @ ReadError::CommandMissing { .. }) => return Err(e),
        Err(e) if family == "ip6" => {
            reading.warnings.push(error_chain(&e));
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let parsed = nftables::parse_named(&text, &shown).map_err(|source| ReadError::Nftables {
        command: shown.clone(),
        source,
    })?;
    reading.sources.push(shown);
    Ok(Some(parsed))
}

/// IPVS mode: `ipvsadm -Ln` (or `/proc/net/ip_vs` without ipvsadm). Services come back anonymous.
pub fn read_ipvs_mode() -> Result<ModeReading, ReadError> {
    let mut reading = ModeReading {
        mode: ProxyMode::Ipvs,
        ..Default::default()
    };
    let (text, source) = match run("ipvsadm", &["-Ln"], "ipvsadm", "IPVS") {
        Ok(t) => (t, "ipvsadm -Ln".to_string()),
        Err(e @ ReadError::CommandMissing { .. }) => match std::fs::read_to_string(PROC_NET_IP_VS) {
            Ok(t) => (t, PROC_NET_IP_VS.to_string()),
            Err(_) => return Err(e),
        },
        // No IPVS in this kernel: no IPVS rules.
        Err(ReadError::CommandFailed { stderr, .. }) if stderr.contains("Protocol not available") => {
            return Ok(reading);
        }
        Err(e) => return Err(e),
    };
    let mut parsed = ipvs::parse_named(&text, &source).map_err(|source_err| ReadError::Ipvs {
        command: source.clone(),
        source: source_err,
    })?;
    // kube-ipvs0 and the node's addresses: a virtual server the node does not accept packets for.
    match run("ip", &["-j", "addr", "show"], "iproute2", "IPVS") {
        Ok(json) => match ipvs::parse_ip_addr_json(&json) {
            Ok(local) => reading
                .warnings
                .extend(ipvs::check_addresses(&mut parsed.virtual_servers, &local)),
            Err(e) => reading.warnings.push(format!("`ip -j addr show` output not read: {e}")),
        },
        Err(e) => reading
            .warnings
            .push(format!("addresses not checked: {}", error_chain(&e))),
    }
    reading.warnings.extend(parsed.warnings);
    reading.warnings.extend(ipvs::notes(&parsed.virtual_servers));
    reading.services = ipvs::join(&parsed.virtual_servers, &[]);
    reading.rules_present = !reading.services.is_empty();
    reading.virtual_servers = parsed.virtual_servers;
    reading.sources.push(source);
    Ok(reading)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(mode: ProxyMode, present: bool, n: usize) -> ModeReading {
        ModeReading {
            mode,
            rules_present: present,
            services: (0..n)
                .map(|i| {
                    Service::new(ServiceRef {
                        namespace: "ns".into(),
                        name: format!("s{i}"),
                    })
                })
                .collect(),
            warnings: vec![format!("{mode:?} warning")],
            ..Default::default()
        }
    }

    #[test]
    fn choose_prefers_present_rules_with_most_services() {
        let (r, notes) = choose_reading(vec![
            reading(ProxyMode::Iptables, true, 2),
            reading(ProxyMode::Nftables, true, 5),
            reading(ProxyMode::Ipvs, false, 0),
        ]);
        assert_eq!(r.mode, ProxyMode::Nftables);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("also found Iptables"), "{}", notes[0]);
        let (r, notes) = choose_reading(vec![
            reading(ProxyMode::Iptables, false, 0),
            reading(ProxyMode::Nftables, false, 0),
        ]);
        assert_eq!(r.mode, ProxyMode::Unknown);
        assert!(!r.rules_present && notes.is_empty());
        assert_eq!(r.warnings.len(), 2);
    }

    #[test]
    fn merge_joins_families_by_service() {
        let v4 = iptables::parse(include_str!("../../../testdata/rules/iptables-nft.save"))
            .unwrap()
            .services;
        let n = v4.len();
        let web_fe = v4.iter().find(|s| s.service.name == "web").unwrap().frontends.len();
        // The same reading twice: nothing doubles.
        let merged = merge_services(v4.clone(), v4.clone());
        assert_eq!(merged, v4);
        assert_eq!(merged.len(), n);
        // An IPv6 reading of the same Service adds its frontends and endpoints.
        let mut v6 = v4.iter().find(|s| s.service.name == "web").unwrap().clone();
        for f in &mut v6.frontends {
            if !f.ip.is_unspecified() {
                f.ip = "fd00::10".parse().unwrap();
            }
        }
        for e in &mut v6.endpoints {
            e.ip = "fd00::20".parse().unwrap();
            e.local = Some(true);
        }
        let merged = merge_services(v4, vec![v6]);
        let web = merged.iter().find(|s| s.service.name == "web").unwrap();
        // ClusterIP and external IP on fd00::10 (one address, one port: one frontend); the NodePort at
        // 0.0.0.0 is the same frontend on both sides.
        assert_eq!(web.frontends.len(), web_fe + 1);
        assert_eq!(web.endpoints.len(), 4);
        assert_eq!(web.endpoints[3].local, Some(true));
    }

    #[test]
    fn fast_hasher_tells_similar_names_apart() {
        use std::hash::{BuildHasher, BuildHasherDefault};
        let b = BuildHasherDefault::<FastHasher>::default();
        let mut seen = std::collections::HashSet::new();
        for i in 0..10_000 {
            for name in [
                format!("KUBE-SEP-{i:016}"),
                format!("KUBE-SEP-{i:016}x"),
                format!("{i}"),
            ] {
                assert!(seen.insert(b.hash_one(&name)), "collision on {name}");
            }
        }
        let mut m: FastMap<String, usize> = FastMap::default();
        m.insert("a".into(), 1);
        assert_eq!(m.get("a"), Some(&1));
        assert_eq!(m.get(""), None);
    }

    #[test]
    fn missing_command_names_the_package() {
        let err = run("d8-trace-no-such-tool", &[], "iptables", "iptables").unwrap_err();
        assert!(matches!(err, ReadError::CommandMissing { .. }));
        assert_eq!(
            err.to_string(),
            "`d8-trace-no-such-tool` is not installed: install the `iptables` package to read kube-proxy's iptables rules"
        );
        let err = run("false", &[], "coreutils", "test").unwrap_err();
        assert!(matches!(err, ReadError::CommandFailed { .. }), "{err}");
    }
}
