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
    assert!(id.common_names.is_empty() && id.organizations.is_empty());
}

/// Serial, fingerprint, issuer, SANs and expiry, as rules name them.
#[test]
fn serial_fingerprint_issuer_sans_and_expiry() {
    let mut p = CertificateParams::new(vec!["r1.build.example.org".to_owned()]).unwrap();
    p.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://example.org/ci".try_into().unwrap(),
    ));
    p.subject_alt_names.push(rcgen::SanType::Rfc822Name(
        "ci@example.org".try_into().unwrap(),
    ));
    p.serial_number = Some(vec![0x00, 0x8f, 0x01].into());
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name.push(DnType::CommonName, "CI CA");
    p.not_after = rcgen::date_time_ymd(2040, 1, 2);
    let key = KeyPair::generate().unwrap();
    let der = p.self_signed(&key).unwrap().der().to_vec();
    let id = parse(&der).unwrap();
    // The DER sign byte is not part of the number.
    assert_eq!(id.serial, "8f01");
    assert_eq!(id.fingerprint, hex(&Sha256::digest(&der)));
    assert_eq!(id.fingerprint.len(), 64);
    assert_eq!(id.issuer, "CN=CI CA");
    assert_eq!(id.uris, ["spiffe://example.org/ci"]);
    assert_eq!(id.dns_names, ["r1.build.example.org"]);
    assert_eq!(id.emails, ["ci@example.org"]);
    assert_eq!(id.not_after, 2_209_075_200);
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
