//! Blob GET/HEAD (with single ranges) and DELETE.

use super::{HandlerResult, INLINE_LIMIT, Registry};
use crate::http::range::{ByteRange, parse_range};
use crate::http::{Method, Payload, RequestHead, Response};
use crate::oci::{Digest, ErrorKind, OciError, RepoName};
use crate::storage::{BlobContent, StoreError};

/// `bytes[start..start + len]` of a blob read whole, the file region, or the stream of it.
fn region(content: BlobContent, start: u64, len: u64) -> Payload {
    match content {
        BlobContent::Bytes(mut b) => {
            b.truncate((start + len) as usize);
            b.drain(..start as usize);
            Payload::Bytes(b)
        }
        BlobContent::File(file) => Payload::File {
            file,
            offset: start,
            len,
        },
        BlobContent::Stream(open) => Payload::Stream(open(start, len)),
        BlobContent::Redirect(_) => unreachable!("redirects are answered before any region"),
    }
}

/// `307` to where the backend serves the content itself (a presigned object-store URL); the
/// client asks there with its own `Range`.
fn redirect(digest: &Digest, location: String) -> Response {
    Response::new(307)
        .header("Location", location)
        .header("Docker-Content-Digest", digest.to_string())
}

impl Registry {
    pub(super) async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        head: &RequestHead,
    ) -> HandlerResult {
        let head_only = head.method == Method::Head;
        let (size, content) = if head_only {
            let size = self.storage.blob_size(repo, digest).await?;
            (size.ok_or(StoreError::BlobUnknown)?, None)
        } else {
            let read = self.storage.open_blob(repo, digest, INLINE_LIMIT).await?;
            if let BlobContent::Redirect(location) = read.content {
                return Ok(redirect(digest, location));
            }
            (read.size, Some(read.content))
        };
        let resp = Response::new(200)
            .header("Docker-Content-Digest", digest.to_string())
            .header("Accept-Ranges", "bytes")
            .header("ETag", format!("\"{digest}\""))
            .header("Content-Type", "application/octet-stream");
        let (status, start, len) = match parse_range(head.range.as_deref(), size) {
            ByteRange::Full => (200, 0, size),
            ByteRange::Partial { start, end } => (206, start, end - start + 1),
            ByteRange::Unsatisfiable => {
                let e = OciError::new(
                    ErrorKind::RangeInvalid,
                    format!("range not satisfiable for a blob of {size} bytes"),
                );
                return Ok(
                    super::error_response(e).header("Content-Range", format!("bytes */{size}"))
                );
            }
        };
        let mut r = resp;
        if status == 206 {
            r = r.header(
                "Content-Range",
                format!("bytes {start}-{}/{size}", start + len - 1),
            );
            r.status = 206;
        }
        r.payload = match content {
            Some(c) => region(c, start, len),
            // HEAD: the length is announced, nothing is read or sent.
            None => Payload::Empty,
        };
        r.content_length = head_only.then_some(len);
        Ok(r)
    }

    pub(super) async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> HandlerResult {
        self.storage.unlink_blob(repo, digest).await?;
        Ok(Response::new(202).header("Docker-Content-Digest", digest.to_string()))
    }
}
