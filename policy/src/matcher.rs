//! Precompiled string matchers with Istio's semantics. Matching never allocates, and each value
//! is one allocation that also keeps the text as written (for explanations).

use std::borrow::Cow;

/// Istio's string match kinds: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any non-empty value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Exact,
    Prefix,
    Suffix,
    Any,
}

/// A pattern over a range of a text: the text is stored once by the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Pat {
    kind: Kind,
    start: u32,
    end: u32,
}

impl Pat {
    /// Istio's rule on `text[start..end]`: `*` first, then a leading `*` (suffix), then a
    /// trailing `*` (prefix), else exact.
    fn parse(text: &str, start: usize, end: usize) -> Pat {
        let v = &text[start..end];
        let (kind, start, end) = if v == "*" {
            (Kind::Any, start, start)
        } else if v.starts_with('*') {
            (Kind::Suffix, start + 1, end)
        } else if v.ends_with('*') {
            (Kind::Prefix, start, end - 1)
        } else {
            (Kind::Exact, start, end)
        };
        Pat {
            kind,
            // Policy values are far below 4 GiB.
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }

    fn exact(start: usize, end: usize) -> Pat {
        Pat {
            kind: Kind::Exact,
            start: u32::try_from(start).unwrap_or(u32::MAX),
            end: u32::try_from(end).unwrap_or(u32::MAX),
        }
    }

    const ANY: Pat = Pat {
        kind: Kind::Any,
        start: 0,
        end: 0,
    };

    #[inline]
    fn pattern<'t>(&self, text: &'t str) -> &'t [u8] {
        text.as_bytes()
            .get(self.start as usize..self.end as usize)
            .unwrap_or_default()
    }

    #[inline]
    fn matches(&self, text: &str, s: &[u8]) -> bool {
        let p = self.pattern(text);
        match self.kind {
            Kind::Exact => s == p,
            Kind::Prefix => s.starts_with(p),
            Kind::Suffix => s.ends_with(p),
            Kind::Any => !s.is_empty(),
        }
    }

    #[inline]
    fn matches_ignore_case(&self, text: &str, s: &[u8]) -> bool {
        let p = self.pattern(text);
        match self.kind {
            Kind::Exact => s.eq_ignore_ascii_case(p),
            Kind::Prefix => s.len() >= p.len() && s[..p.len()].eq_ignore_ascii_case(p),
            Kind::Suffix => s.len() >= p.len() && s[s.len() - p.len()..].eq_ignore_ascii_case(p),
            Kind::Any => !s.is_empty(),
        }
    }
}

/// The text of a matcher as written in the policy.
pub(crate) trait Raw {
    fn raw(&self) -> Cow<'_, str>;
}

/// Istio's string match: `abc` exact, `abc*` prefix, `*abc` suffix, `*` any non-empty value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StrMatch {
    text: Box<str>,
    pat: Pat,
}

impl StrMatch {
    pub(crate) fn parse(v: &str) -> StrMatch {
        StrMatch {
            pat: Pat::parse(v, 0, v.len()),
            text: v.into(),
        }
    }

    /// Like [`StrMatch::parse`], lower-casing the pattern (for case-insensitive matching).
    pub(crate) fn parse_lowercase(v: &str) -> StrMatch {
        StrMatch::parse(&v.to_ascii_lowercase())
    }

    /// Whether this is `*` (any non-empty value).
    pub(crate) fn is_any(&self) -> bool {
        self.pat.kind == Kind::Any
    }

    #[inline]
    pub(crate) fn matches(&self, s: &str) -> bool {
        self.pat.matches(&self.text, s.as_bytes())
    }

    #[inline]
    fn matches_bytes(&self, s: &[u8]) -> bool {
        self.pat.matches(&self.text, s)
    }

    /// Case-insensitive match against a lower-cased pattern.
    #[inline]
    pub(crate) fn matches_ignore_case(&self, s: &str) -> bool {
        self.pat.matches_ignore_case(&self.text, s.as_bytes())
    }

    fn pattern(&self) -> &[u8] {
        self.pat.pattern(&self.text)
    }
}

impl Raw for StrMatch {
    fn raw(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.text)
    }
}

/// An Envoy header matcher over all values of one header, joined with `,` as Envoy does.
/// Istio's `*` is a presence match (any value, even empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderMatch(StrMatch);

impl HeaderMatch {
    pub(crate) fn parse(v: &str) -> HeaderMatch {
        HeaderMatch(StrMatch::parse(v))
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
        let m = &self.0;
        if m.is_any() {
            return true;
        }
        if probe.next().is_none() {
            return m.matches_bytes(first);
        }
        let p = m.pattern();
        match m.pat.kind {
            Kind::Exact => joined_len(values()) == p.len() && joined_starts_with(values(), p),
            Kind::Prefix => joined_starts_with(values(), p),
            Kind::Suffix => joined_ends_with(values(), p),
            Kind::Any => true,
        }
    }
}

impl Raw for HeaderMatch {
    fn raw(&self) -> Cow<'_, str> {
        self.0.raw()
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

/// A glob where `*` matches any run of characters (also empty and across `/`), anchored at both
/// ends. Istio's `namespaces` / `source.namespace` match is the regex `.*/ns/<v>/.*` with `*` in
/// the value turned into `.*`: the glob `*/ns/<v>/*`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Glob {
    pattern: Box<str>,
    /// Byte offsets of the first and last `*`.
    first_star: usize,
    last_star: usize,
    /// Whether there are `*`s between the first and the last.
    inner_stars: bool,
}

impl Glob {
    /// The namespace matcher for a `namespaces` value.
    pub(crate) fn namespace(v: &str) -> Glob {
        let pattern = format!("*/ns/{v}/*");
        let last_star = pattern.len() - 1;
        Glob {
            inner_stars: v.contains('*'),
            pattern: pattern.into(),
            first_star: 0,
            last_star,
        }
    }

    pub(crate) fn matches(&self, s: &str) -> bool {
        let p = &*self.pattern;
        let s = s.as_bytes();
        let first = &p.as_bytes()[..self.first_star];
        let last = &p.as_bytes()[self.last_star + 1..];
        if s.len() < first.len() + last.len()
            || (!first.is_empty() && !s.starts_with(first))
            || (!last.is_empty() && !s.ends_with(last))
        {
            return false;
        }
        let rest = &s[first.len()..s.len() - last.len()];
        if self.first_star == self.last_star {
            return true;
        }
        let middle = &p[self.first_star + 1..self.last_star];
        if !self.inner_stars {
            return find_bytes(rest, middle.as_bytes()).is_some();
        }
        let mut rest = rest;
        for mid in middle.split('*') {
            match find_bytes(rest, mid.as_bytes()) {
                Some(at) => rest = &rest[at + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

impl Raw for Glob {
    fn raw(&self) -> Cow<'_, str> {
        let p = &*self.pattern;
        Cow::Borrowed(
            p.strip_prefix("*/ns/")
                .and_then(|r| r.strip_suffix("/*"))
                .unwrap_or(p),
        )
    }
}

/// Substring search for short needles in short haystacks (SPIFFE IDs): cheaper than building a
/// two-way searcher for every call.
#[inline]
fn find_bytes(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let Some((&first, tail)) = needle.split_first() else {
        return Some(0);
    };
    if hay.len() < needle.len() {
        return None;
    }
    // A byte loop: these needles are a few bytes long, and a `memcmp` call per candidate costs
    // more than the comparison.
    (0..=hay.len() - needle.len()).find(|&i| {
        hay[i] == first
            && hay[i + 1..i + needle.len()]
                .iter()
                .zip(tail)
                .all(|(a, b)| a == b)
    })
}

/// A `serviceAccounts` entry: Istio's regex `spiffe://.+/ns/<ns>/(.+/|)sa/<sa>(/.+)?`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServiceAccountMatch {
    /// `/ns/<ns>/` followed by `/sa/<sa>`.
    text: Box<str>,
    split: usize,
    /// Whether the value named the namespace (`ns/sa`).
    qualified: bool,
}

impl ServiceAccountMatch {
    /// `sa` (in `default_namespace`) or `ns/sa`.
    pub(crate) fn new(value: &str, default_namespace: &str) -> ServiceAccountMatch {
        let (qualified, (ns, sa)) = match value.split_once('/') {
            Some(parts) => (true, parts),
            None => (false, (default_namespace, value)),
        };
        let ns_part = format!("/ns/{ns}/");
        let split = ns_part.len();
        ServiceAccountMatch {
            text: format!("{ns_part}/sa/{sa}").into(),
            split,
            qualified,
        }
    }

    /// Matches a SPIFFE ID given without its `spiffe://` scheme.
    pub(crate) fn matches(&self, rest: &str) -> bool {
        let ns_part = &self.text[..self.split];
        // `.+` before `/ns/`: the occurrence must not start at the very beginning.
        let mut from = second_char(rest);
        while let Some(at) = rest.get(from..).and_then(|r| r.find(ns_part)) {
            let pos = from + at;
            if self.tail_matches(&rest[pos + ns_part.len()..]) {
                return true;
            }
            // The needle starts with `/`, so `pos + 1` is a character boundary.
            from = pos + 1;
        }
        false
    }

    /// `(.+/|)sa/<sa>(/.+)?` anchored at both ends.
    fn tail_matches(&self, s: &str) -> bool {
        let needle = &self.text[self.split..];
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

impl Raw for ServiceAccountMatch {
    fn raw(&self) -> Cow<'_, str> {
        let sa = &self.text[self.split + 4..];
        if self.qualified {
            let ns = &self.text[4..self.split - 1];
            Cow::Owned(format!("{ns}/{sa}"))
        } else {
            Cow::Borrowed(sa)
        }
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
    text: Box<str>,
    iss: Pat,
    sub: Pat,
}

impl IssSubMatch {
    pub(crate) fn parse(value: &str) -> IssSubMatch {
        let len = value.len();
        let slash = value.rfind('/');
        // iss = value[..i], sub = value[i + 1..]
        let (iss, sub) = match slash {
            Some(i) => ((0, i), (i + 1, len)),
            None => ((0, len), (len, len)),
        };
        let (iss, sub) = if value == "*" {
            (Pat::ANY, Pat::ANY)
        } else if value.starts_with('*') {
            match slash {
                // `*<iss suffix>/<sub>` or `*/<sub>`.
                Some(_) => (Pat::parse(value, iss.0, iss.1), Pat::exact(sub.0, sub.1)),
                None => (Pat::ANY, Pat::parse(value, 0, len)),
            }
        } else if value.ends_with('*') {
            match slash {
                // `<iss>/<sub prefix>*` or `<iss>/*`.
                Some(_) => (Pat::exact(iss.0, iss.1), Pat::parse(value, sub.0, sub.1)),
                None => (Pat::parse(value, 0, len), Pat::ANY),
            }
        } else {
            (Pat::exact(iss.0, iss.1), Pat::exact(sub.0, sub.1))
        };
        IssSubMatch {
            text: value.into(),
            iss,
            sub,
        }
    }

    pub(crate) fn matches(&self, iss: &str, sub: &str) -> bool {
        self.iss.matches(&self.text, iss.as_bytes()) && self.sub.matches(&self.text, sub.as_bytes())
    }
}

impl Raw for IssSubMatch {
    fn raw(&self) -> Cow<'_, str> {
        Cow::Borrowed(&self.text)
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
    raw: Box<str>,
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
            raw: v.into(),
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
                    s.len() >= tail
                        && s.is_char_boundary(s.len() - tail)
                        && go(rest, &s[s.len() - tail..])
                }
                Some((Tpl::One, rest)) => {
                    let seg_end = s.find('/').unwrap_or(s.len());
                    s[..seg_end]
                        .char_indices()
                        .map(|(i, c)| i + c.len_utf8())
                        .any(|n| go(rest, &s[n..]))
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

impl Raw for PathMatch {
    fn raw(&self) -> Cow<'_, str> {
        match self {
            PathMatch::Str(m) => m.raw(),
            PathMatch::Template(t) => Cow::Borrowed(&t.raw),
        }
    }
}

impl Raw for ipnet::IpNet {
    /// A single address shows as written (`10.0.0.1`), a block as a CIDR.
    fn raw(&self) -> Cow<'_, str> {
        if self.prefix_len() == self.max_prefix_len() {
            Cow::Owned(self.addr().to_string())
        } else {
            Cow::Owned(self.to_string())
        }
    }
}

impl Raw for (u16, u16) {
    fn raw(&self) -> Cow<'_, str> {
        if self.0 == self.1 {
            Cow::Owned(self.0.to_string())
        } else {
            Cow::Owned(format!("{}-{}", self.0, self.1))
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
