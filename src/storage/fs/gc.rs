//! Garbage collection that is safe while pushes continue: mark what the kept manifests reach, then
//! remove unmarked blobs (and, with `delete_untagged`, manifests no tag reaches) older than the
//! grace period. Each blob is parked in a trash directory first and checked again there, so a racing
//! `hold_blob_data` (every "this blob exists" answer) either refreshed it in time or takes it back.
//! Stale upload sessions and temp files are expired too. docs/gc.md explains why this is safe.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::{Filesystem, GcOptions, GcReport, random_id};
use crate::oci::manifest;
use crate::oci::{Digest, RepoName, Tag};

/// The trash directory under the storage root.
pub(crate) const TRASH: &str = "gc-trash";

/// Holds `<root>/gc.lock` (flock) so two collectors never run at once.
struct Lock(#[allow(dead_code)] fs::File);

impl Lock {
    fn take(root: &Path) -> io::Result<Lock> {
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(root.join("gc.lock"))?;
        // Released when the file closes.
        if crate::sys::try_lock_exclusive(f.as_raw_fd()).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "another garbage collection is running on this storage",
            ));
        }
        Ok(Lock(f))
    }
}

pub(super) fn mtime(path: &Path) -> io::Result<SystemTime> {
    fs::symlink_metadata(path)?.modified()
}

use super::dir_entries as entries;

/// `<dir>/<alg>/<hex>` files as digests (the layout of revisions and layer links).
pub(super) fn digest_files(dir: &Path) -> io::Result<Vec<(Digest, PathBuf)>> {
    let mut out = Vec::new();
    for (alg, alg_dir) in entries(dir)? {
        for (hex, path) in entries(&alg_dir)? {
            if let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() {
                out.push((d, path));
            }
        }
    }
    Ok(out)
}

/// Rename `path` to `parked`, run `keep` on the parked file, and either put it back (`keep` true)
/// or delete it. Returns whether it was deleted. A writer that recreates `path` meanwhile wins:
/// putting back an empty link or identical content changes nothing; a hold that took a parked blob
/// back first leaves nothing to put back or delete.
pub(super) fn park_and_decide(
    path: &Path,
    parked: &Path,
    keep: impl FnOnce(&Path) -> bool,
) -> io::Result<bool> {
    // Ok(true): it happened; Ok(false): the file was already gone (someone else moved it).
    let done = |r: io::Result<()>| match r {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        other => other.map(|()| true),
    };
    if !done(fs::rename(path, parked))? {
        return Ok(false);
    }
    if keep(parked) {
        done(fs::rename(parked, path))?;
        Ok(false)
    } else {
        done(fs::remove_file(parked))
    }
}

/// A name beside `path` for parking it (hidden, unique).
pub(super) fn beside(path: &Path) -> PathBuf {
    path.with_file_name(format!(
        ".gc-{}-{}",
        path.file_name().unwrap_or_default().to_string_lossy(),
        random_id()
    ))
}

struct Revision {
    digest: Digest,
    path: PathBuf,
    media_type: String,
    young: bool,
}

impl Filesystem {
    /// Every repository, as names.
    pub(super) fn repositories(&self) -> io::Result<Vec<RepoName>> {
        let names = self.catalog().map_err(|e| match e {
            super::StoreError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        Ok(names.iter().filter_map(|n| n.parse().ok()).collect())
    }

    /// Collect garbage; `out` receives one line per removal (or would-be removal) and progress.
    pub(crate) fn collect_garbage(
        &self,
        opts: &GcOptions,
        out: &mut dyn super::Report,
    ) -> io::Result<GcReport> {
        let _lock = Lock::take(&self.root)?;
        let started = Instant::now();
        let cutoff = SystemTime::now()
            .checked_sub(opts.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let verb = if opts.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let mut report = GcReport::default();
        if !opts.dry_run {
            self.restore_trash()?;
        }

        // Pull-through caches over their budget lose the images pulled least recently first.
        for (prefix, budget) in &opts.budgets {
            self.evict_over_budget(prefix, *budget, cutoff, opts.dry_run, out, &mut report)?;
        }

        // Mark: every kept manifest, what it references, and its children.
        let mut marked: HashSet<Digest> = HashSet::new();
        let mut doomed: Vec<(RepoName, Revision)> = Vec::new();
        let repos = self.repositories()?;
        let total_repos = repos.len() as u64;
        for (i, repo) in repos.into_iter().enumerate() {
            out.progress("marking repositories", i as u64, total_repos);
            let (kept, dropped) = self.partition_revisions(&repo, cutoff, opts.delete_untagged)?;
            for rev in &kept {
                marked.insert(rev.digest.clone());
                if let Some(p) = self.parse_revision(rev) {
                    marked.extend(p.required_blobs);
                    marked.extend(p.children);
                }
            }
            doomed.extend(dropped.into_iter().map(|r| (repo.clone(), r)));
        }

        #[cfg(feature = "fault-hooks")]
        if let Some(pause) = crate::task::fault_pause("MARKED") {
            std::thread::sleep(pause);
        }
        // Untagged manifests (only with delete_untagged): park, re-check age, delete. One that a
        // push (or an index naming it) wrote again meanwhile stays, with what it references.
        for (repo, rev) in doomed {
            let gone = if opts.dry_run {
                true
            } else {
                park_and_decide(&rev.path, &beside(&rev.path), |p| {
                    mtime(p).map_or(true, |m| m > cutoff)
                })?
            };
            if gone {
                if !opts.dry_run
                    && let Some(subject) = self.parse_revision(&rev).and_then(|p| p.subject)
                {
                    let entry = self.referrers_dir(&repo, &subject).join(format!(
                        "{}-{}",
                        rev.digest.algorithm().as_str(),
                        rev.digest.hex()
                    ));
                    super::fsio::remove_if_exists(&entry)?;
                }
                out.line(format!("{verb} manifest {repo}@{}", rev.digest));
                report.manifests.push(format!("{repo}@{}", rev.digest));
            } else {
                marked.insert(rev.digest.clone());
                if let Some(p) = self.parse_revision(&rev) {
                    marked.extend(p.required_blobs);
                    marked.extend(p.children);
                }
            }
        }

        // Sweep: unmarked blobs older than the grace period.
        let blobs_dir = self.root.join("blobs");
        let total_blobs = super::count_blob_files(&self.root);
        let mut seen = 0;
        'sweep: for (alg, alg_dir) in entries(&blobs_dir)? {
            for (_, prefix_dir) in entries(&alg_dir)? {
                for (hex, path) in entries(&prefix_dir)? {
                    seen += 1;
                    out.progress("sweeping blobs", seen, total_blobs);
                    let Ok(d) = format!("{alg}:{hex}").parse::<Digest>() else {
                        continue;
                    };
                    if marked.contains(&d) {
                        continue;
                    }
                    let meta = match fs::metadata(&path) {
                        Ok(m) => m,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                        Err(e) => return Err(e),
                    };
                    if meta.modified()? > cutoff {
                        report.young += 1;
                        continue;
                    }
                    // A hold refreshes an mtime to within a quarter of the grace period, so any
                    // blob held since marking began stays young while we run for under half of it.
                    // With no grace at all (`--grace 0s`) nothing is held: no time limit either.
                    if !opts.grace.is_zero() && started.elapsed() > opts.grace / 2 {
                        report.stopped_early = true;
                        break 'sweep;
                    }
                    if !opts.dry_run && !self.delete_blob(&d, cutoff)? {
                        continue;
                    }
                    out.line(format!("{verb} blob {d} ({} bytes)", meta.len()));
                    report.bytes += meta.len();
                    report.blobs.push((d, meta.len()));
                }
            }
        }

        if !opts.dry_run {
            report.links = self.remove_dangling_links()?;
        }
        report.uploads = self.expire_uploads(cutoff, opts.dry_run, verb, out)?;
        Ok(report)
    }

    /// Park a blob in the trash (where a hold can take it back), check its age there, and delete
    /// it or put it back.
    fn delete_blob(&self, d: &Digest, cutoff: SystemTime) -> io::Result<bool> {
        let trash = self.gc_trash_path(d);
        super::fsio::ensure_dir_sync(trash.parent().expect("trash has a parent"))?;
        // Kept if a hold refreshed it between our listing and the rename.
        park_and_decide(&self.blob_path(d), &trash, |t| {
            mtime(t).map_or(true, |m| m > cutoff)
        })
    }

    /// Blobs left in the trash by a collector that was killed go back where they were; this run
    /// decides about them again.
    fn restore_trash(&self) -> io::Result<()> {
        for (name, path) in entries(&self.root.join(TRASH))? {
            let Some(d) = name
                .split_once('-')
                .and_then(|(a, h)| format!("{a}:{h}").parse::<Digest>().ok())
            else {
                continue;
            };
            let target = self.blob_path(&d);
            if target.exists() {
                fs::remove_file(&path)?;
            } else {
                super::fsio::ensure_dir_sync(target.parent().expect("blob paths have a parent"))?;
                fs::rename(&path, &target)?;
            }
        }
        Ok(())
    }

    fn parse_revision(&self, rev: &Revision) -> Option<manifest::Parsed> {
        let bytes = fs::read(self.blob_path(&rev.digest)).ok()?;
        manifest::parse(&bytes, Some(&rev.media_type)).ok()
    }

    /// A repository's revisions split into kept and removable. Without `delete_untagged` all are
    /// kept; with it, those reached from a tag or a young revision (through index children and
    /// referrers) are.
    fn partition_revisions(
        &self,
        repo: &RepoName,
        cutoff: SystemTime,
        delete_untagged: bool,
    ) -> io::Result<(Vec<Revision>, Vec<Revision>)> {
        let dir = self.repo_dir(repo).join("_manifests").join("revisions");
        let mut revs: HashMap<Digest, Revision> = HashMap::new();
        for (digest, path) in digest_files(&dir)? {
            let Ok(media_type) = fs::read_to_string(&path) else {
                continue;
            };
            let young = mtime(&path).map_or(true, |m| m > cutoff);
            revs.insert(
                digest.clone(),
                Revision {
                    digest,
                    path,
                    media_type,
                    young,
                },
            );
        }
        if !delete_untagged {
            return Ok((revs.into_values().collect(), Vec::new()));
        }
        let mut queue: Vec<Digest> = revs
            .values()
            .filter(|r| r.young)
            .map(|r| r.digest.clone())
            .collect();
        for (tag, path) in entries(&self.tags_dir(repo))? {
            if tag.parse::<Tag>().is_ok()
                && let Ok(text) = fs::read_to_string(&path)
                && let Ok(d) = text.trim().parse::<Digest>()
            {
                queue.push(d);
            }
        }
        let mut kept: HashSet<Digest> = HashSet::new();
        while let Some(d) = queue.pop() {
            if !kept.insert(d.clone()) {
                continue;
            }
            let Some(rev) = revs.get(&d) else {
                continue;
            };
            if let Some(p) = self.parse_revision(rev) {
                queue.extend(p.children);
            }
            for (name, _) in entries(&self.referrers_dir(repo, &d))? {
                if let Some((a, h)) = name.split_once('-')
                    && let Ok(r) = format!("{a}:{h}").parse::<Digest>()
                {
                    queue.push(r);
                }
            }
        }
        let (keep, drop): (Vec<Revision>, Vec<Revision>) =
            revs.into_values().partition(|r| kept.contains(&r.digest));
        Ok((keep, drop))
    }

    /// Remove `_layers` links whose blob is gone (checked again after parking each link, so a blob
    /// committed meanwhile keeps its link), and re-point stale ones (`relink_stale`).
    fn remove_dangling_links(&self) -> io::Result<usize> {
        let mut n = 0;
        for repo in self.repositories()? {
            for (d, path) in digest_files(&self.repo_dir(&repo).join("_layers"))? {
                if self.blob_path(&d).exists() || self.gc_trash_path(&d).exists() {
                    self.relink_stale(&d, &path)?;
                    continue;
                }
                if park_and_decide(&path, &beside(&path), |_| {
                    self.blob_path(&d).exists() || self.gc_trash_path(&d).exists()
                })? {
                    n += 1;
                }
            }
        }
        Ok(n)
    }

    /// A link is a second name of its blob's file (`make_link`). One that names another file with
    /// data (the blob was collected and pushed again while the link stayed) keeps that old copy's
    /// space: point it at the stored blob. Empty markers (links made without the blob's file, or
    /// before hard links) stay as they are.
    fn relink_stale(&self, d: &Digest, link: &Path) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let blob = self.blob_path(d);
        let (Ok(l), Ok(b)) = (fs::metadata(link), fs::metadata(&blob)) else {
            return Ok(());
        };
        if l.ino() == b.ino() || l.len() == 0 {
            return Ok(());
        }
        let fresh = beside(link);
        match fs::hard_link(&blob, &fresh) {
            Ok(()) => fs::rename(&fresh, link),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Upload sessions and temp files untouched for the grace period.
    fn expire_uploads(
        &self,
        cutoff: SystemTime,
        dry_run: bool,
        verb: &str,
        out: &mut dyn super::Report,
    ) -> io::Result<usize> {
        let mut n = 0;
        if !dry_run {
            let gone = self.expire_memory_sessions(cutoff);
            if gone > 0 {
                out.line(format!(
                    "{verb} {gone} stale upload sessions that never received data"
                ));
                n += gone;
            }
        }
        for (name, path) in entries(&self.uploads_dir())? {
            let newest = if path.is_dir() {
                entries(&path)?
                    .iter()
                    .filter_map(|(_, p)| mtime(p).ok())
                    .chain(mtime(&path).ok())
                    .max()
            } else {
                mtime(&path).ok()
            };
            if newest.is_none_or(|m| m > cutoff) {
                continue;
            }
            if !dry_run {
                self.forget_upload(&name, &path)?;
            }
            out.line(format!("{verb} stale upload {name}"));
            n += 1;
        }
        Ok(n)
    }
}
