//! Reading IPv4 and IPv6 packet headers out of a `struct sk_buff` with `bpf_probe_read_kernel`,
//! using the offsets of `head` and `network_header` from `CONFIG`, and decoding them (also for
//! `tc.rs`, which reads the same headers with `bpf_skb_load_bytes`).
//!
//! The header layouts are network-types' [`Ipv4Hdr`], [`Ipv6Hdr`], [`TcpHdr`], [`UdpHdr`] and
//! [`IcmpHdr`] (ICMPv6 begins with the same type, code and checksum). IPv6 extension headers are
//! skipped by [`skip_extensions`], the same walk for both readers. The
//! `struct sk_buff` fields that locate them (`head`, `network_header`) are not packet headers:
//! network-types has no type for them, and their offsets differ between kernels (Rust emits no
//! CO-RE relocations), so they stay runtime offsets from `CONFIG`.

use core::mem::{MaybeUninit, offset_of};

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated::bpf_probe_read_kernel as probe_read_raw};
use d8_common::{FAMILY_V4, FAMILY_V6, FlowKey};
use network_types::{
    icmp::IcmpHdr,
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    udp::UdpHdr,
};

use crate::{kfunc, maps::config};

pub const IPPROTO_ICMP: u8 = 1;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const IPPROTO_SCTP: u8 = 132;
pub const IPPROTO_ICMPV6: u8 = IpProto::Ipv6Icmp as u8;

/// IPv6 extension headers [`skip_extensions`] walks past (network-types' numbers).
const IPV6_HOP_BY_HOP: u8 = IpProto::HopOpt as u8;
const IPV6_ROUTING: u8 = IpProto::Ipv6Route as u8;
const IPV6_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;
const IPV6_DEST_OPTS: u8 = IpProto::Ipv6Opts as u8;
/// Extension headers walked at most before the transport header: RFC 8200's recommended order
/// has at most six (hop-by-hop, destination options, routing, fragment, AH/ESP, destination
/// options); a packet with more is not parsed (a bounded loop, as the verifier wants).
pub const MAX_IPV6_EXTENSIONS: usize = 6;
/// Where the source and destination addresses are in an IPv6 header (the destination follows
/// the source: one read of both, straight into a flow key whose `daddr` follows `saddr`).
pub const IPV6_ADDRS: usize = core::mem::offset_of!(Ipv6Hdr, src_addr);
const _: () = assert!(core::mem::offset_of!(Ipv6Hdr, dst_addr) == IPV6_ADDRS + 16);
const _: () = assert!(core::mem::offset_of!(FlowKey, daddr) == 16);

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// Bytes of each transport header the programs use: TCP up to its flags (ports, sequence numbers,
/// data offset and flags), UDP its ports (SCTP's common header begins with the same two), ICMP its
/// type and code. `tc.rs` reads exactly these, so a packet (or the packet an ICMP error quotes)
/// that holds fewer is not parsed, and one that holds them is, however short the rest.
pub const TCP_USED: u32 = offset_of!(TcpHdr, window) as u32;
pub const UDP_USED: u32 = offset_of!(UdpHdr, len) as u32;
pub const ICMP_USED: u32 = offset_of!(IcmpHdr, checksum) as u32;

/// An IPv4 header as read from a packet. network-types types `Ipv4Hdr::proto` as `IpProto`, an
/// enum with no variant for the unassigned protocol numbers (145-252): a packet carrying one must
/// never become an `Ipv4Hdr` value or reference (an invalid enum value is undefined behaviour),
/// so the bytes stay in a `MaybeUninit` (fully written by the read) and the fields are read
/// through a raw pointer, `proto` as its byte.
#[repr(transparent)]
#[derive(Clone, Copy)]
pub struct RawIpv4(MaybeUninit<Ipv4Hdr>);

impl RawIpv4 {
    #[inline(always)]
    fn hdr(&self) -> *const Ipv4Hdr {
        self.0.as_ptr()
    }

    /// The version field (4 for IPv4), as `Ipv4Hdr::version` reads it.
    #[inline(always)]
    pub fn version(&self) -> u8 {
        unsafe { (*self.hdr())._bitfield_1.get(4, 4) as u8 }
    }

    /// The header's length in bytes (`Ipv4Hdr::ihl` in 32-bit words, times 4).
    #[inline(always)]
    pub fn header_len(&self) -> u32 {
        unsafe { (*self.hdr())._bitfield_1.get(0, 4) as u32 * 4 }
    }

    /// The protocol number, whatever it is.
    #[inline(always)]
    pub fn proto(&self) -> u8 {
        unsafe { core::ptr::addr_of!((*self.hdr()).proto).cast::<u8>().read() }
    }

    #[inline(always)]
    pub fn src_addr(&self) -> [u8; 4] {
        unsafe { (*self.hdr()).src_addr }
    }

    #[inline(always)]
    pub fn dst_addr(&self) -> [u8; 4] {
        unsafe { (*self.hdr()).dst_addr }
    }
}

/// The transport header's first bytes: one of network-types' headers, by the IP header's protocol.
/// Every field is an integer or a byte array, so any bytes are a valid value of each view.
#[repr(C)]
#[derive(Clone, Copy)]
pub union L4 {
    pub tcp: TcpHdr,
    pub udp: UdpHdr,
    pub icmp: IcmpHdr,
}

impl L4 {
    /// Zeroes `slot` in place, before a read of only its first bytes. Volatile stores into the
    /// slot itself: LLVM turns plain zeroing (and a copy of a zeroed value) into a `memset` call,
    /// a bpf-to-bpf call that counts 32 bytes of stack (see [`v4_key`]).
    #[inline(always)]
    pub fn zero(slot: &mut MaybeUninit<Self>) -> &mut Self {
        let words = slot.as_mut_ptr() as *mut u32;
        // SAFETY: `L4` is 20 bytes, 4-aligned; all-zero bytes are a valid value of every field
        // (integers and byte arrays).
        unsafe {
            for i in 0..size_of::<Self>() / 4 {
                core::ptr::write_volatile(words.add(i), 0);
            }
            slot.assume_init_mut()
        }
    }
}

const _: () = assert!(size_of::<L4>() == 20 && align_of::<L4>() == 4);

/// The TCP flags byte (FIN 0x01 ... CWR 0x80, as the `TCP_*` constants and events carry it),
/// assembled from `TcpHdr`'s flag accessors; LLVM folds them back into the one byte they read.
#[inline(always)]
pub fn tcp_flags(th: &TcpHdr) -> u8 {
    (th.fin()
        | th.syn() << 1
        | th.rst() << 2
        | th.psh() << 3
        | th.ack() << 4
        | th.urg() << 5
        | th.ece() << 6
        | th.cwr() << 7) as u8
}

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
    let ip: RawIpv4 = unsafe { read(nh)? };
    let mut pkt = packet(&ip, nh)?;
    // A whole `L4`, whatever the protocol: this reads kernel memory, where the bytes past a short
    // packet are `skb_shared_info`'s (and never used), not packet bytes that may be missing.
    let l4: L4 = unsafe { read(pkt.l4)? };
    transport(&mut pkt, ip.proto(), &l4);
    Some(pkt)
}

/// [`parse_ipv4`] for the netfilter programs, which run for every packet of the node, nearly all
/// untraced: the headers are read in place with plain loads through [`kfunc::rdonly_cast`] (a
/// helper read of them was half the untraced cost above the empty program: BENCHMARKS.md, issue
/// 18), and `wanted(daddr, dport, proto)` is asked before anything else is read, so that an
/// untraced packet costs a few loads and the filter. ICMP packets are decoded whatever `wanted`
/// says: an ICMP error is matched on the packet it quotes. The transport header is read as a
/// `struct tcphdr` whatever the protocol (UDP's and SCTP's ports and ICMP's type and code sit at
/// its ports' offsets); the skb's buffer always extends past it (`skb_shared_info` follows the
/// data), and bytes beyond a short packet are never used.
#[inline(always)]
pub fn parse_ipv4_hot(nh: u64, wanted: impl FnOnce([u8; 4], u16, u8) -> bool) -> Option<Packet> {
    let ip = kfunc::rdonly_cast::<{ d8_common::kfunc::IPHDR }>(nh);
    // Version and IHL, as one byte: `RawIpv4::version`'s bitfield accessor compiles to a loop of
    // shifts that every packet would run.
    let first: u8 = kfunc::load(ip, 0);
    if first >> 4 != 4 {
        return None;
    }
    let proto: u8 = kfunc::load(ip, offset_of!(Ipv4Hdr, proto));
    let daddr = kfunc::load::<u32>(ip, offset_of!(Ipv4Hdr, dst_addr)).to_ne_bytes();
    let l4_at = nh + (first & 0x0f) as u64 * 4;
    let l4 = kfunc::rdonly_cast::<{ d8_common::kfunc::TCPHDR }>(l4_at);
    let ports = matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP);
    let dport: u16 = if ports {
        kfunc::load(l4, offset_of!(TcpHdr, dest))
    } else {
        0
    };
    if proto != IPPROTO_ICMP && !wanted(daddr, dport, proto) {
        return None;
    }
    let saddr = kfunc::load::<u32>(ip, offset_of!(Ipv4Hdr, src_addr)).to_ne_bytes();
    let mut pkt = Packet {
        key: v4_key(saddr, daddr, proto),
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        l4: l4_at,
    };
    cast_transport(&mut pkt, proto, l4, ports, IPPROTO_ICMP);
    Some(pkt)
}

/// [`transport`] from a transport header cast by [`kfunc::rdonly_cast`] as a `struct tcphdr`:
/// ports (network byte order, as the key holds them) when `ports`, TCP's flags, and the type and
/// code of an `icmp` (ICMP or ICMPv6) packet.
#[inline(always)]
fn cast_transport(pkt: &mut Packet, proto: u8, l4: u64, ports: bool, icmp: u8) {
    if ports {
        pkt.key.sport = kfunc::load(l4, offset_of!(TcpHdr, source));
        pkt.key.dport = kfunc::load(l4, offset_of!(TcpHdr, dest));
        if proto == IPPROTO_TCP {
            pkt.tcp_flags = kfunc::load(l4, TCP_FLAGS_AT);
        }
    } else if proto == icmp {
        pkt.icmp_type = kfunc::load(l4, offset_of!(IcmpHdr, type_));
        pkt.icmp_code = kfunc::load(l4, offset_of!(IcmpHdr, code));
    }
}

/// The flow key (ports zero) and transport header address of the IPv4 header `ip` read at `nh`
/// (an address, or for `tc.rs` an offset into the packet); `None` if it is no IPv4 header.
#[inline(always)]
pub fn packet(ip: &RawIpv4, nh: u64) -> Option<Packet> {
    if ip.version() != 4 {
        return None;
    }
    let key = v4_key(ip.src_addr(), ip.dst_addr(), ip.proto());
    Some(Packet {
        key,
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        l4: nh + ip.header_len() as u64,
    })
}

/// Ports, TCP flags or ICMP type and code from the transport header `l4` of a `proto` packet
/// (ICMPv6 as [`transport6`]). Reads only the first [`TCP_USED`], [`UDP_USED`] or [`ICMP_USED`]
/// bytes: `tc.rs` loads no more.
#[inline(always)]
pub fn transport(pkt: &mut Packet, proto: u8, l4: &L4) {
    // SAFETY: every view of an `L4` is valid for any bytes.
    unsafe {
        match proto {
            IPPROTO_TCP => {
                let th = &l4.tcp;
                // Network byte order, as the flow key holds ports.
                pkt.key.sport = th.source;
                pkt.key.dport = th.dest;
                pkt.tcp_flags = tcp_flags(th);
            }
            IPPROTO_UDP | IPPROTO_SCTP => {
                let uh = &l4.udp;
                pkt.key.sport = u16::from_ne_bytes(uh.source);
                pkt.key.dport = u16::from_ne_bytes(uh.dest);
            }
            IPPROTO_ICMP => {
                let ih = &l4.icmp;
                pkt.icmp_type = ih.type_;
                pkt.icmp_code = ih.code;
            }
            _ => {}
        }
    }
}

/// [`transport`] for an IPv6 packet: ICMPv6's type and code sit where ICMP's do. (Not a case of
/// `transport`'s own: the IPv4 programs keep their code as it was.)
#[inline(always)]
pub fn transport6(pkt: &mut Packet, proto: u8, l4: &L4) {
    transport(pkt, if proto == IPPROTO_ICMPV6 { IPPROTO_ICMP } else { proto }, l4);
}

/// ICMP errors (destination unreachable, time exceeded, parameter problem) quote the packet that
/// caused them; returns that packet's flow key. `V6`: `pkt` is an IPv6 packet (a const parameter,
/// so the IPv4 programs hold no IPv6 code).
#[inline(always)]
pub fn icmp_quoted_key<const V6: bool>(pkt: &Packet) -> Option<FlowKey> {
    if V6 {
        if pkt.key.proto != IPPROTO_ICMPV6 || !is_icmpv6_error(pkt.icmp_type) {
            return None;
        }
        return Some(parse_ipv6(pkt.l4 + 8)?.key);
    }
    if pkt.key.proto != IPPROTO_ICMP || !matches!(pkt.icmp_type, 3 | 11 | 12) {
        return None;
    }
    let inner = parse_ipv4(pkt.l4 + 8)?;
    Some(inner.key)
}

/// ICMPv6 errors, which quote the packet that caused them as ICMP's do: destination unreachable
/// (1, what a REJECT sends), packet too big (2), time exceeded (3), parameter problem (4).
#[inline(always)]
pub fn is_icmpv6_error(icmp_type: u8) -> bool {
    matches!(icmp_type, 1..=4)
}

/// Where an IPv6 packet's transport header is, from the header after the fixed one (`next`,
/// found at `off`): `(protocol, offset, has_transport_header)`. Hop-by-hop, routing and
/// destination options headers are skipped by their length; a fragment header too, and a
/// fragment other than the first has no transport header (its ports are in the first one).
/// `read` reads the first four bytes of an extension header at an offset (kernel memory, or the
/// skb's packet for `tc.rs`). `None`: more than [`MAX_IPV6_EXTENSIONS`], or a failed read.
#[inline(always)]
pub fn skip_extensions(mut next: u8, mut off: u64, read: impl Fn(u64) -> Option<[u8; 4]>) -> Option<(u8, u64, bool)> {
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                // Next header, then the length in 8-byte units past the first 8.
                let h = read(off)?;
                next = h[0];
                off += (h[1] as u64 + 1) * 8;
            }
            IPV6_FRAGMENT => {
                // Next header, reserved, then the offset (13 bits, in 8-byte units) and flags.
                let h = read(off)?;
                next = h[0];
                off += 8;
                if u16::from_be_bytes([h[2], h[3]]) & 0xfff8 != 0 {
                    return Some((next, off, false));
                }
            }
            _ => return Some((next, off, true)),
        }
    }
    match next {
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT => None,
        _ => Some((next, off, true)),
    }
}

/// An IPv6 flow key with both addresses zero, `proto` and the IPv6 family: volatile word stores,
/// as [`v4_key`] (no `memset`). The addresses are then read straight into it.
#[inline(always)]
pub fn v6_key_frame(key: &mut MaybeUninit<FlowKey>) {
    let words = key.as_mut_ptr() as *mut u32;
    for i in 0..10 {
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
    }
    unsafe { core::ptr::write_volatile(words.add(9), u32::from_ne_bytes([0, FAMILY_V6, 0, 0])) };
}

/// Sets the protocol of a key built by [`v6_key_frame`].
#[inline(always)]
pub fn set_proto(key: &mut MaybeUninit<FlowKey>, proto: u8) {
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*key.as_mut_ptr()).proto), proto) };
}

/// The first 8 bytes of an IPv6 header: the version and the next header (network-types' field
/// offsets; `Ipv6Hdr::next_hdr` is an enum that must not hold an unassigned number, as
/// [`RawIpv4`] explains, so the bytes are read as bytes).
#[inline(always)]
pub fn ipv6_fixed(first: [u8; 8]) -> Option<u8> {
    const NEXT: usize = core::mem::offset_of!(Ipv6Hdr, next_hdr);
    if first[0] >> 4 != 6 {
        return None;
    }
    Some(first[NEXT])
}

/// Parses the IPv6 header at kernel address `nh`, its extension headers and the first bytes of
/// the transport header. The addresses are read straight into the key (no 40-byte header on the
/// stack: the drop tracepoint's program is near the 512-byte limit).
#[inline(always)]
pub fn parse_ipv6(nh: u64) -> Option<Packet> {
    let first: [u8; 8] = unsafe { read(nh)? };
    let next = ipv6_fixed(first)?;
    let mut key = MaybeUninit::<FlowKey>::uninit();
    v6_key_frame(&mut key);
    // SAFETY: 32 bytes into the key's `saddr` and `daddr`, which follow each other.
    if unsafe { probe_read_raw(key.as_mut_ptr().cast(), 32, (nh + IPV6_ADDRS as u64) as *const _) } != 0 {
        return None;
    }
    let (proto, l4, has_l4) = skip_extensions(next, nh + Ipv6Hdr::LEN as u64, |at| unsafe { read::<[u8; 4]>(at) })?;
    set_proto(&mut key, proto);
    let mut pkt = Packet {
        key: unsafe { key.assume_init() },
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        l4,
    };
    if has_l4 {
        let hdr: L4 = unsafe { read(l4)? };
        transport6(&mut pkt, proto, &hdr);
    }
    Some(pkt)
}

/// Where TCP's flags byte is in its header (after the data offset byte), as [`tcp_flags`] reads it.
const TCP_FLAGS_AT: usize = 13;

/// The TCP flags of the packet at `nh` (read in place, as [`parse_ipv4_hot`] does) when its
/// transport header is TCP and follows the IP header directly (IPv6: no extension header);
/// `None` otherwise. For `nf_post`'s test of a segment in the middle of a flow, which needs the
/// flags alone and, for nearly every segment, nothing else of the packet.
#[inline(always)]
pub fn tcp_flags_hot<const V6: bool>(nh: u64) -> Option<u8> {
    let l4_at = if V6 {
        let ip = kfunc::rdonly_cast::<{ d8_common::kfunc::IPV6HDR }>(nh);
        if kfunc::load::<u8>(ip, offset_of!(Ipv6Hdr, next_hdr)) != IPPROTO_TCP {
            return None;
        }
        nh + Ipv6Hdr::LEN as u64
    } else {
        let ip = kfunc::rdonly_cast::<{ d8_common::kfunc::IPHDR }>(nh);
        let first: u8 = kfunc::load(ip, 0);
        if first >> 4 != 4 || kfunc::load::<u8>(ip, offset_of!(Ipv4Hdr, proto)) != IPPROTO_TCP {
            return None;
        }
        nh + (first & 0x0f) as u64 * 4
    };
    let l4 = kfunc::rdonly_cast::<{ d8_common::kfunc::TCPHDR }>(l4_at);
    Some(kfunc::load(l4, TCP_FLAGS_AT))
}

/// [`parse_ipv6`] for the netfilter programs: the fixed header and the transport header read in
/// place with plain loads through [`kfunc::rdonly_cast`], as [`parse_ipv4_hot`] (three helper
/// reads before issue 18, then one); only extension headers, which few packets carry, are walked
/// with helper reads. The addresses go straight into the key with word stores (no `memcpy`).
#[inline(always)]
pub fn parse_ipv6_hot(nh: u64) -> Option<Packet> {
    let ip = kfunc::rdonly_cast::<{ d8_common::kfunc::IPV6HDR }>(nh);
    let first: u8 = kfunc::load(ip, 0);
    if first >> 4 != 6 {
        return None;
    }
    let next: u8 = kfunc::load(ip, offset_of!(Ipv6Hdr, next_hdr));
    let (proto, l4_at, has_l4) = skip_extensions(next, nh + Ipv6Hdr::LEN as u64, |at| unsafe { read::<[u8; 4]>(at) })?;
    let mut key = MaybeUninit::<FlowKey>::uninit();
    v6_key_frame(&mut key);
    set_proto(&mut key, proto);
    let words = key.as_mut_ptr() as *mut u32;
    // One load and store per word of the two addresses, unrolled: the verifier takes loads
    // through the cast only at constant offsets. `saddr` and `daddr` follow each other in both.
    macro_rules! addr_words {
        ($($i:literal)*) => {$(
            // SAFETY: word `$i` of the key's 32 address bytes.
            unsafe { core::ptr::write_volatile(words.add($i), kfunc::load::<u32>(ip, IPV6_ADDRS + 4 * $i)) };
        )*};
    }
    addr_words!(0 1 2 3 4 5 6 7);
    let mut pkt = Packet {
        // SAFETY: every byte written by the frame, the protocol and the address words.
        key: unsafe { key.assume_init() },
        tcp_flags: 0,
        icmp_type: 0,
        icmp_code: 0,
        l4: l4_at,
    };
    if has_l4 {
        let l4 = kfunc::rdonly_cast::<{ d8_common::kfunc::TCPHDR }>(l4_at);
        let ports = matches!(proto, IPPROTO_TCP | IPPROTO_UDP | IPPROTO_SCTP);
        cast_transport(&mut pkt, proto, l4, ports, IPPROTO_ICMPV6);
    }
    Some(pkt)
}

/// The IPv4 or IPv6 packet at kernel address `nh`, by its version: for the drop tracepoint, which
/// sees both families' packets.
#[inline(always)]
pub fn parse_ip(nh: u64) -> Option<Packet> {
    let version: u8 = unsafe { read(nh)? };
    if version >> 4 == 6 {
        parse_ipv6(nh)
    } else {
        parse_ipv4(nh)
    }
}

/// Copies a key (out of a map value, or a read slot) with volatile 2-byte moves: LLVM would
/// otherwise call `memmove`, a bpf-to-bpf call whose 32 bytes of stack `kfree_skb` (near the 512-byte limit)
/// does not have on 6.1 ("combined stack size of 2 calls is 544. Too large").
#[inline(always)]
pub fn copy_key(src: &FlowKey) -> FlowKey {
    let mut key = core::mem::MaybeUninit::<FlowKey>::uninit();
    let from = src as *const FlowKey as *const u16;
    let to = key.as_mut_ptr() as *mut u16;
    for i in 0..core::mem::size_of::<FlowKey>() / 2 {
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
    }
    unsafe { key.assume_init() }
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
