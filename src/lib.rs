//! wharf: an OCI Distribution v1.1 registry on thread-per-core monoio.
//! Module map and data flow: docs/architecture.md.
#![deny(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]
#![warn(unreachable_pub)]

pub mod action;
pub mod auth;
pub mod blocking;
pub mod client;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod histogram;
pub mod hits;
pub mod http;
pub mod logq;
pub mod metrics;
pub mod mirror;
pub mod net;
pub mod oci;
pub mod policy;
pub mod registry;
pub mod reload;
pub mod server;
pub mod storage;
#[allow(unsafe_code)]
pub mod sys;
pub mod task;
pub mod tls;
pub mod token;

/// Whether this build has the test-only fault hooks.
pub const FAULT_HOOKS: bool = cfg!(feature = "fault-hooks");
