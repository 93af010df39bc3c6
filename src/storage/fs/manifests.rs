//! Manifests (stored as blobs, exactly as pushed), revisions, tags, referrers and the catalog.

use std::io;
use std::path::Path;
use std::sync::Arc;

use super::cached::Cached;
use super::{Filesystem, Result, StoreError, StoredManifest, TagExpect, fsio, page, random_id};
use crate::oci::manifest::{self, Parsed};
use crate::oci::{Digest, Reference, RepoName, Tag};

/// The digest in a tag file (`None`: no such tag).
fn parse_tag_file(text: Option<Vec<u8>>) -> Result<Digest> {
    let text = text.ok_or(StoreError::ManifestUnknown)?;
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .ok_or_else(|| StoreError::Io(io::Error::other("corrupt tag file")))
}

/// What the tag file at `path` names (`None`: no such tag).
pub(super) fn read_tag(path: &Path) -> Result<Option<Digest>> {
    read_small(path)?
        .map(|t| parse_tag_file(Some(t.into_bytes())))
        .transpose()
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

impl Filesystem {
    /// Store manifest bytes under `digest` in `repo` (blob first, then the revision link, then the
    /// referrer entry), each step atomic, so a crash never leaves a link to missing bytes.
    pub(crate) async fn put_manifest(
        self: &Arc<Self>,
        repo: &RepoName,
        bytes: &[u8],
        digest: &Digest,
        parsed: &Parsed,
    ) -> Result<()> {
        let tmp = self.uploads_dir().join(format!(".tmp-{}", random_id()));
        let (s, d, t, data) = (
            Arc::clone(self),
            digest.clone(),
            tmp.clone(),
            bytes.to_vec(),
        );
        let (r, children) = (repo.clone(), parsed.children.clone());
        // An index first holds its children (see `hold_revision`); then the bytes go to a fsynced
        // temp file unless the store holds them already.
        let written = fsio::off(move || {
            for child in &children {
                s.hold_revision(&r, child)?;
            }
            if s.hold_blob_data(&d)?.is_some() {
                return Ok(None);
            }
            fsio::create_written(&t, &data).map(Some)
        })
        .await?;
        let Some(file) = written else {
            return self.link_manifest(repo, bytes, digest, parsed).await;
        };
        fsio::sync_new(file, &tmp).await?;
        if let Err(e) = self.commit_temp(&tmp, digest, None).await {
            let _ = fsio::remove(&tmp).await;
            return Err(e.into());
        }
        self.link_manifest(repo, bytes, digest, parsed).await
    }

    /// Refresh the mtime of `d`'s revision link in `repo` when it is older than a quarter of the
    /// grace period, as a push of that manifest would. An index pushed while a collection runs
    /// thus keeps its untagged children: the collector's mark phase may have judged such a child
    /// garbage (the index was not there yet), but its second look finds the link young and keeps
    /// the child and its blobs. A child that is not stored (or already collected) is left absent.
    fn hold_revision(&self, repo: &RepoName, d: &Digest) -> io::Result<()> {
        let file = match std::fs::File::open(self.revision_link(repo, d)) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let now = std::time::SystemTime::now();
        let old = file
            .metadata()?
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= self.hold_refresh);
        if old && let Err(e) = file.set_modified(now) {
            // As for a blob's hold: the push goes on, only this child's grace is not renewed.
            tracing::warn!("cannot refresh the mtime of revision {repo}@{d}: {e}");
        }
        Ok(())
    }

    /// The revision link and referrer entry of a stored manifest.
    async fn link_manifest(
        &self,
        repo: &RepoName,
        bytes: &[u8],
        digest: &Digest,
        parsed: &Parsed,
    ) -> Result<()> {
        fsio::write_atomic(
            &self.revision_link(repo, digest),
            parsed.media_type.as_bytes().to_vec(),
        )
        .await?;
        if let Some(subject) = &parsed.subject {
            let desc = manifest::referrer_descriptor(parsed, digest, bytes.len() as u64);
            let path = self
                .referrers_dir(repo, subject)
                .join(referrer_file_name(digest));
            fsio::write_atomic(&path, desc).await?;
        }
        Ok(())
    }

    /// Point `tag` at `digest`, whatever it pointed at (concurrent writers leave one winner).
    pub(crate) async fn set_tag(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &Tag,
        digest: &Digest,
    ) -> Result<()> {
        self.update_tag(repo, tag, TagExpect::default(), Some(digest))
            .await
    }

    /// Compare and swap a tag: if what `tag` points at now satisfies `expect`, point it at `new`
    /// (`None`: remove it), else change nothing and answer `TagPrecondition`. Removing a tag that
    /// does not exist is `ManifestUnknown`. The check and the rename (or unlink) hold the
    /// repository's tag lock, so concurrent updates and manifest deletes see one order.
    pub(crate) async fn update_tag(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &Tag,
        expect: TagExpect,
        new: Option<&Digest>,
    ) -> Result<()> {
        let path = self.tags_dir(repo).join(tag.as_str());
        // The new content is written and fsynced before the lock is taken.
        let prepared = match new {
            Some(d) => Some(fsio::write_temp(&path, d.to_string().into_bytes()).await?),
            None => None,
        };
        let (s, p, r, t) = (Arc::clone(self), path.clone(), repo.clone(), tag.clone());
        let created =
            fsio::off(move || Ok(s.update_tag_now(&r, &t, &p, &expect, prepared))).await??;
        fsio::sync_created(&created).await?;
        fsio::fsync_dir(path.parent().expect("tag paths have a parent")).await?;
        Ok(())
    }

    fn update_tag_now(
        &self,
        repo: &RepoName,
        tag: &Tag,
        path: &Path,
        expect: &TagExpect,
        prepared: Option<fsio::Replacement>,
    ) -> Result<Vec<std::path::PathBuf>> {
        let result = (|| {
            let _held = self
                .tag_lock(repo)
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let current = read_tag(path)?;
            if !expect.holds(current.as_ref()) {
                return Err(StoreError::TagPrecondition {
                    target: format!("tag {tag}"),
                    current,
                });
            }
            match &prepared {
                Some(p) => std::fs::rename(&p.temp, path)?,
                None if current.is_none() => return Err(StoreError::ManifestUnknown),
                None => std::fs::remove_file(path)?,
            }
            Ok(())
        })();
        match (result, prepared) {
            (Ok(()), Some(p)) => Ok(p.created),
            (Ok(()), None) => Ok(Vec::new()),
            (Err(e), p) => {
                if let Some(p) = p {
                    let _ = std::fs::remove_file(&p.temp);
                }
                Err(e)
            }
        }
    }

    /// What `tag` points at now (`None`: no such tag).
    pub(crate) async fn resolve_tag(
        self: &Arc<Self>,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>> {
        let path = self.tags_dir(repo).join(tag.as_str());
        fsio::off(move || Ok(read_tag(&path))).await?
    }

    /// A manifest of `repo` by tag or digest, read whole (manifests are small: at most
    /// `global.max_manifest_size` when pushed). From the caches on the worker, else one job.
    pub(crate) async fn get_manifest(
        self: &Arc<Self>,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        if let Cached::Hit(m) = self.get_manifest_cached(repo, reference)? {
            return Ok(m);
        }
        let (s, repo, reference) = (Arc::clone(self), repo.clone(), reference.clone());
        fsio::off(move || Ok(s.get_manifest_now(&repo, &reference))).await?
    }

    fn get_manifest_now(&self, repo: &RepoName, reference: &Reference) -> Result<StoredManifest> {
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => parse_tag_file(
                read_small(&self.tags_dir(repo).join(t.as_str()))?.map(String::into_bytes),
            )?,
        };
        let media_type =
            read_small(&self.revision_link(repo, &digest))?.ok_or(StoreError::ManifestUnknown)?;
        let bytes = match std::fs::read(self.blob_path(&digest)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(StoreError::ManifestUnknown);
            }
            Err(e) => return Err(e.into()),
        };
        Ok(StoredManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// `get_manifest` from the caches only.
    fn get_manifest_cached(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Cached<StoredManifest>> {
        use super::cached::read_small as cached;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match cached(&self.tags_dir(repo).join(t.as_str()))? {
                Cached::Hit(text) => parse_tag_file(text)?,
                Cached::Miss => return Ok(Cached::Miss),
            },
        };
        let Cached::Hit(link) = cached(&self.revision_link(repo, &digest))? else {
            return Ok(Cached::Miss);
        };
        let link = link.ok_or(StoreError::ManifestUnknown)?;
        let media_type = String::from_utf8(link)
            .map_err(|_| StoreError::Io(io::Error::other("corrupt revision link")))?;
        let Cached::Hit(bytes) = cached(&self.blob_path(&digest))? else {
            return Ok(Cached::Miss);
        };
        Ok(Cached::Hit(StoredManifest {
            digest,
            media_type,
            bytes: bytes.ok_or(StoreError::ManifestUnknown)?,
        }))
    }

    /// The tags of `repo` that point at `d`, in lexical order.
    pub(crate) async fn tags_pointing_at(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Vec<Tag>> {
        let (s, repo, d) = (Arc::clone(self), repo.clone(), d.clone());
        fsio::off(move || Ok(s.tags_pointing_at_now(&repo, &d))).await?
    }

    fn tags_pointing_at_now(&self, repo: &RepoName, d: &Digest) -> Result<Vec<Tag>> {
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
    pub(crate) async fn delete_manifest(
        self: &Arc<Self>,
        repo: &RepoName,
        d: &Digest,
        decided: &[Tag],
    ) -> Result<()> {
        let (s, repo, d, decided) = (Arc::clone(self), repo.clone(), d.clone(), decided.to_vec());
        fsio::off(move || Ok(s.delete_manifest_now(&repo, &d, &decided))).await?
    }

    /// `delete_manifest` on this thread, holding the repository's tag lock from the check of the
    /// tags to their removal (a tag moved meanwhile would otherwise be deleted with the old one).
    fn delete_manifest_now(&self, repo: &RepoName, d: &Digest, decided: &[Tag]) -> Result<()> {
        let link = self.revision_link(repo, d);
        let media_type = read_small(&link)?.ok_or(StoreError::ManifestUnknown)?;
        let _held = self
            .tag_lock(repo)
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let tags = self.tags_pointing_at_now(repo, d)?;
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

    /// One page of the repository's tags in lexical order: at most `n` after `last`, and whether
    /// more follow. `NameUnknown` if the repository does not exist.
    pub(crate) async fn list_tags(
        self: &Arc<Self>,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool)> {
        let (s, repo, last) = (Arc::clone(self), repo.clone(), last.map(str::to_owned));
        fsio::off(move || {
            if !s.repo_dir(&repo).is_dir() {
                return Ok(Err(StoreError::NameUnknown));
            }
            let mut tags = match s.tag_names(&repo) {
                Ok(t) => t,
                Err(e) => return Ok(Err(e)),
            };
            tags.sort_unstable();
            Ok(Ok(super::page(tags, last.as_deref(), n)))
        })
        .await?
    }

    /// One page of repository names in lexical order: at most `n` after `last`, and whether more
    /// follow. A walk off the worker that skips the subtrees before `last` and stops after `n`.
    pub(crate) async fn catalog_page(
        self: &Arc<Self>,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool)> {
        let (s, last) = (Arc::clone(self), last.map(str::to_owned));
        Ok(fsio::off(move || s.catalog_walk(last.as_deref(), n)).await?)
    }

    /// Every repository name, in lexical order (the collector's walk).
    pub(crate) fn catalog(&self) -> Result<Vec<String>> {
        Ok(self.catalog_walk(None, usize::MAX)?.0)
    }

    /// At most `n` repository names after `last`, in lexical order, and whether more follow.
    fn catalog_walk(&self, last: Option<&str>, n: usize) -> io::Result<(Vec<String>, bool)> {
        let mut out = Vec::new();
        let base = self.root.join("repositories");
        walk_repos(&base, "", last, n.saturating_add(1), &mut out)?;
        let more = out.len() > n;
        out.truncate(n);
        Ok((out, more))
    }

    /// At most `n` referrer descriptors of `subject` in `repo` after the cursor `last` (a
    /// descriptor file name, `<alg>-<hex>`), and the next page's cursor when more follow.
    pub(crate) async fn referrers(
        self: &Arc<Self>,
        repo: &RepoName,
        subject: &Digest,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>)> {
        let (s, repo, subject) = (Arc::clone(self), repo.clone(), subject.clone());
        let last = last.map(str::to_owned);
        fsio::off(move || Ok(s.referrers_now(&repo, &subject, last.as_deref(), n))).await?
    }

    fn referrers_now(
        &self,
        repo: &RepoName,
        subject: &Digest,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>)> {
        let dir = self.referrers_dir(repo, subject);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
            Err(e) => return Err(e.into()),
        };
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| !n.starts_with('.'))
            .collect();
        names.sort_unstable();
        let (names, more) = page(names, last, n);
        let next = names.last().filter(|_| more).cloned();
        let mut out = Vec::with_capacity(names.len());
        for n in names {
            if let Some(s) = read_small(&dir.join(n))? {
                out.push(s.into_bytes());
            }
        }
        Ok((out, next))
    }
}

/// Collect into `out` (until it holds `want`) the repository names under `dir` (whose name is
/// `prefix`) that sort after `last`, in lexical order. A repository `a` and its sub-repositories
/// `a/…` are not adjacent in that order (`a-b` sorts between them), so each child is two items,
/// itself (if a repository) keyed `a` and its subtree keyed `a/`; subtrees wholly before `last`
/// are never read.
fn walk_repos(
    dir: &Path,
    prefix: &str,
    last: Option<&str>,
    want: usize,
    out: &mut Vec<String>,
) -> io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    // Keys only: whether a child is a repository is asked (one stat) just for the children the
    // page reaches, not for every entry of a large directory.
    let mut items: Vec<(String, bool)> = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().into_string().unwrap_or_default();
        if name.is_empty() || name.starts_with(['.', '_']) || !entry.file_type()?.is_dir() {
            continue;
        }
        let full = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        items.push((format!("{full}/"), true));
        items.push((full, false));
    }
    items.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (key, subtree) in items {
        if out.len() >= want {
            break;
        }
        if !subtree {
            if last.is_none_or(|l| key.as_str() > l) {
                let path = dir.join(key.rsplit('/').next().unwrap_or(&key));
                if path.join("_manifests").is_dir() || path.join("_layers").is_dir() {
                    out.push(key);
                }
            }
            continue;
        }
        if last.is_some_and(|l| l > key.as_str() && !l.starts_with(&key)) {
            continue;
        }
        let name = &key[..key.len() - 1];
        let path = dir.join(name.rsplit('/').next().unwrap_or(name));
        walk_repos(&path, name, last, want, out)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Names sort as strings (`a-b` between `a` and `a/x`), pages continue after `last` wherever it
    /// falls, and directories without `_manifests`/`_layers` are not repositories.
    #[test]
    fn catalog_pages_are_in_lexical_order_from_any_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let repos = ["a", "a-b", "a/x", "a/x/y", "b", "b.c/d", "c/d"];
        for r in repos {
            std::fs::create_dir_all(dir.path().join(r).join("_layers")).unwrap();
        }
        // Not repositories: a plain directory and a hidden one.
        std::fs::create_dir_all(dir.path().join("plain/dir")).unwrap();
        std::fs::create_dir_all(dir.path().join(".hidden/_layers")).unwrap();
        let mut all: Vec<String> = repos.iter().map(|r| r.to_string()).collect();
        all.sort();
        let walk = |last: Option<&str>, n: usize| {
            let mut out = Vec::new();
            walk_repos(dir.path(), "", last, n.saturating_add(1), &mut out).unwrap();
            let more = out.len() > n;
            out.truncate(n);
            (out, more)
        };
        assert_eq!(walk(None, usize::MAX), (all.clone(), false));
        for n in 1..=all.len() {
            let (mut got, mut last) = (Vec::new(), None::<String>);
            loop {
                let (page, more) = walk(last.as_deref(), n);
                got.extend(page.iter().cloned());
                last = page.last().cloned();
                if !more {
                    break;
                }
            }
            assert_eq!(got, all, "pages of {n}");
        }
        // A cursor that is not a repository name.
        assert_eq!(walk(Some("a/"), 2).0, vec!["a/x", "a/x/y"]);
        assert_eq!(walk(Some("a0"), 1), (vec!["b".to_owned()], true));
    }
}
