//! Replays every committed fuzz corpus file through the check its fuzz target runs
//! (`wharf::fuzzing`), decoding typed inputs with `arbitrary` exactly as libfuzzer-sys does, so a
//! crash once found and fixed fails `cargo test` if it comes back. Every target in fuzz/Cargo.toml
//! must be replayed here.

use std::path::{Path, PathBuf};

use arbitrary::{Arbitrary, Unstructured};
use wharf::fuzzing;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// `fuzz_target!(|x: T| ...)` decodes its input as `T::arbitrary_take_rest`.
fn take<'a, T: Arbitrary<'a>>(data: &'a [u8]) -> Option<T> {
    T::arbitrary_take_rest(Unstructured::new(data)).ok()
}

/// Run the target's check on one input.
fn replay(target: &str, data: &[u8]) {
    match target {
        "http_head" => fuzzing::http_head(data),
        "chunked" => fuzzing::chunked(data),
        "cert_identity" => fuzzing::cert_identity(data),
        "basic_auth" => fuzzing::basic_auth(data),
        "jwt" => fuzzing::jwt(data),
        "policy" => fuzzing::policy(data),
        "config" => fuzzing::config(data),
        "referrers" => fuzzing::referrers(data),
        "object_store" => fuzzing::object_store(data),
        "names" => take::<&str>(data).into_iter().for_each(fuzzing::names),
        "ranges" => {
            if let Some((h, size)) = take::<(&str, u64)>(data) {
                fuzzing::ranges(h, size)
            }
        }
        "upstream_auth" => {
            if let Some((c, t)) = take::<(&str, &[u8])>(data) {
                fuzzing::upstream_auth(c, t)
            }
        }
        "manifest" => {
            if let Some((m, t)) = take::<(&[u8], Option<&str>)>(data) {
                fuzzing::manifest(m, t)
            }
        }
        "route" => {
            if let Some((p, q, m)) = take::<(&str, &str, u8)>(data) {
                fuzzing::route(p, q, m)
            }
        }
        other => panic!("fuzz target {other} has no replay in tests/fuzz_corpus.rs"),
    }
}

/// The `[[bin]]` names of fuzz/Cargo.toml.
fn targets() -> Vec<String> {
    let text = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let manifest: toml::Value = toml::from_str(&text).unwrap();
    manifest["bin"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["name"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn every_corpus_file_passes_its_targets_check() {
    let targets = targets();
    assert!(targets.len() >= 9, "{targets:?}");
    for target in &targets {
        // Every target has a corpus produced by running it (fuzz/run-all.sh with KEEP=1, minimised
        // with libFuzzer's -merge), so the replay decodes inputs exactly as the fuzzer made them.
        let dir = fuzz_dir().join("corpus").join(target);
        if target == "cert_identity" {
            // Its inputs are certificates, which are never committed (generated PKI material):
            // `cert_identity_check_accepts_certificates_made_now` makes fresh ones instead.
            assert!(
                !dir.exists(),
                "fuzz/corpus/cert_identity holds certificates: do not commit it"
            );
            continue;
        }
        let entries =
            std::fs::read_dir(&dir).unwrap_or_else(|_| panic!("fuzz/corpus/{target} is missing"));
        let mut replayed = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| replay(target, &data));
            assert!(outcome.is_ok(), "{} fails its fuzz check", path.display());
            replayed += 1;
        }
        assert!(
            replayed >= 20,
            "fuzz/corpus/{target}: only {replayed} inputs"
        );
    }
}

#[test]
fn cert_identity_check_accepts_certificates_made_now() {
    let ca = wharf::tls::certs::new_ca("fuzz seed CA", 1).unwrap();
    let client =
        wharf::tls::certs::client(&ca, "build-server", &["Infrastructure".into()], 1).unwrap();
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    for pem in [&ca.cert_pem, &client.cert_pem] {
        let der = CertificateDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .to_vec();
        let id = wharf::tls::identity::parse(&der).unwrap();
        assert!(!id.common_names.is_empty());
        fuzzing::cert_identity(&der);
        let mut cut = der.clone();
        cut.truncate(der.len() / 2);
        fuzzing::cert_identity(&cut);
    }
    replay("cert_identity", b"\x30\x82");
}
