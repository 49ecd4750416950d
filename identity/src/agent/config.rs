//! The agent's configuration, from typed fields or from the environment Istio's injector sets.

use std::path::PathBuf;
use std::time::Duration;

use crate::keys::KeyAlgorithm;
use crate::spiffe::{SpiffeId, TrustDomain};

/// Istio's default root bundle mount.
pub const DEFAULT_ROOT_CERT: &str = "/var/run/secrets/istio/root-cert.pem";
/// Istio's projected service-account token (audience `istio-ca`).
pub const DEFAULT_TOKEN_FILE: &str = "/var/run/secrets/tokens/istio-token";

/// A bad or missing configuration value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {var} is required: {what}")]
    Missing {
        /// The variable.
        var: &'static str,
        /// What it should hold.
        what: &'static str,
    },
    /// A variable has a value that does not parse.
    #[error("environment variable {var}={value:?} is invalid: {reason}")]
    Invalid {
        /// The variable.
        var: &'static str,
        /// Its value.
        value: String,
        /// Why.
        reason: String,
    },
}

/// How the agent talks to the CA and when it renews.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    /// The CA's address, `host:port` (`CA_ADDR`, e.g. `istiod.istio-system.svc:15012`).
    pub ca_addr: String,
    /// The name the CA's serving certificate must carry (DNS name or IP address;
    /// `CA_SERVER_NAME`); by default the host part of `ca_addr`.
    pub ca_server_name: Option<String>,
    /// The root bundle file: verifies the CA's certificate and is the mesh trust bundle
    /// (re-read when it changes). `WARDEN_ROOT_CERT`, default [`DEFAULT_ROOT_CERT`].
    pub root_cert_file: PathBuf,
    /// The service-account token file, read on every call (`WARDEN_TOKEN_FILE`, default
    /// [`DEFAULT_TOKEN_FILE`]).
    pub token_file: PathBuf,
    /// The workload identity (`TRUST_DOMAIN`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`).
    pub identity: SpiffeId,
    /// Other trust domains whose peers are accepted (`TRUST_DOMAIN_ALIASES`, space or comma
    /// separated).
    pub trust_domain_aliases: Vec<TrustDomain>,
    /// `clusterid` metadata sent to the CA (`ISTIO_META_CLUSTER_ID`), if any.
    pub cluster_id: Option<String>,
    /// The workload key type (`WARDEN_KEY_ALGORITHM`: `ec-p256` default, `rsa-2048`...).
    pub key_algorithm: KeyAlgorithm,
    /// The certificate lifetime asked for (`SECRET_TTL`, default 24h).
    pub requested_ttl: Duration,
    /// Renew when this fraction of the lifetime has passed (`SECRET_GRACE_PERIOD_RATIO`, 0.5).
    pub grace_ratio: f64,
    /// Random spread around `grace_ratio`, as a fraction of the lifetime
    /// (`SECRET_GRACE_PERIOD_RATIO_JITTER`, 0.01).
    pub grace_jitter: f64,
    /// First retry delay after a failed renewal (1s); doubles per failure.
    pub initial_backoff: Duration,
    /// Longest retry delay (`WARDEN_CA_MAX_BACKOFF`, 60s).
    pub max_backoff: Duration,
    /// One CA call's time limit (10s).
    pub call_timeout: Duration,
    /// How often the root bundle file is checked for changes (5s).
    pub root_poll: Duration,
    /// Where the CRL is fetched (`WARDEN_CRL_URL`; default `https://<ca_addr>/ca/crl.pem`;
    /// `none` turns CRL fetching off).
    pub crl_url: Option<String>,
    /// How often the CRL is refreshed (`WARDEN_CRL_REFRESH`, 5m).
    pub crl_refresh: Duration,
}

impl AgentConfig {
    /// A configuration with Istio's defaults for `identity` talking to `ca_addr`.
    pub fn new(ca_addr: impl Into<String>, identity: SpiffeId) -> Self {
        let ca_addr = ca_addr.into();
        Self {
            crl_url: Some(format!("https://{ca_addr}/ca/crl.pem")),
            ca_addr,
            ca_server_name: None,
            root_cert_file: PathBuf::from(DEFAULT_ROOT_CERT),
            token_file: PathBuf::from(DEFAULT_TOKEN_FILE),
            identity,
            trust_domain_aliases: Vec::new(),
            cluster_id: None,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            requested_ttl: Duration::from_secs(24 * 3600),
            grace_ratio: 0.5,
            grace_jitter: 0.01,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            call_timeout: Duration::from_secs(10),
            root_poll: Duration::from_secs(5),
            crl_refresh: Duration::from_secs(300),
        }
    }

    /// From the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// From any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let req = |var: &'static str, what: &'static str| {
            get(var)
                .filter(|v| !v.trim().is_empty())
                .ok_or(ConfigError::Missing { var, what })
        };
        let invalid = |var: &'static str, value: &str, reason: String| ConfigError::Invalid {
            var,
            value: value.to_owned(),
            reason,
        };
        let ca_addr = req(
            "CA_ADDR",
            "the CA address host:port, e.g. istiod.istio-system.svc:15012",
        )?;
        if split_host(&ca_addr).is_none() {
            return Err(invalid(
                "CA_ADDR",
                &ca_addr,
                "expected host:port".to_owned(),
            ));
        }
        let td_text = get("TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".to_owned());
        let td = TrustDomain::new(&td_text)
            .map_err(|e| invalid("TRUST_DOMAIN", &td_text, e.to_string()))?;
        let ns = req("POD_NAMESPACE", "the pod's namespace")?;
        let sa = req("SERVICE_ACCOUNT", "the pod's service account")?;
        let identity = SpiffeId::istio(&td, &ns, &sa)
            .map_err(|e| invalid("SERVICE_ACCOUNT", &sa, e.to_string()))?;
        let mut c = Self::new(ca_addr, identity);
        if let Some(v) = get("CA_SERVER_NAME").filter(|v| !v.is_empty()) {
            c.ca_server_name = Some(v);
        }
        if let Some(v) = get("WARDEN_ROOT_CERT").filter(|v| !v.is_empty()) {
            c.root_cert_file = v.into();
        }
        if let Some(v) = get("WARDEN_TOKEN_FILE").filter(|v| !v.is_empty()) {
            c.token_file = v.into();
        }
        if let Some(v) = get("TRUST_DOMAIN_ALIASES") {
            c.trust_domain_aliases = v
                .split([' ', ','])
                .filter(|s| !s.is_empty())
                .map(|s| {
                    TrustDomain::new(s)
                        .map_err(|e| invalid("TRUST_DOMAIN_ALIASES", &v, e.to_string()))
                })
                .collect::<Result<_, _>>()?;
        }
        c.cluster_id = get("ISTIO_META_CLUSTER_ID").filter(|v| !v.is_empty());
        if let Some(v) = get("WARDEN_KEY_ALGORITHM") {
            c.key_algorithm = v.parse().map_err(|e: crate::keys::KeyError| {
                invalid("WARDEN_KEY_ALGORITHM", &v, e.to_string())
            })?;
        }
        let duration = |var: &'static str| -> Result<Option<Duration>, ConfigError> {
            match get(var) {
                None => Ok(None),
                Some(v) => parse_duration(&v)
                    .map(Some)
                    .map_err(|e| invalid(var, &v, e)),
            }
        };
        if let Some(d) = duration("SECRET_TTL")? {
            c.requested_ttl = d;
        }
        if let Some(d) = duration("WARDEN_CA_MAX_BACKOFF")? {
            c.max_backoff = d;
        }
        if let Some(d) = duration("WARDEN_CRL_REFRESH")? {
            c.crl_refresh = d;
        }
        let ratio = |var: &'static str, lo: f64, hi: f64| -> Result<Option<f64>, ConfigError> {
            match get(var) {
                None => Ok(None),
                Some(v) => match v.trim().parse::<f64>() {
                    Ok(x) if (lo..=hi).contains(&x) => Ok(Some(x)),
                    _ => Err(invalid(
                        var,
                        &v,
                        format!("expected a number from {lo} to {hi}"),
                    )),
                },
            }
        };
        if let Some(r) = ratio("SECRET_GRACE_PERIOD_RATIO", 0.05, 0.95)? {
            c.grace_ratio = r;
        }
        if let Some(r) = ratio("SECRET_GRACE_PERIOD_RATIO_JITTER", 0.0, 0.2)? {
            c.grace_jitter = r;
        }
        match get("WARDEN_CRL_URL").as_deref() {
            None | Some("") => {}
            Some("none") => c.crl_url = None,
            Some(u) if u.starts_with("https://") => c.crl_url = Some(u.to_owned()),
            Some(u) => {
                return Err(invalid(
                    "WARDEN_CRL_URL",
                    u,
                    "expected an https:// URL or none".to_owned(),
                ));
            }
        }
        Ok(c)
    }

    /// The name the CA's certificate must carry.
    pub fn expected_ca_name(&self) -> &str {
        match &self.ca_server_name {
            Some(n) => n,
            None => split_host(&self.ca_addr)
                .map(|(h, _)| h)
                .unwrap_or(&self.ca_addr),
        }
    }
}

/// Parses a Go-style duration as Istio's variables use them (`24h`, `24h0m0s`, `90m`, `1h30m`,
/// `500ms`, `45s`) or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let bad = || format!("invalid duration {text:?}: expected e.g. 24h, 24h0m0s, 90m, 500ms, 3600");
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let part = match &rest[..unit_len] {
            "h" => Duration::from_secs(n.checked_mul(3600).ok_or_else(bad)?),
            "m" => Duration::from_secs(n.checked_mul(60).ok_or_else(bad)?),
            "s" => Duration::from_secs(n),
            "ms" => Duration::from_millis(n),
            "d" => Duration::from_secs(n.checked_mul(86400).ok_or_else(bad)?),
            _ => return Err(bad()),
        };
        total = total.checked_add(part).ok_or_else(bad)?;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// `host:port` (host may be a bracketed IPv6 address) -> (host without brackets, port).
pub(crate) fn split_host(addr: &str) -> Option<(&str, u16)> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn reads_istio_environment() {
        let c = AgentConfig::from_lookup(lookup(&[
            ("CA_ADDR", "istiod.istio-system.svc:15012"),
            ("POD_NAMESPACE", "bookinfo"),
            ("SERVICE_ACCOUNT", "reviews"),
            ("SECRET_TTL", "12h"),
            ("TRUST_DOMAIN_ALIASES", "old.example, older.example"),
            ("WARDEN_CRL_URL", "none"),
        ]))
        .unwrap();
        assert_eq!(
            c.identity.as_str(),
            "spiffe://cluster.local/ns/bookinfo/sa/reviews"
        );
        assert_eq!(c.requested_ttl, Duration::from_secs(12 * 3600));
        assert_eq!(c.expected_ca_name(), "istiod.istio-system.svc");
        assert_eq!(c.trust_domain_aliases.len(), 2);
        assert_eq!(c.crl_url, None);
        assert_eq!(c.grace_ratio, 0.5);
    }

    #[test]
    fn errors_name_the_variable_and_value() {
        let err = AgentConfig::from_lookup(lookup(&[("POD_NAMESPACE", "a")])).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("environment variable CA_ADDR is required"),
            "{err}"
        );
        let err = AgentConfig::from_lookup(lookup(&[
            ("CA_ADDR", "ca:15012"),
            ("POD_NAMESPACE", "a"),
            ("SERVICE_ACCOUNT", "b"),
            ("SECRET_GRACE_PERIOD_RATIO", "2"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable SECRET_GRACE_PERIOD_RATIO=\"2\" is invalid: expected a number from 0.05 to 0.95"
        );
        let err = AgentConfig::from_lookup(lookup(&[
            ("CA_ADDR", "no-port"),
            ("POD_NAMESPACE", "a"),
            ("SERVICE_ACCOUNT", "b"),
        ]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::Invalid { var: "CA_ADDR", .. }));
        assert_eq!(split_host("[::1]:15012"), Some(("::1", 15012)));
        assert_eq!(parse_duration("24h0m0s"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("1x").is_err());
        assert!(parse_duration("h").is_err());
    }
}
