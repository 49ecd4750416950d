//! Inbound HTTP (after TLS, if any): per request, in Envoy's filter order,
//! 1. path normalization (`400` on `%00`);
//! 2. RequestAuthentication (JWT): `401` for a bad token, `403` for a disallowed audience;
//! 3. CUSTOM ext_authz, then DENY and ALLOW AuthorizationPolicy: `403 RBAC: access denied`,
//!    or the provider's denial;
//! 4. rewrite: token header removed unless `forwardOriginalToken`, claim/payload headers,
//!    `X-Forwarded-Client-Cert` replaced, ext_authz headers, hop-by-hop headers dropped;
//! 5. forward to the app on loopback from 127.0.0.6 over a keep-alive pool (HTTP/2 when the
//!    port is declared http2/grpc or the client spoke h2c), bodies streamed both ways,
//!    upgrades spliced; `503`/`502` with Envoy's reason when the app fails.
//!
//! The policy is read per request (one atomic load), so a policy change applies to the next
//! request on every open connection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Either};
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use warden_policy::jwt::{JwtFailure, JwtOutcome, RequestView};
use warden_policy::registry::Protocol;
use warden_policy::{
    ConnectionContext, ExtAuthzDenial, ExtAuthzError, ExtAuthzVerdict, HttpRequest,
    PathNormalization, Request as AuthzRequest, RequestAuth, normalize_path,
};

use super::ext_authz::Outcome;
use super::prefetch::{self, Prefetched};
use super::record::{Exchange, RecordedBody, access_log_enabled};
use super::{Body, UpstreamFailure, is_grpc, is_upgrade, strip_hop_by_hop, text, xfcc};
use crate::metrics::{HttpLabels, HttpSeries, Reporter};
use crate::state::Shared;

/// What the mTLS handshake told about the peer.
#[derive(Debug, Clone)]
pub struct PeerTls {
    /// The peer's SPIFFE ID.
    pub principal: Arc<str>,
    /// The `X-Forwarded-Client-Cert` value for its requests.
    pub xfcc: Option<HeaderValue>,
}

impl PeerTls {
    /// From the peer's verified identity and leaf certificate (DER).
    pub fn new(shared: &Shared, principal: &str, leaf_der: Option<&[u8]>) -> Self {
        let xfcc = leaf_der.and_then(|der| xfcc::value(&shared.l7.own_id, der, principal));
        Self {
            principal: principal.into(),
            xfcc,
        }
    }
}

/// Per-connection state, built once.
struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    dst: SocketAddr,
    app: SocketAddr,
    /// `app` as a URI authority, parsed once.
    app_authority: http::uri::Authority,
    tls: Option<PeerTls>,
    /// The app protocol declared for the port in the local registry: `Some(true)` for
    /// http2/grpc, `Some(false)` for http; `None` when not declared.
    declared_h2: Option<bool>,
    series: Arc<HttpSeries>,
}

/// Serves HTTP on an accepted inbound connection until it closes (or drains).
pub async fn serve<S>(
    shared: Arc<Shared>,
    io: S,
    speaks: super::Speaks,
    peer: SocketAddr,
    dst: SocketAddr,
    tls: Option<PeerTls>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = shared.registry.load().lookup(dst);
    let declared_h2 = service.as_ref().and_then(|s| match s.protocol() {
        Protocol::Http2 | Protocol::Grpc | Protocol::GrpcWeb => Some(true),
        Protocol::Http => Some(false),
        _ => None,
    });
    let id = &shared.config.identity;
    let unknown: Arc<str> = Arc::from("unknown");
    let source_ns: Arc<str> = tls
        .as_ref()
        .and_then(|t| warden_identity::SpiffeId::parse(&t.principal).ok())
        .and_then(|p| p.namespace().map(Arc::from))
        .unwrap_or_else(|| unknown.clone());
    let series = shared.metrics.http(HttpLabels {
        reporter: Reporter::Destination,
        source_principal: tls
            .as_ref()
            .map(|t| t.principal.clone())
            .unwrap_or_else(|| unknown.clone()),
        source_workload: unknown.clone(),
        source_workload_namespace: source_ns,
        destination_principal: if tls.is_some() {
            shared.l7.own_id.clone()
        } else {
            unknown.clone()
        },
        destination_workload: id.workload_name().into(),
        destination_workload_namespace: id.namespace.as_str().into(),
        destination_service: service
            .as_ref()
            .map(|s| Arc::from(s.hostname()))
            .unwrap_or(unknown),
        mutual_tls: tls.is_some(),
    });
    let app = SocketAddr::new(shared.config.inbound.app_host, dst.port());
    let Ok(app_authority) = http::uri::Authority::try_from(app.to_string()) else {
        return;
    };
    let conn = Arc::new(Conn {
        app,
        app_authority,
        shared: shared.clone(),
        peer,
        dst,
        tls,
        declared_h2,
        series,
    });
    let handle = |conn: Arc<Conn>, req| async move { handle(&conn, req).await };
    if let Err(e) = super::serve_connection(&shared, io, speaks, conn, handle).await {
        tracing::debug!(%peer, error = %e, "inbound HTTP connection ended with an error");
    }
}

/// Envoy's local reply body for a JWT failure.
fn jwt_body(f: &JwtFailure) -> &'static str {
    match f.kind() {
        "expired" => "Jwt is expired",
        "not_yet_valid" => "Jwt not yet valid",
        "audience_not_allowed" => "Audiences in Jwt are not allowed",
        "unknown_issuer" | "issuer_not_allowed_here" => "Jwt issuer is not configured",
        "no_matching_key" => "Jwks doesn't have key to match kid or alg from Jwt",
        "keys_not_fetched" | "keys_unavailable" => "Jwks remote fetch is failed",
        "malformed" => {
            "Jwt is not in the form of Header.Payload.Signature with two dots and 3 sections"
        }
        _ => "Jwt verification fails",
    }
}

/// Removes the query parameters `names` (JWT `fromParams` tokens) from `query`.
fn strip_params(query: &str, names: &[String]) -> String {
    query
        .split('&')
        .filter(|kv| {
            let k = kv.split_once('=').map_or(*kv, |(k, _)| k);
            !names.iter().any(|n| n == k)
        })
        .collect::<Vec<_>>()
        .join("&")
}

async fn handle(conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let shared = &conn.shared;
    let l7 = &shared.l7;
    let (mut parts, body) = req.into_parts();
    let raw = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let normalized = normalize_path(raw, PathNormalization::Base);
    let host: Box<str> = parts
        .uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| {
            parts
                .headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
        })
        .unwrap_or("")
        .into();
    let grpc = is_grpc(&parts.headers);
    let mut exchange = Box::new(Exchange {
        start,
        direction: "inbound",
        method: parts.method.clone(),
        path: normalized.as_deref().unwrap_or(raw).into(),
        authority: host,
        status: 0,
        flags: "-",
        grpc,
        series: conn.series.clone(),
        request_bytes: None,
        downstream: conn.peer,
        dst: conn.dst,
        upstream: None,
        detail: "".into(),
        access_log: access_log_enabled(l7.access_log),
    });
    let Ok(path) = normalized else {
        return local(exchange, text(StatusCode::BAD_REQUEST, "Bad Request"), "-");
    };
    let Some(policy) = shared.policy.load_full() else {
        return local(
            exchange,
            text(StatusCode::SERVICE_UNAVAILABLE, "no config loaded"),
            "-",
        );
    };

    // RequestAuthentication.
    let jwt: Option<JwtOutcome> = match l7.jwt.get(&policy) {
        Ok(auth) if auth.is_empty() => None,
        Ok(auth) => match auth.authenticate(&parts, SystemTime::now()) {
            Ok(o) => o,
            Err(f) => {
                exchange.detail = format!("JWT {}: {f}", f.kind()).into();
                let status =
                    StatusCode::from_u16(f.status_code()).unwrap_or(StatusCode::UNAUTHORIZED);
                let mut r = text(status, jwt_body(&f));
                if status == StatusCode::UNAUTHORIZED {
                    r.headers_mut().insert(
                        header::WWW_AUTHENTICATE,
                        HeaderValue::from_static("Bearer error=\"invalid_token\""),
                    );
                }
                return local(exchange, r, "-");
            }
        },
        Err(why) => {
            if parts.first_header("authorization").is_some() {
                exchange.detail = format!("RequestAuthentication unusable: {why}").into();
                return local(
                    exchange,
                    text(StatusCode::UNAUTHORIZED, "Jwt verification fails"),
                    "-",
                );
            }
            None
        }
    };

    // Authorization: CUSTOM (ext_authz), DENY, ALLOW.
    let mut cx = ConnectionContext::new(conn.peer.ip(), conn.dst.ip(), conn.dst.port());
    if let Some(t) = &conn.tls {
        cx = cx.with_peer(&t.principal);
    }
    let authz = &policy.compiled.authz;
    let mut ext_upstream = Vec::new();
    let mut ext_downstream = Vec::new();
    let mut ext_deny: Option<Response<Body>> = None;
    let mut ext_error_status = StatusCode::FORBIDDEN;
    let denied = {
        let areq = AuthzRequest::http(
            cx,
            HttpRequest {
                method: parts.method.as_str(),
                host: &exchange.authority,
                path: &path,
                headers: &parts.headers,
                auth: jwt.as_ref().map(|o| RequestAuth::new(&o.claims)),
            },
        );
        let custom = authz.custom_match(&areq);
        let answer = match custom.filter(|c| !c.conflict) {
            None => None,
            Some(c) => {
                // A call out, boxed so the future of every request stays small.
                let out = Box::pin(l7.ext_authz.check(
                    c.provider,
                    &parts.method,
                    raw,
                    &exchange.authority,
                    &parts.headers,
                ))
                .await;
                Some(match out {
                    Outcome::Allow {
                        upstream,
                        downstream,
                    } => {
                        ext_upstream = upstream;
                        ext_downstream = downstream;
                        Ok(ExtAuthzVerdict::Allow)
                    }
                    Outcome::Deny(resp) => {
                        let status = resp.status().as_u16();
                        ext_deny = Some(resp);
                        Ok(ExtAuthzVerdict::Deny(ExtAuthzDenial {
                            status,
                            reason: format!("provider answered {status}"),
                        }))
                    }
                    Outcome::Error(status, reason) => {
                        ext_error_status = status;
                        Err(ExtAuthzError::Unavailable {
                            provider: c.provider.to_owned(),
                            reason,
                        })
                    }
                })
            }
        };
        let decision = authz.finish(&areq, custom, answer);
        if exchange.access_log || !decision.is_allowed() {
            exchange.detail = decision.to_string().into();
        }
        match decision.reason {
            _ if decision.is_allowed() => None,
            warden_policy::Reason::CustomDenied { .. } => Some(Deny::Provider),
            warden_policy::Reason::CustomFailed { .. } => Some(Deny::ProviderError),
            _ => Some(Deny::Rbac),
        }
    };
    if let Some(deny) = denied {
        return match (deny, ext_deny) {
            (Deny::Provider, Some(resp)) => local(exchange, resp, "UAEX"),
            (Deny::ProviderError, _) => local(exchange, super::text(ext_error_status, ""), "UAEX"),
            _ => local(
                exchange,
                text(StatusCode::FORBIDDEN, "RBAC: access denied"),
                "-",
            ),
        };
    }

    // CONNECT: the app is a proxy; hand it the CONNECT and splice once it accepts.
    if parts.method == http::Method::CONNECT && parts.version == Version::HTTP_11 {
        match conn.tls.as_ref().and_then(|t| t.xfcc.clone()) {
            Some(v) => {
                parts.headers.insert(&xfcc::XFCC, v);
            }
            None => {
                parts.headers.remove(&xfcc::XFCC);
            }
        }
        return Box::pin(connect_app(conn, exchange, parts, body)).await;
    }

    // Rewrite the request for the app.
    let upgrade = parts.version == Version::HTTP_11 && is_upgrade(&parts.headers);
    let on_downstream_upgrade = if upgrade {
        parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
    } else {
        None
    };
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let mut query_owned = None;
    if let Some(o) = &jwt {
        for h in &o.headers_to_remove {
            parts.headers.remove(h.as_str());
        }
        for (k, v) in &o.headers_to_set {
            if let (Ok(k), Ok(v)) = (
                header::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                parts.headers.insert(k, v);
            }
        }
        if !o.params_to_remove.is_empty()
            && let Some(q) = parts.uri.query()
        {
            query_owned = Some(strip_params(q, &o.params_to_remove));
        }
    }
    match conn.tls.as_ref().and_then(|t| t.xfcc.clone()) {
        Some(v) => {
            parts.headers.insert(&xfcc::XFCC, v);
        }
        None => {
            parts.headers.remove(&xfcc::XFCC);
        }
    }
    for (k, v) in ext_upstream {
        parts.headers.insert(k, v);
    }
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&exchange.authority)
    {
        parts.headers.insert(header::HOST, v);
    }
    let query = query_owned.as_deref().or_else(|| parts.uri.query());
    let pq = match query {
        Some(q) if !q.is_empty() => format!("{path}?{q}"),
        _ => path,
    };
    let downstream_version = parts.version;
    // The declared port protocol decides (Istio's rule). Undeclared: gRPC needs HTTP/2, and a
    // plaintext client's HTTP/2 is the app's; anything else from a peer sidecar (which always
    // sends HTTP/2) goes to the app as HTTP/1.1.
    let h2 = conn
        .declared_h2
        .unwrap_or(exchange.grpc || (conn.tls.is_none() && downstream_version == Version::HTTP_2));
    // HTTP/2 keeps the request's authority (the pooled connection is the app's); HTTP/1.1
    // sends the origin form and carries the authority in Host.
    let uri = if h2 {
        let authority = http::uri::Authority::try_from(&*exchange.authority)
            .unwrap_or_else(|_| conn.app_authority.clone());
        Uri::builder()
            .scheme("http")
            .authority(authority)
            .path_and_query(pq)
            .build()
            .ok()
    } else {
        Uri::try_from(pq).ok()
    };
    parts.uri = match uri {
        Some(u) => u,
        None => return local(exchange, text(StatusCode::BAD_REQUEST, "Bad Request"), "-"),
    };
    parts.version = if h2 {
        Version::HTTP_2
    } else {
        Version::HTTP_11
    };
    let body = exchange.request_body(body);
    let upstream_req = Request::from_parts(parts, body);
    exchange.upstream = Some(conn.app);
    let result = if h2 {
        send_h2(conn, upstream_req)
            .await
            .map(|r| r.map(Either::Right))
    } else {
        l7.app
            .send_h1(conn.app, upstream_req)
            .await
            .map(|r| r.map(Either::Left))
            .map_err(|e| (UpstreamFailure::of_h1(&e), e.to_string()))
    };
    match result {
        Ok(mut resp) => {
            let resp = if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                if let Some(down) = on_downstream_upgrade {
                    let up = hyper::upgrade::on(&mut resp);
                    super::upgrade::splice(down, up, shared.drain.track());
                }
                resp.map(Prefetched::passthrough)
            } else {
                strip_hop_by_hop(resp.headers_mut(), false);
                prefetch::first_frame(resp).await
            };
            let mut resp = resp;
            for (k, v) in ext_downstream {
                resp.headers_mut().insert(k, v);
            }
            *resp.version_mut() = downstream_version;
            exchange.status = resp.status().as_u16();
            resp.map(|b| RecordedBody::new(b, exchange).boxed())
        }
        Err((failure, e)) => {
            tracing::info!(app = %conn.app, error = %e, "inbound HTTP: app request failed");
            exchange.detail = format!("{}: {e}", exchange.detail).into();
            local(exchange, failure.response(), failure.flag())
        }
    }
}

/// Forwards a CONNECT to the app on a connection of its own (HTTP/1.1 with upgrades, from the
/// source address) and splices both sides after a 2xx.
async fn connect_app(
    conn: &Conn,
    mut exchange: Box<Exchange>,
    mut parts: http::request::Parts,
    body: Incoming,
) -> Response<Body> {
    let shared = &conn.shared;
    let on_downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    exchange.upstream = Some(conn.app);
    let connected = async {
        let tcp = crate::inbound::connect_app(shared, conn.app)
            .await
            .map_err(|e| e.to_string())?;
        let send = super::h1pool::handshake(tcp, conn.app)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(send)
    }
    .await;
    let mut send = match connected {
        Ok(s) => s,
        Err(e) => {
            exchange.detail = format!("{}: {e}", exchange.detail).into();
            return local(exchange, UpstreamFailure::Connect.response(), "UF");
        }
    };
    let body = exchange.request_body(body);
    match send.send_request(Request::from_parts(parts, body)).await {
        Ok(mut resp) => {
            if resp.status().is_success()
                && let Some(down) = on_downstream
            {
                let up = hyper::upgrade::on(&mut resp);
                super::upgrade::splice(down, up, shared.drain.track());
            }
            exchange.status = resp.status().as_u16();
            resp.map(|b| RecordedBody::new(b, exchange).boxed())
        }
        Err(e) => {
            let failure = UpstreamFailure::of_hyper(&e);
            exchange.detail = format!("{}: {e}", exchange.detail).into();
            local(exchange, failure.response(), failure.flag())
        }
    }
}

/// Sends a request to the app over the pooled HTTP/2 connection of its port; a request never
/// sent because that connection had just closed is retried once on a new one.
async fn send_h2(
    conn: &Conn,
    mut req: Request<Body>,
) -> Result<Response<Incoming>, (UpstreamFailure, String)> {
    let peers = &conn.shared.l7.peers;
    let source = conn.shared.config.inbound.source_address;
    for attempt in 0..2 {
        let mut send = peers
            .get_app(conn.app, source)
            .await
            .map_err(|e| (UpstreamFailure::Connect, e.to_string()))?;
        match send.try_send_request(req).await {
            Ok(r) => return Ok(r),
            Err(mut e) => match e.take_message() {
                Some(back) if attempt == 0 => {
                    peers.evict_app(conn.app);
                    req = back;
                }
                _ => {
                    let e = e.into_error();
                    return Err((UpstreamFailure::of_hyper(&e), e.to_string()));
                }
            },
        }
    }
    Err((UpstreamFailure::Reset, "retry exhausted".into()))
}

/// Answers locally, recording the exchange when the reply body ends.
fn local(mut exchange: Box<Exchange>, resp: Response<Body>, flags: &'static str) -> Response<Body> {
    exchange.status = resp.status().as_u16();
    exchange.flags = flags;
    resp.map(|b| RecordedBody::new(b, exchange).boxed())
}

/// How a denied request is answered.
#[derive(Debug, Clone, Copy)]
enum Deny {
    /// `403 RBAC: access denied`.
    Rbac,
    /// The ext_authz provider's own answer.
    Provider,
    /// The provider could not answer: `statusOnError`, empty body.
    ProviderError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_params_are_removed_from_the_query() {
        assert_eq!(
            strip_params("a=1&access_token=xyz&b=2", &["access_token".into()]),
            "a=1&b=2"
        );
        assert_eq!(strip_params("access_token=x", &["access_token".into()]), "");
    }
}
