//! End-to-end L4 tests with in-process sidecars on real loopback sockets: a client pod's sidecar
//! (outbound) -> mTLS -> a server pod's sidecar (inbound) -> the app. Each "pod" has its own
//! loopback address (127.0.<test>.<pod>), the original destination is given by
//! `StaticOriginalDst` (no iptables), certificates come from a real mesh CA through the static
//! cert directory, and policy and the registry are Istio YAML in the config directory.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn tcp_echo_through_the_mesh_with_metrics() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 11, &[("pa.yaml", peer_authn("STRICT"))]).await;
    let accepted = echo_app(SocketAddr::new(ip_app(11, 2), APP_PORT), None).await;
    let data = payload(1 << 20);
    let back = round_trip(a.outbound(), &data).await.unwrap();
    assert_eq!(back.len(), data.len());
    assert!(back == data, "echoed bytes differ");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // Counters are updated before the access log; give the closing side a moment.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bm = b.metrics();
    let want = [
        "reporter=\"destination\"",
        "source_principal=\"spiffe://cluster.local/ns/test/sa/a\"",
        "destination_principal=\"spiffe://cluster.local/ns/test/sa/b\"",
        "destination_workload=\"b\"",
        "destination_workload_namespace=\"test\"",
        "connection_security_policy=\"mutual_tls\"",
    ];
    let opened = metric_line(&bm, "istio_tcp_connections_opened_total", &want)
        .unwrap_or_else(|| panic!("{bm}"));
    assert_eq!(metric_value(opened), 1);
    let received = metric_line(&bm, "istio_tcp_received_bytes_total", &want).unwrap();
    assert_eq!(metric_value(received), 1 << 20);
    let sent = metric_line(&bm, "istio_tcp_sent_bytes_total", &want).unwrap();
    assert_eq!(metric_value(sent), 1 << 20);
    let closed = metric_line(&bm, "istio_tcp_connections_closed_total", &want).unwrap();
    assert_eq!(metric_value(closed), 1);

    let am = a.metrics();
    let want = [
        "reporter=\"source\"",
        "source_workload=\"a\"",
        "destination_principal=\"spiffe://cluster.local/ns/test/sa/b\"",
        "destination_service=\"echo.test.svc.cluster.local\"",
        "connection_security_policy=\"mutual_tls\"",
        "response_flags=\"-\"",
    ];
    let sent =
        metric_line(&am, "istio_tcp_sent_bytes_total", &want).unwrap_or_else(|| panic!("{am}"));
    assert_eq!(metric_value(sent), 1 << 20);
}

#[tokio::test]
async fn server_first_protocol_plaintext_on_a_declared_tcp_port() {
    let mesh = Mesh::new();
    // PERMISSIVE with the port declared TCP: a plaintext client of a server-first protocol gets
    // the banner without sending anything first.
    let cfg = [("pa.yaml", peer_authn("PERMISSIVE"))];
    let mut spec = PodSpec::new(13, 2, "b");
    spec.config = cfg.into();
    spec.tcp_ports = "7000";
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    echo_app(
        SocketAddr::new(ip_app(13, 2), APP_PORT),
        Some(b"220 ready\r\n"),
    )
    .await;

    let mut s = TcpStream::connect(b.inbound()).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut banner))
        .await
        .expect("no banner: the proxy waited for client bytes")
        .unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    s.write_all(b"HELO x\r\n").await.unwrap();
    let mut echo = [0u8; 8];
    s.read_exact(&mut echo).await.unwrap();
    assert_eq!(&echo, b"HELO x\r\n");
}

#[tokio::test]
async fn server_first_protocol_through_mtls() {
    let mesh = Mesh::new();
    let (a, _b) = two_pods(&mesh, 14, &[("pa.yaml", peer_authn("STRICT"))]).await;
    echo_app(
        SocketAddr::new(ip_app(14, 2), APP_PORT),
        Some(b"* OK IMAP\r\n"),
    )
    .await;
    let mut s = TcpStream::connect(a.outbound()).await.unwrap();
    let mut banner = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut banner))
        .await
        .expect("no banner through the mesh")
        .unwrap();
    assert_eq!(&banner, b"* OK IMAP\r\n");
}

#[tokio::test]
async fn strict_refuses_plaintext() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 15, &[("pa.yaml", peer_authn("STRICT"))]).await;
    let accepted = echo_app(SocketAddr::new(ip_app(15, 2), APP_PORT), None).await;
    let back = round_trip(b.inbound(), b"plaintext")
        .await
        .unwrap_or_default();
    // At most a TLS alert (content type 21) comes back, never the app's echo.
    assert!(
        back.is_empty() || back[0] == 21,
        "STRICT let plaintext through: {back:?}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        0,
        "the app saw a plaintext connection"
    );
    // mTLS still works.
    assert_eq!(round_trip(a.outbound(), b"mtls").await.unwrap(), b"mtls");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn permissive_accepts_both() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 16, &[("pa.yaml", peer_authn("PERMISSIVE"))]).await;
    echo_app(SocketAddr::new(ip_app(16, 2), APP_PORT), None).await;
    assert_eq!(round_trip(b.inbound(), b"plain").await.unwrap(), b"plain");
    assert_eq!(
        round_trip(a.outbound(), b"mutual").await.unwrap(),
        b"mutual"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = b.metrics();
    assert!(
        metric_line(
            &m,
            "istio_tcp_connections_opened_total",
            &["connection_security_policy=\"none\""]
        )
        .is_some(),
        "{m}"
    );
    assert!(
        metric_line(
            &m,
            "istio_tcp_connections_opened_total",
            &["connection_security_policy=\"mutual_tls\""]
        )
        .is_some(),
        "{m}"
    );
}

#[tokio::test]
async fn disable_is_plaintext_only() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 17, &[("pa.yaml", peer_authn("DISABLE"))]).await;
    echo_app(SocketAddr::new(ip_app(17, 2), APP_PORT), None).await;
    assert_eq!(round_trip(b.inbound(), b"plain").await.unwrap(), b"plain");
    // The mesh client's handshake reaches the app as bytes and fails: nothing comes back.
    let back = round_trip(a.outbound(), b"mutual")
        .await
        .unwrap_or_default();
    assert!(
        back.is_empty(),
        "mTLS went through a DISABLE port: {back:?}"
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = a.metrics();
    assert!(
        metric_line(
            &m,
            "istio_tcp_connections_closed_total",
            &["response_flags=\"UF\""]
        )
        .is_some(),
        "{m}"
    );
}

fn allow_principal(sa: &str) -> String {
    format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: allow-{sa}, namespace: {NS}}}\n\
         spec:\n  selector: {{matchLabels: {{app: b}}}}\n  action: ALLOW\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/{NS}/sa/{sa}]}}\n"
    )
}

#[tokio::test]
async fn tcp_authorization_allows_by_principal_and_denies_others() {
    let mesh = Mesh::new();
    let test = 18;
    let (a, b) = two_pods(
        &mesh,
        test,
        &[
            ("pa.yaml", peer_authn("STRICT")),
            ("authz.yaml", allow_principal("a")),
        ],
    )
    .await;
    let accepted = echo_app(SocketAddr::new(ip_app(test, 2), APP_PORT), None).await;
    // Pod C (sa c) dials the same service.
    let vip = ip(test, 200);
    let c_cfg = [(
        "services.yaml",
        service_entry("echo", vip, ip(test, 2), "b", "tcp"),
    )];
    let mut c = PodSpec::new(test, 3, "c");
    c.config = c_cfg.into();
    c.outbound_to = Some(SocketAddr::new(vip, APP_PORT));
    let c = start_pod(&mesh, c).await;
    c.wait_ready().await;

    assert_eq!(
        round_trip(a.outbound(), b"from a").await.unwrap(),
        b"from a"
    );
    let back = round_trip(c.outbound(), b"from c")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "c was not denied: {back:?}");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "the denied connection reached the app"
    );

    // A DENY policy for a wins over the ALLOW: a is now denied too (config change, no restart).
    b.write_config(
        "deny.yaml",
        &format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-a, namespace: {NS}}}\n\
             spec:\n  action: DENY\n  rules:\n  - from:\n    - source: {{principals: [cluster.local/ns/{NS}/sa/a]}}\n"
        ),
    )
    .await;
    let back = round_trip(a.outbound(), b"from a")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "DENY did not apply: {back:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn wrong_server_identity_is_refused_by_secure_naming() {
    let mesh = Mesh::new();
    let test = 19;
    // A expects the service to be backed by sa `b`, but the endpoint is pod C (sa `c`).
    let vip = ip(test, 200);
    let a_cfg = [(
        "services.yaml",
        service_entry("echo", vip, ip(test, 3), "b", "tcp"),
    )];
    let mut a = PodSpec::new(test, 1, "a");
    a.config = a_cfg.into();
    a.outbound_to = Some(SocketAddr::new(vip, APP_PORT));
    let a = start_pod(&mesh, a).await;
    let c = start_pod(&mesh, PodSpec::new(test, 3, "c")).await;
    a.wait_ready().await;
    c.wait_ready().await;
    let accepted = echo_app(SocketAddr::new(ip_app(test, 3), APP_PORT), None).await;
    let back = round_trip(a.outbound(), b"secret")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "data went to an impostor: {back:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = a.metrics();
    assert!(
        metric_line(
            &m,
            "istio_tcp_connections_closed_total",
            &[
                "response_flags=\"UF\"",
                "destination_service=\"echo.test.svc.cluster.local\""
            ]
        )
        .is_some(),
        "{m}"
    );
}

#[tokio::test]
async fn upstream_down_closes_and_counts() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 20, &[("pa.yaml", peer_authn("STRICT"))]).await;
    // No app listening on B.
    let back = round_trip(a.outbound(), b"anyone?")
        .await
        .unwrap_or_default();
    assert!(back.is_empty());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = b.metrics();
    let line = metric_line(
        &m,
        "istio_tcp_connections_closed_total",
        &[
            "reporter=\"destination\"",
            "response_flags=\"UF\"",
            "source_principal=\"spiffe://cluster.local/ns/test/sa/a\"",
        ],
    )
    .unwrap_or_else(|| panic!("{m}"));
    assert_eq!(metric_value(line), 1);
}

#[tokio::test]
async fn readiness_waits_for_certificates() {
    let mesh = Mesh::new();
    let mut spec = PodSpec::new(21, 1, "a");
    spec.certs = false;
    let pod = start_pod(&mesh, spec).await;
    let health = SocketAddr::new(pod.ip, 15021);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (status, body) = http_get(health, "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("certificate not loaded"), "{body}");
    assert!(
        body.contains("cert-chain.pem"),
        "the reason names the missing file: {body}"
    );
    mesh.write_certs(&pod.certs_dir(), "a");
    pod.wait_ready().await;
    let (status, _) = http_get(health, "/healthz/ready").await;
    assert_eq!(status, 200);
    // Admin views.
    let admin = SocketAddr::new(pod.ip, 15000);
    let (status, body) = http_get(admin, "/certs").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["identity"], "spiffe://cluster.local/ns/test/sa/a");
    assert!(v["seconds_until_expiry"].as_i64().unwrap() > 3000, "{body}");
    assert!(v["chain"][0]["not_after"].is_string(), "{body}");
    let (status, body) = http_get(admin, "/config_dump").await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        v["identity"]["spiffe_id"],
        "spiffe://cluster.local/ns/test/sa/a"
    );
    assert_eq!(v["policy"]["peer_authentication"]["mode"], "PERMISSIVE");
}

/// A minimal HTTP/1.0 GET (status, body).
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_req(addr, "GET", path).await
}

async fn http_req(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn drain_lets_in_flight_transfers_finish() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 22, &[("pa.yaml", peer_authn("STRICT"))]).await;
    echo_app(SocketAddr::new(ip_app(22, 2), APP_PORT), None).await;
    // Start a transfer, drain both sidecars mid-way, finish it.
    let mut s = TcpStream::connect(a.outbound()).await.unwrap();
    s.write_all(b"first half,").await.unwrap();
    let mut buf = [0u8; 11];
    s.read_exact(&mut buf).await.unwrap();
    let (status, _) = http_req(SocketAddr::new(a.ip, 15000), "POST", "/quitquitquit").await;
    assert_eq!(status, 200);
    b.shared.drain.start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // New connections are refused once listeners closed.
    assert!(
        TcpStream::connect(a.outbound()).await.is_err(),
        "still accepting while draining"
    );
    let (status, body) = http_get(SocketAddr::new(b.ip, 15021), "/healthz/ready").await;
    assert_eq!(status, 503, "{body}");
    s.write_all(b" second half").await.unwrap();
    s.shutdown().await.unwrap();
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b" second half");
    let outcome = tokio::time::timeout(Duration::from_secs(10), a.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.abandoned, 0);
    let outcome = tokio::time::timeout(Duration::from_secs(10), b.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(outcome.abandoned, 0);
}

#[tokio::test]
async fn loop_to_own_port_is_refused() {
    let mesh = Mesh::new();
    let mut spec = PodSpec::new(23, 1, "a");
    spec.outbound_to = Some(SocketAddr::new(ip(23, 1), 15001));
    let a = start_pod(&mesh, spec).await;
    a.wait_ready().await;
    let back = round_trip(a.outbound(), b"loop").await.unwrap_or_default();
    assert!(back.is_empty());
    // The connection is served on a worker thread: its slot is freed just after the close
    // the client saw.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while a.shared.drain.active() != 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        a.shared.drain.active(),
        0,
        "the looping connection is still open"
    );
}

#[tokio::test]
async fn inbound_to_a_proxy_port_is_refused() {
    let mesh = Mesh::new();
    let cfg = [("pa.yaml", peer_authn("PERMISSIVE"))];
    let mut spec = PodSpec::new(28, 2, "b");
    spec.config = cfg.into();
    // Destined to the pod's admin port: forwarding would reach appHost:15000.
    spec.inbound_to = Some(SocketAddr::new(ip(28, 2), 15000));
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    let accepted = echo_app(SocketAddr::new(ip_app(28, 2), 15000), None).await;
    let back = round_trip(b.inbound(), b"GET /quitquitquit HTTP/1.0\r\n\r\n")
        .await
        .unwrap_or_default();
    assert!(back.is_empty(), "{back:?}");
    assert_eq!(accepted.load(Ordering::SeqCst), 0);
    assert!(!b.shared.drain.is_draining());
}

#[tokio::test]
async fn unknown_destinations_follow_the_outbound_traffic_policy() {
    let mesh = Mesh::new();
    let test = 24;
    let external = SocketAddr::new(ip(test, 150), 9000);
    echo_app(external, None).await;
    let mut spec = PodSpec::new(test, 1, "a");
    spec.outbound_to = Some(external);
    let a = start_pod(&mesh, spec).await;
    a.wait_ready().await;
    assert_eq!(round_trip(a.outbound(), b"out").await.unwrap(), b"out");

    let mut spec = PodSpec::new(test, 2, "b");
    spec.outbound_to = Some(external);
    spec.extra_yaml = "outboundTrafficPolicy: REGISTRY_ONLY\n".into();
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    let back = round_trip(b.outbound(), b"out").await.unwrap_or_default();
    assert!(back.is_empty(), "REGISTRY_ONLY let an unknown host through");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        metric_line(
            &b.metrics(),
            "istio_tcp_connections_closed_total",
            &["response_flags=\"NR\""]
        )
        .is_some()
    );
}

#[tokio::test]
async fn config_and_cert_changes_keep_established_connections() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 25, &[("pa.yaml", peer_authn("STRICT"))]).await;
    echo_app(SocketAddr::new(ip_app(25, 2), APP_PORT), None).await;
    let mut s = TcpStream::connect(a.outbound()).await.unwrap();
    s.write_all(b"one").await.unwrap();
    let mut buf = [0u8; 3];
    s.read_exact(&mut buf).await.unwrap();

    // An invalid policy file: reported, and the last good config stays (STRICT, still serving).
    b.write_config("bad.yaml", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x, namespace: test}\nspec: {mtls: {mode: SOMETIMES}}\n").await;
    let problems = b.shared.policy.load().as_ref().unwrap().problems.clone();
    assert!(
        problems.iter().any(|p| p.contains("bad.yaml")),
        "{problems:?}"
    );
    assert_eq!(
        b.shared
            .policy
            .load()
            .as_ref()
            .unwrap()
            .compiled
            .peer_authentication
            .mode_for_port(APP_PORT),
        warden_policy::MtlsPolicy::Strict
    );
    // Breaking the good file keeps its last good version too.
    b.write_config("pa.yaml", "kind: PeerAuthentication\n  nonsense: [\n")
        .await;
    assert_eq!(
        b.shared
            .policy
            .load()
            .as_ref()
            .unwrap()
            .compiled
            .peer_authentication
            .mode_for_port(APP_PORT),
        warden_policy::MtlsPolicy::Strict
    );

    // New certificates for both sidecars.
    let before = b.shared.tls.current().unwrap().not_after();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    mesh.write_certs(&b.certs_dir(), "b");
    mesh.write_certs(&a.certs_dir(), "a");
    for _ in 0..200 {
        if b.shared.tls.current().unwrap().not_after() != before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_ne!(
        b.shared.tls.current().unwrap().not_after(),
        before,
        "certificate not reloaded"
    );

    // The old connection still works, and a new one uses the new certificates.
    s.write_all(b"two").await.unwrap();
    s.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two");
    assert_eq!(round_trip(a.outbound(), b"new").await.unwrap(), b"new");
    // A certificate for another identity is refused and the current one stays.
    mesh.write_certs(&b.certs_dir(), "mallory");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        b.shared.tls.current().unwrap().identity().as_str(),
        "spiffe://cluster.local/ns/test/sa/b"
    );
    assert_eq!(round_trip(a.outbound(), b"still").await.unwrap(), b"still");
}

/// An HTTP app (hyper): answers `<method> <path> from <peer ip>` with 200.
async fn http_app(addr: SocketAddr) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let listener = TcpListener::bind(addr).await.unwrap();
    tokio::spawn(async move {
        loop {
            let (s, peer) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    move |req: hyper::Request<hyper::body::Incoming>| async move {
                        let body = format!("{} {} from {}", req.method(), req.uri(), peer.ip());
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(body),
                        )))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                    .await;
            });
        }
    });
}

async fn curl(url: &str) -> (u16, String) {
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--path-as-is",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            url,
        ])
        .output()
        .await
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

#[tokio::test]
async fn http_per_request_authorization_through_mtls_and_plaintext() {
    let mesh = Mesh::new();
    let test = 26;
    let vip = ip(test, 200);
    let deny_admin = format!(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: deny-admin, namespace: {NS}}}\n\
         spec:\n  action: DENY\n  rules:\n  - to:\n    - operation: {{paths: [\"/admin*\"]}}\n"
    );
    let a_cfg = [(
        "services.yaml",
        service_entry("web", vip, ip(test, 2), "b", "http"),
    )];
    let mut a = PodSpec::new(test, 1, "a");
    a.config = a_cfg.into();
    a.outbound_to = Some(SocketAddr::new(vip, APP_PORT));
    let a = start_pod(&mesh, a).await;
    let b_cfg = [
        ("pa.yaml", peer_authn("PERMISSIVE")),
        ("authz.yaml", deny_admin),
    ];
    let mut b = PodSpec::new(test, 2, "b");
    b.config = b_cfg.into();
    let b = start_pod(&mesh, b).await;
    a.wait_ready().await;
    b.wait_ready().await;
    http_app(SocketAddr::new(ip_app(test, 2), APP_PORT)).await;

    // curl -> A (outbound, istio-http/1.1 ALPN) -> mTLS -> B (HTTP, per request) -> app.
    let (code, body) = curl(&format!("http://{}/public?x=1", a.outbound())).await;
    assert_eq!(code, 200, "{body}");
    // The app sees the normalized path with the query, from 127.0.0.6.
    assert_eq!(body, "GET /public?x=1 from 127.0.0.6");
    let (code, body) = curl(&format!("http://{}/admin/users", a.outbound())).await;
    assert_eq!(code, 403);
    assert_eq!(body, "RBAC: access denied");
    // Path tricks are normalized before matching.
    let (code, _) = curl(&format!("http://{}/public/../admin", a.outbound())).await;
    assert_eq!(code, 403, "path confusion let /admin through");
    // Plaintext HTTP straight to the inbound port (PERMISSIVE): authorized per request too.
    let (code, _) = curl(&format!("http://{}/a", b.inbound())).await;
    assert_eq!(code, 200, "plaintext HTTP in PERMISSIVE");
    let (code, body) = curl(&format!("http://{}/admin", b.inbound())).await;
    assert_eq!((code, body.as_str()), (403, "RBAC: access denied"));
}

#[tokio::test]
async fn http_app_down_is_503() {
    let mesh = Mesh::new();
    let cfg = [("pa.yaml", peer_authn("PERMISSIVE"))];
    let mut b = PodSpec::new(27, 2, "b");
    b.config = cfg.into();
    let b = start_pod(&mesh, b).await;
    b.wait_ready().await;
    let (code, body) = curl(&format!("http://{}/x", b.inbound())).await;
    assert_eq!(code, 503, "{body}");
}

#[tokio::test]
async fn drain_closes_idle_http_keep_alive_connections() {
    let mesh = Mesh::new();
    let cfg = [("pa.yaml", peer_authn("PERMISSIVE"))];
    let mut spec = PodSpec::new(29, 2, "b");
    spec.config = cfg.into();
    let b = start_pod(&mesh, spec).await;
    b.wait_ready().await;
    http_app(SocketAddr::new(ip_app(29, 2), APP_PORT)).await;
    let mut s = TcpStream::connect(b.inbound()).await.unwrap();
    s.write_all(b"GET /one HTTP/1.1\r\nHost: b\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    // The connection is idle and kept alive; draining closes it instead of waiting it out.
    b.shared.drain.start();
    let outcome = tokio::time::timeout(Duration::from_secs(10), b.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        outcome.abandoned, 0,
        "the idle keep-alive connection held the drain"
    );
    let n = s.read(&mut buf).await.unwrap_or(0);
    assert_eq!(n, 0, "connection still open after drain");
}

#[tokio::test]
async fn permissive_passes_the_apps_own_tls_through() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 30, &[("pa.yaml", peer_authn("PERMISSIVE"))]).await;
    let accepted = echo_app(SocketAddr::new(ip_app(30, 2), APP_PORT), None).await;
    // A non-mesh TLS client (ALPN h2, no client certificate): its bytes reach the app as they
    // are (the echo app sends its own ClientHello back, so the handshake itself fails).
    let out = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &b.inbound().to_string(),
            "-alpn",
            "h2",
        ])
        .stdin(std::process::Stdio::null())
        .output();
    let _ = tokio::time::timeout(Duration::from_secs(10), out).await;
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        1,
        "non-mesh TLS did not pass through"
    );
    // Mesh clients still get mTLS.
    assert_eq!(round_trip(a.outbound(), b"mesh").await.unwrap(), b"mesh");
    tokio::time::sleep(Duration::from_millis(100)).await;
    let m = b.metrics();
    assert!(
        metric_line(
            &m,
            "istio_tcp_connections_opened_total",
            &["connection_security_policy=\"mutual_tls\""]
        )
        .is_some(),
        "{m}"
    );
}

#[tokio::test]
async fn long_lived_connections_spread_evenly_over_the_workers() {
    let mesh = Mesh::new();
    let (a, b) = two_pods(&mesh, 13, &[("pa.yaml", peer_authn("STRICT"))]).await;
    let _accepted = echo_app(SocketAddr::new(ip_app(13, 2), APP_PORT), None).await;
    let workers = a.shared.config.concurrency;
    assert!(workers >= 2, "the sidecar runs {workers} worker(s)");
    let total = |p: &Pod| p.shared.worker_connections().map_or(0, |v| v.iter().sum());
    // Connections from the same client address: SO_REUSEPORT alone would spread them by a hash
    // of their ports, often unevenly; each outbound connection opens one inbound on B.
    let n = 4 * workers;
    let mut open = Vec::new();
    for i in 1..=n {
        let mut c = TcpStream::connect(a.outbound()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        open.push(c);
        eventually(
            "the connection to be counted",
            Duration::from_secs(5),
            || total(&a) == i && total(&b) == i,
        )
        .await;
    }
    for pod in [&a, &b] {
        let per_worker = pod.shared.worker_connections().unwrap();
        assert_eq!(per_worker, vec![4; workers], "{per_worker:?}");
    }
    drop(open);
    eventually("the connections to close", Duration::from_secs(5), || {
        total(&a) == 0 && total(&b) == 0
    })
    .await;
}
