//! The token flow at the connection: the `Bearer` challenge of a 401, `GET`/`POST /token`
//! (authenticate by Basic user, OIDC ID token as password, refresh token, client certificate, or
//! nobody; answer a signed registry token), and the registry token a request presents, verified
//! once per worker and then remembered until it expires.

use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::gate::{Client, Who, auth_error};
use super::live::Live;
use crate::auth::Cache;
use crate::http::body::Body;
use crate::http::{Method, RequestHead, Response};
use crate::oci::{ErrorKind, OciError};
use crate::registry::error_response;
use crate::token::jws::{self, Refusal};
use crate::token::{OidcIdentity, Subject, Tokens, Use};

/// Largest `POST /token` form.
const MAX_FORM: u64 = 64 * 1024;

/// `Bearer realm="…",service="…"[,scope="…"]` for a 401 on `head`.
pub(super) fn challenge(tokens: &Tokens, client: &Client, head: &RequestHead) -> String {
    let realm = match &tokens.realm {
        Some(r) => r.clone(),
        None => {
            let scheme = if client.listener.tls.is_some() {
                "https"
            } else {
                "http"
            };
            let host = head
                .host
                .as_deref()
                .filter(|h| {
                    !h.is_empty()
                        && h.bytes()
                            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                })
                .unwrap_or("localhost");
            format!("{scheme}://{host}/token")
        }
    };
    let mut c = format!("Bearer realm=\"{realm}\",service=\"{}\"", tokens.service);
    let action = crate::registry::route(head.method, &head.path, &head.query).ok();
    let scope = match action.as_ref().and_then(|a| a.repository().map(|r| (a, r))) {
        Some((_, repo)) => {
            let actions = match head.method {
                Method::Get | Method::Head => "pull",
                Method::Delete => "delete",
                _ => "pull,push",
            };
            Some(format!("repository:{repo}:{actions}"))
        }
        None if matches!(action, Some(crate::action::Action::ListCatalog { .. })) => {
            Some("registry:catalog:*".to_owned())
        }
        None => None,
    };
    if let Some(s) = scope {
        c.push_str(&format!(",scope=\"{s}\""));
    }
    c
}

/// The token of an `Authorization: Bearer <token>` value.
pub(super) fn bearer_of(header: &str) -> Option<&str> {
    let (scheme, rest) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
}

fn unauthenticated(message: String) -> OciError {
    OciError::new(ErrorKind::Unauthenticated, message)
}

/// Who a registry token presented on a request speaks for (verified, or remembered from an
/// earlier request on this worker).
pub(super) fn admit_bearer<'a>(
    live: &'a Live,
    cache: &Rc<Cache>,
    client: &Client,
    header: &str,
    token: &str,
) -> Result<Who<'a>, OciError> {
    let Some(tokens) = live.tokens.as_ref() else {
        return Err(unauthenticated(
            "this registry issues no tokens ([auth.token] is not configured): log in with a user of auth.identity".into(),
        ));
    };
    let key = live.auth.cache_key(header);
    let now = Instant::now();
    let subject = match cache.token(&key, now) {
        Some(s) => s,
        None => {
            let (subject, exp) = tokens.verify(token, Use::Access).map_err(|r| {
                tokens.count("bearer").rejected(r.reason());
                unauthenticated(format!(
                    "the registry token is refused: {r}; log in again (docker login)"
                ))
            })?;
            let left = (exp - jws::now()).max(0) as u64;
            let subject = Rc::new(subject);
            cache.remember_token(key, Rc::clone(&subject), now + Duration::from_secs(left));
            subject
        }
    };
    resolve(live, tokens, client, &subject).map_err(|(reason, message)| {
        tokens.count("bearer").rejected(reason);
        unauthenticated(message)
    })
}

/// The identity a token's subject is now: its user and provider must still be configured, and
/// a certificate-bound token needs that certificate on the connection.
fn resolve<'a>(
    live: &'a Live,
    tokens: &Tokens,
    client: &Client,
    subject: &Subject,
) -> Result<Who<'a>, (&'static str, String)> {
    match subject {
        Subject::Anonymous => Ok(Who::default()),
        Subject::Certificate(fp) => {
            let presented = client.certificate.as_ref().map(|c| c.fingerprint.as_str());
            if presented == Some(fp.as_str()) {
                Ok(Who::default())
            } else {
                Err((
                    "wrong_certificate",
                    "this token was issued to a client certificate this connection does not present; get a token over this connection".into(),
                ))
            }
        }
        Subject::User(id) => match live.auth.user_by_id(id) {
            Some(u) => Ok(Who {
                user: Some(u),
                oidc: None,
            }),
            None => Err((
                "unknown_user",
                format!(
                    "the token's user auth.identity.{id} is no longer configured; log in again"
                ),
            )),
        },
        Subject::Oidc(o) => match tokens.provider(&o.provider) {
            Some(_) => Ok(Who {
                user: None,
                oidc: Some(Rc::clone(o)),
            }),
            None => Err((
                "unknown_provider",
                format!(
                    "the token's OIDC provider auth.oidc.{} is no longer configured",
                    o.provider
                ),
            )),
        },
    }
}

/// The parameters of a token request: the query of a GET, the form of a POST.
#[derive(Default)]
struct Params {
    grant_type: Option<String>,
    username: Option<String>,
    password: Option<String>,
    refresh_token: Option<String>,
    service: Option<String>,
    scopes: Vec<String>,
    offline: bool,
}

async fn params(head: &RequestHead, body: &mut Body<'_>) -> Result<Params, OciError> {
    let form = if head.method == Method::Post {
        let urlencoded = head.content_type.as_deref().is_some_and(|t| {
            t.split(';').next().is_some_and(|m| {
                m.trim()
                    .eq_ignore_ascii_case("application/x-www-form-urlencoded")
            })
        });
        if !urlencoded {
            return Err(OciError::new(
                ErrorKind::BadQuery,
                "POST /token takes an application/x-www-form-urlencoded form (OAuth2 password or refresh_token grant)",
            ));
        }
        body.read_to_vec(MAX_FORM).await.map_err(|_| {
            OciError::new(
                ErrorKind::TooLarge,
                "the token request form is over 64 KiB or did not arrive",
            )
        })?
    } else {
        head.query.as_bytes().to_vec()
    };
    let mut p = Params::default();
    for (k, v) in url::form_urlencoded::parse(&form) {
        let v = v.into_owned();
        match &*k {
            "grant_type" => p.grant_type = Some(v),
            "username" => p.username = Some(v),
            "password" => p.password = Some(v),
            "refresh_token" => p.refresh_token = Some(v),
            "service" => p.service = Some(v),
            "scope" => p.scopes.extend(v.split_whitespace().map(str::to_owned)),
            "offline_token" => p.offline = v == "true",
            "access_type" => p.offline = v == "offline",
            _ => {}
        }
    }
    Ok(p)
}

/// How the token was obtained (the metrics label), who it is for, the refresh token's expiry it
/// may not outlive, and whether a refresh token goes with it.
struct Obtained {
    label: String,
    subject: Subject,
    limit: Option<i64>,
    refresh: bool,
}

/// A refusal at the token endpoint: the metrics label and reason, and the error to answer.
type Refused = (String, &'static str, OciError);

/// Answer `GET`/`POST /token`, and who obtained a token (for the access log).
pub(super) async fn answer(
    live: &Live,
    cache: &Rc<Cache>,
    client: &Client,
    head: &RequestHead,
    body: &mut Body<'_>,
) -> (Response, Option<String>) {
    let Some(tokens) = live.tokens.as_ref() else {
        let e = OciError::new(
            ErrorKind::NotFound,
            "this registry issues no tokens ([auth.token] is not configured); log in with Basic credentials",
        );
        return (error_response(e), None);
    };
    let p = match params(head, body).await {
        Ok(p) => p,
        Err(e) => return (error_response(e), None),
    };
    if let Some(s) = p.service.as_deref().filter(|s| *s != tokens.service) {
        let e = OciError::new(
            ErrorKind::BadQuery,
            format!(
                "service {s:?} is not this registry's ({:?}, auth.token.service)",
                tokens.service
            ),
        );
        return (error_response(e), None);
    }
    match obtain(live, tokens, cache, client, head, &p).await {
        Ok(o) => {
            tokens.count(&o.label).issued();
            let who = match &o.subject {
                Subject::User(id) => live
                    .auth
                    .user_by_id(id)
                    .map(|u| format!("{:?}", u.username)),
                Subject::Oidc(i) => Some(format!("{:?}", i.display())),
                _ => None,
            };
            (issue(tokens, &o, &p), who)
        }
        Err((label, reason, e)) => {
            tokens.count(&label).rejected(reason);
            (error_response(e), None)
        }
    }
}

fn issue(tokens: &Tokens, o: &Obtained, p: &Params) -> Response {
    let now = jws::now();
    let mut exp = now + tokens.ttl.as_secs() as i64;
    if let Some(limit) = o.limit {
        exp = exp.min(limit);
    }
    let scopes: Vec<Value> = p
        .scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
        })
        .collect();
    let token = tokens.issue(&o.subject, Use::Access, exp, &scopes);
    let issued = time::OffsetDateTime::from_unix_timestamp(now)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default();
    let mut answer = json!({
        "token": token,
        "access_token": token,
        "expires_in": exp - now,
        "issued_at": issued,
    });
    if o.refresh {
        answer["refresh_token"] = Value::String(tokens.issue(&o.subject, Use::Refresh, exp, &[]));
    }
    Response::new(200)
        .header("Cache-Control", "no-store")
        .json(answer.to_string().into_bytes())
}

async fn obtain(
    live: &Live,
    tokens: &Tokens,
    cache: &Rc<Cache>,
    client: &Client,
    head: &RequestHead,
    p: &Params,
) -> Result<Obtained, Refused> {
    let refused = |label: &str, reason, message: String| {
        Err((label.to_owned(), reason, unauthenticated(message)))
    };
    match p.grant_type.as_deref() {
        Some("refresh_token") => {
            let Some(t) = p.refresh_token.as_deref() else {
                return refused(
                    "refresh",
                    "malformed",
                    "grant_type=refresh_token needs refresh_token".into(),
                );
            };
            let (subject, exp) = match tokens.verify(t, Use::Refresh) {
                Ok(v) => v,
                Err(r) => {
                    return refused(
                        "refresh",
                        r.reason(),
                        format!("the refresh token is refused: {r}; log in again (docker login)"),
                    );
                }
            };
            if let Err((reason, message)) = resolve(live, tokens, client, &subject) {
                return refused("refresh", reason, message);
            }
            return Ok(Obtained {
                label: "refresh".into(),
                subject,
                limit: Some(exp),
                refresh: false,
            });
        }
        Some("password") => {
            let (Some(u), Some(pw)) = (p.username.as_deref(), p.password.as_deref()) else {
                return refused(
                    "basic",
                    "malformed",
                    "grant_type=password needs username and password".into(),
                );
            };
            use base64ct::Encoding as _;
            let header = format!(
                "Basic {}",
                base64ct::Base64::encode_string(format!("{u}:{pw}").as_bytes())
            );
            return login(live, tokens, cache, client, u, pw, &header, p.offline).await;
        }
        Some(other) if head.method == Method::Post => {
            return Err((
                "basic".into(),
                "malformed",
                OciError::new(
                    ErrorKind::BadQuery,
                    format!("grant_type {other:?} is not supported (password, refresh_token)"),
                ),
            ));
        }
        _ => {}
    }
    match head.authorization.as_deref() {
        Some(h) if bearer_of(h).is_some() => refused(
            "bearer",
            "malformed",
            "the token endpoint takes Basic credentials, an OIDC ID token as password, or a refresh token; not a Bearer token".into(),
        ),
        Some(h) => {
            let creds = match crate::auth::parse_basic(h) {
                Ok(c) => c,
                Err(e) => return Err(("basic".into(), "malformed", auth_error(e.into()))),
            };
            login(live, tokens, cache, client, &creds.username, &creds.password, h, p.offline).await
        }
        None => Ok(match &client.certificate {
            Some(c) => Obtained {
                label: "certificate".into(),
                subject: Subject::Certificate(c.fingerprint.clone()),
                limit: None,
                refresh: false,
            },
            None => Obtained { label: "anonymous".into(), subject: Subject::Anonymous, limit: None, refresh: false },
        }),
    }
}

/// A user name and password: an OIDC ID token when the name is a provider's, else a Basic user.
#[allow(clippy::too_many_arguments)]
async fn login(
    live: &Live,
    tokens: &Tokens,
    cache: &Rc<Cache>,
    client: &Client,
    username: &str,
    password: &str,
    header: &str,
    offline: bool,
) -> Result<Obtained, Refused> {
    if let Some(provider) = tokens.provider(username) {
        return match provider.verify(password).await {
            Ok(Ok(claims)) => Ok(Obtained {
                label: provider.name.clone(),
                subject: Subject::Oidc(Rc::new(OidcIdentity::new(&provider.name, claims))),
                limit: None,
                // `docker login` asks for one (offline_token=true) and keeps it instead of the
                // ID token, which expires long before the registry token.
                refresh: offline,
            }),
            Ok(Err(r)) => Err((
                provider.name.clone(),
                r.reason(),
                unauthenticated(format!(
                    "OIDC provider {username:?} (auth.oidc.{username}) refused the ID token: {r}"
                )),
            )),
            Err(u) => Err((
                provider.name.clone(),
                "unavailable",
                OciError::new(ErrorKind::OverCapacity, u.0)
                    .with_retry_after(Duration::from_secs(10)),
            )),
        };
    }
    match live
        .auth
        .authenticate(cache, header, client.addr.ip())
        .await
    {
        Ok(user) => Ok(Obtained {
            label: "basic".into(),
            subject: Subject::User(user.id.clone()),
            limit: None,
            refresh: false,
        }),
        Err(e) => {
            let mut err = auth_error(e);
            let looks_like_jwt = matches!(
                jws::parse(password, &jws::Alg::ALL),
                Ok(_) | Err(Refusal::Algorithm(..))
            );
            if looks_like_jwt {
                let names: Vec<&str> = tokens.providers.iter().map(|p| p.name.as_str()).collect();
                err.message = format!(
                    "the password is an ID token, but {username:?} names no OIDC provider of this registry: log in with the provider's name as user ({})",
                    if names.is_empty() {
                        "none configured".to_owned()
                    } else {
                        names.join(", ")
                    }
                );
            }
            Err(("basic".into(), "credentials", err))
        }
    }
}
