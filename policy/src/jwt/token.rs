//! JWS compact serialization: split, decode and check the structure of a token.
//!
//! Nothing here trusts the token: the header names an algorithm and maybe a key id, and the
//! payload is only parsed. Signature checks live in [`super::jwks`].

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};

use super::alg::{self, Algorithm};
use super::json::from_slice_strict;
use super::shown;

/// The longest token Warden looks at (64 KiB, the size of a large header block).
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// A structurally valid, not yet verified, JWS in compact form.
#[derive(Debug)]
pub(crate) struct CompactJws<'t> {
    /// The header's `alg`, already known to be one Warden accepts.
    pub alg: Algorithm,
    /// The header's `kid`, if any.
    pub kid: Option<String>,
    /// `BASE64URL(header) '.' BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'t [u8],
    /// The payload segment as it appears in the token (base64url, no padding).
    pub payload_b64: &'t str,
    /// The decoded claims.
    pub claims: Map<String, Value>,
    /// The decoded signature.
    pub signature: Vec<u8>,
}

/// Why a token could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TokenError {
    /// Not a well-formed JWS / JWT; the string says what is wrong.
    Malformed(String),
    /// The header's `alg` is one Warden never accepts (`none`, `HS256`, unknown).
    Algorithm {
        /// The `alg` as written (shortened).
        alg: String,
        /// Why it is refused.
        why: &'static str,
    },
}

fn malformed(reason: impl Into<String>) -> TokenError {
    TokenError::Malformed(reason.into())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
}

/// Parses a compact JWS whose payload is a JSON object (a JWT).
pub(crate) fn parse(token: &[u8]) -> Result<CompactJws<'_>, TokenError> {
    if token.is_empty() {
        return Err(malformed("the token is empty"));
    }
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!(
            "the token is {} bytes, more than the {MAX_TOKEN_LEN}-byte limit",
            token.len()
        )));
    }
    if let Some(pos) = token.iter().position(|&b| !is_token_byte(b)) {
        return Err(malformed(format!(
            "byte {pos} is not a base64url character or `.` (a JWT has three base64url parts)"
        )));
    }
    // All bytes are ASCII now, so the slices below are valid UTF-8.
    let text = std::str::from_utf8(token).map_err(|_| malformed("the token is not ASCII"))?;
    let mut parts = text.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        let count = text.split('.').count();
        return Err(malformed(if count == 5 {
            "the token has 5 parts: encrypted tokens (JWE) are not supported".to_owned()
        } else {
            format!("the token has {count} part(s); a JWT has 3 separated by `.`")
        }));
    };

    let header = decode_part(header_b64, "header")?;
    let header = match from_slice_strict(&header) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(malformed("the header is not a JSON object")),
        Err(e) => return Err(malformed(format!("the header is not valid JSON: {e}"))),
    };
    let alg = match header.get("alg") {
        Some(Value::String(name)) => match Algorithm::from_name(name) {
            Some(alg) => alg,
            None => {
                return Err(TokenError::Algorithm {
                    alg: shown(name),
                    why: alg::refusal(name),
                });
            }
        },
        Some(_) => return Err(malformed("the header's `alg` is not a string")),
        None => return Err(malformed("the header has no `alg`")),
    };
    if header.contains_key("crit") {
        // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; Warden knows none
        // (this also refuses `b64: false` unencoded payloads).
        return Err(malformed(
            "the header lists critical extensions (`crit`), which are not supported",
        ));
    }
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("the header's `kid` is not a string")),
    };

    let payload = decode_part(payload_b64, "payload")?;
    let claims = match from_slice_strict(&payload) {
        Ok(Value::Object(map)) => map,
        Ok(_) => return Err(malformed("the payload is not a JSON object")),
        Err(e) => return Err(malformed(format!("the payload is not valid JSON: {e}"))),
    };

    let signature = decode_part(signature_b64, "signature")?;
    if signature.is_empty() {
        return Err(malformed("the signature is empty"));
    }

    let signing_len = header_b64.len() + 1 + payload_b64.len();
    Ok(CompactJws {
        alg,
        kid,
        signing_input: &token[..signing_len],
        payload_b64,
        claims,
        signature,
    })
}

fn decode_part(part: &str, name: &str) -> Result<Vec<u8>, TokenError> {
    if part.is_empty() {
        return Err(malformed(format!("the {name} part is empty")));
    }
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|e| malformed(format!("the {name} part is not base64url: {e}")))
}

/// A `NumericDate` claim (`exp`, `nbf`, `iat`): seconds since the epoch, as an `f64`.
pub(crate) fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(format!("`{name}` is not a usable number")),
        },
        Some(_) => Err(format!("`{name}` is not a number (a NumericDate)")),
    }
}

/// An optional string claim; any other JSON type is an error.
pub(crate) fn string_claim<'c>(
    claims: &'c Map<String, Value>,
    name: &str,
) -> Result<Option<&'c str>, String> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("`{name}` is not a string")),
    }
}

/// The `aud` claim: a string or an array of strings (RFC 7519 §4.1.3).
pub(crate) fn audiences(claims: &Map<String, Value>) -> Result<Vec<String>, String> {
    match claims.get("aud") {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err("`aud` has an element that is not a string".to_owned()),
            })
            .collect(),
        Some(_) => Err("`aud` is neither a string nor an array of strings".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str, sig: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), sig)
    }

    fn malformed_reason(t: &str) -> String {
        match parse(t.as_bytes()) {
            Err(TokenError::Malformed(reason)) => reason,
            other => panic!("expected malformed for {t:?}, got {other:?}"),
        }
    }

    #[test]
    fn a_well_formed_token_parses() {
        let t = token(
            r#"{"alg":"ES256","kid":"k1","typ":"JWT"}"#,
            r#"{"iss":"a"}"#,
            "AAAA",
        );
        let jws = parse(t.as_bytes()).expect("parses");
        assert_eq!(jws.alg, Algorithm::ES256);
        assert_eq!(jws.kid.as_deref(), Some("k1"));
        assert_eq!(jws.claims["iss"], "a");
        assert_eq!(jws.signature, vec![0, 0, 0]);
        let dot = t.rfind('.').expect("dot");
        assert_eq!(jws.signing_input, &t.as_bytes()[..dot]);
        assert_eq!(jws.payload_b64, b64(r#"{"iss":"a"}"#));
    }

    #[test]
    fn structure_errors_are_named() {
        assert!(malformed_reason("").contains("empty"));
        assert!(malformed_reason("abc").contains("1 part"));
        assert!(malformed_reason("a.b").contains("2 part"));
        assert!(malformed_reason("a.b.c.d.e").contains("JWE"));
        assert!(malformed_reason("a b.c.d").contains("byte 1"));
        assert!(malformed_reason("ab==.cd.ef").contains("byte 2"));
        assert!(malformed_reason(".x.y").contains("header part is empty"));
        assert!(malformed_reason("!!").contains("byte 0"));
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert!(malformed_reason(&long).contains("limit"));
        // A base64url alphabet string with a length that cannot be base64.
        assert!(malformed_reason("a.b.c").contains("header part is not base64url"));
    }

    #[test]
    fn header_errors_are_named() {
        let p = r#"{"iss":"a"}"#;
        assert!(malformed_reason(&token("[]", p, "AA")).contains("header is not a JSON object"));
        assert!(malformed_reason(&token("{", p, "AA")).contains("header is not valid JSON"));
        assert!(malformed_reason(&token("{}", p, "AA")).contains("no `alg`"));
        assert!(malformed_reason(&token(r#"{"alg":1}"#, p, "AA")).contains("`alg` is not"));
        assert!(malformed_reason(&token(r#"{"alg":"RS256","kid":7}"#, p, "AA")).contains("`kid`"));
        assert!(
            malformed_reason(&token(
                r#"{"alg":"RS256","crit":["b64"],"b64":false}"#,
                p,
                "AA"
            ))
            .contains("crit")
        );
        assert!(
            malformed_reason(&token(r#"{"alg":"RS256","alg":"none"}"#, p, "AA"))
                .contains("duplicate")
        );
    }

    #[test]
    fn refused_algorithms_are_their_own_error() {
        for (alg, why) in [
            ("none", "alg: none"),
            ("HS256", "HMAC"),
            ("XY1", "unsupported"),
        ] {
            let t = token(&format!(r#"{{"alg":"{alg}"}}"#), r#"{"iss":"a"}"#, "AA");
            match parse(t.as_bytes()) {
                Err(TokenError::Algorithm {
                    alg: got,
                    why: reason,
                }) => {
                    assert_eq!(got, alg);
                    assert!(reason.contains(why), "{reason}");
                }
                other => panic!("{alg}: {other:?}"),
            }
        }
        // `alg: none` with an empty signature is still refused for the algorithm first.
        let t = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"iss":"a"}"#));
        assert!(matches!(
            parse(t.as_bytes()),
            Err(TokenError::Algorithm { .. })
        ));
    }

    #[test]
    fn payload_and_signature_errors_are_named() {
        let h = r#"{"alg":"ES256"}"#;
        assert!(malformed_reason(&token(h, "[1]", "AA")).contains("payload is not a JSON object"));
        assert!(malformed_reason(&token(h, "nope", "AA")).contains("payload is not valid JSON"));
        assert!(
            malformed_reason(&token(h, r#"{"sub":"a","sub":"b"}"#, "AA")).contains("duplicate")
        );
        let t = format!("{}.{}.", b64(h), b64("{}"));
        assert!(malformed_reason(&t).contains("signature part is empty"));
        // Non-canonical base64url (trailing bits set) is refused, so a signature has one spelling.
        assert!(
            malformed_reason(&token(h, "{}", "AB")).contains("signature part is not base64url")
        );
    }

    #[test]
    fn claim_helpers_check_types() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"exp":10,"nbf":1.5,"iat":"x","aud":["a","b"],"sub":"s","azp":3}"#,
        )
        .expect("json");
        assert_eq!(numeric_date(&claims, "exp"), Ok(Some(10.0)));
        assert_eq!(numeric_date(&claims, "nbf"), Ok(Some(1.5)));
        assert!(numeric_date(&claims, "iat").is_err());
        assert_eq!(numeric_date(&claims, "missing"), Ok(None));
        assert_eq!(audiences(&claims), Ok(vec!["a".to_owned(), "b".to_owned()]));
        assert_eq!(string_claim(&claims, "sub"), Ok(Some("s")));
        assert!(string_claim(&claims, "azp").is_err());
        let bad: Map<String, Value> = serde_json::from_str(r#"{"aud":[1]}"#).expect("json");
        assert!(audiences(&bad).is_err());
        let bad: Map<String, Value> = serde_json::from_str(r#"{"aud":{}}"#).expect("json");
        assert!(audiences(&bad).is_err());
    }
}
