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

/// Settings a running server cannot change: their keys, if `new` differs from `old` there.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let s = (&old.server, &new.server);
    if s.0.bind_address != s.1.bind_address || s.0.port != s.1.port {
        keys.push("server.bind_address/server.port");
    }
    if s.0.threads != s.1.threads || s.0.io_driver != s.1.io_driver || s.0.backlog != s.1.backlog {
        keys.push("server.threads/io_driver/backlog");
    }
    if s.0.tls != s.1.tls {
        keys.push(
            "server.tls (its files reload on change; its paths and client_auth need a restart)",
        );
    }
    if s.0.listener != s.1.listener {
        keys.push(
            "server.listener (listeners' TLS files reload on change; adding, removing or changing a listener needs a restart)",
        );
    }
    if s.0.admin != s.1.admin {
        keys.push("server.admin");
    }
    let h = (&s.0.http, &s.1.http);
    if h.0.max_head_size != h.1.max_head_size
        || h.0.max_target_size != h.1.max_target_size
        || h.0.head_timeout != h.1.head_timeout
        || h.0.keep_alive_timeout != h.1.keep_alive_timeout
        || h.0.body_timeout != h.1.body_timeout
        || h.0.send_timeout != h.1.send_timeout
    {
        keys.push("server.http");
    }
    if old.storage.root != new.storage.root {
        keys.push("storage.root");
    }
    if old.global.max_blob_size != new.global.max_blob_size
        || old.global.max_manifest_size != new.global.max_manifest_size
    {
        keys.push("global.max_blob_size/max_manifest_size");
    }
    if old.limits.max_connections != new.limits.max_connections
        || old.limits.max_connections_per_client != new.limits.max_connections_per_client
    {
        keys.push("limits.max_connections/max_connections_per_client");
    }
    if old.gc.interval != new.gc.interval
        || old.gc.grace != new.gc.grace
        || old.gc.delete_untagged != new.gc.delete_untagged
    {
        keys.push("gc");
    }
    keys
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
