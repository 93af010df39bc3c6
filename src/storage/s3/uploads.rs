//! Upload sessions kept in the bucket, so that any node takes the next chunk.

use super::*;

impl ObjectBackend {
    pub(crate) async fn start_upload(
        &self,
        repo: &RepoName,
        alg: Algorithm,
        client: IpAddr,
    ) -> Result<String> {
        let limits = self.opts.limits;
        let held = {
            let sessions = self
                .started
                .sessions
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if limits.max > 0 && sessions.len() >= limits.max {
                return Err(StoreError::TooManySessions {
                    per_client: false,
                    limit: limits.max,
                });
            }
            self.started
                .per_client
                .acquire(client)
                .ok_or(StoreError::TooManySessions {
                    per_client: true,
                    limit: limits.per_client,
                })?
        };
        let id = random_id();
        let session = writer::Session {
            repo: repo.clone(),
            alg,
            offset: 0,
            data_key: format!("data/{id}"),
            upload_id: None,
            started: now_secs(),
            hash_state: alg.hasher().save(),
            etags: Vec::new(),
            tail: Vec::new(),
        };
        match self
            .store
            .put(&upload_key(&id), &session.encode(), Cond::Absent)
            .await
        {
            // The id is new and random: a refusal is our own first attempt, applied by the
            // store and sent again by the S3 client after its answer was lost (`client::send`).
            Ok(_) | Err(S3Error::Precondition) => {}
            Err(e) => return Err(e.into()),
        }
        self.started
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.clone(), (Instant::now(), held));
        Ok(id)
    }

    /// The session `id` of `repo` and the ETag it was read with.
    async fn session(&self, repo: &RepoName, id: &str) -> Result<(writer::Session, String)> {
        let (bytes, etag) = self
            .session_object(&upload_key(id))
            .await?
            .ok_or(StoreError::UploadUnknown)?;
        match writer::Session::decode(&bytes) {
            Some(s) if s.repo == *repo => Ok((s, etag)),
            _ => Err(StoreError::UploadUnknown),
        }
    }

    pub(crate) async fn lease_upload(
        &self,
        repo: &RepoName,
        id: &str,
        _completing: bool,
    ) -> Result<UploadLease> {
        let (session, etag) = self.session(repo, id).await?;
        let (alg, started) = (session.alg, session.started);
        let had_upload = session.upload_id.is_some();
        let w = session
            .writer(Arc::clone(&self.store))
            .ok_or(StoreError::UploadUnknown)?;
        Ok(UploadLease {
            id: id.to_owned(),
            repo: repo.clone(),
            alg,
            started,
            etag,
            had_upload,
            writer: crate::storage::BlobWriter::object(w),
        })
    }

    /// Drop a lease whose chunk failed: the session stays as the last answered chunk left it,
    /// and a multipart upload this chunk began (which the session does not name) is aborted now
    /// rather than by the collector.
    pub(crate) async fn abandon_upload(&self, lease: UploadLease) {
        lease
            .writer
            .into_object()
            .discard_begun(lease.had_upload)
            .await;
    }

    /// Keep what this request's chunk added: the session object is replaced if nobody changed it
    /// since the lease read it; the new offset.
    pub(crate) async fn release_upload(&self, lease: UploadLease) -> Result<u64> {
        let UploadLease {
            id,
            repo,
            alg,
            started,
            etag,
            had_upload,
            writer,
        } = lease;
        let mut w = writer.into_object();
        // Refused for sure (a part failed, or another request changed the session first): a
        // multipart upload this chunk began is aborted. Not when the session's update ended in
        // an error, which the store may have applied.
        let settled = w.settle().await;
        if settled.is_err() || w.failed {
            w.discard_begun(had_upload).await;
            settled?;
            return Err(io::Error::other("a part of the chunk failed to store").into());
        }
        let encoded = writer::Session::after(repo, alg, started, &w).encode();
        let key = upload_key(&id);
        match self.store.put_if(&key, &encoded, Cond::Etag(&etag)).await? {
            Ok(_) => Ok(w.offset()),
            // Sent twice (`client::send` resends when a pooled connection answers nothing): the
            // first attempt may have been applied and changed the ETag the second is refused by.
            // If the session holds exactly our state, the chunk is stored.
            Err(api::Refused::Resent)
                if self.session_object(&key).await?.map(|(b, _)| b) == Some(encoded) =>
            {
                Ok(w.offset())
            }
            Err(_) => {
                w.discard_begun(had_upload).await;
                Err(StoreError::UploadBusy { offset: 0 })
            }
        }
    }

    /// The stored session object under `key` as it is, and its ETag.
    async fn session_object(&self, key: &str) -> Result<Option<(Vec<u8>, String)>> {
        let Some(resp) = self.store.get(key).await? else {
            return Ok(None);
        };
        let etag = resp.header("ETag").unwrap_or_default().to_owned();
        let bytes = resp.body.bytes(MAX_SESSION).await.map_err(unavailable)?;
        Ok(Some((bytes, etag)))
    }

    pub(crate) async fn upload_offset(&self, repo: &RepoName, id: &str) -> Result<u64> {
        Ok(self.session(repo, id).await?.0.offset)
    }

    pub(crate) async fn complete_upload(
        &self,
        lease: UploadLease,
        expected: &Digest,
        repo: &RepoName,
    ) -> Result<u64> {
        let id = lease.id;
        let size = self.store_verified(lease.writer, expected).await?;
        // The blob is stored: the session goes while the link is written. (Should the link
        // fail, the client uploads again, and that upload finds this pointer and keeps it.)
        let (linked, ()) = monoio::join!(self.link_blob(repo, expected), self.forget_session(&id));
        linked?;
        Ok(size)
    }

    pub(crate) async fn cancel_upload(&self, repo: &RepoName, id: &str) -> Result<()> {
        let (session, _) = self.session(repo, id).await?;
        if let Some(w) = session.writer(Arc::clone(&self.store)) {
            w.discard().await;
        }
        self.forget_session(id).await;
        Ok(())
    }

    async fn forget_session(&self, id: &str) {
        self.started
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Err(e) = self.store.delete(&upload_key(id), None).await {
            tracing::warn!("upload session {id} stays in the bucket until collected: {e}");
        }
    }

    pub(crate) fn open_uploads(&self) -> usize {
        self.started
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    pub(crate) fn session_limits(&self) -> SessionLimits {
        self.opts.limits
    }

    /// Stop counting sessions started here and idle past the timeout (their objects stay for
    /// whichever node the client continues on).
    pub(crate) fn expire_idle_sessions(&self) -> usize {
        let Some(cutoff) = Instant::now().checked_sub(self.opts.limits.idle) else {
            return 0;
        };
        let mut sessions = self
            .started
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let before = sessions.len();
        sessions.retain(|_, (at, _)| *at > cutoff);
        before - sessions.len()
    }
}

/// Exclusive use of an upload session for one request (`release_upload` keeps its chunk).
pub struct UploadLease {
    id: String,
    repo: RepoName,
    alg: Algorithm,
    started: u64,
    /// The session object's ETag when read: the release replaces exactly that state.
    etag: String,
    /// The session named a multipart upload when leased (else one this chunk begins is its own).
    had_upload: bool,
    writer: crate::storage::BlobWriter,
}

impl UploadLease {
    pub fn writer(&mut self) -> &mut crate::storage::BlobWriter {
        &mut self.writer
    }
}
