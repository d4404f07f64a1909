//! The local password's SCRAM exchange: as two strings, and as SASL messages on a stream.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgwi_core::fuzzing::scram_exchange(data);
    pgwi_core::fuzzing::local_authentication(data);
});
