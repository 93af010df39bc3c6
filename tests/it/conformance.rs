//! The official OCI distribution-spec conformance suite (pinned in tests/setup.sh) against wharf,
//! with pull, push, content discovery and content management all enabled, under both I/O drivers.

use std::process::Command;

use crate::common::*;

fn oci_conformance_suite_passes(driver: &str) {
    let s = Server::start(driver);
    let results = tempfile::tempdir().unwrap();
    let out = Command::new(tool("conformance"))
        .env("OCI_REGISTRY", s.host())
        .env("OCI_TLS", "disabled")
        .env("OCI_VERSION", "1.1")
        .env("OCI_REPO1", "conformance/repo1")
        .env("OCI_REPO2", "conformance/repo2")
        .env("OCI_API_PULL", "true")
        .env("OCI_API_PUSH", "true")
        .env("OCI_API_BLOBS_DELETE", "true")
        .env("OCI_API_BLOBS_DIGEST_HEADER", "true")
        .env("OCI_API_BLOBS_MOUNT_ANONYMOUS", "true")
        .env("OCI_API_BLOBS_UPLOAD_CANCEL", "true")
        .env("OCI_API_MANIFESTS_DELETE", "true")
        .env("OCI_API_MANIFESTS_DIGEST_HEADER", "true")
        .env("OCI_API_MANIFESTS_TAG_PARAM", "true")
        .env("OCI_API_TAGS_DELETE", "true")
        .env("OCI_API_TAGS_LIST", "true")
        .env("OCI_API_REFERRER", "true")
        .env("OCI_DATA_SHA512", "true")
        // Sparse manifests reference layers never pushed; wharf refuses those (MANIFEST_BLOB_UNKNOWN).
        .env("OCI_DATA_SPARSE", "false")
        .env("OCI_RESULTS_DIR", results.path())
        .current_dir(results.path())
        .output()
        .expect("run the conformance suite (tests/setup.sh installs it)");
    let report = String::from_utf8_lossy(&out.stdout);
    let summary: Vec<&str> = report.lines().filter(|l| l.contains("..:")).collect();
    assert!(
        out.status.success() && report.contains("OCI Conformance Test: Pass"),
        "conformance failed:\n{report}\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&out.stderr),
        s.log()
    );
    // Every feature passes: nothing skipped or reported unsupported; only sparse manifests are off.
    for line in &summary {
        let (name, value) = line.split_once("..:").unwrap();
        let (name, value) = (name.trim().trim_end_matches('.'), value.trim());
        let ok = match name {
            "Skip" | "FAIL" | "Error" | "Disabled" => value == "0",
            "Pass" | "Total" => true,
            "Sparse Manifests" => value == "Disabled",
            _ => value == "Pass",
        };
        assert!(ok, "not a pass: {line}\n{report}");
    }
    assert!(summary.len() > 40, "summary not found:\n{report}");
}

on_both_drivers!(oci_conformance_suite_passes);
on_s3!(oci_conformance_suite_passes);
