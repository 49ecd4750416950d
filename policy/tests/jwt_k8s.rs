//! Kubernetes service-account tokens for the CA: mint and verify round trips with ES256 and
//! RS256, keys from a JWKS file and from OpenSSL-made PEM files, and every refusal.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use warden_policy::jwt::k8s::{
    DEFAULT_AUDIENCE, DEFAULT_ISSUER, SaIdentity, SaKeysError, SaTokenError, SaTokenSpec,
    SaTokenVerifier, mint,
};
use warden_policy::jwt::{Algorithm, Jwks, SignError, SigningKey, jwks_json, public_jwk_from_pem};

const NOW: u64 = 1_700_000_000;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fn verifier_for(keys: &[&SigningKey]) -> SaTokenVerifier {
    let text = jwks_json(keys.iter().map(|k| k.public_jwk().expect("jwk")));
    SaTokenVerifier::from_jwks_json(&text).expect("jwks")
}

fn sa_claims() -> Value {
    json!({
        "aud": ["istio-ca"],
        "exp": NOW + 3600,
        "iat": NOW,
        "nbf": NOW,
        "iss": DEFAULT_ISSUER,
        "kubernetes.io": {
            "namespace": "shop",
            "pod": {"name": "cart-7d9f", "uid": "u1"},
            "serviceaccount": {"name": "cart", "uid": "u2"},
        },
        "sub": "system:serviceaccount:shop:cart",
    })
}

#[test]
fn round_trip_es256_and_rs256() {
    for alg in [Algorithm::ES256, Algorithm::RS256] {
        let key = SigningKey::generate(alg).expect("key");
        let verifier = verifier_for(&[&key]);
        let mut spec = SaTokenSpec::new("shop", "cart");
        spec.pod = Some("cart-7d9f".into());
        spec.ttl = Duration::from_secs(600);
        let token = mint(&key, &spec, now()).expect("mint");
        let id = verifier.verify(&token, now()).expect("valid");
        assert_eq!(
            id,
            SaIdentity {
                namespace: "shop".into(),
                service_account: "cart".into(),
                issuer: DEFAULT_ISSUER.into(),
                pod: Some("cart-7d9f".into()),
                expires_at: (NOW + 600) as i64,
            },
            "{alg}"
        );
        // The token looks like a Kubernetes projected token.
        let payload: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').nth(1).expect("payload"))
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(payload["aud"], json!([DEFAULT_AUDIENCE]));
        assert_eq!(payload["sub"], "system:serviceaccount:shop:cart");
        assert_eq!(payload["kubernetes.io"]["serviceaccount"]["name"], "cart");
        assert_eq!(payload["exp"], NOW + 600);
        assert_eq!(payload["jti"].as_str().map(str::len), Some(32));
        let header: Value = serde_json::from_slice(
            &URL_SAFE_NO_PAD
                .decode(token.split('.').next().expect("header"))
                .expect("b64"),
        )
        .expect("json");
        assert_eq!(header["alg"], alg.name());
        assert_eq!(header["kid"], key.kid());
    }
}

#[test]
fn keys_from_a_jwks_file() {
    let key = SigningKey::generate(Algorithm::ES256).expect("key");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("issuer-keys.json");
    std::fs::write(&path, jwks_json([key.public_jwk().expect("jwk")])).expect("write");
    let verifier = SaTokenVerifier::from_jwks_file(&path).expect("loads");
    let token = mint(&key, &SaTokenSpec::new("default", "sleep"), now()).expect("mint");
    assert_eq!(
        verifier
            .verify(&token, now())
            .expect("valid")
            .service_account,
        "sleep"
    );

    let missing = SaTokenVerifier::from_jwks_file(&dir.path().join("nope.json"));
    match missing {
        Err(SaKeysError::Io { path, .. }) => assert!(path.ends_with("nope.json")),
        other => panic!("{other:?}"),
    }
    std::fs::write(&path, r#"{"keys":[{"kty":"RSA"}]}"#).expect("write");
    let err = SaTokenVerifier::from_jwks_file(&path).expect_err("no usable key");
    assert!(matches!(err, SaKeysError::Jwks { .. }));
    let msg = err.to_string();
    assert!(
        msg.contains("issuer-keys.json") && msg.contains("keys[0].n"),
        "{msg}"
    );
}

#[test]
fn every_refusal_is_its_own_error() {
    let key = SigningKey::generate(Algorithm::ES256).expect("key");
    let verifier = verifier_for(&[&key]).with_issuer(DEFAULT_ISSUER);
    let sign = |c: Value| key.sign(&c).expect("sign");
    let with = |f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut c = sa_claims();
        f(c.as_object_mut().expect("object"));
        sign(c)
    };
    let verify = |t: &str| verifier.verify(t, now());

    assert!(verify(&sign(sa_claims())).is_ok());

    // Expired (past the 60 s leeway), and inside it.
    let e = verify(&with(&|c| {
        c.insert("exp".into(), json!(NOW - 61));
    }));
    assert_eq!(
        e,
        Err(SaTokenError::Expired {
            exp: (NOW - 61) as i64,
            now: NOW
        })
    );
    assert!(
        verify(&with(&|c| {
            c.insert("exp".into(), json!(NOW - 59));
        }))
        .is_ok()
    );
    assert_eq!(
        verify(&with(&|c| {
            c.remove("exp");
        })),
        Err(SaTokenError::MissingExpiry)
    );
    assert!(matches!(
        verify(&with(&|c| {
            c.insert("nbf".into(), json!(NOW + 120));
        })),
        Err(SaTokenError::NotYetValid { .. })
    ));

    // Audience.
    assert_eq!(
        verify(&with(&|c| {
            c.insert("aud".into(), json!(["api", "other"]));
        })),
        Err(SaTokenError::WrongAudience {
            expected: "istio-ca".into(),
            got: vec!["api".into(), "other".into()]
        })
    );
    assert!(matches!(
        verify(&with(&|c| {
            c.remove("aud");
        })),
        Err(SaTokenError::WrongAudience { .. })
    ));
    let custom = verifier_for(&[&key]).with_audience("my-ca");
    assert!(matches!(
        custom.verify(&sign(sa_claims()), now()),
        Err(SaTokenError::WrongAudience { .. })
    ));

    // Issuer.
    assert!(matches!(
        verify(&with(&|c| {
            c.insert("iss".into(), json!("https://evil"));
        })),
        Err(SaTokenError::WrongIssuer { .. })
    ));

    // Keys and signatures.
    let stranger = SigningKey::generate(Algorithm::ES256).expect("other key");
    let e = verify(&stranger.sign(&sa_claims()).expect("sign"));
    assert!(matches!(e, Err(SaTokenError::UnknownKey { .. })), "{e:?}");
    let impostor = SigningKey::generate(Algorithm::ES256)
        .expect("other key")
        .with_kid(key.kid());
    assert_eq!(
        verify(&impostor.sign(&sa_claims()).expect("sign")),
        Err(SaTokenError::BadSignature)
    );
    let good = sign(sa_claims());
    let mut parts: Vec<String> = good.split('.').map(str::to_owned).collect();
    let mut forged = sa_claims();
    forged["kubernetes.io"]["namespace"] = json!("kube-system");
    forged["sub"] = json!("system:serviceaccount:kube-system:cart");
    parts[1] = URL_SAFE_NO_PAD.encode(forged.to_string());
    assert_eq!(verify(&parts.join(".")), Err(SaTokenError::BadSignature));

    // Malformed and refused algorithms.
    assert!(matches!(verify("abc"), Err(SaTokenError::Malformed(_))));
    assert!(matches!(verify(""), Err(SaTokenError::Malformed(_))));
    let none = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(sa_claims().to_string())
    );
    assert!(matches!(verify(&none), Err(SaTokenError::Algorithm { .. })));

    // Identity claims.
    let e = verify(&with(&|c| {
        c.remove("kubernetes.io");
        c.remove("sub");
    }));
    assert!(matches!(e, Err(SaTokenError::MissingIdentity(_))), "{e:?}");
    let e = verify(&with(&|c| {
        c.insert("sub".into(), json!("system:serviceaccount:shop:admin"));
    }));
    assert_eq!(
        e,
        Err(SaTokenError::IdentityMismatch {
            claims: "shop/cart".into(),
            sub: "shop/admin".into()
        })
    );
    let e = verify(&with(&|c| {
        c.remove("kubernetes.io");
        c.insert("sub".into(), json!("alice@example.com"));
    }));
    assert!(matches!(e, Err(SaTokenError::MissingIdentity(_))), "{e:?}");
    let e = verify(&with(&|c| {
        c.insert("kubernetes.io".into(), json!({"namespace": "shop"}));
    }));
    assert!(matches!(e, Err(SaTokenError::MissingIdentity(m)) if m.contains("serviceaccount")));
    let e = verify(&with(&|c| {
        c.remove("kubernetes.io");
        c.insert("sub".into(), json!("system:serviceaccount:Shop/x:cart"));
    }));
    assert!(matches!(e, Err(SaTokenError::MissingIdentity(m)) if m.contains("namespace")));
}

#[test]
fn identity_from_either_claim_form() {
    let key = SigningKey::generate(Algorithm::ES256).expect("key");
    let verifier = verifier_for(&[&key]);
    let mut only_sub = sa_claims();
    only_sub
        .as_object_mut()
        .expect("object")
        .remove("kubernetes.io");
    let id = verifier
        .verify(&key.sign(&only_sub).expect("sign"), now())
        .expect("valid");
    assert_eq!(
        (id.namespace.as_str(), id.service_account.as_str()),
        ("shop", "cart")
    );
    assert_eq!(id.pod, None);

    let mut only_k8s = sa_claims();
    only_k8s.as_object_mut().expect("object").remove("sub");
    let id = verifier
        .verify(&key.sign(&only_k8s).expect("sign"), now())
        .expect("valid");
    assert_eq!(id.pod.as_deref(), Some("cart-7d9f"));
}

#[test]
fn mint_refuses_bad_requests() {
    let key = SigningKey::generate(Algorithm::ES256).expect("key");
    let bad = [
        SaTokenSpec::new("Shop", "cart"),
        SaTokenSpec::new("shop", "a:b"),
        SaTokenSpec {
            audiences: vec![],
            ..SaTokenSpec::new("shop", "cart")
        },
        SaTokenSpec {
            ttl: Duration::ZERO,
            ..SaTokenSpec::new("shop", "cart")
        },
    ];
    for spec in bad {
        assert!(
            matches!(mint(&key, &spec, now()), Err(SignError::Claims(_))),
            "{spec:?}"
        );
    }
}

fn openssl_available() -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var("WARDEN_REQUIRE_PRIVILEGED").as_deref() == Ok("1") {
            panic!("openssl is required (WARDEN_REQUIRE_PRIVILEGED=1)");
        }
        println!("skipped: openssl not found");
    }
    found
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Keys made by OpenSSL in the formats a cluster has (PKCS#1 `sa.key`, SEC1 EC keys), the
/// public half published through `public_jwk_from_pem`; and a token signed by OpenSSL itself.
#[test]
fn openssl_keys_and_signatures_interoperate() {
    if !openssl_available() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(d, &["genrsa", "-traditional", "-out", "sa.key", "2048"]);
    openssl(d, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"]);
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ec.key",
        ],
    );
    openssl(d, &["ec", "-in", "ec.key", "-pubout", "-out", "ec.pub"]);
    let read = |name: &str| std::fs::read_to_string(d.join(name)).expect("read");
    assert!(read("sa.key").contains("BEGIN RSA PRIVATE KEY"));
    assert!(read("ec.key").contains("BEGIN EC PRIVATE KEY"));

    let rsa = SigningKey::from_pem(&read("sa.key"), None).expect("PKCS#1 key");
    let ec = SigningKey::from_pem(&read("ec.key"), None).expect("SEC1 key");
    assert_eq!(rsa.algorithm(), Algorithm::RS256);
    assert_eq!(ec.algorithm(), Algorithm::ES256);

    // The JWKS published from the public PEM files, with Kubernetes' key ids.
    let rsa_jwk = public_jwk_from_pem(&read("sa.pub"), None).expect("rsa pub");
    let ec_jwk = public_jwk_from_pem(&read("ec.pub"), None).expect("ec pub");
    assert_eq!(rsa_jwk["kid"], rsa.kid());
    assert_eq!(ec_jwk["kid"], ec.kid());
    let verifier =
        SaTokenVerifier::new(Jwks::from_json(&jwks_json([rsa_jwk, ec_jwk])).expect("jwks"));
    for key in [&rsa, &ec] {
        let token = mint(key, &SaTokenSpec::new("shop", "cart"), now()).expect("mint");
        assert_eq!(
            verifier.verify(&token, now()).expect("valid").namespace,
            "shop"
        );
    }

    // A token whose RS256 signature OpenSSL computed.
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"RS256","kid":"{}"}}"#, rsa.kid()));
    let payload = URL_SAFE_NO_PAD.encode(sa_claims().to_string());
    let input = format!("{header}.{payload}");
    std::fs::write(d.join("input"), &input).expect("write");
    openssl(
        d,
        &["dgst", "-sha256", "-sign", "sa.key", "-out", "sig", "input"],
    );
    let sig = std::fs::read(d.join("sig")).expect("sig");
    let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig));
    let id = verifier
        .verify(&token, now())
        .expect("OpenSSL-signed token verifies");
    assert_eq!(id.service_account, "cart");

    // And OpenSSL verifies a signature made by Warden.
    let token = mint(&rsa, &SaTokenSpec::new("shop", "cart"), now()).expect("mint");
    let (input, sig) = token.rsplit_once('.').expect("parts");
    std::fs::write(d.join("input2"), input).expect("write");
    std::fs::write(d.join("sig2"), URL_SAFE_NO_PAD.decode(sig).expect("b64")).expect("write");
    openssl(
        d,
        &[
            "dgst",
            "-sha256",
            "-verify",
            "sa.pub",
            "-signature",
            "sig2",
            "input2",
        ],
    );
}
