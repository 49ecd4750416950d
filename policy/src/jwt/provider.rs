//! Keys fetched from a `jwksUri`, behind a trait: the HTTP fetch and its refresh live in the
//! proxy; the authenticator only asks "what are the keys at this URI right now?".

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use super::jwks::{Jwks, JwksError};

/// The keys at one JWKS URI, as a [`JwksProvider`] knows them now.
#[derive(Debug, Clone)]
pub enum JwksState {
    /// Keys are available.
    Ready(Arc<Jwks>),
    /// Nothing fetched yet (or the URI is unknown): tokens for this issuer are refused.
    NotFetched,
    /// Every fetch so far failed; the reason is kept for the 401 and for logs.
    Failed(Arc<str>),
}

/// Source of keys for rules that name a `jwksUri` (or rely on OpenID discovery).
///
/// Called once per token to verify, so implementations answer from memory (a map behind a
/// lock or an `ArcSwap`), never by fetching.
pub trait JwksProvider: Send + Sync + fmt::Debug {
    /// The keys at `uri` now.
    fn jwks(&self, uri: &str) -> JwksState;
}

/// An in-memory [`JwksProvider`] that the proxy's fetcher (or a test) fills.
#[derive(Debug, Default)]
pub struct MemoryJwksProvider {
    entries: RwLock<HashMap<String, JwksState>>,
}

impl MemoryJwksProvider {
    /// An empty provider: every URI is [`JwksState::NotFetched`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores the keys for `uri`, replacing what was there.
    pub fn set(&self, uri: impl Into<String>, jwks: Jwks) {
        self.write()
            .insert(uri.into(), JwksState::Ready(Arc::new(jwks)));
    }

    /// Parses a fetched JWKS document and stores it for `uri`.
    ///
    /// On a parse error the previous keys stay in force (a bad refresh does not lock users
    /// out); if there were none, the URI is marked failed with the error. The error is
    /// returned either way so the caller can log it.
    pub fn set_json(&self, uri: impl Into<String>, json: &str) -> Result<(), JwksError> {
        let uri = uri.into();
        match Jwks::from_json(json) {
            Ok(jwks) => {
                self.set(uri, jwks);
                Ok(())
            }
            Err(e) => {
                self.set_failed(uri, format!("the JWKS document is unusable: {e}"));
                Err(e)
            }
        }
    }

    /// Records a failed fetch. Keys already held for `uri` are kept; otherwise the URI is
    /// marked [`JwksState::Failed`].
    pub fn set_failed(&self, uri: impl Into<String>, reason: impl Into<String>) {
        let mut entries = self.write();
        let entry = entries.entry(uri.into()).or_insert(JwksState::NotFetched);
        if !matches!(entry, JwksState::Ready(_)) {
            *entry = JwksState::Failed(Arc::from(reason.into()));
        }
    }

    /// Forgets `uri`.
    pub fn remove(&self, uri: &str) {
        self.write().remove(uri);
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, JwksState>> {
        // A panic while holding the lock cannot leave the map half-updated (each update is
        // one insert), so a poisoned lock is still safe to use.
        self.entries.write().unwrap_or_else(PoisonError::into_inner)
    }
}

impl JwksProvider for MemoryJwksProvider {
    fn jwks(&self, uri: &str) -> JwksState {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(uri)
            .cloned()
            .unwrap_or(JwksState::NotFetched)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const JWKS: &str = r#"{"keys":[{"kty":"EC","crv":"P-256",
        "x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
        "y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

    #[test]
    fn states_move_as_the_fetcher_reports() {
        let p = MemoryJwksProvider::new();
        assert!(matches!(p.jwks("u"), JwksState::NotFetched));
        p.set_failed("u", "connection refused");
        assert!(matches!(p.jwks("u"), JwksState::Failed(r) if &*r == "connection refused"));
        p.set_json("u", JWKS).expect("valid");
        assert!(matches!(p.jwks("u"), JwksState::Ready(k) if k.keys().len() == 1));
        // A failed refresh or a bad document keeps the keys already held.
        p.set_failed("u", "timeout");
        assert!(matches!(p.jwks("u"), JwksState::Ready(_)));
        assert!(p.set_json("u", "{}").is_err());
        assert!(matches!(p.jwks("u"), JwksState::Ready(_)));
        // A bad first document marks the URI failed, with the parse error.
        assert!(p.set_json("v", r#"{"keys":[]}"#).is_err());
        assert!(matches!(p.jwks("v"), JwksState::Failed(r) if r.contains("empty")));
        p.remove("u");
        assert!(matches!(p.jwks("u"), JwksState::NotFetched));
    }
}
