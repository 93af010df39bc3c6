//! The storage interface: everything the registry, the server and `wharf gc`/`wharf fsck` ask of
//! storage, whatever holds the bytes. `Storage` dispatches to one backend: the filesystem (`fs`,
//! the embedded default) today; an object store is a second variant of `Backend` that fits
//! without touching a handler. A blob read yields bytes, a local file (plain HTTP keeps
//! sendfile), a stream or a redirect URL; blob and upload writes go through the backend's own
//! writer (`BlobWriter`, `UploadLease`); listings take a cursor (`last`) and a page size; tag
//! updates and deletes are compare-and-swap operations (`TagExpect`); garbage collection and
//! fsck run through here too. Nothing here knows HTTP.

mod evict;
mod fs;
pub mod s3;
mod writers;

use std::io;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::net::stream::OpenRegion;
use crate::oci::manifest::Parsed;
use crate::oci::{Algorithm, Digest, Reference, RepoName, Tag};

pub use fs::SessionLimits;
pub use fs::{direct_bytes as direct_write_bytes, set_direct_writes};
use writers::Lease;
pub use writers::{BlobWriter, UploadLease};

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
    /// The object store cannot be reached or answers with a server error; nothing was changed
    /// that a client was told about (retry later).
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    #[error("storage i/o: {0}")]
    Io(io::Error),
}

/// Carried inside an `io::Error` (by blob writers, whose interface is `io`): the object store is
/// unavailable, which the registry answers with 503 rather than 500.
#[derive(Debug, thiserror::Error)]
#[error("object store unavailable: {0}")]
pub struct Unavailable(pub String);

impl Unavailable {
    /// An `io::Error` carrying this.
    pub fn io(why: impl std::fmt::Display) -> io::Error {
        io::Error::other(Unavailable(why.to_string()))
    }

    /// Whether `e` carries an `Unavailable`.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<Unavailable>())
    }
}

impl From<io::Error> for StoreError {
    fn from(e: io::Error) -> StoreError {
        if Unavailable::is(&e) {
            StoreError::Unavailable(e.to_string())
        } else {
            StoreError::Io(e)
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// A blob's content as a backend hands it out.
pub enum BlobContent {
    /// Read whole (small blobs).
    Bytes(Vec<u8>),
    /// An open local file: sent with `sendfile` on plain HTTP.
    File(std::fs::File),
    /// Bytes from elsewhere (an object store): the region the request wants is opened once the
    /// range is known; every byte is checked by the backend before it is given out.
    Stream(OpenRegion),
    /// A URL the client fetches the content from itself (a presigned object-store URL): the
    /// registry answers `307` with it as `Location`.
    Redirect(String),
}

/// A blob to serve: its size and content.
pub struct BlobRead {
    pub size: u64,
    pub content: BlobContent,
}

/// A manifest ready to be served.
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Vec<u8>,
}

/// What a tag update expects the tag to point at now (HTTP `If-Match` / `If-None-Match` on a
/// tag). The default expects nothing: an unconditional update.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TagExpect {
    /// The tag must exist and, unless the list is empty (`If-Match: *`), point at one of these
    /// (entity tags as sent, unquoted; anything that is not a digest never matches).
    pub one_of: Option<Vec<String>>,
    /// The tag must not point at any of these; an empty list (`If-None-Match: *`): must not exist.
    pub none_of: Option<Vec<String>>,
}

impl TagExpect {
    /// Whether a tag pointing at `current` (`None`: absent) satisfies the expectation.
    pub fn holds(&self, current: Option<&Digest>) -> bool {
        let cur = current.map(Digest::to_string);
        let listed = |l: &[String]| cur.as_ref().is_some_and(|c| l.iter().any(|x| x == c));
        let one_of = match &self.one_of {
            None => true,
            Some(l) => cur.is_some() && (l.is_empty() || listed(l)),
        };
        let none_of = match &self.none_of {
            None => true,
            Some(l) if l.is_empty() => cur.is_none(),
            Some(l) => !listed(l),
        };
        one_of && none_of
    }

    /// Whether this expects anything at all.
    pub fn is_conditional(&self) -> bool {
        self.one_of.is_some() || self.none_of.is_some()
    }
}

/// What to collect.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Nothing younger than this is removed.
    pub grace: Duration,
    /// Pull-through caches with a size budget: (repository prefix, bytes). Over it, the images
    /// under the prefix pulled least recently are evicted (`evict`).
    pub budgets: Vec<(String, u64)>,
    /// Also remove manifests that no tag reaches.
    pub delete_untagged: bool,
    /// Only report what would go.
    pub dry_run: bool,
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Debug, Default)]
pub struct GcReport {
    /// `repository@digest` of each manifest removed.
    pub manifests: Vec<String>,
    /// `repository@digest` of each cached image evicted under a pull-through cache's budget.
    pub evicted: Vec<String>,
    /// Each blob removed with its size.
    pub blobs: Vec<(Digest, u64)>,
    /// Bytes of the removed blobs.
    pub bytes: u64,
    /// Unreferenced blobs kept because they are younger than the grace period.
    pub young: usize,
    /// Upload sessions and temp files expired.
    pub uploads: usize,
    /// Repository links to blobs that are gone, removed.
    pub links: usize,
    /// The run stopped early: it took longer than half the grace period, after which removing
    /// more could race a hold (the next run continues).
    pub stopped_early: bool,
}

/// One finding.
#[derive(Debug)]
pub struct Problem {
    pub what: String,
    /// Where it was moved to quarantine (with `repair`), as the backend names it.
    pub quarantined: Option<String>,
}

/// What fsck saw.
#[derive(Debug, Default)]
pub struct FsckReport {
    pub blobs: usize,
    pub bytes: u64,
    pub manifests: usize,
    pub tags: usize,
    pub problems: Vec<Problem>,
}

impl FsckReport {
    /// Problems not moved to quarantine.
    pub fn unresolved(&self) -> usize {
        self.problems
            .iter()
            .filter(|p| p.quarantined.is_none())
            .count()
    }
}

/// The backends. Each variant's methods have the same names and meaning as `Storage`'s.
enum Backend {
    Filesystem(Arc<fs::Filesystem>),
    Object(Arc<s3::ObjectBackend>),
}

/// The storage the registry uses: one backend behind one set of async operations.
pub struct Storage {
    backend: Backend,
}

/// `dispatch!(self, b => b.op(args))`: run the operation on whichever backend is configured.
macro_rules! dispatch {
    ($self:ident, $b:ident => $e:expr) => {
        match &$self.backend {
            Backend::Filesystem($b) => $e,
            Backend::Object($b) => $e,
        }
    };
}

impl Storage {
    /// The filesystem backend rooted at `root` (creating its top-level folders), with upload-session
    /// caps and the `gc.grace` its holds keep blobs young for.
    pub fn filesystem(root: &Path, limits: SessionLimits, grace: Duration) -> io::Result<Storage> {
        let fs = fs::Filesystem::open(root)?
            .with_session_limits(limits)
            .with_grace(grace);
        Ok(Storage {
            backend: Backend::Filesystem(Arc::new(fs)),
        })
    }

    /// The object-store backend on the bucket `store` reaches (startup: the caller probes it).
    pub fn object_store(store: s3::api::ObjectStore, opts: s3::Options) -> Storage {
        Storage {
            backend: Backend::Object(Arc::new(s3::ObjectBackend::new(store, opts))),
        }
    }

    // ----- blobs -----

    /// Size of a blob that `repo` may serve, or `None`; never reads the content. A blob reported
    /// present is held: the client may rely on it for a manifest (docs/gc.md).
    pub async fn blob_size(&self, repo: &RepoName, d: &Digest) -> Result<Option<u64>> {
        dispatch!(self, b => b.blob_size(repo, d).await)
    }

    /// Open a blob that `repo` may serve (held like `blob_size`); blobs of at most `inline` bytes
    /// may come back read whole.
    pub async fn open_blob(&self, repo: &RepoName, d: &Digest, inline: u64) -> Result<BlobRead> {
        dispatch!(self, b => b.open_blob(repo, d, inline).await)
    }

    /// Remove `repo`'s link to a blob (the data stays until garbage collection).
    pub async fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        dispatch!(self, b => b.unlink_blob(repo, d).await)
    }

    /// Cross-repository mount: link `d` into `repo` if `from` serves it (or, without `from`, if
    /// the store holds it). Returns whether the mount happened.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool> {
        dispatch!(self, b => b.mount_blob(repo, d, from).await)
    }

    /// A writer for a monolithic upload (POST or PUT with the whole body).
    pub async fn temp_writer(&self, alg: Algorithm) -> Result<BlobWriter> {
        dispatch!(self, b => b.temp_writer(alg).await)
    }

    /// Verify a monolithic upload against `expected` and store it, linked into `repo`; returns
    /// its size. On a mismatch nothing is stored.
    pub async fn finish_writer(
        &self,
        w: BlobWriter,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        dispatch!(self, b => b.finish_writer(w, expected, repo).await)
    }

    /// Drop a monolithic upload that failed.
    pub async fn discard_writer(&self, w: BlobWriter) {
        dispatch!(self, b => b.discard_writer(w).await)
    }

    // ----- upload sessions -----

    /// Open an upload session for `repo` (counted against the caps for `client`); its id.
    pub async fn start_upload(
        &self,
        repo: &RepoName,
        alg: Algorithm,
        client: IpAddr,
    ) -> Result<String> {
        dispatch!(self, b => b.start_upload(repo, alg, client).await)
    }

    /// Take the session for one request's chunk (`completing`: the PUT that ends it).
    pub async fn lease_upload(
        &self,
        repo: &RepoName,
        id: &str,
        completing: bool,
    ) -> Result<UploadLease> {
        Ok(UploadLease(match &self.backend {
            Backend::Filesystem(b) => Lease::File(b.lease_upload(repo, id, completing).await?),
            Backend::Object(b) => Lease::Object(b.lease_upload(repo, id, completing).await?),
        }))
    }

    /// Keep the chunk a lease received (the session continues from it, on any node); the new
    /// offset.
    pub async fn release_upload(&self, lease: UploadLease) -> Result<u64> {
        match (&self.backend, lease.0) {
            (_, Lease::File(mut l)) => Ok(l.writer().offset()),
            (Backend::Object(b), Lease::Object(l)) => b.release_upload(l).await,
            (Backend::Filesystem(_), Lease::Object(_)) => {
                unreachable!("an object-store lease given to the filesystem")
            }
        }
    }

    /// Drop the lease of a chunk that failed: the session stays as the last answered chunk
    /// left it (what the chunk began on the object store is dropped).
    pub async fn abandon_upload(&self, lease: UploadLease) {
        if let (Backend::Object(b), Lease::Object(l)) = (&self.backend, lease.0) {
            b.abandon_upload(l).await;
        }
    }

    /// How many bytes the session holds.
    pub async fn upload_offset(&self, repo: &RepoName, id: &str) -> Result<u64> {
        dispatch!(self, b => b.upload_offset(repo, id).await)
    }

    /// Verify the session's bytes against `expected` and store the blob, linked into `repo`.
    pub async fn complete_upload(
        &self,
        lease: UploadLease,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        match (&self.backend, lease.0) {
            (Backend::Filesystem(b), Lease::File(l)) => b.complete_upload(l, expected, repo).await,
            (Backend::Object(b), Lease::Object(l)) => b.complete_upload(l, expected, repo).await,
            _ => unreachable!("a lease given to another backend"),
        }
    }

    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        dispatch!(self, b => b.cancel_upload(repo, id).await)
    }

    /// Upload sessions open in this process.
    pub fn open_uploads(&self) -> usize {
        dispatch!(self, b => b.open_uploads())
    }

    /// The upload-session caps and idle timeout in force.
    pub fn session_limits(&self) -> SessionLimits {
        dispatch!(self, b => b.session_limits())
    }

    /// Forget sessions idle past the timeout that hold no data; how many went.
    pub fn expire_idle_sessions(&self) -> usize {
        dispatch!(self, b => b.expire_idle_sessions())
    }

    // ----- manifests and tags -----

    /// Store a verified manifest (`parsed` from `bytes`, whose digest is `digest`) in `repo`.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        bytes: &[u8],
        digest: &Digest,
        parsed: &Parsed,
    ) -> Result<()> {
        dispatch!(self, b => b.put_manifest(repo, bytes, digest, parsed).await)
    }

    pub async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        dispatch!(self, b => b.get_manifest(repo, reference).await)
    }

    /// Point `tag` at `digest`, whatever it pointed at.
    pub async fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        dispatch!(self, b => b.set_tag(repo, tag, digest).await)
    }

    /// Compare-and-swap a tag: if it satisfies `expect`, point it at `new` (`None`: delete it);
    /// else `TagPrecondition` and nothing changes.
    pub async fn update_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        expect: TagExpect,
        new: Option<&Digest>,
    ) -> Result<()> {
        dispatch!(self, b => b.update_tag(repo, tag, expect, new).await)
    }

    /// Note that `repo@digest` was just pulled (a pull-through cache's last-pull time, which
    /// eviction under `upstream.max_size` goes by): a hint, done off the request's path and
    /// skipped when the blocking pool is busy; at most once a minute per manifest (and worker).
    pub fn note_pull(&self, repo: &RepoName, digest: &Digest) {
        dispatch!(self, b => b.note_pull(repo, digest))
    }

    /// Where a tag points (`None`: no such tag).
    pub async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        dispatch!(self, b => b.resolve_tag(repo, tag).await)
    }

    /// The tags of `repo` pointing at `d`.
    pub async fn tags_pointing_at(&self, repo: &RepoName, d: &Digest) -> Result<Vec<Tag>> {
        dispatch!(self, b => b.tags_pointing_at(repo, d).await)
    }

    /// Delete a manifest and the tags `decided` for it; a tag found pointing at it that is not
    /// among them fails with `TagMoved` and nothing is deleted.
    pub async fn delete_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        decided: &[Tag],
    ) -> Result<()> {
        dispatch!(self, b => b.delete_manifest(repo, d, decided).await)
    }

    // ----- listings: a cursor (`last`, exclusive) and a page size -----

    /// At most `n` tags of `repo` after `last`, sorted, and whether more follow.
    pub async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool)> {
        dispatch!(self, b => b.list_tags(repo, last, n).await)
    }

    /// At most `n` repository names after `last`, sorted, and whether more follow.
    pub async fn catalog_page(&self, last: Option<&str>, n: usize) -> Result<(Vec<String>, bool)> {
        dispatch!(self, b => b.catalog_page(last, n).await)
    }

    /// At most `n` stored referrer descriptors of `subject` in `repo` after the cursor `last`,
    /// and the cursor of the next page when more follow.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>)> {
        dispatch!(self, b => b.referrers(repo, subject, last, n).await)
    }

    // ----- health and maintenance -----

    /// Whether storage accepts writes now (`/readyz`; a cached probe).
    pub async fn writable(&self) -> bool {
        dispatch!(self, b => b.writable().await)
    }

    /// Bytes and number of the stored blobs (blocking: a walk of the whole store).
    pub fn usage(&self) -> (u64, u64) {
        dispatch!(self, b => b.usage())
    }

    /// Collect garbage (blocking: run it on its own thread); `out` gets a line per removal.
    pub fn collect_garbage(&self, opts: &GcOptions, out: &mut dyn Report) -> io::Result<GcReport> {
        dispatch!(self, b => b.collect_garbage(opts, out))
    }

    /// Check everything stored (blocking); with `repair`, quarantine what is broken.
    pub fn fsck(&self, repair: bool, out: &mut dyn Report) -> io::Result<FsckReport> {
        dispatch!(self, b => b.fsck(repair, out))
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

/// At most `n` of the sorted `items` after `last`, and whether more follow.
pub(crate) fn page(items: Vec<String>, last: Option<&str>, n: usize) -> (Vec<String>, bool) {
    let start = last.map_or(0, |l| items.partition_point(|i| i.as_str() <= l));
    let mut rest: Vec<String> = items.into_iter().skip(start).collect();
    let more = rest.len() > n;
    rest.truncate(n);
    (rest, more)
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
