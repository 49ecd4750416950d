//! RequestAuthentication end to end: real keys generated here, tokens signed by Warden's
//! signer and by an independent implementation (the `jsonwebtoken` crate), every failure
//! with its HTTP status, token places, outputs, leeway and key sources.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use warden_policy::jwt::{
    Algorithm, JwksProvider, JwtAuthenticator, JwtConfig, JwtConfigError, JwtFailure, JwtOutcome,
    MemoryJwksProvider, SigningKey, SimpleRequest, TokenLocation, jwks_json,
};
use warden_policy::jwt_rule::{ClaimToHeader, JwtHeader, JwtRule};

const NOW: u64 = 1_700_000_000;
const ISS: &str = "https://issuer.example.com";

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn es256() -> SigningKey {
    SigningKey::generate(Algorithm::ES256).expect("ES256 key")
}

fn jwks_of(keys: &[&SigningKey]) -> String {
    jwks_json(keys.iter().map(|k| k.public_jwk().expect("jwk")))
}

fn rule(issuer: &str, keys: &[&SigningKey]) -> JwtRule {
    JwtRule {
        issuer: issuer.to_owned(),
        jwks: Some(jwks_of(keys)),
        ..JwtRule::default()
    }
}

fn compile(rules: &[JwtRule]) -> JwtAuthenticator {
    JwtAuthenticator::compile(rules, JwtConfig::default()).expect("compiles")
}

fn claims(issuer: &str) -> Value {
    json!({
        "iss": issuer,
        "sub": "alice",
        "aud": ["api", "web"],
        "azp": "frontend",
        "exp": NOW + 600,
        "nbf": NOW - 10,
        "iat": NOW - 10,
        "groups": ["admin", "dev"],
        "org": {"team": "core", "level": 3},
    })
}

fn bearer(token: &str) -> SimpleRequest {
    SimpleRequest::new("GET").with_header("authorization", format!("Bearer {token}"))
}

fn ok(auth: &JwtAuthenticator, req: &SimpleRequest) -> JwtOutcome {
    match auth.authenticate(req, now()) {
        Ok(Some(outcome)) => outcome,
        other => panic!("expected a validated token, got {other:?}"),
    }
}

fn fail(auth: &JwtAuthenticator, req: &SimpleRequest) -> JwtFailure {
    match auth.authenticate(req, now()) {
        Err(failure) => failure,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn a_valid_es256_token_gives_principal_claims_and_rewrites() {
    let key = es256();
    let auth = compile(&[rule(ISS, &[&key])]);
    let token = key.sign(&claims(ISS)).expect("sign");
    let out = ok(&auth, &bearer(&token));
    assert_eq!(out.issuer, ISS);
    assert_eq!(out.subject, "alice");
    assert_eq!(out.principal, format!("{ISS}/alice"));
    assert_eq!(out.audiences, ["api", "web"]);
    assert_eq!(out.presenter.as_deref(), Some("frontend"));
    assert_eq!(out.claims["org"]["level"], 3);
    assert_eq!(out.headers_to_remove, ["authorization"]);
    assert!(out.headers_to_set.is_empty());
    assert!(out.params_to_remove.is_empty());
    assert_eq!(out.rule, 0);
}

#[test]
fn every_algorithm_verifies_with_generated_keys() {
    let rsa = SigningKey::generate(Algorithm::RS256).expect("rsa");
    let rsa_pem = rsa.to_pkcs8_pem().expect("pem");
    for alg in [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::ES512,
        Algorithm::EdDSA,
    ] {
        let key = if alg.name().starts_with('R') || alg.name().starts_with('P') {
            SigningKey::from_pem(&rsa_pem, Some(alg)).expect("rsa key")
        } else {
            SigningKey::generate(alg).expect("key")
        };
        // The JWK publishes `alg`; a JWK without it must work too.
        let mut jwk = key.public_jwk().expect("jwk");
        jwk.as_object_mut().expect("object").remove("alg");
        let auth = compile(&[JwtRule {
            issuer: ISS.into(),
            jwks: Some(jwks_json([jwk])),
            ..JwtRule::default()
        }]);
        let token = key.sign(&claims(ISS)).expect("sign");
        assert_eq!(ok(&auth, &bearer(&token)).subject, "alice", "{alg}");
        // And a wrong key of the same type fails with a bad signature.
        let other = if alg.name().starts_with('R') || alg.name().starts_with('P') {
            None
        } else {
            Some(
                SigningKey::generate(alg)
                    .expect("other")
                    .with_kid(key.kid()),
            )
        };
        if let Some(other) = other {
            let forged = other.sign(&claims(ISS)).expect("sign");
            assert!(
                matches!(
                    fail(&auth, &bearer(&forged)),
                    JwtFailure::BadSignature { .. }
                ),
                "{alg}"
            );
        }
    }
}

#[test]
fn tokens_from_an_independent_signer_verify() {
    // jsonwebtoken signs with its own code paths and PEM parsing.
    let es = es256();
    let rsa = SigningKey::generate(Algorithm::RS256).expect("rsa");
    let ed = SigningKey::generate(Algorithm::EdDSA).expect("ed");
    // Published without `alg`, so the RSA key serves RS256 and PS512 alike.
    let unpinned = jwks_json([&es, &rsa, &ed].map(|k| {
        let mut jwk = k.public_jwk().expect("jwk");
        jwk.as_object_mut().expect("object").remove("alg");
        jwk
    }));
    let auth = compile(&[JwtRule {
        issuer: ISS.into(),
        jwks: Some(unpinned),
        ..JwtRule::default()
    }]);
    let pinned = compile(&[rule(ISS, &[&es, &rsa, &ed])]);
    let cases = [
        (
            &es,
            jsonwebtoken::Algorithm::ES256,
            jsonwebtoken::EncodingKey::from_ec_pem(es.to_pkcs8_pem().expect("pem").as_bytes())
                .expect("ec pem"),
        ),
        (
            &rsa,
            jsonwebtoken::Algorithm::RS256,
            jsonwebtoken::EncodingKey::from_rsa_pem(rsa.to_pkcs8_pem().expect("pem").as_bytes())
                .expect("rsa pem"),
        ),
        (
            &rsa,
            jsonwebtoken::Algorithm::PS512,
            jsonwebtoken::EncodingKey::from_rsa_pem(rsa.to_pkcs8_pem().expect("pem").as_bytes())
                .expect("rsa pem"),
        ),
        (
            &ed,
            jsonwebtoken::Algorithm::EdDSA,
            jsonwebtoken::EncodingKey::from_ed_pem(ed.to_pkcs8_pem().expect("pem").as_bytes())
                .expect("ed pem"),
        ),
    ];
    for (key, alg, encoding) in cases {
        let mut header = jsonwebtoken::Header::new(alg);
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(&header, &claims(ISS), &encoding).expect("encode");
        let out = ok(&auth, &bearer(&token));
        assert_eq!(out.principal, format!("{ISS}/alice"), "{alg:?}");
        // A JWK that names its `alg` serves only that algorithm.
        let pinned_result = pinned.authenticate(&bearer(&token), now());
        if alg == jsonwebtoken::Algorithm::PS512 {
            assert_eq!(
                pinned_result.expect_err("pinned to RS256").kind(),
                "no_matching_key"
            );
        } else {
            assert!(pinned_result.is_ok(), "{alg:?}");
        }
    }
}

#[test]
fn rfc7515_example_token_validates_end_to_end() {
    let auth = compile(&[JwtRule {
        issuer: "joe".into(),
        jwks: Some(
            r#"{"keys":[{"kty":"EC","crv":"P-256",
            "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
            "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#
                .into(),
        ),
        ..JwtRule::default()
    }]);
    let token = "eyJhbGciOiJFUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q";
    let out = auth
        .authenticate(&bearer(token), at(1_300_819_000))
        .expect("valid")
        .expect("token");
    assert_eq!(out.principal, "joe/");
    assert_eq!(out.claims["http://example.com/is_root"], true);
    let late = auth.authenticate(&bearer(token), at(1_300_819_380 + 61));
    assert_eq!(
        late,
        Err(JwtFailure::Expired {
            exp: 1_300_819_380,
            now: 1_300_819_441
        })
    );
}

#[test]
fn no_token_means_no_principal() {
    let key = es256();
    let auth = compile(&[rule(ISS, &[&key])]);
    for req in [
        SimpleRequest::new("GET"),
        SimpleRequest::new("GET").with_header("authorization", "Basic dXNlcjpwYXNz"),
        SimpleRequest::new("GET").with_header("authorization", "Bearer "),
        SimpleRequest::new("GET").with_query("other=1"),
    ] {
        assert_eq!(auth.authenticate(&req, now()), Ok(None), "{req:?}");
    }
    // No rule at all: nothing is checked, even a garbage token.
    let empty = compile(&[]);
    assert!(empty.is_empty());
    assert_eq!(empty.authenticate(&bearer("garbage"), now()), Ok(None));
}

#[test]
fn cors_preflight_skips_the_check() {
    let key = es256();
    let auth = compile(&[rule(ISS, &[&key])]);
    let req = SimpleRequest::new("OPTIONS")
        .with_header("origin", "https://app.example.com")
        .with_header("access-control-request-method", "POST")
        .with_header("authorization", "Bearer not-a-token");
    assert_eq!(auth.authenticate(&req, now()), Ok(None));
    // A plain OPTIONS with the same bad token is checked.
    let plain = SimpleRequest::new("OPTIONS").with_header("authorization", "Bearer not-a-token");
    assert_eq!(fail(&auth, &plain).status_code(), 401);
}

#[test]
fn every_401_failure_mode() {
    let key = es256().with_kid("k1");
    let auth = compile(&[rule(ISS, &[&key])]);
    let good = key.sign(&claims(ISS)).expect("sign");
    let parts: Vec<&str> = good.split('.').collect();

    let cases: Vec<(&str, String, &str)> = vec![
        ("garbage", "not-a-jwt".to_owned(), "malformed"),
        (
            "two parts",
            format!("{}.{}", parts[0], parts[1]),
            "malformed",
        ),
        (
            "bad base64 payload",
            format!("{}.{}x.{}", parts[0], parts[1], parts[2]),
            "malformed",
        ),
        (
            "tampered payload",
            {
                let mut c = claims(ISS);
                c["sub"] = json!("mallory");
                format!(
                    "{}.{}.{}",
                    parts[0],
                    URL_SAFE_NO_PAD.encode(c.to_string()),
                    parts[2]
                )
            },
            "bad_signature",
        ),
        (
            "unknown kid",
            es256().with_kid("k2").sign(&claims(ISS)).expect("sign"),
            "no_matching_key",
        ),
        (
            "same kid, other key",
            es256().with_kid("k1").sign(&claims(ISS)).expect("sign"),
            "bad_signature",
        ),
        (
            "expired",
            key.sign(&{
                let mut c = claims(ISS);
                c["exp"] = json!(NOW - 61);
                c
            })
            .expect("sign"),
            "expired",
        ),
        (
            "not yet valid",
            key.sign(&{
                let mut c = claims(ISS);
                c["nbf"] = json!(NOW + 61);
                c
            })
            .expect("sign"),
            "not_yet_valid",
        ),
        (
            "issuer with no rule",
            key.sign(&claims("https://other.example.com"))
                .expect("sign"),
            "unknown_issuer",
        ),
        (
            "no iss",
            key.sign(&json!({"sub": "a"})).expect("sign"),
            "malformed",
        ),
        (
            "exp not a number",
            key.sign(&{
                let mut c = claims(ISS);
                c["exp"] = json!("tomorrow");
                c
            })
            .expect("sign"),
            "malformed",
        ),
        (
            "duplicate sub",
            {
                let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","kid":"k1"}"#);
                let payload = URL_SAFE_NO_PAD
                    .encode(format!(r#"{{"iss":"{ISS}","sub":"alice","sub":"admin"}}"#));
                let input = format!("{header}.{payload}");
                let sig = key.sign_bytes(input.as_bytes()).expect("sig");
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
            },
            "malformed",
        ),
    ];
    for (name, token, kind) in cases {
        let failure = fail(&auth, &bearer(&token));
        assert_eq!(failure.kind(), kind, "{name}: {failure}");
        assert_eq!(failure.status_code(), 401, "{name}");
        assert!(!failure.to_string().is_empty());
    }
}

#[test]
fn alg_none_and_hmac_confusion_are_refused() {
    let key = es256();
    let auth = compile(&[rule(ISS, &[&key])]);
    let payload = URL_SAFE_NO_PAD.encode(claims(ISS).to_string());

    // `alg: none`, with and without a signature part.
    let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
    for token in [
        format!("{none}.{payload}."),
        format!("{none}.{payload}.AAAA"),
    ] {
        let failure = fail(&auth, &bearer(&token));
        assert_eq!(failure.kind(), "algorithm", "{failure}");
        assert_eq!(failure.status_code(), 401);
        assert!(failure.to_string().contains("alg: none"), "{failure}");
    }

    // The classic confusion: HS256 keyed with the public key as published.
    let jwks = jwks_of(&[&key]);
    let hs = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, key.kid()));
    let input = format!("{hs}.{payload}");
    for secret in [
        jwks.as_bytes(),
        key.public_key_pem().expect("pem").as_bytes(),
    ] {
        let mac = aws_lc_rs::hmac::sign(
            &aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret),
            input.as_bytes(),
        );
        let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        let failure = fail(&auth, &bearer(&token));
        assert_eq!(failure.kind(), "algorithm", "{failure}");
        assert!(failure.to_string().contains("HMAC"), "{failure}");
    }

    // An EC signature relabelled as RSA or as another curve finds no key.
    let good = key.sign(&claims(ISS)).expect("sign");
    let sig = good.rsplit('.').next().expect("sig");
    for alg in ["RS256", "ES384", "PS256", "EdDSA"] {
        let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","kid":"{}"}}"#, key.kid()));
        let token = format!("{header}.{payload}.{sig}");
        let failure = fail(&auth, &bearer(&token));
        assert_eq!(failure.kind(), "no_matching_key", "{alg}: {failure}");
    }
}

#[test]
fn audiences_decide_403() {
    let key = es256();
    let mut r = rule(ISS, &[&key]);
    r.audiences = vec!["https://api.example.com/".into(), "mobile".into()];
    let auth = compile(&[r]);

    let with_aud = |aud: Value| {
        let mut c = claims(ISS);
        c["aud"] = aud;
        bearer(&key.sign(&c).expect("sign"))
    };
    // Envoy ignores the scheme and a trailing slash when comparing audiences.
    assert_eq!(
        ok(&auth, &with_aud(json!("api.example.com"))).audiences,
        ["api.example.com"]
    );
    assert_eq!(
        ok(&auth, &with_aud(json!(["x", "mobile"]))).audiences,
        ["x", "mobile"]
    );
    assert!(
        auth.authenticate(&with_aud(json!("http://api.example.com")), now())
            .is_ok()
    );

    let failure = fail(&auth, &with_aud(json!(["web", "other"])));
    assert_eq!(failure.status_code(), 403);
    assert_eq!(
        failure,
        JwtFailure::AudienceNotAllowed {
            issuer: ISS.into(),
            audiences: vec!["web".into(), "other".into()]
        }
    );
    // No `aud` at all when audiences are required: 403 too.
    let mut c = claims(ISS);
    c.as_object_mut().expect("object").remove("aud");
    let failure = fail(&auth, &bearer(&key.sign(&c).expect("sign")));
    assert_eq!(failure.status_code(), 403);
    // A forged token with a wrong audience is a 401: the signature is checked first.
    let forged = es256().with_kid(key.kid()).sign(&{
        let mut c = claims(ISS);
        c["aud"] = json!("nope");
        c
    });
    assert_eq!(
        fail(&auth, &bearer(&forged.expect("sign"))).status_code(),
        401
    );
}

#[test]
fn leeway_on_exp_and_nbf() {
    let key = es256();
    let token_with = |exp: u64, nbf: u64| {
        let mut c = claims(ISS);
        c["exp"] = json!(exp);
        c["nbf"] = json!(nbf);
        bearer(&key.sign(&c).expect("sign"))
    };
    let default = compile(&[rule(ISS, &[&key])]);
    assert!(
        default
            .authenticate(&token_with(NOW - 60, NOW - 100), now())
            .is_ok()
    );
    assert!(
        default
            .authenticate(&token_with(NOW + 100, NOW + 60), now())
            .is_ok()
    );
    assert_eq!(
        default.authenticate(&token_with(NOW - 61, NOW - 100), now()),
        Err(JwtFailure::Expired {
            exp: (NOW - 61) as i64,
            now: NOW
        })
    );
    assert_eq!(
        default.authenticate(&token_with(NOW + 100, NOW + 61), now()),
        Err(JwtFailure::NotYetValid {
            nbf: (NOW + 61) as i64,
            now: NOW
        })
    );

    let strict = JwtAuthenticator::compile(
        &[rule(ISS, &[&key])],
        JwtConfig {
            clock_skew: Duration::ZERO,
            ..JwtConfig::default()
        },
    )
    .expect("compiles");
    assert!(strict.authenticate(&token_with(NOW, NOW), now()).is_ok());
    assert_eq!(
        fail(&strict, &token_with(NOW - 1, NOW - 100)).kind(),
        "expired"
    );
    assert_eq!(
        fail(&strict, &token_with(NOW + 100, NOW + 1)).kind(),
        "not_yet_valid"
    );

    // `exp` is optional for RequestAuthentication, and `iat` is never required.
    let mut c = claims(ISS);
    let obj = c.as_object_mut().expect("object");
    obj.remove("exp");
    obj.remove("iat");
    obj.remove("nbf");
    assert!(
        default
            .authenticate(&bearer(&key.sign(&c).expect("sign")), now())
            .is_ok()
    );
}

#[test]
fn token_places() {
    let key = es256();
    let token = key.sign(&claims(ISS)).expect("sign");

    // Default places: Authorization Bearer, then access_token.
    let auth = compile(&[rule(ISS, &[&key])]);
    let out = ok(
        &auth,
        &SimpleRequest::new("GET").with_query(format!("a=b&access_token={token}")),
    );
    assert!(out.headers_to_remove.is_empty());
    assert_eq!(out.params_to_remove, ["access_token"]);
    let lower = SimpleRequest::new("GET").with_header("authorization", format!("bearer {token}"));
    assert_eq!(ok(&auth, &lower).headers_to_remove, ["authorization"]);

    // Custom places replace the defaults.
    let mut custom = rule(ISS, &[&key]);
    custom.from_headers = vec![
        JwtHeader {
            name: "X-Jwt-Assertion".into(),
            prefix: "Token ".into(),
        },
        JwtHeader {
            name: "x-raw".into(),
            prefix: String::new(),
        },
    ];
    custom.from_params = vec!["jwt".into()];
    custom.from_cookies = vec!["session".into()];
    let auth = compile(&[custom]);
    let cases = [
        (
            SimpleRequest::new("GET").with_header("x-jwt-assertion", format!("Token {token}")),
            vec!["x-jwt-assertion"],
            Vec::<&str>::new(),
        ),
        (
            SimpleRequest::new("GET").with_header("x-raw", token.clone()),
            vec!["x-raw"],
            vec![],
        ),
        (
            SimpleRequest::new("GET").with_query(format!("jwt={token}")),
            vec![],
            vec!["jwt"],
        ),
        (
            SimpleRequest::new("GET").with_header("cookie", format!("a=1; session={token}")),
            vec![],
            vec![],
        ),
    ];
    for (req, removed_headers, removed_params) in cases {
        let out = ok(&auth, &req);
        assert_eq!(out.headers_to_remove, removed_headers, "{req:?}");
        assert_eq!(out.params_to_remove, removed_params, "{req:?}");
    }
    // The prefix must match; the default places are not read any more.
    for req in [
        SimpleRequest::new("GET").with_header("x-jwt-assertion", format!("Bearer {token}")),
        bearer(&token),
        SimpleRequest::new("GET").with_query(format!("access_token={token}")),
    ] {
        assert_eq!(auth.authenticate(&req, now()), Ok(None), "{req:?}");
    }
    // The first place that holds a token is the one checked, here a broken one.
    let both = SimpleRequest::new("GET")
        .with_header("x-jwt-assertion", "Token broken")
        .with_header("x-raw", token.clone());
    assert_eq!(fail(&auth, &both).kind(), "malformed");
}

#[test]
fn outputs_payload_and_claim_headers_and_forwarding() {
    let key = es256();
    let mut r = rule(ISS, &[&key]);
    r.output_payload_to_header = Some("X-Jwt-Payload".into());
    r.output_claim_to_headers = vec![
        ClaimToHeader {
            header: "x-sub".into(),
            claim: "sub".into(),
        },
        ClaimToHeader {
            header: "x-team".into(),
            claim: "org.team".into(),
        },
        ClaimToHeader {
            header: "x-level".into(),
            claim: "org.level".into(),
        },
        ClaimToHeader {
            header: "x-missing".into(),
            claim: "nope".into(),
        },
    ];
    let auth = compile(&[r.clone()]);
    let token = key.sign(&claims(ISS)).expect("sign");
    let out = ok(&auth, &bearer(&token));
    let payload_segment = token.split('.').nth(1).expect("payload");
    assert_eq!(
        out.headers_to_set,
        vec![
            ("x-jwt-payload".to_owned(), payload_segment.to_owned()),
            ("x-sub".to_owned(), "alice".to_owned()),
            ("x-team".to_owned(), "core".to_owned()),
            ("x-level".to_owned(), "3".to_owned()),
        ]
    );
    let decoded: Value = serde_json::from_slice(
        &URL_SAFE_NO_PAD
            .decode(&out.headers_to_set[0].1)
            .expect("b64"),
    )
    .expect("json");
    assert_eq!(decoded, claims(ISS));
    assert_eq!(out.headers_to_remove, ["authorization"]);
    let mut outputs: Vec<&str> = auth.output_headers().collect();
    outputs.sort_unstable();
    assert_eq!(
        outputs,
        ["x-jwt-payload", "x-level", "x-missing", "x-sub", "x-team"]
    );

    r.forward_original_token = true;
    let forwarding = compile(&[r]);
    let out = ok(&forwarding, &bearer(&token));
    assert!(out.headers_to_remove.is_empty());
    let out = ok(
        &forwarding,
        &SimpleRequest::new("GET").with_query(format!("access_token={token}")),
    );
    assert!(out.params_to_remove.is_empty());
}

#[test]
fn nested_claim_lookup_for_authorization_policy() {
    let key = es256();
    let auth = compile(&[rule(ISS, &[&key])]);
    let out = ok(&auth, &bearer(&key.sign(&claims(ISS)).expect("sign")));
    let path = warden_policy::jwt::parse_claim_key("request.auth.claims[groups]").expect("key");
    assert_eq!(
        out.claim_strings(&path).collect::<Vec<_>>(),
        ["admin", "dev"]
    );
    assert!(out.claim_strings(&path).any(|g| g == "dev"));
    assert_eq!(
        out.claim_strings(&["org", "team"]).collect::<Vec<_>>(),
        ["core"]
    );
    assert_eq!(out.claim_strings(&["org", "level"]).count(), 0);
    assert_eq!(out.claim_strings(&["iss"]).collect::<Vec<_>>(), [ISS]);
}

#[test]
fn jwks_uri_keys_come_from_the_provider_and_fail_closed() {
    let key = es256();
    let uri = "https://issuer.example.com/jwks.json";
    let provider = Arc::new(MemoryJwksProvider::new());
    let remote = JwtRule {
        issuer: ISS.into(),
        jwks_uri: Some(uri.into()),
        timeout: Some("2.5s".into()),
        ..JwtRule::default()
    };
    let discovered = JwtRule {
        issuer: "https://accounts.example.org/".into(),
        ..JwtRule::default()
    };
    let auth = JwtAuthenticator::compile(
        &[remote, discovered],
        JwtConfig {
            jwks_provider: Some(provider.clone() as Arc<dyn JwksProvider>),
            ..JwtConfig::default()
        },
    )
    .expect("compiles");
    let remotes: Vec<_> = auth.remote_jwks().collect();
    assert_eq!(remotes.len(), 2);
    assert_eq!(remotes[0].uri, uri);
    assert!(!remotes[0].discovery);
    assert_eq!(remotes[0].timeout, Duration::from_millis(2500));
    assert_eq!(
        remotes[1].uri,
        "https://accounts.example.org/.well-known/openid-configuration"
    );
    assert!(remotes[1].discovery);
    assert_eq!(remotes[1].timeout, Duration::from_secs(5));

    let req = bearer(&key.sign(&claims(ISS)).expect("sign"));
    assert_eq!(
        auth.authenticate(&req, now()),
        Err(JwtFailure::KeysNotFetched {
            issuer: ISS.into(),
            uri: uri.into()
        })
    );
    provider.set_failed(uri, "connection refused");
    let failure = fail(&auth, &req);
    assert_eq!(failure.kind(), "keys_unavailable");
    assert_eq!(failure.status_code(), 401);
    assert!(failure.to_string().contains("connection refused"));

    provider.set_json(uri, &jwks_of(&[&key])).expect("jwks");
    assert_eq!(ok(&auth, &req).subject, "alice");

    // Without a provider at all, remote keys are never available.
    let bare = JwtAuthenticator::compile(
        &[JwtRule {
            issuer: ISS.into(),
            jwks_uri: Some(uri.into()),
            ..JwtRule::default()
        }],
        JwtConfig::default(),
    )
    .expect("compiles");
    assert_eq!(fail(&bare, &req).kind(), "keys_not_fetched");
}

#[test]
fn several_rules_and_several_tokens() {
    let a = es256();
    let b = SigningKey::generate(Algorithm::RS256).expect("rsa");
    let iss_a = "https://a.example.com";
    let iss_b = "https://b.example.com";
    let mut rule_a = rule(iss_a, &[&a]);
    rule_a.from_headers = vec![JwtHeader {
        name: "x-a".into(),
        prefix: String::new(),
    }];
    let rule_b = rule(iss_b, &[&b]);
    let rule_c = rule("https://c.example.com", &[&a]);
    let auth = compile(&[rule_a, rule_b, rule_c]);
    let token_a = a.sign(&claims(iss_a)).expect("sign");
    let token_b = b.sign(&claims(iss_b)).expect("sign");
    let token_c = a.sign(&claims("https://c.example.com")).expect("sign");

    // Two rules share the default places; the token's issuer picks the rule.
    assert_eq!(ok(&auth, &bearer(&token_b)).rule, 1);
    assert_eq!(ok(&auth, &bearer(&token_c)).rule, 2);
    // A's issuer is configured, but not for the Authorization header: 401.
    let failure = fail(&auth, &bearer(&token_a));
    assert_eq!(failure.kind(), "issuer_not_allowed_here", "{failure}");
    assert_eq!(failure.status_code(), 401);
    assert!(failure.to_string().contains("authorization"));

    // Two valid tokens: the principal is the first rule's, both headers go.
    let req = bearer(&token_b).with_header("x-a", token_a.clone());
    let out = ok(&auth, &req);
    assert_eq!(out.issuer, iss_a);
    assert_eq!(out.headers_to_remove, ["x-a", "authorization"]);
    // One of them invalid: the request fails.
    let req = bearer(&token_b).with_header("x-a", "broken");
    assert_eq!(fail(&auth, &req).kind(), "malformed");
    let req = bearer("broken").with_header("x-a", token_a);
    assert_eq!(fail(&auth, &req).kind(), "malformed");
}

#[test]
fn works_over_http_request_without_copying() {
    let key = es256();
    let auth = compile(&[rule(ISS, &[&key])]);
    let token = key.sign(&claims(ISS)).expect("sign");
    let req = http::Request::builder()
        .uri(format!("/api?x=1&access_token={token}"))
        .body(())
        .expect("request");
    let out = auth
        .authenticate(&req, now())
        .expect("valid")
        .expect("token");
    assert_eq!(out.params_to_remove, ["access_token"]);
    let req = http::Request::builder()
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(())
        .expect("request");
    assert!(auth.authenticate(&req, now()).expect("valid").is_some());
}

#[test]
fn config_errors_name_the_rule_and_field() {
    let key = es256();
    let err = |rules: &[JwtRule]| {
        JwtAuthenticator::compile(rules, JwtConfig::default()).expect_err("must not compile")
    };
    assert_eq!(
        err(&[rule(ISS, &[&key]), JwtRule::default()]),
        JwtConfigError::MissingIssuer { rule: 1 }
    );

    let mut bad = rule(ISS, &[&key]);
    bad.jwks = Some(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#.into());
    let e = err(&[bad]);
    assert!(matches!(e, JwtConfigError::Jwks { rule: 0, .. }), "{e:?}");
    assert!(e.to_string().contains("jwtRules[0].jwks"), "{e}");
    assert!(e.to_string().contains("keys[0].k"), "{e}");

    let mut bad = rule(ISS, &[&key]);
    bad.from_headers = vec![JwtHeader {
        name: "bad header".into(),
        prefix: String::new(),
    }];
    assert_eq!(
        err(&[bad]).to_string(),
        r#"jwtRules[0].fromHeaders[0].name: "bad header" is not a valid HTTP header name"#
    );

    let mut bad = rule(ISS, &[&key]);
    bad.output_claim_to_headers = vec![ClaimToHeader {
        header: "x-ok".into(),
        claim: "a..b".into(),
    }];
    assert!(
        err(&[bad])
            .to_string()
            .contains("outputClaimToHeaders[0].claim")
    );

    let mut bad = rule(ISS, &[&key]);
    bad.output_payload_to_header = Some("x:y".into());
    assert!(err(&[bad]).to_string().contains("outputPayloadToHeader"));

    let bad = JwtRule {
        issuer: ISS.into(),
        jwks_uri: Some("https://x/jwks".into()),
        timeout: Some("soon".into()),
        ..JwtRule::default()
    };
    assert!(err(&[bad]).to_string().contains("jwtRules[0].timeout"));

    let mut bad = rule(ISS, &[&key]);
    bad.from_cookies = vec!["a=b".into()];
    assert!(err(&[bad]).to_string().contains("fromCookies[0]"));
}

#[test]
fn locations_are_deduplicated_in_first_use_order() {
    let key = es256();
    let auth = compile(&[rule(ISS, &[&key]), rule("https://x", &[&key])]);
    assert_eq!(
        auth.locations(),
        [
            TokenLocation::default_header(),
            TokenLocation::default_param()
        ]
    );
}

#[test]
fn rules_sharing_an_issuer_are_alternatives() {
    // Two policies name the same issuer with different keys (a key rotation split across
    // policies) and different audiences: any rule that accepts the token is enough.
    let old_key = es256();
    let new_key = es256();
    let mut first = rule(ISS, &[&old_key]);
    first.audiences = vec!["api".into()];
    let second = rule(ISS, &[&new_key]);
    let auth = compile(&[first, second]);
    let with_aud = |key: &SigningKey, aud: &str| {
        let mut c = claims(ISS);
        c["aud"] = json!(aud);
        bearer(&key.sign(&c).expect("sign"))
    };
    assert_eq!(ok(&auth, &with_aud(&old_key, "api")).rule, 0);
    assert_eq!(ok(&auth, &with_aud(&new_key, "anything")).rule, 1);
    // Verified by the first rule but for another audience; the second has no key for it.
    let failure = fail(&auth, &with_aud(&old_key, "web"));
    assert_eq!(failure.status_code(), 403, "{failure}");
    // Signed by neither: the first rule's reason.
    let failure = fail(&auth, &with_aud(&es256(), "api"));
    assert_eq!(failure.kind(), "no_matching_key", "{failure}");
}
