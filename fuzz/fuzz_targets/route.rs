#![no_main]
//! Routing of arbitrary paths and queries never panics.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, &str, u8)| wharf::fuzzing::route(input.0, input.1, input.2));
