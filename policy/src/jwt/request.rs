//! The request as the JWT check sees it, and the places a token can sit in it.
//!
//! [`RequestView`] is a narrow, borrowing view: the proxy implements it over its request
//! type without copying (an implementation for [`http::Request`] and
//! [`http::request::Parts`] is provided), tests and `warden check` use [`SimpleRequest`].

use std::borrow::Cow;
use std::fmt;

use percent_encoding::percent_decode;

/// What the JWT check reads from a request: method, headers, query string.
pub trait RequestView {
    /// The method, e.g. `GET` or `OPTIONS`.
    fn method(&self) -> &str;

    /// Every value of the header `name` (given in lowercase), in the order received.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>;

    /// The query string, without the leading `?`, if there is one.
    fn query(&self) -> Option<&str>;

    /// The first value of header `name` (lowercase), if any.
    fn first_header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).next()
    }
}

impl<B> RequestView for http::Request<B> {
    fn method(&self) -> &str {
        http::Request::method(self).as_str()
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.headers()
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
    }

    fn query(&self) -> Option<&str> {
        self.uri().query()
    }
}

impl RequestView for http::request::Parts {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .get_all(name)
            .iter()
            .map(http::HeaderValue::as_bytes)
    }

    fn query(&self) -> Option<&str> {
        self.uri.query()
    }
}

/// A request held in plain owned fields: for tests, `warden check` and other callers that
/// have no `http::Request`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimpleRequest {
    /// The method, e.g. `GET`.
    pub method: String,
    /// Headers as (lowercase name, value), in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The query string without `?`.
    pub query: Option<String>,
}

impl SimpleRequest {
    /// A request with this method, no headers and no query.
    pub fn new(method: impl Into<String>) -> Self {
        SimpleRequest {
            method: method.into(),
            ..SimpleRequest::default()
        }
    }

    /// Adds a header (the name is lowercased).
    pub fn with_header(mut self, name: impl AsRef<str>, value: impl Into<String>) -> Self {
        self.headers
            .push((name.as_ref().to_ascii_lowercase(), value.into()));
        self
    }

    /// Sets the query string (without `?`).
    pub fn with_query(mut self, query: impl Into<String>) -> Self {
        self.query = Some(query.into());
        self
    }
}

impl RequestView for SimpleRequest {
    fn method(&self) -> &str {
        &self.method
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_bytes())
    }

    fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}

/// Whether a request is a CORS preflight (`OPTIONS` with `Origin` and
/// `Access-Control-Request-Method`), which skips the token check as in Envoy.
pub fn is_cors_preflight(req: &impl RequestView) -> bool {
    req.method() == "OPTIONS"
        && req.first_header("origin").is_some_and(|v| !v.is_empty())
        && req
            .first_header("access-control-request-method")
            .is_some_and(|v| !v.is_empty())
}

/// One place a token may be found.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenLocation {
    /// A header (lowercase name) whose value starts with `prefix` (may be empty).
    Header {
        /// Header name, lowercase.
        name: String,
        /// Text before the token, e.g. `Bearer `.
        prefix: String,
    },
    /// A query parameter.
    Param(String),
    /// A cookie.
    Cookie(String),
}

impl fmt::Display for TokenLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenLocation::Header { name, prefix } if prefix.is_empty() => {
                write!(f, "header `{name}`")
            }
            TokenLocation::Header { name, prefix } => {
                write!(f, "header `{name}` (prefix `{prefix}`)")
            }
            TokenLocation::Param(name) => write!(f, "query parameter `{name}`"),
            TokenLocation::Cookie(name) => write!(f, "cookie `{name}`"),
        }
    }
}

impl TokenLocation {
    /// `Authorization: Bearer <token>`, the first default place.
    pub fn default_header() -> Self {
        TokenLocation::Header {
            name: "authorization".to_owned(),
            prefix: "Bearer ".to_owned(),
        }
    }

    /// The `access_token` query parameter, the second default place.
    pub fn default_param() -> Self {
        TokenLocation::Param("access_token".to_owned())
    }

    /// The token at this place in `req`, if there is a non-empty one.
    ///
    /// Headers: the first value that starts with the prefix (the `Bearer` scheme is matched
    /// case-insensitively, RFC 7235; other prefixes exactly), surrounding blanks trimmed.
    /// Parameters: the first non-empty value, percent-decoded. Cookies: every `cookie`
    /// header is searched; surrounding double quotes are removed.
    pub fn extract<'r, R: RequestView>(&self, req: &'r R) -> Option<Cow<'r, [u8]>> {
        match self {
            TokenLocation::Header { name, prefix } => {
                let bearer = prefix.eq_ignore_ascii_case("bearer ");
                req.header_values(name).find_map(|value| {
                    let rest = strip_prefix(value, prefix.as_bytes(), bearer)?;
                    let token = trim(rest);
                    (!token.is_empty()).then_some(Cow::Borrowed(token))
                })
            }
            TokenLocation::Param(name) => query_param(req.query()?, name),
            TokenLocation::Cookie(name) => req
                .header_values("cookie")
                .find_map(|value| cookie(value, name.as_bytes()))
                .map(Cow::Borrowed),
        }
    }
}

fn strip_prefix<'v>(value: &'v [u8], prefix: &[u8], ignore_case: bool) -> Option<&'v [u8]> {
    if value.len() < prefix.len() {
        return None;
    }
    let (head, rest) = value.split_at(prefix.len());
    let same = if ignore_case {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same.then_some(rest)
}

fn trim(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !matches!(b, b' ' | b'\t'))
        .unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !matches!(b, b' ' | b'\t'))
        .map_or(start, |p| p + 1);
    &bytes[start..end]
}

fn query_param<'q>(query: &'q str, name: &str) -> Option<Cow<'q, [u8]>> {
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key_matches = if key.contains('%') {
            percent_decode(key.as_bytes()).eq(name.bytes())
        } else {
            key == name
        };
        if !key_matches || value.is_empty() {
            continue;
        }
        return Some(if value.contains('%') {
            Cow::Owned(percent_decode(value.as_bytes()).collect())
        } else {
            Cow::Borrowed(value.as_bytes())
        });
    }
    None
}

fn cookie<'v>(header: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = trim(pair);
        let eq = pair.iter().position(|&b| b == b'=')?;
        if trim(&pair[..eq]) != name {
            return None;
        }
        let mut value = trim(&pair[eq + 1..]);
        if value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"' {
            value = &value[1..value.len() - 1];
        }
        (!value.is_empty()).then_some(value)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, prefix: &str) -> TokenLocation {
        TokenLocation::Header {
            name: name.to_owned(),
            prefix: prefix.to_owned(),
        }
    }

    fn got<R: RequestView>(loc: &TokenLocation, req: &R) -> Option<String> {
        loc.extract(req)
            .map(|t| String::from_utf8(t.into_owned()).expect("utf8"))
    }

    #[test]
    fn bearer_header_is_case_insensitive_and_trimmed() {
        let loc = TokenLocation::default_header();
        for value in ["Bearer abc", "bearer abc", "BEARER   abc  "] {
            let req = SimpleRequest::new("GET").with_header("Authorization", value);
            assert_eq!(got(&loc, &req).as_deref(), Some("abc"), "{value}");
        }
        for value in ["Basic abc", "Bearer", "Bearer    ", "Bearerabc", ""] {
            let req = SimpleRequest::new("GET").with_header("authorization", value);
            assert_eq!(got(&loc, &req), None, "{value:?}");
        }
        // The first value with the prefix wins when the header repeats.
        let req = SimpleRequest::new("GET")
            .with_header("authorization", "Basic x")
            .with_header("authorization", "Bearer second");
        assert_eq!(got(&loc, &req).as_deref(), Some("second"));
    }

    #[test]
    fn custom_header_prefix_is_exact() {
        let loc = header("x-jwt", "Token ");
        let req = SimpleRequest::new("GET").with_header("X-JWT", "Token t1");
        assert_eq!(got(&loc, &req).as_deref(), Some("t1"));
        let req = SimpleRequest::new("GET").with_header("x-jwt", "token t1");
        assert_eq!(got(&loc, &req), None);
        let bare = header("x-jwt", "");
        let req = SimpleRequest::new("GET").with_header("x-jwt", " t2 ");
        assert_eq!(got(&bare, &req).as_deref(), Some("t2"));
    }

    #[test]
    fn query_params_are_found_and_decoded() {
        let loc = TokenLocation::default_param();
        let req = SimpleRequest::new("GET").with_query("a=1&access_token=tok.en&b");
        assert_eq!(got(&loc, &req).as_deref(), Some("tok.en"));
        let req = SimpleRequest::new("GET").with_query("access%5Ftoken=a%2Eb");
        assert_eq!(got(&loc, &req).as_deref(), Some("a.b"));
        let req = SimpleRequest::new("GET").with_query("access_token=&access_token=x");
        assert_eq!(got(&loc, &req).as_deref(), Some("x"));
        let req = SimpleRequest::new("GET").with_query("xaccess_token=1&access_token");
        assert_eq!(got(&loc, &req), None);
        assert_eq!(got(&loc, &SimpleRequest::new("GET")), None);
    }

    #[test]
    fn cookies_are_found_in_every_cookie_header() {
        let loc = TokenLocation::Cookie("session".to_owned());
        let req = SimpleRequest::new("GET")
            .with_header("cookie", "a=1; b=2")
            .with_header("cookie", "c=3; session=\"tok\"; d=4");
        assert_eq!(got(&loc, &req).as_deref(), Some("tok"));
        let req = SimpleRequest::new("GET").with_header("cookie", "xsession=1;session=");
        assert_eq!(got(&loc, &req), None);
    }

    #[test]
    fn http_request_view_borrows_without_copying() {
        let req = http::Request::builder()
            .method("OPTIONS")
            .uri("/p?access_token=q")
            .header("Origin", "https://a")
            .header("Access-Control-Request-Method", "GET")
            .header("cookie", "k=v")
            .header("cookie", "j=w")
            .body(())
            .expect("request");
        assert!(is_cors_preflight(&req));
        assert_eq!(RequestView::query(&req), Some("access_token=q"));
        assert_eq!(req.header_values("cookie").count(), 2);
        assert_eq!(
            got(&TokenLocation::default_param(), &req).as_deref(),
            Some("q")
        );
        let (parts, ()) = req.into_parts();
        assert!(is_cors_preflight(&parts));
    }

    #[test]
    fn cors_preflight_needs_all_three_parts() {
        let full = SimpleRequest::new("OPTIONS")
            .with_header("origin", "https://a")
            .with_header("access-control-request-method", "POST");
        assert!(is_cors_preflight(&full));
        let mut no_method = full.clone();
        no_method.headers.pop();
        assert!(!is_cors_preflight(&no_method));
        let mut get = full.clone();
        get.method = "GET".to_owned();
        assert!(!is_cors_preflight(&get));
        let empty_origin = SimpleRequest::new("OPTIONS")
            .with_header("origin", "")
            .with_header("access-control-request-method", "POST");
        assert!(!is_cors_preflight(&empty_origin));
    }

    #[test]
    fn locations_display_for_messages() {
        assert_eq!(
            TokenLocation::default_header().to_string(),
            "header `authorization` (prefix `Bearer `)"
        );
        assert_eq!(
            TokenLocation::default_param().to_string(),
            "query parameter `access_token`"
        );
        assert_eq!(TokenLocation::Cookie("c".into()).to_string(), "cookie `c`");
        assert_eq!(header("x", "").to_string(), "header `x`");
    }
}
