#![no_main]
//! Manifest validation never panics on arbitrary bytes and content types.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&[u8], Option<&str>)| wharf::fuzzing::manifest(input.0, input.1));
