//! The L7 (HTTP) data plane, with hyper: HTTP/1.1 and HTTP/2 both ways, streaming bodies,
//! upgrades, pooled connections to the app and to peer sidecars.
//!
//! - [`inbound`]: per-request JWT (RequestAuthentication), CUSTOM ext_authz, AuthorizationPolicy,
//!   `X-Forwarded-Client-Cert`, then the app over a keep-alive pool from 127.0.0.6;
//! - [`outbound`]: requests from the app to a mesh HTTP service, over pooled mTLS connections
//!   to the peer sidecar (HTTP/1.1 keep-alive: [`mesh_h1`]; HTTP/2: [`pool`]), secure naming
//!   against the service's identities;
//! - [`ext_authz`]: the Envoy `envoyExtAuthzHttp` client; [`xfcc`]: the XFCC header;
//!   [`jwt`]: the compiled JWT rules per policy generation; [`record`]: per-request metrics
//!   and the access log line, written when the response body ends; [`prefetch`]: small
//!   responses leave with their first body chunk (one write for head and body).
//!
//! Everything expensive (TLS configs, compiled policy and JWT rules, label sets, clients) is
//! built per config change or per connection; a request costs a policy evaluation, a few
//! header edits and a boxed body.

pub mod ext_authz;
pub mod h1pool;
pub mod inbound;
pub mod jwt;
pub mod mesh_h1;
pub mod outbound;
pub mod pool;
pub mod prefetch;
pub mod record;
pub mod upgrade;
pub mod xfcc;

use std::error::Error as StdError;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub use inbound::{PeerTls, serve};

/// An error inside a body stream.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// The body type of requests and responses the proxy forwards or makes.
pub type Body = BoxBody<Bytes, BoxError>;

/// What a downstream connection is known to speak before its first request is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaks {
    /// HTTP/1.x: ALPN `istio-http/1.x` / `http/1.x`, or a sniffed request line.
    Http1,
    /// HTTP/1.1 or HTTP/2 (prior knowledge or ALPN): hyper tells them apart by the preface.
    Any,
}

impl Speaks {
    /// From the ALPN protocol a TLS handshake negotiated.
    pub fn from_alpn(alpn: Option<&[u8]>) -> Self {
        if warden_identity::tls::alpn::is_http1(alpn) {
            Speaks::Http1
        } else {
            Speaks::Any
        }
    }
}

/// Serves one downstream HTTP connection (HTTP/1.1 with upgrades, or HTTP/2) with the
/// configured limits, answering each request with `handle(conn, request)`, until it closes.
/// A connection known to speak HTTP/1 skips version detection. On drain the requests in
/// flight finish, then the connection closes (HTTP/1 `Connection: close`, HTTP/2 GOAWAY)
/// instead of idling until the drain deadline.
pub(crate) async fn serve_connection<IO, C, F, Fut>(
    shared: &crate::state::Shared,
    io: IO,
    speaks: Speaks,
    conn: std::sync::Arc<C>,
    handle: F,
) -> Result<(), BoxError>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    C: Send + Sync + 'static,
    F: Fn(std::sync::Arc<C>, http::Request<hyper::body::Incoming>) -> Fut
        + Send
        + Sync
        + Clone
        + 'static,
    Fut: std::future::Future<Output = Response<Body>> + Send + 'static,
{
    let drain = &shared.drain;
    let limits = &shared.config.limits;
    let svc = hyper::service::service_fn(move |req| {
        let fut = handle(conn.clone(), req);
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let io = hyper_util::rt::TokioIo::new(io);
    match speaks {
        Speaks::Http1 => {
            let served = limits
                .http1_server_builder()
                .serve_connection(io, svc)
                .with_upgrades();
            until_drained(drain, served, |c| c.graceful_shutdown()).await
        }
        Speaks::Any => {
            let builder = limits.http_server_builder();
            let served = builder.serve_connection_with_upgrades(io, svc);
            until_drained(drain, served, |c| c.graceful_shutdown()).await
        }
    }
}

/// Drives `served` to its end; once draining starts, `shutdown` asks it to finish the
/// requests in flight and close. `served` is polled first, and the drain signal costs an atomic
/// load per poll after its first (see [`crate::drain::Signal`]).
pub(crate) async fn until_drained<S, E>(
    drain: &crate::drain::Drain,
    served: S,
    shutdown: impl FnOnce(std::pin::Pin<&mut S>),
) -> Result<(), BoxError>
where
    S: std::future::Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    tokio::pin!(served);
    let signal = drain.signal();
    tokio::pin!(signal);
    let done = std::future::poll_fn(|cx| {
        if let std::task::Poll::Ready(r) = served.as_mut().poll(cx) {
            return std::task::Poll::Ready(Some(r));
        }
        signal.as_mut().poll_started(cx).map(|()| None)
    })
    .await;
    match done {
        Some(r) => r.map_err(Into::into),
        None => {
            shutdown(served.as_mut());
            served.await.map_err(Into::into)
        }
    }
}

/// Envoy's body when the upstream cannot be reached or resets before the response headers.
pub const UPSTREAM_CONNECT_ERROR: &str =
    "upstream connect error or disconnect/reset before headers";

/// The L7 state shared by every connection: pooled clients, the JWT rules cache, the ext_authz
/// client. Built once per process.
pub struct L7 {
    /// Pooled clients to the app.
    pub app: AppClients,
    /// Pooled HTTP/2 mTLS connections to peer sidecars.
    pub peers: std::sync::Arc<pool::PeerPool>,
    /// HTTP/1.1 keep-alive mTLS pools to peer sidecars (HTTP/1.x requests).
    pub mesh_h1: mesh_h1::MeshH1,
    /// The ext_authz HTTP client.
    pub ext_authz: ext_authz::ExtAuthzClient,
    /// The JWT rules compiled for the current policy.
    pub jwt: jwt::JwtCache,
    /// Whether an access log line is written per request.
    pub access_log: bool,
    /// This workload's SPIFFE ID (XFCC `By`, metric labels).
    pub own_id: std::sync::Arc<str>,
}

impl std::fmt::Debug for L7 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("L7")
            .field("peers", &self.peers)
            .field("access_log", &self.access_log)
            .finish_non_exhaustive()
    }
}

impl L7 {
    /// Builds the L7 state for `config`.
    pub fn new(config: &crate::config::SidecarConfig) -> Self {
        let h = &config.http;
        Self {
            app: AppClients::new(
                config.inbound.source_address,
                config.connect_timeout,
                h.pool_idle_timeout,
                h.pool_max_idle_per_host,
                config.concurrency,
            ),
            peers: std::sync::Arc::new(pool::PeerPool::new(
                h.pool_idle_timeout,
                config.connect_timeout,
            )),
            mesh_h1: mesh_h1::MeshH1::new(
                config.concurrency,
                h.pool_idle_timeout,
                h.pool_max_idle_per_host,
                config.connect_timeout,
            ),
            ext_authz: ext_authz::ExtAuthzClient::new(
                &h.extension_providers.0,
                config.connect_timeout,
            ),
            jwt: jwt::JwtCache::default(),
            access_log: h.access_log,
            own_id: config.identity.spiffe_id().as_str().into(),
        }
    }
}

/// Pooled HTTP/1.1 connections to the app, from the configured source address, keep-alive
/// with an idle timeout and a bound on idle connections. (Apps that speak HTTP/2 get one
/// multiplexed connection per port from [`pool::PeerPool::get_app`].)
#[derive(Debug)]
pub struct AppClients {
    pool: std::sync::Arc<h1pool::H1Pool>,
    source: std::net::IpAddr,
    connect_timeout: std::time::Duration,
}

impl AppClients {
    /// Connections binding `source` (127.0.0.6) with `connect_timeout`.
    pub fn new(
        source: std::net::IpAddr,
        connect_timeout: std::time::Duration,
        idle_timeout: std::time::Duration,
        max_idle_per_host: usize,
        workers: usize,
    ) -> Self {
        Self {
            pool: std::sync::Arc::new(h1pool::H1Pool::new(
                workers,
                idle_timeout,
                max_idle_per_host,
            )),
            source,
            connect_timeout,
        }
    }

    /// Idle connections held (for tests).
    pub fn idle_count(&self) -> usize {
        self.pool.idle_count()
    }

    /// Sends `req` (origin-form URI, `Host` set) to the app at `app` over HTTP/1.1, on a
    /// pooled connection of the calling worker or a new one (with upgrades: a `101` response
    /// hands the connection to the upgrade).
    pub async fn send_h1(
        &self,
        app: std::net::SocketAddr,
        req: http::Request<Body>,
    ) -> Result<Response<h1pool::PooledBody>, h1pool::H1Error> {
        let connect = || async {
            let tcp = crate::dial::connect(app, Some(self.source), self.connect_timeout).await?;
            let send = h1pool::handshake(tcp, app).await?;
            Ok::<h1pool::Connected, h1pool::H1Error>((send, std::sync::Arc::from("")))
        };
        let (resp, _) = self.pool.send(app, &[], req, connect).await?;
        Ok(resp)
    }
}

/// A short `text/plain` response.
pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    text_owned(status, Bytes::from_static(body.as_bytes()))
}

/// A `text/plain` response with `body`.
pub fn text_owned(status: StatusCode, body: Bytes) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

/// A body of known bytes.
pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|n| match n {}).boxed()
}

/// An empty body.
pub fn empty() -> Body {
    full(Bytes::new())
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), never forwarded, except on an upgrade where
/// `connection` and `upgrade` must reach the other side.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

/// Removes hop-by-hop headers, and those named in `Connection`. With `upgrade`, keeps
/// `connection` and `upgrade`. `te: trailers` stays (gRPC needs it, and HTTP/2 allows it).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    if !upgrade {
        // Headers listed in Connection are hop-by-hop too.
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in listed {
            headers.remove(n);
        }
    }
    for h in &HOP_BY_HOP {
        if upgrade && (h == header::CONNECTION || h == header::UPGRADE) {
            continue;
        }
        headers.remove(h);
    }
    headers.remove("proxy-connection");
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Whether a request asks for a protocol upgrade (`Connection: upgrade` + `Upgrade`).
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Whether a request is gRPC (`content-type: application/grpc...`).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// How an upstream failed, as Envoy reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Could not connect (refused, timed out, TLS/secure naming failed): 503, flag `UF`.
    Connect,
    /// The connection was reset or closed before the response headers: 503, flag `UC`.
    Reset,
    /// The upstream sent something that is not valid HTTP: 502, flag `UPE`.
    Protocol,
}

impl UpstreamFailure {
    /// Classifies an error from a pooled HTTP/1.1 connection.
    pub fn of_h1(e: &h1pool::H1Error) -> Self {
        match e {
            h1pool::H1Error::Connect(_) | h1pool::H1Error::Handshake { .. } => {
                UpstreamFailure::Connect
            }
            h1pool::H1Error::Http(e) => Self::of_hyper(e),
        }
    }

    /// Classifies a hyper error (from a connection-level client).
    pub fn of_hyper(e: &hyper::Error) -> Self {
        if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() {
            UpstreamFailure::Protocol
        } else {
            UpstreamFailure::Reset
        }
    }

    /// Envoy's response flag.
    pub fn flag(self) -> &'static str {
        match self {
            UpstreamFailure::Connect => "UF",
            UpstreamFailure::Reset => "UC",
            UpstreamFailure::Protocol => "UPE",
        }
    }

    /// The local reply: status and Envoy's body.
    pub fn response(self) -> Response<Body> {
        match self {
            UpstreamFailure::Connect => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection failure",
            ),
            UpstreamFailure::Reset => text(
                StatusCode::SERVICE_UNAVAILABLE,
                "upstream connect error or disconnect/reset before headers. reset reason: connection termination",
            ),
            UpstreamFailure::Protocol => text(StatusCode::BAD_GATEWAY, "upstream protocol error"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_are_removed_unless_upgrading() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(header::TE, HeaderValue::from_static("gzip"));
        h.insert("x-app", HeaderValue::from_static("kept"));
        assert!(!is_upgrade(&h));
        strip_hop_by_hop(&mut h, false);
        let names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-app"]);
        // gRPC's `te: trailers` is kept.
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h[header::TE], "trailers");

        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn upstream_failures_answer_as_envoy() {
        let r = UpstreamFailure::Connect.response();
        assert_eq!(r.status(), 503);
        assert_eq!(UpstreamFailure::Protocol.response().status(), 502);
        assert_eq!(UpstreamFailure::Reset.flag(), "UC");
    }
}
