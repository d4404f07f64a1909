//! A start-up message's parameters.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgwi_core::fuzzing::parse_params(data));
