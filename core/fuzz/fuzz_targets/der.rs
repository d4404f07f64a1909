//! A certificate's signature algorithm, found by the DER walker.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pgwi_core::fuzzing::signature_algorithm(data));
