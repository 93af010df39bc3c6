//! One `[auth.oidc.<name>]` issuer: its discovery document and signing keys (JWKS) fetched over
//! wharf's own HTTP client (`crate::client`, TLS with the system roots or `ca_bundle`) on the
//! worker that needs them, shared by all workers; a token naming an unknown `kid` refreshes them at
//! most once a minute, and they are fetched again after an hour. ID tokens are checked here.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use serde_json::{Map, Value};

use super::jws::{self, Alg, PublicKey, Refusal};
use crate::client::{self, Payload, Request};
use crate::config::OidcConfig;

/// Keys older than this are fetched again before use.
const KEYS_MAX_AGE: i64 = 3600;
/// Refreshes caused by an unknown `kid`: at most one per this many seconds.
const UNKNOWN_KID_INTERVAL: i64 = 60;
/// After a failed fetch, none for this many seconds (token requests answer 503 meanwhile).
const FAILURE_BACKOFF: i64 = 10;
/// Fetches in flight at once over all workers.
const MAX_FETCHES: u32 = 2;
/// Largest discovery document or JWKS read.
const MAX_DOCUMENT: usize = 1 << 20;

/// The keys as last fetched, and when.
#[derive(Default)]
struct KeySet {
    keys: Vec<PublicKey>,
    fetched: i64,
}

/// One configured OIDC issuer.
pub struct Provider {
    pub name: String,
    issuer: String,
    audience: String,
    jwks_uri: Option<url::Url>,
    tls: Arc<rustls::ClientConfig>,
    skew: i64,
    algorithms: Vec<Alg>,
    keys: crate::reload::Cell<KeySet>,
    /// When a token's unknown `kid` last caused a refresh (Unix seconds).
    unknown_kid_refresh: AtomicI64,
    failed_at: AtomicI64,
    fetching: AtomicU32,
    pub(super) counters: Arc<super::Counters>,
}

/// Why an ID token could not be checked now: not the token's fault (503, retry).
#[derive(Debug)]
pub struct Unavailable(pub String);

impl Provider {
    pub fn new(name: &str, cfg: &OidcConfig) -> Result<Provider, String> {
        let key = |k: &str| format!("auth.oidc.{name}.{k}");
        let tls = crate::tls::material::client_config(cfg.ca_bundle.as_deref(), "ca_bundle")
            .map_err(|e| format!("{}: {e}", key("ca_bundle")))?;
        let jwks_uri = cfg
            .jwks_uri
            .as_deref()
            .map(url::Url::parse)
            .transpose()
            .map_err(|e| format!("{}: {e}", key("jwks_uri")))?;
        Ok(Provider {
            name: name.to_owned(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            jwks_uri,
            tls,
            skew: cfg.clock_skew.as_secs() as i64,
            algorithms: cfg
                .algorithms
                .iter()
                .filter_map(|a| Alg::parse(a))
                .collect(),
            keys: crate::reload::Cell::new(KeySet::default()),
            unknown_kid_refresh: AtomicI64::new(i64::MIN / 2),
            failed_at: AtomicI64::new(i64::MIN / 2),
            fetching: AtomicU32::new(0),
            counters: super::counters(name),
        })
    }

    /// Whether `claims` (unverified) claim to come from this issuer.
    pub fn claims_issuer(&self, token: &str) -> bool {
        jws::parse(token, &Alg::ALL).is_ok_and(|j| {
            j.claims.get("iss").and_then(Value::as_str) == Some(self.issuer.as_str())
        })
    }

    /// The verified claims of an ID token: signature by a published key, `iss`, `aud`, `exp`,
    /// `nbf` and `iat` within the configured skew.
    pub async fn verify(
        &self,
        token: &str,
    ) -> Result<Result<Map<String, Value>, Refusal>, Unavailable> {
        let jws = match jws::parse(token, &self.algorithms) {
            Ok(j) => j,
            Err(r) => return Ok(Err(r)),
        };
        // Another issuer's token is refused before any key is fetched for it.
        if let Err(r) = jws::check_issuer(&jws.claims, &self.issuer) {
            return Ok(Err(r));
        }
        let keys = match self.key_for(&jws).await? {
            Ok(k) => k,
            Err(r) => return Ok(Err(r)),
        };
        // With a `kid`, one key; without, every published key of the token's algorithm.
        if !keys.iter().any(|k| k.verifies(&jws)) {
            return Ok(Err(Refusal::Signature));
        }
        let checked = jws::check_times(&jws.claims, jws::now(), self.skew)
            .and_then(|()| jws::check_audience(&jws.claims, &self.audience));
        Ok(checked.map(|()| jws.claims))
    }

    /// The published keys that may have signed `jws`, fetching the keys if they are missing,
    /// old, or (at most once a minute) lack the token's `kid`.
    async fn key_for(
        &self,
        jws: &jws::Jws<'_>,
    ) -> Result<Result<Vec<PublicKey>, Refusal>, Unavailable> {
        let now = jws::now();
        let (_, set) = self.keys.load();
        if set.keys.is_empty() || now - set.fetched > KEYS_MAX_AGE {
            self.refresh(now).await?;
        }
        let found = self.find(jws);
        if !found.is_empty() {
            return Ok(Ok(found));
        }
        let kid = jws.kid.clone().unwrap_or_default();
        let last = self.unknown_kid_refresh.load(Ordering::Acquire);
        if now - last >= UNKNOWN_KID_INTERVAL
            && self
                .unknown_kid_refresh
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            tracing::info!(target: "wharf::auth", "auth.oidc.{}: a token names key {kid:?}, unknown here: fetching the issuer's keys again", self.name);
            self.refresh(now).await?;
            let found = self.find(jws);
            if !found.is_empty() {
                return Ok(Ok(found));
            }
        }
        Ok(Err(Refusal::UnknownKey(kid)))
    }

    fn find(&self, jws: &jws::Jws<'_>) -> Vec<PublicKey> {
        let (_, set) = self.keys.load();
        set.keys
            .iter()
            .filter(|k| k.alg == jws.alg && (jws.kid.is_none() || k.kid == jws.kid))
            .cloned()
            .collect()
    }

    /// Fetch the keys now (unless a fetch failed moments ago or enough are in flight).
    async fn refresh(&self, now: i64) -> Result<(), Unavailable> {
        if now - self.failed_at.load(Ordering::Acquire) < FAILURE_BACKOFF {
            return Err(Unavailable(format!(
                "the keys of OIDC provider {:?} could not be fetched moments ago; retry shortly",
                self.name
            )));
        }
        if self.fetching.fetch_add(1, Ordering::AcqRel) >= MAX_FETCHES {
            self.fetching.fetch_sub(1, Ordering::AcqRel);
            return Err(Unavailable(format!(
                "the keys of OIDC provider {:?} are being fetched; retry in a second",
                self.name
            )));
        }
        let fetched = self.fetch_keys().await;
        self.fetching.fetch_sub(1, Ordering::AcqRel);
        match fetched {
            Ok(keys) => {
                self.counters.jwks(true);
                tracing::info!(target: "wharf::auth", "auth.oidc.{}: {} signing keys fetched", self.name, keys.len());
                self.keys.swap(KeySet { keys, fetched: now });
                Ok(())
            }
            Err(e) => {
                self.counters.jwks(false);
                self.failed_at.store(now, Ordering::Release);
                tracing::warn!(target: "wharf::auth", "auth.oidc.{}: cannot fetch the issuer's keys: {e}", self.name);
                Err(Unavailable(format!(
                    "the keys of OIDC provider {:?} cannot be fetched from its issuer ({e}); retry later",
                    self.name
                )))
            }
        }
    }

    /// Fetch the keys once, outside the server (`wharf check-config`): how many there are.
    pub fn probe(&self) -> Result<usize, String> {
        crate::storage::s3::off_worker(self.fetch_keys())
            .map(|k| k.len())
            .map_err(|e| {
                format!(
                    "auth.oidc.{}: cannot fetch the issuer's signing keys: {e}",
                    self.name
                )
            })
    }

    /// Discovery (unless `jwks_uri` is configured), then the JWKS.
    pub async fn fetch_keys(&self) -> Result<Vec<PublicKey>, String> {
        let uri = match &self.jwks_uri {
            Some(u) => u.clone(),
            None => {
                let base = self.issuer.trim_end_matches('/');
                let url = url::Url::parse(&format!("{base}/.well-known/openid-configuration"))
                    .map_err(|e| e.to_string())?;
                let doc = self.get_json(&url).await?;
                if doc.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
                    return Err(format!(
                        "{url} names issuer {:?}, not the configured {:?}",
                        doc.get("issuer"),
                        self.issuer
                    ));
                }
                let jwks = doc
                    .get("jwks_uri")
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("{url} has no jwks_uri"))?;
                let jwks = url::Url::parse(jwks).map_err(|e| format!("{url}: jwks_uri: {e}"))?;
                if jwks.scheme() != "https" {
                    return Err(format!("{url}: jwks_uri {jwks} is not https"));
                }
                jwks
            }
        };
        let set = self.get_json(&uri).await?;
        let keys: Vec<PublicKey> = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| format!("{uri} is not a JWKS (no keys)"))?
            .iter()
            .filter_map(Value::as_object)
            .filter_map(PublicKey::from_jwk)
            .filter(|k| self.algorithms.contains(&k.alg))
            .collect();
        if keys.is_empty() {
            return Err(format!(
                "{uri} holds no RS256, ES256 or Ed25519 signing key wharf accepts"
            ));
        }
        Ok(keys)
    }

    async fn get_json(&self, url: &url::Url) -> Result<Value, String> {
        let addr = client::resolve(url).await?;
        let timeout = Duration::from_secs(10);
        let ep = client::endpoint(url, timeout, Some(Arc::clone(&self.tls)), |_, _| Ok(addr))?;
        let target = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let req = Request {
            method: "GET",
            target: &target,
            headers: vec![("Accept", "application/json".to_owned())],
            body: Payload::NONE,
        };
        let resp = client::send(&ep, &req)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if resp.status != 200 {
            return Err(format!("{url} answered {}", resp.status));
        }
        let body = resp
            .body
            .bytes(MAX_DOCUMENT)
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        serde_json::from_slice(&body).map_err(|e| format!("{url}: not JSON: {e}"))
    }
}
