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

/// Parses the IPv4 header at `nh` and the first bytes of the transport header.
#[inline(always)]
pub fn parse_ipv4(nh: u64) -> Option<Packet> {
    let hdr: [u8; 20] = unsafe { read(nh)? };
    if hdr[0] >> 4 != 4 {
        return None;
    }
    let ihl = ((hdr[0] & 0x0f) as u64) * 4;
    let proto = hdr[9];
    let key = v4_key([hdr[12], hdr[13], hdr[14], hdr[15]], [hdr[16], hdr[17], hdr[18], hdr[19]], proto);
    let l4 = nh + ihl;
    let mut pkt = Packet { key, tcp_flags: 0, icmp_type: 0, icmp_code: 0, l4 };
    match proto {
        IPPROTO_TCP => {
            let th: [u8; 14] = unsafe { read(l4)? };
            pkt.key.sport = u16::from_ne_bytes([th[0], th[1]]);
            pkt.key.dport = u16::from_ne_bytes([th[2], th[3]]);
            pkt.tcp_flags = th[13];
        }
        IPPROTO_UDP | IPPROTO_SCTP => {
            let ports: [u8; 4] = unsafe { read(l4)? };
            pkt.key.sport = u16::from_ne_bytes([ports[0], ports[1]]);
            pkt.key.dport = u16::from_ne_bytes([ports[2], ports[3]]);
        }
        IPPROTO_ICMP => {
            let ih: [u8; 2] = unsafe { read(l4)? };
            pkt.icmp_type = ih[0];
            pkt.icmp_code = ih[1];
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
