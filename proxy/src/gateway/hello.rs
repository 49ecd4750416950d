//! Reading a TLS ClientHello without terminating TLS: the bytes are kept and replayed, so the
//! same connection can then be passed through untouched (PASSTHROUGH) or handed to a TLS
//! acceptor chosen by the SNI.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The largest ClientHello read (a hello with post-quantum key shares is ~1.5 KiB; TLS allows
/// a handshake message up to 16 MiB, but a hello beyond this is refused).
pub const MAX_HELLO: usize = 16 * 1024 + 5;

/// What the first bytes of a connection were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A TLS ClientHello, with its server name (lower case) if it sent one.
    Tls {
        /// The SNI.
        sni: Option<String>,
    },
    /// Not TLS (plaintext, e.g. HTTP).
    Plaintext,
}

/// Why a ClientHello could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HelloError {
    /// The client sent nothing in time.
    #[error("no ClientHello within {0:?}")]
    Timeout(Duration),
    /// The client closed before a whole hello.
    #[error("connection closed before a complete ClientHello")]
    Closed,
    /// A TLS record that is not a valid ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
    /// Reading failed.
    #[error("reading the ClientHello: {0}")]
    Io(#[from] io::Error),
}

/// Reads the first bytes of `stream`: if they are a TLS handshake record, reads the whole
/// ClientHello (possibly over several records) and parses its SNI. Returns what was read (to
/// replay with [`Prefixed`]) and what it was.
pub async fn read_hello<S: AsyncRead + Unpin>(
    stream: &mut S,
    wait: Duration,
) -> Result<(Vec<u8>, Hello), HelloError> {
    let mut buf = Vec::with_capacity(2048);
    let read = async {
        loop {
            match parse(&buf) {
                Parse::NeedMore => {}
                Parse::Done(h) => return Ok(h),
                Parse::Bad(why) => return Err(HelloError::Malformed(why)),
            }
            if buf.len() >= MAX_HELLO {
                return Err(HelloError::Malformed("larger than 16 KiB"));
            }
            let mut chunk = [0u8; 4096];
            let want = chunk.len().min(MAX_HELLO - buf.len());
            let n = stream.read(&mut chunk[..want]).await?;
            if n == 0 {
                return Err(HelloError::Closed);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    let hello = tokio::time::timeout(wait, read)
        .await
        .map_err(|_| HelloError::Timeout(wait))??;
    Ok((buf, hello))
}

enum Parse {
    NeedMore,
    Done(Hello),
    Bad(&'static str),
}

/// Parses the handshake records at the start of `buf`.
fn parse(buf: &[u8]) -> Parse {
    let Some(&first) = buf.first() else {
        return Parse::NeedMore;
    };
    if first != 0x16 {
        return Parse::Done(Hello::Plaintext);
    }
    // Reassemble the handshake message from consecutive handshake records.
    let mut msg = Vec::new();
    let mut at = 0;
    loop {
        let Some(hdr) = buf.get(at..at + 5) else {
            return Parse::NeedMore;
        };
        if hdr[0] != 0x16 {
            return Parse::Bad("a non-handshake record inside the ClientHello");
        }
        if hdr[1] != 3 {
            return Parse::Bad("not a TLS record version");
        }
        let len = usize::from(u16::from_be_bytes([hdr[3], hdr[4]]));
        if len == 0 {
            return Parse::Bad("empty handshake record");
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return Parse::NeedMore;
        };
        msg.extend_from_slice(body);
        at += 5 + len;
        if msg.len() >= 4 {
            if msg[0] != 1 {
                return Parse::Bad("first handshake message is not a ClientHello");
            }
            let hs_len =
                (usize::from(msg[1]) << 16) | (usize::from(msg[2]) << 8) | usize::from(msg[3]);
            if msg.len() >= 4 + hs_len {
                return match sni_of(&msg[4..4 + hs_len]) {
                    Some(sni) => Parse::Done(Hello::Tls { sni }),
                    None => Parse::Bad("truncated ClientHello fields"),
                };
            }
        }
    }
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
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| usize::from(b[0]))
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| usize::from(u16::from_be_bytes([b[0], b[1]])))
    }
}

/// The SNI host name of a ClientHello body: `Some(None)` when it has no SNI extension, `None`
/// when the body is malformed.
fn sni_of(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy version, random
    let sid = r.u8()?;
    r.take(sid)?;
    let cs = r.u16()?;
    r.take(cs)?;
    let comp = r.u8()?;
    r.take(comp)?;
    if r.0.is_empty() {
        return Some(None);
    }
    let ext_len = r.u16()?;
    let mut exts = Reader(r.take(ext_len)?);
    while !exts.0.is_empty() {
        let ty = exts.u16()?;
        let len = exts.u16()?;
        let data = exts.take(len)?;
        if ty != 0 {
            continue;
        }
        let mut d = Reader(data);
        let list = d.u16()?;
        let mut l = Reader(d.take(list)?);
        while !l.0.is_empty() {
            let kind = l.u8()?;
            let n = l.u16()?;
            let name = l.take(n)?;
            if kind == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

/// A stream that first yields `prefix` (bytes already read), then the inner stream. Writes go
/// to the inner stream.
#[derive(Debug)]
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// Replays `prefix` before reading from `inner`.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Self {
            prefix,
            pos: 0,
            inner,
        }
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.pos);
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls for `name`.
    fn rustls_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let cfg =
            rustls::ClientConfig::builder_with_provider(warden_identity::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let mut conn = rustls::ClientConnection::new(
            std::sync::Arc::new(cfg),
            rustls_pki_types::ServerName::try_from(name.to_owned()).unwrap(),
        )
        .unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    #[tokio::test]
    async fn reads_sni_from_one_or_split_records() {
        let hello = rustls_hello("Shop.Example.com");
        let (buf, h) = read_hello(&mut &hello[..], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(buf, hello);
        assert_eq!(
            h,
            Hello::Tls {
                sni: Some("shop.example.com".into())
            }
        );
        // The same handshake message split over two records.
        let body = &hello[5..];
        let (a, b) = body.split_at(100);
        let mut split = vec![0x16, 3, 1, 0, a.len() as u8];
        split.extend_from_slice(a);
        split.extend_from_slice(&[0x16, 3, 1, (b.len() >> 8) as u8, b.len() as u8]);
        split.extend_from_slice(b);
        let (_, h) = read_hello(&mut &split[..], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            h,
            Hello::Tls {
                sni: Some("shop.example.com".into())
            }
        );
    }

    #[tokio::test]
    async fn plaintext_truncated_and_garbage() {
        let (_, h) = read_hello(&mut &b"GET / HTTP/1.1\r\n"[..], Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(h, Hello::Plaintext);
        let hello = rustls_hello("a.example");
        let e = read_hello(&mut &hello[..40], Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(matches!(e, HelloError::Closed), "{e}");
        let e = read_hello(
            &mut &[0x16, 3, 1, 0, 4, 2, 0, 0, 0][..],
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        assert!(matches!(e, HelloError::Malformed(_)), "{e}");
    }

    #[tokio::test]
    async fn prefixed_replays_then_reads_inner() {
        let mut p = Prefixed::new(b"abc".to_vec(), &b"def"[..]);
        let mut s = String::new();
        p.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "abcdef");
    }
}
