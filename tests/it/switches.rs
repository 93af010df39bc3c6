//! Operator switches: `storage.read_only` (maintenance mode), `storage.delete_enabled = false`, and
//! `server.hsts_max_age` over TLS.

use std::path::Path;

use crate::common::pki::{Pki, tls_connect};
use crate::common::*;

/// A server over an existing storage directory (so a second config can serve the same content).
fn server_over(store: &Path, driver: &str, extra: &str) -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(store, dir.path().join("data")).unwrap();
    Server::start_in(dir, driver, extra, "warn")
}

fn read_only_refuses_every_write_and_keeps_serving_reads(driver: &str) {
    let store = tempfile::tempdir().unwrap();
    let manifest = {
        let s = server_over(store.path(), driver, "");
        push_image(&mut s.client(), "app", "v1", b"layer")
    };
    let s = server_over(store.path(), driver, "[storage]\nread_only = true\n");
    let mut c = s.client();
    let d = sha256(b"new");
    let writes: [(&str, String, &[u8]); 6] = [
        ("POST", format!("/v2/app/blobs/uploads/?digest={d}"), b"new"),
        ("POST", "/v2/app/blobs/uploads/".into(), b""),
        ("PUT", "/v2/app/manifests/v2".into(), b"{}"),
        ("DELETE", format!("/v2/app/manifests/{manifest}"), b""),
        ("DELETE", "/v2/app/manifests/v1".into(), b""),
        (
            "PATCH",
            "/v2/app/blobs/uploads/00000000-0000-4000-8000-000000000000".into(),
            b"x",
        ),
    ];
    for (method, path, body) in writes {
        let r = c.request(method, &path, &[("Content-Type", OCI_MANIFEST)], body);
        assert_eq!(r.status, 405, "{method} {path}");
        assert_eq!(r.error_code(), "UNSUPPORTED", "{method} {path}");
        assert!(String::from_utf8_lossy(&r.body).contains("storage.read_only"));
    }
    // Reads go on, and the content is untouched.
    let r = c.request(
        "GET",
        "/v2/app/manifests/v1",
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(sha256(&r.body), manifest);
    assert_eq!(
        c.get(&format!("/v2/app/blobs/{}", sha256(b"layer"))).body,
        b"layer"
    );
    assert_eq!(
        c.get("/v2/app/tags/list").json()["tags"],
        serde_json::json!(["v1"])
    );
    assert_eq!(c.get("/v2/_catalog").status, 200);
}

fn deletes_can_be_disabled(driver: &str) {
    let s = Server::start_with(driver, "[storage]\ndelete_enabled = false\n");
    let mut c = s.client();
    let manifest = push_image(&mut c, "app", "v1", b"layer");
    let layer = sha256(b"layer");
    for path in [
        format!("/v2/app/manifests/{manifest}"),
        "/v2/app/manifests/v1".into(),
        format!("/v2/app/blobs/{layer}"),
    ] {
        let r = c.request("DELETE", &path, &[], b"");
        assert_eq!(r.status, 405, "{path}");
        assert_eq!(r.error_code(), "UNSUPPORTED");
        assert!(String::from_utf8_lossy(&r.body).contains("delete_enabled"));
    }
    assert_eq!(c.get("/v2/app/manifests/v1").status, 200);
    assert_eq!(c.get(&format!("/v2/app/blobs/{layer}")).status, 200);
    // Pushes and upload cancels still work.
    push_image(&mut c, "app", "v2", b"another layer");
    let loc = c.request("POST", "/v2/app/blobs/uploads/", &[], b"");
    let loc = loc.header("location").unwrap().to_owned();
    assert_eq!(c.request("DELETE", &loc, &[], b"").status, 204);
}

fn hsts_header_over_tls(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let extra = format!("hsts_max_age = \"8760h\"\n{}", pki.server_toml(None));
    let s = Server::start_in(dir, driver, &extra, "warn");
    let mut conn = tls_connect(s.addr, pki.client_config(None, false)).unwrap();
    for path in ["/v2/", "/v2/nothing/manifests/latest"] {
        let r = conn.client.get(path);
        assert_eq!(
            r.header("strict-transport-security"),
            Some("max-age=31536000"),
            "{path}"
        );
    }
    // Plain HTTP responses never carry it.
    let plain = Server::start(driver);
    assert_eq!(
        plain
            .client()
            .get("/v2/")
            .header("strict-transport-security"),
        None
    );
}

on_both_drivers!(
    read_only_refuses_every_write_and_keeps_serving_reads,
    deletes_can_be_disabled,
    hsts_header_over_tls,
);

#[test]
fn hsts_without_tls_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    std::fs::write(&path, "[server]\nhsts_max_age = \"1h\"\n").unwrap();
    let out = std::process::Command::new(wharf_bin())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("server.hsts_max_age") && err.contains("needs a listener with TLS"),
        "{err}"
    );
}
