//! A TLS connection over a monoio `TcpStream`: rustls's server connection (clients of wharf) or
//! client connection (the services wharf calls) driven with monoio's owned-buffer I/O. Reads go
//! through `net::timed_read` (cancel-then-await), so a timeout never loses a buffer or leaves the
//! TLS state half-updated; writes leave in one syscall per response (or per 256 KiB of a file)
//! instead of one per 16 KiB record.

use std::io::{self, BufRead, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::AsyncWriteRentExt;
use monoio::net::TcpStream;
use rustls::{
    ClientConfig, ClientConnection, ConnectionCommon, HandshakeKind, ServerConfig,
    ServerConnection, SideData,
};
use rustls_pki_types::ServerName;

use super::{ConnError, stalled, timed_read};

/// Ciphertext read per syscall: a few full records.
const RX_BUF: usize = 64 * 1024;
/// Plaintext of a file encrypted per write while `net::budget` allows it.
const FILE_BLOCK: usize = 256 * 1024;
/// Plaintext per write when the budget is spent: one TLS record, so a client that stops
/// reading pins about 17 KiB of ciphertext and nothing else.
const SMALL_BLOCK: usize = 16 * 1024;
/// Ciphertext buffer kept between writes (larger ones are freed after their write).
const TX_KEEP: usize = 64 * 1024;
/// rustls's outgoing buffer: one block and its record overhead, with room to spare.
const BUFFER_LIMIT: usize = FILE_BLOCK + 64 * 1024;

/// rustls's connection of either side (each keeps its own concrete type here, so a server
/// connection carries nothing of the client side).
pub trait Session: std::ops::DerefMut<Target = ConnectionCommon<Self::Side>> {
    type Side: SideData;
    const SERVER: bool;
}

impl Session for ServerConnection {
    type Side = rustls::server::ServerConnectionData;
    const SERVER: bool = true;
}

impl Session for ClientConnection {
    type Side = rustls::client::ClientConnectionData;
    const SERVER: bool = false;
}

/// An established TLS connection: the server side (clients of wharf) by default, or the client
/// side (`TlsStream<ClientConnection>`, towards the services wharf calls).
pub struct TlsStream<C: Session = ServerConnection> {
    tcp: TcpStream,
    session: C,
    /// Received ciphertext; `rx[rx_pos..]` is not yet handed to rustls.
    rx: Vec<u8>,
    rx_pos: usize,
    /// Encrypted output waiting to be written.
    tx: Vec<u8>,
    /// The peer closed its side of the TCP connection.
    eof: bool,
}

/// Why a handshake failed (the peer sees a TLS alert where one applies).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("{0}")]
    Tls(#[from] rustls::Error),
    #[error("{0}")]
    Conn(#[from] ConnError),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("the client spoke plain HTTP to the TLS listener (answered 400)")]
    PlainHttp,
}

/// What a client that forgot `https://` gets back, in the protocol it understands.
/// An OCI error body (Docker prints its message, where plain text shows as a JSON syntax error).
/// `net` sits below `oci`, so the JSON is written out here; a test below parses it.
const PLAIN_HTTP_ANSWER: &[u8] = b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: 208\r\nConnection: close\r\n\r\n{\"errors\":[{\"code\":\"UNSUPPORTED\",\"message\":\"this port speaks TLS: use https:// to reach it (Docker: remove it from insecure-registries and put its CA in /etc/docker/certs.d/HOST:PORT/ca.crt)\",\"detail\":null}]}";

impl TlsStream {
    /// Run the server handshake, bounded by `wait` in total. A failed handshake hands the socket
    /// back, so the caller counts the failure before the peer sees the close.
    pub async fn accept(
        tcp: TcpStream,
        config: Arc<ServerConfig>,
        wait: Duration,
    ) -> Result<TlsStream, (HandshakeError, TcpStream)> {
        let session = match ServerConnection::new(config) {
            Ok(s) => s,
            Err(e) => return Err((e.into(), tcp)),
        };
        // Boxed: the handshake's state lives on the heap only while it runs, not in the future of
        // every connection task (plain ones included) for the connection's whole life.
        Box::pin(TlsStream::handshake(tcp, session, wait)).await
    }
}

impl TlsStream<ClientConnection> {
    /// Run the client handshake with `server` (its certificate must name it), bounded by `wait`.
    pub async fn connect(
        tcp: TcpStream,
        config: Arc<ClientConfig>,
        server: ServerName<'static>,
        wait: Duration,
    ) -> Result<TlsStream<ClientConnection>, HandshakeError> {
        let session = ClientConnection::new(config, server)?;
        Box::pin(TlsStream::handshake(tcp, session, wait))
            .await
            .map_err(|(e, _)| e)
    }
}

impl<C: Session> TlsStream<C> {
    async fn handshake(
        tcp: TcpStream,
        mut session: C,
        wait: Duration,
    ) -> Result<TlsStream<C>, (HandshakeError, TcpStream)> {
        // `write_all` hands rustls at most one block before flushing it out, so this bound holds.
        session.set_buffer_limit(Some(BUFFER_LIMIT));
        let mut s = TlsStream {
            tcp,
            session,
            rx: Vec::with_capacity(RX_BUF),
            rx_pos: 0,
            tx: Vec::new(),
            eof: false,
        };
        match s.shake(wait).await {
            Ok(()) => Ok(s),
            Err(e) => Err((e, s.tcp)),
        }
    }

    async fn shake(&mut self, wait: Duration) -> Result<(), HandshakeError> {
        let s = self;
        let deadline = Instant::now() + wait;
        while s.session.is_handshaking() {
            if s.session.wants_write() {
                s.flush(wait).await?;
                continue;
            }
            if s.eof {
                return Err(ConnError::Eof.into());
            }
            let first_read = s.rx.is_empty();
            s.receive(deadline).await?;
            // A TLS record starts with 0x16; an HTTP request line with an upper-case method.
            if C::SERVER && first_read && s.rx.first().is_some_and(u8::is_ascii_uppercase) {
                // Best effort: the connection closes either way.
                let _ = monoio::time::timeout(wait, s.tcp.write_all(PLAIN_HTTP_ANSWER)).await;
                crate::sys::shutdown_write(s.tcp.as_raw_fd());
                return Err(HandshakeError::PlainHttp);
            }
            if let Err(e) = s.session.process_new_packets() {
                // Tell the peer why (e.g. bad_certificate) before closing.
                let _ = s.flush(Duration::from_secs(1)).await;
                return Err(e.into());
            }
        }
        s.flush(wait).await?;
        Ok(())
    }

    /// The DER of the verified client certificate (leaf), if the client presented one.
    pub fn client_leaf(&self) -> Option<&[u8]> {
        self.session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.as_ref())
    }

    /// The client's certificate chain as presented (leaf first), if it presented one.
    pub fn client_chain(&self) -> Option<&[rustls_pki_types::CertificateDer<'static>]> {
        self.session.peer_certificates()
    }

    /// Whether the handshake resumed an earlier session.
    pub fn resumed(&self) -> bool {
        self.session.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// The negotiated protocol version, for logs.
    pub fn version(&self) -> &'static str {
        match self.session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.tcp.as_raw_fd()
    }

    /// Free the ciphertext buffers if nothing is waiting in them (an idle keep-alive connection);
    /// the next read allocates again.
    pub fn park(&mut self) {
        if self.rx_pos == self.rx.len() {
            self.rx = Vec::new();
            self.rx_pos = 0;
        }
        if self.tx.is_empty() {
            self.tx = Vec::new();
        }
    }

    /// Wait until the socket has input (or the peer closed), holding no buffer meanwhile.
    pub async fn readable(&self) -> io::Result<()> {
        if self.rx_pos < self.rx.len() {
            return Ok(());
        }
        self.tcp.readable(false).await
    }

    /// Get more ciphertext into rustls: from what was read earlier, else from the socket.
    async fn receive(&mut self, deadline: Instant) -> Result<(), ConnError> {
        if self.rx_pos == self.rx.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConnError::Timeout);
            }
            let mut rx = std::mem::take(&mut self.rx);
            rx.clear();
            if rx.capacity() == 0 {
                rx.reserve_exact(RX_BUF);
            }
            self.rx_pos = 0;
            let (res, rx) = timed_read(&mut self.tcp, rx, left).await;
            self.rx = rx;
            match res {
                Ok(_) => {}
                Err(ConnError::Eof) => {
                    self.eof = true;
                    // An empty read tells rustls the transport ended.
                    self.session.read_tls(&mut io::empty())?;
                    return Ok(());
                }
                Err(e) => return Err(e),
            }
        }
        let n = self.session.read_tls(&mut &self.rx[self.rx_pos..])?;
        self.rx_pos += n;
        Ok(())
    }

    /// Decrypt into the spare capacity of `dst` (its length grows); the number of bytes added.
    /// Waits at most `wait` in total for the peer. `Eof` when the peer closed (with or without
    /// close_notify).
    pub async fn read_into(
        &mut self,
        dst: &mut Vec<u8>,
        wait: Duration,
    ) -> Result<usize, ConnError> {
        let deadline = Instant::now() + wait;
        loop {
            match self.session.reader().fill_buf() {
                Ok([]) => return Err(ConnError::Eof),
                Ok(plain) => {
                    let n = plain.len().min(dst.capacity() - dst.len());
                    dst.extend_from_slice(&plain[..n]);
                    self.session.reader().consume(n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Err(ConnError::Eof),
                Err(e) => return Err(e.into()),
            }
            if self.eof {
                return Err(ConnError::Eof);
            }
            self.receive(deadline).await?;
            if let Err(e) = self.session.process_new_packets() {
                let _ = self.flush(Duration::from_secs(1)).await;
                return Err(io::Error::new(io::ErrorKind::InvalidData, e).into());
            }
            // Post-handshake messages (key updates, alerts) may need an answer.
            if self.session.wants_write() {
                self.flush(wait).await?;
            }
        }
    }

    /// Encrypt `data` and send it, a block at a time (one socket write for a small response).
    pub async fn write_all(&mut self, data: &[u8], stall: Duration) -> io::Result<()> {
        for block in data.chunks(FILE_BLOCK) {
            self.session.writer().write_all(block)?;
            self.flush(stall).await?;
        }
        Ok(())
    }

    /// Send what rustls has queued; `stall` bounds the wait for a client that stopped reading.
    async fn flush(&mut self, stall: Duration) -> io::Result<()> {
        self.flush_keeping(stall, TX_KEEP).await
    }

    /// `flush`, keeping the ciphertext buffer for the next write if its capacity is at most
    /// `keep` (a file send keeps its block-sized one until the file is sent).
    async fn flush_keeping(&mut self, stall: Duration, keep: usize) -> io::Result<()> {
        while self.session.wants_write() {
            self.session.write_tls(&mut self.tx)?;
        }
        if self.tx.is_empty() {
            return Ok(());
        }
        let tx = std::mem::take(&mut self.tx);
        match monoio::time::timeout(stall, self.tcp.write_all(tx)).await {
            Ok((res, mut tx)) => {
                tx.clear();
                // Keep a small buffer for the next response; let a file-sized one go.
                if tx.capacity() <= keep {
                    self.tx = tx;
                }
                res.map(|_| ())
            }
            Err(_) => Err(stalled()),
        }
    }

    /// Hot path for downloads over TLS: file → buffer → rustls → socket, 256 KiB at a time while
    /// `net::budget` holds the two buffers (plaintext and ciphertext), else one 16 KiB record at
    /// a time with the plaintext freed before the write waits.
    pub async fn send_file(
        &mut self,
        file: std::fs::File,
        offset: u64,
        len: u64,
        stall: Duration,
    ) -> io::Result<()> {
        let file = super::file::DataFile::new(file)?;
        let (mut pos, end) = (offset, offset + len);
        let large = len > SMALL_BLOCK as u64;
        let reserved = large
            .then(|| super::budget::reserve(2 * FILE_BLOCK + 1024))
            .flatten();
        let block = if reserved.is_some() {
            FILE_BLOCK
        } else {
            SMALL_BLOCK
        };
        let mut buf = Vec::new();
        // With the budget held, one ciphertext buffer of a block and its record overhead serves
        // the whole file (growing a fresh one for every block cost a tenth of the server's CPU
        // in page faults, zeroing and copies).
        let keep = if reserved.is_some() {
            self.tx.reserve(FILE_BLOCK + 1024);
            self.tx.capacity()
        } else {
            TX_KEEP
        };
        let sent = async {
            while pos < end {
                let want = (end - pos).min(block as u64) as usize;
                if buf.capacity() < want {
                    buf = Vec::with_capacity(want);
                }
                let (res, back) = super::file::read_block(&file, buf, pos, want).await;
                buf = back;
                let n = res?;
                self.session.writer().write_all(&buf[..n])?;
                if reserved.is_none() {
                    // Only ciphertext waits on the client.
                    buf = Vec::new();
                }
                self.flush_keeping(stall, keep).await?;
                pos += n as u64;
            }
            Ok(())
        }
        .await;
        if self.tx.capacity() > TX_KEEP {
            self.tx = Vec::new();
        }
        drop(reserved);
        sent
    }

    /// Send close_notify (best effort) before the TCP write side is shut.
    pub async fn close_notify(&mut self, stall: Duration) {
        self.session.send_close_notify();
        let _ = self.flush(stall).await;
    }
}

#[cfg(test)]
mod tests {
    /// The hand-written answer's length and JSON are right (Docker prints its message).
    #[test]
    fn the_plain_http_answer_is_an_oci_error_of_its_stated_length() {
        let text = std::str::from_utf8(super::PLAIN_HTTP_ANSWER).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains(&format!("Content-Length: {}\r\n", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["errors"][0]["code"], "UNSUPPORTED");
        assert!(
            v["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("https://")
        );
    }
}
