//! `warden certs` end to end: the real binary makes a root, an intermediate and a workload
//! certificate; the files are checked with x509-parser and `openssl verify`; `inspect` reports
//! and verifies.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

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

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn first_cert(path: &Path) -> Vec<u8> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn have_openssl() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("the openssl binary is required (WARDEN_REQUIRE_PRIVILEGED=1)");
        }
        println!("skipped: openssl verification: the openssl binary is not installed");
    }
    ok
}

#[test]
fn root_intermediate_workload_and_inspect() {
    let t = tempfile::tempdir().unwrap();
    let (root, east, vm) = (
        t.path().join("root"),
        t.path().join("east"),
        t.path().join("vm"),
    );
    ok(&["certs", "root-ca", "--out", p(&root), "--key", "ec-p256"]);
    ok(&[
        "certs",
        "intermediate",
        "--root",
        p(&root),
        "--cluster",
        "east",
        "--out",
        p(&east),
        "--key",
        "ec-p256",
    ]);
    let out = ok(&[
        "certs",
        "workload",
        "--ca",
        p(&east),
        "--namespace",
        "bookinfo",
        "--service-account",
        "reviews",
        "--ttl",
        "2h",
        "--out",
        p(&vm),
    ]);
    assert!(
        out.contains("spiffe://cluster.local/ns/bookinfo/sa/reviews"),
        "{out}"
    );

    // Key files 0600, certificates 0644.
    for f in [
        root.join("root-key.pem"),
        east.join("ca-key.pem"),
        vm.join("key.pem"),
    ] {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    for f in [
        root.join("root-cert.pem"),
        east.join("ca-cert.pem"),
        vm.join("cert-chain.pem"),
    ] {
        assert_eq!(mode(&f), 0o644, "{}", f.display());
    }

    // Root: CA, 3650 days. Intermediate: CA pathlen 0, 730 days, L=east.
    let root_der = first_cert(&root.join("root-cert.pem"));
    let (_, r) = X509Certificate::from_der(&root_der).unwrap();
    let bc = r.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca && bc.path_len_constraint.is_none());
    let days = |c: &X509Certificate<'_>| {
        (c.validity().not_after.to_datetime() - c.validity().not_before.to_datetime()).whole_days()
    };
    assert_eq!(days(&r), 3650);
    let ca_der = first_cert(&east.join("ca-cert.pem"));
    let (_, i) = X509Certificate::from_der(&ca_der).unwrap();
    let bc = i.basic_constraints().unwrap().unwrap().value;
    assert!(bc.ca);
    assert_eq!(bc.path_len_constraint, Some(0));
    assert_eq!(days(&i), 730);
    assert!(
        i.subject().to_string().contains("L=east"),
        "{}",
        i.subject()
    );
    assert!(i.key_usage().unwrap().unwrap().value.key_cert_sign());
    // cert-chain.pem = ca-cert then root; root-cert.pem copied.
    let chain = std::fs::read_to_string(east.join("cert-chain.pem")).unwrap();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2);
    assert_eq!(
        std::fs::read(east.join("root-cert.pem")).unwrap(),
        std::fs::read(root.join("root-cert.pem")).unwrap()
    );

    // Workload: leaf + intermediate, the identity as critical URI SAN, 2h.
    let vm_chain = std::fs::read_to_string(vm.join("cert-chain.pem")).unwrap();
    assert_eq!(vm_chain.matches("BEGIN CERTIFICATE").count(), 2);
    let leaf_der = first_cert(&vm.join("cert-chain.pem"));
    let (_, l) = X509Certificate::from_der(&leaf_der).unwrap();
    let san = l.subject_alternative_name().unwrap().unwrap();
    assert!(san.critical);
    assert_eq!(
        format!("{:?}", san.value.general_names),
        "[URI(\"spiffe://cluster.local/ns/bookinfo/sa/reviews\")]"
    );
    let life = l.validity().not_after.to_datetime() - l.validity().not_before.to_datetime();
    assert!(life > time::Duration::hours(2) && life <= time::Duration::minutes(125));

    if have_openssl() {
        let out = Command::new("openssl")
            .arg("verify")
            .arg("-CAfile")
            .arg(vm.join("root-cert.pem"))
            .arg("-untrusted")
            .arg(vm.join("cert-chain.pem"))
            .arg(vm.join("cert-chain.pem"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        // The key matches the certificate.
        let pk = |args: &[&str]| Command::new("openssl").args(args).output().unwrap().stdout;
        assert_eq!(
            pk(&["pkey", "-pubout", "-in", p(&vm.join("key.pem"))]),
            pk(&[
                "x509",
                "-noout",
                "-pubkey",
                "-in",
                p(&vm.join("cert-chain.pem"))
            ])
        );
    }

    // inspect: SPIFFE ID, issuer, validity, key, EKU, CA, verdict (root-cert.pem next to it).
    let report = ok(&["certs", "inspect", p(&vm.join("cert-chain.pem"))]);
    for needle in [
        "SPIFFE ID:  spiffe://cluster.local/ns/bookinfo/sa/reviews",
        "issuer:     O=Istio, CN=Intermediate CA, L=east",
        "key:        ECDSA P-256",
        "EKU:        serverAuth, clientAuth",
        "CA:         no",
        "CA:         yes (pathlen 0)",
        "left)",
        "chain: verified",
    ] {
        assert!(report.contains(needle), "missing {needle:?} in:\n{report}");
    }
    let report = ok(&["certs", "inspect", p(&east.join("ca-cert.pem"))]);
    assert!(report.contains("chain: verified"), "{report}");

    // Against another root the chain does not verify, and the exit status says so.
    let other = t.path().join("other");
    ok(&[
        "certs",
        "root-ca",
        "--out",
        p(&other),
        "--key",
        "ec-p256",
        "--org",
        "Other",
    ]);
    let out = warden(&[
        "certs",
        "inspect",
        p(&vm.join("cert-chain.pem")),
        "--root",
        p(&other.join("root-cert.pem")),
    ]);
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DOES NOT VERIFY"), "{text}");

    // A workload certificate straight from a root directory.
    let direct = t.path().join("direct");
    ok(&[
        "certs",
        "workload",
        "--ca",
        p(&root),
        "--namespace",
        "ns",
        "--service-account",
        "sa",
        "--trust-domain",
        "example.org",
        "--out",
        p(&direct),
    ]);
    let report = ok(&["certs", "inspect", p(&direct.join("cert-chain.pem"))]);
    assert!(
        report.contains("spiffe://example.org/ns/ns/sa/sa"),
        "{report}"
    );
    assert!(report.contains("chain: verified"), "{report}");
}

#[test]
fn root_ca_defaults_to_rsa_4096_and_refuses_to_overwrite() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    ok(&["certs", "root-ca", "--out", p(&root)]);
    let der = first_cert(&root.join("root-cert.pem"));
    let (_, r) = X509Certificate::from_der(&der).unwrap();
    match r.public_key().parsed().unwrap() {
        x509_parser::public_key::PublicKey::RSA(k) => assert_eq!(k.key_size(), 4096),
        other => panic!("expected RSA, got {other:?}"),
    }
    assert!(r.subject().to_string().contains("O=Istio"));
    let key_before = std::fs::read(root.join("root-key.pem")).unwrap();
    let out = warden(&["certs", "root-ca", "--out", p(&root), "--key", "ec-p256"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(root.join("root-key.pem")).unwrap(),
        key_before
    );
}

#[test]
fn clear_errors_for_bad_arguments() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("nope");
    let out = warden(&[
        "certs",
        "intermediate",
        "--root",
        p(&missing),
        "--cluster",
        "c",
        "--out",
        p(&t.path().join("o")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("root-cert.pem") && err.contains("missing"),
        "{err}"
    );

    let out = warden(&[
        "certs",
        "workload",
        "--ca",
        p(t.path()),
        "--namespace",
        "a/b",
        "--service-account",
        "s",
        "--out",
        p(&t.path().join("w")),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("path segment"), "{err}");

    let out = warden(&["certs", "root-ca", "--out", p(t.path()), "--key", "dsa"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown key algorithm"));

    let out = warden(&["certs", "inspect", p(&t.path().join("none.pem"))]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("none.pem"));
}
