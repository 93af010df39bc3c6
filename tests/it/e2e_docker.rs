//! The Docker daemon (Debian's `docker.io`) against wharf over mutual TLS, as a site runs it: a
//! test host name mapped to `::1` (Docker treats localhost and 127.0.0.0/8 as insecure and ignores
//! `certs.d` there), `/etc/docker/certs.d` written by `wharf cert install-client`, the two-listener
//! pattern, a denied push that stops at once with wharf's message, and `docker login`.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::docker::Dockerd;
use crate::common::pki::{Pki, run_cmd};
use crate::common::*;

/// The name the tests give the registry; `/etc/hosts` maps it to `::1` (tests/setup.sh, or here).
const HOST: &str = "wharf-docker.test";

/// Map `HOST` to `::1` in /etc/hosts if it is not (the tests run as root, as tests/setup.sh does).
fn ensure_host_name() {
    let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_default();
    let mapped = hosts.lines().any(|l| {
        let mut w = l.split_whitespace();
        w.next() == Some("::1") && w.any(|n| n == HOST)
    });
    if !mapped {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open("/etc/hosts")
            .expect("/etc/hosts is writable (tests/setup.sh maps wharf-docker.test to ::1)");
        writeln!(f, "::1 {HOST}").unwrap();
    }
}

/// `/etc/docker/certs.d/<registry>`, removed when dropped (each test's ports are its own).
struct CertsD(PathBuf);

impl CertsD {
    fn install(pki: &Pki, registry: &str, with_client: bool) -> CertsD {
        let dir = Path::new("/etc/docker/certs.d").join(registry);
        let _ = std::fs::remove_dir_all(&dir);
        if with_client {
            pki.install_client(registry, Path::new("/etc/docker/certs.d"), "client");
        } else {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::copy(pki.path("ca.crt"), dir.join("ca.crt")).unwrap();
        }
        CertsD(dir)
    }
}

impl Drop for CertsD {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A PKI whose server certificate names `HOST` and `::1`.
fn pki(dir: &Path) -> Pki {
    let pki = Pki::new(dir);
    let d = dir.to_str().unwrap();
    let args = [
        "cert", "server", "--out", d, "--name", "docker", "--host", HOST, "--ip", "::1",
    ];
    crate::common::pki::wharf(&args);
    pki
}

fn tls_table(pki: &Pki, table: &str, client_auth: Option<&str>) -> String {
    pki.tls_toml(table, "docker", client_auth)
}

/// An image made in the daemon from a small tarball (no registry needed): `docker import`.
fn import(d: &Dockerd, reference: &str, dir: &Path) {
    let src = dir.join("rootfs");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("hello.txt"), format!("{reference}\n").repeat(1000)).unwrap();
    let tar = dir.join("rootfs.tar");
    let (ok, out) = run_cmd(
        Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .arg("-C")
            .arg(&src)
            .arg("."),
    );
    assert!(ok, "{out}");
    let (ok, out) = run_cmd(d.docker().arg("import").arg(&tar).arg(reference));
    assert!(ok, "docker import: {out}");
}

/// `docker login -u user --password-stdin registry`: (success, output).
fn login(d: &Dockerd, registry: &str, user: &str, password: &str) -> (bool, String) {
    use std::io::Write as _;
    let mut c = d.docker();
    c.args(["login", "-u", user, "--password-stdin", registry])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(password.as_bytes()).unwrap();
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn docker(d: &Dockerd, args: &[&str]) -> (bool, String) {
    run_cmd(d.docker().args(args))
}

/// Upload sessions started (POST .../blobs/uploads/) in the access log.
fn upload_posts(s: &Server) -> usize {
    s.log()
        .lines()
        .filter(|l| l.contains(" POST /v2/") && l.contains("/blobs/uploads/"))
        .count()
}

/// The nginx two-port pattern with the real Docker daemon: pushes on the mutual-TLS listener,
/// anonymous pulls on the main one, and an anonymous push refused once, with wharf's message.
#[test]
fn docker_pushes_over_mutual_tls_and_pulls_anonymously_on_two_listeners() {
    ensure_host_name();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let toml = format!(
        "bind_address = \"::1\"\n{}[[server.listener]]\nname = \"push\"\nbind_address = \"::1\"\nport = 0\n{}\
         [global.access_policy]\ndefault = \"deny\"\nrules = [\n  \"request.action.startsWith('get-') || request.action == 'list-tags'\",\n  \"request.listener == 'push'\",\n]\n",
        tls_table(&pki, "server.tls", None),
        tls_table(&pki, "server.listener.tls", Some("required")),
    );
    let s = Server::start_in(dir, "epoll", &toml, "warn,wharf::access=info");
    let main = format!("{HOST}:{}", s.addr.port());
    let push = format!("{HOST}:{}", s.listener("push").port());
    let _main_certs = CertsD::install(&pki, &main, false);
    let _push_certs = CertsD::install(&pki, &push, true);
    let d = Dockerd::start();
    let work = tempfile::tempdir().unwrap();

    // Pushed over mutual TLS with the certificate from certs.d.
    let pushed = format!("{push}/team/app:v1");
    import(&d, &pushed, work.path());
    let (ok, out) = docker(&d, &["push", &pushed]);
    assert!(ok, "docker push over mTLS failed:\n{out}\n{}", s.log());

    // Pulled anonymously from the main listener (certs.d there holds only the CA).
    let pulled = format!("{main}/team/app:v1");
    let (ok, out) = docker(&d, &["pull", &pulled]);
    assert!(ok, "docker pull failed:\n{out}\n{}", s.log());
    let (ok, out) = docker(&d, &["image", "inspect", "--format", "{{.Id}}", &pulled]);
    let (_, want) = docker(&d, &["image", "inspect", "--format", "{{.Id}}", &pushed]);
    assert!(ok && out == want, "pulled {out}, pushed {want}");

    // An anonymous push to the main listener: Docker stops at the first refusal and prints
    // wharf's message (with the canonical text and a null detail it retried five times).
    let denied = format!("{main}/team/app:v2");
    import(&d, &denied, work.path());
    let before = upload_posts(&s);
    let started = std::time::Instant::now();
    let (ok, out) = docker(&d, &["push", &denied]);
    let took = started.elapsed();
    assert!(!ok, "an anonymous push was accepted:\n{out}");
    let port = s.listener("push").port();
    assert!(
        out.contains("anonymous start-upload on team/app is not allowed on listener 'main'")
            && out.contains(&format!("listener 'push' on port {port}")),
        "Docker did not show wharf's message:\n{out}"
    );
    assert_eq!(
        upload_posts(&s) - before,
        1,
        "Docker retried the refused push (took {took:?}):\n{out}"
    );
    eprintln!("a denied docker push failed in {took:?}");
}

/// `docker login` with a Basic user; a wrong password is refused, and a push with the right one
/// goes through.
#[test]
fn docker_login_checks_the_password() {
    ensure_host_name();
    let dir = tempfile::tempdir().unwrap();
    let pki = pki(dir.path());
    let toml = format!(
        "bind_address = \"::1\"\n{}{}[global.access_policy]\ndefault = \"deny\"\nrules = [\"identity.username == 'alice'\"]\n",
        tls_table(&pki, "server.tls", None),
        crate::e2e_access::users(&[("alice", "s3cret-pw")]),
    );
    let s = Server::start_in(dir, "epoll", &toml, "warn,wharf::access=info");
    let reg = format!("{HOST}:{}", s.addr.port());
    let _certs = CertsD::install(&pki, &reg, false);
    let d = Dockerd::start();
    let login = |user: &str, pw: &str| login(&d, &reg, user, pw);
    // Docker prints the status of a refused login, not the body.
    let (ok, out) = login("alice", "wrong");
    assert!(!ok, "a wrong password logged in:\n{out}");
    assert!(out.contains("401 Unauthorized"), "{out}");
    let (ok, out) = login("bogus", "bogus");
    assert!(!ok, "an unknown user logged in:\n{out}");
    assert!(out.contains("401 Unauthorized"), "{out}");
    let (ok, out) = login("alice", "s3cret-pw");
    assert!(ok, "docker login failed:\n{out}");
    assert!(out.contains("Login Succeeded"), "{out}");
    let work = tempfile::tempdir().unwrap();
    let image = format!("{reg}/alice/app:v1");
    import(&d, &image, work.path());
    let (ok, out) = docker(&d, &["push", &image]);
    assert!(ok, "docker push after login failed:\n{out}\n{}", s.log());
}

/// `docker login -u github` with a GitHub-shaped ID token that expires seconds later: Docker keeps
/// the refresh token wharf hands it, so a push after the ID token expired still succeeds; a push
/// outside the token's claims is refused with wharf's message; the image pulls back.
#[test]
fn docker_logs_in_with_an_oidc_id_token_and_pushes_after_it_expired() {
    ensure_host_name();
    let st = crate::token::Setup::new();
    let d_ = st.pki.dir.to_str().unwrap().to_owned();
    let args = [
        "cert", "server", "--out", &d_, "--name", "docker", "--host", HOST, "--ip", "::1",
    ];
    crate::common::pki::wharf(&args);
    let server = format!(
        "bind_address = \"::1\"\n{}",
        tls_table(&st.pki, "server.tls", None)
    );
    let s = st.start_with_server("epoll", &server, "");
    let reg = format!("{HOST}:{}", s.addr.port());
    let _certs = CertsD::install(&st.pki, &reg, false);
    let d = Dockerd::start();
    let claims = st
        .github
        .github("wharf-test", "org/app", "refs/heads/main", 8);
    let exp = claims["exp"].as_i64().unwrap();
    let id = st.gh_key.sign(&claims);
    let (ok, text) = login(&d, &reg, "github", &id);
    assert!(
        ok,
        "docker login with an ID token failed:\n{text}\n{}",
        s.log()
    );
    // Not a timing assertion: only waits until the ID token is past its `exp`.
    while crate::common::oidc::now() <= exp {
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    let work = tempfile::tempdir().unwrap();
    let image = format!("{reg}/org/app:v1");
    import(&d, &image, work.path());
    let (ok, out) = docker(&d, &["push", &image]);
    assert!(
        ok,
        "docker push after the ID token expired failed:\n{out}\n{}",
        s.log()
    );
    assert!(
        s.log().contains("POST /token"),
        "Docker exchanged its refresh token:\n{}",
        s.log()
    );
    let other = format!("{reg}/org/other:v1");
    let (ok, out) = docker(&d, &["tag", &image, &other]);
    assert!(ok, "{out}");
    let (ok, out) = docker(&d, &["push", &other]);
    assert!(!ok, "a push outside the token's claims succeeded:\n{out}");
    assert!(out.contains("may not start-upload on org/other"), "{out}");
    let (ok, out) = docker(&d, &["rmi", &image, &other]);
    assert!(ok, "{out}");
    let (ok, out) = docker(&d, &["pull", &image]);
    assert!(ok, "docker pull with the refreshed token failed:\n{out}");
}
