//! One bucket of an S3-compatible object store: the few operations the backend needs, each a
//! signed request over `crate::client`. Conditional writes (`If-None-Match: *`, `If-Match`) make
//! "write once" and compare-and-swap possible without locks; a failed condition is
//! `S3Error::Precondition`, never an overwrite. Requests are presigned URLs (the query carries
//! the signature, the payload is unsigned); the condition headers travel unsigned beside them
//! (SeaweedFS 4.48 refuses a presigned request whose signature covers `If-None-Match`).

mod encryption;
mod multipart;
mod retry;

pub use encryption::Encryption;
pub use retry::retries;

use std::io;
use std::time::Duration;

use rusty_s3::{Bucket, Credentials, S3Action, UrlStyle};

use std::sync::Arc;

use super::credentials::Keys;
use crate::client::{self, Endpoint, Payload, Request, Response};

pub use super::parse::{
    Pending, UNKNOWN_TIME, parse_error, parse_http_date, parse_listing, parse_multipart_uploads,
    parse_parts, parse_time,
};

/// How long a signed request stays valid (it is sent at once).
const SIGNED_FOR: Duration = Duration::from_secs(300);
/// Largest error or listing body read.
const MAX_SMALL_BODY: usize = 8 << 20;

/// Where the bucket is and how to reach it.
#[derive(Clone, Debug)]
pub struct S3Config {
    /// `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// `endpoint/bucket/key`; `false`: `bucket.endpoint/key` (virtual-hosted).
    pub path_style: bool,
    /// PEM roots that the certificate of an `https` endpoint must chain to (`None`: the system's).
    pub ca_bundle: Option<std::path::PathBuf>,
    pub region: String,
    pub bucket: String,
    /// Prepended to every key (`registry/`); may be empty.
    pub prefix: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// With temporary keys.
    pub session_token: Option<String>,
    /// How the store encrypts what wharf writes.
    pub encryption: Encryption,
    pub connect_timeout: Duration,
    pub io_timeout: Duration,
}

/// What went wrong with a request.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// `If-None-Match` / `If-Match` did not hold: nothing was changed.
    #[error("precondition failed")]
    Precondition,
    /// The store answered with an error (status, S3 error code, message).
    #[error("object store answered {status} {code}: {message}")]
    Status {
        status: u16,
        code: String,
        message: String,
    },
    /// The store could not be reached or the exchange broke.
    #[error("object store unreachable: {0}")]
    Io(#[from] io::Error),
}

/// Why a conditional write was refused (`put_if`).
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The condition did not hold.
    First,
    /// The condition did not hold for the request sent a second time: perhaps because the
    /// first attempt, whose answer was lost, was applied.
    Resent,
}

/// A write's condition.
#[derive(Clone, Debug)]
pub enum Cond<'a> {
    /// Unconditional.
    None,
    /// Only if no object has the key (write once).
    Absent,
    /// Only if the object's ETag is this one (compare-and-swap).
    Etag(&'a str),
}

/// An object's size and ETag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Meta {
    pub len: u64,
    pub etag: String,
    /// When it was last written, in seconds since the epoch by the store's clock (0: unknown).
    pub modified: u64,
}

/// The operations counted in `wharf_objectstore_requests_total{op}` (`multipart`: creating,
/// completing or aborting a multipart upload; `part`: uploading one part).
pub const OPS: [&str; 7] = ["put", "get", "head", "delete", "list", "multipart", "part"];

/// Per operation: requests, failures (no answer, or an answer other than success, not-found or a
/// failed precondition), and microseconds spent until the response head.
static COUNTS: [[std::sync::atomic::AtomicU64; 3]; OPS.len()] =
    [const { [const { std::sync::atomic::AtomicU64::new(0) }; 3] }; OPS.len()];

/// Per operation: requests by time until the response head, per `histogram::BOUNDS` bound (not
/// cumulative; the last is +Inf).
static DURATIONS: [[std::sync::atomic::AtomicU64; crate::histogram::BUCKETS]; OPS.len()] =
    [const { [const { std::sync::atomic::AtomicU64::new(0) }; crate::histogram::BUCKETS] };
        OPS.len()];

/// Requests, failures and seconds per operation, in `OPS` order.
pub struct OpCounts {
    pub requests: u64,
    pub failed: u64,
    pub seconds: f64,
    /// Requests per `histogram::BOUNDS` bound (not cumulative; the last is +Inf).
    pub buckets: [u64; crate::histogram::BUCKETS],
}

pub fn op_counts() -> [OpCounts; OPS.len()] {
    use std::sync::atomic::Ordering::Relaxed;
    std::array::from_fn(|op| {
        let c = &COUNTS[op];
        OpCounts {
            requests: c[0].load(Relaxed),
            failed: c[1].load(Relaxed),
            seconds: c[2].load(Relaxed) as f64 / 1e6,
            buckets: DURATIONS[op].each_ref().map(|b| b.load(Relaxed)),
        }
    })
}

fn count(op: usize, started: std::time::Instant, failed: bool) {
    use std::sync::atomic::Ordering::Relaxed;
    let took = started.elapsed();
    let c = &COUNTS[op];
    c[0].fetch_add(1, Relaxed);
    c[1].fetch_add(u64::from(failed), Relaxed);
    c[2].fetch_add(took.as_micros() as u64, Relaxed);
    DURATIONS[op][crate::histogram::bucket(took)].fetch_add(1, Relaxed);
}

/// One listed object.
#[derive(Clone, Debug)]
pub struct Listed {
    /// The key without the configured prefix.
    pub key: String,
    pub len: u64,
    /// When it was last written, in seconds since the epoch (0 if the store did not say).
    pub modified: u64,
    pub etag: String,
}

/// The bucket, ready to use from any worker.
pub struct ObjectStore {
    bucket: Bucket,
    keys: Arc<Keys>,
    endpoint: Endpoint,
    prefix: String,
    encryption: Encryption,
}

impl ObjectStore {
    /// Check the configuration and resolve the endpoint (blocking: startup only). Errors name
    /// the `storage.s3` key at fault.
    pub fn new(cfg: &S3Config) -> Result<ObjectStore, String> {
        let url: url::Url = cfg
            .endpoint
            .parse()
            .map_err(|e| format!("storage.s3.endpoint {:?}: {e}", cfg.endpoint))?;
        let https = match url.scheme() {
            "http" => false,
            "https" => true,
            _ => {
                return Err(format!(
                    "storage.s3.endpoint {:?}: must be an http:// or https:// URL",
                    cfg.endpoint
                ));
            }
        };
        url.host_str()
            .ok_or_else(|| format!("storage.s3.endpoint {:?}: no host", cfg.endpoint))?;
        let style = if cfg.path_style {
            UrlStyle::Path
        } else {
            UrlStyle::VirtualHost
        };
        let bucket = Bucket::new(url.clone(), style, cfg.bucket.clone(), cfg.region.clone())
            .map_err(|e| match style {
                UrlStyle::Path => format!("storage.s3.bucket {:?}: {e:?}", cfg.bucket),
                UrlStyle::VirtualHost => format!(
                    "storage.s3.path_style = false: the bucket's host name {:?}.{} is not one \
                     ({e:?}); virtual-hosted buckets need a DNS name in storage.s3.endpoint \
                     and a bucket name valid in a host name, else set path_style = true",
                    cfg.bucket,
                    url.host_str().unwrap_or_default()
                ),
            })?;
        // Requests go where the bucket's URL points: the endpoint's host, or with virtual-hosted
        // buckets `<bucket>.<host>` (resolved, sent as `Host` and verified in TLS as such).
        let tls = if https {
            Some(
                crate::tls::client_config(cfg.ca_bundle.as_deref(), "storage.s3.ca_bundle")
                    .map_err(|e| e.to_string())?,
            )
        } else if cfg.ca_bundle.is_some() {
            return Err("storage.s3.ca_bundle: only used with an https:// endpoint".into());
        } else {
            None
        };
        let mut endpoint =
            client::endpoint(bucket.base_url(), cfg.io_timeout, tls, client::resolve_now)
                .map_err(|e| format!("storage.s3.endpoint {:?}: {e}", cfg.endpoint))?;
        endpoint.connect_timeout = cfg.connect_timeout;
        Ok(ObjectStore {
            bucket,
            keys: Arc::new(Keys::new(match &cfg.session_token {
                Some(t) => {
                    Credentials::new_with_token(&cfg.access_key_id, &cfg.secret_access_key, t)
                }
                None => Credentials::new(&cfg.access_key_id, &cfg.secret_access_key),
            })),
            endpoint,
            prefix: cfg.prefix.clone(),
            encryption: cfg.encryption.clone(),
        })
    }

    /// How the store encrypts what wharf writes.
    pub fn encryption(&self) -> &Encryption {
        &self.encryption
    }

    /// The keys requests are signed with (renewed by `credentials`).
    pub fn keys(&self) -> &Arc<Keys> {
        &self.keys
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Send a signed request for operation `OPS[op]`, counting it (an answer other than
    /// success, 404 or 412 counts as failed); sent again after a throttling answer (`retry`).
    async fn send(
        &self,
        op: usize,
        method: &str,
        url: url::Url,
        headers: Vec<(&str, String)>,
        body: Payload<'_>,
    ) -> Result<Response, S3Error> {
        let mut tries = 0;
        loop {
            let started = std::time::Instant::now();
            // Boxed: a request to the store is one allocation beside the network round trip,
            // and the exchange (TLS included) stays out of the future of every connection task.
            let sent = Box::pin(self.exchange(method, &url, headers.clone(), body.clone())).await;
            let failed = match &sent {
                Ok(r) => !matches!(r.status, 200..=299 | 404 | 412),
                Err(_) => true,
            };
            count(op, started, failed);
            let mut resp = sent?;
            match retry::again(method, resp.status, tries) {
                Some(wait) => {
                    drain(resp).await;
                    monoio::time::sleep(wait).await;
                    tries += 1;
                }
                None => {
                    resp.resent |= tries > 0;
                    return Ok(resp);
                }
            }
        }
    }

    async fn exchange(
        &self,
        method: &str,
        url: &url::Url,
        headers: Vec<(&str, String)>,
        body: Payload<'_>,
    ) -> Result<Response, S3Error> {
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let req = Request {
            method,
            target: &target,
            headers,
            body,
        };
        Ok(client::send(&self.endpoint, &req).await?)
    }

    /// The store's clock, in seconds since the epoch (the `Date` of a bucket probe): the
    /// collector compares the store's own timestamps with it, never with a node's clock.
    pub async fn now(&self) -> Result<u64, S3Error> {
        let url = self
            .bucket
            .head_bucket(Some(&self.keys.current()))
            .sign(SIGNED_FOR);
        let resp = self.send(2, "HEAD", url, Vec::new(), Payload::NONE).await?;
        resp.header("Date")
            .and_then(parse_http_date)
            .ok_or_else(|| S3Error::Status {
                status: resp.status,
                code: String::new(),
                message: "the object store sent no Date".into(),
            })
    }

    /// Whether the bucket answers (`HEAD` of the bucket).
    pub async fn probe(&self) -> Result<(), S3Error> {
        let url = self
            .bucket
            .head_bucket(Some(&self.keys.current()))
            .sign(SIGNED_FOR);
        let resp = self.send(2, "HEAD", url, Vec::new(), Payload::NONE).await?;
        match resp.status {
            200 => Ok(()),
            status => Err(S3Error::Status {
                status,
                code: String::new(),
                message: if status == 404 {
                    format!("no bucket {:?}", self.bucket.name())
                } else {
                    "the bucket cannot be reached with these credentials".into()
                },
            }),
        }
    }

    /// Write `body` under `key` if `cond` holds; the new ETag.
    pub async fn put(&self, key: &str, body: &[u8], cond: Cond<'_>) -> Result<String, S3Error> {
        match self.put_if(key, body, cond).await? {
            Ok(etag) => Ok(etag),
            Err(_) => Err(S3Error::Precondition),
        }
    }

    /// `put`, telling whose write a refusal may be about: `Refused::Resent` when the store
    /// refused the request sent a second time (`client::send` sends it again when a pooled
    /// connection answers nothing), so the first attempt may have been applied and the
    /// condition failed on that very write.
    pub async fn put_if(
        &self,
        key: &str,
        body: &[u8],
        cond: Cond<'_>,
    ) -> Result<Result<String, Refused>, S3Error> {
        let key = self.key(key);
        let keys = self.keys.current();
        let mut headers = self.encryption.headers();
        let url = encryption::signed(self.bucket.put_object(Some(&keys), &key), &headers);
        match cond {
            Cond::None => {}
            Cond::Absent => headers.push(("If-None-Match", "*".to_owned())),
            Cond::Etag(e) => headers.push(("If-Match", e.to_owned())),
        }
        let resp = self
            .send(0, "PUT", url, headers, Payload::Lent(body))
            .await?;
        let resent = resp.resent;
        match resp.status {
            200 => {
                let etag = resp.header("ETag").unwrap_or_default().to_owned();
                drain(resp).await;
                Ok(Ok(etag))
            }
            _ => refusal(failure(resp).await, resent),
        }
    }

    /// The object under `key` with its body still to read, or `None`.
    pub async fn get(&self, key: &str) -> Result<Option<Response>, S3Error> {
        let key = self.key(key);
        let url = self
            .bucket
            .get_object(Some(&self.keys.current()), &key)
            .sign(SIGNED_FOR);
        let resp = self.send(1, "GET", url, Vec::new(), Payload::NONE).await?;
        match resp.status {
            200 => Ok(Some(resp)),
            404 => {
                drain(resp).await;
                Ok(None)
            }
            _ => Err(failure(resp).await),
        }
    }

    /// A small object read whole (at most `limit` bytes), or `None`.
    pub async fn get_bytes(&self, key: &str, limit: usize) -> Result<Option<Vec<u8>>, S3Error> {
        match self.get(key).await? {
            Some(resp) => Ok(Some(resp.body.bytes(limit).await?)),
            None => Ok(None),
        }
    }

    /// Bytes `offset..offset + len` of the object under `key` (`len` > 0), its body still to
    /// read, or `None`.
    pub async fn get_range(
        &self,
        key: &str,
        offset: u64,
        len: u64,
    ) -> Result<Option<Response>, S3Error> {
        let key = self.key(key);
        let url = self
            .bucket
            .get_object(Some(&self.keys.current()), &key)
            .sign(SIGNED_FOR);
        let range = format!("bytes={offset}-{}", offset + len - 1);
        let resp = self
            .send(1, "GET", url, vec![("Range", range)], Payload::NONE)
            .await?;
        match resp.status {
            200 | 206 => Ok(Some(resp)),
            404 => {
                drain(resp).await;
                Ok(None)
            }
            _ => Err(failure(resp).await),
        }
    }

    /// A URL anyone may GET the object under `key` with for `ttl`.
    pub fn presigned_get(&self, key: &str, ttl: Duration) -> String {
        let key = self.key(key);
        self.bucket
            .get_object(Some(&self.keys.current()), &key)
            .sign(ttl)
            .to_string()
    }

    /// Size and ETag of the object under `key`, or `None`.
    pub async fn head(&self, key: &str) -> Result<Option<Meta>, S3Error> {
        let key = self.key(key);
        let url = self
            .bucket
            .head_object(Some(&self.keys.current()), &key)
            .sign(SIGNED_FOR);
        let resp = self.send(2, "HEAD", url, Vec::new(), Payload::NONE).await?;
        match resp.status {
            200 => {
                let len = resp
                    .header("Content-Length")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let etag = resp.header("ETag").unwrap_or_default().to_owned();
                let modified = resp
                    .header("Last-Modified")
                    .and_then(parse_http_date)
                    .unwrap_or(UNKNOWN_TIME);
                Ok(Some(Meta {
                    len,
                    etag,
                    modified,
                }))
            }
            404 => Ok(None),
            status => Err(S3Error::Status {
                status,
                code: String::new(),
                message: format!("HEAD {key}"),
            }),
        }
    }

    /// Delete the object under `key` (only if its ETag is `if_match`, when given). Deleting
    /// what is not there succeeds, as S3 does.
    pub async fn delete(&self, key: &str, if_match: Option<&str>) -> Result<(), S3Error> {
        match self.delete_if(key, if_match).await? {
            Ok(()) => Ok(()),
            Err(_) => Err(S3Error::Precondition),
        }
    }

    /// `delete`, telling a refusal of a resent request apart (as `put_if` does).
    pub async fn delete_if(
        &self,
        key: &str,
        if_match: Option<&str>,
    ) -> Result<Result<(), Refused>, S3Error> {
        let full = self.key(key);
        let keys = self.keys.current();
        let action = self.bucket.delete_object(Some(&keys), &full);
        let header = if_match.map(|e| ("If-Match", e.to_owned()));
        let url = action.sign(SIGNED_FOR);
        let resp = self
            .send(
                3,
                "DELETE",
                url,
                header.into_iter().collect(),
                Payload::NONE,
            )
            .await?;
        let resent = resp.resent;
        match resp.status {
            200 | 204 | 404 => {
                drain(resp).await;
                Ok(Ok(()))
            }
            // A store may refuse `If-Match` on a key that is gone (SeaweedFS 4.48 answers 412):
            // when the first attempt's answer was lost, that is our own delete, and deleting
            // what is not there succeeds.
            412 if resent && if_match.is_some() && self.head(key).await?.is_none() => {
                drain(resp).await;
                Ok(Ok(()))
            }
            _ => refusal(failure(resp).await, resent),
        }
    }

    /// Up to `max` keys under `prefix` (relative to the configured prefix) after `start_after`
    /// (exclusive), sorted, and whether more follow.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        max: usize,
    ) -> Result<(Vec<Listed>, bool), S3Error> {
        let full = self.key(prefix);
        let keys = self.keys.current();
        let mut action = self.bucket.list_objects_v2(Some(&keys));
        action.with_prefix(full.as_str());
        let after = start_after.map(|a| self.key(a));
        if let Some(a) = &after {
            action.with_start_after(a.as_str());
        }
        action.with_max_keys(max.clamp(1, 1000));
        let text = self.listing(action.sign(SIGNED_FOR)).await?;
        Ok(parse_listing(&text, &self.prefix)?)
    }

    /// The XML a signed listing `url` answers with (counted as a `list`; bounded).
    async fn listing(&self, url: url::Url) -> Result<Vec<u8>, S3Error> {
        let resp = self.send(4, "GET", url, Vec::new(), Payload::NONE).await?;
        if resp.status != 200 {
            return Err(failure(resp).await);
        }
        Ok(resp.body.bytes(MAX_SMALL_BODY).await?)
    }
}

/// Read and drop a body we do not need, so the connection can be reused.
async fn drain(resp: Response) {
    let _ = resp.body.bytes(MAX_SMALL_BODY).await;
}

/// A failed conditional request's outcome: a refusal (of a resent request or not), or the error.
fn refusal<T>(e: S3Error, resent: bool) -> Result<Result<T, Refused>, S3Error> {
    match e {
        S3Error::Precondition if resent => Ok(Err(Refused::Resent)),
        S3Error::Precondition => Ok(Err(Refused::First)),
        e => Err(e),
    }
}

/// The error a non-success response stands for.
async fn failure(resp: Response) -> S3Error {
    let status = resp.status;
    if status == 412 {
        drain(resp).await;
        return S3Error::Precondition;
    }
    let text = resp.body.bytes(MAX_SMALL_BODY).await.unwrap_or_default();
    let (code, message) = parse_error(&text);
    S3Error::Status {
        status,
        code,
        message,
    }
}
