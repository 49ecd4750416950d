//! L4 data-path benchmarks: two in-process sidecars on loopback (client pod 127.0.90.1, server
//! pod 127.0.90.2), mTLS between them, a TCP echo app behind the server sidecar.
//!
//! - `l4/connect_mtls_1byte`: a new connection through both sidecars (mTLS handshake, authz,
//!   app connect) and a 1-byte echo.
//! - `l4/echo_1MiB_mtls`: 1 MiB echoed over one established connection through both sidecars.
//! - `l4/echo_1MiB_direct`: the same straight to the app (the baseline).

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
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
         bindAddress: {ip}\nadminAddress: {ip}\ninbound: {{appHost: 127.0.90.102}}\n",
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

async fn echo(mut s: TcpStream, n: usize) {
    let buf = vec![7u8; n];
    let (mut r, mut w) = s.split();
    let write = w.write_all(&buf);
    let mut back = vec![0u8; n];
    let read = r.read_exact(&mut back);
    let (a, b) = tokio::join!(write, read);
    a.unwrap();
    b.unwrap();
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
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let app = SocketAddr::new(ip("127.0.90.102"), 7000);
    let (a_out, _a, _b) = rt.block_on(async {
        let l = TcpListener::bind(app).await.unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let se = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo, namespace: bench}\n\
                  spec:\n  hosts: [echo.bench.svc.cluster.local]\n  location: MESH_INTERNAL\n  addresses: [127.0.90.200]\n  ports: [{number: 7000, name: tcp}]\n\
                  \x20 endpoints: [{address: 127.0.90.2, serviceAccount: server, ports: {tcp: 15006}}]\n";
        let pa = "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: bench}\nspec: {mtls: {mode: STRICT}}\n";
        let a = pod(&ca, tmp.path(), "127.0.90.1", "client", &[("se.yaml", se)],
            StaticOriginalDst::new().with("127.0.90.1:15001".parse().unwrap(), "127.0.90.200:7000".parse().unwrap())).await;
        let b = pod(&ca, tmp.path(), "127.0.90.2", "server", &[("pa.yaml", pa)],
            StaticOriginalDst::new().with("127.0.90.2:15006".parse().unwrap(), "127.0.90.2:7000".parse().unwrap())).await;
        (SocketAddr::new(ip("127.0.90.1"), 15001), a, b)
    });

    let mut g = c.benchmark_group("l4");
    g.sample_size(30);
    g.bench_function("connect_mtls_1byte", |b| {
        b.iter(|| rt.block_on(async { echo(TcpStream::connect(a_out).await.unwrap(), 1).await }));
    });
    g.throughput(Throughput::Bytes(MIB as u64));
    let mesh_conn = std::sync::Mutex::new(Some(rt.block_on(TcpStream::connect(a_out)).unwrap()));
    g.bench_function("echo_1MiB_mtls", |b| {
        b.iter(|| {
            let s = mesh_conn.lock().unwrap().take().unwrap();
            let s = rt.block_on(async move {
                let mut s = s;
                echo_ref(&mut s, MIB).await;
                s
            });
            *mesh_conn.lock().unwrap() = Some(s);
        });
    });
    let direct = std::sync::Mutex::new(Some(rt.block_on(TcpStream::connect(app)).unwrap()));
    g.bench_function("echo_1MiB_direct", |b| {
        b.iter(|| {
            let s = direct.lock().unwrap().take().unwrap();
            let s = rt.block_on(async move {
                let mut s = s;
                echo_ref(&mut s, MIB).await;
                s
            });
            *direct.lock().unwrap() = Some(s);
        });
    });
    g.finish();
}

async fn echo_ref(s: &mut TcpStream, n: usize) {
    let buf = vec![7u8; n];
    let (mut r, mut w) = s.split();
    let mut back = vec![0u8; n];
    let (a, b) = tokio::join!(w.write_all(&buf), r.read_exact(&mut back));
    a.unwrap();
    b.unwrap();
}

criterion_group!(benches, bench);
criterion_main!(benches);
