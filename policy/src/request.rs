//! What authorization looks at: the connection, and for HTTP the request. All borrowed, so
//! building one per request costs nothing.

use std::net::IpAddr;

use http::HeaderMap;

/// The connection facts Istio's attributes read (`source.*`, `destination.*`, `connection.sni`).
#[derive(Debug, Clone, Copy)]
pub struct ConnectionContext<'a> {
    /// The peer's identity from its mTLS certificate URI SAN, e.g.
    /// `spiffe://cluster.local/ns/foo/sa/bar` (the `spiffe://` scheme may be omitted).
    /// `None` for plaintext: principal and namespace matches then fail, `not...` matches pass.
    pub peer_principal: Option<&'a str>,
    /// The direct peer address (`source.ip`, `ipBlocks`).
    pub source_ip: IpAddr,
    /// The original client address (`remote.ip`, `remoteIpBlocks`): from X-Forwarded-For or
    /// PROXY protocol with the trusted hop count, else the same as `source_ip`.
    pub remote_ip: IpAddr,
    /// The original destination address (`destination.ip`).
    pub destination_ip: IpAddr,
    /// The original destination port (`destination.port`, `ports`): the workload's port.
    pub destination_port: u16,
    /// The TLS SNI the client sent (`connection.sni`).
    pub sni: Option<&'a str>,
}

impl<'a> ConnectionContext<'a> {
    /// A plaintext connection from `source_ip` to `destination_ip:destination_port`.
    pub fn new(source_ip: IpAddr, destination_ip: IpAddr, destination_port: u16) -> Self {
        ConnectionContext {
            peer_principal: None,
            source_ip,
            remote_ip: source_ip,
            destination_ip,
            destination_port,
            sni: None,
        }
    }

    /// The same connection with an mTLS peer identity.
    pub fn with_peer(mut self, principal: &'a str) -> Self {
        self.peer_principal = Some(principal);
        self
    }
}

/// The HTTP request facts (`hosts`, `methods`, `paths`, `request.*`).
#[derive(Debug, Clone, Copy)]
pub struct HttpRequest<'a> {
    /// The method (gRPC is always `POST`).
    pub method: &'a str,
    /// The `:authority` / `Host`, as sent.
    pub host: &'a str,
    /// The path after [`normalize_path`](crate::path::normalize_path): no query string.
    pub path: &'a str,
    /// The request headers; looked up by name without allocating.
    pub headers: &'a HeaderMap,
    /// The validated JWT of the request, if any.
    pub auth: Option<RequestAuth<'a>>,
}

/// A validated JWT: its payload. Istio reads `request.auth.principal` and `requestPrincipals`
/// from the `iss` and `sub` claims, `request.auth.audiences` from `aud`, `request.auth.presenter`
/// from `azp`, and `request.auth.claims[...]` from the payload.
#[derive(Debug, Clone, Copy)]
pub struct RequestAuth<'a> {
    /// The JWT payload (a JSON object).
    pub claims: &'a serde_json::Value,
}

impl<'a> RequestAuth<'a> {
    /// The payload of a validated token.
    pub fn new(claims: &'a serde_json::Value) -> Self {
        RequestAuth { claims }
    }

    /// A top-level string claim.
    pub fn str_claim(&self, name: &str) -> Option<&'a str> {
        self.claims.get(name).and_then(serde_json::Value::as_str)
    }

    /// The request principal `iss/sub`, if both claims are strings.
    pub fn principal(&self) -> Option<(&'a str, &'a str)> {
        Some((self.str_claim("iss")?, self.str_claim("sub")?))
    }
}

/// One authorization input: a TCP connection, or an HTTP request on a connection.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The connection.
    pub connection: ConnectionContext<'a>,
    /// `Some` for HTTP requests; `None` for TCP connections (Istio's HTTP-only rule applies).
    pub http: Option<HttpRequest<'a>>,
}

impl<'a> Request<'a> {
    /// A TCP connection.
    pub fn tcp(connection: ConnectionContext<'a>) -> Self {
        Request {
            connection,
            http: None,
        }
    }

    /// An HTTP request.
    pub fn http(connection: ConnectionContext<'a>, http: HttpRequest<'a>) -> Self {
        Request {
            connection,
            http: Some(http),
        }
    }

    /// The peer principal as a full URI SAN (`spiffe://` added when omitted), borrowed when possible.
    pub(crate) fn peer_uri(&self) -> Option<PeerUri<'a>> {
        self.connection.peer_principal.map(PeerUri)
    }
}

/// A peer principal, with or without the `spiffe://` scheme.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PeerUri<'a>(pub(crate) &'a str);

impl<'a> PeerUri<'a> {
    /// The part after `spiffe://` (the whole string if there is no scheme).
    pub(crate) fn without_scheme(self) -> &'a str {
        self.0.strip_prefix("spiffe://").unwrap_or(self.0)
    }

    /// Whether the principal had the scheme or none at all (a bare `td/ns/x/sa/y`).
    pub(crate) fn is_spiffe(self) -> bool {
        self.0.starts_with("spiffe://") || !self.0.contains("://")
    }
}
