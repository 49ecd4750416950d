//! Soak: `warden sidecar` processes under mixed load, sampling their RSS.
//!
//! `cargo bench --bench soak -- --minutes 10` (default 10; `--minutes 0.5` for a quick run).
//!
//! Pods on loopback (127.0.184.*): client sidecars A (TCP service) and H (HTTP service), server
//! sidecar B (STRICT mTLS) in front of an app that echoes TCP and answers HTTP. Load, all
//! through mTLS between the client sidecars and B:
//! - 50 long-lived TCP connections echoing 4 KiB every 100 ms;
//! - 2 workers opening a new TCP connection per 1 KiB echo;
//! - 4 HTTP/1.1 keep-alive clients (HTTP/1.1 inside mTLS, served by hyper in B);
//! - 2 workers sending one HTTP/1.0 request per new connection.
//!
//! Every few seconds the sidecars' VmRSS is sampled; at the end it prints RSS over time and,
//! per sidecar, the slope after warm-up (the first 20%, at least 20 s when the run is long
//! enough) by least squares, in KiB/min. Runs of 5 minutes or more exit 1 when a slope exceeds
//! 256 KiB/min (memory must be flat after warm-up).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BIN: &str = env!("CARGO_BIN_EXE_warden");
const FLAT_KIB_PER_MIN: f64 = 256.0;

fn minutes_arg() -> f64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--minutes")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--minutes takes a number"))
        .unwrap_or(10.0)
}

fn warden(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Sidecar {
    name: &'static str,
    child: Child,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sidecar {
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn sidecar(d: &Path, name: &'static str, ip: &str, sa: &str, dst: &str) -> Sidecar {
    let cfg = d.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "identity: {{namespace: soak, serviceAccount: {sa}}}\n\
             certificates: {{staticDir: {certs}}}\nconfig: {{directory: {config}}}\n\
             bindAddress: {ip}\nadminAddress: {ip}\ninbound: {{appHost: 127.0.184.100}}\n",
            certs = d.join(format!("{sa}-certs")).display(),
            config = d.join(format!("{name}-config")).display(),
        ),
    )
    .unwrap();
    let mut child = Command::new("sh")
        .args([
            "-c",
            &format!(
                "ulimit -n 8192 && exec {BIN} --log warn sidecar -c {} --static-original-dst {dst}",
                cfg.display()
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let err = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
    Sidecar { name, child }
}

/// The app: `ECHO` first means a TCP echo, anything else is HTTP/1.1 answered `200 ok`.
async fn app(listener: TcpListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(async move {
            let mut first = [0u8; 4];
            loop {
                match s.peek(&mut first).await {
                    Ok(n) if n >= 4 => break,
                    Ok(0) | Err(_) => return,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
                }
            }
            let mut s = s;
            if &first == b"ECHO" {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
                return;
            }
            let (r, mut w) = s.split();
            let mut r = tokio::io::BufReader::new(r);
            let mut line = String::new();
            loop {
                // One request head (no bodies in this load).
                let mut saw_request = false;
                loop {
                    line.clear();
                    match r.read_line(&mut line).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if line == "\r\n" => break,
                        Ok(_) => saw_request = true,
                    }
                }
                if !saw_request
                    || w.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .is_err()
                {
                    return;
                }
            }
        });
    }
}

#[derive(Default)]
struct Counts {
    ops: AtomicU64,
    errors: AtomicU64,
}

impl Counts {
    fn record<T, E>(&self, r: Result<T, E>) {
        match r {
            Ok(_) => self.ops.fetch_add(1, Ordering::Relaxed),
            Err(_) => self.errors.fetch_add(1, Ordering::Relaxed),
        };
    }
}

async fn echo(s: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    s.write_all(data).await?;
    let mut back = vec![0u8; data.len()];
    s.read_exact(&mut back).await?;
    if back != data {
        return Err(std::io::Error::other("echo mismatch"));
    }
    Ok(())
}

/// Reads one `200 ok` response (content-length 2) from a keep-alive connection.
async fn read_response(r: &mut tokio::io::BufReader<TcpStream>) -> std::io::Result<()> {
    let mut line = String::new();
    r.read_line(&mut line).await?;
    if !line.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("status line {line:?}")));
    }
    let mut len = 0usize;
    loop {
        line.clear();
        if r.read_line(&mut line).await? == 0 {
            return Err(std::io::Error::other("eof in head"));
        }
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    Ok(())
}

fn slope_kib_per_min(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), (x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let (num, den) = points.iter().fold((0.0, 0.0), |(nu, de), (x, y)| {
        (nu + (x - mx) * (y - my), de + (x - mx) * (x - mx))
    });
    if den == 0.0 { 0.0 } else { num / den }
}

fn main() {
    let minutes = minutes_arg();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let interval = Duration::from_secs_f64((total.as_secs_f64() / 60.0).clamp(1.0, 5.0));
    let warmup = Duration::from_secs_f64(
        (total.as_secs_f64() * 0.2).max(20.0_f64.min(total.as_secs_f64() * 0.5)),
    );

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("ca");
    warden(&[
        "certs",
        "root-ca",
        "--out",
        ca.to_str().unwrap(),
        "--key",
        "ec-p256",
    ]);
    for sa in ["client", "server"] {
        warden(&[
            "certs",
            "workload",
            "--ca",
            ca.to_str().unwrap(),
            "--namespace",
            "soak",
            "--service-account",
            sa,
            "--out",
            d.join(format!("{sa}-certs")).to_str().unwrap(),
        ]);
    }
    let entry = |name: &str, vip: &str, port_name: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: soak}}\n\
             spec:\n  hosts: [{name}.soak.svc.cluster.local]\n  location: MESH_INTERNAL\n  addresses: [{vip}]\n  ports: [{{number: 7000, name: {port_name}}}]\n\
             \x20 endpoints: [{{address: 127.0.184.2, serviceAccount: server, ports: {{{port_name}: 15006}}}}]\n"
        )
    };
    for (pod, yaml) in [
        ("a", entry("tcp-echo", "127.0.184.200", "tcp")),
        ("h", entry("web", "127.0.184.201", "http")),
        (
            "b",
            "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: soak}\nspec: {mtls: {mode: STRICT}}\n".to_owned(),
        ),
    ] {
        let c = d.join(format!("{pod}-config"));
        std::fs::create_dir_all(&c).unwrap();
        std::fs::write(c.join("config.yaml"), yaml).unwrap();
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(TcpListener::bind("127.0.184.100:7000"))
        .unwrap();
    rt.spawn(app(listener));
    let mut sidecars = [
        sidecar(
            d,
            "a",
            "127.0.184.1",
            "client",
            "127.0.184.1:15001=127.0.184.200:7000",
        ),
        sidecar(
            d,
            "h",
            "127.0.184.3",
            "client",
            "127.0.184.3:15001=127.0.184.201:7000",
        ),
        sidecar(
            d,
            "b",
            "127.0.184.2",
            "server",
            "127.0.184.2:15006=127.0.184.2:7000",
        ),
    ];
    // Ready when a TCP echo and an HTTP request go through.
    rt.block_on(async {
        let start = Instant::now();
        loop {
            let tcp = async {
                let mut s = TcpStream::connect("127.0.184.1:15001").await?;
                echo(&mut s, b"ECHO ready").await
            };
            let http = async {
                let s = TcpStream::connect("127.0.184.3:15001").await?;
                let mut r = tokio::io::BufReader::new(s);
                r.get_mut()
                    .write_all(b"GET /ready HTTP/1.1\r\nhost: web\r\n\r\n")
                    .await?;
                read_response(&mut r).await
            };
            if tcp.await.is_ok() && http.await.is_ok() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "sidecars never ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });

    let stop = Arc::new(AtomicBool::new(false));
    let counts: Arc<[Counts; 4]> = Arc::new(Default::default());
    let names = [
        "tcp long-lived",
        "tcp new conn",
        "http keep-alive",
        "http new conn",
    ];
    for i in 0..50 {
        let (stop, counts) = (stop.clone(), counts.clone());
        rt.spawn(async move {
            let mut data = vec![0u8; 4096];
            data[..4].copy_from_slice(b"ECHO");
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect("127.0.184.1:15001").await else {
                    counts[0].errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                while !stop.load(Ordering::Relaxed) {
                    data[4] = data[4].wrapping_add(i);
                    let r = echo(&mut s, &data).await;
                    let failed = r.is_err();
                    counts[0].record(r);
                    if failed {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        });
    }
    for _ in 0..2 {
        let (stop, counts) = (stop.clone(), counts.clone());
        rt.spawn(async move {
            let mut data = vec![1u8; 1024];
            data[..4].copy_from_slice(b"ECHO");
            while !stop.load(Ordering::Relaxed) {
                let r = async {
                    let mut s = TcpStream::connect("127.0.184.1:15001").await?;
                    echo(&mut s, &data).await?;
                    s.shutdown().await
                }
                .await;
                counts[1].record(r);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }
    for _ in 0..4 {
        let (stop, counts) = (stop.clone(), counts.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(s) = TcpStream::connect("127.0.184.3:15001").await else {
                    counts[2].errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut r = tokio::io::BufReader::new(s);
                while !stop.load(Ordering::Relaxed) {
                    let res = async {
                        r.get_mut()
                            .write_all(b"GET /keep HTTP/1.1\r\nhost: web\r\nx-soak: 1\r\n\r\n")
                            .await?;
                        read_response(&mut r).await
                    }
                    .await;
                    let failed = res.is_err();
                    counts[2].record(res);
                    if failed {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        });
    }
    for _ in 0..2 {
        let (stop, counts) = (stop.clone(), counts.clone());
        rt.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let r = async {
                    let mut s = TcpStream::connect("127.0.184.3:15001").await?;
                    s.write_all(b"GET /new HTTP/1.0\r\nhost: web\r\n\r\n")
                        .await?;
                    let mut out = Vec::new();
                    s.read_to_end(&mut out).await?;
                    if !out.starts_with(b"HTTP/1.0 200") && !out.starts_with(b"HTTP/1.1 200") {
                        return Err(std::io::Error::other("bad response"));
                    }
                    Ok(())
                }
                .await;
                counts[3].record(r);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
    }

    println!(
        "soak: {minutes} min, sampling every {:?}, warm-up {:?}",
        interval, warmup
    );
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>12} {:>8}",
        "t (s)", "A KiB", "H KiB", "B KiB", "ops", "errors"
    );
    let start = Instant::now();
    let mut samples: Vec<(f64, [u64; 3])> = Vec::new();
    loop {
        let t = start.elapsed();
        let rss = [
            sidecars[0].rss_kib(),
            sidecars[1].rss_kib(),
            sidecars[2].rss_kib(),
        ];
        let ops: u64 = counts.iter().map(|c| c.ops.load(Ordering::Relaxed)).sum();
        let errors: u64 = counts
            .iter()
            .map(|c| c.errors.load(Ordering::Relaxed))
            .sum();
        println!(
            "{:>8.1} {:>10} {:>10} {:>10} {:>12} {:>8}",
            t.as_secs_f64(),
            rss[0],
            rss[1],
            rss[2],
            ops,
            errors
        );
        samples.push((t.as_secs_f64(), rss));
        if t >= total {
            break;
        }
        std::thread::sleep(
            interval
                .min(total.saturating_sub(t))
                .max(Duration::from_millis(100)),
        );
    }
    stop.store(true, Ordering::Relaxed);
    let secs = start.elapsed().as_secs_f64();
    for (name, c) in names.iter().zip(counts.iter()) {
        let ops = c.ops.load(Ordering::Relaxed);
        println!(
            "{name:>16}: {ops} ops ({:.0}/s), {} errors",
            ops as f64 / secs,
            c.errors.load(Ordering::Relaxed)
        );
    }
    let mut flat = true;
    for (i, s) in sidecars.iter().enumerate() {
        let pts: Vec<(f64, f64)> = samples
            .iter()
            .filter(|(t, _)| *t >= warmup.as_secs_f64())
            .map(|(t, r)| (t / 60.0, r[i] as f64))
            .collect();
        let slope = slope_kib_per_min(&pts);
        let first = pts.first().map(|p| p.1).unwrap_or(0.0);
        let last = pts.last().map(|p| p.1).unwrap_or(0.0);
        println!(
            "sidecar {}: RSS after warm-up {first:.0} -> {last:.0} KiB, slope {slope:+.1} KiB/min over {} samples",
            s.name,
            pts.len()
        );
        if slope > FLAT_KIB_PER_MIN {
            flat = false;
        }
    }
    for s in sidecars.iter_mut() {
        if let Ok(Some(st)) = s.child.try_wait() {
            println!("FAIL: sidecar {} exited during the run: {st}", s.name);
            flat = false;
        }
    }
    drop(rt);
    let exited = sidecars
        .iter_mut()
        .any(|s| matches!(s.child.try_wait(), Ok(Some(_))));
    if exited || (minutes >= 5.0 && !flat) {
        println!("FAIL: RSS grows more than {FLAT_KIB_PER_MIN} KiB/min after warm-up");
        std::process::exit(1);
    }
    println!(
        "{}",
        if flat {
            "memory flat after warm-up"
        } else {
            "memory grows (short run: not judged)"
        }
    );
}
