//! `[server]` and its tables: listeners, TLS, HTTP limits.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{de_duration, ser_duration};

/// `[server]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on. Default `"127.0.0.1"`.
    pub bind_address: IpAddr,
    /// TCP port (0 picks a free port, printed at start). Default `5000`.
    pub port: u16,
    /// Worker threads, one monoio runtime and one SO_REUSEPORT listener each. Default `0` = available cores.
    pub threads: usize,
    /// I/O driver: `"auto"` (io_uring, else epoll), `"io_uring"` or `"epoll"`. Default `"auto"`.
    /// The environment variable `WHARF_IO_DRIVER` overrides it.
    pub io_driver: IoDriver,
    /// How long in-flight requests may run after SIGTERM/SIGINT. Default `"30s"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub shutdown_grace: Duration,
    /// Listen backlog per listener. Default `1024`.
    pub backlog: i32,
    /// `[server.http]`: limits and timeouts of the HTTP layer.
    pub http: HttpConfig,
    /// `[server.tls]`: TLS termination. When present the listener speaks HTTPS only. Default: absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
    /// Send `Strict-Transport-Security: max-age=<seconds>` on every response (needs `[server.tls]`).
    /// Default `"0s"` = no header.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub hsts_max_age: Duration,
    /// `/metrics`, `/healthz` and `/readyz` go through authentication and the access policies
    /// (actions `get-metrics`, `get-health`, `get-ready`) instead of answering everyone. Default `false`.
    pub admin_behind_policies: bool,
    /// `[server.admin]`: serve `/metrics`, `/healthz` and `/readyz` on their own plain-HTTP
    /// listener only (the others answer 404 there). Default: absent (every listener serves them).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin: Option<AdminConfig>,
    /// `[[server.listener]]`: more listeners besides `[server]` (which policies see as `"main"`),
    /// sharing the workers. Default: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listener: Vec<ListenerConfig>,
}

/// `[[server.listener]]`: one more address the registry answers on, with its own TLS settings.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    /// What policies see as `request.listener` and metrics as `listener`: lowercase letters,
    /// digits, `-` and `_`; unique, not `"main"` or `"admin"`. Required.
    pub name: String,
    /// Address to listen on. Default `"127.0.0.1"`.
    #[serde(default = "loopback")]
    pub bind_address: IpAddr,
    /// TCP port (0 picks a free port, printed at start). Required.
    pub port: u16,
    /// `[server.listener.tls]`: same keys as `[server.tls]`; absent = plain HTTP. Default: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// `[server.admin]`: the listener for `/metrics`, `/healthz` and `/readyz` (plain HTTP).
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address to listen on. Default `"127.0.0.1"`.
    #[serde(default = "loopback")]
    pub bind_address: IpAddr,
    /// TCP port (0 picks a free port, printed at start). Required.
    pub port: u16,
}

pub(super) fn loopback() -> IpAddr {
    IpAddr::from([127, 0, 0, 1])
}

/// `[server.tls]`: the key names users copy from existing guides.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM bundle: the server certificate first, then its chain (e.g. certbot's fullchain.pem). Required.
    pub server_certificate_bundle: PathBuf,
    /// PEM private key of that certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC). Required.
    pub server_private_key: PathBuf,
    /// PEM bundle of the CAs client certificates must chain to. Default: absent (no client certificates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca_bundle: Option<PathBuf>,
    /// `"optional"` or `"required"` client certificates (only with `client_ca_bundle`). Default `"optional"`.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Certificate revocation lists (a file or a list of files, PEM or DER) for the client CAs:
    /// a revoked client certificate fails the handshake, and open connections with it close
    /// before their next request. Reloaded live like the other files. Once any is given, the CA
    /// that issued a client certificate must have its CRL here, or the certificate is refused
    /// (revocation status unknown). Default `[]`.
    #[serde(default, deserialize_with = "one_or_many")]
    pub client_crl: Vec<PathBuf>,
}

/// A path or a list of paths.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PathBuf),
        Many(Vec<PathBuf>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(p) => vec![p],
        OneOrMany::Many(v) => v,
    })
}

/// Whether a client certificate is needed to complete the handshake.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No certificate is fine; a presented one must still verify.
    #[default]
    Optional,
    /// The handshake fails without a certificate that verifies.
    Required,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_address: IpAddr::from([127, 0, 0, 1]),
            port: 5000,
            threads: 0,
            io_driver: IoDriver::Auto,
            shutdown_grace: Duration::from_secs(30),
            backlog: 1024,
            http: HttpConfig::default(),
            tls: None,
            hsts_max_age: Duration::ZERO,
            admin_behind_policies: false,
            admin: None,
            listener: Vec::new(),
        }
    }
}

/// Which monoio driver the workers run.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum IoDriver {
    Auto,
    IoUring,
    Epoll,
}

/// `[server.http]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Largest request head (request line and headers); larger answers 431. Default `16384`.
    pub max_head_size: usize,
    /// Longest request target; longer answers 414. Default `8192`.
    pub max_target_size: usize,
    /// Time for a whole request head to arrive once it has started (and for the first on a new connection); 408 after. Default `"10s"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub head_timeout: Duration,
    /// Idle keep-alive time between requests before the connection is closed. Default `"60s"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub keep_alive_timeout: Duration,
    /// Longest stall while reading a request body; 408 after. Default `"60s"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub body_timeout: Duration,
    /// Longest a response write may wait for a client that stopped reading; the connection closes
    /// after it (its buffers are freed). Default `"30s"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub send_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            max_head_size: 16 * 1024,
            max_target_size: 8 * 1024,
            head_timeout: Duration::from_secs(10),
            keep_alive_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(30),
        }
    }
}
