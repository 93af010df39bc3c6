//! `gc.delete_untagged` on a real SeaweedFS bucket: untagged manifests go with what only they
//! reference, what a tag reaches stays (through indexes and referrers), and a manifest pushed
//! again while a collector is deleting it is never lost, whichever node pushes it; a blob a
//! HEAD answers for while the collector deletes it is still there for the next request; an
//! index pushed while the collector deletes its untagged child keeps the child; and another
//! collector's `gc/lock` keeps a second one from running; a pull-through cache over its
//! `upstream.max_size` loses the image pulled least recently; multipart uploads nothing will
//! complete are aborted (by the chunk that began one, or by the collector), while a live
//! session's and a slow push's stay.

use std::time::{Duration, Instant};

use crate::common::seaweed::Seaweed;
use crate::common::*;
use crate::gc::{index_pushed_during_gc, pull_verified, push_untagged, put_manifest};
use crate::mirror_upstreams::{ThreeImages, gc_with_evictions_paused};
use crate::scale_out::{bucket_curl, on_bucket};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// The ETag of a bucket object.
fn etag(weed: &Seaweed, key: &str) -> String {
    let head = String::from_utf8(bucket_curl(weed, key, &["-I"])).unwrap();
    head.lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("etag")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_else(|| panic!("no ETag for {key}: {head}"))
}

/// An image manifest over `layer` and the shared config, its blobs pushed first.
fn image(c: &mut Client, repo: &str, layer: &[u8]) -> Vec<u8> {
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(c, repo, cfg);
    let ld = push_blob(c, repo, layer);
    image_manifest(&cd, cfg.len(), &[(&ld, layer.len())])
}

/// Untagged manifests past the grace period go, with their referrers and the blobs only they
/// use; what a tag reaches (directly, as an index's child, as a referrer of a kept manifest)
/// stays, and so does an old untagged manifest pushed again (by tag or by digest) just before.
/// A dry run names the same manifests and deletes none.
#[test]
fn gc_on_the_bucket_deletes_untagged_manifests_only() {
    let weed = Seaweed::shared();
    let node = Server::start_with(
        "io_uring",
        &format!(
            "[gc]\ngrace = \"2s\"\ndelete_untagged = true\n{}",
            on_bucket(weed, "untagged/")
        ),
    );
    let mut c = node.client();
    let pushed = push_untagged(&mut c);
    let (untagged_d, gone_ref, lonely_layer) =
        (&pushed.untagged_d, &pushed.gone_ref, &pushed.lonely_layer);
    let retagged = image(&mut c, "r", b"retagged layer");
    let retagged_d = put_manifest(&mut c, "r", &sha256(&retagged), &retagged, OCI_MANIFEST);
    let repushed = image(&mut c, "r", b"repushed layer");
    let repushed_d = put_manifest(&mut c, "r", &sha256(&repushed), &repushed, OCI_MANIFEST);
    // Each write of a revision has its own ETag (the collector's delete depends on it).
    let key = format!(
        "untagged/repos/r/_manifests/{}",
        repushed_d.replace(':', "/")
    );
    let first = etag(weed, &key);
    // Past the grace period by the store's clock (whole seconds, so 1.5 s more); then two old
    // untagged manifests are pushed again, one by tag, one by digest.
    std::thread::sleep(Duration::from_millis(3_500));
    put_manifest(&mut c, "r", "again", &retagged, OCI_MANIFEST);
    put_manifest(&mut c, "r", &repushed_d, &repushed, OCI_MANIFEST);
    assert_ne!(
        etag(weed, &key),
        first,
        "a revision written again kept its ETag"
    );

    let (ok, out) = node.run_wharf(&["gc", "--dry-run"]);
    assert!(ok, "{out}");
    for d in [&untagged_d, &gone_ref] {
        assert!(
            out.contains(&format!("would delete manifest r@{d}")),
            "{out}"
        );
    }
    assert!(
        out.contains(&format!("would delete blob {lonely_layer}")),
        "{out}"
    );
    assert_eq!(c.get(&format!("/v2/r/manifests/{untagged_d}")).status, 200);

    let (ok, out) = node.run_wharf(&["gc"]);
    assert!(ok, "{out}");
    pushed.check_collected(&out, &mut c);
    for d in [&retagged_d, &repushed_d] {
        let r = c.request(
            "HEAD",
            &format!("/v2/r/manifests/{d}"),
            &[("Accept", OCI_MANIFEST)],
            b"",
        );
        assert_eq!(r.status, 200, "manifest {d} pushed again was kept");
    }
    for reference in ["again", &repushed_d] {
        pull_verified(&mut c, "r", reference);
    }
    let refs = c.get(&format!("/v2/r/referrers/{untagged_d}")).json();
    assert_eq!(refs["manifests"], serde_json::json!([]), "{refs}");
    assert_eq!(c.get(&format!("/v2/r/blobs/{lonely_layer}")).status, 404);
    let (ok, out) = node.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

/// Three nodes on one bucket: A collects untagged manifests every second (grace 2 s) and `wharf
/// gc` loops beside it, while four clients on B and C keep moving their own tag among a small pool
/// of images, so manifests keep becoming untagged, crossing the grace period, and being tagged
/// again while a collector is deciding about them. After every push the tag is read back through
/// the other node and must name the pushed manifest, whose digest must be there then and again
/// before the next push; at the end every tag pulls whole, and the collectors must in fact have
/// deleted manifests.
#[test]
fn manifests_tagged_again_while_gc_deletes_them_are_never_lost() {
    let weed = Seaweed::shared();
    let storage = on_bucket(weed, "untagged-loop/");
    let gc = "[gc]\ngrace = \"2s\"\ndelete_untagged = true\n";
    const GRACE: Duration = Duration::from_secs(2);
    let a = Server::start_logged(
        "io_uring",
        &format!("{gc}interval = \"1s\"\n{storage}"),
        "warn,wharf::gc=debug",
    );
    let others = [
        Server::start_with("io_uring", &format!("{gc}{storage}")),
        Server::start_with("epoll", &format!("{gc}{storage}")),
    ];
    // Tagged images in a repository marked after the others: each collection takes a while
    // between reading the churning repositories' tags and deleting, the window a push can hit.
    let mut c = a.client();
    for i in 0..400 {
        push_image(&mut c, "zz/ballast", &format!("b{i}"), b"ballast");
    }
    let stop_at = Instant::now() + Duration::from_secs(40);
    let collector = crate::gc::gc_in_a_loop(a.config_file(), stop_at);
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let pushed: u32 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let (push_at, read_at) = (others[t % 2].addr, others[(t + 1) % 2].addr);
                s.spawn(move || {
                    let (mut c, mut r) = (Client::connect(push_at), Client::connect(read_at));
                    let repo = format!("churn{}/app", t % 2);
                    let (mut pushed, mut pick) = (0, t as u64 + 1);
                    let mut last: Option<String> = None;
                    while Instant::now() < stop_at {
                        // Images picked at random: each comes back after an untagged spell of
                        // any length, some just as it crosses the grace period.
                        pick = pick
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        let layer = format!("pool layer {}", (pick >> 33) % 16).into_bytes();
                        let mut told = crate::gc::Told::default();
                        let refs: Vec<(String, usize)> = [&cfg[..], &layer]
                            .into_iter()
                            .map(|blob| (told.head_or_push(&mut c, &repo, blob), blob.len()))
                            .collect();
                        // What the tag named since the last push is still there.
                        if let Some(d) = &last {
                            let got = r.request(
                                "HEAD",
                                &format!("/v2/{repo}/manifests/{d}"),
                                &[("Accept", OCI_MANIFEST)],
                                b"",
                            );
                            assert_eq!(got.status, 200, "{repo}:t{t} named {d}, which is gone");
                        }
                        let m = image_manifest(&refs[0].0, refs[0].1, &[(&refs[1].0, refs[1].1)]);
                        let tag = format!("t{t}");
                        let put = c.request(
                            "PUT",
                            &format!("/v2/{repo}/manifests/{tag}"),
                            &[("Content-Type", OCI_MANIFEST)],
                            &m,
                        );
                        // A client slower than the grace period since it was told about a blob
                        // may rightly find it collected (`gc::Told`): it pushes again.
                        if put.status != 201 && told.outlived(&put.body_text(), GRACE) {
                            continue;
                        }
                        assert_eq!(put.status, 201, "{repo}:{tag}: {}", put.body_text());
                        let got = r.request(
                            "GET",
                            &format!("/v2/{repo}/manifests/{tag}"),
                            &[("Accept", OCI_MANIFEST)],
                            b"",
                        );
                        assert_eq!(got.status, 200, "{repo}:{tag} right after its push");
                        assert_eq!(got.body, m, "{repo}:{tag} names another manifest");
                        // By digest too: a GET by tag may take the bytes from the node's cache.
                        let d = sha256(&m);
                        let got = r.request(
                            "HEAD",
                            &format!("/v2/{repo}/manifests/{d}"),
                            &[("Accept", OCI_MANIFEST)],
                            b"",
                        );
                        assert_eq!(got.status, 200, "{repo}:{tag} names {d}, which is gone");
                        last = Some(d);
                        pushed += 1;
                        // Untagged for a while: the pool's other images cross the grace period.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    pushed
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    let crate::gc::Collected {
        runs, manifests, ..
    } = collector.join().unwrap();
    let deleted = manifests + a.log().matches("deleted manifest").count();
    assert!(pushed > 40 && runs > 2, "pushed {pushed}, gc runs {runs}");
    assert!(deleted > 0, "no manifest was deleted in {runs} runs");
    for t in 0..4 {
        pull_verified(&mut c, &format!("churn{}/app", t % 2), &format!("t{t}"));
    }
}

/// A blob a HEAD answered 200 for is there for the request that follows, also when the HEAD
/// arrives while the collector is deleting that blob. Eight clients each HEAD three blobs no
/// manifest references in turn through node B (each blob about every 2.5 s, so its hold keeps
/// crossing the 2 s grace) and, after each 200, GET the blob through node C at once (a GET holds
/// nothing, so it sees any deletion); a 404 makes them push it again. Test-only delays widen the
/// windows the protocol's order closes: A's collector pauses 600 ms between its second look at a
/// hold and its delete, and B's looks for a tombstone are answered 800 ms late. A HEAD that read
/// the blob's pointer alongside that look, as one did, answers 200 for a blob the collector
/// deletes meanwhile: the GET through C gets 404.
#[test]
fn a_head_racing_the_collector_never_answers_for_a_blob_it_deletes() {
    let weed = Seaweed::shared();
    let storage = on_bucket(weed, "head-race/");
    let hooks = |delay: &'static str, ms: &'static str| [("WHARF_FAULT_HOOKS", "1"), (delay, ms)];
    let _a = Server::start_with_env(
        "io_uring",
        &format!("[gc]\ninterval = \"1s\"\ngrace = \"2s\"\n{storage}"),
        &hooks("WHARF_FAULT_DELAY_SWEEP", "600"),
    );
    let b = Server::start_with_env(
        "epoll",
        &storage,
        &hooks("WHARF_FAULT_DELAY_TOMBSTONE_LOOK", "800"),
    );
    let c_node = Server::start_with("io_uring", &storage);
    let blobs: Vec<Vec<u8>> = (0..24u32)
        .map(|i| format!("unreferenced blob {i}").into_bytes())
        .collect();
    let stop_at = Instant::now() + Duration::from_secs(30);
    let (answered, deleted) = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|t| {
                let (b, c_node, blobs) = (&b, &c_node, &blobs);
                s.spawn(move || {
                    let mut head_c = b.client();
                    let (mut answered, mut deleted) = (0u32, 0u32);
                    let mut i = t;
                    while Instant::now() < stop_at {
                        let blob = &blobs[i % blobs.len()];
                        i += 8;
                        let d = sha256(blob);
                        let path = format!("/v2/race/blobs/{d}");
                        let head = head_c.request("HEAD", &path, &[], b"");
                        if head.status != 200 {
                            assert_eq!(head.status, 404, "HEAD {d}");
                            deleted += 1;
                            push_blob(&mut head_c, "race", blob);
                            continue;
                        }
                        answered += 1;
                        // A new connection each time: C closes ones idle while B answers late.
                        let got = c_node.client().get(&path);
                        assert_eq!(
                            got.status, 200,
                            "{d} was deleted right after a HEAD answered 200 for it"
                        );
                    }
                    (answered, deleted)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .fold((0, 0), |(a, d), (x, y)| (a + x, d + y))
    });
    // The collector did delete blobs while they were being looked at (else this proves nothing).
    assert!(
        answered > 50 && deleted > 5,
        "answered {answered}, deleted {deleted}"
    );
}

/// An index pushed while a collection is deleting its untagged child keeps the child and its
/// blobs: the push writes the old child again before the index, so the collector's second look
/// finds it changed. A test-only delay holds the collector (`wharf gc`) for 4 s between its mark
/// phase, which finds the child untagged and past the grace period (the index not pushed yet),
/// and its deletions; the index is pushed and tagged 2 s into that pause.
#[test]
fn an_index_pushed_while_its_untagged_child_is_collected_keeps_it() {
    let weed = Seaweed::shared();
    let node = Server::start_with(
        "io_uring",
        &format!(
            "[gc]\ngrace = \"2s\"\ndelete_untagged = true\n{}",
            on_bucket(weed, "index-race/")
        ),
    );
    let mut c = node.client();
    let child = image(&mut c, "ix/app", &noise(81, 5000));
    let child_d = put_manifest(&mut c, "ix/app", &sha256(&child), &child, OCI_MANIFEST);
    // Past the grace period by the store's clock (whole seconds).
    std::thread::sleep(Duration::from_millis(3_500));
    let (_, text) = index_pushed_during_gc(&node, &mut c, &child, 4000, 2000);
    assert!(
        !text.contains(&format!("deleted manifest ix/app@{child_d}")),
        "the child went under the index:\n{text}"
    );
    // The run got through its deletions (it may stop before the sweep: the pause is longer than
    // half the grace period).
    assert!(text.contains("deleted: "), "{text}");
    pull_verified(&mut c, "ix/app", &child_d);
}

/// A node on `prefix` with no grace period, one unreferenced blob (its digest), and a `gc/lock`
/// written behind its back, as another collector would.
fn node_with_a_foreign_lock(weed: &Seaweed, prefix: &str, seed: u32) -> (Server, String) {
    let node = Server::start_with(
        "io_uring",
        &format!("[gc]\ngrace = \"0s\"\n{}", on_bucket(weed, prefix)),
    );
    let lonely = push_blob(&mut node.client(), "held/app", &noise(seed, 1000));
    let lock = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(lock.path(), "0 another-collector").unwrap();
    bucket_curl(
        weed,
        &format!("{prefix}gc/lock"),
        &["-T", lock.path().to_str().unwrap()],
    );
    (node, lonely)
}

/// Another collector's `gc/lock` (fresh: younger than an hour) keeps `wharf gc` from running,
/// and nothing is deleted; once that lock is gone, the collection runs.
#[test]
fn a_collector_holding_the_bucket_lock_keeps_another_from_running() {
    let weed = Seaweed::shared();
    let (node, lonely) = node_with_a_foreign_lock(weed, "held-lock/", 96);
    let (ok, out) = node.run_wharf(&["gc"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("another garbage collection is running on this bucket"),
        "{out}"
    );
    assert_eq!(
        node.client()
            .get(&format!("/v2/held/app/blobs/{lonely}"))
            .status,
        200
    );
    bucket_curl(weed, "held-lock/gc/lock", &["-X", "DELETE"]);
    // Older than the grace period by the store's clock (whole seconds).
    std::thread::sleep(Duration::from_secs(2));
    let (ok, out) = node.run_wharf(&["gc"]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("deleted blob {lonely}")), "{out}");
}

/// A collector killed while it held `gc/lock` leaves it behind; once the lock is older than the
/// lock's lifetime (an hour; a test hook shortens it, since the store's clock cannot be set back),
/// the next collector deletes it, takes the lock, runs, and removes it when done.
#[test]
fn a_dead_collectors_lock_is_taken_over_once_it_is_old() {
    let weed = Seaweed::shared();
    let (node, lonely) = node_with_a_foreign_lock(weed, "dead-lock/", 97);
    let gc = |lock_for: &str| {
        node.run_wharf_with_env(
            &["gc"],
            &[
                ("WHARF_FAULT_HOOKS", "1"),
                ("WHARF_FAULT_GC_LOCK_FOR", lock_for),
            ],
        )
    };
    let (ok, out) = gc("60");
    assert!(
        !ok,
        "a lock younger than its lifetime was taken over: {out}"
    );
    assert!(
        out.contains("another garbage collection is running on this bucket"),
        "{out}"
    );
    // Older than a 2 s lifetime by the store's clock (whole seconds).
    std::thread::sleep(Duration::from_secs(4));
    let (ok, out) = gc("2");
    assert!(ok, "{out}");
    assert!(out.contains(&format!("deleted blob {lonely}")), "{out}");
    let status = weed
        .curl("dead-lock/gc/lock")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&status.stdout),
        "404",
        "the collector left its lock behind"
    );
}

/// Whether the bucket has `key` (HTTP status of a HEAD).
fn in_bucket(weed: &Seaweed, key: &str) -> bool {
    let out = weed
        .curl(key)
        .args(["-sS", "-I", "-o", "/dev/null", "-w", "%{http_code}"])
        .output()
        .unwrap();
    match String::from_utf8_lossy(&out.stdout).as_ref() {
        "200" => true,
        "404" => false,
        other => panic!("HEAD {key}: {other} {out:?}"),
    }
}

/// `upstream.max_size` on the bucket: a mirror node caches three images, then pulls the first
/// again; over its budget, the collector evicts the image pulled least recently by the store's
/// time of the pull records (not the one cached first), with its tag and its layer, and the
/// evicted image comes back from the upstream whole.
#[test]
fn over_its_budget_a_cache_on_the_bucket_evicts_the_image_pulled_least_recently() {
    let weed = Seaweed::shared();
    let three = ThreeImages::push(190);
    let images = &three.images;
    // Room for two of the three images; every pull noted (not once a minute).
    let m = Server::start_with_env(
        "io_uring",
        &three.cache_on(&on_bucket(weed, "evict/")),
        &[
            ("WHARF_FAULT_HOOKS", "1"),
            ("WHARF_FAULT_NOTE_EVERY_MS", "0"),
        ],
    );
    let mut c = m.client();
    // The pull record of a manifest deleted since goes with the collection.
    let stray = format!(
        "evict/repos/hub/team/app0/_pulls/{}",
        sha256(b"gone").replace(':', "/")
    );
    bucket_curl(weed, &stray, &["-X", "PUT", "--data-binary", ""]);
    // Cached in the order 0, 1, 2, then 0 pulled again: 1 is the least recently pulled. The
    // store's times are whole seconds, so the pulls are 2 s apart.
    for i in [0, 1, 2, 0] {
        three.pull(&mut c, i);
        std::thread::sleep(Duration::from_millis(2_100));
    }
    wait_for("four pull records written", || {
        let text = c.get("/metrics").body_text();
        sample(&text, "wharf_s3_pull_records_total{outcome=\"written\"}") == Some(4.0)
    });
    let layer_key = |i: usize| format!("evict/blobs/{}", sha256(&images[i].1).replace(':', "/"));
    let (ok, out) = m.run_wharf(&["gc", "--grace", "1s"]);
    assert!(ok, "{out}");
    three.assert_only_1_evicted(&out);
    assert!(!in_bucket(weed, "evict/repos/hub/team/app1/_tags/v1"));
    let pulled = |i: usize| {
        let hex = &images[i].0["sha256:".len()..];
        format!("evict/repos/hub/team/app{i}/_pulls/sha256/{hex}")
    };
    assert!(!in_bucket(weed, &pulled(1)) && in_bucket(weed, &pulled(0)));
    assert!(!in_bucket(weed, &stray), "a stray pull record stayed");
    assert!(
        !in_bucket(weed, &layer_key(1)),
        "the evicted layer is collected"
    );
    assert!(in_bucket(weed, &layer_key(0)) && in_bucket(weed, &layer_key(2)));
    // The evicted image comes back from the upstream, whole.
    three.pull(&mut c, 1);
}

/// A cached image whose manifest is written again (as a fill writes it) while the collector
/// evicts it stays: its tag goes, its manifest and layer stay in the bucket, and the collection
/// says it kept the image, not that it evicted it. A test-only delay holds `wharf gc` for 3 s
/// between planning its evictions and making them; the manifest is written again 1.5 s in.
#[test]
fn a_cached_image_written_again_while_it_is_evicted_is_kept_and_said_so() {
    let weed = Seaweed::shared();
    let three = ThreeImages::push(195);
    let m = Server::start_with("io_uring", &three.cache_on(&on_bucket(weed, "evict-kept/")));
    let mut c = m.client();
    // Cached in the order 0, 1, 2 (the store's times are whole seconds): 0 goes first.
    for i in 0..3 {
        three.pull(&mut c, i);
        std::thread::sleep(Duration::from_millis(2_100));
    }
    let (d0, layer0) = &three.images[0];
    let revision = format!(
        "evict-kept/repos/hub/team/app0/_manifests/sha256/{}",
        &d0["sha256:".len()..]
    );
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), bucket_curl(weed, &revision, &[])).unwrap();
    let out = gc_with_evictions_paused(&m, "1s", || {
        bucket_curl(weed, &revision, &["-T", body.path().to_str().unwrap()]);
    });
    assert!(
        out.contains(&format!("kept cached image hub/team/app0@{d0}")),
        "{out}"
    );
    assert!(
        !out.contains("evicted cached image hub/team/app0@"),
        "{out}"
    );
    assert!(!in_bucket(weed, "evict-kept/repos/hub/team/app0/_tags/v1"));
    assert!(in_bucket(weed, &revision), "the manifest went");
    let layer = format!("evict-kept/blobs/{}", sha256(layer0).replace(':', "/"));
    assert!(in_bucket(weed, &layer), "the layer went");
}

/// The multipart uploads in progress under `prefix`: (key, upload id) pairs.
pub(crate) fn multipart_uploads(weed: &Seaweed, prefix: &str) -> Vec<(String, String)> {
    let query = format!("?prefix={}&uploads=", prefix.replace('/', "%2F"));
    let xml = String::from_utf8(bucket_curl(weed, &query, &[])).unwrap();
    assert!(xml.contains("<ListMultipartUploadsResult"), "{xml}");
    let inner = |block: &str, tag: &str| -> String {
        let start = block.find(&format!("<{tag}>")).unwrap() + tag.len() + 2;
        block[start..start + block[start..].find('<').unwrap()].to_owned()
    };
    xml.split("<Upload>")
        .skip(1)
        .map(|b| (inner(b, "Key"), inner(b, "UploadId")))
        .collect()
}

/// Start an upload session and send 10 MiB of a 12 MiB PATCH: the chunk begins a multipart
/// upload (its first 8 MiB part goes up) that its session does not record. The session's id
/// and the connection, still open.
fn breaking_chunk(c: &mut Client, addr: std::net::SocketAddr, repo: &str) -> (String, Client) {
    let r = c.request("POST", &format!("/v2/{repo}/blobs/uploads/"), &[], b"");
    assert_eq!(r.status, 202);
    let location = r.header("Location").unwrap().to_owned();
    let id = location.rsplit('/').next().unwrap().to_owned();
    let mut raw = Client::connect(addr);
    raw.send_raw(
        format!(
            "PATCH {location} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            12 << 20
        )
        .as_bytes(),
    );
    raw.send_raw(&noise(41, 10 << 20));
    (id, raw)
}

/// The first byte of upload `id` in `repo`, as a chunk.
fn one_byte_chunk(c: &mut Client, repo: &str, id: &str) -> Resp {
    let chunk = [
        ("Content-Range", "0-0"),
        ("Content-Type", "application/octet-stream"),
    ];
    c.request(
        "PATCH",
        &format!("/v2/{repo}/blobs/uploads/{id}"),
        &chunk,
        b"x",
    )
}

/// Wait until `n` multipart uploads under `prefix` each have their first part stored.
fn wait_for_first_parts(weed: &Seaweed, prefix: &str, n: usize) {
    wait_for("the chunks' first parts stored", || {
        let listed = multipart_uploads(weed, prefix);
        listed.len() == n && listed.iter().all(|(k, u)| parts(weed, k, u) == 1)
    });
}

/// A chunk that breaks off after it began a multipart upload aborts that upload itself (its
/// session never named it), and the session goes on from where it was.
#[test]
fn a_broken_chunk_aborts_the_multipart_upload_it_began() {
    let weed = Seaweed::shared();
    let m = Server::start_with("io_uring", &on_bucket(weed, "broken-chunk/"));
    let mut c = m.client();
    let (id, raw) = breaking_chunk(&mut c, m.addr, "b/app");
    wait_for_first_parts(weed, "broken-chunk/data/", 1);
    drop(raw);
    wait_for("the broken chunk's upload aborted", || {
        multipart_uploads(weed, "broken-chunk/data/").is_empty()
    });
    let r = one_byte_chunk(&mut c, "b/app", &id);
    assert_eq!((r.status, r.header("Range")), (202, Some("0-0")));
}

/// Multipart uploads nothing will complete (begun by chunks on a node killed mid-chunk, one
/// session then cancelled) are aborted by `wharf gc` once past the grace period; one begun the
/// same way on a session that still exists stays until that session goes.
#[test]
fn abandoned_multipart_uploads_are_aborted_and_a_live_sessions_kept() {
    let weed = Seaweed::shared();
    let storage = on_bucket(weed, "strays/");
    let mut killed = Server::start_with("io_uring", &storage);
    let mut c = killed.client();
    let (cancelled, raw1) = breaking_chunk(&mut c, killed.addr, "s/app");
    let (live, raw2) = breaking_chunk(&mut c, killed.addr, "s/app");
    wait_for_first_parts(weed, "strays/data/", 2);
    killed.signal_and_wait(libc::SIGKILL);
    drop((raw1, raw2));
    let m = Server::start_with("io_uring", &storage);
    let mut c = m.client();
    let key = |id: &str| format!("strays/data/{id}");
    let r = c.request(
        "DELETE",
        &format!("/v2/s/app/blobs/uploads/{cancelled}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 204);
    // Past the 1 s grace period by the store's clock (whole seconds); then the live session
    // takes a one-byte chunk, which keeps it young.
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(one_byte_chunk(&mut c, "s/app", &live).status, 202);
    let (ok, out) = m.run_wharf(&["gc", "--grace", "1s", "--dry-run"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "would abort abandoned multipart upload of data/{cancelled}"
        )),
        "{out}"
    );
    assert_eq!(
        multipart_uploads(weed, "strays/data/").len(),
        2,
        "a dry run aborts nothing"
    );
    let (ok, out) = m.run_wharf(&["gc", "--grace", "1s"]);
    assert!(ok, "{out}");
    let left: Vec<String> = multipart_uploads(weed, "strays/data/")
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(left, [key(&live)], "{out}");
    // The live session goes on from what it was told.
    let r = c.get(&format!("/v2/s/app/blobs/uploads/{live}"));
    assert_eq!((r.status, r.header("Range")), (204, Some("0-0")), "{out}");
    // Once its session is cancelled too, its upload goes with the next collection.
    let r = c.request(
        "DELETE",
        &format!("/v2/s/app/blobs/uploads/{live}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 204);
    let (ok, out) = m.run_wharf(&["gc", "--grace", "1s"]);
    assert!(ok, "{out}");
    assert!(
        out.contains(&format!(
            "aborted abandoned multipart upload of data/{live}"
        )),
        "{out}"
    );
    assert_eq!(multipart_uploads(weed, "strays/data/"), [], "{out}");
}

/// The part numbers stored so far of multipart upload `upload_id` to `key`.
fn parts(weed: &Seaweed, key: &str, upload_id: &str) -> usize {
    let xml = String::from_utf8(bucket_curl(
        weed,
        &format!("{key}?uploadId={upload_id}"),
        &[],
    ))
    .unwrap();
    xml.matches("<PartNumber>").count()
}

/// A push in progress whose multipart upload began before the grace period but whose newest
/// part is young keeps it: a monolithic push that sends a part, waits past the grace period,
/// sends another, lets `wharf gc` run, then finishes, is stored whole.
#[test]
fn a_slow_push_keeps_its_multipart_upload_through_a_collection() {
    let weed = Seaweed::shared();
    let m = Server::start_with("io_uring", &on_bucket(weed, "slow-push/"));
    let data = noise(43, 20 << 20);
    let d = sha256(&data);
    let mut raw = started_push(m.addr, "s/slow", &data, 9 << 20);
    let mut upload = None;
    wait_for("the first part stored", || {
        upload = multipart_uploads(weed, "slow-push/data/").pop();
        upload.as_ref().is_some_and(|(k, u)| parts(weed, k, u) == 1)
    });
    let (key, upload_id) = upload.unwrap();
    // The upload began past the 1 s grace period (whole seconds); its second part is young.
    std::thread::sleep(Duration::from_millis(2_500));
    raw.send_raw(&data[9 << 20..17 << 20]);
    wait_for("the second part stored", || {
        parts(weed, &key, &upload_id) == 2
    });
    let (ok, out) = m.run_wharf(&["gc", "--grace", "1s"]);
    assert!(ok, "{out}");
    assert!(!out.contains("abandoned multipart"), "{out}");
    raw.send_raw(&data[17 << 20..]);
    let r = raw.read_response(false);
    assert_eq!(r.status, 201, "{}", r.body_text());
    let mut c = m.client();
    let r = c.get(&format!("/v2/s/slow/blobs/{d}"));
    assert!(
        r.status == 200 && r.body == data,
        "the blob is stored whole"
    );
}

/// Two chunks raced on one session, each past its first part: the one whose session update
/// loses is answered 416 and aborts the multipart upload it began; the winner's stays, named
/// by the session, and the upload completes with the winner's bytes.
#[test]
fn the_chunk_that_loses_a_race_aborts_its_multipart_upload() {
    let weed = Seaweed::shared();
    let m = Server::start_with("io_uring", &on_bucket(weed, "raced-chunk/"));
    let mut c = m.client();
    let r = c.request("POST", "/v2/r/app/blobs/uploads/", &[], b"");
    let location = r.header("Location").unwrap().to_owned();
    let bodies = [noise(51, 12 << 20), noise(52, 12 << 20)];
    let mut raws: Vec<Client> = bodies
        .iter()
        .map(|body| {
            let mut raw = Client::connect(m.addr);
            raw.send_raw(
                format!(
                    "PATCH {location} HTTP/1.1\r\nHost: test\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .as_bytes(),
            );
            raw.send_raw(&body[..10 << 20]);
            raw
        })
        .collect();
    wait_for_first_parts(weed, "raced-chunk/data/", 2);
    for (raw, body) in raws.iter_mut().zip(&bodies) {
        raw.send_raw(&body[10 << 20..]);
    }
    let statuses: Vec<u16> = raws
        .iter_mut()
        .map(|r| r.read_response(false).status)
        .collect();
    let mut sorted = statuses.clone();
    sorted.sort();
    assert_eq!(sorted, [202, 416]);
    wait_for("the loser's upload aborted", || {
        multipart_uploads(weed, "raced-chunk/data/").len() == 1
    });
    let won = &bodies[statuses.iter().position(|&s| s == 202).unwrap()];
    let d = sha256(won);
    let r = c.request("PUT", &format!("{location}?digest={d}"), &[], b"");
    assert_eq!(r.status, 201, "{}", r.body_text());
    assert!(c.get(&format!("/v2/r/app/blobs/{d}")).body == *won);
}
