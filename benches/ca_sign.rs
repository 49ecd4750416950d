//! In-process CA signing throughput: one P-256 CSR signed per iteration (parse PEM, verify the
//! CSR self-signature, issue and sign the leaf, append to the issued log, PEM-encode the chain).
//!
//! Run: `cargo bench --bench ca_sign`. Certificates per second = 1 / (time per iteration).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use warden_identity::keys::{self, KeyAlgorithm};
use warden_identity::{CaOptions, CertificateAuthority, SpiffeId, TrustDomain};

fn bench_sign(c: &mut Criterion) {
    let identity = SpiffeId::istio(&TrustDomain::default(), "default", "bench").unwrap();
    let key = KeyAlgorithm::EcdsaP256.generate().unwrap();
    let csr = keys::csr_pem(&key, &identity).unwrap();

    let mut group = c.benchmark_group("ca_sign");
    group.throughput(Throughput::Elements(1));

    // Self-signed P-256 root, issued log on disk (what `warden control` runs by default).
    let dir = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::self_signed(dir.path(), CaOptions::default()).unwrap();
    group.bench_function("p256_csr_self_signed_root", |b| {
        b.iter(|| ca.sign_csr(&csr, &identity, 0).unwrap())
    });

    // Revocation state in memory only: the signing cost without the log append.
    let plugin = tempfile::tempdir().unwrap();
    std::fs::copy(
        dir.path().join("root-cert.pem"),
        plugin.path().join("root-cert.pem"),
    )
    .unwrap();
    std::fs::copy(
        dir.path().join("root-key.pem"),
        plugin.path().join("root-key.pem"),
    )
    .unwrap();
    let in_memory =
        CertificateAuthority::plugin(plugin.path(), None, CaOptions::default()).unwrap();
    group.bench_function("p256_csr_in_memory_state", |b| {
        b.iter(|| in_memory.sign_csr(&csr, &identity, 0).unwrap())
    });
    group.finish();
}

criterion_group!(benches, bench_sign);
criterion_main!(benches);
