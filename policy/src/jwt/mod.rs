//! JWT validation: Istio `RequestAuthentication` and Kubernetes service-account tokens.
//!
//! Pure logic, no network I/O. Signatures are checked with aws-lc-rs against keys parsed
//! once ([`Jwks`]); only asymmetric algorithms exist ([`Algorithm`]), so `alg: none` and
//! HMAC-with-a-public-key confusion are impossible by construction.
//!
//! - [`JwtAuthenticator`]: the `jwtRules` that apply to a workload, compiled once;
//!   [`JwtAuthenticator::authenticate`] checks a request ([`RequestView`]) and gives a
//!   [`JwtOutcome`] (principal, claims, header rewrites), `None` (no token) or a
//!   [`JwtFailure`] with its HTTP status (401, or 403 for a disallowed audience).
//! - Keys from `jwksUri` come through a [`JwksProvider`] that the proxy fills
//!   ([`MemoryJwksProvider`]); keys not fetched yet fail closed.
//! - [`k8s`]: service-account token checks for the CA, and minting for
//!   `warden control token`; [`SigningKey`] and [`public_jwk_from_pem`] publish keys.

mod alg;
mod authn;
mod claims;
mod json;
mod jwks;
pub mod k8s;
mod provider;
mod request;
mod sign;
mod token;

use std::time::{SystemTime, UNIX_EPOCH};

pub use alg::{Algorithm, Curve};
pub use authn::{
    DEFAULT_CLOCK_SKEW, DEFAULT_JWKS_TIMEOUT, JwtAuthenticator, JwtConfig, JwtConfigError,
    JwtFailure, JwtOutcome, RemoteJwks,
};
pub use claims::{claim_at, claim_strings, parse_claim_key};
pub use jwks::{Jwk, Jwks, JwksError, MAX_RSA_BITS, MIN_RSA_BITS};
pub use provider::{JwksProvider, JwksState, MemoryJwksProvider};
pub use request::{RequestView, SimpleRequest, TokenLocation, is_cors_preflight};
pub use sign::{SignError, SigningKey, jwks_json, public_jwk_from_pem};
pub use token::MAX_TOKEN_LEN;

/// Attacker-controlled text shortened for errors and logs (at most 64 characters).
pub(crate) fn shown(text: &str) -> String {
    const MAX: usize = 64;
    match text.char_indices().nth(MAX) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}...", &text[..cut]),
    }
}

/// Seconds since the epoch (0 for times before it).
pub(crate) fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_types_are_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<JwtAuthenticator>();
        check::<Jwks>();
        check::<MemoryJwksProvider>();
        check::<SigningKey>();
        check::<k8s::SaTokenVerifier>();
        check::<JwtFailure>();
    }

    #[test]
    fn shown_truncates_on_char_boundaries() {
        assert_eq!(shown("abc"), "abc");
        let long = "é".repeat(100);
        let s = shown(&long);
        assert_eq!(s.chars().count(), 64 + 3);
        assert!(s.ends_with("..."));
    }
}
