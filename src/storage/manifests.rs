//! Manifests (stored as blobs, exactly as pushed), revisions, tags, referrers and the catalog.

use std::io;
use std::path::Path;

use super::{Result, Storage, StoreError, fsio, random_id};
use crate::oci::manifest::{self, Parsed};
use crate::oci::{Digest, RepoName, Tag};

/// A manifest ready to be served.
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub file: std::fs::File,
    pub len: u64,
}

fn read_small(path: &Path) -> io::Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn referrer_file_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

impl Storage {
    /// Store manifest bytes under `digest` in `repo` (blob first, then the revision link, then the
    /// referrer entry), each step atomic, so a crash never leaves a link to missing bytes.
    pub async fn put_manifest(
        &self,
        repo: &RepoName,
        bytes: &[u8],
        digest: &Digest,
        parsed: &Parsed,
    ) -> Result<()> {
        if !self.has_blob_data(digest)? {
            let tmp = self.uploads_dir().join(format!(".tmp-{}", random_id()));
            let written = async {
                std::fs::write(&tmp, bytes)?;
                fsio::fsync_path(&tmp).await?;
                self.commit_temp(&tmp, digest, None).await
            }
            .await;
            if let Err(e) = written {
                let _ = fsio::remove_if_exists(&tmp);
                return Err(e.into());
            }
        }
        fsio::write_atomic(
            &self.revision_link(repo, digest),
            parsed.media_type.as_bytes(),
        )
        .await?;
        if let Some(subject) = &parsed.subject {
            let desc = manifest::referrer_descriptor(parsed, digest, bytes.len() as u64);
            let path = self
                .referrers_dir(repo, subject)
                .join(referrer_file_name(digest));
            fsio::write_atomic(&path, &desc).await?;
        }
        Ok(())
    }

    /// Point `tag` at `digest` (atomic rename; concurrent writers leave one winner).
    pub async fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        fsio::write_atomic(
            &self.tags_dir(repo).join(tag.as_str()),
            digest.to_string().as_bytes(),
        )
        .await?;
        Ok(())
    }

    /// The digest a tag points at.
    pub fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Digest> {
        let text = read_small(&self.tags_dir(repo).join(tag.as_str()))?
            .ok_or(StoreError::ManifestUnknown)?;
        text.trim()
            .parse()
            .map_err(|_| StoreError::Io(io::Error::other("corrupt tag file")))
    }

    /// Open a manifest of `repo` by digest.
    pub fn open_manifest(&self, repo: &RepoName, d: &Digest) -> Result<StoredManifest> {
        let media_type =
            read_small(&self.revision_link(repo, d))?.ok_or(StoreError::ManifestUnknown)?;
        let file = match std::fs::File::open(self.blob_path(d)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::ManifestUnknown);
            }
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        Ok(StoredManifest {
            digest: d.clone(),
            media_type,
            file,
            len,
        })
    }

    /// The tags of `repo` that point at `d`, in lexical order.
    pub fn tags_pointing_at(&self, repo: &RepoName, d: &Digest) -> Result<Vec<Tag>> {
        let tags_dir = self.tags_dir(repo);
        let wanted = d.to_string();
        let mut out = Vec::new();
        for tag in self.tag_names(repo)? {
            if read_small(&tags_dir.join(&tag))?.is_some_and(|t| t.trim() == wanted) {
                out.push(tag.parse().expect("tag_names returns valid tags"));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Delete a manifest revision, the tags that point at it and its referrer entry. `decided` are
    /// the tags the request was authorized to remove: if another tag points at the manifest now
    /// (moved there since), nothing is deleted and the answer is `TagMoved`, so a delete never
    /// takes a tag nobody decided on, nor leaves a tag pointing at nothing.
    pub fn delete_manifest(&self, repo: &RepoName, d: &Digest, decided: &[Tag]) -> Result<()> {
        let link = self.revision_link(repo, d);
        let media_type = read_small(&link)?.ok_or(StoreError::ManifestUnknown)?;
        let tags = self.tags_pointing_at(repo, d)?;
        if let Some(t) = tags.iter().find(|t| !decided.contains(t)) {
            return Err(StoreError::TagMoved(t.to_string()));
        }
        if let Ok(bytes) = std::fs::read(self.blob_path(d))
            && let Ok(parsed) = manifest::parse(&bytes, Some(&media_type))
            && let Some(subject) = parsed.subject
        {
            fsio::remove_if_exists(
                &self
                    .referrers_dir(repo, &subject)
                    .join(referrer_file_name(d)),
            )?;
        }
        let tags_dir = self.tags_dir(repo);
        for tag in &tags {
            fsio::remove_if_exists(&tags_dir.join(tag.as_str()))?;
        }
        fsio::remove_if_exists(&link)?;
        Ok(())
    }

    /// Remove a tag (the manifest stays).
    pub fn delete_tag(&self, repo: &RepoName, tag: &Tag) -> Result<()> {
        if fsio::remove_if_exists(&self.tags_dir(repo).join(tag.as_str()))? {
            Ok(())
        } else {
            Err(StoreError::ManifestUnknown)
        }
    }

    fn tag_names(&self, repo: &RepoName) -> Result<Vec<String>> {
        let mut tags = Vec::new();
        let entries = match std::fs::read_dir(self.tags_dir(repo)) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(tags),
            Err(e) => return Err(e.into()),
        };
        for entry in entries {
            let name = entry?.file_name().into_string().unwrap_or_default();
            if name.parse::<Tag>().is_ok() {
                tags.push(name);
            }
        }
        Ok(tags)
    }

    /// The repository's tags in lexical order; `NameUnknown` if the repository does not exist.
    pub fn list_tags(&self, repo: &RepoName) -> Result<Vec<String>> {
        if !self.repo_dir(repo).is_dir() {
            return Err(StoreError::NameUnknown);
        }
        let mut tags = self.tag_names(repo)?;
        tags.sort_unstable();
        Ok(tags)
    }

    /// Every repository name, in lexical order.
    pub fn catalog(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let base = self.root.join("repositories");
        let mut stack = vec![(base, String::new())];
        while let Some((dir, prefix)) = stack.pop() {
            let entries = match std::fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().into_string().unwrap_or_default();
                if !entry.file_type()?.is_dir() || name.starts_with('.') {
                    continue;
                }
                if name.starts_with('_') {
                    if (name == "_manifests" || name == "_layers")
                        && out.last().is_none_or(|l| *l != prefix)
                    {
                        out.push(prefix.clone());
                    }
                    continue;
                }
                let child = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}/{name}")
                };
                stack.push((entry.path(), child));
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    /// Referrer descriptors (JSON objects) of `subject` in `repo`.
    pub fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Vec<u8>>> {
        let dir = self.referrers_dir(repo, subject);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort_unstable();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(s) = read_small(&dir.join(n))? {
                out.push(s.into_bytes());
            }
        }
        Ok(out)
    }
}
