//! One downstream connection on a gateway port: the ClientHello is read (TLS ports) to pick the
//! server by SNI, then the connection is passed through (PASSTHROUGH), terminated (SIMPLE,
//! MUTUAL) or accepted as mesh mTLS (ISTIO_MUTUAL), and what it carries is served as HTTP or
//! forwarded as TLS/TCP by the routes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use warden_identity::tls::Alpn;
use warden_policy::{ConnectionContext, NoExtAuthz};

use super::GatewayShared;
use super::hello::{Hello, Prefixed, read_hello};
use super::http::{self, ConnInfo};
use super::table::{Carried, GatewayTable, RouteAction, ServerEntry, ServerTls, Target};
use super::upstream::{self, Security};
use crate::config::OutboundTrafficPolicy;
use crate::l4;
use crate::logging::ACCESS_LOG_TARGET;
use crate::metrics::{Reporter, TcpLabels};

/// Handles one accepted connection to completion.
pub async fn handle(
    shared: Arc<GatewayShared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    local: SocketAddr,
) {
    let Some(table) = shared.table.load_full() else {
        return;
    };
    let port = local.port();
    let Some(entry) = table.ports.get(&port) else {
        return;
    };
    if !entry.is_tls() {
        let conn = ConnInfo {
            peer,
            local,
            server: None,
            peer_principal: None,
            sni: None,
            tls: false,
        };
        // Plaintext servers: HTTP (server chosen per request by Host), or TCP routes.
        if entry.servers.iter().all(|s| s.carried == Carried::Http) {
            http::serve(shared, stream, conn).await;
        } else if let Some(server) = entry.servers.first().cloned() {
            tcp_routes(&shared, &table, &server, stream, &conn).await;
        }
        return;
    }
    let wait = shared.config.handshake_timeout;
    let (buf, hello) = match read_hello(&mut stream, wait).await {
        Ok(v) => v,
        Err(e) => {
            refused(&shared, peer, local, None, &format!("{e}"));
            return;
        }
    };
    let sni = match hello {
        Hello::Tls { sni } => sni,
        Hello::Plaintext => {
            refused(&shared, peer, local, None, "plaintext on a TLS port");
            return;
        }
    };
    let Some(server) = entry.server_for(sni.as_deref()).cloned() else {
        refused(
            &shared,
            peer,
            local,
            sni.as_deref(),
            "no server for this SNI",
        );
        return;
    };
    let io = Prefixed::new(buf, stream);
    match &server.tls {
        // The table never mixes plaintext and TLS servers on one port.
        ServerTls::None => refused(
            &shared,
            peer,
            local,
            sni.as_deref(),
            "TLS to a plaintext server",
        ),
        ServerTls::Passthrough => {
            let conn = ConnInfo {
                peer,
                local,
                server: Some(server.clone()),
                peer_principal: None,
                sni: sni.clone(),
                tls: true,
            };
            tls_routes(&shared, &table, &server, io, &conn, sni.as_deref()).await;
        }
        ServerTls::Terminate(cfg) => {
            let accept = tokio_rustls::TlsAcceptor::from(cfg.clone()).accept(io);
            let tls = match tokio::time::timeout(wait, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    refused(
                        &shared,
                        peer,
                        local,
                        sni.as_deref(),
                        &format!("TLS handshake: {e}"),
                    );
                    return;
                }
                Err(_) => {
                    refused(
                        &shared,
                        peer,
                        local,
                        sni.as_deref(),
                        "TLS handshake timed out",
                    );
                    return;
                }
            };
            let conn = ConnInfo {
                peer,
                local,
                server: Some(server.clone()),
                peer_principal: None,
                sni: sni.clone(),
                tls: true,
            };
            carried(&shared, &table, &server, tls, conn, false).await;
        }
        ServerTls::IstioMutual => {
            let accept = shared.tls.accept(io);
            let (tls, id, _alpn) = match tokio::time::timeout(wait, accept).await {
                Ok(Ok(v)) => v,
                Ok(Err(e)) => {
                    refused(&shared, peer, local, sni.as_deref(), &format!("mTLS: {e}"));
                    return;
                }
                Err(_) => {
                    refused(
                        &shared,
                        peer,
                        local,
                        sni.as_deref(),
                        "mTLS handshake timed out",
                    );
                    return;
                }
            };
            let conn = ConnInfo {
                peer,
                local,
                server: Some(server.clone()),
                peer_principal: Some(id.as_str().to_owned()),
                sni: sni.clone(),
                tls: true,
            };
            carried(&shared, &table, &server, tls, conn, true).await;
        }
    }
}

/// Serves what a terminated connection carries. On a `TLS` port, a SIMPLE/MUTUAL server
/// terminated the client's TLS (TCP routes follow); an ISTIO_MUTUAL one terminated the mesh
/// mTLS, inside which the app's own TLS is routed on its SNI (`mesh`).
async fn carried<IO>(
    shared: &Arc<GatewayShared>,
    table: &GatewayTable,
    server: &Arc<ServerEntry>,
    mut io: IO,
    conn: ConnInfo,
    mesh: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    match server.carried {
        Carried::Http => http::serve(shared.clone(), io, conn).await,
        Carried::Tcp => tcp_routes(shared, table, server, io, &conn).await,
        Carried::Tls if !mesh => tcp_routes(shared, table, server, io, &conn).await,
        Carried::Tls => {
            // TLS inside (e.g. a sidecar's mesh mTLS carrying the app's own TLS to the egress
            // gateway): route on the inner SNI, pass the bytes through.
            match read_hello(&mut io, shared.config.handshake_timeout).await {
                Ok((buf, Hello::Tls { sni })) => {
                    let inner = Prefixed::new(buf, io);
                    tls_routes(shared, table, server, inner, &conn, sni.as_deref()).await;
                }
                Ok((_, Hello::Plaintext)) => refused(
                    shared,
                    conn.peer,
                    conn.local,
                    None,
                    "plaintext inside a TLS server",
                ),
                Err(e) => refused(shared, conn.peer, conn.local, None, &e.to_string()),
            }
        }
    }
}

/// PASSTHROUGH: the VirtualService `tls` route whose `sniHosts` match, or (egress) the
/// registry's service for the SNI.
async fn tls_routes<IO>(
    shared: &Arc<GatewayShared>,
    table: &GatewayTable,
    server: &Arc<ServerEntry>,
    io: IO,
    conn: &ConnInfo,
    sni: Option<&str>,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = sni.unwrap_or("");
    let route = server.vhost(host).and_then(|vh| {
        vh.tls
            .iter()
            .find(|(pats, _)| pats.is_empty() || pats.iter().any(|p| p.matches(host)))
            .map(|(_, a)| a)
    });
    let target = match route.and_then(RouteAction::pick) {
        Some(t) => t.clone(),
        None if route.is_none()
            && super::table::allows_direct_routes(shared.config.mode)
            && sni.is_some() =>
        {
            let allow_any =
                shared.config.outbound_traffic_policy == OutboundTrafficPolicy::AllowAny;
            match table
                .direct_target(host, Some(server.port), allow_any)
                .or_else(|| table.direct_target(host, None, false))
            {
                Some(t) => Arc::new(t),
                None => {
                    refused(
                        shared,
                        conn.peer,
                        conn.local,
                        sni,
                        "SNI not in the registry (REGISTRY_ONLY)",
                    );
                    return;
                }
            }
        }
        None => {
            refused(
                shared,
                conn.peer,
                conn.local,
                sni,
                "no tls route for this SNI",
            );
            return;
        }
    };
    // Passed-through TLS is the client's own: never wrapped in mesh mTLS or originated TLS.
    l4_forward(shared, table, io, conn, &target, true).await;
}

/// TCP routes: the first route of the first VirtualService bound to the server.
async fn tcp_routes<IO>(
    shared: &Arc<GatewayShared>,
    table: &GatewayTable,
    server: &Arc<ServerEntry>,
    io: IO,
    conn: &ConnInfo,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let target = server
        .vhosts
        .iter()
        .flat_map(|v| v.tcp.iter())
        .find_map(RouteAction::pick)
        .cloned();
    match target {
        Some(t) => l4_forward(shared, table, io, conn, &t, false).await,
        None => refused(shared, conn.peer, conn.local, None, "no tcp route"),
    }
}

async fn l4_forward<IO>(
    shared: &Arc<GatewayShared>,
    table: &GatewayTable,
    io: IO,
    conn: &ConnInfo,
    target: &Target,
    raw: bool,
) where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let start = Instant::now();
    // Connection-level authorization (principals, ipBlocks, ports, connection.sni).
    let cc = ConnectionContext {
        peer_principal: conn.peer_principal.as_deref(),
        source_ip: conn.peer.ip(),
        remote_ip: conn.peer.ip(),
        destination_ip: conn.local.ip(),
        destination_port: conn.local.port(),
        sni: conn.sni.as_deref(),
    };
    let decision = table
        .policy
        .authz
        .evaluate(&warden_policy::Request::tcp(cc), &NoExtAuthz);
    if !decision.is_allowed() {
        refused(
            shared,
            conn.peer,
            conn.local,
            conn.sni.as_deref(),
            &format!("denied: {decision}"),
        );
        return;
    }
    let cfg = &shared.config;
    let mut labels = TcpLabels {
        reporter: Reporter::Source,
        source_principal: cfg.spiffe_id().as_str().to_owned(),
        source_workload: cfg.workload_name().to_owned(),
        source_workload_namespace: cfg.namespace.clone(),
        destination_principal: "unknown".into(),
        destination_workload: "unknown".into(),
        destination_workload_namespace: "unknown".into(),
        destination_service: target.host.clone(),
        mutual_tls: false,
        response_flags: "-",
    };
    let connected = upstream::connect(
        &shared.tls,
        target,
        Alpn::Tcp,
        raw,
        cfg.connect_timeout,
        cfg.handshake_timeout,
    )
    .await;
    let (up, sec) = match connected {
        Ok(v) => v,
        Err(e) => {
            labels.response_flags = "UF";
            let c = shared.metrics.tcp(labels);
            c.opened();
            c.closed();
            refused(
                shared,
                conn.peer,
                conn.local,
                conn.sni.as_deref(),
                &format!("upstream: {e}"),
            );
            return;
        }
    };
    if let Security::Mesh(id) = &sec {
        labels.mutual_tls = true;
        labels.destination_principal = id.as_str().to_owned();
        labels.destination_workload_namespace = id.namespace().unwrap_or("unknown").to_owned();
    }
    let counters = shared.metrics.tcp(labels);
    counters.opened();
    let limits = crate::limits::Limits::default();
    let forward_limits = l4::ForwardLimits {
        buffer_per_direction: limits.l4_buffer_per_direction(),
        idle_timeout: limits.idle_timeout,
        counters: &shared.metrics.limits,
    };
    let r = l4::forward(io, up, counters.clone(), forward_limits).await;
    counters.closed();
    let (tx, rx) = r.unwrap_or((0, 0));
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        gateway = cfg.mode.as_str(),
        src = %conn.peer,
        sni = conn.sni.as_deref().unwrap_or("-"),
        peer_principal = conn.peer_principal.as_deref().unwrap_or("-"),
        upstream_service = %target.host,
        outcome = "forwarded",
        bytes_sent_upstream = tx,
        bytes_received_upstream = rx,
        duration_ms = start.elapsed().as_millis() as u64,
        "connection"
    );
}

fn refused(
    shared: &GatewayShared,
    peer: SocketAddr,
    local: SocketAddr,
    sni: Option<&str>,
    why: &str,
) {
    tracing::info!(
        target: ACCESS_LOG_TARGET,
        gateway = shared.config.mode.as_str(),
        src = %peer,
        dst = %local,
        sni = sni.unwrap_or("-"),
        outcome = "refused",
        reason = why,
        "connection"
    );
}
