//! TLS and mutual TLS end to end: real handshakes against the real binary with certificates made
//! at test time (by `wharf cert`, rcgen and openssl). Rogue certificates are presented with curl,
//! which (unlike Go clients) sends whatever certificate it is given.

use std::path::Path;
use std::process::Command;

use crate::common::pki::{ClientSpec, Pki, tls_connect};
use crate::common::*;
use rcgen::{DnType, DnValue, ExtendedKeyUsagePurpose};
use rustls::pki_types::pem::PemObject;

/// Logs the TLS decisions and access lines the tests read.
const LOG: &str = "warn,wharf::tls=debug,wharf::access=info";

fn tls_server(driver: &str, client_auth: Option<&str>) -> (Server, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let s = Server::start_in(dir, driver, &pki.server_toml(client_auth), LOG);
    assert_eq!(s.scheme, "https");
    (s, pki)
}

/// `curl` to `/v2/` with an optional client certificate: Ok(status) or Err(curl's complaint).
fn curl(
    s: &Server,
    pki: &Pki,
    cert: Option<(&Path, &Path)>,
    extra: &[&str],
) -> Result<u16, String> {
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "--max-time",
        "20",
        "--cacert",
    ])
    .arg(pki.path("ca.crt"))
    .args(extra);
    if let Some((crt, key)) = cert {
        c.arg("--cert").arg(crt).arg("--key").arg(key);
    }
    c.arg(format!("https://localhost:{}/v2/", s.addr.port()));
    let out = c
        .output()
        .expect("curl is missing (tests/setup.sh installs it)");
    let code = String::from_utf8_lossy(&out.stdout).to_string();
    match (out.status.success(), code.parse::<u16>()) {
        (true, Ok(c)) if c != 0 => Ok(c),
        _ => Err(format!("{code} {}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// The rogue certificates every mode must refuse, with the reason the server logs for each.
fn rogue_certs(
    pki: &Pki,
) -> Vec<(
    &'static str,
    (std::path::PathBuf, std::path::PathBuf),
    &'static str,
)> {
    vec![
        (
            "other CA",
            pki.client_cert(
                "rogue",
                ClientSpec {
                    other_ca: true,
                    ..Default::default()
                },
            ),
            "UnknownIssuer",
        ),
        (
            "expired",
            pki.client_cert(
                "expired",
                ClientSpec {
                    starts_in_days: -30,
                    ends_in_days: -1,
                    ..Default::default()
                },
            ),
            "certificate expired",
        ),
        (
            "not yet valid",
            pki.client_cert(
                "future",
                ClientSpec {
                    starts_in_days: 2,
                    ends_in_days: 30,
                    ..Default::default()
                },
            ),
            "not valid before",
        ),
        (
            "server-only usage",
            pki.client_cert(
                "wrongusage",
                ClientSpec {
                    usage: ExtendedKeyUsagePurpose::ServerAuth,
                    ..Default::default()
                },
            ),
            "extended key usage",
        ),
    ]
}

fn refuses_rogues(s: &Server, pki: &Pki) {
    for (what, (crt, key), reason) in rogue_certs(pki) {
        let r = curl(s, pki, Some((&crt, &key)), &[]);
        assert!(r.is_err(), "{what} certificate was accepted: {r:?}");
        s.wait_for_log(reason);
    }
}

fn required_mode_accepts_valid_and_refuses_missing_or_rogue(driver: &str) {
    let (s, pki) = tls_server(driver, Some("required"));
    let client = (pki.path("client.crt"), pki.path("client.key"));
    assert_eq!(curl(&s, &pki, Some((&client.0, &client.1)), &[]), Ok(200));
    assert_eq!(
        curl(
            &s,
            &pki,
            Some((&client.0, &client.1)),
            &["--tlsv1.2", "--tls-max", "1.2"]
        ),
        Ok(200),
        "TLS 1.2"
    );
    let none = curl(&s, &pki, None, &[]);
    assert!(
        none.is_err(),
        "no certificate was accepted in required mode: {none:?}"
    );
    s.wait_for_log("peer sent no certificates");
    refuses_rogues(&s, &pki);
    s.wait_for_log("\"build-server\" GET /v2/ 200");
}

fn optional_mode_accepts_anonymous_and_refuses_rogue(driver: &str) {
    let (s, pki) = tls_server(driver, Some("optional"));
    assert_eq!(curl(&s, &pki, None, &[]), Ok(200));
    s.wait_for_log(" - GET /v2/ 200");
    let client = (pki.path("client.crt"), pki.path("client.key"));
    assert_eq!(curl(&s, &pki, Some((&client.0, &client.1)), &[]), Ok(200));
    refuses_rogues(&s, &pki);
}

fn the_accepted_ca_names_are_advertised(driver: &str) {
    let (s, pki) = tls_server(driver, Some("optional"));
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &s.host(), "-tls1_2", "-CAfile"])
        .arg(pki.path("ca.crt"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl is missing (tests/setup.sh installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let section = text
        .split("Acceptable client certificate CA names")
        .nth(1)
        .unwrap_or_else(|| panic!("no CertificateRequest CA names:\n{text}"));
    assert!(section.contains("CN = wharf test CA"), "{section}");
}

fn plain_http_to_the_tls_port_gets_a_readable_400(driver: &str) {
    let (s, _pki) = tls_server(driver, Some("required"));
    let mut c = s.client();
    let r = c.get("/v2/");
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("use https://"));
    assert!(c.is_closed());
}

fn plain_server_has_no_tls(driver: &str) {
    // Without [server.tls] the listener stays plain HTTP (and says so).
    let s = Server::start(driver);
    assert_eq!(s.scheme, "http");
}

fn identity_of_several_names_and_string_types_reaches_requests(driver: &str) {
    let (s, pki) = tls_server(driver, Some("optional"));
    const CN: &[u64] = &[2, 5, 4, 3];
    const O: &[u64] = &[2, 5, 4, 10];
    let (c, k) = pki.client_cert(
        "multi",
        ClientSpec {
            subject: vec![
                (
                    DnType::CommonName,
                    DnValue::Utf8String("build-server".into()),
                ),
                (
                    DnType::CustomDnType(CN.to_vec()),
                    DnValue::BmpString("ci-Ω".try_into().unwrap()),
                ),
                (
                    DnType::OrganizationName,
                    DnValue::PrintableString("Infrastructure".try_into().unwrap()),
                ),
                (
                    DnType::CustomDnType(O.to_vec()),
                    DnValue::UniversalString("DevOps 🚢".try_into().unwrap()),
                ),
            ],
            ..Default::default()
        },
    );
    let mut t = tls_connect(s.addr, pki.client_config(Some((&c, &k)), false)).unwrap();
    assert_eq!(t.client.get("/v2/").status, 200);
    s.wait_for_log(
        r#"common_names: ["build-server", "ci-Ω"], organizations: ["Infrastructure", "DevOps 🚢"]"#,
    );
    s.wait_for_log(r#""build-server" GET /v2/ 200"#);

    let (c, k) = pki.client_cert(
        "nosubject",
        ClientSpec {
            subject: vec![],
            ..Default::default()
        },
    );
    let mut t = tls_connect(s.addr, pki.client_config(Some((&c, &k)), false)).unwrap();
    assert_eq!(t.client.get("/v2/").status, 200);
    s.wait_for_log("common_names: [], organizations: []");
}

fn resumed_sessions_keep_the_identity(driver: &str) {
    let (s, pki) = tls_server(driver, Some("required"));
    let client = (pki.path("client.crt"), pki.path("client.key"));
    for tls12 in [false, true] {
        let cfg = pki.client_config(Some((&client.0, &client.1)), tls12);
        let mut first = tls_connect(s.addr, cfg.clone()).unwrap();
        assert!(!first.resumed);
        // The request makes the client read the session tickets sent after the handshake.
        assert_eq!(first.client.get("/v2/").status, 200);
        let mut second = tls_connect(s.addr, cfg).unwrap();
        assert!(
            second.resumed,
            "tls12={tls12}: the second handshake was not resumed"
        );
        assert_eq!(second.client.get("/v2/").status, 200);
        let v = if tls12 { "TLSv1.2" } else { "TLSv1.3" };
        s.wait_for_log(&format!(
            "{v} resumed, client certificate Some(CertIdentity {{ common_names: [\"build-server\"]"
        ));
    }
}

fn blobs_stream_over_tls_both_ways(driver: &str) {
    let (s, pki) = tls_server(driver, Some("required"));
    let client = (pki.path("client.crt"), pki.path("client.key"));
    let cfg = pki.client_config(Some((&client.0, &client.1)), false);
    let mut t = tls_connect(s.addr, cfg.clone()).unwrap();
    let data: Vec<u8> = (0..9_000_000u32)
        .map(|i| (i * 7 + i / 4099) as u8)
        .collect();
    let d = push_blob(&mut t.client, "tls/big", &data);
    // Chunked upload of a second blob through PATCH.
    let other = &data[..3_000_000];
    let r = t
        .client
        .request("POST", "/v2/tls/big/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_owned();
    let r = t.client.request(
        "PATCH",
        &loc,
        &[("Content-Type", "application/octet-stream")],
        other,
    );
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_owned();
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = t.client.request(
        "PUT",
        &format!("{loc}{sep}digest={}", sha256(other)),
        &[],
        b"",
    );
    assert_eq!(r.status, 201);
    // Parked (ciphertext buffers freed; the gauge says so, the scraping connection is not
    // parked while it is served), then pull on the same connection.
    crate::common::wait_for("the TLS connection to park", || {
        let mut m = tls_connect(s.addr, cfg.clone()).unwrap();
        let text = m.client.get("/metrics").body_text();
        crate::common::sample(&text, "wharf_connections_parked") == Some(1.0)
    });
    // Pull (file → buffer → rustls), whole and by range, on the same keep-alive connection.
    let r = t.client.get(&format!("/v2/tls/big/blobs/{d}"));
    assert_eq!(r.status, 200);
    assert!(r.body == data, "downloaded blob differs");
    let r = t.client.request(
        "GET",
        &format!("/v2/tls/big/blobs/{d}"),
        &[("Range", "bytes=1000000-4999999")],
        b"",
    );
    assert_eq!(r.status, 206);
    assert!(r.body[..] == data[1_000_000..5_000_000]);
    let r = t.client.request(
        "HEAD",
        &format!("/v2/tls/big/blobs/{}", sha256(other)),
        &[],
        b"",
    );
    assert_eq!(r.header("content-length"), Some("3000000"));
}

/// Replace a file the way certbot's renewal and Kubernetes' secret updates do: a new file renamed
/// over the old name.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rotation_reaches_new_handshakes_and_spares_open_connections(driver: &str) {
    let (s, pki) = tls_server(driver, Some("required"));
    let client = (pki.path("client.crt"), pki.path("client.key"));
    let cfg = pki.client_config(Some((&client.0, &client.1)), false);
    let mut open = tls_connect(s.addr, cfg.clone()).unwrap();
    assert_eq!(open.client.get("/v2/").status, 200);
    let old = open.server_cert.clone();
    // Under load: new mTLS connections keep arriving through every reload below; none may fail.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (stop, cfg, addr) = (stop.clone(), cfg.clone(), s.addr);
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut c = tls_connect(addr, cfg.clone()).expect("handshake during a reload");
                assert_eq!(c.client.get("/v2/").status, 200);
                n += 1;
            }
            n
        })
    };

    // 1. Files change on disk: the watcher picks them up.
    let fresh = tempfile::tempdir().unwrap();
    pki.server_cert_in(fresh.path(), "server", &[]);
    let new_crt = std::fs::read_to_string(fresh.path().join("server.crt")).unwrap();
    replace(
        &pki.path("server.key"),
        &std::fs::read_to_string(fresh.path().join("server.key")).unwrap(),
    );
    replace(&pki.path("server.crt"), &new_crt);
    s.wait_for_log("TLS material reloaded (files changed)");
    let now = tls_connect(s.addr, cfg.clone()).unwrap();
    assert_ne!(
        now.server_cert, old,
        "a new handshake still got the old certificate"
    );
    let pem_der = rustls::pki_types::CertificateDer::pem_slice_iter(new_crt.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(now.server_cert, pem_der.to_vec());
    // The connection opened before the rotation keeps working.
    assert_eq!(open.client.get("/v2/").status, 200);

    // 2. A broken file is reported and the current material stays.
    replace(
        &pki.path("server.crt"),
        "-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n",
    );
    s.wait_for_log("keeping the previous certificates");
    let still = tls_connect(s.addr, cfg.clone()).unwrap();
    assert_eq!(still.server_cert, pem_der.to_vec());

    // 3. SIGHUP reloads on demand.
    pki.server_cert_in(fresh.path(), "third", &[]);
    std::fs::write(
        pki.path("server.crt"),
        std::fs::read(fresh.path().join("third.crt")).unwrap(),
    )
    .unwrap();
    std::fs::write(
        pki.path("server.key"),
        std::fs::read(fresh.path().join("third.key")).unwrap(),
    )
    .unwrap();
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    s.wait_for_log("TLS material reloaded (SIGHUP)");
    let third = tls_connect(s.addr, cfg).unwrap();
    assert_ne!(third.server_cert, pem_der.to_vec());
    assert_eq!(open.client.get("/v2/").status, 200);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(load.join().unwrap() > 10, "the load thread barely ran");
}

fn kubernetes_secret_symlink_swap_is_picked_up(driver: &str) {
    // The AtomicWriter layout: name -> ..data/name, ..data -> timestamped dir, swapped by rename.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let secret = dir.path().join("secret");
    let v1 = secret.join("..2026_v1");
    std::fs::create_dir_all(&v1).unwrap();
    for f in ["server.crt", "server.key", "ca.crt"] {
        std::fs::copy(pki.path(f), v1.join(f)).unwrap();
        std::os::unix::fs::symlink(format!("..data/{f}"), secret.join(f)).unwrap();
    }
    std::os::unix::fs::symlink("..2026_v1", secret.join("..data")).unwrap();
    let toml = "[server.tls]\nserver_certificate_bundle = \"secret/server.crt\"\nserver_private_key = \"secret/server.key\"\nclient_ca_bundle = \"secret/ca.crt\"\n";
    let s = Server::start_in(dir, driver, toml, LOG);
    let cfg = pki.client_config(None, false);
    let before = tls_connect(s.addr, cfg.clone()).unwrap().server_cert;

    let v2 = secret.join("..2026_v2");
    std::fs::create_dir_all(&v2).unwrap();
    pki.server_cert_in(&v2, "server", &[]);
    std::os::unix::fs::symlink("..2026_v2", secret.join("..data_tmp")).unwrap();
    std::fs::rename(secret.join("..data_tmp"), secret.join("..data")).unwrap();
    s.wait_for_log("TLS material reloaded (files changed)");
    let after = tls_connect(s.addr, cfg).unwrap().server_cert;
    assert_ne!(before, after);
}

/// Keep-alive and head timeouts hold over TLS too: an idle TLS connection is closed after
/// `keep_alive_timeout`, a TLS client that stops mid-head gets 408 and the close.
fn tls_keep_alive_and_head_timeouts(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let extra = format!(
        "[server.http]\nkeep_alive_timeout = \"300ms\"\nhead_timeout = \"300ms\"\n{}",
        pki.server_toml(None)
    );
    let s = Server::start_in(dir, driver, &extra, LOG);
    let mut idle = tls_connect(s.addr, pki.client_config(None, false)).unwrap();
    assert_eq!(idle.client.get("/v2/").status, 200);
    assert!(
        idle.client
            .closes_within(std::time::Duration::from_millis(300) + crate::common::CLOSE_WAIT),
        "an idle TLS connection outlived keep_alive_timeout"
    );
    let mut slow = tls_connect(s.addr, pki.client_config(None, false)).unwrap();
    slow.client.send_raw(b"GET /v2/ HTTP/1.1\r\nHost");
    let r = slow.client.read_response(false);
    assert_eq!(r.status, 408);
    assert!(
        slow.client.is_closed(),
        "a TLS connection stayed open after its 408"
    );
}

/// Issue 22, finding 8: a client that opens a TLS connection and stalls in the handshake —
/// sending nothing, or half a ClientHello — is closed at `head_timeout`, and counted as a failed
/// handshake.
fn a_stalled_handshake_is_closed_at_head_timeout(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let extra = format!(
        "[server.http]\nhead_timeout = \"300ms\"\n{}",
        pki.server_toml(None)
    );
    let s = Server::start_in(dir, driver, &extra, LOG);
    let wait = std::time::Duration::from_millis(300) + crate::common::CLOSE_WAIT;
    let mut silent = crate::common::Client::connect(s.addr);
    // A TLS record header announcing 256 bytes of handshake, then the first few of them.
    let mut half = crate::common::Client::connect(s.addr);
    half.send_raw(&[
        0x16, 0x03, 0x01, 0x01, 0x00, 0x01, 0x00, 0x00, 0xfc, 0x03, 0x03,
    ]);
    assert!(
        silent.closes_within(wait),
        "a silent client outlived the handshake deadline"
    );
    assert!(
        half.closes_within(wait),
        "half a ClientHello outlived the handshake deadline"
    );
    let mut c = tls_connect(s.addr, pki.client_config(None, false)).unwrap();
    let text = c.client.get("/metrics").body_text();
    assert!(
        crate::common::sample(
            &text,
            "wharf_tls_handshakes_total{listener=\"main\",result=\"failed\",reason=\"other\"}"
        ) >= Some(2.0),
        "{text}"
    );
}

on_both_drivers!(
    a_stalled_handshake_is_closed_at_head_timeout,
    tls_keep_alive_and_head_timeouts,
    required_mode_accepts_valid_and_refuses_missing_or_rogue,
    optional_mode_accepts_anonymous_and_refuses_rogue,
    the_accepted_ca_names_are_advertised,
    plain_server_has_no_tls,
    plain_http_to_the_tls_port_gets_a_readable_400,
    identity_of_several_names_and_string_types_reaches_requests,
    resumed_sessions_keep_the_identity,
    blobs_stream_over_tls_both_ways,
    rotation_reaches_new_handshakes_and_spares_open_connections,
    kubernetes_secret_symlink_swap_is_picked_up,
);
