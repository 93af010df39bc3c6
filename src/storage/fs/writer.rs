//! Writing a blob while hashing it: the socket buffer is hashed and written with positioned
//! writes from the same memory, one block in flight for large bodies, writeback started as it
//! goes. The writer belongs to the backend (uploads and monolithic pushes both use it).

use std::io;
use std::path::{Path, PathBuf};

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
    /// The block being hashed and written while the caller receives the next one
    /// (`append_pipelined`); it gives the hasher back.
    inflight: Option<monoio::task::JoinHandle<io::Result<Hasher>>>,
}

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
        }
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
    /// returns to the pool when the write is done).
    pub(crate) async fn append(&mut self, block: Block) -> io::Result<()> {
        self.hasher.update(block.bytes());
        let len = block.len() as u64;
        let res = block.write_at(&self.file, self.offset).await;
        match &res {
            Ok(()) => self.advance(len, 0),
            Err(_) => self.failed = true,
        }
        res
    }

    /// Hot path for large bodies: wait for the previous block, then hand `block` and the hasher
    /// to the blocking pool, which hashes and writes it (from the same buffer), and return at
    /// once. The worker only moves bytes: it receives the next block meanwhile, and its other
    /// connections are not held up by hashing (a worker hashing three pushes itself served a
    /// quarter of its GETs). The buffer comes back and returns to the worker's pool. `settle`
    /// must follow the last block.
    pub(crate) async fn append_pipelined(&mut self, block: Block) -> io::Result<()> {
        self.settle().await?;
        let alg = self.hasher.algorithm();
        let mut hasher = std::mem::replace(&mut self.hasher, alg.hasher());
        let (file, at, len) = (std::sync::Arc::clone(&self.sync), self.offset, block.len());
        self.inflight = Some(crate::task::spawn("a block write", async move {
            let job = move || {
                use std::os::unix::fs::FileExt;
                hasher.update(block.bytes());
                let written = file.write_all_at(block.bytes(), at);
                (written, hasher, block)
            };
            // A job dropped with its request drops its block on the pool thread (whose own
            // block pool keeps at most a few).
            let (written, hasher, _block) = crate::blocking::run_bulk(job).await?;
            written.map(|()| hasher)
        }));
        self.advance(len as u64, len as u64);
        Ok(())
    }

    /// Wait for the block in flight, if any; its hasher comes back. A failure marks the writer
    /// failed (the hash no longer matches the file; the next lease re-hashes).
    pub(crate) async fn settle(&mut self) -> io::Result<()> {
        let Some(write) = self.inflight.take() else {
            return Ok(());
        };
        match write.await {
            Ok(hasher) => {
                self.hasher = hasher;
                Ok(())
            }
            Err(e) => {
                self.failed = true;
                Err(e)
            }
        }
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
