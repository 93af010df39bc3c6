//! The TOML configuration: the `Config` root and loading here; the schema per table with
//! documented defaults (`server`, `tables`), durations (`duration`), and validation with errors that
//! name the key (`validate`). Unknown keys are rejected.

mod auth;
mod duration;
mod server;
mod tables;
#[cfg(test)]
mod tests;
mod upstream;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use auth::{OidcConfig, TokenConfig};
pub use duration::parse_duration;
pub use server::*;
pub use tables::*;
pub use upstream::UpstreamConfig;

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
    /// `[[upstream]]`: registries mirrored under a name prefix (pull-through caches).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub upstream: Vec<UpstreamConfig>,
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
        if let Some(s3) = cfg.storage.s3.as_mut() {
            for p in [
                &mut s3.access_key_id_file,
                &mut s3.secret_access_key_file,
                &mut s3.session_token_file,
                &mut s3.web_identity_token_file,
                &mut s3.ca_bundle,
            ]
            .into_iter()
            .flatten()
            {
                resolve(p);
            }
        }
        if let Some(t) = cfg.auth.token.as_mut() {
            resolve(&mut t.signing_key);
        }
        for o in cfg.auth.oidc.values_mut() {
            if let Some(p) = o.ca_bundle.as_mut() {
                resolve(p);
            }
        }
        for u in &mut cfg.upstream {
            for p in [
                &mut u.password_file,
                &mut u.ca_bundle,
                &mut u.client_certificate,
                &mut u.client_private_key,
            ]
            .into_iter()
            .flatten()
            {
                resolve(p);
            }
        }
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
}
