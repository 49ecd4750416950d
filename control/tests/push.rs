//! The config store and the push API end to end: a real mesh CA, real mTLS on loopback, the real
//! subscriber library, and YAML files on disk.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use warden_control::push::{PushServer, serve};
use warden_control::status;
use warden_control::store::{ConfigSource, FileStore};
use warden_identity::config_client::{ConfigSubscriber, SubscriberOptions, Versioned};
use warden_identity::proto::config::ConfigSnapshot;
use warden_identity::tls::{TlsProvider, TlsSettings, TrustBundle, WorkloadCredentials};
use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};
use warden_policy::config::ConfigBundle;

/// Generous bound for "eventually" waits; the push itself takes milliseconds.
const WAIT: Duration = Duration::from_secs(10);

struct Mesh {
    _dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Mesh {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca =
            CertificateAuthority::self_signed(dir.path().join("ca"), CaOptions::default()).unwrap();
        Mesh { _dir: dir, ca }
    }

    fn id(ns: &str, sa: &str) -> SpiffeId {
        SpiffeId::istio(&TrustDomain::default(), ns, sa).unwrap()
    }

    fn provider(&self, identity: &SpiffeId) -> TlsProvider {
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = warden_identity::keys::csr_pem(&key, identity).unwrap();
        let cert = self.ca.sign_csr(&csr, identity, 3600).unwrap();
        let trust = TrustBundle::from_pem(
            TrustDomain::default(),
            self.ca.root_bundle_pem().as_bytes(),
            "root",
        )
        .unwrap();
        let creds = WorkloadCredentials::from_pem(
            cert.chain_pem.concat().as_bytes(),
            key.serialize_pem().as_bytes(),
            trust,
            "test",
        )
        .unwrap();
        let p = TlsProvider::new(TlsSettings::default()).unwrap();
        p.install(&creds).unwrap();
        p
    }
}

fn istiod() -> SpiffeId {
    Mesh::id("istio-system", "istiod")
}

/// A running push server; dropping it shuts the server down.
struct Running {
    addr: SocketAddr,
    server: PushServer,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn start(mesh: &Mesh, store: &dyn ConfigSource, addr: &str) -> Running {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = PushServer::new(store);
        let (stop, rx) = oneshot::channel();
        let tls = mesh.provider(&istiod());
        let s = server.clone();
        let task = tokio::spawn(async move {
            serve(listener, tls, s, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        });
        Running {
            addr,
            server,
            stop: Some(stop),
            task,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(WAIT, &mut self.task)
            .await
            .expect("graceful shutdown ends the streams")
            .unwrap();
    }
}

/// What the test proxy keeps from a snapshot: the bundle, and the names it got.
struct Got {
    bundle: ConfigBundle,
    names: BTreeSet<String>,
}

fn validate(s: &ConfigSnapshot) -> Result<Got, String> {
    if s.resources.iter().any(|r| r.name == "poison") {
        return Err("resource shop/poison is not acceptable to this proxy".into());
    }
    let labels: Vec<String> = s
        .resources
        .iter()
        .chain(&s.registry)
        .map(|r| format!("{}/{}/{}", r.kind, r.namespace, r.name))
        .collect();
    let bundle = ConfigBundle::from_yaml(
        &s.mesh_config,
        labels.iter().map(String::as_str).zip(
            s.resources
                .iter()
                .chain(&s.registry)
                .map(|r| r.yaml.as_str()),
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok(Got {
        bundle,
        names: labels.into_iter().collect(),
    })
}

fn subscribe(
    mesh: &Mesh,
    addr: SocketAddr,
    ns: &str,
    sa: &str,
    registered_ns: &str,
    labels: &[(&str, &str)],
) -> ConfigSubscriber<Got> {
    let mut opts = SubscriberOptions::new(addr.to_string(), vec![istiod()], registered_ns);
    opts.pod_name = format!("{sa}-pod");
    opts.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect::<HashMap<_, _>>();
    opts.backoff_initial = Duration::from_millis(20);
    opts.backoff_max = Duration::from_millis(200);
    ConfigSubscriber::spawn(mesh.provider(&Mesh::id(ns, sa)), opts, validate)
}

async fn wait_version(sub: &ConfigSubscriber<Got>, min: u64) -> Arc<Versioned<Got>> {
    let mut rx = sub.config();
    tokio::time::timeout(WAIT, async {
        loop {
            if let Some(c) = rx.borrow_and_update().clone()
                && c.version >= min
            {
                return c;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no config version >= {min} within {WAIT:?}"))
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    // Editors' way: write a temporary file, then rename it into place.
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn authz(ns: &str, name: &str, selector: Option<&str>) -> String {
    let sel = selector
        .map(|s| format!("  selector: {{matchLabels: {{app: {s}}}}}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{sel}  rules:\n  - from:\n    - source: {{principals: [\"cluster.local/ns/{ns}/sa/client\"]}}\n"
    )
}

const SERVICE: &str = "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: reviews, namespace: shop}\nspec:\n  hosts: [reviews.shop.svc.cluster.local]\n  addresses: [240.0.0.10]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{number: 9080, name: http}]\n  endpoints: [{address: 10.1.0.5, serviceAccount: reviews}]\n";

#[test]
fn store_reports_invalid_yaml_and_keeps_the_files_last_good_version() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &authz("shop", "allow-client", None));
    write(dir.path(), "b.yaml", SERVICE);
    // Versions counted from 0 here; `FileStore::open` counts from its start time.
    let store = FileStore::open_at(dir.path(), None, 0).unwrap();
    let v1 = store.current();
    assert_eq!(v1.version, 1);
    assert_eq!(v1.security.len(), 1);
    assert_eq!(v1.networking.len(), 1);
    assert!(v1.errors.is_empty(), "{:?}", v1.errors);

    // A bad edit: an invalid CIDR in a.yaml, and a new valid policy in the same file.
    let bad = format!(
        "{}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-bad, namespace: shop}}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {{ipBlocks: [10.0.0.0/33]}}\n",
        authz("shop", "allow-client", None)
    );
    write(dir.path(), "a.yaml", &bad);
    let out = store.reload();
    assert!(
        !out.published,
        "an invalid file must not produce a new snapshot"
    );
    assert_eq!(out.version, 1);
    let msg = format!("{}", dir.path().join("a.yaml").display());
    assert_eq!(out.errors.len(), 1, "{:?}", out.errors);
    assert_eq!(
        out.errors[0],
        format!(
            "{msg}: document 2 (AuthorizationPolicy shop/deny-bad): spec.rules[0].from[0].source.ipBlocks[0]: invalid CIDR \"10.0.0.0/33\""
        )
    );
    let cur = store.current();
    assert_eq!(cur.version, 1);
    assert_eq!(cur.errors, out.errors, "errors are visible on the snapshot");
    let names: Vec<&str> = cur
        .security
        .iter()
        .map(|e| e.resource.metadata().name.as_str())
        .collect();
    assert_eq!(
        names,
        ["allow-client"],
        "the last good a.yaml stays in force, half of the bad one is not applied"
    );
    assert_eq!(cur.networking.len(), 1, "other files are unaffected");

    // A YAML syntax error is reported the same way.
    write(
        dir.path(),
        "a.yaml",
        "apiVersion: security.istio.io/v1\nkind: [\n",
    );
    let out = store.reload();
    assert!(!out.published);
    assert!(out.errors[0].contains("invalid YAML"), "{:?}", out.errors);

    // Fixed: a new version with both policies, no errors.
    let fixed = bad.replace("10.0.0.0/33", "10.0.0.0/8");
    write(dir.path(), "a.yaml", &fixed);
    let out = store.reload();
    assert!(out.published);
    assert_eq!(out.version, 2);
    assert!(out.errors.is_empty());
    assert_eq!(store.current().security.len(), 2);

    // Reloading unchanged files publishes nothing.
    assert!(!store.reload().published);

    // A duplicate in another file is that file's error.
    write(
        dir.path(),
        "c.yaml",
        &authz("shop", "allow-client", Some("x")),
    );
    let out = store.reload();
    assert!(!out.published);
    assert!(
        out.errors[0].contains("is already defined in"),
        "{:?}",
        out.errors
    );

    // Removing a file removes its resources.
    std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
    std::fs::remove_file(dir.path().join("b.yaml")).unwrap();
    let out = store.reload();
    assert!(out.published);
    assert_eq!(out.version, 3);
    assert!(store.current().networking.is_empty());
}

#[test]
fn invalid_mesh_config_keeps_the_last_good_one() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tempfile::tempdir().unwrap();
    let mesh = cfg.path().join("mesh.yaml");
    std::fs::write(&mesh, "rootNamespace: mesh-root\n").unwrap();
    let store = FileStore::open(dir.path(), Some(mesh.clone())).unwrap();
    assert_eq!(store.current().mesh.root_namespace, "mesh-root");
    std::fs::write(&mesh, "outboundTrafficPolicy: {mode: SOMETIMES}\n").unwrap();
    let out = store.reload();
    assert!(!out.published);
    assert!(
        out.errors[0].contains("outboundTrafficPolicy.mode"),
        "{:?}",
        out.errors
    );
    assert_eq!(store.current().mesh.root_namespace, "mesh-root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_receive_only_what_applies_to_them_and_changes_reach_them() {
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "policies.yaml",
        &[
            authz("istio-system", "mesh-wide", None),
            authz("istio-system", "mesh-app-web", Some("web")),
            authz("istio-system", "mesh-app-db", Some("db")),
            authz("shop", "shop-wide", None),
            authz("shop", "shop-web", Some("web")),
            authz("shop", "shop-db", Some("db")),
            authz("other", "other-wide", None),
        ]
        .join("---\n"),
    );
    write(dir.path(), "services.yaml", SERVICE);
    let store = Arc::new(FileStore::open_at(dir.path(), None, 0).unwrap());
    let server = Running::start(&mesh, store.as_ref(), "127.0.0.1:0").await;

    let web = subscribe(&mesh, server.addr, "shop", "web", "shop", &[("app", "web")]);
    let other = subscribe(&mesh, server.addr, "other", "x", "other", &[("app", "web")]);
    let got = wait_version(&web, 1).await;
    assert_eq!(
        got.config.names,
        [
            "AuthorizationPolicy/istio-system/mesh-app-web",
            "AuthorizationPolicy/istio-system/mesh-wide",
            "AuthorizationPolicy/shop/shop-web",
            "AuthorizationPolicy/shop/shop-wide",
            "ServiceEntry/shop/reviews",
        ]
        .into_iter()
        .map(String::from)
        .collect::<BTreeSet<_>>()
    );
    // The pushed registry works on the proxy side.
    let dest = got
        .config
        .bundle
        .registry
        .lookup_addr("240.0.0.10:9080".parse().unwrap())
        .unwrap();
    assert_eq!(
        dest.identities,
        ["spiffe://cluster.local/ns/shop/sa/reviews"]
    );
    let o = wait_version(&other, 1).await;
    assert!(
        o.config
            .names
            .contains("AuthorizationPolicy/other/other-wide")
    );
    assert!(!o.config.names.iter().any(|n| n.contains("/shop/shop-")));

    // Status: both proxies, their identities, synced.
    eventually("both proxies ACKed", || {
        let p = server.server.proxies();
        p.len() == 2 && p.iter().all(|p| p.sync_state() == "SYNCED")
    })
    .await;
    let proxies = server.server.proxies();
    let w = proxies.iter().find(|p| p.namespace == "shop").unwrap();
    assert_eq!(w.identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(w.pod_name, "web-pod");
    assert!(!w.cert_expiry.is_empty());

    // A change in `shop` reaches the shop proxy; the other proxy gets nothing new.
    let mut text = std::fs::read_to_string(dir.path().join("policies.yaml")).unwrap();
    text.push_str(&format!("---\n{}", authz("shop", "shop-new", None)));
    write(dir.path(), "policies.yaml", &text);
    // The watcher finds it (polling).
    let watcher = store.clone().watch(Duration::from_millis(50));
    let got = wait_version(&web, 2).await;
    assert!(
        got.config
            .names
            .contains("AuthorizationPolicy/shop/shop-new")
    );
    // The unaffected proxy stays at version 1 with nothing pushed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(other.current().unwrap().version, 1);
    watcher.abort();

    // A NACK is carried back and visible in status; the proxy keeps its last good config.
    text.push_str(&format!("---\n{}", authz("shop", "poison", None)));
    write(dir.path(), "policies.yaml", &text);
    assert!(store.reload().published);
    eventually("the NACK in status", || {
        server
            .server
            .proxies()
            .iter()
            .any(|p| p.namespace == "shop" && p.sync_state() == "NACK")
    })
    .await;
    let p = server.server.proxies();
    let w = p.iter().find(|p| p.namespace == "shop").unwrap();
    assert_eq!(
        w.last_nack,
        Some((
            3,
            "resource shop/poison is not acceptable to this proxy".into()
        ))
    );
    assert_eq!(w.version_acked, 2);
    assert_eq!(web.current().unwrap().version, 2);
    assert_eq!(web.status().borrow().last_nack.as_ref().unwrap().0, 3);

    // The same through the debug endpoint and the table.
    let debug = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let debug_addr = debug.local_addr().unwrap();
    let (dstop, drx) = oneshot::channel::<()>();
    tokio::spawn(status::serve_debug(
        debug,
        server.server.clone(),
        store.subscribe(),
        async {
            let _ = drx.await;
        },
    ));
    let fetched = status::fetch(debug_addr).await.unwrap();
    assert_eq!(fetched.len(), 2);
    let table = status::render_table(&fetched);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("NAME"), "{table}");
    let shop_line = lines
        .iter()
        .find(|l| l.starts_with("web-pod.shop"))
        .unwrap();
    assert!(
        shop_line.contains("spiffe://cluster.local/ns/shop/sa/web"),
        "{table}"
    );
    assert!(shop_line.contains("NACK"), "{table}");
    assert!(shop_line.contains("v3: resource shop/poison"), "{table}");
    let _ = dstop.send(());

    // Disconnects are removed from the table.
    drop(other);
    eventually("the closed stream leaves the table", || {
        server.server.proxies().len() == 1
    })
    .await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_namespace_mismatch_is_refused() {
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &authz("shop", "p", None));
    let store = FileStore::open(dir.path(), None).unwrap();
    let server = Running::start(&mesh, &store, "127.0.0.1:0").await;
    // Certificate for `other`, registration claims `shop`.
    let sub = subscribe(&mesh, server.addr, "other", "x", "shop", &[]);
    let mut st = sub.status();
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(e) = st.borrow_and_update().last_error.clone() {
                return e;
            }
            st.changed().await.unwrap();
        }
    })
    .await
    .unwrap();
    assert!(err.contains("PermissionDenied"), "{err}");
    assert!(
        err.contains(
            "does not match the certificate's identity spiffe://cluster.local/ns/other/sa/x"
        ),
        "{err}"
    );
    assert!(sub.current().is_none(), "nothing was pushed");
    assert!(server.server.proxies().is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_control_plane_resyncs_subscribers_that_kept_their_config() {
    let mesh = Mesh::new();
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "a.yaml", &authz("shop", "before", None));
    let store = FileStore::open(dir.path(), None).unwrap();
    let server = Running::start(&mesh, &store, "127.0.0.1:0").await;
    let addr = server.addr;
    let sub = subscribe(&mesh, addr, "shop", "web", "shop", &[]);
    let got = wait_version(&sub, 1).await;
    assert!(got.config.names.contains("AuthorizationPolicy/shop/before"));
    let first_version = got.version;
    assert_eq!(first_version, store.current().version);

    server.stop().await;
    let mut st = sub.status();
    tokio::time::timeout(WAIT, st.wait_for(|s| !s.connected))
        .await
        .unwrap()
        .unwrap();
    // Disconnected: the last good config is still there.
    assert!(
        sub.current()
            .unwrap()
            .config
            .names
            .contains("AuthorizationPolicy/shop/before")
    );

    // A new control plane (fresh store, new content) on the same port. Its versions start from
    // its own start time: higher than anything the first one sent.
    write(dir.path(), "a.yaml", &authz("shop", "after", None));
    let store2 = FileStore::open(dir.path(), None).unwrap();
    assert!(
        store2.current().version > first_version,
        "a restarted store's first version {} must exceed the earlier run's {first_version}",
        store2.current().version
    );
    // The port is free again as soon as the first server has stopped (the listener is owned by
    // the server's incoming stream, not by a task that closes it later).
    let server2 = Running::start(&mesh, &store2, &addr.to_string()).await;
    let mut rx = sub.config();
    let resynced = tokio::time::timeout(WAIT, async {
        loop {
            let c = rx.borrow_and_update().clone().unwrap();
            if c.config.names.contains("AuthorizationPolicy/shop/after") {
                return c;
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .expect("resynced after the restart");
    assert!(
        !resynced
            .config
            .names
            .contains("AuthorizationPolicy/shop/before")
    );
    assert_eq!(resynced.version, store2.current().version);
    assert!(sub.status().borrow().connects >= 2);
    server2.stop().await;
}
