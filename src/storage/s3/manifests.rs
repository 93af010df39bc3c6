//! Manifest revisions, tags (compare-and-swap on their ETags), referrers and the listings.

use super::*;

impl ObjectBackend {
    pub(crate) async fn put_manifest(
        &self,
        repo: &RepoName,
        bytes: &[u8],
        digest: &Digest,
        parsed: &Parsed,
    ) -> Result<()> {
        for child in &parsed.children {
            self.refresh_revision(repo, child).await?;
        }
        self.write_revision(repo, bytes, digest, &parsed.media_type)
            .await?;
        if let Some(subject) = &parsed.subject {
            let desc = manifest::referrer_descriptor(parsed, digest, bytes.len() as u64);
            let key = referrer_key(repo, subject, digest);
            self.store.put(&key, &desc, Cond::None).await?;
        }
        self.list_repo(repo).await
    }

    /// Write a revision: its media type and a nonce on the first line, then the bytes. The
    /// nonce gives each write its own ETag, so a collection deleting the revision as untagged
    /// (`untagged`) can tell that it was written again after it looked.
    async fn write_revision(
        &self,
        repo: &RepoName,
        bytes: &[u8],
        digest: &Digest,
        media_type: &str,
    ) -> Result<()> {
        self.store
            .put(
                &revision_key(repo, digest),
                &revision_body(bytes, media_type),
                Cond::None,
            )
            .await?;
        Ok(())
    }

    /// An index reaches its children only once it is written (and tagged): a collection that
    /// judged an old untagged child garbage before that would delete it under the index. So a
    /// child older than a quarter of the grace period (by the store's clock: its `Last-Modified`
    /// against the answer's `Date`) is written again first, with a new nonce and `If-Match` on
    /// what was read, as a push of the child would be: the collector's second look finds it young
    /// or changed and keeps it, with its blobs (docs/gc.md). Within one collection (at most half
    /// the grace period) a younger child stays young. A child that is not there is left to the
    /// client, as before (an index may name manifests not pushed yet).
    async fn refresh_revision(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        let key = revision_key(repo, d);
        let Some(resp) = self.store.get(&key).await? else {
            return Ok(());
        };
        let time = |name: &str| resp.header(name).and_then(api::parse_http_date);
        let young = match (time("Last-Modified"), time("Date")) {
            (Some(written), Some(now)) => {
                written.saturating_add(self.opts.grace.as_secs() / 4) > now
            }
            _ => false,
        };
        let etag = resp.header("ETag").unwrap_or_default().to_owned();
        let body = resp.body.bytes(MAX_REVISION).await.map_err(unavailable)?;
        if young {
            return Ok(());
        }
        // A damaged revision is fsck's to report, not ours to write again.
        let Ok((media_type, bytes)) = split_revision(&body, repo, d) else {
            return Ok(());
        };
        match self
            .store
            .put(&key, &revision_body(bytes, media_type), Cond::Etag(&etag))
            .await
        {
            // Refused: written again by someone else (young now), or deleted by a collector
            // before this write (left to the client, as an absent child is).
            Ok(_) | Err(S3Error::Precondition) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Make sure `repo` is in the catalog (written once per repository and worker: `listed`).
    pub(super) async fn list_repo(&self, repo: &RepoName) -> Result<()> {
        if listed::needs_write(self.id, repo.as_str()) {
            self.store.put(&catalog_key(repo), b"", Cond::None).await?;
            listed::remember(self.id, repo.as_str());
        }
        Ok(())
    }

    pub(super) async fn revision(
        &self,
        repo: &RepoName,
        d: &Digest,
    ) -> Result<Option<(String, Vec<u8>)>> {
        let Some(body) = self
            .store
            .get_bytes(&revision_key(repo, d), MAX_REVISION)
            .await?
        else {
            return Ok(None);
        };
        let (media_type, bytes) = split_revision(&body, repo, d)?;
        Ok(Some((media_type.to_owned(), bytes.to_vec())))
    }

    pub(crate) async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest> {
        let (digest, by_tag) = match reference {
            Reference::Digest(d) => (d.clone(), false),
            Reference::Tag(t) => match self.tag(repo, t).await? {
                Some((d, _)) => (d, true),
                None => return Err(StoreError::ManifestUnknown),
            },
        };
        // By tag, the tag object just read says the manifest exists (see `revisions`).
        let cached = by_tag
            .then(|| revisions::get(self.id, repo.as_str(), &digest.to_string()))
            .flatten();
        let (media_type, bytes) = match cached {
            Some(hit) => hit,
            None => {
                let (media_type, bytes) = self
                    .revision(repo, &digest)
                    .await?
                    .ok_or(StoreError::ManifestUnknown)?;
                revisions::put(
                    self.id,
                    repo.as_str(),
                    &digest.to_string(),
                    &media_type,
                    &bytes,
                );
                (media_type, bytes)
            }
        };
        Ok(StoredManifest {
            digest,
            media_type,
            bytes,
        })
    }

    /// Where a tag points and the ETag of its object.
    pub(super) async fn tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<(Digest, String)>> {
        let key = format!("{}{tag}", tags_prefix(repo));
        let Some(resp) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let etag = resp.header("ETag").unwrap_or_default().to_owned();
        let text = resp.body.bytes(SMALL).await.map_err(unavailable)?;
        let d = std::str::from_utf8(&text)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .ok_or_else(|| corrupt(format!("tag {repo}:{tag} is not a digest")))?;
        Ok(Some((d, etag)))
    }

    pub(crate) async fn set_tag(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        let key = format!("{}{tag}", tags_prefix(repo));
        self.store
            .put(&key, digest.to_string().as_bytes(), Cond::None)
            .await?;
        Ok(())
    }

    /// Compare-and-swap on the tag object's ETag: the check and the write see one state, or the
    /// write fails (another node changed the tag in between) and the check runs again on the new
    /// state. A write refused only when sent a second time (its first answer lost) may have been
    /// refused because of itself: if the tag now is what was written (that digest, or gone for a
    /// delete), it is taken as done.
    pub(crate) async fn update_tag(
        &self,
        repo: &RepoName,
        tag: &Tag,
        expect: TagExpect,
        new: Option<&Digest>,
    ) -> Result<()> {
        let key = format!("{}{tag}", tags_prefix(repo));
        let mut resent = false;
        loop {
            let current = self.tag(repo, tag).await?;
            let digest = current.as_ref().map(|(d, _)| d);
            if resent && digest == new {
                return Ok(());
            }
            if !expect.holds(digest) {
                return Err(StoreError::TagPrecondition {
                    target: format!("tag {tag}"),
                    current: digest.cloned(),
                });
            }
            let cond = match &current {
                Some((_, etag)) => Cond::Etag(etag),
                None => Cond::Absent,
            };
            let done = match new {
                Some(d) => self
                    .store
                    .put_if(&key, d.to_string().as_bytes(), cond)
                    .await
                    .map(|r| r.map(drop)),
                None => match &current {
                    None => return Err(StoreError::ManifestUnknown),
                    Some((_, etag)) => self.store.delete_if(&key, Some(etag)).await,
                },
            };
            match done {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(refused)) => resent = refused == api::Refused::Resent,
                Err(e) => return Err(e.into()),
            }
        }
    }

    pub(crate) async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        Ok(self.tag(repo, tag).await?.map(|(d, _)| d))
    }

    /// The tags pointing at `d` and the ETags they were read with.
    async fn tags_at(&self, repo: &RepoName, d: &Digest) -> Result<Vec<(Tag, String)>> {
        let mut out = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let (names, more) = self.list_tags(repo, last.as_deref(), 1000).await?;
            for name in &names {
                let Ok(tag) = name.parse::<Tag>() else {
                    continue;
                };
                if let Some((at, etag)) = self.tag(repo, &tag).await?
                    && at == *d
                {
                    out.push((tag, etag));
                }
            }
            if !more {
                return Ok(out);
            }
            last = names.last().cloned();
        }
    }

    pub(crate) async fn tags_pointing_at(&self, repo: &RepoName, d: &Digest) -> Result<Vec<Tag>> {
        Ok(self
            .tags_at(repo, d)
            .await?
            .into_iter()
            .map(|(t, _)| t)
            .collect())
    }

    /// Each tag is removed only if it still points where it was read (conditional DELETE); a tag
    /// moved onto the manifest meanwhile is found by the check after the revision is gone, and
    /// the revision is put back (`TagMoved`), so no tag ever points at nothing for long.
    pub(crate) async fn delete_manifest(
        &self,
        repo: &RepoName,
        d: &Digest,
        decided: &[Tag],
    ) -> Result<()> {
        let (media_type, bytes) = self
            .revision(repo, d)
            .await?
            .ok_or(StoreError::ManifestUnknown)?;
        let tags = self.tags_at(repo, d).await?;
        if let Some((t, _)) = tags.iter().find(|(t, _)| !decided.contains(t)) {
            return Err(StoreError::TagMoved(t.to_string()));
        }
        for (tag, etag) in &tags {
            let key = format!("{}{tag}", tags_prefix(repo));
            match self.store.delete(&key, Some(etag)).await {
                Ok(()) => {}
                Err(S3Error::Precondition) => return Err(StoreError::TagMoved(tag.to_string())),
                Err(e) => return Err(e.into()),
            }
        }
        self.store.delete(&revision_key(repo, d), None).await?;
        if let Some((t, _)) = self.tags_at(repo, d).await?.first() {
            let parsed = manifest::parse(&bytes, Some(&media_type))
                .map_err(|e| corrupt(format!("stored manifest {repo}@{d}: {e:?}")))?;
            self.put_manifest(repo, &bytes, d, &parsed).await?;
            return Err(StoreError::TagMoved(t.to_string()));
        }
        if let Ok(parsed) = manifest::parse(&bytes, Some(&media_type))
            && let Some(subject) = parsed.subject
        {
            let key = referrer_key(repo, &subject, d);
            self.store.delete(&key, None).await?;
        }
        Ok(())
    }

    /// Keys under `prefix` after `last`, at most `n`, with the prefix removed.
    async fn names(
        &self,
        prefix: &str,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool)> {
        let after = last.map(|l| format!("{prefix}{l}"));
        let mut out = Vec::new();
        let mut cursor = after;
        // A page of the store holds at most 1,000 keys: ask again until `n` are there.
        loop {
            let want = (n - out.len()).min(1000);
            let (page, more) = self.store.list(prefix, cursor.as_deref(), want).await?;
            cursor = page.last().map(|l| l.key.clone());
            out.extend(
                page.into_iter()
                    .filter_map(|l| l.key.strip_prefix(prefix).map(str::to_owned)),
            );
            if !more || out.len() >= n || cursor.is_none() {
                return Ok((out, more));
            }
        }
    }

    pub(crate) async fn list_tags(
        &self,
        repo: &RepoName,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool)> {
        let (tags, more) = self.names(&tags_prefix(repo), last, n.max(1)).await?;
        if tags.is_empty() && last.is_none() && self.store.head(&catalog_key(repo)).await?.is_none()
        {
            return Err(StoreError::NameUnknown);
        }
        if n == 0 {
            return Ok((Vec::new(), !tags.is_empty()));
        }
        Ok((tags, more))
    }

    pub(crate) async fn catalog_page(
        &self,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool)> {
        if n == 0 {
            let (some, _) = self.names("catalog/", last, 1).await?;
            return Ok((Vec::new(), !some.is_empty()));
        }
        self.names("catalog/", last, n).await
    }

    pub(crate) async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<Vec<u8>>, Option<String>)> {
        let prefix = referrers_prefix(repo, subject);
        let (names, more) = self.names(&prefix, last, n.max(1)).await?;
        let mut out = Vec::with_capacity(names.len());
        for name in &names {
            if let Some(desc) = self
                .store
                .get_bytes(&format!("{prefix}{name}"), SMALL)
                .await?
            {
                out.push(desc);
            }
        }
        Ok((out, names.last().filter(|_| more).cloned()))
    }
}

/// A revision object: `<media type> <nonce>` on the first line, then the manifest's bytes.
fn revision_body(bytes: &[u8], media_type: &str) -> Vec<u8> {
    let nonce = random_id();
    let mut body = Vec::with_capacity(media_type.len() + nonce.len() + 2 + bytes.len());
    body.extend_from_slice(media_type.as_bytes());
    body.push(b' ');
    body.extend_from_slice(nonce.as_bytes());
    body.push(b'\n');
    body.extend_from_slice(bytes);
    body
}

/// A revision object's media type and manifest bytes, checked against `d`.
fn split_revision<'b>(body: &'b [u8], repo: &RepoName, d: &Digest) -> Result<(&'b str, &'b [u8])> {
    let torn = || corrupt(format!("manifest revision {repo}@{d} is torn"));
    let nl = body.iter().position(|&b| b == b'\n').ok_or_else(torn)?;
    // `<media type> <nonce>`; revisions written before the nonce have the media type alone.
    let line = std::str::from_utf8(&body[..nl]).map_err(|_| torn())?;
    let media_type = line.split(' ').next().unwrap_or_default();
    let bytes = &body[nl + 1..];
    if Digest::of(d.algorithm(), bytes) != *d {
        return Err(corrupt(format!(
            "the object store returned a manifest for {repo}@{d} that does not match it"
        )));
    }
    Ok((media_type, bytes))
}
