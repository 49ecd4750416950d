//! Running a sidecar: bind the listeners, start the config and certificate watchers, accept
//! until drained, then let in-flight connections finish up to the drain deadline.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::admin::{self, Endpoint};
use crate::config::ConfigSource;
use crate::state::Shared;
use crate::worker::{self, WorkerError, Workers};
use crate::{cert_source, mesh_config};

/// The bound listeners of a sidecar.
#[derive(Debug)]
pub struct Listeners {
    /// Outbound capture.
    pub outbound: TcpListener,
    /// Inbound capture.
    pub inbound: TcpListener,
    /// Admin (localhost).
    pub admin: TcpListener,
    /// Metrics.
    pub stats: TcpListener,
    /// Health.
    pub health: TcpListener,
}

/// A listener could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({name}): {source}")]
pub struct BindError {
    /// Which listener.
    pub name: &'static str,
    /// The address.
    pub addr: SocketAddr,
    /// Why.
    pub source: io::Error,
}

impl Listeners {
    /// Binds every port of `shared.config` (the capture ports with `SO_REUSEPORT`, so each
    /// worker thread gets its own socket on them).
    pub async fn bind(shared: &Shared) -> Result<Self, BindError> {
        let c = &shared.config;
        let shared_at = |name: &'static str, addr: SocketAddr| {
            worker::bind_shared(addr).map_err(|source| BindError { name, addr, source })
        };
        let at = |name: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| BindError { name, addr, source })
        };
        Ok(Self {
            outbound: shared_at("outbound", SocketAddr::new(c.bind, c.ports.outbound))?,
            inbound: shared_at("inbound", SocketAddr::new(c.bind, c.ports.inbound))?,
            admin: at("admin", c.admin_addr()).await?,
            stats: at("stats", SocketAddr::new(c.bind, c.ports.stats)).await?,
            health: at("health", SocketAddr::new(c.bind, c.ports.health)).await?,
        })
    }
}

/// The sidecar cannot start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The certificate source cannot start (e.g. the CA address does not resolve).
    #[error("certificate source: {0}")]
    Certificates(#[from] warden_identity::agent::AgentError),
    /// A worker thread cannot start.
    #[error(transparent)]
    Worker(#[from] WorkerError),
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainOutcome {
    /// Connections still open at the deadline (closed by the exit).
    pub abandoned: usize,
}

/// Runs the sidecar until it is drained (`shared.drain.start()`: SIGTERM, `/quitquitquit`),
/// then waits for in-flight connections up to the drain deadline and closes the rest.
pub async fn run(shared: Arc<Shared>, listeners: Listeners) -> Result<DrainOutcome, StartError> {
    let mut background = JoinSet::new();
    // Runs until dropped at the end of this function.
    let identity = cert_source::start(&shared)?;
    match &shared.config.config {
        ConfigSource::Directory(dir) => {
            background.spawn(mesh_config::watch_directory(shared.clone(), dir.clone()));
        }
        ConfigSource::ControlPlane(cp) => {
            background.spawn(mesh_config::subscribe(shared.clone(), cp.clone()));
        }
    }
    background.spawn(admin::serve(
        listeners.admin,
        shared.clone(),
        Endpoint::Admin,
    ));
    background.spawn(admin::serve(
        listeners.stats,
        shared.clone(),
        Endpoint::Stats,
    ));
    background.spawn(admin::serve(
        listeners.health,
        shared.clone(),
        Endpoint::Health,
    ));

    let mut workers = Workers::start(&shared, listeners.outbound, listeners.inbound).await?;
    tracing::debug!(workers = workers.count(), "workers accepting");
    workers.closed().await;
    tracing::info!(
        active = shared.drain.active(),
        deadline_ms = shared.config.drain_deadline.as_millis() as u64,
        "draining: listeners closed, waiting for in-flight connections"
    );
    let finished = shared.drain.wait_idle(shared.config.drain_deadline).await;
    let abandoned = shared.drain.active();
    if finished {
        tracing::info!("drained: every connection finished");
    } else {
        tracing::warn!(
            abandoned,
            "drain deadline passed: closing the remaining connections"
        );
    }
    workers.stop().await;
    background.abort_all();
    identity.stop().await;
    Ok(DrainOutcome { abandoned })
}
