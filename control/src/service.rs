//! Istio's `istio.v1.auth.IstioCertificateService/CreateCertificate`, served by the mesh CA.
//!
//! A request is authenticated ([`crate::auth`]), then its CSR is signed for the caller's
//! identity with `sign_csr(csr, identity, validity_duration)`: only the CSR's public key is
//! used. Failures and their gRPC status, nothing signed in any of them:
//!
//! | status | cause |
//! |---|---|
//! | `UNAUTHENTICATED` | no credential; token malformed, expired, wrong audience, unknown key, bad signature; client certificate unusable, expired or revoked; wrong `clusterid` |
//! | `INVALID_ARGUMENT` | CSR not PEM / not PKCS#10, bad CSR signature, unsupported key, TTL above the maximum |
//! | `PERMISSION_DENIED` | revoked identity; identity outside the CA's trust domains |
//! | `UNAVAILABLE` | the CA's certificate expired, or its state files cannot be read or written |
//! | `INTERNAL` | anything else (details in the control plane's log only) |
//!
//! Token verification and signing are CPU work (two ECDSA verifications and one signature,
//! about 0.15 ms): they run on tokio's blocking pool, at most twice the core count at once, so
//! the reactor threads keep serving I/O. (Measured with `cargo bench --bench ca_grpc`: running
//! them inline on the reactor threads gave less than half the throughput.)

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::Semaphore;
use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use warden_identity::proto::istio_ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use warden_identity::proto::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};
use warden_identity::{CaError, CertificateAuthority, IssuedCertificate};

use crate::auth::{AuthError, Authenticator, Caller, Credential};
use crate::peer::PeerInfo;

/// Largest request accepted (a CSR is a few KiB at most).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The CA service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct CaService {
    ca: Arc<CertificateAuthority>,
    auth: Arc<Authenticator>,
    /// Bounds the signings in flight on the blocking pool (twice the cores): a flood of
    /// requests waits as cheap futures instead of growing the pool to hundreds of threads.
    signers: Arc<Semaphore>,
}

/// Why a request got no certificate.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    /// The caller is not authenticated.
    #[error("authentication failed: {0}")]
    Auth(#[from] AuthError),
    /// The CA refused or failed.
    #[error(transparent)]
    Ca(#[from] CaError),
}

impl IssueError {
    /// The gRPC status a client gets.
    pub fn to_status(&self) -> Status {
        match self {
            Self::Auth(AuthError::RevocationUnavailable) => Status::unavailable(self.to_string()),
            Self::Auth(_) => Status::unauthenticated(self.to_string()),
            Self::Ca(e) => match e {
                CaError::MalformedCsr { .. }
                | CaError::CsrSignature { .. }
                | CaError::UnsupportedKey { .. }
                | CaError::TtlTooLong { .. } => Status::invalid_argument(e.to_string()),
                CaError::IdentityRevoked { .. } | CaError::ForeignTrustDomain { .. } => {
                    Status::permission_denied(e.to_string())
                }
                CaError::Expired { .. } | CaError::Io { .. } | CaError::CorruptState { .. } => {
                    Status::unavailable(
                        "the CA cannot issue certificates now; see the control plane log",
                    )
                }
                _ => Status::internal(
                    "the CA failed to issue the certificate; see the control plane log",
                ),
            },
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Auth(e) => e.kind(),
            Self::Ca(
                CaError::MalformedCsr { .. }
                | CaError::CsrSignature { .. }
                | CaError::UnsupportedKey { .. },
            ) => "bad_csr",
            Self::Ca(CaError::TtlTooLong { .. }) => "ttl_too_long",
            Self::Ca(CaError::IdentityRevoked { .. }) => "identity_revoked",
            Self::Ca(CaError::ForeignTrustDomain { .. }) => "foreign_trust_domain",
            Self::Ca(_) => "ca_failure",
        }
    }
}

impl CaService {
    /// A service signing with `ca` for callers authenticated by `auth`.
    pub fn new(ca: Arc<CertificateAuthority>, auth: Arc<Authenticator>) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            ca,
            auth,
            signers: Arc::new(Semaphore::new(2 * cores)),
        }
    }

    /// The tonic server for this service, with the request size limit applied.
    pub fn into_server(self) -> IstioCertificateServiceServer<Self> {
        IstioCertificateServiceServer::new(self).max_decoding_message_size(MAX_REQUEST_BYTES)
    }

    /// Authenticates and signs, synchronously (CPU work: call it off the reactor).
    pub fn issue(
        &self,
        metadata: &MetadataMap,
        peer: Option<&PeerInfo>,
        request: &IstioCertificateRequest,
        now: SystemTime,
    ) -> Result<(Caller, IssuedCertificate), IssueError> {
        let caller = self.auth.authenticate(metadata, peer, &self.ca, now)?;
        let issued = self
            .ca
            .sign_csr(&request.csr, &caller.identity, request.validity_duration)?;
        Ok((caller, issued))
    }
}

#[tonic::async_trait]
impl IstioCertificateService for CaService {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let peer = request.extensions().get::<Arc<PeerInfo>>().cloned();
        let (metadata, _, message) = request.into_parts();
        let this = self.clone();
        let remote = peer.as_ref().map(|p| p.remote_addr);
        let permit = self
            .signers
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Status::unavailable("the CA is shutting down"))?;
        let outcome = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            this.issue(&metadata, peer.as_deref(), &message, SystemTime::now())
        })
        .await
        .map_err(|e| {
            tracing::error!("certificate signing task failed: {e}");
            Status::internal("the CA failed to issue the certificate; see the control plane log")
        })?;
        match outcome {
            Ok((caller, issued)) => {
                let via = match &caller.credential {
                    Credential::Token { .. } => "token",
                    Credential::ClientCertificate { .. } => "client-certificate",
                };
                tracing::info!(
                    identity = %issued.identity,
                    serial = %issued.serial,
                    not_after = %warden_identity::tools::fmt_time(issued.not_after),
                    via,
                    peer = ?remote,
                    "issued a certificate"
                );
                Ok(Response::new(IstioCertificateResponse {
                    cert_chain: issued.chain_pem,
                }))
            }
            Err(e) => {
                let status = e.to_status();
                match &e {
                    IssueError::Ca(ca)
                        if status.code() != tonic::Code::InvalidArgument
                            && status.code() != tonic::Code::PermissionDenied =>
                    {
                        tracing::error!(peer = ?remote, "certificate request failed: {ca}");
                    }
                    _ => tracing::info!(
                        peer = ?remote,
                        reason = e.kind(),
                        "certificate request refused: {e}"
                    ),
                }
                Err(status)
            }
        }
    }
}
