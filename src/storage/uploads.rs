//! Upload sessions. Data streams into `uploads/<id>/data` while being hashed; the hash state lives in
//! a sharded in-memory table so that chunks may arrive on any connection or thread. After a restart
//! (or a failed write) the partial file is re-hashed. A small CRC-checked `state` file records the
//! session's repository and digest algorithm.
//!
//! A session touches the disk only when its first chunk arrives (PATCH): a POST is a table entry,
//! and a PUT that brings the whole blob to a session without data streams into a temp file and
//! commits it like a monolithic upload, so POST + PUT creates no session files at all. (On a
//! filesystem without a journal, ext4 scans past recently deleted inodes on every allocation; the
//! directory and state file created and deleted per blob cost more CPU than the rest of the push.)

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use super::{Result, Storage, StoreError, fsio, random_id};
use crate::net::file::DataFile;
use crate::net::pool::Block;
use crate::oci::{Algorithm, Digest, Hasher, RepoName};

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
    /// `uploads/<id>/` exists (false until the first chunk; such a session has offset 0).
    on_disk: bool,
    /// When the session started (memory-only sessions expire with the stale uploads on disk).
    started: std::time::SystemTime,
}

/// Sharded map of upload sessions; critical sections never span an `.await`.
pub(super) struct Table {
    shards: Box<[Mutex<HashMap<String, Session>>]>,
}

impl Table {
    /// Sessions held in memory (open uploads this process has seen).
    pub(super) fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub(super) fn new() -> Table {
        Table {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
        }
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

/// Streams body bytes into a file while hashing them (socket buffer → SHA → positioned write).
pub struct BlobWriter {
    /// Shared with the write in flight (large bodies keep one write going while the next block
    /// is received and hashed).
    file: std::rc::Rc<DataFile>,
    path: PathBuf,
    offset: u64,
    hasher: Hasher,
    /// A write failed: the hash no longer matches the file.
    failed: bool,
    /// Bytes before this offset have been handed to writeback (`sync_file_range`).
    flushed: u64,
    /// The block being written while the caller receives the next one (`append_pipelined`).
    inflight: Option<monoio::task::JoinHandle<io::Result<()>>>,
}

/// Start writeback of an upload's data every this many bytes, so the fsync that commits the blob
/// finds most of it on disk already instead of flushing the whole blob at the end.
const WRITEBACK_STEP: u64 = 8 << 20;

impl BlobWriter {
    /// A writer continuing `file` at `offset`, with `hasher` covering the bytes before it.
    fn new(file: DataFile, path: PathBuf, offset: u64, hasher: Hasher) -> BlobWriter {
        BlobWriter {
            file: std::rc::Rc::new(file),
            path,
            offset,
            hasher,
            failed: false,
            flushed: offset,
            inflight: None,
        }
    }

    /// Count `len` more bytes written (or in flight) and start writeback every `WRITEBACK_STEP`.
    fn advance(&mut self, len: u64) {
        self.offset += len;
        if self.offset - self.flushed >= WRITEBACK_STEP {
            self.start_writeback();
        }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Hot path: hash `block` and write it at the current offset, from the same buffer (which
    /// returns to the pool when the write is done).
    pub async fn append(&mut self, block: Block) -> io::Result<()> {
        self.hasher.update(block.bytes());
        let len = block.len() as u64;
        let res = block.write_at(&self.file, self.offset).await;
        match &res {
            Ok(()) => self.advance(len),
            Err(_) => self.failed = true,
        }
        res
    }

    /// Hot path for large bodies: hash `block`, wait for the previous block's write, then start
    /// this block's write and return at once, so that the caller receives and hashes the next block
    /// while this one is copied into the page cache (by io_uring's worker, on the other core).
    /// The block's buffer returns to the pool when its write is done. `settle` must follow the
    /// last block.
    pub async fn append_pipelined(&mut self, block: Block) -> io::Result<()> {
        self.hasher.update(block.bytes());
        // On failure the hash covers a block that was never written; `settle` marked the writer
        // failed, so the next lease re-hashes.
        self.settle().await?;
        let (file, at, len) = (std::rc::Rc::clone(&self.file), self.offset, block.len());
        self.inflight = Some(crate::task::spawn("a block write", async move {
            block.write_at(&file, at).await
        }));
        self.advance(len as u64);
        Ok(())
    }

    /// Wait for the write in flight, if any; a failure marks the writer failed.
    pub async fn settle(&mut self) -> io::Result<()> {
        let Some(write) = self.inflight.take() else {
            return Ok(());
        };
        let res = write.await;
        if res.is_err() {
            self.failed = true;
        }
        res
    }

    /// Ask the kernel to start writing `flushed..offset` to disk without waiting for it
    /// (`SYNC_FILE_RANGE_WRITE` only queues the I/O). Only a hint: the commit's fsync is what makes
    /// the blob durable, so a failure here is ignored.
    fn start_writeback(&mut self) {
        use std::os::fd::AsRawFd;
        let (start, len) = (self.flushed, self.offset - self.flushed);
        crate::sys::start_writeback(self.file.as_raw_fd(), start, len);
        self.flushed = self.offset;
    }
}

/// Exclusive use of an upload session for one request; returned to the table when dropped.
pub struct UploadLease {
    storage: Arc<Storage>,
    id: String,
    writer: Option<BlobWriter>,
    /// The writer is a temp file (a completing PUT on a session without data): if the request
    /// does not commit it, the bytes are dropped and the session stays empty.
    temp: bool,
}

impl UploadLease {
    pub fn writer(&mut self) -> &mut BlobWriter {
        self.writer
            .as_mut()
            .expect("writer present until completion")
    }
}

impl Drop for UploadLease {
    fn drop(&mut self) {
        let w = self.writer.take();
        if self.temp {
            if let Some(s) = self.storage.uploads.shard(&self.id).get_mut(&self.id) {
                s.busy = false;
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

/// Re-hash a file from the start.
async fn rehash(file: &DataFile, alg: Algorithm) -> io::Result<(Hasher, u64)> {
    let mut hasher = alg.hasher();
    let mut buf = Vec::with_capacity(1 << 20);
    let mut off = 0u64;
    loop {
        let (res, b) = file.read_at(buf, off, 1 << 20).await;
        buf = b;
        let n = res?;
        if n == 0 {
            return Ok((hasher, off));
        }
        hasher.update(&buf[..n]);
        off += n as u64;
    }
}

fn open_rw(path: &Path, create: bool) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}

impl Storage {
    /// A writer on a fresh temp file (monolithic uploads and manifests).
    pub async fn temp_writer(&self, alg: Algorithm) -> Result<BlobWriter> {
        let path = self.uploads_dir().join(format!(".tmp-{}", random_id()));
        let p = path.clone();
        let file = fsio::off(move || open_rw(&p, true)).await?;
        Ok(BlobWriter::new(DataFile::new(file)?, path, 0, alg.hasher()))
    }

    /// fsync, verify against `expected`, move into the store and link into `repo`. Returns the
    /// blob size. On a mismatch the data is deleted and `DigestMismatch` returned.
    pub async fn finish_writer(
        self: &Arc<Self>,
        mut w: BlobWriter,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        // A failed write marks the writer failed: the re-hash below then tells the truth.
        let _ = w.settle().await;
        let result = async {
            w.file.sync_all().await?;
            let (hasher, size) = if w.failed || w.hasher.algorithm() != expected.algorithm() {
                rehash(&w.file, expected.algorithm()).await?
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
    pub async fn discard_writer(&self, w: BlobWriter) {
        let _ = fsio::remove(&w.path).await;
    }

    fn upload_dir(&self, id: &str) -> PathBuf {
        self.uploads_dir().join(id)
    }

    /// Open a new upload session for `repo`, hashing with `alg` as data arrives. Nothing is written
    /// until the first chunk: a restart before then forgets the session (the client starts over).
    pub async fn start_upload(&self, repo: &RepoName, alg: Algorithm) -> Result<String> {
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
            },
        );
        Ok(id)
    }

    /// Create a session's directory, empty `data` and `state` (its first chunk is arriving);
    /// the open `data` file.
    fn persist_session(dir: &Path, repo: &RepoName, alg: Algorithm) -> io::Result<std::fs::File> {
        std::fs::create_dir(dir)?;
        // `data` before `state`: the session exists once its state does.
        let data = open_rw(&dir.join("data"), true)?;
        std::fs::write(dir.join("state"), state_text(repo, alg))?;
        Ok(data)
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

    /// The session as stored on disk (after a restart): repository, algorithm.
    fn load_session(dir: &Path) -> Option<(RepoName, Algorithm)> {
        let text = std::fs::read_to_string(dir.join("state")).ok()?;
        parse_state(&text)
    }

    /// Take exclusive use of an upload of `repo` for one request; `completing` when the request is
    /// the PUT that ends the upload.
    pub async fn lease_upload(
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
            // Not in this process's table: a session from before a restart, if its state says so.
            None => {
                let dir = self.upload_dir(id);
                let (srepo, alg) = fsio::off(move || Ok(Self::load_session(&dir)))
                    .await?
                    .ok_or(StoreError::UploadUnknown)?;
                if srepo != *repo {
                    return Err(StoreError::UploadUnknown);
                }
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
        let path = self.upload_dir(id).join("data");
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
            let (dir, r) = (self.upload_dir(id), repo.clone());
            let file = fsio::off(move || Self::persist_session(&dir, &r, alg)).await?;
            if let Some(s) = self.uploads.shard(id).get_mut(id) {
                s.on_disk = true;
            }
            file
        };
        let file = DataFile::new(file)?;
        let len = file.len().await?;
        let (hasher, offset) = match hasher {
            Some(h) if len == offset => (h, offset),
            _ => rehash(&file, alg).await?,
        };
        lease.writer = Some(BlobWriter::new(file, path, offset, hasher));
        Ok(lease)
    }

    /// Bytes received so far by an upload of `repo`.
    pub async fn upload_offset(&self, repo: &RepoName, id: &str) -> Result<u64> {
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
        let (dir, repo) = (self.upload_dir(id), repo.clone());
        fsio::off(move || {
            Ok(match Self::load_session(&dir) {
                Some((r, _)) if r == repo => match std::fs::metadata(dir.join("data")) {
                    Ok(m) => Ok(m.len()),
                    // State without data: a session torn by a crash is unknown, not an error.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::UploadUnknown),
                    Err(e) => Err(e.into()),
                },
                _ => Err(StoreError::UploadUnknown),
            })
        })
        .await?
    }

    /// Verify and commit a leased upload as `expected`, then forget the session. Returns the size.
    pub async fn complete_upload(
        self: &Arc<Self>,
        mut lease: UploadLease,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        let w = lease
            .writer
            .take()
            .expect("writer present until completion");
        let result = self.finish_writer(w, expected, repo).await;
        self.forget_upload_off(&lease.id).await;
        result
    }

    /// Cancel an upload of `repo`.
    pub async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        self.upload_offset(repo, id).await?;
        self.forget_upload_off(id).await;
        Ok(())
    }

    /// `forget_upload` from a worker: the table at once, the files on the blocking pool.
    async fn forget_upload_off(&self, id: &str) {
        let known = self.uploads.shard(id).remove(id);
        if known.is_some_and(|s| !s.on_disk) {
            return;
        }
        let dir = self.upload_dir(id);
        let _ = fsio::off(move || {
            remove_session_files(&dir);
            Ok(())
        })
        .await;
    }

    pub(super) fn forget_upload(&self, id: &str) {
        let known = self.uploads.shard(id).remove(id);
        if known.is_some_and(|s| !s.on_disk) {
            return;
        }
        remove_session_files(&self.upload_dir(id));
    }
}

/// Remove a session's files. `state` first: a session directory without it is unknown, so a crash
/// in the middle of the removal leaves an unknown session (collected later), never a half-known one.
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
