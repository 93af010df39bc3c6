//! Writing a blob while hashing it: the socket buffer is hashed and written with positioned
//! writes from the same memory, one block in flight for large bodies, writeback started as it
//! goes. The writer belongs to the backend (uploads and monolithic pushes both use it).

use std::io;
use std::path::{Path, PathBuf};

use super::direct::{self, Staged};
use crate::net::file::DataFile;
use crate::net::pool::Block;
use crate::oci::{Algorithm, Hasher};

/// Streams body bytes into a file while hashing them (socket buffer → SHA → positioned write).
pub(crate) struct FileWriter {
    /// For the worker's own reads, writes and fsyncs.
    pub(super) file: std::rc::Rc<DataFile>,
    /// The same file for the blocking pool, where large bodies are hashed and written.
    pub(super) sync: std::sync::Arc<std::fs::File>,
    pub(super) path: PathBuf,
    pub(super) offset: u64,
    pub(super) hasher: Hasher,
    /// A write failed: the hash no longer matches the file.
    pub(super) failed: bool,
    /// Bytes before this offset have been handed to writeback (`sync_file_range`).
    flushed: u64,
    /// The block being hashed (and written, unless direct) while the caller receives the next one
    /// (`append_pipelined`); it gives the hasher back, and its direct write if it started one.
    inflight: Option<Hashing>,
    /// The last block's direct write, going on while the next block is hashed.
    writing: Option<Write>,
    /// A second descriptor for direct writes (`direct`), opened at the first block that wants
    /// one; `None` before, or where the filesystem has none.
    direct: Option<std::rc::Rc<DataFile>>,
    direct_tried: bool,
}

type Write = monoio::task::JoinHandle<io::Result<()>>;
type Hashing = monoio::task::JoinHandle<io::Result<(Hasher, Option<Write>)>>;

/// Start writeback of an upload's data every this many bytes, so the fsync that commits the blob
/// finds most of it on disk already instead of flushing the whole blob at the end.
const WRITEBACK_STEP: u64 = 8 << 20;

impl FileWriter {
    /// A writer continuing `file` at `offset`, with `hasher` covering the bytes before it.
    /// `sync` is a second descriptor of the same file (`try_clone`).
    pub(super) fn new(
        file: DataFile,
        sync: std::sync::Arc<std::fs::File>,
        path: PathBuf,
        offset: u64,
        hasher: Hasher,
    ) -> FileWriter {
        FileWriter {
            file: std::rc::Rc::new(file),
            sync,
            path,
            offset,
            hasher,
            failed: false,
            flushed: offset,
            inflight: None,
            writing: None,
            direct: None,
            direct_tried: false,
        }
    }

    /// The direct-write descriptor for a block of `len` bytes, if it should bypass the page
    /// cache. A descriptor that cannot be opened leaves the writer on the page cache.
    async fn direct_for(&mut self, len: usize) -> Option<std::rc::Rc<DataFile>> {
        if len < direct::DIRECT_FROM || !direct::enabled() {
            return None;
        }
        if !self.direct_tried {
            self.direct_tried = true;
            match direct::open(&self.path).await {
                Ok(f) => self.direct = f.map(std::rc::Rc::new),
                Err(e) => tracing::debug!("no direct writes to {}: {e}", self.path.display()),
            }
        }
        self.direct.clone()
    }

    /// Count `len` more bytes written or, the last `in_flight` of them, still being written; start
    /// writeback of the written ones every `WRITEBACK_STEP`.
    fn advance(&mut self, len: u64, in_flight: u64) {
        self.offset += len;
        let written = self.offset - in_flight;
        if written - self.flushed >= WRITEBACK_STEP {
            self.start_writeback(written);
        }
    }

    /// Bytes written so far.
    pub(crate) fn offset(&self) -> u64 {
        self.offset
    }

    /// Hot path: hash `block` and write it at the current offset, from the same buffer (which
    /// returns to the pool when the write is done); a large block around the page cache
    /// (`direct`).
    pub(crate) async fn append(&mut self, block: Block) -> io::Result<()> {
        self.hasher.update(block.bytes());
        let len = block.len() as u64;
        let res = match self.direct_for(block.len()).await {
            Some(direct) => {
                Staged::new(block, self.offset)
                    .write(&self.file, &direct)
                    .await
            }
            None => block.write_at(&self.file, self.offset).await,
        };
        match &res {
            Ok(()) => self.advance(len, 0),
            Err(_) => self.failed = true,
        }
        res
    }

    /// Hot path for large bodies: wait for the previous block's hash, then hand `block` and the
    /// hasher to the blocking pool, which hashes and writes it (from the same buffer), and return
    /// at once. The worker only moves bytes: it receives the next block meanwhile, and its other
    /// connections are not held up by hashing (a worker hashing three pushes itself served a
    /// quarter of its GETs). A large block is written around the page cache (`direct`) from the
    /// worker's ring once hashed, while the next one is hashed. The buffer comes back and returns
    /// to the worker's pool. `settle` must follow the last block.
    pub(crate) async fn append_pipelined(&mut self, block: Block) -> io::Result<()> {
        self.settle_hash().await?;
        let alg = self.hasher.algorithm();
        let mut hasher = std::mem::replace(&mut self.hasher, alg.hasher());
        let (file, at, len) = (std::sync::Arc::clone(&self.sync), self.offset, block.len());
        let direct = self.direct_for(len).await;
        let staged = direct.is_some();
        let ring_file = std::rc::Rc::clone(&self.file);
        self.inflight = Some(crate::task::spawn("a block hash", async move {
            let job = move || {
                use std::os::unix::fs::FileExt;
                hasher.update(block.bytes());
                if staged {
                    return (Ok(()), hasher, Some(Staged::new(block, at)), None);
                }
                let written = file.write_all_at(block.bytes(), at);
                (written, hasher, None, Some(block))
            };
            // A job dropped with its request drops its block on the pool thread (whose own
            // block pool keeps at most a few).
            let (written, hasher, staged, _block) = crate::blocking::run_bulk(job).await?;
            written?;
            let write = staged.zip(direct).map(|(staged, direct)| {
                crate::task::spawn("a direct block write", async move {
                    staged.write(&ring_file, &direct).await
                })
            });
            Ok((hasher, write))
        }));
        self.advance(len as u64, len as u64);
        Ok(())
    }

    /// Wait for the block being hashed, if any; its hasher comes back. Its direct write may go
    /// on; the one before it has ended when this returns. A failure marks the writer failed (the
    /// hash no longer matches the file; the next lease re-hashes).
    async fn settle_hash(&mut self) -> io::Result<()> {
        let Some(job) = self.inflight.take() else {
            return Ok(());
        };
        let (hasher, write) = job.await.inspect_err(|_| self.failed = true)?;
        self.hasher = hasher;
        if let Some(older) = std::mem::replace(&mut self.writing, write) {
            older.await.inspect_err(|_| self.failed = true)?;
        }
        Ok(())
    }

    /// Wait for every block in flight: hashed and written (or failed, which marks the writer
    /// failed).
    pub(crate) async fn settle(&mut self) -> io::Result<()> {
        let hashed = self.settle_hash().await;
        let written = match self.writing.take() {
            Some(w) => w.await.inspect_err(|_| self.failed = true),
            None => Ok(()),
        };
        hashed.and(written)
    }

    /// Ask the kernel to start writing `flushed..end` to disk without waiting for it
    /// (`SYNC_FILE_RANGE_WRITE` only queues the I/O, but may wait for a congested device queue,
    /// so it runs on an io thread). Only a hint: the commit's fsync is what makes the blob
    /// durable, so a failure, or a full queue that skips it, is ignored.
    fn start_writeback(&mut self, end: u64) {
        let (start, len) = (self.flushed, end - self.flushed);
        let file = std::sync::Arc::clone(&self.sync);
        crate::blocking::try_detach(move || {
            use std::os::fd::AsRawFd;
            crate::sys::start_writeback(file.as_raw_fd(), start, len);
        });
        self.flushed = end;
    }
}

/// Re-hash a file from the start (on a bulk thread).
pub(super) async fn rehash(
    file: std::sync::Arc<std::fs::File>,
    alg: Algorithm,
) -> io::Result<(Hasher, u64)> {
    crate::blocking::run_bulk(move || {
        use std::os::unix::fs::FileExt;
        let mut hasher = alg.hasher();
        let mut buf = vec![0u8; 1 << 20];
        let mut off = 0u64;
        loop {
            let n = match file.read_at(&mut buf, off) {
                Ok(0) => return Ok((hasher, off)),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            off += n as u64;
        }
    })
    .await?
}

pub(super) fn open_rw(path: &Path, create: bool) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
}
