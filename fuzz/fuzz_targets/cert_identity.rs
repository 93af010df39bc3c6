#![no_main]
//! Client-certificate identity extraction never panics on arbitrary DER (webpki verifies first, but
//! the parser must not rely on it).
use libfuzzer_sys::fuzz_target;
use wharf::tls::identity;

fuzz_target!(|der: &[u8]| {
    if let Ok(id) = identity::parse(der) {
        for s in id.common_names.iter().chain(&id.organizations) {
            assert!(std::str::from_utf8(s.as_bytes()).is_ok());
        }
    }
});
