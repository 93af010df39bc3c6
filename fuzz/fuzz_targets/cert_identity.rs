#![no_main]
//! Client-certificate identity extraction never panics on arbitrary DER (webpki verifies first, but
//! the parser must not rely on it).
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|der: &[u8]| wharf::fuzzing::cert_identity(der));
