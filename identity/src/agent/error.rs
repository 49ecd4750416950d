//! Why the agent could not get or refresh what it needs.

use std::path::PathBuf;

use crate::tls::CredentialsError;

/// An agent failure. The agent keeps a still-valid certificate through all of them and retries.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    /// The service-account token could not be read.
    #[error("reading the service-account token {path}: {reason}")]
    Token {
        /// The token file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The root bundle file could not be used.
    #[error("root bundle {path}: {reason}")]
    RootBundle {
        /// The root bundle file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The CA could not be reached (TCP, TLS, or its certificate was not trusted).
    #[error("connecting to the CA at {addr}: {reason}")]
    Connect {
        /// The CA address.
        addr: String,
        /// Why, with the underlying errors.
        reason: String,
    },
    /// The CA answered with a gRPC error.
    #[error("the CA at {addr} refused CreateCertificate: {code:?}: {message}")]
    Rpc {
        /// The CA address.
        addr: String,
        /// The gRPC status code (e.g. `Unauthenticated`).
        code: tonic::Code,
        /// The CA's message.
        message: String,
    },
    /// The CA's answer is not usable.
    #[error("the CA at {addr} returned an unusable certificate chain: {reason}")]
    BadResponse {
        /// The CA address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// Making the key or the CSR failed.
    #[error("making the workload key or CSR: {reason}")]
    Key {
        /// Why.
        reason: String,
    },
    /// The CRL could not be fetched or verified.
    #[error("CRL {url}: {reason}")]
    Crl {
        /// Where it was fetched.
        url: String,
        /// Why.
        reason: String,
    },
    /// Static certificate files could not be used.
    #[error("certificate directory {dir}: {reason}")]
    StaticFiles {
        /// The directory.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS layer refused the credentials.
    #[error("installing the credentials: {0}")]
    Install(#[from] CredentialsError),
}

/// An error and its sources on one line.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}
