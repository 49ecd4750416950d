//! Security properties of the real processes: `warden control` (trace logging) issues through
//! its gRPC CA only the token's identity whatever the CSR asks, two `warden sidecar`s (trace
//! logging) talk mTLS with those certificates, and afterwards no private key appears in any
//! log or in any file other than the key files, which are mode 0600 (127.0.183.*).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_control::client;
use warden_identity::{KeyAlgorithm, SpiffeId, TrustDomain, keys};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

const BIN: &str = env!("CARGO_BIN_EXE_warden");

struct Proc {
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut child = Command::new(BIN)
        .args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    for out in [
        Box::new(child.stderr.take().unwrap()) as Box<dyn Read + Send>,
        Box::new(child.stdout.take().unwrap()),
    ] {
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
    }
    Proc { child, log }
}

fn ok(args: &[&str]) -> String {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "warden {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn uri_sans(pem: &str) -> Vec<String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    cert.subject_alternative_name()
        .unwrap()
        .map(|s| {
            s.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// Strings that would reveal a PEM private key: its base64 lines and, for EC and Ed25519
/// keys, the secret scalar (the 32-byte OCTET STRING `04 20 ...`) in hex. The public key,
/// which the key file also holds, is not a secret (certificates carry it).
fn secrets_of(pem: &str) -> Vec<String> {
    use rustls_pki_types::PrivateKeyDer;
    use rustls_pki_types::pem::PemObject;
    let mut out: Vec<String> = pem
        .lines()
        .filter(|l| !l.starts_with("-----") && l.len() >= 24)
        .map(str::to_owned)
        .collect();
    if let Ok(der) = PrivateKeyDer::from_pem_slice(pem.as_bytes()) {
        let der = der.secret_der();
        if let Some(i) = der.windows(2).position(|w| w == [0x04, 0x20])
            && der.len() >= i + 34
        {
            let scalar = &der[i + 2..i + 34];
            out.push(scalar.iter().map(|b| format!("{b:02x}")).collect());
            out.push(scalar.iter().map(|b| format!("{b:02X}")).collect());
            out.push(
                format!("{:?}", &scalar[..12])
                    .trim_end_matches(']')
                    .to_owned(),
            );
        }
    }
    out
}

#[test]
fn csr_gets_the_token_identity_and_private_keys_are_never_logged_or_copied() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let state = d.join("state");
    let token_for = |sa: &str| {
        ok(&[
            "control",
            "token",
            "--state-dir",
            state.to_str().unwrap(),
            "--namespace",
            "demo",
            "--service-account",
            sa,
        ])
        .trim()
        .to_owned()
    };
    let client_token = token_for("client");
    let server_token = token_for("server");
    let cp = spawn(
        &[
            "--log",
            "trace",
            "--log-format",
            "json",
            "control",
            "--state-dir",
            state.to_str().unwrap(),
            "--listen",
            "127.0.183.10:0",
        ],
        &[],
    );
    let addr: std::net::SocketAddr = eventually("the control plane's address", || {
        cp.log.lock().unwrap().lines().find_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            v["fields"]["addr"].as_str()?.parse().ok()
        })
    });
    let root_pem = std::fs::read_to_string(state.join("root-cert.pem")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Each CSR asks for an identity other than its token's: the certificate carries the token's.
    let issue = |want_sa: &str, token: &str, out: &Path| {
        let asked = SpiffeId::istio(&TrustDomain::default(), "kube-system", "admin").unwrap();
        let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
        let csr = keys::csr_pem(&key, &asked).unwrap();
        let chain = rt.block_on(async {
            let tls = client::tls_config(&root_pem, None, false).unwrap();
            let mut c = client::connect(addr, client::DEFAULT_SERVER_NAME, Arc::new(tls))
                .await
                .unwrap();
            c.create_certificate(client::request(&csr, 0, Some(token)).unwrap())
                .await
                .unwrap()
                .into_inner()
                .cert_chain
        });
        assert_eq!(
            uri_sans(&chain[0]),
            [format!("spiffe://cluster.local/ns/demo/sa/{want_sa}")]
        );
        std::fs::create_dir_all(out).unwrap();
        std::fs::write(out.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(out.join("root-cert.pem"), &root_pem).unwrap();
        std::fs::write(out.join("cert-chain.pem"), chain.concat()).unwrap();
    };
    issue("client", &client_token, &d.join("a/certs"));
    issue("server", &server_token, &d.join("b/certs"));

    // Two sidecars with trace logging, one mTLS connection through them.
    std::fs::create_dir_all(d.join("a/config")).unwrap();
    std::fs::create_dir_all(d.join("b/config")).unwrap();
    std::fs::write(
        d.join("a/config/services.yaml"),
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: echo, namespace: demo}\n\
         spec:\n  hosts: [echo.demo.svc.cluster.local]\n  location: MESH_INTERNAL\n  addresses: [127.0.183.200]\n  ports: [{number: 7000, name: tcp}]\n\
         \x20 endpoints: [{address: 127.0.183.2, serviceAccount: server, ports: {tcp: 15006}}]\n",
    )
    .unwrap();
    std::fs::write(
        d.join("b/config/pa.yaml"),
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: demo}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .unwrap();
    let app = TcpListener::bind("127.0.183.100:7000").unwrap();
    std::thread::spawn(move || {
        for s in app.incoming() {
            let Ok(mut s) = s else { continue };
            let mut r = s.try_clone().unwrap();
            let _ = std::io::copy(&mut r, &mut s);
            let _ = s.shutdown(Shutdown::Write);
        }
    });
    let sidecar = |name: &str, ip: &str, sa: &str, dst: &str| {
        let cfg = d.join(format!("{name}.yaml"));
        std::fs::write(
            &cfg,
            format!(
                "identity: {{namespace: demo, serviceAccount: {sa}}}\n\
                 certificates: {{staticDir: {certs}}}\n\
                 config: {{directory: {config}}}\n\
                 bindAddress: {ip}\nadminAddress: {ip}\n\
                 inbound: {{appHost: 127.0.183.100}}\n",
                certs = d.join(name).join("certs").display(),
                config = d.join(name).join("config").display(),
            ),
        )
        .unwrap();
        spawn(
            &[
                "--log",
                "trace",
                "sidecar",
                "-c",
                cfg.to_str().unwrap(),
                "--static-original-dst",
                dst,
            ],
            &[],
        )
    };
    let a = sidecar(
        "a",
        "127.0.183.1",
        "client",
        "127.0.183.1:15001=127.0.183.200:7000",
    );
    let b = sidecar(
        "b",
        "127.0.183.2",
        "server",
        "127.0.183.2:15006=127.0.183.2:7000",
    );
    let echoed = eventually("an mTLS round trip through both sidecars", || {
        let mut s = TcpStream::connect("127.0.183.1:15001").ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"through the mesh").ok()?;
        s.shutdown(Shutdown::Write).ok()?;
        let mut back = Vec::new();
        s.read_to_end(&mut back).ok()?;
        (back == b"through the mesh").then_some(back)
    });
    assert_eq!(echoed, b"through the mesh");
    let logs: Vec<(String, String)> = [("control", &cp), ("sidecar a", &a), ("sidecar b", &b)]
        .iter()
        .map(|(n, p)| (n.to_string(), p.log.lock().unwrap().clone()))
        .collect();
    drop((cp, a, b));
    assert!(
        logs.iter().any(|(_, l)| l.contains("TRACE")),
        "trace logging was not on"
    );

    // The key files: every file holding a private key. The CA's own ones are mode 0600.
    let mut key_files = Vec::new();
    for f in files_under(d) {
        let bytes = std::fs::read(&f).unwrap();
        if String::from_utf8_lossy(&bytes).contains("PRIVATE KEY") {
            key_files.push(f);
        }
    }
    let expected: Vec<PathBuf> = vec![d.join("a/certs/key.pem"), d.join("b/certs/key.pem")];
    for f in &key_files {
        if f.starts_with(&state) {
            let mode = std::fs::metadata(f).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is {mode:o}", f.display());
            let name = f.file_name().unwrap().to_string_lossy();
            assert!(name.contains("key"), "a private key in {}", f.display());
        } else {
            assert!(expected.contains(f), "a private key in {}", f.display());
        }
    }
    assert!(
        key_files.iter().any(|f| f.starts_with(&state)),
        "the CA key was not found in the state directory"
    );
    let secrets: Vec<(PathBuf, String)> = key_files
        .iter()
        .flat_map(|f| {
            let pem = std::fs::read_to_string(f).unwrap();
            secrets_of(&pem).into_iter().map(move |s| (f.clone(), s))
        })
        .collect();
    assert!(secrets.len() > 10);
    let scalars = secrets.iter().filter(|(_, s)| s.len() == 64).count();
    assert!(scalars >= 2 * 3, "secret scalars found: {}", scalars / 2);
    // Never in a log.
    for (name, log) in &logs {
        assert!(
            !log.contains("PRIVATE KEY"),
            "{name} logged a PEM private key"
        );
        for (f, s) in &secrets {
            assert!(
                !log.contains(s.as_str()),
                "{name} logged key material of {}",
                f.display()
            );
        }
    }
    // Never in another file.
    for f in files_under(d) {
        if key_files.contains(&f) {
            continue;
        }
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        for (k, s) in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "{} holds key material of {}",
                f.display(),
                k.display()
            );
        }
    }
}
