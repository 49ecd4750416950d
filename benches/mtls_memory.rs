//! Heap per established mesh mTLS connection, measured with a counting global allocator.
//!
//! Opens N loopback TCP connection pairs, then N mTLS pairs through `TlsProvider::connect` /
//! `accept` (one request/response round trip each, so session tickets are processed), and
//! reports the heap held per connection on each side beyond the socket (the plain TCP pair cost
//! is measured first and subtracted). Target: at most 16 KiB per side.
//!
//! Run: `cargo bench --bench mtls_memory`.

use std::alloc::System;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_identity::keys::{self, KeyAlgorithm};
use warden_identity::tls::{
    Alpn, ClientTlsStream, ServerTlsStream, TlsProvider, TlsSettings, TrustBundle,
    WorkloadCredentials,
};
use warden_identity::{CaOptions, CertificateAuthority, SpiffeId, TrustDomain};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const N: usize = 500;
const TARGET: f64 = 16.0 * 1024.0;

fn provider_for(ca: &CertificateAuthority, identity: &SpiffeId) -> TlsProvider {
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = keys::csr_pem(&key, identity).unwrap();
    let cert = ca.sign_csr(&csr, identity, 3600).unwrap();
    let trust = TrustBundle::from_pem(
        TrustDomain::default(),
        ca.root_bundle_pem().as_bytes(),
        "root",
    )
    .unwrap();
    let creds = WorkloadCredentials::from_pem(
        cert.chain_pem.concat().as_bytes(),
        key.serialize_pem().as_bytes(),
        trust,
        "bench",
    )
    .unwrap();
    let p = TlsProvider::new(TlsSettings::default()).unwrap();
    p.install(&creds).unwrap();
    p
}

fn net(region: &Region<'_, System>) -> isize {
    let s = region.change();
    // Reallocations are already counted in both totals.
    s.bytes_allocated as isize - s.bytes_deallocated as isize
}

async fn tcp_pair(l: &TcpListener) -> (TcpStream, TcpStream) {
    let addr = l.local_addr().unwrap();
    let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
    (c.unwrap(), s.unwrap().0)
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let sid = SpiffeId::istio(&TrustDomain::default(), "bench", "server").unwrap();
    let cid = SpiffeId::istio(&TrustDomain::default(), "bench", "client").unwrap();
    let server = provider_for(&ca, &sid);
    let client = provider_for(&ca, &cid);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let expected = [sid];

    // Warm up: one connection of each kind, so lazily built state is not counted.
    for _ in 0..2 {
        let (c, s) = tcp_pair(&listener).await;
        let (a, b) = tokio::join!(server.accept(s), client.connect(c, &expected, Alpn::Tcp));
        drop((a.unwrap(), b.unwrap()));
    }

    // Plain sockets.
    let region = Region::new(GLOBAL);
    let mut plain = Vec::with_capacity(N);
    let vec_bytes = net(&region);
    for _ in 0..N {
        plain.push(tcp_pair(&listener).await);
    }
    let per_socket = (net(&region) - vec_bytes) as f64 / (2 * N) as f64;
    drop(plain);
    // Let the I/O driver release the closed sockets' registrations.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    for full in [false, true] {
        measure(&server, &client, &listener, &expected, per_socket, full).await;
    }
}

/// Opens N mTLS pairs (resumed after the first unless `full`), one round trip each, and prints
/// the heap held per connection on each side.
async fn measure(
    server: &TlsProvider,
    client: &TlsProvider,
    listener: &TcpListener,
    expected: &[SpiffeId],
    per_socket: f64,
    full: bool,
) {
    let full_cfg = {
        let mut c = (**client.current().unwrap().client(Alpn::Tcp)).clone();
        c.resumption = rustls::client::Resumption::disabled();
        std::sync::Arc::new(c)
    };
    // The vectors hold the stream structs themselves, so what is freed when they are dropped
    // includes each connection's inline size (in a proxy, part of a task's future).
    let region = Region::new(GLOBAL);
    let mut clients: Vec<ClientTlsStream<TcpStream>> = Vec::with_capacity(N);
    let mut servers: Vec<ServerTlsStream<TcpStream>> = Vec::with_capacity(N);
    let mut buf = [0u8; 4];
    for _ in 0..N {
        let (c, s) = tcp_pair(listener).await;
        let (mut ss, mut cs) = if full {
            let name = rustls::pki_types::ServerName::try_from("full.invalid").unwrap();
            let connector = tokio_rustls::TlsConnector::from(full_cfg.clone());
            let (a, b) = tokio::join!(server.accept(s), connector.connect(name, c));
            let cs = b.unwrap();
            let peer = warden_identity::tls::peer_identity(cs.get_ref().1).unwrap();
            warden_identity::tls::check_secure_naming(&peer, expected).unwrap();
            (a.unwrap().0, cs)
        } else {
            let (a, b) = tokio::join!(server.accept(s), client.connect(c, expected, Alpn::Tcp));
            (a.unwrap().0, b.unwrap().0)
        };
        cs.write_all(b"ping").await.unwrap();
        ss.read_exact(&mut buf).await.unwrap();
        ss.write_all(b"pong").await.unwrap();
        cs.read_exact(&mut buf).await.unwrap();
        clients.push(cs);
        servers.push(ss);
    }
    let total = net(&region);
    let resumed = clients
        .iter()
        .filter(|c| c.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed))
        .count();
    let region = Region::new(GLOBAL);
    drop(clients);
    let client_side = -net(&region) as f64 / N as f64 - per_socket;
    let region = Region::new(GLOBAL);
    drop(servers);
    let server_side = -net(&region) as f64 / N as f64 - per_socket;
    let shared = total as f64 / N as f64 - client_side - server_side - 2.0 * per_socket;
    // Let the I/O driver release the closed sockets before the next measurement.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;

    println!(
        "mtls_memory: {N} established mTLS connections, TLS 1.3, {}",
        if full {
            "full handshakes".to_owned()
        } else {
            format!("{resumed} resumed")
        }
    );
    println!("  heap per TCP socket (subtracted):       {per_socket:8.0} B");
    println!(
        "  (inline size of the stream structs: client {} B, server {} B, included below)",
        std::mem::size_of::<ClientTlsStream<TcpStream>>(),
        std::mem::size_of::<ServerTlsStream<TcpStream>>()
    );
    println!("  heap per connection, client side:       {client_side:8.0} B");
    println!("  heap per connection, server side:       {server_side:8.0} B");
    println!("  not freed with the connection (caches): {shared:8.0} B per connection");
    let worst = client_side.max(server_side);
    println!(
        "  target <= {:.0} B per side: {}",
        TARGET,
        if worst <= TARGET { "met" } else { "NOT met" }
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` runs it too (quick, so fine).
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(run());
}
