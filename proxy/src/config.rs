//! Sidecar configuration: a YAML file, then Istio's environment variables on top, validated once
//! into a typed [`SidecarConfig`].
//!
//! Environment variables (Istio's names where one exists): `CA_ADDR`, `TRUST_DOMAIN`,
//! `POD_NAME`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`, `ISTIO_METAJSON_LABELS` (a JSON object of pod
//! labels), `TERMINATION_DRAIN_DURATION_SECONDS`, `SECRET_TTL`, `CA_SERVER_NAME`,
//! `DISCOVERY_ADDRESS`, the agent's other variables (see
//! [`warden_identity::agent::AgentConfig::from_lookup`]), and Warden's own `WARDEN_CERT_DIR`,
//! `WARDEN_CONFIG_DIR`, `WARDEN_LABELS_FILE`, `WARDEN_TOKEN_FILE`, `WARDEN_ROOT_CERT`,
//! `WARDEN_KEY_ALGORITHM`. Errors name the file field or the variable, and the bad value.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warden_identity::agent::AgentConfig;
use warden_identity::{KeyAlgorithm, SpiffeId, TrustDomain};
use warden_policy::duration::parse_duration;

/// What went wrong reading the configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid YAML for the schema.
    #[error("{path}: {field}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The field path, e.g. `ports.inbound`.
        field: String,
        /// Why.
        reason: String,
    },
    /// A field has a bad value.
    #[error("{origin}: {field}: invalid value {value:?}: {reason}")]
    Invalid {
        /// The file, or `environment`.
        origin: String,
        /// The field or the environment variable.
        field: String,
        /// The bad value.
        value: String,
        /// Why.
        reason: String,
    },
    /// A required setting is missing.
    #[error("{field} is required (set it in the config file or with {env})")]
    Missing {
        /// The field.
        field: String,
        /// The environment variable that can set it.
        env: String,
    },
}

/// Where the workload certificate comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CertSource {
    /// `cert-chain.pem`, `key.pem` and `root-cert.pem` (and optionally `crl.pem`) in a
    /// directory (`warden certs workload` output, or Istio's `/etc/certs` layout), re-read when
    /// they change ([`warden_identity::agent::StaticSource`]).
    StaticDir(PathBuf),
    /// The mesh CA (Istio's CA protocol) through the embedded agent
    /// ([`warden_identity::agent::CaAgent`]): address, token file, root bundle, key algorithm,
    /// lifetime, renewal settings.
    Ca(Box<AgentConfig>),
}

/// The identity Warden's control plane (and istiod) serves with, in trust domain `td`.
pub fn default_control_plane_identity(td: &TrustDomain) -> SpiffeId {
    // `istio-system` and `istiod` are valid names: this cannot fail.
    SpiffeId::istio(td, "istio-system", "istiod").unwrap_or_else(|_| td.id())
}

/// The control plane to subscribe to for configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlPlaneSource {
    /// `host:port` of its push API (`config.controlPlane`, `DISCOVERY_ADDRESS`, else `CA_ADDR`).
    pub address: String,
    /// Identities it may present (secure naming); by default
    /// `spiffe://<trust domain>/ns/istio-system/sa/istiod`.
    pub identities: Vec<SpiffeId>,
}

/// Where mesh configuration (policies, registry) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A local directory (or file) of Istio YAML, re-read every `reload_interval`.
    Directory(PathBuf),
    /// The control plane's push API.
    ControlPlane(ControlPlaneSource),
}

/// How the workers share new connections (`connectionBalance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionBalance {
    /// A worker that accepts a connection while it serves more than another hands it to the
    /// least loaded one (Envoy's `exact_balance`): few long-lived connections still spread.
    #[default]
    Exact,
    /// The kernel's `SO_REUSEPORT` hash alone (Envoy's default): no hand-over, so a new
    /// connection never waits for a cross-thread wake-up.
    Kernel,
}

/// Where traffic to hosts outside the registry goes (Istio's `outboundTrafficPolicy.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundTrafficPolicy {
    /// Unknown destinations pass through (Istio's default).
    AllowAny,
    /// Unknown destinations are refused.
    RegistryOnly,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    Text,
    /// One JSON object per line.
    Json,
}

/// The workload this sidecar serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadIdentity {
    /// The pod name (`POD_NAME`), used as the workload name in metrics when no `app` label.
    pub pod_name: String,
    /// `POD_NAMESPACE`.
    pub namespace: String,
    /// `SERVICE_ACCOUNT`.
    pub service_account: String,
    /// `TRUST_DOMAIN`.
    pub trust_domain: TrustDomain,
    /// Pod labels (select policies).
    pub labels: BTreeMap<String, String>,
}

impl WorkloadIdentity {
    /// `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
    pub fn spiffe_id(&self) -> SpiffeId {
        // Validated when the config was built.
        SpiffeId::istio(&self.trust_domain, &self.namespace, &self.service_account)
            .unwrap_or_else(|_| self.trust_domain.id())
    }

    /// The workload name Istio reports: the `app` label, else the pod name.
    pub fn workload_name(&self) -> &str {
        self.labels
            .get("app")
            .map(String::as_str)
            .unwrap_or(&self.pod_name)
    }
}

/// Listener ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ports {
    /// Outbound capture (15001).
    pub outbound: u16,
    /// Inbound capture (15006).
    pub inbound: u16,
    /// Admin, on localhost only (15000).
    pub admin: u16,
    /// Prometheus metrics (15020).
    pub stats: u16,
    /// Health (15021).
    pub health: u16,
}

impl Default for Ports {
    fn default() -> Self {
        Self {
            outbound: 15001,
            inbound: 15006,
            admin: 15000,
            stats: 15020,
            health: 15021,
        }
    }
}

/// Inbound settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundSettings {
    /// Where the app listens (the original port is kept): 127.0.0.1 by default.
    pub app_host: IpAddr,
    /// Source address of connections to the app (127.0.0.6, excluded from capture).
    pub source_address: IpAddr,
    /// Ports declared TCP: PERMISSIVE detection waits at most `tcp_detect_grace` on them, so
    /// server-first protocols work.
    pub tcp_ports: Vec<u16>,
    /// How long to wait for the first bytes on other ports before treating them as plaintext.
    pub detect_timeout: Duration,
    /// How long to wait for a TLS ClientHello on declared-TCP ports in PERMISSIVE mode.
    pub tcp_detect_grace: Duration,
    /// Limit on the TLS handshake.
    pub handshake_timeout: Duration,
}

/// The whole, validated sidecar configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct SidecarConfig {
    /// The workload.
    pub identity: WorkloadIdentity,
    /// The certificate source.
    pub certs: CertSource,
    /// The config source.
    pub config: ConfigSource,
    /// How often local files are re-read.
    pub reload_interval: Duration,
    /// Address the capture, stats and health listeners bind.
    pub bind: IpAddr,
    /// Address of the admin listener: a loopback address (127.0.0.1 by default).
    pub admin_ip: IpAddr,
    /// Ports.
    pub ports: Ports,
    /// Inbound settings.
    pub inbound: InboundSettings,
    /// Connect timeout to upstreams.
    pub connect_timeout: Duration,
    /// Unknown destinations.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// How long in-flight connections may run after SIGTERM.
    pub drain_deadline: Duration,
    /// Log format.
    pub log_format: LogFormat,
    /// The root namespace of mesh-wide policy.
    pub root_namespace: String,
    /// L7 (HTTP) settings.
    pub http: HttpSettings,
    /// Resource limits (`limits:`).
    pub limits: crate::limits::Limits,
    /// Worker threads of the data plane (`concurrency`, as Istio's `ProxyConfig.concurrency`:
    /// 0 means one per CPU; default 2, Istio's default for sidecars). Each runs its own
    /// event loop with its own listener sockets and connection pools.
    pub concurrency: usize,
    /// How the workers share new connections (default `exact`).
    pub connection_balance: ConnectionBalance,
}

/// MeshConfig `extensionProviders` (the CUSTOM authorizers), compared by value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExtensionProviders(pub Vec<warden_policy::mesh::ExtensionProvider>);

// Config values compare structurally; the providers hold no floating-point values Warden reads.
impl Eq for ExtensionProviders {}

/// L7 (HTTP) settings: `http:` in the sidecar YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpSettings {
    /// `http.extensionProviders`: MeshConfig `extensionProviders` (same YAML), for CUSTOM
    /// AuthorizationPolicy (`envoyExtAuthzHttp`).
    pub extension_providers: ExtensionProviders,
    /// `http.poolIdleTimeout`: pooled connections (to the app and to peer sidecars) idle this
    /// long are closed (default 60s).
    pub pool_idle_timeout: Duration,
    /// `http.poolMaxIdlePerHost`: idle HTTP/1.1 connections kept per app port (default 64).
    pub pool_max_idle_per_host: usize,
    /// `http.accessLog`: an access log line per request (default true).
    pub access_log: bool,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            extension_providers: ExtensionProviders::default(),
            pool_idle_timeout: Duration::from_secs(60),
            pool_max_idle_per_host: 64,
            access_log: true,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfig {
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    certificates: RawCerts,
    #[serde(default)]
    config: RawConfigSource,
    reload_interval: Option<String>,
    bind_address: Option<String>,
    admin_address: Option<String>,
    #[serde(default)]
    ports: RawPorts,
    #[serde(default)]
    inbound: RawInbound,
    connect_timeout: Option<String>,
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    drain_deadline: Option<String>,
    log_format: Option<LogFormat>,
    root_namespace: Option<String>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    limits: crate::limits::RawLimits,
    concurrency: Option<usize>,
    connection_balance: Option<ConnectionBalance>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawHttp {
    #[serde(default)]
    extension_providers: Vec<warden_policy::mesh::ExtensionProvider>,
    pool_idle_timeout: Option<String>,
    pool_max_idle_per_host: Option<usize>,
    access_log: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawIdentity {
    pod_name: Option<String>,
    namespace: Option<String>,
    service_account: Option<String>,
    trust_domain: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    labels_file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawCerts {
    static_dir: Option<PathBuf>,
    ca_address: Option<String>,
    ca_server_name: Option<String>,
    token_file: Option<PathBuf>,
    root_cert: Option<PathBuf>,
    key_algorithm: Option<String>,
    ttl: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfigSource {
    directory: Option<PathBuf>,
    control_plane: Option<String>,
    #[serde(default)]
    control_plane_identities: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPorts {
    outbound: Option<u16>,
    inbound: Option<u16>,
    admin: Option<u16>,
    stats: Option<u16>,
    health: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawInbound {
    app_host: Option<String>,
    source_address: Option<String>,
    #[serde(default)]
    tcp_ports: Vec<u16>,
    detect_timeout: Option<String>,
    tcp_detect_grace: Option<String>,
    handshake_timeout: Option<String>,
}

/// Reads the environment. A trait-free closure so tests pass a map.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl SidecarConfig {
    /// Reads `path` (if any), then applies the process environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_owned(),
                    source,
                })?,
            ),
            None => None,
        };
        Self::from_parts(path.zip(text.as_deref()), &|k: &str| std::env::var(k).ok())
    }

    /// Builds the config from the file text (`(path, text)`, or none) and an environment.
    pub fn from_parts(
        file: Option<(&Path, &str)>,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let (origin, raw) = match file {
            Some((path, text)) => {
                let de = serde_yaml::Deserializer::from_str(text);
                let raw: Option<RawConfig> = serde_path_to_error::deserialize(de).map_err(|e| {
                    let field = e.path().to_string();
                    let inner = e.inner().to_string();
                    // serde_yaml prefixes the enclosing path itself; keep one.
                    let parent = field.rsplit_once('.').map(|(p, _)| p).unwrap_or("");
                    let reason = inner
                        .strip_prefix(&format!("{field}: "))
                        .or_else(|| inner.strip_prefix(&format!("{parent}: ")))
                        .unwrap_or(&inner)
                        .to_owned();
                    ConfigError::Parse {
                        path: path.to_owned(),
                        field,
                        reason,
                    }
                })?;
                (path.display().to_string(), raw.unwrap_or_default())
            }
            None => ("defaults".to_owned(), RawConfig::default()),
        };
        build(&origin, raw, env)
    }

    /// The ports this proxy itself listens on (refused as destinations: loop prevention).
    pub fn own_ports(&self) -> [u16; 5] {
        let p = &self.ports;
        [p.outbound, p.inbound, p.admin, p.stats, p.health]
    }
}

fn invalid(origin: &str, field: &str, value: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A value from the environment (wins) or the file, with where it came from.
fn pick(
    origin: &str,
    field: &str,
    env_name: &str,
    file: Option<String>,
    env: EnvLookup<'_>,
) -> Option<(String, String, String)> {
    match env(env_name).filter(|v| !v.is_empty()) {
        Some(v) => Some(("environment".to_owned(), env_name.to_owned(), v)),
        None => file.map(|v| (origin.to_owned(), field.to_owned(), v)),
    }
}

fn duration(
    origin: &str,
    field: &str,
    v: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).ok_or_else(|| {
            invalid(
                origin,
                field,
                &s,
                "expected a duration such as 5s, 100ms, 1m30s",
            )
        }),
    }
}

fn ip(
    origin: &str,
    field: &str,
    v: Option<String>,
    default: IpAddr,
) -> Result<IpAddr, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => s
            .parse()
            .map_err(|_| invalid(origin, field, &s, "expected an IP address")),
    }
}

fn dns_label(origin: &str, field: &str, v: &str) -> Result<(), ConfigError> {
    let ok = !v.is_empty()
        && v.len() <= 63
        && v.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !v.starts_with('-')
        && !v.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            origin,
            field,
            v,
            "expected a DNS-1123 label (lower case letters, digits, '-')",
        ))
    }
}

/// Parses a Kubernetes downward-API labels file: `key="value"` per line.
pub fn parse_labels_file(path: &Path, text: &str) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let field = format!("line {}", i + 1);
        let (k, v) = line.split_once('=').ok_or_else(|| {
            invalid(
                &path.display().to_string(),
                &field,
                line,
                "expected key=\"value\"",
            )
        })?;
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(v);
        out.insert(k.trim().to_owned(), v.to_owned());
    }
    Ok(out)
}

/// `(origin, field, value)` must be `host:port`.
fn host_port(v: &(String, String, String)) -> Result<(), ConfigError> {
    let ok =
        v.2.rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p != 0));
    if ok {
        Ok(())
    } else {
        Err(invalid(&v.0, &v.1, &v.2, "expected host:port"))
    }
}

/// The agent's configuration: the sidecar's identity, CA address and the `certificates` fields
/// (each overridden by its environment variable), then the agent's own variables.
fn agent_config(
    origin: &str,
    ca: &(String, String, String),
    rc: RawCerts,
    identity: &WorkloadIdentity,
    env: EnvLookup<'_>,
) -> Result<AgentConfig, ConfigError> {
    host_port(ca)?;
    let token = pick(
        origin,
        "certificates.tokenFile",
        "WARDEN_TOKEN_FILE",
        rc.token_file.map(|p| p.display().to_string()),
        env,
    );
    let root = pick(
        origin,
        "certificates.rootCert",
        "WARDEN_ROOT_CERT",
        rc.root_cert.map(|p| p.display().to_string()),
        env,
    );
    let server_name = pick(
        origin,
        "certificates.caServerName",
        "CA_SERVER_NAME",
        rc.ca_server_name,
        env,
    );
    let key = pick(
        origin,
        "certificates.keyAlgorithm",
        "WARDEN_KEY_ALGORITHM",
        rc.key_algorithm,
        env,
    );
    if let Some(k) = &key
        && let Err(e) = k.2.parse::<KeyAlgorithm>()
    {
        return Err(invalid(&k.0, &k.1, &k.2, e.to_string()));
    }
    let ttl = pick(origin, "certificates.ttl", "SECRET_TTL", rc.ttl, env);
    if let Some(t) = &ttl {
        match warden_identity::agent::parse_duration(&t.2) {
            Ok(d) if !d.is_zero() => {}
            Ok(_) => return Err(invalid(&t.0, &t.1, &t.2, "must be positive")),
            Err(e) => return Err(invalid(&t.0, &t.1, &t.2, e)),
        }
    }
    // Every value above is valid: an error from here names an environment variable.
    let td = identity.trust_domain.as_str().to_owned();
    let lookup = |k: &str| -> Option<String> {
        let v = |o: &Option<(String, String, String)>| o.as_ref().map(|x| x.2.clone());
        match k {
            "CA_ADDR" => Some(ca.2.clone()),
            "TRUST_DOMAIN" => Some(td.clone()),
            "POD_NAMESPACE" => Some(identity.namespace.clone()),
            "SERVICE_ACCOUNT" => Some(identity.service_account.clone()),
            "WARDEN_TOKEN_FILE" => v(&token),
            "WARDEN_ROOT_CERT" => v(&root),
            "CA_SERVER_NAME" => v(&server_name),
            "WARDEN_KEY_ALGORITHM" => v(&key),
            "SECRET_TTL" => v(&ttl),
            other => env(other),
        }
    };
    AgentConfig::from_lookup(lookup).map_err(|e| match e {
        warden_identity::agent::ConfigError::Invalid { var, value, reason } => {
            invalid("environment", var, &value, reason)
        }
        warden_identity::agent::ConfigError::Missing { var, what } => ConfigError::Missing {
            field: what.to_owned(),
            env: var.to_owned(),
        },
    })
}

fn build(origin: &str, raw: RawConfig, env: EnvLookup<'_>) -> Result<SidecarConfig, ConfigError> {
    // Identity.
    let ri = raw.identity;
    let ns = pick(
        origin,
        "identity.namespace",
        "POD_NAMESPACE",
        ri.namespace,
        env,
    )
    .ok_or_else(|| ConfigError::Missing {
        field: "identity.namespace".into(),
        env: "POD_NAMESPACE".into(),
    })?;
    dns_label(&ns.0, &ns.1, &ns.2)?;
    let sa = pick(
        origin,
        "identity.serviceAccount",
        "SERVICE_ACCOUNT",
        ri.service_account,
        env,
    )
    .unwrap_or((
        origin.to_owned(),
        "identity.serviceAccount".into(),
        "default".into(),
    ));
    if sa.2.is_empty() || sa.2.contains('/') {
        return Err(invalid(
            &sa.0,
            &sa.1,
            &sa.2,
            "expected a service account name",
        ));
    }
    let td = pick(
        origin,
        "identity.trustDomain",
        "TRUST_DOMAIN",
        ri.trust_domain,
        env,
    )
    .unwrap_or((
        origin.to_owned(),
        "identity.trustDomain".into(),
        "cluster.local".into(),
    ));
    let trust_domain =
        TrustDomain::new(&td.2).map_err(|e| invalid(&td.0, &td.1, &td.2, e.to_string()))?;
    if let Err(e) = SpiffeId::istio(&trust_domain, &ns.2, &sa.2) {
        return Err(invalid(&sa.0, &sa.1, &sa.2, e.to_string()));
    }
    let pod = pick(origin, "identity.podName", "POD_NAME", ri.pod_name, env)
        .map(|p| p.2)
        .unwrap_or_else(|| sa.2.clone());
    let mut labels = ri.labels;
    let labels_file = env("WARDEN_LABELS_FILE")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or(ri.labels_file);
    if let Some(f) = labels_file {
        let text = std::fs::read_to_string(&f).map_err(|source| ConfigError::Read {
            path: f.clone(),
            source,
        })?;
        labels.extend(parse_labels_file(&f, &text)?);
    }
    if let Some(json) = env("ISTIO_METAJSON_LABELS").filter(|v| !v.is_empty()) {
        let parsed: BTreeMap<String, String> = serde_json::from_str(&json).map_err(|e| {
            invalid(
                "environment",
                "ISTIO_METAJSON_LABELS",
                &json,
                format!("expected a JSON object of strings: {e}"),
            )
        })?;
        labels.extend(parsed);
    }
    let identity = WorkloadIdentity {
        pod_name: pod,
        namespace: ns.2,
        service_account: sa.2,
        trust_domain,
        labels,
    };

    // Certificates.
    let mut rc = raw.certificates;
    let static_dir = env("WARDEN_CERT_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or(rc.static_dir.take());
    let ca = pick(
        origin,
        "certificates.caAddress",
        "CA_ADDR",
        rc.ca_address.take(),
        env,
    );
    let certs = match (static_dir, ca.clone()) {
        (Some(dir), None) => CertSource::StaticDir(dir),
        (Some(dir), Some(ca)) => {
            return Err(invalid(
                &ca.0,
                &ca.1,
                &ca.2,
                format!(
                    "both a static certificate directory ({}) and a CA address are set; choose one",
                    dir.display()
                ),
            ));
        }
        (None, Some(ca)) => {
            CertSource::Ca(Box::new(agent_config(origin, &ca, rc, &identity, env)?))
        }
        (None, None) => {
            return Err(ConfigError::Missing {
                field: "certificates.staticDir or certificates.caAddress".into(),
                env: "WARDEN_CERT_DIR or CA_ADDR".into(),
            });
        }
    };

    // Config source.
    let dir = env("WARDEN_CONFIG_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or(raw.config.directory);
    let cp = pick(
        origin,
        "config.controlPlane",
        "DISCOVERY_ADDRESS",
        raw.config.control_plane,
        env,
    );
    let config = match (dir, cp) {
        (Some(d), None) => ConfigSource::Directory(d),
        (Some(d), Some(cp)) => {
            return Err(invalid(
                &cp.0,
                &cp.1,
                &cp.2,
                format!(
                    "both a config directory ({}) and a control plane are set; choose one",
                    d.display()
                ),
            ));
        }
        (None, cp) => {
            // Istio's default: the discovery server is where the CA is (istiod:15012).
            let Some(cp) = cp.or(ca) else {
                return Err(ConfigError::Missing {
                    field: "config.directory or config.controlPlane".into(),
                    env: "WARDEN_CONFIG_DIR, DISCOVERY_ADDRESS or CA_ADDR".into(),
                });
            };
            host_port(&cp)?;
            let identities = if raw.config.control_plane_identities.is_empty() {
                vec![default_control_plane_identity(&identity.trust_domain)]
            } else {
                raw.config
                    .control_plane_identities
                    .iter()
                    .enumerate()
                    .map(|(i, id)| {
                        SpiffeId::parse(id).map_err(|e| {
                            invalid(
                                origin,
                                &format!("config.controlPlaneIdentities[{i}]"),
                                id,
                                e.to_string(),
                            )
                        })
                    })
                    .collect::<Result<_, _>>()?
            };
            ConfigSource::ControlPlane(ControlPlaneSource {
                address: cp.2,
                identities,
            })
        }
    };

    let rp = raw.ports;
    let d = Ports::default();
    let ports = Ports {
        outbound: rp.outbound.unwrap_or(d.outbound),
        inbound: rp.inbound.unwrap_or(d.inbound),
        admin: rp.admin.unwrap_or(d.admin),
        stats: rp.stats.unwrap_or(d.stats),
        health: rp.health.unwrap_or(d.health),
    };
    let named = [
        ("ports.outbound", ports.outbound),
        ("ports.inbound", ports.inbound),
        ("ports.admin", ports.admin),
        ("ports.stats", ports.stats),
        ("ports.health", ports.health),
    ];
    for (i, (name, p)) in named.iter().enumerate() {
        if *p == 0 {
            return Err(invalid(origin, name, "0", "port 0 is not allowed"));
        }
        if let Some((other, _)) = named[..i].iter().find(|(_, q)| q == p) {
            return Err(invalid(
                origin,
                name,
                &p.to_string(),
                format!("the same port as {other}"),
            ));
        }
    }

    let ri = raw.inbound;
    let inbound = InboundSettings {
        app_host: ip(
            origin,
            "inbound.appHost",
            ri.app_host,
            IpAddr::V4(Ipv4Addr::LOCALHOST),
        )?,
        source_address: ip(
            origin,
            "inbound.sourceAddress",
            ri.source_address,
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6)),
        )?,
        tcp_ports: ri.tcp_ports,
        detect_timeout: duration(
            origin,
            "inbound.detectTimeout",
            ri.detect_timeout,
            Duration::from_secs(1),
        )?,
        tcp_detect_grace: duration(
            origin,
            "inbound.tcpDetectGrace",
            ri.tcp_detect_grace,
            Duration::from_millis(50),
        )?,
        handshake_timeout: duration(
            origin,
            "inbound.handshakeTimeout",
            ri.handshake_timeout,
            Duration::from_secs(10),
        )?,
    };

    let drain = match env("TERMINATION_DRAIN_DURATION_SECONDS").filter(|v| !v.is_empty()) {
        Some(v) => Duration::from_secs(v.parse::<u64>().map_err(|_| {
            invalid(
                "environment",
                "TERMINATION_DRAIN_DURATION_SECONDS",
                &v,
                "expected whole seconds",
            )
        })?),
        None => duration(
            origin,
            "drainDeadline",
            raw.drain_deadline,
            Duration::from_secs(5),
        )?,
    };
    let root_namespace = raw
        .root_namespace
        .unwrap_or_else(|| warden_policy::DEFAULT_ROOT_NAMESPACE.to_owned());
    dns_label(origin, "rootNamespace", &root_namespace)?;
    let reload_interval = duration(
        origin,
        "reloadInterval",
        raw.reload_interval,
        Duration::from_secs(2),
    )?;
    if reload_interval.is_zero() {
        return Err(invalid(origin, "reloadInterval", "0s", "must be positive"));
    }

    let admin_ip = ip(
        origin,
        "adminAddress",
        raw.admin_address.clone(),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
    )?;
    if !admin_ip.is_loopback() {
        return Err(invalid(
            origin,
            "adminAddress",
            &admin_ip.to_string(),
            "the admin port must stay on a loopback address",
        ));
    }
    let http = http_settings(origin, raw.http)?;
    Ok(SidecarConfig {
        http,
        admin_ip,
        identity,
        certs,
        config,
        reload_interval,
        bind: ip(
            origin,
            "bindAddress",
            raw.bind_address,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        )?,
        ports,
        inbound,
        connect_timeout: duration(
            origin,
            "connectTimeout",
            raw.connect_timeout,
            Duration::from_secs(10),
        )?,
        outbound_traffic_policy: raw
            .outbound_traffic_policy
            .unwrap_or(OutboundTrafficPolicy::AllowAny),
        drain_deadline: drain,
        log_format: raw.log_format.unwrap_or(LogFormat::Text),
        root_namespace,
        limits: crate::limits::Limits::from_raw(origin, raw.limits)?,
        concurrency: resolve_concurrency(raw.concurrency.unwrap_or(DEFAULT_CONCURRENCY)),
        connection_balance: raw.connection_balance.unwrap_or_default(),
    })
}

/// Istio's default `concurrency` for sidecars.
pub const DEFAULT_CONCURRENCY: usize = 2;

/// `concurrency` as worker threads: 0 means one per CPU.
pub fn resolve_concurrency(n: usize) -> usize {
    if n == 0 {
        std::thread::available_parallelism().map_or(1, usize::from)
    } else {
        n
    }
}

fn http_settings(origin: &str, raw: RawHttp) -> Result<HttpSettings, ConfigError> {
    let d = HttpSettings::default();
    let mut names = std::collections::BTreeSet::new();
    for (i, p) in raw.extension_providers.iter().enumerate() {
        let field = format!("http.extensionProviders[{i}].name");
        if p.name.is_empty() {
            return Err(invalid(origin, &field, "", "must not be empty"));
        }
        if !names.insert(p.name.as_str()) {
            return Err(invalid(origin, &field, &p.name, "duplicate provider name"));
        }
        if let Some(h) = &p.envoy_ext_authz_http {
            if h.service.is_empty() {
                return Err(invalid(
                    origin,
                    &format!("http.extensionProviders[{i}].envoyExtAuthzHttp.service"),
                    "",
                    "must not be empty",
                ));
            }
            if !h.status_on_error.is_empty()
                && !h
                    .status_on_error
                    .parse::<u16>()
                    .is_ok_and(|s| (100..600).contains(&s))
            {
                return Err(invalid(
                    origin,
                    &format!("http.extensionProviders[{i}].envoyExtAuthzHttp.statusOnError"),
                    &h.status_on_error,
                    "expected an HTTP status code",
                ));
            }
        }
    }
    let pool_idle_timeout = duration(
        origin,
        "http.poolIdleTimeout",
        raw.pool_idle_timeout,
        d.pool_idle_timeout,
    )?;
    if pool_idle_timeout.is_zero() {
        return Err(invalid(
            origin,
            "http.poolIdleTimeout",
            "0s",
            "must be positive",
        ));
    }
    Ok(HttpSettings {
        extension_providers: ExtensionProviders(raw.extension_providers),
        pool_idle_timeout,
        pool_max_idle_per_host: raw
            .pool_max_idle_per_host
            .unwrap_or(d.pool_max_idle_per_host),
        access_log: raw.access_log.unwrap_or(d.access_log),
    })
}

impl SidecarConfig {
    /// The admin listener address: always localhost.
    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::new(self.admin_ip, self.ports.admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn parse(yaml: &str, env: &[(&str, &str)]) -> Result<SidecarConfig, ConfigError> {
        SidecarConfig::from_parts(Some((Path::new("sidecar.yaml"), yaml)), &env_of(env))
    }

    const BASE: &str = "identity: {namespace: shop, serviceAccount: cart}\ncertificates: {staticDir: /certs}\nconfig: {directory: /cfg}\n";

    #[test]
    fn defaults_and_identity() {
        let c = parse(BASE, &[]).unwrap();
        assert_eq!(
            c.identity.spiffe_id().as_str(),
            "spiffe://cluster.local/ns/shop/sa/cart"
        );
        assert_eq!(c.ports, Ports::default());
        assert_eq!(c.certs, CertSource::StaticDir("/certs".into()));
        assert_eq!(c.config, ConfigSource::Directory("/cfg".into()));
        assert_eq!(c.inbound.source_address.to_string(), "127.0.0.6");
        assert_eq!(c.drain_deadline, Duration::from_secs(5));
        assert_eq!(c.outbound_traffic_policy, OutboundTrafficPolicy::AllowAny);
        assert_eq!(c.connection_balance, ConnectionBalance::Exact);
        let k = parse(&format!("{BASE}connectionBalance: kernel\n"), &[]).unwrap();
        assert_eq!(k.connection_balance, ConnectionBalance::Kernel);
        let e = parse(&format!("{BASE}connectionBalance: roundrobin\n"), &[]).unwrap_err();
        assert!(e.to_string().contains("connectionBalance"), "{e}");
    }

    #[test]
    fn environment_wins_over_file() {
        let c = parse(
            BASE,
            &[
                ("POD_NAMESPACE", "web"),
                ("SERVICE_ACCOUNT", "front"),
                ("TRUST_DOMAIN", "example.org"),
                ("ISTIO_METAJSON_LABELS", r#"{"app":"front","version":"v2"}"#),
                ("TERMINATION_DRAIN_DURATION_SECONDS", "9"),
            ],
        )
        .unwrap();
        assert_eq!(
            c.identity.spiffe_id().as_str(),
            "spiffe://example.org/ns/web/sa/front"
        );
        assert_eq!(c.identity.labels["version"], "v2");
        assert_eq!(c.identity.workload_name(), "front");
        assert_eq!(c.drain_deadline, Duration::from_secs(9));
    }

    #[test]
    fn errors_name_field_and_value() {
        let e = parse(&format!("{BASE}ports: {{inbound: 15001}}\n"), &[]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sidecar.yaml: ports.inbound: invalid value \"15001\": the same port as ports.outbound"
        );
        let e = parse(BASE, &[("POD_NAMESPACE", "Bad_NS")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment: POD_NAMESPACE: invalid value \"Bad_NS\""),
            "{e}"
        );
        let e = parse(&format!("{BASE}drainDeadline: soon\n"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("drainDeadline: invalid value \"soon\""),
            "{e}"
        );
        let e = parse(&format!("{BASE}inbound: {{appHost: nowhere}}\n"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("inbound.appHost: invalid value \"nowhere\""),
            "{e}"
        );
        let e = parse(&format!("{BASE}adminAddress: 10.0.0.1\n"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .contains("adminAddress: invalid value \"10.0.0.1\""),
            "{e}"
        );
        let e = parse(BASE, &[("CA_ADDR", "istiod:15012")]).unwrap_err();
        assert!(e.to_string().contains("CA_ADDR"), "{e}");
        let e = parse("identity: {namespace: a, bogus: 1}\n", &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("sidecar.yaml: identity.bogus: unknown field `bogus`"),
            "{e}"
        );
        let e = parse(
            "certificates: {staticDir: /c}\nconfig: {directory: /d}\n",
            &[],
        )
        .unwrap_err();
        assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
    }

    #[test]
    fn ca_source_from_env() {
        let yaml = "identity: {namespace: shop}\nconfig: {directory: /cfg}\n";
        let c = parse(yaml, &[("CA_ADDR", "istiod.istio-system.svc:15012")]).unwrap();
        let CertSource::Ca(agent) = &c.certs else {
            panic!("{:?}", c.certs)
        };
        assert_eq!(agent.ca_addr, "istiod.istio-system.svc:15012");
        assert_eq!(
            agent.identity.as_str(),
            "spiffe://cluster.local/ns/shop/sa/default"
        );
        assert_eq!(
            agent.token_file,
            Path::new(warden_identity::agent::DEFAULT_TOKEN_FILE)
        );
        // The config directory is set: no control plane.
        assert_eq!(c.config, ConfigSource::Directory("/cfg".into()));
        let e = parse(yaml, &[("CA_ADDR", "istiod")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment: CA_ADDR: invalid value \"istiod\": expected host:port"
        );
    }

    #[test]
    fn ca_settings_from_file_and_environment() {
        let yaml = "identity: {namespace: shop, serviceAccount: cart, trustDomain: example.org}\n\
                    certificates: {caAddress: \"127.0.0.1:15012\", tokenFile: /t, rootCert: /r, keyAlgorithm: rsa-2048, ttl: 1h, caServerName: cp.local}\n";
        let c = parse(yaml, &[]).unwrap();
        let CertSource::Ca(agent) = &c.certs else {
            panic!("{:?}", c.certs)
        };
        assert_eq!(agent.token_file, Path::new("/t"));
        assert_eq!(agent.root_cert_file, Path::new("/r"));
        assert_eq!(agent.key_algorithm, KeyAlgorithm::Rsa2048);
        assert_eq!(agent.requested_ttl, Duration::from_secs(3600));
        assert_eq!(agent.expected_ca_name(), "cp.local");
        // No config source given: the control plane at the CA's address, as istiod serves both.
        assert_eq!(
            c.config,
            ConfigSource::ControlPlane(ControlPlaneSource {
                address: "127.0.0.1:15012".into(),
                identities: vec![
                    SpiffeId::parse("spiffe://example.org/ns/istio-system/sa/istiod").unwrap()
                ],
            })
        );
        // The environment wins over the file.
        let c = parse(
            yaml,
            &[
                ("SECRET_TTL", "90s"),
                ("WARDEN_TOKEN_FILE", "/env-token"),
                ("DISCOVERY_ADDRESS", "10.0.0.1:15010"),
            ],
        )
        .unwrap();
        let CertSource::Ca(agent) = &c.certs else {
            panic!("{:?}", c.certs)
        };
        assert_eq!(agent.requested_ttl, Duration::from_secs(90));
        assert_eq!(agent.token_file, Path::new("/env-token"));
        assert!(
            matches!(&c.config, ConfigSource::ControlPlane(cp) if cp.address == "10.0.0.1:15010")
        );
        // Bad values name their field or variable.
        let e = parse(&yaml.replace("rsa-2048", "dsa"), &[]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("sidecar.yaml: certificates.keyAlgorithm: invalid value \"dsa\""),
            "{e}"
        );
        let e = parse(yaml, &[("SECRET_TTL", "soon")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment: SECRET_TTL: invalid value \"soon\""),
            "{e}"
        );
        let e = parse(yaml, &[("SECRET_GRACE_PERIOD_RATIO", "2")]).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("environment: SECRET_GRACE_PERIOD_RATIO: invalid value \"2\""),
            "{e}"
        );
        let e = parse(
            &format!("{yaml}config: {{controlPlaneIdentities: [\"not-spiffe\"]}}\n"),
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("config.controlPlaneIdentities[0]: invalid value \"not-spiffe\""),
            "{e}"
        );
        let e = parse(
            &format!("{yaml}config: {{directory: /d, controlPlane: \"cp:15012\"}}\n"),
            &[],
        )
        .unwrap_err();
        assert!(e.to_string().contains("choose one"), "{e}");
    }

    #[test]
    fn labels_file() {
        let m = parse_labels_file(Path::new("labels"), "app=\"web\"\nversion=\"v1\"\n").unwrap();
        assert_eq!(m["app"], "web");
        assert_eq!(m["version"], "v1");
        assert!(parse_labels_file(Path::new("labels"), "nonsense\n").is_err());
    }

    #[test]
    fn http_settings_and_extension_providers() {
        let c = parse(BASE, &[]).unwrap();
        assert_eq!(c.http, HttpSettings::default());
        let yaml = format!(
            "{BASE}http:\n  poolIdleTimeout: 5s\n  accessLog: false\n  extensionProviders:\n  - name: authz\n    envoyExtAuthzHttp: {{service: 127.0.0.9, port: 9000, pathPrefix: /check, headersToUpstreamOnAllow: [x-user]}}\n"
        );
        let c = parse(&yaml, &[]).unwrap();
        assert_eq!(c.http.pool_idle_timeout, Duration::from_secs(5));
        assert!(!c.http.access_log);
        let p = &c.http.extension_providers.0[0];
        assert_eq!(p.name, "authz");
        let h = p.envoy_ext_authz_http.as_ref().unwrap();
        assert_eq!((h.port, h.path_prefix.as_str()), (9000, "/check"));
        let bad = format!(
            "{BASE}http:\n  extensionProviders:\n  - name: authz\n    envoyExtAuthzHttp: {{service: a, port: 1, statusOnError: nope}}\n"
        );
        assert_eq!(
            parse(&bad, &[]).unwrap_err().to_string(),
            "sidecar.yaml: http.extensionProviders[0].envoyExtAuthzHttp.statusOnError: invalid value \"nope\": expected an HTTP status code"
        );
        let dup = format!("{BASE}http:\n  extensionProviders:\n  - name: a\n  - name: a\n");
        assert!(
            parse(&dup, &[])
                .unwrap_err()
                .to_string()
                .contains("duplicate provider name")
        );
    }
}
