//! Keep-alive HTTP/1.1 connections, per worker thread and endpoint: to peer sidecars (mTLS,
//! verified against a set of identities that is part of the match) and to the local app
//! (plaintext, from 127.0.0.6).
//!
//! A connection is used by one request at a time and comes back when its response body
//! ended ([`PooledBody`]); a body dropped before its end closes the connection instead.
//! Connections are driven by the worker that made them and reused only by its requests, so a
//! request never wakes another thread. Idle ones close after the idle timeout (a reaper task
//! per worker runs while the worker holds any). A request that a reused connection never
//! sent (it closed while idle) is sent once more on a new connection; nothing else is
//! retried.
//!
//! This replaces hyper-util's general-purpose pool on the hot path: no waiter queue, no task
//! spawned per request to wait for the connection to be ready again, one uncontended lock
//! per checkout and per checkin.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use warden_identity::SpiffeId;

use super::Body;
use crate::dial::DialError;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    /// No connection could be made (TCP connect, mTLS handshake, secure naming).
    #[error(transparent)]
    Connect(#[from] DialError),
    /// The HTTP/1.1 handshake on a new connection failed.
    #[error("HTTP/1.1 to {endpoint}: {source}")]
    Handshake {
        /// The peer sidecar or app.
        endpoint: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// The request or its response failed on the connection.
    #[error(transparent)]
    Http(hyper::Error),
}

/// A new connection: the handle to send on (its connection task already spawned) and the
/// peer's verified identity (empty for the app).
pub type Connected = (SendRequest<Body>, Arc<str>);

struct Idle {
    send: SendRequest<Body>,
    peer: Arc<str>,
    identities: Box<[SpiffeId]>,
    since: Instant,
}

#[derive(Default)]
struct Shard {
    idle: HashMap<SocketAddr, Vec<Idle>>,
    /// A reaper task runs for this shard.
    reaping: bool,
}

/// The pool. See the module docs.
pub struct H1Pool {
    shards: Box<[Mutex<Shard>]>,
    idle_timeout: Duration,
    max_idle_per_endpoint: usize,
}

impl std::fmt::Debug for H1Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("H1Pool")
            .field("idle", &self.idle_count())
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl H1Pool {
    /// An empty pool for `workers` worker threads.
    pub fn new(workers: usize, idle_timeout: Duration, max_idle_per_endpoint: usize) -> Self {
        Self {
            shards: (0..workers.max(1))
                .map(|_| Mutex::new(Shard::default()))
                .collect(),
            idle_timeout,
            max_idle_per_endpoint,
        }
    }

    /// Idle connections held, all workers (for tests and `/config_dump`).
    pub fn idle_count(&self) -> usize {
        self.shards
            .iter()
            .map(|s| lock(s).idle.values().map(Vec::len).sum::<usize>())
            .sum()
    }

    fn shard(&self) -> (usize, &Mutex<Shard>) {
        let i = crate::worker::index() % self.shards.len();
        (i, &self.shards[i])
    }

    /// An idle connection to `endpoint` verified against `identities`, ready for a request.
    /// Closed ones are dropped; ones not ready yet (their last response is still being
    /// finished by the connection task) stay.
    fn checkout(&self, endpoint: SocketAddr, identities: &[SpiffeId]) -> Option<Idle> {
        let (_, shard) = self.shard();
        let mut shard = lock(shard);
        let list = shard.idle.get_mut(&endpoint)?;
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let c = &list[i];
            if c.send.is_closed() {
                list.swap_remove(i);
            } else if c.send.is_ready() && *c.identities == *identities {
                return Some(list.swap_remove(i));
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, shard: usize, endpoint: SocketAddr, mut idle: Idle) {
        if idle.send.is_closed() {
            return;
        }
        idle.since = Instant::now();
        let mut s = lock(&self.shards[shard]);
        let list = s.idle.entry(endpoint).or_default();
        if list.len() >= self.max_idle_per_endpoint {
            return;
        }
        list.push(idle);
        if !s.reaping
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            s.reaping = true;
            rt.spawn(reap(Arc::downgrade(self), shard, self.idle_timeout));
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `endpoint` on an idle connection verified
    /// against `identities`, or on a new one from `connect`. Returns the response, whose
    /// body gives the connection back when it ends, and the peer's identity.
    pub async fn send<C, Fut>(
        self: &Arc<Self>,
        endpoint: SocketAddr,
        identities: &[SpiffeId],
        req: Request<Body>,
        connect: C,
    ) -> Result<(Response<PooledBody>, Arc<str>), H1Error>
    where
        C: Fn() -> Fut,
        Fut: Future<Output = Result<Connected, H1Error>>,
    {
        let (shard, _) = self.shard();
        let ((mut send, peer), req) = match self.checkout(endpoint, identities) {
            Some(mut idle) => match idle.send.try_send_request(req).await {
                Ok(resp) => return Ok(self.respond(shard, endpoint, idle, resp)),
                Err(mut e) => match e.take_message() {
                    // Never written (the connection closed while idle): once more, on a new
                    // connection.
                    Some(req) => (Box::pin(connect()).await?, req),
                    None => return Err(H1Error::Http(e.into_error())),
                },
            },
            None => (Box::pin(connect()).await?, req),
        };
        let resp = send
            .try_send_request(req)
            .await
            .map_err(|e| H1Error::Http(e.into_error()))?;
        let idle = Idle {
            send,
            peer,
            identities: identities.into(),
            since: Instant::now(),
        };
        Ok(self.respond(shard, endpoint, idle, resp))
    }

    fn respond(
        self: &Arc<Self>,
        shard: usize,
        endpoint: SocketAddr,
        idle: Idle,
        resp: Response<Incoming>,
    ) -> (Response<PooledBody>, Arc<str>) {
        let peer = idle.peer.clone();
        // An upgraded connection belongs to the upgrade.
        let back = (resp.status() != StatusCode::SWITCHING_PROTOCOLS).then(|| Checkin {
            pool: self.clone(),
            shard,
            endpoint,
            idle,
        });
        let (parts, inner) = resp.into_parts();
        let mut body = PooledBody {
            inner: Some(inner),
            back,
        };
        body.check_end();
        (Response::from_parts(parts, body), peer)
    }
}

/// The HTTP/1.1 client handshake on a new connection to `endpoint`. Its connection task (with
/// upgrades, so a `101` hands the connection over) is spawned on the calling worker.
pub async fn handshake<T>(io: T, endpoint: SocketAddr) -> Result<SendRequest<Body>, H1Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|source| H1Error::Handshake { endpoint, source })?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%endpoint, error = %e, "HTTP/1.1 connection ended with an error");
        }
    });
    Ok(send)
}

fn lock(m: &Mutex<Shard>) -> std::sync::MutexGuard<'_, Shard> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Closes connections idle past `idle`, every `idle / 2`, while the shard holds any.
async fn reap(pool: Weak<H1Pool>, shard: usize, idle: Duration) {
    let every = (idle / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut s = lock(&pool.shards[shard]);
        s.idle.retain(|_, list| {
            list.retain(|c| !c.send.is_closed() && c.since.elapsed() < idle);
            !list.is_empty()
        });
        if s.idle.is_empty() {
            s.reaping = false;
            return;
        }
    }
}

struct Checkin {
    pool: Arc<H1Pool>,
    shard: usize,
    endpoint: SocketAddr,
    idle: Idle,
}

/// A response body from a pooled connection: when it ends, the connection goes back to the
/// pool; dropped before its end (or failed), the connection closes.
pub struct PooledBody {
    inner: Option<Incoming>,
    back: Option<Checkin>,
}

impl PooledBody {
    fn check_end(&mut self) {
        if self.inner.as_ref().is_none_or(|b| b.is_end_stream())
            && let Some(c) = self.back.take()
        {
            c.pool.checkin(c.shard, c.endpoint, c.idle);
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let frame = ready!(Pin::new(inner).poll_frame(cx));
        match &frame {
            Some(Err(_)) => this.back = None,
            None => {
                this.inner = None;
                this.check_end();
            }
            Some(Ok(_)) => this.check_end(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::net::{TcpListener, TcpStream};
    use warden_identity::TrustDomain;

    use super::*;

    /// Accepted and closed connections of a test server.
    #[derive(Default)]
    struct Counts {
        accepted: AtomicUsize,
        closed: AtomicUsize,
    }

    /// An HTTP/1.1 server on loopback: `/big` answers 1 MiB, anything else `ok`.
    async fn server(keep_alive: bool) -> (SocketAddr, Arc<Counts>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let counts = Arc::new(Counts::default());
        let c = counts.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = l.accept().await.unwrap();
                c.accepted.fetch_add(1, Ordering::SeqCst);
                let c = c.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let body = if req.uri().path() == "/big" {
                            Bytes::from(vec![7u8; 1 << 20])
                        } else {
                            Bytes::from_static(b"ok")
                        };
                        Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                            body,
                        )))
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(keep_alive)
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
                    c.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        (addr, counts)
    }

    async fn connect(addr: SocketAddr) -> Result<Connected, H1Error> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| DialError::Connect {
                endpoint: addr,
                source,
            })?;
        Ok((handshake(tcp, addr).await?, Arc::from("peer")))
    }

    fn get(path: &str) -> Request<Body> {
        Request::builder()
            .uri(path)
            .header(http::header::HOST, "svc")
            .body(super::super::empty())
            .unwrap()
    }

    fn id(name: &str) -> Vec<SpiffeId> {
        vec![SpiffeId::istio(&TrustDomain::default(), "ns", name).unwrap()]
    }

    async fn fetch(pool: &Arc<H1Pool>, addr: SocketAddr, ids: &[SpiffeId], path: &str) -> usize {
        let (resp, peer) = pool
            .send(addr, ids, get(path), || connect(addr))
            .await
            .expect("a response");
        assert_eq!(&*peer, "peer");
        resp.into_body().collect().await.unwrap().to_bytes().len()
    }

    /// Waits up to two seconds for `f`.
    async fn eventually(what: &str, f: impl Fn() -> bool) {
        for _ in 0..200 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{what}");
    }

    #[tokio::test]
    async fn a_connection_is_reused_once_its_body_ended_and_identities_are_part_of_the_match() {
        let (addr, counts) = server(true).await;
        let pool = Arc::new(H1Pool::new(1, Duration::from_secs(60), 8));
        for _ in 0..3 {
            assert_eq!(fetch(&pool, addr, &id("a"), "/").await, 2);
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(pool.idle_count(), 1);
        // Verified for another identity set: never shared.
        assert_eq!(fetch(&pool, addr, &id("b"), "/big").await, 1 << 20);
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(fetch(&pool, addr, &id("a"), "/").await, 2);
        assert_eq!(fetch(&pool, addr, &id("b"), "/").await, 2);
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(pool.idle_count(), 2);
    }

    #[tokio::test]
    async fn a_body_dropped_before_its_end_closes_its_connection() {
        let (addr, counts) = server(true).await;
        let pool = Arc::new(H1Pool::new(1, Duration::from_secs(60), 8));
        let (resp, _) = pool
            .send(addr, &id("a"), get("/big"), || connect(addr))
            .await
            .unwrap();
        let mut body = resp.into_body();
        let first = body.frame().await.unwrap().unwrap();
        assert!(first.data_ref().is_some_and(|d| d.len() < 1 << 20));
        drop(body);
        assert_eq!(pool.idle_count(), 0);
        eventually("the server saw the connection close", || {
            counts.closed.load(Ordering::SeqCst) == 1
        })
        .await;
        assert_eq!(fetch(&pool, addr, &id("a"), "/").await, 2);
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connections_the_server_closes_are_replaced() {
        let (addr, counts) = server(false).await;
        let pool = Arc::new(H1Pool::new(1, Duration::from_secs(60), 8));
        for n in 1..=3 {
            assert_eq!(fetch(&pool, addr, &id("a"), "/").await, 2);
            eventually("the server closed it", || {
                counts.closed.load(Ordering::SeqCst) == n
            })
            .await;
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_timeout_and_at_most_max_idle_are_kept() {
        let (addr, counts) = server(true).await;
        let pool = Arc::new(H1Pool::new(1, Duration::from_millis(100), 2));
        // Three at once: three connections, two kept.
        let a_ids = id("a");
        let (a, b, c) = tokio::join!(
            pool.send(addr, &a_ids, get("/"), || connect(addr)),
            pool.send(addr, &a_ids, get("/"), || connect(addr)),
            pool.send(addr, &a_ids, get("/"), || connect(addr)),
        );
        for r in [a, b, c] {
            let (resp, _) = r.unwrap();
            resp.into_body().collect().await.unwrap();
        }
        assert_eq!(counts.accepted.load(Ordering::SeqCst), 3);
        assert_eq!(pool.idle_count(), 2);
        eventually("idle connections closed", || {
            pool.idle_count() == 0 && counts.closed.load(Ordering::SeqCst) == 3
        })
        .await;
    }

    #[tokio::test]
    async fn a_refused_connect_is_a_connect_failure() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            l.local_addr().unwrap()
        };
        let pool = Arc::new(H1Pool::new(1, Duration::from_secs(60), 8));
        let e = pool
            .send(addr, &id("a"), get("/"), || connect(addr))
            .await
            .err()
            .expect("nothing listens");
        assert!(matches!(e, H1Error::Connect(_)), "{e}");
        assert_eq!(
            super::super::UpstreamFailure::of_h1(&e),
            super::super::UpstreamFailure::Connect
        );
    }
}
