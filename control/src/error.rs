//! Errors of starting and administering the control plane. Request-level failures are gRPC
//! statuses (see [`crate::service`]); these are the operator-facing ones.

use std::path::PathBuf;

use warden_identity::CaError;
use warden_policy::jwt::SignError;
use warden_policy::jwt::k8s::SaKeysError;

/// Why the control plane cannot start, or an administrative command failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Reading or writing a state file failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The CA refused to load or to do what was asked.
    #[error(transparent)]
    Ca(#[from] CaError),
    /// The token-signing key file is unusable.
    #[error("{path}: token-signing key: {source}")]
    TokenKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: SignError,
    },
    /// A token could not be minted (bad namespace, service account, audience or lifetime).
    #[error("minting a token: {0}")]
    Mint(#[source] SignError),
    /// A JWKS file of token issuers is unusable.
    #[error("token issuer keys: {0}")]
    TokenJwks(#[from] SaKeysError),
    /// Binding the listener failed.
    #[error("listening on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The TLS configuration could not be built.
    #[error("TLS setup: {0}")]
    Tls(String),
    /// The control plane's own serving certificate could not be made.
    #[error("issuing the control plane's serving certificate: {0}")]
    ServingCert(String),
    /// The state directory holds no control plane state yet (an administrative command ran
    /// before the first start of the control plane, or with the wrong `--state-dir`).
    #[error(
        "{path} does not exist: start `warden control` once with this --state-dir, or pass the right --state-dir"
    )]
    NoState {
        /// The CA state directory looked for.
        path: PathBuf,
    },
    /// A root operation where there is no self-signed CA (a plugin CA, or none yet).
    #[error(
        "{operation}: {path} holds no self-signed CA (no root-cert.pem); a plugin CA (--plugin-ca) is rotated by replacing its files, see docs/ca.md"
    )]
    NotSelfSigned {
        /// The operation.
        operation: &'static str,
        /// The CA directory.
        path: PathBuf,
    },
}

impl ControlError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
