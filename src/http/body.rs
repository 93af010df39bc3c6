//! Request bodies read in place from the connection's buffer: `Content-Length` or chunked framing
//! (`BodyState`), `Expect: 100-continue` before the first read, contiguous blocks for uploads, and
//! the drain of an unread body bounded by wire bytes.

use std::io;
use std::ops::Range;

use crate::net::ConnError;
use crate::net::pool::{BLOCK_BUF, give_block, take_block};

use super::chunked::{ChunkError, ChunkedDecoder};
use super::conn::{Conn, READ_BUF};
use super::head::{Framing, RequestHead};

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

impl<'c> Body<'c> {
    /// The body reader for `head` on `conn`.
    pub(super) fn new(conn: &'c mut Conn, head: &RequestHead) -> Body<'c> {
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
            conn,
            state,
            declared,
            continue_pending: head.expect_continue,
            deferred: None,
            failed: false,
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
