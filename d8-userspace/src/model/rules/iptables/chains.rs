//! What both kernel readers of iptables mode share once a rule is decoded: which chains to read
//! (all of kube-proxy's, or one Service's part), the tables they build, and their rendering as
//! the text `iptables-save` prints, which the text reader's stages turn into the model.
//!
//! The readers differ only in where a chain's rules come from: nf_tables netlink, one dump per
//! chain, for iptables-nft (`netlink.rs`); the x_tables blob for iptables-legacy (`legacy.rs`).

use super::comment::parse_comment;
use crate::model::ServiceRef;
use crate::model::rules::FastMap;
use crate::model::rules::nftables::expr::R;

/// The tables kube-proxy writes in iptables mode, in the order `iptables-save` prints them, with
/// their built-in chains in hook order. iptables-nft creates a built-in chain only when a rule
/// needs it, and `iptables-save` lists each anyway (with policy ACCEPT when it does not exist).
pub(super) const TABLES: [&str; 2] = ["filter", "nat"];
pub(super) const BUILTIN: [&[&str]; 2] = [
    &["INPUT", "FORWARD", "OUTPUT"],
    &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
];

/// The chains read, as `iptables-save` text, and the kernel's name for the rule on each line
/// (an nf_tables handle, a legacy rule's number in its chain; 0 for other lines).
#[derive(Debug, Default)]
pub(super) struct Rendered {
    pub(super) text: String,
    pub(super) handles: Vec<u64>,
}

/// A chain's name and, for a base chain, its hook number and policy.
pub(super) type ChainInfo = (String, Option<(u32, &'static str)>);

/// One table's chains and the rules read from it.
#[derive(Debug, Default)]
pub(super) struct Table {
    pub(super) name: &'static str,
    pub(super) chains: Vec<ChainInfo>,
    /// Per chain: the rendered lines and their handles, in the kernel's order.
    pub(super) rules: FastMap<String, (String, Vec<u64>)>,
}

impl Table {
    pub(super) fn add(&mut self, rules: Vec<ReadRule>) {
        for x in rules {
            let (text, handles) = self.rules.entry(x.chain).or_default();
            text.push_str(&x.line);
            handles.push(x.handle);
        }
    }

    /// Gives back the spare capacity of each chain's text and handles: a text grows by doubling,
    /// and at 10,000 Services there are 60,000 chains of a rule or two.
    fn shrink(&mut self) {
        for (text, handles) in self.rules.values_mut() {
            text.shrink_to_fit();
            handles.shrink_to_fit();
        }
    }
}

/// A rule read: its chain, handle, `-A` line, comment and the chain it jumps or goes to.
#[derive(Debug)]
pub(super) struct ReadRule {
    pub(super) chain: String,
    pub(super) handle: u64,
    pub(super) line: String,
    pub(super) comment: Option<String>,
    pub(super) target: Option<String>,
}

/// Reads the rules of `t`'s chains with `read_chain` (which appends a chain's rules of interest
/// to its second argument) into `t`.
///
/// `only`: as if kube-proxy's chains held this Service alone (`explain`, a trace): its rules in
/// kube-proxy's shared chains (`KUBE-SERVICES`, `KUBE-NODEPORTS`, ...), which every Service's
/// first rules are in, then its own chains (`KUBE-SVC-`, `-SVL-`, `-EXT-`, `-FW-` of its ports,
/// found by the shared rules that name it) and their `KUBE-SEP-` chains: a few thousand rules
/// instead of 170,000 at 10,000 Services. Only the chains read stay declared in `t`.
pub(super) fn read_rules<E>(
    t: &mut Table,
    only: Option<&ServiceRef>,
    mut read_chain: impl FnMut(&str, &mut Vec<ReadRule>) -> Result<(), E>,
) -> Result<(), E> {
    let Some(only) = only else {
        // Chain by chain into the table: a read rule (its line, comment and target apart) is
        // several times its line in the table's text, and a whole table of them (170,000 rules at
        // 10,000 Services) was the largest thing the read held.
        let names: Vec<String> = t.chains.iter().map(|(n, _)| n.clone()).collect();
        let mut rules = Vec::new();
        for chain in &names {
            read_chain(chain, &mut rules)?;
            t.add(std::mem::take(&mut rules));
        }
        t.shrink();
        return Ok(());
    };
    // The shared chains, then the Service's own chains their rules naming it jump to, then the
    // endpoint chains those jump to.
    let (own, shared): (Vec<String>, Vec<String>) = t
        .chains
        .iter()
        .map(|(n, _)| n.clone())
        .partition(|n| hash_suffix(n).is_some());
    let mut rules = Vec::new();
    for chain in &shared {
        read_chain(chain, &mut rules)?;
    }
    let mut suffixes: Vec<String> = rules
        .iter()
        .filter(|x| names_service(x.comment.as_deref(), only) == Some(true))
        .filter_map(|x| x.target.as_deref().and_then(hash_suffix))
        .map(str::to_string)
        .collect();
    suffixes.sort_unstable();
    suffixes.dedup();
    let known = |s: &str| suffixes.binary_search_by(|x| x.as_str().cmp(s)).is_ok();
    rules.retain(|x| {
        names_service(x.comment.as_deref(), only) != Some(false)
            && x.target.as_deref().and_then(hash_suffix).is_none_or(known)
    });
    let service_chains: Vec<String> = own
        .iter()
        .filter(|n| !n.starts_with("KUBE-SEP-") && hash_suffix(n).is_some_and(known))
        .cloned()
        .collect();
    let mut mine = Vec::new();
    for chain in &service_chains {
        read_chain(chain, &mut mine)?;
    }
    let mut seps: Vec<String> = mine
        .iter()
        .filter_map(|x| x.target.clone())
        .filter(|c| c.starts_with("KUBE-SEP-") && own.contains(c))
        .collect();
    seps.sort_unstable();
    seps.dedup();
    for chain in &seps {
        read_chain(chain, &mut mine)?;
    }
    let mut read: Vec<String> = shared;
    read.extend(service_chains);
    read.extend(seps);
    // Only the chains read are declared: the others are other Services'.
    t.chains.retain(|(n, _)| read.contains(n));
    rules.extend(mine);
    t.add(rules);
    t.shrink();
    Ok(())
}

/// The hash suffix of a per-Service chain (`KUBE-SVC-`, `-SVL-`, `-EXT-`, `-FW-`, `-SEP-`).
fn hash_suffix(chain: &str) -> Option<&str> {
    ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-"]
        .iter()
        .find_map(|p| chain.strip_prefix(p))
}

/// Whether a kube-proxy comment names `svc` (`None`: it names no Service).
fn names_service(comment: Option<&str>, svc: &ServiceRef) -> Option<bool> {
    let (port_name, _) = parse_comment(comment?)?;
    let name = port_name.split(':').next().unwrap_or(port_name);
    let (ns, n) = name.split_once('/')?;
    Some(ns == svc.namespace && n == svc.name)
}

/// The tables as `iptables-save` prints them: built-in chains in hook order, then the others by
/// name, each chain's rules in order. Each chain's text is dropped once copied, so the tables and
/// their rendering are not both held whole.
pub(super) fn render(tables: Vec<Table>) -> R<Rendered> {
    let mut out = Rendered::default();
    let mut line = 0usize;
    let mut push = |out: &mut Rendered, text: &str, handle: u64| {
        out.text.push_str(text);
        line += 1;
        if out.handles.len() <= line {
            out.handles.resize(line + 1, 0);
        }
        out.handles[line] = handle;
    };
    for mut t in tables {
        let builtin = TABLES.iter().position(|n| *n == t.name).map_or(&[][..], |i| BUILTIN[i]);
        let policy = |name: &str| {
            t.chains
                .iter()
                .find(|(n, _)| n == name)
                .and_then(|(_, h)| h.map(|h| h.1))
                .unwrap_or("ACCEPT")
        };
        let mut chains: Vec<(String, &str)> = builtin.iter().map(|&n| (n.to_string(), policy(n))).collect();
        let mut others: Vec<(String, &str)> = std::mem::take(&mut t.chains)
            .into_iter()
            .filter(|(n, _)| !builtin.contains(&n.as_str()))
            .map(|(n, h)| (n, h.map_or("-", |h| h.1)))
            .collect();
        others.sort_unstable();
        // A chain listed twice (a recorded read may hold two chain dumps) is one chain.
        others.dedup_by(|a, b| a.0 == b.0);
        chains.extend(others);
        push(&mut out, &format!("*{}\n", t.name), 0);
        for (name, policy) in &chains {
            push(&mut out, &format!(":{name} {policy} [0:0]\n"), 0);
        }
        for (name, _) in &chains {
            let Some((text, handles)) = t.rules.remove(name) else {
                continue;
            };
            for (l, h) in text.split_inclusive('\n').zip(&handles) {
                push(&mut out, l, *h);
            }
        }
        push(&mut out, "COMMIT\n", 0);
    }
    Ok(out)
}
