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
        Limits::from(&crate::config::HttpConfig::default())
    }
}

impl From<&crate::config::HttpConfig> for Limits {
    fn from(c: &crate::config::HttpConfig) -> Limits {
        Limits {
            max_head_size: c.max_head_size,
            max_target_size: c.max_target_size,
            head_timeout: c.head_timeout,
            keep_alive_timeout: c.keep_alive_timeout,
            body_timeout: c.body_timeout,
            send_timeout: c.send_timeout,
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
    /// `Host` (token challenges name the endpoint by it).
    pub host: Option<String>,
    /// `If-Match` / `If-None-Match`, several fields joined with commas.
    pub if_match: Option<String>,
    pub if_none_match: Option<String>,
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
        host: None,
        if_match: None,
        if_none_match: None,
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

/// Append a repeated list-valued field to the ones before it (RFC 9110 §5.3).
fn join_field(field: &mut Option<String>, value: &str) {
    *field = Some(match field.take() {
        Some(prev) => format!("{prev}, {value}"),
        None => value.to_owned(),
    });
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
        } else if name.eq_ignore_ascii_case("if-match") {
            join_field(&mut head.if_match, value()?);
        } else if name.eq_ignore_ascii_case("if-none-match") {
            join_field(&mut head.if_none_match, value()?);
        } else if name.eq_ignore_ascii_case("host") {
            head.host = Some(value()?.to_owned());
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
mod tests;
