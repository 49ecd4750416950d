//! Graceful shutdown: stop accepting, let in-flight connections finish up to a deadline.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{Notify, watch};

struct Inner {
    draining: watch::Sender<bool>,
    active: AtomicUsize,
    idle: Notify,
}

/// The drain signal and the count of in-flight connections. Cheap to clone.
#[derive(Clone)]
pub struct Drain {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Drain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drain")
            .field("draining", &self.is_draining())
            .field("active", &self.active())
            .finish()
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

impl Drain {
    /// Not draining, nothing in flight.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                draining: watch::Sender::new(false),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Starts draining: listeners stop accepting. Idempotent.
    pub fn start(&self) {
        self.inner
            .draining
            .send_if_modified(|d| !std::mem::replace(d, true));
    }

    /// Whether draining has started.
    pub fn is_draining(&self) -> bool {
        *self.inner.draining.borrow()
    }

    /// Resolves when draining starts.
    pub async fn signaled(&self) {
        let mut rx = self.inner.draining.subscribe();
        // The sender lives in `self`, so this cannot fail.
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Counts a connection in flight until the guard drops.
    pub fn track(&self) -> ConnGuard {
        self.inner.active.fetch_add(1, Ordering::AcqRel);
        ConnGuard {
            inner: self.inner.clone(),
        }
    }

    /// Connections in flight.
    pub fn active(&self) -> usize {
        self.inner.active.load(Ordering::Acquire)
    }

    /// Waits until no connection is in flight, at most `deadline`. True when all finished.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.inner.idle.notified();
                if self.active() == 0 {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(deadline, wait).await.is_ok()
    }
}

/// A connection in flight (see [`Drain::track`]).
#[must_use = "the connection counts as in flight only while the guard lives"]
pub struct ConnGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if self.inner.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.inner.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_guards() {
        let d = Drain::new();
        let g = d.track();
        assert_eq!(d.active(), 1);
        assert!(!d.wait_idle(Duration::from_millis(20)).await);
        let d2 = d.clone();
        let t = tokio::spawn(async move { d2.wait_idle(Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        drop(g);
        assert!(t.await.unwrap());
        d.start();
        d.signaled().await;
        assert!(d.is_draining());
    }
}
