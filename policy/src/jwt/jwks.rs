//! JSON Web Key Sets (RFC 7517): parse once into ready-to-verify public keys.
//!
//! Each usable key is parsed into an aws-lc-rs [`ParsedPublicKey`] bound to the algorithms it
//! may verify, so a request costs one signature check and no key parsing. Keys that cannot
//! be used (symmetric `oct` keys, `use: enc`, unsupported curves, RSA under 2048 bits, keys
//! carrying private material) are skipped with an error naming the key index and field, as
//! Envoy skips them; a set with no usable key at all is an error.

use std::fmt;

use aws_lc_rs::rsa::PublicKeyComponents;
use aws_lc_rs::signature::ParsedPublicKey;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::alg::{self, Algorithm, Curve, KeyFamily, RSA_ALGORITHMS};
use super::shown;

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted, in bits.
pub const MAX_RSA_BITS: usize = 8192;

/// Why a JSON Web Key Set, or one key in it, cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The text is not JSON.
    #[error("the JWKS is not valid JSON: {0}")]
    Json(String),
    /// The JSON is not an object with a `keys` array.
    #[error("the JWKS must be a JSON object with a `keys` array")]
    NoKeysArray,
    /// The `keys` array is empty.
    #[error("the JWKS `keys` array is empty")]
    Empty,
    /// One key is unusable: `keys[index].field` and why.
    #[error("keys[{index}].{field}: {reason}")]
    Key {
        /// Position of the key in `keys`.
        index: usize,
        /// The JWK member at fault (`kty`, `n`, `crv`, ...).
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// No key in the set is usable; each key's error is listed.
    #[error("the JWKS has no usable key: {}", join(.errors))]
    NoUsableKeys {
        /// Why each key was skipped.
        errors: Vec<JwksError>,
    },
}

fn join(errors: &[JwksError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A public key ready to verify signatures.
#[derive(Clone)]
enum KeyMaterial {
    /// One parsed key per RSA algorithm the JWK may be used with.
    Rsa {
        bits: usize,
        verifiers: Vec<(Algorithm, ParsedPublicKey)>,
    },
    Ec {
        curve: Curve,
        verifier: ParsedPublicKey,
    },
    Ed25519 {
        verifier: ParsedPublicKey,
    },
}

/// One usable JSON Web Key.
#[derive(Clone)]
pub struct Jwk {
    kid: Option<String>,
    alg: Option<Algorithm>,
    material: KeyMaterial,
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Jwk");
        d.field("kid", &self.kid).field("alg", &self.alg);
        match &self.material {
            KeyMaterial::Rsa { bits, .. } => d.field("kty", &"RSA").field("bits", bits),
            KeyMaterial::Ec { curve, .. } => d.field("kty", &"EC").field("crv", &curve.name()),
            KeyMaterial::Ed25519 { .. } => d.field("kty", &"OKP").field("crv", &"Ed25519"),
        };
        d.finish()
    }
}

impl Jwk {
    /// The key id (`kid`), if the JWK has one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The algorithm the JWK is restricted to (`alg`), if any.
    pub fn algorithm(&self) -> Option<Algorithm> {
        self.alg
    }

    /// The JWK key type: `RSA`, `EC` or `OKP`.
    pub fn key_type(&self) -> &'static str {
        match self.material {
            KeyMaterial::Rsa { .. } => "RSA",
            KeyMaterial::Ec { .. } => "EC",
            KeyMaterial::Ed25519 { .. } => "OKP",
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub fn accepts(&self, alg: Algorithm) -> bool {
        self.verifier(alg).is_some()
    }

    fn verifier(&self, alg: Algorithm) -> Option<&ParsedPublicKey> {
        if self.alg.is_some_and(|own| own != alg) {
            return None;
        }
        match (&self.material, alg.family()) {
            (KeyMaterial::Rsa { verifiers, .. }, KeyFamily::Rsa) => verifiers
                .iter()
                .find(|(a, _)| *a == alg)
                .map(|(_, key)| key),
            (KeyMaterial::Ec { curve, verifier }, KeyFamily::Ec(want)) if *curve == want => {
                Some(verifier)
            }
            (KeyMaterial::Ed25519 { verifier }, KeyFamily::Ed25519) => Some(verifier),
            _ => None,
        }
    }

    /// Parses one JWK (a JSON object); `index` is its position, used in errors.
    pub(crate) fn from_object(index: usize, obj: &Map<String, Value>) -> Result<Self, JwksError> {
        let err = |field: &'static str, reason: String| JwksError::Key {
            index,
            field,
            reason,
        };
        let opt_str = |field: &'static str| -> Result<Option<&str>, JwksError> {
            match obj.get(field) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(_) => Err(err(field, "must be a string".to_owned())),
            }
        };
        let req_str = |field: &'static str| -> Result<&str, JwksError> {
            opt_str(field)?.ok_or_else(|| err(field, "is missing".to_owned()))
        };
        let bytes = |field: &'static str| -> Result<Vec<u8>, JwksError> {
            let text = req_str(field)?;
            // Keys are configuration, not attacker input: tolerate `=` padding that some
            // publishers add, but nothing else outside base64url.
            URL_SAFE_NO_PAD
                .decode(text.trim_end_matches('='))
                .map_err(|e| err(field, format!("is not base64url: {e}")))
        };

        let kty = req_str("kty")?;
        if let Some(usage) = opt_str("use")?
            && usage != "sig"
        {
            return Err(err(
                "use",
                format!(
                    "is {:?}: only signature keys (`sig`) verify tokens",
                    shown(usage)
                ),
            ));
        }
        if let Some(ops) = obj.get("key_ops") {
            let Value::Array(ops) = ops else {
                return Err(err("key_ops", "must be an array of strings".to_owned()));
            };
            if !ops.iter().any(|op| op.as_str() == Some("verify")) {
                return Err(err("key_ops", "does not include \"verify\"".to_owned()));
            }
        }
        for private in ["d", "p", "q", "dp", "dq", "qi", "k"] {
            if obj.contains_key(private) {
                return Err(err(
                    field_name(private),
                    "private or secret key material must not be in a JWKS; publish only public keys"
                        .to_owned(),
                ));
            }
        }
        let alg = match opt_str("alg")? {
            None => None,
            Some(name) => match Algorithm::from_name(name) {
                Some(a) => Some(a),
                None => {
                    return Err(err(
                        "alg",
                        format!("{:?}: {}", shown(name), alg::refusal(name)),
                    ));
                }
            },
        };
        let kid = opt_str("kid")?.map(str::to_owned);

        let material = match kty {
            "RSA" => {
                let n = strip_leading_zeros(bytes("n")?);
                let e = strip_leading_zeros(bytes("e")?);
                if n.is_empty() {
                    return Err(err("n", "is zero".to_owned()));
                }
                if e.is_empty() {
                    return Err(err("e", "is zero".to_owned()));
                }
                let bits = n.len() * 8 - n[0].leading_zeros() as usize;
                if !(MIN_RSA_BITS..=MAX_RSA_BITS).contains(&bits) {
                    return Err(err(
                        "n",
                        format!(
                            "the RSA modulus has {bits} bits; {MIN_RSA_BITS} to {MAX_RSA_BITS} are accepted"
                        ),
                    ));
                }
                let algs: Vec<Algorithm> = match alg {
                    Some(a) if a.family() == KeyFamily::Rsa => vec![a],
                    Some(a) => {
                        return Err(err("alg", format!("{a} cannot be used with an RSA key")));
                    }
                    None => RSA_ALGORITHMS.to_vec(),
                };
                let components = PublicKeyComponents { n: &n, e: &e };
                let mut verifiers = Vec::with_capacity(algs.len());
                for a in algs {
                    let params = a
                        .rsa_parameters()
                        .ok_or_else(|| err("alg", format!("{a} is not an RSA algorithm")))?;
                    let key = components
                        .to_parsed_public_key(params)
                        .map_err(|e| err("n", format!("not a valid RSA public key: {e}")))?;
                    verifiers.push((a, key));
                }
                KeyMaterial::Rsa { bits, verifiers }
            }
            "EC" => {
                let crv = req_str("crv")?;
                let curve = Curve::from_name(crv).ok_or_else(|| {
                    err(
                        "crv",
                        format!(
                            "unsupported curve {:?} (P-256, P-384 and P-521 are)",
                            shown(crv)
                        ),
                    )
                })?;
                if let Some(a) = alg
                    && a != curve.algorithm()
                {
                    return Err(err(
                        "alg",
                        format!("{a} cannot be used with a {} key", curve.name()),
                    ));
                }
                let len = curve.coordinate_len();
                let x = coordinate(bytes("x")?, len).map_err(|r| err("x", r))?;
                let y = coordinate(bytes("y")?, len).map_err(|r| err("y", r))?;
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let verification = curve
                    .algorithm()
                    .non_rsa_verification()
                    .ok_or_else(|| err("crv", "no verifier for the curve".to_owned()))?;
                let verifier = ParsedPublicKey::new(verification, &point).map_err(|e| {
                    err(
                        "x",
                        format!("(x, y) is not a point on {}: {e}", curve.name()),
                    )
                })?;
                KeyMaterial::Ec { curve, verifier }
            }
            "OKP" => {
                let crv = req_str("crv")?;
                if crv != "Ed25519" {
                    return Err(err(
                        "crv",
                        format!("unsupported curve {:?} (Ed25519 is)", shown(crv)),
                    ));
                }
                if let Some(a) = alg
                    && a != Algorithm::EdDSA
                {
                    return Err(err(
                        "alg",
                        format!("{a} cannot be used with an Ed25519 key"),
                    ));
                }
                let x = bytes("x")?;
                if x.len() != 32 {
                    return Err(err(
                        "x",
                        format!("is {} bytes; an Ed25519 key is 32", x.len()),
                    ));
                }
                let verifier = ParsedPublicKey::new(&aws_lc_rs::signature::ED25519, &x)
                    .map_err(|e| err("x", format!("not a valid Ed25519 key: {e}")))?;
                KeyMaterial::Ed25519 { verifier }
            }
            "oct" => {
                return Err(err(
                    "kty",
                    "symmetric (`oct`) keys are never accepted: tokens are verified with public keys only"
                        .to_owned(),
                ));
            }
            other => {
                return Err(err(
                    "kty",
                    format!(
                        "unsupported key type {:?} (RSA, EC and OKP are)",
                        shown(other)
                    ),
                ));
            }
        };
        Ok(Jwk { kid, alg, material })
    }
}

fn field_name(private: &str) -> &'static str {
    match private {
        "d" => "d",
        "p" => "p",
        "q" => "q",
        "dp" => "dp",
        "dq" => "dq",
        "qi" => "qi",
        _ => "k",
    }
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.drain(..zeros);
    bytes
}

/// An EC coordinate must be exactly the curve's size; shorter ones are left-padded.
fn coordinate(bytes: Vec<u8>, len: usize) -> Result<Vec<u8>, String> {
    match bytes.len().cmp(&len) {
        std::cmp::Ordering::Equal => Ok(bytes),
        std::cmp::Ordering::Less => {
            let mut padded = vec![0; len - bytes.len()];
            padded.extend_from_slice(&bytes);
            Ok(padded)
        }
        std::cmp::Ordering::Greater => Err(format!(
            "is {} bytes; the curve's coordinates are {len}",
            bytes.len()
        )),
    }
}

/// Why no key verified a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum VerifyError {
    /// No key has the token's `kid` (or no `kid`) and accepts its `alg`.
    NoMatchingKey,
    /// At least one key matched, and none verified the signature.
    BadSignature,
}

/// A parsed JSON Web Key Set: the usable keys, and why the others were skipped.
#[derive(Clone, Debug, Default)]
pub struct Jwks {
    keys: Vec<Jwk>,
    skipped: Vec<JwksError>,
}

impl Jwks {
    /// Parses a JWKS (`{"keys": [...]}`) from JSON text.
    ///
    /// Unusable keys are skipped (see [`Jwks::skipped`]); an error is returned when the text
    /// is not a JWKS or when no key is usable.
    pub fn from_json(text: &str) -> Result<Self, JwksError> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| JwksError::Json(e.to_string()))?;
        Self::from_value(&value)
    }

    /// Parses a JWKS from an already parsed JSON value.
    pub fn from_value(value: &Value) -> Result<Self, JwksError> {
        let Some(Value::Array(entries)) = value.as_object().and_then(|o| o.get("keys")) else {
            return Err(JwksError::NoKeysArray);
        };
        if entries.is_empty() {
            return Err(JwksError::Empty);
        }
        let mut keys = Vec::with_capacity(entries.len());
        let mut skipped = Vec::new();
        for (index, entry) in entries.iter().enumerate() {
            let parsed = match entry {
                Value::Object(obj) => Jwk::from_object(index, obj),
                _ => Err(JwksError::Key {
                    index,
                    field: "(key)",
                    reason: "is not a JSON object".to_owned(),
                }),
            };
            match parsed {
                Ok(key) => keys.push(key),
                Err(e) => skipped.push(e),
            }
        }
        if keys.is_empty() {
            return Err(JwksError::NoUsableKeys { errors: skipped });
        }
        Ok(Jwks { keys, skipped })
    }

    /// A set made of the given keys.
    pub fn from_keys(keys: Vec<Jwk>) -> Self {
        Jwks {
            keys,
            skipped: Vec::new(),
        }
    }

    /// The usable keys, in document order.
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Why keys of the document were skipped (empty when every key is usable).
    pub fn skipped(&self) -> &[JwksError] {
        &self.skipped
    }

    /// Verifies `signature` over `signing_input` the way Envoy picks keys: a key whose `kid`
    /// differs from the token's is not tried (a key without `kid`, or a token without one,
    /// matches), nor is a key whose type or `alg` does not fit the token's `alg`.
    pub(crate) fn verify(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        signing_input: &[u8],
        signature: &[u8],
    ) -> Result<(), VerifyError> {
        let mut matched = false;
        for key in &self.keys {
            if let (Some(want), Some(have)) = (kid, key.kid.as_deref())
                && want != have
            {
                continue;
            }
            let Some(verifier) = key.verifier(alg) else {
                continue;
            };
            matched = true;
            if verifier.verify_sig(signing_input, signature).is_ok() {
                return Ok(());
            }
        }
        Err(if matched {
            VerifyError::BadSignature
        } else {
            VerifyError::NoMatchingKey
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7515 A.3: the ES256 example key and token.
    const RFC7515_A3_JWK: &str = r#"{"keys":[{"kty":"EC","crv":"P-256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
    const RFC7515_A3_JWS: &str = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    /// RFC 8037 A.4: the Ed25519 example key and JWS (its payload is not JSON).
    const RFC8037_JWK: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519",
        "x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    const RFC8037_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    fn split(jws: &str) -> (&[u8], Vec<u8>) {
        let dot = jws.rfind('.').expect("dot");
        let sig = URL_SAFE_NO_PAD.decode(&jws[dot + 1..]).expect("sig");
        (&jws.as_bytes()[..dot], sig)
    }

    fn key_error(json: &str) -> JwksError {
        match Jwks::from_json(json) {
            Err(JwksError::NoUsableKeys { mut errors }) => {
                assert_eq!(errors.len(), 1, "{errors:?}");
                errors.remove(0)
            }
            other => panic!("expected one key error, got {other:?}"),
        }
    }

    #[test]
    fn rfc7515_es256_known_answer() {
        let jwks = Jwks::from_json(RFC7515_A3_JWK).expect("jwks");
        let (input, sig) = split(RFC7515_A3_JWS);
        assert_eq!(jwks.verify(Algorithm::ES256, None, input, &sig), Ok(()));
        let mut bad = sig.clone();
        bad[63] ^= 1;
        assert_eq!(
            jwks.verify(Algorithm::ES256, None, input, &bad),
            Err(VerifyError::BadSignature)
        );
        // The same key never verifies under another algorithm.
        assert_eq!(
            jwks.verify(Algorithm::ES384, None, input, &sig),
            Err(VerifyError::NoMatchingKey)
        );
        assert_eq!(
            jwks.verify(Algorithm::RS256, None, input, &sig),
            Err(VerifyError::NoMatchingKey)
        );
    }

    #[test]
    fn rfc8037_ed25519_known_answer() {
        let jwks = Jwks::from_json(RFC8037_JWK).expect("jwks");
        let (input, sig) = split(RFC8037_JWS);
        assert_eq!(jwks.verify(Algorithm::EdDSA, None, input, &sig), Ok(()));
        assert_eq!(
            jwks.verify(Algorithm::EdDSA, None, b"other", &sig),
            Err(VerifyError::BadSignature)
        );
    }

    #[test]
    fn kid_selection_follows_envoy() {
        let json = r#"{"keys":[
            {"kty":"EC","crv":"P-256","kid":"other","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;
        let jwks = Jwks::from_json(json).expect("jwks");
        let (input, sig) = split(RFC7515_A3_JWS);
        // A token without kid tries every key; with another kid, none.
        assert_eq!(jwks.verify(Algorithm::ES256, None, input, &sig), Ok(()));
        assert_eq!(
            jwks.verify(Algorithm::ES256, Some("other"), input, &sig),
            Ok(())
        );
        assert_eq!(
            jwks.verify(Algorithm::ES256, Some("k9"), input, &sig),
            Err(VerifyError::NoMatchingKey)
        );
        // A key without kid matches any token kid.
        let jwks = Jwks::from_json(RFC7515_A3_JWK).expect("jwks");
        assert_eq!(
            jwks.verify(Algorithm::ES256, Some("k9"), input, &sig),
            Ok(())
        );
    }

    #[test]
    fn document_errors() {
        assert!(matches!(Jwks::from_json("{"), Err(JwksError::Json(_))));
        assert_eq!(Jwks::from_json("[]").unwrap_err(), JwksError::NoKeysArray);
        assert_eq!(
            Jwks::from_json(r#"{"keys":{}}"#).unwrap_err(),
            JwksError::NoKeysArray
        );
        assert_eq!(
            Jwks::from_json(r#"{"keys":[]}"#).unwrap_err(),
            JwksError::Empty
        );
        let e = key_error(r#"{"keys":[7]}"#);
        assert_eq!(e.to_string(), "keys[0].(key): is not a JSON object");
    }

    fn assert_key_error(json: &str, field: &str, needle: &str) {
        match key_error(json) {
            JwksError::Key {
                index: 0,
                field: f,
                reason,
            } => {
                assert_eq!(f, field, "{reason}");
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn key_errors_name_the_field() {
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        assert_key_error(r#"{"keys":[{}]}"#, "kty", "missing");
        assert_key_error(r#"{"keys":[{"kty":1}]}"#, "kty", "string");
        assert_key_error(r#"{"keys":[{"kty":"oct","k":"AAAA"}]}"#, "k", "secret");
        assert_key_error(r#"{"keys":[{"kty":"oct"}]}"#, "kty", "symmetric");
        assert_key_error(r#"{"keys":[{"kty":"XYZ"}]}"#, "kty", "unsupported key type");
        assert_key_error(
            &format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","use":"enc","x":"{x}","y":"{y}"}}]}}"#
            ),
            "use",
            "enc",
        );
        assert_key_error(
            &format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","key_ops":["sign"],"x":"{x}","y":"{y}"}}]}}"#
            ),
            "key_ops",
            "verify",
        );
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","d":"AAAA","x":"{x}","y":"{y}"}}]}}"#),
            "d",
            "private",
        );
        assert_key_error(
            &format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","alg":"HS256","x":"{x}","y":"{y}"}}]}}"#
            ),
            "alg",
            "HMAC",
        );
        assert_key_error(
            &format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","alg":"none","x":"{x}","y":"{y}"}}]}}"#
            ),
            "alg",
            "none",
        );
        assert_key_error(
            &format!(
                r#"{{"keys":[{{"kty":"EC","crv":"P-256","alg":"ES384","x":"{x}","y":"{y}"}}]}}"#
            ),
            "alg",
            "cannot be used with a P-256 key",
        );
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"EC","crv":"secp256k1","x":"{x}","y":"{y}"}}]}}"#),
            "crv",
            "unsupported curve",
        );
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","y":"{y}"}}]}}"#),
            "x",
            "missing",
        );
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{y}AAAA"}}]}}"#),
            "y",
            "bytes",
        );
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}","y":"{x}"}}]}}"#),
            "x",
            "not a point",
        );
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"EC","crv":"P-256","x":"{x}!","y":"{y}"}}]}}"#),
            "x",
            "base64url",
        );
        assert_key_error(
            r#"{"keys":[{"kty":"OKP","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
            "crv",
            "unsupported curve",
        );
        assert_key_error(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"AAAA"}]}"#,
            "x",
            "32",
        );
        assert_key_error(
            r#"{"keys":[{"kty":"OKP","crv":"Ed25519","alg":"ES256","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#,
            "alg",
            "Ed25519",
        );
        // A 1024-bit modulus (all ones is fine for the size check).
        let n = URL_SAFE_NO_PAD.encode([0xffu8; 128]);
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"RSA","n":"{n}","e":"AQAB"}}]}}"#),
            "n",
            "1024 bits",
        );
        let n = URL_SAFE_NO_PAD.encode([0xffu8; 256]);
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"RSA","n":"{n}"}}]}}"#),
            "e",
            "missing",
        );
        assert_key_error(
            &format!(r#"{{"keys":[{{"kty":"RSA","n":"{n}","e":"AQAB","alg":"ES256"}}]}}"#),
            "alg",
            "RSA key",
        );
    }

    #[test]
    fn unusable_keys_are_skipped_next_to_usable_ones() {
        let json = format!(
            r#"{{"keys":[{{"kty":"oct","k":"c2VjcmV0"}},{},{{"kty":"RSA","use":"enc"}}]}}"#,
            &RFC7515_A3_JWK[9..RFC7515_A3_JWK.len() - 2]
        );
        let jwks = Jwks::from_json(&json).expect("one usable key");
        assert_eq!(jwks.keys().len(), 1);
        assert_eq!(jwks.keys()[0].key_type(), "EC");
        let skipped: Vec<String> = jwks.skipped().iter().map(ToString::to_string).collect();
        assert_eq!(skipped.len(), 2, "{skipped:?}");
        assert!(skipped[0].starts_with("keys[0].k: "), "{skipped:?}");
        assert!(skipped[1].starts_with("keys[2].use: "), "{skipped:?}");
    }
}
