//! Signing tokens and publishing public keys: what the control plane needs to mint
//! service-account tokens (`warden control token`) and to publish the keys it trusts.
//!
//! Key ids follow Kubernetes: `kid = BASE64URL(SHA-256(DER SubjectPublicKeyInfo))`, so a
//! JWKS built here from the API server's `sa.pub` matches the `kid` of its tokens.

use aws_lc_rs::digest;
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde_json::{Map, Value, json};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey as SpkiKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::alg::{Algorithm, Curve, KeyFamily};

/// Why a key cannot be loaded or a token cannot be signed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The PEM text has no private key block.
    #[error(
        "no private key in the PEM text (expected `PRIVATE KEY`, `EC PRIVATE KEY` or `RSA PRIVATE KEY`)"
    )]
    NoPrivateKey,
    /// The PEM text has no public key block.
    #[error("no public key in the PEM text (expected `PUBLIC KEY`)")]
    NoPublicKey,
    /// The PEM text is broken.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// The key is of a kind Warden cannot sign or verify with, or is invalid.
    #[error("unusable key: {0}")]
    Key(String),
    /// The requested algorithm does not fit the key.
    #[error("{alg} cannot be used with a {key} key")]
    AlgorithmMismatch {
        /// The algorithm asked for.
        alg: Algorithm,
        /// The key's type.
        key: &'static str,
    },
    /// The claims are not a JSON object, or an SA token request is invalid.
    #[error("invalid claims: {0}")]
    Claims(String),
    /// The crypto library failed to generate a key or a signature.
    #[error("crypto failure: {0}")]
    Crypto(&'static str),
}

enum Inner {
    Ec(EcdsaKeyPair),
    Rsa(RsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A private key that signs JWTs with one algorithm and a key id.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    inner: Inner,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print key material.
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn ec_signing(curve: Curve) -> &'static signature::EcdsaSigningAlgorithm {
    match curve {
        Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        Curve::P521 => &signature::ECDSA_P521_SHA512_FIXED_SIGNING,
    }
}

const CURVES: [Curve; 3] = [Curve::P256, Curve::P384, Curve::P521];

impl SigningKey {
    /// Generates a fresh key for `alg` (RSA keys are 2048 bits).
    pub fn generate(alg: Algorithm) -> Result<Self, SignError> {
        let inner = match alg.family() {
            KeyFamily::Ec(curve) => Inner::Ec(
                EcdsaKeyPair::generate(ec_signing(curve))
                    .map_err(|_| SignError::Crypto("EC key generation failed"))?,
            ),
            KeyFamily::Rsa => Inner::Rsa(
                RsaKeyPair::generate(KeySize::Rsa2048)
                    .map_err(|_| SignError::Crypto("RSA key generation failed"))?,
            ),
            KeyFamily::Ed25519 => Inner::Ed(
                Ed25519KeyPair::generate()
                    .map_err(|_| SignError::Crypto("Ed25519 key generation failed"))?,
            ),
        };
        Self::with_inner(inner, Some(alg))
    }

    /// Loads a private key from PEM: PKCS#8 (`PRIVATE KEY`, EC P-256/P-384/P-521, RSA or
    /// Ed25519), SEC1 (`EC PRIVATE KEY`) or PKCS#1 (`RSA PRIVATE KEY`).
    ///
    /// `alg` defaults to ES256/ES384/ES512 by curve, RS256 for RSA, EdDSA for Ed25519.
    pub fn from_pem(pem_text: &str, alg: Option<Algorithm>) -> Result<Self, SignError> {
        let der = PrivateKeyDer::from_pem_slice(pem_text.as_bytes()).map_err(|e| match e {
            pem::Error::NoItemsFound => SignError::NoPrivateKey,
            other => SignError::Pem(other.to_string()),
        })?;
        let inner = match &der {
            PrivateKeyDer::Pkcs8(k) => {
                let bytes = k.secret_pkcs8_der();
                let ec = CURVES
                    .iter()
                    .find_map(|&c| EcdsaKeyPair::from_pkcs8(ec_signing(c), bytes).ok());
                if let Some(key) = ec {
                    Inner::Ec(key)
                } else if let Ok(key) = Ed25519KeyPair::from_pkcs8(bytes) {
                    Inner::Ed(key)
                } else {
                    Inner::Rsa(RsaKeyPair::from_pkcs8(bytes).map_err(|e| {
                        SignError::Key(format!(
                            "the PKCS#8 key is not EC P-256/P-384/P-521, Ed25519 or RSA 2048+: {e}"
                        ))
                    })?)
                }
            }
            PrivateKeyDer::Sec1(k) => {
                let bytes = k.secret_sec1_der();
                Inner::Ec(
                    CURVES
                        .iter()
                        .find_map(|&c| {
                            EcdsaKeyPair::from_private_key_der(ec_signing(c), bytes).ok()
                        })
                        .ok_or_else(|| {
                            SignError::Key(
                                "the EC key is not on P-256, P-384 or P-521, or is invalid"
                                    .to_owned(),
                            )
                        })?,
                )
            }
            PrivateKeyDer::Pkcs1(k) => Inner::Rsa(
                RsaKeyPair::from_der(k.secret_pkcs1_der())
                    .map_err(|e| SignError::Key(format!("the RSA key is invalid: {e}")))?,
            ),
            _ => return Err(SignError::Key("unknown private key format".to_owned())),
        };
        Self::with_inner(inner, alg)
    }

    fn with_inner(inner: Inner, alg: Option<Algorithm>) -> Result<Self, SignError> {
        let (family, default_alg, key_name) = match &inner {
            Inner::Ec(k) => {
                let curve = curve_of(k);
                (KeyFamily::Ec(curve), curve.algorithm(), curve.name())
            }
            Inner::Rsa(k) => {
                if k.public_modulus_len() * 8 < super::jwks::MIN_RSA_BITS {
                    return Err(SignError::Key(format!(
                        "the RSA key has {} bits; at least {} are required",
                        k.public_modulus_len() * 8,
                        super::jwks::MIN_RSA_BITS
                    )));
                }
                (KeyFamily::Rsa, Algorithm::RS256, "RSA")
            }
            Inner::Ed(_) => (KeyFamily::Ed25519, Algorithm::EdDSA, "Ed25519"),
        };
        let alg = alg.unwrap_or(default_alg);
        if alg.family() != family {
            return Err(SignError::AlgorithmMismatch { alg, key: key_name });
        }
        let spki = spki_der(&inner)?;
        Ok(SigningKey {
            alg,
            kid: kid_for_spki(&spki),
            inner,
        })
    }

    /// Replaces the key id (by default derived from the public key, as Kubernetes does).
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = kid.into();
        self
    }

    /// The algorithm tokens are signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// The key id written in token headers and in the public JWK.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key as PKCS#8 PEM (`PRIVATE KEY`), to persist a generated key.
    pub fn to_pkcs8_pem(&self) -> Result<String, SignError> {
        let der = match &self.inner {
            Inner::Ec(k) => k
                .to_pkcs8v1()
                .map_err(|_| SignError::Crypto("PKCS#8 encoding failed"))?
                .as_ref()
                .to_vec(),
            Inner::Rsa(k) => AsDer::<Pkcs8V1Der>::as_der(k)
                .map_err(|_| SignError::Crypto("PKCS#8 encoding failed"))?
                .as_ref()
                .to_vec(),
            Inner::Ed(k) => AsDer::<Pkcs8V1Der>::as_der(k)
                .map_err(|_| SignError::Crypto("PKCS#8 encoding failed"))?
                .as_ref()
                .to_vec(),
        };
        Ok(pem_encode("PRIVATE KEY", &der))
    }

    /// The public key as PEM (`PUBLIC KEY`, SubjectPublicKeyInfo).
    pub fn public_key_pem(&self) -> Result<String, SignError> {
        Ok(pem_encode("PUBLIC KEY", &spki_der(&self.inner)?))
    }

    /// The public key as a JWK with `kid`, `alg` and `use: sig`.
    pub fn public_jwk(&self) -> Result<Value, SignError> {
        let mut jwk = public_members(&self.inner)?;
        jwk.insert("kid".to_owned(), Value::String(self.kid.clone()));
        jwk.insert("alg".to_owned(), Value::String(self.alg.name().to_owned()));
        jwk.insert("use".to_owned(), Value::String("sig".to_owned()));
        Ok(Value::Object(jwk))
    }

    /// Signs `message` and returns the signature in JWS form (`r || s` for ECDSA).
    pub fn sign_bytes(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        let rng = SystemRandom::new();
        match &self.inner {
            Inner::Ec(k) => Ok(k
                .sign(&rng, message)
                .map_err(|_| SignError::Crypto("ECDSA signing failed"))?
                .as_ref()
                .to_vec()),
            Inner::Ed(k) => Ok(k.sign(message).as_ref().to_vec()),
            Inner::Rsa(k) => {
                let padding: &'static dyn signature::RsaEncoding = match self.alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    other => {
                        return Err(SignError::AlgorithmMismatch {
                            alg: other,
                            key: "RSA",
                        });
                    }
                };
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(padding, &rng, message, &mut sig)
                    .map_err(|_| SignError::Crypto("RSA signing failed"))?;
                Ok(sig)
            }
        }
    }

    /// Signs a JWT: header `{"alg", "kid", "typ": "JWT"}` and `claims` (a JSON object).
    pub fn sign(&self, claims: &Value) -> Result<String, SignError> {
        if !claims.is_object() {
            return Err(SignError::Claims(
                "the claims must be a JSON object".to_owned(),
            ));
        }
        let header = json!({"alg": self.alg.name(), "kid": self.kid, "typ": "JWT"});
        let mut token = URL_SAFE_NO_PAD.encode(header.to_string());
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
        let sig = self.sign_bytes(token.as_bytes())?;
        token.push('.');
        token.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(token)
    }
}

fn curve_of(key: &EcdsaKeyPair) -> Curve {
    match key.public_key().as_ref().len() {
        65 => Curve::P256,
        97 => Curve::P384,
        _ => Curve::P521,
    }
}

fn spki_der(inner: &Inner) -> Result<Vec<u8>, SignError> {
    let der = match inner {
        Inner::Ec(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        Inner::Rsa(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
        Inner::Ed(k) => k.public_key().as_der().map(|d| d.as_ref().to_vec()),
    };
    der.map_err(|_| SignError::Crypto("public key encoding failed"))
}

/// Kubernetes' key id: base64url of the SHA-256 of the DER SubjectPublicKeyInfo.
fn kid_for_spki(spki: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, spki))
}

fn public_members(inner: &Inner) -> Result<Map<String, Value>, SignError> {
    let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
    let mut m = Map::new();
    match inner {
        Inner::Ec(k) => {
            let curve = curve_of(k);
            let point = k.public_key().as_ref();
            let len = curve.coordinate_len();
            m.insert("kty".into(), "EC".into());
            m.insert("crv".into(), curve.name().into());
            m.insert("x".into(), b64(&point[1..1 + len]));
            m.insert("y".into(), b64(&point[1 + len..]));
        }
        Inner::Rsa(k) => {
            let public = k.public_key();
            m.insert("kty".into(), "RSA".into());
            m.insert(
                "n".into(),
                b64(public.modulus().big_endian_without_leading_zero()),
            );
            m.insert(
                "e".into(),
                b64(public.exponent().big_endian_without_leading_zero()),
            );
        }
        Inner::Ed(k) => {
            m.insert("kty".into(), "OKP".into());
            m.insert("crv".into(), "Ed25519".into());
            m.insert("x".into(), b64(k.public_key().as_ref()));
        }
    }
    Ok(m)
}

/// The JWK for a public key in PEM (`PUBLIC KEY`): RSA, EC P-256/P-384/P-521 or Ed25519.
///
/// `kid` defaults to Kubernetes' key id for the key, so a JWKS made from the API server's
/// `sa.pub` verifies the service-account tokens it issues.
pub fn public_jwk_from_pem(pem_text: &str, kid: Option<&str>) -> Result<Value, SignError> {
    let der =
        SubjectPublicKeyInfoDer::from_pem_slice(pem_text.as_bytes()).map_err(|e| match e {
            pem::Error::NoItemsFound => SignError::NoPublicKey,
            other => SignError::Pem(other.to_string()),
        })?;
    let (_, spki) = SubjectPublicKeyInfo::from_der(der.as_ref())
        .map_err(|e| SignError::Key(format!("not a SubjectPublicKeyInfo: {e}")))?;
    let b64 = |b: &[u8]| Value::String(URL_SAFE_NO_PAD.encode(b));
    let mut m = Map::new();
    let oid = &spki.algorithm.algorithm;
    if *oid == x509_parser::oid_registry::OID_SIG_ED25519 {
        m.insert("kty".into(), "OKP".into());
        m.insert("crv".into(), "Ed25519".into());
        m.insert("x".into(), b64(&spki.subject_public_key.data));
    } else {
        match spki
            .parsed()
            .map_err(|e| SignError::Key(format!("unreadable public key: {e}")))?
        {
            SpkiKey::RSA(rsa) => {
                m.insert("kty".into(), "RSA".into());
                m.insert("n".into(), b64(strip_zeros(rsa.modulus)));
                m.insert("e".into(), b64(strip_zeros(rsa.exponent)));
            }
            SpkiKey::EC(point) => {
                let curve_oid = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .ok_or_else(|| SignError::Key("the EC key names no curve".to_owned()))?;
                let curve = if curve_oid == x509_parser::oid_registry::OID_EC_P256 {
                    Curve::P256
                } else if curve_oid == x509_parser::oid_registry::OID_NIST_EC_P384 {
                    Curve::P384
                } else if curve_oid == x509_parser::oid_registry::OID_NIST_EC_P521 {
                    Curve::P521
                } else {
                    return Err(SignError::Key(format!("unsupported EC curve {curve_oid}")));
                };
                let data = point.data();
                let len = curve.coordinate_len();
                if data.len() != 1 + 2 * len || data[0] != 0x04 {
                    return Err(SignError::Key(
                        "the EC point is not in uncompressed form".to_owned(),
                    ));
                }
                m.insert("kty".into(), "EC".into());
                m.insert("crv".into(), curve.name().into());
                m.insert("x".into(), b64(&data[1..1 + len]));
                m.insert("y".into(), b64(&data[1 + len..]));
            }
            _ => {
                return Err(SignError::Key(format!(
                    "unsupported public key algorithm {oid}"
                )));
            }
        }
    }
    let kid = kid.map_or_else(|| kid_for_spki(der.as_ref()), str::to_owned);
    m.insert("kid".into(), Value::String(kid));
    m.insert("use".into(), "sig".into());
    let jwk = Value::Object(m);
    // Check the result is a key Warden verifies with (curve point, RSA size, ...).
    super::jwks::Jwks::from_value(&json!({"keys": [&jwk]}))
        .map_err(|e| SignError::Key(e.to_string()))?;
    Ok(jwk)
}

/// A JWKS document (`{"keys": [...]}`) for the given JWKs, pretty-printed.
pub fn jwks_json(keys: impl IntoIterator<Item = Value>) -> String {
    let keys: Vec<Value> = keys.into_iter().collect();
    // Serializing a `Value` cannot fail.
    serde_json::to_string_pretty(&json!({ "keys": keys })).unwrap_or_default()
}

fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    &bytes[zeros..]
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::jwks::Jwks;

    fn verify_with_jwk(jwk: &Value, token: &str, alg: Algorithm) -> bool {
        let jwks = Jwks::from_value(&json!({ "keys": [jwk] })).expect("jwks");
        let dot = token.rfind('.').expect("dot");
        let sig = URL_SAFE_NO_PAD.decode(&token[dot + 1..]).expect("sig");
        let kid = jwk["kid"].as_str();
        jwks.verify(alg, kid, &token.as_bytes()[..dot], &sig)
            .is_ok()
    }

    #[test]
    fn every_algorithm_signs_and_round_trips_through_pem_and_jwk() {
        let rsa = SigningKey::generate(Algorithm::RS256).expect("rsa");
        let rsa_pem = rsa.to_pkcs8_pem().expect("pem");
        for alg in [
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::ES512,
            Algorithm::EdDSA,
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ] {
            let key = if alg.family() == KeyFamily::Rsa {
                SigningKey::from_pem(&rsa_pem, Some(alg)).expect("rsa pem")
            } else {
                SigningKey::generate(alg).expect("generate")
            };
            let token = key.sign(&json!({"iss": "x"})).expect("sign");
            let jwk = key.public_jwk().expect("jwk");
            assert!(verify_with_jwk(&jwk, &token, alg), "{alg}");
            // The PEM round trip keeps the key (same kid, same public JWK).
            let again =
                SigningKey::from_pem(&key.to_pkcs8_pem().expect("pem"), Some(alg)).expect("load");
            assert_eq!(again.kid(), key.kid());
            assert_eq!(again.public_jwk().expect("jwk"), jwk);
            // And the public PEM gives the same JWK (without `alg`).
            let mut from_public =
                public_jwk_from_pem(&key.public_key_pem().expect("pub"), None).expect("jwk");
            from_public["alg"] = jwk["alg"].clone();
            assert_eq!(from_public, jwk, "{alg}");
        }
    }

    #[test]
    fn sec1_ec_and_pkcs8_rsa_private_keys_load() {
        let ec = EcdsaKeyPair::generate(&signature::ECDSA_P256_SHA256_FIXED_SIGNING).expect("ec");
        let sec1 = ec.private_key().as_der().expect("sec1");
        let pem_text = pem_encode("EC PRIVATE KEY", sec1.as_ref());
        let key = SigningKey::from_pem(&pem_text, None).expect("sec1 loads");
        assert_eq!(key.algorithm(), Algorithm::ES256);

        let rsa = RsaKeyPair::generate(KeySize::Rsa2048).expect("rsa");
        let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&rsa).expect("der");
        // Re-load through PKCS#8 and check the default algorithm.
        let key = SigningKey::from_pem(&pem_encode("PRIVATE KEY", pkcs8.as_ref()), None)
            .expect("pkcs8 rsa");
        assert_eq!(key.algorithm(), Algorithm::RS256);
    }

    #[test]
    fn load_errors_are_distinct() {
        assert_eq!(
            SigningKey::from_pem("hello", None).unwrap_err(),
            SignError::NoPrivateKey
        );
        assert!(matches!(
            SigningKey::from_pem(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                None
            ),
            Err(SignError::Key(_))
        ));
        let ec = SigningKey::generate(Algorithm::ES256).expect("ec");
        let pem_text = ec.to_pkcs8_pem().expect("pem");
        assert_eq!(
            SigningKey::from_pem(&pem_text, Some(Algorithm::RS256)).unwrap_err(),
            SignError::AlgorithmMismatch {
                alg: Algorithm::RS256,
                key: "P-256"
            }
        );
        assert_eq!(
            SigningKey::from_pem(&pem_text, Some(Algorithm::ES384)).unwrap_err(),
            SignError::AlgorithmMismatch {
                alg: Algorithm::ES384,
                key: "P-256"
            }
        );
        assert_eq!(
            public_jwk_from_pem("nothing", None).unwrap_err(),
            SignError::NoPublicKey
        );
        assert!(matches!(ec.sign(&json!([1])), Err(SignError::Claims(_))));
        // Debug output never contains key material.
        let shown = format!("{ec:?}");
        assert!(shown.contains("ES256") && !shown.contains("PRIVATE"));
    }

    #[test]
    fn jwks_json_is_a_valid_key_set() {
        let a = SigningKey::generate(Algorithm::ES256).expect("a");
        let b = SigningKey::generate(Algorithm::EdDSA).expect("b");
        let text = jwks_json([a.public_jwk().expect("a"), b.public_jwk().expect("b")]);
        let jwks = Jwks::from_json(&text).expect("parses");
        assert_eq!(jwks.keys().len(), 2);
        assert_eq!(jwks.keys()[0].kid(), Some(a.kid()));
        assert_eq!(jwks.keys()[1].key_type(), "OKP");
        // Kubernetes-style kid: 43 base64url characters of a SHA-256.
        assert_eq!(a.kid().len(), 43);
        assert_ne!(a.kid(), b.kid());
    }
}
