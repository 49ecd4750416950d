//! What `warden control` runs with: listen address, state directory, trust domain, CA source,
//! certificate lifetimes, token issuers. Typed, with Istio's defaults; the CLI fills it from
//! flags and environment variables.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use warden_identity::ca::{DEFAULT_MAX_WORKLOAD_TTL, DEFAULT_WORKLOAD_TTL};
use warden_identity::{KeyAlgorithm, SpiffeId, TrustDomain};

/// Istio's CA and config port.
pub const DEFAULT_PORT: u16 = 15012;
/// Istio's control plane monitoring port, where `warden control` serves the proxies' status.
pub const DEFAULT_DEBUG_PORT: u16 = 15014;
/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/warden/control";
/// The audience a service-account token must carry by default.
pub const DEFAULT_TOKEN_AUDIENCE: &str = "istio-ca";
/// DNS names in the serving certificate by default.
pub const DEFAULT_DNS_NAMES: [&str; 3] = ["istiod.istio-system.svc", "warden-control", "localhost"];
/// IP addresses in the serving certificate by default.
pub const DEFAULT_IP_SANS: [IpAddr; 2] = [
    IpAddr::V4(Ipv4Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
];
/// Namespace of the control plane's own identity (`spiffe://<td>/ns/istio-system/sa/istiod`).
pub const SERVING_NAMESPACE: &str = "istio-system";
/// Service account of the control plane's own identity.
pub const SERVING_SERVICE_ACCOUNT: &str = "istiod";

/// Where the CA's signing material comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A self-signed root kept in `<state>/ca`, generated on first start.
    SelfSigned {
        /// Key algorithm of a generated root.
        root_key: KeyAlgorithm,
    },
    /// An operator-provided CA directory (Istio's `cacerts` layout); revocation state stays in
    /// `<state>/ca`.
    Plugin {
        /// The plugin directory.
        dir: PathBuf,
    },
}

/// A service-account token issuer (`iss`) pinned to the JWKS file of its keys: `ISSUER=FILE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenIssuer {
    /// The `iss` claim of its tokens, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// The JWKS file with its keys (re-read when it changes).
    pub jwks: PathBuf,
}

/// Why an `ISSUER=FILE` pair is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("token issuer {given:?}: {reason}")]
pub struct TokenIssuerError {
    /// What was given.
    pub given: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl std::str::FromStr for TokenIssuer {
    type Err = TokenIssuerError;

    /// Parses `ISSUER=FILE` (split at the first `=`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason| TokenIssuerError {
            given: s.to_owned(),
            reason,
        };
        let (issuer, file) = s.split_once('=').ok_or_else(|| {
            err("expected ISSUER=FILE: each JWKS file is pinned to the issuer (`iss`) whose tokens its keys verify")
        })?;
        let issuer = issuer.trim();
        if issuer.is_empty() {
            return Err(err("the issuer before `=` is empty"));
        }
        if file.is_empty() {
            return Err(err("the JWKS file after `=` is empty"));
        }
        Ok(TokenIssuer {
            issuer: issuer.to_owned(),
            jwks: PathBuf::from(file),
        })
    }
}

/// The configuration of a control plane. [`ControlConfig::new`] gives Istio's defaults.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// Address of the gRPC + HTTPS listener (`0.0.0.0:15012`). Port 0 picks a free port.
    pub listen: SocketAddr,
    /// The state directory: `ca/`, `token-signing-key.pem`, `token-jwks.json`, `root-cert.pem`.
    pub state_dir: PathBuf,
    /// The trust domain issued for (`cluster.local`).
    pub trust_domain: TrustDomain,
    /// Self-signed root or plugin CA.
    pub ca: CaSource,
    /// Workload certificate lifetime when a request asks for 0 or less (24h).
    pub default_ttl: Duration,
    /// Longest workload certificate lifetime a request may ask for (90 days).
    pub max_ttl: Duration,
    /// Service-account token issuers, each with the JWKS file of its keys (e.g. a cluster's API
    /// server keys): a token claiming one of these issuers is verified with that file's keys
    /// only. The control plane's own token-signing key verifies tokens of every other issuer.
    pub token_jwks: Vec<TokenIssuer>,
    /// The audience a token must carry (`istio-ca`).
    pub token_audience: String,
    /// When set, a request's `clusterid` metadata, if any, must equal it.
    pub cluster_id: Option<String>,
    /// DNS SANs of the serving certificate.
    pub dns_names: Vec<String>,
    /// IP SANs of the serving certificate.
    pub ip_sans: Vec<IpAddr>,
    /// Lifetime of the serving certificate (renewed at half of it).
    pub serving_ttl: Duration,
    /// How often revocations, CA files and token JWKS files are re-read (2 s).
    pub reload_interval: Duration,
    /// How long open connections get to finish on shutdown (10 s).
    pub drain_timeout: Duration,
    /// How long a client gets to complete the TLS handshake (10 s).
    pub handshake_timeout: Duration,
    /// Where to serve the connected proxies' status (`GET /debug/proxies`, unauthenticated: keep
    /// it on loopback) when config is pushed. `127.0.0.1:15014` by default; `None` turns it off.
    pub debug_listen: Option<SocketAddr>,
}

impl ControlConfig {
    /// A configuration with Istio's defaults, keeping its state in `state_dir`.
    pub fn new(state_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            state_dir: state_dir.into(),
            trust_domain: TrustDomain::default(),
            ca: CaSource::SelfSigned {
                root_key: KeyAlgorithm::EcdsaP256,
            },
            default_ttl: DEFAULT_WORKLOAD_TTL,
            max_ttl: DEFAULT_MAX_WORKLOAD_TTL,
            token_jwks: Vec::new(),
            token_audience: DEFAULT_TOKEN_AUDIENCE.to_owned(),
            cluster_id: None,
            dns_names: DEFAULT_DNS_NAMES.iter().map(|s| (*s).to_owned()).collect(),
            ip_sans: DEFAULT_IP_SANS.to_vec(),
            serving_ttl: DEFAULT_WORKLOAD_TTL,
            reload_interval: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            debug_listen: Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                DEFAULT_DEBUG_PORT,
            )),
        }
    }

    /// The control plane's own identity: `spiffe://<td>/ns/istio-system/sa/istiod`.
    pub fn serving_identity(&self) -> SpiffeId {
        SpiffeId::istio(
            &self.trust_domain,
            SERVING_NAMESPACE,
            SERVING_SERVICE_ACCOUNT,
        )
        // Both segments are constant valid names, and a trust domain is valid by construction.
        .unwrap_or_else(|_| self.trust_domain.id())
    }

    /// The paths inside the state directory.
    pub fn paths(&self) -> StatePaths {
        StatePaths::new(&self.state_dir)
    }
}

/// The files of a control plane state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    /// The state directory.
    pub dir: PathBuf,
    /// The self-signed CA directory, and where revocation state lives in both modes.
    pub ca_dir: PathBuf,
    /// The private key that signs tokens minted by `warden control token` (0600).
    pub token_key: PathBuf,
    /// The public half of the token-signing key as a JWKS document.
    pub token_jwks: PathBuf,
    /// The trust bundle for agents (every trusted root, active first).
    pub root_cert: PathBuf,
}

impl StatePaths {
    /// The layout under `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
            ca_dir: dir.join("ca"),
            token_key: dir.join("token-signing-key.pem"),
            token_jwks: dir.join("token-jwks.json"),
            root_cert: dir.join("root-cert.pem"),
        }
    }
}
