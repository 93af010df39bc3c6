//! Real clients over mutual TLS with `client_auth = "required"`: skopeo and podman (Debian packages)
//! push and pull with the certs.d layout that `wharf cert install-client` writes; without a client
//! certificate the handshake is refused.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::layout::Layout;
use crate::common::pki::{Pki, run_cmd};
use crate::common::*;

fn ok(cmd: &mut Command) -> String {
    let (ok, text) = run_cmd(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

/// An mTLS-only server and two certs.d directories for it: one with the client certificate, one
/// with only the CA.
struct Setup {
    server: Server,
    with_cert: PathBuf,
    ca_only: PathBuf,
    _dirs: tempfile::TempDir,
}

fn setup(driver: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let toml = pki.server_toml(Some("required"));
    let dirs = tempfile::tempdir().unwrap();
    let server = Server::start_in(dir, driver, &toml, "warn");
    let reg = server.host();
    let with_cert = pki.install_client(&reg, &dirs.path().join("certs.d"), "client");
    let ca_only = dirs.path().join("ca-only");
    std::fs::create_dir_all(&ca_only).unwrap();
    std::fs::copy(pki.path("ca.crt"), ca_only.join("ca.crt")).unwrap();
    Setup {
        with_cert,
        ca_only,
        server,
        _dirs: dirs,
    }
}

fn skopeo() -> Command {
    let mut c = Command::new(tool("skopeo"));
    c.arg("--insecure-policy");
    c
}

fn skopeo_pushes_and_pulls_over_mtls(driver: &str) {
    let st = setup(driver);
    let work = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&work.path().join("src"));
    let layers = vec![
        src.add_tar_layer("a.bin", 1_500_000, 7),
        src.add_tar_layer("b.bin", 40_000, 8),
    ];
    let image = src.add_image(&layers, "amd64");
    src.tag(&image, "v1");
    let reg = format!("docker://{}", st.server.host());
    let from = format!("oci:{}:v1", src.dir.display());

    // Without a client certificate the handshake is refused.
    let (pushed, text) = run_cmd(
        skopeo()
            .arg("copy")
            .arg("--dest-cert-dir")
            .arg(&st.ca_only)
            .args([&from, &format!("{reg}/mtls/app:v1")]),
    );
    assert!(
        !pushed,
        "push without a client certificate succeeded:\n{text}"
    );
    assert!(
        text.contains("certificate required")
            || text.contains("bad certificate")
            || text.contains("handshake"),
        "{text}"
    );

    ok(skopeo()
        .arg("copy")
        .arg("--dest-cert-dir")
        .arg(&st.with_cert)
        .args([&from, &format!("{reg}/mtls/app:v1")]));
    let out = work.path().join("out");
    ok(skopeo()
        .arg("copy")
        .arg("--src-cert-dir")
        .arg(&st.with_cert)
        .args([
            &format!("{reg}/mtls/app:v1"),
            &format!("oci:{}:v1", out.display()),
        ]));
    let back = Layout::new(&out);
    for l in &layers {
        let (a, b) = (
            std::fs::read(src.blob_path(&l.digest)).unwrap(),
            std::fs::read(back.blob_path(&l.digest)).unwrap(),
        );
        assert!(a == b, "layer {} differs after the round trip", l.digest);
    }
    let tags = ok(skopeo()
        .arg("list-tags")
        .arg("--cert-dir")
        .arg(&st.with_cert)
        .arg(format!("{reg}/mtls/app")));
    assert!(tags.contains("\"v1\""), "{tags}");
    let (listed, text) = run_cmd(
        skopeo()
            .arg("list-tags")
            .arg("--cert-dir")
            .arg(&st.ca_only)
            .arg(format!("{reg}/mtls/app")),
    );
    assert!(
        !listed,
        "list-tags without a client certificate succeeded:\n{text}"
    );
}

/// podman with its own storage (vfs, no daemon, no mounts) under `root`.
pub(crate) fn podman(root: &Path) -> Command {
    let mut c = Command::new("podman");
    c.arg("--root")
        .arg(root.join("storage"))
        .arg("--runroot")
        .arg(root.join("run"))
        .args([
            "--storage-driver",
            "vfs",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "file",
        ]);
    c
}

fn podman_pushes_and_pulls_over_mtls(driver: &str) {
    let st = setup(driver);
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let layer = root.join("layer.tar");
    std::fs::create_dir_all(root.join("rootfs/etc")).unwrap();
    std::fs::write(
        root.join("rootfs/etc/wharf-test"),
        b"pushed over mutual TLS\n",
    )
    .unwrap();
    ok(Command::new("tar")
        .arg("-cf")
        .arg(&layer)
        .arg("-C")
        .arg(root.join("rootfs"))
        .arg("."));
    ok(podman(root)
        .arg("import")
        .arg(&layer)
        .arg("localhost/wharf-mtls:1"));
    let id = ok(podman(root).args([
        "image",
        "inspect",
        "--format",
        "{{.Id}}",
        "localhost/wharf-mtls:1",
    ]));
    let target = format!("{}/podman/app:1", st.server.host());

    let (pushed, text) = run_cmd(
        podman(root)
            .arg("push")
            .arg("--cert-dir")
            .arg(&st.ca_only)
            .args(["localhost/wharf-mtls:1", &format!("docker://{target}")]),
    );
    assert!(
        !pushed,
        "podman push without a client certificate succeeded:\n{text}"
    );

    ok(podman(root)
        .arg("push")
        .arg("--cert-dir")
        .arg(&st.with_cert)
        .args(["localhost/wharf-mtls:1", &format!("docker://{target}")]));
    ok(podman(root).args(["rmi", "localhost/wharf-mtls:1"]));
    ok(podman(root)
        .arg("pull")
        .arg("--cert-dir")
        .arg(&st.with_cert)
        .arg(&target));
    let pulled = ok(podman(root).args(["image", "inspect", "--format", "{{.Id}}", &target]));
    assert_eq!(
        pulled.trim(),
        id.trim(),
        "the pulled image is not the pushed one"
    );
}

on_both_drivers!(
    skopeo_pushes_and_pulls_over_mtls,
    podman_pushes_and_pulls_over_mtls
);
