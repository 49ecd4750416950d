//! Sidecar configuration: a YAML file, then Istio's environment variables on top, validated once
//! into a typed [`SidecarConfig`].
//!
//! Environment variables (Istio's names where one exists): `CA_ADDR`, `TRUST_DOMAIN`,
//! `POD_NAME`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`, `ISTIO_METAJSON_LABELS` (a JSON object of pod
//! labels), `TERMINATION_DRAIN_DURATION_SECONDS`, and Warden's own `WARDEN_CERT_DIR`,
//! `WARDEN_CONFIG_DIR`, `WARDEN_LABELS_FILE`. Errors name the file field or the variable, and the
//! bad value.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warden_identity::{SpiffeId, TrustDomain};
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// `cert-chain.pem`, `key.pem` and `root-cert.pem` in a directory (`warden certs workload`
    /// output, or Istio's `/etc/certs` layout), re-read when they change.
    StaticDir(PathBuf),
    /// The mesh CA (Istio's CA protocol): address, service-account token file, root bundle.
    Ca {
        /// `host:port` of the CA (`CA_ADDR`).
        address: String,
        /// The credential sent with the CSR.
        token_file: PathBuf,
        /// The CA's root bundle (PEM).
        root_cert: PathBuf,
    },
}

/// Where mesh configuration (policies, registry) comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigSource {
    /// A local directory (or file) of Istio YAML, re-read every `reload_interval`.
    Directory(PathBuf),
    /// The control plane's push API at `host:port`.
    ControlPlane(String),
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// Resource limits (`limits:`).
    pub limits: crate::limits::Limits,
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
    limits: crate::limits::RawLimits,
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
    token_file: Option<PathBuf>,
    root_cert: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawConfigSource {
    directory: Option<PathBuf>,
    control_plane: Option<String>,
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
    let rc = raw.certificates;
    let static_dir = env("WARDEN_CERT_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or(rc.static_dir);
    let ca = pick(
        origin,
        "certificates.caAddress",
        "CA_ADDR",
        rc.ca_address,
        env,
    );
    let certs = match (static_dir, ca) {
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
            if ca
                .2
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse::<u16>().ok())
                .is_none()
            {
                return Err(invalid(&ca.0, &ca.1, &ca.2, "expected host:port"));
            }
            CertSource::Ca {
                address: ca.2,
                token_file: rc
                    .token_file
                    .unwrap_or_else(|| "/var/run/secrets/tokens/istio-token".into()),
                root_cert: rc
                    .root_cert
                    .unwrap_or_else(|| "/var/run/secrets/istio/root-cert.pem".into()),
            }
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
    let config = match (dir, raw.config.control_plane) {
        (Some(d), None) => ConfigSource::Directory(d),
        (None, Some(cp)) => ConfigSource::ControlPlane(cp),
        (Some(_), Some(cp)) => {
            return Err(invalid(
                origin,
                "config.controlPlane",
                &cp,
                "both config.directory and config.controlPlane are set; choose one",
            ));
        }
        (None, None) => {
            return Err(ConfigError::Missing {
                field: "config.directory or config.controlPlane".into(),
                env: "WARDEN_CONFIG_DIR".into(),
            });
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
    Ok(SidecarConfig {
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
        assert!(
            matches!(c.certs, CertSource::Ca { ref address, .. } if address == "istiod.istio-system.svc:15012")
        );
        let e = parse(yaml, &[("CA_ADDR", "istiod")]).unwrap_err();
        assert_eq!(
            e.to_string(),
            "environment: CA_ADDR: invalid value \"istiod\": expected host:port"
        );
    }

    #[test]
    fn labels_file() {
        let m = parse_labels_file(Path::new("labels"), "app=\"web\"\nversion=\"v1\"\n").unwrap();
        assert_eq!(m["app"], "web");
        assert_eq!(m["version"], "v1");
        assert!(parse_labels_file(Path::new("labels"), "nonsense\n").is_err());
    }
}
