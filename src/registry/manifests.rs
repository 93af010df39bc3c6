//! Manifest GET/HEAD/PUT/DELETE by tag or digest.

use super::{HandlerResult, Registry};
use crate::http::etag::{self, EntityTags};
use crate::http::{Body, BodyError, Payload, RequestHead, Response};
use crate::oci::{Algorithm, Digest, ErrorKind, OciError, Reference, RepoName, Tag, manifest};
use crate::storage::{StoreError, TagExpect};

/// The preconditions of a request (`If-Match`, `If-None-Match`) as a tag expectation (`*` as an
/// empty list); a field that is no list of entity tags is a 400 saying what to send.
pub(super) fn preconditions(head: &RequestHead) -> Result<TagExpect, OciError> {
    let list = |name: &str, v: &Option<String>| -> Result<Option<Vec<String>>, OciError> {
        match v.as_deref().map(etag::parse) {
            None => Ok(None),
            Some(Ok(EntityTags::Any)) => Ok(Some(Vec::new())),
            Some(Ok(EntityTags::List(l))) => Ok(Some(l)),
            Some(Err(why)) => Err(OciError::new(
                ErrorKind::BadQuery,
                format!("{name}: {why}; send \"*\" or the quoted digest from the ETag header"),
            )),
        }
    };
    Ok(TagExpect {
        one_of: list("If-Match", &head.if_match)?,
        none_of: list("If-None-Match", &head.if_none_match)?,
    })
}

impl Registry {
    pub(super) async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        head: &RequestHead,
    ) -> HandlerResult {
        let m = self.storage.get_manifest(repo, reference).await?;
        let digest = &m.digest;
        let mut r = Response::new(200)
            .header("Docker-Content-Digest", digest.to_string())
            .header("ETag", format!("\"{digest}\""))
            .header("Content-Type", m.media_type);
        if head.method == crate::http::Method::Head {
            r.content_length = Some(m.bytes.len() as u64);
        } else {
            r.payload = Payload::Bytes(m.bytes);
        }
        Ok(r)
    }

    pub(super) async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        head: &RequestHead,
        body: &mut Body<'_>,
    ) -> HandlerResult {
        let expect = preconditions(head)?;
        // Checked before anything is stored, and again atomically when the tag is set.
        if expect.is_conditional() {
            self.check_precondition(repo, reference, &expect).await?;
        }
        let max = self.settings.max_manifest_size;
        let bytes = body.read_to_vec(max).await.map_err(|e| match e {
            BodyError::TooLarge => OciError::new(
                ErrorKind::TooLarge,
                format!("manifest exceeds the limit of {max} bytes"),
            ),
            other => other.into(),
        })?;
        let parsed = manifest::parse(&bytes, head.content_type.as_deref())?;
        let digest = match reference {
            Reference::Digest(expected) => {
                let actual = Digest::of(expected.algorithm(), &bytes);
                if actual != *expected {
                    return Err(OciError::new(
                        ErrorKind::DigestInvalid,
                        format!("manifest digest is {actual}, not {expected}"),
                    ));
                }
                actual
            }
            Reference::Tag(_) => Digest::of(Algorithm::Sha256, &bytes),
        };
        for blob in &parsed.required_blobs {
            if self.storage.blob_size(repo, blob).await?.is_none() {
                return Err(OciError::new(
                    ErrorKind::ManifestBlobUnknown,
                    format!("blob {blob} is not in repository {repo}"),
                ));
            }
        }
        self.storage
            .put_manifest(repo, &bytes, &digest, &parsed)
            .await?;
        if let Reference::Tag(t) = reference {
            self.storage
                .update_tag(repo, t, expect, Some(&digest))
                .await?;
        }
        for t in tags {
            self.storage.set_tag(repo, t, &digest).await?;
        }
        let mut r = Response::new(201)
            .header("Location", format!("/v2/{repo}/manifests/{digest}"))
            .header("Docker-Content-Digest", digest.to_string());
        if let Some(s) = &parsed.subject {
            r = r.header("OCI-Subject", s.to_string());
        }
        for t in tags {
            r = r.header("OCI-Tag", t.as_str());
        }
        Ok(r)
    }

    /// `tags`: the tags the request was authorized to remove with the manifest (`Action::tags`).
    pub(super) async fn delete_manifest(
        &self,
        repo: &RepoName,
        reference: &Reference,
        tags: &[Tag],
        head: &RequestHead,
    ) -> HandlerResult {
        let expect = preconditions(head)?;
        match reference {
            Reference::Digest(d) => {
                if expect.is_conditional() {
                    self.check_precondition(repo, reference, &expect).await?;
                }
                self.storage.delete_manifest(repo, d, tags).await?
            }
            Reference::Tag(t) => self.storage.update_tag(repo, t, expect, None).await?,
        }
        Ok(Response::new(202))
    }

    /// Whether the request's target satisfies its preconditions now: a tag's entity tag is the
    /// digest it points at, a digest's is itself if the repository has that manifest.
    async fn check_precondition(
        &self,
        repo: &RepoName,
        reference: &Reference,
        expect: &TagExpect,
    ) -> Result<(), OciError> {
        let current = match reference {
            Reference::Tag(t) => self.storage.resolve_tag(repo, t).await?,
            Reference::Digest(d) => match self.storage.get_manifest(repo, reference).await {
                Ok(_) => Some(d.clone()),
                Err(StoreError::ManifestUnknown) => None,
                Err(e) => return Err(e.into()),
            },
        };
        if expect.holds(current.as_ref()) {
            return Ok(());
        }
        let target = match reference {
            Reference::Tag(t) => format!("tag {t}"),
            Reference::Digest(d) => format!("manifest {d}"),
        };
        Err(StoreError::TagPrecondition { target, current }.into())
    }
}
