//! Fault injection against the real binary and real files: `kill -9` with 88 pushes under way (some
//! certainly acknowledged, some certainly mid-request, sessions holding acknowledged chunks), a
//! full disk (a small tmpfs as storage), 1,000 slowloris connections, and path-traversal and
//! encoding tricks in every name the API takes. (Vanished and short bodies, stalls and oversize
//! bodies are in durability.rs, http_layer.rs and limits.rs.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use crate::common::{
    Client, OCI_MANIFEST, Server, image_manifest, noise, push_blob, push_image, sha256,
};

/// What one in-flight push saw before the crash.
enum Outcome {
    /// A blob push (monolithic, or POST + PATCH + PUT with `Some(location)`).
    Blob {
        digest: String,
        body: Vec<u8>,
        location: Option<String>,
        created: bool,
    },
    Manifest {
        tag: String,
        created: bool,
    },
    /// A chunked upload whose first PATCH (`half` bytes) was acknowledged before the kill: its
    /// session held data and must resume after the restart.
    Held {
        digest: String,
        body: Vec<u8>,
        location: String,
        half: usize,
    },
}

/// Send a request in 32 KiB pieces with small pauses (so the kill lands mid-body); `None` if the
/// connection broke before a response.
fn slow_request(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
) -> Option<crate::common::Resp> {
    paused_request(addr, head, body, None)
}

/// A request that stops halfway through its body until the server has been killed, so some
/// uploads are certainly in flight at the crash (the others race it freely).
struct Pause {
    halfway: mpsc::Sender<()>,
    killed: Arc<AtomicBool>,
}

fn paused_request(
    addr: std::net::SocketAddr,
    head: &str,
    body: &[u8],
    pause: Option<&Pause>,
) -> Option<crate::common::Resp> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    s.write_all(head.as_bytes()).ok()?;
    for (i, piece) in body.chunks(32 * 1024).enumerate() {
        if let Some(p) = pause.filter(|_| i == body.len() / (64 * 1024)) {
            p.halfway.send(()).unwrap();
            while !p.killed.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        s.write_all(piece).ok()?;
        std::thread::sleep(Duration::from_millis(3));
    }
    Client::over(Box::new(s)).try_read_response(false)
}

fn kill_9_with_80_pushes_in_flight_loses_nothing_acknowledged(driver: &str) {
    let mut s = Server::start(driver);
    let addr = s.addr;
    // Manifest pushers upload their blobs first; the manifests go up during the crash.
    let mut prepared = Vec::new();
    {
        let mut c = s.client();
        for m in 0..16u32 {
            let cfg = format!("{{\"architecture\":\"amd64\",\"os\":\"linux\",\"n\":{m}}}");
            let cd = push_blob(&mut c, "crash/m", cfg.as_bytes());
            let layer = noise(1000 + m, 200_000);
            let ld = push_blob(&mut c, "crash/m", &layer);
            prepared.push(image_manifest(&cd, cfg.len(), &[(&ld, layer.len())]));
        }
    }
    let (tx, rx) = mpsc::channel::<Outcome>();
    let (halfway, paused) = mpsc::channel::<()>();
    let killed = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for i in 0..64u32 {
        let tx = tx.clone();
        // Every fourth upload (a PATCH) waits halfway for the kill.
        let pause = (i % 4 == 3).then(|| Pause {
            halfway: halfway.clone(),
            killed: Arc::clone(&killed),
        });
        threads.push(std::thread::spawn(move || {
            let body = noise(i, 256 * 1024 + i as usize * 4096);
            let digest = sha256(&body);
            let (location, resp) = if i % 2 == 0 {
                let head = format!(
                    "POST /v2/crash/b{}/blobs/uploads/?digest={digest} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    i % 4,
                    body.len()
                );
                (None, slow_request(addr, &head, &body))
            } else {
                let start = format!(
                    "POST /v2/crash/b{}/blobs/uploads/ HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
                    i % 4
                );
                let Some(loc) = slow_request(addr, &start, b"")
                    .and_then(|r| r.header("location").map(str::to_owned))
                else {
                    let created = false;
                    tx.send(Outcome::Blob { digest, body, location: None, created }).unwrap();
                    return;
                };
                let head = format!(
                    "PATCH {loc} HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let patched = paused_request(addr, &head, &body, pause.as_ref())
                    .is_some_and(|r| r.status == 202);
                let done = patched
                    .then(|| slow_request(addr, &format!("PUT {loc}?digest={digest} HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"), b""))
                    .flatten();
                (Some(loc), done)
            };
            let created = resp.is_some_and(|r| r.status == 201);
            tx.send(Outcome::Blob { digest, body, location, created }).unwrap();
        }));
    }
    // Even manifests are acknowledged before the kill (the kill waits for them); odd ones have
    // sent their head and wait for the kill before their body.
    let (early, acked_early) = mpsc::channel::<()>();
    for (m, manifest) in prepared.into_iter().enumerate() {
        let tx = tx.clone();
        let early = early.clone();
        let pause = (m % 2 == 1).then(|| Pause {
            halfway: halfway.clone(),
            killed: Arc::clone(&killed),
        });
        threads.push(std::thread::spawn(move || {
            let tag = format!("v{m}");
            let head = format!(
                "PUT /v2/crash/m/manifests/{tag} HTTP/1.1\r\nHost: t\r\nContent-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
                manifest.len()
            );
            let created = paused_request(addr, &head, &manifest, pause.as_ref())
                .is_some_and(|r| r.status == 201);
            if pause.is_none() {
                assert!(created, "manifest {tag} refused before the kill");
                early.send(()).unwrap();
            }
            tx.send(Outcome::Manifest { tag, created }).unwrap();
        }));
    }
    // Chunked uploads whose first half is acknowledged (202) before the kill, the rest after.
    let (held_tx, held) = mpsc::channel::<()>();
    for h in 0..8u32 {
        let tx = tx.clone();
        let held_tx = held_tx.clone();
        let killed = Arc::clone(&killed);
        threads.push(std::thread::spawn(move || {
            let body = noise(500 + h, 300_000 + h as usize * 1000);
            let half = body.len() / 2;
            let mut c = Client::connect(addr);
            let r = c.request("POST", "/v2/crash/held/blobs/uploads/", &[], b"");
            assert_eq!(r.status, 202);
            let location = r.header("location").unwrap().to_owned();
            let r = c.request("PATCH", &location, &[], &body[..half]);
            assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
            assert_eq!(r.header("range"), Some(format!("0-{}", half - 1).as_str()));
            held_tx.send(()).unwrap();
            while !killed.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let digest = sha256(&body);
            tx.send(Outcome::Held {
                digest,
                body,
                location,
                half,
            })
            .unwrap();
        }));
    }
    drop((tx, halfway, early, held_tx));
    // At the kill: 16 PATCHes and 8 manifest PUTs certainly mid-request, 8 manifests and 8
    // half uploads certainly acknowledged (plus whatever the 48 free pushes reached).
    let wait = |rx: &mpsc::Receiver<()>, n: usize, what: &str| {
        for k in 0..n {
            rx.recv_timeout(Duration::from_secs(60))
                .unwrap_or_else(|_| panic!("only {k} of {n} {what} before the kill"));
        }
    };
    wait(&paused, 24, "requests paused mid-request");
    wait(&acked_early, 8, "manifests acknowledged");
    wait(&held, 8, "half uploads acknowledged");
    s.restart_hard();
    killed.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let outcomes: Vec<Outcome> = rx.iter().collect();
    assert_eq!(outcomes.len(), 88);

    let mut c = s.client();
    let (mut acked, mut resumed, mut unknown) = (0, 0, 0);
    for o in &outcomes {
        match o {
            Outcome::Blob {
                digest,
                body,
                location,
                created,
            } => {
                if *created {
                    acked += 1;
                    let repo = (0..4)
                        .map(|k| format!("crash/b{k}"))
                        .find(|repo| {
                            c.request("HEAD", &format!("/v2/{repo}/blobs/{digest}"), &[], b"")
                                .status
                                == 200
                        })
                        .unwrap_or_else(|| panic!("acknowledged blob {digest} is gone"));
                    let got = c.get(&format!("/v2/{repo}/blobs/{digest}"));
                    assert_eq!(sha256(&got.body), *digest, "acknowledged blob corrupt");
                } else if let Some(loc) = location {
                    // An unfinished session resumes from what was stored, or is unknown.
                    let st = c.get(loc);
                    match st.status {
                        204 => {
                            let end: usize = st.header("range").unwrap()[2..].parse().unwrap();
                            // "0-0" is both "nothing yet" and "one byte" (as in distribution).
                            let put = |have: usize| {
                                let range = format!("{have}-{}", body.len() - 1);
                                let headers: &[(&str, &str)] = if have < body.len() {
                                    &[("Content-Range", &range)]
                                } else {
                                    &[]
                                };
                                // A fresh connection: a refused large body closes the old one.
                                Client::connect(addr).request(
                                    "PUT",
                                    &format!("{loc}?digest={digest}"),
                                    headers,
                                    &body[have..],
                                )
                            };
                            let mut have = end + 1;
                            let mut r = put(have);
                            if end == 0 && r.status == 416 {
                                have = 0;
                                r = put(0);
                            }
                            assert!(have <= body.len());
                            assert_eq!(
                                r.status,
                                201,
                                "resuming at {have}: {:?}",
                                String::from_utf8_lossy(&r.body)
                            );
                            resumed += 1;
                        }
                        404 => {
                            assert_eq!(st.error_code(), "BLOB_UPLOAD_UNKNOWN");
                            unknown += 1;
                        }
                        other => panic!("upload status after the crash: {other}"),
                    }
                }
            }
            Outcome::Held {
                digest,
                body,
                location,
                half,
            } => {
                acked += 1;
                let st = c.get(location);
                assert_eq!(
                    st.status, 204,
                    "a session holding acknowledged data was lost"
                );
                let range = format!("0-{}", half - 1);
                assert_eq!(st.header("range"), Some(range.as_str()));
                let rest = format!("{half}-{}", body.len() - 1);
                let r = Client::connect(addr).request(
                    "PUT",
                    &format!("{location}?digest={digest}"),
                    &[("Content-Range", &rest)],
                    &body[*half..],
                );
                assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
                let got = c.get(&format!("/v2/crash/held/blobs/{digest}"));
                assert_eq!(sha256(&got.body), *digest, "resumed blob corrupt");
                resumed += 1;
            }
            Outcome::Manifest { tag, created } => {
                let r = c.request(
                    "GET",
                    &format!("/v2/crash/m/manifests/{tag}"),
                    &[("Accept", OCI_MANIFEST)],
                    b"",
                );
                if *created {
                    acked += 1;
                    assert_eq!(r.status, 200, "acknowledged manifest {tag} is gone");
                }
                if r.status == 200 {
                    for l in r.json()["layers"].as_array().unwrap() {
                        let d = l["digest"].as_str().unwrap();
                        let b = c.get(&format!("/v2/crash/m/blobs/{d}"));
                        assert_eq!(sha256(&b.body), d);
                    }
                }
            }
        }
    }
    eprintln!(
        "after the crash: {acked} acknowledged pushes intact, {resumed} uploads resumed, {unknown} unknown"
    );
    assert!(
        resumed + unknown >= 24,
        "the paused uploads must come back resumable or unknown"
    );
    assert!(acked >= 16, "only {acked} pushes were acknowledged");
    // Every visible blob hashes to its name, every tag points at a stored manifest, every
    // manifest's blobs are stored: fsck re-verifies the whole store.
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

/// A tmpfs mounted for one test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "the disk-full test mounts a tmpfs and needs root (or CAP_SYS_ADMIN): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fill the filesystem at `dir` with one file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let small = [0u8; 512];
    while f.write_all(&small).is_ok() {}
    let _ = f.sync_all();
    path
}

fn full_disk_answers_507_damages_nothing_and_recovers(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let _fs = Tmpfs::mount(mnt.path(), "24m");
    std::fs::create_dir(mnt.path().join("data")).unwrap();
    std::os::unix::fs::symlink(mnt.path().join("data"), dir.path().join("data")).unwrap();
    let s = Server::start_in(dir, driver, "", "warn");
    let mut c = s.client();
    let kept = push_image(&mut c, "disk", "kept", &noise(1, 1 << 20));
    let filler = fill(mnt.path());

    let big = noise(2, 2 << 20);
    let d = sha256(&big);
    let r = c.request(
        "POST",
        &format!("/v2/disk/blobs/uploads/?digest={d}"),
        &[],
        &big,
    );
    assert_eq!(r.status, 507, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("60"));
    assert!(String::from_utf8_lossy(&r.body).contains("storage is full"));
    // A chunked session fails the same way (its files are created with the first chunk) and the
    // connection stays usable.
    let mut c = s.client();
    let loc = c.request("POST", "/v2/disk/blobs/uploads/", &[], b"");
    if loc.status == 202 {
        let loc = loc.header("location").unwrap().to_owned();
        let r = c.request("PATCH", &loc, &[], &big[..64 * 1024]);
        assert_eq!(r.status, 507);
    } else {
        assert_eq!(loc.status, 507);
    }
    // A manifest whose blobs are all stored (the kept image's), so only the full disk can refuse
    // it; padded past the few hundred bytes `fill` may leave free.
    let kept_manifest = c.get("/v2/disk/manifests/kept").json();
    let mut m = kept_manifest.clone();
    m["annotations"] = serde_json::json!({ "padding": "p".repeat(16 * 1024) });
    let m = serde_json::to_vec(&m).unwrap();
    let r = c.request(
        "PUT",
        "/v2/disk/manifests/new",
        &[("Content-Type", OCI_MANIFEST)],
        &m,
    );
    assert_eq!(r.status, 507, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(
        c.get("/v2/disk/manifests/new").status,
        404,
        "a refused manifest was tagged"
    );
    // What was stored before is whole.
    let got = c.get("/v2/disk/manifests/kept");
    assert_eq!(sha256(&got.body), kept);
    for l in got.json()["layers"].as_array().unwrap() {
        let ld = l["digest"].as_str().unwrap();
        assert_eq!(sha256(&c.get(&format!("/v2/disk/blobs/{ld}")).body), ld);
    }
    assert_eq!(c.get(&format!("/v2/disk/blobs/{d}")).status, 404);
    // Space freed: the same pushes succeed, and no partial files were left behind. The full
    // disk did not turn direct writes off (tmpfs takes `O_DIRECT` on current kernels; an older
    // one refuses it at the first direct write, before the disk fills).
    std::fs::remove_file(filler).unwrap();
    let direct = |c: &mut Client| {
        let text = c.get("/metrics").body_text();
        crate::common::sample(&text, "wharf_direct_write_bytes_total").unwrap()
    };
    let before = direct(&mut c);
    let r = c.request(
        "POST",
        &format!("/v2/disk/blobs/uploads/?digest={d}"),
        &[],
        &big,
    );
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(c.get(&format!("/v2/disk/blobs/{d}")).body, big);
    if before > 0.0 {
        let written = direct(&mut c) - before;
        assert!(
            written >= 0.9 * big.len() as f64,
            "after the full disk only {written} bytes of {} went around the page cache",
            big.len()
        );
    }
    let leftovers: Vec<_> = std::fs::read_dir(mnt.path().join("data/uploads"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

fn slowloris_connections_time_out_while_others_are_served(driver: &str) {
    crate::common::raise_nofile(2500); // 1,000 client sockets
    // 1,000 slow clients, all from 127.0.0.1 here: no per-client connection cap.
    let s = Server::start_with(
        driver,
        "[server.http]\nhead_timeout = \"2s\"\n[limits]\nmax_connections_per_client = 0\n",
    );
    let mut slow: Vec<TcpStream> = (0..1000)
        .map(|_| {
            let c = TcpStream::connect(s.addr).unwrap();
            c.set_nonblocking(true).unwrap();
            c
        })
        .collect();
    let request = b"GET /v2/ HTTP/1.1\r\nHost: slowloris\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let mut served = 0;
    let mut sent = 0;
    // One byte per connection per second (the pace is the attack; nothing waits on it); between
    // the bytes a normal client pushes and pulls, every operation checked.
    let mut normal = s.client();
    for _ in 0..4 {
        for c in &mut slow {
            let _ = c.write(&request[sent..=sent]);
        }
        sent += 1;
        for _ in 0..10 {
            let body = noise(served, 10_000);
            let d = push_blob(&mut normal, "busy", &body);
            assert_eq!(normal.get(&format!("/v2/busy/blobs/{d}")).body, body);
            served += 1;
        }
        std::thread::sleep(Duration::from_millis(1000));
    }
    assert_eq!(served, 40);
    assert!(
        sent < request.len(),
        "the slow requests must still be incomplete"
    );
    // Every slow connection is answered 408 and closed by the server within the head timeout
    // (2 s) plus a margin; one still open then, or answered otherwise, fails.
    for (i, mut c) in slow.into_iter().enumerate() {
        c.set_nonblocking(false).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(2) + crate::common::CLOSE_WAIT))
            .unwrap();
        let mut buf = Vec::new();
        match c.read_to_end(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!(
                "slow connection {i} still open past the head timeout ({e}), after {:?}",
                String::from_utf8_lossy(&buf)
            ),
        }
        let text = String::from_utf8_lossy(&buf);
        assert!(
            text.starts_with("HTTP/1.1 408"),
            "slow connection {i}: {text:?}"
        );
    }
    // And the server is still fine.
    assert_eq!(s.client().get("/v2/").status, 200);
}

fn traversal_and_encoding_tricks_never_leave_the_storage_root(driver: &str) {
    let s = Server::start(driver);
    // A secret next to the storage root, and a snapshot of what exists outside it.
    let outside = s.dir.path().join("secret");
    std::fs::write(&outside, "top secret").unwrap();
    let listing = |p: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let mut c = s.client();
    push_image(&mut c, "real", "v1", b"layer");
    push_image(&mut c, "real", "latest", b"layer");
    // Canaries where the payloads below would land if a name were joined to a path unchecked: copies
    // of the repository (with its `latest` tag) beside and above `repositories/`, so a traversal
    // that resolved would answer 200 instead of 400/404.
    let real = s.root().join("repositories/real");
    let canaries = [
        s.root().join("repositories/b"),
        s.root().join("repositories/secret"),
        s.root().join("b"),
        s.root().join("secret"),
        s.dir.path().join("b"),
    ];
    for canary in &canaries {
        let out = Command::new("cp")
            .arg("-a")
            .arg(&real)
            .arg(canary)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let before_dir = listing(s.dir.path());
    let before_tmp = listing(Path::new("/tmp"));
    let zero = "0".repeat(64);
    let names = [
        "..",
        "%2e%2e",
        "a/../b",
        "a/%2e%2e/b",
        "a%2f..%2fb",
        "a%2F..%2F..%2Fsecret",
        "/abs",
        "%00",
        "a%00b",
        "%c0%ae%c0%ae",
        "%e0%80%ae",
        "A",
        "a//b",
        "./a",
        "a/.",
        "a%5c..%5cb",
        "a\\..\\b",
    ];
    for n in names {
        for (method, path) in [
            ("GET", format!("/v2/{n}/tags/list")),
            ("GET", format!("/v2/{n}/manifests/latest")),
            ("PUT", format!("/v2/{n}/manifests/latest")),
            ("POST", format!("/v2/{n}/blobs/uploads/")),
            ("GET", format!("/v2/{n}/blobs/sha256:{zero}")),
        ] {
            let r = c.request(method, &path, &[("Content-Type", OCI_MANIFEST)], b"{}");
            assert!(
                r.status == 400 || r.status == 404,
                "{method} {path}: {}",
                r.status
            );
            if r.status == 400 {
                assert_eq!(r.error_code(), "NAME_INVALID", "{method} {path}");
            }
            assert!(!String::from_utf8_lossy(&r.body).contains("top secret"));
        }
    }
    for tag in [
        "..",
        "%2e%2e",
        "..%2fsecret",
        "a%2fb",
        "%00",
        ".hidden",
        "-x",
        "a/../../secret",
    ] {
        for method in ["GET", "PUT", "DELETE"] {
            let r = c.request(
                method,
                &format!("/v2/real/manifests/{tag}"),
                &[("Content-Type", OCI_MANIFEST)],
                b"{}",
            );
            assert!(
                matches!(r.status, 400 | 404),
                "{method} tag {tag}: {}",
                r.status
            );
            if r.status == 400 {
                let code = r.error_code();
                assert!(
                    matches!(
                        code.as_str(),
                        "MANIFEST_INVALID" | "DIGEST_INVALID" | "NAME_INVALID"
                    ),
                    "{method} tag {tag}: {code}"
                );
            }
        }
    }
    for d in [
        "sha256:..%2f..%2fsecret",
        "sha256:../../secret",
        &format!("sha256:{}", "A".repeat(64)),
        &format!("sha256:{}%00", "0".repeat(63)),
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256:%2e%2e",
    ] {
        let r = c.get(&format!("/v2/real/blobs/{d}"));
        assert!(matches!(r.status, 400 | 404), "blob {d}: {}", r.status);
        if r.status == 400 {
            assert_eq!(r.error_code(), "DIGEST_INVALID", "blob {d}");
        }
        let r = c.request(
            "POST",
            &format!("/v2/real/blobs/uploads/?digest={d}"),
            &[],
            b"x",
        );
        assert_eq!(r.status, 400, "upload digest {d}");
        assert_eq!(r.error_code(), "DIGEST_INVALID", "upload digest {d}");
    }
    for id in [
        "..",
        "..%2f..%2fsecret",
        "%2e%2e",
        "../../uploads",
        "00000000-0000-4000-8000-000000000000%00",
    ] {
        for method in ["GET", "PATCH", "PUT", "DELETE"] {
            let r = c.request(method, &format!("/v2/real/blobs/uploads/{id}"), &[], b"x");
            assert!(
                matches!(r.status, 400 | 404),
                "{method} upload {id}: {}",
                r.status
            );
            // Unknown session, or (with "/" in the id) no such endpoint at all.
            let code = r.error_code();
            assert!(
                matches!(
                    code.as_str(),
                    "BLOB_UPLOAD_UNKNOWN" | "UNSUPPORTED" | "NAME_INVALID"
                ),
                "{method} upload {id}: {code}"
            );
        }
    }
    // Raw bytes the parser must refuse outright: NUL and invalid UTF-8 in the target.
    for raw in [
        &b"GET /v2/a\x00b/tags/list HTTP/1.1\r\n\r\n"[..],
        b"GET /v2/\xc0\xae\xc0\xae/tags/list HTTP/1.1\r\n\r\n",
    ] {
        let mut c = s.client();
        c.send_raw(raw);
        let r = c.read_response(false);
        assert!(
            matches!(r.status, 400 | 404),
            "{:?}: {}",
            String::from_utf8_lossy(raw),
            r.status
        );
    }
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), "top secret");
    assert_eq!(
        listing(s.dir.path()),
        before_dir,
        "files appeared next to the storage root"
    );
    let after_tmp = listing(Path::new("/tmp"));
    let new_in_tmp: Vec<_> = after_tmp
        .iter()
        .filter(|f| !before_tmp.contains(f) && !f.starts_with(".tmp"))
        .collect();
    assert!(new_in_tmp.is_empty(), "{new_in_tmp:?}");
    for canary in &canaries {
        std::fs::remove_dir_all(canary).unwrap();
    }
    // Inside the root, only the real repository exists.
    assert_eq!(
        c.get("/v2/_catalog").json()["repositories"],
        serde_json::json!(["real"])
    );
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

on_both_drivers!(
    kill_9_with_80_pushes_in_flight_loses_nothing_acknowledged,
    full_disk_answers_507_damages_nothing_and_recovers,
    slowloris_connections_time_out_while_others_are_served,
    traversal_and_encoding_tricks_never_leave_the_storage_root,
);
