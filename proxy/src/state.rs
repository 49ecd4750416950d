//! The state every connection reads: TLS configs, compiled policy, registry, metrics, drain.
//! Swapped as a whole when the config changes; read with one atomic load per connection.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
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
    /// Bumped on every successful load.
    pub generation: u64,
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
    /// The last certificate load problem, for readiness.
    pub cert_problem: Mutex<Option<String>>,
    /// The L7 state: pooled clients to the app and to peer sidecars, JWT, ext_authz.
    pub l7: crate::http::L7,
    /// The installed chain, described for `/certs`.
    pub chain: Mutex<Vec<serde_json::Value>>,
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
            cert_problem: Mutex::new(None),
            chain: Mutex::new(Vec::new()),
        }
    }

    /// `Ok` when ready to serve (certificate and config loaded), else why not.
    pub fn readiness(&self) -> Result<(), String> {
        if self.drain.is_draining() {
            return Err("draining".into());
        }
        if !self.tls.has_credentials() {
            let why = self
                .cert_problem
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
                .unwrap_or_else(|| "no workload certificate yet".into());
            return Err(format!("certificate not loaded: {why}"));
        }
        if self.policy.load().is_none() {
            return Err("config not loaded yet".into());
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
