//! `[limits]` and `global.max_blob_size` against the real binary: per-client read and write rates
//! (429 with Retry-After), the connection cap (503), and bodies over the blob limit (413, nothing
//! stored, other clients served meanwhile).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::common::{Client, Server, push_blob, sha256};

fn retry_after(r: &crate::common::Resp) -> u64 {
    r.header("retry-after")
        .expect("Retry-After header")
        .parse()
        .expect("Retry-After in whole seconds")
}

fn read_rate_limit_answers_429_with_retry_after(driver: &str) {
    let s = Server::start_with(driver, "[limits]\nread_rps = 0.5\nburst = 3\n");
    let mut c = s.client();
    for i in 0..3 {
        assert_eq!(c.get("/v2/").status, 200, "request {i} is within the burst");
    }
    let r = c.get("/v2/");
    assert_eq!(r.status, 429);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    let wait = retry_after(&r);
    assert!((1..=2).contains(&wait), "Retry-After {wait}");
    // The limit is per client and per class: writes still go through (no write limit).
    let d = push_blob(&mut c, "a", b"layer");
    // Another connection from the same address shares the bucket (across workers too).
    assert_eq!(Client::connect(s.addr).get("/v2/").status, 429);
    // After waiting as told, the client is served again, and its blob is intact.
    std::thread::sleep(Duration::from_secs(wait) + Duration::from_millis(100));
    let r = c.get(&format!("/v2/a/blobs/{d}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"layer");
}

fn write_rate_limit_refuses_before_reading_credentials_or_body(driver: &str) {
    let s = Server::start_with(driver, "[limits]\nwrite_rps = 1\n");
    let mut c = s.client();
    push_blob(&mut c, "a", b"first");
    let body = b"second";
    let r = c.request(
        "POST",
        &format!("/v2/a/blobs/uploads/?digest={}", sha256(body)),
        &[("Authorization", "Basic d3Jvbmc6d3Jvbmc=")],
        body,
    );
    assert_eq!(r.status, 429, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert!(retry_after(&r) >= 1);
    // Refused writes store nothing; reads are not limited.
    let r = c.request("HEAD", &format!("/v2/a/blobs/{}", sha256(body)), &[], b"");
    assert_eq!(r.status, 404);
    for _ in 0..20 {
        assert_eq!(c.get("/v2/").status, 200);
    }
}

fn connection_cap_answers_503_and_frees_slots_on_close(driver: &str) {
    let s = Server::start_with(driver, "[limits]\nmax_connections = 4\n");
    // Four open connections, each proven served (so all four are counted by the server).
    let mut held: Vec<Client> = (0..4)
        .map(|_| {
            let mut c = s.client();
            assert_eq!(c.get("/v2/").status, 200);
            c
        })
        .collect();
    let mut fifth = s.client();
    let r = fifth.read_response(false);
    assert_eq!(r.status, 503);
    assert_eq!(r.error_code(), "TOOMANYREQUESTS");
    assert_eq!(retry_after(&r), 1);
    assert!(fifth.is_closed());
    // The held connections still work.
    assert_eq!(held[0].get("/v2/").status, 200);
    // Closing one frees its slot (the server sees the close asynchronously: poll).
    held.pop();
    let mut served = false;
    for _ in 0..100 {
        let mut c = s.client();
        c.send_raw(b"GET /v2/ HTTP/1.1\r\nHost: t\r\n\r\n");
        if c.read_response(false).status == 200 {
            served = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served, "a freed slot was never reused");
}

/// Send `len` declared bytes, streaming zeros until the server answers or closes; returns what was
/// sent and the response (if one could be read).
fn stream_until_refused(s: &Server, head: &str) -> (u64, Option<crate::common::Resp>) {
    let mut stream = TcpStream::connect(s.addr).unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    let reader = stream.try_clone().unwrap();
    let answer = std::thread::spawn(move || {
        let mut c = Client::over(Box::new(reader));
        let r = c.read_response(false);
        (r, c.is_closed())
    });
    let chunk = vec![0u8; 256 * 1024];
    let mut sent = 0u64;
    let chunked = head.contains("chunked");
    while !answer.is_finished() && sent < 10 << 30 {
        let res = if chunked {
            stream
                .write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
                .and_then(|_| stream.write_all(&chunk))
                .and_then(|_| stream.write_all(b"\r\n"))
        } else {
            stream.write_all(&chunk)
        };
        if res.is_err() {
            break;
        }
        sent += chunk.len() as u64;
    }
    let (r, closed) = answer.join().unwrap();
    assert!(
        closed,
        "the connection closes after refusing a body it did not read"
    );
    let _ = stream.read(&mut [0u8; 1]);
    (sent, Some(r))
}

fn bodies_over_max_blob_size_get_413_and_nothing_is_stored(driver: &str) {
    let s = Server::start_with(driver, "[global]\nmax_blob_size = 1048576\n");
    let zero = format!("sha256:{}", "0".repeat(64));
    // A declared 10 GiB monolithic push is refused from its Content-Length, before the body.
    let head = format!(
        "POST /v2/big/blobs/uploads/?digest={zero} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
        10u64 << 30
    );
    let (sent, r) = stream_until_refused(&s, &head);
    let r = r.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "SIZE_INVALID");
    assert!(sent < 1 << 30, "server read {sent} bytes of a refused body");
    // A streamed (chunked) PATCH of unknown length is cut off once it passes the limit.
    let mut c = s.client();
    let r = c.request("POST", "/v2/big/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202);
    let loc = r.header("location").unwrap().to_owned();
    let head = format!("PATCH {loc} HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    let (sent, r) = stream_until_refused(&s, &head);
    let r = r.unwrap();
    assert_eq!(r.status, 413);
    assert_eq!(r.error_code(), "SIZE_INVALID");
    assert!(sent < 1 << 30, "server read {sent} bytes past the limit");
    // Other clients were served meanwhile and afterwards; a blob within the limit is accepted.
    let mut other = s.client();
    let small = vec![7u8; 1 << 20];
    let d = push_blob(&mut other, "ok", &small);
    assert_eq!(other.get(&format!("/v2/ok/blobs/{d}")).body, small);
    let over = vec![7u8; (1 << 20) + 1];
    let r = other.request(
        "POST",
        &format!("/v2/ok/blobs/uploads/?digest={}", sha256(&over)),
        &[],
        &over,
    );
    assert_eq!(r.status, 413);
    // Nothing of the refused bodies became a blob.
    let blobs: Vec<_> = crate::common::paths_under(&s.root().join("blobs"))
        .into_iter()
        .filter(|p| p.is_file())
        .collect();
    assert_eq!(blobs.len(), 1, "{blobs:?}");
}

on_both_drivers!(
    read_rate_limit_answers_429_with_retry_after,
    write_rate_limit_refuses_before_reading_credentials_or_body,
    connection_cap_answers_503_and_frees_slots_on_close,
    bodies_over_max_blob_size_get_413_and_nothing_is_stored,
);

#[test]
fn invalid_limits_are_startup_errors_naming_the_key() {
    for (toml, key) in [
        ("[limits]\nread_rps = -1\n", "limits.read_rps"),
        ("[limits]\nwrite_rps = nan\n", "limits.write_rps"),
        ("[limits]\nburst = -2\n", "burst = -2"),
        ("[limits]\nbogus = 1\n", "bogus"),
        ("[gc]\ninterval = \"500ms\"\n", "gc.interval"),
        ("[gc]\ngrace = \"soon\"\n", "grace"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.toml");
        std::fs::write(&path, toml).unwrap();
        let out = std::process::Command::new(crate::common::wharf_bin())
            .args(["check-config", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{toml} was accepted");
        assert!(err.contains(key), "{toml}: {err}");
    }
}
