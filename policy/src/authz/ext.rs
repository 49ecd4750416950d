//! The CUSTOM action's external authorizer, behind a trait (the HTTP/gRPC client lives in the proxy).

use crate::request::Request;

/// What an ext-authz provider answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExtAuthzVerdict {
    /// The provider allows the request; ALLOW and DENY policies still apply.
    Allow,
    /// The provider denies the request.
    Deny(ExtAuthzDenial),
}

/// A provider's denial, relayed to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtAuthzDenial {
    /// The HTTP status to answer with (Envoy's default for a denial is 403).
    pub status: u16,
    /// The provider's reason (for logs and the explanation).
    pub reason: String,
}

impl ExtAuthzDenial {
    /// A 403 denial with a reason.
    pub fn forbidden(reason: impl Into<String>) -> Self {
        ExtAuthzDenial {
            status: 403,
            reason: reason.into(),
        }
    }
}

/// Why a provider could not answer. The request is denied (fail closed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ExtAuthzError {
    /// No provider with that name is configured.
    #[error("no ext-authz provider named {0:?} is configured")]
    UnknownProvider(String),
    /// The provider could not be reached or answered badly.
    #[error("ext-authz provider {provider:?} failed: {reason}")]
    Unavailable {
        /// The provider name.
        provider: String,
        /// What went wrong.
        reason: String,
    },
}

/// A synchronous ext-authz check.
pub trait ExtAuthz {
    /// Asks `provider` about `request`.
    fn check(
        &self,
        provider: &str,
        request: &Request<'_>,
    ) -> Result<ExtAuthzVerdict, ExtAuthzError>;
}

impl<F> ExtAuthz for F
where
    F: Fn(&str, &Request<'_>) -> Result<ExtAuthzVerdict, ExtAuthzError>,
{
    fn check(
        &self,
        provider: &str,
        request: &Request<'_>,
    ) -> Result<ExtAuthzVerdict, ExtAuthzError> {
        self(provider, request)
    }
}

/// An asynchronous ext-authz check (the proxy's HTTP or gRPC client).
#[async_trait::async_trait]
pub trait AsyncExtAuthz: Send + Sync {
    /// Asks `provider` about `request`.
    async fn check(
        &self,
        provider: &str,
        request: &Request<'_>,
    ) -> Result<ExtAuthzVerdict, ExtAuthzError>;
}

/// No provider configured: every CUSTOM match is denied (fail closed).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoExtAuthz;

impl ExtAuthz for NoExtAuthz {
    fn check(&self, provider: &str, _: &Request<'_>) -> Result<ExtAuthzVerdict, ExtAuthzError> {
        Err(ExtAuthzError::UnknownProvider(provider.to_owned()))
    }
}

#[async_trait::async_trait]
impl AsyncExtAuthz for NoExtAuthz {
    async fn check(
        &self,
        provider: &str,
        _: &Request<'_>,
    ) -> Result<ExtAuthzVerdict, ExtAuthzError> {
        Err(ExtAuthzError::UnknownProvider(provider.to_owned()))
    }
}
