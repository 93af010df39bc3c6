//! Production mutual TLS: a leaked client key stopped by a CRL (`client_crl`, `wharf cert revoke`,
//! picked up live) or by a rule on its fingerprint, with no restart; handshake failures told apart
//! by reason in the log and in `wharf_tls_handshakes_total`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;

use crate::common::pki::{ClientSpec, Pki, run_cmd, tls_connect};
use crate::common::*;

/// Whether a TLS client with `cfg` gets an answer to `GET /v2/` (TLS 1.3 reports a refused
/// certificate after the client's Finished, so the refusal shows at the first read).
fn answered(s: &Server, cfg: Arc<rustls::ClientConfig>) -> Option<u16> {
    let mut t = tls_connect(s.addr, cfg).ok()?;
    t.client.send_raw(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    t.client.try_read_response(false).map(|r| r.status)
}

fn handshakes(text: &str, reason: &str) -> f64 {
    sample(
        text,
        &format!(
            "wharf_tls_handshakes_total{{listener=\"main\",result=\"failed\",reason=\"{reason}\"}}"
        ),
    )
    .unwrap_or(-1.0)
}

fn wharf_cert(dir: &Path, args: &[&str]) {
    let (ok, out) = run_cmd(
        std::process::Command::new(wharf_bin())
            .arg("cert")
            .args(args)
            .current_dir(dir),
    );
    assert!(ok, "wharf cert {args:?}: {out}");
}

fn a_leaked_key_is_stopped_by_crl_or_fingerprint_without_restart(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let d = dir.path();
    // A CRL to start with: one unrelated certificate revoked.
    pki.client_cert("old", ClientSpec::default());
    wharf_cert(d, &["revoke", "--cert", "old.crt"]);
    pki.client_cert("reader", ClientSpec::default());
    pki.client_cert("leaked2", ClientSpec::default());
    let fingerprint = {
        let der = rustls::pki_types::CertificateDer::pem_file_iter(pki.path("leaked2.crt"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        use sha2::Digest as _;
        sha2::Sha256::digest(der.as_ref())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let cfg = format!(
        "{}client_crl = \"{}\"\n[global.access_policy]\ndefault = \"allow\"\nrules = [\"identity.certificate.fingerprint == '{fingerprint}'\"]\n",
        pki.server_toml(Some("required")),
        pki.path("ca.crl").display()
    );
    let s = Server::start_in(dir, driver, &cfg, "warn,wharf::tls=info");
    let with = |name: &str| {
        pki.client_config(
            Some((
                &pki.path(&format!("{name}.crt")),
                &pki.path(&format!("{name}.key")),
            )),
            false,
        )
    };
    let mut reader = tls_connect(s.addr, with("reader")).unwrap().client;
    let mut leaked = tls_connect(s.addr, with("client")).unwrap().client;
    assert_eq!(leaked.get("/v2/").status, 200);

    // The fingerprint rule refuses one certificate, saying which rule did.
    let mut c = tls_connect(s.addr, with("leaked2")).unwrap().client;
    let r = c.get("/v2/");
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert!(
        r.body_text().contains("global.access_policy.rules[0]"),
        "{}",
        r.body_text()
    );

    // Handshakes that fail, one per reason.
    assert_eq!(answered(&s, pki.client_config(None, false)), None);
    pki.client_cert(
        "rogue",
        ClientSpec {
            other_ca: true,
            ..ClientSpec::default()
        },
    );
    assert_eq!(answered(&s, with("rogue")), None);
    pki.client_cert(
        "expired",
        ClientSpec {
            starts_in_days: -30,
            ends_in_days: -1,
            ..ClientSpec::default()
        },
    );
    assert_eq!(answered(&s, with("expired")), None);
    assert_eq!(
        answered(&s, with("old")),
        None,
        "a revoked certificate was served"
    );

    // The leak: revoke the build-server certificate; the server picks the CRL up by itself.
    wharf_cert(s.dir.path(), &["revoke", "--cert", "client.crt"]);
    s.wait_for_log("server.tls: TLS material reloaded");
    assert_eq!(
        answered(&s, with("client")),
        None,
        "a revoked certificate was served"
    );
    // Its open connection is closed before its next request.
    leaked.send_raw(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        leaked.try_read_response(false).is_none(),
        "a request on a connection with a revoked certificate was answered"
    );
    assert_eq!(answered(&s, with("reader")), Some(200));

    let mut text = String::new();
    for _ in 0..100 {
        text = reader.get("/metrics").body_text();
        if handshakes(&text, "revoked") >= 2.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(handshakes(&text, "no_certificate"), 1.0, "{text}");
    assert_eq!(handshakes(&text, "unknown_issuer"), 1.0, "{text}");
    assert_eq!(handshakes(&text, "expired"), 1.0, "{text}");
    assert_eq!(handshakes(&text, "revoked"), 2.0, "{text}");
    let log = s.log();
    for reason in ["no_certificate", "unknown_issuer", "expired", "revoked"] {
        assert!(
            log.contains(&format!("on listener 'main' failed ({reason})")),
            "{reason}:\n{log}"
        );
    }
}

on_both_drivers!(a_leaked_key_is_stopped_by_crl_or_fingerprint_without_restart);
