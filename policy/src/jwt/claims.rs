//! Looking up claims of a validated token, for `request.auth.claims[...]` and for
//! `outputClaimToHeaders`.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// The claim at `path` in `claims`, each path element one level of nesting
/// (`["a", "b"]` is `claims.a.b`).
pub fn claim_at<'c, S: AsRef<str>>(claims: &'c Value, path: &[S]) -> Option<&'c Value> {
    if path.is_empty() {
        return None;
    }
    path.iter()
        .try_fold(claims, |value, name| value.as_object()?.get(name.as_ref()))
}

/// The string values of the claim at `path`, as AuthorizationPolicy matches them: a string
/// claim gives itself, an array gives each of its string elements (so `claims[groups]`
/// matches any group); other JSON types give nothing.
pub fn claim_strings<'c, S: AsRef<str>>(
    claims: &'c Value,
    path: &[S],
) -> impl Iterator<Item = &'c str> + use<'c, S> {
    let (single, list) = match claim_at(claims, path) {
        Some(Value::String(s)) => (Some(s.as_str()), None),
        Some(Value::Array(items)) => (None, Some(items.iter().filter_map(Value::as_str))),
        _ => (None, None),
    };
    single.into_iter().chain(list.into_iter().flatten())
}

/// Parses an AuthorizationPolicy condition key `request.auth.claims[a][b]` into `["a", "b"]`.
///
/// Returns `None` when the key does not have that form or a name is empty.
pub fn parse_claim_key(key: &str) -> Option<Vec<String>> {
    let mut rest = key.strip_prefix("request.auth.claims")?;
    let mut path = Vec::new();
    while !rest.is_empty() {
        let inner = rest.strip_prefix('[')?;
        let end = inner.find(']')?;
        let name = &inner[..end];
        if name.is_empty() || name.contains('[') {
            return None;
        }
        path.push(name.to_owned());
        rest = &inner[end + 1..];
    }
    (!path.is_empty()).then_some(path)
}

/// The header value `outputClaimToHeaders` writes for a claim, as Envoy does: strings as
/// they are, numbers and booleans as text, arrays and objects as base64 of their JSON.
/// `None` for `null`, or when the text would not be a valid header value.
pub(crate) fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.to_string(),
            (_, Some(u), _) => u.to_string(),
            (_, _, Some(f)) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{f:.0}"),
            _ => n.to_string(),
        },
        Value::Array(_) | Value::Object(_) => STANDARD.encode(value.to_string()),
        Value::Null => return None,
    };
    let valid = text.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f));
    valid.then_some(text)
}

/// Envoy's audience comparison ignores an `http://` or `https://` scheme and a trailing `/`.
pub(crate) fn normalize_audience(aud: &str) -> &str {
    let aud = aud
        .strip_prefix("http://")
        .or_else(|| aud.strip_prefix("https://"))
        .unwrap_or(aud);
    aud.strip_suffix('/').unwrap_or(aud)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_lookup_and_string_lists() {
        let claims = json!({
            "groups": ["admin", 3, "dev"],
            "org": {"team": {"name": "core", "ids": ["a", "b"]}},
            "n": 5,
        });
        let strings = |path: &[&str]| claim_strings(&claims, path).collect::<Vec<_>>();
        assert_eq!(strings(&["groups"]), ["admin", "dev"]);
        assert_eq!(strings(&["org", "team", "name"]), ["core"]);
        assert_eq!(strings(&["org", "team", "ids"]), ["a", "b"]);
        assert!(strings(&["org", "team"]).is_empty());
        assert!(strings(&["n"]).is_empty());
        assert!(strings(&["org", "missing"]).is_empty());
        assert!(strings(&["groups", "admin"]).is_empty());
        assert!(strings(&[]).is_empty());
        assert_eq!(claim_at(&claims, &["n"]), Some(&json!(5)));
    }

    #[test]
    fn claim_keys_parse_like_istio() {
        assert_eq!(
            parse_claim_key("request.auth.claims[groups]"),
            Some(vec!["groups".to_owned()])
        );
        assert_eq!(
            parse_claim_key("request.auth.claims[a][b.c]"),
            Some(vec!["a".to_owned(), "b.c".to_owned()])
        );
        for bad in [
            "request.auth.claims",
            "request.auth.claims[]",
            "request.auth.claims[a",
            "request.auth.claims[a]x",
            "request.auth.claims.a",
            "request.auth.principal",
            "request.auth.claims[a[b]]",
        ] {
            assert_eq!(parse_claim_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn header_values_follow_envoy() {
        assert_eq!(header_value(&json!("x")), Some("x".to_owned()));
        assert_eq!(header_value(&json!(true)), Some("true".to_owned()));
        assert_eq!(header_value(&json!(42)), Some("42".to_owned()));
        assert_eq!(header_value(&json!(-1)), Some("-1".to_owned()));
        assert_eq!(header_value(&json!(1.5)), Some("1.5".to_owned()));
        assert_eq!(header_value(&json!(3.0)), Some("3".to_owned()));
        assert_eq!(
            header_value(&json!(["a", "b"])),
            Some(STANDARD.encode(r#"["a","b"]"#))
        );
        assert_eq!(header_value(&Value::Null), None);
        assert_eq!(header_value(&json!("a\r\nb: c")), None);
        assert_eq!(header_value(&json!("tab\tok")), Some("tab\tok".to_owned()));
    }

    #[test]
    fn audiences_normalize_like_jwt_verify_lib() {
        assert_eq!(
            normalize_audience("https://api.example.com/"),
            "api.example.com"
        );
        assert_eq!(normalize_audience("http://api"), "api");
        assert_eq!(normalize_audience("api/"), "api");
        assert_eq!(normalize_audience("istio-ca"), "istio-ca");
    }
}
