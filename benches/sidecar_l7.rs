//! L7 data-path benchmarks: two in-process sidecars on loopback (client pod 127.0.91.1, server
//! pod 127.0.91.2), HTTP/2 mTLS between them (pooled), an HTTP/1.1 app behind the server
//! sidecar with an ALLOW policy evaluated per request.
//!
//! - `l7/get_mesh`: one GET (keep-alive client) through both sidecars: outbound parse, pooled
//!   HTTP/2 stream, inbound authorization, XFCC, pooled app connection, metrics, access log off.
//! - `l7/get_mesh_16_concurrent`: 16 concurrent GETs sharing the one pooled peer connection.
//! - `l7/get_direct`: the same GET straight to the app (the baseline).
//! - `l7/post_1MiB_mesh`: a 1 MiB body up and its length back.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use warden_identity::tls::{TlsProvider, TlsSettings};
use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};
use warden_proxy::orig_dst::StaticOriginalDst;
use warden_proxy::{Listeners, Shared, SidecarConfig};

const MIB: usize = 1 << 20;

fn write_certs(ca: &CertificateAuthority, dir: &Path, sa: &str) {
    let id = SpiffeId::istio(&TrustDomain::default(), "bench", sa).unwrap();
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = warden_identity::keys::csr_pem(&key, &id).unwrap();
    let cert = ca.sign_csr(&csr, &id, 3600).unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
    std::fs::write(dir.join("root-cert.pem"), ca.root_bundle_pem()).unwrap();
    std::fs::write(dir.join("cert-chain.pem"), cert.chain_pem.concat()).unwrap();
}

async fn pod(
    ca: &CertificateAuthority,
    root: &Path,
    ip: &str,
    sa: &str,
    config: &[(&str, &str)],
    orig: StaticOriginalDst,
) -> Arc<Shared> {
    let dir = root.join(sa);
    write_certs(ca, &dir.join("certs"), sa);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    for (n, t) in config {
        std::fs::write(dir.join("config").join(n), t).unwrap();
    }
    let yaml = format!(
        "identity: {{namespace: bench, serviceAccount: {sa}}}\ncertificates: {{staticDir: {c}}}\nconfig: {{directory: {d}}}\n\
         bindAddress: {ip}\nadminAddress: {ip}\ninbound: {{appHost: 127.0.91.102}}\nhttp: {{accessLog: false}}\n",
        c = dir.join("certs").display(),
        d = dir.join("config").display()
    );
    let cfg = SidecarConfig::from_parts(Some((Path::new("bench.yaml"), &yaml)), &|_| None).unwrap();
    let shared = Arc::new(Shared::new(
        cfg,
        TlsProvider::new(TlsSettings::default()).unwrap(),
        Arc::new(orig),
        None,
    ));
    let listeners = Listeners::bind(&shared).await.unwrap();
    tokio::spawn(warden_proxy::run(shared.clone(), listeners));
    while shared.readiness().is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shared
}

async fn app(addr: SocketAddr) {
    let l = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let n = req.into_body().collect().await.map(|b| b.to_bytes().len());
                    Ok::<_, hyper::Error>(Response::new(Full::new(Bytes::from(
                        n.unwrap_or(0).to_string(),
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

async fn get(client: &Client<HttpConnector, Full<Bytes>>, uri: &hyper::Uri) {
    let r = client.get(uri.clone()).await.unwrap();
    assert_eq!(r.status(), 200);
    r.into_body().collect().await.unwrap();
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let ca =
        CertificateAuthority::self_signed(tmp.path().join("ca"), CaOptions::default()).unwrap();
    let app_addr: SocketAddr = "127.0.91.102:7000".parse().unwrap();
    let (_a, _b) = rt.block_on(async {
        app(app_addr).await;
        let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web, namespace: bench}\n\
                  spec:\n  hosts: [web.bench.svc.cluster.local]\n  addresses: [127.0.91.200]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 7000, name: http}]\n\
                  \x20 endpoints: [{address: 127.0.91.2, serviceAccount: server, ports: {http: 15006}}]\n";
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: bench}\nspec: {mtls: {mode: STRICT}}\n---\n\
                  apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: bench}\n\
                  spec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/bench/sa/client]}\n    to:\n    - operation: {methods: [GET, POST]}\n";
        let a = pod(&ca, tmp.path(), "127.0.91.1", "client", &[("se.yaml", se)],
            StaticOriginalDst::new().with("127.0.91.1:15001".parse().unwrap(), "127.0.91.200:7000".parse().unwrap())).await;
        let b = pod(&ca, tmp.path(), "127.0.91.2", "server", &[("pa.yaml", pa)],
            StaticOriginalDst::new().with("127.0.91.2:15006".parse().unwrap(), "127.0.91.2:7000".parse().unwrap())).await;
        (a, b)
    });
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let mesh: hyper::Uri = "http://127.0.91.1:15001/bench".parse().unwrap();
    let direct: hyper::Uri = format!("http://{app_addr}/bench").parse().unwrap();

    let mut g = c.benchmark_group("l7");
    g.sample_size(50);
    g.bench_function("get_mesh", |b| b.iter(|| rt.block_on(get(&client, &mesh))));
    g.bench_function("get_mesh_16_concurrent", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..16 {
                    let (client, uri) = (client.clone(), mesh.clone());
                    set.spawn(async move { get(&client, &uri).await });
                }
                while let Some(r) = set.join_next().await {
                    r.unwrap();
                }
            })
        })
    });
    g.bench_function("get_direct", |b| {
        b.iter(|| rt.block_on(get(&client, &direct)))
    });
    g.throughput(Throughput::Bytes(MIB as u64));
    let body = Bytes::from(vec![7u8; MIB]);
    g.bench_function("post_1MiB_mesh", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = Request::post(mesh.clone())
                    .body(Full::new(body.clone()))
                    .unwrap();
                let r = client.request(req).await.unwrap();
                let n = r.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(n, MIB.to_string());
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
