//! Graceful shutdown: stop accepting, let in-flight connections finish up to a deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

struct Inner {
    /// Set once, before `started` wakes its waiters.
    draining: AtomicBool,
    started: Notify,
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
                draining: AtomicBool::new(false),
                started: Notify::new(),
                active: AtomicUsize::new(0),
                idle: Notify::new(),
            }),
        }
    }

    /// Starts draining: listeners stop accepting. Idempotent.
    pub fn start(&self) {
        if !self.inner.draining.swap(true, Ordering::SeqCst) {
            self.inner.started.notify_waiters();
        }
    }

    /// Whether draining has started: one atomic load.
    pub fn is_draining(&self) -> bool {
        self.inner.draining.load(Ordering::SeqCst)
    }

    /// Resolves when draining starts.
    pub async fn signaled(&self) {
        // Made before the check: a `start` after the check wakes it.
        let started = self.inner.started.notified();
        if self.is_draining() {
            return;
        }
        started.await;
    }

    /// The drain signal of one long-lived connection, for a future that is polled on every
    /// read and write of the connection: see [`Signal::poll_started`].
    pub fn signal(&self) -> Signal<'_> {
        Signal {
            drain: self,
            started: self.inner.started.notified(),
            registered: None,
        }
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

pin_project_lite::pin_project! {
    /// See [`Drain::signal`].
    pub struct Signal<'a> {
        drain: &'a Drain,
        #[pin]
        started: Notified<'a>,
        registered: Option<Waker>,
    }
}

impl Signal<'_> {
    /// Ready once draining has started. The flag is the truth: the `Notified` was made when
    /// the signal was, so it misses a `start` before that and only serves to wake the task.
    /// It is polled (which registers the waker, under the lock every connection of every
    /// worker shares) on the first poll and again only when the task's waker changes; the
    /// polls in between cost one atomic load.
    pub fn poll_started(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.drain.is_draining() {
            return Poll::Ready(());
        }
        let stale = match this.registered {
            Some(w) => !w.will_wake(cx.waker()),
            None => true,
        };
        if stale {
            // A `start` after the flag check above has notified this `Notified` (it was made
            // before), so it is ready here or wakes the task.
            if this.started.poll(cx).is_ready() {
                return Poll::Ready(());
            }
            *this.registered = Some(cx.waker().clone());
        }
        Poll::Pending
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

    #[tokio::test]
    async fn a_signal_fires_when_draining_starts_after_it_was_polled() {
        let d = Drain::new();
        let sig = d.signal();
        tokio::pin!(sig);
        let polls = std::sync::atomic::AtomicUsize::new(0);
        let d2 = d.clone();
        let starter = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d2.start();
        });
        std::future::poll_fn(|cx| {
            polls.fetch_add(1, Ordering::Relaxed);
            sig.as_mut().poll_started(cx)
        })
        .await;
        starter.await.unwrap();
        // Pending once (registered), then woken by `start` and ready.
        assert_eq!(polls.load(Ordering::Relaxed), 2);
        // A signal made after the start is ready at once, and so is `signaled`.
        let late = d.signal();
        tokio::pin!(late);
        std::future::poll_fn(|cx| late.as_mut().poll_started(cx)).await;
        d.signaled().await;
    }

    #[tokio::test]
    async fn a_signal_made_before_the_start_but_never_polled_still_fires() {
        let d = Drain::new();
        let sig = d.signal();
        d.start();
        tokio::pin!(sig);
        let r = std::future::poll_fn(|cx| Poll::Ready(sig.as_mut().poll_started(cx))).await;
        assert!(r.is_ready());
    }
}
