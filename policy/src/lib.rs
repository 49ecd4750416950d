//! Istio security policy for Warden.
//!
//! Parses Istio's `security.istio.io` resources (AuthorizationPolicy, PeerAuthentication,
//! RequestAuthentication) with errors that name the file, the document, the resource and the
//! field; compiles the policies that apply to one workload into an evaluator once per config
//! change; evaluates requests and connections with Istio's semantics and explains the decision.
//!
//! Pure logic: no sockets, no I/O beyond reading YAML files.
//!
//! ```
//! use std::collections::BTreeMap;
//! use warden_policy::{load, PolicySet, PolicySetOptions, WorkloadRef, Request, ConnectionContext, NoExtAuthz};
//!
//! let yaml = r#"
//! apiVersion: security.istio.io/v1
//! kind: AuthorizationPolicy
//! metadata: {name: deny-plaintext, namespace: shop}
//! spec:
//!   action: DENY
//!   rules:
//!   - from:
//!     - source: {notPrincipals: ["*"]}
//! "#;
//! let report = load::LoadReport::from_files(vec![load::parse_file("inline.yaml".as_ref(), yaml)]);
//! assert!(!report.has_errors());
//! let set = PolicySet::new(report.resources(), &PolicySetOptions::default());
//! let labels = BTreeMap::new();
//! let compiled = set.compile_for(&WorkloadRef { namespace: "shop", labels: &labels });
//! let conn = ConnectionContext::new("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap(), 8080);
//! let decision = compiled.authz.evaluate(&Request::tcp(conn), &NoExtAuthz);
//! assert!(!decision.is_allowed());
//! assert_eq!(decision.to_string(),
//!     r#"denied by shop/deny-plaintext rule 0: source principal not in notPrincipals ["*"]"#);
//! ```
#![forbid(unsafe_code)]

mod attribute;
pub mod authz;
pub mod config;
pub mod document;
pub mod duration;
pub mod error;
pub mod jwt;
pub mod jwt_rule;
pub mod load;
mod matcher;
pub mod mesh;
pub mod names;
pub mod networking;
pub mod path;
pub mod peer_authn;
pub mod registry;
pub mod request;
pub mod resource;
pub mod scope;
mod validate;

pub use authz::{
    AsyncExtAuthz, Authorizer, CompiledPolicy, CustomMatch, Decision, ExtAuthz, ExtAuthzDenial,
    ExtAuthzError, ExtAuthzVerdict, NoExtAuthz, PolicyTrace, Protocol, Reason, RuleMatch,
    RuleOutcome, Verdict,
};
pub use document::{Document, ObjectMeta};
pub use error::{Advice, ConfigError, ConfigWarning, Location, Problem, ResourceId, ResourceKind};
pub use load::{
    FileReport, LastGoodConfig, LoadError, LoadReport, load_path, parse_file, yaml_files,
};
pub use path::{PathError, PathNormalization, normalize_path};
pub use peer_authn::{EffectivePeerAuthentication, ModeSource, MtlsPolicy};
pub use request::{ConnectionContext, HttpRequest, Request, RequestAuth};
pub use resource::{Action, Resource};
pub use scope::{
    AppliedJwtRule, CompiledPolicies, DEFAULT_ROOT_NAMESPACE, PolicySet, PolicySetOptions,
    WorkloadRef, applies_to,
};
