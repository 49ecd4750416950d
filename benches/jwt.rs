//! JWT validation cost per request: an ES256 and an RS256 (2048-bit) token checked by a
//! compiled `JwtAuthenticator`, a service-account token checked by the CA's verifier, and the
//! cost for a request that carries no token.
//!
//! Run: `cargo bench --bench jwt`

use std::hint::black_box;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use warden_policy::jwt::k8s::{SaTokenSpec, SaTokenVerifier, mint};
use warden_policy::jwt::{
    Algorithm, Jwks, JwtAuthenticator, JwtConfig, SigningKey, SimpleRequest, jwks_json,
};
use warden_policy::jwt_rule::JwtRule;

const ISS: &str = "https://issuer.example.com";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn setup(alg: Algorithm) -> (JwtAuthenticator, SimpleRequest) {
    let key = SigningKey::generate(alg).expect("key");
    // A realistic key set: the signing key among two others.
    let others =
        [Algorithm::RS256, Algorithm::ES256].map(|a| SigningKey::generate(a).expect("key"));
    let jwks = jwks_json(
        others
            .iter()
            .chain(std::iter::once(&key))
            .map(|k| k.public_jwk().expect("jwk")),
    );
    let rule = JwtRule {
        issuer: ISS.into(),
        audiences: vec!["api".into()],
        jwks: Some(jwks),
        ..JwtRule::default()
    };
    let auth = JwtAuthenticator::compile(&[rule], JwtConfig::default()).expect("compile");
    let token = key
        .sign(&json!({
            "iss": ISS,
            "sub": "user-1234",
            "aud": ["api"],
            "exp": 1_700_003_600u64,
            "iat": 1_700_000_000u64,
            "groups": ["dev", "admin"],
            "email": "user@example.com",
        }))
        .expect("sign");
    let req = SimpleRequest::new("GET")
        .with_header("host", "api.example.com")
        .with_header("user-agent", "bench")
        .with_header("authorization", format!("Bearer {token}"));
    (auth, req)
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("jwt");
    for (name, alg) in [("es256", Algorithm::ES256), ("rs256", Algorithm::RS256)] {
        let (auth, req) = setup(alg);
        assert!(auth.authenticate(&req, now()).expect("valid").is_some());
        group.bench_function(format!("authenticate_{name}"), |b| {
            b.iter(|| auth.authenticate(black_box(&req), now()))
        });
    }

    let (auth, _) = setup(Algorithm::ES256);
    let no_token = SimpleRequest::new("GET")
        .with_header("host", "api.example.com")
        .with_query("page=2");
    group.bench_function("authenticate_no_token", |b| {
        b.iter(|| auth.authenticate(black_box(&no_token), now()))
    });

    let key = SigningKey::generate(Algorithm::ES256).expect("key");
    let verifier = SaTokenVerifier::new(
        Jwks::from_json(&jwks_json([key.public_jwk().expect("jwk")])).expect("jwks"),
    );
    let token = mint(&key, &SaTokenSpec::new("shop", "cart"), now()).expect("mint");
    group.bench_function("sa_token_verify_es256", |b| {
        b.iter(|| verifier.verify(black_box(&token), now()))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
