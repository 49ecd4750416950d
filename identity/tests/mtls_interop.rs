//! Interop with TLS tools nobody here wrote: openssl s_client / s_server and curl against
//! Warden's server and client configurations. Each test prints `skipped: <reason>` when the tool
//! is missing (and fails instead under `WARDEN_REQUIRE_PRIVILEGED=1`).

mod tlsutil;

use std::process::{Command, Stdio};
use std::time::Duration;

use tlsutil::*;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;
use warden_identity::KeyAlgorithm;
use warden_identity::ca::ExtraSans;
use warden_identity::tls::{
    Alpn, PeerCertError, TlsError, TlsProvider, TlsSettings, WorkloadCredentials,
};

fn have(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg(if tool == "curl" {
            "--version"
        } else {
            "version"
        })
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        if std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: `{tool}` is required (WARDEN_REQUIRE_PRIVILEGED=1)");
        }
        println!("skipped: {test}: `{tool}` is not installed");
    }
    ok
}

/// Runs a blocking command off the async runtime, with a time limit.
async fn run(mut cmd: Command, stdin: &'static [u8]) -> (bool, String) {
    let out = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).unwrap();
        drop(input);
        child.wait_with_output().unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("tool timed out")
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test]
async fn openssl_s_client_with_a_mesh_cert_completes_mtls_and_without_one_is_refused() {
    if !have("openssl", "openssl_s_client") {
        return;
    }
    let mesh = Mesh::new();
    let server = mesh.provider(&id("a", "server"));
    let client = mesh.issue(&id("b", "openssl"), 3600);
    let dir = mesh.dir.path();
    let cert = put(dir, "client.pem", &client.chain_pem);
    let key = put(dir, "client-key.pem", &client.key_pem);
    let root = put(dir, "root.pem", &mesh.root_pem());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let srv = server.clone();
    let server_task = tokio::spawn(async move {
        let mut results = Vec::new();
        for _ in 0..2 {
            let (sock, _) = listener.accept().await.unwrap();
            match srv.accept(sock).await {
                Ok((tls, peer, _)) => {
                    let mut lines = BufReader::new(tls);
                    let mut line = String::new();
                    lines.read_line(&mut line).await.unwrap();
                    let mut tls = lines.into_inner();
                    tls.write_all(format!("pong {peer} {}", line.trim()).as_bytes())
                        .await
                        .unwrap();
                    tls.shutdown().await.unwrap();
                    results.push(Ok(peer));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        results
    });

    let mut cmd = Command::new("openssl");
    cmd.args([
        "s_client",
        "-connect",
        &addr.to_string(),
        "-ign_eof",
        "-verify_return_error",
    ])
    .arg("-cert")
    .arg(&cert)
    .arg("-key")
    .arg(&key)
    .arg("-CAfile")
    .arg(&root);
    let (_, out) = run(cmd, b"ping\n").await;
    assert!(out.contains("Verify return code: 0 (ok)"), "{out}");
    assert!(out.contains("TLSv1.3"), "{out}");
    assert!(
        out.contains("pong spiffe://cluster.local/ns/b/sa/openssl ping"),
        "{out}"
    );

    // The same without a client certificate.
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string(), "-ign_eof"])
        .arg("-CAfile")
        .arg(&root);
    let (_, out) = run(cmd, b"ping\n").await;
    assert!(!out.contains("pong"), "{out}");
    assert!(out.contains("certificate required"), "{out}");

    let results = server_task.await.unwrap();
    assert_eq!(
        results[0].as_ref().unwrap().as_str(),
        "spiffe://cluster.local/ns/b/sa/openssl"
    );
    assert!(
        matches!(
            results[1],
            Err(TlsError::PeerCertificate(PeerCertError::NoCertificate))
        ),
        "{:?}",
        results[1]
    );
}

#[tokio::test]
async fn openssl_s_server_with_verify_accepts_our_client() {
    if !have("openssl", "openssl_s_server") {
        return;
    }
    let mesh = Mesh::new();
    let sid = id("a", "openssl-server");
    let issued = mesh.issue(&sid, 3600);
    let dir = mesh.dir.path();
    let cert = put(dir, "server.pem", &issued.chain_pem);
    let key = put(dir, "server-key.pem", &issued.key_pem);
    let root = put(dir, "root.pem", &mesh.root_pem());
    let client = mesh.provider(&id("b", "client"));

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new("openssl")
        .args([
            "s_server",
            "-accept",
            &format!("127.0.0.1:{port}"),
            "-naccept",
            "1",
        ])
        .args(["-Verify", "1", "-verify_return_error", "-rev"])
        .arg("-cert")
        .arg(&cert)
        .arg("-key")
        .arg(&key)
        .arg("-CAfile")
        .arg(&root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut sock = None;
    for _ in 0..100 {
        if let Ok(s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            sock = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sock = sock.expect("s_server did not start listening");
    let (mut tls, peer) = client
        .connect(sock, std::slice::from_ref(&sid), Alpn::Tcp)
        .await
        .expect("mTLS with openssl s_server");
    assert_eq!(peer, sid);
    tls.write_all(b"warden\n").await.unwrap();
    tls.flush().await.unwrap();
    let mut buf = vec![0u8; 64];
    let mut got = Vec::new();
    while !got.ends_with(b"\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buf))
            .await
            .expect("s_server answers")
            .unwrap();
        assert!(
            n > 0,
            "s_server closed: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&got).trim(), "nedraw");
    drop(tls);
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // s_server printed the client certificate it verified (depth 0: the leaf, empty subject).
    assert!(text.contains("depth=0"), "{text}");
    assert!(!text.contains("verify error"), "{text}");
}

#[tokio::test]
async fn curl_with_a_mesh_cert_talks_https_to_our_server() {
    if !have("curl", "curl_mtls") {
        return;
    }
    let mesh = Mesh::new();
    // The serving certificate also carries a DNS SAN (curl checks the host name).
    let sid = id("a", "web");
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = warden_identity::keys::csr_pem(&key, &sid).unwrap();
    let cert = mesh
        .ca
        .sign_csr_with_extra_sans(
            &csr,
            &sid,
            3600,
            &ExtraSans {
                dns: vec!["web.test".to_owned()],
                ips: vec![],
            },
        )
        .unwrap();
    let creds = WorkloadCredentials::from_pem(
        cert.chain_pem.concat().as_bytes(),
        key.serialize_pem().as_bytes(),
        mesh.trust(),
        "web",
    )
    .unwrap();
    let server = TlsProvider::new(TlsSettings::default()).unwrap();
    server.install(&creds).unwrap();

    let client = mesh.issue(&id("b", "curl"), 3600);
    let dir = mesh.dir.path();
    let cert_file = put(dir, "client.pem", &client.chain_pem);
    let key_file = put(dir, "client-key.pem", &client.key_pem);
    let root = put(dir, "root.pem", &mesh.root_pem());

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let srv = server.clone();
    let server_task = tokio::spawn(async move {
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            let (sock, _) = listener.accept().await.unwrap();
            match srv.accept(sock).await {
                Ok((tls, peer, alpn)) => {
                    let mut reader = BufReader::new(tls);
                    let mut request_line = String::new();
                    reader.read_line(&mut request_line).await.unwrap();
                    loop {
                        let mut h = String::new();
                        reader.read_line(&mut h).await.unwrap();
                        if h == "\r\n" || h.is_empty() {
                            break;
                        }
                    }
                    let body = format!("hello {peer} {}", request_line.trim());
                    let mut tls = reader.into_inner();
                    tls.write_all(
                        format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await
                    .unwrap();
                    tls.shutdown().await.unwrap();
                    outcomes.push(Ok(alpn));
                }
                Err(e) => outcomes.push(Err(e.to_string())),
            }
        }
        outcomes
    });
    let url = format!("https://web.test:{port}/echo");
    let resolve = format!("web.test:{port}:127.0.0.1");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--http1.1",
        "--max-time",
        "20",
        "--resolve",
        &resolve,
    ])
    .arg("--cacert")
    .arg(&root)
    .arg("--cert")
    .arg(&cert_file)
    .arg("--key")
    .arg(&key_file)
    .arg(&url);
    let (ok, out) = run(cmd, b"").await;
    assert!(ok, "{out}");
    assert_eq!(
        out,
        "hello spiffe://cluster.local/ns/b/sa/curl GET /echo HTTP/1.1"
    );
    // Without a client certificate: refused.
    let mut cmd = Command::new("curl");
    cmd.args([
        "-sS",
        "--http1.1",
        "--max-time",
        "20",
        "--resolve",
        &resolve,
    ])
    .arg("--cacert")
    .arg(&root)
    .arg(&url);
    let (ok, out) = run(cmd, b"").await;
    assert!(!ok, "{out}");
    let outcomes = server_task.await.unwrap();
    assert_eq!(outcomes[0], Ok(Some(&b"http/1.1"[..])));
    assert!(
        outcomes[1]
            .as_ref()
            .is_err_and(|e| e.contains("no client certificate")),
        "{:?}",
        outcomes[1]
    );
}
