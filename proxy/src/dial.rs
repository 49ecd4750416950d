//! Connecting out: TCP connect under a deadline (to an app from the inbound source address, or to
//! anything else), and to a peer sidecar the mTLS handshake with secure naming after it, under
//! its own deadline. One path for the L4 forwarders, the HTTP/1.1 mesh pool, the HTTP/2 peer
//! pool, upgrades and the app pools, so a timeout or a refused peer reads the same in every
//! access log.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use warden_identity::SpiffeId;
use warden_identity::tls::{Alpn, ClientTlsStream, InPlaceTls, TlsError, TlsProvider};

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// TCP connect failed.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        /// The peer sidecar or app.
        endpoint: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// TCP connect took longer than the connect timeout.
    #[error("connect to {0}: timed out")]
    ConnectTimeout(SocketAddr),
    /// The mTLS handshake took longer than the handshake timeout.
    #[error("mTLS to {0}: handshake timed out")]
    HandshakeTimeout(SocketAddr),
    /// The mTLS handshake failed, secure naming included.
    #[error("mTLS to {endpoint}: {source}")]
    Tls {
        /// The peer sidecar.
        endpoint: SocketAddr,
        /// Why.
        source: TlsError,
    },
}

/// How to reach peers: the workload's TLS configs and the two deadlines.
#[derive(Clone, Copy)]
pub struct Dialer<'a> {
    /// The workload's TLS configs.
    pub tls: &'a TlsProvider,
    /// Deadline of the TCP connect.
    pub connect_timeout: Duration,
    /// Deadline of the mTLS handshake.
    pub handshake_timeout: Duration,
}

impl Dialer<'_> {
    /// Connects to `endpoint` (with `TCP_NODELAY`) and completes an mTLS handshake offering
    /// `alpn`, accepting the peer only if its certificate names one of `identities`. Returns
    /// the stream and the peer's verified identity.
    pub async fn dial(
        &self,
        endpoint: SocketAddr,
        identities: &[SpiffeId],
        alpn: Alpn,
    ) -> Result<(ClientTlsStream<TcpStream>, SpiffeId), DialError> {
        let tcp = connect(endpoint, None, self.connect_timeout).await?;
        self.within(endpoint, self.tls.connect(tcp, identities, alpn))
            .await
    }

    /// Like [`Self::dial`], for a connection that is only forwarded (L4): the records are
    /// sealed and opened in place ([`TlsProvider::connect_in_place`]).
    pub async fn dial_in_place(
        &self,
        endpoint: SocketAddr,
        identities: &[SpiffeId],
        alpn: Alpn,
    ) -> Result<(InPlaceTls<TcpStream>, SpiffeId), DialError> {
        let tcp = connect(endpoint, None, self.connect_timeout).await?;
        self.within(endpoint, self.tls.connect_in_place(tcp, identities, alpn))
            .await
    }

    /// Connects to a peer sidecar like [`Self::dial`], with the records sealed and opened in
    /// place when TLS 1.3 is the only version ([`TlsProvider::in_place_supported`]), through
    /// rustls's buffered stream otherwise.
    pub async fn dial_peer(
        &self,
        endpoint: SocketAddr,
        identities: &[SpiffeId],
        alpn: Alpn,
    ) -> Result<(PeerStream, SpiffeId), DialError> {
        if self.tls.in_place_supported() {
            let (s, id) = self.dial_in_place(endpoint, identities, alpn).await?;
            Ok((PeerStream::InPlace(s), id))
        } else {
            let (s, id) = self.dial(endpoint, identities, alpn).await?;
            Ok((PeerStream::Buffered(Box::new(s)), id))
        }
    }

    /// Runs the mTLS `handshake` with `endpoint` under the handshake deadline.
    async fn within<T>(
        &self,
        endpoint: SocketAddr,
        handshake: impl std::future::Future<Output = Result<T, TlsError>>,
    ) -> Result<T, DialError> {
        tokio::time::timeout(self.handshake_timeout, handshake)
            .await
            .map_err(|_| DialError::HandshakeTimeout(endpoint))?
            .map_err(|source| DialError::Tls { endpoint, source })
    }
}

/// An mTLS connection to a peer sidecar ([`Dialer::dial_peer`]).
// The in-place stream is the common case and is not boxed; rustls's (TLS 1.2 enabled) is.
#[allow(clippy::large_enum_variant)]
pub enum PeerStream {
    /// Records sealed and opened in place.
    InPlace(InPlaceTls<TcpStream>),
    /// rustls's buffered stream.
    Buffered(Box<ClientTlsStream<TcpStream>>),
}

/// Calls the same method on whichever stream `self` holds.
macro_rules! either {
    ($self:ident, $s:ident => $e:expr) => {
        match $self.get_mut() {
            PeerStream::InPlace($s) => $e,
            PeerStream::Buffered($s) => $e,
        }
    };
}

impl AsyncRead for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncWrite for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => Pin::new(s).poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        either!(self, s => Pin::new(s).poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::InPlace(s) => s.is_write_vectored(),
            PeerStream::Buffered(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_shutdown(cx))
    }
}

/// TCP connect to `endpoint` within `timeout`, with `TCP_NODELAY`. From `source` when given and
/// of the same address family (the inbound side's 127.0.0.6, so the app sees traffic from the
/// proxy as Istio's does); when it cannot be bound, connects without it and warns.
pub async fn connect(
    endpoint: SocketAddr,
    source: Option<IpAddr>,
    timeout: Duration,
) -> Result<TcpStream, DialError> {
    let failed = |source| DialError::Connect { endpoint, source };
    let socket = if endpoint.is_ipv4() {
        tokio::net::TcpSocket::new_v4()
    } else {
        tokio::net::TcpSocket::new_v6()
    }
    .map_err(failed)?;
    if let Some(src) = source.filter(|s| s.is_ipv4() == endpoint.is_ipv4())
        && let Err(e) = socket.bind(SocketAddr::new(src, 0))
    {
        tracing::warn!(%src, error = %e, "cannot bind the source address; connecting without it");
    }
    let tcp = tokio::time::timeout(timeout, socket.connect(endpoint))
        .await
        .map_err(|_| DialError::ConnectTimeout(endpoint))?
        .map_err(failed)?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

#[cfg(test)]
mod tests {
    use super::*;
    use warden_identity::TrustDomain;
    use warden_identity::tls::TlsSettings;

    fn peer() -> Vec<SpiffeId> {
        vec![SpiffeId::istio(&TrustDomain::default(), "ns", "server").unwrap()]
    }

    async fn dial(tls: &TlsProvider, endpoint: SocketAddr) -> DialError {
        let dialer = Dialer {
            tls,
            connect_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_millis(100),
        };
        dialer.dial(endpoint, &peer(), Alpn::Tcp).await.unwrap_err()
    }

    #[tokio::test]
    async fn connect_binds_the_source_of_the_same_family_only() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let t = Duration::from_secs(2);
        let from = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        for (source, want) in [
            (from("127.0.0.6"), "127.0.0.6"),
            (None, "127.0.0.1"),
            // Another family: not bound, connects from the default address.
            (from("::1"), "127.0.0.1"),
        ] {
            let c = connect(addr, source, t).await.unwrap();
            assert!(c.nodelay().unwrap());
            let (_, peer) = l.accept().await.unwrap();
            assert_eq!(peer.ip(), want.parse::<IpAddr>().unwrap(), "{source:?}");
        }
    }

    #[tokio::test]
    async fn each_failure_names_the_peer_and_the_step() {
        let tls = TlsProvider::new(TlsSettings::default()).unwrap();

        // Nothing listens: the TCP connect is refused.
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let e = dial(&tls, addr).await;
        assert!(
            matches!(&e, DialError::Connect { endpoint, source }
                if *endpoint == addr && source.kind() == std::io::ErrorKind::ConnectionRefused),
            "{e:?}"
        );
        assert!(e.to_string().starts_with(&format!("connect to {addr}: ")));

        // Without credentials the client refuses to start a handshake (fail closed).
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let e = dial(&tls, addr).await;
        assert!(
            matches!(&e, DialError::Tls { endpoint, source: TlsError::NoCredentials } if *endpoint == addr),
            "{e:?}"
        );

        // A peer that accepts and never answers the ClientHello: the handshake deadline.
        let dir = tempfile::tempdir().unwrap();
        let mesh_ca = warden_identity::CertificateAuthority::self_signed(
            dir.path().join("ca"),
            warden_identity::CaOptions::default(),
        )
        .unwrap();
        let id = SpiffeId::istio(&TrustDomain::default(), "ns", "client").unwrap();
        let key = warden_identity::KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = warden_identity::keys::csr_pem(&key, &id).unwrap();
        let cert = mesh_ca.sign_csr(&csr, &id, 3600).unwrap();
        let trust = warden_identity::tls::TrustBundle::from_pem(
            TrustDomain::default(),
            mesh_ca.root_bundle_pem().as_bytes(),
            "root",
        )
        .unwrap();
        let creds = warden_identity::tls::WorkloadCredentials::from_pem(
            cert.chain_pem.concat().as_bytes(),
            key.serialize_pem().as_bytes(),
            trust,
            "test",
        )
        .unwrap();
        tls.install(&creds).unwrap();
        let e = dial(&tls, addr).await;
        assert!(
            matches!(e, DialError::HandshakeTimeout(a) if a == addr),
            "{e:?}"
        );
        assert_eq!(
            e.to_string(),
            format!("mTLS to {addr}: handshake timed out")
        );
        drop(silent);
    }
}
