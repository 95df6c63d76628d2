//! Any bytes: the parser returns a value or an error, never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = d8_trace::model::k8s::snapshot::parse_snapshot(text, "fuzz");
    }
});
