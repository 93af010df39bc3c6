//! Beneath HTTP: the transport (`transport`: plain TCP or the rustls stream of `tls`), cancel-safe
//! timed reads (`ConnError`, `timed_read`), the per-thread pool of block buffers and owned blocks
//! (`pool`), sending file regions to a socket (`file`), byte streams from elsewhere (`stream`), the
//! process-wide budget for response buffers that wait on slow readers (`budget`), and counts per
//! client address (`per_client`).
//! Knows neither HTTP nor OCI; `tls/` (certificates, verification, identity) sits beside it.

pub mod budget;
pub mod file;
pub mod per_client;
pub mod pool;
pub mod stream;
pub mod tls;
pub mod transport;

use std::io;
use std::time::Duration;

use monoio::buf::IoBufMut;
use monoio::io::{CancelableAsyncReadRent, Canceller};
use monoio::net::TcpStream;

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

/// The error of a write that waited longer than `send_timeout` for the client to read.
pub fn stalled() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "client stopped reading")
}

/// Read into the spare capacity of `buf`, waiting at most `wait`. On timeout the read is
/// cancelled and then awaited, so the buffer (and anything that arrived meanwhile) always comes back.
pub async fn timed_read(
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

/// Let the worker's other tasks run before this one goes on. A socket that always has data makes
/// epoll-driver reads complete without suspending; a long body would then starve every other
/// connection on the worker.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return std::task::Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
    .await
}
