//! TLS configuration and tooling through the real binary: startup errors that name the key and
//! file, the private-key formats users bring (PKCS#8, PKCS#1, SEC1) and full-chain bundles,
//! `wharf check-tls`, and the `wharf cert` helpers.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use crate::common::pki::{Pki, run_cmd, wharf};
use crate::common::*;

fn openssl(dir: &Path, args: &[&str]) -> String {
    let (ok, text) = run_cmd(Command::new("openssl").current_dir(dir).args(args));
    assert!(ok, "openssl {args:?}: {text}");
    text
}

/// Write a config with `tls` as its `[server.tls]` body; `serve` and `check-config` must both fail
/// naming every string in `expect`, and `serve` must not start listening.
fn refused(dir: &Path, tls: &str, expect: &[&str]) {
    let cfg = dir.join("bad.toml");
    std::fs::write(
        &cfg,
        format!("[server]\nport = 0\n[server.tls]\n{tls}[storage]\nroot = \"data\"\n"),
    )
    .unwrap();
    for cmd in ["serve", "check-config"] {
        let (ok, text) = run_cmd(Command::new(wharf_bin()).args([cmd, "-c"]).arg(&cfg));
        assert!(!ok, "{cmd} accepted {tls}: {text}");
        assert!(
            !text.contains("listening"),
            "{cmd} started listening: {text}"
        );
        for e in expect {
            assert!(text.contains(e), "{cmd}: {e:?} missing from: {text}");
        }
    }
}

#[test]
fn each_bad_tls_setting_is_a_startup_error_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let p = |n: &str| pki.path(n).display().to_string();
    let pair = |c: &str, k: &str| {
        format!("server_certificate_bundle = \"{c}\"\nserver_private_key = \"{k}\"\n")
    };
    // Missing files.
    refused(
        dir.path(),
        &pair(&p("nope.crt"), &p("server.key")),
        &[
            "server.tls.server_certificate_bundle",
            "nope.crt",
            "cannot read",
        ],
    );
    refused(
        dir.path(),
        &pair(&p("server.crt"), &p("nope.key")),
        &["server.tls.server_private_key", "nope.key", "cannot read"],
    );
    // The client's key with the server's certificate.
    refused(
        dir.path(),
        &pair(&p("server.crt"), &p("client.key")),
        &[
            "server.tls.server_private_key",
            "does not match",
            "server.crt",
        ],
    );
    // "required" without CAs names both keys.
    refused(
        dir.path(),
        &format!(
            "{}client_auth = \"required\"\n",
            pair(&p("server.crt"), &p("server.key"))
        ),
        &["server.tls.client_auth", "server.tls.client_ca_bundle"],
    );
    // A CA bundle without certificates, and one that is not PEM at all.
    std::fs::write(dir.path().join("empty.pem"), "# nothing here\n").unwrap();
    refused(
        dir.path(),
        &format!(
            "{}client_ca_bundle = \"{}\"\n",
            pair(&p("server.crt"), &p("server.key")),
            p("empty.pem")
        ),
        &[
            "server.tls.client_ca_bundle",
            "empty.pem",
            "no PEM certificate",
        ],
    );
    // A key file holding a certificate; a certificate file holding a key.
    refused(
        dir.path(),
        &pair(&p("server.crt"), &p("server.crt")),
        &["server.tls.server_private_key", "no PEM private key"],
    );
    refused(
        dir.path(),
        &pair(&p("server.key"), &p("server.key")),
        &["server.tls.server_certificate_bundle", "no PEM certificate"],
    );
    // PEM armour around bytes that are not a certificate.
    std::fs::write(
        dir.path().join("junk.crt"),
        "-----BEGIN CERTIFICATE-----\nAAECAwQFBgcICQ==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    refused(
        dir.path(),
        &pair(&p("junk.crt"), &p("server.key")),
        &["server.tls.server_certificate_bundle", "junk.crt"],
    );
    // An encrypted key gets told how to decrypt it.
    openssl(
        dir.path(),
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-aes256",
            "-pass",
            "pass:secret",
            "-out",
            "enc.key",
        ],
    );
    refused(
        dir.path(),
        &pair(&p("server.crt"), &p("enc.key")),
        &["server.tls.server_private_key", "encrypted"],
    );
    // An unknown key in the table.
    refused(
        dir.path(),
        &format!(
            "{}certificate = \"x\"\n",
            pair(&p("server.crt"), &p("server.key"))
        ),
        &["certificate"],
    );
}

/// Serve with `cert`/`key` and fetch `/v2/` with curl trusting `ca`.
fn serves_with(driver: &str, dir: tempfile::TempDir, cert: &str, key: &str, ca: &str) {
    let tls = format!(
        "[server.tls]\nserver_certificate_bundle = \"{cert}\"\nserver_private_key = \"{key}\"\n"
    );
    let ca = dir.path().join(ca);
    let s = Server::start_in(dir, driver, &tls, "warn");
    let (ok, text) = run_cmd(
        Command::new("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&ca)
            .arg(format!("https://localhost:{}/v2/", s.addr.port())),
    );
    assert!(ok && text == "200", "{cert}/{key}: {text}");
}

fn pkcs1_and_sec1_keys_and_full_chains_load(driver: &str) {
    for (key_cmd, marker) in [
        (
            vec!["genrsa", "-traditional", "-out", "k.pem", "2048"],
            "BEGIN RSA PRIVATE KEY",
        ),
        (
            vec![
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                "k.pem",
            ],
            "BEGIN EC PRIVATE KEY",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        openssl(dir.path(), &key_cmd);
        let key = std::fs::read_to_string(dir.path().join("k.pem")).unwrap();
        assert!(key.contains(marker), "{key}");
        openssl(
            dir.path(),
            &[
                "req",
                "-x509",
                "-new",
                "-key",
                "k.pem",
                "-subj",
                "/CN=localhost",
                "-days",
                "30",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
                "-out",
                "c.pem",
            ],
        );
        serves_with(driver, dir, "c.pem", "k.pem", "c.pem");
    }
    // certbot-style fullchain.pem: leaf then CA.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let full = format!("{}{}", pki.pem("server.crt"), pki.pem("ca.crt"));
    std::fs::write(pki.path("fullchain.pem"), full).unwrap();
    serves_with(driver, dir, "fullchain.pem", "server.key", "ca.crt");
}

on_both_drivers!(pkcs1_and_sec1_keys_and_full_chains_load);

fn check_tls(dir: &Path, bundle: &str, hosts: &[&str]) -> (bool, String) {
    let cfg = dir.join(format!("check-{bundle}.toml"));
    std::fs::write(
        &cfg,
        format!("[server.tls]\nserver_certificate_bundle = \"{bundle}\"\nserver_private_key = \"server.key\"\nclient_ca_bundle = \"ca.crt\"\n"),
    )
    .unwrap();
    let mut cmd = Command::new(wharf_bin());
    cmd.args(["check-tls", "-c"]).arg(&cfg);
    for h in hosts {
        cmd.args(["--host", h]);
    }
    run_cmd(&mut cmd)
}

#[test]
fn check_tls_reports_key_chain_expiry_and_names() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (ok, text) = check_tls(dir.path(), "server.crt", &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("ok: certificate, key and client CAs load; the key matches"),
        "{text}"
    );
    assert!(
        text.contains("ok: subjectAltName covers 127.0.0.1"),
        "{text}"
    );

    let (ok, text) = check_tls(
        dir.path(),
        "server.crt",
        &["localhost", "registry.example.com"],
    );
    assert!(!ok, "{text}");
    assert!(
        text.contains("ok: subjectAltName covers localhost"),
        "{text}"
    );
    assert!(
        text.contains("error: subjectAltName does not cover registry.example.com"),
        "{text}"
    );

    // CA first, then the leaf: wrong order (and the key no longer matches the first certificate).
    std::fs::write(
        pki.path("reversed.pem"),
        format!("{}{}", pki.pem("ca.crt"), pki.pem("server.crt")),
    )
    .unwrap();
    let (ok, text) = check_tls(dir.path(), "reversed.pem", &[]);
    assert!(!ok, "{text}");
    assert!(text.contains("error: chain order"), "{text}");
    assert!(
        text.contains("is a CA certificate (CA:true, no subjectAltName)"),
        "{text}"
    );

    // In the right order the chain is checked link by link.
    std::fs::write(
        pki.path("full.pem"),
        format!("{}{}", pki.pem("server.crt"), pki.pem("ca.crt")),
    )
    .unwrap();
    let (ok, text) = check_tls(dir.path(), "full.pem", &[]);
    assert!(ok, "{text}");
    assert!(text.contains("ok: chain: #1 is issued by #2"), "{text}");

    // Expiring soon is a warning, not an error.
    let soon = tempfile::tempdir().unwrap();
    pki.server_cert_in(soon.path(), "server", &["--days", "5"]);
    let (ok, text) = check_tls(soon.path(), "server.crt", &[]);
    assert!(ok, "{text}");
    assert!(
        text.contains("warning: server.tls.server_certificate_bundle #1"),
        "{text}"
    );
    assert!(
        text.contains("(4 days left)") || text.contains("(5 days left)"),
        "{text}"
    );
}

/// `check-tls` looks at every listener's TLS table, each under its own name.
#[test]
fn check_tls_checks_every_listener() {
    let dir = tempfile::tempdir().unwrap();
    let _pki = Pki::new(dir.path());
    let cfg = dir.path().join("listeners.toml");
    std::fs::write(
        &cfg,
        "[server]\nport = 5000\n[[server.listener]]\nname = \"push\"\nport = 5001\n\
         [server.listener.tls]\nserver_certificate_bundle = \"client.crt\"\nserver_private_key = \"client.key\"\n",
    )
    .unwrap();
    let (ok, text) = run_cmd(
        Command::new(wharf_bin())
            .args(["check-tls", "-c"])
            .arg(&cfg),
    );
    assert!(!ok, "{text}");
    assert!(text.contains("[server.listener[0].tls]"), "{text}");
    assert!(
        text.contains("error: server.listener[0].tls.server_certificate_bundle")
            && text.contains("lacks serverAuth"),
        "{text}"
    );
}

/// A CA or a client certificate given as the server certificate stops startup, naming the key.
#[test]
fn a_ca_or_client_certificate_as_server_certificate_is_a_startup_error() {
    let dir = tempfile::tempdir().unwrap();
    let _pki = Pki::new(dir.path());
    for (cert, key, says) in [
        (
            "ca.crt",
            "ca.key",
            "is a CA certificate (CA:true, no subjectAltName)",
        ),
        ("client.crt", "client.key", "lacks serverAuth"),
    ] {
        refused(
            dir.path(),
            &format!("server_certificate_bundle = \"{cert}\"\nserver_private_key = \"{key}\"\n"),
            &["server.tls.server_certificate_bundle", says],
        );
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn cert_helpers_write_private_keys_0600_and_never_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    for k in ["ca.key", "server.key", "client.key"] {
        assert_eq!(mode(&pki.path(k)), 0o600, "{k}");
    }
    assert_eq!(mode(&pki.path("ca.crt")), 0o644);
    let before = pki.pem("ca.key");
    let out = Command::new(wharf_bin())
        .args(["cert", "ca", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(pki.pem("ca.key"), before, "the CA key was overwritten");

    // The certificates carry what their guides promise.
    use x509_parser::prelude::*;
    let der = |name: &str| {
        rustls::pki_types::pem::PemObject::from_pem_file(pki.path(name))
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap()
    };
    let server = der("server.crt");
    let (_, s) = X509Certificate::from_der(&server).unwrap();
    assert!(s.extended_key_usage().unwrap().unwrap().value.server_auth);
    let sans = format!(
        "{:?}",
        s.subject_alternative_name()
            .unwrap()
            .unwrap()
            .value
            .general_names
    );
    assert!(
        sans.contains("DNSName(\"localhost\")") && sans.contains("IPAddress([127, 0, 0, 1])"),
        "{sans}"
    );
    let client = der("client.crt");
    let (_, c) = X509Certificate::from_der(&client).unwrap();
    assert!(c.extended_key_usage().unwrap().unwrap().value.client_auth);
    assert_eq!(c.subject().to_string(), "CN=build-server, O=Infrastructure");
    let ca = der("ca.crt");
    let (_, a) = X509Certificate::from_der(&ca).unwrap();
    assert!(a.is_ca());
    assert!(c.verify_signature(Some(a.public_key())).is_ok());
}

#[test]
fn install_client_lays_out_certs_d_for_docker_podman_and_containerd() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let certs_d = dir.path().join("certs.d");
    wharf(&[
        "cert",
        "install-client",
        "--registry",
        "registry.example.com:4443",
        "--dir",
        certs_d.to_str().unwrap(),
        "--from",
        dir.path().to_str().unwrap(),
    ]);
    let d = certs_d.join("registry.example.com:4443");
    assert_eq!(
        std::fs::read_to_string(d.join("ca.crt")).unwrap(),
        pki.pem("ca.crt")
    );
    assert_eq!(
        std::fs::read_to_string(d.join("client.cert")).unwrap(),
        pki.pem("client.crt")
    );
    assert_eq!(
        std::fs::read_to_string(d.join("client.key")).unwrap(),
        pki.pem("client.key")
    );
    assert_eq!(mode(&d.join("client.key")), 0o600);
    let hosts: toml::Value =
        toml::from_str(&std::fs::read_to_string(d.join("hosts.toml")).unwrap()).unwrap();
    assert_eq!(
        hosts["server"].as_str(),
        Some("https://registry.example.com:4443")
    );
    let host = &hosts["host"]["https://registry.example.com:4443"];
    assert_eq!(
        host["ca"].as_str().unwrap(),
        d.join("ca.crt").to_str().unwrap()
    );
    assert_eq!(
        host["client"][0][1].as_str().unwrap(),
        d.join("client.key").to_str().unwrap()
    );
    // A registry name that would escape the certs.d directory is refused.
    let out = Command::new(wharf_bin())
        .args(["cert", "install-client", "--registry", "../evil", "--dir"])
        .arg(&certs_d)
        .arg("--from")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
}

/// Separate server and client CAs, renewal keeping (or replacing) the key, and revocation by the
/// right CA only.
#[test]
fn cert_lifecycle_separate_cas_renewal_and_revocation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = d.to_str().unwrap();
    wharf(&[
        "cert",
        "ca",
        "--out",
        o,
        "--name",
        "server-ca",
        "--cn",
        "server CA",
    ]);
    wharf(&[
        "cert",
        "ca",
        "--out",
        o,
        "--name",
        "client-ca",
        "--cn",
        "client CA",
    ]);
    wharf(&[
        "cert",
        "server",
        "--out",
        o,
        "--ca",
        "server-ca",
        "--host",
        "registry.test",
    ]);
    wharf(&[
        "cert",
        "client",
        "--out",
        o,
        "--ca",
        "client-ca",
        "--cn",
        "ci",
        "--org",
        "CI",
    ]);
    assert!(openssl(d, &["x509", "-in", "server.crt", "-noout", "-issuer"]).contains("server CA"));
    assert!(openssl(d, &["x509", "-in", "client.crt", "-noout", "-issuer"]).contains("client CA"));
    openssl(d, &["verify", "-CAfile", "client-ca.crt", "client.crt"]);

    let read = |n: &str| std::fs::read_to_string(d.join(n)).unwrap();
    let serial = |n: &str| openssl(d, &["x509", "-in", n, "-noout", "-serial"]);
    let end = |n: &str| openssl(d, &["x509", "-in", n, "-noout", "-enddate"]);
    let pubkey = |n: &str| openssl(d, &["x509", "-in", n, "-noout", "-pubkey"]);
    let (key, s1, e1, p1) = (
        read("client.key"),
        serial("client.crt"),
        end("client.crt"),
        pubkey("client.crt"),
    );
    wharf(&[
        "cert",
        "client",
        "--out",
        o,
        "--ca",
        "client-ca",
        "--renew",
        "--days",
        "5",
    ]);
    assert_eq!(read("client.key"), key, "--renew replaced the key");
    assert_ne!(serial("client.crt"), s1);
    assert_ne!(end("client.crt"), e1);
    assert_eq!(pubkey("client.crt"), p1);
    let subject = openssl(d, &["x509", "-in", "client.crt", "-noout", "-subject"]);
    assert!(
        subject.contains("CN = ci") && subject.contains("O = CI"),
        "{subject}"
    );
    openssl(d, &["verify", "-CAfile", "client-ca.crt", "client.crt"]);
    // A new key too; the server certificate keeps its names and usage.
    let server_pub = pubkey("server.crt");
    wharf(&[
        "cert",
        "server",
        "--out",
        o,
        "--ca",
        "server-ca",
        "--renew",
        "--new-key",
    ]);
    assert_ne!(pubkey("server.crt"), server_pub);
    let ext = openssl(
        d,
        &[
            "x509",
            "-in",
            "server.crt",
            "-noout",
            "-ext",
            "subjectAltName,extendedKeyUsage",
        ],
    );
    assert!(
        ext.contains("DNS:registry.test") && ext.contains("TLS Web Server Authentication"),
        "{ext}"
    );
    let (ok, out) = run_cmd(Command::new(wharf_bin()).args(["check-tls", "-c"]).arg({
        let p = d.join("t.toml");
        std::fs::write(&p, "[server.tls]\nserver_certificate_bundle = \"server.crt\"\nserver_private_key = \"server.key\"\n").unwrap();
        p
    }).args(["--host", "registry.test"]));
    assert!(ok, "the renewed pair does not load: {out}");

    // Revocation names the right CA only.
    let (ok, out) = run_cmd(
        Command::new(wharf_bin())
            .args(["cert", "revoke", "--out", o, "--ca", "server-ca", "--cert"])
            .arg(d.join("client.crt")),
    );
    assert!(!ok && out.contains("name its CA with --ca"), "{out}");
    wharf(&[
        "cert",
        "revoke",
        "--out",
        o,
        "--ca",
        "client-ca",
        "--cert",
        d.join("client.crt").to_str().unwrap(),
    ]);
    let crl = openssl(d, &["crl", "-in", "client-ca.crl", "-noout", "-text"]);
    let hex = serial("client.crt")
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    assert!(crl.contains(&hex), "{crl}");
    let (ok, out) = run_cmd(
        Command::new("openssl")
            .args([
                "verify",
                "-crl_check",
                "-CAfile",
                "client-ca.crt",
                "-CRLfile",
                "client-ca.crl",
                "client.crt",
            ])
            .current_dir(d),
    );
    assert!(!ok && out.contains("revoked"), "{out}");
}

/// `wharf_build_info` and the notAfter of each listener's certificate and client CAs.
#[test]
fn build_info_and_certificate_expiry_are_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let not_after = |n: &str| {
        let out = openssl(dir.path(), &["x509", "-in", n, "-noout", "-enddate"]);
        let (ok, secs) = run_cmd(Command::new("date").args([
            "-u",
            "+%s",
            "-d",
            out.trim().trim_start_matches("notAfter="),
        ]));
        assert!(ok, "{secs}");
        secs.trim().to_owned()
    };
    let (server, ca) = (not_after("server.crt"), not_after("ca.crt"));
    let s = Server::start_in(dir, "epoll", &pki.server_toml(Some("optional")), "warn");
    let mut c = crate::common::pki::tls_connect(s.addr, pki.client_config(None, false))
        .unwrap()
        .client;
    let text = c.get("/metrics").body_text();
    assert!(
        text.contains(&format!(
            "wharf_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("wharf_tls_certificate_expiry_timestamp_seconds{{listener=\"main\",certificate=\"server\"}} {server}\n")),
        "{text}"
    );
    assert!(
        text.contains(&format!("wharf_tls_certificate_expiry_timestamp_seconds{{listener=\"main\",certificate=\"client_ca:CN=wharf test CA\"}} {ca}\n")),
        "{text}"
    );
}
