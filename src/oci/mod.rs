//! OCI protocol types: validated names, references and digests, media types, manifest validation
//! and the OCI error codes. Everything here is pure (no I/O) so that it can be unit-tested and fuzzed.

pub mod digest;
pub mod error;
pub mod manifest;
pub mod name;

pub use digest::{Algorithm, Digest, Hasher};
pub use error::{ErrorKind, OciError, error_json};
pub use name::{Reference, RepoName, Tag};
