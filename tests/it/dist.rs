//! Packaging: the example configs in dist/ load and validate (and cover every section of the
//! schema), the systemd unit passes `systemd-analyze verify` without warnings, and the server
//! reports readiness and shutdown to systemd (`Type=notify`).

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::pki::Pki;
use wharf::config::Config;

fn dist(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("dist")
        .join(name)
}

/// Dotted keys of a TOML value; tables named by the user (repository names, identity ids) as `*`.
fn keys(v: &toml::Value, prefix: &str, out: &mut BTreeSet<String>) {
    if let toml::Value::Table(t) = v {
        for (k, v) in t {
            let k = if prefix == "repository" || prefix == "auth.identity" {
                "*"
            } else {
                k
            };
            let key = if prefix.is_empty() {
                k.to_owned()
            } else {
                format!("{prefix}.{k}")
            };
            out.insert(key.clone());
            match v {
                // An array of tables (`[[server.listener]]`): the keys of its entries.
                toml::Value::Array(a) => a.iter().for_each(|e| keys(e, &key, out)),
                _ => keys(v, &key, out),
            }
        }
    }
}

#[test]
fn example_config_validates_and_sets_every_key() {
    let text = std::fs::read_to_string(dist("wharf.toml")).unwrap();
    let cfg = Config::parse_str(&text).unwrap();
    cfg.validate().unwrap();
    wharf::auth::validate(&cfg.auth).unwrap();
    wharf::policy::AccessControl::from_config(&cfg).unwrap();
    // Every key of the schema (defaults with each optional table present) is set in the example.
    let mut full = Config::default();
    full.server.tls = cfg.server.tls.clone();
    full.server.listener = cfg.server.listener.clone();
    full.server.admin = cfg.server.admin.clone();
    full.global.access_policy = cfg.global.access_policy.clone();
    full.repository = cfg.repository.clone();
    full.auth.identity = cfg.auth.identity.clone();
    let mut schema = BTreeSet::new();
    keys(&toml::Value::try_from(&full).unwrap(), "", &mut schema);
    let mut example = BTreeSet::new();
    keys(&toml::from_str(&text).unwrap(), "", &mut example);
    let missing: Vec<_> = schema.difference(&example).collect();
    assert!(
        missing.is_empty(),
        "dist/wharf.toml does not set {missing:?}"
    );
    for table in [
        "server.tls",
        "server.listener.tls",
        "server.admin",
        "global.access_policy",
        "repository.*",
        "auth.identity.*",
        "limits",
        "gc",
    ] {
        assert!(example.contains(table), "{table}");
    }
}

#[test]
fn example_config_passes_check_config_with_real_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let text = std::fs::read_to_string(dist("wharf.toml"))
        .unwrap()
        .replace(
            "/etc/wharf/tls/fullchain.pem",
            &pki.path("server.crt").display().to_string(),
        )
        .replace(
            "/etc/wharf/tls/privkey.pem",
            &pki.path("server.key").display().to_string(),
        )
        .replace(
            "/etc/wharf/tls/client-ca.pem",
            &pki.path("ca.crt").display().to_string(),
        )
        .replace(
            "/var/lib/wharf",
            &dir.path().join("data").display().to_string(),
        );
    let path = dir.path().join("wharf.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(crate::common::wharf_bin())
        .args(["check-config", "-c"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let container = Config::load(&dist("container.toml")).unwrap();
    assert_eq!(container.storage.root, Path::new("/var/lib/wharf"));
}

#[test]
fn systemd_unit_verifies_without_warnings() {
    let dir = tempfile::tempdir().unwrap();
    // verify checks that ExecStart's program exists: point it at the built binary.
    let unit = std::fs::read_to_string(dist("wharf.service"))
        .unwrap()
        .replace("/usr/local/bin/wharf", crate::common::wharf_bin());
    for must in [
        "Type=notify",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "ReadWritePaths=/var/lib/wharf",
        "LimitNOFILE=",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(unit.contains(must), "dist/wharf.service lacks {must}");
    }
    let path = dir.path().join("wharf.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd; tests/setup.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr);
    // Lines verify merely ignores still exit 0: any message about our unit is a failure.
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("wharf.service"))
        .collect();
    assert!(out.status.success() && ours.is_empty(), "{err}");
}

#[test]
fn readiness_and_stopping_are_reported_to_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let cfg = dir.path().join("w.toml");
    std::fs::write(&cfg, "[server]\nport = 0\n[storage]\nroot = \"data\"\n").unwrap();
    let mut child = Command::new(crate::common::wharf_bin())
        .args(["serve", "-c"])
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut buf = [0u8; 512];
    let n = sock.recv(&mut buf).expect("READY=1 from wharf");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
    assert!(msg.contains(&format!("MAINPID={}", child.id())), "{msg}");
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"RELOADING=1");
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
    assert!(child.wait().unwrap().success());
}

fn run(cmd: &mut Command) -> String {
    let (ok, out) = crate::common::pki::run_cmd(cmd);
    assert!(ok, "{cmd:?}:\n{out}");
    out
}

/// The Debian package for bare-metal sites: built by dist/deb/build.sh (dpkg-deb), installed with
/// `dpkg -i` on this machine (the tests run as root), and the installed binary serves as the
/// `wharf` system user from /var/lib/wharf. Purged afterwards; the stored data stays.
#[test]
fn the_debian_package_installs_and_its_binary_serves_as_the_wharf_user() {
    let out = tempfile::tempdir().unwrap();
    let deb = run(Command::new("bash")
        .arg(dist("deb/build.sh"))
        .arg(out.path())
        .env("WHARF_BIN", crate::common::wharf_bin()));
    let deb = PathBuf::from(deb.trim());
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    for f in [
        "./usr/bin/wharf",
        "./lib/systemd/system/wharf.service",
        "./etc/wharf/wharf.toml",
        "./usr/share/doc/wharf/wharf.toml.example",
    ] {
        assert!(contents.contains(f), "{f} missing:\n{contents}");
    }
    run(Command::new("dpkg").arg("-i").arg(&deb));
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "wharf"]).output();
        }
    }
    let _purge = Purge;
    assert!(
        run(Command::new("/usr/bin/wharf").arg("version"))
            .contains(&format!("wharf {}", env!("CARGO_PKG_VERSION")))
    );
    run(Command::new("getent").args(["passwd", "wharf"]));
    let st = run(Command::new("stat").args(["-c", "%U %a", "/var/lib/wharf"]));
    assert_eq!(st.trim(), "wharf 700");
    let unit = std::fs::read_to_string("/lib/systemd/system/wharf.service").unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/wharf serve -c /etc/wharf/wharf.toml"),
        "{unit}"
    );
    run(Command::new("/usr/bin/wharf").args(["check-config", "-c", "/etc/wharf/wharf.toml"]));

    // The installed binary, as the system user, on the installed storage root (a free port).
    let cfg = out.path().join("pkg.toml");
    std::fs::write(
        &cfg,
        "[server]\nport = 0\n[storage]\nroot = \"/var/lib/wharf\"\n",
    )
    .unwrap();
    std::fs::set_permissions(
        out.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut child = Command::new("runuser")
        .args(["-u", "wharf", "--", "/usr/bin/wharf", "serve", "-c"])
        .arg(&cfg)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr: std::net::SocketAddr = line
        .strip_prefix("wharf listening on http://")
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("the installed wharf did not start: {line:?}"))
        .parse()
        .unwrap();
    let mut c = crate::common::Client::connect(addr);
    let digest = crate::common::push_blob(&mut c, "pkg/test", b"stored by the packaged wharf");
    assert_eq!(c.get(&format!("/v2/pkg/test/blobs/{digest}")).status, 200);
    let hex = digest.split_once(':').unwrap().1;
    let owner = run(Command::new("stat")
        .args(["-c", "%U"])
        .arg(format!("/var/lib/wharf/blobs/sha256/{}/{hex}", &hex[..2])));
    assert_eq!(owner.trim(), "wharf");
    // The server's pid is in its storage lock; runuser waits for it.
    let pid: i32 = std::fs::read_to_string("/var/lib/wharf/serve.lock")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: kill(2) on the server this test started.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let _ = child.wait();
}
