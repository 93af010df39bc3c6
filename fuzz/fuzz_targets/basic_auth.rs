#![no_main]
//! The `Authorization` header parser never panics, and what it accepts round-trips.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::basic_auth(data));
