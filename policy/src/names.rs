//! Kubernetes name and label syntax checks.

/// An RFC 1123 DNS label: `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
pub fn is_dns1123_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// An RFC 1123 DNS subdomain: dot-separated labels, at most 253 characters.
pub fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns1123_label)
}

/// A label name part: `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
/// The empty string is accepted when `allow_empty` (label values may be empty).
fn is_qualified_name_part(s: &str, allow_empty: bool) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return allow_empty;
    }
    b.len() <= 63
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
}

/// Checks a label key (`[prefix/]name`); returns why it is invalid.
pub fn check_label_key(key: &str) -> Result<(), &'static str> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return Err("the prefix must be a DNS subdomain");
    }
    if !is_qualified_name_part(name, false) {
        return Err(
            "the name must be at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        );
    }
    Ok(())
}

/// Checks a label value; returns why it is invalid.
pub fn check_label_value(value: &str) -> Result<(), &'static str> {
    if is_qualified_name_part(value, true) {
        Ok(())
    } else {
        Err(
            "a value must be empty or at most 63 alphanumerics, '-', '_' or '.', starting and ending alphanumeric",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(is_dns1123_label("foo-1"));
        assert!(!is_dns1123_label("Foo"));
        assert!(!is_dns1123_label("-foo"));
        assert!(!is_dns1123_label("a.b"));
        assert!(is_dns1123_subdomain("a.b-c"));
        assert!(!is_dns1123_subdomain("a..b"));
        assert!(check_label_key("app").is_ok());
        assert!(check_label_key("app.kubernetes.io/name").is_ok());
        assert!(check_label_key("gateway.networking.k8s.io/gateway-name").is_ok());
        assert!(check_label_key("/x").is_err());
        assert!(check_label_key("a/b/c").is_err());
        assert!(check_label_key("x_").is_err());
        assert!(check_label_value("").is_ok());
        assert!(check_label_value("v1.2_3").is_ok());
        assert!(check_label_value("bad value").is_err());
    }
}
