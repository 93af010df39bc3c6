//! Repositories under an upstream's prefix (`[[upstream]]`, `crate::mirror`): manifests and blobs
//! the store lacks are fetched upstream, checked against their digest, stored as ordinary content
//! (linked into the mirrored repository), then served as any other; a tag is asked upstream on
//! every GET and, when the upstream cannot answer, served from the store with a `Warning`. Writes
//! under the prefix are refused.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{HandlerResult, Registry};
use crate::action::Action;
use crate::http::{Method, Payload, RequestHead, Response};
use crate::mirror::flight::{self, Flight, Joined};
use crate::mirror::{Route, Upstream, UpstreamError};
use crate::net::pool::Block;
use crate::oci::{Digest, ErrorKind, OciError, Reference, RepoName, Tag, manifest};
use crate::storage::{Storage, StoreError};

/// Why a request through the mirror for `what` failed, as the client sees it; `unknown` is the
/// code for "not there" (`MANIFEST_UNKNOWN`, `BLOB_UNKNOWN`).
fn upstream_error(up: &Upstream, what: &str, unknown: ErrorKind, e: UpstreamError) -> OciError {
    match e {
        UpstreamError::NotFound => OciError::new(
            unknown,
            format!("{what} is not in upstream {} ({})", up.name, up.url),
        ),
        UpstreamError::Unavailable(why) => OciError::new(
            ErrorKind::StorageUnavailable,
            format!(
                "{what} is not cached and upstream {} cannot be reached ({why}); try again later",
                up.name
            ),
        ),
        UpstreamError::Busy(why, wait) => OciError::new(
            ErrorKind::StorageUnavailable,
            format!(
                "{what} is not cached and upstream {} is busy ({why}); try again later",
                up.name
            ),
        )
        .with_retry_after(wait),
        UpstreamError::Refused(status, body) => OciError::new(
            ErrorKind::StorageUnavailable,
            format!(
                "upstream {} refused {what} with {status} ({}); check its credentials in [[upstream]]",
                up.name,
                body.chars().take(200).collect::<String>()
            ),
        ),
    }
}

impl Registry {
    /// Answer `action` if it is about a mirrored repository (`None`: not mirrored).
    pub(super) async fn mirrored(
        &self,
        action: &Action,
        head: &RequestHead,
    ) -> Option<HandlerResult> {
        let mirror = self.mirror.as_ref()?;
        let repo = action.repository()?;
        let Route {
            upstream: up,
            name,
            local,
        } = mirror.route(repo, &head.query)?;
        Some(match action {
            Action::GetManifest { reference, .. } => {
                let answer = self
                    .mirror_manifest(&up, &name, &local, reference, head)
                    .await;
                // The last pull, which eviction under `upstream.max_size` goes by.
                if let Ok(r) = &answer
                    && let Some(d) = r
                        .headers
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("Docker-Content-Digest"))
                        .and_then(|(_, d)| d.parse::<Digest>().ok())
                {
                    self.storage.note_pull(&local, &d);
                }
                answer
            }
            Action::GetBlob { digest, .. } => {
                self.mirror_blob(up, &name, &local, digest, head).await
            }
            // Reads of what is cached.
            Action::ListTags { page, .. } => self.list_tags(&local, page).await,
            Action::GetReferrers {
                digest,
                artifact_type,
                page,
                ..
            } => {
                self.get_referrers(&local, digest, artifact_type.as_deref(), page)
                    .await
            }
            _ => Err(OciError::new(
                ErrorKind::Denied,
                format!(
                    "{repo} mirrors {}/{name} (upstream {}): it is read-only here; push to a name \
                     outside the mirrored names",
                    up.url, up.name
                ),
            )),
        })
    }

    async fn mirror_manifest(
        &self,
        up: &Upstream,
        name: &str,
        repo: &RepoName,
        reference: &Reference,
        head: &RequestHead,
    ) -> HandlerResult {
        let tag = match reference {
            Reference::Digest(_) => {
                match self.storage.get_manifest(repo, reference).await {
                    Ok(_) => {
                        up.stats.cache(false, true);
                        return self.get_manifest(repo, reference, head).await;
                    }
                    Err(StoreError::ManifestUnknown) => {}
                    Err(e) => return Err(e.into()),
                }
                return self
                    .fetch_manifest(up, name, repo, reference, None, head)
                    .await;
            }
            Reference::Tag(t) => t,
        };
        let what = format!("manifest {name}:{tag}");
        // Checked a moment ago: the store answers.
        if up.checked_recently(name, tag.as_str())
            && let Ok(r) = self.get_manifest(repo, reference, head).await
        {
            up.stats.cache(false, true);
            return Ok(r);
        }
        // Where the tag points upstream now (a HEAD); fetched only if it moved.
        let fetch_ref = match up.tag_digest(name, tag.as_str()).await {
            Ok(Some(d)) => {
                let at = Reference::Digest(d.clone());
                if self.storage.get_manifest(repo, &at).await.is_ok() {
                    if self.storage.resolve_tag(repo, tag).await? != Some(d.clone()) {
                        self.storage.set_tag(repo, tag, &d).await?;
                    }
                    up.mark_checked(name, tag.as_str());
                    up.stats.cache(false, true);
                    return self.get_manifest(repo, &at, head).await;
                }
                at
            }
            Ok(None) => reference.clone(),
            // A tag cached before is served while the upstream cannot answer, marked stale.
            Err(e @ (UpstreamError::Unavailable(_) | UpstreamError::Busy(..))) => {
                return match self.get_manifest(repo, reference, head).await {
                    Ok(r) => Ok({
                        up.stats.cache(false, true);
                        r
                    }
                    .header(
                        "Warning",
                        format!("110 wharf \"stale: upstream {} unreachable\"", up.name),
                    )),
                    Err(_) => Err(upstream_error(up, &what, ErrorKind::ManifestUnknown, e)),
                };
            }
            Err(e) => return Err(upstream_error(up, &what, ErrorKind::ManifestUnknown, e)),
        };
        self.fetch_manifest(up, name, repo, &fetch_ref, Some(tag), head)
            .await
    }

    /// Fetch `name:reference` upstream, verify it (against the digest asked, or the one the
    /// upstream announced for a tag), store it, point `tag` at it, and answer it.
    async fn fetch_manifest(
        &self,
        up: &Upstream,
        name: &str,
        repo: &RepoName,
        reference: &Reference,
        tag: Option<&Tag>,
        head: &RequestHead,
    ) -> HandlerResult {
        up.stats.cache(false, false);
        let what = format!(
            "manifest {name}:{}",
            tag.map_or(reference.to_string(), |t| t.to_string())
        );
        let (media_type, bytes) = up
            .manifest(name, reference, self.settings.max_manifest_size)
            .await
            .map_err(|e| upstream_error(up, &what, ErrorKind::ManifestUnknown, e))?;
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(_) => Digest::of(crate::oci::Algorithm::Sha256, &bytes),
        };
        if Digest::of(digest.algorithm(), &bytes) != digest {
            return Err(OciError::new(
                ErrorKind::StorageUnavailable,
                format!(
                    "upstream {} served bytes for {what} that do not match {digest}; nothing was cached",
                    up.name
                ),
            ));
        }
        let parsed = manifest::parse(&bytes, Some(&media_type)).map_err(|e| {
            OciError::new(
                ErrorKind::StorageUnavailable,
                format!(
                    "upstream {} served {what} that is not a manifest wharf takes: {}",
                    up.name, e.message
                ),
            )
        })?;
        self.storage
            .put_manifest(repo, &bytes, &digest, &parsed)
            .await?;
        if let Some(t) = tag {
            self.storage.set_tag(repo, t, &digest).await?;
            up.mark_checked(name, t.as_str());
        }
        self.get_manifest(repo, &Reference::Digest(digest), head)
            .await
    }

    async fn mirror_blob(
        &self,
        up: Arc<Upstream>,
        name: &str,
        repo: &RepoName,
        digest: &Digest,
        head: &RequestHead,
    ) -> HandlerResult {
        if self.storage.blob_size(repo, digest).await?.is_some() {
            up.stats.cache(true, true);
            return self.get_blob(repo, digest, head).await;
        }
        up.stats.cache(true, false);
        let dir = self
            .mirror
            .as_ref()
            .expect("a mirrored request")
            .spool_dir
            .clone();
        let spool = flight::spool_in(dir).await.map_err(StoreError::from)?;
        // One flight per blob of one upstream repository: a request for the same digest under
        // another upstream or name fetches from there (each upstream's access stays its own).
        let key = format!("{}/{name}@{digest}", up.name);
        let f = match flight::join(&key, spool) {
            Joined::Reader(f) => {
                up.stats.coalesced.fetch_add(1, Ordering::Relaxed);
                f
            }
            Joined::Leader(f) => {
                up.stats.fetches.fetch_add(1, Ordering::Relaxed);
                // The fetch is a task of its own: it goes on when the client that started it
                // leaves, for the others reading it.
                let (storage, flight) = (Arc::clone(&self.storage), Arc::clone(&f));
                let (name, repo, digest) = (name.to_owned(), repo.clone(), digest.clone());
                let max = self.settings.max_blob_size;
                crate::task::spawn("an upstream blob fetch", async move {
                    let outcome = fetch(&storage, &up, &name, &repo, &digest, &flight, max).await;
                    flight.finish(outcome);
                });
                f
            }
            Joined::Full => {
                return Err(OciError::new(
                    ErrorKind::OverCapacity,
                    format!(
                        "{} blobs are being fetched from upstreams already; try again shortly",
                        flight::MAX_FLIGHTS
                    ),
                ));
            }
        };
        let len = f.blob_len().await?;
        let mut r = Response::new(200)
            .header("Docker-Content-Digest", digest.to_string())
            .header("ETag", format!("\"{digest}\""))
            .header("Content-Type", "application/octet-stream");
        if head.method == Method::Head {
            r.content_length = Some(len);
        } else {
            r.payload = Payload::Stream(f.reader(len).map_err(StoreError::from)?);
        }
        Ok(r)
    }
}

/// Fetch a blob upstream into the spool and the store at once; committed (verified against
/// `digest`) or not at all.
async fn fetch(
    storage: &Storage,
    up: &Upstream,
    name: &str,
    repo: &RepoName,
    digest: &Digest,
    flight: &Flight,
    max: u64,
) -> Result<(), OciError> {
    let what = format!("blob {digest} of {name}");
    let answer = up
        .blob(name, digest)
        .await
        .map_err(|e| upstream_error(up, &what, ErrorKind::BlobUnknown, e))?;
    let mut resp = answer.resp;
    let _permit = answer.permit;
    let len = resp.body.remaining();
    if max > 0 && len > max {
        return Err(OciError::new(
            ErrorKind::TooLarge,
            format!("{what} is larger than global.max_blob_size ({max} bytes)"),
        ));
    }
    flight.set_len(len);
    let spool = flight.spool().map_err(StoreError::from)?;
    let mut w = storage.temp_writer(digest.algorithm()).await?;
    let mut pos = 0u64;
    let copied: Result<(), OciError> = async {
        while let Some(chunk) = resp.body.next_chunk().await.map_err(|e| {
            upstream_error(
                up,
                &what,
                ErrorKind::BlobUnknown,
                UpstreamError::Unavailable(e.to_string()),
            )
        })? {
            let n = chunk.len();
            let (res, chunk) = spool.write_all_at(chunk, 0..n, pos).await;
            res.map_err(StoreError::from)?;
            w.append(Block::new(chunk, 0..n))
                .await
                .map_err(StoreError::from)?;
            pos += n as u64;
            up.stats.bytes.fetch_add(n as u64, Ordering::Relaxed);
            flight.advance(n as u64);
        }
        Ok(())
    }
    .await;
    if let Err(e) = copied {
        storage.discard_writer(w).await;
        return Err(e);
    }
    match storage.finish_writer(w, digest, repo).await {
        Ok(_) => Ok(()),
        Err(StoreError::DigestMismatch { .. }) => Err(OciError::new(
            ErrorKind::StorageUnavailable,
            format!(
                "upstream {} served bytes for {what} that do not match it; nothing was cached",
                up.name
            ),
        )),
        Err(e) => Err(e.into()),
    }
}
