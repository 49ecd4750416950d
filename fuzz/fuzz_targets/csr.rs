//! Fuzz the CA's CSR intake with attacker-controlled CSRs (raw text, and arbitrary DER inside a
//! PEM block). Besides "never panics", it checks the property that matters: whatever the CSR
//! says, a certificate is only ever issued for the caller's identity, never for a name taken
//! from the request.
#![no_main]

use std::sync::LazyLock;

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use warden_identity::ca::{CaOptions, CertificateAuthority};
use warden_identity::SpiffeId;

struct Fixture {
    ca: CertificateAuthority,
    caller: SpiffeId,
    _dir: tempfile::TempDir,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).expect("CA");
    let caller = SpiffeId::parse("spiffe://cluster.local/ns/fuzz/sa/caller").expect("id");
    Fixture { ca, caller, _dir: dir }
});

fn check(f: &Fixture, pem: &str) {
    if let Ok(issued) = f.ca.sign_csr(pem, &f.caller, 0) {
        let leaf = &issued.chain_pem[0];
        let (_, der) = x509_parser::pem::parse_x509_pem(leaf.as_bytes()).expect("issued PEM");
        let cert = der.parse_x509().expect("issued certificate parses");
        let uris: Vec<String> = cert
            .subject_alternative_name()
            .expect("SAN extension parses")
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::URI(u) => Some((*u).to_owned()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(uris, vec![f.caller.as_str().to_owned()], "identity from the caller only");
    }
}

fuzz_target!(|data: &[u8]| {
    let f = &*FIXTURE;
    if let Ok(s) = std::str::from_utf8(data) {
        check(f, s);
    }
    let b64 = base64::engine::general_purpose::STANDARD.encode(data);
    let pem = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
    );
    check(f, &pem);
});
