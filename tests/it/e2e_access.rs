//! The access-control recipes of docs/access-control.md, end to end with skopeo (a real client)
//! over TLS: certificate identities from `wharf cert client`, Basic credentials from
//! `wharf hash-password`, each scenario's allowed and refused pushes and pulls.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::layout::Layout;
use crate::common::pki::{ClientSpec, Pki, run_cmd, tls_connect, wharf};
use crate::common::*;

/// A TLS server with a policy, its PKI, and a small OCI image to copy.
struct Setup {
    server: Server,
    pki_dir: PathBuf,
    work: tempfile::TempDir,
    image: String,
}

fn setup(driver: &str, client_auth: &str, policy: &str) -> Setup {
    setup_with(driver, |pki| {
        format!("{}{policy}", pki.server_toml(Some(client_auth)))
    })
}

/// A server whose TOML `config` makes from the fresh PKI.
fn setup_with(driver: &str, config: impl FnOnce(&Pki) -> String) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let pki_dir = pki.dir.clone();
    let toml = config(&pki);
    let server = Server::start_in(dir, driver, &toml, "warn");
    let work = tempfile::tempdir().unwrap();
    let mut src = Layout::new(&work.path().join("src"));
    let layers = vec![src.add_tar_layer("a.bin", 300_000, 3)];
    let image = src.add_image(&layers, "amd64");
    src.tag(&image, "v1");
    let image = format!("oci:{}:v1", src.dir.display());
    Setup {
        server,
        pki_dir,
        work,
        image,
    }
}

impl Setup {
    /// The server's PKI (its CA, server and client certificates).
    fn pki(&self) -> Pki {
        Pki {
            dir: self.pki_dir.clone(),
        }
    }

    /// A certs.d directory for this registry: the CA, plus the client certificate `name` (made
    /// with `wharf cert client --cn <cn> --org <org>...`) when given.
    fn cert_dir(&self, client: Option<(&str, &str, &[&str])>) -> PathBuf {
        let Some((name, cn, orgs)) = client else {
            let d = self.work.path().join("ca-only");
            std::fs::create_dir_all(&d).unwrap();
            std::fs::copy(self.pki_dir.join("ca.crt"), d.join("ca.crt")).unwrap();
            return d;
        };
        if !self.pki_dir.join(format!("{name}.crt")).exists() {
            let out = self.pki_dir.to_str().unwrap();
            let mut args = vec!["cert", "client", "--out", out, "--name", name, "--cn", cn];
            for o in orgs {
                args.extend(["--org", o]);
            }
            wharf(&args);
        }
        self.install(name)
    }

    /// `wharf cert install-client` of an existing `<name>.crt` into its own certs.d.
    fn install(&self, name: &str) -> PathBuf {
        let pki = Pki {
            dir: self.pki_dir.clone(),
        };
        let certs_d = self.work.path().join(format!("certs.d-{name}"));
        pki.install_client(&self.server.host(), &certs_d, name)
    }

    fn target(&self, repo: &str) -> String {
        self.target_at(&self.server.host(), repo)
    }

    /// `repo` (tag `v1` unless it names one) at `host` (a listener's address).
    fn target_at(&self, host: &str, repo: &str) -> String {
        let repo_tag = if repo.contains(':') {
            repo.to_owned()
        } else {
            format!("{repo}:v1")
        };
        format!("docker://{host}/{repo_tag}")
    }

    /// skopeo copy of the test image to `repo` (tag `v1` unless `repo` names one).
    fn push(&self, repo: &str, certs: &Path, creds: Option<&str>) -> (bool, String) {
        self.push_at(&self.server.host(), repo, certs, creds)
    }

    /// `push` to the listener at `host`.
    fn push_at(&self, host: &str, repo: &str, certs: &Path, creds: Option<&str>) -> (bool, String) {
        let mut c = skopeo();
        c.arg("copy").arg("--dest-cert-dir").arg(certs);
        if let Some(cr) = creds {
            c.args(["--dest-creds", cr]);
        }
        run_cmd(c.args([&self.image, &self.target_at(host, repo)]))
    }

    /// skopeo copy from `repo` into a fresh OCI layout.
    fn pull(&self, repo: &str, certs: &Path, creds: Option<&str>) -> (bool, String) {
        let out = tempfile::tempdir_in(self.work.path()).unwrap();
        let mut c = skopeo();
        c.arg("copy").arg("--src-cert-dir").arg(certs);
        if let Some(cr) = creds {
            c.args(["--src-creds", cr]);
        }
        let dest = format!("oci:{}:v1", out.path().join("img").display());
        run_cmd(c.args([&self.target(repo), &dest]))
    }
}

fn skopeo() -> Command {
    let mut c = Command::new(tool("skopeo"));
    c.arg("--insecure-policy");
    c
}

fn succeeds(what: &str, (ok, text): (bool, String)) {
    assert!(ok, "{what} failed:\n{text}");
}

/// The client failed because the registry refused it (401 or 403), not for another reason.
fn refused(what: &str, (ok, text): (bool, String)) {
    assert!(
        !ok,
        "{what} succeeded but should have been refused:\n{text}"
    );
    let t = text.to_lowercase();
    assert!(
        [
            "401",
            "403",
            "denied",
            "unauthorized",
            "authentication required",
            "forbidden"
        ]
        .iter()
        .any(|w| t.contains(w)),
        "{what} failed for another reason:\n{text}"
    );
}

pub(crate) fn users(list: &[(&str, &str)]) -> String {
    list.iter()
        .map(|(u, pw)| {
            let h = hash_password(pw);
            format!("[auth.identity.{u}]\nusername = \"{u}\"\npassword = \"{h}\"\n")
        })
        .collect()
}

fn certificate_required(driver: &str) {
    let st = setup(
        driver,
        "required",
        "[global.access_policy]\ndefault = \"deny\"\nrules = [\"size(identity.certificate.common_names) > 0\"]\n",
    );
    let builder = st.cert_dir(Some(("builder", "build-server", &[])));
    succeeds(
        "push with a named certificate",
        st.push("app/x", &builder, None),
    );
    succeeds(
        "pull with a named certificate",
        st.pull("app/x", &builder, None),
    );
    // A certificate from the same CA without any CN passes the handshake but not the rule.
    let pki = st.pki();
    pki.client_cert(
        "nameless",
        ClientSpec {
            subject: vec![],
            ..ClientSpec::default()
        },
    );
    let nameless = st.install("nameless");
    refused(
        "push with a CN-less certificate",
        st.push("app/y", &nameless, None),
    );
    refused(
        "pull with a CN-less certificate",
        st.pull("app/x", &nameless, None),
    );
}

fn certificate_optional_devops_or_read_only_basic(driver: &str) {
    let policy = format!(
        "{}[global.access_policy]\ndefault = \"deny\"\nrules = [\n  \"identity.certificate.organizations.contains('DevOps')\",\n  \"identity.username != '' && request.action.startsWith('get-')\",\n]\n",
        users(&[("reader", "reader-pw")])
    );
    let st = setup(driver, "optional", &policy);
    let devops = st.cert_dir(Some(("ops", "alice", &["DevOps"])));
    let ca_only = st.cert_dir(None);
    succeeds("DevOps push", st.push("team/app", &devops, None));
    succeeds(
        "Basic user pull",
        st.pull("team/app", &ca_only, Some("reader:reader-pw")),
    );
    refused(
        "Basic user push",
        st.push("team/other", &ca_only, Some("reader:reader-pw")),
    );
    refused(
        "wrong password pull",
        st.pull("team/app", &ca_only, Some("reader:nope")),
    );
    refused("anonymous pull", st.pull("team/app", &ca_only, None));
    let eng = st.cert_dir(Some(("eng", "bob", &["Engineering"])));
    refused(
        "non-DevOps certificate push",
        st.push("team/app2", &eng, None),
    );
}

fn organizations_own_repositories(driver: &str) {
    let policy = "[repository.\"dev\".access_policy]\ndefault = \"deny\"\nrules = [\"identity.certificate.organizations.contains('Developers')\"]\n\
                  [repository.\"prod\".access_policy]\ndefault = \"deny\"\nrules = [\"identity.certificate.organizations.contains('Platform')\"]\n";
    let st = setup(driver, "required", policy);
    let dev = st.cert_dir(Some(("dev", "dana", &["Developers"])));
    let platform = st.cert_dir(Some(("platform", "pat", &["Platform"])));
    succeeds("Developers push to dev/", st.push("dev/app", &dev, None));
    succeeds("Developers pull from dev/", st.pull("dev/app", &dev, None));
    let (ok, text) = st.push("prod/app", &dev, None);
    refused("Developers push to prod/", (ok, text.clone()));
    assert!(text.contains("403"), "expected a 403:\n{text}");
    succeeds(
        "Platform push to prod/",
        st.push("prod/app", &platform, None),
    );
    refused(
        "Platform push to dev/",
        st.push("dev/other", &platform, None),
    );
}

fn anonymous_pulls_authenticated_pushes(driver: &str) {
    let policy = "[global.access_policy]\ndefault = \"deny\"\nrules = [\n  \"request.action.startsWith('get-') || request.action == 'list-tags'\",\n  \"'build-server' in identity.certificate.common_names\",\n]\n";
    let st = setup(driver, "optional", policy);
    let builder = st.cert_dir(Some(("builder", "build-server", &["CI"])));
    let ca_only = st.cert_dir(None);
    refused("anonymous push", st.push("pub/app", &ca_only, None));
    succeeds("build-server push", st.push("pub/app", &builder, None));
    succeeds("anonymous pull", st.pull("pub/app", &ca_only, None));
    let (ok, tags) = run_cmd(
        skopeo()
            .arg("list-tags")
            .arg("--cert-dir")
            .arg(&ca_only)
            .arg(format!("docker://{}/pub/app", st.server.host())),
    );
    assert!(
        ok && tags.contains("\"v1\""),
        "anonymous list-tags:\n{tags}"
    );
    // The raw protocol answer for the anonymous push: 401 with the Basic challenge.
    let pki = st.pki();
    let mut conn = tls_connect(st.server.addr, pki.client_config(None, false)).unwrap();
    let r = conn
        .client
        .request("POST", "/v2/pub/app/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"wharf\""));
}

/// "Anonymous pulls on one port, certificate pushes on another", from the documented TOML with
/// loopback addresses, ephemeral ports and this test's PKI: anonymous clients pull on the main
/// port and may not push there; a client certificate pushes on "push"; "push" refuses a client
/// without one in the handshake.
fn anonymous_pulls_one_port_certificate_pushes_another(driver: &str) {
    let doc = recipe("Anonymous pulls on one port, certificate pushes on another");
    let main_server = "[server]                      # \"main\": public, anonymous pulls\nbind_address = \"0.0.0.0\"\nport = 443\n";
    assert!(doc.starts_with(main_server), "{doc}");
    let st = setup_with(driver, |pki| {
        // The harness writes [server] (loopback, port 0); the rest is the doc's, on loopback.
        let file = |n: &str| format!("\"{}\"", pki.path(n).display());
        doc[main_server.len()..]
            .replace("bind_address = \"0.0.0.0\"", "bind_address = \"127.0.0.1\"")
            .replace("port = 4443", "port = 0")
            .replace("\"server.crt\"", &file("server.crt"))
            .replace("\"server.key\"", &file("server.key"))
            .replace("\"ca.crt\"", &file("ca.crt"))
    });
    let push_port = st.server.listener("push").to_string();
    let builder = st.cert_dir(Some(("builder", "build-server", &["CI"])));
    let ca_only = st.cert_dir(None);
    refused(
        "anonymous push on the main port",
        st.push("pub/app", &ca_only, None),
    );
    refused(
        "certificate push on the main port (no rule lets it)",
        st.push("pub/app", &builder, None),
    );
    succeeds(
        "certificate push on the push port",
        st.push_at(&push_port, "pub/app", &builder, None),
    );
    succeeds(
        "anonymous pull on the main port",
        st.pull("pub/app", &ca_only, None),
    );
    let (ok, text) = st.push_at(&push_port, "pub/other", &ca_only, None);
    assert!(
        !ok,
        "a push without a certificate passed the push port:\n{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");
}

/// The "protected tags" recipe: every user pushes, but `release` and `stable` move only for the
/// release pipeline, whichever way a request names them (path, `?tag=`, delete by digest).
fn protected_tags(driver: &str) {
    let policy = format!(
        "{}[global.access_policy]\ndefault = \"deny\"\nrules = [\n  \"identity.username != '' && !(request.action in ['put-manifest', 'delete-manifest'] && request.reference in ['release', 'stable'])\",\n  \"identity.username == 'release-bot'\",\n]\n",
        users(&[("dev", "dev-pw"), ("release-bot", "bot-pw")])
    );
    let st = setup(driver, "optional", &policy);
    let ca_only = st.cert_dir(None);
    let (dev, bot) = (Some("dev:dev-pw"), Some("release-bot:bot-pw"));
    succeeds("dev pushes a version", st.push("team/app", &ca_only, dev));
    refused(
        "dev pushes release",
        st.push("team/app:release", &ca_only, dev),
    );
    succeeds(
        "release-bot pushes release",
        st.push("team/app:release", &ca_only, bot),
    );
    succeeds(
        "dev pulls release",
        st.pull("team/app:release", &ca_only, dev),
    );
    // The same image by digest with ?tag=stable, and a delete by digest of what release names.
    let pki = st.pki();
    let mut conn = tls_connect(st.server.addr, pki.client_config(None, false)).unwrap();
    let dev_auth = basic("dev", "dev-pw");
    let auth = [
        ("Authorization", dev_auth.as_str()),
        ("Accept", OCI_MANIFEST),
    ];
    let got = conn
        .client
        .request("GET", "/v2/team/app/manifests/release", &auth, b"");
    assert_eq!(got.status, 200);
    let digest = got.header("docker-content-digest").unwrap().to_owned();
    let media_type = got.header("content-type").unwrap().to_owned();
    let r = conn.client.request(
        "PUT",
        &format!("/v2/team/app/manifests/{digest}?tag=stable"),
        &[
            ("Authorization", dev_auth.as_str()),
            ("Content-Type", media_type.as_str()),
        ],
        &got.body,
    );
    assert_eq!(r.status, 403, "?tag=stable by dev");
    let r = conn.client.request(
        "DELETE",
        &format!("/v2/team/app/manifests/{digest}"),
        &[("Authorization", dev_auth.as_str())],
        b"",
    );
    assert_eq!(r.status, 403, "a delete by digest takes release with it");
    succeeds(
        "release is intact",
        st.pull("team/app:release", &ca_only, dev),
    );
}

/// The TOML block under `### heading` in docs/access-control.md, as documented.
fn recipe(heading: &str) -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/access-control.md"),
    )
    .unwrap();
    let at = doc
        .find(&format!("### {heading}\n"))
        .unwrap_or_else(|| panic!("no recipe {heading:?} in docs/access-control.md"));
    let block = &doc[at..];
    let start = block.find("```toml\n").unwrap() + "```toml\n".len();
    let end = start + block[start..].find("```").unwrap();
    block[start..end].to_owned()
}

/// "Only admins delete": everyone else may do anything but delete.
fn only_admins_delete(driver: &str) {
    let identities = format!(
        "[auth.identity.admin]\nusername = \"admin\"\npassword = \"{}\"\n[auth.identity.dev]\nusername = \"dev\"\npassword = \"{}\"\n",
        hash_password("admin-pw"),
        hash_password("dev-pw")
    );
    let s = Server::start_with(
        driver,
        &format!("{identities}{}", recipe("Only admins delete")),
    );
    let (admin, dev) = (basic("admin", "admin-pw"), basic("dev", "dev-pw"));
    let mut c = s.client();
    let d = sha256(b"layer");
    let r = c.request(
        "POST",
        &format!("/v2/team/app/blobs/uploads/?digest={d}"),
        &[("Authorization", &dev)],
        b"layer",
    );
    assert_eq!(r.status, 201, "dev could not push");
    let blob = format!("/v2/team/app/blobs/{d}");
    fn auth(who: &str) -> [(&str, &str); 1] {
        [("Authorization", who)]
    }
    assert_eq!(c.request("GET", &blob, &auth(&dev), b"").status, 200);
    let r = Client::connect(s.addr).request("DELETE", &blob, &auth(&dev), b"");
    assert_eq!(r.status, 403, "dev deleted a blob");
    let r = Client::connect(s.addr).request("DELETE", &blob, &auth(&admin), b"");
    assert_eq!(r.status, 202, "admin could not delete");
}

/// "Read-only mirror for a network": clients of one network read, nobody writes. Loopback
/// stands in for the documented 10.20.0.0/16: the prefix becomes 127.20. and clients connect from
/// 127.20.0.5 (inside) and 127.0.0.9 (outside).
fn read_only_mirror_for_a_network(driver: &str) {
    let policy = recipe("Read-only mirror for a network");
    assert!(policy.contains("'10.20.'"), "{policy}");
    let s = Server::start_with(driver, &policy.replace("'10.20.'", "'127.20.'"));
    let d = sha256(b"x");
    let get = |src: &str, path: &str| {
        Client::over(Box::new(connect_from(src, s.addr)))
            .get(path)
            .status
    };
    assert_eq!(get("127.20.0.5", "/v2/"), 200);
    assert_eq!(
        get("127.20.0.5", &format!("/v2/m/blobs/{d}")),
        404,
        "inside reads"
    );
    assert_eq!(
        get("127.0.0.9", &format!("/v2/m/blobs/{d}")),
        401,
        "outside is refused"
    );
    let mut inside = Client::over(Box::new(connect_from("127.20.0.5", s.addr)));
    let r = inside.request("POST", "/v2/m/blobs/uploads/", &[], b"");
    assert_eq!(r.status, 401, "inside pushed");
}

on_both_drivers!(
    only_admins_delete,
    read_only_mirror_for_a_network,
    protected_tags,
    certificate_required,
    certificate_optional_devops_or_read_only_basic,
    organizations_own_repositories,
    anonymous_pulls_authenticated_pushes,
    anonymous_pulls_one_port_certificate_pushes_another,
);
