//! `wharf fsck` on the bucket: every blob pointer decodes and names data of its size whose bytes
//! hash to its digest; every repository's layer links, manifest revisions (and the blobs they
//! need) and tags name what exists; data objects that no pointer names are reported as space to
//! reclaim. It reports and repairs nothing (there is no quarantine to move objects to), and it
//! is safe next to serving nodes: a link, tag, revision or data object younger than `gc.grace`
//! (store clock) may belong to a push in progress, and is not a finding.

use std::collections::HashSet;

use super::*;
use crate::oci::manifest;
use crate::storage::{FsckReport, Problem};

impl ObjectBackend {
    pub(crate) fn fsck(&self, repair: bool, out: &mut dyn Report) -> io::Result<FsckReport> {
        if repair {
            return Err(io::Error::other(
                "fsck --repair is not available on the object-store backend: run it without --repair to report, and remove what it names with the store's own tools",
            ));
        }
        off_worker(self.check(out)).map_err(|e| io::Error::other(e.to_string()))
    }

    async fn check(&self, out: &mut dyn Report) -> Result<FsckReport> {
        let now = self.store.now().await?;
        let young = self.opts.grace.as_secs();
        let old = |modified: u64| modified.saturating_add(young) < now;
        let mut report = FsckReport::default();
        let mut problem = |out: &mut dyn Report, what: String| {
            out.line(what.clone());
            report.problems.push(Problem {
                what,
                quarantined: None,
            });
        };

        // Data first, pointers after: a data object listed here whose blob is complete has its
        // pointer written by the time the pointers are listed (a push in progress is young).
        let data = self.all("data/").await?;

        // Blobs: pointer, data, bytes.
        let pointers = self.all("blobs/").await?;
        let mut stored: HashSet<Digest> = HashSet::new();
        let mut named: HashSet<String> = HashSet::new();
        let (mut blobs, mut bytes) = (0, 0);
        for (i, p) in pointers.iter().enumerate() {
            out.progress("checking blobs", i as u64, pointers.len() as u64);
            let Some(d) = digest_after(&p.key, "blobs/") else {
                problem(out, format!("stray object {}", p.key));
                continue;
            };
            let pointer = match damaged(self.pointer(&d).await)? {
                Ok(Some(pointer)) => pointer,
                Ok(None) => continue,
                Err(e) => {
                    problem(out, format!("blob {d}: {e}"));
                    continue;
                }
            };
            named.insert(pointer.data_key.clone());
            let Some(data) = self.store.head(&pointer.data_key).await? else {
                problem(
                    out,
                    format!("blob {d}: its data {} is missing", pointer.data_key),
                );
                continue;
            };
            if data.len != pointer.size {
                problem(
                    out,
                    format!(
                        "blob {d}: its data {} holds {} bytes, not {}",
                        pointer.data_key, data.len, pointer.size
                    ),
                );
                continue;
            }
            let hashed = self.hash_object(&pointer.data_key, d.algorithm()).await?;
            if hashed != d {
                problem(
                    out,
                    format!("blob {d}: its data {} hashes to {hashed}", pointer.data_key),
                );
                continue;
            }
            stored.insert(d);
            blobs += 1;
            bytes += pointer.size;
        }
        report.blobs = blobs;
        report.bytes = bytes;

        // Repositories: layer links, revisions and what they need, tags.
        let repos = self.all("catalog/").await?;
        for (i, listed) in repos.iter().enumerate() {
            out.progress("checking repositories", i as u64, repos.len() as u64);
            let Some(repo) = catalog_repo(&listed.key) else {
                problem(out, format!("stray object {}", listed.key));
                continue;
            };
            let layers = format!("repos/{repo}/_layers/");
            for link in self.all(&layers).await? {
                match digest_after(&link.key, &layers) {
                    Some(d) if !stored.contains(&d) && old(link.modified) => problem(
                        out,
                        format!("{repo}: layer link to {d}, which is not stored"),
                    ),
                    Some(_) => {}
                    None => problem(out, format!("stray object {}", link.key)),
                }
            }
            let revisions = format!("repos/{repo}/_manifests/");
            let mut manifests: HashSet<Digest> = HashSet::new();
            for rev in self.all(&revisions).await? {
                let Some(d) = digest_after(&rev.key, &revisions) else {
                    problem(out, format!("stray object {}", rev.key));
                    continue;
                };
                let (media_type, body) = match damaged(self.revision(&repo, &d).await)? {
                    Ok(Some(found)) => found,
                    Ok(None) => continue,
                    Err(e) => {
                        problem(out, format!("{repo}@{d}: {e}"));
                        continue;
                    }
                };
                manifests.insert(d.clone());
                report.manifests += 1;
                match manifest::parse(&body, Some(&media_type)) {
                    Ok(parsed) => {
                        for needed in parsed.required_blobs {
                            if !stored.contains(&needed) && old(rev.modified) {
                                problem(
                                    out,
                                    format!("{repo}@{d}: references {needed}, which is not stored"),
                                );
                            }
                        }
                    }
                    Err(e) => problem(out, format!("{repo}@{d}: cannot be parsed ({e:?})")),
                }
            }
            let tags = tags_prefix(&repo);
            for t in self.all(&tags).await? {
                let name = t.key.strip_prefix(&tags).unwrap_or_default();
                let Ok(tag) = name.parse::<Tag>() else {
                    problem(out, format!("stray object {}", t.key));
                    continue;
                };
                report.tags += 1;
                match damaged(self.tag(&repo, &tag).await)? {
                    Ok(Some((d, _))) if !manifests.contains(&d) && old(t.modified) => problem(
                        out,
                        format!("{repo}:{tag} points at {d}, which is not stored"),
                    ),
                    Ok(_) => {}
                    Err(e) => problem(out, format!("{repo}:{tag}: {e}")),
                }
            }
        }

        // Data no pointer names: an upload that lost a race, or a node that died between storing
        // the bytes and writing the pointer. Space only; never served.
        for data in data {
            if !named.contains(&data.key) && old(data.modified) {
                problem(
                    out,
                    format!(
                        "unreferenced data object {} ({} bytes): no blob names it; it only takes space",
                        data.key, data.len
                    ),
                );
            }
        }
        Ok(report)
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
