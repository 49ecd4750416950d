//! Inbound (15006): PeerAuthentication, mTLS, per-connection authorization, forward to the app
//! on loopback from 127.0.0.6.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;
use warden_identity::tls::{InPlaceTls, ServerTlsStream};
use warden_policy::{ConnectionContext, MtlsPolicy, NoExtAuthz, Request};

use crate::detect::{Detected, detect, is_mesh_alpn, peek_client_hello_alpns};
use crate::http::Speaks;
use crate::l4;
use crate::metrics::{Reporter, TcpLabels};
use crate::state::Shared;

/// Why an inbound connection ended before reaching the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    Loop,
    OrigDst,
    Handshake,
    Denied,
    NoConfig,
    Upstream,
}

impl Refusal {
    fn as_str(self) -> &'static str {
        match self {
            Refusal::Loop => "loop to own port",
            Refusal::OrigDst => "no original destination",
            Refusal::Handshake => "mTLS handshake failed",
            Refusal::Denied => "denied by authorization policy",
            Refusal::NoConfig => "no config loaded",
            Refusal::Upstream => "app connection failed",
        }
    }
}

/// Handles one accepted inbound connection to completion.
pub async fn handle(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    listener: SocketAddr,
) {
    let start = Instant::now();
    let dst = match shared.orig_dst.original_dst(&stream, listener) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "inbound: original destination unknown");
            log_refused(peer, None, None, Refusal::OrigDst, start);
            return;
        }
    };
    // Every inbound destination is local to the pod, and the app is dialled at the same
    // port: a proxy port here would loop back into this proxy.
    if shared.is_own_address(dst, listener) || shared.config.own_ports().contains(&dst.port()) {
        tracing::warn!(%peer, %dst, "inbound: refusing a connection to the proxy's own port");
        log_refused(peer, Some(dst), None, Refusal::Loop, start);
        return;
    }
    let Some(policy) = shared.policy.load_full() else {
        log_refused(peer, Some(dst), None, Refusal::NoConfig, start);
        return;
    };
    let mode = policy
        .compiled
        .peer_authentication
        .mode_for_port(dst.port());
    let settings = &shared.config.inbound;
    let declared_tcp = settings.tcp_ports.contains(&dst.port());
    let detected = match mode {
        MtlsPolicy::Strict => Detected::Tls,
        MtlsPolicy::Disable if declared_tcp => Detected::Other,
        MtlsPolicy::Disable => detect(&stream, settings.detect_timeout).await,
        MtlsPolicy::Permissive => {
            let wait = if declared_tcp {
                settings.tcp_detect_grace
            } else {
                settings.detect_timeout
            };
            detect(&stream, wait).await
        }
    };
    // PERMISSIVE: TLS that is not from a mesh client (no `istio*` ALPN) is the app's own TLS
    // and passes through as plaintext, as Istio's passthrough filter chain does.
    // Unparseable or late hellos count as mesh (the handshake then decides).
    let tls = match mode {
        MtlsPolicy::Strict => true,
        MtlsPolicy::Permissive if detected == Detected::Tls => {
            peek_client_hello_alpns(&stream, settings.detect_timeout)
                .await
                .is_none_or(|a| a.iter().any(|p| is_mesh_alpn(p)))
        }
        _ => false,
    };
    if tls {
        // With TLS 1.3 only, records are opened and sealed in place, for L4 and HTTP alike;
        // with TLS 1.2 allowed, rustls's buffered connection serves both.
        // The handshake timeout bounds the whole handshake.
        let accepted = tokio::time::timeout(settings.handshake_timeout, async {
            if shared.tls.in_place_supported() {
                let a = shared.tls.accept_in_place_with_leaf(stream).await?;
                let http = !declared_tcp && warden_identity::tls::alpn::is_http(a.alpn);
                let peer_tls = http.then(|| {
                    let t = crate::http::PeerTls::new(&shared, a.peer.as_str(), a.leaf.as_deref());
                    (t, Speaks::from_alpn(a.alpn))
                });
                Ok((Client::InPlace(a.stream), a.peer, peer_tls))
            } else {
                let (s, id, alpn) = shared.tls.accept(stream).await?;
                let http = !declared_tcp && warden_identity::tls::alpn::is_http(alpn);
                let peer_tls = http.then(|| {
                    let leaf = s.get_ref().1.peer_certificates().and_then(|c| c.first());
                    let t =
                        crate::http::PeerTls::new(&shared, id.as_str(), leaf.map(|c| c.as_ref()));
                    (t, Speaks::from_alpn(alpn))
                });
                Ok::<_, warden_identity::tls::TlsError>((Client::Tls(s), id, peer_tls))
            }
        })
        .await;
        match accepted {
            Ok(Ok((client, peer_id, peer_tls))) => {
                shared.metrics.tls_handshake(Reporter::Destination);
                match (client, peer_tls) {
                    (Client::InPlace(s), Some((peer_tls, speaks))) => {
                        crate::http::serve(shared.clone(), s, speaks, peer, dst, Some(peer_tls))
                            .await;
                    }
                    (Client::Tls(s), Some((peer_tls, speaks))) => {
                        crate::http::serve(shared.clone(), s, speaks, peer, dst, Some(peer_tls))
                            .await;
                    }
                    (client, _) => {
                        let principal = peer_id.as_str().to_owned();
                        serve(
                            &shared,
                            &policy.compiled,
                            client,
                            peer,
                            dst,
                            Some(principal),
                            start,
                        )
                        .await;
                    }
                }
            }
            Ok(Err(e)) => {
                tracing::info!(%peer, %dst, error = %e, "inbound: mTLS handshake failed");
                log_refused(peer, Some(dst), None, Refusal::Handshake, start);
            }
            Err(_) => {
                tracing::info!(%peer, %dst, "inbound: mTLS handshake timed out");
                log_refused(peer, Some(dst), None, Refusal::Handshake, start);
            }
        }
    } else if !declared_tcp && matches!(detected, Detected::Http1 | Detected::Http2) {
        let speaks = if detected == Detected::Http1 {
            Speaks::Http1
        } else {
            Speaks::Any
        };
        crate::http::serve(shared.clone(), stream, speaks, peer, dst, None).await;
    } else {
        let client = Client::Plain(stream);
        serve(&shared, &policy.compiled, client, peer, dst, None, start).await;
    }
}

/// An accepted inbound connection: plaintext, or mTLS through either stream.
// Moved once into the forwarding future, which holds the stream whichever variant it is:
// boxing the large one would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Client {
    /// Plaintext (PERMISSIVE or DISABLE).
    Plain(TcpStream),
    /// mTLS through rustls's buffered connection.
    Tls(ServerTlsStream<TcpStream>),
    /// mTLS with records decrypted in place.
    InPlace(InPlaceTls<TcpStream>),
}

async fn serve(
    shared: &Shared,
    compiled: &warden_policy::CompiledPolicies,
    client: Client,
    peer: SocketAddr,
    dst: SocketAddr,
    principal: Option<String>,
    start: Instant,
) {
    let mut ctx = ConnectionContext::new(peer.ip(), dst.ip(), dst.port());
    if let Some(p) = principal.as_deref() {
        ctx = ctx.with_peer(p);
    }
    let decision = compiled.authz.evaluate(&Request::tcp(ctx), &NoExtAuthz);
    let allowed = decision.is_allowed();
    let reason = decision.to_string();
    drop(decision);

    let id = &shared.config.identity;
    let service = shared
        .registry
        .load()
        .lookup(dst)
        .map(|s| s.hostname().to_owned())
        .unwrap_or_else(|| "unknown".to_owned());
    let source_ns = principal
        .as_deref()
        .and_then(|p| warden_identity::SpiffeId::parse(p).ok())
        .and_then(|p| p.namespace().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into());
    let mut labels = TcpLabels {
        reporter: Reporter::Destination,
        source_principal: principal.clone().unwrap_or_else(|| "unknown".into()),
        source_workload: "unknown".into(),
        source_workload_namespace: source_ns,
        destination_principal: if principal.is_some() {
            id.spiffe_id().as_str().to_owned()
        } else {
            "unknown".into()
        },
        destination_workload: id.workload_name().to_owned(),
        destination_workload_namespace: id.namespace.clone(),
        destination_service: service,
        mutual_tls: principal.is_some(),
        response_flags: "-",
    };
    if !allowed {
        tracing::info!(%peer, %dst, principal = principal.as_deref().unwrap_or("-"), %reason, "inbound: connection denied");
        log_refused(
            peer,
            Some(dst),
            principal.as_deref(),
            Refusal::Denied,
            start,
        );
        let c = shared.metrics.tcp(labels);
        c.opened();
        c.closed();
        return;
    }
    let app = SocketAddr::new(shared.config.inbound.app_host, dst.port());
    let upstream = match connect_app(shared, app).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(%peer, %app, error = %e, "inbound: cannot reach the app");
            labels.response_flags = "UF";
            let c = shared.metrics.tcp(labels);
            c.opened();
            c.closed();
            log_refused(
                peer,
                Some(dst),
                principal.as_deref(),
                Refusal::Upstream,
                start,
            );
            return;
        }
    };
    let counters = shared.metrics.tcp(labels);
    counters.opened();
    let limits = l4::ForwardLimits::of(shared);
    let result = match client {
        Client::Plain(s) => l4::forward(s, upstream, counters.clone(), limits).await,
        Client::Tls(s) => l4::forward(s, upstream, counters.clone(), limits).await,
        Client::InPlace(s) => l4::forward_in_place(s, upstream, counters.clone(), limits).await,
    };
    counters.closed();
    let (rx, tx) = result.as_ref().map(|r| *r).unwrap_or((0, 0));
    tracing::info!(
        target: "warden::access",
        direction = "inbound",
        src = %peer,
        dst = %dst,
        upstream = %app,
        principal = principal.as_deref().unwrap_or("-"),
        security = if principal.is_some() { "mutual_tls" } else { "none" },
        decision = %reason,
        bytes_received = rx,
        bytes_sent = tx,
        duration_ms = start.elapsed().as_millis() as u64,
        error = result.err().map(|e| e.to_string()).unwrap_or_default(),
        "connection"
    );
}

/// Connects to the app from the configured source address (127.0.0.6); when that address
/// cannot be bound (another family, or not local), connects without binding and warns.
pub(crate) async fn connect_app(
    shared: &Shared,
    app: SocketAddr,
) -> Result<TcpStream, crate::dial::DialError> {
    let src = shared.config.inbound.source_address;
    crate::dial::connect(app, Some(src), shared.config.connect_timeout).await
}

fn log_refused(
    peer: SocketAddr,
    dst: Option<SocketAddr>,
    principal: Option<&str>,
    why: Refusal,
    start: Instant,
) {
    tracing::info!(
        target: "warden::access",
        direction = "inbound",
        src = %peer,
        dst = %dst.map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
        principal = principal.unwrap_or("-"),
        refused = why.as_str(),
        duration_ms = start.elapsed().as_millis() as u64,
        "connection"
    );
}
