//! The request loop of one connection: head → route/handle → response, with keep-alive,
//! pipelining, draining or closing after unread bodies, and one access-log line per request.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::net::TcpStream;

use super::App;
use super::shutdown::Shutdown;
use crate::http::conn::NextRequest;
use crate::http::{Conn, Method, Response};

/// Unread body bytes we are willing to discard to keep a connection alive.
const DRAIN_LIMIT: u64 = 256 * 1024;

pub async fn serve(stream: TcpStream, peer: SocketAddr, app: Arc<App>, shutdown: Rc<Shutdown>) {
    let _tracked = shutdown.track();
    let mut conn = Conn::new(stream, Rc::new(app.limits.clone()));
    let mut first = true;
    loop {
        let wait = if first {
            app.limits.head_timeout
        } else {
            app.limits.keep_alive_timeout
        };
        first = false;
        let head = match conn.next_request(wait, shutdown.wait()).await {
            NextRequest::Head(h) => h,
            NextRequest::Closed => return,
            NextRequest::Invalid(e) => {
                tracing::info!(target: "wharf::access", "{peer} - - {} 0 rejected head: {e}", e.status());
                let body = format!("{e}\n").into_bytes();
                let _ = conn
                    .send(
                        Response::new(e.status()).bytes("text/plain", body),
                        false,
                        true,
                    )
                    .await;
                conn.linger().await;
                return;
            }
            NextRequest::TimedOut => {
                let body = b"request head timed out\n".to_vec();
                let _ = conn
                    .send(Response::new(408).bytes("text/plain", body), false, true)
                    .await;
                conn.linger().await;
                return;
            }
        };
        let started = Instant::now();
        let mut body = conn.body(&head);
        let resp = app.registry.handle(&head, &mut body).await;
        // A body the handler left unread is drained if small, else the connection closes after replying.
        let body_done = body.finished() || body.drain(DRAIN_LIMIT).await;
        let close = head.close || !body_done || shutdown.fired();
        let status = resp.status;
        let head_only = head.method == Method::Head;
        let bytes = if head_only { 0 } else { resp.payload.len() };
        let sent = conn.send(resp, head_only, close).await;
        tracing::info!(
            target: "wharf::access",
            "{peer} {} {}{}{} {status} {bytes} {}us",
            head.method.as_str(),
            head.path,
            if head.query.is_empty() { "" } else { "?" },
            head.query,
            started.elapsed().as_micros()
        );
        if sent.is_err() {
            return;
        }
        if close {
            conn.linger().await;
            return;
        }
    }
}
