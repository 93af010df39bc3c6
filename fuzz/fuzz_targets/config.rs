#![no_main]
//! The config file: TOML parse, validation, identity checks and policy compilation never panic.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::config(data));
