//! Test harness for in-process sidecars on loopback: a mesh CA, pods with their own loopback
//! address (127.0.<test>.<pod>), apps on 127.0.<test>.<100 + pod>, original destinations given
//! by `StaticOriginalDst`, policy and the registry as Istio YAML in each pod's config directory.
//! Also the plain TCP pieces the L4 and fault tests share: an echo app, a round trip, a payload.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use warden_identity::tls::{TlsProvider, TlsSettings};
use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};
use warden_proxy::orig_dst::StaticOriginalDst;
use warden_proxy::server::{DrainOutcome, StartError};
use warden_proxy::{Listeners, Shared, SidecarConfig};

pub const NS: &str = "test";
pub const APP_PORT: u16 = 7000;

pub struct Mesh {
    _dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
}

impl Mesh {
    pub fn new() -> Self {
        Self::with_options(CaOptions::default())
    }

    pub fn with_options(options: CaOptions) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::self_signed(dir.path().join("ca"), options).unwrap();
        Self { _dir: dir, ca }
    }

    /// A leaf for `id`: (chain PEM, key PEM).
    pub fn issue(&self, id: &SpiffeId) -> (String, String) {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = warden_identity::keys::csr_pem(&key, id).unwrap();
        let cert = self.ca.sign_csr(&csr, id, 3600).unwrap();
        (cert.chain_pem.concat(), key.serialize_pem())
    }

    /// A TLS provider holding a leaf for `ns/sa`, TLS 1.3 only.
    pub fn provider(&self, sa: &str) -> TlsProvider {
        let id = SpiffeId::istio(&TrustDomain::default(), NS, sa).unwrap();
        let (chain, key) = self.issue(&id);
        let trust = warden_identity::tls::TrustBundle::from_pem(
            TrustDomain::default(),
            self.ca.root_bundle_pem().as_bytes(),
            "root",
        )
        .unwrap();
        let creds = warden_identity::tls::WorkloadCredentials::from_pem(
            chain.as_bytes(),
            key.as_bytes(),
            trust,
            "test",
        )
        .unwrap();
        let tls = TlsProvider::new(TlsSettings::default()).unwrap();
        tls.install(&creds).unwrap();
        tls
    }

    /// Writes cert-chain.pem, key.pem, root-cert.pem for `ns/sa` into `dir`.
    pub fn write_certs(&self, dir: &Path, sa: &str) {
        let id = SpiffeId::istio(&TrustDomain::default(), NS, sa).unwrap();
        let (chain, key) = self.issue(&id);
        std::fs::create_dir_all(dir).unwrap();
        // Key first: the watcher reacts to the chain.
        std::fs::write(dir.join("key.pem"), key).unwrap();
        std::fs::write(dir.join("root-cert.pem"), self.ca.root_bundle_pem()).unwrap();
        std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
    }
}

pub fn ip(test: u8, pod: u8) -> IpAddr {
    format!("127.0.{test}.{pod}").parse().unwrap()
}

/// The app of a pod listens on 127.0.<test>.<100 + pod>.
pub fn ip_app(test: u8, pod: u8) -> IpAddr {
    ip(test, 100 + pod)
}

pub struct Pod {
    pub shared: Arc<Shared>,
    pub task: JoinHandle<Result<DrainOutcome, StartError>>,
    pub ip: IpAddr,
    pub dir: tempfile::TempDir,
}

impl Pod {
    pub fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15001)
    }
    pub fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15006)
    }
    pub fn app(&self) -> SocketAddr {
        SocketAddr::new(ip_app(self.ip_octets().0, self.ip_octets().1), APP_PORT)
    }
    fn ip_octets(&self) -> (u8, u8) {
        match self.ip {
            IpAddr::V4(v4) => (v4.octets()[2], v4.octets()[3]),
            IpAddr::V6(_) => unreachable!("IPv4 test pods"),
        }
    }
    pub fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }
    pub fn certs_dir(&self) -> PathBuf {
        self.dir.path().join("certs")
    }
    pub fn cert_chain(&self) -> PathBuf {
        self.certs_dir().join("cert-chain.pem")
    }
    pub fn metrics(&self) -> String {
        self.shared.metrics.render()
    }
    pub async fn wait_ready(&self) {
        for _ in 0..500 {
            if self.shared.readiness().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("pod {} never ready: {:?}", self.ip, self.shared.readiness());
    }
    /// Writes a config file and waits until the sidecar loaded a newer generation.
    pub async fn write_config(&self, name: &str, yaml: &str) {
        let before = self.shared.policy.load().as_ref().map(|p| p.generation);
        // Write then rename: the watcher never sees half a file.
        let tmp = self.dir.path().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.config_dir().join(name)).unwrap();
        for _ in 0..500 {
            let now = self.shared.policy.load().as_ref().map(|p| p.generation);
            if now != before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("config {name} never reloaded");
    }
}

pub struct PodSpec<'a> {
    pub test: u8,
    pub pod: u8,
    pub sa: &'a str,
    pub extra_yaml: String,
    pub config: Vec<(&'a str, String)>,
    /// Outbound listener -> this destination.
    pub outbound_to: Option<SocketAddr>,
    /// Inbound listener -> this destination (default: the pod's app port).
    pub inbound_to: Option<SocketAddr>,
    /// Whether certificates are written before start.
    pub certs: bool,
    /// `inbound.tcpPorts`, comma-separated (default: none).
    pub tcp_ports: &'a str,
    /// `connectTimeout`.
    pub connect_timeout: &'a str,
    /// `inbound.handshakeTimeout` (default: the sidecar's own).
    pub handshake_timeout: Option<&'a str>,
}

impl<'a> PodSpec<'a> {
    pub fn new(test: u8, pod: u8, sa: &'a str) -> Self {
        Self {
            test,
            pod,
            sa,
            extra_yaml: String::new(),
            config: Vec::new(),
            outbound_to: None,
            inbound_to: None,
            certs: true,
            tcp_ports: "",
            connect_timeout: "2s",
            handshake_timeout: None,
        }
    }
}

pub async fn start_pod(mesh: &Mesh, spec: PodSpec<'_>) -> Pod {
    let ip = ip(spec.test, spec.pod);
    let app_ip = ip_app(spec.test, spec.pod);
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::create_dir_all(&config).unwrap();
    if spec.certs {
        mesh.write_certs(&certs, spec.sa);
    }
    for (name, text) in &spec.config {
        std::fs::write(config.join(name), text).unwrap();
    }
    let mut inbound = format!("appHost: {app_ip}");
    if !spec.tcp_ports.is_empty() {
        inbound.push_str(&format!(", tcpPorts: [{}]", spec.tcp_ports));
    }
    if let Some(timeout) = spec.handshake_timeout {
        inbound.push_str(&format!(", handshakeTimeout: {timeout}"));
    }
    let yaml = format!(
        "identity: {{namespace: {NS}, serviceAccount: {sa}, podName: {sa}-pod, labels: {{app: {sa}}}}}\n\
         certificates: {{staticDir: {certs}}}\n\
         config: {{directory: {config}}}\n\
         reloadInterval: 50ms\n\
         bindAddress: {ip}\n\
         adminAddress: {ip}\n\
         connectTimeout: {connect_timeout}\n\
         drainDeadline: 5s\n\
         inbound: {{{inbound}}}\n{extra}",
        sa = spec.sa,
        connect_timeout = spec.connect_timeout,
        certs = certs.display(),
        config = config.display(),
        extra = spec.extra_yaml,
    );
    let cfg =
        SidecarConfig::from_parts(Some((Path::new("sidecar.yaml"), &yaml)), &|_| None).unwrap();
    let inbound_dst = spec.inbound_to.unwrap_or(SocketAddr::new(ip, APP_PORT));
    let mut orig = StaticOriginalDst::new().with(SocketAddr::new(ip, 15006), inbound_dst);
    if let Some(to) = spec.outbound_to {
        orig = orig.with(SocketAddr::new(ip, 15001), to);
    }
    let tls = TlsProvider::new(TlsSettings::default()).unwrap();
    let shared = Arc::new(Shared::new(cfg, tls, Arc::new(orig), None));
    let listeners = Listeners::bind(&shared).await.unwrap();
    let task = tokio::spawn(warden_proxy::run(shared.clone(), listeners));
    Pod {
        shared,
        task,
        ip,
        dir,
    }
}

/// A ServiceEntry: `vip:7000` (port `port_name`) is backed by `sa` at `endpoint_ip:15006`.
pub fn service_entry(
    name: &str,
    vip: IpAddr,
    endpoint_ip: IpAddr,
    sa: &str,
    port_name: &str,
) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  hosts: [{name}.{NS}.svc.cluster.local]\n  addresses: [{vip}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: {APP_PORT}, name: {port_name}}}]\n\
         \x20 endpoints: [{{address: {endpoint_ip}, serviceAccount: {sa}, ports: {{{port_name}: 15006}}}}]\n"
    )
}

/// The server pod's own view of its port (so its inbound knows the app protocol).
pub fn own_port(name: &str, pod_ip: IpAddr, port_name: &str, sa: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}-self, namespace: {NS}}}\n\
         spec:\n  hosts: [{name}.{NS}.svc.cluster.local]\n  addresses: [{pod_ip}]\n  location: MESH_INTERNAL\n  resolution: NONE\n  subjectAltNames: [spiffe://cluster.local/ns/{NS}/sa/{sa}]\n  ports: [{{number: {APP_PORT}, name: {port_name}}}]\n"
    )
}

pub fn peer_authn(mode: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\nspec: {{mtls: {{mode: {mode}}}}}\n"
    )
}

pub fn metric_line<'a>(text: &'a str, name: &str, must_contain: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && must_contain.iter().all(|m| l.contains(m)))
}

pub fn metric_value(line: &str) -> u64 {
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Client pod A (sa `a`, outbound to the VIP of service `echo`, port name `tcp`) and server
/// pod B (sa `b`) with `b_config` in B's config directory.
pub async fn two_pods(mesh: &Mesh, test: u8, b_config: &[(&str, String)]) -> (Pod, Pod) {
    let vip = ip(test, 200);
    let b_ip = ip(test, 2);
    let mut a = PodSpec::new(test, 1, "a");
    a.config = vec![(
        "services.yaml",
        service_entry("echo", vip, b_ip, "b", "tcp"),
    )];
    a.outbound_to = Some(SocketAddr::new(vip, APP_PORT));
    let a = start_pod(mesh, a).await;
    let mut b = PodSpec::new(test, 2, "b");
    b.config = b_config.to_vec();
    let b = start_pod(mesh, b).await;
    a.wait_ready().await;
    b.wait_ready().await;
    (a, b)
}

/// Client pod A (sa `a`, outbound to the service VIP) and server pod B (sa `b_sa`), with the
/// service `web` on port name `port_name` backed by identity `backed_by`.
pub async fn client_and_server(
    mesh: &Mesh,
    test: u8,
    port_name: &str,
    backed_by: &str,
    b_sa: &str,
    b_config: Vec<(&str, String)>,
    b_extra_yaml: &str,
) -> (Pod, Pod) {
    let vip = ip(test, 200);
    let b_ip = ip(test, 2);
    let mut a = PodSpec::new(test, 1, "a");
    a.config = vec![(
        "services.yaml",
        service_entry("web", vip, b_ip, backed_by, port_name),
    )];
    a.outbound_to = Some(SocketAddr::new(vip, APP_PORT));
    let a = start_pod(mesh, a).await;
    let mut b = PodSpec::new(test, 2, b_sa);
    b.config = b_config;
    b.config
        .push(("self.yaml", own_port("web", b_ip, port_name, b_sa)));
    b.extra_yaml = b_extra_yaml.to_owned();
    let b = start_pod(mesh, b).await;
    a.wait_ready().await;
    b.wait_ready().await;
    for pod in [&a, &b] {
        let problems = pod.shared.policy.load().as_ref().unwrap().problems.clone();
        assert!(problems.is_empty(), "{problems:?}");
    }
    (a, b)
}

/// Whether `tool` runs; without it a test prints `skipped: ...` and returns, unless
/// `WARDEN_REQUIRE_PRIVILEGED=1`, which makes the missing tool a failure.
pub fn have(tool: &str) -> bool {
    let arg = if tool == "openssl" {
        "version"
    } else {
        "--version"
    };
    let ok = std::process::Command::new(tool)
        .arg(arg)
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

/// An echo app (optionally sending a banner first, as a server-first protocol does). Counts
/// accepted connections; replies to EOF with EOF (half-close).
pub async fn echo_app(addr: SocketAddr, banner: Option<&'static [u8]>) -> Arc<AtomicUsize> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                if let Some(b) = banner {
                    s.write_all(b).await.unwrap();
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    accepted
}

/// Sends `data`, half-closes, reads everything back.
pub async fn round_trip(addr: SocketAddr, data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(addr).await?;
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(data).await?;
        w.shutdown().await
    };
    let mut out = Vec::new();
    let read = r.read_to_end(&mut out);
    let (wr, rr) =
        tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(write, read) })
            .await
            .expect("round trip timed out");
    // A refused connection may fail the write (reset) or just end: what was read decides.
    let _ = wr;
    rr?;
    Ok(out)
}

/// `n` bytes of a pattern that does not repeat within 251 bytes.
pub fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// Polls `check` every 20 ms until it holds; panics naming `what` when it does not within
/// `within`.
pub async fn eventually(what: &str, within: Duration, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + within;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened within {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
