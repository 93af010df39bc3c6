//! The steps between a request head and its handler: route to an `Action`, authenticate the
//! Basic credentials if any, and decide the action with the access policies (a mount also needs
//! `get-blob` on its source, else it becomes a plain upload).

use std::net::SocketAddr;
use std::rc::Rc;

use super::limits::Class;
use super::live::Live;
use super::{AdminEndpoints, Listener, Local};
use crate::action::Action;
use crate::auth::{AuthError, Cache, User};
use crate::http::{Method, RequestHead};
use crate::oci::{ErrorCode, OciError, Reference};
use crate::policy::{IdentityVal, Peer};
use crate::registry::{Registry, route};

/// What a connection knows about its client for every request on it.
pub struct Client {
    pub addr: SocketAddr,
    pub peer: Peer,
    /// A verified client certificate was presented (so a denial is 403, not a 401 challenge).
    pub has_certificate: bool,
    /// The listener the connection came in on.
    pub listener: Rc<Listener>,
}

/// An admitted request: the action to run and the Basic user, if any.
pub struct Admitted<'a> {
    pub action: Action,
    pub user: Option<&'a User>,
}

/// A refused request: the error to answer, the Basic user if one was verified, and the action's
/// `Action::index` if the request routed.
pub type Refused<'a> = (OciError, Option<&'a User>, Option<usize>);

/// Route, authenticate and authorize; an `Err` is the OCI error to answer.
pub async fn admit<'a>(
    live: &'a Live,
    credentials: &Rc<Cache>,
    local: &Local,
    registry: &Registry,
    client: &Client,
    head: &RequestHead,
) -> Result<Admitted<'a>, Refused<'a>> {
    let class = match head.method {
        Method::Get | Method::Head => Class::Read,
        _ => Class::Write,
    };
    // Before credentials: the limit also bounds password guessing.
    if let Err(wait) = live.rates.check(client.addr.ip(), class) {
        let e = OciError::new(
            ErrorCode::TooManyRequests,
            "request rate limit for this client exceeded",
        )
        .with_retry_after(wait);
        return Err((e, None, None));
    }
    let mut action = route(head.method, &head.path, &head.query).map_err(|e| (e, None, None))?;
    let name = Some(action.index());
    let elsewhere = match client.listener.admin {
        AdminEndpoints::Also => false,
        AdminEndpoints::Only => !action.is_admin(),
        AdminEndpoints::Never => action.is_admin(),
    };
    if elsewhere {
        return Err((crate::registry::route::not_found(), None, name));
    }
    if let Some(e) = live.switches.refuse(head.method, &action) {
        return Err((e, None, name));
    }
    if action.is_admin() && !live.admin_behind_policies {
        return Ok(Admitted { action, user: None });
    }
    let user = match head.authorization.as_deref() {
        Some(h) => Some(
            live.auth
                .authenticate(credentials, h, client.addr.ip())
                .await
                .map_err(|e| {
                    if e == AuthError::ClientBusy {
                        local
                            .metrics
                            .defence(crate::metrics::Defence::ClientChecksCap);
                    }
                    (auth_error(e), None, name)
                })?,
        ),
        None => None,
    };
    // A delete by digest removes every tag pointing at the manifest: each is decided, and the
    // handler removes no tag that was not (Storage::delete_manifest). The tags are listed only
    // for a client the policy lets delete the manifest at all.
    let identity = || {
        IdentityVal::new(
            &client.peer,
            user.map(|u| (u.id.as_str(), u.username.as_str())),
        )
    };
    let listener = &*client.listener.name;
    let refusal = || {
        if user.is_none() && !client.has_certificate {
            OciError::new(ErrorCode::Unauthorized, "authentication required")
        } else {
            OciError::new(
                ErrorCode::Denied,
                "requested access to the resource is denied",
            )
        }
    };
    let by_digest = matches!(
        &action,
        Action::DeleteManifest {
            reference: Reference::Digest(_),
            ..
        }
    );
    if by_digest
        && !live.access.is_open()
        && !live.access.decide(identity(), &action, listener).allowed
    {
        local.metrics.decision(false);
        return Err((refusal(), user, name));
    }
    if let Action::DeleteManifest {
        repository,
        reference: Reference::Digest(d),
        tags,
    } = &mut action
    {
        *tags = registry
            .tags_pointing_at(repository, d)
            .map_err(|e| (e, user, name))?;
    }
    if live.access.is_open() {
        return Ok(Admitted { action, user });
    }
    let decision = live.access.decide_with_tags(identity, &action, listener);
    local.metrics.decision(decision.allowed);
    tracing::debug!(
        target: "wharf::access",
        "{} {} {}: {decision}",
        client.addr,
        action.name(),
        action.repository().map_or("-", |r| r.as_str())
    );
    if !decision.allowed {
        return Err((refusal(), user, name));
    }
    let action = match action {
        Action::MountBlob {
            repository,
            digest,
            from,
            algorithm,
        } => {
            // The source must be readable by this client; without a source repository there
            // is nothing to check, so no blob is mounted from the shared store.
            let readable = from.as_ref().is_some_and(|src| {
                let probe = Action::GetBlob {
                    repository: src.clone(),
                    digest: digest.clone(),
                };
                let d = live.access.decide(identity(), &probe, listener);
                tracing::debug!(target: "wharf::access", "{} mount source get-blob {src}: {d}", client.addr);
                d.allowed
            });
            if readable {
                Action::MountBlob {
                    repository,
                    digest,
                    from,
                    algorithm,
                }
            } else {
                // The spec's answer when a mount cannot be done: a new upload session (202),
                // which is a `start-upload` and decided as one.
                let upload = Action::StartUpload {
                    repository,
                    digest: None,
                    algorithm,
                };
                let d = live.access.decide(identity(), &upload, listener);
                tracing::debug!(target: "wharf::access", "{} mount fallback start-upload: {d}", client.addr);
                if !d.allowed {
                    return Err((refusal(), user, name));
                }
                upload
            }
        }
        other => other,
    };
    Ok(Admitted { action, user })
}

fn auth_error(e: AuthError) -> OciError {
    match e {
        AuthError::Busy | AuthError::ClientBusy => {
            OciError::new(ErrorCode::TooManyRequests, e.to_string())
        }
        AuthError::Basic(_) | AuthError::Invalid => {
            OciError::new(ErrorCode::Unauthorized, e.to_string())
        }
    }
}
