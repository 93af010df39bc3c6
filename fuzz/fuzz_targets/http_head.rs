#![no_main]
//! Request-head parser: never panics, and a parsed head never claims more bytes than it was given.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::http_head(data));
