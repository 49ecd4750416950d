//! The embedded agent against an in-process fake of the CA service (tonic server from
//! `identity::proto`, backed by a real `CertificateAuthority`, over TLS on loopback): first
//! certificate, token re-read per call, rotation without failed handshakes, CA outage, expiry
//! (fail closed), CRL revocation, root bundle changes.

mod fakeca;
mod tlsutil;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fakeca::FakeCa;
use rustls::client::Resumption;
use rustls::pki_types::ServerName;
use tlsutil::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_identity::SpiffeId;
use warden_identity::agent::{AgentConfig, AgentError, AgentStatus, CaAgent, IdentityHandle};
use warden_identity::tls::{Alpn, PeerCertError, TlsError, TlsProvider, TlsSettings};
use warden_identity::x509::Serial;

struct Env {
    mesh: Mesh,
    ca: FakeCa,
    files: tempfile::TempDir,
    identity: SpiffeId,
}

impl Env {
    async fn new() -> Self {
        let mesh = Mesh::new();
        let ca = FakeCa::start(mesh.ca.clone()).await;
        let files = tempfile::tempdir().unwrap();
        put(files.path(), "root-cert.pem", &mesh.root_pem());
        put(files.path(), "token", "token-1\n");
        let identity = id("app", "web");
        ca.allow("token-1", &identity);
        Self {
            mesh,
            ca,
            files,
            identity,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    fn config(&self, ttl: Duration) -> AgentConfig {
        let mut c = AgentConfig::new(self.ca.addr.to_string(), self.identity.clone());
        c.ca_server_name = Some("istiod.istio-system.svc".into());
        c.root_cert_file = self.path("root-cert.pem");
        c.token_file = self.path("token");
        c.requested_ttl = ttl;
        c.initial_backoff = Duration::from_millis(100);
        c.max_backoff = Duration::from_millis(400);
        c.call_timeout = Duration::from_secs(3);
        c.root_poll = Duration::from_millis(100);
        c.crl_refresh = Duration::from_millis(300);
        c
    }

    fn start(&self, config: AgentConfig) -> (TlsProvider, IdentityHandle) {
        let provider = TlsProvider::new(TlsSettings::default()).unwrap();
        let handle = CaAgent::start(config, provider.clone()).unwrap();
        (provider, handle)
    }
}

/// Waits (at most `limit`) for the status to satisfy `f`.
async fn wait_status(
    h: &IdentityHandle,
    limit: Duration,
    what: &str,
    f: impl Fn(&AgentStatus) -> bool,
) -> AgentStatus {
    let mut rx = h.subscribe();
    match tokio::time::timeout(limit, rx.wait_for(|s| f(s))).await {
        Ok(Ok(s)) => s.clone(),
        _ => panic!("timed out waiting for {what}; status: {:#?}", h.status()),
    }
}

/// A full (never resumed) handshake: `peer` connects to `server`. Returns the serial and
/// identity of the certificate the server presented, or the server's error.
async fn probe(server: &TlsProvider, peer: &TlsProvider) -> Result<(Serial, SpiffeId), TlsError> {
    let (c, s) = tcp_pair().await;
    let mut cfg = (**peer.current().unwrap().client(Alpn::Tcp)).clone();
    cfg.resumption = Resumption::disabled();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
    let name = ServerName::try_from("probe.invalid").unwrap();
    let (a, b) = tokio::join!(server.accept(s), connector.connect(name, c));
    a?;
    let tls = b.map_err(TlsError::from_io)?;
    let leaf = &tls.get_ref().1.peer_certificates().unwrap()[0];
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let id = warden_identity::tls::spiffe_id_of(leaf).unwrap();
    Ok((Serial::of(&cert), id))
}

#[tokio::test]
async fn agent_gets_a_certificate_and_reads_the_token_on_every_call() {
    let env = Env::new().await;
    let (provider, handle) = env.start(env.config(Duration::from_secs(4)));
    let st = handle.wait_ready(Duration::from_secs(10)).await.unwrap();
    assert_eq!(st.identity.as_ref(), Some(&env.identity));
    assert!(
        st.reason
            .starts_with("ready: certificate for spiffe://cluster.local/ns/app/sa/web valid until"),
        "{}",
        st.reason
    );
    let peer = env.mesh.provider(&id("app", "client"));
    let (_, presented) = probe(&provider, &peer).await.unwrap();
    assert_eq!(presented, env.identity);
    // And as a client, with secure naming.
    let peer_server = env.mesh.provider(&id("app", "db"));
    let (c, s) = tcp_pair().await;
    let db = [id("app", "db")];
    let (a, b) = tokio::join!(peer_server.accept(s), provider.connect(c, &db, Alpn::Http2));
    assert_eq!(a.unwrap().1, env.identity);
    assert_eq!(b.unwrap().1, id("app", "db"));

    // The token is rotated (Kubernetes does this): the next call sends the new one.
    env.ca.allow("token-2", &env.identity);
    put(env.files.path(), "token", "token-2\n");
    let installed = st.certificates_installed;
    wait_status(
        &handle,
        Duration::from_secs(10),
        "a renewal with the new token",
        |s| s.certificates_installed > installed,
    )
    .await;
    let seen = env.ca.seen_tokens();
    assert_eq!(seen.first().map(String::as_str), Some("token-1"));
    assert!(seen.contains(&"token-2".to_owned()), "{seen:?}");

    // A token the CA refuses: the error is reported, the still-valid certificate is kept.
    put(env.files.path(), "token", "stolen\n");
    let st = wait_status(
        &handle,
        Duration::from_secs(10),
        "an Unauthenticated error",
        |s| {
            matches!(
                &s.last_error,
                Some(AgentError::Rpc {
                    code: tonic::Code::Unauthenticated,
                    ..
                })
            )
        },
    )
    .await;
    assert!(st.ready, "{}", st.reason);
    assert!(st.reason.contains("renewal failing"), "{}", st.reason);
    assert!(st.reason.contains("Unauthenticated"), "{}", st.reason);
    assert!(probe(&provider, &peer).await.is_ok());
    assert_eq!(
        env.ca.seen_tokens().last().map(String::as_str),
        Some("stolen")
    );
}

#[tokio::test]
async fn rotation_keeps_connections_and_never_fails_a_handshake() {
    let env = Env::new().await;
    let (provider, handle) = env.start(env.config(Duration::from_secs(4)));
    handle.wait_ready(Duration::from_secs(10)).await.unwrap();
    let peer = env.mesh.provider(&id("app", "client"));

    // A long-lived connection opened with the first certificate.
    let (c, s) = tcp_pair().await;
    let (a, b) = tokio::join!(
        provider.accept(s),
        peer.connect(c, std::slice::from_ref(&env.identity), Alpn::Tcp)
    );
    let (mut server_side, _, _) = a.unwrap();
    let (mut client_side, _) = b.unwrap();

    let mut serials = Vec::new();
    let mut handshakes = 0;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(9) {
        let (serial, presented) = probe(&provider, &peer)
            .await
            .unwrap_or_else(|e| panic!("handshake {handshakes} failed during rotation: {e}"));
        assert_eq!(presented, env.identity);
        if serials.last() != Some(&serial) {
            serials.push(serial);
        }
        handshakes += 1;
        // The long-lived connection keeps working.
        client_side.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        server_side.read_exact(&mut buf).await.unwrap();
        server_side.write_all(b"pong").await.unwrap();
        client_side.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Renewal at half of a 4s lifetime: at least three certificates in 9 seconds, each new
    // one presented by new connections.
    assert!(
        serials.len() >= 3,
        "{} certificates over {handshakes} handshakes",
        serials.len()
    );
    let st = handle.status();
    assert!(st.ready);
    assert_eq!(st.consecutive_failures, 0);
    assert!(st.certificates_installed >= 3);
}

#[tokio::test]
async fn ca_outage_keeps_the_valid_certificate_and_recovers() {
    let mut env = Env::new().await;
    let (provider, handle) = env.start(env.config(Duration::from_secs(6)));
    let first = handle.wait_ready(Duration::from_secs(10)).await.unwrap();
    let peer = env.mesh.provider(&id("app", "client"));
    env.ca.stop();
    // Renewal is due after ~3s; it fails, the certificate stays.
    let st = wait_status(&handle, Duration::from_secs(6), "failed renewals", |s| {
        s.consecutive_failures >= 2
    })
    .await;
    assert!(st.ready, "{}", st.reason);
    assert_eq!(st.serial, first.serial);
    assert!(
        matches!(
            &st.last_error,
            Some(AgentError::Connect { .. } | AgentError::Rpc { .. })
        ),
        "{:?}",
        st.last_error
    );
    let (serial, _) = probe(&provider, &peer).await.unwrap();
    assert_eq!(Some(serial), first.serial);
    // The CA comes back before the certificate expires: a new one arrives.
    env.ca.restart().await;
    let st = wait_status(&handle, Duration::from_secs(5), "recovery", |s| {
        s.consecutive_failures == 0 && s.serial != first.serial
    })
    .await;
    assert!(st.ready && st.last_error.is_none(), "{st:?}");
    let (serial, _) = probe(&provider, &peer).await.unwrap();
    assert_eq!(Some(serial), st.serial);
}

#[tokio::test]
async fn an_expired_certificate_fails_closed_until_the_ca_returns() {
    let mut env = Env::new().await;
    let (provider, handle) = env.start(env.config(Duration::from_secs(2)));
    handle.wait_ready(Duration::from_secs(10)).await.unwrap();
    let peer = env.mesh.provider(&id("app", "client"));
    env.ca.stop();
    let st = wait_status(&handle, Duration::from_secs(6), "not ready", |s| !s.ready).await;
    assert!(
        st.reason.starts_with(
            "not ready: certificate for spiffe://cluster.local/ns/app/sa/web expired at"
        ),
        "{}",
        st.reason
    );
    assert!(st.reason.contains("mTLS is refused"), "{}", st.reason);
    assert!(!provider.has_credentials());
    assert!(matches!(
        probe(&provider, &peer).await,
        Err(TlsError::NoCredentials)
    ));
    let (c, _s) = tcp_pair().await;
    assert!(matches!(
        provider.connect(c, &[id("app", "x")], Alpn::Tcp).await,
        Err(TlsError::NoCredentials)
    ));
    env.ca.restart().await;
    handle.wait_ready(Duration::from_secs(5)).await.unwrap();
    assert!(probe(&provider, &peer).await.is_ok());
}

#[tokio::test]
async fn a_peer_revoked_at_the_ca_is_refused_after_the_crl_refresh() {
    let env = Env::new().await;
    let (provider, handle) = env.start(env.config(Duration::from_secs(60)));
    handle.wait_ready(Duration::from_secs(10)).await.unwrap();
    wait_status(&handle, Duration::from_secs(5), "a first CRL", |s| {
        s.crl_updated.is_some()
    })
    .await;
    let bad = env.mesh.issue(&id("app", "compromised"), 3600);
    let peer = TlsProvider::new(TlsSettings::default()).unwrap();
    peer.install(&bad.creds).unwrap();
    assert!(probe(&provider, &peer).await.is_ok());
    env.mesh.ca.revoke_serial(bad.creds.serial()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match probe(&provider, &peer).await {
            Err(TlsError::PeerCertificate(PeerCertError::Revoked { serial })) => {
                assert_eq!(serial.as_ref(), Some(bad.creds.serial()));
                break;
            }
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            other => panic!("expected a revoked refusal, got {other:?}"),
        }
    }
    assert!(handle.status().crl_error.is_none());
}

#[tokio::test]
async fn a_changed_root_bundle_is_picked_up_without_restart() {
    let env = Env::new().await;
    let (provider, handle) = env.start(env.config(Duration::from_secs(60)));
    handle.wait_ready(Duration::from_secs(10)).await.unwrap();
    // A workload of another mesh (e.g. after a root rotation or a merge of meshes).
    // It trusts both roots; we trust only ours so far.
    let other = foreign_mesh();
    let issued = other.issue(&id("app", "client"), 3600);
    let both = other.trust().merged_with_roots(env.mesh.trust().roots());
    let stranger = TlsProvider::new(TlsSettings::default()).unwrap();
    stranger
        .install(&issued.creds.with_trust(both).unwrap())
        .unwrap();
    assert!(matches!(
        probe(&provider, &stranger).await,
        Err(TlsError::PeerCertificate(PeerCertError::UnknownRoot))
    ));
    put(
        env.files.path(),
        "root-cert.pem",
        &format!("{}{}", env.mesh.root_pem(), other.root_pem()),
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while probe(&provider, &stranger).await.is_err() {
        assert!(Instant::now() < deadline, "new root not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(handle.is_ready());
}

#[tokio::test]
async fn the_ca_certificate_must_carry_the_expected_name() {
    let env = Env::new().await;
    let mut cfg = env.config(Duration::from_secs(60));
    cfg.ca_server_name = Some("ca.elsewhere.example".into());
    let (provider, handle) = env.start(cfg);
    let st = wait_status(&handle, Duration::from_secs(5), "a connect error", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(!st.ready && !provider.has_credentials());
    let msg = st.last_error.unwrap().to_string();
    assert!(msg.contains(&env.ca.addr.to_string()), "{msg}");
    assert!(msg.contains("certificate"), "{msg}");
    assert!(
        st.reason
            .starts_with("not ready: waiting for the first certificate"),
        "{}",
        st.reason
    );
    // Nothing reached the CA's signing code.
    assert!(env.ca.seen_tokens().is_empty());
}

#[tokio::test]
async fn rsa_workload_keys_work_too() {
    let env = Env::new().await;
    let mut cfg = env.config(Duration::from_secs(60));
    cfg.key_algorithm = warden_identity::KeyAlgorithm::Rsa2048;
    let (provider, handle) = env.start(cfg);
    handle.wait_ready(Duration::from_secs(20)).await.unwrap();
    let peer = env.mesh.provider(&id("app", "client"));
    assert_eq!(probe(&provider, &peer).await.unwrap().1, env.identity);
    // Tokens that cannot travel in a header are refused before any call.
    put(env.files.path(), "token", "two words\n");
    let mut cfg = env.config(Duration::from_secs(60));
    cfg.identity = id("app", "other");
    let (_, other) = env.start(cfg);
    let st = wait_status(&other, Duration::from_secs(5), "a token error", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(
        matches!(&st.last_error, Some(AgentError::Token { path, .. }) if path.ends_with("token")),
        "{:?}",
        st.last_error
    );
}
