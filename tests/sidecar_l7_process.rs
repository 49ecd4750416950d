//! `warden sidecar` processes carrying HTTP under load, then SIGTERM: every request the app
//! received is answered to its client (nothing in flight is lost inside the drain deadline),
//! and both sidecars exit 0. Client pod 127.0.31.1, server pod 127.0.31.2, app 127.0.31.102.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn warden(args: &[&str]) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sidecar(dir: &Path, name: &str, ip: &str, sa: &str, static_dst: &str) -> Proc {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "identity: {{namespace: demo, serviceAccount: {sa}, podName: {sa}-1}}\n\
             certificates: {{staticDir: {certs}}}\n\
             config: {{directory: {config}}}\n\
             bindAddress: {ip}\n\
             adminAddress: {ip}\n\
             drainDeadline: 10s\n\
             inbound: {{appHost: 127.0.31.102}}\n",
            certs = dir.join(format!("{name}-certs")).display(),
            config = dir.join(format!("{name}-config")).display(),
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--log", "info", "sidecar", "-c"])
        .arg(&cfg)
        .args(["--static-original-dst", static_dst])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = log.clone();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
    Proc { child, log }
}

fn wait_ready(ip: &str) {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = TcpStream::connect(format!("{ip}:15021")) {
            let _ = write!(s, "GET /healthz/ready HTTP/1.0\r\n\r\n");
            let mut out = String::new();
            let _ = s.read_to_string(&mut out);
            if out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200") {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{ip} never ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP/1.1 app that answers `GET /r/<id>` with `done <id>` after `delay`, keep-alive.
/// Records the ids it received and how many requests it holds right now.
struct App {
    seen: Mutex<HashSet<u64>>,
    in_flight: AtomicUsize,
}

fn slow_app(addr: &str, delay: Duration) -> Arc<App> {
    let app = Arc::new(App {
        seen: Mutex::new(HashSet::new()),
        in_flight: AtomicUsize::new(0),
    });
    let l = TcpListener::bind(addr).unwrap();
    let state = app.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let state = state.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(s.try_clone().unwrap());
                let mut s = s;
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let id: u64 = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|p| p.strip_prefix("/r/"))
                        .and_then(|i| i.parse().ok())
                        .unwrap_or(u64::MAX);
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 {
                            return;
                        }
                        if h == "\r\n" {
                            break;
                        }
                    }
                    state.seen.lock().unwrap().insert(id);
                    state.in_flight.fetch_add(1, Ordering::SeqCst);
                    std::thread::sleep(delay);
                    let body = format!("done {id}");
                    let ok = write!(
                        s,
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .is_ok();
                    state.in_flight.fetch_sub(1, Ordering::SeqCst);
                    if !ok {
                        return;
                    }
                }
            });
        }
    });
    app
}

/// One request through the client sidecar; `Some(body)` on a 200.
fn get(id: u64) -> Result<String, String> {
    let mut s = TcpStream::connect("127.0.31.1:15001").map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET /r/{id} HTTP/1.1\r\nhost: web.demo\r\nconnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out).map_err(|e| e.to_string())?;
    if !out.starts_with("HTTP/1.1 200") {
        return Err(out);
    }
    Ok(out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default())
}

#[test]
fn sigterm_under_http_load_loses_no_request_in_flight() {
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
    for (name, sa) in [("a", "client"), ("b", "server")] {
        std::fs::create_dir_all(d.join(format!("{name}-config"))).unwrap();
        warden(&[
            "certs",
            "workload",
            "--ca",
            ca.to_str().unwrap(),
            "--namespace",
            "demo",
            "--service-account",
            sa,
            "--out",
            d.join(format!("{name}-certs")).to_str().unwrap(),
        ]);
    }
    std::fs::write(
        d.join("a-config/services.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web, namespace: demo}\n\
         spec:\n  hosts: [web.demo.svc.cluster.local]\n  addresses: [127.0.31.200]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 7000, name: http}]\n\
         \x20 endpoints: [{address: 127.0.31.2, serviceAccount: server, ports: {http: 15006}}]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b-config/policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .unwrap();
    let app = slow_app("127.0.31.102:7000", Duration::from_millis(400));
    let a = sidecar(
        d,
        "a",
        "127.0.31.1",
        "client",
        "127.0.31.1:15001=127.0.31.200:7000",
    );
    let b = sidecar(
        d,
        "b",
        "127.0.31.2",
        "server",
        "127.0.31.2:15006=127.0.31.2:7000",
    );
    wait_ready("127.0.31.1");
    wait_ready("127.0.31.2");
    assert_eq!(get(0).unwrap(), "done 0");

    // 16 clients, each sending requests back to back.
    let stop = Arc::new(AtomicBool::new(false));
    let results: Arc<Mutex<HashMap<u64, Result<String, String>>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..16u64 {
        let (stop, results) = (stop.clone(), results.clone());
        clients.push(std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let id = 1000 * (c + 1) + i;
                i += 1;
                let r = get(id);
                let failed = r.is_err();
                results.lock().unwrap().insert(id, r);
                if failed {
                    // Refused after the drain started: this client is done.
                    return;
                }
            }
        }));
    }
    // Let the load settle, then SIGTERM both sidecars while the app holds requests.
    let start = Instant::now();
    while app.in_flight.load(Ordering::SeqCst) < 8 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no load built up"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(1000));
    let held = app.in_flight.load(Ordering::SeqCst);
    let before = app.seen.lock().unwrap().len();
    for p in [&a, &b] {
        let st = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    let seen = app.seen.lock().unwrap().clone();
    let results = results.lock().unwrap();
    assert!(held >= 4, "only {held} requests in flight at SIGTERM");
    let mut answered = 0;
    for id in seen.iter().filter(|id| **id >= 1000) {
        match results.get(id) {
            Some(Ok(body)) if *body == format!("done {id}") => answered += 1,
            other => panic!("request {id} reached the app but its client got {other:?}"),
        }
    }
    // Traffic flowed before the signal, and every request held at the signal was answered.
    assert!(
        before > held + 1,
        "{before} seen before SIGTERM, {held} held"
    );
    assert!(
        answered >= held,
        "{answered} answered, {held} held at SIGTERM"
    );
    let mut a = a;
    let mut b = b;
    for (name, p) in [("a", &mut a), ("b", &mut b)] {
        let start = Instant::now();
        let status = loop {
            if let Some(st) = p.child.try_wait().unwrap() {
                break st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{name} did not exit after draining"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let log = p.log.lock().unwrap().clone();
        assert!(status.success(), "{name} exited with {status}\n{log}");
        assert!(
            log.contains("drained: every connection finished"),
            "{name}: {log}"
        );
    }
}
