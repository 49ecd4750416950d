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

/// The ALPN protocols a TLS ClientHello offers, parsed from `buf` (the first record(s)).
/// `Err(true)` when more bytes are needed, `Err(false)` when it is not a parseable ClientHello.
/// `Ok(vec![])` when the hello has no ALPN extension.
pub fn client_hello_alpns(buf: &[u8]) -> Result<Vec<Vec<u8>>, bool> {
    // Record header: type 22, version, length.
    if buf.len() < 5 {
        return Err(true);
    }
    if buf[0] != 0x16 {
        return Err(false);
    }
    let rec_len = usize::from(u16::from_be_bytes([buf[3], buf[4]]));
    // The hello usually fits one record (<= 16 KiB); parse what that record holds.
    let Some(body) = buf.get(5..5 + rec_len) else {
        return Err(true);
    };
    let mut r = Reader(body);
    let hs_type = r.u8().ok_or(false)?;
    if hs_type != 1 {
        return Err(false);
    }
    let hs_len = r.u24().ok_or(false)?;
    if hs_len > r.0.len() {
        // A hello split over several records: rare, and not worth reassembling here.
        return Err(false);
    }
    r.skip(2 + 32).ok_or(false)?; // version, random
    let sid = usize::from(r.u8().ok_or(false)?);
    r.skip(sid).ok_or(false)?;
    let cs = usize::from(r.u16().ok_or(false)?);
    r.skip(cs).ok_or(false)?;
    let comp = usize::from(r.u8().ok_or(false)?);
    r.skip(comp).ok_or(false)?;
    if r.0.is_empty() {
        return Ok(Vec::new());
    }
    let ext_len = usize::from(r.u16().ok_or(false)?);
    let mut exts = Reader(r.take(ext_len).ok_or(false)?);
    while !exts.0.is_empty() {
        let ty = exts.u16().ok_or(false)?;
        let len = usize::from(exts.u16().ok_or(false)?);
        let data = exts.take(len).ok_or(false)?;
        if ty == 16 {
            let mut d = Reader(data);
            let list = usize::from(d.u16().ok_or(false)?);
            let mut l = Reader(d.take(list).ok_or(false)?);
            let mut out = Vec::new();
            while !l.0.is_empty() {
                let n = usize::from(l.u8().ok_or(false)?);
                // RFC 7301: a protocol name is 1 to 255 bytes; an empty one is malformed.
                if n == 0 {
                    return Err(false);
                }
                out.push(l.take(n).ok_or(false)?.to_vec());
            }
            return Ok(out);
        }
    }
    Ok(Vec::new())
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn skip(&mut self, n: usize) -> Option<()> {
        self.take(n).map(|_| ())
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3)
            .map(|b| (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]))
    }
}

/// Whether an ALPN protocol is one a mesh (Istio or Warden) client sidecar offers.
pub fn is_mesh_alpn(p: &[u8]) -> bool {
    p == b"istio" || p.starts_with(b"istio-")
}

/// Peeks the ClientHello on `stream` (up to 16 KiB, within `wait`): the ALPN protocols it
/// offers, or `None` when it cannot be read in time or parsed.
pub async fn peek_client_hello_alpns(stream: &TcpStream, wait: Duration) -> Option<Vec<Vec<u8>>> {
    let mut buf = vec![0u8; 16 * 1024 + 5];
    let deadline = tokio::time::Instant::now() + wait;
    let mut last = 0;
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        match client_hello_alpns(&buf[..n]) {
            Ok(alpns) => return Some(alpns),
            Err(false) => return None,
            Err(true) => {
                if n == last {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                last = n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hello(alpn: &[&[u8]]) -> Vec<u8> {
        use std::sync::Arc;
        let roots = rustls::RootCertStore::empty();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
        let mut conn =
            rustls::ClientConnection::new(Arc::new(cfg), "example.com".try_into().unwrap())
                .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[test]
    fn alpn_of_real_client_hellos() {
        let h = hello(&[b"istio-peer-exchange", b"istio"]);
        assert_eq!(
            client_hello_alpns(&h).unwrap(),
            vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()]
        );
        let h = hello(&[b"h2", b"http/1.1"]);
        let a = client_hello_alpns(&h).unwrap();
        assert!(!a.iter().any(|p| is_mesh_alpn(p)));
        assert_eq!(a.len(), 2);
        assert_eq!(
            client_hello_alpns(&hello(&[])).unwrap(),
            Vec::<Vec<u8>>::new()
        );
        assert_eq!(client_hello_alpns(&h[..20]), Err(true));
        assert_eq!(client_hello_alpns(b"GET / HTTP/1.1\r\n"), Err(false));
    }

    #[test]
    fn an_empty_alpn_entry_is_malformed() {
        // The fuzzer's find: a hello whose ALPN list holds a zero-length protocol name.
        let crash: &[u8] = &[
            22, 22, 9, 0, 72, 1, 0, 0, 0, 28, 28, 228, 218, 28, 60, 28, 28, 28, 28, 28, 28, 1, 0,
            0, 0, 28, 12, 28, 28, 68, 28, 28, 28, 28, 28, 20, 28, 28, 28, 80, 65, 0, 0, 0, 0, 0, 0,
            0, 28, 0, 16, 0, 4, 0, 1, 0, 0, 171, 80, 82, 73, 0, 0, 61, 0, 0, 0, 28, 28, 0, 1, 0, 0,
            0, 0, 0, 9, 30,
        ];
        assert_eq!(client_hello_alpns(crash), Err(false));
    }

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
