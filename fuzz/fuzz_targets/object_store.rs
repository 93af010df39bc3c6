#![no_main]
//! Object-store answers: response heads for wharf's HTTP client, S3 listings and error bodies,
//! timestamps, and the upload sessions and blob pointers the S3 backend reads back.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::object_store(data));
