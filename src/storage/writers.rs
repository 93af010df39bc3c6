//! The writers that cross the storage interface: each wraps its backend's own (the filesystem's
//! file writer and session lease, the object store's part uploader and session lease).

use std::io;

use super::{fs, s3};
use crate::net::pool::Block;

/// A blob being written (a monolithic push, or one request's chunk of an upload session): hashed
/// as it arrives, stored by the backend that made it.
pub struct BlobWriter(pub(super) Writer);

pub(super) enum Writer {
    File(fs::FileWriter),
    Object(s3::BlobWriter),
}

impl BlobWriter {
    pub(super) fn file(w: fs::FileWriter) -> BlobWriter {
        BlobWriter(Writer::File(w))
    }

    pub(super) fn object(w: s3::BlobWriter) -> BlobWriter {
        BlobWriter(Writer::Object(w))
    }

    /// The filesystem writer inside (each backend only ever gets back its own writers).
    pub(super) fn into_file(self) -> fs::FileWriter {
        match self.0 {
            Writer::File(w) => w,
            Writer::Object(_) => unreachable!("an object-store writer given to the filesystem"),
        }
    }

    pub(super) fn into_object(self) -> s3::BlobWriter {
        match self.0 {
            Writer::Object(w) => w,
            Writer::File(_) => unreachable!("a file writer given to the object store"),
        }
    }

    /// Bytes written so far.
    pub fn offset(&self) -> u64 {
        match &self.0 {
            Writer::File(w) => w.offset(),
            Writer::Object(w) => w.offset(),
        }
    }

    /// Hot path: hash `block` and write it.
    pub async fn append(&mut self, block: Block) -> io::Result<()> {
        match &mut self.0 {
            Writer::File(w) => w.append(block).await,
            Writer::Object(w) => w.append(block).await,
        }
    }

    /// Hot path for large bodies: hand `block` on and return while it is hashed and written;
    /// `settle` must follow the last block.
    pub async fn append_pipelined(&mut self, block: Block) -> io::Result<()> {
        match &mut self.0 {
            Writer::File(w) => w.append_pipelined(block).await,
            Writer::Object(w) => w.append_pipelined(block).await,
        }
    }

    /// Wait for the writes in flight.
    pub async fn settle(&mut self) -> io::Result<()> {
        match &mut self.0 {
            Writer::File(w) => w.settle().await,
            Writer::Object(w) => w.settle().await,
        }
    }
}

/// Exclusive use of an upload session for one request.
pub struct UploadLease(pub(super) Lease);

pub(super) enum Lease {
    File(fs::UploadLease),
    Object(s3::UploadLease),
}

impl UploadLease {
    /// Where this request's chunk goes.
    pub fn writer(&mut self) -> &mut BlobWriter {
        match &mut self.0 {
            Lease::File(l) => l.writer(),
            Lease::Object(l) => l.writer(),
        }
    }
}
