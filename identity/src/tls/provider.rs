//! [`TlsProvider`]: the current TLS configurations of a workload, swapped atomically when its
//! credentials change, and the connect/accept helpers every mesh connection goes through.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::client::UnbufferedClientConnection;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use time::OffsetDateTime;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use super::alpn::{Alpn, known_protocol};
use super::config::{SharedState, TlsConfigs, TlsSettings, certified_key, crypto_provider};
use super::credentials::WorkloadCredentials;
use super::error::{CredentialsError, TlsError};
use super::inplace::{self, InPlaceTls};
use super::verify::{ExpectedNames, check_secure_naming};
use crate::spiffe::SpiffeId;

/// A client-side mesh TLS stream.
pub type ClientTlsStream<S> = tokio_rustls::client::TlsStream<S>;
/// A server-side mesh TLS stream.
pub type ServerTlsStream<S> = tokio_rustls::server::TlsStream<S>;

/// A finished server-side handshake.
pub type Accepted<S> = (ServerTlsStream<S>, SpiffeId, Option<&'static [u8]>);

/// A finished server-side handshake whose records are decrypted in place
/// ([`TlsProvider::accept_in_place_with_leaf`]).
#[derive(Debug)]
pub struct InPlaceAccepted<S> {
    /// The stream, after the handshake.
    pub stream: InPlaceTls<S>,
    /// The client's verified identity.
    pub peer: SpiffeId,
    /// The negotiated ALPN protocol, if one of ours.
    pub alpn: Option<&'static [u8]>,
    /// The client's leaf certificate when the negotiated protocol is HTTP (for
    /// `X-Forwarded-Client-Cert`).
    pub leaf: Option<CertificateDer<'static>>,
}

struct Inner {
    settings: TlsSettings,
    crypto: Arc<CryptoProvider>,
    current: ArcSwapOption<TlsConfigs>,
    refusing_server: Arc<ServerConfig>,
    /// Serialises installs; holds the resumption state kept across rebuilds.
    resumption: Mutex<Option<SharedState>>,
    /// Bumped on every install or clear.
    generation: watch::Sender<u64>,
    /// The identities each client connection's server name stands for (secure naming inside
    /// the handshake).
    expected: Arc<ExpectedNames>,
}

/// The workload's TLS configurations, cheap to clone and to read per connection (one atomic
/// load). Before the first [`install`](Self::install), and after [`clear`](Self::clear), it
/// holds none: servers refuse every handshake and clients refuse to connect (fail closed).
#[derive(Clone)]
pub struct TlsProvider {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for TlsProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cur = self.inner.current.load();
        f.debug_struct("TlsProvider")
            .field("settings", &self.inner.settings)
            .field("identity", &cur.as_ref().map(|c| c.identity().clone()))
            .finish()
    }
}

impl TlsProvider {
    /// A provider with no credentials yet.
    pub fn new(settings: TlsSettings) -> Result<Self, CredentialsError> {
        let crypto = crypto_provider();
        let refusing_server = TlsConfigs::refusing_server(&crypto, &settings)?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                crypto,
                current: ArcSwapOption::empty(),
                refusing_server,
                resumption: Mutex::new(None),
                generation: watch::Sender::new(0),
                expected: Arc::new(ExpectedNames::default()),
            }),
        })
    }

    /// The settings.
    pub fn settings(&self) -> &TlsSettings {
        &self.inner.settings
    }

    /// Builds the configs for `creds` and makes them current. Connections already established
    /// keep theirs; new connections use the new ones. Session resumption state (client and
    /// server caches, ticket keys) starts over with every new certificate: a resumed session
    /// carries the certificates of its full handshake, which must not outlive them. When the
    /// trust material (roots, CRLs, trust domains) changed, the verifiers are replaced too, so
    /// a peer revoked by a new CRL cannot come back through a resumed session.
    pub fn install(
        &self,
        creds: &WorkloadCredentials,
    ) -> Result<Arc<TlsConfigs>, CredentialsError> {
        let mut guard = self
            .inner
            .resumption
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let certified = certified_key(creds, &self.inner.crypto)?;
        let fingerprint = creds.trust().fingerprint();
        let (shared, renewed) = match guard.as_ref() {
            Some(shared) if shared.fingerprint == fingerprint => (
                shared.with_fresh_sessions(&self.inner.settings)?,
                Some(certified),
            ),
            _ => (
                SharedState::new(
                    &self.inner.settings,
                    creds.trust(),
                    &self.inner.crypto,
                    certified,
                    self.inner.expected.clone(),
                )?,
                None,
            ),
        };
        let configs = Arc::new(TlsConfigs::build(
            creds,
            &self.inner.settings,
            &self.inner.crypto,
            &shared,
        )?);
        // Nothing can fail from here on.
        if let Some(certified) = renewed {
            shared.set_cert(certified);
        }
        shared.set_not_after(creds.not_after());
        *guard = Some(shared);
        self.inner.current.store(Some(configs.clone()));
        self.inner.generation.send_modify(|g| *g += 1);
        tracing::info!(
            identity = %creds.identity(),
            serial = %creds.serial(),
            not_after = %creds.not_after(),
            roots = creds.trust().roots().len(),
            crls = creds.trust().crls().len(),
            "installed workload TLS credentials"
        );
        Ok(configs)
    }

    /// Drops the credentials (e.g. the certificate expired): mTLS is refused from now on.
    pub fn clear(&self) {
        if self.inner.current.swap(None).is_some() {
            self.inner.generation.send_modify(|g| *g += 1);
            tracing::warn!("workload TLS credentials removed: mesh mTLS is refused");
        }
    }

    /// The current configs, if any.
    pub fn current(&self) -> Option<Arc<TlsConfigs>> {
        self.inner.current.load_full()
    }

    /// Whether credentials are installed.
    pub fn has_credentials(&self) -> bool {
        self.inner.current.load().is_some()
    }

    /// Notified on every install or clear.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// The server config to accept with: the current one, or one that refuses every handshake.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        match self.inner.current.load().as_ref() {
            Some(c) => c.server().clone(),
            None => self.inner.refusing_server.clone(),
        }
    }

    /// Connects to a mesh peer that must present one of `expected` (secure naming). The session
    /// cache key is derived from `expected`.
    pub async fn connect<S>(
        &self,
        stream: S,
        expected: &[SpiffeId],
        alpn: Alpn,
    ) -> Result<(ClientTlsStream<S>, SpiffeId), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = self.expect(expected);
        self.connect_to(stream, name, expected, alpn).await
    }

    /// The session-cache key for `expected`, registered so that the verifier checks secure
    /// naming during the handshake (refusing an impostor before our certificate is sent); the
    /// connect functions check it again after ([`server_identity`]).
    fn expect(&self, expected: &[SpiffeId]) -> ServerName<'static> {
        let name = session_key(expected);
        if let ServerName::DnsName(dns) = &name {
            self.inner.expected.register(dns.as_ref(), expected);
        }
        name
    }

    /// Like [`connect`](Self::connect) with an explicit server name: the session-cache key, and
    /// the SNI when [`TlsSettings::send_sni`] is on. Use the peer's address or host.
    pub async fn connect_to<S>(
        &self,
        stream: S,
        server_name: ServerName<'static>,
        expected: &[SpiffeId],
        alpn: Alpn,
    ) -> Result<(ClientTlsStream<S>, SpiffeId), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let Some(configs) = self.inner.current.load_full() else {
            return Err(TlsError::NoCredentials);
        };
        let stream = tokio_rustls::TlsConnector::from(configs.client(alpn).clone())
            .connect(server_name, stream)
            .await
            .map_err(TlsError::from_io)?;
        let peer = server_identity(&configs, stream.get_ref().1, expected)?;
        Ok((stream, peer))
    }

    /// Accepts a mesh client: requires and verifies its certificate; returns its identity and
    /// the negotiated ALPN protocol. Without credentials the handshake is refused with an alert
    /// and [`TlsError::NoCredentials`] is returned.
    pub async fn accept<S>(&self, stream: S) -> Result<Accepted<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let configs = self.inner.current.load_full();
        let server = match &configs {
            Some(c) => c.server().clone(),
            None => self.inner.refusing_server.clone(),
        };
        let result = tokio_rustls::TlsAcceptor::from(server).accept(stream).await;
        let (stream, configs) = match (result, configs) {
            (Ok(s), Some(c)) => (s, c),
            // The refusing config completes no handshake.
            (_, None) => return Err(TlsError::NoCredentials),
            (Err(e), Some(_)) => return Err(TlsError::from_io(e)),
        };
        let (_, conn) = stream.get_ref();
        let peer = configs
            .verifier()
            .peer_identity_checked(conn, OffsetDateTime::now_utc())?;
        let alpn = known_protocol(conn.alpn_protocol());
        Ok((stream, peer, alpn))
    }

    /// Like [`Self::connect`], for a connection whose plaintext is only forwarded (L4): the
    /// handshake, certificate checks, secure naming, session tickets and key schedule are
    /// rustls's; the records are opened and sealed in place by [`InPlaceTls`]. Fails when
    /// TLS 1.2 is enabled ([`Self::in_place_supported`]).
    pub async fn connect_in_place<S>(
        &self,
        mut stream: S,
        expected: &[SpiffeId],
        alpn: Alpn,
    ) -> Result<(InPlaceTls<S>, SpiffeId), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.in_place_supported() {
            return Err(tls12_enabled());
        }
        let name = self.expect(expected);
        let Some(configs) = self.inner.current.load_full() else {
            return Err(TlsError::NoCredentials);
        };
        let conn = UnbufferedClientConnection::new(configs.client(alpn).clone(), name)
            .map_err(TlsError::from_rustls)?;
        let handshake = inplace::handshake(conn, &mut stream).await?;
        let peer = server_identity(&configs, handshake.common(), expected)?;
        Ok((handshake.into_stream(stream)?, peer))
    }

    /// Whether [`Self::accept_in_place`] can be used: TLS 1.3 only (TLS 1.2 disabled).
    pub fn in_place_supported(&self) -> bool {
        !self.inner.settings.allow_tls12
    }

    /// Like [`Self::accept`], with the records decrypted and sealed in place by
    /// [`InPlaceTls`]; the handshake, certificate checks and key schedule are rustls's. Fails
    /// when TLS 1.2 is enabled ([`Self::in_place_supported`]).
    pub async fn accept_in_place<S>(
        &self,
        stream: S,
    ) -> Result<(InPlaceTls<S>, SpiffeId, Option<&'static [u8]>), TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let a = self.accept_in_place_inner(stream, false).await?;
        Ok((a.stream, a.peer, a.alpn))
    }

    /// Like [`Self::accept_in_place`], also returning the client's leaf certificate when the
    /// negotiated protocol is HTTP (the HTTP server forwards it in `X-Forwarded-Client-Cert`;
    /// an L4 connection needs no copy of it).
    pub async fn accept_in_place_with_leaf<S>(
        &self,
        stream: S,
    ) -> Result<InPlaceAccepted<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.accept_in_place_inner(stream, true).await
    }

    async fn accept_in_place_inner<S>(
        &self,
        mut stream: S,
        with_leaf: bool,
    ) -> Result<InPlaceAccepted<S>, TlsError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !self.in_place_supported() {
            return Err(tls12_enabled());
        }
        let configs = self.inner.current.load_full();
        let server = match &configs {
            Some(c) => c.server().clone(),
            None => self.inner.refusing_server.clone(),
        };
        let conn = UnbufferedServerConnection::new(server).map_err(TlsError::from_rustls)?;
        let result = inplace::handshake(conn, &mut stream).await;
        let (handshake, configs) = match (result, configs) {
            (Ok(h), Some(c)) => (h, c),
            // The refusing config completes no handshake.
            (_, None) => return Err(TlsError::NoCredentials),
            (Err(e), Some(_)) => return Err(e),
        };
        let common = handshake.common();
        let peer = configs
            .verifier()
            .peer_identity_checked(common, OffsetDateTime::now_utc())?;
        let alpn = known_protocol(common.alpn_protocol());
        let leaf = (with_leaf && super::alpn::is_http(alpn))
            .then(|| {
                common
                    .peer_certificates()?
                    .first()
                    .map(|c| c.clone().into_owned())
            })
            .flatten();
        let stream = handshake.into_stream(stream)?;
        Ok(InPlaceAccepted {
            stream,
            peer,
            alpn,
            leaf,
        })
    }
}

/// The server's verified identity after a client handshake, which must be one of `expected`
/// (secure naming).
fn server_identity(
    configs: &TlsConfigs,
    conn: &rustls::CommonState,
    expected: &[SpiffeId],
) -> Result<SpiffeId, TlsError> {
    let peer = configs
        .verifier()
        .peer_identity_checked(conn, OffsetDateTime::now_utc())?;
    check_secure_naming(&peer, expected)?;
    Ok(peer)
}

fn tls12_enabled() -> TlsError {
    TlsError::Handshake(rustls::Error::General(
        "in-place records need TLS 1.3 only, and TLS 1.2 is enabled".into(),
    ))
}

/// A session-cache key for a destination known by its identities: a name under the reserved
/// `.invalid` TLD made from a hash of the identities, so that destinations backed by different
/// identities keep separate cache entries. Not sent to the peer unless
/// [`TlsSettings::send_sni`] is on (callers that want SNI use `connect_to` with a real name).
fn session_key(expected: &[SpiffeId]) -> ServerName<'static> {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for id in expected {
        ctx.update(id.as_str().as_bytes());
        ctx.update(b"\0");
    }
    let digest = ctx.finish();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut name = String::with_capacity(40);
    for &b in &digest.as_ref()[..10] {
        name.push(char::from(HEX[usize::from(b >> 4)]));
        name.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    name.push_str(".mesh.invalid");
    ServerName::try_from(name).unwrap_or(ServerName::IpAddress(
        IpAddr::V4(Ipv4Addr::UNSPECIFIED).into(),
    ))
}
