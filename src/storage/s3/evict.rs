//! `upstream.max_size` on the bucket (the shared part: `storage::evict`). The last pull of a
//! manifest is the store's time of its pull record, `repos/<repo>/_pulls/<alg>/<hex>` (or of
//! the revision's write, if later), which a pull through the mirror rewrites at most once a
//! minute per worker (`note_pull`). Evicting an image removes each of its tags with a
//! conditional DELETE on the ETag read (a tag moved or set again meanwhile stays), then its
//! unused revisions as `untagged::delete_revision` does (only if still older than the grace
//! period and unchanged: a fill or push meanwhile keeps it), then their pull records.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};

use super::untagged::Revision;
use super::*;
use crate::storage::evict::{self, Image};

/// A pull rewrites its record at most this often per worker.
const NOTE_EVERY: Duration = Duration::from_secs(60);
/// Manifests whose last noted pull a worker remembers.
const NOTED_MAX: usize = 4096;

thread_local! {
    /// (backend, pull record key) → when this worker last wrote it.
    static NOTED: RefCell<HashMap<(u64, String), Instant>> = RefCell::new(HashMap::new());
}

static NOTES_WRITTEN: AtomicU64 = AtomicU64::new(0);
static NOTES_SKIPPED: AtomicU64 = AtomicU64::new(0);
static NOTES_FAILED: AtomicU64 = AtomicU64::new(0);

/// Pull records (written, skipped as written within the minute, failed), all workers.
pub fn note_counts() -> (u64, u64, u64) {
    (
        NOTES_WRITTEN.load(Ordering::Relaxed),
        NOTES_SKIPPED.load(Ordering::Relaxed),
        NOTES_FAILED.load(Ordering::Relaxed),
    )
}

fn pulls_prefix(repo: &RepoName) -> String {
    format!("repos/{repo}/_pulls/")
}

fn pull_key(repo: &RepoName, d: &Digest) -> String {
    format!("{}{}", pulls_prefix(repo), alg_hex(d))
}

/// `NOTE_EVERY`, or a test's shorter period (`WHARF_FAULT_NOTE_EVERY_MS`).
fn note_every() -> Duration {
    #[cfg(feature = "fault-hooks")]
    if let Some(ms) = crate::task::note_every_ms() {
        return Duration::from_millis(ms);
    }
    NOTE_EVERY
}

/// Whether this worker should write the record `key` now; remembers that it does.
fn due(backend: u64, key: &str) -> bool {
    NOTED.with(|n| {
        let mut n = n.borrow_mut();
        let now = Instant::now();
        let id = (backend, key.to_owned());
        if n.get(&id).is_some_and(|at| now - *at < note_every()) {
            return false;
        }
        if n.len() >= NOTED_MAX {
            n.retain(|_, at| now - *at < note_every());
            if n.len() >= NOTED_MAX {
                n.clear();
            }
        }
        n.insert(id, now);
        true
    })
}

/// A cached image on the bucket: revisions named by digest, tags with the ETag they were read with.
type CachedImage = Image<Digest, (Tag, String), u64>;

impl ObjectBackend {
    /// `repo@digest` was pulled: rewrite its pull record, in a task of its own, unless this
    /// worker did within the last minute.
    pub(crate) fn note_pull(&self, repo: &RepoName, digest: &Digest) {
        let key = pull_key(repo, digest);
        if !due(self.id, &key) {
            NOTES_SKIPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let store = Arc::clone(&self.store);
        crate::task::spawn("a pull record", async move {
            match store.put(&key, b"", Cond::None).await {
                Ok(_) => NOTES_WRITTEN.fetch_add(1, Ordering::Relaxed),
                Err(e) => {
                    tracing::debug!("pull record {key} not written: {e}");
                    NOTES_FAILED.fetch_add(1, Ordering::Relaxed)
                }
            };
        });
    }

    /// Evict images under `prefix` pulled before `cutoff` (the store's seconds), least recently
    /// pulled first, until their distinct blobs take at most `budget` bytes.
    pub(super) async fn evict_over_budget(
        &self,
        repos: &[RepoName],
        (prefix, budget): (&str, u64),
        cutoff: u64,
        dry_run: bool,
        out: &mut dyn Report,
        report: &mut GcReport,
    ) -> Result<()> {
        let mut images = Vec::new();
        let mut revisions: HashMap<(RepoName, Digest), Revision> = HashMap::new();
        for repo in repos.iter().filter(|r| evict::under(r, prefix)) {
            images.extend(self.images(repo, cutoff, dry_run, &mut revisions).await?);
        }
        let mut sizes: HashMap<Digest, u64> = HashMap::new();
        for img in &images {
            for b in &img.blobs {
                if sizes.contains_key(b) {
                    continue;
                }
                let size = match self.pointer(b).await? {
                    Some(p) => p.size,
                    // A manifest's bytes live in its revision.
                    None => revisions
                        .get(&(img.repo.clone(), b.clone()))
                        .map_or(0, |r| r.size),
                };
                sizes.insert(b.clone(), size);
            }
        }
        let size_of = |b: &Digest| sizes.get(b).copied().unwrap_or(0);
        let (plan, stopped) = evict::plan(prefix, images, size_of, budget, cutoff);
        #[cfg(feature = "fault-hooks")]
        crate::task::fault_delay("EVICT").await;
        for e in plan {
            let repo = &e.image.repo;
            if !dry_run {
                for (tag, etag) in &e.image.tags {
                    let key = format!("{}{tag}", tags_prefix(repo));
                    match self.store.delete(&key, Some(etag)).await {
                        Ok(()) | Err(S3Error::Precondition) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
                let mut rewritten = false;
                for d in &e.unused_revisions {
                    let rev = &revisions[&(repo.clone(), d.clone())];
                    match self.delete_revision(repo, rev, cutoff).await? {
                        gc::Swept::Deleted => self.store.delete(&pull_key(repo, d), None).await?,
                        // Written again since it was listed (a fill): it stays, untagged.
                        _ => rewritten |= *d == e.image.digest,
                    }
                }
                if rewritten {
                    out.line(e.kept_line());
                    continue;
                }
            }
            out.line(e.line(prefix, budget, dry_run));
            report.evicted.push(format!("{repo}@{}", e.image.digest));
        }
        if let Some(line) = stopped {
            out.line(line);
        }
        Ok(())
    }

    /// The cached images of `repo` (`evict::images`); its revisions go to `revisions`. The pull
    /// records of manifests deleted otherwise (a DELETE, `gc.delete_untagged`) go once older
    /// than `cutoff` (a younger one may be a fill's whose revision was written after the listing).
    async fn images(
        &self,
        repo: &RepoName,
        cutoff: u64,
        dry_run: bool,
        revisions: &mut HashMap<(RepoName, Digest), Revision>,
    ) -> Result<Vec<CachedImage>> {
        let (kept, _) = self.partition_revisions(repo, 0, false).await?;
        let stored: HashSet<&Digest> = kept.iter().map(|r| &r.digest).collect();
        let prefix = pulls_prefix(repo);
        let mut pulls: HashMap<Digest, u64> = HashMap::new();
        for listed in self.all(&prefix).await? {
            let Some(d) = digest_after(&listed.key, &prefix) else {
                continue;
            };
            if stored.contains(&d) {
                pulls.insert(d, listed.modified);
            } else if !dry_run && !gc::maybe_after(listed.modified, cutoff) {
                match self.store.delete(&listed.key, Some(&listed.etag)).await {
                    Ok(()) | Err(S3Error::Precondition) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut revs = HashMap::new();
        for rev in kept {
            let last_pull = pulls
                .get(&rev.digest)
                .copied()
                .unwrap_or(0)
                .max(rev.modified);
            revs.insert(
                rev.digest.clone(),
                evict::Revision {
                    key: rev.digest.clone(),
                    parsed: Some(rev.parsed.clone()),
                    last_pull,
                },
            );
            revisions.insert((repo.clone(), rev.digest.clone()), rev);
        }
        let tags = tags_prefix(repo);
        let mut tagged: HashMap<Digest, Vec<(Tag, String)>> = HashMap::new();
        for listed in self.all(&tags).await? {
            let Some(Ok(tag)) = listed.key.strip_prefix(&tags).map(str::parse::<Tag>) else {
                continue;
            };
            if let Some((d, etag)) = self.tag(repo, &tag).await? {
                tagged.entry(d).or_default().push((tag, etag));
            }
        }
        Ok(evict::images(repo, &revs, tagged))
    }
}
