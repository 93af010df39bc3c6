//! One client connection, plain TCP or TLS: a reused read buffer, head reading with its timeouts,
//! body framing, `Expect: 100-continue`, and response writing (one write for small responses;
//! files by `sendfile` on plain TCP, through a buffer and rustls over TLS).

use std::future::Future;
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncWriteRentExt, CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

use crate::tls::TlsStream;

use super::chunked::{ChunkError, ChunkedDecoder};
use super::head::{self, Framing, HeadError, Limits, RequestHead};
use super::response::Response;

/// Read-buffer size: large enough for a full head and for efficient small-body reads.
const READ_BUF: usize = 64 * 1024;

/// Buffer used while streaming a large body: blocks of up to this size are hashed and written at once
/// (64 KiB writes made io_uring hand each one to a kernel worker; 0.5–1 MiB writes amortize that).
const BLOCK_BUF: usize = 1 << 20;
/// Block buffers kept per thread for reuse.
const BLOCK_POOL_MAX: usize = 8;

/// A keep-alive connection with no request for this long parks: it frees its read buffers and
/// waits for readability alone, so 10,000 idle connections cost kilobytes each, not 64 KiB+.
/// Clients that send request after request never wait this long and keep the read posted.
const PARK_AFTER: Duration = Duration::from_millis(250);

thread_local! {
    static BLOCK_POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A block-sized buffer from this thread's pool (or a new one).
pub(crate) fn take_block() -> Vec<u8> {
    BLOCK_POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BLOCK_BUF))
}

/// Return a block-sized buffer to this thread's pool (dropped if the pool is full or the buffer
/// is not block-sized).
pub(crate) fn give_block(buf: Vec<u8>) {
    BLOCK_POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < BLOCK_POOL_MAX && buf.capacity() == BLOCK_BUF {
            pool.push(buf);
        }
    });
}

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
    monoio::spawn(async {
        monoio::time::sleep(Duration::from_millis(100)).await;
        COLLECT_SCHEDULED.with(|c| c.set(false));
        // SAFETY: collects this thread's mimalloc heap; no pointers are involved.
        unsafe { libmimalloc_sys::mi_collect(true) };
    });
}

/// Why a connection-level read failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("timed out")]
    Timeout,
    #[error("peer closed the connection")]
    Eof,
}

/// The outcome of waiting for the next request head.
pub enum NextRequest {
    Head(RequestHead),
    /// The peer closed (or went idle past the keep-alive timeout, or shutdown began) between requests.
    Closed,
    /// A malformed or oversized head: answer with its status and close.
    Invalid(HeadError),
    /// Part of a head arrived but not all of it in time: answer 408 and close.
    TimedOut,
}

/// The byte stream under HTTP.
pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

impl Transport {
    fn raw_fd(&self) -> i32 {
        match self {
            Transport::Plain(s) => s.as_raw_fd(),
            Transport::Tls(t) => t.raw_fd(),
        }
    }

    /// Wait until the socket has input (or the peer closed), holding no buffer meanwhile.
    async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.readable(false).await,
            Transport::Tls(t) => t.readable().await,
        }
    }
}

/// The error of a write that waited longer than `send_timeout` for the client to read.
pub(crate) fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")
}

/// Read into the spare capacity of `buf`, waiting at most `wait`. On timeout the read is
/// cancelled and then awaited, so the buffer (and anything that arrived meanwhile) always comes back.
pub(crate) async fn timed_read(
    stream: &mut TcpStream,
    buf: Vec<u8>,
    wait: Duration,
) -> (Result<usize, ConnError>, Vec<u8>) {
    let (len, cap) = (buf.len(), buf.capacity());
    debug_assert!(len < cap, "read into a full buffer");
    let canceller = Canceller::new();
    let mut read =
        std::pin::pin!(stream.cancelable_read(buf.slice_mut(len..cap), canceller.handle()));
    let finished = monoio::select! {
        r = &mut read => Some(r),
        _ = monoio::time::sleep(wait) => None,
    };
    let timed_out = finished.is_none();
    let (res, slice) = match finished {
        Some(r) => r,
        None => {
            canceller.cancel();
            read.await
        }
    };
    let res = match res {
        Ok(0) => Err(ConnError::Eof),
        Ok(n) => Ok(n),
        Err(_) if timed_out => Err(ConnError::Timeout),
        Err(e) => Err(e.into()),
    };
    (res, slice.into_inner())
}

/// A client connection with its read buffer (`buf[pos..]` is unconsumed input).
pub struct Conn {
    io: Transport,
    buf: Vec<u8>,
    pos: usize,
    /// Capacity of the small buffer an idle connection keeps (`shrink` returns to it).
    cap: usize,
    limits: Rc<Limits>,
    /// Bytes read from the client so far (for metrics).
    received: u64,
}

impl Conn {
    /// A plain connection starts parked: its read buffer is allocated when the first bytes
    /// arrive. A TLS connection does not: the handshake's last flight may have carried the first
    /// request, already decrypted inside rustls where socket readiness cannot see it.
    pub fn new(io: Transport, limits: Rc<Limits>) -> Self {
        let cap = READ_BUF.max(limits.max_head_size + 1);
        let buf = match io {
            Transport::Plain(_) => Vec::new(),
            Transport::Tls(_) => Vec::with_capacity(cap),
        };
        Conn {
            io,
            buf,
            cap,
            pos: 0,
            limits,
            received: 0,
        }
    }

    /// Read more input, waiting at most `wait`. Returns the number of bytes read.
    async fn fill(&mut self, wait: Duration) -> Result<usize, ConnError> {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.buf.len() == self.buf.capacity() && self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.read_more(wait).await
    }

    /// Read more input after `buf.len()`, keeping everything already in the buffer.
    async fn read_more(&mut self, wait: Duration) -> Result<usize, ConnError> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.cap);
        }
        let res = match &mut self.io {
            Transport::Plain(stream) => {
                let (res, buf) = timed_read(stream, std::mem::take(&mut self.buf), wait).await;
                self.buf = buf;
                res
            }
            Transport::Tls(tls) => tls.read_into(&mut self.buf, wait).await,
        };
        if let Ok(n) = res {
            self.received += n as u64;
        }
        res
    }

    /// The TLS client's certificate chain (leaf first), if it presented one.
    pub fn client_chain(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        match &self.io {
            Transport::Tls(t) => t.client_chain(),
            Transport::Plain(_) => None,
        }
    }

    /// Bytes read from the client since the connection opened (heads and bodies; over TLS, plaintext).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Wait for the next request head. `first_wait` bounds the wait for its first byte; `stop`
    /// resolves when the server shuts down (only idle connections are closed by it).
    pub async fn next_request(
        &mut self,
        first_wait: Duration,
        stop: impl Future<Output = ()>,
    ) -> NextRequest {
        if self.pos == self.buf.len() {
            let filled = monoio::select! {
                r = self.wait_input(first_wait) => r,
                _ = stop => return NextRequest::Closed,
            };
            if filled.is_err() {
                return NextRequest::Closed;
            }
        }
        let deadline = Instant::now() + self.limits.head_timeout;
        loop {
            match head::parse(&self.buf[self.pos..], &self.limits) {
                Ok(Some((h, n))) => {
                    self.pos += n;
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
        if self.buf.capacity() > 0 {
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
        let left = deadline.saturating_duration_since(Instant::now());
        self.fill(left.max(Duration::from_millis(1))).await
    }

    /// Free the read buffers of a connection with no unread input.
    fn park(&mut self) {
        debug_assert_eq!(self.pos, self.buf.len());
        self.buf = Vec::new();
        self.pos = 0;
        if let Transport::Tls(tls) = &mut self.io {
            tls.park();
        }
        return_freed_pages_soon();
    }

    /// Close politely: stop sending, then read and discard briefly so that unread input does not turn
    /// the close into a reset that destroys the response we just sent.
    pub async fn linger(mut self) {
        if let Transport::Tls(tls) = &mut self.io {
            tls.close_notify(Duration::from_secs(2)).await;
        }
        // SAFETY: shutdown(2) on a descriptor this connection owns.
        unsafe { libc::shutdown(self.io.raw_fd(), libc::SHUT_WR) };
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut seen = 0usize;
        while seen < 1 << 20 {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            self.pos = self.buf.len();
            match self.fill(left).await {
                Ok(n) => seen += n,
                Err(_) => return,
            }
        }
    }

    /// Switch to a pooled block-sized buffer (large bodies), keeping unread input at its front.
    fn enlarge(&mut self) {
        if self.buf.capacity() >= BLOCK_BUF {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            return;
        }
        let mut big = take_block();
        big.clear();
        big.extend_from_slice(&self.buf[self.pos..]);
        self.buf = big;
        self.pos = 0;
    }

    /// Make room to read more while a block ending at `end` is assembled: slide unparsed input
    /// down onto the block. False if the buffer is still full.
    fn make_room(&mut self, end: usize) -> bool {
        let (pos, len) = (self.pos, self.buf.len());
        if len < self.buf.capacity() {
            return true;
        }
        if pos > end {
            self.buf.copy_within(pos..len, end);
            self.buf.truncate(end + (len - pos));
            self.pos = end;
        }
        self.buf.len() < self.buf.capacity()
    }

    /// Return a block buffer to the pool once a request is done, so idle connections stay small.
    pub fn shrink(&mut self) {
        if self.buf.capacity() <= self.cap {
            return;
        }
        let mut small = Vec::with_capacity(self.cap.max(self.buf.len() - self.pos));
        small.extend_from_slice(&self.buf[self.pos..]);
        let big = std::mem::replace(&mut self.buf, small);
        self.pos = 0;
        give_block(big);
    }

    /// The body reader for `head`.
    pub fn body<'c>(&'c mut self, head: &RequestHead) -> Body<'c> {
        let state = match head.framing {
            Framing::None => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
        };
        let declared = match head.framing {
            Framing::Length(n) => Some(n),
            Framing::None => Some(0),
            Framing::Chunked => None,
        };
        Body {
            conn: self,
            state,
            declared,
            continue_pending: head.expect_continue,
            deferred: None,
            failed: false,
            wire_limit: u64::MAX,
        }
    }

    async fn write_all(&mut self, data: Vec<u8>) -> io::Result<()> {
        let stall = self.limits.send_timeout;
        match &mut self.io {
            Transport::Plain(stream) => {
                match monoio::time::timeout(stall, stream.write_all(data)).await {
                    Ok((res, _)) => res.map(|_| ()),
                    Err(_) => Err(stalled()),
                }
            }
            Transport::Tls(tls) => tls.write_all(&data, stall).await,
        }
    }

    /// Send `resp`; the head and an in-memory body leave in one write. `head_only` omits the body.
    pub async fn send(&mut self, resp: Response, head_only: bool, close: bool) -> io::Result<()> {
        let (bytes, file) = super::response::encode(resp, head_only, close);
        self.write_all(bytes).await?;
        if let Some((file, offset, len)) = file {
            // A file send may wait long on a slow reader: hold no read buffers meanwhile.
            if self.pos == self.buf.len() {
                self.park();
            }
            let stall = self.limits.send_timeout;
            match &mut self.io {
                // Measured (docs/performance.md): to a loopback peer, sendfile's per-page socket
                // buffers run at about half the speed of a buffered copy; to a real interface
                // sendfile saves the copy. The copy's 1 MiB block counts against the budget.
                Transport::Plain(stream) if peer_is_loopback(stream) => {
                    match super::budget::reserve(BLOCK_BUF) {
                        Some(_held) => copy_loop(stream, file, offset, len, stall).await?,
                        None => sendfile_loop(stream, &file, offset, len, stall).await?,
                    }
                }
                Transport::Plain(stream) => {
                    sendfile_loop(stream, &file, offset, len, stall).await?
                }
                Transport::Tls(tls) => tls.send_file(file, offset, len, stall).await?,
            }
        }
        Ok(())
    }
}

fn peer_is_loopback(stream: &TcpStream) -> bool {
    stream.peer_addr().is_ok_and(|a| match a.ip() {
        std::net::IpAddr::V4(ip) => ip.is_loopback(),
        std::net::IpAddr::V6(ip) => {
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    })
}

/// Read up to `want` bytes of `file` at `pos` into `buf` (cleared first); reaching the end of the
/// file before `want` bytes is an error, since the response already announced its length.
pub(crate) async fn read_block(
    file: &monoio::fs::File,
    mut buf: Vec<u8>,
    pos: u64,
    want: usize,
) -> (io::Result<usize>, Vec<u8>) {
    buf.clear();
    let (res, slice) = file.read_at(buf.slice_mut(0..want), pos).await;
    let res = match res {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shorter than announced",
        )),
        other => other,
    };
    (res, slice.into_inner())
}

/// A file region to the socket through a pooled block buffer: io_uring read, then write.
async fn copy_loop(
    stream: &mut TcpStream,
    file: std::fs::File,
    offset: u64,
    len: u64,
    stall: Duration,
) -> io::Result<()> {
    let file = monoio::fs::File::from_std(file)?;
    let (result, buf) = copy_blocks(stream, &file, take_block(), offset, offset + len, stall).await;
    give_block(buf);
    result
}

/// The loop of `copy_loop`; hands the buffer back (empty if a stalled write took it).
async fn copy_blocks(
    stream: &mut TcpStream,
    file: &monoio::fs::File,
    mut buf: Vec<u8>,
    mut pos: u64,
    end: u64,
    stall: Duration,
) -> (io::Result<()>, Vec<u8>) {
    while pos < end {
        let want = (end - pos).min(BLOCK_BUF as u64) as usize;
        let (res, back) = read_block(file, buf, pos, want).await;
        buf = back;
        let n = match res {
            Ok(n) => n,
            Err(e) => return (Err(e), buf),
        };
        buf.truncate(n);
        match monoio::time::timeout(stall, stream.write_all(buf)).await {
            Ok((res, back)) => {
                buf = back;
                if let Err(e) = res {
                    return (Err(e), buf);
                }
            }
            // The buffer went with the cancelled write.
            Err(_) => return (Err(stalled()), Vec::new()),
        }
        pos += n as u64;
    }
    (Ok(()), buf)
}

/// Hot path: a file region to the socket with no copy through user space.
/// `sendfile(2)` on the (temporarily non-blocking) socket, awaiting writability on EAGAIN.
async fn sendfile_loop(
    stream: &TcpStream,
    file: &std::fs::File,
    offset: u64,
    len: u64,
    stall: Duration,
) -> io::Result<()> {
    let sock = stream.as_raw_fd();
    let _nb = NonBlocking::set(sock)?;
    let mut off =
        libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset too large"))?;
    let end = offset + len;
    loop {
        let left = end - off as u64;
        if left == 0 {
            return Ok(());
        }
        let chunk = left.min(1 << 30) as usize;
        // SAFETY: both descriptors are open for the duration of the call; `off` is a valid pointer.
        let n = unsafe { libc::sendfile(sock, file.as_raw_fd(), &mut off, chunk) };
        if n > 0 {
            continue;
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than announced",
            ));
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::WouldBlock => {
                match monoio::time::timeout(stall, stream.writable(false)).await {
                    Ok(r) => r?,
                    Err(_) => return Err(stalled()),
                }
            }
            io::ErrorKind::Interrupted => {}
            _ => return Err(err),
        }
    }
}

/// Sets `O_NONBLOCK` on a descriptor and restores the previous flags when dropped.
struct NonBlocking {
    fd: i32,
    old: i32,
}

impl NonBlocking {
    fn set(fd: i32) -> io::Result<Self> {
        // SAFETY: fcntl on a descriptor we own; failures are reported through errno.
        let old = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if old < 0 {
            return Err(io::Error::last_os_error());
        }
        if old & libc::O_NONBLOCK == 0
            && unsafe { libc::fcntl(fd, libc::F_SETFL, old | libc::O_NONBLOCK) } < 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(NonBlocking { fd, old })
    }
}

impl Drop for NonBlocking {
    fn drop(&mut self) {
        if self.old & libc::O_NONBLOCK == 0 {
            // SAFETY: restoring flags read from the same descriptor.
            unsafe { libc::fcntl(self.fd, libc::F_SETFL, self.old) };
        }
    }
}

/// Where the body reader stands.
enum BodyState {
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
}

/// Why reading a request body failed.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("client connection failed: {0}")]
    Conn(#[from] ConnError),
    #[error("malformed chunked body: {0}")]
    Chunked(#[from] ChunkError),
    #[error("body larger than allowed")]
    TooLarge,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// A request body, read in place from the connection buffer.
pub struct Body<'c> {
    conn: &'c mut Conn,
    state: BodyState,
    declared: Option<u64>,
    continue_pending: bool,
    /// A read error held back so that the bytes assembled before it are delivered first.
    deferred: Option<BodyError>,
    /// Reading failed: the rest of the body is unknown, so the connection must close.
    failed: bool,
    /// `Conn::received` past which reading stops (`drain`): counts wire bytes, so chunk framing
    /// and extensions cannot make a drain read without end.
    wire_limit: u64,
}

impl Body<'_> {
    /// The Content-Length, when the body has one (0 for no body); `None` for chunked.
    pub fn declared_len(&self) -> Option<u64> {
        self.declared
    }

    /// Whether the whole body has been read.
    pub fn finished(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// Send `100 Continue` if the client waits for it (once, before the first body read).
    async fn send_continue(&mut self) -> Result<(), BodyError> {
        if self.continue_pending {
            self.continue_pending = false;
            if !self.finished() {
                self.conn
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                    .await?;
            }
        }
        Ok(())
    }

    /// Hot path for large bodies: the next block of body bytes, contiguous in `buf()`, gathered from
    /// as many reads as it takes to fill half of a 1 MiB buffer (or to end the body). Chunk framing is
    /// removed in place. `None` at the end of the body.
    pub async fn next_block(&mut self) -> Result<Option<Range<usize>>, BodyError> {
        let r = self.next_block_inner().await;
        self.failed |= r.is_err();
        r
    }

    async fn next_block_inner(&mut self) -> Result<Option<Range<usize>>, BodyError> {
        if let Some(e) = self.deferred.take() {
            return Err(e);
        }
        self.send_continue().await?;
        if self.finished() {
            return Ok(None);
        }
        if self.declared.is_none_or(|n| n > READ_BUF as u64) {
            self.conn.enlarge();
        } else if self.conn.pos > 0 && self.conn.pos == self.conn.buf.len() {
            self.conn.buf.clear();
            self.conn.pos = 0;
        }
        let stall = self.conn.limits.body_timeout;
        let start = self.conn.pos;
        let mut end = start;
        let target = self.conn.buf.capacity() / 2;
        loop {
            self.absorb(&mut end)?;
            if self.finished() || end - start >= target {
                break;
            }
            if !self.conn.make_room(end) {
                if end > start {
                    break;
                }
                return Err(BodyError::Chunked(ChunkError::TooLong));
            }
            if let Err(e) = self.conn.read_more(stall).await {
                if end == start {
                    return Err(e.into());
                }
                // Deliver what arrived (an upload keeps it for resuming), then report the error.
                self.deferred = Some(e.into());
                break;
            }
        }
        Ok((end > start).then_some(start..end))
    }

    /// Move the buffered input into the block that ends at `end`: as it is for Content-Length
    /// bodies, with the chunk framing squeezed out for chunked ones.
    fn absorb(&mut self, end: &mut usize) -> Result<(), BodyError> {
        let len = self.conn.buf.len();
        match &mut self.state {
            BodyState::Done => {}
            BodyState::Length(left) => {
                // No framing: data is the input itself, so `end` follows `pos`.
                let n = ((len - self.conn.pos) as u64).min(*left) as usize;
                *left -= n as u64;
                self.conn.pos += n;
                *end += n;
                if *left == 0 {
                    self.state = BodyState::Done;
                }
            }
            BodyState::Chunked(dec) => {
                while self.conn.pos < len && !dec.is_done() {
                    let base = self.conn.pos;
                    let step = dec.step(&self.conn.buf[base..len])?;
                    self.conn.pos += step.consumed;
                    if let Some(r) = step.data {
                        let (s, e) = (base + r.start, base + r.end);
                        if s != *end {
                            self.conn.buf.copy_within(s..e, *end);
                        }
                        *end += e - s;
                    }
                }
                if dec.is_done() {
                    self.state = BodyState::Done;
                }
            }
        }
        Ok(())
    }

    /// The next run of body bytes as a range of `buf()`, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<Range<usize>>, BodyError> {
        let r = self.next_inner().await;
        self.failed |= r.is_err();
        r
    }

    async fn next_inner(&mut self) -> Result<Option<Range<usize>>, BodyError> {
        self.send_continue().await?;
        let stall = self.conn.limits.body_timeout;
        loop {
            if self.conn.received > self.wire_limit {
                return Err(BodyError::TooLarge);
            }
            match &mut self.state {
                BodyState::Done => return Ok(None),
                BodyState::Length(left) => {
                    if *left == 0 {
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    if self.conn.pos == self.conn.buf.len() {
                        self.conn.fill(stall).await?;
                        continue;
                    }
                    let avail = (self.conn.buf.len() - self.conn.pos) as u64;
                    let n = avail.min(*left) as usize;
                    *left -= n as u64;
                    let start = self.conn.pos;
                    self.conn.pos += n;
                    return Ok(Some(start..start + n));
                }
                BodyState::Chunked(dec) => {
                    if dec.is_done() {
                        self.state = BodyState::Done;
                        return Ok(None);
                    }
                    if self.conn.pos == self.conn.buf.len() {
                        self.conn.fill(stall).await?;
                        continue;
                    }
                    let base = self.conn.pos;
                    let step = dec.step(&self.conn.buf[base..])?;
                    self.conn.pos += step.consumed;
                    if let Some(r) = step.data {
                        return Ok(Some(base + r.start..base + r.end));
                    }
                }
            }
        }
    }

    /// Lend the buffer out for an owned-buffer write (e.g. `write_all_at`); give it back with `put_buf`.
    pub fn take_buf(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.conn.buf)
    }

    pub fn put_buf(&mut self, buf: Vec<u8>) {
        self.conn.buf = buf;
    }

    /// Hand out the buffer holding the last block (its range stays valid) and continue in `spare`,
    /// moving the input not yet consumed over (a pooled block buffer if `spare` is too small).
    pub fn swap_buf(&mut self, mut spare: Vec<u8>) -> Vec<u8> {
        let cap = self.conn.buf.capacity();
        if spare.capacity() < cap {
            give_block(spare);
            spare = if cap == BLOCK_BUF {
                take_block()
            } else {
                Vec::with_capacity(cap)
            };
        }
        spare.clear();
        spare.extend_from_slice(&self.conn.buf[self.conn.pos..]);
        self.conn.pos = 0;
        std::mem::replace(&mut self.conn.buf, spare)
    }

    /// Read the whole body into memory, refusing more than `limit` bytes.
    pub async fn read_to_vec(&mut self, limit: u64) -> Result<Vec<u8>, BodyError> {
        if self.declared.is_some_and(|n| n > limit) {
            return Err(BodyError::TooLarge);
        }
        let mut out = Vec::with_capacity(self.declared.unwrap_or(0) as usize);
        while let Some(r) = self.next().await? {
            if out.len() as u64 + r.len() as u64 > limit {
                return Err(BodyError::TooLarge);
            }
            out.extend_from_slice(&self.conn.buf[r]);
        }
        Ok(out)
    }

    /// Discard the rest of the body if reading it takes at most `max` more bytes off the wire
    /// (framing included); false if it is larger (close instead).
    pub async fn drain(&mut self, max: u64) -> bool {
        if self.continue_pending || self.failed {
            return false;
        }
        self.wire_limit = self.conn.received.saturating_add(max);
        loop {
            match self.next().await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }
}
