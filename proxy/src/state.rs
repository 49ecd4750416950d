//! The state every connection reads: TLS configs, compiled policy, registry, metrics, drain.
//! Swapped as a whole when the config changes; read with one atomic load per connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::watch;
use warden_identity::agent::AgentStatus;
use warden_identity::config_client::SubscriberStatus;
use warden_identity::tls::TlsProvider;
use warden_policy::CompiledPolicies;

use crate::config::SidecarConfig;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::orig_dst::OriginalDst;
use crate::registry::ServiceRegistry;

/// The policy compiled for this workload, with what it came from.
#[derive(Debug)]
pub struct PolicyState {
    /// Authorization and PeerAuthentication for this workload.
    pub compiled: CompiledPolicies,
    /// The version: the control plane's snapshot version, or a counter of local loads.
    pub generation: u64,
    /// Where it came from (`control plane`, `directory <path>`).
    pub origin: String,
    /// Problems of the last load (files kept at their last good version, bad entries).
    pub problems: Vec<String>,
}

/// Sets the log filter at runtime (`/logging?level=`).
pub type LogControl = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// Everything shared by the listeners, the admin server and the config watchers.
pub struct Shared {
    /// The validated configuration.
    pub config: SidecarConfig,
    /// The workload's mTLS configs.
    pub tls: TlsProvider,
    /// The compiled policy; `None` until the first load.
    pub policy: ArcSwapOption<PolicyState>,
    /// The service registry (empty until the first config load).
    pub registry: ArcSwap<ServiceRegistry>,
    /// Metrics.
    pub metrics: Metrics,
    /// Drain signal and in-flight count.
    pub drain: Drain,
    /// Original destination lookup.
    pub orig_dst: Arc<dyn OriginalDst>,
    /// The runtime log filter, if the process installed one.
    pub log_control: Option<LogControl>,
    /// The L7 state: pooled clients to the app and to peer sidecars, JWT, ext_authz.
    pub l7: crate::http::L7,
    /// The certificate source's status (set once it started).
    cert_status: OnceLock<watch::Receiver<AgentStatus>>,
    /// The control-plane subscription's status (set once it started).
    config_status: OnceLock<watch::Receiver<SubscriberStatus>>,
    /// The workers' connection balance (set once they started, with `connectionBalance:
    /// exact` and more than one worker).
    balancer: OnceLock<Arc<crate::balance::Balancer>>,
}

impl Shared {
    /// New state without certificates or policy (not ready).
    pub fn new(
        config: SidecarConfig,
        tls: TlsProvider,
        orig_dst: Arc<dyn OriginalDst>,
        log_control: Option<LogControl>,
    ) -> Self {
        let l7 = crate::http::L7::new(&config);
        Self {
            l7,
            config,
            tls,
            policy: ArcSwapOption::empty(),
            registry: ArcSwap::from_pointee(ServiceRegistry::default()),
            metrics: Metrics::new(),
            drain: Drain::new(),
            orig_dst,
            log_control,
            cert_status: OnceLock::new(),
            config_status: OnceLock::new(),
            balancer: OnceLock::new(),
        }
    }

    /// Records the workers' balancer (the first call wins).
    pub fn set_balancer(&self, b: Arc<crate::balance::Balancer>) {
        let _ = self.balancer.set(b);
    }

    /// Connections each worker serves now, when the workers balance them.
    pub fn worker_connections(&self) -> Option<Vec<usize>> {
        self.balancer.get().map(|b| b.open())
    }

    /// Records the certificate source's status channel (the first call wins).
    pub fn set_cert_status(&self, rx: watch::Receiver<AgentStatus>) {
        let _ = self.cert_status.set(rx);
    }

    /// The certificate source's status, once it started.
    pub fn cert_status(&self) -> Option<AgentStatus> {
        self.cert_status.get().map(|rx| rx.borrow().clone())
    }

    /// Records the control-plane subscription's status channel (the first call wins).
    pub fn set_config_status(&self, rx: watch::Receiver<SubscriberStatus>) {
        let _ = self.config_status.set(rx);
    }

    /// The control-plane subscription's status, once it started.
    pub fn config_status(&self) -> Option<SubscriberStatus> {
        self.config_status.get().map(|rx| rx.borrow().clone())
    }

    /// `Ok` when ready to serve (certificate and config loaded), else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.drain.is_draining() {
            return Err("draining".into());
        }
        let Some(current) = self.tls.current() else {
            // The source's reason: never had one, or expired and not renewed (mTLS refused).
            let why = self
                .cert_status
                .get()
                .map(|rx| {
                    let s = rx.borrow();
                    s.reason
                        .strip_prefix("not ready: ")
                        .unwrap_or(&s.reason)
                        .to_owned()
                })
                .unwrap_or_else(|| "no workload certificate yet".into());
            return Err(format!("certificate not loaded: {why}"));
        };
        let expected = self.config.identity.spiffe_id();
        if current.identity() != &expected {
            return Err(format!(
                "the workload certificate is for {}, this workload is {expected}",
                current.identity()
            ));
        }
        if self.policy.load().is_none() {
            let why = match self.config_status() {
                Some(s) => match (s.last_nack, s.last_error) {
                    (Some((v, e)), _) => format!(": snapshot {v} rejected: {e}"),
                    (None, Some(e)) => format!(": {e}"),
                    (None, None) => String::new(),
                },
                None => String::new(),
            };
            return Err(format!("config not loaded yet{why}"));
        }
        Ok(())
    }

    /// Whether `dst` is one of this proxy's own listeners (loop prevention).
    pub fn is_own_address(&self, dst: SocketAddr, listener: SocketAddr) -> bool {
        if dst == listener {
            return true;
        }
        if !self.config.own_ports().contains(&dst.port()) {
            return false;
        }
        let ip = dst.ip();
        ip.is_loopback()
            || ip.is_unspecified()
            || ip == self.config.bind
            || ip == listener.ip()
            || is_mapped_loopback(ip)
    }
}

fn is_mapped_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        IpAddr::V4(_) => false,
    }
}
