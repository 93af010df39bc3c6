//! Block-sized buffers per worker thread: large bodies are received and hashed in them, files
//! are copied through them; an idle connection holds none.

/// Buffer used while streaming a large body: blocks of up to this size are hashed and written at once
/// (64 KiB writes made io_uring hand each one to a kernel worker; 0.5–1 MiB writes amortize that).
pub const BLOCK_BUF: usize = 1 << 20;
/// Block buffers kept per thread for reuse.
const BLOCK_POOL_MAX: usize = 8;

thread_local! {
    static BLOCK_POOL: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A block-sized buffer from this thread's pool (or a new one).
pub fn take_block() -> Vec<u8> {
    BLOCK_POOL
        .with(|p| p.borrow_mut().pop())
        .unwrap_or_else(|| Vec::with_capacity(BLOCK_BUF))
}

/// Return a block-sized buffer to this thread's pool (dropped if the pool is full or the buffer
/// is not block-sized).
pub fn give_block(buf: Vec<u8>) {
    BLOCK_POOL.with(|p| {
        let mut pool = p.borrow_mut();
        if pool.len() < BLOCK_POOL_MAX && buf.capacity() == BLOCK_BUF {
            pool.push(buf);
        }
    });
}

/// Body bytes handed out by `Body::next_block`: `buf[range]`, owned, so a write can keep it while
/// the next block is received. Dropping it returns a block-sized buffer to this thread's pool; its
/// holder never names buffers or the pool.
pub struct Block {
    buf: Vec<u8>,
    /// Where the bytes are; `range.end <= buf.len()`.
    range: std::ops::Range<usize>,
}

impl Block {
    /// The bytes `buf[range]`.
    pub fn new(buf: Vec<u8>, range: std::ops::Range<usize>) -> Block {
        assert!(
            range.start <= range.end && range.end <= buf.len(),
            "block range {range:?} outside a buffer of {} bytes",
            buf.len()
        );
        Block { buf, range }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[self.range.clone()]
    }

    pub fn len(&self) -> usize {
        self.range.len()
    }

    pub fn is_empty(&self) -> bool {
        self.range.is_empty()
    }

    /// The buffer and where the bytes are in it (the caller gives the buffer back, `give_block`).
    pub fn into_parts(mut self) -> (Vec<u8>, std::ops::Range<usize>) {
        (std::mem::take(&mut self.buf), self.range.clone())
    }

    /// Write the bytes at `offset` of `file` from the block's own memory (one positioned write,
    /// resumed until complete); the buffer then returns to the pool.
    pub async fn write_at(
        mut self,
        file: &super::file::DataFile,
        offset: u64,
    ) -> std::io::Result<()> {
        let buf = std::mem::take(&mut self.buf);
        let (res, buf) = file.write_all_at(buf, self.range.clone(), offset).await;
        self.buf = buf;
        res
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        give_block(std::mem::take(&mut self.buf));
    }
}
