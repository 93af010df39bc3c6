//! Multipart uploads on the bucket: start one, send parts, complete or abort it (large blobs and
//! upload sessions, `storage::s3::writer`).

use std::io;

use rusty_s3::S3Action;

use super::{
    MAX_SMALL_BODY, ObjectStore, Pending, S3Error, SIGNED_FOR, UNKNOWN_TIME, drain, failure,
    parse_error, parse_multipart_uploads, parse_parts,
};
use crate::client::Payload;

impl ObjectStore {
    /// Start a multipart upload to `key`; its upload id.
    pub async fn create_multipart(&self, key: &str) -> Result<String, S3Error> {
        let key = self.key(key);
        let keys = self.keys.current();
        let headers = self.encryption.headers();
        let url = super::encryption::signed(
            self.bucket.create_multipart_upload(Some(&keys), &key),
            &headers,
        );
        let resp = self.send(5, "POST", url, headers, Payload::NONE).await?;
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
            .upload_part(Some(&self.keys.current()), &key, n, upload_id)
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
        let keys = self.keys.current();
        let action = self.bucket.complete_multipart_upload(
            Some(&keys),
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
            .abort_multipart_upload(Some(&self.keys.current()), &key, upload_id)
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

    /// Multipart uploads under `prefix` (relative to the configured prefix) neither completed
    /// nor aborted: a page of them after `after` (a key and upload id), and whether more follow.
    pub async fn list_multipart(
        &self,
        prefix: &str,
        after: Option<(&str, &str)>,
    ) -> Result<(Vec<Pending>, bool), S3Error> {
        // rusty-s3 has no ListMultipartUploads: a bucket GET signed the same way, with its query.
        let keys = self.keys.current();
        let mut action = self.bucket.list_objects_v2(Some(&keys));
        let query = action.query_mut();
        query.remove("list-type");
        query.remove("encoding-type");
        query.insert("uploads", "");
        query.insert("prefix", self.key(prefix));
        query.insert("max-uploads", "1000");
        if let Some((key, upload_id)) = after {
            query.insert("key-marker", self.key(key));
            query.insert("upload-id-marker", upload_id.to_owned());
        }
        let text = self.listing(action.sign(SIGNED_FOR)).await?;
        Ok(parse_multipart_uploads(&text, &self.prefix)?)
    }

    /// When the newest part of an upload was stored: `None` if it has none, `UNKNOWN_TIME` if
    /// the store gave no readable time or the upload is gone (nothing is judged old on that).
    pub async fn newest_part(&self, key: &str, upload_id: &str) -> Result<Option<u64>, S3Error> {
        let key = self.key(key);
        let mut newest = None;
        let mut marker = None;
        let keys = self.keys.current();
        loop {
            let mut action =
                rusty_s3::actions::ListParts::new(&self.bucket, Some(&keys), &key, upload_id);
            if let Some(m) = marker {
                action.set_part_number_marker(m);
            }
            let url = action.sign(SIGNED_FOR);
            let resp = self.send(4, "GET", url, Vec::new(), Payload::NONE).await?;
            match resp.status {
                200 => {}
                404 => {
                    drain(resp).await;
                    return Ok(Some(UNKNOWN_TIME));
                }
                _ => return Err(failure(resp).await),
            }
            let text = resp.body.bytes(MAX_SMALL_BODY).await?;
            let (page_newest, next) = parse_parts(&text)?;
            newest = newest.max(page_newest);
            // A marker that does not move on would list the same page forever.
            match next {
                Some(n) if marker.is_none_or(|m| n > m) => marker = Some(n),
                _ => return Ok(newest),
            }
        }
    }
}
