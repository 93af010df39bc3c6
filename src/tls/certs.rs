//! `wharf cert`: a private CA, server and client certificates signed by it, and the client-side
//! certs.d layout Docker, Podman and containerd read. Certificates come from rcgen (ECDSA P-256);
//! keys are written with mode 0600 and existing files are never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

/// A certificate and its key, both PEM.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: already exists (remove it first; wharf never overwrites certificates or keys)", .0.display())]
    Exists(PathBuf),
    #[error("{0}")]
    Invalid(String),
    #[error("certificate generation failed: {0}")]
    Rcgen(#[from] rcgen::Error),
}

fn validity(p: &mut CertificateParams, days: u32) {
    let now = OffsetDateTime::now_utc();
    // A little slack for clocks that are behind.
    p.not_before = now - Duration::hours(1);
    p.not_after = now + Duration::days(days.into());
}

fn random_serial(p: &mut CertificateParams) {
    let mut serial = [0u8; 16];
    getrandom::fill(&mut serial).expect("the OS random source is available");
    serial[0] &= 0x7f;
    p.serial_number = Some(serial.to_vec().into());
}

/// A new self-signed CA that may sign server and client certificates (no intermediates below it).
pub fn new_ca(common_name: &str, days: u32) -> Result<Issued, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, days);
    random_serial(&mut p);
    let key = KeyPair::generate()?;
    let cert = p.self_signed(&key)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A leaf signed by the CA in `ca` (PEM cert and key), with a new key pair.
fn leaf(ca: &Issued, p: CertificateParams, days: u32) -> Result<Issued, CertError> {
    leaf_with(ca, p, days, KeyPair::generate()?)
}

/// A leaf signed by the CA in `ca` for the key pair `key`.
pub(super) fn leaf_with(
    ca: &Issued,
    mut p: CertificateParams,
    days: u32,
    key: KeyPair,
) -> Result<Issued, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    validity(&mut p, days);
    random_serial(&mut p);
    let cert = p.signed_by(&key, &issuer)?;
    Ok(Issued {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A server certificate for `hosts` (DNS names) and `ips`, with the serverAuth usage.
pub fn server(
    ca: &Issued,
    hosts: &[String],
    ips: &[IpAddr],
    days: u32,
) -> Result<Issued, CertError> {
    leaf(ca, server_params(hosts, ips)?, days)
}

/// What a server certificate for `hosts` and `ips` says (serverAuth, SANs).
pub(super) fn server_params(
    hosts: &[String],
    ips: &[IpAddr],
) -> Result<CertificateParams, CertError> {
    if hosts.is_empty() && ips.is_empty() {
        return Err(CertError::Invalid(
            "a server certificate needs at least one --host or --ip".into(),
        ));
    }
    let mut p = CertificateParams::new(hosts.to_vec())?;
    p.subject_alt_names
        .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
    p.distinguished_name = DistinguishedName::new();
    let cn = hosts.first().cloned().unwrap_or_else(|| ips[0].to_string());
    p.distinguished_name.push(DnType::CommonName, cn);
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    Ok(p)
}

/// A client certificate with subject CN and Os, with the clientAuth usage.
pub fn client(
    ca: &Issued,
    common_name: &str,
    organizations: &[String],
    days: u32,
) -> Result<Issued, CertError> {
    leaf(ca, client_params(common_name, organizations)?, days)
}

/// What a client certificate for CN `common_name` and `organizations` says (clientAuth).
pub(super) fn client_params(
    common_name: &str,
    organizations: &[String],
) -> Result<CertificateParams, CertError> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name = DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, common_name);
    match organizations {
        [] => {}
        [one] => p
            .distinguished_name
            .push(DnType::OrganizationName, one.as_str()),
        _ => {
            return Err(CertError::Invalid(
                "one --org per certificate (rcgen writes one value per attribute)".into(),
            ));
        }
    }
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(p)
}

fn read_text(p: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(p).map_err(|source| CertError::Io {
        path: p.into(),
        source,
    })
}

/// Read a CA written by `new_ca` (or any PEM CA certificate and its key).
pub fn load(cert: &Path, key: &Path) -> Result<Issued, CertError> {
    Ok(Issued {
        cert_pem: read_text(cert)?,
        key_pem: read_text(key)?,
    })
}

/// Write `contents` to a new file with `mode`; never replaces an existing file.
pub fn write_new(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let io = |source| CertError::Io {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CertError::Exists(path.into()),
            _ => io(e),
        })?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Replace `path` with `contents` (mode `mode`) atomically: written beside it, synced, renamed.
pub fn replace(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    let tmp = path.with_extension("tmp-wharf");
    let _ = std::fs::remove_file(&tmp);
    write_new(&tmp, contents, mode)?;
    std::fs::rename(&tmp, path).map_err(|source| CertError::Io {
        path: path.into(),
        source,
    })
}

/// Write a certificate (0644) and its key (0600) as `<dir>/<name>.crt` and `<dir>/<name>.key`.
pub fn write_pair(
    dir: &Path,
    name: &str,
    issued: &Issued,
) -> Result<(PathBuf, PathBuf), CertError> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    for p in [&crt, &key] {
        if p.exists() {
            return Err(CertError::Exists(p.clone()));
        }
    }
    write_new(&key, &issued.key_pem, 0o600)?;
    write_new(&crt, &issued.cert_pem, 0o644)?;
    Ok((crt, key))
}

/// Lay out `<certs_d>/<registry>/{ca.crt, client.cert, client.key, hosts.toml}`: the certs.d layout of
/// Docker (`/etc/docker/certs.d`), Podman/skopeo (`/etc/containers/certs.d`) and containerd
/// (`/etc/containerd/certs.d`, read through `hosts.toml`). Returns the registry's directory.
pub fn install_client(
    registry: &str,
    certs_d: &Path,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> Result<PathBuf, CertError> {
    if registry.is_empty() || registry.contains('/') || registry.starts_with('.') {
        return Err(CertError::Invalid(format!(
            "--registry {registry:?}: use host or host:port, as in image references"
        )));
    }
    let dir = certs_d.join(registry);
    let (ca_pem, cert_pem, key_pem) = (read_text(ca)?, read_text(cert)?, read_text(key)?);
    write_new(&dir.join("ca.crt"), &ca_pem, 0o644)?;
    write_new(&dir.join("client.cert"), &cert_pem, 0o644)?;
    write_new(&dir.join("client.key"), &key_pem, 0o600)?;
    let abs = std::path::absolute(&dir).map_err(|source| CertError::Io {
        path: dir.clone(),
        source,
    })?;
    let hosts = format!(
        "# containerd 1.5+ / 2.x registry host configuration (config_path = \"{certs}\")\n\
         server = \"https://{registry}\"\n\n\
         [host.\"https://{registry}\"]\n\
         \x20 capabilities = [\"pull\", \"resolve\", \"push\"]\n\
         \x20 ca = \"{d}/ca.crt\"\n\
         \x20 client = [[\"{d}/client.cert\", \"{d}/client.key\"]]\n",
        certs = std::path::absolute(certs_d)
            .unwrap_or_else(|_| certs_d.into())
            .display(),
        d = abs.display(),
    );
    write_new(&dir.join("hosts.toml"), &hosts, 0o644)?;
    Ok(dir)
}
