//! OCI error codes and their JSON body, the one place where errors become HTTP statuses.

use std::fmt::Write as _;

/// Why a request is refused. Each kind has exactly one OCI error code (`code`) and one HTTP
/// status (`status`): this is the one place errors become statuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    // The distribution spec's errors, at the spec's statuses.
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
    /// Credentials missing or wrong: 401 with a Basic challenge.
    Unauthenticated,
    /// The access policy refused: 403.
    Denied,
    /// The path is no endpoint: 404.
    NotFound,
    /// The endpoint does not take this method: 405.
    MethodNotAllowed,
    /// Switched off by configuration (read-only, deletes disabled): 405.
    Disabled,
    /// A query parameter that cannot be read: 400.
    BadQuery,
    /// A body, blob or manifest over its configured limit: 413.
    TooLarge,
    /// A `Range` the blob cannot satisfy: 416.
    RangeInvalid,
    /// More ranges in one `Range` header than are answered: 400.
    TooManyRanges,
    /// Another request is writing this upload: 416 (the client re-reads the offset and resumes).
    UploadBusy,
    /// The state changed while the request was decided (a tag moved under a delete): 409.
    Conflict,
    /// An `If-Match` / `If-None-Match` precondition did not hold: 412.
    PreconditionFailed,
    /// The request body stopped arriving: 408.
    BodyStalled,
    /// Too many requests or password checks from this client: 429 with `Retry-After`.
    RateLimited,
    /// Too many open connections: 503 with `Retry-After`.
    OverCapacity,
    /// Storage is full: 507 with `Retry-After`.
    StorageFull,
    /// The object store cannot be reached or fails: 503 with `Retry-After`.
    StorageUnavailable,
    /// Anything else failed inside; the message never carries internals: 500.
    Internal,
}

impl ErrorKind {
    /// The error code of the JSON body.
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::BlobUnknown => "BLOB_UNKNOWN",
            ErrorKind::BlobUploadInvalid | ErrorKind::UploadBusy | ErrorKind::BodyStalled => {
                "BLOB_UPLOAD_INVALID"
            }
            ErrorKind::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorKind::DigestInvalid => "DIGEST_INVALID",
            ErrorKind::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorKind::ManifestInvalid => "MANIFEST_INVALID",
            ErrorKind::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorKind::NameInvalid => "NAME_INVALID",
            ErrorKind::NameUnknown => "NAME_UNKNOWN",
            ErrorKind::SizeInvalid | ErrorKind::TooLarge => "SIZE_INVALID",
            ErrorKind::Unauthenticated => "UNAUTHORIZED",
            ErrorKind::Denied | ErrorKind::Conflict | ErrorKind::PreconditionFailed => "DENIED",
            ErrorKind::NotFound
            | ErrorKind::MethodNotAllowed
            | ErrorKind::Disabled
            | ErrorKind::BadQuery => "UNSUPPORTED",
            ErrorKind::RateLimited | ErrorKind::OverCapacity => "TOOMANYREQUESTS",
            ErrorKind::RangeInvalid | ErrorKind::TooManyRanges => "RANGE_INVALID",
            ErrorKind::StorageFull | ErrorKind::Internal => "INTERNAL_ERROR",
            ErrorKind::StorageUnavailable => "UNAVAILABLE",
        }
    }

    /// The HTTP status.
    pub fn status(self) -> u16 {
        match self {
            ErrorKind::BlobUnknown
            | ErrorKind::BlobUploadUnknown
            | ErrorKind::ManifestBlobUnknown
            | ErrorKind::ManifestUnknown
            | ErrorKind::NameUnknown
            | ErrorKind::NotFound => 404,
            ErrorKind::BlobUploadInvalid
            | ErrorKind::DigestInvalid
            | ErrorKind::ManifestInvalid
            | ErrorKind::NameInvalid
            | ErrorKind::SizeInvalid
            | ErrorKind::TooManyRanges
            | ErrorKind::BadQuery => 400,
            ErrorKind::Unauthenticated => 401,
            ErrorKind::Denied => 403,
            ErrorKind::MethodNotAllowed | ErrorKind::Disabled => 405,
            ErrorKind::BodyStalled => 408,
            ErrorKind::Conflict => 409,
            ErrorKind::PreconditionFailed => 412,
            ErrorKind::TooLarge => 413,
            ErrorKind::RangeInvalid | ErrorKind::UploadBusy => 416,
            ErrorKind::RateLimited => 429,
            ErrorKind::Internal => 500,
            ErrorKind::OverCapacity | ErrorKind::StorageUnavailable => 503,
            ErrorKind::StorageFull => 507,
        }
    }

    /// Seconds a client should wait before retrying, for the kinds that answer `Retry-After`.
    pub fn default_retry_after(self) -> Option<u64> {
        match self {
            ErrorKind::RateLimited | ErrorKind::OverCapacity => Some(1),
            ErrorKind::StorageFull => Some(60),
            ErrorKind::StorageUnavailable => Some(5),
            _ => None,
        }
    }
}

/// An error answered to the client: its kind and a message saying what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciError {
    pub kind: ErrorKind,
    pub message: String,
    /// Seconds for `Retry-After`, when the kind answers one and the wait is known.
    pub retry_after: Option<u64>,
    /// The `WWW-Authenticate` value of a 401 when it is not the Basic one (the token flow's
    /// `Bearer realm=…,service=…,scope=…`).
    pub challenge: Option<String>,
}

impl OciError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        OciError {
            kind,
            message: message.into(),
            retry_after: None,
            challenge: None,
        }
    }

    pub fn status(&self) -> u16 {
        self.kind.status()
    }

    /// Tell the client when to try again (`Retry-After`, whole seconds, at least 1).
    pub fn with_retry_after(mut self, wait: std::time::Duration) -> Self {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The `Retry-After` value, if this error answers one.
    pub fn retry_after(&self) -> Option<u64> {
        self.kind
            .default_retry_after()
            .map(|d| self.retry_after.unwrap_or(d))
    }

    /// The `{"errors":[{"code","message","detail"}]}` body.
    pub fn to_json(&self) -> Vec<u8> {
        error_json(self.kind.code(), &self.message)
    }
}

/// `{"errors":[{"code","message","detail":null}]}` for any code, also for refusals below the OCI
/// layer (a malformed head, plain HTTP on a TLS port) so that every client prints the message.
pub fn error_json(code: &str, message: &str) -> Vec<u8> {
    let mut s = String::with_capacity(64 + message.len());
    s.push_str("{\"errors\":[{\"code\":\"");
    s.push_str(code);
    s.push_str("\",\"message\":");
    json_string(&mut s, message);
    s.push_str(",\"detail\":null}]}");
    s.into_bytes()
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
        let e = OciError::new(ErrorKind::NameInvalid, "bad \"name\"\n");
        let v: serde_json::Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(v["errors"][0]["code"], "NAME_INVALID");
        assert_eq!(v["errors"][0]["message"], "bad \"name\"\n");
        assert_eq!(e.status(), 400);
    }

    #[test]
    fn every_kind_has_one_code_and_status() {
        use ErrorKind::*;
        let table = [
            (BlobUnknown, "BLOB_UNKNOWN", 404),
            (BlobUploadInvalid, "BLOB_UPLOAD_INVALID", 400),
            (BlobUploadUnknown, "BLOB_UPLOAD_UNKNOWN", 404),
            (DigestInvalid, "DIGEST_INVALID", 400),
            (ManifestBlobUnknown, "MANIFEST_BLOB_UNKNOWN", 404),
            (ManifestInvalid, "MANIFEST_INVALID", 400),
            (ManifestUnknown, "MANIFEST_UNKNOWN", 404),
            (NameInvalid, "NAME_INVALID", 400),
            (NameUnknown, "NAME_UNKNOWN", 404),
            (SizeInvalid, "SIZE_INVALID", 400),
            (Unauthenticated, "UNAUTHORIZED", 401),
            (Denied, "DENIED", 403),
            (NotFound, "UNSUPPORTED", 404),
            (MethodNotAllowed, "UNSUPPORTED", 405),
            (Disabled, "UNSUPPORTED", 405),
            (BadQuery, "UNSUPPORTED", 400),
            (TooLarge, "SIZE_INVALID", 413),
            (RangeInvalid, "RANGE_INVALID", 416),
            (TooManyRanges, "RANGE_INVALID", 400),
            (UploadBusy, "BLOB_UPLOAD_INVALID", 416),
            (Conflict, "DENIED", 409),
            (PreconditionFailed, "DENIED", 412),
            (BodyStalled, "BLOB_UPLOAD_INVALID", 408),
            (RateLimited, "TOOMANYREQUESTS", 429),
            (OverCapacity, "TOOMANYREQUESTS", 503),
            (StorageFull, "INTERNAL_ERROR", 507),
            (Internal, "INTERNAL_ERROR", 500),
        ];
        for (kind, code, status) in table {
            assert_eq!((kind.code(), kind.status()), (code, status), "{kind:?}");
        }
        let full = OciError::new(StorageFull, "full");
        assert_eq!(full.retry_after(), Some(60));
        let limited = OciError::new(RateLimited, "slow down")
            .with_retry_after(std::time::Duration::from_millis(2500));
        assert_eq!(limited.retry_after(), Some(3));
        assert_eq!(OciError::new(Denied, "no").retry_after(), None);
    }
}
