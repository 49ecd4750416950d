//! Outbound HTTP: requests from the app (HTTP/1.1, or HTTP/2 with prior knowledge) to a mesh
//! HTTP service. HTTP/1.x requests go to the peer sidecar as HTTP/1.1 over a pooled keep-alive
//! mTLS connection ([`super::mesh_h1`], Istio's default: no upgrade to HTTP/2); HTTP/2 and gRPC
//! requests go over the pooled HTTP/2 mTLS connection ([`super::pool`]); both verify the peer
//! against the service's identities (secure naming). Upgrades (WebSocket) and CONNECT take a
//! dedicated HTTP/1.1 mTLS connection (ALPN `istio-http/1.1`) that is spliced after the
//! `101`/`2xx`. A request that was never sent on a pooled connection that just closed is
//! retried once on a new one.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use tokio::net::TcpStream;
use warden_identity::tls::Alpn;

use super::prefetch;
use super::record::{Exchange, RecordedBody, access_log_enabled};
use super::{Body, UpstreamFailure, is_grpc, is_upgrade, strip_hop_by_hop, text};
use crate::metrics::{HttpLabels, HttpSeries, Reporter};
use crate::registry::Service;
use crate::state::Shared;

struct Conn {
    shared: Arc<Shared>,
    peer: SocketAddr,
    dst: SocketAddr,
    /// `destination_service`.
    hostname: Arc<str>,
    unknown: Arc<str>,
    /// The series per peer identity seen on this connection (usually one).
    series: Mutex<Vec<(Arc<str>, Arc<HttpSeries>)>>,
}

impl Conn {
    fn series(&self, peer: Option<&Arc<str>>) -> Arc<HttpSeries> {
        let key: Arc<str> = peer.unwrap_or(&self.unknown).clone();
        {
            let s = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, v)) = s.iter().find(|(k, _)| *k == key) {
                return v.clone();
            }
        }
        let id = &self.shared.config.identity;
        let ns: Arc<str> = warden_identity::SpiffeId::parse(&key)
            .ok()
            .and_then(|p| p.namespace().map(Arc::from))
            .unwrap_or_else(|| Arc::from("unknown"));
        let series = self.shared.metrics.http(HttpLabels {
            reporter: Reporter::Source,
            source_principal: self.shared.l7.own_id.clone(),
            source_workload: id.workload_name().into(),
            source_workload_namespace: id.namespace.as_str().into(),
            destination_principal: key.clone(),
            destination_workload: Arc::from("unknown"),
            destination_workload_namespace: ns,
            destination_service: self.hostname.clone(),
            mutual_tls: true,
        });
        self.series
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((key, series.clone()));
        series
    }
}

/// Serves the app's HTTP connection to `dst` (a mesh HTTP service) until it closes or drains.
/// The registry is consulted per request, so endpoints and identities follow config changes.
pub async fn serve(
    shared: Arc<Shared>,
    client: TcpStream,
    speaks: super::Speaks,
    peer: SocketAddr,
    dst: SocketAddr,
    service: Arc<Service>,
) {
    let conn = Arc::new(Conn {
        shared: shared.clone(),
        peer,
        dst,
        hostname: service.hostname().into(),
        unknown: Arc::from("unknown"),
        series: Mutex::new(Vec::new()),
    });
    let handle = |conn: Arc<Conn>, req| async move { handle(&conn, req).await };
    if let Err(e) = super::serve_connection(&shared, client, speaks, conn, handle).await {
        tracing::debug!(%peer, %dst, error = %e, "outbound HTTP connection ended with an error");
    }
}

fn local(mut exchange: Box<Exchange>, resp: Response<Body>, flags: &'static str) -> Response<Body> {
    exchange.status = resp.status().as_u16();
    exchange.flags = flags;
    resp.map(|b| RecordedBody::new(b, exchange).boxed())
}

async fn handle(conn: &Conn, req: Request<Incoming>) -> Response<Body> {
    let start = Instant::now();
    let shared = &conn.shared;
    let l7 = &shared.l7;
    let (mut parts, body) = req.into_parts();
    let authority: Box<str> = parts
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
        .unwrap_or_else(|| conn.dst.to_string())
        .into();
    let pq: Box<str> = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .into();
    let mut exchange = Box::new(Exchange {
        start,
        direction: "outbound",
        method: parts.method.clone(),
        path: pq,
        authority,
        status: 0,
        flags: "-",
        grpc: is_grpc(&parts.headers),
        series: conn.series(None),
        request_bytes: None,
        downstream: conn.peer,
        dst: conn.dst,
        upstream: None,
        detail: "".into(),
        access_log: access_log_enabled(l7.access_log),
    });
    let service = match shared.registry.load().lookup(conn.dst) {
        Some(s) if s.is_mesh() => s,
        _ => {
            exchange.detail = "the destination is no longer a mesh service".into();
            return local(
                exchange,
                text(StatusCode::SERVICE_UNAVAILABLE, "no healthy upstream"),
                "NR",
            );
        }
    };
    let endpoint = service.pick_endpoint(conn.dst);
    exchange.upstream = Some(endpoint);
    let downstream_version = parts.version;
    let upgrade = downstream_version == Version::HTTP_11
        && (is_upgrade(&parts.headers) || parts.method == Method::CONNECT);
    let uri = if parts.method == Method::CONNECT {
        Uri::builder().authority(&*exchange.authority).build()
    } else {
        Uri::builder()
            .scheme("http")
            .authority(&*exchange.authority)
            .path_and_query(&*exchange.path)
            .build()
    };
    parts.uri = match uri {
        Ok(u) => u,
        Err(_) => return local(exchange, text(StatusCode::BAD_REQUEST, "Bad Request"), "-"),
    };
    if !parts.headers.contains_key(header::HOST)
        && let Ok(v) = HeaderValue::from_str(&exchange.authority)
    {
        parts.headers.insert(header::HOST, v);
    }
    strip_hop_by_hop(&mut parts.headers, upgrade);
    let body = exchange.request_body(body);
    if upgrade {
        // Rare and large: boxed, so the common path's future stays small.
        return Box::pin(upgrade_request(
            conn, &service, exchange, endpoint, parts, body,
        ))
        .await;
    }
    if downstream_version != Version::HTTP_2 {
        // Istio's default (`h2UpgradePolicy: DO_NOT_UPGRADE`): HTTP/1.x stays HTTP/1.1 to the
        // peer sidecar, on a pooled keep-alive mTLS connection (ALPN `istio-http/1.1`).
        return send_h1(conn, &service, exchange, endpoint, parts, body).await;
    }
    let mut req = Request::from_parts(parts, body);
    let mut attempt = 0;
    let result = loop {
        attempt += 1;
        let pc = match l7.peers.get(shared, endpoint, service.identities()).await {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(dst = %conn.dst, %endpoint, error = %e, "outbound HTTP: no connection to the peer");
                exchange.detail = e.to_string().into();
                return local(exchange, UpstreamFailure::Connect.response(), "UF");
            }
        };
        exchange.series = conn.series(Some(&pc.peer));
        let mut send = pc.send;
        match send.try_send_request(req).await {
            Ok(resp) => break Ok(resp),
            Err(mut e) => match e.take_message() {
                // Never sent: the pooled connection had just closed. Once more on a new one.
                Some(back) if attempt == 1 => {
                    l7.peers.evict(endpoint, service.identities());
                    req = back;
                }
                _ => break Err(e.into_error()),
            },
        }
    };
    match result {
        Ok(resp) => forward(resp, downstream_version, exchange).await,
        Err(e) => {
            let failure = UpstreamFailure::of_hyper(&e);
            tracing::info!(dst = %conn.dst, %endpoint, error = %e, "outbound HTTP: request to the peer failed");
            exchange.detail = e.to_string().into();
            local(exchange, failure.response(), failure.flag())
        }
    }
}

/// The peer sidecar's response, on its way to the app: hop-by-hop headers dropped, small
/// bodies prefetched, the app's HTTP version, recorded when its body ends.
async fn forward<B>(
    mut resp: Response<B>,
    downstream_version: Version,
    mut exchange: Box<Exchange>,
) -> Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes, Error = hyper::Error> + Unpin + Send + Sync + 'static,
{
    strip_hop_by_hop(resp.headers_mut(), false);
    let mut resp = prefetch::first_frame(resp).await;
    *resp.version_mut() = downstream_version;
    exchange.status = resp.status().as_u16();
    resp.map(|b| RecordedBody::new(b, exchange).boxed())
}

/// An HTTP/1.x request: HTTP/1.1 to the peer sidecar over a pooled mTLS connection of the
/// calling worker, verified against the service's identities.
async fn send_h1(
    conn: &Conn,
    service: &Service,
    mut exchange: Box<Exchange>,
    endpoint: SocketAddr,
    mut parts: http::request::Parts,
    body: Body,
) -> Response<Body> {
    // The request line carries the path only and `Host` the original authority (set above).
    parts.uri = match Uri::try_from(&*exchange.path) {
        Ok(u) => u,
        Err(_) => return local(exchange, text(StatusCode::BAD_REQUEST, "Bad Request"), "-"),
    };
    let downstream_version = parts.version;
    parts.version = Version::HTTP_11;
    let shared = &conn.shared;
    let sent = shared
        .l7
        .mesh_h1
        .send(
            shared,
            endpoint,
            service.identities(),
            Request::from_parts(parts, body),
        )
        .await;
    match sent {
        Ok((resp, peer)) => {
            exchange.series = conn.series(Some(&peer));
            forward(resp, downstream_version, exchange).await
        }
        Err(e) => {
            let failure = UpstreamFailure::of_h1(&e);
            tracing::info!(dst = %conn.dst, %endpoint, error = %e, "outbound HTTP: request to the peer failed");
            exchange.detail = e.to_string().into();
            local(exchange, failure.response(), failure.flag())
        }
    }
}

/// An upgrade or CONNECT: a dedicated HTTP/1.1 mTLS connection to the peer sidecar, spliced
/// with the app's connection once the peer accepted.
async fn upgrade_request(
    conn: &Conn,
    service: &Service,
    mut exchange: Box<Exchange>,
    endpoint: SocketAddr,
    mut parts: http::request::Parts,
    body: Body,
) -> Response<Body> {
    let shared = &conn.shared;
    let on_downstream = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let connected = async {
        let dialer = crate::dial::Dialer {
            tls: &shared.tls,
            connect_timeout: shared.config.connect_timeout,
            handshake_timeout: shared.config.connect_timeout,
        };
        let (tls, peer) = dialer
            .dial_peer(endpoint, service.identities(), Alpn::Http11)
            .await
            .map_err(|e| e.to_string())?;
        let send = super::h1pool::handshake(tls, endpoint)
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>((send, Arc::<str>::from(peer.as_str())))
    }
    .await;
    let (mut send, peer) = match connected {
        Ok(v) => v,
        Err(e) => {
            tracing::info!(dst = %conn.dst, %endpoint, error = %e, "outbound HTTP: upgrade connection to the peer failed");
            exchange.detail = e.into();
            return local(exchange, UpstreamFailure::Connect.response(), "UF");
        }
    };
    exchange.series = conn.series(Some(&peer));
    parts.version = Version::HTTP_11;
    // HTTP/1.1 requests carry the origin form; the authority stays in Host.
    if parts.method != Method::CONNECT
        && let Some(pq) = parts.uri.path_and_query().cloned()
    {
        parts.uri = Uri::from(pq);
    }
    match send.send_request(Request::from_parts(parts, body)).await {
        Ok(mut resp) => {
            let switched = resp.status() == StatusCode::SWITCHING_PROTOCOLS
                || (exchange.method == Method::CONNECT && resp.status().is_success());
            if switched && let Some(down) = on_downstream {
                let up = hyper::upgrade::on(&mut resp);
                super::upgrade::splice(down, up, shared.drain.track());
            }
            exchange.status = resp.status().as_u16();
            resp.map(|b| RecordedBody::new(b, exchange).boxed())
        }
        Err(e) => {
            let failure = UpstreamFailure::of_hyper(&e);
            exchange.detail = e.to_string().into();
            local(exchange, failure.response(), failure.flag())
        }
    }
}
