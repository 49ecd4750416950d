//! CRLs fetched from the CA: parsed (PEM or DER), and their signatures checked against the
//! certificate that issued them (a mesh root, or an intermediate of our own verified chain)
//! before they are used.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

/// Parses one or more CRLs (PEM `X509 CRL` blocks, or one DER CRL) and verifies each one's
/// signature against its issuer among `issuers`.
pub(crate) fn parse_and_verify(
    bytes: &[u8],
    issuers: &[CertificateDer<'_>],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let ders: Vec<CertificateRevocationListDer<'static>> = if bytes.starts_with(b"-----") {
        CertificateRevocationListDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("malformed PEM: {e}"))?
    } else {
        vec![CertificateRevocationListDer::from(bytes.to_vec())]
    };
    if ders.is_empty() {
        return Err("no X509 CRL in the response".to_owned());
    }
    let parsed_issuers: Vec<_> = issuers
        .iter()
        .filter_map(|d| crate::x509::parse(d).ok())
        .collect();
    for (i, der) in ders.iter().enumerate() {
        let (_, crl) = CertificateRevocationList::from_der(der)
            .map_err(|e| format!("CRL #{i} does not parse: {e}"))?;
        let issuer = parsed_issuers
            .iter()
            .find(|c| c.subject().as_raw() == crl.issuer().as_raw())
            .ok_or_else(|| {
                format!(
                    "CRL #{i} is issued by {}, which is not a mesh root nor in our chain",
                    crl.issuer()
                )
            })?;
        crl.verify_signature(issuer.public_key()).map_err(|e| {
            format!(
                "CRL #{i} signature does not verify with {}: {e}",
                crl.issuer()
            )
        })?;
    }
    Ok(ders)
}
