//! pcapng blocks (draft-ietf-opsawg-pcapng, "PCAP Next Generation Dump File Format"), the few
//! `--pcap` writes: a Section Header Block, Interface Description Blocks and Enhanced Packet
//! Blocks, each with options. Written in this host's byte order (the section header's magic says
//! which, as the format asks); every block and option is padded to 32 bits and every block
//! repeats its total length at its end. Pure functions from values to bytes: the file side is
//! `pcap.rs`.

/// Block types (section 11.1 of the draft).
pub const SHB: u32 = 0x0A0D_0D0A;
pub const IDB: u32 = 0x0000_0001;
pub const EPB: u32 = 0x0000_0006;
/// The section header's byte-order magic.
pub const BYTE_ORDER_MAGIC: u32 = 0x1A2B_3C4D;

/// Option codes: every block's `opt_comment`, the section header's and interface's own.
pub const OPT_ENDOFOPT: u16 = 0;
pub const OPT_COMMENT: u16 = 1;
pub const SHB_HARDWARE: u16 = 2;
pub const SHB_OS: u16 = 3;
pub const SHB_USERAPPL: u16 = 4;
pub const IF_NAME: u16 = 2;
pub const IF_DESCRIPTION: u16 = 3;
pub const IF_TSRESOL: u16 = 9;
pub const EPB_FLAGS: u16 = 2;

/// `LINKTYPE_RAW`: the packet begins with its IPv4 or IPv6 header (what every copy holds).
pub const LINKTYPE_RAW: u16 = 101;

/// `epb_flags` direction bits (bits 0-1): inbound, outbound.
pub const FLAGS_INBOUND: u32 = 1;
pub const FLAGS_OUTBOUND: u32 = 2;

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

/// Options as the format lays them out: code, length, value padded to 32 bits, and
/// `opt_endofopt` after the last (none at all when there are none).
fn options(opts: &[(u16, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (code, value) in opts {
        // An option's length is 16 bits: longer text is cut (at a character boundary by callers).
        let value = &value[..value.len().min(u16::MAX as usize & !3)];
        out.extend_from_slice(&code.to_ne_bytes());
        out.extend_from_slice(&(value.len() as u16).to_ne_bytes());
        out.extend_from_slice(value);
        out.resize(pad4(out.len()), 0);
    }
    if !out.is_empty() {
        out.extend_from_slice(&OPT_ENDOFOPT.to_ne_bytes());
        out.extend_from_slice(&0u16.to_ne_bytes());
    }
    out
}

/// A whole block: type, total length, `body` (already 32-bit aligned), total length again.
fn block(kind: u32, body: &[u8]) -> Vec<u8> {
    debug_assert_eq!(body.len() % 4, 0);
    let total = (12 + body.len()) as u32;
    let mut out = Vec::with_capacity(total as usize);
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&total.to_ne_bytes());
    out.extend_from_slice(body);
    out.extend_from_slice(&total.to_ne_bytes());
    out
}

/// What the section header records (each an option; empty strings are left out).
#[derive(Debug, Clone, Default)]
pub struct Section<'a> {
    pub hardware: &'a str,
    pub os: &'a str,
    pub application: &'a str,
    pub comment: &'a str,
}

/// The Section Header Block: version 1.0, section length unknown (-1), then the options.
pub fn section_header(s: &Section<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&BYTE_ORDER_MAGIC.to_ne_bytes());
    body.extend_from_slice(&1u16.to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&(-1i64).to_ne_bytes());
    let opts: Vec<(u16, &[u8])> = [
        (SHB_HARDWARE, s.hardware),
        (SHB_OS, s.os),
        (SHB_USERAPPL, s.application),
        (OPT_COMMENT, s.comment),
    ]
    .into_iter()
    .filter(|(_, v)| !v.is_empty())
    .map(|(c, v)| (c, v.as_bytes()))
    .collect();
    body.extend(options(&opts));
    block(SHB, &body)
}

/// An Interface Description Block of `LINKTYPE_RAW` packets cut at `snaplen`, with nanosecond
/// timestamps (`if_tsresol` 9).
pub fn interface(name: &str, description: &str, snaplen: u32) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&LINKTYPE_RAW.to_ne_bytes());
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&snaplen.to_ne_bytes());
    let mut opts: Vec<(u16, &[u8])> = vec![(IF_NAME, name.as_bytes())];
    if !description.is_empty() {
        opts.push((IF_DESCRIPTION, description.as_bytes()));
    }
    opts.push((IF_TSRESOL, &[9]));
    body.extend(options(&opts));
    block(IDB, &body)
}

/// One packet for an Enhanced Packet Block.
#[derive(Debug, Clone)]
pub struct Packet<'a> {
    pub interface: u32,
    /// Nanoseconds since the Unix epoch (the interfaces' `if_tsresol` is 9).
    pub ts_ns: u64,
    pub data: &'a [u8],
    pub orig_len: u32,
    pub comment: &'a str,
    /// `epb_flags`, 0 for none.
    pub flags: u32,
}

/// The Enhanced Packet Block of `p`.
pub fn packet(p: &Packet<'_>) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&p.interface.to_ne_bytes());
    body.extend_from_slice(&((p.ts_ns >> 32) as u32).to_ne_bytes());
    body.extend_from_slice(&(p.ts_ns as u32).to_ne_bytes());
    body.extend_from_slice(&(p.data.len() as u32).to_ne_bytes());
    body.extend_from_slice(&p.orig_len.max(p.data.len() as u32).to_ne_bytes());
    body.extend_from_slice(p.data);
    body.resize(pad4(body.len()), 0);
    let flags = p.flags.to_ne_bytes();
    let mut opts: Vec<(u16, &[u8])> = Vec::new();
    if !p.comment.is_empty() {
        opts.push((OPT_COMMENT, p.comment.as_bytes()));
    }
    if p.flags != 0 {
        opts.push((EPB_FLAGS, &flags));
    }
    body.extend(options(&opts));
    block(EPB, &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_ne_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Walks a block's options from `at` to `opt_endofopt`: (code, value) in order. Checks each
    /// is padded to 32 bits and that the end marker is the block's last option.
    fn walk_options(b: &[u8], mut at: usize, end: usize) -> Vec<(u16, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let code = u16_at(b, at);
            let len = u16_at(b, at + 2) as usize;
            if code == OPT_ENDOFOPT {
                assert_eq!(len, 0, "opt_endofopt has no value");
                assert_eq!(at + 4, end, "opt_endofopt ends the options");
                return out;
            }
            out.push((code, b[at + 4..at + 4 + len].to_vec()));
            at += 4 + pad4(len);
            assert!(at < end, "options run past the block");
        }
    }

    /// Checks the frame every block shares: 32-bit aligned, total length at both ends.
    fn frame(b: &[u8], kind: u32) -> usize {
        assert_eq!(u32_at(b, 0), kind);
        let total = u32_at(b, 4) as usize;
        assert_eq!(total, b.len());
        assert_eq!(total % 4, 0, "blocks are 32-bit aligned");
        assert_eq!(u32_at(b, total - 4) as usize, total, "trailing total length");
        total
    }

    /// The section header as the draft's section 4.1 lays it out: magic, version 1.0, section
    /// length -1 ("not specified"), options (hardware, os, userappl, comment).
    #[test]
    fn section_header_block_follows_the_format() {
        let b = section_header(&Section {
            hardware: "node-a",
            os: "Linux 6.18.0",
            application: "d8-trace 0.1.0",
            comment: "command: d8-trace --svc shop/web --pcap x",
        });
        let total = frame(&b, SHB);
        assert_eq!(u32_at(&b, 8), BYTE_ORDER_MAGIC);
        assert_eq!((u16_at(&b, 12), u16_at(&b, 14)), (1, 0));
        assert_eq!(i64::from_ne_bytes(b[16..24].try_into().unwrap()), -1);
        let opts = walk_options(&b, 24, total - 4);
        assert_eq!(
            opts,
            vec![
                (SHB_HARDWARE, b"node-a".to_vec()),
                (SHB_OS, b"Linux 6.18.0".to_vec()),
                (SHB_USERAPPL, b"d8-trace 0.1.0".to_vec()),
                (OPT_COMMENT, b"command: d8-trace --svc shop/web --pcap x".to_vec()),
            ]
        );
    }

    /// Section 4.2: link type, reserved zero, snap length, then if_name, if_description and
    /// if_tsresol (one byte: 9, nanoseconds).
    #[test]
    fn interface_description_block_follows_the_format() {
        let b = interface("post-dnat", "after DNAT", 128);
        let total = frame(&b, IDB);
        assert_eq!(u16_at(&b, 8), LINKTYPE_RAW);
        assert_eq!(u16_at(&b, 10), 0);
        assert_eq!(u32_at(&b, 12), 128);
        let opts = walk_options(&b, 16, total - 4);
        assert_eq!(
            opts,
            vec![
                (IF_NAME, b"post-dnat".to_vec()),
                (IF_DESCRIPTION, b"after DNAT".to_vec()),
                (IF_TSRESOL, vec![9]),
            ]
        );
    }

    /// Section 4.3: interface id, 64-bit timestamp as high and low words, captured and original
    /// lengths, the data padded to 32 bits, then opt_comment and epb_flags.
    #[test]
    fn enhanced_packet_block_follows_the_format() {
        let data = [0x45u8, 0, 0, 60, 1, 2, 3]; // 7 bytes: one byte of padding
        let ts = 1_765_000_000_123_456_789u64;
        let b = packet(&Packet {
            interface: 2,
            ts_ns: ts,
            data: &data,
            orig_len: 60,
            comment: "flow #1",
            flags: FLAGS_INBOUND,
        });
        let total = frame(&b, EPB);
        assert_eq!(u32_at(&b, 8), 2);
        assert_eq!(((u32_at(&b, 12) as u64) << 32) | u32_at(&b, 16) as u64, ts);
        assert_eq!(u32_at(&b, 20), 7);
        assert_eq!(u32_at(&b, 24), 60);
        assert_eq!(&b[28..35], &data);
        assert_eq!(b[35], 0, "padding is zero");
        let opts = walk_options(&b, 36, total - 4);
        assert_eq!(
            opts,
            vec![
                (OPT_COMMENT, b"flow #1".to_vec()),
                (EPB_FLAGS, FLAGS_INBOUND.to_ne_bytes().to_vec())
            ]
        );
    }

    /// A packet with no comment and no flags has no options at all (not even opt_endofopt), and
    /// the original length is never below the captured one.
    #[test]
    fn a_packet_without_options_ends_after_its_data() {
        let data = [0x45u8; 8];
        let b = packet(&Packet {
            interface: 0,
            ts_ns: 0,
            data: &data,
            orig_len: 0,
            comment: "",
            flags: 0,
        });
        assert_eq!(frame(&b, EPB), 28 + 8 + 4);
        assert_eq!(u32_at(&b, 24), 8);
    }
}
