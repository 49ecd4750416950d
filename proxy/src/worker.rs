//! Thread-per-core data plane: `concurrency` worker threads, each running its own
//! single-threaded tokio runtime with its own outbound and inbound listener sockets (bound to
//! the same address with `SO_REUSEPORT`; with `connectionBalance: exact` a worker that serves
//! more connections than another hands a new one over, see [`crate::balance`]). Once served, a
//! connection, the tasks it spawns and the pooled upstream connections it uses all
//! live on one thread: a request is read, checked and forwarded without a cross-thread wakeup,
//! as Envoy's workers do. The certificate agent, the config subscriber and the admin ports stay
//! on the caller's runtime.

use std::cell::Cell;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::oneshot;

use crate::accept::{Balance, ConnectionLimit, accept_loop};
use crate::balance::{Balancer, Inboxes};
use crate::limits::ListenerKind;
use crate::state::Shared;
use crate::{inbound, outbound};

thread_local! {
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker this thread is (0 outside the workers, e.g. on the control runtime or in tests
/// that run a handler directly). Per-worker state (connection pools) is keyed by it.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// Backlog of every capture listener socket (as `TcpListener::bind`).
const BACKLOG: u32 = 1024;

/// Binds a capture listener that further workers can share with [`bind_sibling`].
pub fn bind_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = reuseport_socket(addr)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

fn reuseport_socket(addr: SocketAddr) -> io::Result<TcpSocket> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    Ok(socket)
}

/// A worker could not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The thread or its runtime could not be created.
    #[error("worker {index}: {source}")]
    Start {
        /// Which worker.
        index: usize,
        /// Why.
        source: io::Error,
    },
    /// Its listener socket could not be bound.
    #[error("worker {index}: cannot listen on {addr} ({listener}): {source}")]
    Bind {
        /// Which worker.
        index: usize,
        /// Which listener.
        listener: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The worker thread ended before it reported (it panicked).
    #[error("worker {0} stopped while starting")]
    Lost(usize),
}

struct Handle {
    /// Tells the worker to close what is left and exit.
    stop: Option<oneshot::Sender<()>>,
    /// Fires when its accept loops returned (the drain started and the listeners closed).
    closed: Option<oneshot::Receiver<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The running workers.
pub struct Workers {
    handles: Vec<Handle>,
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("count", &self.handles.len())
            .finish()
    }
}

/// What one worker accepts on.
enum Socket {
    /// The listener bound before the workers started (worker 0 takes it over).
    Given(std::net::TcpListener),
    /// Bind another socket on this address (workers 1..).
    Sibling(SocketAddr),
}

impl Socket {
    fn listen(self) -> io::Result<TcpListener> {
        match self {
            Socket::Given(l) => TcpListener::from_std(l),
            // Another socket on the address [`bind_shared`] bound first.
            Socket::Sibling(addr) => bind_shared(addr),
        }
    }
}

impl Workers {
    /// Starts `shared.config.concurrency` workers accepting on `outbound` and `inbound` (both
    /// bound with [`bind_shared`]) and returns once every worker listens.
    pub async fn start(
        shared: &Arc<Shared>,
        outbound: TcpListener,
        inbound: TcpListener,
    ) -> Result<Self, WorkerError> {
        let count = shared.config.concurrency.max(1);
        let out_addr = outbound
            .local_addr()
            .map_err(|source| WorkerError::Start { index: 0, source })?;
        let in_addr = inbound
            .local_addr()
            .map_err(|source| WorkerError::Start { index: 0, source })?;
        let given = |l: TcpListener| {
            l.into_std()
                .map_err(|source| WorkerError::Start { index: 0, source })
        };
        let mut first = Some((given(outbound)?, given(inbound)?));
        let limits = Arc::new([
            ConnectionLimit::new(shared.config.limits.max_connections(ListenerKind::Outbound)),
            ConnectionLimit::new(shared.config.limits.max_connections(ListenerKind::Inbound)),
        ]);
        let mut workers = Workers {
            handles: Vec::with_capacity(count),
        };
        // One worker has nobody to balance with.
        let balanced = count > 1
            && shared.config.connection_balance == crate::config::ConnectionBalance::Exact;
        let (balancer, inboxes) = Balancer::new(count);
        let mut inboxes = inboxes.into_iter();
        if balanced {
            shared.set_balancer(balancer.clone());
        }
        for index in 0..count {
            let balance = balanced
                .then(|| inboxes.next().map(|i| (balancer.clone(), i)))
                .flatten();
            let (out, inb) = match first.take() {
                Some((o, i)) => (Socket::Given(o), Socket::Given(i)),
                None => (Socket::Sibling(out_addr), Socket::Sibling(in_addr)),
            };
            let addrs = [out_addr, in_addr];
            let (ready_tx, ready_rx) = oneshot::channel();
            let (closed_tx, closed_rx) = oneshot::channel();
            let (stop_tx, stop_rx) = oneshot::channel();
            let shared = shared.clone();
            let limits = limits.clone();
            let thread = std::thread::Builder::new()
                .name(format!("warden-worker-{index}"))
                .spawn(move || {
                    run_worker(
                        index,
                        shared,
                        limits,
                        balance,
                        [out, inb],
                        addrs,
                        ready_tx,
                        closed_tx,
                        stop_rx,
                    )
                })
                .map_err(|source| WorkerError::Start { index, source })?;
            workers.handles.push(Handle {
                stop: Some(stop_tx),
                closed: Some(closed_rx),
                thread: Some(thread),
            });
            match ready_rx.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => return Err(WorkerError::Lost(index)),
            }
        }
        Ok(workers)
    }

    /// Workers running.
    pub fn count(&self) -> usize {
        self.handles.len()
    }

    /// Waits until every worker stopped accepting (the drain started).
    pub async fn closed(&mut self) {
        for h in &mut self.handles {
            if let Some(rx) = h.closed.take() {
                // An error means the worker is gone: nothing is accepted there either.
                let _ = rx.await;
            }
        }
    }

    /// Closes the connections still open on every worker and waits for the threads to exit.
    pub async fn stop(mut self) {
        self.signal_stop();
        let threads: Vec<_> = self
            .handles
            .iter_mut()
            .filter_map(|h| h.thread.take())
            .collect();
        let joined = tokio::task::spawn_blocking(move || {
            for t in threads {
                if t.join().is_err() {
                    tracing::error!("a worker thread panicked");
                }
            }
        });
        let _ = joined.await;
    }

    fn signal_stop(&mut self) {
        for h in &mut self.handles {
            if let Some(tx) = h.stop.take() {
                let _ = tx.send(());
            }
        }
    }
}

impl Drop for Workers {
    /// Dropped without [`stop`](Self::stop) (the caller's task was cancelled): the workers
    /// close their connections and exit on their own.
    fn drop(&mut self) {
        self.signal_stop();
    }
}

#[allow(clippy::too_many_arguments)]
fn run_worker(
    index: usize,
    shared: Arc<Shared>,
    limits: Arc<[ConnectionLimit; 2]>,
    balance: Option<(Arc<Balancer>, Inboxes)>,
    [out, inb]: [Socket; 2],
    [out_addr, in_addr]: [SocketAddr; 2],
    ready: oneshot::Sender<Result<(), WorkerError>>,
    closed: oneshot::Sender<()>,
    stop: oneshot::Receiver<()>,
) {
    INDEX.with(|i| i.set(index));
    // I/O and timers only: signals and child processes are the control runtime's business,
    // and their driver would otherwise be polled on every wake-up of a worker.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(rt) => rt,
        Err(source) => {
            let _ = ready.send(Err(WorkerError::Start { index, source }));
            return;
        }
    };
    runtime.block_on(async move {
        // tokio's time driver writes to its eventfd when a timer is armed earlier than the
        // wake-up it parked with (or when it parked with no timer at all). hyper arms a
        // header-read timeout for every request a connection waits for, so without a nearer
        // timer a worker woke itself through the eventfd for about one request in ten: one
        // `write` and one empty `epoll_wait` more. This tick keeps a timer at most a second
        // away, earlier than any per-request timeout, for one wake-up a second per worker.
        tokio::spawn(async {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
            }
        });
        let bind = |s: Socket, listener: &'static str, addr: SocketAddr| {
            s.listen().map_err(|source| WorkerError::Bind {
                index,
                listener,
                addr,
                source,
            })
        };
        let listeners = bind(out, "outbound", out_addr)
            .and_then(|o| bind(inb, "inbound", in_addr).map(|i| (o, i)));
        let (out, inb) = match listeners {
            Ok(l) => {
                let _ = ready.send(Ok(()));
                l
            }
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let mut stop = stop;
        let (out_balance, in_balance) = match balance {
            Some((balancer, [out_inbox, in_inbox])) => (
                Some(Balance {
                    balancer: balancer.clone(),
                    index,
                    inbox: out_inbox,
                }),
                Some(Balance {
                    balancer,
                    index,
                    inbox: in_inbox,
                }),
            ),
            None => (None, None),
        };
        let accepting = async {
            tokio::join!(
                accept_loop(
                    out,
                    ListenerKind::Outbound,
                    &limits[0],
                    shared.clone(),
                    out_balance,
                    outbound::handle
                ),
                accept_loop(
                    inb,
                    ListenerKind::Inbound,
                    &limits[1],
                    shared.clone(),
                    in_balance,
                    inbound::handle
                ),
            )
        };
        // Told to stop while still accepting (the caller gave up, e.g. a failed start or a
        // cancelled task): dropping the accept loops closes their connections.
        let (mut out_conns, mut in_conns) = tokio::select! {
            conns = accepting => conns,
            _ = &mut stop => return,
        };
        let _ = closed.send(());
        // In-flight connections (and the pooled connections they use) go on until the
        // caller has waited for the drain; an error means the caller is gone: stop too.
        let _ = stop.await;
        out_conns.abort_all();
        in_conns.abort_all();
    });
    // Dropping the runtime cancels what is left (pooled upstream connections, upgrades).
    drop(runtime);
}
