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
mod tests {
    use super::*;
    use crate::action::ACTIONS;

    #[test]
    fn every_action_has_its_own_index_and_name() {
        let d = format!("sha256:{}", "a".repeat(64));
        let id = "0b6f7a2e-4c1d-4e8f-9a3b-2c5d6e7f8a9b";
        let requests = [
            (Method::Get, "/v2/".to_owned(), String::new()),
            (Method::Get, format!("/v2/r/blobs/{d}"), String::new()),
            (Method::Delete, format!("/v2/r/blobs/{d}"), String::new()),
            (Method::Post, "/v2/r/blobs/uploads/".into(), String::new()),
            (
                Method::Post,
                "/v2/r/blobs/uploads/".into(),
                format!("mount={d}"),
            ),
            (
                Method::Patch,
                format!("/v2/r/blobs/uploads/{id}"),
                String::new(),
            ),
            (
                Method::Put,
                format!("/v2/r/blobs/uploads/{id}"),
                format!("digest={d}"),
            ),
            (
                Method::Get,
                format!("/v2/r/blobs/uploads/{id}"),
                String::new(),
            ),
            (
                Method::Delete,
                format!("/v2/r/blobs/uploads/{id}"),
                String::new(),
            ),
            (Method::Get, "/v2/r/manifests/v1".into(), String::new()),
            (Method::Put, "/v2/r/manifests/v1".into(), String::new()),
            (Method::Delete, "/v2/r/manifests/v1".into(), String::new()),
            (Method::Get, format!("/v2/r/referrers/{d}"), String::new()),
            (Method::Get, "/v2/r/tags/list".into(), String::new()),
            (Method::Get, "/v2/_catalog".into(), String::new()),
            (Method::Get, "/metrics".into(), String::new()),
            (Method::Get, "/healthz".into(), String::new()),
            (Method::Get, "/readyz".into(), String::new()),
        ];
        assert_eq!(requests.len(), ACTIONS.len());
        for (i, (m, path, q)) in requests.iter().enumerate() {
            let a = route(*m, path, q).unwrap();
            assert_eq!((a.index(), a.name()), (i, ACTIONS[i]), "{path}?{q}");
        }
    }

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn routes_every_endpoint() {
        assert_eq!(
            route(Method::Get, "/v2/", "").unwrap(),
            Action::GetApiVersion
        );
        assert_eq!(
            route(Method::Head, "/v2", "").unwrap().name(),
            "get-api-version"
        );
        assert_eq!(
            route(Method::Get, &format!("/v2/a/b/blobs/{D}"), "")
                .unwrap()
                .name(),
            "get-blob"
        );
        assert_eq!(
            route(Method::Delete, &format!("/v2/a/blobs/{D}"), "")
                .unwrap()
                .name(),
            "delete-blob"
        );
        assert_eq!(
            route(Method::Post, "/v2/a/blobs/uploads/", "")
                .unwrap()
                .name(),
            "start-upload"
        );
        let mono = route(
            Method::Post,
            "/v2/a/blobs/uploads/",
            &format!("digest={}", D.replace(':', "%3A")),
        )
        .unwrap();
        assert!(matches!(
            mono,
            Action::StartUpload {
                digest: Some(_),
                ..
            }
        ));
        let m = route(
            Method::Post,
            "/v2/a/blobs/uploads/",
            &format!("mount={D}&from=b%2Fc"),
        )
        .unwrap();
        assert!(matches!(m, Action::MountBlob { from: Some(ref f), .. } if f.as_str() == "b/c"));
        let id = crate::storage::random_id();
        assert_eq!(
            route(Method::Patch, &format!("/v2/a/blobs/uploads/{id}"), "")
                .unwrap()
                .name(),
            "update-upload"
        );
        assert_eq!(
            route(
                Method::Put,
                &format!("/v2/a/blobs/uploads/{id}"),
                &format!("digest={D}")
            )
            .unwrap()
            .name(),
            "complete-upload"
        );
        assert_eq!(
            route(Method::Get, &format!("/v2/a/blobs/uploads/{id}"), "")
                .unwrap()
                .name(),
            "get-upload"
        );
        assert_eq!(
            route(Method::Delete, &format!("/v2/a/blobs/uploads/{id}"), "")
                .unwrap()
                .name(),
            "cancel-upload"
        );
        assert_eq!(
            route(Method::Get, "/v2/a/manifests/latest", "")
                .unwrap()
                .name(),
            "get-manifest"
        );
        let put = route(
            Method::Put,
            &format!("/v2/a/manifests/{D}"),
            "tag=v1&tag=v2",
        )
        .unwrap();
        assert!(matches!(put, Action::PutManifest { ref tags, .. } if tags.len() == 2));
        assert_eq!(
            route(Method::Delete, "/v2/a/manifests/v1", "")
                .unwrap()
                .name(),
            "delete-manifest"
        );
        assert_eq!(
            route(
                Method::Get,
                &format!("/v2/a/referrers/{D}"),
                "artifactType=x%2By"
            )
            .unwrap()
            .name(),
            "get-referrers"
        );
        assert_eq!(
            route(Method::Get, "/v2/a/tags/list", "n=2&last=b")
                .unwrap()
                .name(),
            "list-tags"
        );
        assert_eq!(
            route(Method::Get, "/v2/_catalog", "n=1").unwrap().name(),
            "list-catalog"
        );
    }

    #[test]
    fn query_tags_are_capped_and_deduplicated() {
        let q = |n: usize| {
            (0..n)
                .map(|i| format!("tag=t{i}"))
                .collect::<Vec<_>>()
                .join("&")
        };
        let ok = route(Method::Put, "/v2/a/manifests/latest", &q(MAX_QUERY_TAGS)).unwrap();
        assert_eq!(
            ok.tags().len(),
            MAX_QUERY_TAGS + 1,
            "the path tag and every query tag"
        );
        let e = route(
            Method::Put,
            "/v2/a/manifests/latest",
            &q(MAX_QUERY_TAGS + 1),
        )
        .unwrap_err();
        assert_eq!((e.kind, e.status()), (ErrorKind::ManifestInvalid, 400));
        let dup = route(
            Method::Put,
            "/v2/a/manifests/latest",
            "tag=x&tag=latest&tag=x",
        )
        .unwrap();
        let names: Vec<&str> = dup.tags().iter().map(|t| t.as_str()).collect();
        assert_eq!(names, ["latest", "x"]);
        let del = route(Method::Delete, "/v2/a/manifests/latest", "").unwrap();
        assert_eq!(del.tags().len(), 1);
        assert!(
            route(Method::Get, "/v2/a/manifests/latest", "")
                .unwrap()
                .tags()
                .is_empty()
        );
    }

    #[test]
    fn repository_names_may_contain_endpoint_words() {
        let a = route(Method::Get, "/v2/blobs/manifests/manifests/v1", "").unwrap();
        assert!(
            matches!(a, Action::GetManifest { ref repository, .. } if repository.as_str() == "blobs/manifests")
        );
    }

    #[test]
    fn rejects_traversal_and_bad_ids() {
        let e = route(Method::Get, "/v2/../etc/manifests/latest", "").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NameInvalid);
        let e = route(Method::Get, "/v2/a%2f..%2fb/manifests/latest", "").unwrap_err();
        assert_eq!(e.kind, ErrorKind::NameInvalid);
        let e = route(Method::Get, "/v2/a/blobs/sha256:..%2f..", "").unwrap_err();
        assert_eq!(e.kind, ErrorKind::DigestInvalid);
        let e = route(Method::Patch, "/v2/a/blobs/uploads/..", "").unwrap_err();
        assert_eq!(e.kind, ErrorKind::BlobUploadUnknown);
        let e = route(
            Method::Put,
            &format!("/v2/a/blobs/uploads/{}", crate::storage::random_id()),
            "",
        )
        .unwrap_err();
        assert_eq!(e.kind, ErrorKind::DigestInvalid);
        assert_eq!(route(Method::Get, "/v3/", "").unwrap_err().status(), 404);
        assert_eq!(
            route(Method::Post, "/v2/a/manifests/x", "")
                .unwrap_err()
                .status(),
            405
        );
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%3Ab%2fc").as_deref(), Some("a:b/c"));
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(percent_decode("%"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
