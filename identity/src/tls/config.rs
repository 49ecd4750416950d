//! Building the rustls configurations: once per credential change, shared by every connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use arc_swap::ArcSwap;

use rustls::client::{ClientSessionMemoryCache, ClientSessionStore, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::{ProducesTickets, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, ServerConfig, SupportedProtocolVersion};
use time::OffsetDateTime;

use super::alpn::{Alpn, SERVER_PROTOCOLS};
use super::credentials::{TrustBundle, WorkloadCredentials};
use super::error::CredentialsError;
use super::verify::{ExpectedNames, MeshClientVerifier, MeshServerVerifier, MeshVerifier};
use crate::spiffe::SpiffeId;

/// TLS settings of the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// Also allow TLS 1.2 (TLS 1.3 only by default).
    pub allow_tls12: bool,
    /// Client session cache size (TLS 1.3 tickets; 8 are kept per destination).
    pub client_session_cache: usize,
    /// Server session cache for TLS 1.2 session IDs.
    pub server_session_cache: usize,
    /// TLS 1.3 tickets a server sends after each handshake.
    pub tls13_tickets: usize,
    /// Whether clients send the server name (SNI). Mesh connections are keyed by SPIFFE ID, so
    /// off by default; the name given to `connect_to` is then only the session-cache key.
    pub send_sni: bool,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            allow_tls12: false,
            client_session_cache: 1024,
            server_session_cache: 1024,
            tls13_tickets: 2,
            send_sni: false,
        }
    }
}

impl TlsSettings {
    pub(crate) fn versions(&self) -> &'static [&'static SupportedProtocolVersion] {
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        static TLS13_AND_12: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        if self.allow_tls12 {
            &TLS13_AND_12
        } else {
            &TLS13_ONLY
        }
    }
}

/// The crypto provider every Warden TLS config uses: aws-lc-rs, with its key exchange groups
/// in the order that puts X25519MLKEM768 first (the `prefer-post-quantum` feature of rustls),
/// and AES-128-GCM as the preferred TLS 1.3 cipher suite.
///
/// rustls lists AES-256-GCM first; BoringSSL (Envoy, so Istio's sidecars), Go and OpenSSL's
/// TLS 1.3 clients prefer AES-128-GCM on CPUs with AES instructions. Both are TLS 1.3's
/// 128-bit-security AEADs for this purpose, and AES-128 runs 10 rounds to AES-256's 14: about a
/// third less CPU per byte on the bulk path, where encryption is the largest single cost.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    // TLS 1.3's AES-GCM record protection from ring where it is the faster of the two: its
    // AES-GCM uses VAES with AVX2 (the BoringSSL code Envoy runs), which aws-lc only has for
    // AVX-512; on such a CPU it seals and opens records about twice as fast. Only the AEAD
    // changes: the suites are the same on the wire, and key exchange, signatures, certificate
    // checks, the transcript hash and the HKDF key schedule stay aws-lc-rs.
    if ring_aes_gcm_is_faster() {
        for s in p.cipher_suites.iter_mut() {
            if let Some(with_ring) = ring_record_cipher(s.suite()) {
                *s = with_ring;
            }
        }
    }
    // A stable sort: TLS 1.3 suites stay ahead of TLS 1.2 ones, and within each version only
    // AES-128-GCM moves to the front.
    p.cipher_suites.sort_by_key(|s| {
        use rustls::CipherSuite as C;
        let aes128 = matches!(
            s.suite(),
            C::TLS13_AES_128_GCM_SHA256
                | C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        );
        (s.tls13().is_none(), !aes128)
    });
    // Make the order explicit rather than trusting a cargo feature: the hybrid PQ group first.
    p.kx_groups.sort_by_key(|g| {
        if g.name() == rustls::NamedGroup::X25519MLKEM768 {
            0
        } else {
            1
        }
    });
    Arc::new(p)
}

/// `suite` (a TLS 1.3 AES-GCM suite) with aws-lc-rs's transcript hash and HKDF and ring's
/// AEAD; `None` for other suites. Made once per process.
fn ring_record_cipher(suite: rustls::CipherSuite) -> Option<rustls::SupportedCipherSuite> {
    use rustls::crypto::{aws_lc_rs, ring};
    use std::sync::OnceLock;
    static AES_128: OnceLock<rustls::Tls13CipherSuite> = OnceLock::new();
    static AES_256: OnceLock<rustls::Tls13CipherSuite> = OnceLock::new();
    let (cell, aws, ring) = match suite {
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256 => (
            &AES_128,
            aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
        ),
        rustls::CipherSuite::TLS13_AES_256_GCM_SHA384 => (
            &AES_256,
            aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
        ),
        _ => return None,
    };
    let (aws, ring) = (aws.tls13()?, ring.tls13()?);
    let mixed = cell.get_or_init(|| rustls::Tls13CipherSuite {
        common: rustls::crypto::CipherSuiteCommon {
            suite: aws.common.suite,
            hash_provider: aws.common.hash_provider,
            confidentiality_limit: aws.common.confidentiality_limit,
        },
        hkdf_provider: aws.hkdf_provider,
        aead_alg: ring.aead_alg,
        quic: aws.quic,
    });
    Some(rustls::SupportedCipherSuite::Tls13(mixed))
}

/// Whether ring's AES-GCM beats aws-lc's on this CPU: VAES and VPCLMULQDQ with AVX2 but no
/// AVX-512 (where aws-lc has its own VAES code).
pub(crate) fn ring_aes_gcm_is_faster() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("vaes")
            && std::arch::is_x86_feature_detected!("vpclmulqdq")
            && std::arch::is_x86_feature_detected!("avx2")
            && !std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// What a workload's TLS configs share, and when it is replaced.
///
/// A resumed session carries the certificates of its full handshake (also through chains of
/// resumptions: a ticket issued on a resumed connection carries the original certificates), and
/// both sides refuse it once one of them has expired
/// ([`super::verify::MeshVerifier::peer_identity_checked`]). So that no resumption outlives
/// them, every piece of session state belongs to one certificate of ours:
/// - on renewal (same trust material) the verifiers (with their cache of parsed peer leaves)
///   and the certificate resolver are kept, and the client session cache, the server session
///   cache and the ticket keys start over ([`SharedState::with_fresh_sessions`]): connections
///   accepted or made with the previous configs keep their own session state, new ones cannot
///   resume a session made with our previous certificate;
/// - the tickets we issue live no longer than our current certificate ([`ExpiryBoundTicketer`]);
/// - when the trust material (roots, CRLs, trust domains) changes, everything is replaced, so a
///   peer revoked by a new CRL cannot come back through a resumed session.
///
/// The cost is one full handshake per peer after each renewal.
#[derive(Clone)]
pub(crate) struct SharedState {
    pub(crate) fingerprint: [u8; 32],
    client_store: Arc<dyn ClientSessionStore>,
    server_cache: Arc<ServerSessionMemoryCache>,
    ticketer: Arc<ExpiryBoundTicketer>,
    client_verifier: Arc<MeshClientVerifier>,
    server_verifier: Arc<MeshServerVerifier>,
    cert: Arc<CurrentCert>,
}

impl SharedState {
    pub(crate) fn new(
        settings: &TlsSettings,
        trust: &TrustBundle,
        provider: &CryptoProvider,
        certified: Arc<CertifiedKey>,
        expected: Arc<ExpectedNames>,
    ) -> Result<Self, CredentialsError> {
        let verifier = Arc::new(MeshVerifier::new(
            trust,
            provider.signature_verification_algorithms,
        )?);
        Ok(Self {
            fingerprint: trust.fingerprint(),
            client_store: Arc::new(ClientSessionMemoryCache::new(settings.client_session_cache)),
            server_cache: ServerSessionMemoryCache::new(settings.server_session_cache),
            ticketer: Arc::new(ExpiryBoundTicketer::new()?),
            client_verifier: Arc::new(MeshClientVerifier(verifier.clone())),
            server_verifier: Arc::new(MeshServerVerifier(verifier, expected)),
            cert: Arc::new(CurrentCert(ArcSwap::new(certified))),
        })
    }

    /// Presents `certified` from now on (connections in progress included).
    pub(crate) fn set_cert(&self, certified: Arc<CertifiedKey>) {
        self.cert.0.store(certified);
    }

    /// Bounds the lifetime of tickets issued from now on by our certificate's `not_after`.
    pub(crate) fn set_not_after(&self, not_after: OffsetDateTime) {
        self.ticketer
            .not_after
            .store(not_after.unix_timestamp(), Ordering::Relaxed);
    }

    /// The same verifiers and certificate resolver with new session state: an empty client
    /// session cache, an empty server session cache and new ticket keys (after our certificate
    /// changed). See the type's documentation for why.
    pub(crate) fn with_fresh_sessions(
        &self,
        settings: &TlsSettings,
    ) -> Result<Self, CredentialsError> {
        let mut s = self.clone();
        s.client_store = Arc::new(ClientSessionMemoryCache::new(settings.client_session_cache));
        s.server_cache = ServerSessionMemoryCache::new(settings.server_session_cache);
        s.ticketer = Arc::new(ExpiryBoundTicketer::new()?);
        Ok(s)
    }
}

/// Ticket keys whose tickets live no longer than our current certificate: a client will not
/// offer a ticket past its lifetime, so it never resumes a session whose server certificate
/// (ours, as it was at the full handshake) has expired.
pub(crate) struct ExpiryBoundTicketer {
    inner: Arc<dyn ProducesTickets>,
    /// Unix seconds.
    not_after: AtomicI64,
}

impl std::fmt::Debug for ExpiryBoundTicketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpiryBoundTicketer")
            .field("not_after", &self.not_after.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl ExpiryBoundTicketer {
    fn new() -> Result<Self, CredentialsError> {
        Ok(Self {
            inner: rustls::crypto::aws_lc_rs::Ticketer::new().map_err(|e| {
                CredentialsError::Config {
                    reason: format!("ticket keys: {e}"),
                }
            })?,
            not_after: AtomicI64::new(i64::MAX),
        })
    }

    fn seconds_left(&self) -> i64 {
        self.not_after
            .load(Ordering::Relaxed)
            .saturating_sub(OffsetDateTime::now_utc().unix_timestamp())
    }
}

impl ProducesTickets for ExpiryBoundTicketer {
    fn enabled(&self) -> bool {
        self.inner.enabled()
    }

    fn lifetime(&self) -> u32 {
        // A client counts the lifetime from the whole second in which it read the ticket and
        // compares whole seconds: with up to a second between our sending and its reading, a
        // lifetime two seconds short of the certificate's end keeps every resumption within it.
        // (0 would mean "no limit" to a client; `encrypt` issues no ticket that late.)
        let left = self.seconds_left().saturating_sub(2).max(1);
        self.inner
            .lifetime()
            .min(u32::try_from(left).unwrap_or(u32::MAX))
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        // Too close to the certificate's expiry for a useful ticket: issue none.
        if self.seconds_left() < 3 {
            return None;
        }
        self.inner.encrypt(plain)
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.inner.decrypt(cipher)
    }
}

/// Loads `creds`' chain and key for rustls (checks that they match).
pub(crate) fn certified_key(
    creds: &WorkloadCredentials,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CredentialsError> {
    CertifiedKey::from_der(creds.chain().to_vec(), creds.key().clone_key(), provider)
        .map(Arc::new)
        .map_err(|e| CredentialsError::Config {
            reason: e.to_string(),
        })
}

/// The server and client configurations for one set of credentials.
#[derive(Debug)]
pub struct TlsConfigs {
    server: Arc<ServerConfig>,
    clients: [Arc<ClientConfig>; 3],
    identity: SpiffeId,
    not_after: OffsetDateTime,
    trust: TrustBundle,
    chain: Vec<CertificateDer<'static>>,
    verifier: Arc<MeshVerifier>,
}

impl TlsConfigs {
    pub(crate) fn build(
        creds: &WorkloadCredentials,
        settings: &TlsSettings,
        provider: &Arc<CryptoProvider>,
        shared: &SharedState,
    ) -> Result<Self, CredentialsError> {
        let cfg_err = |e: rustls::Error| CredentialsError::Config {
            reason: e.to_string(),
        };
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(settings.versions())
            .map_err(cfg_err)?
            .with_client_cert_verifier(shared.client_verifier.clone())
            .with_cert_resolver(shared.cert.clone());
        server.alpn_protocols = SERVER_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        server.ticketer = shared.ticketer.clone();
        server.session_storage = shared.server_cache.clone();
        server.send_tls13_tickets = settings.tls13_tickets;
        server.enable_secret_extraction = true;

        let client_for = |alpn: Alpn| -> Result<Arc<ClientConfig>, CredentialsError> {
            let mut c = ClientConfig::builder_with_provider(provider.clone())
                .with_protocol_versions(settings.versions())
                .map_err(cfg_err)?
                .dangerous()
                .with_custom_certificate_verifier(shared.server_verifier.clone())
                .with_client_cert_resolver(shared.cert.clone());
            c.alpn_protocols = alpn.protocols().iter().map(|p| p.to_vec()).collect();
            c.resumption = Resumption::store(shared.client_store.clone());
            c.enable_sni = settings.send_sni;
            // For `TlsProvider::connect_in_place`, which takes over the record layer.
            c.enable_secret_extraction = true;
            Ok(Arc::new(c))
        };
        Ok(Self {
            server: Arc::new(server),
            clients: [
                client_for(Alpn::Tcp)?,
                client_for(Alpn::Http11)?,
                client_for(Alpn::Http2)?,
            ],
            identity: creds.identity().clone(),
            not_after: creds.not_after(),
            trust: creds.trust().clone(),
            chain: creds.chain().to_vec(),
            verifier: shared.client_verifier.0.clone(),
        })
    }

    /// A server config that refuses every handshake (no certificate to present): what a
    /// workload without credentials serves, so that it fails closed.
    pub(crate) fn refusing_server(
        provider: &Arc<CryptoProvider>,
        settings: &TlsSettings,
    ) -> Result<Arc<ServerConfig>, CredentialsError> {
        let mut server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(settings.versions())
            .map_err(|e| CredentialsError::Config {
                reason: e.to_string(),
            })?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(NoCert));
        server.alpn_protocols = SERVER_PROTOCOLS.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(server))
    }

    /// The server config (requires and verifies a mesh client certificate; accepts every ALPN
    /// of [`SERVER_PROTOCOLS`]).
    pub fn server(&self) -> &Arc<ServerConfig> {
        &self.server
    }

    /// The client config offering `alpn`.
    pub fn client(&self, alpn: Alpn) -> &Arc<ClientConfig> {
        &self.clients[alpn.index()]
    }

    /// The identity these configs present.
    pub fn identity(&self) -> &SpiffeId {
        &self.identity
    }

    /// When our certificate expires.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The trust bundle in force.
    pub fn trust(&self) -> &TrustBundle {
        &self.trust
    }

    /// The verifier both sides use (with its cache of parsed peer leaves).
    pub(crate) fn verifier(&self) -> &MeshVerifier {
        &self.verifier
    }

    /// The certificate chain these configs present (leaf first), for admin pages.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }
}

/// Presents the current certificate, on both sides; swapped on renewal. On the client side it
/// presents it whatever CA names the server asks for (mesh peers share roots; an
/// `openssl s_server -Verify` asks with its own list).
#[derive(Debug)]
pub(crate) struct CurrentCert(ArcSwap<CertifiedKey>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }
}

impl rustls::client::ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.load_full())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Has no certificate: every handshake is refused with an alert.
#[derive(Debug)]
struct NoCert;

impl ResolvesServerCert for NoCert {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use rustls::crypto::{aws_lc_rs, ring};

    #[test]
    fn aes_gcm_suites_take_only_the_aead_from_ring_where_it_is_faster() {
        let p = super::crypto_provider();
        for (i, aws, ring) in [
            (
                0,
                aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256,
                ring::cipher_suite::TLS13_AES_128_GCM_SHA256,
            ),
            (
                1,
                aws_lc_rs::cipher_suite::TLS13_AES_256_GCM_SHA384,
                ring::cipher_suite::TLS13_AES_256_GCM_SHA384,
            ),
        ] {
            let ours = p.cipher_suites[i].tls13().unwrap();
            let (aws, ring) = (aws.tls13().unwrap(), ring.tls13().unwrap());
            assert_eq!(ours.common.suite, aws.common.suite);
            if !super::ring_aes_gcm_is_faster() {
                // aws-lc-rs's own suite, untouched (compared with the provider's entry: the
                // `cipher_suite` constants may be other copies of it).
                let stock = aws_lc_rs::default_provider()
                    .cipher_suites
                    .iter()
                    .find_map(|s| s.tls13().filter(|t| t.common.suite == ours.common.suite))
                    .unwrap();
                assert!(std::ptr::eq(ours, stock));
                continue;
            }
            assert!(std::ptr::addr_eq(ours.hkdf_provider, aws.hkdf_provider));
            assert!(std::ptr::addr_eq(
                ours.common.hash_provider,
                aws.common.hash_provider
            ));
            let (want, other) = (ring.aead_alg, aws.aead_alg);
            assert!(std::ptr::addr_eq(ours.aead_alg, want));
            assert!(!std::ptr::addr_eq(ours.aead_alg, other));
        }
    }
}
