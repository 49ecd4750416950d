//! The gateway process configuration: a YAML file, then Istio's environment variables on top,
//! validated once into a typed [`GatewayConfig`]. Errors name the file or variable, the field and
//! the bad value.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use warden_identity::{SpiffeId, TrustDomain};
use warden_policy::duration::parse_duration;

use crate::config::{ConfigError, EnvLookup, OutboundTrafficPolicy};

/// Which gateway this process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GatewayMode {
    /// The mesh entrance: clients outside the mesh, routes into the mesh over mTLS.
    Ingress,
    /// The mesh exit: sidecars over mesh mTLS, routes to external services.
    Egress,
}

impl GatewayMode {
    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            GatewayMode::Ingress => "ingress",
            GatewayMode::Egress => "egress",
        }
    }

    /// The labels Istio's charts give the gateway pods (`istio: ingressgateway`).
    pub fn default_labels(self) -> BTreeMap<String, String> {
        let v = match self {
            GatewayMode::Ingress => "ingressgateway",
            GatewayMode::Egress => "egressgateway",
        };
        BTreeMap::from([("istio".to_owned(), v.to_owned())])
    }
}

/// Where the gateway's own mesh certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayCertSource {
    /// `cert-chain.pem`, `key.pem`, `root-cert.pem` in a directory, re-read when they change.
    StaticDir(PathBuf),
    /// The mesh CA through the embedded agent, configured by the environment (`CA_ADDR`, ...;
    /// see docs/mtls.md).
    CaAgent,
}

/// The validated gateway configuration.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Ingress or egress.
    pub mode: GatewayMode,
    /// `identity.namespace` / `POD_NAMESPACE`.
    pub namespace: String,
    /// `identity.serviceAccount` / `SERVICE_ACCOUNT`.
    pub service_account: String,
    /// `identity.trustDomain` / `TRUST_DOMAIN`.
    pub trust_domain: TrustDomain,
    /// `identity.labels`: select Gateways (`selector`) and AuthorizationPolicies
    /// (default: `istio: ingressgateway` or `istio: egressgateway`).
    pub labels: BTreeMap<String, String>,
    /// The gateway's mesh certificate.
    pub certs: GatewayCertSource,
    /// `config.directory` / `WARDEN_CONFIG_DIR`: Istio YAML (Gateway, VirtualService,
    /// DestinationRule, ServiceEntry, AuthorizationPolicy).
    pub config_dir: PathBuf,
    /// `credentialsDir`: where `credentialName` is resolved (`<dir>/<name>/tls.crt`, ...).
    pub credentials_dir: Option<PathBuf>,
    /// `bindAddress`: address of the server, stats and health listeners.
    pub bind: IpAddr,
    /// `ports.stats` (15020).
    pub stats_port: u16,
    /// `ports.health` (15021).
    pub health_port: u16,
    /// `reloadInterval`: how often config and credential files are checked (2s).
    pub reload_interval: Duration,
    /// `connectTimeout` (10s).
    pub connect_timeout: Duration,
    /// `handshakeTimeout` (10s): TLS handshakes and the wait for a ClientHello.
    pub handshake_timeout: Duration,
    /// `numTrustedProxies` (0): trusted hops in front of the gateway (Istio's
    /// `gatewayTopology.numTrustedProxies`); selects the client address in X-Forwarded-For.
    pub num_trusted_proxies: usize,
    /// `outboundTrafficPolicy`: under `REGISTRY_ONLY` hosts without a ServiceEntry are refused.
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// `drainDeadline` (5s).
    pub drain_deadline: Duration,
    /// `rootNamespace` (istio-system): mesh-wide policies.
    pub root_namespace: String,
}

impl GatewayConfig {
    /// The gateway's SPIFFE ID.
    pub fn spiffe_id(&self) -> SpiffeId {
        SpiffeId::istio(&self.trust_domain, &self.namespace, &self.service_account)
            .unwrap_or_else(|_| self.trust_domain.id())
    }

    /// The workload name in metrics: the `app` label, else the service account.
    pub fn workload_name(&self) -> &str {
        self.labels
            .get("app")
            .map(String::as_str)
            .unwrap_or(&self.service_account)
    }

    /// Reads `path`, then applies the process environment.
    pub fn load(mode: GatewayMode, path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_parts(mode, path, &text, &|k: &str| std::env::var(k).ok())
    }

    /// Builds the config from the file's text and an environment.
    pub fn from_parts(
        mode: GatewayMode,
        path: &Path,
        text: &str,
        env: EnvLookup<'_>,
    ) -> Result<Self, ConfigError> {
        let de = serde_yaml::Deserializer::from_str(text);
        let raw: Option<RawConfig> =
            serde_path_to_error::deserialize(de).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                field: e.path().to_string(),
                reason: e.inner().to_string(),
            })?;
        build(
            mode,
            &path.display().to_string(),
            raw.unwrap_or_default(),
            env,
        )
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    identity: RawIdentity,
    #[serde(default)]
    certificates: RawCerts,
    #[serde(default)]
    config: RawSource,
    credentials_dir: Option<PathBuf>,
    bind_address: Option<String>,
    #[serde(default)]
    ports: RawPorts,
    reload_interval: Option<String>,
    connect_timeout: Option<String>,
    handshake_timeout: Option<String>,
    num_trusted_proxies: Option<usize>,
    outbound_traffic_policy: Option<OutboundTrafficPolicy>,
    drain_deadline: Option<String>,
    root_namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawIdentity {
    namespace: Option<String>,
    service_account: Option<String>,
    trust_domain: Option<String>,
    labels: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawCerts {
    static_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSource {
    directory: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPorts {
    stats: Option<u16>,
    health: Option<u16>,
}

fn invalid(origin: &str, field: &str, value: &str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        origin: origin.to_owned(),
        field: field.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn build(
    mode: GatewayMode,
    origin: &str,
    raw: RawConfig,
    env: EnvLookup<'_>,
) -> Result<GatewayConfig, ConfigError> {
    // The environment wins over the file, as in the sidecar.
    let pick = |field: &str, var: &str, file: Option<String>| -> Option<(String, String, String)> {
        match env(var).filter(|v| !v.is_empty()) {
            Some(v) => Some(("environment".to_owned(), var.to_owned(), v)),
            None => file.map(|v| (origin.to_owned(), field.to_owned(), v)),
        }
    };
    let label = |(o, f, v): (String, String, String)| -> Result<String, ConfigError> {
        if warden_policy::names::is_dns1123_label(&v) {
            Ok(v)
        } else {
            Err(invalid(
                &o,
                &f,
                &v,
                "expected a DNS-1123 label (lower case letters, digits, '-')",
            ))
        }
    };
    let namespace = pick(
        "identity.namespace",
        "POD_NAMESPACE",
        raw.identity.namespace,
    )
    .ok_or_else(|| ConfigError::Missing {
        field: "identity.namespace".into(),
        env: "POD_NAMESPACE".into(),
    })
    .and_then(label)?;
    let service_account = match pick(
        "identity.serviceAccount",
        "SERVICE_ACCOUNT",
        raw.identity.service_account,
    ) {
        Some(v) => label(v)?,
        None => format!("istio-{}gateway-service-account", mode.as_str()),
    };
    let trust_domain = match pick(
        "identity.trustDomain",
        "TRUST_DOMAIN",
        raw.identity.trust_domain,
    ) {
        Some((o, f, v)) => TrustDomain::new(&v)
            .map_err(|e| invalid(&o, &f, &v, &format!("not a trust domain: {e}")))?,
        None => TrustDomain::default(),
    };
    let labels = raw.identity.labels.unwrap_or_else(|| mode.default_labels());
    let certs = match (
        pick(
            "certificates.staticDir",
            "WARDEN_CERT_DIR",
            raw.certificates.static_dir.map(|p| p.display().to_string()),
        ),
        env("CA_ADDR").filter(|v| !v.is_empty()),
    ) {
        (Some((_, _, dir)), _) => GatewayCertSource::StaticDir(PathBuf::from(dir)),
        (None, Some(_)) => GatewayCertSource::CaAgent,
        (None, None) => {
            return Err(ConfigError::Missing {
                field: "certificates.staticDir (or the CA agent)".into(),
                env: "WARDEN_CERT_DIR or CA_ADDR".into(),
            });
        }
    };
    let config_dir = pick(
        "config.directory",
        "WARDEN_CONFIG_DIR",
        raw.config.directory.map(|p| p.display().to_string()),
    )
    .map(|(_, _, v)| PathBuf::from(v))
    .ok_or_else(|| ConfigError::Missing {
        field: "config.directory".into(),
        env: "WARDEN_CONFIG_DIR".into(),
    })?;
    let dur = |field: &str, v: Option<String>, default: Duration| match v {
        None => Ok(default),
        Some(s) => parse_duration(&s).ok_or_else(|| {
            invalid(
                origin,
                field,
                &s,
                "expected a duration such as 5s, 100ms, 1m30s",
            )
        }),
    };
    let bind = match raw.bind_address {
        None => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        Some(s) => s
            .parse()
            .map_err(|_| invalid(origin, "bindAddress", &s, "expected an IP address"))?,
    };
    let stats_port = raw.ports.stats.unwrap_or(15020);
    let health_port = raw.ports.health.unwrap_or(15021);
    if stats_port == health_port {
        return Err(invalid(
            origin,
            "ports.health",
            &health_port.to_string(),
            "the same port as ports.stats",
        ));
    }
    let reload_interval = dur(
        "reloadInterval",
        raw.reload_interval,
        Duration::from_secs(2),
    )?;
    if reload_interval.is_zero() {
        return Err(invalid(origin, "reloadInterval", "0s", "must be positive"));
    }
    let drain_deadline = match env("TERMINATION_DRAIN_DURATION_SECONDS").filter(|v| !v.is_empty()) {
        Some(v) => Duration::from_secs(v.parse().map_err(|_| {
            invalid(
                "environment",
                "TERMINATION_DRAIN_DURATION_SECONDS",
                &v,
                "expected a whole number of seconds",
            )
        })?),
        None => dur("drainDeadline", raw.drain_deadline, Duration::from_secs(5))?,
    };
    Ok(GatewayConfig {
        mode,
        namespace,
        service_account,
        trust_domain,
        labels,
        certs,
        config_dir,
        credentials_dir: raw.credentials_dir,
        bind,
        stats_port,
        health_port,
        reload_interval,
        connect_timeout: dur(
            "connectTimeout",
            raw.connect_timeout,
            Duration::from_secs(10),
        )?,
        handshake_timeout: dur(
            "handshakeTimeout",
            raw.handshake_timeout,
            Duration::from_secs(10),
        )?,
        num_trusted_proxies: raw.num_trusted_proxies.unwrap_or(0),
        outbound_traffic_policy: raw
            .outbound_traffic_policy
            .unwrap_or(OutboundTrafficPolicy::AllowAny),
        drain_deadline,
        root_namespace: raw
            .root_namespace
            .unwrap_or_else(|| warden_policy::DEFAULT_ROOT_NAMESPACE.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<GatewayConfig, ConfigError> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        GatewayConfig::from_parts(
            GatewayMode::Ingress,
            Path::new("gw.yaml"),
            text,
            &move |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()),
        )
    }

    #[test]
    fn defaults_and_overrides() {
        let c = parse(
            "identity: {namespace: istio-system}\ncertificates: {staticDir: /c}\nconfig: {directory: /d}\nnumTrustedProxies: 2\n",
            &[("SERVICE_ACCOUNT", "gw")],
        )
        .unwrap();
        assert_eq!(c.service_account, "gw");
        assert_eq!(c.labels.get("istio").unwrap(), "ingressgateway");
        assert_eq!(c.num_trusted_proxies, 2);
        assert_eq!(c.stats_port, 15020);
        assert_eq!(
            c.spiffe_id().as_str(),
            "spiffe://cluster.local/ns/istio-system/sa/gw"
        );
        assert_eq!(c.certs, GatewayCertSource::StaticDir("/c".into()));
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let e = parse("identity: {namespace: x, bogus: 1}\n", &[]).unwrap_err();
        assert!(e.to_string().starts_with("gw.yaml: identity.bogus:"), "{e}");
        let e = parse(
            "identity: {namespace: Bad_NS}\ncertificates: {staticDir: /c}\nconfig: {directory: /d}\n",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "gw.yaml: identity.namespace: invalid value \"Bad_NS\": expected a DNS-1123 label (lower case letters, digits, '-')"
        );
        let e = parse(
            "identity: {namespace: a}\ncertificates: {staticDir: /c}\nconfig: {directory: /d}\nconnectTimeout: soon\n",
            &[],
        )
        .unwrap_err();
        assert!(
            e.to_string()
                .contains("connectTimeout: invalid value \"soon\""),
            "{e}"
        );
        let e = parse("identity: {namespace: a}\nconfig: {directory: /d}\n", &[]).unwrap_err();
        assert!(matches!(e, ConfigError::Missing { .. }), "{e}");
    }
}
