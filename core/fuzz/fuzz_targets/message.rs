//! Framed messages read within a limit.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgwi_core::fuzzing::read_messages(data));
