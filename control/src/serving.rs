//! The control plane's own serving certificate: issued by its CA at start for
//! `spiffe://<td>/ns/istio-system/sa/istiod` plus DNS and IP SANs, renewed at half its life and
//! whenever the CA's signing certificate changes (rotation, plugin reload). Agents verify it
//! against the root bundle.
//!
//! [`ServingCertResolver`] hands the current certificate to every TLS handshake; a renewal
//! swaps it atomically, so the TLS configuration itself is built once.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;
use warden_identity::ca::ExtraSans;
use warden_identity::{CertificateAuthority, KeyAlgorithm, Serial, SpiffeId, keys};

use crate::error::ControlError;

/// A serving certificate with its key, ready for rustls.
#[derive(Debug)]
pub struct ServingCert {
    /// Chain (leaf, then intermediates; not the root) and key.
    pub certified: Arc<CertifiedKey>,
    /// The leaf's serial.
    pub serial: Serial,
    /// The leaf's `notBefore`.
    pub not_before: OffsetDateTime,
    /// The leaf's `notAfter`.
    pub not_after: OffsetDateTime,
    /// The signing CA certificate (PEM) it was issued under.
    pub issuer_pem: String,
}

impl ServingCert {
    /// Issues a serving certificate from `ca`: a fresh P-256 key (kept in memory only), the
    /// identity first, then the DNS and IP SANs.
    pub fn issue(
        ca: &CertificateAuthority,
        provider: &CryptoProvider,
        identity: &SpiffeId,
        dns_names: &[String],
        ip_sans: &[IpAddr],
        ttl: Duration,
    ) -> Result<Self, ControlError> {
        let fail = |e: &dyn std::fmt::Display| ControlError::ServingCert(e.to_string());
        let key = KeyAlgorithm::EcdsaP256.generate().map_err(|e| fail(&e))?;
        let csr = keys::csr_pem(&key, identity).map_err(|e| fail(&e))?;
        let extra = ExtraSans {
            dns: dns_names.to_vec(),
            ips: ip_sans.to_vec(),
        };
        let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX);
        let issued = ca
            .sign_csr_with_extra_sans(&csr, identity, ttl_secs, &extra)
            .map_err(|e| fail(&e))?;
        // Present the leaf and any intermediates; clients hold the root.
        let present = if issued.chain_pem.len() > 1 {
            &issued.chain_pem[..issued.chain_pem.len() - 1]
        } else {
            &issued.chain_pem[..]
        };
        let chain = present
            .iter()
            .map(|pem| CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| fail(&e)))
            .collect::<Result<Vec<_>, _>>()?;
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let certified = CertifiedKey::from_der(chain, key_der, provider).map_err(|e| fail(&e))?;
        Ok(Self {
            certified: Arc::new(certified),
            serial: issued.serial,
            not_before: issued.not_before,
            not_after: issued.not_after,
            issuer_pem: issued.chain_pem.get(1).cloned().unwrap_or_default(),
        })
    }

    /// Whether it should be replaced at `now`: half its life has passed, or the CA now signs
    /// with another certificate.
    pub fn needs_renewal(&self, ca: &CertificateAuthority, now: OffsetDateTime) -> bool {
        let half = self.not_before + (self.not_after - self.not_before) / 2;
        now >= half
            || ca
                .signing_chain_pem()
                .first()
                .is_none_or(|c| *c != self.issuer_pem)
    }
}

/// Gives every handshake the current serving certificate.
#[derive(Debug)]
pub struct ServingCertResolver {
    current: ArcSwap<ServingCert>,
}

impl ServingCertResolver {
    /// A resolver serving `cert`.
    pub fn new(cert: ServingCert) -> Self {
        Self {
            current: ArcSwap::from_pointee(cert),
        }
    }

    /// The certificate served now.
    pub fn current(&self) -> Arc<ServingCert> {
        self.current.load_full()
    }

    /// Serves `cert` from the next handshake on.
    pub fn replace(&self, cert: ServingCert) {
        self.current.store(Arc::new(cert));
    }
}

impl ResolvesServerCert for ServingCertResolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}
