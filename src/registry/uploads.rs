//! Upload endpoints: POST (session, monolithic, mount), PATCH chunks (ranged or streamed),
//! PUT completion with an optional last chunk, GET status and DELETE cancel.

use super::{HandlerResult, Registry};
use crate::http::range::parse_content_range;
use crate::http::{Body, RequestHead, Response};
use crate::oci::{Algorithm, Digest, ErrorKind, OciError, RepoName};
use crate::storage::{BlobWriter, StoreError, UploadLease};

/// The `Range` header value for `offset` bytes received (`0-0` when none, as clients expect).
fn range_value(offset: u64) -> String {
    format!("0-{}", offset.saturating_sub(1))
}

fn upload_location(repo: &RepoName, id: &str) -> String {
    format!("/v2/{repo}/blobs/uploads/{id}")
}

/// 202 with the session's location and progress.
fn progress(repo: &RepoName, id: &str, offset: u64) -> Response {
    Response::new(202)
        .header("Location", upload_location(repo, id))
        .header("Range", range_value(offset))
        .header("Docker-Upload-UUID", id)
}

/// 416 for a chunk that does not continue the upload, telling the client where it stands.
fn out_of_order(repo: &RepoName, id: &str, offset: u64, why: &str) -> Response {
    super::error_response(OciError::new(ErrorKind::RangeInvalid, why))
        .header("Location", upload_location(repo, id))
        .header("Range", range_value(offset))
        .header("Docker-Upload-UUID", id)
}

/// 201 for a committed blob.
fn created(repo: &RepoName, digest: &Digest) -> Response {
    Response::new(201)
        .header("Location", format!("/v2/{repo}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.to_string())
}

/// Whether a chunk's Content-Range continues an upload at `offset`; `Err` is the response to send.
fn check_chunk(
    head: &RequestHead,
    body: &Body<'_>,
    repo: &RepoName,
    id: &str,
    offset: u64,
) -> Result<(), Response> {
    let Some(cr) = head.content_range.as_deref() else {
        return Ok(());
    };
    let Some((start, end)) = parse_content_range(cr) else {
        let e = OciError::new(
            ErrorKind::BlobUploadInvalid,
            format!("malformed Content-Range {cr:?}"),
        );
        return Err(super::error_response(e));
    };
    if start != offset {
        return Err(out_of_order(
            repo,
            id,
            offset,
            &format!("chunk starts at {start}, upload is at {offset}"),
        ));
    }
    if body.declared_len().is_some_and(|n| n != end - start + 1) {
        let e = OciError::new(
            ErrorKind::SizeInvalid,
            "Content-Length does not match Content-Range",
        );
        return Err(super::error_response(e));
    }
    Ok(())
}

/// Bodies larger than this (or of unknown length) are written with one block in flight.
const PIPELINE_FROM: u64 = 1 << 20;

impl Registry {
    /// Hot path: stream the request body into `w` (hash and positioned write from the same buffer).
    async fn stream_body(&self, w: &mut BlobWriter, body: &mut Body<'_>) -> Result<(), OciError> {
        let max = self.settings.max_blob_size;
        let too_big = || {
            OciError::new(
                ErrorKind::TooLarge,
                format!("blob exceeds the limit of {max} bytes"),
            )
        };
        if max > 0 && body.declared_len().is_some_and(|n| w.offset() + n > max) {
            return Err(too_big());
        }
        // Large bodies are hashed and written on a bulk thread, one block in flight while the next
        // is received.
        let pipelined = body.declared_len().is_none_or(|n| n > PIPELINE_FROM);
        let streamed = async {
            while let Some(block) = body.next_block().await? {
                if max > 0 && w.offset() + block.len() as u64 > max {
                    return Err(too_big());
                }
                let written = if pipelined {
                    w.append_pipelined(block).await
                } else {
                    w.append(block).await
                };
                written.map_err(|e| super::io_error(&e))?;
                // An epoll read of a full socket never suspends: other connections get a turn
                // after each block.
                crate::net::yield_now().await;
            }
            Ok(())
        }
        .await;
        // Whatever happened, no write outlives the request.
        let settled = w.settle().await;
        streamed?;
        settled.map_err(|e| super::io_error(&e))
    }

    pub(super) async fn start_upload(
        &self,
        repo: &RepoName,
        digest: Option<&Digest>,
        alg: Algorithm,
        body: &mut Body<'_>,
        client: std::net::IpAddr,
    ) -> HandlerResult {
        let Some(digest) = digest else {
            if body.read_to_vec(0).await.is_err() {
                let e = OciError::new(
                    ErrorKind::BlobUploadInvalid,
                    "a body needs the digest parameter (monolithic upload)",
                );
                return Err(e);
            }
            let id = self.storage.start_upload(repo, alg, client).await?;
            return Ok(progress(repo, &id, 0));
        };
        let mut w = self.storage.temp_writer(digest.algorithm()).await?;
        if let Err(e) = self.stream_body(&mut w, body).await {
            self.storage.discard_writer(w).await;
            return Err(e);
        }
        self.storage.finish_writer(w, digest, repo).await?;
        Ok(created(repo, digest))
    }

    pub(super) async fn mount_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        from: Option<&RepoName>,
        alg: Algorithm,
        body: &mut Body<'_>,
        client: std::net::IpAddr,
    ) -> HandlerResult {
        if self.storage.mount_blob(repo, digest, from).await? {
            return Ok(created(repo, digest));
        }
        // Not mountable: fall back to a fresh upload session, as the spec allows.
        self.start_upload(repo, None, alg, body, client).await
    }

    /// Lease the upload and append this request's chunk (checked against its Content-Range);
    /// `completing` for the PUT that ends it. `Ok(Err(response))` is a 416 to send as it is.
    async fn append_chunk(
        &self,
        repo: &RepoName,
        id: &str,
        head: &RequestHead,
        body: &mut Body<'_>,
        completing: bool,
    ) -> Result<Result<UploadLease, Response>, OciError> {
        let mut lease = match self.storage.lease_upload(repo, id, completing).await {
            Ok(l) => l,
            Err(StoreError::UploadBusy { offset }) => {
                return Ok(Err(out_of_order(repo, id, offset, "upload is busy")));
            }
            Err(e) => return Err(e.into()),
        };
        if let Err(resp) = check_chunk(head, body, repo, id, lease.writer().offset()) {
            return Ok(Err(resp));
        }
        if let Err(e) = self.stream_body(lease.writer(), body).await {
            self.storage.abandon_upload(lease).await;
            return Err(e);
        }
        Ok(Ok(lease))
    }

    pub(super) async fn update_upload(
        &self,
        repo: &RepoName,
        id: &str,
        head: &RequestHead,
        body: &mut Body<'_>,
    ) -> HandlerResult {
        match self.append_chunk(repo, id, head, body, false).await? {
            Ok(lease) => match self.storage.release_upload(lease).await {
                Ok(offset) => Ok(progress(repo, id, offset)),
                Err(StoreError::UploadBusy { .. }) => {
                    let offset = self.storage.upload_offset(repo, id).await?;
                    Ok(out_of_order(repo, id, offset, "upload changed meanwhile"))
                }
                Err(e) => Err(e.into()),
            },
            Err(resp) => Ok(resp),
        }
    }

    pub(super) async fn complete_upload(
        &self,
        repo: &RepoName,
        id: &str,
        digest: &Digest,
        head: &RequestHead,
        body: &mut Body<'_>,
    ) -> HandlerResult {
        let lease = match self.append_chunk(repo, id, head, body, true).await? {
            Ok(lease) => lease,
            Err(resp) => return Ok(resp),
        };
        self.storage.complete_upload(lease, digest, repo).await?;
        Ok(created(repo, digest))
    }

    pub(super) async fn get_upload(&self, repo: &RepoName, id: &str) -> HandlerResult {
        let offset = self.storage.upload_offset(repo, id).await?;
        let mut r = progress(repo, id, offset);
        r.status = 204;
        Ok(r)
    }

    pub(super) async fn cancel_upload(&self, repo: &RepoName, id: &str) -> HandlerResult {
        self.storage.cancel_upload(repo, id).await?;
        Ok(Response::new(204))
    }
}
