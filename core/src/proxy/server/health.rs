//! The health address: `GET /healthz` (readiness), `GET /livez` (liveness), `GET /startup` (200 once
//! serving, for startup probes), `GET /metrics` (when a renderer is given) and `POST /quitquitquit` (when
//! enabled; loopback clients only). A minimal HTTP/1.1 responder: one request per connection, 8 KiB and
//! 1 s to send it, 64 served at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{ProxyServerError, ServerState};
use crate::proxy::{Health, Proxy};

/// How long a health request may take to arrive: probes send theirs at once, so a connection that stays
/// silent longer only holds a slot.
const READ_TIMEOUT: Duration = Duration::from_secs(1);
/// Health requests served at once; beyond that, connections are closed.
pub(super) const REQUESTS_AT_ONCE: usize = 64;

/// Binds the health address and serves it: the address bound, and the task serving it.
pub(super) async fn start(
    address: SocketAddr,
    proxy: Proxy,
    state: Arc<ServerState>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>), ProxyServerError> {
    let listen_error = |e: std::io::Error| ProxyServerError::Listen {
        address: address.to_string(),
        detail: e.to_string(),
    };
    let listener = TcpListener::bind(address).await.map_err(listen_error)?;
    let bound = listener.local_addr().map_err(listen_error)?;
    tracing::info!(address = %bound, "serving GET /healthz");
    tracing::info!(address = %bound, "serving GET /livez");
    tracing::info!(address = %bound, "serving GET /startup");
    if state.quit_endpoint {
        tracing::info!(address = %bound, "serving POST /quitquitquit to loopback clients");
    }
    Ok((bound, tokio::spawn(serve_healthz(listener, proxy, state))))
}

/// `GET /healthz` (readiness): 200 while listening with a usable token, 503 while draining or without one.
/// `GET /livez` (liveness): 200 while the process serves — also without a token and while draining, since a
/// restart would end every open session and bring no token sooner. The body says why, never a secret; on a
/// non-loopback address only ok or the kind of problem (no tenant, client id or path: the log has those).
/// At most [`REQUESTS_AT_ONCE`] are served at once.
async fn serve_healthz(listener: TcpListener, proxy: Proxy, state: Arc<ServerState>) {
    let at_once = Arc::new(Semaphore::new(REQUESTS_AT_ONCE));
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(slot) = at_once.clone().try_acquire_owned() else {
            continue;
        };
        let proxy = proxy.clone();
        let state = state.clone();
        tokio::spawn(async move {
            answer_health_request(stream, peer, &proxy, &state).await;
            drop(slot);
        });
    }
}

/// Reads one request (within [`READ_TIMEOUT`] and 8 KiB) and answers it.
async fn answer_health_request(
    mut stream: tokio::net::TcpStream,
    peer: SocketAddr,
    proxy: &Proxy,
    state: &ServerState,
) {
    let mut request = Vec::new();
    let mut buf = [0; 1024];
    let read = tokio::time::timeout(READ_TIMEOUT, async {
        while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            request.extend(&buf[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    if !matches!(read, Ok(Ok(()))) {
        return;
    }
    let line = String::from_utf8_lossy(&request);
    let line = line.lines().next().unwrap_or_default();
    let is = |method: &str, path: &str| {
        let request = format!("{method} {path}");
        line == request || line.starts_with(&format!("{request} "))
    };
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body) = match &state.metrics {
        _ if is("GET", "/livez") => ("200 OK", text, liveness(state)),
        _ if is("GET", "/healthz") => {
            let (status, body) = readiness(proxy, state);
            (status, text, body)
        }
        _ if is("GET", "/startup") => {
            let (status, body) = started(state);
            (status, text, body)
        }
        _ if is("POST", "/quitquitquit") && state.quit_endpoint => {
            let local = stream.local_addr().ok();
            let (status, body) = quit(peer, local, from_browser(&request), state);
            (status, text, body)
        }
        // Prometheus' text exposition format, version 0.0.4.
        Some(render) if is("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4", render()),
        _ => (
            "404 Not Found",
            text,
            "not found: GET /healthz, /livez, /startup or /metrics\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// `/startup`'s status and body: 200 once the listeners accept (after the connection test, if asked),
/// also while stopping, since a startup probe only gates the first probes of the others.
fn started(state: &ServerState) -> (&'static str, String) {
    if state.started.load(Ordering::SeqCst) {
        ("200 OK", "started\n".to_owned())
    } else {
        ("503 Service Unavailable", "starting\n".to_owned())
    }
}

/// Whether the request carries an `Origin` header: a browser's (curl and the like send none), which a web
/// page may make it send to a loopback address without asking.
fn from_browser(request: &[u8]) -> bool {
    String::from_utf8_lossy(request)
        .lines()
        .skip(1)
        .any(|line| line.to_ascii_lowercase().starts_with("origin:"))
}

/// `POST /quitquitquit`: the graceful stop, for a client of this host's loopback reaching the loopback
/// address (a container of the same pod, e.g. a Job's main container when it is done). Anyone else gets
/// 403: a client from another address, one that reached the pod's own address (as a mesh proxy's
/// forwarded traffic does), and a browser (a web page can post to loopback without being asked).
fn quit(
    peer: SocketAddr,
    local: Option<SocketAddr>,
    from_browser: bool,
    state: &ServerState,
) -> (&'static str, String) {
    let loopback = |address: SocketAddr| address.ip().to_canonical().is_loopback();
    if !loopback(peer) || !local.is_some_and(loopback) || from_browser {
        tracing::warn!(client = %peer, from_browser, "POST /quitquitquit refused: not from a loopback client");
        return (
            "403 Forbidden",
            "forbidden: POST /quitquitquit is answered for loopback clients only\n".to_owned(),
        );
    }
    state.quit.send_replace(true);
    ("200 OK", "stopping\n".to_owned())
}

/// `/livez`'s body: what the proxy is doing (and how many connections it serves, on loopback).
fn liveness(state: &ServerState) -> String {
    let doing = if !state.draining.load(Ordering::SeqCst) {
        "listening"
    } else if state.accepting.load(Ordering::SeqCst) {
        "stopping"
    } else {
        "draining"
    };
    if !state.health_details {
        return format!("alive: {doing}\n");
    }
    let open = state.sessions.load(Ordering::SeqCst);
    format!("alive: {doing}; {open} open sessions\n")
}

/// `/healthz`'s status and body.
fn readiness(proxy: &Proxy, state: &ServerState) -> (&'static str, String) {
    if state.draining.load(Ordering::SeqCst) {
        let body = if state.accepting.load(Ordering::SeqCst) {
            "stopping: new connections are accepted for the minimum delay only\n"
        } else {
            "draining: not accepting new connections\n"
        };
        return ("503 Service Unavailable", body.to_owned());
    }
    if !state.started.load(Ordering::SeqCst) {
        return ("503 Service Unavailable", "starting\n".to_owned());
    }
    match proxy.health() {
        Health::Ready { expires_at } if state.health_details => (
            "200 OK",
            format!(
                "ok: listening; token valid{}\n",
                expires_at
                    .map(|e| format!(" until {e}"))
                    .unwrap_or_default()
            ),
        ),
        Health::Ready { .. } => ("200 OK", "ok\n".to_owned()),
        Health::NoToken(why) if state.health_details => (
            "503 Service Unavailable",
            format!("no valid token: {why}\n"),
        ),
        Health::NoToken(_) => (
            "503 Service Unavailable",
            "no valid token (the proxy's log says why)\n".to_owned(),
        ),
    }
}
