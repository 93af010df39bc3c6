//! The bucket's keys change under a running node: temporary keys that SeaweedFS's STS issues
//! for a web identity token are renewed before they expire, and keys an agent rewrites in files
//! are read again, and redirects carry the session token. A real SeaweedFS with its STS, trusting the tests' OIDC issuer (TLS, test CA),
//! whose temporary keys last `seaweed::STS_LIFETIME`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::common::oidc::{Issuer, IssuerKey, now};
use crate::common::pki::Pki;
use crate::common::seaweed::{self, Seaweed};
use crate::common::*;

struct Sts {
    dir: tempfile::TempDir,
    key: Arc<IssuerKey>,
    issuer: Issuer,
    weed: Seaweed,
}

fn sts() -> Sts {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let key = IssuerKey::new("RS256", dir.path());
    let issuer = Issuer::start(&pki, vec![Arc::clone(&key)]);
    let weed = Seaweed::start_sts(&issuer.url, &pki.path("ca.crt"));
    Sts {
        dir,
        key,
        issuer,
        weed,
    }
}

impl Sts {
    /// A token like a Kubernetes service account's for the role's audience, valid an hour.
    fn token(&self) -> String {
        self.key.sign(&json!({
            "iss": self.issuer.url,
            "sub": "system:serviceaccount:registry:wharf",
            "aud": seaweed::AUDIENCE,
            "iat": now(),
            "exp": now() + 3600,
        }))
    }

    /// The `[storage]` tables of a node on the bucket under `prefix`, its `[storage.s3]` ending
    /// with `credentials`.
    fn node_storage(&self, prefix: &str, credentials: &str) -> String {
        format!(
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"{}\"\nbucket = \"{}\"\nprefix = \"{prefix}\"\n{credentials}",
            self.weed.endpoint(),
            seaweed::BUCKET,
        )
    }

    /// A node on the bucket under `prefix` with `role_arn` and a token file holding a token;
    /// the file's path, to rotate or break the token.
    fn role_node(&self, prefix: &str) -> (Server, std::path::PathBuf) {
        let token_file = self
            .dir
            .path()
            .join(format!("{}token", prefix.replace('/', "-")));
        std::fs::write(&token_file, self.token()).unwrap();
        let storage = self.node_storage(
            prefix,
            &format!(
                "role_arn = \"{}\"\nweb_identity_token_file = \"{}\"\n",
                seaweed::ROLE_ARN,
                token_file.display()
            ),
        );
        (Server::start_with("io_uring", &storage), token_file)
    }

    /// Temporary keys from the STS, as an agent would get them: id, secret, token and when
    /// they expire (seconds since the epoch).
    fn keys(&self) -> (String, String, String, i64) {
        let (status, body) = self.weed.assume_role(&self.token());
        assert_eq!(status, 200, "{body}");
        let field = |name: &str| {
            let (_, rest) = body.split_once(&format!("<{name}>")).expect(name);
            rest.split_once(&format!("</{name}>")).unwrap().0.to_owned()
        };
        let expires = field("Expiration");
        let expires = Command::new("date")
            .args(["-d", &expires, "+%s"])
            .output()
            .unwrap();
        let expires = String::from_utf8_lossy(&expires.stdout)
            .trim()
            .parse()
            .unwrap();
        (
            field("AccessKeyId"),
            field("SecretAccessKey"),
            field("SessionToken"),
            expires,
        )
    }
}

/// Sleep until the epoch second `t` has passed.
fn sleep_past(t: i64) {
    let left = t + 1 - now();
    if left > 0 {
        std::thread::sleep(Duration::from_secs(left as u64));
    }
}

/// After the keys a node started with have expired: a push and a pull of what was pushed before
/// both work through it.
fn still_serves(node: &Server, before: &str, layer: &[u8]) {
    let mut c = node.client();
    push_image(&mut c, "ci/app", "after", &noise(9, 300 << 10));
    let r = c.request(
        "GET",
        "/v2/ci/app/manifests/before",
        &[("Accept", OCI_MANIFEST)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert_eq!(sha256(&r.body), before);
    let r = c.get(&format!("/v2/ci/app/blobs/{}", sha256(layer)));
    assert_eq!(r.status, 200, "{}", r.body_text());
    assert!(r.body == layer, "the layer reads back whole");
}

/// A node given a role and a token file gets its keys from the STS and renews them before they
/// expire, with the token the file holds then: long past the first keys' lifetime it still
/// pushes and pulls.
#[test]
fn a_node_on_a_web_identity_renews_its_keys_before_they_expire() {
    let sts = sts();
    let (node, token_file) = sts.role_node("web-identity/");
    let expiry = "wharf_objectstore_credentials_expiry_timestamp_seconds";
    let first_expiry = metric(&node, expiry) as i64;
    let lifetime = seaweed::STS_LIFETIME.as_secs() as i64;
    assert!(
        first_expiry > now() && first_expiry <= now() + lifetime + 2,
        "the first keys expire at {first_expiry}, now {}",
        now()
    );
    let layer = noise(1, 1 << 20);
    let before = push_image(&mut node.client(), "ci/app", "before", &layer);

    // The kubelet rotates the token: the next renewal sends the new one.
    std::fs::write(&token_file, sts.token()).unwrap();
    sleep_past(first_expiry + lifetime);
    let renewed = "wharf_objectstore_credential_renewals_total{outcome=\"ok\"}";
    assert!(
        metric(&node, renewed) >= 2.0,
        "renewals: {}",
        metric(&node, renewed)
    );
    assert!(metric(&node, expiry) as i64 > first_expiry + lifetime / 2);
    still_serves(&node, &before, &layer);
    let failed = "wharf_objectstore_credential_renewals_total{outcome=\"failed\"}";
    assert_eq!(metric(&node, failed), 0.0);
}

/// A role the STS will not give keys for stops startup with an error naming the key and quoting
/// the STS; so does a token it does not trust.
#[test]
fn a_role_or_token_the_sts_refuses_stops_startup_naming_the_key() {
    let sts = sts();
    let good = sts.dir.path().join("good-token");
    std::fs::write(&good, sts.token()).unwrap();
    let forged = sts.dir.path().join("forged-token");
    let other = IssuerKey::new("RS256", sts.dir.path());
    let claims = json!({"iss": sts.issuer.url, "sub": "x", "aud": seaweed::AUDIENCE, "iat": now(), "exp": now() + 3600});
    std::fs::write(&forged, other.sign(&claims)).unwrap();
    let empty = sts.dir.path().join("empty-token");
    std::fs::write(&empty, "\n").unwrap();
    for (role, token, says) in [
        (
            "arn:aws:iam::role/nobody",
            &good,
            "the STS refused AssumeRoleWithWebIdentity",
        ),
        (
            seaweed::ROLE_ARN,
            &forged,
            "the STS refused AssumeRoleWithWebIdentity",
        ),
        (seaweed::ROLE_ARN, &empty, "the file is empty"),
    ] {
        let path = sts.dir.path().join("wharf.toml");
        let credentials = format!(
            "role_arn = \"{role}\"\nweb_identity_token_file = \"{}\"\n",
            token.display()
        );
        std::fs::write(&path, sts.node_storage("refused/", &credentials)).unwrap();
        let out = Command::new(wharf_bin())
            .args(["check-config", "-c"])
            .arg(&path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr).into_owned()
            + &String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success(), "{role} with {token:?} was accepted");
        assert!(
            text.contains("storage.s3.role_arn") && text.contains(says),
            "{role} with {token:?}: {text}"
        );
    }
}

/// Temporary keys that an agent writes into the key id, secret and session token files are
/// used as soon as it replaces them: after the first keys have expired, the node still works.
#[test]
fn keys_an_agent_rewrites_in_files_are_used_without_a_restart() {
    let sts = sts();
    let (id_file, secret_file, token_file) = (
        sts.dir.path().join("key-id"),
        sts.dir.path().join("secret"),
        sts.dir.path().join("session-token"),
    );
    let write = |(id, secret, token, _): &(String, String, String, i64)| {
        std::fs::write(&id_file, id).unwrap();
        std::fs::write(&secret_file, secret).unwrap();
        std::fs::write(&token_file, token).unwrap();
    };
    let first = sts.keys();
    write(&first);
    let storage = sts.node_storage(
        "agent/",
        &format!(
            "access_key_id_file = \"{}\"\nsecret_access_key_file = \"{}\"\nsession_token_file = \"{}\"\n",
            id_file.display(),
            secret_file.display(),
            token_file.display()
        ),
    );
    let node = Server::start_with("io_uring", &storage);
    let layer = noise(2, 1 << 20);
    let before = push_image(&mut node.client(), "ci/app", "before", &layer);

    // Renewed halfway, as an agent does: the new keys outlive the first by half a lifetime.
    sleep_past(first.3 - seaweed::STS_LIFETIME.as_secs() as i64 / 2);
    let second = sts.keys();
    assert_ne!(first.0, second.0, "the STS issued new keys");
    write(&second);
    let renewed = "wharf_objectstore_credential_renewals_total{outcome=\"ok\"}";
    wait_for("the node reads the new keys", || {
        metric(&node, renewed) >= 1.0
    });
    sleep_past(first.3);
    still_serves(&node, &before, &layer);
}

/// With `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE` in its environment (as EKS sets them)
/// and no keys in its config, a node gets its keys from the STS; its redirects carry the session
/// token, and curl and crane follow them to the blob.
#[test]
fn a_web_identity_from_the_environment_signs_redirects_with_its_session_token() {
    let sts = sts();
    let token_file = sts.dir.path().join("token");
    std::fs::write(&token_file, sts.token()).unwrap();
    let storage = sts.node_storage("from-env/", "redirect = true\n");
    let token_path = token_file.display().to_string();
    let node = Server::start_with_env(
        "io_uring",
        &storage,
        &[
            ("AWS_ROLE_ARN", seaweed::ROLE_ARN),
            ("AWS_WEB_IDENTITY_TOKEN_FILE", &token_path),
        ],
    );
    let mut c = node.client();
    let layer = noise(3, 300_000);
    let image = push_image(&mut c, "ci/app", "v1", &layer);
    let d = sha256(&layer);
    let r = c.get(&format!("/v2/ci/app/blobs/{d}"));
    assert_eq!(r.status, 307, "{}", r.body_text());
    let location = r.header("Location").unwrap();
    assert!(location.contains("X-Amz-Security-Token="), "{location}");
    let fetched = Command::new("curl")
        .args(["-sSf", location])
        .output()
        .unwrap();
    assert!(fetched.status.success(), "{fetched:?}");
    assert!(fetched.stdout == layer, "the presigned URL serves the blob");
    let digest = crane_pull_digest(&format!("{}/ci/app:v1", node.host()));
    assert_eq!(digest, image);
}

/// Poll `ok` every 100 ms for up to `secs` seconds (renewals happen on the keys' own schedule).
fn wait_secs(what: &str, secs: u64, mut ok: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while !ok() {
        assert!(
            std::time::Instant::now() < until,
            "not within {secs} s: {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A renewal that fails (here the token file is emptied) keeps the keys held before while they
/// last, counts as failed, logs why, and is retried: the first retry after the token is back
/// renews the keys, and the node serves past the first keys' expiry.
#[test]
fn a_failed_renewal_keeps_the_keys_held_and_is_retried() {
    let sts = sts();
    let (node, token_file) = sts.role_node("retried/");
    let first_expiry = metric(
        &node,
        "wharf_objectstore_credentials_expiry_timestamp_seconds",
    ) as i64;
    let layer = noise(4, 1 << 20);
    let before = push_image(&mut node.client(), "ci/app", "before", &layer);

    std::fs::write(&token_file, "").unwrap();
    let failed = "wharf_objectstore_credential_renewals_total{outcome=\"failed\"}";
    let renewed = "wharf_objectstore_credential_renewals_total{outcome=\"ok\"}";
    wait_secs("a renewal fails", 20, || metric(&node, failed) >= 1.0);
    assert_eq!(metric(&node, renewed), 0.0);
    assert!(
        node.log().contains("web identity token file") && node.log().contains("empty"),
        "{}",
        node.log()
    );
    // The keys held still last: pushes go on.
    push_image(
        &mut node.client(),
        "ci/app",
        "meanwhile",
        &noise(5, 200 << 10),
    );

    std::fs::write(&token_file, sts.token()).unwrap();
    wait_secs("a retry renews the keys", 20, || {
        metric(&node, renewed) >= 1.0
    });
    sleep_past(first_expiry);
    still_serves(&node, &before, &layer);
}

/// Keys in the environment, with `AWS_SESSION_TOKEN` for temporary ones: the node signs with
/// all three (without the token the store refuses them and startup says so).
#[test]
fn keys_from_the_environment_carry_their_session_token() {
    let sts = sts();
    let (id, secret, token, _) = sts.keys();
    let storage = sts.node_storage("env-keys/", "");
    let env = [
        ("AWS_ACCESS_KEY_ID", id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", secret.as_str()),
        ("AWS_SESSION_TOKEN", token.as_str()),
    ];
    let node = Server::start_with_env("io_uring", &storage, &env);
    push_image(&mut node.client(), "ci/app", "v1", &noise(6, 200 << 10));
    assert_eq!(
        metric(
            &node,
            "wharf_objectstore_credentials_expiry_timestamp_seconds"
        ),
        0.0,
        "wharf is not told when keys from the environment expire"
    );

    let (ok, out) = node.run_wharf_with_env(["check-config"].as_slice(), &env[..2]);
    assert!(!ok, "keys without their token were accepted: {out}");
    assert!(out.contains("storage.s3"), "{out}");
    let (ok, out) = node.run_wharf_with_env(["check-config"].as_slice(), &env);
    assert!(ok, "{out}");
}
