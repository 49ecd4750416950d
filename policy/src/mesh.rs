//! MeshConfig: the mesh-wide settings Warden uses, with Istio's defaults.
//!
//! Read from a YAML file holding MeshConfig itself (what `istioctl` and the `istio` ConfigMap's
//! `mesh` key contain). Fields Warden uses are typed; any other MeshConfig field is accepted and
//! ignored with a warning (MeshConfig has dozens of Envoy-specific fields); a typo in a field
//! Warden uses shows up as that warning too.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::resource::nullable;
use crate::scope::DEFAULT_ROOT_NAMESPACE;

/// Why a MeshConfig file is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {field}: {message}")]
pub struct MeshConfigError {
    /// The file.
    pub file: String,
    /// The field path (`.` for the whole document).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

/// The MeshConfig fields Warden uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    /// `trustDomain` (default `cluster.local`).
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    /// `trustDomainAliases`.
    #[serde(default, deserialize_with = "nullable")]
    pub trust_domain_aliases: Vec<String>,
    /// `rootNamespace` (default `istio-system`).
    #[serde(default = "default_root_namespace")]
    pub root_namespace: String,
    /// `outboundTrafficPolicy`.
    #[serde(default)]
    pub outbound_traffic_policy: OutboundTrafficPolicy,
    /// `extensionProviders`.
    #[serde(default, deserialize_with = "nullable")]
    pub extension_providers: Vec<ExtensionProvider>,
    /// Other MeshConfig fields: accepted and ignored.
    #[serde(flatten, skip_serializing)]
    pub ignored: BTreeMap<String, serde_yaml::Value>,
}

fn default_trust_domain() -> String {
    "cluster.local".into()
}

fn default_root_namespace() -> String {
    DEFAULT_ROOT_NAMESPACE.into()
}

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            trust_domain: default_trust_domain(),
            trust_domain_aliases: Vec::new(),
            root_namespace: default_root_namespace(),
            outbound_traffic_policy: OutboundTrafficPolicy::default(),
            extension_providers: Vec::new(),
            ignored: BTreeMap::new(),
        }
    }
}

/// `outboundTrafficPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OutboundTrafficPolicy {
    /// `mode`.
    #[serde(default)]
    pub mode: OutboundMode,
}

/// `outboundTrafficPolicy.mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OutboundMode {
    /// `ALLOW_ANY` (default): unknown destinations pass through.
    #[default]
    AllowAny,
    /// `REGISTRY_ONLY`: only destinations in the registry.
    RegistryOnly,
}

/// `extensionProviders[]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// `name`, referenced by AuthorizationPolicy `provider.name`.
    pub name: String,
    /// `envoyExtAuthzHttp`.
    #[serde(default)]
    pub envoy_ext_authz_http: Option<ExtAuthzHttp>,
    /// Other provider types (`envoyExtAuthzGrpc`, tracing, logging, ...): ignored.
    #[serde(flatten, skip_serializing)]
    pub ignored: BTreeMap<String, serde_yaml::Value>,
}

/// `envoyExtAuthzHttp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtAuthzHttp {
    /// `service`: host name of the authorizer.
    pub service: String,
    /// `port`.
    pub port: u16,
    /// `timeout` (default 600s, as Istio).
    #[serde(default = "default_ext_authz_timeout", with = "duration_text")]
    pub timeout: Duration,
    /// `pathPrefix`.
    #[serde(default)]
    pub path_prefix: String,
    /// `failOpen`.
    #[serde(default)]
    pub fail_open: bool,
    /// `statusOnError` (default 403).
    #[serde(default)]
    pub status_on_error: String,
    /// `includeRequestHeadersInCheck`.
    #[serde(default, deserialize_with = "nullable")]
    pub include_request_headers_in_check: Vec<String>,
    /// `includeAdditionalHeadersInCheck`.
    #[serde(default, deserialize_with = "nullable")]
    pub include_additional_headers_in_check: BTreeMap<String, String>,
    /// `headersToUpstreamOnAllow`.
    #[serde(default, deserialize_with = "nullable")]
    pub headers_to_upstream_on_allow: Vec<String>,
    /// `headersToDownstreamOnDeny`.
    #[serde(default, deserialize_with = "nullable")]
    pub headers_to_downstream_on_deny: Vec<String>,
    /// `headersToDownstreamOnAllow`.
    #[serde(default, deserialize_with = "nullable")]
    pub headers_to_downstream_on_allow: Vec<String>,
    /// Other fields (`includeRequestBodyInCheck`, ...): ignored.
    #[serde(flatten, skip_serializing)]
    pub ignored: BTreeMap<String, serde_yaml::Value>,
}

fn default_ext_authz_timeout() -> Duration {
    Duration::from_secs(600)
}

mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{}ms", d.as_millis()))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        crate::duration::parse_duration(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid duration {text:?}: expected e.g. 5s, 1.5s or 100ms"
            ))
        })
    }
}

impl MeshConfig {
    /// Parses MeshConfig YAML (`file` labels errors). An empty document gives the defaults.
    /// Returns the config and the ignored field paths.
    pub fn parse(file: &Path, text: &str) -> Result<(MeshConfig, Vec<String>), MeshConfigError> {
        let err = |field: String, message: String| MeshConfigError {
            file: file.display().to_string(),
            field,
            message,
        };
        let value: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| err(".".into(), e.to_string()))?;
        if value.is_null() {
            return Ok((MeshConfig::default(), Vec::new()));
        }
        let mesh: MeshConfig = serde_path_to_error::deserialize(value)
            .map_err(|e| err(e.path().to_string(), e.into_inner().to_string()))?;
        if mesh.trust_domain.is_empty() {
            return Err(err("trustDomain".into(), "must not be empty".into()));
        }
        if !crate::names::is_dns1123_label(&mesh.root_namespace) {
            return Err(err(
                "rootNamespace".into(),
                format!("invalid namespace {:?}", mesh.root_namespace),
            ));
        }
        let mut names = std::collections::BTreeSet::new();
        for (i, p) in mesh.extension_providers.iter().enumerate() {
            if p.name.is_empty() {
                return Err(err(
                    format!("extensionProviders[{i}].name"),
                    "must not be empty".into(),
                ));
            }
            if !names.insert(p.name.as_str()) {
                return Err(err(
                    format!("extensionProviders[{i}].name"),
                    format!("duplicate provider name {:?}", p.name),
                ));
            }
        }
        let mut ignored: Vec<String> = mesh.ignored.keys().cloned().collect();
        for (i, p) in mesh.extension_providers.iter().enumerate() {
            ignored.extend(
                p.ignored
                    .keys()
                    .map(|k| format!("extensionProviders[{i}].{k}")),
            );
            if let Some(h) = &p.envoy_ext_authz_http {
                ignored.extend(
                    h.ignored
                        .keys()
                        .map(|k| format!("extensionProviders[{i}].envoyExtAuthzHttp.{k}")),
                );
            }
        }
        Ok((mesh, ignored))
    }

    /// The provider named `name`.
    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_istios() {
        let (m, ignored) = MeshConfig::parse(Path::new("mesh.yaml"), "").unwrap();
        assert_eq!(m.trust_domain, "cluster.local");
        assert_eq!(m.root_namespace, "istio-system");
        assert_eq!(m.outbound_traffic_policy.mode, OutboundMode::AllowAny);
        assert!(ignored.is_empty());
    }

    #[test]
    fn reads_fields_and_reports_ignored_ones() {
        let text = "trustDomain: example.org\nrootNamespace: mesh-root\naccessLogFile: /dev/stdout\noutboundTrafficPolicy: {mode: REGISTRY_ONLY}\nextensionProviders:\n- name: ext\n  envoyExtAuthzHttp:\n    service: authz.foo.svc.cluster.local\n    port: 8000\n    timeout: 2s\n    includeRequestHeadersInCheck: [x-ext-authz]\n";
        let (m, ignored) = MeshConfig::parse(Path::new("mesh.yaml"), text).unwrap();
        assert_eq!(m.trust_domain, "example.org");
        assert_eq!(m.outbound_traffic_policy.mode, OutboundMode::RegistryOnly);
        let p = m
            .provider("ext")
            .unwrap()
            .envoy_ext_authz_http
            .as_ref()
            .unwrap();
        assert_eq!(p.timeout, Duration::from_secs(2));
        assert_eq!(p.port, 8000);
        assert_eq!(ignored, vec!["accessLogFile".to_owned()]);
    }

    #[test]
    fn errors_name_the_field() {
        let e = MeshConfig::parse(
            Path::new("m.yaml"),
            "outboundTrafficPolicy: {mode: SOMETIMES}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "outboundTrafficPolicy.mode");
        assert!(
            e.to_string()
                .starts_with("m.yaml: outboundTrafficPolicy.mode: unknown variant `SOMETIMES`"),
            "{e}"
        );
    }
}
