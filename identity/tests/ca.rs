//! The mesh CA: issued certificates checked field by field and by `openssl verify`, in both
//! modes, and every bad input refused with its own error.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use time::OffsetDateTime;
use warden_identity::ca::{CaMode, RootStatus};
use warden_identity::keys::KeyAlgorithm;
use warden_identity::x509::Serial;
use warden_identity::{CaError, CaOptions, CertificateAuthority, IssuedCertificate, SpiffeId};
use x509_parser::prelude::{FromDer, GeneralName, ParsedExtension, X509Certificate, X509Version};

fn mode_of(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// Checks the leaf's fields with x509-parser.
fn check_leaf(issued: &IssuedCertificate, identity: &SpiffeId, issuer_der: &[u8]) {
    let leaf_der = pem_der(issued.leaf_pem());
    let (_, leaf) = X509Certificate::from_der(&leaf_der).unwrap();
    let (_, issuer) = X509Certificate::from_der(issuer_der).unwrap();

    assert_eq!(leaf.version(), X509Version::V3);
    assert!(
        leaf.subject().as_raw().len() <= 2,
        "empty subject: {}",
        leaf.subject()
    );
    assert_eq!(leaf.subject().iter().count(), 0);
    assert_eq!(leaf.issuer().as_raw(), issuer.subject().as_raw());

    let san = leaf.subject_alternative_name().unwrap().unwrap();
    assert!(
        san.critical,
        "URI SAN must be critical with an empty subject"
    );
    assert_eq!(
        san.value.general_names,
        vec![GeneralName::URI(identity.as_str())],
        "the identity is the only SAN"
    );
    let eku = leaf.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing);
    let ku = leaf.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    let bc = leaf.basic_constraints().unwrap().unwrap().value;
    assert!(!bc.ca);

    // Serial: positive, ~128 bits, the one reported.
    assert_eq!(Serial::from_be_bytes(leaf.raw_serial()), issued.serial);
    assert!(leaf.serial.bits() > 100 && leaf.serial.bits() <= 127);

    // AKI = issuer SKI; SKI present.
    let aki = leaf
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(a) => a.key_identifier.clone(),
            _ => None,
        })
        .expect("AKI");
    let issuer_ski = issuer
        .iter_extensions()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        })
        .expect("issuer SKI");
    assert_eq!(aki.0, &issuer_ski[..]);
    assert!(leaf.iter_extensions().any(|e| matches!(
        e.parsed_extension(),
        ParsedExtension::SubjectKeyIdentifier(_)
    )));

    // Validity: back-dated by a few minutes; the reported times are the encoded ones.
    let nb = leaf.validity().not_before.to_datetime();
    let na = leaf.validity().not_after.to_datetime();
    assert_eq!(nb, issued.not_before);
    assert_eq!(na, issued.not_after);
    let now = OffsetDateTime::now_utc();
    let backdate = now - nb;
    assert!(
        backdate >= time::Duration::minutes(1) && backdate <= time::Duration::minutes(6),
        "back-dated by {backdate}"
    );
}

fn pem_der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

/// Writes leaf, intermediates and root bundle, then runs `openssl verify`.
fn openssl_accepts(issued: &IssuedCertificate, bundle_pem: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let leaf = put(dir.path(), "leaf.pem", issued.leaf_pem());
    let n = issued.chain_pem.len();
    let untrusted = put(
        dir.path(),
        "chain.pem",
        &issued.chain_pem[1..n - 1].concat(),
    );
    let root = put(dir.path(), "root-cert.pem", bundle_pem);
    let untrusted = (n > 2).then_some(untrusted.as_path());
    openssl_verify(&root, untrusted, &["-purpose", "sslclient"], &leaf)
}

#[test]
fn self_signed_ca_issues_certificates_openssl_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    assert!(matches!(ca.mode(), CaMode::SelfSigned { .. }));
    let identity = id("default", "sleep");
    let (_key, csr) = csr(&identity);
    let issued = ca.sign_csr(&csr, &identity, 0).unwrap();

    // Leaf first, root last; the root is the bundle.
    assert_eq!(issued.chain_pem.len(), 2);
    assert_eq!(issued.root_pem(), ca.root_bundle_pem());
    assert_eq!(issued.identity, identity);
    // TTL <= 0 gives the default 24h (counted from now, not from the back-dated notBefore).
    let ttl = issued.not_after - OffsetDateTime::now_utc();
    assert!(
        ttl > time::Duration::hours(23) && ttl <= time::Duration::hours(24),
        "{ttl}"
    );
    let root_der = pem_der(issued.root_pem());
    check_leaf(&issued, &identity, &root_der);

    // webpki (what rustls uses) accepts it.
    warden_identity::x509::verify_leaf(
        &pem_der(issued.leaf_pem()).into(),
        &[],
        &[root_der.into()],
        OffsetDateTime::now_utc(),
        false,
    )
    .unwrap();

    if have_openssl("self_signed_ca_issues_certificates_openssl_accepts") {
        let out = openssl_accepts(&issued, &ca.root_bundle_pem()).unwrap();
        assert!(out.contains("OK"), "{out}");
    }
}

#[test]
fn self_signed_root_is_persisted_and_reloaded_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let first = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let key_path = dir.path().join("root-key.pem");
    let cert_path = dir.path().join("root-cert.pem");
    assert_eq!(mode_of(&key_path), 0o600);
    assert_eq!(mode_of(&cert_path), 0o644);
    assert_eq!(mode_of(&dir.path().join("trust-bundle.pem")), 0o644);
    let key_before = std::fs::read(&key_path).unwrap();
    let bundle = first.root_bundle_pem();

    // The root: CA, 10 years, ECDSA P-256, O=<trust domain>.
    let der = pem_der(&bundle);
    let (_, root) = X509Certificate::from_der(&der).unwrap();
    assert!(root.basic_constraints().unwrap().unwrap().value.ca);
    let life = root.validity().not_after.to_datetime() - root.validity().not_before.to_datetime();
    assert!(life >= time::Duration::days(3650) && life < time::Duration::days(3651));
    assert_eq!(
        root.public_key().algorithm.algorithm,
        x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
    );
    assert!(root.subject().to_string().contains("O=cluster.local"));
    let roots = first.roots();
    assert_eq!(roots.len(), 1);
    assert_eq!(roots[0].status, RootStatus::Active);
    assert_eq!(roots[0].key, "ECDSA P-256");

    // A leaf from the first instance verifies against the second's bundle.
    let identity = id("ns1", "sa1");
    let issued = first.sign_csr(&csr(&identity).1, &identity, 3600).unwrap();
    drop(first);
    let second = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    assert_eq!(second.root_bundle_pem(), bundle);
    assert_eq!(std::fs::read(&key_path).unwrap(), key_before);
    let issued2 = second.sign_csr(&csr(&identity).1, &identity, 3600).unwrap();
    assert_eq!(issued.root_pem(), issued2.root_pem());
    assert_ne!(issued.serial, issued2.serial);
}

#[test]
fn self_signed_rsa_root_option() {
    let dir = tempfile::tempdir().unwrap();
    let options = CaOptions {
        root_key: KeyAlgorithm::Rsa2048,
        ..CaOptions::default()
    };
    let ca = CertificateAuthority::self_signed(dir.path(), options).unwrap();
    assert_eq!(ca.roots()[0].key, "RSA");
    let identity = id("default", "rsa");
    // An RSA 2048 workload key too.
    let key = KeyAlgorithm::Rsa2048.generate().unwrap();
    let csr = warden_identity::keys::csr_pem(&key, &identity).unwrap();
    let issued = ca.sign_csr(&csr, &identity, 600).unwrap();
    check_leaf(&issued, &identity, &pem_der(issued.root_pem()));
    if have_openssl("self_signed_rsa_root_option") {
        openssl_accepts(&issued, &ca.root_bundle_pem()).unwrap();
    }
}

#[test]
fn plugin_ca_issues_certificates_openssl_accepts() {
    let plugin = plugin_dir(|_| {});
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::plugin(plugin.path(), Some(state.path()), CaOptions::default())
        .unwrap();
    let identity = id("bookinfo", "reviews");
    let issued = ca.sign_csr(&csr(&identity).1, &identity, 7200).unwrap();

    // leaf, ca-cert (as-is, not re-signed), root.
    assert_eq!(issued.chain_pem.len(), 3);
    assert_eq!(pem_der(&issued.chain_pem[1]), plugin.ca_der);
    assert_eq!(pem_der(&issued.chain_pem[2]), plugin.root_der);
    assert_eq!(ca.root_bundle_pem(), plugin.root_pem());
    let ttl = issued.not_after - OffsetDateTime::now_utc();
    assert!(ttl > time::Duration::minutes(119) && ttl <= time::Duration::hours(2));
    check_leaf(&issued, &identity, &plugin.ca_der);
    // Revocation state went to the state dir, not the (possibly read-only) plugin dir.
    assert!(state.path().join("issued.jsonl").exists());
    assert!(!plugin.path().join("issued.jsonl").exists());

    if have_openssl("plugin_ca_issues_certificates_openssl_accepts") {
        let out = openssl_accepts(&issued, &ca.root_bundle_pem()).unwrap();
        assert!(out.contains("OK"), "{out}");
        // And without the intermediate, openssl refuses: the check is real.
        let dir = tempfile::tempdir().unwrap();
        let leaf = put(dir.path(), "leaf.pem", issued.leaf_pem());
        let root = put(dir.path(), "root.pem", &ca.root_bundle_pem());
        assert!(openssl_verify(&root, None, &[], &leaf).is_err());
    }
}

#[test]
fn plugin_ca_accepts_the_kubernetes_tls_layout() {
    let plugin = plugin_dir(|_| {});
    let tls = tempfile::tempdir().unwrap();
    let read = |n: &str| std::fs::read_to_string(plugin.path().join(n)).unwrap();
    // tls.crt carries the CA certificate followed by its chain.
    put(tls.path(), "tls.crt", &read("cert-chain.pem"));
    put(tls.path(), "tls.key", &read("ca-key.pem"));
    put(tls.path(), "ca.crt", &read("root-cert.pem"));
    let ca = CertificateAuthority::plugin(tls.path(), None, CaOptions::default()).unwrap();
    let identity = id("default", "tls");
    let issued = ca.sign_csr(&csr(&identity).1, &identity, 0).unwrap();
    assert_eq!(issued.chain_pem.len(), 3);
    check_leaf(&issued, &identity, &plugin.ca_der);
    if have_openssl("plugin_ca_accepts_the_kubernetes_tls_layout") {
        openssl_accepts(&issued, &ca.root_bundle_pem()).unwrap();
    }
}

#[test]
fn ca_is_shared_across_threads() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap());
    let identity = id("default", "many");
    let (_k, csr) = csr(&identity);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (ca, csr, identity) = (ca.clone(), csr.clone(), identity.clone());
            std::thread::spawn(move || {
                (0..25)
                    .map(|_| ca.sign_csr(&csr, &identity, 0).unwrap().serial)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut serials: Vec<Serial> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 100, "every serial is unique");
    assert_eq!(ca.issued_log().len(), 100);
}

// ---- bad input: each refused with its own error, and no certificate ----

fn self_signed() -> (tempfile::TempDir, CertificateAuthority) {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    (dir, ca)
}

#[test]
fn malformed_csr_pem_is_refused() {
    let (_d, ca) = self_signed();
    let identity = id("default", "x");
    let (_k, good) = csr(&identity);
    let truncated = &good[..good.len() / 2];
    let a_certificate = ca.root_bundle_pem();
    let not_der = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n";
    let bad_base64 =
        "-----BEGIN CERTIFICATE REQUEST-----\n@@@@\n-----END CERTIFICATE REQUEST-----\n";
    for (name, input) in [
        ("empty", ""),
        ("not PEM", "hello world"),
        ("truncated", truncated),
        ("a certificate", a_certificate.as_str()),
        ("not DER", not_der),
        ("bad base64", bad_base64),
    ] {
        match ca.sign_csr(input, &identity, 0) {
            Err(CaError::MalformedCsr { reason }) => {
                assert!(!reason.is_empty(), "{name}");
            }
            other => panic!("{name}: expected MalformedCsr, got {other:?}"),
        }
    }
    assert!(ca.issued_log().is_empty(), "nothing was issued");
}

#[test]
fn csr_with_a_broken_signature_is_refused() {
    use rustls_pki_types::CertificateSigningRequestDer;
    use rustls_pki_types::pem::PemObject;
    let (_d, ca) = self_signed();
    let identity = id("default", "x");
    let (_k, good) = csr(&identity);
    let mut der = CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    // Change one character of the signed content (the SAN asks for `default` -> `defaulu`):
    // the structure still parses, the self-signature no longer matches.
    let at = der
        .windows(7)
        .position(|w| w == b"default")
        .expect("SAN in CSR");
    der[at + 6] = b'u';
    let n = der.len();
    let tampered =
        warden_identity::x509::cert_to_pem(&der).replace("CERTIFICATE", "CERTIFICATE REQUEST");
    let err = ca.sign_csr(&tampered, &identity, 0).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature { .. }), "{err:?}");
    // rcgen's own CSR parser (x509-parser feature) rejects it the same way.
    assert!(matches!(
        rcgen::CertificateSigningRequestParams::from_pem(&tampered),
        Err(rcgen::Error::InvalidCertificationRequestSignature)
    ));
    // Corrupt the signature bits themselves.
    let mut der2 = CertificateSigningRequestDer::from_pem_slice(good.as_bytes())
        .unwrap()
        .as_ref()
        .to_vec();
    der2[n - 3] ^= 0x55;
    let tampered2 =
        warden_identity::x509::cert_to_pem(&der2).replace("CERTIFICATE", "CERTIFICATE REQUEST");
    let err = ca.sign_csr(&tampered2, &identity, 0).unwrap_err();
    assert!(matches!(err, CaError::CsrSignature { .. }), "{err:?}");
    assert!(ca.issued_log().is_empty());
}

#[test]
fn csr_asking_for_another_identity_gets_the_callers_identity() {
    let (_d, ca) = self_signed();
    let evil = id("kube-system", "admin");
    let caller = id("default", "sleep");
    let (_k, csr_for_evil) = csr(&evil);
    let issued = ca.sign_csr(&csr_for_evil, &caller, 0).unwrap();
    assert_eq!(issued.identity, caller);
    check_leaf(&issued, &caller, &pem_der(issued.root_pem()));
    let der = pem_der(issued.leaf_pem());
    let text = String::from_utf8_lossy(&der);
    assert!(!text.contains("kube-system"), "the CSR's SAN is not copied");
}

#[test]
fn ttl_above_the_maximum_is_refused() {
    let (_d, ca) = self_signed();
    let identity = id("default", "x");
    let (_k, csr) = csr(&identity);
    let max = 90 * 24 * 3600;
    let err = ca.sign_csr(&csr, &identity, max + 1).unwrap_err();
    assert!(
        matches!(err, CaError::TtlTooLong { requested_secs, max_secs } if requested_secs == max + 1 && max_secs == max),
        "{err:?}"
    );
    assert!(err.to_string().contains("greater than the max allowed TTL"));
    assert!(ca.issued_log().is_empty());
    // Exactly the max is fine; negative means the default.
    let at_max = ca.sign_csr(&csr, &identity, max).unwrap();
    assert!(at_max.not_after - OffsetDateTime::now_utc() > time::Duration::days(89));
    let neg = ca.sign_csr(&csr, &identity, -5).unwrap();
    assert!(neg.not_after - OffsetDateTime::now_utc() <= time::Duration::hours(24));
}

#[test]
fn foreign_trust_domain_is_refused_unless_aliased() {
    let (_d, ca) = self_signed();
    let other = SpiffeId::parse("spiffe://other.example/ns/a/sa/b").unwrap();
    let (_k, csr) = csr(&other);
    assert!(matches!(
        ca.sign_csr(&csr, &other, 0),
        Err(CaError::ForeignTrustDomain { .. })
    ));
    let dir = tempfile::tempdir().unwrap();
    let options = CaOptions {
        trust_domain_aliases: vec!["other.example".parse().unwrap()],
        ..CaOptions::default()
    };
    let aliased = CertificateAuthority::self_signed(dir.path(), options).unwrap();
    assert_eq!(aliased.sign_csr(&csr, &other, 0).unwrap().identity, other);
}

#[test]
fn weak_rsa_csr_key_is_refused() {
    if !have_openssl("weak_rsa_csr_key_is_refused") {
        return;
    }
    let (_d, ca) = self_signed();
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-new", "-newkey", "rsa:1024", "-nodes", "-subj", "/CN=weak",
        ])
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csr = String::from_utf8(out.stdout).unwrap();
    let err = ca.sign_csr(&csr, &id("default", "x"), 0).unwrap_err();
    assert!(
        matches!(&err, CaError::UnsupportedKey { reason } if reason.contains("1024")),
        "{err:?}"
    );
}

// ---- plugin directories that must be refused ----

fn plugin_err(dir: &std::path::Path) -> CaError {
    CertificateAuthority::plugin(dir, None, CaOptions::default()).unwrap_err()
}

#[test]
fn plugin_with_a_mismatched_key_is_refused() {
    let plugin = plugin_dir(|_| {});
    let other = rcgen::KeyPair::generate().unwrap();
    put(plugin.path(), "ca-key.pem", &other.serialize_pem());
    let err = plugin_err(plugin.path());
    assert!(
        matches!(&err, CaError::KeyMismatch { key_path, cert_path }
            if key_path.ends_with("ca-key.pem") && cert_path.ends_with("ca-cert.pem")),
        "{err:?}"
    );
    assert!(err.to_string().contains("ca-key.pem"));
}

#[test]
fn plugin_chain_that_does_not_reach_the_root_is_refused() {
    let plugin = plugin_dir(|_| {});
    // A different root with a different name: nothing signs the intermediate.
    let now = OffsetDateTime::now_utc();
    let k = rcgen::KeyPair::generate().unwrap();
    let stranger = ca_params("Stranger Root", now, now + time::Duration::days(10), None)
        .self_signed(&k)
        .unwrap();
    put(plugin.path(), "root-cert.pem", &stranger.pem());
    let ca_pem = std::fs::read_to_string(plugin.path().join("ca-cert.pem")).unwrap();
    put(plugin.path(), "cert-chain.pem", &ca_pem);
    let err = plugin_err(plugin.path());
    assert!(
        matches!(&err, CaError::ChainDoesNotReachRoot { chain_path, root_path, .. }
            if chain_path.ends_with("cert-chain.pem") && root_path.ends_with("root-cert.pem")),
        "{err:?}"
    );

    // A root with the same name but another key: the signature does not verify.
    let k2 = rcgen::KeyPair::generate().unwrap();
    let impostor = ca_params("Test Root", now, now + time::Duration::days(10), None)
        .self_signed(&k2)
        .unwrap();
    put(plugin.path(), "root-cert.pem", &impostor.pem());
    let err = plugin_err(plugin.path());
    assert!(matches!(err, CaError::ChainBadSignature { .. }), "{err:?}");

    // cert-chain.pem naming a root that is not in root-cert.pem.
    let fresh = plugin_dir(|_| {});
    put(fresh.path(), "root-cert.pem", &stranger.pem());
    let err = plugin_err(fresh.path());
    assert!(
        matches!(err, CaError::ChainDoesNotReachRoot { .. }),
        "{err:?}"
    );
}

#[test]
fn plugin_with_an_expired_intermediate_is_refused() {
    let plugin = plugin_dir(|p| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::days(30);
        p.not_after = now - time::Duration::days(1);
    });
    let err = plugin_err(plugin.path());
    assert!(
        matches!(&err, CaError::Expired { path, .. } if path.ends_with("ca-cert.pem")),
        "{err:?}"
    );
    assert!(err.to_string().contains("expired"));
    let future = plugin_dir(|p| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(1);
    });
    assert!(matches!(
        plugin_err(future.path()),
        CaError::NotYetValid { .. }
    ));
}

#[test]
fn plugin_with_a_missing_file_is_refused() {
    for name in [
        "cert-chain.pem",
        "root-cert.pem",
        "ca-key.pem",
        "ca-cert.pem",
    ] {
        let plugin = plugin_dir(|_| {});
        std::fs::remove_file(plugin.path().join(name)).unwrap();
        let err = plugin_err(plugin.path());
        assert!(
            matches!(&err, CaError::MissingFile { path, .. } if path.ends_with(name)),
            "{name}: {err:?}"
        );
    }
    let empty = tempfile::tempdir().unwrap();
    assert!(matches!(
        plugin_err(empty.path()),
        CaError::NotACaDirectory { .. }
    ));
}

#[test]
fn plugin_ca_that_may_not_sign_is_refused() {
    let leaf_as_ca = plugin_dir(|p| p.is_ca = rcgen::IsCa::ExplicitNoCa);
    assert!(matches!(
        plugin_err(leaf_as_ca.path()),
        CaError::NotACa { .. }
    ));
    let no_cert_sign = plugin_dir(|p| {
        p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    });
    assert!(matches!(
        plugin_err(no_cert_sign.path()),
        CaError::NoCertSign { .. }
    ));
}

#[test]
fn plugin_files_with_bad_pem_are_refused() {
    let plugin = plugin_dir(|_| {});
    put(
        plugin.path(),
        "ca-cert.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    );
    assert!(matches!(
        plugin_err(plugin.path()),
        CaError::MalformedPem { .. }
    ));
    put(plugin.path(), "ca-cert.pem", "nothing here\n");
    assert!(matches!(
        plugin_err(plugin.path()),
        CaError::NoCertificate { .. }
    ));
    let plugin = plugin_dir(|_| {});
    put(plugin.path(), "ca-key.pem", "not a key");
    assert!(matches!(plugin_err(plugin.path()), CaError::Key(_)));
}

#[test]
fn plugin_path_length_is_enforced() {
    // root -> intermediate (pathlen 0) -> sub-CA: the intermediate may not have a CA below it.
    let plugin = plugin_dir(|_| {});
    let now = OffsetDateTime::now_utc();
    let ca_pem = std::fs::read_to_string(plugin.path().join("ca-cert.pem")).unwrap();
    let ca_key_pem = std::fs::read_to_string(plugin.path().join("ca-key.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(&ca_key_pem).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key).unwrap();
    let sub_key = rcgen::KeyPair::generate().unwrap();
    let sub = ca_params("Sub CA", now, now + time::Duration::days(10), None)
        .signed_by(&sub_key, &issuer)
        .unwrap();
    put(plugin.path(), "ca-cert.pem", &sub.pem());
    put(plugin.path(), "ca-key.pem", &sub_key.serialize_pem());
    put(
        plugin.path(),
        "cert-chain.pem",
        &format!("{}{ca_pem}{}", sub.pem(), plugin.root_pem()),
    );
    let err = plugin_err(plugin.path());
    assert!(
        matches!(
            err,
            CaError::PathLenExceeded {
                pathlen: 0,
                below: 1,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn self_signed_dir_with_a_cert_but_no_key_is_not_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    drop(CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap());
    std::fs::remove_file(dir.path().join("root-key.pem")).unwrap();
    let err = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap_err();
    assert!(matches!(err, CaError::MissingFile { .. }), "{err:?}");
    assert!(dir.path().join("root-cert.pem").exists());
}
