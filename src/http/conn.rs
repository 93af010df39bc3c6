//! One client connection over a `net::transport::Transport`: its phase, read buffer, head reading
//! with its timeouts, parking while idle, and response writing (one write for small responses;
//! files through the transport). Bodies are read by `body::Body`.

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::net::ConnError;
use crate::net::stream::ByteStream;
pub use crate::net::transport::Transport;

use super::body::Body;
use super::buffer::ReadBuf;
use super::head::{self, HeadError, Limits, RequestHead};
use super::response::{Response, Tail};

/// Read-buffer size: large enough for a full head and for efficient small-body reads.
pub(super) const READ_BUF: usize = 64 * 1024;

/// A keep-alive connection with no request for this long parks: it frees its read buffers and
/// waits for readability alone, so 10,000 idle connections cost kilobytes each, not 64 KiB+.
/// Clients that send request after request never wait this long and keep the read posted.
const PARK_AFTER: Duration = Duration::from_millis(250);
/// A closing connection reads and discards at most this much, for at most `LINGER_TIME`.
const LINGER_BYTES: usize = 64 << 20;
const LINGER_TIME: Duration = Duration::from_secs(2);

thread_local! {
    static COLLECT_SCHEDULED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Hand the pages freed by parked connections back to the kernel, once per burst of parks on this
/// worker. mimalloc would purge them only on a later allocation, which an idle worker never makes;
/// forcing the purge on every free instead costs the busy paths (measured ~10 % of 4 KiB GETs).
fn return_freed_pages_soon() {
    if COLLECT_SCHEDULED.with(|c| c.replace(true)) {
        return;
    }
    crate::task::spawn("returning freed pages", async {
        monoio::time::sleep(Duration::from_millis(100)).await;
        COLLECT_SCHEDULED.with(|c| c.set(false));
        crate::sys::return_freed_pages();
    });
}

/// The outcome of waiting for the next request head. Not boxed: the head is moved once per
/// request, and a box would cost an allocation per request on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum NextRequest {
    Head(RequestHead),
    /// The peer closed (or went idle past the keep-alive timeout, or shutdown began) between requests.
    Closed,
    /// A malformed or oversized head: answer with its status and close.
    Invalid(HeadError),
    /// Part of a head arrived but not all of it in time: answer 408 and close.
    TimedOut,
}

/// Connections parked now (no buffers held), for `wharf_connections_parked`.
static PARKED: AtomicUsize = AtomicUsize::new(0);

/// Connections parked now, in every worker.
pub fn parked() -> usize {
    PARKED.load(Ordering::Relaxed)
}

impl Drop for Conn {
    fn drop(&mut self) {
        if self.phase == Phase::Parked {
            PARKED.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

/// Where a connection stands. Replaces flags: the wait before a head, whether buffers are held and
/// whether the connection is closing all follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Between requests (or before the first) with a read buffer, ready to read.
    Idle,
    /// Idle past `PARK_AFTER` (or a plain connection not yet read from): no buffers, waiting for
    /// readability alone.
    Parked,
    /// Reading a request head.
    Head,
    /// Serving a request: its body is read, its response sent.
    Request,
    /// Answered for the last time: the write side is shut, input is discarded briefly.
    Lingering,
}

/// A client connection: its transport, read buffer and phase.
pub struct Conn {
    io: Transport,
    pub(super) buf: ReadBuf,
    phase: Phase,
    /// Requests whose heads were read: the first waits `head_timeout`, later ones the keep-alive
    /// timeout.
    requests: u64,
    pub(super) limits: Rc<Limits>,
    /// Bytes read from the client so far (for metrics and the drain's wire limit).
    pub(super) received: u64,
}

impl Conn {
    /// A plain connection starts parked: its read buffer is allocated when the first bytes
    /// arrive. A TLS connection does not: the handshake's last flight may have carried the first
    /// request, already decrypted inside rustls where socket readiness cannot see it.
    pub fn new(io: Transport, limits: Rc<Limits>) -> Self {
        let small = READ_BUF.max(limits.max_head_size + 1);
        let (buf, phase) = match io {
            Transport::Plain(_) => (ReadBuf::new(small, false), Phase::Parked),
            Transport::Tls(_) => (ReadBuf::new(small, true), Phase::Idle),
        };
        if phase == Phase::Parked {
            PARKED.fetch_add(1, Ordering::Relaxed);
        }
        Conn {
            io,
            buf,
            phase,
            requests: 0,
            limits,
            received: 0,
        }
    }

    /// Move to `next`, keeping `wharf_connections_parked` true.
    fn set_phase(&mut self, next: Phase) {
        match (self.phase == Phase::Parked, next == Phase::Parked) {
            (false, true) => {
                PARKED.fetch_add(1, Ordering::Relaxed);
            }
            (true, false) => {
                PARKED.fetch_sub(1, Ordering::Relaxed);
            }
            _ => {}
        }
        self.phase = next;
    }

    /// Read more input, waiting at most `wait`, after making room (consumed input is dropped).
    /// Returns the number of bytes read.
    pub(super) async fn fill(&mut self, wait: Duration) -> Result<usize, ConnError> {
        self.buf.compact();
        self.read_more(wait).await
    }

    /// Read more input after what the buffer holds, keeping all of it.
    pub(super) async fn read_more(&mut self, wait: Duration) -> Result<usize, ConnError> {
        let mut buf = self.buf.lend();
        let res = self.io.read_into(&mut buf, wait).await;
        self.buf.restore(buf);
        if let Ok(n) = res {
            self.received += n as u64;
        }
        res
    }

    /// The TLS client's certificate chain (leaf first), if it presented one.
    pub fn client_chain(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.io.client_chain()
    }

    /// Bytes read from the client since the connection opened (heads and bodies; over TLS, plaintext).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Wait for the next request head: the first for `head_timeout`, later ones for the
    /// keep-alive timeout. `stop` resolves when the server shuts down or evicts this idle
    /// connection (only a connection with no request under way is closed by it).
    pub async fn next_request(&mut self, stop: impl Future<Output = ()>) -> NextRequest {
        debug_assert!(matches!(self.phase, Phase::Idle | Phase::Parked));
        let wait = if self.requests == 0 {
            self.limits.head_timeout
        } else {
            self.limits.keep_alive_timeout
        };
        if !self.buf.has_unread() {
            let filled = monoio::select! {
                r = self.wait_input(wait) => r,
                _ = stop => return NextRequest::Closed,
            };
            if filled.is_err() {
                return NextRequest::Closed;
            }
        }
        self.set_phase(Phase::Head);
        let deadline = Instant::now() + self.limits.head_timeout;
        loop {
            match head::parse(self.buf.unread(), &self.limits) {
                Ok(Some((h, n))) => {
                    self.buf.consume(n);
                    self.requests += 1;
                    self.set_phase(Phase::Request);
                    return NextRequest::Head(h);
                }
                Ok(None) => {}
                Err(e) => return NextRequest::Invalid(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return NextRequest::TimedOut;
            }
            match self.fill(left).await {
                Ok(_) => {}
                Err(ConnError::Timeout) => return NextRequest::TimedOut,
                Err(_) => return NextRequest::Closed,
            }
        }
    }

    /// Wait up to `wait` for the first bytes of the next request. Past `PARK_AFTER` of silence
    /// the connection parks (buffers freed, readiness wait only) until input arrives.
    async fn wait_input(&mut self, wait: Duration) -> Result<usize, ConnError> {
        let deadline = Instant::now() + wait;
        if self.phase == Phase::Idle {
            match self.fill(wait.min(PARK_AFTER)).await {
                Err(ConnError::Timeout) if wait > PARK_AFTER => {}
                other => return other,
            }
            self.park();
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match monoio::time::timeout(left, self.io.readable()).await {
            Err(_) => return Err(ConnError::Timeout),
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(())) => {}
        }
        // Readable also means "closed"; the read tells which, with a deadline in case the
        // readiness was spurious.
        self.set_phase(Phase::Idle);
        let left = deadline.saturating_duration_since(Instant::now());
        self.fill(left.max(Duration::from_millis(1))).await
    }

    /// Free the read buffers of a connection with no unread input.
    fn park(&mut self) {
        self.buf.free();
        self.io.park();
        self.set_phase(Phase::Parked);
        return_freed_pages_soon();
    }

    /// Close politely: stop sending, then read and discard briefly so that unread input does not turn
    /// the close into a reset that destroys the response we just sent. A client that writes a whole
    /// refused body before reading (Python's `http.client`) gets `LINGER_BYTES` and `LINGER_TIME`
    /// to finish and read the answer.
    pub async fn linger(mut self) {
        self.set_phase(Phase::Lingering);
        self.io.shutdown_write().await;
        let deadline = Instant::now() + LINGER_TIME;
        let mut seen = 0usize;
        while seen < LINGER_BYTES {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.buf.discard_unread();
            match self.fill(left).await {
                Ok(n) => seen += n,
                Err(_) => return,
            }
        }
    }

    /// The body reader for `head`.
    pub fn body<'c>(&'c mut self, head: &RequestHead) -> Body<'c> {
        Body::new(self, head)
    }

    pub(super) async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        self.io.write_all(data, self.limits.send_timeout).await
    }

    /// Send a stream's bytes as they arrive. One that ends short of (or runs past) its length,
    /// or fails, is an error: the connection closes and the client sees a broken body.
    async fn send_stream(&mut self, mut stream: ByteStream) -> io::Result<()> {
        crate::net::file::count_send(crate::net::file::SendPath::Stream);
        let mut left = stream.len();
        while let Some(chunk) = stream.next_chunk().await? {
            if chunk.len() as u64 > left {
                return Err(io::Error::other("a body stream ran past its length"));
            }
            left -= chunk.len() as u64;
            if !chunk.is_empty() {
                self.write_all(chunk).await?;
            }
        }
        if left > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("a body stream ended {left} bytes short"),
            ));
        }
        Ok(())
    }

    /// Send `resp`; the head and an in-memory body leave in one write. `head_only` omits the body.
    pub async fn send(&mut self, resp: Response, head_only: bool, close: bool) -> io::Result<()> {
        // The request is done with its buffers: a block goes back to the pool.
        self.buf.shrink();
        let (bytes, pieces) = super::response::encode(resp, head_only, close);
        self.write_all(bytes).await?;
        // A long send may wait on a slow reader: hold no read buffers meanwhile.
        if !pieces.is_empty() && !self.buf.has_unread() {
            self.park();
        }
        let stall = self.limits.send_timeout;
        for piece in pieces {
            match piece {
                Tail::Bytes(b) => self.write_all(b).await?,
                Tail::File { file, offset, len } => {
                    self.io.send_file(file, offset, len, stall).await?
                }
                Tail::Stream(stream) => self.send_stream(stream).await?,
            }
        }
        if self.phase == Phase::Request {
            self.set_phase(Phase::Idle);
        }
        Ok(())
    }
}
