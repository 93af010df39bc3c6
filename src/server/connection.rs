//! One connection: the TLS handshake and client identity when the listener has TLS, then the
//! request loop (head → route/handle → response) with keep-alive, pipelining, draining or closing
//! after unread bodies, and one access-log line per request.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::gate::{self, Client};
use super::idle::Evict;
use super::limits::{Refusal, Slot};
use super::{App, Listener, Local};
use crate::action::Action;
use crate::http::conn::{NextRequest, Transport};
use crate::http::{Conn, Method, Response};
use crate::metrics::{Defence, Handshake};
use crate::net::tls::{HandshakeError, TlsStream};
use crate::oci::{ErrorKind, OciError};
use crate::policy::Peer;
use crate::registry::error_response;
use crate::tls::{CertIdentity, identity};

/// Serve one connection accepted on `listener` (spawned with `task::spawn_connection`: a panic
/// ends only this connection). `_slot` holds its place under `limits.max_connections` until it
/// closes.
pub(crate) async fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    local: Rc<Local>,
    listener: Rc<Listener>,
    _slot: Slot,
) {
    let _tracked = local.shutdown.track();
    local.metrics.connection_opened(listener.index);
    let _open = Closed(&local.metrics, listener.index);
    connect(stream, peer, app, &local, listener).await
}

/// Counts the connection closed however `serve` ends.
struct Closed<'a>(&'a crate::metrics::Worker, usize);

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        self.0.connection_closed(self.1);
    }
}

/// A connection over `limits.max_connections` or `max_connections_per_client`: plain HTTP gets a
/// 503 with `Retry-After` (without reading its request), TLS is closed (answering would need a
/// handshake).
pub(crate) async fn over_capacity(
    stream: TcpStream,
    peer: SocketAddr,
    refusal: Refusal,
    local: Rc<Local>,
    listener: Rc<Listener>,
) {
    let n = local.refused.get() + 1;
    local.refused.set(n);
    let (key, message) = match refusal {
        Refusal::Global => (
            "limits.max_connections",
            "too many open connections, retry later",
        ),
        Refusal::Client => (
            "limits.max_connections_per_client",
            "too many open connections from this client address, close some and retry",
        ),
    };
    if n % 1000 == 1 {
        tracing::warn!("{key} reached: refusing {peer} ({n} refused by this worker so far)");
    }
    if listener.tls.is_some() {
        return;
    }
    let mut conn = Conn::new(Transport::Plain(stream), Rc::clone(&local.limits));
    let e = OciError::new(ErrorKind::OverCapacity, message);
    let _ = conn.send(error_response(e), false, true).await;
    conn.linger().await;
}

/// Answer a head we will not serve with an OCI error body (clients print its message), then close.
async fn refuse(mut conn: Conn, status: u16, message: String) {
    let body = crate::oci::error_json("UNSUPPORTED", &message);
    let resp = Response::new(status).bytes("application/json", body);
    let _ = conn.send(resp, false, true).await;
    conn.linger().await;
}

/// Establish the transport (TLS handshake, client identity), then serve requests on it.
async fn connect(
    stream: TcpStream,
    peer: SocketAddr,
    app: Arc<App>,
    local: &Local,
    listener: Rc<Listener>,
) {
    let limits = Rc::clone(&local.limits);
    let Some(tls) = &listener.tls else {
        let conn = Conn::new(Transport::Plain(stream), limits);
        return requests(conn, peer, None, 0, &app, local, listener).await;
    };
    // Read before the material the handshake uses: a reload in between costs one re-check later.
    let generation = tls.generation();
    let tls = match TlsStream::accept(stream, tls.config(), app.limits.head_timeout).await {
        Ok(t) => t,
        // `_tcp` lives to the end of this arm: the failure is counted before the peer sees the close.
        Err((e, _tcp)) => {
            let why = failure(&e);
            local.metrics.handshake(listener.index, why);
            tracing::info!(
                target: "wharf::tls",
                "TLS handshake with {peer} on listener '{}' failed ({}): {e}",
                listener.name,
                why.reason()
            );
            return;
        }
    };
    let done = if tls.resumed() {
        Handshake::Resumed
    } else {
        Handshake::Full
    };
    local.metrics.handshake(listener.index, done);
    let cert = match tls.client_leaf().map(identity::of_leaf).transpose() {
        Ok(c) => c,
        Err(e) => {
            // The certificate verified but its subject cannot be read: refuse rather than guess.
            tracing::warn!(target: "wharf::tls", "closing TLS connection from {peer}: {e}");
            return;
        }
    };
    tracing::debug!(
        target: "wharf::tls",
        "TLS from {peer}: {}{}, client certificate {:?}",
        tls.version(),
        if tls.resumed() { " resumed" } else { "" },
        cert.as_deref()
    );
    let conn = Conn::new(Transport::Tls(Box::new(tls)), limits);
    requests(conn, peer, cert, generation, &app, local, listener).await
}

/// Why a handshake failed, as the metrics and the log tell it: no certificate, an unknown
/// issuer, expired and revoked are told apart because each has a different fix.
fn failure(e: &HandshakeError) -> Handshake {
    use rustls::{CertificateError as C, Error as E};
    match e {
        HandshakeError::PlainHttp => Handshake::PlainHttp,
        HandshakeError::Tls(E::NoCertificatesPresented) => Handshake::NoCertificate,
        HandshakeError::Tls(E::InvalidCertificate(c)) => match c {
            C::UnknownIssuer => Handshake::UnknownIssuer,
            C::Expired
            | C::ExpiredContext { .. }
            | C::NotValidYet
            | C::NotValidYetContext { .. } => Handshake::Expired,
            C::Revoked | C::UnknownRevocationStatus => Handshake::Revoked,
            _ => Handshake::BadCertificate,
        },
        _ => Handshake::Other,
    }
}

/// Whether a TLS connection's client certificate still verifies after the listener's material
/// was reloaded since `seen` (new client CAs): checked once per reload, before the next request.
fn certificate_still_valid(conn: &Conn, listener: &Listener, seen: &mut u64) -> bool {
    let (Some(acceptor), Some(chain)) = (&listener.tls, conn.client_chain()) else {
        return true;
    };
    let now = acceptor.generation();
    if now == *seen {
        return true;
    }
    *seen = now;
    acceptor.still_verifies(chain)
}

/// `/metrics`, `/healthz`, `/readyz`.
async fn admin(app: &App, action: &Action) -> Response {
    match action {
        Action::GetMetrics => {
            let mut text = app.metrics.render(app.registry.storage().open_uploads());
            tls_expiries(app, &mut text);
            crate::token::render(&mut text);
            Response::new(200).bytes("text/plain; version=0.0.4", text.into_bytes())
        }
        Action::GetReady if !app.registry.storage().writable().await => {
            Response::new(503).bytes("text/plain", b"storage is not writable\n".to_vec())
        }
        Action::GetReady => Response::new(200).bytes("text/plain", b"ready\n".to_vec()),
        _ => Response::new(200).bytes("text/plain", b"ok\n".to_vec()),
    }
}

/// `wharf_tls_certificate_expiry_timestamp_seconds` of every TLS listener's material in use.
fn tls_expiries(app: &App, out: &mut String) {
    use std::fmt::Write as _;
    out.push_str("# HELP wharf_tls_certificate_expiry_timestamp_seconds notAfter of each listener's server certificate and client CAs, Unix seconds.\n# TYPE wharf_tls_certificate_expiry_timestamp_seconds gauge\n");
    for l in &app.listeners {
        let Some(tls) = &l.tls else { continue };
        for (what, t) in tls.expiries() {
            let what = what.replace('\\', "\\\\").replace('"', "\\\"");
            let _ = writeln!(
                out,
                "wharf_tls_certificate_expiry_timestamp_seconds{{listener=\"{}\",certificate=\"{what}\"}} {t}",
                l.name
            );
        }
    }
}

/// The access log's user field: the certificate's first CN (escaped), or `-`.
fn user_field(cert: Option<&CertIdentity>) -> String {
    match cert.and_then(|c| c.common_names.first()) {
        Some(cn) => format!("{cn:?}"),
        None => "-".to_owned(),
    }
}

/// Serve requests on an established connection; `generation` is the listener's TLS material
/// generation the client certificate was verified under (0 for plain HTTP).
async fn requests(
    mut conn: Conn,
    peer: SocketAddr,
    cert: Option<Rc<CertIdentity>>,
    mut tls_generation: u64,
    app: &App,
    local: &Local,
    listener: Rc<Listener>,
) {
    let shutdown = &local.shutdown;
    let cert_user = user_field(cert.as_deref());
    let client = Client {
        addr: peer,
        peer: Peer::new(cert.as_deref(), peer.ip()),
        certificate: cert.clone(),
        listener,
    };
    let mut counted = 0;
    let evict = Rc::new(Evict::default());
    loop {
        let next = {
            let _idle = local.idle.enter(&evict);
            let stop = async {
                monoio::select! {
                    _ = shutdown.wait() => {},
                    _ = evict.wait() => {},
                }
            };
            conn.next_request(stop).await
        };
        let head = match next {
            NextRequest::Head(h) => h,
            NextRequest::Closed => return,
            NextRequest::Invalid(e) => {
                tracing::info!(target: "wharf::access", "{peer} {cert_user} - - {} 0 rejected head: {e} listener={}", e.status(), client.listener.name);
                return Box::pin(refuse(conn, e.status(), e.to_string())).await;
            }
            NextRequest::TimedOut => {
                let why =
                    "the request head did not arrive in time (server.http.head_timeout); retry";
                return Box::pin(refuse(conn, 408, why.into())).await;
            }
        };
        if !certificate_still_valid(&conn, &client.listener, &mut tls_generation) {
            local.metrics.defence(Defence::CertificateRevoked);
            tracing::info!(target: "wharf::tls", "closing TLS connection from {peer}: its client certificate no longer verifies after a reload");
            return;
        }
        #[cfg(feature = "fault-hooks")]
        crate::task::fault_hook(&head.path);
        // Boxed: a parked connection keeps only what waiting for its next head needs; admission,
        // handler and response state (~35 KiB inline) is allocated while a request runs.
        let exchange = exchange(
            &mut conn,
            &head,
            &client,
            &cert_user,
            app,
            local,
            &mut counted,
        );
        match Box::pin(exchange).await {
            After::NextRequest => {}
            After::Close => return,
            After::Linger => return Box::pin(conn.linger()).await,
        }
    }
}

/// What the connection does once a request is answered.
enum After {
    NextRequest,
    /// The response could not be sent: close at once.
    Close,
    /// Answered with `Connection: close`: close after the client had time to read it.
    Linger,
}

/// Admit, handle and answer one request whose head was read; log it and count it (`counted`:
/// bytes read up to the end of the previous request).
async fn exchange(
    conn: &mut Conn,
    head: &crate::http::RequestHead,
    client: &Client,
    cert_user: &str,
    app: &App,
    local: &Local,
    counted: &mut u64,
) -> After {
    let shutdown = &local.shutdown;
    let tls = client.listener.tls.is_some();
    let peer = client.addr;
    let started = Instant::now();
    local.metrics.request_started();
    let mut body = conn.body(head);
    let (live, credentials) = local.live.current(&app.live);
    // Refused for credentials or rate: answered, then closed, so a client cannot hold a
    // connection by failing (a client with credentials reconnects at once).
    let mut refused = false;
    // Admission and the handler are boxed too, and freed before the response is sent: a slow
    // client's download holds only the sending state, not theirs (~23 KiB).
    let admitted = Box::pin(gate::admit(
        &live,
        &credentials,
        local,
        &app.registry,
        client,
        head,
    ));
    let (resp, who, action) = match admitted.await {
        Ok(ok) if ok.action.is_admin() => (
            admin(app, &ok.action).await,
            ok.who.log_name(),
            Some(ok.action.index()),
        ),
        Ok(ok) if ok.action == Action::GetToken => {
            let answer = super::token::answer(&live, &credentials, client, head, &mut body);
            let (resp, who) = Box::pin(answer).await;
            refused = resp.status == 401 || resp.status == 429;
            (resp, who, Some(ok.action.index()))
        }
        Ok(ok) => {
            let index = ok.action.index();
            let handled = app.registry.handle(ok.action, head, &mut body, peer.ip());
            (Box::pin(handled).await, ok.who.log_name(), Some(index))
        }
        Err((e, who, action)) => {
            refused = matches!(e.kind, ErrorKind::Unauthenticated | ErrorKind::RateLimited);
            (error_response(e), who.log_name(), action)
        }
    };
    let mut resp = resp.header("Docker-Distribution-API-Version", "registry/2.0");
    if let Some(hsts) = live.hsts.as_ref().filter(|_| tls) {
        resp = resp.header("Strict-Transport-Security", hsts.clone());
    }
    // A body refused as too large is not read at all: answered, then closed.
    let refused = refused || resp.status == 413;
    let keep = body.keep_alive(head, refused, shutdown.fired()).await;
    let close = !keep;
    let status = resp.status;
    let head_only = head.method == Method::Head;
    let bytes = if head_only { 0 } else { resp.payload.len() };
    let sent = conn.send(resp, head_only, close).await;
    local.metrics.request_ended();
    local
        .metrics
        .request(action, status, started.elapsed(), bytes);
    // Everything read since the last request ended: this request's head and body.
    local.metrics.received(conn.received() - *counted);
    *counted = conn.received();
    tracing::info!(
        target: "wharf::access",
        "{peer} {} {} {}{}{} {status} {bytes} {}us listener={}",
        who.as_deref().unwrap_or(cert_user),
        head.method.as_str(),
        head.path,
        if head.query.is_empty() { "" } else { "?" },
        head.query,
        started.elapsed().as_micros(),
        client.listener.name
    );
    if sent.is_err() {
        return After::Close;
    }
    if close {
        return After::Linger;
    }
    After::NextRequest
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future `f` returns, without calling it.
    fn future_size<A, F: Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A parked connection holds its task for as long as the client keeps it open, and a slow
    /// download holds its request's state while it sends: both stay a few KiB because a request's
    /// state is boxed and its handler boxed again (awaited inline, the task was 37,248 bytes).
    /// Sizes are the compiler's, so this is checked on release builds, as the suite runs.
    #[test]
    #[cfg_attr(
        debug_assertions,
        ignore = "future sizes are checked on release builds"
    )]
    fn connection_and_request_futures_stay_small() {
        type Exchange<'a> = (
            &'a mut Conn,
            &'a crate::http::RequestHead,
            &'a Client,
            &'a str,
            &'a App,
            &'a Local,
            &'a mut u64,
        );
        let exchange =
            future_size(|(c, h, cl, u, a, l, n): Exchange<'static>| exchange(c, h, cl, u, a, l, n));
        type Requests = (
            Conn,
            SocketAddr,
            Option<Rc<CertIdentity>>,
            u64,
            &'static App,
            &'static Local,
            Rc<Listener>,
        );
        let requests =
            future_size(|(c, p, cert, g, a, l, li): Requests| requests(c, p, cert, g, a, l, li));
        type Serve = (
            TcpStream,
            SocketAddr,
            Arc<App>,
            Rc<Local>,
            Rc<Listener>,
            Slot,
        );
        let task = future_size(|(t, p, a, l, li, s): Serve| serve(t, p, a, l, li, s));
        // Measured: 5,760 (17,536 with the handler awaited inline), 3,840 (7,168 with the exchange
        // awaited inline) and 5,632 bytes.
        assert!(exchange < 8 << 10, "a request's state is {exchange} bytes");
        assert!(requests < 6 << 10, "the request loop is {requests} bytes");
        assert!(task < 8 << 10, "a connection's task is {task} bytes");
    }
}
