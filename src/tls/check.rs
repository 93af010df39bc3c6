//! `wharf check-tls`: look at the configured files the way a client will. Key matches certificate,
//! chain order, validity (warning under 14 days), serverAuth usage, SANs covering the host names,
//! and the client CA bundle.

use std::net::IpAddr;
use std::path::Path;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::material::{self, CA_KEY, CERT_KEY};
use crate::config::TlsConfig;

/// Certificates expiring sooner than this get a warning.
const WARN_DAYS: i64 = 14;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok,
    Warning,
    Error,
}

/// What the check found, line by line.
#[derive(Debug, Default)]
pub struct Report {
    pub findings: Vec<(Level, String)>,
}

impl Report {
    fn push(&mut self, level: Level, msg: impl Into<String>) {
        self.findings.push((level, msg.into()));
    }

    pub fn has_errors(&self) -> bool {
        self.findings.iter().any(|(l, _)| *l == Level::Error)
    }
}

/// Check `cfg`'s files; `hosts` are the names (or IPs) clients use to reach the server.
pub fn check(cfg: &TlsConfig, hosts: &[String]) -> Report {
    let mut r = Report::default();
    match material::build(cfg) {
        Ok(_) => r.push(
            Level::Ok,
            "certificate, key and client CAs load; the key matches the first certificate",
        ),
        Err(e) => r.push(Level::Error, e.to_string()),
    }
    if let Ok(chain) = material::read_certs(CERT_KEY, &cfg.server_certificate_bundle) {
        check_chain(&mut r, &cfg.server_certificate_bundle, &chain, hosts);
    }
    if let Some(ca) = &cfg.client_ca_bundle
        && let Ok(cas) = material::read_certs(CA_KEY, ca)
    {
        for (i, der) in cas.iter().enumerate() {
            let what = format!("{CA_KEY} #{}", i + 1);
            match X509Certificate::from_der(der) {
                Ok((_, c)) => {
                    validity(&mut r, &what, &c);
                    if !c.is_ca() {
                        r.push(
                            Level::Warning,
                            format!("{what} ({}) is not a CA certificate", c.subject()),
                        );
                    }
                }
                Err(e) => r.push(Level::Error, format!("{what}: cannot parse: {e}")),
            }
        }
    }
    r
}

fn check_chain(
    r: &mut Report,
    path: &Path,
    chain: &[rustls_pki_types::CertificateDer<'static>],
    hosts: &[String],
) {
    let parsed: Vec<_> = chain
        .iter()
        .enumerate()
        .filter_map(|(i, der)| match X509Certificate::from_der(der) {
            Ok((_, c)) => Some(c),
            Err(e) => {
                r.push(
                    Level::Error,
                    format!(
                        "{CERT_KEY} {} #{}: cannot parse: {e}",
                        path.display(),
                        i + 1
                    ),
                );
                None
            }
        })
        .collect();
    if parsed.len() != chain.len() {
        return;
    }
    for (i, c) in parsed.iter().enumerate() {
        validity(r, &format!("{CERT_KEY} #{} ({})", i + 1, c.subject()), c);
    }
    // Leaf first, then each certificate's issuer.
    for (i, pair) in parsed.windows(2).enumerate() {
        let (child, parent) = (&pair[0], &pair[1]);
        let signed = child.issuer() == parent.subject()
            && child.verify_signature(Some(parent.public_key())).is_ok();
        if signed {
            r.push(
                Level::Ok,
                format!(
                    "chain: #{} is issued by #{} ({})",
                    i + 1,
                    i + 2,
                    parent.subject()
                ),
            );
        } else {
            r.push(
                Level::Error,
                format!(
                    "chain order: #{} ({}) is not issued by #{} ({}); put the server certificate first, then each issuer",
                    i + 1,
                    child.subject(),
                    i + 2,
                    parent.subject()
                ),
            );
        }
    }
    let leaf = &parsed[0];
    if leaf.is_ca() {
        r.push(
            Level::Error,
            format!(
                "#1 ({}) is a CA certificate, not a server certificate; the leaf must come first",
                leaf.subject()
            ),
        );
    }
    match leaf.extended_key_usage() {
        Ok(Some(eku)) if !(eku.value.server_auth || eku.value.any) => r.push(
            Level::Error,
            "the server certificate's extended key usage lacks serverAuth; clients will reject it",
        ),
        Err(e) => r.push(Level::Error, format!("extended key usage: {e}")),
        _ => {}
    }
    sans(r, leaf, hosts);
}

fn validity(r: &mut Report, what: &str, c: &X509Certificate) {
    let v = c.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now < v.not_before {
        r.push(
            Level::Error,
            format!("{what} is not valid before {}", v.not_before),
        );
    } else if now > v.not_after {
        r.push(Level::Error, format!("{what} expired on {}", v.not_after));
    } else {
        let left = v.time_to_expiration().map_or(0, |d| d.whole_days());
        let level = if left < WARN_DAYS {
            Level::Warning
        } else {
            Level::Ok
        };
        r.push(
            level,
            format!("{what} is valid until {} ({left} days left)", v.not_after),
        );
    }
}

fn sans(r: &mut Report, leaf: &X509Certificate, hosts: &[String]) {
    let names = match leaf.subject_alternative_name() {
        Ok(Some(ext)) => ext.value.general_names.clone(),
        Ok(None) => {
            r.push(
                Level::Error,
                "the server certificate has no subjectAltName; clients ignore the CN and will reject it",
            );
            return;
        }
        Err(e) => {
            r.push(Level::Error, format!("subjectAltName: {e}"));
            return;
        }
    };
    for host in hosts {
        let covered = names.iter().any(|n| match (n, host.parse::<IpAddr>()) {
            (GeneralName::IPAddress(b), Ok(ip)) => ip_bytes(ip) == *b,
            (GeneralName::DNSName(d), Err(_)) => dns_matches(d, host),
            _ => false,
        });
        if covered {
            r.push(Level::Ok, format!("subjectAltName covers {host}"));
        } else {
            r.push(
                Level::Error,
                format!(
                    "subjectAltName does not cover {host} (clients connecting to it will fail)"
                ),
            );
        }
    }
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// RFC 6125 matching: case-insensitive, a leading `*.` matches exactly one label.
fn dns_matches(pattern: &str, host: &str) -> bool {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match p.strip_prefix("*.") {
        Some(rest) => h
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => p == h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_one_label() {
        assert!(dns_matches("*.example.com", "registry.example.com"));
        assert!(dns_matches("Registry.Example.com", "registry.example.COM"));
        assert!(!dns_matches("*.example.com", "a.b.example.com"));
        assert!(!dns_matches("*.example.com", "example.com"));
        assert!(!dns_matches("registry.example.com", "other.example.com"));
    }
}
