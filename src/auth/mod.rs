//! Who is asking: Basic credentials checked against `[auth.identity.<id>]` argon2id hashes on a
//! verifier pool (`pool`), remembered per worker thread (`cache`), parsed by `basic`; together
//! with the TLS client certificate they make the identity policies see.

mod basic;
pub mod cache;
mod pool;

use std::net::IpAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, PasswordHash, Version};
use sha2::{Digest as _, Sha256};

use crate::config::{AuthConfig, ConfigError};
use crate::net::per_client::PerClient;
pub use basic::{BasicError, Credentials, parse as parse_basic};
pub use cache::Cache;
pub use pool::checks_total as password_checks;

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
    #[error(
        "invalid username or password: log in again (docker login) with a user of auth.identity"
    )]
    Invalid,
    #[error(
        "this registry has no Basic users (auth.identity), so credentials cannot be checked: remove them (docker logout) and retry"
    )]
    NoUsers,
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
    in_flight: Arc<PerClient>,
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
            in_flight: Arc::new(PerClient::new(cfg.max_checks_per_client as usize)),
        })
    }

    /// A worker thread's empty credential cache.
    pub fn new_cache(&self) -> Rc<Cache> {
        Rc::new(Cache::new(self.ttl, self.cache_size))
    }

    /// The user configured as `[auth.identity.<id>]`.
    pub fn user_by_id(&self, id: &str) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// A header's key in the worker's cache: keyed SHA-256, so no credential is kept.
    pub fn cache_key(&self, header: &str) -> cache::Key {
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
            cache::count(cache::Lookup::Hit);
            return found(outcome);
        }
        let pending = match cache.pending(&key) {
            Some(p) => {
                cache::count(cache::Lookup::Joined);
                p
            }
            None => {
                cache::count(cache::Lookup::Miss);
                self.start_check(cache, key, header, client)?
            }
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
            return Err(AuthError::NoUsers);
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
        crate::task::spawn("a password check's finisher", async move {
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
mod tests;
