//! Manifest revisions in the collector's mark phase, and the deletion of untagged ones
//! (`gc.delete_untagged`) while other nodes push and tag (docs/gc.md).
//!
//! A revision is kept when a tag names it, when it is younger than the grace period, or when a
//! kept revision reaches it (an index's child, a referrer of a kept subject). An untagged one is
//! looked at again (HEAD: its time and ETag) and deleted only if that look finds it older than
//! the grace period, with `If-Match` on the ETag seen. Every write of a revision carries a new
//! nonce (`write_revision`), so a push of the same manifest (by tag or digest) either came before
//! the look (the revision is young and stays), or between the look and the delete (the ETag
//! differs and the delete fails), or after the delete (it stores the revision anew). A tag is set
//! only after its revision is written, so no tag is left pointing at a deleted revision; a
//! referrer entry removed with its revision is put back when the revision is found written again.

use std::collections::{HashMap, HashSet};

use super::gc::{Swept, maybe_after};
use super::*;

/// A revision the mark phase read.
pub(super) struct Revision {
    pub digest: Digest,
    /// The store's time of its last write.
    pub modified: u64,
    /// Bytes of the manifest.
    pub size: u64,
    pub parsed: Parsed,
}

impl ObjectBackend {
    /// A repository's revisions, split into (kept, untagged and older than `cutoff`). Without
    /// `delete_untagged` all are kept. A revision that cannot be read or parsed stops the
    /// collection (nothing it might reference is known; fsck reports it).
    pub(super) async fn partition_revisions(
        &self,
        repo: &RepoName,
        cutoff: u64,
        delete_untagged: bool,
    ) -> Result<(Vec<Revision>, Vec<Revision>)> {
        let prefix = format!("repos/{repo}/_manifests/");
        let mut revs: HashMap<Digest, Revision> = HashMap::new();
        for listed in self.all(&prefix).await? {
            let Some(digest) = digest_after(&listed.key, &prefix) else {
                continue;
            };
            // Deleted since it was listed.
            let Some((media_type, bytes)) = self.revision(repo, &digest).await? else {
                continue;
            };
            let parsed = manifest::parse(&bytes, Some(&media_type)).map_err(|e| {
                corrupt(format!(
                    "manifest {repo}@{digest} cannot be parsed ({e:?}); nothing was collected"
                ))
            })?;
            revs.insert(
                digest.clone(),
                Revision {
                    digest,
                    modified: listed.modified,
                    size: bytes.len() as u64,
                    parsed,
                },
            );
        }
        if !delete_untagged {
            return Ok((revs.into_values().collect(), Vec::new()));
        }
        let mut queue: Vec<Digest> = revs
            .values()
            .filter(|r| maybe_after(r.modified, cutoff))
            .map(|r| r.digest.clone())
            .collect();
        let tags = tags_prefix(repo);
        for listed in self.all(&tags).await? {
            let Some(tag) = listed.key.strip_prefix(&tags) else {
                continue;
            };
            let tag: Tag = tag
                .parse()
                .map_err(|_| corrupt(format!("tag object {} is not a tag name", listed.key)))?;
            // A tag removed since the listing reaches nothing; one moved since was moved by a
            // push that wrote its revision young.
            if let Some((d, _)) = self.tag(repo, &tag).await? {
                queue.push(d);
            }
        }
        let referrers = self.referrers_by_subject(repo).await?;
        let mut kept: HashSet<Digest> = HashSet::new();
        while let Some(d) = queue.pop() {
            if !kept.insert(d.clone()) {
                continue;
            }
            if let Some(rev) = revs.get(&d) {
                queue.extend(rev.parsed.children.iter().cloned());
            }
            if let Some(rs) = referrers.get(&d) {
                queue.extend(rs.iter().cloned());
            }
        }
        Ok(revs
            .into_values()
            .partition(|r: &Revision| kept.contains(&r.digest)))
    }

    /// Each subject's referrers in `repo`, from the referrer entries' keys
    /// (`_referrers/<alg>/<hex>/<alg>-<hex>`).
    async fn referrers_by_subject(&self, repo: &RepoName) -> Result<HashMap<Digest, Vec<Digest>>> {
        let prefix = format!("repos/{repo}/_referrers/");
        let mut out: HashMap<Digest, Vec<Digest>> = HashMap::new();
        for listed in self.all(&prefix).await? {
            let Some((subject, referrer)) = listed.key[prefix.len()..].rsplit_once('/') else {
                continue;
            };
            let subject = subject.replacen('/', ":", 1).parse::<Digest>();
            let referrer = referrer.replacen('-', ":", 1).parse::<Digest>();
            if let (Ok(s), Ok(r)) = (subject, referrer) {
                out.entry(s).or_default().push(r);
            }
        }
        Ok(out)
    }

    /// Delete an untagged revision unless it was written since `cutoff` (module docs), and its
    /// referrer entry with it. `Swept::Held`: written meanwhile, kept; `Replaced`: already gone,
    /// or written again between the look and the delete.
    pub(super) async fn delete_revision(
        &self,
        repo: &RepoName,
        rev: &Revision,
        cutoff: u64,
    ) -> Result<Swept> {
        let key = revision_key(repo, &rev.digest);
        let Some(seen) = self.store.head(&key).await? else {
            return Ok(Swept::Replaced);
        };
        if maybe_after(seen.modified, cutoff) {
            return Ok(Swept::Held);
        }
        match self.store.delete(&key, Some(&seen.etag)).await {
            Ok(()) => {}
            Err(S3Error::Precondition) => return Ok(Swept::Replaced),
            Err(e) => return Err(e.into()),
        }
        if let Some(subject) = &rev.parsed.subject {
            let entry = referrer_key(repo, subject, &rev.digest);
            self.store.delete(&entry, None).await?;
            // Pushed again since the delete: its push may have written the entry before the
            // delete above removed it.
            if self.store.head(&key).await?.is_some() {
                let desc = manifest::referrer_descriptor(&rev.parsed, &rev.digest, rev.size);
                self.store.put(&entry, &desc, Cond::None).await?;
                return Ok(Swept::Replaced);
            }
        }
        Ok(Swept::Deleted)
    }
}
