//! Ingress and egress gateways end to end, in process, on real loopback sockets, with real
//! curl: Istio Gateway/VirtualService/DestinationRule/ServiceEntry/AuthorizationPolicy YAML in
//! a config directory, the gateway's mesh certificate from a real mesh CA, apps behind real
//! in-process Warden sidecars (mTLS, secure naming), "external" TLS servers on loopback.
//!
//! Each test has its own addresses 127.0.<test>.x: .1 the gateway (or the client pod), .2 the
//! app's sidecar, .102 the app, .5 the egress gateway, .9/.10 external servers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use warden_identity::tls::{TlsProvider, TlsSettings};
use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};
use warden_proxy::gateway::{AdminListeners, GatewayConfig, GatewayMode, GatewayShared};
use warden_proxy::orig_dst::StaticOriginalDst;
use warden_proxy::server::{DrainOutcome, StartError};
use warden_proxy::{Listeners, Shared, SidecarConfig};

const NS: &str = "test";
const APP_PORT: u16 = 7000;

fn ip(test: u8, host: u8) -> IpAddr {
    format!("127.0.{test}.{host}").parse().unwrap()
}

// ------------------------------------------------------------------------------------------
// Certificates

/// The mesh CA.
struct Mesh {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Mesh {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            CertificateAuthority::self_signed(dir.path().join("ca"), CaOptions::default()).unwrap();
        Self { _dir: dir, ca }
    }

    /// cert-chain.pem, key.pem, root-cert.pem for `ns/sa` in `dir`.
    fn write_certs(&self, dir: &Path, sa: &str) {
        let id = SpiffeId::istio(&TrustDomain::default(), NS, sa).unwrap();
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = warden_identity::keys::csr_pem(&key, &id).unwrap();
        let cert = self.ca.sign_csr(&csr, &id, 3600).unwrap();
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("root-cert.pem"), self.ca.root_bundle_pem()).unwrap();
        std::fs::write(dir.join("cert-chain.pem"), cert.chain_pem.concat()).unwrap();
    }
}

/// A web PKI outside the mesh (edge certificates, client certificates, external servers).
struct Pki {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

struct Leaf {
    cert: String,
    key: String,
    der: Vec<u8>,
}

impl Pki {
    fn new(cn: &str) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, cn);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        Self {
            issuer: CertifiedIssuer::self_signed(p, KeyPair::generate().unwrap()).unwrap(),
        }
    }

    fn ca_pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, cn: &str, names: &[&str], client: bool) -> Leaf {
        let mut p = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert: cert.pem(),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

fn write(path: &Path, text: &str) -> PathBuf {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).unwrap();
    }
    std::fs::write(path, text).unwrap();
    path.to_owned()
}

// ------------------------------------------------------------------------------------------
// Apps and external servers

fn response(text: String) -> hyper::Response<Full<Bytes>> {
    hyper::Response::new(Full::new(Bytes::from(text)))
}

/// A plaintext HTTP app answering `<name> saw <path> xff=<x-forwarded-for>`; counts the
/// connections it accepted.
async fn http_app(addr: SocketAddr, name: &'static str) -> Arc<std::sync::atomic::AtomicUsize> {
    let listener = TcpListener::bind(addr).await.unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                    let xff = req
                        .headers()
                        .get("x-forwarded-for")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-")
                        .to_owned();
                    Ok::<_, Infallible>(response(format!("{name} saw {} xff={xff}", req.uri())))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    accepted
}

/// An HTTPS server presenting `leaf`; with `client_ca`, client certificates are required.
/// Answers `<name> saw <path> client_cert=<yes|no>`.
async fn tls_app(addr: SocketAddr, name: &'static str, leaf: &Leaf, client_ca: Option<&Pki>) {
    use rustls::pki_types::pem::PemObject;
    let provider = warden_identity::tls::crypto_provider();
    let certs = vec![rustls::pki_types::CertificateDer::from(leaf.der.clone())];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.issuer.der().clone()).unwrap();
            builder.with_client_cert_verifier(
                rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap(),
            )
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).unwrap();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(s).await else {
                    return;
                };
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                    Ok::<_, Infallible>(response(format!(
                        "{name} saw {} client_cert={}",
                        req.uri(),
                        if client_cert { "yes" } else { "no" }
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
}

// ------------------------------------------------------------------------------------------
// Proxies

struct Pod {
    shared: Arc<Shared>,
    _task: JoinHandle<Result<DrainOutcome, StartError>>,
    _dir: tempfile::TempDir,
}

impl Pod {
    async fn wait_ready(&self) {
        for _ in 0..500 {
            if self.shared.readiness().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("sidecar never ready: {:?}", self.shared.readiness());
    }
}

/// A Warden sidecar at `ip` for `sa`: inbound 15006 goes to `app` (if any), outbound 15001 goes
/// to `outbound_to` (if any).
async fn sidecar(
    mesh: &Mesh,
    ip: IpAddr,
    sa: &str,
    app: Option<SocketAddr>,
    outbound_to: Option<SocketAddr>,
    config: &[(&str, String)],
) -> Pod {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let cfg_dir = dir.path().join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    mesh.write_certs(&certs, sa);
    for (name, text) in config {
        write(&cfg_dir.join(name), text);
    }
    let app_host = app.map_or(ip, |a| a.ip());
    let yaml = format!(
        "identity: {{namespace: {NS}, serviceAccount: {sa}, podName: {sa}-pod, labels: {{app: {sa}}}}}\n\
         certificates: {{staticDir: {certs}}}\n\
         config: {{directory: {cfg}}}\n\
         reloadInterval: 50ms\n\
         bindAddress: {ip}\n\
         adminAddress: {ip}\n\
         connectTimeout: 2s\n\
         inbound: {{appHost: {app_host}}}\n",
        certs = certs.display(),
        cfg = cfg_dir.display(),
    );
    let cfg =
        SidecarConfig::from_parts(Some((Path::new("sidecar.yaml"), &yaml)), &|_| None).unwrap();
    let mut orig = StaticOriginalDst::new();
    if let Some(a) = app {
        orig = orig.with(SocketAddr::new(ip, 15006), a);
    }
    if let Some(to) = outbound_to {
        orig = orig.with(SocketAddr::new(ip, 15001), to);
    }
    let tls = TlsProvider::new(TlsSettings::default()).unwrap();
    let shared = Arc::new(Shared::new(cfg, tls, Arc::new(orig), None));
    let listeners = Listeners::bind(&shared).await.unwrap();
    let task = tokio::spawn(warden_proxy::run(shared.clone(), listeners));
    let pod = Pod {
        shared,
        _task: task,
        _dir: dir,
    };
    pod.wait_ready().await;
    pod
}

struct Gw {
    shared: Arc<GatewayShared>,
    dir: tempfile::TempDir,
    ip: IpAddr,
    _task: JoinHandle<Result<usize, String>>,
}

impl Gw {
    fn config_dir(&self) -> PathBuf {
        self.dir.path().join("config")
    }

    async fn wait_ready(&self) {
        for _ in 0..500 {
            if self.shared.readiness().is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("gateway never ready: {:?}", self.shared.readiness());
    }

    /// Writes a config file and waits for a newer table.
    async fn write_config(&self, name: &str, yaml: &str) {
        let before = self.shared.table.load().as_ref().map(|t| t.generation);
        write(&self.config_dir().join(name), yaml);
        for _ in 0..500 {
            if self.shared.table.load().as_ref().map(|t| t.generation) != before {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("config {name} never reloaded");
    }

    fn problems(&self) -> Vec<String> {
        self.shared
            .table
            .load()
            .as_ref()
            .map(|t| t.problems.clone())
            .unwrap_or_default()
    }

    async fn http_get(&self, port: u16, path: &str) -> (u16, String) {
        let out = curl(&[
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{}:{port}{path}", self.ip),
        ])
        .await;
        let (body, code) = out.stdout.rsplit_once('\n').unwrap();
        (code.parse().unwrap(), body.to_owned())
    }
}

/// An in-process gateway at `ip` with `sa`; `files` go to its config directory.
async fn gateway(
    mesh: &Mesh,
    mode: GatewayMode,
    ip: IpAddr,
    sa: &str,
    files: &[(&str, String)],
    extra: &str,
) -> Gw {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let cfg_dir = dir.path().join("config");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    mesh.write_certs(&certs, sa);
    for (name, text) in files {
        write(&cfg_dir.join(name), text);
    }
    let yaml = format!(
        "identity: {{namespace: {NS}, serviceAccount: {sa}}}\n\
         certificates: {{staticDir: {certs}}}\n\
         config: {{directory: {cfg}}}\n\
         credentialsDir: {creds}\n\
         reloadInterval: 50ms\n\
         bindAddress: {ip}\n\
         connectTimeout: 2s\n\
         handshakeTimeout: 5s\n{extra}",
        certs = certs.display(),
        cfg = cfg_dir.display(),
        creds = dir.path().join("credentials").display(),
    );
    let cfg = GatewayConfig::from_parts(mode, Path::new("gateway.yaml"), &yaml, &|_| None).unwrap();
    let admin = AdminListeners::bind(&cfg).await.unwrap();
    let shared = Arc::new(GatewayShared::new(
        cfg,
        TlsProvider::new(TlsSettings::default()).unwrap(),
    ));
    let task = tokio::spawn(warden_proxy::gateway::run(shared.clone(), admin));
    let gw = Gw {
        shared,
        dir,
        ip,
        _task: task,
    };
    gw.wait_ready().await;
    gw
}

// ------------------------------------------------------------------------------------------
// curl

/// Whether `tool` can run; without it a test prints `skipped: <reason>` and passes, unless
/// `WARDEN_REQUIRE_PRIVILEGED=1` makes it fail.
fn have(tool: &str) -> bool {
    let ok = std::process::Command::new(tool)
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

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn curl(args: &[&str]) -> Out {
    let out = tokio::process::Command::new("curl")
        .args(["--max-time", "10"])
        .args(args)
        .output()
        .await
        .expect("curl runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `curl https://host:port/path` resolved to `ip`, trusting `ca`; returns (status, body).
async fn curl_https(host: &str, port: u16, ip: IpAddr, path: &str, extra: &[&str]) -> Out {
    let resolve = format!("{host}:{port}:{ip}");
    let url = format!("https://{host}:{port}{path}");
    let mut args = vec!["-sS", "--resolve", &resolve, "-w", "\n%{http_code}"];
    args.extend_from_slice(extra);
    args.push(&url);
    curl(&args).await
}

fn status_body(o: &Out) -> (u16, &str) {
    let (body, code) = o.stdout.rsplit_once('\n').unwrap_or(("", "0"));
    (code.parse().unwrap_or(0), body)
}

// ------------------------------------------------------------------------------------------
// YAML

#[allow(clippy::too_many_arguments)]
fn service_entry(
    name: &str,
    host: &str,
    port: u16,
    port_name: &str,
    location: &str,
    endpoint: IpAddr,
    sa: &str,
    ep_port: u16,
) -> String {
    let sa = if sa.is_empty() {
        String::new()
    } else {
        format!(", serviceAccount: {sa}")
    };
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}, namespace: {NS}}}\n\
         spec:\n  hosts: [{host}]\n  ports: [{{number: {port}, name: {port_name}}}]\n  location: {location}\n  resolution: STATIC\n\
         \x20 endpoints: [{{address: {endpoint}{sa}, ports: {{{port_name}: {ep_port}}}}}]\n"
    )
}

fn metric_line<'a>(text: &'a str, name: &str, must_contain: &[&str]) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && must_contain.iter().all(|m| l.contains(m)))
}

async fn get_text(addr: SocketAddr, path: &str) -> (u16, String) {
    let o = curl(&[
        "-s",
        "-w",
        "\n%{http_code}",
        &format!("http://{addr}{path}"),
    ])
    .await;
    let (c, b) = status_body(&o);
    (c, b.to_owned())
}

// ------------------------------------------------------------------------------------------
// Tests

/// SIMPLE (credentialName), MUTUAL (files), httpsRedirect, URI and header matches, a route
/// redirect, 404 without a route; the app is behind a Warden sidecar that only admits the
/// gateway's identity, so a 200 proves mTLS as the gateway with secure naming.
#[tokio::test]
async fn ingress_simple_and_mutual_to_a_sidecar_app() {
    if !have("curl") {
        return;
    }
    const T: u8 = 41;
    let mesh = Mesh::new();
    let app = SocketAddr::new(ip(T, 102), APP_PORT);
    http_app(app, "app").await;
    let only_ingress = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: only-ingress, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: app}}}}\n  rules: [{{from: [{{source: {{principals: [cluster.local/ns/{NS}/sa/ingress]}}}}]}}]\n"
    );
    let _app_pod = sidecar(
        &mesh,
        ip(T, 2),
        "app",
        Some(app),
        None,
        &[("authz.yaml", only_ingress)],
    )
    .await;

    let edge = Pki::new("edge CA");
    let clients = Pki::new("client CA");
    let rogue = Pki::new("rogue CA");
    let shop = edge.leaf("shop", &["shop.example.com"], false);
    let mtls = edge.leaf("mtls", &["mtls.example.com"], false);
    let good = clients.leaf("alice", &["alice.example.com"], true);
    let bad = rogue.leaf("mallory", &["mallory.example.com"], true);

    let gw_ip = ip(T, 1);
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let edge_ca = write(&t.join("edge-ca.pem"), &edge.ca_pem());
    let mtls_cert = write(&t.join("mtls.crt"), &mtls.cert);
    let mtls_key = write(&t.join("mtls.key"), &mtls.key);
    let client_ca = write(&t.join("client-ca.pem"), &clients.ca_pem());
    let good_cert = write(&t.join("good.crt"), &good.cert);
    let good_key = write(&t.join("good.key"), &good.key);
    let bad_cert = write(&t.join("bad.crt"), &bad.cert);
    let bad_key = write(&t.join("bad.key"), &bad.key);

    let gateway_yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
         \x20 - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: [shop.example.com]\n    tls: {{httpsRedirect: true}}\n\
         \x20 - port: {{number: 8443, name: https, protocol: HTTPS}}\n    hosts: [shop.example.com]\n    tls: {{mode: SIMPLE, credentialName: shop-cred}}\n\
         \x20 - port: {{number: 9443, name: https-mtls, protocol: HTTPS}}\n    hosts: [mtls.example.com]\n\
         \x20   tls: {{mode: MUTUAL, serverCertificate: {}, privateKey: {}, caCertificates: {}}}\n",
        mtls_cert.display(),
        mtls_key.display(),
        client_ca.display()
    );
    let vs = format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: shop, namespace: {NS}}}\n\
         spec:\n  hosts: [shop.example.com, mtls.example.com]\n  gateways: [web]\n  http:\n\
         \x20 - match: [{{uri: {{exact: /old}}}}]\n    redirect: {{uri: /app/new}}\n\
         \x20 - match: [{{uri: {{regex: \"/v[0-9]+/.*\"}}, headers: {{x-canary: {{exact: \"yes\"}}}}}}]\n    route: [{{destination: {{host: app, port: {{number: {APP_PORT}}}}}}}]\n\
         \x20 - match: [{{uri: {{prefix: /app}}}}]\n    route: [{{destination: {{host: app.{NS}.svc.cluster.local}}}}]\n    timeout: 5s\n    retries: {{attempts: 2, perTryTimeout: 2s, retryOn: \"connect-failure,5xx\"}}\n"
    );
    let se = service_entry(
        "app",
        &format!("app.{NS}.svc.cluster.local"),
        APP_PORT,
        "http",
        "MESH_INTERNAL",
        ip(T, 2),
        "app",
        15006,
    );
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        gw_ip,
        "ingress",
        &[("gw.yaml", gateway_yaml), ("vs.yaml", vs), ("se.yaml", se)],
        "",
    )
    .await;
    // The credential directory appears after start: the server is left out, then served.
    assert!(
        gw.problems().iter().any(|p| p.contains("shop-cred")),
        "{:?}",
        gw.problems()
    );
    let creds = gw.dir.path().join("credentials/shop-cred");
    write(&creds.join("tls.crt"), &shop.cert);
    write(&creds.join("tls.key"), &shop.key);
    gw.write_config("touch.yaml", "# reload\n").await;
    assert!(gw.problems().is_empty(), "{:?}", gw.problems());
    gw.wait_ready().await;

    // httpsRedirect.
    let o = curl(&[
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        "--resolve",
        &format!("shop.example.com:8080:{gw_ip}"),
        "http://shop.example.com:8080/app/x?y=1",
    ])
    .await;
    assert_eq!(
        o.stdout, "301 https://shop.example.com/app/x?y=1",
        "{}",
        o.stderr
    );

    // SIMPLE: the certificate chosen for the SNI, verified by curl against the edge CA.
    let ca = edge_ca.display().to_string();
    let o = curl_https(
        "shop.example.com",
        8443,
        gw_ip,
        "/app/hello",
        &["--cacert", &ca],
    )
    .await;
    let (code, body) = status_body(&o);
    assert_eq!(code, 200, "{} {}", o.stdout, o.stderr);
    assert!(
        body.starts_with("app saw /app/hello xff=127.0.0.1"),
        "{body}"
    );

    // Regex + header match; the same URI without the header has no route.
    let o = curl_https(
        "shop.example.com",
        8443,
        gw_ip,
        "/v2/items",
        &["--cacert", &ca, "-H", "x-canary: yes"],
    )
    .await;
    assert_eq!(
        status_body(&o),
        (200, "app saw /v2/items xff=127.0.0.1"),
        "{}",
        o.stderr
    );
    let o = curl_https(
        "shop.example.com",
        8443,
        gw_ip,
        "/v2/items",
        &["--cacert", &ca],
    )
    .await;
    assert_eq!(status_body(&o).0, 404);
    // A route redirect.
    let o = curl_https(
        "shop.example.com",
        8443,
        gw_ip,
        "/old",
        &["--cacert", &ca, "-o", "/dev/null", "-w", "%{redirect_url}"],
    )
    .await;
    assert!(
        o.stdout.starts_with("https://shop.example.com/app/new"),
        "{}",
        o.stdout
    );

    // MUTUAL: a client certificate from the configured CA is required.
    let (gc, gk, bc, bk) = (
        good_cert.display().to_string(),
        good_key.display().to_string(),
        bad_cert.display().to_string(),
        bad_key.display().to_string(),
    );
    let o = curl_https(
        "mtls.example.com",
        9443,
        gw_ip,
        "/app/m",
        &["--cacert", &ca, "--cert", &gc, "--key", &gk],
    )
    .await;
    assert_eq!(status_body(&o).0, 200, "{} {}", o.stdout, o.stderr);
    let o = curl_https(
        "mtls.example.com",
        9443,
        gw_ip,
        "/app/m",
        &["--cacert", &ca],
    )
    .await;
    assert_ne!(
        o.code, 0,
        "no client certificate must be refused: {}",
        o.stdout
    );
    let o = curl_https(
        "mtls.example.com",
        9443,
        gw_ip,
        "/app/m",
        &["--cacert", &ca, "--cert", &bc, "--key", &bk],
    )
    .await;
    assert_ne!(
        o.code, 0,
        "a certificate from another CA must be refused: {}",
        o.stdout
    );
    // The MUTUAL server's certificate is not served for the SIMPLE host (SNI picks the server).
    let o = curl_https(
        "shop.example.com",
        9443,
        gw_ip,
        "/app/m",
        &["--cacert", &ca, "--cert", &gc, "--key", &gk],
    )
    .await;
    assert_ne!(o.code, 0, "{}", o.stdout);

    // Metrics and readiness.
    let (code, stats) = get_text(SocketAddr::new(gw_ip, 15020), "/stats/prometheus").await;
    assert_eq!(code, 200);
    let line = metric_line(
        &stats,
        "istio_requests_total",
        &[
            "reporter=\"source\"",
            "source_principal=\"spiffe://cluster.local/ns/test/sa/ingress\"",
            "destination_principal=\"spiffe://cluster.local/ns/test/sa/app\"",
            "destination_service=\"app.test.svc.cluster.local\"",
            "response_code=\"200\"",
            "connection_security_policy=\"mutual_tls\"",
        ],
    )
    .unwrap_or_else(|| panic!("{stats}"));
    assert!(line.ends_with(" 3"), "{line}");
    assert!(
        metric_line(
            &stats,
            "istio_requests_total",
            &["response_code=\"404\"", "response_flags=\"NR\""]
        )
        .is_some(),
        "{stats}"
    );
    assert_eq!(
        get_text(SocketAddr::new(gw_ip, 15021), "/healthz/ready")
            .await
            .0,
        200
    );
}

/// PASSTHROUGH: the backend's own certificate reaches curl; an unknown SNI is refused.
#[tokio::test]
async fn ingress_passthrough_reaches_the_tls_backend_untouched() {
    if !have("curl") {
        return;
    }
    const T: u8 = 42;
    let mesh = Mesh::new();
    let backend_pki = Pki::new("backend CA");
    let backend = backend_pki.leaf("pass-backend", &["pass.example.com"], false);
    let backend_addr = SocketAddr::new(ip(T, 9), 8443);
    tls_app(backend_addr, "backend", &backend, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(&tmp.path().join("backend-ca.pem"), &backend_pki.ca_pem());
    let gw_yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: pass, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
         \x20 - port: {{number: 10443, name: tls, protocol: TLS}}\n    hosts: [pass.example.com, other.example.com]\n    tls: {{mode: PASSTHROUGH}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: pass, namespace: {NS}}}\n\
         spec:\n  hosts: [pass.example.com]\n  gateways: [pass]\n  tls:\n  - match: [{{sniHosts: [pass.example.com]}}]\n    route: [{{destination: {{host: pass.example.com, port: {{number: 8443}}}}}}]\n"
    );
    let se = service_entry(
        "pass",
        "pass.example.com",
        8443,
        "tls",
        "MESH_EXTERNAL",
        ip(T, 9),
        "",
        8443,
    );
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        ip(T, 1),
        "ingress",
        &[("gw.yaml", gw_yaml), ("se.yaml", se)],
        "",
    )
    .await;
    assert!(gw.problems().is_empty(), "{:?}", gw.problems());
    let o = curl_https(
        "pass.example.com",
        10443,
        ip(T, 1),
        "/p",
        &["--cacert", &ca.display().to_string(), "-v"],
    )
    .await;
    assert_eq!(
        status_body(&o),
        (200, "backend saw /p client_cert=no"),
        "{}",
        o.stderr
    );
    assert!(
        o.stderr.contains("CN=pass-backend"),
        "the backend's certificate: {}",
        o.stderr
    );
    // A server host without a tls route: refused (no route), not sent anywhere.
    let o = curl_https("other.example.com", 10443, ip(T, 1), "/p", &["-k"]).await;
    assert_ne!(o.code, 0, "{}", o.stdout);
    let (_, stats) = get_text(SocketAddr::new(ip(T, 1), 15020), "/stats/prometheus").await;
    assert!(
        metric_line(
            &stats,
            "istio_tcp_connections_closed_total",
            &[
                "destination_service=\"pass.example.com\"",
                "reporter=\"source\""
            ]
        )
        .is_some(),
        "{stats}"
    );
}

/// A SIMPLE server's certificate file replaced while the gateway runs is served on the next
/// handshake (checked with real TLS handshakes, comparing the presented certificate).
#[tokio::test]
async fn replaced_certificate_is_served_on_the_next_handshake() {
    const T: u8 = 43;
    let mesh = Mesh::new();
    let edge = Pki::new("edge CA");
    let first = edge.leaf("v1", &["shop.example.com"], false);
    let second = edge.leaf("v2", &["shop.example.com"], false);
    let tmp = tempfile::tempdir().unwrap();
    let cert = write(&tmp.path().join("tls.crt"), &first.cert);
    let key = write(&tmp.path().join("tls.key"), &first.key);
    let backend = SocketAddr::new(ip(T, 9), 8080);
    http_app(backend, "backend").await;
    let gw_yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n\
         \x20 - port: {{number: 8443, name: https, protocol: HTTPS}}\n    hosts: ['*']\n\
         \x20   tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}\n",
        cert.display(),
        key.display()
    );
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        ip(T, 1),
        "ingress",
        &[("gw.yaml", gw_yaml)],
        "",
    )
    .await;
    assert!(gw.problems().is_empty(), "{:?}", gw.problems());
    assert!(
        gw.shared
            .table
            .load()
            .as_ref()
            .unwrap()
            .ports
            .contains_key(&8443),
        "{:?}",
        gw.shared.table.load()
    );

    let mut roots = rustls::RootCertStore::empty();
    roots.add(edge.issuer.der().clone()).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(warden_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let presented = || {
        let client = client.clone();
        async move {
            let tcp = tokio::net::TcpStream::connect((ip(T, 1), 8443))
                .await
                .unwrap();
            let name = rustls::pki_types::ServerName::try_from("shop.example.com").unwrap();
            let tls = tokio_rustls::TlsConnector::from(client)
                .connect(name, tcp)
                .await
                .unwrap();
            tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
        }
    };
    assert_eq!(presented().await, first.der);
    // Replace the pair (key first, as cert-manager and kubelet's atomic writes leave it).
    std::fs::write(&key, &second.key).unwrap();
    std::fs::write(&cert, &second.cert).unwrap();
    let mut served = Vec::new();
    for _ in 0..100 {
        served = presented().await;
        if served == second.der {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(served, second.der, "the new certificate is served");
    // A broken replacement is refused and the last good certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        gw.problems()
            .iter()
            .any(|p| p.contains("tls.crt") && p.contains("the last good credentials stay in use")),
        "{:?}",
        gw.problems()
    );
    assert_eq!(presented().await, second.der);
}

/// remoteIpBlocks against X-Forwarded-For with one trusted hop (numTrustedProxies: 1).
#[tokio::test]
async fn remote_ip_blocks_with_xff_and_trusted_hops() {
    if !have("curl") {
        return;
    }
    const T: u8 = 44;
    let mesh = Mesh::new();
    let backend = SocketAddr::new(ip(T, 9), 8080);
    let accepted = http_app(backend, "backend").await;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  hosts: ['*']\n  gateways: [web]\n  http: [{{route: [{{destination: {{host: backend.example.com, port: {{number: 8080}}}}}}]}}]\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: block, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{istio: ingressgateway}}}}\n  action: DENY\n  rules: [{{from: [{{source: {{remoteIpBlocks: [203.0.113.0/24]}}}}]}}]\n"
    );
    let se = service_entry(
        "backend",
        "backend.example.com",
        8080,
        "http",
        "MESH_EXTERNAL",
        ip(T, 9),
        "",
        8080,
    );
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        ip(T, 1),
        "ingress",
        &[("gw.yaml", yaml), ("se.yaml", se)],
        "numTrustedProxies: 1\n",
    )
    .await;
    assert!(gw.problems().is_empty(), "{:?}", gw.problems());
    let url = format!("http://{}:8080/x", ip(T, 1));
    let get = |xff: Option<&'static str>| {
        let url = url.clone();
        async move {
            let mut args = vec![
                "-s".to_owned(),
                "-o".into(),
                "/dev/null".into(),
                "-w".into(),
                "%{http_code}".into(),
            ];
            if let Some(x) = xff {
                args.push("-H".into());
                args.push(format!("x-forwarded-for: {x}"));
            }
            args.push(url);
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            curl(&refs).await.stdout
        }
    };
    assert_eq!(get(None).await, "200");
    assert_eq!(get(Some("203.0.113.7")).await, "403");
    assert_eq!(get(Some("198.51.100.1")).await, "200");
    // One trusted hop: the rightmost entry is the client; entries further left are ignored.
    assert_eq!(get(Some("198.51.100.1, 203.0.113.7")).await, "403");
    assert_eq!(get(Some("203.0.113.7, 198.51.100.1")).await, "200");
    // The backend sees the client's XFF with the gateway's peer appended.
    let (code, body) = gw.http_get(8080, "/y").await;
    assert_eq!((code, body.as_str()), (200, "backend saw /y xff=127.0.0.1"));
    // Four requests reached the backend, over pooled connections (not one connection each).
    let n = accepted.load(std::sync::atomic::Ordering::SeqCst);
    assert!(n <= 2, "{n} upstream connections for 4 requests");
}

/// app -> sidecar -> (mesh mTLS) -> egress gateway -> TLS origination (SIMPLE and MUTUAL) to
/// "external" servers; a principal without permission is refused; an unknown host is refused
/// under REGISTRY_ONLY; a server certificate that does not match subjectAltNames is refused.
#[tokio::test]
async fn egress_originates_tls_and_enforces_policy_and_registry() {
    if !have("curl") {
        return;
    }
    const T: u8 = 45;
    let mesh = Mesh::new();
    let ext = Pki::new("external CA");
    let client_pki = Pki::new("egress client CA");
    let api = ext.leaf("api", &["api.external.test"], false);
    let secure = ext.leaf("secure", &["secure.external.test"], false);
    let egress_client = client_pki.leaf("egress", &["egress.mesh.test"], true);
    tls_app(SocketAddr::new(ip(T, 9), 8443), "api", &api, None).await;
    tls_app(
        SocketAddr::new(ip(T, 10), 8443),
        "secure",
        &secure,
        Some(&client_pki),
    )
    .await;

    let tmp = tempfile::tempdir().unwrap();
    let ext_ca = write(&tmp.path().join("ext-ca.pem"), &ext.ca_pem());
    let ccert = write(&tmp.path().join("client.crt"), &egress_client.cert);
    let ckey = write(&tmp.path().join("client.key"), &egress_client.key);

    let egress_ip = ip(T, 5);
    let cfg = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: egress, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: egressgateway}}\n  servers:\n  - port: {{number: 8443, name: https, protocol: HTTPS}}\n    hosts: ['*']\n    tls: {{mode: ISTIO_MUTUAL}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: api, namespace: {NS}}}\n\
         spec:\n  hosts: [api.external.test]\n  gateways: [egress]\n  http: [{{route: [{{destination: {{host: api.external.test, port: {{number: 8443}}}}}}]}}]\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: api, namespace: {NS}}}\n\
         spec:\n  host: api.external.test\n  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {ca}, sni: api.external.test, subjectAltNames: [api.external.test]}}}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: secure, namespace: {NS}}}\n\
         spec:\n  host: secure.external.test\n  trafficPolicy: {{tls: {{mode: MUTUAL, caCertificates: {ca}, clientCertificate: {cc}, privateKey: {ck}}}}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{name: wrong-san, namespace: {NS}}}\n\
         spec:\n  host: wrongsan.external.test\n  trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {ca}, sni: api.external.test, subjectAltNames: [other.external.test]}}}}\n\
         ---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: egress, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{istio: egressgateway}}}}\n  rules:\n  - from: [{{source: {{principals: [cluster.local/ns/{NS}/sa/app]}}}}]\n\
         \x20   to: [{{operation: {{hosts: [api.external.test, secure.external.test, wrongsan.external.test, unknown.example]}}}}]\n",
        ca = ext_ca.display(),
        cc = ccert.display(),
        ck = ckey.display(),
    );
    let ses = [
        service_entry(
            "api",
            "api.external.test",
            8443,
            "https",
            "MESH_EXTERNAL",
            ip(T, 9),
            "",
            8443,
        ),
        service_entry(
            "secure",
            "secure.external.test",
            8443,
            "https",
            "MESH_EXTERNAL",
            ip(T, 10),
            "",
            8443,
        ),
        service_entry(
            "wrongsan",
            "wrongsan.external.test",
            8443,
            "https",
            "MESH_EXTERNAL",
            ip(T, 9),
            "",
            8443,
        ),
    ]
    .join("---\n");
    let gw = gateway(
        &mesh,
        GatewayMode::Egress,
        egress_ip,
        "egress",
        &[("egress.yaml", cfg), ("se.yaml", ses)],
        "outboundTrafficPolicy: REGISTRY_ONLY\n",
    )
    .await;
    assert!(gw.problems().is_empty(), "{:?}", gw.problems());

    // The sidecars send the external hosts to the egress gateway over mesh mTLS: a
    // MESH_INTERNAL ServiceEntry whose endpoint is the gateway (identity: its service account).
    let vip: IpAddr = "10.245.0.1".parse().unwrap();
    let to_egress = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: via-egress, namespace: {NS}}}\n\
         spec:\n  hosts: [api.external.test]\n  addresses: [{vip}]\n  ports: [{{number: 80, name: http}}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
         \x20 endpoints: [{{address: {egress_ip}, serviceAccount: egress, ports: {{http: 8443}}}}]\n"
    );
    let app_ip = ip(T, 1);
    let _app = sidecar(
        &mesh,
        app_ip,
        "app",
        None,
        Some(SocketAddr::new(vip, 80)),
        &[("se.yaml", to_egress.clone())],
    )
    .await;
    let other_ip = ip(T, 3);
    let _other = sidecar(
        &mesh,
        other_ip,
        "other",
        None,
        Some(SocketAddr::new(vip, 80)),
        &[("se.yaml", to_egress)],
    )
    .await;

    let via = |from: IpAddr, host: &'static str, path: &'static str| async move {
        let o = curl(&[
            "-s",
            "-w",
            "\n%{http_code}",
            "-H",
            &format!("Host: {host}"),
            &format!("http://{from}:15001{path}"),
        ])
        .await;
        let (c, b) = status_body(&o);
        (c, b.to_owned())
    };
    assert_eq!(
        via(app_ip, "api.external.test", "/hello").await,
        (200, "api saw /hello client_cert=no".to_owned())
    );
    assert_eq!(
        via(app_ip, "secure.external.test", "/s").await,
        (200, "secure saw /s client_cert=yes".to_owned())
    );
    // Not allowed for this principal.
    assert_eq!(via(other_ip, "api.external.test", "/hello").await.0, 403);
    // Allowed by policy but not in the registry.
    let (code, body) = via(app_ip, "unknown.example", "/").await;
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("REGISTRY_ONLY"), "{body}");
    // The server certificate does not carry the DestinationRule's subjectAltNames.
    let (code, body) = via(app_ip, "wrongsan.external.test", "/").await;
    assert_eq!(code, 503, "{body}");

    let (_, stats) = get_text(SocketAddr::new(egress_ip, 15020), "/stats/prometheus").await;
    assert!(
        metric_line(
            &stats,
            "istio_requests_total",
            &[
                "destination_service=\"api.external.test\"",
                "response_code=\"200\"",
                "reporter=\"source\""
            ]
        )
        .is_some(),
        "{stats}"
    );
    assert!(
        metric_line(
            &stats,
            "istio_requests_total",
            &[
                "destination_service=\"unknown\"",
                "response_code=\"502\"",
                "response_flags=\"NR\""
            ]
        )
        .is_some(),
        "{stats}"
    );
}

/// Weighted destinations split traffic by weight.
#[tokio::test]
async fn weighted_routes_split_by_weight() {
    if !have("curl") {
        return;
    }
    const T: u8 = 46;
    let mesh = Mesh::new();
    http_app(SocketAddr::new(ip(T, 9), 8080), "v1").await;
    http_app(SocketAddr::new(ip(T, 10), 8080), "v2").await;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  hosts: ['*']\n  gateways: [web]\n  http:\n  - route:\n    - {{destination: {{host: v1.example.com, port: {{number: 8080}}}}, weight: 75}}\n    - {{destination: {{host: v2.example.com, port: {{number: 8080}}}}, weight: 25}}\n"
    );
    let se = [
        service_entry(
            "v1",
            "v1.example.com",
            8080,
            "http",
            "MESH_EXTERNAL",
            ip(T, 9),
            "",
            8080,
        ),
        service_entry(
            "v2",
            "v2.example.com",
            8080,
            "http",
            "MESH_EXTERNAL",
            ip(T, 10),
            "",
            8080,
        ),
    ]
    .join("---\n");
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        ip(T, 1),
        "ingress",
        &[("gw.yaml", yaml), ("se.yaml", se)],
        "",
    )
    .await;
    let mut counts = BTreeMap::new();
    for _ in 0..20 {
        let (code, body) = gw.http_get(8080, "/w").await;
        assert_eq!(code, 200);
        *counts
            .entry(body.split(' ').next().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(counts.get("v1"), Some(&15), "{counts:?}");
    assert_eq!(counts.get("v2"), Some(&5), "{counts:?}");
    // Response sizes: 15 answers of 23 bytes ("v1 saw /w xff=127.0.0.1") for v1.
    let (_, stats) = get_text(SocketAddr::new(ip(T, 1), 15020), "/stats/prometheus").await;
    let sum = metric_line(
        &stats,
        "istio_response_bytes_sum",
        &["destination_service=\"v1.example.com\""],
    )
    .unwrap_or_else(|| panic!("{stats}"));
    assert!(sum.ends_with(" 345"), "{sum}");
    let count = metric_line(
        &stats,
        "istio_request_bytes_count",
        &["destination_service=\"v2.example.com\""],
    )
    .unwrap_or_else(|| panic!("{stats}"));
    assert!(count.ends_with(" 5"), "{count}");
}

/// An app whose answers depend on the path and on how often the path was asked:
/// `fail1` fails the first request with 503, `slow1` stalls the first request, `slowall`
/// stalls every request; otherwise `attempt <n>`.
async fn flaky_app(addr: SocketAddr) {
    use std::collections::HashMap;
    use std::sync::Mutex;
    let seen: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let path = req.uri().path().to_owned();
                        let n = {
                            let mut m = seen.lock().unwrap();
                            let c = m.entry(path.clone()).or_insert(0);
                            *c += 1;
                            *c
                        };
                        if path.contains("slowall") || (path.contains("slow1") && n == 1) {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                        }
                        let mut r = response(format!("attempt {n}"));
                        if path.contains("fail1") && n == 1 {
                            *r.status_mut() = hyper::StatusCode::SERVICE_UNAVAILABLE;
                        }
                        Ok::<_, Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// Retries (5xx, per-try timeout, connect failure) and the route timeout.
#[tokio::test]
async fn retries_and_timeouts() {
    if !have("curl") {
        return;
    }
    const T: u8 = 47;
    let mesh = Mesh::new();
    flaky_app(SocketAddr::new(ip(T, 9), 8080)).await;
    let route = |prefix: &str, host: &str, extra: &str| {
        format!(
            "  - match: [{{uri: {{prefix: {prefix}}}}}]\n    route: [{{destination: {{host: {host}, port: {{number: 8080}}}}}}]\n{extra}"
        )
    };
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  hosts: ['*']\n  gateways: [web]\n  http:\n{}{}{}{}",
        route(
            "/retry",
            "flaky.example.com",
            "    retries: {attempts: 2, perTryTimeout: 500ms, retryOn: 5xx}\n"
        ),
        route(
            "/timeout",
            "flaky.example.com",
            "    timeout: 300ms\n    retries: {attempts: 0}\n"
        ),
        route(
            "/plain",
            "flaky.example.com",
            "    retries: {attempts: 0}\n"
        ),
        route(
            "/down",
            "down.example.com",
            "    retries: {attempts: 2, retryOn: connect-failure}\n"
        ),
    );
    let se = [
        service_entry(
            "flaky",
            "flaky.example.com",
            8080,
            "http",
            "MESH_EXTERNAL",
            ip(T, 9),
            "",
            8080,
        ),
        // Nothing listens there.
        service_entry(
            "down",
            "down.example.com",
            8080,
            "http",
            "MESH_EXTERNAL",
            ip(T, 10),
            "",
            8080,
        ),
    ]
    .join("---\n");
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        ip(T, 1),
        "ingress",
        &[("gw.yaml", yaml), ("se.yaml", se)],
        "",
    )
    .await;
    assert!(gw.problems().is_empty(), "{:?}", gw.problems());
    assert_eq!(
        gw.http_get(8080, "/retry/fail1").await,
        (200, "attempt 2".to_owned())
    );
    assert_eq!(
        gw.http_get(8080, "/plain/fail1").await,
        (503, "attempt 1".to_owned())
    );
    assert_eq!(
        gw.http_get(8080, "/retry/slow1").await,
        (200, "attempt 2".to_owned())
    );
    assert_eq!(gw.http_get(8080, "/timeout/slowall").await.0, 504);
    let (code, body) = gw.http_get(8080, "/down/x").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("upstream connect error"), "{body}");
    let (_, stats) = get_text(SocketAddr::new(ip(T, 1), 15020), "/stats/prometheus").await;
    for (flags, code) in [("URX", "503"), ("UT", "504")] {
        assert!(
            metric_line(
                &stats,
                "istio_requests_total",
                &[
                    &format!("response_flags=\"{flags}\""),
                    &format!("response_code=\"{code}\"")
                ]
            )
            .is_some(),
            "{flags}: {stats}"
        );
    }
}

/// Egress PASSTHROUGH: the client's own TLS goes to the external server chosen by SNI (a
/// ServiceEntry host, no VirtualService); an SNI outside the registry is refused under
/// REGISTRY_ONLY.
#[tokio::test]
async fn egress_passthrough_by_sni_under_registry_only() {
    if !have("curl") {
        return;
    }
    const T: u8 = 48;
    let mesh = Mesh::new();
    let ext = Pki::new("external CA");
    let leaf = ext.leaf("ext", &["ext.example.org"], false);
    tls_app(SocketAddr::new(ip(T, 9), 443), "ext", &leaf, None).await;
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(&tmp.path().join("ca.pem"), &ext.ca_pem())
        .display()
        .to_string();
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: egress, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: egressgateway}}\n  servers:\n  - port: {{number: 443, name: tls, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: PASSTHROUGH}}\n\
         \x20 - port: {{number: 15443, name: tls-mesh, protocol: TLS}}\n    hosts: ['*']\n    tls: {{mode: ISTIO_MUTUAL}}\n"
    );
    let se = service_entry(
        "ext",
        "ext.example.org",
        443,
        "tls",
        "MESH_EXTERNAL",
        ip(T, 9),
        "",
        443,
    );
    let _gw = gateway(
        &mesh,
        GatewayMode::Egress,
        ip(T, 5),
        "egress",
        &[("gw.yaml", yaml), ("se.yaml", se)],
        "outboundTrafficPolicy: REGISTRY_ONLY\n",
    )
    .await;
    let o = curl_https("ext.example.org", 443, ip(T, 5), "/e", &["--cacert", &ca]).await;
    assert_eq!(
        status_body(&o),
        (200, "ext saw /e client_cert=no"),
        "{}",
        o.stderr
    );
    let o = curl_https("elsewhere.example.org", 443, ip(T, 5), "/e", &["-k"]).await;
    assert_ne!(o.code, 0, "{}", o.stdout);

    // The app's own TLS through its sidecar: carried inside mesh mTLS to the ISTIO_MUTUAL TLS
    // server, routed on the inner SNI, and still end to end (curl verifies the external
    // server's certificate).
    let vip: IpAddr = "10.248.0.1".parse().unwrap();
    let to_egress = format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: via-egress, namespace: {NS}}}\n\
         spec:\n  hosts: [ext.example.org]\n  addresses: [{vip}]\n  ports: [{{number: 443, name: tls}}]\n  location: MESH_INTERNAL\n  resolution: STATIC\n\
         \x20 endpoints: [{{address: {}, serviceAccount: egress, ports: {{tls: 15443}}}}]\n",
        ip(T, 5)
    );
    let _app = sidecar(
        &mesh,
        ip(T, 1),
        "app",
        None,
        Some(SocketAddr::new(vip, 443)),
        &[("se.yaml", to_egress)],
    )
    .await;
    let o = curl_https(
        "ext.example.org",
        15001,
        ip(T, 1),
        "/via-mesh",
        &["--cacert", &ca],
    )
    .await;
    assert_eq!(
        status_body(&o),
        (200, "ext saw /via-mesh client_cert=no"),
        "{}",
        o.stderr
    );
}

/// Draining closes idle keep-alive connections (graceful shutdown) instead of waiting for the
/// drain deadline; the run ends with nothing abandoned.
#[tokio::test]
async fn drain_closes_idle_keepalive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const T: u8 = 49;
    let mesh = Mesh::new();
    http_app(SocketAddr::new(ip(T, 9), 8080), "backend").await;
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8080, name: http, protocol: HTTP}}\n    hosts: ['*']\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  hosts: ['*']\n  gateways: [web]\n  http: [{{route: [{{destination: {{host: backend.example.com, port: {{number: 8080}}}}}}]}}]\n"
    );
    let se = service_entry(
        "backend",
        "backend.example.com",
        8080,
        "http",
        "MESH_EXTERNAL",
        ip(T, 9),
        "",
        8080,
    );
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        ip(T, 1),
        "ingress",
        &[("gw.yaml", yaml), ("se.yaml", se)],
        "drainDeadline: 60s\n",
    )
    .await;
    let mut s = tokio::net::TcpStream::connect((ip(T, 1), 8080))
        .await
        .unwrap();
    s.write_all(b"GET /k HTTP/1.1\r\nHost: a.example.com\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with("backend saw /k xff=127.0.0.1"), "{head}");
    assert_eq!(gw.shared.drain.active(), 1);
    gw.shared.drain.start();
    // The idle keep-alive connection is closed by the gateway (well before the 60s deadline).
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .expect("the gateway closes the idle connection")
        .unwrap();
    let abandoned = tokio::time::timeout(Duration::from_secs(10), gw._task)
        .await
        .expect("the run ends")
        .unwrap()
        .unwrap();
    assert_eq!(abandoned, 0);
    assert!(
        get_text(SocketAddr::new(ip(T, 1), 15021), "/healthz/ready")
            .await
            .0
            != 200
    );
}

/// A body of one data frame then trailers.
struct WithTrailers {
    data: Option<Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl hyper::body::Body for WithTrailers {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Infallible>>> {
        use hyper::body::Frame;
        if let Some(d) = self.data.take() {
            return std::task::Poll::Ready(Some(Ok(Frame::data(d))));
        }
        std::task::Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// An h2c (HTTP/2 prior knowledge) app answering `<name> saw <path> over <version>` with a
/// `grpc-status: 0` trailer, as a gRPC server does.
async fn h2_app(addr: SocketAddr, name: &'static str) {
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = service_fn(move |req: hyper::Request<Incoming>| async move {
                    let text = format!("{name} saw {} over {:?}", req.uri().path(), req.version());
                    let mut trailers = http::HeaderMap::new();
                    trailers.insert("grpc-status", "0".parse().unwrap());
                    Ok::<_, Infallible>(hyper::Response::new(WithTrailers {
                        data: Some(Bytes::from(text)),
                        trailers: Some(trailers),
                    }))
                });
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(TokioIo::new(s), svc)
                        .await;
            });
        }
    });
}

/// gRPC-style HTTP/2 through the ingress: an HTTP/2 client over TLS (ALPN h2) -> the gateway
/// -> HTTP/2 over mesh mTLS (`istio-h2`) to the app's sidecar -> the h2c app; the response
/// trailers come back.
#[tokio::test]
async fn ingress_http2_to_a_grpc_service_keeps_trailers() {
    if !have("curl") {
        return;
    }
    use http_body_util::BodyExt;
    const T: u8 = 50;
    let mesh = Mesh::new();
    let app = SocketAddr::new(ip(T, 102), APP_PORT);
    h2_app(app, "grpc-app").await;
    let _pod = sidecar(&mesh, ip(T, 2), "app", Some(app), None, &[]).await;
    let edge = Pki::new("edge CA");
    let leaf = edge.leaf("api", &["api.example.com"], false);
    let tmp = tempfile::tempdir().unwrap();
    let cert = write(&tmp.path().join("tls.crt"), &leaf.cert);
    let key = write(&tmp.path().join("tls.key"), &leaf.key);
    let yaml = format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: 8443, name: https, protocol: HTTPS}}\n    hosts: [api.example.com]\n\
         \x20   tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}\n\
         ---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{name: web, namespace: {NS}}}\n\
         spec:\n  hosts: [api.example.com]\n  gateways: [web]\n  http: [{{route: [{{destination: {{host: grpc-app}}}}]}}]\n",
        cert.display(),
        key.display()
    );
    let se = service_entry(
        "grpc-app",
        &format!("grpc-app.{NS}.svc.cluster.local"),
        APP_PORT,
        "grpc",
        "MESH_INTERNAL",
        ip(T, 2),
        "app",
        15006,
    );
    let gw = gateway(
        &mesh,
        GatewayMode::Ingress,
        ip(T, 1),
        "ingress",
        &[("gw.yaml", yaml), ("se.yaml", se)],
        "",
    )
    .await;
    assert!(gw.problems().is_empty(), "{:?}", gw.problems());

    let mut roots = rustls::RootCertStore::empty();
    roots.add(edge.issuer.der().clone()).unwrap();
    let mut cfg =
        rustls::ClientConfig::builder_with_provider(warden_identity::tls::crypto_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect((ip(T, 1), 8443))
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(
            rustls::pki_types::ServerName::try_from("api.example.com").unwrap(),
            tcp,
        )
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    for i in 0..3 {
        let req = hyper::Request::builder()
            .method("POST")
            .uri(format!("https://api.example.com/pkg.Service/Call{i}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(Full::new(Bytes::from_static(b"\0\0\0\0\0")))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let collected = resp.into_body().collect().await.unwrap();
        let trailers = collected.trailers().cloned();
        let body = collected.to_bytes();
        assert_eq!(
            body,
            format!("grpc-app saw /pkg.Service/Call{i} over HTTP/2.0")
        );
        assert_eq!(
            trailers
                .as_ref()
                .and_then(|t| t.get("grpc-status"))
                .map(|v| v.to_str().unwrap().to_owned()),
            Some("0".to_owned()),
            "trailers: {trailers:?}"
        );
    }
    let (_, stats) = get_text(SocketAddr::new(ip(T, 1), 15020), "/stats/prometheus").await;
    let line = metric_line(
        &stats,
        "istio_requests_total",
        &[
            "request_protocol=\"grpc\"",
            "destination_principal=\"spiffe://cluster.local/ns/test/sa/app\"",
        ],
    )
    .unwrap_or_else(|| panic!("{stats}"));
    assert!(line.ends_with(" 3"), "{line}");
}
