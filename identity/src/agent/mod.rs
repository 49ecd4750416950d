//! The embedded identity agent: gets the workload's certificate and keeps it fresh, and
//! publishes it to the TLS layer ([`TlsProvider`]).
//!
//! Two sources:
//! - [`CaAgent`]: makes a private key in memory (never written to disk), sends a CSR to the
//!   mesh CA (Istio's `IstioCertificateService.CreateCertificate` over TLS, the CA checked
//!   against the root bundle file, `authorization: Bearer <token>` read from the token file on
//!   every call), renews at half the lifetime (with jitter), retries with capped exponential
//!   backoff while keeping the still-valid certificate, follows root bundle changes and fetches
//!   the CA's CRL;
//! - [`StaticSource`]: reads `cert-chain.pem`, `key.pem`, `root-cert.pem` (and an optional
//!   `crl.pem`) from a directory and reloads them when they change (SPIRE, cert-manager, VMs).
//!
//! Both fail closed: once the certificate has expired and no new one came, the TLS provider is
//! cleared (servers refuse handshakes, clients refuse to connect) and the status says why. The
//! [`IdentityHandle`] gives the status (with a human reason for logs and `/healthz/ready`) and
//! readiness as a watch channel.

mod ca_agent;
mod ca_client;
mod config;
mod crl;
mod error;
mod static_source;

use std::time::Duration;

use time::OffsetDateTime;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use ca_agent::CaAgent;
pub use config::{AgentConfig, ConfigError, DEFAULT_ROOT_CERT, DEFAULT_TOKEN_FILE, parse_duration};
pub use error::AgentError;
pub use static_source::{StaticSource, StaticSourceConfig};

use crate::spiffe::SpiffeId;
use crate::tls::{TlsProvider, WorkloadCredentials};
use crate::x509::Serial;

/// What the agent holds and why it is (not) ready.
#[derive(Debug, Clone)]
pub struct AgentStatus {
    /// Whether a valid certificate is installed (mTLS is served).
    pub ready: bool,
    /// A sentence for logs and the health endpoint.
    pub reason: String,
    /// The identity of the installed (or last) certificate.
    pub identity: Option<SpiffeId>,
    /// Its serial.
    pub serial: Option<Serial>,
    /// Its `notAfter`.
    pub not_after: Option<OffsetDateTime>,
    /// When the next renewal is due (CA agent only).
    pub next_renewal: Option<OffsetDateTime>,
    /// Certificates obtained so far.
    pub certificates_installed: u64,
    /// Failed attempts since the last success.
    pub consecutive_failures: u32,
    /// The last failure, if the last attempt failed.
    pub last_error: Option<AgentError>,
    /// The last CRL failure, if the last CRL refresh failed.
    pub crl_error: Option<AgentError>,
    /// When a CRL was last installed.
    pub crl_updated: Option<OffsetDateTime>,
}

impl AgentStatus {
    pub(crate) fn starting(what: &str) -> Self {
        Self {
            ready: false,
            reason: format!("not ready: waiting for the first certificate from {what}"),
            identity: None,
            serial: None,
            not_after: None,
            next_renewal: None,
            certificates_installed: 0,
            consecutive_failures: 0,
            last_error: None,
            crl_error: None,
            crl_updated: None,
        }
    }
}

/// A running certificate source. Dropping it stops the source (the installed credentials stay
/// in the provider until they expire or are replaced).
#[derive(Debug)]
pub struct IdentityHandle {
    status: watch::Receiver<AgentStatus>,
    task: Option<JoinHandle<()>>,
}

impl IdentityHandle {
    /// The current status.
    pub fn status(&self) -> AgentStatus {
        self.status.borrow().clone()
    }

    /// Whether a valid certificate is installed.
    pub fn is_ready(&self) -> bool {
        self.status.borrow().ready
    }

    /// A receiver notified on every status change (readiness for the proxy's health endpoint).
    pub fn subscribe(&self) -> watch::Receiver<AgentStatus> {
        self.status.clone()
    }

    /// Waits until ready, at most `timeout`; returns the status either way.
    pub async fn wait_ready(&self, timeout: Duration) -> Result<AgentStatus, AgentStatus> {
        let mut rx = self.status.clone();
        let result = tokio::time::timeout(timeout, rx.wait_for(|s| s.ready)).await;
        match result {
            Ok(Ok(s)) => Ok(s.clone()),
            _ => Err(self.status()),
        }
    }

    /// Stops the source and waits for it to end.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for IdentityHandle {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Installs credentials into the provider and keeps the status in step; shared by both sources.
struct Publisher {
    provider: TlsProvider,
    status: watch::Sender<AgentStatus>,
    installed: Option<WorkloadCredentials>,
    /// The certificate that expired, for the not-ready reason.
    expired: Option<(SpiffeId, OffsetDateTime)>,
    /// Where certificates come from, for the not-ready reason.
    what: String,
}

impl Publisher {
    fn new(provider: TlsProvider, what: &str) -> (Self, watch::Receiver<AgentStatus>) {
        let (tx, rx) = watch::channel(AgentStatus::starting(what));
        (
            Self {
                provider,
                status: tx,
                installed: None,
                expired: None,
                what: what.to_owned(),
            },
            rx,
        )
    }

    /// Makes `creds` current.
    fn install(&mut self, creds: WorkloadCredentials) -> Result<(), AgentError> {
        self.provider.install(&creds)?;
        self.installed = Some(creds);
        self.expired = None;
        Ok(())
    }

    /// Clears the provider if the installed certificate expired; true if it did.
    fn expire_if_due(&mut self, now: OffsetDateTime) -> bool {
        let due = self
            .installed
            .as_ref()
            .is_some_and(|c| c.not_after() <= now);
        if due && let Some(c) = self.installed.take() {
            tracing::error!(
                identity = %c.identity(),
                not_after = %c.not_after(),
                "workload certificate expired and was not renewed: refusing mTLS"
            );
            self.expired = Some((c.identity().clone(), c.not_after()));
            self.provider.clear();
        }
        due
    }

    /// Applies `update` to the status and recomputes readiness and the reason.
    fn publish(&self, update: impl FnOnce(&mut AgentStatus)) {
        self.status.send_modify(|s| {
            update(s);
            let err = s
                .last_error
                .as_ref()
                .map(|e| format!("; last error: {e}"))
                .unwrap_or_default();
            match (&self.installed, &self.expired) {
                (Some(c), _) => {
                    s.ready = true;
                    s.identity = Some(c.identity().clone());
                    s.serial = Some(c.serial().clone());
                    s.not_after = Some(c.not_after());
                    s.reason = format!(
                        "ready: certificate for {} valid until {}{}",
                        c.identity(),
                        crate::tools::fmt_time(c.not_after()),
                        if s.last_error.is_some() {
                            format!(
                                " (renewal failing, {} attempts{err})",
                                s.consecutive_failures
                            )
                        } else {
                            String::new()
                        }
                    );
                }
                (None, Some((id, at))) => {
                    s.ready = false;
                    s.reason = format!(
                        "not ready: certificate for {id} expired at {} and no new one was obtained; \
                         mTLS is refused{err}",
                        crate::tools::fmt_time(*at)
                    );
                }
                (None, None) => {
                    s.ready = false;
                    s.reason = format!(
                        "not ready: waiting for the first certificate from {}{err}",
                        self.what
                    );
                }
            }
        });
    }
}
