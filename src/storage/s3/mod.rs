//! The object-store backend: everything wharf stores, as objects in one S3-compatible bucket,
//! so that any number of wharf nodes on the bucket serve any request with no state of their own
//! and no lock service. `api` is the bucket (signed requests over `crate::client`); `writer`
//! streams blobs into it and keeps upload sessions there.
//!
//! Keys (under the configured prefix):
//! - `blobs/<alg>/<hex>`: a pointer to a blob's bytes (`wharf-blob-v1`, size, data key), written
//!   once (`If-None-Match: *`) after the bytes are stored and verified;
//! - `data/<id>`: the bytes, under the key they were uploaded to (no copy once the digest is known);
//! - `repos/<repo>/_layers/<alg>/<hex>`: the repository may serve the blob (a nonce, so that
//!   each write has its own ETag for the collector's conditional delete);
//! - `repos/<repo>/_manifests/<alg>/<hex>`: a manifest revision (a line with the media type and a
//!   nonce, so that each write has its own ETag; then the bytes);
//! - `repos/<repo>/_tags/<tag>`: the digest a tag points at, changed by compare-and-swap on its ETag;
//! - `repos/<repo>/_referrers/<alg>/<hex>/<alg>-<hex>`: a referrer's descriptor;
//! - `repos/<repo>/_pulls/<alg>/<hex>`: when the manifest was last pulled through a mirror
//!   (its time; empty), for eviction under `upstream.max_size` (`evict`);
//! - `catalog/<repo>`: the repository exists (listed for `/v2/_catalog`);
//! - `uploads/<id>`: an upload session (see `writer`);
//! - `holds/<alg>/<hex>`: a client was told the blob exists (its time keeps it from collection;
//!   a nonce, like links);
//! - `doomed/<alg>/<hex>`: a collection is deleting the blob (docs/gc.md);
//! - `gc/lock`: the running collection (its time and a nonce);
//! - `quarantine/<time>/<key>`: what `wharf fsck --repair` moved out of the way (a blob's pointer
//!   moves, its data stays and is kept by the collector).
//!
//! Path components of repository names start with a letter or digit, so `_layers`, `_tags` and
//! the like never collide with a nested repository's keys.

pub mod api;
mod blobs;
pub mod credentials;
mod evict;
mod fsck;
mod gc;
pub mod kept;
pub mod listed;
mod manifests;
mod parse;
pub mod revisions;
mod untagged;
mod uploads;
pub mod writer;

use std::io;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::{Cond, ObjectStore, S3Error};
pub use evict::note_counts;
pub use uploads::UploadLease;
pub use writer::BlobWriter;

use super::{
    BlobContent, BlobRead, GcOptions, GcReport, Report, Result, SessionLimits, StoreError,
    StoredManifest, TagExpect, random_id,
};
use crate::net::stream::{ByteStream, Chunks, NextChunk};
use crate::oci::manifest::{self, Parsed};
use crate::oci::{Algorithm, Digest, Hasher, Reference, RepoName, Tag};

const POINTER_MAGIC: &str = "wharf-blob-v1";
/// Largest pointer, tag, link or referrer object read.
const SMALL: usize = 64 * 1024;
/// Largest manifest revision read (manifests are capped at push; this bounds a corrupt one).
const MAX_REVISION: usize = 64 << 20;
/// Largest upload-session object (a header and less than a part).
const MAX_SESSION: usize = writer::PART + (1 << 20);
/// How long a request waits for a collector deciding about a blob, and how often it looks.
const DOOM_WAIT: Duration = Duration::from_secs(10);
const DOOM_POLL: Duration = Duration::from_millis(25);
/// The object a node writes and deletes at startup to check the store applies the encryption
/// asked for (outside every prefix the backend lists).
const ENCRYPTION_PROBE: &str = "probes/encryption";
/// How long a bucket probe answers `/readyz`, and the longest it waits for the store.
const PROBE_FOR: Duration = Duration::from_secs(2);

impl From<S3Error> for StoreError {
    fn from(e: S3Error) -> StoreError {
        match e {
            S3Error::Io(e) => StoreError::Unavailable(e.to_string()),
            // The store's own trouble (5xx), throttling (429), or refusing our key (403: revoked,
            // rotated at the store first, or short of a permission): a 503 that says retry
            // later, and the store's code in the log. Any other answer is a request wharf got
            // wrong (500).
            S3Error::Status { status, .. } if status >= 500 || matches!(status, 403 | 429) => {
                StoreError::Unavailable(e.to_string())
            }
            e => StoreError::Io(io::Error::other(e.to_string())),
        }
    }
}

fn alg_hex(d: &Digest) -> String {
    format!("{}/{}", d.algorithm().as_str(), d.hex())
}

/// The digest a key `<prefix><alg>/<hex>` names (the inverse of `alg_hex`).
fn digest_after(key: &str, prefix: &str) -> Option<Digest> {
    key.strip_prefix(prefix)?.replacen('/', ":", 1).parse().ok()
}

/// The repository a `catalog/<repo>` key names.
fn catalog_repo(key: &str) -> Option<RepoName> {
    key.strip_prefix("catalog/")?.parse().ok()
}

fn pointer_key(d: &Digest) -> String {
    format!("blobs/{}", alg_hex(d))
}

fn hold_key(d: &Digest) -> String {
    format!("holds/{}", alg_hex(d))
}

/// The hold a writer puts down before completing the multipart data object `data_key`
/// (`data/<id>` → `holds/data-<id>`).
fn data_hold_key(data_key: &str) -> String {
    format!("holds/data-{}", data_key.trim_start_matches("data/"))
}

fn doomed_key(d: &Digest) -> String {
    format!("doomed/{}", alg_hex(d))
}

fn link_key(repo: &RepoName, d: &Digest) -> String {
    format!("repos/{repo}/_layers/{}", alg_hex(d))
}

fn revision_key(repo: &RepoName, d: &Digest) -> String {
    format!("repos/{repo}/_manifests/{}", alg_hex(d))
}

fn tags_prefix(repo: &RepoName) -> String {
    format!("repos/{repo}/_tags/")
}

fn referrers_prefix(repo: &RepoName, subject: &Digest) -> String {
    format!("repos/{repo}/_referrers/{}/", alg_hex(subject))
}

/// The entry that lists manifest `d` among `subject`'s referrers.
fn referrer_key(repo: &RepoName, subject: &Digest, d: &Digest) -> String {
    format!(
        "{}{}-{}",
        referrers_prefix(repo, subject),
        d.algorithm().as_str(),
        d.hex()
    )
}

fn catalog_key(repo: &RepoName) -> String {
    format!("catalog/{repo}")
}

fn upload_key(id: &str) -> String {
    format!("uploads/{id}")
}

/// A body read from the store that broke off.
fn unavailable(e: io::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(what: String) -> StoreError {
    StoreError::Io(io::Error::new(io::ErrorKind::InvalidData, what))
}

/// A blob pointer: its size and where its bytes are.
struct Pointer {
    size: u64,
    data_key: String,
}

impl Pointer {
    fn encode(&self) -> Vec<u8> {
        format!("{POINTER_MAGIC}\n{}\n{}\n", self.size, self.data_key).into_bytes()
    }

    fn decode(bytes: &[u8]) -> Option<Pointer> {
        let text = std::str::from_utf8(bytes).ok()?;
        let mut lines = text.lines();
        if lines.next()? != POINTER_MAGIC {
            return None;
        }
        let size = lines.next()?.parse().ok()?;
        let data_key = lines.next()?.to_owned();
        data_key
            .starts_with("data/")
            .then_some(Pointer { size, data_key })
    }
}

/// Upload sessions started on this node, for the per-node caps (`[limits]`): a session is
/// counted until it is completed or cancelled here, or idle past the timeout.
struct Started {
    sessions: Mutex<std::collections::HashMap<String, (Instant, crate::net::per_client::Held)>>,
    per_client: Arc<crate::net::per_client::PerClient>,
}

/// What the object-store backend needs besides the bucket.
#[derive(Clone, Debug)]
pub struct Options {
    pub limits: SessionLimits,
    /// Blob GETs answer 307 to a presigned URL valid this long (`storage.s3.redirect`).
    pub redirect: Option<Duration>,
    /// `gc.grace`: what fsck takes as possibly in progress (younger objects are not findings).
    pub grace: Duration,
}

/// The backend.
pub struct ObjectBackend {
    store: Arc<ObjectStore>,
    opts: Options,
    started: Started,
    /// Milliseconds since `epoch` of the last bucket probe, and its answer.
    probed_at: AtomicU64,
    probed_ok: AtomicBool,
    epoch: Instant,
    /// This backend's key space in the per-worker caches (`revisions`, `kept`).
    id: u64,
}

/// Seconds since the epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ObjectBackend {
    pub fn new(store: ObjectStore, opts: Options) -> ObjectBackend {
        let per_client = crate::net::per_client::PerClient::new(opts.limits.per_client);
        ObjectBackend {
            store: Arc::new(store),
            started: Started {
                sessions: Mutex::new(std::collections::HashMap::new()),
                per_client: Arc::new(per_client),
            },
            opts,
            probed_at: AtomicU64::new(u64::MAX),
            probed_ok: AtomicBool::new(false),
            epoch: Instant::now(),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        }
    }

    /// The bucket (for `check-config` and the tests).
    pub fn store(&self) -> &ObjectStore {
        &self.store
    }

    // ----- health and maintenance: the other operations are in blobs, uploads and manifests -----

    /// Whether the bucket answers (probed at most every `PROBE_FOR`).
    pub(crate) async fn writable(&self) -> bool {
        let now = self.epoch.elapsed().as_millis() as u64;
        let at = self.probed_at.load(Ordering::Relaxed);
        if at != u64::MAX && now.saturating_sub(at) < PROBE_FOR.as_millis() as u64 {
            return self.probed_ok.load(Ordering::Relaxed);
        }
        // Bounded on its own: a store gone silent makes `/readyz` say 503 within `PROBE_FOR`,
        // not after the request timeout.
        let ok = matches!(
            monoio::time::timeout(PROBE_FOR, self.store.probe()).await,
            Ok(Ok(_))
        );
        self.probed_ok.store(ok, Ordering::Relaxed);
        self.probed_at.store(now, Ordering::Relaxed);
        ok
    }

    /// Bytes and number of stored blobs (blocking: lists the whole bucket's data).
    pub(crate) fn usage(&self) -> (u64, u64) {
        let store = Arc::clone(&self.store);
        off_worker(async move {
            let (mut bytes, mut count) = (0u64, 0u64);
            let mut last: Option<String> = None;
            loop {
                let Ok((page, more)) = store.list("data/", last.as_deref(), 1000).await else {
                    break;
                };
                bytes += page.iter().map(|l| l.len).sum::<u64>();
                count += page.len() as u64;
                last = page.last().map(|l| l.key.clone());
                if !more || last.is_none() {
                    break;
                }
            }
            (bytes, count)
        })
    }
}

/// The bucket `[storage.s3]` names, checked to answer with the credentials (blocking: startup
/// and `check-config`). Errors name the key at fault.
pub fn connect(cfg: &crate::config::S3StorageConfig) -> std::result::Result<ObjectStore, String> {
    let (source, creds) = credentials::load(cfg)?;
    let store = ObjectStore::new(&api::S3Config {
        endpoint: cfg.endpoint.clone(),
        path_style: cfg.path_style,
        ca_bundle: cfg.ca_bundle.clone(),
        region: cfg.region.clone(),
        bucket: cfg.bucket.clone(),
        prefix: cfg.prefix.clone(),
        access_key_id: creds.key().to_owned(),
        secret_access_key: creds.secret().to_owned(),
        session_token: creds.token().map(str::to_owned),
        encryption: encryption(cfg)?,
        connect_timeout: cfg.connect_timeout(),
        io_timeout: cfg.io_timeout,
    })?;
    off_worker(store.probe()).map_err(|e| match e {
        S3Error::Io(e) => format!(
            "storage.s3.endpoint {}: the object store cannot be reached: {e}",
            cfg.endpoint
        ),
        S3Error::Status { status: 404, .. } => format!(
            "storage.s3.bucket {:?}: no such bucket at {} (create it first)",
            cfg.bucket, cfg.endpoint
        ),
        S3Error::Status { status, .. } => format!(
            "storage.s3: the bucket {:?} answered {status}: check the credentials and region",
            cfg.bucket
        ),
        S3Error::Precondition => "storage.s3: unexpected answer to a bucket probe".into(),
    })?;
    if store.encryption() != &api::Encryption::Bucket {
        off_worker(store.check_encryption(ENCRYPTION_PROBE)).map_err(|e| {
            let key = match cfg.kms_key_id {
                Some(_) => "storage.s3.kms_key_id",
                None => "storage.s3.server_side_encryption",
            };
            format!(
                "{key}: a test write with server-side encryption {:?} failed (check that the \
                 store supports it, that the KMS key exists and that these credentials may \
                 use it): {e}",
                cfg.server_side_encryption.as_deref().unwrap_or_default()
            )
        })?;
    }
    source
        .keep_current(Arc::clone(store.keys()))
        .map_err(|e| format!("storage.s3: the thread renewing credentials: {e}"))?;
    Ok(store)
}

/// `storage.s3.server_side_encryption` (with `kms_key_id`), validated at load.
fn encryption(
    cfg: &crate::config::S3StorageConfig,
) -> std::result::Result<api::Encryption, String> {
    match cfg.server_side_encryption.as_deref() {
        None => Ok(api::Encryption::Bucket),
        Some("AES256") => Ok(api::Encryption::Aes256),
        Some("aws:kms") => Ok(api::Encryption::Kms(cfg.kms_key_id.clone())),
        Some(other) => Err(format!(
            "storage.s3.server_side_encryption {other:?}: must be \"AES256\" or \"aws:kms\""
        )),
    }
}

/// The fuzz check of what the backend reads back from the store: upload sessions and blob
/// pointers decode or are refused, and what decodes encodes back to an equal value; STS answers
/// give complete credentials or an error.
#[doc(hidden)]
pub fn fuzz_stored(data: &[u8]) {
    if let Some(s) = writer::Session::decode(data) {
        assert_eq!(writer::Session::decode(&s.encode()), Some(s));
    }
    if let Some(p) = Pointer::decode(data) {
        let back = Pointer::decode(&p.encode()).expect("an encoded pointer decodes");
        assert_eq!((back.size, back.data_key), (p.size, p.data_key));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = api::parse_time(text);
        let _ = api::parse_http_date(text);
    }
    if let Ok(issued) = parse::parse_sts(data) {
        assert!(!issued.key_id.is_empty() && !issued.secret.is_empty() && !issued.token.is_empty());
    }
}

/// Run `fut` to its end on a runtime of this (non-worker) thread, for the blocking maintenance
/// calls; the connections it opened are closed with it.
pub fn off_worker<F: std::future::Future>(fut: F) -> F::Output {
    let mut rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .expect("a runtime for maintenance starts");
    rt.block_on(async move {
        let out = fut.await;
        crate::client::clear_idle();
        out
    })
}
