#![no_main]
//! Request-head parser: never panics, and a parsed head never claims more bytes than it was given.
use libfuzzer_sys::fuzz_target;
use wharf::http::{Limits, head};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((_, n))) = head::parse(data, &Limits::default()) {
        assert!(n <= data.len());
    }
});
