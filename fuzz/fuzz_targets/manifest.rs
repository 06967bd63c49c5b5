//! `cargo fuzz run manifest`: the properties of [`sluice_protocol::fuzz::manifest`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::manifest(data));
