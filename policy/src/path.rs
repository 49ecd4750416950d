//! HTTP path normalization before policy matching, as Istio configures Envoy
//! (`meshConfig.pathNormalization`).
//!
//! The normalized path is both what `paths`/`notPaths` match and what the proxy forwards.

use std::fmt;

/// Istio's `pathNormalization.normalization` options.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum PathNormalization {
    /// No normalization (only the query is cut off for matching); vulnerable to path confusion.
    None,
    /// RFC 3986 normalization: percent-decoding of unreserved characters, `\` to `/`, dot
    /// segments removed. Istio's default.
    #[default]
    Base,
    /// [`Base`](Self::Base), then `//` merged into `/`.
    MergeSlashes,
    /// `%2F`/`%5C` (any case) decoded to `/`/`\` first, then [`MergeSlashes`](Self::MergeSlashes).
    DecodeAndMergeSlashes,
}

impl PathNormalization {
    /// Parses Istio's names (`NONE`, `BASE`, `MERGE_SLASHES`, `DECODE_AND_MERGE_SLASHES`),
    /// case-insensitively, with `-` or `_`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().replace('-', "_").as_str() {
            "NONE" => Some(Self::None),
            "BASE" | "DEFAULT" => Some(Self::Base),
            "MERGE_SLASHES" => Some(Self::MergeSlashes),
            "DECODE_AND_MERGE_SLASHES" => Some(Self::DecodeAndMergeSlashes),
            _ => None,
        }
    }
}

impl fmt::Display for PathNormalization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::None => "NONE",
            Self::Base => "BASE",
            Self::MergeSlashes => "MERGE_SLASHES",
            Self::DecodeAndMergeSlashes => "DECODE_AND_MERGE_SLASHES",
        })
    }
}

/// A request path that must be rejected with HTTP 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// `%00` (or a NUL byte) in the path: Istio always rejects it.
    #[error("path contains an encoded NUL (%00)")]
    NulByte,
    /// The path does not start with `/` (after `\` became `/`).
    #[error("path {0:?} does not start with '/'")]
    NotAbsolute(String),
}

impl PathError {
    /// The HTTP status to answer with.
    pub fn http_status(&self) -> u16 {
        400
    }
}

/// Splits a request target into path and query (the query is not part of the matched path).
pub fn split_query(raw: &str) -> (&str, Option<&str>) {
    match raw.find(['?', '#']) {
        Some(i) if raw.as_bytes()[i] == b'?' => {
            let q = &raw[i + 1..];
            (&raw[..i], Some(q.split('#').next().unwrap_or(q)))
        }
        Some(i) => (&raw[..i], None),
        None => (raw, None),
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// Bytes a canonical path carries percent-encoded.
fn must_escape(b: u8) -> bool {
    b <= 0x20 || b >= 0x7f || matches!(b, b'"' | b'<' | b'>' | b'`')
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// Normalizes a request path (`raw` may include the query, which is dropped) for matching and
/// forwarding. `%00` is always rejected.
pub fn normalize_path(raw: &str, mode: PathNormalization) -> Result<String, PathError> {
    let (path, _) = split_query(raw);
    let bytes = path.as_bytes();
    if bytes.contains(&0) || bytes.windows(3).any(|w| w == b"%00") {
        return Err(PathError::NulByte);
    }
    if mode == PathNormalization::None {
        return Ok(path.to_owned());
    }

    // 1. DECODE_AND_MERGE_SLASHES: %2F and %5C (any case) first.
    // 2. Percent-encoding: unreserved characters decoded (once), other escapes upper-cased,
    //    bytes that must be escaped escaped; `\` becomes `/`.
    let decode_slashes = mode == PathNormalization::DecodeAndMergeSlashes;
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            let c = h * 16 + l;
            if is_unreserved(c) || (decode_slashes && (c == b'/' || c == b'\\')) {
                out.push(if c == b'\\' { b'/' } else { c });
            } else {
                out.extend_from_slice(&[b'%', HEX[usize::from(h)], HEX[usize::from(l)]]);
            }
            i += 3;
            continue;
        }
        if b == b'\\' {
            out.push(b'/');
        } else if must_escape(b) {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        } else {
            out.push(b);
        }
        i += 1;
    }
    if out.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute(path.to_owned()));
    }

    // 3. RFC 3986 section 5.2.4: remove dot segments.
    let mut segments: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    for seg in out[1..].split(|&b| b == b'/') {
        trailing_slash = false;
        match seg {
            b"." => trailing_slash = true,
            b".." => {
                segments.pop();
                trailing_slash = true;
            }
            s => segments.push(s),
        }
    }
    let mut result: Vec<u8> = Vec::with_capacity(out.len());
    for s in &segments {
        result.push(b'/');
        result.extend_from_slice(s);
    }
    if trailing_slash || result.is_empty() {
        result.push(b'/');
    }

    // 4. MERGE_SLASHES.
    if mode != PathNormalization::Base {
        result.dedup_by(|a, b| *a == b'/' && *b == b'/');
    }
    // Only ASCII bytes remain: everything else was percent-encoded.
    Ok(result.into_iter().map(char::from).collect())
}

#[cfg(test)]
mod tests {
    use super::PathNormalization::*;
    use super::*;

    fn n(raw: &str, mode: PathNormalization) -> String {
        normalize_path(raw, mode).unwrap()
    }

    /// The examples of Istio's "Authorization Policy Normalization" and security best-practice pages.
    #[test]
    fn istio_documented_examples() {
        // BASE: RFC 3986 with backslashes converted.
        assert_eq!(n("/a/../b", Base), "/b");
        assert_eq!(n("\\da", Base), "/da");
        assert_eq!(n("/some\\data", Base), "/some/data");
        assert_eq!(n("/public/./data/abc/../xyz", Base), "/public/data/xyz");
        // Single percent-encoded unreserved characters are decoded once.
        assert_eq!(n("/%61%62%63", Base), "/abc");
        assert_eq!(n("/%2d%2E%5f%7e%30%5A", Base), "/-._~0Z");
        assert_eq!(n("/a/%2e%2e/b", Base), "/b");
        // No double decoding.
        assert_eq!(n("/%252e", Base), "/%252e");
        // %2F stays encoded in BASE and MERGE_SLASHES.
        assert_eq!(n("/some%2fdata", Base), "/some%2Fdata");
        // MERGE_SLASHES.
        assert_eq!(n("/a//b", MergeSlashes), "/a/b");
        assert_eq!(n("/some//data///abc", MergeSlashes), "/some/data/abc");
        assert_eq!(n("/a//b", Base), "/a//b");
        // DECODE_AND_MERGE_SLASHES.
        assert_eq!(n("/a%2fb", DecodeAndMergeSlashes), "/a/b");
        assert_eq!(
            n("/some%2fdata/%61%62%63", DecodeAndMergeSlashes),
            "/some/data/abc"
        );
        assert_eq!(n("/a%5Cb", DecodeAndMergeSlashes), "/a/b");
        assert_eq!(n("/a%2F%2Fb", DecodeAndMergeSlashes), "/a/b");
        // The query is not part of the matched path.
        assert_eq!(n("/foo?v=1", Base), "/foo");
        assert_eq!(n("/foo?v=/../x", Base), "/foo");
        // NONE keeps the path as received.
        assert_eq!(n("/../%2Fa../b", None), "/../%2Fa../b");
    }

    #[test]
    fn nul_is_always_rejected() {
        for mode in [None, Base, MergeSlashes, DecodeAndMergeSlashes] {
            assert_eq!(normalize_path("/a%00b", mode), Err(PathError::NulByte));
        }
        assert_eq!(PathError::NulByte.http_status(), 400);
    }

    #[test]
    fn dot_segments_and_edges() {
        assert_eq!(n("/", Base), "/");
        assert_eq!(n("/..", Base), "/");
        assert_eq!(n("/../../a", Base), "/a");
        assert_eq!(n("/a/b/..", Base), "/a/");
        assert_eq!(n("/a/.", Base), "/a/");
        assert_eq!(n("/a//b/../c", Base), "/a//c");
        assert_eq!(n("/a b", Base), "/a%20b");
        assert_eq!(n("/caf\u{e9}", Base), "/caf%C3%A9");
        assert_eq!(n("/x%zz", Base), "/x%zz");
        assert_eq!(n("/x%2a", Base), "/x%2A");
        assert!(matches!(
            normalize_path("a/b", Base),
            Err(PathError::NotAbsolute(_))
        ));
    }

    #[test]
    fn parse_modes() {
        assert_eq!(
            PathNormalization::parse("decode-and-merge-slashes"),
            Some(DecodeAndMergeSlashes)
        );
        assert_eq!(PathNormalization::parse("BASE"), Some(Base));
        assert_eq!(PathNormalization::parse("x"), Option::None);
    }
}
