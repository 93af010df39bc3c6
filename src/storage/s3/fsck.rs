//! `wharf fsck` on the bucket: every blob pointer decodes and names data of its size whose bytes
//! hash to its digest; every repository's layer links, manifest revisions (and the blobs they
//! need) and tags name what exists; data objects that no pointer names are reported as space to
//! reclaim (`wharf gc` deletes them). With `repair`, what is broken is moved to
//! `quarantine/<time>/<key>` (copied, then deleted only if unchanged since it was read), so
//! nothing broken is served and moving it back undoes it: a blob's pointer moves and its data
//! stays where it is (the collector keeps data a quarantined pointer names). It is safe next to
//! serving nodes: a link, tag, revision or data object younger than `gc.grace` (store clock) may
//! belong to a push in progress, and is not a finding.

use std::collections::HashSet;

use super::*;
use crate::oci::manifest;
use crate::storage::{FsckReport, Problem};

/// The largest object `--repair` moves (pointers, links, tags and revisions are far smaller).
const MOVE_AT_MOST: usize = 8 << 20;

/// A check in progress: what it found, and where it moves what is broken.
struct Check<'a> {
    backend: &'a ObjectBackend,
    /// `quarantine/<time>/`, when repairing.
    quarantine: Option<String>,
    report: FsckReport,
    out: &'a mut dyn Report,
}

impl Check<'_> {
    /// Record a problem with the listed object `at`, moving it to quarantine when repairing.
    async fn broken(&mut self, what: String, at: Option<&api::Listed>) -> Result<()> {
        let (mut quarantined, mut note) = (None, None);
        if let (Some(root), Some(at)) = (&self.quarantine, at) {
            match self.backend.quarantine(root, at).await? {
                Ok(to) => quarantined = Some(to),
                Err(why) => note = Some(why),
            }
        }
        self.out.line(match (&quarantined, &note) {
            (Some(q), _) => format!("{what} (moved to {q})"),
            (None, Some(why)) => format!("{what} (not moved: {why})"),
            (None, None) => what.clone(),
        });
        self.report.problems.push(Problem { what, quarantined });
        Ok(())
    }
}

impl ObjectBackend {
    pub(crate) fn fsck(&self, repair: bool, out: &mut dyn Report) -> io::Result<FsckReport> {
        off_worker(self.check(repair, out)).map_err(|e| io::Error::other(e.to_string()))
    }

    /// Move the listed object `at` to `<root><key>`: copied, then deleted if its ETag is still
    /// the listed one, which the check judged (an object rewritten since is not what was judged
    /// broken: it stays, and the copy goes). The new key, or why it was not moved.
    async fn quarantine(
        &self,
        root: &str,
        at: &api::Listed,
    ) -> Result<std::result::Result<String, String>> {
        let key = at.key.as_str();
        let Some(resp) = self.store.get(key).await? else {
            return Ok(Err("it is gone already".into()));
        };
        let len = resp.body.remaining();
        if len > MOVE_AT_MOST as u64 {
            return Ok(Err(format!(
                "it holds {len} bytes, too many to move: remove it with the store's own tools"
            )));
        }
        let bytes = resp.body.bytes(MOVE_AT_MOST).await.map_err(unavailable)?;
        let to = format!("{root}{key}");
        self.store.put(&to, &bytes, Cond::None).await?;
        match self.store.delete(key, Some(&at.etag)).await {
            Ok(()) => Ok(Ok(to)),
            Err(S3Error::Precondition) => {
                self.store.delete(&to, None).await?;
                Ok(Err("it changed while fsck ran: run fsck again".into()))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The data objects that quarantined blob pointers name: kept by the collector, so moving
    /// a pointer back undoes a repair.
    pub(super) async fn quarantined_data(&self) -> Result<HashSet<String>> {
        let mut named = HashSet::new();
        for q in self.all("quarantine/").await? {
            if !q.key.contains("/blobs/") {
                continue;
            }
            if let Some(b) = self.store.get_bytes(&q.key, SMALL).await?
                && let Some(p) = Pointer::decode(&b)
            {
                named.insert(p.data_key);
            }
        }
        Ok(named)
    }

    async fn check(&self, repair: bool, out: &mut dyn Report) -> Result<FsckReport> {
        let now = self.store.now().await?;
        let young = self.opts.grace.as_secs();
        let old = |modified: u64| modified.saturating_add(young) < now;
        let mut c = Check {
            backend: self,
            quarantine: repair.then(|| format!("quarantine/{now}/")),
            report: FsckReport::default(),
            out,
        };

        // Data first, pointers after: a data object listed here whose blob is complete has its
        // pointer written by the time the pointers are listed (a push in progress is young).
        let data = self.all("data/").await?;

        // Blobs: pointer, data, bytes. A broken blob's pointer is what moves.
        let pointers = self.all("blobs/").await?;
        let mut stored: HashSet<Digest> = HashSet::new();
        let mut named: HashSet<String> = self.quarantined_data().await?;
        for (i, p) in pointers.iter().enumerate() {
            c.out
                .progress("checking blobs", i as u64, pointers.len() as u64);
            let key = Some(p);
            let Some(d) = digest_after(&p.key, "blobs/") else {
                c.broken(format!("stray object {}", p.key), key).await?;
                continue;
            };
            let pointer = match damaged(self.pointer(&d).await)? {
                Ok(Some(pointer)) => pointer,
                Ok(None) => continue,
                Err(e) => {
                    c.broken(format!("blob {d}: {e}"), key).await?;
                    continue;
                }
            };
            named.insert(pointer.data_key.clone());
            let data_key = &pointer.data_key;
            let Some(data) = self.store.head(data_key).await? else {
                c.broken(format!("blob {d}: its data {data_key} is missing"), key)
                    .await?;
                continue;
            };
            if data.len != pointer.size {
                let what = format!(
                    "blob {d}: its data {data_key} holds {} bytes, not {}",
                    data.len, pointer.size
                );
                c.broken(what, key).await?;
                continue;
            }
            let hashed = self.hash_object(data_key, d.algorithm()).await?;
            if hashed != d {
                c.broken(
                    format!("blob {d}: its data {data_key} hashes to {hashed}"),
                    key,
                )
                .await?;
                continue;
            }
            stored.insert(d);
            c.report.blobs += 1;
            c.report.bytes += pointer.size;
        }

        // Repositories: layer links, revisions and what they need, tags.
        let repos = self.all("catalog/").await?;
        for (i, listed) in repos.iter().enumerate() {
            c.out
                .progress("checking repositories", i as u64, repos.len() as u64);
            let Some(repo) = catalog_repo(&listed.key) else {
                c.broken(format!("stray object {}", listed.key), Some(listed))
                    .await?;
                continue;
            };
            let layers = format!("repos/{repo}/_layers/");
            for link in self.all(&layers).await? {
                let what = match digest_after(&link.key, &layers) {
                    Some(d) if !stored.contains(&d) && old(link.modified) => {
                        format!("{repo}: layer link to {d}, which is not stored")
                    }
                    Some(_) => continue,
                    None => format!("stray object {}", link.key),
                };
                c.broken(what, Some(&link)).await?;
            }
            let revisions = format!("repos/{repo}/_manifests/");
            let mut manifests: HashSet<Digest> = HashSet::new();
            for rev in self.all(&revisions).await? {
                let Some(d) = digest_after(&rev.key, &revisions) else {
                    c.broken(format!("stray object {}", rev.key), Some(&rev))
                        .await?;
                    continue;
                };
                let (media_type, body) = match damaged(self.revision(&repo, &d).await)? {
                    Ok(Some(found)) => found,
                    Ok(None) => continue,
                    Err(e) => {
                        c.broken(format!("{repo}@{d}: {e}"), Some(&rev)).await?;
                        continue;
                    }
                };
                manifests.insert(d.clone());
                c.report.manifests += 1;
                // Neither is repaired by moving the revision (as on the filesystem): push the
                // image again.
                match manifest::parse(&body, Some(&media_type)) {
                    Ok(parsed) => {
                        for needed in parsed.required_blobs {
                            if !stored.contains(&needed) && old(rev.modified) {
                                let what =
                                    format!("{repo}@{d}: references {needed}, which is not stored");
                                c.broken(what, None).await?;
                            }
                        }
                    }
                    Err(e) => {
                        c.broken(format!("{repo}@{d}: cannot be parsed ({e:?})"), None)
                            .await?
                    }
                }
            }
            let tags = tags_prefix(&repo);
            for t in self.all(&tags).await? {
                let name = t.key.strip_prefix(&tags).unwrap_or_default();
                let Ok(tag) = name.parse::<Tag>() else {
                    c.broken(format!("stray object {}", t.key), Some(&t))
                        .await?;
                    continue;
                };
                c.report.tags += 1;
                let what = match damaged(self.tag(&repo, &tag).await)? {
                    Ok(Some((d, _))) if !manifests.contains(&d) && old(t.modified) => {
                        format!("{repo}:{tag} points at {d}, which is not stored")
                    }
                    Ok(_) => continue,
                    Err(e) => format!("{repo}:{tag}: {e}"),
                };
                c.broken(what, Some(&t)).await?;
            }
        }

        // Data no pointer names: an upload that lost a race, or a node that died between storing
        // the bytes and writing the pointer. Space only, never served: `wharf gc` deletes it
        // (only the collector can tell it from data being written), so it is not moved.
        for data in data {
            if !named.contains(&data.key) && old(data.modified) {
                let what = format!(
                    "unreferenced data object {} ({} bytes): no blob names it; it only takes space (`wharf gc` deletes it)",
                    data.key, data.len
                );
                c.broken(what, None).await?;
            }
        }
        Ok(c.report)
    }
}

/// A read whose object turned out damaged (torn, not what it should be) is a finding, `Ok(Err)`;
/// any other failure (the store unreachable) ends the check.
fn damaged<T>(read: Result<T>) -> Result<std::result::Result<T, io::Error>> {
    match read {
        Ok(v) => Ok(Ok(v)),
        Err(StoreError::Io(e)) if e.kind() == io::ErrorKind::InvalidData => Ok(Err(e)),
        Err(e) => Err(e),
    }
}
