//! CSR intake: PEM decoding, PKCS#10 parsing, self-signature verification, key policy.
//!
//! Only the public key leaves this module: the CSR's subject, SANs and requested extensions are
//! never looked at, because the identity comes from the caller's authenticated credential.
//!
//! Parsing and signature verification use x509-parser directly (rcgen's
//! `CertificateSigningRequestParams::from_der` does the same, but also refuses any CSR carrying an
//! extension it does not model, which would turn away valid requests whose extensions are ignored
//! anyway).

use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::{self, PemObject};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use super::CaError;
use crate::x509::describe_pem_error;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Decodes and verifies a PEM CSR; returns its public key.
pub(crate) fn public_key_of(csr_pem: &str) -> Result<rcgen::SubjectPublicKeyInfo, CaError> {
    let der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes()).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound if csr_pem.contains("-----BEGIN ") => {
                "no PEM CERTIFICATE REQUEST block (the PEM holds something else)".to_owned()
            }
            pem::Error::NoItemsFound => {
                "not PEM: no \"-----BEGIN CERTIFICATE REQUEST-----\" line".to_owned()
            }
            other => describe_pem_error(&other),
        };
        CaError::MalformedCsr { reason }
    })?;
    let (rest, csr) =
        X509CertificationRequest::from_der(&der).map_err(|e| CaError::MalformedCsr {
            reason: format!("not a PKCS#10 certification request: {e}"),
        })?;
    if !rest.is_empty() {
        return Err(CaError::MalformedCsr {
            reason: format!("{} bytes of trailing data after the request", rest.len()),
        });
    }
    let spki = &csr.certification_request_info.subject_pki;
    match spki.parsed() {
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits < MIN_RSA_BITS {
                return Err(CaError::UnsupportedKey {
                    reason: format!("RSA key of {bits} bits; at least {MIN_RSA_BITS} required"),
                });
            }
        }
        Ok(PublicKey::EC(_)) => {}
        Ok(other) => {
            // Ed25519 and friends parse as Unknown; rcgen decides below.
            let _ = other;
        }
        Err(e) => {
            return Err(CaError::UnsupportedKey {
                reason: format!("unreadable public key: {e}"),
            });
        }
    }
    // Key policy first: a 1024-bit RSA key would otherwise read as a bad signature.
    csr.verify_signature().map_err(|e| CaError::CsrSignature {
        reason: e.to_string(),
    })?;
    rcgen::SubjectPublicKeyInfo::from_der(spki.raw).map_err(|e| CaError::UnsupportedKey {
        reason: format!(
            "key algorithm {} not supported ({e}); use ECDSA P-256/P-384 or RSA >= {MIN_RSA_BITS}",
            spki.algorithm.algorithm.to_id_string()
        ),
    })
}
