//! `warden sidecar` getting its certificate from `warden control` (both real processes on
//! loopback) with Istio's environment (`CA_ADDR`, `POD_NAMESPACE`, `SERVICE_ACCOUNT`) and a token
//! minted by `warden control token`: not ready until the certificate arrives, then ready with the
//! certificate on `/certs`; still serving after the control plane is gone.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `warden control` on 127.0.0.1:0; returns the process and the address it logged.
fn control(state: &Path) -> (Proc, SocketAddr) {
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "control", "--state-dir"])
        .arg(state)
        .args(["--listen", "127.0.0.1:0"])
        .env("WARDEN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warden control");
    let stderr = child.stderr.take().unwrap();
    let proc = Proc(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("warden control logs where it listens");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if let Some(addr) = v["fields"]["addr"].as_str() {
            return (proc, addr.parse().unwrap());
        }
    }
}

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.split_once("\r\n\r\n")?.1.to_owned()))
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sidecar_gets_its_certificate_from_warden_control() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token = Command::new(BIN)
        .args(["control", "token", "--state-dir"])
        .arg(&state)
        .args(["--namespace", "demo", "--service-account", "web"])
        .output()
        .unwrap();
    assert!(token.status.success(), "{token:?}");
    let token_file = dir.path().join("istio-token");
    std::fs::write(&token_file, token.stdout.trim_ascii()).unwrap();
    let (cp, ca_addr) = control(&state);
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();

    let cfg = dir.path().join("sidecar.yaml");
    std::fs::write(
        &cfg,
        format!(
            "identity: {{podName: web-1, labels: {{app: web}}}}\n\
             certificates: {{tokenFile: {token}, rootCert: {root}, ttl: 1h}}\n\
             config: {{directory: {config}}}\n\
             bindAddress: 127.0.31.1\n\
             adminAddress: 127.0.31.1\n",
            token = token_file.display(),
            root = state.join("root-cert.pem").display(),
            config = config_dir.display(),
        ),
    )
    .unwrap();
    let sidecar = Proc(
        Command::new(BIN)
            .args(["sidecar", "-c"])
            .arg(&cfg)
            .args(["--static-original-dst", "127.0.31.1:15006=127.0.31.1:8080"])
            .env("CA_ADDR", ca_addr.to_string())
            .env("POD_NAMESPACE", "demo")
            .env("SERVICE_ACCOUNT", "web")
            .env("WARDEN_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start warden sidecar"),
    );
    let health: SocketAddr = "127.0.31.1:15021".parse().unwrap();
    let admin: SocketAddr = "127.0.31.1:15000".parse().unwrap();
    eventually("the sidecar ready", || {
        get(health, "/healthz/ready").filter(|(s, _)| *s == 200)
    });
    let (_, certs) = get(admin, "/certs").unwrap();
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(certs["identity"], "spiffe://cluster.local/ns/demo/sa/web");
    assert_eq!(certs["source"], format!("CA at {ca_addr}"));
    assert_eq!(certs["agent"]["certificates_installed"], 1);
    let left = certs["seconds_until_expiry"].as_i64().unwrap();
    assert!((3500..=3600).contains(&left), "{left}");

    // The control plane goes away: the certificate stays, and so does readiness.
    drop(cp);
    std::thread::sleep(Duration::from_millis(500));
    let (status, body) = get(health, "/healthz/ready").unwrap();
    assert_eq!(status, 200, "{body}");
    drop(sidecar);
}
