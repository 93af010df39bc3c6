//! Pull-through mirrors (`[[upstream]]`): repositories under an upstream's prefix are served from
//! the local store, and what the store lacks is fetched from the upstream registry, checked
//! against its digest, stored as ordinary content, then served. This module is the upstream side:
//! which upstream mirrors a name, and the requests to it (over `crate::client`, on the worker's
//! runtime). The handlers are in `registry::mirror`.

pub mod flight;
mod permits;
pub mod token;
mod upstream;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub use upstream::{Answer, OUTCOMES, Upstream, UpstreamError};

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

impl Mirror {
    /// The upstreams of the configuration (`None` without any). Host names are resolved here,
    /// at startup; an error names the key.
    pub fn new(cfg: &[UpstreamConfig], spool_dir: PathBuf) -> Result<Option<Mirror>, String> {
        if cfg.is_empty() {
            return Ok(None);
        }
        let upstreams: Vec<Arc<Upstream>> = cfg
            .iter()
            .enumerate()
            .map(|(i, u)| Upstream::new(i, u).map(Arc::new))
            .collect::<Result<_, _>>()?;
        *REGISTERED.lock().unwrap_or_else(|p| p.into_inner()) = upstreams.clone();
        Ok(Some(Mirror {
            upstreams,
            spool_dir,
        }))
    }

    /// The upstream mirroring `repo` (asked with `query`), and whether `repo` is under its
    /// prefix: `repo` under a prefix is that upstream's; a name outside every prefix goes to the
    /// upstream whose `namespace` the query's `ns=` names, else to the default upstream.
    fn pick(&self, repo: &RepoName, query: &str) -> Option<(&Arc<Upstream>, Option<String>)> {
        let prefixed = self.upstreams.iter().find_map(|u| {
            let rest = repo.as_str().strip_prefix(&u.prefix)?.strip_prefix('/')?;
            Some((u, Some(rest.to_owned())))
        });
        if prefixed.is_some() {
            return prefixed;
        }
        let ns = query.split('&').find_map(|p| p.strip_prefix("ns="));
        ns.and_then(|ns| {
            self.upstreams
                .iter()
                .find(|u| u.namespace.as_deref() == Some(ns))
        })
        .or_else(|| self.upstreams.iter().find(|u| u.default))
        .map(|u| (u, None))
    }

    /// The name of the upstream whose mirror serves `repo` (asked with `query`), if any.
    pub fn upstream_of(&self, repo: &RepoName, query: &str) -> Option<&str> {
        self.pick(repo, query).map(|(u, _)| u.name.as_str())
    }

    /// Where a request for `repo` (asked with `query`) goes: the upstream, the name there, and
    /// where its content is kept here (a name outside every prefix is kept under the prefix of
    /// the upstream it goes to).
    pub fn route(&self, repo: &RepoName, query: &str) -> Option<Route> {
        let (u, rest) = self.pick(repo, query)?;
        let (name, local) = match rest {
            Some(rest) => (rest, repo.clone()),
            // A name too long once prefixed is not mirrored (it is refused as a name later).
            None => (
                repo.to_string(),
                format!("{}/{repo}", u.prefix).parse().ok()?,
            ),
        };
        Some(Route {
            upstream: Arc::clone(u),
            name,
            local,
        })
    }
}

impl Upstream {
    /// The manifest `name:reference` upstream: its media type and bytes (at most `limit`).
    pub async fn manifest(
        &self,
        name: &str,
        reference: &Reference,
        limit: u64,
    ) -> Result<(String, Vec<u8>), UpstreamError> {
        let target = format!("/v2/{name}/manifests/{reference}");
        let a = self.send("GET", name, &target, Some(&accept())).await?;
        let media_type = a.resp.header("Content-Type").unwrap_or_default().to_owned();
        let bytes = a.resp.body.bytes(limit as usize).await.map_err(|e| {
            UpstreamError::Unavailable(format!("{}: manifest {name}:{reference}: {e}", self.url))
        })?;
        self.stats
            .bytes
            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok((media_type, bytes))
    }

    /// The digest `name:tag` has upstream now (asked with a `HEAD`), if the upstream says.
    pub async fn tag_digest(&self, name: &str, tag: &str) -> Result<Option<Digest>, UpstreamError> {
        let target = format!("/v2/{name}/manifests/{tag}");
        let a = self.send("HEAD", name, &target, Some(&accept())).await?;
        let digest = a
            .resp
            .header("Docker-Content-Digest")
            .and_then(|d| d.parse().ok());
        // No body: read to its end, the connection goes back to the pool.
        let _ = a.resp.body.bytes(0).await;
        Ok(digest)
    }

    /// The blob `digest` of `name` upstream, its body still to read.
    pub async fn blob(&self, name: &str, digest: &Digest) -> Result<Answer, UpstreamError> {
        self.send("GET", name, &format!("/v2/{name}/blobs/{digest}"), None)
            .await
    }
}

/// The `Accept` header for manifests.
fn accept() -> String {
    ACCEPT.join(", ")
}

/// Every upstream's name and counters, for `/metrics` (the latest `Mirror` of the process).
static REGISTERED: Mutex<Vec<Arc<Upstream>>> = Mutex::new(Vec::new());

/// Calls `f` with each configured upstream.
pub fn each_upstream(mut f: impl FnMut(&Upstream)) {
    for u in REGISTERED.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        f(u);
    }
}

/// The mirror's lines of `/metrics`: per upstream, its requests by outcome, tokens fetched,
/// connections in use, blobs fetched and requests that joined a fetch; fetches under way.
pub fn write_metrics(out: &mut String) {
    use std::fmt::Write;
    use std::sync::atomic::Ordering::Relaxed;
    let mut lines: [String; 7] = Default::default();
    each_upstream(|u| {
        let n = &u.name;
        for (o, c) in OUTCOMES.iter().zip(&u.stats.requests) {
            let _ = writeln!(
                lines[0],
                "wharf_mirror_upstream_requests_total{{upstream=\"{n}\",outcome=\"{o}\"}} {}",
                c.load(Relaxed)
            );
        }
        for (i, c) in u.stats.cache.iter().enumerate() {
            let kind = if i < 2 { "manifest" } else { "blob" };
            let outcome = if i % 2 == 0 { "hit" } else { "miss" };
            let _ = writeln!(
                lines[5],
                "wharf_mirror_cache_total{{upstream=\"{n}\",kind=\"{kind}\",outcome=\"{outcome}\"}} {}",
                c.load(Relaxed)
            );
        }
        // One sample per upstream: (line, family, value).
        let single = [
            (
                1,
                "wharf_mirror_upstream_tokens_total",
                u.stats.tokens.load(Relaxed),
            ),
            (
                2,
                "wharf_mirror_upstream_connections_in_use",
                u.connections_in_use() as u64,
            ),
            (
                3,
                "wharf_mirror_fetches_total",
                u.stats.fetches.load(Relaxed),
            ),
            (
                4,
                "wharf_mirror_coalesced_total",
                u.stats.coalesced.load(Relaxed),
            ),
            (
                6,
                "wharf_mirror_upstream_bytes_total",
                u.stats.bytes.load(Relaxed),
            ),
        ];
        for (i, family, v) in single {
            let _ = writeln!(lines[i], "{family}{{upstream=\"{n}\"}} {v}");
        }
    });
    let help = [
        "wharf_mirror_upstream_requests_total counter Requests to each upstream by outcome (ok, not_found, refused, unavailable, throttled: a 429; shed: not sent, paused after a 429 or no connection free).",
        "wharf_mirror_upstream_tokens_total counter Bearer tokens fetched from each upstream's token realm (cached until shortly before they expire).",
        "wharf_mirror_upstream_connections_in_use gauge Requests under way to each upstream (at most its max_connections).",
        "wharf_mirror_fetches_total counter Blobs fetched from each upstream (one fetch per blob however many clients wait for it).",
        "wharf_mirror_coalesced_total counter Blob requests that read a fetch another request had started instead of fetching again.",
        "wharf_mirror_cache_total counter Manifest and blob requests through each mirror answered from the store (hit) or from the upstream (miss; a blob miss may join a fetch under way).",
        "wharf_mirror_upstream_bytes_total counter Body bytes received from each upstream (manifests and blobs).",
    ];
    for (h, l) in help.iter().zip(lines) {
        let (name, rest) = h.split_once(' ').unwrap_or_default();
        let (kind, text) = rest.split_once(' ').unwrap_or_default();
        let _ = write!(out, "# HELP {name} {text}\n# TYPE {name} {kind}\n{l}");
    }
    let _ = writeln!(
        out,
        "# HELP wharf_mirror_fetches_in_flight Blob fetches from upstreams under way (at most {}).\n# TYPE wharf_mirror_fetches_in_flight gauge\nwharf_mirror_fetches_in_flight {}",
        flight::MAX_FLIGHTS,
        flight::in_flight()
    );
}
