//! `warden gateway` as a real process: mesh certificates from `warden certs`, an app behind a
//! real `warden sidecar` process, an edge certificate made by openssl in a `credentialName`
//! directory (Istio's generic `cert`/`key` layout), real curl with `--resolve` and SNI, the
//! access log, metrics, readiness, config errors, and SIGTERM.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Proc {
    fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(BIN)
            .args(args)
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

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
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

fn wait_ready(ip: &str, what: &Proc) {
    let start = Instant::now();
    loop {
        if TcpStream::connect(format!("{ip}:15021")).is_ok()
            && get(&format!("{ip}:15021"), "/healthz/ready").0 == 200
        {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{ip} never ready: {}",
            what.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP/1.1 app answering `hello from web <path>`.
fn app(addr: &str) {
    let l = TcpListener::bind(addr).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&buf);
                let path = line.split(' ').nth(1).unwrap_or("?").to_owned();
                let body = format!("hello from web {path}");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
}

/// Whether `tool` can run; without it a test prints `skipped: <reason>` and passes, unless
/// `WARDEN_REQUIRE_PRIVILEGED=1` makes it fail.
fn have(tool: &str) -> bool {
    let ok = Command::new(tool)
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success())
        || Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "{tool} is required (WARDEN_REQUIRE_PRIVILEGED=1)"
        );
        println!("skipped: {tool} is not installed");
    }
    ok
}

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

#[test]
fn ingress_gateway_process_to_a_sidecar_process() {
    if !have("curl") || !have("openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = d.join("ca");
    run(
        BIN,
        &[
            "certs",
            "root-ca",
            "--out",
            ca.to_str().unwrap(),
            "--key",
            "ec-p256",
        ],
    );
    for (sa, out) in [("ingress", "gw-certs"), ("web", "web-certs")] {
        run(
            BIN,
            &[
                "certs",
                "workload",
                "--ca",
                ca.to_str().unwrap(),
                "--namespace",
                "demo",
                "--service-account",
                sa,
                "--out",
                d.join(out).to_str().unwrap(),
            ],
        );
    }
    // The edge certificate, in a credentialName directory with Istio's generic keys.
    let cred = d.join("credentials/shop");
    std::fs::create_dir_all(&cred).unwrap();
    run(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=shop.example.com",
            "-addext",
            "subjectAltName=DNS:shop.example.com",
            "-keyout",
            cred.join("key").to_str().unwrap(),
            "-out",
            cred.join("cert").to_str().unwrap(),
        ],
    );

    // The app and its sidecar: only the ingress gateway's identity may call it.
    app("127.0.31.102:7000");
    write(
        &d.join("web-config/policy.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: from-ingress, namespace: demo}\n\
         spec:\n  rules:\n  - from:\n    - source: {principals: [cluster.local/ns/demo/sa/ingress]}\n",
    );
    write(
        &d.join("web.yaml"),
        &format!(
            "identity: {{namespace: demo, serviceAccount: web, labels: {{app: web}}}}\n\
             certificates: {{staticDir: {}}}\nconfig: {{directory: {}}}\nreloadInterval: 100ms\n\
             bindAddress: 127.0.31.2\nadminAddress: 127.0.31.2\ninbound: {{appHost: 127.0.31.102}}\n",
            d.join("web-certs").display(),
            d.join("web-config").display()
        ),
    );
    let sidecar = Proc::spawn(&[
        "sidecar",
        "-c",
        d.join("web.yaml").to_str().unwrap(),
        "--static-original-dst",
        "127.0.31.2:15006=127.0.31.102:7000",
    ]);

    write(
        &d.join("gw-config/gateway.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {name: shop, namespace: demo}\n\
         spec:\n  selector: {istio: ingressgateway}\n  servers:\n\
         \x20 - port: {number: 8443, name: https, protocol: HTTPS}\n    hosts: [shop.example.com]\n    tls: {mode: SIMPLE, credentialName: shop}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: shop, namespace: demo}\n\
         spec:\n  hosts: [shop.example.com]\n  gateways: [shop]\n  http: [{route: [{destination: {host: web}}]}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: web, namespace: demo}\n\
         spec:\n  hosts: [web.demo.svc.cluster.local]\n  ports: [{number: 7000, name: http}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
         \x20 endpoints: [{address: 127.0.31.2, serviceAccount: web, ports: {http: 15006}}]\n",
    );
    write(
        &d.join("gw.yaml"),
        &format!(
            "identity: {{namespace: demo, serviceAccount: ingress}}\n\
             certificates: {{staticDir: {}}}\nconfig: {{directory: {}}}\ncredentialsDir: {}\n\
             reloadInterval: 100ms\nbindAddress: 127.0.31.1\ndrainDeadline: 3s\n",
            d.join("gw-certs").display(),
            d.join("gw-config").display(),
            d.join("credentials").display()
        ),
    );
    let gw = Proc::spawn(&[
        "--log",
        "info",
        "--log-format",
        "json",
        "gateway",
        "--mode",
        "ingress",
        "-c",
        d.join("gw.yaml").to_str().unwrap(),
    ]);
    wait_ready("127.0.31.2", &sidecar);
    wait_ready("127.0.31.1", &gw);

    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--cacert",
            cred.join("cert").to_str().unwrap(),
            "--resolve",
            "shop.example.com:8443:127.0.31.1",
            "-w",
            "\n%{http_code}",
            "https://shop.example.com:8443/catalog",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout,
        "hello from web /catalog\n200",
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        gw.log()
    );

    let (code, stats) = get("127.0.31.1:15020", "/stats/prometheus");
    assert_eq!(code, 200);
    assert!(
        stats.lines().any(|l| l.starts_with("istio_requests_total{")
            && l.contains("destination_principal=\"spiffe://cluster.local/ns/demo/sa/web\"")
            && l.contains("response_code=\"200\"")),
        "{stats}"
    );
    let start = Instant::now();
    while !gw.log().contains("warden::access") {
        assert!(start.elapsed() < Duration::from_secs(5), "{}", gw.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = gw.log();
    let line = log
        .lines()
        .find(|l| l.contains("warden::access") && l.contains("request"))
        .unwrap_or_else(|| panic!("{log}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(v["fields"]["code"], 200, "{line}");
    assert_eq!(v["fields"]["path"], "/catalog", "{line}");
    assert_eq!(
        v["fields"]["upstream_principal"], "spiffe://cluster.local/ns/demo/sa/web",
        "{line}"
    );

    // SIGTERM: readiness goes, the process exits 0.
    let mut gw = gw;
    run("kill", &["-TERM", &gw.child.id().to_string()]);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = gw.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no exit after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}: {}", gw.log());
}

#[test]
fn gateway_config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.yaml");
    std::fs::write(
        &cfg,
        "identity: {namespace: demo}\nports: {stats: 15020, health: 15020}\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["gateway", "--mode", "egress", "--check-config", "-c"])
        .arg(&cfg)
        .env_remove("CA_ADDR")
        .env("WARDEN_CERT_DIR", "/nonexistent")
        .env("WARDEN_CONFIG_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "gw.yaml: ports.health: invalid value \"15020\": the same port as ports.stats"
        ),
        "{err}"
    );
}

/// The gateway's own certificate from the mesh CA (`warden control`) through the embedded
/// agent: no static certificate directory, `CA_ADDR` and a service-account token instead.
/// Readiness turns 200 only once the agent holds a certificate.
#[test]
fn gateway_identity_from_the_ca_agent() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let token = Command::new(BIN)
        .args(["control", "token", "--state-dir"])
        .arg(&state)
        .args(["--namespace", "demo", "--service-account", "ingress"])
        .output()
        .unwrap();
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    write(
        &d.join("token"),
        String::from_utf8_lossy(&token.stdout).trim(),
    );

    let mut control = Command::new(BIN)
        .args(["--log-format", "json", "control", "--state-dir"])
        .arg(&state)
        .args(["--listen", "127.0.0.1:0"])
        .env("WARDEN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel();
    let stderr = control.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let control = Proc {
        child: control,
        log: Arc::new(Mutex::new(String::new())),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let addr = loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("warden control logs where it listens");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        if let Some(a) = v["fields"]["addr"].as_str() {
            break a.to_owned();
        }
    };

    std::fs::create_dir_all(d.join("config")).unwrap();
    write(
        &d.join("gw.yaml"),
        &format!(
            "identity: {{namespace: demo, serviceAccount: ingress}}\nconfig: {{directory: {}}}\n\
             reloadInterval: 100ms\nbindAddress: 127.0.32.1\n",
            d.join("config").display()
        ),
    );
    let mut cmd = Command::new(BIN);
    cmd.args(["gateway", "--mode", "ingress", "-c"])
        .arg(d.join("gw.yaml"))
        .env("CA_ADDR", &addr)
        .env("CA_SERVER_NAME", "127.0.0.1")
        .env("WARDEN_ROOT_CERT", state.join("root-cert.pem"))
        .env("WARDEN_TOKEN_FILE", d.join("token"))
        .env("WARDEN_CRL_URL", "none")
        .env_remove("WARDEN_CERT_DIR")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
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
    let gw = Proc { child, log };
    wait_ready("127.0.32.1", &gw);
    // The certificate came from the CA (the install is logged with its identity).
    let log = gw.log();
    assert!(
        log.lines()
            .any(|l| l.contains("installed workload TLS credentials")
                && l.contains("spiffe://cluster.local/ns/demo/sa/ingress")),
        "{log}"
    );
    drop(control);
}
