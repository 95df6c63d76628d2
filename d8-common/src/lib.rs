//! Types shared by d8-trace's kernel programs (`d8-ebpf`) and its userspace (`d8-userspace`).
//!
//! Everything here is `#[repr(C)]`, `Copy` and free of padding the compiler could fill with
//! garbage: the kernel writes these bytes and userspace reads them back. Keep in sync with the
//! readers in `d8-userspace/src/events.rs` and the writers in `d8-ebpf/src/`.
//!
//! Addresses are 16-byte arrays so IPv6 can follow without changing any layout: an IPv4 address
//! occupies the first 4 bytes and `family` says which it is. Ports are in network byte order, as
//! they sit in packets and conntrack tuples.
#![no_std]

/// `family` value of an IPv4 key.
pub const FAMILY_V4: u8 = 4;
/// `family` value of an IPv6 key.
pub const FAMILY_V6: u8 = 6;

/// One direction of a flow: source, destination, protocol. 40 bytes.
///
/// In the flow table the key is conntrack's ORIGINAL tuple: the client and the destination it
/// asked for (a Service frontend, or a backend reached directly).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address (IPv4 in the first 4 bytes, the rest zero).
    pub saddr: [u8; 16],
    /// Destination address.
    pub daddr: [u8; 16],
    /// Source port, network byte order (0 for ICMP).
    pub sport: u16,
    /// Destination port, network byte order.
    pub dport: u16,
    /// IP protocol number (`IPPROTO_TCP` = 6, `IPPROTO_UDP` = 17, ...).
    pub proto: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Always zero: part of the hash-map key.
    pub pad: [u8; 2],
}

/// A traced destination: a Service frontend or one of its backends. 20 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TargetKey {
    pub addr: [u8; 16],
    /// Network byte order.
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// Value of the targets map: what a [`TargetKey`] is.
pub mod target {
    /// A Service frontend (ClusterIP, NodePort, external or load-balancer IP and port).
    pub const FRONTEND: u32 = 1;
    /// A backend of a traced Service: flows straight to it (kubelet probes) are traced too.
    pub const BACKEND: u32 = 2;
}

/// A bitmap over (destination address, port, protocol) in front of the `TARGETS` hash map: the
/// netfilter programs see every packet of the node, nearly all of them untraced, and one inlined
/// array load is much cheaper than hashing a 20-byte key. A clear bit means "not a target"; a set
/// bit only means "look in `TARGETS`" (collisions cost a lookup, never a missed flow).
pub mod target_filter {
    /// `u64` words in the `TARGET_FILTER` array map (65,536 bits, 8 KiB).
    pub const WORDS: u32 = 1024;

    /// The bit of a destination, 0..WORDS*64. `port` in network byte order, as in `TargetKey`.
    #[inline(always)]
    pub fn bit(addr: &[u8; 16], port: u16, proto: u8) -> u32 {
        let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
        bit_words([word(0), word(4), word(8), word(12)], port, proto)
    }

    /// [`bit`] of the address as its four native-order words: the netfilter programs load them
    /// with one 4-byte load each from the packet or the conntrack entry, where the bytes of a
    /// stack copy are loaded one by one (a `[u8; 16]` is not known to be 4-aligned).
    #[inline(always)]
    pub fn bit_words(w: [u32; 4], port: u16, proto: u8) -> u32 {
        finish(
            w[0] ^ w[1].rotate_left(7) ^ w[2].rotate_left(13) ^ w[3].rotate_left(19),
            port,
            proto,
        )
    }

    /// [`bit`] of an IPv4 address (the first four bytes of a 16-byte one, the rest zero), from
    /// the four bytes alone: the netfilter programs decide an IPv4 packet from its header
    /// before building a 16-byte key. The zero words rotate to zero, so the bit is the same.
    #[inline(always)]
    pub fn bit_v4(addr: [u8; 4], port: u16, proto: u8) -> u32 {
        finish(u32::from_ne_bytes(addr), port, proto)
    }

    #[inline(always)]
    fn finish(mut h: u32, port: u16, proto: u8) -> u32 {
        h ^= ((port as u32) << 8) ^ proto as u32;
        // Fibonacci hashing: the top 16 bits of the product mix every input bit.
        h.wrapping_mul(0x9E37_79B1) >> 16
    }
}

/// Destinations (address, port, protocol) that a key of `FLOWS` or `NAT_ALIAS` has ever had: the
/// drop tracepoint fires for every freed packet of the node and leaves at a clear entry before any
/// hash lookup. Unlike `TARGET_FILTER` (kept exact for the current targets by userspace), it holds
/// every key's destination, a backend that is no target included (a post-NAT alias), and is never
/// cleared: a stale entry costs the lookups, a missing one would lose a drop. One byte per entry,
/// not a bit: the kernel programs and userspace set entries concurrently, and a byte store needs
/// no read-modify-write that could undo another writer's.
pub mod flow_filter {
    /// Entries of the `FLOW_FILTER` array map, indexed by [`super::target_filter::bit`].
    pub const ENTRIES: u32 = super::target_filter::WORDS * 64;
}

/// Per-flow state kept in the kernel's LRU map so that events are sent only on changes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowState {
    /// `seen::*` bits already reported.
    pub seen: u32,
    /// Last drop reason reported (to report each distinct reason once).
    pub last_drop_reason: u32,
    /// Packets of the flow copied for `--pcap` (at most [`pcap::MAX_PACKETS_PER_FLOW`]).
    pub captured: u32,
    /// With [`seen::CT_UNTRANSLATED`]: the source (the backend) and its port, network byte
    /// order, of the REPLY tuple the CT record after DNAT carried; `nf_post` sends no second CT
    /// record at POSTROUTING when the tuple there is the same (SNAT changed nothing).
    pub ct_reply_src: [u8; 16],
    pub ct_reply_sport: u16,
    pub pad: [u8; 2],
}

/// Bits of [`FlowState::seen`].
pub mod seen {
    pub const NEW: u32 = 1 << 0;
    pub const CT: u32 = 1 << 1;
    pub const CT_FINAL: u32 = 1 << 2;
    pub const REPLY: u32 = 1 << 3;
    pub const RST_ORIG: u32 = 1 << 4;
    pub const RST_REPLY: u32 = 1 << 5;
    pub const FIN: u32 = 1 << 6;
    pub const RETRANS: u32 = 1 << 7;
    pub const DROP: u32 = 1 << 8;
    pub const ICMP: u32 = 1 << 9;
    pub const SEND_RESET: u32 = 1 << 10;
    pub const RECV_RESET: u32 = 1 << 11;
    /// Unused since no program sends `kind::ESTABLISHED`; kept so the bits keep their values.
    pub const ESTABLISHED: u32 = 1 << 12;
    /// The CT record after DNAT had the client as its REPLY tuple's destination, and
    /// `FlowState::ct_reply_src`/`ct_reply_sport` hold its source.
    pub const CT_UNTRANSLATED: u32 = 1 << 13;
}

/// What an [`Event`] reports.
pub mod kind {
    /// First packet of a flow to a traced target, before conntrack (`Event::key` from the packet).
    pub const NEW: u8 = 1;
    /// The flow's conntrack entry: `key` = ORIGINAL tuple, `reply` = REPLY tuple (its source is the
    /// chosen backend), `ct_status` = `IPS_*` bits. Sent after DNAT and again after SNAT
    /// (`FLAG_FINAL`) when the reply tuple changed.
    pub const CT: u8 = 2;
    /// First reply-direction packet (SYN-ACK, UDP answer, or a RST).
    pub const REPLY: u8 = 3;
    /// A TCP RST on the wire; `ct_dir` says from which side.
    pub const RST: u8 = 4;
    /// A TCP FIN on the wire.
    pub const FIN: u8 = 5;
    /// An ICMP error about the flow; `aux` = sender address, `icmp_type`/`icmp_code`.
    pub const ICMP_ERROR: u8 = 6;
    /// The kernel freed one of the flow's packets: `reason` = `enum skb_drop_reason` value.
    pub const DROP: u8 = 7;
    /// `tcp:tcp_send_reset`: the local stack sent a RST; `aux` = its source address, `aux_port` its
    /// source port.
    pub const SEND_RESET: u8 = 8;
    /// `tcp:tcp_receive_reset`: a local socket received a RST; `aux`/`aux_port` = the socket's address.
    pub const RECV_RESET: u8 = 9;
    /// `sock:inet_sock_set_state` for a socket of the flow: `old_state`/`new_state` (`TCP_*`).
    pub const SOCK_STATE: u8 = 10;
    /// The flow's first packet (TCP SYN) was sent again.
    pub const RETRANS: u8 = 11;
    /// TCP ACK completing the handshake, seen from the client after a SYN-ACK. No program sends
    /// it since issue 18's fourth pass (it always followed REPLY, which the flow table reads
    /// alike); the number stays taken and userspace still decodes it.
    pub const ESTABLISHED: u8 = 12;
}

/// `Event::flags` bits.
pub mod flags {
    /// The CT event was taken after SNAT (POSTROUTING): the reply tuple is final.
    pub const FINAL: u8 = 1 << 0;
    /// A DROP happened to a packet without a conntrack entry.
    pub const NO_CT: u8 = 1 << 1;
    /// `SEND_RESET`/`RECV_RESET`/`SOCK_STATE`: the socket is the client's side of the flow.
    pub const CLIENT_SIDE: u8 = 1 << 2;
    /// The flow was matched through its post-NAT tuple.
    pub const VIA_NAT: u8 = 1 << 3;
}

/// `Event::hook`: the netfilter hook number (`NF_INET_*`), or [`HOOK_STACK`] for tracepoints.
pub mod hook {
    pub const PRE_ROUTING: u8 = 0;
    pub const LOCAL_IN: u8 = 1;
    pub const FORWARD: u8 = 2;
    pub const LOCAL_OUT: u8 = 3;
    pub const POST_ROUTING: u8 = 4;
    /// Not at a netfilter hook: a tracepoint in the stack.
    pub const STACK: u8 = 0xff;
    /// Unknown (no hook recorded for this packet).
    pub const UNKNOWN: u8 = 0xfe;
}

/// One ring-buffer record. 128 bytes, 8-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: monotonic nanoseconds.
    pub ts_ns: u64,
    /// One of [`kind`].
    pub kind: u8,
    /// One of [`hook`].
    pub hook: u8,
    /// Conntrack direction of the packet: 0 original, 1 reply, 0xff unknown.
    pub ct_dir: u8,
    /// TCP flags byte of the packet (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// [`flags`] bits.
    pub flags: u8,
    /// SOCK_STATE: previous and new `TCP_*` state.
    pub old_state: u8,
    pub new_state: u8,
    pub pad: [u8; 3],
    /// DROP: `enum skb_drop_reason` value of the running kernel (names come from its BTF).
    pub reason: u32,
    /// CT: conntrack `status` (`IPS_*` bits).
    pub ct_status: u32,
    /// Port belonging to `aux` (network byte order).
    pub aux_port: u16,
    pub pad2: [u8; 2],
    /// The flow: conntrack ORIGINAL tuple (or the packet, before conntrack).
    pub key: FlowKey,
    /// CT: conntrack REPLY tuple. Zero otherwise.
    pub reply: FlowKey,
    /// ICMP_ERROR: sender; SEND_RESET/RECV_RESET: the socket's own address.
    pub aux: [u8; 16],
}

/// Per-CPU counters in the `STATS` array, by index.
pub mod stat {
    /// Events submitted to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Events lost: ring-buffer reservation failed (buffer full).
    pub const LOST: u32 = 1;
    /// Flow-state insertions that failed.
    pub const STATE_ERRORS: u32 = 2;
    /// Packet copies lost (`--pcap`): the `PACKETS` ring buffer was full.
    pub const PCAP_LOST: u32 = 3;
    /// Number of counters.
    pub const COUNT: u32 = 4;
}

/// Where a tracepoint keeps its address and port fields, from its tracefs `format` file.
///
/// Layouts differ between kernels: 6.10+ `tcp_send_reset` stores `struct sockaddr_in{,6}` in 28-byte
/// `saddr`/`daddr` arrays; older kernels have separate `sport`, `dport`, 4-byte `saddr`/`daddr`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TpAddrLayout {
    /// 0: tracepoint unused; 1: sockaddr arrays; 2: separate fields (ports in host byte order).
    pub kind: u32,
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u32,
    pub dport: u32,
    /// Offset of a `__u16 family` field (AF_INET = 2, AF_INET6 = 10), or `u32::MAX` when absent.
    pub family: u32,
    /// Separate layout: offsets of the 16-byte `saddr_v6`/`daddr_v6` arrays (an IPv6 socket's
    /// addresses, or an IPv4 one's as `::ffff:a.b.c.d`), or `u32::MAX` when absent. The sockaddr
    /// layout needs none: its arrays hold a `struct sockaddr_in6` for an IPv6 socket.
    pub saddr_v6: u32,
    pub daddr_v6: u32,
    /// Offset of `__u16 protocol`, or `u32::MAX`.
    pub protocol: u32,
    pub oldstate: u32,
    pub newstate: u32,
}

/// Kernel functions (kfuncs) the netfilter programs call, which aya 0.14 cannot relocate. The
/// programs emit each call as a placeholder, `r2 = <type placeholder>` followed at once by
/// `call <RDONLY_CAST>` (a helper call with a number no helper has), and the netfilter loader
/// (`d8-userspace/src/loader/kfunc.rs`) patches the pair before `BPF_PROG_LOAD`: the call into a
/// kfunc call (`src_reg` `BPF_PSEUDO_KFUNC_CALL`, `imm` the kfunc's id in the running kernel's
/// BTF), the type placeholder into that BTF's id of the named struct. An unpatched placeholder
/// is an unknown helper to the verifier: it never loads silently wrong.
pub mod kfunc {
    /// `call` immediate of a `bpf_rdonly_cast(ptr, type)` placeholder (6.2+, every program type):
    /// `ptr` as a read-only pointer to a struct of the type, whose fields the program then reads
    /// with plain loads (`BPF_PROBE_MEM`: inlined by the JIT, a fault reads zero), where
    /// `bpf_probe_read_kernel` is a helper call; the verifier inlines the call itself to a move.
    pub const RDONLY_CAST: i32 = 0x0d8c_a570;
    /// The kfunc [`RDONLY_CAST`] stands for, by its name in the kernel's BTF.
    pub const RDONLY_CAST_NAME: &str = "bpf_rdonly_cast";
    /// Type placeholders: `struct iphdr`, `struct tcphdr`, `struct ipv6hdr`.
    pub const IPHDR: i32 = 0x0d8b_0001;
    pub const TCPHDR: i32 = 0x0d8b_0002;
    pub const IPV6HDR: i32 = 0x0d8b_0003;
    /// Every type placeholder and the struct it names in the kernel's BTF.
    pub const TYPES: [(i32, &str); 3] = [(IPHDR, "iphdr"), (TCPHDR, "tcphdr"), (IPV6HDR, "ipv6hdr")];
    /// Type placeholder of `struct nf_conn`, which is in vmlinux's BTF only when conntrack is
    /// built in: a module's type cannot be the cast's argument (the verifier resolves it in the
    /// kfunc's BTF, vmlinux). The programs cast with it only when [`super::Config::ct_cast`] says
    /// the loader found it; otherwise the placeholder stays in code the verifier never reaches.
    pub const NF_CONN: i32 = 0x0d8b_0004;
    /// The struct [`NF_CONN`] names.
    pub const NF_CONN_NAME: &str = "nf_conn";
}

/// Address layout kinds for [`TpAddrLayout::kind`].
pub mod layout {
    pub const UNUSED: u32 = 0;
    pub const SOCKADDR: u32 = 1;
    pub const SEPARATE: u32 = 2;
}

/// Kernel facts the programs need, read by userspace from the running kernel's BTF and tracefs
/// and handed in as the global `CONFIG` (`.rodata`) before the programs load. Offsets in bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// `struct sk_buff`: `head` (pointer), `network_header` (u16), `_nfct` (unsigned long).
    pub skb_head: u32,
    pub skb_network_header: u32,
    pub skb_nfct: u32,
    /// `struct nf_conn`: ORIGINAL and REPLY `struct nf_conntrack_tuple`, and `status`.
    pub ct_tuple_orig: u32,
    pub ct_tuple_reply: u32,
    pub ct_status: u32,
    /// `struct nf_hook_state`: `hook` (u8).
    pub nf_state_hook: u32,
    /// `skb:kfree_skb`: `skbaddr`, `reason` (u32::MAX on kernels without drop reasons).
    pub kfree_skbaddr: u32,
    pub kfree_reason: u32,
    /// `tcp:tcp_send_reset`, `tcp:tcp_receive_reset`, `sock:inet_sock_set_state`.
    pub send_reset: TpAddrLayout,
    pub receive_reset: TpAddrLayout,
    pub sock_state: TpAddrLayout,
    /// `struct sk_buff`: `tail` (`sk_buff_data_t`, an offset from `head` on 64-bit kernels): where
    /// the linear data ends, so a packet copy never reads past it.
    pub skb_tail: u32,
    /// `--pcap`: bytes of each packet of a traced flow copied into the `PACKETS` ring buffer
    /// (from the IP header, at most [`pcap::MAX_SNAPLEN`]); 0 turns packet copies off, and being
    /// frozen `.rodata` the verifier then removes every copy from the programs.
    pub pcap_snaplen: u32,
    /// 1 when the netfilter programs read the conntrack entry through `bpf_rdonly_cast` of
    /// `struct nf_conn` (in vmlinux's BTF: conntrack built in), 0 for `bpf_probe_read_kernel`
    /// (conntrack a module, and every program but the netfilter ones). Frozen `.rodata`: the
    /// verifier sees only the chosen read.
    pub ct_cast: u32,
}

/// `--pcap`: copies of the packets of traced flows, for the pcapng file of failing flows.
pub mod pcap {
    /// The most bytes of a packet a [`super::PacketRecord`] holds: ring-buffer reservations have
    /// a constant size, so every record reserves this much and carries the length it captured.
    pub const MAX_SNAPLEN: u32 = 256;
    /// Packets copied per flow at most (counted in `FlowState::captured`): a failing flow has a
    /// handful (SYN, retransmits, the answer, the drop); a long healthy one stops costing here.
    pub const MAX_PACKETS_PER_FLOW: u32 = 32;

    /// Where a packet was copied ([`super::PacketRecord::site`]).
    pub mod site {
        /// `nf_pre`: before conntrack and DNAT (PREROUTING, or OUTPUT for the node's own).
        pub const NF_PRE: u8 = 1;
        /// `nf_post` at PREROUTING/OUTPUT right after DNAT.
        pub const POST_DNAT: u8 = 2;
        /// `skb:kfree_skb`: the packet the kernel dropped.
        pub const DROP: u8 = 3;
        /// A TC classifier on `ifindex`, ingress.
        pub const TC_INGRESS: u8 = 4;
        /// A TC classifier on `ifindex`, egress.
        pub const TC_EGRESS: u8 = 5;
    }
}

/// One packet copy in the `PACKETS` ring buffer: `cap_len` bytes of `data` from the IP header
/// on. 328 bytes, 8-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketRecord {
    /// `bpf_ktime_get_ns()`.
    pub ts_ns: u64,
    /// The flow the packet belongs to, as the program found it (ORIGINAL tuple; on the TC set
    /// possibly the post-NAT tuple until userspace joined it).
    pub key: FlowKey,
    /// TC: the interface; 0 at netfilter hooks and the drop tracepoint.
    pub ifindex: u32,
    /// The packet's length from its IP header (IPv4 total length, IPv6 payload length + 40, or
    /// the skb's length on TC).
    pub orig_len: u32,
    /// Bytes of `data` captured.
    pub cap_len: u32,
    /// DROP: `enum skb_drop_reason` value.
    pub reason: u32,
    /// One of [`pcap::site`].
    pub site: u8,
    /// One of [`hook`]: the netfilter hook (or the hook last seen, for a drop).
    pub hook: u8,
    /// 1: the packet travels in the flow's reply direction.
    pub reply: u8,
    pub pad: [u8; 5],
    pub data: [u8; pcap::MAX_SNAPLEN as usize],
}

/// A packet seen by a netfilter program, remembered per CPU so a following `kfree_skb` on the same
/// CPU can say after which hook the packet died.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LastHook {
    pub skb: u64,
    pub hook: u8,
    /// 1: the packet had passed conntrack (post-conntrack program).
    pub after_ct: u8,
    pub pad: [u8; 6],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all types are `#[repr(C)]`, `Copy`, made only of integers and byte arrays, and have
    // no implicit padding (explicit `pad` fields), so any byte pattern is a valid value.
    unsafe impl aya::Pod for super::FlowKey {}
    unsafe impl aya::Pod for super::TargetKey {}
    unsafe impl aya::Pod for super::FlowState {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::TpAddrLayout {}
    unsafe impl aya::Pod for super::LastHook {}
    unsafe impl aya::Pod for super::PacketRecord {}
}

// Layout checks: a change here must change the decoder in d8-userspace/src/events.rs.
const _: () = assert!(target_filter::WORDS * 64 == 1 << 16, "bit() yields 16 bits");
const _: () = assert!(core::mem::size_of::<FlowKey>() == 40);
const _: () = assert!(core::mem::size_of::<TargetKey>() == 20);
const _: () = assert!(core::mem::size_of::<FlowState>() == 32);
const _: () = assert!(core::mem::size_of::<Event>() == 128);
const _: () = assert!(core::mem::align_of::<Event>() == 8);
const _: () = assert!(core::mem::size_of::<PacketRecord>() == 72 + pcap::MAX_SNAPLEN as usize);
const _: () = assert!(core::mem::align_of::<PacketRecord>() == 8);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::target_filter;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> [u8; 16] {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[a, b, c, d]);
        addr
    }

    /// A cluster's frontends and backends spread over the bitmap: an untraced packet meets a set
    /// bit (and pays a hash lookup) rarely even when thousands of targets are traced.
    #[test]
    fn target_filter_spreads_a_clusters_targets() {
        let mut bits = std::collections::HashSet::new();
        let mut n = 0;
        for i in 0..2000u32 {
            let vip = v4(10, 96, (i >> 8) as u8, i as u8);
            let pod = v4(10, 244, (i >> 8) as u8, i as u8);
            for (addr, port) in [(vip, 80u16), (vip, 443), (pod, 8080)] {
                let bit = target_filter::bit(&addr, port.to_be(), 6);
                assert!(bit < target_filter::WORDS * 64);
                bits.insert(bit);
                n += 1;
            }
        }
        // 6,000 keys into 65,536 bits: random placement would give ~5,730 distinct bits.
        assert!(bits.len() > 5_500, "{} distinct bits for {n} targets", bits.len());
        // The same destination on another port or protocol is another bit.
        let a = v4(10, 96, 0, 10);
        assert_ne!(
            target_filter::bit(&a, 53u16.to_be(), 17),
            target_filter::bit(&a, 53u16.to_be(), 6)
        );
        assert_ne!(
            target_filter::bit(&a, 80u16.to_be(), 6),
            target_filter::bit(&a, 81u16.to_be(), 6)
        );
    }

    /// The IPv4 form gives every IPv4 destination the bit userspace sets for its 16-byte key.
    #[test]
    fn target_filter_bit_v4_and_bit_words_are_bit() {
        let mut state = 0x2545_f491_u32;
        for _ in 0..10_000 {
            // xorshift: addresses, ports and protocols all over their ranges.
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let a = state.to_ne_bytes();
            let port = (state >> 7) as u16;
            let proto = (state >> 23) as u8;
            assert_eq!(
                target_filter::bit_v4(a, port, proto),
                target_filter::bit(&v4(a[0], a[1], a[2], a[3]), port, proto),
                "{a:?} port {port} proto {proto}"
            );
            let words = [state, state.rotate_left(3), !state, state >> 9];
            let mut bytes = [0u8; 16];
            for (chunk, w) in bytes.chunks_mut(4).zip(words) {
                chunk.copy_from_slice(&w.to_ne_bytes());
            }
            assert_eq!(
                target_filter::bit_words(words, port, proto),
                target_filter::bit(&bytes, port, proto),
                "{words:?} port {port} proto {proto}"
            );
        }
    }
}
