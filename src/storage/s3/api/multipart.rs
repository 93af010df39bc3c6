//! Multipart uploads on the bucket: start one, send parts, complete or abort it (large blobs and
//! upload sessions, `storage::s3::writer`).

use std::io;

use rusty_s3::S3Action;

use super::{MAX_SMALL_BODY, ObjectStore, S3Error, SIGNED_FOR, drain, failure, parse_error};
use crate::client::Payload;

impl ObjectStore {
    /// Start a multipart upload to `key`; its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        let key = self.key(key);
        let url = self
            .bucket
            .create_multipart_upload(Some(&self.credentials), &key)
            .sign(SIGNED_FOR);
        let resp = self.send(5, "POST", url, Vec::new(), Payload::NONE).await?;
        if resp.status != 200 {
            return Err(failure(resp).await);
        }
        let text = resp.body.bytes(MAX_SMALL_BODY).await?;
        let text = String::from_utf8_lossy(&text);
        let parsed = rusty_s3::actions::CreateMultipartUpload::parse_response(&text)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}")))?;
        Ok(parsed.upload_id().to_owned())
    }

    /// Upload part `n` (from 1) of a multipart upload; its ETag.
    pub async fn upload_part(
        &self,
        key: &str,
        upload_id: &str,
        n: u16,
        body: bytes::Bytes,
    ) -> Result<String, S3Error> {
        let key = self.key(key);
        let url = self
            .bucket
            .upload_part(Some(&self.credentials), &key, n, upload_id)
            .sign(SIGNED_FOR);
        let resp = self
            .send(6, "PUT", url, Vec::new(), Payload::Given(body))
            .await?;
        if resp.status != 200 {
            return Err(failure(resp).await);
        }
        let etag = resp.header("ETag").unwrap_or_default().to_owned();
        drain(resp).await;
        Ok(etag)
    }

    /// Complete a multipart upload from its parts' ETags (part `i + 1` is `etags[i]`).
    pub async fn complete_multipart(
        &self,
        key: &str,
        upload_id: &str,
        etags: &[String],
    ) -> Result<(), S3Error> {
        let key = self.key(key);
        let action = self.bucket.complete_multipart_upload(
            Some(&self.credentials),
            &key,
            upload_id,
            etags.iter().map(String::as_str),
        );
        let url = action.sign(SIGNED_FOR);
        let body = action.body();
        let resp = self
            .send(5, "POST", url, Vec::new(), Payload::Lent(body.as_bytes()))
            .await?;
        if resp.status != 200 {
            return Err(failure(resp).await);
        }
        // S3 may report a failure inside a 200.
        let text = resp.body.bytes(MAX_SMALL_BODY).await?;
        if text.windows(7).any(|w| w == b"<Error>") {
            let (code, message) = parse_error(&text);
            return Err(S3Error::Status {
                status: 200,
                code,
                message,
            });
        }
        Ok(())
    }

    /// Abort a multipart upload, dropping its parts.
    pub async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), S3Error> {
        let key = self.key(key);
        let url = self
            .bucket
            .abort_multipart_upload(Some(&self.credentials), &key, upload_id)
            .sign(SIGNED_FOR);
        let resp = self
            .send(5, "DELETE", url, Vec::new(), Payload::NONE)
            .await?;
        match resp.status {
            200 | 204 | 404 => {
                drain(resp).await;
                Ok(())
            }
            _ => Err(failure(resp).await),
        }
    }
}
