//! Request-head parsing into a typed `RequestHead`, with the size limits and the request-smuggling
//! defences (duplicate or malformed Content-Length, Content-Length with Transfer-Encoding).

use std::time::Duration;

/// Limits and timeouts of the HTTP layer (from `[server.http]`).
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_head_size: usize,
    pub max_target_size: usize,
    pub head_timeout: Duration,
    pub keep_alive_timeout: Duration,
    pub body_timeout: Duration,
    /// Longest a response write may wait for the client to read (then the connection closes).
    pub send_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_head_size: 16 * 1024,
            max_target_size: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
        }
    }
}

/// The methods the registry routes; anything else is `Other` (answered 405).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Other,
}

impl Method {
    fn from_bytes(m: &str) -> Method {
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            _ => Method::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Other => "OTHER",
        }
    }
}

/// How the request body is framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// A parsed request head with the headers the registry uses.
#[derive(Clone, Debug)]
pub struct RequestHead {
    pub method: Method,
    /// Path part of the target, before `?`.
    pub path: String,
    /// Query part of the target, after `?` (may be empty).
    pub query: String,
    pub framing: Framing,
    pub expect_continue: bool,
    /// The client asked to close after this request (or is HTTP/1.0 without keep-alive).
    pub close: bool,
    pub content_type: Option<String>,
    pub content_range: Option<String>,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

/// Why a head was refused; each maps to one status, and the connection closes after it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("request head too large")]
    HeadTooLarge,
    #[error("request target too long")]
    TargetTooLong,
    #[error("bad request: {0}")]
    Bad(&'static str),
    #[error("transfer coding not implemented")]
    UnknownTransferCoding,
}

impl HeadError {
    pub fn status(&self) -> u16 {
        match self {
            HeadError::HeadTooLarge => 431,
            HeadError::TargetTooLong => 414,
            HeadError::Bad(_) => 400,
            HeadError::UnknownTransferCoding => 501,
        }
    }
}

const MAX_HEADERS: usize = 96;

/// Parse a head from `buf`. `Ok(None)` means more bytes are needed; `Ok(Some((head, n)))` consumed `n` bytes.
pub fn parse(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::HeadTooLarge),
        Err(_) => {
            return Err(oversize_or(
                buf,
                limits,
                HeadError::Bad("malformed request head"),
            ));
        }
    };
    let n = match status {
        httparse::Status::Partial => {
            if buf.len() >= limits.max_head_size {
                return Err(oversize_or(buf, limits, HeadError::HeadTooLarge));
            }
            return Ok(None);
        }
        httparse::Status::Complete(n) => n,
    };
    let target = req.path.ok_or(HeadError::Bad("no request target"))?;
    if target.len() > limits.max_target_size {
        return Err(HeadError::TargetTooLong);
    }
    if n > limits.max_head_size {
        return Err(HeadError::HeadTooLarge);
    }
    let method = Method::from_bytes(req.method.ok_or(HeadError::Bad("no method"))?);
    let http10 = req.version == Some(0);
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_owned(), q.to_owned()),
        None => (target.to_owned(), String::new()),
    };

    let mut head = RequestHead {
        method,
        path,
        query,
        framing: Framing::None,
        expect_continue: false,
        close: http10,
        content_type: None,
        content_range: None,
        range: None,
        authorization: None,
    };
    let framing_headers = read_headers(&mut head, req.headers, http10)?;
    head.framing = framing(framing_headers, http10)?;
    Ok(Some((head, n)))
}

/// The framing headers as sent, before the request-smuggling checks.
#[derive(Default)]
struct FramingHeaders {
    content_length: Option<u64>,
    /// All Transfer-Encoding values, joined with commas.
    transfer_encoding: Option<String>,
}

/// Copy the headers the registry uses into `head` and collect the framing headers.
fn read_headers(
    head: &mut RequestHead,
    headers: &[httparse::Header<'_>],
    http10: bool,
) -> Result<FramingHeaders, HeadError> {
    let mut f = FramingHeaders::default();
    for h in headers {
        let name = h.name;
        let value = || {
            std::str::from_utf8(h.value)
                .map(str::trim)
                .map_err(|_| HeadError::Bad("header value is not UTF-8"))
        };
        if name.eq_ignore_ascii_case("content-length") {
            if f.content_length.is_some() {
                return Err(HeadError::Bad("duplicate Content-Length"));
            }
            f.content_length = Some(parse_content_length(h.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let v = value()?;
            f.transfer_encoding = Some(match f.transfer_encoding.take() {
                Some(prev) => format!("{prev},{v}"),
                None => v.to_owned(),
            });
        } else if name.eq_ignore_ascii_case("connection") {
            for token in value()?.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    head.close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") && http10 {
                    head.close = false;
                }
            }
        } else if name.eq_ignore_ascii_case("expect") {
            head.expect_continue = value()?.eq_ignore_ascii_case("100-continue");
        } else if name.eq_ignore_ascii_case("content-type") {
            head.content_type = Some(value()?.to_owned());
        } else if name.eq_ignore_ascii_case("content-range") {
            head.content_range = Some(value()?.to_owned());
        } else if name.eq_ignore_ascii_case("range") {
            head.range = Some(value()?.to_owned());
        } else if name.eq_ignore_ascii_case("authorization") {
            // Which of two credentials counts is ambiguous (proxies and servers disagree): refuse.
            if head.authorization.is_some() {
                return Err(HeadError::Bad("duplicate Authorization"));
            }
            head.authorization = Some(value()?.to_owned());
        }
    }
    Ok(f)
}

/// Decide how the body is framed, refusing ambiguous or unsupported combinations (smuggling defence).
fn framing(f: FramingHeaders, http10: bool) -> Result<Framing, HeadError> {
    match (f.content_length, f.transfer_encoding) {
        (Some(_), Some(_)) => Err(HeadError::Bad("both Content-Length and Transfer-Encoding")),
        (None, Some(_)) if http10 => Err(HeadError::Bad("Transfer-Encoding in HTTP/1.0")),
        (None, Some(te)) => {
            let mut codings = te.split(',').map(str::trim).filter(|c| !c.is_empty());
            match (codings.next(), codings.next()) {
                (Some(c), None) if c.eq_ignore_ascii_case("chunked") => Ok(Framing::Chunked),
                _ => Err(HeadError::UnknownTransferCoding),
            }
        }
        (Some(0), None) | (None, None) => Ok(Framing::None),
        (Some(n), None) => Ok(Framing::Length(n)),
    }
}

/// A strict Content-Length: 1 to 19 ASCII digits, nothing else (no sign, list or spaces inside).
fn parse_content_length(v: &[u8]) -> Result<u64, HeadError> {
    let v = v.trim_ascii();
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return Err(HeadError::Bad("malformed Content-Length"));
    }
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(HeadError::Bad("malformed Content-Length"))
}

/// A head that failed or overflowed: a request line longer than the target limit is 414.
fn oversize_or(buf: &[u8], limits: &Limits, other: HeadError) -> HeadError {
    let line_end = buf.iter().position(|&b| b == b'\n').unwrap_or(buf.len());
    if line_end > limits.max_target_size + 32 {
        HeadError::TargetTooLong
    } else {
        other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Option<(RequestHead, usize)>, HeadError> {
        parse(s.as_bytes(), &Limits::default())
    }

    #[test]
    fn parses_a_simple_get() {
        let (h, n) = p("GET /v2/a/manifests/latest?x=1 HTTP/1.1\r\nHost: x\r\n\r\nEXTRA")
            .unwrap()
            .unwrap();
        assert_eq!(n, 52);
        assert_eq!(h.method, Method::Get);
        assert_eq!(h.path, "/v2/a/manifests/latest");
        assert_eq!(h.query, "x=1");
        assert_eq!(h.framing, Framing::None);
        assert!(!h.close);
    }

    #[test]
    fn two_authorization_headers_are_refused() {
        let two = "GET /v2/ HTTP/1.1\r\nAuthorization: Basic YTpi\r\nauthorization: Basic YzpkZA==\r\n\r\n";
        assert_eq!(
            p(two).unwrap_err(),
            HeadError::Bad("duplicate Authorization")
        );
        let one = "GET /v2/ HTTP/1.1\r\nAuthorization: Basic YTpi\r\n\r\n";
        let (h, _) = p(one).unwrap().unwrap();
        assert_eq!(h.authorization.as_deref(), Some("Basic YTpi"));
    }

    #[test]
    fn incomplete_head_needs_more() {
        assert!(p("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    #[test]
    fn smuggling_defences() {
        let both = "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(p(both).unwrap_err().status(), 400);
        let dup = "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(p(dup).unwrap_err().status(), 400);
        for bad in ["+5", "5,5", "0x5", "", "5 5", "-1", "99999999999999999999"] {
            let req = format!("POST / HTTP/1.1\r\nContent-Length: {bad}\r\n\r\n");
            assert_eq!(p(&req).unwrap_err().status(), 400, "{bad:?}");
        }
        let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(p(gzip).unwrap_err().status(), 501);
        let two =
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(p(two).unwrap_err().status(), 501);
        let ok = "POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert_eq!(p(ok).unwrap().unwrap().0.framing, Framing::Chunked);
    }

    #[test]
    fn size_limits() {
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        assert_eq!(p(&long_target).unwrap_err().status(), 414);
        let huge_target = format!("GET /{}", "a".repeat(20000));
        assert_eq!(p(&huge_target).unwrap_err().status(), 414);
        let big_header = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(17000));
        assert_eq!(p(&big_header).unwrap_err().status(), 431);
        let partial_big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(17000));
        assert_eq!(p(&partial_big).unwrap_err().status(), 431);
    }

    #[test]
    fn connection_semantics() {
        assert!(p("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap().0.close);
        assert!(
            !p("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .0
                .close
        );
        assert!(
            p("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .unwrap()
                .0
                .close
        );
        let e = p("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n")
            .unwrap()
            .unwrap()
            .0;
        assert!(e.expect_continue);
        assert_eq!(e.framing, Framing::Length(3));
    }
}
