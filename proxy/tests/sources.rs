//! The sidecar's certificate and config sources end to end, with a real control plane on
//! loopback (`warden_control`: the mesh CA over gRPC + TLS, and the config push API fed by a
//! watched directory) and in-process sidecars on their own loopback addresses
//! (127.0.<test>.<pod>, original destinations given by `StaticOriginalDst`).
//!
//! - certificates from the CA (`certificates.caAddress`): ready, mTLS between two sidecars,
//!   rotation with a short TTL without a failed connection, CA stopped -> keeps serving, expired
//!   with the CA down -> `/healthz/ready` 503 with the reason and inbound mTLS refused;
//! - config from the control plane: a policy file flips new connections from allowed to denied
//!   and back while an established connection stays open; an invalid file changes nothing;
//! - static directory: replaced files -> the next handshake presents the new certificate.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use warden_control::push::{PushServer, serve};
use warden_control::store::FileStore;
use warden_control::{ControlConfig, ControlPlane, RunningControlPlane};
use warden_identity::tls::{Alpn, TlsProvider, TlsSettings, TrustBundle, WorkloadCredentials};
use warden_identity::{CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};
use warden_policy::jwt::SigningKey;
use warden_policy::jwt::k8s::{SaTokenSpec, mint};
use warden_proxy::orig_dst::StaticOriginalDst;
use warden_proxy::server::{DrainOutcome, StartError};
use warden_proxy::{Listeners, Shared, SidecarConfig};

mod support;

const NS: &str = "test";
const APP_PORT: u16 = 7000;
/// Bound for "eventually"; what is waited for takes milliseconds.
const WAIT: Duration = Duration::from_secs(20);

fn id(sa: &str) -> SpiffeId {
    SpiffeId::istio(&TrustDomain::default(), NS, sa).unwrap()
}

fn ip(test: u8, pod: u8) -> IpAddr {
    format!("127.0.{test}.{pod}").parse().unwrap()
}

/// The app of a pod listens on 127.0.<test>.<100 + pod>.
fn ip_app(test: u8, pod: u8) -> IpAddr {
    ip(test, 100 + pod)
}

/// A control plane (mesh CA) on 127.0.0.1, and optionally the push API on a config directory.
struct Control {
    dir: tempfile::TempDir,
    config: ControlConfig,
    cp: Option<RunningControlPlane>,
    ca: Arc<CertificateAuthority>,
    push: Option<Push>,
}

struct Push {
    addr: SocketAddr,
    store: Arc<FileStore>,
    stop: Option<oneshot::Sender<()>>,
    _watch: JoinHandle<()>,
}

impl Control {
    async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::new(dir.path().join("state"));
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.reload_interval = Duration::from_millis(100);
        config.drain_timeout = Duration::from_secs(1);
        let cfg = config.clone();
        let cp = tokio::task::spawn_blocking(move || ControlPlane::open(cfg))
            .await
            .unwrap()
            .expect("control plane opens");
        let cp = cp.start().await.expect("control plane starts");
        let ca = cp.ca().clone();
        std::fs::create_dir_all(dir.path().join("mesh-config")).unwrap();
        Self {
            dir,
            config,
            cp: Some(cp),
            ca,
            push: None,
        }
    }

    fn ca_addr(&self) -> SocketAddr {
        self.cp.as_ref().expect("CA running").local_addr()
    }

    fn root_file(&self) -> PathBuf {
        self.config.paths().root_cert
    }

    fn mesh_config_dir(&self) -> PathBuf {
        self.dir.path().join("mesh-config")
    }

    /// A service-account token for `sa`, signed by the control plane's token key.
    fn token_file(&self, sa: &str) -> PathBuf {
        let pem = std::fs::read_to_string(self.config.paths().token_key).unwrap();
        let key = SigningKey::from_pem(&pem, None).unwrap();
        let token = mint(&key, &SaTokenSpec::new(NS, sa), SystemTime::now()).unwrap();
        let path = self.dir.path().join(format!("{sa}-token"));
        std::fs::write(&path, token).unwrap();
        path
    }

    /// Workload credentials for `identity`, straight from the CA.
    fn credentials(&self, identity: &SpiffeId, ttl_secs: i64) -> (WorkloadCredentials, String) {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = warden_identity::keys::csr_pem(&key, identity).unwrap();
        let cert = self.ca.sign_csr(&csr, identity, ttl_secs).unwrap();
        let trust = TrustBundle::from_pem(
            TrustDomain::default(),
            self.ca.root_bundle_pem().as_bytes(),
            "root",
        )
        .unwrap();
        let chain = cert.chain_pem.concat();
        let creds = WorkloadCredentials::from_pem(
            chain.as_bytes(),
            key.serialize_pem().as_bytes(),
            trust,
            "test",
        )
        .unwrap();
        (creds, key.serialize_pem())
    }

    fn provider(&self, identity: &SpiffeId) -> TlsProvider {
        let p = TlsProvider::new(TlsSettings::default()).unwrap();
        p.install(&self.credentials(identity, 3600).0).unwrap();
        p
    }

    /// Starts the push API on the config directory (watched every 50 ms), serving as istiod.
    async fn start_push(&mut self) {
        let store = Arc::new(FileStore::open(self.mesh_config_dir(), None).unwrap());
        let watch = store.clone().watch(Duration::from_millis(50));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = PushServer::new(&*store);
        let tls = self
            .provider(&SpiffeId::istio(&TrustDomain::default(), "istio-system", "istiod").unwrap());
        let (stop, rx) = oneshot::channel();
        tokio::spawn(async move {
            serve(listener, tls, server, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        self.push = Some(Push {
            addr,
            store,
            stop: Some(stop),
            _watch: watch,
        });
    }

    /// Stops the CA service.
    async fn stop_ca(&mut self) {
        if let Some(cp) = self.cp.take() {
            cp.shutdown().await;
        }
    }
}

impl Drop for Push {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

struct Pod {
    shared: Arc<Shared>,
    _task: JoinHandle<Result<DrainOutcome, StartError>>,
    ip: IpAddr,
    dir: tempfile::TempDir,
}

impl Pod {
    fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15001)
    }
    fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15006)
    }
    fn health(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15021)
    }
    fn admin(&self) -> SocketAddr {
        SocketAddr::new(self.ip, 15000)
    }
    fn generation(&self) -> Option<u64> {
        self.shared.policy.load().as_ref().map(|p| p.generation)
    }
    async fn wait_ready(&self) {
        support::eventually(&format!("pod {} ready", self.ip), WAIT, || {
            self.shared.readiness().is_ok()
        })
        .await;
    }
}

/// Where a pod's certificates and config come from.
enum Certs<'a> {
    /// From the control plane's CA, asking for this lifetime.
    Ca(&'a Control, &'a str),
    /// From a directory (written by the test).
    Static,
}

enum Config<'a> {
    /// Files written into the pod's own config directory.
    Directory(&'a [(&'a str, String)]),
    /// The control plane's push API.
    ControlPlane(SocketAddr),
}

async fn start_pod(
    test: u8,
    pod: u8,
    sa: &str,
    certs: Certs<'_>,
    config: Config<'_>,
    outbound_to: Option<SocketAddr>,
) -> Pod {
    let ip = ip(test, pod);
    let dir = tempfile::tempdir().unwrap();
    let cert_yaml = match certs {
        Certs::Ca(control, ttl) => format!(
            "certificates: {{caAddress: \"{}\", tokenFile: {}, rootCert: {}, caServerName: istiod.istio-system.svc, ttl: {ttl}}}\n",
            control.ca_addr(),
            control.token_file(sa).display(),
            control.root_file().display(),
        ),
        Certs::Static => {
            let d = dir.path().join("certs");
            std::fs::create_dir_all(&d).unwrap();
            format!("certificates: {{staticDir: {}}}\n", d.display())
        }
    };
    let config_yaml = match config {
        Config::Directory(files) => {
            let d = dir.path().join("config");
            std::fs::create_dir_all(&d).unwrap();
            for (name, text) in files {
                std::fs::write(d.join(name), text).unwrap();
            }
            format!("config: {{directory: {}}}\n", d.display())
        }
        Config::ControlPlane(addr) => format!("config: {{controlPlane: \"{addr}\"}}\n"),
    };
    let yaml = format!(
        "identity: {{namespace: {NS}, serviceAccount: {sa}, podName: {sa}-pod, labels: {{app: {sa}}}}}\n\
         {cert_yaml}{config_yaml}\
         reloadInterval: 50ms\n\
         bindAddress: {ip}\n\
         adminAddress: {ip}\n\
         connectTimeout: 2s\n\
         drainDeadline: 1s\n\
         inbound: {{appHost: {app}}}\n",
        app = ip_app(test, pod),
    );
    // The agent's own knobs come from the environment, as in a pod.
    let env = |k: &str| match k {
        "WARDEN_CA_MAX_BACKOFF" => Some("500ms".to_owned()),
        _ => None,
    };
    let cfg = SidecarConfig::from_parts(Some((Path::new("sidecar.yaml"), &yaml)), &env).unwrap();
    let mut orig =
        StaticOriginalDst::new().with(SocketAddr::new(ip, 15006), SocketAddr::new(ip, APP_PORT));
    if let Some(to) = outbound_to {
        orig = orig.with(SocketAddr::new(ip, 15001), to);
    }
    let tls = TlsProvider::new(TlsSettings::default()).unwrap();
    let shared = Arc::new(Shared::new(cfg, tls, Arc::new(orig), None));
    let listeners = Listeners::bind(&shared).await.unwrap();
    let task = tokio::spawn(warden_proxy::run(shared.clone(), listeners));
    Pod {
        shared,
        _task: task,
        ip,
        dir,
    }
}

/// `vip:7000` is backed by `sa` at `endpoint_ip:15006` (its sidecar's inbound).
fn service_entry(name: &str, vip: IpAddr, endpoint_ip: IpAddr, sa: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  hosts: [{name}.{NS}.svc.cluster.local]\n  addresses: [{vip}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
         \x20 ports: [{{number: {APP_PORT}, name: tcp}}]\n\
         \x20 endpoints: [{{address: {endpoint_ip}, serviceAccount: {sa}, ports: {{tcp: 15006}}}}]\n"
    )
}

fn strict() -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{name: default, namespace: {NS}}}\nspec: {{mtls: {{mode: STRICT}}}}\n"
    )
}

fn deny_from(name: &str, target_app: &str, sa: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: {target_app}}}}}\n  action: DENY\n\
         \x20 rules: [{{from: [{{source: {{principals: [\"cluster.local/ns/{NS}/sa/{sa}\"]}}}}]}}]\n"
    )
}

/// Sends `data`, half-closes, and returns everything read until EOF (empty when refused or
/// reset).
async fn round_trip(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    support::round_trip(addr, data).await.unwrap_or_default()
}

/// One message over an established connection.
async fn echo_on(s: &mut TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut buf = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut buf))
        .await
        .expect("echo on the established connection timed out")
        .expect("the established connection was dropped");
    assert_eq!(buf, msg);
}

/// `GET path` over HTTP/1.1: (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, body.to_owned())
}

/// The serial (hex) of the leaf the pod's TLS provider presents now.
fn serial_of(pod: &Pod) -> Option<String> {
    pod.shared
        .cert_status()
        .and_then(|s| s.serial)
        .map(|s| s.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_certificates_rotate_survive_a_ca_outage_and_fail_closed_on_expiry() {
    // TEST_LOG=1 shows the sidecars' and the control plane's logs when this test is run alone.
    if std::env::var("TEST_LOG").is_ok() {
        warden_proxy::logging::init("info", false);
    }
    let mut control = Control::start().await;
    let t = 41;
    let vip = ip(t, 200);
    support::echo_app(SocketAddr::new(ip_app(t, 2), APP_PORT), None).await;
    let files = [
        ("se.yaml", service_entry("echo", vip, ip(t, 2), "b")),
        ("pa.yaml", strict()),
    ];
    // Lifetimes of 8 s: renewed about every 4 s.
    let a = start_pod(
        t,
        1,
        "a",
        Certs::Ca(&control, "8s"),
        Config::Directory(&files),
        Some(SocketAddr::new(vip, APP_PORT)),
    )
    .await;
    let b = start_pod(
        t,
        2,
        "b",
        Certs::Ca(&control, "8s"),
        Config::Directory(&files),
        None,
    )
    .await;
    a.wait_ready().await;
    b.wait_ready().await;
    let (status, body) = http_get(b.health(), "/healthz/ready").await;
    assert_eq!(status, 200, "{body}");
    // /certs shows the chain with identity, serial and expiry.
    let (status, certs) = http_get(b.admin(), "/certs").await;
    assert_eq!(status, 200);
    let certs: serde_json::Value = serde_json::from_str(&certs).unwrap();
    assert_eq!(certs["identity"], id("b").as_str());
    assert_eq!(certs["serial"].as_str(), serial_of(&b).as_deref());
    assert_eq!(certs["chain"][0]["uri_sans"][0], id("b").as_str());
    assert!(certs["chain"][0]["seconds_until_expiry"].as_i64().unwrap() <= 8);
    assert!(
        control
            .ca
            .issued_log()
            .find(&b.shared.cert_status().unwrap().serial.unwrap())
            .is_some(),
        "b's certificate was issued by the control plane"
    );

    // mTLS between the two sidecars; rotation under traffic: no connection fails.
    let mut long = TcpStream::connect(a.outbound()).await.unwrap();
    echo_on(&mut long, b"hello").await;
    let mut serials = std::collections::BTreeSet::new();
    let start = tokio::time::Instant::now();
    let mut n = 0u32;
    while start.elapsed() < Duration::from_secs(10) {
        let msg = format!("request {n}");
        assert_eq!(
            round_trip(a.outbound(), msg.as_bytes()).await,
            msg.as_bytes(),
            "connection {n} failed during rotation"
        );
        echo_on(&mut long, msg.as_bytes()).await;
        serials.insert(serial_of(&b).unwrap());
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        serials.len() >= 3,
        "b's certificate should have rotated at least twice in 10 s: {serials:?}"
    );

    // A client certificate straight from the CA, to talk to b's inbound directly.
    let client = control.provider(&id("a"));
    let tcp = TcpStream::connect(b.inbound()).await.unwrap();
    client
        .connect(tcp, &[id("b")], Alpn::Tcp)
        .await
        .expect("b accepts mTLS while it holds a valid certificate");

    // The CA goes away: the sidecars keep serving with their certificates while they last.
    control.stop_ca().await;
    let not_after = b.shared.tls.current().unwrap().not_after();
    assert_eq!(round_trip(a.outbound(), b"ca down").await, b"ca down");
    echo_on(&mut long, b"still up").await;
    // Renewal is due before expiry and fails: still ready, the failure is reported.
    support::eventually("a failed renewal reported", WAIT, || {
        b.shared
            .cert_status()
            .is_some_and(|s| s.ready && s.consecutive_failures > 0)
    })
    .await;
    assert!(b.shared.readiness().is_ok());
    assert_eq!(
        round_trip(a.outbound(), b"renewal failing").await,
        b"renewal failing"
    );

    // Expired and not renewed: not ready with the reason, and inbound mTLS refused.
    let left = not_after - time::OffsetDateTime::now_utc();
    tokio::time::sleep(
        Duration::from_secs_f64(left.as_seconds_f64().max(0.0)) + Duration::from_millis(300),
    )
    .await;
    support::eventually("b not ready after expiry", WAIT, || {
        b.shared.readiness().is_err()
    })
    .await;
    let (status, body) = http_get(b.health(), "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("certificate not loaded") && body.contains("expired"),
        "{body}"
    );
    assert!(!b.shared.tls.has_credentials());
    let tcp = TcpStream::connect(b.inbound()).await.unwrap();
    let refused = client.connect(tcp, &[id("b")], Alpn::Tcp).await;
    assert!(refused.is_err(), "an expired sidecar accepted mTLS");
    assert_ne!(
        round_trip(a.outbound(), b"expired").await,
        b"expired",
        "traffic went through with expired certificates"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_pushed_by_the_control_plane_flips_decisions_without_dropping_connections() {
    let mut control = Control::start().await;
    let t = 42;
    let vip = ip(t, 200);
    let dir = control.mesh_config_dir();
    std::fs::write(
        dir.join("services.yaml"),
        service_entry("echo", vip, ip(t, 2), "b"),
    )
    .unwrap();
    std::fs::write(dir.join("peer-authn.yaml"), strict()).unwrap();
    control.start_push().await;
    let push = control.push.as_ref().unwrap().addr;
    support::echo_app(SocketAddr::new(ip_app(t, 2), APP_PORT), None).await;
    let a = start_pod(
        t,
        1,
        "a",
        Certs::Ca(&control, "1h"),
        Config::ControlPlane(push),
        Some(SocketAddr::new(vip, APP_PORT)),
    )
    .await;
    let b = start_pod(
        t,
        2,
        "b",
        Certs::Ca(&control, "1h"),
        Config::ControlPlane(push),
        None,
    )
    .await;
    a.wait_ready().await;
    b.wait_ready().await;
    let dump: serde_json::Value =
        serde_json::from_str(&http_get(b.admin(), "/config_dump").await.1).unwrap();
    assert_eq!(dump["policy"]["origin"], "control plane");
    assert_eq!(dump["control_plane"]["connected"], true);
    assert_eq!(dump["registry"][0]["host"], "echo.test.svc.cluster.local");

    // Allowed, and a connection that stays open through every change below.
    assert_eq!(round_trip(a.outbound(), b"allowed").await, b"allowed");
    let mut long = TcpStream::connect(a.outbound()).await.unwrap();
    echo_on(&mut long, b"long 1").await;

    // A DENY policy file: new connections from a are refused; the open one keeps working.
    let before = b.generation();
    let written = std::time::Instant::now();
    write_atomic(&dir, "deny.yaml", &deny_from("deny-a", "b", "a"));
    support::eventually("b applied the DENY policy", WAIT, || {
        b.generation() != before
    })
    .await;
    // For the record (not asserted): file written -> applied in the sidecar, including the
    // store's 50 ms poll and 50 ms debounce.
    println!("policy file -> sidecar: {:?}", written.elapsed());
    assert_ne!(round_trip(a.outbound(), b"denied?").await, b"denied?");
    echo_on(&mut long, b"long 2").await;

    // An invalid file changes nothing: no push, still denied, still connected.
    let denied_gen = b.generation();
    write_atomic(
        &dir,
        "broken.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: broken, namespace: {NS}}}\nspec: {{action: MAYBE}}\n"
        ),
    );
    let store = control.push.as_ref().unwrap().store.clone();
    support::eventually("the control plane reported the invalid file", WAIT, || {
        store
            .current()
            .errors
            .iter()
            .any(|e| e.contains("broken.yaml"))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.generation(),
        denied_gen,
        "an invalid file changed the config"
    );
    assert_ne!(round_trip(a.outbound(), b"denied?").await, b"denied?");
    echo_on(&mut long, b"long 3").await;

    // The DENY policy removed: allowed again.
    std::fs::remove_file(dir.join("deny.yaml")).unwrap();
    support::eventually("b applied the removal", WAIT, || {
        b.generation() != denied_gen
    })
    .await;
    assert_eq!(
        round_trip(a.outbound(), b"allowed again").await,
        b"allowed again"
    );
    echo_on(&mut long, b"long 4").await;
    assert!(b.shared.config_status().unwrap().last_nack.is_none());
}

fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Writes a fresh key and certificate for `sa` into `dir` (key first: a half-written set is
/// not taken), returns the leaf DER.
fn write_certs(control: &Control, dir: &Path, sa: &str) -> Vec<u8> {
    let identity = id(sa);
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = warden_identity::keys::csr_pem(&key, &identity).unwrap();
    let cert = control.ca.sign_csr(&csr, &identity, 3600).unwrap();
    write_atomic(dir, "key.pem", &key.serialize_pem());
    write_atomic(dir, "root-cert.pem", &control.ca.root_bundle_pem());
    write_atomic(dir, "cert-chain.pem", &cert.chain_pem.concat());
    CertificateDer::from_pem_slice(cert.chain_pem[0].as_bytes())
        .unwrap()
        .as_ref()
        .to_vec()
}

/// The leaf b presents on a new handshake.
async fn presented_leaf(client: &TlsProvider, addr: SocketAddr, expect: &SpiffeId) -> Vec<u8> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (tls, peer) = client
        .connect(tcp, std::slice::from_ref(expect), Alpn::Tcp)
        .await
        .unwrap();
    assert_eq!(&peer, expect);
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_directory_replaced_files_are_presented_on_the_next_handshake() {
    let control = Control::start().await;
    let t = 43;
    let b = start_pod(t, 2, "b", Certs::Static, Config::Directory(&[]), None).await;
    // No files yet: not ready, and says why.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = http_get(b.health(), "/healthz/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("certificate not loaded"), "{body}");

    let certs = b.dir.path().join("certs");
    let first = write_certs(&control, &certs, "b");
    b.wait_ready().await;
    let client = control.provider(&id("a"));
    assert_eq!(presented_leaf(&client, b.inbound(), &id("b")).await, first);

    let second = write_certs(&control, &certs, "b");
    assert_ne!(first, second);
    support::eventually("b installed the new certificate", WAIT, || {
        b.shared.tls.current().unwrap().chain()[0].as_ref() == second.as_slice()
    })
    .await;
    assert_eq!(presented_leaf(&client, b.inbound(), &id("b")).await, second);

    // Files for another identity are refused; b keeps presenting its own.
    write_certs(&control, &certs, "mallory");
    support::eventually("the wrong identity reported", WAIT, || {
        b.shared
            .cert_status()
            .and_then(|s| s.last_error)
            .is_some_and(|e| e.to_string().contains("this workload is"))
    })
    .await;
    assert_eq!(presented_leaf(&client, b.inbound(), &id("b")).await, second);
    assert!(b.shared.readiness().is_ok());
}
