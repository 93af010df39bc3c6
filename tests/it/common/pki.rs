//! Certificates made at test time: the normal ones with `wharf cert` (so the CLI is exercised),
//! the odd ones (other CA, expired, not yet valid, wrong usage, several CNs) with rcgen; and a
//! rustls client that speaks HTTP through `Client`.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    CertificateParams, DnType, DnValue, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use time::OffsetDateTime;

use super::{Client, wharf_bin};

/// A CA with server and client certificates in `dir`, made by `wharf cert`.
pub struct Pki {
    pub dir: PathBuf,
}

/// Run a command: (success, stdout and stderr). A tool that cannot start fails the test.
pub fn run_cmd(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (tests/setup.sh installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Run `wharf` with `args`, asserting success; returns stdout.
pub fn wharf(args: &[&str]) -> String {
    super::run_ok(Command::new(wharf_bin()).args(args))
}

impl Pki {
    /// ca.{crt,key}, server.{crt,key} for localhost/127.0.0.1, and client.{crt,key}
    /// (CN build-server, O Infrastructure).
    pub fn new(dir: &Path) -> Pki {
        let d = dir.to_str().unwrap();
        wharf(&["cert", "ca", "--out", d, "--cn", "wharf test CA"]);
        let pki = Pki { dir: dir.into() };
        pki.server_cert_in(dir, "server", &[]);
        wharf(&[
            "cert",
            "client",
            "--out",
            d,
            "--cn",
            "build-server",
            "--org",
            "Infrastructure",
        ]);
        pki
    }

    /// A server certificate for localhost/127.0.0.1 signed by this CA, written by `wharf cert server`
    /// as `<out>/<name>.{crt,key}` (the CA is copied to `out` first when it lives elsewhere).
    pub fn server_cert_in(&self, out: &Path, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
        if out != self.dir {
            std::fs::copy(self.path("ca.crt"), out.join("ca.crt")).unwrap();
            std::fs::copy(self.path("ca.key"), out.join("ca.key")).unwrap();
        }
        let o = out.to_str().unwrap();
        let mut args = vec![
            "cert",
            "server",
            "--out",
            o,
            "--name",
            name,
            "--host",
            "localhost",
            "--ip",
            "127.0.0.1",
        ];
        args.extend_from_slice(extra);
        wharf(&args);
        (
            out.join(format!("{name}.crt")),
            out.join(format!("{name}.key")),
        )
    }

    /// `wharf cert install-client` of `<name>.crt` for `registry` into `certs_d`; returns the
    /// registry's directory in it (what `--cert-dir` takes).
    pub fn install_client(&self, registry: &str, certs_d: &Path, name: &str) -> PathBuf {
        wharf(&[
            "cert",
            "install-client",
            "--registry",
            registry,
            "--dir",
            certs_d.to_str().unwrap(),
            "--from",
            self.dir.to_str().unwrap(),
            "--name",
            name,
        ]);
        certs_d.join(registry)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn pem(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    /// The `[server.tls]` table for these files.
    pub fn server_toml(&self, client_auth: Option<&str>) -> String {
        self.tls_toml("server.tls", "server", client_auth)
    }

    /// A TLS table (`table`, e.g. `server.listener.tls`) serving `<name>.crt` / `<name>.key`.
    pub fn tls_toml(&self, table: &str, name: &str, client_auth: Option<&str>) -> String {
        let mut t = format!(
            "[{table}]\nserver_certificate_bundle = \"{}\"\nserver_private_key = \"{}\"\n",
            self.path(&format!("{name}.crt")).display(),
            self.path(&format!("{name}.key")).display()
        );
        if let Some(mode) = client_auth {
            t.push_str(&format!(
                "client_ca_bundle = \"{}\"\nclient_auth = \"{mode}\"\n",
                self.path("ca.crt").display()
            ));
        }
        t
    }

    fn ca_issuer(&self) -> Issuer<'static, KeyPair> {
        let key = KeyPair::from_pem(&self.pem("ca.key")).unwrap();
        Issuer::from_ca_cert_pem(&self.pem("ca.crt"), key).unwrap()
    }

    /// A client certificate signed by this CA with the given subject, validity and usage;
    /// written as `<name>.crt` / `<name>.key`.
    pub fn client_cert(&self, name: &str, spec: ClientSpec) -> (PathBuf, PathBuf) {
        let issuer = match spec.other_ca {
            false => self.ca_issuer(),
            true => {
                let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
                p.distinguished_name.push(DnType::CommonName, "rogue CA");
                p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                let key = KeyPair::generate().unwrap();
                let cert = p.self_signed(&key).unwrap();
                Issuer::from_ca_cert_pem(&cert.pem(), key).unwrap()
            }
        };
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in spec.subject {
            p.distinguished_name.push(t, v);
        }
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(spec.starts_in_days) - time::Duration::hours(1);
        p.not_after = now + time::Duration::days(spec.ends_in_days);
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![spec.usage];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &issuer).unwrap();
        let (c, k) = (
            self.path(&format!("{name}.crt")),
            self.path(&format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A rustls client config trusting this CA, optionally with a client certificate.
    pub fn client_config(
        &self,
        cert: Option<(&Path, &Path)>,
        tls12_only: bool,
    ) -> Arc<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13]
        };
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(self.path("ca.crt")).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let b = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
        let cfg = match cert {
            None => b.with_no_client_auth(),
            Some((c, k)) => {
                let chain = CertificateDer::pem_file_iter(c)
                    .unwrap()
                    .map(|c| c.unwrap())
                    .collect();
                b.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(k).unwrap())
                    .unwrap()
            }
        };
        Arc::new(cfg)
    }
}

/// What `Pki::client_cert` makes.
pub struct ClientSpec {
    pub subject: Vec<(DnType, DnValue)>,
    pub starts_in_days: i64,
    pub ends_in_days: i64,
    pub usage: ExtendedKeyUsagePurpose,
    pub other_ca: bool,
}

impl Default for ClientSpec {
    fn default() -> Self {
        ClientSpec {
            subject: vec![(DnType::CommonName, DnValue::Utf8String("tester".into()))],
            starts_in_days: 0,
            ends_in_days: 30,
            usage: ExtendedKeyUsagePurpose::ClientAuth,
            other_ca: false,
        }
    }
}

/// A finished TLS handshake: what the client saw, and an HTTP client over it.
pub struct TlsConn {
    pub resumed: bool,
    pub version: rustls::ProtocolVersion,
    /// The server's leaf certificate (DER).
    pub server_cert: Vec<u8>,
    pub client: Client,
}

/// Connect and complete the handshake (to `localhost`); Err with rustls's/the socket's reason.
pub fn tls_connect(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> Result<TlsConn, String> {
    let mut sock = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let mut conn = rustls::ClientConnection::new(cfg, name).map_err(|e| e.to_string())?;
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    let resumed = conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    let version = conn.protocol_version().unwrap();
    let server_cert = conn.peer_certificates().unwrap()[0].to_vec();
    let stream = rustls::StreamOwned::new(conn, sock);
    Ok(TlsConn {
        resumed,
        version,
        server_cert,
        client: Client::over(Box::new(stream)),
    })
}
