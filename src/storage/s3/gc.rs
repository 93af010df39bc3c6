//! Garbage collection on the bucket, safe while any number of nodes push, mount and pull
//! (docs/gc.md has the argument). Mark: every manifest revision of every repository (with
//! `gc.delete_untagged`, those a tag or a young revision reaches; the others go, `untagged`), and
//! what it references. Sweep: each unmarked blob whose pointer is older than the grace period is
//! doomed (a tombstone object), then its hold is checked; a blob a client was told about within the
//! grace period is kept, any other is deleted with a conditional DELETE on the pointer's ETag (a
//! pointer replaced meanwhile survives). Times are the store's clock throughout.

use std::collections::HashSet;

use super::*;

/// Whether a store timestamp may be later than `cutoff`, both whole seconds truncated from the
/// true times: every comparison leans towards keeping.
pub(super) fn maybe_after(modified: u64, cutoff: u64) -> bool {
    modified >= cutoff
}

/// How long a collection's lock object keeps other collectors away (a killed collector's lock
/// is taken over after this).
const LOCK_FOR: u64 = 3600;

/// `LOCK_FOR`, or a test's shorter age (`task::gc_lock_for`).
fn lock_for() -> u64 {
    #[cfg(feature = "fault-hooks")]
    if let Some(secs) = crate::task::gc_lock_for() {
        return secs;
    }
    LOCK_FOR
}

impl ObjectBackend {
    pub(crate) fn collect_garbage(
        &self,
        opts: &GcOptions,
        out: &mut dyn Report,
    ) -> io::Result<GcReport> {
        off_worker(self.collect(opts, out)).map_err(|e| io::Error::other(e.to_string()))
    }

    async fn collect(&self, opts: &GcOptions, out: &mut dyn Report) -> Result<GcReport> {
        let store = &self.store;
        let now = store.now().await?;
        self.lock(now).await?;
        let result = self.collect_locked(now, opts, out).await;
        let _ = store.delete("gc/lock", None).await;
        result
    }

    /// Take `gc/lock` (write-once); a lock older than `LOCK_FOR` is a dead collector's.
    async fn lock(&self, now: u64) -> Result<()> {
        // A nonce: a resend refused because of our own first attempt (applied by the store, its
        // answer lost) is told from another collector's lock.
        let body = format!("{now} {}", random_id());
        for _ in 0..2 {
            match self
                .store
                .put_if("gc/lock", body.as_bytes(), Cond::Absent)
                .await?
            {
                Ok(_) => return Ok(()),
                Err(api::Refused::Resent)
                    if self.store.get_bytes("gc/lock", SMALL).await?.as_deref()
                        == Some(body.as_bytes()) =>
                {
                    return Ok(());
                }
                Err(_) => {}
            }
            let Some(held) = self.store.head("gc/lock").await? else {
                continue;
            };
            if now.saturating_sub(held.modified) < lock_for() {
                return Err(StoreError::Io(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    "another garbage collection is running on this bucket (gc/lock)",
                )));
            }
            match self.store.delete("gc/lock", Some(&held.etag)).await {
                Ok(()) | Err(S3Error::Precondition) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(StoreError::Io(io::Error::other(
            "could not take gc/lock: another collector keeps taking it",
        )))
    }

    /// Every key under `prefix`, listed page by page.
    pub(super) async fn all(&self, prefix: &str) -> Result<Vec<api::Listed>> {
        let mut out: Vec<api::Listed> = Vec::new();
        loop {
            let after = out.last().map(|l| l.key.clone());
            let (page, more) = self.store.list(prefix, after.as_deref(), 1000).await?;
            let empty = page.is_empty();
            out.extend(page);
            if !more || empty {
                return Ok(out);
            }
        }
    }

    async fn collect_locked(
        &self,
        now: u64,
        opts: &GcOptions,
        out: &mut dyn Report,
    ) -> Result<GcReport> {
        let started = Instant::now();
        let cutoff = now.saturating_sub(opts.grace.as_secs());
        let verb = if opts.dry_run {
            "would delete"
        } else {
            "deleted"
        };
        let mut report = GcReport::default();
        // Tombstones of a collector that died: nothing is being deleted now.
        if !opts.dry_run {
            for t in self.all("doomed/").await? {
                self.store.delete(&t.key, None).await?;
            }
        }

        let repos = self.all("catalog/").await?;
        // Pull-through caches over their budget lose the images pulled least recently first.
        if !opts.budgets.is_empty() {
            let names: Vec<RepoName> = repos.iter().filter_map(|r| catalog_repo(&r.key)).collect();
            for (prefix, budget) in &opts.budgets {
                let budget = (prefix.as_str(), *budget);
                self.evict_over_budget(&names, budget, cutoff, opts.dry_run, out, &mut report)
                    .await?;
            }
        }

        // Mark: the kept revisions (all of them without `delete_untagged`), what they reference
        // and their children.
        let mut marked: HashSet<Digest> = HashSet::new();
        let mut untagged: Vec<(RepoName, untagged::Revision)> = Vec::new();
        for (i, repo) in repos.iter().enumerate() {
            out.progress("marking repositories", i as u64, repos.len() as u64);
            let Some(name) = catalog_repo(&repo.key) else {
                continue;
            };
            let (kept, dropped) = self
                .partition_revisions(&name, cutoff, opts.delete_untagged)
                .await?;
            for rev in kept {
                mark(&mut marked, rev);
            }
            untagged.extend(dropped.into_iter().map(|r| (name.clone(), r)));
        }

        #[cfg(feature = "fault-hooks")]
        crate::task::fault_delay("MARKED").await;
        // Untagged revisions (only with `delete_untagged`): each looked at again and deleted
        // only if still old and unchanged (`untagged`); marked after all when a push wrote it
        // meanwhile.
        for (repo, rev) in untagged {
            let swept = if opts.dry_run {
                Swept::Deleted
            } else {
                self.delete_revision(&repo, &rev, cutoff).await?
            };
            if matches!(swept, Swept::Deleted) {
                out.line(format!("{verb} manifest {repo}@{}", rev.digest));
                report.manifests.push(format!("{repo}@{}", rev.digest));
            } else {
                mark(&mut marked, rev);
            }
        }

        // Sweep. Data objects are listed before pointers: data whose pointer is written by the
        // time pointers are listed is named by it (`collect_orphans`).
        let data = self.all("data/").await?;
        let pointers = self.all("blobs/").await?;
        let mut deleted: HashSet<Digest> = HashSet::new();
        let mut gone: HashSet<String> = HashSet::new();
        for (i, p) in pointers.iter().enumerate() {
            out.progress("sweeping blobs", i as u64, pointers.len() as u64);
            let Some(d) = digest_after(&p.key, "blobs/") else {
                continue;
            };
            if marked.contains(&d) {
                continue;
            }
            if maybe_after(p.modified, cutoff) {
                report.young += 1;
                continue;
            }
            // A hold written after marking began is seen as young only while we run for less
            // than half the grace period.
            if !opts.grace.is_zero() && started.elapsed() > opts.grace / 2 {
                report.stopped_early = true;
                break;
            }
            let Some(pointer) = self.pointer(&d).await? else {
                continue;
            };
            gone.insert(pointer.data_key.clone());
            if !opts.dry_run {
                match self.delete_blob(&d, &pointer, &p.etag, cutoff).await? {
                    Swept::Deleted => {}
                    Swept::Held => {
                        report.young += 1;
                        continue;
                    }
                    Swept::Replaced => continue,
                }
            }
            out.line(format!("{verb} blob {d} ({} bytes)", pointer.size));
            report.bytes += pointer.size;
            report.blobs.push((d.clone(), pointer.size));
            deleted.insert(d);
        }
        if !report.stopped_early {
            let sweep = Sweep {
                cutoff,
                started,
                opts,
                verb,
            };
            let (n, bytes) = self
                .collect_orphans(&data, &pointers, &gone, &sweep, &mut report, out)
                .await?;
            report.uploads += n;
            report.bytes += bytes;
        }
        if !opts.dry_run {
            report.links = self.remove_links_to(&repos, &deleted).await?;
            for h in self.all("holds/").await? {
                if !maybe_after(h.modified, cutoff) {
                    match self.store.delete(&h.key, Some(&h.etag)).await {
                        Ok(()) | Err(S3Error::Precondition) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        report.uploads += self
            .expire_sessions(cutoff, opts.dry_run, verb, out)
            .await?;
        if !report.stopped_early {
            report.uploads += self.abort_strays(cutoff, opts.dry_run, out).await?;
        }
        Ok(report)
    }

    /// `data/` objects no pointer names (left by an upload that lost a race, or a node that died
    /// between storing the bytes and writing the pointer): deleted once older than the grace
    /// period, unless an upload session (`uploads/<id>`) or a young data hold (`holds/data-<id>`,
    /// put down before a multipart object is completed) says they are still being written.
    /// `gone` are the data objects of blobs this run deleted. Returns the count and bytes.
    async fn collect_orphans(
        &self,
        data: &[api::Listed],
        pointers: &[api::Listed],
        gone: &HashSet<String>,
        sweep: &Sweep<'_>,
        report: &mut GcReport,
        out: &mut dyn Report,
    ) -> Result<(usize, u64)> {
        let old: Vec<&api::Listed> = data
            .iter()
            .filter(|o| !maybe_after(o.modified, sweep.cutoff) && !gone.contains(&o.key))
            .collect();
        if old.is_empty() {
            return Ok((0, 0));
        }
        // Which data each pointer names: one small read per blob, only when there are old data
        // objects to judge.
        let mut named: HashSet<String> = self.quarantined_data().await?;
        for (i, p) in pointers.iter().enumerate() {
            out.progress("reading blob pointers", i as u64, pointers.len() as u64);
            if let Some(d) = digest_after(&p.key, "blobs/")
                && let Some(pointer) = self.pointer(&d).await?
            {
                named.insert(pointer.data_key);
            }
        }
        let (mut n, mut bytes) = (0, 0);
        for o in old {
            if named.contains(&o.key) {
                continue;
            }
            let grace = sweep.opts.grace;
            if !grace.is_zero() && sweep.started.elapsed() > grace / 2 {
                report.stopped_early = true;
                break;
            }
            if self.data_in_use(&o.key, sweep.cutoff).await? {
                continue;
            }
            if !sweep.opts.dry_run {
                match self.store.delete(&o.key, Some(&o.etag)).await {
                    Ok(()) | Err(S3Error::Precondition) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            out.line(format!(
                "{} unreferenced data object {} ({} bytes)",
                sweep.verb, o.key, o.len
            ));
            n += 1;
            bytes += o.len;
        }
        Ok((n, bytes))
    }

    /// Doom, check the hold, delete (conditionally on the pointer's ETag), lift the tombstone.
    async fn delete_blob(
        &self,
        d: &Digest,
        pointer: &Pointer,
        etag: &str,
        cutoff: u64,
    ) -> Result<Swept> {
        // Most held blobs are passed over without a tombstone (which makes requests wait).
        if let Some(hold) = self.store.head(&hold_key(d)).await?
            && maybe_after(hold.modified, cutoff)
        {
            return Ok(Swept::Held);
        }
        let tomb = doomed_key(d);
        self.store.put(&tomb, b"", Cond::None).await?;
        let swept = async {
            if let Some(hold) = self.store.head(&hold_key(d)).await?
                && maybe_after(hold.modified, cutoff)
            {
                return Ok(Swept::Held);
            }
            #[cfg(feature = "fault-hooks")]
            crate::task::fault_delay("SWEEP").await;
            match self.store.delete(&pointer_key(d), Some(etag)).await {
                Ok(()) => {}
                Err(S3Error::Precondition) => return Ok(Swept::Replaced),
                Err(e) => return Err(StoreError::from(e)),
            }
            self.store.delete(&pointer.data_key, None).await?;
            Ok(Swept::Deleted)
        }
        .await;
        self.store.delete(&tomb, None).await?;
        swept
    }

    /// Remove the repository links of blobs this run deleted. Each link object holds a nonce,
    /// so the delete is conditional on the ETag listed: a link written again since (the blob
    /// uploaded anew) stays.
    async fn remove_links_to(
        &self,
        repos: &[api::Listed],
        deleted: &HashSet<Digest>,
    ) -> Result<usize> {
        let mut n = 0;
        if deleted.is_empty() {
            return Ok(0);
        }
        for repo in repos {
            let Some(name) = catalog_repo(&repo.key) else {
                continue;
            };
            let prefix = format!("repos/{name}/_layers/");
            for link in self.all(&prefix).await? {
                let Some(d) = digest_after(&link.key, &prefix) else {
                    continue;
                };
                if deleted.contains(&d) && self.pointer(&d).await?.is_none() {
                    match self.store.delete(&link.key, Some(&link.etag)).await {
                        Ok(()) => n += 1,
                        Err(S3Error::Precondition) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(n)
    }

    /// Upload sessions untouched for the grace period: their parts are dropped and they go.
    async fn expire_sessions(
        &self,
        cutoff: u64,
        dry_run: bool,
        verb: &str,
        out: &mut dyn Report,
    ) -> Result<usize> {
        let mut n = 0;
        for s in self.all("uploads/").await? {
            if maybe_after(s.modified, cutoff) {
                continue;
            }
            let id = &s.key["uploads/".len()..];
            if !dry_run {
                // Deleted only as listed (a chunk written since keeps it), then its parts go.
                let Some(resp) = self.store.get(&s.key).await? else {
                    continue;
                };
                let etag = resp.header("ETag").unwrap_or_default().to_owned();
                let bytes = resp.body.bytes(MAX_SESSION).await.map_err(unavailable)?;
                if etag != s.etag {
                    continue;
                }
                match self.store.delete(&s.key, Some(&etag)).await {
                    Ok(()) => {}
                    Err(S3Error::Precondition) => continue,
                    Err(e) => return Err(e.into()),
                }
                if let Some(session) = writer::Session::decode(&bytes)
                    && let Some(upload_id) = &session.upload_id
                {
                    self.store
                        .abort_multipart(&session.data_key, upload_id)
                        .await?;
                }
            }
            out.line(format!("{verb} stale upload session {id}"));
            n += 1;
        }
        Ok(n)
    }
}

impl ObjectBackend {
    /// Whether `data/<id>` is still someone's: its upload session `uploads/<id>` exists, or a
    /// data hold written after `cutoff` says a push is completing it.
    async fn data_in_use(&self, data_key: &str, cutoff: u64) -> Result<bool> {
        let id = data_key.trim_start_matches("data/");
        if self.store.head(&upload_key(id)).await?.is_some() {
            return Ok(true);
        }
        let hold = self.store.head(&data_hold_key(data_key)).await?;
        Ok(hold.is_some_and(|h| maybe_after(h.modified, cutoff)))
    }

    /// Multipart uploads nothing will complete, aborted with their parts: begun by a chunk that
    /// failed or lost its session's compare-and-swap, by a push whose client went away, or by a
    /// node killed mid-upload (none of which any object names). One on `data/<id>` is left to
    /// its session while `uploads/<id>` exists (`expire_sessions` aborts it with the session);
    /// any other goes once it started before `cutoff` and no part of it is younger, or a young
    /// data hold says it is being completed.
    async fn abort_strays(
        &self,
        cutoff: u64,
        dry_run: bool,
        out: &mut dyn Report,
    ) -> Result<usize> {
        let mut n = 0;
        let mut after: Option<(String, String)> = None;
        loop {
            let marker = after.as_ref().map(|(k, u)| (k.as_str(), u.as_str()));
            let (page, more) = self.store.list_multipart("data/", marker).await?;
            for u in &page {
                if maybe_after(u.initiated, cutoff) {
                    continue;
                }
                if self.data_in_use(&u.key, cutoff).await? {
                    continue;
                }
                if let Some(t) = self.store.newest_part(&u.key, &u.upload_id).await?
                    && maybe_after(t, cutoff)
                {
                    continue;
                }
                if !dry_run {
                    self.store.abort_multipart(&u.key, &u.upload_id).await?;
                }
                let verb = if dry_run { "would abort" } else { "aborted" };
                out.line(format!("{verb} abandoned multipart upload of {}", u.key));
                n += 1;
            }
            // The last upload listed is where the next page starts (SeaweedFS names no
            // NextKeyMarker); a page that does not move on ends the walk.
            let last = page.last().map(|u| (u.key.clone(), u.upload_id.clone()));
            if !more || last.is_none() || last == after {
                return Ok(n);
            }
            after = last;
        }
    }
}

/// What one collection run decides by.
struct Sweep<'a> {
    cutoff: u64,
    started: Instant,
    opts: &'a GcOptions,
    verb: &'a str,
}

/// What a revision adds to the marked set: itself, the blobs it needs, its children.
fn mark(marked: &mut HashSet<Digest>, rev: untagged::Revision) {
    marked.insert(rev.digest);
    marked.extend(rev.parsed.required_blobs);
    marked.extend(rev.parsed.children);
}

/// What became of a blob (or an untagged revision) the sweep tried to delete.
pub(super) enum Swept {
    Deleted,
    /// A client was told it exists within the grace period.
    Held,
    /// Stored again while being deleted (its pointer changed).
    Replaced,
}
