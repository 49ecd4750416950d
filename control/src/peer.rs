//! What the TLS layer learned about a connection, handed to every request on it.
//!
//! The client certificate chain was verified during the handshake (chain to the CA's roots,
//! clientAuth EKU, not revoked: [`crate::tls`]); here its leaf is read once per connection for
//! the identity, serial and expiry that request-time checks need.

use std::net::SocketAddr;

use time::OffsetDateTime;
use warden_identity::{Serial, SpiffeId};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// The connection a request arrived on.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The client's address.
    pub remote_addr: SocketAddr,
    /// The client certificate, when the client presented one (already verified).
    pub client_cert: Option<ClientCertificate>,
}

/// A verified client certificate, as far as the CA cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCertificate {
    /// A mesh certificate with exactly one SPIFFE URI SAN.
    Mesh {
        /// The SPIFFE ID of its URI SAN.
        identity: SpiffeId,
        /// Its serial.
        serial: Serial,
        /// Its `notAfter`.
        not_after: OffsetDateTime,
    },
    /// A certificate that chains to the CA but names no usable identity.
    Unusable {
        /// Why it cannot identify the caller.
        reason: String,
    },
}

impl ClientCertificate {
    /// Reads the identity, serial and expiry of a DER leaf certificate.
    pub fn from_der(der: &[u8]) -> Self {
        let unusable = |reason: String| Self::Unusable { reason };
        let cert = match X509Certificate::from_der(der) {
            Ok((_, cert)) => cert,
            Err(e) => return unusable(format!("client certificate does not parse: {e}")),
        };
        let sans = match cert.subject_alternative_name() {
            Ok(Some(ext)) => &ext.value.general_names,
            Ok(None) => return unusable("client certificate has no subjectAltName".to_owned()),
            Err(e) => return unusable(format!("client certificate subjectAltName: {e}")),
        };
        let uris: Vec<&str> = sans
            .iter()
            .filter_map(|n| match n {
                GeneralName::URI(u) => Some(*u),
                _ => None,
            })
            .collect();
        let [uri] = uris.as_slice() else {
            return unusable(format!(
                "client certificate has {} URI SANs; a mesh certificate has exactly one SPIFFE ID",
                uris.len()
            ));
        };
        let identity = match SpiffeId::parse(uri) {
            Ok(id) => id,
            Err(e) => return unusable(format!("client certificate URI SAN {uri:?}: {e}")),
        };
        Self::Mesh {
            identity,
            serial: Serial::of(&cert),
            not_after: cert.validity().not_after.to_datetime(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, TrustDomain, keys};

    #[test]
    fn reads_the_identity_of_a_mesh_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
        let id = SpiffeId::istio(&TrustDomain::default(), "ns1", "sa1").unwrap();
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let issued = ca
            .sign_csr(&keys::csr_pem(&key, &id).unwrap(), &id, 3600)
            .unwrap();
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(issued.leaf_pem().as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        assert_eq!(
            ClientCertificate::from_der(&der),
            ClientCertificate::Mesh {
                identity: id,
                serial: issued.serial.clone(),
                not_after: issued.not_after,
            }
        );
        // The root has no SAN at all.
        let root = rustls_pki_types::pem::PemObject::from_pem_slice(issued.root_pem().as_bytes())
            .map(|c: rustls_pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        assert!(matches!(
            ClientCertificate::from_der(&root),
            ClientCertificate::Unusable { reason } if reason.contains("no subjectAltName")
        ));
        assert!(matches!(
            ClientCertificate::from_der(b"\x30\x00"),
            ClientCertificate::Unusable { .. }
        ));
    }
}
