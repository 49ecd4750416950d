//! The CA's error type: one variant per thing that can be wrong, each naming the file and the
//! problem, so callers can match on them and operators can act on the message.

use std::path::PathBuf;

use time::OffsetDateTime;

use crate::keys::KeyError;
use crate::spiffe::SpiffeId;
use crate::x509::Serial;

/// Everything the CA can refuse or fail at.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    // ---- files ----
    /// Reading or writing a file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done, e.g. `reading`.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A required file of a CA directory is missing.
    #[error("{path} is missing: {what}")]
    MissingFile {
        /// The missing file.
        path: PathBuf,
        /// What the file should hold.
        what: &'static str,
    },
    /// A directory holds none of the plugin CA layouts.
    #[error(
        "{dir} is not a CA directory: expected ca-cert.pem + ca-key.pem + root-cert.pem + cert-chain.pem, \
         or tls.crt + tls.key + ca.crt, or root-cert.pem + root-key.pem"
    )]
    NotACaDirectory {
        /// The directory.
        dir: PathBuf,
    },
    /// A file is not well-formed PEM.
    #[error("{path}: malformed PEM: {reason}")]
    MalformedPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A file holds no PEM `CERTIFICATE` block.
    #[error("{path}: no PEM CERTIFICATE block found")]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A certificate in a file does not parse as X.509.
    #[error("{path}: certificate #{index} is not valid X.509: {reason}")]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Zero-based position of the certificate in the file.
        index: usize,
        /// The parser's message.
        reason: String,
    },
    /// A private key could not be generated or loaded.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The private key does not belong to the certificate.
    #[error("{key_path} does not match the certificate in {cert_path} (different public key)")]
    KeyMismatch {
        /// The key file.
        key_path: PathBuf,
        /// The certificate file.
        cert_path: PathBuf,
    },
    /// A certificate that must be a CA is not (no basicConstraints CA:TRUE).
    #[error("{path}: certificate {subject:?} is not a CA (basicConstraints CA:TRUE missing)")]
    NotACa {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
    /// A CA certificate whose keyUsage does not allow signing certificates.
    #[error("{path}: certificate {subject:?} has a keyUsage without keyCertSign")]
    NoCertSign {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
    /// A certificate has expired.
    #[error("{path}: certificate {subject:?} expired at {not_after}")]
    Expired {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// When it expired.
        not_after: OffsetDateTime,
    },
    /// A certificate is not valid yet.
    #[error("{path}: certificate {subject:?} is not valid before {not_before}")]
    NotYetValid {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// When it becomes valid.
        not_before: OffsetDateTime,
    },
    /// The next certificate of a chain is not the issuer of the previous one.
    #[error(
        "{path}: certificate {subject:?} was issued by {issuer:?}, but the next certificate of the chain is {next_subject:?}"
    )]
    ChainIssuerMismatch {
        /// The file holding the chain.
        path: PathBuf,
        /// The certificate whose issuer was looked for.
        subject: String,
        /// Its issuer name.
        issuer: String,
        /// The subject of the certificate that follows it.
        next_subject: String,
    },
    /// A signature in a chain does not verify.
    #[error(
        "{path}: the signature of {subject:?} does not verify with the key of {issuer:?}: {reason}"
    )]
    ChainBadSignature {
        /// The file holding the chain.
        path: PathBuf,
        /// The signed certificate.
        subject: String,
        /// The supposed signer.
        issuer: String,
        /// The verifier's message.
        reason: String,
    },
    /// A chain uses a refused signature algorithm (SHA-1, MD5).
    #[error("{path}: certificate {subject:?} is signed with the weak algorithm {algorithm}")]
    WeakSignature {
        /// The file.
        path: PathBuf,
        /// The certificate.
        subject: String,
        /// The algorithm OID.
        algorithm: String,
    },
    /// A CA's path length constraint forbids the chain below it.
    #[error(
        "{path}: certificate {subject:?} has pathlen {pathlen} but {below} CA certificate(s) sit below it"
    )]
    PathLenExceeded {
        /// The file.
        path: PathBuf,
        /// The constrained CA.
        subject: String,
        /// Its path length constraint.
        pathlen: u32,
        /// How many CA certificates follow it down the chain.
        below: u32,
    },
    /// The chain does not end at one of the trusted roots.
    #[error(
        "{chain_path}: the chain ends at {last_subject:?} (issued by {last_issuer:?}), which is not signed by any root in {root_path}"
    )]
    ChainDoesNotReachRoot {
        /// The chain file.
        chain_path: PathBuf,
        /// The root bundle file.
        root_path: PathBuf,
        /// Subject of the last certificate of the chain.
        last_subject: String,
        /// Its issuer.
        last_issuer: String,
    },
    /// A root certificate is not self-signed.
    #[error("{path}: root certificate {subject:?} is not self-signed")]
    RootNotSelfSigned {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
    },
    /// The CA certificate's name cannot be reproduced exactly in issued certificates.
    #[error("{path}: the subject of {subject:?} cannot be used as an issuer name: {reason}")]
    UnsupportedCaName {
        /// The file.
        path: PathBuf,
        /// The certificate's subject.
        subject: String,
        /// Why.
        reason: String,
    },
    /// The end-to-end self-check (a probe certificate verified with webpki against the bundle)
    /// failed after every individual check passed.
    #[error(
        "CA self-check failed: a probe certificate does not verify against the trust bundle: {reason}"
    )]
    SelfCheck {
        /// The verifier's message.
        reason: String,
    },

    // ---- signing ----
    /// The CSR is not PEM or not a PKCS#10 request.
    #[error("malformed CSR: {reason}")]
    MalformedCsr {
        /// What is wrong.
        reason: String,
    },
    /// The CSR's self-signature does not verify.
    #[error("CSR signature does not verify: {reason}")]
    CsrSignature {
        /// The verifier's message.
        reason: String,
    },
    /// The CSR's key type or size is not accepted.
    #[error("CSR public key not accepted: {reason}")]
    UnsupportedKey {
        /// What is wrong.
        reason: String,
    },
    /// The requested lifetime exceeds the maximum.
    #[error(
        "requested certificate TTL {requested_secs}s is greater than the max allowed TTL {max_secs}s"
    )]
    TtlTooLong {
        /// The requested TTL in seconds.
        requested_secs: i64,
        /// The maximum in seconds.
        max_secs: i64,
    },
    /// The identity is revoked; nothing is issued to it until it is un-revoked.
    #[error("identity {identity} is revoked")]
    IdentityRevoked {
        /// The identity.
        identity: SpiffeId,
    },
    /// The identity's trust domain is not one this CA issues for.
    #[error("identity {identity} is outside the trust domains this CA issues for ({allowed})")]
    ForeignTrustDomain {
        /// The identity.
        identity: SpiffeId,
        /// The allowed trust domains, comma-separated.
        allowed: String,
    },
    /// An extra DNS SAN is not a valid DNS name.
    #[error("invalid DNS name {name:?} for a certificate SAN")]
    InvalidDnsName {
        /// The name as given.
        name: String,
    },
    /// Building or signing a certificate or CRL failed in the library.
    #[error("signing failed: {reason}")]
    Sign {
        /// The library's message.
        reason: String,
    },

    // ---- revocation ----
    /// The revocation store or issued-certificate log is unreadable.
    #[error("{path}: corrupt CA state file: {reason}")]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The signing CA certificate's keyUsage does not allow signing CRLs.
    #[error(
        "the signing CA certificate {subject:?} has a keyUsage without cRLSign: it cannot sign a CRL"
    )]
    CrlSignNotAllowed {
        /// The CA certificate's subject.
        subject: String,
    },
    /// A CRL file is not a valid CRL of this CA.
    #[error("{path}: {reason}")]
    BadCrl {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    // ---- rotation ----
    /// A root operation needs the self-signed mode.
    #[error(
        "{operation} needs a self-signed CA; a plugin CA is rotated by replacing its files (see docs/ca.md)"
    )]
    NotSelfSigned {
        /// The operation.
        operation: &'static str,
    },
    /// No staged root to activate.
    #[error("no staged root: stage one first (stage_root)")]
    NoStagedRoot,
    /// A root to retire is not in the bundle.
    #[error("no root with serial {serial} in the trust bundle")]
    UnknownRoot {
        /// The serial.
        serial: Serial,
    },
    /// The active signing root cannot be retired.
    #[error("root {serial} is the active signing root and cannot be retired")]
    RetireActiveRoot {
        /// The serial.
        serial: Serial,
    },
}

impl CaError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sign(e: impl std::fmt::Display) -> Self {
        Self::Sign {
            reason: e.to_string(),
        }
    }
}
