//! Mesh mTLS between two endpoints on loopback, with certificates from a real mesh CA: success,
//! secure naming, and every way a peer certificate is refused, each with its own error.

mod tlsutil;

use std::sync::Arc;

use rcgen::ExtendedKeyUsagePurpose;
use rustls::HandshakeKind;
use rustls::pki_types::{CertificateRevocationListDer, ServerName};
use tlsutil::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_identity::tls::{
    Alpn, PeerCertError, Purpose, TlsError, TlsProvider, TlsSettings, TrustBundle,
    WorkloadCredentials, alpn, peer_identity,
};
use warden_identity::{SpiffeId, TrustDomain};

/// Runs accept and connect concurrently on a loopback pair; exchanges a byte when both
/// succeed.
async fn handshake(
    server: &TlsProvider,
    client: &TlsProvider,
    expected: &[SpiffeId],
    alpn: Alpn,
) -> (
    Result<warden_identity::tls::Accepted<tokio::net::TcpStream>, TlsError>,
    Result<
        (
            warden_identity::tls::ClientTlsStream<tokio::net::TcpStream>,
            SpiffeId,
        ),
        TlsError,
    >,
) {
    let (c, s) = tcp_pair().await;
    let (mut a, mut b) = tokio::join!(server.accept(s), client.connect(c, expected, alpn));
    if let (Ok((ss, _, _)), Ok((cs, _))) = (&mut a, &mut b) {
        // A round trip: the client also reads the session tickets sent after the handshake.
        cs.write_all(b"x").await.unwrap();
        cs.flush().await.unwrap();
        let mut buf = [0u8; 1];
        ss.read_exact(&mut buf).await.unwrap();
        ss.write_all(b"y").await.unwrap();
        ss.flush().await.unwrap();
        cs.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"y");
    }
    (a, b)
}

#[tokio::test]
async fn mutual_tls_succeeds_with_pq_key_exchange_and_alpn() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let server = mesh.provider(&sid);
    let client = mesh.provider(&cid);
    for (set, want) in [
        (Alpn::Tcp, alpn::ISTIO_PEER_EXCHANGE),
        (Alpn::Http11, alpn::ISTIO_HTTP11),
        (Alpn::Http2, alpn::ISTIO_H2),
    ] {
        let (a, b) = handshake(&server, &client, &[id("x", "y"), sid.clone()], set).await;
        let (ss, peer_of_server, negotiated) = a.unwrap();
        let (cs, peer_of_client) = b.unwrap();
        assert_eq!(peer_of_server, cid);
        assert_eq!(peer_of_client, sid);
        assert_eq!(negotiated, Some(want), "{set:?}");
        let (_, conn) = cs.get_ref();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        assert_eq!(
            conn.negotiated_key_exchange_group().map(|g| g.name()),
            Some(rustls::NamedGroup::X25519MLKEM768)
        );
        // AES-128-GCM, as Envoy's BoringSSL, Go and OpenSSL clients prefer.
        assert_eq!(
            conn.negotiated_cipher_suite().map(|s| s.suite()),
            Some(rustls::CipherSuite::TLS13_AES_128_GCM_SHA256)
        );
        assert_eq!(peer_identity(ss.get_ref().1), Some(cid.clone()));
    }
    // The provider offers X25519MLKEM768 first, and TLS 1.3 suites before TLS 1.2 ones.
    let p = warden_identity::tls::crypto_provider();
    assert_eq!(p.kx_groups[0].name(), rustls::NamedGroup::X25519MLKEM768);
    let suites: Vec<_> = p.cipher_suites.iter().map(|s| s.suite()).collect();
    assert_eq!(
        &suites[..3],
        &[
            rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
            rustls::CipherSuite::TLS13_AES_256_GCM_SHA384,
            rustls::CipherSuite::TLS13_CHACHA20_POLY1305_SHA256
        ]
    );
    assert!(
        suites[3..]
            .iter()
            .all(|s| !format!("{s:?}").starts_with("TLS13"))
    );
}

#[tokio::test]
async fn secure_naming_refuses_an_unexpected_server() {
    let mesh = Mesh::new();
    let server = mesh.provider(&id("a", "x"));
    let client = mesh.provider(&id("b", "client"));
    let expected = [id("a", "reviews"), id("a", "ratings")];
    let (a, b) = handshake(&server, &client, &expected, Alpn::Tcp).await;
    // Refused during the handshake: the client aborts before sending its certificate, so the
    // impostor never completes a handshake (nothing it could forward to its app).
    assert!(
        a.is_err(),
        "the unexpected server completed the handshake: secure naming ran too late"
    );
    let err = b.unwrap_err();
    assert_eq!(
        err.to_string(),
        "peer spiffe://cluster.local/ns/a/sa/x is not one of \
         [spiffe://cluster.local/ns/a/sa/reviews, spiffe://cluster.local/ns/a/sa/ratings]"
    );
    assert!(matches!(
        err.peer_cert_error(),
        Some(PeerCertError::IdentityMismatch { peer, expected: e }) if *peer == id("a", "x") && e.len() == 2
    ));
}

#[tokio::test]
async fn certificates_from_another_root_are_refused_both_ways() {
    let mesh = Mesh::new();
    let other = foreign_mesh();
    let server = mesh.provider(&id("a", "server"));
    // Client from another root -> server refuses. (A Warden client of the other mesh would
    // refuse our server first, so the intruder here is a raw client that trusts anything.)
    let intruder = other.custom_leaf(&["spiffe://cluster.local/ns/a/sa/client"], |_| {});
    assert_eq!(
        server_verdict(&server, &intruder).await,
        PeerCertError::UnknownRoot
    );
    // A full mesh client of the other root refuses our server.
    let other_client = other.provider(&id("a", "client"));
    let (_, b) = handshake(&server, &other_client, &[id("a", "server")], Alpn::Tcp).await;
    assert_eq!(
        b.unwrap_err().peer_cert_error(),
        Some(&PeerCertError::UnknownRoot)
    );
    // Server from another root -> client refuses.
    let client = mesh.provider(&id("a", "client"));
    let evil_server = other.provider(&id("a", "server"));
    let (_, b) = handshake(&evil_server, &client, &[id("a", "server")], Alpn::Tcp).await;
    assert_eq!(
        b.unwrap_err().peer_cert_error(),
        Some(&PeerCertError::UnknownRoot)
    );
}

/// What our server says about a client presenting `cert`.
async fn server_verdict(server: &TlsProvider, cert: &RawCert) -> PeerCertError {
    let (c, s) = tcp_pair().await;
    let connector = tokio_rustls::TlsConnector::from(raw_client(cert));
    let name = ServerName::try_from("server.test").unwrap();
    let (a, b) = tokio::join!(server.accept(s), async move {
        // TLS 1.3: the client finishes before the server has checked its certificate; the
        // refusal shows on the first read.
        if let Ok(mut tls) = connector.connect(name, c).await {
            let mut buf = [0u8; 1];
            let _ = tls.read(&mut buf).await;
        }
    });
    let () = b;
    match a {
        Ok((_, peer, _)) => panic!("server accepted {peer}"),
        Err(e) => e
            .peer_cert_error()
            .cloned()
            .unwrap_or_else(|| panic!("not a certificate error: {e}")),
    }
}

/// What our client says about a server presenting `cert`.
async fn client_verdict(
    client: &TlsProvider,
    cert: &RawCert,
    expected: &SpiffeId,
) -> PeerCertError {
    let (c, s) = tcp_pair().await;
    let acceptor = tokio_rustls::TlsAcceptor::from(raw_server(cert));
    let (a, _) = tokio::join!(
        client.connect(c, std::slice::from_ref(expected), Alpn::Tcp),
        acceptor.accept(s)
    );
    match a {
        Ok((_, peer)) => panic!("client accepted {peer}"),
        Err(e) => e
            .peer_cert_error()
            .cloned()
            .unwrap_or_else(|| panic!("not a certificate error: {e}")),
    }
}

#[tokio::test]
async fn each_bad_client_certificate_is_refused_with_its_own_error() {
    let mesh = Mesh::new();
    let server = mesh.provider(&id("a", "server"));
    let good = "spiffe://cluster.local/ns/b/sa/client";
    let now = time::OffsetDateTime::now_utc();

    let expired = mesh.custom_leaf(&[good], |p| {
        p.not_before = now - time::Duration::days(2);
        p.not_after = now - time::Duration::days(1);
    });
    assert!(matches!(
        server_verdict(&server, &expired).await,
        PeerCertError::Expired { not_after, .. } if not_after < now
    ));

    let future = mesh.custom_leaf(&[good], |p| {
        p.not_before = now + time::Duration::days(1);
        p.not_after = now + time::Duration::days(2);
    });
    assert!(matches!(
        server_verdict(&server, &future).await,
        PeerCertError::NotYetValid { not_before, .. } if not_before > now
    ));

    let server_only = mesh.custom_leaf(&[good], |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    });
    assert_eq!(
        server_verdict(&server, &server_only).await,
        PeerCertError::WrongEku {
            required: Purpose::ClientAuth
        }
    );

    let no_eku = mesh.custom_leaf(&[good], |p| p.extended_key_usages.clear());
    assert_eq!(
        server_verdict(&server, &no_eku).await,
        PeerCertError::WrongEku {
            required: Purpose::ClientAuth
        }
    );

    let two = mesh.custom_leaf(&[good, "spiffe://cluster.local/ns/b/sa/other"], |_| {});
    assert_eq!(
        server_verdict(&server, &two).await,
        PeerCertError::MultipleUriSans { count: 2 }
    );

    let none = mesh.custom_leaf(&[], |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName("client.test".try_into().unwrap())];
    });
    assert_eq!(
        server_verdict(&server, &none).await,
        PeerCertError::NoSpiffeId
    );

    let not_spiffe = mesh.custom_leaf(&["https://cluster.local/ns/b/sa/client"], |_| {});
    assert!(matches!(
        server_verdict(&server, &not_spiffe).await,
        PeerCertError::InvalidSpiffeId { uri, .. } if uri.starts_with("https://")
    ));

    let foreign = mesh.custom_leaf(&["spiffe://evil.example/ns/b/sa/client"], |_| {});
    let err = server_verdict(&server, &foreign).await;
    assert!(
        matches!(&err, PeerCertError::ForeignTrustDomain { identity, .. } if identity.trust_domain_name() == "evil.example"),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "peer spiffe://evil.example/ns/b/sa/client is in trust domain evil.example, which is not \
         allowed (allowed: cluster.local)"
    );

    // No client certificate at all.
    let (c, s) = tcp_pair().await;
    let provider = warden_identity::tls::crypto_provider();
    let anon = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(anon));
    let (a, _) = tokio::join!(server.accept(s), async {
        if let Ok(mut t) = connector
            .connect(ServerName::try_from("x.test").unwrap(), c)
            .await
        {
            let _ = t.read(&mut [0u8; 1]).await;
        }
    });
    assert_eq!(
        a.unwrap_err().peer_cert_error(),
        Some(&PeerCertError::NoCertificate)
    );
}

#[tokio::test]
async fn a_trust_domain_alias_is_accepted_when_configured() {
    let mesh = Mesh::new();
    let alias = "spiffe://old.example/ns/b/sa/client";
    let cert = mesh.custom_leaf(&[alias], |_| {});
    let sid = id("a", "server");
    let issued = mesh.issue(&sid, 3600);
    let trust = mesh
        .trust()
        .with_aliases(vec![TrustDomain::new("old.example").unwrap()]);
    let creds = issued.creds.with_trust(trust).unwrap();
    let server = TlsProvider::new(TlsSettings::default()).unwrap();
    server.install(&creds).unwrap();
    let (c, s) = tcp_pair().await;
    let connector = tokio_rustls::TlsConnector::from(raw_client(&cert));
    let (a, _) = tokio::join!(server.accept(s), async {
        let mut t = connector
            .connect(ServerName::try_from("x.test").unwrap(), c)
            .await
            .unwrap();
        t.write_all(b"x").await.unwrap();
        t.flush().await.unwrap();
        t
    });
    assert_eq!(a.unwrap().1.as_str(), alias);
}

#[tokio::test]
async fn each_bad_server_certificate_is_refused_by_the_client() {
    let mesh = Mesh::new();
    let client = mesh.provider(&id("b", "client"));
    let sid = id("a", "server");
    let now = time::OffsetDateTime::now_utc();
    let expired = mesh.custom_leaf(&[sid.as_str()], |p| {
        p.not_before = now - time::Duration::days(2);
        p.not_after = now - time::Duration::days(1);
    });
    assert!(matches!(
        client_verdict(&client, &expired, &sid).await,
        PeerCertError::Expired { .. }
    ));
    let future = mesh.custom_leaf(&[sid.as_str()], |p| {
        p.not_before = now + time::Duration::days(1);
    });
    assert!(matches!(
        client_verdict(&client, &future, &sid).await,
        PeerCertError::NotYetValid { .. }
    ));
    let client_only = mesh.custom_leaf(&[sid.as_str()], |p| {
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    });
    assert_eq!(
        client_verdict(&client, &client_only, &sid).await,
        PeerCertError::WrongEku {
            required: Purpose::ServerAuth
        }
    );
    let two = mesh.custom_leaf(&[sid.as_str(), "spiffe://cluster.local/ns/a/sa/y"], |_| {});
    assert_eq!(
        client_verdict(&client, &two, &sid).await,
        PeerCertError::MultipleUriSans { count: 2 }
    );
    let foreign = mesh.custom_leaf(&["spiffe://evil.example/ns/a/sa/server"], |_| {});
    assert!(matches!(
        client_verdict(&client, &foreign, &sid).await,
        PeerCertError::ForeignTrustDomain { .. }
    ));
    // A server certificate with a DNS SAN for the name we dial is still refused: only the
    // SPIFFE ID counts, there is no hostname check.
    let dns_only = mesh.custom_leaf(&[], |p| {
        p.subject_alt_names = vec![rcgen::SanType::DnsName("server.test".try_into().unwrap())];
    });
    assert_eq!(
        client_verdict(&client, &dns_only, &sid).await,
        PeerCertError::NoSpiffeId
    );
}

fn with_crl(creds: &WorkloadCredentials, crl_der: Vec<u8>) -> WorkloadCredentials {
    let trust: TrustBundle = creds
        .trust()
        .clone()
        .with_crls(vec![CertificateRevocationListDer::from(crl_der)], "crl.pem")
        .unwrap();
    creds.with_trust(trust).unwrap()
}

#[tokio::test]
async fn a_revoked_peer_is_refused_on_the_next_handshake() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let server_creds = mesh.issue(&sid, 3600).creds;
    let server = TlsProvider::new(TlsSettings::default()).unwrap();
    server.install(&server_creds).unwrap();
    let client_issued = mesh.issue(&cid, 3600);
    let client = TlsProvider::new(TlsSettings::default()).unwrap();
    client.install(&client_issued.creds).unwrap();

    // Works, twice (the second one resumed).
    for _ in 0..2 {
        let (a, b) = handshake(&server, &client, std::slice::from_ref(&sid), Alpn::Tcp).await;
        a.unwrap();
        b.unwrap();
    }
    // The CA revokes the client; the server gets the new CRL.
    assert!(mesh.ca.revoke_serial(client_issued.creds.serial()).unwrap());
    server
        .install(&with_crl(&server_creds, mesh.ca.crl_der().unwrap()))
        .unwrap();
    // The next handshake is refused, even though the client holds a resumption ticket.
    let (a, _) = handshake(&server, &client, std::slice::from_ref(&sid), Alpn::Tcp).await;
    assert_eq!(
        a.unwrap_err().peer_cert_error(),
        Some(&PeerCertError::Revoked {
            serial: Some(client_issued.creds.serial().clone())
        })
    );
    // The client side refuses a revoked server in the same way.
    assert!(mesh.ca.revoke_serial(server_creds.serial()).unwrap());
    let client_creds = with_crl(&mesh.issue(&cid, 3600).creds, mesh.ca.crl_der().unwrap());
    client.install(&client_creds).unwrap();
    let fresh_server = TlsProvider::new(TlsSettings::default()).unwrap();
    fresh_server.install(&server_creds).unwrap();
    let (_, b) = handshake(
        &fresh_server,
        &client,
        std::slice::from_ref(&sid),
        Alpn::Tcp,
    )
    .await;
    assert!(matches!(
        b.unwrap_err().peer_cert_error(),
        Some(PeerCertError::Revoked { .. })
    ));
    // Our own revoked certificate cannot be installed against a CRL that lists it.
    let err = WorkloadCredentials::new(
        server_creds.chain().to_vec(),
        server_creds.key().clone_key(),
        client_creds.trust().clone(),
        "cert-chain.pem",
    )
    .unwrap_err();
    assert!(err.to_string().contains("revoked"), "{err}");
}

#[tokio::test]
async fn sessions_resume_within_a_certificate_and_start_over_after_a_rotation() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    let server = mesh.provider(&sid);
    let client = mesh.provider(&cid);
    let mut kinds = Vec::new();
    for round in 0..6 {
        if round == 2 {
            // The server rotates (same trust): tickets issued under its previous certificate
            // are not accepted any more (they would carry it past its expiry).
            server.install(&mesh.issue(&sid, 3600).creds).unwrap();
        }
        if round == 4 {
            // The client rotates: its sessions carried the old certificate and are dropped.
            client.install(&mesh.issue(&cid, 3600).creds).unwrap();
        }
        let (a, b) = handshake(&server, &client, std::slice::from_ref(&sid), Alpn::Http2).await;
        let (ss, peer_s, _) = a.unwrap();
        let (cs, peer_c) = b.unwrap();
        assert_eq!(peer_s, cid);
        assert_eq!(peer_c, sid);
        assert_eq!(peer_identity(ss.get_ref().1), Some(cid.clone()));
        assert_eq!(peer_identity(cs.get_ref().1), Some(sid.clone()));
        kinds.push(cs.get_ref().1.handshake_kind());
    }
    use HandshakeKind::{Full, Resumed};
    assert_eq!(
        kinds,
        [
            Some(Full),
            Some(Resumed),
            Some(Full),
            Some(Resumed),
            Some(Full),
            Some(Resumed)
        ]
    );
}

#[tokio::test]
async fn no_session_is_resumed_past_the_certificates_it_was_made_with() {
    let mesh = Mesh::new();
    let (sid, cid) = (id("a", "server"), id("b", "client"));
    // The server's first certificate lives 3 seconds; it is renewed before it expires.
    let first = mesh.issue(&sid, 3);
    let server = TlsProvider::new(TlsSettings::default()).unwrap();
    server.install(&first.creds).unwrap();
    let client = mesh.provider(&cid);
    let (a, b) = handshake(&server, &client, std::slice::from_ref(&sid), Alpn::Tcp).await;
    a.unwrap();
    assert_eq!(
        b.unwrap().0.get_ref().1.handshake_kind(),
        Some(HandshakeKind::Full)
    );
    server.install(&mesh.issue(&sid, 3600).creds).unwrap();
    // Past the first certificate's expiry, the client's ticket (issued under it) has expired
    // too: a full handshake with the new certificate, not a resumption that would fail.
    let wait = first.creds.not_after() - time::OffsetDateTime::now_utc();
    tokio::time::sleep(std::time::Duration::from_secs_f64(
        wait.as_seconds_f64().max(0.0) + 0.2,
    ))
    .await;
    let (a, b) = handshake(&server, &client, std::slice::from_ref(&sid), Alpn::Tcp).await;
    a.expect("the server accepts");
    let (cs, peer) = b.expect("no handshake fails after the server's renewal");
    assert_eq!(peer, sid);
    assert_eq!(cs.get_ref().1.handshake_kind(), Some(HandshakeKind::Full));
}

#[tokio::test]
async fn without_credentials_everything_fails_closed() {
    let mesh = Mesh::new();
    let empty = TlsProvider::new(TlsSettings::default()).unwrap();
    let client = mesh.provider(&id("b", "client"));
    let (a, b) = handshake(&empty, &client, &[id("a", "server")], Alpn::Tcp).await;
    assert!(matches!(a, Err(TlsError::NoCredentials)), "{a:?}");
    assert!(
        matches!(b, Err(TlsError::PeerRefused { .. })),
        "client sees an alert: {:?}",
        b.err()
    );
    let (c, _s) = tcp_pair().await;
    assert!(matches!(
        empty.connect(c, &[id("a", "server")], Alpn::Tcp).await,
        Err(TlsError::NoCredentials)
    ));
    // Installed, then cleared (expired): refused again.
    let server = mesh.provider(&id("a", "server"));
    let (a, _) = handshake(&server, &client, &[id("a", "server")], Alpn::Tcp).await;
    a.unwrap();
    server.clear();
    let (a, _) = handshake(&server, &client, &[id("a", "server")], Alpn::Tcp).await;
    assert!(matches!(a, Err(TlsError::NoCredentials)));
}

#[tokio::test]
async fn tls12_only_when_allowed() {
    let mesh = Mesh::new();
    let sid = id("a", "server");
    let strict = mesh.provider(&sid);
    let lenient = TlsProvider::new(TlsSettings {
        allow_tls12: true,
        ..TlsSettings::default()
    })
    .unwrap();
    lenient.install(&mesh.issue(&sid, 3600).creds).unwrap();
    let cert = mesh.custom_leaf(&["spiffe://cluster.local/ns/b/sa/old"], |_| {});
    let provider = warden_identity::tls::crypto_provider();
    let tls12_client = Arc::new(
        rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS12])
            .unwrap()
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
            .with_client_auth_cert(cert.chain.clone(), cert.key.clone_key())
            .unwrap(),
    );
    for (server, ok) in [(&strict, false), (&lenient, true)] {
        let (c, s) = tcp_pair().await;
        let connector = tokio_rustls::TlsConnector::from(tls12_client.clone());
        let (a, _) = tokio::join!(server.accept(s), async {
            if let Ok(mut t) = connector
                .connect(ServerName::try_from("x.test").unwrap(), c)
                .await
            {
                let _ = t.write_all(b"x").await;
                let _ = t.flush().await;
            }
        });
        match a {
            Ok((s, peer, _)) => {
                assert!(ok, "TLS 1.2 accepted by a TLS 1.3-only server");
                assert_eq!(
                    s.get_ref().1.protocol_version(),
                    Some(rustls::ProtocolVersion::TLSv1_2)
                );
                assert_eq!(peer.as_str(), "spiffe://cluster.local/ns/b/sa/old");
            }
            Err(e) => {
                assert!(!ok, "{e}");
                assert!(matches!(e, TlsError::Handshake(_)), "{e}");
            }
        }
    }
}

#[test]
fn credentials_are_checked_when_built() {
    let mesh = Mesh::new();
    let issued = mesh.issue(&id("a", "x"), 3600);
    // Key of another certificate.
    let other = mesh.issue(&id("a", "y"), 3600);
    let err = WorkloadCredentials::from_pem(
        issued.chain_pem.as_bytes(),
        other.key_pem.as_bytes(),
        mesh.trust(),
        "cert-chain.pem",
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cert-chain.pem: the private key does not belong to the leaf certificate"
    );
    // A chain under another root.
    let foreign = foreign_mesh();
    let err = WorkloadCredentials::from_pem(
        issued.chain_pem.as_bytes(),
        issued.key_pem.as_bytes(),
        foreign.trust(),
        "cert-chain.pem",
    )
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not chain to a trusted mesh root"),
        "{err}"
    );
    // The root at the end of the CA's chain is not sent to peers.
    assert_eq!(issued.creds.chain().len(), 1);
    assert_eq!(issued.creds.identity(), &id("a", "x"));
    // Garbage.
    let err = WorkloadCredentials::from_pem(b"nope", b"nope", mesh.trust(), "cert-chain.pem")
        .unwrap_err();
    assert!(err.to_string().starts_with("cert-chain.pem: "), "{err}");
    let err = TrustBundle::from_pem(TrustDomain::default(), b"", "root-cert.pem").unwrap_err();
    assert!(err.to_string().starts_with("root-cert.pem"), "{err}");
}
