//! `cargo fuzz run pii`: the properties of [`sluice_protocol::fuzz::pii`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::pii(data));
