#![no_main]
//! JWTs (OIDC ID tokens, wharf's registry tokens) and JWKs, as untrusted bytes.
//! The check lives in `wharf::fuzzing` so `cargo test` replays the corpus through it too.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| wharf::fuzzing::jwt(data));
