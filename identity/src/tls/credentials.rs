//! What a workload needs for mesh mTLS: its certificate chain and key ([`WorkloadCredentials`]),
//! and what it trusts ([`TrustBundle`]: the mesh roots, CRLs and the allowed trust domains).

use std::fmt;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer, TrustAnchor};
use time::OffsetDateTime;
use webpki::{CertRevocationList, OwnedCertRevocationList};

use super::error::{CredentialsError, PeerCertError, Purpose};
use super::verify::MeshVerifier;
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509::{self, Serial};

/// The mesh roots, the CRLs in force and the trust domains whose identities are accepted.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    trust_domain: TrustDomain,
    aliases: Vec<TrustDomain>,
    roots: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustBundle")
            .field("trust_domain", &self.trust_domain)
            .field("aliases", &self.aliases)
            .field("roots", &self.roots.len())
            .field("crls", &self.crls.len())
            .finish()
    }
}

impl TrustBundle {
    /// A bundle of DER roots for `trust_domain`. Each root must parse as a trust anchor.
    pub fn new(
        trust_domain: TrustDomain,
        roots: Vec<CertificateDer<'static>>,
        source_name: &str,
    ) -> Result<Self, CredentialsError> {
        if roots.is_empty() {
            return Err(CredentialsError::NoRoots {
                source_name: source_name.to_owned(),
                reason: "the bundle is empty".to_owned(),
            });
        }
        for (i, r) in roots.iter().enumerate() {
            webpki::anchor_from_trusted_cert(r).map_err(|e| CredentialsError::NoRoots {
                source_name: source_name.to_owned(),
                reason: format!("certificate #{i} is not a usable trust anchor: {e:?}"),
            })?;
        }
        Ok(Self {
            trust_domain,
            aliases: Vec::new(),
            roots,
            crls: Vec::new(),
        })
    }

    /// A bundle from PEM text (e.g. `root-cert.pem`); `source_name` names it in errors.
    pub fn from_pem(
        trust_domain: TrustDomain,
        pem: &[u8],
        source_name: &str,
    ) -> Result<Self, CredentialsError> {
        Self::new(trust_domain, pem_certs(pem, source_name)?, source_name)
    }

    /// Also accept identities of these trust domains (Istio's trust domain aliases).
    pub fn with_aliases(mut self, aliases: Vec<TrustDomain>) -> Self {
        self.aliases = aliases;
        self
    }

    /// Replaces the CRLs (DER). Each must parse; webpki checks their signatures against the
    /// issuing CA when it uses them.
    pub fn with_crls(
        mut self,
        crls: Vec<CertificateRevocationListDer<'static>>,
        source_name: &str,
    ) -> Result<Self, CredentialsError> {
        for crl in &crls {
            OwnedCertRevocationList::from_der(crl).map_err(|e| CredentialsError::BadCrl {
                source_name: source_name.to_owned(),
                reason: format!("{e:?}"),
            })?;
        }
        self.crls = crls;
        Ok(self)
    }

    /// Adds roots not already present (e.g. the root at the end of a CA response).
    pub fn merged_with_roots(mut self, extra: &[CertificateDer<'static>]) -> Self {
        for r in extra {
            if !self.roots.contains(r) && webpki::anchor_from_trusted_cert(r).is_ok() {
                self.roots.push(r.clone());
            }
        }
        self
    }

    /// Our own trust domain.
    pub fn trust_domain(&self) -> &TrustDomain {
        &self.trust_domain
    }

    /// The aliases.
    pub fn aliases(&self) -> &[TrustDomain] {
        &self.aliases
    }

    /// The roots, DER.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// The CRLs, DER.
    pub fn crls(&self) -> &[CertificateRevocationListDer<'static>] {
        &self.crls
    }

    /// Own trust domain and aliases.
    pub(crate) fn allowed_trust_domains(&self) -> Vec<TrustDomain> {
        let mut v = Vec::with_capacity(1 + self.aliases.len());
        v.push(self.trust_domain.clone());
        v.extend(self.aliases.iter().cloned());
        v
    }

    pub(crate) fn anchors(&self) -> Result<Vec<TrustAnchor<'static>>, CredentialsError> {
        self.roots
            .iter()
            .map(|r| {
                webpki::anchor_from_trusted_cert(r)
                    .map(|a| a.to_owned())
                    .map_err(|e| CredentialsError::NoRoots {
                        source_name: "trust bundle".to_owned(),
                        reason: format!("{e:?}"),
                    })
            })
            .collect()
    }

    pub(crate) fn webpki_crls(&self) -> Result<Vec<CertRevocationList<'static>>, CredentialsError> {
        self.crls
            .iter()
            .map(|c| {
                OwnedCertRevocationList::from_der(c)
                    .map(CertRevocationList::from)
                    .map_err(|e| CredentialsError::BadCrl {
                        source_name: "trust bundle".to_owned(),
                        reason: format!("{e:?}"),
                    })
            })
            .collect()
    }

    /// A digest of everything that decides whom we trust: when it changes, resumed sessions
    /// (which skip certificate checks) must not carry over.
    pub(crate) fn fingerprint(&self) -> [u8; 32] {
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for td in self.allowed_trust_domains() {
            ctx.update(td.as_str().as_bytes());
            ctx.update(b"\0");
        }
        for r in &self.roots {
            ctx.update(&(r.len() as u64).to_be_bytes());
            ctx.update(r);
        }
        for c in &self.crls {
            ctx.update(&(c.len() as u64).to_be_bytes());
            ctx.update(c);
        }
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }
}

/// A workload's certificate chain (leaf first) and private key, with the trust bundle that
/// decides whom it accepts.
pub struct WorkloadCredentials {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    identity: SpiffeId,
    serial: Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    trust: TrustBundle,
}

impl fmt::Debug for WorkloadCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkloadCredentials")
            .field("identity", &self.identity)
            .field("serial", &self.serial)
            .field("not_after", &self.not_after)
            .field("chain", &self.chain.len())
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

impl Clone for WorkloadCredentials {
    fn clone(&self) -> Self {
        Self {
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            identity: self.identity.clone(),
            serial: self.serial.clone(),
            not_before: self.not_before,
            not_after: self.not_after,
            trust: self.trust.clone(),
        }
    }
}

impl WorkloadCredentials {
    /// Checks and assembles credentials: the key must belong to the leaf, and the leaf must pass
    /// the checks a peer applies to it now (chain to the bundle, not expired, clientAuth and
    /// serverAuth, one SPIFFE ID of an allowed trust domain, not revoked). Self-signed roots at
    /// the end of `chain` are dropped (peers have them).
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust: TrustBundle,
        source_name: &str,
    ) -> Result<Self, CredentialsError> {
        Self::new_at(chain, key, trust, source_name, OffsetDateTime::now_utc())
    }

    /// [`new`](Self::new) with an explicit clock.
    pub fn new_at(
        mut chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        trust: TrustBundle,
        source_name: &str,
        now: OffsetDateTime,
    ) -> Result<Self, CredentialsError> {
        if chain.is_empty() {
            return Err(CredentialsError::EmptyChain {
                source_name: source_name.to_owned(),
            });
        }
        while chain.len() > 1 && chain.last().is_some_and(|c| trust.roots.contains(c)) {
            chain.pop();
        }
        let provider = super::crypto_provider();
        let certified =
            rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider)
                .map_err(|e| CredentialsError::Key {
                    source_name: source_name.to_owned(),
                    reason: match e {
                        rustls::Error::InconsistentKeys(_) => {
                            "the private key does not belong to the leaf certificate".to_owned()
                        }
                        other => format!("unusable private key: {other}"),
                    },
                })?;
        drop(certified);
        let verifier = MeshVerifier::new(&trust, provider.signature_verification_algorithms)?;
        let own = |reason| CredentialsError::OwnCertificate {
            source_name: source_name.to_owned(),
            reason,
        };
        let t = x509::unix_time(now);
        let identity = verifier
            .verify(&chain[0], &chain[1..], t, Purpose::ClientAuth)
            .map_err(own)?;
        verifier
            .verify(&chain[0], &chain[1..], t, Purpose::ServerAuth)
            .map_err(own)?;
        let parsed =
            x509::parse(&chain[0]).map_err(|reason| own(PeerCertError::Malformed { reason }))?;
        Ok(Self {
            serial: Serial::of(&parsed),
            not_before: x509::not_before(&parsed),
            not_after: x509::not_after(&parsed),
            chain,
            key,
            identity,
            trust,
        })
    }

    /// From PEM: the chain (leaf first; a trailing root is dropped), the key (PKCS#8, SEC1 or
    /// PKCS#1). `source_name` names the files in errors.
    pub fn from_pem(
        chain_pem: &[u8],
        key_pem: &[u8],
        trust: TrustBundle,
        source_name: &str,
    ) -> Result<Self, CredentialsError> {
        let chain = pem_certs(chain_pem, source_name)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| CredentialsError::Key {
            source_name: source_name.to_owned(),
            reason: format!("no usable private key: {}", x509::describe_pem_error(&e)),
        })?;
        Self::new(chain, key, trust, source_name)
    }

    /// The same certificate and key with another trust bundle (new roots or CRLs), checked again.
    pub fn with_trust(&self, trust: TrustBundle) -> Result<Self, CredentialsError> {
        Self::new(
            self.chain.clone(),
            self.key.clone_key(),
            trust,
            "credentials",
        )
    }

    /// Our SPIFFE ID.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// The leaf's serial.
    pub fn serial(&self) -> &Serial {
        &self.serial
    }

    /// The leaf's `notBefore`.
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The leaf's `notAfter`.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The chain sent to peers, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The private key.
    pub fn key(&self) -> &PrivateKeyDer<'static> {
        &self.key
    }

    /// The trust bundle.
    pub fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    /// Whether the leaf is still valid at `now`.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now < self.not_after
    }
}

/// Every certificate of PEM text; errors name `source_name`.
pub(crate) fn pem_certs(
    pem: &[u8],
    source_name: &str,
) -> Result<Vec<CertificateDer<'static>>, CredentialsError> {
    x509::pem_certs(pem).map_err(|e| CredentialsError::Pem {
        source_name: source_name.to_owned(),
        reason: match e {
            x509::PemCertsError::Malformed(m) => m,
            x509::PemCertsError::NoCertificate => "no CERTIFICATE block".to_owned(),
            x509::PemCertsError::BadCertificate { index, reason } => {
                format!("certificate #{index} does not parse: {reason}")
            }
        },
    })
}
