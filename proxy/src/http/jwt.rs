//! The RequestAuthentication JWT rules of the current policy, compiled once per policy load and
//! shared by every request until the next load.

use std::sync::{Arc, Weak};

use arc_swap::ArcSwapOption;
use warden_policy::jwt::{JwtAuthenticator, JwtConfig};

use crate::state::PolicyState;

/// The compiled rules, or why they could not be compiled (inline `jwks` unusable).
pub type Compiled = Result<Arc<JwtAuthenticator>, Arc<str>>;

struct Entry {
    policy: Weak<PolicyState>,
    compiled: Compiled,
}

/// A one-entry cache keyed by the policy it was compiled from.
#[derive(Default)]
pub struct JwtCache {
    current: ArcSwapOption<Entry>,
}

impl std::fmt::Debug for JwtCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("JwtCache")
    }
}

impl JwtCache {
    /// The authenticator for `policy`: compiled on the first request after a policy load,
    /// then reused (one atomic load and a pointer compare per request).
    pub fn get(&self, policy: &Arc<PolicyState>) -> Compiled {
        if let Some(e) = self.current.load().as_ref()
            && std::ptr::eq(e.policy.as_ptr(), Arc::as_ptr(policy))
        {
            return e.compiled.clone();
        }
        let rules: Vec<_> = policy
            .compiled
            .jwt_rules
            .iter()
            .map(|r| r.rule().clone())
            .collect();
        let compiled = JwtAuthenticator::compile(&rules, JwtConfig::default())
            .map(Arc::new)
            .map_err(|e| {
                tracing::warn!(error = %e, "RequestAuthentication rules cannot be used; requests with a token are refused");
                Arc::<str>::from(e.to_string())
            });
        self.current.store(Some(Arc::new(Entry {
            policy: Arc::downgrade(policy),
            compiled: compiled.clone(),
        })));
        compiled
    }
}
