#![no_main]
//! Names, tags, digests and references: whatever is accepted is a safe relative path.
use libfuzzer_sys::fuzz_target;
use wharf::oci::{Digest, Reference, RepoName, Tag};

fuzz_target!(|s: &str| {
    if let Ok(n) = s.parse::<RepoName>() {
        assert!(!n.as_str().starts_with('/') && !n.as_str().split('/').any(|c| c == ".." || c == "." || c.is_empty()));
    }
    if let Ok(t) = s.parse::<Tag>() {
        assert!(!t.as_str().contains('/') && !t.as_str().starts_with('.'));
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(d.to_string(), s);
    }
    let _ = s.parse::<Reference>();
});
