//! Mesh identity for Warden.
//!
//! Who a workload is and who vouches for it: SPIFFE IDs, trust bundles, the mesh certificate
//! authority (self-signed root or a plugin intermediate), the embedded agent that obtains and
//! rotates workload certificates, the rustls configurations and the secure-naming verifiers that
//! every Warden connection uses, and revocation.
//!
//! This crate knows nothing of sockets beyond what TLS needs, and nothing of policy.
#![forbid(unsafe_code)]

pub mod agent;
pub mod ca;
pub mod config_client;
mod fsutil;
pub mod keys;
pub mod revocation;
pub mod spiffe;
pub mod tls;
pub mod tools;
pub mod x509;

pub use ca::{CaError, CaOptions, CertificateAuthority, IssuedCertificate};
pub use keys::KeyAlgorithm;
pub use spiffe::{SpiffeId, SpiffeIdError, TrustDomain};
pub use x509::Serial;

/// Generated protocol types and gRPC stubs (compiled from `identity/proto` by `build.rs`).
pub mod proto {
    /// `istio.v1.auth`: Istio's certificate service (`IstioCertificateService`), client and server.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod istio_ca {
        tonic::include_proto!("istio.v1.auth");
    }

    /// `warden.config.v1`: Warden's configuration push (`ConfigDiscovery`), client and server.
    #[allow(missing_docs, clippy::all, clippy::pedantic)]
    pub mod config {
        tonic::include_proto!("warden.config.v1");
    }
}
