//! Kubernetes service-account tokens, as the mesh CA authenticates callers with them.
//!
//! A projected token (audience `istio-ca`) names the pod's namespace and service account in
//! `kubernetes.io: {namespace, serviceaccount: {name}}` and in
//! `sub: system:serviceaccount:<ns>:<sa>`. [`SaTokenVerifier`] checks the signature against
//! the configured issuer keys, `exp` (required), `nbf`, `aud` and optionally `iss`, and
//! returns the identity. [`mint`] makes such tokens for `warden control token`.

use std::path::Path;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value, json};

use super::alg::Algorithm;
use super::jwks::{Jwks, JwksError, VerifyError};
use super::sign::{SignError, SigningKey};
use super::token::{self, TokenError};
use super::{shown, unix_seconds};

/// The audience the CA requires by default.
pub const DEFAULT_AUDIENCE: &str = "istio-ca";
/// The issuer of in-cluster Kubernetes tokens, used by [`mint`] by default.
pub const DEFAULT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// Leeway on `exp` and `nbf` (the Kubernetes API server allows one minute).
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);

/// Why a service-account token is refused. Each cause is its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SaTokenError {
    /// Not a well-formed JWT.
    #[error("malformed service-account token: {0}")]
    Malformed(String),
    /// The header names `none`, HMAC or an unknown algorithm.
    #[error("service-account token algorithm {alg:?} is not accepted: {why}")]
    Algorithm {
        /// The `alg` as written (shortened).
        alg: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// No configured key has the token's `kid` and fits its `alg`.
    #[error("service-account token signed by an unknown key (kid {kid:?}, alg {alg})")]
    UnknownKey {
        /// The token's `kid` (shortened).
        kid: Option<String>,
        /// The token's `alg`.
        alg: Algorithm,
    },
    /// A key matched but the signature does not verify.
    #[error("service-account token has a bad signature")]
    BadSignature,
    /// The token has no `exp` (long-lived legacy tokens are refused).
    #[error("service-account token has no `exp`; only bound (projected) tokens are accepted")]
    MissingExpiry,
    /// `exp` is past.
    #[error("service-account token expired at {exp} (now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// Time of the check.
        now: u64,
    },
    /// `nbf` is in the future.
    #[error("service-account token not valid before {nbf} (now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// Time of the check.
        now: u64,
    },
    /// `aud` does not contain the required audience.
    #[error("service-account token audience {got:?} does not include {expected:?}")]
    WrongAudience {
        /// The audience the CA requires.
        expected: String,
        /// The token's `aud` values (shortened).
        got: Vec<String>,
    },
    /// `iss` is not the configured issuer.
    #[error("service-account token issuer {got:?} is not {expected:?}")]
    WrongIssuer {
        /// The configured issuer.
        expected: String,
        /// The token's `iss` (shortened), if any.
        got: Option<String>,
    },
    /// Neither the `kubernetes.io` claims nor `sub` name a namespace and service account,
    /// or the names are not valid Kubernetes names.
    #[error("service-account token identity: {0}")]
    MissingIdentity(String),
    /// The `kubernetes.io` claims and `sub` name different identities.
    #[error("service-account token identity mismatch: kubernetes.io says {claims}, sub says {sub}")]
    IdentityMismatch {
        /// `<ns>/<sa>` from the `kubernetes.io` claims.
        claims: String,
        /// `<ns>/<sa>` from `sub`.
        sub: String,
    },
}

impl From<TokenError> for SaTokenError {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Malformed(reason) => SaTokenError::Malformed(reason),
            TokenError::Algorithm { alg, why } => SaTokenError::Algorithm { alg, why },
        }
    }
}

/// Errors loading the verifier's keys.
#[derive(Debug, thiserror::Error)]
pub enum SaKeysError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not a usable JWKS.
    #[error("{path}: {source}")]
    Jwks {
        /// The file.
        path: String,
        /// What is wrong with it.
        source: JwksError,
    },
}

/// The identity a valid service-account token vouches for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaIdentity {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// The token's `iss`.
    pub issuer: String,
    /// The pod the token is bound to, if the token says.
    pub pod: Option<String>,
    /// The token's `exp`, seconds since the epoch.
    pub expires_at: i64,
}

/// Verifies service-account tokens against configured issuer keys. Build once at startup.
#[derive(Debug, Clone)]
pub struct SaTokenVerifier {
    jwks: Jwks,
    audience: String,
    issuer: Option<String>,
    clock_skew: f64,
}

impl SaTokenVerifier {
    /// A verifier trusting `jwks`, requiring audience `istio-ca`, any issuer.
    pub fn new(jwks: Jwks) -> Self {
        SaTokenVerifier {
            jwks,
            audience: DEFAULT_AUDIENCE.to_owned(),
            issuer: None,
            clock_skew: DEFAULT_CLOCK_SKEW.as_secs_f64(),
        }
    }

    /// A verifier trusting the keys of a JWKS document (JSON text).
    pub fn from_jwks_json(json: &str) -> Result<Self, JwksError> {
        Ok(Self::new(Jwks::from_json(json)?))
    }

    /// A verifier trusting the keys of a JWKS file.
    pub fn from_jwks_file(path: &Path) -> Result<Self, SaKeysError> {
        let shown_path = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SaKeysError::Io {
            path: shown_path.clone(),
            source,
        })?;
        let jwks = Jwks::from_json(&text).map_err(|source| SaKeysError::Jwks {
            path: shown_path,
            source,
        })?;
        Ok(Self::new(jwks))
    }

    /// Requires `audience` in `aud` instead of `istio-ca`.
    pub fn with_audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = audience.into();
        self
    }

    /// Requires `iss` to equal `issuer`.
    pub fn with_issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Sets the leeway on `exp` and `nbf` (default 60 s).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.clock_skew = skew.as_secs_f64();
        self
    }

    /// The keys trusted.
    pub fn jwks(&self) -> &Jwks {
        &self.jwks
    }

    /// Verifies `token` (without any `Bearer ` prefix) at time `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<SaIdentity, SaTokenError> {
        let jws = token::parse(token.trim().as_bytes())?;
        self.jwks
            .verify(
                jws.alg,
                jws.kid.as_deref(),
                jws.signing_input,
                &jws.signature,
            )
            .map_err(|e| match e {
                VerifyError::NoMatchingKey => SaTokenError::UnknownKey {
                    kid: jws.kid.as_deref().map(shown),
                    alg: jws.alg,
                },
                VerifyError::BadSignature => SaTokenError::BadSignature,
            })?;
        let claims = &jws.claims;

        let issuer = token::string_claim(claims, "iss").map_err(SaTokenError::Malformed)?;
        if let Some(expected) = &self.issuer
            && issuer != Some(expected.as_str())
        {
            return Err(SaTokenError::WrongIssuer {
                expected: expected.clone(),
                got: issuer.map(shown),
            });
        }

        let now_secs = unix_seconds(now);
        let now_f = now_secs as f64;
        let exp = token::numeric_date(claims, "exp")
            .map_err(SaTokenError::Malformed)?
            .ok_or(SaTokenError::MissingExpiry)?;
        if now_f > exp + self.clock_skew {
            return Err(SaTokenError::Expired {
                exp: exp.floor() as i64,
                now: now_secs,
            });
        }
        if let Some(nbf) = token::numeric_date(claims, "nbf").map_err(SaTokenError::Malformed)?
            && now_f + self.clock_skew < nbf
        {
            return Err(SaTokenError::NotYetValid {
                nbf: nbf.floor() as i64,
                now: now_secs,
            });
        }

        let audiences = token::audiences(claims).map_err(SaTokenError::Malformed)?;
        if !audiences.contains(&self.audience) {
            return Err(SaTokenError::WrongAudience {
                expected: self.audience.clone(),
                got: audiences.iter().map(|a| shown(a)).collect(),
            });
        }

        let (namespace, service_account, pod) = identity(claims)?;
        Ok(SaIdentity {
            namespace,
            service_account,
            issuer: issuer.unwrap_or_default().to_owned(),
            pod,
            expires_at: exp.floor() as i64,
        })
    }
}

type Identity = (String, String, Option<String>);

/// Namespace, service account and pod from `kubernetes.io` and/or `sub`; both present must
/// agree.
fn identity(claims: &Map<String, Value>) -> Result<Identity, SaTokenError> {
    let missing = |what: String| SaTokenError::MissingIdentity(what);

    let from_k8s = match claims.get("kubernetes.io") {
        None => None,
        Some(Value::Object(k8s)) => {
            let ns = k8s
                .get("namespace")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    missing("`kubernetes.io.namespace` is missing or not a string".to_owned())
                })?;
            let sa = k8s
                .get("serviceaccount")
                .and_then(|s| s.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    missing(
                        "`kubernetes.io.serviceaccount.name` is missing or not a string".to_owned(),
                    )
                })?;
            let pod = k8s
                .get("pod")
                .and_then(|p| p.get("name"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            Some((ns, sa, pod))
        }
        Some(_) => return Err(missing("`kubernetes.io` is not an object".to_owned())),
    };

    let sub = token::string_claim(claims, "sub").map_err(SaTokenError::Malformed)?;
    let from_sub = match sub {
        None => None,
        Some(sub) => match sub.strip_prefix("system:serviceaccount:") {
            Some(rest) => match rest.split_once(':') {
                Some((ns, sa)) => Some((ns, sa)),
                None => {
                    return Err(missing(format!(
                        "`sub` {:?} is not system:serviceaccount:<namespace>:<name>",
                        shown(sub)
                    )));
                }
            },
            // A `sub` of another form is tolerated only when `kubernetes.io` names the
            // identity.
            None if from_k8s.is_some() => None,
            None => {
                return Err(missing(format!(
                    "`sub` {:?} is not system:serviceaccount:<namespace>:<name>",
                    shown(sub)
                )));
            }
        },
    };

    let (ns, sa, pod) = match (from_k8s, from_sub) {
        (Some((ns, sa, pod)), Some((sub_ns, sub_sa))) => {
            if ns != sub_ns || sa != sub_sa {
                return Err(SaTokenError::IdentityMismatch {
                    claims: format!("{}/{}", shown(ns), shown(sa)),
                    sub: format!("{}/{}", shown(sub_ns), shown(sub_sa)),
                });
            }
            (ns, sa, pod)
        }
        (Some((ns, sa, pod)), None) => (ns, sa, pod),
        (None, Some((ns, sa))) => (ns, sa, None),
        (None, None) => {
            return Err(missing(
                "neither `kubernetes.io` nor `sub` names a service account".to_owned(),
            ));
        }
    };
    if !is_dns_label(ns) {
        return Err(missing(format!(
            "namespace {:?} is not a valid Kubernetes namespace name",
            shown(ns)
        )));
    }
    if !is_dns_subdomain(sa) {
        return Err(missing(format!(
            "service account {:?} is not a valid Kubernetes name",
            shown(sa)
        )));
    }
    Ok((ns.to_owned(), sa.to_owned(), pod))
}

/// RFC 1123 label: 1-63 of `[a-z0-9-]`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// RFC 1123 subdomain: dot-separated labels, at most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// What a minted service-account token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaTokenSpec {
    /// Kubernetes namespace.
    pub namespace: String,
    /// Service account name.
    pub service_account: String,
    /// `aud` values (default `["istio-ca"]`).
    pub audiences: Vec<String>,
    /// Lifetime (default one hour).
    pub ttl: Duration,
    /// `iss` (default the in-cluster Kubernetes issuer).
    pub issuer: String,
    /// Pod name to bind the token to, if any.
    pub pod: Option<String>,
}

impl SaTokenSpec {
    /// A spec for `namespace`/`service_account` with the defaults.
    pub fn new(namespace: impl Into<String>, service_account: impl Into<String>) -> Self {
        SaTokenSpec {
            namespace: namespace.into(),
            service_account: service_account.into(),
            audiences: vec![DEFAULT_AUDIENCE.to_owned()],
            ttl: Duration::from_secs(3600),
            issuer: DEFAULT_ISSUER.to_owned(),
            pod: None,
        }
    }
}

/// Signs a token shaped like a Kubernetes projected service-account token.
pub fn mint(key: &SigningKey, spec: &SaTokenSpec, now: SystemTime) -> Result<String, SignError> {
    if !is_dns_label(&spec.namespace) {
        return Err(SignError::Claims(format!(
            "namespace {:?} is not a valid Kubernetes namespace name",
            spec.namespace
        )));
    }
    if !is_dns_subdomain(&spec.service_account) {
        return Err(SignError::Claims(format!(
            "service account {:?} is not a valid Kubernetes name",
            spec.service_account
        )));
    }
    if spec.audiences.is_empty() {
        return Err(SignError::Claims(
            "at least one audience is needed".to_owned(),
        ));
    }
    if spec.ttl.is_zero() {
        return Err(SignError::Claims(
            "the lifetime must be positive".to_owned(),
        ));
    }
    let iat = unix_seconds(now);
    let exp = iat.saturating_add(spec.ttl.as_secs().max(1));
    let mut jti = [0u8; 16];
    aws_lc_rs::rand::fill(&mut jti).map_err(|_| SignError::Crypto("random jti failed"))?;
    let jti: String = jti.iter().map(|b| format!("{b:02x}")).collect();
    let mut k8s = json!({
        "namespace": spec.namespace,
        "serviceaccount": {"name": spec.service_account},
    });
    if let Some(pod) = &spec.pod {
        k8s["pod"] = json!({ "name": pod });
    }
    let claims = json!({
        "aud": spec.audiences,
        "exp": exp,
        "iat": iat,
        "nbf": iat,
        "iss": spec.issuer,
        "jti": jti,
        "kubernetes.io": k8s,
        "sub": format!("system:serviceaccount:{}:{}", spec.namespace, spec.service_account),
    });
    key.sign(&claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_names() {
        assert!(is_dns_label("default"));
        assert!(is_dns_label("a-1"));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label("a/b"));
        assert!(!is_dns_label(&"a".repeat(64)));
        assert!(is_dns_subdomain("my.sa-1"));
        assert!(!is_dns_subdomain("a..b"));
        assert!(!is_dns_subdomain("a:b"));
    }
}
