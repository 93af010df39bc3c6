//! OCI error codes and their JSON body, the one place where errors become HTTP statuses.

use std::fmt::Write as _;

/// The error codes of the distribution spec (plus `RANGE_INVALID` and `TOOMANYREQUESTS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    RangeInvalid,
    /// Internal failure; the message never carries internals.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Internal => "INTERNAL_ERROR",
        }
    }

    /// The status the spec gives this code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BlobUnknown
            | ErrorCode::BlobUploadUnknown
            | ErrorCode::ManifestBlobUnknown
            | ErrorCode::ManifestUnknown
            | ErrorCode::NameUnknown => 404,
            ErrorCode::BlobUploadInvalid
            | ErrorCode::DigestInvalid
            | ErrorCode::ManifestInvalid
            | ErrorCode::NameInvalid
            | ErrorCode::SizeInvalid => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Denied => 403,
            ErrorCode::Unsupported => 405,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::RangeInvalid => 416,
            ErrorCode::Internal => 500,
        }
    }
}

/// An error answered to the client: a code, a human message and the status to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub code: ErrorCode,
    pub message: String,
    pub status: u16,
    /// Seconds for the `Retry-After` header of a 429/503/507 (default 1, 60 for 507).
    pub retry_after: Option<u64>,
}

impl OciError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        OciError {
            code,
            message: message.into(),
            status: code.status(),
            retry_after: None,
        }
    }

    /// Same code, a different status (e.g. 413 for an oversized manifest, 507 for a full disk).
    pub fn with_status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    /// Tell the client when to try again (`Retry-After`, whole seconds, at least 1).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The `{"errors":[{"code","message","detail"}]}` body.
    pub fn to_json(&self) -> Vec<u8> {
        let mut s = String::with_capacity(64 + self.message.len());
        s.push_str("{\"errors\":[{\"code\":\"");
        s.push_str(self.code.as_str());
        s.push_str("\",\"message\":");
        json_string(&mut s, &self.message);
        s.push_str(",\"detail\":null}]}");
        s.into_bytes()
    }
}

/// Append `v` as a JSON string literal.
pub fn json_string(out: &mut String, v: &str) {
    out.push('"');
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_json_is_spec_shaped_and_escaped() {
        let e = OciError::new(ErrorCode::NameInvalid, "bad \"name\"\n");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad \"name\"\n");
        assert_eq!(e.status, 400);
    }
}
