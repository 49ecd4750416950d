//! TLS 1.3 record protection: AES-GCM from aws-lc-rs against ring, sealing and opening
//! full-size (16 KiB) records in place, as the TCP bulk path does.
//!
//! `identity::tls::crypto_provider` takes the TLS 1.3 AES-GCM suites from ring on CPUs with
//! VAES and AVX2 but no AVX-512 (ring runs BoringSSL's VAES-AVX2 code there; aws-lc has VAES
//! code only for AVX-512). This bench shows the difference on the machine at hand:
//! `cargo bench --bench record_cipher`.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A full TLS record's plaintext.
const RECORD: usize = 16 * 1024;
/// TLS 1.3's additional data: the record header.
const AAD: [u8; 5] = [23, 3, 3, 0x40, 0x11];

fn nonce(seq: u64) -> [u8; 12] {
    let mut n = [0x5au8; 12];
    for (b, s) in n[4..].iter_mut().zip(seq.to_be_bytes()) {
        *b ^= s;
    }
    n
}

macro_rules! aead_bench {
    ($c:expr, $lib:literal, $m:ident, $alg:ident, $key_len:literal) => {{
        use $m::aead::{AES_128_GCM, AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
        let key = LessSafeKey::new(UnboundKey::new(&$alg, &[7u8; $key_len]).expect("key"));
        let mut g = $c.benchmark_group(format!("{}/{}", stringify!($alg), $lib));
        g.throughput(Throughput::Bytes(RECORD as u64));
        let mut buf = vec![0x42u8; RECORD];
        let mut seq = 0u64;
        g.bench_function("seal", |b| {
            b.iter(|| {
                seq += 1;
                let tag = key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce(seq)),
                        Aad::from(AAD),
                        &mut buf,
                    )
                    .expect("seal");
                std::hint::black_box(tag.as_ref()[0]);
            })
        });
        // One sealed record, opened again and again (a copy each time, as opening is in place).
        let mut sealed = vec![0x42u8; RECORD];
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce(0)),
            Aad::from(AAD),
            &mut sealed,
        )
        .expect("seal");
        let mut work = sealed.clone();
        g.bench_function("open", |b| {
            b.iter(|| {
                work.copy_from_slice(&sealed);
                let plain = key
                    .open_in_place(
                        Nonce::assume_unique_for_key(nonce(0)),
                        Aad::from(AAD),
                        &mut work,
                    )
                    .expect("open");
                std::hint::black_box(plain.len());
            })
        });
        g.finish();
        let _ = (&AES_128_GCM, &AES_256_GCM);
    }};
}

fn record_cipher(c: &mut Criterion) {
    aead_bench!(c, "aws-lc-rs", aws_lc_rs, AES_128_GCM, 16);
    aead_bench!(c, "ring", ring, AES_128_GCM, 16);
    aead_bench!(c, "aws-lc-rs", aws_lc_rs, AES_256_GCM, 32);
    aead_bench!(c, "ring", ring, AES_256_GCM, 32);
}

criterion_group!(benches, record_cipher);
criterion_main!(benches);
