//! Precompiled string matchers with Istio's semantics. Matching never allocates.

use std::fmt;

/// Istio's string match: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any non-empty value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum StrMatch {
    /// Equal to.
    Exact(Box<str>),
    /// Starts with.
    Prefix(Box<str>),
    /// Ends with.
    Suffix(Box<str>),
    /// Any non-empty value.
    Any,
}

impl StrMatch {
    /// Istio's rule: `*` first, then a leading `*` (suffix), then a trailing `*` (prefix).
    pub(crate) fn parse(v: &str) -> StrMatch {
        if v == "*" {
            StrMatch::Any
        } else if let Some(s) = v.strip_prefix('*') {
            StrMatch::Suffix(s.into())
        } else if let Some(p) = v.strip_suffix('*') {
            StrMatch::Prefix(p.into())
        } else {
            StrMatch::Exact(v.into())
        }
    }

    /// Like [`StrMatch::parse`], lower-casing the pattern (for case-insensitive matching).
    pub(crate) fn parse_lowercase(v: &str) -> StrMatch {
        StrMatch::parse(&v.to_ascii_lowercase())
    }

    #[inline]
    pub(crate) fn matches(&self, s: &str) -> bool {
        match self {
            StrMatch::Exact(e) => s == &**e,
            StrMatch::Prefix(p) => s.starts_with(&**p),
            StrMatch::Suffix(x) => s.ends_with(&**x),
            StrMatch::Any => !s.is_empty(),
        }
    }

    /// Case-insensitive match against a lower-cased pattern.
    #[inline]
    pub(crate) fn matches_ignore_case(&self, s: &str) -> bool {
        let s = s.as_bytes();
        match self {
            StrMatch::Exact(e) => s.eq_ignore_ascii_case(e.as_bytes()),
            StrMatch::Prefix(p) => {
                s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p.as_bytes())
            }
            StrMatch::Suffix(x) => {
                s.len() >= x.len() && s[s.len() - x.len()..].eq_ignore_ascii_case(x.as_bytes())
            }
            StrMatch::Any => !s.is_empty(),
        }
    }
}

/// An Envoy header matcher over all values of one header, joined with `,` as Envoy does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HeaderMatch {
    /// The header is present (any value, even empty): Istio's `*`.
    Present,
    /// Exact, prefix or suffix on the joined value.
    Value(StrMatch),
}

impl HeaderMatch {
    pub(crate) fn parse(v: &str) -> HeaderMatch {
        match StrMatch::parse(v) {
            StrMatch::Any => HeaderMatch::Present,
            m => HeaderMatch::Value(m),
        }
    }

    /// Matches the values of one header (in order); `values` makes a fresh iterator over them.
    /// No values means the header is absent.
    pub(crate) fn matches<'a, F, I>(&self, values: F) -> bool
    where
        F: Fn() -> I,
        I: DoubleEndedIterator<Item = &'a [u8]>,
    {
        let mut probe = values();
        let Some(first) = probe.next() else {
            return false;
        };
        let single = probe.next().is_none();
        match self {
            HeaderMatch::Present => true,
            HeaderMatch::Value(m) if single => match m {
                StrMatch::Exact(e) => first == e.as_bytes(),
                StrMatch::Prefix(p) => first.starts_with(p.as_bytes()),
                StrMatch::Suffix(x) => first.ends_with(x.as_bytes()),
                StrMatch::Any => !first.is_empty(),
            },
            HeaderMatch::Value(m) => match m {
                StrMatch::Exact(e) => {
                    joined_len(values()) == e.len() && joined_starts_with(values(), e.as_bytes())
                }
                StrMatch::Prefix(p) => joined_starts_with(values(), p.as_bytes()),
                StrMatch::Suffix(x) => joined_ends_with(values(), x.as_bytes()),
                // Several values always join to a non-empty string.
                StrMatch::Any => true,
            },
        }
    }
}

fn joined_len<'a>(values: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut n = 0;
    for (i, v) in values.enumerate() {
        n += v.len() + usize::from(i > 0);
    }
    n
}

/// Whether `v1,v2,...` starts with `want`.
fn joined_starts_with<'a>(values: impl Iterator<Item = &'a [u8]>, mut want: &[u8]) -> bool {
    for (i, v) in values.enumerate() {
        if i > 0 {
            match want.split_first() {
                None => return true,
                Some((b',', rest)) => want = rest,
                Some(_) => return false,
            }
        }
        let n = v.len().min(want.len());
        if v[..n] != want[..n] {
            return false;
        }
        want = &want[n..];
        if want.is_empty() {
            return true;
        }
    }
    want.is_empty()
}

/// Whether `v1,v2,...` ends with `want`, walking the values from the last.
fn joined_ends_with<'a>(
    values: impl DoubleEndedIterator<Item = &'a [u8]>,
    mut want: &[u8],
) -> bool {
    for (i, v) in values.rev().enumerate() {
        if i > 0 {
            match want.split_last() {
                None => return true,
                Some((b',', rest)) => want = rest,
                Some(_) => return false,
            }
        }
        let n = v.len().min(want.len());
        if v[v.len() - n..] != want[want.len() - n..] {
            return false;
        }
        want = &want[..want.len() - n];
        if want.is_empty() {
            return true;
        }
    }
    want.is_empty()
}

/// A glob where `*` matches any run of characters (also empty and across `/`), anchored at both ends.
/// Istio's `source.namespace` / `namespaces` match is the regex `.*/ns/<v>/.*` with `*` -> `.*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    parts: Box<[Box<str>]>,
}

impl Glob {
    pub(crate) fn new(pattern: &str) -> Glob {
        Glob {
            parts: pattern.split('*').map(Into::into).collect(),
        }
    }

    /// The namespace matcher for a `namespaces` value.
    pub(crate) fn namespace(v: &str) -> Glob {
        Glob::new(&format!("*/ns/{v}/*"))
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let parts = &self.parts;
        if parts.len() == 1 {
            return s == &*parts[0];
        }
        let first = &*parts[0];
        let last = &*parts[parts.len() - 1];
        if s.len() < first.len() + last.len() || !s.starts_with(first) || !s.ends_with(last) {
            return false;
        }
        let mut rest = &s[first.len()..s.len() - last.len()];
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(&**mid) {
                Some(at) => rest = &rest[at + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

/// A `serviceAccounts` entry: Istio's regex `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceAccountMatch {
    ns_part: Box<str>,
    /// `/sa/<sa>`.
    sa_slash: Box<str>,
}

impl ServiceAccountMatch {
    /// `sa` (in `default_namespace`) or `ns/sa`.
    pub(crate) fn new(value: &str, default_namespace: &str) -> ServiceAccountMatch {
        let (ns, sa) = value.split_once('/').unwrap_or((default_namespace, value));
        ServiceAccountMatch {
            ns_part: format!("/ns/{ns}/").into(),
            sa_slash: format!("/sa/{sa}").into(),
        }
    }

    /// Matches a SPIFFE ID given without its `spiffe://` scheme.
    pub(crate) fn matches(&self, rest: &str) -> bool {
        // `.+` before `/ns/`: the occurrence must not start at the very beginning.
        let mut from = second_char(rest);
        while let Some(at) = rest.get(from..).and_then(|r| r.find(&*self.ns_part)) {
            let pos = from + at;
            if self.tail_matches(&rest[pos + self.ns_part.len()..]) {
                return true;
            }
            // The needle starts with `/`, so `pos + 1` is a character boundary.
            from = pos + 1;
        }
        false
    }

    /// `(.+/|)sa/<sa>(/.+)?` anchored at both ends.
    fn tail_matches(&self, s: &str) -> bool {
        let needle = &*self.sa_slash;
        let sa = &needle[1..];
        let end_ok = |after: &str| after.is_empty() || (after.len() > 1 && after.starts_with('/'));
        if let Some(after) = s.strip_prefix(sa)
            && end_ok(after)
        {
            return true;
        }
        // `.+/sa/<sa>`: `/sa/<sa>` preceded by at least one character.
        let mut from = second_char(s);
        while let Some(at) = s.get(from..).and_then(|r| r.find(needle)) {
            let pos = from + at;
            if end_ok(&s[pos + needle.len()..]) {
                return true;
            }
            from = pos + 1;
        }
        false
    }
}

/// The byte offset of the second character (the length of `s` if it has at most one).
fn second_char(s: &str) -> usize {
    s.char_indices().nth(1).map_or(s.len(), |(i, _)| i)
}

/// A request principal matcher: Istio splits `iss/sub` at the last `/` and matches the JWT's
/// `iss` and `sub` claims separately.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IssSubMatch {
    pub(crate) iss: StrMatch,
    pub(crate) sub: StrMatch,
}

impl IssSubMatch {
    pub(crate) fn parse(value: &str) -> IssSubMatch {
        let (iss, sub, found) = match value.rfind('/') {
            Some(i) => (&value[..i], &value[i + 1..], true),
            None => (value, "", false),
        };
        let exact = |s: &str| StrMatch::Exact(s.into());
        if value == "*" {
            IssSubMatch {
                iss: StrMatch::Any,
                sub: StrMatch::Any,
            }
        } else if let Some(rest) = value.strip_prefix('*') {
            if found {
                IssSubMatch {
                    iss: if iss == "*" {
                        StrMatch::Any
                    } else {
                        StrMatch::Suffix(iss[1..].into())
                    },
                    sub: exact(sub),
                }
            } else {
                IssSubMatch {
                    iss: StrMatch::Any,
                    sub: StrMatch::Suffix(rest.into()),
                }
            }
        } else if let Some(stripped) = value.strip_suffix('*') {
            if found {
                IssSubMatch {
                    iss: exact(iss),
                    sub: if sub == "*" {
                        StrMatch::Any
                    } else {
                        StrMatch::Prefix(sub[..sub.len() - 1].into())
                    },
                }
            } else {
                IssSubMatch {
                    iss: StrMatch::Prefix(stripped.into()),
                    sub: StrMatch::Any,
                }
            }
        } else {
            IssSubMatch {
                iss: exact(iss),
                sub: exact(sub),
            }
        }
    }

    pub(crate) fn matches(&self, iss: &str, sub: &str) -> bool {
        self.iss.matches(iss) && self.sub.matches(sub)
    }
}

/// A path template segment.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tpl {
    /// Literal text.
    Lit(Box<str>),
    /// `{*}`: one or more characters other than `/`.
    One,
    /// `{**}`: anything, including `/` (must be the last operator).
    Any,
}

/// An Istio path template (`/foo/{*}/bar`, `/api/{**}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathTemplate {
    parts: Box<[Tpl]>,
}

impl PathTemplate {
    /// Whether a path value is a template.
    pub(crate) fn is_template(v: &str) -> bool {
        v.contains("{*}") || v.contains("{**}")
    }

    /// `Some(None)`: not a template; `Some(Some(t))`: a valid template; `None`: invalid.
    pub(crate) fn parse(v: &str) -> Option<Option<PathTemplate>> {
        if !Self::is_template(v) {
            return Some(None);
        }
        let mut parts = Vec::new();
        let mut rest = v;
        let mut seen_any = false;
        while !rest.is_empty() {
            let next = rest.find('{').unwrap_or(rest.len());
            let lit = &rest[..next];
            if !lit.is_empty() {
                if lit.contains(['}', '*']) {
                    return None;
                }
                parts.push(Tpl::Lit(lit.into()));
            }
            rest = &rest[next..];
            if rest.is_empty() {
                break;
            }
            let (op, len) = if rest.starts_with("{**}") {
                (Tpl::Any, 4)
            } else if rest.starts_with("{*}") {
                (Tpl::One, 3)
            } else {
                return None;
            };
            if seen_any {
                return None;
            }
            seen_any = matches!(op, Tpl::Any);
            parts.push(op);
            rest = &rest[len..];
        }
        Some(Some(PathTemplate {
            parts: parts.into(),
        }))
    }

    pub(crate) fn matches(&self, path: &str) -> bool {
        fn go(parts: &[Tpl], s: &str) -> bool {
            match parts.split_first() {
                None => s.is_empty(),
                Some((Tpl::Lit(l), rest)) => s.strip_prefix(&**l).is_some_and(|s| go(rest, s)),
                Some((Tpl::Any, rest)) => {
                    // Only literals can follow `{**}`.
                    let tail: usize = rest
                        .iter()
                        .map(|t| match t {
                            Tpl::Lit(l) => l.len(),
                            _ => 0,
                        })
                        .sum();
                    s.len() >= tail && go(rest, &s[s.len() - tail..])
                }
                Some((Tpl::One, rest)) => {
                    let seg_end = s.find('/').unwrap_or(s.len());
                    (1..=seg_end).any(|n| go(rest, &s[n..]))
                }
            }
        }
        go(&self.parts, path)
    }
}

/// A `paths` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PathMatch {
    /// Exact / prefix / suffix / any.
    Str(StrMatch),
    /// A `{*}` / `{**}` template.
    Template(PathTemplate),
}

impl PathMatch {
    /// `None` for an invalid template.
    pub(crate) fn parse(v: &str) -> Option<PathMatch> {
        match PathTemplate::parse(v)? {
            Some(t) => Some(PathMatch::Template(t)),
            None => Some(PathMatch::Str(StrMatch::parse(v))),
        }
    }

    #[inline]
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Str(m) => m.matches(path),
            PathMatch::Template(t) => t.matches(path),
        }
    }
}

impl fmt::Display for StrMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StrMatch::Exact(e) => write!(f, "{e:?}"),
            StrMatch::Prefix(p) => write!(f, "\"{p}*\""),
            StrMatch::Suffix(s) => write!(f, "\"*{s}\""),
            StrMatch::Any => f.write_str("\"*\""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_match() {
        assert!(StrMatch::parse("abc").matches("abc"));
        assert!(!StrMatch::parse("abc").matches("abcd"));
        assert!(StrMatch::parse("abc*").matches("abc"));
        assert!(StrMatch::parse("abc*").matches("abcd"));
        assert!(StrMatch::parse("*abc").matches("xabc"));
        assert!(!StrMatch::parse("*abc").matches("abcx"));
        assert!(StrMatch::parse("*").matches("x"));
        assert!(!StrMatch::parse("*").matches(""));
        // A leading `*` wins: `*a*` is the suffix `a*`.
        assert!(StrMatch::parse("*a*").matches("xa*"));
        assert!(!StrMatch::parse("*a*").matches("xab"));
        let host = StrMatch::parse_lowercase("*.Example.COM");
        assert!(host.matches_ignore_case("api.EXAMPLE.com"));
        assert!(!host.matches_ignore_case("example.com"));
    }

    type Values<'a> = std::iter::Map<std::slice::Iter<'a, &'a str>, fn(&&'a str) -> &'a [u8]>;

    fn vals<'a>(v: &'a [&'a str]) -> impl Fn() -> Values<'a> {
        move || {
            v.iter()
                .map((|s: &&str| s.as_bytes()) as fn(&&'a str) -> &'a [u8])
        }
    }

    #[test]
    fn header_values_are_joined_with_commas() {
        let two = ["a", "b"];
        assert!(HeaderMatch::parse("a,b").matches(vals(&two)));
        assert!(!HeaderMatch::parse("a").matches(vals(&two)));
        assert!(HeaderMatch::parse("a,*").matches(vals(&two)));
        assert!(HeaderMatch::parse("*,b").matches(vals(&two)));
        assert!(HeaderMatch::parse("*b").matches(vals(&two)));
        assert!(!HeaderMatch::parse("*a").matches(vals(&two)));
        assert!(!HeaderMatch::parse("a,b,c").matches(vals(&two)));
        let three = ["xy", "", "z"];
        assert!(HeaderMatch::parse("xy,,z").matches(vals(&three)));
        assert!(HeaderMatch::parse("*y,,z").matches(vals(&three)));
        assert!(HeaderMatch::parse("xy,,*").matches(vals(&three)));
        let empty = [""];
        assert!(HeaderMatch::parse("*").matches(vals(&empty)));
        assert!(!HeaderMatch::parse("*").matches(vals(&[])));
        assert!(HeaderMatch::parse("").matches(vals(&empty)));
    }

    #[test]
    fn namespace_glob() {
        let g = Glob::namespace("foo");
        assert!(g.matches("spiffe://cluster.local/ns/foo/sa/bar"));
        assert!(!g.matches("spiffe://cluster.local/ns/foobar/sa/bar"));
        let g = Glob::namespace("prod-*");
        assert!(g.matches("spiffe://td/ns/prod-eu/sa/x"));
        assert!(!g.matches("spiffe://td/ns/dev/sa/x"));
        assert!(Glob::namespace("*").matches("spiffe://td/ns/a/sa/b"));
        assert!(!Glob::namespace("*").matches("spiffe://td/sa/b"));
    }

    #[test]
    fn service_accounts() {
        let m = ServiceAccountMatch::new("sleep", "foo");
        assert!(m.matches("cluster.local/ns/foo/sa/sleep"));
        assert!(m.matches("other.td/ns/foo/sa/sleep"));
        assert!(!m.matches("cluster.local/ns/bar/sa/sleep"));
        assert!(!m.matches("cluster.local/ns/foo/sa/sleep-2"));
        assert!(m.matches("cluster.local/ns/foo/sa/sleep/x"));
        assert!(!m.matches("cluster.local/ns/foo/sa/sleep/"));
        assert!(m.matches("cluster.local/ns/foo/k/v/sa/sleep"));
        assert!(!m.matches("/ns/foo/sa/sleep"));
        let m = ServiceAccountMatch::new("bar/api", "foo");
        assert!(m.matches("cluster.local/ns/bar/sa/api"));
        assert!(!m.matches("cluster.local/ns/foo/sa/api"));
    }

    #[test]
    fn request_principals_split_at_last_slash() {
        let m = IssSubMatch::parse("https://accounts.example.com/user-1");
        assert!(m.matches("https://accounts.example.com", "user-1"));
        assert!(!m.matches("https://accounts.example.com", "user-2"));
        let m = IssSubMatch::parse("https://accounts.example.com/*");
        assert!(m.matches("https://accounts.example.com", "anyone"));
        assert!(!m.matches("https://other", "anyone"));
        let m = IssSubMatch::parse("*/admin");
        assert!(m.matches("https://x", "admin"));
        let m = IssSubMatch::parse("*");
        assert!(m.matches("i", "s"));
        assert!(!m.matches("i", ""));
        let m = IssSubMatch::parse("*example.com/u");
        assert!(m.matches("https://example.com", "u"));
        let m = IssSubMatch::parse("issuer*");
        assert!(m.matches("issuer-2", "whoever"));
    }

    #[test]
    fn path_templates() {
        let t = |p: &str| PathTemplate::parse(p).unwrap().unwrap();
        assert!(t("/foo/{*}/bar").matches("/foo/x/bar"));
        assert!(!t("/foo/{*}/bar").matches("/foo/x/y/bar"));
        assert!(!t("/foo/{*}/bar").matches("/foo//bar"));
        assert!(t("/foo/{**}").matches("/foo/a/b/c"));
        assert!(t("/foo/{**}").matches("/foo/"));
        assert!(!t("/foo/{**}").matches("/foo"));
        assert!(t("/{*}/{**}.mp4").matches("/v/a/b.mp4"));
        assert!(t("/{*}.txt").matches("/a.b.txt"));
        assert!(PathTemplate::parse("/{**}/{*}").is_none());
        assert!(PathTemplate::parse("/{name}/{*}").is_none());
        assert!(PathTemplate::parse("/a*/{*}").is_none());
        assert_eq!(PathTemplate::parse("/plain*"), Some(None));
    }
}
