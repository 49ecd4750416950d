//! Helpers shared by the control plane integration tests: a control plane on loopback with a
//! temporary state directory, a TLS gRPC client, tokens, CSRs, and openssl/curl runners.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tonic::metadata::MetadataValue;
use warden_control::client::{self, DEFAULT_SERVER_NAME};
use warden_control::{ControlConfig, ControlPlane, RunningControlPlane};
use warden_identity::proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use warden_identity::proto::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};
use warden_identity::{KeyAlgorithm, SpiffeId, TrustDomain, keys};
use warden_policy::jwt::SigningKey;
use warden_policy::jwt::k8s::{SaTokenSpec, mint};
use x509_parser::prelude::{FromDer, X509Certificate};

pub type CaClient = IstioCertificateServiceClient<tonic::transport::Channel>;

/// A control plane on 127.0.0.1 with its own state directory.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub config: ControlConfig,
    pub cp: RunningControlPlane,
}

pub fn base_config(dir: &Path) -> ControlConfig {
    let mut config = ControlConfig::new(dir.join("state"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.reload_interval = Duration::from_millis(100);
    config.drain_timeout = Duration::from_secs(2);
    config
}

pub async fn start(adjust: impl FnOnce(&Path, &mut ControlConfig)) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut config = base_config(dir.path());
    adjust(dir.path(), &mut config);
    let cfg = config.clone();
    let cp = tokio::task::spawn_blocking(move || ControlPlane::open(cfg))
        .await
        .unwrap()
        .expect("control plane opens");
    let cp = cp.start().await.expect("control plane starts");
    Harness { dir, config, cp }
}

impl Harness {
    pub fn state(&self) -> PathBuf {
        self.config.state_dir.clone()
    }

    pub fn root_pem(&self) -> String {
        std::fs::read_to_string(self.config.paths().root_cert).unwrap()
    }

    pub fn root_file(&self) -> PathBuf {
        self.config.paths().root_cert
    }

    /// The control plane's own token-signing key, as `warden control token` uses it.
    pub fn token_key(&self) -> SigningKey {
        let pem = std::fs::read_to_string(self.config.paths().token_key).unwrap();
        SigningKey::from_pem(&pem, None).unwrap()
    }

    pub fn token(&self, ns: &str, sa: &str) -> String {
        mint(
            &self.token_key(),
            &SaTokenSpec::new(ns, sa),
            SystemTime::now(),
        )
        .unwrap()
    }

    pub async fn client(&self) -> CaClient {
        self.client_with(None).await
    }

    pub async fn client_with(&self, cert: Option<(&str, &str)>) -> CaClient {
        self.try_client(cert, false).await.expect("client connects")
    }

    pub async fn try_client(
        &self,
        cert: Option<(&str, &str)>,
        tls12_only: bool,
    ) -> Result<CaClient, client::ClientError> {
        let tls = client::tls_config(&self.root_pem(), cert, tls12_only)?;
        client::connect(self.cp.local_addr(), DEFAULT_SERVER_NAME, Arc::new(tls)).await
    }

    pub fn issued_count(&self) -> usize {
        self.cp.ca().issued_log().len()
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.cp.local_addr().port())
    }
}

pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::istio(&TrustDomain::default(), ns, sa).unwrap()
}

/// A fresh P-256 key (PKCS#8 PEM) and a CSR naming `identity`.
pub fn key_and_csr(identity: &SpiffeId) -> (String, String) {
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = keys::csr_pem(&key, identity).unwrap();
    (key.serialize_pem(), csr)
}

pub fn request(
    csr: &str,
    ttl: i64,
    token: Option<&str>,
) -> tonic::Request<IstioCertificateRequest> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr.to_owned(),
        validity_duration: ttl,
        metadata: None,
    });
    if let Some(t) = token {
        let v: MetadataValue<_> = format!("Bearer {t}").parse().unwrap();
        req.metadata_mut().insert("authorization", v);
    }
    req
}

pub async fn create(
    client: &mut CaClient,
    req: tonic::Request<IstioCertificateRequest>,
) -> Result<IstioCertificateResponse, tonic::Status> {
    client.create_certificate(req).await.map(|r| r.into_inner())
}

pub fn der_of(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// The URI SANs of a PEM certificate, and whether the SAN extension is critical.
pub fn uri_sans(pem: &str) -> (Vec<String>, bool) {
    let der = der_of(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let ext = cert.subject_alternative_name().unwrap().unwrap();
    let uris = ext
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
            _ => None,
        })
        .collect();
    (uris, ext.critical)
}

pub fn serial_hex(pem: &str) -> String {
    let der = der_of(pem);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    warden_identity::Serial::of(&cert).to_string()
}

/// Whether a tool runs; when it does not, fails under `WARDEN_REQUIRE_PRIVILEGED=1`, else
/// prints `skipped: <reason>` and returns false.
pub fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: {tool} is required (WARDEN_REQUIRE_PRIVILEGED=1)");
        }
        println!("skipped: {test}: {tool} is not installed");
    }
    ok
}

/// `openssl verify -CAfile root [-untrusted chain] extra... leaf`: Ok(output) or Err(output).
pub fn openssl_verify(
    root: &Path,
    untrusted: Option<&Path>,
    extra: &[&str],
    leaf: &Path,
) -> Result<String, String> {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(root);
    if let Some(u) = untrusted {
        cmd.arg("-untrusted").arg(u);
    }
    cmd.args(extra).arg(leaf);
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Writes the response chain as files: leaf.pem, intermediates.pem (may be empty), chain.pem.
pub fn write_chain(dir: &Path, chain: &[String]) -> (PathBuf, PathBuf) {
    let leaf = dir.join("leaf.pem");
    std::fs::write(&leaf, &chain[0]).unwrap();
    let inter = dir.join("intermediates.pem");
    std::fs::write(&inter, chain[1..chain.len() - 1].concat()).unwrap();
    (leaf, inter)
}

/// `curl --cacert root url` (HTTPS), the body.
pub fn curl(root: &Path, url: &str) -> Result<Vec<u8>, String> {
    let out = Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "10", "--cacert"])
        .arg(root)
        .arg(url)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(out.stdout)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The serials listed by every CRL of a PEM file.
pub fn crl_serials(pem: &[u8]) -> Vec<String> {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    let mut out = Vec::new();
    for der in CertificateRevocationListDer::pem_slice_iter(pem) {
        let der = der.unwrap();
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        for r in crl.iter_revoked_certificates() {
            out.push(warden_identity::Serial::from_be_bytes(r.raw_serial()).to_string());
        }
    }
    out
}

/// Completes a TLS handshake presenting `cert` (PEM chain, PEM key), then reads: the server's
/// verdict on the client certificate arrives as an alert (TLS 1.3 sends it after the client's
/// Finished). Ok when the server accepted the certificate.
pub async fn client_cert_verdict(h: &Harness, cert: (&str, &str)) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tls = client::tls_config(&h.root_pem(), Some(cert), false).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(h.cp.local_addr())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut stream = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // An HTTP/2 client preface and an empty SETTINGS frame; an accepting server answers with
    // its SETTINGS.
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .map_err(|e| e.to_string())?;
    let mut buf = [0u8; 9];
    match tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut buf)).await {
        Ok(Ok(_)) if buf[3] == 0x04 => Ok(()),
        Ok(Ok(_)) => Err(format!("unexpected frame {buf:?}")),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer".to_owned()),
    }
}

/// The serials listed by a DER CRL.
pub fn crl_serials_der(der: &[u8]) -> Vec<String> {
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    crl.iter_revoked_certificates()
        .map(|r| warden_identity::Serial::from_be_bytes(r.raw_serial()).to_string())
        .collect()
}
