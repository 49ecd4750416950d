//! Checks on CA certificates and chains, each failure mapped to its own [`CaError`] variant.

use std::path::Path;

use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;

use super::CaError;
use crate::x509::{self, LinkProblem, PemCertsError};

/// Reads every certificate of a PEM file.
pub(crate) fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let bytes = match x509::read_file(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CaError::MissingFile {
                path: path.to_owned(),
                what: "a PEM certificate file",
            });
        }
        Err(e) => return Err(CaError::io("reading", path, e)),
    };
    x509::pem_certs(&bytes).map_err(|e| match e {
        PemCertsError::Malformed(reason) => CaError::MalformedPem {
            path: path.to_owned(),
            reason,
        },
        PemCertsError::NoCertificate => CaError::NoCertificate {
            path: path.to_owned(),
        },
        PemCertsError::BadCertificate { index, reason } => CaError::BadCertificate {
            path: path.to_owned(),
            index,
            reason,
        },
    })
}

/// Reads a file as UTF-8 text.
pub(crate) fn read_text(path: &Path, what: &'static str) -> Result<String, CaError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(CaError::MissingFile {
            path: path.to_owned(),
            what,
        }),
        Err(e) => Err(CaError::io("reading", path, e)),
    }
}

/// Parses a certificate already validated by [`read_certs`].
pub(crate) fn parse<'a>(
    der: &'a CertificateDer<'_>,
    path: &Path,
    index: usize,
) -> Result<X509Certificate<'a>, CaError> {
    x509::parse(der).map_err(|reason| CaError::BadCertificate {
        path: path.to_owned(),
        index,
        reason,
    })
}

/// The certificate is valid at `now`.
pub(crate) fn check_validity(
    cert: &X509Certificate<'_>,
    path: &Path,
    now: OffsetDateTime,
) -> Result<(), CaError> {
    let nb = x509::not_before(cert);
    let na = x509::not_after(cert);
    if now < nb {
        return Err(CaError::NotYetValid {
            path: path.to_owned(),
            subject: x509::subject_text(cert),
            not_before: nb,
        });
    }
    if now > na {
        return Err(CaError::Expired {
            path: path.to_owned(),
            subject: x509::subject_text(cert),
            not_after: na,
        });
    }
    Ok(())
}

/// The certificate is a CA allowed to sign certificates, and valid at `now`.
pub(crate) fn check_ca(
    cert: &X509Certificate<'_>,
    path: &Path,
    now: OffsetDateTime,
) -> Result<(), CaError> {
    if x509::ca_constraints(cert).is_none() {
        return Err(CaError::NotACa {
            path: path.to_owned(),
            subject: x509::subject_text(cert),
        });
    }
    if !x509::may_sign_certs(cert) {
        return Err(CaError::NoCertSign {
            path: path.to_owned(),
            subject: x509::subject_text(cert),
        });
    }
    check_validity(cert, path, now)
}

/// `child` (from `child_path`) was issued by `parent` (from `parent_path`).
pub(crate) fn check_issued_by(
    child: &X509Certificate<'_>,
    child_path: &Path,
    parent: &X509Certificate<'_>,
    parent_path: &Path,
) -> Result<(), CaError> {
    match x509::check_link(child, parent) {
        Ok(()) => Ok(()),
        Err(LinkProblem::NameMismatch) => Err(CaError::ChainIssuerMismatch {
            path: parent_path.to_owned(),
            subject: x509::subject_text(child),
            issuer: x509::issuer_text(child),
            next_subject: x509::subject_text(parent),
        }),
        Err(LinkProblem::WeakAlgorithm(algorithm)) => Err(CaError::WeakSignature {
            path: child_path.to_owned(),
            subject: x509::subject_text(child),
            algorithm,
        }),
        Err(LinkProblem::BadSignature(reason)) => Err(CaError::ChainBadSignature {
            path: child_path.to_owned(),
            subject: x509::subject_text(child),
            issuer: x509::subject_text(parent),
            reason,
        }),
    }
}

/// The CA certificate at `depth` (0 = the signing CA) allows `depth` CA certificates below it.
pub(crate) fn check_path_len(
    cert: &X509Certificate<'_>,
    path: &Path,
    depth: u32,
) -> Result<(), CaError> {
    if let Some(Some(pathlen)) = x509::ca_constraints(cert)
        && pathlen < depth
    {
        return Err(CaError::PathLenExceeded {
            path: path.to_owned(),
            subject: x509::subject_text(cert),
            pathlen,
            below: depth,
        });
    }
    Ok(())
}

/// The private key belongs to the certificate.
pub(crate) fn check_key_matches(
    key: &rcgen::KeyPair,
    cert: &X509Certificate<'_>,
    key_path: &Path,
    cert_path: &Path,
) -> Result<(), CaError> {
    if key.public_key_raw() != &cert.public_key().subject_public_key.data[..] {
        return Err(CaError::KeyMismatch {
            key_path: key_path.to_owned(),
            cert_path: cert_path.to_owned(),
        });
    }
    Ok(())
}
