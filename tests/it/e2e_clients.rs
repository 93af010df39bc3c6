//! Real clients against the real binary: skopeo (Debian package) and crane (go-containerregistry),
//! copying multi-layer images and multi-arch indexes in and out and checking the bytes.

use std::path::Path;
use std::process::Command;

use crate::common::layout::{Blob, Layout};
use crate::common::*;

pub(crate) fn skopeo() -> Command {
    let mut c = Command::new(tool("skopeo"));
    c.arg("--insecure-policy");
    c
}

pub(crate) fn assert_same_blob(a: &Path, b: &Path) {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let (x, y) = (read(a), read(b));
    assert!(x == y, "{} and {} differ", a.display(), b.display());
}

/// What the fixture layout holds.
struct Fixture {
    layout: Layout,
    /// Layers of the image tagged `v1`.
    layers: Vec<Blob>,
    image: Blob,
    /// The 2-platform index tagged `multi`, and its platforms' layers.
    index: Blob,
    platform_layers: Vec<Blob>,
}

fn fixture(dir: &Path) -> Fixture {
    let mut layout = Layout::new(dir);
    let layers = vec![
        layout.add_tar_layer("a.bin", 300_000, 1),
        layout.add_tar_layer("b.bin", 5_000, 2),
        layout.add_tar_layer("c.bin", 2_000_000, 3),
    ];
    let image = layout.add_image(&layers, "amd64");
    layout.tag(&image, "v1");
    let platform_layers = vec![
        layout.add_tar_layer("amd64.bin", 70_000, 4),
        layout.add_tar_layer("arm64.bin", 80_000, 5),
    ];
    let m1 = layout.add_image(&platform_layers[..1], "amd64");
    let m2 = layout.add_image(&platform_layers[1..], "arm64");
    let index = layout.add_index(&[(m1, "amd64"), (m2, "arm64")]);
    layout.tag(&index, "multi");
    Fixture {
        layout,
        layers,
        image,
        index,
        platform_layers,
    }
}

fn skopeo_round_trip(driver: &str) {
    let s = Server::start(driver);
    let work = tempfile::tempdir().unwrap();
    let Fixture {
        layout: src,
        layers,
        index,
        platform_layers,
        ..
    } = fixture(&work.path().join("src"));
    let reg = format!("docker://{}", s.host());
    let srcdir = src.dir.display().to_string();
    run_ok(skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{srcdir}:v1"),
        &format!("{reg}/e2e/image:v1"),
    ]));
    run_ok(skopeo().args([
        "copy",
        "--all",
        "--dest-tls-verify=false",
        &format!("oci:{srcdir}:multi"),
        &format!("{reg}/e2e/multi:v1"),
    ]));

    // Back out: every layer byte-identical.
    let out = work.path().join("out");
    run_ok(skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &format!("{reg}/e2e/image:v1"),
        &format!("oci:{}:v1", out.display()),
    ]));
    let back = Layout::new(&out);
    for l in &layers {
        assert_same_blob(&src.blob_path(&l.digest), &back.blob_path(&l.digest));
    }
    let out2 = work.path().join("out2");
    run_ok(skopeo().args([
        "copy",
        "--all",
        "--src-tls-verify=false",
        &format!("{reg}/e2e/multi:v1"),
        &format!("oci:{}:m", out2.display()),
    ]));
    let back2 = Layout::new(&out2);
    assert_same_blob(
        &src.blob_path(&index.digest),
        &back2.blob_path(&index.digest),
    );
    for l in &platform_layers {
        assert_same_blob(&src.blob_path(&l.digest), &back2.blob_path(&l.digest));
    }

    let tags: serde_json::Value = serde_json::from_str(&run_ok(skopeo().args([
        "list-tags",
        "--tls-verify=false",
        &format!("{reg}/e2e/image"),
    ])))
    .unwrap();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    let info: serde_json::Value = serde_json::from_str(&run_ok(skopeo().args([
        "inspect",
        "--tls-verify=false",
        &format!("{reg}/e2e/image:v1"),
    ])))
    .unwrap();
    let want: Vec<&str> = layers.iter().map(|l| l.digest.as_str()).collect();
    assert_eq!(info["Layers"], serde_json::json!(want));
    let raw = run_ok(skopeo().args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("{reg}/e2e/multi:v1"),
    ]));
    assert_eq!(
        sha256(raw.as_bytes()),
        index.digest,
        "the index is stored and served exactly as pushed"
    );

    run_ok(skopeo().args([
        "delete",
        "--tls-verify=false",
        &format!("{reg}/e2e/image:v1"),
    ]));
    assert_eq!(s.client().get("/v2/e2e/image/manifests/v1").status, 404);
}

fn crane_round_trip(driver: &str) {
    let s = Server::start(driver);
    let work = tempfile::tempdir().unwrap();
    let f = fixture(&work.path().join("src"));
    let crane = || Command::new(tool("crane"));
    let host = s.host();
    // `crane push` of a layout with one image, and of the whole layout as one index (--index).
    let single = work.path().join("single");
    let mut one = Layout::new(&single);
    for entry in std::fs::read_dir(f.layout.dir.join("blobs/sha256")).unwrap() {
        let e = entry.unwrap();
        std::fs::copy(e.path(), single.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    one.tag(&f.image, "v1");
    run_ok(crane().args([
        "push",
        single.to_str().unwrap(),
        &format!("{host}/crane/image:v1"),
    ]));
    run_ok(crane().args([
        "push",
        "--index",
        f.layout.dir.to_str().unwrap(),
        &format!("{host}/crane/multi:v1"),
    ]));

    let digest = run_ok(crane().args(["digest", &format!("{host}/crane/image:v1")]));
    assert_eq!(digest.trim(), f.image.digest);
    assert_eq!(
        run_ok(crane().args(["ls", &format!("{host}/crane/image")])).trim(),
        "v1"
    );
    // Copy to another repository: crane mounts the layers across repositories.
    run_ok(crane().args([
        "copy",
        &format!("{host}/crane/image:v1"),
        &format!("{host}/crane/copy:v2"),
    ]));
    assert_eq!(
        run_ok(crane().args(["digest", &format!("{host}/crane/copy:v2")])).trim(),
        f.image.digest
    );
    let pulled = work.path().join("pulled");
    run_ok(crane().args([
        "pull",
        "--format=oci",
        &format!("{host}/crane/copy:v2"),
        pulled.to_str().unwrap(),
    ]));
    for l in &f.layers {
        assert_same_blob(
            &f.layout.blob_path(&l.digest),
            &pulled.join("blobs/sha256").join(&l.digest[7..]),
        );
    }
    let catalog = run_ok(crane().args(["catalog", &host]));
    for repo in ["crane/copy", "crane/image", "crane/multi"] {
        assert!(catalog.lines().any(|l| l == repo), "{catalog}");
    }
    let multi: serde_json::Value = serde_json::from_str(&run_ok(
        crane().args(["manifest", &format!("{host}/crane/multi:v1")]),
    ))
    .unwrap();
    let platforms: Vec<&str> = multi["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["digest"].as_str())
        .collect();
    assert!(platforms.len() >= 2, "{multi}");
    run_ok(crane().args(["delete", &format!("{host}/crane/copy@{}", f.image.digest)]));
    assert_eq!(s.client().get("/v2/crane/copy/manifests/v2").status, 404);
}

on_both_drivers!(skopeo_round_trip, crane_round_trip);
on_s3!(skopeo_round_trip, crane_round_trip);
