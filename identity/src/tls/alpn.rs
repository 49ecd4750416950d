//! ALPN protocol identifiers as Istio's sidecars use them.
//!
//! A client sidecar offers a set that says what it will speak inside the mTLS connection; a server
//! sidecar accepts all of them and picks the most specific one the client offered.

/// `istio-peer-exchange`: plain TCP inside mTLS, with Istio's metadata exchange.
pub const ISTIO_PEER_EXCHANGE: &[u8] = b"istio-peer-exchange";
/// `istio`: generic mesh mTLS (offered by every Istio client as a fallback).
pub const ISTIO: &[u8] = b"istio";
/// `istio-http/1.0`.
pub const ISTIO_HTTP10: &[u8] = b"istio-http/1.0";
/// `istio-http/1.1`.
pub const ISTIO_HTTP11: &[u8] = b"istio-http/1.1";
/// `istio-h2`.
pub const ISTIO_H2: &[u8] = b"istio-h2";
/// `http/1.0`.
pub const HTTP10: &[u8] = b"http/1.0";
/// `http/1.1`.
pub const HTTP11: &[u8] = b"http/1.1";
/// `h2`.
pub const H2: &[u8] = b"h2";

/// What a server accepts, in its order of preference: the most specific mesh protocol first,
/// then the plain HTTP ones (for clients outside the mesh that present a mesh certificate, such
/// as `curl --cert`), then the generic `istio`.
pub const SERVER_PROTOCOLS: &[&[u8]] = &[
    ISTIO_PEER_EXCHANGE,
    ISTIO_H2,
    ISTIO_HTTP11,
    ISTIO_HTTP10,
    H2,
    HTTP11,
    HTTP10,
    ISTIO,
];

/// The ALPN set a client offers, by what it will speak over the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alpn {
    /// Opaque TCP: `istio-peer-exchange`, `istio`.
    Tcp,
    /// HTTP/1.1: `istio-http/1.1`, `istio`, `http/1.1`.
    Http11,
    /// HTTP/2: `istio-h2`, `istio`, `h2`.
    Http2,
}

impl Alpn {
    /// Every set, in the order of [`Alpn::index`].
    pub const ALL: [Alpn; 3] = [Alpn::Tcp, Alpn::Http11, Alpn::Http2];

    /// The protocols offered, most preferred first.
    pub const fn protocols(self) -> &'static [&'static [u8]] {
        match self {
            Alpn::Tcp => &[ISTIO_PEER_EXCHANGE, ISTIO],
            Alpn::Http11 => &[ISTIO_HTTP11, ISTIO, HTTP11],
            Alpn::Http2 => &[ISTIO_H2, ISTIO, H2],
        }
    }

    /// A dense index (0..3), for per-set tables.
    pub const fn index(self) -> usize {
        match self {
            Alpn::Tcp => 0,
            Alpn::Http11 => 1,
            Alpn::Http2 => 2,
        }
    }
}

/// The negotiated protocol as one of the static constants above (no allocation per connection),
/// or `None` when none was negotiated or it is not one Warden knows.
pub fn known_protocol(negotiated: Option<&[u8]>) -> Option<&'static [u8]> {
    let p = negotiated?;
    SERVER_PROTOCOLS.iter().copied().find(|known| *known == p)
}

/// Whether a negotiated protocol is HTTP/1.x (`istio-http/1.0`, `istio-http/1.1`, `http/1.0`,
/// `http/1.1`).
pub fn is_http1(negotiated: Option<&[u8]>) -> bool {
    negotiated.is_some_and(|p| [ISTIO_HTTP10, ISTIO_HTTP11, HTTP10, HTTP11].contains(&p))
}

/// Whether a negotiated protocol carries HTTP (Istio's `istio-http/*` and `istio-h2`, or the
/// plain HTTP ones).
pub fn is_http(negotiated: Option<&[u8]>) -> bool {
    negotiated
        .is_some_and(|p| [ISTIO_HTTP10, ISTIO_HTTP11, ISTIO_H2, HTTP10, HTTP11, H2].contains(&p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_set_is_accepted_by_the_server() {
        for set in Alpn::ALL {
            for p in set.protocols() {
                assert!(SERVER_PROTOCOLS.contains(p), "{set:?}: {p:?}");
            }
            assert_eq!(Alpn::ALL[set.index()], set);
        }
        assert_eq!(known_protocol(Some(b"istio-h2")), Some(ISTIO_H2));
        assert_eq!(known_protocol(Some(b"spdy/3")), None);
        assert_eq!(known_protocol(None), None);
        assert!(is_http(Some(ISTIO_HTTP11)) && is_http(Some(H2)));
        assert!(!is_http(Some(ISTIO)) && !is_http(Some(ISTIO_PEER_EXCHANGE)) && !is_http(None));
        assert!(is_http1(Some(ISTIO_HTTP11)) && is_http1(Some(HTTP10)));
        assert!(!is_http1(Some(ISTIO_H2)) && !is_http1(Some(H2)) && !is_http1(Some(ISTIO)));
        assert!(!is_http1(None));
    }
}
