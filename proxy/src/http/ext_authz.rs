//! CUSTOM authorization through an Envoy ext_authz-compatible HTTP service (MeshConfig
//! `extensionProviders[].envoyExtAuthzHttp`).
//!
//! The check request is the original method and `pathPrefix` + path (with the query), no body
//! (`content-length: 0`), with `Host`, the headers listed in `includeRequestHeadersInCheck`
//! and
//! `includeAdditionalHeadersInCheck`. A 2xx answer allows, and the answer's headers listed in
//! `headersToUpstreamOnAllow` are set on the request to the app; any other answer denies with
//! its status, body and headers (`headersToDownstreamOnDeny`, all when empty). No answer
//! within `timeout` denies (fail closed, status `statusOnError`, 403 by default) unless
//! `failOpen`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use warden_policy::mesh::{ExtAuthzHttp, ExtensionProvider};

use super::{Body, full};

/// The largest denial body relayed to the client.
const MAX_DENY_BODY: usize = 64 * 1024;

/// A header name pattern of `headersTo*`: exact (case-insensitive), `prefix*` or `*suffix`.
#[derive(Debug, Clone)]
enum Pattern {
    Exact(HeaderName),
    Prefix(String),
    Suffix(String),
}

impl Pattern {
    fn parse(p: &str) -> Option<Pattern> {
        let p = p.to_ascii_lowercase();
        if let Some(prefix) = p.strip_suffix('*') {
            Some(Pattern::Prefix(prefix.to_owned()))
        } else if let Some(suffix) = p.strip_prefix('*') {
            Some(Pattern::Suffix(suffix.to_owned()))
        } else {
            HeaderName::from_bytes(p.as_bytes())
                .ok()
                .map(Pattern::Exact)
        }
    }

    fn matches(&self, name: &HeaderName) -> bool {
        match self {
            Pattern::Exact(n) => n == name,
            Pattern::Prefix(p) => name.as_str().starts_with(p.as_str()),
            Pattern::Suffix(s) => name.as_str().ends_with(s.as_str()),
        }
    }
}

/// One provider, prepared once.
#[derive(Debug)]
struct Provider {
    name: String,
    base: String,
    timeout: Duration,
    fail_open: bool,
    status_on_error: StatusCode,
    include: Vec<Pattern>,
    additional: Vec<(HeaderName, HeaderValue)>,
    to_upstream: Vec<Pattern>,
    to_downstream_on_deny: Vec<Pattern>,
    to_downstream_on_allow: Vec<Pattern>,
}

impl Provider {
    fn new(name: &str, h: &ExtAuthzHttp) -> Self {
        let host = if h.service.contains(':') && !h.service.starts_with('[') {
            format!("[{}]", h.service)
        } else {
            h.service.clone()
        };
        let pats = |v: &[String]| v.iter().filter_map(|p| Pattern::parse(p)).collect();
        Self {
            name: name.to_owned(),
            base: format!(
                "http://{host}:{}{}",
                h.port,
                h.path_prefix.trim_end_matches('/')
            ),
            timeout: h.timeout,
            fail_open: h.fail_open,
            status_on_error: h
                .status_on_error
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::FORBIDDEN),
            include: pats(&h.include_request_headers_in_check),
            additional: h
                .include_additional_headers_in_check
                .iter()
                .filter_map(|(k, v)| {
                    Some((
                        HeaderName::from_bytes(k.as_bytes()).ok()?,
                        HeaderValue::from_str(v).ok()?,
                    ))
                })
                .collect(),
            to_upstream: pats(&h.headers_to_upstream_on_allow),
            to_downstream_on_deny: pats(&h.headers_to_downstream_on_deny),
            to_downstream_on_allow: pats(&h.headers_to_downstream_on_allow),
        }
    }
}

/// What the provider said.
#[derive(Debug)]
pub enum Outcome {
    /// Allowed: headers to set on the request to the app, and on the response to the client.
    Allow {
        /// `headersToUpstreamOnAllow` matches from the provider's answer.
        upstream: Vec<(HeaderName, HeaderValue)>,
        /// `headersToDownstreamOnAllow` matches.
        downstream: Vec<(HeaderName, HeaderValue)>,
    },
    /// Denied: the response to relay.
    Deny(Response<Body>),
    /// No usable answer (unreachable, timed out, unknown provider): the status to answer
    /// with, and why.
    Error(StatusCode, String),
}

/// The ext_authz client: pooled HTTP/1.1 connections to the providers.
pub struct ExtAuthzClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    providers: HashMap<String, Arc<Provider>>,
}

impl std::fmt::Debug for ExtAuthzClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtAuthzClient")
            .field("providers", &self.providers.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl ExtAuthzClient {
    /// A client for the `envoyExtAuthzHttp` providers among `providers`.
    pub fn new(providers: &[ExtensionProvider], connect_timeout: Duration) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_connect_timeout(Some(connect_timeout));
        conn.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .build(conn);
        let providers = providers
            .iter()
            .filter_map(|p| {
                let h = p.envoy_ext_authz_http.as_ref()?;
                Some((p.name.clone(), Arc::new(Provider::new(&p.name, h))))
            })
            .collect();
        Self { client, providers }
    }

    /// Asks `provider` about a request (`method`, `path_and_query`, `host`, `headers`).
    pub async fn check(
        &self,
        provider: &str,
        method: &Method,
        path_and_query: &str,
        host: &str,
        headers: &HeaderMap,
    ) -> Outcome {
        let Some(p) = self.providers.get(provider) else {
            return Outcome::Error(
                StatusCode::FORBIDDEN,
                format!("no envoyExtAuthzHttp provider named {provider:?} is configured"),
            );
        };
        let fail = |why: String| {
            if p.fail_open {
                tracing::warn!(provider = %p.name, error = %why, "ext_authz failed; failOpen allows the request");
                Outcome::Allow {
                    upstream: Vec::new(),
                    downstream: Vec::new(),
                }
            } else {
                Outcome::Error(
                    p.status_on_error,
                    format!("ext_authz provider {:?}: {why}", p.name),
                )
            }
        };
        let uri: Uri = match format!("{}{}", p.base, path_and_query).parse() {
            Ok(u) => u,
            Err(e) => return fail(format!("cannot build the check URI: {e}")),
        };
        let mut req = Request::new(Empty::<Bytes>::new());
        *req.method_mut() = method.clone();
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        for (name, value) in headers {
            if p.include.iter().any(|pat| pat.matches(name)) {
                h.append(name.clone(), value.clone());
            }
        }
        for (k, v) in &p.additional {
            h.insert(k.clone(), v.clone());
        }
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(header::HOST, v);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        let answer = tokio::time::timeout(p.timeout, async {
            let resp = self.client.request(req).await.map_err(|e| e.to_string())?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, MAX_DENY_BODY)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((parts, body))
        })
        .await;
        let (parts, body) = match answer {
            Err(_) => return fail(format!("no answer within {:?}", p.timeout)),
            Ok(Err(e)) => return fail(e),
            Ok(Ok(a)) => a,
        };
        let pick = |pats: &[Pattern]| -> Vec<(HeaderName, HeaderValue)> {
            parts
                .headers
                .iter()
                .filter(|(n, _)| pats.iter().any(|pat| pat.matches(n)))
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        };
        if parts.status.is_success() {
            return Outcome::Allow {
                upstream: pick(&p.to_upstream),
                downstream: pick(&p.to_downstream_on_allow),
            };
        }
        let mut resp = Response::new(full(body));
        *resp.status_mut() = parts.status;
        let relay: Vec<(HeaderName, HeaderValue)> = if p.to_downstream_on_deny.is_empty() {
            parts
                .headers
                .iter()
                .filter(|(n, _)| {
                    !matches!(
                        *n,
                        &header::CONTENT_LENGTH
                            | &header::TRANSFER_ENCODING
                            | &header::CONNECTION
                            | &header::HOST
                    )
                })
                .map(|(n, v)| (n.clone(), v.clone()))
                .collect()
        } else {
            pick(&p.to_downstream_on_deny)
        };
        for (n, v) in relay {
            resp.headers_mut().append(n, v);
        }
        Outcome::Deny(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_patterns() {
        let name = HeaderName::from_static("x-ext-authz-user");
        assert!(Pattern::parse("X-Ext-Authz-User").unwrap().matches(&name));
        assert!(Pattern::parse("x-ext-*").unwrap().matches(&name));
        assert!(Pattern::parse("*-user").unwrap().matches(&name));
        assert!(!Pattern::parse("x-other").unwrap().matches(&name));
    }
}
