//! Faults, each a test with in-process sidecars on real loopback sockets (127.0.150-159.*):
//! upstreams that refuse, reset or hang; garbage instead of TLS; a stalled handshake;
//! slowloris; a client aborting mid-body; the connection limit; header limits. And the
//! sidecar-level security properties: a foreign root or trust domain is never accepted,
//! inbound or outbound.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use warden_identity::{CaOptions, SpiffeId, TrustDomain};

/// An HTTP app (hyper) that reads the whole request body and answers `<method> <path> <body
/// length>` with 200.
async fn http_app(addr: SocketAddr) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let head = format!("{} {}", req.method(), req.uri());
                        let body = req.into_body().collect().await?.to_bytes();
                        Ok::<_, hyper::Error>(hyper::Response::new(Full::new(Bytes::from(
                            format!("{head} {}", body.len()),
                        ))))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

/// Sends a raw HTTP/1.0 request, returns (status, body).
async fn http_raw(addr: SocketAddr, request: &[u8]) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("response timed out")
        .unwrap();
    let out = String::from_utf8_lossy(&out).into_owned();
    let status = out.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Reads until EOF or an error (a reset counts as closed); returns what was read and how
/// long it took. Panics if the peer keeps the connection open for `limit`.
async fn read_until_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Duration) {
    let start = std::time::Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), s.read(&mut buf)).await {
            Err(_) => panic!("still open after {limit:?}; read {out:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (out, start.elapsed()),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// A pod with an outbound passthrough listener to `to` (nothing in the registry, ALLOW_ANY).
async fn passthrough_pod(mesh: &Mesh, test: u8, to: SocketAddr, extra: &str) -> Pod {
    let mut spec = PodSpec::new(test, 1, "a");
    spec.outbound_to = Some(to);
    spec.extra_yaml = extra.into();
    spec.connect_timeout = "500ms";
    let pod = start_pod(mesh, spec).await;
    pod.wait_ready().await;
    pod
}

#[tokio::test]
async fn upstream_refusing_closes_the_client_and_counts_uf() {
    let mesh = Mesh::new();
    let nobody = SocketAddr::new(ip(150, 50), APP_PORT);
    let a = passthrough_pod(&mesh, 150, nobody, "").await;
    let back = round_trip(a.outbound(), b"anyone?")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "{back:?}");
    eventually("UF counted", Duration::from_secs(10), || {
        metric_line(
            &a.metrics(),
            "istio_tcp_connections_closed_total",
            &["reporter=\"source\"", "response_flags=\"UF\""],
        )
        .is_some_and(|l| metric_value(l) == 1)
    })
    .await;
    // The sidecar goes on: once the upstream is there, the same path works.
    echo_app(nobody, None).await;
    assert_eq!(round_trip(a.outbound(), b"now").await.unwrap(), b"now");
}

#[tokio::test]
async fn upstream_reset_mid_stream_closes_the_client_and_the_sidecars_go_on() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 151, &[("pa.yaml", peer_authn("STRICT"))]).await;
    // The app resets its first connection after reading 5 bytes, echoes the others.
    let listener = TcpListener::bind(SocketAddr::new(ip_app(151, 2), APP_PORT))
        .await
        .unwrap();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            let (mut s, _) = listener.accept().await.unwrap();
            if std::mem::take(&mut first) {
                let mut buf = [0u8; 5];
                s.read_exact(&mut buf).await.unwrap();
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .unwrap();
                drop(s);
                continue;
            }
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    let mut s = TcpStream::connect(a.outbound()).await.unwrap();
    s.write_all(b"hello").await.unwrap();
    let (got, _) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_empty(), "{got:?}");
    assert_eq!(round_trip(a.outbound(), b"again").await.unwrap(), b"again");
    eventually("connections freed", Duration::from_secs(10), || {
        a.shared.drain.active() == 0 && b.shared.drain.active() == 0
    })
    .await;
}

#[tokio::test]
async fn upstream_connect_that_hangs_is_cut_by_the_connect_timeout() {
    // A listener with backlog 0 whose queue is full: further SYNs are dropped, so connects
    // hang (the kernel retries for minutes).
    let target = SocketAddr::new(ip(152, 50), APP_PORT);
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(target).unwrap();
    let _listener = socket.listen(0).unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(target)).await
        {
            fillers.push(s);
        }
    }
    if tokio::time::timeout(Duration::from_millis(300), TcpStream::connect(target))
        .await
        .is_ok()
    {
        println!("skipped: this kernel does not leave a connect to a full backlog hanging");
        return;
    }
    let mesh = Mesh::new();
    let a = passthrough_pod(&mesh, 152, target, "").await;
    let mut s = TcpStream::connect(a.outbound()).await.unwrap();
    s.write_all(b"hello?").await.unwrap();
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_empty());
    assert!(
        took >= Duration::from_millis(400),
        "closed before the timeout: {took:?}"
    );
    assert!(
        metric_line(
            &a.metrics(),
            "istio_tcp_connections_closed_total",
            &["response_flags=\"UF\""]
        )
        .is_some()
    );
    drop(fillers);
}

#[tokio::test]
async fn idle_connections_are_closed_by_the_idle_timeout_busy_ones_are_not() {
    // An upstream that accepts and holds connections, echoing what it gets.
    let target = SocketAddr::new(ip(153, 50), APP_PORT);
    echo_app(target, None).await;
    let mesh = Mesh::new();
    let a = passthrough_pod(&mesh, 153, target, "limits: {idleTimeout: 1s}\n").await;
    let mut idle = TcpStream::connect(a.outbound()).await.unwrap();
    let mut busy = TcpStream::connect(a.outbound()).await.unwrap();
    let busy_task = tokio::spawn(async move {
        // A byte every 300 ms for 2.4 s: never idle for a second.
        for i in 0..8u8 {
            busy.write_all(&[i]).await.unwrap();
            let mut b = [0u8; 1];
            busy.read_exact(&mut b).await.unwrap();
            assert_eq!(b[0], i);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        busy
    });
    let (got, took) = read_until_closed(&mut idle, Duration::from_secs(10)).await;
    assert!(got.is_empty());
    assert!(took >= Duration::from_millis(900), "{took:?}");
    let mut busy = busy_task.await.unwrap();
    busy.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    busy.read_exact(&mut b).await.unwrap();
    let m = a.metrics();
    assert!(m.contains("warden_idle_timeouts_total 1\n"), "{m}");
}

#[tokio::test]
async fn garbage_instead_of_tls_is_closed_and_never_reaches_the_app() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 154, &[("pa.yaml", peer_authn("STRICT"))]).await;
    let accepted = echo_app(SocketAddr::new(ip_app(154, 2), APP_PORT), None).await;
    for garbage in [
        payload(4096),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        // A TLS record header announcing a huge handshake, then junk.
        [&[0x16, 0x03, 0x01, 0xff, 0xff][..], &[0u8; 64]].concat(),
    ] {
        let mut s = TcpStream::connect(b.inbound()).await.unwrap();
        let _ = s.write_all(&garbage).await;
        let (got, _) = read_until_closed(&mut s, Duration::from_secs(15)).await;
        assert!(
            got.is_empty() || got[0] == 21,
            "not closed/alerted: {got:?}"
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert_eq!(round_trip(a.outbound(), b"mtls").await.unwrap(), b"mtls");
    eventually("garbage connections freed", Duration::from_secs(10), || {
        b.shared.drain.active() == 0
    })
    .await;
}

#[tokio::test]
async fn a_peer_stalling_mid_handshake_is_freed_by_the_handshake_timeout() {
    let mesh = Mesh::new();
    let mut spec = PodSpec::new(155, 2, "b");
    let pa = [("pa.yaml", peer_authn("STRICT"))];
    spec.config = pa.into();
    spec.handshake_timeout = Some("500ms");
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    let accepted = echo_app(SocketAddr::new(ip_app(155, 2), APP_PORT), None).await;
    // The first bytes of a ClientHello, then nothing.
    let mut s = TcpStream::connect(b.inbound()).await.unwrap();
    s.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01])
        .await
        .unwrap();
    eventually("handshake in progress", Duration::from_secs(10), || {
        b.shared.drain.active() == 1
    })
    .await;
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(10)).await;
    assert!(got.is_empty() || got[0] == 21, "{got:?}");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    eventually("stalled connection freed", Duration::from_secs(10), || {
        b.shared.drain.active() == 0
    })
    .await;
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn slowloris_is_closed_by_the_request_headers_timeout_while_others_are_served() {
    let mesh = Mesh::new();
    let mut spec = PodSpec::new(156, 2, "b");
    spec.extra_yaml = "limits: {requestHeadersTimeout: 1s}\n".into();
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    http_app(SocketAddr::new(ip_app(156, 2), APP_PORT)).await;
    let inbound = b.inbound();
    let slow = tokio::spawn(async move {
        let mut s = TcpStream::connect(inbound).await.unwrap();
        let start = std::time::Instant::now();
        s.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let header =
            b"X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
        let mut sent = 0;
        for byte in header.iter().cycle().take(200) {
            if s.write_all(&[*byte]).await.is_err() {
                break;
            }
            sent += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            // Closed (EOF or a 408) while the head is still incomplete?
            let mut buf = [0u8; 256];
            match tokio::time::timeout(Duration::from_millis(1), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => break,
                Ok(Ok(n)) => {
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    assert!(!text.contains(" 200 "), "slowloris got served: {text}");
                    break;
                }
                Err(_) => {}
            }
        }
        (sent, start.elapsed())
    });
    // Meanwhile, normal requests are served.
    for _ in 0..3 {
        let (status, body) = http_raw(inbound, b"GET /fast HTTP/1.0\r\nHost: x\r\n\r\n").await;
        assert_eq!((status, body.as_str()), (200, "GET /fast 0"));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (sent, took) = slow.await.unwrap();
    assert!(sent < 200, "never closed");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "closed after {took:?}"
    );
    eventually("slowloris freed", Duration::from_secs(10), || {
        b.shared.drain.active() == 0
    })
    .await;
}

#[tokio::test]
async fn client_abort_mid_body_frees_the_connection() {
    let mesh = Mesh::new();
    let spec = PodSpec::new(157, 2, "b");
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    http_app(SocketAddr::new(ip_app(157, 2), APP_PORT)).await;
    for _ in 0..3 {
        let mut s = TcpStream::connect(b.inbound()).await.unwrap();
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&payload(20_000)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    eventually("aborted uploads freed", Duration::from_secs(10), || {
        b.shared.drain.active() == 0
    })
    .await;
    let body = payload(300_000);
    let mut req = format!(
        "POST /upload HTTP/1.0\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    let (status, text) = http_raw(b.inbound(), &req).await;
    assert_eq!((status, text.as_str()), (200, "POST /upload 300000"));
}

#[tokio::test]
async fn over_the_connection_limit_new_connections_are_refused_existing_go_on() {
    let target = SocketAddr::new(ip(158, 50), APP_PORT);
    echo_app(target, None).await;
    let mesh = Mesh::new();
    let a = passthrough_pod(&mesh, 158, target, "limits: {maxConnectionsOutbound: 3}\n").await;
    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut s = TcpStream::connect(a.outbound()).await.unwrap();
        s.write_all(&[i]).await.unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).await.unwrap();
        held.push(s);
    }
    // The fourth is closed at once, the app never sees it.
    let mut s = TcpStream::connect(a.outbound()).await.unwrap();
    let _ = s.write_all(b"over").await;
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.is_empty());
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(
        a.metrics()
            .contains("warden_listener_overflow_total{listener=\"outbound\"} 1\n")
    );
    // Existing ones go on.
    for (i, s) in held.iter_mut().enumerate() {
        s.write_all(b"still").await.unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"still", "connection {i}");
    }
    // A slot frees when one closes.
    drop(held.pop());
    eventually("slot freed", Duration::from_secs(10), || {
        a.shared.drain.active() == 2
    })
    .await;
    assert_eq!(round_trip(a.outbound(), b"fits").await.unwrap(), b"fits");
}

#[tokio::test]
async fn header_count_and_size_limits_answer_431() {
    let mesh = Mesh::new();
    let mut spec = PodSpec::new(159, 2, "b");
    spec.extra_yaml = "limits: {maxRequestHeadersCount: 10, maxRequestHeadersBytes: 8192}\n".into();
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    http_app(SocketAddr::new(ip_app(159, 2), APP_PORT)).await;
    let many: String = (0..20).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, _) = http_raw(
        b.inbound(),
        format!("GET / HTTP/1.0\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 431);
    let big = "a".repeat(10_000);
    let (status, _) = http_raw(
        b.inbound(),
        format!("GET / HTTP/1.0\r\nHost: x\r\nX-Big: {big}\r\n\r\n").as_bytes(),
    )
    .await;
    assert_eq!(status, 431);
    let few: String = (0..5).map(|i| format!("X-H{i}: v\r\n")).collect();
    let (status, body) = http_raw(
        b.inbound(),
        format!("GET /ok HTTP/1.0\r\nHost: x\r\n{few}\r\n").as_bytes(),
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "GET /ok 0"));
}

/// A mesh-looking TLS client that accepts any server: only the server's checks decide.
mod attacker {
    use std::sync::Arc;

    use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
    use rustls::{DigitallySignedStruct, SignatureScheme};

    #[derive(Debug)]
    struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

    impl ServerCertVerifier for AnyServer {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &ServerName<'_>,
            _: &[u8],
            _: UnixTime,
        ) -> Result<ServerCertVerified, rustls::Error> {
            Ok(ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &CertificateDer<'_>,
            d: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }

    /// Handshakes with `addr` presenting `chain`/`key` (ALPN `istio`), sends `msg`, returns
    /// what came back before the connection ended (empty when refused).
    pub fn echo_with_client_cert(
        addr: std::net::SocketAddr,
        chain_pem: &str,
        key_pem: &str,
        msg: &[u8],
    ) -> Vec<u8> {
        use std::io::{Read, Write};
        let provider = warden_identity::tls::crypto_provider();
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let mut config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_client_auth_cert(chain, key)
            .unwrap();
        config.alpn_protocols = vec![b"istio-peer-exchange".to_vec(), b"istio".to_vec()];
        let conn =
            rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("mesh").unwrap())
                .unwrap();
        let tcp = std::net::TcpStream::connect(addr).unwrap();
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        if tls.write_all(msg).and_then(|_| tls.flush()).is_err() {
            return Vec::new();
        }
        let mut out = vec![0u8; msg.len()];
        match tls.read_exact(&mut out) {
            Ok(()) => out,
            Err(_) => Vec::new(),
        }
    }
}

#[tokio::test]
async fn security_inbound_never_accepts_a_foreign_root_or_trust_domain() {
    // The mesh CA can also issue for evil.example (an alias of the CA, not of the sidecar).
    let mesh = Mesh::with_options(CaOptions {
        trust_domain_aliases: vec![TrustDomain::new("evil.example").unwrap()],
        ..CaOptions::default()
    });
    let foreign = Mesh::new();
    let mut spec = PodSpec::new(160, 2, "b");
    let pa = [("pa.yaml", peer_authn("STRICT"))];
    spec.config = pa.into();
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    let accepted = echo_app(SocketAddr::new(ip_app(160, 2), APP_PORT), None).await;
    let good = SpiffeId::istio(&TrustDomain::default(), NS, "a").unwrap();
    let evil = SpiffeId::istio(&TrustDomain::new("evil.example").unwrap(), NS, "a").unwrap();
    let cases = [
        ("foreign root, right name", foreign.issue(&good)),
        ("mesh root, foreign trust domain", mesh.issue(&evil)),
    ];
    let inbound = b.inbound();
    for (what, (chain, key)) in cases {
        let back = tokio::task::spawn_blocking(move || {
            attacker::echo_with_client_cert(inbound, &chain, &key, b"let me in")
        })
        .await
        .unwrap();
        assert!(back.is_empty(), "{what}: accepted, got {back:?}");
    }
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the app saw a foreign peer"
    );
    // The same client with a mesh certificate gets through: the refusals were about the
    // certificates, not the harness.
    let (chain, key) = mesh.issue(&good);
    let back = tokio::task::spawn_blocking(move || {
        attacker::echo_with_client_cert(inbound, &chain, &key, b"mesh peer")
    })
    .await
    .unwrap();
    assert_eq!(back, b"mesh peer");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn security_outbound_never_accepts_a_server_from_a_foreign_root() {
    let mesh = Mesh::new();
    let foreign = Mesh::new();
    let vip = ip(161, 200);
    let a_cfg = [(
        "services.yaml",
        service_entry("echo", vip, ip(161, 2), "b", "tcp"),
    )];
    let mut a = PodSpec::new(161, 1, "a");
    a.config = a_cfg.into();
    a.outbound_to = Some(SocketAddr::new(vip, APP_PORT));
    let a = start_pod(&mesh, a).await;
    // B has the right name from a foreign root, and trusts both roots (so it would accept A).
    let mut b = PodSpec::new(161, 2, "b");
    b.certs = false;
    let b = start_pod(&foreign, b).await;
    let id = SpiffeId::istio(&TrustDomain::default(), NS, "b").unwrap();
    let (chain, key) = foreign.issue(&id);
    let dir = b.certs_dir();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    std::fs::write(
        dir.join("root-cert.pem"),
        format!(
            "{}{}",
            foreign.ca.root_bundle_pem(),
            mesh.ca.root_bundle_pem()
        ),
    )
    .unwrap();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
    a.wait_ready().await;
    b.wait_ready().await;
    let accepted = echo_app(SocketAddr::new(ip_app(161, 2), APP_PORT), None).await;
    let back = round_trip(a.outbound(), b"secret")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    eventually(
        "UF counted on the client side",
        Duration::from_secs(10),
        || {
            metric_line(
                &a.metrics(),
                "istio_tcp_connections_closed_total",
                &["reporter=\"source\"", "response_flags=\"UF\""],
            )
            .is_some()
        },
    )
    .await;
}

/// hyper's header timer runs from the end of one response to the end of the next request head,
/// so `requestHeadersTimeout` is also the HTTP/1 keep-alive idle timeout (documented).
#[tokio::test]
async fn keep_alive_idle_up_to_the_request_headers_timeout_then_closed_cleanly() {
    let mesh = Mesh::new();
    let mut spec = PodSpec::new(162, 2, "b");
    spec.extra_yaml = "limits: {requestHeadersTimeout: 1s}\n".into();
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    http_app(SocketAddr::new(ip_app(162, 2), APP_PORT)).await;
    let mut s = TcpStream::connect(b.inbound()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    for i in 0..3 {
        s.write_all(b"GET /k HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let text = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(text.starts_with("HTTP/1.1 200"), "request {i}: {text:?}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (got, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    assert!(got.is_empty(), "{got:?}");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    eventually(
        "keep-alive connection freed",
        Duration::from_secs(10),
        || b.shared.drain.active() == 0,
    )
    .await;
}
