//! Size budgets of pull-through caches (`upstream.max_size`): before marking, the collector adds
//! up the distinct blobs of the images cached under each budgeted prefix and, while they exceed
//! the budget, removes the image pulled least recently (its tags and manifest revisions; a blob
//! still used by a remaining image stays counted). The marking that follows no longer reaches the
//! evicted images' blobs, so the sweep removes them as it removes any unreferenced blob. The last
//! pull of an image is its revision file's mtime, which `note_pull` moves on each pull through the
//! mirror. Images pulled within the grace period are never evicted. Evicting cached content is
//! safe: a later pull of it fetches it from the upstream again.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{Filesystem, GcReport};
use crate::oci::manifest;
use crate::oci::{Digest, RepoName};

use super::dir_entries as entries;

/// A pull moves the last-pull time at most this often.
const NOTE_EVERY: Duration = Duration::from_secs(60);

/// One cached image: a top-level manifest of a repository, the tags on it, the manifests and
/// blobs it reaches.
struct Image {
    repo: RepoName,
    digest: Digest,
    last_pull: SystemTime,
    tags: Vec<PathBuf>,
    revisions: Vec<PathBuf>,
    blobs: Vec<Digest>,
}

impl Filesystem {
    /// `repo@digest` was pulled: move its revision file's mtime to now, on the blocking pool
    /// (skipped when the pool is full), unless it moved within the last minute.
    pub(crate) fn note_pull(&self, repo: &RepoName, digest: &Digest) {
        let path = self.revision_link(repo, digest);
        crate::blocking::try_detach(move || {
            let stale = super::gc::mtime(&path)
                .is_ok_and(|m| m.elapsed().is_ok_and(|age| age > NOTE_EVERY));
            if stale && let Ok(f) = fs::File::options().write(true).open(&path) {
                let _ = f.set_modified(SystemTime::now());
            }
        });
    }

    /// Evict images under `prefix` pulled before `cutoff`, least recently pulled first, until their
    /// distinct blobs take at most `budget` bytes. Lines go to `out`; `repo@digest` of each evicted
    /// image to `report.evicted`.
    pub(super) fn evict_over_budget(
        &self,
        prefix: &str,
        budget: u64,
        cutoff: SystemTime,
        dry_run: bool,
        out: &mut dyn super::Report,
        report: &mut GcReport,
    ) -> io::Result<()> {
        let mut images = Vec::new();
        for repo in self.repositories()? {
            let name = repo.as_str();
            if name == prefix || name.starts_with(&format!("{prefix}/")) {
                images.extend(self.images(&repo)?);
            }
        }
        let mut sizes: HashMap<Digest, (u64, usize)> = HashMap::new();
        for img in &images {
            for b in img.blobs.iter().collect::<HashSet<_>>() {
                let size = fs::metadata(self.blob_path(b)).map_or(0, |m| m.len());
                sizes.entry(b.clone()).or_insert((size, 0)).1 += 1;
            }
        }
        // A platform manifest shared by two indexes stays while either does.
        let mut rev_users: HashMap<PathBuf, usize> = HashMap::new();
        for img in &images {
            for r in &img.revisions {
                *rev_users.entry(r.clone()).or_default() += 1;
            }
        }
        let mut total: u64 = sizes.values().map(|(s, _)| s).sum();
        images.sort_by_key(|i| i.last_pull);
        let verb = if dry_run { "would evict" } else { "evicted" };
        for img in images {
            if total <= budget {
                break;
            }
            if img.last_pull > cutoff {
                out.line(format!(
                    "cache {prefix}: {total} bytes over its budget of {budget}, but every image left was pulled within the grace period"
                ));
                break;
            }
            for r in &img.revisions {
                let users = rev_users.get_mut(r).expect("counted above");
                *users -= 1;
                if *users == 0 && !dry_run {
                    super::fsio::remove_if_exists(r)?;
                }
            }
            if !dry_run {
                for t in &img.tags {
                    super::fsio::remove_if_exists(t)?;
                }
            }
            let mut freed = 0;
            for b in img.blobs.iter().collect::<HashSet<_>>() {
                if let Some((size, users)) = sizes.get_mut(b) {
                    *users -= 1;
                    if *users == 0 {
                        freed += *size;
                    }
                }
            }
            total -= freed;
            out.line(format!(
                "{verb} cached image {}@{} ({freed} bytes of blobs no other cached image uses; cache {prefix} now {total} of {budget} bytes)",
                img.repo, img.digest
            ));
            report.evicted.push(format!("{}@{}", img.repo, img.digest));
        }
        Ok(())
    }

    /// The images of `repo`: every manifest revision no other revision of it reaches as a child
    /// (an index's platform manifests go with the index).
    fn images(&self, repo: &RepoName) -> io::Result<Vec<Image>> {
        let dir = self.repo_dir(repo).join("_manifests").join("revisions");
        let mut revs: HashMap<Digest, (PathBuf, Option<manifest::Parsed>, SystemTime)> =
            HashMap::new();
        for (d, path) in super::gc::digest_files(&dir)? {
            let Ok(media_type) = fs::read_to_string(&path) else {
                continue;
            };
            let when = super::gc::mtime(&path)?;
            let parsed = fs::read(self.blob_path(&d))
                .ok()
                .and_then(|b| manifest::parse(&b, Some(&media_type)).ok());
            revs.insert(d, (path, parsed, when));
        }
        let children: HashSet<Digest> = revs
            .values()
            .filter_map(|(_, p, _)| p.as_ref())
            .flat_map(|p| p.children.iter().cloned())
            .collect();
        let mut tags: HashMap<Digest, Vec<PathBuf>> = HashMap::new();
        for (_, path) in entries(&self.tags_dir(repo))? {
            if let Ok(text) = fs::read_to_string(&path)
                && let Ok(d) = text.trim().parse::<Digest>()
            {
                tags.entry(d).or_default().push(path);
            }
        }
        let mut images = Vec::new();
        for (digest, (path, parsed, when)) in &revs {
            if children.contains(digest) {
                continue;
            }
            let mut img = Image {
                repo: repo.clone(),
                digest: digest.clone(),
                last_pull: *when,
                tags: tags.remove(digest).unwrap_or_default(),
                revisions: vec![path.clone()],
                blobs: vec![digest.clone()],
            };
            if let Some(p) = parsed {
                img.blobs.extend(p.required_blobs.iter().cloned());
                for child in &p.children {
                    img.blobs.push(child.clone());
                    if let Some((cpath, cparsed, cwhen)) = revs.get(child) {
                        img.revisions.push(cpath.clone());
                        img.last_pull = img.last_pull.max(*cwhen);
                        if let Some(cp) = cparsed {
                            img.blobs.extend(cp.required_blobs.iter().cloned());
                        }
                    }
                }
            }
            images.push(img);
        }
        Ok(images)
    }
}
