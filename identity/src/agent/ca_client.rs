//! The client side of Istio's `IstioCertificateService` over TLS, and HTTPS fetches from the CA
//! (the CRL). The CA's certificate is checked against the root bundle with the usual web PKI
//! rules, including its name (`istiod.istio-system.svc`, `localhost`, `127.0.0.1`...).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::ClientConfig;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tonic::codegen::Service;
use tonic::metadata::MetadataValue;

use super::error::{AgentError, chain};
use crate::proto::istio_ca::IstioCertificateRequest;
use crate::proto::istio_ca::istio_certificate_service_client::IstioCertificateServiceClient;
use crate::tls::crypto_provider;

/// Largest CRL accepted (bytes).
const MAX_CRL_BYTES: usize = 16 * 1024 * 1024;

/// Talks to one CA.
#[derive(Debug, Clone)]
pub(crate) struct CaClient {
    addr: String,
    server_name: ServerName<'static>,
    timeout: Duration,
}

/// A CreateCertificate request.
pub(crate) struct CsrRequest<'a> {
    pub(crate) csr_pem: String,
    pub(crate) ttl_secs: i64,
    pub(crate) token: &'a str,
    pub(crate) cluster_id: Option<&'a str>,
}

impl CaClient {
    pub(crate) fn new(
        addr: &str,
        server_name: &str,
        timeout: Duration,
    ) -> Result<Self, AgentError> {
        let server_name =
            ServerName::try_from(server_name.to_owned()).map_err(|e| AgentError::Connect {
                addr: addr.to_owned(),
                reason: format!("invalid CA server name {server_name:?}: {e}"),
            })?;
        Ok(Self {
            addr: addr.to_owned(),
            server_name,
            timeout,
        })
    }

    fn tls_config(
        &self,
        roots: &[CertificateDer<'static>],
        alpn: &[&[u8]],
    ) -> Result<Arc<ClientConfig>, AgentError> {
        let err = |reason: String| AgentError::Connect {
            addr: self.addr.clone(),
            reason,
        };
        let mut store = rustls::RootCertStore::empty();
        for r in roots {
            store
                .add(r.clone())
                .map_err(|e| err(format!("root bundle: {e}")))?;
        }
        let provider = crypto_provider();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            provider.clone(),
        )
        .build()
        .map_err(|e| err(format!("root bundle: {e}")))?;
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(e.to_string()))?
            .with_webpki_verifier(verifier)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    }

    /// Asks the CA to sign `req`; returns the chain (leaf first, root last).
    pub(crate) async fn create_certificate(
        &self,
        roots: &[CertificateDer<'static>],
        req: CsrRequest<'_>,
    ) -> Result<Vec<String>, AgentError> {
        let connector = Connector {
            addr: self.addr.clone(),
            name: self.server_name.clone(),
            config: self.tls_config(roots, &[b"h2"])?,
        };
        let connect_err = |e: &(dyn std::error::Error + 'static)| AgentError::Connect {
            addr: self.addr.clone(),
            reason: chain(e),
        };
        // TLS is done by the connector; tonic sees a plain byte stream.
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| connect_err(&e))?
            .connect_timeout(self.timeout)
            .timeout(self.timeout);
        let channel = endpoint
            .connect_with_connector(connector)
            .await
            .map_err(|e| connect_err(&e))?;
        let mut client = IstioCertificateServiceClient::new(channel);
        let mut request = tonic::Request::new(IstioCertificateRequest {
            csr: req.csr_pem,
            validity_duration: req.ttl_secs,
            metadata: None,
        });
        // The caller checked the token's characters.
        let bearer = MetadataValue::try_from(format!("Bearer {}", req.token)).map_err(|_| {
            AgentError::Rpc {
                addr: self.addr.clone(),
                code: tonic::Code::InvalidArgument,
                message: "the token cannot be sent as a header".to_owned(),
            }
        })?;
        request.metadata_mut().insert("authorization", bearer);
        if let Some(c) = req.cluster_id
            && let Ok(v) = MetadataValue::try_from(c)
        {
            request.metadata_mut().insert("clusterid", v);
        }
        match client.create_certificate(request).await {
            Ok(resp) => Ok(resp.into_inner().cert_chain),
            Err(status) => {
                // Transport failures surface as statuses too; keep their cause.
                let message = match std::error::Error::source(&status) {
                    Some(src) => format!("{}: {}", status.message(), chain(src)),
                    None => status.message().to_owned(),
                };
                Err(AgentError::Rpc {
                    addr: self.addr.clone(),
                    code: status.code(),
                    message,
                })
            }
        }
    }

    /// GETs `url` (https, on the CA's address or another host) with the CA's trust rules.
    pub(crate) async fn fetch(
        &self,
        url: &str,
        roots: &[CertificateDer<'static>],
    ) -> Result<Vec<u8>, AgentError> {
        let err = |reason: String| AgentError::Crl {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url.parse().map_err(|e| err(format!("bad URL: {e}")))?;
        if uri.scheme_str() != Some("https") {
            return Err(err("only https:// is supported".to_owned()));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| err("no host in URL".to_owned()))?
            .clone();
        let port = authority.port_u16().unwrap_or(443);
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        let addr = format!("{}:{port}", authority.host());
        // The CA's own address is checked against the CA's configured name.
        let name = if addr == self.addr {
            self.server_name.clone()
        } else {
            ServerName::try_from(host.to_owned()).map_err(|e| err(format!("bad host: {e}")))?
        };
        let config = self.tls_config(roots, &[b"h2", b"http/1.1"])?;
        let work = async {
            let tcp = TcpStream::connect(&addr)
                .await
                .map_err(|e| err(format!("connecting to {addr}: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| err(format!("TLS with {addr}: {}", chain(&e))))?;
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let request = http::Request::get(uri.clone())
                .header(http::header::HOST, authority.as_str())
                .body(Empty::<bytes::Bytes>::new())
                .map_err(|e| err(e.to_string()))?;
            let io = TokioIo::new(tls);
            let response = if h2 {
                let (mut sender, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| err(format!("HTTP/2: {}", chain(&e))))?;
                tokio::spawn(conn);
                sender.send_request(request).await
            } else {
                let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| err(format!("HTTP/1.1: {}", chain(&e))))?;
                tokio::spawn(conn);
                sender.send_request(request).await
            }
            .map_err(|e| err(format!("request: {}", chain(&e))))?;
            if response.status() != http::StatusCode::OK {
                return Err(err(format!("HTTP status {}", response.status())));
            }
            let body = Limited::new(response.into_body(), MAX_CRL_BYTES)
                .collect()
                .await
                .map_err(|e| err(format!("reading the body: {e}")))?;
            Ok(body.to_bytes().to_vec())
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .map_err(|_| err(format!("no answer within {:?}", self.timeout)))?
    }
}

/// Opens TCP + TLS to the CA for tonic.
#[derive(Clone)]
struct Connector {
    addr: String,
    name: ServerName<'static>,
    config: Arc<ClientConfig>,
}

impl Service<http::Uri> for Connector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _uri: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&this.addr).await?;
            let _ = tcp.set_nodelay(true);
            let tls = tokio_rustls::TlsConnector::from(this.config)
                .connect(this.name, tcp)
                .await?;
            Ok(TokioIo::new(tls))
        })
    }
}
