//! The CEL variables `identity` and `request`, borrowed from the connection, the credential and
//! the routed `Action` rather than copied into CEL maps: building them costs no allocation, and a
//! field is looked up only when a rule reads it.

use std::sync::OnceLock;

use cel::ExecutionError;
use cel::common::traits::Indexer;
use cel::common::types::{
    CelBool, CelDouble, CelInt, CelList, CelMap, CelMapKey, CelNull, CelString, Type,
};
use cel::common::value::{CowVal, Val};
use cel::context::VariableResolver;

use crate::action::Action;
use crate::oci::{Digest, Reference, Tag};
use crate::tls::CertIdentity;

/// The fields of `identity`, for the compile-time check of rules.
pub const IDENTITY_FIELDS: &[&str] = &["id", "username", "client_ip", "certificate", "oidc"];
/// The fields of `identity.oidc` (`claims` is a map: any field may follow it).
pub const OIDC_FIELDS: &[&str] = &["provider", "claims"];
/// The fields of `identity.certificate`.
pub const CERTIFICATE_FIELDS: &[&str] = &[
    "common_names",
    "organizations",
    "serial",
    "fingerprint",
    "issuer",
    "uris",
    "dns_names",
    "emails",
    "not_after",
];
/// The fields `request` may have (`repository`, `reference` and `digest` only where the
/// endpoint has them; `tags` always, empty where the request changes no tag).
pub const REQUEST_FIELDS: &[&str] = &[
    "action",
    "listener",
    "repository",
    "reference",
    "digest",
    "tags",
    "upstream",
];

static IDENTITY_TYPE: Type = Type::new_unspecified_type("wharf.Identity");
static CERTIFICATE_TYPE: Type = Type::new_unspecified_type("wharf.Certificate");
static OIDC_TYPE: Type = Type::new_unspecified_type("wharf.Oidc");
static REQUEST_TYPE: Type = Type::new_unspecified_type("wharf.Request");

/// What a connection knows about its peer, prepared once per connection: the certificate's
/// fields as CEL values and the client IP as text.
#[derive(Debug)]
pub struct Peer {
    certificate: CertFields,
    client_ip: String,
    /// `identity.oidc` of a request without an OIDC identity: `""` and `{}`.
    no_oidc: OidcFields,
}

/// `identity.oidc` as CEL values: the provider's name and the token's claims.
#[derive(Debug)]
pub struct OidcFields {
    provider: CelString<'static>,
    claims: CelMap<'static>,
}

impl OidcFields {
    pub fn new(provider: &str, claims: &serde_json::Map<String, serde_json::Value>) -> OidcFields {
        OidcFields {
            provider: CelString::from(provider.to_owned()),
            claims: json_map(claims),
        }
    }

    fn none() -> OidcFields {
        OidcFields {
            provider: CelString::from(String::new()),
            claims: CelMap::default(),
        }
    }
}

fn json_map(m: &serde_json::Map<String, serde_json::Value>) -> CelMap<'static> {
    let entries: std::collections::HashMap<CelMapKey<'static>, Box<dyn Val>> = m
        .iter()
        .map(|(k, v)| (CelMapKey::from(k.clone()), json_val(v)))
        .collect();
    CelMap::from(entries)
}

/// A JSON value as CEL sees it: numbers that are integers as `int`, others as `double`.
fn json_val(v: &serde_json::Value) -> Box<dyn Val> {
    use serde_json::Value as J;
    match v {
        J::Null => Box::new(CelNull),
        J::Bool(b) => Box::new(CelBool::from(*b)),
        J::Number(n) => match n.as_i64() {
            Some(i) => Box::new(CelInt::from(i)),
            None => Box::new(CelDouble::from(n.as_f64().unwrap_or(f64::NAN))),
        },
        J::String(s) => Box::new(CelString::from(s.clone())),
        J::Array(a) => Box::new(CelList::from(a.iter().map(json_val).collect::<Vec<_>>())),
        J::Object(m) => Box::new(json_map(m)),
    }
}

/// `identity.certificate` as CEL values: empty lists and strings, `not_after` 0, without one.
#[derive(Debug)]
struct CertFields {
    common_names: CelList<'static>,
    organizations: CelList<'static>,
    serial: CelString<'static>,
    fingerprint: CelString<'static>,
    issuer: CelString<'static>,
    uris: CelList<'static>,
    dns_names: CelList<'static>,
    emails: CelList<'static>,
    not_after: CelInt,
}

impl Peer {
    pub fn new(cert: Option<&CertIdentity>, ip: std::net::IpAddr) -> Peer {
        let list = |names: Option<&Vec<String>>| {
            let items: Vec<Box<dyn Val>> = names
                .into_iter()
                .flatten()
                .map(|n| Box::new(CelString::from(n.clone())) as Box<dyn Val>)
                .collect();
            CelList::from(items)
        };
        let text = |t: Option<&String>| CelString::from(t.cloned().unwrap_or_default());
        Peer {
            certificate: CertFields {
                common_names: list(cert.map(|c| &c.common_names)),
                organizations: list(cert.map(|c| &c.organizations)),
                serial: text(cert.map(|c| &c.serial)),
                fingerprint: text(cert.map(|c| &c.fingerprint)),
                issuer: text(cert.map(|c| &c.issuer)),
                uris: list(cert.map(|c| &c.uris)),
                dns_names: list(cert.map(|c| &c.dns_names)),
                emails: list(cert.map(|c| &c.emails)),
                not_after: CelInt::from(cert.map_or(0, |c| c.not_after)),
            },
            // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d; rules are written for a.b.c.d.
            client_ip: ip.to_canonical().to_string(),
            no_oidc: OidcFields::none(),
        }
    }
}

/// Who is asking, as CEL sees it (`identity`).
#[derive(Debug)]
pub struct IdentityVal<'a> {
    id: CelString<'a>,
    username: CelString<'a>,
    client_ip: CelString<'a>,
    certificate: CertificateVal<'a>,
    oidc: OidcVal<'a>,
}

impl<'a> IdentityVal<'a> {
    /// `user` is the Basic-auth identity (`id`, `username`) when credentials were verified.
    pub fn new(peer: &'a Peer, user: Option<(&'a str, &'a str)>) -> IdentityVal<'a> {
        let (id, username) = user.unwrap_or(("", ""));
        IdentityVal {
            id: CelString::from(id),
            username: CelString::from(username),
            client_ip: CelString::from(peer.client_ip.as_str()),
            certificate: CertificateVal(&peer.certificate),
            oidc: OidcVal(&peer.no_oidc),
        }
    }

    /// The identity of an OIDC workload (`identity.oidc`).
    pub fn with_oidc(mut self, oidc: Option<&'a OidcFields>) -> IdentityVal<'a> {
        if let Some(o) = oidc {
            self.oidc = OidcVal(o);
        }
        self
    }
}

/// `identity.oidc`: `""` and `{}` without an OIDC identity.
#[derive(Debug)]
struct OidcVal<'a>(&'a OidcFields);

/// `identity.certificate`: empty lists and strings when no certificate was presented.
#[derive(Debug)]
struct CertificateVal<'a>(&'a CertFields);

/// What is asked (`request`): the action's name, the listener it came in on and, where the
/// endpoint has them, the repository, reference and digest (formatted only if a rule reads them).
#[derive(Debug)]
pub struct RequestVal<'a> {
    action: CelString<'static>,
    listener: CelString<'a>,
    repository: Option<CelString<'a>>,
    reference: Option<&'a Reference>,
    digest: Option<&'a Digest>,
    /// Every tag the request creates, moves or removes (`Action::tags`).
    tags: Vec<&'a Tag>,
    /// The `[[upstream]]` whose mirror serves the request, if it does.
    upstream: Option<CelString<'a>>,
    reference_text: OnceLock<CelString<'static>>,
    digest_text: OnceLock<CelString<'static>>,
    tags_list: OnceLock<CelList<'static>>,
}

impl<'a> RequestVal<'a> {
    /// `listener` is the name of the listener the request came in on (`"main"` for `[server]`).
    pub fn new(action: &'a Action, listener: &'a str) -> RequestVal<'a> {
        let (reference, digest) = match action {
            Action::GetBlob { digest, .. }
            | Action::DeleteBlob { digest, .. }
            | Action::MountBlob { digest, .. }
            | Action::CompleteUpload { digest, .. }
            | Action::GetReferrers { digest, .. } => (None, Some(digest)),
            Action::StartUpload { digest, .. } => (None, digest.as_ref()),
            Action::GetManifest { reference, .. }
            | Action::PutManifest { reference, .. }
            | Action::DeleteManifest { reference, .. } => match reference {
                Reference::Digest(d) => (Some(reference), Some(d)),
                Reference::Tag(_) => (Some(reference), None),
            },
            _ => (None, None),
        };
        RequestVal {
            action: CelString::from(action.name()),
            listener: CelString::from(listener),
            repository: action.repository().map(|r| CelString::from(r.as_str())),
            reference,
            digest,
            tags: action.tags(),
            upstream: None,
            reference_text: OnceLock::new(),
            digest_text: OnceLock::new(),
            tags_list: OnceLock::new(),
        }
    }
}

impl<'a> RequestVal<'a> {
    /// The request is served through the mirror of upstream `name` (`request.upstream`).
    pub fn through(mut self, upstream: Option<&'a str>) -> RequestVal<'a> {
        self.upstream = upstream.map(CelString::from);
        self
    }
}

/// The two variables a rule can name.
pub struct Vars<'a> {
    pub identity: IdentityVal<'a>,
    pub request: RequestVal<'a>,
}

impl VariableResolver for Vars<'_> {
    /// Hot path: the interpreter asks for the longest dotted name first (`identity.username`,
    /// then `identity`), so answering whole field paths here skips its type-name lookups.
    /// Absent request fields answer `None` and fail on the record, as `has()` expects.
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let id = &self.identity;
        let v: &(dyn Val + 'b) = match variable {
            "identity" => id,
            "identity.username" => &id.username,
            "identity.id" => &id.id,
            "identity.client_ip" => &id.client_ip,
            "identity.certificate" => &id.certificate,
            "identity.certificate.common_names" => &id.certificate.0.common_names,
            "identity.certificate.organizations" => &id.certificate.0.organizations,
            "identity.oidc" => &id.oidc,
            "identity.oidc.provider" => &id.oidc.0.provider,
            "identity.oidc.claims" => &id.oidc.0.claims,
            "request" => &self.request,
            "request.action" => &self.request.action,
            "request.listener" => &self.request.listener,
            "request.repository" => self.request.repository.as_ref()?,
            "request.upstream" => self.request.upstream.as_ref()?,
            "request.tags" => return self.request.lookup("tags").ok(),
            _ => return None,
        };
        Some(CowVal::Borrowed(v))
    }
}

/// The field name a select or `has()` asks for.
fn field(key: &dyn Val) -> Result<&str, ExecutionError> {
    key.downcast_ref::<CelString>()
        .map(|s| s.inner())
        .ok_or_else(|| ExecutionError::UnexpectedType {
            got: key.get_type().name().to_owned(),
            want: "string".to_owned(),
        })
}

fn borrowed<'b, 'v>(v: &'b (dyn Val + 'v)) -> Result<CowVal<'b, 'v>, ExecutionError> {
    Ok(CowVal::Borrowed(v))
}

/// Implements `Val` and `Indexer` for a record type with a `lookup(field name)` method.
macro_rules! record_val {
    ($ty:ident, $cel:ident) => {
        impl Indexer for $ty<'_> {
            fn get<'b, 'v>(&'b self, idx: &dyn Val) -> Result<CowVal<'b, 'v>, ExecutionError>
            where
                Self: 'v,
            {
                self.lookup(field(idx)?)
            }
            fn steal<'v>(
                self: Box<Self>,
                idx: &dyn Val,
            ) -> Result<Box<dyn Val + 'v>, ExecutionError>
            where
                Self: 'v,
            {
                self.get(idx).map(CowVal::into_owned)
            }
        }

        impl Val for $ty<'_> {
            fn get_type(&self) -> &Type {
                &$cel
            }
            fn cel_type() -> &'static Type {
                &$cel
            }
            fn as_indexer<'b, 'v>(&'b self) -> Option<&'b (dyn Indexer + 'v)>
            where
                Self: 'v,
            {
                Some(self)
            }
            fn equals(&self, other: &dyn Val) -> bool {
                std::ptr::addr_eq(self as *const Self, other as *const dyn Val)
            }
            fn clone_as_boxed<'v>(&self) -> Box<dyn Val + 'v>
            where
                Self: 'v,
            {
                // Records are only ever read in place; a copy (e.g. `[identity]`) is an opaque value.
                Box::new(cel::common::types::CelNull)
            }
        }
    };
}

record_val!(IdentityVal, IDENTITY_TYPE);
record_val!(CertificateVal, CERTIFICATE_TYPE);
record_val!(RequestVal, REQUEST_TYPE);
record_val!(OidcVal, OIDC_TYPE);

impl OidcVal<'_> {
    fn lookup<'b, 'v>(&'b self, name: &str) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match name {
            "provider" => borrowed(&self.0.provider),
            "claims" => borrowed(&self.0.claims),
            other => Err(ExecutionError::no_such_key(other)),
        }
    }
}

impl IdentityVal<'_> {
    fn lookup<'b, 'v>(&'b self, name: &str) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        match name {
            "id" => borrowed(&self.id),
            "username" => borrowed(&self.username),
            "client_ip" => borrowed(&self.client_ip),
            "certificate" => borrowed(&self.certificate),
            "oidc" => borrowed(&self.oidc),
            other => Err(ExecutionError::no_such_key(other)),
        }
    }
}

impl CertificateVal<'_> {
    fn lookup<'b, 'v>(&'b self, name: &str) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let c = self.0;
        match name {
            "common_names" => borrowed(&c.common_names),
            "organizations" => borrowed(&c.organizations),
            "serial" => borrowed(&c.serial),
            "fingerprint" => borrowed(&c.fingerprint),
            "issuer" => borrowed(&c.issuer),
            "uris" => borrowed(&c.uris),
            "dns_names" => borrowed(&c.dns_names),
            "emails" => borrowed(&c.emails),
            "not_after" => borrowed(&c.not_after),
            other => Err(ExecutionError::no_such_key(other)),
        }
    }
}

impl RequestVal<'_> {
    fn lookup<'b, 'v>(&'b self, name: &str) -> Result<CowVal<'b, 'v>, ExecutionError>
    where
        Self: 'v,
    {
        let absent = |name: &str| ExecutionError::no_such_key(name);
        match name {
            "action" => borrowed(&self.action),
            "listener" => borrowed(&self.listener),
            "repository" => self
                .repository
                .as_ref()
                .map_or_else(|| Err(absent("repository")), |r| borrowed(r)),
            "reference" => {
                let r = self.reference.ok_or_else(|| absent("reference"))?;
                borrowed(
                    self.reference_text
                        .get_or_init(|| CelString::from(r.to_string())),
                )
            }
            "digest" => {
                let d = self.digest.ok_or_else(|| absent("digest"))?;
                borrowed(
                    self.digest_text
                        .get_or_init(|| CelString::from(d.to_string())),
                )
            }
            "upstream" => self
                .upstream
                .as_ref()
                .map_or_else(|| Err(absent("upstream")), |u| borrowed(u)),
            "tags" => borrowed(self.tags_list.get_or_init(|| {
                let items: Vec<Box<dyn Val>> = self
                    .tags
                    .iter()
                    .map(|t| Box::new(CelString::from(t.as_str().to_owned())) as Box<dyn Val>)
                    .collect();
                CelList::from(items)
            })),
            other => Err(absent(other)),
        }
    }
}
