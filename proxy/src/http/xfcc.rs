//! `X-Forwarded-Client-Cert`, as an Envoy sidecar sets it on inbound mTLS requests
//! (`forward_client_cert_details: SANITIZE_SET` with Hash, Subject and URI):
//! `By=<own SPIFFE ID>;Hash=<hex SHA-256 of the peer's leaf certificate>;Subject="";URI=<peer SPIFFE ID>`.
//! Built once per connection; the client's own header is always replaced (or removed on
//! plaintext), so an app can trust it.

use http::HeaderValue;
use http::header::HeaderName;

/// The header name.
pub static XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// The XFCC value for a peer whose leaf certificate is `peer_cert_der` and whose identity is
/// `peer_uri`, seen by this proxy as `own_uri`. `None` if a value cannot be a header (an
/// identity with control characters cannot come from a verified certificate).
pub fn value(own_uri: &str, peer_cert_der: &[u8], peer_uri: &str) -> Option<HeaderValue> {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, peer_cert_der);
    let mut s = String::with_capacity(own_uri.len() + peer_uri.len() + 96);
    s.push_str("By=");
    s.push_str(own_uri);
    s.push_str(";Hash=");
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in digest.as_ref() {
        s.push(char::from(HEX[usize::from(b >> 4)]));
        s.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    s.push_str(";Subject=\"\";URI=");
    s.push_str(peer_uri);
    HeaderValue::from_str(&s).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_format() {
        let v = value(
            "spiffe://cluster.local/ns/b/sa/server",
            b"certificate bytes",
            "spiffe://cluster.local/ns/a/sa/client",
        )
        .unwrap();
        // sha256("certificate bytes")
        let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, b"certificate bytes");
        let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            v.to_str().unwrap(),
            format!(
                "By=spiffe://cluster.local/ns/b/sa/server;Hash={hex};Subject=\"\";URI=spiffe://cluster.local/ns/a/sa/client"
            )
        );
        assert!(value("a\nb", b"x", "c").is_none());
    }
}
