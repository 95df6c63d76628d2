//! `--pcap`: the packets of traced flows, held in memory until their flows are judged. Bounded:
//! at most [`MAX_FLOWS`] flows × [`MAX_PACKETS_PER_FLOW`] packets × the snap length (16 MiB at
//! the default 128 bytes, plus about 100 bytes of bookkeeping per packet); beyond it the oldest
//! flow's packets go (counted), and a flow keeps its first packets (the kernel copies no more
//! than that many per flow either).

use std::collections::{HashMap, VecDeque};

use crate::{
    events::{PacketCopy, Tuple},
    flows::Flow,
};

/// Flows whose packets are held at once.
pub const MAX_FLOWS: usize = 4096;
/// Packets held per flow: the kernel's own limit per flow.
pub const MAX_PACKETS_PER_FLOW: usize = d8_common::pcap::MAX_PACKETS_PER_FLOW as usize;

/// Packets by flow (the ORIGINAL tuple), oldest flow first.
#[derive(Debug, Default)]
pub struct PacketStore {
    by_flow: HashMap<Tuple, Vec<PacketCopy>>,
    order: VecDeque<Tuple>,
    /// Flows whose packets were dropped to keep the bound.
    pub evicted_flows: u64,
    /// Packets beyond a flow's limit.
    pub dropped_packets: u64,
    /// TC interfaces' names by index, read when their first packet came (a pod's veth may be
    /// gone by the time the file is written).
    pub ifnames: HashMap<u32, String>,
}

impl PacketStore {
    pub fn push(&mut self, p: PacketCopy) {
        if let crate::events::Site::Tc { ifindex, .. } = p.site {
            self.ifnames.entry(ifindex).or_insert_with(|| {
                crate::kernel::rtnetlink::interface_name(ifindex).unwrap_or_else(|| format!("if{ifindex}"))
            });
        }
        if !self.by_flow.contains_key(&p.flow) {
            if self.by_flow.len() >= MAX_FLOWS
                && let Some(old) = self.order.pop_front()
            {
                self.by_flow.remove(&old);
                self.evicted_flows += 1;
            }
            self.order.push_back(p.flow);
        }
        let packets = self.by_flow.entry(p.flow).or_default();
        if packets.len() >= MAX_PACKETS_PER_FLOW {
            self.dropped_packets += 1;
            return;
        }
        packets.push(p);
    }

    /// The packets of `flow`, among `flows` (all of the trace): those of its tuple copied from
    /// its start on, until the next flow that reused the tuple began. A packet copied a moment
    /// before its flow's first event (the copy is taken first) belongs to it.
    pub fn packets_of(&self, flow: &Flow, flows: &[Flow]) -> Vec<PacketCopy> {
        let Some(all) = self.by_flow.get(&flow.tuple()) else {
            return Vec::new();
        };
        const SLACK_NS: u64 = 1_000_000;
        let tuple = flow.tuple();
        let next = flows
            .iter()
            .filter(|f| f.id != flow.id && f.first_ns > flow.first_ns && f.tuple() == tuple)
            .map(|f| f.first_ns)
            .min()
            .unwrap_or(u64::MAX);
        all.iter()
            .filter(|p| p.ts_ns + SLACK_NS >= flow.first_ns && p.ts_ns + SLACK_NS < next)
            .cloned()
            .collect()
    }

    /// Drops the packets of `tuple` (its flow was judged healthy, or written).
    pub fn forget(&mut self, tuple: &Tuple) {
        if self.by_flow.remove(tuple).is_some() {
            self.order.retain(|t| t != tuple);
        }
    }

    /// Warnings about what the bound cost.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.evicted_flows > 0 {
            w.push(format!(
                "pcap: the packets of {} flow(s) were dropped from memory (at most {MAX_FLOWS} flows are held)",
                self.evicted_flows
            ));
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::events::Site;

    fn copy(flow: Tuple, ts_ns: u64) -> PacketCopy {
        PacketCopy {
            ts_ns,
            flow,
            site: Site::PostDnat,
            hook: None,
            reply: false,
            drop_reason: 0,
            orig_len: 20,
            data: vec![0x45; 20],
        }
    }

    fn tuple(port: u16) -> Tuple {
        Tuple {
            proto: 6,
            src: SocketAddr::from(([10, 244, 1, 5], port)),
            dst: SocketAddr::from(([10, 96, 0, 10], 80)),
        }
    }

    /// The bound holds: a flow keeps its first packets, and beyond the flow limit the oldest
    /// flow's packets go, counted.
    #[test]
    fn the_store_keeps_its_bound() {
        let mut s = PacketStore::default();
        for i in 0..MAX_PACKETS_PER_FLOW as u64 + 5 {
            s.push(copy(tuple(1), i));
        }
        assert_eq!(s.by_flow[&tuple(1)].len(), MAX_PACKETS_PER_FLOW);
        assert_eq!(s.dropped_packets, 5);
        for port in 2..=MAX_FLOWS as u16 + 1 {
            s.push(copy(tuple(port), 0));
        }
        assert_eq!(s.by_flow.len(), MAX_FLOWS);
        assert!(!s.by_flow.contains_key(&tuple(1)), "the oldest flow went first");
        assert_eq!(s.evicted_flows, 1);
        s.forget(&tuple(2));
        assert_eq!(s.by_flow.len(), MAX_FLOWS - 1);
        assert_eq!(s.order.len(), MAX_FLOWS - 1);
    }
}
