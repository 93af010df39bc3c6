//! Files from a worker without blocking it (`DataFile`: io_uring, or the blocking pool under epoll),
//! a file region to a plain TCP socket (`sendfile(2)` from the page cache, a buffered copy of what
//! is not cached), and the positioned block read the TLS path shares.

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::pool::{BLOCK_BUF, give_block, take_block};
use super::stalled;

/// How a file body was sent, for `wharf_file_sends_total{path}`.
#[derive(Clone, Copy)]
pub enum SendPath {
    /// To a plain TCP peer (`send_region`: `sendfile(2)`, a copy of cold windows).
    Sendfile = 0,
    /// Read, encrypt and write (TLS).
    Tls = 1,
    /// A stream from elsewhere (`net::stream`), written as it arrives, over any transport.
    Stream = 2,
}

pub const SEND_PATHS: [&str; 3] = ["sendfile", "tls", "stream"];
static SENDS: [std::sync::atomic::AtomicU64; 3] =
    [const { std::sync::atomic::AtomicU64::new(0) }; 3];

/// Count one file body sent by `path`.
pub fn count_send(path: SendPath) {
    SENDS[path as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// File bodies sent so far, by path (in `SEND_PATHS` order).
pub fn sends() -> [u64; 3] {
    SENDS
        .each_ref()
        .map(|a| a.load(std::sync::atomic::Ordering::Relaxed))
}

thread_local! {
    /// This worker runs io_uring (file operations go to the ring, not to the blocking pool).
    static RING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Say whether this thread's runtime is io_uring (set once when a worker starts).
pub fn use_ring(on: bool) {
    RING.with(|r| r.set(on));
}

/// Whether this thread's runtime is io_uring.
pub fn ring() -> bool {
    RING.with(|r| r.get())
}

/// An open file whose reads, writes and fsyncs never block the worker: io_uring operations under
/// io_uring, the blocking pool under epoll (where monoio would run them inline).
pub struct DataFile(Inner);

enum Inner {
    Ring(monoio::fs::File),
    Pool(std::sync::Arc<std::fs::File>),
}

impl DataFile {
    pub fn new(file: std::fs::File) -> io::Result<DataFile> {
        Ok(DataFile(if ring() {
            Inner::Ring(monoio::fs::File::from_std(file)?)
        } else {
            Inner::Pool(std::sync::Arc::new(file))
        }))
    }

    /// Read up to `want` bytes at `pos` into `buf` (cleared first); `Ok(0)` at the end.
    pub async fn read_at(
        &self,
        mut buf: Vec<u8>,
        pos: u64,
        want: usize,
    ) -> (io::Result<usize>, Vec<u8>) {
        buf.clear();
        match &self.0 {
            Inner::Ring(f) => {
                let (res, slice) = f.read_at(buf.slice_mut(0..want), pos).await;
                (res, slice.into_inner())
            }
            Inner::Pool(f) => {
                let f = std::sync::Arc::clone(f);
                let job = move || {
                    use std::os::unix::fs::FileExt;
                    buf.resize(want, 0);
                    let res = loop {
                        match f.read_at(&mut buf, pos) {
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                            other => break other,
                        }
                    };
                    buf.truncate(*res.as_ref().unwrap_or(&0));
                    (res, buf)
                };
                match crate::blocking::run(job).await {
                    Ok(done) => done,
                    Err(e) => (Err(e), Vec::new()),
                }
            }
        }
    }

    /// Write `buf[range]` at `pos` completely; the buffer comes back (empty if the pool lost it).
    pub async fn write_all_at(
        &self,
        buf: Vec<u8>,
        range: std::ops::Range<usize>,
        pos: u64,
    ) -> (io::Result<()>, Vec<u8>) {
        use monoio::buf::IoBuf;
        match &self.0 {
            Inner::Ring(f) => {
                let (res, slice) = f.write_all_at(buf.slice(range), pos).await;
                (res, slice.into_inner())
            }
            Inner::Pool(f) => {
                let f = std::sync::Arc::clone(f);
                let job = move || {
                    use std::os::unix::fs::FileExt;
                    (f.write_all_at(&buf[range], pos), buf)
                };
                match crate::blocking::run(job).await {
                    Ok(done) => done,
                    Err(e) => (Err(e), Vec::new()),
                }
            }
        }
    }

    /// fsync data and metadata.
    pub async fn sync_all(&self) -> io::Result<()> {
        match &self.0 {
            Inner::Ring(f) => f.sync_all().await,
            Inner::Pool(f) => {
                let f = std::sync::Arc::clone(f);
                crate::blocking::run(move || f.sync_all()).await?
            }
        }
    }

    /// The file's length now.
    pub async fn len(&self) -> io::Result<u64> {
        match &self.0 {
            Inner::Ring(f) => Ok(f.metadata().await?.len()),
            Inner::Pool(f) => {
                let f = std::sync::Arc::clone(f);
                Ok(crate::blocking::run(move || f.metadata()).await??.len())
            }
        }
    }
}

impl AsRawFd for DataFile {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        match &self.0 {
            Inner::Ring(f) => f.as_raw_fd(),
            Inner::Pool(f) => f.as_raw_fd(),
        }
    }
}

/// Read up to `want` bytes of `file` at `pos` into `buf` (cleared first); reaching the end of the
/// file before `want` bytes is an error, since the response already announced its length.
pub async fn read_block(
    file: &DataFile,
    buf: Vec<u8>,
    pos: u64,
    want: usize,
) -> (io::Result<usize>, Vec<u8>) {
    let (res, buf) = file.read_at(buf, pos, want).await;
    let res = match res {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shorter than announced",
        )),
        other => other,
    };
    (res, buf)
}

/// How much of a file `send_region` checks for page-cache residency at a time.
const WARM_WINDOW: u64 = 8 << 20;

static COLD_WINDOWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Windows `send_region` found not (all) in the page cache (copied, or read on the blocking pool
/// before `sendfile`).
pub fn cold_windows() -> u64 {
    COLD_WINDOWS.load(std::sync::atomic::Ordering::Relaxed)
}

static COPIED_WINDOWS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Of `cold_windows`, those copied through a pooled block (the rest were read on the blocking
/// pool before `sendfile`).
pub fn copied_windows() -> u64 {
    COPIED_WINDOWS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Read a file region into the page cache on the blocking pool, so that `sendfile` after it
/// copies from memory instead of waiting on the disk on the worker.
async fn warm(file: std::fs::File, offset: u64, len: u64) -> io::Result<()> {
    crate::blocking::run(move || {
        use std::os::unix::fs::FileExt;
        let mut buf = vec![0u8; 128 * 1024];
        let (mut at, end) = (offset, offset + len);
        while at < end {
            let want = ((end - at) as usize).min(buf.len());
            match file.read_at(&mut buf[..want], at) {
                Ok(0) => break,
                Ok(n) => at += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    })
    .await?
}

/// A file region to a plain TCP socket, window by window (`cachestat`): a window all in the page
/// cache goes out by `sendfile(2)`, with no copy through user space; one that is not is read
/// through a pooled block with the worker's file reads and written (the kernel's read-ahead
/// keeps ahead of those sequential 1 MiB reads), or, with `limits.response_buffer_budget`
/// spent, read into the page cache on the blocking pool first, since `sendfile` would wait on
/// the disk on the worker. Measured (docs/performance.md, 2026-12-03): `sendfile` from the page
/// cache at about twice the rate and half the server CPU of a copy, also to loopback peers; a
/// copy of a cold window at the disk's rate, where reading it first and then sending was slower.
pub async fn send_region(
    stream: &mut TcpStream,
    file: std::fs::File,
    offset: u64,
    len: u64,
    stall: Duration,
) -> io::Result<()> {
    let end = offset + len;
    let mut at = offset;
    let mut reader: Option<DataFile> = None;
    while at < end {
        let window = (end - at).min(WARM_WINDOW);
        if crate::sys::all_cached(file.as_raw_fd(), at, window) != Some(true) {
            COLD_WINDOWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(_held) = super::budget::reserve(BLOCK_BUF) {
                COPIED_WINDOWS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let reader = match &mut reader {
                    Some(r) => r,
                    none => none.insert(DataFile::new(file.try_clone()?)?),
                };
                let (res, buf) =
                    copy_blocks(stream, reader, take_block(), at, at + window, stall).await;
                give_block(buf);
                res?;
                at += window;
                continue;
            }
            // Its own descriptor: the job outlives this future if the connection goes away.
            warm(file.try_clone()?, at, window).await?;
        }
        sendfile_window(stream, &file, at, window, stall).await?;
        at += window;
    }
    Ok(())
}

/// `[offset, offset + len)` of `file` (in the page cache) by `sendfile(2)` on the temporarily
/// non-blocking socket, awaiting writability on EAGAIN.
async fn sendfile_window(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    stall: Duration,
) -> io::Result<()> {
    let sock = stream.as_raw_fd();
    let _nb = crate::sys::NonBlocking::set(sock)?;
    let mut off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    let end = offset + len;
    loop {
        let at = off as u64;
        if at >= end {
            return Ok(());
        }
        let chunk = (end - at) as usize;
        let err = match crate::sys::sendfile(sock, file.as_raw_fd(), &mut off, chunk) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shorter than announced",
                ));
            }
            Ok(_) => continue,
            Err(e) => e,
        };
        match err.kind() {
            io::ErrorKind::WouldBlock => {
                match monoio::time::timeout(stall, stream.writable(false)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(stalled()),
                }
            }
            io::ErrorKind::Interrupted => {}
            _ => return Err(err),
        }
    }
}

/// The copy of `send_region`'s cold windows; hands the buffer back (empty if a stalled write
/// took it).
async fn copy_blocks(
    stream: &mut TcpStream,
    file: &DataFile,
    mut buf: Vec<u8>,
    mut pos: u64,
    end: u64,
    stall: Duration,
) -> (io::Result<()>, Vec<u8>) {
    while pos < end {
        let want = (end - pos).min(BLOCK_BUF as u64) as usize;
        let (res, back) = read_block(file, buf, pos, want).await;
        buf = back;
        let n = match res {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        buf.truncate(n);
        match monoio::time::timeout(stall, stream.write_all(buf)).await {
            Ok((res, back)) => {
                buf = back;
                if let Err(e) = res {
                    return (Err(e), buf);
                }
            }
            // The buffer went with the cancelled write.
            Err(_) => return (Err(stalled()), Vec::new()),
        }
        pos += n as u64;
    }
    (Ok(()), buf)
}
