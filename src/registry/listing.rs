//! Paginated tag and catalog listings, and the referrers index.

use super::{HandlerResult, Registry};
use crate::action::Page;
use crate::http::Response;
use crate::oci::manifest::OCI_INDEX;
use crate::oci::{Digest, RepoName};

/// The `last` of the next page's link: the page's last item, when more follow.
fn next_last(items: &[String], more: bool) -> Option<String> {
    items.last().filter(|_| more).cloned()
}

/// `Link: <path?n=N&last=L>; rel="next"`.
fn link(path: &str, n: Option<usize>, last: &str) -> String {
    link_with(&format!("{path}?"), n, last)
}

/// `Link: <start n=N&last=L>; rel="next"`, `start` ending in `?` or `&`.
fn link_with(start: &str, n: Option<usize>, last: &str) -> String {
    let mut q = String::new();
    if let Some(n) = n {
        q.push_str(&format!("n={n}&"));
    }
    q.push_str("last=");
    q.push_str(&escape(last));
    format!("<{start}{q}>; rel=\"next\"")
}

/// Percent-encoding for a query value.
fn escape(value: &str) -> String {
    let mut q = String::new();
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_') {
            q.push(char::from(b));
        } else {
            q.push_str(&format!("%{b:02X}"));
        }
    }
    q
}

impl Registry {
    pub(super) async fn list_tags(&self, repo: &RepoName, page: &Page) -> HandlerResult {
        let n = page.n.unwrap_or(usize::MAX);
        let (tags, more) = self
            .storage
            .list_tags(repo, page.last.as_deref(), n)
            .await?;
        let next = next_last(&tags, more);
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

    pub(super) async fn list_catalog(&self, page: &Page) -> HandlerResult {
        let n = page.n.unwrap_or(usize::MAX);
        let (repos, more) = self.storage.catalog_page(page.last.as_deref(), n).await?;
        let next = next_last(&repos, more);
        let body = serde_json::to_vec(&serde_json::json!({ "repositories": repos })).expect("json");
        let mut r = Response::new(200).json(body);
        if let Some(last) = next {
            r = r.header("Link", link("/v2/_catalog", page.n, &last));
        }
        Ok(r)
    }

    pub(super) async fn get_referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
        page: &Page,
    ) -> HandlerResult {
        let n = page.n.unwrap_or(usize::MAX);
        let (stored, next) = self
            .storage
            .referrers(repo, subject, page.last.as_deref(), n)
            .await?;
        let manifests = filter_referrers(stored, artifact_type);
        let index = serde_json::json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests });
        let mut r = Response::new(200).bytes(OCI_INDEX, serde_json::to_vec(&index).expect("json"));
        if artifact_type.is_some() {
            r = r.header("OCI-Filters-Applied", "artifactType");
        }
        if let Some(last) = &next {
            // The filter goes on to the next page.
            let filter =
                artifact_type.map_or(String::new(), |a| format!("artifactType={}&", escape(a)));
            let start = format!("/v2/{repo}/referrers/{subject}?{filter}");
            r = r.header("Link", link_with(&start, page.n, last));
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
        use crate::storage::page;
        let all = v(&["a", "b", "c", "d"]);
        assert_eq!(page(all.clone(), None, usize::MAX), (all.clone(), false));
        assert_eq!(page(all.clone(), None, 2), (v(&["a", "b"]), true));
        assert_eq!(page(all.clone(), Some("b"), 2), (v(&["c", "d"]), false));
        assert_eq!(
            page(all.clone(), Some("bb"), usize::MAX),
            (v(&["c", "d"]), false)
        );
        assert_eq!(page(all.clone(), None, 0), (vec![], true));
        assert_eq!(next_last(&[], true), None);
        assert_eq!(next_last(&v(&["a", "b"]), true), Some("b".into()));
        assert_eq!(next_last(&v(&["a", "b"]), false), None);
    }

    #[test]
    fn link_escapes_last() {
        assert_eq!(
            link("/v2/_catalog", Some(2), "a/b"),
            "</v2/_catalog?n=2&last=a%2Fb>; rel=\"next\""
        );
    }
}
