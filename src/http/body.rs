//! Request bodies read in place from the connection's buffer: `Content-Length` or chunked framing
//! (`BodyState`), `Expect: 100-continue` before the first read, contiguous blocks for uploads, and
//! the drain of an unread body bounded by wire bytes.

use std::io;
use std::ops::Range;

use crate::net::ConnError;
use crate::net::pool::Block;

use super::buffer::ReadBuf;
use super::chunked::{ChunkError, ChunkedDecoder};
use super::conn::{Conn, READ_BUF};
use super::head::{Framing, RequestHead};

/// Where the body reader stands: one state instead of flags for 100-continue, a held-back error
/// and failure.
enum BodyState {
    /// `Expect: 100-continue`: the client sends the body (of this framing) only after
    /// `100 Continue`, which the first read sends.
    AwaitingContinue(Framing),
    Length(u64),
    Chunked(ChunkedDecoder),
    Done,
    /// A read failed after part of a block had arrived: the part is delivered first (an upload
    /// keeps it for resuming), this error with the next read.
    Failing(BodyError),
    /// Reading failed: the rest of the body is unknown, so the connection must close.
    Failed,
}

/// What the framing makes of the input buffered so far (`BodyState::next_run`).
#[derive(Debug, PartialEq, Eq)]
enum Run {
    /// Body bytes: a consumed range of the buffer.
    Bytes(Range<usize>),
    /// The buffer holds no more body bytes: read more input.
    NeedInput,
    /// The body ended.
    End,
}

/// The framing, over the buffered input alone (no socket): the async `Body` reads more input when
/// these ask for it.
impl BodyState {
    /// Reading a body of `framing`, the client not waiting for `100 Continue`.
    fn reading(framing: Framing) -> BodyState {
        match framing {
            Framing::None => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(ChunkedDecoder::new()),
        }
    }

    /// Consume body input from `buf` into the block that ends at `end` (all of `..end` consumed):
    /// as it is for Content-Length bodies, with the chunk framing squeezed out for chunked ones.
    fn absorb(&mut self, buf: &mut ReadBuf, end: &mut usize) -> Result<(), ChunkError> {
        match self {
            BodyState::Length(left) => {
                // No framing: data is the input itself, so `end` follows the read position.
                let n = (buf.unread().len() as u64).min(*left) as usize;
                *left -= n as u64;
                buf.consume(n);
                *end += n;
                if *left == 0 {
                    *self = BodyState::Done;
                }
            }
            BodyState::Chunked(dec) => {
                while buf.has_unread() && !dec.is_done() {
                    let base = buf.pos();
                    let step = dec.step(buf.unread())?;
                    buf.consume(step.consumed);
                    if let Some(r) = step.data {
                        let (s, e) = (base + r.start, base + r.end);
                        if s != *end {
                            buf.move_consumed(s..e, *end);
                        }
                        *end += e - s;
                    }
                }
                if dec.is_done() {
                    *self = BodyState::Done;
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// The next run of body bytes in `buf`, consumed, without moving any.
    fn next_run(&mut self, buf: &mut ReadBuf) -> Result<Run, ChunkError> {
        loop {
            match self {
                BodyState::Length(0) => {
                    *self = BodyState::Done;
                    return Ok(Run::End);
                }
                BodyState::Chunked(dec) if dec.is_done() => {
                    *self = BodyState::Done;
                    return Ok(Run::End);
                }
                BodyState::Length(_) | BodyState::Chunked(_) if !buf.has_unread() => {
                    return Ok(Run::NeedInput);
                }
                BodyState::Length(left) => {
                    let n = (buf.unread().len() as u64).min(*left) as usize;
                    *left -= n as u64;
                    let start = buf.pos();
                    buf.consume(n);
                    return Ok(Run::Bytes(start..start + n));
                }
                BodyState::Chunked(dec) => {
                    let base = buf.pos();
                    let step = dec.step(buf.unread())?;
                    buf.consume(step.consumed);
                    if let Some(r) = step.data {
                        return Ok(Run::Bytes(base + r.start..base + r.end));
                    }
                }
                _ => return Ok(Run::End),
            }
        }
    }
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
    #[error("the body was cut short by an earlier error")]
    Broken,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
}

/// A request body, read in place from the connection buffer.
pub struct Body<'c> {
    conn: &'c mut Conn,
    state: BodyState,
    declared: Option<u64>,
    /// `Conn::received` past which reading stops (`drain`): counts wire bytes, so chunk framing
    /// and extensions cannot make a drain read without end.
    wire_limit: u64,
}

impl<'c> Body<'c> {
    /// The body reader for `head` on `conn`.
    pub(super) fn new(conn: &'c mut Conn, head: &RequestHead) -> Body<'c> {
        let state = match head.framing {
            Framing::None => BodyState::Done,
            f if head.expect_continue => BodyState::AwaitingContinue(f),
            f => BodyState::reading(f),
        };
        let declared = match head.framing {
            Framing::Length(n) => Some(n),
            Framing::None => Some(0),
            Framing::Chunked => None,
        };
        Body {
            conn,
            state,
            declared,
            wire_limit: u64::MAX,
        }
    }

    /// The Content-Length, when the body has one (0 for no body); `None` for chunked.
    pub fn declared_len(&self) -> Option<u64> {
        self.declared
    }

    /// Whether the whole body has been read.
    pub fn finished(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// Before reading: send `100 Continue` if the client waits for it, and refuse to read on
    /// after a failure (the rest of the body is unknown).
    async fn ready(&mut self) -> Result<(), BodyError> {
        match std::mem::replace(&mut self.state, BodyState::Failed) {
            BodyState::AwaitingContinue(framing) => {
                self.state = BodyState::reading(framing);
                self.conn
                    .write_all(b"HTTP/1.1 100 Continue\r\n\r\n".to_vec())
                    .await?;
                Ok(())
            }
            BodyState::Failing(e) => Err(e),
            BodyState::Failed => Err(BodyError::Broken),
            other => {
                self.state = other;
                Ok(())
            }
        }
    }

    /// A read's result, remembering a failure (unless one is already held back).
    fn settle<T>(&mut self, r: Result<T, BodyError>) -> Result<T, BodyError> {
        if r.is_err() && !matches!(self.state, BodyState::Failing(_)) {
            self.state = BodyState::Failed;
        }
        r
    }

    /// Hot path for large bodies: the next block of body bytes, owned, gathered from as many reads
    /// as it takes to fill half of a 1 MiB buffer (or to end the body). Chunk framing is removed in
    /// place. `None` at the end of the body. Dropping the block returns its buffer to the pool.
    pub async fn next_block(&mut self) -> Result<Option<Block>, BodyError> {
        let r = self.next_block_inner().await;
        self.settle(r)
    }

    async fn next_block_inner(&mut self) -> Result<Option<Block>, BodyError> {
        self.ready().await?;
        if self.finished() {
            return Ok(None);
        }
        if self.declared.is_none_or(|n| n > READ_BUF as u64) {
            self.conn.buf.enlarge();
        } else {
            self.conn.buf.reset_if_consumed();
        }
        let stall = self.conn.limits.body_timeout;
        let start = self.conn.buf.pos();
        let mut end = start;
        let target = self.conn.buf.capacity() / 2;
        loop {
            self.state.absorb(&mut self.conn.buf, &mut end)?;
            if self.finished() || end - start >= target {
                break;
            }
            if !self.conn.buf.make_room(end) {
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
                self.state = BodyState::Failing(e.into());
                break;
            }
        }
        Ok((end > start).then(|| self.conn.buf.split_block(start..end)))
    }

    /// The next run of body bytes as a consumed range of the connection's buffer, or `None` at
    /// the end.
    async fn next(&mut self) -> Result<Option<Range<usize>>, BodyError> {
        let r = self.next_inner().await;
        self.settle(r)
    }

    async fn next_inner(&mut self) -> Result<Option<Range<usize>>, BodyError> {
        self.ready().await?;
        let stall = self.conn.limits.body_timeout;
        loop {
            if self.conn.received > self.wire_limit {
                return Err(BodyError::TooLarge);
            }
            match self.state.next_run(&mut self.conn.buf)? {
                Run::Bytes(r) => return Ok(Some(r)),
                Run::End => return Ok(None),
                Run::NeedInput => {
                    self.conn.fill(stall).await?;
                }
            }
        }
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
            out.extend_from_slice(self.conn.buf.consumed(r));
        }
        Ok(out)
    }

    /// Discard the rest of the body if reading it takes at most `max` more bytes off the wire
    /// (framing included); false if it is larger, never invited (`100 Continue` not sent) or
    /// broken: then the connection closes instead.
    async fn drain(&mut self, max: u64) -> bool {
        if matches!(
            self.state,
            BodyState::AwaitingContinue(_) | BodyState::Failing(_) | BodyState::Failed
        ) {
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

    /// Whether the connection stays open after the response to this request: the one place
    /// keep-alive is decided. A body the handler left unread is drained first when small (up to
    /// `DRAIN_LIMIT` wire bytes); a larger one, a client asking to close, a refused client
    /// (401/429, so failing cannot hold a connection, and 413, whose body is never read) and a
    /// server shutting down all close without waiting for the body: the answer goes out first.
    pub async fn keep_alive(&mut self, head: &RequestHead, refused: bool, stopping: bool) -> bool {
        if head.close || refused || stopping {
            return false;
        }
        self.finished() || self.drain(DRAIN_LIMIT).await
    }
}

/// Unread body bytes we are willing to discard to keep a connection alive.
const DRAIN_LIMIT: u64 = 256 * 1024;

#[cfg(test)]
mod tests;
