//! Writing a blob into the bucket while hashing it. Bytes collect in memory until a part's worth
//! (`PART`) is there, which goes up as one multipart part while the next fills; up to
//! `MAX_IN_FLIGHT` parts of one blob go up at once while the process's `PART_BUDGET` allows (one
//! store stream is slower than the client's), always at least one. A blob smaller than a
//! part is one plain PUT. The data lands under `data/<id>`, a key of its own: its digest is
//! known only at the end, and the content-addressed pointer `blobs/<alg>/<hex>` written then
//! names it (no copy of the bytes).
//!
//! An upload session is one object, `uploads/<id>`: a checksummed header (repository, algorithm,
//! offset, data key, multipart upload id, the ETags of the parts written, the SHA state after
//! `offset` bytes) followed by the bytes past the last part. Each request's chunk starts from it
//! and ends by replacing it with a compare-and-swap on its ETag, so any node can take the next
//! chunk, and a node that dies mid-chunk leaves the session as the last answered chunk left it.

use std::collections::VecDeque;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::api::{Cond, ObjectStore, S3Error};
use crate::net::pool::Block;
use crate::oci::{Algorithm, Hasher, RepoName};

/// Bytes per multipart part (S3 wants ≥ 5 MiB but the last; at most 10,000 parts per upload).
pub(super) const PART: usize = 8 << 20;
/// Most parts of one upload (S3's limit): blobs up to `PART * MAX_PARTS` bytes (78 GiB).
const MAX_PARTS: usize = 10_000;
const STATE_MAGIC: &str = "wharf-upload-v1";
/// Parts of one blob going up at once, at most.
const MAX_IN_FLIGHT: usize = 3;
/// Part bytes the process holds in flight across its writers, beyond which each writer waits
/// for its oldest part instead of starting another (a writer with none in flight always starts
/// one, so this bound is exceeded by at most one part per writer that has no other).
pub const PART_BUDGET: usize = 8 * PART;

/// Bytes of the parts in flight, all workers.
static PARTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// Bytes of part uploads under way (for `/metrics`).
pub fn part_bytes_in_flight() -> usize {
    PARTS_IN_FLIGHT.load(Ordering::Relaxed)
}

/// `PART` bytes counted against `PART_BUDGET` while a part upload holds them.
struct PartBytes;

impl PartBytes {
    /// Unconditionally: a writer's only part.
    fn take() -> PartBytes {
        PARTS_IN_FLIGHT.fetch_add(PART, Ordering::Relaxed);
        PartBytes
    }

    /// Within the budget, or `None`.
    fn try_take() -> Option<PartBytes> {
        PARTS_IN_FLIGHT
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n + PART <= PART_BUDGET).then_some(n + PART)
            })
            .ok()
            .map(|_| PartBytes)
    }
}

impl Drop for PartBytes {
    fn drop(&mut self) {
        PARTS_IN_FLIGHT.fetch_sub(PART, Ordering::Relaxed);
    }
}

/// A failed request to the store as the writer reports it (unavailable: 503, not 500).
fn io_err(e: S3Error) -> io::Error {
    crate::storage::Unavailable::io(e)
}

/// Streams a blob's bytes into the bucket while hashing them.
pub struct BlobWriter {
    store: Arc<ObjectStore>,
    /// Where the bytes go (`data/<id>`).
    pub(super) data_key: String,
    pub(super) hasher: Hasher,
    offset: u64,
    /// Bytes after the last part (fewer than `PART` between calls).
    pub(super) buf: Vec<u8>,
    /// The multipart upload, once the first part is due.
    pub(super) upload_id: Option<String>,
    /// ETags of the parts written (part `i + 1` is `etags[i]`).
    pub(super) etags: Vec<String>,
    /// Part uploads under way, oldest (lowest part number) first.
    inflight: VecDeque<monoio::task::JoinHandle<Result<String, S3Error>>>,
    /// The block being hashed on a bulk thread (`append_pipelined`; its bytes are in the part
    /// being filled already): the hasher and the block come back.
    hashing: Option<monoio::task::JoinHandle<io::Result<(Hasher, Block)>>>,
    /// A part failed: what the hash covers is not all stored.
    pub(super) failed: bool,
}

impl BlobWriter {
    pub(super) fn new(store: Arc<ObjectStore>, data_key: String, hasher: Hasher) -> BlobWriter {
        BlobWriter {
            store,
            data_key,
            hasher,
            offset: 0,
            buf: Vec::new(),
            upload_id: None,
            etags: Vec::new(),
            inflight: VecDeque::new(),
            hashing: None,
            failed: false,
        }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Hash `block` on the worker and queue it; a full part goes up while the next one fills.
    pub async fn append(&mut self, block: Block) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier part failed"));
        }
        self.settle_hash().await?;
        self.hasher.update(block.bytes());
        self.offset += block.len() as u64;
        self.store_bytes(block.bytes()).await
    }

    /// Hot path for large bodies: `block` joins the part being filled at once and is hashed on
    /// a bulk thread (as the filesystem writer does) while the worker receives the next one, so
    /// a push's hashing never holds up the worker's other connections. `settle` must follow the
    /// last block.
    pub async fn append_pipelined(&mut self, block: Block) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier part failed"));
        }
        self.settle_hash().await?;
        self.offset += block.len() as u64;
        self.store_bytes(block.bytes()).await?;
        let alg = self.hasher.algorithm();
        let mut hasher = std::mem::replace(&mut self.hasher, alg.hasher());
        self.hashing = Some(crate::task::spawn("a block hash", async move {
            // A job dropped with its request drops its block on the pool thread.
            crate::blocking::run_bulk(move || {
                hasher.update(block.bytes());
                (hasher, block)
            })
            .await
        }));
        Ok(())
    }

    /// Wait for the block being hashed, if any: its hasher comes back (and its block returns
    /// to the worker's pool). A failure marks the writer failed.
    async fn settle_hash(&mut self) -> io::Result<()> {
        let Some(job) = self.hashing.take() else {
            return Ok(());
        };
        let (hasher, _block) = job.await.inspect_err(|_| self.failed = true)?;
        self.hasher = hasher;
        Ok(())
    }

    /// Add bytes to the part being filled; a full part goes up while the next one fills.
    async fn store_bytes(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            // A part is filled to exactly `PART` in one allocation once it is past the first
            // MiB (small blobs stay small), and handed to its upload as it is.
            if self.buf.len() + bytes.len() > 1 << 20 && self.buf.capacity() < PART {
                self.buf.reserve_exact(PART - self.buf.len());
            }
            let take = bytes.len().min(PART - self.buf.len());
            self.buf.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.buf.len() == PART
                && let Err(e) = self.send_part().await
            {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    /// Wait for the block being hashed and every part in flight.
    pub async fn settle(&mut self) -> io::Result<()> {
        let hashed = self.settle_hash().await;
        while !self.inflight.is_empty() {
            self.settle_oldest().await?;
        }
        hashed
    }

    async fn settle_oldest(&mut self) -> io::Result<()> {
        let Some(part) = self.inflight.pop_front() else {
            return Ok(());
        };
        match part.await {
            Ok(etag) => {
                self.etags.push(etag);
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(io_err(e))
            }
        }
    }

    /// Send the buffer (`PART` bytes) as the next part, once this writer and the process have
    /// room for one more in flight.
    async fn send_part(&mut self) -> io::Result<()> {
        let held = loop {
            if self.inflight.is_empty() {
                break PartBytes::take();
            }
            if self.inflight.len() < MAX_IN_FLIGHT
                && let Some(held) = PartBytes::try_take()
            {
                break held;
            }
            self.settle_oldest().await?;
        };
        let number = self.etags.len() + self.inflight.len() + 1;
        if number >= MAX_PARTS {
            return Err(io::Error::other(format!(
                "blob larger than {} bytes, the most one object-store upload takes",
                PART as u64 * MAX_PARTS as u64
            )));
        }
        let id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let id = self
                    .store
                    .create_multipart(&self.data_key)
                    .await
                    .map_err(io_err)?;
                self.upload_id = Some(id.clone());
                id
            }
        };
        let part = bytes::Bytes::from(std::mem::take(&mut self.buf));
        let n = u16::try_from(number).expect("parts are capped below u16::MAX");
        let (store, key) = (Arc::clone(&self.store), self.data_key.clone());
        self.inflight
            .push_back(crate::task::spawn("a part upload", async move {
                let etag = store.upload_part(&key, &id, n, part).await;
                drop(held);
                etag
            }));
        Ok(())
    }

    /// Store everything written under the data key: the last part and the completion, or one PUT
    /// for a blob smaller than a part. The writer must be settled and not failed.
    pub(super) async fn store_data(&mut self) -> Result<(), S3Error> {
        match self.upload_id.clone() {
            None => {
                self.store
                    .put(&self.data_key, &self.buf, Cond::None)
                    .await?;
            }
            Some(id) => {
                if !self.buf.is_empty() || self.etags.is_empty() {
                    let n = u16::try_from(self.etags.len() + 1).expect("parts are capped");
                    let etag = self
                        .store
                        .upload_part(&self.data_key, &id, n, std::mem::take(&mut self.buf).into())
                        .await?;
                    self.etags.push(etag);
                }
                // A multipart object's `Last-Modified` is when its upload started, so a collector
                // could take it for an old orphan until its pointer is written: this hold says
                // it is being finished (docs/gc.md).
                let hold = super::data_hold_key(&self.data_key);
                let nonce = crate::storage::random_id();
                self.store.put(&hold, nonce.as_bytes(), Cond::None).await?;
                self.store
                    .complete_multipart(&self.data_key, &id, &self.etags)
                    .await?;
            }
        }
        Ok(())
    }

    /// Drop whatever was stored for this writer (best effort: the collector removes leftovers).
    /// Discard this writer only if it began a multipart upload for a session that named none:
    /// nothing will name that upload now. A session's own upload stays for the session.
    pub(super) async fn discard_begun(self, had_upload: bool) {
        if !had_upload && self.upload_id.is_some() {
            self.discard().await;
        }
    }

    pub(super) async fn discard(mut self) {
        // Every part ends first (an abort racing a part upload could leave that part behind).
        for part in std::mem::take(&mut self.inflight) {
            let _ = part.await;
        }
        match &self.upload_id {
            Some(id) => {
                let _ = self.store.abort_multipart(&self.data_key, id).await;
            }
            None => {
                let _ = self.store.delete(&self.data_key, None).await;
            }
        }
    }
}

/// An upload session as stored in `uploads/<id>`.
#[derive(Debug, PartialEq)]
pub(super) struct Session {
    pub(super) repo: RepoName,
    pub(super) alg: Algorithm,
    pub(super) offset: u64,
    pub(super) data_key: String,
    pub(super) upload_id: Option<String>,
    /// Seconds since the epoch when the session started.
    pub(super) started: u64,
    pub(super) hash_state: Vec<u8>,
    pub(super) etags: Vec<String>,
    /// The bytes after the last part.
    pub(super) tail: Vec<u8>,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Session {
    pub(super) fn encode(&self) -> Vec<u8> {
        let header = format!(
            "{STATE_MAGIC}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n{}\n",
            self.repo,
            self.alg.as_str(),
            self.offset,
            self.data_key,
            self.upload_id.as_deref().unwrap_or("-"),
            self.started,
            hex(&self.hash_state),
            self.etags.join(" "),
            self.tail.len(),
        );
        let crc = crc32fast::hash(header.as_bytes()) ^ crc32fast::hash(&self.tail);
        let mut out = format!("{header}{crc:08x}\n").into_bytes();
        out.extend_from_slice(&self.tail);
        out
    }

    /// A stored session, or `None` when the object is not one (torn, tampered, foreign).
    pub(super) fn decode(bytes: &[u8]) -> Option<Session> {
        let mut lines = Vec::with_capacity(11);
        let mut at = 0;
        while lines.len() < 11 {
            let end = at + bytes.get(at..)?.iter().position(|&b| b == b'\n')?;
            lines.push(std::str::from_utf8(&bytes[at..end]).ok()?);
            at = end + 1;
        }
        let header_len = at - lines[10].len() - 1;
        let tail = &bytes[at..];
        let crc = u32::from_str_radix(lines[10], 16).ok()?;
        if lines[0] != STATE_MAGIC
            || crc != crc32fast::hash(&bytes[..header_len]) ^ crc32fast::hash(tail)
            || lines[9].parse::<usize>().ok()? != tail.len()
        {
            return None;
        }
        let etags = if lines[8].is_empty() {
            Vec::new()
        } else {
            lines[8].split(' ').map(str::to_owned).collect()
        };
        Some(Session {
            repo: lines[1].parse().ok()?,
            alg: lines[2].parse().ok()?,
            offset: lines[3].parse().ok()?,
            data_key: lines[4].to_owned(),
            upload_id: (lines[5] != "-").then(|| lines[5].to_owned()),
            started: lines[6].parse().ok()?,
            hash_state: unhex(lines[7])?,
            etags,
            tail: tail.to_vec(),
        })
    }

    /// A writer continuing the session (`None` if its hash state does not load).
    pub(super) fn writer(self, store: Arc<ObjectStore>) -> Option<BlobWriter> {
        let hasher = Hasher::restore(self.alg, &self.hash_state)?;
        let mut w = BlobWriter::new(store, self.data_key, hasher);
        w.offset = self.offset;
        w.buf = self.tail;
        w.upload_id = self.upload_id;
        w.etags = self.etags;
        Some(w)
    }

    /// The session as `w` leaves it (settled, not failed).
    pub(super) fn after(repo: RepoName, alg: Algorithm, started: u64, w: &BlobWriter) -> Session {
        Session {
            repo,
            alg,
            offset: w.offset,
            data_key: w.data_key.clone(),
            upload_id: w.upload_id.clone(),
            started,
            hash_state: w.hasher.save(),
            etags: w.etags.clone(),
            tail: w.buf.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session() -> Session {
        let mut h = Algorithm::Sha256.hasher();
        h.update(b"hello");
        Session {
            repo: "a/b".parse().unwrap(),
            alg: Algorithm::Sha256,
            offset: 5,
            data_key: "data/x".into(),
            upload_id: Some("up-1".into()),
            started: 1_796_198_978,
            hash_state: h.save(),
            etags: vec!["\"e1\"".into(), "\"e2\"".into()],
            tail: b"tail\nbytes".to_vec(),
        }
    }

    /// The session in the fuzz corpus (written by hand to the documented format) decodes.
    #[test]
    fn the_corpus_session_is_one() {
        let bytes = include_bytes!("../../../fuzz/corpus/object_store/s3-session");
        let s = Session::decode(bytes).expect("decodes");
        assert_eq!((s.offset, s.tail.as_slice()), (11, &b"tail bytes\n"[..]));
    }

    #[test]
    fn sessions_round_trip_and_refuse_tearing() {
        let s = session();
        let bytes = s.encode();
        assert_eq!(Session::decode(&bytes), Some(session()));
        let empty = Session {
            upload_id: None,
            etags: Vec::new(),
            tail: Vec::new(),
            ..session()
        };
        assert_eq!(Session::decode(&empty.encode()), Some(empty));
        // Torn (a byte short), tampered in the header or in the tail: not a session.
        assert_eq!(Session::decode(&bytes[..bytes.len() - 1]), None);
        let mut t = bytes.clone();
        t[20] ^= 1;
        assert_eq!(Session::decode(&t), None);
        let mut t = bytes.clone();
        *t.last_mut().unwrap() ^= 1;
        assert_eq!(Session::decode(&t), None);
        assert_eq!(Session::decode(b"wharf-upload-v1\n"), None);
    }
}
