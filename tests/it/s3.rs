//! The object-store layer of the S3 backend against a real SeaweedFS: signed requests over wharf's
//! own HTTP/1.1 client, write-once and compare-and-swap writes, conditional deletes, paged
//! listings, streamed reads, pooled keep-alive connections, and clear errors for a wrong bucket,
//! wrong credentials and a dead endpoint. Each under both monoio drivers.

use std::future::Future;
use std::time::Duration;

use crate::common::pki::Pki;
use crate::common::seaweed::{self, Seaweed};
use wharf::storage::s3::api::{Cond, ObjectStore, S3Config, S3Error, op_counts};

fn on_runtime<F: Future>(driver: &str, f: F) -> F::Output {
    if driver == "epoll" {
        monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    } else {
        monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .unwrap()
            .block_on(f)
    }
}

fn config(endpoint: String) -> S3Config {
    S3Config {
        ca_bundle: None,
        endpoint,
        path_style: true,
        region: "us-east-1".into(),
        bucket: seaweed::BUCKET.into(),
        prefix: "registry/".into(),
        access_key_id: seaweed::ACCESS_KEY.into(),
        secret_access_key: seaweed::SECRET_KEY.into(),
        session_token: None,
        encryption: Default::default(),
        connect_timeout: Duration::from_secs(5),
        io_timeout: Duration::from_secs(30),
    }
}

fn object_store_operations_on_seaweedfs(driver: &str) {
    let weed = Seaweed::start();
    let store = ObjectStore::new(&config(weed.endpoint())).unwrap();
    let before = op_counts();
    on_runtime(driver, async {
        store.probe().await.expect("the bucket answers");

        // Write once: the second writer of a key is refused and changes nothing.
        store.put("blobs/a", b"first", Cond::Absent).await.unwrap();
        let again = store.put("blobs/a", b"second", Cond::Absent).await;
        assert!(matches!(again, Err(S3Error::Precondition)), "{again:?}");
        assert_eq!(
            store.get_bytes("blobs/a", 1024).await.unwrap().as_deref(),
            Some(&b"first"[..])
        );

        // Compare-and-swap on the ETag.
        let meta = store.head("blobs/a").await.unwrap().expect("present");
        assert_eq!(meta.len, 5);
        let stale = store.put("blobs/a", b"third", Cond::Etag("\"0000\"")).await;
        assert!(matches!(stale, Err(S3Error::Precondition)), "{stale:?}");
        let etag = store
            .put("blobs/a", b"fourth", Cond::Etag(&meta.etag))
            .await
            .unwrap();
        assert_ne!(etag, meta.etag);
        let lost = store.put("blobs/a", b"fifth", Cond::Etag(&meta.etag)).await;
        assert!(matches!(lost, Err(S3Error::Precondition)), "{lost:?}");
        assert_eq!(
            store.get_bytes("blobs/a", 1024).await.unwrap().as_deref(),
            Some(&b"fourth"[..])
        );

        // Conditional delete.
        let wrong = store.delete("blobs/a", Some("\"0000\"")).await;
        assert!(matches!(wrong, Err(S3Error::Precondition)), "{wrong:?}");
        assert!(store.head("blobs/a").await.unwrap().is_some());
        store.delete("blobs/a", Some(&etag)).await.unwrap();
        assert_eq!(store.head("blobs/a").await.unwrap(), None);
        assert_eq!(store.get_bytes("blobs/a", 1024).await.unwrap(), None);

        // Paged listing under a prefix, in key order, each key once.
        let mut want = Vec::new();
        for i in 0..25 {
            let key = format!("tags/t{i:02}");
            store.put(&key, key.as_bytes(), Cond::None).await.unwrap();
            want.push(key);
        }
        store.put("other/x", b"x", Cond::None).await.unwrap();
        let (mut seen, mut after, mut pages) = (Vec::new(), None::<String>, 0);
        loop {
            let (page, more) = store.list("tags/", after.as_deref(), 10).await.unwrap();
            assert!(page.len() <= 10);
            pages += 1;
            after = page.last().map(|l| l.key.clone());
            seen.extend(page.into_iter().map(|l| l.key));
            if !more {
                break;
            }
            assert!(pages < 10, "the listing never ends");
        }
        assert_eq!((seen, pages), (want, 3));

        // A large object streamed back chunk by chunk.
        let big: Vec<u8> = (0..20_000_000u32).map(|i| (i * 17 % 251) as u8).collect();
        store.put("blobs/big", &big, Cond::Absent).await.unwrap();
        let mut resp = store.get("blobs/big").await.unwrap().expect("present");
        let (mut got, mut chunks) = (Vec::new(), 0);
        while let Some(c) = resp.body.next_chunk().await.unwrap() {
            got.extend_from_slice(&c);
            chunks += 1;
        }
        assert!(got == big, "streamed object differs");
        assert!(chunks > 1, "read in one piece");
        // Every exchange above went over pooled keep-alive connections: one, used in turn.
        assert_eq!(wharf::client::idle_connections(), 1);
        assert!(wharf::client::idle_connections_total() >= 1);
        wharf::client::clear_idle();
    });
    // Counted per operation (put, get, head, delete, list); other tests in this process may add
    // to the counts meanwhile, so only lower bounds.
    let mid = op_counts();
    let made: Vec<u64> = (0..5)
        .map(|i| mid[i].requests - before[i].requests)
        .collect();
    // Each also in the latency histogram of its operation.
    let timed: Vec<u64> = (0..5)
        .map(|i| mid[i].buckets.iter().sum::<u64>() - before[i].buckets.iter().sum::<u64>())
        .collect();
    assert!(
        timed.iter().zip(&made).all(|(t, m)| t >= m),
        "{timed:?} {made:?}"
    );
    assert!(made[0] >= 32 && made[1] >= 4 && made[2] >= 4, "{made:?}");
    assert!(made[3] >= 2 && made[4] >= 3, "{made:?}");

    // Errors that say what is wrong.
    let mut cfg = config(weed.endpoint());
    cfg.bucket = "missing".into();
    let wrong_bucket = ObjectStore::new(&cfg).unwrap();
    let mut cfg = config(weed.endpoint());
    cfg.secret_access_key = "wrong".into();
    let wrong_secret = ObjectStore::new(&cfg).unwrap();
    let dead = ObjectStore::new(&config(format!(
        "http://127.0.0.1:{}",
        crate::common::free_port()
    )))
    .unwrap();
    on_runtime(driver, async {
        match wrong_bucket.probe().await {
            Err(S3Error::Status {
                status: 404,
                message,
                ..
            }) => {
                assert!(message.contains("missing"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        match wrong_secret.put("x", b"x", Cond::None).await {
            Err(S3Error::Status {
                status: 403, code, ..
            }) => {
                assert_eq!(code, "SignatureDoesNotMatch")
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(dead.probe().await, Err(S3Error::Io(_))));
    });
    // The 403 and the unreachable store count as failed puts and heads.
    let after = op_counts();
    assert!(
        after[0].failed > mid[0].failed && after[2].failed > mid[2].failed,
        "put {} → {}, head {} → {}",
        mid[0].failed,
        after[0].failed,
        mid[2].failed,
        after[2].failed
    );
    let bad = ObjectStore::new(&config("ftp://127.0.0.1:1".into()))
        .err()
        .unwrap();
    assert!(bad.starts_with("storage.s3.endpoint"), "{bad}");
    // An IPv6 literal comes bracketed in the URL and resolves without its brackets.
    if let Err(e) = ObjectStore::new(&config("http://[::1]:1".into())) {
        panic!("an IPv6 literal endpoint: {e}");
    }
}

/// A pooled keep-alive connection the store closed while idle is noticed when the next request
/// gets nothing back, and that request goes out again on a fresh connection: the caller sees no
/// error.
fn requests_survive_the_store_closing_idle_connections(driver: &str) {
    let weed = Seaweed::start_with(&["-s3.idleTimeout=1"]);
    let store = ObjectStore::new(&config(weed.endpoint())).unwrap();
    on_runtime(driver, async {
        store.put("k", b"v", Cond::None).await.unwrap();
        assert_eq!(wharf::client::idle_connections(), 1);
        for _ in 0..2 {
            // Past the store's idle timeout: the pooled connection is closed on its side.
            monoio::time::sleep(Duration::from_millis(2500)).await;
            let got = store
                .get_bytes("k", 16)
                .await
                .expect("retried on a fresh connection");
            assert_eq!(got.as_deref(), Some(&b"v"[..]));
        }
        assert_eq!(wharf::client::idle_connections(), 1);
        wharf::client::clear_idle();
    });
}

/// An `https` endpoint whose certificate comes from a private CA: reached over TLS with the CA
/// in `ca_bundle` (large bodies both ways, the connection pooled and reused), and refused with a
/// certificate error without it or with another CA; a `ca_bundle` on an `http` endpoint is a
/// configuration error.
fn an_https_store_is_reached_with_its_private_ca(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let other = tempfile::tempdir().unwrap();
    let other = Pki::new(other.path());
    let weed = Seaweed::start_tls(&pki);
    assert!(weed.endpoint().starts_with("https://"));
    let mut cfg = config(weed.endpoint());
    cfg.ca_bundle = Some(pki.path("ca.crt"));
    let store = ObjectStore::new(&cfg).unwrap();
    cfg.ca_bundle = None;
    let system_roots = ObjectStore::new(&cfg).unwrap();
    cfg.ca_bundle = Some(other.path("ca.crt"));
    let other_ca = ObjectStore::new(&cfg).unwrap();
    let data = crate::common::noise(3, 3 << 20);
    on_runtime(driver, async {
        store.probe().await.expect("the bucket answers over TLS");
        store.put("tls/big", &data, Cond::Absent).await.unwrap();
        let got = store.get_bytes("tls/big", 4 << 20).await.unwrap();
        assert!(
            got.as_deref() == Some(&data[..]),
            "the bytes came back intact"
        );
        assert_eq!(
            wharf::client::idle_connections(),
            1,
            "one TLS connection, reused"
        );
        for refused in [&system_roots, &other_ca] {
            match refused.probe().await {
                Err(S3Error::Io(e)) => {
                    let e = e.to_string();
                    assert!(
                        e.contains("TLS handshake") && e.contains("certificate"),
                        "{e}"
                    );
                }
                other => panic!("{other:?}"),
            }
        }
        wharf::client::clear_idle();
    });
    let mut cfg = config("http://127.0.0.1:1".into());
    cfg.ca_bundle = Some(pki.path("ca.crt"));
    let e = ObjectStore::new(&cfg).err().unwrap();
    assert!(e.starts_with("storage.s3.ca_bundle"), "{e}");
}

on_both_drivers!(
    object_store_operations_on_seaweedfs,
    requests_survive_the_store_closing_idle_connections,
    an_https_store_is_reached_with_its_private_ca
);
