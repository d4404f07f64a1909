//! A client's first bytes, read as the refusal endpoint and the proxy read them.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    pgwi_core::fuzzing::read_startup(data);
    pgwi_core::fuzzing::negotiate(data);
});
