#![no_main]
//! CEL rules: compiling arbitrary text never panics, and whatever compiles evaluates to a decision
//! (never a panic) for arbitrary identities and a few request shapes. Input: rule text, then a NUL,
//! then newline-separated CNs / Os / username.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::policy(data));
