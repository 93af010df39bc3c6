//! The bucket's credentials, kept current without a restart. The first source that is set wins:
//! - `access_key_id` (or `access_key_id_file`) + `secret_access_key_file` (+
//!   `session_token_file`): the files are read again whenever they change (a rotated secret, or
//!   an agent renewing temporary keys);
//! - `role_arn` + `web_identity_token_file`: temporary keys from the store's STS
//!   (`AssumeRoleWithWebIdentity`), renewed once two thirds of their lifetime have passed, the
//!   token file read anew each time (Kubernetes and CI runners rotate it);
//! - the environment: `AWS_ACCESS_KEY_ID` + `AWS_SECRET_ACCESS_KEY` (+ `AWS_SESSION_TOKEN`),
//!   fixed for the process; else `AWS_ROLE_ARN` + `AWS_WEB_IDENTITY_TOKEN_FILE` as above.
//!
//! One thread keeps them current and swaps them in; a worker picks them up with one atomic
//! load per request to the store (`Keys::current`).

use std::cell::RefCell;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusty_s3::Credentials;

use crate::client::{self, Endpoint, Payload, Request};
use crate::config::S3StorageConfig;

/// The credentials requests are signed with; only the renewing thread replaces them.
pub struct Keys {
    cell: crate::reload::Cell<Credentials>,
    /// Which `Keys` a thread's copy belongs to (an address could be reused by a later one).
    id: u64,
}

thread_local! {
    /// This thread's copy of the last keys it used: (which `Keys`, generation, keys).
    static SEEN: RefCell<Option<(u64, u64, Arc<Credentials>)>> = const { RefCell::new(None) };
}

impl Keys {
    pub fn new(credentials: Credentials) -> Keys {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        Keys {
            cell: crate::reload::Cell::new(credentials),
            id: NEXT.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Hot path: the keys to sign with (the shared copy is read only after a renewal).
    pub fn current(&self) -> Arc<Credentials> {
        let generation = self.cell.generation();
        let me = self.id;
        SEEN.with(|seen| {
            let mut seen = seen.borrow_mut();
            if let Some((who, g, keys)) = seen.as_ref()
                && *who == me
                && *g == generation
            {
                return Arc::clone(keys);
            }
            let (g, keys) = self.cell.load();
            *seen = Some((me, g, Arc::clone(&keys)));
            keys
        })
    }

    fn replace(&self, credentials: Credentials) {
        self.cell.swap(credentials);
    }
}

/// Renewals that replaced the keys, renewals that failed, and when the current keys expire
/// (seconds since the epoch; 0: they do not), for `/metrics`.
static RENEWED: AtomicU64 = AtomicU64::new(0);
static FAILED: AtomicU64 = AtomicU64::new(0);
static EXPIRES: AtomicU64 = AtomicU64::new(0);

pub fn renewals() -> (u64, u64, u64) {
    (
        RENEWED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
        EXPIRES.load(Ordering::Relaxed),
    )
}

/// Where the keys come from, and how they are renewed.
pub enum Source {
    /// The environment's static keys: nothing to renew.
    Fixed,
    Files(KeyFiles),
    WebIdentity(WebIdentity),
}

/// Keys read from files, and read again when the files change.
pub struct KeyFiles {
    key_id: KeyId,
    secret: PathBuf,
    token: Option<PathBuf>,
}

/// `access_key_id`, or the file `access_key_id_file` names.
enum KeyId {
    Given(String),
    File(PathBuf),
}

/// Temporary keys for a role, from the STS for the token a file holds.
pub struct WebIdentity {
    role_arn: String,
    token_file: PathBuf,
    /// Where to send `AssumeRoleWithWebIdentity`: the endpoint and the request target.
    sts: Endpoint,
    target: String,
    /// The config key or variable that named the role, for messages.
    named_by: &'static str,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The source `cfg` names and the keys it gives now (blocking: startup and `check-config`).
/// Errors name the config key or variable at fault.
pub fn load(cfg: &S3StorageConfig) -> Result<(Source, Credentials), String> {
    let web = |role_arn: String, token_file: PathBuf, named_by: &'static str| {
        let source = WebIdentity::new(cfg, role_arn, token_file, named_by)?;
        let creds = source.assume().map_err(|e| format!("{named_by}: {e}"))?;
        Ok::<_, String>((Source::WebIdentity(source), creds))
    };
    let key_id = match (&cfg.access_key_id, &cfg.access_key_id_file) {
        (Some(id), _) => Some(KeyId::Given(id.clone())),
        (None, Some(file)) => Some(KeyId::File(file.clone())),
        (None, None) => None,
    };
    let source = match (key_id, &cfg.role_arn) {
        (Some(key_id), _) => {
            let secret = cfg
                .secret_access_key_file
                .clone()
                .expect("validated: set with the key id");
            let files = KeyFiles {
                key_id,
                secret,
                token: cfg.session_token_file.clone(),
            };
            let creds = files.read()?;
            (Source::Files(files), creds)
        }
        (None, Some(arn)) => {
            let file = cfg.web_identity_token_file.clone();
            web(arn.clone(), file.expect("validated"), "storage.s3.role_arn")?
        }
        (None, None) => match (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => {
                let creds = match env("AWS_SESSION_TOKEN") {
                    Some(t) => Credentials::new_with_token(id, secret, t),
                    None => Credentials::new(id, secret),
                };
                (Source::Fixed, creds)
            }
            _ => match (env("AWS_ROLE_ARN"), env("AWS_WEB_IDENTITY_TOKEN_FILE")) {
                (Some(arn), Some(file)) => web(arn, file.into(), "AWS_ROLE_ARN")?,
                _ => return Err("storage.s3: no credentials; set access_key_id and secret_access_key_file, or role_arn and web_identity_token_file, or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_ROLE_ARN and AWS_WEB_IDENTITY_TOKEN_FILE) in the environment".into()),
            },
        },
    };
    if cfg.sts_endpoint.is_some() && !matches!(source.0, Source::WebIdentity(_)) {
        return Err(
            "storage.s3.sts_endpoint: only used with role_arn and web_identity_token_file (or AWS_ROLE_ARN); these credentials are keys".into(),
        );
    }
    Ok(source)
}

/// A file's text without surrounding whitespace; an empty file is an error naming `key`.
fn read_trimmed(path: &std::path::Path, key: &str) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("{key} {}: {e}", path.display()))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("{key} {}: the file is empty", path.display()));
    }
    Ok(text.to_owned())
}

impl KeyFiles {
    fn read(&self) -> Result<Credentials, String> {
        let KeyFiles {
            key_id,
            secret,
            token,
        } = self;
        let key_id = match key_id {
            KeyId::Given(id) => id.clone(),
            KeyId::File(f) => read_trimmed(f, "storage.s3.access_key_id_file")?,
        };
        let secret = read_trimmed(secret, "storage.s3.secret_access_key_file")?;
        Ok(match token {
            Some(t) => Credentials::new_with_token(
                key_id,
                secret,
                read_trimmed(t, "storage.s3.session_token_file")?,
            ),
            None => Credentials::new(key_id, secret),
        })
    }
}

impl Source {
    /// Keep `keys` current from here on, on a thread of its own.
    pub fn keep_current(self, keys: Arc<Keys>) -> std::io::Result<()> {
        match self {
            Source::Fixed => Ok(()),
            Source::Files(files) => {
                // The last failure, warned about once.
                let failure = Mutex::new(String::new());
                crate::reload::watch("wharf-s3-keys", move || {
                    let mut failure = failure.lock().unwrap_or_else(|p| p.into_inner());
                    match files.read() {
                        Ok(now) => {
                            if now != *keys.current() {
                                tracing::info!(
                                    "storage.s3: credentials read again from their files"
                                );
                                keys.replace(now);
                                RENEWED.fetch_add(1, Ordering::Relaxed);
                            }
                            failure.clear();
                        }
                        Err(e) if e != *failure => {
                            tracing::warn!("{e}; requests go on with the credentials read before");
                            FAILED.fetch_add(1, Ordering::Relaxed);
                            *failure = e;
                        }
                        Err(_) => {}
                    }
                })
            }
            Source::WebIdentity(web) => std::thread::Builder::new()
                .name("wharf-s3-sts".into())
                .spawn(move || web.renew_forever(&keys))
                .map(|_| ()),
        }
    }
}

impl WebIdentity {
    fn new(
        cfg: &S3StorageConfig,
        role_arn: String,
        token_file: PathBuf,
        named_by: &'static str,
    ) -> Result<WebIdentity, String> {
        let (key, text) = match &cfg.sts_endpoint {
            Some(url) => ("storage.s3.sts_endpoint", url),
            None => ("storage.s3.endpoint", &cfg.endpoint),
        };
        let url: url::Url = text.parse().map_err(|e| format!("{key} {text:?}: {e}"))?;
        let tls = match url.scheme() {
            "https" => Some(
                crate::tls::client_config(cfg.ca_bundle.as_deref(), "storage.s3.ca_bundle")
                    .map_err(|e| e.to_string())?,
            ),
            _ => None,
        };
        let mut sts = client::endpoint(&url, cfg.io_timeout, tls, client::resolve_now)
            .map_err(|e| format!("{key} {text:?}: {e}"))?;
        sts.connect_timeout = cfg.connect_timeout();
        Ok(WebIdentity {
            role_arn,
            token_file,
            sts,
            target: url.path().to_owned(),
            named_by,
        })
    }

    /// New keys for the role, with the token the file holds now (blocking).
    fn assume(&self) -> Result<Credentials, String> {
        let token = read_trimmed(&self.token_file, "the web identity token file")?;
        let form = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", "wharf")
            .append_pair("WebIdentityToken", &token)
            .finish();
        let req = Request {
            method: "POST",
            target: &self.target,
            headers: vec![(
                "Content-Type",
                "application/x-www-form-urlencoded".to_owned(),
            )],
            body: Payload::Lent(form.as_bytes()),
        };
        let (status, body) = super::off_worker(async {
            let resp = client::send(&self.sts, &req).await?;
            let status = resp.status;
            Ok::<_, std::io::Error>((status, resp.body.bytes(64 << 10).await?))
        })
        .map_err(|e| format!("the STS at {} cannot be reached: {e}", self.sts.host))?;
        if status != 200 {
            let (code, message) = super::parse::parse_error(&body);
            return Err(format!(
                "the STS refused AssumeRoleWithWebIdentity for {:?}: {status} {code}: {message}",
                self.role_arn
            ));
        }
        let issued = super::parse::parse_sts(&body).map_err(|e| format!("the STS: {e}"))?;
        EXPIRES.store(issued.expires, Ordering::Relaxed);
        Ok(Credentials::new_with_token(
            issued.key_id,
            issued.secret,
            issued.token,
        ))
    }

    /// Renew the keys once two thirds of their lifetime have passed; after a failure, try
    /// again after 1 s, doubling to at most 30 s.
    fn renew_forever(self, keys: &Keys) {
        let mut wait = self.renew_in();
        let mut retry = Duration::from_secs(1);
        loop {
            std::thread::sleep(wait);
            match self.assume() {
                Ok(fresh) => {
                    keys.replace(fresh);
                    RENEWED.fetch_add(1, Ordering::Relaxed);
                    retry = Duration::from_secs(1);
                    wait = self.renew_in();
                }
                Err(e) => {
                    FAILED.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        "{}: renewing the object store's credentials failed: {e}; trying again in {retry:?}",
                        self.named_by
                    );
                    wait = retry;
                    retry = (retry * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Two thirds of what is left of the current keys' lifetime (at least 1 s).
    fn renew_in(&self) -> Duration {
        let left = EXPIRES.load(Ordering::Relaxed).saturating_sub(now_secs());
        Duration::from_secs(left * 2 / 3).max(Duration::from_secs(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> S3StorageConfig {
        let text = format!(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:1\"\nbucket = \"b\"\n{extra}"
        );
        let cfg = crate::config::Config::parse_str(&text).unwrap();
        cfg.validate().unwrap();
        cfg.storage.s3.unwrap()
    }

    #[test]
    fn a_thread_sees_each_replacement_and_never_another_stores_keys() {
        for round in 0..3 {
            // Likely at the address the last round's keys had, at the same generation.
            let keys = Arc::new(Keys::new(Credentials::new(format!("k{round}"), "1")));
            assert_eq!(keys.current().key(), format!("k{round}"));
            keys.replace(Credentials::new(format!("k{round}-renewed"), "2"));
            assert_eq!(keys.current().key(), format!("k{round}-renewed"));
            drop(keys);
            let other = Arc::new(Keys::new(Credentials::new("other", "1")));
            assert_eq!(other.current().key(), "other");
        }
    }

    #[test]
    fn key_files_are_read_and_misuse_is_named() {
        let dir = std::env::temp_dir().join(format!("wharf-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (id, secret, token) = (dir.join("id"), dir.join("secret"), dir.join("token"));
        std::fs::write(&id, "AKID\n").unwrap();
        std::fs::write(&secret, " s3cr3t \n").unwrap();
        std::fs::write(&token, "").unwrap();
        let files = format!(
            "access_key_id_file = {:?}\nsecret_access_key_file = {:?}\nsession_token_file = {:?}\n",
            id, secret, token
        );
        let e = load(&config(&files)).err().unwrap();
        assert!(
            e.contains("storage.s3.session_token_file") && e.contains("empty"),
            "{e}"
        );
        std::fs::write(&token, "tok").unwrap();
        let (_, creds) = load(&config(&files)).ok().unwrap();
        assert_eq!(
            (creds.key(), creds.secret(), creds.token()),
            ("AKID", "s3cr3t", Some("tok"))
        );
        let e = load(&config(&format!(
            "{files}sts_endpoint = \"http://127.0.0.1:2\"\n"
        )))
        .err()
        .unwrap();
        assert!(e.starts_with("storage.s3.sts_endpoint"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
