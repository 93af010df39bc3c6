//! The filesystem backend: the on-disk layout, atomic commits (`fsio`), blob store and links
//! (`blobs`), upload sessions that survive connections and restarts (`uploads`), manifests, tags
//! and referrers (`manifests`), garbage collection (`gc`) and `fsck`. Reached only through
//! `storage::Storage`.

pub(super) mod blobs;
mod cached;
mod direct;
mod evict;
pub(super) mod fsck;
mod fsio;
pub(super) mod gc;
pub(super) mod manifests;
pub(super) mod uploads;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use crate::config::GcConfig;
use crate::oci::{Digest, RepoName};

use super::{
    BlobContent, BlobRead, FsckReport, GcOptions, GcReport, Problem, Report, Result, StoreError,
    StoredManifest, TagExpect, page, random_id,
};
pub use direct::{direct_bytes, set_direct_writes};
pub use uploads::SessionLimits;
pub(crate) use uploads::UploadLease;
pub(crate) use writer::FileWriter;

const TAG_LOCKS: usize = 64;
/// How long a `/readyz` probe's answer is reused.
const READY_TTL_MS: u64 = 1000;

/// The cached answer of the writability probe.
#[derive(Default)]
struct Ready {
    ok: std::sync::atomic::AtomicBool,
    /// Milliseconds after `born` (plus one) of the last probe; 0 = never.
    probed_ms: std::sync::atomic::AtomicU64,
    probing: std::sync::atomic::AtomicBool,
}

/// The filesystem store rooted at `root`.
pub(super) struct Filesystem {
    root: PathBuf,
    uploads: uploads::Table,
    /// Held (on blocking threads only) from a tag update's check to its rename or unlink, and
    /// from a manifest delete's check of its tags to their removal; striped by repository.
    tag_locks: Box<[std::sync::Mutex<()>]>,
    /// The last `/readyz` probe.
    ready: Ready,
    born: std::time::Instant,
    /// A held blob's mtime is refreshed when older than this (a quarter of `gc.grace`).
    hold_refresh: std::time::Duration,
}

impl Filesystem {
    /// Open (creating the top-level folders of) a store at `root`.
    pub(super) fn open(root: &Path) -> io::Result<Filesystem> {
        for dir in ["blobs", "repositories", "uploads"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        // Probe writability now rather than on the first push.
        let probe = root.join("uploads").join(".probe");
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)?;
        Ok(Filesystem {
            root: root.to_path_buf(),
            uploads: uploads::Table::new(uploads::SessionLimits::default()),
            ready: Ready::default(),
            born: std::time::Instant::now(),
            tag_locks: (0..TAG_LOCKS).map(|_| std::sync::Mutex::new(())).collect(),
            hold_refresh: GcConfig::default().grace / 4,
        })
    }

    /// Upload sessions open in this process.
    pub(super) fn open_uploads(&self) -> usize {
        self.uploads.len()
    }

    /// Whether a file can be created and removed under the root (`/readyz`): a probe on the
    /// blocking pool at most once per `READY_TTL`; meanwhile (and while a probe runs) the last
    /// answer.
    pub(super) async fn writable(self: &std::sync::Arc<Self>) -> bool {
        use std::sync::atomic::Ordering::Relaxed;
        let now = self.born.elapsed().as_millis() as u64 + 1;
        let last = self.ready.probed_ms.load(Relaxed);
        let cached = self.ready.ok.load(Relaxed);
        if (last != 0 && now - last < READY_TTL_MS) || self.ready.probing.swap(true, Relaxed) {
            return cached;
        }
        let dir = self.uploads_dir();
        let ok = fsio::off(move || {
            let probe = dir.join(format!(".ready-{}", random_id()));
            Ok(std::fs::write(&probe, b"").is_ok() && std::fs::remove_file(&probe).is_ok())
        })
        .await
        .unwrap_or(false);
        self.ready.ok.store(ok, Relaxed);
        self.ready.probed_ms.store(now, Relaxed);
        self.ready.probing.store(false, Relaxed);
        ok
    }

    /// Use the configured upload-session caps and idle timeout.
    pub(super) fn with_session_limits(mut self, limits: uploads::SessionLimits) -> Filesystem {
        self.uploads = uploads::Table::new(limits);
        self
    }

    /// The upload-session caps and idle timeout in force.
    pub(super) fn session_limits(&self) -> uploads::SessionLimits {
        self.uploads.limits()
    }

    /// Use the configured `gc.grace` (held blobs stay younger than a quarter of it).
    pub(super) fn with_grace(mut self, grace: std::time::Duration) -> Filesystem {
        self.hold_refresh = grace / 4;
        self
    }

    fn tag_lock(&self, repo: &RepoName) -> &std::sync::Mutex<()> {
        let h = repo.as_str().bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        &self.tag_locks[h % TAG_LOCKS]
    }

    /// Where the collector parks a blob it is about to delete (so a racing hold can take it back).
    fn gc_trash_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join(gc::TRASH)
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&hex[..2])
            .join(hex)
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        self.root.join("repositories").join(repo.as_str())
    }

    fn layer_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn revision_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests")
            .join("revisions")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn tags_dir(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join("_manifests").join("tags")
    }

    fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
    }

    fn uploads_dir(&self) -> PathBuf {
        self.root.join("uploads")
    }
}

/// How many blob files the store holds (a directory walk; for progress totals).
fn count_blob_files(root: &Path) -> u64 {
    let mut n = 0;
    for (_, alg) in dir_entries(&root.join("blobs")).unwrap_or_default() {
        for (_, prefix) in dir_entries(&alg).unwrap_or_default() {
            n += dir_entries(&prefix).map_or(0, |e| e.len() as u64);
        }
    }
    n
}

impl Filesystem {
    /// Bytes and number of the files under `blobs/` (unreadable entries skipped).
    pub(super) fn usage(&self) -> (u64, u64) {
        let (mut bytes, mut blobs) = (0u64, 0u64);
        let dirs = |p: &Path| {
            dir_entries(p)
                .unwrap_or_default()
                .into_iter()
                .map(|(_, p)| p)
        };
        for alg in dirs(&self.root.join("blobs")) {
            for prefix in dirs(&alg) {
                for blob in dirs(&prefix) {
                    if let Ok(m) = std::fs::metadata(&blob) {
                        bytes += m.len();
                        blobs += 1;
                    }
                }
            }
        }
        (bytes, blobs)
    }
}

/// The entries of `dir` as (name, path); empty if `dir` does not exist.
pub(crate) fn dir_entries(dir: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .map(|e| {
                let e = e?;
                Ok((e.file_name().to_string_lossy().into_owned(), e.path()))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
