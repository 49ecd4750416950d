//! Certificate verifiers for mesh mTLS.
//!
//! Both sides check the peer's chain with webpki against the mesh roots (with the CRLs), its
//! validity now, its extended key usage, that it carries exactly one URI SAN that is a valid
//! SPIFFE ID, and that the ID's trust domain is allowed. There is no DNS name in mesh mTLS, so
//! the client does no hostname check; it does **secure naming** instead: the server's SPIFFE ID
//! must be one of the identities expected for that destination ([`check_secure_naming`]). One
//! `ClientConfig` is shared by every connection; the destination's identities reach the
//! verifier through the connection's server name, a hash of them registered in
//! [`ExpectedNames`], so a wrong server is refused **during** the handshake, before the client
//! sends its certificate, and the impostor never sees a completed handshake (as Envoy's SAN
//! match). The same check runs again right after the handshake (resumed sessions, names that
//! were not registered).
//!
//! What a leaf says about itself (URI SANs, validity, EKU, serial) is parsed once per distinct
//! certificate and kept in a small cache keyed by the certificate's SHA-256 ([`LeafCache`]): the
//! verifier reads it during the handshake and [`MeshVerifier::peer_identity_checked`] right
//! after it, so a handshake does not parse the peer's leaf twice, and a peer's next handshakes do
//! not parse it again (webpki still parses it for the chain check).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, TrustAnchor, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CommonState, DigitallySignedStruct, DistinguishedName, SignatureScheme};
use time::OffsetDateTime;
use webpki::{CertRevocationList, EndEntityCert, KeyUsage, RevocationOptionsBuilder};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use super::credentials::TrustBundle;
use super::error::{PeerCertError, Purpose};
use crate::spiffe::{SpiffeId, TrustDomain};
use crate::x509::Serial;

/// DER content of the `id-kp-serverAuth` OID (1.3.6.1.5.5.7.3.1).
const EKU_SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
/// DER content of the `id-kp-clientAuth` OID (1.3.6.1.5.5.7.3.2).
const EKU_CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];

/// What the peer's leaf says about itself.
#[derive(Debug)]
struct LeafFacts {
    serial: Serial,
    uris: Vec<String>,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    /// `(serverAuth, clientAuth)` from the EKU extension; `None` without one.
    eku: Option<(bool, bool)>,
}

fn leaf_facts(der: &[u8]) -> Result<LeafFacts, PeerCertError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| PeerCertError::Malformed {
        reason: e.to_string(),
    })?;
    let mut uris = Vec::with_capacity(1);
    match cert.subject_alternative_name() {
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                if let GeneralName::URI(uri) = name {
                    uris.push((*uri).to_owned());
                }
            }
        }
        Ok(None) => {}
        Err(e) => {
            return Err(PeerCertError::Malformed {
                reason: format!("subjectAltName: {e}"),
            });
        }
    }
    let eku = match cert.extended_key_usage() {
        Ok(Some(e)) => Some((e.value.server_auth, e.value.client_auth)),
        Ok(None) => None,
        Err(e) => {
            return Err(PeerCertError::Malformed {
                reason: format!("extendedKeyUsage: {e}"),
            });
        }
    };
    Ok(LeafFacts {
        eku,
        serial: Serial::of(&cert),
        uris,
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
    })
}

/// The single SPIFFE ID of a list of URI SANs.
fn single_spiffe_id(uris: &[String]) -> Result<SpiffeId, PeerCertError> {
    match uris {
        [] => Err(PeerCertError::NoSpiffeId),
        [uri] => SpiffeId::parse(uri).map_err(|e| PeerCertError::InvalidSpiffeId {
            uri: uri.clone(),
            reason: e.to_string(),
        }),
        many => Err(PeerCertError::MultipleUriSans { count: many.len() }),
    }
}

/// The SPIFFE ID in a DER certificate (exactly one URI SAN, a valid SPIFFE ID). No chain or
/// validity check: use it on certificates that were verified already.
pub fn spiffe_id_of(der: &[u8]) -> Result<SpiffeId, PeerCertError> {
    single_spiffe_id(&leaf_facts(der)?.uris)
}

/// The verified SPIFFE ID of the peer of a finished handshake (also after session resumption:
/// rustls keeps the verified chain with the session). `None` before the handshake finished or
/// when the peer presented no certificate.
pub fn peer_identity(state: &CommonState) -> Option<SpiffeId> {
    let leaf = state.peer_certificates()?.first()?;
    spiffe_id_of(leaf).ok()
}

/// Like [`peer_identity`], with the reason when there is none, and a validity check at `now`
/// (a resumed session carries the certificate verified at the full handshake, which may have
/// expired since).
pub fn peer_identity_checked(
    state: &CommonState,
    now: OffsetDateTime,
) -> Result<SpiffeId, PeerCertError> {
    let leaf = state
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or(PeerCertError::NoCertificate)?;
    check_validity_and_id(&leaf_facts(leaf)?, now)
}

fn check_validity_and_id(
    facts: &LeafFacts,
    now: OffsetDateTime,
) -> Result<SpiffeId, PeerCertError> {
    if facts.not_after < now {
        return Err(PeerCertError::Expired {
            not_after: facts.not_after,
            now,
        });
    }
    if facts.not_before > now {
        return Err(PeerCertError::NotYetValid {
            not_before: facts.not_before,
            now,
        });
    }
    single_spiffe_id(&facts.uris)
}

/// Secure naming: `peer` must be one of `expected`.
pub fn check_secure_naming(peer: &SpiffeId, expected: &[SpiffeId]) -> Result<(), PeerCertError> {
    if expected.iter().any(|e| e == peer) {
        Ok(())
    } else {
        Err(PeerCertError::IdentityMismatch {
            peer: peer.clone(),
            expected: expected.to_vec(),
        })
    }
}

fn unix_to_time(t: UnixTime) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(t.as_secs().min(i64::MAX as u64) as i64)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Parsed leaves by the SHA-256 of their DER. Bounded: emptied when full (peers are few and
/// their certificates change rarely; a miss only costs a parse).
#[derive(Debug, Default)]
pub(crate) struct LeafCache {
    entries: Mutex<HashMap<[u8; 32], Arc<LeafFacts>>>,
}

impl LeafCache {
    /// Most certificates kept.
    const CAPACITY: usize = 4096;

    fn facts(&self, der: &[u8]) -> Result<Arc<LeafFacts>, PeerCertError> {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, der);
        let mut key = [0u8; 32];
        key.copy_from_slice(digest.as_ref());
        if let Some(f) = self.lock().get(&key) {
            return Ok(f.clone());
        }
        // A certificate that does not parse is not cached: it fails every handshake anyway.
        let facts = Arc::new(leaf_facts(der)?);
        let mut map = self.lock();
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(key, facts.clone());
        Ok(facts)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Arc<LeafFacts>>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The checks shared by both sides: chain, validity, EKU, CRLs, SPIFFE ID, trust domain.
#[derive(Debug)]
pub(crate) struct MeshVerifier {
    anchors: Vec<TrustAnchor<'static>>,
    crls: Vec<CertRevocationList<'static>>,
    allowed: Vec<TrustDomain>,
    hints: Vec<DistinguishedName>,
    algorithms: WebPkiSupportedAlgorithms,
    leaves: LeafCache,
}

impl MeshVerifier {
    /// A verifier for `trust`, verifying handshake signatures with `algorithms`.
    pub(crate) fn new(
        trust: &TrustBundle,
        algorithms: WebPkiSupportedAlgorithms,
    ) -> Result<Self, super::CredentialsError> {
        let anchors = trust.anchors()?;
        let hints = anchors
            .iter()
            .map(|a| DistinguishedName::in_sequence(a.subject.as_ref()))
            .collect();
        Ok(Self {
            anchors,
            crls: trust.webpki_crls()?,
            allowed: trust.allowed_trust_domains(),
            hints,
            algorithms,
            leaves: LeafCache::default(),
        })
    }

    /// [`peer_identity_checked`] with the leaf read from the cache the handshake filled.
    pub(crate) fn peer_identity_checked(
        &self,
        state: &CommonState,
        now: OffsetDateTime,
    ) -> Result<SpiffeId, PeerCertError> {
        let leaf = state
            .peer_certificates()
            .and_then(|c| c.first())
            .ok_or(PeerCertError::NoCertificate)?;
        check_validity_and_id(&*self.leaves.facts(leaf)?, now)
    }

    /// Verifies a peer's leaf for `purpose` at `now`; returns its SPIFFE ID.
    pub(crate) fn verify(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        purpose: Purpose,
    ) -> Result<SpiffeId, PeerCertError> {
        let facts = self.leaves.facts(end_entity)?;
        let ee = EndEntityCert::try_from(end_entity).map_err(|e| PeerCertError::Malformed {
            reason: e.to_string(),
        })?;
        let crl_refs: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crl_refs).ok().map(|b| {
            b.with_depth(webpki::RevocationCheckDepth::Chain)
                // Certificates of an issuer without a CRL are not treated as revoked.
                .with_status_policy(webpki::UnknownStatusPolicy::Allow)
                // A CRL past its nextUpdate still lists what it revoked; keep using it.
                .with_expiration_policy(webpki::ExpirationPolicy::Ignore)
                .build()
        });
        // webpki applies the EKU rule to every certificate of the path, and CA certificates
        // usually have no EKU: "required if present" there; the leaf must have it (below).
        let usage = match purpose {
            Purpose::ClientAuth => KeyUsage::required_if_present(EKU_CLIENT_AUTH),
            Purpose::ServerAuth => KeyUsage::required_if_present(EKU_SERVER_AUTH),
        };
        ee.verify_for_usage(
            self.algorithms.all,
            &self.anchors,
            intermediates,
            now,
            usage,
            revocation,
            None,
        )
        .map_err(|e| classify(e, purpose, &facts))?;
        let leaf_has_purpose = match (facts.eku, purpose) {
            (Some((server, _)), Purpose::ServerAuth) => server,
            (Some((_, client)), Purpose::ClientAuth) => client,
            (None, _) => false,
        };
        if !leaf_has_purpose {
            return Err(PeerCertError::WrongEku { required: purpose });
        }
        let id = single_spiffe_id(&facts.uris)?;
        if !self
            .allowed
            .iter()
            .any(|td| td.as_str() == id.trust_domain_name())
        {
            return Err(PeerCertError::ForeignTrustDomain {
                identity: id,
                allowed: self.allowed.clone(),
            });
        }
        Ok(id)
    }

    fn verify_signature_13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_signature_12(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }
}

fn classify(e: webpki::Error, purpose: Purpose, facts: &LeafFacts) -> PeerCertError {
    use webpki::Error as W;
    match e {
        W::CertExpired { time, not_after } => PeerCertError::Expired {
            not_after: unix_to_time(not_after),
            now: unix_to_time(time),
        },
        W::CertNotValidYet { time, not_before } => PeerCertError::NotYetValid {
            not_before: unix_to_time(not_before),
            now: unix_to_time(time),
        },
        W::CertRevoked => PeerCertError::Revoked {
            serial: Some(facts.serial.clone()),
        },
        W::UnknownIssuer => PeerCertError::UnknownRoot,
        W::RequiredEkuNotFoundContext(_) => PeerCertError::WrongEku { required: purpose },
        #[allow(deprecated)]
        W::RequiredEkuNotFound => PeerCertError::WrongEku { required: purpose },
        W::BadDer | W::BadDerTime | W::TrailingData(_) => PeerCertError::Malformed {
            reason: format!("{e:?}"),
        },
        other => PeerCertError::BadChain {
            reason: format!("{other:?}"),
        },
    }
}

/// The server side: requires a mesh client certificate.
#[derive(Debug)]
pub(crate) struct MeshClientVerifier(pub(crate) Arc<MeshVerifier>);

impl ClientCertVerifier for MeshClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.0.hints
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.0
            .verify(end_entity, intermediates, now, Purpose::ClientAuth)
            .map(|_| ClientCertVerified::assertion())
            .map_err(PeerCertError::into_rustls)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_signature_12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_signature_13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

/// The identities a client connection expects, by the server name it connects with (a hash of
/// the identities: see `provider::session_key`). Bounded: emptied when full (a name missing
/// here is still checked right after the handshake).
#[derive(Debug, Default)]
pub(crate) struct ExpectedNames {
    names: Mutex<HashMap<String, Arc<[SpiffeId]>>>,
}

impl ExpectedNames {
    const CAPACITY: usize = 4096;

    /// Connections to `name` expect one of `ids`.
    pub(crate) fn register(&self, name: &str, ids: &[SpiffeId]) {
        let mut map = self.names.lock().unwrap_or_else(|p| p.into_inner());
        if map.contains_key(name) {
            return;
        }
        if map.len() >= Self::CAPACITY {
            map.clear();
        }
        map.insert(name.to_owned(), ids.into());
    }

    fn get(&self, name: &ServerName<'_>) -> Option<Arc<[SpiffeId]>> {
        let ServerName::DnsName(dns) = name else {
            return None;
        };
        let map = self.names.lock().unwrap_or_else(|p| p.into_inner());
        map.get(dns.as_ref()).cloned()
    }
}

/// The client side: verifies the server's chain and SPIFFE ID, and secure naming when the
/// server name is one of [`ExpectedNames`] (mesh certificates carry no DNS name, so the name is
/// not matched against the certificate).
#[derive(Debug)]
pub(crate) struct MeshServerVerifier(pub(crate) Arc<MeshVerifier>, pub(crate) Arc<ExpectedNames>);

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let peer = self
            .0
            .verify(end_entity, intermediates, now, Purpose::ServerAuth)
            .map_err(PeerCertError::into_rustls)?;
        if let Some(expected) = self.1.get(server_name) {
            check_secure_naming(&peer, &expected).map_err(PeerCertError::into_rustls)?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_signature_12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_signature_13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    fn leaf(ca: &crate::CertificateAuthority, sa: &str) -> (SpiffeId, Vec<u8>) {
        let id = SpiffeId::istio(&TrustDomain::default(), "ns", sa).unwrap();
        let key = crate::KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = crate::keys::csr_pem(&key, &id).unwrap();
        let cert = ca.sign_csr(&csr, &id, 3600).unwrap();
        let der = CertificateDer::from_pem_slice(cert.chain_pem[0].as_bytes()).unwrap();
        (id, der.as_ref().to_vec())
    }

    #[test]
    fn each_leaf_is_parsed_once_and_checked_at_every_use() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::CertificateAuthority::self_signed(
            dir.path().join("ca"),
            crate::CaOptions::default(),
        )
        .unwrap();
        let (id_a, a) = leaf(&ca, "a");
        let (_, b) = leaf(&ca, "b");
        let cache = LeafCache::default();
        let first = cache.facts(&a).unwrap();
        let again = cache.facts(&a).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "parsed again");
        assert_eq!(cache.len(), 1);
        assert!(!Arc::ptr_eq(&first, &cache.facts(&b).unwrap()));
        assert_eq!(cache.len(), 2);
        // Malformed input is refused and not kept.
        assert!(matches!(
            cache.facts(b"not a certificate"),
            Err(PeerCertError::Malformed { .. })
        ));
        assert_eq!(cache.len(), 2);
        // Validity is checked at each use, not at parse time.
        let now = OffsetDateTime::now_utc();
        assert_eq!(check_validity_and_id(&again, now).unwrap(), id_a);
        assert!(matches!(
            check_validity_and_id(&again, now + time::Duration::hours(2)),
            Err(PeerCertError::Expired { .. })
        ));
    }
}
