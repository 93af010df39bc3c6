//! The content-addressed blob store and per-repository blob links.

use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{Result, Storage, StoreError, fsio};
use crate::oci::{Digest, RepoName};

impl Storage {
    /// Size of a blob that `repo` may serve, or `None`. A blob reported present is held (see
    /// `hold_blob_data`): the client may rely on it for a manifest.
    pub fn blob_size(&self, repo: &RepoName, d: &Digest) -> Result<Option<u64>> {
        if !self.layer_link(repo, d).exists() {
            return Ok(None);
        }
        Ok(self.hold_blob_data(d)?.map(|(_, len)| len))
    }

    /// Open a blob that `repo` may serve (held like `blob_size`: HEAD is how clients ask).
    pub fn open_blob(&self, repo: &RepoName, d: &Digest) -> Result<(std::fs::File, u64)> {
        if !self.layer_link(repo, d).exists() {
            return Err(StoreError::BlobUnknown);
        }
        self.hold_blob_data(d)?.ok_or(StoreError::BlobUnknown)
    }

    /// Open a stored blob and keep it out of garbage collection's reach for `gc.grace`: its mtime
    /// is refreshed when older than `hold_refresh`, and a blob the collector is removing this
    /// moment is taken back from its trash. Every path that tells a client a blob exists, or relies
    /// on one for a manifest, comes through here (docs/gc.md has the argument why this is safe).
    pub fn hold_blob_data(&self, d: &Digest) -> io::Result<Option<(std::fs::File, u64)>> {
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
    pub async fn link_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        fsio::touch(&self.layer_link(repo, d)).await?;
        Ok(())
    }

    /// Remove `repo`'s link to a blob (the data stays until garbage collection).
    pub fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        if fsio::remove_if_exists(&self.layer_link(repo, d))? {
            Ok(())
        } else {
            Err(StoreError::BlobUnknown)
        }
    }

    /// Cross-repository mount: link `d` into `repo` if `from` serves it (or, without `from`, if the
    /// store holds it). Returns whether the mount happened.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool> {
        let available = match from {
            Some(src) => self.blob_size(src, d)?.is_some(),
            None => self.hold_blob_data(d)?.is_some(),
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
        &self,
        tmp: &Path,
        d: &Digest,
        link: Option<&RepoName>,
    ) -> io::Result<()> {
        let target = self.blob_path(d);
        let touch_link = async {
            match link {
                Some(repo) => fsio::touch(&self.layer_link(repo, d)).await,
                None => Ok(()),
            }
        };
        if self.hold_blob_data(d)?.is_some() {
            std::fs::remove_file(tmp)?;
            return touch_link.await;
        }
        let dir = target.parent().expect("blob paths have a parent");
        fsio::ensure_dir(dir).await?;
        std::fs::rename(tmp, &target)?;
        // The directory's fsync and the link (with its own directory fsync) run together: the
        // answer waits for both, and a link whose data a crash lost is never served (links are
        // only read together with the data, see `blob_size`).
        let (stored, linked) = monoio::join!(fsio::fsync_dir(dir), touch_link);
        stored.and(linked)
    }

    /// Whether the store holds a blob at all (any repository); holds it like `blob_size`.
    pub fn has_blob_data(&self, d: &Digest) -> io::Result<bool> {
        Ok(self.hold_blob_data(d)?.is_some())
    }
}
