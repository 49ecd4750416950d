//! Ingress gateway request benchmarks: an in-process gateway on 127.0.91.1 in front of a
//! plaintext HTTP/1.1 backend (127.0.91.9), one keep-alive client connection.
//!
//! - `gateway/http_direct`: a GET straight to the backend (the baseline);
//! - `gateway/http_via_gateway`: the same through the gateway's plaintext HTTP server
//!   (Host routing, AuthorizationPolicy, VirtualService match, pooled upstream connection,
//!   metrics and access log — the access log is off: no subscriber);
//! - `gateway/https_simple_via_gateway`: through a SIMPLE TLS server (TLS 1.3, kept alive).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use warden_identity::tls::{TlsProvider, TlsSettings};
use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};
use warden_proxy::gateway::{AdminListeners, GatewayConfig, GatewayMode, GatewayShared};

const GW: &str = "127.0.91.1";
const BACKEND: &str = "127.0.91.9:8080";

fn write_certs(ca: &CertificateAuthority, dir: &Path) {
    let id = SpiffeId::istio(&TrustDomain::default(), "bench", "ingress").unwrap();
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = warden_identity::keys::csr_pem(&key, &id).unwrap();
    let cert = ca.sign_csr(&csr, &id, 3600).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("root-cert.pem"), ca.root_bundle_pem()).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), cert.chain_pem.concat()).unwrap();
}

async fn backend() {
    let l = TcpListener::bind(BACKEND).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req: hyper::Request<Incoming>| async {
                    Ok::<_, Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

async fn client<IO>(io: IO) -> Sender
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

async fn get(sender: &mut Sender) {
    sender.ready().await.unwrap();
    let req = hyper::Request::builder()
        .uri("/bench")
        .header("host", "shop.example.com")
        .body(Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = CertificateAuthority::self_signed(d.join("ca"), CaOptions::default()).unwrap();
    write_certs(&ca, &d.join("certs"));
    // The edge certificate for shop.example.com from a throwaway CA, made with openssl.
    let edge = d.join("edge");
    std::fs::create_dir_all(&edge).unwrap();
    std::fs::write(
        edge.join("ext.cnf"),
        "subjectAltName=DNS:shop.example.com\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let openssl = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .current_dir(&edge)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "1",
                "-subj",
                "/CN=bench CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=shop.example.com",
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
            ],
        ]
        .concat(),
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
        "-out",
        "tls.crt",
    ]);
    std::fs::create_dir_all(d.join("config")).unwrap();
    std::fs::write(
        d.join("config/gw.yaml"),
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: bench}}\n\
             spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
             \x20 - {{port: {{number: 8080, name: http, protocol: HTTP}}, hosts: [shop.example.com]}}\n\
             \x20 - port: {{number: 8443, name: https, protocol: HTTPS}}\n    hosts: [shop.example.com]\n\
             \x20   tls: {{mode: SIMPLE, serverCertificate: {crt}, privateKey: {key}}}\n\
             ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: bench}}\n\
             spec:\n  hosts: [shop.example.com]\n  gateways: [web]\n  http: [{{match: [{{uri: {{prefix: /}}}}], route: [{{destination: {{host: backend.example.com, port: {{number: 8080}}}}}}]}}]\n\
             ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: backend, namespace: bench}}\n\
             spec: {{hosts: [backend.example.com], ports: [{{number: 8080, name: http}}], location: MESH_EXTERNAL, resolution: STATIC, endpoints: [{{address: 127.0.91.9}}]}}\n\
             ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow, namespace: bench}}\n\
             spec: {{rules: [{{to: [{{operation: {{methods: [GET]}}}}]}}]}}\n",
            crt = edge.join("tls.crt").display(),
            key = edge.join("tls.key").display(),
        ),
    )
    .unwrap();
    let yaml = format!(
        "identity: {{namespace: bench, serviceAccount: ingress}}\ncertificates: {{staticDir: {}}}\n\
         config: {{directory: {}}}\nbindAddress: {GW}\nreloadInterval: 100ms\n",
        d.join("certs").display(),
        d.join("config").display()
    );
    let cfg = GatewayConfig::from_parts(
        GatewayMode::Ingress,
        Path::new("bench.yaml"),
        &yaml,
        &|_| None,
    )
    .unwrap();
    let (mut direct, mut via, mut via_tls) = rt.block_on(async {
        backend().await;
        let admin = AdminListeners::bind(&cfg).await.unwrap();
        let shared = Arc::new(GatewayShared::new(
            cfg,
            TlsProvider::new(TlsSettings::default()).unwrap(),
        ));
        tokio::spawn(warden_proxy::gateway::run(shared.clone(), admin));
        for _ in 0..500 {
            if shared.readiness().is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        shared.readiness().expect("gateway ready");
        let direct = client(TcpStream::connect(BACKEND).await.unwrap()).await;
        let via = client(TcpStream::connect((GW, 8080)).await.unwrap()).await;
        let mut roots = rustls::RootCertStore::empty();
        let pem = std::fs::read(edge.join("ca.crt")).unwrap();
        use rustls::pki_types::pem::PemObject;
        roots
            .add(rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap())
            .unwrap();
        let tls_cfg =
            rustls::ClientConfig::builder_with_provider(warden_identity::tls::crypto_provider())
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let tcp = TcpStream::connect((GW, 8443)).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(tls_cfg))
            .connect(
                rustls::pki_types::ServerName::try_from("shop.example.com").unwrap(),
                tcp,
            )
            .await
            .unwrap();
        let via_tls = client(tls).await;
        (direct, via, via_tls)
    });
    let mut g = c.benchmark_group("gateway");
    g.bench_function("http_direct", |b| b.iter(|| rt.block_on(get(&mut direct))));
    g.bench_function("http_via_gateway", |b| {
        b.iter(|| rt.block_on(get(&mut via)))
    });
    g.bench_function("https_simple_via_gateway", |b| {
        b.iter(|| rt.block_on(get(&mut via_tls)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
