//! Reading the configured PEM files and building the rustls server config from them. Every failure
//! names the config key, the file and the reason.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::server::danger::ClientCertVerifier;
use rustls::server::{ServerSessionMemoryCache, WebPkiClientVerifier};
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

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
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(key, path, format!("not a PEM certificate bundle: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            key,
            path,
            "contains no PEM certificate (-----BEGIN CERTIFICATE-----)",
        ));
    }
    Ok(certs)
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

/// The trust anchors for client certificates.
pub fn read_client_cas(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in read_certs(CA_KEY, path)?.into_iter().enumerate() {
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
    let key = read_key(&cfg.server_private_key)?;
    let provider = provider();
    let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Other(e.to_string()))?;
    let mut client_verifier: Option<Arc<dyn ClientCertVerifier>> = None;
    let builder = match &cfg.client_ca_bundle {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let roots = read_client_cas(path)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider));
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
    })
}
