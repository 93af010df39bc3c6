#![no_main]
//! Range and Content-Range parsing: any accepted range lies inside the blob.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (&str, u64)| wharf::fuzzing::ranges(input.0, input.1));
