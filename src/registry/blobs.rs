//! Blob GET/HEAD (with one range, or several as `multipart/byteranges`) and DELETE.

use super::{HandlerResult, INLINE_LIMIT, Registry};
use crate::http::range::{Byteranges, MAX_RANGES, Ranges, parse_ranges};
use crate::http::response::Tail;
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

/// The response with `len` bytes of `content` from `start` (HEAD: `content` is `None`, and
/// only the length is announced).
fn body(mut r: Response, content: Option<BlobContent>, start: u64, len: u64) -> Response {
    r.content_length = Some(len);
    if let Some(c) = content {
        r.payload = region(c, start, len);
    }
    r
}

/// A boundary for a `multipart/byteranges` body: 32 random hex digits.
fn boundary() -> String {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).expect("the OS random source is available");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The pieces of a `multipart/byteranges` body: each part's head, then its region of
/// `content` (a file region per part, sent with `sendfile` on plain HTTP; a stream per part; or
/// one buffer for a blob read whole).
fn pieces(content: BlobContent, parts: Byteranges) -> Result<Payload, StoreError> {
    if let BlobContent::Bytes(b) = &content {
        let mut out = Vec::with_capacity(parts.len() as usize);
        for (head, start, len) in &parts.parts {
            out.extend_from_slice(head);
            out.extend_from_slice(&b[*start as usize..(start + len) as usize]);
        }
        out.extend_from_slice(&parts.end);
        return Ok(Payload::Bytes(out));
    }
    let mut pieces = Vec::with_capacity(2 * parts.parts.len() + 1);
    for (head, start, len) in parts.parts {
        pieces.push(Tail::Bytes(head));
        pieces.push(match &content {
            BlobContent::File(f) => Tail::File {
                file: f.try_clone()?,
                offset: start,
                len,
            },
            BlobContent::Stream(open) => Tail::Stream(open(start, len)),
            BlobContent::Bytes(_) | BlobContent::Redirect(_) => {
                unreachable!("bytes are answered above, redirects before any region")
            }
        });
    }
    pieces.push(Tail::Bytes(parts.end));
    Ok(Payload::Pieces(pieces))
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
            .header("ETag", format!("\"{digest}\""));
        let ranges = match parse_ranges(head.range.as_deref(), size) {
            Ranges::Full => None,
            Ranges::Partial(r) => Some(r),
            Ranges::TooMany(n) => {
                return Err(OciError::new(
                    ErrorKind::TooManyRanges,
                    format!(
                        "{n} ranges in one Range header; at most {MAX_RANGES} are answered: ask for fewer per request"
                    ),
                ));
            }
            Ranges::Unsatisfiable => {
                let e = OciError::new(
                    ErrorKind::RangeInvalid,
                    format!("range not satisfiable for a blob of {size} bytes"),
                );
                return Ok(
                    super::error_response(e).header("Content-Range", format!("bytes */{size}"))
                );
            }
        };
        let mut r = match ranges.as_deref() {
            None => {
                let r = resp.header("Content-Type", "application/octet-stream");
                body(r, content, 0, size)
            }
            Some(&[(start, end)]) => {
                let mut r = resp
                    .header("Content-Type", "application/octet-stream")
                    .header("Content-Range", format!("bytes {start}-{end}/{size}"));
                r.status = 206;
                body(r, content, start, end - start + 1)
            }
            Some(several) => {
                let parts = Byteranges::new(several, size, "application/octet-stream", boundary());
                let mut r = resp.header("Content-Type", parts.content_type());
                r.status = 206;
                r.content_length = Some(parts.len());
                if let Some(content) = content {
                    r.payload = pieces(content, parts)?;
                }
                r
            }
        };
        // The first bytes from elsewhere are read before the head promises them: a store that
        // cannot be reached is then a 503, not a response broken off after its head. Of several
        // ranges only the first part's stream is read ahead (one chunk held, as for one range);
        // a store that fails between parts still breaks the body off.
        let first = match &mut r.payload {
            Payload::Stream(s) => Some(s),
            Payload::Pieces(p) => p.iter_mut().find_map(|t| match t {
                Tail::Stream(s) => Some(s),
                _ => None,
            }),
            _ => None,
        };
        if let Some(s) = first {
            s.prime().await.map_err(StoreError::from)?;
        }
        if !head_only {
            r.content_length = None;
        }
        Ok(r)
    }

    pub(super) async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> HandlerResult {
        self.storage.unlink_blob(repo, digest).await?;
        Ok(Response::new(202).header("Docker-Content-Digest", digest.to_string()))
    }
}
