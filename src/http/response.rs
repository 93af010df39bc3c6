//! Responses as values: handlers build them, the connection serializes them.

use std::io::Write as _;

use crate::net::stream::ByteStream;

/// What follows the response head.
pub enum Payload {
    Empty,
    Bytes(Vec<u8>),
    /// A region of a file, sent with `sendfile` on plain TCP.
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    /// Bytes from elsewhere, sent as they arrive; a short stream breaks the connection.
    Stream(ByteStream),
    /// Pieces sent one after another (a `multipart/byteranges` body: part heads and regions).
    Pieces(Vec<Tail>),
}

/// A piece of a body that leaves after the head: bytes, a file region or a stream.
pub enum Tail {
    Bytes(Vec<u8>),
    File {
        file: std::fs::File,
        offset: u64,
        len: u64,
    },
    Stream(ByteStream),
}

impl Tail {
    pub fn len(&self) -> u64 {
        match self {
            Tail::Bytes(b) => b.len() as u64,
            Tail::File { len, .. } => *len,
            Tail::Stream(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Payload {
    pub fn len(&self) -> u64 {
        match self {
            Payload::Empty => 0,
            Payload::Bytes(b) => b.len() as u64,
            Payload::File { len, .. } => *len,
            Payload::Stream(s) => s.len(),
            Payload::Pieces(p) => p.iter().map(Tail::len).sum(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A response: status, extra headers (Content-Length is added from the payload) and payload.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub payload: Payload,
    /// Content-Length to announce when it differs from the payload (HEAD answers).
    pub content_length: Option<u64>,
}

impl Response {
    pub fn new(status: u16) -> Self {
        Response {
            status,
            headers: Vec::new(),
            payload: Payload::Empty,
            content_length: None,
        }
    }

    pub fn header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    pub fn bytes(mut self, content_type: &str, body: Vec<u8>) -> Self {
        self.headers.push(("Content-Type", content_type.to_owned()));
        self.payload = Payload::Bytes(body);
        self
    }

    pub fn json(self, body: Vec<u8>) -> Self {
        self.bytes("application/json", body)
    }

    /// Announce `len` bytes without sending them (HEAD).
    pub fn head_only(mut self, len: u64) -> Self {
        self.content_length = Some(len);
        self.payload = Payload::Empty;
        self
    }

    /// Serialize the head into `out`.
    pub fn write_head(&self, out: &mut Vec<u8>, close: bool) {
        let len = self.content_length.unwrap_or_else(|| self.payload.len());
        let _ = write!(out, "HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            out.extend_from_slice(k.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(v.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.status != 204 && !(100..200).contains(&self.status) {
            let _ = write!(out, "Content-Length: {len}\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// A response as wire bytes: the head plus any in-memory body in one buffer (so it leaves in one
/// write), and the pieces still to send in turn (file regions, streams, bytes between them).
pub fn encode(resp: Response, head_only: bool, close: bool) -> (Vec<u8>, Vec<Tail>) {
    let body_len = if head_only {
        0
    } else {
        resp.payload.len() as usize
    };
    let mut out = Vec::with_capacity(256 + resp.headers.len() * 64 + body_len.min(1 << 20));
    resp.write_head(&mut out, close);
    match resp.payload {
        Payload::Bytes(b) if !head_only => {
            out.extend_from_slice(&b);
            (out, Vec::new())
        }
        Payload::File { file, offset, len } if !head_only => {
            (out, vec![Tail::File { file, offset, len }])
        }
        Payload::Stream(s) if !head_only => (out, vec![Tail::Stream(s)]),
        Payload::Pieces(mut pieces) if !head_only => {
            // Leading bytes leave with the head.
            if let Some(Tail::Bytes(b)) = pieces.first() {
                out.extend_from_slice(b);
                pieces.remove(0);
            }
            (out, pieces)
        }
        _ => (out, Vec::new()),
    }
}

/// Reason phrases for the statuses wharf sends.
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        307 => "Temporary Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        507 => "Insufficient Storage",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_has_length_and_close() {
        let r = Response::new(200).header("X-A", "1").json(b"{}".to_vec());
        let mut out = Vec::new();
        r.write_head(&mut out, true);
        let s = String::from_utf8(out).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nX-A: 1\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn small_response_is_one_buffer() {
        let r = Response::new(200).json(b"{\"a\":1}".to_vec());
        let (bytes, file) = encode(r, false, false);
        assert!(file.is_empty());
        assert!(bytes.ends_with(b"\r\n\r\n{\"a\":1}"));
        let (head_only, _) = encode(Response::new(200).json(b"{}".to_vec()), true, false);
        assert!(head_only.ends_with(b"Content-Length: 2\r\n\r\n"));
    }

    #[test]
    fn no_content_has_no_length() {
        let mut out = Vec::new();
        Response::new(204).write_head(&mut out, false);
        assert_eq!(out, b"HTTP/1.1 204 No Content\r\n\r\n");
    }
}
