//! Helpers shared by the identity integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use time::OffsetDateTime;
use warden_identity::keys;
use warden_identity::{SpiffeId, TrustDomain};

/// Whether the `openssl` binary runs. When it does not: fails under
/// `WARDEN_REQUIRE_PRIVILEGED=1`, else prints `skipped: <reason>` and returns false.
pub fn have_openssl(test: &str) -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        if std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("{test}: the openssl binary is required (WARDEN_REQUIRE_PRIVILEGED=1)");
        }
        println!("skipped: {test}: the openssl binary is not installed");
    }
    ok
}

/// Runs `openssl verify -CAfile root [-untrusted chain] [extra...] leaf`; Ok(stdout) or
/// Err(stdout+stderr).
pub fn openssl_verify(
    root: &Path,
    untrusted: Option<&Path>,
    extra: &[&str],
    leaf: &Path,
) -> Result<String, String> {
    let mut cmd = Command::new("openssl");
    cmd.arg("verify").arg("-CAfile").arg(root);
    if let Some(u) = untrusted {
        cmd.arg("-untrusted").arg(u);
    }
    cmd.args(extra).arg(leaf);
    let out = cmd.output().expect("run openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Writes text to `dir/name` and returns the path.
pub fn put(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The identity `spiffe://cluster.local/ns/<ns>/sa/<sa>`.
pub fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::istio(&TrustDomain::default(), ns, sa).unwrap()
}

/// A fresh P-256 key and a CSR for `identity`.
pub fn csr(identity: &SpiffeId) -> (KeyPair, String) {
    let key = keys::KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = keys::csr_pem(&key, identity).unwrap();
    (key, csr)
}

/// Parameters of a CA certificate.
pub fn ca_params(
    cn: &str,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    pathlen: Option<u8>,
) -> CertificateParams {
    let mut p = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Test");
    dn.push(DnType::CommonName, cn);
    p.distinguished_name = dn;
    p.is_ca = IsCa::Ca(match pathlen {
        Some(n) => BasicConstraints::Constrained(n),
        None => BasicConstraints::Unconstrained,
    });
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.use_authority_key_identifier_extension = true;
    p.not_before = not_before;
    p.not_after = not_after;
    p
}

/// A root and an intermediate made with rcgen, written as an Istio plugin directory.
pub struct PluginDir {
    pub dir: tempfile::TempDir,
    pub root_der: Vec<u8>,
    pub root_key: KeyPair,
    pub ca_der: Vec<u8>,
}

fn pem(der: &[u8]) -> String {
    warden_identity::x509::cert_to_pem(der)
}

/// Builds a plugin dir; `tweak` may change the intermediate's parameters.
pub fn plugin_dir(tweak: impl FnOnce(&mut CertificateParams)) -> PluginDir {
    let now = OffsetDateTime::now_utc();
    let day = time::Duration::days(1);
    let root_key = KeyPair::generate().unwrap();
    let root = ca_params("Test Root", now - day, now + day * 3650, None)
        .self_signed(&root_key)
        .unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut params = ca_params("Test Intermediate", now - day, now + day * 365, Some(0));
    tweak(&mut params);
    let issuer = Issuer::from_ca_cert_der(root.der(), &root_key).unwrap();
    let ca = params.signed_by(&ca_key, &issuer).unwrap();
    let dir = tempfile::tempdir().unwrap();
    put(dir.path(), "root-cert.pem", &root.pem());
    put(dir.path(), "ca-cert.pem", &ca.pem());
    put(dir.path(), "ca-key.pem", &ca_key.serialize_pem());
    put(
        dir.path(),
        "cert-chain.pem",
        &format!("{}{}", ca.pem(), root.pem()),
    );
    PluginDir {
        dir,
        root_der: root.der().to_vec(),
        root_key,
        ca_der: ca.der().to_vec(),
    }
}

impl PluginDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn root_pem(&self) -> String {
        pem(&self.root_der)
    }
}
