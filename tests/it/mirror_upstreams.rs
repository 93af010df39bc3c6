//! Upstreams as they are met in the field, each a real registry: CNCF distribution (Debian's
//! `docker-registry`) behind Basic auth, and behind the Docker token flow with its blobs redirected
//! to another host (its `redirect` storage middleware; the realm and the "CDN" are
//! `token_realm.py`, tokens signed with openssl); a wharf over mutual TLS. And how the mirror
//! treats its upstream: tags re-checked at most every `manifest_check_interval`, a `429` honoured
//! with a pause, at most `max_connections` requests at once, `request.upstream` in policies.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::layout::{Blob, Layout};
use crate::common::pki::Pki;
use crate::common::*;

/// Debian's `docker-registry` (CNCF distribution 2.8) on a free loopback port, with `extra` YAML
/// (auth, middleware); storage under `root`. Stopped on drop.
struct Distribution {
    child: Child,
    port: u16,
}

impl Distribution {
    fn start(dir: &Path, root: &Path, extra: &str) -> Distribution {
        let port = crate::common::free_port();
        let config = dir.join("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog: {{level: warn}}\nstorage:\n  filesystem: {{rootdirectory: \"{}\"}}\nhttp: {{addr: \"127.0.0.1:{port}\"}}\n{extra}",
                root.display()
            ),
        )
        .unwrap();
        let child = Command::new(tool("docker-registry"))
            .args(["serve", config.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("registry.log")).unwrap())
            .spawn()
            .expect("docker-registry is missing (tests/setup.sh installs it)");
        wait_for("docker-registry listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Distribution { child, port }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// An image of two layers in an OCI layout under `dir`, tagged `v1`.
pub(crate) fn image(dir: &Path) -> (Layout, Blob, Vec<Blob>) {
    let mut src = Layout::new(&dir.join("src"));
    let layers = vec![
        src.add_tar_layer("a.bin", 400_000, 61),
        src.add_tar_layer("b.bin", 1_200_000, 62),
    ];
    let image = src.add_image(&layers, "amd64");
    src.tag(&image, "v1");
    (src, image, layers)
}

pub(crate) fn skopeo_push(src: &Layout, to: &str, creds: Option<&str>) {
    let mut c = crate::e2e_clients::skopeo();
    c.args(["copy", "--dest-tls-verify=false"]);
    if let Some(creds) = creds {
        c.args(["--dest-creds", creds]);
    }
    run_ok(c.args([
        &format!("oci:{}:v1", src.dir.display()),
        &format!("docker://{to}"),
    ]));
}

/// Pull `repo:v1` through `m` with crane and check every byte against the layout.
fn pulled_whole(m: &Server, repo: &str, image: &Blob, layers: &[Blob], src: &Layout) {
    let mut c = m.client();
    let r = c.get(&format!("/v2/{repo}/manifests/v1"));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(sha256(&r.body), image.digest);
    for l in layers {
        let b = c.get(&format!("/v2/{repo}/blobs/{}", l.digest));
        assert_eq!(b.status, 200, "{}", b.body_text());
        assert!(b.body == std::fs::read(src.blob_path(&l.digest)).unwrap());
    }
    let work = tempfile::tempdir().unwrap();
    run_ok(Command::new(tool("crane")).args([
        "pull",
        "--insecure",
        "--format=oci",
        &format!("{}/{repo}:v1", m.host()),
        &work.path().join("img").display().to_string(),
    ]));
}

fn mirror(upstream: &str, extra: &str) -> Server {
    Server::start_with(
        "io_uring",
        &format!(
            "[[upstream]]\nname = \"dist\"\nurl = \"{upstream}\"\nprefix = \"hub\"\n{extra}\n"
        ),
    )
}

#[test]
fn a_token_protected_upstream_behind_a_blob_cdn_is_mirrored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (key, cert) = (d.join("token.key"), d.join("token.crt"));
    run_ok(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=wharf test token signer",
        "-days",
        "1",
        "-keyout",
        key.to_str().unwrap(),
        "-out",
        cert.to_str().unwrap(),
    ]));
    let root = d.join("registry");
    std::fs::create_dir_all(&root).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/token_realm.py");
    let mut realm = Command::new("python3");
    realm
        .args([script.to_str().unwrap(), key.to_str().unwrap()])
        .args([cert.to_str().unwrap(), "ci:s3cret", root.to_str().unwrap()])
        .stdout(Stdio::piped());
    let mut child = realm.spawn().expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _realm = Killed(child);
    let ports: Vec<u16> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let (token_port, cdn_port) = (ports[0], ports[1]);
    let reg = Distribution::start(
        d,
        &root,
        &format!(
            "auth:\n  token: {{realm: \"http://127.0.0.1:{token_port}/token\", service: test-registry, issuer: wharf-test-issuer, rootcertbundle: \"{}\"}}\nmiddleware:\n  storage:\n    - name: redirect\n      options: {{baseurl: \"http://127.0.0.1:{cdn_port}/\"}}\n",
            cert.display()
        ),
    );
    let (src, image, layers) = image(d);
    skopeo_push(
        &src,
        &format!("{}/library/app:v1", reg.host()),
        Some("ci:s3cret"),
    );

    // The registry answers 401 with a Bearer challenge and redirects blob GETs to the CDN,
    // which refuses any request carrying credentials.
    std::fs::write(d.join("password"), "s3cret\n").unwrap();
    let creds = format!(
        "username = \"ci\"\npassword_file = \"{}\"",
        d.join("password").display()
    );
    let m = mirror(&format!("http://{}", reg.host()), &creds);
    pulled_whole(&m, "hub/library/app", &image, &layers, &src);
    let series = |s: &str| format!("{s}{{upstream=\"dist\"}}");
    assert_eq!(
        metric(&m, &series("wharf_mirror_upstream_tokens_total")),
        1.0,
        "one token, cached, for every request of the repository"
    );
    assert_eq!(metric(&m, &series("wharf_mirror_fetches_total")), 3.0);

    // Wrong credentials: the realm refuses, and the client is told what to fix.
    std::fs::write(d.join("password"), "wrong\n").unwrap();
    let bad = mirror(&format!("http://{}", reg.host()), &creds);
    let r = bad.client().get("/v2/hub/library/app/manifests/v1");
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(
        r.body_text().contains("token realm") && r.body_text().contains("credentials"),
        "{}",
        r.body_text()
    );
}

#[test]
fn a_basic_auth_upstream_is_mirrored() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let htpasswd = d.join("htpasswd");
    run_ok(Command::new("htpasswd").args(["-Bbc", htpasswd.to_str().unwrap(), "mirror", "pa55"]));
    let reg = Distribution::start(
        d,
        &d.join("registry"),
        &format!(
            "auth:\n  htpasswd: {{realm: basic-realm, path: \"{}\"}}\n",
            htpasswd.display()
        ),
    );
    let (src, image, layers) = image(d);
    skopeo_push(
        &src,
        &format!("{}/team/app:v1", reg.host()),
        Some("mirror:pa55"),
    );
    std::fs::write(d.join("password"), "pa55").unwrap();
    let m = mirror(
        &format!("http://{}", reg.host()),
        &format!(
            "username = \"mirror\"\npassword_file = \"{}\"",
            d.join("password").display()
        ),
    );
    pulled_whole(&m, "hub/team/app", &image, &layers, &src);
    // skopeo through the mirror: byte-identical blobs.
    let out = d.join("pulled");
    run_ok(crate::e2e_clients::skopeo().args([
        "copy",
        "--src-tls-verify=false",
        &format!("docker://{}/hub/team/app:v1", m.host()),
        &format!("oci:{}:v1", out.display()),
    ]));
    for l in &layers {
        let hex = &l.digest["sha256:".len()..];
        crate::e2e_clients::assert_same_blob(
            &src.blob_path(&l.digest),
            &out.join("blobs/sha256").join(hex),
        );
    }
    // Without credentials: a Basic challenge is no token flow; the refusal says what to do.
    let anonymous = mirror(&format!("http://{}", reg.host()), "");
    let r = anonymous.client().get("/v2/hub/team/app/manifests/v1");
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(
        r.body_text().contains("401") && r.body_text().contains("credentials"),
        "{}",
        r.body_text()
    );
}

#[test]
fn tags_are_checked_upstream_at_most_every_interval() {
    let up = Server::start("io_uring");
    let mut cu = up.client();
    let d1 = push_image(&mut cu, "library/app", "v1", &noise(71, 5000));
    let url = format!("http://{}", up.host());
    let lazy = mirror(&url, "manifest_check_interval = \"1h\"");
    // Anonymous clients may pull through the mirror, and nothing else.
    let eager = mirror(
        &url,
        "manifest_check_interval = \"0s\"\n[global.access_policy]\ndefault = \"deny\"\nrules = [\"has(request.upstream) && request.upstream == 'dist' && request.action.startsWith('get-')\"]",
    );
    let ok = "wharf_mirror_upstream_requests_total{upstream=\"dist\",outcome=\"ok\"}";
    let tag = |m: &Server| {
        let r = m.client().get("/v2/hub/library/app/manifests/v1");
        assert_eq!(r.status, 200, "{}", r.body_text());
        r.header("Docker-Content-Digest").unwrap().to_owned()
    };
    for m in [&lazy, &eager] {
        assert_eq!(tag(m), d1);
        assert_eq!(
            metric(m, ok),
            2.0,
            "a HEAD of the tag, a GET of its manifest"
        );
        assert_eq!(tag(m), d1);
    }
    assert_eq!(metric(&lazy, ok), 2.0, "checked a moment ago: not asked");
    let cache = |m: &Server, o: &str| {
        metric(
            m,
            &format!(
                "wharf_mirror_cache_total{{upstream=\"dist\",kind=\"manifest\",outcome=\"{o}\"}}"
            ),
        )
    };
    for m in [&lazy, &eager] {
        assert_eq!((cache(m, "miss"), cache(m, "hit")), (1.0, 1.0));
    }
    assert_eq!(
        metric(&eager, ok),
        3.0,
        "asked again (a HEAD only: not moved)"
    );
    let d2 = push_image(&mut cu, "library/app", "v1", &noise(72, 5000));
    assert_eq!(tag(&lazy), d1, "within the interval the cached tag answers");
    assert_eq!(tag(&eager), d2, "the moved tag is fetched");
    assert_eq!(metric(&eager, ok), 5.0);
    // The policy: only pulls through the mirror.
    let r = eager.client().get("/v2/local/app/tags/list");
    assert!(matches!(r.status, 401 | 403), "{}", r.status);
    let r = eager
        .client()
        .request("POST", "/v2/local/app/blobs/uploads/", &[], b"");
    assert!(matches!(r.status, 401 | 403), "{}", r.status);
}

/// Answers everything with 429 and `Retry-After: 30`.
const THROTTLING: &str = r#"        self.send_response(429)
        self.send_header("Retry-After", "30")
        self.send_header("Content-Length", "0")
        self.end_headers()"#;

#[test]
fn an_upstream_429_pauses_requests_to_it() {
    let up = crate::mirror::PyUpstream::start(THROTTLING, "");
    let m = mirror(&format!("http://127.0.0.1:{}", up.1), "");
    let mut c = m.client();
    let digest = sha256(b"a layer");
    let series = |o: &str| {
        format!("wharf_mirror_upstream_requests_total{{upstream=\"dist\",outcome=\"{o}\"}}")
    };
    for (i, path) in [
        "/v2/hub/app/manifests/v1".to_owned(),
        format!("/v2/hub/app/blobs/{digest}"),
        "/v2/hub/app/manifests/v1".to_owned(),
    ]
    .iter()
    .enumerate()
    {
        let r = c.get(path);
        assert_eq!(r.status, 503, "{}", r.body_text());
        let wait: u64 = r.header("Retry-After").unwrap().parse().unwrap();
        assert!(
            (20..=30).contains(&wait),
            "Retry-After {wait}: the upstream's"
        );
        assert!(r.body_text().contains("429"), "{}", r.body_text());
        assert_eq!(metric(&m, &series("throttled")), 1.0, "request {i}");
    }
    assert_eq!(metric(&m, &series("shed")), 2.0, "not sent while paused");
}

/// Sends a blob's head, then one byte every 0.1 s until the file `sys.argv[1]` exists.
const TRICKLING: &str = r#"        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", "100000")
        self.end_headers()
        sent = 0
        while not os.path.exists(sys.argv[1]) and sent < 99000:
            self.wfile.write(b"x")
            self.wfile.flush()
            sent += 1
            time.sleep(0.1)
        self.wfile.write(b"x" * (100000 - sent))"#;

#[test]
fn max_connections_bounds_requests_to_an_upstream() {
    let dir = tempfile::tempdir().unwrap();
    let release = dir.path().join("release");
    let up = crate::mirror::PyUpstream::start(TRICKLING, release.to_str().unwrap());
    let m = mirror(
        &format!("http://127.0.0.1:{}", up.1),
        "max_connections = 1\ntimeout = \"2s\"",
    );
    let addr = m.addr;
    let first = std::thread::spawn(move || {
        Client::connect(addr).get_within(
            &format!("/v2/hub/app/blobs/{}", sha256(b"one")),
            std::time::Duration::from_secs(60),
        )
    });
    wait_for("the first fetch holds the one connection", || {
        metric(
            &m,
            "wharf_mirror_upstream_connections_in_use{upstream=\"dist\"}",
        ) == 1.0
    });
    let r = Client::connect(addr)
        .get_within(
            &format!("/v2/hub/app/blobs/{}", sha256(b"two")),
            std::time::Duration::from_secs(20),
        )
        .expect("a request beyond max_connections is answered, not held");
    assert_eq!(r.status, 503, "{}", r.body_text());
    assert!(r.header("Retry-After").is_some());
    assert!(
        r.body_text().contains("upstream.max_connections"),
        "{}",
        r.body_text()
    );
    std::fs::write(&release, b"").unwrap();
    // Its bytes are not the digest asked for: its response is cut short, whatever it read.
    let _ = first.join();
    wait_for("the connection is given back", || {
        metric(
            &m,
            "wharf_mirror_upstream_connections_in_use{upstream=\"dist\"}",
        ) == 0.0
    });
}

#[test]
fn an_upstream_requiring_client_certificates_is_mirrored_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let (ca, cert, key) = (
        pki.path("ca.crt"),
        pki.path("client.crt"),
        pki.path("client.key"),
    );
    let toml = pki.server_toml(Some("required"));
    let up = Server::start_in(dir, "io_uring", &toml, "warn");
    let mut cu =
        crate::common::pki::tls_connect(up.addr, pki.client_config(Some((&cert, &key)), false))
            .unwrap()
            .client;
    let layer = noise(73, 700_000);
    let md = push_image(&mut cu, "library/app", "v1", &layer);
    let url = format!("https://127.0.0.1:{}", up.addr.port());
    let m = mirror(
        &url,
        &format!(
            "ca_bundle = \"{}\"\nclient_certificate = \"{}\"\nclient_private_key = \"{}\"",
            ca.display(),
            cert.display(),
            key.display()
        ),
    );
    let mut c = m.client();
    let r = c.get("/v2/hub/library/app/manifests/v1");
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(sha256(&r.body), md);
    let b = c.get(&format!("/v2/hub/library/app/blobs/{}", sha256(&layer)));
    assert!(b.status == 200 && b.body == layer);
    // Without the client certificate the upstream refuses the handshake.
    let without = mirror(&url, &format!("ca_bundle = \"{}\"", ca.display()));
    let r = without.client().get("/v2/hub/library/app/manifests/v1");
    assert_eq!(r.status, 503, "{}", r.body_text());
}

/// Set a file's mtime to `ago` before now.
fn backdate(path: &Path, ago: std::time::Duration) {
    let t = std::time::SystemTime::now() - ago;
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .set_modified(t)
        .unwrap();
}

fn backdate_tree(dir: &Path, ago: std::time::Duration) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            backdate_tree(&p, ago);
        } else {
            backdate(&p, ago);
        }
    }
}

/// An upstream wharf with three images, `team/app{0,1,2}:v1`, each with a 300,000-byte layer of
/// its own (`seed` makes them differ between tests): budgets of 700 KiB hold two of them.
pub(crate) struct ThreeImages {
    pub up: Server,
    /// (manifest digest, layer) of each.
    pub images: Vec<(String, Vec<u8>)>,
}

impl ThreeImages {
    pub fn push(seed: u32) -> ThreeImages {
        let up = Server::start("io_uring");
        let mut cu = up.client();
        let images = (0..3)
            .map(|i| {
                let layer = noise(seed + i, 300_000);
                let md = push_image(&mut cu, &format!("team/app{i}"), "v1", &layer);
                (md, layer)
            })
            .collect();
        ThreeImages { up, images }
    }

    /// The `[[upstream]]` table of a mirror of `up` under the prefix `hub` with room for two of
    /// the three images, followed by `storage`.
    pub fn cache_on(&self, storage: &str) -> String {
        format!(
            "[[upstream]]\nname = \"up\"\nurl = \"http://{}\"\nprefix = \"hub\"\nmax_size = \"700KiB\"\n{storage}",
            self.up.host()
        )
    }

    /// Image `i`'s revision file and layer file under a filesystem mirror's `root`.
    pub fn revision(&self, root: &Path, i: usize) -> PathBuf {
        root.join(format!(
            "repositories/hub/team/app{i}/_manifests/revisions/sha256/{}",
            &self.images[i].0["sha256:".len()..]
        ))
    }

    pub fn layer(&self, root: &Path, i: usize) -> PathBuf {
        let hex = sha256(&self.images[i].1)["sha256:".len()..].to_owned();
        root.join(format!("blobs/sha256/{}/{hex}", &hex[..2]))
    }

    /// A filesystem mirror with room for two of the three images, all three cached, as if app1
    /// was last pulled 3 h ago, app0 2 h ago, app2 1 h ago, and every blob fetched 4 h ago.
    pub fn cached_on_disk(&self) -> Server {
        let m = mirror(
            &format!("http://{}", self.up.host()),
            "max_size = \"700KiB\"",
        );
        let mut c = m.client();
        for i in 0..3 {
            self.pull(&mut c, i);
        }
        let root = m.root();
        backdate_tree(&root.join("blobs"), hours(4));
        for (i, h) in [(1, 3), (0, 2), (2, 1)] {
            backdate(&self.revision(&root, i), hours(h));
        }
        m
    }

    /// Image `i` pulled through a mirror whose prefix is `hub`, manifest and layer, whole.
    pub fn pull(&self, c: &mut Client, i: usize) {
        let r = c.get(&format!("/v2/hub/team/app{i}/manifests/v1"));
        assert_eq!(r.status, 200, "{}", r.body_text());
        let layer = &self.images[i].1;
        let b = c.get(&format!("/v2/hub/team/app{i}/blobs/{}", sha256(layer)));
        assert!(b.status == 200 && b.body == *layer);
    }

    /// `wharf gc`'s output evicts image 1 and no other.
    pub fn assert_only_1_evicted(&self, out: &str) {
        let line = format!("evicted cached image hub/team/app1@{}", self.images[1].0);
        assert!(out.contains(&line), "{out}");
        assert!(
            !out.contains("hub/team/app0@") && !out.contains("hub/team/app2@"),
            "{out}"
        );
    }
}

#[test]
fn over_its_budget_the_cache_evicts_the_images_pulled_least_recently() {
    let three = ThreeImages::push(90);
    let m = three.cached_on_disk();
    let mut c = m.client();
    let root = m.root();
    let revision = |i: usize| three.revision(&root, i);
    let layer = |i: usize| three.layer(&root, i);
    let (ok, out) = m.run_wharf(&["gc", "--grace", "30m"]);
    assert!(ok, "{out}");
    three.assert_only_1_evicted(&out);
    assert!(!layer(1).exists(), "the evicted image's layer is collected");
    assert!(layer(0).exists() && layer(2).exists());
    // The evicted image comes back from the upstream, whole.
    three.pull(&mut c, 1);
    // A pull through the mirror moves its last pull.
    backdate(&revision(0), hours(2));
    three.pull(&mut c, 0);
    wait_for("the pull is noted", || {
        std::fs::metadata(revision(0))
            .unwrap()
            .modified()
            .unwrap()
            .elapsed()
            .unwrap()
            < std::time::Duration::from_secs(600)
    });
}

/// A cached image whose manifest is written again (as a fill writes it) while the collector
/// evicts it stays, untagged, with its layer, and the collection says it kept the image rather
/// than that it evicted it. A test-only delay holds `wharf gc` for 3 s between planning its
/// evictions and making them; the manifest is written again 1.5 s in.
#[test]
fn a_cached_image_written_again_while_it_is_evicted_is_kept() {
    let three = ThreeImages::push(95);
    let m = three.cached_on_disk();
    let root = m.root();
    let revision = three.revision(&root, 1);
    let out = gc_with_evictions_paused(&m, "30m", || {
        let bytes = std::fs::read(&revision).unwrap();
        std::fs::write(&revision, bytes).unwrap();
    });
    assert!(
        out.contains(&format!(
            "kept cached image hub/team/app1@{}",
            three.images[1].0
        )),
        "{out}"
    );
    assert!(!out.contains("evicted cached image"), "{out}");
    let tag = root.join("repositories/hub/team/app1/_manifests/tags/v1");
    assert!(!tag.exists(), "the tag stayed");
    assert!(revision.exists(), "the manifest went");
    assert!(three.layer(&root, 1).exists(), "the layer went");
}

/// A tag a fill moves to another manifest while the collector evicts the image it named stays,
/// naming the new manifest: eviction removes a tag only while it still names the evicted image
/// (under the repository's tag lock). The evicted image's own manifest goes.
#[test]
fn a_tag_moved_while_its_image_is_evicted_stays() {
    let three = ThreeImages::push(97);
    let m = three.cached_on_disk();
    let root = m.root();
    let tag = root.join("repositories/hub/team/app1/_manifests/tags/v1");
    let before = std::fs::read_to_string(&tag).unwrap();
    assert!(before.contains(&three.images[1].0), "{before}");
    let moved = before.replace(&three.images[1].0, &three.images[0].0);
    gc_with_evictions_paused(&m, "30m", || std::fs::write(&tag, &moved).unwrap());
    assert_eq!(
        std::fs::read_to_string(&tag).ok().as_deref(),
        Some(moved.as_str()),
        "the moved tag was removed"
    );
    assert!(
        !three.revision(&root, 1).exists(),
        "the evicted manifest stayed"
    );
}

/// `wharf gc --grace <grace>` on `m`'s storage, held for 3 s between planning its evictions and
/// making them (a test-only delay), with `during` run 1.5 s into that pause; its output.
pub(crate) fn gc_with_evictions_paused(m: &Server, grace: &str, during: impl FnOnce()) -> String {
    let gc = m
        .wharf_command(&["gc", "--grace", grace])
        .envs([
            ("WHARF_FAULT_HOOKS", "1"),
            ("WHARF_FAULT_DELAY_EVICT", "3000"),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1_500));
    during();
    let done = gc.wait_with_output().unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&done.stdout),
        String::from_utf8_lossy(&done.stderr)
    );
    assert!(done.status.success(), "{out}");
    out
}

fn hours(h: u64) -> std::time::Duration {
    std::time::Duration::from_secs(h * 3600)
}
