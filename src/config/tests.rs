//! Defaults, parsing, validation and the configuration reference kept in step.

use std::time::Duration;

use super::server::loopback;
use super::*;

#[test]
fn defaults_match_the_documentation() {
    let c = Config::parse_str("").unwrap();
    assert_eq!(c.server.port, 5000);
    assert_eq!(c.server.bind_address.to_string(), "127.0.0.1");
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.server.http.max_head_size, 16384);
    assert_eq!(c.server.http.max_target_size, 8192);
    assert_eq!(c.server.http.head_timeout, Duration::from_secs(10));
    assert_eq!(c.global.max_manifest_size, 4 << 20);
    assert_eq!(c.storage.root, PathBuf::from("./data"));
    c.validate().unwrap();
}

#[test]
fn unknown_keys_are_named() {
    let e = Config::parse_str("[server]\nprot = 1\n").unwrap_err();
    assert!(e.contains("prot"), "{e}");
    let e = Config::parse_str("[storrage]\n").unwrap_err();
    assert!(e.contains("storrage"), "{e}");
}

#[test]
fn durations() {
    assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
    assert!(parse_duration("5 fortnights").is_err());
    let c = Config::parse_str(
        "[server]\nshutdown_grace = 5\n[server.http]\nhead_timeout = \"250ms\"\n",
    )
    .unwrap();
    assert_eq!(c.server.shutdown_grace, Duration::from_secs(5));
    assert_eq!(c.server.http.head_timeout, Duration::from_millis(250));
}

/// The defaults with every optional table present (required keys empty).
fn defaults_with_optional_tables() -> toml::Value {
    let mut c = Config::default();
    c.server.tls = Some(TlsConfig {
        server_certificate_bundle: PathBuf::new(),
        server_private_key: PathBuf::new(),
        client_ca_bundle: Some(PathBuf::new()),
        client_auth: ClientAuth::default(),
        client_crl: vec![],
    });
    let policy = AccessPolicyConfig {
        default: PolicyDefault::Deny,
        rules: vec![],
    };
    c.global.access_policy = Some(policy.clone());
    c.repository.insert(
        "<name>".into(),
        RepositoryConfig {
            access_policy: Some(policy),
        },
    );
    c.auth.identity.insert(
        "<id>".into(),
        IdentityConfig {
            username: String::new(),
            password: String::new(),
        },
    );
    c.storage.s3 = Some(
        toml::from_str(
            "endpoint = \"\"\nca_bundle = \"\"\nbucket = \"\"\naccess_key_id = \"\"\nsecret_access_key_file = \"\"",
        )
        .unwrap(),
    );
    c.server.admin = Some(AdminConfig {
        bind_address: loopback(),
        port: 0,
    });
    c.server.listener.push(ListenerConfig {
        name: String::new(),
        bind_address: loopback(),
        port: 0,
        tls: c.server.tls.clone(),
    });
    c.upstream.push(
        toml::from_str(
            "name = \"\"\nurl = \"\"\nprefix = \"\"\nnamespace = \"\"\nusername = \"\"\npassword_file = \"\"\nca_bundle = \"\"\nclient_certificate = \"\"\nclient_private_key = \"\"",
        )
        .unwrap(),
    );
    toml::Value::try_from(c).unwrap()
}

/// Every key the schema has, as `section.sub.key` (an array of tables as its first entry's
/// keys), with its default.
fn all_keys() -> Vec<(String, toml::Value)> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
        if let toml::Value::Table(t) = v {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                match v {
                    toml::Value::Table(_) => walk(&key, v, out),
                    toml::Value::Array(a) if a.first().is_some_and(|e| e.is_table()) => {
                        walk(&key, &a[0], out)
                    }
                    _ => out.push((key, v.clone())),
                }
            }
        }
    }
    let mut out = Vec::new();
    walk("", &defaults_with_optional_tables(), &mut out);
    out
}

#[test]
fn configuration_doc_lists_every_key_with_its_default() {
    let doc = include_str!("../../docs/configuration.md");
    for (key, value) in all_keys() {
        // Ports of extra listeners have no default (0 here).
        let required_port = key.ends_with(".port") && key != "server.port";
        let row = doc
            .lines()
            .find(|l| l.starts_with(&format!("| `{key}` |")))
            .unwrap_or_else(|| panic!("docs/configuration.md has no row for `{key}`"));
        // Keys without a default (empty here) are documented as required or optional.
        // `access_policy.default` has no default either (an enum, so not empty here).
        let expected = match value.as_str() {
            Some("") => "(required)".to_owned(),
            _ if required_port => "(required)".to_owned(),
            _ if key.ends_with("access_policy.default") => "(required)".to_owned(),
            _ => format!("`{value}`"),
        };
        assert!(
            row.contains(&expected) || (expected == "(required)" && row.contains("(none)")),
            "docs/configuration.md: `{key}` default should read {expected}: {row}"
        );
    }
}

#[test]
fn defaults_serialize_and_parse_back() {
    let text = toml::to_string(&Config::default()).unwrap();
    let back = Config::parse_str(&text).unwrap();
    assert_eq!(back.server.http.body_timeout, Duration::from_secs(60));
}

#[test]
fn tls_required_without_client_cas_names_both_keys() {
    let c = Config::parse_str(
        "[server.tls]\nserver_certificate_bundle = \"a.pem\"\nserver_private_key = \"k.pem\"\nclient_auth = \"required\"\n",
    )
    .unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("server.tls.client_auth"), "{e}");
    assert!(e.contains("server.tls.client_ca_bundle"), "{e}");
}

#[test]
fn tls_keys_are_exactly_the_documented_ones() {
    let e = Config::parse_str(
        "[server.tls]\ncertificate = \"a.pem\"\nserver_private_key = \"k.pem\"\n",
    )
    .unwrap_err();
    assert!(e.contains("certificate"), "{e}");
    let e = Config::parse_str("[server.tls]\nserver_private_key = \"k.pem\"\n").unwrap_err();
    assert!(e.contains("server_certificate_bundle"), "{e}");
    let e = Config::parse_str(
        "[server.tls]\nserver_certificate_bundle = \"a\"\nserver_private_key = \"k\"\nclient_auth = \"sometimes\"\n",
    )
    .unwrap_err();
    assert!(e.contains("sometimes"), "{e}");
}

#[test]
fn tls_paths_are_taken_from_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wharf.toml");
    std::fs::write(
        &p,
        "[server.tls]\nserver_certificate_bundle = \"certs/full.pem\"\nserver_private_key = \"/abs/k.pem\"\nclient_ca_bundle = \"ca.pem\"\n",
    )
    .unwrap();
    let c = Config::load(&p).unwrap();
    let tls = c.server.tls.unwrap();
    assert_eq!(
        tls.server_certificate_bundle,
        dir.path().join("certs/full.pem")
    );
    assert_eq!(tls.server_private_key, PathBuf::from("/abs/k.pem"));
    assert_eq!(tls.client_ca_bundle.unwrap(), dir.path().join("ca.pem"));
    assert_eq!(tls.client_auth, ClientAuth::Optional);
}

#[test]
fn listeners_are_validated_with_their_keys() {
    let error = |toml: &str| {
        let c = Config::parse_str(toml).unwrap_or_else(|e| panic!("{toml}: {e}"));
        c.validate().unwrap_err().to_string()
    };
    let one = |name: &str, extra: &str| {
        format!("[[server.listener]]\nname = {name:?}\nport = 4443\n{extra}")
    };
    for (toml, key, says) in [
        (one("Push", ""), "server.listener[0].name", "lowercase"),
        (one("", ""), "server.listener[0].name", "lowercase"),
        (one("main", ""), "server.listener[0].name", "reserved"),
        (one("admin", ""), "server.listener[0].name", "reserved"),
        (
            format!("{}{}", one("a", ""), one("a", "bind_address = \"::1\"\n")),
            "server.listener[1].name",
            "also the name of server.listener[0]",
        ),
        (
            one(
                "a",
                "[server.listener.tls]\nserver_certificate_bundle = \"c\"\nserver_private_key = \"k\"\nclient_auth = \"required\"\n",
            ),
            "server.listener[0].tls.client_auth",
            "server.listener[0].tls.client_ca_bundle",
        ),
        (
            format!("[server]\nport = 4443\n{}", one("a", "")),
            "server.listener[0].bind_address/port",
            "overlaps server.bind_address/server.port",
        ),
        (
            format!(
                "{}[server.admin]\nbind_address = \"0.0.0.0\"\nport = 4443\n",
                one("a", "")
            ),
            "server.admin.bind_address/port",
            "overlaps server.listener[0]",
        ),
        (
            "[server]\nhsts_max_age = \"1h\"\n".to_owned(),
            "server.hsts_max_age",
            "needs a listener with TLS",
        ),
    ] {
        let e = error(&toml);
        assert!(e.contains(key) && e.contains(says), "{toml}\n=> {e}");
    }
    let e = Config::parse_str("[[server.listener]]\nname = \"a\"\n").unwrap_err();
    assert!(e.contains("port"), "{e}");
    let e =
        Config::parse_str("[[server.listener]]\nname = \"a\"\nport = 1\nprot = 2\n").unwrap_err();
    assert!(e.contains("prot"), "{e}");
    // Same port on another address, or port 0 twice, is fine; HSTS with only a listener's TLS too.
    let ok = "[server]\nhsts_max_age = \"1h\"\nport = 0\n[[server.listener]]\nname = \"a\"\nport = 0\n[server.listener.tls]\nserver_certificate_bundle = \"c\"\nserver_private_key = \"k\"\n[[server.listener]]\nname = \"b-2\"\nbind_address = \"127.0.0.2\"\nport = 5000\n[server.admin]\nport = 9100\n";
    Config::parse_str(ok).unwrap().validate().unwrap();
}

#[test]
fn listener_tls_paths_are_taken_from_the_config_directory() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wharf.toml");
    std::fs::write(
        &p,
        "[[server.listener]]\nname = \"a\"\nport = 1\n[server.listener.tls]\nserver_certificate_bundle = \"c.pem\"\nserver_private_key = \"k.pem\"\n",
    )
    .unwrap();
    let c = Config::load(&p).unwrap();
    let tls = c.server.listener[0].tls.as_ref().unwrap();
    assert_eq!(tls.server_certificate_bundle, dir.path().join("c.pem"));
    assert_eq!(tls.server_private_key, dir.path().join("k.pem"));
}

#[test]
fn validation_names_the_key() {
    let c = Config::parse_str("[server.http]\nmax_target_size = 99999\n").unwrap();
    let e = c.validate().unwrap_err().to_string();
    assert!(e.contains("server.http.max_target_size"), "{e}");
}

#[test]
fn storage_s3_errors_name_the_key() {
    let base = "endpoint = \"http://127.0.0.1:8333\"\nbucket = \"b\"\n";
    let cases = [
        ("[storage]\nbackend = \"s3\"\n", "storage.s3"),
        ("[storage.s3]\n{base}", "storage.backend"),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"ftp://h:1\"\nbucket = \"b\"\n",
            "storage.s3.endpoint",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}ca_bundle = \"ca.pem\"\n",
            "storage.s3.ca_bundle",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}path_style = false\n",
            "storage.s3.path_style",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://[::1]:1\"\nbucket = \"b\"\npath_style = false\n",
            "storage.s3.path_style",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://s3.example:1\"\nbucket = \"my.bucket\"\npath_style = false\n",
            "storage.s3.bucket",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}access_key_id = \"k\"\n",
            "storage.s3.secret_access_key_file",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}access_key_id = \"k\"\naccess_key_id_file = \"k\"\nsecret_access_key_file = \"s\"\n",
            "storage.s3.access_key_id_file",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}secret_access_key_file = \"s\"\n",
            "storage.s3.access_key_id",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}session_token_file = \"t\"\n",
            "storage.s3.session_token_file",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}role_arn = \"arn:aws:iam::role/r\"\n",
            "storage.s3.web_identity_token_file",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}web_identity_token_file = \"t\"\n",
            "storage.s3.role_arn",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}role_arn = \" \"\nweb_identity_token_file = \"t\"\n",
            "storage.s3.role_arn",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}role_arn = \"r\"\nweb_identity_token_file = \"t\"\naccess_key_id = \"k\"\nsecret_access_key_file = \"s\"\n",
            "storage.s3.role_arn",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}sts_endpoint = \"sts.example\"\n",
            "storage.s3.sts_endpoint",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}redirect_ttl = \"200h\"\n",
            "storage.s3.redirect_ttl",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}io_timeout = \"0s\"\n",
            "storage.s3.io_timeout",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}io_timeout = \"11m\"\n",
            "storage.s3.io_timeout",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"http://h:1\"\nbucket = \"\"\n",
            "storage.s3.bucket",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}server_side_encryption = \"aes256\"\n",
            "storage.s3.server_side_encryption",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}kms_key_id = \"k\"\n",
            "storage.s3.kms_key_id",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}server_side_encryption = \"AES256\"\nkms_key_id = \"k\"\n",
            "storage.s3.kms_key_id",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}server_side_encryption = \"aws:kms\"\nkms_key_id = \"my key\"\n",
            "storage.s3.kms_key_id",
        ),
        (
            "[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}server_side_encryption = \"aws:kms\"\nkms_key_id = \"\"\n",
            "storage.s3.kms_key_id",
        ),
    ];
    for (text, key) in cases {
        let text = text.replace("{base}", base);
        let c = Config::parse_str(&text).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    let https = format!(
        "[storage]\nbackend = \"s3\"\n[storage.s3]\n{}ca_bundle = \"ca.pem\"\n",
        base.replace("http:", "https:")
    );
    Config::parse_str(&https).unwrap().validate().unwrap();
    for sse in [
        "server_side_encryption = \"AES256\"\n",
        "server_side_encryption = \"aws:kms\"\n",
        "server_side_encryption = \"aws:kms\"\nkms_key_id = \"arn:aws:kms:eu-west-1:1:key/k\"\n",
    ] {
        let text = format!("[storage]\nbackend = \"s3\"\n[storage.s3]\n{base}{sse}");
        Config::parse_str(&text).unwrap().validate().unwrap();
    }
    let virtual_hosted = "[storage]\nbackend = \"s3\"\n[storage.s3]\nendpoint = \"https://s3.example:1\"\nbucket = \"b-1\"\npath_style = false\n";
    Config::parse_str(virtual_hosted)
        .unwrap()
        .validate()
        .unwrap();
}

#[test]
fn upstream_errors_name_the_key() {
    let up = |body: &str| format!("[[upstream]]\n{body}\n");
    let ok = "name = \"hub\"\nurl = \"https://r.example\"\nprefix = \"hub\"";
    let cases = [
        (
            up("name = \"a b\"\nurl = \"http://h\"\nprefix = \"x\""),
            "upstream[0].name",
        ),
        (format!("{}{}", up(ok), up(ok)), "upstream[1].name"),
        (
            up("name = \"a\"\nurl = \"ftp://h\"\nprefix = \"x\""),
            "upstream[0].url",
        ),
        (
            up("name = \"a\"\nurl = \"http://u:p@h\"\nprefix = \"x\""),
            "upstream[0].url",
        ),
        (
            up("name = \"a\"\nurl = \"http://h/v2/\"\nprefix = \"x\""),
            "upstream[0].url",
        ),
        (
            up("name = \"a\"\nurl = \"http://h\"\nprefix = \"Hub\""),
            "upstream[0].prefix",
        ),
        (
            format!(
                "{}{}",
                up(ok),
                up("name = \"b\"\nurl = \"http://h\"\nprefix = \"hub/x\"")
            ),
            "upstream[1].prefix",
        ),
        (
            up("name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\nca_bundle = \"c\""),
            "upstream[0].ca_bundle",
        ),
        (
            up("name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\nusername = \"u\""),
            "upstream[0].username",
        ),
        (
            up("name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\ntimeout = \"0s\""),
            "upstream[0].timeout",
        ),
    ];
    let more = [
        (
            up("name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\nnamespace = \"a/b\""),
            "upstream[0].namespace",
        ),
        (
            up("name = \"a\"\nurl = \"https://h\"\nprefix = \"x\"\nclient_certificate = \"c\""),
            "upstream[0].client_certificate",
        ),
        (
            up(
                "name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\nclient_certificate = \"c\"\nclient_private_key = \"k\"",
            ),
            "upstream[0].client_certificate",
        ),
        (
            up("name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\nmax_connections = 0"),
            "upstream[0].max_connections",
        ),
        (
            format!(
                "{}{}",
                up(
                    "name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\nnamespace = \"docker.io\"\ndefault = true"
                ),
                up("name = \"b\"\nurl = \"http://h\"\nprefix = \"y\"\nnamespace = \"docker.io\"")
            ),
            "upstream[1].namespace",
        ),
        (
            format!(
                "{}{}",
                up("name = \"a\"\nurl = \"http://h\"\nprefix = \"x\"\ndefault = true"),
                up("name = \"b\"\nurl = \"http://h\"\nprefix = \"y\"\ndefault = true")
            ),
            "upstream[1].default",
        ),
    ];
    for (text, key) in cases.into_iter().chain(more) {
        let c = Config::parse_str(&text).unwrap();
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains(key), "{text}: {e}");
    }
    let two = format!(
        "{}{}",
        up(ok),
        up("name = \"b\"\nurl = \"http://h:5000/\"\nprefix = \"hubx\"")
    );
    Config::parse_str(&two).unwrap().validate().unwrap();
}
