//! The CA over time: revocation and CRLs, root re-issue, root rotation, plugin reload.

mod common;

use std::time::Duration;

use common::*;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use time::OffsetDateTime;
use warden_identity::ca::RootStatus;
use warden_identity::keys::KeyAlgorithm;
use warden_identity::revocation;
use warden_identity::x509::{Serial, verify_leaf};
use warden_identity::{CaError, CaOptions, CertificateAuthority, IssuedCertificate};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

fn der(pem: &str) -> CertificateDer<'static> {
    CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
}

fn bundle(ca: &CertificateAuthority) -> Vec<CertificateDer<'static>> {
    ca.root_bundle_der()
}

/// Verifies with webpki against `roots` (intermediates from the issued chain).
fn verifies(issued: &IssuedCertificate, roots: &[CertificateDer<'static>]) -> Result<(), String> {
    let inter: Vec<CertificateDer<'static>> =
        issued.chain_pem[1..].iter().map(|p| der(p)).collect();
    verify_leaf(
        &der(issued.leaf_pem()),
        &inter,
        roots,
        OffsetDateTime::now_utc(),
        false,
    )
}

fn issue(ca: &CertificateAuthority, ns: &str, sa: &str) -> IssuedCertificate {
    let identity = id(ns, sa);
    ca.sign_csr(&csr(&identity).1, &identity, 0).unwrap()
}

#[test]
fn revoking_an_identity_revokes_its_certificates_and_blocks_issuance() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let a1 = issue(&ca, "default", "a");
    let a2 = issue(&ca, "default", "a");
    let b = issue(&ca, "default", "b");

    let crl0 = ca.crl().unwrap();
    assert_eq!(crl0.revoked, 0);

    let mut revoked = ca.revoke_identity(&id("default", "a")).unwrap();
    revoked.sort();
    let mut expected = vec![a1.serial.clone(), a2.serial.clone()];
    expected.sort();
    assert_eq!(revoked, expected);
    assert!(ca.is_serial_revoked(&a1.serial).unwrap());
    assert!(!ca.is_serial_revoked(&b.serial).unwrap());

    // No more certificates for a; b is unaffected.
    let identity = id("default", "a");
    let err = ca.sign_csr(&csr(&identity).1, &identity, 0).unwrap_err();
    assert!(matches!(err, CaError::IdentityRevoked { .. }), "{err:?}");
    issue(&ca, "default", "b");

    // The CRL lists exactly a's serials, is signed by the root, and has a higher number.
    let crl = ca.crl().unwrap();
    assert!(crl.number > crl0.number);
    let (_, parsed) = CertificateRevocationList::from_der(&crl.der).unwrap();
    let mut listed: Vec<Serial> = parsed
        .iter_revoked_certificates()
        .map(|r| Serial::from_be_bytes(r.raw_serial()))
        .collect();
    listed.sort();
    assert_eq!(listed, expected);
    let root = der(&ca.root_bundle_pem());
    let (_, root_cert) = x509_parser::certificate::X509Certificate::from_der(&root).unwrap();
    parsed.verify_signature(root_cert.public_key()).unwrap();
    let next = crl.next_update.unwrap();
    assert_eq!(next - crl.this_update, time::Duration::hours(24));
    // Unchanged revocations: the cached CRL is served again.
    assert_eq!(ca.crl().unwrap().number, crl.number);

    if have_openssl("revoking_an_identity_revokes_its_certificates_and_blocks_issuance") {
        let t = tempfile::tempdir().unwrap();
        let root_file = put(t.path(), "root.pem", &ca.root_bundle_pem());
        let crl_file = put(t.path(), "crl.pem", &crl.pem);
        let a_file = put(t.path(), "a.pem", a1.leaf_pem());
        let b_file = put(t.path(), "b.pem", b.leaf_pem());
        let crl_flags = ["-crl_check", "-CRLfile", crl_file.to_str().unwrap()];
        let err = openssl_verify(&root_file, None, &crl_flags, &a_file).unwrap_err();
        assert!(err.contains("revoked"), "{err}");
        openssl_verify(&root_file, None, &crl_flags, &b_file).unwrap();
        // openssl checks the CRL's own signature against the root.
        let out = std::process::Command::new("openssl")
            .args(["crl", "-noout", "-in"])
            .arg(&crl_file)
            .arg("-CAfile")
            .arg(&root_file)
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("verify OK")
                || String::from_utf8_lossy(&out.stdout).contains("verify OK"),
            "{out:?}"
        );
    }

    // Persisted: a restarted CA still refuses a, and lists the same serials.
    drop(ca);
    assert!(dir.path().join("revoked.json").exists());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    assert!(matches!(
        ca.sign_csr(&csr(&identity).1, &identity, 0),
        Err(CaError::IdentityRevoked { .. })
    ));
    assert_eq!(ca.crl().unwrap().revoked, 2);
    assert!(
        ca.crl().unwrap().number > crl.number,
        "CRL numbers keep growing"
    );

    // Un-revoking lets a get certificates again; its old serials stay revoked.
    assert!(ca.unrevoke_identity(&identity).unwrap());
    issue(&ca, "default", "a");
    assert!(ca.is_serial_revoked(&a1.serial).unwrap());
}

#[test]
fn revoking_a_serial() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let c = issue(&ca, "default", "c");
    assert!(ca.revoke_serial(&c.serial).unwrap());
    assert!(!ca.revoke_serial(&c.serial).unwrap(), "already revoked");
    let list = ca.revocation_list().unwrap();
    assert_eq!(list.serials.len(), 1);
    // The log filled in the identity and expiry.
    assert_eq!(list.serials[0].identity.as_ref(), Some(&id("default", "c")));
    assert_eq!(
        list.serials[0].not_after,
        Some(c.not_after.unix_timestamp())
    );
    // Identity itself is not revoked.
    issue(&ca, "default", "c");
    // Unknown serials can be revoked too (kept until un-revoked, expiry unknown).
    let unknown: Serial = "0abc".parse().unwrap();
    assert!(ca.revoke_serial(&unknown).unwrap());
    assert_eq!(ca.crl().unwrap().revoked, 2);
    // Expired entries are pruned from the store and never listed.
    let store = revocation::RevocationStore::open(dir.path()).unwrap();
    let later = c.not_after + time::Duration::seconds(1);
    assert_eq!(store.prune(later).unwrap(), 1);
    assert_eq!(ca.crl_at(later).unwrap().revoked, 1);
}

#[test]
fn revocation_from_another_process_is_seen_by_the_running_ca() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let d = issue(&ca, "default", "d");
    let before = ca.crl().unwrap();
    // What `warden control revoke` does beside a running control plane.
    let now = OffsetDateTime::now_utc();
    let serials = revocation::revoke_identity_in_dir(dir.path(), &id("default", "d"), now).unwrap();
    assert_eq!(serials, vec![d.serial.clone()]);
    let identity = id("default", "d");
    assert!(matches!(
        ca.sign_csr(&csr(&identity).1, &identity, 0),
        Err(CaError::IdentityRevoked { .. })
    ));
    let after = ca.crl().unwrap();
    assert_eq!(after.revoked, 1);
    assert!(after.number > before.number);
    let e = issue(&ca, "default", "e");
    assert!(revocation::revoke_serial_in_dir(dir.path(), &e.serial, now).unwrap());
    assert!(ca.is_serial_revoked(&e.serial).unwrap());
}

#[test]
fn issued_log_survives_restarts_and_tolerates_a_torn_line() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let f = issue(&ca, "default", "f");
    drop(ca);
    // A crash mid-append leaves a partial last line.
    let log = dir.path().join("issued.jsonl");
    let mut text = std::fs::read_to_string(&log).unwrap();
    text.push_str("{\"serial\":\"ab");
    std::fs::write(&log, text).unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    assert_eq!(
        ca.revoke_identity(&id("default", "f")).unwrap(),
        vec![f.serial]
    );
    // A corrupt line in the middle is an error, not silently ignored.
    drop(ca);
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, format!("garbage\n{text}")).unwrap();
    let err = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap_err();
    assert!(matches!(err, CaError::CorruptState { .. }), "{err:?}");
}

#[test]
fn root_rotation_keeps_old_and_new_leaves_verifying() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let old_root = ca.roots()[0].clone();
    let before = issue(&ca, "default", "old");

    // Step 1: stage. The bundle holds both roots; signing stays on the old root.
    let staged = ca.stage_root(KeyAlgorithm::EcdsaP256).unwrap();
    assert_eq!(staged.status, RootStatus::Staged);
    assert_eq!(bundle(&ca).len(), 2);
    let during = issue(&ca, "default", "during");
    assert_eq!(
        during.root_pem(),
        before.root_pem(),
        "still signing with the old root"
    );

    // Step 2: activate. New leaves come from the new root; the old root stays trusted.
    let active = ca.activate_staged_root().unwrap();
    assert_eq!(active.serial, staged.serial);
    assert_eq!(active.status, RootStatus::Active);
    let after = issue(&ca, "default", "new");
    assert_ne!(after.root_pem(), before.root_pem());
    let roots = bundle(&ca);
    assert_eq!(roots.len(), 2);
    assert_eq!(
        roots[0],
        der(after.root_pem()),
        "the active root comes first"
    );
    verifies(&before, &roots).unwrap();
    verifies(&after, &roots).unwrap();
    // Only the new root: the old leaf no longer verifies (the test can fail).
    assert!(verifies(&before, &roots[..1]).is_err());

    if have_openssl("root_rotation_keeps_old_and_new_leaves_verifying") {
        let t = tempfile::tempdir().unwrap();
        let b = put(t.path(), "bundle.pem", &ca.root_bundle_pem());
        for (name, leaf) in [("before", &before), ("after", &after)] {
            let l = put(t.path(), &format!("{name}.pem"), leaf.leaf_pem());
            openssl_verify(&b, None, &[], &l).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    // A restart sees the same state; the old root's CRL is still published.
    drop(ca);
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    assert_eq!(bundle(&ca), roots);
    let statuses: Vec<RootStatus> = ca.roots().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![RootStatus::Active, RootStatus::Previous]);
    ca.revoke_identity(&id("default", "old")).unwrap();
    let crls = ca.crls().unwrap();
    assert_eq!(crls.len(), 2, "one CRL per root key");
    assert!(crls.iter().all(|c| c.revoked == 1));

    // Step 3: retire the old root once its leaves have expired.
    let err = ca.retire_root(&active.serial).unwrap_err();
    assert!(matches!(err, CaError::RetireActiveRoot { .. }));
    ca.retire_root(&old_root.serial).unwrap();
    assert_eq!(bundle(&ca).len(), 1);
    assert!(verifies(&before, &bundle(&ca)).is_err());
    verifies(&after, &bundle(&ca)).unwrap();
    assert!(matches!(
        ca.retire_root(&old_root.serial),
        Err(CaError::UnknownRoot { .. })
    ));
}

#[test]
fn activation_interrupted_between_renames_is_finished_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let staged = ca.stage_root(KeyAlgorithm::EcdsaP256).unwrap();
    drop(ca);
    // Simulate a crash after the key rename, before the certificate rename.
    std::fs::rename(
        dir.path().join("roots/staged-key.pem"),
        dir.path().join("root-key.pem"),
    )
    .unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    assert_eq!(ca.roots()[0].serial, staged.serial);
    issue(&ca, "default", "x");
}

#[test]
fn self_signed_root_is_reissued_with_the_same_key_when_20_percent_remains() {
    let dir = tempfile::tempdir().unwrap();
    // A short-lived root so the re-issue point is near: 10 minutes back-dated, 10 ahead.
    let options = CaOptions {
        root_ttl: Duration::from_secs(600),
        backdate: Duration::from_secs(600),
        ..CaOptions::default()
    };
    let ca = CertificateAuthority::self_signed(dir.path(), options).unwrap();
    let old_root = der(&ca.root_bundle_pem());
    let leaf = ca
        .sign_csr(&csr(&id("default", "r")).1, &id("default", "r"), 60)
        .unwrap();
    let now = OffsetDateTime::now_utc();
    assert_eq!(ca.maybe_reissue_root(now).unwrap(), None, "80% left");
    let later = now + time::Duration::minutes(7);
    let new_serial = ca.maybe_reissue_root(later).unwrap().expect("re-issued");

    let roots = ca.roots();
    assert_eq!(roots[0].serial, new_serial);
    assert_eq!(roots[0].status, RootStatus::Active);
    let new_root = ca.root_bundle_der()[0].clone();
    assert_ne!(new_root, old_root);
    let (_, o) = x509_parser::certificate::X509Certificate::from_der(&old_root).unwrap();
    let (_, n) = x509_parser::certificate::X509Certificate::from_der(&new_root).unwrap();
    assert_eq!(o.public_key().raw, n.public_key().raw, "same key");
    assert_eq!(o.subject().as_raw(), n.subject().as_raw(), "same name");
    assert!(n.validity().not_after.to_datetime() > o.validity().not_after.to_datetime());
    // A leaf issued under the old root certificate verifies against the new one alone.
    verifies(&leaf, std::slice::from_ref(&new_root)).unwrap();
    if have_openssl("self_signed_root_is_reissued_with_the_same_key_when_20_percent_remains") {
        let t = tempfile::tempdir().unwrap();
        let r = put(
            t.path(),
            "new-root.pem",
            &warden_identity::x509::cert_to_pem(&new_root),
        );
        let l = put(t.path(), "leaf.pem", leaf.leaf_pem());
        openssl_verify(&r, None, &[], &l).unwrap();
    }
    // Not due again right after.
    assert_eq!(ca.maybe_reissue_root(later).unwrap(), None);
}

#[test]
fn plugin_ca_reload_keeps_the_old_material_on_bad_files() {
    let plugin = plugin_dir(|_| {});
    let ca = CertificateAuthority::plugin(plugin.path(), None, CaOptions::default()).unwrap();
    let first = issue(&ca, "default", "p");
    // Break the directory: reload fails, signing goes on with what was loaded.
    put(
        plugin.path(),
        "ca-key.pem",
        &rcgen::KeyPair::generate().unwrap().serialize_pem(),
    );
    assert!(matches!(ca.reload(), Err(CaError::KeyMismatch { .. })));
    let still = issue(&ca, "default", "p");
    assert_eq!(still.chain_pem[1], first.chain_pem[1]);
    // Plugin CAs are rotated by files, not by these calls.
    assert!(matches!(
        ca.rotate_root(KeyAlgorithm::EcdsaP256),
        Err(CaError::NotSelfSigned { .. })
    ));
    assert_eq!(
        ca.maybe_reissue_root(OffsetDateTime::now_utc()).unwrap(),
        None
    );
}

#[test]
fn plugin_rotation_with_two_roots_in_the_bundle() {
    // Old mesh: root A -> intermediate A. New: root B -> intermediate B, bundle [B, A].
    let old = plugin_dir(|_| {});
    let old_ca = CertificateAuthority::plugin(old.path(), None, CaOptions::default()).unwrap();
    let old_leaf = issue(&old_ca, "default", "old");

    let new = plugin_dir(|_| {});
    let bundle = format!("{}{}", new.root_pem(), old.root_pem());
    put(new.path(), "root-cert.pem", &bundle);
    let new_ca = CertificateAuthority::plugin(new.path(), None, CaOptions::default()).unwrap();
    assert_eq!(new_ca.root_bundle_pem(), bundle);
    let roots = new_ca.roots();
    assert_eq!(roots.len(), 2);
    assert_eq!(roots[0].status, RootStatus::Active);
    let new_leaf = issue(&new_ca, "default", "new");
    let trust = new_ca.root_bundle_der();
    verifies(&old_leaf, &trust).unwrap();
    verifies(&new_leaf, &trust).unwrap();
    // The response chain ends at the root that anchors it.
    assert_eq!(new_leaf.root_pem(), new.root_pem());
    if have_openssl("plugin_rotation_with_two_roots_in_the_bundle") {
        let t = tempfile::tempdir().unwrap();
        let b = put(t.path(), "bundle.pem", &bundle);
        for (name, leaf) in [("old", &old_leaf), ("new", &new_leaf)] {
            let l = put(t.path(), &format!("{name}.pem"), leaf.leaf_pem());
            let u = put(t.path(), &format!("{name}-chain.pem"), &leaf.chain_pem[1]);
            openssl_verify(&b, Some(&u), &[], &l).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}

#[test]
fn plugin_crl_file_is_checked_and_published() {
    let plugin = plugin_dir(|_| {});
    let ca_pem = std::fs::read_to_string(plugin.path().join("ca-cert.pem")).unwrap();
    let ca_key = rcgen::KeyPair::from_pem(
        &std::fs::read_to_string(plugin.path().join("ca-key.pem")).unwrap(),
    )
    .unwrap();
    let now = OffsetDateTime::now_utc();
    let make_crl = |issuer: &rcgen::Issuer<'_, &rcgen::KeyPair>| {
        rcgen::CertificateRevocationListParams {
            this_update: now,
            next_update: now + time::Duration::days(1),
            crl_number: rcgen::SerialNumber::from(7u64),
            issuing_distribution_point: None,
            revoked_certs: vec![],
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        }
        .signed_by(issuer)
        .unwrap()
        .pem()
        .unwrap()
    };
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &ca_key).unwrap();
    put(plugin.path(), "ca-crl.pem", &make_crl(&issuer));
    let ca = CertificateAuthority::plugin(plugin.path(), None, CaOptions::default()).unwrap();
    let crls = ca.crls().unwrap();
    assert_eq!(crls.len(), 2);
    assert_eq!(crls[1].number, 7);

    // A CRL signed by a stranger key under the CA's name is refused.
    let stranger = rcgen::KeyPair::generate().unwrap();
    let forged = rcgen::Issuer::from_ca_cert_pem(&ca_pem, &stranger).unwrap();
    put(plugin.path(), "ca-crl.pem", &make_crl(&forged));
    let err = CertificateAuthority::plugin(plugin.path(), None, CaOptions::default()).unwrap_err();
    assert!(
        matches!(&err, CaError::BadCrl { path, .. } if path.ends_with("ca-crl.pem")),
        "{err:?}"
    );
}

#[test]
fn serving_certificate_with_extra_sans() {
    use warden_identity::ca::ExtraSans;
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let identity = id("istio-system", "istiod");
    let extra = ExtraSans {
        dns: vec!["istiod.istio-system.svc".into(), "localhost".into()],
        ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
    };
    let (_k, csr) = csr(&identity);
    let issued = ca
        .sign_csr_with_extra_sans(&csr, &identity, 3600, &extra)
        .unwrap();
    let leaf = der(issued.leaf_pem());
    let (_, c) = x509_parser::certificate::X509Certificate::from_der(&leaf).unwrap();
    let san = c.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    let names: Vec<String> = san
        .value
        .general_names
        .iter()
        .map(|n| n.to_string())
        .collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(
        names[0].contains(identity.as_str()),
        "the identity comes first: {names:?}"
    );
    assert!(names.iter().any(|n| n.contains("istiod.istio-system.svc")));
    if have_openssl("serving_certificate_with_extra_sans") {
        let t = tempfile::tempdir().unwrap();
        let r = put(t.path(), "root.pem", &ca.root_bundle_pem());
        let l = put(t.path(), "leaf.pem", issued.leaf_pem());
        openssl_verify(&r, None, &["-verify_hostname", "localhost"], &l).unwrap();
        openssl_verify(&r, None, &["-verify_ip", "127.0.0.1"], &l).unwrap();
        assert!(openssl_verify(&r, None, &["-verify_hostname", "evil.example"], &l).is_err());
        // The root fingerprint the CA reports is openssl's.
        let out = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
            .arg(&r)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout)
            .to_lowercase()
            .replace(':', "");
        assert!(
            text.contains(&ca.roots()[0].sha256_fingerprint),
            "{text} vs {}",
            ca.roots()[0].sha256_fingerprint
        );
    }
    for bad in ["", "a b", "under_score.example", "-.", "x..y"] {
        let extra = ExtraSans {
            dns: vec![bad.into()],
            ips: vec![],
        };
        assert!(
            matches!(
                ca.sign_csr_with_extra_sans(&csr, &identity, 3600, &extra),
                Err(CaError::InvalidDnsName { .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn reload_if_changed_follows_files_replaced_beside_the_running_ca() {
    // Self-signed: a rotation done by another process (e.g. a CLI) is picked up.
    let dir = tempfile::tempdir().unwrap();
    let running = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    assert!(!running.reload_if_changed().unwrap(), "nothing changed");
    let other = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    let new_root = other.rotate_root(KeyAlgorithm::EcdsaP256).unwrap();
    assert!(running.reload_if_changed().unwrap());
    assert_eq!(running.roots()[0].serial, new_root.serial);
    assert_eq!(running.root_bundle_der().len(), 2);
    assert!(!running.reload_if_changed().unwrap());

    // Plugin: a replaced intermediate (same root) is picked up.
    let plugin = plugin_dir(|_| {});
    let ca = CertificateAuthority::plugin(plugin.path(), None, CaOptions::default()).unwrap();
    let before = issue(&ca, "default", "p");
    let now = OffsetDateTime::now_utc();
    let key = rcgen::KeyPair::generate().unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&plugin.root_pem(), &plugin.root_key).unwrap();
    let next = ca_params(
        "Next Intermediate",
        now - time::Duration::minutes(1),
        now + time::Duration::days(30),
        Some(0),
    )
    .signed_by(&key, &issuer)
    .unwrap();
    put(plugin.path(), "ca-key.pem", &key.serialize_pem());
    put(plugin.path(), "ca-cert.pem", &next.pem());
    put(
        plugin.path(),
        "cert-chain.pem",
        &format!("{}{}", next.pem(), plugin.root_pem()),
    );
    assert!(ca.reload_if_changed().unwrap());
    let after = issue(&ca, "default", "p");
    assert_ne!(after.chain_pem[1], before.chain_pem[1]);
    assert_eq!(der(&after.chain_pem[1]), der(&next.pem()));
}
