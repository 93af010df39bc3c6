//! `upstream.max_size` on the filesystem (the shared part: `storage::evict`). The last pull of an
//! image is its revision file's mtime, which `note_pull` moves on each pull through the mirror.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::{Filesystem, GcReport};
use crate::oci::manifest;
use crate::oci::{Digest, RepoName};
use crate::storage::evict::{self, Image, Revision};

use super::dir_entries as entries;

/// A pull moves the last-pull time at most this often.
const NOTE_EVERY: Duration = Duration::from_secs(60);

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
            if evict::under(&repo, prefix) {
                images.extend(self.images(&repo)?);
            }
        }
        let size_of = |b: &Digest| fs::metadata(self.blob_path(b)).map_or(0, |m| m.len());
        let (plan, stopped) = evict::plan(prefix, images, size_of, budget, cutoff);
        #[cfg(feature = "fault-hooks")]
        if let Some(pause) = crate::task::fault_pause("EVICT") {
            std::thread::sleep(pause);
        }
        let moved = |p: &std::path::Path| super::gc::mtime(p).map_or(true, |m| m > cutoff);
        for e in plan {
            let repo = &e.image.repo;
            if !dry_run {
                // Tags first, so none points at a removed manifest; one a fill moved to another
                // manifest since the plan stays.
                let held = self
                    .tag_lock(repo)
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                for tag in &e.image.tags {
                    if super::manifests::read_tag(tag)
                        .is_ok_and(|d| d.as_ref() == Some(&e.image.digest))
                    {
                        super::fsio::remove_if_exists(tag)?;
                    }
                }
                drop(held);
                // A manifest written or pulled again since the plan stays (a writer that
                // recreates it while it is parked wins: `park_and_decide`).
                let own = self.revision_link(repo, &e.image.digest);
                let mut rewritten = false;
                for r in &e.unused_revisions {
                    let gone = super::gc::park_and_decide(r, &super::gc::beside(r), moved)?;
                    rewritten |= !gone && *r == own && r.exists();
                }
                if rewritten {
                    out.line(e.kept_line());
                    continue;
                }
            }
            out.line(e.line(prefix, budget, dry_run));
            report
                .evicted
                .push(format!("{}@{}", e.image.repo, e.image.digest));
        }
        if let Some(line) = stopped {
            out.line(line);
        }
        Ok(())
    }

    /// The cached images of `repo` (`evict::images`), with their revision and tag files.
    fn images(&self, repo: &RepoName) -> io::Result<Vec<Image<PathBuf, PathBuf, SystemTime>>> {
        let dir = self.repo_dir(repo).join("_manifests").join("revisions");
        let mut revs = HashMap::new();
        for (d, path) in super::gc::digest_files(&dir)? {
            let Ok(media_type) = fs::read_to_string(&path) else {
                continue;
            };
            let last_pull = super::gc::mtime(&path)?;
            let parsed = fs::read(self.blob_path(&d))
                .ok()
                .and_then(|b| manifest::parse(&b, Some(&media_type)).ok());
            revs.insert(
                d,
                Revision {
                    key: path,
                    parsed,
                    last_pull,
                },
            );
        }
        let mut tags: HashMap<Digest, Vec<PathBuf>> = HashMap::new();
        for (_, path) in entries(&self.tags_dir(repo))? {
            if let Ok(text) = fs::read_to_string(&path)
                && let Ok(d) = text.trim().parse::<Digest>()
            {
                tags.entry(d).or_default().push(path);
            }
        }
        Ok(evict::images(repo, &revs, tags))
    }
}
