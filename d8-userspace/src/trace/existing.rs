//! TCP connections already open when the netfilter hook set is attached.
//!
//! Once conntrack has seen a TCP flow answered, `nf_post` looks its state up only at segments
//! that carry SYN, FIN or RST (`mid_flow_segment` in `d8-ebpf/src/netfilter.rs`): the lookup of
//! every other segment was most of what a traced connection cost in the kernel (issue 18). A
//! connection opened before the trace sends few such segments, so the programs would take it up
//! only when it ends, and drops of its packets before that would find no flow. Its conntrack
//! entry is read instead, once, when the programs are attached (and for each target added
//! later), and the flow put into `FLOWS` with what the entry says was already seen: its
//! conntrack record and, when conntrack has seen a reply, its answer. Those two records wait
//! here and go to the flow table with the flow's first record from the programs (a FIN, a reset,
//! a drop, a socket state), never alone: a connection the trace sees nothing of is no flow of it,
//! as on the TC hook set (`CtJoin::programs_attached`).
//!
//! UDP and the other protocols are left to the programs, which look every packet up and take a
//! flow up at its first packet (a client still sending to a backend that is gone, through an old
//! conntrack entry, is what such a trace is for); so are TCP entries that have ended (`TIME_WAIT`,
//! `CLOSE`), whose tuple a new connection may reuse.

use std::collections::{HashMap, HashSet};

use d8_common::{TargetKey, seen};

use super::ctjoin::{conntrack_record, target_of};
use crate::{
    events::{Event, Kind, Tuple},
    kernel::ctnetlink::{self, CtEvent},
    loader::{
        Tracer,
        alias::{self, Seed},
    },
};

/// At most this many connections wait for their first record; beyond, the oldest are no longer
/// joined to their conntrack records (their later records still make a flow).
const MAX_WAITING: usize = 200_000;

const IPPROTO_TCP: u8 = 6;
const TCP_ACK: u8 = 0x10;

/// The flows put into `FLOWS` from the conntrack table, waiting for their first record.
#[derive(Debug, Default)]
pub struct Existing {
    /// By ORIGINAL tuple: the flow's conntrack record, and its answer when it had one.
    waiting: HashMap<Tuple, Vec<Event>>,
    /// Targets whose entries were read.
    read: HashSet<TargetKey>,
}

impl Existing {
    /// Reads the conntrack table of the current network namespace for the entries of `targets`
    /// not read before, and puts their connections into the kernel's `FLOWS`. Returns how many
    /// went in. Call after the programs are attached (a connection that begins meanwhile is the
    /// programs': the kernel keeps theirs) and before the first drain.
    pub fn read(
        &mut self,
        tracer: &mut Tracer,
        targets: &[(TargetKey, u32)],
        node_ips: &[std::net::IpAddr],
    ) -> std::io::Result<usize> {
        let new: HashSet<TargetKey> = targets
            .iter()
            .map(|(k, _)| *k)
            .filter(|k| !self.read.contains(k))
            .collect();
        if new.is_empty() {
            return Ok(0);
        }
        let entries = ctnetlink::dump(|ct| new.contains(&target_of(ct)) && seed_of(ct).is_some())?;
        self.read.extend(new);
        let seeds: Vec<Seed> = entries.iter().filter_map(seed_of).collect();
        let placed = alias::seed(tracer, &seeds).map_err(std::io::Error::other)?;
        let mut n = 0;
        for (ct, placed) in entries.iter().zip(placed) {
            if placed && let Some(records) = records_of(ct, node_ips) {
                if self.waiting.len() >= MAX_WAITING {
                    self.waiting.clear();
                }
                self.waiting.insert(records[0].flow, records);
                n += 1;
            }
        }
        Ok(n)
    }

    /// The records waiting for `first`'s flow, to go to the flow table before `first`; none when
    /// `first` begins a new connection on the same tuple (a SYN after the old one ended). Asked
    /// for every record of the trace: nothing is hashed once no connection waits.
    pub fn take_for(&mut self, first: &Event) -> Option<Vec<Event>> {
        if self.waiting.is_empty() {
            return None;
        }
        let records = self.waiting.remove(&first.flow)?;
        (first.kind != Kind::New).then_some(records)
    }
}

/// The flow an entry puts into `FLOWS`: an open TCP connection, with its conntrack record
/// (after SNAT: the table holds the final tuples) and its answer, if conntrack saw one, counted
/// as reported.
fn seed_of(ct: &CtEvent) -> Option<Seed> {
    if ct.orig.proto != IPPROTO_TCP
        || matches!(
            ct.tcp_state,
            Some(ctnetlink::TCP_CONNTRACK_TIME_WAIT | ctnetlink::TCP_CONNTRACK_CLOSE)
        )
    {
        return None;
    }
    let answered = ct.status & ctnetlink::IPS_SEEN_REPLY != 0;
    Some(Seed {
        orig: ct.orig,
        post_nat: ct.post_nat(),
        seen: seen::CT | seen::CT_FINAL | if answered { seen::REPLY } else { 0 },
    })
}

/// The records [`seed_of`]'s `seen` bits stand for, as the programs would have sent them.
fn records_of(ct: &CtEvent, node_ips: &[std::net::IpAddr]) -> Option<Vec<Event>> {
    let (orig, reply) = (
        crate::events::tuple(&ct.orig).ok()?,
        crate::events::tuple(&ct.reply).ok()?,
    );
    let record = conntrack_record(ct, orig, reply, node_ips);
    let mut records = vec![record.clone()];
    if ct.status & ctnetlink::IPS_SEEN_REPLY != 0 {
        records.push(Event {
            reply_direction: Some(true),
            tcp_flags: TCP_ACK,
            kind: Kind::Reply { from: reply.src },
            ..record
        });
    }
    Some(records)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::ctnetlink::{parse_datagram, tests::ct_dump_message};

    const CLIENT: [u8; 4] = [10, 244, 0, 2];
    const VIP: [u8; 4] = [10, 96, 0, 10];
    const POD: [u8; 4] = [10, 244, 1, 11];

    fn dumped(status: u32, tcp_state: u8) -> CtEvent {
        parse_datagram(&ct_dump_message(
            (CLIENT, 40000, VIP, 80),
            (POD, 8080, CLIENT, 40000),
            status,
            tcp_state,
        ))[0]
    }

    #[test]
    fn an_open_answered_connection_is_seeded_with_its_record_and_answer() {
        let ct = dumped(ctnetlink::IPS_SEEN_REPLY | 0x8, 3);
        let seed = seed_of(&ct).expect("an established connection is seeded");
        assert_eq!(seed.seen, seen::CT | seen::CT_FINAL | seen::REPLY);
        assert_eq!(seed.post_nat, ct.post_nat());
        let records = records_of(&ct, &[]).unwrap();
        assert_eq!(records.len(), 2);
        assert!(matches!(records[0].kind, Kind::Conntrack { reply, after_snat: true, .. } if reply.src.port() == 8080));
        assert!(matches!(records[1].kind, Kind::Reply { from } if from.port() == 8080));
        assert_eq!(records[1].reply_direction, Some(true));
    }

    #[test]
    fn an_unanswered_connection_is_seeded_without_an_answer() {
        let ct = dumped(0x8, 1);
        assert_eq!(seed_of(&ct).unwrap().seen, seen::CT | seen::CT_FINAL);
        assert_eq!(records_of(&ct, &[]).unwrap().len(), 1);
    }

    #[test]
    fn ended_connections_are_left_to_the_programs() {
        for state in [ctnetlink::TCP_CONNTRACK_TIME_WAIT, ctnetlink::TCP_CONNTRACK_CLOSE] {
            assert!(seed_of(&dumped(ctnetlink::IPS_SEEN_REPLY, state)).is_none(), "{state}");
        }
    }

    #[test]
    fn waiting_records_go_with_the_first_record_once_and_not_before_a_new_connection() {
        let ct = dumped(ctnetlink::IPS_SEEN_REPLY, 3);
        let records = records_of(&ct, &[]).unwrap();
        let flow = records[0].flow;
        let mut existing = Existing::default();
        let template = records[0].clone();
        let first = |kind| Event {
            kind,
            ..template.clone()
        };
        existing.waiting.insert(flow, records.clone());
        let fin = first(Kind::Fin { from: flow.src });
        assert_eq!(existing.take_for(&fin).map(|r| r.len()), Some(2));
        assert_eq!(existing.take_for(&fin), None, "given once");
        existing.waiting.insert(flow, records);
        assert_eq!(
            existing.take_for(&first(Kind::New)),
            None,
            "a new connection on the tuple"
        );
        assert!(existing.waiting.is_empty());
    }
}
