//! Helpers for the mTLS tests: a real mesh CA, credentials it issues, bad certificates made with
//! rcgen under the same root, and raw rustls endpoints that present them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    CertificateParams, DistinguishedName, ExtendedKeyUsagePurpose, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use time::OffsetDateTime;
use tokio::net::{TcpListener, TcpStream};
use warden_identity::tls::{TlsProvider, TlsSettings, TrustBundle, WorkloadCredentials};
use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};

/// The identity `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::istio(&TrustDomain::default(), ns, sa).unwrap()
}

/// A self-signed mesh CA in a temporary directory.
pub struct Mesh {
    pub dir: tempfile::TempDir,
    pub ca: Arc<CertificateAuthority>,
}

/// Issued credentials as PEM and as a `WorkloadCredentials`.
pub struct Issued {
    pub chain_pem: String,
    pub key_pem: String,
    pub creds: WorkloadCredentials,
}

impl Mesh {
    pub fn new() -> Self {
        Self::with_options(CaOptions::default())
    }

    pub fn with_options(options: CaOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::self_signed(dir.path().join("ca"), options).unwrap();
        Self {
            dir,
            ca: Arc::new(ca),
        }
    }

    pub fn root_pem(&self) -> String {
        self.ca.root_bundle_pem()
    }

    pub fn trust(&self) -> TrustBundle {
        TrustBundle::from_pem(
            TrustDomain::default(),
            self.root_pem().as_bytes(),
            "root-cert.pem",
        )
        .unwrap()
    }

    pub fn root_key(&self) -> KeyPair {
        let pem = std::fs::read_to_string(self.dir.path().join("ca/root-key.pem")).unwrap();
        KeyPair::from_pem(&pem).unwrap()
    }

    /// Signs a workload certificate through the CA (the real path).
    pub fn issue(&self, identity: &SpiffeId, ttl_secs: i64) -> Issued {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = warden_identity::keys::csr_pem(&key, identity).unwrap();
        let cert = self.ca.sign_csr(&csr, identity, ttl_secs).unwrap();
        let chain_pem = cert.chain_pem.concat();
        let key_pem = key.serialize_pem();
        let creds = WorkloadCredentials::from_pem(
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            self.trust(),
            "test",
        )
        .unwrap();
        Issued {
            chain_pem,
            key_pem,
            creds,
        }
    }

    /// A provider holding a fresh certificate for `identity`.
    pub fn provider(&self, identity: &SpiffeId) -> TlsProvider {
        let p = TlsProvider::new(TlsSettings::default()).unwrap();
        p.install(&self.issue(identity, 3600).creds).unwrap();
        p
    }

    /// A leaf signed directly by the root with rcgen, after `tweak` changed the defaults (one
    /// URI SAN `uri`, both EKUs, valid for a day). Returns (chain DER, key DER, chain PEM, key PEM).
    pub fn custom_leaf(
        &self,
        uris: &[&str],
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> RawCert {
        let issuer =
            Issuer::from_ca_cert_pem(&self.ca.signing_chain_pem()[0], self.root_key()).unwrap();
        sign_leaf(&issuer, uris, tweak)
    }
}

/// A certificate and key made outside the CA.
pub struct RawCert {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub cert_pem: String,
    pub key_pem: String,
}

pub fn sign_leaf<S: rcgen::SigningKey>(
    issuer: &Issuer<'_, S>,
    uris: &[&str],
    tweak: impl FnOnce(&mut CertificateParams),
) -> RawCert {
    let now = OffsetDateTime::now_utc();
    let mut p = CertificateParams::default();
    p.distinguished_name = DistinguishedName::new();
    p.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    p.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    p.use_authority_key_identifier_extension = true;
    p.not_before = now - time::Duration::minutes(5);
    p.not_after = now + time::Duration::days(1);
    tweak(&mut p);
    let key = KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, issuer).unwrap();
    RawCert {
        chain: vec![cert.der().clone()],
        key: PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    }
}

/// A second, unrelated CA (another root).
pub fn foreign_mesh() -> Mesh {
    Mesh::new()
}

/// A verifier that accepts any server: the bad-certificate client in tests only checks what the
/// server does with its certificate.
#[derive(Debug)]
pub struct AcceptAnything(pub Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A raw rustls client presenting `cert` (no server checks).
pub fn raw_client(cert: &RawCert) -> Arc<rustls::ClientConfig> {
    let provider = warden_identity::tls::crypto_provider();
    let c = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
        .unwrap();
    Arc::new(c)
}

/// A raw rustls server presenting `cert` (no client auth).
pub fn raw_server(cert: &RawCert) -> Arc<rustls::ServerConfig> {
    let provider = warden_identity::tls::crypto_provider();
    let c = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(cert.chain.clone(), cert.key.clone_key())
        .unwrap();
    Arc::new(c)
}

/// A connected pair of loopback TCP sockets (client, server).
pub async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

/// Writes PEM text to `dir/name`.
pub fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// `len` bytes of a pattern that differs per `seed`, so misplaced bytes show.
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub async fn read_to_end<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    r.read_to_end(&mut out).await?;
    Ok(out)
}

/// One byte from the client `c` to the server `s` and one back, so the client has read the
/// tickets the server sends after the handshake.
pub async fn ping_pong<C, S>(c: &mut C, s: &mut S)
where
    C: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut one = [0u8; 1];
    c.write_all(b"x").await.unwrap();
    c.flush().await.unwrap();
    s.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"x");
    s.write_all(b"y").await.unwrap();
    s.flush().await.unwrap();
    c.read_exact(&mut one).await.unwrap();
    assert_eq!(&one, b"y");
}
