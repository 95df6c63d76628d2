//! Reading IPv4 packet headers out of a `struct sk_buff` with `bpf_probe_read_kernel`, using the
//! offsets of `head` and `network_header` from `CONFIG`.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use d8_common::{FAMILY_V4, FlowKey};

use crate::maps::config;

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// What the programs need from one packet.
pub struct Packet {
    pub key: FlowKey,
    pub tcp_flags: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// Kernel address of the transport header (for ICMP errors: where the quoted packet starts - 8).
    pub l4: u64,
}

#[inline(always)]
unsafe fn read<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Address of the network header of `skb`.
#[inline(always)]
pub fn network_header(skb: u64) -> Option<u64> {
    let head: u64 = unsafe { read(skb + config!(skb_head) as u64)? };
    let nh: u16 = unsafe { read(skb + config!(skb_network_header) as u64)? };
    Some(head + nh as u64)
}

/// An IPv4 flow key (ports zero), built with volatile stores: LLVM would merge the zero address
/// tails into `memset` calls, and also turn later copies of the addresses into them. Each such
/// bpf-to-bpf call counts 32 bytes of stack in the verifier's sum, which a program near 512 bytes
/// does not have on 6.1 ("combined stack size of 2 calls is 544. Too large").
#[inline(always)]
pub fn v4_key(saddr: [u8; 4], daddr: [u8; 4], proto: u8) -> FlowKey {
    let mut key = core::mem::MaybeUninit::<FlowKey>::uninit();
    let words = key.as_mut_ptr() as *mut u32;
    unsafe {
        core::ptr::write_volatile(words, u32::from_ne_bytes(saddr));
        core::ptr::write_volatile(words.add(1), 0);
        core::ptr::write_volatile(words.add(2), 0);
        core::ptr::write_volatile(words.add(3), 0);
        core::ptr::write_volatile(words.add(4), u32::from_ne_bytes(daddr));
        core::ptr::write_volatile(words.add(5), 0);
        core::ptr::write_volatile(words.add(6), 0);
        core::ptr::write_volatile(words.add(7), 0);
        core::ptr::write_volatile(words.add(8), 0);
        core::ptr::write_volatile(words.add(9), u32::from_ne_bytes([proto, FAMILY_V4, 0, 0]));
        key.assume_init()
    }
}

/// Address of the network header of a trusted `skb` (a netfilter program's context), with
/// plain loads: the verifier checks them against `struct sk_buff`'s BTF and the JIT emits them
/// inline, where `bpf_probe_read_kernel` is a helper call each. The offsets come from the frozen
/// `CONFIG`, which the verifier reads as constants.
#[inline(always)]
pub fn network_header_trusted(skb: u64) -> u64 {
    unsafe {
        let head = core::ptr::read_volatile((skb + config!(skb_head) as u64) as *const u64);
        let nh = core::ptr::read_volatile((skb + config!(skb_network_header) as u64) as *const u16);
        head + nh as u64
    }
}

/// Parses the IPv4 header at `nh` and the first bytes of the transport header, with two reads
/// (small on the stack: for the tracepoints, whose programs are near the 512-byte limit).
#[inline(always)]
pub fn parse_ipv4(nh: u64) -> Option<Packet> {
    parse::<20>(nh)
}

/// [`parse_ipv4`] with one read for both headers when the IP header has no options: for the
/// netfilter programs, which run for every packet of the node. The skb's buffer always extends
/// past those 40 bytes (`skb_shared_info` follows the data), and bytes beyond a short packet are
/// never used.
#[inline(always)]
pub fn parse_ipv4_hot(nh: u64) -> Option<Packet> {
    parse::<40>(nh)
}

/// Reads `N` bytes at `nh` (20: the IP header alone; 40: with the transport header's first 20).
#[inline(always)]
fn parse<const N: usize>(nh: u64) -> Option<Packet> {
    let raw: [u8; N] = unsafe { read(nh)? };
    if raw[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((raw[0] & 0x0f) as u64) * 4;
    let proto = raw[9];
    let key = v4_key(
        [raw[12], raw[13], raw[14], raw[15]],
        [raw[16], raw[17], raw[18], raw[19]],
        proto,
    );
    let l4 = nh + ihl;
    let mut pkt = Packet {
        key,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        l4,
    };
    // The transport header's first 14 bytes: from the same read unless IP options moved them.
    let moved: [u8; 14];
    let th: &[u8; 14] = if N >= 34 && ihl == 20 {
        // SAFETY: bytes 20..34 of the array, which has at least 34.
        unsafe { &*(raw.as_ptr().add(20) as *const [u8; 14]) }
    } else {
        moved = unsafe { read(l4)? };
        &moved
    };
    match proto {
        IPPROTO_TCP => {
            pkt.key.sport = u16::from_ne_bytes([th[0], th[1]]);
            pkt.key.dport = u16::from_ne_bytes([th[2], th[3]]);
            pkt.tcp_flags = th[13];
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            pkt.key.sport = u16::from_ne_bytes([th[0], th[1]]);
            pkt.key.dport = u16::from_ne_bytes([th[2], th[3]]);
        }
        IPPROTO_ICMP => {
            pkt.icmp_type = th[0];
            pkt.icmp_code = th[1];
        }
        _ => {}
    }
    Some(pkt)
}

/// ICMP errors (destination unreachable, time exceeded, parameter problem) quote the packet that
/// caused them; returns that packet's flow key.
#[inline(always)]
pub fn icmp_quoted_key(pkt: &Packet) -> Option<FlowKey> {
    if pkt.key.proto != IPPROTO_ICMP || !matches!(pkt.icmp_type, 3 | 11 | 12) {
        return None;
    }
    let inner = parse_ipv4(pkt.l4 + 8)?;
    Some(inner.key)
}

/// Key of the same flow seen from the other direction.
#[inline(always)]
pub fn reversed(key: &FlowKey) -> FlowKey {
    FlowKey {
        saddr: key.daddr,
        daddr: key.saddr,
        sport: key.dport,
        dport: key.sport,
        proto: key.proto,
        family: key.family,
        pad: [0; 2],
    }
}
