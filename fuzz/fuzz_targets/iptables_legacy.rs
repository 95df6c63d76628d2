//! Any bytes as legacy x_tables tables (`iptables-legacy.bin`'s recorded form: per table its
//! name, hooks and entries), read as IPv4 and IPv6: the legacy reader's decoder returns a model or
//! an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for v6 in [false, true] {
        let _ = d8_trace::model::rules::iptables::legacy::decode_recorded(v6, data);
    }
});
