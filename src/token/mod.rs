//! Registry tokens (the Docker registry token flow, `[auth.token]`): wharf signs a JWT naming who
//! obtained it — a Basic user, a client certificate (the token is then bound to it), an OIDC
//! workload (`[auth.oidc.<name>]`, its claims carried for policies) or nobody — and verifies it
//! on each request, where the access policies decide as for any other identity. `jws` parses
//! and checks untrusted tokens, `keys` is the signing key, `oidc` the issuers.

pub mod jws;
pub mod keys;
pub mod oidc;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value, json};

use crate::config::Config;
use jws::{Alg, PublicKey, Refusal};
pub use oidc::{Provider, Unavailable};

/// Who a registry token speaks for.
#[derive(Debug)]
pub enum Subject {
    Anonymous,
    /// Bound to the client certificate with this SHA-256 fingerprint.
    Certificate(String),
    /// `[auth.identity.<id>]`.
    User(String),
    Oidc(Rc<OidcIdentity>),
}

/// An OIDC workload: its provider, its claims, and both as policies read them.
#[derive(Debug)]
pub struct OidcIdentity {
    pub provider: String,
    pub claims: Map<String, Value>,
    pub cel: crate::policy::OidcFields,
}

impl OidcIdentity {
    pub fn new(provider: &str, claims: Map<String, Value>) -> OidcIdentity {
        OidcIdentity {
            cel: crate::policy::OidcFields::new(provider, &claims),
            provider: provider.to_owned(),
            claims,
        }
    }

    /// How logs name it: `github:repo:org/app:ref:refs/heads/main` (the `sub` claim).
    pub fn display(&self) -> String {
        let sub = self
            .claims
            .get("sub")
            .and_then(Value::as_str)
            .unwrap_or("-");
        format!("{}:{sub}", self.provider)
    }
}

/// What a token is for: requests (`access`), or getting access tokens (`refresh`, what `docker
/// login` keeps instead of a short-lived ID token).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Access,
    Refresh,
}

impl Use {
    fn name(self) -> &'static str {
        match self {
            Use::Access => "access",
            Use::Refresh => "refresh",
        }
    }
}

/// The token service of a config: signing key, verifying keys, OIDC providers.
pub struct Tokens {
    pub service: String,
    pub realm: Option<String>,
    pub ttl: std::time::Duration,
    key: keys::SigningKey,
    /// Keys replaced by a reload, verifying until the tokens they signed expire (Unix seconds).
    retired: Vec<(PublicKey, i64)>,
    pub providers: Vec<Arc<Provider>>,
    /// Counters of the labels that are not providers (`FIXED_LABELS`).
    fixed: Vec<Arc<Counters>>,
}

/// Provider labels of tokens obtained without OIDC, and of tokens presented on requests.
const FIXED_LABELS: [&str; 5] = ["basic", "certificate", "anonymous", "refresh", "bearer"];

impl Tokens {
    /// Build from a validated config; `before` is the service being replaced by a reload, whose
    /// keys keep verifying what they signed.
    pub fn from_config(cfg: &Config, before: Option<&Tokens>) -> Result<Option<Tokens>, String> {
        let Some(t) = &cfg.auth.token else {
            return Ok(None);
        };
        let pem = std::fs::read(&t.signing_key).map_err(|e| {
            format!(
                "auth.token.signing_key {}: {e} (make one with `wharf cert token-key`)",
                t.signing_key.display()
            )
        })?;
        let key = keys::SigningKey::from_pem(&pem)
            .map_err(|e| format!("auth.token.signing_key {}: {e}", t.signing_key.display()))?;
        let now = jws::now();
        let mut retired = Vec::new();
        if let Some(b) = before {
            retired.extend(
                b.retired
                    .iter()
                    .filter(|(k, until)| *until > now && k.kid != Some(key.kid.clone()))
                    .cloned(),
            );
            if b.key.kid != key.kid {
                retired.push((b.key.public(), now + b.ttl.as_secs() as i64 + 60));
            }
        }
        let providers = cfg
            .auth
            .oidc
            .iter()
            .map(|(name, o)| Provider::new(name, o).map(Arc::new))
            .collect::<Result<_, _>>()?;
        Ok(Some(Tokens {
            service: t.service.clone(),
            realm: t.realm.clone(),
            ttl: t.ttl,
            key,
            retired,
            providers,
            fixed: FIXED_LABELS.iter().map(|l| counters(l)).collect(),
        }))
    }

    /// The counters of a provider or fixed label (`basic`, `certificate`, `anonymous`,
    /// `refresh`, `bearer`).
    pub fn count(&self, label: &str) -> &Counters {
        match self.provider(label) {
            Some(p) => &p.counters,
            None => {
                let i = FIXED_LABELS.iter().position(|l| *l == label).unwrap_or(4);
                &self.fixed[i]
            }
        }
    }

    pub fn provider(&self, name: &str) -> Option<&Arc<Provider>> {
        self.providers.iter().find(|p| p.name == name)
    }

    /// Sign a token for `subject`, valid until `exp` at the latest, with the requested scopes.
    pub fn issue(&self, subject: &Subject, purpose: Use, exp: i64, scopes: &[Value]) -> String {
        let now = jws::now();
        let mut jti = [0u8; 16];
        getrandom::fill(&mut jti).expect("randomness for a token id");
        let (sub, who) = match subject {
            Subject::Anonymous => (String::new(), json!({})),
            Subject::Certificate(fp) => (format!("certificate:{fp}"), json!({"certificate": fp})),
            Subject::User(id) => (format!("user:{id}"), json!({"user": id})),
            Subject::Oidc(o) => (
                o.display(),
                json!({"oidc": o.provider, "claims": Value::Object(o.claims.clone())}),
            ),
        };
        self.key.sign(&json!({
            "iss": self.service,
            "aud": self.service,
            "sub": sub,
            "iat": now,
            "nbf": now,
            "exp": exp,
            "jti": jws::b64(&jti),
            "use": purpose.name(),
            "access": scopes,
            "wharf": who,
        }))
    }

    /// The subject and expiry of a token wharf signed for `purpose` (with this key or one a
    /// reload retired), or why it is refused. Nodes sharing the key may be 60 s apart.
    pub fn verify(&self, token: &str, purpose: Use) -> Result<(Subject, i64), Refusal> {
        let jws = jws::parse(token, &[Alg::EdDsa, Alg::Es256])?;
        let now = jws::now();
        let current = self.key.public();
        let key = std::iter::once(&current)
            .chain(
                self.retired
                    .iter()
                    .filter(|(_, u)| *u > now)
                    .map(|(k, _)| k),
            )
            .find(|k| k.kid == jws.kid)
            .ok_or_else(|| Refusal::UnknownKey(jws.kid.clone().unwrap_or_default()))?;
        if !key.verifies(&jws) {
            return Err(Refusal::Signature);
        }
        let c = &jws.claims;
        jws::check_times(c, now, 60)?;
        jws::check_issuer(c, &self.service)?;
        jws::check_audience(c, &self.service)?;
        if c.get("use").and_then(Value::as_str) != Some(purpose.name()) {
            return Err(Refusal::Other(format!(
                "this is not an {} token of this registry",
                purpose.name()
            )));
        }
        let exp = c.get("exp").and_then(Value::as_i64).unwrap_or(0);
        let who = c
            .get("wharf")
            .and_then(Value::as_object)
            .ok_or_else(|| Refusal::Malformed("it names no wharf identity".into()))?;
        let text = |k: &str| who.get(k).and_then(Value::as_str);
        let subject = if let Some(fp) = text("certificate") {
            Subject::Certificate(fp.to_owned())
        } else if let Some(id) = text("user") {
            Subject::User(id.to_owned())
        } else if let Some(p) = text("oidc") {
            let claims = who
                .get("claims")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            Subject::Oidc(Rc::new(OidcIdentity::new(p, claims)))
        } else {
            Subject::Anonymous
        };
        Ok((subject, exp))
    }
}

/// `wharf_tokens_issued_total`, `wharf_token_rejections_total` and
/// `wharf_oidc_key_fetches_total` of one provider label (an `[auth.oidc.<name>]`, or `basic`,
/// `certificate`, `anonymous`, `refresh` for tokens obtained otherwise, `bearer` for tokens
/// presented on requests). Kept across reloads.
#[derive(Default)]
pub struct Counters {
    issued: AtomicU64,
    rejected: [AtomicU64; REASONS.len()],
    jwks: [AtomicU64; 2],
}

/// Rejection reasons: those of `jws::Refusal`, then wharf's own.
pub const REASONS: [&str; 14] = [
    "malformed",
    "algorithm",
    "unknown_kid",
    "signature",
    "expired",
    "not_yet_valid",
    "issuer",
    "audience",
    "other",
    "unknown_provider",
    "unknown_user",
    "wrong_certificate",
    "credentials",
    "unavailable",
];

impl Counters {
    pub fn issued(&self) {
        self.issued.fetch_add(1, Ordering::Relaxed);
    }

    /// Count a rejection by its `REASONS` label.
    pub fn rejected(&self, reason: &str) {
        let i = REASONS.iter().position(|r| *r == reason).unwrap_or(8);
        self.rejected[i].fetch_add(1, Ordering::Relaxed);
    }

    fn jwks(&self, ok: bool) {
        self.jwks[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }
}

/// The counters of every label, created when a config names it (startup, reload) and kept: at
/// most the configured providers plus five fixed labels, never a label from a request.
static COUNTERS: Mutex<BTreeMap<String, Arc<Counters>>> = Mutex::new(BTreeMap::new());

/// The counters of `label`.
pub fn counters(label: &str) -> Arc<Counters> {
    let mut all = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    Arc::clone(all.entry(label.to_owned()).or_default())
}

/// Registry tokens presented on requests found in a worker's cache or verified.
static CACHE: crate::hits::Counts = crate::hits::Counts::new();

/// Count a lookup in a worker's token cache.
pub fn cache_lookup(hit: bool) {
    CACHE.add(hit);
}

/// The token metrics, Prometheus text.
pub fn render(out: &mut String) {
    use std::fmt::Write as _;
    let all = COUNTERS.lock().unwrap_or_else(|p| p.into_inner());
    if all.is_empty() {
        return;
    }
    crate::hits::render(
        out,
        "wharf_token_cache_total",
        "Registry tokens on requests found verified in the worker's cache (hit; at most auth.credential_cache_size per worker) or verified now (miss).",
        CACHE.get(),
    );
    out.push_str("# HELP wharf_tokens_issued_total Registry tokens issued at /token, by how the client proved who it is.\n# TYPE wharf_tokens_issued_total counter\n");
    for (p, c) in all.iter() {
        let _ = writeln!(
            out,
            "wharf_tokens_issued_total{{provider=\"{p}\"}} {}",
            c.issued.load(Ordering::Relaxed)
        );
    }
    out.push_str("# HELP wharf_token_rejections_total Tokens and credentials refused at /token or on requests, by provider and reason.\n# TYPE wharf_token_rejections_total counter\n");
    for (p, c) in all.iter() {
        for (i, r) in REASONS.iter().enumerate() {
            let n = c.rejected[i].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "wharf_token_rejections_total{{provider=\"{p}\",reason=\"{r}\"}} {n}"
                );
            }
        }
    }
    out.push_str("# HELP wharf_oidc_key_fetches_total Fetches of an OIDC issuer's signing keys, by result.\n# TYPE wharf_oidc_key_fetches_total counter\n");
    for (p, c) in all.iter() {
        for (i, r) in ["ok", "failed"].iter().enumerate() {
            let n = c.jwks[i].load(Ordering::Relaxed);
            if n > 0 {
                let _ = writeln!(
                    out,
                    "wharf_oidc_key_fetches_total{{provider=\"{p}\",result=\"{r}\"}} {n}"
                );
            }
        }
    }
}
