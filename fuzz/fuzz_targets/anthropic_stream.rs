//! `cargo fuzz run anthropic_stream`: the properties of [`sluice_protocol::fuzz::anthropic_stream`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::anthropic_stream(data));
