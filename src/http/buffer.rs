//! The connection's read buffer: input read from the socket and consumed from the front, in the
//! manner of ripgrep's `line_buffer`: the invariants are written on the fields and asserted by
//! every method that moves them.
//!
//! A buffer is one of three sizes: none at all (a parked connection), small (`small` bytes: heads
//! and small bodies) or a pooled block (`BLOCK_BUF`: large bodies are assembled in it and handed
//! out whole as a `Block`).

use std::ops::Range;

use crate::net::pool::{BLOCK_BUF, Block, give_block, take_block};

pub(super) struct ReadBuf {
    /// Input read so far. `buf[pos..]` is unread; `buf[..pos]` is consumed and may be overwritten
    /// (a body block is assembled there in place). Invariant: `pos <= buf.len() <= buf.capacity()`.
    buf: Vec<u8>,
    pos: usize,
    /// Capacity of the buffer between requests; at least one maximal head plus a byte.
    small: usize,
}

impl ReadBuf {
    /// A buffer of `small` bytes, allocated now or at the first read (`allocate == false`).
    pub(super) fn new(small: usize, allocate: bool) -> ReadBuf {
        let buf = if allocate {
            Vec::with_capacity(small)
        } else {
            Vec::new()
        };
        ReadBuf { buf, pos: 0, small }
    }

    fn check(&self) {
        debug_assert!(
            self.pos <= self.buf.len(),
            "read position {} past {} buffered bytes",
            self.pos,
            self.buf.len()
        );
    }

    /// Input not consumed yet.
    pub(super) fn unread(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    pub(super) fn has_unread(&self) -> bool {
        self.pos < self.buf.len()
    }

    /// Where unread input starts (consumed bytes before it may be overwritten by a block).
    pub(super) fn pos(&self) -> usize {
        self.pos
    }

    pub(super) fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// Mark `n` more bytes of input consumed.
    pub(super) fn consume(&mut self, n: usize) {
        assert!(
            n <= self.buf.len() - self.pos,
            "consumed {n} of {} unread bytes",
            self.buf.len() - self.pos
        );
        self.pos += n;
    }

    /// Drop all unread input (a closing connection reads only to discard).
    pub(super) fn discard_unread(&mut self) {
        self.pos = self.buf.len();
    }

    /// Consumed bytes `range` (a body run or an assembled block).
    pub(super) fn consumed(&self, range: Range<usize>) -> &[u8] {
        assert!(range.end <= self.pos, "{range:?} is not consumed yet");
        &self.buf[range]
    }

    /// Move consumed bytes `from` down to `to` (squeezing chunk framing out of a block).
    pub(super) fn move_consumed(&mut self, from: Range<usize>, to: usize) {
        assert!(
            to <= from.start && from.end <= self.pos,
            "moving {from:?} to {to} would overwrite unread input"
        );
        self.buf.copy_within(from, to);
    }

    /// Forget consumed input when nothing is unread, so a read starts at the front.
    pub(super) fn reset_if_consumed(&mut self) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
    }

    /// Make room before a read that keeps no consumed bytes: start over when all is consumed,
    /// slide unread input to the front when the buffer is full.
    pub(super) fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.buf.len() == self.buf.capacity() && self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.check();
    }

    /// The vector to read into (reads append after `len()`); a freed buffer gets its small size.
    /// Give it back with `restore`.
    pub(super) fn lend(&mut self) -> Vec<u8> {
        if self.buf.capacity() == 0 {
            self.buf.reserve_exact(self.small);
        }
        std::mem::take(&mut self.buf)
    }

    /// Take back the vector lent for a read, which only appended to it.
    pub(super) fn restore(&mut self, buf: Vec<u8>) {
        self.buf = buf;
        self.check();
    }

    /// Free the memory of a buffer with no unread input (parking).
    pub(super) fn free(&mut self) {
        debug_assert!(!self.has_unread(), "freeing unread input");
        self.buf = Vec::new();
        self.pos = 0;
    }

    /// Switch to a pooled block-sized buffer (large bodies), keeping unread input at its front.
    pub(super) fn enlarge(&mut self) {
        if self.buf.capacity() >= BLOCK_BUF {
            if self.pos > 0 {
                self.buf.drain(..self.pos);
                self.pos = 0;
            }
            return;
        }
        let mut big = take_block();
        big.clear();
        big.extend_from_slice(self.unread());
        self.buf = big;
        self.pos = 0;
    }

    /// Make room to read more while a block ending at `end` is assembled: slide unread input
    /// down onto the block. False if the buffer is still full.
    pub(super) fn make_room(&mut self, end: usize) -> bool {
        assert!(end <= self.pos, "block end {end} past the read position");
        let (pos, len) = (self.pos, self.buf.len());
        if len < self.buf.capacity() {
            return true;
        }
        if pos > end {
            self.buf.copy_within(pos..len, end);
            self.buf.truncate(end + (len - pos));
            self.pos = end;
        }
        self.check();
        self.buf.len() < self.buf.capacity()
    }

    /// Back to a small buffer once a request is done (the block returns to the pool), so idle
    /// connections stay small.
    pub(super) fn shrink(&mut self) {
        if self.buf.capacity() <= self.small {
            return;
        }
        let mut small = Vec::with_capacity(self.small.max(self.buf.len() - self.pos));
        small.extend_from_slice(self.unread());
        let big = std::mem::replace(&mut self.buf, small);
        self.pos = 0;
        give_block(big);
    }

    /// Hand out the buffer holding the assembled, consumed bytes `range` as a `Block`, and go on
    /// in a fresh buffer of the same size holding the unread input.
    pub(super) fn split_block(&mut self, range: Range<usize>) -> Block {
        assert!(range.end <= self.pos, "{range:?} is not consumed yet");
        let cap = self.buf.capacity();
        let mut next = if cap == BLOCK_BUF {
            take_block()
        } else {
            Vec::with_capacity(cap.max(self.small))
        };
        next.clear();
        next.extend_from_slice(self.unread());
        self.pos = 0;
        Block::new(std::mem::replace(&mut self.buf, next), range)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filled(bytes: &[u8]) -> ReadBuf {
        let mut b = ReadBuf::new(16, true);
        let mut v = b.lend();
        v.extend_from_slice(bytes);
        b.restore(v);
        b
    }

    #[test]
    fn consuming_and_compacting_keep_unread_input() {
        let mut b = filled(b"hello world");
        b.consume(6);
        assert_eq!(b.unread(), b"world");
        assert_eq!(b.consumed(0..5), b"hello");
        b.compact();
        assert_eq!(b.unread(), b"world");
        b.consume(5);
        b.compact();
        assert_eq!(b.pos(), 0);
        assert!(!b.has_unread());
    }

    #[test]
    #[should_panic(expected = "consumed 6 of 5 unread bytes")]
    fn consuming_past_the_input_is_a_bug() {
        filled(b"hello").consume(6);
    }

    #[test]
    #[should_panic(expected = "not consumed yet")]
    fn unread_bytes_cannot_leave_as_a_block() {
        let mut b = filled(b"hello");
        b.consume(2);
        b.split_block(0..3);
    }

    #[test]
    fn a_split_block_owns_its_bytes_and_unread_input_moves_on() {
        let mut b = filled(b"blockNEXT");
        b.consume(5);
        let block = b.split_block(0..5);
        assert_eq!(block.bytes(), b"block");
        assert_eq!(b.unread(), b"NEXT");
        assert_eq!(b.pos(), 0);
    }

    #[test]
    fn make_room_slides_unread_input_onto_the_block() {
        let mut b = ReadBuf::new(8, true);
        let mut v = b.lend();
        v.extend_from_slice(b"ab--cdef");
        b.restore(v);
        b.consume(4);
        b.move_consumed(0..2, 0);
        assert!(b.make_room(2));
        assert_eq!(b.consumed(0..2), b"ab");
        assert_eq!(b.unread(), b"cdef");
    }

    #[test]
    fn enlarge_and_shrink_keep_unread_input() {
        let mut b = filled(b"headBODY");
        b.consume(4);
        b.enlarge();
        assert_eq!(b.capacity(), BLOCK_BUF);
        assert_eq!(b.unread(), b"BODY");
        b.shrink();
        assert_eq!(b.capacity(), 16);
        assert_eq!(b.unread(), b"BODY");
    }
}
