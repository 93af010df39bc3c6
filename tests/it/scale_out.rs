//! Several wharf nodes on one bucket of a real SeaweedFS, with no other shared state: an upload
//! started on one node continues on the others, a tag, a blob and an upload session raced from
//! all of them end with one winner and one copy, a node killed mid-chunk loses nothing it
//! acknowledged, and an object store that goes away turns into 503s with `Retry-After` and comes
//! back with everything intact.

use std::io::Write;
use std::process::Command;

use crate::common::layout::Layout;
use crate::common::seaweed::{self, Seaweed};
use crate::common::*;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The `[storage]` tables of a node keeping everything in `weed`'s bucket under `prefix`
/// (`[storage.s3]` last, so more of its keys may follow).
pub(crate) fn on_bucket(weed: &Seaweed, prefix: &str) -> String {
    format!(
        "[storage]\nbackend = \"s3\"\n{}",
        weed.wharf_storage(prefix)
    )
}

/// `n` wharf nodes on `weed`'s bucket under one prefix.
fn nodes(weed: &Seaweed, prefix: &str, n: usize) -> Vec<Server> {
    let storage = on_bucket(weed, prefix);
    (0..n)
        .map(|_| Server::start_with("io_uring", &storage))
        .collect()
}

pub(crate) fn patch(c: &mut Client, loc: &str, start: usize, chunk: &[u8]) -> Resp {
    let range = format!("{start}-{}", start + chunk.len() - 1);
    c.request(
        "PATCH",
        loc,
        &[
            ("Content-Type", "application/octet-stream"),
            ("Content-Range", &range),
        ],
        chunk,
    )
}

/// Push through A, continue a chunked upload through B and C, pull through C with skopeo and
/// crane: byte-identical everywhere.
#[test]
fn three_nodes_serve_one_bucket() {
    let weed = Seaweed::shared();
    let [a, b, c]: [Server; 3] = nodes(weed, "three/", 3).try_into().ok().unwrap();
    let (mut ca, mut cb, mut cc) = (a.client(), b.client(), c.client());

    // One upload, three nodes: 6 MiB on A (all held as the session's tail), 6 MiB on B (a part
    // goes up), 1 MiB on C, completed on A.
    let data = noise(1, 13 << 20);
    let digest = sha256(&data);
    let r = ca.request("POST", "/v2/fleet/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202);
    let loc = r.header("Location").unwrap().to_owned();
    let (x, y) = (6 << 20, 12 << 20);
    assert_eq!(patch(&mut ca, &loc, 0, &data[..x]).status, 202);
    let r = cb.request("GET", &loc, &[], b"");
    assert_eq!(
        (r.status, r.header("Range")),
        (204, Some(format!("0-{}", x - 1).as_str())),
        "B sees the chunk A acknowledged"
    );
    let r = patch(&mut cb, &loc, x, &data[x..y]);
    assert_eq!(r.status, 202, "{}", r.body_text());
    assert_eq!(r.header("Range"), Some(format!("0-{}", y - 1).as_str()));
    assert_eq!(patch(&mut cc, &loc, y, &data[y..]).status, 202);
    let r = ca.request("PUT", &format!("{loc}?digest={digest}"), &[], b"");
    assert_eq!(r.status, 201, "{}", r.body_text());
    for cl in [&mut ca, &mut cb, &mut cc] {
        let got = cl.get(&format!("/v2/fleet/app/blobs/{digest}"));
        assert_eq!(got.status, 200);
        assert!(
            got.body == data,
            "the blob reads back whole from every node"
        );
    }
    // The session is gone everywhere.
    assert_eq!(cc.request("GET", &loc, &[], b"").status, 404);

    // An image pushed through A with skopeo, pulled through C with skopeo and crane.
    let work = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&work.path().join("src"));
    let layers = vec![
        src.add_tar_layer("big.bin", 9 << 20, 7),
        src.add_tar_layer("small.bin", 3_000, 8),
    ];
    let image = src.add_image(&layers, "amd64");
    src.tag(&image, "v1");
    let skopeo = crate::e2e_clients::skopeo;
    run_ok(skopeo().args([
        "copy",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", src.dir.display()),
        &format!("docker://{}/fleet/image:v1", a.host()),
    ]));
    let out = work.path().join("out");
    run_ok(skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/fleet/image:v1", c.host()),
        &format!("oci:{}:v1", out.display()),
    ]));
    let back = Layout::new(&out);
    for l in &layers {
        let (x, y) = (
            std::fs::read(src.blob_path(&l.digest)).unwrap(),
            std::fs::read(back.blob_path(&l.digest)).unwrap(),
        );
        assert!(
            x == y,
            "layer {} differs after the trip through A and C",
            l.digest
        );
    }
    let pulled = work.path().join("crane.tar");
    run_ok(Command::new(tool("crane")).args([
        "pull",
        "--insecure",
        "--format=oci",
        &format!("{}/fleet/image:v1", c.host()),
        &pulled.display().to_string(),
    ]));
    let digest_by_crane = run_ok(Command::new(tool("crane")).args([
        "digest",
        "--insecure",
        &format!("{}/fleet/image:v1", b.host()),
    ]));
    assert_eq!(digest_by_crane.trim(), image.digest);
}

/// 32 clients race on one tag through three nodes: unconditional pushes leave one tag that every
/// node resolves to the same pushed manifest; `If-Match` pushes from the same start have exactly
/// one winner.
#[test]
fn a_tag_raced_from_three_nodes_has_one_winner() {
    let weed = Seaweed::shared();
    let servers = nodes(weed, "race/", 3);
    let mut c = servers[0].client();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(&mut c, "race/app", cfg);
    let ld = push_blob(&mut c, "race/app", b"layer");
    let manifests: Vec<Vec<u8>> = (0..32)
        .map(|n| numbered_manifest(&cd, cfg.len(), &ld, n, 0))
        .collect();
    let put = |node: &Server, m: &[u8], cond: Option<&str>| {
        let mut h = vec![("Content-Type", OCI_MANIFEST)];
        if let Some(e) = cond {
            h.push(("If-Match", e));
        }
        node.client()
            .request("PUT", "/v2/race/app/manifests/t", &h, m)
            .status
    };
    std::thread::scope(|s| {
        for (i, m) in manifests.iter().enumerate() {
            let node = &servers[i % 3];
            s.spawn(move || assert_eq!(put(node, m, None), 201));
        }
    });
    let resolved: Vec<String> = servers
        .iter()
        .map(|n| {
            let r = n.client().get("/v2/race/app/manifests/t");
            assert_eq!(r.status, 200);
            assert_eq!(sha256(&r.body), r.header("Docker-Content-Digest").unwrap());
            r.header("Docker-Content-Digest").unwrap().to_owned()
        })
        .collect();
    assert!(resolved.iter().all(|d| *d == resolved[0]), "{resolved:?}");
    assert!(manifests.iter().any(|m| sha256(m) == resolved[0]));

    // Compare-and-swap from the same starting point: one 201, the rest 412.
    let start = format!("\"{}\"", resolved[0]);
    let fresh: Vec<Vec<u8>> = (100..132)
        .map(|n| numbered_manifest(&cd, cfg.len(), &ld, n, 0))
        .collect();
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = fresh
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let (node, start) = (&servers[i % 3], start.as_str());
                s.spawn(move || put(node, m, Some(start)))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    one_winner(&statuses, 201, 412);
    let tags = servers[2].client().get("/v2/race/app/tags/list").json();
    assert_eq!(tags["tags"], serde_json::json!(["t"]));
}

/// A node killed in the middle of a chunk: the session is where the last acknowledged chunk left
/// it, another node takes the rest, and the blob is whole.
#[test]
fn a_node_killed_mid_chunk_loses_nothing_acknowledged() {
    let weed = Seaweed::shared();
    let mut servers = nodes(weed, "killed/", 2);
    let data = noise(3, 20 << 20);
    let digest = sha256(&data);
    let acked = 9 << 20;
    let loc = {
        let mut ca = servers[0].client();
        let r = ca.request("POST", "/v2/k/app/blobs/uploads/", &[], b"");
        let loc = r.header("Location").unwrap().to_owned();
        assert_eq!(patch(&mut ca, &loc, 0, &data[..acked]).status, 202);
        loc
    };
    // Half of the next chunk is on the wire when the node dies.
    let mut raw = std::net::TcpStream::connect(servers[0].addr).unwrap();
    let rest = data.len() - acked;
    write!(
        raw,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Range: {acked}-{}\r\nContent-Length: {rest}\r\n\r\n",
        data.len() - 1
    )
    .unwrap();
    raw.write_all(&data[acked..acked + rest / 2]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    servers[0].signal_and_wait(libc::SIGKILL);

    let mut cb = servers[1].client();
    let r = cb.request("GET", &loc, &[], b"");
    assert_eq!(
        (r.status, r.header("Range")),
        (204, Some(format!("0-{}", acked - 1).as_str()))
    );
    let r = patch(&mut cb, &loc, acked, &data[acked..]);
    assert_eq!(r.status, 202, "{}", r.body_text());
    let r = cb.request("PUT", &format!("{loc}?digest={digest}"), &[], b"");
    assert_eq!(r.status, 201, "{}", r.body_text());
    let got = cb.get(&format!("/v2/k/app/blobs/{digest}"));
    assert!(got.body == data, "the blob is whole");
}

/// The object store dies under a node: requests answer 503 with `Retry-After` (never a 500 or a
/// hang), `/readyz` says so, and once the store is back every image pulls intact and pushes go on.
#[test]
fn an_object_store_outage_is_503_and_loses_nothing() {
    let mut weed = Seaweed::start();
    let node = nodes(&weed, "", 1).pop().unwrap();
    let mut c = node.client();
    let layer = noise(4, 300_000);
    let pushed = push_image(&mut c, "o/app", "v1", &layer);
    assert_eq!(c.get("/readyz").status, 200);

    weed.kill();
    let mut c = node.client();
    for (method, path, body) in [
        ("GET", "/v2/o/app/manifests/v1".to_owned(), &b""[..]),
        ("GET", format!("/v2/o/app/blobs/{}", sha256(&layer)), b""),
        ("POST", "/v2/o/app/blobs/uploads/".to_owned(), b""),
        (
            "POST",
            format!("/v2/o/app/blobs/uploads/?digest={}", sha256(b"new")),
            b"new",
        ),
    ] {
        let r = c.request(method, &path, &[], body);
        assert_eq!(r.status, 503, "{method} {path}: {}", r.body_text());
        assert_eq!(r.error_code(), "UNAVAILABLE");
        assert_eq!(r.header("Retry-After"), Some("5"));
    }
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    assert_eq!(c.get("/readyz").status, 503);

    weed.restart();
    wait_for("the node to see the store again", || {
        node.client().get("/readyz").status == 200
    });
    // SeaweedFS answers bucket listings (the readiness probe) before its volume serves objects
    // again; wharf says 503 meanwhile. Anything else (a 404 above all) is an answer.
    wait_for("the store to serve objects again", || {
        node.client().get("/v2/o/app/manifests/v1").status != 503
    });
    let mut c = node.client();
    let r = c.get("/v2/o/app/manifests/v1");
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(pushed.as_str()),
        "{} {}",
        r.status,
        r.body_text()
    );
    assert!(c.get(&format!("/v2/o/app/blobs/{}", sha256(&layer))).body == layer);
    push_image(&mut c, "o/app", "v2", &noise(5, 1000));
}

/// A key the store refuses writes to (short of a permission, or revoked at the store): the
/// node starts (it may list and read), serves what is stored, and answers every write with
/// 503 `UNAVAILABLE` and `Retry-After`, never a 500; its log names the store's refusal.
#[test]
fn writes_the_store_refuses_are_503_and_logged() {
    let weed = Seaweed::shared();
    let writer = nodes(weed, "readonly/", 1).pop().unwrap();
    let layer = noise(6, 3000);
    push_image(&mut writer.client(), "r/app", "v1", &layer);
    let key = format!("access_key_id = \"{}\"", seaweed::ACCESS_KEY);
    let read_only = format!("access_key_id = \"{}\"", seaweed::READ_ONLY_KEY);
    let storage = on_bucket(weed, "readonly/").replace(&key, &read_only);
    assert!(storage.contains(&read_only));
    let node = Server::start_with("io_uring", &storage);
    let mut c = node.client();
    let r = c.get("/v2/r/app/manifests/v1");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(c.get(&format!("/v2/r/app/blobs/{}", sha256(&layer))).body == layer);
    for (method, path, body) in [
        ("POST", "/v2/r/app/blobs/uploads/".to_owned(), &b""[..]),
        (
            "POST",
            format!("/v2/r/app/blobs/uploads/?digest={}", sha256(b"new")),
            b"new",
        ),
        ("DELETE", "/v2/r/app/manifests/v1".to_owned(), b""),
    ] {
        let r = c.request(method, &path, &[], body);
        assert_eq!(r.status, 503, "{method} {path}: {}", r.body_text());
        assert_eq!(r.error_code(), "UNAVAILABLE");
        assert_eq!(r.header("Retry-After"), Some("5"));
    }
    node.wait_for_log("AccessDenied");
    // Nothing was lost by the refused delete.
    assert_eq!(writer.client().get("/v2/r/app/manifests/v1").status, 200);
}

/// `wharf gc` on the bucket deletes an unreferenced blob past the grace period, keeps what a
/// manifest references, what is younger than the grace period, and an old blob a client has
/// just been told exists (its hold); the repository links of deleted blobs go too.
#[test]
fn gc_on_the_bucket_deletes_only_garbage() {
    let weed = Seaweed::shared();
    let node = Server::start_with(
        "io_uring",
        &format!("[gc]\ngrace = \"2s\"\n{}", on_bucket(weed, "gc-once/")),
    );
    let mut c = node.client();
    let image = push_image(&mut c, "g/app", "v1", &noise(6, 50_000));
    let garbage = push_blob(&mut c, "g/app", &noise(7, 20_000));
    let held = push_blob(&mut c, "g/app", &noise(8, 20_000));
    // Past the grace period by the store's clock (whole seconds, so 1.5 s more).
    std::thread::sleep(std::time::Duration::from_millis(3_500));
    let young = push_blob(&mut c, "g/app", &noise(9, 20_000));
    // A client asks about `held` (as before pushing a manifest that uses it).
    let r = c.request("HEAD", &format!("/v2/g/app/blobs/{held}"), &[], b"");
    assert_eq!(r.status, 200);

    let (ok, out) = node.run_wharf(&["gc"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("deleted blob {garbage}")), "{out}");
    for kept in [&held, &young] {
        assert!(!out.contains(kept.as_str()), "{out}");
        assert_eq!(c.get(&format!("/v2/g/app/blobs/{kept}")).status, 200);
    }
    let r = c.request("HEAD", &format!("/v2/g/app/blobs/{garbage}"), &[], b"");
    assert_eq!(r.status, 404);
    let r = c.get("/v2/g/app/manifests/v1");
    assert_eq!(r.header("Docker-Content-Digest"), Some(image.as_str()));
    crate::gc::pull_verified(&mut c, "g/app", "v1");
    // The blob can be pushed again and serves.
    let again = push_blob(&mut c, "g/app", &noise(7, 20_000));
    assert_eq!(again, garbage);
    assert_eq!(c.get(&format!("/v2/g/app/blobs/{garbage}")).status, 200);
}

/// Three nodes on one bucket: for a minute, A collects every second and `wharf gc` runs in a
/// loop, while B and C push images whose layers come from a shared pool (checked with HEAD and skipped when
/// present, as Docker does, with a pause before the manifest) and delete the image each push
/// replaces. With a 2-second grace, layers
/// keep falling out of use and crossing it, so the collector keeps deleting blobs clients have
/// just been told exist. Every manifest push succeeds — unless the client took longer than the
/// grace period since it was told about the missing blob (`gc::Told`), then it pushes again — and
/// every tag pulls whole afterwards.
#[test]
fn gc_in_a_loop_on_one_node_never_loses_what_others_push() {
    let weed = Seaweed::shared();
    let storage = on_bucket(weed, "gc-loop/");
    let a = Server::start_logged(
        "io_uring",
        &format!("[gc]\ninterval = \"1s\"\ngrace = \"2s\"\n{storage}"),
        "warn,wharf::gc=debug",
    );
    // What the collector promises on S3: a blob a client was told about stays for the grace.
    const GC_LOOP_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
    let pushers_at = [
        Server::start_with("io_uring", &storage),
        Server::start_with("epoll", &storage),
    ];
    let stop_at = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let collector = crate::gc::gc_in_a_loop(a.config_file(), stop_at);
    // A refused manifest PUT ends its pusher and is reported once the collectors are done,
    // with what the bucket and the collectors say about the blob.
    let results: Vec<Result<(u32, u32), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let addr = pushers_at[t % 2].addr;
                s.spawn(move || {
                    let mut c = Client::connect(addr);
                    let repo = format!("team{}/app", t % 3);
                    let (mut pushed, mut i, mut slow) = (0, 0usize, 0u32);
                    let mut previous: Option<String> = None;
                    while std::time::Instant::now() < stop_at {
                        i += 1;
                        let mut told = crate::gc::Told::default();
                        let k = (t * 7 + i * 13) % 30;
                        let shared = vec![b'a' + (k % 26) as u8; 3000 + k];
                        let d = told.head_or_push(&mut c, &repo, &shared);
                        let own = format!("layer {t}/{i}").into_bytes();
                        let od = told.push(&mut c, &repo, &own);
                        let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
                        let cd = told.head_or_push(&mut c, &repo, cfg);
                        let m = image_manifest(
                            &cd,
                            cfg.len(),
                            &[(d.as_str(), shared.len()), (od.as_str(), own.len())],
                        );
                        std::thread::sleep(std::time::Duration::from_millis(150));
                        let r = c.request(
                            "PUT",
                            &format!("/v2/{repo}/manifests/t{t}"),
                            &[("Content-Type", OCI_MANIFEST)],
                            &m,
                        );
                        if r.status != 201 {
                            let e = r.body_text();
                            if told.outlived(&e, GC_LOOP_GRACE) {
                                slow += 1;
                                continue;
                            }
                            return Err(format!(
                                "manifest PUT in {repo} while gc ran: {} {e}\n{}",
                                r.status,
                                blob_objects(weed, "gc-loop/", &e)
                            ));
                        }
                        pushed += 1;
                        // The image it replaced goes: its layers become garbage unless shared.
                        if let Some(old) = previous.replace(sha256(&m)) {
                            let path = format!("/v2/{repo}/manifests/{old}");
                            let r = c.request("DELETE", &path, &[], b"");
                            assert_eq!(r.status, 202, "{}", r.body_text());
                        }
                    }
                    Ok((pushed, slow))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let crate::gc::Collected {
        runs,
        blobs: by_cli,
        lines,
        ..
    } = collector.join().unwrap();
    for r in &results {
        if let Err(e) = r {
            panic!("{e}\n{}", collected_lines(e, &a.log(), &lines));
        }
    }
    let (pushed, slow) = results
        .into_iter()
        .map(Result::unwrap)
        .fold((0, 0), |(p, s), (p1, s1)| (p + p1, s + s1));
    let deleted = by_cli + a.log().matches("deleted blob").count();
    assert!(
        pushed > 50 && runs > 2,
        "pushed {pushed} ({slow} more outlived the grace period), gc runs {runs}"
    );
    // The collector did collect while the pushes ran (else the test proves nothing).
    assert!(deleted > 0, "no blob was deleted in {runs} runs");
    let mut c = a.client();
    for t in 0..6 {
        crate::gc::pull_verified(&mut c, &format!("team{}/app", t % 3), &format!("t{t}"));
    }
}

/// How the bucket (under `prefix`) holds the blob a failure message `e` names, right now: its
/// pointer, the repository's link, its hold and its tombstone.
fn blob_objects(weed: &Seaweed, prefix: &str, e: &str) -> String {
    let Some(digest) = crate::gc::named_digest(e) else {
        return String::new();
    };
    let hex = &digest[7..];
    let repo = e
        .split("is not in repository ")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap_or("?");
    [
        format!("blobs/sha256/{hex}"),
        format!("repos/{repo}/_layers/sha256/{hex}"),
        format!("holds/sha256/{hex}"),
        format!("doomed/sha256/{hex}"),
    ]
    .iter()
    .map(|k| weed.describe(&format!("{prefix}{k}")))
    .collect::<Vec<_>>()
    .join("\n")
}

/// What the server's collector and `wharf gc` logged about the blob a failure message names.
fn collected_lines(e: &str, server_log: &str, cli: &[String]) -> String {
    let Some(digest) = crate::gc::named_digest(e) else {
        return String::new();
    };
    let server = server_log.lines().map(|l| ("server", l));
    let cli = cli.iter().map(|l| ("wharf gc", l.as_str()));
    let lines: Vec<String> = server
        .chain(cli)
        .filter(|(_, l)| l.contains(digest))
        .map(|(who, l)| format!("{who}: {l}"))
        .collect();
    if lines.is_empty() {
        "no collector logged deleting it".into()
    } else {
        lines.join("\n")
    }
}

/// With `redirect = true`, blob GETs answer 307 to a presigned URL of the store, which clients
/// follow (curl, crane); HEAD and small blobs stay on wharf.
#[test]
fn blob_gets_redirect_to_presigned_urls() {
    let weed = Seaweed::shared();
    let node = Server::start_with(
        "io_uring",
        &format!(
            "{}redirect = true\nredirect_ttl = \"5m\"\n",
            on_bucket(weed, "redirect/")
        ),
    );
    let mut c = node.client();
    let layer = noise(10, 300_000);
    let image = push_image(&mut c, "r/app", "v1", &layer);
    let d = sha256(&layer);
    let r = c.get(&format!("/v2/r/app/blobs/{d}"));
    assert_eq!(r.status, 307);
    let location = r.header("Location").unwrap().to_owned();
    assert!(location.contains("X-Amz-Signature="), "{location}");
    let head = c.request("HEAD", &format!("/v2/r/app/blobs/{d}"), &[], b"");
    assert_eq!(
        (head.status, head.header("Content-Length")),
        (200, Some("300000"))
    );
    let fetched = Command::new("curl")
        .args([
            "-sSfL",
            &format!("http://{}/v2/r/app/blobs/{d}", node.host()),
        ])
        .output()
        .unwrap();
    assert!(fetched.status.success(), "{fetched:?}");
    assert!(fetched.stdout == layer, "the presigned URL serves the blob");
    let digest = crane_pull_digest(&format!("{}/r/app:v1", node.host()));
    assert_eq!(digest, image);
}

/// A node on an `https` object store with a private CA (`ca_bundle`): a multipart push, a chunked
/// upload and pulls go over TLS to the store. Without the CA, `check-config` and `serve` stop
/// with a certificate error naming `storage.s3.endpoint`.
#[test]
fn a_node_on_an_https_store_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::common::pki::Pki::new(dir.path());
    let weed = Seaweed::start_tls(&pki);
    let storage = on_bucket(&weed, "tls/");
    let with_ca = format!(
        "{storage}ca_bundle = \"{}\"\n",
        pki.path("ca.crt").display()
    );
    let node = Server::start_with("io_uring", &with_ca);
    let mut c = node.client();
    let layer = noise(11, 9 << 20);
    push_image(&mut c, "tls/app", "v1", &layer);
    let data = noise(12, 7 << 20);
    let r = c.request("POST", "/v2/tls/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202);
    let loc = r.header("Location").unwrap().to_owned();
    assert_eq!(patch(&mut c, &loc, 0, &data[..6 << 20]).status, 202);
    assert_eq!(patch(&mut c, &loc, 6 << 20, &data[6 << 20..]).status, 202);
    let done = format!("{loc}?digest={}", sha256(&data));
    assert_eq!(c.request("PUT", &done, &[], b"").status, 201);
    let got = c.get(&format!("/v2/tls/app/blobs/{}", sha256(&data)));
    assert!(
        got.status == 200 && got.body == data,
        "the chunked blob reads back"
    );
    crate::gc::pull_verified(&mut c, "tls/app", "v1");
    let (ok, out) = node.run_wharf(&["check-config"]);
    assert!(ok, "{out}");

    let cfg = dir.path().join("no-ca.toml");
    std::fs::write(&cfg, &storage).unwrap();
    for cmd in ["check-config", "serve"] {
        let out = Command::new(wharf_bin())
            .args([cmd, "-c"])
            .arg(&cfg)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd}: {text}");
        assert!(
            text.contains("storage.s3.endpoint") && text.contains("certificate"),
            "{cmd}: {text}"
        );
    }
}

/// A node with `redirect = true` holding a two-layer image (300 kB and 2 MB tar layers from
/// `seeds`) pushed by skopeo from an OCI layout, tagged `v1`; no redirect answered yet.
struct RedirectedImage {
    node: Server,
    work: tempfile::TempDir,
    src: Layout,
    layers: [crate::common::layout::Blob; 2],
    image: crate::common::layout::Blob,
    /// `host:port/<repo>:v1`.
    target: String,
}

impl RedirectedImage {
    fn pushed(prefix: &str, repo: &str, seeds: [u32; 2]) -> RedirectedImage {
        let weed = Seaweed::shared();
        let node = Server::start_logged(
            "io_uring",
            &format!("{}redirect = true\n", on_bucket(weed, prefix)),
            "wharf::access=info",
        );
        let work = tempfile::tempdir().unwrap();
        let mut src = Layout::new(&work.path().join("src"));
        let layers = [
            src.add_tar_layer("a.bin", 300_000, seeds[0]),
            src.add_tar_layer("b.bin", 2_000_000, seeds[1]),
        ];
        let image = src.add_image(&layers, "amd64");
        src.tag(&image, "v1");
        let target = format!("{}/{repo}:v1", node.host());
        run_ok(crate::e2e_clients::skopeo().args([
            "copy",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", src.dir.display()),
            &format!("docker://{target}"),
        ]));
        assert_eq!(redirects(&node), 0);
        RedirectedImage {
            node,
            work,
            src,
            layers,
            image,
            target,
        }
    }
}

/// 307s a node answered (its access log).
fn redirects(node: &Server) -> usize {
    node.log().matches(" 307 ").count()
}

/// skopeo and podman pull an image whose layers answer 307 to presigned URLs of the store: they
/// follow the redirects (counted in the access log) and get every layer byte-identical.
#[test]
fn skopeo_and_podman_follow_redirects_to_the_store() {
    let RedirectedImage {
        node,
        work,
        src,
        layers,
        image,
        target,
    } = RedirectedImage::pushed("redirect-clients/", "rd/app", [21, 22]);
    let skopeo = crate::e2e_clients::skopeo;

    let out = work.path().join("out");
    run_ok(skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{target}"),
        &format!("oci:{}:v1", out.display()),
    ]));
    let back = Layout::new(&out);
    for l in &layers {
        crate::e2e_clients::assert_same_blob(&src.blob_path(&l.digest), &back.blob_path(&l.digest));
    }
    let after_skopeo = redirects(&node);
    assert!(
        after_skopeo >= layers.len(),
        "skopeo: {after_skopeo} redirects"
    );

    let root = work.path().join("podman");
    run_ok(crate::e2e_tls::podman(&root).args(["pull", "--tls-verify=false", &target]));
    let digest = run_ok(crate::e2e_tls::podman(&root).args([
        "image",
        "inspect",
        "--format",
        "{{.Digest}}",
        &target,
    ]));
    assert_eq!(digest.trim(), image.digest);
    assert!(
        redirects(&node) >= after_skopeo + layers.len(),
        "podman did not fetch the layers through the redirects:\n{}",
        node.log()
    );
}

/// A large push keeps three multipart parts going up at once, no more (one store stream is slower
/// than the client): a relay in front of the store holds every part until the test lets them
/// through, sees three waiting, and the in-flight gauge counts exactly three parts' bytes.
#[test]
fn a_large_push_sends_three_parts_at_once() {
    let weed = Seaweed::shared();
    let gate = crate::common::gate::PartGate::start(
        format!("127.0.0.1:{}", weed.s3_port).parse().unwrap(),
    );
    let storage = on_bucket(weed, "parts-at-once/")
        .replace(&weed.endpoint(), &format!("http://{}", gate.addr));
    let node = Server::start_with("io_uring", &storage);
    const PART: usize = 8 << 20;
    let blob = noise(77, 5 * PART + 12_345);
    let pushed = std::thread::scope(|s| {
        let push = s.spawn(|| push_blob(&mut node.client(), "parts/big", &blob));
        wait_for("three parts held at the store", || gate.waiting() == 3);
        let metrics = node.client().get("/metrics").body_text();
        let in_flight = sample(&metrics, "wharf_s3_part_bytes_in_flight");
        gate.open();
        assert_eq!(in_flight, Some((3 * PART) as f64), "{metrics}");
        push.join().unwrap()
    });
    assert_eq!(gate.most_at_once(), 3);
    let back = node.client().get(&format!("/v2/parts/big/blobs/{pushed}"));
    assert_eq!(back.status, 200);
    assert!(back.body == blob, "the blob came back different");
    let metrics = node.client().get("/metrics").body_text();
    assert_eq!(sample(&metrics, "wharf_s3_part_bytes_in_flight"), Some(0.0));
}

/// Virtual-hosted buckets (`path_style = false`): the node reaches the bucket as
/// `wharf.s3.wharf.test`, a name tests/setup.sh maps to 127.0.0.1 while `s3.wharf.test` itself
/// resolves nowhere (so no path-style request could get through); it pushes an image in chunks,
/// lists its tags and pulls, and its redirects name the bucket's host, which curl follows.
#[test]
fn a_virtual_hosted_bucket_is_reached_by_its_own_host_name() {
    use std::net::ToSocketAddrs;
    let weed = Seaweed::shared();
    assert!(
        ("wharf.s3.wharf.test", weed.s3_port)
            .to_socket_addrs()
            .is_ok_and(|mut a| a.any(|a| a.ip().is_loopback())),
        "wharf.s3.wharf.test does not resolve to loopback: run tests/setup.sh (it maps the name in /etc/hosts)"
    );
    assert!(("s3.wharf.test", weed.s3_port).to_socket_addrs().is_err());
    let endpoint = format!("http://s3.wharf.test:{}", weed.s3_port);
    let storage = format!(
        "{}path_style = false\nredirect = true\n",
        on_bucket(weed, "virtual-hosted/").replace(&weed.endpoint(), &endpoint)
    );
    let node = Server::start_with("io_uring", &storage);
    let mut c = node.client();
    let layer = noise(61, 3 << 20);
    let manifest = push_image(&mut c, "vh/app", "v1", &layer);
    let loc = start_upload(&mut c, "vh/app");
    let chunked = noise(62, 300_000);
    assert_eq!(patch(&mut c, &loc, 0, &chunked[..100_000]).status, 202);
    assert_eq!(node.client().get(&loc).status, 204);
    let r = c.request(
        "PUT",
        &format!("{loc}?digest={}", sha256(&chunked)),
        &[],
        &chunked[100_000..],
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
    let tags = c.get("/v2/vh/app/tags/list").json();
    assert_eq!(tags["tags"], serde_json::json!(["v1"]));
    assert_eq!(c.get("/v2/vh/app/manifests/v1").status, 200, "{manifest}");

    let r = c.get(&format!("/v2/vh/app/blobs/{}", sha256(&layer)));
    assert_eq!(r.status, 307);
    let to = r.header("Location").unwrap().to_owned();
    let bucket_host = format!("http://wharf.s3.wharf.test:{}/", weed.s3_port);
    assert!(to.starts_with(&bucket_host), "redirected to {to}");
    let out = std::process::Command::new("curl")
        .args(["-sSf", &to])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout == layer, "the presigned URL gave other bytes");
}

/// The Docker daemon and containerd (`ctr`) pull through 307s to presigned URLs as well: the
/// layers come from the store (counted in the access log), and the image they assemble is the
/// one pushed.
#[test]
fn docker_and_containerd_follow_redirects_to_the_store() {
    let RedirectedImage {
        node,
        layers,
        image,
        target,
        ..
    } = RedirectedImage::pushed("redirect-daemons/", "rd/daemons", [31, 32]);
    let daemon = crate::common::docker::Dockerd::start();

    // Docker treats 127.0.0.0/8 as an insecure registry: plain HTTP, as this node speaks.
    run_ok(daemon.docker().args(["pull", &target]));
    let ids = run_ok(daemon.docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}} {{json .RootFS.Layers}}",
        &target,
    ]));
    assert!(
        ids.contains(&image.digest),
        "docker pulled {ids}, not {}",
        image.digest
    );
    for l in &layers {
        assert!(
            ids.contains(&l.diff_id),
            "layer {} missing in {ids}",
            l.diff_id
        );
    }
    let after_docker = redirects(&node);
    assert!(
        after_docker >= layers.len(),
        "docker did not fetch the layers through the redirects:\n{}",
        node.log()
    );

    run_ok(
        daemon
            .ctr()
            .args(["images", "pull", "--plain-http", &target]),
    );
    let listed = run_ok(daemon.ctr().args(["images", "ls"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&target) && l.contains(&image.digest)),
        "ctr lists {listed}"
    );
    assert!(
        redirects(&node) >= after_docker + layers.len(),
        "ctr did not fetch the layers through the redirects:\n{}",
        node.log()
    );
}

/// `curl` signed for `weed`'s bucket: `key` under the bucket, extra arguments first.
pub(crate) fn bucket_curl(weed: &Seaweed, key: &str, args: &[&str]) -> Vec<u8> {
    let out = weed.curl(key).arg("-sSf").args(args).output().unwrap();
    assert!(out.status.success(), "curl {key}: {out:?}");
    out.stdout
}

/// Bytes changed in the bucket behind wharf's back never reach a client as a complete body: a
/// streamed blob's response breaks off before its last bytes, an inline one is an error.
#[test]
fn tampered_bytes_in_the_bucket_never_reach_a_client_whole() {
    let weed = Seaweed::shared();
    let node = Server::start_with("io_uring", &on_bucket(weed, "tamper/"));
    let mut c = node.client();
    for len in [3 << 20, 1000] {
        let data = noise(13, len);
        let d = push_blob(&mut c, "t/app", &data);
        let pointer = bucket_curl(weed, &format!("tamper/blobs/{}", d.replace(':', "/")), &[]);
        let pointer = String::from_utf8(pointer).unwrap();
        let data_key = pointer.lines().nth(2).expect("a pointer names its data");
        let mut tampered = data.clone();
        tampered[len - 1] ^= 1;
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &tampered).unwrap();
        let upload = file.path().display().to_string();
        bucket_curl(weed, &format!("tamper/{data_key}"), &["-T", &upload]);

        let mut raw = std::net::TcpStream::connect(node.addr).unwrap();
        raw.set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        raw.write_all(
            format!("GET /v2/t/app/blobs/{d} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut got = Vec::new();
        // EOF, not a timeout: the server ends the response.
        std::io::Read::read_to_end(&mut raw, &mut got).expect("the server closes the connection");
        let text = String::from_utf8_lossy(&got[..got.len().min(400)]).into_owned();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let body = &got[head_end..];
        if len > 1 << 20 {
            assert!(text.starts_with("HTTP/1.1 200"), "{text}");
            assert!(
                body.len() < len,
                "a streamed body ends early: {} bytes",
                body.len()
            );
            assert!(
                body == &tampered[..body.len()],
                "what was sent is the store's bytes"
            );
        } else {
            assert!(text.starts_with("HTTP/1.1 5"), "{text}");
            assert!(body != &tampered[..], "the inline blob was served whole");
        }
    }
}

/// A blob streamed from the bucket reads its chunks in large buffers from
/// `limits.response_buffer_budget`: while a client that stops reading holds a stream, the budget
/// counts them (`wharf_response_buffer_bytes`), and gives them back when it ends. With no budget
/// the stream uses small ones (`wharf_response_buffer_fallbacks_total`); both bodies are whole.
#[test]
fn streams_from_the_bucket_take_their_large_buffers_from_the_budget() {
    let weed = Seaweed::shared();
    let data = noise(14, 48 << 20);
    for budget in ["", "[limits]\nresponse_buffer_budget = 0\n"] {
        let node = Server::start_with(
            "io_uring",
            &format!("{budget}{}", on_bucket(weed, "budget/")),
        );
        let mut c = node.client();
        let d = push_blob(&mut c, "b/app", &data);
        let metric =
            |c: &mut Client, name: &str| sample(&c.get("/metrics").body_text(), name).unwrap();
        let fallbacks = metric(&mut c, "wharf_response_buffer_fallbacks_total");
        let mut raw = std::net::TcpStream::connect(node.addr).unwrap();
        raw.write_all(
            format!("GET /v2/b/app/blobs/{d} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut got = vec![0u8; 4096];
        let n = std::io::Read::read(&mut raw, &mut got).unwrap();
        got.truncate(n);
        // The client reads no more: the stream stops with its buffers held (48 MiB do not fit
        // in the sockets' buffers).
        let held = if budget.is_empty() { 1 << 20 } else { 0 };
        wait_for("the stalled stream's buffers counted", || {
            metric(&mut c, "wharf_response_buffer_bytes") == f64::from(held)
        });
        std::io::Read::read_to_end(&mut raw, &mut got).unwrap();
        let head_end = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert!(
            got[head_end..] == data[..],
            "budget {budget:?}: the body differs"
        );
        wait_for("the buffers given back", || {
            metric(&mut c, "wharf_response_buffer_bytes") == 0.0
        });
        let fell_back = metric(&mut c, "wharf_response_buffer_fallbacks_total") - fallbacks;
        assert_eq!(
            fell_back,
            if budget.is_empty() { 0.0 } else { 1.0 },
            "budget {budget:?}"
        );
    }
}

/// GETs by tag take a revision's bytes from the node's cache once read, yet every node sees
/// another node's re-tag and delete at once: the tag object is read each time, and a GET by
/// digest always asks the bucket.
#[test]
fn cached_revisions_never_hide_another_nodes_changes() {
    let weed = Seaweed::shared();
    let [a, b]: [Server; 2] = nodes(weed, "revisions/", 2).try_into().ok().unwrap();
    let (mut ca, mut cb) = (a.client(), b.client());
    let hits = |c: &mut Client| {
        let text = String::from_utf8(c.get("/metrics").body).unwrap();
        sample(&text, "wharf_s3_revision_cache_total{outcome=\"hit\"}").unwrap()
    };
    let first = push_image(&mut ca, "rv/app", "v1", &noise(14, 5_000));
    let before = hits(&mut cb);
    for _ in 0..3 {
        let r = cb.get("/v2/rv/app/manifests/v1");
        assert_eq!(r.header("Docker-Content-Digest"), Some(first.as_str()));
    }
    assert!(
        hits(&mut cb) >= before + 2.0,
        "repeated GETs by tag hit the cache"
    );

    let second = push_image(&mut ca, "rv/app", "v1", &noise(15, 5_000));
    let r = cb.get("/v2/rv/app/manifests/v1");
    assert_eq!(r.header("Docker-Content-Digest"), Some(second.as_str()));

    let r = ca.request(
        "DELETE",
        &format!("/v2/rv/app/manifests/{second}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 202);
    assert_eq!(cb.get("/v2/rv/app/manifests/v1").status, 404);
    assert_eq!(
        cb.get(&format!("/v2/rv/app/manifests/{second}")).status,
        404
    );
    let r = cb.get(&format!("/v2/rv/app/manifests/{first}"));
    assert_eq!(r.status, 200, "the first image is still there by digest");
}

/// Small blobs' bytes, once read and checked, come from the node's cache, yet a blob deleted
/// from a repository on another node is gone at once there: the link is read each time.
#[test]
fn cached_blobs_never_outlive_their_repository_link() {
    let weed = Seaweed::shared();
    let [a, b]: [Server; 2] = nodes(weed, "kept/", 2).try_into().ok().unwrap();
    let (mut ca, mut cb) = (a.client(), b.client());
    let hits = |c: &mut Client| {
        let text = String::from_utf8(c.get("/metrics").body).unwrap();
        sample(&text, "wharf_s3_blob_cache_total{outcome=\"hit\"}").unwrap()
    };
    let blob = noise(16, 3_000);
    let d = push_blob(&mut ca, "kp/one", &blob);
    push_blob(&mut ca, "kp/two", &blob);
    let before = hits(&mut cb);
    for repo in ["kp/one", "kp/two", "kp/one"] {
        let r = cb.get(&format!("/v2/{repo}/blobs/{d}"));
        assert_eq!(r.status, 200);
        assert!(r.body == blob, "{repo}: other bytes");
    }
    assert!(hits(&mut cb) >= before + 2.0, "repeated GETs hit the cache");

    let r = ca.request("DELETE", &format!("/v2/kp/one/blobs/{d}"), &[], b"");
    assert_eq!(r.status, 202);
    assert_eq!(cb.get(&format!("/v2/kp/one/blobs/{d}")).status, 404);
    let r = cb.get(&format!("/v2/kp/two/blobs/{d}"));
    assert_eq!(r.status, 200, "still in the other repository");
    assert!(r.body == blob);
}

/// `wharf fsck` on the bucket: clean after pushes (exit 0, with the counts); then each kind of
/// damage done behind wharf's back is named and fails it (exit 1): a blob whose data was rewritten,
/// one whose data is gone, a tag whose manifest revision is gone, a manifest whose layer is gone,
/// data objects no blob names. Findings younger than `gc.grace` (pushes in progress) are not
/// findings. `--repair` moves what can be moved to quarantine, so nothing broken is served, and the
/// collector keeps the data a quarantined pointer names.
#[test]
fn fsck_on_the_bucket_names_what_is_broken() {
    let weed = Seaweed::shared();
    let node = Server::start_with(
        "io_uring",
        &format!("{}[gc]\ngrace = \"20s\"\n", on_bucket(weed, "fsck/")),
    );
    let mut c = node.client();
    let kept = push_image(&mut c, "f/kept", "v1", &noise(70, 2 << 20));
    let rewritten = push_blob(&mut c, "f/app", &noise(71, 300_000));
    let lost = push_blob(&mut c, "f/app", &noise(72, 1000));
    let layer = noise(73, 5000);
    let unlayered = push_image(&mut c, "f/img", "v1", &layer);
    let untagged = push_image(&mut c, "f/tag", "v1", &noise(74, 100));
    let (ok, out) = node.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
    assert!(out.contains("manifests, 3 tags: 0 problems"), "{out}");

    let data_of = |d: &str| {
        let p = bucket_curl(weed, &format!("fsck/blobs/{}", d.replace(':', "/")), &[]);
        String::from_utf8(p)
            .unwrap()
            .lines()
            .nth(2)
            .unwrap()
            .to_owned()
    };
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), noise(99, 300_000)).unwrap();
    let upload = file.path().display().to_string();
    bucket_curl(
        weed,
        &format!("fsck/{}", data_of(&rewritten)),
        &["-T", &upload],
    );
    bucket_curl(weed, &format!("fsck/{}", data_of(&lost)), &["-X", "DELETE"]);
    let layer_pointer = format!("fsck/blobs/{}", sha256(&layer).replace(':', "/"));
    bucket_curl(weed, &layer_pointer, &["-X", "DELETE"]);
    let revision = format!("fsck/repos/f/tag/_manifests/{}", untagged.replace(':', "/"));
    bucket_curl(weed, &revision, &["-X", "DELETE"]);
    bucket_curl(weed, "fsck/data/left-behind", &["-T", &upload]);
    let damaged = std::time::Instant::now();

    // Just written: every finding but the rewritten and the lost data may be a push in progress.
    let (ok, young) = node.run_wharf(&["fsck"]);
    assert!(!ok, "{young}");
    assert!(young.contains(": 2 problems"), "{young}");
    // Past the grace period for the last object written behind wharf's back (the store's clock
    // counts whole seconds): timed from the pushes, a slow run left it young.
    let past_grace = std::time::Duration::from_secs(23);
    std::thread::sleep(past_grace.saturating_sub(damaged.elapsed()));
    let (ok, out) = node.run_wharf(&["fsck"]);
    assert!(!ok, "{out}");
    let layer = sha256(&layer);
    for finding in [
        format!("blob {rewritten}: its data data/"),
        format!("blob {lost}: its data data/"),
        format!("f/img@{unlayered}: references {layer}, which is not stored"),
        format!("f/img: layer link to {layer}, which is not stored"),
        format!("f/tag:v1 points at {untagged}, which is not stored"),
        "unreferenced data object data/left-behind".to_owned(),
        "--repair quarantines what can be".to_owned(),
    ] {
        assert!(out.contains(&finding), "{finding:?} not in:\n{out}");
    }
    // Also f/app's links to the two broken blobs, and the data of the layer whose pointer went.
    assert!(out.contains(": 9 problems, 0 moved"), "{out}");
    assert!(!out.contains("f/kept"), "{kept} is intact:\n{out}");

    // Repaired: the two broken blobs' pointers, the links to blobs not stored and the tag of the
    // gone revision move to quarantine; a manifest whose layer is gone (push it again) and data
    // no blob names (`wharf gc` deletes it) stay findings.
    let rewritten_data = data_of(&rewritten);
    let (ok, out) = node.run_wharf(&["fsck", "--repair"]);
    assert!(!ok, "{out}");
    assert!(out.contains(": 9 problems, 6 moved to quarantine"), "{out}");
    for moved in [
        format!("blob {rewritten}: its data data/"),
        format!("blob {lost}: its data data/"),
        format!("f/img: layer link to {layer}, which is not stored"),
        format!("f/tag:v1 points at {untagged}, which is not stored"),
    ] {
        let line = out.lines().find(|l| l.contains(&moved));
        assert!(
            line.is_some_and(|l| l.contains("(moved to quarantine/")),
            "{moved:?} not moved:\n{out}"
        );
    }
    assert!(out.contains("3 problems remain"), "{out}");
    // Nothing broken is served: the rewritten blob and the dangling tag are gone, the intact
    // image pulls; the moved pointer is in quarantine and its data is where it was.
    assert_eq!(c.get(&format!("/v2/f/app/blobs/{rewritten}")).status, 404);
    assert_eq!(c.get("/v2/f/tag/manifests/v1").status, 404);
    assert_eq!(c.get("/v2/f/kept/manifests/v1").status, 200);
    let quarantined = out
        .lines()
        .find(|l| l.contains(&format!("blob {rewritten}")))
        .and_then(|l| l.split("(moved to ").nth(1))
        .map(|q| q.trim_end_matches(')').to_owned())
        .unwrap();
    let pointer =
        String::from_utf8(bucket_curl(weed, &format!("fsck/{quarantined}"), &[])).unwrap();
    assert!(pointer.contains(&rewritten_data), "{pointer}");
    // The collector deletes the data no blob names, and keeps what a quarantined pointer names.
    let (ok, gc) = node.run_wharf(&["gc"]);
    assert!(ok, "{gc}");
    assert!(
        gc.contains("unreferenced data object data/left-behind"),
        "{gc}"
    );
    assert!(!gc.contains(&rewritten_data), "{gc}");
    let head = bucket_curl(weed, &format!("fsck/{rewritten_data}"), &["-I"]);
    assert!(
        String::from_utf8_lossy(&head).contains(" 200"),
        "the quarantined blob's data went"
    );
    // Pushed again, the blob is stored anew; what is left is the manifest whose layer is gone.
    let again = push_blob(&mut c, "f/app", &noise(71, 300_000));
    assert!(c.get(&format!("/v2/f/app/blobs/{again}")).body == noise(71, 300_000));
    let (ok, out) = node.run_wharf(&["fsck"]);
    assert!(!ok, "{out}");
    assert!(out.contains(": 1 problems, 0 moved"), "{out}");
    assert!(
        out.contains(&format!("f/img@{unlayered}: references {layer}")),
        "{out}"
    );
}

/// A worker writes a repository's catalog entry once, not with every blob link and manifest:
/// the second push to a repository through the same connection skips it, a new repository is
/// written, and another node lists both.
#[test]
fn the_catalog_entry_is_written_once_per_repository() {
    let weed = Seaweed::shared();
    let [a, b]: [Server; 2] = nodes(weed, "listed/", 2).try_into().ok().unwrap();
    let (mut ca, mut cb) = (a.client(), b.client());
    let writes = |c: &mut Client| {
        let text = c.get("/metrics").body_text();
        let n = |o: &str| {
            sample(
                &text,
                &format!("wharf_s3_catalog_writes_total{{outcome=\"{o}\"}}"),
            )
            .unwrap()
        };
        (n("written"), n("skipped"))
    };
    push_image(&mut ca, "listed/one", "v1", &noise(21, 3_000));
    push_image(&mut ca, "listed/one", "v2", &noise(22, 3_000));
    // Two images: four blob links and two manifests, one entry written.
    assert_eq!(writes(&mut ca), (1.0, 5.0));
    push_blob(&mut ca, "listed/two", &noise(23, 100));
    assert_eq!(writes(&mut ca), (2.0, 5.0));
    let r = cb.get("/v2/_catalog");
    assert_eq!(r.status, 200);
    assert!(
        r.body_text()
            .contains(r#""repositories":["listed/one","listed/two"]"#),
        "{}",
        r.body_text()
    );
}

/// `wharf gc` on the bucket deletes data objects no blob names once they are older than the grace
/// period (an upload that lost a race, a node that died between its bytes and its pointer), and
/// keeps data still being written: named by an upload session, or under a young data hold (what a
/// writer puts down before completing a multipart object, whose `Last-Modified` is its start).
/// Pushed images, a multipart layer among them, still pull intact.
#[test]
fn gc_collects_orphaned_data_but_not_data_being_written() {
    let weed = Seaweed::shared();
    let node = Server::start_with("io_uring", &on_bucket(weed, "orphans/"));
    let mut c = node.client();
    let layer = noise(80, 9 << 20);
    let manifest = push_image(&mut c, "o/app", "v1", &layer);
    // The 9 MiB layer was stored as a multipart object, so its writer put a data hold down.
    let pointer = bucket_curl(
        weed,
        &format!("orphans/blobs/{}", sha256(&layer).replace(':', "/")),
        &[],
    );
    let data_key = String::from_utf8(pointer)
        .unwrap()
        .lines()
        .nth(2)
        .unwrap()
        .to_owned();
    let hold = format!(
        "orphans/holds/data-{}",
        data_key.trim_start_matches("data/")
    );
    bucket_curl(weed, &hold, &["-I"]);
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("bytes");
    std::fs::write(&file, b"orphan").unwrap();
    let file = file.to_str().unwrap();
    for key in ["left-behind", "being-finished", "in-session"] {
        bucket_curl(weed, &format!("orphans/data/{key}"), &["-T", file]);
    }
    // Older than the grace period by the store's whole-second clock; then the hold and the
    // session are written, young.
    std::thread::sleep(std::time::Duration::from_secs(6));
    bucket_curl(weed, "orphans/holds/data-being-finished", &["-T", file]);
    bucket_curl(weed, "orphans/uploads/in-session", &["-T", file]);

    let (ok, out) = node.run_wharf(&["gc", "--grace", "4s", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("would delete unreferenced data object data/left-behind (6 bytes)"),
        "{out}"
    );
    bucket_curl(weed, "orphans/data/left-behind", &[]);
    let (ok, out) = node.run_wharf(&["gc", "--grace", "4s"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("deleted unreferenced data object data/left-behind (6 bytes)"),
        "{out}"
    );
    for kept in ["being-finished", "in-session"] {
        assert!(
            !out.contains(&format!("data/{kept}")),
            "{kept} was collected:\n{out}"
        );
        bucket_curl(weed, &format!("orphans/data/{kept}"), &[]);
    }
    let gone = Command::new("curl")
        .args(["-sSf", "--aws-sigv4", "aws:amz:us-east-1:s3", "--user"])
        .arg(format!(
            "{}:{}",
            crate::common::seaweed::ACCESS_KEY,
            crate::common::seaweed::SECRET_KEY
        ))
        .arg(format!(
            "{}/{}/orphans/data/left-behind",
            weed.endpoint(),
            crate::common::seaweed::BUCKET
        ))
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "data/left-behind is still in the bucket"
    );
    // Everything a pushed image names stayed.
    let r = c.get(&format!("/v2/o/app/manifests/{manifest}"));
    assert_eq!(r.status, 200);
    let m: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let l = m["layers"][0]["digest"].as_str().unwrap();
    let r = c.get(&format!("/v2/o/app/blobs/{l}"));
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), l, "the multipart layer pulls intact");
}

/// A blob uploaded again (to another repository, through another node, by a client that did
/// not ask first) keeps one copy. A new blob smaller than a part goes straight to its bytes and
/// its pointer, with no hold and no look; the second upload's pointer write finds the first
/// one's, holds the blob before it looks further (docs/gc.md, rule 1) and deletes its own bytes.
#[test]
fn a_blob_uploaded_twice_keeps_one_copy() {
    let weed = Seaweed::shared();
    let [a, b]: [Server; 2] = nodes(weed, "twice/", 2).try_into().ok().unwrap();
    let blob = noise(31, 4096);
    let d = push_blob(&mut a.client(), "twice/one", &blob);
    let key = |dir: &str| format!("twice/{dir}/{}", d.replace(':', "/"));
    let status = |k: &str| {
        let args = ["-s", "-o", "/dev/null", "-w", "%{http_code}", "-I"];
        let out = weed.curl(k).args(args).output().unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(status(&key("holds")), "404", "a new blob was held");
    push_blob(&mut b.client(), "twice/two", &blob);
    assert_eq!(
        status(&key("holds")),
        "200",
        "a blob found stored was not held"
    );
    let pointer = String::from_utf8(bucket_curl(weed, &key("blobs"), &[])).unwrap();
    let data_key = pointer.lines().nth(2).unwrap().to_owned();
    let listing = String::from_utf8(bucket_curl(
        weed,
        "?list-type=2&prefix=twice%2Fdata%2F",
        &[],
    ))
    .unwrap();
    let keys: Vec<&str> = listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .collect();
    assert_eq!(keys, [format!("twice/{data_key}")], "{listing}");
    for (node, repo) in [(&a, "twice/one"), (&b, "twice/two"), (&a, "twice/two")] {
        let r = node.client().get(&format!("/v2/{repo}/blobs/{d}"));
        assert_eq!(r.status, 200);
        assert!(r.body == blob, "{repo} through a node pulled other bytes");
    }
}

/// The keys under `prefix` in the bucket (one `ListObjectsV2` page).
pub(crate) fn bucket_keys(weed: &Seaweed, prefix: &str) -> Vec<String> {
    let query = format!("?list-type=2&prefix={}", prefix.replace('/', "%2F"));
    let listing = String::from_utf8(bucket_curl(weed, &query, &[])).unwrap();
    assert!(listing.contains("<ListBucketResult"), "{listing}");
    listing
        .split("<Key>")
        .skip(1)
        .filter_map(|k| k.split("</Key>").next())
        .map(str::to_owned)
        .collect()
}

/// One 12 MiB blob (two multipart parts) pushed at once by 24 clients spread over three nodes,
/// into two repositories, half in one request and half as a session with one chunk: every push
/// is answered 201 with the blob's digest, every node serves the whole blob from both
/// repositories, the bucket keeps one copy of its bytes and no multipart upload, and fsck finds
/// nothing wrong.
#[test]
fn one_blob_pushed_by_24_clients_over_three_nodes_is_stored_once() {
    let weed = Seaweed::shared();
    let servers = nodes(weed, "hammer-blob/", 3);
    let blob = noise(60, 12 << 20);
    let d = sha256(&blob);
    let start = std::sync::Barrier::new(24);
    let answers: Vec<(usize, u16, Option<String>)> = std::thread::scope(|s| {
        let pushes: Vec<_> = (0..24)
            .map(|i| {
                let (node, blob, d, start) = (&servers[i % 3], &blob, &d, &start);
                s.spawn(move || {
                    let repo = ["hb/one", "hb/two"][i % 2];
                    let mut c = node.client();
                    start.wait();
                    let r = if i % 4 < 2 {
                        let url = format!("/v2/{repo}/blobs/uploads/?digest={d}");
                        c.request("POST", &url, &[], blob)
                    } else {
                        let r = c.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
                        assert_eq!(r.status, 202, "{}", r.body_text());
                        let loc = r.header("Location").unwrap().to_owned();
                        let r = patch(&mut c, &loc, 0, blob);
                        assert_eq!(r.status, 202, "client {i}'s chunk: {}", r.body_text());
                        c.request("PUT", &format!("{loc}?digest={d}"), &[], b"")
                    };
                    let digest = r.header("Docker-Content-Digest").map(str::to_owned);
                    (i, r.status, digest)
                })
            })
            .collect();
        pushes.into_iter().map(|p| p.join().unwrap()).collect()
    });
    for (i, status, digest) in &answers {
        assert_eq!(*status, 201, "client {i}");
        assert_eq!(digest.as_deref(), Some(d.as_str()), "client {i}");
    }
    for node in &servers {
        for repo in ["hb/one", "hb/two"] {
            let r = node.client().get(&format!("/v2/{repo}/blobs/{d}"));
            assert_eq!(r.status, 200, "{repo}: {}", r.body_text());
            assert!(r.body == blob, "{repo} through a node pulled other bytes");
        }
    }
    let data = bucket_keys(weed, "hammer-blob/data/");
    assert_eq!(data.len(), 1, "copies of one blob's bytes: {data:?}");
    let open = crate::s3_gc::multipart_uploads(weed, "hammer-blob/");
    assert!(open.is_empty(), "multipart uploads left: {open:?}");
    let (ok, out) = servers[0].run_wharf(&["fsck"]);
    assert!(ok, "fsck after the race:\n{out}");
}

/// Twelve clients over three nodes send a first chunk to one upload session at once, each its
/// own 10 MiB (a multipart part and a tail): exactly one is answered 202 and the rest 416; the
/// losers' multipart uploads are aborted; every node reports the winner's offset; the session
/// completes through another node with the winner's bytes, and no multipart upload is left.
#[test]
fn first_chunks_raced_on_one_upload_from_three_nodes_leave_one_winner() {
    let weed = Seaweed::shared();
    let servers = nodes(weed, "hammer-upload/", 3);
    let r = servers[0]
        .client()
        .request("POST", "/v2/hu/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202, "{}", r.body_text());
    let loc = r.header("Location").unwrap().to_owned();
    let bodies: Vec<Vec<u8>> = (0..12).map(|i| noise(70 + i, 10 << 20)).collect();
    let start = std::sync::Barrier::new(bodies.len());
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let chunks: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(i, body)| {
                let (node, loc, start) = (&servers[i % 3], &loc, &start);
                s.spawn(move || {
                    let mut c = node.client();
                    start.wait();
                    patch(&mut c, loc, 0, body).status
                })
            })
            .collect();
        chunks.into_iter().map(|c| c.join().unwrap()).collect()
    });
    let won = &bodies[one_winner(&statuses, 202, 416)];
    wait_for("the losers' multipart uploads aborted", || {
        crate::s3_gc::multipart_uploads(weed, "hammer-upload/").len() == 1
    });
    for node in &servers {
        let r = node.client().get(&loc);
        assert_eq!(r.status, 204, "{}", r.body_text());
        let end = format!("0-{}", won.len() - 1);
        assert_eq!(r.header("Range"), Some(end.as_str()));
    }
    let d = sha256(won);
    let r = servers[2]
        .client()
        .request("PUT", &format!("{loc}?digest={d}"), &[], b"");
    assert_eq!(r.status, 201, "{}", r.body_text());
    let r = servers[1].client().get(&format!("/v2/hu/app/blobs/{d}"));
    assert!(r.body == *won, "the upload completed with other bytes");
    let open = crate::s3_gc::multipart_uploads(weed, "hammer-upload/");
    assert!(open.is_empty(), "multipart uploads left: {open:?}");
}

/// SeaweedFS killed in the middle of a monolithic push and of a chunk, then started again: both
/// requests are answered 503 `UNAVAILABLE`; the half-sent blob is not there afterwards; the
/// session goes on from its last acknowledged chunk to a whole blob; the push sent again
/// succeeds; the image stored before is intact and fsck finds nothing wrong.
#[test]
fn the_store_killed_mid_push_is_503_and_nothing_half_written_shows() {
    let mut weed = Seaweed::start();
    let node = nodes(&weed, "", 1).pop().unwrap();
    let mut c = node.client();
    let layer = noise(80, 300_000);
    let pushed = push_image(&mut c, "mid/app", "v1", &layer);

    // A session with its first 10 MiB acknowledged (a multipart part and a tail).
    let session = noise(81, 24 << 20);
    let r = c.request("POST", "/v2/mid/app/blobs/uploads/", &[], b"");
    let loc = r.header("Location").unwrap().to_owned();
    let acked = 10 << 20;
    assert_eq!(patch(&mut c, &loc, 0, &session[..acked]).status, 202);

    // A 40 MiB push and the session's next chunk, each half sent when the store dies.
    let blob = noise(82, 40 << 20);
    let d = sha256(&blob);
    let mut push = started_push(node.addr, "mid/app", &blob, 20 << 20);
    let next = &session[acked..];
    let mut chunk = Client::connect(node.addr);
    chunk.send_raw(
        format!(
            "PATCH {loc} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Range: {acked}-{}\r\nContent-Length: {}\r\n\r\n",
            session.len() - 1,
            next.len()
        )
        .as_bytes(),
    );
    chunk.send_raw(&next[..6 << 20]);
    weed.kill();
    for (what, raw, rest) in [
        ("the push", &mut push, &blob[20 << 20..]),
        ("the chunk", &mut chunk, &next[6 << 20..]),
    ] {
        // wharf may answer before the rest arrives; what it then reads of it does not matter.
        let _ = raw.try_send_raw(rest);
        let r = raw
            .try_read_response(false)
            .unwrap_or_else(|| panic!("{what} got no answer\n{}", node.log()));
        assert_eq!(r.status, 503, "{what}: {}", r.body_text());
        assert_eq!(r.error_code(), "UNAVAILABLE", "{what}");
        assert_eq!(r.header("Retry-After"), Some("5"), "{what}");
    }

    weed.restart();
    wait_for("the store to serve objects again", || {
        node.client().get("/v2/mid/app/manifests/v1").status != 503
    });
    let mut c = node.client();
    let r = c.request("HEAD", &format!("/v2/mid/app/blobs/{d}"), &[], b"");
    assert_eq!(r.status, 404, "the half-sent blob is there");
    let r = c.get(&loc);
    assert_eq!(r.status, 204, "{}", r.body_text());
    let end = format!("0-{}", acked - 1);
    assert_eq!(
        r.header("Range"),
        Some(end.as_str()),
        "the session's offset"
    );
    assert_eq!(patch(&mut c, &loc, acked, next).status, 202);
    let sd = sha256(&session);
    let r = c.request("PUT", &format!("{loc}?digest={sd}"), &[], b"");
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert!(c.get(&format!("/v2/mid/app/blobs/{sd}")).body == session);
    assert_eq!(push_blob(&mut c, "mid/app", &blob), d);
    assert!(c.get(&format!("/v2/mid/app/blobs/{d}")).body == blob);
    let r = c.get("/v2/mid/app/manifests/v1");
    assert_eq!(r.header("Docker-Content-Digest"), Some(pushed.as_str()));
    assert!(c.get(&format!("/v2/mid/app/blobs/{}", sha256(&layer))).body == layer);
    let (ok, out) = node.run_wharf(&["fsck"]);
    assert!(ok, "fsck after the outage:\n{out}");
}

/// `/metrics` counts the node's requests to the store by operation and outcome, and times them
/// in a histogram per operation: a push of a multipart layer and its pull show up as puts,
/// parts, multipart calls, heads and gets, each timed; with the store gone, the failed gets are
/// counted.
#[test]
fn requests_to_the_store_are_counted_and_timed_by_operation() {
    let mut weed = Seaweed::start();
    let node = nodes(&weed, "", 1).pop().unwrap();
    let mut c = node.client();
    let layer = noise(96, 20 << 20);
    push_image(&mut c, "metered/app", "v1", &layer);
    let d = sha256(&layer);
    assert!(c.get(&format!("/v2/metered/app/blobs/{d}")).body == layer);
    let text = c.get("/metrics").body_text();
    let value = |series: &str| {
        sample(&text, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
    };
    for (op, least) in [
        ("put", 2.0),
        ("part", 3.0),
        ("multipart", 2.0),
        ("get", 1.0),
    ] {
        let ok = value(&format!(
            "wharf_objectstore_requests_total{{op=\"{op}\",outcome=\"ok\"}}"
        ));
        assert!(ok >= least, "{op}: {ok} answered requests");
        let h = "wharf_objectstore_request_duration_seconds";
        let count = value(&format!("{h}_count{{op=\"{op}\"}}"));
        assert!(count >= ok, "{op}: {count} timed, {ok} answered");
        assert!(value(&format!("{h}_sum{{op=\"{op}\"}}")) > 0.0, "{op}");
        let mut last = 0.0;
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&format!("{h}_bucket{{op=\"{op}\",le=")) else {
                continue;
            };
            let n: f64 = rest.rsplit(' ').next().unwrap().parse().unwrap();
            assert!(n >= last, "{op}: buckets not cumulative:\n{text}");
            last = n;
        }
        assert_eq!(last, count, "{op}: +Inf is not the count");
    }

    let failed = |text: &str| {
        sample(
            text,
            "wharf_objectstore_requests_total{op=\"get\",outcome=\"failed\"}",
        )
        .unwrap()
    };
    let before = failed(&text);
    weed.kill();
    let r = c.get("/v2/metered/app/manifests/v1");
    assert_eq!(r.status, 503, "{}", r.body_text());
    let after = failed(&node.client().get("/metrics").body_text());
    assert!(after > before, "failed gets {before} → {after}");
}
