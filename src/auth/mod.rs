//! Who is asking: Basic credentials checked against `[auth.identity.<id>]` argon2id hashes on a
//! verifier pool (`pool`), remembered per worker thread (`cache`), parsed by `basic`; together
//! with the TLS client certificate they make the identity policies see.

mod basic;
pub mod cache;
mod inflight;
mod pool;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use sha2::{Digest as _, Sha256};

use crate::config::{AuthConfig, ConfigError};
pub use basic::{BasicError, Credentials, parse as parse_basic};
pub use cache::Cache;
pub use inflight::client_key;

/// A configured Basic-auth identity.
pub struct User {
    /// The `<id>` of `[auth.identity.<id>]` (`identity.id`).
    pub id: String,
    pub username: String,
    phc: Arc<str>,
}

/// Why a request's credentials were not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Basic(#[from] BasicError),
    #[error("invalid username or password")]
    Invalid,
    #[error("too many password checks in progress, retry shortly")]
    Busy,
    #[error(
        "too many password checks in progress from this client (auth.max_checks_per_client), retry shortly"
    )]
    ClientBusy,
}

/// Checks Basic credentials; shared by all workers (each has its own `Cache`).
pub struct Authenticator {
    users: Vec<User>,
    /// Unknown usernames are checked against this hash so they take as long as known ones.
    decoy: Arc<str>,
    key: [u8; 32],
    verifier: Option<pool::Verifier>,
    ttl: std::time::Duration,
    cache_size: usize,
    /// Password checks queued or running per client address (`auth.max_checks_per_client`).
    in_flight: Arc<inflight::InFlight>,
}

impl Authenticator {
    /// Validate every `[auth.identity.<id>]` and start the verifier threads (when there are users).
    pub fn from_config(cfg: &AuthConfig) -> Result<Authenticator, ConfigError> {
        validate(cfg)?;
        let users: Vec<User> = cfg
            .identity
            .iter()
            .map(|(id, ident)| User {
                id: id.clone(),
                username: ident.username.clone(),
                phc: ident.password.as_str().into(),
            })
            .collect();
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).map_err(|e| ConfigError::Invalid {
            key: "auth".into(),
            message: format!("no randomness for the credential cache key: {e}"),
        })?;
        let (decoy, verifier) = if users.is_empty() {
            (Arc::from(""), None)
        } else {
            let mut pw = [0u8; 16];
            getrandom::fill(&mut pw).expect("randomness worked a moment ago");
            let decoy = decoy_hash(&users, &pw);
            let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            let verifier = pool::Verifier::start(threads).map_err(|e| ConfigError::Invalid {
                key: "auth.identity".into(),
                message: format!("cannot start password verifier threads: {e}"),
            })?;
            (Arc::from(decoy), Some(verifier))
        };
        Ok(Authenticator {
            users,
            decoy,
            key,
            verifier,
            ttl: cfg.credential_cache_ttl,
            cache_size: cfg.credential_cache_size,
            in_flight: Arc::new(inflight::InFlight::new(cfg.max_checks_per_client)),
        })
    }

    /// A worker thread's empty credential cache.
    pub fn new_cache(&self) -> Rc<Cache> {
        Rc::new(Cache::new(self.ttl, self.cache_size))
    }

    fn cache_key(&self, header: &str) -> cache::Key {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(header.as_bytes());
        h.finalize().into()
    }

    /// The user an `Authorization` header from `client` proves to be. Hot path: a header verified
    /// within the TTL costs one SHA-256 and a map lookup; otherwise argon2 runs once per header and
    /// worker, unless `client` already has `auth.max_checks_per_client` checks in flight.
    pub async fn authenticate(
        &self,
        cache: &Rc<Cache>,
        header: &str,
        client: IpAddr,
    ) -> Result<&User, AuthError> {
        let key = self.cache_key(header);
        let found =
            |outcome: cache::Outcome| outcome.map(|i| &self.users[i]).ok_or(AuthError::Invalid);
        if let Some(outcome) = cache.lookup(&key, Instant::now()) {
            return found(outcome);
        }
        let pending = match cache.pending(&key) {
            Some(p) => p,
            None => self.start_check(cache, key, header, client)?,
        };
        match pending.wait().await {
            Some(outcome) => found(outcome),
            None => Err(AuthError::Busy),
        }
    }

    /// Parse the header and hand the hash check to the verifier pool; a local task records the
    /// result, so the check completes even if the connection that asked goes away.
    fn start_check(
        &self,
        cache: &Rc<Cache>,
        key: cache::Key,
        header: &str,
        client: IpAddr,
    ) -> Result<Rc<cache::Pending>, AuthError> {
        let creds = basic::parse(header)?;
        let user = self.users.iter().position(|u| u.username == creds.username);
        let Some(verifier) = &self.verifier else {
            return Err(AuthError::Invalid);
        };
        // Before the shared queue: one client cannot fill it and lock every other user out.
        let slot = self
            .in_flight
            .acquire(client)
            .ok_or(AuthError::ClientBusy)?;
        let phc = user.map_or_else(
            || Arc::clone(&self.decoy),
            |i| Arc::clone(&self.users[i].phc),
        );
        let reply = verifier
            .submit(phc, creds.password)
            .ok_or(AuthError::Busy)?;
        let pending = cache.start(key);
        let cache = Rc::clone(cache);
        let name = creds.username;
        monoio::spawn(async move {
            let outcome = reply.await.ok().map(|ok| user.filter(|_| ok));
            drop(slot);
            let verdict = match outcome {
                Some(Some(_)) => "ok",
                Some(None) => "refused",
                None => "not run",
            };
            tracing::debug!(target: "wharf::auth", "password check for {name:?}: {verdict}");
            cache.finish(key, outcome, Instant::now());
        });
        Ok(pending)
    }

    /// Password-hash checks run so far (cache misses).
    pub fn hash_checks(&self) -> u64 {
        self.verifier.as_ref().map_or(0, |v| v.checks())
    }

    /// Whether any Basic users are configured.
    pub fn has_users(&self) -> bool {
        !self.users.is_empty()
    }
}

/// The hash unknown usernames are checked against: argon2id with the parameters most configured
/// users have, so an unknown name costs what a known one does and timing does not tell them apart.
fn decoy_hash(users: &[User], password: &[u8]) -> String {
    let mut counts: Vec<(Params, usize)> = Vec::new();
    for u in users {
        let Some(p) = PasswordHash::new(&u.phc)
            .ok()
            .and_then(|h| Params::try_from(&h).ok())
        else {
            continue;
        };
        match counts.iter_mut().find(|(q, _)| *q == p) {
            Some((_, n)) => *n += 1,
            None => counts.push((p, 1)),
        }
    }
    let params = counts
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map_or_else(Params::default, |(p, _)| p);
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).expect("randomness worked a moment ago");
    let salt = SaltString::encode_b64(&salt).expect("16 bytes encode as a salt");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .expect("parameters taken from a valid hash work")
}

/// Check every `[auth.identity.<id>] password` without starting anything.
pub fn validate(cfg: &AuthConfig) -> Result<(), ConfigError> {
    for (id, ident) in &cfg.identity {
        check_phc(&ident.password).map_err(|message| ConfigError::Invalid {
            key: format!("auth.identity.{id}.password"),
            message,
        })?;
    }
    Ok(())
}

/// A configured password must be an argon2id PHC string we can verify.
fn check_phc(phc: &str) -> Result<(), String> {
    let hash = PasswordHash::new(phc)
        .map_err(|e| format!("not a PHC hash string ({e}); make one with `wharf hash-password`"))?;
    if hash.algorithm != Algorithm::Argon2id.ident() {
        return Err(format!(
            "uses {}, wharf accepts argon2id only; make one with `wharf hash-password`",
            hash.algorithm
        ));
    }
    if hash.hash.is_none() || hash.salt.is_none() {
        return Err("has no salt or hash part".into());
    }
    Ok(())
}

/// Hash a password with argon2id and a random salt, in PHC form (what `wharf hash-password` prints).
pub fn hash_password(password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| format!("no randomness: {e}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64ct::{Base64, Encoding};

    fn authenticator(users: &[(&str, &str, &str)]) -> Authenticator {
        let mut cfg = AuthConfig::default();
        for (id, name, pw) in users {
            cfg.identity.insert(
                id.to_string(),
                crate::config::IdentityConfig {
                    username: name.to_string(),
                    password: hash_password(pw.as_bytes()).unwrap(),
                },
            );
        }
        Authenticator::from_config(&cfg).unwrap()
    }

    fn ip() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    #[test]
    fn one_client_cannot_queue_more_than_its_share_of_checks() {
        let a = authenticator(&[("ci", "builder", "pw-1")]);
        monoio::start::<monoio::LegacyDriver, _>(async {
            let cache = a.new_cache();
            let max = crate::config::AuthConfig::default().max_checks_per_client;
            let headers: Vec<String> = (0..max + 3)
                .map(|i| basic("x", &format!("guess-{i}")))
                .collect();
            let all = headers.iter().map(|h| a.authenticate(&cache, h, ip()));
            let results = futures_util_join_all(all).await;
            let busy = results
                .iter()
                .filter(|r| matches!(r, Err(AuthError::ClientBusy)))
                .count();
            assert_eq!(busy, 3, "{max} checks in flight at most");
            // Another client still gets its check, and the first client's slots come back.
            let other: IpAddr = "192.0.2.99".parse().unwrap();
            let u = a
                .authenticate(&cache, &basic("builder", "pw-1"), other)
                .await;
            assert_eq!(u.unwrap().id, "ci");
            let again = a.authenticate(&cache, &basic("x", "later"), ip()).await;
            assert_eq!(again.err(), Some(AuthError::Invalid));
        });
    }

    /// Poll every future to completion on this thread (no extra dependency).
    async fn futures_util_join_all<F: std::future::Future>(
        futs: impl Iterator<Item = F>,
    ) -> Vec<F::Output> {
        let handles: Vec<_> = futs.map(Box::pin).collect();
        let mut out = Vec::new();
        let mut pinned = handles;
        // Start them all before awaiting any, so they overlap.
        let mut started: Vec<std::pin::Pin<Box<F>>> = Vec::new();
        for f in pinned.drain(..) {
            started.push(f);
        }
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        let mut done: Vec<Option<F::Output>> = started.iter().map(|_| None).collect();
        for (f, d) in started.iter_mut().zip(done.iter_mut()) {
            if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                *d = Some(v);
            }
        }
        for (f, d) in started.into_iter().zip(done) {
            out.push(match d {
                Some(v) => v,
                None => f.await,
            });
        }
        out
    }

    #[test]
    fn the_decoy_hash_has_the_users_parameters() {
        let phc = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::encode_b64(&[7u8; 16]).unwrap())
        .unwrap()
        .to_string();
        let users = vec![User {
            id: "a".into(),
            username: "a".into(),
            phc: phc.as_str().into(),
        }];
        let decoy = decoy_hash(&users, b"random");
        let want = Params::try_from(&PasswordHash::new(&phc).unwrap()).unwrap();
        let got = Params::try_from(&PasswordHash::new(&decoy).unwrap()).unwrap();
        assert_eq!(got, want);
        assert!(
            decoy.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"),
            "{decoy}"
        );
    }

    fn basic(user: &str, pw: &str) -> String {
        format!(
            "Basic {}",
            Base64::encode_string(format!("{user}:{pw}").as_bytes())
        )
    }

    #[test]
    fn hashes_are_argon2id_and_verify() {
        let h = hash_password(b"s3cret").unwrap();
        assert!(h.starts_with("$argon2id$v=19$"), "{h}");
        assert!(pool::verify(&h, "s3cret"));
        assert!(!pool::verify(&h, "s3cret "));
        check_phc(&h).unwrap();
        assert!(
            check_phc("s3cret")
                .unwrap_err()
                .contains("wharf hash-password")
        );
        let argon2i = h.replacen("argon2id", "argon2i", 1);
        assert!(check_phc(&argon2i).unwrap_err().contains("argon2id only"));
    }

    #[test]
    fn verified_headers_are_cached_and_wrong_ones_refused() {
        let a = authenticator(&[("ci", "builder", "pw-1"), ("ops", "admin", "pw-2")]);
        monoio::start::<monoio::LegacyDriver, _>(async {
            let cache = a.new_cache();
            let u = a
                .authenticate(&cache, &basic("admin", "pw-2"), ip())
                .await
                .unwrap();
            assert_eq!((u.id.as_str(), u.username.as_str()), ("ops", "admin"));
            // The same header again is answered from the cache (one entry, same user).
            let u = a
                .authenticate(&cache, &basic("admin", "pw-2"), ip())
                .await
                .unwrap();
            assert_eq!(u.id, "ops");
            assert_eq!(cache.remembered(), 1);
            let wrong = a.authenticate(&cache, &basic("admin", "pw-1"), ip()).await;
            assert_eq!(wrong.err(), Some(AuthError::Invalid));
            let unknown = a.authenticate(&cache, &basic("nobody", "pw-1"), ip()).await;
            assert_eq!(unknown.err(), Some(AuthError::Invalid));
            let bad = a.authenticate(&cache, "Bearer xyz", ip()).await;
            assert_eq!(bad.err(), Some(AuthError::Basic(BasicError::Scheme)));
        });
    }

    #[test]
    fn concurrent_checks_of_one_header_share_one_verification() {
        let a = authenticator(&[("ci", "builder", "pw-1")]);
        monoio::start::<monoio::LegacyDriver, _>(async {
            let cache = a.new_cache();
            let h = basic("builder", "pw-1");
            let (x, y) = monoio::join!(
                a.authenticate(&cache, &h, ip()),
                a.authenticate(&cache, &h, ip())
            );
            assert_eq!(x.unwrap().id, "ci");
            assert_eq!(y.unwrap().id, "ci");
            assert_eq!(cache.remembered(), 1);
            for _ in 0..50 {
                a.authenticate(&cache, &h, ip()).await.unwrap();
            }
            assert_eq!(a.hash_checks(), 1, "52 requests, one argon2 check");
        });
    }

    #[test]
    fn no_users_means_every_credential_is_refused() {
        let a = authenticator(&[]);
        assert!(!a.has_users());
        monoio::start::<monoio::LegacyDriver, _>(async {
            let cache = a.new_cache();
            let r = a.authenticate(&cache, &basic("admin", "x"), ip()).await;
            assert_eq!(r.err(), Some(AuthError::Invalid));
        });
    }
}
