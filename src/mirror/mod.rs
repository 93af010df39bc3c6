//! Pull-through mirrors (`[[upstream]]`): repositories under an upstream's prefix are served from
//! the local store, and what the store lacks is fetched from the upstream registry, checked
//! against its digest, stored as ordinary content, then served. This module is the upstream side:
//! which upstream mirrors a name, and the requests to it (over `crate::client`, on the worker's
//! runtime). The handlers are in `registry::mirror`.

pub mod flight;

use std::io;
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::sync::Arc;

use crate::client::{self, Endpoint, Payload, Request};
use crate::config::UpstreamConfig;
use crate::oci::manifest::{DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST};
use crate::oci::{Digest, Reference, RepoName};

/// Manifest media types asked for upstream (what wharf stores and serves).
const ACCEPT: [&str; 4] = [OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST];

/// Every configured upstream.
pub struct Mirror {
    upstreams: Vec<Arc<Upstream>>,
    /// Where blobs on their way from an upstream are spooled (unnamed files).
    pub spool_dir: PathBuf,
}

/// Where a mirrored request goes.
pub struct Route {
    pub upstream: Arc<Upstream>,
    /// The repository's name upstream.
    pub name: String,
    /// Where its content is kept here (under the upstream's prefix).
    pub local: RepoName,
}

/// One upstream registry and how to reach it.
pub struct Upstream {
    pub name: String,
    /// The mirrored prefix, e.g. `hub`.
    prefix: String,
    /// `?ns=` this upstream answers for (names outside every prefix).
    namespace: Option<String>,
    /// Names outside every prefix come here.
    default: bool,
    pub url: String,
    endpoint: Endpoint,
    /// `Authorization` sent with every request (Basic), if configured.
    authorization: Option<String>,
}

/// What went wrong upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The upstream does not have it (404).
    #[error("not found upstream")]
    NotFound,
    /// The upstream could not be reached, timed out, or failed (5xx, 429).
    #[error("upstream unavailable: {0}")]
    Unavailable(String),
    /// The upstream refused (401, 403, other 4xx): the status and its body.
    #[error("upstream answered {0}: {1}")]
    Refused(u16, String),
}

impl Mirror {
    /// The upstreams of the configuration (`None` without any). Host names are resolved here,
    /// at startup; an error names the key.
    pub fn new(cfg: &[UpstreamConfig], spool_dir: PathBuf) -> Result<Option<Mirror>, String> {
        if cfg.is_empty() {
            return Ok(None);
        }
        let upstreams = cfg
            .iter()
            .enumerate()
            .map(|(i, u)| Upstream::new(i, u).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Some(Mirror {
            upstreams,
            spool_dir,
        }))
    }

    /// The upstream mirroring `repo` (asked with `query`), the name there, and where its content
    /// is kept here: `repo` under a prefix is that upstream's; a name outside every prefix goes
    /// to the upstream whose `namespace` the query's `ns=` names, else to the default upstream,
    /// and is kept under that upstream's prefix.
    pub fn route(&self, repo: &RepoName, query: &str) -> Option<Route> {
        let prefixed = self.upstreams.iter().find_map(|u| {
            let rest = repo.as_str().strip_prefix(&u.prefix)?.strip_prefix('/')?;
            Some(Route {
                upstream: Arc::clone(u),
                name: rest.to_owned(),
                local: repo.clone(),
            })
        });
        if prefixed.is_some() {
            return prefixed;
        }
        let ns = query.split('&').find_map(|p| p.strip_prefix("ns="));
        let u = ns
            .and_then(|ns| {
                self.upstreams
                    .iter()
                    .find(|u| u.namespace.as_deref() == Some(ns))
            })
            .or_else(|| self.upstreams.iter().find(|u| u.default))?;
        // A name too long once prefixed is not mirrored (it is refused as a name later).
        let local = format!("{}/{repo}", u.prefix).parse().ok()?;
        Some(Route {
            upstream: Arc::clone(u),
            name: repo.to_string(),
            local,
        })
    }
}

impl Upstream {
    fn new(i: usize, cfg: &UpstreamConfig) -> Result<Upstream, String> {
        let key = |k: &str| format!("upstream[{i}].{k}");
        let url = url::Url::parse(&cfg.url).map_err(|e| format!("{}: {e}", key("url")))?;
        let host = url
            .host_str()
            .ok_or_else(|| format!("{}: no host", key("url")))?;
        let port = url.port_or_known_default().unwrap_or(80);
        let tls = if url.scheme() == "https" {
            let config = crate::tls::client_config(cfg.ca_bundle.as_deref(), "upstream.ca_bundle")
                .map_err(|e| format!("{}: {e}", key("ca_bundle")))?;
            let name = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls_pki_types::ServerName::try_from(name.to_owned())
                .map_err(|e| format!("{} {:?}: {e}", key("url"), cfg.url))?;
            Some((config, name))
        } else {
            None
        };
        let addr = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("{} {:?}: {host}: {e}", key("url"), cfg.url))?
            .next()
            .ok_or_else(|| format!("{} {:?}: {host}: no address", key("url"), cfg.url))?;
        let authorization = match (&cfg.username, &cfg.password_file) {
            (Some(user), Some(file)) => {
                let password = std::fs::read_to_string(file).map_err(|e| {
                    format!(
                        "{}: cannot read {}: {e}",
                        key("password_file"),
                        file.display()
                    )
                })?;
                use base64ct::{Base64, Encoding};
                let pair = format!("{user}:{}", password.trim());
                Some(format!("Basic {}", Base64::encode_string(pair.as_bytes())))
            }
            _ => None,
        };
        Ok(Upstream {
            name: cfg.name.clone(),
            prefix: cfg.prefix.clone(),
            namespace: cfg.namespace.clone(),
            default: cfg.default,
            url: cfg.url.trim_end_matches('/').to_owned(),
            endpoint: Endpoint {
                addr,
                host: match url.port() {
                    Some(p) => format!("{host}:{p}"),
                    None => host.to_owned(),
                },
                connect_timeout: cfg.timeout,
                io_timeout: cfg.timeout,
                tls,
            },
            authorization,
        })
    }

    /// GET `target`, the response head once it is a success (the body still to read).
    async fn get(
        &self,
        target: &str,
        accept: Option<String>,
    ) -> Result<client::Response, UpstreamError> {
        let mut headers = Vec::new();
        if let Some(a) = &self.authorization {
            headers.push(("Authorization", a.clone()));
        }
        if let Some(a) = accept {
            headers.push(("Accept", a));
        }
        let req = Request {
            method: "GET",
            target,
            headers,
            body: Payload::NONE,
        };
        let resp = client::send(&self.endpoint, &req)
            .await
            .map_err(|e| UpstreamError::Unavailable(format!("{}: {e}", self.url)))?;
        match resp.status {
            200 => Ok(resp),
            404 => Err(UpstreamError::NotFound),
            s @ (429 | 500..=599) => Err(UpstreamError::Unavailable(format!(
                "{} answered {s}",
                self.url
            ))),
            s => {
                let body = resp.body.bytes(4096).await.unwrap_or_default();
                Err(UpstreamError::Refused(
                    s,
                    String::from_utf8_lossy(&body).into_owned(),
                ))
            }
        }
    }

    /// The manifest `name:reference` upstream: its media type and bytes (at most `limit`).
    pub async fn manifest(
        &self,
        name: &str,
        reference: &Reference,
        limit: u64,
    ) -> Result<(String, Vec<u8>), UpstreamError> {
        let target = format!("/v2/{name}/manifests/{reference}");
        let resp = self.get(&target, Some(ACCEPT.join(", "))).await?;
        let media_type = resp.header("Content-Type").unwrap_or_default().to_owned();
        let bytes = resp.body.bytes(limit as usize).await.map_err(|e| {
            UpstreamError::Unavailable(format!("{}: manifest {name}:{reference}: {e}", self.url))
        })?;
        Ok((media_type, bytes))
    }

    /// The blob `digest` of `name` upstream, its body still to read.
    pub async fn blob(
        &self,
        name: &str,
        digest: &Digest,
    ) -> Result<client::Response, UpstreamError> {
        self.get(&format!("/v2/{name}/blobs/{digest}"), None).await
    }
}

impl From<io::Error> for UpstreamError {
    fn from(e: io::Error) -> UpstreamError {
        UpstreamError::Unavailable(e.to_string())
    }
}
