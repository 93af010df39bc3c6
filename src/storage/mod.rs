//! Filesystem storage: the on-disk layout, atomic commits (`fsio`), blob store and links (`blobs`),
//! upload sessions that survive connections and restarts (`uploads`), manifests, tags and referrers
//! (`manifests`). Nothing here knows HTTP.

pub mod blobs;
mod cached;
pub mod fsck;
mod fsio;
pub mod gc;
pub mod manifests;
pub mod uploads;
mod writer;

use std::io;
use std::path::{Path, PathBuf};

use crate::config::GcConfig;
use crate::oci::{Digest, RepoName};

pub use blobs::{BlobContent, BlobRead};
pub use manifests::TagExpect;
pub use uploads::{SessionLimits, UploadLease};
pub use writer::BlobWriter;

/// Storage failures, mapped to OCI errors by the registry.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("blob unknown")]
    BlobUnknown,
    #[error("upload unknown")]
    UploadUnknown,
    /// A cap on open upload sessions (`per_client`: the client's own) is reached.
    #[error("too many open upload sessions")]
    TooManySessions { per_client: bool, limit: usize },
    #[error("upload is in use by another request")]
    UploadBusy { offset: u64 },
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("repository unknown")]
    NameUnknown,
    #[error("content does not match digest {expected}")]
    DigestMismatch { expected: Digest },
    /// A manifest delete found a tag pointing at the manifest that was not among the tags decided
    /// for it (moved there meanwhile); nothing was deleted.
    #[error("tag {0} now points at the manifest")]
    TagMoved(String),
    /// A conditional tag update found the tag elsewhere (`current`; `None`: absent); nothing
    /// was changed.
    #[error("{target} does not satisfy the precondition")]
    TagPrecondition {
        target: String,
        current: Option<Digest>,
    },
    #[error("storage i/o: {0}")]
    Io(#[from] io::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

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

/// At most `n` of the sorted `items` after `last`, and whether more follow.
pub(crate) fn page(items: Vec<String>, last: Option<&str>, n: usize) -> (Vec<String>, bool) {
    let start = last.map_or(0, |l| items.partition_point(|i| i.as_str() <= l));
    let mut rest: Vec<String> = items.into_iter().skip(start).collect();
    let more = rest.len() > n;
    rest.truncate(n);
    (rest, more)
}

/// The filesystem store rooted at `root`.
pub struct Storage {
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

impl Storage {
    /// Open (creating the top-level folders of) a store at `root`.
    pub fn open(root: &Path) -> io::Result<Storage> {
        for dir in ["blobs", "repositories", "uploads"] {
            std::fs::create_dir_all(root.join(dir))?;
        }
        // Probe writability now rather than on the first push.
        let probe = root.join("uploads").join(".probe");
        std::fs::write(&probe, b"")?;
        std::fs::remove_file(&probe)?;
        Ok(Storage {
            root: root.to_path_buf(),
            uploads: uploads::Table::new(uploads::SessionLimits::default()),
            ready: Ready::default(),
            born: std::time::Instant::now(),
            tag_locks: (0..TAG_LOCKS).map(|_| std::sync::Mutex::new(())).collect(),
            hold_refresh: GcConfig::default().grace / 4,
        })
    }

    /// Upload sessions open in this process.
    pub fn open_uploads(&self) -> usize {
        self.uploads.len()
    }

    /// Whether a file can be created and removed under the root (`/readyz`): a probe on the
    /// blocking pool at most once per `READY_TTL`; meanwhile (and while a probe runs) the last
    /// answer.
    pub async fn writable(self: &std::sync::Arc<Self>) -> bool {
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
    pub fn with_session_limits(mut self, limits: uploads::SessionLimits) -> Storage {
        self.uploads = uploads::Table::new(limits);
        self
    }

    /// The upload-session caps and idle timeout in force.
    pub fn session_limits(&self) -> uploads::SessionLimits {
        self.uploads.limits()
    }

    /// Use the configured `gc.grace` (held blobs stay younger than a quarter of it).
    pub fn with_grace(mut self, grace: std::time::Duration) -> Storage {
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

/// Where `wharf gc` and `wharf fsck` report to: a line per removal or finding, and progress.
/// Any `FnMut(String)` is a reporter that ignores progress.
pub trait Report {
    fn line(&mut self, line: String);
    /// `done` of `total` items of `phase` (e.g. "hashing blobs").
    fn progress(&mut self, _phase: &str, _done: u64, _total: u64) {}
}

impl<F: FnMut(String)> Report for F {
    fn line(&mut self, line: String) {
        self(line)
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

/// A fresh random identifier in UUID form (used for upload sessions and temp files).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_round_trip_and_reject_tricks() {
        // Route accepts exactly what this makes (`action::UploadId` has the rejected shapes).
        let id = random_id();
        assert!(id.parse::<crate::action::UploadId>().is_ok(), "{id}");
        assert_ne!(id, random_id());
    }
}
