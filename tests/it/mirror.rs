//! Pull-through mirrors (`[[upstream]]`): a second wharf holds the images; the mirror serves them
//! under its prefix (to our client and to crane), keeps them, refuses writes under the prefix,
//! serves cached tags marked stale when the upstream is gone and answers 503 for the rest, and
//! never keeps bytes that do not match their digest (a lying upstream in Python).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

fn mirror_of(upstream_host: &str) -> Server {
    Server::start_with(
        "io_uring",
        &format!(
            "[[upstream]]\nname = \"up\"\nurl = \"http://{upstream_host}\"\nprefix = \"hub\"\ntimeout = \"3s\"\nmanifest_check_interval = \"0s\"\n"
        ),
    )
}

#[test]
fn a_mirror_serves_and_keeps_what_the_upstream_holds() {
    let up = Server::start("io_uring");
    let mut cu = up.client();
    let layer = noise(31, 300_000);
    let md = push_image(&mut cu, "library/app", "v1", &layer);
    let ld = sha256(&layer);
    let m = mirror_of(&up.host());
    let mut c = m.client();

    let r = c.get("/v2/hub/library/app/manifests/v1");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(r.header("Docker-Content-Digest"), Some(md.as_str()));
    assert_eq!(sha256(&r.body), md, "the upstream's bytes, unchanged");
    let b = c.get(&format!("/v2/hub/library/app/blobs/{ld}"));
    assert_eq!(b.status, 200, "{}", b.body_text());
    assert!(b.body == layer, "the layer comes through whole");
    let digest_by_crane = run_ok(Command::new(tool("crane")).args([
        "digest",
        "--insecure",
        &format!("{}/hub/library/app:v1", m.host()),
    ]));
    assert_eq!(digest_by_crane.trim(), md);
    let work = tempfile::tempdir().unwrap();
    run_ok(Command::new(tool("crane")).args([
        "pull",
        "--insecure",
        "--format=oci",
        &format!("{}/hub/library/app:v1", m.host()),
        &work.path().join("img").display().to_string(),
    ]));

    // Unknown upstream: 404 with the upstream named.
    let r = c.get("/v2/hub/library/app/manifests/nope");
    assert_eq!(
        (r.status, r.error_code().as_str()),
        (404, "MANIFEST_UNKNOWN")
    );
    assert!(r.body_text().contains("upstream up"), "{}", r.body_text());
    // Writes under the prefix are refused with what to do.
    let r = c.request("POST", "/v2/hub/library/app/blobs/uploads/", &[], b"");
    assert_eq!((r.status, r.error_code().as_str()), (403, "DENIED"));
    assert!(r.body_text().contains("read-only"), "{}", r.body_text());
    let r = c.request(
        "DELETE",
        &format!("/v2/hub/library/app/manifests/{md}"),
        &[],
        b"",
    );
    assert_eq!(r.status, 403);
    // Outside the prefix the mirror is an ordinary registry.
    push_blob(&mut c, "local/app", b"mine");

    // The upstream goes away: what was fetched is still served, the tag marked stale; anything
    // else is a quick 503 with Retry-After.
    drop(up);
    let r = c.get("/v2/hub/library/app/manifests/v1");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(
        r.header("Warning").is_some_and(|w| w.contains("stale")),
        "{:?}",
        r.headers
    );
    assert_eq!(
        c.get(&format!("/v2/hub/library/app/manifests/{md}")).status,
        200
    );
    let b = c.get(&format!("/v2/hub/library/app/blobs/{ld}"));
    assert!(b.status == 200 && b.body == layer);
    let r = c.get("/v2/hub/library/app/manifests/v2");
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.header("Retry-After").is_some());
    assert!(
        r.body_text().contains("cannot be reached"),
        "{}",
        r.body_text()
    );
}

/// A Python HTTP server on a free loopback port running `handler` (the body of a
/// `BaseHTTPRequestHandler.do_GET`, with `sys.argv[1]` as `arg`); stopped on drop.
pub(crate) struct PyUpstream(std::process::Child, pub(crate) u16);

impl PyUpstream {
    pub(crate) fn start(handler: &str, arg: &str) -> PyUpstream {
        let server = format!(
            "import http.server, os, sys, time\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n{handler}\n    def do_HEAD(self):\n        self.do_GET()\n    def log_message(self, *a):\n        pass\ns = http.server.ThreadingHTTPServer((\"127.0.0.1\", 0), H)\nprint(s.server_address[1], flush=True)\ns.serve_forever()\n"
        );
        let mut child = Command::new("python3")
            .args(["-c", &server, arg])
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 is missing (tests/setup.sh installs it)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        PyUpstream(child, line.trim().parse().unwrap())
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Answers every manifest and blob with bytes that are not what was asked.
const LYING: &str = r#"        if "/manifests/" in self.path:
            body = b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}'
            ct = "application/vnd.oci.image.manifest.v1+json"
        else:
            body, ct = b"not the bytes you asked for" * 1000, "application/octet-stream"
        self.send_response(200)
        self.send_header("Content-Type", ct)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)"#;

/// Sends the first half of every blob, then waits until the file `sys.argv[1]` exists.
const STALLING: &str = r#"        body = b"x" * 200000
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:100000])
        self.wfile.flush()
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.05)
        self.wfile.write(body[100000:])"#;

#[test]
fn bytes_that_do_not_match_their_digest_are_never_kept() {
    let liar = PyUpstream::start(LYING, "");
    let m = mirror_of(&format!("127.0.0.1:{}", liar.1));
    let mut c = m.client();
    let want = sha256(b"the real layer");
    let r = c.get(&format!("/v2/hub/x/manifests/{want}"));
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.body_text().contains("do not match"), "{}", r.body_text());
    // A blob is streamed as it arrives: the wrong bytes are found at the end, and the response
    // is cut before its last byte (never completed).
    let mut raw = m.client();
    raw.send_raw(format!("GET /v2/hub/x/blobs/{want} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    assert!(
        raw.try_read_response(false).is_none(),
        "a blob with wrong bytes never arrives whole"
    );
    // Nothing was kept: with the upstream gone, both are still missing.
    drop(liar);
    for path in [
        format!("/v2/hub/x/manifests/{want}"),
        format!("/v2/hub/x/blobs/{want}"),
    ] {
        let r = c.get(&path);
        assert_eq!(r.status, 503, "{path}");
        assert!(
            r.body_text().contains("cannot be reached"),
            "{}",
            r.body_text()
        );
    }
}

/// `GET path` on a connection of its own, the body hashed as it arrives: (status, digest, length).
fn pull_hashed(addr: std::net::SocketAddr, path: &str) -> (u16, String, usize) {
    use sha2::{Digest as _, Sha256};
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(60)))
        .unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status = line[9..12].parse().unwrap();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        if h.trim_end().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap();
        }
    }
    let (mut h, mut left, mut buf) = (Sha256::new(), len, vec![0u8; 1 << 20]);
    while left > 0 {
        let n = r.read(&mut buf[..left.min(1 << 20)]).unwrap();
        assert!(n > 0, "the body ended {left} bytes short");
        h.update(&buf[..n]);
        left -= n;
    }
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    (status, format!("sha256:{hex}"), len)
}

/// 32 clients pull one uncached 64 MiB layer through the mirror at once: every one gets it whole,
/// and the upstream's access log shows exactly one GET of it.
#[test]
fn one_upstream_fetch_however_many_clients_wait() {
    let up = Server::start_logged("io_uring", "", "wharf::access=info");
    let layer = noise(41, 64 << 20);
    let ld = push_blob(&mut up.client(), "library/big", &layer);
    drop(layer);
    let m = mirror_of(&up.host());
    let path = format!("/v2/hub/library/big/blobs/{ld}");
    let start = std::sync::Arc::new(std::sync::Barrier::new(32));
    let pulls: Vec<_> = (0..32)
        .map(|_| {
            let (addr, path, start) = (m.addr, path.clone(), std::sync::Arc::clone(&start));
            std::thread::spawn(move || {
                start.wait();
                pull_hashed(addr, &path)
            })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.join().unwrap(), (200, ld.clone(), 64 << 20));
    }
    // The upstream's log is written in order: once a later request is in it, so is every GET.
    up.client().get("/v2/marker/tags/list");
    up.wait_for_log("/v2/marker/tags/list");
    let gets = up
        .log()
        .lines()
        .filter(|l| l.contains("GET") && l.contains(&format!("/v2/library/big/blobs/{ld}")))
        .count();
    assert_eq!(gets, 1, "the upstream served the layer once");
    let metrics = m.client().get("/metrics").body_text();
    assert_eq!(
        sample(&metrics, "wharf_mirror_fetches_total{upstream=\"up\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&metrics, "wharf_mirror_fetches_in_flight"),
        Some(0.0)
    );
    let series = |s: &str| sample(&metrics, &format!("{s}{{upstream=\"up\"}}"));
    assert_eq!(
        series("wharf_mirror_upstream_bytes_total"),
        Some((64 << 20) as f64)
    );
    assert_eq!(
        sample(
            &metrics,
            "wharf_mirror_cache_total{upstream=\"up\",kind=\"blob\",outcome=\"miss\"}"
        ),
        Some(32.0),
        "every request found it missing"
    );
    let r = m.client().get(&path);
    assert_eq!(r.status, 200);
    let metrics = m.client().get("/metrics").body_text();
    assert_eq!(
        sample(
            &metrics,
            "wharf_mirror_cache_total{upstream=\"up\",kind=\"blob\",outcome=\"hit\"}"
        ),
        Some(1.0),
        "then it is cached"
    );
}

/// The daemons' own mirror settings: dockerd's `registry-mirrors` (Docker Hub names, no prefix:
/// the default upstream) and containerd's `hosts.toml` (`?ns=docker.io`: the upstream with that
/// namespace) pull an image pushed upstream by skopeo, byte-identical, each kept under its
/// upstream's prefix.
#[test]
fn docker_and_containerd_pull_through_their_mirror_settings() {
    use crate::mirror_upstreams::{image, skopeo_push};
    let up = Server::start("io_uring");
    let work = tempfile::tempdir().unwrap();
    let (src, image, layers) = image(work.path());
    skopeo_push(&src, &format!("{}/library/app:v1", up.host()), None);
    let upstream = |name: &str, prefix: &str, extra: &str| {
        format!(
            "[[upstream]]\nname = \"{name}\"\nurl = \"http://{}\"\nprefix = \"{prefix}\"\n{extra}\n",
            up.host()
        )
    };
    let m = Server::start_with(
        "io_uring",
        &format!(
            "{}{}",
            upstream("ns", "viahosts", "namespace = \"docker.io\""),
            upstream("dflt", "viadefault", "default = true")
        ),
    );
    let daemon = crate::common::docker::Dockerd::start_with(&format!(
        "{{\"registry-mirrors\": [\"http://{}\"]}}",
        m.host()
    ));

    // Docker: a Docker Hub name, asked of the mirror unprefixed.
    run_ok(daemon.docker().args(["pull", "app:v1"]));
    let ids = run_ok(daemon.docker().args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}} {{json .RootFS.Layers}}",
        "app:v1",
    ]));
    assert!(ids.contains(&image.digest), "docker pulled {ids}");
    for l in &layers {
        assert!(
            ids.contains(&l.diff_id),
            "layer {} missing in {ids}",
            l.diff_id
        );
    }

    // containerd: hosts.toml for docker.io names the mirror; it asks with ?ns=docker.io.
    let hosts = work.path().join("hosts");
    std::fs::create_dir_all(hosts.join("docker.io")).unwrap();
    std::fs::write(
        hosts.join("docker.io/hosts.toml"),
        format!(
            "server = \"https://registry-1.docker.io\"\n[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            m.host()
        ),
    )
    .unwrap();
    run_ok(daemon.ctr().args([
        "images",
        "pull",
        "--hosts-dir",
        &hosts.display().to_string(),
        "docker.io/library/app:v1",
    ]));
    let listed = run_ok(daemon.ctr().args(["images", "ls"]));
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("docker.io/library/app:v1") && l.contains(&image.digest)),
        "ctr lists {listed}"
    );

    // Each went through its own upstream and is kept under that prefix.
    let mut c = m.client();
    for prefix in ["viadefault", "viahosts"] {
        let r = c.get(&format!("/v2/{prefix}/library/app/tags/list"));
        assert_eq!(r.status, 200, "{prefix}: {}", r.body_text());
        assert!(
            r.body_text().contains("\"v1\""),
            "{prefix}: {}",
            r.body_text()
        );
    }
    // Unprefixed names are the default upstream's, read-only.
    let r = c.request("POST", "/v2/library/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 403);
}

/// A fetch under way from one upstream is not shared with a request for the same digest under
/// another upstream: that one asks its own upstream (which may not grant it the blob).
#[test]
fn a_fetch_is_shared_only_within_its_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let slow = PyUpstream::start(STALLING, &release.display().to_string());
    let other = Server::start("io_uring");
    let m = Server::start_with(
        "io_uring",
        &format!(
            "[[upstream]]\nname = \"slow\"\nurl = \"http://127.0.0.1:{}\"\nprefix = \"a\"\ntimeout = \"30s\"\n\
             [[upstream]]\nname = \"other\"\nurl = \"http://{}\"\nprefix = \"b\"\n",
            slow.1,
            other.host()
        ),
    );
    let d = sha256(&vec![b'x'; 200_000]);
    // Through `a`: the first half arrives, then the upstream stalls with the fetch under way.
    let mut first = m.client();
    first.send_raw(format!("GET /v2/a/app/blobs/{d} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
    wait_for("the fetch through a is under way", || {
        let metrics = m.client().get("/metrics").body_text();
        sample(&metrics, "wharf_mirror_fetches_in_flight") == Some(1.0)
    });
    // Through `b`: its own upstream, which does not have the blob.
    let r = m
        .client()
        .get_within(
            &format!("/v2/b/app/blobs/{d}"),
            std::time::Duration::from_secs(20),
        )
        .expect("answered by b's own upstream, not held in a's fetch");
    assert_eq!((r.status, r.error_code().as_str()), (404, "BLOB_UNKNOWN"));
    assert!(
        r.body_text().contains("upstream other"),
        "{}",
        r.body_text()
    );
    std::fs::write(&release, b"").unwrap();
    let r = first.read_response(false);
    assert_eq!(r.status, 200);
    assert_eq!(sha256(&r.body), d);
}

#[test]
fn podman_pulls_through_a_prefixed_mirror_in_registries_conf() {
    use crate::mirror_upstreams::{image, skopeo_push};
    let up = Server::start("io_uring");
    let work = tempfile::tempdir().unwrap();
    let (src, image, _) = image(work.path());
    skopeo_push(&src, &format!("{}/library/app:v1", up.host()), None);
    let m = mirror_of(&up.host());
    // docker.io itself is unreachable here: the pull succeeds only through the mirror.
    let conf = work.path().join("registries.conf");
    std::fs::write(
        &conf,
        format!(
            "[[registry]]\nlocation = \"docker.io\"\n[[registry.mirror]]\nlocation = \"{}/hub\"\ninsecure = true\n",
            m.host()
        ),
    )
    .unwrap();
    let root = work.path().join("podman");
    run_ok(
        crate::e2e_tls::podman(&root)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args(["pull", "docker.io/library/app:v1"]),
    );
    let digest = run_ok(
        crate::e2e_tls::podman(&root)
            .env("CONTAINERS_REGISTRIES_CONF", &conf)
            .args(["image", "inspect", "--format", "{{.Digest}}"])
            .arg("docker.io/library/app:v1"),
    );
    assert_eq!(digest.trim(), image.digest);
    let metrics = m.client().get("/metrics").body_text();
    assert_eq!(
        sample(&metrics, "wharf_mirror_fetches_total{upstream=\"up\"}"),
        Some(3.0),
        "the config and the two layers came from the upstream through the mirror"
    );
}
