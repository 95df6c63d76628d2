//! Any bytes as the kernel's nf_tables answers (netlink messages, as `nft-netlink-B.bin` records
//! them), read as an ip and as an ip6 table: the kernel reader's decoder returns a table or an
//! error, never panics.
#![no_main]

use d8_trace::kernel::nftables::{FAMILY_IP, FAMILY_IP6};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for family in [FAMILY_IP, FAMILY_IP6] {
        let _ = d8_trace::model::rules::nftables::netlink::decode_dump(family, data);
    }
});
