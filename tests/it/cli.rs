//! The command line as users meet it: check-config, startup errors naming the key, the embedded
//! default (127.0.0.1:5000, ./data), SIGINT, and the access log.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

fn check_config(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wharf.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(wharf_bin())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn check_config_accepts_valid_and_names_bad_keys() {
    let (ok, out) = check_config(
        "[server]\nport = 5001\n[server.http]\nhead_timeout = \"5s\"\n[storage]\nroot = \"/tmp/x\"\n",
    );
    assert!(ok, "{out}");
    for (text, key) in [
        ("[server]\nprot = 1\n", "prot"),
        ("[server]\nport = \"five\"\n", "port"),
        (
            "[server.http]\nbody_timeout = \"5 fortnights\"\n",
            "body_timeout",
        ),
        (
            "[server.http]\nhead_timeout = \"0s\"\n",
            "server.http.head_timeout",
        ),
        ("[server]\nio_driver = \"kqueue\"\n", "io_driver"),
        (
            "[global]\nmax_manifest_size = 0\n",
            "global.max_manifest_size",
        ),
        (
            "[[server.listener]]\nname = \"main\"\nport = 4443\n",
            "server.listener[0].name",
        ),
        ("[[server.listener]]\nname = \"push\"\n", "port"),
        (
            "[server]\nport = 4443\n[[server.listener]]\nname = \"push\"\nport = 4443\n",
            "server.listener[0].bind_address/port",
        ),
        (
            "[[server.listener]]\nname = \"push\"\nport = 4443\n[server.listener.tls]\nserver_certificate_bundle = \"/nonexistent.pem\"\nserver_private_key = \"/nonexistent.key\"\n",
            "server.listener[0].tls.server_certificate_bundle",
        ),
        (
            "[server.admin]\nport = 5000\n",
            "server.admin.bind_address/port",
        ),
        ("[server.admin]\nport = 9100\nbind = \"x\"\n", "bind"),
    ] {
        let (ok, out) = check_config(text);
        assert!(!ok, "{text:?} should be rejected");
        assert!(
            out.contains(key),
            "error for {text:?} should name {key}: {out}"
        );
    }
    let missing = Command::new(wharf_bin())
        .args(["check-config", "-c", "/nonexistent/wharf.toml"])
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/wharf.toml"));
}

#[test]
fn unusable_storage_root_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), b"not a directory").unwrap();
    std::fs::write(
        dir.path().join("w.toml"),
        "[server]\nport = 0\n[storage]\nroot = \"file/data\"\n",
    )
    .unwrap();
    let out = Command::new(wharf_bin())
        .args(["serve", "-c"])
        .arg(dir.path().join("w.toml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("storage.root"), "{err}");
}

#[test]
fn embedded_default_serves_on_5000_with_local_data_and_stops_on_sigint() {
    let cwd = tempfile::tempdir().unwrap();
    let mut child = Command::new(wharf_bin())
        .arg("serve")
        .current_dir(cwd.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("http://127.0.0.1:5000"), "{line}");
    let mut c = Client::connect("127.0.0.1:5000".parse().unwrap());
    let d = push_blob(&mut c, "default/repo", b"embedded default");
    assert!(
        cwd.path()
            .join("data/blobs/sha256")
            .join(&d[7..9])
            .join(&d[7..])
            .exists()
    );
    drop(c);
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{:?}", out.status);
    let log = String::from_utf8_lossy(&out.stderr);
    let access = log
        .lines()
        .find(|l| l.contains("wharf::access"))
        .unwrap_or_else(|| panic!("no access log line:\n{log}"));
    for part in ["POST", "/v2/default/repo/blobs/uploads/", "201", "us"] {
        assert!(access.contains(part), "access line lacks {part}: {access}");
    }
    assert!(
        !log.contains('\u{1b}'),
        "no terminal colour codes when stderr is not a terminal"
    );
}

#[test]
fn version_and_help() {
    let v = Command::new(wharf_bin()).arg("version").output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("wharf 0."));
    let h = Command::new(wharf_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&h.stdout);
    for cmd in ["serve", "check-config", "version"] {
        assert!(help.contains(cmd), "{help}");
    }
}
