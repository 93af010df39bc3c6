//! Large blocks written around the page cache (`O_DIRECT`). A pushed blob's bytes are hashed in
//! the socket buffer, moved within it to where their aligned run sits at an aligned address, and
//! written from there straight to the device: no page-cache pages are allocated and filled for them (on this project's VMs a
//! buffered write cost 5.5 ms of kernel CPU per MiB, a direct one 0.15 ms, `fio` in
//! docs/performance.md), and the commit's fsync has only metadata and the block edges left to
//! flush. The bytes before the block's first aligned offset and after its last one go through the
//! page cache, so any chunk boundary works; they never share a page with the direct run.

use std::io;
use std::path::Path;

use crate::net::file::DataFile;
use crate::net::pool::{Block, give_block};

/// Direct writes are aligned to this (the largest logical block size in common use; a multiple
/// of every smaller one).
pub(super) const ALIGN: usize = 4096;
/// Blocks shorter than this go through the page cache (their copy and extra writes would cost
/// more than the page cache does).
pub(super) const DIRECT_FROM: usize = 64 << 10;
static UNSUPPORTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static OFF: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static DIRECT_BYTES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Bytes written around the page cache so far (`wharf_direct_write_bytes_total`).
pub fn direct_bytes() -> u64 {
    DIRECT_BYTES.load(std::sync::atomic::Ordering::Relaxed)
}

/// Turn direct writes on or off for the process (`storage.direct_writes`, at startup).
pub fn set_direct_writes(on: bool) {
    OFF.store(!on, std::sync::atomic::Ordering::Relaxed);
}

/// Whether direct writes are wanted and worth trying (the store's filesystem has not refused one).
pub(super) fn enabled() -> bool {
    !OFF.load(std::sync::atomic::Ordering::Relaxed)
        && !UNSUPPORTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The store's filesystem refused `O_DIRECT` (tmpfs, some FUSE and network filesystems): every
/// later block goes through the page cache.
fn refuse() {
    if !UNSUPPORTED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::info!(
            "the store's filesystem refuses O_DIRECT; blobs are written through the page cache"
        );
    }
}

/// A second descriptor of `path` for direct writes, or `None` where the filesystem has none.
/// Opened on the blocking pool, as the writer's own descriptor is (`writer::open_rw`).
pub(super) async fn open(path: &Path) -> io::Result<Option<DataFile>> {
    let p = path.to_owned();
    let job = move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(p)
    };
    match crate::blocking::run(job).await? {
        Ok(f) => DataFile::new(f).map(Some),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            refuse();
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// How a block of `len` bytes at file offset `at` splits: the bytes before the first aligned
/// offset and the aligned run after them (the rest follows).
pub(super) fn split(at: u64, len: usize) -> (usize, usize) {
    let head = (ALIGN - (at % ALIGN as u64) as usize) % ALIGN;
    if head >= len {
        return (len, 0);
    }
    (head, (len - head) / ALIGN * ALIGN)
}

/// A block whose aligned run sits at an aligned address: `buf[start..start + len]`
/// holds the bytes for file offset `at`.
pub(super) struct Staged {
    buf: Vec<u8>,
    start: usize,
    len: usize,
    at: u64,
}

impl Staged {
    /// `block` (for file offset `at`), its bytes moved within its own buffer so that its
    /// aligned run starts at an aligned address (or, if the buffer has no room for that, copied
    /// into a new one).
    pub(super) fn new(block: Block, at: u64) -> Staged {
        let (mut buf, range) = block.into_parts();
        let len = range.len();
        let addr = buf.as_ptr() as usize;
        let start = (at as usize).wrapping_sub(addr) % ALIGN;
        if start + len > buf.capacity() {
            let mut copy = Vec::with_capacity(len + 2 * ALIGN);
            let addr = copy.as_ptr() as usize;
            let start = (at as usize).wrapping_sub(addr) % ALIGN;
            copy.resize(start, 0);
            copy.extend_from_slice(&buf[range]);
            give_block(buf);
            return Staged {
                buf: copy,
                start,
                len,
                at,
            };
        }
        if buf.len() < start + len {
            buf.resize(start + len, 0);
        }
        buf.copy_within(range, start);
        debug_assert_eq!(buf.as_ptr() as usize, addr, "the block's buffer moved");
        Staged {
            buf,
            start,
            len,
            at,
        }
    }

    /// Write the block: its edges through `file`, its aligned run through `direct` (or `file`
    /// when the filesystem refuses it). The buffer returns to this thread's block pool.
    pub(super) async fn write(self, file: &DataFile, direct: &DataFile) -> io::Result<()> {
        let Staged {
            mut buf,
            start,
            len,
            at,
        } = self;
        let (head, mid) = split(at, len);
        let parts = [
            (start, head, false),
            (start + head, mid, true),
            (start + head + mid, len - head - mid, false),
        ];
        let mut res = Ok(());
        for (from, n, aligned) in parts {
            if n == 0 {
                continue;
            }
            let pos = at + (from - start) as u64;
            let range = from..from + n;
            let direct_ok = aligned && enabled();
            let (r, b) = if direct_ok {
                debug_assert_eq!((buf.as_ptr() as usize + from) % ALIGN, 0);
                direct.write_all_at(buf, range.clone(), pos).await
            } else {
                file.write_all_at(buf, range.clone(), pos).await
            };
            buf = b;
            match r {
                Ok(()) if direct_ok => {
                    DIRECT_BYTES.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                }
                Ok(()) => {}
                Err(e)
                    if direct_ok && e.raw_os_error() == Some(libc::EINVAL) && !buf.is_empty() =>
                {
                    refuse();
                    let (r, b) = file.write_all_at(buf, range, pos).await;
                    buf = b;
                    res = r;
                }
                Err(e) => res = Err(e),
            }
            if res.is_err() || buf.is_empty() {
                break;
            }
        }
        if buf.is_empty() && res.is_ok() {
            res = Err(io::Error::other("a staged block write lost its buffer"));
        }
        give_block(buf);
        res
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_splits_into_an_unaligned_head_an_aligned_run_and_a_short_tail() {
        assert_eq!(split(0, 3 * 4096 + 5), (0, 3 * 4096));
        assert_eq!(split(100, 3 * 4096), (3996, 2 * 4096));
        assert_eq!(split(4095, 10), (1, 0));
        assert_eq!(split(10, 100), (100, 0));
        assert_eq!(split(8192, 4096), (0, 4096));
        for at in [0u64, 1, 511, 4095, 4096, 1 << 20, (1 << 20) + 17] {
            for len in [1usize, 4095, 4096, 65_537, 524_288, 1 << 20] {
                let (h, m) = split(at, len);
                assert!(h + m <= len);
                assert_eq!(m % ALIGN, 0);
                if m > 0 {
                    assert_eq!((at + h as u64) % ALIGN as u64, 0);
                    assert!(len - h - m < ALIGN);
                }
            }
        }
    }

    #[test]
    fn a_staged_block_puts_its_aligned_run_at_an_aligned_address() {
        let bytes: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        for at in [0u64, 1, 4000, 4096, 12_345] {
            for (cap, from) in [(1 << 20, 0), (1 << 20, 333), (1 << 20, 7000), (200_100, 0)] {
                let mut buf = Vec::with_capacity(cap);
                buf.resize(from, 0);
                buf.extend_from_slice(&bytes);
                let s = Staged::new(Block::new(buf, from..from + bytes.len()), at);
                assert_eq!(&s.buf[s.start..s.start + s.len], &bytes[..]);
                let (head, _) = split(at, bytes.len());
                assert_eq!((s.buf.as_ptr() as usize + s.start + head) % ALIGN, 0);
            }
        }
    }
}
