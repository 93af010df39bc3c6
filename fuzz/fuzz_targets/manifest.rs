#![no_main]
//! Manifest validation never panics on arbitrary bytes and content types.
use libfuzzer_sys::fuzz_target;
use wharf::oci::manifest;

fuzz_target!(|input: (&[u8], Option<&str>)| {
    let _ = manifest::parse(input.0, input.1);
});
