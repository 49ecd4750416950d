//! An in-process fake of the control plane's CA service, backed by a real
//! `CertificateAuthority`: `IstioCertificateService/CreateCertificate` (bearer-token auth) and
//! `GET /ca/crl.pem`, over TLS with a serving certificate for `istiod.istio-system.svc`,
//! `localhost` and `127.0.0.1`. It can be stopped and restarted on the same port.
#![allow(dead_code)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tonic::codegen::Service;
use tonic::{Request, Response, Status};
use warden_identity::ca::ExtraSans;
use warden_identity::proto::istio_ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use warden_identity::proto::istio_ca::{IstioCertificateRequest, IstioCertificateResponse};
use warden_identity::{CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};

#[derive(Clone)]
struct Svc {
    ca: Arc<CertificateAuthority>,
    tokens: Arc<Mutex<HashMap<String, SpiffeId>>>,
    seen: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl IstioCertificateService for Svc {
    async fn create_certificate(
        &self,
        req: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let token = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default()
            .to_owned();
        self.seen.lock().unwrap().push(token.clone());
        let identity = self
            .tokens
            .lock()
            .unwrap()
            .get(&token)
            .cloned()
            .ok_or_else(|| Status::unauthenticated("authentication failure: unknown token"))?;
        let r = req.into_inner();
        let cert = self
            .ca
            .sign_csr(&r.csr, &identity, r.validity_duration)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: cert.chain_pem,
        }))
    }
}

/// The fake CA service.
pub struct FakeCa {
    pub ca: Arc<CertificateAuthority>,
    pub addr: SocketAddr,
    tokens: Arc<Mutex<HashMap<String, SpiffeId>>>,
    seen: Arc<Mutex<Vec<String>>>,
    tls: Arc<rustls::ServerConfig>,
    task: Option<JoinHandle<()>>,
}

impl FakeCa {
    /// Starts on a free loopback port.
    pub async fn start(ca: Arc<CertificateAuthority>) -> Self {
        let server_id = SpiffeId::istio(&TrustDomain::default(), "istio-system", "istiod").unwrap();
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = warden_identity::keys::csr_pem(&key, &server_id).unwrap();
        let cert = ca
            .sign_csr_with_extra_sans(
                &csr,
                &server_id,
                24 * 3600,
                &ExtraSans {
                    dns: vec!["istiod.istio-system.svc".into(), "localhost".into()],
                    ips: vec!["127.0.0.1".parse().unwrap()],
                },
            )
            .unwrap();
        let chain: Vec<CertificateDer<'static>> = cert
            .chain_pem
            .iter()
            .map(|p| CertificateDer::from_pem_slice(p.as_bytes()).unwrap())
            .collect();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        let mut tls =
            rustls::ServerConfig::builder_with_provider(warden_identity::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .unwrap();
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut me = Self {
            ca,
            addr: listener.local_addr().unwrap(),
            tokens: Arc::default(),
            seen: Arc::default(),
            tls: Arc::new(tls),
            task: None,
        };
        me.serve(listener);
        me
    }

    /// Accepts `token` as the credential of `identity`.
    pub fn allow(&self, token: &str, identity: &SpiffeId) {
        self.tokens
            .lock()
            .unwrap()
            .insert(token.to_owned(), identity.clone());
    }

    /// Tokens presented so far, in order.
    pub fn seen_tokens(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// Stops listening and drops every open connection.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut listener = None;
        for _ in 0..100 {
            match TcpListener::bind(self.addr).await {
                Ok(l) => {
                    listener = Some(l);
                    break;
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        }
        self.serve(listener.expect("rebinding the CA port"));
    }

    fn serve(&mut self, listener: TcpListener) {
        let svc = Svc {
            ca: self.ca.clone(),
            tokens: self.tokens.clone(),
            seen: self.seen.clone(),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(self.tls.clone());
        self.task = Some(tokio::spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                let acceptor = acceptor.clone();
                let svc = svc.clone();
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(sock).await else {
                        return;
                    };
                    let grpc = IstioCertificateServiceServer::new(svc.clone());
                    let ca = svc.ca.clone();
                    let handler = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let mut grpc = grpc.clone();
                            let ca = ca.clone();
                            async move {
                                if req.uri().path() == "/ca/crl.pem" {
                                    let pem = ca.crl_pem().unwrap();
                                    let body = tonic::body::Body::new(http_body_util::Full::new(
                                        Bytes::from(pem),
                                    ));
                                    return Ok::<_, Infallible>(http::Response::new(body));
                                }
                                Ok(grpc.call(req).await.unwrap())
                            }
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), handler)
                        .await;
                });
            }
        }));
    }
}

impl Drop for FakeCa {
    fn drop(&mut self) {
        self.stop();
    }
}
