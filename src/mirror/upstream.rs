//! One upstream registry and the requests to it: Basic credentials or the Docker token flow
//! (`token`), redirects followed to other hosts (resolved on the blocking pool, never with the
//! upstream's credentials), at most `max_connections` requests at once (`permits`), and a pause
//! after a `429` (its `Retry-After`, else doubling from 1 s to 60 s) during which nothing is
//! sent and what is not cached answers 503.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::permits::{Permit, Permits};
use super::token::{self, Tokens};
use crate::client::{self, Endpoint, Payload, Request};
use crate::config::UpstreamConfig;

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 5;
/// Other hosts (token realms, blob redirects) resolved and remembered, and for how long.
const MAX_HOSTS: usize = 64;
const HOST_TTL: Duration = Duration::from_secs(60);
/// Tags remembered as checked (`manifest_check_interval`); at the bound, stale ones go, then all.
const MAX_CHECKED: usize = 16_384;
/// The longest pause after a `429`, whatever its `Retry-After` says.
const MAX_BACKOFF: Duration = Duration::from_secs(300);

/// One upstream registry and how to reach it.
pub struct Upstream {
    pub name: String,
    /// The mirrored prefix, e.g. `hub`.
    pub(super) prefix: String,
    /// `?ns=` this upstream answers for (names outside every prefix).
    pub(super) namespace: Option<String>,
    /// Names outside every prefix come here.
    pub(super) default: bool,
    pub url: String,
    endpoint: Endpoint,
    /// `Basic …` for the upstream and its token realm, if configured.
    basic: Option<String>,
    /// TLS for `https` hosts other than the upstream: the upstream's own (its roots and client
    /// certificate), or for an `http` upstream the system's roots; made at startup.
    tls: Result<Arc<rustls::ClientConfig>, String>,
    tokens: Tokens,
    hosts: Mutex<HashMap<String, (Endpoint, Instant)>>,
    permits: Arc<Permits>,
    backoff: Mutex<Backoff>,
    check_interval: Duration,
    checked: Mutex<HashMap<String, Instant>>,
    pub stats: Stats,
}

#[derive(Default)]
struct Backoff {
    until: Option<Instant>,
    /// `429`s in a row.
    streak: u32,
}

/// Counters of one upstream (`/metrics`, labelled with its name).
#[derive(Default)]
pub struct Stats {
    /// Requests by outcome: ok, not_found, refused, unavailable, throttled (429), shed (not
    /// sent: paused after a 429, or no connection free within the timeout).
    pub requests: [AtomicU64; 6],
    pub tokens: AtomicU64,
    pub fetches: AtomicU64,
    pub coalesced: AtomicU64,
    /// Requests answered from the store (hit) or not (miss): manifest hit, manifest miss, blob
    /// hit, blob miss.
    pub cache: [AtomicU64; 4],
    /// Body bytes received from the upstream (manifests and blobs).
    pub bytes: AtomicU64,
}

impl Stats {
    /// Count a manifest (`blob` false) or blob request answered from the store or not.
    pub fn cache(&self, blob: bool, hit: bool) {
        let i = usize::from(blob) * 2 + usize::from(!hit);
        self.cache[i].fetch_add(1, Ordering::Relaxed);
    }
}

/// The outcomes of `Stats::requests`, in order.
pub const OUTCOMES: [&str; 6] = [
    "ok",
    "not_found",
    "refused",
    "unavailable",
    "throttled",
    "shed",
];

/// What went wrong upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream does not have it (404).
    #[error("not found upstream")]
    NotFound,
    /// The upstream could not be reached, timed out, or failed (5xx).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// Not asked: the upstream asked wharf to slow down (429), or every connection is busy; try
    /// again after the duration.
    #[error("upstream busy: {0}")]
    Busy(String, Duration),
    /// The upstream refused (401, 403, other 4xx): the status and its body.
    #[error("upstream answered {0}: {1}")]
    Refused(u16, String),
}

impl From<std::io::Error> for UpstreamError {
    fn from(e: std::io::Error) -> UpstreamError {
        UpstreamError::Unavailable(e.to_string())
    }
}

/// A successful answer, holding its connection permit until it is dropped.
pub struct Answer {
    pub resp: client::Response,
    /// Kept as long as the body is being read.
    pub(crate) permit: Permit,
}

impl Upstream {
    pub(super) fn new(i: usize, cfg: &UpstreamConfig) -> Result<Upstream, String> {
        let key = |k: &str| format!("upstream[{i}].{k}");
        let url = url::Url::parse(&cfg.url).map_err(|e| format!("{}: {e}", key("url")))?;
        let tls = if url.scheme() == "https" {
            let identity = cfg
                .client_certificate
                .as_deref()
                .zip(cfg.client_private_key.as_deref());
            let identity = identity.map(|(c, k)| crate::tls::ClientIdentity {
                certificate: ("upstream.client_certificate", c),
                private_key: ("upstream.client_private_key", k),
            });
            let config = crate::tls::client_config_with(
                cfg.ca_bundle.as_deref(),
                "upstream.ca_bundle",
                identity,
            )
            .map_err(|e| format!("upstream[{i}]: {e}"))?;
            Some(config)
        } else {
            None
        };
        let endpoint = client::endpoint(&url, cfg.timeout, tls.clone(), |host, port| {
            client::resolve_now(host, port)
                .map_err(|e| format!("{} {:?}: {e}", key("url"), cfg.url))
        })?;
        let basic = match (&cfg.username, &cfg.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    format!(
                        "{}: cannot read {}: {e}",
                        key("password_file"),
                        file.display()
                    )
                })?;
                use base64ct::{Base64, Encoding};
                let pair = format!("{user}:{}", password.trim());
                Some(format!("Basic {}", Base64::encode_string(pair.as_bytes())))
            }
            _ => None,
        };
        // Made now, not on a worker at the first redirect to an https host (it reads the system's
        // roots); kept as an error for an http upstream on a machine without them.
        let other_hosts = match tls {
            Some(t) => Ok(t),
            None => {
                crate::tls::client_config(None, "upstream.ca_bundle").map_err(|e| e.to_string())
            }
        };
        Ok(Upstream {
            name: cfg.name.clone(),
            prefix: cfg.prefix.clone(),
            namespace: cfg.namespace.clone(),
            default: cfg.default,
            url: cfg.url.trim_end_matches('/').to_owned(),
            endpoint,
            basic,
            tls: other_hosts,
            tokens: Tokens::default(),
            hosts: Mutex::new(HashMap::new()),
            permits: Permits::new(cfg.max_connections),
            backoff: Mutex::new(Backoff::default()),
            check_interval: cfg.manifest_check_interval,
            checked: Mutex::new(HashMap::new()),
            stats: Stats::default(),
        })
    }

    /// Requests to this upstream under way.
    pub fn connections_in_use(&self) -> usize {
        self.permits.in_use()
    }

    fn count(&self, outcome: &str) {
        let i = OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(0);
        self.stats.requests[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `name:tag` was checked upstream less than `manifest_check_interval` ago.
    pub fn checked_recently(&self, name: &str, tag: &str) -> bool {
        let map = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&format!("{name}:{tag}"))
            .is_some_and(|at| at.elapsed() < self.check_interval)
    }

    /// Remember that `name:tag` was just checked upstream.
    pub fn mark_checked(&self, name: &str, tag: &str) {
        if self.check_interval.is_zero() {
            return;
        }
        let mut map = self.checked.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_CHECKED {
            let interval = self.check_interval;
            map.retain(|_, at| at.elapsed() < interval);
            if map.len() >= MAX_CHECKED {
                map.clear();
            }
        }
        map.insert(format!("{name}:{tag}"), Instant::now());
    }

    /// Still pausing after a `429`: for how long.
    fn paused(&self) -> Option<Duration> {
        let b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        b.until
            .and_then(|u| u.checked_duration_since(Instant::now()))
    }

    /// A `429`: pause for its `Retry-After` (seconds), else 1 s doubling per `429` in a row.
    fn throttled(&self, retry_after: Option<&str>) -> Duration {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let doubling = Duration::from_secs(1u64 << b.streak.min(6)).min(Duration::from_secs(60));
        let wait = retry_after
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(doubling, Duration::from_secs)
            .clamp(Duration::from_secs(1), MAX_BACKOFF);
        b.streak = b.streak.saturating_add(1);
        b.until = Some(Instant::now() + wait);
        wait
    }

    fn answered(&self) {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        b.streak = 0;
    }

    /// `method target` on the upstream: the answer once it is a success (its body still to
    /// read). Authenticates as the upstream asks (Basic, or a token from its realm), follows
    /// redirects, and keeps to `max_connections` and the pause after a `429`.
    pub async fn send(
        &self,
        method: &'static str,
        name: &str,
        target: &str,
        accept: Option<&str>,
    ) -> Result<Answer, UpstreamError> {
        if let Some(wait) = self.paused() {
            self.count("shed");
            return Err(UpstreamError::Busy(
                format!("{} asked wharf to slow down (429)", self.url),
                wait,
            ));
        }
        let permit =
            match monoio::time::timeout(self.endpoint.io_timeout, self.permits.acquire()).await {
                Ok(p) => p,
                Err(_) => {
                    self.count("shed");
                    return Err(UpstreamError::Busy(
                        format!(
                            "all {} connections to {} are busy (upstream.max_connections)",
                            self.permits.max(),
                            self.url
                        ),
                        Duration::from_secs(1),
                    ));
                }
            };
        let res = self.send_with(method, name, target, accept).await;
        let outcome = match &res {
            Ok(_) => "ok",
            Err(UpstreamError::NotFound) => "not_found",
            Err(UpstreamError::Refused(..)) => "refused",
            Err(UpstreamError::Unavailable(_)) => "unavailable",
            Err(UpstreamError::Busy(..)) => "throttled",
        };
        self.count(outcome);
        res.map(|resp| Answer { resp, permit })
    }

    async fn send_with(
        &self,
        method: &'static str,
        name: &str,
        target: &str,
        accept: Option<&str>,
    ) -> Result<client::Response, UpstreamError> {
        let mut endpoint = self.endpoint.clone();
        let mut target = target.to_owned();
        let mut on_upstream = true;
        let mut token = self.tokens.get(name);
        let mut asked_realm = false;
        let mut hops = 0;
        loop {
            let mut headers = Vec::new();
            if on_upstream {
                match (&token, &self.basic) {
                    (Some(t), _) => headers.push(("Authorization", format!("Bearer {t}"))),
                    (None, Some(b)) => headers.push(("Authorization", b.clone())),
                    (None, None) => {}
                }
            }
            if let Some(a) = accept {
                headers.push(("Accept", a.to_owned()));
            }
            let req = Request {
                method,
                target: &target,
                headers,
                body: Payload::NONE,
            };
            let resp = client::send(&endpoint, &req)
                .await
                .map_err(|e| UpstreamError::Unavailable(format!("{}: {e}", endpoint.host)))?;
            match resp.status {
                200 => {
                    self.answered();
                    return Ok(resp);
                }
                401 if on_upstream && !asked_realm => {
                    let challenge = resp
                        .header("WWW-Authenticate")
                        .and_then(token::parse_challenge);
                    let Some(challenge) = challenge else {
                        return Err(refused(resp).await);
                    };
                    asked_realm = true;
                    self.tokens.forget(name);
                    let (t, life) = self.fetch_token(&challenge).await?;
                    self.tokens.put(name, t.clone(), life);
                    token = Some(t);
                }
                301 | 302 | 303 | 307 | 308 if hops < MAX_REDIRECTS => {
                    hops += 1;
                    let here = format!(
                        "{}://{}",
                        if endpoint.tls.is_some() {
                            "https"
                        } else {
                            "http"
                        },
                        endpoint.host
                    );
                    let location = resp.header("Location").unwrap_or_default();
                    let next = url::Url::parse(&here)
                        .and_then(|base| base.join(location))
                        .map_err(|e| {
                            UpstreamError::Unavailable(format!(
                                "{} redirected to {location:?}: {e}",
                                endpoint.host
                            ))
                        })?;
                    endpoint = self.endpoint_for(&next).await?;
                    on_upstream = endpoint.addr == self.endpoint.addr
                        && endpoint.host == self.endpoint.host
                        && endpoint.tls.is_some() == self.endpoint.tls.is_some();
                    target = match next.query() {
                        Some(q) => format!("{}?{q}", next.path()),
                        None => next.path().to_owned(),
                    };
                }
                404 => return Err(UpstreamError::NotFound),
                429 => {
                    let wait = self.throttled(resp.header("Retry-After"));
                    return Err(UpstreamError::Busy(
                        format!("{} answered 429 (too many requests)", endpoint.host),
                        wait,
                    ));
                }
                s @ 500..=599 => {
                    return Err(UpstreamError::Unavailable(format!(
                        "{} answered {s}",
                        endpoint.host
                    )));
                }
                _ => return Err(refused(resp).await),
            }
        }
    }

    /// A token from the challenge's realm, with the upstream's Basic credentials if any.
    async fn fetch_token(
        &self,
        challenge: &token::Challenge,
    ) -> Result<(String, Duration), UpstreamError> {
        let mut realm = url::Url::parse(&challenge.realm).map_err(|e| {
            UpstreamError::Unavailable(format!(
                "{} named the token realm {:?}: {e}",
                self.url, challenge.realm
            ))
        })?;
        {
            let mut q = realm.query_pairs_mut();
            if let Some(s) = &challenge.service {
                q.append_pair("service", s);
            }
            if let Some(s) = &challenge.scope {
                q.append_pair("scope", s);
            }
        }
        let endpoint = self.endpoint_for(&realm).await?;
        let target = format!("{}?{}", realm.path(), realm.query().unwrap_or_default());
        let mut headers = Vec::new();
        if let Some(b) = &self.basic {
            headers.push(("Authorization", b.clone()));
        }
        let req = Request {
            method: "GET",
            target: &target,
            headers,
            body: Payload::NONE,
        };
        let resp = client::send(&endpoint, &req)
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("token realm {}: {e}", realm)))?;
        if resp.status != 200 {
            return Err(match refused(resp).await {
                UpstreamError::Refused(s, body) => UpstreamError::Refused(
                    s,
                    format!("the token realm {} refused: {body}", challenge.realm),
                ),
                e => e,
            });
        }
        let body = resp.body.bytes(64 * 1024).await?;
        let t = token::parse_token(&body).map_err(|e| {
            UpstreamError::Unavailable(format!("token realm {}: {e}", challenge.realm))
        })?;
        self.stats.tokens.fetch_add(1, Ordering::Relaxed);
        Ok(t)
    }

    /// The endpoint of `url`: the upstream's own, or another host's, resolved on the blocking
    /// pool and remembered for a minute.
    async fn endpoint_for(&self, url: &url::Url) -> Result<Endpoint, UpstreamError> {
        let host = url.host_str().unwrap_or_default().to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let key = format!("{}://{host}:{port}", url.scheme());
        if let Some((ep, _)) = self
            .hosts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .filter(|(_, at)| at.elapsed() < HOST_TTL)
        {
            return Ok(ep.clone());
        }
        let tls = match url.scheme() {
            "https" => Some(self.tls_config()?),
            "http" => None,
            s => {
                return Err(UpstreamError::Unavailable(format!(
                    "{} sent wharf to a {s}: URL",
                    self.url
                )));
            }
        };
        let addr = client::resolve(url)
            .await
            .map_err(UpstreamError::Unavailable)?;
        let ep = client::endpoint(url, self.endpoint.io_timeout, tls, |_, _| Ok(addr))
            .map_err(UpstreamError::Unavailable)?;
        let mut hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        if hosts.len() >= MAX_HOSTS {
            hosts.retain(|_, (_, at)| at.elapsed() < HOST_TTL);
            if hosts.len() >= MAX_HOSTS {
                hosts.clear();
            }
        }
        hosts.insert(key, (ep.clone(), Instant::now()));
        Ok(ep)
    }

    fn tls_config(&self) -> Result<Arc<rustls::ClientConfig>, UpstreamError> {
        self.tls.clone().map_err(UpstreamError::Unavailable)
    }
}

/// A refusal, with the start of its body.
async fn refused(resp: client::Response) -> UpstreamError {
    let s = resp.status;
    let body = resp.body.bytes(4096).await.unwrap_or_default();
    UpstreamError::Refused(s, String::from_utf8_lossy(&body).into_owned())
}
