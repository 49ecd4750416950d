//! Private keys: generation for the supported algorithms, PEM loading, and CSRs.
//!
//! Small and reusable: the CA uses it for its roots, `warden certs` for its files, and the agent
//! for workload keys (the key never leaves memory there).

use std::fmt;
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, KeyPair, RsaKeySize, SanType};

use crate::spiffe::SpiffeId;

/// Key algorithms Warden generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256 (the default).
    #[default]
    EcdsaP256,
    /// RSA 2048-bit, PKCS#1 v1.5 SHA-256 signatures (Istio's default workload key).
    Rsa2048,
    /// RSA 3072-bit.
    Rsa3072,
    /// RSA 4096-bit (Istio's tools/certs root and intermediates).
    Rsa4096,
}

/// Why a key could not be generated or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// An algorithm name that is not one of [`KeyAlgorithm::NAMES`].
    #[error(
        "unknown key algorithm {name:?}: expected one of ec-p256, rsa-2048, rsa-3072, rsa-4096"
    )]
    UnknownAlgorithm {
        /// The name as given.
        name: String,
    },
    /// The crypto library failed to generate a key.
    #[error("generating a {algorithm} key failed: {reason}")]
    Generate {
        /// The requested algorithm.
        algorithm: KeyAlgorithm,
        /// The library's message.
        reason: String,
    },
    /// The PEM text holds no usable private key.
    #[error("{source_name}: not a usable private key (PKCS#8, SEC1 or PKCS#1 PEM): {reason}")]
    Parse {
        /// File name or other description of where the key came from.
        source_name: String,
        /// The parser's message.
        reason: String,
    },
    /// A CSR could not be built.
    #[error("building a CSR for {identity} failed: {reason}")]
    Csr {
        /// The identity the CSR was for.
        identity: String,
        /// The library's message.
        reason: String,
    },
}

impl KeyAlgorithm {
    /// The names accepted by [`FromStr`] and printed by [`fmt::Display`].
    pub const NAMES: [&'static str; 4] = ["ec-p256", "rsa-2048", "rsa-3072", "rsa-4096"];

    /// The canonical name, e.g. `ec-p256`.
    pub fn name(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ec-p256",
            Self::Rsa2048 => "rsa-2048",
            Self::Rsa3072 => "rsa-3072",
            Self::Rsa4096 => "rsa-4096",
        }
    }

    /// Generates a fresh private key.
    pub fn generate(self) -> Result<KeyPair, KeyError> {
        let result = match self {
            Self::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
            Self::Rsa2048 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_2048),
            Self::Rsa3072 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_3072),
            Self::Rsa4096 => KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, RsaKeySize::_4096),
        };
        result.map_err(|e| KeyError::Generate {
            algorithm: self,
            reason: e.to_string(),
        })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "ec-p256" | "ecdsa-p256" | "p256" | "ec" | "ecdsa" => Ok(Self::EcdsaP256),
            "rsa-2048" | "rsa2048" => Ok(Self::Rsa2048),
            "rsa-3072" | "rsa3072" => Ok(Self::Rsa3072),
            "rsa-4096" | "rsa4096" | "rsa" => Ok(Self::Rsa4096),
            _ => Err(KeyError::UnknownAlgorithm { name: s.to_owned() }),
        }
    }
}

/// Loads a private key from PEM (PKCS#8 `PRIVATE KEY`, SEC1 `EC PRIVATE KEY` or PKCS#1
/// `RSA PRIVATE KEY`). `source_name` names the file in errors.
pub fn key_pair_from_pem(pem: &str, source_name: &str) -> Result<KeyPair, KeyError> {
    KeyPair::from_pem(pem).map_err(|e| KeyError::Parse {
        source_name: source_name.to_owned(),
        reason: e.to_string(),
    })
}

/// A short description of a key pair's type, e.g. `ECDSA P-256` or `RSA`.
pub fn describe_key(key: &KeyPair) -> &'static str {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        "ECDSA P-256"
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        "ECDSA P-384"
    } else if alg == &rcgen::PKCS_ED25519 {
        "Ed25519"
    } else {
        "RSA"
    }
}

/// Builds a PEM CSR for `identity` signed by `key`: empty subject, the identity as a URI SAN.
///
/// The CA ignores everything in the CSR but its public key; the SAN is there so the request
/// reads well and matches what an Istio agent sends.
pub fn csr_pem(key: &KeyPair, identity: &SpiffeId) -> Result<String, KeyError> {
    let fail = |reason: String| KeyError::Csr {
        identity: identity.to_string(),
        reason,
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(
        identity
            .as_str()
            .try_into()
            .map_err(|e: rcgen::Error| fail(e.to_string()))?,
    )];
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(|e| fail(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in KeyAlgorithm::NAMES {
            let alg: KeyAlgorithm = name.parse().unwrap();
            assert_eq!(alg.name(), name);
        }
        assert!(matches!(
            "dsa".parse::<KeyAlgorithm>(),
            Err(KeyError::UnknownAlgorithm { .. })
        ));
    }

    #[test]
    fn generates_and_reloads_keys() {
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            let key = alg.generate().unwrap();
            let pem = key.serialize_pem();
            assert!(
                pem.starts_with("-----BEGIN PRIVATE KEY-----"),
                "{alg}: PKCS#8"
            );
            let back = key_pair_from_pem(&pem, "test").unwrap();
            assert_eq!(back.public_key_raw(), key.public_key_raw());
        }
        let ec = KeyAlgorithm::EcdsaP256.generate().unwrap();
        assert_eq!(describe_key(&ec), "ECDSA P-256");
        let err = key_pair_from_pem("not a key", "ca-key.pem").unwrap_err();
        assert!(err.to_string().contains("ca-key.pem"), "{err}");
    }
}
