//! A store that applied a write and lost its answer: wharf's S3 client sends a request again when
//! a pooled connection answers nothing, so a conditional write (`If-None-Match: *` or `If-Match`)
//! it sent before comes back refused by itself. A relay in front of a real SeaweedFS passes the
//! write on, reads the store's answer and closes the connection without it; each write wharf
//! makes once must then still count as made: the blob it acknowledged reads back, the upload it
//! opened continues, the chunk it added counts, the collection it locked runs, the tag it set is
//! answered 201, and the object fsck --repair moved stays in quarantine. The relay can also go
//! silent (a partition, a hung store): requests then answer 503 after `storage.s3.io_timeout`;
//! or throttle (`503 SlowDown`): requests are then sent again before a client is answered.

use crate::common::gate::PartGate;
use crate::common::seaweed::{self, Seaweed};
use crate::common::*;
use crate::scale_out::{bucket_curl, on_bucket, patch};

/// A node on `weed`'s bucket under `prefix` through a relay that lets every request through;
/// `extra` TOML follows the `[storage.s3]` table (more of its keys, or other tables).
fn node_behind_relay(weed: &Seaweed, prefix: &str, extra: &str) -> (Server, PartGate) {
    let gate = PartGate::start(format!("127.0.0.1:{}", weed.s3_port).parse().unwrap());
    gate.open();
    let storage =
        on_bucket(weed, prefix).replace(&weed.endpoint(), &format!("http://{}", gate.addr));
    (
        Server::start_with("io_uring", &format!("{storage}{extra}")),
        gate,
    )
}

/// The store applied the blob's pointer and its answer was lost: the pointer the second attempt
/// is refused by is the push's own, so its data stays and the blob reads back.
#[test]
fn a_blob_whose_pointer_answer_was_lost_reads_back() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "lost-pointer/", "");
    let mut c = node.client();
    // A first push makes the node's connections to the store, so the pointer write goes out on
    // a pooled one (the only kind the client sends again).
    push_blob(&mut c, "lost/app", &noise(90, 1000));
    let blob = noise(91, 3 << 20);
    let d = sha256(&blob);
    gate.lose_answer_to(&format!("/lost-pointer/blobs/{}", d.replace(':', "/")));
    let pushed = push_blob(&mut c, "lost/app", &blob);
    assert_eq!(
        gate.lost(),
        ["HTTP/1.1 200 OK"],
        "the relay did not lose the pointer write's answer"
    );
    let back = c.get(&format!("/v2/lost/app/blobs/{pushed}"));
    assert_eq!(back.status, 200, "{}\n{}", back.body_text(), node.log());
    assert!(back.body == blob, "the blob came back different");
    let (ok, out) = node.run_wharf(&["fsck"]);
    assert!(ok, "fsck found a problem after the lost answer:\n{out}");
}

/// The store applied a new upload session and its answer was lost: the upload is opened all
/// the same and completes.
#[test]
fn an_upload_whose_session_answer_was_lost_continues() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "lost-session/", "");
    let mut c = node.client();
    push_blob(&mut c, "lost/app", &noise(92, 1000));
    gate.lose_answer_to("/lost-session/uploads/");
    let r = c.request("POST", "/v2/lost/app/blobs/uploads/", &[], b"");
    assert_eq!(gate.lost(), ["HTTP/1.1 200 OK"], "no answer was lost");
    assert_eq!(r.status, 202, "{}\n{}", r.body_text(), node.log());
    let loc = r.header("Location").unwrap().to_owned();
    let blob = noise(93, 100_000);
    let r = c.request(
        "PUT",
        &format!("{loc}?digest={}", sha256(&blob)),
        &[],
        &blob,
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert!(c.get(&format!("/v2/lost/app/blobs/{}", sha256(&blob))).body == blob);
}

/// The store applied a chunk's session update (an `If-Match` write) and its answer was lost: the
/// write sent again is refused because of it, and the PATCH is answered 202 with the chunk
/// counted, not 416; the upload goes on and completes with every byte.
#[test]
fn a_chunk_whose_session_answer_was_lost_counts() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "lost-chunk/", "");
    let mut c = node.client();
    push_blob(&mut c, "lost/app", &noise(98, 1000));
    let r = c.request("POST", "/v2/lost/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 202, "{}", r.body_text());
    let loc = r.header("Location").unwrap().to_owned();
    let blob = noise(99, 300_000);
    gate.lose_answer_to("/lost-chunk/uploads/");
    let r = patch(&mut c, &loc, 0, &blob[..100_000]);
    assert_eq!(gate.lost(), ["HTTP/1.1 200 OK"], "no answer was lost");
    assert_eq!(r.status, 202, "{}\n{}", r.body_text(), node.log());
    assert_eq!(r.header("Range"), Some("0-99999"));
    let loc = r.header("Location").unwrap().to_owned();
    let r = patch(&mut c, &loc, 100_000, &blob[100_000..]);
    assert_eq!(r.status, 202, "{}", r.body_text());
    let loc = r.header("Location").unwrap().to_owned();
    let d = sha256(&blob);
    let r = c.request("PUT", &format!("{loc}?digest={d}"), &[], b"");
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert!(c.get(&format!("/v2/lost/app/blobs/{d}")).body == blob);
}

/// The store applied `gc/lock` and its answer was lost: the collection holds the lock it took,
/// runs, and lets it go.
#[test]
fn a_collection_whose_lock_answer_was_lost_runs() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "lost-lock/", "");
    push_blob(&mut node.client(), "lost/app", &noise(94, 1000));
    gate.lose_answer_to("/lost-lock/gc/lock");
    let (ok, out) = node.run_wharf(&["gc"]);
    assert_eq!(
        gate.lost(),
        ["HTTP/1.1 200 OK"],
        "no answer was lost:\n{out}"
    );
    assert!(ok, "the collection did not run:\n{out}");
    let (ok, out) = node.run_wharf(&["gc"]);
    assert!(ok, "the lock was not let go:\n{out}");
}

/// The store applied a create-only tag write (`If-None-Match: *`) and its answer was lost: the
/// write sent again is refused because of it, and the push is answered 201, not 412. The
/// condition still holds against anyone else: the next create-only push of the tag gets 412.
#[test]
fn a_conditional_tag_push_whose_answer_was_lost_is_done() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "lost-tag/", "");
    let mut c = node.client();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(&mut c, "lost/app", cfg);
    let ld = push_blob(&mut c, "lost/app", &noise(95, 1000));
    let put = |c: &mut Client, m: &[u8]| {
        c.request(
            "PUT",
            "/v2/lost/app/manifests/v1",
            &[("Content-Type", OCI_MANIFEST), ("If-None-Match", "*")],
            m,
        )
    };
    let m = image_manifest(&cd, cfg.len(), &[(&ld, 1000)]);
    gate.lose_answer_to("/lost-tag/repos/lost/app/_tags/v1");
    let r = put(&mut c, &m);
    assert_eq!(gate.lost(), ["HTTP/1.1 200 OK"], "no answer was lost");
    assert_eq!(r.status, 201, "{}\n{}", r.body_text(), node.log());
    let head = c.request("HEAD", "/v2/lost/app/manifests/v1", &[], b"");
    assert_eq!(
        head.header("Docker-Content-Digest"),
        Some(sha256(&m).as_str())
    );
    let other = image_manifest(&cd, cfg.len(), &[(&ld, 1000), (&cd, cfg.len())]);
    assert_eq!(put(&mut c, &other).status, 412);
}

/// The store applied fsck --repair's conditional delete of a broken object (after copying it to
/// quarantine) and its answer was lost: SeaweedFS refuses the resent `If-Match` delete of a key
/// that is gone with 412, which is our own delete. The move counts as done, and the copy in
/// quarantine stays (taking the refusal for a rewrite would delete the copy: the object lost).
#[test]
fn an_object_whose_quarantine_delete_answer_was_lost_stays_in_quarantine() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "lost-move/", "[gc]\ngrace = \"0s\"\n");
    push_blob(&mut node.client(), "lost/app", &noise(97, 1000));
    let stray = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(stray.path(), "not a pointer").unwrap();
    bucket_curl(
        weed,
        "lost-move/blobs/stray",
        &["-T", stray.path().to_str().unwrap()],
    );
    // Older than the grace period by the store's clock (whole seconds).
    std::thread::sleep(std::time::Duration::from_secs(2));
    gate.lose_answer_to("/lost-move/blobs/stray");
    let (_, out) = node.run_wharf(&["fsck", "--repair"]);
    assert_eq!(gate.lost().len(), 1, "no answer was lost:\n{out}");
    assert!(
        gate.lost()[0].starts_with("HTTP/1.1 204"),
        "{:?}",
        gate.lost()
    );
    let moved = out
        .lines()
        .find(|l| l.contains("stray object blobs/stray"))
        .and_then(|l| l.split("(moved to ").nth(1))
        .map(|q| q.trim_end_matches(')').to_owned())
        .unwrap_or_else(|| panic!("not moved:\n{out}"));
    let copy = bucket_curl(weed, &format!("lost-move/{moved}"), &[]);
    assert_eq!(copy, b"not a pointer", "{out}");
}

/// The store goes silent (a partition that drops packets, a hung server: connections are taken
/// and nothing answers). `/readyz` says 503 within its own 2 s probe, well before the request
/// timeout; every request that needs the store answers 503 `UNAVAILABLE` with `Retry-After` once
/// `storage.s3.io_timeout` passes instead of waiting for ever; and when the store answers again
/// everything stored reads back and pushes go on.
#[test]
fn a_silent_store_is_503_after_the_io_timeout_and_loses_nothing() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "silent/", "io_timeout = \"10s\"\n");
    let mut c = node.client();
    let layer = noise(94, 300_000);
    let pushed = push_image(&mut c, "silent/app", "v1", &layer);
    assert_eq!(c.get("/readyz").status, 200);

    gate.silence();
    // Past the last probe's answer, which `/readyz` repeats for 2 s.
    std::thread::sleep(std::time::Duration::from_millis(2_100));
    let ready = node
        .client()
        .get_within("/readyz", std::time::Duration::from_secs(5))
        .expect("/readyz did not answer within 5 s of asking while the store is silent");
    assert_eq!(ready.status, 503, "{}", ready.body_text());

    let asks: Vec<(&str, String, Vec<u8>)> = vec![
        ("GET", "/v2/silent/app/manifests/v1".into(), vec![]),
        (
            "GET",
            format!("/v2/silent/app/blobs/{}", sha256(&layer)),
            vec![],
        ),
        ("POST", "/v2/silent/app/blobs/uploads/".into(), vec![]),
        (
            "POST",
            format!("/v2/silent/app/blobs/uploads/?digest={}", sha256(b"new")),
            b"new".to_vec(),
        ),
        ("DELETE", "/v2/silent/app/manifests/v1".into(), vec![]),
    ];
    let answers: Vec<_> = std::thread::scope(|s| {
        let asked: Vec<_> = asks
            .iter()
            .map(|(method, path, body)| {
                let node = &node;
                s.spawn(move || {
                    let r = node.client().request(method, path, &[], body);
                    (format!("{method} {path}"), r)
                })
            })
            .collect();
        asked.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for (what, r) in &answers {
        assert_eq!(r.status, 503, "{what}: {}", r.body_text());
        assert_eq!(r.error_code(), "UNAVAILABLE", "{what}");
        assert_eq!(r.header("Retry-After"), Some("5"), "{what}");
    }
    assert!(
        gate.unanswered() >= asks.len() as u64,
        "the relay left only {} requests unanswered: the 503s did not come from a silent store",
        gate.unanswered()
    );

    gate.speak();
    wait_for("the node to see the store again", || {
        node.client().get("/readyz").status == 200
    });
    let mut c = node.client();
    let r = c.get("/v2/silent/app/manifests/v1");
    assert_eq!(
        r.header("Docker-Content-Digest"),
        Some(pushed.as_str()),
        "the tag after the silence: {} {}",
        r.status,
        r.body_text()
    );
    assert!(
        c.get(&format!("/v2/silent/app/blobs/{}", sha256(&layer)))
            .body
            == layer
    );
    push_image(&mut c, "silent/app", "v2", &noise(95, 1000));
    let (ok, out) = node.run_wharf(&["fsck"]);
    assert!(ok, "fsck found a problem after the silence:\n{out}");
}

/// A store that throttles (`503 SlowDown`, as S3 does under a burst) is asked again before a
/// client hears of it: a blob GET and a tag write each throttled twice are answered as if nothing
/// had happened, the retries counted; a blob's bytes throttled past the three retries make its
/// GET answer `503` with `Retry-After` after exactly four attempts, and the next GET reads the
/// blob. A multi-range GET throttled past its retries is a `503` too.
#[test]
fn a_throttling_store_is_asked_again_before_a_client_hears_of_it() {
    let weed = Seaweed::shared();
    let (node, gate) = node_behind_relay(weed, "throttled/", "");
    let mut c = node.client();
    let blob = noise(95, 3 << 20);
    let d = push_blob(&mut c, "throttled/app", &blob);
    let path = format!("/v2/throttled/app/blobs/{d}");
    let data = format!("GET /{}/throttled/data/", seaweed::BUCKET);

    gate.throttle(&data, 2);
    let r = c.get(&path);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(
        r.body == blob,
        "the blob read after two throttled GETs differs"
    );
    assert_eq!(gate.throttled(), 2, "the blob's data was not throttled");
    assert!(metric(&node, "wharf_objectstore_retries_total") >= 2.0);

    // The blob's bytes are asked for before the response head goes out: a store that keeps
    // throttling them is a 503, not a response broken off after its head.
    gate.throttle(&data, 100);
    let r = c.get(&path);
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.header("Retry-After").is_some(), "503 without Retry-After");
    assert_eq!(gate.throttled(), 2 + 4, "one attempt and three retries");
    // So are a multi-range answer's: its first part's bytes are asked for before its head.
    let ranges = [("Range", "bytes=0-99,2000000-2000099")];
    let r = c.request("GET", &path, &ranges, b"");
    assert_eq!(r.status, 503, "a multi-range GET: {}", r.body_text());
    assert!(r.header("Retry-After").is_some(), "503 without Retry-After");
    assert_eq!(
        gate.throttled(),
        6 + 4,
        "the first part's bytes were not asked for"
    );
    gate.throttle(&data, 0);
    let r = c.get(&path);
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(r.body == blob);
    let r = c.request("GET", &path, &ranges, b"");
    assert_eq!(r.status, 206, "{}", r.body_text());
    let parts = crate::ranges::parse_multipart(r.header("Content-Type").unwrap(), &r.body);
    let want = crate::ranges::expected(&blob, &[(0, 99), (2_000_000, 2_000_099)]);
    assert!(parts == want, "the parts read after the throttling differ");

    let tag = format!(
        "PUT /{}/throttled/repos/throttled/app/_tags/v1",
        seaweed::BUCKET
    );
    gate.throttle(&tag, 2);
    let pushed = push_image(&mut c, "throttled/app", "v1", &noise(96, 1000));
    assert_eq!(gate.throttled(), 10 + 2, "the tag write was not throttled");
    let r = c.request(
        "GET",
        "/v2/throttled/app/manifests/v1",
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(sha256(&r.body), pushed);
}
