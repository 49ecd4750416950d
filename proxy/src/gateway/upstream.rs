//! Connecting to a route's destination: mesh mTLS with secure naming (as the gateway's own
//! identity) for `MESH_INTERNAL` services, TLS origination for DestinationRule SIMPLE /
//! MUTUAL, plain TCP otherwise.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use warden_identity::SpiffeId;
use warden_identity::tls::{Alpn, TlsError, TlsProvider};

use super::table::Target;

/// Any upstream stream.
pub enum Upstream {
    /// Plain TCP.
    Plain(TcpStream),
    /// Mesh mTLS.
    Mesh(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Originated TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// How the upstream connection is secured, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Plaintext.
    None,
    /// Mesh mTLS with this peer.
    Mesh(SpiffeId),
    /// Originated TLS (server certificate verified).
    Tls,
}

/// Why no upstream connection was made.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No endpoint carries the route's subset labels.
    #[error("no endpoint of {0} matches the subset")]
    NoEndpoint(String),
    /// TCP connect failed or timed out.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The mesh mTLS handshake failed (including secure naming).
    #[error("mTLS to {addr}: {source}")]
    Mesh {
        /// `host:port`.
        addr: String,
        /// Why.
        source: TlsError,
    },
    /// The originated TLS handshake failed (server certificate not trusted, wrong name, ...).
    #[error("TLS to {addr} (SNI {sni}): {reason}")]
    Tls {
        /// `host:port`.
        addr: String,
        /// The SNI sent.
        sni: String,
        /// Why.
        reason: String,
    },
}

/// Connects to `target` (next endpoint). `alpn` is what the mesh connection will carry. With
/// `raw`, the connection is plain TCP whatever the destination (TLS passed through untouched).
pub async fn connect(
    mesh: &TlsProvider,
    target: &Target,
    alpn: Alpn,
    raw: bool,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<(Upstream, Security), UpstreamError> {
    let (addr, port) = target
        .pick()
        .ok_or_else(|| UpstreamError::NoEndpoint(target.host.clone()))?;
    connect_endpoint(
        mesh,
        target,
        (&addr, port),
        alpn,
        raw,
        connect_timeout,
        handshake_timeout,
    )
    .await
}

/// Like [`connect`], to a given endpoint of `target` (`(address or host name, port)`).
pub async fn connect_endpoint(
    mesh: &TlsProvider,
    target: &Target,
    (addr, port): (&str, u16),
    alpn: Alpn,
    raw: bool,
    connect_timeout: Duration,
    handshake_timeout: Duration,
) -> Result<(Upstream, Security), UpstreamError> {
    let where_ = format!("{addr}:{port}");
    let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect((addr, port))).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return Err(UpstreamError::Connect {
                addr: where_,
                reason: e.to_string(),
            });
        }
        Err(_) => {
            return Err(UpstreamError::Connect {
                addr: where_,
                reason: format!("timed out after {connect_timeout:?}"),
            });
        }
    };
    let _ = tcp.set_nodelay(true);
    if raw {
        return Ok((Upstream::Plain(tcp), Security::None));
    }
    if target.is_mesh() {
        // The session-cache key (mesh connections send no SNI): the service host.
        let name = ServerName::try_from(target.host.clone()).unwrap_or(ServerName::IpAddress(
            std::net::IpAddr::from([0, 0, 0, 0]).into(),
        ));
        let r = tokio::time::timeout(
            handshake_timeout,
            mesh.connect_to(tcp, name, &target.identities, alpn),
        )
        .await;
        return match r {
            Ok(Ok((s, peer))) => Ok((Upstream::Mesh(Box::new(s)), Security::Mesh(peer))),
            Ok(Err(source)) => Err(UpstreamError::Mesh {
                addr: where_,
                source,
            }),
            Err(_) => Err(UpstreamError::Mesh {
                addr: where_,
                source: TlsError::from_io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "handshake timed out",
                )),
            }),
        };
    }
    if let Some(o) = &target.origination {
        let sni = o.sni.clone().unwrap_or_else(|| target.host.clone());
        let name = ServerName::try_from(sni.clone()).map_err(|e| UpstreamError::Tls {
            addr: where_.clone(),
            sni: sni.clone(),
            reason: format!("not a valid server name: {e}"),
        })?;
        let r = tokio::time::timeout(
            handshake_timeout,
            tokio_rustls::TlsConnector::from(if alpn == Alpn::Http2 {
                o.config_h2.clone()
            } else {
                o.config.clone()
            })
            .connect(name, tcp),
        )
        .await;
        return match r {
            Ok(Ok(s)) => Ok((Upstream::Tls(Box::new(s)), Security::Tls)),
            Ok(Err(e)) => Err(UpstreamError::Tls {
                addr: where_,
                sni,
                reason: e.to_string(),
            }),
            Err(_) => Err(UpstreamError::Tls {
                addr: where_,
                sni,
                reason: "handshake timed out".into(),
            }),
        };
    }
    Ok((Upstream::Plain(tcp), Security::None))
}

impl AsyncRead for Upstream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Upstream::Mesh(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Upstream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Upstream::Mesh(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_flush(cx),
            Upstream::Mesh(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Upstream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Upstream::Mesh(s) | Upstream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
