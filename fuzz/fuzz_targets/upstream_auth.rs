#![no_main]
//! An upstream's `WWW-Authenticate: Bearer …` challenge and its token realm's JSON answer.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &[u8])| wharf::fuzzing::upstream_auth(input.0, input.1));
