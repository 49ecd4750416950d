//! HTTP at the gateway: per request, the server (by `Host` on plaintext ports), `httpsRedirect`,
//! AuthorizationPolicy (with the client address from X-Forwarded-For and the trusted hops),
//! the VirtualService route (URI exact/prefix/regex, headers), redirects, weighted destinations,
//! timeouts and retries, then the upstream over mesh mTLS, originated TLS or plaintext.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use warden_identity::tls::Alpn;
use warden_policy::{ConnectionContext, HttpRequest, NoExtAuthz, PathNormalization};

use super::GatewayShared;
use super::metrics::HttpLabels;
use super::pool::{PoolKey, Sender};
use super::table::{GatewayTable, RetryPolicy, RouteAction, ServerEntry, Target};
use super::upstream::{self, Security, UpstreamError};
use crate::config::OutboundTrafficPolicy;
use crate::logging::ACCESS_LOG_TARGET;

/// The body type of gateway responses.
pub type Body = BoxBody<Bytes, hyper::Error>;

/// Request bodies are buffered (so that a retry can resend them) up to this size; a larger
/// body is refused with 413.
pub const MAX_BUFFERED_BODY: usize = 8 * 1024 * 1024;

/// What the gateway knows about a downstream connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// The address the client connected to.
    pub local: SocketAddr,
    /// The server, when the TLS handshake chose it; `None` on plaintext ports (chosen per
    /// request by `Host`).
    pub server: Option<Arc<ServerEntry>>,
    /// The client's SPIFFE ID (ISTIO_MUTUAL).
    pub peer_principal: Option<String>,
    /// The SNI the client sent.
    pub sni: Option<String>,
    /// Whether the downstream connection is TLS.
    pub tls: bool,
}

fn full(status: StatusCode, text: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(
        Full::new(text.into())
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Serves HTTP/1.1 and HTTP/2 on `io` until the client closes. When the gateway drains, the
/// connection is shut down gracefully: requests in flight finish, HTTP/1.1 answers carry
/// `Connection: close` and HTTP/2 clients get a GOAWAY.
pub async fn serve<IO>(shared: Arc<GatewayShared>, io: IO, conn: ConnInfo)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = Arc::new(conn);
    let drain = shared.drain.clone();
    let svc = service_fn(move |req| {
        let shared = shared.clone();
        let conn = conn.clone();
        async move { Ok::<_, Infallible>(handle(shared, &conn, req).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let connection = builder.serve_connection(TokioIo::new(io), svc);
    let result = crate::http::until_drained(&drain, connection, |c| c.graceful_shutdown()).await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "gateway: HTTP connection ended with an error");
    }
}

/// The request's host: `:authority` or `Host`, lower case, without the port; and the port if
/// one was written.
fn request_host(req: &Request<Incoming>) -> (String, Option<u16>) {
    let raw = req
        .uri()
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            req.headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    let raw = raw.rsplit_once('@').map_or(raw.as_str(), |(_, h)| h);
    // `[::1]:80`, `host:80`, `host`.
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        match rest.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':').and_then(|p| p.parse().ok())),
            None => (rest, None),
        }
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => (h, p.parse().ok()),
            _ => (raw, None),
        }
    };
    (host.trim_end_matches('.').to_ascii_lowercase(), port)
}

/// The original client address: with `trusted` hops in front of the gateway, the `trusted`-th
/// address from the right of X-Forwarded-For (Envoy's `xff_num_trusted_hops`); the connection's
/// peer when `trusted` is 0 or the header has fewer entries.
pub fn remote_ip(headers: &http::HeaderMap, trusted: usize, peer: IpAddr) -> IpAddr {
    if trusted == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    if entries.len() < trusted {
        return peer;
    }
    entries[entries.len() - trusted].parse().unwrap_or(peer)
}

struct Outcome {
    /// The request body size, when it was read.
    request_bytes: Option<u64>,
    service: String,
    principal: Option<String>,
    mtls: bool,
    flags: &'static str,
    detail: String,
}

impl Outcome {
    fn new(flags: &'static str, detail: impl Into<String>) -> Self {
        Outcome {
            request_bytes: None,
            service: "unknown".into(),
            principal: None,
            mtls: false,
            flags,
            detail: detail.into(),
        }
    }
}

async fn handle(
    shared: Arc<GatewayShared>,
    conn: &ConnInfo,
    req: Request<Incoming>,
) -> Response<Body> {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let (host, host_port) = request_host(&req);
    let grpc = req
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let request_bytes = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let (resp, outcome) = route(&shared, conn, req, &host, host_port).await;
    let code = resp.status().as_u16();
    let labels = HttpLabels {
        source_principal: shared.config.spiffe_id().as_str().to_owned(),
        source_workload: shared.config.workload_name().to_owned(),
        source_workload_namespace: shared.config.namespace.clone(),
        destination_principal: outcome
            .principal
            .clone()
            .unwrap_or_else(|| "unknown".into()),
        destination_workload_namespace: outcome
            .principal
            .as_deref()
            .and_then(|p| warden_identity::SpiffeId::parse(p).ok())
            .and_then(|id| id.namespace().map(str::to_owned))
            .unwrap_or_else(|| "unknown".into()),
        destination_service: outcome.service.clone(),
        request_protocol: if grpc { "grpc" } else { "http" },
        response_code: code,
        response_flags: outcome.flags,
        mutual_tls: outcome.mtls,
    };
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        gateway = shared.config.mode.as_str(),
        src = %conn.peer,
        peer_principal = conn.peer_principal.as_deref().unwrap_or("-"),
        method = %method,
        authority = %host,
        path = %path,
        code,
        flags = outcome.flags,
        upstream_service = %outcome.service,
        upstream_principal = outcome.principal.as_deref().unwrap_or("-"),
        detail = %outcome.detail,
        duration_ms = start.elapsed().as_millis() as u64,
        "request"
    );
    // The request is counted when the response body ends (or the client goes away), with the
    // duration until then and the bytes sent, as Envoy does.
    let request_bytes = outcome.request_bytes.unwrap_or(request_bytes);
    let (parts, body) = resp.into_parts();
    let counted = CountingBody {
        inner: body,
        bytes: 0,
        done: Some(Box::new(move |response_bytes| {
            shared
                .http_metrics
                .record(labels, start.elapsed(), request_bytes, response_bytes);
        })),
    };
    Response::from_parts(parts, counted.boxed())
}

type OnDone = Box<dyn FnOnce(u64) + Send + Sync>;

/// A response body that counts its data bytes and reports them once, at its end or when
/// dropped (the client went away).
struct CountingBody {
    inner: Body,
    bytes: u64,
    done: Option<OnDone>,
}

impl hyper::body::Body for CountingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        match &r {
            std::task::Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    self.bytes += d.len() as u64;
                }
            }
            std::task::Poll::Ready(None) => self.finish(),
            _ => {}
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

impl CountingBody {
    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            done(self.bytes);
        }
    }
}

impl Drop for CountingBody {
    fn drop(&mut self) {
        self.finish();
    }
}

async fn route(
    shared: &GatewayShared,
    conn: &ConnInfo,
    req: Request<Incoming>,
    host: &str,
    host_port: Option<u16>,
) -> (Response<Body>, Outcome) {
    let Some(table) = shared.table.load_full() else {
        return (
            full(
                StatusCode::SERVICE_UNAVAILABLE,
                "gateway config not loaded\n",
            ),
            Outcome::new("NR", "no config"),
        );
    };
    let port = conn.local.port();
    let server = match &conn.server {
        Some(s) => s.clone(),
        None => match table
            .ports
            .get(&port)
            .and_then(|p| p.server_for(Some(host)))
        {
            Some(s) => s.clone(),
            None => {
                return (
                    full(StatusCode::NOT_FOUND, "no gateway server for this host\n"),
                    Outcome::new("NR", format!("no server on port {port} for host {host:?}")),
                );
            }
        },
    };
    if server.https_redirect && !conn.tls {
        let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{host}{pq}");
        let mut r = full(StatusCode::MOVED_PERMANENTLY, "");
        if let Ok(v) = HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        return (r, Outcome::new("-", "httpsRedirect"));
    }

    // Authorization, before routing (Envoy's RBAC filter runs before the router).
    let remote = remote_ip(
        req.headers(),
        shared.config.num_trusted_proxies,
        conn.peer.ip(),
    );
    let norm = match warden_policy::normalize_path(
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        PathNormalization::Base,
    ) {
        Ok(p) => p,
        Err(e) => {
            return (
                full(StatusCode::BAD_REQUEST, format!("bad path: {e}\n")),
                Outcome::new("-", format!("bad path: {e}")),
            );
        }
    };
    {
        let cc = ConnectionContext {
            peer_principal: conn.peer_principal.as_deref(),
            source_ip: conn.peer.ip(),
            remote_ip: remote,
            destination_ip: conn.local.ip(),
            destination_port: port,
            sni: conn.sni.as_deref(),
        };
        let hr = HttpRequest {
            method: req.method().as_str(),
            host,
            path: &norm,
            headers: req.headers(),
            auth: None,
        };
        let decision = table
            .policy
            .authz
            .evaluate(&warden_policy::Request::http(cc, hr), &NoExtAuthz);
        if !decision.is_allowed() {
            return (
                full(StatusCode::FORBIDDEN, "RBAC: access denied"),
                Outcome::new("-", format!("denied: {decision}")),
            );
        }
    }

    // Routing.
    let pq = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let matched = server.vhost(host).and_then(|vh| {
        vh.http.iter().find(|r| {
            r.matches.is_empty() || r.matches.iter().any(|m| m.matches(&pq, req.headers()))
        })
    });
    let direct;
    let (action, retry, timeout): (Option<&RouteAction>, RetryPolicy, Option<Duration>) =
        match matched {
            Some(r) => match &r.action {
                RouteAction::Redirect {
                    uri,
                    authority,
                    scheme,
                    code,
                } => {
                    let scheme = if scheme.is_empty() {
                        if conn.tls { "https" } else { "http" }
                    } else {
                        scheme.as_str()
                    };
                    let auth = if authority.is_empty() {
                        host
                    } else {
                        authority
                    };
                    let uri = if uri.is_empty() { pq.as_str() } else { uri };
                    let mut resp = full(
                        StatusCode::from_u16(*code).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                        "",
                    );
                    if let Ok(v) = HeaderValue::from_str(&format!("{scheme}://{auth}{uri}")) {
                        resp.headers_mut().insert(header::LOCATION, v);
                    }
                    return (resp, Outcome::new("-", format!("redirect by {}", r.name)));
                }
                RouteAction::Forward { retry, timeout, .. } => (Some(&r.action), *retry, *timeout),
            },
            None => (None, RetryPolicy::ISTIO_DEFAULT, None),
        };
    let target: Arc<Target> = match action.and_then(RouteAction::pick) {
        Some(t) => t.clone(),
        None if action.is_none() && super::table::allows_direct_routes(shared.config.mode) => {
            let allow_any =
                shared.config.outbound_traffic_policy == OutboundTrafficPolicy::AllowAny;
            match table.direct_target(host, host_port, allow_any) {
                Some(t) => {
                    direct = Arc::new(t);
                    direct.clone()
                }
                None => {
                    return (
                        full(
                            StatusCode::BAD_GATEWAY,
                            format!(
                                "{host} is not a known service (outboundTrafficPolicy REGISTRY_ONLY)\n"
                            ),
                        ),
                        Outcome::new("NR", format!("{host} not in the registry (REGISTRY_ONLY)")),
                    );
                }
            }
        }
        None => {
            return (
                full(StatusCode::NOT_FOUND, "no route\n"),
                Outcome::new("NR", format!("no route for {host}{pq} on {}", server.name)),
            );
        }
    };
    forward(shared, &table, conn, req, action, target, retry, timeout).await
}

fn strip_hop_headers(h: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
        "te",
        "trailer",
    ] {
        h.remove(name);
    }
}

#[allow(clippy::too_many_arguments)]
async fn forward(
    shared: &GatewayShared,
    _table: &GatewayTable,
    conn: &ConnInfo,
    req: Request<Incoming>,
    action: Option<&RouteAction>,
    first: Arc<Target>,
    retry: RetryPolicy,
    timeout: Option<Duration>,
) -> (Response<Body>, Outcome) {
    let (mut parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_BUFFERED_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            let too_big = e
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some();
            return if too_big {
                (
                    full(StatusCode::PAYLOAD_TOO_LARGE, "request body too large\n"),
                    Outcome::new("-", "request body over the buffer limit"),
                )
            } else {
                (
                    full(StatusCode::BAD_REQUEST, "request body could not be read\n"),
                    Outcome::new("DC", format!("downstream body: {e}")),
                )
            };
        }
    };
    // Upstream requests are HTTP/1.1 in origin form with a Host header.
    let authority = parts
        .uri
        .authority()
        .map(|a| a.as_str().to_owned())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_owned)
        })
        .unwrap_or_default();
    strip_hop_headers(&mut parts.headers);
    if let Ok(v) = HeaderValue::from_str(&authority) {
        parts.headers.insert(header::HOST, v);
    }
    let xff = match parts
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
    {
        Some(prev) => format!("{prev}, {}", conn.peer.ip()),
        None => conn.peer.ip().to_string(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        parts.headers.insert("x-forwarded-for", v);
    }
    parts.headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if conn.tls { "https" } else { "http" }),
    );
    let pq = parts
        .uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let uri: Uri = pq.parse().unwrap_or_else(|_| Uri::from_static("/"));

    let up = UpReq {
        method: parts.method,
        uri,
        headers: parts.headers,
        body,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    let mut target = first;
    let mut attempt = 0u32;
    loop {
        let mut per_try = retry.per_try_timeout;
        if let Some(d) = deadline {
            let left = d.saturating_duration_since(Instant::now());
            per_try = Some(per_try.map_or(left, |p| p.min(left)));
        }
        let once = attempt_once(shared, &target, &up);
        let result = match per_try {
            Some(t) => tokio::time::timeout(t, once).await.map_err(|_| ()),
            None => Ok(once.await),
        };
        let overall_expired = deadline.is_some_and(|d| Instant::now() >= d);
        let may_retry = attempt < retry.attempts && !overall_expired;
        let mut out = Outcome::new("-", String::new());
        out.request_bytes = Some(up.body.len() as u64);
        out.service = target.host.clone();
        out.mtls = target.is_mesh();
        match result {
            Ok(Ok((resp, sec))) => {
                let status = resp.status();
                let retryable = (retry.on.status_5xx && status.is_server_error())
                    || (retry.on.gateway_error && matches!(status.as_u16(), 502..=504));
                if retryable && may_retry {
                    attempt += 1;
                    tracing::debug!(%status, attempt, host = %target.host, "gateway: retrying");
                } else {
                    if let Security::Mesh(id) = &sec {
                        out.principal = Some(id.as_str().to_owned());
                    }
                    out.detail = format!("attempts {}", attempt + 1);
                    let (mut p, b) = resp.into_parts();
                    strip_hop_headers(&mut p.headers);
                    return (Response::from_parts(p, b.boxed()), out);
                }
            }
            Ok(Err(AttemptError::Upstream(e))) => {
                // Connection failures: `connect-failure`, and the 5xx families (Envoy answers
                // them with 503).
                let on = retry.on;
                if may_retry && (on.connect_failure || on.status_5xx || on.gateway_error) {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "gateway: upstream failed, retrying");
                } else {
                    out.flags = match e {
                        UpstreamError::NoEndpoint(_) => "UH",
                        _ if attempt > 0 => "URX",
                        _ => "UF",
                    };
                    out.detail = e.to_string();
                    return (
                        full(
                            StatusCode::SERVICE_UNAVAILABLE,
                            format!("upstream connect error: {e}\n"),
                        ),
                        out,
                    );
                }
            }
            Ok(Err(AttemptError::Reset(e))) => {
                if may_retry && (retry.on.reset || retry.on.status_5xx || retry.on.gateway_error) {
                    attempt += 1;
                } else {
                    out.flags = "UC";
                    out.detail = e;
                    return (
                        full(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "upstream connection reset\n",
                        ),
                        out,
                    );
                }
            }
            Err(()) => {
                if may_retry && (retry.on.status_5xx || retry.on.gateway_error) {
                    attempt += 1;
                } else {
                    out.flags = "UT";
                    out.detail = "upstream request timeout".into();
                    return (
                        full(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                        out,
                    );
                }
            }
        }
        // Next attempt: a new pick of the route's destinations, after a short backoff
        // (Envoy's 25 ms base interval).
        if let Some(t) = action.and_then(RouteAction::pick) {
            target = t.clone();
        }
        tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt))).await;
    }
}

enum AttemptError {
    Upstream(UpstreamError),
    Reset(String),
}

/// An upstream request that can be sent again (retries, a stale pooled connection).
struct UpReq {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
    body: Bytes,
}

impl UpReq {
    fn build(&self) -> Request<Full<Bytes>> {
        let mut r = Request::new(Full::new(self.body.clone()));
        *r.method_mut() = self.method.clone();
        *r.uri_mut() = self.uri.clone();
        *r.headers_mut() = self.headers.clone();
        r
    }

    fn idempotent(&self) -> bool {
        use http::Method;
        matches!(
            self.method,
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::PUT
                | Method::DELETE
                | Method::TRACE
        )
    }
}

/// One attempt: an idle pooled connection to the picked endpoint if there is one (a request
/// that was not sent on it, or an idempotent one that got no answer because the connection
/// was closing, goes on a new connection), else a new connection.
async fn attempt_once(
    shared: &GatewayShared,
    target: &Target,
    req: &UpReq,
) -> Result<(Response<Incoming>, Security), AttemptError> {
    let (addr, port) = target
        .pick()
        .ok_or_else(|| AttemptError::Upstream(UpstreamError::NoEndpoint(target.host.clone())))?;
    let key = PoolKey::new(target, (&addr, port));
    let h2 = target.http2();
    let build = || {
        let mut r = req.build();
        if h2 {
            // HTTP/2 carries the authority in `:authority`, from an absolute URI.
            let authority = r
                .headers_mut()
                .remove(header::HOST)
                .and_then(|h| h.to_str().ok().map(str::to_owned))
                .unwrap_or_else(|| target.host.clone());
            let scheme = if target.origination.is_some() || target.is_mesh() {
                "https"
            } else {
                "http"
            };
            let pq = r.uri().path_and_query().map_or("/", |p| p.as_str());
            if let Ok(u) = format!("{scheme}://{authority}{pq}").parse::<Uri>() {
                *r.uri_mut() = u;
            }
            *r.version_mut() = http::Version::HTTP_2;
        }
        r
    };
    if let Some((mut sender, sec)) = shared.pool.take(&key) {
        let is_h1 = matches!(sender, Sender::H1(_));
        match sender.send(build()).await {
            Ok(resp) => {
                if is_h1 {
                    shared.pool.put(key, sender, sec.clone());
                }
                return Ok((resp, sec));
            }
            Err(e) if e.is_canceled() || (req.idempotent() && e.is_incomplete_message()) => {
                tracing::debug!(error = %e, "gateway: pooled connection was closing; using a new one");
            }
            Err(e) => return Err(AttemptError::Reset(e.to_string())),
        }
    }
    let (io, sec) = upstream::connect_endpoint(
        &shared.tls,
        target,
        (&addr, port),
        if h2 { Alpn::Http2 } else { Alpn::Http11 },
        false,
        shared.config.connect_timeout,
        shared.config.handshake_timeout,
    )
    .await
    .map_err(AttemptError::Upstream)?;
    let mut sender = if h2 {
        let (sender, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(|e| AttemptError::Reset(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gateway: upstream HTTP/2 connection ended with an error");
            }
        });
        let sender = Sender::H2(sender);
        // Shared from the start: concurrent requests multiplex on it.
        if let Sender::H2(s) = &sender {
            shared
                .pool
                .put(key.clone(), Sender::H2(s.clone()), sec.clone());
        }
        sender
    } else {
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| AttemptError::Reset(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "gateway: upstream connection ended with an error");
            }
        });
        Sender::H1(sender)
    };
    let resp = sender
        .send(build())
        .await
        .map_err(|e| AttemptError::Reset(e.to_string()))?;
    if matches!(sender, Sender::H1(_)) {
        shared.pool.put(key, sender, sec.clone());
    }
    Ok((resp, sec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xff_with_trusted_hops() {
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        let mut h = http::HeaderMap::new();
        assert_eq!(remote_ip(&h, 1, peer), peer);
        h.insert(
            "x-forwarded-for",
            "192.0.2.10, 203.0.113.1".parse().unwrap(),
        );
        assert_eq!(remote_ip(&h, 0, peer), peer);
        assert_eq!(
            remote_ip(&h, 1, peer),
            "203.0.113.1".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            remote_ip(&h, 2, peer),
            "192.0.2.10".parse::<IpAddr>().unwrap()
        );
        assert_eq!(remote_ip(&h, 3, peer), peer);
        h.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(remote_ip(&h, 1, peer), peer);
    }
}
