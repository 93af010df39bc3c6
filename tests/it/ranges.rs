//! Several byte ranges in one request (eStargz and SOCI lazy pulling): `206` with a
//! `multipart/byteranges` body, read back by a real MIME parser (Python's `email` package) and
//! compared with the blob, for a blob sent from a file (both I/O drivers), one read whole, one
//! streamed from the object store, and over TLS.

use std::process::{Command, Stdio};

use crate::common::pki::Pki;
use crate::common::seaweed::Seaweed;
use crate::common::*;

/// The parts of a `multipart/byteranges` body as Python's MIME parser reads them: each part's
/// `Content-Range` and bytes.
pub(crate) fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    const PARSER: &str = r#"
import json, sys
from email import policy
from email.parser import BytesParser
raw = b"Content-Type: " + sys.argv[1].encode() + b"\r\n\r\n" + sys.stdin.buffer.read()
msg = BytesParser(policy=policy.HTTP).parsebytes(raw)
assert msg.get_content_type() == "multipart/byteranges", msg.get_content_type()
assert not msg.defects, msg.defects
parts = [(p["Content-Range"], p.get_payload(decode=True).hex()) for p in msg.iter_parts()]
json.dump(parts, sys.stdout)
"#;
    let mut child = Command::new("python3")
        .args(["-c", PARSER, content_type])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is missing (tests/setup.sh installs it)");
    {
        use std::io::Write;
        child.stdin.take().unwrap().write_all(body).unwrap();
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the MIME parser refused the body: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let parts: Vec<(String, String)> = serde_json::from_slice(&out.stdout).unwrap();
    parts
        .into_iter()
        .map(|(range, hex)| {
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (range, bytes)
        })
        .collect()
}

/// The parts a `multipart/byteranges` answer for `data` must hold: (Content-Range, bytes).
pub(crate) fn expected(data: &[u8], ranges: &[(usize, usize)]) -> Vec<(String, Vec<u8>)> {
    ranges
        .iter()
        .map(|&(a, b)| {
            (
                format!("bytes {a}-{b}/{}", data.len()),
                data[a..=b].to_vec(),
            )
        })
        .collect()
}

/// Three ranges of `data` (pushed as `digest` to `repo`), one of them a suffix, read back part
/// by part; HEAD announces exactly the GET's length.
fn three_ranges(c: &mut Client, repo: &str, digest: &str, data: &[u8]) {
    let n = data.len();
    let path = format!("/v2/{repo}/blobs/{digest}");
    let asked = format!("bytes=0-99, {}-{},-10", n / 2, n / 2 + 999);
    let r = c.request("GET", &path, &[("Range", &asked)], b"");
    assert_eq!(r.status, 206, "{}", r.body_text());
    let ct = r.header("Content-Type").unwrap().to_owned();
    assert!(ct.starts_with("multipart/byteranges; boundary="), "{ct}");
    assert_eq!(r.header("Accept-Ranges"), Some("bytes"));
    assert_eq!(
        r.header("Content-Range"),
        None,
        "the parts carry their ranges"
    );
    assert_eq!(
        parse_multipart(&ct, &r.body),
        expected(data, &[(0, 99), (n / 2, n / 2 + 999), (n - 10, n - 1)]),
        "every part holds exactly its range of the blob"
    );
    let h = c.request("HEAD", &path, &[("Range", &asked)], b"");
    assert_eq!(h.status, 206);
    assert_eq!(
        h.header("Content-Length"),
        Some(r.body.len().to_string().as_str()),
        "HEAD announces the GET's exact length"
    );
}

fn several_ranges_in_one_request(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    // Sent from its file (over 64 KiB) and read whole (under it).
    for (repo, len) in [("lazy/big", 300_000), ("lazy/small", 5_000)] {
        let data = noise(len as u32, len);
        let d = push_blob(&mut c, repo, &data);
        three_ranges(&mut c, repo, &d, &data);
    }
    let data = noise(7, 300_000);
    let d = push_blob(&mut c, "lazy/edge", &data);
    let path = format!("/v2/lazy/edge/blobs/{d}");

    // Overlapping ranges are merged: one range left is a plain 206.
    let r = c.request("GET", &path, &[("Range", "bytes=0-9,5-19")], b"");
    assert_eq!(
        (r.status, r.header("Content-Range")),
        (206, Some("bytes 0-19/300000"))
    );
    assert_eq!(r.body, &data[..20]);
    // A range outside the blob among others is dropped; all outside is 416.
    let r = c.request("GET", &path, &[("Range", "bytes=10-19,400000-,30-39")], b"");
    assert_eq!(
        parse_multipart(r.header("Content-Type").unwrap(), &r.body),
        expected(&data, &[(10, 19), (30, 39)])
    );
    let r = c.request("GET", &path, &[("Range", "bytes=400000-,500000-")], b"");
    assert_eq!(
        (r.status, r.header("Content-Range")),
        (416, Some("bytes */300000"))
    );
    // Sixteen ranges are answered; seventeen are refused with what to do.
    let ranges: Vec<String> = (0..17)
        .map(|i| format!("{}-{}", i * 100, i * 100 + 9))
        .collect();
    let r = c.request(
        "GET",
        &path,
        &[("Range", &format!("bytes={}", ranges[..16].join(",")))],
        b"",
    );
    assert_eq!(r.status, 206);
    let parts = parse_multipart(r.header("Content-Type").unwrap(), &r.body);
    assert_eq!(parts.len(), 16);
    assert_eq!(parts[15], expected(&data, &[(1500, 1509)])[0]);
    let r = c.request(
        "GET",
        &path,
        &[("Range", &format!("bytes={}", ranges.join(",")))],
        b"",
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "RANGE_INVALID"));
    assert!(
        r.body_text().contains("at most 16"),
        "says how many are answered: {}",
        r.body_text()
    );
    // The connection is still good for the next request.
    assert_eq!(c.get(&path).body, data);
}

on_both_drivers!(several_ranges_in_one_request);

/// On the S3 backend every part is its own ranged read of the object.
#[test]
fn several_ranges_from_the_object_store() {
    let weed = Seaweed::shared();
    let s = Server::start_with(
        "io_uring",
        &format!(
            "[storage]\nbackend = \"s3\"\n{}",
            weed.wharf_storage("ranges/")
        ),
    );
    let mut c = s.client();
    let data = noise(8, 400_000);
    let d = push_blob(&mut c, "lazy/s3", &data);
    three_ranges(&mut c, "lazy/s3", &d, &data);
}

/// Over TLS (curl as the client): the parts arrive intact through the encrypted stream.
#[test]
fn several_ranges_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let s = Server::start_in(dir, "io_uring", &pki.server_toml(None), "warn");
    let data = noise(9, 300_000);
    let d = sha256(&data);
    let work = tempfile::tempdir().unwrap();
    let blob = work.path().join("blob");
    std::fs::write(&blob, &data).unwrap();
    let base = format!("https://localhost:{}/v2/lazy/tls/blobs", s.addr.port());
    let curl = |args: &[&str]| {
        let out = Command::new("curl")
            .args(["-sSf", "--max-time", "30", "--cacert"])
            .arg(pki.path("ca.crt"))
            .args(args)
            .output()
            .expect("curl is missing (tests/setup.sh installs it)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &format!("@{}", blob.display()),
        &format!("{base}/uploads/?digest={d}"),
    ]);
    let ct = curl(&[
        "-o",
        &work.path().join("body").display().to_string(),
        "-w",
        "%{content_type}",
        "-H",
        "Range: bytes=0-99,150000-150999,-10",
        &format!("{base}/{d}"),
    ]);
    let body = std::fs::read(work.path().join("body")).unwrap();
    assert_eq!(
        parse_multipart(&String::from_utf8(ct).unwrap(), &body),
        expected(&data, &[(0, 99), (150_000, 150_999), (299_990, 299_999)])
    );
}
