//! The identity a verified client certificate gives: the leaf's subject Common Names and
//! Organizations. Parsed with x509-parser once per distinct certificate: a per-thread cache keyed by
//! the SHA-256 of the leaf's DER serves reconnects and resumed sessions without parsing.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use sha2::{Digest, Sha256};
use x509_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::x509::AttributeTypeAndValue;

/// Distinct client certificates remembered per worker thread.
const CACHE_MAX: usize = 4096;

/// What policies see of a client certificate (`identity.certificate.*`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CertIdentity {
    /// Every subject CN, in certificate order, as UTF-8.
    pub common_names: Vec<String>,
    /// Every subject O, in certificate order, as UTF-8.
    pub organizations: Vec<String>,
}

/// Why a certificate's subject could not be read.
#[derive(Debug, thiserror::Error)]
#[error("client certificate cannot be parsed: {0}")]
pub struct IdentityError(String);

thread_local! {
    static CACHE: RefCell<HashMap<[u8; 32], Rc<CertIdentity>>> = RefCell::new(HashMap::new());
    static PARSED: Cell<u64> = const { Cell::new(0) };
}

/// The identity of a leaf certificate (DER), from this thread's cache or parsed once.
pub fn of_leaf(der: &[u8]) -> Result<Rc<CertIdentity>, IdentityError> {
    let key: [u8; 32] = Sha256::digest(der).into();
    if let Some(hit) = CACHE.with(|c| c.borrow().get(&key).cloned()) {
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
    Ok(CertIdentity {
        common_names: subject.iter_common_name().map(text).collect(),
        organizations: subject.iter_organization().map(text).collect(),
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
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, DnValue, KeyPair};

    fn cert(entries: &[(DnType, DnValue)]) -> Vec<u8> {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        for (t, v) in entries {
            p.distinguished_name.push(t.clone(), v.clone());
        }
        let key = KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    const CN: &[u64] = &[2, 5, 4, 3];
    const O: &[u64] = &[2, 5, 4, 10];

    #[test]
    fn several_common_names_and_organizations_in_order() {
        // rcgen keeps one value per type; a custom type with the CN/O OID adds a second one.
        let der = cert(&[
            (
                DnType::CommonName,
                DnValue::Utf8String("build-server".into()),
            ),
            (
                DnType::CustomDnType(CN.to_vec()),
                DnValue::PrintableString("ci-2".try_into().unwrap()),
            ),
            (
                DnType::OrganizationName,
                DnValue::Utf8String("Infrastructure".into()),
            ),
            (
                DnType::CustomDnType(O.to_vec()),
                DnValue::Utf8String("DevOps".into()),
            ),
        ]);
        let id = parse(&der).unwrap();
        assert_eq!(id.common_names, ["build-server", "ci-2"]);
        assert_eq!(id.organizations, ["Infrastructure", "DevOps"]);
    }

    #[test]
    fn non_utf8_string_types_become_utf8() {
        let der = cert(&[
            (
                DnType::CommonName,
                DnValue::BmpString("Zürich-Ω".try_into().unwrap()),
            ),
            (
                DnType::OrganizationName,
                DnValue::TeletexString("Acme Ltd".try_into().unwrap()),
            ),
            (
                DnType::CustomDnType(O.to_vec()),
                DnValue::UniversalString("naïve 🚢".try_into().unwrap()),
            ),
        ]);
        let id = parse(&der).unwrap();
        assert_eq!(id.common_names, ["Zürich-Ω"]);
        assert_eq!(id.organizations, ["Acme Ltd", "naïve 🚢"]);
    }

    #[test]
    fn no_subject_gives_empty_lists() {
        let id = parse(&cert(&[])).unwrap();
        assert_eq!(id, CertIdentity::default());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(parse(b"\x30\x03\x02\x01").is_err());
        assert!(parse(b"").is_err());
    }

    #[test]
    fn a_certificate_is_parsed_once_per_thread() {
        let der = cert(&[(DnType::CommonName, DnValue::Utf8String("cached".into()))]);
        let before = parsed_on_this_thread();
        let a = of_leaf(&der).unwrap();
        let b = of_leaf(&der).unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        assert_eq!(parsed_on_this_thread() - before, 1);
        assert_eq!(a.common_names, ["cached"]);
    }
}
