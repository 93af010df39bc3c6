//! What the workers share: the application state built from the config (`App`: registry,
//! reloadable state, listeners, limits, metrics), each listener as configured (`ListenerSpec`) and
//! as a worker serves it (`Listener`), and one worker's lock-free state (`Local`).

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::policy::RuleError;
use crate::registry::Registry;
use crate::tls::{Acceptor, Reloader, TlsError};

use super::shutdown::Shutdown;
use super::{idle, limits, live};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("storage.root {path}: {source}")]
    Storage {
        path: String,
        source: std::io::Error,
    },
    #[error("{key} {addr}: {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server.io_driver = \"io_uring\" but io_uring is not available on this system")]
    NoUring,
    #[error("{0}")]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Policy(#[from] RuleError),
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Other(String),
}

/// Where `/metrics`, `/healthz` and `/readyz` are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminEndpoints {
    /// Here as well as the registry API (no `[server.admin]`).
    Also,
    /// Only these (the `[server.admin]` listener).
    Only,
    /// Not here (`[server.admin]` serves them).
    Never,
}

/// One configured listener, as the workers bind it.
pub struct ListenerSpec {
    /// `request.listener`: `"main"`, a `[[server.listener]]` name, or `"admin"`.
    pub name: Arc<str>,
    /// The config keys of its address, for bind errors.
    pub(super) key: String,
    pub(super) addr: SocketAddr,
    /// Its TLS material; `None` = plain HTTP.
    pub tls: Option<Arc<Reloader>>,
    pub admin: AdminEndpoints,
}

impl ListenerSpec {
    /// Every listener of `cfg`, `[server]` first; loads TLS material (a broken file is an error).
    pub fn all(cfg: &Config) -> Result<Vec<ListenerSpec>, StartError> {
        let separate = cfg.server.admin.is_some();
        let api = if separate {
            AdminEndpoints::Never
        } else {
            AdminEndpoints::Also
        };
        let tls = |t: &Option<crate::config::TlsConfig>, table: &str| {
            t.clone().map(|t| Reloader::new(t, table)).transpose()
        };
        let mut out = vec![ListenerSpec {
            name: "main".into(),
            key: "server.bind_address/server.port".into(),
            addr: SocketAddr::new(cfg.server.bind_address, cfg.server.port),
            tls: tls(&cfg.server.tls, "server.tls")?,
            admin: api,
        }];
        for (i, l) in cfg.server.listener.iter().enumerate() {
            out.push(ListenerSpec {
                name: l.name.as_str().into(),
                key: format!("server.listener[{i}].bind_address/port"),
                addr: SocketAddr::new(l.bind_address, l.port),
                tls: tls(&l.tls, &format!("server.listener[{i}].tls"))?,
                admin: api,
            });
        }
        if let Some(a) = &cfg.server.admin {
            out.push(ListenerSpec {
                name: "admin".into(),
                key: "server.admin.bind_address/port".into(),
                addr: SocketAddr::new(a.bind_address, a.port),
                tls: None,
                admin: AdminEndpoints::Only,
            });
        }
        Ok(out)
    }

    /// `http://addr` or `https://addr`.
    pub(super) fn url(&self, addr: SocketAddr) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }
}

/// What every worker shares (immutable).
pub struct App {
    pub registry: Registry,
    /// Identities, policies, rate limits, switches: what a reload replaces.
    pub live: Arc<live::Shared>,
    /// Every listener, `[server]` first (ports resolved).
    pub listeners: Vec<ListenerSpec>,
    pub limits: crate::http::Limits,
    /// Open connections against `limits.max_connections`.
    pub connections: Arc<limits::ConnectionCap>,
    /// Counters of every worker (`/metrics`).
    pub metrics: crate::metrics::Metrics,
    pub shutdown_grace: Duration,
}

/// One listener as a worker serves it.
pub struct Listener {
    /// Position in `App::listeners` (and in the metrics' listener labels).
    pub index: usize,
    /// `request.listener`.
    pub name: Arc<str>,
    /// This worker's handle on the listener's TLS material; `None` = plain HTTP.
    pub tls: Option<Acceptor>,
    pub admin: AdminEndpoints,
    /// It asks clients for certificates (TLS with a client CA).
    pub asks_certificates: bool,
    /// Where else clients with a certificate are taken, for refusals on a port that takes none
    /// (e.g. "listener 'mtls' on port 4443").
    pub elsewhere: Option<Arc<str>>,
}

impl ListenerSpec {
    /// Whether this listener asks clients for certificates.
    pub fn asks_certificates(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|t| t.asks_client_certificates())
    }

    /// The other listeners that take client certificates, as a refusal names them.
    pub(super) fn certificate_ports(all: &[ListenerSpec]) -> Option<Arc<str>> {
        let names: Vec<String> = all
            .iter()
            .filter(|l| l.asks_certificates() && l.admin != AdminEndpoints::Only)
            .map(|l| format!("listener '{}' on port {}", l.name, l.addr.port()))
            .collect();
        (!names.is_empty()).then(|| names.join(", ").into())
    }
}

/// What one worker thread's connections share (no locks).
pub struct Local {
    pub limits: Rc<crate::http::Limits>,
    pub shutdown: Shutdown,
    /// The current identities, policies and limits, and this thread's verified credentials.
    pub live: live::PerWorker,
    /// Connections this thread turned away over `limits.max_connections`.
    pub refused: std::cell::Cell<u64>,
    /// This thread's counters.
    pub metrics: Arc<crate::metrics::Worker>,
    /// This thread's connections waiting for a request, longest-idle first.
    pub idle: idle::Idle,
}
