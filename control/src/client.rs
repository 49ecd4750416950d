//! A client of the CA service over TLS (tonic + rustls), for tools, tests and benchmarks.
//!
//! It checks the control plane's serving certificate against a root bundle and a server name
//! (`istiod.istio-system.svc` by default, in the certificate's DNS SANs), offers ALPN `h2`, and
//! can present a mesh client certificate (renewal without a token). Warden's agent has its own
//! client in `warden_identity`; this one exists so that the control plane can be exercised end
//! to end without it.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint, Uri};
use warden_identity::proto::istio_ca::IstioCertificateRequest;
use warden_identity::proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;

/// The server name checked by default (a DNS SAN of the serving certificate).
pub const DEFAULT_SERVER_NAME: &str = "istiod.istio-system.svc";

/// Why a client could not be set up or connect.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The root bundle or client credential is unusable.
    #[error("client TLS setup: {0}")]
    Tls(String),
    /// A request could not be built.
    #[error("building the request: {0}")]
    Request(String),
    /// Connecting failed.
    #[error("connecting to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// What failed.
        reason: String,
    },
}

/// A client TLS configuration trusting `roots_pem` (PEM bundle), with ALPN `h2`, presenting
/// `client` (PEM chain, PEM PKCS#8 key) when given. `tls12_only` limits it to TLS 1.2.
pub fn tls_config(
    roots_pem: &str,
    client: Option<(&str, &str)>,
    tls12_only: bool,
) -> Result<ClientConfig, ClientError> {
    let fail = |e: &dyn std::fmt::Display| ClientError::Tls(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
    }
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(versions)
        .map_err(|e| fail(&e))?
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((chain_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| fail(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| fail(&e))?
        }
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Connects TCP then TLS to a fixed address, whatever the URI says.
#[derive(Clone)]
struct TlsConnectorService {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    connector: TlsConnector,
}

impl tower_service::Service<Uri> for TlsConnectorService {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(this.addr).await?;
            tcp.set_nodelay(true)?;
            let tls = this.connector.connect(this.server_name, tcp).await?;
            Ok(TokioIo::new(tls))
        })
    }
}

/// Connects to the CA service at `addr`, checking its certificate for `server_name`.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<ClientConfig>,
) -> Result<IstioCertificateServiceClient<Channel>, ClientError> {
    Ok(IstioCertificateServiceClient::new(
        connect_channel(addr, server_name, tls).await?,
    ))
}

/// A gRPC channel to the control plane at `addr` (any of its services), checking its
/// certificate for `server_name`.
pub async fn connect_channel(
    addr: SocketAddr,
    server_name: &str,
    tls: Arc<ClientConfig>,
) -> Result<Channel, ClientError> {
    let fail = |reason: String| ClientError::Connect { addr, reason };
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| fail(e.to_string()))?;
    let endpoint = Endpoint::from_shared(format!("https://{server_name}:{}", addr.port()))
        .map_err(|e| fail(e.to_string()))?;
    let channel = endpoint
        .connect_with_connector(TlsConnectorService {
            addr,
            server_name: name,
            connector: TlsConnector::from(tls),
        })
        .await
        .map_err(|e| {
            use std::error::Error as _;
            let mut reason = e.to_string();
            let mut source = e.source();
            while let Some(s) = source {
                reason.push_str(": ");
                reason.push_str(&s.to_string());
                source = s.source();
            }
            fail(reason)
        })?;
    Ok(channel)
}

/// A `CreateCertificate` request for `csr_pem` (validity in seconds, 0 for the CA's default),
/// with `authorization: Bearer <token>` when a token is given.
pub fn request(
    csr_pem: &str,
    validity_secs: i64,
    token: Option<&str>,
) -> Result<tonic::Request<IstioCertificateRequest>, ClientError> {
    let mut req = tonic::Request::new(IstioCertificateRequest {
        csr: csr_pem.to_owned(),
        validity_duration: validity_secs,
        metadata: None,
    });
    if let Some(token) = token {
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::Request("the token is not valid metadata text".to_owned()))?;
        req.metadata_mut().insert("authorization", value);
    }
    Ok(req)
}
