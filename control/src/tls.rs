//! The listener's TLS: rustls with aws-lc-rs, TLS 1.3 and 1.2, ALPN `h2` and `http/1.1`, the
//! serving certificate from [`ServingCertResolver`], and optional client certificates checked by
//! [`MeshClientVerifier`].
//!
//! Client certificates are optional at the TLS layer: callers with a service-account token have
//! none. A certificate that is presented must chain to one of the CA's roots (webpki), carry the
//! clientAuth EKU, be valid now and not be revoked; otherwise the handshake fails.
//!
//! Everything here is built once. Root changes (rotation) swap the verifier's inner webpki
//! verifier; revocation is looked up live in the CA's store, so neither rebuilds the config.
//! (`warden_identity::tls` builds the mesh's mTLS configs, where client certificates are
//! mandatory and peers are checked by SPIFFE ID; the CA's listener needs optional client
//! certificates and its own serving identity, hence this small separate setup sharing the
//! same crypto provider.)

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, UnixTime};
use warden_identity::{CertificateAuthority, Serial};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::ControlError;
use crate::serving::ServingCertResolver;

/// ALPN protocols offered: gRPC needs `h2` (grpc-go enforces it); curl may use either.
pub const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The crypto provider every Warden TLS config uses (aws-lc-rs, X25519MLKEM768 first).
pub fn provider() -> Arc<CryptoProvider> {
    warden_identity::tls::crypto_provider()
}

/// The listener's TLS configuration. One small function, so that it can move to the shared
/// `warden_identity::tls` builders without touching the server.
pub fn server_config(
    provider: Arc<CryptoProvider>,
    serving: Arc<ServingCertResolver>,
    clients: Arc<MeshClientVerifier>,
) -> Result<ServerConfig, ControlError> {
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| ControlError::Tls(e.to_string()))?
        .with_client_cert_verifier(clients)
        .with_cert_resolver(serving);
    config.alpn_protocols = ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Verifies optional client certificates against the CA's current roots and revocations.
#[derive(Debug)]
pub struct MeshClientVerifier {
    webpki: ArcSwap<Arc<dyn ClientCertVerifier>>,
    ca: Arc<CertificateAuthority>,
    provider: Arc<CryptoProvider>,
}

fn webpki_verifier(
    roots: &[CertificateDer<'static>],
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<dyn ClientCertVerifier>, ControlError> {
    let mut store = RootCertStore::empty();
    let (added, ignored) = store.add_parsable_certificates(roots.iter().cloned());
    if added == 0 {
        return Err(ControlError::Tls(format!(
            "no usable root in the CA's trust bundle ({ignored} unusable)"
        )));
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| ControlError::Tls(e.to_string()))
}

impl MeshClientVerifier {
    /// A verifier trusting the CA's current root bundle.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, ControlError> {
        let webpki = webpki_verifier(&ca.root_bundle_der(), &provider)?;
        Ok(Self {
            webpki: ArcSwap::from_pointee(webpki),
            ca,
            provider,
        })
    }

    /// Rebuilds the chain verifier from the CA's current root bundle (after a rotation).
    pub fn refresh_roots(&self) -> Result<(), ControlError> {
        let webpki = webpki_verifier(&self.ca.root_bundle_der(), &self.provider)?;
        self.webpki.store(Arc::new(webpki));
        Ok(())
    }
}

impl ClientCertVerifier for MeshClientVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // No hints: the roots change at run time, and an empty list tells clients to send
        // whatever certificate they hold.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let verified = self
            .webpki
            .load()
            .verify_client_cert(end_entity, intermediates, now)?;
        let serial = X509Certificate::from_der(end_entity)
            .map(|(_, c)| Serial::of(&c))
            .map_err(|_| rustls::Error::InvalidCertificate(CertificateError::BadEncoding))?;
        match self.ca.is_serial_revoked(&serial) {
            Ok(false) => Ok(verified),
            Ok(true) => {
                tracing::info!(%serial, "refused a revoked client certificate");
                Err(rustls::Error::InvalidCertificate(CertificateError::Revoked))
            }
            Err(e) => {
                // Fail closed: a certificate whose status cannot be told is not accepted.
                tracing::error!("revocation state unreadable: {e}");
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::UnknownRevocationStatus,
                ))
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
