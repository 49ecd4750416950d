//! Load generators of our own where no packaged tool fits: TCP bulk transfer through a pair,
//! idle connections, and mTLS handshakes per second against a server sidecar.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::client::Resumption;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use warden_identity::TrustDomain;
use warden_identity::tls::{Alpn, TlsProvider, TlsSettings, TrustBundle, WorkloadCredentials};

/// Sends `bytes` through `entry` to the TCP sink and waits for its byte count, from a socket
/// with `congestion` control (None: the system's default). Returns MB/s (10^6 bytes per
/// second) over the whole transfer.
pub async fn bulk(entry: SocketAddr, bytes: u64, congestion: Option<&str>) -> Result<f64, String> {
    let socket = if entry.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| format!("TCP bulk sender socket: {e}"))?;
    if let Some(cc) = congestion {
        set_congestion(&socket, cc)?;
    }
    let mut s = socket
        .connect(entry)
        .await
        .map_err(|e| format!("connect {entry}: {e}"))?;
    let mut greet = [0u8; 1];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut greet))
        .await
        .map_err(|_| format!("no greeting from the TCP upstream through {entry}"))?
        .map_err(|e| format!("greeting through {entry}: {e}"))?;
    let chunk = vec![0x5au8; 256 * 1024];
    let start = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        s.write_all(&chunk[..n])
            .await
            .map_err(|e| format!("writing through {entry}: {e}"))?;
        left -= n as u64;
    }
    s.shutdown().await.map_err(|e| e.to_string())?;
    let mut count = [0u8; 8];
    tokio::time::timeout(Duration::from_secs(60), s.read_exact(&mut count))
        .await
        .map_err(|_| "no byte count from the TCP upstream".to_owned())?
        .map_err(|e| format!("byte count through {entry}: {e}"))?;
    let elapsed = start.elapsed().as_secs_f64();
    let got = u64::from_be_bytes(count);
    if got != bytes {
        return Err(format!("the upstream received {got} bytes of {bytes}"));
    }
    Ok(bytes as f64 / elapsed / 1e6)
}

/// Sets `socket`'s congestion control to `cc` and checks that the kernel took it.
fn set_congestion(socket: &TcpSocket, cc: &str) -> Result<(), String> {
    let sock = socket2::SockRef::from(socket);
    sock.set_tcp_congestion(cc.as_bytes())
        .map_err(|e| format!("TCP bulk sender: congestion control {cc:?}: {e}"))?;
    let got = sock
        .tcp_congestion()
        .map_err(|e| format!("TCP bulk sender: reading congestion control back: {e}"))?;
    let got = String::from_utf8_lossy(&got);
    let got = got.trim_end_matches('\0');
    if got != cc {
        return Err(format!(
            "TCP bulk sender: asked for congestion control {cc:?}, the socket has {got:?}"
        ));
    }
    Ok(())
}

/// The system's default TCP congestion control (`net.ipv4.tcp_congestion_control`).
pub fn default_congestion() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Opens `n` connections through `entry`, each waiting for the upstream's greeting, so every
/// one is established end to end (through both sidecars). Returns them, open.
pub async fn open_idle(entry: SocketAddr, n: usize) -> Result<Vec<TcpStream>, String> {
    let mut conns = Vec::with_capacity(n);
    // A few hundred at a time: like a pod's clients ramping up, not a SYN flood.
    for batch in (0..n).collect::<Vec<_>>().chunks(200) {
        let tasks: Vec<_> = batch
            .iter()
            .map(|_| {
                tokio::spawn(async move {
                    let mut s = TcpStream::connect(entry).await?;
                    let mut greet = [0u8; 1];
                    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut greet))
                        .await
                        .map_err(|_| std::io::Error::other("no greeting in 20 s"))??;
                    Ok::<_, std::io::Error>(s)
                })
            })
            .collect();
        for t in tasks {
            let s = t
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("idle connection {} through {entry}: {e}", conns.len()))?;
            conns.push(s);
        }
    }
    Ok(conns)
}

/// A TLS client presenting `cert_dir`'s workload certificate, offering Istio's HTTP/1.1 ALPN,
/// never resuming (every handshake is a full one).
pub fn mesh_client(cert_dir: &Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let read = |f: &str| std::fs::read(cert_dir.join(f)).map_err(|e| format!("{f}: {e}"));
    let trust = TrustBundle::from_pem(
        TrustDomain::default(),
        &read("root-cert.pem")?,
        "root-cert.pem",
    )
    .map_err(|e| e.to_string())?;
    let creds = WorkloadCredentials::from_pem(
        &read("cert-chain.pem")?,
        &read("key.pem")?,
        trust,
        "bench client",
    )
    .map_err(|e| e.to_string())?;
    let provider = TlsProvider::new(TlsSettings::default()).map_err(|e| e.to_string())?;
    let configs = provider.install(&creds).map_err(|e| e.to_string())?;
    let mut cfg = (**configs.client(Alpn::Http11)).clone();
    cfg.resumption = Resumption::disabled();
    Ok(Arc::new(cfg))
}

/// Full mTLS handshakes per second against `server`, `concurrency` at a time, for `duration`.
pub async fn handshakes(
    server: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
    concurrency: usize,
    duration: Duration,
) -> Result<f64, String> {
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| {
            let (cfg, done, failed) = (cfg.clone(), done.clone(), failed.clone());
            tokio::spawn(async move {
                let connector = tokio_rustls::TlsConnector::from(cfg);
                let name =
                    ServerName::try_from("upstream.bench.svc.cluster.local").expect("valid name");
                while Instant::now() < deadline {
                    let ok = async {
                        let tcp = TcpStream::connect(server).await?;
                        let mut tls = connector.connect(name.clone(), tcp).await?;
                        tls.shutdown().await
                    };
                    match ok.await {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.map_err(|e| e.to_string())?;
    }
    let (ok, bad) = (done.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    if bad > ok / 100 {
        return Err(format!(
            "{bad} of {} handshakes with {server} failed",
            ok + bad
        ));
    }
    Ok(ok as f64 / start.elapsed().as_secs_f64())
}
