//! X.509 helpers shared by the CA, `warden certs` and the agent: serial numbers, PEM reading and
//! writing, and the checks a certificate chain must pass.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, UnixTime};
use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::oid_registry;
use x509_parser::prelude::FromDer;

/// A certificate serial number: a positive big-endian integer without leading zero bytes.
///
/// Shown and parsed as lowercase hexadecimal without separators (parsing also accepts upper case,
/// a `0x` prefix and `:` separators, as `openssl` prints them).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Serial(Box<[u8]>);

/// A string that is not a serial number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid serial number {input:?}: expected hexadecimal digits (optionally with ':' separators)"
)]
pub struct SerialParseError {
    /// The input as given.
    pub input: String,
}

impl Serial {
    /// From big-endian bytes as found in a certificate (leading zero bytes are dropped).
    pub fn from_be_bytes(bytes: &[u8]) -> Self {
        let first = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
        let trimmed = &bytes[first..];
        if trimmed.is_empty() {
            Self(Box::new([0]))
        } else {
            Self(trimmed.into())
        }
    }

    /// A fresh random serial of 16 bytes (126 random bits, always positive and exactly 16 bytes
    /// long once encoded).
    pub fn random() -> Self {
        let mut bytes = [0u8; 16];
        // aws-lc's RNG failing means the process cannot do any cryptography; falling back to the
        // time would make serials guessable, so use the OS RNG through `rand` instead.
        if aws_lc_rs::rand::fill(&mut bytes).is_err() {
            rand::fill(&mut bytes);
        }
        bytes[0] = (bytes[0] & 0x7f) | 0x40;
        Self(bytes.into())
    }

    /// The big-endian bytes (no leading zeros).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The serial of a parsed certificate.
    pub fn of(cert: &X509Certificate<'_>) -> Self {
        Self::from_be_bytes(cert.raw_serial())
    }
}

impl fmt::Display for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0.iter() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Serial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Serial({self})")
    }
}

impl FromStr for Serial {
    type Err = SerialParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || SerialParseError {
            input: s.to_owned(),
        };
        let t = s.trim();
        let t = t
            .strip_prefix("0x")
            .or_else(|| t.strip_prefix("0X"))
            .unwrap_or(t);
        let digits: String = t.chars().filter(|&c| c != ':').collect();
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(err());
        }
        let padded = if digits.len() % 2 == 1 {
            format!("0{digits}")
        } else {
            digits
        };
        let bytes = (0..padded.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&padded[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| err())?;
        Ok(Self::from_be_bytes(&bytes))
    }
}

impl serde::Serialize for Serial {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Serial {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Describes a PEM parsing error in words (the library's own messages print raw byte lists).
pub(crate) fn describe_pem_error(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { end_marker } => format!(
            "a PEM section is missing its end line {:?}",
            String::from_utf8_lossy(end_marker)
        ),
        pem::Error::IllegalSectionStart { line } => format!(
            "malformed PEM begin line {:?}",
            String::from_utf8_lossy(line)
        ),
        pem::Error::Base64Decode(m) => format!("PEM body is not valid base64: {m}"),
        pem::Error::NoItemsFound => "no PEM block of the expected type".to_owned(),
        other => other.to_string(),
    }
}

/// Why PEM text yielded no certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PemCertsError {
    /// The text is not well-formed PEM.
    Malformed(String),
    /// Well-formed, but without a `CERTIFICATE` block.
    NoCertificate,
    /// A certificate block does not parse as X.509.
    BadCertificate {
        /// Zero-based position in the file.
        index: usize,
        /// The parser's message.
        reason: String,
    },
}

/// Reads every `CERTIFICATE` block of PEM text, in order, and checks each parses as X.509.
pub(crate) fn pem_certs(text: &[u8]) -> Result<Vec<CertificateDer<'static>>, PemCertsError> {
    let mut out = Vec::new();
    for (index, item) in CertificateDer::pem_slice_iter(text).enumerate() {
        let der = item.map_err(|e| PemCertsError::Malformed(describe_pem_error(&e)))?;
        if let Err(e) = X509Certificate::from_der(&der) {
            return Err(PemCertsError::BadCertificate {
                index,
                reason: e.to_string(),
            });
        }
        out.push(der);
    }
    if out.is_empty() {
        return Err(PemCertsError::NoCertificate);
    }
    Ok(out)
}

/// PEM-encodes one DER certificate.
pub fn cert_to_pem(der: &[u8]) -> String {
    pem_encode("CERTIFICATE", der)
}

/// PEM-encodes `der` with the given label, 64-column lines, trailing newline.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + b64.len() / 64 + 64);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        // base64 output is ASCII.
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
    out
}

/// Parses a DER certificate that is known to parse (checked when it was read).
pub(crate) fn parse(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

/// The subject as text (`<empty>` when empty).
pub(crate) fn subject_text(cert: &X509Certificate<'_>) -> String {
    let s = cert.subject().to_string();
    if s.is_empty() {
        "<empty>".to_owned()
    } else {
        s
    }
}

/// The issuer as text (`<empty>` when empty).
pub(crate) fn issuer_text(cert: &X509Certificate<'_>) -> String {
    let s = cert.issuer().to_string();
    if s.is_empty() {
        "<empty>".to_owned()
    } else {
        s
    }
}

/// The certificate's `notBefore`.
pub(crate) fn not_before(cert: &X509Certificate<'_>) -> OffsetDateTime {
    cert.validity().not_before.to_datetime()
}

/// The certificate's `notAfter`.
pub(crate) fn not_after(cert: &X509Certificate<'_>) -> OffsetDateTime {
    cert.validity().not_after.to_datetime()
}

/// `Some(pathlen)` for a CA certificate (basicConstraints CA:TRUE), `None` otherwise.
/// The inner option is the path length constraint.
pub(crate) fn ca_constraints(cert: &X509Certificate<'_>) -> Option<Option<u32>> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => Some(bc.value.path_len_constraint),
        _ => None,
    }
}

/// Whether the certificate may sign certificates: keyUsage absent or includes keyCertSign.
pub(crate) fn may_sign_certs(cert: &X509Certificate<'_>) -> bool {
    match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// Whether the certificate may sign CRLs: keyUsage absent or includes cRLSign.
pub(crate) fn may_sign_crls(cert: &X509Certificate<'_>) -> bool {
    match cert.key_usage() {
        Ok(Some(ku)) => ku.value.crl_sign(),
        Ok(None) => true,
        Err(_) => false,
    }
}

/// The Subject Key Identifier, if present.
pub(crate) fn subject_key_id(cert: &X509Certificate<'_>) -> Option<Vec<u8>> {
    cert.iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
}

/// A problem linking a certificate to the certificate that should have issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LinkProblem {
    /// The child's issuer name is not the parent's subject name.
    NameMismatch,
    /// The signature uses SHA-1 or another algorithm Warden refuses.
    WeakAlgorithm(String),
    /// The signature does not verify with the parent's key.
    BadSignature(String),
}

/// Signature algorithms refused in chains (SHA-1 and MD5 based).
fn weak_algorithm(cert: &X509Certificate<'_>) -> Option<String> {
    const ECDSA_WITH_SHA1: &str = "1.2.840.10045.4.1";
    let oid = &cert.signature_algorithm.algorithm;
    let weak = [
        oid_registry::OID_PKCS1_SHA1WITHRSA,
        oid_registry::OID_SHA1_WITH_RSA,
        oid_registry::OID_MD5_WITH_RSA,
        oid_registry::OID_PKCS1_MD5WITHRSAENC,
        oid_registry::OID_PKCS1_MD2WITHRSAENC,
    ];
    let id = oid.to_id_string();
    (weak.iter().any(|w| w == oid) || id == ECDSA_WITH_SHA1).then_some(id)
}

/// Checks that `child` was issued by `parent`: names chain and the signature verifies.
pub(crate) fn check_link(
    child: &X509Certificate<'_>,
    parent: &X509Certificate<'_>,
) -> Result<(), LinkProblem> {
    if child.issuer().as_raw() != parent.subject().as_raw() {
        return Err(LinkProblem::NameMismatch);
    }
    if let Some(alg) = weak_algorithm(child) {
        return Err(LinkProblem::WeakAlgorithm(alg));
    }
    child
        .verify_signature(Some(parent.public_key()))
        .map_err(|e| LinkProblem::BadSignature(e.to_string()))
}

/// Whether `cert` is self-issued and its self-signature verifies.
pub(crate) fn is_self_signed(cert: &X509Certificate<'_>) -> bool {
    cert.issuer().as_raw() == cert.subject().as_raw() && cert.verify_signature(None).is_ok()
}

/// `time` instant to webpki's time.
pub(crate) fn unix_time(t: OffsetDateTime) -> UnixTime {
    UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        t.unix_timestamp().max(0) as u64
    ))
}

/// Signature algorithms accepted when verifying chains with webpki (aws-lc-rs).
pub(crate) static WEBPKI_ALGS: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
    webpki::aws_lc_rs::ECDSA_P256_SHA256,
    webpki::aws_lc_rs::ECDSA_P256_SHA384,
    webpki::aws_lc_rs::ECDSA_P384_SHA256,
    webpki::aws_lc_rs::ECDSA_P384_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA256,
    webpki::aws_lc_rs::ECDSA_P521_SHA384,
    webpki::aws_lc_rs::ECDSA_P521_SHA512,
    webpki::aws_lc_rs::ED25519,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA256,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA384,
    webpki::aws_lc_rs::RSA_PKCS1_2048_8192_SHA512,
    webpki::aws_lc_rs::RSA_PKCS1_3072_8192_SHA384,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    webpki::aws_lc_rs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

/// Verifies an end-entity certificate the way rustls does (webpki): chain to one of `roots`
/// through `intermediates`, validity at `now`, and the client-auth or server-auth EKU.
pub fn verify_leaf(
    leaf: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    roots: &[CertificateDer<'_>],
    now: OffsetDateTime,
    server_auth: bool,
) -> Result<(), String> {
    let anchors = roots
        .iter()
        .map(|r| webpki::anchor_from_trusted_cert(r).map_err(|e| format!("trust anchor: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let ee = webpki::EndEntityCert::try_from(leaf).map_err(|e| format!("leaf: {e}"))?;
    let usage = if server_auth {
        webpki::KeyUsage::server_auth()
    } else {
        webpki::KeyUsage::client_auth()
    };
    ee.verify_for_usage(
        WEBPKI_ALGS,
        &anchors,
        intermediates,
        unix_time(now),
        usage,
        None,
        None,
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// Reads a file to bytes; the error keeps the path.
pub(crate) fn read_file(path: &Path) -> std::io::Result<Vec<u8>> {
    std::fs::read(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_parsing_and_display() {
        let s: Serial = "0x00:1A:2b".parse().unwrap();
        assert_eq!(s.as_bytes(), &[0x1a, 0x2b]);
        assert_eq!(s.to_string(), "1a2b");
        assert_eq!("abc".parse::<Serial>().unwrap().as_bytes(), &[0x0a, 0xbc]);
        assert_eq!(Serial::from_be_bytes(&[0, 0]).as_bytes(), &[0]);
        assert!("".parse::<Serial>().is_err());
        assert!("xyz".parse::<Serial>().is_err());
        let r = Serial::random();
        assert_eq!(r.as_bytes().len(), 16);
        assert!(r.as_bytes()[0] & 0x80 == 0 && r.as_bytes()[0] != 0);
        assert_ne!(Serial::random(), r);
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"1a2b\"");
        assert_eq!(serde_json::from_str::<Serial>(&json).unwrap(), s);
    }

    #[test]
    fn pem_errors_are_told_apart() {
        assert_eq!(pem_certs(b"hello"), Err(PemCertsError::NoCertificate));
        let broken = b"-----BEGIN CERTIFICATE-----\nMIIB\n";
        assert!(matches!(
            pem_certs(broken),
            Err(PemCertsError::Malformed(_))
        ));
        let not_x509 = pem_encode("CERTIFICATE", b"\x30\x03\x02\x01\x01");
        assert!(matches!(
            pem_certs(not_x509.as_bytes()),
            Err(PemCertsError::BadCertificate { index: 0, .. })
        ));
    }
}
