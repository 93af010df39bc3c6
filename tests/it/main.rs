//! The integration tests: one binary (linked once, as ripgrep's tests/tests.rs), a module per topic.
//! Server tests start the real `wharf` binary (both I/O drivers, via `on_both_drivers!`), real
//! clients and real TLS; `common` holds the harness.

#[macro_use]
mod common;

mod access;
mod cli;
mod conformance;
mod dist;
mod docs;
mod durability;
mod e2e_access;
mod e2e_clients;
mod e2e_docker;
mod e2e_tls;
mod faults;
mod fuzz_corpus;
mod gc;
mod http_layer;
mod limits;
mod listeners;
mod metrics;
mod mirror;
mod mirror_upstreams;
mod ranges;
mod registry_api;
mod reload;
mod revocation;
mod s3;
mod s3_credentials;
mod s3_encryption;
mod s3_gc;
mod s3_lost_answers;
mod scale_out;
mod security;
mod storage_io;
mod structure;
mod switches;
mod tls;
mod tls_config;
mod token;
