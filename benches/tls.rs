//! TLS costs on one core: full and resumed mutual-TLS handshakes (client and server in memory, so
//! both sides' CPU is counted), record encryption of a 256 KiB file block, and client-identity
//! extraction (cache hit vs x509 parse). Run: `cargo bench --bench tls`; results in docs/performance.md.

use std::sync::Arc;

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, ServerConfig, ServerConnection};
use wharf::config::{ClientAuth, TlsConfig};
use wharf::tls::{certs, identity, material};

struct Pki {
    server: Arc<ServerConfig>,
    client_full: Arc<ClientConfig>,
    client_resume: Arc<ClientConfig>,
    client_leaf: Vec<u8>,
    _dir: tempfile::TempDir,
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let ca = certs::new_ca("bench CA", 30).unwrap();
    certs::write_pair(dir.path(), "ca", &ca).unwrap();
    let server = certs::server(&ca, &["localhost".into()], &[], 30).unwrap();
    certs::write_pair(dir.path(), "server", &server).unwrap();
    let client = certs::client(&ca, "build-server", &["Infrastructure".into()], 30).unwrap();
    let server_cfg = material::build(&TlsConfig {
        server_certificate_bundle: dir.path().join("server.crt"),
        server_private_key: dir.path().join("server.key"),
        client_ca_bundle: Some(dir.path().join("ca.crt")),
        client_auth: ClientAuth::Required,
        client_crl: Vec::new(),
    })
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap())
        .unwrap();
    let leaf = CertificateDer::from_pem_slice(client.cert_pem.as_bytes()).unwrap();
    let make = |resume: bool| {
        let mut c = ClientConfig::builder_with_provider(material::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(
                vec![leaf.clone()],
                PrivateKeyDer::from_pem_slice(client.key_pem.as_bytes()).unwrap(),
            )
            .unwrap();
        if !resume {
            c.resumption = rustls::client::Resumption::disabled();
        }
        Arc::new(c)
    };
    Pki {
        server: server_cfg,
        client_full: make(false),
        client_resume: make(true),
        client_leaf: leaf.to_vec(),
        _dir: dir,
    }
}

/// Move everything `from` wants to send into `to`.
fn pump(from: &mut dyn FnMut(&mut Vec<u8>) -> bool, to: &mut dyn FnMut(&[u8])) {
    let mut buf = Vec::new();
    while from(&mut buf) {}
    if !buf.is_empty() {
        to(&buf);
    }
}

/// One complete handshake in memory, including the session tickets sent after it.
fn connect(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
) -> (ClientConnection, ServerConnection) {
    let name = ServerName::try_from("localhost").unwrap();
    let mut c = ClientConnection::new(Arc::clone(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
    for _ in 0..10 {
        pump(
            &mut |b| c.wants_write() && c.write_tls(b).unwrap() > 0,
            &mut |d| {
                let mut d = d;
                while !d.is_empty() {
                    s.read_tls(&mut d).unwrap();
                    s.process_new_packets().unwrap();
                }
            },
        );
        pump(
            &mut |b| s.wants_write() && s.write_tls(b).unwrap() > 0,
            &mut |d| {
                let mut d = d;
                while !d.is_empty() {
                    c.read_tls(&mut d).unwrap();
                    c.process_new_packets().unwrap();
                }
            },
        );
        if !c.is_handshaking() && !s.is_handshaking() && !c.wants_write() && !s.wants_write() {
            break;
        }
    }
    assert!(s.peer_certificates().is_some());
    (c, s)
}

/// Whether a fresh handshake was resumed.
fn handshake(server: &Arc<ServerConfig>, client: &Arc<ClientConfig>) -> bool {
    connect(server, client).1.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

fn bench_handshakes(c: &mut Criterion) {
    let p = pki();
    let mut g = c.benchmark_group("tls_handshake");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mtls_full_ecdsa_p256", |b| {
        b.iter(|| assert!(!handshake(&p.server, &p.client_full)))
    });
    handshake(&p.server, &p.client_resume);
    g.bench_function("mtls_resumed", |b| {
        b.iter(|| assert!(handshake(&p.server, &p.client_resume)))
    });
    g.finish();

    let mut g = c.benchmark_group("tls_identity");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_leaf", |b| {
        b.iter(|| identity::parse(black_box(&p.client_leaf)).unwrap())
    });
    g.bench_function("cached_by_leaf_hash", |b| {
        b.iter(|| identity::of_leaf(black_box(&p.client_leaf)).unwrap())
    });
    g.finish();
}

fn bench_records(c: &mut Criterion) {
    // What a download over TLS costs per 256 KiB block: encrypt into records and take them out.
    let p = pki();
    let (_client, mut sv) = connect(&p.server, &p.client_full);
    sv.set_buffer_limit(None);
    let block = vec![7u8; 256 * 1024];
    let mut out = Vec::with_capacity(300 * 1024);
    let mut g = c.benchmark_group("tls_records");
    g.throughput(Throughput::Bytes(block.len() as u64));
    g.bench_function("encrypt_256k_block", |b| {
        b.iter(|| {
            use std::io::Write;
            sv.writer().write_all(black_box(&block)).unwrap();
            out.clear();
            while sv.wants_write() {
                sv.write_tls(&mut out).unwrap();
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench_handshakes, bench_records);
criterion_main!(benches);
