//! The systems under test: nothing (direct), and client + server sidecar pairs of Warden, Envoy
//! and HAProxy, all on loopback with the same addresses, certificates and rule.
//!
//! ```text
//! load -> 127.0.77.1:15001 (client sidecar) -mTLS-> 127.0.77.2:15006 (server sidecar)
//!      -> 127.0.77.3:<port> (upstream), from 127.0.0.6
//! ```

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

pub use crate::envoy::Proto;
use crate::envoy::{self, TlsFiles};
use crate::procs::{self, Proc, Sample};

/// The client pod's address.
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 1);
/// The server pod's address.
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 2);
/// The upstream app's address.
pub const APP_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 3);
/// The service VIP the client app dials.
pub const VIP: Ipv4Addr = Ipv4Addr::new(127, 0, 77, 10);
/// Source address of the server sidecar's connections to the app (Istio's).
pub const INBOUND_SOURCE: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 6);
/// Namespace of both workloads.
pub const NAMESPACE: &str = "bench";

/// The app port (and service port) of a protocol.
pub fn app_port(p: Proto) -> u16 {
    match p {
        Proto::Http1 => 8080,
        Proto::Http2 => 8081,
        Proto::Tcp => 9000,
    }
}

/// Istio's port name for a protocol.
pub fn port_name(p: Proto) -> &'static str {
    match p {
        Proto::Http1 => "http",
        Proto::Http2 => "http2",
        Proto::Tcp => "tcp",
    }
}

/// Short label of a protocol.
pub fn proto_label(p: Proto) -> &'static str {
    match p {
        Proto::Http1 => "http1",
        Proto::Http2 => "http2",
        Proto::Tcp => "tcp",
    }
}

/// What carries the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// No proxy: the load generator talks to the upstream.
    Direct,
    /// Two `warden sidecar` processes.
    Warden,
    /// Two Envoy processes configured as Istio's sidecars.
    Envoy,
    /// Two HAProxy processes with mTLS.
    Haproxy,
}

impl System {
    /// All, in run order.
    pub const ALL: [System; 4] = [
        System::Direct,
        System::Warden,
        System::Envoy,
        System::Haproxy,
    ];

    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            System::Direct => "direct",
            System::Warden => "warden",
            System::Envoy => "envoy",
            System::Haproxy => "haproxy",
        }
    }
}

/// Binaries and directories every pair needs.
#[derive(Debug)]
pub struct Env {
    /// The `warden` binary (release).
    pub warden: PathBuf,
    /// Envoy, or why not.
    pub envoy: Result<PathBuf, String>,
    /// HAProxy, or why not.
    pub haproxy: Result<PathBuf, String>,
    /// Worker threads of every proxy.
    pub threads: usize,
    /// Scratch directory of this run.
    pub dir: PathBuf,
    /// Certificates: `<pki>/{client,server}/{cert-chain,key,root-cert}.pem`.
    pub pki: PathBuf,
}

/// A running pair (or nothing, for direct).
#[derive(Debug)]
pub struct Pair {
    /// The client and server sidecar processes (empty for direct).
    pub procs: Vec<Proc>,
    /// Where the load generator connects.
    pub entry: SocketAddr,
    /// Start to ready of each process.
    pub ready: Vec<Duration>,
    /// The server sidecar's inbound (mTLS) address, for handshake counts.
    pub inbound: Option<SocketAddr>,
}

impl Pair {
    /// Samples of every process, in order.
    pub fn samples(&self) -> Vec<Sample> {
        self.procs.iter().map(Proc::sample).collect()
    }

    /// Fails if a process died.
    pub fn check_alive(&mut self) -> Result<(), String> {
        self.procs.iter_mut().try_for_each(Proc::alive)
    }
}

/// The SPIFFE ID of a service account in the bench namespace.
pub fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/{NAMESPACE}/sa/{sa}")
}

/// Makes the mesh CA and the client and server workload certificates with `warden certs`.
pub fn make_pki(warden: &Path, pki: &Path, sas: &[&str]) -> Result<(), String> {
    let run = |args: &[&str]| -> Result<(), String> {
        let out = Command::new(warden)
            .args(args)
            .output()
            .map_err(|e| format!("{}: {e}", warden.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "warden {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let ca = pki.join("ca");
    let ca_s = ca.to_string_lossy().into_owned();
    run(&["certs", "root-ca", "--out", &ca_s, "--key", "ec-p256"])?;
    for sa in sas {
        let out = pki.join(sa).to_string_lossy().into_owned();
        run(&[
            "certs",
            "workload",
            "--ca",
            &ca_s,
            "--namespace",
            NAMESPACE,
            "--service-account",
            sa,
            "--ttl",
            "48h",
            "--out",
            &out,
        ])?;
        // HAProxy wants the chain and the key in one file.
        let dir = pki.join(sa);
        let mut pem = std::fs::read(dir.join("cert-chain.pem")).map_err(|e| e.to_string())?;
        pem.extend(std::fs::read(dir.join("key.pem")).map_err(|e| e.to_string())?);
        std::fs::write(dir.join("haproxy.pem"), pem).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Starts `system` for a service of protocol `proto` and waits until both sides are ready.
pub fn start(system: System, proto: Proto, env: &Env) -> Result<Pair, String> {
    let app = SocketAddr::new(IpAddr::V4(APP_IP), app_port(proto));
    let entry = SocketAddr::new(IpAddr::V4(CLIENT_IP), 15001);
    let inbound = SocketAddr::new(IpAddr::V4(SERVER_IP), 15006);
    let dir = env
        .dir
        .join(format!("{}-{}", system.name(), proto_label(proto)));
    match system {
        System::Direct => Ok(Pair {
            procs: vec![],
            entry: app,
            ready: vec![],
            inbound: None,
        }),
        System::Warden => start_warden(proto, env, &dir, entry, inbound),
        System::Envoy => start_envoy(proto, env, &dir, entry, inbound, app),
        System::Haproxy => start_haproxy(proto, env, &dir, entry, inbound, app),
    }
}

fn warden_yaml(sa: &str, ip: Ipv4Addr, dir: &Path, certs: &Path) -> String {
    format!(
        "identity: {{namespace: {NAMESPACE}, serviceAccount: {sa}}}\n\
         certificates: {{staticDir: \"{}\"}}\n\
         config: {{directory: \"{}\"}}\n\
         bindAddress: {ip}\nadminAddress: {ip}\n\
         inbound: {{appHost: {APP_IP}, sourceAddress: {INBOUND_SOURCE}}}\n\
         reloadInterval: 60s\n",
        certs.display(),
        dir.join("config").display()
    )
}

/// A ServiceEntry for the upstream service behind the server sidecar.
pub fn service_entry(proto: Proto, vip: Ipv4Addr, endpoint: Ipv4Addr, server_sa: &str) -> String {
    let (port, name) = (app_port(proto), port_name(proto));
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: upstream, namespace: {NAMESPACE}}}\n\
         spec:\n  hosts: [upstream.{NAMESPACE}.svc.cluster.local]\n  addresses: [{vip}]\n\
         \x20 ports: [{{number: {port}, name: {name}}}]\n  location: MESH_INTERNAL\n\
         \x20 endpoints: [{{address: {endpoint}, serviceAccount: {server_sa}, ports: {{{name}: 15006}}}}]\n"
    )
}

/// STRICT mTLS and one ALLOW rule for the client principal.
pub fn server_policy(allowed_sa: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NAMESPACE}}}\n\
         spec: {{mtls: {{mode: STRICT}}}}\n---\n\
         apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-client, namespace: {NAMESPACE}}}\n\
         spec:\n  action: ALLOW\n  rules:\n  - from:\n    - source:\n        principals: [\"cluster.local/ns/{NAMESPACE}/sa/{allowed_sa}\"]\n"
    )
}

fn start_warden(
    proto: Proto,
    env: &Env,
    dir: &Path,
    entry: SocketAddr,
    inbound: SocketAddr,
) -> Result<Pair, String> {
    let port = app_port(proto);
    let mut procs = Vec::new();
    let mut ready = Vec::new();
    for (sa, ip, config, orig) in [
        (
            "server",
            SERVER_IP,
            ("policy.yaml", server_policy("client")),
            format!("{inbound}={APP_IP}:{port}"),
        ),
        (
            "client",
            CLIENT_IP,
            ("se.yaml", service_entry(proto, VIP, SERVER_IP, "server")),
            format!("{entry}={VIP}:{port}"),
        ),
    ] {
        let d = dir.join(sa);
        write(&d.join("config").join(config.0), &config.1)?;
        let yaml = d.join("sidecar.yaml");
        write(&yaml, &warden_yaml(sa, ip, &d, &env.pki.join(sa)))?;
        let mut cmd = Command::new(&env.warden);
        cmd.args(["--log", "warn", "sidecar", "-c"])
            .arg(&yaml)
            .args(["--static-original-dst", &orig])
            .args(["--concurrency", &env.threads.to_string()])
            .env_remove("RUST_LOG");
        let mut p = Proc::spawn(&format!("warden-{sa}"), cmd, &d.join("log.txt"))?;
        let health = SocketAddr::new(IpAddr::V4(ip), 15021);
        ready.push(procs::wait_http_ok(
            &mut p,
            health,
            "/healthz/ready",
            READY_TIMEOUT,
        )?);
        procs.push(p);
    }
    procs.reverse();
    ready.reverse();
    Ok(Pair {
        procs,
        entry,
        ready,
        inbound: Some(inbound),
    })
}

fn start_envoy(
    proto: Proto,
    env: &Env,
    dir: &Path,
    entry: SocketAddr,
    inbound: SocketAddr,
    app: SocketAddr,
) -> Result<Pair, String> {
    let bin = env.envoy.as_ref().map_err(Clone::clone)?;
    let port = app_port(proto);
    let server = envoy::ServerSide {
        listen: inbound,
        app,
        source: Some(IpAddr::V4(INBOUND_SOURCE)),
        proto,
        tls: TlsFiles::in_dir(&env.pki.join("server")),
        trust_domain: "cluster.local".into(),
        allow_principal: spiffe("client"),
        admin: SocketAddr::new(IpAddr::V4(SERVER_IP), 15000),
    };
    let client = envoy::ClientSide {
        listen: entry,
        peer: inbound,
        peer_identity: spiffe("server"),
        sni: format!("outbound_.{port}_._.upstream.{NAMESPACE}.svc.cluster.local"),
        tls: TlsFiles::in_dir(&env.pki.join("client")),
        proto,
        admin: SocketAddr::new(IpAddr::V4(CLIENT_IP), 15000),
    };
    let mut procs = Vec::new();
    let mut ready = Vec::new();
    for (name, yaml, admin) in [
        ("server", envoy::server_config(&server), server.admin),
        ("client", envoy::client_config(&client), client.admin),
    ] {
        let cfg = dir.join(format!("{name}.yaml"));
        write(&cfg, &yaml)?;
        let cmd = envoy::command(bin, &cfg, env.threads);
        let mut p = Proc::spawn(
            &format!("envoy-{name}"),
            cmd,
            &dir.join(format!("{name}.log")),
        )?;
        ready.push(procs::wait_http_ok(&mut p, admin, "/ready", READY_TIMEOUT)?);
        procs.push(p);
    }
    procs.reverse();
    ready.reverse();
    Ok(Pair {
        procs,
        entry,
        ready,
        inbound: Some(inbound),
    })
}

/// Upper-case hex of `s`: HAProxy matches it inside the client certificate's DER, where the
/// URI SAN is stored as is (HAProxy 2.6 has no URI SAN fetch).
fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02X}")).collect()
}

fn haproxy_global(threads: usize, max_conns: usize) -> String {
    format!(
        "global\n  nbthread {threads}\n  maxconn {max_conns}\n  tune.ssl.default-dh-param 2048\n\
         defaults\n  timeout connect 10s\n  timeout client 120s\n  timeout server 120s\n  timeout tunnel 1h\n"
    )
}

/// Connections HAProxy may hold (each takes two descriptors of the 20,000 allowed here).
pub const HAPROXY_MAXCONN: usize = 9_900;

fn start_haproxy(
    proto: Proto,
    env: &Env,
    dir: &Path,
    entry: SocketAddr,
    inbound: SocketAddr,
    app: SocketAddr,
) -> Result<Pair, String> {
    let bin = env.haproxy.as_ref().map_err(Clone::clone)?;
    let root = env.pki.join("server").join("root-cert.pem");
    let (mode, rule, client_alpn, server_alpn, h2) = match proto {
        Proto::Tcp => (
            "tcp",
            "tcp-request session reject",
            "istio-peer-exchange,istio",
            "istio-peer-exchange,istio",
            false,
        ),
        Proto::Http1 => (
            "http",
            "http-request deny deny_status 403",
            "istio-http/1.1,istio,http/1.1",
            "h2,istio-http/1.1,http/1.1",
            false,
        ),
        Proto::Http2 => (
            "http",
            "http-request deny deny_status 403",
            "h2",
            "h2,istio-http/1.1,http/1.1",
            true,
        ),
    };
    let server_cfg = format!(
        "{}frontend inbound\n  mode {mode}\n\
         \x20 bind {inbound} ssl crt {} ca-file {} verify required alpn {server_alpn}\n\
         \x20 {rule} unless {{ ssl_c_der,hex -m sub {} }}\n  default_backend app\n\
         backend app\n  mode {mode}\n{}  server app {app} source {INBOUND_SOURCE}{}\n",
        haproxy_global(env.threads, HAPROXY_MAXCONN),
        env.pki.join("server").join("haproxy.pem").display(),
        root.display(),
        hex(&spiffe("client")),
        if mode == "http" {
            "  http-reuse always\n"
        } else {
            ""
        },
        if h2 { " proto h2" } else { "" },
    );
    // No `sni`: HAProxy would then check the SNI against the server certificate's DNS names,
    // and mesh certificates carry only a URI SAN (HAProxy 2.6 cannot check URI SANs, so its
    // client side verifies the chain only).
    let client_cfg = format!(
        "{}frontend outbound\n  mode {mode}\n  bind {entry}{}\n  default_backend mesh\n\
         backend mesh\n  mode {mode}\n{}\
         \x20 server peer {inbound} ssl crt {} ca-file {} verify required alpn {client_alpn}\n",
        haproxy_global(env.threads, HAPROXY_MAXCONN),
        if h2 { " proto h2" } else { "" },
        if mode == "http" {
            "  http-reuse always\n"
        } else {
            ""
        },
        env.pki.join("client").join("haproxy.pem").display(),
        root.display(),
    );
    let mut procs = Vec::new();
    let mut ready = Vec::new();
    for (name, cfg, listen) in [
        ("server", server_cfg, inbound),
        ("client", client_cfg, entry),
    ] {
        let path = dir.join(format!("{name}.cfg"));
        write(&path, &cfg)?;
        let mut cmd = Command::new(bin);
        cmd.arg("-db").arg("-f").arg(&path);
        let mut p = Proc::spawn(
            &format!("haproxy-{name}"),
            cmd,
            &dir.join(format!("{name}.log")),
        )?;
        ready.push(procs::wait_listening(&mut p, listen, READY_TIMEOUT)?);
        procs.push(p);
    }
    procs.reverse();
    ready.reverse();
    Ok(Pair {
        procs,
        entry,
        ready,
        inbound: Some(inbound),
    })
}
