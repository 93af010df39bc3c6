//! Hashes, the credential cache in use, per-client check caps and the decoy's parameters.

use super::*;
use base64ct::{Base64, Encoding};

fn authenticator(users: &[(&str, &str, &str)]) -> Authenticator {
    let mut cfg = AuthConfig::default();
    for (id, name, pw) in users {
        cfg.identity.insert(
            id.to_string(),
            crate::config::IdentityConfig {
                username: name.to_string(),
                password: hash_password(pw.as_bytes()).unwrap(),
            },
        );
    }
    Authenticator::from_config(&cfg).unwrap()
}

fn ip() -> IpAddr {
    "192.0.2.1".parse().unwrap()
}

#[test]
fn one_client_cannot_queue_more_than_its_share_of_checks() {
    let a = authenticator(&[("ci", "builder", "pw-1")]);
    monoio::start::<monoio::LegacyDriver, _>(async {
        let cache = a.new_cache();
        let max = crate::config::AuthConfig::default().max_checks_per_client;
        let headers: Vec<String> = (0..max + 3)
            .map(|i| basic("x", &format!("guess-{i}")))
            .collect();
        let all = headers.iter().map(|h| a.authenticate(&cache, h, ip()));
        let results = futures_util_join_all(all).await;
        let busy = results
            .iter()
            .filter(|r| matches!(r, Err(AuthError::ClientBusy)))
            .count();
        assert_eq!(busy, 3, "{max} checks in flight at most");
        // Another client still gets its check, and the first client's slots come back.
        let other: IpAddr = "192.0.2.99".parse().unwrap();
        let u = a
            .authenticate(&cache, &basic("builder", "pw-1"), other)
            .await;
        assert_eq!(u.unwrap().id, "ci");
        let again = a.authenticate(&cache, &basic("x", "later"), ip()).await;
        assert_eq!(again.err(), Some(AuthError::Invalid));
    });
}

/// Poll every future to completion on this thread (no extra dependency).
async fn futures_util_join_all<F: std::future::Future>(
    futs: impl Iterator<Item = F>,
) -> Vec<F::Output> {
    let handles: Vec<_> = futs.map(Box::pin).collect();
    let mut out = Vec::new();
    let mut pinned = handles;
    // Start them all before awaiting any, so they overlap.
    let mut started: Vec<std::pin::Pin<Box<F>>> = Vec::new();
    for f in pinned.drain(..) {
        started.push(f);
    }
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let mut done: Vec<Option<F::Output>> = started.iter().map(|_| None).collect();
    for (f, d) in started.iter_mut().zip(done.iter_mut()) {
        if let std::task::Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            *d = Some(v);
        }
    }
    for (f, d) in started.into_iter().zip(done) {
        out.push(match d {
            Some(v) => v,
            None => f.await,
        });
    }
    out
}

#[test]
fn the_decoy_hash_has_the_users_parameters() {
    let phc = Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(8192, 1, 1, None).unwrap(),
    )
    .hash_password(b"pw", &SaltString::encode_b64(&[7u8; 16]).unwrap())
    .unwrap()
    .to_string();
    let users = vec![User {
        id: "a".into(),
        username: "a".into(),
        phc: phc.as_str().into(),
    }];
    let decoy = decoy_hash(&users, b"random");
    let want = Params::try_from(&PasswordHash::new(&phc).unwrap()).unwrap();
    let got = Params::try_from(&PasswordHash::new(&decoy).unwrap()).unwrap();
    assert_eq!(got, want);
    assert!(
        decoy.starts_with("$argon2id$v=19$m=8192,t=1,p=1$"),
        "{decoy}"
    );
}

fn basic(user: &str, pw: &str) -> String {
    format!(
        "Basic {}",
        Base64::encode_string(format!("{user}:{pw}").as_bytes())
    )
}

#[test]
fn hashes_are_argon2id_and_verify() {
    let h = hash_password(b"s3cret").unwrap();
    assert!(h.starts_with("$argon2id$v=19$"), "{h}");
    assert!(pool::verify(&h, "s3cret"));
    assert!(!pool::verify(&h, "s3cret "));
    check_phc(&h).unwrap();
    assert!(
        check_phc("s3cret")
            .unwrap_err()
            .contains("wharf hash-password")
    );
    let argon2i = h.replacen("argon2id", "argon2i", 1);
    assert!(check_phc(&argon2i).unwrap_err().contains("argon2id only"));
}

#[test]
fn verified_headers_are_cached_and_wrong_ones_refused() {
    let a = authenticator(&[("ci", "builder", "pw-1"), ("ops", "admin", "pw-2")]);
    monoio::start::<monoio::LegacyDriver, _>(async {
        let cache = a.new_cache();
        let u = a
            .authenticate(&cache, &basic("admin", "pw-2"), ip())
            .await
            .unwrap();
        assert_eq!((u.id.as_str(), u.username.as_str()), ("ops", "admin"));
        // The same header again is answered from the cache (one entry, same user).
        let u = a
            .authenticate(&cache, &basic("admin", "pw-2"), ip())
            .await
            .unwrap();
        assert_eq!(u.id, "ops");
        assert_eq!(cache.remembered(), 1);
        let wrong = a.authenticate(&cache, &basic("admin", "pw-1"), ip()).await;
        assert_eq!(wrong.err(), Some(AuthError::Invalid));
        let unknown = a.authenticate(&cache, &basic("nobody", "pw-1"), ip()).await;
        assert_eq!(unknown.err(), Some(AuthError::Invalid));
        let bad = a.authenticate(&cache, "Bearer xyz", ip()).await;
        assert_eq!(bad.err(), Some(AuthError::Basic(BasicError::Scheme)));
    });
}

#[test]
fn concurrent_checks_of_one_header_share_one_verification() {
    let a = authenticator(&[("ci", "builder", "pw-1")]);
    monoio::start::<monoio::LegacyDriver, _>(async {
        let cache = a.new_cache();
        let h = basic("builder", "pw-1");
        let (x, y) = monoio::join!(
            a.authenticate(&cache, &h, ip()),
            a.authenticate(&cache, &h, ip())
        );
        assert_eq!(x.unwrap().id, "ci");
        assert_eq!(y.unwrap().id, "ci");
        assert_eq!(cache.remembered(), 1);
        for _ in 0..50 {
            a.authenticate(&cache, &h, ip()).await.unwrap();
        }
        assert_eq!(a.hash_checks(), 1, "52 requests, one argon2 check");
    });
}

#[test]
fn no_users_means_every_credential_is_refused() {
    let a = authenticator(&[]);
    assert!(!a.has_users());
    monoio::start::<monoio::LegacyDriver, _>(async {
        let cache = a.new_cache();
        let r = a.authenticate(&cache, &basic("admin", "x"), ip()).await;
        assert_eq!(r.err(), Some(AuthError::NoUsers));
    });
}
