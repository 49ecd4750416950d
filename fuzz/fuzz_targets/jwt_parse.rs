//! Fuzz the JWT paths that see attacker input: token parsing and validation (RequestAuthentication
//! and service-account tokens), token extraction from headers, query strings and cookies, and
//! JWKS parsing. Besides "never panics", it checks the one property that matters: without the
//! private key, no input is ever accepted as a valid token.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use warden_policy::jwt::k8s::SaTokenVerifier;
use warden_policy::jwt::{
    Algorithm, Jwks, JwtAuthenticator, JwtConfig, SigningKey, SimpleRequest, jwks_json,
};
use warden_policy::jwt_rule::{JwtHeader, JwtRule};

struct Fixture {
    authenticator: JwtAuthenticator,
    sa: SaTokenVerifier,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    // Keys generated per run: the fuzzer never sees a private key.
    let keys: Vec<SigningKey> = [Algorithm::ES256, Algorithm::EdDSA, Algorithm::RS256]
        .into_iter()
        .map(|alg| SigningKey::generate(alg).expect("key"))
        .collect();
    let jwks = jwks_json(keys.iter().map(|k| k.public_jwk().expect("jwk")));
    let rules = [
        JwtRule {
            issuer: "a".into(),
            audiences: vec!["api".into()],
            jwks: Some(jwks.clone()),
            output_claim_to_headers: vec![warden_policy::jwt_rule::ClaimToHeader {
                header: "x-c".into(),
                claim: "o.p".into(),
            }],
            ..JwtRule::default()
        },
        JwtRule {
            issuer: "b".into(),
            jwks: Some(jwks.clone()),
            from_headers: vec![JwtHeader {
                name: "x-t".into(),
                prefix: "T ".into(),
            }],
            from_params: vec!["t".into()],
            from_cookies: vec!["c".into()],
            ..JwtRule::default()
        },
    ];
    Fixture {
        authenticator: JwtAuthenticator::compile(&rules, JwtConfig::default()).expect("rules"),
        sa: SaTokenVerifier::new(Jwks::from_json(&jwks).expect("jwks")),
    }
});

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let fixture = &*FIXTURE;
    let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let text = String::from_utf8_lossy(rest);
    let req = match mode % 6 {
        // The raw input as a bearer token.
        0 => SimpleRequest::new("GET").with_header("authorization", format!("Bearer {text}")),
        // As a custom header, a query string and a cookie header.
        1 => SimpleRequest::new("GET").with_header("x-t", format!("T {text}")),
        2 => SimpleRequest::new("GET").with_query(text.to_string()),
        3 => SimpleRequest::new("GET").with_header("cookie", text.to_string()),
        // Header and payload JSON (split at the first 0xff byte) encoded into a token, so the
        // fuzzer reaches the JSON and claim checks past base64.
        4 => {
            let mut parts = rest.splitn(3, |&b| b == 0xff);
            let header = parts.next().unwrap_or_default();
            let payload = parts.next().unwrap_or_default();
            let sig = parts.next().unwrap_or(b"sig");
            let token = format!(
                "{}.{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(payload),
                URL_SAFE_NO_PAD.encode(sig)
            );
            let _ = fixture.sa.verify(&token, now);
            SimpleRequest::new("GET").with_header("authorization", format!("Bearer {token}"))
        }
        // A key set document.
        _ => {
            let _ = Jwks::from_json(&text);
            let _ = fixture.sa.verify(&text, now);
            return;
        }
    };
    match fixture.authenticator.authenticate(&req, now) {
        Ok(Some(outcome)) => panic!("forged token accepted: {outcome:?}"),
        Ok(None) => {}
        Err(failure) => {
            let status = failure.status_code();
            assert!(status == 401 || status == 403);
            // A 403 needs a verified signature, which the fuzzer cannot make.
            assert_eq!(status, 401, "{failure}");
        }
    }
});
