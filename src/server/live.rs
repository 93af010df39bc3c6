//! The part of the configuration that reloads without a restart: identities, policies, rate
//! limits, the read-only/delete switches, HSTS and admin-endpoint protection. A reload builds a
//! complete new `Live` (so an invalid config changes nothing) and swaps it in; each worker picks
//! it up with one atomic load per request and starts a fresh credential cache with it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use super::StartError;
use super::limits::RateLimits;
use crate::action::Action;
use crate::auth::{Authenticator, Cache};
use crate::config::Config;
use crate::http::Method;
use crate::oci::{ErrorKind, OciError};
use crate::policy::AccessControl;

/// Everything a request consults that a reload may replace.
pub struct Live {
    pub auth: Authenticator,
    pub access: AccessControl,
    pub rates: RateLimits,
    pub switches: Switches,
    /// The `Strict-Transport-Security` value, when configured.
    pub hsts: Option<String>,
    /// `server.admin_behind_policies`.
    pub admin_behind_policies: bool,
    /// `[auth.token]` and `[auth.oidc.<name>]`: the token endpoint and the tokens it signs.
    pub tokens: Option<crate::token::Tokens>,
}

impl Live {
    /// Build from a validated config (compiles policies, starts password verifier threads);
    /// `before` is the state a reload replaces (its token keys keep verifying their tokens).
    pub fn from_config(cfg: &Config, before: Option<&Live>) -> Result<Live, StartError> {
        Ok(Live {
            tokens: crate::token::Tokens::from_config(cfg, before.and_then(|b| b.tokens.as_ref()))
                .map_err(StartError::Other)?,
            access: AccessControl::from_config(cfg)?,
            auth: Authenticator::from_config(&cfg.auth)?,
            rates: {
                crate::net::budget::set_limit(cfg.limits.response_buffer_budget);
                RateLimits::new(&cfg.limits)
            },
            switches: Switches {
                read_only: cfg.storage.read_only,
                delete_enabled: cfg.storage.delete_enabled,
            },
            hsts: (!cfg.server.hsts_max_age.is_zero())
                .then(|| format!("max-age={}", cfg.server.hsts_max_age.as_secs())),
            admin_behind_policies: cfg.server.admin_behind_policies,
        })
    }
}

/// Registry-wide refusals by configuration, decided before credentials.
pub struct Switches {
    /// `storage.read_only`: writes answer 405.
    pub read_only: bool,
    /// `storage.delete_enabled`: `false` makes manifest and blob deletes answer 405.
    pub delete_enabled: bool,
}

impl Switches {
    pub(super) fn refuse(&self, method: Method, action: &Action) -> Option<OciError> {
        let why = if self.read_only && !matches!(method, Method::Get | Method::Head) {
            "the registry is read-only (storage.read_only)"
        } else if !self.delete_enabled
            && matches!(
                action,
                Action::DeleteManifest { .. } | Action::DeleteBlob { .. }
            )
        {
            "deletes are disabled (storage.delete_enabled = false)"
        } else {
            return None;
        };
        Some(OciError::new(ErrorKind::Disabled, why))
    }
}

/// The current `Live`, shared by all workers; only reloads write it.
pub type Shared = crate::reload::Cell<Live>;

/// A worker's copy of the current `Live` and its credential cache for it.
pub struct PerWorker {
    state: RefCell<(u64, Arc<Live>, Rc<Cache>)>,
}

impl PerWorker {
    pub fn new(shared: &Shared) -> PerWorker {
        let (generation, live) = shared.load();
        let cache = live.auth.new_cache();
        PerWorker {
            state: RefCell::new((generation, live, cache)),
        }
    }

    /// Hot path: the `Live` to use for one request (refreshed when a reload happened).
    pub fn current(&self, shared: &Shared) -> (Arc<Live>, Rc<Cache>) {
        if shared.generation() != self.state.borrow().0 {
            let (generation, live) = shared.load();
            let cache = live.auth.new_cache();
            *self.state.borrow_mut() = (generation, live, cache);
        }
        let s = self.state.borrow();
        (Arc::clone(&s.1), Rc::clone(&s.2))
    }
}

/// What a reload applies (`Live`): these keys and every key below them. A change anywhere else
/// needs a restart, so a key added to the config later is reported until it is made live here.
const LIVE_KEYS: &[&str] = &[
    "auth",
    "global.access_policy",
    "repository",
    "limits.read_rps",
    "limits.write_rps",
    "limits.burst",
    "limits.response_buffer_budget",
    "storage.read_only",
    "storage.delete_enabled",
    "server.hsts_max_age",
    "server.admin_behind_policies",
];

/// Settings a running server cannot change: the keys where `new` differs from `old` (an array,
/// such as `upstream`, as a whole), with what still reloads under them.
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    let (old, new) = match (serde_json::to_value(old), serde_json::to_value(new)) {
        (Ok(old), Ok(new)) => (old, new),
        _ => return vec!["(the configuration could not be compared; restart to be sure)".into()],
    };
    let mut changed = Vec::new();
    changed_keys("", Some(&old), Some(&new), &mut changed);
    let mut keys: Vec<String> = Vec::new();
    for key in changed {
        let within = |table: &str| key == table || key.starts_with(&format!("{table}."));
        if LIVE_KEYS.iter().any(|live| within(live)) {
            continue;
        }
        let key = if within("server.tls") {
            "server.tls (its files reload on change; its paths and client_auth need a restart)"
                .to_owned()
        } else if within("server.listener") {
            "server.listener (listeners' TLS files reload on change; adding, removing or changing a listener needs a restart)".to_owned()
        } else {
            key
        };
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    keys
}

/// The dotted keys under `prefix` whose values differ (tables are walked, arrays compared whole).
fn changed_keys(
    prefix: &str,
    old: Option<&serde_json::Value>,
    new: Option<&serde_json::Value>,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    match (old, new) {
        (Some(Value::Object(a)), Some(Value::Object(b))) => {
            let names: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for name in names {
                let key = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}.{name}")
                };
                changed_keys(&key, a.get(name), b.get(name), out);
            }
        }
        (a, b) if a != b => out.push(prefix.to_owned()),
        _ => {}
    }
}

/// Reloads the config file: on SIGHUP and when the file changes.
pub struct Reloader {
    path: PathBuf,
    loaded: std::sync::Mutex<Config>,
    /// Fingerprint of the file contents last loaded or tried (by a signal or the watcher).
    tried: std::sync::Mutex<Option<[u8; 32]>>,
}

impl Reloader {
    pub fn new(path: PathBuf, cfg: Config) -> Reloader {
        let tried = std::sync::Mutex::new(fingerprint(&path));
        Reloader {
            path,
            loaded: std::sync::Mutex::new(cfg),
            tried,
        }
    }

    /// Load, validate and build the whole new config; swap it in only if all of that worked.
    /// Returns whether it was applied.
    pub fn reload(&self, shared: &Shared, why: &str) -> bool {
        *self.tried.lock().unwrap_or_else(|p| p.into_inner()) = fingerprint(&self.path);
        let built = Config::load(&self.path)
            .map_err(|e| e.to_string())
            .and_then(|cfg| {
                for (table, tls) in cfg.tls_tables() {
                    if let Some(tls) = tls {
                        crate::tls::material::build(tls)
                            .map_err(|e| e.located(&table).to_string())?;
                    }
                }
                let (_, before) = shared.load();
                let live = Live::from_config(&cfg, Some(&before)).map_err(|e| e.to_string())?;
                Ok((cfg, live))
            });
        match built {
            Ok((cfg, live)) => {
                let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
                for key in needs_restart(&loaded, &cfg) {
                    tracing::warn!(
                        "{why}: {key} changed in {}; that needs a restart (the running value stays)",
                        self.path.display()
                    );
                }
                shared.swap(live);
                *loaded = cfg;
                tracing::info!(
                    "{why}: reloaded {} (identities, policies, limits, switches)",
                    self.path.display()
                );
                true
            }
            Err(e) => {
                tracing::error!("{why}: not reloading, the old configuration keeps serving: {e}");
                false
            }
        }
    }

    /// Poll the config file every second and reload when its contents differ from what was last
    /// loaded or tried (so a change SIGHUP already applied is not applied twice).
    pub fn watch(self: &Arc<Self>, shared: Arc<Shared>) {
        let me = Arc::clone(self);
        let watched = crate::reload::watch("wharf-config-watch", move || {
            let now = fingerprint(&me.path);
            let tried = *me.tried.lock().unwrap_or_else(|p| p.into_inner());
            if now.is_some() && now != tried {
                me.reload(&shared, "config file changed");
            }
        });
        if let Err(e) = watched {
            tracing::warn!("cannot watch the config file (reload with SIGHUP): {e}");
        }
    }
}

fn fingerprint(path: &Path) -> Option<[u8; 32]> {
    use sha2::Digest as _;
    std::fs::read(path)
        .ok()
        .map(|b| sha2::Sha256::digest(&b).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://127.0.0.1:8333\"\nbucket = \"wharf\"\n";

    fn changes(old: &str, new: &str) -> Vec<String> {
        let parse = |t: &str| Config::parse_str(t).unwrap();
        needs_restart(&parse(old), &parse(new))
    }

    #[test]
    fn a_changed_bucket_upstream_or_grace_needs_a_restart() {
        let moved = BASE.replace("bucket = \"wharf\"", "bucket = \"other\"\nredirect = true");
        assert_eq!(
            changes(BASE, &moved),
            ["storage.s3.bucket", "storage.s3.redirect"]
        );
        assert_eq!(
            changes(BASE, "[storage]\n"),
            ["storage.backend", "storage.s3"]
        );
        let upstream =
            "[[upstream]]\nname = \"hub\"\nurl = \"https://127.0.0.1:1\"\nprefix = \"hub\"\n";
        assert_eq!(changes(BASE, &format!("{upstream}{BASE}")), ["upstream"]);
        assert_eq!(
            changes(BASE, &format!("[server]\nshutdown_grace = \"3s\"\n{BASE}")),
            ["server.shutdown_grace"]
        );
        let tls =
            "[server.tls]\nserver_certificate_bundle = \"c.pem\"\nserver_private_key = \"k.pem\"\n";
        assert_eq!(changes(BASE, &format!("{tls}{BASE}")).len(), 1);
        assert!(changes(BASE, &format!("{tls}{BASE}"))[0].starts_with("server.tls (its files"));
    }

    #[test]
    fn what_a_reload_applies_needs_no_restart() {
        let live = "[server]\nhsts_max_age = \"24h\"\nadmin_behind_policies = true\n\
            [global.access_policy]\ndefault = \"deny\"\nrules = [\"true\"]\n\
            [repository.\"team\".access_policy]\ndefault = \"allow\"\nrules = [\"false\"]\n\
            [limits]\nread_rps = 5.0\nwrite_rps = 1.0\nburst = 3\nresponse_buffer_budget = 1048576\n\
            [auth]\ncredential_cache_size = 7\n\
            [auth.identity.ci]\nusername = \"ci\"\npassword = \"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA\"\n";
        let switched = BASE.replace(
            "[storage]\n",
            "[storage]\nread_only = true\ndelete_enabled = false\n",
        );
        assert_eq!(
            changes(BASE, &format!("{live}{switched}")),
            Vec::<String>::new()
        );
        assert_eq!(changes(BASE, BASE), Vec::<String>::new());
    }
}
