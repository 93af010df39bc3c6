//! TLS termination with rustls: the configured PEM files turned into a server config (`material`),
//! reloaded on SIGHUP or when a file changes (`reload`), the client-certificate identity and its
//! per-thread cache (`identity`), and the `wharf cert` / `wharf check-tls` helpers (`certs`,
//! `lifecycle` for renewal and revocation, `check`). The TLS byte stream itself is transport: `net::tls`.

pub mod certs;
pub mod check;
pub mod identity;
pub mod lifecycle;
pub mod material;
pub mod reload;

pub use identity::CertIdentity;
pub use material::{ClientIdentity, TlsError, client_config, client_config_with};
pub use reload::{Acceptor, Reloader};
