#![no_main]
//! Names, tags, digests and references: whatever is accepted is a safe relative path.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: &str| wharf::fuzzing::names(s));
