#![no_main]
//! Referrers filtering over arbitrary stored descriptors: only objects with the wanted artifactType pass.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::referrers(data));
