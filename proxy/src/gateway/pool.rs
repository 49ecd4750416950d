//! Idle HTTP/1.1 upstream connections, reused across requests. A connection is keyed by
//! everything its handshake checked (endpoint, service host, the identities secure naming
//! accepted, the origination config), so it is only reused for traffic it was verified for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};

use super::table::Target;
use super::upstream::Security;

/// Idle connections kept per key.
pub const MAX_IDLE_PER_KEY: usize = 32;
/// An idle connection older than this is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What a pooled connection was verified for.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    addr: String,
    port: u16,
    host: String,
    /// Secure naming set (mesh), empty otherwise.
    identities: Vec<String>,
    /// The origination config (pointer identity: a new config is a new key).
    origination: usize,
}

impl PoolKey {
    /// The key for `target` reached at `endpoint`.
    pub fn new(target: &Target, endpoint: (&str, u16)) -> Self {
        Self {
            addr: endpoint.0.to_owned(),
            port: endpoint.1,
            host: target.host.clone(),
            identities: target
                .identities
                .iter()
                .map(|i| i.as_str().to_owned())
                .collect(),
            origination: target
                .origination
                .as_ref()
                .map_or(0, |o| Arc::as_ptr(&o.config) as usize),
        }
    }
}

/// A client connection: HTTP/1.1 (one request at a time) or HTTP/2 (multiplexed, shared).
pub enum Sender {
    /// HTTP/1.1.
    H1(http1::SendRequest<Full<Bytes>>),
    /// HTTP/2.
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    fn is_closed(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_closed(),
            Sender::H2(s) => s.is_closed(),
        }
    }

    fn is_ready(&self) -> bool {
        match self {
            Sender::H1(s) => s.is_ready(),
            Sender::H2(s) => s.is_ready(),
        }
    }

    /// Sends a request.
    pub async fn send(
        &mut self,
        req: http::Request<Full<Bytes>>,
    ) -> Result<http::Response<Incoming>, hyper::Error> {
        match self {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
    }
}

struct Idle {
    sender: Sender,
    security: Security,
    since: Instant,
}

/// The pool. Cheap to share.
#[derive(Default)]
pub struct HttpPool {
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
}

impl std::fmt::Debug for HttpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpPool")
            .field("idle", &self.idle_count())
            .finish()
    }
}

impl HttpPool {
    /// A connection for `key` that is ready for a request: an idle HTTP/1.1 one (taken out),
    /// or a shared HTTP/2 one (a clone; it stays in the pool).
    pub fn take(&self, key: &PoolKey) -> Option<(Sender, Security)> {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(key)?;
        list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT);
        // A connection still streaming its last response body is not ready: leave it.
        let i = list.iter().rposition(|c| c.sender.is_ready())?;
        if let Sender::H2(s) = &list[i].sender {
            let shared = Sender::H2(s.clone());
            list[i].since = Instant::now();
            return Some((shared, list[i].security.clone()));
        }
        let c = list.swap_remove(i);
        Some((c.sender, c.security))
    }

    /// Returns an HTTP/1.1 connection after its request was answered (it becomes ready again
    /// once the response body has been read), or adds a new HTTP/2 connection (call once per
    /// HTTP/2 connection: clones taken from the pool are not put back).
    pub fn put(&self, key: PoolKey, sender: Sender, security: Security) {
        if sender.is_closed() {
            return;
        }
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.entry(key).or_default();
        if list.len() < MAX_IDLE_PER_KEY {
            list.push(Idle {
                sender,
                security,
                since: Instant::now(),
            });
        }
    }

    /// Drops closed and expired connections (run periodically).
    pub fn sweep(&self) {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, list| {
            list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT);
            !list.is_empty()
        });
    }

    /// Idle connections held.
    pub fn idle_count(&self) -> usize {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(Vec::len)
            .sum()
    }
}
