//! The identity a verified client certificate gives: the leaf's subject Common Names and
//! Organizations, serial, fingerprint, issuer, subject alternative names and expiry. Parsed with x509-parser once per distinct certificate: a per-thread cache keyed by
//! the SHA-256 of the leaf's DER serves reconnects and resumed sessions without parsing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

/// Distinct client certificates remembered per worker thread.
pub const CACHE_MAX: usize = 4096;

/// What policies see of a client certificate (`identity.certificate.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Every subject CN, in certificate order, as UTF-8.
    pub common_names: Vec<String>,
    /// Every subject O, in certificate order, as UTF-8.
    pub organizations: Vec<String>,
    /// The serial number in lower-case hex, without the DER sign byte
    /// (`openssl x509 -noout -serial`, lower-cased).
    pub serial: String,
    /// SHA-256 of the certificate's DER in lower-case hex
    /// (`openssl x509 -outform der | sha256sum`).
    pub fingerprint: String,
    /// The issuer's distinguished name (`CN=wharf client CA, O=...`).
    pub issuer: String,
    /// Subject alternative names by kind, in certificate order: URIs (SPIFFE IDs), DNS names, e-mails.
    pub uris: Vec<String>,
    pub dns_names: Vec<String>,
    pub emails: Vec<String>,
    /// notAfter, seconds since the Unix epoch.
    pub not_after: i64,
}

/// Why a certificate's subject could not be read.
#[derive(Debug, thiserror::Error)]
#[error("client certificate cannot be parsed: {0}")]
pub struct IdentityError(String);

thread_local! {
    static CACHE: RefCell<HashMap<[u8; 32], Rc<CertIdentity>>> = RefCell::new(HashMap::new());
    static PARSED: Cell<u64> = const { Cell::new(0) };
}

/// Leaves found in a worker's cache or parsed, all workers.
static LOOKUPS: crate::hits::Counts = crate::hits::Counts::new();

/// (hits, misses) of the per-worker caches of client certificates.
pub fn cache_counts() -> (u64, u64) {
    LOOKUPS.get()
}

/// The identity of a leaf certificate (DER), from this thread's cache or parsed once.
pub fn of_leaf(der: &[u8]) -> Result<Rc<CertIdentity>, IdentityError> {
    let key: [u8; 32] = Sha256::digest(der).into();
    if let Some(hit) = LOOKUPS.count(CACHE.with(|c| c.borrow().get(&key).cloned())) {
        return Ok(hit);
    }
    let id = Rc::new(parse(der)?);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.len() >= CACHE_MAX {
            // Certificates churn slowly; starting over is simpler than LRU and bounded.
            c.clear();
        }
        c.insert(key, Rc::clone(&id));
    });
    Ok(id)
}

/// How many certificates this thread has parsed (the cache's misses).
pub fn parsed_on_this_thread() -> u64 {
    PARSED.with(Cell::get)
}

/// Parse a DER certificate's subject CNs and Os.
pub fn parse(der: &[u8]) -> Result<CertIdentity, IdentityError> {
    PARSED.with(|p| p.set(p.get() + 1));
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| IdentityError(e.to_string()))?;
    let subject = cert.subject();
    let serial = cert.raw_serial();
    // DER integers carry a leading zero byte when the high bit is set; the number is the rest.
    let serial = match serial {
        [0, rest @ ..] if !rest.is_empty() => rest,
        s => s,
    };
    let (mut uris, mut dns_names, mut emails) = (Vec::new(), Vec::new(), Vec::new());
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError(format!("subjectAltName: {e}")))?;
    for name in san.iter().flat_map(|s| &s.value.general_names) {
        use x509_parser::extensions::GeneralName;
        match name {
            GeneralName::URI(u) => uris.push((*u).to_owned()),
            GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
            GeneralName::RFC822Name(e) => emails.push((*e).to_owned()),
            _ => {}
        }
    }
    Ok(CertIdentity {
        common_names: subject.iter_common_name().map(text).collect(),
        organizations: subject.iter_organization().map(text).collect(),
        serial: hex(serial),
        fingerprint: hex(&Sha256::digest(der)),
        issuer: cert.issuer().to_string(),
        uris,
        dns_names,
        emails,
        not_after: cert.validity().not_after.timestamp(),
    })
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// An attribute value as UTF-8, whatever its ASN.1 string type; invalid sequences become U+FFFD.
fn text(attr: &AttributeTypeAndValue) -> String {
    let value = attr.attr_value();
    let data = value.data;
    match value.tag() {
        // Latin-1 is the usual reading of T61 in certificates.
        Tag::TeletexString => data.iter().map(|&b| b as char).collect(),
        Tag::BmpString => {
            let units = data
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            char::decode_utf16(units)
                .map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
                .collect()
        }
        Tag::UniversalString => data
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                char::from_u32(u32::from_be_bytes(b)).unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        _ => String::from_utf8_lossy(data).into_owned(),
    }
}

#[cfg(test)]
mod tests;
