//! The content-addressed blob store and per-repository blob links.

use std::io;
use std::path::Path;

use super::{Result, Storage, StoreError, fsio};
use crate::oci::{Digest, RepoName};

impl Storage {
    /// Size of a blob that `repo` may serve, or `None`.
    pub fn blob_size(&self, repo: &RepoName, d: &Digest) -> Result<Option<u64>> {
        if !self.layer_link(repo, d).exists() {
            return Ok(None);
        }
        match std::fs::metadata(self.blob_path(d)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Open a blob that `repo` may serve.
    pub fn open_blob(&self, repo: &RepoName, d: &Digest) -> Result<(std::fs::File, u64)> {
        if !self.layer_link(repo, d).exists() {
            return Err(StoreError::BlobUnknown);
        }
        match std::fs::File::open(self.blob_path(d)) {
            Ok(f) => {
                let len = f.metadata()?.len();
                Ok((f, len))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Err(StoreError::BlobUnknown),
            Err(e) => Err(e.into()),
        }
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
            None => self.blob_path(d).exists(),
        };
        if available {
            self.link_blob(repo, d).await?;
        }
        Ok(available)
    }

    /// Move a verified, fsynced temp file into the content-addressed store. Identical content may
    /// already be there (another push won the race); then the temp file is simply removed.
    pub(super) async fn commit_temp(&self, tmp: &Path, d: &Digest) -> io::Result<()> {
        let target = self.blob_path(d);
        if target.exists() {
            std::fs::remove_file(tmp)?;
            return Ok(());
        }
        let dir = target.parent().expect("blob paths have a parent");
        fsio::ensure_dir(dir).await?;
        std::fs::rename(tmp, &target)?;
        fsio::fsync_path(dir).await
    }

    /// Whether the store holds a blob at all (any repository).
    pub fn has_blob_data(&self, d: &Digest) -> bool {
        self.blob_path(d).exists()
    }
}
