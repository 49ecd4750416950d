//! Compiled clauses: one attribute with its positive and negative matchers, evaluated against a
//! [`Request`]. Evaluation never allocates.

use std::borrow::Cow;
use std::fmt;

use http::HeaderName;
use ipnet::IpNet;

use crate::matcher::{
    Glob, HeaderMatch, IssSubMatch, PathMatch, Raw, ServiceAccountMatch, StrMatch,
};
use crate::request::{PeerUri, Request};

/// The values of one field (`principals`) and its negation (`notPrincipals`).
#[derive(Debug, Clone)]
pub(crate) struct Vals<M> {
    pub(crate) pos: Box<[M]>,
    pub(crate) neg: Box<[M]>,
}

/// Which matchers of a clause hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hit {
    pub(crate) matched: bool,
    /// The first positive value that matched.
    pub(crate) pos: Option<usize>,
    /// The first negative value that matched (which fails the clause).
    pub(crate) neg: Option<usize>,
}

impl<M> Vals<M> {
    /// Any positive value matches (or there are none), and no negative value matches.
    #[inline]
    fn check(&self, f: impl Fn(&M) -> bool) -> bool {
        (self.pos.is_empty() || self.pos.iter().any(&f)) && !self.neg.iter().any(&f)
    }

    fn raw(&self) -> (Vec<Cow<'_, str>>, Vec<Cow<'_, str>>)
    where
        M: Raw,
    {
        (
            self.pos.iter().map(Raw::raw).collect(),
            self.neg.iter().map(Raw::raw).collect(),
        )
    }

    fn hit(&self, f: impl Fn(&M) -> bool) -> Hit {
        let pos = self.pos.iter().position(&f);
        let neg = self.neg.iter().position(&f);
        Hit {
            matched: (self.pos.is_empty() || pos.is_some()) && neg.is_none(),
            pos,
            neg,
        }
    }
}

/// Where a `request.headers[...]` value comes from.
#[derive(Debug, Clone)]
pub(crate) enum HeaderSource {
    /// A regular header.
    Named(HeaderName),
    /// `host` / `:authority`: the request authority.
    Authority,
    /// `:method`.
    Method,
    /// `:path`: the normalized path.
    Path,
    /// A name that is not a valid header name: never present.
    Never,
}

/// One attribute and its matchers.
#[derive(Debug, Clone)]
pub(crate) enum Test {
    SourceIp(Vals<IpNet>),
    RemoteIp(Vals<IpNet>),
    DestIp(Vals<IpNet>),
    DestPort(Vals<(u16, u16)>),
    Sni(Vals<StrMatch>),
    Principal(Vals<StrMatch>),
    Namespace(Vals<Glob>),
    ServiceAccount(Vals<ServiceAccountMatch>),
    RequestPrincipal(Vals<IssSubMatch>),
    Audience(Vals<StrMatch>),
    Presenter(Vals<StrMatch>),
    Claim(Box<[Box<str>]>, Vals<StrMatch>),
    Header(HeaderSource, Vals<HeaderMatch>),
    Host(Vals<StrMatch>),
    Method(Vals<HeaderMatch>),
    Path(Vals<PathMatch>),
}

/// Istio's principal match: `spiffe://` + the value, except `*` (any non-empty identity).
#[inline]
fn principal_matches(m: &StrMatch, p: PeerUri<'_>) -> bool {
    if m.is_any() {
        !p.0.is_empty()
    } else {
        p.is_spiffe() && m.matches(p.without_scheme())
    }
}

/// Envoy's list-or-string metadata match: a string matches, or any string in a list.
#[inline]
fn list_or_string(v: Option<&serde_json::Value>, m: &StrMatch, split_spaces: bool) -> bool {
    match v {
        Some(serde_json::Value::String(s)) if split_spaces => {
            s.split(' ').filter(|p| !p.is_empty()).any(|p| m.matches(p))
        }
        Some(serde_json::Value::String(s)) => m.matches(s),
        Some(serde_json::Value::Array(a)) => {
            a.iter().any(|e| e.as_str().is_some_and(|s| m.matches(s)))
        }
        _ => false,
    }
}

/// The JWT claims Istio splits on spaces into lists (`normalize_payload_in_metadata`).
fn space_delimited(path: &[Box<str>]) -> bool {
    path.len() == 1 && matches!(&*path[0], "scope" | "permission")
}

fn claim<'a>(req: &Request<'a>, path: &[Box<str>]) -> Option<&'a serde_json::Value> {
    let mut v = req.http?.auth?.claims;
    for key in path {
        v = v.get(&**key)?;
    }
    Some(v)
}

/// Dispatches `check` or `hit` with the attribute's predicate.
macro_rules! dispatch {
    ($test:expr, $req:expr, $op:ident) => {{
        let req: &Request<'_> = $req;
        let conn = &req.connection;
        match $test {
            Test::SourceIp(v) => v.$op(|n| n.contains(&conn.source_ip)),
            Test::RemoteIp(v) => v.$op(|n| n.contains(&conn.remote_ip)),
            Test::DestIp(v) => v.$op(|n| n.contains(&conn.destination_ip)),
            Test::DestPort(v) => {
                let port = conn.destination_port;
                v.$op(|&(lo, hi)| lo <= port && port <= hi)
            }
            Test::Sni(v) => v.$op(|m| conn.sni.is_some_and(|s| m.matches(s))),
            Test::Principal(v) => {
                let peer = req.peer_uri();
                v.$op(|m| peer.is_some_and(|p| principal_matches(m, p)))
            }
            Test::Namespace(v) => {
                let peer = conn.peer_principal;
                v.$op(|g| peer.is_some_and(|p| g.matches(p)))
            }
            Test::ServiceAccount(v) => {
                let peer = req.peer_uri();
                v.$op(|m| peer.is_some_and(|p| p.is_spiffe() && m.matches(p.without_scheme())))
            }
            Test::RequestPrincipal(v) => {
                let iss_sub = req.http.and_then(|h| h.auth).and_then(|a| a.principal());
                v.$op(|m| iss_sub.is_some_and(|(iss, sub)| m.matches(iss, sub)))
            }
            Test::Audience(v) => {
                let aud = req
                    .http
                    .and_then(|h| h.auth)
                    .and_then(|a| a.claims.get("aud"));
                v.$op(|m| list_or_string(aud, m, false))
            }
            Test::Presenter(v) => {
                let azp = req
                    .http
                    .and_then(|h| h.auth)
                    .and_then(|a| a.claims.get("azp"));
                v.$op(|m| list_or_string(azp, m, false))
            }
            Test::Claim(path, v) => {
                let value = claim(req, path);
                let split = space_delimited(path);
                v.$op(|m| list_or_string(value, m, split))
            }
            Test::Header(source, v) => match (req.http, source) {
                (None, _) | (Some(_), HeaderSource::Never) => v.$op(|_: &HeaderMatch| false),
                (Some(h), HeaderSource::Named(name)) => v.$op(|m| {
                    m.matches(|| {
                        h.headers
                            .get_all(name)
                            .iter()
                            .map(http::HeaderValue::as_bytes)
                    })
                }),
                (Some(h), HeaderSource::Authority) => {
                    v.$op(|m| m.matches(|| std::iter::once(h.host.as_bytes())))
                }
                (Some(h), HeaderSource::Method) => {
                    v.$op(|m| m.matches(|| std::iter::once(h.method.as_bytes())))
                }
                (Some(h), HeaderSource::Path) => {
                    v.$op(|m| m.matches(|| std::iter::once(h.path.as_bytes())))
                }
            },
            Test::Host(v) => {
                let host = req.http.map(|h| h.host);
                v.$op(|m| host.is_some_and(|h| m.matches_ignore_case(h)))
            }
            Test::Method(v) => {
                let method = req.http.map(|h| h.method);
                v.$op(|m| method.is_some_and(|x| m.matches(|| std::iter::once(x.as_bytes()))))
            }
            Test::Path(v) => {
                let path = req.http.map(|h| h.path);
                v.$op(|m| path.is_some_and(|p| m.matches(p)))
            }
        }
    }};
}

impl Test {
    #[inline]
    pub(crate) fn matches(&self, req: &Request<'_>) -> bool {
        dispatch!(self, req, check)
    }

    pub(crate) fn hit(&self, req: &Request<'_>) -> Hit {
        dispatch!(self, req, hit)
    }

    /// The positive and negative values as written.
    pub(crate) fn raw(&self) -> (Vec<Cow<'_, str>>, Vec<Cow<'_, str>>) {
        match self {
            Test::SourceIp(v) | Test::RemoteIp(v) | Test::DestIp(v) => v.raw(),
            Test::DestPort(v) => v.raw(),
            Test::Sni(v)
            | Test::Principal(v)
            | Test::Audience(v)
            | Test::Presenter(v)
            | Test::Claim(_, v)
            | Test::Host(v) => v.raw(),
            Test::Namespace(v) => v.raw(),
            Test::ServiceAccount(v) => v.raw(),
            Test::RequestPrincipal(v) => v.raw(),
            Test::Header(_, v) | Test::Method(v) => v.raw(),
            Test::Path(v) => v.raw(),
        }
    }

    /// A rough cost rank: connection facts, then request line, identities, globs, lookups.
    fn cost(&self) -> u8 {
        match self {
            Test::DestPort(_) | Test::SourceIp(_) | Test::RemoteIp(_) | Test::DestIp(_) => 0,
            Test::Method(_) | Test::Host(_) | Test::Path(_) | Test::Sni(_) => 1,
            Test::Principal(_) | Test::ServiceAccount(_) | Test::RequestPrincipal(_) => 2,
            Test::Namespace(_) | Test::Audience(_) | Test::Presenter(_) => 3,
            Test::Header(..) | Test::Claim(..) => 4,
        }
    }

    /// The number of positive and negative values.
    pub(crate) fn counts(&self) -> (usize, usize) {
        let (p, n) = self.raw();
        (p.len(), n.len())
    }

    /// The request's value for this attribute, for explanations.
    pub(crate) fn actual(&self, req: &Request<'_>) -> String {
        let conn = &req.connection;
        let quoted = |s: Option<&str>, none: &str| match s {
            Some(s) => format!("{s:?}"),
            None => none.to_owned(),
        };
        let no_http = "none (TCP connection)";
        let no_jwt = |req: &Request<'_>| {
            if req.http.is_none() {
                no_http.to_owned()
            } else {
                "none (no validated JWT)".to_owned()
            }
        };
        match self {
            Test::SourceIp(_) => conn.source_ip.to_string(),
            Test::RemoteIp(_) => conn.remote_ip.to_string(),
            Test::DestIp(_) => conn.destination_ip.to_string(),
            Test::DestPort(_) => conn.destination_port.to_string(),
            Test::Sni(_) => quoted(conn.sni, "none (no SNI)"),
            Test::Principal(_) | Test::Namespace(_) | Test::ServiceAccount(_) => {
                quoted(conn.peer_principal, "none (no mTLS peer identity)")
            }
            Test::RequestPrincipal(_) => match req.http.and_then(|h| h.auth) {
                Some(a) => match a.principal() {
                    Some((iss, sub)) => format!("\"{iss}/{sub}\""),
                    None => "none (JWT without string iss and sub)".to_owned(),
                },
                None => no_jwt(req),
            },
            Test::Audience(_) | Test::Presenter(_) | Test::Claim(..) => {
                match req.http.and_then(|h| h.auth) {
                    None => no_jwt(req),
                    Some(a) => {
                        let v = match self {
                            Test::Audience(_) => a.claims.get("aud"),
                            Test::Presenter(_) => a.claims.get("azp"),
                            Test::Claim(path, _) => claim(req, path),
                            _ => None,
                        };
                        match v {
                            Some(v) => v.to_string(),
                            None => "none (claim not in the JWT)".to_owned(),
                        }
                    }
                }
            }
            Test::Header(source, _) => match req.http {
                None => no_http.to_owned(),
                Some(h) => match source {
                    HeaderSource::Authority => format!("{:?}", h.host),
                    HeaderSource::Method => format!("{:?}", h.method),
                    HeaderSource::Path => format!("{:?}", h.path),
                    HeaderSource::Never => "none (invalid header name)".to_owned(),
                    HeaderSource::Named(name) => {
                        let values: Vec<String> = h
                            .headers
                            .get_all(name)
                            .iter()
                            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                            .collect();
                        if values.is_empty() {
                            "none (header absent)".to_owned()
                        } else {
                            format!("{:?}", values.join(","))
                        }
                    }
                },
            },
            Test::Host(_) => quoted(req.http.map(|h| h.host), no_http),
            Test::Method(_) => quoted(req.http.map(|h| h.method), no_http),
            Test::Path(_) => quoted(req.http.map(|h| h.path), no_http),
        }
    }
}

/// One attribute check inside a `from`/`to` entry or `when`.
#[derive(Debug, Clone)]
pub(crate) struct Clause {
    /// What is checked, e.g. `source principal`, `header x-token`.
    pub(crate) label: Cow<'static, str>,
    /// The YAML field names of the positive and negative lists (`paths`, `notPaths`).
    pub(crate) fields: (&'static str, &'static str),
    pub(crate) test: Test,
}

/// Which part of a rule a [`Conj`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Part {
    /// `from[i]`.
    From(usize),
    /// `to[i]`.
    To(usize),
    /// `when`.
    When,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::From(i) => write!(f, "from[{i}]"),
            Part::To(i) => write!(f, "to[{i}]"),
            Part::When => f.write_str("when"),
        }
    }
}

/// Clauses that must all match: one `from`/`to` entry, or the `when` list.
#[derive(Debug, Clone)]
pub(crate) struct Conj {
    pub(crate) part: Part,
    pub(crate) clauses: Box<[Clause]>,
}

impl Conj {
    /// The clauses are reordered cheapest first (all must match, so the order is free).
    pub(crate) fn new(part: Part, mut clauses: Vec<Clause>) -> Conj {
        clauses.sort_by_key(|c| c.test.cost());
        Conj {
            part,
            clauses: clauses.into(),
        }
    }

    #[inline]
    pub(crate) fn matches(&self, req: &Request<'_>) -> bool {
        self.clauses.iter().all(|c| c.test.matches(req))
    }
}
