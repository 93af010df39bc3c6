//! Reading the configured PEM files and building the rustls server config from them. Every failure
//! names the config key, the file and the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

use crate::config::{ClientAuth, TlsConfig};

/// TLS sessions remembered for resumption (TLS 1.2 session ids; TLS 1.3 uses tickets).
const SESSION_CACHE: usize = 32 * 1024;

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {}: cannot read: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {}: {reason}", path.display())]
    Invalid {
        key: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "server.tls.server_private_key {} does not match the first certificate of server.tls.server_certificate_bundle {}",
        key.display(),
        cert.display()
    )]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("server.tls: {0}")]
    Other(String),
    /// Any of the above for a TLS table other than `[server.tls]`, with its keys renamed.
    #[error("{0}")]
    Located(String),
}

impl TlsError {
    /// The error with its keys under `table` (e.g. `server.listener[0].tls`) instead of `server.tls`.
    pub fn located(self, table: &str) -> TlsError {
        if table == "server.tls" {
            self
        } else {
            TlsError::Located(self.to_string().replace("server.tls", table))
        }
    }
}

pub const CERT_KEY: &str = "server.tls.server_certificate_bundle";
pub const KEY_KEY: &str = "server.tls.server_private_key";
pub const CA_KEY: &str = "server.tls.client_ca_bundle";

/// The crypto provider wharf uses everywhere (ring: AES-GCM and ChaCha20 with assembly, ECDSA, RSA, Ed25519).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.into(),
        source,
    })
}

fn invalid(key: &'static str, path: &Path, reason: impl Into<String>) -> TlsError {
    TlsError::Invalid {
        key,
        path: path.into(),
        reason: reason.into(),
    }
}

/// Every certificate of a PEM bundle, in file order; at least one.
pub fn read_certs(
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(key, path)?;
    pem_items(
        key,
        path,
        &bytes,
        ("certificate bundle", "certificate"),
        "CERTIFICATE",
    )
}

/// Every PEM item of type `T` in `bytes` (the file `path`, named `key` in errors); at least one.
/// `(file, item)` name what the file and each item are in the errors.
fn pem_items<T: PemObject>(
    key: &'static str,
    path: &Path,
    bytes: &[u8],
    (file, item): (&str, &str),
    label: &str,
) -> Result<Vec<T>, TlsError> {
    let items = T::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, format!("not a PEM {file}: {e}")))?;
    if items.is_empty() {
        return Err(invalid(
            key,
            path,
            format!("contains no PEM {item} (-----BEGIN {label}-----)"),
        ));
    }
    Ok(items)
}

/// The private key of a PEM file: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    read_key_as(KEY_KEY, path)
}

/// The private key of a PEM file named by the config key `key`.
fn read_key_as(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound if contains(&bytes, b"ENCRYPTED") => {
                "the key is encrypted; wharf needs it unencrypted (openssl pkey -in KEY -out KEY.plain)".to_owned()
            }
            pem::Error::NoItemsFound => "contains no PEM private key (PKCS#8 \"PRIVATE KEY\", PKCS#1 \"RSA PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\")".to_owned(),
            e => format!("not a PEM private key: {e}"),
        };
        invalid(key, path, reason)
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub const CRL_KEY: &str = "server.tls.client_crl";

/// Every CRL of the files named by `client_crl`: PEM (`X509 CRL` blocks) or one DER CRL per file.
/// Each file is checked on its own against `roots`, so a broken one is named.
fn read_crls(
    paths: &[PathBuf],
    roots: &Arc<RootCertStore>,
    provider: &Arc<CryptoProvider>,
) -> Result<Vec<CertificateRevocationListDer<'static>>, TlsError> {
    let mut out = Vec::new();
    for path in paths {
        let bytes = read(CRL_KEY, path)?;
        let crls = if contains(&bytes, b"-----BEGIN") {
            pem_items(CRL_KEY, path, &bytes, ("CRL", "CRL"), "X509 CRL")?
        } else {
            vec![CertificateRevocationListDer::from(bytes)]
        };
        WebPkiClientVerifier::builder_with_provider(Arc::clone(roots), Arc::clone(provider))
            .with_crls(crls.iter().cloned())
            .build()
            .map_err(|e| invalid(CRL_KEY, path, format!("not a valid CRL: {e}")))?;
        out.extend(crls);
    }
    Ok(out)
}

/// The first certificate of the server bundle must be a server's: not a CA (CA:true) and, when it
/// limits its use (extendedKeyUsage), usable for TLS servers. Either mistake would start a server
/// every client then refuses.
fn check_server_leaf(leaf: &CertificateDer<'_>) -> Result<(), String> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(leaf.as_ref())
        .map_err(|e| format!("the first certificate cannot be parsed: {e}"))?;
    // A self-signed server certificate (`openssl req -x509 -addext subjectAltName=...`) carries
    // CA:true and its names; a CA certificate given by mistake has no subjectAltName.
    let named = cert.subject_alternative_name().ok().flatten().is_some();
    if cert.is_ca() && !named {
        return Err(format!(
            "the first certificate ({}) is a CA certificate (CA:true, no subjectAltName), not a server certificate; give the server's certificate first (wharf cert server makes one)",
            cert.subject()
        ));
    }
    let eku = cert
        .extended_key_usage()
        .map_err(|e| format!("the first certificate's extendedKeyUsage: {e}"))?;
    if let Some(eku) = eku
        && !eku.value.server_auth
        && !eku.value.any
    {
        return Err(format!(
            "the first certificate ({}) is not for TLS servers (its extendedKeyUsage lacks serverAuth; a client certificate?); give the server's certificate (wharf cert server makes one)",
            cert.subject()
        ));
    }
    Ok(())
}

/// The trust anchors for client certificates.
pub fn read_client_cas(path: &Path) -> Result<RootCertStore, TlsError> {
    client_roots(path, read_certs(CA_KEY, path)?)
}

/// `cas` (read from `path`) as trust anchors.
fn client_roots(path: &Path, cas: Vec<CertificateDer<'static>>) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in cas.into_iter().enumerate() {
        roots
            .add(cert)
            .map_err(|e| invalid(CA_KEY, path, format!("certificate #{}: {e}", i + 1)))?;
    }
    Ok(roots)
}

/// A client config for services wharf calls over TLS (an object store, later upstreams):
/// TLS 1.3 and 1.2, no client certificate, server certificates verified against the PEM roots
/// in `ca_bundle` (named `key` in errors) or else the system's trusted roots.
pub fn client_config(
    ca_bundle: Option<&Path>,
    key: &'static str,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    client_config_with(ca_bundle, key, None)
}

/// Config keys naming a client certificate chain and its private key, and their paths.
pub struct ClientIdentity<'a> {
    pub certificate: (&'static str, &'a Path),
    pub private_key: (&'static str, &'a Path),
}

/// `client_config`, presenting `identity` to servers that ask for a client certificate.
pub fn client_config_with(
    ca_bundle: Option<&Path>,
    key: &'static str,
    identity: Option<ClientIdentity<'_>>,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match ca_bundle {
        Some(path) => {
            for (i, cert) in read_certs(key, path)?.into_iter().enumerate() {
                roots
                    .add(cert)
                    .map_err(|e| invalid(key, path, format!("certificate #{}: {e}", i + 1)))?;
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(TlsError::Located(format!(
                    "{key} is not set and no system root certificates were found ({:?}); name the CA bundle",
                    found.errors.first().map(ToString::to_string)
                )));
            }
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Located(e.to_string()))?
        .with_root_certificates(roots);
    let mut config = match identity {
        None => config.with_no_client_auth(),
        Some(id) => {
            let (ck, cp) = id.certificate;
            let chain = read_certs(ck, cp)?;
            let (kk, kp) = id.private_key;
            let private = read_key_as(kk, kp)?;
            config
                .with_client_auth_cert(chain, private)
                .map_err(|e| invalid(kk, kp, format!("does not go with {ck}: {e}")))?
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A built server config and the client-certificate verifier inside it (kept to re-check the
/// certificates of open connections after a reload).
pub struct Material {
    pub config: Arc<ServerConfig>,
    pub verifier: Option<Arc<dyn ClientCertVerifier>>,
    /// `("server", notAfter)` and `("client_ca:<subject>", notAfter)`, Unix seconds (metrics).
    pub expiries: Vec<(String, i64)>,
}

/// notAfter of a DER certificate and its subject, if it parses.
fn not_after(der: &[u8]) -> Option<(String, i64)> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, c) = X509Certificate::from_der(der).ok()?;
    Some((c.subject().to_string(), c.validity().not_after.timestamp()))
}

/// Build the rustls server config: TLS 1.3 and 1.2, HTTP/1.1 ALPN, session tickets and a session
/// cache, and client-certificate verification as configured (accepted CA names are advertised).
pub fn build(cfg: &TlsConfig) -> Result<Arc<ServerConfig>, TlsError> {
    build_material(cfg).map(|m| m.config)
}

/// `build`, keeping the verifier. Every build has a fresh ticket key and session cache, so a
/// reload (new client CAs, say) also ends resumption of sessions verified under the old material.
pub fn build_material(cfg: &TlsConfig) -> Result<Material, TlsError> {
    let chain = read_certs(CERT_KEY, &cfg.server_certificate_bundle)?;
    check_server_leaf(&chain[0])
        .map_err(|reason| invalid(CERT_KEY, &cfg.server_certificate_bundle, reason))?;
    let key = read_key(&cfg.server_private_key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Other(e.to_string()))?;
    let mut expiries: Vec<(String, i64)> = not_after(&chain[0])
        .map(|(_, t)| ("server".to_owned(), t))
        .into_iter()
        .collect();
    let mut client_verifier: Option<Arc<dyn ClientCertVerifier>> = None;
    let builder = match &cfg.client_ca_bundle {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let cas = read_certs(CA_KEY, path)?;
            for ca in &cas {
                expiries.extend(not_after(ca).map(|(s, t)| (format!("client_ca:{s}"), t)));
            }
            let roots = Arc::new(client_roots(path, cas)?);
            let crls = read_crls(&cfg.client_crl, &roots, &provider)?;
            let mut verifier =
                WebPkiClientVerifier::builder_with_provider(roots, Arc::clone(&provider));
            if !crls.is_empty() {
                // The leaf's issuer must vouch for it; unknown status is a refusal (fail closed).
                verifier = verifier.with_crls(crls).only_check_end_entity_revocation();
            }
            let verifier = match cfg.client_auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                ClientAuth::Required => verifier,
            };
            let verifier = verifier
                .build()
                .map_err(|e| invalid(CA_KEY, path, e.to_string()))?;
            client_verifier = Some(Arc::clone(&verifier));
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut sc = builder.with_single_cert(chain, key).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
            cert: cfg.server_certificate_bundle.clone(),
            key: cfg.server_private_key.clone(),
        },
        e @ rustls::Error::InvalidCertificate(_) => {
            invalid(CERT_KEY, &cfg.server_certificate_bundle, e.to_string())
        }
        e => invalid(KEY_KEY, &cfg.server_private_key, e.to_string()),
    })?;
    sc.alpn_protocols = vec![b"http/1.1".to_vec()];
    sc.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    sc.ticketer = rustls::crypto::ring::Ticketer::new()
        .map_err(|e| TlsError::Other(format!("cannot create the session ticketer: {e}")))?;
    Ok(Material {
        config: Arc::new(sc),
        verifier: client_verifier,
        expiries,
    })
}
