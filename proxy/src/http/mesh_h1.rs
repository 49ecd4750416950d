//! HTTP/1.1 to peer sidecars, as Istio sends it by default (`h2UpgradePolicy: DO_NOT_UPGRADE`):
//! an HTTP/1.1 request from the app goes to the peer sidecar as HTTP/1.1 over mTLS with ALPN
//! `istio-http/1.1`, on a keep-alive connection from a pool. Pools are per worker thread and
//! per set of identities secure naming accepts, so a connection verified for one service is
//! never used for another, and a request never wakes another thread. A connection goes back to
//! the pool when its response body ended; idle ones close after `http.poolIdleTimeout`.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use warden_identity::SpiffeId;
use warden_identity::tls::{Alpn, ClientTlsStream, TlsProvider};

use super::Body;
use crate::dial::{DialError, Dialer};
use crate::metrics::Reporter;
use crate::state::Shared;

/// The peer sidecar's verified SPIFFE ID, found in the extensions of every response that came
/// over a mesh connection.
#[derive(Clone, Debug)]
pub struct PeerIdentity(pub Arc<str>);

/// Why a connection to a peer could not be made (the `source` of the client's connect error).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The URI carries no `ip:port` authority (a bug in the caller).
    #[error("no endpoint address in {0}")]
    Address(Uri),
    /// TCP connect, the handshake or secure naming failed.
    #[error(transparent)]
    Dial(#[from] DialError),
}

/// Makes mTLS connections to peer sidecars whose certificate names one of `identities`.
#[derive(Clone)]
pub struct MeshConnector {
    tls: TlsProvider,
    identities: Arc<[SpiffeId]>,
    connect_timeout: Duration,
    on_handshake: Arc<dyn Fn() + Send + Sync>,
}

impl tower_service::Service<Uri> for MeshConnector {
    type Response = MeshStream;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<MeshStream, ConnectError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let endpoint: SocketAddr = uri
                .authority()
                .and_then(|a| a.as_str().parse().ok())
                .ok_or_else(|| ConnectError::Address(uri.clone()))?;
            let dialer = Dialer {
                tls: &this.tls,
                connect_timeout: this.connect_timeout,
                handshake_timeout: this.connect_timeout,
            };
            let (tls, peer) = dialer
                .dial(endpoint, &this.identities, Alpn::Http11)
                .await?;
            (this.on_handshake)();
            Ok(MeshStream {
                io: TokioIo::new(tls),
                peer: PeerIdentity(peer.as_str().into()),
            })
        })
    }
}

/// An mTLS connection to a peer sidecar.
pub struct MeshStream {
    io: TokioIo<ClientTlsStream<TcpStream>>,
    peer: PeerIdentity,
}

impl Connection for MeshStream {
    fn connected(&self) -> Connected {
        Connected::new().extra(self.peer.clone())
    }
}

impl Read for MeshStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl Write for MeshStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
}

/// A client whose connections are verified against one identity set.
pub type MeshClient = Client<MeshConnector, Body>;

/// One worker's clients, by the identity set they verify.
type WorkerClients = Mutex<HashMap<Box<[SpiffeId]>, MeshClient>>;

/// The per-worker, per-identity-set HTTP/1.1 clients.
pub struct MeshH1 {
    per_worker: Box<[WorkerClients]>,
    idle_timeout: Duration,
    max_idle_per_host: usize,
    connect_timeout: Duration,
}

impl std::fmt::Debug for MeshH1 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshH1")
            .field("workers", &self.per_worker.len())
            .finish_non_exhaustive()
    }
}

impl MeshH1 {
    /// Empty pools for `workers` worker threads.
    pub fn new(
        workers: usize,
        idle_timeout: Duration,
        max_idle_per_host: usize,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            per_worker: (0..workers.max(1))
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
            idle_timeout,
            max_idle_per_host,
            connect_timeout,
        }
    }

    /// The calling worker's client for peers that must present one of `identities`
    /// (connections made with `shared`'s TLS; each handshake counted in its metrics).
    pub fn client(&self, shared: &Arc<Shared>, identities: &[SpiffeId]) -> MeshClient {
        let shard = &self.per_worker[crate::worker::index() % self.per_worker.len()];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(identities) {
            return c.clone();
        }
        // Weak: the clients live in `shared` itself.
        let weak = Arc::downgrade(shared);
        let on_handshake = move || {
            if let Some(s) = weak.upgrade() {
                s.metrics.tls_handshake(Reporter::Source);
            }
        };
        let connector = MeshConnector {
            tls: shared.tls.clone(),
            identities: identities.into(),
            connect_timeout: self.connect_timeout,
            on_handshake: Arc::new(on_handshake),
        };
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(self.idle_timeout)
            .pool_max_idle_per_host(self.max_idle_per_host)
            // Only requests never written are retried (the connection closed while idle).
            .retry_canceled_requests(true)
            .set_host(false)
            .build(connector);
        map.insert(identities.into(), client.clone());
        client
    }
}
