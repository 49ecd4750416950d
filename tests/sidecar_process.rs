//! `warden sidecar` as real processes on loopback: certificates from `warden certs`, two
//! sidecars (client pod 127.0.30.1, server pod 127.0.30.2) with static original destinations,
//! an echo app; readiness before certificates, TCP through mTLS, metrics on :15020, the admin
//! port, the access log, and SIGTERM draining an in-flight transfer.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
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

impl Proc {
    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sidecar(dir: &Path, name: &str, ip: &str, sa: &str, static_dst: &[String]) -> Proc {
    let cfg = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "identity: {{namespace: demo, serviceAccount: {sa}, podName: {sa}-1, labels: {{app: {sa}}}}}\n\
             certificates: {{staticDir: {certs}}}\n\
             config: {{directory: {config}}}\n\
             reloadInterval: 100ms\n\
             bindAddress: {ip}\n\
             adminAddress: {ip}\n\
             drainDeadline: 20s\n\
             inbound: {{appHost: 127.0.30.102}}\n",
            certs = dir.join(format!("{name}-certs")).display(),
            config = dir.join(format!("{name}-config")).display(),
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["--log", "info", "sidecar", "-c"]).arg(&cfg);
    for s in static_dst {
        cmd.args(["--static-original-dst", s]);
    }
    let mut child = cmd
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

fn http(addr: &str, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    (
        status,
        out.split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default(),
    )
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
            start.elapsed() < Duration::from_secs(30),
            "{ip} never ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn echo_app(addr: &str) {
    let l = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut r = s.try_clone().unwrap();
                let _ = std::io::copy(&mut r, &mut s);
                let _ = s.shutdown(Shutdown::Write);
            });
        }
    });
}

#[test]
fn sidecars_as_processes() {
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
        if name == "a" {
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
                d.join("a-certs").to_str().unwrap(),
            ]);
        }
    }
    std::fs::write(
        d.join("a-config/services.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo, namespace: demo}\n\
         spec:\n  hosts: [echo.demo.svc.cluster.local]\n  addresses: [127.0.30.200]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 7000, name: tcp}]\n\
         \x20 endpoints: [{address: 127.0.30.2, serviceAccount: server, ports: {tcp: 15006}}]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b-config/policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-client, namespace: demo}\n\
         spec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/client]}\n",
    )
    .unwrap();
    echo_app("127.0.30.102:7000");

    let a = sidecar(
        d,
        "a",
        "127.0.30.1",
        "client",
        &["127.0.30.1:15001=127.0.30.200:7000".into()],
    );
    // B starts without certificates: not ready, and says why.
    std::fs::create_dir_all(d.join("b-certs")).unwrap();
    let b = sidecar(
        d,
        "b",
        "127.0.30.2",
        "server",
        &["127.0.30.2:15006=127.0.30.2:7000".into()],
    );
    wait_ready("127.0.30.1");
    let start = Instant::now();
    let (status, body) = loop {
        if let Ok(s) = TcpStream::connect("127.0.30.2:15021") {
            drop(s);
            break http("127.0.30.2:15021", "GET", "/healthz/ready");
        }
        assert!(start.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("certificate not loaded"), "{body}");
    warden(&[
        "certs",
        "workload",
        "--ca",
        ca.to_str().unwrap(),
        "--namespace",
        "demo",
        "--service-account",
        "server",
        "--out",
        d.join("b-certs").to_str().unwrap(),
    ]);
    wait_ready("127.0.30.2");

    // TCP echo through client sidecar -> mTLS -> server sidecar -> app.
    let mut s = TcpStream::connect("127.0.30.1:15001").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"hello mesh").unwrap();
    let mut buf = [0u8; 10];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello mesh");

    // Runtime log level, and the admin port refuses non-loopback use by config (tested in unit
    // tests); here it answers on the pod's loopback address.
    let (status, body) = http("127.0.30.2:15000", "POST", "/logging?level=debug");
    assert_eq!(status, 200, "{body}");

    // SIGTERM both sidecars with the transfer in flight: it completes, then they exit 0.
    for p in [&a, &b] {
        let st = Command::new("kill")
            .args(["-TERM", &p.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        TcpStream::connect_timeout(
            &"127.0.30.1:15001".parse::<SocketAddr>().unwrap(),
            Duration::from_secs(1)
        )
        .is_err(),
        "still accepting after SIGTERM"
    );
    // Metrics are still served while draining.
    let (status, metrics) = http("127.0.30.2:15020", "GET", "/stats/prometheus");
    assert_eq!(status, 200);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("istio_tcp_connections_opened_total{"))
        .unwrap_or_else(|| panic!("{metrics}"));
    for want in [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/demo/sa/client\"",
        "destination_principal=\"spiffe://cluster.local/ns/demo/sa/server\"",
        "destination_workload=\"server\"",
        "connection_security_policy=\"mutual_tls\"",
    ] {
        assert!(line.contains(want), "{want} missing in {line}");
    }
    s.write_all(b" and goodbye").unwrap();
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b" and goodbye");

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
        assert!(status.success(), "{name} exited with {status}\n{}", p.log());
    }
    std::thread::sleep(Duration::from_millis(100));
    let blog = b.log();
    assert!(
        blog.contains("warden::access"),
        "no access log line:\n{blog}"
    );
    assert!(
        blog.contains("drained: every connection finished"),
        "{blog}"
    );
}
