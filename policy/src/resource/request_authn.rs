//! `RequestAuthentication` (`security.istio.io/v1`, `v1beta1`).

use serde::{Deserialize, Serialize};

use super::common::{PolicyTargetReference, WorkloadSelector};
use super::nullable;
use crate::document::ObjectMeta;
use crate::error::{Location, ResourceId, ResourceKind};
use crate::jwt_rule::JwtRule;

/// A `RequestAuthentication` resource.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestAuthentication {
    /// Where it was read.
    pub source: Location,
    /// `apiVersion` as written.
    pub api_version: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: RequestAuthenticationSpec,
}

impl RequestAuthentication {
    /// `namespace/name` identity.
    pub fn id(&self) -> ResourceId {
        ResourceId {
            kind: ResourceKind::RequestAuthentication,
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
        }
    }
}

/// `spec` of a RequestAuthentication.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RequestAuthenticationSpec {
    /// `selector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `targetRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// `targetRefs`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `jwtRules`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub jwt_rules: Vec<JwtRule>,
}
