//! Config push at scale: 1,000 subscribers connected over mTLS to one control plane holding
//! 10,000 resources; one policy change must reach every affected subscriber within 1 s.
//!
//! The control plane runs in a child process (this binary, re-executed) so that its memory (RSS)
//! and CPU time are its own, read from `/proc/<pid>`. The parent runs the 1,000 subscribers (the
//! real `warden_identity::config_client` library, validating every snapshot with
//! `warden_policy::config::ConfigBundle` as a proxy would).
//!
//! Run: `cargo bench --bench push` (env `PUSH_BENCH_PROXIES`, `PUSH_BENCH_NAMESPACES` to resize).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use warden_control::push::{PushServer, serve};
use warden_control::store::FileStore;
use warden_identity::config_client::{ConfigSubscriber, SubscriberOptions};
use warden_identity::proto::config::ConfigSnapshot;
use warden_identity::tls::{TlsProvider, TlsSettings, TrustBundle, WorkloadCredentials};
use warden_identity::{CaOptions, CertificateAuthority, KeyAlgorithm, SpiffeId, TrustDomain};
use warden_policy::config::ConfigBundle;

const SERVER_ENV: &str = "WARDEN_PUSH_BENCH_SERVER";
/// AuthorizationPolicies per namespace.
const PER_NS: usize = 100;
/// Distinct app labels per namespace (proxies per namespace = proxies / namespaces).
const APPS: usize = 10;

fn main() {
    if let Ok(dir) = std::env::var(SERVER_ENV) {
        return server_main(PathBuf::from(dir));
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes `--bench`; anything else (`cargo test --benches`) runs a small smoke
    // version of the same scenario.
    let full = std::env::args().any(|a| a == "--bench");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(parent_main(full));
}

fn provider(ca: &CertificateAuthority, id: &SpiffeId) -> TlsProvider {
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = warden_identity::keys::csr_pem(&key, id).unwrap();
    let cert = ca.sign_csr(&csr, id, 3600).unwrap();
    let trust = TrustBundle::from_pem(
        TrustDomain::default(),
        ca.root_bundle_pem().as_bytes(),
        "root",
    )
    .unwrap();
    let creds = WorkloadCredentials::from_pem(
        cert.chain_pem.concat().as_bytes(),
        key.serialize_pem().as_bytes(),
        trust,
        "bench",
    )
    .unwrap();
    let p = TlsProvider::new(TlsSettings::default()).unwrap();
    p.install(&creds).unwrap();
    p
}

fn istiod() -> SpiffeId {
    SpiffeId::istio(&TrustDomain::default(), "istio-system", "istiod").unwrap()
}

/// The control plane: CA directory and config directory under `dir`; prints its port.
fn server_main(dir: PathBuf) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let ca = CertificateAuthority::self_signed(dir.join("ca"), CaOptions::default()).unwrap();
        let tls = provider(&ca, &istiod());
        // Versions from 1: the client side below counts snapshots by version.
        let store = Arc::new(FileStore::open_at(dir.join("config"), None, 0).unwrap());
        let _watch = store.clone().watch(Duration::from_millis(100));
        let server = PushServer::new(store.as_ref());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("PORT {}", listener.local_addr().unwrap().port());
        serve(listener, tls, server, std::future::pending())
            .await
            .unwrap();
    });
}

fn policy(ns: &str, name: &str, app: &str, principal: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  rules:\n  - from:\n    - source: {{principals: [\"cluster.local/ns/{ns}/sa/{principal}\"]}}\n    to:\n    - operation: {{methods: [GET], paths: [\"/api/{name}/*\"]}}\n"
    )
}

fn write_namespace(config: &Path, ns: &str, variant: &str) {
    let docs: Vec<String> = (0..PER_NS)
        .map(|i| policy(ns, &format!("p{i}"), &format!("app-{}", i % APPS), variant))
        .collect();
    let tmp = config.join(format!(".{ns}.tmp"));
    std::fs::write(&tmp, docs.join("---\n")).unwrap();
    std::fs::rename(&tmp, config.join(format!("{ns}.yaml"))).unwrap();
}

fn write_root(config: &Path, variant: &str) {
    let text = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: mesh-deny, namespace: istio-system}}\nspec:\n  action: DENY\n  rules:\n  - from:\n    - source: {{namespaces: [\"{variant}\"]}}\n"
    );
    let tmp = config.join(".root.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, config.join("root.yaml")).unwrap();
}

/// (RSS kB, CPU ms) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name `(...)`: utime is field 14, stime 15 (1-based).
    let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let ticks = f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0);
    // Linux USER_HZ is 100 on every platform Warden targets.
    (rss, ticks * 10)
}

async fn parent_main(full: bool) {
    let proxies: usize = std::env::var("PUSH_BENCH_PROXIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 1000 } else { 20 });
    let namespaces: usize = std::env::var("PUSH_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if full { 100 } else { 2 })
        .clamp(1, proxies.max(1));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    for n in 0..namespaces {
        write_namespace(&config, &format!("ns-{n}"), "client");
    }
    write_root(&config, "nobody");
    // The CA is created here and reused by the child.
    let ca =
        CertificateAuthority::self_signed(dir.path().join("ca"), CaOptions::default()).unwrap();

    let exe = std::env::current_exe().unwrap();
    let mut child = std::process::Command::new(exe)
        .env(SERVER_ENV, dir.path())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let port = {
        use std::io::BufRead;
        let out = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line).unwrap();
        line.trim()
            .strip_prefix("PORT ")
            .unwrap()
            .parse::<u16>()
            .unwrap()
    };
    let addr = format!("127.0.0.1:{port}");
    // Simulated proxies only count what they get unless PUSH_BENCH_PARSE=1: then each one parses
    // and validates every snapshot as a real proxy does (all 1,000 in this one process, which
    // then dominates the latency on a small machine).
    let parse = std::env::var("PUSH_BENCH_PARSE").is_ok_and(|v| v == "1");
    let resources = namespaces * PER_NS + 1;
    println!("control plane pid {pid} on {addr}: {resources} resources, {proxies} subscribers");

    // One certificate per namespace, shared by its proxies.
    let providers: Vec<TlsProvider> = (0..namespaces)
        .map(|n| {
            let id = SpiffeId::istio(&TrustDomain::default(), &format!("ns-{n}"), "bench").unwrap();
            provider(&ca, &id)
        })
        .collect();
    let validated = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut subs = Vec::with_capacity(proxies);
    for i in 0..proxies {
        let n = i % namespaces;
        let app = (i / namespaces) % APPS;
        let mut opts = SubscriberOptions::new(addr.clone(), vec![istiod()], format!("ns-{n}"));
        opts.pod_name = format!("pod-{i}");
        opts.labels = HashMap::from([("app".to_owned(), format!("app-{app}"))]);
        let counter = validated.clone();
        subs.push(ConfigSubscriber::spawn(
            providers[n].clone(),
            opts,
            move |s: &ConfigSnapshot| {
                counter.fetch_add(1, Ordering::Relaxed);
                if !parse {
                    return Ok(s.resources.len());
                }
                let labels: Vec<String> = s
                    .resources
                    .iter()
                    .map(|r| format!("{}/{}", r.namespace, r.name))
                    .collect();
                ConfigBundle::from_yaml(
                    &s.mesh_config,
                    labels
                        .iter()
                        .map(String::as_str)
                        .zip(s.resources.iter().map(|r| r.yaml.as_str())),
                )
                .map(|b| b.security.len())
                .map_err(|e| e.to_string())
            },
        ));
    }
    let wait_all = |min: u64, which: Vec<usize>| {
        let rxs: Vec<_> = which.iter().map(|&i| subs[i].config()).collect();
        async move {
            for mut rx in rxs {
                loop {
                    if rx
                        .borrow_and_update()
                        .as_ref()
                        .is_some_and(|c| c.version >= min)
                    {
                        break;
                    }
                    rx.changed().await.unwrap();
                }
            }
        }
    };
    tokio::time::timeout(
        Duration::from_secs(120),
        wait_all(1, (0..proxies).collect()),
    )
    .await
    .expect("all subscribers synced");
    let connect_time = started.elapsed();
    let (rss0, cpu0) = usage(pid);
    let per_proxy = subs[0].current().unwrap().config;
    println!(
        "initial sync of {proxies} subscribers: {connect_time:?} (each received {per_proxy} policies); control plane RSS {} MiB, CPU so far {} ms",
        rss0 / 1024,
        cpu0
    );

    // 1) A change in one namespace: only its proxies are affected.
    let (_, cpu_a) = usage(pid);
    let t = Instant::now();
    write_namespace(&config, "ns-0", "changed");
    let affected: Vec<usize> = (0..proxies).filter(|i| i % namespaces == 0).collect();
    tokio::time::timeout(Duration::from_secs(30), wait_all(2, affected.clone()))
        .await
        .expect("namespace change reached its proxies");
    let ns_latency = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss1, cpu_b) = usage(pid);
    let untouched = (0..proxies)
        .filter(|i| i % namespaces != 0)
        .filter(|&i| subs[i].current().unwrap().version != 1)
        .count();
    println!(
        "namespace change: {} affected subscribers updated in {ns_latency:?} (file write -> all applied, includes the 100 ms poll + 50 ms debounce); {untouched} unaffected subscribers received a push; control plane CPU {} ms, RSS {} MiB",
        affected.len(),
        cpu_b - cpu_a,
        rss1 / 1024
    );

    // 2) A mesh-wide change in the root namespace: every proxy is affected.
    let (_, cpu_a) = usage(pid);
    let (_, parent_a) = usage(std::process::id());
    let t = Instant::now();
    write_root(&config, "evil");
    tokio::time::timeout(Duration::from_secs(30), wait_all(3, (0..proxies).collect()))
        .await
        .expect("mesh-wide change reached every proxy");
    let mesh_latency = t.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss2, cpu_b) = usage(pid);
    let (_, parent_b) = usage(std::process::id());
    println!(
        "mesh-wide change: {proxies} subscribers updated in {mesh_latency:?} (file write -> all applied); control plane CPU {} ms, RSS {} MiB; subscribers' process CPU {} ms (parse={parse})",
        cpu_b - cpu_a,
        rss2 / 1024,
        parent_b.saturating_sub(parent_a)
    );
    let ok = ns_latency < Duration::from_secs(1) && mesh_latency < Duration::from_secs(1);
    println!(
        "{}: one policy change reaches all affected subscribers within 1 s",
        if ok { "PASS" } else { "FAIL" }
    );
    drop(subs);
    let _ = child.kill();
    let _ = child.wait();
    if !ok && full {
        std::process::exit(1);
    }
}
