//! The decisions users rely on: rules as written in the docs, absent fields, tags decided one by one,
//! failing rules, repository prefixes.

use super::*;
use crate::tls::CertIdentity;

fn control(toml: &str) -> Result<AccessControl, RuleError> {
    AccessControl::from_config(&Config::parse_str(toml).unwrap())
}

fn cert(cns: &[&str], orgs: &[&str]) -> CertIdentity {
    CertIdentity {
        common_names: cns.iter().map(|s| s.to_string()).collect(),
        organizations: orgs.iter().map(|s| s.to_string()).collect(),
        ..CertIdentity::default()
    }
}

fn action(path: &str, method: crate::http::Method, query: &str) -> Action {
    crate::registry::route(method, path, query).unwrap()
}

/// Decide for a certificate (or none) and a Basic user (or none).
fn allowed(ac: &AccessControl, c: Option<&CertIdentity>, user: Option<&str>, a: &Action) -> bool {
    let peer = Peer::new(c, "192.0.2.7".parse().unwrap());
    let user = user.map(|u| (u, u));
    ac.decide(IdentityVal::new(&peer, user), a, "main").allowed
}

use crate::http::Method::{Get, Head, Put};

fn pull() -> Action {
    action("/v2/dev/app/manifests/latest", Get, "")
}
fn push() -> Action {
    action("/v2/dev/app/manifests/latest", Put, "")
}

/// The certificate fields a leaked key or a SPIFFE workload is named by.
#[test]
fn rules_name_one_certificate_by_serial_fingerprint_san_issuer_or_expiry() {
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = [
  "identity.certificate.serial == '0a1b'",
  "identity.certificate.fingerprint.startsWith('ff00')",
  "'spiffe://example.org/ci' in identity.certificate.uris",
  "identity.certificate.dns_names.exists(d, d.endsWith('.build.example.org'))",
  "'ci@example.org' in identity.certificate.emails",
  "identity.certificate.issuer == 'CN=CI CA' && identity.certificate.not_after > 2000000000",
]"#,
    )
    .unwrap();
    let with = |f: &dyn Fn(&mut CertIdentity)| {
        let mut c = cert(&["x"], &[]);
        f(&mut c);
        allowed(&ac, Some(&c), None, &push())
    };
    assert!(!with(&|_| {}));
    assert!(with(&|c| c.serial = "0a1b".into()));
    assert!(!with(&|c| c.serial = "0a1c".into()));
    assert!(with(&|c| c.fingerprint = "ff00aa".into()));
    assert!(with(&|c| c.uris = vec!["spiffe://example.org/ci".into()]));
    assert!(with(&|c| c.dns_names = vec!["r1.build.example.org".into()]));
    assert!(with(&|c| c.emails = vec!["ci@example.org".into()]));
    assert!(with(&|c| {
        c.issuer = "CN=CI CA".into();
        c.not_after = 2_100_000_000;
    }));
    assert!(!with(&|c| {
        c.issuer = "CN=CI CA".into();
        c.not_after = 1_900_000_000;
    }));
    // Without a certificate the fields are empty, never an error that flips a deny rule.
    assert!(!allowed(&ac, None, None, &push()));
    assert!(control("[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.certificate.serials == ''\"]").is_err());
}

#[test]
fn no_policy_allows_everything() {
    let ac = control("").unwrap();
    assert!(ac.is_open());
    assert!(allowed(&ac, None, None, &push()));
}

#[test]
fn the_rules_users_copy_work_as_written() {
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = [
  "identity.certificate.organizations.contains('DevOps')",
  "identity.username != '' && request.action.startsWith('get-')",
  "'build-server' in identity.certificate.common_names",
  "size(identity.certificate.common_names) > 1",
  "has(request.digest) && request.repository.matches('^pub(/.*)?$') && !request.action.endsWith('-upload')",
]"#,
    )
    .unwrap();
    let devops = cert(&["alice"], &["Eng", "DevOps"]);
    let builder = cert(&["build-server"], &[]);
    let two = cert(&["a", "b"], &[]);
    let other = cert(&["mallory"], &["Eng"]);
    assert!(allowed(&ac, Some(&devops), None, &push()));
    assert!(allowed(&ac, Some(&builder), None, &push()));
    assert!(allowed(&ac, Some(&two), None, &push()));
    assert!(!allowed(&ac, Some(&other), None, &push()));
    assert!(allowed(&ac, None, Some("bob"), &pull()));
    assert!(!allowed(&ac, None, Some("bob"), &push()));
    assert!(!allowed(&ac, None, None, &pull()));
    let blob = action(
        &format!("/v2/pub/x/blobs/sha256:{}", "a".repeat(64)),
        Head,
        "",
    );
    assert!(allowed(&ac, None, None, &blob));
    let blob = action(
        &format!("/v2/public/blobs/sha256:{}", "a".repeat(64)),
        Get,
        "",
    );
    assert!(
        !allowed(&ac, None, None, &blob),
        "matches is anchored by the rule"
    );
}

#[test]
fn request_fields_are_absent_where_the_endpoint_has_none() {
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = ["!has(request.repository) && !has(request.reference) && !has(request.digest) && request.action in ['get-api-version', 'list-catalog']",
     "has(request.reference) && request.reference == 'latest' && !has(request.digest)",
     "request.digest == 'sha256:' + 'b'.repeat(1) "]"#,
    );
    // `repeat` is not a function wharf knows: a startup error, not a per-request one.
    let e = ac.err().expect("unknown function").to_string();
    assert!(
        e.contains("global.access_policy.rules[2]") && e.contains("'repeat'"),
        "{e}"
    );
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = ["!has(request.repository) && !has(request.reference) && !has(request.digest) && request.action in ['get-api-version', 'list-catalog']",
     "has(request.reference) && request.reference == 'latest' && !has(request.digest)"]"#,
    )
    .unwrap();
    assert!(allowed(&ac, None, None, &action("/v2/", Get, "")));
    assert!(allowed(&ac, None, None, &action("/v2/_catalog", Get, "")));
    assert!(allowed(&ac, None, None, &pull()));
    assert!(!allowed(
        &ac,
        None,
        None,
        &action("/v2/dev/app/tags/list", Get, "")
    ));
}

/// Decide with every tag the request changes, as the gate does.
fn allowed_with_tags(ac: &AccessControl, user: Option<&str>, a: &Action) -> bool {
    let peer = Peer::new(None, "192.0.2.7".parse().unwrap());
    let user = user.map(|u| (u, u));
    ac.decide_with_tags(|| IdentityVal::new(&peer, user), a, "main", None)
        .allowed
}

#[test]
fn every_tag_a_request_changes_is_decided_as_its_reference() {
    // "Only the build server writes or removes `release`": the usual protected-tag rule.
    let ac = control(
        r#"[global.access_policy]
default = "allow"
rules = ["request.action in ['put-manifest', 'delete-manifest'] && has(request.reference) && request.reference == 'release' && identity.username != 'build'"]"#,
    )
    .unwrap();
    let d = format!("sha256:{}", "c".repeat(64));
    let by_digest = action(&format!("/v2/team/app/manifests/{d}"), Put, "tag=release");
    let by_other_tag = action("/v2/team/app/manifests/innocent", Put, "tag=x&tag=release");
    let plain = action("/v2/team/app/manifests/innocent", Put, "tag=x");
    for a in [&by_digest, &by_other_tag] {
        assert!(!allowed_with_tags(&ac, Some("dev"), a), "{a:?}");
        assert!(allowed_with_tags(&ac, Some("build"), a), "{a:?}");
        // The single decision (path reference only) was the bypass.
        assert!(allowed(&ac, None, Some("dev"), a));
    }
    assert!(allowed_with_tags(&ac, Some("dev"), &plain));
    let mut delete = action(
        &format!("/v2/team/app/manifests/{d}"),
        crate::http::Method::Delete,
        "",
    );
    assert!(
        allowed_with_tags(&ac, Some("dev"), &delete),
        "no tag points at it"
    );
    if let Action::DeleteManifest { tags, .. } = &mut delete {
        tags.push("release".parse().unwrap());
    }
    assert!(!allowed_with_tags(&ac, Some("dev"), &delete));
    assert!(allowed_with_tags(&ac, Some("build"), &delete));
}

#[test]
fn request_tags_lists_the_tags_a_request_changes() {
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = ["request.tags == ['latest', 'v1', 'v2']", "request.action == 'get-manifest' && request.tags == []"]"#,
    )
    .unwrap();
    let put = action(
        "/v2/a/manifests/latest",
        Put,
        "tag=v1&tag=latest&tag=v2&tag=v1",
    );
    assert!(allowed(&ac, None, None, &put));
    assert!(allowed(&ac, None, None, &pull()));
    assert!(
        !allowed(&ac, None, None, &push()),
        "request.tags is ['latest']"
    );
}

#[test]
fn ipv4_mapped_clients_look_like_ipv4_to_rules() {
    let ac = control(
        r#"[global.access_policy]
default = "allow"
rules = ["identity.client_ip == '203.0.113.9'"]"#,
    )
    .unwrap();
    let peer = Peer::new(None, "::ffff:203.0.113.9".parse().unwrap());
    assert!(
        !ac.decide(IdentityVal::new(&peer, None), &pull(), "main")
            .allowed
    );
}

#[test]
fn digest_and_reference_read_as_text() {
    let d = format!("sha256:{}", "c".repeat(64));
    let ac = control(&format!(
        "[global.access_policy]\ndefault = \"deny\"\nrules = [\"request.digest == '{d}' && request.reference == '{d}' && request.repository == 'dev/app' && identity.client_ip == '192.0.2.7'\"]"
    ))
    .unwrap();
    assert!(allowed(
        &ac,
        None,
        None,
        &action(&format!("/v2/dev/app/manifests/{d}"), Get, "")
    ));
    assert!(!allowed(&ac, None, None, &pull()));
}

#[test]
fn default_allow_with_deny_rules() {
    let ac = control(
        r#"[global.access_policy]
default = "allow"
rules = ["request.action == 'delete-manifest' && identity.username != 'admin'"]"#,
    )
    .unwrap();
    let delete = action(
        "/v2/dev/app/manifests/latest",
        crate::http::Method::Delete,
        "",
    );
    assert!(allowed(&ac, None, None, &push()));
    assert!(!allowed(&ac, None, Some("bob"), &delete));
    assert!(allowed(&ac, None, Some("admin"), &delete));
}

#[test]
fn failing_and_non_boolean_rules_never_allow() {
    // Under "deny" a failing rule grants nothing; a later true rule still can.
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = ["request.repository.startsWith('dev')", "request.action", "identity.username == 'admin'"]"#,
    )
    .unwrap();
    let catalog = action("/v2/_catalog", Get, "");
    assert!(
        !allowed(&ac, None, Some("bob"), &catalog),
        "no repository: rule 0 fails"
    );
    assert!(allowed(&ac, None, Some("admin"), &catalog));
    // Under "allow" a failing rule denies.
    let ac = control(
        r#"[global.access_policy]
default = "allow"
rules = ["request.repository.startsWith('secret')"]"#,
    )
    .unwrap();
    assert!(!allowed(&ac, None, None, &catalog));
    assert!(allowed(&ac, None, None, &pull()));
    let ac =
        control("[global.access_policy]\ndefault = \"allow\"\nrules = [\"identity.username\"]")
            .unwrap();
    let peer = Peer::new(None, "::1".parse().unwrap());
    let d = ac.decide(IdentityVal::new(&peer, None), &pull(), "main");
    assert!(!d.allowed);
    assert_eq!(d.reason, Reason::Failed(0));
    assert!(d.to_string().contains("not boolean"), "{d}");
}

#[test]
fn repository_policies_match_the_longest_name_at_a_path_boundary() {
    let ac = control(
        r#"[repository."dev".access_policy]
default = "deny"
rules = ["identity.certificate.organizations.contains('Developers')"]
[repository."dev/secret".access_policy]
default = "deny"
rules = []
[repository."prod".access_policy]
default = "deny"
rules = ["identity.certificate.organizations.contains('Platform')"]"#,
    )
    .unwrap();
    let devs = cert(&["d"], &["Developers"]);
    let on = |repo: &str| action(&format!("/v2/{repo}/manifests/v1"), Put, "");
    assert!(allowed(&ac, Some(&devs), None, &on("dev/app")));
    assert!(allowed(&ac, Some(&devs), None, &on("dev")));
    assert!(!allowed(&ac, Some(&devs), None, &on("dev/secret/x")));
    assert!(!allowed(&ac, Some(&devs), None, &on("prod/app")));
    assert!(
        allowed(&ac, Some(&devs), None, &on("devops/app")),
        "no policy covers devops"
    );
    assert!(allowed(
        &ac,
        Some(&cert(&["p"], &["Platform"])),
        None,
        &on("prod/app")
    ));
}

#[test]
fn global_and_repository_policies_must_both_allow() {
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = ["identity.username != ''"]
[repository."dev".access_policy]
default = "deny"
rules = ["identity.username == 'alice'"]"#,
    )
    .unwrap();
    assert!(allowed(&ac, None, Some("alice"), &push()));
    assert!(!allowed(&ac, None, Some("bob"), &push()));
    assert!(!allowed(&ac, None, None, &push()));
}

fn compile_error(rule: &str) -> String {
    control(&format!(
        "[repository.\"team/app\".access_policy]\ndefault = \"deny\"\nrules = [\"true\", {rule:?}]"
    ))
    .err()
    .unwrap_or_else(|| panic!("{rule} compiled"))
    .to_string()
}

#[test]
fn request_listener_is_the_listener_name() {
    let ac = control(
        r#"[server]
[[server.listener]]
name = "push"
port = 0
[global.access_policy]
default = "deny"
rules = ["request.action.startsWith('get-') && request.listener == 'main'",
     "request.listener in ['push']"]"#,
    )
    .unwrap();
    let peer = Peer::new(None, "192.0.2.7".parse().unwrap());
    let decide = |a: &Action, l: &str| ac.decide(IdentityVal::new(&peer, None), a, l).allowed;
    assert!(decide(&pull(), "main"));
    assert!(!decide(&push(), "main"));
    assert!(decide(&push(), "push"));
    assert!(decide(&pull(), "push"));
    assert!(!decide(&pull(), "other"));
}

#[test]
fn unknown_listener_names_in_rules_are_startup_errors() {
    let config = |rule: &str| {
        format!(
            "[[server.listener]]\nname = \"push\"\nport = 0\n[server.admin]\nport = 0\n[global.access_policy]\ndefault = \"allow\"\nrules = [{rule:?}]"
        )
    };
    for good in [
        "request.listener == 'push'",
        "'main' != request.listener",
        "request.listener in ['main', 'admin']",
        "request.listener.startsWith('pu')",
    ] {
        control(&config(good)).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for (bad, name) in [
        ("request.listener == 'psuh'", "psuh"),
        ("'mian' != request.listener", "mian"),
        ("request.listener in ['main', 'public']", "public"),
    ] {
        let e = control(&config(bad)).err().unwrap().to_string();
        assert!(
            e.contains(&format!(
                "unknown listener '{name}' (configured: main, push, admin)"
            )) && e.contains("global.access_policy.rules[0]"),
            "{bad}: {e}"
        );
    }
}

#[test]
fn request_upstream_names_the_mirror_serving_a_pull() {
    let ac = control(
        r#"[[upstream]]
name = "hub"
url = "http://127.0.0.1:1"
prefix = "hub"
[global.access_policy]
default = "deny"
rules = ["has(request.upstream) && request.upstream == 'hub' && request.action.startsWith('get-')",
         "identity.username == 'ci'"]"#,
    )
    .unwrap();
    let peer = Peer::new(None, "192.0.2.7".parse().unwrap());
    let decide = |a: &Action, user: Option<(&str, &str)>, up: Option<&str>| {
        ac.decide_through(IdentityVal::new(&peer, user), a, "main", up)
            .allowed
    };
    assert!(
        decide(&pull(), None, Some("hub")),
        "anonymous pulls through the mirror"
    );
    assert!(!decide(&pull(), None, None), "not of local content");
    assert!(!decide(&push(), None, Some("hub")));
    assert!(decide(&pull(), Some(("ci", "ci")), None));
    // An unknown upstream name in a rule is a startup error.
    let e = control(
        r#"[[upstream]]
name = "hub"
url = "http://127.0.0.1:1"
prefix = "hub"
[global.access_policy]
default = "allow"
rules = ["request.upstream != 'dockerhub'"]"#,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("unknown upstream 'dockerhub' (configured: hub)"),
        "{e}"
    );
}

#[test]
fn bad_rules_are_startup_errors_naming_table_index_and_position() {
    let e = compile_error("identity.username == ");
    assert!(
        e.starts_with(
            "invalid config: repository.\"team/app\".access_policy.rules[1]: line 1, column"
        ),
        "{e}"
    );
    assert!(e.contains("syntax error"), "{e}");
    let e = compile_error("request.action == 'x' && user == 'bob'");
    assert!(
        e.contains("rules[1]: line 1, column 26: unknown variable 'user'"),
        "{e}"
    );
    let e = compile_error("identity.bogus == 1");
    assert!(
        e.contains("column 9: unknown field 'bogus' of identity"),
        "{e}"
    );
    let e = compile_error("has(request.tag)");
    assert!(e.contains("unknown field 'tag' of request"), "{e}");
    let e = compile_error("identity.certificate.common_name.contains('x')");
    assert!(
        e.contains("unknown field 'common_name' of identity.certificate"),
        "{e}"
    );
    let e = compile_error("identity.username.first == 'a'");
    assert!(e.contains("identity.username has no fields"), "{e}");
    let e = compile_error("request.action.matches('get-(')");
    assert!(e.contains("invalid regex"), "{e}");
    let e = compile_error("lower(request.action) == 'x'");
    assert!(e.contains("unknown function 'lower'"), "{e}");
    let e = compile_error("true &&\n  nobody");
    assert!(
        e.contains("line 2, column 3: unknown variable 'nobody'"),
        "{e}"
    );
}

#[test]
fn comprehension_variables_are_in_scope() {
    let ac = control(
        r#"[global.access_policy]
default = "deny"
rules = ["identity.certificate.organizations.exists(o, o.startsWith('team-'))"]"#,
    )
    .unwrap();
    assert!(allowed(
        &ac,
        Some(&cert(&["x"], &["team-a"])),
        None,
        &push()
    ));
    assert!(!allowed(
        &ac,
        Some(&cert(&["x"], &["other"])),
        None,
        &push()
    ));
}
