//! Paginated tag and catalog listings, and the referrers index.

use super::{HandlerResult, Registry};
use crate::action::Page;
use crate::http::Response;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, RepoName};

/// Apply `last`/`n` to a sorted list; returns the page and, when more remain, the next `last`.
fn paginate(items: Vec<String>, page: &Page) -> (Vec<String>, Option<String>) {
    let start = match &page.last {
        Some(last) => items.partition_point(|i| i <= last),
        None => 0,
    };
    let mut rest: Vec<String> = items.into_iter().skip(start).collect();
    match page.n {
        Some(n) if rest.len() > n => {
            rest.truncate(n);
            let next = rest.last().cloned();
            (rest, next)
        }
        _ => (rest, None),
    }
}

/// `Link: <path?n=N&last=L>; rel="next"`.
fn link(path: &str, n: Option<usize>, last: &str) -> String {
    let mut q = String::new();
    if let Some(n) = n {
        q.push_str(&format!("n={n}&"));
    }
    q.push_str("last=");
    for b in last.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            q.push(char::from(b));
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    format!("<{path}?{q}>; rel=\"next\"")
}

impl Registry {
    pub(super) fn list_tags(&self, repo: &RepoName, page: &Page) -> HandlerResult {
        let (tags, next) = paginate(self.storage.list_tags(repo)?, page);
        let body = serde_json::to_vec(&serde_json::json!({ "name": repo.as_str(), "tags": tags }))
            .expect("json");
        let mut r = Response::new(200).json(body);
        if let Some(last) = next {
            r = r.header(
                "Link",
                link(&format!("/v2/{repo}/tags/list"), page.n, &last),
            );
        }
        Ok(r)
    }

    pub(super) fn list_catalog(&self, page: &Page) -> HandlerResult {
        let (repos, next) = paginate(self.storage.catalog()?, page);
        let body = serde_json::to_vec(&serde_json::json!({ "repositories": repos })).expect("json");
        let mut r = Response::new(200).json(body);
        if let Some(last) = next {
            r = r.header("Link", link("/v2/_catalog", page.n, &last));
        }
        Ok(r)
    }

    pub(super) fn get_referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> HandlerResult {
        let manifests = filter_referrers(self.storage.referrers(repo, subject)?, artifact_type);
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        let mut r = Response::new(200).bytes(OCI_INDEX, serde_json::to_vec(&index).expect("json"));
        if artifact_type.is_some() {
            r = r.header("OCI-Filters-Applied", "artifactType");
        }
        Ok(r)
    }
}

/// The stored referrer descriptors that parse as JSON objects and, with `artifact_type`, carry
/// exactly that `artifactType`.
pub fn filter_referrers(
    stored: Vec<Vec<u8>>,
    artifact_type: Option<&str>,
) -> Vec<serde_json::Value> {
    stored
        .iter()
        .filter_map(|raw| serde_json::from_slice::<serde_json::Value>(raw).ok())
        .filter(|desc| desc.is_object())
        .filter(|desc| {
            artifact_type
                .is_none_or(|want| desc.get("artifactType").and_then(|a| a.as_str()) == Some(want))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn pagination() {
        let all = v(&["a", "b", "c", "d"]);
        assert_eq!(paginate(all.clone(), &Page::default()), (all.clone(), None));
        assert_eq!(
            paginate(
                all.clone(),
                &Page {
                    n: Some(2),
                    last: None
                }
            ),
            (v(&["a", "b"]), Some("b".into()))
        );
        assert_eq!(
            paginate(
                all.clone(),
                &Page {
                    n: Some(2),
                    last: Some("b".into())
                }
            ),
            (v(&["c", "d"]), None)
        );
        assert_eq!(
            paginate(
                all.clone(),
                &Page {
                    n: None,
                    last: Some("bb".into())
                }
            ),
            (v(&["c", "d"]), None)
        );
        assert_eq!(
            paginate(
                all,
                &Page {
                    n: Some(0),
                    last: None
                }
            ),
            (vec![], None)
        );
    }

    #[test]
    fn link_escapes_last() {
        assert_eq!(
            link("/v2/_catalog", Some(2), "a/b"),
            "</v2/_catalog?n=2&last=a%2Fb>; rel=\"next\""
        );
    }
}
