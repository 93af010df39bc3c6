//! Several listeners in one process: `[server]` ("main") plus `[[server.listener]]` entries with
//! their own TLS settings, `request.listener` in policies, the `[server.admin]` listener for the
//! admin endpoints, HSTS only on TLS listeners, per-listener connection gauges, per-listener TLS
//! reload, and startup errors that name the listener's keys. Driven by skopeo, curl and a raw
//! HTTP/TLS client against the real binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::layout::Layout;
use crate::common::pki::{Pki, run_cmd, tls_connect};
use crate::common::*;

fn ok(cmd: &mut Command) -> String {
    let (ok, text) = run_cmd(cmd);
    assert!(ok, "{cmd:?} failed:\n{text}");
    text
}

fn skopeo() -> Command {
    let mut c = Command::new(tool("skopeo"));
    c.arg("--insecure-policy");
    c
}

/// The `[server.listener.tls]` table of the PKI's server certificate, with `client_auth`.
fn listener_tls(pki: &Pki, client_auth: Option<&str>) -> String {
    pki.server_toml(client_auth)
        .replace("[server.tls]", "[server.listener.tls]")
}

/// The nginx two-port set-up: "main" is TLS without client certificates (anonymous pulls),
/// "push" requires a client certificate, and one rule lets "push" do everything.
const TWO_PORT_POLICY: &str = r#"
[global.access_policy]
default = "deny"
rules = [
  "request.action.startsWith('get-') || request.action == 'list-tags'",
  "request.listener == 'push'",
]
"#;

fn two_listeners(driver: &str) -> (Server, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let toml = format!(
        "{}[[server.listener]]\nname = \"push\"\nport = 0\n{}{TWO_PORT_POLICY}",
        pki.server_toml(None),
        listener_tls(&pki, Some("required")),
    );
    let s = Server::start_in(dir, driver, &toml, "warn,wharf::access=debug");
    assert_eq!(s.scheme, "https");
    assert!(
        s.listeners["push"].starts_with("https://"),
        "{:?}",
        s.listeners
    );
    (s, pki)
}

/// A certs.d directory for `registry` holding only the CA (no client certificate).
fn ca_only(pki: &Pki, certs_d: &Path, registry: &str) -> PathBuf {
    let d = certs_d.join(registry);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(pki.path("ca.crt"), d.join("ca.crt")).unwrap();
    d
}

fn two_listeners_with_a_listener_rule_driven_by_skopeo(driver: &str) {
    let (s, pki) = two_listeners(driver);
    let main = s.host();
    let push = s.listener("push").to_string();
    let work = tempfile::tempdir().unwrap();
    let certs = work.path().join("certs.d");
    // A client certificate is installed for both hosts; only "push" asks for it.
    let main_with_cert = pki.install_client(&main, &certs, "client");
    let push_with_cert = pki.install_client(&push, &certs, "client");
    let anon = work.path().join("anon");
    let main_anon = ca_only(&pki, &anon, &main);
    let push_anon = ca_only(&pki, &anon, &push);

    let mut src = Layout::new(&work.path().join("src"));
    let layers = vec![
        src.add_tar_layer("a.bin", 1_200_000, 21),
        src.add_tar_layer("b.bin", 30_000, 22),
    ];
    let image = src.add_image(&layers, "amd64");
    src.tag(&image, "v1");
    let from = format!("oci:{}:v1", src.dir.display());

    // The main listener never asks for a certificate, so the push is anonymous: 401.
    let (pushed, text) = run_cmd(
        skopeo()
            .arg("copy")
            .arg("--dest-cert-dir")
            .arg(&main_with_cert)
            .args([&from, &format!("docker://{main}/team/app:v1")]),
    );
    assert!(
        !pushed,
        "a push through the main listener succeeded:\n{text}"
    );
    // The refusal says which listener refused and where a certificate is taken.
    let port = push.rsplit(':').next().unwrap();
    assert!(
        text.contains("is not allowed on listener 'main'")
            && text.contains(&format!("listener 'push' on port {port}")),
        "{text}"
    );
    // Without a client certificate the push listener refuses the handshake.
    let (pushed, text) = run_cmd(
        skopeo()
            .arg("copy")
            .arg("--dest-cert-dir")
            .arg(&push_anon)
            .args([&from, &format!("docker://{push}/team/app:v1")]),
    );
    assert!(!pushed, "a push without a certificate succeeded:\n{text}");
    assert!(
        text.contains("certificate required")
            || text.contains("bad certificate")
            || text.contains("handshake"),
        "{text}"
    );
    assert!(
        paths_under(&s.root())
            .iter()
            .all(|p| !p.to_string_lossy().contains("team/app")),
        "a refused push stored something"
    );

    // With the certificate on the push listener it works.
    ok(skopeo()
        .arg("copy")
        .arg("--dest-cert-dir")
        .arg(&push_with_cert)
        .args([&from, &format!("docker://{push}/team/app:v1")]));

    // Anonymous pulls on the main listener get exactly what was pushed.
    let out = work.path().join("out");
    ok(skopeo()
        .arg("copy")
        .arg("--src-cert-dir")
        .arg(&main_anon)
        .args([
            &format!("docker://{main}/team/app:v1"),
            &format!("oci:{}:v1", out.display()),
        ]));
    let back = Layout::new(&out);
    for l in &layers {
        assert!(
            std::fs::read(src.blob_path(&l.digest)).unwrap()
                == std::fs::read(back.blob_path(&l.digest)).unwrap(),
            "layer {} differs after the round trip",
            l.digest
        );
    }
    let tags = ok(skopeo()
        .arg("list-tags")
        .arg("--cert-dir")
        .arg(&main_anon)
        .arg(format!("docker://{main}/team/app")));
    assert!(tags.contains("\"v1\""), "{tags}");

    // The decisions name the listener's rule.
    let log = s.log();
    assert!(
        log.contains("allowed by global.access_policy.rules[1] `request.listener == 'push'`"),
        "{log}"
    );

    // Open connections are counted per listener.
    let client = (pki.path("client.crt"), pki.path("client.key"));
    let mut held = tls_connect(
        s.listener("push"),
        pki.client_config(Some((&client.0, &client.1)), false),
    )
    .unwrap();
    assert_eq!(held.client.get("/v2/").status, 200);
    let mut m = tls_connect(s.addr, pki.client_config(None, false)).unwrap();
    let text = String::from_utf8(m.client.get("/metrics").body).unwrap();
    assert!(gauge(&text, "push") >= 1, "{text}");
    assert!(gauge(&text, "main") >= 1, "{text}");
    drop(held);
}

/// The `wharf_connections_open` gauge of `listener` in a `/metrics` text.
fn gauge(text: &str, listener: &str) -> i64 {
    let prefix = format!("wharf_connections_open{{listener=\"{listener}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .unwrap_or_else(|| panic!("no gauge for {listener}:\n{text}"))
        .parse()
        .unwrap()
}

/// `[server.admin]` takes `/metrics`, `/healthz` and `/readyz` off the other listeners.
fn admin_listener_takes_the_admin_endpoints(driver: &str) {
    let s = Server::start_with(
        driver,
        "[[server.listener]]\nname = \"internal\"\nport = 0\n[server.admin]\nport = 0\n",
    );
    let admin = s.listener("admin");
    assert!(s.listeners["admin"].starts_with("http://"));
    for path in ["/metrics", "/healthz", "/readyz"] {
        for addr in [s.addr, s.listener("internal")] {
            let r = Client::connect(addr).get(path);
            assert_eq!(r.status, 404, "{path} on {addr}");
        }
        assert_eq!(Client::connect(admin).get(path).status, 200, "{path}");
    }
    for path in ["/v2/", "/v2/_catalog"] {
        assert_eq!(Client::connect(admin).get(path).status, 404, "{path}");
        assert_eq!(s.client().get(path).status, 200, "{path}");
        assert_eq!(
            Client::connect(s.listener("internal")).get(path).status,
            200
        );
    }
    // Registry writes do not reach the storage through the admin listener either.
    let mut c = Client::connect(admin);
    let r = c.request("POST", "/v2/x/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 404);
    drop(c);

    // Connections are counted per listener, up while open and down once closed.
    let gauges = || {
        let text = String::from_utf8(Client::connect(admin).get("/metrics").body).unwrap();
        (
            gauge(&text, "main"),
            gauge(&text, "internal"),
            gauge(&text, "admin"),
        )
    };
    let mut held = Client::connect(s.listener("internal"));
    assert_eq!(held.get("/v2/").status, 200);
    let (_, internal, admin_open) = gauges();
    assert!(internal >= 1 && admin_open >= 1, "{internal} {admin_open}");
    drop(held);
    let mut settled = false;
    for _ in 0..200 {
        if gauges() == (0, 0, 1) {
            settled = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    assert!(settled, "gauges never returned to idle: {:?}", gauges());
}

/// HSTS goes out on TLS listeners only; a plain listener next to them never sends it.
fn hsts_only_on_tls_listeners(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    // The harness's config starts with `[server]`: the first line continues that table.
    let toml = format!(
        "hsts_max_age = \"1h\"\n[[server.listener]]\nname = \"secure\"\nport = 0\n{}",
        listener_tls(&pki, None)
    );
    let s = Server::start_in(dir, driver, &toml, "warn");
    assert_eq!(s.scheme, "http");
    let plain = s.client().get("/v2/");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("strict-transport-security"), None);
    let mut t = tls_connect(s.listener("secure"), pki.client_config(None, false)).unwrap();
    let r = t.client.get("/v2/");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("strict-transport-security"), Some("max-age=3600"));
}

/// Each listener's certificate files reload on change, independently of the others, and all of
/// them on SIGHUP.
fn listener_certificates_reload(driver: &str) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    pki.server_cert_in(dir.path(), "push", &[]);
    let toml = format!(
        "{}[[server.listener]]\nname = \"push\"\nport = 0\n{}",
        pki.server_toml(None),
        listener_tls(&pki, Some("required"))
            .replace("server.crt", "push.crt")
            .replace("server.key", "push.key"),
    );
    let s = Server::start_in(dir, driver, &toml, "warn,wharf::tls=info");
    let client = (pki.path("client.crt"), pki.path("client.key"));
    let cfg = pki.client_config(Some((&client.0, &client.1)), false);
    let handshake = |addr| tls_connect(addr, cfg.clone()).unwrap().server_cert;
    let main_cert = handshake(s.addr);
    let old = handshake(s.listener("push"));
    assert_ne!(old, main_cert);

    // New files renamed over the push listener's: only that listener reloads.
    let fresh = tempfile::tempdir().unwrap();
    pki.server_cert_in(fresh.path(), "next", &[]);
    let read = |name: &str| std::fs::read_to_string(fresh.path().join(name)).unwrap();
    let replace = |path: PathBuf, contents: String| {
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    };
    replace(pki.path("push.key"), read("next.key"));
    replace(pki.path("push.crt"), read("next.crt"));
    s.wait_for_log("server.listener[0].tls: TLS material reloaded (files changed)");
    let new = handshake(s.listener("push"));
    assert_ne!(
        new, old,
        "the push listener still serves the old certificate"
    );
    assert_eq!(
        handshake(s.addr),
        main_cert,
        "the main listener changed too"
    );
    assert!(
        !s.log().contains("server.tls: TLS material reloaded"),
        "{}",
        s.log()
    );

    // SIGHUP reloads every listener's material.
    unsafe { libc::kill(s.pid() as i32, libc::SIGHUP) };
    s.wait_for_log("server.tls: TLS material reloaded (SIGHUP)");
    s.wait_for_log("server.listener[0].tls: TLS material reloaded (SIGHUP)");
    assert_eq!(handshake(s.listener("push")), new);
}

on_both_drivers!(
    two_listeners_with_a_listener_rule_driven_by_skopeo,
    admin_listener_takes_the_admin_endpoints,
    hsts_only_on_tls_listeners,
    listener_certificates_reload,
);

/// `wharf serve` stderr and exit status for a config file.
fn serve_fails(toml: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wharf.toml");
    std::fs::write(&p, toml).unwrap();
    let mut child = Command::new(wharf_bin())
        .args(["serve", "-c"])
        .arg(&p)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A server that starts never exits: it is killed and the test fails rather than hanging.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > until {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "wharf started with:\n{toml}\n{}",
                String::from_utf8_lossy(&out.stdout)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success(), "wharf started with:\n{toml}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Two `wharf serve` never share a port (SO_REUSEPORT would split the connections between them)
/// nor a storage root; `wharf gc` and `wharf fsck` still run beside the server.
#[test]
fn a_second_server_on_a_held_port_or_storage_root_does_not_start() {
    let s = Server::start("epoll");
    let port = s.addr.port();
    let e = serve_fails(&format!(
        "[server]\nport = {port}\n[storage]\nroot = \"data\"\n"
    ));
    assert!(
        e.contains(&format!("server.bind_address/server.port 127.0.0.1:{port}"))
            && e.contains("already in use"),
        "{e}"
    );
    let e = serve_fails(&format!(
        "[server]\nport = 0\n[storage]\nroot = {:?}\n",
        s.root()
    ));
    assert!(
        e.contains("storage.root") && e.contains(&format!("another wharf serve (pid {})", s.pid())),
        "{e}"
    );
    // The first server still answers every request.
    for _ in 0..4 {
        assert_eq!(s.client().get("/v2/").status, 200);
    }
    let (ok, out) = s.run_wharf(&["gc", "--grace", "30m"]);
    assert!(ok, "{out}");
    let (ok, out) = s.run_wharf(&["fsck"]);
    assert!(ok, "{out}");
}

#[test]
fn listener_startup_errors_name_the_key() {
    // A port another socket holds: the error names the listener's address keys.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let e = serve_fails(&format!(
        "[server]\nport = 0\n[[server.listener]]\nname = \"push\"\nport = {port}\n[storage]\nroot = \"data\"\n"
    ));
    assert!(
        e.contains(&format!(
            "server.listener[0].bind_address/port 127.0.0.1:{port}"
        )),
        "{e}"
    );
    let e = serve_fails(&format!(
        "[server]\nport = 0\n[server.admin]\nport = {port}\n[storage]\nroot = \"data\"\n"
    ));
    assert!(e.contains("server.admin.bind_address/port"), "{e}");

    // A listener's TLS file that is missing: check-config and serve name its table.
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let broken = format!(
        "[server]\nport = 0\n[[server.listener]]\nname = \"push\"\nport = 0\n{}",
        listener_tls(&pki, Some("required"))
    )
    .replace("ca.crt", "missing-ca.crt");
    let p = dir.path().join("wharf.toml");
    std::fs::write(&p, &broken).unwrap();
    let (ok, text) = run_cmd(
        Command::new(wharf_bin())
            .args(["check-config", "-c"])
            .arg(&p),
    );
    assert!(!ok);
    assert!(
        text.contains("server.listener[0].tls.client_ca_bundle") && text.contains("missing-ca.crt"),
        "{text}"
    );
    let e = serve_fails(&broken);
    assert!(e.contains("server.listener[0].tls.client_ca_bundle"), "{e}");

    // A rule naming a listener that does not exist.
    let e = serve_fails(
        "[server]\nport = 0\n[[server.listener]]\nname = \"push\"\nport = 0\n[global.access_policy]\ndefault = \"allow\"\nrules = [\"request.listener == 'pushh' && request.action.startsWith('delete-')\"]\n",
    );
    assert!(
        e.contains("global.access_policy.rules[0]: line 1, column")
            && e.contains("unknown listener 'pushh' (configured: main, push)"),
        "{e}"
    );
}

/// `check-config` (and the startup log) warns when a listener other hosts reach lets anonymous
/// clients push or delete; loopback, a policy that needs an identity and required client
/// certificates are quiet.
#[test]
fn listeners_open_to_anonymous_writes_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let check = |toml: &str| {
        let p = dir.path().join("w.toml");
        std::fs::write(&p, toml).unwrap();
        let (ok, out) = run_cmd(
            Command::new(wharf_bin())
                .args(["check-config", "-c"])
                .arg(&p),
        );
        assert!(ok, "{out}");
        out
    };
    let out = check("[server]\nbind_address = \"0.0.0.0\"\nport = 5000\n");
    assert!(
        out.contains("warning: listener 'main' on 0.0.0.0:5000 lets anonymous clients from other hosts push to any repository, delete to any repository (there is no access policy)"),
        "{out}"
    );
    let out = check(
        "[server]\nbind_address = \"0.0.0.0\"\nport = 5000\n[global.access_policy]\ndefault = \"deny\"\n\
         rules = [\"request.action.startsWith('get-')\", \"has(request.repository) && request.repository == 'scratch'\"]\n\
         [repository.\"scratch\".access_policy]\ndefault = \"allow\"\n",
    );
    assert!(
        out.contains("push to scratch, delete to scratch (the access policy allows it)")
            && !out.contains("any repository"),
        "{out}"
    );
    assert!(!check("[server]\nport = 5000\n").contains("warning"));
    assert!(
        !check(
            "[server]\nbind_address = \"0.0.0.0\"\nport = 5000\n[global.access_policy]\ndefault = \"deny\"\nrules = [\"size(identity.certificate.common_names) > 0\"]\n"
        )
        .contains("warning")
    );
}
