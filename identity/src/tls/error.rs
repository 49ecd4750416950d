//! Errors of the TLS layer: why a peer's certificate was refused, why a handshake failed, why
//! credentials could not be used.

use std::fmt;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509::Serial;

/// Which end-entity purpose a certificate was checked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A client certificate (the server checks it): EKU `clientAuth`.
    ClientAuth,
    /// A server certificate (the client checks it): EKU `serverAuth`.
    ServerAuth,
}

impl fmt::Display for Purpose {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Purpose::ClientAuth => "clientAuth",
            Purpose::ServerAuth => "serverAuth",
        })
    }
}

/// Why a peer's certificate was refused. Carried inside rustls errors as
/// `rustls::Error::InvalidCertificate(CertificateError::Other(..))`; [`PeerCertError::from_rustls`]
/// gets it back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerCertError {
    /// The peer sent no certificate (the server requires one).
    #[error("peer presented no client certificate (mesh mTLS requires one)")]
    NoCertificate,
    /// The certificate (or one above it) has expired.
    #[error("peer certificate expired at {not_after} (now {now})")]
    Expired {
        /// Its `notAfter`.
        not_after: OffsetDateTime,
        /// The verification time.
        now: OffsetDateTime,
    },
    /// The certificate (or one above it) is not valid yet.
    #[error("peer certificate is not valid before {not_before} (now {now})")]
    NotYetValid {
        /// Its `notBefore`.
        not_before: OffsetDateTime,
        /// The verification time.
        now: OffsetDateTime,
    },
    /// The extended key usage does not allow the purpose.
    #[error("peer certificate's extended key usage does not include {required}")]
    WrongEku {
        /// The purpose that was required.
        required: Purpose,
    },
    /// The certificate has no URI SAN, so no SPIFFE ID.
    #[error("peer certificate has no URI SAN (no SPIFFE ID)")]
    NoSpiffeId,
    /// The certificate has more than one URI SAN (a SPIFFE SVID has exactly one).
    #[error("peer certificate has {count} URI SANs; a SPIFFE certificate has exactly one")]
    MultipleUriSans {
        /// How many.
        count: usize,
    },
    /// The URI SAN is not a valid SPIFFE ID.
    #[error("peer certificate's URI SAN {uri:?} is not a valid SPIFFE ID: {reason}")]
    InvalidSpiffeId {
        /// The URI as found.
        uri: String,
        /// Why it is invalid.
        reason: String,
    },
    /// The SPIFFE ID's trust domain is neither ours nor one of the configured aliases.
    #[error("peer {identity} is in trust domain {}, which is not allowed (allowed: {})", .identity.trust_domain_name(), join(.allowed))]
    ForeignTrustDomain {
        /// The peer's identity.
        identity: SpiffeId,
        /// The trust domains allowed.
        allowed: Vec<TrustDomain>,
    },
    /// The chain does not lead to one of the mesh roots.
    #[error("peer certificate does not chain to a trusted mesh root")]
    UnknownRoot,
    /// The certificate (or one above it) is on a CRL.
    #[error("peer certificate{} is revoked", .serial.as_ref().map(|s| format!(" (serial {s})")).unwrap_or_default())]
    Revoked {
        /// The leaf's serial, when it could be read.
        serial: Option<Serial>,
    },
    /// Secure naming: the server's identity is not one of those expected for the destination.
    #[error("peer {peer} is not one of [{}]", join(.expected))]
    IdentityMismatch {
        /// The identity the server presented.
        peer: SpiffeId,
        /// The identities expected for the destination.
        expected: Vec<SpiffeId>,
    },
    /// The certificate could not be parsed.
    #[error("peer certificate is malformed: {reason}")]
    Malformed {
        /// The parser's message.
        reason: String,
    },
    /// Another chain problem (bad signature, path length, unsupported algorithm...).
    #[error("peer certificate chain is invalid: {reason}")]
    BadChain {
        /// webpki's description.
        reason: String,
    },
}

fn join<T: fmt::Display>(items: &[T]) -> String {
    let mut out = String::new();
    for (i, t) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(", ");
        }
        out.push_str(&t.to_string());
    }
    out
}

impl PeerCertError {
    /// Wraps the error the way rustls carries verifier errors.
    pub fn into_rustls(self) -> rustls::Error {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
            Arc::new(self),
        )))
    }

    /// The peer-certificate error inside a rustls error, if it is one of ours (or rustls's own
    /// "no certificate" error).
    pub fn from_rustls(e: &rustls::Error) -> Option<PeerCertError> {
        match e {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
                other.0.downcast_ref::<PeerCertError>().cloned()
            }
            rustls::Error::NoCertificatesPresented => Some(PeerCertError::NoCertificate),
            _ => None,
        }
    }
}

/// Why a connection could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// No workload certificate is installed (not yet, or it expired): mTLS is refused.
    #[error("no valid workload certificate is installed: mesh mTLS is refused (fail closed)")]
    NoCredentials,
    /// The peer's certificate was refused.
    #[error("{0}")]
    PeerCertificate(#[from] PeerCertError),
    /// The peer refused us, with this TLS alert.
    #[error("the peer refused the handshake with alert {alert:?}")]
    PeerRefused {
        /// The alert received.
        alert: rustls::AlertDescription,
    },
    /// Another TLS failure.
    #[error("TLS handshake failed: {0}")]
    Handshake(rustls::Error),
    /// The transport failed.
    #[error("I/O error during TLS handshake: {0}")]
    Io(std::io::Error),
    /// The handshake finished but the peer's identity could not be read.
    #[error("handshake finished without a peer SPIFFE identity")]
    NoPeerIdentity,
}

impl TlsError {
    /// Classifies an error returned by a tokio-rustls handshake.
    pub fn from_io(e: std::io::Error) -> Self {
        let Some(tls) = e
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return TlsError::Io(e);
        };
        Self::from_rustls(tls.clone())
    }

    /// Classifies a rustls error.
    pub fn from_rustls(e: rustls::Error) -> Self {
        if let Some(p) = PeerCertError::from_rustls(&e) {
            return TlsError::PeerCertificate(p);
        }
        match e {
            rustls::Error::AlertReceived(alert) => TlsError::PeerRefused { alert },
            other => TlsError::Handshake(other),
        }
    }

    /// The peer-certificate reason, if that is why the connection failed.
    pub fn peer_cert_error(&self) -> Option<&PeerCertError> {
        match self {
            TlsError::PeerCertificate(p) => Some(p),
            _ => None,
        }
    }
}

/// Why workload credentials or a trust bundle could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialsError {
    /// PEM text did not hold what it should.
    #[error("{source_name}: {reason}")]
    Pem {
        /// File name or other description.
        source_name: String,
        /// What was wrong.
        reason: String,
    },
    /// The certificate chain is empty.
    #[error("{source_name}: the certificate chain is empty")]
    EmptyChain {
        /// File name or other description.
        source_name: String,
    },
    /// The trust bundle holds no usable root.
    #[error("{source_name}: no usable root certificate: {reason}")]
    NoRoots {
        /// File name or other description.
        source_name: String,
        /// What was wrong.
        reason: String,
    },
    /// A CRL does not parse.
    #[error("{source_name}: not a usable CRL: {reason}")]
    BadCrl {
        /// File name or other description.
        source_name: String,
        /// The parser's message.
        reason: String,
    },
    /// The private key does not parse or does not belong to the leaf.
    #[error("{source_name}: {reason}")]
    Key {
        /// File name or other description.
        source_name: String,
        /// What was wrong.
        reason: String,
    },
    /// Our own leaf does not pass the checks peers will apply to it.
    #[error("{source_name}: our own certificate would be refused by peers: {reason}")]
    OwnCertificate {
        /// File name or other description.
        source_name: String,
        /// The verifier's reason.
        reason: PeerCertError,
    },
    /// rustls refused to build a configuration.
    #[error("building the TLS configuration failed: {reason}")]
    Config {
        /// rustls's message.
        reason: String,
    },
}
