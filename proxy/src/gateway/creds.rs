//! TLS credentials of gateway servers (SIMPLE / MUTUAL) and of TLS origination
//! (DestinationRule SIMPLE / MUTUAL): read from files or a `credentialName` directory, turned
//! into rustls configs once per change, never per connection.
//!
//! `credentialName: NAME` is `<credentialsDir>/NAME/` holding `tls.crt`, `tls.key`, `ca.crt`
//! (a Kubernetes TLS secret) or `cert`, `key`, `cacert` (Istio's generic secret).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};
use warden_identity::tls::crypto_provider;

/// Why a credential could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no usable PEM of the expected kind.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// `credentialName` could not be resolved.
    #[error("credentialName {name:?}: {why}")]
    Name {
        /// The name.
        name: String,
        /// Why.
        why: String,
    },
    /// A required setting is missing for the mode.
    #[error("{0}")]
    Missing(String),
    /// rustls refused the material (e.g. the key does not match the certificate).
    #[error("{context}: {reason}")]
    Config {
        /// Which credential.
        context: String,
        /// Why.
        reason: String,
    },
}

/// The files of one credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialFiles {
    /// Certificate chain (PEM), leaf first.
    pub cert: Option<PathBuf>,
    /// Private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub key: Option<PathBuf>,
    /// CA certificates (PEM) to verify the peer with.
    pub ca: Option<PathBuf>,
}

impl CredentialFiles {
    /// From explicit paths (empty strings are unset).
    pub fn from_paths(cert: &str, key: &str, ca: &str) -> Self {
        let p = |s: &str| (!s.is_empty()).then(|| PathBuf::from(s));
        Self {
            cert: p(cert),
            key: p(key),
            ca: p(ca),
        }
    }

    /// Resolves `credentialName` in `dir`: `tls.crt`/`tls.key`/`ca.crt`, else
    /// `cert`/`key`/`cacert`. A `<name>-cacert` directory also provides the CA (Istio's split
    /// secrets).
    pub fn from_name(dir: Option<&Path>, name: &str) -> Result<Self, CredentialError> {
        let err = |why: String| CredentialError::Name {
            name: name.to_owned(),
            why,
        };
        let Some(dir) = dir else {
            return Err(err(
                "no credentialsDir is configured for the gateway".to_owned()
            ));
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            return Err(err("not a valid secret name".to_owned()));
        }
        let base = dir.join(name);
        if !base.is_dir() {
            return Err(err(format!("{} is not a directory", base.display())));
        }
        let first = |names: &[&str]| names.iter().map(|n| base.join(n)).find(|p| p.exists());
        let mut ca = first(&["ca.crt", "cacert"]);
        if ca.is_none() {
            let split = dir.join(format!("{name}-cacert"));
            ca = ["ca.crt", "cacert"]
                .iter()
                .map(|n| split.join(n))
                .find(|p| p.exists());
        }
        Ok(Self {
            cert: first(&["tls.crt", "cert"]),
            key: first(&["tls.key", "key"]),
            ca,
        })
    }

    /// Every file, for change detection.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.cert, &self.key, &self.ca].into_iter().flatten()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, CredentialError> {
    std::fs::read(path).map_err(|source| CredentialError::Read {
        path: path.to_owned(),
        source,
    })
}

/// Reads every certificate of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let data = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&data)
        .collect::<Result<_, _>>()
        .map_err(|e| CredentialError::Pem {
            path: path.to_owned(),
            what: format!("bad PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(CredentialError::Pem {
            path: path.to_owned(),
            what: "no CERTIFICATE block".to_owned(),
        });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, CredentialError> {
    let data = read(path)?;
    PrivateKeyDer::from_pem_slice(&data).map_err(|e| CredentialError::Pem {
        path: path.to_owned(),
        what: format!("no usable private key: {e}"),
    })
}

fn roots(path: &Path) -> Result<RootCertStore, CredentialError> {
    let mut store = RootCertStore::empty();
    for c in read_certs(path)? {
        store.add(c).map_err(|e| CredentialError::Pem {
            path: path.to_owned(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(store)
}

fn certified(files: &CredentialFiles, what: &str) -> Result<Arc<CertifiedKey>, CredentialError> {
    let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
        return Err(CredentialError::Missing(format!(
            "{what}: a certificate and a private key are required"
        )));
    };
    let chain = read_certs(cert)?;
    let key = read_key(key)?;
    CertifiedKey::from_der(chain, key, &crypto_provider())
        .map(Arc::new)
        .map_err(|e| CredentialError::Config {
            context: format!("{} / {}", cert.display(), files.key_display()),
            reason: e.to_string(),
        })
}

impl CredentialFiles {
    fn key_display(&self) -> String {
        self.key
            .as_ref()
            .map(|k| k.display().to_string())
            .unwrap_or_default()
    }
}

/// Presents one certificate (the server's credential, loaded when the config or the files
/// changed); every handshake reads it.
#[derive(Debug)]
struct ServerCert(Arc<CertifiedKey>);

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The server config of a SIMPLE (no client certificate) or MUTUAL (client certificate required
/// and verified against `files.ca`) gateway server. `alpn`: protocols offered (`h2`,
/// `http/1.1` for HTTP servers; none for TLS/TCP). TLS 1.2 and 1.3 unless `tls13_only`.
pub fn server_config(
    files: &CredentialFiles,
    mutual: bool,
    alpn: &[&[u8]],
    tls13_only: bool,
) -> Result<Arc<ServerConfig>, CredentialError> {
    let key = certified(files, "server TLS")?;
    let provider = crypto_provider();
    let versions: &[&rustls::SupportedProtocolVersion] = if tls13_only {
        &[&rustls::version::TLS13]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions)
        .map_err(|e| CredentialError::Config {
            context: "server TLS".into(),
            reason: e.to_string(),
        })?;
    let builder = if mutual {
        let Some(ca) = &files.ca else {
            return Err(CredentialError::Missing(
                "MUTUAL: caCertificates (or ca.crt / cacert in the credential) is required"
                    .to_owned(),
            ));
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider)
            .build()
            .map_err(|e| CredentialError::Config {
                context: ca.display().to_string(),
                reason: e.to_string(),
            })?;
        builder.with_client_cert_verifier(verifier)
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(ServerCert(key)));
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// The system CA bundle used for origination when a DestinationRule names no
/// `caCertificates` (Debian/Ubuntu/Alpine path, then RHEL).
pub const SYSTEM_CA_BUNDLES: [&str; 2] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
];

/// The client config of TLS origination (DestinationRule `tls.mode` SIMPLE or MUTUAL): the
/// server certificate is verified against `files.ca` (else the system bundle) and, when
/// `subject_alt_names` is not empty, must carry one of them (else the SNI / host name).
pub fn origination_config(
    files: &CredentialFiles,
    mutual: bool,
    subject_alt_names: &[String],
) -> Result<Arc<ClientConfig>, CredentialError> {
    let provider = crypto_provider();
    let ca_path = match &files.ca {
        Some(p) => p.clone(),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .ok_or_else(|| {
                CredentialError::Missing(
                    "caCertificates is not set and no system CA bundle was found".to_owned(),
                )
            })?,
    };
    let inner =
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots(&ca_path)?), provider.clone())
            .build()
            .map_err(|e| CredentialError::Config {
                context: ca_path.display().to_string(),
                reason: e.to_string(),
            })?;
    let mut sans = Vec::new();
    for s in subject_alt_names {
        let name = ServerName::try_from(s.clone()).map_err(|e| {
            CredentialError::Missing(format!(
                "subjectAltNames: {s:?} is not a DNS name or IP: {e}"
            ))
        })?;
        sans.push(name);
    }
    let verifier = Arc::new(SanVerifier { inner, sans });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| CredentialError::Config {
            context: "origination TLS".into(),
            reason: e.to_string(),
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut cfg = if mutual {
        let key = certified(files, "MUTUAL origination (clientCertificate, privateKey)")?;
        builder.with_client_cert_resolver(Arc::new(ClientCert(key)))
    } else {
        builder.with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct ClientCert(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for ClientCert {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
    fn has_certs(&self) -> bool {
        true
    }
}

/// webpki verification (chain, validity, EKU) with the name check against the
/// DestinationRule's `subjectAltNames` when given (any of them), else against the SNI.
#[derive(Debug)]
struct SanVerifier {
    inner: Arc<WebPkiServerVerifier>,
    sans: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for SanVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.sans.is_empty() {
            return self.inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp,
                now,
            );
        }
        let mut last = None;
        for san in &self.sans {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, san, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or(rustls::Error::General("no subjectAltNames".into())))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A change marker for a set of files: a hash of each file's contents (`None` when unreadable).
/// Credential files are small; hashing them catches a replacement whatever its timestamp.
pub type Stamp = Vec<(PathBuf, Option<u64>)>;

/// The change marker of `paths`.
pub fn stamp<'a>(paths: impl IntoIterator<Item = &'a PathBuf>) -> Stamp {
    use std::hash::{Hash, Hasher};
    paths
        .into_iter()
        .map(|p| {
            // `read` follows symlinks (Kubernetes' `..data` swaps).
            let h = std::fs::read(p).ok().map(|data| {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                data.hash(&mut h);
                h.finish()
            });
            (p.clone(), h)
        })
        .collect()
}
