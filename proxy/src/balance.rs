//! Exact connection balance across the workers (Envoy's `exact_balance`): a worker that
//! accepts a connection while it serves more than another worker hands the connection over to
//! the least loaded one. `SO_REUSEPORT` alone spreads connections by a hash of their
//! addresses, so a handful of long-lived connections (sidecar-to-sidecar pools, HTTP/2, gRPC)
//! often land on one worker while the other idles, and their requests queue behind each other.
//! A handed-over connection costs one cross-thread wake-up, once per connection; its requests
//! then stay on the worker that serves it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc;

use crate::accept::Slot;
use crate::limits::ListenerKind;

/// A connection accepted on one worker, to be served by another.
#[derive(Debug)]
pub struct Handoff {
    /// The connection, out of the accepting worker's reactor.
    pub stream: std::net::TcpStream,
    /// Its client address.
    pub peer: SocketAddr,
    /// Its place under the listener's connection limit.
    pub slot: Slot,
    /// Its place in the receiving worker's load, taken when it was handed over (so the next
    /// pick already sees it).
    pub serving: Serving,
}

struct Worker {
    /// Connections this worker serves now (both listeners).
    open: AtomicUsize,
    /// Hand-offs to its outbound and inbound accept loops.
    to: [mpsc::UnboundedSender<Handoff>; 2],
}

/// The load of every worker and the way to hand it a connection. Shared by the workers.
pub struct Balancer {
    workers: Vec<Worker>,
}

impl std::fmt::Debug for Balancer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Balancer")
            .field("open", &self.open())
            .finish()
    }
}

/// What each worker receives hand-offs on: `[outbound, inbound]`.
pub type Inboxes = [mpsc::UnboundedReceiver<Handoff>; 2];

fn kind_index(kind: ListenerKind) -> usize {
    match kind {
        ListenerKind::Outbound => 0,
        ListenerKind::Inbound => 1,
    }
}

impl Balancer {
    /// A balancer for `count` workers and the inboxes of each, in worker order.
    pub fn new(count: usize) -> (Arc<Self>, Vec<Inboxes>) {
        let mut workers = Vec::with_capacity(count);
        let mut inboxes = Vec::with_capacity(count);
        for _ in 0..count {
            let (out_tx, out_rx) = mpsc::unbounded_channel();
            let (in_tx, in_rx) = mpsc::unbounded_channel();
            workers.push(Worker {
                open: AtomicUsize::new(0),
                to: [out_tx, in_tx],
            });
            inboxes.push([out_rx, in_rx]);
        }
        (Arc::new(Self { workers }), inboxes)
    }

    /// Connections each worker serves now.
    pub fn open(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }

    /// The worker that should serve a connection `me` just accepted: `None` for `me` itself
    /// (it serves no more than any other), else the least loaded one.
    pub fn pick(&self, me: usize) -> Option<usize> {
        if self.workers.len() < 2 {
            return None;
        }
        let mine = self.workers.get(me)?.open.load(Ordering::Relaxed);
        let (least, load) = self
            .workers
            .iter()
            .enumerate()
            .map(|(i, w)| (i, w.open.load(Ordering::Relaxed)))
            .min_by_key(|&(i, load)| (load, i != me))?;
        (load < mine).then_some(least)
    }

    /// Hands `h` to worker `to`'s accept loop for `kind`. Gives it back when that worker no
    /// longer accepts (it stopped).
    pub fn hand_off(&self, to: usize, kind: ListenerKind, h: Handoff) -> Result<(), Handoff> {
        match self.workers.get(to) {
            Some(w) => w.to[kind_index(kind)].send(h).map_err(|e| e.0),
            None => Err(h),
        }
    }

    /// Counts a connection served by worker `index` until the guard drops.
    pub fn serving(self: &Arc<Self>, index: usize) -> Serving {
        if let Some(w) = self.workers.get(index) {
            w.open.fetch_add(1, Ordering::Relaxed);
        }
        Serving {
            balancer: self.clone(),
            index,
        }
    }
}

/// A connection counted in its worker's load (see [`Balancer::serving`]).
#[must_use = "the connection counts only while the guard lives"]
#[derive(Debug)]
pub struct Serving {
    balancer: Arc<Balancer>,
    index: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(w) = self.balancer.workers.get(self.index) {
            w.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_loaded_worker_is_picked_only_when_the_acceptor_serves_more() {
        let (b, _inboxes) = Balancer::new(3);
        assert_eq!(b.pick(0), None, "all idle: keep it");
        let g0 = b.serving(0);
        assert_eq!(b.pick(0), Some(1), "0 serves one, 1 and 2 none");
        assert_eq!(b.pick(1), None, "1 serves none");
        let g1 = b.serving(1);
        let g2 = b.serving(2);
        assert_eq!(b.pick(2), None, "all equal");
        let g0b = b.serving(0);
        assert_eq!(b.pick(0), Some(1));
        assert_eq!(b.open(), vec![2, 1, 1]);
        drop((g0, g0b, g1, g2));
        assert_eq!(b.open(), vec![0, 0, 0]);
        assert_eq!(b.pick(7), None, "an unknown worker keeps its connection");
    }

    #[tokio::test]
    async fn a_handoff_reaches_the_workers_inbox_and_comes_back_once_it_is_gone() {
        let (b, mut inboxes) = Balancer::new(2);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let _client = std::net::TcpStream::connect(addr).unwrap();
        let (stream, peer) = listener.accept().unwrap();
        let limit = crate::accept::ConnectionLimit::new(4);
        let h = Handoff {
            stream,
            peer,
            slot: limit.try_acquire().unwrap(),
            serving: b.serving(1),
        };
        b.hand_off(1, ListenerKind::Inbound, h).unwrap();
        assert_eq!(b.open(), vec![0, 1], "counted where it goes");
        let got = inboxes[1][1].recv().await.unwrap();
        assert_eq!(got.peer, peer);
        assert!(
            inboxes[1][0].try_recv().is_err(),
            "not on the outbound inbox"
        );
        let [_, inbound] = inboxes.pop().unwrap();
        drop(inbound);
        let back = b.hand_off(1, ListenerKind::Inbound, got).unwrap_err();
        assert_eq!(back.peer, peer);
        assert_eq!(limit.open(), 1, "the slot travels with the connection");
        drop(back);
        assert_eq!(limit.open(), 0);
        assert_eq!(b.open(), vec![0, 0]);
    }
}
