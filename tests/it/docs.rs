//! The commands in docs/quickstart.md, run as written (in a scratch directory, with the built binary
//! on PATH, `cargo install` skipped, and the Docker Hub source image replaced by a local OCI layout).

use std::path::Path;
use std::process::Command;

use crate::common::layout::Layout;

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
    let script = block(&doc, "sh")
        .lines()
        .filter(|l| !l.starts_with("cargo install"))
        .collect::<Vec<_>>()
        .join("\n")
        .replace(
            "docker://docker.io/library/alpine:3.20",
            &format!("oci:{}:3.20", work.path().join("src").display()),
        );
    assert!(script.contains("wharf serve -c wharf.toml"));
    let bin_dir = Path::new(crate::common::wharf_bin())
        .parent()
        .unwrap()
        .to_owned();
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

/// The first block of a document fenced with ```<lang>.
fn block(doc: &str, lang: &str) -> String {
    let fence = format!("```{lang}\n");
    let start = doc.find(&fence).expect("a fenced block") + fence.len();
    let len = doc[start..].find("\n```").expect("closing fence");
    doc[start..start + len].to_owned()
}

/// A `wharf serve` started from a config file; killed on drop.
struct Serving(std::process::Child);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The wharf config of docs/migrate-from-nginx-registry.md, with test certificates and free ports,
/// does what the side-by-side table says: anonymous pulls on the main port, pushes only with a
/// client certificate on the push port, HSTS, deletes disabled, read rate limit.
#[test]
fn nginx_migration_config_behaves_as_documented() {
    use crate::common::pki::{Pki, run_cmd, tls_connect};
    use std::io::BufRead;

    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/migrate-from-nginx-registry.md"),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let toml = block(&doc, "toml");
    for needle in [
        "port = 443\n",
        "port = 4443\n",
        "request.listener == 'push'",
        "delete_enabled = false",
    ] {
        assert!(
            toml.contains(needle),
            "the documented config lost {needle:?}"
        );
    }
    let toml = toml
        .replace(
            "/etc/ssl/registry/fullchain.pem",
            pki.path("server.crt").to_str().unwrap(),
        )
        .replace(
            "/etc/ssl/registry/privkey.pem",
            pki.path("server.key").to_str().unwrap(),
        )
        .replace(
            "/etc/ssl/registry/client-ca.pem",
            pki.path("ca.crt").to_str().unwrap(),
        )
        .replace("/var/lib/wharf", dir.path().join("data").to_str().unwrap())
        .replace("port = 443\n", "port = 0\n")
        .replace("port = 4443\n", "port = 0\n")
        .replace("0.0.0.0", "127.0.0.1");
    let cfg = dir.path().join("wharf.toml");
    std::fs::write(&cfg, &toml).unwrap();
    let (ok, text) = run_cmd(
        Command::new(crate::common::wharf_bin())
            .args(["check-config", "-c"])
            .arg(&cfg),
    );
    assert!(ok, "{text}");
    let mut child = Command::new(crate::common::wharf_bin())
        .args(["serve", "-c"])
        .arg(&cfg)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _serving = Serving(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap();
    let url_of = |word: &str| -> std::net::SocketAddr {
        word.split_once("https://").unwrap().1.parse().unwrap()
    };
    let mut words = line.split_whitespace();
    let main = url_of(words.nth(3).unwrap_or_else(|| panic!("{line}")));
    let push = url_of(
        line.split_whitespace()
            .find(|w| w.starts_with("push="))
            .unwrap_or_else(|| panic!("{line}")),
    );

    let anonymous = pki.client_config(None, false);
    let client = (pki.path("client.crt"), pki.path("client.key"));
    let with_cert = pki.client_config(Some((&client.0, &client.1)), false);
    // Anonymous on 443: reads yes (with HSTS), writes 401.
    let mut m = tls_connect(main, anonymous.clone()).unwrap();
    let r = m.client.get("/v2/");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("strict-transport-security"),
        Some("max-age=31536000")
    );
    let r = m
        .client
        .request("POST", "/v2/team/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 401);
    assert!(r.closes(), "a 401 ends the connection");
    let mut m = tls_connect(main, anonymous.clone()).unwrap();
    // 4443 refuses a handshake without a client certificate.
    // (TLS 1.3 finishes the client's side of the handshake first: the refusal is the alert that
    // answers the first request; a read that merely times out is not a refusal.)
    match tls_connect(push, anonymous.clone()) {
        Err(handshake) => eprintln!("refused at handshake: {handshake}"),
        Ok(mut c) => match c.client.get_within("/v2/", crate::common::CLOSE_WAIT) {
            Ok(r) => panic!(
                "the push port served a client without a certificate: {}",
                r.status
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                panic!(
                    "the push port neither refused nor answered within {:?}",
                    crate::common::CLOSE_WAIT
                )
            }
            Err(e) => assert!(
                e.to_string().contains("CertificateRequired") || e.to_string().contains("alert"),
                "refused, but not for the missing certificate: {e}"
            ),
        },
    }

    // skopeo pushes on 4443 with the certificate and pulls anonymously on 443.
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs.d");
    let push_dir = pki.install_client(&push.to_string(), &certs, "client");
    let main_dir = certs.join(main.to_string());
    std::fs::create_dir_all(&main_dir).unwrap();
    std::fs::copy(pki.path("ca.crt"), main_dir.join("ca.crt")).unwrap();
    let mut src = Layout::new(&work.path().join("src"));
    let layer = src.add_tar_layer("x.bin", 300_000, 5);
    let image = src.add_image(std::slice::from_ref(&layer), "amd64");
    src.tag(&image, "v1");
    let skopeo = |args: &[&str]| {
        let mut c = Command::new(crate::common::tool("skopeo"));
        c.arg("--insecure-policy").args(args);
        run_cmd(&mut c)
    };
    let from = format!("oci:{}:v1", src.dir.display());
    let (ok, text) = skopeo(&[
        "copy",
        "--dest-cert-dir",
        main_dir.to_str().unwrap(),
        &from,
        &format!("docker://{main}/team/app:v1"),
    ]);
    assert!(!ok, "an anonymous push on the main port worked:\n{text}");
    let (ok, text) = skopeo(&[
        "copy",
        "--dest-cert-dir",
        push_dir.to_str().unwrap(),
        &from,
        &format!("docker://{push}/team/app:v1"),
    ]);
    assert!(ok, "{text}");
    let out = work.path().join("out");
    let (ok, text) = skopeo(&[
        "copy",
        "--src-cert-dir",
        main_dir.to_str().unwrap(),
        &format!("docker://{main}/team/app:v1"),
        &format!("oci:{}:v1", out.display()),
    ]);
    assert!(ok, "{text}");
    assert!(
        std::fs::read(Layout::new(&out).blob_path(&layer.digest)).unwrap()
            == std::fs::read(src.blob_path(&layer.digest)).unwrap()
    );

    // Deletes are disabled, even for a client the policy lets do anything.
    let mut p = tls_connect(push, with_cert).unwrap();
    let r = p.client.request(
        "DELETE",
        &format!("/v2/team/app/manifests/{}", image.digest),
        &[],
        b"",
    );
    assert_eq!(r.status, 405);
    assert_eq!(r.error_code(), "UNSUPPORTED");

    // Reads are limited per client: far more than the burst in a row meets 429 + Retry-After.
    let mut limited = None;
    for _ in 0..1000 {
        let r = m.client.get("/v2/");
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        assert_eq!(r.status, 200);
    }
    let r = limited.expect("1000 reads in a row were never limited (burst is 400)");
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert!(r.header("retry-after").is_some());
}
