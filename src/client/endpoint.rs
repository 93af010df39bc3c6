//! Where a request goes: the `Endpoint` (address, `Host`, timeouts, TLS), built from a URL, its host
//! resolved on the blocking pool.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Where requests go and how long each step may take.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub addr: SocketAddr,
    /// The `Host` header (`host[:port]`).
    pub host: String,
    pub connect_timeout: Duration,
    /// Longest wait for any read or write once connected.
    pub io_timeout: Duration,
    /// TLS towards the endpoint: the client configuration (trusted roots) and the name its
    /// certificate must carry. `None`: plain TCP.
    pub tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls_pki_types::ServerName<'static>,
    )>,
}

/// The endpoint for `url`, its address from `resolve(host, port)`.
pub fn endpoint(
    url: &url::Url,
    timeout: Duration,
    tls: Option<Arc<rustls::ClientConfig>>,
    resolve: impl FnOnce(&str, u16) -> Result<SocketAddr, String>,
) -> Result<Endpoint, String> {
    let host = url.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let port = url.port_or_known_default().unwrap_or(80);
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let tls = match tls {
        Some(config) => {
            let name = rustls_pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|e| format!("{url}: {e}"))?;
            Some((config, name))
        }
        None => None,
    };
    Ok(Endpoint {
        addr: resolve(bare, port)?,
        host: match url.port() {
            Some(p) => format!("{host}:{p}"),
            None => host.to_owned(),
        },
        connect_timeout: timeout,
        io_timeout: timeout,
        tls,
    })
}

/// The first address of `host` (a bare IPv6 literal or a name) at `port`, from the system
/// resolver: blocking, so for startup and threads that are not workers.
pub fn resolve_now(host: &str, port: u16) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs as _;
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("{host}: {e}"))?
        .next()
        .ok_or_else(|| format!("{host}: no address"))
}

/// The address of `url`'s host, resolved on the blocking pool (the system resolver blocks).
pub async fn resolve(url: &url::Url) -> Result<SocketAddr, String> {
    let host = url.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let lookup = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(80);
    crate::blocking::run(move || resolve_now(&lookup, port))
        .await
        .map_err(|e| e.to_string())?
}
