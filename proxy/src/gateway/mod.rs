//! Ingress and egress gateways (`warden gateway --mode ingress|egress`), configured by Istio's
//! Gateway, VirtualService, DestinationRule, ServiceEntry and AuthorizationPolicy.
//!
//! - [`config`]: the process configuration (YAML + environment);
//! - [`table`]: the routing table compiled per config/credential change;
//! - [`creds`]: server and origination TLS credentials (files or `credentialName`);
//! - [`hello`]: reading the ClientHello's SNI without terminating TLS;
//! - [`listener`]: one connection (PASSTHROUGH, SIMPLE, MUTUAL, ISTIO_MUTUAL);
//! - [`http`]: routing, authorization, retries and timeouts per request;
//! - [`upstream`]: mesh mTLS, TLS origination, plaintext upstreams;
//! - [`metrics`]: Istio's request metrics (`reporter="source"`).
//!
//! [`GatewayShared`] holds what every connection reads; [`run`] runs a gateway until drained.
//! See docs/gateway.md.

pub mod config;
pub mod creds;
pub mod hello;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod pool;
pub mod table;
pub mod upstream;

use std::collections::{BTreeSet, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use warden_identity::agent::{
    AgentConfig, CaAgent, IdentityHandle, StaticSource, StaticSourceConfig,
};
use warden_identity::tls::TlsProvider;
use warden_policy::networking::{NetworkingResource, interpret_networking};
use warden_policy::{LastGoodConfig, PolicySet, PolicySetOptions, WorkloadRef};

pub use config::{GatewayCertSource, GatewayConfig, GatewayMode};
pub use table::GatewayTable;

use crate::drain::Drain;
use crate::metrics::Metrics;

/// Everything a gateway's connections, watchers and admin endpoints share.
pub struct GatewayShared {
    /// The configuration.
    pub config: GatewayConfig,
    /// The gateway's own mesh identity (ISTIO_MUTUAL servers, mTLS to mesh services).
    pub tls: TlsProvider,
    /// The compiled table; `None` until the first load.
    pub table: ArcSwapOption<GatewayTable>,
    /// TCP metrics.
    pub metrics: Metrics,
    /// Request metrics.
    pub http_metrics: metrics::HttpMetrics,
    /// Drain signal and in-flight count.
    pub drain: Drain,
    /// Idle upstream HTTP connections.
    pub pool: pool::HttpPool,
    /// Ports with a listener.
    bound: Mutex<BTreeSet<u16>>,
    /// Ports that could not be bound (port -> why).
    bind_errors: Mutex<HashMap<u16, String>>,
    /// The identity source's status sentence.
    identity_status: Mutex<String>,
}

impl GatewayShared {
    /// A gateway without config or certificate yet (not ready).
    pub fn new(config: GatewayConfig, tls: TlsProvider) -> Self {
        Self {
            config,
            tls,
            table: ArcSwapOption::empty(),
            metrics: Metrics::new(),
            http_metrics: metrics::HttpMetrics::new(),
            drain: Drain::new(),
            pool: pool::HttpPool::default(),
            bound: Mutex::new(BTreeSet::new()),
            bind_errors: Mutex::new(HashMap::new()),
            identity_status: Mutex::new("waiting for the gateway certificate".into()),
        }
    }

    /// `Ok` when the certificate and config are loaded and every server port listens.
    pub fn readiness(&self) -> Result<(), String> {
        if self.drain.is_draining() {
            return Err("draining".into());
        }
        if !self.tls.has_credentials() {
            return Err(format!(
                "certificate not loaded: {}",
                lock(&self.identity_status)
            ));
        }
        let Some(table) = self.table.load_full() else {
            return Err("config not loaded yet".into());
        };
        let bound = lock(&self.bound);
        if let Some(p) = table.ports.keys().find(|p| !bound.contains(p)) {
            let why = lock(&self.bind_errors).get(p).cloned();
            return Err(format!(
                "port {p} is not listening{}",
                why.map(|w| format!(": {w}")).unwrap_or_default()
            ));
        }
        Ok(())
    }

    /// The Prometheus exposition (TCP and request metrics).
    pub fn render_metrics(&self) -> String {
        self.http_metrics.render_into(&self.metrics.render())
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The bound stats (15020) and health (15021) listeners.
#[derive(Debug)]
pub struct AdminListeners {
    /// `/stats/prometheus`.
    pub stats: TcpListener,
    /// `/healthz/ready`.
    pub health: TcpListener,
}

impl AdminListeners {
    /// Binds `bindAddress:ports.stats` and `bindAddress:ports.health`.
    pub async fn bind(cfg: &GatewayConfig) -> std::io::Result<Self> {
        let at = |port| async move {
            let addr = SocketAddr::new(cfg.bind, port);
            TcpListener::bind(addr)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        Ok(Self {
            stats: at(cfg.stats_port).await?,
            health: at(cfg.health_port).await?,
        })
    }
}

/// Starts the gateway's identity source: the static directory, or the CA agent from the
/// environment.
pub fn start_identity(shared: &GatewayShared) -> Result<IdentityHandle, String> {
    match &shared.config.certs {
        GatewayCertSource::StaticDir(dir) => {
            let mut c = StaticSourceConfig::new(dir.clone(), shared.config.trust_domain.clone());
            c.poll = shared.config.reload_interval;
            Ok(StaticSource::start(c, shared.tls.clone()))
        }
        GatewayCertSource::CaAgent => {
            // The identity is the gateway's (file or environment, already merged); the rest of
            // the agent's settings come from the environment.
            let cfg = &shared.config;
            let c = AgentConfig::from_lookup(|k| match k {
                "POD_NAMESPACE" => Some(cfg.namespace.clone()),
                "SERVICE_ACCOUNT" => Some(cfg.service_account.clone()),
                "TRUST_DOMAIN" => Some(cfg.trust_domain.as_str().to_owned()),
                _ => std::env::var(k).ok(),
            })
            .map_err(|e| e.to_string())?;
            CaAgent::start(c, shared.tls.clone()).map_err(|e| e.to_string())
        }
    }
}

/// The config directory as last loaded: security resources (last good version per file) and
/// networking resources.
#[derive(Default)]
pub struct ConfigLoader {
    last_good: LastGoodConfig,
    networking: HashMap<PathBuf, Vec<NetworkingResource>>,
    generation: u64,
}

impl ConfigLoader {
    /// Loads `path`, compiles the table and publishes it. Returns the problems (files kept at
    /// their last good version, rejected resources, servers or routes left out).
    pub fn reload(
        &mut self,
        shared: &GatewayShared,
        path: &Path,
    ) -> Result<Vec<String>, warden_policy::LoadError> {
        let report = warden_policy::load_path(path)?;
        let mut problems: Vec<String> = report.errors().map(|e| e.to_string()).collect();
        for k in self.last_good.update(&report) {
            problems.push(format!("{}: kept the last good version", k.display()));
        }
        // Networking resources, per file: a file with an error keeps its last good version.
        for f in &report.files {
            let mut good = Vec::new();
            let mut bad = !f.is_ok();
            for d in &f.others {
                if let Some(parsed) = interpret_networking(d) {
                    match parsed.result {
                        Ok(r) => good.push(r),
                        Err(errs) => {
                            bad = true;
                            problems.extend(errs.iter().map(|e| e.to_string()));
                        }
                    }
                }
            }
            if !bad {
                self.networking.insert(f.path.clone(), good);
            } else if self.networking.contains_key(&f.path) {
                problems.push(format!(
                    "{}: networking resources: kept the last good version",
                    f.path.display()
                ));
            }
        }
        let present: BTreeSet<&PathBuf> = report.files.iter().map(|f| &f.path).collect();
        self.networking.retain(|p, _| present.contains(p));
        let networking: Vec<NetworkingResource> = {
            let mut paths: Vec<&PathBuf> = self.networking.keys().collect();
            paths.sort();
            paths
                .into_iter()
                .flat_map(|p| self.networking[p].iter().cloned())
                .collect()
        };
        let cfg = &shared.config;
        let set = PolicySet::new(
            self.last_good.resources(),
            &PolicySetOptions {
                root_namespace: cfg.root_namespace.clone(),
            },
        );
        let policy = set.compile_for(&WorkloadRef {
            namespace: &cfg.namespace,
            labels: &cfg.labels,
        });
        self.generation += 1;
        let previous = shared.table.load_full();
        let mut table = GatewayTable::build(
            cfg,
            &networking,
            policy,
            self.generation,
            previous.as_deref(),
        );
        problems.append(&mut table.problems);
        table.problems = problems.clone();
        shared.table.store(Some(Arc::new(table)));
        Ok(problems)
    }
}

fn list_files(path: &Path) -> Vec<PathBuf> {
    let mut out = vec![path.to_owned()];
    let mut stack = vec![path.to_owned()];
    while let Some(p) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&p) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out.sort();
    out
}

/// Re-loads the config directory when a file in it, or a credential file in use, changed.
async fn watch_config(shared: Arc<GatewayShared>, listeners: Arc<ListenerSet>) {
    let dir = shared.config.config_dir.clone();
    let mut loader = ConfigLoader::default();
    let mut last: Option<(creds::Stamp, creds::Stamp)> = None;
    let mut tick = tokio::time::interval(shared.config.reload_interval);
    loop {
        tick.tick().await;
        let cred_files = shared
            .table
            .load()
            .as_ref()
            .map(|t| t.credential_files.clone())
            .unwrap_or_default();
        let now = (creds::stamp(&list_files(&dir)), creds::stamp(&cred_files));
        if last.as_ref() == Some(&now) {
            continue;
        }
        match loader.reload(&shared, &dir) {
            Ok(problems) => {
                for p in &problems {
                    tracing::error!(problem = %p, "gateway config: problem");
                }
                tracing::info!(path = %dir.display(), generation = loader.generation, "gateway config: loaded");
                // Stamp the credential files of the new table too, so they are not re-read
                // at once.
                let files = shared
                    .table
                    .load()
                    .as_ref()
                    .map(|t| t.credential_files.clone())
                    .unwrap_or_default();
                last = Some((now.0, creds::stamp(&files)));
                listeners.sync(&shared).await;
            }
            Err(e) => {
                tracing::error!(error = %e, "gateway config: cannot read; keeping the current config");
                last = None;
            }
        }
    }
}

/// The server listeners, one per Gateway port, opened and closed as the config changes.
#[derive(Default)]
pub struct ListenerSet {
    tasks: tokio::sync::Mutex<HashMap<u16, JoinHandle<()>>>,
}

impl ListenerSet {
    async fn sync(&self, shared: &Arc<GatewayShared>) {
        let wanted = shared
            .table
            .load()
            .as_ref()
            .map(|t| t.port_numbers())
            .unwrap_or_default();
        let mut tasks = self.tasks.lock().await;
        tasks.retain(|port, task| {
            let keep = wanted.contains(port);
            if !keep {
                task.abort();
                lock(&shared.bound).remove(port);
                tracing::info!(port, "gateway: port closed (no server left)");
            }
            keep
        });
        for port in wanted {
            if tasks.contains_key(&port) || shared.drain.is_draining() {
                continue;
            }
            let addr = SocketAddr::new(shared.config.bind, port);
            match TcpListener::bind(addr).await {
                Ok(l) => {
                    lock(&shared.bound).insert(port);
                    lock(&shared.bind_errors).remove(&port);
                    tracing::info!(%addr, "gateway: listening");
                    tasks.insert(port, tokio::spawn(accept_loop(l, shared.clone())));
                }
                Err(e) => {
                    tracing::error!(%addr, error = %e, "gateway: cannot listen");
                    lock(&shared.bind_errors).insert(port, e.to_string());
                }
            }
        }
    }

    async fn close_all(&self) {
        for (_, t) in self.tasks.lock().await.drain() {
            t.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<GatewayShared>) {
    let Ok(local) = listener.local_addr() else {
        return;
    };
    let drain = shared.drain.clone();
    loop {
        tokio::select! {
            _ = drain.signaled() => break,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let guard = drain.track();
                    let shared = shared.clone();
                    tokio::spawn(async move {
                        listener::handle(shared, stream, peer, local).await;
                        drop(guard);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, %local, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }
}

/// Serves `/stats/prometheus` (stats) or `/healthz/ready` (health).
async fn serve_admin(listener: TcpListener, shared: Arc<GatewayShared>, stats: bool) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: ::http::Request<hyper::body::Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let path = req.uri().path();
                        let (status, body, ctype) = match (stats, path) {
                            (true, "/stats/prometheus" | "/metrics") => {
                                (200, shared.render_metrics(), "text/plain; version=0.0.4")
                            }
                            (false, "/healthz/ready") => match shared.readiness() {
                                Ok(()) => (200, "ready\n".to_owned(), "text/plain"),
                                Err(why) => (503, format!("not ready: {why}\n"), "text/plain"),
                            },
                            _ => (404, "not found\n".to_owned(), "text/plain"),
                        };
                        let resp = ::http::Response::builder()
                            .status(status)
                            .header(::http::header::CONTENT_TYPE, ctype)
                            .body(Full::new(Bytes::from(body)))
                            .unwrap_or_default();
                        Ok::<_, Infallible>(resp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Runs a gateway until it is drained (`shared.drain.start()`), then lets in-flight
/// connections finish up to `drainDeadline`. Returns the connections abandoned at the deadline.
pub async fn run(shared: Arc<GatewayShared>, admin: AdminListeners) -> Result<usize, String> {
    let identity = start_identity(&shared)?;
    let mut background = JoinSet::new();
    {
        let shared = shared.clone();
        let mut rx = identity.subscribe();
        background.spawn(async move {
            loop {
                *lock(&shared.identity_status) = rx.borrow_and_update().reason.clone();
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
    }
    let listeners = Arc::new(ListenerSet::default());
    background.spawn(watch_config(shared.clone(), listeners.clone()));
    background.spawn(serve_admin(admin.stats, shared.clone(), true));
    background.spawn(serve_admin(admin.health, shared.clone(), false));
    {
        let shared = shared.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(pool::IDLE_TIMEOUT / 4);
            loop {
                tick.tick().await;
                shared.pool.sweep();
            }
        });
    }
    shared.drain.signaled().await;
    listeners.close_all().await;
    tracing::info!(
        active = shared.drain.active(),
        "gateway draining: listeners closed"
    );
    let finished = shared.drain.wait_idle(shared.config.drain_deadline).await;
    let abandoned = if finished { 0 } else { shared.drain.active() };
    background.abort_all();
    identity.stop().await;
    Ok(abandoned)
}
