//! Upload sessions. Data streams into one file, `uploads/<id>.<alg>.<repository key>`, while being
//! hashed; the hash state lives in a sharded in-memory table so that chunks may arrive on any
//! connection or thread. After a restart (or a failed write) the partial file is re-hashed. The
//! file's name records what a restart needs: the digest algorithm, and a key of the repository
//! (`repo_key`) that only a request naming the same repository reproduces.
//!
//! A session touches the disk only when its first chunk arrives (PATCH): a POST is a table entry,
//! and a PUT that brings the whole blob to a session without data streams into a temp file and
//! commits it like a monolithic upload, so POST + PUT creates no session files at all. A session
//! is one inode, renamed into the store when it completes: nothing is created or deleted per
//! session besides. (On a filesystem without a journal, ext4 scans past recently deleted inodes
//! on every allocation; the directory and state file the layout before this one created and
//! deleted per session cost more CPU than the rest of a chunked push.) Sessions in that layout,
//! `uploads/<id>/{data,state}` with a CRC-checked `state`, move to the one-file layout when a
//! request after an upgrade finds them.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::writer::{FileWriter, open_rw, rehash};
use super::{Filesystem, Result, StoreError, fsio, random_id};
use crate::net::file::DataFile;
use crate::oci::{Algorithm, Digest, Hasher, RepoName};
use crate::storage::BlobWriter;

const SHARDS: usize = 32;
const STATE_MAGIC: &str = "wharf-upload-v1";

/// One in-progress upload as the table knows it.
struct Session {
    repo: RepoName,
    /// Hash of `offset` bytes; `None` when it must be rebuilt from the file.
    hasher: Option<Hasher>,
    algorithm: Algorithm,
    offset: u64,
    /// A request holds the lease; others must not write concurrently.
    busy: bool,
    /// Its file exists (false until the first chunk; such a session has offset 0).
    on_disk: bool,
    /// When the session started (memory-only sessions expire with the stale uploads on disk).
    started: std::time::SystemTime,
    /// Last started or released by a request (`limits.upload_idle_timeout` counts from here).
    last_used: Instant,
    /// Its place under `limits.max_upload_sessions_per_client` (none when loaded from disk).
    _client: Option<crate::net::per_client::Held>,
    /// Its place under `limits.max_upload_sessions`.
    _counted: Counted,
}

/// One session counted in `Table::total`; dropping it gives the place back.
struct Counted(Arc<AtomicUsize>);

impl Counted {
    fn new(total: &Arc<AtomicUsize>) -> Counted {
        total.fetch_add(1, Ordering::Relaxed);
        Counted(Arc::clone(total))
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Caps and timeout of the session table (`[limits]`).
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// `limits.max_upload_sessions`; `0` = unlimited.
    pub max: usize,
    /// `limits.max_upload_sessions_per_client`; `0` = unlimited.
    pub per_client: usize,
    /// `limits.upload_idle_timeout`.
    pub idle: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        let l = crate::config::LimitsConfig::default();
        SessionLimits {
            max: l.max_upload_sessions,
            per_client: l.max_upload_sessions_per_client,
            idle: l.upload_idle_timeout,
        }
    }
}

/// Sharded map of upload sessions; critical sections never span an `.await`. Bounded by
/// `SessionLimits` (new sessions past a cap are refused) and by the idle timeout.
pub(super) struct Table {
    shards: Box<[Mutex<HashMap<String, Session>>]>,
    total: Arc<AtomicUsize>,
    per_client: Arc<crate::net::per_client::PerClient>,
    limits: SessionLimits,
}

impl Table {
    /// Sessions held in memory (open uploads this process has seen).
    pub(super) fn len(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    pub(super) fn new(limits: SessionLimits) -> Table {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            total: Arc::new(AtomicUsize::new(0)),
            per_client: Arc::new(crate::net::per_client::PerClient::new(limits.per_client)),
            limits,
        }
    }

    pub(super) fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn shard(&self, id: &str) -> MutexGuard<'_, HashMap<String, Session>> {
        let h = id.bytes().fold(0usize, |h, b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        self.shards[h % SHARDS]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }
}

/// Exclusive use of an upload session for one request; returned to the table when dropped.
pub(crate) struct UploadLease {
    storage: Arc<Filesystem>,
    id: String,
    writer: Option<BlobWriter>,
    /// The writer is a temp file (a completing PUT on a session without data): if the request
    /// does not commit it, the bytes are dropped and the session stays empty.
    temp: bool,
}

impl UploadLease {
    pub(crate) fn writer(&mut self) -> &mut BlobWriter {
        self.writer
            .as_mut()
            .expect("writer present until completion")
    }
}

impl Drop for UploadLease {
    fn drop(&mut self) {
        let w = self.writer.take().map(BlobWriter::into_file);
        if self.temp {
            if let Some(s) = self.storage.uploads.shard(&self.id).get_mut(&self.id) {
                s.busy = false;
                s.last_used = Instant::now();
                s.hasher = Some(s.algorithm.hasher());
            }
            if let Some(w) = w {
                crate::blocking::detach(move || {
                    let _ = fsio::remove_if_exists(&w.path);
                });
            }
            return;
        }
        let mut shard = self.storage.uploads.shard(&self.id);
        if let Some(s) = shard.get_mut(&self.id) {
            s.busy = false;
            s.last_used = Instant::now();
            match w {
                Some(w) if !w.failed => {
                    s.offset = w.offset;
                    s.hasher = Some(w.hasher);
                }
                // Failed or never opened: the next lease re-hashes the file.
                _ => s.hasher = None,
            }
        }
    }
}

#[cfg(test)]
fn state_text(repo: &RepoName, alg: Algorithm) -> String {
    let body = format!("{STATE_MAGIC}\n{repo}\n{}\n", alg.as_str());
    format!("{body}{:08x}\n", crc32fast::hash(body.as_bytes()))
}

/// Parse a state file; a torn or tampered one reads as `None`.
fn parse_state(text: &str) -> Option<(RepoName, Algorithm)> {
    let mut lines = text.lines();
    let (magic, repo, alg, crc) = (lines.next()?, lines.next()?, lines.next()?, lines.next()?);
    let body = format!("{magic}\n{repo}\n{alg}\n");
    if magic != STATE_MAGIC
        || u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes())
    {
        return None;
    }
    Some((repo.parse().ok()?, alg.parse().ok()?))
}

impl Filesystem {
    /// A writer on a fresh temp file (monolithic uploads and manifests).
    pub(crate) async fn temp_writer(&self, alg: Algorithm) -> Result<BlobWriter> {
        let path = self.uploads_dir().join(format!(".tmp-{}", random_id()));
        let p = path.clone();
        let file = fsio::off(move || open_rw(&p, true)).await?;
        let sync = std::sync::Arc::new(file.try_clone()?);
        Ok(BlobWriter::file(FileWriter::new(
            DataFile::new(file)?,
            sync,
            path,
            0,
            alg.hasher(),
        )))
    }

    /// fsync, verify against `expected`, move into the store and link into `repo`. Returns the
    /// blob size. On a mismatch the data is deleted and `DigestMismatch` returned.
    pub(crate) async fn finish_writer(
        self: &Arc<Self>,
        w: BlobWriter,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        let mut w = w.into_file();
        // A failed write marks the writer failed: the re-hash below then tells the truth.
        let _ = w.settle().await;
        let result = async {
            w.file.sync_all().await?;
            let (hasher, size) = if w.failed || w.hasher.algorithm() != expected.algorithm() {
                rehash(std::sync::Arc::clone(&w.sync), expected.algorithm()).await?
            } else {
                (w.hasher, w.offset)
            };
            if hasher.finish() != *expected {
                return Err(StoreError::DigestMismatch {
                    expected: expected.clone(),
                });
            }
            self.commit_temp(&w.path, expected, Some(repo)).await?;
            Ok(size)
        }
        .await;
        if result.is_err() {
            let _ = fsio::remove(&w.path).await;
        }
        result
    }

    /// Discard a temp writer's data.
    pub(crate) async fn discard_writer(&self, w: BlobWriter) {
        let _ = fsio::remove(&w.into_file().path).await;
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.uploads_dir().join(id)
    }

    /// Open a new upload session for `repo`, hashing with `alg` as data arrives. Nothing is written
    /// until the first chunk: a restart before then forgets the session (the client starts over).
    /// `client` is who asked: a client holding `limits.max_upload_sessions_per_client` sessions,
    /// or a table holding `limits.max_upload_sessions`, gets `TooManySessions`.
    pub(crate) async fn start_upload(
        &self,
        repo: &RepoName,
        alg: Algorithm,
        client: IpAddr,
    ) -> Result<String> {
        let t = &self.uploads;
        if t.limits.max > 0 && t.total.load(Ordering::Relaxed) >= t.limits.max {
            return Err(StoreError::TooManySessions {
                per_client: false,
                limit: t.limits.max,
            });
        }
        let place = t
            .per_client
            .acquire(client)
            .ok_or(StoreError::TooManySessions {
                per_client: true,
                limit: t.limits.per_client,
            })?;
        let id = random_id();
        self.uploads.shard(&id).insert(
            id.clone(),
            Session {
                repo: repo.clone(),
                hasher: Some(alg.hasher()),
                algorithm: alg,
                offset: 0,
                busy: false,
                on_disk: false,
                started: std::time::SystemTime::now(),
                last_used: Instant::now(),
                _client: Some(place),
                _counted: Counted::new(&t.total),
            },
        );
        Ok(id)
    }

    /// The one file of a session of `repo` hashed with `alg`.
    fn session_path(&self, id: &str, repo: &RepoName, alg: Algorithm) -> PathBuf {
        self.uploads_dir()
            .join(format!("{id}.{}.{}", alg.as_str(), repo_key(repo)))
    }

    /// A session of `repo` this process's table does not hold (after a restart or an idle
    /// timeout): its algorithm and file, or `None` when no session `id` of `repo` is stored. One
    /// in the layout before one-file sessions moves to its file first; a torn one (no `state`, or
    /// no `data`) is unknown.
    fn find_session(&self, id: &str, repo: &RepoName) -> io::Result<Option<(Algorithm, PathBuf)>> {
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let path = self.session_path(id, repo, alg);
            if path.exists() {
                return Ok(Some((alg, path)));
            }
        }
        let dir = self.upload_dir(id);
        let Some((stored, alg)) = Self::load_session(&dir) else {
            return Ok(None);
        };
        if stored != *repo {
            return Ok(None);
        }
        let path = self.session_path(id, repo, alg);
        match std::fs::rename(dir.join("data"), &path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        }
        remove_session_files(&dir);
        Ok(Some((alg, path)))
    }

    /// Forget sessions that never received data and started before `cutoff`; how many.
    pub(super) fn expire_memory_sessions(&self, cutoff: std::time::SystemTime) -> usize {
        let mut n = 0;
        for shard in self.uploads.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.len();
            shard.retain(|_, s| s.on_disk || s.busy || s.started > cutoff);
            n += before - shard.len();
        }
        n
    }

    /// Drop sessions no request has used for `limits.upload_idle_timeout`: one without data is
    /// forgotten (its client starts over), one with data leaves memory only (its files stay; the
    /// next request reloads it, and `wharf gc` removes it once stale). How many.
    pub(crate) fn expire_idle_sessions(&self) -> usize {
        let Some(cutoff) = Instant::now().checked_sub(self.uploads.limits.idle) else {
            return 0;
        };
        let mut n = 0;
        for shard in self.uploads.shards.iter() {
            let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            let before = shard.len();
            shard.retain(|_, s| s.busy || s.last_used > cutoff);
            n += before - shard.len();
            // A table does not shrink by itself: after a burst, give its memory back.
            if shard.capacity() > 4 * shard.len().max(16) {
                shard.shrink_to_fit();
            }
        }
        n
    }

    /// A session in the layout before one-file sessions: repository, algorithm.
    fn load_session(dir: &Path) -> Option<(RepoName, Algorithm)> {
        let text = std::fs::read_to_string(dir.join("state")).ok()?;
        parse_state(&text)
    }

    /// Take exclusive use of an upload of `repo` for one request; `completing` when the request is
    /// the PUT that ends the upload.
    pub(crate) async fn lease_upload(
        self: &Arc<Self>,
        repo: &RepoName,
        id: &str,
        completing: bool,
    ) -> Result<UploadLease> {
        let known = {
            let mut shard = self.uploads.shard(id);
            match shard.get_mut(id) {
                Some(s) if s.repo != *repo => return Err(StoreError::UploadUnknown),
                Some(s) if s.busy => return Err(StoreError::UploadBusy { offset: s.offset }),
                Some(s) => {
                    s.busy = true;
                    Some((s.algorithm, s.hasher.take(), s.offset, s.on_disk))
                }
                None => None,
            }
        };
        let (alg, hasher, offset, on_disk) = match known {
            Some(k) => k,
            // Not in this process's table: a session from before a restart, if one is stored.
            None => {
                let (s, sid, r) = (Arc::clone(self), id.to_owned(), repo.clone());
                let (alg, _) = fsio::off(move || s.find_session(&sid, &r))
                    .await?
                    .ok_or(StoreError::UploadUnknown)?;
                let mut shard = self.uploads.shard(id);
                if shard.contains_key(id) {
                    return Err(StoreError::UploadBusy { offset: 0 });
                }
                shard.insert(
                    id.to_owned(),
                    Session {
                        repo: repo.clone(),
                        hasher: None,
                        algorithm: alg,
                        offset: 0,
                        busy: true,
                        on_disk: true,
                        started: std::time::SystemTime::now(),
                        last_used: Instant::now(),
                        _client: None,
                        _counted: Counted::new(&self.uploads.total),
                    },
                );
                (alg, None, 0, true)
            }
        };
        let mut lease = UploadLease {
            storage: Arc::clone(self),
            id: id.to_owned(),
            writer: None,
            temp: false,
        };
        let path = self.session_path(id, repo, alg);
        let file = if on_disk {
            let p = path.clone();
            match fsio::off(move || open_rw(&p, false)).await {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    drop(lease);
                    self.uploads.shard(id).remove(id);
                    return Err(StoreError::UploadUnknown);
                }
                Err(e) => return Err(e.into()),
            }
        } else {
            if completing {
                lease.temp = true;
                lease.writer = Some(self.temp_writer(alg).await?);
                return Ok(lease);
            }
            let p = path.clone();
            let file = fsio::off(move || open_rw(&p, true)).await?;
            if let Some(s) = self.uploads.shard(id).get_mut(id) {
                s.on_disk = true;
            }
            file
        };
        let sync = std::sync::Arc::new(file.try_clone()?);
        let file = DataFile::new(file)?;
        let len = file.len().await?;
        let (hasher, offset) = match hasher {
            Some(h) if len == offset => (h, offset),
            _ => rehash(std::sync::Arc::clone(&sync), alg).await?,
        };
        lease.writer = Some(BlobWriter::file(FileWriter::new(
            file, sync, path, offset, hasher,
        )));
        Ok(lease)
    }

    /// Bytes received so far by an upload of `repo`.
    pub(crate) async fn upload_offset(self: &Arc<Self>, repo: &RepoName, id: &str) -> Result<u64> {
        {
            let shard = self.uploads.shard(id);
            if let Some(s) = shard.get(id) {
                return if s.repo == *repo {
                    Ok(s.offset)
                } else {
                    Err(StoreError::UploadUnknown)
                };
            }
        }
        let (s, id, repo) = (Arc::clone(self), id.to_owned(), repo.clone());
        fsio::off(move || {
            Ok(match s.find_session(&id, &repo)? {
                Some((_, path)) => match std::fs::metadata(path) {
                    Ok(m) => Ok(m.len()),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::UploadUnknown),
                    Err(e) => Err(e.into()),
                },
                None => Err(StoreError::UploadUnknown),
            })
        })
        .await?
    }

    /// Verify and commit a leased upload as `expected`, then forget the session. Returns the size.
    pub(crate) async fn complete_upload(
        self: &Arc<Self>,
        mut lease: UploadLease,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        let w = lease
            .writer
            .take()
            .expect("writer present until completion");
        // Its file was renamed into the store, or (failed) removed: only the entry is left.
        let result = self.finish_writer(w, expected, repo).await;
        self.uploads.shard(&lease.id).remove(&lease.id);
        result
    }

    /// Cancel an upload of `repo`: the table entry at once, the file on the blocking pool.
    pub(crate) async fn cancel_upload(self: &Arc<Self>, repo: &RepoName, id: &str) -> Result<()> {
        self.upload_offset(repo, id).await?;
        if self
            .uploads
            .shard(id)
            .remove(id)
            .is_some_and(|s| !s.on_disk)
        {
            return Ok(());
        }
        let (s, id, repo) = (Arc::clone(self), id.to_owned(), repo.clone());
        fsio::off(move || match s.find_session(&id, &repo)? {
            Some((_, path)) => fsio::remove_if_exists(&path).map(drop),
            None => Ok(()),
        })
        .await?;
        Ok(())
    }

    /// Forget a stale session (the collector): `name` is its file or, in the layout before
    /// one-file sessions, its directory under `uploads/`.
    pub(super) fn forget_upload(&self, name: &str, path: &Path) -> io::Result<()> {
        let id = name.split('.').next().unwrap_or_default();
        self.uploads.shard(id).remove(id);
        if path.is_dir() {
            remove_session_files(path);
            Ok(())
        } else {
            fsio::remove_if_exists(path).map(drop)
        }
    }
}

/// A key of a repository's name for session file names: 128 bits of its SHA-256 in hex (names
/// may be longer than a file name, and hold `/`).
fn repo_key(repo: &RepoName) -> String {
    let mut h = Algorithm::Sha256.hasher();
    h.update(repo.to_string().as_bytes());
    h.finish().hex()[..32].to_owned()
}

/// Remove a session's files (the layout before one-file sessions). `state` first: a session
/// directory without it is unknown, so a crash in the middle of the removal leaves an unknown
/// session (collected later), never a half-known one.
fn remove_session_files(dir: &Path) {
    {
        let _ = std::fs::remove_file(dir.join("state"));
        // Usually `data` was renamed into the store and the directory is empty: one rmdir.
        if std::fs::remove_dir(dir).is_err() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_detects_tearing() {
        let repo: RepoName = "a/b".parse().unwrap();
        let t = state_text(&repo, Algorithm::Sha512);
        assert_eq!(parse_state(&t), Some((repo, Algorithm::Sha512)));
        assert_eq!(parse_state(&t[..t.len() - 3]), None);
        assert_eq!(parse_state(&t.replace("a/b", "a/c")), None);
    }
}
