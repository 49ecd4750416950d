//! Who is asking for a certificate.
//!
//! Two credentials, as istiod accepts them:
//! 1. `authorization: Bearer <JWT>`: a Kubernetes service-account token, verified against the
//!    configured issuer keys (audience `istio-ca`, `exp` required); the identity is
//!    `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! 2. Otherwise a mesh client certificate presented in the TLS handshake (renewal, VMs): the
//!    identity is the one in that certificate. The chain was verified at the handshake; here it
//!    is checked again for expiry and revocation, because an HTTP/2 connection outlives both.
//!
//! A presented token decides alone: an invalid token is refused even next to a valid client
//! certificate (a broken credential is not silently replaced by another).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use time::OffsetDateTime;
use tonic::metadata::MetadataMap;
use warden_identity::{CertificateAuthority, Serial, SpiffeId, TrustDomain};
use warden_policy::jwt::k8s::{SaTokenError, SaTokenVerifier};
use warden_policy::jwt::{Jwk, Jwks, SignError, SigningKey};

use crate::error::ControlError;
use crate::peer::{ClientCertificate, PeerInfo};

/// How the caller proved who it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// A service-account token.
    Token {
        /// The token's issuer (`iss`).
        issuer: String,
    },
    /// A mesh client certificate.
    ClientCertificate {
        /// Its serial.
        serial: Serial,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The identity its certificate will carry.
    pub identity: SpiffeId,
    /// The credential it proved it with.
    pub credential: Credential,
}

/// Why a caller is not authenticated. Every variant is a gRPC `UNAUTHENTICATED`, except
/// [`AuthError::RevocationUnavailable`] (`UNAVAILABLE`: the CA cannot tell, so it refuses).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Neither a token nor a client certificate.
    #[error(
        "no credential: send `authorization: Bearer <service-account token>` or present a mesh client certificate"
    )]
    NoCredential,
    /// The `authorization` metadata is not a Bearer token.
    #[error("the authorization metadata is not `Bearer <token>`")]
    NotBearer,
    /// More than one `authorization` entry.
    #[error("more than one authorization metadata entry")]
    AmbiguousAuthorization,
    /// The token was refused.
    #[error("{0}")]
    Token(#[from] SaTokenError),
    /// The token's names do not form a SPIFFE ID in this trust domain.
    #[error("the token's identity is not a valid SPIFFE ID: {0}")]
    TokenIdentity(String),
    /// The client certificate names no usable identity.
    #[error("{0}")]
    ClientCertificate(String),
    /// The client certificate expired (during a long-lived connection).
    #[error("the client certificate expired at {not_after}")]
    ClientCertificateExpired {
        /// Its `notAfter`.
        not_after: OffsetDateTime,
    },
    /// The client certificate was revoked.
    #[error("the client certificate (serial {serial}) is revoked")]
    ClientCertificateRevoked {
        /// Its serial.
        serial: Serial,
    },
    /// The revocation state could not be read: the CA fails closed.
    #[error("the revocation state cannot be read; try again later")]
    RevocationUnavailable,
    /// The `clusterid` metadata names another cluster.
    #[error("clusterid {got:?} is not this control plane's cluster {expected:?}")]
    WrongCluster {
        /// The `clusterid` sent.
        got: String,
        /// The configured cluster id.
        expected: String,
    },
}

impl AuthError {
    /// A short stable name, for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::NoCredential => "no_credential",
            Self::NotBearer | Self::AmbiguousAuthorization => "bad_authorization",
            Self::Token(SaTokenError::Expired { .. }) => "token_expired",
            Self::Token(SaTokenError::WrongAudience { .. }) => "token_audience",
            Self::Token(SaTokenError::UnknownKey { .. }) => "token_unknown_key",
            Self::Token(SaTokenError::BadSignature) => "token_bad_signature",
            Self::Token(_) | Self::TokenIdentity(_) => "token_invalid",
            Self::ClientCertificate(_) => "client_cert_unusable",
            Self::ClientCertificateExpired { .. } => "client_cert_expired",
            Self::ClientCertificateRevoked { .. } => "client_cert_revoked",
            Self::RevocationUnavailable => "revocation_unavailable",
            Self::WrongCluster { .. } => "wrong_cluster",
        }
    }
}

/// The keys tokens may be signed with: the control plane's own token-signing key and the
/// configured JWKS files.
pub fn token_keys(
    own: &SigningKey,
    own_path: &Path,
    files: &[PathBuf],
) -> Result<Jwks, ControlError> {
    let own_doc = crate::token_key::jwks_document(own)?;
    let own = Jwks::from_json(&own_doc).map_err(|e| ControlError::TokenKey {
        path: own_path.to_owned(),
        source: SignError::Key(e.to_string()),
    })?;
    let mut keys: Vec<Jwk> = own.keys().to_vec();
    for file in files {
        keys.extend_from_slice(jwks_file_keys(file)?.keys());
    }
    Ok(Jwks::from_keys(keys))
}

fn jwks_file_keys(file: &Path) -> Result<Jwks, ControlError> {
    let v = SaTokenVerifier::from_jwks_file(file)?;
    for skipped in v.jwks().skipped() {
        tracing::warn!(file = %file.display(), "token issuer key skipped: {skipped}");
    }
    Ok(v.jwks().clone())
}

/// Authenticates callers. Built once; the token keys are swapped when their files change.
#[derive(Debug)]
pub struct Authenticator {
    verifier: ArcSwap<SaTokenVerifier>,
    audience: String,
    trust_domain: TrustDomain,
    cluster_id: Option<String>,
}

impl Authenticator {
    /// An authenticator trusting `keys` for tokens with `audience`, issuing identities in
    /// `trust_domain`, and checking `clusterid` against `cluster_id` when set.
    pub fn new(
        keys: Jwks,
        audience: &str,
        trust_domain: TrustDomain,
        cluster_id: Option<String>,
    ) -> Self {
        Self {
            verifier: ArcSwap::from_pointee(
                SaTokenVerifier::new(keys).with_audience(audience.to_owned()),
            ),
            audience: audience.to_owned(),
            trust_domain,
            cluster_id,
        }
    }

    /// Replaces the trusted token keys (after a JWKS file changed).
    pub fn set_keys(&self, keys: Jwks) {
        self.verifier.store(Arc::new(
            SaTokenVerifier::new(keys).with_audience(self.audience.clone()),
        ));
    }

    /// Verifies a bare token (no `Bearer `) and gives the identity it vouches for.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<Caller, AuthError> {
        let sa = self.verifier.load().verify(token, now)?;
        let identity = SpiffeId::istio(&self.trust_domain, &sa.namespace, &sa.service_account)
            .map_err(|e| AuthError::TokenIdentity(e.to_string()))?;
        Ok(Caller {
            identity,
            credential: Credential::Token { issuer: sa.issuer },
        })
    }

    /// Authenticates a request from its metadata and its connection.
    pub fn authenticate(
        &self,
        metadata: &MetadataMap,
        peer: Option<&PeerInfo>,
        ca: &CertificateAuthority,
        now: SystemTime,
    ) -> Result<Caller, AuthError> {
        if let Some(expected) = &self.cluster_id
            && let Some(got) = metadata.get("clusterid")
        {
            let got = got.to_str().unwrap_or("(not text)");
            if got != expected {
                return Err(AuthError::WrongCluster {
                    got: got.chars().take(64).collect(),
                    expected: expected.clone(),
                });
            }
        }
        let mut auth = metadata.get_all("authorization").iter();
        if let Some(value) = auth.next() {
            if auth.next().is_some() {
                return Err(AuthError::AmbiguousAuthorization);
            }
            let token = bearer_token(value.as_encoded_bytes()).ok_or(AuthError::NotBearer)?;
            return self.verify_token(token, now);
        }
        match peer.and_then(|p| p.client_cert.as_ref()) {
            None => Err(AuthError::NoCredential),
            Some(ClientCertificate::Unusable { reason }) => {
                Err(AuthError::ClientCertificate(reason.clone()))
            }
            Some(ClientCertificate::Mesh {
                identity,
                serial,
                not_after,
            }) => {
                if *not_after <= OffsetDateTime::from(now) {
                    return Err(AuthError::ClientCertificateExpired {
                        not_after: *not_after,
                    });
                }
                match ca.is_serial_revoked(serial) {
                    Ok(false) => {}
                    Ok(true) => {
                        return Err(AuthError::ClientCertificateRevoked {
                            serial: serial.clone(),
                        });
                    }
                    Err(e) => {
                        tracing::error!("revocation state unreadable: {e}");
                        return Err(AuthError::RevocationUnavailable);
                    }
                }
                Ok(Caller {
                    identity: identity.clone(),
                    credential: Credential::ClientCertificate {
                        serial: serial.clone(),
                    },
                })
            }
        }
    }
}

/// The token of an `authorization: Bearer <token>` value (scheme case-insensitive, blanks
/// trimmed); `None` for any other form.
fn bearer_token(value: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(value).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_forms() {
        assert_eq!(bearer_token(b"Bearer abc"), Some("abc"));
        assert_eq!(bearer_token(b"bearer   abc  "), Some("abc"));
        assert_eq!(bearer_token(b"BEARER abc"), Some("abc"));
        assert_eq!(bearer_token(b"Basic abc"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"Bearerabc"), None);
        assert_eq!(bearer_token(b"abc"), None);
        assert_eq!(bearer_token(b"Bearer \xff"), None);
    }
}
