//! The byte stream under HTTP: plain TCP or TLS, with the operations a connection needs from either
//! (timed reads into a growing buffer, bounded writes, sending a file region, waiting for input
//! without a buffer, closing politely).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;

use super::file::{SendPath, count_send, send_region};
use super::tls::TlsStream;
use super::{ConnError, stalled, timed_read};

/// Plain TCP or TLS.
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

    /// The TLS client's certificate chain (leaf first), if it presented one.
    pub fn client_chain(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        match self {
            Transport::Tls(t) => t.client_chain(),
            Transport::Plain(_) => None,
        }
    }

    /// Wait until the socket has input (or the peer closed), holding no buffer meanwhile.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.readable(false).await,
            Transport::Tls(t) => t.readable().await,
        }
    }

    /// Read more input after `buf.len()` (plaintext over TLS), waiting at most `wait`. Cancel-safe:
    /// the buffer and what arrived are never lost to a timeout.
    pub async fn read_into(
        &mut self,
        buf: &mut Vec<u8>,
        wait: Duration,
    ) -> Result<usize, ConnError> {
        match self {
            Transport::Plain(stream) => {
                let (res, back) = timed_read(stream, std::mem::take(buf), wait).await;
                *buf = back;
                res
            }
            Transport::Tls(tls) => tls.read_into(buf, wait).await,
        }
    }

    /// Write all of `data`, failing if the peer does not read for `stall`.
    pub async fn write_all(&mut self, data: Vec<u8>, stall: Duration) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => {
                match monoio::time::timeout(stall, stream.write_all(data)).await {
                    Ok((res, _)) => res.map(|_| ()),
                    Err(_) => Err(stalled()),
                }
            }
            Transport::Tls(tls) => tls.write_all(&data, stall).await,
        }
    }

    /// Send `len` bytes of `file` from `offset`, failing if the peer does not read for `stall`.
    pub async fn send_file(
        &mut self,
        file: std::fs::File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> io::Result<()> {
        match self {
            Transport::Plain(stream) => {
                count_send(SendPath::Sendfile);
                send_region(stream, file, offset, len, stall).await
            }
            Transport::Tls(tls) => {
                count_send(SendPath::Tls);
                tls.send_file(file, offset, len, stall).await
            }
        }
    }

    /// Free what the stream holds while idle (TLS buffers).
    pub fn park(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.park();
        }
    }

    /// Stop sending: TLS `close_notify`, then shut the write side (the peer reads EOF).
    pub async fn shutdown_write(&mut self) {
        if let Transport::Tls(tls) = self {
            tls.close_notify(Duration::from_secs(2)).await;
        }
        crate::sys::shutdown_write(self.raw_fd());
    }
}
