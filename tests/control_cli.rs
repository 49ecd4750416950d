//! `warden control` end to end: the real binary runs the control plane; `warden control token`
//! mints the token a gRPC client (tonic over rustls) gets a certificate with; `revoke`,
//! `revoked`, `rotate-root` and `roots` act on the state directory beside the running process,
//! which picks the changes up without a restart (CRL fetched with curl over HTTPS); SIGTERM
//! stops it cleanly.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use warden_control::client;
use warden_identity::{KeyAlgorithm, SpiffeId, TrustDomain, keys};
use x509_parser::prelude::{FromDer, X509Certificate};

fn warden(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warden"))
        .args(args)
        .env("WARDEN_LOG", "warn")
        .output()
        .expect("run warden")
}

fn ok(args: &[&str]) -> String {
    let out = warden(args);
    assert!(
        out.status.success(),
        "warden {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn have(tool: &str, arg: &str) -> bool {
    let ok = Command::new(tool)
        .arg(arg)
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{tool} is required (WARDEN_REQUIRE_PRIVILEGED=1)");
        }
        println!("skipped: part of the test: {tool} is not installed");
    }
    ok
}

/// The control plane process; killed if the test fails before stopping it.
struct Running {
    child: Child,
    addr: SocketAddr,
    logs: mpsc::Receiver<String>,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(state: &Path) -> Running {
    start_with(state, &[])
}

fn start_with(state: &Path, extra: &[&str]) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_warden"))
        .args([
            "--log-format",
            "json",
            "control",
            "--state-dir",
            p(state),
            "--listen",
            "127.0.0.1:0",
            "--reload-interval",
            "200ms",
        ])
        .args(extra)
        .env("WARDEN_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start warden control");
    let (tx, logs) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    // From here on the process is killed and reaped whatever happens.
    let mut running = Running {
        child,
        addr: "0.0.0.0:0".parse().unwrap(),
        logs,
    };
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = running
            .logs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("warden control logs where it listens");
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if let Some(addr) = v["fields"]["addr"].as_str() {
            assert_eq!(v["fields"]["trust_domain"], "cluster.local", "{line}");
            assert!(
                v["fields"]["root_sha256"]
                    .as_str()
                    .is_some_and(|f| f.len() == 64),
                "{line}"
            );
            running.addr = addr.parse().unwrap();
            return running;
        }
    }
}

fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn serial_of(pem: &str) -> String {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    warden_identity::Serial::of(&cert).to_string()
}

fn crl_lists(pem: &[u8], serial: &str) -> bool {
    use rustls_pki_types::CertificateRevocationListDer;
    use rustls_pki_types::pem::PemObject;
    CertificateRevocationListDer::pem_slice_iter(pem).any(|der| {
        let der = der.unwrap();
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        crl.iter_revoked_certificates()
            .any(|r| warden_identity::Serial::from_be_bytes(r.raw_serial()).to_string() == serial)
    })
}

/// Asks the running control plane for a certificate: Ok(chain) or Err((code, message)).
fn ask(
    rt: &tokio::runtime::Runtime,
    cp: &Running,
    root_pem: &str,
    csr: &str,
    token: &str,
) -> Result<Vec<String>, (tonic::Code, String)> {
    rt.block_on(async {
        let tls = client::tls_config(root_pem, None, false).unwrap();
        let mut c = client::connect(cp.addr, client::DEFAULT_SERVER_NAME, Arc::new(tls))
            .await
            .unwrap();
        c.create_certificate(client::request(csr, 0, Some(token)).unwrap())
            .await
            .map(|r| r.into_inner().cert_chain)
            .map_err(|s| (s.code(), s.message().to_owned()))
    })
}

#[test]
fn warden_control_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A token minted before the first start: it creates the key the control plane then uses.
    let token = ok(&[
        "control",
        "token",
        "--state-dir",
        p(&state),
        "--namespace",
        "demo",
        "--service-account",
        "app",
    ]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWS: {token}");

    let cp = start(&state);
    let root_file = state.join("root-cert.pem");
    let root_pem = std::fs::read_to_string(&root_file).unwrap();
    // A runtime with its own worker: the clients' connections stay responsive between calls,
    // so they answer the server's GOAWAY at shutdown.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let identity = SpiffeId::istio(&TrustDomain::default(), "demo", "app").unwrap();
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = keys::csr_pem(&key, &identity).unwrap();
    let chain = ask(&rt, &cp, &root_pem, &csr, token).expect("a certificate for the CLI's token");
    let serial = serial_of(&chain[0]);
    if have("openssl", "version") {
        let leaf = dir.path().join("leaf.pem");
        std::fs::write(&leaf, &chain[0]).unwrap();
        let out = Command::new("openssl")
            .args(["verify", "-CAfile", p(&root_file), p(&leaf)])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }

    // Revoke the identity beside the running process.
    let out = ok(&[
        "control",
        "revoke",
        "--state-dir",
        p(&state),
        "--identity",
        identity.as_str(),
    ]);
    assert!(out.contains(&serial), "{out}");
    let listed = ok(&["control", "revoked", "--state-dir", p(&state)]);
    assert!(
        listed.contains(identity.as_str()) && listed.contains(&serial),
        "{listed}"
    );
    // The running control plane refuses the identity and publishes the CRL, no restart.
    let (code, message) = eventually("the revocation to take effect", || {
        ask(&rt, &cp, &root_pem, &csr, token).err()
    });
    assert_eq!(code, tonic::Code::PermissionDenied, "{message}");
    assert!(message.contains("revoked"), "{message}");
    if have("curl", "--version") {
        let url = format!("https://127.0.0.1:{}/ca/crl.pem", cp.addr.port());
        eventually("the CRL over HTTPS to list the serial", || {
            let out = Command::new("curl")
                .args(["-sS", "--fail", "--cacert", p(&root_file), &url])
                .output()
                .unwrap();
            assert!(out.status.success(), "curl: {out:?}");
            crl_lists(&out.stdout, &serial).then_some(())
        });
    }
    // --undo lets it get certificates again.
    ok(&[
        "control",
        "revoke",
        "--state-dir",
        p(&state),
        "--identity",
        identity.as_str(),
        "--undo",
    ]);
    eventually("the identity to be issued to again", || {
        ask(&rt, &cp, &root_pem, &csr, token).ok()
    });
    // Revoking a serial works the same way.
    let out = ok(&[
        "control",
        "revoke",
        "--state-dir",
        p(&state),
        "--serial",
        "0a:bc",
    ]);
    assert!(out.contains("revoked certificate 0abc"), "{out}");

    // Root rotation: the new root reaches the published bundle while running.
    let staged = ok(&["control", "rotate-root", "stage", "--state-dir", p(&state)]);
    assert!(staged.contains("staged root"), "{staged}");
    eventually("the staged root in root-cert.pem", || {
        let bundle = std::fs::read_to_string(&root_file).unwrap();
        (bundle.matches("BEGIN CERTIFICATE").count() == 2).then_some(())
    });
    ok(&[
        "control",
        "rotate-root",
        "activate",
        "--state-dir",
        p(&state),
    ]);
    let roots = ok(&["control", "roots", "--state-dir", p(&state)]);
    assert!(
        roots.contains("active") && roots.contains("previous"),
        "{roots}"
    );
    let new_bundle = std::fs::read_to_string(&root_file).unwrap();
    let chain = eventually("certificates from the new root", || {
        ask(&rt, &cp, &new_bundle, &csr, token)
            .ok()
            .filter(|c| !root_pem.contains(c.last().unwrap().as_str()))
    });
    assert!(new_bundle.contains(chain.last().unwrap().as_str()));

    // SIGTERM: a clean exit.
    let mut cp = cp;
    let status = Command::new("kill")
        .args(["-TERM", &cp.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = eventually("warden control to exit", || cp.child.try_wait().unwrap());
    assert!(exit.success(), "{exit:?}");
    let logs: Vec<String> = cp.logs.try_iter().collect();
    assert!(
        logs.iter().any(|l| l.contains("warden control stopped")),
        "{logs:?}"
    );
    assert!(
        logs.iter().any(|l| l.contains("issued a certificate")),
        "issuance is logged"
    );
    assert!(
        !logs.iter().any(|l| l.contains(token)),
        "the token is never logged"
    );
}

#[test]
fn administrative_commands_explain_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("nothing-here");
    let out = warden(&[
        "control",
        "revoke",
        "--state-dir",
        p(&state),
        "--serial",
        "01",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("start `warden control` once"), "{err}");

    let out = warden(&[
        "control",
        "token",
        "--state-dir",
        p(&state),
        "--namespace",
        "Not_A_Namespace",
        "--service-account",
        "x",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a valid Kubernetes namespace"), "{err}");

    let out = warden(&[
        "control",
        "revoke",
        "--state-dir",
        p(&state),
        "--serial",
        "xyz",
    ]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid serial"));

    let out = warden(&[
        "control",
        "rotate-root",
        "activate",
        "--state-dir",
        p(&state),
    ]);
    assert!(!out.status.success());
}

/// Waits for a JSON log line with `fields.<field>` and returns that field.
fn log_field(cp: &Running, field: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let line = cp
            .logs
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| panic!("no log line with {field}"));
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON log line");
        if let Some(x) = v["fields"][field].as_str() {
            return x.to_owned();
        }
    }
}

fn policy(name: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  rules:\n  - from:\n    - source: {{principals: [\"cluster.local/ns/demo/sa/client\"]}}\n"
    )
}

fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// `warden control --config-dir` pushes config on the CA's listener to a proxy that got its
/// certificate from the same process; `warden control status` shows it with its identity,
/// versions, NACK and certificate expiry; a bad file is logged with its exact error and never
/// pushed.
#[test]
fn control_status_shows_a_subscribed_proxy() {
    use warden_identity::config_client::{ConfigSubscriber, SubscriberOptions};
    use warden_identity::tls::{TlsProvider, TlsSettings, TrustBundle, WorkloadCredentials};

    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = dir.path().join("config");
    std::fs::create_dir_all(&config).unwrap();
    write_atomic(&config, "allow.yaml", &policy("allow-client"));
    let mesh = dir.path().join("mesh.yaml");
    std::fs::write(
        &mesh,
        "trustDomain: cluster.local\nrootNamespace: istio-system\n",
    )
    .unwrap();
    let token = ok(&[
        "control",
        "token",
        "--state-dir",
        p(&state),
        "--namespace",
        "demo",
        "--service-account",
        "web",
    ]);
    let cp = start_with(
        &state,
        &[
            "--config-dir",
            p(&config),
            "--mesh-config",
            p(&mesh),
            "--config-poll",
            "50ms",
            "--debug-addr",
            "127.0.0.1:0",
        ],
    );
    let debug_addr = log_field(&cp, "debug_addr");
    let status = |json: bool| {
        let mut args = vec!["control", "status", "--debug-addr", &debug_addr];
        if json {
            args.push("--json");
        }
        ok(&args)
    };
    assert_eq!(status(true).trim(), "[]", "no proxy yet");

    // A certificate from the running CA, then a subscription with it on the same port.
    let root_pem = std::fs::read_to_string(state.join("root-cert.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let identity = SpiffeId::istio(&TrustDomain::default(), "demo", "web").unwrap();
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = keys::csr_pem(&key, &identity).unwrap();
    let chain = ask(&rt, &cp, &root_pem, &csr, token.trim()).expect("a workload certificate");
    let trust = TrustBundle::from_pem(TrustDomain::default(), root_pem.as_bytes(), "root").unwrap();
    let creds = WorkloadCredentials::from_pem(
        chain.concat().as_bytes(),
        key.serialize_pem().as_bytes(),
        trust,
        "test",
    )
    .unwrap();
    let tls = TlsProvider::new(TlsSettings::default()).unwrap();
    tls.install(&creds).unwrap();
    let istiod = SpiffeId::istio(&TrustDomain::default(), "istio-system", "istiod").unwrap();
    let mut opts = SubscriberOptions::new(cp.addr.to_string(), vec![istiod], "demo");
    opts.pod_name = "web-0".into();
    opts.backoff_initial = Duration::from_millis(50);
    let sub = {
        let _guard = rt.enter();
        ConfigSubscriber::spawn(tls, opts, |snap| {
            if snap.resources.iter().any(|r| r.name == "poison") {
                return Err("demo/poison is not acceptable to this proxy".to_owned());
            }
            Ok(snap
                .resources
                .iter()
                .map(|r| r.name.clone())
                .collect::<Vec<_>>())
        })
    };
    let first = eventually("the first snapshot", || sub.current());
    assert_eq!(first.config, ["allow-client"]);

    // The table: identity, version, SYNCED, certificate expiry.
    let table = eventually("the proxy SYNCED in `warden control status`", || {
        let t = status(false);
        t.contains("SYNCED").then_some(t)
    });
    let row = table.lines().find(|l| l.starts_with("web-0.demo")).unwrap();
    assert!(
        row.contains("spiffe://cluster.local/ns/demo/sa/web"),
        "{table}"
    );
    assert!(row.contains(&first.version.to_string()), "{table}");
    let json: serde_json::Value = serde_json::from_str(&status(true)).unwrap();
    let proxy = &json[0];
    assert_eq!(proxy["identity"], "spiffe://cluster.local/ns/demo/sa/web");
    assert_eq!(proxy["version_acked"], first.version);
    let leaf = {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_slice(chain[0].as_bytes()).unwrap();
        let (_, c) = X509Certificate::from_der(&der).unwrap();
        c.validity().not_after.timestamp()
    };
    let expiry = time::OffsetDateTime::parse(
        proxy["cert_expiry"].as_str().unwrap(),
        &time::format_description::well_known::Rfc3339,
    )
    .unwrap();
    assert_eq!(expiry.unix_timestamp(), leaf, "the certificate's notAfter");

    // A file with an invalid field: logged with its exact error, nothing pushed.
    write_atomic(
        &config,
        "broken.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: broken, namespace: demo}\nspec:\n  action: MAYBE\n",
    );
    let broken = config.join("broken.yaml");
    let logged = eventually("the invalid file in the log", || {
        cp.logs
            .try_iter()
            .find(|l| l.contains("invalid config") && l.contains(p(&broken)))
    });
    assert!(logged.contains("spec.action"), "{logged}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        sub.current().unwrap().version,
        first.version,
        "nothing pushed"
    );

    // A new valid policy reaches the proxy; one it refuses shows as a NACK with its error.
    std::fs::remove_file(&broken).unwrap();
    write_atomic(&config, "poison.yaml", &policy("poison"));
    let table = eventually("the NACK in `warden control status`", || {
        let t = status(false);
        t.lines()
            .any(|l| l.starts_with("web-0.demo") && l.contains("   NACK   "))
            .then_some(t)
    });
    let row = table.lines().find(|l| l.starts_with("web-0.demo")).unwrap();
    assert!(
        row.contains("demo/poison is not acceptable to this proxy"),
        "{table}"
    );
    assert_eq!(
        sub.current().unwrap().version,
        first.version,
        "kept the last good"
    );
    // The old command name still works.
    let alias = ok(&["proxy-status", "--debug-addr", &debug_addr]);
    assert!(alias.contains("demo/poison is not acceptable"), "{alias}");

    drop(sub);
    drop(rt);
}
