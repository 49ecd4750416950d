//! End-to-end CA throughput: certificates issued per second over gRPC + TLS on loopback.
//!
//! A real control plane (self-signed P-256 root, issued log on disk, the TLS listener and the
//! maintenance loop) on its own tokio runtime; 64 concurrent clients, each on its own TLS
//! connection (tonic over rustls), each request carrying a service-account token and a CSR for
//! a fresh P-256 key. Keys and CSRs are made before the timed loop; everything else (gRPC, TLS,
//! token verification, CSR verification, signing, the issued-log append) is timed.
//!
//! Run: `cargo bench --bench ca_grpc`. Environment: `WARDEN_BENCH_REQUESTS` (default 20000),
//! `WARDEN_BENCH_CLIENTS` (default 64), `WARDEN_BENCH_SERVER_THREADS` (default: all cores).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use warden_control::client::{self, DEFAULT_SERVER_NAME};
use warden_control::{ControlConfig, ControlPlane};
use warden_identity::{KeyAlgorithm, SpiffeId, TrustDomain, keys};
use warden_policy::jwt::SigningKey;
use warden_policy::jwt::k8s::{SaTokenSpec, mint};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo test --benches` runs bench targets with no `--bench` flag: do a tiny run then.
    let benching = std::env::args().any(|a| a == "--bench");
    let total = if benching {
        env_usize("WARDEN_BENCH_REQUESTS", 20_000)
    } else {
        256
    };
    let clients = env_usize("WARDEN_BENCH_CLIENTS", 64).max(1);
    let server_threads = env_usize(
        "WARDEN_BENCH_SERVER_THREADS",
        std::thread::available_parallelism().map_or(2, |n| n.get()),
    );
    let per_client = total.div_ceil(clients);

    let dir = tempfile::tempdir().unwrap();
    let mut config = ControlConfig::new(dir.path().join("state"));
    config.listen = "127.0.0.1:0".parse().unwrap();

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name("bench-server")
        .enable_all()
        .build()
        .unwrap();
    let cp = ControlPlane::open(config.clone()).unwrap();
    let running = server_rt.block_on(cp.start()).unwrap();
    let addr = running.local_addr();
    let root_pem = std::fs::read_to_string(config.paths().root_cert).unwrap();
    let token_key = SigningKey::from_pem(
        &std::fs::read_to_string(config.paths().token_key).unwrap(),
        None,
    )
    .unwrap();

    // Outside the timed loop: a fresh key and CSR per request, a token per client.
    let td = TrustDomain::default();
    let started = Instant::now();
    let work: Vec<(String, Vec<String>)> = (0..clients)
        .map(|c| {
            let sa = format!("bench-{c}");
            let identity = SpiffeId::istio(&td, "bench", &sa).unwrap();
            let token = mint(
                &token_key,
                &SaTokenSpec::new("bench", sa.as_str()),
                SystemTime::now(),
            )
            .unwrap();
            let csrs = (0..per_client + 1)
                .map(|_| {
                    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
                    keys::csr_pem(&key, &identity).unwrap()
                })
                .collect();
            (token, csrs)
        })
        .collect();
    eprintln!(
        "ca_grpc: prepared {} keys and CSRs in {:.1?}",
        clients * (per_client + 1),
        started.elapsed()
    );

    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name("bench-client")
        .enable_all()
        .build()
        .unwrap();
    let tls = Arc::new(client::tls_config(&root_pem, None, false).unwrap());
    let (elapsed, mut latencies) = client_rt.block_on(async move {
        // Connect every client and warm up with one request each (untimed).
        let mut conns = Vec::new();
        for (token, mut csrs) in work {
            let mut c = client::connect(addr, DEFAULT_SERVER_NAME, tls.clone())
                .await
                .unwrap();
            let warm = csrs.pop().unwrap();
            c.create_certificate(client::request(&warm, 0, Some(&token)).unwrap())
                .await
                .unwrap();
            conns.push((c, token, csrs));
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(conns.len() + 1));
        let mut tasks = Vec::new();
        for (mut c, token, csrs) in conns {
            let barrier = barrier.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::with_capacity(csrs.len());
                barrier.wait().await;
                for csr in csrs {
                    let t = Instant::now();
                    let resp = c
                        .create_certificate(client::request(&csr, 0, Some(&token)).unwrap())
                        .await
                        .expect("certificate issued");
                    assert_eq!(resp.get_ref().cert_chain.len(), 2);
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        barrier.wait().await;
        let t0 = Instant::now();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        (t0.elapsed(), all)
    });
    latencies.sort();
    let n = latencies.len();
    let rate = n as f64 / elapsed.as_secs_f64();
    println!(
        "ca_grpc: {n} certificates in {:.2?} with {clients} concurrent clients = {rate:.0} certs/s \
         (latency p50 {:.2?}, p99 {:.2?}, max {:.2?}; server threads {server_threads})",
        elapsed,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies[n - 1],
    );
    assert_eq!(
        running.ca().issued_log().len(),
        n + clients + 1,
        "every certificate was recorded (plus the warm-up ones and the serving certificate)"
    );
    server_rt.block_on(running.shutdown());
}
