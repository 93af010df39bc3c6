//! systemd readiness (`Type=notify`): `READY=1` once every listener is bound, `RELOADING=1`/
//! `READY=1` around a reload, `STOPPING=1` at shutdown. Without `NOTIFY_SOCKET` nothing is sent.

use std::os::unix::net::UnixDatagram;

/// Send one notification to `$NOTIFY_SOCKET` (a path, or `@name` for an abstract socket).
pub(crate) fn notify(state: &str) {
    let Some(target) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = target.as_encoded_bytes();
    let sent = if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &target)
    };
    if let Err(e) = sent {
        tracing::warn!("cannot notify systemd ({}): {e}", target.to_string_lossy());
    }
}
