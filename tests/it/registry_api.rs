//! Every OCI endpoint and its error paths against the real binary, under both I/O drivers.

use crate::common::*;
use std::io::{Read, Write};
use std::time::Duration;

const MISSING: &str = "sha256:0000000000000000000000000000000000000000000000000000000000000000";

fn api_version_header(driver: &str) {
    let s = Server::start(driver);
    let r = s.client().get("/v2/");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
    assert_eq!(s.client().get("/v3/").status, 404);
}

fn blob_get_head_range_and_isolation(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let d = push_blob(&mut c, "a/b", &data);
    let r = c.get(&format!("/v2/a/b/blobs/{d}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, data, "large blob (sendfile path) round-trips");
    assert_eq!(r.header("Docker-Content-Digest"), Some(d.as_str()));
    let h = c.request("HEAD", &format!("/v2/a/b/blobs/{d}"), &[], b"");
    assert_eq!(
        (h.status, h.header("content-length")),
        (200, Some("200000"))
    );
    let p = c.request(
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        &[("Range", "bytes=100000-100009")],
        b"",
    );
    assert_eq!(p.status, 206);
    assert_eq!(
        p.header("Content-Range"),
        Some("bytes 100000-100009/200000")
    );
    assert_eq!(p.body, &data[100000..100010]);
    let tail = c.request(
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        &[("Range", "bytes=-5")],
        b"",
    );
    assert_eq!(tail.body, &data[199995..]);
    let bad = c.request(
        "GET",
        &format!("/v2/a/b/blobs/{d}"),
        &[("Range", "bytes=300000-")],
        b"",
    );
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("Content-Range"), Some("bytes */200000"));
    // Another repository does not serve it.
    let other = c.get(&format!("/v2/other/blobs/{d}"));
    assert_eq!(
        (other.status, other.error_code().as_str()),
        (404, "BLOB_UNKNOWN")
    );
    // Bad names and digests.
    assert_eq!(
        c.get(&format!("/v2/A/blobs/{d}")).error_code(),
        "NAME_INVALID"
    );
    assert_eq!(
        c.get("/v2/a/blobs/sha256:abc").error_code(),
        "DIGEST_INVALID"
    );
    assert_eq!(c.get("/v2/a/blobs/md5:abc").error_code(), "DIGEST_INVALID");
    // Delete removes the repository's link only.
    assert_eq!(
        c.request("DELETE", &format!("/v2/a/b/blobs/{d}"), &[], b"")
            .status,
        202
    );
    assert_eq!(c.get(&format!("/v2/a/b/blobs/{d}")).status, 404);
    assert_eq!(
        c.request("DELETE", &format!("/v2/a/b/blobs/{d}"), &[], b"")
            .error_code(),
        "BLOB_UNKNOWN"
    );
}

fn monolithic_upload_with_wrong_digest_is_digest_invalid(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let claimed = sha256(b"something else");
    let r = c.request(
        "POST",
        &format!("/v2/m/blobs/uploads/?digest={claimed}"),
        &[],
        b"actual bytes",
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(c.get(&format!("/v2/m/blobs/{claimed}")).status, 404);
    let leftovers: Vec<_> = std::fs::read_dir(s.root().join("uploads"))
        .unwrap()
        .collect();
    assert!(
        leftovers.is_empty(),
        "rejected data is removed: {leftovers:?}"
    );
}

fn chunked_upload_session(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let data: Vec<u8> = (0..30_000u32).map(|i| (i * 7) as u8).collect();
    let d = sha256(&data);
    let r = c.request("POST", "/v2/up/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202);
    assert!(r.header("Docker-Upload-UUID").is_some());
    assert_eq!(r.header("Range"), Some("0-0"));
    let loc = r.header("Location").unwrap().to_owned();
    let r = c.request(
        "PATCH",
        &loc,
        &[("Content-Range", "0-9999")],
        &data[..10000],
    );
    assert_eq!((r.status, r.header("Range")), (202, Some("0-9999")));
    // Out of order: 416 with the current range and location.
    let r = c.request(
        "PATCH",
        &loc,
        &[("Content-Range", "20000-29999")],
        &data[20000..],
    );
    assert_eq!(r.status, 416);
    assert_eq!(r.header("Range"), Some("0-9999"));
    assert!(r.header("Location").is_some());
    // Content-Length that disagrees with Content-Range.
    let r = c.request(
        "PATCH",
        &loc,
        &[("Content-Range", "10000-10009")],
        &data[10000..10005],
    );
    assert_eq!((r.status, r.error_code().as_str()), (400, "SIZE_INVALID"));
    // Streamed chunk (no Content-Range) on a new connection.
    let mut c2 = s.client();
    let r = c2.request("PATCH", &loc, &[], &data[10000..20000]);
    assert_eq!(r.header("Range"), Some("0-19999"));
    let st = c2.get(&loc);
    assert_eq!((st.status, st.header("Range")), (204, Some("0-19999")));
    // PUT with the final chunk.
    let r = c.request(
        "PUT",
        &format!("{loc}?digest={d}"),
        &[("Content-Range", "20000-29999")],
        &data[20000..],
    );
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("Location").unwrap(), format!("/v2/up/blobs/{d}"));
    assert_eq!(c.get(&format!("/v2/up/blobs/{d}")).body, data);
    // The session is gone.
    assert_eq!(c.get(&loc).error_code(), "BLOB_UPLOAD_UNKNOWN");
    // An upload belongs to its repository.
    let other = c
        .request("POST", "/v2/up/blobs/uploads/", &[], b"")
        .header("Location")
        .unwrap()
        .replace("/v2/up/", "/v2/elsewhere/");
    assert_eq!(c.get(&other).error_code(), "BLOB_UPLOAD_UNKNOWN");
}

fn upload_completion_with_wrong_digest_removes_data(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let loc = c
        .request("POST", "/v2/w/blobs/uploads/", &[], b"")
        .header("Location")
        .unwrap()
        .to_owned();
    c.request("PATCH", &loc, &[], b"some bytes");
    let wrong = sha256(b"other bytes");
    let r = c.request("PUT", &format!("{loc}?digest={wrong}"), &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (400, "DIGEST_INVALID"));
    assert_eq!(c.get(&format!("/v2/w/blobs/{wrong}")).status, 404);
    assert_eq!(c.get(&loc).error_code(), "BLOB_UPLOAD_UNKNOWN");
}

/// Entries of `<root>/uploads` (session directories and temp files).
fn upload_entries(s: &Server) -> Vec<String> {
    std::fs::read_dir(s.root().join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with(".ready-"))
        .collect()
}

/// A session keeps nothing on disk until its first chunk: POST + PUT with the whole blob leaves no
/// session files, a PUT whose body breaks off leaves the session empty and usable, and a PATCH
/// makes the session durable (one file).
fn sessions_touch_the_disk_at_their_first_chunk(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let post = |c: &mut Client| start_upload(c, "lazy");
    let loc = post(&mut c);
    assert_eq!(upload_entries(&s), Vec::<String>::new());
    let data = b"whole blob in the PUT".to_vec();
    let d = sha256(&data);
    let r = c.request("PUT", &format!("{loc}?digest={d}"), &[], &data);
    assert_eq!(r.status, 201);
    assert_eq!(c.get(&format!("/v2/lazy/blobs/{d}")).body, data);
    assert_eq!(c.get(&loc).error_code(), "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(upload_entries(&s), Vec::<String>::new());

    // A PUT that breaks off mid-body: the bytes go, the session stays, empty.
    let loc = post(&mut c);
    let mut broken = s.client();
    broken.send_raw(
        format!(
            "PUT {loc}?digest={d} HTTP/1.1\r\nContent-Length: {}\r\n\r\nwhole",
            data.len()
        )
        .as_bytes(),
    );
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        for _ in 0..400 {
            if done() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
        }
        panic!("{what} never happened");
    };
    // The PUT is being received into a temp file; then the client goes away.
    wait_for("the temp file", &|| !upload_entries(&s).is_empty());
    drop(broken);
    // The temp file goes once the server has let go of the session.
    wait_for("the temp file's removal", &|| upload_entries(&s).is_empty());
    let st = c.get(&loc);
    assert_eq!((st.status, st.header("Range")), (204, Some("0-0")));
    let r = c.request("PUT", &format!("{loc}?digest={d}"), &[], &data);
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // A chunk makes the session durable: one file, named by the session, its algorithm and a
    // key of its repository.
    let loc = post(&mut c);
    assert_eq!(c.request("PATCH", &loc, &[], b"chunk").status, 202);
    let id = loc.rsplit('/').next().unwrap();
    let entries = upload_entries(&s);
    assert_eq!(entries.len(), 1, "{entries:?}");
    let (name, repo_key) = entries[0].rsplit_once('.').unwrap();
    assert_eq!(name, format!("{id}.sha256"));
    assert_eq!(repo_key, &sha256(b"lazy")[7..39]);
    let file = s.root().join("uploads").join(&entries[0]);
    assert_eq!(std::fs::read(&file).unwrap(), b"chunk");
    assert!(file.is_file());
    assert_eq!(c.request("DELETE", &loc, &[], b"").status, 204);
    assert_eq!(upload_entries(&s), Vec::<String>::new());

    // A chunked upload leaves nothing in `uploads/` once complete: its file became the blob.
    let loc = post(&mut c);
    let r = c.request("PATCH", &loc, &[], &data);
    assert_eq!(r.status, 202);
    let r = c.request("PUT", &format!("{loc}?digest={d}"), &[], b"");
    assert_eq!(r.status, 201);
    assert_eq!(upload_entries(&s), Vec::<String>::new());
}

fn upload_cancel_and_unknown_ids(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let loc = c
        .request("POST", "/v2/x/blobs/uploads/", &[], b"")
        .header("Location")
        .unwrap()
        .to_owned();
    assert_eq!(c.request("DELETE", &loc, &[], b"").status, 204);
    assert_eq!(c.get(&loc).error_code(), "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(
        c.request("PATCH", "/v2/x/blobs/uploads/..%2f..%2fetc", &[], b"x")
            .error_code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    let fake = "/v2/x/blobs/uploads/00000000-0000-4000-8000-000000000000";
    assert_eq!(
        c.request("PATCH", fake, &[], b"x").error_code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
    assert_eq!(
        c.request("DELETE", fake, &[], b"").error_code(),
        "BLOB_UPLOAD_UNKNOWN"
    );
}

fn sha512_uploads_and_digest_algorithm_hint(driver: &str) {
    use sha2::Digest;
    let s = Server::start(driver);
    let mut c = s.client();
    let data = b"sha512 content";
    let d = format!(
        "sha512:{}",
        sha2::Sha512::digest(data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let loc = c
        .request(
            "POST",
            "/v2/s/blobs/uploads/?digest-algorithm=sha512",
            &[],
            b"",
        )
        .header("Location")
        .unwrap()
        .to_owned();
    c.request("PATCH", &loc, &[], data);
    assert_eq!(
        c.request("PUT", &format!("{loc}?digest={d}"), &[], b"")
            .status,
        201
    );
    assert_eq!(c.get(&format!("/v2/s/blobs/{d}")).body, data);
    // A hint that differs from the final digest still verifies (re-hash at completion).
    let loc = c
        .request("POST", "/v2/s/blobs/uploads/", &[], b"")
        .header("Location")
        .unwrap()
        .to_owned();
    c.request("PATCH", &loc, &[], b"other");
    let d2 = format!(
        "sha512:{}",
        sha2::Sha512::digest(b"other")
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    assert_eq!(
        c.request("PUT", &format!("{loc}?digest={d2}"), &[], b"")
            .status,
        201
    );
    assert_eq!(
        c.request(
            "POST",
            "/v2/s/blobs/uploads/?digest-algorithm=md5",
            &[],
            b""
        )
        .error_code(),
        "DIGEST_INVALID"
    );
}

fn cross_repository_mount(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let d = push_blob(&mut c, "src", b"mount me");
    let r = c.request(
        "POST",
        &format!("/v2/dst/blobs/uploads/?mount={d}&from=src"),
        &[],
        b"",
    );
    assert_eq!(r.status, 201);
    assert_eq!(r.header("Location").unwrap(), format!("/v2/dst/blobs/{d}"));
    assert_eq!(c.get(&format!("/v2/dst/blobs/{d}")).body, b"mount me");
    // Without from: mounted when the store holds the blob.
    assert_eq!(
        c.request(
            "POST",
            &format!("/v2/dst2/blobs/uploads/?mount={d}"),
            &[],
            b""
        )
        .status,
        201
    );
    // Unknown source or blob: fall back to an upload session.
    let r = c.request(
        "POST",
        &format!("/v2/dst3/blobs/uploads/?mount={MISSING}&from=src"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202);
    assert!(
        r.header("Location")
            .unwrap()
            .starts_with("/v2/dst3/blobs/uploads/")
    );
    let r = c.request(
        "POST",
        &format!("/v2/dst3/blobs/uploads/?mount={d}&from=nowhere"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202);
}

fn manifests_by_tag_and_digest(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let md = push_image(&mut c, "img", "v1", b"layer-bytes");
    let r = c.get("/v2/img/manifests/v1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(OCI_MANIFEST));
    assert_eq!(r.header("Docker-Content-Digest"), Some(md.as_str()));
    assert_eq!(sha256(&r.body), md, "bytes come back exactly as pushed");
    let h = c.request("HEAD", &format!("/v2/img/manifests/{md}"), &[], b"");
    assert_eq!(
        (h.status, h.header("Docker-Content-Digest")),
        (200, Some(md.as_str()))
    );
    assert_eq!(
        h.header("content-length").unwrap(),
        r.body.len().to_string()
    );
    assert_eq!(
        c.get("/v2/img/manifests/nope").error_code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        c.get(&format!("/v2/img/manifests/{MISSING}")).error_code(),
        "MANIFEST_UNKNOWN"
    );
    // Push by digest with tag parameters (OCI-Tag).
    let body = r.body.clone();
    let put = c.request(
        "PUT",
        &format!("/v2/img/manifests/{md}?tag=a&tag=b"),
        &[("Content-Type", OCI_MANIFEST)],
        &body,
    );
    assert_eq!(put.status, 201);
    assert_eq!(put.headers_named("OCI-Tag"), vec!["a", "b"]);
    assert_eq!(c.get("/v2/img/manifests/b").status, 200);
    // Wrong digest in the reference.
    let wrong = c.request(
        "PUT",
        &format!("/v2/img/manifests/{MISSING}"),
        &[("Content-Type", OCI_MANIFEST)],
        &body,
    );
    assert_eq!(
        (wrong.status, wrong.error_code().as_str()),
        (400, "DIGEST_INVALID")
    );
    // Delete a tag, then the manifest (its remaining tags go with it).
    assert_eq!(
        c.request("DELETE", "/v2/img/manifests/a", &[], b"").status,
        202
    );
    assert_eq!(c.get("/v2/img/manifests/a").status, 404);
    assert_eq!(
        c.request("DELETE", &format!("/v2/img/manifests/{md}"), &[], b"")
            .status,
        202
    );
    assert_eq!(
        c.get("/v2/img/manifests/v1").error_code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        c.get("/v2/img/tags/list").json()["tags"],
        serde_json::json!([])
    );
    assert_eq!(
        c.request("DELETE", &format!("/v2/img/manifests/{md}"), &[], b"")
            .error_code(),
        "MANIFEST_UNKNOWN"
    );
}

fn manifest_validation_errors(driver: &str) {
    let s = Server::start_with(driver, "[global]\nmax_manifest_size = 1024\n");
    let mut c = s.client();
    let put = |c: &mut Client, body: &[u8], ct: &str| {
        c.request("PUT", "/v2/v/manifests/t", &[("Content-Type", ct)], body)
    };
    let r = put(&mut c, b"{not json", OCI_MANIFEST);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (400, "MANIFEST_INVALID")
    );
    let cfg = push_blob(&mut c, "v", b"{}");
    let missing_layer = image_manifest(&cfg, 2, &[(MISSING, 10)]);
    let r = put(&mut c, &missing_layer, OCI_MANIFEST);
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "MANIFEST_BLOB_UNKNOWN")
    );
    // Blobs of another repository do not count.
    let foreign = push_blob(&mut c, "elsewhere", b"foreign layer");
    let r = put(
        &mut c,
        &image_manifest(&cfg, 2, &[(&foreign, 13)]),
        OCI_MANIFEST,
    );
    assert_eq!(r.error_code(), "MANIFEST_BLOB_UNKNOWN");
    // Non-distributable layers and layers with urls need not be present.
    let nd = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cfg, "size": 2},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.nondistributable.v1.tar", "digest": MISSING, "size": 1},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": MISSING, "size": 1, "urls": ["https://example.com/l"]}
        ]})).unwrap();
    assert_eq!(put(&mut c, &nd, OCI_MANIFEST).status, 201);
    // Content-Type that contradicts mediaType.
    let r = put(&mut c, &nd, "application/vnd.oci.image.index.v1+json");
    assert_eq!(r.error_code(), "MANIFEST_INVALID");
    // Too large: 413.
    let mut big = image_manifest(&cfg, 2, &[]);
    big.truncate(big.len() - 1);
    big.extend_from_slice(
        format!(",\"annotations\":{{\"x\":\"{}\"}}}}", "a".repeat(2000)).as_bytes(),
    );
    let r = put(&mut c, &big, OCI_MANIFEST);
    assert_eq!(r.status, 413);
    // Docker schema 2 and manifest lists are accepted and served with their media type.
    let docker = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": cfg, "size": 2},
        "layers": []})).unwrap();
    assert_eq!(
        put(
            &mut c,
            &docker,
            "application/vnd.docker.distribution.manifest.v2+json"
        )
        .status,
        201
    );
    let list = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.list.v2+json",
        "manifests": [{"mediaType": "application/vnd.docker.distribution.manifest.v2+json", "digest": sha256(&docker), "size": docker.len(),
                       "platform": {"architecture": "amd64", "os": "linux"}}]})).unwrap();
    let r = c.request(
        "PUT",
        "/v2/v/manifests/list",
        &[(
            "Content-Type",
            "application/vnd.docker.distribution.manifest.list.v2+json",
        )],
        &list,
    );
    assert_eq!(r.status, 201);
    assert_eq!(
        c.get("/v2/v/manifests/list").header("Content-Type"),
        Some("application/vnd.docker.distribution.manifest.list.v2+json")
    );
}

fn referrers_with_filter(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let subject = push_image(&mut c, "r", "v1", b"base layer");
    let subject_len = c.get("/v2/r/manifests/v1").body.len();
    let empty = push_blob(&mut c, "r", b"{}");
    let mut refs = Vec::new();
    for (i, at) in [
        "application/vnd.example.sig",
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
        "application/vnd.example.sbom",
        "application/vnd.example.sig",
    ]
    .iter()
    .enumerate()
    {
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": at,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [], "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": subject_len},
            "annotations": {"n": i.to_string()}})).unwrap();
        let d = sha256(&m);
        let r = c.request(
            "PUT",
            &format!("/v2/r/manifests/{d}"),
            &[("Content-Type", OCI_MANIFEST)],
            &m,
        );
        assert_eq!(r.status, 201);
        assert_eq!(r.header("OCI-Subject"), Some(subject.as_str()));
        refs.push(d);
    }
    let all = c.get(&format!("/v2/r/referrers/{subject}"));
    assert_eq!(all.status, 200);
    assert_eq!(
        all.header("Content-Type"),
        Some("application/vnd.oci.image.index.v1+json")
    );
    assert_eq!(all.json()["manifests"].as_array().unwrap().len(), 5);
    assert_eq!(all.header("Link"), None);
    let f = c.get(&format!(
        "/v2/r/referrers/{subject}?artifactType=application%2Fvnd.example.sbom"
    ));
    assert_eq!(f.header("OCI-Filters-Applied"), Some("artifactType"));
    let m = f.json()["manifests"].as_array().unwrap().clone();
    let mut sboms: Vec<&str> = m.iter().map(|d| d["digest"].as_str().unwrap()).collect();
    sboms.sort();
    let mut want = vec![refs[1].as_str(), refs[3].as_str()];
    want.sort();
    assert_eq!(sboms, want);
    // Pages of n, by the Link header (which keeps the filter), each referrer once.
    let walk = |c: &mut Client, first: String| {
        let (mut seen, mut next, mut pages) = (Vec::new(), Some(first), 0);
        while let Some(url) = next.take() {
            let r = c.get(&url);
            assert_eq!(r.status, 200, "{url}");
            let page = r.json()["manifests"].as_array().unwrap().clone();
            assert!(page.len() <= 2, "{url}: {} items", page.len());
            seen.extend(
                page.iter()
                    .map(|d| d["digest"].as_str().unwrap().to_owned()),
            );
            next = r.header("Link").map(|l| {
                l.strip_prefix('<')
                    .unwrap()
                    .split_once('>')
                    .unwrap()
                    .0
                    .to_owned()
            });
            pages += 1;
            assert!(pages < 10, "the Link walk does not end: {url}");
        }
        seen.sort();
        (seen, pages)
    };
    let (seen, pages) = walk(&mut c, format!("/v2/r/referrers/{subject}?n=2"));
    let mut every: Vec<String> = refs.clone();
    every.sort();
    assert_eq!((seen, pages), (every, 3));
    let (seen, _) = walk(
        &mut c,
        format!("/v2/r/referrers/{subject}?n=2&artifactType=application%2Fvnd.example.sbom"),
    );
    assert_eq!(seen, want);
    // Deleting a referrer removes it from the index; unknown subjects give an empty index, not 404.
    c.request("DELETE", &format!("/v2/r/manifests/{}", refs[0]), &[], b"");
    assert_eq!(
        c.get(&format!("/v2/r/referrers/{subject}")).json()["manifests"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
    let none = c.get(&format!("/v2/r/referrers/{MISSING}"));
    assert_eq!(
        (
            none.status,
            none.json()["manifests"].as_array().unwrap().len()
        ),
        (200, 0)
    );
    assert_eq!(
        c.get("/v2/r/referrers/sha256:zz").error_code(),
        "DIGEST_INVALID"
    );
}

fn tags_and_catalog_pagination(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    for repo in ["zeta", "alpha/one", "alpha/two"] {
        for tag in ["v3", "v1", "v2"] {
            push_image(&mut c, repo, tag, b"l");
        }
    }
    let all = c.get("/v2/alpha/one/tags/list").json();
    assert_eq!(
        all,
        serde_json::json!({"name": "alpha/one", "tags": ["v1", "v2", "v3"]})
    );
    let p1 = c.get("/v2/alpha/one/tags/list?n=2");
    assert_eq!(p1.json()["tags"], serde_json::json!(["v1", "v2"]));
    assert_eq!(
        p1.header("Link"),
        Some("</v2/alpha/one/tags/list?n=2&last=v2>; rel=\"next\"")
    );
    let p2 = c.get("/v2/alpha/one/tags/list?n=2&last=v2");
    assert_eq!(p2.json()["tags"], serde_json::json!(["v3"]));
    assert!(p2.header("Link").is_none());
    assert_eq!(c.get("/v2/nothing/tags/list").error_code(), "NAME_UNKNOWN");
    let cat = c.get("/v2/_catalog").json();
    assert_eq!(
        cat["repositories"],
        serde_json::json!(["alpha/one", "alpha/two", "zeta"])
    );
    let p = c.get("/v2/_catalog?n=1&last=alpha%2Fone");
    assert_eq!(p.json()["repositories"], serde_json::json!(["alpha/two"]));
    assert_eq!(
        p.header("Link"),
        Some("</v2/_catalog?n=1&last=alpha%2Ftwo>; rel=\"next\"")
    );
    assert_eq!(c.get("/v2/_catalog?n=x").status, 400);
}

fn wrong_methods_are_405(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    assert_eq!(c.request("POST", "/v2/a/manifests/x", &[], b"").status, 405);
    assert_eq!(c.request("PUT", "/v2/_catalog", &[], b"").status, 405);
    assert_eq!(c.request("OPTIONS", "/v2/", &[], b"").status, 405);
}

/// Plain-HTTP downloads of cached blobs go out by `sendfile`: exactly the blob, whole and in
/// ranges, several times over one connection, counted in `wharf_file_sends_total`.
fn blob_downloads_by_sendfile(driver: &str) {
    let s = Server::start(driver);
    let data: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let d = push_blob(&mut s.client(), "dl/x", &data);
    let path = format!("/v2/dl/x/blobs/{d}");
    let mut c = s.client();
    for _ in 0..3 {
        let r = c.get(&path);
        assert_eq!(r.status, 200);
        assert!(r.body == data, "body differs");
        let r = c.request("GET", &path, &[("Range", "bytes=1000-3999999")], b"");
        assert_eq!(r.status, 206);
        assert!(r.body[..] == data[1000..4_000_000], "range differs");
    }
    let metrics = c.get("/metrics").body_text();
    let sends = |p: &str| sample(&metrics, &format!("wharf_file_sends_total{{path=\"{p}\"}}"));
    assert_eq!(sends("sendfile"), Some(6.0), "{metrics}");
    assert_eq!(sends("tls"), Some(0.0), "{metrics}");
}

/// Blobs a backend hands out as streams or redirects (the object-store paths; a test-only hook makes the
/// filesystem backend do it) arrive whole and in ranges, several times over one connection, and
/// HEAD reads nothing. A stream that ends short of its length breaks the connection: the client
/// gets fewer bytes than announced and then EOF, never a complete-looking body.
fn blob_downloads_as_backend_streams(driver: &str) {
    let env = |mode| {
        [
            ("WHARF_FAULT_HOOKS", "1"),
            ("WHARF_FAULT_BLOB_STREAM", mode),
        ]
    };
    let s = Server::start_with_env(driver, "", &env("1"));
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let d = push_blob(&mut s.client(), "st/x", &data);
    let path = format!("/v2/st/x/blobs/{d}");
    let mut c = s.client();
    for _ in 0..2 {
        let r = c.get(&path);
        assert_eq!(r.status, 200);
        assert!(r.body == data, "streamed body differs");
        let r = c.request("GET", &path, &[("Range", "bytes=700000-2999999")], b"");
        assert_eq!(r.status, 206);
        assert_eq!(
            r.header("Content-Range"),
            Some("bytes 700000-2999999/3000000")
        );
        assert!(r.body[..] == data[700_000..], "streamed range differs");
        let r = c.request("HEAD", &path, &[], b"");
        assert_eq!(r.header("Content-Length"), Some("3000000"));
    }
    let metrics = c.get("/metrics").body_text();
    let sends = |p: &str| sample(&metrics, &format!("wharf_file_sends_total{{path=\"{p}\"}}"));
    assert_eq!(sends("stream"), Some(4.0), "{metrics}");
    assert_eq!(sends("sendfile"), Some(0.0), "{metrics}");

    let short = Server::start_with_env(driver, "", &env("short"));
    let d = push_blob(&mut short.client(), "st/x", &data);
    let mut tcp = std::net::TcpStream::connect(short.addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let req = format!("GET /v2/st/x/blobs/{d} HTTP/1.1\r\nHost: test\r\n\r\n");
    tcp.write_all(req.as_bytes()).unwrap();
    let mut got = Vec::new();
    // Ends in EOF (a timeout here is an error, not a pass).
    tcp.read_to_end(&mut got)
        .expect("the server closes the broken response");
    let split = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&got[..split]);
    assert!(head.contains("Content-Length: 3000000"), "{head}");
    let body = &got[split..];
    assert_eq!(
        body.len(),
        data.len() - 1,
        "the short stream's bytes, then EOF"
    );
    assert!(body == &data[..data.len() - 1]);

    // A backend that serves the content itself (presigned URLs): GET is a 307 there, HEAD is
    // answered here.
    let redirecting = Server::start_with_env(driver, "", &env("redirect"));
    let mut c = redirecting.client();
    let d = push_blob(&mut c, "st/x", &data);
    let r = c.get(&format!("/v2/st/x/blobs/{d}"));
    assert_eq!(r.status, 307);
    let elsewhere = "http://127.0.0.1:9/elsewhere?size=3000000";
    assert_eq!(r.header("Location"), Some(elsewhere));
    assert_eq!(r.header("Docker-Content-Digest"), Some(d.as_str()));
    assert!(r.body.is_empty());
    let r = c.request("HEAD", &format!("/v2/st/x/blobs/{d}"), &[], b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Length"), Some("3000000"));
}

/// `sendfile` reads the file itself, on the worker: a blob not in the page cache would make the
/// worker wait on the disk. Windows that are not all cached (`wharf_sendfile_cold_windows_total`)
/// are copied through a pooled block with the worker's non-blocking reads, or, with
/// `limits.response_buffer_budget` spent (`wharf_response_buffer_fallbacks_total`), read on the
/// blocking pool before `sendfile`; cached ones go straight out. Either way the client gets exactly
/// the blob, whole and in ranges.
fn cold_blobs_are_copied_or_read_on_the_pool_before_sendfile(driver: &str) {
    use std::os::fd::AsRawFd;
    let data: Vec<u8> = (0..20_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    // No budget: no pooled block for a copy.
    for (budget, copied) in [
        ("", true),
        ("[limits]\nresponse_buffer_budget = 0\n", false),
    ] {
        let s = Server::start_with(driver, budget);
        let mut c = s.client();
        let d = push_blob(&mut c, "cold/x", &data);
        let hex = d.strip_prefix("sha256:").unwrap();
        let blob = s.root().join("blobs/sha256").join(&hex[..2]).join(hex);
        let file = std::fs::File::open(&blob).unwrap();
        // Whether this kernel has cachestat(2) (Linux 6.5); without it every window counts as cold.
        let (range, mut stat) = ([0u64, 4096], [0u64; 5]);
        // SAFETY: valid cachestat_range and cachestat structs for the call.
        let cachestat = unsafe {
            libc::syscall(
                451,
                file.as_raw_fd(),
                range.as_ptr(),
                stat.as_mut_ptr(),
                0u32,
            )
        } == 0;
        let path = format!("/v2/cold/x/blobs/{d}");
        let count = |c: &mut Client, name: &str| {
            let m = c.get("/metrics").body_text();
            sample(&m, name).unwrap()
        };
        let cold = |c: &mut Client| count(c, "wharf_sendfile_cold_windows_total");
        let copies = |c: &mut Client| count(c, "wharf_cold_windows_copied_total");
        let fallbacks = |c: &mut Client| count(c, "wharf_response_buffer_fallbacks_total");
        // Just written, and read once more here: in the page cache (memory pressure from other
        // tests in a small cgroup can evict a page of a file written moments ago; once in CI).
        assert!(std::fs::read(&blob).unwrap() == data);
        assert!(c.get(&path).body == data);
        let warm_get = cold(&mut c);
        assert_eq!(warm_get, if cachestat { 0.0 } else { 3.0 });
        let (copies_warm, fallbacks_warm) = (copies(&mut c), fallbacks(&mut c));
        let evict = || {
            // SAFETY: advice on an open descriptor; the clean pages of the file leave the cache.
            let r =
                unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
            assert_eq!(r, 0);
        };
        evict();
        assert!(c.get(&path).body == data, "cold blob differs");
        let cold_get = cold(&mut c);
        assert!(
            cold_get > warm_get,
            "a cold blob was sent without reading it off the worker first"
        );
        // Every cold window copied, or (no budget) none, each send having found no block.
        let copied_now = copies(&mut c) - copies_warm;
        let expect = if copied { cold_get - warm_get } else { 0.0 };
        assert_eq!(copied_now, expect, "budget {budget:?}: windows copied");
        assert_eq!(
            fallbacks(&mut c) > fallbacks_warm,
            !copied,
            "budget {budget:?}"
        );
        evict();
        let r = c.request("GET", &path, &[("Range", "bytes=9000001-17777776")], b"");
        assert_eq!(r.status, 206);
        assert!(
            r.body[..] == data[9_000_001..17_777_777],
            "cold range differs"
        );
        assert!(c.get(&path).body == data);
        let before = cold(&mut c);
        assert!(c.get(&path).body == data);
        let again = cold(&mut c);
        assert_eq!(again - before, if cachestat { 0.0 } else { 3.0 });
    }
}

on_both_drivers!(
    cold_blobs_are_copied_or_read_on_the_pool_before_sendfile,
    blob_downloads_as_backend_streams,
    blob_downloads_by_sendfile,
    api_version_header,
    blob_get_head_range_and_isolation,
    monolithic_upload_with_wrong_digest_is_digest_invalid,
    chunked_upload_session,
    upload_completion_with_wrong_digest_removes_data,
    upload_cancel_and_unknown_ids,
    sessions_touch_the_disk_at_their_first_chunk,
    sha512_uploads_and_digest_algorithm_hint,
    cross_repository_mount,
    manifests_by_tag_and_digest,
    manifest_validation_errors,
    referrers_with_filter,
    tags_and_catalog_pagination,
    wrong_methods_are_405,
    conditional_tag_updates_are_compare_and_swap,
);

/// `If-Match` / `If-None-Match` on a tag make its update a compare-and-swap: the precondition is
/// checked against what the tag points at (its ETag, the manifest digest) in the same step as the
/// change, so of many clients racing to move a tag from one digest exactly one wins.
fn conditional_tag_updates_are_compare_and_swap(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(&mut c, "cas/app", cfg);
    let ld = push_blob(&mut c, "cas/app", b"layer");
    let variant = |n: usize| numbered_manifest(&cd, cfg.len(), &ld, n, 0);
    let put = |c: &mut Client, tag: &str, m: &[u8], cond: &[(&str, &str)]| {
        let mut h = vec![("Content-Type", OCI_MANIFEST)];
        h.extend_from_slice(cond);
        c.request("PUT", &format!("/v2/cas/app/manifests/{tag}"), &h, m)
    };
    let points_at = |c: &mut Client, tag: &str| {
        let r = c.request("HEAD", &format!("/v2/cas/app/manifests/{tag}"), &[], b"");
        (r.status == 200).then(|| r.header("Docker-Content-Digest").unwrap().to_owned())
    };
    let (m1, m2) = (variant(1), variant(2));
    let (d1, d2) = (sha256(&m1), sha256(&m2));
    let quoted = |d: &str| format!("\"{d}\"");
    assert_eq!(put(&mut c, "v1", &m1, &[]).status, 201);
    assert_eq!(
        c.get("/v2/cas/app/manifests/v1").header("ETag"),
        Some(quoted(&d1).as_str())
    );

    // If-None-Match: * creates, never overwrites.
    let r = put(&mut c, "v1", &m2, &[("If-None-Match", "*")]);
    assert_eq!((r.status, r.error_code().as_str()), (412, "DENIED"));
    assert!(
        r.body_text().contains(&format!("tag v1 points at {d1}")),
        "{}",
        r.body_text()
    );
    assert_eq!(points_at(&mut c, "v1"), Some(d1.clone()));
    assert_eq!(
        put(&mut c, "fresh", &m2, &[("If-None-Match", "*")]).status,
        201
    );
    assert_eq!(points_at(&mut c, "fresh"), Some(d2.clone()));

    // If-Match moves a tag only from the digest named; If-Match: * only if it exists.
    let r = put(&mut c, "v1", &m2, &[("If-Match", &quoted(&d2))]);
    assert_eq!(r.status, 412, "{}", r.body_text());
    assert_eq!(points_at(&mut c, "v1"), Some(d1.clone()));
    assert_eq!(put(&mut c, "absent", &m2, &[("If-Match", "*")]).status, 412);
    assert_eq!(points_at(&mut c, "absent"), None);
    let both = format!("{}, {}", quoted(&d2), quoted(&d1));
    assert_eq!(put(&mut c, "v1", &m2, &[("If-Match", &both)]).status, 201);
    assert_eq!(points_at(&mut c, "v1"), Some(d2.clone()));
    // A weak entity tag never matches.
    let weak = format!("W/{}", quoted(&d2));
    assert_eq!(put(&mut c, "v1", &m1, &[("If-Match", &weak)]).status, 412);

    // Deletes: If-Match on the tag; on a digest, whether the manifest is there.
    let del = |c: &mut Client, r: &str, cond: &[(&str, &str)]| {
        c.request("DELETE", &format!("/v2/cas/app/manifests/{r}"), cond, b"")
            .status
    };
    assert_eq!(del(&mut c, "v1", &[("If-Match", &quoted(&d1))]), 412);
    assert_eq!(points_at(&mut c, "v1"), Some(d2.clone()));
    assert_eq!(del(&mut c, "v1", &[("If-Match", &quoted(&d2))]), 202);
    assert_eq!(points_at(&mut c, "v1"), None);
    assert_eq!(del(&mut c, &d1, &[("If-None-Match", "*")]), 412);
    assert_eq!(points_at(&mut c, &d1), Some(d1.clone()));

    // Not entity tags: 400, saying what to send; nothing changed.
    let r = put(&mut c, "fresh", &m1, &[("If-Match", "sha256:abc")]);
    assert_eq!(r.status, 400);
    assert!(r.body_text().contains("quoted digest"), "{}", r.body_text());
    assert_eq!(points_at(&mut c, "fresh"), Some(d2.clone()));

    // 16 clients race to move "race" from d1, each to its own manifest: exactly one wins, and
    // the tag points at the winner's.
    assert_eq!(put(&mut c, "race", &m1, &[]).status, 201);
    let variants: Vec<Vec<u8>> = (10..26).map(variant).collect();
    for m in &variants {
        // Stored by digest first, so the race is only the tag's.
        assert_eq!(put(&mut c, &sha256(m), m, &[]).status, 201);
    }
    let from = quoted(&d1);
    let barrier = std::sync::Barrier::new(variants.len());
    let results: Vec<(u16, String)> = std::thread::scope(|scope| {
        let handles: Vec<_> = variants
            .iter()
            .map(|m| {
                let (barrier, from, addr) = (&barrier, &from, s.addr);
                scope.spawn(move || {
                    let mut c = Client::connect(addr);
                    barrier.wait();
                    let mut h = vec![("Content-Type", OCI_MANIFEST)];
                    h.push(("If-Match", from.as_str()));
                    let r = c.request("PUT", "/v2/cas/app/manifests/race", &h, m);
                    (r.status, sha256(m))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<&String> = results
        .iter()
        .filter(|r| r.0 == 201)
        .map(|r| &r.1)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(
        results.iter().all(|r| r.0 == 201 || r.0 == 412),
        "{results:?}"
    );
    assert_eq!(points_at(&mut c, "race").as_ref(), Some(winners[0]));
}

on_s3!(
    api_version_header,
    blob_get_head_range_and_isolation,
    chunked_upload_session,
    upload_cancel_and_unknown_ids,
    sha512_uploads_and_digest_algorithm_hint,
    cross_repository_mount,
    manifests_by_tag_and_digest,
    manifest_validation_errors,
    referrers_with_filter,
    tags_and_catalog_pagination,
    wrong_methods_are_405,
    conditional_tag_updates_are_compare_and_swap,
);
