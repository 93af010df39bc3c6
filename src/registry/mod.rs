//! The registry: `route` decodes a request into an `Action`; one `match` sends it to the handler
//! family (`blobs`, `uploads`, `manifests`, `listing`); errors become OCI JSON in one place.

mod blobs;
mod listing;
mod manifests;
mod mirror;
pub mod route;
mod uploads;

use std::sync::Arc;

use crate::http::{Body, BodyError, RequestHead, Response};
use crate::net::ConnError;
use crate::oci::{ErrorKind, OciError, RepoName};
use crate::storage::{Storage, StoreError};
pub use listing::filter_referrers;
pub use route::route;

use crate::action::Action;

/// Responses up to this size are read into memory so head and body leave in one write.
const INLINE_LIMIT: u64 = 64 * 1024;

/// Registry-wide settings the handlers need.
#[derive(Clone, Debug)]
pub struct Settings {
    pub max_manifest_size: u64,
    /// 0 = unlimited.
    pub max_blob_size: u64,
}

/// The registry service shared by all workers.
pub struct Registry {
    storage: Arc<Storage>,
    settings: Settings,
    /// The upstreams mirrored under name prefixes, if any.
    mirror: Option<crate::mirror::Mirror>,
}

type HandlerResult = Result<Response, OciError>;

impl Registry {
    /// The tags of `repo` pointing at `digest` (what a manifest delete by digest would remove).
    pub async fn tags_pointing_at(
        &self,
        repo: &crate::oci::RepoName,
        digest: &crate::oci::Digest,
    ) -> Result<Vec<crate::oci::Tag>, OciError> {
        Ok(self.storage.tags_pointing_at(repo, digest).await?)
    }

    /// The store behind the registry.
    pub fn storage(&self) -> &Arc<Storage> {
        &self.storage
    }
}

impl Registry {
    pub fn new(
        storage: Arc<Storage>,
        settings: Settings,
        mirror: Option<crate::mirror::Mirror>,
    ) -> Registry {
        Registry {
            storage,
            settings,
            mirror,
        }
    }

    /// The name of the upstream whose mirror serves `repo` (asked with `query`), if any.
    pub fn upstream_of(&self, repo: &RepoName, query: &str) -> Option<&str> {
        self.mirror.as_ref()?.upstream_of(repo, query)
    }

    /// Answer one routed and authorized request. The body may be left unread (the connection
    /// decides whether to drain or close).
    /// `client` is the peer's address (upload sessions are counted per client).
    pub async fn handle(
        &self,
        action: Action,
        head: &RequestHead,
        body: &mut Body<'_>,
        client: std::net::IpAddr,
    ) -> Response {
        self.dispatch(action, head, body, client)
            .await
            .unwrap_or_else(error_response)
    }

    async fn dispatch(
        &self,
        action: Action,
        head: &RequestHead,
        body: &mut Body<'_>,
        client: std::net::IpAddr,
    ) -> HandlerResult {
        if self.mirror.is_some()
            && let Some(answer) = Box::pin(self.mirrored(&action, head)).await
        {
            return answer;
        }
        match action {
            Action::GetApiVersion => Ok(Response::new(200).json(b"{}".to_vec())),
            // The server answers these itself (it owns the counters); never dispatched here.
            Action::GetMetrics | Action::GetHealth | Action::GetReady | Action::GetToken => {
                Err(OciError::new(ErrorKind::NotFound, "answered by the server"))
            }
            Action::GetBlob { repository, digest } => {
                self.get_blob(&repository, &digest, head).await
            }
            Action::DeleteBlob { repository, digest } => {
                self.delete_blob(&repository, &digest).await
            }
            Action::StartUpload {
                repository,
                digest,
                algorithm,
            } => {
                self.start_upload(&repository, digest.as_ref(), algorithm, body, client)
                    .await
            }
            Action::MountBlob {
                repository,
                digest,
                from,
                algorithm,
            } => {
                self.mount_blob(&repository, &digest, from.as_ref(), algorithm, body, client)
                    .await
            }
            Action::UpdateUpload { repository, upload } => {
                self.update_upload(&repository, upload.as_str(), head, body)
                    .await
            }
            Action::CompleteUpload {
                repository,
                upload,
                digest,
            } => {
                self.complete_upload(&repository, upload.as_str(), &digest, head, body)
                    .await
            }
            Action::GetUpload { repository, upload } => {
                self.get_upload(&repository, upload.as_str()).await
            }
            Action::CancelUpload { repository, upload } => {
                self.cancel_upload(&repository, upload.as_str()).await
            }
            Action::GetManifest {
                repository,
                reference,
            } => self.get_manifest(&repository, &reference, head).await,
            Action::PutManifest {
                repository,
                reference,
                tags,
            } => {
                self.put_manifest(&repository, &reference, &tags, head, body)
                    .await
            }
            Action::DeleteManifest {
                repository,
                reference,
                tags,
            } => {
                self.delete_manifest(&repository, &reference, &tags, head)
                    .await
            }
            Action::GetReferrers {
                repository,
                digest,
                artifact_type,
                page,
            } => {
                self.get_referrers(&repository, &digest, artifact_type.as_deref(), &page)
                    .await
            }
            Action::ListTags { repository, page } => self.list_tags(&repository, &page).await,
            Action::ListCatalog { page } => self.list_catalog(&page).await,
        }
    }
}

/// An OCI error as a response: with the Basic challenge on 401 (clients send credentials only
/// after one), and `Retry-After` when rate-limited, over capacity, storage is full or password
/// checks are queued up.
pub fn error_response(e: OciError) -> Response {
    let mut r = Response::new(e.status());
    if e.kind == ErrorKind::Unauthenticated {
        r = match e.challenge {
            Some(ref c) => r.header("WWW-Authenticate", c.clone()),
            None => r.header("WWW-Authenticate", "Basic realm=\"wharf\""),
        };
    }
    if let Some(secs) = e.retry_after() {
        r = r.header("Retry-After", secs.to_string());
    }
    r.json(e.to_json())
}

impl From<StoreError> for OciError {
    fn from(e: StoreError) -> OciError {
        match e {
            StoreError::BlobUnknown => {
                OciError::new(ErrorKind::BlobUnknown, "blob unknown to registry")
            }
            StoreError::UploadUnknown => OciError::new(
                ErrorKind::BlobUploadUnknown,
                "blob upload unknown to registry",
            ),
            StoreError::UploadBusy { .. } => OciError::new(
                ErrorKind::UploadBusy,
                "upload is being written by another request",
            ),
            StoreError::ManifestUnknown => {
                OciError::new(ErrorKind::ManifestUnknown, "manifest unknown to registry")
            }
            StoreError::NameUnknown => OciError::new(
                ErrorKind::NameUnknown,
                "repository name not known to registry",
            ),
            StoreError::DigestMismatch { expected } => OciError::new(
                ErrorKind::DigestInvalid,
                format!("content does not match digest {expected}"),
            ),
            StoreError::TagMoved(tag) => OciError::new(
                ErrorKind::Conflict,
                format!(
                    "tag {tag} was moved to this manifest while the delete was being decided; nothing was deleted, retry the delete"
                ),
            ),
            StoreError::TagPrecondition { target, current } => OciError::new(
                ErrorKind::PreconditionFailed,
                format!(
                    "{target} {} (If-Match / If-None-Match); nothing was changed: read it again and retry",
                    match current {
                        Some(d) => format!("points at {d}"),
                        None => "does not exist".to_owned(),
                    }
                ),
            ),
            StoreError::TooManySessions { per_client, limit } => OciError::new(
                ErrorKind::RateLimited,
                if per_client {
                    format!(
                        "this client has {limit} open upload sessions (limits.max_upload_sessions_per_client): finish or cancel some, or retry later"
                    )
                } else {
                    format!(
                        "the registry has {limit} open upload sessions (limits.max_upload_sessions): retry later"
                    )
                },
            ),
            StoreError::Unavailable(why) => {
                tracing::warn!("object store unavailable: {why}");
                OciError::new(
                    ErrorKind::StorageUnavailable,
                    "the registry's object store is unavailable; nothing was stored by this request, retry later",
                )
            }
            StoreError::Io(err) => io_error(&err),
        }
    }
}

/// Map an I/O failure without leaking internals: a full disk is 507 (retry later), the rest 500.
fn io_error(err: &std::io::Error) -> OciError {
    if crate::storage::Unavailable::is(err) {
        return crate::storage::StoreError::Unavailable(err.to_string()).into();
    }
    if matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        tracing::warn!("storage full: {err}");
        return OciError::new(ErrorKind::StorageFull, "storage is full, retry later");
    }
    tracing::error!("storage error: {err}");
    OciError::new(ErrorKind::Internal, "internal storage error")
}

impl From<BodyError> for OciError {
    fn from(e: BodyError) -> OciError {
        match e {
            BodyError::TooLarge => OciError::new(ErrorKind::TooLarge, "body larger than allowed"),
            BodyError::Chunked(c) => OciError::new(
                ErrorKind::BlobUploadInvalid,
                format!("malformed chunked body: {c}"),
            ),
            BodyError::Conn(ConnError::Timeout) => OciError::new(
                ErrorKind::BodyStalled,
                "request body stalled past server.http.body_timeout",
            ),
            BodyError::Broken => OciError::new(
                ErrorKind::BlobUploadInvalid,
                "request body cut short by an earlier error",
            ),
            BodyError::Conn(c) => {
                OciError::new(ErrorKind::BlobUploadInvalid, format!("request body: {c}"))
            }
            BodyError::Io(err) => io_error(&err),
        }
    }
}
