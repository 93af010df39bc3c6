//! Garbage collection and fsck against real storage: what goes and what stays, the dry run, the
//! grace period, untagged manifests, a collector looping while many clients push images that share
//! layers, and fsck finding and quarantining damage.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use crate::common::{
    Client, OCI_MANIFEST, Server, image_manifest, paths_under, push_blob, push_image, sha256,
    start_upload,
};

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// Make everything in the store look `age` old (as if pushed that long ago). A file the running
/// server or collector removes between the listing and the open is skipped.
fn age_everything(root: &Path, age: Duration) {
    let t = SystemTime::now() - age;
    for p in paths_under(root) {
        match std::fs::File::open(&p) {
            Ok(f) => f.set_modified(t).unwrap(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => panic!("{}: {e}", p.display()),
        }
    }
}

/// The digests of every blob file in the store.
fn stored_blobs(root: &Path) -> BTreeSet<String> {
    paths_under(&root.join("blobs"))
        .iter()
        .filter(|p| p.is_file())
        .map(|p| {
            let alg = p.parent().unwrap().parent().unwrap().file_name().unwrap();
            format!(
                "{}:{}",
                alg.to_string_lossy(),
                p.file_name().unwrap().to_string_lossy()
            )
        })
        .collect()
}

pub(crate) fn put_manifest(
    c: &mut Client,
    repo: &str,
    reference: &str,
    body: &[u8],
    ct: &str,
) -> String {
    let r = c.request(
        "PUT",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Content-Type", ct)],
        body,
    );
    assert_eq!(r.status, 201, "{:?}", String::from_utf8_lossy(&r.body));
    sha256(body)
}

/// Pull a manifest and every blob it names, checking each digest; returns the digests.
pub(crate) fn pull_verified(c: &mut Client, repo: &str, reference: &str) -> Vec<String> {
    let r = c.request(
        "GET",
        &format!("/v2/{repo}/manifests/{reference}"),
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(r.status, 200, "{repo}:{reference}");
    let m = r.json();
    let mut digests = vec![sha256(&r.body)];
    let mut wanted = vec![m["config"]["digest"].as_str().unwrap().to_owned()];
    for l in m["layers"].as_array().unwrap() {
        wanted.push(l["digest"].as_str().unwrap().to_owned());
    }
    for d in wanted {
        let b = c.get(&format!("/v2/{repo}/blobs/{d}"));
        assert_eq!(b.status, 200, "{repo}:{reference} lost blob {d}");
        assert_eq!(sha256(&b.body), d, "{repo}:{reference} blob {d} corrupt");
        digests.push(d);
    }
    digests
}

fn gc_removes_only_unreferenced_data_past_the_grace_period(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let shared = vec![1u8; 5000];
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(&mut c, "app", cfg);
    let sd = push_blob(&mut c, "app", &shared);
    let la = push_blob(&mut c, "app", b"layer only in a");
    let lb = push_blob(&mut c, "app", b"layer only in b");
    let ma = image_manifest(&cd, cfg.len(), &[(&sd, shared.len()), (&la, 15)]);
    let mb = image_manifest(&cd, cfg.len(), &[(&sd, shared.len()), (&lb, 15)]);
    put_manifest(&mut c, "app", "a", &ma, OCI_MANIFEST);
    let mbd = put_manifest(&mut c, "app", "b", &mb, OCI_MANIFEST);
    let orphan = push_blob(&mut c, "app", b"never referenced");
    let r = c.request("POST", "/v2/app/blobs/uploads/", &[], b"");
    let stale_upload = r.header("location").unwrap().to_owned();
    // Its first chunk gives the session its files (before that it lives in the server only).
    assert_eq!(c.request("PATCH", &stale_upload, &[], b"x").status, 202);
    // Deleting b leaves its own layer and its manifest blob unreferenced.
    assert_eq!(
        c.request("DELETE", &format!("/v2/app/manifests/{mbd}"), &[], b"")
            .status,
        202
    );
    age_everything(&s.root(), Duration::from_secs(7200));
    // Pushed just now: protected by the grace period although nothing references it.
    let fresh = push_blob(&mut c, "app", b"uploaded for a manifest not pushed yet");

    let before = stored_blobs(&s.root());
    let (ok, out) = s.run_wharf(&["gc", "--dry-run"]);
    assert!(ok, "{out}");
    for d in [&lb, &orphan, &mbd] {
        assert!(
            out.contains(&format!("would delete blob {d}")),
            "{d}: {out}"
        );
    }
    assert!(out.contains("would delete stale upload"), "{out}");
    assert!(
        !out.contains(&fresh) && !out.contains(&sd) && !out.contains(&la),
        "{out}"
    );
    assert_eq!(
        stored_blobs(&s.root()),
        before,
        "a dry run deleted something"
    );

    let (ok, out) = s.run_wharf(&["gc"]);
    assert!(ok, "{out}");
    assert!(out.contains("deleted: 0 manifests, 3 blobs"), "{out}");
    let left = stored_blobs(&s.root());
    let expected: BTreeSet<String> = [&cd, &sd, &la, &sha256(&ma), &fresh]
        .into_iter()
        .cloned()
        .collect();
    assert_eq!(left, expected);
    // a is whole; b's layer is gone from the repository; the fresh blob is still served.
    pull_verified(&mut c, "app", "a");
    assert_eq!(c.get(&format!("/v2/app/blobs/{lb}")).status, 404);
    assert_eq!(c.get(&format!("/v2/app/blobs/{fresh}")).status, 200);
    let r = c.request("PATCH", &stale_upload, &[], b"more");
    assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
    // The trash is empty and a second run finds nothing more.
    assert!(paths_under(&s.root().join("gc-trash")).is_empty());
    let (ok, out) = s.run_wharf(&["gc"]);
    assert!(ok && out.contains("deleted: 0 manifests, 0 blobs"), "{out}");
    // No grace at all: the blob pushed moments ago without a manifest goes too.
    let (ok, out) = s.run_wharf(&["gc", "--grace", "0s"]);
    assert!(
        ok && out.contains("deleted: 0 manifests, 1 blobs") && !out.contains("stopped early"),
        "{out}"
    );
    assert_eq!(c.get(&format!("/v2/app/blobs/{fresh}")).status, 404);
    pull_verified(&mut c, "app", "a");
}

/// A repository's link to a blob is a second name of the blob's file (no inode of its own, also
/// when mounted); a link left naming an older copy (the blob collected and pushed again while the
/// link stayed) is pointed at the stored blob by the next collection, so that copy's space comes
/// back; and a collected blob takes its links with it.
fn links_are_names_of_the_blob_file_and_gc_repoints_stale_ones(driver: &str) {
    use std::os::unix::fs::MetadataExt;
    let s = Server::start(driver);
    let mut c = s.client();
    let data = b"one layer, linked twice ".repeat(64);
    let d = push_blob(&mut c, "a/one", &data);
    let r = c.request(
        "POST",
        &format!("/v2/a/two/blobs/uploads/?mount={d}&from=a/one"),
        &[],
        b"",
    );
    assert_eq!(r.status, 201);
    let hex = &d[7..];
    let blob = s.root().join("blobs/sha256").join(&hex[..2]).join(hex);
    let link = |repo: &str| {
        s.root()
            .join(format!("repositories/{repo}/_layers/sha256/{hex}"))
    };
    let ino = |p: &Path| std::fs::metadata(p).unwrap().ino();
    assert_eq!(ino(&link("a/one")), ino(&blob));
    assert_eq!(ino(&link("a/two")), ino(&blob));
    assert_eq!(std::fs::metadata(&blob).unwrap().nlink(), 3);

    // a/two's link names a copy of the data in a file of its own.
    let copy = s.root().join("copy");
    std::fs::write(&copy, &data).unwrap();
    std::fs::rename(&copy, link("a/two")).unwrap();
    assert_ne!(ino(&link("a/two")), ino(&blob));
    let (ok, out) = s.run_wharf(&["gc"]);
    assert!(ok, "{out}");
    assert_eq!(ino(&link("a/two")), ino(&blob));
    assert_eq!(std::fs::metadata(&blob).unwrap().nlink(), 3);
    assert_eq!(c.get(&format!("/v2/a/two/blobs/{d}")).body, data);

    // Unreferenced and past its grace: the blob goes, and with it every name of its file.
    let (ok, out) = s.run_wharf(&["gc", "--grace", "0s"]);
    assert!(ok && out.contains("1 blobs"), "{out}");
    for p in [blob, link("a/one"), link("a/two")] {
        assert!(!p.exists(), "{} is left", p.display());
    }
}

/// A blob whose file has as many names as the filesystem allows (ext4: 65,000, a base layer in
/// that many repositories) is still linked into one more repository (an empty marker then), and
/// served there.
fn a_blob_at_the_filesystems_link_limit_still_links(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let data = b"a very popular base layer".to_vec();
    let d = push_blob(&mut c, "base/one", &data);
    let hex = &d[7..];
    let blob = s.root().join("blobs/sha256").join(&hex[..2]).join(hex);
    let names = s.root().join("names");
    std::fs::create_dir(&names).unwrap();
    let mut limit = None;
    for i in 0..70_000 {
        match std::fs::hard_link(&blob, names.join(i.to_string())) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EMLINK) => {
                limit = Some(i);
                break;
            }
            Err(e) => panic!("link {i}: {e}"),
        }
    }
    assert!(
        limit.is_some(),
        "no link limit within 70,000 names: this test needs ext4 under the test's temp dir"
    );
    let r = c.request(
        "POST",
        &format!("/v2/base/two/blobs/uploads/?mount={d}&from=base/one"),
        &[],
        b"",
    );
    assert_eq!(r.status, 201, "{}", r.body_text());
    let link = s
        .root()
        .join(format!("repositories/base/two/_layers/sha256/{hex}"));
    assert_eq!(
        std::fs::metadata(&link).unwrap().len(),
        0,
        "a marker, not a name"
    );
    assert_eq!(c.get(&format!("/v2/base/two/blobs/{d}")).body, data);
    // A push of the same bytes to a third repository links the same way.
    assert_eq!(push_blob(&mut c, "base/three", &data), d);
    assert_eq!(c.get(&format!("/v2/base/three/blobs/{d}")).body, data);
    std::fs::remove_dir_all(&names).unwrap();
}

/// What `push_untagged` pushed to repository `r`: a tagged image with a referrer, a tagged
/// index over a child pushed by digest only (all kept by `delete_untagged`), and an untagged
/// image with its own referrer and a layer no other manifest uses (all to go).
pub(crate) struct Untagged {
    pub tagged: String,
    pub child_d: String,
    pub kept_ref: String,
    pub untagged_d: String,
    pub gone_ref: String,
    pub lonely_layer: String,
}

impl Untagged {
    /// After a collection that printed `out`: the untagged image, its referrer and its layer
    /// went; everything a tag reaches is there and pulls whole.
    pub(crate) fn check_collected(&self, out: &str, c: &mut Client) {
        for d in [&self.untagged_d, &self.gone_ref] {
            assert!(out.contains(&format!("deleted manifest r@{d}")), "{out}");
        }
        let lonely = &self.lonely_layer;
        assert!(out.contains(&format!("deleted blob {lonely}")), "{out}");
        assert!(out.contains("deleted: 2 manifests"), "{out}");
        for d in [&self.tagged, &self.child_d, &self.kept_ref] {
            let r = c.request(
                "HEAD",
                &format!("/v2/r/manifests/{d}"),
                &[("Accept", OCI_MANIFEST)],
                b"",
            );
            assert_eq!(r.status, 200, "kept manifest {d}");
        }
        pull_verified(c, "r", "v1");
        pull_verified(c, "r", &self.child_d);
        let refs = c.get(&format!("/v2/r/referrers/{}", self.tagged)).json();
        assert_eq!(refs["manifests"][0]["digest"], self.kept_ref.as_str());
        let gone = format!("/v2/r/manifests/{}", self.untagged_d);
        assert_eq!(c.get(&gone).status, 404);
    }
}

pub(crate) fn push_untagged(c: &mut Client) -> Untagged {
    let tagged = push_image(c, "r", "v1", b"tagged layer");
    // An index (tagged) over a child pushed by digest only.
    let cfg = br#"{"architecture":"arm64","os":"linux"}"#;
    let cd = push_blob(c, "r", cfg);
    let child_layer = push_blob(c, "r", b"child layer");
    let child = image_manifest(&cd, cfg.len(), &[(&child_layer, 11)]);
    let child_d = put_manifest(c, "r", &sha256(&child), &child, OCI_MANIFEST);
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": child_d, "size": child.len(),
                        "platform": {"architecture": "arm64", "os": "linux"}}]
    }))
    .unwrap();
    put_manifest(c, "r", "multi", &index, OCI_INDEX);
    let referrer = |subject: &str, c: &mut Client| {
        let empty = push_blob(c, "r", b"{}");
        let m = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/x.sig",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
            "layers": [{"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2}],
            "subject": {"mediaType": OCI_MANIFEST, "digest": subject, "size": 1}
        }))
        .unwrap();
        put_manifest(c, "r", &sha256(&m), &m, OCI_MANIFEST)
    };
    let kept_ref = referrer(&tagged, c);
    let lonely_layer = push_blob(c, "r", b"untagged layer");
    let untagged = image_manifest(&cd, cfg.len(), &[(&lonely_layer, 14)]);
    let untagged_d = put_manifest(c, "r", &sha256(&untagged), &untagged, OCI_MANIFEST);
    let gone_ref = referrer(&untagged_d, c);
    Untagged {
        tagged,
        child_d,
        kept_ref,
        untagged_d,
        gone_ref,
        lonely_layer,
    }
}

fn delete_untagged_keeps_what_tags_reach_through_indexes_and_referrers(driver: &str) {
    let s = Server::start_with(driver, "[gc]\ndelete_untagged = true\n");
    let mut c = s.client();
    let pushed = push_untagged(&mut c);
    age_everything(&s.root(), Duration::from_secs(7200));

    let (ok, out) = s.run_wharf(&["gc"]);
    assert!(ok, "{out}");
    pushed.check_collected(&out, &mut c);
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

/// Run `wharf gc` held `pause_ms` between its mark phase and its deletions (the test-only
/// `WHARF_FAULT_DELAY_MARKED`), and `push_after_ms` into it tag `ix/app:v1` an index naming the
/// manifest `child`: whether the collection succeeded, and what it printed.
pub(crate) fn index_pushed_during_gc(
    s: &Server,
    c: &mut Client,
    child: &[u8],
    pause_ms: u64,
    push_after_ms: u64,
) -> (bool, String) {
    let gc = s
        .wharf_command(&["gc"])
        .env("WHARF_FAULT_HOOKS", "1")
        .env("WHARF_FAULT_DELAY_MARKED", pause_ms.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(push_after_ms));
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(child), "size": child.len(),
                        "platform": {"architecture": "amd64", "os": "linux"}}]
    }))
    .unwrap();
    put_manifest(c, "ix/app", "v1", &index, OCI_INDEX);
    let out = gc.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// An index pushed while a collection is deleting its untagged child keeps the child and its
/// blobs: the push refreshes the child's revision link, so the collector's second look finds it
/// young and keeps it with what it references. A test-only delay holds `wharf gc` for 3 s between
/// its mark phase (everything aged two hours, the child untagged, the index not pushed yet) and
/// its deletions; the index is pushed 1.5 s into that pause.
fn an_index_pushed_while_its_untagged_child_is_collected_keeps_it(driver: &str) {
    let s = Server::start_with(driver, "[gc]\ndelete_untagged = true\n");
    let mut c = s.client();
    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
    let cd = push_blob(&mut c, "ix/app", cfg);
    let layer = push_blob(&mut c, "ix/app", b"the child's only layer");
    let child = image_manifest(&cd, cfg.len(), &[(&layer, 22)]);
    let child_d = put_manifest(&mut c, "ix/app", &sha256(&child), &child, OCI_MANIFEST);
    age_everything(&s.root(), Duration::from_secs(7200));
    let (ok, text) = index_pushed_during_gc(&s, &mut c, &child, 3000, 1500);
    assert!(ok, "{text}");
    assert!(text.contains("deleted: 0 manifests, 0 blobs"), "{text}");
    for gone in [
        format!("manifest ix/app@{child_d}"),
        format!("blob {layer}"),
    ] {
        assert!(
            !text.contains(&gone),
            "{gone} went under the index:\n{text}"
        );
    }
    pull_verified(&mut c, "ix/app", &child_d);
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

fn fsck_reports_damage_and_repair_quarantines_it(driver: &str) {
    let s = Server::start(driver);
    let mut c = s.client();
    let good = push_image(&mut c, "ok", "v1", b"intact layer");
    let layer = b"layer that will rot".to_vec();
    let m1 = push_image(&mut c, "bad", "rot", &layer);
    let m2 = push_image(&mut c, "bad", "lost", b"layer that will vanish");
    let blob_file = |d: &str| {
        let (alg, hex) = d.split_once(':').unwrap();
        s.root().join("blobs").join(alg).join(&hex[..2]).join(hex)
    };
    // Bit rot in one layer, a deleted layer, and a tag pointing at a manifest that is not there.
    let rotten = sha256(&layer);
    std::fs::write(blob_file(&rotten), b"layer that will rOt").unwrap();
    let vanished = sha256(b"layer that will vanish");
    std::fs::remove_file(blob_file(&vanished)).unwrap();
    let ghost = sha256(b"no such manifest");
    let tags = s.root().join("repositories/bad/_manifests/tags");
    std::fs::write(tags.join("ghost"), &ghost).unwrap();

    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(!ok, "fsck passed a damaged store: {out}");
    assert!(out.contains(&format!("blob {rotten} is corrupt")), "{out}");
    assert!(
        out.contains(&format!("references blob {vanished}, which is missing")),
        "{out}"
    );
    assert!(
        out.contains(&format!("tag bad:ghost points at manifest {ghost}")),
        "{out}"
    );
    assert!(
        out.contains(&format!("repository bad links blob {vanished}")),
        "{out}"
    );
    assert!(!out.contains(&good) && !out.contains("ok@"), "{out}");
    // Without --repair nothing moved: the rotten blob is still there.
    assert!(blob_file(&rotten).exists());

    let (ok, out) = s.run_wharf(&["fsck", "--repair"]);
    // The missing layer cannot be repaired (the image must be pushed again): still failing.
    assert!(!ok, "{out}");
    assert!(out.contains("moved to"), "{out}");
    assert!(!blob_file(&rotten).exists());
    let quarantined = paths_under(&s.root().join("quarantine"));
    assert!(
        quarantined
            .iter()
            .any(|p| p.ends_with(rotten.split_once(':').unwrap().1)),
        "{quarantined:?}"
    );
    // Corrupt data is no longer served; the broken tag is gone; healthy images are untouched.
    assert_eq!(c.get(&format!("/v2/bad/blobs/{rotten}")).status, 404);
    assert_eq!(c.get("/v2/bad/manifests/ghost").status, 404);
    pull_verified(&mut c, "ok", "v1");
    let (_, out) = s.run_wharf(&["fsck"]);
    assert!(
        !out.contains("is corrupt") && !out.contains("ghost"),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{m1} (tagged rot) references blob {rotten}, which is missing"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!("{m2} (tagged lost) references blob {vanished}")),
        "{out}"
    );
}

/// `wharf gc -c <cfg>` run back to back until `stop_at` (another collector holding the lock is
/// the only failure allowed); the number of runs and of "deleted blob" lines they printed.
pub(crate) fn gc_in_a_loop(
    cfg: std::path::PathBuf,
    stop_at: Instant,
) -> std::thread::JoinHandle<Collected> {
    std::thread::spawn(move || {
        let mut done = Collected::default();
        while Instant::now() < stop_at {
            let out = Command::new(crate::common::wharf_bin())
                .args(["gc", "-c"])
                .arg(&cfg)
                .output()
                .unwrap();
            let text = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success()
                    || text.contains("another garbage collection is running")
                    || text.contains("gc stopped before the sweep finished"),
                "wharf gc failed: {text}"
            );
            let stdout = String::from_utf8_lossy(&out.stdout);
            done.blobs += stdout.matches("deleted blob").count();
            done.lines.extend(
                stdout
                    .lines()
                    .filter(|l| l.starts_with("deleted"))
                    .map(String::from),
            );
            done.manifests += stdout.matches("deleted manifest").count();
            done.runs += 1;
        }
        done
    })
}

/// What `gc_in_a_loop` did: its runs, and the blobs and manifests they deleted.
#[derive(Default)]
pub(crate) struct Collected {
    pub runs: usize,
    pub blobs: usize,
    pub manifests: usize,
    /// What they deleted, a line each (for failure messages).
    pub lines: Vec<String>,
}

/// When a pushing client was last told each blob of its next manifest exists: the start of the
/// request that told it (a HEAD answered 200, a push answered 201).
///
/// A collector deletes a blob only once it has gone unheld for the grace period (docs/gc.md): on
/// the filesystem a hold refreshes the blob's mtime when it is older than a quarter of the grace,
/// so a told blob stays for at least ¾ of it; on S3 each hold is written anew, so for all of it.
/// A manifest PUT that finds one of its blobs gone within that bound of being told has lost it —
/// the failure these tests look for. One that finds it gone later is a client slower than the
/// grace period (the tests' grace is 2 s, and a loaded CI machine can take longer between a push
/// and its manifest): the collector was right, and the client pushes again, as one would.
#[derive(Default)]
pub(crate) struct Told(HashMap<String, Instant>);

impl Told {
    /// Ask `c` whether `blob` is in `repo` (HEAD) and push it if not; its digest.
    pub fn head_or_push(&mut self, c: &mut Client, repo: &str, blob: &[u8]) -> String {
        let d = sha256(blob);
        let at = Instant::now();
        if c.request("HEAD", &format!("/v2/{repo}/blobs/{d}"), &[], b"")
            .status
            == 200
        {
            self.0.insert(d.clone(), at);
            return d;
        }
        self.push(c, repo, blob)
    }

    /// Push `blob` to `repo`; its digest.
    pub fn push(&mut self, c: &mut Client, repo: &str, blob: &[u8]) -> String {
        let at = Instant::now();
        let d = push_blob(c, repo, blob);
        self.0.insert(d.clone(), at);
        d
    }

    /// Whether a manifest PUT refused just now with `body` names a blob this client was told
    /// about at least `bound` ago (so a collector may rightly have deleted it).
    pub fn outlived(&self, body: &str, bound: Duration) -> bool {
        body.contains("MANIFEST_BLOB_UNKNOWN")
            && named_digest(body)
                .and_then(|d| self.0.get(d))
                .is_some_and(|at| at.elapsed() >= bound)
    }
}

/// The digest a failure message names (`blob sha256:… is not in repository <repo>`).
pub(crate) fn named_digest(e: &str) -> Option<&str> {
    let at = e.find("sha256:")?;
    e.get(at..at + 7 + 64)
}

/// Many clients push images sharing layers from a pool (checking with HEAD and skipping what
/// exists, as Docker does, then taking a while before the manifest), overwrite and delete tags,
/// while the server collects every second and `wharf gc` runs in a loop too. With a 2-second grace
/// and a pool of 40 layers, layers keep dropping out of every manifest and crossing the grace
/// period, so the collector keeps deleting blobs that clients have just been told exist. No
/// manifest PUT may find a blob gone that the client was told about within ¾ of the grace
/// (`Told`); a slower client pushes again.
fn gc_in_a_loop_never_loses_a_pushed_blob(driver: &str) {
    let s = Server::start_with(
        driver,
        "[gc]\ninterval = \"1s\"\ngrace = \"2s\"\ndelete_untagged = true\n",
    );
    let stop_at = Instant::now() + Duration::from_secs(10);
    let collector = gc_in_a_loop(s.config_file(), stop_at);
    let addr = s.addr;
    let pushers: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let mut c = Client::connect(addr);
                let repo = format!("team{}/app", t % 3);
                let (mut pushed, mut slow) = (0u32, 0u32);
                let mut i = 0u32;
                while Instant::now() < stop_at {
                    i += 1;
                    let k = (t * 7 + i as usize * 13) % 40;
                    let shared = vec![b'a' + (k % 26) as u8; 3000 + k];
                    let mut told = Told::default();
                    let d = told.head_or_push(&mut c, &repo, &shared);
                    let own = format!("layer {t}/{i}").into_bytes();
                    let od = told.push(&mut c, &repo, &own);
                    let cfg = br#"{"architecture":"amd64","os":"linux"}"#;
                    let cd = told.head_or_push(&mut c, &repo, cfg);
                    let refs = [(d.as_str(), shared.len()), (od.as_str(), own.len())];
                    let m = image_manifest(&cd, cfg.len(), &refs);
                    // A client uploading its other layers: the window a collector could strike in.
                    std::thread::sleep(Duration::from_millis(150));
                    // One tag per client, overwritten: older manifests become untagged garbage.
                    let tag = format!("t{t}");
                    let r = c.request(
                        "PUT",
                        &format!("/v2/{repo}/manifests/{tag}"),
                        &[("Content-Type", OCI_MANIFEST)],
                        &m,
                    );
                    // A hold keeps a told blob for ¾ of the 2-second grace (`Told`).
                    if r.status != 201 && told.outlived(&r.body_text(), Duration::from_millis(1500))
                    {
                        slow += 1;
                        continue;
                    }
                    assert_eq!(
                        r.status,
                        201,
                        "manifest PUT failed while gc ran: {}",
                        String::from_utf8_lossy(&r.body)
                    );
                    pushed += 1;
                    if i.is_multiple_of(5) {
                        let d = sha256(&m);
                        let r = c.request("DELETE", &format!("/v2/{repo}/manifests/{d}"), &[], b"");
                        assert_eq!(r.status, 202);
                    }
                }
                (pushed, slow)
            })
        })
        .collect();
    let (pushed, slow) = pushers
        .into_iter()
        .map(|p| p.join().unwrap())
        .fold((0, 0), |(p, s), (p1, s1)| (p + p1, s + s1));
    let runs = collector.join().unwrap().runs;
    assert!(
        pushed > 100 && runs > 2,
        "pushed {pushed} ({slow} more outlived the grace period), gc runs {runs}"
    );

    // Every tag still points at a whole image.
    let mut c = s.client();
    let mut referenced = BTreeSet::new();
    for t in 0..3 {
        let repo = format!("team{t}/app");
        let tags = c.get(&format!("/v2/{repo}/tags/list")).json();
        for tag in tags["tags"].as_array().unwrap() {
            referenced.extend(pull_verified(&mut c, &repo, tag.as_str().unwrap()));
        }
    }
    // Past the grace period, what no tag reaches is reclaimed: exactly the tagged images remain.
    // (Everything is made to look a minute old rather than waited for.)
    age_everything(&s.root(), Duration::from_secs(60));
    // The server's own collector runs every second and holds gc.lock meanwhile: retry while the
    // lock is the only reason (bounded), any other failure fails the test.
    let mut attempts = 0;
    loop {
        let (ok, out) = s.run_wharf(&["gc"]);
        if ok {
            break;
        }
        attempts += 1;
        assert!(
            out.contains("another garbage collection is running") && attempts < 50,
            "{out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(stored_blobs(&s.root()), referenced);
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

/// Sessions that never received data live in the server only; the server's own collector expires
/// them after the grace period like stale session files.
fn server_gc_expires_sessions_without_data(driver: &str) {
    let s = Server::start_with(driver, "[gc]\ninterval = \"1s\"\ngrace = \"1s\"\n");
    let mut c = s.client();
    let post = |c: &mut Client| start_upload(c, "idle");
    let old = post(&mut c);
    assert_eq!(c.get(&old).status, 204);
    let mut expired = false;
    for _ in 0..150 {
        std::thread::sleep(Duration::from_millis(100));
        let r = c.get(&old);
        if r.status == 404 {
            assert_eq!(r.error_code(), "BLOB_UPLOAD_UNKNOWN");
            expired = true;
            break;
        }
        assert_eq!(r.status, 204);
    }
    assert!(
        expired,
        "a session without data outlived 15 s with grace = 1s"
    );
    let fresh = post(&mut c);
    assert_eq!(c.get(&fresh).status, 204);
    assert_eq!(c.request("PATCH", &fresh, &[], b"data").status, 202);
}

fn gc_and_fsck_show_progress_only_on_a_terminal(driver: &str) {
    let s = Server::start(driver);
    push_image(&mut s.client(), "p", "v1", b"layer");
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok && !out.contains("hashing blobs"), "{out}");
    // `script` gives the command a pseudo-terminal (util-linux, in every Debian).
    for (cmd, progress) in [
        ("fsck", "hashing blobs: 3/3 (100%)"),
        ("gc --dry-run", "sweeping blobs: 3/3 (100%)"),
    ] {
        let line = format!(
            "{} {cmd} -c {}",
            crate::common::wharf_bin(),
            s.config_file().display()
        );
        let out = Command::new("script")
            .args(["-qec", &line, "/dev/null"])
            .output()
            .expect("script (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{text}");
        assert!(text.contains(progress), "{cmd}: {text:?}");
    }
}

on_both_drivers!(
    gc_removes_only_unreferenced_data_past_the_grace_period,
    delete_untagged_keeps_what_tags_reach_through_indexes_and_referrers,
    an_index_pushed_while_its_untagged_child_is_collected_keeps_it,
    fsck_reports_damage_and_repair_quarantines_it,
    gc_in_a_loop_never_loses_a_pushed_blob,
    server_gc_expires_sessions_without_data,
    gc_and_fsck_show_progress_only_on_a_terminal,
    links_are_names_of_the_blob_file_and_gc_repoints_stale_ones,
    a_blob_at_the_filesystems_link_limit_still_links,
);
