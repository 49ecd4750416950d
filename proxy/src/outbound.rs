//! Outbound (15001): registry lookup of the original destination; mTLS with secure naming to
//! mesh services, passthrough for external and (under `ALLOW_ANY`) unknown destinations.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use warden_policy::registry::Protocol;

use crate::config::OutboundTrafficPolicy;
use crate::detect::{Detected, detect};
use crate::dial::{DialError, Dialer, PeerStream};
use crate::http::Speaks;
use crate::l4;
use crate::metrics::{Reporter, TcpLabels};
use crate::state::Shared;

/// Handles one accepted outbound connection to completion.
pub async fn handle(
    shared: Arc<Shared>,
    client: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
) {
    let start = Instant::now();
    let dst = match shared.orig_dst.original_dst(&client, listener) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "outbound: original destination unknown");
            access(peer, None, "-", "-", "no original destination", 0, 0, start);
            return;
        }
    };
    if shared.is_own_address(dst, listener) {
        tracing::warn!(%peer, %dst, "outbound: refusing a connection to the proxy's own port");
        access(peer, Some(dst), "-", "-", "loop to own port", 0, 0, start);
        return;
    }
    let service = shared.registry.load().lookup(dst);
    let id = &shared.config.identity;
    let mut labels = TcpLabels {
        reporter: Reporter::Source,
        source_principal: "unknown".into(),
        source_workload: id.workload_name().to_owned(),
        source_workload_namespace: id.namespace.clone(),
        destination_principal: "unknown".into(),
        destination_workload: "unknown".into(),
        destination_workload_namespace: "unknown".into(),
        destination_service: service
            .as_ref()
            .map(|s| s.hostname().to_owned())
            .unwrap_or_else(|| dst.ip().to_string()),
        mutual_tls: false,
        response_flags: "-",
    };
    let connect_timeout = shared.config.connect_timeout;
    // HTTP to a mesh service goes through the L7 path: declared (port name / appProtocol), or
    // sniffed from the app's first bytes when the protocol is not declared (as Istio does;
    // a server-first protocol on an undeclared port waits the detection timeout, then L4).
    // A declared HTTP port may carry HTTP/1.1 or HTTP/2 (prior knowledge): hyper tells.
    let l7 = match &service {
        Some(s) if s.is_mesh() => match s.protocol() {
            p if p.is_http() => Some(Speaks::Any),
            Protocol::Unknown => {
                match detect(&client, shared.config.inbound.detect_timeout).await {
                    Detected::Http1 => Some(Speaks::Http1),
                    Detected::Http2 => Some(Speaks::Any),
                    _ => None,
                }
            }
            _ => None,
        },
        _ => None,
    };
    match service {
        Some(svc) if let Some(speaks) = l7 => {
            crate::http::outbound::serve(shared.clone(), client, speaks, peer, dst, svc).await;
        }
        Some(svc) if svc.is_mesh() => {
            let endpoint = svc.pick_endpoint(dst);
            labels.mutual_tls = true;
            labels.source_principal = id.spiffe_id().as_str().to_owned();
            let dialer = Dialer {
                tls: &shared.tls,
                connect_timeout,
                handshake_timeout: shared.config.inbound.handshake_timeout,
            };
            let identities = svc.identities();
            let dialed = dialer.dial_peer(endpoint, identities, svc.alpn()).await;
            let (upstream, server_id) = match dialed {
                Ok(v) => {
                    shared.metrics.tls_handshake(Reporter::Source);
                    v
                }
                Err(e) => {
                    if matches!(e, DialError::Tls { .. }) {
                        tracing::warn!(%dst, %endpoint, error = %e, "outbound: mTLS to the peer failed");
                    }
                    return upstream_failed(&shared, labels, peer, dst, &e.to_string(), start);
                }
            };
            labels.destination_principal = server_id.as_str().to_owned();
            labels.destination_workload_namespace =
                server_id.namespace().unwrap_or("unknown").to_owned();
            let principal = labels.destination_principal.clone();
            let counters = shared.metrics.tcp(labels);
            counters.opened();
            let limits = l4::ForwardLimits::of(&shared);
            let r = match upstream {
                PeerStream::InPlace(u) => {
                    l4::forward_sealing(client, u, counters.clone(), limits).await
                }
                PeerStream::Buffered(u) => l4::forward(client, u, counters.clone(), limits).await,
            };
            counters.closed();
            let (tx, rx) = r.as_ref().map(|r| *r).unwrap_or((0, 0));
            access(
                peer,
                Some(dst),
                &principal,
                "mutual_tls",
                "forwarded",
                tx,
                rx,
                start,
            );
        }
        found => {
            if found.is_none()
                && shared.config.outbound_traffic_policy == OutboundTrafficPolicy::RegistryOnly
            {
                labels.response_flags = "NR";
                let c = shared.metrics.tcp(labels);
                c.opened();
                c.closed();
                access(
                    peer,
                    Some(dst),
                    "-",
                    "none",
                    "refused: REGISTRY_ONLY and not in the registry",
                    0,
                    0,
                    start,
                );
                return;
            }
            let upstream = match crate::dial::connect(dst, None, connect_timeout).await {
                Ok(s) => s,
                Err(e) => {
                    return upstream_failed(&shared, labels, peer, dst, &e.to_string(), start);
                }
            };
            let counters = shared.metrics.tcp(labels);
            counters.opened();
            let r = l4::forward(
                client,
                upstream,
                counters.clone(),
                l4::ForwardLimits::of(&shared),
            )
            .await;
            counters.closed();
            let (tx, rx) = r.as_ref().map(|r| *r).unwrap_or((0, 0));
            access(peer, Some(dst), "-", "none", "passthrough", tx, rx, start);
        }
    }
}

fn upstream_failed(
    shared: &Shared,
    mut labels: TcpLabels,
    peer: SocketAddr,
    dst: SocketAddr,
    why: &str,
    start: Instant,
) {
    labels.response_flags = "UF";
    let c = shared.metrics.tcp(labels);
    c.opened();
    c.closed();
    access(
        peer,
        Some(dst),
        "-",
        "-",
        &format!("upstream failed: {why}"),
        0,
        0,
        start,
    );
}

#[allow(clippy::too_many_arguments)]
fn access(
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    principal: &str,
    security: &str,
    outcome: &str,
    sent: u64,
    received: u64,
    start: Instant,
) {
    tracing::info!(
        target: "warden::access",
        direction = "outbound",
        src = %peer,
        dst = %dst.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
        peer_principal = principal,
        security,
        outcome,
        bytes_sent_upstream = sent,
        bytes_received_upstream = received,
        duration_ms = start.elapsed().as_millis() as u64,
        "connection"
    );
}
