//! `cargo fuzz run scoring_csv`: the properties of [`sluice_protocol::fuzz::scoring_csv`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sluice_protocol::fuzz::scoring_csv(data));
