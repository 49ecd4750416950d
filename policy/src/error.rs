//! Configuration errors and warnings: each names the file, the document, the resource and the field.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

/// Where a document came from: a file and the 1-based index of the YAML document in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// The file the document was read from (or a label such as `<stdin>`).
    pub file: Arc<Path>,
    /// The 1-based index of the YAML document in the file (documents are separated by `---`);
    /// 0 for the file as a whole (it could not be read).
    pub document: usize,
    /// For a `kind: List` document, the 0-based index of the item in `items`.
    pub item: Option<usize>,
}

impl Location {
    /// A location for document `document` (1-based) of `file`.
    pub fn new(file: impl Into<Arc<Path>>, document: usize) -> Self {
        Location {
            file: file.into(),
            document,
            item: None,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.document > 0 {
            write!(f, ": document {}", self.document)?;
        }
        if let Some(item) = self.item {
            write!(f, " item {item}")?;
        }
        Ok(())
    }
}

impl Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The Istio security kinds Warden reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum ResourceKind {
    /// `AuthorizationPolicy`.
    AuthorizationPolicy,
    /// `PeerAuthentication`.
    PeerAuthentication,
    /// `RequestAuthentication`.
    RequestAuthentication,
    /// `ServiceEntry` (networking.istio.io).
    ServiceEntry,
    /// `WorkloadEntry` (networking.istio.io).
    WorkloadEntry,
    /// `Gateway` (networking.istio.io).
    Gateway,
    /// `VirtualService` (networking.istio.io).
    VirtualService,
    /// `DestinationRule` (networking.istio.io).
    DestinationRule,
}

impl ResourceKind {
    /// The kind as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::AuthorizationPolicy => "AuthorizationPolicy",
            ResourceKind::PeerAuthentication => "PeerAuthentication",
            ResourceKind::RequestAuthentication => "RequestAuthentication",
            ResourceKind::ServiceEntry => "ServiceEntry",
            ResourceKind::WorkloadEntry => "WorkloadEntry",
            ResourceKind::Gateway => "Gateway",
            ResourceKind::VirtualService => "VirtualService",
            ResourceKind::DestinationRule => "DestinationRule",
        }
    }

    /// Whether this is one of the `security.istio.io` kinds.
    pub fn is_security(self) -> bool {
        matches!(
            self,
            ResourceKind::AuthorizationPolicy
                | ResourceKind::PeerAuthentication
                | ResourceKind::RequestAuthentication
        )
    }

    /// Parses a networking (`networking.istio.io`) `kind` string.
    pub fn parse_networking(kind: &str) -> Option<Self> {
        match kind {
            "ServiceEntry" => Some(ResourceKind::ServiceEntry),
            "WorkloadEntry" => Some(ResourceKind::WorkloadEntry),
            "Gateway" => Some(ResourceKind::Gateway),
            "VirtualService" => Some(ResourceKind::VirtualService),
            "DestinationRule" => Some(ResourceKind::DestinationRule),
            _ => None,
        }
    }

    /// Parses a security `kind` string.
    pub fn parse(kind: &str) -> Option<Self> {
        match kind {
            "AuthorizationPolicy" => Some(ResourceKind::AuthorizationPolicy),
            "PeerAuthentication" => Some(ResourceKind::PeerAuthentication),
            "RequestAuthentication" => Some(ResourceKind::RequestAuthentication),
            _ => None,
        }
    }
}

impl fmt::Display for ResourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A resource's identity: kind, namespace and name. Displays as `namespace/name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ResourceId {
    /// The resource kind.
    pub kind: ResourceKind,
    /// `metadata.namespace` (`default` when not set).
    pub namespace: String,
    /// `metadata.name`.
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// What is wrong with a piece of configuration. Each variant is one rule; messages quote the bad value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// The file could not be read.
    #[error("cannot read: {0}")]
    Io(String),
    /// The YAML could not be parsed.
    #[error("invalid YAML: {0}")]
    Yaml(String),
    /// The document is not a YAML mapping.
    #[error("document is not a mapping")]
    NotAMapping,
    /// A required field is missing or empty.
    #[error("required field is missing or empty")]
    Missing,
    /// A field does not fit the schema (unknown field, wrong type, unknown enum value).
    #[error("{0}")]
    Schema(String),
    /// A security kind with an apiVersion Warden does not know.
    #[error(
        "unsupported apiVersion {0:?} (expected security.istio.io/v1 or security.istio.io/v1beta1)"
    )]
    UnsupportedApiVersion(String),
    /// `metadata.name` or `metadata.namespace` is not a valid Kubernetes name.
    #[error("invalid name {0:?}: must be a lowercase RFC 1123 name")]
    InvalidName(String),
    /// `metadata.creationTimestamp` is not an RFC 3339 time.
    #[error("invalid timestamp {0:?}: expected RFC 3339, e.g. 2024-01-02T03:04:05Z")]
    InvalidTimestamp(String),
    /// The same kind, namespace and name was defined earlier.
    #[error("duplicate resource, first defined at {0}")]
    Duplicate(String),
    /// A list item is the empty string.
    #[error("empty value not allowed")]
    EmptyValue,
    /// An IP block is not a valid IP address or CIDR.
    #[error("invalid CIDR {0:?}")]
    InvalidCidr(String),
    /// A port is not an integer in 0..=65535.
    #[error("invalid port {0:?}: expected an integer in 0..65535")]
    InvalidPort(String),
    /// A port range `low-high` with low > high or out of range.
    #[error("invalid port range {0:?}: expected low-high with 0 <= low <= high <= 65535")]
    InvalidPortRange(String),
    /// A path template uses an unsupported form.
    #[error(
        "invalid or unsupported path template {0:?}: only {{*}} and {{**}} segments are supported, and {{**}} must be last"
    )]
    InvalidPathTemplate(String),
    /// `provider` is set on a policy whose action is not CUSTOM.
    #[error("`provider` must only be used with action CUSTOM, found action {0}")]
    ProviderWithoutCustom(String),
    /// CUSTOM action without `provider.name`.
    #[error("action CUSTOM requires `provider.name`")]
    CustomWithoutProvider,
    /// CUSTOM action without `rules`.
    #[error(
        "action CUSTOM without `rules` never triggers; add an empty rule `{{}}` to send every request to the provider"
    )]
    CustomWithoutRules,
    /// A field that CUSTOM does not support.
    #[error("{0} is not supported with action CUSTOM")]
    NotSupportedWithCustom(String),
    /// DENY action without `rules`.
    #[error(
        "action DENY without `rules` never triggers; add an empty rule `{{}}` to deny every request"
    )]
    DenyWithoutRules,
    /// `from: []`.
    #[error("`from` must not be empty (omit it to match any source)")]
    EmptyFrom,
    /// `to: []`.
    #[error("`to` must not be empty (omit it to match any operation)")]
    EmptyTo,
    /// A `from` entry without `source`.
    #[error("`source` must be set")]
    MissingSource,
    /// A `source` with no field set.
    #[error("`source` must not be empty")]
    EmptySource,
    /// A `to` entry without `operation`.
    #[error("`operation` must be set")]
    MissingOperation,
    /// An `operation` with no field set.
    #[error("`operation` must not be empty")]
    EmptyOperation,
    /// A condition without `key`.
    #[error("`key` must not be empty")]
    EmptyConditionKey,
    /// A condition with neither `values` nor `notValues`.
    #[error("at least one of `values` or `notValues` must be set for key {0:?}")]
    ConditionWithoutValues(String),
    /// A condition key Istio does not know.
    #[error("unknown condition key {0:?}")]
    UnknownConditionKey(String),
    /// A condition key of the form `a[b]` that is malformed.
    #[error("bad condition key {0:?}: should have the form {1}[name]")]
    MalformedConditionKey(String, &'static str),
    /// A condition key Istio rejects with a specific reason.
    #[error("condition key {0:?} is not supported: {1}")]
    UnsupportedConditionKey(String, &'static str),
    /// `serviceAccounts` together with `principals` or `namespaces`.
    #[error(
        "`serviceAccounts`/`notServiceAccounts` cannot be set with `principals`, `notPrincipals`, `namespaces` or `notNamespaces`"
    )]
    ServiceAccountsWithPrincipals,
    /// More than 16 service accounts.
    #[error("at most 16 service accounts are allowed, found {0}")]
    TooManyServiceAccounts(usize),
    /// A service account that is not `name` or `namespace/name`.
    #[error("invalid service account {0:?}: expected `name` or `namespace/name`, no wildcards")]
    InvalidServiceAccount(String),
    /// More than one of `selector`, `targetRef`, `targetRefs`.
    #[error("only one of `selector`, `targetRef` or `targetRefs` can be set")]
    SelectorAndTargetRef,
    /// A selector label with an empty key.
    #[error("empty label key is not supported in a selector")]
    EmptySelectorKey,
    /// A selector label with `*`.
    #[error("wildcard is not supported in a selector: {0:?}")]
    WildcardInSelector(String),
    /// A label key or value that Kubernetes would reject.
    #[error("invalid label {0:?}: {1}")]
    InvalidLabel(String, &'static str),
    /// `targetRef.name` is empty.
    #[error("`targetRef.name` must be set")]
    TargetRefWithoutName,
    /// `targetRef.namespace` is set.
    #[error("`targetRef.namespace` must not be set: cross-namespace references are not supported")]
    TargetRefNamespace,
    /// `targetRef` to an unsupported kind.
    #[error(
        "targetRef must be to a Gateway (gateway.networking.k8s.io), GatewayClass, Service or ServiceEntry, found {0:?}"
    )]
    TargetRefKind(String),
    /// `istio.io/dry-run` with a value that is not a boolean.
    #[error("annotation istio.io/dry-run has invalid value {0:?}: expected true or false")]
    DryRunValue(String),
    /// `istio.io/dry-run` on a policy whose action is not ALLOW or DENY.
    #[error("annotation istio.io/dry-run only supports actions ALLOW and DENY, found {0}")]
    DryRunAction(String),
    /// `istio.io/dry-run` on a kind other than AuthorizationPolicy.
    #[error("annotation istio.io/dry-run is only supported on AuthorizationPolicy")]
    DryRunKind,
    /// `portLevelMtls` on a policy without a selector.
    #[error(
        "mesh-wide and namespace-wide PeerAuthentication cannot have `portLevelMtls` (it needs a selector)"
    )]
    PortLevelWithoutSelector,
    /// `portLevelMtls: {}`.
    #[error("`portLevelMtls`, if set, must have at least one port")]
    EmptyPortLevelMtls,
    /// A `portLevelMtls` key outside 1..=65535.
    #[error("port {0} out of range 1..65535")]
    MtlsPortRange(u64),
    /// A JWT rule without `issuer`.
    #[error("`issuer` must be set")]
    JwtWithoutIssuer,
    /// A `jwksUri` that is not an http(s) URL.
    #[error("invalid jwksUri {0:?}: {1}")]
    InvalidJwksUri(String, String),
    /// An inline `jwks` that is not a JSON Web Key Set.
    #[error("invalid jwks: {0}")]
    InvalidJwks(String),
    /// An HTTP header name that is not a valid token.
    #[error("invalid header name {0:?}")]
    InvalidHeaderName(String),
    /// An `outputClaimToHeaders` entry without header or claim.
    #[error("`header` and `claim` must both be set")]
    IncompleteClaimToHeader,
    /// A networking kind with an apiVersion Warden does not know.
    #[error("unsupported apiVersion {0:?} (expected networking.istio.io/v1, v1beta1 or v1alpha3)")]
    UnsupportedNetworkingApiVersion(String),
    /// A value Istio's validation rejects, with the reason.
    #[error("invalid value {0:?}: {1}")]
    InvalidValue(String, &'static str),
    /// A duration that cannot be parsed.
    #[error("invalid duration {0:?}: expected e.g. 5s, 1.5s or 100ms")]
    InvalidDuration(String),
}

/// One configuration error, located precisely.
///
/// Displays as `policies/a.yaml: document 2 (AuthorizationPolicy foo/deny-bad):
/// spec.rules[0].from[1].source.ipBlocks[0]: invalid CIDR "10.0.0.0/33"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Where the document is.
    pub location: Location,
    /// The resource, once its kind and name are known.
    pub resource: Option<ResourceId>,
    /// The field path inside the document, e.g. `spec.rules[0].when[1].values[0]` (empty for the whole document).
    pub field: String,
    /// What is wrong.
    pub problem: Problem,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(r) = &self.resource {
            write!(f, " ({} {})", r.kind, r)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.problem)
    }
}

impl std::error::Error for ConfigError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.problem)
    }
}

impl Serialize for ConfigError {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Something accepted but probably not what the author meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Advice {
    /// `selector: {}` or `matchLabels: {}`: the policy applies like one without a selector.
    #[error("selector without labels selects every workload in scope")]
    SelectorWithoutLabels,
    /// A DENY rule with only HTTP attributes denies all TCP traffic in its scope.
    #[error(
        "this DENY rule uses only HTTP attributes: on TCP traffic they are ignored and the rule denies every connection; set `ports` to limit it"
    )]
    DenyHttpOnlyOnTcp,
    /// A principal written with `spiffe://`, which never matches (principals omit the scheme).
    #[error(
        "principal {0:?} starts with spiffe://; principals are written without it and this one never matches"
    )]
    PrincipalWithScheme(String),
    /// An `experimental.envoy.filters.*` key Warden cannot evaluate.
    #[error(
        "condition key {0:?} reads Envoy metadata that Warden does not have: ALLOW rules using it are dropped, DENY/AUDIT rules ignore it"
    )]
    UnsupportedExperimentalKey(String),
    /// A method that is not upper case: Istio rejects such requests with 400, so it never matches.
    #[error(
        "method {0:?} is not upper case and never matches (Istio rejects such requests with 400)"
    )]
    LowercaseMethod(String),
    /// A targetRef kind that only applies to waypoints, which Warden does not run.
    #[error(
        "targetRef kind {0:?} applies to waypoint proxies only; this policy applies to no Warden workload"
    )]
    WaypointOnlyTarget(String),
    /// A field Istio accepts that Warden does not implement: it is ignored.
    #[error("field `{0}` is not implemented by Warden and is ignored")]
    IgnoredField(String),
}

/// A warning with the same location details as [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// Where the document is.
    pub location: Location,
    /// The resource.
    pub resource: Option<ResourceId>,
    /// The field path.
    pub field: String,
    /// The advice.
    pub advice: Advice,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.location)?;
        if let Some(r) = &self.resource {
            write!(f, " ({} {})", r.kind, r)?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": warning: {}", self.advice)
    }
}

impl Serialize for ConfigWarning {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
