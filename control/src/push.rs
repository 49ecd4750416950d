//! The push API: `warden.config.v1.ConfigDiscovery/Subscribe` over mTLS.
//!
//! A proxy connects with its workload certificate; its identity (and so its namespace) comes from
//! that certificate, its labels from its [`Registration`]. A registration for another namespace
//! than the certificate's is refused with `PERMISSION_DENIED`. The proxy receives at once a
//! complete snapshot of what applies to it:
//! - the security resources of its namespace and of the root namespace whose selector (or
//!   targetRef) picks it, by the same rule the proxy compiles with
//!   ([`warden_policy::applies_to`]);
//! - the MeshConfig;
//! - every networking resource (all services are visible to every proxy; `exportTo` is not
//!   applied);
//!
//! and a new one whenever that content changes (proxies a change does not affect get nothing).
//! Each answer (ACK, or NACK with the proxy's error) is recorded per proxy, with its identity,
//! the last version sent, when it connected and when its certificate expires: see
//! [`PushServer::proxies`] and [`crate::status`].

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use warden_identity::SpiffeId;
use warden_identity::proto::config::config_discovery_server::{
    ConfigDiscovery, ConfigDiscoveryServer,
};
use warden_identity::proto::config::{
    ConfigSnapshot, ProxyType, Registration, Resource as PbResource, SubscribeRequest,
    subscribe_request,
};
use warden_identity::tls::{ServerTlsStream, TlsProvider};
use warden_policy::WorkloadRef;

use crate::store::{ConfigSource, Snapshot};

/// What the push server knows about one connected proxy.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProxyStatus {
    /// Connection id (unique per control plane run).
    pub id: u64,
    /// The SPIFFE ID of its client certificate.
    pub identity: String,
    /// Pod name from the registration.
    pub pod_name: String,
    /// Namespace.
    pub namespace: String,
    /// `sidecar` or `gateway`.
    pub proxy_type: String,
    /// Proxy version.
    pub proxy_version: String,
    /// The last snapshot version sent (0 = none yet).
    pub version_sent: u64,
    /// The last version it ACKed (0 = none).
    pub version_acked: u64,
    /// The last NACK: version and error.
    pub last_nack: Option<(u64, String)>,
    /// When the stream opened (RFC 3339).
    pub connected_since: String,
    /// When its client certificate expires (RFC 3339).
    pub cert_expiry: String,
}

impl ProxyStatus {
    /// `SYNCED`, `NOT SENT`, `STALE` (sent, no answer yet) or `NACK` — as `istioctl proxy-status`.
    pub fn sync_state(&self) -> &'static str {
        match (&self.last_nack, self.version_sent, self.version_acked) {
            (_, 0, _) => "NOT SENT",
            (Some((v, _)), sent, _) if *v == sent => "NACK",
            (_, sent, acked) if sent == acked => "SYNCED",
            _ => "STALE",
        }
    }
}

/// The identity and certificate expiry of a TLS client, attached to each request.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The SPIFFE ID of the client certificate.
    pub identity: SpiffeId,
    /// The client certificate's notAfter.
    pub not_after: Option<OffsetDateTime>,
}

/// The push service. Clone it freely; all clones share the proxies table.
#[derive(Clone)]
pub struct PushServer {
    source: watch::Receiver<Arc<Snapshot>>,
    proxies: Arc<Mutex<BTreeMap<u64, ProxyStatus>>>,
    next_id: Arc<AtomicU64>,
    closing: Arc<watch::Sender<bool>>,
    peer_from: PeerExtractor,
}

/// Reads the caller's verified identity from a request's extensions.
pub type PeerExtractor = Arc<dyn Fn(&tonic::Extensions) -> Option<PeerInfo> + Send + Sync>;

impl std::fmt::Debug for PushServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PushServer")
            .field("version", &self.source.borrow().version)
            .finish()
    }
}

impl PushServer {
    /// A push server for the snapshots of `source`.
    pub fn new(source: &dyn ConfigSource) -> Self {
        PushServer {
            source: source.subscribe(),
            proxies: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            closing: Arc::new(watch::Sender::new(false)),
            peer_from: Arc::new(|ext: &tonic::Extensions| ext.get::<PeerInfo>().cloned()),
        }
    }

    /// Uses another way to find the caller's identity, for a server whose TLS layer attaches its
    /// own connection type (e.g. the CA server on 15012, where client certificates are optional
    /// because the first CSR authenticates with a token). Return `None` when the client presented
    /// no verified certificate: the subscription is then refused.
    pub fn with_peer_extractor(
        mut self,
        f: impl Fn(&tonic::Extensions) -> Option<PeerInfo> + Send + Sync + 'static,
    ) -> Self {
        self.peer_from = Arc::new(f);
        self
    }

    /// Ends every subscription stream (proxies reconnect, to this or another control plane).
    /// Used on shutdown: long-lived streams would otherwise hold a graceful shutdown forever.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// The tonic service, to add to a server (e.g. beside the CA service).
    pub fn service(&self) -> ConfigDiscoveryServer<PushServer> {
        ConfigDiscoveryServer::new(self.clone())
    }

    /// Every connected proxy, by connection id.
    pub fn proxies(&self) -> Vec<ProxyStatus> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ProxyStatus>> {
        self.proxies.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn update(&self, id: u64, f: impl FnOnce(&mut ProxyStatus)) {
        if let Some(p) = self.lock().get_mut(&id) {
            f(p);
        }
    }
}

/// Removes the proxy from the table when its stream ends.
struct Registered {
    server: PushServer,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.server.lock().remove(&self.id);
    }
}

/// What one proxy receives from a snapshot, and a hash of it (to skip pushes that change
/// nothing for it).
fn select(
    snap: &Snapshot,
    namespace: &str,
    labels: &BTreeMap<String, String>,
) -> (ConfigSnapshot, u64) {
    let root = snap.mesh.root_namespace.as_str();
    let wl = WorkloadRef { namespace, labels };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    snap.mesh_yaml.hash(&mut h);
    let in_scope = snap.security_in(root).chain(
        (namespace != root)
            .then(|| snap.security_in(namespace))
            .into_iter()
            .flatten(),
    );
    let mut resources = Vec::new();
    for e in in_scope {
        if warden_policy::applies_to(&e.resource, root, &wl) {
            e.yaml.hash(&mut h);
            let m = e.resource.metadata();
            resources.push(PbResource {
                kind: e.kind.to_owned(),
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                yaml: e.yaml.to_string(),
            });
        }
    }
    let registry = snap
        .networking
        .iter()
        .map(|e| {
            e.yaml.hash(&mut h);
            let m = e.resource.metadata();
            PbResource {
                kind: e.kind.to_owned(),
                namespace: m.namespace.clone(),
                name: m.name.clone(),
                yaml: e.yaml.to_string(),
            }
        })
        .collect();
    (
        ConfigSnapshot {
            version: snap.version,
            nonce: String::new(),
            mesh_config: snap.mesh_yaml.to_string(),
            resources,
            registry,
        },
        h.finish(),
    )
}

type SnapshotStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ConfigSnapshot, Status>> + Send>>;

#[tonic::async_trait]
impl ConfigDiscovery for PushServer {
    type SubscribeStream = SnapshotStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = (self.peer_from)(request.extensions())
            .ok_or_else(|| Status::unauthenticated("a client certificate is required"))?;
        let cert_ns = peer
            .identity
            .namespace()
            .ok_or_else(|| {
                Status::permission_denied(format!(
                    "client identity {} is not a workload identity (ns/<namespace>/sa/<name>)",
                    peer.identity
                ))
            })?
            .to_owned();
        let mut inbound = request.into_inner();
        let registration: Registration = match inbound.message().await? {
            Some(SubscribeRequest {
                kind: Some(subscribe_request::Kind::Registration(r)),
            }) => r,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be a registration",
                ));
            }
        };
        if registration.namespace != cert_ns {
            return Err(Status::permission_denied(format!(
                "registration namespace {:?} does not match the certificate's identity {}",
                registration.namespace, peer.identity
            )));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = OffsetDateTime::now_utc();
        let status = ProxyStatus {
            id,
            identity: peer.identity.to_string(),
            pod_name: registration.pod_name.clone(),
            namespace: registration.namespace.clone(),
            proxy_type: match ProxyType::try_from(registration.proxy_type) {
                Ok(ProxyType::Gateway) => "gateway",
                Ok(ProxyType::Sidecar) => "sidecar",
                _ => "unknown",
            }
            .to_owned(),
            proxy_version: registration.proxy_version.clone(),
            version_sent: 0,
            version_acked: 0,
            last_nack: None,
            connected_since: now.format(&Rfc3339).unwrap_or_default(),
            cert_expiry: peer
                .not_after
                .and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_default(),
        };
        self.lock().insert(id, status);
        tracing::info!(id, identity = %peer.identity, pod = %registration.pod_name, held_version = registration.current_version, "proxy subscribed");
        let current = self.source.borrow().version;
        if registration.current_version > current {
            // Versions count from the start time: a proxy ahead of us means this control plane's
            // clock stepped back since an earlier run. It still gets the full snapshot.
            tracing::warn!(
                id,
                identity = %peer.identity,
                held_version = registration.current_version,
                version = current,
                "the proxy holds a higher config version than this control plane has (clock stepped back?); sending the current snapshot"
            );
        }
        let guard = Registered {
            server: self.clone(),
            id,
        };
        let labels: BTreeMap<String, String> = registration.labels.into_iter().collect();
        let (tx, rx) = mpsc::channel::<Result<ConfigSnapshot, Status>>(4);
        let mut source = self.source.clone();
        let mut closing = self.closing.subscribe();
        if *closing.borrow_and_update() {
            return Err(Status::unavailable("the control plane is shutting down"));
        }
        let server = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut last_hash = None;
            let mut nonce = 0u64;
            let mut changed_snapshot = true;
            loop {
                if changed_snapshot {
                    changed_snapshot = false;
                    let snap = source.borrow_and_update().clone();
                    let (mut msg, h) = select(&snap, &registration.namespace, &labels);
                    // Unchanged for this proxy: nothing to push (it keeps its version).
                    if last_hash != Some(h) {
                        last_hash = Some(h);
                        nonce += 1;
                        msg.nonce = format!("{id}-{nonce}");
                        let version = msg.version;
                        if tx.send(Ok(msg)).await.is_err() {
                            return;
                        }
                        server.update(id, |p| p.version_sent = version);
                    }
                }
                tokio::select! {
                    _ = closing.changed() => return,
                    changed = source.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        changed_snapshot = true;
                    }
                    req = inbound.message() => match req {
                        Ok(Some(SubscribeRequest { kind: Some(subscribe_request::Kind::Ack(ack)) })) => {
                            if ack.error.is_empty() {
                                server.update(id, |p| p.version_acked = p.version_acked.max(ack.version));
                            } else {
                                tracing::warn!(id, version = ack.version, error = %ack.error, "proxy rejected config (NACK)");
                                server.update(id, |p| p.last_nack = Some((ack.version, ack.error.clone())));
                            }
                        }
                        Ok(Some(_)) => {
                            let _ = tx.send(Err(Status::invalid_argument("expected an ACK"))).await;
                            return;
                        }
                        Ok(None) | Err(_) => return,
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

/// A server-side mTLS stream that tells tonic who the client is.
pub struct PeerStream {
    inner: ServerTlsStream<TcpStream>,
    info: PeerInfo,
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerInfo;

    fn connect_info(&self) -> PeerInfo {
        self.info.clone()
    }
}

impl AsyncRead for PeerStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

type Handshake = Pin<Box<dyn std::future::Future<Output = Option<PeerStream>> + Send>>;

/// The accepted mTLS connections of a listener, with their [`PeerInfo`]: see [`mtls_incoming`].
///
/// The listener and the handshakes in progress belong to this stream, so dropping it (which the
/// server does when it stops) closes the listening socket at once: the port can be bound again
/// as soon as the server has returned.
pub struct MtlsIncoming {
    listener: TcpListener,
    tls: TlsProvider,
    handshakes: futures::stream::FuturesUnordered<Handshake>,
    /// After a failed accept (out of file descriptors and the like): no accepting until then.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl std::fmt::Debug for MtlsIncoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MtlsIncoming")
            .field("listener", &self.listener.local_addr().ok())
            .field("handshakes", &self.handshakes.len())
            .finish()
    }
}

/// Most TLS handshakes in progress at once; more connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

impl tokio_stream::Stream for MtlsIncoming {
    type Item = Result<PeerStream, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        use futures::StreamExt as _;
        let this = &mut *self;
        loop {
            // Finished handshakes first.
            while let Poll::Ready(Some(done)) = this.handshakes.poll_next_unpin(cx) {
                if let Some(stream) = done {
                    return Poll::Ready(Some(Ok(stream)));
                }
            }
            if this.handshakes.len() >= MAX_HANDSHAKES {
                return Poll::Pending;
            }
            if let Some(pause) = &mut this.pause {
                if pause.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.pause = None;
            }
            match this.listener.poll_accept(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    // Out of file descriptors and the like: back off a little, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    this.pause = Some(Box::pin(tokio::time::sleep(
                        std::time::Duration::from_millis(50),
                    )));
                }
                Poll::Ready(Ok((tcp, addr))) => {
                    let _ = tcp.set_nodelay(true);
                    this.handshakes
                        .push(Box::pin(handshake(this.tls.clone(), tcp, addr)));
                }
            }
        }
    }
}

async fn handshake(tls: TlsProvider, tcp: TcpStream, addr: SocketAddr) -> Option<PeerStream> {
    match tokio::time::timeout(std::time::Duration::from_secs(10), tls.accept(tcp)).await {
        Ok(Ok((stream, identity, _alpn))) => {
            let not_after = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .and_then(|der| {
                    x509_parser::parse_x509_certificate(der)
                        .ok()
                        .map(|(_, c)| c.validity().not_after.to_datetime())
                });
            Some(PeerStream {
                inner: stream,
                info: PeerInfo {
                    identity,
                    not_after,
                },
            })
        }
        Ok(Err(e)) => {
            tracing::info!(peer = %addr, error = %e, "config client refused");
            None
        }
        Err(_) => {
            tracing::info!(peer = %addr, "config client handshake timed out");
            None
        }
    }
}

/// Accepts mTLS connections on `listener` (client certificate required and verified against the
/// mesh roots) and yields them with their [`PeerInfo`]. Failed handshakes are logged and skipped.
pub fn mtls_incoming(listener: TcpListener, tls: TlsProvider) -> MtlsIncoming {
    MtlsIncoming {
        listener,
        tls,
        handshakes: futures::stream::FuturesUnordered::new(),
        pause: None,
    }
}

/// Serves the push API on `listener` over mTLS until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: TlsProvider,
    server: PushServer,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let closer = server.clone();
    let shutdown = async move {
        shutdown.await;
        closer.close_streams();
    };
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .add_service(server.service())
        .serve_with_incoming_shutdown(mtls_incoming(listener, tls), shutdown)
        .await
}

/// Counts of proxies by sync state, for logs.
pub fn summarize(proxies: &[ProxyStatus]) -> HashMap<&'static str, usize> {
    let mut m = HashMap::new();
    for p in proxies {
        *m.entry(p.sync_state()).or_insert(0) += 1;
    }
    m
}
