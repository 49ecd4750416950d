//! `PeerAuthentication` (`security.istio.io/v1`, `v1beta1`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::common::WorkloadSelector;
use crate::document::ObjectMeta;
use crate::error::{Location, ResourceId, ResourceKind};

/// A `PeerAuthentication` resource.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerAuthentication {
    /// Where it was read.
    pub source: Location,
    /// `apiVersion` as written.
    pub api_version: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: PeerAuthenticationSpec,
}

impl PeerAuthentication {
    /// `namespace/name` identity.
    pub fn id(&self) -> ResourceId {
        ResourceId {
            kind: ResourceKind::PeerAuthentication,
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
        }
    }

    /// Whether the policy selects workloads by labels (an empty `matchLabels` counts as no selector).
    pub fn has_selector(&self) -> bool {
        self.spec
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty())
    }
}

/// `spec` of a PeerAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PeerAuthenticationSpec {
    /// `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `mtls`: the workload-wide mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<MutualTls>,
    /// `portLevelMtls`: modes per workload port (needs a selector).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_level_mtls: Option<BTreeMap<PortKey, MutualTls>>,
}

/// `mtls` / a `portLevelMtls` value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MutualTls {
    /// `mode`.
    #[serde(default)]
    pub mode: MtlsMode,
}

/// `mtls.mode` as written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    /// Inherit from the level above.
    #[default]
    Unset,
    /// Plaintext only.
    Disable,
    /// mTLS or plaintext.
    Permissive,
    /// mTLS with a client certificate only.
    Strict,
}

/// A `portLevelMtls` key: YAML writes it as a number (`8080:`) or, from JSON, a string (`"8080":`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortKey(pub u64);

impl Serialize for PortKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for PortKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = PortKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a port number")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<PortKey, E> {
                Ok(PortKey(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<PortKey, E> {
                u64::try_from(v)
                    .map(PortKey)
                    .map_err(|_| E::custom(format!("invalid port {v}")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<PortKey, E> {
                v.parse::<u64>()
                    .map(PortKey)
                    .map_err(|_| E::custom(format!("invalid port {v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}
