//! The Docker registry token flow and OIDC workload identity (`[auth.token]`, `[auth.oidc.*]`):
//! a local OIDC issuer over TLS (tests/it/common/oidc.rs) signs GitHub- and GitLab-shaped ID
//! tokens; wharf exchanges them at `/token` for its own tokens, which the CEL policies decide
//! per request. Bad tokens are refused saying which check failed; keys rotate on both sides.

use std::path::PathBuf;
use std::sync::Arc;

use serde_json::{Value, json};

use crate::common::oidc::{Issuer, IssuerKey, b64, now};
use crate::common::pki::{Pki, run_cmd};
use crate::common::*;

const SERVICE: &str = "wharf-test";

/// Pushes: GitHub's org/app on main, GitLab's org/app on main, alice under alice/; docker login's
/// `/v2/` check for anyone with credentials.
pub(crate) const RULES: &str = r#"[global.access_policy]
default = "deny"
rules = [
  "request.action == 'get-api-version' && (identity.username != '' || identity.oidc.provider != '')",
  "identity.oidc.provider == 'github' && identity.oidc.claims.repository == 'org/app' && identity.oidc.claims.ref == 'refs/heads/main' && request.repository == 'org/app'",
  "identity.oidc.provider == 'gitlab' && identity.oidc.claims.project_path == 'org/app' && identity.oidc.claims.ref == 'main' && request.repository == 'org/app'",
  "identity.username == 'alice' && request.repository.startsWith('alice/')",
]
"#;

/// Two issuers (GitHub-like with EdDSA and ES256 keys, GitLab-like with RS256), and a wharf that
/// trusts them.
pub(crate) struct Setup {
    pub pki: Pki,
    _pki_dir: tempfile::TempDir,
    pub github: Issuer,
    pub gitlab: Issuer,
    pub gh_key: Arc<IssuerKey>,
    pub gh_es: Arc<IssuerKey>,
    pub gl_key: Arc<IssuerKey>,
}

impl Setup {
    pub fn new() -> Setup {
        let pki_dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(pki_dir.path());
        crate::common::pki::wharf(&[
            "cert",
            "token-key",
            "--out",
            pki_dir.path().to_str().unwrap(),
        ]);
        let gh_key = IssuerKey::new("EdDSA", pki_dir.path());
        let gh_es = IssuerKey::new("ES256", pki_dir.path());
        let gl_key = IssuerKey::new("RS256", pki_dir.path());
        let github = Issuer::start(&pki, vec![Arc::clone(&gh_key), Arc::clone(&gh_es)]);
        let gitlab = Issuer::start(&pki, vec![Arc::clone(&gl_key)]);
        Setup {
            pki,
            _pki_dir: pki_dir,
            github,
            gitlab,
            gh_key,
            gh_es,
            gl_key,
        }
    }

    /// `[auth.token]` and both `[auth.oidc.*]` tables (GitHub's with no clock skew, so a test can
    /// outlive its tokens in seconds).
    pub fn toml(&self) -> String {
        let ca = self.pki.path("ca.crt");
        format!(
            "[auth.token]\nservice = \"{SERVICE}\"\nsigning_key = \"{}\"\nttl = \"1h\"\n\
             [auth.oidc.github]\nissuer = \"{}\"\naudience = \"{SERVICE}\"\nca_bundle = \"{}\"\nclock_skew = \"0s\"\n\
             [auth.oidc.gitlab]\nissuer = \"{}\"\naudience = \"{SERVICE}\"\nca_bundle = \"{}\"\nalgorithms = [\"RS256\"]\n",
            self.key_path().display(),
            self.github.url,
            ca.display(),
            self.gitlab.url,
            ca.display(),
        )
    }

    pub fn key_path(&self) -> PathBuf {
        self.pki.path("token-key.pem")
    }

    pub fn start(&self, driver: &str, extra: &str) -> Server {
        self.start_with_server(driver, "", extra)
    }

    /// `start`, with `server` keys for the `[server]` table (e.g. its address and TLS).
    pub fn start_with_server(&self, driver: &str, server: &str, extra: &str) -> Server {
        let toml = format!(
            "{server}{}{}{}{extra}",
            self.toml(),
            crate::e2e_access::users(&[("alice", "alice-pw")]),
            RULES
        );
        Server::start_logged(driver, &toml, "warn,wharf::access=info,wharf::auth=info")
    }

    /// A GitHub ID token for `repo` at `git_ref`, valid for `lifetime` seconds.
    pub fn github_token(&self, repo: &str, git_ref: &str, lifetime: i64) -> String {
        self.gh_key
            .sign(&self.github.github(SERVICE, repo, git_ref, lifetime))
    }
}

/// `GET /token` with Basic `user:password` (and `query` parameters).
fn get_token(s: &Server, user: &str, password: &str, query: &str) -> Resp {
    let auth = basic(user, password);
    s.client().request(
        "GET",
        &format!("/token?service={SERVICE}&scope=repository:org/app:pull,push{query}"),
        &[("Authorization", &auth)],
        b"",
    )
}

/// The access token of a 200 answer.
fn token_of(r: &Resp) -> String {
    assert_eq!(r.status, 200, "{}", r.body_text());
    let j = r.json();
    assert_eq!(j["token"], j["access_token"], "{j}");
    j["token"].as_str().unwrap().to_owned()
}

/// A monolithic blob push to `repo` with the registry token; the status.
fn push_with(s: &Server, token: &str, repo: &str) -> Resp {
    let data = format!("{repo} {token:.12} {}", now()).into_bytes();
    let d = sha256(&data);
    s.client().request(
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        &[("Authorization", &format!("Bearer {token}"))],
        &data,
    )
}

fn message(r: &Resp) -> String {
    r.json()["errors"][0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn oidc_id_tokens_become_registry_tokens_the_policies_decide(driver: &str) {
    let st = Setup::new();
    let s = st.start(driver, "");
    // Anonymous clients are sent to the token endpoint, with the scope they need.
    let r = s.client().get("/v2/");
    assert_eq!(r.status, 401);
    assert_eq!(
        r.header("www-authenticate"),
        Some(format!("Bearer realm=\"http://test/token\",service=\"{SERVICE}\"").as_str())
    );
    let r = s.client().get("/v2/org/app/tags/list");
    let challenge = r.header("www-authenticate").unwrap();
    assert!(
        challenge.ends_with(",scope=\"repository:org/app:pull\""),
        "{challenge}"
    );

    let r = get_token(
        &s,
        "github",
        &st.github_token("org/app", "refs/heads/main", 300),
        "",
    );
    let t = token_of(&r);
    let j = r.json();
    assert_eq!(
        j["expires_in"], 3600,
        "wharf's ttl, not the ID token's five minutes: {j}"
    );
    assert!(j["issued_at"].as_str().unwrap().ends_with('Z'), "{j}");
    assert!(
        j.get("refresh_token").is_none(),
        "only `docker login` (offline_token) gets one"
    );
    let r = s.client().request(
        "GET",
        "/v2/",
        &[("Authorization", &format!("Bearer {t}"))],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(push_with(&s, &t, "org/app").status, 201);
    let r = push_with(&s, &t, "org/other");
    assert_eq!(r.status, 403, "{}", r.body_text());
    assert!(
        message(&r).contains("OIDC identity \"github:repo:org/app:ref:refs/heads/main\" may not start-upload on org/other"),
        "{}",
        r.body_text()
    );
    // The same repository from another branch: the claims differ, so does the decision.
    let dev = token_of(&get_token(
        &s,
        "github",
        &st.github_token("org/app", "refs/heads/dev", 300),
        "",
    ));
    assert_eq!(push_with(&s, &dev, "org/app").status, 403);
    // An ES256 key of the same issuer.
    let es = st
        .gh_es
        .sign(&st.github.github(SERVICE, "org/app", "refs/heads/main", 300));
    assert_eq!(
        push_with(&s, &token_of(&get_token(&s, "github", &es, "")), "org/app").status,
        201
    );

    // GitLab's shape, RS256.
    let gl = st
        .gl_key
        .sign(&st.gitlab.gitlab(SERVICE, "org/app", "main", 300));
    let t = token_of(&get_token(&s, "gitlab", &gl, ""));
    assert_eq!(push_with(&s, &t, "org/app").status, 201);
    assert_eq!(push_with(&s, &t, "org/other").status, 403);

    // A Basic user's token, and an anonymous one (which gets what anonymous clients get).
    let t = token_of(&get_token(&s, "alice", "alice-pw", ""));
    assert_eq!(push_with(&s, &t, "alice/app").status, 201);
    assert_eq!(push_with(&s, &t, "org/app").status, 403);
    let r = get_token(&s, "alice", "wrong", "");
    assert_eq!(r.status, 401, "{}", r.body_text());
    let anon = token_of(&s.client().get(&format!("/token?service={SERVICE}")));
    let r = push_with(&s, &anon, "org/app");
    assert_eq!(r.status, 401, "{}", r.body_text());
    assert!(r.header("www-authenticate").unwrap().starts_with("Bearer "));

    // Tokens of another registry, or not tokens at all, are refused.
    let r = push_with(&s, "not.a.token", "org/app");
    assert_eq!(r.status, 401);
    assert!(
        message(&r).contains("the registry token is refused"),
        "{}",
        r.body_text()
    );

    let log = s.log();
    assert!(
        log.contains("\"github:repo:org/app:ref:refs/heads/main\" POST /v2/org/app/blobs/uploads/"),
        "{log}"
    );
    let m = s.client().get("/metrics").body_text();
    assert!(
        sample(&m, "wharf_tokens_issued_total{provider=\"github\"}").unwrap() >= 3.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "wharf_tokens_issued_total{provider=\"gitlab\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "wharf_tokens_issued_total{provider=\"anonymous\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "wharf_token_rejections_total{provider=\"basic\",reason=\"credentials\"}"
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        sample(&m, "wharf_token_cache_total{outcome=\"hit\"}").unwrap() >= 1.0,
        "{m}"
    );
}

fn bad_id_tokens_are_refused_saying_which_check_failed(driver: &str) {
    let st = Setup::new();
    let s = st.start(driver, "");
    let gh = &st.github;
    let claims = |f: &dyn Fn(&mut Value)| {
        let mut c = gh.github(SERVICE, "org/app", "refs/heads/main", 300);
        f(&mut c);
        c
    };
    let good = st.gh_key.sign(&claims(&|_| {}));
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = b64(claims(&|c| c["repository"] = json!("org/everything"))
        .to_string()
        .as_bytes());
    let tampered = format!("{}.{forged_claims}.{}", parts[0], parts[2]);
    let none = format!("{}.{}.", b64(br#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    // The classic confusion: HMAC keyed with the issuer's public key.
    let hmac = {
        let input = format!("{}.{}", b64(br#"{"alg":"HS256","typ":"JWT"}"#), parts[1]);
        let pk = st.gh_key.jwk["x"].as_str().unwrap();
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, pk.as_bytes());
        format!(
            "{input}.{}",
            b64(ring::hmac::sign(&key, input.as_bytes()).as_ref())
        )
    };
    let stranger = IssuerKey::new("EdDSA", &st.pki.dir);
    let t = now();
    let cases: Vec<(&str, &str, String, &str, &str)> = vec![
        (
            "expired",
            "github",
            st.gh_key.sign(&claims(&|c| c["exp"] = json!(t - 120))),
            "expired at",
            "expired",
        ),
        (
            "not yet valid",
            "github",
            st.gh_key.sign(&claims(&|c| c["nbf"] = json!(t + 600))),
            "is not valid before",
            "not_yet_valid",
        ),
        (
            "wrong audience",
            "github",
            st.gh_key
                .sign(&claims(&|c| c["aud"] = json!("another-registry"))),
            "audience \"another-registry\" does not include \"wharf-test\"",
            "audience",
        ),
        (
            "wrong issuer",
            "github",
            st.gh_key
                .sign(&claims(&|c| c["iss"] = json!("https://evil.example"))),
            "issuer \"https://evil.example\" is not the configured one",
            "issuer",
        ),
        (
            "another provider's token",
            "github",
            st.gl_key
                .sign(&st.gitlab.gitlab(SERVICE, "org/app", "main", 300)),
            "is not the configured one",
            "issuer",
        ),
        (
            "an algorithm not configured",
            "gitlab",
            good.clone(),
            "not in this issuer's algorithms",
            "algorithm",
        ),
        (
            "unknown kid",
            "github",
            stranger.sign(&claims(&|_| {})),
            "which the issuer does not publish",
            "unknown_kid",
        ),
        (
            "tampered",
            "github",
            tampered,
            "signature does not verify",
            "signature",
        ),
        (
            "alg none",
            "github",
            none,
            "unsigned tokens are never accepted",
            "algorithm",
        ),
        (
            "HMAC",
            "github",
            hmac,
            "HMAC needs a shared secret",
            "algorithm",
        ),
        (
            "not a JWT",
            "github",
            "hunter2".into(),
            "is not a JWT",
            "malformed",
        ),
    ];
    for (what, user, token, says, _) in &cases {
        let r = get_token(&s, user, token, "");
        assert_eq!(r.status, 401, "{what}: {}", r.body_text());
        let m = message(&r);
        assert!(m.contains(says), "{what}: {m}");
        assert!(m.contains(&format!("auth.oidc.{user}")), "{what}: {m}");
    }
    // An ID token with a name that is no provider, where there are Basic users.
    let r = get_token(&s, "githubb", &good, "");
    assert_eq!(r.status, 401);
    assert!(
        message(&r).contains("names no OIDC provider of this registry"),
        "{}",
        r.body_text()
    );
    // The good one still works after all that.
    assert_eq!(get_token(&s, "github", &good, "").status, 200);
    let m = s.client().get("/metrics").body_text();
    for (what, user, _, _, reason) in &cases {
        let series =
            format!("wharf_token_rejections_total{{provider=\"{user}\",reason=\"{reason}\"}}");
        assert!(
            sample(&m, &series).is_some_and(|n| n >= 1.0),
            "{what}: {series} in\n{m}"
        );
    }
}

fn a_registry_token_outlives_the_id_token(driver: &str) {
    let st = Setup::new();
    let s = st.start(driver, "");
    let claims = st.github.github(SERVICE, "org/app", "refs/heads/main", 2);
    let exp = claims["exp"].as_i64().unwrap();
    let id = st.gh_key.sign(&claims);
    let r = get_token(&s, "github", &id, "&offline_token=true&client_id=docker");
    let access = token_of(&r);
    let refresh = r.json()["refresh_token"]
        .as_str()
        .expect("docker login's refresh token")
        .to_owned();
    // Not a timing assertion: only waits until the ID token is past its `exp`.
    while now() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    // The ID token itself is now refused (clock_skew = 0s) ...
    let r = get_token(&s, "github", &id, "");
    assert_eq!(r.status, 401);
    assert!(message(&r).contains("expired at"), "{}", r.body_text());
    // ... but the registry token it bought still pushes, and so does one refreshed from it.
    assert_eq!(push_with(&s, &access, "org/app").status, 201);
    let form = format!(
        "grant_type=refresh_token&refresh_token={refresh}&service={SERVICE}&client_id=docker&scope=repository%3Aorg%2Fapp%3Apull%2Cpush"
    );
    let r = s.client().request(
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    let fresh = token_of(&r);
    assert_eq!(push_with(&s, &fresh, "org/app").status, 201);
    assert_eq!(
        push_with(&s, &fresh, "org/other").status,
        403,
        "the refreshed token keeps the claims"
    );
    // A refresh token is not an access token, nor the reverse.
    let r = push_with(&s, &refresh, "org/app");
    assert_eq!(r.status, 401);
    assert!(
        message(&r).contains("not an access token"),
        "{}",
        r.body_text()
    );
    let form = format!("grant_type=refresh_token&refresh_token={access}");
    let r = s.client().request(
        "POST",
        "/token",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        form.as_bytes(),
    );
    assert_eq!(r.status, 401, "{}", r.body_text());
}

fn issuer_key_rotation_is_picked_up_and_unknown_keys_refetch_once_a_minute(driver: &str) {
    let st = Setup::new();
    let s = st.start(driver, "");
    let claims = || st.github.github(SERVICE, "org/app", "refs/heads/main", 300);
    assert_eq!(
        get_token(&s, "github", &st.gh_key.sign(&claims()), "").status,
        200
    );
    assert_eq!(st.github.jwks_fetches(), 1);
    let rotated = IssuerKey::new("EdDSA", &st.pki.dir);
    st.github.publish(vec![Arc::clone(&rotated)]);
    let r = get_token(&s, "github", &rotated.sign(&claims()), "");
    assert_eq!(
        r.status,
        200,
        "the new key is fetched on its first token: {}",
        r.body_text()
    );
    assert_eq!(st.github.jwks_fetches(), 2);
    let unpublished = IssuerKey::new("EdDSA", &st.pki.dir);
    let r = get_token(&s, "github", &unpublished.sign(&claims()), "");
    assert_eq!(r.status, 401);
    assert!(
        message(&r).contains("which the issuer does not publish"),
        "{}",
        r.body_text()
    );
    assert_eq!(
        st.github.jwks_fetches(),
        2,
        "a second unknown kid within a minute fetches nothing"
    );
    let r = get_token(&s, "github", &st.gh_key.sign(&claims()), "");
    assert_eq!(
        r.status,
        401,
        "the retired key no longer verifies: {}",
        r.body_text()
    );
}

fn signing_key_rotation_keeps_the_old_tokens_valid(driver: &str) {
    let st = Setup::new();
    let s = st.start(driver, "");
    let old = token_of(&get_token(&s, "alice", "alice-pw", ""));
    let dir = st.pki.dir.to_str().unwrap();
    crate::common::pki::wharf(&["cert", "token-key", "--out", dir, "--ecdsa", "--force"]);
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    let header = |t: &str| -> Value {
        use base64ct::{Base64UrlUnpadded, Encoding};
        serde_json::from_slice(
            &Base64UrlUnpadded::decode_vec(t.split('.').next().unwrap()).unwrap(),
        )
        .unwrap()
    };
    let mut new = String::new();
    wait_for("the reload to sign with the new key", || {
        new = token_of(&get_token(&s, "alice", "alice-pw", ""));
        header(&new)["alg"] == "ES256"
    });
    assert_eq!(header(&new)["alg"], "ES256");
    assert_ne!(header(&new)["kid"], header(&old)["kid"]);
    assert_eq!(push_with(&s, &new, "alice/app").status, 201);
    assert_eq!(
        push_with(&s, &old, "alice/app").status,
        201,
        "tokens of the replaced key keep working"
    );
}

fn the_token_endpoint_is_rate_limited_like_any_request(driver: &str) {
    let st = Setup::new();
    let s = st.start(driver, "[limits]\nread_rps = 0.5\nburst = 2\n");
    let id = st.github_token("org/app", "refs/heads/main", 300);
    let statuses: Vec<u16> = (0..4)
        .map(|_| get_token(&s, "github", &id, "").status)
        .collect();
    assert_eq!(&statuses[..2], &[200, 200], "{statuses:?}");
    assert!(statuses[2..].iter().all(|s| *s == 429), "{statuses:?}");
}

/// A token obtained with a client certificate works only on a connection with that certificate.
fn certificate_tokens_are_bound_to_their_certificate(driver: &str) {
    let st = Setup::new();
    let tls = st.pki.tls_toml("server.tls", "server", Some("optional"));
    let toml = format!(
        "{tls}{}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.certificate.common_names.contains('build-server')\"]\n",
        st.toml()
    );
    let s = Server::start_logged(driver, &toml, "warn");
    let (crt, key) = (st.pki.path("client.crt"), st.pki.path("client.key"));
    let with_cert = st.pki.client_config(Some((&crt, &key)), false);
    let without = st.pki.client_config(None, false);
    let connect = |cfg| crate::common::pki::tls_connect(s.addr, cfg).unwrap().client;
    let t = token_of(&connect(Arc::clone(&with_cert)).get(&format!("/token?service={SERVICE}")));
    let bearer = format!("Bearer {t}");
    let mut c = connect(with_cert);
    let r = c.request(
        "GET",
        "/v2/org/app/tags/list",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_ne!(r.status, 401, "{}", r.body_text());
    let mut c = connect(without);
    let r = c.request(
        "GET",
        "/v2/org/app/tags/list",
        &[("Authorization", &bearer)],
        b"",
    );
    assert_eq!(r.status, 401, "{}", r.body_text());
    assert!(
        message(&r).contains("issued to a client certificate"),
        "{}",
        r.body_text()
    );
}

/// podman and skopeo log in with ID tokens as passwords (GitHub's and GitLab's), push what the
/// claims allow and are refused elsewhere.
fn podman_and_skopeo_use_id_tokens_as_passwords(driver: &str) {
    let st = Setup::new();
    let s = st.start(driver, "");
    let work = tempfile::tempdir().unwrap();
    let root = work.path();
    let authfile = root.join("auth.json");
    let host = s.host();
    let gh = st.github_token("org/app", "refs/heads/main", 300);
    let podman = || {
        let mut c = crate::e2e_tls::podman(root);
        c.env("REGISTRY_AUTH_FILE", &authfile);
        c
    };
    run_ok(podman().args([
        "login",
        "--tls-verify=false",
        "-u",
        "github",
        "-p",
        &gh,
        &host,
    ]));
    std::fs::create_dir_all(root.join("rootfs")).unwrap();
    std::fs::write(root.join("rootfs/hello"), b"pushed with an OIDC ID token\n").unwrap();
    run_ok(
        std::process::Command::new("tar")
            .arg("-cf")
            .arg(root.join("layer.tar"))
            .arg("-C")
            .arg(root.join("rootfs"))
            .arg("."),
    );
    run_ok(
        podman()
            .arg("import")
            .arg(root.join("layer.tar"))
            .arg("localhost/oidc:1"),
    );
    run_ok(podman().args([
        "push",
        "--tls-verify=false",
        "localhost/oidc:1",
        &format!("docker://{host}/org/app:podman"),
    ]));
    let (ok, out) = run_cmd(podman().args([
        "push",
        "--tls-verify=false",
        "localhost/oidc:1",
        &format!("docker://{host}/org/other:podman"),
    ]));
    assert!(!ok, "a push outside the claims succeeded:\n{out}");
    // Its first request is a HEAD, whose refusal has no body to show.
    assert!(out.contains("403 (Forbidden)"), "{out}");

    let gl = st
        .gl_key
        .sign(&st.gitlab.gitlab(SERVICE, "org/app", "main", 300));
    let skopeo = || crate::e2e_clients::skopeo();
    run_ok(skopeo().args([
        "copy",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        "--src-creds",
        &format!("github:{gh}"),
        "--dest-creds",
        &format!("gitlab:{gl}"),
        &format!("docker://{host}/org/app:podman"),
        &format!("docker://{host}/org/app:skopeo"),
    ]));
    let info = run_ok(skopeo().args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        &format!("gitlab:{gl}"),
        &format!("docker://{host}/org/app:skopeo"),
    ]));
    assert!(info.contains("\"Digest\""), "{info}");
    let (ok, out) = run_cmd(skopeo().args([
        "inspect",
        "--tls-verify=false",
        "--creds",
        "gitlab:not-a-token",
        &format!("docker://{host}/org/app:skopeo"),
    ]));
    assert!(!ok, "{out}");
}

on_both_drivers!(
    podman_and_skopeo_use_id_tokens_as_passwords,
    oidc_id_tokens_become_registry_tokens_the_policies_decide,
    bad_id_tokens_are_refused_saying_which_check_failed,
    a_registry_token_outlives_the_id_token,
    issuer_key_rotation_is_picked_up_and_unknown_keys_refetch_once_a_minute,
    signing_key_rotation_keeps_the_old_tokens_valid,
    the_token_endpoint_is_rate_limited_like_any_request,
    certificate_tokens_are_bound_to_their_certificate,
);

/// Config mistakes are startup errors naming the key.
#[test]
fn token_config_errors_name_the_key() {
    let st = Setup::new();
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str| {
        let p = dir.path().join("wharf.toml");
        std::fs::write(&p, toml).unwrap();
        run_cmd(
            std::process::Command::new(wharf_bin())
                .args(["check-config", "--config"])
                .arg(&p),
        )
    };
    let base = st.toml();
    let cases = [
        (
            format!(
                "{base}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.oidc.provider == 'gihtub'\"]\n"
            ),
            "unknown OIDC provider 'gihtub' (configured: github, gitlab)",
        ),
        (
            format!(
                "{base}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.oidc.subject == 'x'\"]\n"
            ),
            "unknown field 'subject' of identity.oidc",
        ),
        (
            format!(
                "[auth.oidc.github]{}",
                base.split("[auth.oidc.github]").nth(1).unwrap()
            ),
            "configure [auth.token] too",
        ),
        (
            base.replacen("https://127.0.0.1", "http://127.0.0.1", 1),
            "auth.oidc.github.issuer",
        ),
        (
            base.replace("algorithms = [\"RS256\"]", "algorithms = [\"HS256\"]"),
            "auth.oidc.gitlab.algorithms",
        ),
        (
            base.replace("ttl = \"1h\"", "ttl = \"48h\""),
            "auth.token.ttl",
        ),
        (
            base.replace("token-key.pem", "missing-key.pem"),
            "auth.token.signing_key",
        ),
    ];
    for (toml, says) in &cases {
        let (ok, out) = check(toml);
        assert!(!ok, "accepted:\n{toml}");
        assert!(out.contains(says), "{says}: {out}");
    }
    let (ok, out) = check(&format!(
        "{base}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.oidc.provider == 'github'\"]\n"
    ));
    assert!(ok, "{out}");
    assert!(
        out.contains("auth.oidc.gitlab: 1 signing keys fetched"),
        "{out}"
    );
}
