//! Types shared by the security kinds: workload selectors and policy target references.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::nullable;

/// `selector`: picks workloads by labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadSelector {
    /// `matchLabels`: every label must be present with the same value.
    #[serde(default, deserialize_with = "nullable")]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    /// Whether every selector label is in `labels` with the same value.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k).is_some_and(|l| l == v))
    }
}

/// The label Kubernetes Gateway API deployments carry with their Gateway's name.
pub const GATEWAY_NAME_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// `targetRef` / `targetRefs[]`: a resource the policy is attached to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicyTargetReference {
    /// `group`, e.g. `gateway.networking.k8s.io` (empty for the core group).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
    /// `kind`, e.g. `Gateway`.
    #[serde(default)]
    pub kind: String,
    /// `name`.
    #[serde(default)]
    pub name: String,
    /// `namespace` (must not be set).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
}

impl PolicyTargetReference {
    /// Whether this references a Kubernetes Gateway API `Gateway`, the only target a Warden
    /// workload (a gateway deployment) can be.
    pub fn is_gateway(&self) -> bool {
        self.group == "gateway.networking.k8s.io" && self.kind == "Gateway"
    }
}
