//! SPIFFE IDs and trust domains, validated per the SPIFFE ID specification.
//!
//! A SPIFFE ID is `spiffe://<trust-domain><path>`:
//! - the scheme is exactly `spiffe://` (lowercase);
//! - the trust domain is 1..=255 characters from `[a-z0-9._-]`; no userinfo (`@`), no port (`:`);
//! - the path is empty or a sequence of `/segment`, each segment non-empty, not `.` or `..`, made of
//!   `[A-Za-z0-9._-]`; no trailing slash;
//! - no query (`?`), fragment (`#`) or percent-encoding (`%`) anywhere;
//! - at most 2048 bytes in all.
//!
//! Istio names a workload `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`;
//! [`SpiffeId::istio`], [`SpiffeId::namespace`] and [`SpiffeId::service_account`] cover that form.

use std::fmt;
use std::str::FromStr;

/// The scheme prefix of every SPIFFE ID.
pub const SCHEME_PREFIX: &str = "spiffe://";
/// Maximum length of a SPIFFE ID in bytes.
pub const MAX_ID_LEN: usize = 2048;
/// Maximum length of a trust domain name in bytes.
pub const MAX_TRUST_DOMAIN_LEN: usize = 255;

/// Why a string is not a valid SPIFFE ID or trust domain. One variant per rule of the spec.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    /// The input is empty.
    #[error("SPIFFE ID is empty")]
    Empty,
    /// The input is longer than 2048 bytes.
    #[error("SPIFFE ID is {len} bytes long, the maximum is {MAX_ID_LEN}")]
    TooLong {
        /// Length of the input in bytes.
        len: usize,
    },
    /// The input does not start with `spiffe://`.
    #[error("SPIFFE ID {input:?} must start with \"spiffe://\"")]
    WrongScheme {
        /// The offending input.
        input: String,
    },
    /// The input contains a query (`?`).
    #[error("SPIFFE ID {input:?} must not contain a query ('?')")]
    Query {
        /// The offending input.
        input: String,
    },
    /// The input contains a fragment (`#`).
    #[error("SPIFFE ID {input:?} must not contain a fragment ('#')")]
    Fragment {
        /// The offending input.
        input: String,
    },
    /// The input contains percent-encoding (`%`).
    #[error("SPIFFE ID {input:?} must not contain percent-encoded characters ('%')")]
    PercentEncoded {
        /// The offending input.
        input: String,
    },
    /// The authority carries userinfo (`user@`).
    #[error("SPIFFE ID {input:?} must not contain userinfo ('@') in the trust domain")]
    UserInfo {
        /// The offending input.
        input: String,
    },
    /// The authority carries a port (`:port`).
    #[error("SPIFFE ID {input:?} must not contain a port (':') in the trust domain")]
    Port {
        /// The offending input.
        input: String,
    },
    /// The trust domain is empty.
    #[error("trust domain is empty in {input:?}")]
    EmptyTrustDomain {
        /// The offending input.
        input: String,
    },
    /// The trust domain is longer than 255 bytes.
    #[error("trust domain is {len} bytes long, the maximum is {MAX_TRUST_DOMAIN_LEN}")]
    TrustDomainTooLong {
        /// Length of the trust domain in bytes.
        len: usize,
    },
    /// The trust domain contains an uppercase letter (trust domains are lowercase).
    #[error("trust domain {trust_domain:?} contains uppercase {ch:?}: trust domains are lowercase")]
    TrustDomainUppercase {
        /// The trust domain as given.
        trust_domain: String,
        /// The first uppercase character.
        ch: char,
    },
    /// The trust domain contains a character outside `[a-z0-9._-]`.
    #[error(
        "trust domain {trust_domain:?} contains {ch:?} at byte {index}: only [a-z0-9._-] are allowed"
    )]
    TrustDomainChar {
        /// The trust domain as given.
        trust_domain: String,
        /// The offending character.
        ch: char,
        /// Byte offset of the character in the trust domain.
        index: usize,
    },
    /// The path ends with `/`.
    #[error("SPIFFE ID {input:?} must not end with '/'")]
    TrailingSlash {
        /// The offending input.
        input: String,
    },
    /// The path contains an empty segment (`//`).
    #[error("SPIFFE ID {input:?} contains an empty path segment ('//')")]
    EmptySegment {
        /// The offending input.
        input: String,
    },
    /// The path contains a `.` or `..` segment.
    #[error("SPIFFE ID {input:?} contains the relative path segment {segment:?}")]
    DotSegment {
        /// The offending input.
        input: String,
        /// `.` or `..`.
        segment: String,
    },
    /// A path segment contains a character outside `[A-Za-z0-9._-]`.
    #[error(
        "path segment {segment:?} contains {ch:?}: only [A-Za-z0-9._-] are allowed in SPIFFE ID paths"
    )]
    PathChar {
        /// The offending segment.
        segment: String,
        /// The offending character.
        ch: char,
    },
}

fn is_td_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
}

fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Validates a trust domain name (no scheme, no path).
fn validate_trust_domain(td: &str, input: &str) -> Result<(), SpiffeIdError> {
    if td.contains('@') {
        return Err(SpiffeIdError::UserInfo {
            input: input.to_owned(),
        });
    }
    if td.contains(':') {
        return Err(SpiffeIdError::Port {
            input: input.to_owned(),
        });
    }
    if td.is_empty() {
        return Err(SpiffeIdError::EmptyTrustDomain {
            input: input.to_owned(),
        });
    }
    if td.len() > MAX_TRUST_DOMAIN_LEN {
        return Err(SpiffeIdError::TrustDomainTooLong { len: td.len() });
    }
    if let Some(ch) = td.chars().find(char::is_ascii_uppercase) {
        return Err(SpiffeIdError::TrustDomainUppercase {
            trust_domain: td.to_owned(),
            ch,
        });
    }
    if let Some((index, ch)) = td
        .char_indices()
        .find(|&(_, c)| !c.is_ascii() || !is_td_char(c as u8))
    {
        return Err(SpiffeIdError::TrustDomainChar {
            trust_domain: td.to_owned(),
            ch,
            index,
        });
    }
    Ok(())
}

/// Validates one path segment (without slashes).
fn validate_segment(segment: &str, input: &str) -> Result<(), SpiffeIdError> {
    if segment.is_empty() {
        return Err(SpiffeIdError::EmptySegment {
            input: input.to_owned(),
        });
    }
    if segment == "." || segment == ".." {
        return Err(SpiffeIdError::DotSegment {
            input: input.to_owned(),
            segment: segment.to_owned(),
        });
    }
    if let Some(ch) = segment
        .chars()
        .find(|&c| !c.is_ascii() || !is_path_char(c as u8))
    {
        return Err(SpiffeIdError::PathChar {
            segment: segment.to_owned(),
            ch,
        });
    }
    Ok(())
}

/// Checks the characters that are forbidden anywhere in a SPIFFE ID.
fn reject_uri_parts(input: &str) -> Result<(), SpiffeIdError> {
    if input.contains('?') {
        return Err(SpiffeIdError::Query {
            input: input.to_owned(),
        });
    }
    if input.contains('#') {
        return Err(SpiffeIdError::Fragment {
            input: input.to_owned(),
        });
    }
    if input.contains('%') {
        return Err(SpiffeIdError::PercentEncoded {
            input: input.to_owned(),
        });
    }
    Ok(())
}

/// A validated SPIFFE trust domain name, e.g. `cluster.local`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrustDomain(Box<str>);

impl TrustDomain {
    /// Validates `name` as a trust domain. Accepts `example.org`, not `spiffe://example.org`.
    pub fn new(name: &str) -> Result<Self, SpiffeIdError> {
        reject_uri_parts(name)?;
        if name.contains('/') {
            // A trust domain has no path: report the first bad character precisely.
            let index = name.find('/').unwrap_or(0);
            return Err(SpiffeIdError::TrustDomainChar {
                trust_domain: name.to_owned(),
                ch: '/',
                index,
            });
        }
        validate_trust_domain(name, name)?;
        Ok(Self(name.into()))
    }

    /// The name as a string, e.g. `cluster.local`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The trust domain's own SPIFFE ID, `spiffe://<name>` (empty path).
    pub fn id(&self) -> SpiffeId {
        SpiffeId {
            uri: format!("{SCHEME_PREFIX}{}", self.0).into(),
            td_end: SCHEME_PREFIX.len() + self.0.len(),
        }
    }
}

impl Default for TrustDomain {
    /// Istio's default trust domain, `cluster.local`.
    fn default() -> Self {
        Self("cluster.local".into())
    }
}

impl fmt::Display for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TrustDomain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TrustDomain({})", self.0)
    }
}

impl FromStr for TrustDomain {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for TrustDomain {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// A validated SPIFFE ID, e.g. `spiffe://cluster.local/ns/default/sa/bookinfo`.
///
/// Equality, ordering and hashing are those of the full URI string (SPIFFE IDs are compared
/// exactly; the path is case-sensitive).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    uri: Box<str>,
    /// Byte offset in `uri` where the trust domain ends (and the path starts).
    td_end: usize,
}

impl SpiffeId {
    /// Parses and validates a SPIFFE ID.
    pub fn parse(input: &str) -> Result<Self, SpiffeIdError> {
        if input.is_empty() {
            return Err(SpiffeIdError::Empty);
        }
        if input.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: input.len() });
        }
        let Some(rest) = input.strip_prefix(SCHEME_PREFIX) else {
            return Err(SpiffeIdError::WrongScheme {
                input: input.to_owned(),
            });
        };
        reject_uri_parts(input)?;
        let (td, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        validate_trust_domain(td, input)?;
        if !path.is_empty() {
            if path.ends_with('/') {
                return Err(SpiffeIdError::TrailingSlash {
                    input: input.to_owned(),
                });
            }
            for segment in path[1..].split('/') {
                validate_segment(segment, input)?;
            }
        }
        Ok(Self {
            uri: input.into(),
            td_end: SCHEME_PREFIX.len() + td.len(),
        })
    }

    /// Builds a SPIFFE ID from a trust domain and path segments (each validated, joined with `/`).
    pub fn from_segments<S: AsRef<str>>(
        trust_domain: &TrustDomain,
        segments: &[S],
    ) -> Result<Self, SpiffeIdError> {
        let mut uri = String::with_capacity(64);
        uri.push_str(SCHEME_PREFIX);
        uri.push_str(trust_domain.as_str());
        let td_end = uri.len();
        for segment in segments {
            let segment = segment.as_ref();
            uri.push('/');
            uri.push_str(segment);
            validate_segment(segment, &uri)?;
        }
        if uri.len() > MAX_ID_LEN {
            return Err(SpiffeIdError::TooLong { len: uri.len() });
        }
        Ok(Self {
            uri: uri.into(),
            td_end,
        })
    }

    /// The Istio workload identity `spiffe://<td>/ns/<namespace>/sa/<service_account>`.
    pub fn istio(
        trust_domain: &TrustDomain,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, SpiffeIdError> {
        Self::from_segments(trust_domain, &["ns", namespace, "sa", service_account])
    }

    /// The trust domain name, e.g. `cluster.local`.
    pub fn trust_domain_name(&self) -> &str {
        &self.uri[SCHEME_PREFIX.len()..self.td_end]
    }

    /// The trust domain.
    pub fn trust_domain(&self) -> TrustDomain {
        TrustDomain(self.trust_domain_name().into())
    }

    /// The path, e.g. `/ns/default/sa/bookinfo`; empty for a trust domain's own ID.
    pub fn path(&self) -> &str {
        &self.uri[self.td_end..]
    }

    /// The full URI, e.g. `spiffe://cluster.local/ns/default/sa/bookinfo`.
    pub fn as_str(&self) -> &str {
        &self.uri
    }

    /// `(namespace, service_account)` when the path is exactly `/ns/<ns>/sa/<sa>`.
    fn istio_parts(&self) -> Option<(&str, &str)> {
        let mut it = self.path().strip_prefix('/')?.split('/');
        match (it.next(), it.next(), it.next(), it.next(), it.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => Some((ns, sa)),
            _ => None,
        }
    }

    /// The namespace, only for Istio identities of the form `/ns/<ns>/sa/<sa>`.
    pub fn namespace(&self) -> Option<&str> {
        self.istio_parts().map(|(ns, _)| ns)
    }

    /// The service account, only for Istio identities of the form `/ns/<ns>/sa/<sa>`.
    pub fn service_account(&self) -> Option<&str> {
        self.istio_parts().map(|(_, sa)| sa)
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri)
    }
}

impl fmt::Debug for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpiffeId({})", self.uri)
    }
}

impl FromStr for SpiffeId {
    type Err = SpiffeIdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl AsRef<str> for SpiffeId {
    fn as_ref(&self) -> &str {
        &self.uri
    }
}

impl serde::Serialize for SpiffeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.uri)
    }
}

impl<'de> serde::Deserialize<'de> for SpiffeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for TrustDomain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> serde::Deserialize<'de> for TrustDomain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_ids() {
        type Case<'a> = (&'a str, &'a str, &'a str, Option<(&'a str, &'a str)>);
        let cases: &[Case<'_>] = &[
            (
                "spiffe://cluster.local/ns/default/sa/bookinfo",
                "cluster.local",
                "/ns/default/sa/bookinfo",
                Some(("default", "bookinfo")),
            ),
            ("spiffe://example.org", "example.org", "", None),
            ("spiffe://a", "a", "", None),
            (
                "spiffe://my_td-1.example/Path/With-Mixed_Case.1",
                "my_td-1.example",
                "/Path/With-Mixed_Case.1",
                None,
            ),
            (
                "spiffe://td/ns/a/sa/b/extra",
                "td",
                "/ns/a/sa/b/extra",
                None,
            ),
            ("spiffe://td/ns/a/sa", "td", "/ns/a/sa", None),
            ("spiffe://td/ns/a/xa/b", "td", "/ns/a/xa/b", None),
            ("spiffe://td/...", "td", "/...", None),
            ("spiffe://td/.a/..b", "td", "/.a/..b", None),
        ];
        for (input, td, path, istio) in cases {
            let id = SpiffeId::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(id.trust_domain_name(), *td, "{input}");
            assert_eq!(id.trust_domain().as_str(), *td, "{input}");
            assert_eq!(id.path(), *path, "{input}");
            assert_eq!(id.to_string(), *input);
            assert_eq!(id.namespace(), istio.map(|(ns, _)| ns), "{input}");
            assert_eq!(id.service_account(), istio.map(|(_, sa)| sa), "{input}");
            let again: SpiffeId = input.parse().unwrap();
            assert_eq!(again, id);
        }
    }

    #[test]
    fn invalid_ids_each_with_its_rule() {
        use SpiffeIdError as E;
        let long_path = format!("spiffe://td/{}", "a".repeat(MAX_ID_LEN));
        let long_td = format!("spiffe://{}", "a".repeat(256));
        type Check = fn(&SpiffeIdError) -> bool;
        let cases: Vec<(&str, Check)> = vec![
            ("", |e| matches!(e, E::Empty)),
            (long_path.as_str(), |e| matches!(e, E::TooLong { .. })),
            (long_td.as_str(), |e| {
                matches!(e, E::TrustDomainTooLong { len: 256 })
            }),
            ("http://td/x", |e| matches!(e, E::WrongScheme { .. })),
            ("SPIFFE://td/x", |e| matches!(e, E::WrongScheme { .. })),
            ("spiffe:/td/x", |e| matches!(e, E::WrongScheme { .. })),
            ("spiffe//td/x", |e| matches!(e, E::WrongScheme { .. })),
            ("td/ns/a", |e| matches!(e, E::WrongScheme { .. })),
            (" spiffe://td/x", |e| matches!(e, E::WrongScheme { .. })),
            ("spiffe://td/x?y=1", |e| matches!(e, E::Query { .. })),
            ("spiffe://td?x", |e| matches!(e, E::Query { .. })),
            ("spiffe://td/x#frag", |e| matches!(e, E::Fragment { .. })),
            ("spiffe://td#", |e| matches!(e, E::Fragment { .. })),
            ("spiffe://td/a%20b", |e| {
                matches!(e, E::PercentEncoded { .. })
            }),
            ("spiffe://t%41d/x", |e| {
                matches!(e, E::PercentEncoded { .. })
            }),
            ("spiffe://user@td/x", |e| matches!(e, E::UserInfo { .. })),
            ("spiffe://user:pw@td/x", |e| matches!(e, E::UserInfo { .. })),
            ("spiffe://td:8080/x", |e| matches!(e, E::Port { .. })),
            ("spiffe://td:/x", |e| matches!(e, E::Port { .. })),
            ("spiffe://", |e| matches!(e, E::EmptyTrustDomain { .. })),
            ("spiffe:///ns/a", |e| {
                matches!(e, E::EmptyTrustDomain { .. })
            }),
            ("spiffe://Cluster.local/x", |e| {
                matches!(e, E::TrustDomainUppercase { ch: 'C', .. })
            }),
            ("spiffe://td!/x", |e| {
                matches!(
                    e,
                    E::TrustDomainChar {
                        ch: '!',
                        index: 2,
                        ..
                    }
                )
            }),
            ("spiffe://t d/x", |e| {
                matches!(e, E::TrustDomainChar { ch: ' ', .. })
            }),
            ("spiffe://tü/x", |e| {
                matches!(e, E::TrustDomainChar { ch: 'ü', .. })
            }),
            ("spiffe://[::1]/x", |e| {
                matches!(e, E::Port { .. }) // ':' inside an IPv6 literal: a port-like authority
            }),
            ("spiffe://td/", |e| matches!(e, E::TrailingSlash { .. })),
            ("spiffe://td/ns/", |e| matches!(e, E::TrailingSlash { .. })),
            ("spiffe://td//ns", |e| matches!(e, E::EmptySegment { .. })),
            ("spiffe://td/ns//sa", |e| {
                matches!(e, E::EmptySegment { .. })
            }),
            (
                "spiffe://td/./x",
                |e| matches!(e, E::DotSegment { segment, .. } if segment == "."),
            ),
            (
                "spiffe://td/x/..",
                |e| matches!(e, E::DotSegment { segment, .. } if segment == ".."),
            ),
            ("spiffe://td/a/../b", |e| matches!(e, E::DotSegment { .. })),
            ("spiffe://td/a b", |e| {
                matches!(e, E::PathChar { ch: ' ', .. })
            }),
            ("spiffe://td/a:b", |e| {
                matches!(e, E::PathChar { ch: ':', .. })
            }),
            ("spiffe://td/a@b", |e| {
                matches!(e, E::PathChar { ch: '@', .. })
            }),
            ("spiffe://td/a*b", |e| {
                matches!(e, E::PathChar { ch: '*', .. })
            }),
            ("spiffe://td/ns/é", |e| {
                matches!(e, E::PathChar { ch: 'é', .. })
            }),
            ("spiffe://td/a\\b", |e| {
                matches!(e, E::PathChar { ch: '\\', .. })
            }),
        ];
        for (input, check) in cases {
            let err = SpiffeId::parse(input).expect_err(input);
            assert!(check(&err), "{input:?}: unexpected error {err:?}");
            // Every error message names the rule in words.
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn max_length_is_inclusive() {
        let prefix = "spiffe://td/";
        let id = format!("{prefix}{}", "a".repeat(MAX_ID_LEN - prefix.len()));
        assert_eq!(id.len(), MAX_ID_LEN);
        SpiffeId::parse(&id).unwrap();
        let td = "a".repeat(MAX_TRUST_DOMAIN_LEN);
        SpiffeId::parse(&format!("spiffe://{td}/x")).unwrap();
        TrustDomain::new(&td).unwrap();
    }

    #[test]
    fn istio_constructor_and_accessors() {
        let td = TrustDomain::default();
        let id = SpiffeId::istio(&td, "default", "sleep").unwrap();
        assert_eq!(id.as_str(), "spiffe://cluster.local/ns/default/sa/sleep");
        assert_eq!(id.namespace(), Some("default"));
        assert_eq!(id.service_account(), Some("sleep"));
        assert_eq!(id.trust_domain(), td);
        assert!(matches!(
            SpiffeId::istio(&td, "", "sleep"),
            Err(SpiffeIdError::EmptySegment { .. })
        ));
        assert!(matches!(
            SpiffeId::istio(&td, "..", "sleep"),
            Err(SpiffeIdError::DotSegment { .. })
        ));
        assert!(matches!(
            SpiffeId::istio(&td, "a/b", "sleep"),
            Err(SpiffeIdError::PathChar { ch: '/', .. })
        ));
        assert!(matches!(
            SpiffeId::istio(&td, "ns", &"x".repeat(MAX_ID_LEN)),
            Err(SpiffeIdError::TooLong { .. })
        ));
        assert_eq!(td.id().as_str(), "spiffe://cluster.local");
        assert_eq!(td.id().path(), "");
    }

    #[test]
    fn trust_domain_rules() {
        assert!(TrustDomain::new("example.org").is_ok());
        assert!(matches!(
            TrustDomain::new(""),
            Err(SpiffeIdError::EmptyTrustDomain { .. })
        ));
        assert!(matches!(
            TrustDomain::new("Example.org"),
            Err(SpiffeIdError::TrustDomainUppercase { .. })
        ));
        assert!(matches!(
            TrustDomain::new("example.org/x"),
            Err(SpiffeIdError::TrustDomainChar { ch: '/', .. })
        ));
        assert!(matches!(
            TrustDomain::new("example.org:443"),
            Err(SpiffeIdError::Port { .. })
        ));
        assert!(matches!(
            TrustDomain::new(&"a".repeat(256)),
            Err(SpiffeIdError::TrustDomainTooLong { len: 256 })
        ));
    }

    #[test]
    fn serde_round_trip_validates() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, "\"spiffe://cluster.local/ns/a/sa/b\"");
        let back: SpiffeId = serde_json::from_str(&json).unwrap();
        assert_eq!(back, id);
        let bad = serde_json::from_str::<SpiffeId>("\"spiffe://td/a/../b\"");
        assert!(
            bad.unwrap_err()
                .to_string()
                .contains("relative path segment")
        );
        let td: TrustDomain = serde_json::from_str("\"example.org\"").unwrap();
        assert_eq!(td.as_str(), "example.org");
    }

    #[test]
    fn ordering_and_hash_follow_the_uri() {
        use std::collections::HashSet;
        let a = SpiffeId::parse("spiffe://td/a").unwrap();
        let b = SpiffeId::parse("spiffe://td/b").unwrap();
        let upper = SpiffeId::parse("spiffe://td/A").unwrap();
        assert!(a < b);
        assert_ne!(a, upper, "paths are case-sensitive");
        let set: HashSet<_> = [a.clone(), a.clone(), b].into_iter().collect();
        assert_eq!(set.len(), 2);
    }
}
