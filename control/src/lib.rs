//! The Warden control plane.
//!
//! What istiod does for security: the CA gRPC service (Istio's `IstioCertificateService`), the
//! config store of Istio YAML, the registry of workloads and services, and the push of config to
//! proxies.
#![forbid(unsafe_code)]

pub mod push;
pub mod status;
pub mod store;
