//! The commands in docs/quickstart.md, run as written (in a scratch directory, with the built binary
//! on PATH, `cargo install` skipped, and the Docker Hub source image replaced by a local OCI layout).

mod common;

use std::path::Path;
use std::process::Command;

use common::layout::Layout;

/// The first ```sh block of a document.
fn sh_block(doc: &str) -> String {
    let start = doc.find("```sh\n").expect("a ```sh block") + 6;
    let len = doc[start..].find("\n```").expect("closing fence");
    doc[start..start + len].to_owned()
}

#[test]
fn quickstart_runs_as_written() {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/quickstart.md"))
            .unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&work.path().join("src"));
    let layer = src.add_tar_layer("hello.txt", 10_000, 3);
    let image = src.add_image(&[layer], "amd64");
    src.tag(&image, "3.20");
    let script = sh_block(&doc)
        .lines()
        .filter(|l| !l.starts_with("cargo install"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "docker://docker.io/library/alpine:3.20",
            &format!("oci:{}:3.20", work.path().join("src").display()),
        );
    assert!(script.contains("wharf serve -c wharf.toml"));
    let bin_dir = Path::new(common::wharf_bin()).parent().unwrap().to_owned();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // Port 5443 is the documented one; make sure nothing else holds it.
    assert!(
        std::net::TcpListener::bind("127.0.0.1:5443").is_ok(),
        "port 5443 is busy; the quickstart needs it"
    );
    let out = Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            // The background server never outlives the script, even when a step fails.
            &format!("set -m\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}"),
        ])
        .current_dir(work.path())
        .env("PATH", path)
        .output()
        .unwrap();
    let log = std::fs::read_to_string(work.path().join("wharf.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "quickstart failed\nstdout:\n{}\nstderr:\n{}\nwharf.log:\n{log}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(work.path().join("pulled/index.json").exists());
    assert!(!log.contains("panicked"), "{log}");
}
