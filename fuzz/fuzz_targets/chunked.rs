#![no_main]
//! Chunked decoder: byte-at-a-time decoding agrees with whole-buffer decoding.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::chunked(data));
