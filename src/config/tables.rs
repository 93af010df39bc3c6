//! The tables besides `[server]`: `[storage]`, `[global]`, `[limits]`, `[gc]`, `[repository."<name>"]`
//! and `[auth]`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{de_duration, ser_duration};

/// `[storage]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Filesystem root; a relative path is taken from the config file's directory
    /// (from the working directory for the embedded default). Default `"./data"`.
    pub root: PathBuf,
    /// Maintenance mode: every write (POST, PUT, PATCH, DELETE) answers 405 `UNSUPPORTED`.
    /// Default `false`.
    pub read_only: bool,
    /// Whether manifests and blobs may be deleted through the API (tags go with their manifest);
    /// `false` answers 405 `UNSUPPORTED`. Default `true`.
    pub delete_enabled: bool,
    /// Threads that run the file operations a worker must not block on (all metadata calls and
    /// directory listings; under epoll also reads, writes and fsyncs). Each may have 64 jobs
    /// waiting; beyond that requests wait for room. Default `0` = 2 × `server.threads`, at least 4.
    pub blocking_threads: usize,
    /// Write large pushed blocks around the page cache (`O_DIRECT`, filesystem backend): no
    /// page-cache copy of each pushed byte, and the commit's fsync has little left to flush.
    /// Filesystems that refuse it fall back by themselves. Default `true`.
    pub direct_writes: bool,
    /// Where everything is stored: `"filesystem"` (under `root`, the default) or `"s3"` (one
    /// S3-compatible bucket, `[storage.s3]`; any number of wharf nodes may share it).
    pub backend: StorageBackend,
    /// `[storage.s3]`: the bucket, with `backend = "s3"`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3StorageConfig>,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            root: PathBuf::from("./data"),
            read_only: false,
            delete_enabled: true,
            blocking_threads: 0,
            direct_writes: true,
            backend: StorageBackend::Filesystem,
            s3: None,
        }
    }
}

/// `storage.backend`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    Filesystem,
    S3,
}

/// `[storage.s3]`: an S3-compatible bucket. Credentials come from `access_key_id` and
/// `secret_access_key_file` (+ `session_token_file`), or from `role_arn` and
/// `web_identity_token_file` through the store's STS, else from the environment
/// (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`; or `AWS_ROLE_ARN` and
/// `AWS_WEB_IDENTITY_TOKEN_FILE`). Files are read again when they change.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3StorageConfig {
    /// `http://host:port` or `https://host:port` of the object store's S3 API.
    pub endpoint: String,
    /// PEM CA certificates the `https` endpoint's certificate must chain to (a private CA).
    /// Default: the system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// Default `"us-east-1"`.
    #[serde(default = "default_region")]
    pub region: String,
    pub bucket: String,
    /// Prepended to every key (e.g. `"registry/"`). Default empty.
    #[serde(default)]
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`). Default `true` (the only style so far).
    #[serde(default = "default_true")]
    pub path_style: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id: Option<String>,
    /// A file holding the key id instead (for keys an agent renews: it changes with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_key_id_file: Option<PathBuf>,
    /// A file holding the secret key (surrounding whitespace ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_access_key_file: Option<PathBuf>,
    /// A file holding a session token for temporary credentials (with the key id and secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_file: Option<PathBuf>,
    /// The role to assume with `web_identity_token_file` (STS `AssumeRoleWithWebIdentity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
    /// A file holding an OIDC token (a Kubernetes service-account token, a CI job's ID token),
    /// read again at each renewal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_identity_token_file: Option<PathBuf>,
    /// The STS endpoint for `role_arn`. Default: `endpoint` (SeaweedFS, MinIO and Ceph serve STS
    /// on their S3 port).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sts_endpoint: Option<String>,
    /// Server-side encryption of every object wharf writes: `"AES256"` (SSE-S3, keys the store
    /// manages) or `"aws:kms"` (SSE-KMS). Default: none asked for (the bucket's default applies).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<String>,
    /// The KMS key for `"aws:kms"`: its id, ARN or alias. Default: the store's default KMS key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Blob GETs answer 307 to a presigned URL of the object store (clients fetch the bytes
    /// from it directly). Default `false`: bytes stream through wharf.
    #[serde(default)]
    pub redirect: bool,
    /// How long a redirect's presigned URL is valid. Default `"15m"`.
    #[serde(
        default = "default_redirect_ttl",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub redirect_ttl: Duration,
    /// The longest wait for the store to take or send the next bytes of a request: a store gone
    /// silent is then a 503 after this long, not a request held forever (a new connection waits
    /// at most 5 s, or this if shorter). Default `"30s"`.
    #[serde(
        default = "default_io_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub io_timeout: Duration,
}

impl S3StorageConfig {
    /// How long a new connection to the store (or its STS) may take: 5 s, or `io_timeout` if
    /// shorter.
    pub fn connect_timeout(&self) -> Duration {
        self.io_timeout.min(Duration::from_secs(5))
    }
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_true() -> bool {
    true
}

fn default_redirect_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

fn default_io_timeout() -> Duration {
    Duration::from_secs(30)
}

/// `[global]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalConfig {
    /// Largest manifest accepted; larger answers 413. Default `4194304` (4 MiB).
    pub max_manifest_size: u64,
    /// Largest blob accepted; larger answers 413 `SIZE_INVALID`. Default `0` = unlimited.
    pub max_blob_size: u64,
    /// `[global.access_policy]`: checked for every request. Default: absent (allow everything
    /// unless a repository policy says otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicyConfig>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            max_manifest_size: 4 * 1024 * 1024,
            max_blob_size: 0,
            access_policy: None,
        }
    }
}

/// `[global.access_policy]` or `[repository."<name>".access_policy]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicyConfig {
    /// `"allow"` or `"deny"`: the decision when no rule is true. Required.
    pub default: PolicyDefault,
    /// CEL expressions; the first that is true flips `default` (allow rules under `"deny"`,
    /// deny rules under `"allow"`). Default `[]`.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Read requests (GET, HEAD) per second per client IP (IPv6: per /64); over it answers 429
    /// `TOOMANYREQUESTS` with `Retry-After`. Default `0` = unlimited.
    pub read_rps: f64,
    /// Write requests (POST, PUT, PATCH, DELETE) per second per client IP (IPv6: per /64).
    /// Default `0` = unlimited.
    pub write_rps: f64,
    /// Requests a client may make in a burst above its rate (the token bucket's size). Default `0`
    /// = one second's worth of the rate (at least 1).
    pub burst: u32,
    /// Open connections across all workers. At the cap a new connection closes the longest-idle
    /// keep-alive connection (idle at least a second) of the worker that accepts it; with none, it
    /// is answered 503 and closed (TLS: closed). Default `16384`; `0` = unlimited.
    pub max_connections: usize,
    /// Open connections per client address (IPv4 address, IPv6 /64); the next is answered 503 and
    /// closed (TLS: closed). Default `256`; `0` = unlimited.
    pub max_connections_per_client: usize,
    /// Bytes of large response buffers (256 KiB TLS file blocks, 1 MiB copies of uncached plain
    /// file windows) that may wait on clients at once; past it files go out in 16 KiB TLS records,
    /// or by `sendfile` after a read on the blocking pool.
    /// Default `16777216` (16 MiB).
    pub response_buffer_budget: usize,
    /// Open upload sessions across the server; a POST past it answers 429 `TOOMANYREQUESTS` with
    /// `Retry-After`. Default `10000` (about 13 MiB of session state); `0` = unlimited.
    pub max_upload_sessions: usize,
    /// Open upload sessions per client address (IPv4 address, IPv6 /64); a POST past it answers
    /// 429 `TOOMANYREQUESTS`. Default `1000`; `0` = unlimited.
    pub max_upload_sessions_per_client: usize,
    /// An upload session no request has used for this long leaves memory: without data it is
    /// forgotten (`BLOB_UPLOAD_UNKNOWN`), with data it is reloaded from disk when used again.
    /// Independent of `gc`. Default `"900s"` (15 minutes).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub upload_idle_timeout: Duration,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            read_rps: 0.0,
            write_rps: 0.0,
            burst: 0,
            max_connections: 16384,
            max_connections_per_client: 256,
            response_buffer_budget: crate::net::budget::DEFAULT,
            max_upload_sessions: 10_000,
            max_upload_sessions_per_client: 1000,
            upload_idle_timeout: Duration::from_secs(15 * 60),
        }
    }
}

/// `[gc]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run garbage collection inside the server this often. Default `"0s"` = never (use `wharf gc`).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Data younger than this is never collected, so blobs uploaded for a manifest that is not pushed
    /// yet survive. Default `"1h"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub grace: Duration,
    /// Also delete manifests that no tag reaches (directly, through an index, or as a referrer of
    /// one that is kept). Default `false`.
    pub delete_untagged: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::ZERO,
            grace: Duration::from_secs(3600),
            delete_untagged: false,
        }
    }
}

/// The decision a policy makes when none of its rules is true.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDefault {
    Allow,
    Deny,
}

/// `[repository."<name>"]`: applies to `<name>` and every repository below it (`<name>/...`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// `[repository."<name>".access_policy]`: checked after the global policy for requests on
    /// this repository (the longest configured name wins). Default: absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicyConfig>,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a verified Basic credential is trusted without checking the password hash
    /// again (per worker thread). Default `"60s"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub credential_cache_ttl: Duration,
    /// Credentials remembered per worker thread: this many that verified, and as many that did
    /// not (kept apart, so wrong guesses never push out a user who verified). Default `1024`.
    pub credential_cache_size: usize,
    /// Password checks one client address (IPv6: one /64) may have queued or running at once;
    /// more are answered 429 before they queue, so no client can fill the verifier queue and lock
    /// the others out. Default `4`; `0` = unlimited.
    pub max_checks_per_client: u32,
    /// `[auth.identity.<id>]`: Basic-auth users; `<id>` is `identity.id` in policies.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub identity: BTreeMap<String, IdentityConfig>,
    /// `[auth.token]`: wharf's token endpoint (Docker registry token flow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<super::TokenConfig>,
    /// `[auth.oidc.<name>]`: OIDC issuers whose ID tokens the token endpoint exchanges.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub oidc: BTreeMap<String, super::OidcConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            credential_cache_ttl: Duration::from_secs(60),
            credential_cache_size: 1024,
            max_checks_per_client: 4,
            identity: BTreeMap::new(),
            token: None,
            oidc: BTreeMap::new(),
        }
    }
}

/// `[auth.identity.<id>]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The Basic-auth user name. Required.
    pub username: String,
    /// Argon2id hash in PHC form (`$argon2id$v=19$...`), as `wharf hash-password` prints. Required.
    pub password: String,
}
