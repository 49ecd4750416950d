//! The capture listeners' accept loop: per-listener connection limit, resilience to
//! `accept()` failures (file descriptors exhausted: log once, back off, recover), drain.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::balance::{Balancer, Handoff, Serving};
use crate::limits::ListenerKind;
use crate::state::Shared;

/// First pause after a failed `accept()`; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(10);
/// Longest pause after failed `accept()`s.
const MAX_BACKOFF: Duration = Duration::from_millis(500);
/// At most one "refused: at the limit" log line per listener per this period.
const OVERFLOW_LOG_EVERY: Duration = Duration::from_secs(10);

/// Whether an `accept()` error means the process or system is out of a resource (file
/// descriptors, socket buffers, memory): retry later, not at once.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc_errno::EMFILE | libc_errno::ENFILE | libc_errno::ENOBUFS | libc_errno::ENOMEM)
    )
}

/// The errno values used here (Linux), without a libc dependency.
mod libc_errno {
    pub const ENOMEM: i32 = 12;
    pub const ENFILE: i32 = 23;
    pub const EMFILE: i32 = 24;
    pub const ENOBUFS: i32 = 105;
}

/// Counts a listener's open connections against its limit.
#[derive(Debug)]
pub struct ConnectionLimit {
    open: Arc<AtomicUsize>,
    max: usize,
}

/// One admitted connection; frees its slot when dropped.
#[derive(Debug)]
pub struct Slot {
    open: Arc<AtomicUsize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConnectionLimit {
    /// At most `max` connections at once.
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::new(AtomicUsize::new(0)),
            max,
        }
    }

    /// A slot, or `None` at the limit.
    pub fn try_acquire(&self) -> Option<Slot> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot {
                open: self.open.clone(),
            })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

/// Accepts on `listener` until the drain starts, running `handler` for each connection under
/// `limit` (shared by the workers' sockets of one listener). Returns the in-flight connections (the caller waits for or aborts them).
pub async fn accept_loop<F, Fut>(
    listener: TcpListener,
    kind: ListenerKind,
    limit: &ConnectionLimit,
    shared: Arc<Shared>,
    mut balance: Option<Balance>,
    handler: F,
) -> JoinSet<()>
where
    F: Fn(Arc<Shared>, TcpStream, SocketAddr, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut conns = JoinSet::new();
    let local = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::error!(error = %e, "listener has no local address");
            return conns;
        }
    };
    let counters = &shared.metrics.limits;
    let drain = shared.drain.clone();
    // Runs `handler` for an admitted connection, tracked by the drain and in this worker's
    // load (when balanced), holding its slot.
    let serve = |conns: &mut JoinSet<()>,
                 stream: TcpStream,
                 peer: SocketAddr,
                 slot: Slot,
                 serving: Option<Serving>| {
        let _ = stream.set_nodelay(true);
        let guard = drain.track();
        let fut = handler(shared.clone(), stream, peer, local);
        conns.spawn(async move {
            fut.await;
            drop(serving);
            drop(guard);
            drop(slot);
        });
    };
    // A connection handed over by another worker joins this worker's reactor.
    let adopt = |conns: &mut JoinSet<()>, h: Handoff| match TcpStream::from_std(h.stream) {
        Ok(stream) => serve(conns, stream, h.peer, h.slot, Some(h.serving)),
        Err(e) => {
            tracing::warn!(listener = kind.as_str(), peer = %h.peer, error = %e, "a connection handed over could not be registered")
        }
    };
    let mut backoff = MIN_BACKOFF;
    let mut failing_since: Option<(Instant, u64)> = None;
    let mut overflow_logged: Option<Instant> = None;
    let mut overflow_unlogged = 0u64;
    loop {
        tokio::select! {
            biased;
            _ = drain.signaled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            Some(h) = async { balance.as_mut()?.inbox.recv().await }, if balance.is_some() => {
                adopt(&mut conns, h);
            }
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    if let Some((since, failures)) = failing_since.take() {
                        tracing::warn!(
                            listener = kind.as_str(), %local, failures,
                            after_ms = since.elapsed().as_millis() as u64,
                            "accept recovered"
                        );
                    }
                    backoff = MIN_BACKOFF;
                    let Some(slot) = limit.try_acquire() else {
                        // Counted, then closed at once: the client sees a reset/EOF (and, once
                        // it has, the counter), existing ones go on.
                        let total = counters.overflow(kind);
                        drop(stream);
                        overflow_unlogged += 1;
                        if overflow_logged.is_none_or(|t| t.elapsed() >= OVERFLOW_LOG_EVERY) {
                            tracing::warn!(
                                listener = kind.as_str(), %local, %peer,
                                limit = limit.max, refused_since_last_log = overflow_unlogged,
                                refused_total = total,
                                "connection refused: listener at limits.maxConnections"
                            );
                            overflow_logged = Some(Instant::now());
                            overflow_unlogged = 0;
                        }
                        continue;
                    };
                    // A worker serving more than another hands the connection over.
                    if let Some(b) = &balance
                        && let Some(to) = b.balancer.pick(b.index)
                    {
                        match stream.into_std() {
                            Ok(std_stream) => {
                                let serving = b.balancer.serving(to);
                                let h = Handoff { stream: std_stream, peer, slot, serving };
                                if let Err(mut h) = b.balancer.hand_off(to, kind, h) {
                                    // That worker stopped: serve it here.
                                    h.serving = b.balancer.serving(b.index);
                                    adopt(&mut conns, h);
                                }
                            }
                            Err(e) => {
                                tracing::debug!(listener = kind.as_str(), %peer, error = %e, "connection lost while handing it over");
                            }
                        }
                        continue;
                    }
                    let serving = balance.as_ref().map(|b| b.balancer.serving(b.index));
                    serve(&mut conns, stream, peer, slot, serving);
                }
                Err(e) => {
                    counters.accept_error(kind);
                    if is_resource_exhaustion(&e) {
                        // The pending connection stays in the backlog, so the listener stays
                        // readable: pause instead of spinning; in-flight connections go on.
                        match &mut failing_since {
                            Some((_, n)) => *n += 1,
                            None => {
                                tracing::error!(
                                    listener = kind.as_str(), %local, error = %e,
                                    open = limit.open(),
                                    "accept failed: out of resources; backing off until it recovers"
                                );
                                failing_since = Some((Instant::now(), 1));
                            }
                        }
                        tokio::select! {
                            _ = drain.signaled() => break,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    } else {
                        // ECONNABORTED and the like concern one connection only.
                        tracing::debug!(listener = kind.as_str(), %local, error = %e, "accept failed");
                    }
                }
            }
        }
    }
    // Connections the kernel completed before the drain wait in the backlog: their clients
    // already sent them, so serve them instead of resetting them when the listener closes.
    // (`timeout(ZERO, ..)` polls the accept once without waiting.)
    while let Ok(Ok((stream, peer))) =
        tokio::time::timeout(std::time::Duration::ZERO, listener.accept()).await
    {
        let Some(slot) = limit.try_acquire() else {
            break;
        };
        let serving = balance.as_ref().map(|b| b.balancer.serving(b.index));
        serve(&mut conns, stream, peer, slot, serving);
    }
    drop(listener);
    // Connections other workers handed over before the drain: served too.
    if let Some(b) = &mut balance {
        b.inbox.close();
        while let Ok(h) = b.inbox.try_recv() {
            adopt(&mut conns, h);
        }
    }
    conns
}

/// What an accept loop needs to balance connections with the other workers.
#[derive(Debug)]
pub struct Balance {
    /// Every worker's load.
    pub balancer: Arc<Balancer>,
    /// This worker.
    pub index: usize,
    /// Connections other workers hand to this loop.
    pub inbox: tokio::sync::mpsc::UnboundedReceiver<Handoff>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limit_admits_up_to_max_and_frees_on_drop() {
        let l = ConnectionLimit::new(2);
        let a = l.try_acquire().unwrap();
        let b = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        assert_eq!(l.open(), 2);
        drop(a);
        let c = l.try_acquire().unwrap();
        assert!(l.try_acquire().is_none());
        drop((b, c));
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn exhaustion_errors_are_recognised() {
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(24)));
        assert!(is_resource_exhaustion(&io::Error::from_raw_os_error(23)));
        assert!(!is_resource_exhaustion(&io::Error::from_raw_os_error(103)));
        assert!(!is_resource_exhaustion(&io::Error::other("x")));
    }
}
