//! The Warden control plane.
//!
//! What istiod does for security: the CA gRPC service (Istio's `IstioCertificateService`), the
//! config store of Istio YAML, the registry of workloads and services, and the push of config to
//! proxies.
#![forbid(unsafe_code)]

/// Generated protocol types and gRPC stubs.
pub mod proto {
    /// `istio.v1.auth`: Istio's certificate service (`IstioCertificateService`).
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod istio_ca {
        tonic::include_proto!("istio.v1.auth");
    }
}
