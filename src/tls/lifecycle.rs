//! `wharf cert ... --renew` and `wharf cert revoke`: a certificate re-issued with the same names
//! and usage (the key kept unless asked), and a CA's revocation list (`<ca>.crl`, PEM) that
//! `client_crl` reads.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevocationReason,
    RevokedCertParams, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::certs::{self, CertError, Issued};

fn invalid(path: &Path, why: impl std::fmt::Display) -> CertError {
    CertError::Invalid(format!("{}: {why}", path.display()))
}

/// The DER of the first PEM block in `pem`.
fn pem_der(path: &Path, pem: &str) -> Result<Vec<u8>, CertError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| invalid(path, format!("not PEM: {e}")))?;
    Ok(block.contents)
}

/// `cert` re-issued by `ca`: same subject names, SANs and usage, `days` of new validity, a new
/// serial; the key in `key_pem` unless `new_key`.
pub fn renew(
    ca: &Issued,
    cert_path: &Path,
    key_pem: &str,
    days: u32,
    new_key: bool,
) -> Result<Issued, CertError> {
    let pem = std::fs::read_to_string(cert_path).map_err(|source| CertError::Io {
        path: cert_path.into(),
        source,
    })?;
    let der = pem_der(cert_path, &pem)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| invalid(cert_path, format!("{e}")))?;
    let eku = cert
        .extended_key_usage()
        .map_err(|e| invalid(cert_path, e))?
        .map(|e| e.value.server_auth);
    let (mut hosts, mut ips) = (Vec::new(), Vec::new());
    let san = cert
        .subject_alternative_name()
        .map_err(|e| invalid(cert_path, e))?;
    for name in san.iter().flat_map(|s| &s.value.general_names) {
        match name {
            GeneralName::DNSName(d) => hosts.push((*d).to_owned()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("length 4"))),
                16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("length 16"))),
                _ => {}
            },
            _ => {}
        }
    }
    let text = |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue>| {
        it.filter_map(|a| a.as_str().ok().map(str::to_owned))
            .collect::<Vec<_>>()
    };
    let params = if eku == Some(true) {
        certs::server_params(&hosts, &ips)?
    } else {
        let cns = text(&mut cert.subject().iter_common_name());
        let orgs = text(&mut cert.subject().iter_organization());
        let cn = cns
            .first()
            .ok_or_else(|| invalid(cert_path, "has no subject CN to renew"))?;
        certs::client_params(cn, &orgs)?
    };
    let key = if new_key {
        KeyPair::generate()?
    } else {
        KeyPair::from_pem(key_pem)?
    };
    certs::leaf_with(ca, params, days, key)
}

/// Add the certificate at `cert_path` to `<dir>/<ca>.crl` (made if absent), signed by `ca`, valid
/// for `days`; returns the CRL's path. Entries already there are kept; the CRL number grows by one.
pub fn revoke(
    ca: &Issued,
    dir: &Path,
    ca_name: &str,
    cert_path: &Path,
    days: u32,
) -> Result<PathBuf, CertError> {
    let read = |p: &Path| {
        std::fs::read_to_string(p).map_err(|source| CertError::Io {
            path: p.into(),
            source,
        })
    };
    let der = pem_der(cert_path, &read(cert_path)?)?;
    let (_, cert) =
        X509Certificate::from_der(&der).map_err(|e| invalid(cert_path, format!("{e}")))?;
    let ca_der = pem_der(&dir.join(format!("{ca_name}.crt")), &ca.cert_pem)?;
    if let Ok((_, ca_cert)) = X509Certificate::from_der(&ca_der)
        && ca_cert.subject().as_raw() != cert.issuer().as_raw()
    {
        return Err(invalid(
            cert_path,
            format!(
                "was issued by {}, not by the CA {ca_name} ({}); name its CA with --ca",
                cert.issuer(),
                ca_cert.subject()
            ),
        ));
    }
    let crl_path = dir.join(format!("{ca_name}.crl"));
    let now = OffsetDateTime::now_utc();
    let mut revoked = Vec::new();
    let mut number = 1u64;
    if crl_path.exists() {
        let der = pem_der(&crl_path, &read(&crl_path)?)?;
        let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(&der)
            .map_err(|e| invalid(&crl_path, format!("not a CRL: {e}")))?;
        number = crl
            .crl_number()
            .and_then(|n| u64::try_from(n).ok())
            .unwrap_or(0)
            + 1;
        for r in crl.iter_revoked_certificates() {
            let at =
                OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp()).unwrap_or(now);
            revoked.push(entry(r.raw_serial(), at));
        }
    }
    let serial = cert.raw_serial();
    if !revoked
        .iter()
        .any(|r: &RevokedCertParams| r.serial_number.as_ref() == serial)
    {
        revoked.push(entry(serial, now));
    }
    let params = CertificateRevocationListParams {
        this_update: now - Duration::minutes(5),
        next_update: now + Duration::days(days.into()),
        crl_number: SerialNumber::from(number.to_be_bytes().to_vec()),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, key)?;
    let crl = params.signed_by(&issuer)?;
    certs::replace(&crl_path, &crl.pem()?, 0o644)?;
    Ok(crl_path)
}

fn entry(serial: &[u8], at: OffsetDateTime) -> RevokedCertParams {
    RevokedCertParams {
        serial_number: SerialNumber::from(serial.to_vec()),
        revocation_time: at,
        reason_code: Some(RevocationReason::KeyCompromise),
        invalidity_date: None,
    }
}
