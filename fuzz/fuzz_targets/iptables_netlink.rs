//! Any bytes as the kernel's answers for iptables-nft's tables (netlink messages, as
//! `iptables-nft-netlink.bin` records them), read as ip and as ip6: the kernel reader's decoder
//! returns a model or an error, never panics.
#![no_main]

use d8_trace::kernel::nftables::{FAMILY_IP, FAMILY_IP6};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for family in [FAMILY_IP, FAMILY_IP6] {
        let _ = d8_trace::model::rules::iptables::netlink::decode_dump(family, data);
    }
});
