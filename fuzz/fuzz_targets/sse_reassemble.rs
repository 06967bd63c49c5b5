//! `cargo fuzz run sse_reassemble`: the properties of [`sluice_protocol::fuzz::sse_reassemble`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::sse_reassemble(data));
