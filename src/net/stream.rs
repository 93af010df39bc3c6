//! Bytes that arrive piece by piece from elsewhere (an object-store response, a mirror fetch in
//! flight) and leave for a client as they come. The source says how many bytes it will give; a
//! short or failed source ends the response early (the client sees a broken body, never a
//! complete one with wrong bytes).

use std::future::Future;
use std::io;
use std::pin::Pin;

/// The next bytes of a stream, or `None` at its end.
pub type NextChunk<'a> = Pin<Box<dyn Future<Output = io::Result<Option<Vec<u8>>>> + 'a>>;

/// A source of chunks.
pub trait Chunks {
    fn next_chunk(&mut self) -> NextChunk<'_>;
}

/// A stream of `len` bytes from a source.
pub struct ByteStream {
    len: u64,
    source: Box<dyn Chunks>,
    /// The first chunk, read ahead by `prime`.
    primed: Option<Option<Vec<u8>>>,
}

impl ByteStream {
    pub fn new(len: u64, source: Box<dyn Chunks>) -> ByteStream {
        ByteStream {
            len,
            source,
            primed: None,
        }
    }

    /// Read the first chunk now, before a response head promises the rest: a source that
    /// fails at once (a store that cannot be reached) is then an error answer, not a response
    /// broken off after its head.
    pub async fn prime(&mut self) -> io::Result<()> {
        if self.primed.is_none() {
            self.primed = Some(self.source.next_chunk().await?);
        }
        Ok(())
    }

    /// The number of bytes the stream promises.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The next chunk, or `None` at the end.
    pub async fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.primed.take() {
            Some(first) => Ok(first),
            None => self.source.next_chunk().await,
        }
    }
}

/// Opens the stream of a region (`offset`, `len`) of some content: a stored blob served as a
/// stream is opened only once the request's ranges are known (once per range).
pub type OpenRegion = Box<dyn Fn(u64, u64) -> ByteStream + Send>;
