//! Compact JWS (RFC 7515) as JWTs use it: splitting and decoding untrusted tokens, public keys
//! from JWKs (RFC 7517), signature checks with ring, and the time and audience checks every
//! token gets. Refuses `alg: none`, HMAC algorithms (a public key is no shared secret) and any
//! header with `crit` extensions; accepts RS256, ES256 and EdDSA (Ed25519) only.

use base64ct::{Base64UrlUnpadded, Encoding};
use ring::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use serde_json::{Map, Value};

/// Longest token accepted (GitHub's and GitLab's ID tokens are 1–2 KiB).
pub const MAX_TOKEN: usize = 16 * 1024;

/// The signature algorithms wharf verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    pub const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

    /// The JOSE name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    pub fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    fn ring(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
            Alg::EdDsa => &signature::ED25519,
        }
    }
}

/// Why a token was refused; `reason()` labels the metric, `Display` is the client's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("the token is not a JWT: {0}")]
    Malformed(String),
    #[error("the token's algorithm {0:?} is not accepted: {1}")]
    Algorithm(String, &'static str),
    #[error(
        "the token names key {0:?}, which the issuer does not publish (keys refreshed at most once a minute)"
    )]
    UnknownKey(String),
    #[error("the token's signature does not verify: it was altered or signed by another key")]
    Signature,
    #[error("the token expired at {at} (now {now}, clock_skew {skew} s): get a fresh one")]
    Expired { at: i64, now: i64, skew: i64 },
    #[error("the token is not valid before {at} (now {now}, clock_skew {skew} s)")]
    NotYetValid { at: i64, now: i64, skew: i64 },
    #[error("the token's issuer {0:?} is not the configured one ({1:?})")]
    Issuer(String, String),
    #[error("the token's audience {0} does not include {1:?} (the configured audience)")]
    Audience(String, String),
    #[error("{0}")]
    Other(String),
}

impl Refusal {
    /// The `reason` label of `wharf_token_rejections_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Malformed(_) => "malformed",
            Refusal::Algorithm(..) => "algorithm",
            Refusal::UnknownKey(_) => "unknown_kid",
            Refusal::Signature => "signature",
            Refusal::Expired { .. } => "expired",
            Refusal::NotYetValid { .. } => "not_yet_valid",
            Refusal::Issuer(..) => "issuer",
            Refusal::Audience(..) => "audience",
            Refusal::Other(_) => "other",
        }
    }
}

/// A token split and decoded, its signature not yet checked.
#[derive(Debug)]
pub struct Jws<'a> {
    pub alg: Alg,
    pub kid: Option<String>,
    /// `header.payload`, what the signature covers.
    pub signed: &'a [u8],
    pub claims: Map<String, Value>,
    pub signature: Vec<u8>,
}

fn malformed(why: &str) -> Refusal {
    Refusal::Malformed(why.to_owned())
}

/// Split and decode a compact JWS whose claims are a JSON object; `allowed` are the algorithms
/// the caller accepts.
pub fn parse<'a>(token: &'a str, allowed: &[Alg]) -> Result<Jws<'a>, Refusal> {
    if token.len() > MAX_TOKEN {
        return Err(malformed("longer than 16 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("a JWT has three dot-separated parts"));
    };
    let header: Map<String, Value> = decode_json(h, "header")?;
    if header.contains_key("crit") {
        return Err(malformed("its header has critical extensions (crit)"));
    }
    let name = match header.get("alg") {
        Some(Value::String(a)) => a.as_str(),
        _ => return Err(malformed("its header has no alg")),
    };
    let alg = match Alg::parse(name) {
        Some(a) if allowed.contains(&a) => a,
        Some(_) => {
            return Err(Refusal::Algorithm(
                name.into(),
                "not in this issuer's algorithms",
            ));
        }
        None if name.eq_ignore_ascii_case("none") => {
            return Err(Refusal::Algorithm(
                name.into(),
                "unsigned tokens are never accepted",
            ));
        }
        None if name.starts_with("HS") => {
            return Err(Refusal::Algorithm(
                name.into(),
                "HMAC needs a shared secret; wharf verifies public-key signatures only",
            ));
        }
        None => {
            return Err(Refusal::Algorithm(
                name.into(),
                "wharf verifies RS256, ES256 and EdDSA",
            ));
        }
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(k)) => Some(k.clone()),
        Some(_) => return Err(malformed("its kid is not a string")),
    };
    let claims = decode_json(p, "claims")?;
    let signature = Base64UrlUnpadded::decode_vec(s)
        .map_err(|_| malformed("its signature is not base64url"))?;
    Ok(Jws {
        alg,
        kid,
        signed: &token.as_bytes()[..h.len() + 1 + p.len()],
        claims,
        signature,
    })
}

fn decode_json(part: &str, what: &str) -> Result<Map<String, Value>, Refusal> {
    let bytes = Base64UrlUnpadded::decode_vec(part)
        .map_err(|_| Refusal::Malformed(format!("its {what} is not base64url")))?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(Refusal::Malformed(format!(
            "its {what} is not a JSON object"
        ))),
    }
}

/// A public key that verifies one algorithm.
#[derive(Clone, Debug)]
pub struct PublicKey {
    pub kid: Option<String>,
    pub alg: Alg,
    /// The key in ring's form: the SPKI-less public key bytes, or for RSA the DER RSAPublicKey.
    bytes: Vec<u8>,
}

impl PublicKey {
    pub fn new(kid: Option<String>, alg: Alg, bytes: Vec<u8>) -> PublicKey {
        PublicKey { kid, alg, bytes }
    }

    /// Whether `jws` is signed by this key.
    pub fn verifies(&self, jws: &Jws<'_>) -> bool {
        self.alg == jws.alg
            && UnparsedPublicKey::new(self.alg.ring(), &self.bytes)
                .verify(jws.signed, &jws.signature)
                .is_ok()
    }

    /// A JWK as an issuer publishes it: RSA (`n`, `e`), EC P-256 (`x`, `y`) or OKP Ed25519 (`x`).
    /// `None` for keys of other kinds or uses (skipped, not an error: a JWKS may hold them).
    pub fn from_jwk(jwk: &Map<String, Value>) -> Option<PublicKey> {
        let text = |k: &str| jwk.get(k).and_then(Value::as_str);
        let b64 = |k: &str| text(k).and_then(|v| Base64UrlUnpadded::decode_vec(v).ok());
        if text("use").is_some_and(|u| u != "sig") {
            return None;
        }
        let (alg, bytes) = match (text("kty")?, text("crv")) {
            ("RSA", _) => (Alg::Rs256, rsa_der(&b64("n")?, &b64("e")?)),
            ("EC", Some("P-256")) => {
                let (x, y) = (b64("x")?, b64("y")?);
                if x.len() != 32 || y.len() != 32 {
                    return None;
                }
                (Alg::Es256, [&[4u8][..], &x, &y].concat())
            }
            ("OKP", Some("Ed25519")) => (Alg::EdDsa, b64("x")?),
            _ => return None,
        };
        if text("alg").is_some_and(|a| a != alg.name()) {
            return None;
        }
        Some(PublicKey {
            kid: text("kid").map(str::to_owned),
            alg,
            bytes,
        })
    }
}

/// DER `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }`.
fn rsa_der(n: &[u8], e: &[u8]) -> Vec<u8> {
    fn integer(out: &mut Vec<u8>, v: &[u8]) {
        let v = match v.iter().position(|b| *b != 0) {
            Some(i) => &v[i..],
            None => &[0][..],
        };
        let pad = v[0] & 0x80 != 0;
        out.push(0x02);
        length(out, v.len() + usize::from(pad));
        if pad {
            out.push(0);
        }
        out.extend_from_slice(v);
    }
    fn length(out: &mut Vec<u8>, n: usize) {
        if n < 0x80 {
            out.push(n as u8);
        } else {
            let bytes = n.to_be_bytes();
            let skip = bytes
                .iter()
                .position(|b| *b != 0)
                .unwrap_or(bytes.len() - 1);
            out.push(0x80 | (bytes.len() - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
    }
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    integer(&mut body, n);
    integer(&mut body, e);
    let mut out = vec![0x30];
    length(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

/// The time claims checked against `now` with `skew` seconds of tolerance: `exp` required and
/// not past, `nbf` and `iat` (if present) not in the future.
pub fn check_times(claims: &Map<String, Value>, now: i64, skew: i64) -> Result<(), Refusal> {
    let time = |k: &str| match claims.get(k) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(|t| Some(t as i64))
            .ok_or_else(|| Refusal::Malformed(format!("its {k} is not a number"))),
    };
    let exp = time("exp")?.ok_or_else(|| malformed("it has no exp (expiry)"))?;
    if now > exp + skew {
        return Err(Refusal::Expired { at: exp, now, skew });
    }
    for k in ["nbf", "iat"] {
        if let Some(at) = time(k)?
            && at > now + skew
        {
            return Err(Refusal::NotYetValid { at, now, skew });
        }
    }
    Ok(())
}

/// `iss` must equal `issuer`.
pub fn check_issuer(claims: &Map<String, Value>, issuer: &str) -> Result<(), Refusal> {
    match claims.get("iss").and_then(Value::as_str) {
        Some(i) if i == issuer => Ok(()),
        other => Err(Refusal::Issuer(
            other.unwrap_or("").to_owned(),
            issuer.to_owned(),
        )),
    }
}

/// `aud` (a string or a list of strings) must include `audience`.
pub fn check_audience(claims: &Map<String, Value>, audience: &str) -> Result<(), Refusal> {
    let found = match claims.get("aud") {
        Some(Value::String(a)) => a == audience,
        Some(Value::Array(list)) => list.iter().any(|a| a.as_str() == Some(audience)),
        _ => false,
    };
    if found {
        Ok(())
    } else {
        let got = claims
            .get("aud")
            .map_or_else(|| "(none)".to_owned(), Value::to_string);
        Err(Refusal::Audience(got, audience.to_owned()))
    }
}

/// Base64url without padding, as JWS encodes every part.
pub fn b64(bytes: &[u8]) -> String {
    Base64UrlUnpadded::encode_string(bytes)
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
