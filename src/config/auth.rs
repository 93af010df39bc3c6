//! `[auth.token]` (wharf's own token endpoint, the Docker registry token flow) and
//! `[auth.oidc.<name>]` (OIDC issuers whose ID tokens are exchanged there), and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{de_duration, ser_duration};
use super::{Config, ConfigError};

/// `[auth.token]`: with it, 401s send clients to `GET/POST /token` for a signed registry token.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The `service` of challenges and tokens (their audience), e.g. the registry's host name.
    /// Required.
    pub service: String,
    /// PKCS#8 PEM private key (Ed25519 or ECDSA P-256) that signs tokens; `wharf cert
    /// token-key` makes one. Replaced and reloaded, the old key keeps verifying the tokens it
    /// signed until they expire. Required.
    pub signing_key: PathBuf,
    /// How long a token (and a refresh token from `docker login`) is valid. Default `"1h"`;
    /// between `"1m"` and `"24h"`.
    #[serde(
        default = "default_ttl",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub ttl: Duration,
    /// The token endpoint's URL in challenges (`realm`). Default: `https://<Host>/token` (or
    /// `http://` on a plain listener) from each request's `Host` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
}

fn default_ttl() -> Duration {
    Duration::from_secs(3600)
}

/// `[auth.oidc.<name>]`: an OIDC issuer (a CI system) whose ID tokens log in as password of user
/// `<name>` (`docker login -u <name>`); policies see `identity.oidc.provider == '<name>'`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The `iss` its tokens carry, an `https://` URL (its discovery document is under it).
    /// Required.
    pub issuer: String,
    /// The `aud` its tokens must include (what the CI job asks its token for). Required.
    pub audience: String,
    /// Where its signing keys are published. Default: `jwks_uri` of
    /// `<issuer>/.well-known/openid-configuration`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// PEM CA certificates the issuer's TLS certificate must chain to. Default: the system's
    /// trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// Tolerance for clocks apart when checking `exp`, `nbf` and `iat`. Default `"60s"`, at
    /// most `"10m"`.
    #[serde(
        default = "default_skew",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub clock_skew: Duration,
    /// Signature algorithms accepted. Default `["RS256", "ES256", "EdDSA"]`.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
}

fn default_skew() -> Duration {
    Duration::from_secs(60)
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(str::to_owned).to_vec()
}

impl Config {
    /// `[auth.token]` and `[auth.oidc.<name>]` values (files are read when the server builds).
    pub(super) fn validate_token_auth(&self) -> Result<(), ConfigError> {
        let invalid = |key: String, message: String| Err(ConfigError::Invalid { key, message });
        if let Some(t) = &self.auth.token {
            if t.service.trim().is_empty() || t.service.contains(['"', '\\']) {
                return invalid(
                    "auth.token.service".into(),
                    "must be a non-empty name without quotes, e.g. the registry's host name".into(),
                );
            }
            if t.signing_key.as_os_str().is_empty() {
                return invalid(
                    "auth.token.signing_key".into(),
                    "must name a PEM private key; make one with `wharf cert token-key`".into(),
                );
            }
            if t.ttl < Duration::from_secs(60) || t.ttl > Duration::from_secs(86_400) {
                return invalid("auth.token.ttl".into(), "must be between 1m and 24h".into());
            }
            if let Some(r) = &t.realm {
                let ok = url::Url::parse(r)
                    .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
                if !ok || r.contains('"') {
                    return invalid(
                        "auth.token.realm".into(),
                        format!("{r:?} is not an http(s) URL"),
                    );
                }
            }
        }
        if !self.auth.oidc.is_empty() && self.auth.token.is_none() {
            return invalid(
                "auth.oidc".into(),
                "OIDC ID tokens are exchanged at the token endpoint: configure [auth.token] too"
                    .into(),
            );
        }
        for (name, o) in &self.auth.oidc {
            let key = |k: &str| format!("auth.oidc.{name}.{k}");
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !valid_name {
                return invalid(
                    format!("auth.oidc.{name}"),
                    "the provider name may hold letters, digits, '-' and '_' only".into(),
                );
            }
            if let Some((id, _)) = self.auth.identity.iter().find(|(_, i)| i.username == *name) {
                return invalid(
                    format!("auth.oidc.{name}"),
                    format!(
                        "{name:?} is also the username of auth.identity.{id}; `docker login -u {name}` would be ambiguous"
                    ),
                );
            }
            for (k, u) in [
                ("issuer", Some(&o.issuer)),
                ("jwks_uri", o.jwks_uri.as_ref()),
            ] {
                let Some(u) = u else { continue };
                match url::Url::parse(u) {
                    Ok(p) if p.scheme() == "https" && p.has_host() => {}
                    _ => {
                        return invalid(
                            key(k),
                            format!(
                                "{u:?} is not an https:// URL (keys are fetched over TLS only)"
                            ),
                        );
                    }
                }
            }
            if o.audience.is_empty() {
                return invalid(key("audience"), "must not be empty".into());
            }
            if o.clock_skew > Duration::from_secs(600) {
                return invalid(key("clock_skew"), "must be at most 10m".into());
            }
            if o.algorithms.is_empty() {
                return invalid(
                    key("algorithms"),
                    "must name at least one of RS256, ES256, EdDSA".into(),
                );
            }
            for a in &o.algorithms {
                if crate::token::jws::Alg::parse(a).is_none() {
                    return invalid(
                        key("algorithms"),
                        format!("{a:?} is not supported (RS256, ES256, EdDSA; never none or HMAC)"),
                    );
                }
            }
            if o.ca_bundle
                .as_ref()
                .is_some_and(|p| p.as_os_str().is_empty())
            {
                return invalid(key("ca_bundle"), "must name a PEM file".into());
            }
        }
        Ok(())
    }
}
