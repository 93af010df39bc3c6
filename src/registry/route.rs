//! Request routing: method + path + query decode once into a typed `Action`. The same value is
//! what policies will authorize (`request.action` is its kebab-case name) and what dispatch matches.

use crate::action::{Action, MAX_QUERY_TAGS, Page, UploadId};
use crate::http::Method;
use crate::oci::{Algorithm, Digest, ErrorKind, OciError, Reference, RepoName, Tag};

/// Percent-decode a query component; `None` for bad escapes or non-UTF-8 results.
pub fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Decoded query parameters in order (repeats kept, e.g. several `tag=`).
pub struct Query(Vec<(String, String)>);

impl Query {
    pub fn parse(q: &str) -> Result<Query, OciError> {
        let mut v = Vec::new();
        for part in q.split('&').filter(|p| !p.is_empty()) {
            let (k, val) = part.split_once('=').unwrap_or((part, ""));
            let bad = || OciError::new(ErrorKind::BadQuery, "malformed query string");
            v.push((
                percent_decode(k).ok_or_else(bad)?,
                percent_decode(val).ok_or_else(bad)?,
            ));
        }
        Ok(Query(v))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

fn name(s: &str) -> Result<RepoName, OciError> {
    s.parse().map_err(|e: crate::oci::name::NameError| {
        OciError::new(ErrorKind::NameInvalid, e.to_string())
    })
}

fn digest(s: &str) -> Result<Digest, OciError> {
    s.parse().map_err(|e: crate::oci::digest::DigestError| {
        OciError::new(ErrorKind::DigestInvalid, format!("{s:?}: {e}"))
    })
}

fn reference(s: &str) -> Result<Reference, OciError> {
    s.parse().map_err(|e| match e {
        crate::oci::name::ReferenceError::Digest(e) => {
            OciError::new(ErrorKind::DigestInvalid, format!("{s:?}: {e}"))
        }
        crate::oci::name::ReferenceError::Name(e) => {
            OciError::new(ErrorKind::ManifestInvalid, format!("{s:?}: {e}"))
        }
    })
}

fn upload_id(s: &str) -> Result<UploadId, OciError> {
    s.parse()
        .map_err(|_| OciError::new(ErrorKind::BlobUploadUnknown, "upload unknown"))
}

fn page(q: &Query) -> Result<Page, OciError> {
    let n = match q.get("n") {
        None | Some("") => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            OciError::new(
                ErrorKind::BadQuery,
                format!("n must be a non-negative integer, got {v:?}"),
            )
        })?),
    };
    Ok(Page {
        n,
        last: q.get("last").filter(|l| !l.is_empty()).map(str::to_owned),
    })
}

fn algorithm(q: &Query) -> Result<Algorithm, OciError> {
    match q.get("digest-algorithm") {
        None => Ok(Algorithm::Sha256),
        Some(a) => a.parse().map_err(|_| {
            OciError::new(
                ErrorKind::DigestInvalid,
                format!("unsupported digest-algorithm {a:?}"),
            )
        }),
    }
}

/// A path that is not an endpoint (here).
pub fn not_found() -> OciError {
    OciError::new(ErrorKind::NotFound, "no such endpoint")
}

fn method_not_allowed() -> OciError {
    OciError::new(
        ErrorKind::MethodNotAllowed,
        "method not allowed on this endpoint",
    )
}

/// GET and HEAD only.
fn only_get(method: Method, action: Action) -> Result<Action, OciError> {
    if matches!(method, Method::Get | Method::Head) {
        Ok(action)
    } else {
        Err(method_not_allowed())
    }
}

/// Route a request to its action.
pub fn route(method: Method, path: &str, query: &str) -> Result<Action, OciError> {
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => return only_get(method, Action::GetApiVersion),
        Some(r) => r.strip_prefix('/').ok_or_else(not_found)?,
        None => {
            return match path {
                "/metrics" => only_get(method, Action::GetMetrics),
                "/healthz" => only_get(method, Action::GetHealth),
                "/readyz" => only_get(method, Action::GetReady),
                "/token" if matches!(method, Method::Get | Method::Post) => Ok(Action::GetToken),
                "/token" => Err(method_not_allowed()),
                _ => Err(not_found()),
            };
        }
    };
    let q = Query::parse(query)?;
    if rest == "_catalog" {
        return only_get(method, Action::ListCatalog { page: page(&q)? });
    }
    // Names contain slashes and may contain endpoint words: match the endpoint from the end.
    let segs: Vec<&str> = rest.split('/').collect();
    let repo = |suffix: usize| name(&segs[..segs.len() - suffix].join("/"));
    match segs.as_slice() {
        [.., _, "tags", "list"] => only_get(
            method,
            Action::ListTags {
                repository: repo(2)?,
                page: page(&q)?,
            },
        ),
        [.., _, "blobs", "uploads", id] => uploads(method, repo(3)?, id, &q),
        [.., _, "blobs", last] => blobs(method, repo(2)?, last, &q),
        [.., _, "manifests", r] => manifests(method, repo(2)?, r, &q),
        [.., _, "referrers", d] => {
            let artifact_type = q.get("artifactType").filter(|a| !a.is_empty());
            let action = Action::GetReferrers {
                repository: repo(2)?,
                digest: digest(d)?,
                artifact_type: artifact_type.map(str::to_owned),
                page: page(&q)?,
            };
            only_get(method, action)
        }
        _ => Err(not_found()),
    }
}

/// `/v2/<name>/blobs/uploads/` and `/v2/<name>/blobs/uploads/<id>`.
fn uploads(method: Method, repository: RepoName, id: &str, q: &Query) -> Result<Action, OciError> {
    if id.is_empty() {
        return start_upload(method, repository, q);
    }
    let upload = upload_id(id)?;
    match method {
        Method::Patch => Ok(Action::UpdateUpload { repository, upload }),
        Method::Put => {
            let d = q.get("digest").ok_or_else(|| {
                OciError::new(ErrorKind::DigestInvalid, "digest parameter missing")
            })?;
            let digest = digest(d)?;
            Ok(Action::CompleteUpload {
                repository,
                upload,
                digest,
            })
        }
        Method::Get | Method::Head => Ok(Action::GetUpload { repository, upload }),
        Method::Delete => Ok(Action::CancelUpload { repository, upload }),
        _ => Err(method_not_allowed()),
    }
}

/// `/v2/<name>/blobs/<digest>` (and `/v2/<name>/blobs/uploads` without the slash).
fn blobs(method: Method, repository: RepoName, last: &str, q: &Query) -> Result<Action, OciError> {
    if last == "uploads" {
        return start_upload(method, repository, q);
    }
    let digest = digest(last)?;
    match method {
        Method::Get | Method::Head => Ok(Action::GetBlob { repository, digest }),
        Method::Delete => Ok(Action::DeleteBlob { repository, digest }),
        _ => Err(method_not_allowed()),
    }
}

/// `/v2/<name>/manifests/<reference>`, with `?tag=` on PUT.
fn manifests(method: Method, repository: RepoName, r: &str, q: &Query) -> Result<Action, OciError> {
    let reference = reference(r)?;
    match method {
        Method::Get | Method::Head => Ok(Action::GetManifest {
            repository,
            reference,
        }),
        Method::Put => {
            let tag = |t: &str| {
                t.parse::<Tag>().map_err(|e| {
                    OciError::new(ErrorKind::ManifestInvalid, format!("tag {t:?}: {e}"))
                })
            };
            if q.all("tag").count() > MAX_QUERY_TAGS {
                return Err(OciError::new(
                    ErrorKind::ManifestInvalid,
                    format!(
                        "at most {MAX_QUERY_TAGS} tag= parameters per manifest PUT; push the rest in further requests"
                    ),
                ));
            }
            let mut tags = Vec::new();
            for t in q.all("tag") {
                let t = tag(t)?;
                if !tags.contains(&t) {
                    tags.push(t);
                }
            }
            Ok(Action::PutManifest {
                repository,
                reference,
                tags,
            })
        }
        Method::Delete => Ok(Action::DeleteManifest {
            tags: match &reference {
                Reference::Tag(t) => vec![t.clone()],
                Reference::Digest(_) => Vec::new(),
            },
            repository,
            reference,
        }),
        _ => Err(method_not_allowed()),
    }
}

fn start_upload(method: Method, repository: RepoName, q: &Query) -> Result<Action, OciError> {
    if method != Method::Post {
        return Err(method_not_allowed());
    }
    let algorithm = algorithm(q)?;
    if let Some(m) = q.get("mount") {
        let from = q
            .get("from")
            .filter(|f| !f.is_empty())
            .map(name)
            .transpose()?;
        return Ok(Action::MountBlob {
            repository,
            digest: digest(m)?,
            from,
            algorithm,
        });
    }
    let digest = q.get("digest").map(digest).transpose()?;
    Ok(Action::StartUpload {
        repository,
        digest,
        algorithm,
    })
}

#[cfg(test)]
mod tests;
