//! One upstream fetch per blob, read by every client that wants it while it arrives. The first
//! miss starts a flight: a task that streams the upstream's bytes into an unnamed spool file and
//! into the store's writer at once. Every request for the same digest (on any worker) joins the
//! flight and reads the spool as far as it is written, waiting for more; the last bytes are handed
//! out only once the store has verified the digest and committed the blob, so a client never
//! receives a complete body with wrong bytes: on a mismatch or an upstream break every reader's
//! stream fails and the connection is cut. Flights are bounded (`MAX_FLIGHTS`) and counted.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use crate::net::file::DataFile;
use crate::net::stream::{ByteStream, Chunks, NextChunk};
use crate::oci::OciError;

/// Blobs fetched at once, process-wide; more misses answer 503 until one ends.
pub const MAX_FLIGHTS: usize = 64;
/// Bytes read from the spool per chunk handed to a client.
const READ_CHUNK: usize = 256 * 1024;

static FLIGHTS: Mutex<Option<HashMap<String, Arc<Flight>>>> = Mutex::new(None);
/// Flights under way.
pub fn in_flight() -> usize {
    FLIGHTS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .map_or(0, HashMap::len)
}

/// A blob on its way from the upstream.
pub struct Flight {
    key: String,
    /// The spool: the bytes so far, at their offsets.
    spool: std::fs::File,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The upstream's length, once its answer came.
    len: Option<u64>,
    /// Bytes in the spool.
    written: u64,
    /// `Some` once over: committed to the store, or why not.
    outcome: Option<Result<(), OciError>>,
    wakers: Vec<Waker>,
}

/// What `join` found.
pub enum Joined {
    /// A flight for the digest is under way: read it.
    Reader(Arc<Flight>),
    /// None was: this one is new, and the caller runs it (`set_len`, `advance`, `finish`).
    Leader(Arc<Flight>),
    /// `MAX_FLIGHTS` are under way.
    Full,
}

/// Join the flight of `key` (upstream, repository and digest), or start one with `spool` (an empty file, made off the
/// worker; dropped if a flight is under way).
pub fn join(key: &str, spool: std::fs::File) -> Joined {
    let mut map = FLIGHTS.lock().unwrap_or_else(|p| p.into_inner());
    let map = map.get_or_insert_with(HashMap::new);
    if let Some(f) = map.get(key) {
        return Joined::Reader(Arc::clone(f));
    }
    if map.len() >= MAX_FLIGHTS {
        return Joined::Full;
    }
    let f = Arc::new(Flight {
        key: key.to_owned(),
        spool,
        state: Mutex::new(State::default()),
    });
    map.insert(key.to_owned(), Arc::clone(&f));
    Joined::Leader(f)
}

/// An unnamed file in `dir` for a spool (`O_TMPFILE`: nothing to clean up), made on the blocking
/// pool.
pub async fn spool_in(dir: std::path::PathBuf) -> io::Result<std::fs::File> {
    crate::blocking::run(move || {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_TMPFILE)
            .mode(0o600)
            .open(&dir)
    })
    .await?
}

impl Flight {
    fn update(&self, f: impl FnOnce(&mut State)) {
        let wakers = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut s);
            std::mem::take(&mut s.wakers)
        };
        for w in wakers {
            w.wake();
        }
    }

    /// A spool handle for this thread.
    pub fn spool(&self) -> io::Result<DataFile> {
        DataFile::new(self.spool.try_clone()?)
    }

    /// The upstream announced `len` bytes.
    pub fn set_len(&self, len: u64) {
        self.update(|s| s.len = Some(len));
    }

    /// `n` more bytes are in the spool.
    pub fn advance(&self, n: u64) {
        self.update(|s| s.written += n);
    }

    /// The flight is over (the blob committed, or why not); it leaves the table, so the next
    /// request finds the blob in the store or starts anew.
    pub fn finish(&self, outcome: Result<(), OciError>) {
        self.update(|s| s.outcome = Some(outcome));
        let mut map = FLIGHTS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(map) = map.as_mut()
            && map.get(&self.key).is_some_and(|f| std::ptr::eq(&**f, self))
        {
            map.remove(&self.key);
        }
    }

    /// Wait until `ready` says something about the state (`Some`), and return that.
    async fn wait<T>(&self, mut ready: impl FnMut(&State) -> Option<T>) -> T {
        std::future::poll_fn(|cx| {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            match ready(&s) {
                Some(v) => Poll::Ready(v),
                None => {
                    s.wakers.push(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await
    }

    /// The blob's length once the upstream answered, or why the flight failed first.
    pub async fn blob_len(&self) -> Result<u64, OciError> {
        self.wait(|s| match (&s.len, &s.outcome) {
            (Some(n), _) => Some(Ok(*n)),
            (None, Some(Err(e))) => Some(Err(e.clone())),
            (None, Some(Ok(()))) => Some(Err(OciError::new(
                crate::oci::ErrorKind::Internal,
                "an upstream fetch ended without a length",
            ))),
            (None, None) => None,
        })
        .await
    }

    /// The whole blob as a stream of `len` bytes read from the spool as it grows; its last bytes
    /// come only after the blob is committed, and a failed flight fails the stream.
    pub fn reader(self: &Arc<Flight>, len: u64) -> io::Result<ByteStream> {
        Ok(ByteStream::new(
            len,
            Box::new(Reader {
                flight: Arc::clone(self),
                spool: self.spool()?,
                pos: 0,
                len,
            }),
        ))
    }
}

struct Reader {
    flight: Arc<Flight>,
    spool: DataFile,
    pos: u64,
    len: u64,
}

impl Chunks for Reader {
    fn next_chunk(&mut self) -> NextChunk<'_> {
        Box::pin(async move {
            if self.pos >= self.len {
                return Ok(None);
            }
            // Bytes before the last one may go as soon as they are in the spool; the last one
            // only once the blob is verified and committed.
            let (pos, len) = (self.pos, self.len);
            let upto = self
                .flight
                .wait(|s| match &s.outcome {
                    Some(Err(e)) => Some(Err(e.clone())),
                    Some(Ok(())) => Some(Ok(len)),
                    None => {
                        let ready = s.written.min(len - 1);
                        (ready > pos).then_some(Ok(ready))
                    }
                })
                .await
                .map_err(|e| {
                    io::Error::other(format!("the upstream fetch failed: {}", e.message))
                })?;
            let want = (upto - pos).min(READ_CHUNK as u64) as usize;
            let (res, buf) = self
                .spool
                .read_at(Vec::with_capacity(want), pos, want)
                .await;
            let n = res?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the spool is shorter than the flight wrote",
                ));
            }
            self.pos += n as u64;
            Ok(Some(buf))
        })
    }
}
