//! L7 skeleton: inbound HTTP/1.1 and HTTP/2 served by hyper, authorized per request
//! (`403 RBAC: access denied` on deny), forwarded to the app from 127.0.0.6 with bodies
//! streamed (never buffered whole). No JWT, ext_authz, XFCC or HTTP metrics yet.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use warden_policy::{
    ConnectionContext, HttpRequest, NoExtAuthz, PathNormalization, Request as AuthzRequest,
    normalize_path,
};

use crate::state::{PolicyState, Shared};

/// The response body type.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Pooled clients to the app: HTTP/1.1 and HTTP/2 (prior knowledge), from the configured
/// source address. Built once per process.
#[derive(Clone)]
pub struct AppClients {
    h1: Client<HttpConnector, Incoming>,
    h2: Client<HttpConnector, Incoming>,
}

impl std::fmt::Debug for AppClients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AppClients")
    }
}

impl AppClients {
    /// Clients binding `source` (127.0.0.6) with `connect_timeout`.
    pub fn new(source: std::net::IpAddr, connect_timeout: std::time::Duration) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_local_address(Some(source));
        conn.set_connect_timeout(Some(connect_timeout));
        conn.set_nodelay(true);
        let h1 = Client::builder(TokioExecutor::new()).build(conn.clone());
        let h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build(conn);
        Self { h1, h2 }
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut r = Response::new(
        Full::new(Bytes::from_static(body.as_bytes()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    r
}

/// Serves HTTP on an accepted inbound connection (after TLS, if any) until it closes.
pub async fn serve<S>(
    shared: Arc<Shared>,
    policy: Arc<PolicyState>,
    io: S,
    peer: SocketAddr,
    dst: SocketAddr,
    principal: Option<Arc<str>>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let drain = shared.drain.clone();
    let builder = shared.config.limits.http_server_builder();
    let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
        let shared = shared.clone();
        let policy = policy.clone();
        let principal = principal.clone();
        async move {
            Ok::<_, std::convert::Infallible>(
                handle(&shared, &policy, req, peer, dst, principal.as_deref()).await,
            )
        }
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    // On drain: finish the request in flight, then close (HTTP/1 `Connection: close`,
    // HTTP/2 GOAWAY) instead of holding an idle keep-alive connection until the deadline.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "inbound HTTP connection ended with an error");
    }
}

async fn handle(
    shared: &Shared,
    policy: &PolicyState,
    req: Request<Incoming>,
    peer: SocketAddr,
    dst: SocketAddr,
    principal: Option<&str>,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let raw_path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let path = match normalize_path(&raw_path, PathNormalization::Base) {
        Ok(p) => p,
        Err(_) => return text(StatusCode::BAD_REQUEST, "Bad Request\n"),
    };
    let host = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let mut conn = ConnectionContext::new(peer.ip(), dst.ip(), dst.port());
    if let Some(p) = principal {
        conn = conn.with_peer(p);
    }
    let http_req = HttpRequest {
        method: method.as_str(),
        host: &host,
        path: &path,
        headers: req.headers(),
        auth: None,
    };
    let decision = policy
        .compiled
        .authz
        .evaluate(&AuthzRequest::http(conn, http_req), &NoExtAuthz);
    let allowed = decision.is_allowed();
    let reason = decision.to_string();
    drop(decision);
    if !allowed {
        access(peer, dst, principal, &method, &path, 403, &reason, start);
        return text(StatusCode::FORBIDDEN, "RBAC: access denied");
    }
    let query = raw_path.split_once('?').map(|(_, q)| q);
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.clone(),
    };
    let app = SocketAddr::new(shared.config.inbound.app_host, dst.port());
    let (mut parts, body) = req.into_parts();
    parts.uri = match Uri::builder()
        .scheme("http")
        .authority(app.to_string())
        .path_and_query(pq)
        .build()
    {
        Ok(u) => u,
        Err(_) => return text(StatusCode::BAD_REQUEST, "Bad Request\n"),
    };
    let h2 = parts.version == http::Version::HTTP_2;
    let upstream = Request::from_parts(parts, body);
    let result = if h2 {
        shared.app_clients.h2.request(upstream).await
    } else {
        shared.app_clients.h1.request(upstream).await
    };
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            access(peer, dst, principal, &method, &path, status, &reason, start);
            resp.map(|b| b.boxed())
        }
        Err(e) => {
            tracing::info!(%app, error = %e, "inbound HTTP: app request failed");
            let (status, body) = if e.is_connect() {
                (StatusCode::SERVICE_UNAVAILABLE, "upstream connect error\n")
            } else {
                (StatusCode::BAD_GATEWAY, "upstream request failed\n")
            };
            access(
                peer,
                dst,
                principal,
                &method,
                &path,
                status.as_u16(),
                &reason,
                start,
            );
            text(status, body)
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn access(
    peer: SocketAddr,
    dst: SocketAddr,
    principal: Option<&str>,
    method: &http::Method,
    path: &str,
    status: u16,
    decision: &str,
    start: Instant,
) {
    tracing::info!(
        target: "warden::access",
        direction = "inbound",
        protocol = "http",
        src = %peer,
        dst = %dst,
        principal = principal.unwrap_or("-"),
        method = %method,
        path,
        status,
        decision,
        duration_ms = start.elapsed().as_millis() as u64,
        "request"
    );
}
