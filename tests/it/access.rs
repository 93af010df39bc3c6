//! Basic authentication and CEL access policies against the real binary over plain HTTP: who gets
//! 401 (with the Basic challenge) or 403, rules that error or are not boolean, default allow with
//! deny rules, mounts that need read access to their source, the credential cache, the decision
//! log, and startup errors for bad rules and bad password hashes.

use std::process::Command;

use crate::common::pki::{Pki, run_cmd, tls_connect};
use crate::common::*;

/// `[auth.identity.*]` for admin/admin-pw and bob/bob-pw.
fn users() -> String {
    format!(
        "[auth.identity.ops]\nusername = \"admin\"\npassword = \"{}\"\n[auth.identity.ci]\nusername = \"bob\"\npassword = \"{}\"\n",
        hash_password("admin-pw"),
        hash_password("bob-pw")
    )
}

fn get_as(c: &mut Client, path: &str, auth: Option<&str>) -> Resp {
    match auth {
        Some(a) => c.request("GET", path, &[("Authorization", a)], b""),
        None => c.get(path),
    }
}

fn admin_only_policy_answers_401_403_and_200(driver: &str) {
    let cfg = format!(
        "{}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.username == 'admin'\"]\n",
        users()
    );
    let s = Server::start_logged(driver, &cfg, "wharf::access=debug");
    let mut c = s.client();
    let admin = basic("admin", "admin-pw");
    let r = get_as(&mut c, "/v2/", None);
    assert_eq!(r.status, 401);
    assert_eq!(r.error_code(), "UNAUTHORIZED");
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"wharf\""));
    assert_eq!(get_as(&mut c, "/v2/", Some(&admin)).status, 200);
    let r = get_as(&mut c, "/v2/", Some(&basic("bob", "bob-pw")));
    assert_eq!(r.status, 403);
    assert_eq!(r.error_code(), "DENIED");
    assert_eq!(r.header("www-authenticate"), None);
    // A wrong password, an unknown user or another scheme is 401 whatever the policy says.
    for bad in [
        basic("admin", "bob-pw"),
        basic("eve", "x"),
        "Bearer abc".into(),
        "Basic %%%".into(),
    ] {
        let r = get_as(&mut c, "/v2/", Some(&bad));
        assert_eq!(r.status, 401, "{bad}");
        assert_eq!(r.error_code(), "UNAUTHORIZED");
        assert!(r.header("www-authenticate").is_some());
    }
    // The admin can push; the denial of a push with a body keeps the connection usable.
    let mut a = s.client();
    let d = sha256(b"layer");
    let r = a.request(
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        &[("Authorization", &admin)],
        b"layer",
    );
    assert_eq!(r.status, 201);
    let r = c.request(
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        &[],
        b"layer",
    );
    assert_eq!(r.status, 401);
    assert_eq!(get_as(&mut c, "/v2/", Some(&admin)).status, 200);
    // The decision is logged at debug with the rule that made it.
    s.wait_for_log("allowed by global.access_policy.rules[0] `identity.username == 'admin'`");
    s.wait_for_log("denied by global.access_policy: default (no rule was true)");
    // The access log names the Basic user.
    let s2 = Server::start_logged(driver, &cfg, "wharf::access=info");
    let mut c2 = s2.client();
    get_as(&mut c2, "/v2/", Some(&admin));
    s2.wait_for_log("\"admin\" GET /v2/ 200");
}

fn failing_and_non_boolean_rules_deny(driver: &str) {
    // default allow with deny rules: the delete rule denies bob; the failing rule denies requests
    // without a repository (the catalog); a non-boolean rule denies everything it is reached for.
    let cfg = format!(
        r#"{}[global.access_policy]
default = "allow"
rules = [
  "request.action == 'delete-manifest' && identity.username != 'admin'",
  "request.repository.startsWith('secret/')",
]
[repository."weird".access_policy]
default = "deny"
rules = ["identity.username", "identity.username == 'admin'"]
"#,
        users()
    );
    let s = Server::start_logged(driver, &cfg, "warn");
    let mut c = s.client();
    let (admin, bob) = (basic("admin", "admin-pw"), basic("bob", "bob-pw"));
    push_image(&mut c, "team/app", "v1", b"layer-1");
    let del = |c: &mut Client, who: &str| {
        c.request(
            "DELETE",
            "/v2/team/app/manifests/v1",
            &[("Authorization", who)],
            b"",
        )
        .status
    };
    assert_eq!(del(&mut c, &bob), 403, "deny rule under default allow");
    // The catalog has no repository: rule 1 fails, and under "allow" a failing rule denies.
    assert_eq!(get_as(&mut c, "/v2/_catalog", Some(&bob)).status, 403);
    assert_eq!(get_as(&mut c, "/v2/_catalog", None).status, 401);
    assert_eq!(get_as(&mut c, "/v2/team/app/tags/list", None).status, 200);
    assert_eq!(
        get_as(&mut c, "/v2/secret/x/tags/list", Some(&admin)).status,
        403
    );
    // Under "deny", the non-boolean rule 0 grants nothing; rule 1 still can.
    assert_eq!(
        get_as(&mut c, "/v2/weird/tags/list", Some(&bob)).status,
        403
    );
    assert_eq!(
        get_as(&mut c, "/v2/weird/tags/list", Some(&admin)).status,
        404
    );
    assert_eq!(del(&mut c, &admin), 202);
    s.wait_for_log("counts as deny");
}

fn repository_policy_follows_path_boundaries(driver: &str) {
    let cfg = format!(
        "{}[repository.\"team\".access_policy]\ndefault = \"deny\"\nrules = [\"identity.username == 'bob'\"]\n",
        users()
    );
    let s = Server::start_with(driver, &cfg);
    let mut c = s.client();
    let bob = basic("bob", "bob-pw");
    assert_eq!(get_as(&mut c, "/v2/team/tags/list", None).status, 401);
    assert_eq!(get_as(&mut c, "/v2/team/a/b/tags/list", None).status, 401);
    assert_eq!(
        get_as(&mut c, "/v2/team/a/b/tags/list", Some(&bob)).status,
        404
    );
    // `teamwork` is not below `team`; no policy covers it.
    assert_eq!(get_as(&mut c, "/v2/teamwork/tags/list", None).status, 404);
    assert_eq!(get_as(&mut c, "/v2/", None).status, 200);
}

fn mount_needs_read_access_to_the_source(driver: &str) {
    let cfg = format!(
        r#"{}[global.access_policy]
default = "deny"
rules = ["identity.username == 'admin'", "identity.username == 'bob' && has(request.repository) && request.repository.startsWith('team/')"]
"#,
        users()
    );
    let s = Server::start_with(driver, &cfg);
    let mut c = s.client();
    let (admin, bob) = (basic("admin", "admin-pw"), basic("bob", "bob-pw"));
    let blob = b"shared layer";
    let d = sha256(blob);
    for repo in ["secret/base", "team/base"] {
        let r = c.request(
            "POST",
            &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
            &[("Authorization", &admin)],
            blob,
        );
        assert_eq!(r.status, 201);
    }
    let mount = |c: &mut Client, from: Option<&str>| {
        let q = match from {
            Some(f) => format!("mount={d}&from={f}"),
            None => format!("mount={d}"),
        };
        c.request(
            "POST",
            &format!("/v2/team/app/blobs/uploads/?{q}"),
            &[("Authorization", &bob)],
            b"",
        )
    };
    // bob cannot read secret/base: no mount, a plain upload session instead.
    let r = mount(&mut c, Some("secret/base"));
    assert_eq!(r.status, 202, "{:?}", String::from_utf8_lossy(&r.body));
    assert!(
        r.header("location")
            .unwrap()
            .contains("/v2/team/app/blobs/uploads/")
    );
    let head = c.request(
        "HEAD",
        &format!("/v2/team/app/blobs/{d}"),
        &[("Authorization", &bob)],
        b"",
    );
    assert_eq!(head.status, 404, "the blob must not have been mounted");
    // Without `from` there is no source to check: also an upload session.
    assert_eq!(mount(&mut c, None).status, 202);
    // From a repository bob can read, the mount happens.
    let r = mount(&mut c, Some("team/base"));
    assert_eq!(r.status, 201);
    let head = c.request(
        "HEAD",
        &format!("/v2/team/app/blobs/{d}"),
        &[("Authorization", &bob)],
        b"",
    );
    assert_eq!(head.status, 200);
}

fn one_password_check_per_header_and_worker(driver: &str) {
    let cfg = format!(
        "{}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.username != ''\"]\n",
        users()
    );
    let s = Server::start_logged(driver, &cfg, "wharf::auth=debug");
    let bob = basic("bob", "bob-pw");
    // 50 requests on fresh connections (spread over both workers), like a docker pull's.
    for _ in 0..50 {
        let mut c = s.client();
        assert_eq!(get_as(&mut c, "/v2/", Some(&bob)).status, 200);
    }
    let log = s.wait_for_log("password check for \"bob\": ok");
    let checks = log.matches("password check for \"bob\"").count();
    assert!(
        (1..=2).contains(&checks),
        "{checks} argon2 checks for 50 requests on 2 workers:\n{log}"
    );
}

fn no_policy_allows_everything_but_still_checks_credentials(driver: &str) {
    let s = Server::start_with(driver, &users());
    let mut c = s.client();
    push_image(&mut c, "any/repo", "v1", b"x");
    assert_eq!(
        get_as(&mut c, "/v2/", Some(&basic("bob", "bob-pw"))).status,
        200
    );
    assert_eq!(
        get_as(&mut c, "/v2/", Some(&basic("bob", "nope"))).status,
        401
    );
}

fn certificate_and_basic_credentials_fill_one_identity(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let cfg = format!(
        "{}{}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.username == 'bob' && 'build-server' in identity.certificate.common_names && identity.id == 'ci'\"]\n",
        pki.server_toml(Some("optional")),
        users()
    );
    let s = Server::start_in(dir, driver, &cfg, "warn");
    let (crt, key) = (pki.path("client.crt"), pki.path("client.key"));
    let connect = |cert: bool| {
        let cfg = pki.client_config(cert.then_some((crt.as_path(), key.as_path())), false);
        tls_connect(s.addr, cfg).unwrap().client
    };
    let bob = basic("bob", "bob-pw");
    assert_eq!(get_as(&mut connect(true), "/v2/", Some(&bob)).status, 200);
    assert_eq!(get_as(&mut connect(true), "/v2/", None).status, 403);
    assert_eq!(get_as(&mut connect(false), "/v2/", Some(&bob)).status, 403);
    assert_eq!(get_as(&mut connect(false), "/v2/", None).status, 401);
}

/// Where anonymous clients may do everything, credentials that match no user are still refused
/// (401), never ignored; with no Basic users at all the message says so.
fn credentials_matching_no_user_are_refused_where_anonymous_is_allowed(driver: &str) {
    let open = Server::start(driver);
    let mut c = open.client();
    assert_eq!(get_as(&mut c, "/v2/", None).status, 200);
    let r = get_as(&mut c, "/v2/", Some(&basic("bogus", "bogus")));
    assert_eq!(r.status, 401);
    assert!(
        r.body_text()
            .contains("this registry has no Basic users (auth.identity)"),
        "{}",
        r.body_text()
    );
    let with_users = Server::start_with(driver, &users());
    let mut c = with_users.client();
    assert_eq!(get_as(&mut c, "/v2/", None).status, 200);
    let r = get_as(&mut c, "/v2/", Some(&basic("admin", "wrong")));
    assert_eq!(r.status, 401);
    assert!(
        r.body_text().contains("invalid username or password"),
        "{}",
        r.body_text()
    );
    assert_eq!(
        get_as(&mut c, "/v2/", Some(&basic("admin", "admin-pw"))).status,
        200
    );
}

on_both_drivers!(
    credentials_matching_no_user_are_refused_where_anonymous_is_allowed,
    certificate_and_basic_credentials_fill_one_identity,
    admin_only_policy_answers_401_403_and_200,
    failing_and_non_boolean_rules_deny,
    repository_policy_follows_path_boundaries,
    mount_needs_read_access_to_the_source,
    one_password_check_per_header_and_worker,
    no_policy_allows_everything_but_still_checks_credentials,
);

/// Run `wharf <cmd> -c <file>` for a config; returns (success, output).
fn with_config(cmd: &str, toml: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wharf.toml");
    std::fs::write(
        &p,
        format!("[server]\nport = 0\n[storage]\nroot = \"data\"\n{toml}"),
    )
    .unwrap();
    run_cmd(Command::new(wharf_bin()).arg(cmd).arg("-c").arg(&p))
}

#[test]
fn bad_rules_and_hashes_are_startup_errors_naming_the_place() {
    let cases = [
        (
            "[global.access_policy]\ndefault = \"deny\"\nrules = [\"true\", \"identity.username == 'a' || usr == 'b'\"]\n",
            "global.access_policy.rules[1]: line 1, column 29: unknown variable 'usr'",
        ),
        (
            "[repository.\"prod\".access_policy]\ndefault = \"deny\"\nrules = [\"identity.certificate.organisations.contains('x')\"]\n",
            "repository.\"prod\".access_policy.rules[0]: line 1, column 21: unknown field 'organisations'",
        ),
        (
            "[global.access_policy]\ndefault = \"deny\"\nrules = [\"request.action ==\"]\n",
            "global.access_policy.rules[0]: line 1, column",
        ),
        ("[global.access_policy]\nrules = []\n", "default"),
        ("[global.access_policy]\ndefault = \"maybe\"\n", "maybe"),
        (
            "[auth.identity.ci]\nusername = \"ci\"\npassword = \"plaintext\"\n",
            "auth.identity.ci.password: not a PHC hash string",
        ),
        (
            "[repository.\"Bad Name\".access_policy]\ndefault = \"deny\"\n",
            "repository.\"Bad Name\"",
        ),
    ];
    for (toml, expected) in cases {
        for cmd in ["check-config", "serve"] {
            let (ok, out) = with_config(cmd, toml);
            assert!(!ok, "{cmd} accepted:\n{toml}");
            assert!(
                out.contains(expected),
                "{cmd}: expected {expected:?} in:\n{out}"
            );
        }
    }
    let (ok, out) = with_config(
        "check-config",
        &format!(
            "{}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.id == 'ops'\"]\n",
            users()
        ),
    );
    assert!(ok, "{out}");
}

#[test]
fn hash_password_reads_stdin_and_refuses_an_empty_password() {
    let h = hash_password("correct horse");
    assert!(h.contains("$v=19$m=19456,t=2,p=1$"), "{h}");
    assert_ne!(h, hash_password("correct horse"), "a fresh salt each time");
    let out = Command::new(wharf_bin())
        .arg("hash-password")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("empty password"));
}
