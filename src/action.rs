//! The typed request: every `Action` a client can ask of the registry, with its name
//! (`request.action`), its index (metrics), the tags it changes and the validated upload id. A leaf:
//! route builds it, policy decides it, metrics count it, the registry dispatches it.

use std::fmt;
use std::str::FromStr;

use crate::oci::{Algorithm, Digest, Reference, RepoName, Tag};

/// Everything a request can ask of the registry, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    GetApiVersion,
    GetBlob {
        repository: RepoName,
        digest: Digest,
    },
    DeleteBlob {
        repository: RepoName,
        digest: Digest,
    },
    /// POST to uploads: a new session, or a monolithic upload when `digest` is given.
    StartUpload {
        repository: RepoName,
        digest: Option<Digest>,
        algorithm: Algorithm,
    },
    /// POST with `mount=`: cross-repository mount (`from` may be absent).
    MountBlob {
        repository: RepoName,
        digest: Digest,
        from: Option<RepoName>,
        algorithm: Algorithm,
    },
    UpdateUpload {
        repository: RepoName,
        upload: UploadId,
    },
    CompleteUpload {
        repository: RepoName,
        upload: UploadId,
        digest: Digest,
    },
    GetUpload {
        repository: RepoName,
        upload: UploadId,
    },
    CancelUpload {
        repository: RepoName,
        upload: UploadId,
    },
    GetManifest {
        repository: RepoName,
        reference: Reference,
    },
    /// `tags`: the `?tag=` parameters (at most `MAX_QUERY_TAGS`), deduplicated.
    PutManifest {
        repository: RepoName,
        reference: Reference,
        tags: Vec<Tag>,
    },
    /// `tags`: by tag, that tag; by digest, the tags pointing at it when the gate decided (filled
    /// in by the gate, since finding them reads storage). The handler removes no other tag.
    DeleteManifest {
        repository: RepoName,
        reference: Reference,
        tags: Vec<Tag>,
    },
    GetReferrers {
        repository: RepoName,
        digest: Digest,
        artifact_type: Option<String>,
        page: Page,
    },
    ListTags {
        repository: RepoName,
        page: Page,
    },
    ListCatalog {
        page: Page,
    },
    /// `GET /metrics`, `/healthz`, `/readyz`: answered by the server itself, not the registry.
    GetMetrics,
    GetHealth,
    GetReady,
    /// `GET`/`POST /token` (with `[auth.token]`): a registry token for whoever the client proves
    /// to be; answered by the server, not decided by policies (every request made with the token is).
    GetToken,
}

/// Every action name (`request.action`), in declaration order; `Action::index` points into it.
pub const ACTIONS: [&str; 19] = [
    "get-api-version",
    "get-blob",
    "delete-blob",
    "start-upload",
    "mount-blob",
    "update-upload",
    "complete-upload",
    "get-upload",
    "cancel-upload",
    "get-manifest",
    "put-manifest",
    "delete-manifest",
    "get-referrers",
    "list-tags",
    "list-catalog",
    "get-metrics",
    "get-health",
    "get-ready",
    "get-token",
];

/// `?tag=` parameters one manifest PUT may carry; more answer 400 (each tag is a policy decision
/// and a tag write).
pub const MAX_QUERY_TAGS: usize = 64;

/// `n` / `last` pagination parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Page {
    pub n: Option<usize>,
    pub last: Option<String>,
}

impl Action {
    /// The action's name as policies see it (`request.action`); HEAD uses the GET name.
    pub fn name(&self) -> &'static str {
        ACTIONS[self.index()]
    }

    /// The action's position in `ACTIONS` (metrics index their counters by it).
    pub fn index(&self) -> usize {
        match self {
            Action::GetApiVersion => 0,
            Action::GetBlob { .. } => 1,
            Action::DeleteBlob { .. } => 2,
            Action::StartUpload { .. } => 3,
            Action::MountBlob { .. } => 4,
            Action::UpdateUpload { .. } => 5,
            Action::CompleteUpload { .. } => 6,
            Action::GetUpload { .. } => 7,
            Action::CancelUpload { .. } => 8,
            Action::GetManifest { .. } => 9,
            Action::PutManifest { .. } => 10,
            Action::DeleteManifest { .. } => 11,
            Action::GetReferrers { .. } => 12,
            Action::ListTags { .. } => 13,
            Action::ListCatalog { .. } => 14,
            Action::GetMetrics => 15,
            Action::GetHealth => 16,
            Action::GetReady => 17,
            Action::GetToken => 18,
        }
    }

    /// `/metrics`, `/healthz` or `/readyz`.
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Action::GetMetrics | Action::GetHealth | Action::GetReady
        )
    }

    /// Every tag the action creates, moves or removes (`request.tags`): a manifest PUT's path tag
    /// and `?tag=` tags, a manifest DELETE's tags. Empty for every other action.
    pub fn tags(&self) -> Vec<&Tag> {
        let mut out = Vec::new();
        match self {
            Action::PutManifest {
                reference, tags, ..
            } => {
                let path = match reference {
                    Reference::Tag(t) => Some(t),
                    Reference::Digest(_) => None,
                };
                out.extend(path);
                // `tags` has no repeats (route dedups them); skip the path tag among them.
                out.extend(tags.iter().filter(|t| Some(*t) != path));
            }
            Action::DeleteManifest { tags, .. } => out.extend(tags),
            _ => {}
        }
        out
    }

    /// The same manifest PUT or DELETE as if it named `tag` in its path: what a policy decides for
    /// each tag the request changes. `None` for other actions.
    pub fn as_tag(&self, tag: &Tag) -> Option<Action> {
        let reference = Reference::Tag(tag.clone());
        match self {
            Action::PutManifest {
                repository, tags, ..
            } => Some(Action::PutManifest {
                repository: repository.clone(),
                reference,
                tags: tags.clone(),
            }),
            Action::DeleteManifest {
                repository, tags, ..
            } => Some(Action::DeleteManifest {
                repository: repository.clone(),
                reference,
                tags: tags.clone(),
            }),
            _ => None,
        }
    }

    /// The repository the action is about (`None` for the API version check and the catalog).
    pub fn repository(&self) -> Option<&RepoName> {
        match self {
            Action::GetApiVersion
            | Action::ListCatalog { .. }
            | Action::GetMetrics
            | Action::GetHealth
            | Action::GetReady
            | Action::GetToken => None,
            Action::GetBlob { repository, .. }
            | Action::DeleteBlob { repository, .. }
            | Action::StartUpload { repository, .. }
            | Action::MountBlob { repository, .. }
            | Action::UpdateUpload { repository, .. }
            | Action::CompleteUpload { repository, .. }
            | Action::GetUpload { repository, .. }
            | Action::CancelUpload { repository, .. }
            | Action::GetManifest { repository, .. }
            | Action::PutManifest { repository, .. }
            | Action::DeleteManifest { repository, .. }
            | Action::GetReferrers { repository, .. }
            | Action::ListTags { repository, .. } => Some(repository),
        }
    }
}

/// An upload session id: the shape `storage` makes (a lowercase hyphenated UUID), so it is safe
/// as a path component. Validated once by `FromStr`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct UploadId(String);

impl UploadId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Not an upload id (the route answers `BLOB_UPLOAD_UNKNOWN`).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not an upload id")]
pub struct NotAnUploadId;

impl FromStr for UploadId {
    type Err = NotAnUploadId;
    fn from_str(s: &str) -> Result<UploadId, NotAnUploadId> {
        let shaped = s.len() == 36
            && s.bytes().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
            });
        if shaped {
            Ok(UploadId(s.to_owned()))
        } else {
            Err(NotAnUploadId)
        }
    }
}

impl fmt::Display for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for UploadId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids_are_lowercase_uuids_only() {
        let id = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
        assert_eq!(id.parse::<UploadId>().unwrap().as_str(), id);
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            &id.to_uppercase(),
            &format!("{id}/x"),
            &id[..35],
            "0a1b2c3d-4e5f-6789-abcd-ef012345678g",
        ] {
            assert!(bad.parse::<UploadId>().is_err(), "{bad:?}");
        }
    }
}
