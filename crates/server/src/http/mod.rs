//! The HTTP listener: the web client's files at `/` and its WebSocket at
//! `/ws`, plus `/metrics`, `/healthz` and `/readyz` for operators, on the
//! node's runtime and with the node's service.
//!
//! hyper's connection builder is driven directly (not `axum::serve`) so that
//! a handshake is bounded in bytes and time, every connection is counted,
//! and the client's address is known to the handlers.

pub mod assets;
pub mod ws;

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::service::Service;

/// HTTP connections open at once (before any upgrade; a WebSocket then
/// counts against the node's connection cap instead).
const MAX_HTTP_CONNECTIONS: usize = 1024;
/// Largest request head (request line and headers) accepted.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// A client must send a request's head within this long.
const HEAD_WAIT: Duration = Duration::from_secs(10);
/// An HTTP connection that has not upgraded is closed after this long, so a
/// kept-alive page load cannot hold a slot for ever.
const HTTP_CONNECTION_MAX: Duration = Duration::from_secs(120);

/// The client's address, as the handlers see it.
#[derive(Clone, Copy, Debug)]
struct Peer(SocketAddr);

/// What the handlers share.
struct App {
    sh: Arc<Service>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// The routes: the app's files and the WebSocket.
fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(assets::index))
        .route("/ws", get(upgrade))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/{file}", get(assets::file))
        .with_state(app)
}

/// Serves HTTP on `listener` until `shutdown` fires. WebSocket sessions run
/// in `tracker`, so the node's shutdown waits for them like for TCP ones.
pub async fn run(
    listener: TcpListener,
    sh: Arc<Service>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let app = Arc::new(App {
        sh: sh.clone(),
        shutdown: shutdown.clone(),
        tracker: tracker.clone(),
    });
    let routes = router(app);
    let slots = Arc::new(Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let (sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            if let Some(skipped) = sh.guards.refused_log.tick() {
                tracing::warn!(%peer, max = MAX_HTTP_CONNECTIONS, refused_before = skipped, "HTTP connection limit reached; refusing");
            }
            continue;
        };
        crate::connection::tune(&sock, peer);
        let routes = routes.clone();
        let stop = shutdown.clone();
        let tls = sh.cfg.tls.clone();
        tracker.spawn(async move {
            let svc = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(Peer(peer));
                let mut routes = routes.clone();
                async move {
                    let resp = tower_service::Service::call(&mut routes, req).await;
                    Ok::<_, Infallible>(resp.unwrap_or_else(|e| match e {}))
                }
            });
            let serve = async {
                match tls {
                    None => serve_connection(sock, svc, peer).await,
                    // The handshake in this connection's task, bounded;
                    // a failed one is logged there.
                    Some(tls) => {
                        if let Some(sock) = tls.accept(sock, peer).await {
                            serve_connection(sock, svc, peer).await;
                        }
                    }
                }
            };
            tokio::select! {
                _ = serve => {}
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(HTTP_CONNECTION_MAX) => {}
            }
            drop(permit);
        });
    }
}

/// Serves HTTP/1.1 (and upgrades to WebSocket) on one connection, plain or
/// TLS.
async fn serve_connection<IO, S>(io: IO, svc: S, peer: SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::HttpService<hyper::body::Incoming, ResBody = axum::body::Body>,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_WAIT)
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
}

/// `GET /ws`: checks the page's origin and the node's connection caps, then
/// serves the upgraded connection as a chat session.
async fn upgrade(
    State(app): State<Arc<App>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let sh = &app.sh;
    let client = client_addr(peer, &headers, &sh.cfg.trusted_proxies);
    if !origin_allowed(&headers, &sh.cfg.http_allow_origins) {
        if let Some(skipped) = sh.guards.refused_log.tick() {
            let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
            tracing::warn!(peer = %client, origin, refused_before = skipped, "WebSocket from a page of another origin; refusing");
        }
        return (
            StatusCode::FORBIDDEN,
            "this page's origin may not open a chat session\n",
        )
            .into_response();
    }
    let Ok(slot) = sh.guards.slots.clone().try_acquire_owned() else {
        if let Some(skipped) = sh.guards.refused_log.tick() {
            tracing::warn!(peer = %client, max = sh.cfg.max_connections, refused_before = skipped, "connection limit reached; refusing WebSocket");
        }
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "the server is full; try again later\n",
        )
            .into_response();
    };
    let Some(addr_slot) = sh.guards.conns.try_acquire(client.ip()) else {
        if let Some(skipped) = sh.guards.refused_log.tick() {
            tracing::warn!(peer = %client, max = sh.cfg.max_connections_per_ip, refused_before = skipped, "per-address connection limit reached; refusing WebSocket");
        }
        return (
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n",
        )
            .into_response();
    };
    // Room for a frame at the limit to arrive whole, so that it gets errno 8
    // like on TCP; far larger ones are cut off by the WebSocket layer.
    let max = sh.cfg.max_frame.saturating_mul(2).saturating_add(1024);
    let (sh, shutdown, tracker) = (sh.clone(), app.shutdown.clone(), app.tracker.clone());
    ws.read_buffer_size(ws::READ_BUFFER)
        .write_buffer_size(ws::WRITE_BUFFER)
        .max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            tracker.track_future(ws::serve(socket, client, sh, &shutdown, (slot, addr_slot)))
        })
}

/// `GET /metrics`: every metric in the Prometheus (OpenMetrics) text format.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let sh = &app.sh;
    let m = &sh.metrics;
    m.commit_queue.set(sh.committer.depth() as i64);
    let (running, waiting) = sh.passwords.load();
    m.argon2_running.set(running as i64);
    m.argon2_queue.set(waiting as i64);
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        m.encode(),
    )
        .into_response()
}

/// `GET /healthz`: the process is alive and serving HTTP.
async fn healthz() -> &'static str {
    "ok\n"
}

/// `GET /readyz`: 200 when storage and the bus answer (each gets 2 s), 503
/// with the reason otherwise. Load balancers send no new clients to a node
/// that is not ready.
async fn readyz(State(app): State<Arc<App>>) -> Response {
    let store = async {
        match tokio::time::timeout(Duration::from_secs(2), app.sh.store.ping()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("storage: {e}")),
            Err(_) => Err("storage did not answer within 2 s".to_owned()),
        }
    };
    let (store, bus) = tokio::join!(store, app.sh.bus.ready());
    let problems: Vec<String> = [store, bus].into_iter().filter_map(Result::err).collect();
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned()).into_response()
    } else {
        tracing::debug!(?problems, "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", problems.join("; ")),
        )
            .into_response()
    }
}

/// The client's address: a trusted proxy's `X-Real-IP`, else the peer's.
fn client_addr(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpAddr]) -> SocketAddr {
    if !trusted.contains(&peer.ip()) {
        return peer;
    }
    headers
        .get("x-real-ip")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<IpAddr>().ok())
        .map_or(peer, |ip| SocketAddr::new(ip, 0))
}

/// Whether a page from the request's `Origin` may open a session. A request
/// without one comes from a program, not a page, and cannot carry a
/// browser's cookies or ambient rights: allowed.
fn origin_allowed(headers: &HeaderMap, allow: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    if allow.is_empty() {
        let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
        let authority = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"));
        return matches!((authority, host), (Some(a), Some(h)) if a.eq_ignore_ascii_case(h));
    }
    allow
        .iter()
        .any(|a| a == "*" || a.trim_end_matches('/').eq_ignore_ascii_case(origin))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        if let Some(o) = origin {
            h.insert(header::ORIGIN, HeaderValue::from_str(o).unwrap());
        }
        h
    }

    #[test]
    fn same_origin_by_default() {
        assert!(origin_allowed(&headers(None, "chat.example:8080"), &[]));
        assert!(origin_allowed(
            &headers(Some("http://chat.example:8080"), "chat.example:8080"),
            &[]
        ));
        assert!(origin_allowed(
            &headers(Some("https://Chat.Example"), "chat.example"),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(Some("http://evil.example"), "chat.example:8080"),
            &[]
        ));
        assert!(!origin_allowed(
            &headers(Some("http://chat.example:9999"), "chat.example:8080"),
            &[]
        ));
        assert!(!origin_allowed(&headers(Some("null"), "chat.example"), &[]));
    }

    #[test]
    fn an_allow_list_replaces_same_origin() {
        let allow = vec!["https://app.example/".to_owned()];
        assert!(origin_allowed(
            &headers(Some("https://app.example"), "chat.example"),
            &allow
        ));
        assert!(!origin_allowed(
            &headers(Some("https://chat.example"), "chat.example"),
            &allow
        ));
        assert!(origin_allowed(
            &headers(Some("https://any.example"), "chat.example"),
            &["*".to_owned()]
        ));
    }

    #[test]
    fn only_trusted_proxies_name_the_client() {
        let mut h = HeaderMap::new();
        h.insert("x-real-ip", HeaderValue::from_static("203.0.113.9"));
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lb: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(client_addr(peer, &h, &[]), peer);
        assert_eq!(
            client_addr(peer, &h, &[lb]).ip(),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
    }
}
