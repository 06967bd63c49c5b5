//! `cargo fuzz run openai_request`: the properties of [`sluice_protocol::fuzz::openai_request`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::openai_request(data));
