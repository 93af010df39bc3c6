//! Repositories under an upstream's prefix (`[[upstream]]`, `crate::mirror`): manifests and blobs
//! the store lacks are fetched upstream, checked against their digest, stored as ordinary content
//! (linked into the mirrored repository), then served as any other; a tag is asked upstream on
//! every GET and, when the upstream cannot answer, served from the store with a `Warning`. Writes
//! under the prefix are refused.

use super::{HandlerResult, Registry};
use crate::action::Action;
use crate::http::RequestHead;
use crate::mirror::{Upstream, UpstreamError};
use crate::net::pool::Block;
use crate::oci::{Digest, ErrorKind, OciError, Reference, RepoName, manifest};
use crate::storage::StoreError;

/// Why a request through the mirror failed, as the client sees it.
fn upstream_error(up: &Upstream, what: &str, e: UpstreamError) -> OciError {
    match e {
        UpstreamError::NotFound => OciError::new(
            ErrorKind::NotFound,
            format!("{what} is not in upstream {} ({})", up.name, up.url),
        ),
        UpstreamError::Unavailable(why) => OciError::new(
            ErrorKind::StorageUnavailable,
            format!(
                "{what} is not cached and upstream {} cannot be reached ({why}); try again later",
                up.name
            ),
        ),
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
        let (up, name) = mirror.route(repo)?;
        Some(match action {
            Action::GetManifest { reference, .. } => {
                self.mirror_manifest(up, &name, repo, reference, head).await
            }
            Action::GetBlob { digest, .. } => self.mirror_blob(up, &name, repo, digest, head).await,
            // Reads of what is cached.
            Action::ListTags { .. } | Action::GetReferrers { .. } => return None,
            _ => Err(OciError::new(
                ErrorKind::Denied,
                format!(
                    "{repo} mirrors {}/{name} (upstream {}): it is read-only here; push to a name \
                     outside the prefix",
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
        if let Reference::Digest(_) = reference {
            match self.storage.get_manifest(repo, reference).await {
                Ok(_) => return self.get_manifest(repo, reference, head).await,
                Err(StoreError::ManifestUnknown) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let what = format!("manifest {name}:{reference}");
        let (media_type, bytes) = match up
            .manifest(name, reference, self.settings.max_manifest_size)
            .await
        {
            Ok(m) => m,
            // A tag cached before is served while the upstream cannot answer, marked stale.
            Err(UpstreamError::Unavailable(why)) if matches!(reference, Reference::Tag(_)) => {
                return match self.get_manifest(repo, reference, head).await {
                    Ok(r) => Ok(r.header(
                        "Warning",
                        format!("110 wharf \"stale: upstream {} unreachable\"", up.name),
                    )),
                    Err(_) => Err(upstream_error(up, &what, UpstreamError::Unavailable(why))),
                };
            }
            Err(UpstreamError::NotFound) => {
                return Err(OciError::new(
                    ErrorKind::ManifestUnknown,
                    format!("{what} is not in upstream {} ({})", up.name, up.url),
                ));
            }
            Err(e) => return Err(upstream_error(up, &what, e)),
        };
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
        if let Reference::Tag(t) = reference {
            self.storage.set_tag(repo, t, &digest).await?;
        }
        self.get_manifest(repo, &Reference::Digest(digest), head)
            .await
    }

    async fn mirror_blob(
        &self,
        up: &Upstream,
        name: &str,
        repo: &RepoName,
        digest: &Digest,
        head: &RequestHead,
    ) -> HandlerResult {
        if self.storage.blob_size(repo, digest).await?.is_none() {
            self.fetch_blob(up, name, repo, digest).await?;
        }
        self.get_blob(repo, digest, head).await
    }

    /// Fetch a blob upstream into the store, verified against `digest` before it is visible.
    async fn fetch_blob(
        &self,
        up: &Upstream,
        name: &str,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<(), OciError> {
        let what = format!("blob {digest} of {name}");
        let mut resp = up.blob(name, digest).await.map_err(|e| match e {
            UpstreamError::NotFound => OciError::new(
                ErrorKind::BlobUnknown,
                format!("{what} is not in upstream {} ({})", up.name, up.url),
            ),
            e => upstream_error(up, &what, e),
        })?;
        let max = self.settings.max_blob_size;
        if max > 0 && resp.body.remaining() > max {
            return Err(OciError::new(
                ErrorKind::TooLarge,
                format!("{what} is larger than global.max_blob_size ({max} bytes)"),
            ));
        }
        let mut w = self.storage.temp_writer(digest.algorithm()).await?;
        loop {
            match resp.body.next_chunk().await {
                Ok(Some(chunk)) => {
                    let n = chunk.len();
                    if let Err(e) = w.append(Block::new(chunk, 0..n)).await {
                        self.storage.discard_writer(w).await;
                        return Err(StoreError::from(e).into());
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.storage.discard_writer(w).await;
                    return Err(upstream_error(
                        up,
                        &what,
                        UpstreamError::Unavailable(e.to_string()),
                    ));
                }
            }
        }
        match self.storage.finish_writer(w, digest, repo).await {
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
}
