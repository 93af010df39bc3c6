//! A local OIDC issuer for the token tests: keys generated at run time (RS256 by openssl, ES256
//! and EdDSA by ring), its discovery document and JWKS served over TLS on loopback with a
//! certificate from the test CA, and ID tokens signed like GitHub Actions' and GitLab CI's.
//! The published keys can be replaced (rotation); fetches are counted.

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::pki::{Pki, run_cmd};

pub fn b64(bytes: &[u8]) -> String {
    use base64ct::{Base64UrlUnpadded, Encoding};
    Base64UrlUnpadded::encode_string(bytes)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

enum Signer {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// One signing key of the issuer and its JWK.
pub struct IssuerKey {
    pub kid: String,
    pub alg: &'static str,
    signer: Signer,
    pub jwk: Value,
}

impl IssuerKey {
    /// A new key: `alg` is RS256, ES256 or EdDSA.
    pub fn new(alg: &'static str, dir: &Path) -> Arc<IssuerKey> {
        let rng = SystemRandom::new();
        let mut id = [0u8; 6];
        getrandom::fill(&mut id).unwrap();
        let kid = format!("{alg}-{}", b64(&id));
        let (signer, jwk) = match alg {
            "RS256" => {
                let path = dir.join(format!("{kid}.pem"));
                let (ok, out) = run_cmd(
                    std::process::Command::new("openssl")
                        .args([
                            "genpkey",
                            "-algorithm",
                            "RSA",
                            "-pkeyopt",
                            "rsa_keygen_bits:2048",
                            "-out",
                        ])
                        .arg(&path),
                );
                assert!(ok, "{out}");
                let (ok, modulus) = run_cmd(
                    std::process::Command::new("openssl")
                        .args(["rsa", "-noout", "-modulus", "-in"])
                        .arg(&path),
                );
                assert!(ok, "{modulus}");
                let hex = modulus.trim().trim_start_matches("Modulus=");
                let n: Vec<u8> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                    .collect();
                let der = PrivateKeyDer::from_pem_file(&path).unwrap();
                let pair = RsaKeyPair::from_pkcs8(der.secret_der()).unwrap();
                let jwk = json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": b64(&n), "e": b64(&[1, 0, 1])});
                (Signer::Rsa(pair), jwk)
            }
            "ES256" => {
                let a = &signature::ECDSA_P256_SHA256_FIXED_SIGNING;
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(a, &rng).unwrap();
                let pair = EcdsaKeyPair::from_pkcs8(a, pkcs8.as_ref(), &rng).unwrap();
                let p = pair.public_key().as_ref();
                let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&p[1..33]), "y": b64(&p[33..65])});
                (Signer::Ec(pair), jwk)
            }
            "EdDSA" => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
                let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(pair.public_key().as_ref())});
                (Signer::Ed(pair), jwk)
            }
            other => panic!("no such algorithm {other}"),
        };
        Arc::new(IssuerKey {
            kid,
            alg,
            signer,
            jwk,
        })
    }

    /// A compact JWS of `claims` with this key, under `header` fields added to alg/kid/typ.
    pub fn sign_with(&self, header: Value, claims: &Value) -> String {
        let mut h = json!({"alg": self.alg, "kid": self.kid, "typ": "JWT"});
        for (k, v) in header.as_object().unwrap() {
            h[k] = v.clone();
        }
        let input = format!(
            "{}.{}",
            b64(h.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let rng = SystemRandom::new();
        let sig = match &self.signer {
            Signer::Rsa(k) => {
                let mut s = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &rng, input.as_bytes(), &mut s)
                    .unwrap();
                s
            }
            Signer::Ec(k) => k.sign(&rng, input.as_bytes()).unwrap().as_ref().to_vec(),
            Signer::Ed(k) => k.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }

    pub fn sign(&self, claims: &Value) -> String {
        self.sign_with(json!({}), claims)
    }
}

/// An OIDC issuer on `https://127.0.0.1:<port>`, stopped when dropped.
pub struct Issuer {
    pub url: String,
    published: Arc<Mutex<Vec<Arc<IssuerKey>>>>,
    jwks_fetches: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    port: u16,
}

impl Issuer {
    /// Serve `keys` with a certificate for 127.0.0.1 from `pki`'s CA.
    pub fn start(pki: &Pki, keys: Vec<Arc<IssuerKey>>) -> Issuer {
        let name = format!("issuer-{}", now() % 100_000 + rand_u16() as i64);
        let (crt, key) = pki.server_cert_in(&pki.dir, &name, &[]);
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&crt)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&key).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let url = format!("https://127.0.0.1:{port}");
        let published = Arc::new(Mutex::new(keys));
        let jwks_fetches = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, f, s, u) = (
            Arc::clone(&published),
            Arc::clone(&jwks_fetches),
            Arc::clone(&stop),
            url.clone(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(tcp) = conn else { continue };
                let (p, f, u, config) = (
                    Arc::clone(&p),
                    Arc::clone(&f),
                    u.clone(),
                    Arc::clone(&config),
                );
                std::thread::spawn(move || serve(tcp, config, &u, &p, &f));
            }
        });
        Issuer {
            url,
            published,
            jwks_fetches,
            stop,
            port,
        }
    }

    /// Replace the published keys.
    pub fn publish(&self, keys: Vec<Arc<IssuerKey>>) {
        *self.published.lock().unwrap() = keys;
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// Claims shaped like a GitHub Actions ID token for `repo` at `git_ref`.
    pub fn github(&self, audience: &str, repo: &str, git_ref: &str, lifetime: i64) -> Value {
        let t = now();
        let owner = repo.split('/').next().unwrap();
        json!({
            "jti": format!("{:x}", rand_u16()),
            "sub": format!("repo:{repo}:ref:{git_ref}"),
            "aud": audience,
            "ref": git_ref,
            "sha": "3f786850e387550fdab836ed7e6dc881de23001b",
            "repository": repo,
            "repository_owner": owner,
            "repository_owner_id": "1342004",
            "repository_id": "98765",
            "repository_visibility": "private",
            "run_id": "6121449372",
            "run_number": "42",
            "run_attempt": "1",
            "actor": "octocat",
            "actor_id": "583231",
            "workflow": "build",
            "workflow_ref": format!("{repo}/.github/workflows/build.yml@{git_ref}"),
            "job_workflow_ref": format!("{repo}/.github/workflows/build.yml@{git_ref}"),
            "event_name": "push",
            "ref_type": "branch",
            "ref_protected": "true",
            "runner_environment": "github-hosted",
            "iss": self.url,
            "nbf": t - 5,
            "iat": t - 5,
            "exp": t + lifetime,
        })
    }

    /// Claims shaped like a GitLab CI `id_tokens` token for project `path` at branch `branch`.
    pub fn gitlab(&self, audience: &str, path: &str, branch: &str, lifetime: i64) -> Value {
        let t = now();
        json!({
            "namespace_id": "72",
            "namespace_path": path.split('/').next().unwrap(),
            "project_id": "20",
            "project_path": path,
            "user_id": "5",
            "user_login": "ci-bot",
            "user_email": "ci-bot@example.com",
            "pipeline_id": "574",
            "pipeline_source": "push",
            "job_id": "302",
            "ref": branch,
            "ref_type": "branch",
            "ref_path": format!("refs/heads/{branch}"),
            "ref_protected": "true",
            "runner_environment": "gitlab-hosted",
            "sub": format!("project_path:{path}:ref_type:branch:ref:{branch}"),
            "aud": audience,
            "iss": self.url,
            "jti": format!("{:x}", rand_u16()),
            "nbf": t - 5,
            "iat": t - 5,
            "exp": t + lifetime,
        })
    }
}

impl Drop for Issuer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn rand_u16() -> u16 {
    let mut b = [0u8; 2];
    getrandom::fill(&mut b).unwrap();
    u16::from_le_bytes(b)
}

/// One HTTPS exchange: the discovery document, the JWKS, or 404; then close.
fn serve(
    tcp: std::net::TcpStream,
    config: Arc<rustls::ServerConfig>,
    url: &str,
    published: &Mutex<Vec<Arc<IssuerKey>>>,
    fetches: &AtomicUsize,
) {
    let _ = tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let conn = rustls::ServerConnection::new(config).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match tls.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let path = text.split_whitespace().nth(1).unwrap_or("/");
    let (status, body) = match path {
        "/.well-known/openid-configuration" => (
            "200 OK",
            json!({
                "issuer": url,
                "jwks_uri": format!("{url}/jwks"),
                "response_types_supported": ["id_token"],
                "subject_types_supported": ["public", "pairwise"],
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
            }),
        ),
        "/jwks" => {
            fetches.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<Value> = published
                .lock()
                .unwrap()
                .iter()
                .map(|k| k.jwk.clone())
                .collect();
            ("200 OK", json!({"keys": keys}))
        }
        _ => ("404 Not Found", json!({})),
    };
    let body = body.to_string();
    let _ = write!(
        tls,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
}
