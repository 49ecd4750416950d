//! Istio security policy for Warden.
//!
//! Parses Istio's `security.istio.io` resources (AuthorizationPolicy, PeerAuthentication,
//! RequestAuthentication) with errors that name the file, the document, the resource and the
//! field; compiles the policies that apply to one workload into an evaluator once per config
//! change; evaluates requests and connections with Istio's semantics and explains the decision.
//!
//! Pure logic: no sockets, no I/O beyond reading YAML files.
#![forbid(unsafe_code)]

pub mod jwt;
pub mod jwt_rule;
