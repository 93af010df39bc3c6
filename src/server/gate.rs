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
use crate::oci::{ErrorKind, OciError, Reference};
use crate::policy::{Decision, IdentityVal, Peer};
use crate::registry::{Registry, route};
use crate::token::OidcIdentity;

/// What a connection knows about its client for every request on it.
pub struct Client {
    pub addr: SocketAddr,
    pub peer: Peer,
    /// The verified client certificate, if one was presented (then a denial is 403, not a 401
    /// challenge).
    pub certificate: Option<Rc<crate::tls::CertIdentity>>,
    /// The listener the connection came in on.
    pub listener: Rc<Listener>,
}

/// Who the credentials of a request prove it comes from: a Basic user (by password or by a
/// registry token), an OIDC workload (by a registry token), or nobody beyond its certificate.
#[derive(Clone, Default)]
pub struct Who<'a> {
    pub user: Option<&'a User>,
    pub oidc: Option<Rc<OidcIdentity>>,
}

impl Who<'_> {
    /// The access log's user field, when credentials named someone.
    pub fn log_name(&self) -> Option<String> {
        match (&self.user, &self.oidc) {
            (Some(u), _) => Some(format!("{:?}", u.username)),
            (None, Some(o)) => Some(format!("{:?}", o.display())),
            (None, None) => None,
        }
    }
}

/// An admitted request: the action to run and who asks.
pub struct Admitted<'a> {
    pub action: Action,
    pub who: Who<'a>,
}

/// A refused request: the error to answer, who asked if credentials were verified, and the
/// action's `Action::index` if the request routed.
pub type Refused<'a> = (OciError, Who<'a>, Option<usize>);

/// Who asks, once credentials are known: builds the policy identity and the refusal to answer.
struct Asker<'a, 'w> {
    client: &'a Client,
    who: &'w Who<'a>,
}

impl<'a, 'w> Asker<'a, 'w> {
    fn identity(&self) -> IdentityVal<'w> {
        IdentityVal::new(
            &self.client.peer,
            self.who.user.map(|u| (u.id.as_str(), u.username.as_str())),
        )
        .with_oidc(self.who.oidc.as_ref().map(|o| &o.cel))
    }

    /// 401 with a challenge when the client presented nothing, else 403; the message says which
    /// listener and rule refused and what would be accepted (Docker prints it and stops retrying,
    /// where the canonical text makes it retry for a minute).
    fn refusal(&self, live: &Live, action: &Action, decision: &Decision<'_>) -> OciError {
        let l = &self.client.listener;
        let what = match action.repository() {
            Some(r) => format!("{} on {r}", action.name()),
            None => action.name().to_owned(),
        };
        let origin = decision.origin();
        if self.who.user.is_none() && self.who.oidc.is_none() && self.client.certificate.is_none() {
            let users = live.auth.has_users() || live.tokens.is_some();
            let how = match (users, l.asks_certificates, &l.elsewhere) {
                (true, true, _) => "log in with a user of auth.identity (docker login) or connect with a client certificate".to_owned(),
                (true, false, Some(there)) => format!("log in with a user of auth.identity (docker login), or connect with a client certificate to {there}"),
                (true, false, None) => "log in with a user of auth.identity (docker login)".to_owned(),
                (false, true, _) => "connect with a client certificate from this port's client CA".to_owned(),
                (false, false, Some(there)) => format!("connect with a client certificate to {there}"),
                (false, false, None) => "this registry takes no credentials on this port; ask its operator to change the access policy".to_owned(),
            };
            let providers: Vec<&str> = live
                .tokens
                .iter()
                .flat_map(|t| &t.providers)
                .map(|p| p.name.as_str())
                .collect();
            let how = if providers.is_empty() {
                how
            } else {
                format!(
                    "{how}; a CI job logs in with its OIDC ID token as password of user {}",
                    providers.join(" or ")
                )
            };
            OciError::new(
                ErrorKind::Unauthenticated,
                format!(
                    "anonymous {what} is not allowed on listener '{}' ({origin}): {how}",
                    l.name
                ),
            )
        } else {
            let cn = self.client.certificate.as_ref();
            let cn = cn.and_then(|c| c.common_names.first());
            let who = match (self.who.user, &self.who.oidc, cn) {
                (Some(u), _, _) => format!("user {:?}", u.username),
                (None, Some(o), _) => format!("OIDC identity {:?}", o.display()),
                (None, None, Some(cn)) => format!("the client certificate CN={cn:?}"),
                (None, None, None) => "this client certificate".to_owned(),
            };
            OciError::new(
                ErrorKind::Denied,
                format!(
                    "{who} may not {what} on listener '{}' ({origin}); ask the registry's operator for access",
                    l.name
                ),
            )
        }
    }
}

/// Route, authenticate and authorize; an `Err` is the OCI error to answer (a 401 with the
/// token flow's challenge when `[auth.token]` is configured).
pub async fn admit<'a>(
    live: &'a Live,
    credentials: &Rc<Cache>,
    local: &Local,
    registry: &Registry,
    client: &Client,
    head: &RequestHead,
) -> Result<Admitted<'a>, Refused<'a>> {
    let admitted = decide(live, credentials, local, registry, client, head).await;
    admitted.map_err(|(mut e, who, action)| {
        if let Some(tokens) = live.tokens.as_ref()
            && e.kind == ErrorKind::Unauthenticated
        {
            e.challenge = Some(super::token::challenge(tokens, client, head));
        }
        (e, who, action)
    })
}

async fn decide<'a>(
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
        let key = match class {
            Class::Read => "limits.read_rps",
            Class::Write => "limits.write_rps",
        };
        let e = OciError::new(
            ErrorKind::RateLimited,
            format!(
                "this client sends more requests than {key} allows; retry in {:.1} s or slow down",
                wait.as_secs_f64()
            ),
        )
        .with_retry_after(wait);
        return Err((e, Who::default(), None));
    }
    let mut action =
        route(head.method, &head.path, &head.query).map_err(|e| (e, Who::default(), None))?;
    let name = Some(action.index());
    let elsewhere = match client.listener.admin {
        AdminEndpoints::Also => false,
        AdminEndpoints::Only => !action.is_admin(),
        AdminEndpoints::Never => action.is_admin(),
    };
    if elsewhere {
        return Err((crate::registry::route::not_found(), Who::default(), name));
    }
    // The token endpoint authenticates by itself; what its tokens do is decided per request.
    if action == Action::GetToken {
        return Ok(Admitted {
            action,
            who: Who::default(),
        });
    }
    if let Some(e) = live.switches.refuse(head.method, &action) {
        return Err((e, Who::default(), name));
    }
    if action.is_admin() && !live.admin_behind_policies {
        return Ok(Admitted {
            action,
            who: Who::default(),
        });
    }
    let who = authenticate(live, credentials, local, client, head)
        .await
        .map_err(|e| (e, Who::default(), name))?;
    let asker = Asker { client, who: &who };
    let listener = &*client.listener.name;
    if let Err(e) = list_deleted_tags(live, local, registry, &asker, &mut action).await {
        return Err((e, who, name));
    }
    if live.access.is_open() {
        return Ok(Admitted { action, who });
    }
    let upstream = action
        .repository()
        .and_then(|r| registry.upstream_of(r, &head.query));
    let decision = live
        .access
        .decide_with_tags(|| asker.identity(), &action, listener, upstream);
    local.metrics.decision(decision.allowed);
    tracing::debug!(
        target: "wharf::access",
        "{} {} {}: {decision}",
        client.addr,
        action.name(),
        action.repository().map_or("-", |r| r.as_str())
    );
    if !decision.allowed {
        let e = asker.refusal(live, &action, &decision);
        return Err((e, who, name));
    }
    match decide_mount(live, registry, head, &asker, action) {
        Ok(action) => Ok(Admitted { action, who }),
        Err(e) => Err((e, who, name)),
    }
}

/// Who the `Authorization` header proves the client is: a Basic user, or whoever a registry
/// token names.
async fn authenticate<'a>(
    live: &'a Live,
    credentials: &Rc<Cache>,
    local: &Local,
    client: &Client,
    head: &RequestHead,
) -> Result<Who<'a>, OciError> {
    let Some(h) = head.authorization.as_deref() else {
        return Ok(Who::default());
    };
    if let Some(token) = super::token::bearer_of(h) {
        return super::token::admit_bearer(live, credentials, client, h, token);
    }
    match live
        .auth
        .authenticate(credentials, h, client.addr.ip())
        .await
    {
        Ok(user) => Ok(Who {
            user: Some(user),
            oidc: None,
        }),
        Err(e) => {
            match e {
                AuthError::ClientBusy => local
                    .metrics
                    .defence(crate::metrics::Defence::ClientChecksCap),
                AuthError::Busy => local
                    .metrics
                    .defence(crate::metrics::Defence::ChecksQueueFull),
                _ => {}
            }
            Err(auth_error(e))
        }
    }
}

/// A delete by digest removes every tag pointing at the manifest: list them into the action so
/// each is decided, and the handler removes no tag that was not (`Storage::delete_manifest`).
/// The tags are listed only for a client the policy lets delete the manifest at all.
async fn list_deleted_tags(
    live: &Live,
    local: &Local,
    registry: &Registry,
    asker: &Asker<'_, '_>,
    action: &mut Action,
) -> Result<(), OciError> {
    let Action::DeleteManifest {
        reference: Reference::Digest(_),
        ..
    } = action
    else {
        return Ok(());
    };
    let listener = &*asker.client.listener.name;
    if !live.access.is_open() {
        let d = live.access.decide(asker.identity(), action, listener);
        if !d.allowed {
            local.metrics.decision(false);
            return Err(asker.refusal(live, action, &d));
        }
    }
    if let Action::DeleteManifest {
        repository,
        reference: Reference::Digest(d),
        tags,
    } = action
    {
        *tags = registry.tags_pointing_at(repository, d).await?;
    }
    Ok(())
}

/// A mount also needs `get-blob` on its source; without it (or without a source) the spec's
/// answer is a new upload session (202), which is a `start-upload` and decided as one.
fn decide_mount(
    live: &Live,
    registry: &Registry,
    head: &RequestHead,
    asker: &Asker<'_, '_>,
    action: Action,
) -> Result<Action, OciError> {
    let Action::MountBlob {
        repository,
        digest,
        from,
        algorithm,
    } = action
    else {
        return Ok(action);
    };
    let (client, listener) = (asker.client, &*asker.client.listener.name);
    // Without a source repository there is nothing to check, so no blob is mounted from the
    // shared store.
    let readable = from.as_ref().is_some_and(|src| {
        let probe = Action::GetBlob {
            repository: src.clone(),
            digest: digest.clone(),
        };
        let through = registry.upstream_of(src, &head.query);
        let d = live
            .access
            .decide_through(asker.identity(), &probe, listener, through);
        tracing::debug!(target: "wharf::access", "{} mount source get-blob {src}: {d}", client.addr);
        d.allowed
    });
    if readable {
        return Ok(Action::MountBlob {
            repository,
            digest,
            from,
            algorithm,
        });
    }
    let upload = Action::StartUpload {
        repository,
        digest: None,
        algorithm,
    };
    let d = live.access.decide(asker.identity(), &upload, listener);
    tracing::debug!(target: "wharf::access", "{} mount fallback start-upload: {d}", client.addr);
    if d.allowed {
        Ok(upload)
    } else {
        Err(asker.refusal(live, &upload, &d))
    }
}

pub(super) fn auth_error(e: AuthError) -> OciError {
    match e {
        AuthError::Busy | AuthError::ClientBusy => {
            OciError::new(ErrorKind::RateLimited, e.to_string())
        }
        AuthError::Basic(_) | AuthError::Invalid | AuthError::NoUsers => {
            OciError::new(ErrorKind::Unauthenticated, e.to_string())
        }
    }
}
