//! `cargo fuzz run scoring_json`: the properties of [`sluice_protocol::fuzz::scoring_json`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::scoring_json(data));
