//! The checks each fuzz target runs (`fuzz/fuzz_targets/<name>.rs` calls the function of the same
//! name), shared with `tests/it/fuzz_corpus.rs`, which replays every committed corpus file through them
//! in `cargo test` so a fixed crash stays fixed. Each panics when its parser misbehaves.

use crate::auth::parse_basic;
use crate::config::{AccessPolicyConfig, Config, PolicyDefault};
use crate::http::chunked::{ChunkedDecoder, decode_all};
use crate::http::range::{
    ByteRange, MAX_RANGES, Ranges, parse_content_range, parse_range, parse_ranges,
};
use crate::http::{Limits, Method, head};
use crate::oci::{Digest, Reference, RepoName, Tag, manifest};
use crate::policy::{AccessControl, IdentityVal, Peer};
use crate::tls::{CertIdentity, identity};

/// Request heads: never panic, never claim more bytes than given; their precondition fields
/// parse to `*` or a non-empty list of entity tags without quotes, or are refused.
pub fn http_head(data: &[u8]) {
    if let Ok(Some((h, n))) = head::parse(data, &Limits::default()) {
        assert!(n <= data.len());
        for field in [&h.if_match, &h.if_none_match].into_iter().flatten() {
            if let Ok(crate::http::etag::EntityTags::List(l)) = crate::http::etag::parse(field) {
                assert!(
                    !l.is_empty() && l.iter().all(|t| !t.contains('"')),
                    "{field:?}"
                );
            }
        }
    }
}

/// Chunked bodies: byte-at-a-time decoding agrees with whole-buffer decoding.
pub fn chunked(data: &[u8]) {
    let whole = decode_all(data);
    let mut dec = ChunkedDecoder::new();
    let mut out = Vec::new();
    let mut used = 0;
    let mut failed = false;
    for i in 0..data.len() {
        if dec.is_done() {
            break;
        }
        match dec.step(&data[i..=i]) {
            Ok(step) => {
                used += step.consumed;
                if let Some(r) = step.data {
                    out.extend_from_slice(&data[i..=i][r]);
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if let Ok((body, n)) = whole {
        if dec.is_done() {
            assert_eq!(body, out);
            assert_eq!(n, used);
        }
    } else {
        assert!(failed || !dec.is_done());
    }
}

/// `Range` / `Content-Range`: any accepted range lies inside the blob.
pub fn ranges(header: &str, size: u64) {
    if let ByteRange::Partial { start, end } = parse_range(Some(header), size) {
        assert!(start <= end && end < size);
    }
    match parse_ranges(Some(header), size) {
        Ranges::Partial(r) => {
            assert!(!r.is_empty() && r.len() <= MAX_RANGES);
            assert!(r.iter().all(|&(start, end)| start <= end && end < size));
            let mut sorted = r.clone();
            sorted.sort_unstable();
            assert!(sorted.windows(2).all(|w| w[0].1 < w[1].0), "no byte twice");
        }
        Ranges::TooMany(n) => assert!(n > MAX_RANGES),
        Ranges::Full | Ranges::Unsatisfiable => {}
    }
    if let Some((a, b)) = parse_content_range(header) {
        assert!(a <= b);
    }
}

/// An upstream's `WWW-Authenticate` and its token realm's answer: an accepted challenge has a
/// realm; an accepted token can go in a header as it is.
pub fn upstream_auth(challenge: &str, token_body: &[u8]) {
    if let Some(c) = crate::mirror::token::parse_challenge(challenge) {
        assert!(!c.realm.is_empty());
    }
    if let Ok((token, life)) = crate::mirror::token::parse_token(token_body) {
        assert!(!token.is_empty() && token.bytes().all(|c| c.is_ascii_graphic()));
        assert!(!life.is_zero());
    }
}

/// JWTs (OIDC ID tokens, registry tokens) and JWKs: parsing never panics; an accepted token has
/// a supported algorithm and its signed part is the token's start; the claim checks, the claims'
/// CEL values and a key made of the input never panic, and no key verifies an unsigned token.
pub fn jwt(data: &[u8]) {
    use crate::token::jws::{self, Alg, PublicKey};
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(j) = jws::parse(text, &Alg::ALL)
    {
        assert!(Alg::ALL.contains(&j.alg));
        assert!(data.starts_with(j.signed) && data.get(j.signed.len()) == Some(&b'.'));
        let _ = jws::check_times(&j.claims, 1_800_000_000, 60);
        let _ = jws::check_audience(&j.claims, "registry");
        let _ = jws::check_issuer(&j.claims, "https://issuer");
        let _ = crate::policy::OidcFields::new("ci", &j.claims);
        if let Some(k) = PublicKey::from_jwk(&j.claims) {
            assert!(!(j.signature.is_empty() && k.verifies(&j)));
        }
    }
    if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice::<serde_json::Value>(data) {
        let _ = PublicKey::from_jwk(&m);
    }
}

/// Names, tags, digests, references: whatever is accepted is a safe relative path.
pub fn names(s: &str) {
    if let Ok(n) = s.parse::<RepoName>() {
        assert!(
            !n.as_str().starts_with('/')
                && !n
                    .as_str()
                    .split('/')
                    .any(|c| c == ".." || c == "." || c.is_empty())
        );
    }
    if let Ok(t) = s.parse::<Tag>() {
        assert!(!t.as_str().contains('/') && !t.as_str().starts_with('.'));
    }
    if let Ok(d) = s.parse::<Digest>() {
        assert!(d.hex().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(d.to_string(), s);
    }
    let _ = s.parse::<Reference>();
}

/// Manifest validation never panics on arbitrary bytes and content types.
pub fn manifest(data: &[u8], media_type: Option<&str>) {
    let _ = manifest::parse(data, media_type);
}

/// Routing arbitrary paths and queries never panics.
pub fn route(path: &str, query: &str, method: u8) {
    let methods = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Patch,
        Method::Delete,
    ];
    let _ = crate::registry::route(methods[usize::from(method % 6)], path, query);
}

/// Certificate subjects (webpki verifies first, but the parser must not rely on it).
pub fn cert_identity(der: &[u8]) {
    if let Ok(id) = identity::parse(der) {
        for s in id.common_names.iter().chain(&id.organizations) {
            assert!(std::str::from_utf8(s.as_bytes()).is_ok());
        }
    }
}

/// The `Authorization: Basic` parser never panics; what it accepts names a user.
pub fn basic_auth(data: &[u8]) {
    if let Ok(Ok(c)) = std::str::from_utf8(data).map(parse_basic) {
        assert!(!c.username.is_empty() && !c.username.contains(':'));
    }
}

/// CEL rules: compiling arbitrary text never panics, and whatever compiles decides (never panics)
/// for arbitrary identities. Input: rule text, NUL, then CN / O / username lines (comma-separated).
pub fn policy(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (rule, who) = text.split_once('\0').unwrap_or((text, ""));
    let mut parts = who.split('\n');
    let mut field = || {
        parts
            .next()
            .unwrap_or("")
            .split(',')
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let cert = CertIdentity {
        common_names: field(),
        organizations: field(),
        uris: field(),
        serial: field().join(","),
        ..CertIdentity::default()
    };
    let username = field().join(",");
    let mut cfg = Config::default();
    let zero = "0".repeat(64);
    let mount = format!("mount=sha256:{zero}&from=c");
    for default in [PolicyDefault::Allow, PolicyDefault::Deny] {
        cfg.global.access_policy = Some(AccessPolicyConfig {
            default,
            rules: vec![rule.to_owned()],
        });
        let Ok(ac) = AccessControl::from_config(&cfg) else {
            return;
        };
        let peer = Peer::new(Some(&cert), std::net::IpAddr::from([192, 0, 2, 1]));
        for (m, path, q, listener) in [
            (Method::Get, "/v2/", "", "main"),
            (Method::Put, "/v2/a/b/manifests/latest", "", "main"),
            (Method::Post, "/v2/a/blobs/uploads/", mount.as_str(), "push"),
            (Method::Get, "/v2/_catalog", "n=1", "main"),
        ] {
            let action = crate::registry::route(m, path, q).expect("a valid request");
            let _ = ac
                .decide(
                    IdentityVal::new(&peer, Some(("id", &username))),
                    &action,
                    listener,
                )
                .allowed;
        }
    }
}

/// The config file: arbitrary TOML never panics the parser, validation or policy compilation, and
/// a config that validates also has its identities checked and its policies compiled.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cfg) = Config::parse_str(text) else {
        return;
    };
    if cfg.validate().is_ok() {
        let _ = crate::auth::validate(&cfg.auth);
        let _ = AccessControl::from_config(&cfg);
    }
}

/// Referrers filtering over arbitrary stored descriptors: input is the wanted artifactType (empty:
/// no filter), then NUL-separated descriptors. What passes is an object with that artifactType.
pub fn referrers(data: &[u8]) {
    let mut parts = data.split(|b| *b == 0);
    let want = parts.next().and_then(|w| std::str::from_utf8(w).ok());
    let want = want.filter(|w| !w.is_empty());
    let stored: Vec<Vec<u8>> = parts.map(<[u8]>::to_vec).collect();
    let n = stored.len();
    let out = crate::registry::filter_referrers(stored, want);
    assert!(out.len() <= n);
    for desc in &out {
        assert!(desc.is_object());
        if let Some(w) = want {
            assert_eq!(desc["artifactType"].as_str(), Some(w));
        }
    }
}

/// What an object store (or anything answering on its address) sends back: response heads never
/// claim a body start past the input or a length for bodyless answers; listings (of objects,
/// multipart uploads and parts) and error bodies parse or are refused, never panic.
pub fn object_store(data: &[u8]) {
    for head_request in [false, true] {
        if let Ok(Some(h)) = crate::client::parse_head(data, head_request) {
            assert!(h.end <= data.len());
            if head_request {
                assert_eq!(h.len, 0);
            }
        }
    }
    let _ = crate::storage::s3::api::parse_error(data);
    let _ = crate::storage::s3::api::parse_listing(data, "registry/");
    if let Ok((uploads, _)) = crate::storage::s3::api::parse_multipart_uploads(data, "registry/") {
        assert!(uploads.iter().all(|u| !u.upload_id.is_empty()));
    }
    let _ = crate::storage::s3::api::parse_parts(data);
    crate::storage::s3::fuzz_stored(data);
}
