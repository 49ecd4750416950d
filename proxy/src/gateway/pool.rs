//! Idle HTTP/1.1 upstream connections, reused across requests. A connection is keyed by
//! everything its handshake checked (endpoint, service host, the identities secure naming
//! accepted, the origination config), so it is only reused for traffic it was verified for.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http1::SendRequest;

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

struct Idle {
    sender: SendRequest<Full<Bytes>>,
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
    /// An idle connection for `key` that is ready for a request.
    pub fn take(&self, key: &PoolKey) -> Option<(SendRequest<Full<Bytes>>, Security)> {
        let mut map = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = map.get_mut(key)?;
        list.retain(|c| !c.sender.is_closed() && c.since.elapsed() < IDLE_TIMEOUT);
        // A connection still streaming its last response body is not ready: leave it.
        let i = list.iter().rposition(|c| c.sender.is_ready())?;
        let c = list.swap_remove(i);
        Some((c.sender, c.security))
    }

    /// Returns a connection after its request was answered (it becomes ready again once the
    /// response body has been read).
    pub fn put(&self, key: PoolKey, sender: SendRequest<Full<Bytes>>, security: Security) {
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
