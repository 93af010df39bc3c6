//! Blob GET/HEAD (with single ranges) and DELETE.

use std::os::unix::fs::FileExt;

use super::{HandlerResult, INLINE_LIMIT, Registry};
use crate::http::range::{ByteRange, parse_range};
use crate::http::{Payload, RequestHead, Response};
use crate::oci::{Digest, ErrorKind, OciError, RepoName};

/// A file region as a payload: small regions in memory (one write), large ones via sendfile.
pub(super) fn file_payload(
    file: std::fs::File,
    offset: u64,
    len: u64,
) -> Result<Payload, OciError> {
    if len <= INLINE_LIMIT {
        let mut buf = vec![0u8; len as usize];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| super::io_error(&e))?;
        Ok(Payload::Bytes(buf))
    } else {
        Ok(Payload::File { file, offset, len })
    }
}

impl Registry {
    pub(super) fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        head: &RequestHead,
    ) -> HandlerResult {
        let (file, size) = self.storage.open_blob(repo, digest)?;
        let resp = Response::new(200)
            .header("Docker-Content-Digest", digest.to_string())
            .header("Accept-Ranges", "bytes")
            .header("ETag", format!("\"{digest}\""))
            .header("Content-Type", "application/octet-stream");
        match parse_range(head.range.as_deref(), size) {
            ByteRange::Full => Ok(Response {
                payload: file_payload(file, 0, size)?,
                ..resp
            }),
            ByteRange::Partial { start, end } => {
                let len = end - start + 1;
                let mut r = resp.header("Content-Range", format!("bytes {start}-{end}/{size}"));
                r.status = 206;
                r.payload = file_payload(file, start, len)?;
                Ok(r)
            }
            ByteRange::Unsatisfiable => {
                let e = OciError::new(
                    ErrorKind::RangeInvalid,
                    format!("range not satisfiable for a blob of {size} bytes"),
                );
                Ok(super::error_response(e).header("Content-Range", format!("bytes */{size}")))
            }
        }
    }

    pub(super) fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> HandlerResult {
        self.storage.unlink_blob(repo, digest)?;
        Ok(Response::new(202).header("Docker-Content-Digest", digest.to_string()))
    }
}
