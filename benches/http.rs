//! Hot-path micro-benchmarks: request-head parsing, chunked decoding, SHA-256 of upload bodies, routing,
//! and the per-request metrics and rate-limit bookkeeping.
//! Run: `cargo bench --bench http`. Results are recorded in docs/performance.md.

use criterion::{Criterion, Throughput, black_box, criterion_group, criterion_main};
use wharf::http::chunked::decode_all;
use wharf::http::{Limits, Method, head};
use wharf::oci::{Algorithm, Digest};
use wharf::registry::route;

const GET_BLOB: &[u8] = b"GET /v2/library/alpine/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 HTTP/1.1\r\n\
Host: registry.example.com:5000\r\nUser-Agent: containerd/v1.7.0\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\
Accept-Encoding: gzip\r\nAuthorization: Basic dXNlcjpwYXNzd29yZA==\r\nConnection: keep-alive\r\n\r\n";

fn bench_head(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("http_head");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_blob_get", |b| {
        b.iter(|| head::parse(black_box(GET_BLOB), &limits).unwrap().unwrap())
    });
    g.bench_function("route_blob_get", |b| {
        b.iter(|| {
            route(
                Method::Get,
                black_box("/v2/library/alpine/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
                "",
            )
            .unwrap()
        })
    });
    g.finish();
}

fn bench_chunked(c: &mut Criterion) {
    // 4 MiB of data in 64 KiB chunks, as `docker push` streams them.
    let chunk = vec![b'x'; 64 * 1024];
    let mut body = Vec::new();
    for _ in 0..64 {
        body.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(b"0\r\n\r\n");
    let mut g = c.benchmark_group("chunked");
    g.throughput(Throughput::Bytes(64 * chunk.len() as u64));
    g.bench_function("decode_4MiB_in_64KiB_chunks", |b| {
        b.iter(|| decode_all(black_box(&body)).unwrap())
    });
    g.finish();
}

fn bench_sha256(c: &mut Criterion) {
    let data = vec![0xa5u8; 64 * 1024 * 1024];
    let mut g = c.benchmark_group("digest");
    g.throughput(Throughput::Bytes(data.len() as u64));
    g.sample_size(10);
    g.bench_function("sha256_64MiB", |b| {
        b.iter(|| Digest::of(Algorithm::Sha256, black_box(&data)))
    });
    g.finish();
}

/// What every request adds around its handler: metrics counting and (when configured) the rate check.
fn bench_per_request(c: &mut Criterion) {
    use std::time::Duration;
    let metrics = wharf::metrics::Metrics::default();
    let worker = metrics.worker();
    let rates = wharf::server::limits::RateLimits::new(&wharf::config::LimitsConfig {
        read_rps: 1e9,
        write_rps: 0.0,
        burst: 0,
        max_connections: 0,
        ..Default::default()
    });
    let ip: std::net::IpAddr = "192.0.2.7".parse().unwrap();
    let mut g = c.benchmark_group("per_request");
    g.bench_function("metrics_request", |b| {
        b.iter(|| {
            worker.request(
                black_box(Some(1)),
                black_box(200),
                Duration::from_micros(120),
                4096,
            )
        })
    });
    g.bench_function("rate_limit_check", |b| {
        b.iter(|| rates.check(black_box(ip), wharf::server::limits::Class::Read))
    });
    g.finish();
}

criterion_group!(
    benches,
    bench_head,
    bench_chunked,
    bench_sha256,
    bench_per_request
);
criterion_main!(benches);
