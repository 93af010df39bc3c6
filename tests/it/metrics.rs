//! `/metrics`, `/healthz` and `/readyz`: counters move as expected after a known sequence of
//! requests; policy decisions and TLS handshakes are counted; readiness follows the storage.

use std::time::Duration;

use crate::common::pki::{Pki, tls_connect};
use crate::common::*;

/// The value of one sample line (`name{labels}`), or 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    crate::common::sample(text, series).unwrap_or(0.0)
}

fn scrape(c: &mut Client) -> String {
    let r = c.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    String::from_utf8(r.body).unwrap()
}

fn counters_follow_a_known_sequence(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    for _ in 0..3 {
        assert_eq!(c.get("/v2/").status, 200);
    }
    let blob = vec![9u8; 100_000];
    let d = push_blob(&mut c, "m", &blob);
    for _ in 0..2 {
        assert_eq!(c.get(&format!("/v2/m/blobs/{d}")).body, blob);
    }
    assert_eq!(c.get("/v2/m/manifests/nope").status, 404);
    assert_eq!(c.get("/nowhere").status, 404);
    let text = scrape(&mut c);
    let req = |a: &str, st: &str| {
        sample(
            &text,
            &format!("wharf_requests_total{{action=\"{a}\",status=\"{st}\"}}"),
        )
    };
    assert_eq!(req("get-api-version", "200"), 3.0, "{text}");
    assert_eq!(req("start-upload", "201"), 1.0);
    assert_eq!(req("get-blob", "200"), 2.0);
    assert_eq!(req("get-manifest", "404"), 1.0);
    assert_eq!(req("none", "404"), 1.0);
    assert_eq!(
        sample(
            &text,
            "wharf_request_duration_seconds_count{action=\"get-blob\"}"
        ),
        2.0
    );
    assert_eq!(
        sample(
            &text,
            "wharf_request_duration_seconds_bucket{action=\"get-blob\",le=\"+Inf\"}"
        ),
        2.0
    );
    assert!(sample(&text, "wharf_sent_bytes_total") >= 200_000.0);
    assert!(sample(&text, "wharf_received_bytes_total") >= 100_000.0);
    // The scrape itself is the one request in flight, on the one open connection.
    assert_eq!(sample(&text, "wharf_requests_in_flight"), 1.0);
    assert_eq!(
        sample(&text, "wharf_connections_open{listener=\"main\"}"),
        1.0
    );
    // An open upload session is counted; completing it is not the test's business.
    c.request("POST", "/v2/m/blobs/uploads/", &[], b"");
    let text = scrape(&mut c);
    assert_eq!(sample(&text, "wharf_upload_sessions_open"), 1.0);
    assert_eq!(
        sample(
            &text,
            "wharf_requests_total{action=\"get-metrics\",status=\"200\"}"
        ),
        1.0
    );
}

fn storage_totals_and_readiness(driver: &str) {
    let store = tempfile::tempdir().unwrap();
    {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(store.path(), dir.path().join("data")).unwrap();
        let s = Server::start_in(dir, driver, "", "warn");
        push_image(&mut s.client(), "m", "v1", &[7u8; 5000]);
    }
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(store.path(), dir.path().join("data")).unwrap();
    let s = Server::start_in(dir, driver, "", "warn");
    let mut c = s.client();
    // config + layer + manifest, counted by the walk at start (it runs beside the workers).
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&mut c);
        if sample(&text, "wharf_storage_blobs") == 3.0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sample(&text, "wharf_storage_blobs"), 3.0, "{text}");
    assert!(sample(&text, "wharf_storage_bytes") > 5000.0);
    assert_eq!(c.get("/healthz").status, 200);
    assert_eq!(c.get("/readyz").status, 200);
    // Storage that cannot be written is not ready (root ignores permissions: replace the directory).
    let uploads = store.path().join("uploads");
    std::fs::rename(&uploads, store.path().join("uploads.away")).unwrap();
    std::fs::write(&uploads, b"not a directory").unwrap();
    // The probe's answer is reused for a second: the change shows within the next one.
    wait_for("/readyz to answer 503", || c.get("/readyz").status == 503);
    assert_eq!(c.get("/healthz").status, 200, "the process is still alive");
    std::fs::remove_file(&uploads).unwrap();
    std::fs::rename(store.path().join("uploads.away"), &uploads).unwrap();
    wait_for("/readyz to answer 200 again", || {
        c.get("/readyz").status == 200
    });
}

fn admin_endpoints_skip_policies_unless_configured(driver: &str) {
    let deny_all = "[global.access_policy]\ndefault = \"deny\"\nrules = [\"request.action == 'get-api-version'\"]\n";
    let s = Server::start_with(driver, deny_all);
    let mut c = s.client();
    assert_eq!(c.get("/v2/").status, 200);
    assert_eq!(c.get("/v2/_catalog").status, 401);
    let text = scrape(&mut c);
    assert_eq!(
        sample(&text, "wharf_policy_decisions_total{decision=\"allow\"}"),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(&text, "wharf_policy_decisions_total{decision=\"deny\"}"),
        1.0
    );
    assert_eq!(c.get("/healthz").status, 200);
    let guarded = format!("admin_behind_policies = true\n{deny_all}");
    let s = Server::start_with(driver, &guarded);
    let mut c = s.client();
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(c.get(path).status, 401, "{path}");
    }
}

fn tls_handshakes_are_counted(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let s = Server::start_in(dir, driver, &pki.server_toml(None), "warn");
    let cfg = pki.client_config(None, false);
    // A client that connects and leaves without a handshake.
    drop(std::net::TcpStream::connect(s.addr).unwrap());
    let first = tls_connect(s.addr, cfg.clone()).unwrap();
    assert!(!first.resumed);
    let mut first = first.client;
    first.get("/v2/");
    let mut second = tls_connect(s.addr, cfg).unwrap();
    assert!(second.resumed);
    let mut text = String::new();
    for _ in 0..100 {
        text = scrape(&mut second.client);
        if sample(
            &text,
            "wharf_tls_handshakes_total{listener=\"main\",result=\"failed\",reason=\"other\"}",
        ) == 1.0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        sample(
            &text,
            "wharf_tls_handshakes_total{listener=\"main\",result=\"full\",reason=\"none\"}"
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "wharf_tls_handshakes_total{listener=\"main\",result=\"resumed\",reason=\"none\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "wharf_tls_handshakes_total{listener=\"main\",result=\"failed\",reason=\"other\"}"
        ),
        1.0
    );
}

/// The per-worker caches count what they answer: a client certificate's identity is parsed once
/// per worker, a policy's regex compiled once per worker, and Basic credentials (right or wrong)
/// checked once per worker; every later use is a hit (`wharf_*_cache_total{outcome}`).
fn worker_caches_count_hits_and_misses(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let cfg = format!(
        "{}{}[global.access_policy]\ndefault = \"deny\"\nrules = [\"request.repository.matches('^team/[a-z]+$') || identity.username != ''\"]\n",
        pki.server_toml(Some("required")),
        crate::e2e_access::users(&[("alice", "alice-pw")])
    );
    let s = Server::start_in(dir, driver, &cfg, "warn");
    let client = pki.client_config(
        Some((&pki.path("client.crt"), &pki.path("client.key"))),
        false,
    );
    let mut c = tls_connect(s.addr, client.clone()).unwrap().client;
    let counts = |c: &mut Client, cache: &str| {
        let text = scrape(c);
        let at = |o: &str| {
            sample(
                &text,
                &format!("wharf_{cache}_cache_total{{outcome=\"{o}\"}}"),
            )
        };
        (at("hit"), at("miss"))
    };
    let alice = basic("alice", "alice-pw");
    for _ in 0..4 {
        let r = c.request(
            "GET",
            "/v2/team/app/tags/list",
            &[("Authorization", &alice)],
            b"",
        );
        assert_eq!(r.status, 404, "{}", r.body_text());
    }
    assert_eq!(
        counts(&mut c, "credential"),
        (3.0, 1.0),
        "alice's header, four times"
    );
    assert_eq!(counts(&mut c, "policy_regex"), (3.0, 1.0), "four decisions");
    assert_eq!(
        counts(&mut c, "client_certificate"),
        (0.0, 1.0),
        "one connection"
    );

    // A refused header closes its connection: each goes on a new one, to one of two workers.
    let wrong = basic("alice", "wrong");
    for _ in 0..6 {
        let mut other = tls_connect(s.addr, client.clone()).unwrap().client;
        let r = other.request("GET", "/v2/", &[("Authorization", &wrong)], b"");
        assert_eq!(r.status, 401, "{}", r.body_text());
    }
    let (hits, misses) = counts(&mut c, "credential");
    assert!(
        hits + misses == 10.0 && (2.0..=3.0).contains(&misses),
        "a wrong password, six times on two workers, is checked once per worker: {hits} hits, {misses} misses"
    );
    let (hits, misses) = counts(&mut c, "client_certificate");
    assert!(
        hits + misses == 7.0 && (1.0..=2.0).contains(&misses),
        "seven connections with one certificate on two workers: {hits} hits, {misses} misses"
    );
}

on_both_drivers!(
    counters_follow_a_known_sequence,
    storage_totals_and_readiness,
    admin_endpoints_skip_policies_unless_configured,
    tls_handshakes_are_counted,
    worker_caches_count_hits_and_misses,
);
