//! `[[upstream]]`: registries mirrored under a name prefix (pull-through caches), and their checks.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::duration::{de_duration, ser_duration};
use super::{Config, ConfigError};

/// One upstream registry: `<prefix>/<name>` in wharf is `<name>` upstream.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Names the upstream in logs, metrics and errors (letters, digits, `-`, `_`).
    pub name: String,
    /// `http://host[:port]` or `https://host[:port]` of the upstream registry (its `/v2/` API).
    pub url: String,
    /// The repository-name prefix mirrored: `hub` makes `hub/library/alpine` upstream's
    /// `library/alpine`. Pushes and deletes under it are refused.
    pub prefix: String,
    /// Requests with `?ns=<namespace>` (containerd's `hosts.toml` mirrors) for names outside
    /// every prefix go to this upstream, e.g. `"docker.io"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Names outside every prefix (and without a `?ns=` another upstream claims) go to this
    /// upstream: Docker's `registry-mirrors`. At most one upstream is the default; it makes every
    /// such name a read-only mirror. Default `false`.
    #[serde(default)]
    pub default: bool,
    /// Basic credentials for the upstream: the user, with `password_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// A file holding the upstream password (surrounding whitespace ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// PEM CA certificates an `https` upstream's certificate must chain to. Default: the
    /// system's trusted roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle: Option<PathBuf>,
    /// A PEM certificate chain wharf presents to an upstream that asks for one (mutual TLS),
    /// with `client_private_key`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<PathBuf>,
    /// The private key of `client_certificate`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_private_key: Option<PathBuf>,
    /// Longest wait for the upstream to connect or to send the next bytes. Default `"10s"`.
    #[serde(
        default = "default_timeout",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub timeout: Duration,
    /// How long a tag checked upstream is served from the store before it is checked again
    /// (with a `HEAD`). Default `"5m"`; `"0s"` checks on every request.
    #[serde(
        default = "default_check_interval",
        deserialize_with = "de_duration",
        serialize_with = "ser_duration"
    )]
    pub manifest_check_interval: Duration,
    /// Requests to this upstream at once, process-wide (each on its own connection); more wait
    /// for one to end, up to `timeout`. Default `16`.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Bytes the cached images of this upstream may take (their distinct blobs); over it, the
    /// collector evicts the images pulled least recently. Bytes, or text such as `"50GiB"`.
    /// Default `0` = no budget.
    #[serde(default, deserialize_with = "de_size")]
    pub max_size: u64,
}

/// A size in bytes: a number, or text with a unit (`B`, `KiB`, `MiB`, `GiB`, `TiB`).
fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Bytes(u64),
        Text(String),
    }
    match Raw::deserialize(d)? {
        Raw::Bytes(n) => Ok(n),
        Raw::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

/// `"50GiB"`, `"512MiB"`, `"1024"`: bytes.
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid size {s:?} (use e.g. \"50GiB\" or a number of bytes)"))?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        "TiB" => 40,
        u => {
            return Err(format!(
                "unknown size unit {u:?} in {s:?} (use B, KiB, MiB, GiB or TiB)"
            ));
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_check_interval() -> Duration {
    Duration::from_secs(300)
}

fn default_max_connections() -> usize {
    16
}

impl Config {
    /// (prefix, `max_size`) of every upstream with a budget, for the collector.
    pub fn cache_budgets(&self) -> Vec<(String, u64)> {
        self.upstream
            .iter()
            .filter(|u| u.max_size > 0)
            .map(|u| (u.prefix.clone(), u.max_size))
            .collect()
    }

    /// `[[upstream]]`: names, URLs and prefixes that cannot be confused, credentials complete.
    pub(super) fn validate_upstreams(&self) -> Result<(), ConfigError> {
        let invalid = |i: usize, key: &str, message: String| {
            Err(ConfigError::Invalid {
                key: format!("upstream[{i}].{key}"),
                message,
            })
        };
        for (i, u) in self.upstream.iter().enumerate() {
            if u.name.is_empty()
                || !u
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return invalid(
                    i,
                    "name",
                    format!("{:?}: use letters, digits, '-' and '_'", u.name),
                );
            }
            if self.upstream[..i].iter().any(|o| o.name == u.name) {
                return invalid(i, "name", format!("{:?} names two upstreams", u.name));
            }
            let url = match url::Url::parse(&u.url) {
                Ok(url) => url,
                Err(e) => return invalid(i, "url", format!("{:?}: {e}", u.url)),
            };
            if !matches!(url.scheme(), "http" | "https")
                || url.host_str().is_none()
                || url.query().is_some()
                || !url.username().is_empty()
                || !matches!(url.path(), "" | "/")
            {
                return invalid(
                    i,
                    "url",
                    format!(
                        "{:?}: give http(s)://host[:port] only (credentials go in username and \
                         password_file)",
                        u.url
                    ),
                );
            }
            if u.ca_bundle.is_some() && url.scheme() != "https" {
                return invalid(i, "ca_bundle", "only used with an https:// url".into());
            }
            if u.prefix.parse::<crate::oci::RepoName>().is_err() {
                return invalid(
                    i,
                    "prefix",
                    format!(
                        "{:?} is not a repository name (lower-case path components)",
                        u.prefix
                    ),
                );
            }
            let nested = |a: &str, b: &str| a == b || a.starts_with(&format!("{b}/"));
            if let Some(o) = self.upstream[..i]
                .iter()
                .find(|o| nested(&u.prefix, &o.prefix) || nested(&o.prefix, &u.prefix))
            {
                return invalid(
                    i,
                    "prefix",
                    format!(
                        "{:?} overlaps upstream {:?}'s prefix {:?}: give each its own",
                        u.prefix, o.name, o.prefix
                    ),
                );
            }
            if let Some(ns) = &u.namespace {
                if ns.is_empty()
                    || !ns
                        .bytes()
                        .all(|c| c.is_ascii_graphic() && c != b'/' && c != b'&')
                {
                    return invalid(
                        i,
                        "namespace",
                        format!("{ns:?}: give a registry host name such as \"docker.io\""),
                    );
                }
                if let Some(o) = self.upstream[..i]
                    .iter()
                    .find(|o| o.namespace.as_ref() == Some(ns))
                {
                    return invalid(
                        i,
                        "namespace",
                        format!("{ns:?} is upstream {:?}'s namespace already", o.name),
                    );
                }
            }
            if u.default
                && let Some(o) = self.upstream[..i].iter().find(|o| o.default)
            {
                return invalid(
                    i,
                    "default",
                    format!(
                        "upstream {:?} is the default already: at most one is",
                        o.name
                    ),
                );
            }
            if u.username.is_some() != u.password_file.is_some() {
                return invalid(
                    i,
                    "username",
                    "username and password_file go together".into(),
                );
            }
            if u.client_certificate.is_some() != u.client_private_key.is_some() {
                return invalid(
                    i,
                    "client_certificate",
                    "client_certificate and client_private_key go together".into(),
                );
            }
            if u.client_certificate.is_some() && url.scheme() != "https" {
                return invalid(
                    i,
                    "client_certificate",
                    "only used with an https:// url".into(),
                );
            }
            if u.max_connections == 0 || u.max_connections > 1024 {
                return invalid(
                    i,
                    "max_connections",
                    format!("{}: give 1 to 1024", u.max_connections),
                );
            }
            if u.timeout.is_zero() {
                return invalid(i, "timeout", "must be greater than zero".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_with_binary_units() {
        assert_eq!(super::parse_size("1024"), Ok(1024));
        assert_eq!(super::parse_size("50GiB"), Ok(50 << 30));
        assert_eq!(super::parse_size(" 512 MiB "), Ok(512 << 20));
        for bad in ["", "GiB", "5GB", "5 gib", "-1", "99999999999TiB"] {
            assert!(super::parse_size(bad).is_err(), "{bad}");
        }
    }
}
