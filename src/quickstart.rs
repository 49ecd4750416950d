//! `warden quickstart`: a whole mesh on loopback in one process, with no setup.
//!
//! - the control plane ([`warden_control::ControlPlane`]): the mesh CA with a self-signed root in
//!   a temporary state directory, and the config push on the same port, serving a config
//!   directory with the demo's Istio YAML;
//! - two sidecars ([`warden_proxy`]), `demo/frontend` and `demo/backend`, each on its own
//!   loopback address (its "pod IP"), with static original destinations instead of iptables;
//!   each gets its certificate from the control plane's CA with a service-account token (signed
//!   with the control plane's token key, as `warden control token` does) and its config from
//!   the control plane's push API;
//! - two tiny HTTP apps: `backend` answers, `frontend` calls `backend` through its sidecar.
//!
//! It sends an allowed and a denied request from frontend to backend through mTLS, prints what
//! the backend's sidecar decided and which policy decided it (from the sidecar's access log),
//! then keeps the mesh running and prints curl commands until Ctrl-C (`--once`: exit after the
//! demo, 0 when both requests got the expected answer).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use bytes::Bytes;
use clap::Args;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use warden_control::client::DEFAULT_SERVER_NAME;
use warden_control::store::FileStore;
use warden_control::{ControlConfig, ControlPlane, RunningControlPlane, StatePaths};
use warden_identity::tls::{TlsProvider, TlsSettings};
use warden_identity::{SpiffeId, TrustDomain};
use warden_policy::jwt::k8s::SaTokenSpec;
use warden_proxy::orig_dst::StaticOriginalDst;
use warden_proxy::{Listeners, Shared, SidecarConfig};

/// Flags of `warden quickstart`.
#[derive(Debug, Args)]
pub struct QuickstartArgs {
    /// Exit after the demo requests (0 when the allowed request got 200 and the denied one 403)
    /// instead of keeping the mesh running until Ctrl-C.
    #[arg(long)]
    once: bool,
    /// The second octet of the loopback network used: the mesh runs on 127.<N>.0.0/16
    /// (control plane .0.1, frontend pod .0.10, backend pod .0.20).
    #[arg(long, default_value_t = 77, value_name = "N")]
    net: u8,
    /// Keep the temporary directory (state, certificates, config, log) after exit.
    #[arg(long)]
    keep: bool,
}

const NAMESPACE: &str = "demo";
const APP_PORT: u16 = 8080;

/// The addresses of the demo mesh.
#[derive(Debug, Clone, Copy)]
struct Net(u8);

impl Net {
    fn ip(self, last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, self.0, 0, last))
    }
    fn control(self) -> SocketAddr {
        SocketAddr::new(self.ip(1), 15012)
    }
    fn status(self) -> SocketAddr {
        SocketAddr::new(self.ip(1), 15014)
    }
    /// The backend service's virtual IP (what the frontend app dials).
    fn backend_vip(self) -> SocketAddr {
        SocketAddr::new(self.ip(200), APP_PORT)
    }
}

/// One workload: its pod address, its app address, its identity.
#[derive(Debug, Clone)]
struct Workload {
    name: &'static str,
    pod: IpAddr,
    app: SocketAddr,
    identity: SpiffeId,
}

impl Workload {
    fn new(net: Net, name: &'static str, pod: u8) -> anyhow::Result<Self> {
        Ok(Workload {
            name,
            pod: net.ip(pod),
            app: SocketAddr::new(net.ip(pod + 100), APP_PORT),
            identity: SpiffeId::istio(&TrustDomain::default(), NAMESPACE, name)?,
        })
    }
    fn outbound(&self) -> SocketAddr {
        SocketAddr::new(self.pod, 15001)
    }
    fn inbound(&self) -> SocketAddr {
        SocketAddr::new(self.pod, 15006)
    }
    fn health(&self) -> SocketAddr {
        SocketAddr::new(self.pod, 15021)
    }
}

/// The demo's Istio YAML: STRICT mTLS, the backend service, and two policies on the backend.
fn demo_config(net: Net, backend: &Workload) -> Vec<(&'static str, String)> {
    let vip = net.backend_vip();
    vec![
        (
            "peer-authentication.yaml",
            format!(
                "# Only mTLS into the demo namespace.\n\
                 apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
                 metadata: {{name: default, namespace: {NAMESPACE}}}\nspec:\n  mtls: {{mode: STRICT}}\n"
            ),
        ),
        (
            "backend-service.yaml",
            format!(
                "# The backend service: its virtual IP, port, and endpoint (the backend pod's sidecar).\n\
                 apiVersion: networking.istio.io/v1\nkind: ServiceEntry\n\
                 metadata: {{name: backend, namespace: {NAMESPACE}}}\nspec:\n\
                 \x20 hosts: [backend.{NAMESPACE}.svc.cluster.local]\n\
                 \x20 addresses: [{vip_ip}]\n\
                 \x20 location: MESH_INTERNAL\n  resolution: STATIC\n\
                 \x20 ports: [{{number: {port}, name: http}}]\n\
                 \x20 endpoints: [{{address: {pod}, serviceAccount: backend, ports: {{http: 15006}}}}]\n",
                vip_ip = vip.ip(),
                port = vip.port(),
                pod = backend.pod,
            ),
        ),
        (
            "backend-policies.yaml",
            format!(
                "# frontend may GET /api/* on backend; nobody reaches /admin.\n\
                 apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: backend-allow-frontend, namespace: {NAMESPACE}}}\nspec:\n\
                 \x20 selector: {{matchLabels: {{app: backend}}}}\n  action: ALLOW\n  rules:\n\
                 \x20 - from:\n    - source: {{principals: [\"cluster.local/ns/{NAMESPACE}/sa/frontend\"]}}\n\
                 \x20   to:\n    - operation: {{methods: [GET], paths: [\"/api/*\", \"/admin/*\"]}}\n\
                 ---\n\
                 apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
                 metadata: {{name: backend-deny-admin, namespace: {NAMESPACE}}}\nspec:\n\
                 \x20 selector: {{matchLabels: {{app: backend}}}}\n  action: DENY\n  rules:\n\
                 \x20 - to:\n    - operation: {{ports: [\"{port}\"], paths: [\"/admin/*\"]}}\n",
                port = APP_PORT
            ),
        ),
    ]
}

/// One line of a sidecar's access log (target `warden::access`), as fields.
type AccessEvent = BTreeMap<String, String>;

/// A tracing layer that hands every access-log event to the demo.
struct AccessCapture(mpsc::UnboundedSender<AccessEvent>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for AccessCapture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if event.metadata().target() != "warden::access" {
            return;
        }
        struct Fields(AccessEvent);
        impl tracing::field::Visit for Fields {
            fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
                self.0.insert(field.name().to_owned(), value.to_owned());
            }
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.insert(field.name().to_owned(), format!("{value:?}"));
            }
        }
        let mut fields = Fields(AccessEvent::new());
        event.record(&mut fields);
        let _ = self.0.send(fields.0);
    }
}

/// Runs `warden quickstart`.
pub fn run(args: QuickstartArgs, log_filter: Option<&str>) -> anyhow::Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("warden-quickstart-")
        .tempdir()
        .context("creating a temporary directory")?;
    let dir = tmp.path().to_owned();
    let log_path = dir.join("warden.log");
    let log_file = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let (access_tx, access_rx) = mpsc::unbounded_channel();
    let filter = tracing_subscriber::EnvFilter::new(log_filter.unwrap_or("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(std::sync::Mutex::new(log_file))
                .with_filter(filter),
        )
        .with(AccessCapture(access_tx))
        .try_init()
        .context("installing the log subscriber")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warden-quickstart")
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(mesh(args.once, Net(args.net), &dir, &log_path, access_rx));
    if args.keep {
        let kept = tmp.keep();
        println!("kept {}", kept.display());
    }
    outcome
}

async fn mesh(
    once: bool,
    net: Net,
    dir: &Path,
    log_path: &Path,
    mut access: mpsc::UnboundedReceiver<AccessEvent>,
) -> anyhow::Result<()> {
    let frontend = Workload::new(net, "frontend", 10)?;
    let backend = Workload::new(net, "backend", 20)?;

    // The config directory the control plane serves.
    let config_dir = dir.join("config");
    std::fs::create_dir_all(&config_dir)?;
    for (name, text) in demo_config(net, &backend) {
        std::fs::write(config_dir.join(name), text)?;
    }

    // The control plane: CA + push on one port, status beside it.
    let control = start_control_plane(net, dir, &config_dir).await?;
    let state = ControlConfig::new(dir.join("control-state")).paths();

    // The apps first (a sidecar forwards to them), then the sidecars.
    let _backend_app = spawn_app(backend.app, App::Backend).await?;
    let _frontend_app = spawn_app(
        frontend.app,
        App::Frontend {
            via: frontend.outbound(),
            backend: net.backend_vip(),
        },
    )
    .await?;
    let mut sidecars = Vec::new();
    for (w, static_dst) in [
        (&frontend, (frontend.outbound(), net.backend_vip())),
        (
            &backend,
            (backend.inbound(), SocketAddr::new(backend.pod, APP_PORT)),
        ),
    ] {
        let token = write_token(&state, w, dir)?;
        sidecars.push(start_sidecar(w, dir, net, &state.root_cert, &token, static_dst).await?);
    }
    for w in [&frontend, &backend] {
        wait_ready(w).await?;
    }

    print_mesh(net, &frontend, &backend, &config_dir, log_path);

    // The demo: an allowed and a denied request, frontend -> backend, through mTLS.
    let cases = [
        ("/api/hello", StatusCode::OK),
        ("/admin/users", StatusCode::FORBIDDEN),
    ];
    let mut all_as_expected = true;
    for (i, (path, expected)) in cases.iter().enumerate() {
        let (status, body) = http_get(frontend.app, &format!("/call{path}"))
            .await
            .with_context(|| format!("calling the frontend app at {}", frontend.app))?;
        let seen = access_events(&mut access, path).await;
        println!();
        println!(
            "{}. frontend -> backend: GET {path}   (curl http://{}/call{path})",
            i + 1,
            frontend.app
        );
        match &seen.outbound {
            Some(e) => println!(
                "   frontend's sidecar: {} -> {} over {}, peer verified as {} ({})",
                frontend.outbound(),
                e.get("dst").map_or("-", String::as_str),
                e.get("security").map_or("-", String::as_str),
                e.get("peer_principal").map_or("-", String::as_str),
                e.get("outcome").map_or("-", String::as_str),
            ),
            None => println!(
                "   frontend's sidecar {} sent it over mTLS to backend's sidecar {} (expecting {})",
                frontend.outbound(),
                backend.inbound(),
                backend.identity
            ),
        }
        match &seen.inbound {
            Some(e) => {
                println!(
                    "   backend's sidecar: peer {} over {} -> {}",
                    e.get("principal").map_or("-", String::as_str),
                    if e.get("principal").is_some_and(|p| p != "-") {
                        "mTLS"
                    } else {
                        "plaintext"
                    },
                    e.get("status").map_or("-", String::as_str),
                );
                println!(
                    "   decision: {}",
                    e.get("decision").map_or("(none logged)", String::as_str)
                );
            }
            None => println!(
                "   backend's sidecar logged no decision (see {})",
                log_path.display()
            ),
        }
        println!("   answer: {} {}", status.as_u16(), body.trim());
        let ok = status == *expected;
        if !ok {
            println!("   UNEXPECTED: expected {}", expected.as_u16());
        }
        all_as_expected &= ok;
    }
    println!();
    print_status(&control, net).await;

    if once {
        shutdown(sidecars, control).await;
        anyhow::ensure!(
            all_as_expected,
            "the demo requests did not get the expected answers (log: {})",
            log_path.display()
        );
        return Ok(());
    }

    print_try_it(net, &frontend, &backend, &config_dir);
    let mut last_print = tokio::time::Instant::now();
    loop {
        tokio::select! {
            r = tokio::signal::ctrl_c() => {
                r.context("waiting for Ctrl-C")?;
                break;
            }
            Some(e) = access.recv() => {
                if e.get("protocol").map(String::as_str) == Some("http") {
                    println!(
                        "[backend sidecar] {} {} from {} -> {}: {}",
                        e.get("method").map_or("-", String::as_str),
                        e.get("path").map_or("-", String::as_str),
                        e.get("principal").map_or("-", String::as_str),
                        e.get("status").map_or("-", String::as_str),
                        e.get("decision").map_or("-", String::as_str),
                    );
                } else if e.contains_key("refused") {
                    println!(
                        "[sidecar] connection to {} refused: {}",
                        e.get("dst").map_or("-", String::as_str),
                        e.get("refused").map_or("-", String::as_str),
                    );
                }
                last_print = tokio::time::Instant::now();
            }
            _ = tokio::time::sleep(Duration::from_secs(60)) => {
                if last_print.elapsed() >= Duration::from_secs(60) {
                    print_try_it(net, &frontend, &backend, &config_dir);
                    last_print = tokio::time::Instant::now();
                }
            }
        }
    }
    println!("stopping the mesh");
    shutdown(sidecars, control).await;
    Ok(())
}

/// The proxies subscribed to the control plane, as `warden control status` shows them (once
/// both have ACKed, or after 5 s).
async fn print_status(control: &RunningControlPlane, net: Net) {
    let Some(push) = control.push() else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut proxies = push.proxies();
    while !(proxies.len() == 2 && proxies.iter().all(|p| p.sync_state() == "SYNCED"))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxies = push.proxies();
    }
    println!(
        "Proxies subscribed to the control plane (`warden control status --debug-addr {}`):",
        net.status()
    );
    for line in warden_control::status::render_table(&proxies).lines() {
        println!("  {line}");
    }
}

async fn start_control_plane(
    net: Net,
    dir: &Path,
    config_dir: &Path,
) -> anyhow::Result<RunningControlPlane> {
    let mut config = ControlConfig::new(dir.join("control-state"));
    config.listen = net.control();
    config.debug_listen = Some(net.status());
    config.ip_sans.push(net.control().ip());
    config.drain_timeout = Duration::from_secs(2);
    let config_dir = config_dir.to_owned();
    let (cp, store) = tokio::task::spawn_blocking(move || {
        let store = FileStore::open(&config_dir, None)?;
        let cp = ControlPlane::open(config)?;
        anyhow::Ok((cp, Arc::new(store)))
    })
    .await??;
    let running = cp
        .with_config_source(store.as_ref())
        .start()
        .await
        .with_context(|| format!("starting the control plane on {}", net.control()))?;
    // The store lives as long as its watcher task (until the process exits).
    store.watch(Duration::from_millis(200));
    Ok(running)
}

/// A service-account token for `w`, signed with the control plane's token key (as the
/// Kubernetes API server would project one into the pod), written where its sidecar reads it.
fn write_token(state: &StatePaths, w: &Workload, dir: &Path) -> anyhow::Result<PathBuf> {
    let spec = SaTokenSpec {
        // The sidecar re-reads it for every renewal: valid as long as a demo may run.
        ttl: Duration::from_secs(7 * 24 * 3600),
        ..SaTokenSpec::new(NAMESPACE, w.name)
    };
    let token = warden_control::token_key::mint_token(state, &spec, SystemTime::now())?;
    let path = dir.join(format!("{}-token", w.name));
    std::fs::write(&path, token).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// A running in-process sidecar.
struct Sidecar {
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts the sidecar of `w`: its certificate from the control plane's CA (with its token),
/// its config pushed by the control plane, `listener` standing for connections to `target`.
async fn start_sidecar(
    w: &Workload,
    dir: &Path,
    net: Net,
    root_cert: &Path,
    token: &Path,
    (listener, target): (SocketAddr, SocketAddr),
) -> anyhow::Result<Sidecar> {
    let path = dir.join(format!("{}-sidecar.yaml", w.name));
    let yaml = format!(
        "identity: {{namespace: {NAMESPACE}, serviceAccount: {name}, podName: {name}-1, labels: {{app: {name}}}}}\n\
         certificates: {{caAddress: \"{cp}\", tokenFile: {token}, rootCert: {root}, caServerName: {DEFAULT_SERVER_NAME}}}\n\
         config: {{controlPlane: \"{cp}\"}}\n\
         reloadInterval: 200ms\n\
         bindAddress: {pod}\n\
         adminAddress: {pod}\n\
         drainDeadline: 1s\n\
         inbound: {{appHost: {app}}}\n",
        name = w.name,
        cp = net.control(),
        token = token.display(),
        root = root_cert.display(),
        pod = w.pod,
        app = w.app.ip(),
    );
    std::fs::write(&path, &yaml)?;
    // The file alone: the quickstart ignores POD_NAMESPACE and friends of the environment.
    let config = SidecarConfig::from_parts(Some((&path, &yaml)), &|_: &str| None)?;
    let tls = TlsProvider::new(TlsSettings::default())?;
    let orig = Arc::new(StaticOriginalDst::new().with(listener, target));
    let shared = Arc::new(Shared::new(config, tls, orig, None));
    let listeners = Listeners::bind(&shared)
        .await
        .with_context(|| format!("starting the {} sidecar", w.name))?;
    let s = shared.clone();
    let name = w.name;
    let task = tokio::spawn(async move {
        if let Err(e) = warden_proxy::run(s, listeners).await {
            eprintln!("the {name} sidecar stopped: {e}");
        }
    });
    Ok(Sidecar { shared, task })
}

async fn wait_ready(w: &Workload) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok((status, _)) = http_get(w.health(), "/healthz/ready").await
            && status == StatusCode::OK
        {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "the {} sidecar is not ready after 30 s (http://{}/healthz/ready)",
            w.name,
            w.health()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn shutdown(sidecars: Vec<Sidecar>, control: RunningControlPlane) {
    for s in &sidecars {
        s.shared.drain.start();
    }
    for s in sidecars {
        let _ = tokio::time::timeout(Duration::from_secs(5), s.task).await;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), control.shutdown()).await;
}

/// What the two sidecars logged about one demo request.
#[derive(Debug, Default)]
struct Seen {
    /// The backend sidecar's inbound HTTP request event.
    inbound: Option<AccessEvent>,
    /// The frontend sidecar's outbound connection event (logged when the connection closes).
    outbound: Option<AccessEvent>,
}

/// Collects the access-log events of the request for `path`, for up to 3 s.
async fn access_events(access: &mut mpsc::UnboundedReceiver<AccessEvent>, path: &str) -> Seen {
    let mut seen = Seen::default();
    let wait = async {
        while let Some(e) = access.recv().await {
            let field = |k: &str| e.get(k).map(String::as_str);
            if field("direction") == Some("inbound")
                && field("protocol") == Some("http")
                && field("path") == Some(path)
            {
                seen.inbound = Some(e);
            } else if field("direction") == Some("outbound") {
                seen.outbound = Some(e);
            }
            if seen.inbound.is_some() && seen.outbound.is_some() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(3), wait).await;
    seen
}

/// The demo apps.
#[derive(Debug, Clone, Copy)]
enum App {
    /// Answers every request with a greeting naming the request.
    Backend,
    /// `GET /call/<path>`: calls the backend service at `backend` through its sidecar's
    /// outbound listener `via` (where iptables would have sent it), and answers with the
    /// backend's status and body.
    Frontend {
        via: SocketAddr,
        backend: SocketAddr,
    },
}

async fn spawn_app(addr: SocketAddr, app: App) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the demo app on {addr}"))?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                    answer(app, req)
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    }))
}

async fn answer(
    app: App,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let text = |status: StatusCode, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r
    };
    Ok(match app {
        App::Backend => text(
            StatusCode::OK,
            format!(
                "hello from backend: {} {}\n",
                req.method(),
                req.uri().path()
            ),
        ),
        App::Frontend { via, backend } => match req.uri().path().strip_prefix("/call") {
            Some(path) if path.starts_with('/') => match http_get_via(via, backend, path).await {
                Ok((status, body)) => text(status, body),
                Err(e) => text(
                    StatusCode::BAD_GATEWAY,
                    format!("frontend could not reach backend: {e:#}\n"),
                ),
            },
            _ => text(
                StatusCode::NOT_FOUND,
                "frontend: try GET /call/api/hello or /call/admin/users\n".to_owned(),
            ),
        },
    })
}

/// `GET path` to `addr`: status and body.
async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(StatusCode, String)> {
    http_get_via(addr, addr, path).await
}

/// `GET path` for `host`, over a connection to `via`.
async fn http_get_via(
    via: SocketAddr,
    host: SocketAddr,
    path: &str,
) -> anyhow::Result<(StatusCode, String)> {
    let exchange = async {
        let tcp = TcpStream::connect(via).await?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(http::header::HOST, host.to_string())
            .body(Full::new(Bytes::new()))?;
        let resp = send.send_request(req).await?;
        let status = resp.status();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("GET {path} via {via}: no answer within 10 s"))?
}

fn print_mesh(net: Net, frontend: &Workload, backend: &Workload, config_dir: &Path, log: &Path) {
    println!(
        "Warden quickstart: a mesh on loopback (127.{}.0.0/16), all in this process",
        net.0
    );
    println!();
    println!(
        "  control plane  {}   mesh CA (self-signed root, trust domain cluster.local) and config push",
        net.control()
    );
    for w in [frontend, backend] {
        println!(
            "  {:<13}  pod {:<11}  {}   sidecar in {}, out {}, app {}",
            w.name,
            w.pod,
            w.identity,
            w.inbound(),
            w.outbound(),
            w.app
        );
    }
    println!(
        "  service        backend.{NAMESPACE}.svc.cluster.local = {} -> backend pod",
        net.backend_vip()
    );
    println!(
        "  certificates   each sidecar's agent sends a CSR with its service-account token to the CA"
    );
    println!(
        "  config         {} (pushed by the control plane to the sidecars)",
        config_dir.display()
    );
    println!("                 PeerAuthentication {NAMESPACE}/default: STRICT mTLS");
    println!(
        "                 AuthorizationPolicy {NAMESPACE}/backend-allow-frontend: ALLOW frontend to GET /api/* and /admin/*"
    );
    println!(
        "                 AuthorizationPolicy {NAMESPACE}/backend-deny-admin: DENY /admin/* (DENY wins over ALLOW)"
    );
    println!("  log            {}", log.display());
}

fn print_try_it(net: Net, frontend: &Workload, backend: &Workload, config_dir: &Path) {
    let f = frontend.app;
    println!();
    println!("The mesh keeps running; try (Ctrl-C stops it):");
    println!("  curl -i http://{f}/call/api/hello        # allowed: 200 from backend");
    println!("  curl -i http://{f}/call/admin/users      # denied by demo/backend-deny-admin: 403");
    println!("  curl -i http://{f}/call/other            # no ALLOW policy matches: 403");
    println!(
        "  curl -i http://{}/api/hello           # as the frontend app's traffic, straight into its sidecar",
        frontend.outbound()
    );
    println!(
        "  curl -i http://{}/api/hello           # plaintext into the backend sidecar: refused (STRICT)",
        backend.inbound()
    );
    println!(
        "  curl -s http://{}:15000/config_dump | head   # the backend sidecar's admin page",
        backend.pod
    );
    println!(
        "  warden control status --debug-addr {}   # proxies subscribed to the control plane",
        net.status()
    );
    println!(
        "  edit {}/backend-policies.yaml   # the control plane pushes the change to the sidecars within a second",
        config_dir.display()
    );
}
