//! Server-side encryption of what a node writes (`storage.s3.server_side_encryption`,
//! `kms_key_id`) on a real SeaweedFS with its local KMS: every object a push leaves in the bucket
//! carries the encryption asked for and reads back whole, and encryption the store refuses stops
//! startup with an error naming the key.

use std::process::Command;

use crate::common::seaweed::Seaweed;
use crate::common::*;
use crate::scale_out::{bucket_keys, on_bucket};

/// The response head of a HEAD of `key` in the bucket, header names in lower case.
fn head_of(weed: &Seaweed, key: &str) -> String {
    let out = weed.curl(key).args(["-sS", "-I"]).output().unwrap();
    assert!(out.status.success(), "HEAD {key}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| match l.split_once(':') {
            Some((name, value)) => format!("{}: {}", name.to_ascii_lowercase(), value.trim()),
            None => l.trim().to_owned(),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A node with SSE-S3 and one with SSE-KMS (a named key), each pushing an image with a 9 MiB
/// layer (a multipart upload) and leaving a chunked upload open: every object under the node's
/// prefix (blob data and pointers, manifests, tags, links, the catalog, the upload session) is
/// encrypted as configured, the startup check's object is gone, and the image pulls back with
/// crane as pushed.
#[test]
fn every_object_a_node_writes_is_encrypted_as_configured() {
    let weed = Seaweed::start_kms();
    for (prefix, table, algorithm, kms_key) in [
        (
            "sse-s3/",
            "server_side_encryption = \"AES256\"\n",
            "AES256",
            None,
        ),
        (
            "sse-kms/",
            "server_side_encryption = \"aws:kms\"\nkms_key_id = \"wharf-registry\"\n",
            "aws:kms",
            Some("wharf-registry"),
        ),
    ] {
        let node = Server::start_with("io_uring", &format!("{}{table}", on_bucket(&weed, prefix)));
        let mut c = node.client();
        let layer = noise(1, 9 << 20);
        let pushed = push_image(&mut c, "enc/app", "v1", &layer);
        let session = start_upload(&mut c, "enc/app");
        let r = c.request(
            "PATCH",
            &session,
            &[("Content-Type", "application/octet-stream")],
            &noise(2, 1 << 20),
        );
        assert_eq!(r.status, 202, "{}", r.body_text());

        let keys = bucket_keys(&weed, prefix);
        for kind in ["blobs/", "data/", "catalog/", "repos/", "uploads/"] {
            assert!(
                keys.iter()
                    .any(|k| k.starts_with(&format!("{prefix}{kind}"))),
                "no {kind} object among {keys:?}"
            );
        }
        for key in &keys {
            let head = head_of(&weed, key);
            assert!(
                head.contains(&format!("x-amz-server-side-encryption: {algorithm}\n")),
                "{key} is not stored with {algorithm}:\n{head}"
            );
            if let Some(id) = kms_key {
                assert!(
                    head.contains(&format!(
                        "x-amz-server-side-encryption-aws-kms-key-id: {id}"
                    )),
                    "{key} is not encrypted with KMS key {id}:\n{head}"
                );
            }
        }
        let probe = weed
            .curl(&format!("{prefix}probes/encryption"))
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"])
            .output()
            .unwrap();
        assert_eq!(probe.stdout, b"404", "the startup check left its object");

        let image = format!("{}/enc/app:v1", node.host());
        assert_eq!(crane_pull_digest(&image), pushed);
        let r = c.get(&format!("/v2/enc/app/blobs/{}", sha256(&layer)));
        assert_eq!(r.status, 200, "{}", r.body_text());
        assert!(r.body == layer, "the layer reads back whole");
    }
}

/// Encryption the store cannot apply stops `check-config` (and so `serve`) with an error naming
/// the key and quoting the store: a KMS key on a store without a KMS, and SSE-KMS without a key
/// where the store has no default key.
#[test]
fn encryption_the_store_refuses_stops_startup_naming_the_key() {
    let plain = Seaweed::shared();
    let kms = Seaweed::start_kms();
    let dir = tempfile::tempdir().unwrap();
    for (weed, table, key) in [
        (
            plain,
            "server_side_encryption = \"aws:kms\"\nkms_key_id = \"wharf-registry\"\n",
            "storage.s3.kms_key_id",
        ),
        (
            &kms,
            "server_side_encryption = \"aws:kms\"\n",
            "storage.s3.server_side_encryption",
        ),
    ] {
        let path = dir.path().join("wharf.toml");
        std::fs::write(&path, format!("{}{table}", on_bucket(weed, "refused-sse/"))).unwrap();
        let out = Command::new(wharf_bin())
            .args(["check-config", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{table}: check-config passed");
        assert!(
            err.contains(key) && err.contains("object store answered 500"),
            "{table}: {err}"
        );
    }
}
