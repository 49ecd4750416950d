//! A loaded signing CA: its key, its certificate used as-is, and the chain above it.

use std::path::{Path, PathBuf};

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::CaError;
use crate::spiffe::SpiffeId;
use crate::x509::{self, Serial};

/// A CA that signs: the certificate (not re-signed: rcgen only reads its name, key identifier
/// and key usages), its key, and the certificates from it up to the root.
pub(crate) struct Signer {
    pub(crate) issuer: Issuer<'static, KeyPair>,
    /// `[ca-cert, intermediates..., root]`; for a self-signed root just `[root]`.
    pub(crate) chain_der: Vec<CertificateDer<'static>>,
    /// The same chain, one PEM certificate per entry.
    pub(crate) chain_pem: Vec<String>,
    /// The earliest `notAfter` along the chain: no leaf outlives it.
    pub(crate) chain_not_after: OffsetDateTime,
    pub(crate) subject: String,
    pub(crate) serial: Serial,
    pub(crate) may_sign_crls: bool,
    /// The CA certificate's subject key identifier (the CRL's authority key identifier).
    pub(crate) key_id: Vec<u8>,
    pub(crate) source: PathBuf,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("subject", &self.subject)
            .field("serial", &self.serial)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// Builds a signer. `chain_der[0]` is the CA certificate matching `key`; the caller has
    /// checked the chain.
    pub(crate) fn new(
        chain_der: Vec<CertificateDer<'static>>,
        key: KeyPair,
        source: &Path,
    ) -> Result<Self, CaError> {
        let ca_der = chain_der.first().cloned().ok_or(CaError::NoCertificate {
            path: source.to_owned(),
        })?;
        let ca = super::checks::parse(&ca_der, source, 0)?;
        let subject = x509::subject_text(&ca);
        let mut chain_not_after = x509::not_after(&ca);
        for der in &chain_der[1..] {
            if let Ok(c) = x509::parse(der) {
                chain_not_after = chain_not_after.min(x509::not_after(&c));
            }
        }
        let key_id = match x509::subject_key_id(&ca) {
            Some(k) => k,
            None => rcgen::CertificateParams::default().key_identifier(&key),
        };
        let issuer =
            Issuer::from_ca_cert_der(&ca_der, key).map_err(|e| CaError::UnsupportedCaName {
                path: source.to_owned(),
                subject: subject.clone(),
                reason: e.to_string(),
            })?;
        let chain_pem = chain_der.iter().map(|d| x509::cert_to_pem(d)).collect();
        Ok(Self {
            serial: Serial::of(&ca),
            may_sign_crls: x509::may_sign_crls(&ca),
            subject,
            chain_not_after,
            key_id,
            source: source.to_owned(),
            issuer,
            chain_der,
            chain_pem,
        })
    }

    /// The signing CA certificate.
    pub(crate) fn ca_der(&self) -> &CertificateDer<'static> {
        &self.chain_der[0]
    }

    /// Signs a workload leaf for `public_key`.
    pub(crate) fn sign_leaf(
        &self,
        public_key: &impl PublicKeyData,
        identity: &SpiffeId,
        extra_sans: &[SanType],
        serial: &Serial,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<CertificateDer<'static>, CaError> {
        let mut params = leaf_params(identity, serial, not_before, not_after)?;
        params.subject_alt_names.extend_from_slice(extra_sans);
        params
            .signed_by(public_key, &self.issuer)
            .map(|c| c.der().clone())
            .map_err(CaError::sign)
    }

    /// The end-to-end self-check: a probe leaf issued now must carry the CA's exact subject as
    /// its issuer name and verify with webpki against `roots`.
    pub(crate) fn self_check(
        &self,
        roots: &[CertificateDer<'static>],
        probe_identity: &SpiffeId,
        now: OffsetDateTime,
    ) -> Result<(), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(CaError::sign)?;
        let not_after = (now + time::Duration::minutes(5)).min(self.chain_not_after);
        let leaf = self.sign_leaf(
            &key,
            probe_identity,
            &[],
            &Serial::random(),
            now - time::Duration::minutes(1),
            not_after,
        )?;
        let parsed = x509::parse(&leaf).map_err(|reason| CaError::SelfCheck { reason })?;
        let ca = x509::parse(self.ca_der()).map_err(|reason| CaError::SelfCheck { reason })?;
        if parsed.issuer().as_raw() != ca.subject().as_raw() {
            return Err(CaError::UnsupportedCaName {
                path: self.source.clone(),
                subject: self.subject.clone(),
                reason: "the name cannot be re-encoded byte for byte (duplicate or multi-valued \
                         attributes?)"
                    .to_owned(),
            });
        }
        x509::verify_leaf(&leaf, &self.chain_der, roots, now, true)
            .map_err(|reason| CaError::SelfCheck { reason })
    }
}

/// The parameters of a workload certificate: empty subject, the identity as the only (critical)
/// URI SAN, digitalSignature + keyEncipherment, serverAuth + clientAuth, CA:FALSE, SKI and AKI.
pub(crate) fn leaf_params(
    identity: &SpiffeId,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<CertificateParams, CaError> {
    let mut p = CertificateParams::default();
    // An empty subject makes rcgen mark the SAN extension critical (RFC 5280 4.2.1.6).
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = vec![SanType::URI(
        identity.as_str().try_into().map_err(CaError::sign)?,
    )];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    p.not_before = not_before;
    p.not_after = not_after;
    Ok(p)
}

/// Parameters of a CA certificate (root or intermediate) with the given subject.
pub(crate) fn ca_params(
    subject: DistinguishedName,
    serial: &Serial,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    path_len: Option<u8>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = subject;
    p.is_ca = match path_len {
        Some(n) => IsCa::Ca(rcgen::BasicConstraints::Constrained(n)),
        None => IsCa::Ca(rcgen::BasicConstraints::Unconstrained),
    };
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.serial_number = Some(SerialNumber::from_slice(serial.as_bytes()));
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

/// Rebuilds an rcgen name from a parsed certificate name (single-valued RDNs only).
pub(crate) fn dn_from_x509(
    name: &x509_parser::x509::X509Name<'_>,
) -> Result<DistinguishedName, String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err("multi-valued or empty RDN".to_owned());
        };
        let oid: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or("attribute OID too large")?
            .collect();
        let ty = rcgen::DnType::from_oid(&oid);
        if dn.get(&ty).is_some() {
            return Err("repeated attribute".to_owned());
        }
        let data = attr.attr_value().data;
        let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
        let value = match attr.attr_value().header.tag() {
            Tag::PrintableString => rcgen::DnValue::PrintableString(
                text.try_into().map_err(|e: rcgen::Error| e.to_string())?,
            ),
            Tag::Ia5String => {
                rcgen::DnValue::Ia5String(text.try_into().map_err(|e: rcgen::Error| e.to_string())?)
            }
            Tag::Utf8String => rcgen::DnValue::Utf8String(text.to_owned()),
            other => return Err(format!("unsupported string type {other}")),
        };
        dn.push(ty, value);
    }
    Ok(dn)
}
