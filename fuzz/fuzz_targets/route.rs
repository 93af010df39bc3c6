#![no_main]
//! Routing of arbitrary paths and queries never panics.
use libfuzzer_sys::fuzz_target;
use wharf::http::Method;
use wharf::registry::route;

fuzz_target!(|input: (&str, &str, u8)| {
    let m = [Method::Get, Method::Head, Method::Post, Method::Put, Method::Patch, Method::Delete][usize::from(input.2 % 6)];
    let _ = route(m, input.0, input.1);
});
