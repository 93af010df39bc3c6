//! Hot reads on the worker that cannot block: small blob and manifest GETs and blob HEADs are
//! answered from the dentry and page caches only (`sys::open_cached`, `sys::read_exact_cached`),
//! with no thread hop. Whatever would need the disk or a change (a lookup or page not cached, a
//! blob due for an mtime refresh or in the collector's trash, a large blob) answers `Miss`, and
//! the caller takes the blocking-pool path, which also gives the definitive "unknown".

use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use super::{BlobContent, BlobRead, Filesystem, StoreError};
use crate::oci::{Digest, RepoName};

/// An answer from the caches, or `Miss`.
pub(super) enum Cached<T> {
    Hit(T),
    Miss,
}

/// `Err(WouldBlock)` is a miss; other errors are answers.
fn hit<T>(r: io::Result<T>) -> super::Result<Cached<T>> {
    match r {
        Ok(v) => Ok(Cached::Hit(v)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(Cached::Miss),
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` exists, from the dentry cache.
fn exists(path: &Path) -> io::Result<bool> {
    match crate::sys::open_cached(path, libc::O_PATH) {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// The whole of a small file (`None`: it does not exist), from the caches.
pub(super) fn read_small(path: &Path) -> super::Result<Cached<Option<Vec<u8>>>> {
    hit((|| {
        let file = match crate::sys::open_cached(path, libc::O_RDONLY) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = usize::try_from(file.metadata()?.len())
            .map_err(|_| io::Error::other("file too large"))?;
        let mut buf = vec![0u8; len];
        crate::sys::read_exact_cached(file.as_raw_fd(), &mut buf, 0)?;
        Ok(Some(buf))
    })())
}

impl Filesystem {
    /// A blob of `repo` (read whole if at most `inline` bytes; only its size for `head_only`)
    /// from the caches, when nothing about it needs the pool.
    pub(super) fn small_blob_cached(
        &self,
        repo: &RepoName,
        d: &Digest,
        inline: u64,
        head_only: bool,
    ) -> super::Result<Cached<BlobRead>> {
        match hit(exists(&self.layer_link(repo, d)))? {
            Cached::Hit(true) => {}
            Cached::Hit(false) => return Err(StoreError::BlobUnknown),
            Cached::Miss => return Ok(Cached::Miss),
        }
        let file = match crate::sys::open_cached(&self.blob_path(d), libc::O_RDONLY) {
            Ok(f) => f,
            // Maybe in the collector's trash: the pool path takes it back.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Cached::Miss),
            Err(e) => return hit(Err(e)),
        };
        let meta = file.metadata()?;
        let age = meta
            .modified()
            .ok()
            .and_then(|m| std::time::SystemTime::now().duration_since(m).ok())
            .unwrap_or_default();
        let size = meta.len();
        if age >= self.hold_refresh || (!head_only && size > inline) {
            return Ok(Cached::Miss);
        }
        if head_only {
            return Ok(Cached::Hit(BlobRead {
                size,
                content: BlobContent::Bytes(Vec::new()),
            }));
        }
        let mut buf = vec![0u8; size as usize];
        Ok(
            match hit(crate::sys::read_exact_cached(file.as_raw_fd(), &mut buf, 0))? {
                Cached::Hit(()) => Cached::Hit(BlobRead {
                    size,
                    content: BlobContent::Bytes(buf),
                }),
                Cached::Miss => Cached::Miss,
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file just written is in the caches: read whole without the pool; a missing name once
    /// looked up is a cached "does not exist".
    #[test]
    fn fresh_files_are_read_from_the_caches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tag");
        std::fs::write(&path, b"sha256:abc").unwrap();
        match read_small(&path).unwrap() {
            Cached::Hit(Some(b)) => assert_eq!(b, b"sha256:abc"),
            Cached::Hit(None) => panic!("the file exists"),
            Cached::Miss => panic!("a file just written is cached"),
        }
        let missing = dir.path().join("missing");
        assert!(!missing.exists());
        assert!(matches!(read_small(&missing).unwrap(), Cached::Hit(None)));
        assert!(exists(&path).unwrap());
    }
}
