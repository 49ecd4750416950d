//! `AuthorizationPolicy` (`security.istio.io/v1`, `v1beta1`), field names as in Istio's YAML.

use serde::{Deserialize, Serialize};

use super::common::{PolicyTargetReference, WorkloadSelector};
use super::nullable;
use crate::document::ObjectMeta;
use crate::error::{Location, ResourceId, ResourceKind};

/// The annotation that makes a policy dry-run: evaluated and reported, never enforced.
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// An `AuthorizationPolicy` resource.
#[derive(Debug, Clone, PartialEq)]
pub struct AuthorizationPolicy {
    /// Where it was read.
    pub source: Location,
    /// `apiVersion` as written (`security.istio.io/v1` or `security.istio.io/v1beta1`).
    pub api_version: String,
    /// `metadata`.
    pub metadata: ObjectMeta,
    /// `spec`.
    pub spec: AuthorizationPolicySpec,
}

impl AuthorizationPolicy {
    /// `namespace/name` identity.
    pub fn id(&self) -> ResourceId {
        ResourceId {
            kind: ResourceKind::AuthorizationPolicy,
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
        }
    }

    /// Whether the `istio.io/dry-run` annotation is true (Go `strconv.ParseBool` syntax).
    pub fn is_dry_run(&self) -> bool {
        self.metadata
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .and_then(|v| parse_bool(v))
            .unwrap_or(false)
    }
}

/// Go's `strconv.ParseBool`, which Istio uses for annotations.
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// `spec` of an AuthorizationPolicy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    /// `selector`: the workloads (by labels) the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `targetRef`: a Gateway (or a waypoint target) the policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    /// `targetRefs`.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub target_refs: Vec<PolicyTargetReference>,
    /// `rules`; `None` (not set) and `Some([])` differ only in validation, both match nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rules: Option<Vec<Rule>>,
    /// `action` (default ALLOW).
    #[serde(default)]
    pub action: Action,
    /// `provider`: the ext-authz provider of a CUSTOM policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<ExtensionProvider>,
}

impl AuthorizationPolicySpec {
    /// The rules, empty when not set.
    pub fn rules(&self) -> &[Rule] {
        self.rules.as_deref().unwrap_or(&[])
    }
}

/// `action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Action {
    /// Allow a request only if it matches the rules (default).
    #[default]
    Allow,
    /// Deny a request if it matches any rule.
    Deny,
    /// Audit a request if it matches any rule; never changes the decision.
    Audit,
    /// Delegate the decision to an external authorizer if the request matches.
    Custom,
}

impl Action {
    /// The name as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "ALLOW",
            Action::Deny => "DENY",
            Action::Audit => "AUDIT",
            Action::Custom => "CUSTOM",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `provider` of a CUSTOM policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionProvider {
    /// `name`: an ext-authz provider declared in the mesh config.
    #[serde(default)]
    pub name: String,
}

/// A `rules[]` entry: `from` AND `to` AND `when`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rule {
    /// `from`: sources, any may match; `None` matches any source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Vec<RuleFrom>>,
    /// `to`: operations, any may match; `None` matches any operation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<RuleTo>>,
    /// `when`: conditions, all must match.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub when: Vec<Condition>,
}

/// A `from[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleFrom {
    /// `source`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// A `to[]` entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleTo {
    /// `operation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<Operation>,
}

macro_rules! string_lists {
    ($(#[$meta:meta])* pub struct $name:ident { $($(#[$fmeta:meta])* $field:ident,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(default, deserialize_with = "nullable", skip_serializing_if = "Vec::is_empty")]
                pub $field: Vec<String>,
            )*
        }
    };
}

string_lists! {
    /// `source`: all set fields must match (AND); values inside one field OR.
    pub struct Source {
        /// `principals`: peer SPIFFE IDs without `spiffe://` (needs mTLS).
        principals,
        /// `notPrincipals`.
        not_principals,
        /// `requestPrincipals`: `iss/sub` of a validated JWT.
        request_principals,
        /// `notRequestPrincipals`.
        not_request_principals,
        /// `namespaces`: the namespace in the peer's SPIFFE ID.
        namespaces,
        /// `notNamespaces`.
        not_namespaces,
        /// `serviceAccounts`: `sa` (the policy's namespace) or `ns/sa`, exact.
        service_accounts,
        /// `notServiceAccounts`.
        not_service_accounts,
        /// `ipBlocks`: the direct peer address (IP or CIDR).
        ip_blocks,
        /// `notIpBlocks`.
        not_ip_blocks,
        /// `remoteIpBlocks`: the original client address.
        remote_ip_blocks,
        /// `notRemoteIpBlocks`.
        not_remote_ip_blocks,
    }
}

impl Source {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.principals.is_empty()
            && self.not_principals.is_empty()
            && self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
            && self.namespaces.is_empty()
            && self.not_namespaces.is_empty()
            && self.service_accounts.is_empty()
            && self.not_service_accounts.is_empty()
            && self.ip_blocks.is_empty()
            && self.not_ip_blocks.is_empty()
            && self.remote_ip_blocks.is_empty()
            && self.not_remote_ip_blocks.is_empty()
    }
}

string_lists! {
    /// `operation`: all set fields must match (AND); values inside one field OR.
    pub struct Operation {
        /// `hosts` (case-insensitive, HTTP only).
        hosts,
        /// `notHosts`.
        not_hosts,
        /// `ports`: destination ports.
        ports,
        /// `notPorts`.
        not_ports,
        /// `methods` (HTTP only).
        methods,
        /// `notMethods`.
        not_methods,
        /// `paths`: normalized path without query (HTTP only).
        paths,
        /// `notPaths`.
        not_paths,
    }
}

impl Operation {
    /// Whether no field is set.
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.ports.is_empty()
            && self.not_ports.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty()
    }
}

/// A `when[]` condition.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Condition {
    /// `key`: an Istio attribute such as `request.headers[x-token]`.
    #[serde(default)]
    pub key: String,
    /// `values`: any may match.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub values: Vec<String>,
    /// `notValues`: none may match.
    #[serde(
        default,
        deserialize_with = "nullable",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub not_values: Vec<String>,
}
