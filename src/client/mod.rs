//! An HTTP/1.1 client for the services wharf talks to (an S3-compatible object store; upstream
//! registries later): requests over plain TCP or TLS (rustls, through `net::tls`) with keep-alive
//! connections pooled per worker thread, a response head parsed with `httparse`, bodies framed by
//! `Content-Length` and read whole (bounded) or chunk by chunk as they arrive. Knows neither OCI nor storage; runs on the
//! worker's monoio runtime (no other runtime inside a worker).

use std::cell::RefCell;
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use crate::net::tls::{HandshakeError, TlsStream};
use crate::net::{ConnError, timed_read};

mod endpoint;
pub use endpoint::{Endpoint, endpoint, resolve, resolve_now};

/// Idle connections kept per endpoint and worker thread.
const IDLE_PER_ENDPOINT: usize = 32;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Read size for bodies read chunk by chunk.
const READ_CHUNK: usize = 256 * 1024;

/// One request: method, path with query, extra headers, body.
pub struct Request<'a> {
    pub method: &'a str,
    pub target: &'a str,
    pub headers: Vec<(&'a str, String)>,
    pub body: Payload<'a>,
}

/// A request body. Bytes the caller lends go out copied behind the head (one write, for small
/// bodies); bytes it hands over go out as they are after the head (no copy of a multipart part,
/// and no second part-sized buffer per request in flight).
#[derive(Clone)]
pub enum Payload<'a> {
    Lent(&'a [u8]),
    Given(bytes::Bytes),
}

impl Payload<'_> {
    /// No body.
    pub const NONE: Payload<'static> = Payload::Lent(b"");

    fn len(&self) -> usize {
        match self {
            Payload::Lent(b) => b.len(),
            Payload::Given(b) => b.len(),
        }
    }
}

/// A response head and its body, still to be read.
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Body,
    /// The answer to the request sent a second time (`send`): the first attempt's answer was
    /// lost, so the server may have applied it too.
    pub resent: bool,
}

impl Response {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// The first of `headers` called `name` (any case).
fn header_in<'h>(headers: &'h [(String, String)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A response body of known length. Read to its end, its connection goes back to the pool;
/// dropped early, the connection is closed.
pub struct Body {
    conn: Option<Conn>,
    /// Bytes already read past the head.
    early: Vec<u8>,
    left: u64,
    /// The connection may serve another request once the body is read (no `Connection: close`).
    reuse: bool,
    endpoint: PoolKey,
    io_timeout: Duration,
}

impl Body {
    /// Bytes of the body not handed out yet (read ahead with the head, or still to come).
    pub fn remaining(&self) -> u64 {
        self.early.len() as u64 + self.left
    }

    /// The whole body, refused when longer than `limit`.
    pub async fn bytes(mut self, limit: usize) -> io::Result<Vec<u8>> {
        if self.left + self.early.len() as u64 > limit as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("response body of {} bytes, over {limit}", self.left),
            ));
        }
        let mut out = Vec::with_capacity(self.left as usize);
        while let Some(chunk) = self.next_chunk().await? {
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// The next bytes of the body, `None` at its end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.next_chunk_upto(READ_CHUNK).await
    }

    /// `next_chunk`, in chunks of at most `max` bytes.
    pub async fn next_chunk_upto(&mut self, max: usize) -> io::Result<Option<Vec<u8>>> {
        if !self.early.is_empty() {
            let early = std::mem::take(&mut self.early);
            return Ok(Some(early));
        }
        if self.left == 0 {
            self.finish();
            return Ok(None);
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(io::Error::other("response body already failed"));
        };
        // Filled before it is handed out: a few large chunks make fewer hash calls, socket
        // writes and allocations downstream than one per read (a read often brings 64 KiB).
        let want = self.left.min(max.max(1) as u64) as usize;
        let mut buf = Vec::with_capacity(want);
        while buf.len() < want {
            let (res, back) = conn.read(buf, self.io_timeout).await;
            buf = back;
            match res {
                Ok(n) => self.left -= n as u64,
                Err(e) => {
                    self.conn = None;
                    return Err(conn_error(e, "reading a response body"));
                }
            }
        }
        if self.left == 0 {
            self.finish();
        }
        Ok(Some(buf))
    }

    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.reuse
        {
            give_back(self.endpoint.clone(), conn);
        }
    }
}

/// A connection to an endpoint: plain TCP or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<rustls::ClientConnection>>),
}

impl Conn {
    /// Read into the spare capacity of `buf`, waiting at most `wait`.
    async fn read(
        &mut self,
        mut buf: Vec<u8>,
        wait: Duration,
    ) -> (Result<usize, ConnError>, Vec<u8>) {
        match self {
            Conn::Plain(stream) => timed_read(stream, buf, wait).await,
            Conn::Tls(tls) => {
                let res = tls.read_into(&mut buf, wait).await;
                (res, buf)
            }
        }
    }

    /// Write all of `wire`, then `body` (`wire` is given back, for a retry on another
    /// connection).
    async fn write(
        &mut self,
        wire: Vec<u8>,
        body: Option<bytes::Bytes>,
        wait: Duration,
    ) -> (io::Result<()>, Vec<u8>) {
        match self {
            Conn::Plain(stream) => {
                let wire = match monoio::time::timeout(wait, stream.write_all(wire)).await {
                    Ok((Ok(_), wire)) => wire,
                    Ok((Err(e), wire)) => return (Err(e), wire),
                    Err(_) => return (Err(timed_out("sending a request")), Vec::new()),
                };
                let Some(body) = body else {
                    return (Ok(()), wire);
                };
                match monoio::time::timeout(wait, stream.write_all(body)).await {
                    Ok((res, _)) => (res.map(|_| ()), wire),
                    Err(_) => (Err(timed_out("sending a request body")), Vec::new()),
                }
            }
            Conn::Tls(tls) => {
                let mut res = tls.write_all(&wire, wait).await;
                if let (Ok(()), Some(body)) = (&res, body) {
                    res = tls.write_all(&body, wait).await;
                }
                (res, wire)
            }
        }
    }
}

fn timed_out(doing: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("{doing} timed out"))
}

/// What a pooled connection may be reused for: the same address, `Host` and TLS set-up (a
/// connection verified under one set of roots never serves an endpoint with another).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PoolKey {
    addr: SocketAddr,
    host: String,
    /// The client configuration and the server name (none: plain TCP).
    tls: Option<TlsKey>,
}

/// A TLS set-up, equal only to itself: the same `ClientConfig` (by identity; the key holds it,
/// so its address is never reused while connections made with it are pooled) and server name.
#[derive(Clone, Debug)]
struct TlsKey(Arc<rustls::ClientConfig>, String);

impl PartialEq for TlsKey {
    fn eq(&self, other: &TlsKey) -> bool {
        Arc::ptr_eq(&self.0, &other.0) && self.1 == other.1
    }
}

impl Eq for TlsKey {}

impl std::hash::Hash for TlsKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        std::ptr::hash(Arc::as_ptr(&self.0), h);
        self.1.hash(h);
    }
}

impl PoolKey {
    fn of(ep: &Endpoint) -> PoolKey {
        PoolKey {
            addr: ep.addr,
            host: ep.host.clone(),
            tls: ep
                .tls
                .as_ref()
                .map(|(c, name)| TlsKey(Arc::clone(c), name.to_str().into_owned())),
        }
    }
}

thread_local! {
    /// Idle keep-alive connections of this worker, by endpoint (`IDLE_PER_ENDPOINT` each).
    static IDLE: RefCell<HashMap<PoolKey, Vec<Conn>>> = RefCell::new(HashMap::new());
}

/// Idle pooled connections of all workers (`wharf_client_idle_connections`).
static IDLE_TOTAL: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn take_idle(key: &PoolKey) -> Option<Conn> {
    let conn = IDLE.with(|m| m.borrow_mut().get_mut(key).and_then(Vec::pop));
    if conn.is_some() {
        IDLE_TOTAL.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
    conn
}

fn give_back(key: PoolKey, conn: Conn) {
    IDLE.with(|m| {
        let mut m = m.borrow_mut();
        let idle = m.entry(key).or_default();
        if idle.len() < IDLE_PER_ENDPOINT {
            idle.push(conn);
            IDLE_TOTAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    });
}

/// Close this thread's idle connections. They belong to the runtime that opened them: a thread
/// that ends its runtime and starts another (tests do; workers run one for life) calls this
/// between the two.
pub fn clear_idle() {
    let gone = IDLE.with(|m| m.borrow_mut().drain().map(|(_, v)| v.len()).sum::<usize>());
    IDLE_TOTAL.fetch_sub(gone, std::sync::atomic::Ordering::Relaxed);
}

/// Idle pooled connections of every thread.
pub fn idle_connections_total() -> usize {
    IDLE_TOTAL.load(std::sync::atomic::Ordering::Relaxed)
}

/// Idle pooled connections on this thread (all endpoints).
pub fn idle_connections() -> usize {
    IDLE.with(|m| m.borrow().values().map(Vec::len).sum())
}

fn conn_error(e: ConnError, doing: &str) -> io::Error {
    match e {
        ConnError::Io(e) => io::Error::new(e.kind(), format!("{doing}: {e}")),
        ConnError::Timeout => {
            io::Error::new(io::ErrorKind::TimedOut, format!("{doing}: timed out"))
        }
        ConnError::Eof => io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{doing}: the server closed the connection"),
        ),
    }
}

async fn connect(ep: &Endpoint) -> io::Result<Conn> {
    let stream = match monoio::time::timeout(ep.connect_timeout, TcpStream::connect(ep.addr)).await
    {
        Ok(s) => s?,
        Err(_) => {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connecting to {} timed out", ep.addr),
            ));
        }
    };
    stream.set_nodelay(true)?;
    let Some((config, name)) = &ep.tls else {
        return Ok(Conn::Plain(stream));
    };
    match TlsStream::connect(stream, config.clone(), name.clone(), ep.connect_timeout).await {
        Ok(tls) => Ok(Conn::Tls(Box::new(tls))),
        Err(HandshakeError::Tls(e)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("TLS handshake with {} ({}): {e}", ep.host, ep.addr),
        )),
        Err(HandshakeError::Conn(e)) => Err(conn_error(e, "a TLS handshake")),
        Err(e) => Err(io::Error::other(format!(
            "TLS handshake with {}: {e}",
            ep.host
        ))),
    }
}

fn encode(ep: &Endpoint, req: &Request<'_>) -> Vec<u8> {
    use std::io::Write as _;
    let lent = match req.body {
        Payload::Lent(b) => b.len(),
        Payload::Given(_) => 0,
    };
    let mut out = Vec::with_capacity(256 + lent);
    let _ = write!(
        out,
        "{} {} HTTP/1.1\r\nHost: {}\r\n",
        req.method, req.target, ep.host
    );
    for (k, v) in &req.headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if req.body.len() > 0 || matches!(req.method, "PUT" | "POST") {
        let _ = write!(out, "Content-Length: {}\r\n", req.body.len());
    }
    out.extend_from_slice(b"\r\n");
    if let Payload::Lent(body) = req.body {
        out.extend_from_slice(body);
    }
    out
}

/// Send `req` and read the response head. A pooled connection the server closed meanwhile is
/// retried once on a fresh one (only then: the request was not seen).
pub async fn send(ep: &Endpoint, req: &Request<'_>) -> io::Result<Response> {
    let mut wire = encode(ep, req);
    let given = match &req.body {
        Payload::Given(b) => Some(b),
        Payload::Lent(_) => None,
    };
    let head_request = req.method == "HEAD";
    let mut resent = false;
    if let Some(conn) = take_idle(&PoolKey::of(ep)) {
        match exchange(ep, conn, wire, given.cloned(), head_request).await {
            Err(Failed::Stale(e, back)) => {
                tracing::debug!("pooled connection to {} was stale: {e}", ep.addr);
                wire = back;
                resent = true;
            }
            done => return done.map_err(Failed::into_error),
        }
    }
    let conn = connect(ep).await?;
    let mut resp = exchange(ep, conn, wire, given.cloned(), head_request)
        .await
        .map_err(Failed::into_error)?;
    resp.resent = resent;
    Ok(resp)
}

/// Why an exchange failed.
enum Failed {
    /// Nothing came back (a pooled connection the server had closed): the request, to retry.
    Stale(io::Error, Vec<u8>),
    Other(io::Error),
}

impl Failed {
    fn into_error(self) -> io::Error {
        match self {
            Failed::Stale(e, _) | Failed::Other(e) => e,
        }
    }
}

/// Write the request and read the head.
async fn exchange(
    ep: &Endpoint,
    mut conn: Conn,
    wire: Vec<u8>,
    body: Option<bytes::Bytes>,
    head_request: bool,
) -> Result<Response, Failed> {
    let wire = match conn.write(wire, body, ep.io_timeout).await {
        (Ok(()), wire) => wire,
        (Err(e), _) if e.kind() == io::ErrorKind::TimedOut => return Err(Failed::Other(e)),
        (Err(e), wire) => return Err(Failed::Stale(e, wire)),
    };
    let mut buf = Vec::with_capacity(8 * 1024);
    loop {
        if buf.len() == buf.capacity() {
            // Bounded: `parse_head` refuses a head still incomplete at `MAX_HEAD`.
            buf.reserve(buf.len());
        }
        let (res, back) = conn.read(buf, ep.io_timeout).await;
        buf = back;
        if let Err(e) = res {
            let e = conn_error(e, "reading a response head");
            return Err(if buf.is_empty() && e.kind() != io::ErrorKind::TimedOut {
                Failed::Stale(e, wire)
            } else {
                Failed::Other(e)
            });
        }
        match parse_head(&buf, head_request).map_err(Failed::Other)? {
            None => continue,
            Some(head) => {
                let early = buf.split_off(head.end);
                return frame(ep, conn, head, early).map_err(Failed::Other);
            }
        }
    }
}

/// A parsed response head: status, headers, where the body starts in the buffer, how long it is
/// and whether the connection may serve another request afterwards.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub end: usize,
    pub len: u64,
    pub reuse: bool,
}

/// Parse a response head from the start of `buf` (`None`: incomplete). Bodies must have a
/// `Content-Length` (chunked responses are refused); HEAD answers, 204 and 304 have none.
pub fn parse_head(buf: &[u8], head_request: bool) -> io::Result<Option<Head>> {
    let bad = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut parsed = httparse::Response::new(&mut headers);
    let end = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(end)) => end,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD => {
            return Err(bad("response head too large".into()));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(bad(format!("bad response head: {e}"))),
    };
    let status = parsed.code.unwrap_or(0);
    let headers: Vec<(String, String)> = parsed
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect();
    let find = |name: &str| header_in(&headers, name);
    if find("Transfer-Encoding").is_some() {
        return Err(bad(
            "chunked responses are not supported by this client".into()
        ));
    }
    let len = if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        0
    } else {
        let v =
            find("Content-Length").ok_or_else(|| bad("response without Content-Length".into()))?;
        v.parse::<u64>()
            .map_err(|_| bad(format!("bad Content-Length {v:?}")))?
    };
    let reuse = !find("Connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    Ok(Some(Head {
        status,
        headers,
        end,
        len,
        reuse,
    }))
}

fn frame(ep: &Endpoint, conn: Conn, head: Head, mut early: Vec<u8>) -> io::Result<Response> {
    if early.len() as u64 > head.len {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more bytes than the response announced",
        ));
    }
    let left = head.len - early.len() as u64;
    if early.is_empty() {
        early = Vec::new();
    }
    let mut body = Body {
        conn: Some(conn),
        early,
        left,
        reuse: head.reuse,
        endpoint: PoolKey::of(ep),
        io_timeout: ep.io_timeout,
    };
    if left == 0 {
        body.finish();
    }
    Ok(Response {
        status: head.status,
        headers: head.headers,
        body,
        resent: false,
    })
}
