//! Blobs: pointers, repository links, monolithic writes and verified streamed reads.

use super::*;

impl ObjectBackend {
    /// The blob's pointer, if `repo` links it.
    async fn linked_pointer(&self, repo: &RepoName, d: &Digest) -> Result<Option<Pointer>> {
        let link = link_key(repo, d);
        let (link, pointer) = monoio::join!(self.store.head(&link), self.pointer(d));
        if link?.is_none() {
            return Ok(None);
        }
        pointer
    }

    pub(super) async fn pointer(&self, d: &Digest) -> Result<Option<Pointer>> {
        match self.store.get_bytes(&pointer_key(d), SMALL).await? {
            None => Ok(None),
            Some(b) => Pointer::decode(&b)
                .map(Some)
                .ok_or_else(|| corrupt(format!("blob pointer of {d} is not one"))),
        }
    }

    /// Tell the collector a client is relying on `d` (docs/gc.md): written before the blob is
    /// found present, so a collection that has not yet doomed the blob sees it.
    async fn hold(&self, d: &Digest) -> Result<()> {
        // A nonce: every hold has its own ETag, so the collector's clean-up of an old hold
        // (conditional on the ETag it listed) never removes a newer one.
        self.store
            .put(&hold_key(d), random_id().as_bytes(), Cond::None)
            .await?;
        Ok(())
    }

    /// Whether a collection is deleting `d` now (its tombstone exists).
    async fn doomed(&self, d: &Digest) -> Result<bool> {
        #[cfg(feature = "fault-hooks")]
        crate::task::fault_delay("TOMBSTONE_LOOK").await;
        Ok(self.store.head(&doomed_key(d)).await?.is_some())
    }

    /// The pointer of a blob a client may rely on: held first, then found not being deleted,
    /// then present. A collector deciding about the blob this moment (its tombstone) is waited
    /// for: it lifts the tombstone only after its decision is carried out, so what is found then
    /// is what stays. A tombstone that outlives `DOOM_WAIT` (a collector that died) counts as
    /// absent: the client uploads the blob again.
    ///
    /// The pointer is read only after the look for the tombstone has been answered: read
    /// together, a pointer read before the collector's delete and a tombstone look answered
    /// after its lift would both find nothing amiss, and the client would be told a blob exists
    /// that was deleted in between (found by `scale_out::gc_in_a_loop…` under load;
    /// `s3_gc::a_head_racing_the_collector…`, with delayed looks, shows it at once).
    async fn held_pointer(&self, repo: Option<&RepoName>, d: &Digest) -> Result<Option<Pointer>> {
        self.hold(d).await?;
        let link = repo.map(|r| link_key(r, d));
        let since = std::time::Instant::now();
        loop {
            let linked = async {
                match &link {
                    Some(l) => Ok(self.store.head(l).await?.is_some()),
                    None => Ok::<bool, StoreError>(true),
                }
            };
            let (linked, doomed) = monoio::join!(linked, self.doomed(d));
            if !doomed? {
                return if linked? {
                    self.pointer(d).await
                } else {
                    Ok(None)
                };
            }
            if since.elapsed() >= DOOM_WAIT {
                return Ok(None);
            }
            monoio::time::sleep(DOOM_POLL).await;
        }
    }

    pub(crate) async fn blob_size(&self, repo: &RepoName, d: &Digest) -> Result<Option<u64>> {
        Ok(self.held_pointer(Some(repo), d).await?.map(|p| p.size))
    }

    pub(crate) async fn open_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        inline: u64,
    ) -> Result<BlobRead> {
        let digest = d.to_string();
        if let Some(bytes) = kept::blob(self.id, &digest).filter(|b| b.len() as u64 <= inline) {
            // The bytes stand for the digest; whether `repo` still has the blob is the link's
            // to say.
            if self.store.head(&link_key(repo, d)).await?.is_none() {
                return Err(StoreError::BlobUnknown);
            }
            return Ok(BlobRead {
                size: bytes.len() as u64,
                content: BlobContent::Bytes(bytes),
            });
        }
        let p = self
            .linked_pointer(repo, d)
            .await?
            .ok_or(StoreError::BlobUnknown)?;
        if p.size <= inline {
            let bytes = self
                .store
                .get_bytes(&p.data_key, p.size as usize)
                .await?
                .ok_or(StoreError::BlobUnknown)?;
            if bytes.len() as u64 != p.size || Digest::of(d.algorithm(), &bytes) != *d {
                return Err(corrupt(format!(
                    "the object store returned bytes for {d} that do not match it"
                )));
            }
            kept::keep_blob(self.id, &digest, &bytes);
            return Ok(BlobRead {
                size: p.size,
                content: BlobContent::Bytes(bytes),
            });
        }
        if let Some(ttl) = self.opts.redirect {
            return Ok(BlobRead {
                size: p.size,
                content: BlobContent::Redirect(self.store.presigned_get(&p.data_key, ttl)),
            });
        }
        let (store, size, digest) = (Arc::clone(&self.store), p.size, d.clone());
        let key = p.data_key;
        Ok(BlobRead {
            size,
            content: BlobContent::Stream(Box::new(move |offset, len| {
                let whole = offset == 0 && len == size;
                ByteStream::new(
                    len,
                    Box::new(ObjectChunks {
                        store: Arc::clone(&store),
                        key: key.clone(),
                        offset,
                        len,
                        hasher: whole.then(|| digest.algorithm().hasher()),
                        verify: whole.then(|| digest.clone()),
                        body: None,
                        hashing: None,
                        chunk: SMALL_CHUNK,
                        buffers: None,
                        done: len == 0,
                    }),
                )
            })),
        })
    }

    pub(crate) async fn unlink_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        let key = link_key(repo, d);
        if self.store.head(&key).await?.is_none() {
            return Err(StoreError::BlobUnknown);
        }
        self.store.delete(&key, None).await?;
        Ok(())
    }

    pub(super) async fn link_blob(&self, repo: &RepoName, d: &Digest) -> Result<()> {
        let (link, nonce) = (link_key(repo, d), random_id());
        let (link, listed) = monoio::join!(
            self.store.put(&link, nonce.as_bytes(), Cond::None),
            self.list_repo(repo)
        );
        link?;
        listed
    }

    pub(crate) async fn mount_blob(
        &self,
        repo: &RepoName,
        d: &Digest,
        from: Option<&RepoName>,
    ) -> Result<bool> {
        let available = match from {
            Some(src) => self.held_pointer(Some(src), d).await?.is_some(),
            None => self.held_pointer(None, d).await?.is_some(),
        };
        if available {
            self.link_blob(repo, d).await?;
        }
        Ok(available)
    }

    pub(crate) async fn temp_writer(&self, alg: Algorithm) -> Result<crate::storage::BlobWriter> {
        Ok(crate::storage::BlobWriter::object(writer::BlobWriter::new(
            Arc::clone(&self.store),
            format!("data/{}", random_id()),
            alg.hasher(),
        )))
    }

    /// Verify what `w` received against `expected`, store it under its pointer (unless an equal
    /// blob is there already) and link it into `repo`; its size.
    pub(crate) async fn finish_writer(
        &self,
        w: crate::storage::BlobWriter,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        let size = self.store_verified(w, expected).await?;
        self.link_blob(repo, expected).await?;
        Ok(size)
    }

    /// `finish_writer` but the link: the blob is stored under its pointer; its size.
    pub(super) async fn store_verified(
        &self,
        w: crate::storage::BlobWriter,
        expected: &Digest,
    ) -> Result<u64> {
        let mut w = w.into_object();
        let settled = w.settle().await;
        if let Err(e) = settled.and_then(|()| {
            if w.failed {
                Err(io::Error::other("a part of the blob failed to store"))
            } else {
                Ok(())
            }
        }) {
            w.discard().await;
            return Err(e.into());
        }
        let size = w.offset();
        let mismatch = || StoreError::DigestMismatch {
            expected: expected.clone(),
        };
        // Hashed with another algorithm (a session's hint differed from the final digest): the
        // stored bytes are read back and hashed with the right one before anything points at them.
        let rehash = w.hasher.algorithm() != expected.algorithm();
        if !rehash && w.hasher.clone().finish() != *expected {
            w.discard().await;
            return Err(mismatch());
        }
        // A multipart blob first looks whether it is stored already (`held_pointer`, which holds
        // it), so that a stored blob costs no completion. A smaller blob is one PUT, cheaper than
        // the look: it goes up, and the pointer's conditional write finds out (below); so does a
        // re-hashed upload.
        let stored =
            w.upload_id.is_some() && !rehash && self.held_pointer(None, expected).await?.is_some();
        if !stored {
            if let Err(e) = w.store_data().await {
                w.discard().await;
                return Err(e.into());
            }
            if rehash {
                match self.hash_object(&w.data_key, expected.algorithm()).await {
                    Ok(d) if d == *expected => {}
                    Ok(_) => {
                        let _ = self.store.delete(&w.data_key, None).await;
                        return Err(mismatch());
                    }
                    Err(e) => {
                        let _ = self.store.delete(&w.data_key, None).await;
                        return Err(e);
                    }
                }
            }
            let pointer = Pointer {
                size,
                data_key: w.data_key.clone(),
            };
            let (key, encoded) = (pointer_key(expected), pointer.encode());
            let stored = match self.store.put(&key, &encoded, Cond::Absent).await {
                // A pointer is there: this upload may end as "already stored", so the blob is
                // held before the look for its tombstone, and that look is answered before the
                // pointer is read (docs/gc.md, rule 1).
                Err(S3Error::Precondition) => {
                    self.hold(expected).await?;
                    if self.doomed(expected).await? {
                        // A collection is deleting the blob: ours replaces its pointer, which
                        // makes the collector's conditional delete of the old one fail, and
                        // lifts the tombstone.
                        self.store.put(&key, &encoded, Cond::None).await?;
                        self.store.delete(&doomed_key(expected), None).await?;
                        Ok(())
                    } else if self.pointer(expected).await?.is_none() {
                        // A collection deleted it and lifted its tombstone between our write
                        // and our look: ours goes in (and if yet another upload stored one
                        // meanwhile, that one is kept).
                        self.store.put(&key, &encoded, Cond::Absent).await.map(drop)
                    } else {
                        // Another upload of the same bytes won: its copy is kept.
                        Err(S3Error::Precondition)
                    }
                }
                other => other.map(drop),
            };
            match stored {
                Ok(()) => {}
                // Refused: another upload's pointer is kept and our copy goes, unless the pointer
                // is ours. The S3 client sends a request again when its connection answered
                // nothing (`client::send`); if the store had applied the first attempt, the
                // second is refused by our own pointer, and deleting its data would leave a
                // pointer to nothing.
                Err(S3Error::Precondition) => {
                    if self
                        .pointer(expected)
                        .await?
                        .is_none_or(|p| p.data_key != w.data_key)
                    {
                        let _ = self.store.delete(&w.data_key, None).await;
                    }
                }
                // Whether the pointer was written is unknown (the store may have applied it and
                // the answer was lost): the data stays; if no pointer names it, the collector
                // deletes it after the grace period (docs/gc.md, "Orphaned data").
                Err(e) => return Err(e.into()),
            }
        } else {
            w.discard().await;
        }
        Ok(size)
    }

    /// The digest of the object under `key`, read back whole.
    pub(super) async fn hash_object(&self, key: &str, alg: Algorithm) -> Result<Digest> {
        let mut resp = self
            .store
            .get(key)
            .await?
            .ok_or_else(|| corrupt(format!("{key} vanished right after it was stored")))?;
        let mut h = alg.hasher();
        while let Some(chunk) = resp.body.next_chunk().await.map_err(unavailable)? {
            h.update(&chunk);
        }
        Ok(h.finish())
    }

    pub(crate) async fn discard_writer(&self, w: crate::storage::BlobWriter) {
        w.into_object().discard().await;
    }
}

/// The chunks a stream reads from the store while `limits.response_buffer_budget` holds two of
/// them (one being hashed, one being read or sent): fewer hand-offs to the hashing thread, hash
/// calls and socket writes per byte: 5-11 % more throughput and 7 % less CPU on a 256 MiB pull
/// here (docs/performance.md)...
const LARGE_CHUNK: usize = 512 * 1024;
/// ...and past the budget (`wharf_response_buffer_fallbacks_total`), the size other bodies are
/// read in. (128 KiB would halve what a client that stops reading pins, at 20 % more CPU per
/// byte, and 64 KiB at 50 % more: measured, not taken.)
const SMALL_CHUNK: usize = 256 * 1024;

/// A chunk on its way through the hasher: the hasher and the chunk come back.
type HashedChunk = monoio::task::JoinHandle<io::Result<(Hasher, Vec<u8>)>>;

/// A region of an object as a stream. A read of the whole blob is hashed as it passes, and its
/// last chunk is held back until the digest matches: a client never receives a complete body
/// with wrong bytes, whatever the object store returns. Each chunk is hashed on a bulk thread
/// while the worker sends the one before it and reads the one after (hashing was half of a
/// worker's time on a large pull).
struct ObjectChunks {
    store: Arc<ObjectStore>,
    key: String,
    offset: u64,
    len: u64,
    /// The digest a read of the whole blob must match, and its hasher (away while a chunk is
    /// being hashed).
    verify: Option<Digest>,
    hasher: Option<Hasher>,
    body: Option<crate::client::Body>,
    /// The chunk being hashed (it comes back with the hasher), held until then.
    hashing: Option<HashedChunk>,
    /// The size of the chunks read, and the budget they hold (`LARGE_CHUNK`).
    chunk: usize,
    buffers: Option<crate::net::budget::Reservation>,
    done: bool,
}

impl ObjectChunks {
    async fn next(&mut self) -> io::Result<Option<Vec<u8>>> {
        if self.done {
            return Ok(None);
        }
        if self.body.is_none() {
            let resp = self
                .store
                .get_range(&self.key, self.offset, self.len)
                .await
                .map_err(|e| match StoreError::from(e) {
                    StoreError::Unavailable(why) => crate::storage::Unavailable::io(why),
                    other => io::Error::other(other.to_string()),
                })?
                .ok_or_else(|| io::Error::other(format!("{} is gone from the bucket", self.key)))?;
            if resp.body.remaining() != self.len {
                return Err(io::Error::other(format!(
                    "the object store sent {} bytes of {} for a range of {}",
                    resp.body.remaining(),
                    self.key,
                    self.len
                )));
            }
            self.body = Some(resp.body);
            let large = self.len.min(LARGE_CHUNK as u64) as usize;
            if large > SMALL_CHUNK {
                self.buffers = crate::net::budget::reserve(2 * large);
                if self.buffers.is_some() {
                    self.chunk = large;
                }
            }
        }
        let body = self.body.as_mut().expect("opened above");
        let chunk = body.next_chunk_upto(self.chunk).await?;
        let Some(digest) = self.verify.clone() else {
            self.done = chunk.is_none();
            return Ok(chunk);
        };
        // The chunk before this one, hashed by now (the hasher comes back with it).
        let held = match self.hashing.take() {
            Some(job) => {
                let (hasher, held) = job.await?;
                self.hasher = Some(hasher);
                Some(held)
            }
            None => None,
        };
        let Some(chunk) = chunk else {
            self.done = true;
            let hasher = self.hasher.take().expect("no chunk is being hashed");
            if hasher.finish() != digest {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the object store returned bytes for {digest} that do not match it"),
                ));
            }
            return Ok(held);
        };
        let mut hasher = self.hasher.take().expect("no chunk is being hashed");
        self.hashing = Some(crate::task::spawn("hashing a chunk", async move {
            crate::blocking::run_bulk(move || {
                hasher.update(&chunk);
                (hasher, chunk)
            })
            .await
        }));
        match held {
            Some(held) => Ok(Some(held)),
            // The first chunk: nothing to hand out yet.
            None => Box::pin(self.next()).await,
        }
    }
}

impl Chunks for ObjectChunks {
    fn next_chunk(&mut self) -> NextChunk<'_> {
        Box::pin(self.next())
    }
}
