//! `cargo fuzz run usage_meter`: the properties of [`sluice_protocol::fuzz::usage_meter`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::usage_meter(data));
