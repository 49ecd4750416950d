//! RequestAuthentication: the `jwtRules` that apply to a workload, compiled once, checked
//! per request with Envoy's `jwt_authn` semantics as Istio configures it.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde_json::{Map, Value};

use super::alg::Algorithm;
use super::claims::{self, normalize_audience};
use super::jwks::{Jwks, JwksError, VerifyError};
use super::provider::{JwksProvider, JwksState};
use super::request::{RequestView, TokenLocation, is_cors_preflight};
use super::token::{self, CompactJws, TokenError};
use super::{shown, unix_seconds};
use crate::jwt_rule::JwtRule;

/// Envoy's default allowance for clock differences on `exp` and `nbf`.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Istio's default `timeout` for fetching a `jwksUri`.
pub const DEFAULT_JWKS_TIMEOUT: Duration = Duration::from_secs(5);

/// Options for [`JwtAuthenticator::compile`].
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// Leeway on `exp` and `nbf` (default 60 s, as Envoy).
    pub clock_skew: Duration,
    /// Where keys for rules with a `jwksUri` (or OpenID discovery) come from. Without one,
    /// tokens for such rules fail with [`JwtFailure::KeysNotFetched`].
    pub jwks_provider: Option<Arc<dyn JwksProvider>>,
}

impl Default for JwtConfig {
    fn default() -> Self {
        JwtConfig {
            clock_skew: DEFAULT_CLOCK_SKEW,
            jwks_provider: None,
        }
    }
}

/// A `jwtRules` entry that cannot be compiled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtConfigError {
    /// `issuer` is empty.
    #[error("jwtRules[{rule}].issuer: must not be empty")]
    MissingIssuer {
        /// Index of the rule.
        rule: usize,
    },
    /// The inline `jwks` is unusable.
    #[error("jwtRules[{rule}].jwks (issuer {issuer:?}): {source}")]
    Jwks {
        /// Index of the rule.
        rule: usize,
        /// The rule's issuer.
        issuer: String,
        /// What is wrong with the key set.
        source: JwksError,
    },
    /// Another field has a bad value.
    #[error("jwtRules[{rule}].{field}: {value:?} {reason}")]
    Field {
        /// Index of the rule.
        rule: usize,
        /// Field path inside the rule, e.g. `fromHeaders[1].name`.
        field: String,
        /// The value as written.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Why a request's token was refused. Every variant but
/// [`JwtFailure::AudienceNotAllowed`] answers 401; see [`JwtFailure::status_code`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtFailure {
    /// The token is not a well-formed JWT.
    #[error("Jwt is malformed: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The header names `none`, an HMAC algorithm or an unknown one.
    #[error("Jwt algorithm {alg:?} is not accepted: {why}")]
    Algorithm {
        /// The `alg` as written (shortened).
        alg: String,
        /// Why it is refused.
        why: &'static str,
    },
    /// No rule has the token's issuer.
    #[error("Jwt issuer is not configured: {issuer:?}")]
    UnknownIssuer {
        /// The token's `iss` (shortened).
        issuer: String,
    },
    /// Rules exist for the issuer, but none reads tokens from where this one was found.
    #[error("Jwt issuer {issuer:?} is not accepted in {location}")]
    IssuerNotAllowedHere {
        /// The token's `iss`.
        issuer: String,
        /// Where the token was found.
        location: String,
    },
    /// The issuer's keys have no key for the token's `kid` and `alg`.
    #[error(
        "Jwks doesn't have key to match kid or alg from Jwt (issuer {issuer:?}, kid {kid:?}, alg {alg})"
    )]
    NoMatchingKey {
        /// The issuer.
        issuer: String,
        /// The token's `kid` (shortened).
        kid: Option<String>,
        /// The token's `alg`.
        alg: Algorithm,
    },
    /// A key matched and the signature did not verify.
    #[error("Jwt verification fails: bad signature (issuer {issuer:?})")]
    BadSignature {
        /// The issuer.
        issuer: String,
    },
    /// `exp` (plus the leeway) is in the past.
    #[error("Jwt is expired (exp {exp}, now {now})")]
    Expired {
        /// The token's `exp`.
        exp: i64,
        /// The time of the check, seconds since the epoch.
        now: u64,
    },
    /// `nbf` (minus the leeway) is in the future.
    #[error("Jwt not yet valid (nbf {nbf}, now {now})")]
    NotYetValid {
        /// The token's `nbf`.
        nbf: i64,
        /// The time of the check, seconds since the epoch.
        now: u64,
    },
    /// The issuer's `jwksUri` has not been fetched yet (fail closed).
    #[error("Jwks for issuer {issuer:?} not yet fetched from {uri}")]
    KeysNotFetched {
        /// The issuer.
        issuer: String,
        /// Where its keys come from.
        uri: String,
    },
    /// Every fetch of the issuer's `jwksUri` failed so far.
    #[error("Jwks remote fetch is failed for issuer {issuer:?} from {uri}: {reason}")]
    KeysUnavailable {
        /// The issuer.
        issuer: String,
        /// Where its keys come from.
        uri: String,
        /// The fetcher's last error.
        reason: String,
    },
    /// The token is valid, but none of its audiences is in the rule's `audiences` (403).
    #[error("Audiences in Jwt are not allowed (issuer {issuer:?}, aud {audiences:?})")]
    AudienceNotAllowed {
        /// The issuer.
        issuer: String,
        /// The token's `aud` values.
        audiences: Vec<String>,
    },
}

impl JwtFailure {
    /// The HTTP status Envoy answers with: 403 for a disallowed audience, 401 otherwise.
    pub fn status_code(&self) -> u16 {
        match self {
            JwtFailure::AudienceNotAllowed { .. } => 403,
            _ => 401,
        }
    }

    /// A short stable name of the failure, for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            JwtFailure::Malformed { .. } => "malformed",
            JwtFailure::Algorithm { .. } => "algorithm",
            JwtFailure::UnknownIssuer { .. } => "unknown_issuer",
            JwtFailure::IssuerNotAllowedHere { .. } => "issuer_not_allowed_here",
            JwtFailure::NoMatchingKey { .. } => "no_matching_key",
            JwtFailure::BadSignature { .. } => "bad_signature",
            JwtFailure::Expired { .. } => "expired",
            JwtFailure::NotYetValid { .. } => "not_yet_valid",
            JwtFailure::KeysNotFetched { .. } => "keys_not_fetched",
            JwtFailure::KeysUnavailable { .. } => "keys_unavailable",
            JwtFailure::AudienceNotAllowed { .. } => "audience_not_allowed",
        }
    }
}

impl From<TokenError> for JwtFailure {
    fn from(e: TokenError) -> Self {
        match e {
            TokenError::Malformed(reason) => JwtFailure::Malformed { reason },
            TokenError::Algorithm { alg, why } => JwtFailure::Algorithm { alg, why },
        }
    }
}

/// A validated token: who the request is from, and how to rewrite the request.
#[derive(Debug, Clone, PartialEq)]
pub struct JwtOutcome {
    /// `iss`.
    pub issuer: String,
    /// `sub` (empty when the token has none).
    pub subject: String,
    /// The request principal `iss/sub` (`request.auth.principal`, `requestPrincipals`).
    pub principal: String,
    /// `aud` values (`request.auth.audiences`).
    pub audiences: Vec<String>,
    /// `azp` (`request.auth.presenter`).
    pub presenter: Option<String>,
    /// The payload (`request.auth.claims[...]`).
    pub claims: Value,
    /// Headers to set on the request before it goes on (`outputPayloadToHeader`,
    /// `outputClaimToHeaders`): lowercase name, value. They replace incoming values.
    pub headers_to_set: Vec<(String, String)>,
    /// Headers to remove (the token's header unless `forwardOriginalToken`), lowercase.
    pub headers_to_remove: Vec<String>,
    /// Query parameters that carried a token (unless `forwardOriginalToken`). Envoy leaves
    /// them in place; a proxy may strip them.
    pub params_to_remove: Vec<String>,
    /// Index of the `jwtRules` entry that validated the token.
    pub rule: usize,
}

impl JwtOutcome {
    /// String values of the claim at `path` (see [`claims::claim_strings`]).
    pub fn claim_strings<'c, S: AsRef<str>>(
        &'c self,
        path: &[S],
    ) -> impl Iterator<Item = &'c str> + use<'c, S> {
        claims::claim_strings(&self.claims, path)
    }
}

/// Keys of a rule that must be fetched by the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteJwks {
    /// The issuer whose keys these are.
    pub issuer: String,
    /// The `jwksUri`, or for discovery `<issuer>/.well-known/openid-configuration`.
    pub uri: String,
    /// The rule has neither `jwks` nor `jwksUri`: `uri` is the OpenID discovery document,
    /// whose `jwks_uri` holds the keys. The provider answers for `uri` either way.
    pub discovery: bool,
    /// Fetch timeout (`timeout`, default 5 s).
    pub timeout: Duration,
}

#[derive(Debug)]
enum KeySource {
    Inline(Jwks),
    Remote(RemoteJwks),
}

#[derive(Debug)]
struct CompiledRule {
    issuer: String,
    /// Normalized (`https://` and trailing `/` removed); empty accepts any audience.
    audiences: Vec<String>,
    keys: KeySource,
    /// Indices into `JwtAuthenticator::locations`, in lookup order.
    locations: Vec<usize>,
    forward_original_token: bool,
    payload_header: Option<String>,
    claim_headers: Vec<(String, Vec<String>)>,
}

/// The `jwtRules` of the RequestAuthentication policies that apply to one workload,
/// compiled once per config change.
#[derive(Debug)]
pub struct JwtAuthenticator {
    rules: Vec<CompiledRule>,
    locations: Vec<TokenLocation>,
    clock_skew: f64,
    provider: Option<Arc<dyn JwksProvider>>,
}

/// A token found in the request, at `locations[location]`.
struct Found<'r> {
    location: usize,
    token: Cow<'r, [u8]>,
}

impl JwtAuthenticator {
    /// Compiles `rules` (all rules of all RequestAuthentication policies that select the
    /// workload, in order). Inline `jwks` are parsed now; an unusable one is an error.
    pub fn compile(rules: &[JwtRule], config: JwtConfig) -> Result<Self, JwtConfigError> {
        let mut locations: Vec<TokenLocation> = Vec::new();
        let mut intern = |loc: TokenLocation| -> usize {
            match locations.iter().position(|l| *l == loc) {
                Some(i) => i,
                None => {
                    locations.push(loc);
                    locations.len() - 1
                }
            }
        };
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, rule) in rules.iter().enumerate() {
            let field_err =
                |field: String, value: &str, reason: &'static str| JwtConfigError::Field {
                    rule: index,
                    field,
                    value: value.to_owned(),
                    reason,
                };
            if rule.issuer.is_empty() {
                return Err(JwtConfigError::MissingIssuer { rule: index });
            }

            let mut rule_locations = Vec::new();
            for (i, h) in rule.from_headers.iter().enumerate() {
                if !is_header_name(&h.name) {
                    return Err(field_err(
                        format!("fromHeaders[{i}].name"),
                        &h.name,
                        "is not a valid HTTP header name",
                    ));
                }
                rule_locations.push(intern(TokenLocation::Header {
                    name: h.name.to_ascii_lowercase(),
                    prefix: h.prefix.clone(),
                }));
            }
            for (i, p) in rule.from_params.iter().enumerate() {
                if p.is_empty() {
                    return Err(field_err(
                        format!("fromParams[{i}]"),
                        p,
                        "must not be empty",
                    ));
                }
                rule_locations.push(intern(TokenLocation::Param(p.clone())));
            }
            for (i, c) in rule.from_cookies.iter().enumerate() {
                if c.is_empty() || c.contains([';', '=', ' ']) {
                    return Err(field_err(
                        format!("fromCookies[{i}]"),
                        c,
                        "is not a valid cookie name",
                    ));
                }
                rule_locations.push(intern(TokenLocation::Cookie(c.clone())));
            }
            if rule_locations.is_empty() {
                rule_locations.push(intern(TokenLocation::default_header()));
                rule_locations.push(intern(TokenLocation::default_param()));
            }
            rule_locations.dedup();

            let keys = match (&rule.jwks, &rule.jwks_uri) {
                // Istio: inline keys win when both are given.
                (Some(jwks), _) => KeySource::Inline(Jwks::from_json(jwks).map_err(|source| {
                    JwtConfigError::Jwks {
                        rule: index,
                        issuer: rule.issuer.clone(),
                        source,
                    }
                })?),
                (None, uri) => {
                    let timeout = match &rule.timeout {
                        None => DEFAULT_JWKS_TIMEOUT,
                        Some(t) => parse_duration(t).ok_or_else(|| {
                            field_err(
                                "timeout".to_owned(),
                                t,
                                "is not a positive duration such as `5s` or `1.5s`",
                            )
                        })?,
                    };
                    let (uri, discovery) = match uri {
                        Some(uri) if !uri.is_empty() => (uri.clone(), false),
                        _ => (
                            format!(
                                "{}/.well-known/openid-configuration",
                                rule.issuer.trim_end_matches('/')
                            ),
                            true,
                        ),
                    };
                    KeySource::Remote(RemoteJwks {
                        issuer: rule.issuer.clone(),
                        uri,
                        discovery,
                        timeout,
                    })
                }
            };

            let payload_header = match &rule.output_payload_to_header {
                None => None,
                Some(h) if is_header_name(h) => Some(h.to_ascii_lowercase()),
                Some(h) => {
                    return Err(field_err(
                        "outputPayloadToHeader".to_owned(),
                        h,
                        "is not a valid HTTP header name",
                    ));
                }
            };
            let mut claim_headers = Vec::with_capacity(rule.output_claim_to_headers.len());
            for (i, c) in rule.output_claim_to_headers.iter().enumerate() {
                if !is_header_name(&c.header) {
                    return Err(field_err(
                        format!("outputClaimToHeaders[{i}].header"),
                        &c.header,
                        "is not a valid HTTP header name",
                    ));
                }
                let path: Vec<String> = c.claim.split('.').map(str::to_owned).collect();
                if path.iter().any(String::is_empty) {
                    return Err(field_err(
                        format!("outputClaimToHeaders[{i}].claim"),
                        &c.claim,
                        "is not a claim name (nested claims are `a.b`)",
                    ));
                }
                claim_headers.push((c.header.to_ascii_lowercase(), path));
            }

            compiled.push(CompiledRule {
                issuer: rule.issuer.clone(),
                audiences: rule
                    .audiences
                    .iter()
                    .map(|a| normalize_audience(a).to_owned())
                    .collect(),
                keys,
                locations: rule_locations,
                forward_original_token: rule.forward_original_token,
                payload_header,
                claim_headers,
            });
        }
        Ok(JwtAuthenticator {
            rules: compiled,
            locations,
            clock_skew: config.clock_skew.as_secs_f64(),
            provider: config.jwks_provider,
        })
    }

    /// Whether no rule applies (every request passes with no principal).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The key sets the caller must fetch and feed to the [`JwksProvider`].
    pub fn remote_jwks(&self) -> impl Iterator<Item = &RemoteJwks> {
        self.rules.iter().filter_map(|r| match &r.keys {
            KeySource::Remote(remote) => Some(remote),
            KeySource::Inline(_) => None,
        })
    }

    /// Headers this authenticator may set on a validated request. A proxy should remove
    /// them from every incoming request first, so a client cannot forge them.
    pub fn output_headers(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().flat_map(|r| {
            r.payload_header
                .iter()
                .map(String::as_str)
                .chain(r.claim_headers.iter().map(|(h, _)| h.as_str()))
        })
    }

    /// Every place tokens are looked for, deduplicated, in first-use order.
    pub fn locations(&self) -> &[TokenLocation] {
        &self.locations
    }

    /// Checks the request's tokens.
    ///
    /// - CORS preflight, or no token at any place: `Ok(None)` (no request principal).
    /// - For each rule, the first of its places that holds a token gives that rule's token.
    ///   Every token found is validated against the rule for its `iss` that reads that
    ///   place; any invalid token fails the request (a token whose issuer has no rule
    ///   there included). The outcome is the first token's, with the header rewrites of all.
    pub fn authenticate<R: RequestView>(
        &self,
        req: &R,
        now: SystemTime,
    ) -> Result<Option<JwtOutcome>, JwtFailure> {
        if self.rules.is_empty() || is_cors_preflight(req) {
            return Ok(None);
        }
        let mut found: Vec<Found<'_>> = Vec::new();
        for rule in &self.rules {
            for &loc in &rule.locations {
                if found.iter().any(|f| f.location == loc) {
                    break;
                }
                if let Some(token) = self.locations[loc].extract(req) {
                    found.push(Found {
                        location: loc,
                        token,
                    });
                    break;
                }
            }
        }
        let now = unix_seconds(now);
        let mut outcome: Option<JwtOutcome> = None;
        for f in &found {
            let next = self.validate(f, now)?;
            match &mut outcome {
                None => outcome = Some(next),
                Some(first) => {
                    first.headers_to_set.extend(next.headers_to_set);
                    for h in next.headers_to_remove {
                        if !first.headers_to_remove.contains(&h) {
                            first.headers_to_remove.push(h);
                        }
                    }
                    for p in next.params_to_remove {
                        if !first.params_to_remove.contains(&p) {
                            first.params_to_remove.push(p);
                        }
                    }
                }
            }
        }
        Ok(outcome)
    }

    fn validate(&self, found: &Found<'_>, now: u64) -> Result<JwtOutcome, JwtFailure> {
        let jws = token::parse(&found.token)?;
        let issuer = match token::string_claim(&jws.claims, "iss") {
            Ok(Some(iss)) => iss,
            Ok(None) => {
                return Err(JwtFailure::Malformed {
                    reason: "the payload has no `iss` claim".to_owned(),
                });
            }
            Err(reason) => return Err(JwtFailure::Malformed { reason }),
        };
        // Every rule for this issuer that reads this place may accept the token (Istio makes
        // one Envoy provider per rule, required as "any of"): the first that does wins.
        let mut chosen = None;
        let mut first_failure = None;
        for (index, rule) in self.rules.iter().enumerate() {
            if rule.issuer != issuer || !rule.locations.contains(&found.location) {
                continue;
            }
            match self.check_rule(rule, &jws, now) {
                Ok(()) => {
                    chosen = Some((index, rule));
                    break;
                }
                // A verified token with a wrong audience says more than another rule's
                // "no such key": report the 403.
                Err(e @ JwtFailure::AudienceNotAllowed { .. }) => first_failure = Some(e),
                Err(e) => {
                    first_failure.get_or_insert(e);
                }
            }
        }
        let Some((rule_index, rule)) = chosen else {
            return Err(match first_failure {
                Some(failure) => failure,
                None if self.rules.iter().any(|r| r.issuer == issuer) => {
                    JwtFailure::IssuerNotAllowedHere {
                        issuer: shown(issuer),
                        location: self.locations[found.location].to_string(),
                    }
                }
                None => JwtFailure::UnknownIssuer {
                    issuer: shown(issuer),
                },
            });
        };

        let malformed = |reason: String| JwtFailure::Malformed { reason };
        let audiences = token::audiences(&jws.claims).map_err(malformed)?;
        let subject = token::string_claim(&jws.claims, "sub")
            .map_err(malformed)?
            .unwrap_or_default()
            .to_owned();
        let presenter = token::string_claim(&jws.claims, "azp")
            .map_err(malformed)?
            .map(str::to_owned);

        let claims = Value::Object(jws.claims);
        let mut headers_to_set = Vec::new();
        if let Some(h) = &rule.payload_header {
            headers_to_set.push((h.clone(), jws.payload_b64.to_owned()));
        }
        for (header, path) in &rule.claim_headers {
            if let Some(value) = claims::claim_at(&claims, path).and_then(claims::header_value) {
                headers_to_set.push((header.clone(), value));
            }
        }
        let mut headers_to_remove = Vec::new();
        let mut params_to_remove = Vec::new();
        if !rule.forward_original_token {
            match &self.locations[found.location] {
                TokenLocation::Header { name, .. } => headers_to_remove.push(name.clone()),
                TokenLocation::Param(name) => params_to_remove.push(name.clone()),
                // Envoy leaves cookies in place; so does Warden.
                TokenLocation::Cookie(_) => {}
            }
        }
        Ok(JwtOutcome {
            issuer: rule.issuer.clone(),
            principal: format!("{}/{}", rule.issuer, subject),
            subject,
            audiences,
            presenter,
            claims,
            headers_to_set,
            headers_to_remove,
            params_to_remove,
            rule: rule_index,
        })
    }

    /// Signature, times and audience of `jws` under `rule`.
    fn check_rule(
        &self,
        rule: &CompiledRule,
        jws: &CompactJws<'_>,
        now: u64,
    ) -> Result<(), JwtFailure> {
        self.verify_signature(rule, jws)?;
        check_times(&jws.claims, now, self.clock_skew)?;
        let audiences =
            token::audiences(&jws.claims).map_err(|reason| JwtFailure::Malformed { reason })?;
        if !rule.audiences.is_empty()
            && !audiences
                .iter()
                .any(|a| rule.audiences.iter().any(|r| r == normalize_audience(a)))
        {
            return Err(JwtFailure::AudienceNotAllowed {
                issuer: rule.issuer.clone(),
                audiences: audiences.iter().map(|a| shown(a)).collect(),
            });
        }
        Ok(())
    }

    fn verify_signature(
        &self,
        rule: &CompiledRule,
        jws: &CompactJws<'_>,
    ) -> Result<(), JwtFailure> {
        let held;
        let jwks: &Jwks = match &rule.keys {
            KeySource::Inline(jwks) => jwks,
            KeySource::Remote(remote) => {
                let state = match &self.provider {
                    Some(provider) => provider.jwks(&remote.uri),
                    None => JwksState::NotFetched,
                };
                match state {
                    JwksState::Ready(keys) => {
                        held = keys;
                        &held
                    }
                    JwksState::NotFetched => {
                        return Err(JwtFailure::KeysNotFetched {
                            issuer: rule.issuer.clone(),
                            uri: remote.uri.clone(),
                        });
                    }
                    JwksState::Failed(reason) => {
                        return Err(JwtFailure::KeysUnavailable {
                            issuer: rule.issuer.clone(),
                            uri: remote.uri.clone(),
                            reason: reason.to_string(),
                        });
                    }
                }
            }
        };
        jwks.verify(
            jws.alg,
            jws.kid.as_deref(),
            jws.signing_input,
            &jws.signature,
        )
        .map_err(|e| match e {
            VerifyError::NoMatchingKey => JwtFailure::NoMatchingKey {
                issuer: rule.issuer.clone(),
                kid: jws.kid.as_deref().map(shown),
                alg: jws.alg,
            },
            VerifyError::BadSignature => JwtFailure::BadSignature {
                issuer: rule.issuer.clone(),
            },
        })
    }
}

/// `exp` and `nbf` against `now`, with `skew` seconds of leeway; neither is required.
fn check_times(claims: &Map<String, Value>, now: u64, skew: f64) -> Result<(), JwtFailure> {
    let malformed = |reason: String| JwtFailure::Malformed { reason };
    let now_f = now as f64;
    if let Some(exp) = token::numeric_date(claims, "exp").map_err(malformed)?
        && now_f > exp + skew
    {
        return Err(JwtFailure::Expired {
            exp: exp.floor() as i64,
            now,
        });
    }
    if let Some(nbf) = token::numeric_date(claims, "nbf").map_err(malformed)?
        && now_f + skew < nbf
    {
        return Err(JwtFailure::NotYetValid {
            nbf: nbf.floor() as i64,
            now,
        });
    }
    Ok(())
}

/// RFC 7230 `token` characters.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Parses a duration such as `5s`, `1.5s`, `500ms`, `1m30s` or `1h` (Go / protobuf style).
pub(crate) fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * scale;
    }
    (total > 0.0 && total.is_finite() && total < 1e9).then(|| Duration::from_secs_f64(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("5s"), Some(Duration::from_secs(5)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        for bad in ["", "5", "s", "0s", "-1s", "5 s", "1d", "1.2.3s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn header_names_are_tokens() {
        assert!(is_header_name("x-jwt-claim"));
        assert!(is_header_name("Authorization"));
        assert!(!is_header_name(""));
        assert!(!is_header_name("a b"));
        assert!(!is_header_name("a:b"));
        assert!(!is_header_name("é"));
    }

    #[test]
    fn failure_status_codes() {
        let f = JwtFailure::AudienceNotAllowed {
            issuer: "i".into(),
            audiences: vec![],
        };
        assert_eq!(f.status_code(), 403);
        assert_eq!(f.kind(), "audience_not_allowed");
        let f = JwtFailure::Expired { exp: 1, now: 100 };
        assert_eq!(f.status_code(), 401);
        assert_eq!(f.to_string(), "Jwt is expired (exp 1, now 100)");
    }
}
