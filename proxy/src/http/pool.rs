//! Pooled HTTP/2 mTLS connections to peer sidecars: one connection per (worker thread,
//! endpoint, expected identities), shared by every request of that worker to it (HTTP/2
//! streams), so one handshake serves many requests. Secure naming is part of the key: a connection verified against one set of
//! identities is never used for another. Connections idle for `idle_timeout` are released
//! (in-flight streams finish first); a closed connection is replaced on the next request.
//! Concurrent first requests wait for a single handshake. The same pool keeps one plaintext
//! HTTP/2 connection per local app port for apps that speak HTTP/2 ([`PeerPool::get_app`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use warden_identity::SpiffeId;
use warden_identity::tls::{Alpn, TlsProvider};

use super::Body;
use crate::dial::Dialer;
use crate::metrics::Reporter;
use crate::state::Shared;

/// Why a pooled connection could not be had.
#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    /// TCP connect (to a peer sidecar or the app), the mTLS handshake or secure naming failed.
    #[error(transparent)]
    Dial(#[from] crate::dial::DialError),
    /// The HTTP/2 handshake failed.
    #[error("HTTP/2 to {endpoint}: {source}")]
    Http2 {
        /// The peer sidecar.
        endpoint: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
}

/// A pooled connection: a handle to send requests, and the peer's verified identity.
#[derive(Clone, Debug)]
pub struct PeerConn {
    /// Sends requests on the shared HTTP/2 connection.
    pub send: SendRequest<Body>,
    /// The peer sidecar's SPIFFE ID (verified against the expected identities).
    pub peer: Arc<str>,
}

struct Slot {
    /// The worker thread whose requests use it (and whose runtime drives the connection).
    worker: usize,
    /// Plaintext HTTP/2 to the local app (no identities) rather than mTLS to a peer.
    plaintext: bool,
    identities: Box<[SpiffeId]>,
    ready: Mutex<Option<PeerConn>>,
    connecting: tokio::sync::Mutex<()>,
    /// Milliseconds since the pool's epoch.
    last_used: AtomicU64,
}

/// (worker thread, endpoint).
type SlotKey = (usize, SocketAddr);

/// The pool.
pub struct PeerPool {
    /// Per worker thread and endpoint: a connection is driven by the worker that made it and
    /// used only by that worker's requests, so a request never wakes another thread.
    slots: Mutex<HashMap<SlotKey, Vec<Arc<Slot>>>>,
    idle_timeout: Duration,
    connect_timeout: Duration,
    epoch: Instant,
    handshakes: AtomicU64,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool")
            .field("handshakes", &self.handshakes())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl PeerPool {
    /// An empty pool.
    pub fn new(idle_timeout: Duration, connect_timeout: Duration) -> Self {
        Self {
            slots: Mutex::new(HashMap::new()),
            idle_timeout,
            connect_timeout,
            epoch: Instant::now(),
            handshakes: AtomicU64::new(0),
        }
    }

    /// mTLS handshakes completed by this pool.
    pub fn handshakes(&self) -> u64 {
        self.handshakes.load(Ordering::Relaxed)
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn slot(&self, endpoint: SocketAddr, identities: &[SpiffeId], plaintext: bool) -> Arc<Slot> {
        let worker = crate::worker::index();
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry((worker, endpoint)).or_default();
        if let Some(s) = list
            .iter()
            .find(|s| s.plaintext == plaintext && &*s.identities == identities)
        {
            return s.clone();
        }
        let s = Arc::new(Slot {
            worker,
            plaintext,
            identities: identities.into(),
            ready: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            last_used: AtomicU64::new(0),
        });
        list.push(s.clone());
        s
    }

    fn ready(&self, slot: &Slot) -> Option<PeerConn> {
        let guard = slot.ready.lock().unwrap_or_else(|p| p.into_inner());
        let c = guard.as_ref().filter(|c| !c.send.is_closed())?.clone();
        drop(guard);
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        Some(c)
    }

    /// Forgets the pooled connection for (`endpoint`, `identities`) (it closed under a
    /// request); the next [`get`](Self::get) makes a new one.
    pub fn evict(&self, endpoint: SocketAddr, identities: &[SpiffeId]) {
        let slot = self.slot(endpoint, identities, false);
        slot.ready.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// A connection to the sidecar at `endpoint` whose certificate names one of
    /// `identities`: the pooled one, or a new one (HTTP/2 over mTLS, ALPN `istio-h2`).
    pub async fn get(
        self: &Arc<Self>,
        shared: &Shared,
        endpoint: SocketAddr,
        identities: &[SpiffeId],
    ) -> Result<PeerConn, PoolError> {
        let slot = self.slot(endpoint, identities, false);
        if let Some(c) = self.ready(&slot) {
            return Ok(c);
        }
        // One handshake at a time per slot; the others wait and reuse its result.
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = self.ready(&slot) {
            return Ok(c);
        }
        let conn = Box::pin(self.connect(&shared.tls, endpoint, &slot)).await?;
        shared.metrics.tls_handshake(Reporter::Source);
        *slot.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        Ok(conn)
    }

    /// Drops `slot` from the map when it holds no connection, so endpoints that went away do
    /// not accumulate. A request racing with this may make one extra connection.
    fn forget_if_unused(&self, endpoint: SocketAddr, slot: &Arc<Slot>) {
        let mut map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let idle = slot
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_none_or(|c| c.send.is_closed());
        if !idle {
            return;
        }
        let key = (slot.worker, endpoint);
        if let Some(list) = map.get_mut(&key) {
            list.retain(|s| !Arc::ptr_eq(s, slot));
            if list.is_empty() {
                map.remove(&key);
            }
        }
    }

    /// Slots held (for tests and `/config_dump`).
    pub fn slot_count(&self) -> usize {
        let map = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(Vec::len).sum()
    }

    /// A plaintext HTTP/2 (prior knowledge) connection to the local app at `app`, from
    /// `source` (127.0.0.6): shared by every inbound request to that port, so the request's
    /// own `:authority` reaches the app.
    pub async fn get_app(
        self: &Arc<Self>,
        app: SocketAddr,
        source: std::net::IpAddr,
    ) -> Result<SendRequest<Body>, PoolError> {
        let slot = self.slot(app, &[], true);
        if let Some(c) = self.ready(&slot) {
            return Ok(c.send);
        }
        let _connecting = slot.connecting.lock().await;
        if let Some(c) = self.ready(&slot) {
            return Ok(c.send);
        }
        let conn = Box::pin(async {
            let tcp = crate::dial::connect(app, Some(source), self.connect_timeout).await?;
            self.handshake(tcp, app, &slot, Arc::from("")).await
        })
        .await?;
        *slot.ready.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn.clone());
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
        Ok(conn.send)
    }

    /// Forgets the pooled app connection to `app`.
    pub fn evict_app(&self, app: SocketAddr) {
        let slot = self.slot(app, &[], true);
        slot.ready.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    async fn handshake<S>(
        self: &Arc<Self>,
        io: S,
        endpoint: SocketAddr,
        slot: &Arc<Slot>,
        peer: Arc<str>,
    ) -> Result<PeerConn, PoolError>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .initial_stream_window_size(1 << 20)
            .initial_connection_window_size(4 << 20)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|source| PoolError::Http2 { endpoint, source })?;
        let pool = Arc::downgrade(self);
        let weak_slot = Arc::downgrade(slot);
        tokio::spawn(drive(conn, pool, weak_slot, self.idle_timeout, endpoint));
        Ok(PeerConn { send, peer })
    }

    async fn connect(
        self: &Arc<Self>,
        tls: &TlsProvider,
        endpoint: SocketAddr,
        slot: &Arc<Slot>,
    ) -> Result<PeerConn, PoolError> {
        let dialer = Dialer {
            tls,
            connect_timeout: self.connect_timeout,
            handshake_timeout: self.connect_timeout,
        };
        let (stream, peer) = dialer
            .dial_peer(endpoint, &slot.identities, Alpn::Http2)
            .await?;
        self.handshakes.fetch_add(1, Ordering::Relaxed);
        self.handshake(stream, endpoint, slot, peer.as_str().into())
            .await
    }
}

/// Drives one connection; releases it from its slot once idle (it then closes when the last
/// in-flight stream ends) or when it closed.
async fn drive<C>(
    conn: C,
    pool: Weak<PeerPool>,
    slot: Weak<Slot>,
    idle: Duration,
    endpoint: SocketAddr,
) where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    tokio::pin!(conn);
    let check = (idle / 2).max(Duration::from_millis(50));
    let mut released = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%endpoint, error = %e, "peer connection ended");
                }
                if let (Some(pool), Some(slot)) = (pool.upgrade(), slot.upgrade()) {
                    pool.forget_if_unused(endpoint, &slot);
                }
                break;
            }
            _ = tokio::time::sleep(check), if !released => {
                let (Some(pool), Some(slot)) = (pool.upgrade(), slot.upgrade()) else {
                    released = true;
                    continue;
                };
                let last = slot.last_used.load(Ordering::Relaxed);
                if pool.now_ms().saturating_sub(last) >= idle.as_millis() as u64 {
                    slot.ready.lock().unwrap_or_else(|p| p.into_inner()).take();
                    released = true;
                    tracing::debug!(%endpoint, "peer connection idle: released");
                }
            }
        }
    }
}
