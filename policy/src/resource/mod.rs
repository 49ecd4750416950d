//! Typed Istio security resources, read from [`Document`]s with schema checks and validation.

pub mod authz;
pub mod common;
pub mod peer;
pub mod request_authn;

use serde::{Deserialize, Serialize};

pub use authz::{
    Action, AuthorizationPolicy, AuthorizationPolicySpec, Condition, DRY_RUN_ANNOTATION,
    ExtensionProvider, Operation, Rule, RuleFrom, RuleTo, Source,
};
pub use common::{GATEWAY_NAME_LABEL, PolicyTargetReference, WorkloadSelector};
pub use peer::{MtlsMode, MutualTls, PeerAuthentication, PeerAuthenticationSpec, PortKey};
pub use request_authn::{RequestAuthentication, RequestAuthenticationSpec};

use crate::document::{Document, ObjectMeta};
use crate::error::{ConfigError, ConfigWarning, Location, Problem, ResourceId, ResourceKind};
use crate::names;
use crate::validate;

/// The API group of the security kinds.
pub const SECURITY_GROUP: &str = "security.istio.io";

/// Deserializes `null` as the default value (Kubernetes YAML often writes `field:` or `field: null`).
pub(crate) fn nullable<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// One Istio security resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// An AuthorizationPolicy.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A PeerAuthentication.
    PeerAuthentication(PeerAuthentication),
    /// A RequestAuthentication.
    RequestAuthentication(RequestAuthentication),
}

impl Resource {
    /// `kind namespace/name`.
    pub fn id(&self) -> ResourceId {
        match self {
            Resource::AuthorizationPolicy(r) => r.id(),
            Resource::PeerAuthentication(r) => r.id(),
            Resource::RequestAuthentication(r) => r.id(),
        }
    }

    /// Where it was read.
    pub fn source(&self) -> &Location {
        match self {
            Resource::AuthorizationPolicy(r) => &r.source,
            Resource::PeerAuthentication(r) => &r.source,
            Resource::RequestAuthentication(r) => &r.source,
        }
    }

    /// Its metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::PeerAuthentication(r) => &r.metadata,
            Resource::RequestAuthentication(r) => &r.metadata,
        }
    }

    /// Prints the resource as one YAML document (`apiVersion`, `kind`, `metadata`, `spec`);
    /// reading it back gives an equal resource.
    pub fn to_yaml(&self) -> String {
        #[derive(Serialize)]
        #[serde(rename_all = "camelCase")]
        struct Out<'a, S: Serialize> {
            api_version: &'a str,
            kind: &'a str,
            metadata: &'a ObjectMeta,
            spec: &'a S,
        }
        fn print<S: Serialize>(api: &str, kind: ResourceKind, m: &ObjectMeta, spec: &S) -> String {
            let out = Out {
                api_version: api,
                kind: kind.as_str(),
                metadata: m,
                spec,
            };
            // Serializing plain structs, strings and maps to YAML cannot fail.
            serde_yaml::to_string(&out).unwrap_or_default()
        }
        match self {
            Resource::AuthorizationPolicy(r) => print(
                &r.api_version,
                ResourceKind::AuthorizationPolicy,
                &r.metadata,
                &r.spec,
            ),
            Resource::PeerAuthentication(r) => print(
                &r.api_version,
                ResourceKind::PeerAuthentication,
                &r.metadata,
                &r.spec,
            ),
            Resource::RequestAuthentication(r) => print(
                &r.api_version,
                ResourceKind::RequestAuthentication,
                &r.metadata,
                &r.spec,
            ),
        }
    }
}

/// What a [`Document`] turned out to be.
#[derive(Debug, Clone)]
pub enum Interpreted {
    /// An Istio security resource: valid, or the errors that reject it (and warnings either way).
    Security {
        /// The resource, or why it is rejected.
        result: Result<Resource, Vec<ConfigError>>,
        /// Accepted but suspicious parts.
        warnings: Vec<ConfigWarning>,
    },
    /// Any other kind, for other readers (ServiceEntry, Gateway, ...).
    Other(Document),
}

/// Reads a document as a security resource (schema, then Istio's validation), or passes it on.
pub fn interpret(doc: Document) -> Interpreted {
    let Some(kind) = ResourceKind::parse(&doc.kind).filter(|k| k.is_security()) else {
        return Interpreted::Other(doc);
    };
    if doc.group() != SECURITY_GROUP {
        return Interpreted::Other(doc);
    }
    let id = ResourceId {
        kind,
        namespace: doc.metadata.namespace.clone(),
        name: doc.metadata.name.clone(),
    };
    let mut errors = Vec::new();
    let location = doc.source.clone();
    let err = |field: &str, problem: Problem| ConfigError {
        location: location.clone(),
        resource: Some(id.clone()),
        field: field.to_owned(),
        problem,
    };
    let version = doc.api_version.rsplit_once('/').map_or("", |(_, v)| v);
    if version != "v1" && version != "v1beta1" {
        errors.push(err(
            "apiVersion",
            Problem::UnsupportedApiVersion(doc.api_version.clone()),
        ));
        return Interpreted::Security {
            result: Err(errors),
            warnings: Vec::new(),
        };
    }
    if let serde_yaml::Value::Mapping(m) = &doc.raw {
        for key in m.keys() {
            let name = key.as_str().unwrap_or("");
            if !matches!(name, "apiVersion" | "kind" | "metadata" | "spec" | "status") {
                errors.push(err(
                    name,
                    Problem::Schema(format!(
                        "unknown field `{}`, expected one of `apiVersion`, `kind`, `metadata`, `spec`, `status`",
                        if name.is_empty() { "<non-string key>" } else { name }
                    )),
                ));
            }
        }
    }
    for key in doc.unknown_metadata_keys() {
        errors.push(err(
            &format!("metadata.{key}"),
            Problem::Schema(format!("unknown field `{key}`")),
        ));
    }
    if doc.metadata.name.is_empty() {
        errors.push(err("metadata.name", Problem::Missing));
    } else if !names::is_dns1123_subdomain(&doc.metadata.name) {
        errors.push(err(
            "metadata.name",
            Problem::InvalidName(doc.metadata.name.clone()),
        ));
    }
    if !names::is_dns1123_label(&doc.metadata.namespace) {
        errors.push(err(
            "metadata.namespace",
            Problem::InvalidName(doc.metadata.namespace.clone()),
        ));
    }

    let mut doc = doc;
    // The spec is read once, by value: take it out of the document instead of copying it.
    let spec_value = match &mut doc.raw {
        serde_yaml::Value::Mapping(m) => m.remove("spec").unwrap_or(serde_yaml::Value::Null),
        _ => serde_yaml::Value::Null,
    };
    let Document {
        source,
        api_version,
        metadata,
        ..
    } = doc;
    let mut warnings = Vec::new();
    let resource = match kind {
        ResourceKind::AuthorizationPolicy => {
            spec_of::<AuthorizationPolicySpec>(spec_value, &mut errors, &err).map(|spec| {
                Resource::AuthorizationPolicy(AuthorizationPolicy {
                    source: source.clone(),
                    api_version,
                    metadata,
                    spec,
                })
            })
        }
        ResourceKind::PeerAuthentication => {
            spec_of::<PeerAuthenticationSpec>(spec_value, &mut errors, &err).map(|spec| {
                Resource::PeerAuthentication(PeerAuthentication {
                    source: source.clone(),
                    api_version,
                    metadata,
                    spec,
                })
            })
        }
        ResourceKind::RequestAuthentication => {
            spec_of::<RequestAuthenticationSpec>(spec_value, &mut errors, &err).map(|spec| {
                Resource::RequestAuthentication(RequestAuthentication {
                    source: source.clone(),
                    api_version,
                    metadata,
                    spec,
                })
            })
        }
        // `kind` is a security kind (checked above).
        _ => None,
    };
    if let Some(resource) = &resource {
        let report = validate::validate(resource);
        errors.extend(report.errors);
        warnings.extend(report.warnings);
    }
    let result = match resource {
        Some(r) if errors.is_empty() => Ok(r),
        _ => Err(errors),
    };
    Interpreted::Security { result, warnings }
}

/// Deserializes a resource `spec` (null means the default), recording a schema error with the
/// field path. Shared by the security and networking kinds.
pub(crate) fn spec_of<T: serde::de::DeserializeOwned + Default>(
    value: serde_yaml::Value,
    errors: &mut Vec<ConfigError>,
    err: &dyn Fn(&str, Problem) -> ConfigError,
) -> Option<T> {
    if value.is_null() {
        return Some(T::default());
    }
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(spec) => Some(spec),
        Err(e) => {
            let path = e.path().to_string();
            let field = if path == "." {
                "spec".to_owned()
            } else {
                format!("spec.{path}")
            };
            errors.push(err(&field, Problem::Schema(e.into_inner().to_string())));
            None
        }
    }
}
