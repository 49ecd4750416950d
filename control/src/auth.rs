//! Who is asking for a certificate.
//!
//! Two credentials, as istiod accepts them:
//! 1. `authorization: Bearer <JWT>`: a Kubernetes service-account token, verified against the
//!    keys of its own issuer (audience `istio-ca`, `exp` required): an issuer configured with a
//!    JWKS file (`--token-jwks ISSUER=FILE`) only with that file's keys, any other issuer only
//!    with the control plane's own token key; the identity is
//!    `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.
//! 2. Otherwise a mesh client certificate presented in the TLS handshake (renewal, VMs): the
//!    identity is the one in that certificate. The chain was verified at the handshake; here it
//!    is checked again for expiry and revocation, because an HTTP/2 connection outlives both.
//!
//! A presented token decides alone: an invalid token is refused even next to a valid client
//! certificate (a broken credential is not silently replaced by another).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use time::OffsetDateTime;
use tonic::metadata::MetadataMap;
use warden_identity::{CertificateAuthority, Serial, SpiffeId, TrustDomain};
use warden_policy::jwt::k8s::{SaTokenError, SaTokenVerifier};
use warden_policy::jwt::{Jwk, Jwks, SignError, SigningKey};

use crate::config::TokenIssuer;
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
    /// The token claims an issuer pinned to a JWKS file but was verified with another key.
    #[error(
        "the token claims issuer {issuer:?}, whose keys come from its --token-jwks file, but is not signed by them"
    )]
    TokenIssuerPinned {
        /// The issuer claimed.
        issuer: String,
    },
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
            Self::Token(SaTokenError::UnknownKey { .. }) | Self::TokenIssuerPinned { .. } => {
                "token_unknown_key"
            }
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

/// The keys tokens may be signed with, by issuer.
#[derive(Debug, Clone)]
pub struct TokenKeys {
    /// The control plane's own token-signing key: verifies tokens of every issuer that is not
    /// pinned to a JWKS file (`warden control token` mints with it).
    pub own: Jwks,
    /// Issuer (`iss`) -> the keys of its JWKS file(s): the only keys its tokens are verified with.
    pub pinned: BTreeMap<String, Jwks>,
}

/// Loads the control plane's own token key and every pinned issuer's JWKS file.
pub fn token_keys(
    own: &SigningKey,
    own_path: &Path,
    issuers: &[TokenIssuer],
) -> Result<TokenKeys, ControlError> {
    let own_doc = crate::token_key::jwks_document(own)?;
    let own = Jwks::from_json(&own_doc).map_err(|e| ControlError::TokenKey {
        path: own_path.to_owned(),
        source: SignError::Key(e.to_string()),
    })?;
    let mut pinned: BTreeMap<String, Vec<Jwk>> = BTreeMap::new();
    for i in issuers {
        pinned
            .entry(i.issuer.clone())
            .or_default()
            .extend_from_slice(jwks_file_keys(&i.jwks)?.keys());
    }
    Ok(TokenKeys {
        own,
        pinned: pinned
            .into_iter()
            .map(|(iss, keys)| (iss, Jwks::from_keys(keys)))
            .collect(),
    })
}

fn jwks_file_keys(file: &Path) -> Result<Jwks, ControlError> {
    let v = SaTokenVerifier::from_jwks_file(file)?;
    for skipped in v.jwks().skipped() {
        tracing::warn!(file = %file.display(), "token issuer key skipped: {skipped}");
    }
    Ok(v.jwks().clone())
}

/// The verifiers built from [`TokenKeys`]: one per pinned issuer, and the own key's.
#[derive(Debug)]
struct Verifiers {
    own: SaTokenVerifier,
    pinned: HashMap<String, SaTokenVerifier>,
}

impl Verifiers {
    fn new(keys: TokenKeys, audience: &str) -> Self {
        Self {
            own: SaTokenVerifier::new(keys.own).with_audience(audience.to_owned()),
            pinned: keys
                .pinned
                .into_iter()
                .map(|(iss, jwks)| {
                    let v = SaTokenVerifier::new(jwks)
                        .with_audience(audience.to_owned())
                        .with_issuer(iss.clone());
                    (iss, v)
                })
                .collect(),
        }
    }
}

/// The `iss` claim of a compact JWS, read without verifying anything: it only chooses which
/// issuer's keys then verify the token (and the chosen verifier checks `iss` again).
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine as _;
    let payload = token.trim().split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let claims: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    claims.get("iss")?.as_str().map(str::to_owned)
}

/// Authenticates callers. Built once; the token keys are swapped when their files change.
#[derive(Debug)]
pub struct Authenticator {
    verifiers: ArcSwap<Verifiers>,
    audience: String,
    trust_domain: TrustDomain,
    cluster_id: Option<String>,
}

impl Authenticator {
    /// An authenticator trusting `keys` for tokens with `audience`, issuing identities in
    /// `trust_domain`, and checking `clusterid` against `cluster_id` when set.
    pub fn new(
        keys: TokenKeys,
        audience: &str,
        trust_domain: TrustDomain,
        cluster_id: Option<String>,
    ) -> Self {
        Self {
            verifiers: ArcSwap::from_pointee(Verifiers::new(keys, audience)),
            audience: audience.to_owned(),
            trust_domain,
            cluster_id,
        }
    }

    /// Replaces the trusted token keys (after a JWKS file changed).
    pub fn set_keys(&self, keys: TokenKeys) {
        self.verifiers
            .store(Arc::new(Verifiers::new(keys, &self.audience)));
    }

    /// Verifies a bare token (no `Bearer `) and gives the identity it vouches for.
    ///
    /// A token whose `iss` is pinned to a JWKS file is verified with that file's keys only;
    /// any other token with the control plane's own key only.
    pub fn verify_token(&self, token: &str, now: SystemTime) -> Result<Caller, AuthError> {
        let verifiers = self.verifiers.load();
        let sa = match unverified_issuer(token).and_then(|iss| verifiers.pinned.get(&iss)) {
            Some(pinned) => pinned.verify(token, now)?,
            None => {
                let sa = verifiers.own.verify(token, now)?;
                // Belt and braces: the own key never vouches for a pinned issuer.
                if verifiers.pinned.contains_key(&sa.issuer) {
                    return Err(AuthError::TokenIssuerPinned { issuer: sa.issuer });
                }
                sa
            }
        };
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
