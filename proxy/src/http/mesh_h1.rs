//! HTTP/1.1 to peer sidecars, as Istio sends it by default (`h2UpgradePolicy: DO_NOT_UPGRADE`):
//! an HTTP/1.1 request from the app goes to the peer sidecar as HTTP/1.1 over mTLS with ALPN
//! `istio-http/1.1`, on a keep-alive connection from a [`H1Pool`]. Connections are per worker
//! thread, endpoint and set of identities secure naming accepts, so a connection verified for
//! one service is never used for another, and a request never wakes another thread. A
//! connection goes back to the pool when its response body ended; idle ones close after
//! `http.poolIdleTimeout`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use warden_identity::SpiffeId;
use warden_identity::tls::Alpn;

use super::Body;
use super::h1pool::{Connected, H1Error, H1Pool, PooledBody, handshake};
use crate::dial::Dialer;
use crate::metrics::Reporter;
use crate::state::Shared;

/// The HTTP/1.1 keep-alive mTLS connections to peer sidecars.
#[derive(Debug)]
pub struct MeshH1 {
    pool: Arc<H1Pool>,
    connect_timeout: Duration,
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
            pool: Arc::new(H1Pool::new(workers, idle_timeout, max_idle_per_host)),
            connect_timeout,
        }
    }

    /// Idle connections held (for tests).
    pub fn idle_count(&self) -> usize {
        self.pool.idle_count()
    }

    /// Sends `req` (origin-form URI, `Host` set) to the peer sidecar at `endpoint`, whose
    /// certificate must name one of `identities`, on a pooled connection or a new one (each
    /// handshake counted in `shared`'s metrics). Returns the response and the peer's verified
    /// identity.
    pub async fn send(
        &self,
        shared: &Shared,
        endpoint: SocketAddr,
        identities: &[SpiffeId],
        req: Request<Body>,
    ) -> Result<(Response<PooledBody>, Arc<str>), H1Error> {
        let connect = || async {
            let dialer = Dialer {
                tls: &shared.tls,
                connect_timeout: self.connect_timeout,
                handshake_timeout: self.connect_timeout,
            };
            let (tls, peer) = dialer.dial_peer(endpoint, identities, Alpn::Http11).await?;
            shared.metrics.tls_handshake(Reporter::Source);
            let send = handshake(tls, endpoint).await?;
            Ok::<Connected, H1Error>((send, peer.as_str().into()))
        };
        self.pool.send(endpoint, identities, req, connect).await
    }
}
