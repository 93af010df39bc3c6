//! The content-addressed blob store and per-repository blob links.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use super::cached::Cached;
use super::{BlobContent, BlobRead, Filesystem, Result, StoreError, fsio};
use crate::oci::{Digest, RepoName};

/// A stored file as blob content: the file itself (test builds may make it a stream instead, see
/// `task::blobs_as_streams`).
fn file_content(file: std::fs::File, size: u64) -> BlobContent {
    #[cfg(feature = "fault-hooks")]
    if let Some(mode) = crate::task::blobs_as_streams() {
        if mode == "redirect" {
            return BlobContent::Redirect(format!("http://127.0.0.1:9/elsewhere?size={size}"));
        }
        let short = u64::from(mode == "short");
        return BlobContent::Stream(Box::new(move |offset, len| {
            let source = FileChunks {
                file: file.try_clone().and_then(crate::net::file::DataFile::new),
                pos: offset,
                end: (offset + len).min(size) - short.min(len),
            };
            crate::net::stream::ByteStream::new(len, Box::new(source))
        }));
    }
    let _ = size;
    BlobContent::File(file)
}

/// A file region read block by block (test builds' stand-in for an object-store stream).
#[cfg(feature = "fault-hooks")]
struct FileChunks {
    file: std::io::Result<crate::net::file::DataFile>,
    pos: u64,
    end: u64,
}

#[cfg(feature = "fault-hooks")]
impl crate::net::stream::Chunks for FileChunks {
    fn next_chunk(&mut self) -> crate::net::stream::NextChunk<'_> {
        Box::pin(async move {
            let file = self
                .file
                .as_ref()
                .map_err(|e| io::Error::new(e.kind(), e.to_string()))?;
            if self.pos >= self.end {
                return Ok(None);
            }
            let want = (self.end - self.pos).min(256 * 1024) as usize;
            let (got, buf) = file.read_at(Vec::with_capacity(want), self.pos, want).await;
            match got? {
                0 => Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "blob file shrank",
                )),
                n => {
                    self.pos += n as u64;
                    Ok(Some(buf))
                }
            }
        })
    }
}

impl Filesystem {
    /// Size of a blob that `repo` may serve, or `None`. A blob reported present is held (see
    /// `hold_blob_data`): the client may rely on it for a manifest. Never reads the content.
    pub(crate) async fn blob_size(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Option<u64>> {
        match self.small_blob_cached(repo, d, 0, true) {
            Ok(Cached::Hit(read)) => return Ok(Some(read.size)),
            Err(StoreError::BlobUnknown) => return Ok(None),
            Ok(Cached::Miss) => {}
            Err(e) => return Err(e),
        }
        let (s, repo, d) = (Arc::clone(self), repo.clone(), d.clone());
        Ok(fsio::off(move || s.blob_size_now(&repo, &d)).await?)
    }

    fn blob_size_now(&self, repo: &RepoName, d: &Digest) -> io::Result<Option<u64>> {
        if !self.layer_link(repo, d).exists() {
            return Ok(None);
        }
        Ok(self.hold_blob_data(d)?.map(|(_, len)| len))
    }

    /// Open a blob that `repo` may serve (held like `blob_size`); blobs of at most `inline` bytes
    /// come back read.
    pub(crate) async fn open_blob(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        inline: u64,
    ) -> Result<BlobRead> {
        if let Cached::Hit(read) = self.small_blob_cached(repo, d, inline, false)? {
            return Ok(read);
        }
        let (s, repo, d) = (Arc::clone(self), repo.clone(), d.clone());
        let found = fsio::off(move || {
            if !s.layer_link(&repo, &d).exists() {
                return Ok(None);
            }
            match s.hold_blob_data(&d)? {
                Some((file, size)) if size <= inline => {
                    use std::os::unix::fs::FileExt;
                    let mut buf = vec![0u8; size as usize];
                    file.read_exact_at(&mut buf, 0)?;
                    Ok(Some(BlobRead {
                        size,
                        content: BlobContent::Bytes(buf),
                    }))
                }
                Some((file, size)) => Ok(Some(BlobRead {
                    size,
                    content: file_content(file, size),
                })),
                None => Ok(None),
            }
        })
        .await?;
        found.ok_or(StoreError::BlobUnknown)
    }

    /// Open a stored blob and keep it out of garbage collection's reach for `gc.grace`: its mtime
    /// is refreshed when older than `hold_refresh`, and a blob the collector is removing this
    /// moment is taken back from its trash. Every path that tells a client a blob exists, or relies
    /// on one for a manifest, comes through here (docs/gc.md has the argument why this is safe).
    pub(crate) fn hold_blob_data(&self, d: &Digest) -> io::Result<Option<(std::fs::File, u64)>> {
        let path = self.blob_path(d);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match std::fs::rename(self.gc_trash_path(d), &path) {
                    Ok(()) => std::fs::File::open(&path)?,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let now = std::time::SystemTime::now();
        let age = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .unwrap_or_default();
        if age >= self.hold_refresh
            && let Err(e) = file.set_modified(now)
        {
            // Serving goes on; only the collector's grace for this blob is not renewed. Said once
            // at warn (a read-only mount would otherwise log on every request).
            static WARNED: AtomicBool = AtomicBool::new(false);
            if WARNED.swap(true, Ordering::Relaxed) {
                tracing::debug!("cannot refresh the mtime of blob {d}: {e}");
            } else {
                tracing::warn!(
                    "cannot refresh the mtime of blob {d} (read-only storage, or owned by another user?); do not collect garbage on this storage while that lasts: {e}"
                );
            }
        }
        Ok(Some((file, meta.len())))
    }

    /// Make a stored blob visible in `repo`.
    pub(crate) async fn link_blob(self: &Arc<Self>, repo: &RepoName, d: &Digest) -> Result<()> {
        let (s, r, digest) = (Arc::clone(self), repo.clone(), d.clone());
        let linked = fsio::off(move || s.make_link(&r, &digest)).await?;
        self.sync_link(repo, d, linked).await?;
        Ok(())
    }

    /// Link `d` into `repo` (blocking): a second name of the blob's file, so that a link costs a
    /// directory entry and no inode of its own. When that cannot be (the collector has the
    /// blob's file parked this moment; the file has as many names as the filesystem allows, as
    /// a base layer in 65,000 repositories on ext4 would; a filesystem without hard links) an
    /// empty marker file does instead, as every link did before hard links; either way a link is
    /// only read together with the blob's data (`blob_size`). Returns the directories created on
    /// the way and whether the link is new.
    fn make_link(&self, repo: &RepoName, d: &Digest) -> io::Result<(Vec<PathBuf>, bool)> {
        let link = self.layer_link(repo, d);
        let created = fsio::create_missing(link.parent().expect("links have a parent"))?;
        let made = match std::fs::hard_link(self.blob_path(d), &link) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&link)
                .map(drop),
            other => other,
        };
        match made {
            Ok(()) => Ok((created, true)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok((created, false)),
            Err(e) => Err(e),
        }
    }

    /// Make a link `make_link` created durable: the directories it created, then its own entry.
    /// (The blob's inode gains a link count: a journalling filesystem commits it with the entry;
    /// without a journal, the e2fsck that follows a crash recounts it.)
    async fn sync_link(
        &self,
        repo: &RepoName,
        d: &Digest,
        (created, new): (Vec<PathBuf>, bool),
    ) -> io::Result<()> {
        fsio::sync_created(&created).await?;
        if !new {
            return Ok(());
        }
        fsio::fsync_dir(
            self.layer_link(repo, d)
                .parent()
                .expect("links have a parent"),
        )
        .await
    }

    /// Remove `repo`'s link to a blob (the data stays until garbage collection).
    pub(crate) async fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        if fsio::remove(&self.layer_link(repo, d)).await? {
            Ok(())
        } else {
            Err(StoreError::BlobUnknown)
        }
    }

    /// Cross-repository mount: link `d` into `repo` if `from` serves it (or, without `from`, if the
    /// store holds it). Returns whether the mount happened.
    pub(crate) async fn mount_blob(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool> {
        let available = match from {
            Some(src) => self.blob_size(src, d).await?.is_some(),
            None => self.has_blob_data(d).await?,
        };
        if available {
            self.link_blob(repo, d).await?;
        }
        Ok(available)
    }

    /// Move a verified, fsynced temp file into the content-addressed store, and link it into
    /// `link` if given. Identical content may already be there (another push won the race); then
    /// the temp file is simply removed.
    pub(super) async fn commit_temp(
        self: &Arc<Self>,
        tmp: &Path,
        d: &Digest,
        link: Option<&RepoName>,
    ) -> io::Result<()> {
        let target = self.blob_path(d);
        let (s, digest, from, to) = (Arc::clone(self), d.clone(), tmp.to_owned(), target.clone());
        let repo = link.cloned();
        // Already stored (another push won the race): drop ours. Otherwise move it in. Then the
        // link, to whichever file is stored.
        let (moved, linked) = fsio::off(move || {
            let moved = if s.hold_blob_data(&digest)?.is_some() {
                std::fs::remove_file(&from)?;
                None
            } else {
                let created = fsio::create_missing(to.parent().expect("blob paths have a parent"))?;
                std::fs::rename(&from, &to)?;
                Some(created)
            };
            let linked = repo.map(|r| s.make_link(&r, &digest)).transpose()?;
            Ok((moved, linked))
        })
        .await?;
        let stored = async {
            let Some(created) = moved else {
                return Ok(());
            };
            fsio::sync_created(&created).await?;
            fsio::fsync_dir(target.parent().expect("blob paths have a parent")).await
        };
        let link_synced = async {
            match (link, linked) {
                (Some(repo), Some(l)) => self.sync_link(repo, d, l).await,
                _ => Ok(()),
            }
        };
        // The store's directory fsync and the link's run together: the answer waits for both,
        // and a link whose data a crash lost is never served (links are only read together with
        // the data, see `blob_size`).
        let (stored, linked) = monoio::join!(stored, link_synced);
        stored.and(linked)
    }

    /// Whether the store holds a blob at all (any repository); holds it like `blob_size`.
    pub(crate) async fn has_blob_data(self: &Arc<Self>, d: &Digest) -> io::Result<bool> {
        let (s, d) = (Arc::clone(self), d.clone());
        fsio::off(move || Ok(s.hold_blob_data(&d)?.is_some())).await
    }
}
