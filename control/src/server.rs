//! The running control plane: one TLS listener (port 15012) serving Istio's CA gRPC service
//! and the published CA documents, plus a maintenance loop.
//!
//! [`ControlPlane::open`] loads (or creates) the state: the token-signing key, the CA
//! (self-signed in `<state>/ca`, or a plugin directory), the serving certificate, the trust
//! bundle file `<state>/root-cert.pem`. [`ControlPlane::start`] binds and serves;
//! [`RunningControlPlane::shutdown`] stops accepting, lets open connections finish (HTTP/2
//! GOAWAY) for up to the drain timeout, then closes the rest.
//!
//! Every `reload_interval` (2 s) the maintenance loop, on the blocking pool:
//! - reloads the CA files if they changed (a rotation done by `warden control rotate-root`,
//!   a replaced plugin secret); a broken new set is refused and the old one kept;
//! - re-reads the revocation store if it changed and regenerates the CRL (the CA caches it
//!   per revocation generation), publishing it at `/ca/crl.pem`;
//! - republishes the trust bundle (and rewrites `<state>/root-cert.pem`) when it changed, and
//!   makes the client-certificate verifier trust it;
//! - renews the serving certificate at half its life or when the CA's signer changed;
//! - re-reads changed token JWKS files (a broken file keeps the previous keys);
//! - hourly, re-issues a self-signed root that has less than 20% of its life left.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::crypto::CryptoProvider;
use time::OffsetDateTime;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tonic::service::Routes;
use tower_service::Service as _;
use warden_identity::ca::CaMode;
use warden_identity::tools::fmt_time;
use warden_identity::{CaOptions, CertificateAuthority};

use crate::auth::{Authenticator, token_keys};
use crate::config::{CaSource, ControlConfig};
use crate::error::ControlError;
use crate::fsutil::{PUBLIC_MODE, create_private_dir, write_atomic};
use crate::peer::{ClientCertificate, PeerInfo};
use crate::publish::{self, Published};
use crate::push::PushServer;
use crate::service::CaService;
use crate::serving::{ServingCert, ServingCertResolver};
use crate::store::{ConfigSource, Snapshot};
use crate::tls::{self, MeshClientVerifier};
use crate::token_key;

/// How often the self-signed root's remaining life is checked (Istio: hourly).
const ROOT_CHECK_EVERY: Duration = Duration::from_secs(3600);
/// Least time between two attempts to renew the serving certificate after a failure.
const SERVING_RETRY: Duration = Duration::from_secs(30);

/// State shared by the listener, the service and the maintenance loop.
#[derive(Debug)]
struct Shared {
    config: ControlConfig,
    provider: Arc<CryptoProvider>,
    ca: Arc<CertificateAuthority>,
    auth: Arc<Authenticator>,
    token_key: warden_policy::jwt::SigningKey,
    published: Arc<Published>,
    serving: Arc<ServingCertResolver>,
    clients: Arc<MeshClientVerifier>,
    maintenance: Mutex<Maintenance>,
}

/// What the maintenance loop remembers between ticks.
#[derive(Debug)]
struct Maintenance {
    last_root_check: Instant,
    next_serving_attempt: Instant,
    jwks_stamps: HashMap<PathBuf, Option<FileStamp>>,
    /// The last CRL failure, logged once rather than on every pass.
    crl_error: Option<String>,
}

type FileStamp = (u64, i64, i64, u64);

fn file_stamp(path: &std::path::Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| (m.ino(), m.mtime(), m.mtime_nsec(), m.len()))
}

/// A control plane whose state is loaded, not yet listening.
#[derive(Debug)]
pub struct ControlPlane {
    shared: Arc<Shared>,
    push: Option<Push>,
}

/// The config push service served beside the CA, and where its snapshots come from.
#[derive(Debug, Clone)]
struct Push {
    server: PushServer,
    snapshots: watch::Receiver<Arc<Snapshot>>,
}

/// Every CRL to publish, PEM, concatenated; and the signing CA's CRL, DER.
fn render_crls(ca: &CertificateAuthority) -> Result<(String, Vec<u8>, u64, usize), ControlError> {
    let crls = ca.crls()?;
    let pem: String = crls.iter().map(|c| c.pem.as_str()).collect();
    let first = &crls[0];
    Ok((pem, first.der.clone(), first.number, first.revoked))
}

impl ControlPlane {
    /// Loads or creates the state directory, the CA, the token-signing key and the serving
    /// certificate. Blocking (file I/O, key generation): call it before the runtime gets busy,
    /// or on the blocking pool.
    pub fn open(config: ControlConfig) -> Result<Self, ControlError> {
        let paths = config.paths();
        create_private_dir(&paths.dir).map_err(|e| ControlError::io("creating", &paths.dir, e))?;
        let token_key = token_key::load_or_create(&paths)?;
        // Stamps first: a file changed while it is read is read again by the next pass.
        let jwks_stamps = config
            .token_jwks
            .iter()
            .map(|i| (i.jwks.clone(), file_stamp(&i.jwks)))
            .collect();
        let keys = token_keys(&token_key, &paths.token_key, &config.token_jwks)?;
        let options = CaOptions {
            trust_domain: config.trust_domain.clone(),
            default_ttl: config.default_ttl,
            max_ttl: config.max_ttl,
            ..CaOptions::default()
        };
        let ca = match &config.ca {
            CaSource::SelfSigned { root_key } => CertificateAuthority::self_signed(
                &paths.ca_dir,
                CaOptions {
                    root_key: *root_key,
                    ..options
                },
            )?,
            CaSource::Plugin { dir } => {
                CertificateAuthority::plugin(dir, Some(&paths.ca_dir), options)?
            }
        };
        let ca = Arc::new(ca);
        if let Some(serial) = ca.maybe_reissue_root(OffsetDateTime::now_utc())? {
            tracing::info!(%serial, "re-issued the self-signed root (less than 20% of its life was left)");
        }
        let provider = tls::provider();
        let serving = ServingCert::issue(
            &ca,
            &provider,
            &config.serving_identity(),
            &config.dns_names,
            &config.ip_sans,
            config.serving_ttl,
        )?;
        let root_pem = ca.root_bundle_pem();
        write_atomic(&paths.root_cert, root_pem.as_bytes(), PUBLIC_MODE)
            .map_err(|e| ControlError::io("writing", &paths.root_cert, e))?;

        let clients = Arc::new(MeshClientVerifier::new(ca.clone(), provider.clone())?);
        let auth = Arc::new(Authenticator::new(
            keys,
            &config.token_audience,
            config.trust_domain.clone(),
            config.cluster_id.clone(),
        ));
        let now = Instant::now();
        let this = Self {
            push: None,
            shared: Arc::new(Shared {
                provider,
                ca,
                auth,
                token_key,
                published: Arc::new(Published::new(root_pem)),
                serving: Arc::new(ServingCertResolver::new(serving)),
                clients,
                maintenance: Mutex::new(Maintenance {
                    last_root_check: now,
                    next_serving_attempt: now,
                    jwks_stamps,
                    crl_error: None,
                }),
                config,
            }),
        };
        publish_crls(
            &this.shared,
            &mut this
                .shared
                .maintenance
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        Ok(this)
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.shared.ca
    }

    /// Serves the config push API (`warden.config.v1.ConfigDiscovery`) of `source` on the same
    /// listener as the CA. A proxy subscribes with its mesh workload certificate as TLS client
    /// certificate: the identity it gets config for is the one in that certificate (verified at
    /// the handshake against the CA's roots, and checked here for expiry and revocation when the
    /// stream opens). With [`ControlConfig::debug_listen`] set, the proxies table is served there
    /// too (`warden control status`).
    pub fn with_config_source(mut self, source: &dyn ConfigSource) -> Self {
        let ca = self.shared.ca.clone();
        let server = PushServer::new(source).with_peer_extractor(move |ext| {
            let peer = ext.get::<Arc<PeerInfo>>()?;
            push_peer(&ca, peer)
        });
        self.push = Some(Push {
            server,
            snapshots: source.subscribe(),
        });
        self
    }

    /// Binds the listener and starts serving and the maintenance loop on the current tokio
    /// runtime.
    pub async fn start(self) -> Result<RunningControlPlane, ControlError> {
        let shared = self.shared;
        let addr = shared.config.listen;
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ControlError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| ControlError::Bind { addr, source })?;
        let tls_config = tls::server_config(
            shared.provider.clone(),
            shared.serving.clone(),
            shared.clients.clone(),
        )?;
        log_start(&shared, local_addr);

        let push = self.push;
        let debug = match (&push, shared.config.debug_listen) {
            (Some(push), Some(addr)) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ControlError::Bind { addr, source })?;
                let debug_addr = listener
                    .local_addr()
                    .map_err(|source| ControlError::Bind { addr, source })?;
                Some((listener, debug_addr, push.clone()))
            }
            _ => None,
        };

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let debug_addr = debug.map(|(listener, debug_addr, push)| {
            let mut stop = shutdown_rx.clone();
            tokio::spawn(crate::status::serve_debug(
                listener,
                push.server,
                push.snapshots,
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            ));
            tracing::info!(debug_addr = %debug_addr, "proxy status on http://{debug_addr}/debug/proxies");
            debug_addr
        });
        let maintenance = tokio::spawn(maintenance_loop(shared.clone(), shutdown_rx.clone()));
        let server = tokio::spawn(accept_loop(
            listener,
            TlsAcceptor::from(Arc::new(tls_config)),
            shared.clone(),
            push.as_ref().map(|p| p.server.clone()),
            shutdown_rx,
        ));
        Ok(RunningControlPlane {
            local_addr,
            debug_addr,
            push: push.map(|p| p.server),
            shared,
            shutdown_tx,
            server,
            maintenance,
        })
    }
}

fn log_start(shared: &Shared, local_addr: SocketAddr) {
    let ca = &shared.ca;
    let mode = match ca.mode() {
        CaMode::SelfSigned { dir } => format!("self-signed ({})", dir.display()),
        CaMode::Plugin { files } => format!("plugin ({})", files.ca_cert.display()),
    };
    for root in ca.roots() {
        tracing::info!(
            serial = %root.serial,
            subject = %root.subject,
            status = ?root.status,
            not_after = %fmt_time(root.not_after),
            sha256 = %root.sha256_fingerprint,
            "trusted root"
        );
    }
    let serving = shared.serving.current();
    tracing::info!(
        addr = %local_addr,
        trust_domain = %shared.config.trust_domain,
        ca = %mode,
        root_sha256 = %ca.roots().first().map(|r| r.sha256_fingerprint.clone()).unwrap_or_default(),
        serving_identity = %shared.config.serving_identity(),
        serving_not_after = %fmt_time(serving.not_after),
        token_kid = shared.token_key.kid(),
        root_bundle = %shared.config.paths().root_cert.display(),
        "warden control listening (CA gRPC and https://{local_addr}/ca/)"
    );
}

/// A control plane that is serving.
#[derive(Debug)]
pub struct RunningControlPlane {
    local_addr: SocketAddr,
    debug_addr: Option<SocketAddr>,
    push: Option<PushServer>,
    shared: Arc<Shared>,
    shutdown_tx: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    maintenance: tokio::task::JoinHandle<()>,
}

impl RunningControlPlane {
    /// The address it listens on (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The CA.
    pub fn ca(&self) -> &Arc<CertificateAuthority> {
        &self.shared.ca
    }

    /// Where the proxy status endpoint listens, when the push API and
    /// [`ControlConfig::debug_listen`] are both on.
    pub fn debug_addr(&self) -> Option<SocketAddr> {
        self.debug_addr
    }

    /// The push service, when serving config ([`ControlPlane::with_config_source`]).
    pub fn push(&self) -> Option<&PushServer> {
        self.push.as_ref()
    }

    /// The trust bundle it publishes, PEM.
    pub fn root_bundle_pem(&self) -> String {
        String::from_utf8_lossy(&self.shared.published.root_pem()).into_owned()
    }

    /// The serving certificate in use.
    pub fn serving_cert(&self) -> Arc<ServingCert> {
        self.shared.serving.current()
    }

    /// Runs one maintenance pass now (what the loop does every `reload_interval`).
    pub async fn maintain_now(&self) {
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || maintain(&shared)).await;
    }

    /// Stops accepting, lets open connections finish for up to the drain timeout, then closes
    /// what is left.
    pub async fn shutdown(self) {
        // Subscription streams live as long as their proxy: end them, or the drain would wait
        // for the full timeout. Proxies reconnect (to this control plane's successor).
        if let Some(push) = &self.push {
            push.close_streams();
        }
        let _ = self.shutdown_tx.send(true);
        let _ = self.maintenance.await;
        let _ = self.server.await;
        tracing::info!("warden control stopped");
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    push: Option<PushServer>,
    mut shutdown: watch::Receiver<bool>,
) {
    // One router: the CA service, and the config push service when configured.
    let mut routes =
        Routes::new(CaService::new(shared.ca.clone(), shared.auth.clone()).into_server());
    if let Some(push) = push {
        routes = routes.add_service(push.service());
    }
    let grpc = routes.prepare();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(1024)
        .keep_alive_interval(Duration::from_secs(60))
        .keep_alive_timeout(Duration::from_secs(20));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    let mut connections = JoinSet::new();
    let handshake_timeout = shared.config.handshake_timeout;

    loop {
        while connections.try_join_next().is_some() {}
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off a little, keep serving.
                tracing::warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let grpc = grpc.clone();
        let published = shared.published.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(peer = %remote_addr, "TLS handshake failed: {e}");
                    return;
                }
                Err(_) => {
                    tracing::debug!(peer = %remote_addr, "TLS handshake timed out");
                    return;
                }
            };
            let client_cert = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| ClientCertificate::from_der(leaf));
            let peer = Arc::new(PeerInfo {
                remote_addr,
                client_cert,
            });
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                let mut grpc = grpc.clone();
                let published = published.clone();
                req.extensions_mut().insert(peer.clone());
                async move {
                    if req.uri().path().starts_with(publish::PREFIX) {
                        return Ok::<_, Infallible>(published.respond(&req));
                    }
                    let is_grpc = req
                        .headers()
                        .get(http::header::CONTENT_TYPE)
                        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                    if !is_grpc {
                        return Ok(publish::not_found());
                    }
                    grpc.call(req).await
                }
            });
            let conn = builder
                .serve_connection(TokioIo::new(tls), service)
                .into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(peer = %remote_addr, "connection ended with an error: {e}");
            }
        });
    }
    drop(listener);
    while connections.try_join_next().is_some() {}
    let drain = shared.config.drain_timeout;
    tracing::info!(
        connections = connections.len(),
        "shutting down: draining connections (up to {drain:?})"
    );
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {drain:?}: closing them");
    }
    connections.shutdown().await;
}

/// The identity a config subscriber gets config for: its mesh client certificate, if it presented
/// one that has not expired or been revoked since the connection opened. `None` refuses the
/// subscription (`UNAUTHENTICATED`).
fn push_peer(ca: &CertificateAuthority, peer: &PeerInfo) -> Option<crate::push::PeerInfo> {
    let refuse = |reason: &dyn std::fmt::Display| {
        tracing::info!(peer = %peer.remote_addr, "config subscription refused: {reason}");
        None
    };
    match &peer.client_cert {
        None => refuse(&"no client certificate"),
        Some(ClientCertificate::Unusable { reason }) => refuse(reason),
        Some(ClientCertificate::Mesh {
            identity,
            serial,
            not_after,
        }) => {
            if *not_after <= OffsetDateTime::now_utc() {
                return refuse(&format!(
                    "client certificate {serial} expired at {not_after}"
                ));
            }
            match ca.is_serial_revoked(serial) {
                Ok(false) => Some(crate::push::PeerInfo {
                    identity: identity.clone(),
                    not_after: Some(*not_after),
                }),
                Ok(true) => refuse(&format!("client certificate {serial} is revoked")),
                // Fail closed: the CA cannot tell.
                Err(e) => refuse(&format!("revocation state unreadable: {e}")),
            }
        }
    }
}

async fn maintenance_loop(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.config.reload_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tick.tick() => {}
        }
        let s = shared.clone();
        if let Err(e) = tokio::task::spawn_blocking(move || maintain(&s)).await {
            tracing::error!("maintenance pass failed: {e}");
        }
    }
}

/// Regenerates (if due) and publishes the CRLs. A CA that cannot sign a CRL still runs: the
/// failure is logged once and the CRL paths say why there is none.
fn publish_crls(shared: &Shared, m: &mut Maintenance) {
    match render_crls(&shared.ca) {
        Ok((pem, der, number, revoked)) => {
            m.crl_error = None;
            if shared.published.crl_pem().as_deref() != Some(pem.as_bytes()) {
                shared.published.set_crls(pem, der);
                tracing::info!(number, revoked, "published a new CRL");
            }
        }
        Err(e) => {
            let reason = e.to_string();
            if m.crl_error.as_deref() != Some(reason.as_str()) {
                tracing::error!(
                    "no CRL can be published (revocation is still enforced at issuance and at the handshake): {reason}"
                );
                shared.published.set_crl_unavailable(&reason);
                m.crl_error = Some(reason);
            }
        }
    }
}

/// One maintenance pass. Blocking. Every step logs its own failure and leaves the state in
/// force as it was.
fn maintain(shared: &Shared) {
    let mut m = shared.maintenance.lock().unwrap_or_else(|p| p.into_inner());
    let ca = &shared.ca;
    match ca.reload_if_changed() {
        Ok(true) => tracing::info!("CA files changed: reloaded"),
        Ok(false) => {}
        Err(e) => {
            tracing::error!("CA files changed but cannot be loaded; keeping the CA in force: {e}")
        }
    }
    if m.last_root_check.elapsed() >= ROOT_CHECK_EVERY {
        m.last_root_check = Instant::now();
        match ca.maybe_reissue_root(OffsetDateTime::now_utc()) {
            Ok(Some(serial)) => tracing::info!(%serial, "re-issued the self-signed root"),
            Ok(None) => {}
            Err(e) => tracing::error!("root check failed: {e}"),
        }
    }

    let bundle = ca.root_bundle_pem();
    if *shared.published.root_pem() != *bundle.as_bytes() {
        let path = shared.config.paths().root_cert;
        if let Err(e) = write_atomic(&path, bundle.as_bytes(), PUBLIC_MODE) {
            tracing::error!("writing {}: {e}", path.display());
        }
        shared.published.set_root_pem(bundle);
        if let Err(e) = shared.clients.refresh_roots() {
            tracing::error!("client certificate roots: {e}");
        }
        for root in ca.roots() {
            tracing::info!(serial = %root.serial, status = ?root.status, sha256 = %root.sha256_fingerprint, "trust bundle changed");
        }
    }

    publish_crls(shared, &mut m);

    let now = Instant::now();
    if now >= m.next_serving_attempt
        && shared
            .serving
            .current()
            .needs_renewal(ca, OffsetDateTime::now_utc())
    {
        let c = &shared.config;
        match ServingCert::issue(
            ca,
            &shared.provider,
            &c.serving_identity(),
            &c.dns_names,
            &c.ip_sans,
            c.serving_ttl,
        ) {
            Ok(cert) => {
                tracing::info!(serial = %cert.serial, not_after = %fmt_time(cert.not_after), "renewed the serving certificate");
                shared.serving.replace(cert);
            }
            Err(e) => {
                m.next_serving_attempt = now + SERVING_RETRY;
                tracing::error!(
                    "{e}; serving the current certificate, retrying in {SERVING_RETRY:?}"
                );
            }
        }
    }

    let changed = m
        .jwks_stamps
        .iter()
        .any(|(path, stamp)| file_stamp(path) != *stamp);
    if changed {
        for (path, stamp) in m.jwks_stamps.iter_mut() {
            *stamp = file_stamp(path);
        }
        let paths = shared.config.paths();
        match token_keys(
            &shared.token_key,
            &paths.token_key,
            &shared.config.token_jwks,
        ) {
            Ok(keys) => {
                shared.auth.set_keys(keys);
                tracing::info!("token issuer keys reloaded");
            }
            Err(e) => tracing::error!(
                "token issuer keys changed but cannot be loaded; keeping the previous keys: {e}"
            ),
        }
    }
}
