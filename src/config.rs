//! The TOML configuration: schema with documented defaults, duration parsing, and validation with
//! errors that name the key. Unknown keys are rejected.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[server]`: listener, threads, HTTP limits.
    pub server: ServerConfig,
    /// `[storage]`: where blobs and metadata live.
    pub storage: StorageConfig,
    /// `[global]`: registry-wide limits and the global access policy.
    pub global: GlobalConfig,
    /// `[auth]`: Basic-auth identities and the verified-credential cache.
    pub auth: AuthConfig,
    /// `[limits]`: per-client request rates and the connection cap.
    pub limits: LimitsConfig,
    /// `[gc]`: garbage collection of unreferenced blobs and manifests.
    pub gc: GcConfig,
    /// `[repository."<name>"]`: settings for a repository name and everything below it.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub repository: BTreeMap<String, RepositoryConfig>,
}

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

fn loopback() -> IpAddr {
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
        let l = crate::http::Limits::default();
        HttpConfig {
            max_head_size: l.max_head_size,
            max_target_size: l.max_target_size,
            head_timeout: l.head_timeout,
            keep_alive_timeout: l.keep_alive_timeout,
            body_timeout: l.body_timeout,
            send_timeout: l.send_timeout,
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> crate::http::Limits {
        crate::http::Limits {
            max_head_size: self.max_head_size,
            max_target_size: self.max_target_size,
            head_timeout: self.head_timeout,
            keep_alive_timeout: self.keep_alive_timeout,
            body_timeout: self.body_timeout,
            send_timeout: self.send_timeout,
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Filesystem root; a relative path is taken from the config file's directory
    /// (from the working directory for the embedded default). Default `"./data"`.
    pub root: PathBuf,
    /// Maintenance mode: every write (POST, PUT, PATCH, DELETE) answers 405 `UNSUPPORTED`.
    /// Default `false`.
    pub read_only: bool,
    /// Whether manifests and blobs may be deleted through the API (tags go with their manifest);
    /// `false` answers 405 `UNSUPPORTED`. Default `true`.
    pub delete_enabled: bool,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            root: PathBuf::from("./data"),
            read_only: false,
            delete_enabled: true,
        }
    }
}

/// `[global]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GlobalConfig {
    /// Largest manifest accepted; larger answers 413. Default `4194304` (4 MiB).
    pub max_manifest_size: u64,
    /// Largest blob accepted; larger answers 413 `SIZE_INVALID`. Default `0` = unlimited.
    pub max_blob_size: u64,
    /// `[global.access_policy]`: checked for every request. Default: absent (allow everything
    /// unless a repository policy says otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicyConfig>,
}

impl Default for GlobalConfig {
    fn default() -> Self {
        GlobalConfig {
            max_manifest_size: 4 * 1024 * 1024,
            max_blob_size: 0,
            access_policy: None,
        }
    }
}

/// `[global.access_policy]` or `[repository."<name>".access_policy]`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AccessPolicyConfig {
    /// `"allow"` or `"deny"`: the decision when no rule is true. Required.
    pub default: PolicyDefault,
    /// CEL expressions; the first that is true flips `default` (allow rules under `"deny"`,
    /// deny rules under `"allow"`). Default `[]`.
    #[serde(default)]
    pub rules: Vec<String>,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Read requests (GET, HEAD) per second per client IP (IPv6: per /64); over it answers 429
    /// `TOOMANYREQUESTS` with `Retry-After`. Default `0` = unlimited.
    pub read_rps: f64,
    /// Write requests (POST, PUT, PATCH, DELETE) per second per client IP (IPv6: per /64).
    /// Default `0` = unlimited.
    pub write_rps: f64,
    /// Requests a client may make in a burst above its rate (the token bucket's size). Default `0`
    /// = one second's worth of the rate (at least 1).
    pub burst: u32,
    /// Open connections across all workers. At the cap a new connection closes the longest-idle
    /// keep-alive connection (idle at least a second) of the worker that accepts it; with none, it
    /// is answered 503 and closed (TLS: closed). Default `16384`; `0` = unlimited.
    pub max_connections: usize,
    /// Open connections per client address (IPv4 address, IPv6 /64); the next is answered 503 and
    /// closed (TLS: closed). Default `256`; `0` = unlimited.
    pub max_connections_per_client: usize,
    /// Bytes of large response buffers (256 KiB TLS file blocks, 1 MiB loopback copies) that may
    /// wait on clients at once; past it files go out in 16 KiB TLS records or by `sendfile`.
    /// Default `16777216` (16 MiB).
    pub response_buffer_budget: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            read_rps: 0.0,
            write_rps: 0.0,
            burst: 0,
            max_connections: 16384,
            max_connections_per_client: 256,
            response_buffer_budget: crate::http::budget::DEFAULT,
        }
    }
}

/// `[gc]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    /// Run garbage collection inside the server this often. Default `"0s"` = never (use `wharf gc`).
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub interval: Duration,
    /// Data younger than this is never collected, so blobs uploaded for a manifest that is not pushed
    /// yet survive. Default `"1h"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub grace: Duration,
    /// Also delete manifests that no tag reaches (directly, through an index, or as a referrer of
    /// one that is kept). Default `false`.
    pub delete_untagged: bool,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            interval: Duration::ZERO,
            grace: Duration::from_secs(3600),
            delete_untagged: false,
        }
    }
}

/// The decision a policy makes when none of its rules is true.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum PolicyDefault {
    Allow,
    Deny,
}

/// `[repository."<name>"]`: applies to `<name>` and every repository below it (`<name>/...`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RepositoryConfig {
    /// `[repository."<name>".access_policy]`: checked after the global policy for requests on
    /// this repository (the longest configured name wins). Default: absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_policy: Option<AccessPolicyConfig>,
}

/// `[auth]`
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// How long a verified Basic credential is trusted without checking the password hash
    /// again (per worker thread). Default `"60s"`.
    #[serde(deserialize_with = "de_duration", serialize_with = "ser_duration")]
    pub credential_cache_ttl: Duration,
    /// Credentials remembered per worker thread: this many that verified, and as many that did
    /// not (kept apart, so wrong guesses never push out a user who verified). Default `1024`.
    pub credential_cache_size: usize,
    /// Password checks one client address (IPv6: one /64) may have queued or running at once;
    /// more are answered 429 before they queue, so no client can fill the verifier queue and lock
    /// the others out. Default `4`; `0` = unlimited.
    pub max_checks_per_client: u32,
    /// `[auth.identity.<id>]`: Basic-auth users; `<id>` is `identity.id` in policies.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub identity: BTreeMap<String, IdentityConfig>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            credential_cache_ttl: Duration::from_secs(60),
            credential_cache_size: 1024,
            max_checks_per_client: 4,
            identity: BTreeMap::new(),
        }
    }
}

/// `[auth.identity.<id>]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// The Basic-auth user name. Required.
    pub username: String,
    /// Argon2id hash in PHC form (`$argon2id$v=19$...`), as `wharf hash-password` prints. Required.
    pub password: String,
}

/// Most `[[server.listener]]` entries (each costs every worker an accept loop).
pub const MAX_LISTENERS: usize = 16;

/// A configuration that could not be loaded, naming the file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {key}: {message}")]
    Invalid { key: String, message: String },
}

/// Parse `"30s"`, `"500ms"`, `"2m"`, `"1h"` or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (use e.g. \"30s\", \"500ms\", \"2m\")"))?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        u => {
            return Err(format!(
                "unknown duration unit {u:?} in {s:?} (use ms, s, m or h)"
            ));
        }
    };
    Ok(d)
}

fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    if d.subsec_millis() != 0 {
        s.serialize_str(&format!("{}ms", d.as_millis()))
    } else if d.as_secs() >= 3600 && d.as_secs().is_multiple_of(3600) {
        s.serialize_str(&format!("{}h", d.as_secs() / 3600))
    } else {
        s.serialize_str(&format!("{}s", d.as_secs()))
    }
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Secs(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Secs(n) => Ok(Duration::from_secs(n)),
        Raw::Text(s) => parse_duration(&s).map_err(serde::de::Error::custom),
    }
}

impl Config {
    /// Load, resolve relative paths against the file's directory, and validate.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.into(),
            source,
        })?;
        let mut cfg = Config::parse_str(&text).map_err(|message| ConfigError::Parse {
            path: path.into(),
            message,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() && !p.as_os_str().is_empty() {
                *p = base.join(&*p);
            }
        };
        resolve(&mut cfg.storage.root);
        let listeners = cfg.server.listener.iter_mut().map(|l| &mut l.tls);
        for tls in std::iter::once(&mut cfg.server.tls)
            .chain(listeners)
            .flatten()
        {
            resolve(&mut tls.server_certificate_bundle);
            resolve(&mut tls.server_private_key);
            if let Some(ca) = &mut tls.client_ca_bundle {
                resolve(ca);
            }
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parse TOML text (no path resolution, no validation).
    pub fn parse_str(text: &str) -> Result<Config, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The embedded default: plain HTTP on 127.0.0.1:5000, storage in `./data`.
    pub fn embedded_default() -> Config {
        Config::default()
    }

    /// Checks that serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let h = &self.server.http;
        let invalid = |key: &str, message: &str| {
            Err(ConfigError::Invalid {
                key: key.to_owned(),
                message: message.to_owned(),
            })
        };
        if h.max_head_size < 1024 {
            return invalid("server.http.max_head_size", "must be at least 1024");
        }
        if h.max_target_size < 256 || h.max_target_size >= h.max_head_size {
            return invalid(
                "server.http.max_target_size",
                "must be at least 256 and below server.http.max_head_size",
            );
        }
        for (key, d) in [
            ("server.http.head_timeout", h.head_timeout),
            ("server.http.keep_alive_timeout", h.keep_alive_timeout),
            ("server.http.body_timeout", h.body_timeout),
            ("server.http.send_timeout", h.send_timeout),
        ] {
            if d.is_zero() {
                return invalid(key, "must be greater than zero");
            }
        }
        if self.server.threads > 1024 {
            return invalid(
                "server.threads",
                "must be at most 1024 (0 = available cores)",
            );
        }
        if self.server.backlog <= 0 {
            return invalid("server.backlog", "must be positive");
        }
        if self.global.max_manifest_size == 0 {
            return invalid("global.max_manifest_size", "must be greater than zero");
        }
        if self.storage.root.as_os_str().is_empty() {
            return invalid("storage.root", "must not be empty");
        }
        for (table, tls) in self.tls_tables() {
            let Some(tls) = tls else { continue };
            for (key, p) in [
                ("server_certificate_bundle", &tls.server_certificate_bundle),
                ("server_private_key", &tls.server_private_key),
            ] {
                if p.as_os_str().is_empty() {
                    return invalid(&format!("{table}.{key}"), "must name a PEM file");
                }
            }
            match &tls.client_ca_bundle {
                Some(p) if p.as_os_str().is_empty() => {
                    return invalid(&format!("{table}.client_ca_bundle"), "must name a PEM file");
                }
                None if tls.client_auth == ClientAuth::Required => {
                    return invalid(
                        &format!("{table}.client_auth"),
                        &format!(
                            "\"required\" needs {table}.client_ca_bundle (the CAs client certificates must chain to)"
                        ),
                    );
                }
                _ => {}
            }
        }
        self.validate_listeners()?;
        if self.limits.response_buffer_budget > 0 && self.limits.response_buffer_budget < 1 << 20 {
            return invalid(
                "limits.response_buffer_budget",
                "must be at least 1048576 (1 MiB), or 0 for small buffers only",
            );
        }
        if self.auth.credential_cache_size == 0 {
            return invalid("auth.credential_cache_size", "must be at least 1");
        }
        let mut usernames = BTreeMap::new();
        for (id, ident) in &self.auth.identity {
            let key = format!("auth.identity.{id}.username");
            if ident.username.is_empty() || ident.username.contains(':') {
                return invalid(&key, "must be non-empty and must not contain ':'");
            }
            if let Some(other) = usernames.insert(&ident.username, id) {
                return invalid(
                    &key,
                    &format!(
                        "{:?} is also the username of auth.identity.{other}",
                        ident.username
                    ),
                );
            }
        }
        for (key, rps) in [
            ("limits.read_rps", self.limits.read_rps),
            ("limits.write_rps", self.limits.write_rps),
        ] {
            if !rps.is_finite() || rps < 0.0 {
                return invalid(
                    key,
                    "must be a number of requests per second, 0 = unlimited",
                );
            }
        }
        if !self.server.hsts_max_age.is_zero() && self.tls_tables().all(|(_, t)| t.is_none()) {
            return invalid(
                "server.hsts_max_age",
                "needs a listener with TLS (browsers ignore HSTS over plain HTTP; it is sent on TLS listeners only)",
            );
        }
        if !self.gc.interval.is_zero() && self.gc.interval < Duration::from_secs(1) {
            return invalid("gc.interval", "must be at least 1s (or 0s = never)");
        }
        for name in self.repository.keys() {
            if name.parse::<crate::oci::RepoName>().is_err() {
                return invalid(
                    &format!("repository.{name:?}"),
                    "is not a valid repository name (lowercase path components like \"team/app\")",
                );
            }
        }
        Ok(())
    }

    /// Every TLS table with its key: `server.tls`, then `server.listener[<i>].tls`.
    pub fn tls_tables(&self) -> impl Iterator<Item = (String, Option<&TlsConfig>)> {
        let main = ("server.tls".to_owned(), self.server.tls.as_ref());
        let more = self
            .server
            .listener
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("server.listener[{i}].tls"), l.tls.as_ref()));
        std::iter::once(main).chain(more)
    }

    /// Names, and addresses that cannot be shared, of `[[server.listener]]` and `[server.admin]`.
    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if self.server.listener.len() > MAX_LISTENERS {
            return invalid(
                "server.listener".into(),
                format!("at most {MAX_LISTENERS} extra listeners"),
            );
        }
        let mut bound = vec![(
            "server.bind_address/server.port".to_owned(),
            self.server.bind_address,
            self.server.port,
        )];
        let mut names = BTreeMap::new();
        for (i, l) in self.server.listener.iter().enumerate() {
            let key = format!("server.listener[{i}].name");
            let valid = !l.name.is_empty()
                && l.name.len() <= 64
                && l.name.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !valid {
                return invalid(
                    key,
                    format!(
                        "{:?}: use 1 to 64 lowercase letters, digits, '-' or '_'",
                        l.name
                    ),
                );
            }
            if l.name == "main" || l.name == "admin" {
                return invalid(
                    key,
                    format!(
                        "{:?} is reserved ([server] is \"main\", [server.admin] is \"admin\")",
                        l.name
                    ),
                );
            }
            if let Some(other) = names.insert(l.name.as_str(), i) {
                return invalid(
                    key,
                    format!("{:?} is also the name of server.listener[{other}]", l.name),
                );
            }
            bound.push((
                format!("server.listener[{i}].bind_address/port"),
                l.bind_address,
                l.port,
            ));
        }
        if let Some(a) = &self.server.admin {
            bound.push((
                "server.admin.bind_address/port".into(),
                a.bind_address,
                a.port,
            ));
        }
        for (i, (key, addr, port)) in bound.iter().enumerate() {
            let clash = bound[..i].iter().find(|(_, a, p)| {
                *port != 0
                    && p == port
                    && a.is_ipv4() == addr.is_ipv4()
                    && (a == addr || a.is_unspecified() || addr.is_unspecified())
            });
            if let Some((other, ..)) = clash {
                return invalid(key.clone(), format!("{addr} port {port} overlaps {other}"));
            }
        }
        Ok(())
    }

    /// Worker threads to start.
    pub fn threads(&self) -> usize {
        match self.server.threads {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            n => n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documentation() {
        let c = Config::parse_str("").unwrap();
        assert_eq!(c.server.port, 5000);
        assert_eq!(c.server.bind_address.to_string(), "127.0.0.1");
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
        assert_eq!(c.server.http.max_head_size, 16384);
        assert_eq!(c.server.http.max_target_size, 8192);
        assert_eq!(c.server.http.head_timeout, Duration::from_secs(10));
        assert_eq!(c.global.max_manifest_size, 4 << 20);
        assert_eq!(c.storage.root, PathBuf::from("./data"));
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = Config::parse_str("[server]\nprot = 1\n").unwrap_err();
        assert!(e.contains("prot"), "{e}");
        let e = Config::parse_str("[storrage]\n").unwrap_err();
        assert!(e.contains("storrage"), "{e}");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("5 fortnights").is_err());
        let c = Config::parse_str(
            "[server]\nshutdown_grace = 5\n[server.http]\nhead_timeout = \"250ms\"\n",
        )
        .unwrap();
        assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
        assert_eq!(c.server.http.head_timeout, Duration::from_millis(250));
    }

    /// The defaults with every optional table present (required keys empty).
    fn defaults_with_optional_tables() -> toml::Value {
        let mut c = Config::default();
        c.server.tls = Some(TlsConfig {
            server_certificate_bundle: PathBuf::new(),
            server_private_key: PathBuf::new(),
            client_ca_bundle: Some(PathBuf::new()),
            client_auth: ClientAuth::default(),
        });
        let policy = AccessPolicyConfig {
            default: PolicyDefault::Deny,
            rules: vec![],
        };
        c.global.access_policy = Some(policy.clone());
        c.repository.insert(
            "<name>".into(),
            RepositoryConfig {
                access_policy: Some(policy),
            },
        );
        c.auth.identity.insert(
            "<id>".into(),
            IdentityConfig {
                username: String::new(),
                password: String::new(),
            },
        );
        c.server.admin = Some(AdminConfig {
            bind_address: loopback(),
            port: 0,
        });
        c.server.listener.push(ListenerConfig {
            name: String::new(),
            bind_address: loopback(),
            port: 0,
            tls: c.server.tls.clone(),
        });
        toml::Value::try_from(c).unwrap()
    }

    /// Every key the schema has, as `section.sub.key` (an array of tables as its first entry's
    /// keys), with its default.
    fn all_keys() -> Vec<(String, toml::Value)> {
        fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
            if let toml::Value::Table(t) = v {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match v {
                        toml::Value::Table(_) => walk(&key, v, out),
                        toml::Value::Array(a) if a.first().is_some_and(|e| e.is_table()) => {
                            walk(&key, &a[0], out)
                        }
                        _ => out.push((key, v.clone())),
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk("", &defaults_with_optional_tables(), &mut out);
        out
    }

    #[test]
    fn configuration_doc_lists_every_key_with_its_default() {
        let doc = include_str!("../docs/configuration.md");
        for (key, value) in all_keys() {
            // Ports of extra listeners have no default (0 here).
            let required_port = key.ends_with(".port") && key != "server.port";
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| `{key}` |")))
                .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
            // Keys without a default (empty here) are documented as required or optional.
            // `access_policy.default` has no default either (an enum, so not empty here).
            let expected = match value.as_str() {
                Some("") => "(required)".to_owned(),
                _ if required_port => "(required)".to_owned(),
                _ if key.ends_with("access_policy.default") => "(required)".to_owned(),
                _ => format!("`{value}`"),
            };
            assert!(
                row.contains(&expected) || (expected == "(required)" && row.contains("(none)")),
                "docs/configuration.md: `{key}` default should read {expected}: {row}"
            );
        }
    }

    #[test]
    fn defaults_serialize_and_parse_back() {
        let text = toml::to_string(&Config::default()).unwrap();
        let back = Config::parse_str(&text).unwrap();
        assert_eq!(back.server.http.body_timeout, Duration::from_secs(60));
    }

    #[test]
    fn tls_required_without_client_cas_names_both_keys() {
        let c = Config::parse_str(
            "[server.tls]\nserver_certificate_bundle = \"a.pem\"\nserver_private_key = \"k.pem\"\nclient_auth = \"required\"\n",
        )
        .unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.tls.client_auth"), "{e}");
        assert!(e.contains("server.tls.client_ca_bundle"), "{e}");
    }

    #[test]
    fn tls_keys_are_exactly_the_documented_ones() {
        let e = Config::parse_str(
            "[server.tls]\ncertificate = \"a.pem\"\nserver_private_key = \"k.pem\"\n",
        )
        .unwrap_err();
        assert!(e.contains("certificate"), "{e}");
        let e = Config::parse_str("[server.tls]\nserver_private_key = \"k.pem\"\n").unwrap_err();
        assert!(e.contains("server_certificate_bundle"), "{e}");
        let e = Config::parse_str(
            "[server.tls]\nserver_certificate_bundle = \"a\"\nserver_private_key = \"k\"\nclient_auth = \"sometimes\"\n",
        )
        .unwrap_err();
        assert!(e.contains("sometimes"), "{e}");
    }

    #[test]
    fn tls_paths_are_taken_from_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wharf.toml");
        std::fs::write(
            &p,
            "[server.tls]\nserver_certificate_bundle = \"certs/full.pem\"\nserver_private_key = \"/abs/k.pem\"\nclient_ca_bundle = \"ca.pem\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        let tls = c.server.tls.unwrap();
        assert_eq!(
            tls.server_certificate_bundle,
            dir.path().join("certs/full.pem")
        );
        assert_eq!(tls.server_private_key, PathBuf::from("/abs/k.pem"));
        assert_eq!(tls.client_ca_bundle.unwrap(), dir.path().join("ca.pem"));
        assert_eq!(tls.client_auth, ClientAuth::Optional);
    }

    #[test]
    fn listeners_are_validated_with_their_keys() {
        let error = |toml: &str| {
            let c = Config::parse_str(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
            c.validate().unwrap_err().to_string()
        };
        let one = |name: &str, extra: &str| {
            format!("[[server.listener]]\nname = {name:?}\nport = 4443\n{extra}")
        };
        for (toml, key, says) in [
            (one("Push", ""), "server.listener[0].name", "lowercase"),
            (one("", ""), "server.listener[0].name", "lowercase"),
            (one("main", ""), "server.listener[0].name", "reserved"),
            (one("admin", ""), "server.listener[0].name", "reserved"),
            (
                format!("{}{}", one("a", ""), one("a", "bind_address = \"::1\"\n")),
                "server.listener[1].name",
                "also the name of server.listener[0]",
            ),
            (
                one(
                    "a",
                    "[server.listener.tls]\nserver_certificate_bundle = \"c\"\nserver_private_key = \"k\"\nclient_auth = \"required\"\n",
                ),
                "server.listener[0].tls.client_auth",
                "server.listener[0].tls.client_ca_bundle",
            ),
            (
                format!("[server]\nport = 4443\n{}", one("a", "")),
                "server.listener[0].bind_address/port",
                "overlaps server.bind_address/server.port",
            ),
            (
                format!(
                    "{}[server.admin]\nbind_address = \"0.0.0.0\"\nport = 4443\n",
                    one("a", "")
                ),
                "server.admin.bind_address/port",
                "overlaps server.listener[0]",
            ),
            (
                "[server]\nhsts_max_age = \"1h\"\n".to_owned(),
                "server.hsts_max_age",
                "needs a listener with TLS",
            ),
        ] {
            let e = error(&toml);
            assert!(e.contains(key) && e.contains(says), "{toml}\n=> {e}");
        }
        let e = Config::parse_str("[[server.listener]]\nname = \"a\"\n").unwrap_err();
        assert!(e.contains("port"), "{e}");
        let e = Config::parse_str("[[server.listener]]\nname = \"a\"\nport = 1\nprot = 2\n")
            .unwrap_err();
        assert!(e.contains("prot"), "{e}");
        // Same port on another address, or port 0 twice, is fine; HSTS with only a listener's TLS too.
        let ok = "[server]\nhsts_max_age = \"1h\"\nport = 0\n[[server.listener]]\nname = \"a\"\nport = 0\n[server.listener.tls]\nserver_certificate_bundle = \"c\"\nserver_private_key = \"k\"\n[[server.listener]]\nname = \"b-2\"\nbind_address = \"127.0.0.2\"\nport = 5000\n[server.admin]\nport = 9100\n";
        Config::parse_str(ok).unwrap().validate().unwrap();
    }

    #[test]
    fn listener_tls_paths_are_taken_from_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("wharf.toml");
        std::fs::write(
            &p,
            "[[server.listener]]\nname = \"a\"\nport = 1\n[server.listener.tls]\nserver_certificate_bundle = \"c.pem\"\nserver_private_key = \"k.pem\"\n",
        )
        .unwrap();
        let c = Config::load(&p).unwrap();
        let tls = c.server.listener[0].tls.as_ref().unwrap();
        assert_eq!(tls.server_certificate_bundle, dir.path().join("c.pem"));
        assert_eq!(tls.server_private_key, dir.path().join("k.pem"));
    }

    #[test]
    fn validation_names_the_key() {
        let c = Config::parse_str("[server.http]\nmax_target_size = 99999\n").unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("server.http.max_target_size"), "{e}");
    }
}
