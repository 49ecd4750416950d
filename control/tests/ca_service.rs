//! The CA service end to end on loopback: a real control plane (TLS listener, maintenance
//! loop, state directory) and a real tonic gRPC client over rustls. Certificates are checked
//! with x509-parser and `openssl verify`; the CRL is fetched over HTTPS with curl.

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::*;
use tonic::Code;
use warden_control::admin::{self, RootOperation};
use warden_control::{CaSource, TokenIssuer};
use warden_identity::TrustDomain;
use warden_policy::jwt::k8s::{SaTokenSpec, mint};
use warden_policy::jwt::{Algorithm, SigningKey, jwks_json};
use x509_parser::prelude::{FromDer, X509Certificate};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_caller_gets_a_certificate_for_the_token_identity() {
    let h = start(|_, _| {}).await;
    let mut client = h.client().await;
    // The CSR asks for another identity: the certificate must carry the token's.
    let (_, csr) = key_and_csr(&id("kube-system", "admin"));
    let token = h.token("shop", "cart");
    let before = SystemTime::now();
    let resp = create(&mut client, request(&csr, 3600, Some(&token)))
        .await
        .expect("certificate issued");
    assert_eq!(resp.cert_chain.len(), 2, "leaf then root");
    assert_eq!(
        resp.cert_chain[1],
        h.root_pem(),
        "the chain ends at the published root"
    );

    let (uris, critical) = uri_sans(&resp.cert_chain[0]);
    assert_eq!(uris, ["spiffe://cluster.local/ns/shop/sa/cart"]);
    assert!(critical, "URI SAN is critical (empty subject)");
    let der = der_of(&resp.cert_chain[0]);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    assert!(cert.subject().iter().next().is_none(), "empty subject");
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let not_after = cert.validity().not_after.timestamp();
    let requested_end = before
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3600;
    assert!(
        (not_after - requested_end).abs() <= 5,
        "validity_duration honoured: notAfter {not_after}, expected about {requested_end}"
    );
    assert!(
        h.cp.ca()
            .issued_log()
            .find(&warden_identity::Serial::of(&cert))
            .is_some()
    );

    if have("openssl", "openssl verify of an issued certificate") {
        let (leaf, _) = write_chain(h.dir.path(), &resp.cert_chain);
        let out = openssl_verify(&h.root_file(), None, &["-purpose", "sslclient"], &leaf)
            .expect("openssl verifies the chain");
        assert!(out.contains(": OK"), "{out}");
    }

    // validity_duration 0 gives the default 24h.
    let resp = create(&mut client, request(&csr, 0, Some(&token)))
        .await
        .unwrap();
    let der = der_of(&resp.cert_chain[0]);
    let (_, cert) = X509Certificate::from_der(&der).unwrap();
    let v = cert.validity();
    let lifetime = v.not_after.timestamp() - v.not_before.timestamp();
    assert_eq!(
        lifetime,
        24 * 3600 + 300,
        "24h plus the 5 minute back-dating"
    );
    h.cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewal_with_a_mesh_client_certificate() {
    let h = start(|_, _| {}).await;
    let mut client = h.client().await;
    let identity = id("bookinfo", "reviews");
    let (key, csr) = key_and_csr(&identity);
    let first = create(
        &mut client,
        request(&csr, 3600, Some(&h.token("bookinfo", "reviews"))),
    )
    .await
    .unwrap();

    // A new connection presenting that certificate, no token, a CSR naming someone else.
    let chain = first.cert_chain[..first.cert_chain.len() - 1].concat();
    let mut renewing = h.client_with(Some((&chain, &key))).await;
    let (_, csr2) = key_and_csr(&id("default", "someone-else"));
    let second = create(&mut renewing, request(&csr2, 7200, None))
        .await
        .expect("renewed with the client certificate");
    assert_eq!(
        uris_of(&second),
        ["spiffe://cluster.local/ns/bookinfo/sa/reviews"]
    );
    assert_ne!(
        serial_hex(&second.cert_chain[0]),
        serial_hex(&first.cert_chain[0])
    );
    if have("openssl", "openssl verify of a renewed certificate") {
        let (leaf, _) = write_chain(h.dir.path(), &second.cert_chain);
        openssl_verify(&h.root_file(), None, &[], &leaf).expect("openssl verifies");
    }

    // The same connection with a token for another identity: the token decides.
    let third = create(
        &mut renewing,
        request(&csr2, 0, Some(&h.token("ns2", "sa2"))),
    )
    .await
    .unwrap();
    assert_eq!(uris_of(&third), ["spiffe://cluster.local/ns/ns2/sa/sa2"]);

    // A client certificate from a foreign CA is refused at the handshake.
    let foreign_dir = tempfile::tempdir().unwrap();
    let foreign =
        warden_identity::CertificateAuthority::self_signed(foreign_dir.path(), Default::default())
            .unwrap();
    let (fkey, fcsr) = key_and_csr(&identity);
    let fcert = foreign.sign_csr(&fcsr, &identity, 3600).unwrap();
    let refused = client_cert_verdict(&h, (fcert.leaf_pem(), &fkey))
        .await
        .expect_err("a foreign client certificate is refused at the handshake");
    assert!(refused.contains("UnknownCA"), "{refused}");
    // While the mesh certificate is accepted.
    client_cert_verdict(&h, (&chain, &key))
        .await
        .expect("a mesh client certificate is accepted");
    h.cp.shutdown().await;
}

fn uris_of(resp: &warden_identity::proto::istio_ca::IstioCertificateResponse) -> Vec<String> {
    uri_sans(&resp.cert_chain[0]).0
}

/// The CSR's signature bytes flipped: still DER, no longer verifying.
fn broken_signature(csr_pem: &str) -> String {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    let mut der = CertificateSigningRequestDer::from_pem_slice(csr_pem.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    let n = der.len();
    der[n - 1] ^= 0x01;
    der[n - 2] ^= 0x80;
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_status_and_message_and_no_certificate() {
    let h = start(|_, c| c.cluster_id = Some("Kubernetes".to_owned())).await;
    let mut client = h.client().await;
    let (_, csr) = key_and_csr(&id("shop", "cart"));
    let token = h.token("shop", "cart");
    let now = SystemTime::now();
    let key = h.token_key();
    let expired = mint(
        &key,
        &SaTokenSpec::new("shop", "cart"),
        now - Duration::from_secs(7200),
    )
    .unwrap();
    let wrong_audience = mint(
        &key,
        &SaTokenSpec {
            audiences: vec!["kubernetes".to_owned()],
            ..SaTokenSpec::new("shop", "cart")
        },
        now,
    )
    .unwrap();
    let unknown_key = mint(
        &SigningKey::generate(Algorithm::ES256).unwrap(),
        &SaTokenSpec::new("shop", "cart"),
        now,
    )
    .unwrap();
    let with_cluster = |cluster: &str| {
        let mut r = request(&csr, 0, Some(&token));
        r.metadata_mut()
            .insert("clusterid", cluster.parse().unwrap());
        r
    };
    let not_bearer = {
        let mut r = request(&csr, 0, None);
        r.metadata_mut()
            .insert("authorization", format!("Basic {token}").parse().unwrap());
        r
    };
    let cases: Vec<(&str, tonic::Request<_>, Code, &str)> = vec![
        (
            "malformed PEM CSR",
            request(
                "-----BEGIN CERTIFICATE REQUEST-----\nnot base64!\n",
                0,
                Some(&token),
            ),
            Code::InvalidArgument,
            "malformed CSR",
        ),
        (
            "not PEM at all",
            request("hello", 0, Some(&token)),
            Code::InvalidArgument,
            "malformed CSR",
        ),
        (
            "CSR with a broken signature",
            request(&broken_signature(&csr), 0, Some(&token)),
            Code::InvalidArgument,
            "CSR signature does not verify",
        ),
        (
            "TTL above the maximum",
            request(&csr, 91 * 24 * 3600, Some(&token)),
            Code::InvalidArgument,
            "is greater than the max allowed TTL",
        ),
        (
            "expired token",
            request(&csr, 0, Some(&expired)),
            Code::Unauthenticated,
            "expired",
        ),
        (
            "wrong audience",
            request(&csr, 0, Some(&wrong_audience)),
            Code::Unauthenticated,
            "audience",
        ),
        (
            "token signed by an unknown key",
            request(&csr, 0, Some(&unknown_key)),
            Code::Unauthenticated,
            "unknown key",
        ),
        (
            "garbage token",
            request(&csr, 0, Some("abc.def")),
            Code::Unauthenticated,
            "malformed",
        ),
        (
            "no credential",
            request(&csr, 0, None),
            Code::Unauthenticated,
            "no credential",
        ),
        (
            "not a Bearer token",
            not_bearer,
            Code::Unauthenticated,
            "not `Bearer <token>`",
        ),
        (
            "another cluster",
            with_cluster("east"),
            Code::Unauthenticated,
            "clusterid \"east\"",
        ),
    ];
    let before = h.issued_count();
    for (name, req, code, message) in cases {
        let status = create(&mut client, req)
            .await
            .expect_err(&format!("{name}: no certificate"));
        assert_eq!(status.code(), code, "{name}: {status:?}");
        assert!(
            status.message().contains(message),
            "{name}: message {:?} should contain {message:?}",
            status.message()
        );
        assert!(
            !status.message().contains(&token),
            "{name}: the token is never echoed"
        );
    }
    assert_eq!(h.issued_count(), before, "nothing was signed");

    // The right cluster id, or none, is fine.
    create(&mut client, with_cluster("Kubernetes"))
        .await
        .unwrap();
    create(&mut client, request(&csr, 0, Some(&token)))
        .await
        .unwrap();
    assert_eq!(h.issued_count(), before + 2);
    h.cp.shutdown().await;
}

/// Polls `check` every 50 ms for up to 10 s.
async fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_is_picked_up_published_in_the_crl_and_enforced() {
    let h = start(|_, _| {}).await;
    let mut client = h.client().await;
    let identity = id("shop", "cart");
    let (key, csr) = key_and_csr(&identity);
    let token = h.token("shop", "cart");
    let issued = create(&mut client, request(&csr, 3600, Some(&token)))
        .await
        .unwrap();
    let serial = serial_hex(&issued.cert_chain[0]);
    let other = create(
        &mut client,
        request(&csr, 3600, Some(&h.token("shop", "web"))),
    )
    .await
    .unwrap();

    // A connection authenticated by that certificate, opened before the revocation.
    let mut renewing = h.client_with(Some((&issued.cert_chain[0], &key))).await;
    create(&mut renewing, request(&csr, 0, None))
        .await
        .expect("renewal works before the revocation");

    // Revoked from "another process" (the store in the state directory, as the CLI does).
    let revoked = admin::revoke_identity(&h.state(), &identity).unwrap();
    assert_eq!(revoked.len(), 2, "both certificates of the identity");
    assert!(revoked.iter().any(|s| s.to_string() == serial));

    // The running control plane notices within its reload interval, without a restart.
    let status = {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = create(&mut client, request(&csr, 0, Some(&token))).await;
            match r {
                Err(s) => break s,
                Ok(_) => {
                    assert!(Instant::now() < deadline, "revocation never took effect");
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("is revoked"), "{status:?}");

    // The revoked certificate no longer renews: the handshake (or the request) is refused.
    let refused = client_cert_verdict(&h, (&issued.cert_chain[0], &key))
        .await
        .expect_err("a revoked client certificate is refused at the handshake");
    assert!(refused.contains("CertificateRevoked"), "{refused}");
    // The connection opened before the revocation gets nothing more either.
    let status = create(&mut renewing, request(&csr, 0, None))
        .await
        .expect_err("a revoked certificate renews nothing on an old connection");
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(status.message().contains("is revoked"), "{status:?}");

    // The CRL over HTTPS lists the serial (and not the other certificate).
    if have("curl", "CRL over HTTPS with curl") {
        let root = h.root_file();
        let url = h.https_url("/ca/crl.pem");
        let crl = eventually("the CRL to list the revoked serial", || {
            let body = curl(&root, &url).expect("curl fetches the CRL");
            crl_serials(&body).contains(&serial).then_some(body)
        })
        .await;
        assert!(!crl_serials(&crl).contains(&serial_hex(&other.cert_chain[0])));
        let bundle = curl(&root, &h.https_url("/ca/root-cert.pem")).unwrap();
        assert_eq!(bundle, h.root_pem().as_bytes());
        let der = curl(&root, &h.https_url("/ca/crl.der")).unwrap();
        assert!(crl_serials_der(&der).contains(&serial));
        let missing = curl(&root, &h.https_url("/")).unwrap_err();
        assert!(missing.contains("404"), "{missing}");
        if have("openssl", "openssl verify -crl_check") {
            let crl_file = h.dir.path().join("crl.pem");
            std::fs::write(&crl_file, &crl).unwrap();
            let (leaf, _) = write_chain(h.dir.path(), &issued.cert_chain);
            let crl_arg = crl_file.to_str().unwrap();
            let err = openssl_verify(
                &h.root_file(),
                None,
                &["-crl_check", "-CRLfile", crl_arg],
                &leaf,
            )
            .expect_err("a revoked certificate fails the CRL check");
            assert!(err.contains("certificate revoked"), "{err}");
            let (leaf, _) = write_chain(h.dir.path(), &other.cert_chain);
            openssl_verify(
                &h.root_file(),
                None,
                &["-crl_check", "-CRLfile", crl_arg],
                &leaf,
            )
            .expect("an unrevoked certificate passes the CRL check");
        }
    }

    // Lifting the identity's revocation lets it get certificates again.
    assert!(admin::unrevoke_identity(&h.state(), &identity).unwrap());
    h.cp.maintain_now().await;
    create(&mut client, request(&csr, 0, Some(&token)))
        .await
        .expect("issued again after --undo");
    h.cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serving_certificate_names_versions_and_trust() {
    let h = start(|_, _| {}).await;
    let serving = h.cp.serving_cert();
    let leaf = serving.certified.cert[0].to_vec();
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let names: Vec<String> = cert
        .subject_alternative_name()
        .unwrap()
        .unwrap()
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    for want in [
        "URI(spiffe://cluster.local/ns/istio-system/sa/istiod)",
        "DNSName(istiod.istio-system.svc)",
        "DNSName(warden-control)",
        "DNSName(localhost)",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    assert!(names.len() >= 6, "and two IP SANs: {names:?}");

    // Every name verifies; TLS 1.2 works too.
    let tls = warden_control::client::tls_config(&h.root_pem(), None, false).unwrap();
    for name in ["localhost", "warden-control", "127.0.0.1"] {
        let mut c = warden_control::client::connect(
            h.cp.local_addr(),
            name,
            std::sync::Arc::new(tls.clone()),
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let (_, csr) = key_and_csr(&id("a", "b"));
        create(&mut c, request(&csr, 0, Some(&h.token("a", "b"))))
            .await
            .unwrap();
    }
    let mut c12 = h.try_client(None, true).await.expect("TLS 1.2 client");
    let (_, csr) = key_and_csr(&id("a", "b"));
    create(&mut c12, request(&csr, 0, Some(&h.token("a", "b"))))
        .await
        .expect("served over TLS 1.2");

    // A name the certificate does not carry, or a client trusting another root, fails.
    let err = warden_control::client::connect(
        h.cp.local_addr(),
        "evil.example.com",
        std::sync::Arc::new(tls),
    )
    .await
    .expect_err("wrong name");
    assert!(err.to_string().contains("certificate"), "{err}");
    let other = tempfile::tempdir().unwrap();
    let other_ca =
        warden_identity::CertificateAuthority::self_signed(other.path(), Default::default())
            .unwrap();
    let wrong_root =
        warden_control::client::tls_config(&other_ca.root_bundle_pem(), None, false).unwrap();
    assert!(
        warden_control::client::connect(
            h.cp.local_addr(),
            "localhost",
            std::sync::Arc::new(wrong_root)
        )
        .await
        .is_err()
    );
    h.cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_ca_issues_chains_that_openssl_verifies() {
    use warden_identity::tools::{self, IntermediateRequest, RootCaRequest};
    let h = start(|dir, c| {
        let root = dir.join("root");
        let east = dir.join("east");
        tools::root_ca(
            &root,
            &RootCaRequest {
                key: warden_identity::KeyAlgorithm::EcdsaP256,
                ..RootCaRequest::default()
            },
        )
        .unwrap();
        tools::intermediate(
            &root,
            &east,
            &IntermediateRequest {
                key: warden_identity::KeyAlgorithm::EcdsaP256,
                ..IntermediateRequest::new("east")
            },
        )
        .unwrap();
        c.ca = CaSource::Plugin { dir: east };
    })
    .await;
    let mut client = h.client().await;
    let (_, csr) = key_and_csr(&id("shop", "cart"));
    let resp = create(
        &mut client,
        request(&csr, 0, Some(&h.token("shop", "cart"))),
    )
    .await
    .unwrap();
    assert_eq!(resp.cert_chain.len(), 3, "leaf, intermediate, root");
    assert_eq!(uris_of(&resp), ["spiffe://cluster.local/ns/shop/sa/cart"]);
    if have("openssl", "openssl verify in plugin mode") {
        let (leaf, inter) = write_chain(h.dir.path(), &resp.cert_chain);
        let out = openssl_verify(&h.root_file(), Some(&inter), &[], &leaf)
            .expect("openssl verifies leaf -> intermediate -> root");
        assert!(out.contains(": OK"), "{out}");
    }
    h.cp.shutdown().await;
}

/// An Istio-style plugin directory whose intermediate may not sign CRLs (Istio's tools/certs
/// give intermediates keyCertSign without cRLSign).
fn plugin_without_crl_sign(dir: &std::path::Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    };
    let ca = |cn: &str, usages: Vec<KeyUsagePurpose>| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::OrganizationName, "Istio");
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = usages;
        p.use_authority_key_identifier_extension = true;
        p
    };
    let root_key = KeyPair::generate().unwrap();
    let root = ca(
        "Root CA",
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
    )
    .self_signed(&root_key)
    .unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
    let inter = ca(
        "Intermediate CA",
        vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ],
    )
    .signed_by(&ca_key, &issuer)
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("root-cert.pem"), root.pem()).unwrap();
    std::fs::write(dir.join("ca-cert.pem"), inter.pem()).unwrap();
    std::fs::write(dir.join("ca-key.pem"), ca_key.serialize_pem()).unwrap();
    std::fs::write(
        dir.join("cert-chain.pem"),
        format!("{}{}", inter.pem(), root.pem()),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_ca_that_cannot_sign_crls_still_issues_and_enforces_revocation() {
    let h = start(|dir, c| {
        let plugin = dir.join("cacerts");
        plugin_without_crl_sign(&plugin);
        c.ca = CaSource::Plugin { dir: plugin };
    })
    .await;
    let mut client = h.client().await;
    let identity = id("shop", "cart");
    let (_, csr) = key_and_csr(&identity);
    let token = h.token("shop", "cart");
    create(&mut client, request(&csr, 0, Some(&token)))
        .await
        .expect("issues without a CRL");
    admin::revoke_identity(&h.state(), &identity).unwrap();
    h.cp.maintain_now().await;
    let status = create(&mut client, request(&csr, 0, Some(&token)))
        .await
        .expect_err("revocation is enforced without a CRL");
    assert_eq!(status.code(), Code::PermissionDenied);
    if have("curl", "CRL endpoint of a CA without cRLSign") {
        let err = curl(&h.root_file(), &h.https_url("/ca/crl.pem")).unwrap_err();
        assert!(err.contains("503"), "{err}");
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert"])
            .arg(h.root_file())
            .arg(h.https_url("/ca/crl.der"))
            .output()
            .unwrap();
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(body.contains("cRLSign"), "{body}");
    }
    h.cp.shutdown().await;
}

const CLUSTER_A: &str = "https://cluster-a.example";
const CLUSTER_B: &str = "https://cluster-b.example";

fn spec_of(issuer: &str) -> SaTokenSpec {
    SaTokenSpec {
        issuer: issuer.to_owned(),
        ..SaTokenSpec::new("apps", "api")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issuer_keys_from_a_jwks_file_follow_the_file() {
    let issuer_a = SigningKey::generate(Algorithm::ES256).unwrap();
    let issuer_b = SigningKey::generate(Algorithm::RS256).unwrap();
    let jwks_path = std::sync::Mutex::new(None);
    let h = start(|dir, c| {
        let p = dir.join("cluster-jwks.json");
        std::fs::write(&p, jwks_json([issuer_a.public_jwk().unwrap()])).unwrap();
        c.token_jwks = vec![TokenIssuer {
            issuer: CLUSTER_A.into(),
            jwks: p.clone(),
        }];
        *jwks_path.lock().unwrap() = Some(p);
    })
    .await;
    let jwks_path = jwks_path.into_inner().unwrap().unwrap();
    let mut client = h.client().await;
    let (_, csr) = key_and_csr(&id("x", "y"));
    let spec = spec_of(CLUSTER_A);
    let token_a = mint(&issuer_a, &spec, SystemTime::now()).unwrap();
    let token_b = mint(&issuer_b, &spec, SystemTime::now()).unwrap();
    let resp = create(&mut client, request(&csr, 0, Some(&token_a)))
        .await
        .expect("a key of the JWKS file is trusted");
    assert_eq!(uris_of(&resp), ["spiffe://cluster.local/ns/apps/sa/api"]);
    let err = create(&mut client, request(&csr, 0, Some(&token_b)))
        .await
        .unwrap_err();
    assert!(err.message().contains("unknown key"), "{err:?}");

    // The file now holds issuer B's key only: B is trusted, A no longer.
    std::fs::write(&jwks_path, jwks_json([issuer_b.public_jwk().unwrap()])).unwrap();
    h.cp.maintain_now().await;
    create(&mut client, request(&csr, 0, Some(&token_b)))
        .await
        .expect("the new key is trusted after the reload");
    let err = create(&mut client, request(&csr, 0, Some(&token_a)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // A broken file keeps the keys in force; the own token key stays trusted throughout.
    std::fs::write(&jwks_path, "{not json").unwrap();
    h.cp.maintain_now().await;
    create(&mut client, request(&csr, 0, Some(&token_b)))
        .await
        .expect("a broken file keeps the previous keys");
    create(&mut client, request(&csr, 0, Some(&h.token("a", "b"))))
        .await
        .unwrap();
    h.cp.shutdown().await;
}

/// Each JWKS file is pinned to its issuer: a token is accepted only with the keys of the issuer
/// it claims, never with another configured issuer's keys or the control plane's own key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_is_verified_only_with_its_own_issuers_keys() {
    let key_a = SigningKey::generate(Algorithm::ES256).unwrap();
    let key_b = SigningKey::generate(Algorithm::RS256).unwrap();
    let own_key = std::sync::Mutex::new(None);
    let h = start(|dir, c| {
        let a = dir.join("a-jwks.json");
        let b = dir.join("b-jwks.json");
        std::fs::write(&a, jwks_json([key_a.public_jwk().unwrap()])).unwrap();
        std::fs::write(&b, jwks_json([key_b.public_jwk().unwrap()])).unwrap();
        c.token_jwks = vec![
            TokenIssuer {
                issuer: CLUSTER_A.into(),
                jwks: a,
            },
            TokenIssuer {
                issuer: CLUSTER_B.into(),
                jwks: b,
            },
        ];
        *own_key.lock().unwrap() = Some(c.paths());
    })
    .await;
    let paths = own_key.into_inner().unwrap().unwrap();
    let mut client = h.client().await;
    let (_, csr) = key_and_csr(&id("x", "y"));
    let now = SystemTime::now();
    let shared_client = client.clone();
    let refused = |token: String, why: &'static str| {
        let mut client = shared_client.clone();
        let csr = csr.clone();
        async move {
            let err = create(&mut client, request(&csr, 0, Some(&token)))
                .await
                .expect_err(why);
            assert_eq!(err.code(), Code::Unauthenticated, "{why}: {err:?}");
            err.message().to_owned()
        }
    };

    // Each issuer with its own key: accepted.
    for (key, iss) in [(&key_a, CLUSTER_A), (&key_b, CLUSTER_B)] {
        let t = mint(key, &spec_of(iss), now).unwrap();
        create(&mut client, request(&csr, 0, Some(&t)))
            .await
            .unwrap_or_else(|e| panic!("{iss} with its own key: {e:?}"));
    }
    // B's key cannot vouch for A, nor A's for B.
    let msg = refused(
        mint(&key_b, &spec_of(CLUSTER_A), now).unwrap(),
        "A's token signed by B",
    )
    .await;
    assert!(msg.contains("unknown key"), "{msg}");
    refused(
        mint(&key_a, &spec_of(CLUSTER_B), now).unwrap(),
        "B's token signed by A",
    )
    .await;
    // An unpinned issuer is the own key's alone: A's key cannot sign for it.
    refused(
        mint(&key_a, &spec_of("https://elsewhere.example"), now).unwrap(),
        "an unpinned issuer signed by A",
    )
    .await;
    // The control plane's own key cannot sign for a pinned issuer.
    let own = warden_control::token_key::mint_token(&paths, &spec_of(CLUSTER_A), now).unwrap();
    refused(own, "A's token signed by the own key").await;
    // ... but signs for any other issuer.
    let own =
        warden_control::token_key::mint_token(&paths, &spec_of("https://local"), now).unwrap();
    create(&mut client, request(&csr, 0, Some(&own)))
        .await
        .expect("the own key for an unpinned issuer");
    h.cp.shutdown().await;
}

#[test]
fn token_issuer_flag_forms() {
    let i: TokenIssuer = "https://kubernetes.default.svc=/etc/jwks.json"
        .parse()
        .unwrap();
    assert_eq!(i.issuer, "https://kubernetes.default.svc");
    assert_eq!(i.jwks, std::path::PathBuf::from("/etc/jwks.json"));
    let err = "/etc/jwks.json".parse::<TokenIssuer>().unwrap_err();
    assert!(err.to_string().contains("expected ISSUER=FILE"), "{err}");
    assert!("=/etc/jwks.json".parse::<TokenIssuer>().is_err());
    assert!("https://x=".parse::<TokenIssuer>().is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_rotation_beside_a_running_control_plane() {
    let h = start(|_, _| {}).await;
    let mut client = h.client().await;
    let (_, csr) = key_and_csr(&id("a", "b"));
    let old = create(&mut client, request(&csr, 0, Some(&h.token("a", "b"))))
        .await
        .unwrap();
    let old_serving = h.cp.serving_cert().serial.clone();
    let td = TrustDomain::default();

    // `rotate-root stage` in another process writes the staged key, then the certificate. A
    // reload in between (the control plane polls the CA files) must leave the key alone.
    let half_staged = h.state().join("ca/roots/staged-key.pem");
    std::fs::create_dir_all(half_staged.parent().unwrap()).unwrap();
    let orphan = warden_identity::KeyAlgorithm::EcdsaP256.generate().unwrap();
    std::fs::write(&half_staged, orphan.serialize_pem()).unwrap();
    h.cp.maintain_now().await;
    assert!(
        half_staged.exists(),
        "a reload removed a staging in progress"
    );
    assert_eq!(h.cp.ca().roots().len(), 1, "a key alone stages nothing");

    let (staged, roots) =
        admin::root_operation(&h.state(), &td, &RootOperation::Stage(Default::default())).unwrap();
    assert_eq!(roots.len(), 2);
    h.cp.maintain_now().await;
    assert_eq!(
        h.root_pem().matches("BEGIN CERTIFICATE").count(),
        2,
        "the staged root is published"
    );
    let (active, _) = admin::root_operation(&h.state(), &td, &RootOperation::Activate).unwrap();
    assert_eq!(staged.unwrap().serial, active.unwrap().serial);
    h.cp.maintain_now().await;

    // New certificates chain to the new root; the serving certificate was re-issued under it;
    // the bundle still trusts the old root, so old certificates keep verifying.
    let bundle = h.root_pem();
    let mut client = h.client().await;
    let new = create(&mut client, request(&csr, 0, Some(&h.token("a", "b"))))
        .await
        .unwrap();
    assert_ne!(
        new.cert_chain[1], old.cert_chain[1],
        "signed by the new root"
    );
    assert!(bundle.contains(&new.cert_chain[1]) && bundle.contains(&old.cert_chain[1]));
    assert_ne!(h.cp.serving_cert().serial, old_serving);
    if have("openssl", "openssl verify across a rotation") {
        for (i, chain) in [&old.cert_chain, &new.cert_chain].into_iter().enumerate() {
            let (leaf, _) = write_chain(h.dir.path(), chain);
            openssl_verify(&h.root_file(), None, &[], &leaf)
                .unwrap_or_else(|e| panic!("certificate {i}: {e}"));
        }
    }
    h.cp.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_idle_connections_and_closes_the_listener() {
    // A drain timeout far longer than the test: shutdown must not wait for it when the open
    // connections are idle (HTTP/2 GOAWAY ends them at once).
    let h = start(|_, c| c.drain_timeout = Duration::from_secs(120)).await;
    let addr = h.cp.local_addr();
    let mut client = h.client().await;
    let (_, csr) = key_and_csr(&id("a", "b"));
    create(&mut client, request(&csr, 0, Some(&h.token("a", "b"))))
        .await
        .unwrap();
    let token = h.token("a", "b");
    let started = Instant::now();
    h.cp.shutdown().await;
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "shutdown waited for the drain timeout although every connection was idle"
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let err = create(&mut client, request(&csr, 0, Some(&token)))
        .await
        .expect_err("nothing is served after shutdown");
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
}
