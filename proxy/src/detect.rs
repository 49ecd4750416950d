//! Protocol detection on the first bytes of an inbound connection (peeked, never consumed).

use std::time::Duration;

use tokio::net::TcpStream;

/// What the first bytes look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// A TLS record (handshake).
    Tls,
    /// An HTTP/1.x request line.
    Http1,
    /// The HTTP/2 connection preface.
    Http2,
    /// Other bytes.
    Other,
    /// Nothing arrived in time (or the client closed): a server-first protocol, or idle.
    Nothing,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// Classifies a prefix: `None` when more bytes are needed to decide.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf[0] == 0x16 {
        return match buf.get(1) {
            None => None,
            Some(3) => Some(Detected::Tls),
            Some(_) => Some(Detected::Other),
        };
    }
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] {
        return if n == H2_PREFACE.len() {
            Some(Detected::Http2)
        } else {
            None
        };
    }
    let mut maybe = false;
    for m in METHODS {
        let k = buf.len().min(m.len());
        if buf[..k] == m[..k] {
            if k == m.len() {
                return Some(Detected::Http1);
            }
            maybe = true;
        }
    }
    if maybe { None } else { Some(Detected::Other) }
}

/// Peeks at `stream` until the protocol is known or `wait` passed.
pub async fn detect(stream: &TcpStream, wait: Duration) -> Detected {
    let mut buf = [0u8; 32];
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => {
                return if last == 0 {
                    Detected::Nothing
                } else {
                    Detected::Other
                };
            }
            Ok(Err(_)) | Ok(Ok(0)) => return Detected::Nothing,
            Ok(Ok(n)) => n,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        if n == buf.len() {
            return Detected::Other;
        }
        if n == last {
            // No new bytes yet: peek returns at once while data is buffered, so wait a little.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        last = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies() {
        assert_eq!(classify(&[0x16, 3, 1]), Some(Detected::Tls));
        assert_eq!(classify(&[0x16]), None);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"GE"), None);
        assert_eq!(
            classify(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
            Some(Detected::Http2)
        );
        assert_eq!(classify(b"PRI * HT"), None);
        assert_eq!(classify(b"hello"), Some(Detected::Other));
        assert_eq!(classify(b"\x00\x01"), Some(Detected::Other));
    }
}
